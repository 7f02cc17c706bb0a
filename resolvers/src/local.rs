//! The embedded default resolver: a registry of files on the local machine.
//!
//! Every sidecar started with the same `SKIFF_HOME` writes one small JSON file
//! `registry/<namespace>/<app-id>/<instance>.json` and rewrites it every
//! [`HEARTBEAT_INTERVAL`]. Readers list the app's directory and keep entries
//! whose file is fresh (younger than [`STALE_AFTER`]) and whose process is
//! still alive, so a sidecar killed without deregistering disappears within
//! one refresh. Files are written to a temporary name and renamed, so readers
//! never see half an entry. No daemon, no configuration.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::{AppRef, BoxFuture, Endpoint, EndpointSet, Registration, ResolveError, Resolver};

/// How often a sidecar rewrites its registry entry.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// An entry not rewritten for this long belongs to a dead or hung sidecar.
pub const STALE_AFTER: Duration = Duration::from_secs(7);
/// How often known endpoint sets are re-read.
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(500);

/// The registry entry, one file per sidecar.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct Entry {
    app_id: String,
    namespace: String,
    address: SocketAddr,
    pid: u32,
    http_port: u16,
    #[serde(default)]
    app_port: Option<u16>,
}

/// The local file registry under `<home>/registry`.
pub struct LocalResolver {
    root: PathBuf,
    sets: Arc<DashMap<AppRef, Arc<EndpointSet>>>,
    // Cold path only: registration and shutdown.
    own: Mutex<Option<(PathBuf, JoinHandle<()>)>>,
    refresher: JoinHandle<()>,
}

impl LocalResolver {
    /// Opens (creating if needed) the registry under `home` and starts the
    /// background refresher. Must be called inside a tokio runtime.
    pub fn new(home: &Path) -> Result<Self, ResolveError> {
        let root = home.join("registry");
        std::fs::create_dir_all(&root).map_err(|source| io_err(&root, source))?;
        let sets: Arc<DashMap<AppRef, Arc<EndpointSet>>> = Arc::default();
        let refresher = tokio::spawn(refresh_loop(root.clone(), sets.clone()));
        Ok(Self {
            root,
            sets,
            own: Mutex::new(None),
            refresher,
        })
    }

    /// The directory that holds the registry.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for LocalResolver {
    fn drop(&mut self) {
        self.refresher.abort();
        if let Ok(mut own) = self.own.lock()
            && let Some((_, hb)) = own.take()
        {
            hb.abort();
        }
    }
}

impl Resolver for LocalResolver {
    fn resolve(&self, app: &AppRef) -> Result<Arc<EndpointSet>, ResolveError> {
        if let Some(set) = self.sets.get(app) {
            return Ok(set.clone());
        }
        let set = Arc::new(EndpointSet::new(scan_app(&self.root, app)));
        Ok(self.sets.entry(app.clone()).or_insert(set).clone())
    }

    fn register(&self, reg: Registration) -> BoxFuture<'_, Result<(), ResolveError>> {
        Box::pin(async move {
            let dir = app_dir(&self.root, &reg.app);
            std::fs::create_dir_all(&dir).map_err(|source| io_err(&dir, source))?;
            let entry = Entry {
                app_id: reg.app.app_id.clone(),
                namespace: reg.app.namespace.clone(),
                address: reg.internal_addr,
                pid: std::process::id(),
                http_port: reg.http_port,
                app_port: reg.app_port,
            };
            let file = dir.join(format!(
                "{}-{}.json",
                std::process::id(),
                reg.internal_addr.port()
            ));
            let body = serde_json::to_vec(&entry).map_err(|e| ResolveError::BadEntry {
                path: file.display().to_string(),
                why: e.to_string(),
            })?;
            write_atomic(&file, &body)?;
            let hb = tokio::spawn(heartbeat(file.clone(), body));
            let previous = self
                .own
                .lock()
                .map_err(|_| poisoned(&file))?
                .replace((file, hb));
            if let Some((_, old)) = previous {
                old.abort();
            }
            Ok(())
        })
    }

    fn deregister(&self) -> BoxFuture<'_, Result<(), ResolveError>> {
        Box::pin(async move {
            let own = self.own.lock().map_err(|_| poisoned(&self.root))?.take();
            if let Some((file, hb)) = own {
                hb.abort();
                match std::fs::remove_file(&file) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => return Err(io_err(&file, source)),
                }
            }
            Ok(())
        })
    }

    fn name(&self) -> &'static str {
        "local"
    }

    fn cached(&self) -> Vec<(AppRef, Arc<EndpointSet>)> {
        self.sets
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }
}

fn app_dir(root: &Path, app: &AppRef) -> PathBuf {
    root.join(&app.namespace).join(&app.app_id)
}

fn io_err(path: &Path, source: io::Error) -> ResolveError {
    ResolveError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn poisoned(path: &Path) -> ResolveError {
    ResolveError::BadEntry {
        path: path.display().to_string(),
        why: "registration state poisoned by an earlier panic".into(),
    }
}

fn write_atomic(file: &Path, body: &[u8]) -> Result<(), ResolveError> {
    let tmp = file.with_extension("json.tmp");
    std::fs::write(&tmp, body).map_err(|source| io_err(&tmp, source))?;
    std::fs::rename(&tmp, file).map_err(|source| io_err(file, source))
}

/// Rewrites the entry so readers see it fresh; recreates it if someone
/// removed the file (e.g. a cleaned-up registry directory).
async fn heartbeat(file: PathBuf, body: Vec<u8>) {
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Some(dir) = file.parent()
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            tracing::warn!(path = %dir.display(), error = %e, "registry heartbeat failed");
            continue;
        }
        if let Err(e) = write_atomic(&file, &body) {
            tracing::warn!(error = %e, "registry heartbeat failed");
        }
    }
}

