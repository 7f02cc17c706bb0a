//! `pubsub.skiff.sqlite`, Skiff's own embedded durable broker (Dapr has no
//! such type): a queue in one SQLite file (WAL) under `$SKIFF_HOME` that
//! every sidecar on the machine opens, so apps get durable pub/sub with no
//! broker process and no Docker. Its limit is one machine: sidecars on
//! other hosts cannot share the file (use Redis or JetStream there).
//!
//! Layout: `pubsub_messages(seq, topic, data, metadata, published_ms)`;
//! `pubsub_groups(topic, grp, cursor)`: per consumer group the next
//! sequence number none of its members has fetched; `pubsub_claims(topic,
//! grp, seq, owner, until_ms, deliveries)`: fetched and not acked. A
//! fetch takes lapsed or released claims first, then new messages past
//! the cursor, in one write transaction, so two members (or two
//! sidecars) never hold the same message at once. A message is deleted
//! once every group's cursor is past it and no claim holds it; a new
//! group starts at the oldest message kept (as a new Redis consumer
//! group replays its stream).
//!
//! rusqlite blocks, so one writer thread per sidecar does all the work and
//! commits in groups: publishes, fetches, acks and claim renewals queued
//! while one commit ran go into the next transaction, and their callers
//! hear back only after it is durable. Another sidecar's publish is seen
//! by polling (a read that finds nothing takes no write lock); a publish
//! in this sidecar wakes its own subscriptions at once. The backlog gauge
//! counts on a read connection of its own (WAL readers do not block the
//! writer), on a blocking-pool thread.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{Notify, oneshot};

use super::{
    Features, Outgoing, PubSub, PubSubError, Received, SubscribeOptions, Subscription, now_ms,
};
use crate::{BoxFuture, MetadataError, Properties};

/// Most jobs one commit carries.
pub const MAX_GROUP: usize = 512;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages of topics no group subscribes to are kept this long, so a
/// subscriber that starts later still gets them (`retention`).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// How often delivered messages are deleted.
pub const TRIM_EVERY: Duration = Duration::from_secs(1);
/// Polling for other sidecars' publishes: from this when busy...
pub const POLL_MIN: Duration = Duration::from_millis(1);
/// ...backing off to this when idle.
pub const POLL_MAX: Duration = Duration::from_millis(25);

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
    #[error("sqlite: cannot start its thread: {0}")]
    Thread(#[source] std::io::Error),
}

type Reply<T> = oneshot::Sender<Result<T, PubSubError>>;

struct Fetch {
    topic: String,
    group: String,
    owner: String,
    max: usize,
    claim_ms: i64,
}

enum Job {
    Publish(String, Vec<Outgoing>, Reply<()>),
    Group(String, String, Reply<()>),
    Fetch(Fetch, Reply<Vec<Received>>),
    /// (topic, group, owner, ids, what)
    Claims(String, String, String, Vec<i64>, ClaimOp, Reply<()>),
    Trim,
}

#[derive(Clone, Copy)]
enum ClaimOp {
    Ack,
    Release,
    Renew(i64),
}

pub struct SqlitePubSub {
    jobs: Sender<Job>,
    /// Woken by this sidecar's publishes.
    published: Arc<Notify>,
    timeout: Duration,
    counter: Arc<Counter>,
}

/// A read-only connection for counting backlogs, opened on first use and
/// again after an error.
struct Counter {
    path: String,
    busy: Duration,
    conn: Mutex<Option<Connection>>,
}

impl Counter {
    fn backlog(&self, topic: &str, group: &str) -> Result<Option<u64>, PubSubError> {
        let broker = |e: rusqlite::Error| PubSubError::Broker(format!("sqlite: {e}"));
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let c = Connection::open_with_flags(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(broker)?;
            c.busy_timeout(self.busy).map_err(broker)?;
            *slot = Some(c);
        }
        let Some(c) = slot.as_ref() else {
            return Ok(None);
        };
        let n: Result<i64, _> = c
            .prepare_cached(
                "SELECT COUNT(*) FROM pubsub_messages WHERE topic = ?1 AND seq >=
                     (SELECT cursor FROM pubsub_groups WHERE topic = ?1 AND grp = ?2)",
            )
            .and_then(|mut q| q.query_row(params![topic, group], |r| r.get(0)));
        match n {
            Ok(n) => Ok(Some(u64::try_from(n).unwrap_or(0))),
            Err(e) => {
                *slot = None;
                Err(broker(e))
            }
        }
    }
}

