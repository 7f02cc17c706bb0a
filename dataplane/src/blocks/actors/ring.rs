//! The placement ring: which host of an actor type owns an actor id.
//!
//! Every sidecar computes the same answer from the same host list, the way
//! daprd does since 1.13 (placement sends hosts, not virtual nodes): each
//! host sits on the ring at `replication` points, point `i` of host `H` at
//! `hash(H + decimal(i))`, and an actor id belongs to the first point at
//! or after `hash(id)`, wrapping around. `hash` is the first 8 bytes of
//! BLAKE2b-512 read as a little-endian `u64`. Any difference here from
//! daprd's `pkg/placement/hashing` would send a call to the wrong host
//! when Skiff and daprd sidecars share a placement, so the function, the
//! point names and the search are daprd's exactly.
//!
//! A ring is built once per placement table version and then only read:
//! a lookup is one hash and one binary search, no lock, no allocation.

use std::collections::HashMap;
use std::sync::Arc;

use blake2::{Blake2b512, Digest};
use skiff_proto::placement::PlacementTables;

/// Points per host unless placement says otherwise (daprd's
/// `--replicationFactor` default).
pub const DEFAULT_REPLICATION: usize = 100;

/// A host of an actor type: the address its sidecar serves actor calls
/// on (`host:port`, the name placement knows it by) and its app id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub app_id: String,
}

/// One actor type's ring.
#[derive(Clone, Debug, Default)]
pub struct Ring {
    /// `(point, index into hosts)`, sorted by point, one entry per point.
    points: Vec<(u64, u32)>,
    /// Shared, so a lookup hands out its owner without copying it.
    hosts: Vec<Arc<Host>>,
    /// Each host's points, kept so the next table's rings reuse them.
    vnodes: Vec<Arc<[u64]>>,
}

/// A host's points, by name (those of the rings in force: a round that
/// adds one host hashes only its points, as daprd's cache does).
type Known<'a> = HashMap<&'a str, &'a Arc<[u64]>>;

impl Ring {
    /// The ring of `hosts` with `replication` points each. A host named
    /// twice counts once (its first entry), as daprd's `Add` does.
    pub fn new(hosts: impl IntoIterator<Item = Host>, replication: usize) -> Self {
        Self::reusing(hosts, replication, &Known::new())
    }

    fn reusing(
        hosts: impl IntoIterator<Item = Host>,
        replication: usize,
        known: &Known<'_>,
    ) -> Self {
        let mut unique: Vec<Arc<Host>> = Vec::new();
        for h in hosts {
            if !unique.iter().any(|u| u.name == h.name) {
                unique.push(Arc::new(h));
            }
        }
        let vnodes: Vec<Arc<[u64]>> = unique
            .iter()
            .map(|h| match known.get(h.name.as_str()) {
                Some(v) if v.len() == replication => Arc::clone(v),
                _ => host_points(&h.name, replication),
            })
            .collect();
        let mut points = Vec::with_capacity(unique.len() * replication);
        for (i, v) in vnodes.iter().enumerate() {
            let idx = u32::try_from(i).unwrap_or(u32::MAX);
            points.extend(v.iter().map(|p| (*p, idx)));
        }
        // Stable, so equal points keep the order they were added in; the
        // last one added owns a shared point, as in daprd's map (a 64-bit
        // collision between two hosts' points is not expected to happen).
        points.sort_by_key(|p| p.0);
        let mut owned: Vec<(u64, u32)> = Vec::with_capacity(points.len());
        for p in points {
            match owned.last_mut() {
                Some(last) if last.0 == p.0 => *last = p,
                _ => owned.push(p),
            }
        }
        Self {
            points: owned,
            hosts: unique,
            vnodes,
        }
    }

    /// The host that owns actor `id`, or `None` when the type has no host.
    pub fn owner(&self, id: &str) -> Option<&Arc<Host>> {
        if self.points.is_empty() {
            return None;
        }
        let h = hash(id);
        let at = self.points.partition_point(|p| p.0 < h);
        let (_, host) = self.points[if at == self.points.len() { 0 } else { at }];
        self.hosts.get(host as usize)
    }