async fn refresh_loop(root: PathBuf, sets: Arc<DashMap<AppRef, Arc<EndpointSet>>>) {
    let mut tick = tokio::time::interval(REFRESH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Collect first so no map shard is held across file-system work.
        let apps: Vec<(AppRef, Arc<EndpointSet>)> = sets
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        for (app, set) in apps {
            if set.update(scan_app(&root, &app)) {
                tracing::debug!(app = %app.app_id, ns = %app.namespace, endpoints = set.snapshot().len(), "endpoints changed");
            }
        }
    }
}

/// Reads the live entries of one app. Unreadable or malformed files are
/// skipped (they may be mid-write by an older version or being removed).
fn scan_app(root: &Path, app: &AppRef) -> Vec<Endpoint> {
    let dir = app_dir(root, app);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let now = SystemTime::now();
    let mut seen = HashSet::new();
    let mut out: Vec<Endpoint> = rd
        .flatten()
        .filter_map(|de| read_live_entry(&de.path(), now))
        .filter(|(e, _)| e.app_id == app.app_id && e.namespace == app.namespace)
        .filter(|(e, _)| seen.insert(e.address))
        .map(|(e, name)| Endpoint {
            addr: e.address,
            instance: name.into(),
        })
        .collect();
    out.sort_by_key(|e| e.addr);
    out
}

fn read_live_entry(path: &Path, now: SystemTime) -> Option<(Entry, String)> {
    if path.extension().is_none_or(|x| x != "json") {
        return None;
    }
    let meta = std::fs::metadata(path).ok()?;
    let age = now
        .duration_since(meta.modified().ok()?)
        .unwrap_or_default();
    if age > STALE_AFTER {
        return None;
    }
    let entry: Entry = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    if !process_alive(entry.pid) {
        return None;
    }
    let name = path.file_stem()?.to_string_lossy().into_owned();
    Some((entry, name))
}

/// On Linux a dead process is noticed at once through /proc; elsewhere the
/// staleness window alone decides.
fn process_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return true;
    }
    proc.join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(app: &str, port: u16) -> Registration {
        Registration {
            http_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            app: AppRef::new(app, "default"),
            internal_addr: SocketAddr::from(([127, 0, 0, 1], port)),
            http_port: 3500,
            app_port: None,
        }
    }

    #[tokio::test]
    async fn registered_sidecar_is_found_and_removed() {
        let home = tempfile::tempdir().expect("tempdir");
        let a = LocalResolver::new(home.path()).expect("open");
        let b = LocalResolver::new(home.path()).expect("open");
        a.register(reg("orders", 40001)).await.expect("register");

        let set = b
            .resolve(&AppRef::new("orders", "default"))
            .expect("resolve");
        let eps = set.snapshot();
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].addr.port(), 40001);

        // Another namespace does not see it.
        let other = b.resolve(&AppRef::new("orders", "prod")).expect("resolve");
        assert!(other.snapshot().is_empty());

        a.deregister().await.expect("deregister");
        assert!(scan_app(b.root(), &AppRef::new("orders", "default")).is_empty());
    }

    #[tokio::test]
    async fn dead_process_and_stale_entries_are_ignored() {
        let home = tempfile::tempdir().expect("tempdir");
        let r = LocalResolver::new(home.path()).expect("open");
        let app = AppRef::new("pay", "default");
        let dir = app_dir(r.root(), &app);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let dead = Entry {
            app_id: "pay".into(),
            namespace: "default".into(),
            address: "127.0.0.1:1".parse().expect("addr"),
            // Larger than any pid_max Linux allows.
            pid: u32::MAX,
            http_port: 1,
            app_port: None,
        };
        write_atomic(
            &dir.join("dead.json"),
            &serde_json::to_vec(&dead).expect("json"),
        )
        .expect("write");
        std::fs::write(dir.join("garbage.json"), b"{not json").expect("write");
        assert!(scan_app(r.root(), &app).is_empty());

        let alive = Entry {
            pid: std::process::id(),
            ..dead
        };
        let path = dir.join("alive.json");
        write_atomic(&path, &serde_json::to_vec(&alive).expect("json")).expect("write");
        assert_eq!(scan_app(r.root(), &app).len(), 1);
        // Judged one second after the staleness window, the entry is gone.
        let later = SystemTime::now() + STALE_AFTER + Duration::from_secs(1);
        assert!(read_live_entry(&path, later).is_none());
    }

    #[test]
    fn update_reports_changes_only() {
        let set = EndpointSet::default();
        let ep = Endpoint {
            addr: "127.0.0.1:9".parse().expect("addr"),
            instance: "x".into(),
        };
        assert!(set.update(vec![ep.clone()]));
        assert!(!set.update(vec![ep]));
        assert_eq!(set.generation(), 1);
    }
}