impl SqlitePubSub {
    /// Opens (creating) the database and its tables, and starts the
    /// writer thread.
    pub fn open(meta: &Properties) -> Result<Arc<Self>, OpenError> {
        let path = meta
            .get_any(&["connectionString", "url"])
            .ok_or_else(|| MetadataError {
                field: "connectionString".into(),
                why: "is required (a file path)".into(),
            })?
            .trim()
            .trim_start_matches("file:")
            .to_owned();
        let busy = meta.duration_or("busyTimeout", DEFAULT_BUSY_TIMEOUT)?;
        let timeout = meta.duration_or("timeout", DEFAULT_TIMEOUT)?;
        let retention = meta.duration_or("retention", DEFAULT_RETENTION)?;
        let err = |source| OpenError::Sqlite {
            path: path.clone(),
            source,
        };
        if let Some(dir) = std::path::Path::new(&path).parent()
            && !dir.as_os_str().is_empty()
        {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        conn.busy_timeout(busy).map_err(err)?;
        // Every sidecar of the machine may be creating this file now.
        crate::sqliteopen::retry_busy(busy, || conn.pragma_update(None, "journal_mode", "WAL"))
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        crate::sqliteopen::retry_busy(busy, || migrate(&conn)).map_err(err)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        std::thread::Builder::new()
            .name("skiff-pubsub-sqlite".into())
            .spawn(move || writer(conn, rx, retention_ms))
            .map_err(OpenError::Thread)?;
        let me = Arc::new(Self {
            jobs: tx,
            published: Arc::new(Notify::new()),
            timeout,
            counter: Arc::new(Counter {
                path,
                busy,
                conn: Mutex::new(None),
            }),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let jobs = me.jobs.clone();
            rt.spawn(async move {
                let mut tick = tokio::time::interval(TRIM_EVERY);
                loop {
                    tick.tick().await;
                    if jobs.send(Job::Trim).is_err() {
                        return;
                    }
                }
            });
        }
        Ok(me)
    }
}

fn ask<T: Send + 'static>(
    jobs: &Sender<Job>,
    timeout: Duration,
    job: impl FnOnce(Reply<T>) -> Job,
) -> impl Future<Output = Result<T, PubSubError>> + Send + 'static {
    let (tx, rx) = oneshot::channel();
    let sent = jobs.send(job(tx)).is_ok();
    async move {
        if !sent {
            return Err(PubSubError::Closed);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(PubSubError::Closed),
            Err(_) => Err(PubSubError::Broker(format!(
                "sqlite: no answer within {timeout:?}"
            ))),
        }
    }
}

impl PubSub for SqlitePubSub {
    fn features(&self) -> Features {
        Features::BULK_PUBSUB
    }

