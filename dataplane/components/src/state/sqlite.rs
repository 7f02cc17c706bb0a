//! `state.sqlite`, the embedded default: a SQLite file under
//! `$SKIFF_HOME`, durable (WAL, `synchronous=NORMAL`), zero setup, in the
//! table layout of Dapr's driver (`key, value, is_binary, etag,
//! expiration_time, update_time`; UUIDv4 ETags; base64 for binary values),
//! so a database daprd wrote is read here and back.
//!
//! rusqlite is blocking, so it never runs on the async runtime: one writer
//! thread owns the write connection and commits in groups (every write
//! queued while the previous commit ran goes into the next transaction,
//! each in a savepoint of its own so one failed write does not undo the
//! others), and a few reader threads share the read jobs. Async callers
//! talk to them over channels and wait on a oneshot, with the component's
//! `timeout`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::oneshot;

use super::query::{self, Query};
use super::{
    Concurrency, Consistency, DeleteRequest, Features, Item, Op, Querier, SetRequest, StateError,
    StateStore, Transactional, Ttl,
};
use crate::{BoxFuture, MetadataError, Properties};

/// Most writes one commit carries.
pub const MAX_GROUP: usize = 1024;
/// Reader threads (file databases; `:memory:` reads on the writer).
pub const DEFAULT_READERS: usize = 2;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often expired rows are deleted (`cleanupInterval`; 0 turns it off).
pub const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(3600);
pub const DEFAULT_TABLE: &str = "state";
pub const DEFAULT_METADATA_TABLE: &str = "metadata";

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("sqlite {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("sqlite: cannot start its threads: {0}")]
    Thread(#[source] std::io::Error),
}

type Reply<T> = oneshot::Sender<Result<T, StateError>>;

enum Job {
    Get(String, Reply<Option<Item>>),
    BulkGet(Vec<String>, oneshot::Sender<Vec<super::BulkItem>>),
    Scan(String, Reply<Vec<(String, Item)>>),
    /// One write, or a transaction (`atomic`: all or none).
    Write(Vec<Op>, Reply<()>),
    Sweep,
}

struct Config {
    path: String,
    table: String,
    busy_timeout: Duration,
    wal: bool,
    pragmas: Vec<(String, String)>,
}

pub struct SqliteStore {
    writes: Sender<Job>,
    reads: Sender<Job>,
    timeout: Duration,
}

impl SqliteStore {
    /// Opens (creating) the database and its tables, and starts the
    /// threads.
    pub fn open(meta: &Properties) -> Result<Arc<Self>, OpenError> {
        let conn_str = meta
            .get_any(&["connectionString", "url"])
            .ok_or_else(|| MetadataError {
                field: "connectionString".into(),
                why: "is required (a file path, file: URI or :memory:)".into(),
            })?;
        let (path, pragmas) = parse_connection_string(conn_str)?;
        let table = meta.string_or("tableName", DEFAULT_TABLE);
        let metadata_table = meta.string_or("metadataTableName", DEFAULT_METADATA_TABLE);
        for (field, t) in [
            ("tableName", &table),
            ("metadataTableName", &metadata_table),
        ] {
            if !valid_identifier(t) {
                return Err(MetadataError {
                    field: field.into(),
                    why: "must be letters, digits and underscores".into(),
                }
                .into());
            }
        }
        let cfg = Arc::new(Config {
            path: path.clone(),
            table,
            busy_timeout: meta.duration_or("busyTimeout", DEFAULT_BUSY_TIMEOUT)?,
            wal: !meta.bool_or("disableWAL", false)?,
            pragmas,
        });
        let timeout = meta.duration_or("timeout", DEFAULT_TIMEOUT)?;
        let cleanup = meta.duration_or("cleanupInterval", DEFAULT_CLEANUP_INTERVAL)?;
        let in_memory = path == ":memory:" || path.contains("mode=memory");

        let sqlite_err = |source| OpenError::Sqlite {
            path: path.clone(),
            source,
        };
        let writer = connect(&cfg, false).map_err(sqlite_err)?;
        crate::sqliteopen::retry_busy(cfg.busy_timeout, || {
            migrate(&writer, &cfg.table, &metadata_table)
        })
        .map_err(sqlite_err)?;

        let (wtx, wrx) = crossbeam_channel::unbounded();
        let cfg_w = cfg.clone();
        std::thread::Builder::new()
            .name("skiff-sqlite-w".into())
            .spawn(move || writer_loop(writer, &cfg_w, wrx))
            .map_err(OpenError::Thread)?;
        let reads = if in_memory {
            wtx.clone()
        } else {
            let (rtx, rrx) = crossbeam_channel::unbounded();
            for i in 0..DEFAULT_READERS {
                let conn = connect(&cfg, true).map_err(sqlite_err)?;
                let (cfg_r, rrx) = (cfg.clone(), rrx.clone());
                std::thread::Builder::new()
                    .name(format!("skiff-sqlite-r{i}"))
                    .spawn(move || reader_loop(conn, &cfg_r, rrx))
                    .map_err(OpenError::Thread)?;
            }
            rtx
        };
        let store = Arc::new(Self {
            writes: wtx,
            reads,
            timeout,
        });
        if !cleanup.is_zero()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(sweep(store.writes.clone(), cleanup));
        }
        Ok(store)
    }

    fn ask<T: Send + 'static>(
        &self,
        to: &Sender<Job>,
        job: impl FnOnce(Reply<T>) -> Job,
    ) -> impl Future<Output = Result<T, StateError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let sent = to.send(job(tx)).is_ok();
        let timeout = self.timeout;
        async move {
            if !sent {
                return Err(StateError::Backend(
                    "sqlite: the store's threads stopped".into(),
                ));
            }
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(StateError::Backend(
                    "sqlite: the store's threads stopped".into(),
                )),
                Err(_) => Err(StateError::Backend(format!(
                    "sqlite: no answer within {timeout:?}"
                ))),
            }
        }
    }
}

