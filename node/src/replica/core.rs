//! [`Core`]: one replica of a group as a plain state machine around
//! raft-rs's `RawNode` — ticks, peer messages, proposals and read requests
//! go in; [`Output`] (messages to send, answers to give) comes out of
//! [`Core::ready`]. No thread, socket or clock: the engine thread drives it
//! in the nodes, the simulator (`sim` tests) drives the very same code over
//! a seeded in-memory network.
//!
//! - A write is a proposal on the leader. Its answer is the outcome of
//!   applying it, given once the entry is committed (on a majority) and
//!   applied here. A proposal whose index ends up holding another entry (a
//!   new leader overwrote it) is answered "not committed"; nothing is
//!   answered "done" that a majority does not hold.
//! - A current read is a raft ReadIndex: it runs once this node has
//!   applied everything the leader had committed when it confirmed (with a
//!   quorum) that it still leads. Works on followers too.
//! - Everything a Ready does (log entries, hard state, applied commands,
//!   applied index, snapshot) is one SQLite transaction; messages and
//!   answers leave only after it committed.
//! - Election timeouts are drawn from our seeded RNG, not raft-rs's thread
//!   RNG: raft redraws its timeout only when it changes term, role or
//!   leader (`Raft::reset`), so whenever one of those changed we draw it
//!   again ourselves, and a schedule replays exactly.

use std::collections::{BTreeMap, VecDeque};

use raft::eraftpb::{Entry, EntryType, Message};
use raft::{RawNode, StateRole};
use serde::{Deserialize, Serialize};

use super::ReplError;
use super::storage::{MAX_TERM, RaftStorage};
use super::store::LogStore;

/// A tick in the nodes.
pub const TICK_MS: u64 = 100;

/// Raft timing in ticks.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat: usize,
    /// Elections start after `election ..= 2 * election` ticks without
    /// word from a leader.
    pub election: usize,
}

impl Default for Timing {
    /// Heartbeats every 200 ms; elections after 1.5–3 s of silence: well
    /// above a heartbeat delayed by a burst of large messages on the bus.
    fn default() -> Self {
        Self {
            heartbeat: 2,
            election: 15,
        }
    }
}
/// A read not served within this many ticks is failed (its ReadIndex was
/// lost with a leader change).
const READ_TICKS: u64 = 50;
/// Bytes of log entries per append message at most (raft always sends at
/// least one entry).
pub const MAX_MSG_BYTES: u64 = 1024 * 1024;
/// Bytes of commands per log entry at most (a single larger command gets
/// an entry of its own).
pub const ENTRY_BYTES: usize = 512 * 1024;
/// Bytes of proposals not yet committed at most; more are refused as busy.
const MAX_UNCOMMITTED: u64 = 256 * 1024 * 1024;

/// A replica's role as the dashboards show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[default]
    Follower,
    Candidate,
    Leader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }
}

/// Where a replica stands (ids are the group's 1-based member numbers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RaftStatus {
    pub id: u64,
    pub role: Role,
    pub term: u64,
    /// The leader this replica knows of.
    pub leader: Option<u64>,
    pub commit: u64,
    pub applied: u64,
    pub last: u64,
    /// Leader only: each member's highest index known to be on it.
    pub matched: Vec<(u64, u64)>,
}

/// A write's outcome as the store gave it.
pub type Outcome<S> = Result<<S as LogStore>::Outcome, <S as LogStore>::Error>;

/// What one call of [`Core::ready`] produced.
pub struct Output<S: LogStore, T> {
    pub messages: Vec<Message>,
    /// Proposals answered: their outcome, or why they were not committed.
    pub answers: Vec<(T, Outcome<S>)>,
    /// Current reads that may run now (everything they must see is applied).
    pub reads: Vec<T>,
    /// Current reads that failed.
    pub failed_reads: Vec<(T, ReplError)>,
    /// An applied outcome that [`LogStore::wakes`].
    pub woke: bool,
}