    fn publish<'a>(
        &'a self,
        topic: &'a str,
        msg: Outgoing,
    ) -> BoxFuture<'a, Result<(), PubSubError>> {
        let done = ask(&self.jobs, self.timeout, |r| {
            Job::Publish(topic.to_owned(), vec![msg], r)
        });
        Box::pin(async move {
            done.await?;
            self.published.notify_waiters();
            Ok(())
        })
    }

    fn publish_many<'a>(
        &'a self,
        topic: &'a str,
        msgs: Vec<Outgoing>,
    ) -> BoxFuture<'a, Vec<Result<(), PubSubError>>> {
        let n = msgs.len();
        let done = ask(&self.jobs, self.timeout, |r| {
            Job::Publish(topic.to_owned(), msgs, r)
        });
        Box::pin(async move {
            // One transaction: all of them or none.
            let r = done.await;
            self.published.notify_waiters();
            vec![r; n]
        })
    }

    fn subscribe(
        &self,
        opts: SubscribeOptions,
    ) -> BoxFuture<'_, Result<Box<dyn Subscription>, PubSubError>> {
        let made = ask(&self.jobs, self.timeout, |r| {
            Job::Group(opts.topic.clone(), opts.group.clone(), r)
        });
        Box::pin(async move {
            made.await?;
            let sub: Box<dyn Subscription> = Box::new(SqliteSubscription {
                jobs: self.jobs.clone(),
                published: self.published.clone(),
                timeout: self.timeout,
                counter: self.counter.clone(),
                owner: crate::util::uuid_v4(),
                claim_ms: i64::try_from(opts.claim.as_millis()).unwrap_or(i64::MAX),
                opts,
            });
            Ok(sub)
        })
    }
}

struct SqliteSubscription {
    jobs: Sender<Job>,
    published: Arc<Notify>,
    timeout: Duration,
    counter: Arc<Counter>,
    owner: String,
    claim_ms: i64,
    opts: SubscribeOptions,
}

impl SqliteSubscription {
    fn claims<'a>(
        &'a self,
        ids: &'a [String],
        op: ClaimOp,
    ) -> BoxFuture<'a, Result<(), PubSubError>> {
        let seqs: Vec<i64> = ids.iter().filter_map(|i| i.parse().ok()).collect();
        let o = &self.opts;
        let done = ask(&self.jobs, self.timeout, |r| {
            Job::Claims(
                o.topic.clone(),
                o.group.clone(),
                self.owner.clone(),
                seqs,
                op,
                r,
            )
        });
        Box::pin(done)
    }
}

impl Subscription for SqliteSubscription {
    fn fetch(
        &self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Received>, PubSubError>> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + wait;
            let mut poll = POLL_MIN;
            loop {
                let notified = self.published.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let f = Fetch {
                    topic: self.opts.topic.clone(),
                    group: self.opts.group.clone(),
                    owner: self.owner.clone(),
                    max: max.max(1),
                    claim_ms: self.claim_ms,
                };
                let got = ask(&self.jobs, self.timeout, |r| Job::Fetch(f, r)).await?;
                let now = tokio::time::Instant::now();
                if !got.is_empty() || now >= deadline {
                    return Ok(got);
                }
                let until = (now + poll).min(deadline);
                tokio::select! {
                    () = notified => poll = POLL_MIN,
                    () = tokio::time::sleep_until(until) => poll = (poll * 2).min(POLL_MAX),
                }
            }
        })
    }

    fn ack<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<(), PubSubError>> {
        self.claims(ids, ClaimOp::Ack)
    }

    fn release<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<(), PubSubError>> {
        let r = self.claims(ids, ClaimOp::Release);
        let published = self.published.clone();
        Box::pin(async move {
            r.await?;
            published.notify_waiters();
            Ok(())
        })
    }

    fn keep_alive<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<(), PubSubError>> {
        self.claims(ids, ClaimOp::Renew(self.claim_ms))
    }

    fn backlog(&self) -> BoxFuture<'_, Result<Option<u64>, PubSubError>> {
        let counter = self.counter.clone();
        let (topic, group) = (self.opts.topic.clone(), self.opts.group.clone());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || counter.backlog(&topic, &group))
                .await
                .map_err(|e| PubSubError::Broker(format!("sqlite: {e}")))?
        })
    }
}

fn migrate(c: &Connection) -> rusqlite::Result<()> {
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS pubsub_messages (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            topic TEXT NOT NULL,
            data BLOB NOT NULL,
            metadata TEXT,
            published_ms INTEGER NOT NULL);
         CREATE INDEX IF NOT EXISTS pubsub_messages_topic ON pubsub_messages (topic, seq);
         CREATE TABLE IF NOT EXISTS pubsub_groups (
            topic TEXT NOT NULL,
            grp TEXT NOT NULL,
            cursor INTEGER NOT NULL,
            PRIMARY KEY (topic, grp)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS pubsub_claims (
            topic TEXT NOT NULL,
            grp TEXT NOT NULL,
            seq INTEGER NOT NULL,
            owner TEXT NOT NULL,
            until_ms INTEGER NOT NULL,
            deliveries INTEGER NOT NULL,
            PRIMARY KEY (topic, grp, seq)) WITHOUT ROWID;",
    )
}