async fn sweep(writes: Sender<Job>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        if writes.send(Job::Sweep).is_err() {
            return;
        }
    }
}

/// `path`, `file:path?k=v&_pragma=name(value)` or `:memory:`. Go driver
/// parameters are taken apart here: `_pragma`s become PRAGMAs (except the
/// three this driver sets itself, refused as Dapr refuses them), `_txlock`
/// is implied (writes always begin IMMEDIATE).
fn parse_connection_string(s: &str) -> Result<(String, Vec<(String, String)>), MetadataError> {
    let bad = |why: String| MetadataError {
        field: "connectionString".into(),
        why,
    };
    let Some((base, query)) = s.split_once('?') else {
        return Ok((s.to_owned(), Vec::new()));
    };
    let mut keep = Vec::new();
    let mut pragmas = Vec::new();
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "_pragma" => {
                let (name, val) = v
                    .strip_suffix(')')
                    .and_then(|x| x.split_once('('))
                    .ok_or_else(|| bad(format!("_pragma {v:?} is not name(value)")))?;
                let lname = name.to_ascii_lowercase();
                if matches!(
                    lname.as_str(),
                    "busy_timeout" | "journal_mode" | "foreign_keys"
                ) {
                    return Err(bad(format!(
                        "_pragma {lname} is set by the component (use busyTimeout / disableWAL)"
                    )));
                }
                if !valid_identifier(name)
                    || !val
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(bad(format!("_pragma {v:?} is not name(value)")));
                }
                pragmas.push((name.to_owned(), val.to_owned()));
            }
            "_txlock" => {}
            _ => keep.push(kv),
        }
    }
    let path = if keep.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", keep.join("&"))
    };
    Ok((path, pragmas))
}

fn valid_identifier(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn connect(cfg: &Config, read_only: bool) -> rusqlite::Result<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    flags |= if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    };
    if let Some(dir) = Path::new(cfg.path.trim_start_matches("file:"))
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !read_only && !cfg.path.contains(":memory:"))
    {
        let _ = std::fs::create_dir_all(dir);
    }
    let conn = Connection::open_with_flags(&cfg.path, flags)?;
    conn.busy_timeout(cfg.busy_timeout)?;
    if !read_only {
        if cfg.wal {
            // Every sidecar of the machine may be creating this file now.
            crate::sqliteopen::retry_busy(cfg.busy_timeout, || {
                conn.pragma_update(None, "journal_mode", "WAL")
            })?;
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
    }
    for (k, v) in &cfg.pragmas {
        conn.pragma_update(None, k, v)?;
    }
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

fn migrate(conn: &Connection, table: &str, metadata: &str) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {metadata} (key TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS {table} (
            key TEXT NOT NULL PRIMARY KEY,
            value TEXT NOT NULL,
            is_binary BOOLEAN NOT NULL,
            etag TEXT NOT NULL,
            expiration_time TIMESTAMP DEFAULT NULL,
            update_time TIMESTAMP DEFAULT NULL);
         CREATE INDEX IF NOT EXISTS {table}_expiration_time_idx ON {table} (expiration_time);
         INSERT OR IGNORE INTO {metadata} (key, value) VALUES ('migrations', '1');"
    ))
}

