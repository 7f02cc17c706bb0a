//! Dapr's component type names (`state.redis`, `secretstores.local.file`,
//! ...) and their versions, mapped to the constructor of the driver that
//! serves them. Every type Skiff has a driver for is listed whether or not
//! it was built in, so a missing one can name the Cargo feature that builds
//! it.

use std::sync::Arc;

use crate::Properties;
use crate::bindings::{InputBinding, OutputBinding};
use crate::configuration::ConfigurationStore;
use crate::lock::LockStore;
use crate::pubsub::PubSub;
use crate::secrets::SecretStore;
use crate::state::StateStore;

/// A driver, ready.
#[derive(Clone)]
pub enum Component {
    State(Arc<dyn StateStore>),
    Secrets(Arc<dyn SecretStore>),
    PubSub(Arc<dyn PubSub>),
    Lock(Arc<dyn LockStore>),
    Configuration(Arc<dyn ConfigurationStore>),
    /// A binding: input, output or both.
    Binding {
        input: Option<Arc<dyn InputBinding>>,
        output: Option<Arc<dyn OutputBinding>>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("unknown component type {0} (this skiffd serves: {known})", known = known().join(", "))]
    Unknown(String),
    #[error(
        "{type_name} was not built into this skiffd: build skiff-components with the Cargo feature `{feature}`"
    )]
    NotBuilt {
        type_name: String,
        feature: &'static str,
    },
    #[error("{type_name} has no version {version} (versions: {versions})")]
    Version {
        type_name: String,
        version: String,
        versions: String,
    },
    /// The driver's own error, already worded (no secrets).
    #[error("{0}")]
    Driver(String),
}

struct Entry {
    type_name: &'static str,
    versions: &'static [&'static str],
    feature: &'static str,
    built: bool,
}

const TABLE: &[Entry] = &[
    Entry {
        type_name: "state.in-memory",
        versions: &["v1"],
        feature: "state-memory",
        built: cfg!(feature = "state-memory"),
    },
    Entry {
        type_name: "state.sqlite",
        versions: &["v1"],
        feature: "state-sqlite",
        built: cfg!(feature = "state-sqlite"),
    },
    Entry {
        type_name: "state.redis",
        versions: &["v1"],
        feature: "state-redis",
        built: cfg!(feature = "state-redis"),
    },
    Entry {
        type_name: "state.postgresql",
        versions: &["v2"],
        feature: "state-postgresql",
        built: cfg!(feature = "state-postgresql"),
    },
    Entry {
        type_name: "secretstores.local.file",
        versions: &["v1"],
        feature: "secretstores-local",
        built: cfg!(feature = "secretstores-local"),
    },
    Entry {
        type_name: "secretstores.local.env",
        versions: &["v1"],
        feature: "secretstores-local",
        built: cfg!(feature = "secretstores-local"),
    },
    Entry {
        type_name: "pubsub.in-memory",
        versions: &["v1"],
        feature: "pubsub-memory",
        built: cfg!(feature = "pubsub-memory"),
    },
    Entry {
        type_name: "pubsub.skiff.sqlite",
        versions: &["v1"],
        feature: "pubsub-sqlite",
        built: cfg!(feature = "pubsub-sqlite"),
    },
    Entry {
        type_name: "pubsub.redis",
        versions: &["v1"],
        feature: "pubsub-redis",
        built: cfg!(feature = "pubsub-redis"),
    },
    Entry {
        type_name: "pubsub.jetstream",
        versions: &["v1"],
        feature: "pubsub-jetstream",
        built: cfg!(feature = "pubsub-jetstream"),
    },
    Entry {
        type_name: "lock.in-memory",
        versions: &["v1"],
        feature: "lock-memory",
        built: cfg!(feature = "lock-memory"),
    },
    Entry {
        type_name: "lock.redis",
        versions: &["v1"],
        feature: "lock-redis",
        built: cfg!(feature = "lock-redis"),
    },
    Entry {
        type_name: "configuration.redis",
        versions: &["v1"],
        feature: "configuration-redis",
        built: cfg!(feature = "configuration-redis"),
    },
    Entry {
        type_name: "configuration.postgresql",
        versions: &["v1"],
        feature: "configuration-postgresql",
        built: cfg!(feature = "configuration-postgresql"),
    },
    Entry {
        type_name: "bindings.cron",
        versions: &["v1"],
        feature: "bindings-cron",
        built: cfg!(feature = "bindings-cron"),
    },
    Entry {
        type_name: "bindings.localstorage",
        versions: &["v1"],
        feature: "bindings-localstorage",
        built: cfg!(feature = "bindings-localstorage"),
    },
    Entry {
        type_name: "bindings.redis",
        versions: &["v1"],
        feature: "bindings-redis",
        built: cfg!(feature = "bindings-redis"),
    },
    Entry {
        type_name: "bindings.postgresql",
        versions: &["v1"],
        feature: "bindings-postgresql",
        built: cfg!(feature = "bindings-postgresql"),
    },
    Entry {
        type_name: "bindings.mqtt3",
        versions: &["v1"],
        feature: "bindings-mqtt3",
        built: cfg!(feature = "bindings-mqtt3"),
    },
    Entry {
        type_name: "bindings.http",
        versions: &["v1"],
        feature: "bindings-http",
        built: cfg!(feature = "bindings-http"),
    },
];

