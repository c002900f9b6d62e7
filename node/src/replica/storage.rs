//! [`RaftStorage`]: the raft log, hard state and applied index of one
//! replica, in the same SQLite database as the store's state, so one
//! transaction holds a Ready's new log entries, its hard state, the
//! commands it applied and the new applied index: a crash keeps all of it
//! or none, and a command is never applied twice.
//!
//! Tables: `raft_log (idx, term, kind, data, context)` and
//! `raft_meta (k, v)` with `hard` (term, vote, commit), `conf` (the
//! voters), `snap` (index and term of the last entry compacted away or
//! restored from a snapshot) and `applied`.
//!
//! The terms of the entries in the log are kept in memory (8 bytes an
//! entry; the log keeps the last [`COMPACT_KEEP`] applied entries), the entries
//! themselves are read from SQLite when raft asks for them.

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use rusqlite::{OptionalExtension, params};

use super::ReplError;
use super::store::{LogStore, dump_state, exec, restore_state};

pub const RAFT_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS raft_log (
    idx INTEGER PRIMARY KEY,
    term INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    data BLOB NOT NULL,
    context BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS raft_meta (k TEXT PRIMARY KEY, v);
";

/// Entries kept once the log is compacted (a replica further behind than
/// this gets a snapshot).
pub const COMPACT_KEEP: u64 = 2_000;
/// Applied entries dropped per Ready at most, once more than
/// [`COMPACT_KEEP`] are in the log: the log is trimmed a little at a time,
/// about as fast as it grows, so no Ready pays for deleting thousands of
/// entries at once (that stalled every member for ~50 ms, all at about the
/// same index).
pub const COMPACT_STEP: u64 = 64;

/// Terms above this are refused as input (a forged or corrupt message
/// must not push a term to where `term + 1` overflows); real terms grow by
/// one an election.
pub const MAX_TERM: u64 = 1 << 48;

pub struct RaftStorage<S: LogStore> {
    /// Always there but while a stopped replica hands it back.
    store: Option<S>,
    hard: HardState,
    conf: ConfState,
    /// Index and term of the entry just before the first one in the log.
    snap: (u64, u64),
    /// Terms of the entries in the log, from `snap.0 + 1`.
    terms: Vec<u64>,
    applied: u64,
    /// The connection's `synchronous` setting now (FULL when true).
    synced: Option<bool>,
}

fn storage_err(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

impl<S: LogStore> RaftStorage<S> {
    /// Opens the raft state in `store`'s database; a new one gets `voters`
    /// as its configuration. A store whose voters differ is refused:
    /// membership is the group's nodes in lab.toml, fixed for its life.
    pub fn open(store: S, voters: &[u64]) -> Result<Self, ReplError> {
        let c = store.conn();
        c.execute_batch(RAFT_SCHEMA)?;
        // The primary/backup replication's tables, if an old data dir.
        c.execute_batch("DROP TABLE IF EXISTS log; DROP TABLE IF EXISTS meta;")?;
        let hard = match meta_blob(c, "hard")? {
            Some(b) => {
                HardState::parse_from_bytes(&b).map_err(|e| ReplError::Storage(e.to_string()))?
            }
            None => HardState::default(),
        };
        let conf = match meta_blob(c, "conf")? {
            Some(b) => {
                ConfState::parse_from_bytes(&b).map_err(|e| ReplError::Storage(e.to_string()))?
            }
            None => {
                let conf = ConfState {
                    voters: voters.to_vec(),
                    ..Default::default()
                };
                set_meta_blob(c, "conf", &conf.write_to_bytes().map_err(storage)?)?;
                conf
            }
        };
        let mut have = conf.voters.clone();
        have.sort_unstable();
        let mut want = voters.to_vec();
        want.sort_unstable();
        if have != want {
            return Err(ReplError::Storage(format!(
                "this data dir belongs to a group of {} node(s) ({have:?}); lab.toml now has {} ({want:?}). \
                 Membership is fixed: use a new data dir for the new group",
                have.len(),
                want.len()
            )));
        }
        let snap = (meta_int(c, "snap_index")?, meta_int(c, "snap_term")?);
        let applied = meta_int(c, "applied")?.max(snap.0);
        let terms = {
            let mut stmt = c.prepare("SELECT idx, term FROM raft_log ORDER BY idx")?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })?;
            let mut terms = Vec::new();
            for (n, row) in rows.enumerate() {
                let (idx, term) = row?;
                if idx != snap.0 + 1 + n as u64 {
                    return Err(ReplError::Storage(format!(
                        "the raft log has a gap at {idx} (expected {})",
                        snap.0 + 1 + n as u64
                    )));
                }
                terms.push(term);
            }
            terms
        };
        Ok(Self {
            store: Some(store),
            hard,
            conf,
            snap,
            terms,
            applied,
            synced: None,
        })
    }

    pub fn store(&self) -> &S {
        self.store
            .as_ref()
            .expect("the store is taken only when the replica stops")
    }

    pub fn store_mut(&mut self) -> &mut S {
        self.store
            .as_mut()
            .expect("the store is taken only when the replica stops")
    }

    /// Hands the store back (the replica stops; nothing uses this after).
    pub fn take_store(&mut self) -> S {
        self.store.take().expect("the store is taken once")
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard
    }

    pub fn last(&self) -> u64 {
        self.snap.0 + self.terms.len() as u64
    }

    fn first(&self) -> u64 {
        self.snap.0 + 1
    }

    fn term_of(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snap.0 {
            return Ok(self.snap.1);
        }
        if idx < self.snap.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.terms
            .get((idx - self.snap.0 - 1) as usize)
            .copied()
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    /// Begins the transaction of one Ready; `sync`: its commit must be on
    /// disk before it returns (new log entries, vote, term, snapshot). A
    /// transaction that only applies committed entries commits without an
    /// fsync: WAL keeps transactions in order, so a later synced commit
    /// makes it durable too, and a crash before that loses only applies that
    /// the log replays.
    pub fn begin(&mut self, sync: bool) -> Result<(), ReplError> {
        if self.synced != Some(sync) {
            let level = if sync { "FULL" } else { "NORMAL" };
            self.store()
                .conn()
                .pragma_update(None, "synchronous", level)?;
            self.synced = Some(sync);
        }
        exec(self.store().conn(), "BEGIN IMMEDIATE", [])?;
        Ok(())
    }

    /// Commits it (one fsync for everything the Ready did).
    pub fn commit(&self) -> Result<(), ReplError> {
        exec(self.store().conn(), "COMMIT", [])?;
        Ok(())
    }

    /// Appends entries, replacing any from their first index on.
    pub fn append(&mut self, ents: &[Entry]) -> Result<(), ReplError> {
        let Some(first) = ents.first() else {
            return Ok(());
        };
        if first.index <= self.snap.0 || first.index > self.last() + 1 {
            return Err(ReplError::Storage(format!(
                "append at {} does not fit a log of {}..={}",
                first.index,
                self.first(),
                self.last()
            )));
        }
        let c = self.store.as_ref().expect("the store is there").conn();
        if first.index <= self.last() {
            exec(
                c,
                "DELETE FROM raft_log WHERE idx >= ?1",
                [first.index as i64],
            )?;
            self.terms.truncate((first.index - self.first()) as usize);
        }
        for e in ents {
            exec(
                c,
                "INSERT INTO raft_log (idx, term, kind, data, context) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    e.index as i64,
                    e.term as i64,
                    e.get_entry_type() as i32,
                    &e.data[..],
                    &e.context[..]
                ],
            )?;
            self.terms.push(e.term);
        }
        Ok(())
    }

    pub fn set_hard_state(&mut self, hs: HardState) -> Result<(), ReplError> {
        set_meta_blob(
            self.store().conn(),
            "hard",
            &hs.write_to_bytes().map_err(storage)?,
        )?;
        self.hard = hs;
        Ok(())
    }

    pub fn set_commit(&mut self, commit: u64) -> Result<(), ReplError> {
        let mut hs = self.hard.clone();
        hs.commit = commit;
        self.set_hard_state(hs)
    }

    pub fn set_applied(&mut self, applied: u64) -> Result<(), ReplError> {
        set_meta_int(self.store().conn(), "applied", applied)?;
        self.applied = applied;
        Ok(())
    }

    /// Replaces state and log with a snapshot from the leader.
    pub fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<(), ReplError> {
        let meta = snap.get_metadata();
        let c = self.store.as_ref().expect("the store is there").conn();
        restore_state(c, &snap.data)?;
        exec(c, "DELETE FROM raft_log", [])?;
        self.terms.clear();
        self.snap = (meta.index, meta.term);
        set_meta_int(c, "snap_index", meta.index)?;
        set_meta_int(c, "snap_term", meta.term)?;
        let mut hs = self.hard.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        self.set_hard_state(hs)?;
        self.set_applied(meta.index)
    }

    /// Drops the oldest applied entries beyond the last [`COMPACT_KEEP`],
    /// [`COMPACT_STEP`] at most per call.
    pub fn maybe_compact(&mut self) -> Result<(), ReplError> {
        if self.applied <= self.snap.0.saturating_add(COMPACT_KEEP) {
            return Ok(());
        }
        // The new snap index.
        let upto = (self.applied - COMPACT_KEEP).min(self.snap.0 + COMPACT_STEP);
        let term = self
            .term_of(upto)
            .map_err(|e| ReplError::Storage(e.to_string()))?;
        let c = self.store.as_ref().expect("the store is there").conn();
        exec(c, "DELETE FROM raft_log WHERE idx <= ?1", [upto as i64])?;
        set_meta_int(c, "snap_index", upto)?;
        set_meta_int(c, "snap_term", term)?;
        self.terms.drain(..(upto - self.snap.0) as usize);
        self.snap = (upto, term);
        Ok(())
    }
}

