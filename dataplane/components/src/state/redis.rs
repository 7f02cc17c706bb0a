//! `state.redis`: standalone Redis or Redis Cluster (`redisType:
//! cluster`, `redisHost` a comma list of seed nodes), in the layout of
//! Dapr's driver so daprd and Skiff read each other's data: each key is a
//! hash `{data, version[, first-write]}` and the ETag is `version`, bumped
//! by a Lua script that checks it in the same step.
//!
//! One multiplexed connection per node carries every call (redis-rs
//! pipelines concurrent requests on it) and reconnects by itself when the
//! server comes back. Saves are one script (check, write, TTL) and gets one
//! pipelined `HMGET`+`TTL`, so each is one round trip.
//!
//! Transactions are a `MULTI` of the same scripts: they run together and in
//! order, but as in Dapr a failed ETag check inside one does not undo the
//! operations before it (Redis has no rollback). On a cluster the keys of a
//! transaction live on different slots, so its operations run in order one
//! at a time and are not atomic.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use redis::{Script, Value};

use super::{
    Concurrency, Consistency, DeleteRequest, Features, Item, Op, SetRequest, StateError,
    StateStore, Transactional, Ttl,
};
use crate::redisconn::{Conn, Connected, OpenError, connect};
use crate::{BoxFuture, MetadataError, Properties};

/// Dapr's save: write if there is no version yet, or it equals the ETag,
/// or (no first-write marker and no ETag given: "0"); then the TTL
/// (ARGV[4]: seconds, -1 to clear, 0 to leave).
const SET: &str = r#"
local etag = redis.pcall("HGET", KEYS[1], "version");
if type(etag) == "table" then
  redis.call("DEL", KEYS[1]);
  etag = false;
end;
local fwr = redis.pcall("HGET", KEYS[1], "first-write");
if not etag or etag == "" or etag == ARGV[1] or (not fwr and ARGV[1] == "0") then
  redis.call("HSET", KEYS[1], "data", ARGV[2]);
  if ARGV[3] == "0" then
    redis.call("HSET", KEYS[1], "first-write", 0);
  end;
  local v = redis.call("HINCRBY", KEYS[1], "version", 1);
  local ttl = tonumber(ARGV[4]);
  if ttl > 0 then
    redis.call("EXPIRE", KEYS[1], ttl);
  elseif ttl < 0 then
    redis.call("PERSIST", KEYS[1]);
  end;
  return v;
else
  return redis.error_reply("failed to set key " .. KEYS[1]);
end
"#;

/// Dapr's delete: unconditional with "0", else only at that version.
const DEL: &str = r#"
local var1 = redis.pcall("HGET", KEYS[1], "version");
if not var1 or type(var1) == "table" or var1 == ARGV[1] or var1 == "" or ARGV[1] == "0" then
  return redis.call("DEL", KEYS[1]);
else
  return redis.error_reply("failed to delete " .. KEYS[1]);
end
"#;

pub struct RedisStore {
    conn: Conn,
    /// What errors name: the host list, never credentials.
    addr: String,
    cluster: bool,
    default_ttl: Option<u64>,
    set: Script,
    del: Script,
}

impl RedisStore {
    /// Connects (the first connection must succeed; later ones are made
    /// again by themselves) and answers `PING`.
    pub async fn open(meta: &Properties) -> Result<Arc<Self>, OpenError> {
        let default_ttl = match meta.get("ttlInSeconds") {
            None => None,
            Some(v) => Some(v.trim().parse::<u64>().map_err(|_| MetadataError {
                field: "ttlInSeconds".into(),
                why: "is not a non-negative integer".into(),
            })?)
            .filter(|n| *n > 0),
        };
        let Connected {
            conn,
            addr,
            cluster,
            ..
        } = connect(meta, None).await?;
        let store = Self {
            conn,
            addr: addr.clone(),
            cluster,
            default_ttl,
            set: Script::new(SET),
            del: Script::new(DEL),
        };
        Ok(Arc::new(store))
    }

    fn backend(&self, e: &redis::RedisError) -> StateError {
        StateError::Backend(format!("redis {}: {e}", self.addr))
    }

