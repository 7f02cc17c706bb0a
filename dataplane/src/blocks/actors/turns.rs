//! One actor's turns: calls, timer and reminder callbacks to one actor run
//! one at a time, in the order they arrived (Dapr's turn-based
//! concurrency, `../shared/dapr-actors-contract.md` §2.4).
//!
//! With reentrancy on for the type, a call that carries the
//! `Dapr-Reentrancy-Id` of a chain already queued or running joins that
//! chain instead of queueing behind it (an actor calling itself through
//! another actor would otherwise wait for its own turn forever), up to the
//! type's `maxStackDepth`. A chain is one entry in the queue however many
//! calls joined it; its turn ends when the last of them does.
//!
//! Two things daprd gets wrong are right here, and tested below: a call
//! refused for its depth leaves the chain's count as it was (daprd counts
//! it and never gives it back, so the actor's turn never ends), and a
//! waiting call that is given up (its caller went away) leaves the queue
//! at once instead of holding the turn it would have had.
//!
//! The queue is a short `std` mutex section per acquire and per release;
//! waiting is on the chain's own `Notify`, so nothing blocks a runtime
//! thread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

/// Why a turn was not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TurnError {
    /// Joining the chain would take it past the type's `maxStackDepth`
    /// (daprd's `ERR_ACTOR_STACK_DEPTH`).
    #[error("maximum stack depth exceeded")]
    StackDepth,
    /// The actor is being deactivated (or its host is draining).
    #[error("the actor is closing")]
    Closed,
}

/// The reentrancy of one call: its chain's id and the type's depth limit.
#[derive(Debug, Clone, Copy)]
pub struct Reentrant<'a> {
    pub id: &'a str,
    pub max_depth: u32,
}

/// The turn queue of one active actor.
#[derive(Default)]
pub struct TurnLock {
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    chains: VecDeque<Chain>,
    next_key: u64,
    closed: bool,
}

struct Chain {
    key: u64,
    /// `None`: not reentrant, nothing joins it.
    id: Option<Arc<str>>,
    /// Calls in this chain, running or waiting.
    calls: u32,
    start: Arc<Start>,
}

#[derive(Default)]
struct Start {
    begun: AtomicBool,
    closed: AtomicBool,
    notify: Notify,
}

impl Start {
    fn begin(&self) {
        self.begun.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }
}

/// A call's turn; dropping it ends the call's part of its chain.
#[must_use = "the turn ends when this is dropped"]
pub struct Turn<'a> {
    lock: &'a TurnLock,
    key: u64,
}

impl TurnLock {
    /// Waits for the call's turn. Cancel-safe: a waiting call dropped
    /// before its turn leaves the queue.
    pub async fn acquire(&self, reentrant: Option<Reentrant<'_>>) -> Result<Turn<'_>, TurnError> {
        let (turn, start) = self.join(reentrant)?;
        loop {
            let notified = start.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if start.begun.load(Ordering::Acquire) {
                return Ok(turn);
            }
            if start.closed.load(Ordering::Acquire) {
                // `turn` drops here and takes the call out of the queue.
                return Err(TurnError::Closed);
            }
            notified.await;
        }
    }

    /// No turn is given from now on; calls still waiting are refused. Calls
    /// in their turn finish.
    pub fn close(&self) {
        let mut q = self.lock();
        q.closed = true;
        for c in &q.chains {
            c.start.closed.store(true, Ordering::Release);
            c.start.notify.notify_waiters();
        }
    }

    /// Chains queued or running.
    pub fn len(&self) -> usize {
        self.lock().chains.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A panic inside these short sections cannot leave the queue half
        // changed, so a poisoned lock is still a good one.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn join(&self, reentrant: Option<Reentrant<'_>>) -> Result<(Turn<'_>, Arc<Start>), TurnError> {
        let mut q = self.lock();
        if q.closed {
            return Err(TurnError::Closed);
        }
        if let Some(r) = reentrant
            && let Some(c) = q.chains.iter_mut().find(|c| c.id.as_deref() == Some(r.id))
        {
            if c.calls >= r.max_depth {
                return Err(TurnError::StackDepth);
            }
            c.calls += 1;
            let turn = Turn {
                lock: self,
                key: c.key,
            };
            return Ok((turn, c.start.clone()));
        }
        let key = q.next_key;
        q.next_key += 1;
        let start = Arc::new(Start::default());
        if q.chains.is_empty() {
            start.begun.store(true, Ordering::Release);
        }
        q.chains.push_back(Chain {
            key,
            id: reentrant.map(|r| Arc::from(r.id)),
            calls: 1,
            start: start.clone(),
        });
        Ok((Turn { lock: self, key }, start))
    }

    fn leave(&self, key: u64) {
        let mut q = self.lock();
        let Some(at) = q.chains.iter().position(|c| c.key == key) else {
            return;
        };
        let c = &mut q.chains[at];
        c.calls -= 1;
        if c.calls > 0 {
            return;
        }
        q.chains.remove(at);
        // The chain that ran is done: the next one's turn. (A chain given up
        // while it waited just leaves.)
        if at == 0
            && let Some(next) = q.chains.front()
        {
            next.start.begin();
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.lock.leave(self.key);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    use super::*;

    fn chain(id: &str, max_depth: u32) -> Option<Reentrant<'_>> {
        Some(Reentrant { id, max_depth })
    }

    #[tokio::test]
    async fn turns_never_overlap_and_come_in_arrival_order() {
        let lock = Arc::new(TurnLock::default());
        let inside = Arc::new(AtomicU32::new(0));
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = lock.acquire(None).await.expect("turn");
        let mut tasks = Vec::new();
        for i in 0..50 {
            let (lock, inside, order) = (lock.clone(), inside.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _t = lock.acquire(None).await.expect("turn");
                assert_eq!(
                    inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two turns at once"
                );
                order.lock().expect("order").push(i);
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
            }));
            // Each arrives before the next one starts.
            tokio::task::yield_now().await;
        }
        drop(first);
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(*order.lock().expect("order"), (0..50).collect::<Vec<_>>());
        assert!(lock.is_empty());
    }

