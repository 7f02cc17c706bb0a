//! `pubsub.redis` on Redis Streams, with Dapr's metadata and layout so
//! daprd and Skiff can share a stream: a topic is a stream, a message an
//! entry `data <bytes> [metadata <json>]`, a consumer group per
//! `consumerID` created at `0` with `MKSTREAM` (a new group replays the
//! stream, as Dapr's does).
//!
//! Where it differs from Dapr's driver, on purpose:
//! - each sidecar is its own consumer (`<consumerID>:<uuid>`) and fetches
//!   only what its delivery loop can start (`XREADGROUP COUNT n`), so no
//!   message waits in a prefetch buffer while its claim ages;
//! - the claims of messages whose handlers still run are renewed
//!   (`XCLAIM ... JUSTID` resets their idle time), so the reclaim of
//!   entries idle for `processingTimeout` never hands a message to a
//!   second consumer while the first still works on it;
//! - a failed message is not `XACK`ed: it is released (`XCLAIM ... IDLE`)
//!   and claimed again on the next pass, so nothing is lost;
//! - `trimAcked: true` trims the stream up to the oldest entry some group
//!   has not acked (`XTRIM MINID`, exact), so a stream does not grow forever
//!   without dropping undelivered entries as `maxLenApprox` can.
//!
//! Blocking reads run on a connection of their own per subscription;
//! publishes, acks and claims share one multiplexed connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use redis::Value;
use redis::aio::ConnectionLike;
use tokio::time::Instant;

use super::{
    Features, Outgoing, PubSub, PubSubError, Received, SubscribeOptions, Subscription, now_ms,
};
use crate::redisconn::{Conn, OpenError, connect};
use crate::{BoxFuture, MetadataError, Properties};

/// How often entries idle for `processingTimeout` are looked for
/// (`redeliverInterval`; 0 turns redelivery off).
pub const DEFAULT_REDELIVER_INTERVAL: Duration = Duration::from_secs(15);
/// How long an entry may sit unacked and unrenewed before another
/// consumer takes it (`processingTimeout`).
pub const DEFAULT_PROCESSING_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest single `XREADGROUP BLOCK`.
pub const BLOCK_MAX: Duration = Duration::from_secs(2);

pub struct RedisPubSub {
    conn: Conn,
    meta: Properties,
    addr: String,
    max_len: Option<u64>,
    stream_ttl: Option<Duration>,
    redeliver: Duration,
    trim_acked: bool,
}

/// Dapr reads a bare integer as milliseconds, else a Go duration.
pub fn millis_or_duration(
    meta: &Properties,
    name: &str,
    default: Duration,
) -> Result<Duration, MetadataError> {
    match meta.get(name).map(str::trim) {
        None | Some("") => Ok(default),
        Some(v) => match v.parse::<u64>() {
            Ok(ms) => Ok(Duration::from_millis(ms)),
            Err(_) => meta.duration_or(name, default),
        },
    }
}

impl RedisPubSub {
    pub async fn open(meta: &Properties) -> Result<Arc<Self>, OpenError> {
        let max_len = match meta.get("maxLenApprox").map(str::trim) {
            None | Some("") | Some("0") => None,
            Some(v) => Some(v.parse::<u64>().map_err(|_| MetadataError {
                field: "maxLenApprox".into(),
                why: "is not a non-negative integer".into(),
            })?),
        };
        let stream_ttl =
            Some(millis_or_duration(meta, "streamTTL", Duration::ZERO)?).filter(|d| !d.is_zero());
        if max_len.is_some() && stream_ttl.is_some() {
            return Err(MetadataError {
                field: "streamTTL".into(),
                why: "cannot be used together with maxLenApprox".into(),
            }
            .into());
        }
        let redeliver = millis_or_duration(meta, "redeliverInterval", DEFAULT_REDELIVER_INTERVAL)?;
        // The claim time comes with each subscription (the block reads
        // processingTimeout); checked here so a bad value stops the start.
        millis_or_duration(meta, "processingTimeout", DEFAULT_PROCESSING_TIMEOUT)?;
        let trim_acked = meta.bool_or("trimAcked", false)?;
        let c = connect(meta, None).await?;
        Ok(Arc::new(Self {
            conn: c.conn,
            meta: meta.clone(),
            addr: c.addr,
            max_len,
            stream_ttl,
            redeliver,
            trim_acked,
        }))
    }