    /// The script's arguments for a save: version, data, first-write flag,
    /// TTL. An ETag must be a number (Redis versions are integers).
    fn set_args(&self, s: &SetRequest) -> Result<(String, &'static str, i64), StateError> {
        let ver = match (&s.etag, s.concurrency) {
            (Some(e), Concurrency::FirstWrite) if !e.is_empty() => parse_etag(e)?,
            (Some(e), Concurrency::LastWrite) if !e.is_empty() => parse_etag(e)?,
            _ => "0".to_owned(),
        };
        let fw = if s.concurrency == Concurrency::FirstWrite {
            "0"
        } else {
            "1"
        };
        let ttl = match s.ttl {
            Ttl::Seconds(n) => i64::try_from(n).unwrap_or(i64::MAX).max(1),
            Ttl::Clear => -1,
            Ttl::Unset => self
                .default_ttl
                .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
        };
        Ok((ver, fw, ttl))
    }

    fn delete_ver(d: &DeleteRequest) -> Result<String, StateError> {
        match &d.etag {
            Some(e) if !e.is_empty() => parse_etag(e),
            _ => Ok("0".to_owned()),
        }
    }

    async fn get_one(&self, key: &str) -> Result<Option<Item>, StateError> {
        let mut conn = self.conn.clone();
        let r: Result<(Vec<Option<Vec<u8>>>, i64), _> = redis::pipe()
            .cmd("HMGET")
            .arg(key)
            .arg("data")
            .arg("version")
            .cmd("TTL")
            .arg(key)
            .query_async(&mut conn)
            .await;
        let (fields, ttl) = match r {
            Ok(v) => v,
            // A plain string value (written by something else): Dapr reads
            // it with GET and gives it no ETag.
            Err(e) if e.to_string().contains("WRONGTYPE") => {
                let data: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| self.backend(&e))?;
                return Ok(data.map(|d| Item {
                    data: Bytes::from(d),
                    etag: None,
                    expires: None,
                }));
            }
            Err(e) => return Err(self.backend(&e)),
        };
        let mut it = fields.into_iter();
        let (Some(Some(data)), version) = (it.next(), it.next().flatten()) else {
            return Ok(None);
        };
        Ok(Some(Item {
            data: Bytes::from(data),
            etag: version.map(|v| String::from_utf8_lossy(&v).into_owned()),
            expires: u64::try_from(ttl)
                .ok()
                .map(|s| SystemTime::now() + Duration::from_secs(s)),
        }))
    }

    fn set_error(&self, s: &SetRequest, e: &redis::RedisError) -> StateError {
        if script_refused(e) && s.etag.as_deref().is_some_and(|e| !e.is_empty()) {
            StateError::EtagMismatch(format!("failed to set key {}", s.key))
        } else {
            self.backend(e)
        }
    }
}

/// The save or delete script refused the write (its ETag check failed):
/// its error reply starts with the word `failed`.
fn script_refused(e: &redis::RedisError) -> bool {
    e.code() == Some("failed")
}

fn parse_etag(e: &str) -> Result<String, StateError> {
    e.parse::<u64>()
        .map(|n| n.to_string())
        .map_err(|_| StateError::EtagInvalid(format!("{e:?} is not a Redis version (an integer)")))
}

