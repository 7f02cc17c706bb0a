//! Opening a SQLite file that other processes may be opening at the same
//! moment (every sidecar on a machine shares the embedded stores). Two
//! steps of a first open do not wait on SQLite's busy handler: switching
//! the file to WAL needs an exclusive lock that SQLite refuses at once
//! rather than wait for, and a schema write that must upgrade a read lock
//! answers `SQLITE_BUSY` to avoid a deadlock. Both are safe to retry.

use std::time::{Duration, Instant};

use rusqlite::ErrorCode;

/// Pause between attempts.
const RETRY_EVERY: Duration = Duration::from_millis(10);

fn busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Runs `f` until it does not fail with busy/locked, for up to `within`.
/// Only for start-up steps: it sleeps the calling thread between tries.
pub(crate) fn retry_busy<T>(
    within: Duration,
    mut f: impl FnMut() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let end = Instant::now() + within;
    loop {
        match f() {
            Err(e) if busy(&e) && Instant::now() < end => std::thread::sleep(RETRY_EVERY),
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_first_opens_at_once_all_succeed() {
        let dir = std::env::temp_dir().join(format!("skiff-sqliteopen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("x.db");
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let c = rusqlite::Connection::open(&path)?;
                    c.busy_timeout(Duration::from_secs(5))?;
                    retry_busy(Duration::from_secs(5), || {
                        c.pragma_update(None, "journal_mode", "WAL")
                    })?;
                    retry_busy(Duration::from_secs(5), || {
                        c.execute_batch("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY)")
                    })
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread").expect("open");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