    fn xadd(&self, topic: &str, msg: &Outgoing) -> redis::Cmd {
        let mut c = redis::cmd("XADD");
        c.arg(topic);
        if let Some(n) = self.max_len {
            c.arg("MAXLEN").arg("~").arg(n);
        } else if let Some(ttl) = self.stream_ttl {
            let floor = now_ms() - i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
            c.arg("MINID").arg("~").arg(format!("{floor}-1"));
        }
        c.arg("*").arg("data").arg(&msg.data[..]);
        if !msg.metadata.is_empty() {
            let m: serde_json::Map<String, serde_json::Value> = msg
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            c.arg("metadata")
                .arg(serde_json::Value::Object(m).to_string());
        }
        c
    }
}

fn broker(addr: &str, e: &redis::RedisError) -> PubSubError {
    PubSubError::Broker(format!("redis {addr}: {e}"))
}

impl PubSub for RedisPubSub {
    fn features(&self) -> Features {
        Features::BULK_PUBSUB
    }

    fn publish<'a>(
        &'a self,
        topic: &'a str,
        msg: Outgoing,
    ) -> BoxFuture<'a, Result<(), PubSubError>> {
        let cmd = self.xadd(topic, &msg);
        let mut conn = self.conn.clone();
        Box::pin(async move {
            conn.req_packed_command(&cmd)
                .await
                .map(drop)
                .map_err(|e| broker(&self.addr, &e))
        })
    }

    fn publish_many<'a>(
        &'a self,
        topic: &'a str,
        msgs: Vec<Outgoing>,
    ) -> BoxFuture<'a, Vec<Result<(), PubSubError>>> {
        let mut p = redis::pipe();
        for m in &msgs {
            p.add_command(self.xadd(topic, m));
        }
        let mut conn = self.conn.clone();
        let n = msgs.len();
        Box::pin(async move {
            match conn.req_packed_commands(&p, 0, n).await {
                Ok(vs) => vs
                    .into_iter()
                    .map(|v| match v {
                        Value::ServerError(e) => Err(PubSubError::Broker(format!(
                            "redis {}: {}",
                            self.addr,
                            e.details().unwrap_or("error")
                        ))),
                        _ => Ok(()),
                    })
                    .collect(),
                Err(e) => vec![Err(broker(&self.addr, &e)); n],
            }
        })
    }

    fn subscribe(
        &self,
        opts: SubscribeOptions,
    ) -> BoxFuture<'_, Result<Box<dyn Subscription>, PubSubError>> {
        Box::pin(async move {
            create_group(&mut self.conn.clone(), &opts.topic, &opts.group)
                .await
                .map_err(|e| broker(&self.addr, &e))?;
            let reader = connect(&self.meta, Some(BLOCK_MAX + Duration::from_secs(3)))
                .await
                .map_err(|e| PubSubError::Broker(e.to_string()))?;
            let id = crate::util::uuid_v4();
            let sub: Box<dyn Subscription> = Box::new(RedisSubscription {
                conn: self.conn.clone(),
                reader: reader.conn,
                addr: self.addr.clone(),
                consumer: format!("{}:{}", opts.group, &id[..8]),
                processing: opts.claim.max(Duration::from_millis(1)),
                redeliver: self.redeliver,
                trim_acked: self.trim_acked,
                last_reclaim: Mutex::new(Instant::now()),
                reclaim_from: Mutex::new(String::from("0-0")),
                reclaim_now: AtomicBool::new(true),
                opts,
            });
            Ok(sub)
        })
    }
}

async fn create_group(conn: &mut Conn, topic: &str, group: &str) -> Result<(), redis::RedisError> {
    let mut c = redis::cmd("XGROUP");
    c.arg("CREATE")
        .arg(topic)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM");
    match conn.req_packed_command(&c).await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(e),
    }
}

