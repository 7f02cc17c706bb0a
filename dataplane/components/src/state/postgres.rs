//! `state.postgresql` version `v2`, in the table layout of Dapr's v2
//! driver (`key text, value bytea, etag uuid, created_at, updated_at,
//! expires_at, row_id`; the migration level in `dapr_metadata`), so a
//! database daprd wrote is read here and back.
//!
//! Calls share a pool of connections (`maxConns`), each call takes one for
//! one statement, and statements are prepared once per connection and
//! cached. A transaction is a real one: `BEGIN`, the operations in order,
//! `COMMIT`, and any failure (a wrong ETag included) rolls all of it back.
//! Expired rows are invisible at once and deleted every `cleanupInterval`.
//!
//! Dapr's v2 driver has no query API; this one answers the state query
//! language by scanning the app's keys and filtering in Skiff (the same
//! evaluator as SQLite), so the values need not be JSON to be stored.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::types::ToSql;

use super::query::{self, Query};
use super::{
    Concurrency, Consistency, DeleteRequest, Features, Item, Op, Querier, SetRequest, StateError,
    StateStore, Transactional, Ttl,
};
use crate::pgconn::{split_tls, tls};
use crate::{BoxFuture, MetadataError, Properties};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
pub const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(3600);
pub const DEFAULT_METADATA_TABLE: &str = "dapr_metadata";
/// Pool size when `maxConns` is not given (pgx's default floor).
pub const DEFAULT_MAX_CONNS: usize = 4;
/// The migration level Dapr's v2 driver records once its table is made.
const MIGRATION_LEVEL: &str = "2";

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("postgresql {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("postgresql {addr}: {why}")]
    Pool { addr: String, why: String },
    #[error("postgresql tls: {0}")]
    Tls(String),
}

/// The SQL of one table, written once at open.
struct Sql {
    get: String,
    bulk_get: String,
    upsert: [String; 2],
    update: String,
    delete: String,
    delete_etag: String,
    scan: String,
    sweep: String,
}

impl Sql {
    fn new(t: &str) -> Self {
        let live = "(expires_at IS NULL OR expires_at >= now())";
        let expiry = "CASE WHEN $3::int8 > 0 THEN now() + $3::int8 * interval '1 second' END";
        let upsert = |only_expired: &str| {
            format!(
                "INSERT INTO {t} AS t (key, value, etag, expires_at) VALUES ($1, $2, gen_random_uuid(), {expiry}) \
                 ON CONFLICT (key) DO UPDATE SET value = $2, updated_at = now(), etag = gen_random_uuid(), \
                 expires_at = {expiry}{only_expired}"
            )
        };
        Self {
            get: format!(
                "SELECT value, etag::text, (EXTRACT(EPOCH FROM expires_at) * 1000)::int8 FROM {t} WHERE key = $1 AND {live}"
            ),
            bulk_get: format!(
                "SELECT key, value, etag::text, (EXTRACT(EPOCH FROM expires_at) * 1000)::int8 FROM {t} WHERE key = ANY($1) AND {live}"
            ),
            upsert: [
                upsert(""),
                // First-write without an ETag: only over nothing or an
                // expired row.
                upsert(" WHERE t.expires_at IS NOT NULL AND t.expires_at < now()"),
            ],
            update: format!(
                "UPDATE {t} SET value = $2, updated_at = now(), etag = gen_random_uuid(), expires_at = {expiry} \
                 WHERE key = $1 AND etag = $4::text::uuid AND {live}"
            ),
            delete: format!("DELETE FROM {t} WHERE key = $1"),
            delete_etag: format!("DELETE FROM {t} WHERE key = $1 AND etag = $2::text::uuid"),
            scan: format!(
                "SELECT key, value, etag::text, (EXTRACT(EPOCH FROM expires_at) * 1000)::int8 FROM {t} \
                 WHERE starts_with(key, $1) AND {live} ORDER BY row_id"
            ),
            sweep: format!("DELETE FROM {t} WHERE expires_at IS NOT NULL AND expires_at < now()"),
        }
    }
}

pub struct PostgresStore {
    pool: Pool,
    sql: Sql,
    /// What errors name: host and database, never credentials.
    addr: String,
    timeout: Duration,
}

/// `tablePrefix` / `metadataTableName` go into SQL text: letters, digits,
/// underscores and one optional `schema.` part only.
fn valid_table(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').count() <= 2
        && s.split('.').all(|p| {
            !p.is_empty()
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !p.starts_with(|c: char| c.is_ascii_digit())
        })
}

/// What an error may say about where the database is.
fn describe(cfg: &tokio_postgres::Config) -> String {
    let host = cfg
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let db = cfg.get_dbname().unwrap_or("postgres");
    format!("{host}:{port}/{db}")
}