/// What a job answers once the transaction it ran in is committed.
enum Done {
    Unit(Reply<()>, Result<(), PubSubError>),
    Fetched(Reply<Vec<Received>>, Result<Vec<Received>, PubSubError>),
}

impl Done {
    fn send(self, failed: Option<&PubSubError>) {
        match (self, failed) {
            (Self::Unit(r, _), Some(e)) => drop(r.send(Err(e.clone()))),
            (Self::Fetched(r, _), Some(e)) => drop(r.send(Err(e.clone()))),
            (Self::Unit(r, v), None) => drop(r.send(v)),
            (Self::Fetched(r, v), None) => drop(r.send(v)),
        }
    }
}

fn writer(conn: Connection, jobs: Receiver<Job>, retention_ms: i64) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        // Fetches that would find nothing answer at once, without taking
        // the write lock other sidecars want.
        let mut work = Vec::with_capacity(batch.len());
        for job in batch {
            match job {
                Job::Fetch(f, r) if !has_work(&conn, &f).unwrap_or(true) => {
                    let _ = r.send(Ok(Vec::new()));
                }
                j => work.push(j),
            }
        }
        if work.is_empty() {
            continue;
        }
        run_batch(&conn, work, retention_ms);
    }
}

fn run_batch(conn: &Connection, work: Vec<Job>, retention_ms: i64) {
    let broker = |e: rusqlite::Error| PubSubError::Broker(format!("sqlite: {e}"));
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let e = broker(e);
        for j in work {
            fail(j, &e);
        }
        return;
    }
    let mut done = Vec::with_capacity(work.len());
    let now = now_ms();
    for job in work {
        match job {
            Job::Publish(topic, msgs, r) => {
                done.push(Done::Unit(
                    r,
                    publish(conn, &topic, &msgs, now).map_err(broker),
                ));
            }
            Job::Group(topic, group, r) => {
                done.push(Done::Unit(
                    r,
                    make_group(conn, &topic, &group).map_err(broker),
                ));
            }
            Job::Fetch(f, r) => done.push(Done::Fetched(r, fetch(conn, &f, now).map_err(broker))),
            Job::Claims(topic, group, owner, seqs, op, r) => {
                let v = claims(conn, &topic, &group, &owner, &seqs, op, now).map_err(broker);
                done.push(Done::Unit(r, v));
            }
            Job::Trim => {
                if let Err(e) = trim(conn, now, retention_ms) {
                    tracing::warn!(error = %e, "pubsub.skiff.sqlite: trimming delivered messages failed");
                }
            }
        }
    }
    let committed = conn.execute_batch("COMMIT").map_err(broker);
    if committed.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    let failed = committed.as_ref().err();
    for d in done {
        d.send(failed);
    }
}

fn fail(job: Job, e: &PubSubError) {
    match job {
        Job::Publish(_, _, r) | Job::Group(_, _, r) | Job::Claims(_, _, _, _, _, r) => {
            let _ = r.send(Err(e.clone()));
        }
        Job::Fetch(_, r) => {
            let _ = r.send(Err(e.clone()));
        }
        Job::Trim => {}
    }
}

fn publish(c: &Connection, topic: &str, msgs: &[Outgoing], now: i64) -> rusqlite::Result<()> {
    let mut st = c.prepare_cached(
        "INSERT INTO pubsub_messages (topic, data, metadata, published_ms) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for m in msgs {
        let meta = (!m.metadata.is_empty()).then(|| encode_metadata(&m.metadata));
        st.execute(params![topic, &m.data[..], meta, now])?;
    }
    Ok(())
}