struct RedisSubscription {
    conn: Conn,
    reader: Conn,
    addr: String,
    consumer: String,
    processing: Duration,
    redeliver: Duration,
    trim_acked: bool,
    last_reclaim: Mutex<Instant>,
    /// Where the next `XAUTOCLAIM` scan starts: the cursor the last one
    /// returned. Redis scans at most ten times `COUNT` entries a call, so
    /// always starting at `0-0` would never reach an idle entry behind many
    /// live ones at the head of the pending list.
    reclaim_from: Mutex<String>,
    /// A release happened: look for claimable entries on the next fetch.
    reclaim_now: AtomicBool,
    opts: SubscribeOptions,
}

impl RedisSubscription {
    fn err(&self, e: &redis::RedisError) -> PubSubError {
        broker(&self.addr, e)
    }

    /// Whether it is time to take over entries idle past the claim.
    fn reclaim_due(&self) -> bool {
        if self.reclaim_now.swap(false, Ordering::AcqRel) {
            return true;
        }
        if self.redeliver.is_zero() {
            return false;
        }
        let mut last = self.last_reclaim.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() >= self.redeliver {
            *last = Instant::now();
            return true;
        }
        false
    }

    async fn reclaim(&self, max: usize) -> Result<Vec<Received>, PubSubError> {
        let o = &self.opts;
        let from = self
            .reclaim_from
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut c = redis::cmd("XAUTOCLAIM");
        c.arg(&o.topic)
            .arg(&o.group)
            .arg(&self.consumer)
            .arg(u64::try_from(self.processing.as_millis()).unwrap_or(u64::MAX))
            .arg(&from)
            .arg("COUNT")
            .arg(max);
        let v = self
            .conn
            .clone()
            .req_packed_command(&c)
            .await
            .map_err(|e| self.err(&e))?;
        let entries = match v {
            Value::Array(mut parts) if parts.len() >= 2 => {
                // `0-0` when the scan went round: the next starts over.
                let next = text(&parts[0]).unwrap_or_else(|| "0-0".into());
                *self.reclaim_from.lock().unwrap_or_else(|p| p.into_inner()) = next;
                parts.swap_remove(1)
            }
            _ => Value::Nil,
        };
        if self.trim_acked {
            self.trim().await;
        }
        // XAUTOCLAIM counts a delivery; the exact count is not worth a
        // round trip.
        Ok(parse_entries(&entries, 2))
    }