impl StateStore for RedisStore {
    fn features(&self) -> Features {
        Features::ETAG
            .union(Features::TRANSACTIONAL)
            .union(Features::TTL)
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        _c: Consistency,
    ) -> BoxFuture<'a, Result<Option<Item>, StateError>> {
        Box::pin(self.get_one(key))
    }

    /// One pipeline on a single node; concurrent gets on a cluster (keys
    /// live on different nodes).
    fn bulk_get<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Vec<super::BulkItem>> {
        Box::pin(async move {
            if self.cluster {
                let calls = keys.iter().map(|k| self.get_one(k));
                return futures_util::future::join_all(calls).await;
            }
            let mut p = redis::pipe();
            for k in keys {
                p.cmd("HMGET")
                    .arg(k)
                    .arg("data")
                    .arg("version")
                    .cmd("TTL")
                    .arg(k);
            }
            let r: Result<Vec<Value>, _> = p.query_async(&mut self.conn.clone()).await;
            match r {
                Ok(values) => {
                    let mut out = Vec::with_capacity(keys.len());
                    let mut it = values.into_iter();
                    for k in keys {
                        let (f, t) = (it.next(), it.next());
                        out.push(match (f, t) {
                            (Some(f), Some(t)) => {
                                match redis::from_redis_value::<(Vec<Option<Vec<u8>>>, i64)>(
                                    Value::Array(vec![f, t]),
                                ) {
                                    Ok((fields, ttl)) => {
                                        let mut fi = fields.into_iter();
                                        match (fi.next().flatten(), fi.next().flatten()) {
                                            (Some(d), v) => Ok(Some(Item {
                                                data: Bytes::from(d),
                                                etag: v.map(|v| {
                                                    String::from_utf8_lossy(&v).into_owned()
                                                }),
                                                expires: u64::try_from(ttl).ok().map(|s| {
                                                    SystemTime::now() + Duration::from_secs(s)
                                                }),
                                            })),
                                            (None, _) => Ok(None),
                                        }
                                    }
                                    // Not a hash: read it alone.
                                    Err(_) => self.get_one(k).await,
                                }
                            }
                            _ => Err(StateError::Backend(format!(
                                "redis {}: short pipeline reply",
                                self.addr
                            ))),
                        });
                    }
                    out
                }
                Err(_) => {
                    // A key of another type fails the whole pipeline: fall
                    // back to one get per key.
                    let calls = keys.iter().map(|k| self.get_one(k));
                    futures_util::future::join_all(calls).await
                }
            }
        })
    }

    fn set(&self, req: SetRequest) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(async move {
            let (ver, fw, ttl) = self.set_args(&req)?;
            let r: Result<i64, _> = self
                .set
                .key(&req.key)
                .arg(ver)
                .arg(req.value.as_ref())
                .arg(fw)
                .arg(ttl)
                .invoke_async(&mut self.conn.clone())
                .await;
            r.map(drop).map_err(|e| self.set_error(&req, &e))
        })
    }

    fn delete(&self, req: DeleteRequest) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(async move {
            let ver = Self::delete_ver(&req)?;
            let r: Result<i64, _> = self
                .del
                .key(&req.key)
                .arg(ver)
                .invoke_async(&mut self.conn.clone())
                .await;
            match r {
                Ok(_) => Ok(()),
                Err(e) if script_refused(&e) => Err(StateError::EtagMismatch(format!(
                    "failed to delete {}",
                    req.key
                ))),
                Err(e) => Err(self.backend(&e)),
            }
        })
    }

    fn transactional(&self) -> Option<&dyn Transactional> {
        Some(self)
    }
}

impl Transactional for RedisStore {
    fn multi(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(async move {
            if self.cluster {
                // Keys of one transaction live on different slots: run the
                // operations in order, one at a time (not atomic).
                for op in ops {
                    match op {
                        Op::Set(s) => self.set(s).await?,
                        Op::Delete(d) => self.delete(d).await?,
                    }
                }
                return Ok(());
            }
            let mut p = redis::pipe();
            p.atomic();
            for op in &ops {
                match op {
                    Op::Set(s) => {
                        let (ver, fw, ttl) = self.set_args(s)?;
                        p.cmd("EVAL")
                            .arg(SET)
                            .arg(1)
                            .arg(&s.key)
                            .arg(ver)
                            .arg(s.value.as_ref())
                            .arg(fw)
                            .arg(ttl);
                    }
                    Op::Delete(d) => {
                        p.cmd("EVAL")
                            .arg(DEL)
                            .arg(1)
                            .arg(&d.key)
                            .arg(Self::delete_ver(d)?);
                    }
                }
            }
            let r: Result<Vec<Value>, _> = p.query_async(&mut self.conn.clone()).await;
            match r {
                Ok(_) => Ok(()),
                Err(e) if script_refused(&e) => {
                    Err(StateError::EtagMismatch(format!("transaction: {e}")))
                }
                Err(e) => Err(self.backend(&e)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags() {
        assert!(parse_etag("12").is_ok());
        assert!(matches!(parse_etag("abc"), Err(StateError::EtagInvalid(_))));
    }
}
