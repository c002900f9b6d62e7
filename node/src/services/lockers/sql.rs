//! The SQLite stores the replicas run: [`SqlUsers`] (group `users`) and
//! [`SqlLockers`] (group `lockers`), each a [`LogStore`] on WAL with full
//! sync. Every statement binds its values (a name is data, never SQL); a
//! take is one conditional `UPDATE … RETURNING`, and the schema itself
//! keeps a user from holding two lockers (`holder` is unique).

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use super::model::{
    Done, Holder, Locker, LockerError, LockerId, LockerReply, LockerRequest, LockersCommand, Op,
    Outgoing, User, UserId, UsersCommand, UsersOutcome,
};
use super::state::{LockerTable, REMEMBERED, UserTable, apply_lockers, apply_users};
use crate::replica::store::{LogStore, exec};

const USERS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    locker INTEGER,
    pending TEXT,
    last TEXT,
    since_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request TEXT NOT NULL UNIQUE,
    op TEXT NOT NULL,
    user INTEGER NOT NULL,
    name TEXT NOT NULL,
    queued_ms INTEGER NOT NULL
);
";

const LOCKERS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS lockers (
    id INTEGER PRIMARY KEY,
    holder INTEGER UNIQUE,
    holder_name TEXT,
    changed_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS answers (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request TEXT NOT NULL UNIQUE,
    done TEXT NOT NULL
);
";

fn open_conn(path: Option<&Path>, schema: &str) -> Result<Connection, LockerError> {
    let conn = match path {
        Some(path) => {
            let conn = Connection::open(path)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn
        }
        None => Connection::open_in_memory()?,
    };
    conn.execute_batch(schema)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// A time or id as SQLite's signed integer (saturating).
fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, LockerError> {
    serde_json::to_string(v).map_err(|e| LockerError::Storage(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, LockerError> {
    serde_json::from_str(text).map_err(|e| LockerError::Storage(format!("bad stored row: {e}")))
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Take => "take",
        Op::Free => "free",
    }
}

fn op_of(s: &str) -> Op {
    if s == "free" { Op::Free } else { Op::Take }
}

pub struct SqlUsers {
    conn: Connection,
}

type UserRow = (
    i64,
    String,
    Option<i64>,
    Option<String>,
    Option<String>,
    i64,
);

impl SqlUsers {
    pub fn open(path: &Path) -> Result<Self, LockerError> {
        Ok(Self {
            conn: open_conn(Some(path), USERS_SCHEMA)?,
        })
    }

    pub fn open_in_memory() -> Result<Self, LockerError> {
        Ok(Self {
            conn: open_conn(None, USERS_SCHEMA)?,
        })
    }

    fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRow> {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        ))
    }

    fn user_of(row: UserRow) -> Result<User, LockerError> {
        let (id, name, locker, pending, last, since) = row;
        Ok(User {
            id: id as UserId,
            name,
            locker: locker.map(|l| l as LockerId),
            pending: pending.as_deref().map(from_json).transpose()?,
            last: last.as_deref().map(from_json).transpose()?,
            since_ms: since as u64,
        })
    }

    fn one(&self, sql: &str, p: impl rusqlite::Params) -> Result<Option<User>, LockerError> {
        let row = self
            .conn
            .prepare_cached(sql)?
            .query_row(p, Self::row)
            .optional()?;
        row.map(Self::user_of).transpose()
    }
}

const USER_COLUMNS: &str = "SELECT id, name, locker, pending, last, since_ms FROM users";

impl UserTable for SqlUsers {
    fn user(&self, name: &str) -> Result<Option<User>, LockerError> {
        self.one(&format!("{USER_COLUMNS} WHERE name = ?1"), [name])
    }

    fn user_by_id(&self, id: UserId) -> Result<Option<User>, LockerError> {
        self.one(&format!("{USER_COLUMNS} WHERE id = ?1"), [sql_int(id)])
    }

    fn users(&self) -> Result<Vec<User>, LockerError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("{USER_COLUMNS} ORDER BY id"))?;
        let rows = stmt.query_map([], Self::row)?;
        rows.map(|r| Self::user_of(r?)).collect()
    }

    fn insert_user(&mut self, name: &str, now_ms: u64) -> Result<User, LockerError> {
        // The name's UNIQUE constraint decides; one statement.
        let id: Option<i64> = self
            .conn
            .prepare_cached(
                "INSERT INTO users (name, since_ms) VALUES (?1, ?2)
                 ON CONFLICT (name) DO NOTHING RETURNING id",
            )?
            .query_row(params![name, sql_int(now_ms)], |r| r.get(0))
            .optional()?;
        let id = id.ok_or_else(|| LockerError::Exists(name.to_owned()))?;
        Ok(User {
            id: id as UserId,
            name: name.to_owned(),
            locker: None,
            pending: None,
            last: None,
            since_ms: now_ms,
        })
    }

    fn remove_user(&mut self, id: UserId) -> Result<(), LockerError> {
        exec(&self.conn, "DELETE FROM users WHERE id = ?1", [sql_int(id)])?;
        Ok(())
    }

    fn put_user(&mut self, user: &User) -> Result<(), LockerError> {
        let pending = user.pending.as_ref().map(json).transpose()?;
        let last = user.last.as_ref().map(json).transpose()?;
        exec(
            &self.conn,
            "UPDATE users SET locker = ?2, pending = ?3, last = ?4 WHERE id = ?1",
            params![sql_int(user.id), user.locker.map(i64::from), pending, last],
        )?;
        Ok(())
    }

    fn push_out(&mut self, r: &LockerRequest, now_ms: u64) -> Result<(), LockerError> {
        exec(
            &self.conn,
            "INSERT OR IGNORE INTO outbox (request, op, user, name, queued_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                r.request,
                op_name(r.op),
                sql_int(r.user),
                r.name,
                sql_int(now_ms)
            ],
        )?;
        Ok(())
    }

    fn take_out(&mut self, request: &str) -> Result<Option<LockerRequest>, LockerError> {
        let row = self
            .conn
            .prepare_cached("DELETE FROM outbox WHERE request = ?1 RETURNING op, user, name")?
            .query_row([request], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get(2)?))
            })
            .optional()?;
        Ok(row.map(|(op, user, name)| LockerRequest {
            request: request.to_owned(),
            op: op_of(&op),
            user: user as UserId,
            name,
        }))
    }

    fn outbox(&self) -> Result<Vec<Outgoing>, LockerError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT request, op, user, name, queued_ms FROM outbox ORDER BY seq")?;
        let rows = stmt.query_map([], |r| {
            Ok(Outgoing {
                request: LockerRequest {
                    request: r.get(0)?,
                    op: op_of(&r.get::<_, String>(1)?),
                    user: r.get::<_, i64>(2)? as UserId,
                    name: r.get(3)?,
                },
                queued_ms: r.get::<_, i64>(4)? as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn outbox_len(&self) -> Result<u64, LockerError> {
        let n: i64 = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM outbox")?
            .query_row([], |r| r.get(0))?;
        Ok(n as u64)
    }
}

impl LogStore for SqlUsers {
    type Command = UsersCommand;
    type Outcome = UsersOutcome;
    type Error = LockerError;

    fn conn(&self) -> &Connection {
        &self.conn
    }

    fn apply_command(&mut self, command: &UsersCommand) -> Result<UsersOutcome, LockerError> {
        apply_users(self, command)
    }

    /// New requests for the lockers wake the leader's sender; answers wake
    /// those who wait on them.
    fn wakes(outcome: &UsersOutcome) -> bool {
        match outcome {
            UsersOutcome::Added(_) => false,
            UsersOutcome::Deleted(user) => user.is_some(),
            UsersOutcome::Requested(_) | UsersOutcome::Applied(_) => true,
        }
    }
}

pub struct SqlLockers {
    conn: Connection,
}

impl SqlLockers {
    /// Opens the store at `path` with lockers 1 to `count` (lockers are
    /// only ever added: a smaller count keeps the ones there).
    pub fn open(path: &Path, count: LockerId) -> Result<Self, LockerError> {
        Self::with(open_conn(Some(path), LOCKERS_SCHEMA)?, count)
    }

    pub fn open_in_memory(count: LockerId) -> Result<Self, LockerError> {
        Self::with(open_conn(None, LOCKERS_SCHEMA)?, count)
    }

    fn with(conn: Connection, count: LockerId) -> Result<Self, LockerError> {
        {
            let mut add = conn.prepare("INSERT OR IGNORE INTO lockers (id) VALUES (?1)")?;
            for id in 1..=count {
                add.execute([id])?;
            }
        }
        Ok(Self { conn })
    }
}

impl LockerTable for SqlLockers {
    fn lockers(&self) -> Result<Vec<Locker>, LockerError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, holder, holder_name, changed_ms FROM lockers ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            let holder: Option<i64> = r.get(1)?;
            let name: Option<String> = r.get(2)?;
            Ok(Locker {
                id: r.get(0)?,
                holder: holder.map(|user| Holder {
                    user: user as UserId,
                    name: name.unwrap_or_default(),
                }),
                changed_ms: r.get::<_, i64>(3)? as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn held_by(&self, user: UserId) -> Result<Option<LockerId>, LockerError> {
        Ok(self
            .conn
            .prepare_cached("SELECT id FROM lockers WHERE holder = ?1")?
            .query_row([sql_int(user)], |r| r.get(0))
            .optional()?)
    }

    fn take_free(&mut self, holder: &Holder, now_ms: u64) -> Result<Option<LockerId>, LockerError> {
        // One conditional update: the lowest free locker, if it is still free.
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE lockers SET holder = ?1, holder_name = ?2, changed_ms = ?3
                 WHERE id = (SELECT MIN(id) FROM lockers WHERE holder IS NULL)
                   AND holder IS NULL
                 RETURNING id",
            )?
            .query_row(
                params![sql_int(holder.user), holder.name, sql_int(now_ms)],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn release(&mut self, user: UserId, now_ms: u64) -> Result<Option<LockerId>, LockerError> {
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE lockers SET holder = NULL, holder_name = NULL, changed_ms = ?2
                 WHERE holder = ?1 RETURNING id",
            )?
            .query_row(params![sql_int(user), sql_int(now_ms)], |r| r.get(0))
            .optional()?)
    }

    fn answered(&self, request: &str) -> Result<Option<Done>, LockerError> {
        let text: Option<String> = self
            .conn
            .prepare_cached("SELECT done FROM answers WHERE request = ?1")?
            .query_row([request], |r| r.get(0))
            .optional()?;
        text.as_deref().map(from_json).transpose()
    }

    fn record(&mut self, request: &str, done: &Done) -> Result<(), LockerError> {
        let changed = exec(
            &self.conn,
            "INSERT OR IGNORE INTO answers (request, done) VALUES (?1, ?2)",
            params![request, json(done)?],
        )?;
        if changed > 0 {
            let seq = self.conn.last_insert_rowid();
            exec(
                &self.conn,
                "DELETE FROM answers WHERE seq <= ?1",
                [seq - REMEMBERED as i64],
            )?;
        }
        Ok(())
    }
}

impl LogStore for SqlLockers {
    type Command = LockersCommand;
    type Outcome = Vec<LockerReply>;
    type Error = LockerError;

    fn conn(&self) -> &Connection {
        &self.conn
    }

    fn apply_command(&mut self, command: &LockersCommand) -> Result<Vec<LockerReply>, LockerError> {
        apply_lockers(self, command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> SqlUsers {
        SqlUsers::open_in_memory().unwrap()
    }

    fn lockers() -> SqlLockers {
        SqlLockers::open_in_memory(3).unwrap()
    }

    crate::lockers_conformance_tests!(users(), lockers());

    #[test]
    fn one_user_cannot_hold_two_lockers_even_by_hand() {
        let mut l = lockers();
        let ann = Holder {
            user: 1,
            name: "ann".into(),
        };
        assert_eq!(l.take_free(&ann, 1).unwrap(), Some(1));
        // The schema refuses a second locker for the same user.
        assert!(l.take_free(&ann, 2).is_err());
        assert_eq!(l.held_by(1).unwrap(), Some(1));
    }

    #[test]
    fn the_state_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lockers.db");
        {
            let mut l = SqlLockers::open(&path, 20).unwrap();
            let h = Holder {
                user: 5,
                name: "Ольга".into(),
            };
            l.take_free(&h, 7).unwrap();
            l.record("r", &Done::Granted { locker: 1 }).unwrap();
        }
        let l = SqlLockers::open(&path, 20).unwrap();
        assert_eq!(l.lockers().unwrap().len(), 20);
        assert_eq!(l.held_by(5).unwrap(), Some(1));
        assert_eq!(
            l.lockers().unwrap()[0].holder.as_ref().unwrap().name,
            "Ольга"
        );
        assert_eq!(l.answered("r").unwrap(), Some(Done::Granted { locker: 1 }));
    }
}