    async fn read(
        &self,
        max: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Received>, PubSubError> {
        let o = &self.opts;
        let mut c = redis::cmd("XREADGROUP");
        c.arg("GROUP")
            .arg(&o.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(max);
        if let Some(b) = block {
            c.arg("BLOCK")
                .arg(u64::try_from(b.as_millis()).unwrap_or(1).max(1));
        }
        c.arg("STREAMS").arg(&o.topic).arg(">");
        match self.reader.clone().req_packed_command(&c).await {
            Ok(Value::Array(streams)) => Ok(streams
                .iter()
                .flat_map(|s| match s {
                    Value::Array(kv) if kv.len() == 2 => parse_entries(&kv[1], 1),
                    _ => Vec::new(),
                })
                .collect()),
            Ok(Value::Map(kvs)) => Ok(kvs.iter().flat_map(|(_, v)| parse_entries(v, 1)).collect()),
            Ok(_) => Ok(Vec::new()),
            Err(e) if e.code() == Some("NOGROUP") => {
                // The stream went away (a Redis without persistence
                // restarted): make the group again and read on.
                create_group(&mut self.conn.clone(), &o.topic, &o.group)
                    .await
                    .map_err(|e| self.err(&e))?;
                Ok(Vec::new())
            }
            Err(e) => Err(self.err(&e)),
        }
    }

    /// `XTRIM MINID` up to the oldest entry a group still needs.
    async fn trim(&self) {
        let topic = &self.opts.topic;
        let mut conn = self.conn.clone();
        let mut info = redis::cmd("XINFO");
        info.arg("GROUPS").arg(topic);
        let Ok(Value::Array(groups)) = conn.req_packed_command(&info).await else {
            return;
        };
        let mut floor: Option<(u64, u64)> = None;
        for g in &groups {
            let (Some(name), Some(last)) = (field(g, "name"), field(g, "last-delivered-id")) else {
                continue;
            };
            let mut pending = redis::cmd("XPENDING");
            pending.arg(topic).arg(&name);
            let oldest = match conn.req_packed_command(&pending).await {
                Ok(Value::Array(p)) if p.len() >= 2 => text(&p[1]).unwrap_or_else(|| last.clone()),
                _ => return,
            };
            if let Some(id) = parse_id(&oldest) {
                floor = Some(floor.map_or(id, |f| f.min(id)));
            }
        }
        if let Some((ms, seq)) = floor {
            // Exact: an approximate trim keeps whole nodes (up to 100
            // entries), so a small stream would never shrink.
            let mut c = redis::cmd("XTRIM");
            c.arg(topic).arg("MINID").arg(format!("{ms}-{seq}"));
            let _ = conn.req_packed_command(&c).await;
        }
    }

    async fn claim(&self, ids: &[String], idle_ms: Option<u64>) -> Result<(), PubSubError> {
        if ids.is_empty() {
            return Ok(());
        }
        let o = &self.opts;
        let mut c = redis::cmd("XCLAIM");
        c.arg(&o.topic).arg(&o.group).arg(&self.consumer).arg(0);
        for id in ids {
            c.arg(id);
        }
        if let Some(ms) = idle_ms {
            c.arg("IDLE").arg(ms);
        }
        c.arg("JUSTID");
        self.conn
            .clone()
            .req_packed_command(&c)
            .await
            .map(drop)
            .map_err(|e| self.err(&e))
    }
}

impl Subscription for RedisSubscription {
    fn fetch(
        &self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Received>, PubSubError>> {
        Box::pin(async move {
            let max = max.max(1);
            let mut out = if self.reclaim_due() {
                self.reclaim(max).await?
            } else {
                Vec::new()
            };
            if out.len() < max {
                let block = out
                    .is_empty()
                    .then(|| wait.min(BLOCK_MAX))
                    .filter(|b| !b.is_zero());
                out.extend(self.read(max - out.len(), block).await?);
            }
            Ok(out)
        })
    }

    fn ack<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<(), PubSubError>> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(());
            }
            let mut c = redis::cmd("XACK");
            c.arg(&self.opts.topic).arg(&self.opts.group);
            for id in ids {
                c.arg(id);
            }
            self.conn
                .clone()
                .req_packed_command(&c)
                .await
                .map(drop)
                .map_err(|e| self.err(&e))
        })
    }

    fn release<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<(), PubSubError>> {
        Box::pin(async move {
            // Idle as long as the claim: the next reclaim pass takes it.
            let idle = u64::try_from(self.processing.as_millis()).unwrap_or(u64::MAX);
            self.claim(ids, Some(idle)).await?;
            // From the start, so the released entries are found at once.
            *self.reclaim_from.lock().unwrap_or_else(|p| p.into_inner()) = "0-0".into();
            self.reclaim_now.store(true, Ordering::Release);
            Ok(())
        })
    }

    fn keep_alive<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<(), PubSubError>> {
        Box::pin(self.claim(ids, None))
    }

    fn backlog(&self) -> BoxFuture<'_, Result<Option<u64>, PubSubError>> {
        Box::pin(async move {
            let mut info = redis::cmd("XINFO");
            info.arg("GROUPS").arg(&self.opts.topic);
            match self.conn.clone().req_packed_command(&info).await {
                Ok(v) => Ok(group_lag(&v, &self.opts.group)),
                // The stream is gone (a Redis without persistence
                // restarted); the next read makes it again.
                Err(e) if e.code() == Some("ERR") => Ok(Some(0)),
                Err(e) => Err(self.err(&e)),
            }
        })
    }
}

/// Stream entries `[[id, [field, value, ...]], ...]` (nil entries, which
/// XAUTOCLAIM gives for deleted ones, are skipped).
fn parse_entries(v: &Value, deliveries: u32) -> Vec<Received> {
    let Value::Array(entries) = v else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| {
            let Value::Array(pair) = e else { return None };
            let id = text(pair.first()?)?;
            let Value::Array(fields) = pair.get(1)? else {
                return None;
            };
            let mut data = Bytes::new();
            let mut metadata = Vec::new();
            for kv in fields.chunks(2) {
                let [k, v] = kv else { continue };
                match text(k).as_deref() {
                    Some("data") => data = bytes(v),
                    Some("metadata") => metadata = decode_metadata(&bytes(v)),
                    _ => {}
                }
            }
            Some(Received {
                id,
                data,
                metadata,
                deliveries,
            })
        })
        .collect()
}