    #[tokio::test]
    async fn a_call_of_the_running_chain_enters_at_once_up_to_the_depth() {
        let lock = TurnLock::default();
        let a1 = lock.acquire(chain("a", 3)).await.expect("a1");
        let a2 = lock.acquire(chain("a", 3)).await.expect("a2 enters");
        let a3 = lock.acquire(chain("a", 3)).await.expect("a3 enters");
        assert_eq!(
            lock.acquire(chain("a", 3)).await.err(),
            Some(TurnError::StackDepth)
        );
        // The refused call left no count behind: the turn ends when the
        // three that entered do.
        drop((a3, a2, a1));
        assert!(lock.is_empty());
        let _b = tokio::time::timeout(Duration::from_secs(5), lock.acquire(chain("b", 3)))
            .await
            .expect("the turn was free again")
            .expect("b");
    }

    #[tokio::test]
    async fn another_chain_waits_for_the_whole_chain() {
        let lock = Arc::new(TurnLock::default());
        let a1 = lock.acquire(chain("a", 32)).await.expect("a1");
        let a2 = lock.acquire(chain("a", 32)).await.expect("a2");
        let l2 = lock.clone();
        let mut b = tokio::spawn(async move {
            let _t = l2.acquire(chain("b", 32)).await.expect("b");
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut b)
                .await
                .is_err()
        );
        drop(a1);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut b)
                .await
                .is_err(),
            "b ran while a's chain still had a call"
        );
        drop(a2);
        tokio::time::timeout(Duration::from_secs(5), b)
            .await
            .expect("b's turn came")
            .expect("b");
    }

    #[tokio::test]
    async fn without_reentrancy_the_same_actor_waits() {
        let lock = TurnLock::default();
        let _a = lock.acquire(None).await.expect("a");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), lock.acquire(None))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_waiting_call_given_up_leaves_the_queue() {
        let lock = Arc::new(TurnLock::default());
        let a = lock.acquire(None).await.expect("a");
        let l2 = lock.clone();
        let b = tokio::spawn(async move {
            let _t = l2.acquire(None).await.expect("b");
            std::future::pending::<()>().await;
        });
        tokio::task::yield_now().await;
        assert_eq!(lock.len(), 2);
        b.abort();
        let _ = b.await;
        assert_eq!(lock.len(), 1);
        drop(a);
        let _c = tokio::time::timeout(Duration::from_secs(5), lock.acquire(None))
            .await
            .expect("c was not held up by the call that gave up")
            .expect("c");
    }

    #[tokio::test]
    async fn closing_refuses_the_waiting_and_the_new() {
        let lock = Arc::new(TurnLock::default());
        let a = lock.acquire(None).await.expect("a");
        let l2 = lock.clone();
        let waiting = tokio::spawn(async move { l2.acquire(None).await.map(drop) });
        tokio::task::yield_now().await;
        lock.close();
        assert_eq!(waiting.await.expect("task"), Err(TurnError::Closed));
        assert_eq!(lock.acquire(None).await.err(), Some(TurnError::Closed));
        drop(a);
        assert!(lock.is_empty());
    }
}