    pub fn hosts(&self) -> &[Arc<Host>] {
        &self.hosts
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

/// The rings of one placement table version, one per actor type.
#[derive(Clone, Debug, Default)]
pub struct Rings {
    pub version: u64,
    by_type: HashMap<String, Ring>,
}

impl Rings {
    /// The rings of `tables` (an UPDATE's), at `version`. Each type's hosts
    /// are its `load_map`, named by their keys as daprd names them.
    pub fn from_tables(tables: &PlacementTables, version: u64) -> Self {
        Self::after(&Rings::default(), tables, version)
    }

    /// The same, reusing the points of hosts `self` already has.
    pub fn after(&self, tables: &PlacementTables, version: u64) -> Self {
        let mut known = Known::new();
        for r in self.by_type.values() {
            for (h, v) in r.hosts.iter().zip(&r.vnodes) {
                known.insert(h.name.as_str(), v);
            }
        }
        let replication = usize::try_from(tables.replication_factor)
            .ok()
            .filter(|&r| r > 0)
            .unwrap_or(DEFAULT_REPLICATION);
        let by_type = tables
            .entries
            .iter()
            .map(|(ty, table)| {
                let hosts = table.load_map.iter().map(|(name, h)| Host {
                    name: name.clone(),
                    app_id: h.id.clone(),
                });
                (ty.clone(), Ring::reusing(hosts, replication, &known))
            })
            .collect();
        Self { version, by_type }
    }

    /// The host that owns actor `id` of `actor_type`.
    pub fn owner(&self, actor_type: &str, id: &str) -> Option<&Arc<Host>> {
        self.by_type.get(actor_type)?.owner(id)
    }

    /// The types whose owners may differ between `self` and `next`: only
    /// their calls wait during a round, the others go on.
    pub fn changed_types(&self, next: &Rings) -> Vec<String> {
        let same = |a: &Ring, b: &Ring| {
            let mut x: Vec<&str> = a.hosts.iter().map(|h| h.name.as_str()).collect();
            let mut y: Vec<&str> = b.hosts.iter().map(|h| h.name.as_str()).collect();
            x.sort_unstable();
            y.sort_unstable();
            x == y && a.points.len() == b.points.len()
        };
        let mut changed: Vec<String> = self
            .by_type
            .iter()
            .filter(|(t, r)| next.by_type.get(*t).is_none_or(|n| !same(r, n)))
            .map(|(t, _)| t.clone())
            .chain(
                next.by_type
                    .keys()
                    .filter(|t| !self.by_type.contains_key(*t))
                    .cloned(),
            )
            .collect();
        changed.sort_unstable();
        changed
    }
}

/// Point `i` of host `name` is at `hash(name + i)`.
fn host_points(name: &str, replication: usize) -> Arc<[u64]> {
    let mut key = String::with_capacity(name.len() + 4);
    (0..replication)
        .map(|v| {
            key.clear();
            key.push_str(name);
            key.push_str(itoa::Buffer::new().format(v));
            hash(&key)
        })
        .collect()
}

/// daprd's ring hash: BLAKE2b-512's first 8 bytes, little-endian.
pub fn hash(s: &str) -> u64 {
    let d = Blake2b512::digest(s.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_le_bytes(first)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn host(name: &str) -> Host {
        Host {
            name: name.into(),
            app_id: format!("app-{name}"),
        }
    }

    #[test]
    fn the_hash_is_blake2b_512_read_little_endian() {
        // RFC 7693's BLAKE2b-512 digests of "" and "abc", first 8 bytes
        // (786a02f742015903…, ba80a53f981c4d0d…) read little-endian.
        assert_eq!(hash(""), 0x0359_0142_f702_6a78);
        assert_eq!(hash("abc"), 0x0d4d_1c98_3fa5_80ba);
    }

    #[test]
    fn an_empty_ring_owns_nothing() {
        assert!(Ring::new([], DEFAULT_REPLICATION).owner("a").is_none());
    }

    #[test]
    fn the_owner_is_the_first_point_at_or_after_the_key_wrapping_around() {
        let r = Ring::new([host("10.0.0.1:50002"), host("10.0.0.2:50002")], 3);
        // Brute force over the same points: the smallest point >= the key,
        // else the smallest point of all.
        let mut pts: Vec<(u64, &str)> = Vec::new();
        for h in ["10.0.0.1:50002", "10.0.0.2:50002"] {
            for i in 0..3 {
                pts.push((hash(&format!("{h}{i}")), h));
            }
        }
        pts.sort();
        for id in (0..500).map(|i| format!("actor-{i}")) {
            let k = hash(&id);
            let want = pts.iter().find(|p| p.0 >= k).unwrap_or(&pts[0]).1;
            assert_eq!(r.owner(&id).map(|h| h.name.as_str()), Some(want), "{id}");
        }
    }

    #[test]
    fn a_host_named_twice_counts_once() {
        let r = Ring::new([host("a:1"), host("a:1"), host("b:1")], 10);
        assert_eq!(r.hosts().len(), 2);
        assert_eq!(r.points.len(), 20);
    }

    #[test]
    fn losing_a_host_moves_only_its_actors() {
        let all = ["h1:1", "h2:1", "h3:1", "h4:1"];
        let before = Ring::new(all.map(host), DEFAULT_REPLICATION);
        let after = Ring::new(all[..3].iter().map(|h| host(h)), DEFAULT_REPLICATION);
        let mut moved = 0;
        for id in (0..4000).map(|i| format!("{i}")) {
            let (b, a) = (before.owner(&id).expect("b"), after.owner(&id).expect("a"));
            if b.name != "h4:1" {
                assert_eq!(a, b, "{id} moved though its host stayed");
            } else {
                moved += 1;
            }
        }
        // With 100 points per host each owns about a quarter.
        assert!((600..1400).contains(&moved), "{moved} of 4000 on h4");
    }

    /// Placement tables naming `hosts` for each type (ids `app-<host>`).
    pub(crate) fn tables(types: &[(&str, &[&str])], replication: i64) -> PlacementTables {
        use skiff_proto::placement::{Host as PHost, PlacementTable};
        PlacementTables {
            entries: types
                .iter()
                .map(|(t, hosts)| {
                    let load_map = hosts
                        .iter()
                        .map(|h| {
                            let host = PHost {
                                name: (*h).into(),
                                id: format!("app-{h}"),
                                entities: vec![(*t).into()],
                                ..Default::default()
                            };
                            ((*h).to_owned(), host)
                        })
                        .collect();
                    let table = PlacementTable {
                        load_map,
                        ..Default::default()
                    };
                    ((*t).to_owned(), table)
                })
                .collect(),
            replication_factor: replication,
            ..Default::default()
        }
    }

    #[test]
    fn tables_become_one_ring_per_type() {
        let t = tables(&[("Cart", &["a:1", "b:1"]), ("User", &["b:1"])], 0);
        let rings = Rings::from_tables(&t, 7);
        assert_eq!(rings.version, 7);
        let direct = Ring::new([host("a:1"), host("b:1")], DEFAULT_REPLICATION);
        for id in (0..200).map(|i| format!("{i}")) {
            assert_eq!(
                rings.owner("Cart", &id).map(|h| &h.name),
                direct.owner(&id).map(|h| &h.name)
            );
            assert_eq!(
                rings.owner("User", &id).map(|h| h.name.as_str()),
                Some("b:1")
            );
        }
        assert!(rings.owner("Nobody", "1").is_none());
        assert_eq!(
            rings.owner("User", "1").map(|h| h.app_id.as_str()),
            Some("app-b:1")
        );
    }

    #[test]
    fn rings_after_a_table_reuse_its_hosts_points_and_agree_with_fresh_ones() {
        let first = Rings::from_tables(&tables(&[("Cart", &["a:1", "b:1"])], 100), 1);
        let t = tables(&[("Cart", &["a:1", "b:1", "c:1"]), ("User", &["a:1"])], 100);
        let reused = first.after(&t, 2);
        let fresh = Rings::from_tables(&t, 2);
        for id in (0..500).map(|i| i.to_string()) {
            assert_eq!(reused.owner("Cart", &id), fresh.owner("Cart", &id));
            assert_eq!(reused.owner("User", &id), fresh.owner("User", &id));
        }
        // Host a:1's points, found by name (a table's hosts come in a map's
        // order, not the order they were written).
        let a = |r: &Rings, ty: &str| {
            let ring = &r.by_type[ty];
            let at = ring
                .hosts
                .iter()
                .position(|h| h.name == "a:1")
                .expect("a:1");
            ring.vnodes[at].clone()
        };
        assert!(Arc::ptr_eq(&a(&first, "Cart"), &a(&reused, "Cart")));
        // Another replication factor hashes afresh.
        let denser = first.after(&tables(&[("Cart", &["a:1"])], 200), 3);
        assert_eq!(denser.by_type["Cart"].points.len(), 200);
    }

    #[test]
    fn only_types_whose_hosts_changed_are_changed() {
        let before = Rings::from_tables(
            &tables(
                &[
                    ("Cart", &["a:1", "b:1"]),
                    ("User", &["b:1"]),
                    ("Old", &["a:1"]),
                ],
                100,
            ),
            1,
        );
        let after = Rings::from_tables(
            &tables(
                &[
                    ("Cart", &["b:1", "a:1"]),
                    ("User", &["b:1", "c:1"]),
                    ("New", &["c:1"]),
                ],
                100,
            ),
            2,
        );
        assert_eq!(before.changed_types(&after), ["New", "Old", "User"]);
        assert!(after.changed_types(&after).is_empty());
        // Another replication factor moves every type's actors.
        let denser = Rings::from_tables(&tables(&[("Cart", &["a:1", "b:1"])], 200), 3);
        assert!(before.changed_types(&denser).contains(&"Cart".to_owned()));
    }

    #[test]
    fn order_of_hosts_does_not_change_owners() {
        let a = Ring::new(["x:1", "y:1", "z:1"].map(host), DEFAULT_REPLICATION);
        let b = Ring::new(["z:1", "x:1", "y:1"].map(host), DEFAULT_REPLICATION);
        for id in (0..1000).map(|i| format!("id{i}")) {
            assert_eq!(a.owner(&id), b.owner(&id));
        }
    }
}
