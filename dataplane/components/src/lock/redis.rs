//! `lock.redis` (Dapr's type): `SET <key> <owner> NX EX <expiry>` takes a
//! lock, a Lua script releases it only for its owner (missing → 1, another
//! owner → 2, else `DEL` → 0, Dapr's numbers). Redis expires the key, so
//! a lock never outlives its expiry whatever happens to the sidecar. As
//! in Dapr, Redis Cluster is refused: a lock on one shard's primary is lost
//! with a failover it did not replicate to.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use redis::aio::ConnectionLike;

use super::{LockError, LockStore, Unlocked};
use crate::redisconn::{Conn, OpenError, connect};
use crate::{BoxFuture, MetadataError, Properties};

const UNLOCK: &str = r#"
local v = redis.call("get", KEYS[1])
if v == false then return 1 end
if v ~= ARGV[1] then return 2 end
redis.call("del", KEYS[1])
return 0
"#;

pub struct RedisLock {
    conn: Conn,
    addr: String,
    unlock: redis::Script,
}

impl RedisLock {
    pub async fn open(meta: &Properties) -> Result<Arc<Self>, OpenError> {
        if meta
            .get("redisType")
            .is_some_and(|t| t.eq_ignore_ascii_case("cluster"))
        {
            return Err(MetadataError {
                field: "redisType".into(),
                why: "cluster is not supported by lock.redis (a lock must live on one primary)"
                    .into(),
            }
            .into());
        }
        let c = connect(meta, None).await?;
        Ok(Arc::new(Self {
            conn: c.conn,
            addr: c.addr,
            unlock: redis::Script::new(UNLOCK),
        }))
    }

    fn err(&self, e: &redis::RedisError) -> LockError {
        LockError::Backend(format!("redis {}: {e}", self.addr))
    }
}

impl LockStore for RedisLock {
    fn try_lock<'a>(
        &'a self,
        resource: &'a str,
        owner: &'a str,
        expiry: Duration,
    ) -> BoxFuture<'a, Result<bool, LockError>> {
        Box::pin(async move {
            let mut c = redis::cmd("SET");
            c.arg(resource)
                .arg(owner)
                .arg("NX")
                .arg("EX")
                .arg(expiry.as_secs().max(1));
            match self.conn.clone().req_packed_command(&c).await {
                Ok(Value::Nil) => Ok(false),
                Ok(_) => Ok(true),
                Err(e) => Err(self.err(&e)),
            }
        })
    }

    fn unlock<'a>(
        &'a self,
        resource: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Unlocked, LockError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let n: i64 = self
                .unlock
                .key(resource)
                .arg(owner)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.err(&e))?;
            Ok(match n {
                0 => Unlocked::Success,
                1 => Unlocked::LockDoesNotExist,
                _ => Unlocked::LockBelongsToOthers,
            })
        })
    }
}
