//! One connection to Redis or Redis Cluster from Dapr's `redis*` metadata
//! (`redisHost`, `redisType`, `redisPassword`, `redisUsername`,
//! `enableTLS`, `insecureSkipTLSVerify`, `redisDB`, `dialTimeout`,
//! `readTimeout`, `redisMaxRetries`), shared by the state store and the
//! pub/sub driver. A standalone node gets a `ConnectionManager` and a
//! cluster a `ClusterConnection`: both multiplex concurrent calls and
//! reconnect by themselves.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ConnectionAddr, IntoConnectionInfo, Pipeline, RedisConnectionInfo, RedisFuture, Value,
};

use crate::{MetadataError, Properties};

pub const DEFAULT_PORT: u16 = 6379;
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_MAX_RETRIES: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("redis {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: redis::RedisError,
    },
}

/// A standalone node's connection or a cluster's: both multiplex.
#[derive(Clone)]
pub enum Conn {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    /// redis-rs answers a server's error reply (`-LOADING`, `-NOGROUP`,
    /// `-OOM`, `-READONLY` ...) to a single command as
    /// `Ok(Value::ServerError)`; here it is an `Err`, so no caller takes a
    /// refused write for a done one. (The soak found it: publishes sent
    /// while a restarted Redis loaded its AOF were acknowledged and lost.)
    /// Pipelines keep their per-command replies.
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let reply = match self {
            Self::Node(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        };
        Box::pin(async move { reply.await?.extract_error() })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// A connection, and what errors name it by.
pub struct Connected {
    pub conn: Conn,
    /// The client of a standalone node, for connections of its own
    /// (pub/sub); `None` for a cluster.
    pub client: Option<redis::Client>,
    /// The host list, never credentials.
    pub addr: String,
    pub cluster: bool,
}

pub(crate) fn host_port(s: &str) -> Result<(String, u16), MetadataError> {
    let s = s.trim();
    let (h, p) = match s.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.contains(']') => {
            let port = p.parse().map_err(|_| MetadataError {
                field: "redisHost".into(),
                why: format!("{s:?} has a port that is not a number"),
            })?;
            (h, port)
        }
        _ => (s, DEFAULT_PORT),
    };
    Ok((h.trim_matches(['[', ']']).to_owned(), p))
}

/// Connects and answers `PING`. `response_timeout` overrides
/// `readTimeout` (a connection that blocks on `XREADGROUP` needs longer).
pub async fn connect(
    meta: &Properties,
    response_timeout: Option<Duration>,
) -> Result<Connected, OpenError> {
    let hosts = meta.required("redisHost")?;
    let addr = hosts.to_owned();
    let cluster = match meta
        .get("redisType")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("node") => false,
        Some("cluster") => true,
        Some(_) => {
            return Err(MetadataError {
                field: "redisType".into(),
                why: "must be node or cluster".into(),
            }
            .into());
        }
    };
    let tls = meta.bool_or("enableTLS", false)?;
    let insecure = meta.bool_or("insecureSkipTLSVerify", false)?;
    let db: i64 = meta.int_or("redisDB", 0)?;
    let dial = meta.duration_or("dialTimeout", DEFAULT_DIAL_TIMEOUT)?;
    let read = response_timeout
        .map_or_else(|| meta.duration_or("readTimeout", DEFAULT_READ_TIMEOUT), Ok)?;
    let retries: usize = meta.int_or("redisMaxRetries", DEFAULT_MAX_RETRIES)?;
    let mut redis_info = RedisConnectionInfo::default().set_db(db);
    if let Some(p) = meta.get("redisPassword") {
        redis_info = redis_info.set_password(p);
    }
    if let Some(u) = meta.get("redisUsername") {
        redis_info = redis_info.set_username(u);
    }
    let nodes: Vec<(String, u16)> = hosts
        .split(',')
        .filter(|h| !h.trim().is_empty())
        .map(host_port)
        .collect::<Result<_, _>>()?;
    let connect_err = |source| OpenError::Connect {
        addr: addr.clone(),
        source,
    };
    let infos: Vec<redis::ConnectionInfo> = nodes
        .into_iter()
        .map(|(host, port)| {
            let a = if tls {
                ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure,
                    tls_params: None,
                }
            } else {
                ConnectionAddr::Tcp(host, port)
            };
            a.into_connection_info()
                .map(|i| i.set_redis_settings(redis_info.clone()))
        })
        .collect::<Result<_, _>>()
        .map_err(connect_err)?;
    let mut node_client = None;
    let conn = if cluster {
        let mut b = redis::cluster::ClusterClient::builder(infos)
            .connection_timeout(dial)
            .response_timeout(read)
            .retries(u32::try_from(retries).unwrap_or(3));
        if let Some(p) = meta.get("redisPassword") {
            b = b.password(p);
        }
        if let Some(u) = meta.get("redisUsername") {
            b = b.username(u);
        }
        if tls {
            b = b.tls(if insecure {
                redis::TlsMode::Insecure
            } else {
                redis::TlsMode::Secure
            });
        }
        let client = b.build().map_err(connect_err)?;
        Conn::Cluster(client.get_async_connection().await.map_err(connect_err)?)
    } else {
        let info = infos.into_iter().next().ok_or_else(|| MetadataError {
            field: "redisHost".into(),
            why: "names no host".into(),
        })?;
        let client = redis::Client::open(info).map_err(connect_err)?;
        node_client = Some(client.clone());
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(dial))
            .set_response_timeout(Some(read))
            .set_number_of_retries(retries)
            .set_max_delay(Duration::from_secs(2));
        Conn::Node(
            client
                .get_connection_manager_with_config(cfg)
                .await
                .map_err(connect_err)?,
        )
    };
    let _: String = redis::cmd("PING")
        .query_async(&mut conn.clone())
        .await
        .map_err(connect_err)?;
    Ok(Connected {
        conn,
        client: node_client,
        addr,
        cluster,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_ports() {
        assert_eq!(host_port("h:7000").expect("valid"), ("h".to_owned(), 7000));
        assert_eq!(host_port("h").expect("valid"), ("h".to_owned(), 6379));
        assert!(host_port("h:x").is_err());
    }
}