impl<S: LogStore, T> Default for Output<S, T> {
    fn default() -> Self {
        Self {
            messages: Vec::new(),
            answers: Vec::new(),
            reads: Vec::new(),
            failed_reads: Vec::new(),
            woke: false,
        }
    }
}

pub struct Core<S: LogStore, T> {
    raw: RawNode<RaftStorage<S>>,
    /// Proposals made here: index → (term, who waits).
    pending: BTreeMap<u64, (u64, Vec<T>)>,
    /// Reads asked: context → (tick asked, who waits).
    asked: BTreeMap<u64, (u64, T)>,
    /// Reads confirmed at a commit index, waiting to be applied that far.
    ready_reads: VecDeque<(u64, T)>,
    next_read: u64,
    /// Names this incarnation's reads: a late or duplicated answer to a
    /// read of an earlier incarnation (same counter) must not release one
    /// of ours.
    read_nonce: u64,
    ticks: u64,
    rng: fastrand::Rng,
    election: usize,
    /// (term, role, leader) when the timeout was last drawn.
    drawn: (u64, StateRole, u64),
}

impl<S: LogStore, T> Core<S, T> {
    /// Member `id` of a group of `voters` on `store`; `seed` draws its
    /// election timeouts.
    pub fn new(
        store: S,
        id: u64,
        voters: &[u64],
        seed: u64,
        timing: Timing,
    ) -> Result<Self, ReplError> {
        let storage = RaftStorage::open(store, voters)?;
        let config = raft::Config {
            id,
            election_tick: timing.election,
            heartbeat_tick: timing.heartbeat,
            min_election_tick: timing.election,
            max_election_tick: 2 * timing.election + 1,
            applied: storage.applied(),
            max_size_per_msg: MAX_MSG_BYTES,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            max_uncommitted_size: MAX_UNCOMMITTED,
            // A new commit index reaches followers with the next append or
            // heartbeat (at most 200 ms later; a current read's heartbeats
            // carry it at once) instead of an empty append to each of them
            // right away: a quarter of all raft messages under load.
            skip_bcast_commit: true,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| ReplError::Storage(format!("raft config: {e}")))?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&config, storage, &logger)
            .map_err(|e| ReplError::Storage(format!("cannot start raft: {e}")))?;
        let mut core = Self {
            raw,
            pending: BTreeMap::new(),
            asked: BTreeMap::new(),
            ready_reads: VecDeque::new(),
            next_read: 0,
            read_nonce: 0,
            ticks: 0,
            rng: fastrand::Rng::with_seed(seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            election: timing.election,
            drawn: (u64::MAX, StateRole::Follower, 0),
        };
        core.read_nonce = core.rng.u64(..);
        core.redraw_timeout();
        Ok(core)
    }

    /// After anything that may have reset raft's election timer: if term,
    /// role or leader changed, draw the timeout in `[E, 2E]` from our RNG.
    fn redraw_timeout(&mut self) {
        let r = &self.raw.raft;
        let now = (r.term, r.state, r.leader_id);
        if now != self.drawn {
            self.drawn = now;
            let t = self.election + self.rng.usize(0..=self.election);
            self.raw.raft.set_randomized_election_timeout(t);
        }
    }

    pub fn id(&self) -> u64 {
        self.raw.raft.id
    }

    pub fn tick(&mut self) {
        self.ticks += 1;
        self.raw.tick();
        self.redraw_timeout();
    }

    /// Starts an election now (a group of one, at start).
    pub fn campaign(&mut self) -> Result<(), ReplError> {
        self.raw
            .campaign()
            .map_err(|e| ReplError::Storage(e.to_string()))?;
        self.redraw_timeout();
        Ok(())
    }