impl PostgresStore {
    pub async fn open(meta: &Properties) -> Result<Arc<Self>, OpenError> {
        let conn = meta.required("connectionString")?;
        let (conn, mode, root) = split_tls(conn);
        let mut cfg = crate::pgconn::parse_config(&conn)?;
        let prefix = meta.string_or("tablePrefix", "");
        let metadata_table = meta.string_or("metadataTableName", DEFAULT_METADATA_TABLE);
        let table = format!("{prefix}state");
        for (field, t) in [
            ("tablePrefix", &table),
            ("metadataTableName", &metadata_table),
        ] {
            if !valid_table(t) {
                return Err(MetadataError {
                    field: field.into(),
                    why: "must be letters, digits and underscores, with an optional schema.".into(),
                }
                .into());
            }
        }
        let timeout = meta.duration_or("timeout", DEFAULT_TIMEOUT)?;
        let timeout = match meta.get("timeoutInSeconds") {
            Some(s) => Duration::from_secs(s.parse().map_err(|_| MetadataError {
                field: "timeoutInSeconds".into(),
                why: "must be a whole number of seconds".into(),
            })?),
            None => timeout,
        };
        if timeout < Duration::from_secs(1) {
            return Err(MetadataError {
                field: "timeout".into(),
                why: "must be at least 1s".into(),
            }
            .into());
        }
        let cleanup = meta.duration_or("cleanupInterval", DEFAULT_CLEANUP_INTERVAL)?;
        let max_conns = meta.int_or("maxConns", DEFAULT_MAX_CONNS)?.max(1);
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(timeout);
        }
        let addr = describe(&cfg);

