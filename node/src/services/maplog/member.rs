//! One member of the partitioned map, as a state machine without sockets:
//! views, peer messages, client requests and ticks go in, messages to send
//! and answers come out ([`Effect`]). The async shell in `logger` feeds it.
//!
//! The rules that keep an acknowledged put:
//!
//! 1. A put is acknowledged only when the owner and every backup of its
//!    partition stored it *at the same epoch*: the owner stores it, sends it
//!    to the backups, and answers once each acknowledged. A backup takes it
//!    only at the owner's epoch; a view change fails every put in flight
//!    (the client puts again; a put is idempotent).
//! 2. An owner serves a partition at a new epoch only after it gathered it:
//!    it has the digest of every other member of the view, sent by that
//!    member once it is at the new epoch (so it no longer takes a put of an
//!    older epoch), and the entries of every partition whose digest differs
//!    from its own. An acknowledged put is on every holder of its epoch; if
//!    one of them is in the new view, the new owner gets it from there.
//! 3. Then the owner fills each backup whose digest differs, and only when
//!    its backups confirm does it tell the others that they may drop old
//!    copies: until then, the data is on more than one member.
//!
//! Versions only grow (`epoch << 24` at least, and above the partition's
//! largest), and a merge keeps the larger version, so copies merge in any
//! order.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::model::{Digest, Entry, MAX_KEY, MAX_VALUE, MapAnswer, MapRequest, PartData, Peer};
use super::table::{Table, View, fnv1a, partition_of};

/// What the member asks its shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Send { to: String, msg: Peer },
    Reply { token: u64, answer: MapAnswer },
}

/// A put waiting for its backups.
#[derive(Debug)]
struct Pending {
    token: u64,
    waiting: BTreeSet<String>,
    since_ms: u64,
}

#[derive(Debug, Default)]
struct Part {
    entries: BTreeMap<String, (u64, String)>,
    digest: u64,
    max_version: u64,
    /// Owned and gathered at the current epoch: served.
    ready: bool,
}

fn entry_hash(key: &str, version: u64, value: &str) -> u64 {
    let h = fnv1a(key.as_bytes()) ^ fnv1a(value.as_bytes()).rotate_left(17);
    h ^ version.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl Part {
    /// Keeps the larger version (ties: the larger value, so every copy
    /// picks the same); whether it changed anything.
    fn merge(&mut self, key: &str, version: u64, value: &str) -> bool {
        if let Some((v, old)) = self.entries.get(key)
            && (*v, old.as_str()) >= (version, value)
        {
            return false;
        }
        if let Some((v, old)) = self.entries.get(key) {
            self.digest ^= entry_hash(key, *v, old);
        }
        self.digest ^= entry_hash(key, version, value);
        self.max_version = self.max_version.max(version);
        self.entries
            .insert(key.to_owned(), (version, value.to_owned()));
        true
    }

    fn summary(&self, part: u32) -> Digest {
        Digest {
            part,
            digest: self.digest,
            count: self.entries.len() as u32,
        }
    }

    fn data(&self, part: u32) -> PartData {
        let mut entries: Vec<Entry> = self
            .entries
            .iter()
            .map(|(k, (v, val))| Entry {
                key: k.clone(),
                value: val.clone(),
                version: *v,
            })
            .collect();
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        PartData { part, entries }
    }

    fn clear(&mut self) {
        *self = Part::default();
    }
}

/// Gathering the owned partitions at a new epoch.
#[derive(Debug, Default)]
struct Round {
    /// Members whose digests have not come.
    digests_from: BTreeSet<String>,
    /// Members asked for entries, with the partitions asked.
    data_from: BTreeMap<String, Vec<u32>>,
    asked_ms: u64,
}

/// Bytes of entries one message carries at most (a partition bigger than
/// that goes alone).
const CHUNK_BYTES: usize = 256 * 1024;
/// Messages of a later epoch kept until the member gets there.
const FUTURE_MAX: usize = 10_000;
/// A put whose backups do not answer by then is failed (the client retries).
pub const PUT_TIMEOUT_MS: u64 = 3_000;
/// How often unanswered asks and fills are sent again.
pub const RESEND_MS: u64 = 500;

/// What telemetry shows of a member (the `maplog` service; the app reads
/// this type too).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemberStats {
    pub epoch: u64,
    pub master: String,
    pub members: Vec<String>,
    pub partitions: u32,
    pub backup_count: usize,
    pub owners: Vec<u16>,
    pub backups: Vec<Vec<u16>>,
    pub ready: bool,
    pub owned_partitions: u64,
    pub owned_entries: u64,
    pub backup_entries: u64,
    pub puts: u64,
    pub gets: u64,
    pub migrations_in_flight: u64,
    pub migrations_done: u64,
    /// The member's seed HTTP (`/database/`); the shell fills it in.
    pub http: String,
}