fn bytes(v: &Value) -> Bytes {
    match v {
        Value::BulkString(b) => Bytes::copy_from_slice(b),
        Value::SimpleString(s) => Bytes::copy_from_slice(s.as_bytes()),
        _ => Bytes::new(),
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// A field of an `XINFO GROUPS` entry (a flat array or a map).
fn field_value<'v>(g: &'v Value, name: &str) -> Option<&'v Value> {
    match g {
        Value::Array(kv) => kv
            .chunks(2)
            .find(|p| text(&p[0]).as_deref() == Some(name))
            .and_then(|p| p.get(1)),
        Value::Map(kv) => kv
            .iter()
            .find(|(k, _)| text(k).as_deref() == Some(name))
            .map(|(_, v)| v),
        _ => None,
    }
}

fn field(g: &Value, name: &str) -> Option<String> {
    field_value(g, name).and_then(text)
}

/// The `lag` of group `name` in an `XINFO GROUPS` answer: Redis 7 gives
/// it, as nil when it cannot tell (entries deleted with XDEL); older
/// servers do not.
fn group_lag(groups: &Value, name: &str) -> Option<u64> {
    let Value::Array(groups) = groups else {
        return None;
    };
    let g = groups
        .iter()
        .find(|g| field(g, "name").as_deref() == Some(name))?;
    match field_value(g, "lag")? {
        Value::Int(n) => u64::try_from(*n).ok(),
        v => text(v)?.parse().ok(),
    }
}

fn parse_id(s: &str) -> Option<(u64, u64)> {
    let (ms, seq) = s.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn decode_metadata(b: &[u8]) -> Vec<(String, String)> {
    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(b) {
        Ok(m) => m
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_millis_when_bare() {
        let mut p = Properties::new();
        p.insert("redeliverInterval", "250");
        p.insert("processingTimeout", "2s");
        assert_eq!(
            millis_or_duration(&p, "redeliverInterval", Duration::ZERO).expect("ok"),
            Duration::from_millis(250)
        );
        assert_eq!(
            millis_or_duration(&p, "processingTimeout", Duration::ZERO).expect("ok"),
            Duration::from_secs(2)
        );
        assert_eq!(
            millis_or_duration(&p, "streamTTL", Duration::ZERO).expect("ok"),
            Duration::ZERO
        );
    }

    #[test]
    fn entries_parse() {
        let v = Value::Array(vec![
            Value::Array(vec![
                Value::BulkString(b"1-0".to_vec()),
                Value::Array(vec![
                    Value::BulkString(b"data".to_vec()),
                    Value::BulkString(b"{}".to_vec()),
                    Value::BulkString(b"metadata".to_vec()),
                    Value::BulkString(br#"{"a":"b"}"#.to_vec()),
                ]),
            ]),
            Value::Nil,
        ]);
        let r = parse_entries(&v, 1);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].id.as_str(), &r[0].data[..]), ("1-0", &b"{}"[..]));
        assert_eq!(r[0].metadata, vec![("a".to_owned(), "b".to_owned())]);
        assert_eq!(parse_id("5-3"), Some((5, 3)));
    }

    #[test]
    fn lag_is_read_per_group_and_nil_is_unknown() {
        let group = |name: &str, lag: Value| {
            Value::Array(vec![
                Value::BulkString(b"name".to_vec()),
                Value::BulkString(name.as_bytes().to_vec()),
                Value::BulkString(b"lag".to_vec()),
                lag,
            ])
        };
        let v = Value::Array(vec![group("a", Value::Int(7)), group("b", Value::Nil)]);
        assert_eq!(group_lag(&v, "a"), Some(7));
        assert_eq!(group_lag(&v, "b"), None);
        assert_eq!(group_lag(&v, "c"), None);
    }
}