        let mgr_cfg = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let mgr = match mode.as_str() {
            "disable" => {
                cfg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                Manager::from_config(cfg, tokio_postgres::NoTls, mgr_cfg)
            }
            m @ ("allow" | "prefer" | "require" | "verify-ca" | "verify-full") => {
                cfg.ssl_mode(if matches!(m, "allow" | "prefer") {
                    tokio_postgres::config::SslMode::Prefer
                } else {
                    tokio_postgres::config::SslMode::Require
                });
                let tls = tls::connector(m, root.as_deref()).map_err(OpenError::Tls)?;
                Manager::from_config(cfg, tls, mgr_cfg)
            }
            _ => {
                return Err(MetadataError {
                    field: "connectionString".into(),
                    why: format!("sslmode {mode:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"),
                }
                .into());
            }
        };
        let pool = Pool::builder(mgr)
            .max_size(max_conns)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| OpenError::Pool {
                addr: addr.clone(),
                why: e.to_string(),
            })?;
        let store = Arc::new(Self {
            pool,
            sql: Sql::new(&table),
            addr,
            timeout,
        });
        store.migrate(&table, &metadata_table, &prefix).await?;
        if !cleanup.is_zero() {
            tokio::spawn(sweep(Arc::downgrade(&store), cleanup));
        }
        Ok(store)
    }

    /// Creates the table as Dapr's v2 driver does, under an advisory lock
    /// so sidecars starting together do not race on `CREATE TABLE`.
    async fn migrate(&self, table: &str, metadata: &str, prefix: &str) -> Result<(), OpenError> {
        let mut client = self.pool.get().await.map_err(|e| OpenError::Pool {
            addr: self.addr.clone(),
            why: pool_why(&e),
        })?;
        let connect = |source| OpenError::Connect {
            addr: self.addr.clone(),
            source,
        };
        let tx = client.transaction().await.map_err(connect)?;
        tx.execute("SELECT pg_advisory_xact_lock(4255172307)", &[])
            .await
            .map_err(connect)?;
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {metadata} (key text NOT NULL PRIMARY KEY, value text NOT NULL);\n\
             CREATE TABLE IF NOT EXISTS {table} (\n\
               key text NOT NULL PRIMARY KEY,\n\
               value bytea NOT NULL,\n\
               etag uuid NOT NULL DEFAULT gen_random_uuid(),\n\
               created_at timestamp with time zone NOT NULL DEFAULT now(),\n\
               updated_at timestamp with time zone,\n\
               expires_at timestamp with time zone,\n\
               row_id bigint GENERATED BY DEFAULT AS IDENTITY NOT NULL\n\
             );\n\
             CREATE INDEX IF NOT EXISTS {idx}_expires_at ON {table} (expires_at);\n\
             CREATE UNIQUE INDEX IF NOT EXISTS {idx}_row_id_uidx ON {table} (row_id);",
            idx = table.replace('.', "_"),
        ))
        .await
        .map_err(connect)?;
        tx.execute(
            &format!(
                "INSERT INTO {metadata} (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING"
            ),
            &[&format!("migrations-state-v2-{prefix}"), &MIGRATION_LEVEL],
        )
        .await
        .map_err(connect)?;
        tx.commit().await.map_err(connect)
    }

    fn backend(&self, e: &tokio_postgres::Error) -> StateError {
        // The server's own message (`db error: ERROR: ...`) says what
        // failed; it never holds the password.
        let msg = match e.as_db_error() {
            Some(d) => d.message().to_owned(),
            None => e.to_string(),
        };
        StateError::Backend(format!("postgresql {}: {msg}", self.addr))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StateError> {
        self.pool
            .get()
            .await
            .map_err(|e| StateError::Backend(format!("postgresql {}: {}", self.addr, pool_why(&e))))
    }

    /// Runs `f` within the component's timeout.
    async fn timed<T>(
        &self,
        f: impl Future<Output = Result<T, StateError>>,
    ) -> Result<T, StateError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(StateError::Backend(format!(
                "postgresql {}: no answer within {:?}",
                self.addr, self.timeout
            ))),
        }
    }

    async fn write_set(&self, c: &impl GenericClient, s: &SetRequest) -> Result<(), StateError> {
        let ttl: i64 = match s.ttl {
            Ttl::Seconds(n) => i64::try_from(n).unwrap_or(i64::MAX).max(1),
            Ttl::Clear | Ttl::Unset => 0,
        };
        let value: &[u8] = &s.value;
        let etag = s.etag.as_deref().filter(|e| !e.is_empty());
        let n = match etag {
            Some(e) => {
                let e = uuid_etag(e)?;
                let st = c
                    .prepare_cached(&self.sql.update)
                    .await
                    .map_err(|e| self.backend(&e))?;
                let params: [&(dyn ToSql + Sync); 4] = [&s.key, &value, &ttl, &e];
                c.execute(&st, &params).await
            }
            None => {
                let fw = usize::from(s.concurrency == Concurrency::FirstWrite);
                let st = c
                    .prepare_cached(&self.sql.upsert[fw])
                    .await
                    .map_err(|e| self.backend(&e))?;
                let params: [&(dyn ToSql + Sync); 3] = [&s.key, &value, &ttl];
                c.execute(&st, &params).await
            }
        }
        .map_err(|e| self.backend(&e))?;
        match (n, etag) {
            (1, _) => Ok(()),
            (_, Some(_)) => Err(StateError::EtagMismatch(format!(
                "no row of key {} has that etag",
                s.key
            ))),
            // As Dapr's driver answers a first-write over a live row.
            (_, None) => Err(StateError::Backend(format!(
                "postgresql {}: no item was updated (first-write: key {} exists)",
                self.addr, s.key
            ))),
        }
    }

    async fn write_delete(
        &self,
        c: &impl GenericClient,
        d: &DeleteRequest,
    ) -> Result<(), StateError> {
        let etag = d.etag.as_deref().filter(|e| !e.is_empty());
        let n = match etag {
            Some(e) => {
                let e = uuid_etag(e)?;
                let st = c
                    .prepare_cached(&self.sql.delete_etag)
                    .await
                    .map_err(|e| self.backend(&e))?;
                c.execute(&st, &[&d.key, &e]).await
            }
            None => {
                let st = c
                    .prepare_cached(&self.sql.delete)
                    .await
                    .map_err(|e| self.backend(&e))?;
                c.execute(&st, &[&d.key]).await
            }
        }
        .map_err(|e| self.backend(&e))?;
        if n != 1 && etag.is_some() {
            return Err(StateError::EtagMismatch(format!(
                "no row of key {} has that etag",
                d.key
            )));
        }
        Ok(())
    }
}

/// Dapr's v2 driver answers an ETag that is not a UUID as a mismatch.
fn uuid_etag(e: &str) -> Result<String, StateError> {
    let ok = e.len() == 36
        && e.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    if ok {
        Ok(e.to_owned())
    } else {
        Err(StateError::EtagMismatch(format!("{e:?} is not a UUID")))
    }
}

fn pool_why(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(b) => match b.as_db_error() {
            Some(d) => d.message().to_owned(),
            None => b.to_string(),
        },
        deadpool_postgres::PoolError::Timeout(_) => "no connection within the timeout".into(),
        other => other.to_string(),
    }
}

fn item(value: Vec<u8>, etag: Option<String>, expires_ms: Option<i64>) -> Item {
    Item {
        data: Bytes::from(value),
        etag,
        expires: expires_ms
            .and_then(|ms| u64::try_from(ms).ok())
            .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
    }
}

