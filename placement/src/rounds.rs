//! The dissemination rounds of one namespace, with no I/O of its own.
//!
//! Events come in — a sidecar's report or ack ([`Namespace::on_host`]), a
//! stream gone ([`Namespace::on_gone`]), the clock ([`Namespace::on_tick`])
//! — and what to send or drop comes out ([`Out`]). The I/O layer (one task
//! per stream, a timer) feeds it and carries out what it says.
//!
//! A round, as daprd 1.17+ expects it: `lock` to every stream of the
//! namespace; once all have acked LOCK of that version, `update` with the
//! tables; once all have acked UPDATE, `unlock`; once all have acked
//! UNLOCK, the round is done. What starts a round is a change to the
//! hosts that carry actor types (a host with types joining, leaving, or
//! reporting other types, app id or address); changes during a round are
//! gathered into the next one. A stream with no types (a sidecar that only
//! calls actors) joins without a round: it is sent a round of its own of
//! the current table, and the rounds after it like everyone else.
//!
//! Unlike daprd before 1.17.3 (dapr#9639, #10370), a silent sidecar cannot
//! hold a namespace: a stage not acked within the disseminate timeout
//! drops the streams that did not ack, and a round starts again without
//! them. A host that leaves during a round starts the round again at once,
//! so no table that names a gone host is ever unlocked.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use skiff_proto::placement::{
    Host, HostOperation, PlacementOrder, PlacementTable, PlacementTables,
};

/// How the I/O layer names a sidecar's stream.
pub type StreamId = u64;

/// How long a stage may wait for its acks (daprd placement's
/// `--disseminate-timeout`).
pub const DEFAULT_DISSEMINATE_TIMEOUT: Duration = Duration::from_secs(8);
/// Points per host on each ring (`--replicationFactor`).
pub const DEFAULT_REPLICATION_FACTOR: i64 = 100;

/// What the I/O layer is to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Out {
    Send(StreamId, PlacementOrder),
    /// Close the stream: it stayed silent past the timeout.
    Drop(StreamId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Lock,
    Update,
    Unlock,
}

impl Stage {
    fn operation(self) -> &'static str {
        match self {
            Self::Lock => "lock",
            Self::Update => "update",
            Self::Unlock => "unlock",
        }
    }

    fn ack(self) -> HostOperation {
        match self {
            Self::Lock => HostOperation::Lock,
            Self::Update => HostOperation::Update,
            Self::Unlock => HostOperation::Unlock,
        }
    }
}

/// What a sidecar reported that the table holds.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Member {
    name: String,
    app_id: String,
    port: i64,
    /// Sorted, without duplicates: a report in another order is no change.
    types: Vec<String>,
}

impl Member {
    fn of(h: &Host) -> Self {
        let mut types = h.entities.clone();
        types.sort_unstable();
        types.dedup();
        types.retain(|t| !t.is_empty());
        Self {
            name: h.name.clone(),
            app_id: h.id.clone(),
            port: h.port,
            types,
        }
    }
}

struct Round {
    version: u64,
    stage: Stage,
    /// Streams this stage still waits for.
    waiting: BTreeSet<StreamId>,
    /// Streams the round was started with (its lock went to them).
    with: BTreeSet<StreamId>,
    /// The table it disseminates.
    tables: PlacementTables,
    since: Instant,
}

/// The placement of one namespace.
pub struct Namespace {
    name: String,
    timeout: Duration,
    replication: i64,
    /// Every stream of the namespace, with what it last reported.
    streams: BTreeMap<StreamId, Member>,
    /// The hosts with types the current (or last) round was started with.
    in_table: BTreeMap<StreamId, Member>,
    version: u64,
    round: Option<Round>,
    /// The last table a round finished with, for late joiners.
    current: PlacementTables,
    /// Hosts changed during the round: another one follows it.
    changed: bool,
    /// Streams with no types that joined during a round: sent the table
    /// of its own when it ends.
    late: BTreeSet<StreamId>,
}

impl Namespace {
    pub fn new(name: &str, timeout: Duration, replication: i64) -> Self {
        Self {
            name: name.to_owned(),
            timeout,
            replication,
            streams: BTreeMap::new(),
            in_table: BTreeMap::new(),
            version: 0,
            round: None,
            current: PlacementTables {
                replication_factor: replication,
                ..Default::default()
            },
            changed: false,
            late: BTreeSet::new(),
        }
    }