const LIVE: &str = "(expiration_time IS NULL OR expiration_time > CURRENT_TIMESTAMP)";

fn backend(e: rusqlite::Error) -> StateError {
    StateError::Backend(format!("sqlite: {e}"))
}

/// SQLite's `TIMESTAMP` text (`YYYY-MM-DD HH:MM:SS`, UTC) as a time.
fn parse_time(s: &str) -> Option<SystemTime> {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let t = time::PrimitiveDateTime::parse(s.get(..19)?, &fmt).ok()?;
    let secs = t.assume_utc().unix_timestamp();
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

fn decode(value: String, is_binary: bool) -> Result<Bytes, StateError> {
    if is_binary {
        base64::engine::general_purpose::STANDARD
            .decode(value)
            .map(Bytes::from)
            .map_err(|e| StateError::Backend(format!("sqlite: a binary value is not base64: {e}")))
    } else {
        Ok(Bytes::from(value))
    }
}

fn row_item(
    value: String,
    is_binary: bool,
    etag: String,
    exp: Option<String>,
) -> Result<Item, StateError> {
    Ok(Item {
        data: decode(value, is_binary)?,
        etag: Some(etag),
        expires: exp.as_deref().and_then(parse_time),
    })
}

fn get(conn: &Connection, table: &str, key: &str) -> Result<Option<Item>, StateError> {
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT value, is_binary, etag, expiration_time FROM {table} WHERE key = ?1 AND {LIVE}"
        ))
        .map_err(backend)?;
    let row = st
        .query_row([key], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })
        .optional()
        .map_err(backend)?;
    row.map(|(v, b, e, x)| row_item(v, b, e, x)).transpose()
}

fn scan(conn: &Connection, table: &str, prefix: &str) -> Result<Vec<(String, Item)>, StateError> {
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT key, value, is_binary, etag, expiration_time FROM {table}
             WHERE substr(key, 1, length(?1)) = ?1 AND {LIVE} ORDER BY key"
        ))
        .map_err(backend)?;
    let rows = st
        .query_map([prefix], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, bool>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })
        .map_err(backend)?;
    let mut out = Vec::new();
    for r in rows {
        let (k, v, b, e, x) = r.map_err(backend)?;
        out.push((k, row_item(v, b, e, x)?));
    }
    Ok(out)
}

fn read_job(conn: &Connection, table: &str, job: Job) -> Option<Job> {
    match job {
        Job::Get(k, reply) => {
            let _ = reply.send(get(conn, table, &k));
        }
        Job::BulkGet(keys, reply) => {
            let _ = reply.send(keys.iter().map(|k| get(conn, table, k)).collect());
        }
        Job::Scan(prefix, reply) => {
            let _ = reply.send(scan(conn, table, &prefix));
        }
        other => return Some(other),
    }
    None
}

fn reader_loop(conn: Connection, cfg: &Config, jobs: Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        read_job(&conn, &cfg.table, job);
    }
}

fn writer_loop(conn: Connection, cfg: &Config, jobs: Receiver<Job>) {
    let mut group: Vec<(Vec<Op>, Reply<()>)> = Vec::new();
    while let Ok(first) = jobs.recv() {
        let mut next = Some(first);
        // Reads (`:memory:`) and sweeps run between groups; writes queue up.
        while let Some(job) = next.take() {
            match read_job(&conn, &cfg.table, job) {
                None => {}
                Some(Job::Write(ops, reply)) => group.push((ops, reply)),
                Some(Job::Sweep) => sweep_expired(&conn, &cfg.table),
                Some(_) => {}
            }
            if group.len() < MAX_GROUP {
                next = jobs.try_recv().ok();
            }
        }
        if !group.is_empty() {
            commit_group(&conn, &cfg.table, &mut group);
        }
    }
}