async fn sweep(store: std::sync::Weak<PostgresStore>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(s) = store.upgrade() else { return };
        let r = async {
            let c = s.client().await?;
            c.execute(s.sql.sweep.as_str(), &[])
                .await
                .map_err(|e| s.backend(&e))
        };
        match s.timed(r).await {
            Ok(n) if n > 0 => tracing::debug!(rows = n, "postgresql: deleted expired state"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "postgresql: expired-state cleanup failed"),
        }
    }
}

impl StateStore for PostgresStore {
    fn features(&self) -> Features {
        Features::ETAG
            .union(Features::TRANSACTIONAL)
            .union(Features::QUERY_API)
            .union(Features::TTL)
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        _c: Consistency,
    ) -> BoxFuture<'a, Result<Option<Item>, StateError>> {
        Box::pin(self.timed(async move {
            let c = self.client().await?;
            let st = c
                .prepare_cached(&self.sql.get)
                .await
                .map_err(|e| self.backend(&e))?;
            let row = c
                .query_opt(&st, &[&key])
                .await
                .map_err(|e| self.backend(&e))?;
            Ok(row.map(|r| item(r.get(0), r.get(1), r.get(2))))
        }))
    }

    /// One query for all the keys.
    fn bulk_get<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Vec<super::BulkItem>> {
        Box::pin(async move {
            let rows = self
                .timed(async {
                    let c = self.client().await?;
                    let st = c
                        .prepare_cached(&self.sql.bulk_get)
                        .await
                        .map_err(|e| self.backend(&e))?;
                    c.query(&st, &[&keys]).await.map_err(|e| self.backend(&e))
                })
                .await;
            match rows {
                Ok(rows) => {
                    let mut found: std::collections::HashMap<String, Item> = rows
                        .into_iter()
                        .map(|r| (r.get(0), item(r.get(1), r.get(2), r.get(3))))
                        .collect();
                    keys.iter().map(|k| Ok(found.remove(k))).collect()
                }
                Err(e) => keys.iter().map(|_| Err(e.clone())).collect(),
            }
        })
    }

    fn set(&self, req: SetRequest) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(self.timed(async move {
            let c = self.client().await?;
            self.write_set(&c, &req).await
        }))
    }

    fn delete(&self, req: DeleteRequest) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(self.timed(async move {
            let c = self.client().await?;
            self.write_delete(&c, &req).await
        }))
    }

    fn transactional(&self) -> Option<&dyn Transactional> {
        Some(self)
    }

    fn querier(&self) -> Option<&dyn Querier> {
        Some(self)
    }
}

impl Transactional for PostgresStore {
    fn multi(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(self.timed(async move {
            let mut c = self.client().await?;
            // Dropping the transaction without commit rolls it back.
            let tx = c.transaction().await.map_err(|e| self.backend(&e))?;
            for op in &ops {
                match op {
                    Op::Set(s) => self.write_set(&tx, s).await?,
                    Op::Delete(d) => self.write_delete(&tx, d).await?,
                }
            }
            tx.commit().await.map_err(|e| self.backend(&e))
        }))
    }
}

impl Querier for PostgresStore {
    fn query<'a>(
        &'a self,
        prefix: &'a str,
        q: Query,
    ) -> BoxFuture<'a, Result<query::Answer, StateError>> {
        Box::pin(self.timed(async move {
            let c = self.client().await?;
            let st = c
                .prepare_cached(&self.sql.scan)
                .await
                .map_err(|e| self.backend(&e))?;
            let rows = c
                .query(&st, &[&prefix])
                .await
                .map_err(|e| self.backend(&e))?;
            let items = rows
                .into_iter()
                .map(|r| (r.get(0), item(r.get(1), r.get(2), r.get(3))))
                .collect();
            query::evaluate(items, &q).map_err(StateError::Invalid)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_are_split_out() {
        let (s, m, r) = split_tls("host=h user=u sslmode=verify-full sslrootcert=/ca.pem");
        assert_eq!(
            (s.as_str(), m.as_str(), r.as_deref()),
            ("host=h user=u", "verify-full", Some("/ca.pem"))
        );
        let (s, m, _) = split_tls("postgres://u:p@h/db?sslmode=require&application_name=x");
        assert_eq!(
            (s.as_str(), m.as_str()),
            ("postgres://u:p@h/db?application_name=x", "require")
        );
        assert_eq!(split_tls("host=h").1, "prefer");
    }

    #[test]
    fn table_names_and_etags() {
        assert!(valid_table("state") && valid_table("s1.p_state"));
        assert!(!valid_table("x;drop") && !valid_table("a.b.c") && !valid_table("1x"));
        assert!(uuid_etag("00000000-0000-4000-8000-000000000000").is_ok());
        assert!(matches!(uuid_etag("12"), Err(StateError::EtagMismatch(_))));
    }
}
