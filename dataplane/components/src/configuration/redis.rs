//! `configuration.redis` (Dapr's type): items are Redis strings holding
//! `value||version` (or just a value). A read is one `MGET` (`KEYS *`
//! first when no keys are asked for); keys that are missing, hold another
//! type or an empty value are left out. A subscription listens on the
//! keyspace notifications of its keys (`__keyspace@<db>__:<key>`, or `*`),
//! so the server needs `notify-keyspace-events` to include `K` and the
//! string (`$`) and generic (`g`) events — `KA` does; the driver warns at
//! subscribe when it does not. A changed key is read again and sent; a
//! deleted or expired one is sent as an empty item. A subscription whose
//! connection is lost reconnects with backoff and reads its keys again.

use std::sync::Arc;

use futures_util::StreamExt;
use redis::Value;
use redis::aio::ConnectionLike;
use tokio::sync::mpsc;

use super::{ConfigError, ConfigurationStore, Item, Items, Metadata, WATCH_BUFFER};
use crate::redisconn::{Conn, OpenError, connect};
use crate::{BoxFuture, MetadataError, Properties};

const SEPARATOR: &str = "||";
/// Backoff between reconnects of a subscription: from this...
const RECONNECT_MIN: std::time::Duration = std::time::Duration::from_millis(100);
/// ...to this.
const RECONNECT_MAX: std::time::Duration = std::time::Duration::from_secs(5);

pub struct RedisConfiguration {
    conn: Conn,
    client: redis::Client,
    addr: String,
    db: i64,
}

impl RedisConfiguration {
    pub async fn open(meta: &Properties) -> Result<Arc<Self>, OpenError> {
        let c = connect(meta, None).await?;
        let Some(client) = c.client else {
            return Err(MetadataError {
                field: "redisType".into(),
                why: "cluster is not supported by configuration.redis (keyspace notifications are per node)".into(),
            }
            .into());
        };
        Ok(Arc::new(Self {
            conn: c.conn,
            client,
            addr: c.addr,
            db: meta.int_or("redisDB", 0)?,
        }))
    }

    fn err(&self, e: &redis::RedisError) -> ConfigError {
        ConfigError::Backend(format!("redis {}: {e}", self.addr))
    }

    async fn read(&self, keys: &[String]) -> Result<Items, ConfigError> {
        let mut conn = self.conn.clone();
        let keys: Vec<String> = if keys.is_empty() {
            let mut c = redis::cmd("KEYS");
            c.arg("*");
            match conn
                .req_packed_command(&c)
                .await
                .map_err(|e| self.err(&e))?
            {
                Value::Array(v) => v.iter().filter_map(text).collect(),
                _ => Vec::new(),
            }
        } else {
            keys.to_vec()
        };
        let mut out = Items::new();
        if keys.is_empty() {
            return Ok(out);
        }
        let mut c = redis::cmd("MGET");
        for k in &keys {
            c.arg(k);
        }
        // MGET answers nil for a missing key and for one of another type.
        if let Value::Array(vals) = conn
            .req_packed_command(&c)
            .await
            .map_err(|e| self.err(&e))?
        {
            for (k, v) in keys.into_iter().zip(vals) {
                if let Some(s) = text(&v).filter(|s| !s.is_empty()) {
                    out.insert(k, parse(&s));
                }
            }
        }
        Ok(out)
    }

    /// Warns once per subscribe when the server does not notify.
    async fn check_notifications(&self) {
        let mut c = redis::cmd("CONFIG");
        c.arg("GET").arg("notify-keyspace-events");
        let flags = match self.conn.clone().req_packed_command(&c).await {
            Ok(Value::Array(v)) => v.get(1).and_then(text).unwrap_or_default(),
            Ok(Value::Map(m)) => m.first().and_then(|(_, v)| text(v)).unwrap_or_default(),
            _ => return,
        };
        let all = flags.contains('A');
        if !flags.contains('K') || !(all || (flags.contains('$') && flags.contains('g'))) {
            tracing::warn!(redis = %self.addr, notify_keyspace_events = %flags,
                "configuration.redis: the server does not send keyspace notifications; subscriptions will see no changes (set notify-keyspace-events KA)");
        }
    }
}