fn make_group(c: &Connection, topic: &str, group: &str) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT OR IGNORE INTO pubsub_groups (topic, grp, cursor)
         VALUES (?1, ?2, (SELECT COALESCE(MIN(seq), 0) FROM pubsub_messages WHERE topic = ?1))",
    )?
    .execute(params![topic, group])?;
    Ok(())
}

fn has_work(c: &Connection, f: &Fetch) -> rusqlite::Result<bool> {
    c.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM pubsub_claims WHERE topic = ?1 AND grp = ?2 AND until_ms <= ?3)
             OR EXISTS (SELECT 1 FROM pubsub_messages WHERE topic = ?1 AND seq >=
                 (SELECT cursor FROM pubsub_groups WHERE topic = ?1 AND grp = ?2))",
    )?
    .query_row(params![f.topic, f.group, now_ms()], |r| r.get(0))
}

fn fetch(c: &Connection, f: &Fetch, now: i64) -> rusqlite::Result<Vec<Received>> {
    let until = now.saturating_add(f.claim_ms);
    let max = i64::try_from(f.max).unwrap_or(i64::MAX);
    let mut out = Vec::new();
    // Lapsed and released claims first, oldest message first.
    let lapsed: Vec<i64> = c
        .prepare_cached(
            "SELECT seq FROM pubsub_claims WHERE topic = ?1 AND grp = ?2 AND until_ms <= ?3
             ORDER BY seq LIMIT ?4",
        )?
        .query_map(params![f.topic, f.group, now, max], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for seq in lapsed {
        let deliveries: u32 = c
            .prepare_cached(
                "UPDATE pubsub_claims SET owner = ?4, until_ms = ?5, deliveries = deliveries + 1
                 WHERE topic = ?1 AND grp = ?2 AND seq = ?3 RETURNING deliveries",
            )?
            .query_row(params![f.topic, f.group, seq, f.owner, until], |r| r.get(0))?;
        let row = c
            .prepare_cached("SELECT data, metadata FROM pubsub_messages WHERE seq = ?1")?
            .query_row(params![seq], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Option<String>>(1)?))
            })
            .optional()?;
        match row {
            Some((data, meta)) => out.push(received(seq, data, meta, deliveries)),
            // Deleted under it (cannot happen while claimed; be safe).
            None => {
                c.prepare_cached(
                    "DELETE FROM pubsub_claims WHERE topic = ?1 AND grp = ?2 AND seq = ?3",
                )?
                .execute(params![f.topic, f.group, seq])?;
            }
        }
    }
    let room = max - out.len() as i64;
    if room <= 0 {
        return Ok(out);
    }
    let Some(cursor): Option<i64> = c
        .prepare_cached("SELECT cursor FROM pubsub_groups WHERE topic = ?1 AND grp = ?2")?
        .query_row(params![f.topic, f.group], |r| r.get(0))
        .optional()?
    else {
        return Ok(out);
    };
    let fresh: Vec<(i64, Vec<u8>, Option<String>)> = c
        .prepare_cached(
            "SELECT seq, data, metadata FROM pubsub_messages WHERE topic = ?1 AND seq >= ?2
             ORDER BY seq LIMIT ?3",
        )?
        .query_map(params![f.topic, cursor, room], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    let Some(last) = fresh.last().map(|m| m.0) else {
        return Ok(out);
    };
    let mut claim = c.prepare_cached(
        "INSERT OR REPLACE INTO pubsub_claims (topic, grp, seq, owner, until_ms, deliveries)
         VALUES (?1, ?2, ?3, ?4, ?5, 1)",
    )?;
    for (seq, data, meta) in fresh {
        claim.execute(params![f.topic, f.group, seq, f.owner, until])?;
        out.push(received(seq, data, meta, 1));
    }
    c.prepare_cached("UPDATE pubsub_groups SET cursor = ?3 WHERE topic = ?1 AND grp = ?2")?
        .execute(params![f.topic, f.group, last + 1])?;
    Ok(out)
}