fn sweep_expired(conn: &Connection, table: &str) {
    let sql = format!(
        "DELETE FROM {table} WHERE expiration_time IS NOT NULL AND expiration_time <= CURRENT_TIMESTAMP"
    );
    match conn.execute(&sql, []) {
        Ok(n) if n > 0 => tracing::debug!(rows = n, "sqlite: expired state deleted"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "sqlite: deleting expired state failed"),
    }
}

/// One transaction for the whole group, a savepoint per job: a job that
/// fails is rolled back alone, and every answer waits for the commit.
fn commit_group(conn: &Connection, table: &str, group: &mut Vec<(Vec<Op>, Reply<()>)>) {
    let mut results: Vec<Result<(), StateError>> = Vec::with_capacity(group.len());
    let began = conn.execute_batch("BEGIN IMMEDIATE").map_err(backend);
    if let Err(e) = began {
        for (_, reply) in group.drain(..) {
            let _ = reply.send(Err(e.clone()));
        }
        return;
    }
    for (ops, _) in group.iter_mut() {
        let r = conn
            .execute_batch("SAVEPOINT job")
            .map_err(backend)
            .and_then(|()| {
                let mut r = Ok(());
                for op in ops.drain(..) {
                    r = apply(conn, table, op);
                    if r.is_err() {
                        break;
                    }
                }
                r
            });
        let end = if r.is_ok() {
            "RELEASE job"
        } else {
            "ROLLBACK TO job; RELEASE job"
        };
        results.push(r.and(conn.execute_batch(end).map_err(backend)));
    }
    if let Err(e) = conn.execute_batch("COMMIT").map_err(backend) {
        let _ = conn.execute_batch("ROLLBACK");
        results.iter_mut().for_each(|r| *r = Err(e.clone()));
    }
    for ((_, reply), r) in group.drain(..).zip(results) {
        let _ = reply.send(r);
    }
}

fn apply(conn: &Connection, table: &str, op: Op) -> Result<(), StateError> {
    match op {
        Op::Set(s) => set(conn, table, s),
        Op::Delete(d) => delete(conn, table, d),
    }
}

fn set(conn: &Connection, table: &str, s: SetRequest) -> Result<(), StateError> {
    let (value, is_binary) = if s.is_json {
        match String::from_utf8(s.value.to_vec()) {
            Ok(text) => (text, false),
            Err(_) => (
                base64::engine::general_purpose::STANDARD.encode(&s.value),
                true,
            ),
        }
    } else {
        (
            base64::engine::general_purpose::STANDARD.encode(&s.value),
            true,
        )
    };
    let ttl: Option<i64> = match s.ttl {
        Ttl::Seconds(n) => Some(i64::try_from(n).unwrap_or(i64::MAX)),
        Ttl::Unset | Ttl::Clear => None,
    };
    let etag = crate::util::uuid_v4();
    let expiry = "CASE WHEN ?5 IS NULL THEN NULL ELSE DATETIME(CURRENT_TIMESTAMP, '+' || ?5 || ' seconds') END";
    let given = s.etag.as_deref().filter(|e| !e.is_empty());
    let changed = match (given, s.concurrency) {
        (Some(old), _) => conn
            .prepare_cached(&format!(
                "UPDATE {table} SET value = ?2, is_binary = ?3, etag = ?4, update_time = CURRENT_TIMESTAMP,
                 expiration_time = {expiry} WHERE key = ?1 AND etag = ?6 AND {LIVE}"
            ))
            .and_then(|mut st| st.execute(params![s.key, value, is_binary, etag, ttl, old])),
        (None, Concurrency::FirstWrite) => conn
            .prepare_cached(&format!(
                "INSERT INTO {table} (key, value, is_binary, etag, update_time, expiration_time)
                 VALUES (?1, ?2, ?3, ?4, CURRENT_TIMESTAMP, {expiry})
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, is_binary = excluded.is_binary,
                   etag = excluded.etag, update_time = excluded.update_time, expiration_time = excluded.expiration_time
                 WHERE {table}.expiration_time IS NOT NULL AND {table}.expiration_time <= CURRENT_TIMESTAMP"
            ))
            .and_then(|mut st| st.execute(params![s.key, value, is_binary, etag, ttl])),
        (None, Concurrency::LastWrite) => conn
            .prepare_cached(&format!(
                "INSERT INTO {table} (key, value, is_binary, etag, update_time, expiration_time)
                 VALUES (?1, ?2, ?3, ?4, CURRENT_TIMESTAMP, {expiry})
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, is_binary = excluded.is_binary,
                   etag = excluded.etag, update_time = excluded.update_time, expiration_time = excluded.expiration_time"
            ))
            .and_then(|mut st| st.execute(params![s.key, value, is_binary, etag, ttl])),
    }
    .map_err(backend)?;
    if changed == 0 {
        return Err(StateError::EtagMismatch(match given {
            Some(_) => "the stored value has another etag (or none)".to_owned(),
            None => "first-write: the key was already written".to_owned(),
        }));
    }
    Ok(())
}