/// `value||version` → the item (Dapr's split: the first two parts).
pub fn parse(s: &str) -> Item {
    let mut parts = s.split(SEPARATOR);
    Item {
        value: parts.next().unwrap_or_default().to_owned(),
        version: parts.next().unwrap_or_default().to_owned(),
        metadata: Default::default(),
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

impl ConfigurationStore for RedisConfiguration {
    fn get<'a>(
        &'a self,
        keys: &'a [String],
        _metadata: &'a Metadata,
    ) -> BoxFuture<'a, Result<Items, ConfigError>> {
        Box::pin(self.read(keys))
    }

    fn subscribe<'a>(
        &'a self,
        keys: &'a [String],
        _metadata: &'a Metadata,
    ) -> BoxFuture<'a, Result<mpsc::Receiver<Items>, ConfigError>> {
        Box::pin(async move {
            self.check_notifications().await;
            // The first connection is made here, so a bad address fails the
            // subscribe call; later ones by the watcher, after a loss.
            let ps = self.listen(keys).await?;
            let (tx, rx) = mpsc::channel(WATCH_BUFFER);
            let me = Self {
                conn: self.conn.clone(),
                client: self.client.clone(),
                addr: self.addr.clone(),
                db: self.db,
            };
            tokio::spawn(me.watch(ps, keys.to_vec(), tx));
            Ok(rx)
        })
    }
}

impl RedisConfiguration {
    /// A pub/sub connection subscribed to the keyspace channels of `keys`.
    async fn listen(&self, keys: &[String]) -> Result<redis::aio::PubSub, ConfigError> {
        let mut ps = self
            .client
            .get_async_pubsub()
            .await
            .map_err(|e| self.err(&e))?;
        let prefix = self.prefix();
        if keys.is_empty() {
            ps.psubscribe(format!("{prefix}*"))
                .await
                .map_err(|e| self.err(&e))?;
        } else {
            for k in keys {
                ps.subscribe(format!("{prefix}{k}"))
                    .await
                    .map_err(|e| self.err(&e))?;
            }
        }
        Ok(ps)
    }

    fn prefix(&self) -> String {
        format!("__keyspace@{}__:", self.db)
    }

    /// Forwards changes until the subscriber goes away. A lost connection
    /// (Redis restarted) is made again, with backoff, and the keys read
    /// once more so a change made meanwhile is not missed.
    async fn watch(self, first: redis::aio::PubSub, keys: Vec<String>, tx: mpsc::Sender<Items>) {
        let prefix = self.prefix();
        let mut ps = Some(first);
        let mut wait = RECONNECT_MIN;
        loop {
            let mut conn = match ps.take() {
                Some(c) => c,
                None => {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = tx.closed() => return,
                    }
                    wait = (wait * 2).min(RECONNECT_MAX);
                    match self.listen(&keys).await {
                        Ok(c) => {
                            tracing::info!(redis = %self.addr, "configuration.redis: notifications back");
                            // What changed while it was away.
                            if let Ok(now) = self.read(&keys).await
                                && !now.is_empty()
                                && tx.send(now).await.is_err()
                            {
                                return;
                            }
                            c
                        }
                        Err(_) => continue,
                    }
                }
            };
            let mut stream = conn.on_message();
            loop {
                let msg = tokio::select! {
                    m = stream.next() => m,
                    () = tx.closed() => return,
                };
                let Some(msg) = msg else {
                    tracing::warn!(redis = %self.addr, "configuration.redis: the notification connection closed; reconnecting");
                    break;
                };
                wait = RECONNECT_MIN;
                let Some(key) = msg
                    .get_channel_name()
                    .strip_prefix(&prefix)
                    .map(str::to_owned)
                else {
                    continue;
                };
                let item = match self.read(std::slice::from_ref(&key)).await {
                    Ok(mut got) => got.remove(&key).unwrap_or_default(),
                    Err(e) => {
                        tracing::warn!(error = %e, "configuration.redis: reading a changed key failed");
                        continue;
                    }
                };
                let mut items = Items::new();
                items.insert(key, item);
                if tx.send(items).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_versions_split_as_dapr_does() {
        assert_eq!(
            (parse("v||3").value.as_str(), parse("v||3").version.as_str()),
            ("v", "3")
        );
        assert_eq!(
            (
                parse("plain").value.as_str(),
                parse("plain").version.as_str()
            ),
            ("plain", "")
        );
        assert_eq!(parse("a||b||c").version, "b");
    }
}
