//! Counts heap allocations made on chosen threads: the sidecar's thread in
//! `skiff-allocs`, so the load generator's own allocations in the same
//! process are not counted. Install [`Counting`] as the global allocator,
//! call [`count_this_thread`] on the thread to measure, and read
//! [`snapshot`] before and after the calls.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The system allocator, counting on the threads that asked.
pub struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
/// Counted allocations still to print a backtrace of.
static TRACE: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // `const`: reading it allocates nothing and registers no destructor,
    // which an allocator must not do.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
    // Set while a backtrace is taken: its own allocations are not traced.
    static TRACING: Cell<bool> = const { Cell::new(false) };
}

/// Prints (to stderr) where each of the next `n` counted allocations was
/// made: the way to find what a call still allocates.
pub fn trace_next(n: u64) {
    TRACE.store(n, Relaxed);
}

/// Allocations (and reallocations, which may move) and their bytes so far,
/// on every counted thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub allocs: u64,
    pub bytes: u64,
}

impl std::ops::Sub for Snapshot {
    type Output = Snapshot;
    fn sub(self, o: Snapshot) -> Snapshot {
        Snapshot {
            allocs: self.allocs - o.allocs,
            bytes: self.bytes - o.bytes,
        }
    }
}

/// Counts this thread's allocations from now on.
pub fn count_this_thread() {
    COUNTED.with(|c| c.set(true));
}

pub fn snapshot() -> Snapshot {
    Snapshot {
        allocs: ALLOCS.load(Relaxed),
        bytes: BYTES.load(Relaxed),
    }
}

fn note(size: usize) {
    if COUNTED.try_with(Cell::get).unwrap_or(false) {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(size as u64, Relaxed);
        if TRACE.load(Relaxed) > 0 {
            trace(size);
        }
    }
}

fn trace(size: usize) {
    if TRACING.try_with(|t| t.replace(true)).unwrap_or(true) {
        return;
    }
    if TRACE
        .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
        .is_ok()
    {
        let bt = std::backtrace::Backtrace::force_capture();
        eprintln!("--- allocation of {size} bytes\n{bt}");
    }
    let _ = TRACING.try_with(|t| t.set(false));
}

// SAFETY: every method forwards its arguments unchanged to `System`, which
// upholds GlobalAlloc's contract; counting touches only atomics and a const
// thread-local, neither of which allocates.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static A: Counting = Counting;

    #[test]
    fn only_counted_threads_are_counted() {
        let before = snapshot();
        let uncounted = std::hint::black_box(vec![1u8; 100]);
        drop(uncounted);
        std::thread::spawn(|| {
            count_this_thread();
            let a = vec![1u8; 10];
            let b = Box::new(5u64);
            std::hint::black_box((&a, &b));
        })
        .join()
        .expect("thread");
        let got = snapshot() - before;
        // The thread's own start-up may allocate too (its name, its TLS).
        assert!(got.allocs >= 2, "{got:?}");
        assert!(got.bytes >= 18, "{got:?}");
        let before = snapshot();
        drop(std::hint::black_box(vec![1u8; 100]));
        assert_eq!(snapshot(), before);
    }
}