fn received(seq: i64, data: Vec<u8>, meta: Option<String>, deliveries: u32) -> Received {
    Received {
        id: seq.to_string(),
        data: Bytes::from(data),
        metadata: meta.as_deref().map(decode_metadata).unwrap_or_default(),
        deliveries,
    }
}

#[allow(clippy::too_many_arguments)]
fn claims(
    c: &Connection,
    topic: &str,
    group: &str,
    owner: &str,
    seqs: &[i64],
    op: ClaimOp,
    now: i64,
) -> rusqlite::Result<()> {
    match op {
        // Whoever holds it now: the work is done either way.
        ClaimOp::Ack => {
            let mut st = c.prepare_cached(
                "DELETE FROM pubsub_claims WHERE topic = ?1 AND grp = ?2 AND seq = ?3",
            )?;
            for seq in seqs {
                st.execute(params![topic, group, seq])?;
            }
        }
        // Only this owner's claims: one that lapsed and was taken over is
        // the new owner's.
        ClaimOp::Release | ClaimOp::Renew(_) => {
            let until = match op {
                ClaimOp::Renew(ms) => now.saturating_add(ms),
                _ => 0,
            };
            let mut st = c.prepare_cached(
                "UPDATE pubsub_claims SET until_ms = ?5
                 WHERE topic = ?1 AND grp = ?2 AND seq = ?3 AND owner = ?4",
            )?;
            for seq in seqs {
                st.execute(params![topic, group, seq, owner, until])?;
            }
        }
    }
    Ok(())
}

/// Deletes what every group has fetched and acked, and messages of
/// topics nobody subscribes to once older than the retention.
fn trim(c: &Connection, now: i64, retention_ms: i64) -> rusqlite::Result<()> {
    c.prepare_cached(
        "DELETE FROM pubsub_messages AS m WHERE m.topic IN (SELECT topic FROM pubsub_groups)
           AND m.seq < (SELECT MIN(cursor) FROM pubsub_groups g WHERE g.topic = m.topic)
           AND m.seq < COALESCE((SELECT MIN(seq) FROM pubsub_claims k WHERE k.topic = m.topic), 9223372036854775807)",
    )?
    .execute([])?;
    c.prepare_cached(
        "DELETE FROM pubsub_messages WHERE published_ms < ?1
           AND topic NOT IN (SELECT topic FROM pubsub_groups)",
    )?
    .execute(params![now.saturating_sub(retention_ms)])?;
    Ok(())
}