    /// The version of the last round started.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The stage in progress, if a round is.
    pub fn stage(&self) -> Option<Stage> {
        self.round.as_ref().map(|r| r.stage)
    }

    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// A message from a stream: a report (`REPORT`, or `UNKNOWN` from
    /// sidecars before 1.17) or the ack of a stage.
    pub fn on_host(&mut self, stream: StreamId, host: &Host, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        match host.operation() {
            HostOperation::Lock | HostOperation::Update | HostOperation::Unlock => {
                self.ack(
                    stream,
                    host.operation(),
                    host.version.unwrap_or(0),
                    now,
                    &mut out,
                );
            }
            HostOperation::Report | HostOperation::Unknown => {
                let member = Member::of(host);
                let before = self.streams.insert(stream, member.clone());
                let had_types = before.as_ref().is_some_and(|m| !m.types.is_empty());
                if before.as_ref() == Some(&member) {
                    return out;
                }
                if member.types.is_empty() && !had_types {
                    // A caller only: the table without a round.
                    if self.round.is_some() {
                        self.late.insert(stream);
                    }
                    self.private_round(stream, &mut out);
                } else {
                    self.hosts_changed(now, &mut out);
                }
            }
        }
        out
    }

    /// A stream ended (closed by its sidecar, or dropped).
    pub fn on_gone(&mut self, stream: StreamId, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        self.late.remove(&stream);
        let Some(m) = self.streams.remove(&stream) else {
            return out;
        };
        if !m.types.is_empty() || self.in_table.contains_key(&stream) {
            // A host of the table is gone: a table that names it must not
            // be unlocked, so the round starts again now.
            self.changed = true;
            self.round = None;
            self.start_round(now, &mut out);
        } else if let Some(r) = self.round.as_mut().filter(|r| r.with.contains(&stream)) {
            r.waiting.remove(&stream);
            r.with.remove(&stream);
            self.advance_if_acked(now, &mut out);
        }
        out
    }

    /// The clock: a stage waiting past the timeout drops the silent
    /// streams and starts the round again without them.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        let Some(r) = &self.round else {
            return out;
        };
        if now.duration_since(r.since) < self.timeout {
            return out;
        }
        let silent: Vec<StreamId> = r.waiting.iter().copied().collect();
        self.round = None;
        for s in silent {
            out.push(Out::Drop(s));
            self.streams.remove(&s);
            self.late.remove(&s);
        }
        self.changed = true;
        self.start_round(now, &mut out);
        out
    }

    fn hosts_changed(&mut self, now: Instant, out: &mut Vec<Out>) {
        self.changed = true;
        if self.round.is_none() {
            self.start_round(now, out);
        }
    }

    fn table_members(&self) -> BTreeMap<StreamId, Member> {
        self.streams
            .iter()
            .filter(|(_, m)| !m.types.is_empty())
            .map(|(s, m)| (*s, m.clone()))
            .collect()
    }

    fn start_round(&mut self, now: Instant, out: &mut Vec<Out>) {
        if !self.changed {
            return;
        }
        self.changed = false;
        if self.streams.is_empty() {
            self.in_table.clear();
            self.current = self.tables_of(&BTreeMap::new());
            return;
        }
        self.in_table = self.table_members();
        self.version += 1;
        let with: BTreeSet<StreamId> = self.streams.keys().copied().collect();
        let tables = self.tables_of(&self.in_table);
        for s in &with {
            out.push(Out::Send(*s, order(Stage::Lock, self.version, None)));
        }
        self.round = Some(Round {
            version: self.version,
            stage: Stage::Lock,
            waiting: with.clone(),
            with,
            tables,
            since: now,
        });
    }

    fn ack(
        &mut self,
        stream: StreamId,
        op: HostOperation,
        version: u64,
        now: Instant,
        out: &mut Vec<Out>,
    ) {
        let Some(r) = self.round.as_mut() else {
            return;
        };
        // An ack of another round or stage (late, or from a private round)
        // says nothing about this one.
        if r.version != version || r.stage.ack() != op {
            return;
        }
        r.waiting.remove(&stream);
        self.advance_if_acked(now, out);
    }

    fn advance_if_acked(&mut self, now: Instant, out: &mut Vec<Out>) {
        let Some(r) = self.round.as_mut() else {
            return;
        };
        if !r.waiting.is_empty() {
            return;
        }
        let next = match r.stage {
            Stage::Lock => Stage::Update,
            Stage::Update => Stage::Unlock,
            Stage::Unlock => {
                self.finish_round(now, out);
                return;
            }
        };
        r.stage = next;
        r.since = now;
        r.waiting = r.with.clone();
        let tables = (next == Stage::Update).then(|| r.tables.clone());
        for s in &r.with {
            out.push(Out::Send(*s, order(next, r.version, tables.clone())));
        }
    }

    /// The round is acked to its end: its table is current, late callers
    /// get it, and changes gathered meanwhile start the next round.
    fn finish_round(&mut self, now: Instant, out: &mut Vec<Out>) {
        let Some(done) = self.round.take() else {
            return;
        };
        self.current = done.tables;
        for s in std::mem::take(&mut self.late) {
            if self.streams.contains_key(&s) && !done.with.contains(&s) {
                self.private_round(s, out);
            }
        }
        self.start_round(now, out);
    }

    /// The current table to one stream, in a round of its own (its acks
    /// are not waited for).
    fn private_round(&self, stream: StreamId, out: &mut Vec<Out>) {
        let v = self.version.saturating_sub(u64::from(self.round.is_some()));
        out.push(Out::Send(stream, order(Stage::Lock, v, None)));
        out.push(Out::Send(
            stream,
            order(Stage::Update, v, Some(self.current.clone())),
        ));
        out.push(Out::Send(stream, order(Stage::Unlock, v, None)));
    }

    fn tables_of(&self, members: &BTreeMap<StreamId, Member>) -> PlacementTables {
        let mut entries: BTreeMap<String, PlacementTable> = BTreeMap::new();
        for m in members.values() {
            let host = Host {
                name: m.name.clone(),
                port: m.port,
                entities: m.types.clone(),
                id: m.app_id.clone(),
                namespace: self.name.clone(),
                ..Default::default()
            };
            for t in &m.types {
                entries
                    .entry(t.clone())
                    .or_default()
                    .load_map
                    .insert(m.name.clone(), host.clone());
            }
        }
        PlacementTables {
            entries: entries.into_iter().collect(),
            replication_factor: self.replication,
            ..Default::default()
        }
    }
}