pub struct Member {
    me: String,
    partitions: u32,
    backup_count: usize,
    view: Option<View>,
    table: Option<Table>,
    parts: Vec<Part>,
    round: Option<Round>,
    /// Digests each other member sent at the current epoch.
    peer_digests: BTreeMap<String, BTreeMap<u32, u64>>,
    /// Backup fills not confirmed: (partition, backup) -> sent at.
    fills: BTreeMap<(u32, String), u64>,
    pending: BTreeMap<u64, Pending>,
    next_put: u64,
    future: VecDeque<(String, Peer)>,
    puts: u64,
    gets: u64,
    migrations_done: u64,
}

impl Member {
    pub fn new(me: &str, partitions: u32, backup_count: usize) -> Self {
        Self {
            me: me.to_owned(),
            partitions: partitions.max(1),
            backup_count,
            view: None,
            table: None,
            parts: (0..partitions.max(1)).map(|_| Part::default()).collect(),
            round: None,
            peer_digests: BTreeMap::new(),
            fills: BTreeMap::new(),
            pending: BTreeMap::new(),
            next_put: 1,
            future: VecDeque::new(),
            puts: 0,
            gets: 0,
            migrations_done: 0,
        }
    }

    pub fn view(&self) -> Option<&View> {
        self.view.as_ref()
    }

    pub fn epoch(&self) -> u64 {
        self.view.as_ref().map_or(0, |v| v.epoch)
    }

    /// Whether every partition it owns is served (and it is in the view).
    pub fn ready(&self) -> bool {
        self.view.as_ref().is_some_and(|v| v.contains(&self.me)) && self.round.is_none()
    }

    /// Follows a newer view; an older or equal one is ignored.
    pub fn on_view(&mut self, view: View, now_ms: u64) -> Vec<Effect> {
        let mut out = Vec::new();
        if self
            .view
            .as_ref()
            .is_some_and(|cur| cur.order() >= view.order())
        {
            return out;
        }
        for (_, p) in std::mem::take(&mut self.pending) {
            out.push(Effect::Reply {
                token: p.token,
                answer: MapAnswer::Retry {
                    reason: "the view changed; put again".into(),
                    view: Some(view.clone()),
                },
            });
        }
        let table = Table::compute(&view.nodes(), self.partitions, self.backup_count);
        for part in &mut self.parts {
            part.ready = false;
        }
        self.fills.clear();
        self.peer_digests.clear();
        let epoch = view.epoch;
        let inside = view.contains(&self.me);
        let others: BTreeSet<String> = view.nodes().into_iter().filter(|n| *n != self.me).collect();
        self.view = Some(view);
        self.table = Some(table);
        self.round = None;
        if inside {
            let digests = self.digests();
            for to in &others {
                out.push(Effect::Send {
                    to: to.clone(),
                    msg: Peer::Digests {
                        epoch,
                        digests: digests.clone(),
                    },
                });
            }
            self.round = Some(Round {
                digests_from: others,
                data_from: BTreeMap::new(),
                asked_ms: now_ms,
            });
            self.check_round(now_ms, &mut out);
        }
        // Messages that waited for this epoch.
        let waiting: Vec<(String, Peer)> = std::mem::take(&mut self.future).into_iter().collect();
        for (from, msg) in waiting {
            if msg.epoch() >= epoch {
                out.extend(self.on_peer(&from, msg, now_ms));
            }
        }
        out
    }