fn storage(e: impl std::fmt::Display) -> ReplError {
    ReplError::Storage(e.to_string())
}

fn meta_blob(c: &rusqlite::Connection, k: &str) -> rusqlite::Result<Option<Vec<u8>>> {
    c.prepare_cached("SELECT v FROM raft_meta WHERE k = ?1")?
        .query_row([k], |r| r.get::<_, Vec<u8>>(0))
        .optional()
}

fn set_meta_blob(c: &rusqlite::Connection, k: &str, v: &[u8]) -> rusqlite::Result<()> {
    exec(
        c,
        "INSERT INTO raft_meta (k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
        params![k, v],
    )
    .map(|_| ())
}

fn meta_int(c: &rusqlite::Connection, k: &str) -> rusqlite::Result<u64> {
    Ok(c.prepare_cached("SELECT v FROM raft_meta WHERE k = ?1")?
        .query_row([k], |r| r.get::<_, i64>(0))
        .optional()?
        .unwrap_or(0) as u64)
}

fn set_meta_int(c: &rusqlite::Connection, k: &str, v: u64) -> rusqlite::Result<()> {
    exec(
        c,
        "INSERT INTO raft_meta (k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
        params![k, v as i64],
    )
    .map(|_| ())
}

impl<S: LogStore> raft::Storage for RaftStorage<S> {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard.clone(), self.conf.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snap.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        let mut stmt = self
            .store()
            .conn()
            .prepare_cached(
                "SELECT idx, term, kind, data, context FROM raft_log
                 WHERE idx >= ?1 AND idx < ?2 ORDER BY idx",
            )
            .map_err(storage_err)?;
        let rows = stmt
            .query_map([low as i64, high as i64], |r| {
                let mut e = Entry {
                    index: r.get::<_, i64>(0)? as u64,
                    term: r.get::<_, i64>(1)? as u64,
                    data: r.get::<_, Vec<u8>>(3)?.into(),
                    context: r.get::<_, Vec<u8>>(4)?.into(),
                    ..Default::default()
                };
                let kind = r.get::<_, i32>(2)?;
                e.set_entry_type(match kind {
                    1 => EntryType::EntryConfChange,
                    2 => EntryType::EntryConfChangeV2,
                    _ => EntryType::EntryNormal,
                });
                Ok(e)
            })
            .map_err(storage_err)?;
        let mut out = Vec::new();
        let mut size = 0u64;
        for row in rows {
            let e = row.map_err(storage_err)?;
            size = size.saturating_add(u64::from(e.compute_size()));
            if !out.is_empty() && size > max {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.term_of(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    /// The state as it is now (at `applied`, which raft never asks beyond).
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.applied < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = Snapshot {
            data: dump_state(self.store().conn()).map_err(storage_err)?.into(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = self.applied;
        meta.term = self.term_of(self.applied)?;
        meta.set_conf_state(self.conf.clone());
        Ok(snap)
    }
}

/// One conformance suite for the raft storage, run on every store that is
/// replicated (the simulator's subjects: counters, MOM, catalog, orders).
#[cfg(test)]
mod conformance {
    use raft::Storage as _;

    use super::*;
    use crate::replica::sim::Subject;
    use crate::replica::sim::subjects::{Catalog, Counters, Mom, Orders};

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    fn ctx() -> GetEntriesContext {
        GetEntriesContext::empty(false)
    }

    fn suite<X: Subject>() {
        // A new store: an empty log, the voters given.
        let mut s = RaftStorage::open(X::open(), &[1, 2, 3]).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (1, 0));
        assert_eq!(s.initial_state().unwrap().conf_state.voters, [1, 2, 3]);
        assert_eq!(s.term(0).unwrap(), 0);

        // Append, read back, bounds.
        let five: Vec<Entry> = (1..=5).map(|i| entry(i, 1, b"x")).collect();
        s.append(&five).unwrap();
        assert_eq!(s.last_index().unwrap(), 5);
        assert_eq!(s.entries(2, 5, None, ctx()).unwrap(), five[1..4].to_vec());
        assert_eq!(
            s.entries(1, 6, 1, ctx()).unwrap().len(),
            1,
            "at least one, within max size"
        );
        assert!(
            s.entries(1, 7, None, ctx()).is_err(),
            "beyond the last entry"
        );
        assert!(s.term(6).is_err());

        // A conflicting append replaces the tail; a gap is refused.
        s.append(&[entry(4, 2, b"y")]).unwrap();
        assert_eq!((s.last_index().unwrap(), s.term(4).unwrap()), (4, 2));
        assert!(s.append(&[entry(9, 2, b"z")]).is_err());

        // Hard state and applied survive a restart; so does the log.
        let hs = HardState {
            term: 2,
            vote: 3,
            commit: 3,
            ..Default::default()
        };
        s.set_hard_state(hs.clone()).unwrap();
        s.set_applied(3).unwrap();
        let store = s.take_store();
        let s = RaftStorage::open(store, &[1, 2, 3]).unwrap();
        assert_eq!(s.initial_state().unwrap().hard_state, hs);
        assert_eq!(s.applied(), 3);
        assert_eq!(s.entries(1, 5, None, ctx()).unwrap().len(), 4);
        assert_eq!(s.term(4).unwrap(), 2);
        let mut s = s;
        let store = s.take_store();
        assert!(
            RaftStorage::open(store, &[1, 2]).is_err(),
            "another group size is refused"
        );

        // Compaction keeps the last entries and the term before them.
        let mut s = RaftStorage::open(X::open(), &[1]).unwrap();
        let n = COMPACT_KEEP + 3 * COMPACT_STEP + 10;
        let many: Vec<Entry> = (1..=n).map(|i| entry(i, 1 + i / 500, b"e")).collect();
        s.append(&many).unwrap();
        s.set_applied(n).unwrap();
        s.maybe_compact().unwrap();
        assert_eq!(
            s.first_index().unwrap(),
            COMPACT_STEP + 1,
            "a little at a time"
        );
        for _ in 0..4 {
            s.maybe_compact().unwrap();
        }
        let first = s.first_index().unwrap();
        assert_eq!(first, n - COMPACT_KEEP + 1);
        assert_eq!(s.term(first - 1).unwrap(), 1 + (first - 1) / 500);
        assert!(
            s.entries(first - 1, first + 1, None, ctx()).is_err(),
            "compacted"
        );
        assert_eq!(
            s.entries(first, n + 1, None, ctx()).unwrap().len() as u64,
            COMPACT_KEEP
        );

        // A snapshot carries the state to another store of the kind.
        let mut rng = fastrand::Rng::with_seed(3);
        let mut a = RaftStorage::open(X::open(), &[1, 2]).unwrap();
        for op in 1..=20 {
            let c = X::command(op, &mut rng);
            // Refusals (e.g. a repeated order id) are outcomes too.
            let _ = a.store_mut().atomic(|s| s.apply_command(&c));
        }
        a.append(&(1..=20).map(|i| entry(i, 3, b"c")).collect::<Vec<_>>())
            .unwrap();
        a.set_applied(20).unwrap();
        assert!(a.snapshot(21, 2).is_err(), "not applied that far yet");
        let snap = a.snapshot(10, 2).unwrap();
        assert_eq!(
            (snap.get_metadata().index, snap.get_metadata().term),
            (20, 3)
        );
        let mut b = RaftStorage::open(X::open(), &[1, 2]).unwrap();
        b.append(&[entry(1, 1, b"old")]).unwrap();
        b.apply_snapshot(&snap).unwrap();
        assert_eq!(
            (b.first_index().unwrap(), b.last_index().unwrap()),
            (21, 20)
        );
        assert_eq!((b.applied(), b.term(20).unwrap()), (20, 3));
        assert_eq!(b.hard_state().commit, 20);
        assert_eq!(
            dump_state(b.store().conn()).unwrap(),
            dump_state(a.store().conn()).unwrap()
        );
    }

    #[test]
    fn counters() {
        suite::<Counters>();
    }

    #[test]
    fn mom() {
        suite::<Mom>();
    }

    #[test]
    fn catalog() {
        suite::<Catalog>();
    }

    #[test]
    fn orders() {
        suite::<Orders>();
    }
}