    /// A message from a peer. Refused: one not addressed to this node, from
    /// a non-member, or with a term no election could reach.
    pub fn step(&mut self, m: Message) -> Result<(), ReplError> {
        let member = self.raw.raft.prs().conf().voters().contains(m.from);
        if m.to != self.id() || !member || m.from == self.id() {
            return Err(ReplError::BadRequest(format!(
                "a raft message from {} to {} is not for member {}",
                m.from,
                m.to,
                self.id()
            )));
        }
        if m.term > MAX_TERM || m.log_term > MAX_TERM || m.entries.iter().any(|e| e.term > MAX_TERM)
        {
            return Err(ReplError::BadRequest(format!(
                "term {} out of range",
                m.term
            )));
        }
        if raft::raw_node::is_local_msg(m.get_msg_type()) {
            return Err(ReplError::BadRequest(
                "a local raft message from the bus".into(),
            ));
        }
        let result = self.raw.step(m);
        self.redraw_timeout();
        result.map_err(|e| ReplError::BadRequest(e.to_string()))
    }

    /// Proposes `command` (leader only); `who` hears the outcome from a
    /// later [`Core::ready`]. Refused at once: not the leader (with the
    /// leader's id if known), or too much uncommitted.
    pub fn propose(&mut self, command: &S::Command, who: T) -> Result<(), (T, ReplError)> {
        self.propose_batch(vec![(command.clone(), who)])
            .map_err(|mut failed| failed.pop().expect("one failed"))
    }