fn order(stage: Stage, version: u64, tables: Option<PlacementTables>) -> PlacementOrder {
    PlacementOrder {
        tables,
        operation: stage.operation().to_owned(),
        version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: &str = "default";

    fn report(name: &str, types: &[&str]) -> Host {
        Host {
            name: name.into(),
            id: format!("app-{name}"),
            port: 50002,
            entities: types.iter().map(|t| (*t).to_owned()).collect(),
            namespace: NS.into(),
            operation: HostOperation::Report.into(),
            ..Default::default()
        }
    }

    fn ack(op: HostOperation, version: u64) -> Host {
        Host {
            operation: op.into(),
            version: Some(version),
            ..Default::default()
        }
    }

    fn ns() -> Namespace {
        Namespace::new(NS, DEFAULT_DISSEMINATE_TIMEOUT, DEFAULT_REPLICATION_FACTOR)
    }

    /// `(stream, operation, version, types in the table)` of each send.
    fn sent(out: &[Out]) -> Vec<(StreamId, String, u64, Vec<String>)> {
        out.iter()
            .filter_map(|o| match o {
                Out::Send(s, p) => Some((
                    *s,
                    p.operation.clone(),
                    p.version,
                    p.tables
                        .as_ref()
                        .map(|t| {
                            let mut k: Vec<String> = t.entries.keys().cloned().collect();
                            k.sort();
                            k
                        })
                        .unwrap_or_default(),
                )),
                Out::Drop(_) => None,
            })
            .collect()
    }

    /// Acks the current stage from every stream in `streams`.
    fn ack_all(
        n: &mut Namespace,
        streams: &[StreamId],
        op: HostOperation,
        v: u64,
        now: Instant,
    ) -> Vec<Out> {
        let mut out = Vec::new();
        for s in streams {
            out.extend(n.on_host(*s, &ack(op, v), now));
        }
        out
    }

    /// Host a:1 (stream 1) with `Cart`, its first round done.
    fn settled(t: Instant) -> Namespace {
        let mut n = ns();
        n.on_host(1, &report("a:1", &["Cart"]), t);
        finish(&mut n, &[1], 1, t);
        n
    }

    /// Every stage of round `v` acked by `streams`.
    fn finish(n: &mut Namespace, streams: &[StreamId], v: u64, t: Instant) -> Vec<Out> {
        let mut out = ack_all(n, streams, HostOperation::Lock, v, t);
        out.extend(ack_all(n, streams, HostOperation::Update, v, t));
        out.extend(ack_all(n, streams, HostOperation::Unlock, v, t));
        out
    }

    #[test]
    fn a_host_joining_is_one_round_of_three_stages() {
        let mut n = ns();
        let t = Instant::now();
        let out = n.on_host(1, &report("a:1", &["Cart"]), t);
        assert_eq!(sent(&out), [(1, "lock".into(), 1, vec![])]);
        let out = ack_all(&mut n, &[1], HostOperation::Lock, 1, t);
        assert_eq!(sent(&out), [(1, "update".into(), 1, vec!["Cart".into()])]);
        let Out::Send(_, order) = &out[0] else {
            panic!("{out:?}")
        };
        let tables = order.tables.as_ref().expect("tables");
        assert_eq!(tables.replication_factor, 100);
        let host = &tables.entries["Cart"].load_map["a:1"];
        assert_eq!((host.id.as_str(), host.namespace.as_str()), ("app-a:1", NS));
        let out = ack_all(&mut n, &[1], HostOperation::Update, 1, t);
        assert_eq!(sent(&out), [(1, "unlock".into(), 1, vec![])]);
        assert!(ack_all(&mut n, &[1], HostOperation::Unlock, 1, t).is_empty());
        assert_eq!(n.stage(), None);
    }

    #[test]
    fn a_stage_waits_for_every_stream_and_ignores_other_versions() {
        let t = Instant::now();
        let mut n = settled(t);
        let out = n.on_host(2, &report("b:1", &["Cart", "User"]), t);
        assert_eq!(
            sent(&out),
            [(1, "lock".into(), 2, vec![]), (2, "lock".into(), 2, vec![])]
        );
        // A stale ack and a wrong stage move nothing.
        assert!(ack_all(&mut n, &[1, 2], HostOperation::Lock, 1, t).is_empty());
        assert!(ack_all(&mut n, &[1, 2], HostOperation::Update, 2, t).is_empty());
        assert!(ack_all(&mut n, &[1], HostOperation::Lock, 2, t).is_empty());
        let out = ack_all(&mut n, &[2], HostOperation::Lock, 2, t);
        assert_eq!(out.len(), 2);
        assert_eq!(sent(&out)[0].3, ["Cart", "User"]);
    }

    #[test]
    fn the_same_report_again_starts_no_round() {
        let mut n = ns();
        let t = Instant::now();
        n.on_host(1, &report("a:1", &["B", "A"]), t);
        ack_all(&mut n, &[1], HostOperation::Lock, 1, t);
        ack_all(&mut n, &[1], HostOperation::Update, 1, t);
        ack_all(&mut n, &[1], HostOperation::Unlock, 1, t);
        assert!(n.on_host(1, &report("a:1", &["A", "B", "A"]), t).is_empty());
        assert_eq!(n.version(), 1);
    }

    #[test]
    fn a_caller_gets_the_table_without_a_round_and_then_every_round() {
        let t = Instant::now();
        let mut n = settled(t);
        let out = n.on_host(9, &report("caller:1", &[]), t);
        assert_eq!(
            sent(&out),
            [
                (9, "lock".into(), 1, vec![]),
                (9, "update".into(), 1, vec!["Cart".into()]),
                (9, "unlock".into(), 1, vec![])
            ]
        );
        assert_eq!(n.stage(), None, "a caller started a round");
        // The next round includes it, and waits for it.
        let out = n.on_host(2, &report("b:1", &["Cart"]), t);
        assert_eq!(sent(&out).len(), 3);
        assert!(ack_all(&mut n, &[1, 2], HostOperation::Lock, 2, t).is_empty());
        assert_eq!(ack_all(&mut n, &[9], HostOperation::Lock, 2, t).len(), 3);
    }

    #[test]
    fn changes_during_a_round_make_the_next_one() {
        let mut n = ns();
        let t = Instant::now();
        n.on_host(1, &report("a:1", &["Cart"]), t);
        // b joins while round 1 waits for its lock acks.
        assert!(n.on_host(2, &report("b:1", &["Cart"]), t).is_empty());
        ack_all(&mut n, &[1], HostOperation::Lock, 1, t);
        ack_all(&mut n, &[1], HostOperation::Update, 1, t);
        let out = ack_all(&mut n, &[1], HostOperation::Unlock, 1, t);
        assert_eq!(
            sent(&out),
            [(1, "lock".into(), 2, vec![]), (2, "lock".into(), 2, vec![])]
        );
    }

    #[test]
    fn a_host_gone_during_a_round_starts_it_again_without_it() {
        let mut n = ns();
        let t = Instant::now();
        n.on_host(1, &report("a:1", &["Cart"]), t);
        n.on_host(2, &report("b:1", &["Cart"]), t);
        finish(&mut n, &[1], 1, t);
        ack_all(&mut n, &[1, 2], HostOperation::Lock, 2, t);
        // Round 2 is at its update stage when b goes.
        assert_eq!(n.stage(), Some(Stage::Update));
        let out = n.on_gone(2, t);
        assert_eq!(sent(&out), [(1, "lock".into(), 3, vec![])]);
        // Round 2's late acks do nothing; round 3 runs to its end.
        assert!(ack_all(&mut n, &[1], HostOperation::Update, 2, t).is_empty());
        let out = ack_all(&mut n, &[1], HostOperation::Lock, 3, t);
        assert_eq!(sent(&out), [(1, "update".into(), 3, vec!["Cart".into()])]);
        let out = ack_all(&mut n, &[1], HostOperation::Update, 3, t);
        assert_eq!(sent(&out), [(1, "unlock".into(), 3, vec![])]);
        assert!(ack_all(&mut n, &[1], HostOperation::Unlock, 3, t).is_empty());
        assert_eq!(n.stage(), None);
    }

    #[test]
    fn the_update_after_a_host_left_does_not_name_it() {
        let mut n = ns();
        let t = Instant::now();
        n.on_host(1, &report("a:1", &["Cart"]), t);
        n.on_host(2, &report("b:1", &["Cart"]), t);
        ack_all(&mut n, &[1], HostOperation::Lock, 1, t);
        n.on_gone(2, t);
        let v = n.version();
        let out = ack_all(&mut n, &[1], HostOperation::Lock, v, t);
        let Some(Out::Send(_, o)) = out.first() else {
            panic!("{out:?}")
        };
        let hosts: Vec<&String> = o.tables.as_ref().expect("tables").entries["Cart"]
            .load_map
            .keys()
            .collect();
        assert_eq!(hosts, ["a:1"]);
    }

    #[test]
    fn a_silent_stream_is_dropped_and_the_others_go_on() {
        let mut n = ns();
        let t = Instant::now();
        n.on_host(1, &report("a:1", &["Cart"]), t);
        n.on_host(2, &report("b:1", &["User"]), t);
        finish(&mut n, &[1], 1, t);
        ack_all(&mut n, &[1], HostOperation::Lock, 2, t);
        // Host 2 never acks round 2's lock.
        assert!(n.on_tick(t + DEFAULT_DISSEMINATE_TIMEOUT / 2).is_empty());
        let out = n.on_tick(t + DEFAULT_DISSEMINATE_TIMEOUT);
        assert_eq!(out[0], Out::Drop(2));
        assert_eq!(sent(&out), [(1, "lock".into(), 3, vec![])]);
        assert_eq!(n.streams(), 1);
        let t2 = t + DEFAULT_DISSEMINATE_TIMEOUT;
        let out = ack_all(&mut n, &[1], HostOperation::Lock, 3, t2);
        assert_eq!(sent(&out), [(1, "update".into(), 3, vec!["Cart".into()])]);
    }

    #[test]
    fn a_round_of_fifty_hosts_is_three_messages_each() {
        let mut n = ns();
        let t = Instant::now();
        let streams: Vec<StreamId> = (1..=50).collect();
        // They all report before the first round ends: two rounds in all.
        let mut out = Vec::new();
        for s in &streams {
            out.extend(n.on_host(*s, &report(&format!("h{s}:1"), &["Cart"]), t));
        }
        assert_eq!(out.len(), 1);
        ack_all(&mut n, &[1], HostOperation::Lock, 1, t);
        ack_all(&mut n, &[1], HostOperation::Update, 1, t);
        let locks = ack_all(&mut n, &[1], HostOperation::Unlock, 1, t);
        assert_eq!(locks.len(), 50);
        let updates = ack_all(&mut n, &streams, HostOperation::Lock, 2, t);
        assert_eq!(updates.len(), 50);
        let Out::Send(_, o) = &updates[0] else {
            panic!()
        };
        assert_eq!(
            o.tables.as_ref().expect("tables").entries["Cart"]
                .load_map
                .len(),
            50
        );
        assert_eq!(
            ack_all(&mut n, &streams, HostOperation::Update, 2, t).len(),
            50
        );
        assert!(ack_all(&mut n, &streams, HostOperation::Unlock, 2, t).is_empty());
        assert_eq!(n.stage(), None);
    }
}