    fn digests(&self) -> Vec<Digest> {
        self.parts
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.entries.is_empty())
            .map(|(i, p)| p.summary(i as u32))
            .collect()
    }

    fn owned(&self) -> Vec<u32> {
        match &self.table {
            Some(t) => t.owned_by(&self.me).collect(),
            None => Vec::new(),
        }
    }

    /// Ends the round once everything came: serves the owned partitions,
    /// fills the backups that lack something.
    fn check_round(&mut self, now_ms: u64, out: &mut Vec<Effect>) {
        let done = self
            .round
            .as_ref()
            .is_some_and(|r| r.digests_from.is_empty() && r.data_from.is_empty());
        if !done {
            return;
        }
        self.round = None;
        let (Some(table), Some(view)) = (self.table.clone(), self.view.clone()) else {
            return;
        };
        let owned = self.owned();
        let mut fills: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        let mut served = Vec::new();
        for &p in &owned {
            self.parts[p as usize].ready = true;
            let mine = self.parts[p as usize].digest;
            let mut needs_fill = false;
            for b in table.backups(p) {
                let theirs = self
                    .peer_digests
                    .get(b)
                    .and_then(|d| d.get(&p))
                    .copied()
                    .unwrap_or(0);
                if theirs != mine {
                    fills.entry(b.to_owned()).or_default().push(p);
                    self.fills.insert((p, b.to_owned()), now_ms);
                    needs_fill = true;
                }
            }
            if !needs_fill {
                served.push(p);
            }
        }
        for (to, parts) in fills {
            self.send_fill(&to, &parts, view.epoch, out);
        }
        self.announce_served(served, &view, out);
    }

    fn send_fill(&self, to: &str, parts: &[u32], epoch: u64, out: &mut Vec<Effect>) {
        for chunk in self.chunks(parts) {
            out.push(Effect::Send {
                to: to.to_owned(),
                msg: Peer::Fill {
                    epoch,
                    parts: chunk,
                },
            });
        }
    }

    fn announce_served(&self, parts: Vec<u32>, view: &View, out: &mut Vec<Effect>) {
        if parts.is_empty() {
            return;
        }
        for to in view.nodes() {
            if to != self.me {
                out.push(Effect::Send {
                    to,
                    msg: Peer::Served {
                        epoch: view.epoch,
                        parts: parts.clone(),
                    },
                });
            }
        }
    }

    /// The entries of `parts`, cut into messages of about [`CHUNK_BYTES`].
    fn chunks(&self, parts: &[u32]) -> Vec<Vec<PartData>> {
        let mut out = vec![Vec::new()];
        let mut bytes = 0;
        for &p in parts {
            let Some(part) = self.parts.get(p as usize) else {
                continue;
            };
            let size: usize = part
                .entries
                .iter()
                .map(|(k, (_, v))| k.len() + v.len() + 32)
                .sum();
            if bytes > 0 && bytes + size > CHUNK_BYTES {
                out.push(Vec::new());
                bytes = 0;
            }
            bytes += size;
            out.last_mut()
                .expect("one chunk at least")
                .push(part.data(p));
        }
        out
    }

    /// A message from another member.
    pub fn on_peer(&mut self, from: &str, msg: Peer, now_ms: u64) -> Vec<Effect> {
        let mut out = Vec::new();
        let epoch = self.epoch();
        if msg.epoch() > epoch {
            if self.future.len() >= FUTURE_MAX {
                self.future.pop_front();
            }
            self.future.push_back((from.to_owned(), msg));
            return out;
        }
        if msg.epoch() < epoch {
            // Only a backup write gets an answer: its put fails at once.
            if let Peer::Backup { epoch, put, .. } = msg {
                out.push(Effect::Send {
                    to: from.to_owned(),
                    msg: Peer::BackupAck {
                        epoch,
                        put,
                        ok: false,
                    },
                });
            }
            return out;
        }
        let Some(table) = self.table.clone() else {
            return out;
        };
        match msg {
            Peer::Digests { digests, .. } => {
                let map: BTreeMap<u32, u64> = digests.iter().map(|d| (d.part, d.digest)).collect();
                self.peer_digests.insert(from.to_owned(), map.clone());
                let owned = self.owned();
                if let Some(round) = &mut self.round
                    && round.digests_from.remove(from)
                {
                    let differing: Vec<u32> = owned
                        .into_iter()
                        .filter(|p| {
                            map.get(p)
                                .is_some_and(|d| *d != self.parts[*p as usize].digest)
                        })
                        .collect();
                    if !differing.is_empty() {
                        round.data_from.insert(from.to_owned(), differing.clone());
                        out.push(Effect::Send {
                            to: from.to_owned(),
                            msg: Peer::DataAsk {
                                epoch,
                                parts: differing,
                            },
                        });
                    }
                }
                self.check_round(now_ms, &mut out);
            }
            Peer::DigestAsk { .. } => out.push(Effect::Send {
                to: from.to_owned(),
                msg: Peer::Digests {
                    epoch,
                    digests: self.digests(),
                },
            }),
            Peer::DataAsk { parts, .. } => {
                let chunks = self.chunks(&parts);
                let n = chunks.len();
                for (i, chunk) in chunks.into_iter().enumerate() {
                    out.push(Effect::Send {
                        to: from.to_owned(),
                        msg: Peer::Data {
                            epoch,
                            parts: chunk,
                            last: i + 1 == n,
                        },
                    });
                }
            }
            Peer::Data { parts, last, .. } => {
                let asked = self
                    .round
                    .as_ref()
                    .and_then(|r| r.data_from.get(from))
                    .cloned()
                    .unwrap_or_default();
                for pd in parts {
                    if asked.contains(&pd.part) {
                        self.merge_all(&pd);
                    }
                }
                if last
                    && let Some(round) = &mut self.round
                    && round.data_from.remove(from).is_some()
                {
                    self.migrations_done += asked.len() as u64;
                }
                self.check_round(now_ms, &mut out);
            }
            Peer::Backup {
                put, part, entry, ..
            } => {
                let ok = table.is_backup(part, &self.me) && table.is_owner(part, from);
                if ok && let Some(p) = self.parts.get_mut(part as usize) {
                    p.merge(&entry.key, entry.version, &entry.value);
                }
                out.push(Effect::Send {
                    to: from.to_owned(),
                    msg: Peer::BackupAck { epoch, put, ok },
                });
            }
            Peer::BackupAck { put, ok, .. } => {
                if let Some(p) = self.pending.get_mut(&put) {
                    if ok {
                        p.waiting.remove(from);
                    }
                    if !ok || p.waiting.is_empty() {
                        let p = self.pending.remove(&put).expect("it is there");
                        let answer = if ok {
                            MapAnswer::Stored
                        } else {
                            MapAnswer::Retry {
                                reason: "a backup is at another epoch; put again".into(),
                                view: self.view.clone(),
                            }
                        };
                        out.push(Effect::Reply {
                            token: p.token,
                            answer,
                        });
                    }
                }
            }
            Peer::Fill { parts, .. } => {
                let mut done = Vec::new();
                for pd in parts {
                    if table.is_backup(pd.part, &self.me) && table.is_owner(pd.part, from) {
                        self.merge_all(&pd);
                        done.push(pd.part);
                    }
                }
                out.push(Effect::Send {
                    to: from.to_owned(),
                    msg: Peer::FillAck { epoch, parts: done },
                });
            }
            Peer::FillAck { parts, .. } => {
                let mut served = Vec::new();
                for p in parts {
                    if self.fills.remove(&(p, from.to_owned())).is_some() {
                        self.migrations_done += 1;
                        if !self.fills.keys().any(|(q, _)| *q == p) {
                            served.push(p);
                        }
                    }
                }
                if let Some(view) = self.view.clone() {
                    self.announce_served(served, &view, &mut out);
                }
            }
            Peer::Served { parts, .. } => {
                for p in parts {
                    if !table.holds(p, &self.me)
                        && table.is_owner(p, from)
                        && let Some(part) = self.parts.get_mut(p as usize)
                    {
                        part.clear();
                    }
                }
            }
        }
        out
    }

    fn merge_all(&mut self, pd: &PartData) {
        if let Some(p) = self.parts.get_mut(pd.part as usize) {
            for e in &pd.entries {
                p.merge(&e.key, e.version, &e.value);
            }
        }
    }

    fn retry(&self, reason: &str) -> MapAnswer {
        MapAnswer::Retry {
            reason: reason.to_owned(),
            view: self.view.clone(),
        }
    }

    /// Whether this member serves partition `p` now (else why not).
    fn serving(&self, p: u32) -> Result<(), MapAnswer> {
        let Some(table) = &self.table else {
            return Err(self.retry("no view yet"));
        };
        if !table.is_owner(p, &self.me) {
            return Err(self.retry("not the owner of this partition"));
        }
        if !self.parts[p as usize].ready {
            return Err(self.retry("the partition is migrating"));
        }
        Ok(())
    }

    /// A client's request; the answer comes as an [`Effect::Reply`] with
    /// `token`, now or later.
    pub fn on_request(&mut self, token: u64, request: MapRequest, now_ms: u64) -> Vec<Effect> {
        let reply = |answer| vec![Effect::Reply { token, answer }];
        match request {
            MapRequest::Put { key, value } => {
                if key.is_empty() || key.len() > MAX_KEY || value.len() > MAX_VALUE {
                    return reply(MapAnswer::Invalid {
                        reason: format!(
                            "a key is 1-{MAX_KEY} bytes and a value at most {MAX_VALUE} bytes"
                        ),
                    });
                }
                let p = partition_of(&key, self.partitions);
                if let Err(answer) = self.serving(p) {
                    return reply(answer);
                }
                let epoch = self.epoch();
                let part = &mut self.parts[p as usize];
                let version = (part.max_version + 1).max(epoch << 24);
                part.merge(&key, version, &value);
                self.puts += 1;
                let backups: BTreeSet<String> = self
                    .table
                    .as_ref()
                    .map(|t| t.backups(p).map(str::to_owned).collect())
                    .unwrap_or_default();
                if backups.is_empty() {
                    return reply(MapAnswer::Stored);
                }
                let put = self.next_put;
                self.next_put += 1;
                let entry = Entry {
                    key,
                    value,
                    version,
                };
                let out = backups
                    .iter()
                    .map(|b| Effect::Send {
                        to: b.clone(),
                        msg: Peer::Backup {
                            epoch,
                            put,
                            part: p,
                            entry: entry.clone(),
                        },
                    })
                    .collect();
                self.pending.insert(
                    put,
                    Pending {
                        token,
                        waiting: backups,
                        since_ms: now_ms,
                    },
                );
                out
            }
            MapRequest::Get { key } => {
                let p = partition_of(&key, self.partitions);
                if let Err(answer) = self.serving(p) {
                    return reply(answer);
                }
                self.gets += 1;
                let value = self.parts[p as usize]
                    .entries
                    .get(&key)
                    .map(|(_, v)| v.clone());
                reply(MapAnswer::Value { value })
            }
            MapRequest::Scan { epoch } => {
                if epoch != self.epoch() {
                    return reply(self.retry("another epoch"));
                }
                if !self.ready() {
                    return reply(self.retry("migrating"));
                }
                let mut entries = Vec::new();
                for p in self.owned() {
                    let mut part: Vec<(u64, String, String)> = self.parts[p as usize]
                        .entries
                        .iter()
                        .map(|(k, (v, val))| (*v, k.clone(), val.clone()))
                        .collect();
                    part.sort();
                    entries.extend(part.into_iter().map(|(_, k, v)| (k, v)));
                }
                reply(MapAnswer::Scanned { epoch, entries })
            }
            MapRequest::View => reply(MapAnswer::Current {
                view: self.view.clone(),
            }),
        }
    }

    /// Fails puts whose backups are silent; asks again what did not come.
    pub fn on_tick(&mut self, now_ms: u64) -> Vec<Effect> {
        let mut out = Vec::new();
        let late: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| now_ms.saturating_sub(p.since_ms) >= PUT_TIMEOUT_MS)
            .map(|(k, _)| *k)
            .collect();
        for k in late {
            let p = self.pending.remove(&k).expect("it is there");
            out.push(Effect::Reply {
                token: p.token,
                answer: self.retry("a backup did not answer; put again"),
            });
        }
        let epoch = self.epoch();
        if let Some(round) = &mut self.round
            && now_ms.saturating_sub(round.asked_ms) >= RESEND_MS
        {
            round.asked_ms = now_ms;
            for to in &round.digests_from {
                out.push(Effect::Send {
                    to: to.clone(),
                    msg: Peer::DigestAsk { epoch },
                });
            }
            for (to, parts) in &round.data_from {
                out.push(Effect::Send {
                    to: to.clone(),
                    msg: Peer::DataAsk {
                        epoch,
                        parts: parts.clone(),
                    },
                });
            }
        }
        let mut again: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for ((p, b), at) in self.fills.iter_mut() {
            if now_ms.saturating_sub(*at) >= RESEND_MS {
                *at = now_ms;
                again.entry(b.clone()).or_default().push(*p);
            }
        }
        for (to, parts) in again {
            self.send_fill(&to, &parts, epoch, &mut out);
        }
        out
    }

    pub fn stats(&self) -> MemberStats {
        let mut s = MemberStats {
            partitions: self.partitions,
            backup_count: self.backup_count,
            ready: self.ready(),
            puts: self.puts,
            gets: self.gets,
            migrations_done: self.migrations_done,
            ..MemberStats::default()
        };
        if let Some(v) = &self.view {
            s.epoch = v.epoch;
            s.master = v.master.clone();
        }
        if let Some(t) = &self.table {
            s.members = t.members.clone();
            s.owners = t
                .replicas
                .iter()
                .map(|r| r.first().copied().unwrap_or(u16::MAX))
                .collect();
            s.backups = t
                .replicas
                .iter()
                .map(|r| r.iter().skip(1).copied().collect())
                .collect();
            for p in 0..self.partitions {
                let n = self.parts[p as usize].entries.len() as u64;
                if t.is_owner(p, &self.me) {
                    s.owned_partitions += 1;
                    s.owned_entries += n;
                    if !self.parts[p as usize].ready {
                        s.migrations_in_flight += 1;
                    }
                } else if t.is_backup(p, &self.me) {
                    s.backup_entries += n;
                }
            }
        }
        s.migrations_in_flight += self.fills.len() as u64;
        s
    }
}