    /// Proposes several commands: they go into as few log entries as fit
    /// [`ENTRY_BYTES`] each (one raft entry, one log row and one round per
    /// entry, however many commands it holds), applied in order, each in a
    /// savepoint of its own. Returns the waiters refused at once.
    pub fn propose_batch(
        &mut self,
        commands: Vec<(S::Command, T)>,
    ) -> Result<(), Vec<(T, ReplError)>> {
        if self.raw.raft.state != StateRole::Leader {
            let why = match self.leader() {
                Some(l) => ReplError::NotLeader(format!("member {l} leads; this one does not")),
                None => ReplError::NotLeader("no leader right now (election in progress)".into()),
            };
            return Err(commands
                .into_iter()
                .map(|(_, who)| (who, why.clone()))
                .collect());
        }
        let mut failed = Vec::new();
        let mut entry: Vec<u8> = Vec::new();
        let mut waiters: Vec<T> = Vec::new();
        for (command, who) in commands {
            let json = match serde_json::to_vec(&command) {
                Ok(j) => j,
                Err(e) => {
                    failed.push((who, ReplError::BadRequest(format!("cannot encode: {e}"))));
                    continue;
                }
            };
            if !waiters.is_empty() && entry.len() + json.len() > ENTRY_BYTES {
                self.propose_entry(
                    std::mem::take(&mut entry),
                    std::mem::take(&mut waiters),
                    &mut failed,
                );
            }
            entry.push(if waiters.is_empty() { b'[' } else { b',' });
            entry.extend_from_slice(&json);
            waiters.push(who);
        }
        if !waiters.is_empty() {
            self.propose_entry(entry, waiters, &mut failed);
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed)
        }
    }

    /// Proposes one entry: `data` is a JSON array of commands but for its `]`.
    fn propose_entry(
        &mut self,
        mut data: Vec<u8>,
        waiters: Vec<T>,
        failed: &mut Vec<(T, ReplError)>,
    ) {
        data.push(b']');
        if let Err(e) = self.raw.propose(Vec::new(), data) {
            let why = match e {
                raft::Error::ProposalDropped => ReplError::NotLeader(
                    "the proposal was dropped (busy, or leadership moving)".into(),
                ),
                e => ReplError::Storage(e.to_string()),
            };
            failed.extend(waiters.into_iter().map(|who| (who, why.clone())));
            return;
        }
        let index = self.raw.raft.raft_log.last_index();
        self.pending.insert(index, (self.raw.raft.term, waiters));
    }

    /// Asks for a current read: `who` comes back in [`Output::reads`] once
    /// this node applied everything committed when the read was asked.
    pub fn read_index(&mut self, who: T) -> Result<(), (T, ReplError)> {
        if self.leader().is_none() {
            return Err((
                who,
                ReplError::NotLeader("no leader right now (election in progress)".into()),
            ));
        }
        self.next_read += 1;
        self.asked.insert(self.next_read, (self.ticks, who));
        let mut ctx = self.read_nonce.to_be_bytes().to_vec();
        ctx.extend_from_slice(&self.next_read.to_be_bytes());
        self.raw.read_index(ctx);
        Ok(())
    }

    pub fn leader(&self) -> Option<u64> {
        let l = self.raw.raft.leader_id;
        (l != raft::INVALID_ID).then_some(l)
    }

    pub fn status(&self) -> RaftStatus {
        let r = &self.raw.raft;
        let role = match r.state {
            StateRole::Leader => Role::Leader,
            StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
            StateRole::Follower => Role::Follower,
        };
        let matched = if role == Role::Leader {
            let mut m: Vec<(u64, u64)> = r.prs().iter().map(|(id, p)| (*id, p.matched)).collect();
            m.sort_unstable();
            m
        } else {
            Vec::new()
        };
        RaftStatus {
            id: r.id,
            role,
            term: r.term,
            leader: self.leader(),
            commit: r.raft_log.committed,
            applied: self.raw.store().applied(),
            last: r.raft_log.last_index(),
            matched,
        }
    }

    /// The store, for local reads (what this replica has applied).
    pub fn store(&mut self) -> &mut S {
        self.raw.mut_store().store_mut()
    }

    /// Stops this replica; its durable state is the store (a restart opens
    /// a new `Core` on it). Waiters get nothing: they were not answered.
    pub fn into_store(self) -> S {
        let mut raw = self.raw;
        raw.mut_store().take_store()
    }

    /// Fails reads asked too long ago (their ReadIndex was lost).
    fn expire_reads(&mut self, out: &mut Output<S, T>) {
        let now = self.ticks;
        let old: Vec<u64> = self
            .asked
            .iter()
            .filter(|(_, (at, _))| now.saturating_sub(*at) > READ_TICKS)
            .map(|(ctx, _)| *ctx)
            .collect();
        for ctx in old {
            if let Some((_, who)) = self.asked.remove(&ctx) {
                out.failed_reads.push((
                    who,
                    ReplError::NotLeader("the read was not confirmed by a leader in time".into()),
                ));
            }
        }
    }

    /// Does everything raft has ready: persists (one transaction), applies
    /// committed entries, and returns the messages to send and the answers
    /// to give — all only valid once this returned (the commit is done).
    ///
    /// `early` gets the leader's messages that may leave before this
    /// replica's own write is durable (its appends to followers: raft lets
    /// the leader write its log in parallel with theirs), so the follower
    /// round trip overlaps the leader's fsync.
    pub fn ready(
        &mut self,
        early: &mut dyn FnMut(Vec<Message>),
    ) -> Result<Output<S, T>, ReplError> {
        let mut out = Output::default();
        self.expire_reads(&mut out);
        if !self.raw.has_ready() {
            self.release_reads(&mut out);
            return Ok(out);
        }
        let mut rd = self.raw.ready();
        // Only new log entries, a vote or term, or a snapshot must be on
        // disk before anything leaves; a Ready that only applies committed
        // entries needs no fsync (a crash re-applies them from the log).
        let must_sync = rd.must_sync();
        self.raw.mut_store().begin(must_sync)?;
        let leader_msgs = rd.take_messages();
        if !leader_msgs.is_empty() {
            early(leader_msgs);
        }
        let result = (|| {
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot().clone();
                self.raw.mut_store().apply_snapshot(&snap)?;
                // Proposals at or below the snapshot: their fate is unknown
                // here (the entries are not in our log to compare).
                let upto = snap.get_metadata().index;
                let gone: Vec<u64> = self.pending.range(..=upto).map(|(i, _)| *i).collect();
                for i in gone {
                    for who in self.pending.remove(&i).map(|p| p.1).unwrap_or_default() {
                        out.answers.push((
                            who,
                            Err(ReplError::NotLeader(
                                "the outcome is unknown (replaced by a snapshot)".into(),
                            )
                            .into()),
                        ));
                    }
                }
            }
            for rs in rd.take_read_states() {
                if let Ok(b) = <[u8; 16]>::try_from(&rs.request_ctx[..])
                    && b[..8] == self.read_nonce.to_be_bytes()
                    && let Ok(n) = <[u8; 8]>::try_from(&b[8..])
                    && let Some((_, who)) = self.asked.remove(&u64::from_be_bytes(n))
                {
                    self.ready_reads.push_back((rs.index, who));
                }
            }
            let committed = rd.take_committed_entries();
            self.apply(committed, &mut out)?;
            if !rd.entries().is_empty() {
                let entries = rd.entries().clone();
                self.raw.mut_store().append(&entries)?;
            }
            if let Some(hs) = rd.hs() {
                self.raw.mut_store().set_hard_state(hs.clone())?;
            }
            out.messages.extend(rd.take_persisted_messages());
            let mut light = self.raw.advance(rd);
            if let Some(commit) = light.commit_index() {
                self.raw.mut_store().set_commit(commit)?;
            }
            out.messages.extend(light.take_messages());
            let committed = light.take_committed_entries();
            self.apply(committed, &mut out)?;
            self.raw.mut_store().maybe_compact()?;
            Ok::<(), ReplError>(())
        })();
        match result {
            Ok(()) => self.raw.mut_store().commit()?,
            Err(e) => {
                // The raft state in memory is ahead of the disk now: this
                // replica must not go on. The engine stops on this error.
                if let Err(undo) =
                    super::store::exec(self.raw.store().store().conn(), "ROLLBACK", [])
                {
                    tracing::error!(error = %undo, "cannot roll back");
                }
                return Err(e);
            }
        }
        self.raw.advance_apply();
        self.redraw_timeout();
        self.release_reads(&mut out);
        Ok(out)
    }

    fn release_reads(&mut self, out: &mut Output<S, T>) {
        let applied = self.raw.store().applied();
        while self.ready_reads.front().is_some_and(|(i, _)| *i <= applied) {
            if let Some((_, who)) = self.ready_reads.pop_front() {
                out.reads.push(who);
            }
        }
    }

    fn apply(&mut self, entries: Vec<Entry>, out: &mut Output<S, T>) -> Result<(), ReplError> {
        for e in entries {
            let index = e.index;
            let outcomes: Vec<Outcome<S>> = if e.get_entry_type() == EntryType::EntryNormal
                && !e.data.is_empty()
            {
                match serde_json::from_slice::<Vec<S::Command>>(&e.data) {
                    Ok(commands) => {
                        let store = self.raw.mut_store().store_mut();
                        commands
                            .iter()
                            .map(|c| store.atomic(|s| s.apply_command(c)))
                            .collect()
                    }
                    Err(err) => {
                        // Every replica skips it alike (a newer version's command?).
                        tracing::error!(index, error = %err, "a log entry this version cannot read; skipped");
                        Vec::new()
                    }
                }
            } else {
                Vec::new()
            };
            out.woke |= outcomes.iter().any(|o| o.as_ref().is_ok_and(S::wakes));
            self.raw.mut_store().set_applied(index)?;
            // Whoever proposed at or before this index here has an answer:
            // an earlier index can never commit anything else now.
            let done: Vec<u64> = self.pending.range(..=index).map(|(i, _)| *i).collect();
            let mut outcomes = Some(outcomes);
            for i in done {
                let Some((term, waiters)) = self.pending.remove(&i) else {
                    continue;
                };
                if i == index
                    && term == e.term
                    && let Some(list) = outcomes.take()
                    && list.len() == waiters.len()
                {
                    out.answers.extend(waiters.into_iter().zip(list));
                    continue;
                }
                for who in waiters {
                    out.answers.push((
                        who,
                        Err(ReplError::NotLeader(
                            "not committed: leadership changed before a majority had it".into(),
                        )
                        .into()),
                    ));
                }
            }
        }
        Ok(())
    }
}
