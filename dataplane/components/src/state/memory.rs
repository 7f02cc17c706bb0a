//! `state.in-memory`: a map in the sidecar's memory, for tests and
//! ephemeral use. ETags are UUIDv4s, TTLs are checked on read and swept
//! once a second, transactions hold the map's lock for the whole batch (it
//! is never held across an await).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use super::query::{self, Query};
use super::{
    Consistency, DeleteRequest, Features, Item, Op, Querier, SetRequest, StateError, StateStore,
    Transactional, Ttl, etag_allows,
};
use crate::{BoxFuture, Properties};

/// How often expired entries are removed.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

struct Entry {
    data: bytes::Bytes,
    etag: String,
    expires: Option<SystemTime>,
}

impl Entry {
    fn live(&self, now: SystemTime) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

#[derive(Default)]
pub struct MemoryStore {
    map: Mutex<HashMap<String, Entry>>,
}

impl MemoryStore {
    /// A new, empty store with its sweeper running (it stops with the store).
    pub fn open(_meta: &Properties) -> Arc<Self> {
        let store = Arc::new(Self::default());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep(Arc::downgrade(&store)));
        }
        store
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock cannot leave an entry half-made:
        // every write is one insert or remove.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn apply(map: &mut HashMap<String, Entry>, op: Op, now: SystemTime) -> Result<(), StateError> {
        let current = map
            .get(op.key())
            .filter(|e| e.live(now))
            .map(|e| e.etag.as_str());
        match op {
            Op::Set(s) => {
                etag_allows(current, s.etag.as_deref(), s.concurrency)?;
                let expires = match s.ttl {
                    Ttl::Seconds(n) => Some(now + Duration::from_secs(n)),
                    Ttl::Unset | Ttl::Clear => None,
                };
                map.insert(
                    s.key,
                    Entry {
                        data: s.value,
                        etag: crate::util::uuid_v4(),
                        expires,
                    },
                );
            }
            Op::Delete(d) => {
                if d.etag.as_deref().is_some_and(|e| !e.is_empty()) {
                    etag_allows(current, d.etag.as_deref(), d.concurrency)?;
                }
                map.remove(&d.key);
            }
        }
        Ok(())
    }
}

async fn sweep(store: Weak<MemoryStore>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        let Some(s) = store.upgrade() else { return };
        let now = SystemTime::now();
        s.lock().retain(|_, e| e.live(now));
    }
}

impl StateStore for MemoryStore {
    fn features(&self) -> Features {
        Features::ETAG
            .union(Features::TRANSACTIONAL)
            .union(Features::TTL)
            .union(Features::QUERY_API)
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        _c: Consistency,
    ) -> BoxFuture<'a, Result<Option<Item>, StateError>> {
        let now = SystemTime::now();
        let found = self.lock().get(key).filter(|e| e.live(now)).map(|e| Item {
            data: e.data.clone(),
            etag: Some(e.etag.clone()),
            expires: e.expires,
        });
        Box::pin(std::future::ready(Ok(found)))
    }

    fn set(&self, req: SetRequest) -> BoxFuture<'_, Result<(), StateError>> {
        let r = Self::apply(&mut self.lock(), Op::Set(req), SystemTime::now());
        Box::pin(std::future::ready(r))
    }

    fn delete(&self, req: DeleteRequest) -> BoxFuture<'_, Result<(), StateError>> {
        let r = Self::apply(&mut self.lock(), Op::Delete(req), SystemTime::now());
        Box::pin(std::future::ready(r))
    }

    fn transactional(&self) -> Option<&dyn Transactional> {
        Some(self)
    }

    fn querier(&self) -> Option<&dyn Querier> {
        Some(self)
    }
}

impl Transactional for MemoryStore {
    /// All or nothing: the batch runs on a copy of the touched entries'
    /// state and is applied only if every operation passed.
    fn multi(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<(), StateError>> {
        let now = SystemTime::now();
        let mut map = self.lock();
        // Check first, on a scratch view of the keys the batch touches.
        let mut view: HashMap<String, Entry> = HashMap::new();
        for op in &ops {
            if let Some(e) = map.get(op.key()) {
                view.entry(op.key().to_owned()).or_insert(Entry {
                    data: e.data.clone(),
                    etag: e.etag.clone(),
                    expires: e.expires,
                });
            }
        }
        for op in ops.iter().cloned() {
            if let Err(e) = Self::apply(&mut view, op, now) {
                return Box::pin(std::future::ready(Err(e)));
            }
        }
        let mut r = Ok(());
        for op in ops {
            r = r.and(Self::apply(&mut map, op, now));
        }
        Box::pin(std::future::ready(r))
    }
}

impl Querier for MemoryStore {
    fn query<'a>(
        &'a self,
        prefix: &'a str,
        q: Query,
    ) -> BoxFuture<'a, Result<query::Answer, StateError>> {
        let now = SystemTime::now();
        let items: BTreeMap<String, Item> = self
            .lock()
            .iter()
            .filter(|(k, e)| k.starts_with(prefix) && e.live(now))
            .map(|(k, e)| {
                (
                    k.clone(),
                    Item {
                        data: e.data.clone(),
                        etag: Some(e.etag.clone()),
                        expires: e.expires,
                    },
                )
            })
            .collect();
        let r = query::evaluate(items.into_iter().collect(), &q).map_err(StateError::Invalid);
        Box::pin(std::future::ready(r))
    }
}
