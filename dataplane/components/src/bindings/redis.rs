//! `bindings.redis` (Dapr's type, output): `create` is `SET` (and
//! `EXPIRE` with `metadata.ttlInSeconds`), `get` is `GET` (`GETDEL` with
//! `metadata.delete=true`), `delete` is `DEL`, `increment` is `INCR`;
//! `metadata.key` names the key. The Redis connection metadata is
//! `state.redis`'s.

use std::sync::Arc;

use bytes::Bytes;
use redis::Value;
use redis::aio::ConnectionLike;

use super::{BindingError, OutputBinding, Request, Response};
use crate::redisconn::{Conn, OpenError, connect};
use crate::{BoxFuture, Properties};

pub struct RedisBinding {
    conn: Conn,
    addr: String,
}

impl RedisBinding {
    pub async fn open(meta: &Properties) -> Result<Arc<Self>, OpenError> {
        let c = connect(meta, None).await?;
        Ok(Arc::new(Self {
            conn: c.conn,
            addr: c.addr,
        }))
    }

    async fn run(&self, req: Request) -> Result<Response, BindingError> {
        let key = req
            .metadata
            .get("key")
            .filter(|k| !k.is_empty())
            .ok_or_else(|| BindingError::Invalid("metadata.key is required".into()))?;
        let err = |e: redis::RedisError| BindingError::Backend(format!("redis {}: {e}", self.addr));
        let mut conn = self.conn.clone();
        let mut c;
        match req.operation.as_str() {
            "create" => {
                c = redis::cmd("SET");
                c.arg(key).arg(req.data.as_ref());
                if let Some(ttl) = req.metadata.get("ttlInSeconds") {
                    let secs: u64 = ttl.parse().map_err(|_| {
                        BindingError::Invalid(format!("ttlInSeconds {ttl:?} is not a number"))
                    })?;
                    c.arg("EX").arg(secs.max(1));
                }
                conn.req_packed_command(&c).await.map_err(err)?;
                Ok(Response::default())
            }
            "get" => {
                let del = req.metadata.get("delete").is_some_and(|v| v == "true");
                c = redis::cmd(if del { "GETDEL" } else { "GET" });
                c.arg(key);
                Ok(match conn.req_packed_command(&c).await.map_err(err)? {
                    Value::BulkString(b) => Response {
                        data: Some(Bytes::from(b)),
                        ..Default::default()
                    },
                    _ => Response::default(),
                })
            }
            "delete" => {
                c = redis::cmd("DEL");
                c.arg(key);
                conn.req_packed_command(&c).await.map_err(err)?;
                Ok(Response::default())
            }
            "increment" => {
                c = redis::cmd("INCR");
                c.arg(key);
                conn.req_packed_command(&c).await.map_err(err)?;
                Ok(Response::default())
            }
            op => Err(BindingError::Invalid(format!(
                "operation {op:?} is not supported (create, get, delete, increment)"
            ))),
        }
    }
}

impl OutputBinding for RedisBinding {
    fn operations(&self) -> &'static [&'static str] {
        &["create", "get", "delete", "increment"]
    }

    fn invoke(&self, req: Request) -> BoxFuture<'_, Result<Response, BindingError>> {
        Box::pin(self.run(req))
    }
}