fn encode_metadata(m: &[(String, String)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = m
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::Value::Object(map).to_string()
}

fn decode_metadata(s: &str) -> Vec<(String, String)> {
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(s) {
        Ok(m) => m
            .into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_owned()))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &std::path::Path) -> Arc<SqlitePubSub> {
        let mut p = Properties::new();
        p.insert("connectionString", dir.join("ps.db").display().to_string());
        SqlitePubSub::open(&p).expect("opens")
    }

    fn msg(s: &str) -> Outgoing {
        Outgoing {
            data: Bytes::from(s.to_owned()),
            metadata: vec![("k".into(), "v".into())],
        }
    }

    fn opts(group: &str, claim_ms: u64) -> SubscribeOptions {
        SubscribeOptions {
            topic: "t".into(),
            group: group.into(),
            claim: Duration::from_millis(claim_ms),
        }
    }

    #[tokio::test]
    async fn two_opens_share_a_queue_with_claims_and_acks() {
        let dir = tempdir();
        let (a, b) = (open(&dir), open(&dir));
        // Published before anyone subscribed: kept, and replayed to a new group.
        a.publish("t", msg("early")).await.expect("pub");
        let sa = a.subscribe(opts("g", 60_000)).await.expect("sub");
        let sb = b.subscribe(opts("g", 60_000)).await.expect("sub");
        for i in 0..10 {
            b.publish("t", msg(&i.to_string())).await.expect("pub");
        }
        let got_a = sa
            .fetch(4, Duration::from_millis(100))
            .await
            .expect("fetch");
        let got_b = sb
            .fetch(100, Duration::from_millis(100))
            .await
            .expect("fetch");
        assert_eq!(got_a.len(), 4);
        assert_eq!(got_a[0].data, "early");
        assert_eq!(got_a[0].metadata, vec![("k".to_owned(), "v".to_owned())]);
        assert_eq!(got_b.len(), 7, "the rest, none twice");
        let ids: Vec<String> = got_a.iter().map(|r| r.id.clone()).collect();
        sa.release(&ids[..1]).await.expect("release");
        sa.ack(&ids[1..]).await.expect("ack");
        let again = sb
            .fetch(10, Duration::from_millis(100))
            .await
            .expect("fetch");
        assert_eq!((again.len(), again[0].deliveries), (1, 2));
        assert_eq!(again[0].data, "early");
    }

    #[tokio::test]
    async fn a_lapsed_claim_is_redelivered_a_renewed_one_is_not() {
        let dir = tempdir();
        let ps = open(&dir);
        let s1 = ps.subscribe(opts("g", 150)).await.expect("sub");
        let s2 = ps.subscribe(opts("g", 150)).await.expect("sub");
        ps.publish("t", msg("a")).await.expect("pub");
        ps.publish("t", msg("b")).await.expect("pub");
        let got = s1
            .fetch(2, Duration::from_millis(100))
            .await
            .expect("fetch");
        assert_eq!(got.len(), 2);
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(60)).await;
            s1.keep_alive(&[got[0].id.clone()]).await.expect("renew");
        }
        // "b" lapsed (not renewed); "a" is still held.
        let stolen = s2
            .fetch(10, Duration::from_millis(50))
            .await
            .expect("fetch");
        assert_eq!(stolen.len(), 1);
        assert_eq!(stolen[0].data, "b");
    }

    #[tokio::test]
    async fn backlog_counts_past_the_group_cursor() {
        let dir = tempdir();
        let ps = open(&dir);
        let a = ps.subscribe(opts("a", 60_000)).await.expect("sub");
        let b = ps.subscribe(opts("b", 60_000)).await.expect("sub");
        assert_eq!(a.backlog().await.expect("backlog"), Some(0));
        ps.publish_many("t", (0..5).map(|i| msg(&i.to_string())).collect())
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .expect("pub");
        let got = a.fetch(2, Duration::from_millis(100)).await.expect("fetch");
        assert_eq!(got.len(), 2);
        assert_eq!(a.backlog().await.expect("backlog"), Some(3));
        assert_eq!(b.backlog().await.expect("backlog"), Some(5));
        // Released: claimed again later, not backlog.
        let ids: Vec<String> = got.iter().map(|r| r.id.clone()).collect();
        a.release(&ids).await.expect("release");
        assert_eq!(a.backlog().await.expect("backlog"), Some(3));
    }

    #[tokio::test]
    async fn acked_messages_are_trimmed() {
        let dir = tempdir();
        let ps = open(&dir);
        let s = ps.subscribe(opts("g", 60_000)).await.expect("sub");
        ps.publish_many("t", (0..5).map(|i| msg(&i.to_string())).collect())
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .expect("pub");
        let got = s
            .fetch(10, Duration::from_millis(100))
            .await
            .expect("fetch");
        let ids: Vec<String> = got.iter().map(|r| r.id.clone()).collect();
        s.ack(&ids).await.expect("ack");
        let (tx, rx) = oneshot::channel::<Result<(), PubSubError>>();
        ps.jobs.send(Job::Trim).expect("trim");
        ps.jobs
            .send(Job::Group("t".into(), "g".into(), tx))
            .expect("sync");
        rx.await.expect("answer").expect("ok");
        let c = Connection::open(dir.join("ps.db")).expect("open");
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM pubsub_messages", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 0);
    }

    fn tempdir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("skiff-ps-{}", crate::util::uuid_v4()));
        std::fs::create_dir_all(&d).expect("dir");
        d
    }
}
