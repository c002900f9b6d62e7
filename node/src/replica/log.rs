//! [`LogStore`]: a SQLite store that can be replicated. It says how to
//! apply one of its commands; the trait gives it the rest — transactions
//! and savepoints, an ordered log of the commands that changed it (written
//! in the same savepoint as the change), the log's position, catch-up reads,
//! the highest epoch seen, and a reset.
//!
//! Tables it adds: `log (lsn, epoch, command)` and `meta (k, v)`
//! ([`LOG_SCHEMA`]; a store runs it when it opens).

use std::fmt::{Debug, Display};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Position, ReplError};

/// The log's tables.
pub const LOG_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log (
    lsn INTEGER PRIMARY KEY,
    epoch INTEGER NOT NULL,
    command TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
";

/// One entry of the replication log: a command that changed the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Entry<C> {
    pub lsn: u64,
    pub epoch: u64,
    pub command: C,
}

/// Runs one statement from the connection's statement cache (parsed once).
pub fn exec(c: &Connection, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(p)
}

/// A store whose changes are logged for replicas. Implement the required
/// methods; the provided ones are the log.
pub trait LogStore: Send + 'static {
    type Command: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static;
    type Outcome: Send + 'static;
    type Error: Clone
        + Debug
        + Display
        + Send
        + Sync
        + 'static
        + From<rusqlite::Error>
        + From<ReplError>
        + Into<ReplError>;

    fn conn(&self) -> &Connection;
    /// The log's last position if cached (the store keeps one field for it).
    fn tip(&self) -> Option<Position>;
    fn set_tip(&mut self, tip: Option<Position>);

    /// Applies one command to the state (the caller holds a savepoint).
    fn apply_command(&mut self, command: &Self::Command) -> Result<Self::Outcome, Self::Error>;
    /// Whether an outcome changed the state: only those commands are logged.
    fn changed(outcome: &Self::Outcome) -> bool;
    /// Deletes the whole state (not the log), for [`LogStore::reset`].
    fn clear_state(&mut self) -> Result<(), Self::Error>;
    /// A bound on a command's JSON size (appends are cut to fit a bus message).
    fn json_len(command: &Self::Command) -> usize;
    /// Commands answered once committed on the primary, without waiting for
    /// the replica (e.g. the MOM's acks: a lost one is only a redelivery).
    fn answer_early(_command: &Self::Command) -> bool {
        false
    }
    /// Outcomes that wake [`super::Engine::changes`] waiters.
    fn wakes(_outcome: &Self::Outcome) -> bool {
        false
    }

    /// Runs `f` inside one transaction: everything `f` does commits together
    /// (group commit). Returns `f`'s output and whether the commit succeeded
    /// (if not, nothing `f` did is kept).
    fn batch<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> (T, Result<(), Self::Error>)
    where
        Self: Sized,
    {
        if let Err(e) = exec(self.conn(), "BEGIN IMMEDIATE", []) {
            self.set_tip(None);
            return (f(self), Err(e.into()));
        }
        let out = f(self);
        let committed = exec(self.conn(), "COMMIT", []).map(|_| ()).map_err(|e| {
            let _ = exec(self.conn(), "ROLLBACK", []);
            self.set_tip(None);
            Self::Error::from(e)
        });
        (out, committed)
    }

    /// Runs `f` in a savepoint: kept if it succeeds, undone if it fails.
    fn atomic<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, Self::Error>,
    ) -> Result<T, Self::Error>
    where
        Self: Sized,
    {
        let tip = self.tip();
        exec(self.conn(), "SAVEPOINT op", [])?;
        match f(self) {
            Ok(out) => {
                exec(self.conn(), "RELEASE op", [])?;
                Ok(out)
            }
            Err(e) => {
                let _ = exec(self.conn(), "ROLLBACK TO op", []);
                let _ = exec(self.conn(), "RELEASE op", []);
                self.set_tip(tip);
                Err(e)
            }
        }
    }

    /// Applies `command` and, if `epoch` is given and it changed the store,
    /// appends it to the log in that epoch: both or neither.
    #[allow(clippy::type_complexity)]
    fn apply_logged(
        &mut self,
        command: Self::Command,
        epoch: Option<u64>,
    ) -> (
        Result<Self::Outcome, Self::Error>,
        Option<Entry<Self::Command>>,
    )
    where
        Self: Sized,
    {
        let mut entry = None;
        let outcome = self.atomic(|s| {
            let outcome = s.apply_command(&command)?;
            if let Some(epoch) = epoch
                && Self::changed(&outcome)
            {
                entry = Some(s.append(epoch, command)?);
            }
            Ok(outcome)
        });
        if outcome.is_err() {
            entry = None;
        }
        (outcome, entry)
    }

    /// The last log entry's position (0/0 for an empty log).
    fn position(&self) -> Result<Position, Self::Error> {
        if let Some(tip) = self.tip() {
            return Ok(tip);
        }
        Ok(self
            .conn()
            .prepare_cached("SELECT epoch, lsn FROM log ORDER BY lsn DESC LIMIT 1")?
            .query_row([], |r| {
                Ok(Position {
                    epoch: r.get::<_, i64>(0)? as u64,
                    lsn: r.get::<_, i64>(1)? as u64,
                })
            })
            .optional()?
            .unwrap_or_default())
    }

    /// Appends `command` to the log in `epoch`; returns the entry.
    fn append(
        &mut self,
        epoch: u64,
        command: Self::Command,
    ) -> Result<Entry<Self::Command>, Self::Error> {
        let lsn = self.position()?.lsn + 1;
        let entry = Entry {
            lsn,
            epoch,
            command,
        };
        self.append_entry(&entry)?;
        Ok(entry)
    }

    /// Records an entry (a replica: after applying the primary's command).
    fn append_entry(&mut self, entry: &Entry<Self::Command>) -> Result<(), Self::Error> {
        let text = serde_json::to_string(&entry.command)
            .map_err(|e| ReplError::Storage(format!("cannot encode a log entry: {e}")))?;
        exec(
            self.conn(),
            "INSERT INTO log (lsn, epoch, command) VALUES (?1, ?2, ?3)",
            params![entry.lsn as i64, entry.epoch as i64, text],
        )?;
        self.set_tip(Some(Position {
            epoch: entry.epoch,
            lsn: entry.lsn,
        }));
        Ok(())
    }

    /// Entries after `lsn`, in order: up to `limit` of them, and no more
    /// once their stored text reaches `max_bytes` (at least one, though).
    fn entries_after(
        &self,
        lsn: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry<Self::Command>>, Self::Error> {
        let mut stmt = self.conn().prepare_cached(
            "SELECT lsn, epoch, command FROM log WHERE lsn > ?1 ORDER BY lsn LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![lsn as i64, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        let mut bytes = 0;
        for row in rows {
            if bytes >= max_bytes {
                break;
            }
            let (lsn, epoch, text) = row?;
            bytes += text.len();
            let command = serde_json::from_str(&text)
                .map_err(|e| ReplError::Storage(format!("log entry {lsn} unreadable: {e}")))?;
            out.push(Entry {
                lsn: lsn as u64,
                epoch: epoch as u64,
                command,
            });
        }
        Ok(out)
    }

    /// The epoch of entry `lsn`, if the log has it.
    fn epoch_at(&self, lsn: u64) -> Result<Option<u64>, Self::Error> {
        Ok(self
            .conn()
            .prepare_cached("SELECT epoch FROM log WHERE lsn = ?1")?
            .query_row([lsn as i64], |r| r.get::<_, i64>(0))
            .optional()?
            .map(|e| e as u64))
    }

    /// Forgets the state and the log (a replica whose log diverged from the
    /// primary's starts over from the primary's log).
    fn reset(&mut self) -> Result<(), Self::Error> {
        self.clear_state()?;
        exec(self.conn(), "DELETE FROM log", [])?;
        self.set_tip(None);
        Ok(())
    }

    /// The highest epoch this node has seen.
    fn epoch_seen(&self) -> Result<u64, Self::Error> {
        Ok(self
            .conn()
            .prepare_cached("SELECT v FROM meta WHERE k = 'epoch'")?
            .query_row([], |r| r.get::<_, i64>(0))
            .optional()?
            .unwrap_or(0) as u64)
    }

    fn set_epoch_seen(&mut self, epoch: u64) -> Result<(), Self::Error> {
        exec(
            self.conn(),
            "INSERT INTO meta (k, v) VALUES ('epoch', ?1)
             ON CONFLICT(k) DO UPDATE SET v = MAX(v, excluded.v)",
            [epoch as i64],
        )?;
        Ok(())
    }
}

/// Applies the primary's entries of `epoch` in order, skipping those
/// already here; refuses entries of an older epoch (fencing) and gaps.
pub fn apply_entries<S: LogStore>(
    s: &mut S,
    list: &[Entry<S::Command>],
    epoch: u64,
) -> Result<Position, ReplError> {
    let seen = s.epoch_seen().map_err(Into::into)?;
    if epoch < seen {
        return Err(ReplError::Fenced(format!(
            "entries of epoch {epoch}, but epoch {seen} has begun"
        )));
    }
    s.set_epoch_seen(epoch).map_err(Into::into)?;
    for entry in list {
        let here = s.position().map_err(Into::into)?;
        if entry.lsn <= here.lsn {
            continue;
        }
        if entry.lsn != here.lsn + 1 {
            return Err(ReplError::BadRequest(format!(
                "gap: next entry is {} but this replica is at {}",
                entry.lsn, here.lsn
            )));
        }
        // The primary applied it successfully; so does the replica (same
        // state, same command). Its outcome is the primary's to report.
        let _ = s.apply_logged(entry.command.clone(), None);
        s.append_entry(entry).map_err(Into::into)?;
    }
    s.position().map_err(Into::into)
}
