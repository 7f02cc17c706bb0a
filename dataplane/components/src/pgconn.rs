//! One PostgreSQL connection from a component's `connectionString`
//! (`sslmode` / `sslrootcert` read as `state.postgresql` reads them), its
//! connection task driven in the background — and its notifications
//! (`LISTEN`) handed on when asked. For drivers that need a connection of
//! their own rather than a pool: `LISTEN`, and the bindings' few calls.

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use crate::MetadataError;
use crate::state::postgres::{split_tls, tls};

/// A connection string without its TLS settings (see `split_tls`).
pub(crate) fn parse_config(conn: &str) -> Result<tokio_postgres::Config, MetadataError> {
    conn.parse().map_err(|_| MetadataError {
        field: "connectionString".into(),
        // tokio-postgres' parse error may quote the string: say less.
        why: "is not a PostgreSQL connection string (key=value pairs or a postgres:// URL)".into(),
    })
}

pub(crate) struct PgTarget {
    cfg: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

impl PgTarget {
    pub(crate) fn parse(conn: &str) -> Result<Self, MetadataError> {
        let (conn, mode, root) = split_tls(conn);
        let mut cfg = parse_config(&conn)?;
        let tls = match mode.as_str() {
            "disable" | "allow" | "prefer" => {
                cfg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                None
            }
            m => Some(
                tls::connector(m, root.as_deref()).map_err(|why| MetadataError {
                    field: "connectionString".into(),
                    why,
                })?,
            ),
        };
        Ok(Self { cfg, tls })
    }

    /// Connects; notifications go to `notify` when given.
    pub(crate) async fn connect(
        &self,
        notify: Option<mpsc::UnboundedSender<String>>,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        macro_rules! drive {
            ($conn:expr) => {{
                let mut conn = $conn;
                tokio::spawn(async move {
                    let mut msgs = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                    while let Some(m) = msgs.next().await {
                        match m {
                            Ok(AsyncMessage::Notification(n)) => {
                                if let Some(tx) = &notify
                                    && tx.send(n.payload().to_owned()).is_err()
                                {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(_) => return,
                        }
                    }
                });
            }};
        }
        match &self.tls {
            None => {
                let (client, conn) = self.cfg.connect(tokio_postgres::NoTls).await?;
                drive!(conn);
                Ok(client)
            }
            Some(t) => {
                let (client, conn) = self.cfg.connect(t.clone()).await?;
                drive!(conn);
                Ok(client)
            }
        }
    }
}