/// The types this build serves.
pub fn known() -> Vec<&'static str> {
    TABLE
        .iter()
        .filter(|e| e.built)
        .map(|e| e.type_name)
        .collect()
}

/// The block a component type belongs to: the part before the first dot
/// (`state`, `secretstores`, `pubsub`, ...).
pub fn block_of(type_name: &str) -> &str {
    type_name.split('.').next().unwrap_or_default()
}

/// Checks type and version; an empty version means `v1`.
fn entry(type_name: &str, version: &str) -> Result<&'static Entry, OpenError> {
    let e = TABLE
        .iter()
        .find(|e| e.type_name == type_name)
        .ok_or_else(|| OpenError::Unknown(type_name.to_owned()))?;
    let version = if version.is_empty() { "v1" } else { version };
    if !e.versions.contains(&version) {
        return Err(OpenError::Version {
            type_name: type_name.to_owned(),
            version: version.to_owned(),
            versions: e.versions.join(", "),
        });
    }
    if !e.built {
        return Err(OpenError::NotBuilt {
            type_name: type_name.to_owned(),
            feature: e.feature,
        });
    }
    Ok(e)
}

/// Creates the driver for `type_name` from its metadata, ready to serve.
pub async fn open(
    type_name: &str,
    version: &str,
    meta: &Properties,
) -> Result<Component, OpenError> {
    let e = entry(type_name, version)?;
    let driver = |e: &dyn std::fmt::Display| OpenError::Driver(e.to_string());
    let _ = (meta, driver);
    match e.type_name {
        #[cfg(feature = "state-memory")]
        "state.in-memory" => Ok(Component::State(crate::state::memory::MemoryStore::open(
            meta,
        ))),
        #[cfg(feature = "state-sqlite")]
        "state.sqlite" => {
            // Opening runs SQLite (file I/O, schema): off the async runtime.
            let meta = meta.clone();
            let store =
                tokio::task::spawn_blocking(move || crate::state::sqlite::SqliteStore::open(&meta))
                    .await
                    .map_err(|e| driver(&e))?
                    .map_err(|e| driver(&e))?;
            Ok(Component::State(store))
        }
        #[cfg(feature = "state-redis")]
        "state.redis" => Ok(Component::State(
            crate::state::redis::RedisStore::open(meta)
                .await
                .map_err(|e| driver(&e))?,
        )),
        #[cfg(feature = "state-postgresql")]
        "state.postgresql" => Ok(Component::State(
            crate::state::postgres::PostgresStore::open(meta)
                .await
                .map_err(|e| driver(&e))?,
        )),
        #[cfg(feature = "secretstores-local")]
        "secretstores.local.file" => Ok(Component::Secrets(
            crate::secrets::local::FileStore::open(meta).map_err(|e| driver(&e))?,
        )),
        #[cfg(feature = "secretstores-local")]
        "secretstores.local.env" => Ok(Component::Secrets(crate::secrets::local::EnvStore::open(
            meta,
        ))),
        #[cfg(feature = "pubsub-memory")]
        "pubsub.in-memory" => Ok(Component::PubSub(
            crate::pubsub::memory::MemoryPubSub::open(meta),
        )),
        #[cfg(feature = "pubsub-sqlite")]
        "pubsub.skiff.sqlite" => {
            let meta = meta.clone();
            let ps = tokio::task::spawn_blocking(move || {
                crate::pubsub::sqlite::SqlitePubSub::open(&meta)
            })
            .await
            .map_err(|e| driver(&e))?
            .map_err(|e| driver(&e))?;
            Ok(Component::PubSub(ps))
        }
        #[cfg(feature = "pubsub-redis")]
        "pubsub.redis" => Ok(Component::PubSub(
            crate::pubsub::redis::RedisPubSub::open(meta)
                .await
                .map_err(|e| driver(&e))?,
        )),
        #[cfg(feature = "pubsub-jetstream")]
        "pubsub.jetstream" => Ok(Component::PubSub(
            crate::pubsub::jetstream::JetStreamPubSub::open(meta)
                .await
                .map_err(|e| driver(&e))?,
        )),
        #[cfg(feature = "lock-memory")]
        "lock.in-memory" => Ok(Component::Lock(crate::lock::memory::MemoryLock::open(meta))),
        #[cfg(feature = "lock-redis")]
        "lock.redis" => Ok(Component::Lock(
            crate::lock::redis::RedisLock::open(meta)
                .await
                .map_err(|e| driver(&e))?,
        )),
        #[cfg(feature = "configuration-redis")]
        "configuration.redis" => Ok(Component::Configuration(
            crate::configuration::redis::RedisConfiguration::open(meta)
                .await
                .map_err(|e| driver(&e))?,
        )),
        #[cfg(feature = "configuration-postgresql")]
        "configuration.postgresql" => Ok(Component::Configuration(
            crate::configuration::postgres::PostgresConfiguration::open(meta)
                .await
                .map_err(|e| driver(&e))?,
        )),
        #[cfg(feature = "bindings-cron")]
        "bindings.cron" => Ok(Component::Binding {
            input: Some(crate::bindings::cron::CronBinding::open(meta).map_err(|e| driver(&e))?),
            output: None,
        }),
        #[cfg(feature = "bindings-localstorage")]
        "bindings.localstorage" => Ok(Component::Binding {
            input: None,
            output: Some(
                crate::bindings::localstorage::LocalStorage::open(meta).map_err(|e| driver(&e))?,
            ),
        }),
        #[cfg(feature = "bindings-redis")]
        "bindings.redis" => Ok(Component::Binding {
            input: None,
            output: Some(
                crate::bindings::redis::RedisBinding::open(meta)
                    .await
                    .map_err(|e| driver(&e))?,
            ),
        }),
        #[cfg(feature = "bindings-postgresql")]
        "bindings.postgresql" => Ok(Component::Binding {
            input: None,
            output: Some(
                crate::bindings::postgres::PostgresBinding::open(meta).map_err(|e| driver(&e))?,
            ),
        }),
        #[cfg(feature = "bindings-mqtt3")]
        "bindings.mqtt3" => {
            let b = crate::bindings::mqtt::MqttBinding::open(meta).map_err(|e| driver(&e))?;
            Ok(Component::Binding {
                input: Some(b.clone()),
                output: Some(b),
            })
        }
        #[cfg(feature = "bindings-http")]
        "bindings.http" => Ok(Component::Binding {
            input: None,
            output: Some(crate::bindings::http::HttpBinding::open(meta).map_err(|e| driver(&e))?),
        }),
        other => Err(OpenError::Unknown(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_and_versions() {
        assert!(entry("state.sqlite", "").is_ok());
        assert!(entry("state.sqlite", "v1").is_ok());
        let e = entry("state.sqlite", "v9")
            .err()
            .expect("no v9")
            .to_string();
        assert!(e.contains("versions: v1"), "{e}");
        let e = entry("state.cassandra", "v1")
            .err()
            .expect("unknown")
            .to_string();
        assert!(e.contains("state.redis"), "{e}");
        assert_eq!(block_of("secretstores.local.file"), "secretstores");
    }

    #[tokio::test]
    async fn in_memory_opens_ready() {
        let c = open("state.in-memory", "v1", &Properties::new())
            .await
            .expect("opens");
        assert!(matches!(c, Component::State(_)));
    }
}
