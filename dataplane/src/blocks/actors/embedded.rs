//! Placement on one machine with nothing installed: the sidecars sharing
//! `$SKIFF_HOME` elect one of themselves through an OS file lock, and the
//! holder serves the placement protocol on loopback.
//!
//! Every sidecar that hosts or calls actors runs [`contend`]: it tries the
//! lock `placement/leader.lock` now and then; the one that gets it binds a
//! loopback port, writes it to `placement/leader.addr` and serves
//! [`skiff_placement::server`] for as long as it lives. The kernel lets go
//! of the lock when that process ends however it ends (SIGKILL included),
//! so another sidecar takes it within [`LEADER_POLL`], and the table is
//! rebuilt from the sidecars as they reconnect, the way Dapr's placement
//! rebuilds it after a leader change since 1.17. Followers read the
//! address file before each attempt ([`super::placement::Addresses::File`]).
//! No consensus code, no extra process: the kernel's lock is the election.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use skiff_placement::server::{PlacementService, Settings};

/// How often a sidecar that is not the leader tries the lock.
pub const LEADER_POLL: Duration = Duration::from_millis(500);

/// The lock the leader holds.
pub fn lock_path(home: &Path) -> PathBuf {
    home.join("placement").join("leader.lock")
}

/// Where the leader writes its address.
pub fn addr_path(home: &Path) -> PathBuf {
    home.join("placement").join("leader.addr")
}

/// Contends for the leadership for as long as it is polled, and serves
/// placement while it holds it.
pub async fn contend(home: PathBuf, settings: Settings) {
    loop {
        match try_lead(&home) {
            Ok(Some(lock)) => {
                if let Err(e) = lead(&home, lock, settings).await {
                    tracing::warn!(error = %e, "serving placement failed; letting the leadership go");
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(path = %lock_path(&home).display(), error = %e, "cannot use the placement lock");
            }
        }
        tokio::time::sleep(LEADER_POLL).await;
    }
}

/// The lock, if this sidecar got it.
fn try_lead(home: &Path) -> std::io::Result<Option<File>> {
    let path = lock_path(home);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Serves placement while `lock` is held (until the serving fails or the
/// future is dropped, which lets the lock go).
async fn lead(home: &Path, lock: File, settings: Settings) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    publish_addr(&addr_path(home), &addr.to_string())?;
    tracing::info!(%addr, "this sidecar leads placement on this machine");
    let served = skiff_placement::server::serve(
        listener,
        PlacementService::new(settings),
        std::future::pending(),
    )
    .await;
    drop(lock);
    served.map_err(std::io::Error::other)
}

/// Writes the address whole (a reader never sees half of it).
fn publish_addr(path: &Path, addr: &str) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("addr.{}", std::process::id()));
    let mut f = File::create(&tmp)?;
    f.write_all(addr.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use skiff_proto::placement::Host as Report;

    use super::super::placement::{Addresses, View, connect_and_follow};
    use super::*;

    #[test]
    fn one_holder_of_the_lock_at_a_time() {
        let home = tempfile::tempdir().expect("home");
        let first = try_lead(home.path()).expect("lock").expect("free");
        assert!(try_lead(home.path()).expect("lock").is_none());
        drop(first);
        assert!(try_lead(home.path()).expect("lock").is_some());
    }

    fn me(name: &str) -> Report {
        Report {
            name: name.into(),
            id: "app".into(),
            entities: vec!["Cart".into()],
            namespace: "default".into(),
            ..Default::default()
        }
    }

    async fn settled(views: &[&View], at_least: u64) {
        let end = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let v = views[0].version();
            if views.iter().all(|x| x.ready() && x.version() == v) && v >= at_least {
                return;
            }
            assert!(tokio::time::Instant::now() < end, "never settled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_leader_takes_over_and_the_table_is_rebuilt() {
        let home = tempfile::tempdir().expect("home");
        let settings = Settings::default();
        // Sidecar A contends first and leads; B contends too. A runs on a
        // runtime of its own so that it can die whole, connections and
        // all, as a process does.
        let rt_a = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt_a.spawn(contend(home.path().into(), settings));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let lead_b = tokio::spawn(contend(home.path().into(), settings));
        let at = Addresses::File(addr_path(home.path()));
        let (a, b) = (Arc::new(View::default()), Arc::new(View::default()));
        let fa = tokio::spawn(connect_and_follow(at.clone(), me("a:1"), a.clone()));
        let fb = tokio::spawn(connect_and_follow(at.clone(), me("b:1"), b.clone()));
        settled(&[&a, &b], 1).await;
        let first_leader = std::fs::read_to_string(addr_path(home.path())).expect("addr");
        let before = (a.rounds(), b.rounds());

        // The leader dies (its runtime, with the lock, the port and every
        // stream); B's contender takes over, and both views come back
        // ready on one table from the new leader.
        rt_a.shutdown_background();
        let end = tokio::time::Instant::now() + Duration::from_secs(20);
        while std::fs::read_to_string(addr_path(home.path())).expect("addr") == first_leader {
            assert!(tokio::time::Instant::now() < end, "no new leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Both lost the old leader and finished a round with the new one.
        let end = tokio::time::Instant::now() + Duration::from_secs(20);
        while a.rounds() == before.0 || b.rounds() == before.1 {
            assert!(
                tokio::time::Instant::now() < end,
                "no round from the new leader"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        settled(&[&a, &b], 1).await;
        for id in (0..100).map(|i| i.to_string()) {
            let wait = Duration::from_secs(5);
            assert_eq!(
                a.owner("Cart", &id, wait).await.expect("a"),
                b.owner("Cart", &id, wait).await.expect("b")
            );
        }
        for t in [fa, fb, lead_b] {
            t.abort();
        }
    }
}