fn delete(conn: &Connection, table: &str, d: DeleteRequest) -> Result<(), StateError> {
    match d.etag.as_deref().filter(|e| !e.is_empty()) {
        Some(old) => {
            let n = conn
                .prepare_cached(&format!(
                    "DELETE FROM {table} WHERE key = ?1 AND etag = ?2 AND {LIVE}"
                ))
                .and_then(|mut st| st.execute(params![d.key, old]))
                .map_err(backend)?;
            if n == 0 {
                return Err(StateError::EtagMismatch(
                    "the stored value has another etag (or none)".to_owned(),
                ));
            }
        }
        None => {
            conn.prepare_cached(&format!("DELETE FROM {table} WHERE key = ?1"))
                .and_then(|mut st| st.execute([&d.key]))
                .map_err(backend)?;
        }
    }
    Ok(())
}

impl StateStore for SqliteStore {
    fn features(&self) -> Features {
        Features::ETAG
            .union(Features::TRANSACTIONAL)
            .union(Features::TTL)
            .union(Features::QUERY_API)
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        _c: Consistency,
    ) -> BoxFuture<'a, Result<Option<Item>, StateError>> {
        let key = key.to_owned();
        Box::pin(self.ask(&self.reads, |r| Job::Get(key, r)))
    }

    fn bulk_get<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Vec<super::BulkItem>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.reads.send(Job::BulkGet(keys.to_vec(), tx)).is_ok();
        let timeout = self.timeout;
        let n = keys.len();
        Box::pin(async move {
            let fail = |why: String| {
                (0..n)
                    .map(|_| Err(StateError::Backend(why.clone())))
                    .collect()
            };
            if !sent {
                return fail("sqlite: the store's threads stopped".into());
            }
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(items)) => items,
                Ok(Err(_)) => fail("sqlite: the store's threads stopped".into()),
                Err(_) => fail(format!("sqlite: no answer within {timeout:?}")),
            }
        })
    }

    fn set(&self, req: SetRequest) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(self.ask(&self.writes, |r| Job::Write(vec![Op::Set(req)], r)))
    }

    fn delete(&self, req: DeleteRequest) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(self.ask(&self.writes, |r| Job::Write(vec![Op::Delete(req)], r)))
    }

    fn transactional(&self) -> Option<&dyn Transactional> {
        Some(self)
    }

    fn querier(&self) -> Option<&dyn Querier> {
        Some(self)
    }
}

impl Transactional for SqliteStore {
    fn multi(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(self.ask(&self.writes, |r| Job::Write(ops, r)))
    }
}

impl Querier for SqliteStore {
    /// Scans the prefix's live rows on a reader and filters in process.
    fn query<'a>(
        &'a self,
        prefix: &'a str,
        q: Query,
    ) -> BoxFuture<'a, Result<query::Answer, StateError>> {
        let scan = self.ask(&self.reads, |r| Job::Scan(prefix.to_owned(), r));
        Box::pin(async move { query::evaluate(scan.await?, &q).map_err(StateError::Invalid) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings() {
        let (p, pr) = parse_connection_string(
            "file:data.db?_txlock=immediate&_pragma=cache_size(4000)&mode=rwc",
        )
        .expect("valid");
        assert_eq!(p, "file:data.db?mode=rwc");
        assert_eq!(pr, [("cache_size".to_owned(), "4000".to_owned())]);
        let e = parse_connection_string("x.db?_pragma=journal_mode(DELETE)").expect_err("refused");
        assert!(e.to_string().contains("disableWAL"), "{e}");
        assert_eq!(
            parse_connection_string(":memory:").expect("valid").0,
            ":memory:"
        );
    }

    #[test]
    fn timestamps() {
        let t = parse_time("2023-11-14 22:13:20").expect("parses");
        assert_eq!(crate::util::rfc3339(t), "2023-11-14T22:13:20Z");
    }
}
