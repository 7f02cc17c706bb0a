//! `configuration.postgresql` (Dapr's type): items are rows of `table`
//! (`key`, `value`, `version`, `metadata` as JSON). A read selects the
//! keys asked for (every row without keys). A subscription needs the
//! request metadata `pgNotifyChannel`: the driver `LISTEN`s on it on a
//! connection of its own, and each notification — the JSON a trigger
//! sends, `{"data": {"key", "value", "version", "metadata"}, ...}`, as in
//! Dapr's docs — becomes a change of that key (keys not subscribed to are
//! skipped). The connection string takes `sslmode` / `sslrootcert` as
//! `state.postgresql`'s does.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{Mutex, mpsc};

use super::{ConfigError, ConfigurationStore, Item, Items, Metadata, WATCH_BUFFER};
use crate::pgconn::PgTarget;
use crate::{BoxFuture, MetadataError, Properties};

pub struct PostgresConfiguration {
    target: PgTarget,
    table: String,
    client: Mutex<Option<tokio_postgres::Client>>,
}

fn valid_ident(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

fn backend(e: &tokio_postgres::Error) -> ConfigError {
    ConfigError::Backend(format!("postgresql: {e}"))
}

impl PostgresConfiguration {
    pub async fn open(meta: &Properties) -> Result<Arc<Self>, MetadataError> {
        let target = PgTarget::parse(meta.required("connectionString")?)?;
        let table = meta.required("table")?.to_owned();
        if !valid_ident(&table) {
            return Err(MetadataError {
                field: "table".into(),
                why: "must be letters, digits and underscores, with an optional schema.".into(),
            });
        }
        let me = Arc::new(Self {
            target,
            table,
            client: Mutex::new(None),
        });
        // Fails the start when the database is not there.
        drop(me.client().await.map_err(|e| MetadataError {
            field: "connectionString".into(),
            why: e.to_string(),
        })?);
        Ok(me)
    }

    async fn client(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<tokio_postgres::Client>>, ConfigError> {
        let mut g = self.client.lock().await;
        if g.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            *g = Some(self.target.connect(None).await.map_err(|e| backend(&e))?);
        }
        Ok(g)
    }

    async fn read(&self, keys: &[String]) -> Result<Items, ConfigError> {
        let g = self.client().await?;
        let Some(c) = g.as_ref() else {
            return Err(ConfigError::Backend("postgresql: not connected".into()));
        };
        let sql = format!(
            "SELECT key, value, version, metadata::text FROM {} {}",
            self.table,
            if keys.is_empty() {
                ""
            } else {
                "WHERE key = ANY($1)"
            }
        );
        let rows = if keys.is_empty() {
            c.query(&sql, &[]).await
        } else {
            c.query(&sql, &[&keys]).await
        }
        .map_err(|e| backend(&e))?;
        let mut out = Items::new();
        for r in rows {
            let key: String = r.try_get(0).unwrap_or_default();
            let metadata: Option<String> = r.try_get(3).unwrap_or_default();
            out.insert(
                key,
                Item {
                    value: r
                        .try_get::<_, Option<String>>(1)
                        .ok()
                        .flatten()
                        .unwrap_or_default(),
                    version: r
                        .try_get::<_, Option<String>>(2)
                        .ok()
                        .flatten()
                        .unwrap_or_default(),
                    metadata: metadata
                        .and_then(|m| serde_json::from_str(&m).ok())
                        .unwrap_or_default(),
                },
            );
        }
        Ok(out)
    }
}

/// The item of a notification's `data`.
pub fn notification(payload: &str) -> Option<(String, Item)> {
    let v: Value = serde_json::from_str(payload).ok()?;
    let d = v.get("data")?;
    let s = |k: &str| match d.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    let metadata = d
        .get("metadata")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Some((
        s("key"),
        Item {
            value: s("value"),
            version: s("version"),
            metadata,
        },
    ))
}

impl ConfigurationStore for PostgresConfiguration {
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
        metadata: &'a Metadata,
    ) -> BoxFuture<'a, Result<mpsc::Receiver<Items>, ConfigError>> {
        Box::pin(async move {
            let channel = metadata
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("pgNotifyChannel"))
                .map(|(_, v)| v.clone())
                .filter(|c| valid_ident(c))
                .ok_or_else(|| {
                    ConfigError::Backend(
                        "configuration.postgresql needs the subscription metadata pgNotifyChannel (the channel its trigger notifies)".into(),
                    )
                })?;
            let (ntx, mut nrx) = mpsc::unbounded_channel();
            let client = self
                .target
                .connect(Some(ntx))
                .await
                .map_err(|e| backend(&e))?;
            client
                .batch_execute(&format!("LISTEN {channel}"))
                .await
                .map_err(|e| backend(&e))?;
            let (tx, rx) = mpsc::channel(WATCH_BUFFER);
            let keys = keys.to_vec();
            tokio::spawn(async move {
                // The client lives as long as the subscription.
                let _client = client;
                loop {
                    let payload = tokio::select! {
                        p = nrx.recv() => match p { Some(p) => p, None => return },
                        () = tx.closed() => return,
                    };
                    let Some((key, item)) = notification(&payload) else {
                        tracing::warn!(
                            "configuration.postgresql: a notification without data.key was skipped"
                        );
                        continue;
                    };
                    if !keys.is_empty() && !keys.contains(&key) {
                        continue;
                    }
                    let mut items = Items::new();
                    items.insert(key, item);
                    if tx.send(items).await.is_err() {
                        return;
                    }
                }
            });
            Ok(rx)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_as_dapr_docs_write_them() {
        let p = r#"{"table":"cfg","action":"UPDATE","data":{"key":"k","value":"v","version":"2","metadata":{"a":"b"}}}"#;
        let (k, i) = notification(p).expect("parses");
        assert_eq!(
            (k.as_str(), i.value.as_str(), i.version.as_str()),
            ("k", "v", "2")
        );
        assert_eq!(i.metadata.get("a").map(String::as_str), Some("b"));
        assert!(notification("not json").is_none());
    }
}
