//! [`SqlStore`]: the MOM's durable store on SQLite (WAL). Every method runs
//! in a savepoint, so it is atomic on its own and also inside the engine's
//! group-commit transaction. SQL only with bound parameters.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use super::model::{CONSUME_BYTES, ChannelInfo, Command, Delivery, Kind, MomError, Outcome};
use super::store::{MomStore, recipient};
use crate::replica::store::{LogStore, exec};

pub struct SqlStore {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS channels (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    published INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, name)
);
CREATE TABLE IF NOT EXISTS subs (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    user TEXT NOT NULL,
    PRIMARY KEY (kind, name, user)
);
CREATE TABLE IF NOT EXISTS copies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    recipient TEXT NOT NULL,
    body TEXT NOT NULL,
    published_ms INTEGER NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    consumer TEXT,
    visible_at INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS copies_in_order ON copies (kind, name, recipient, id);
";

/// Schema changes after the first version, in order; `PRAGMA user_version`
/// counts those applied. Version 1: a per-channel count of stored copies and
/// an index of the copies ever handed out, so depths are read without
/// scanning a channel's messages. Version 2: each channel's place in the
/// order of creation (the seed's API lists in that order). Version 3:
/// private channels and the users granted access to them.
const MIGRATIONS: &[&str] = &[
    "
ALTER TABLE channels ADD COLUMN stored INTEGER NOT NULL DEFAULT 0;
UPDATE channels SET stored =
    (SELECT COUNT(*) FROM copies m WHERE m.kind = channels.kind AND m.name = channels.name);
CREATE INDEX copies_handed_out ON copies (kind, name, visible_at) WHERE visible_at > 0;
",
    "
ALTER TABLE channels ADD COLUMN created INTEGER NOT NULL DEFAULT 0;
UPDATE channels SET created = rowid;
",
    "
ALTER TABLE channels ADD COLUMN private INTEGER NOT NULL DEFAULT 0;
CREATE TABLE grants (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    user TEXT NOT NULL,
    PRIMARY KEY (kind, name, user)
);
",
];

impl SqlStore {
    /// Whether `user` could consume a message of the channel now (a read:
    /// lets a waiting consume look without writing to the log).
    pub fn has_visible(
        &self,
        kind: Kind,
        name: &str,
        user: &str,
        now_ms: u64,
    ) -> Result<bool, MomError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT 1 FROM copies WHERE kind = ?1 AND name = ?2 AND recipient = ?3 AND visible_at <= ?4 LIMIT 1",
            )?
            .query_row(
                params![kind.as_str(), name, recipient(kind, user), sql_int(now_ms)],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Opens (or creates) the store at `path`: WAL, full sync on commit.
    pub fn open(path: &Path) -> Result<Self, MomError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        Self::with(conn)
    }

    pub fn open_in_memory() -> Result<Self, MomError> {
        Self::with(Connection::open_in_memory()?)
    }

    fn with(conn: Connection) -> Result<Self, MomError> {
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Self { conn })
    }

    /// Runs `f` on the connection in a savepoint: kept if it succeeds,
    /// undone if it fails.
    fn in_savepoint<T>(
        &mut self,
        f: impl FnOnce(&Connection) -> Result<T, MomError>,
    ) -> Result<T, MomError> {
        self.atomic(|s| f(&s.conn))
    }

    fn owner(conn: &Connection, kind: Kind, name: &str) -> Result<String, MomError> {
        conn.prepare_cached("SELECT owner FROM channels WHERE kind = ?1 AND name = ?2")?
            .query_row(params![kind.as_str(), name], |r| r.get(0))
            .optional()?
            .ok_or_else(|| MomError::not_found(kind, name))
    }
}

/// The MOM's store under the replication: commands in, outcomes out.
impl LogStore for SqlStore {
    type Command = Command;
    type Outcome = Outcome;
    type Error = MomError;

    fn conn(&self) -> &Connection {
        &self.conn
    }

    fn apply_command(&mut self, command: &Command) -> Result<Outcome, MomError> {
        super::store::apply(self, command)
    }

    /// A stored message wakes blocked consumers.
    fn wakes(outcome: &Outcome) -> bool {
        match outcome {
            Outcome::Published { ids } => !ids.is_empty(),
            Outcome::PublishedBatch { ids } => ids.iter().any(|copies| !copies.is_empty()),
            _ => false,
        }
    }
}

/// Applies the migrations this store has not seen yet, each in a transaction.
fn migrate(conn: &Connection) -> Result<(), MomError> {
    let done: usize = conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql} PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))
        .map_err(|e| {
            if let Err(undo) = conn.execute_batch("ROLLBACK") {
                tracing::error!(error = %undo, "MOM store: rollback of a failed migration failed");
            }
            MomError::Storage(format!(
                "cannot migrate the store to version {}: {e}",
                i + 1
            ))
        })?;
    }
    Ok(())
}

/// A time or count as SQLite's signed integer (saturating: no wrap to negative).
fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn kind_of(s: &str) -> Kind {
    if s == "queue" {
        Kind::Queue
    } else {
        Kind::Topic
    }
}

impl MomStore for SqlStore {
    fn add_user(&mut self, id: &str) -> Result<(), MomError> {
        self.in_savepoint(|c| {
            let n = exec(c, "INSERT OR IGNORE INTO users (id) VALUES (?1)", [id])?;
            if n == 0 {
                return Err(MomError::Exists(format!("user `{id}` exists")));
            }
            Ok(())
        })
    }

    fn is_user(&self, id: &str) -> Result<bool, MomError> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM users WHERE id = ?1")?
            .query_row([id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    fn create(&mut self, kind: Kind, name: &str, owner: &str) -> Result<(), MomError> {
        self.in_savepoint(|c| {
            let n = exec(
                c,
                "INSERT OR IGNORE INTO channels (kind, name, owner, created)
                 VALUES (?1, ?2, ?3, (SELECT COALESCE(MAX(created), 0) + 1 FROM channels))",
                params![kind.as_str(), name, owner],
            )?;
            if n == 0 {
                return Err(MomError::Exists(format!("a {kind} named `{name}` exists")));
            }
            Ok(())
        })
    }

    fn delete(&mut self, kind: Kind, name: &str, user: &str) -> Result<(), MomError> {
        self.in_savepoint(|c| {
            if Self::owner(c, kind, name)? != user {
                return Err(MomError::NotOwner(format!(
                    "only the owner may delete {kind} `{name}`"
                )));
            }
            let k = kind.as_str();
            exec(
                c,
                "DELETE FROM channels WHERE kind = ?1 AND name = ?2",
                params![k, name],
            )?;
            for table in ["subs", "copies", "grants"] {
                exec(
                    c,
                    &format!("DELETE FROM {table} WHERE kind = ?1 AND name = ?2"),
                    params![k, name],
                )?;
            }
            Ok(())
        })
    }

    fn subscribe(&mut self, kind: Kind, name: &str, user: &str) -> Result<bool, MomError> {
        self.in_savepoint(|c| {
            Self::owner(c, kind, name)?;
            let n = exec(
                c,
                "INSERT OR IGNORE INTO subs (kind, name, user) VALUES (?1, ?2, ?3)",
                params![kind.as_str(), name, user],
            )?;
            Ok(n == 1)
        })
    }

    fn unsubscribe(&mut self, kind: Kind, name: &str, user: &str) -> Result<bool, MomError> {
        self.in_savepoint(|c| {
            Self::owner(c, kind, name)?;
            let k = kind.as_str();
            let n = exec(
                c,
                "DELETE FROM subs WHERE kind = ?1 AND name = ?2 AND user = ?3",
                params![k, name, user],
            )?;
            if kind == Kind::Topic {
                let gone = exec(
                    c,
                    "DELETE FROM copies WHERE kind = ?1 AND name = ?2 AND recipient = ?3",
                    params![k, name, user],
                )?;
                exec(
                    c,
                    "UPDATE channels SET stored = stored - ?3 WHERE kind = ?1 AND name = ?2",
                    params![k, name, gone as i64],
                )?;
            }
            Ok(n == 1)
        })
    }

    fn is_subscriber(&self, kind: Kind, name: &str, user: &str) -> Result<bool, MomError> {
        Self::owner(&self.conn, kind, name)?;
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM subs WHERE kind = ?1 AND name = ?2 AND user = ?3")?
            .query_row(params![kind.as_str(), name, user], |_| Ok(()))
            .optional()?
            .is_some())
    }

    fn publish_many(
        &mut self,
        kind: Kind,
        name: &str,
        bodies: &[String],
        now_ms: u64,
        skip: Option<&str>,
    ) -> Result<Vec<Vec<u64>>, MomError> {
        self.in_savepoint(|c| {
            let k = kind.as_str();
            let recipients: Vec<String> = match kind {
                Kind::Queue => vec![String::new()],
                Kind::Topic => {
                    let mut stmt = c.prepare_cached(
                        "SELECT user FROM subs WHERE kind = ?1 AND name = ?2 ORDER BY user",
                    )?;
                    stmt.query_map(params![k, name], |r| r.get::<_, String>(0))?
                        .filter(|u| u.as_ref().map_or(true, |u| Some(u.as_str()) != skip))
                        .collect::<Result<_, _>>()?
                }
            };
            let n = exec(
                c,
                "UPDATE channels SET published = published + ?3, stored = stored + ?4
                 WHERE kind = ?1 AND name = ?2",
                params![
                    k,
                    name,
                    bodies.len() as i64,
                    (bodies.len() * recipients.len()) as i64
                ],
            )?;
            if n == 0 {
                return Err(MomError::not_found(kind, name));
            }
            let mut insert = c.prepare_cached(
                "INSERT INTO copies (kind, name, recipient, body, published_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut all = Vec::with_capacity(bodies.len());
            for body in bodies {
                let mut ids = Vec::with_capacity(recipients.len());
                for r in &recipients {
                    insert.execute(params![k, name, r, body, now_ms as i64])?;
                    ids.push(c.last_insert_rowid() as u64);
                }
                all.push(ids);
            }
            Ok(all)
        })
    }

    fn consume(
        &mut self,
        kind: Kind,
        name: &str,
        user: &str,
        now_ms: u64,
        visibility_ms: u64,
        max: usize,
    ) -> Result<Vec<Delivery>, MomError> {
        self.in_savepoint(|c| {
            Self::owner(c, kind, name)?;
            let k = kind.as_str();
            let subscribed = c
                .prepare_cached("SELECT 1 FROM subs WHERE kind = ?1 AND name = ?2 AND user = ?3")?
                .query_row(params![k, name, user], |_| Ok(()))
                .optional()?
                .is_some();
            if !subscribed {
                return Err(MomError::NotSubscribed(format!(
                    "subscribe to {kind} `{name}` before consuming from it"
                )));
            }
            let visible_again_ms = now_ms.saturating_add(visibility_ms);
            let mut out = Vec::new();
            {
                let mut find = c.prepare_cached(
                    "SELECT id, body, deliveries, published_ms FROM copies
                     WHERE kind = ?1 AND name = ?2 AND recipient = ?3 AND visible_at <= ?4
                     ORDER BY id LIMIT ?5",
                )?;
                let limit = i64::try_from(max).unwrap_or(i64::MAX);
                let mut rows = find.query(params![
                    k,
                    name,
                    recipient(kind, user),
                    sql_int(now_ms),
                    limit
                ])?;
                let mut bytes = 0usize;
                while let Some(r) = rows.next()? {
                    let body: String = r.get(1)?;
                    bytes = bytes.saturating_add(body.len());
                    if !out.is_empty() && bytes > CONSUME_BYTES {
                        break;
                    }
                    out.push(Delivery {
                        id: r.get::<_, i64>(0)? as u64,
                        body,
                        deliveries: (r.get::<_, i64>(2)? as u32).saturating_add(1),
                        published_ms: r.get::<_, i64>(3)? as u64,
                        visible_again_ms,
                    });
                }
            }
            if out.is_empty() {
                return Ok(out);
            }
            c.prepare_cached(
                "UPDATE channels SET delivered = delivered + ?3 WHERE kind = ?1 AND name = ?2",
            )?
            .execute(params![k, name, out.len() as i64])?;
            let mut hand_out = c.prepare_cached(
                "UPDATE copies SET deliveries = deliveries + 1, consumer = ?1, visible_at = ?2 WHERE id = ?3",
            )?;
            for d in &out {
                hand_out.execute(params![user, sql_int(visible_again_ms), d.id as i64])?;
            }
            Ok(out)
        })
    }

    fn ack(&mut self, user: &str, id: u64) -> Result<(), MomError> {
        match self.ack_all(user, &[id])?.as_slice() {
            [_] => Ok(()),
            _ => Err(MomError::NotFound(format!(
                "no message {id} delivered to you awaits an ack (acked already, or redelivered to another consumer)"
            ))),
        }
    }

    fn ack_all(&mut self, user: &str, ids: &[u64]) -> Result<Vec<u64>, MomError> {
        self.in_savepoint(|c| {
            let mut take = c.prepare_cached(
                "DELETE FROM copies WHERE id = ?1 AND consumer = ?2 RETURNING kind, name",
            )?;
            let mut acked = Vec::new();
            // Copies taken per channel (a batch is usually of one channel).
            let mut per_channel: Vec<((String, String), i64)> = Vec::new();
            for &id in ids {
                let Ok(sql_id) = i64::try_from(id) else {
                    continue;
                };
                let Some(channel) = take
                    .query_row(params![sql_id, user], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?
                else {
                    continue;
                };
                acked.push(id);
                match per_channel.iter_mut().find(|(ch, _)| *ch == channel) {
                    Some((_, n)) => *n += 1,
                    None => per_channel.push((channel, 1)),
                }
            }
            for ((k, name), n) in per_channel {
                exec(
                    c,
                    "UPDATE channels SET stored = stored - ?3 WHERE kind = ?1 AND name = ?2",
                    params![k, name, n],
                )?;
            }
            Ok(acked)
        })
    }

    fn list(&self, kind: Option<Kind>, now_ms: u64) -> Result<Vec<ChannelInfo>, MomError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT c.kind, c.name, c.owner, c.published, c.delivered, c.created, c.private,
                (SELECT COUNT(*) FROM subs s WHERE s.kind = c.kind AND s.name = c.name),
                c.stored,
                -- Only copies handed out have visible_at > 0 (a partial index).
                (SELECT COUNT(*) FROM copies m INDEXED BY copies_handed_out
                 WHERE m.kind = c.kind AND m.name = c.name AND m.visible_at > 0 AND m.visible_at > ?1)
             FROM channels c
             WHERE ?2 IS NULL OR c.kind = ?2
             ORDER BY c.kind = 'queue', c.name",
        )?;
        let rows = stmt.query_map(params![now_ms as i64, kind.map(Kind::as_str)], |r| {
            Ok(ChannelInfo {
                kind: kind_of(&r.get::<_, String>(0)?),
                name: r.get(1)?,
                owner: r.get(2)?,
                published: r.get::<_, i64>(3)? as u64,
                delivered: r.get::<_, i64>(4)? as u64,
                created: r.get::<_, i64>(5)? as u64,
                private: r.get::<_, i64>(6)? != 0,
                subscribers: r.get::<_, i64>(7)? as u64,
                ready: (r.get::<_, i64>(8)? - r.get::<_, i64>(9)?).max(0) as u64,
                unacked: r.get::<_, i64>(9)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn owner_of(&self, kind: Kind, name: &str) -> Result<String, MomError> {
        Self::owner(&self.conn, kind, name)
    }

    fn set_private(&mut self, kind: Kind, name: &str, private: bool) -> Result<(), MomError> {
        self.in_savepoint(|c| {
            let owner = Self::owner(c, kind, name)?;
            let k = kind.as_str();
            exec(
                c,
                "UPDATE channels SET private = ?3 WHERE kind = ?1 AND name = ?2",
                params![k, name, private as i64],
            )?;
            if !private {
                return Ok(());
            }
            let outsider = "user <> ?3 AND user NOT IN \
                 (SELECT g.user FROM grants g WHERE g.kind = ?1 AND g.name = ?2)";
            if kind == Kind::Topic {
                // Their copies go with them, as on an unsubscribe.
                exec(
                    c,
                    &format!(
                        "DELETE FROM copies WHERE kind = ?1 AND name = ?2 AND recipient IN \
                         (SELECT user FROM subs WHERE kind = ?1 AND name = ?2 AND {outsider})"
                    ),
                    params![k, name, owner],
                )?;
                let stored: i64 = c.query_row(
                    "SELECT COUNT(*) FROM copies WHERE kind = ?1 AND name = ?2",
                    params![k, name],
                    |r| r.get(0),
                )?;
                exec(
                    c,
                    "UPDATE channels SET stored = ?3 WHERE kind = ?1 AND name = ?2",
                    params![k, name, stored],
                )?;
            }
            exec(
                c,
                &format!("DELETE FROM subs WHERE kind = ?1 AND name = ?2 AND {outsider}"),
                params![k, name, owner],
            )?;
            Ok(())
        })
    }

    fn grant(&mut self, kind: Kind, name: &str, user: &str) -> Result<(), MomError> {
        self.in_savepoint(|c| {
            Self::owner(c, kind, name)?;
            exec(
                c,
                "INSERT OR IGNORE INTO grants (kind, name, user) VALUES (?1, ?2, ?3)",
                params![kind.as_str(), name, user],
            )?;
            Ok(())
        })
    }

    fn may_subscribe(&self, kind: Kind, name: &str, user: &str) -> Result<bool, MomError> {
        let k = kind.as_str();
        let row = self
            .conn
            .query_row(
                "SELECT c.private, c.owner = ?3,
                    EXISTS (SELECT 1 FROM grants g WHERE g.kind = ?1 AND g.name = ?2 AND g.user = ?3)
                 FROM channels c WHERE c.kind = ?1 AND c.name = ?2",
                params![k, name, user],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, bool>(1)?, r.get::<_, bool>(2)?)),
            )
            .optional()?;
        match row {
            None => Err(MomError::not_found(kind, name)),
            Some((private, owner, granted)) => Ok(private == 0 || owner || granted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::mom::model::Command;
    use crate::services::mom::store::{apply, user_id};

    crate::mom_conformance_tests!(SqlStore::open_in_memory().unwrap());

    #[test]
    fn a_reopened_store_has_everything_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mom.db");
        let a = user_id("a");
        {
            let mut s = SqlStore::open(&path).unwrap();
            let script = [
                Command::AddUser { key: a.clone() },
                Command::Create {
                    kind: Kind::Queue,
                    name: "q".into(),
                    owner: a.clone(),
                    subscribe: false,
                },
                Command::Subscribe {
                    kind: Kind::Queue,
                    name: "q".into(),
                    user: a.clone(),
                },
            ];
            for c in &script {
                apply(&mut s, c).unwrap();
            }
            // A group commit of 100 publishes.
            s.conn().execute_batch("BEGIN").unwrap();
            {
                for i in 0..100 {
                    s.publish(Kind::Queue, "q", &format!("m{i}"), i).unwrap();
                }
            }
            s.conn().execute_batch("COMMIT").unwrap();
        }
        let mut s = SqlStore::open(&path).unwrap();
        assert!(s.is_user(&a).unwrap());
        assert_eq!(s.list(None, 0).unwrap()[0].ready, 100);
        let d = s
            .consume(Kind::Queue, "q", &a, 1000, 10, 1)
            .unwrap()
            .remove(0);
        assert_eq!((d.id, d.body.as_str()), (1, "m0"));
    }

    #[test]
    fn names_and_bodies_are_data_not_sql() {
        let mut s = SqlStore::open_in_memory().unwrap();
        let a = user_id("a");
        s.add_user(&a).unwrap();
        s.create(Kind::Queue, "x'); DROP TABLE copies; --", &a)
            .unwrap();
        s.subscribe(Kind::Queue, "x'); DROP TABLE copies; --", &a)
            .unwrap();
        s.publish(
            Kind::Queue,
            "x'); DROP TABLE copies; --",
            "'; DELETE FROM users; --",
            1,
        )
        .unwrap();
        let d = s
            .consume(Kind::Queue, "x'); DROP TABLE copies; --", &a, 2, 10, 1)
            .unwrap()
            .remove(0);
        assert_eq!(d.body, "'; DELETE FROM users; --");
        assert!(s.is_user(&a).unwrap());
    }

    #[test]
    fn a_store_of_the_first_version_is_migrated_with_its_depths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mom.db");
        {
            // As the first version left it: no `stored` column, version 0.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(SCHEMA).unwrap();
            c.execute_batch(
                "INSERT INTO users VALUES ('ua');
                 INSERT INTO channels (kind, name, owner) VALUES ('queue', 'q', 'ua');
                 INSERT INTO subs VALUES ('queue', 'q', 'ua');
                 INSERT INTO copies (kind, name, recipient, body, published_ms)
                     VALUES ('queue', 'q', '', 'a', 1), ('queue', 'q', '', 'b', 1);",
            )
            .unwrap();
        }
        for _ in 0..2 {
            // Migrates once; opening again changes nothing.
            let mut s = SqlStore::open(&path).unwrap();
            let version: i64 = s
                .conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap();
            assert_eq!(version as usize, MIGRATIONS.len());
            assert_eq!(s.list(None, 0).unwrap()[0].ready, 2);
            let d = s
                .consume(Kind::Queue, "q", "ua", 10, 1000, 1)
                .unwrap()
                .remove(0);
            s.ack("ua", d.id).unwrap();
            let info = &s.list(None, 10).unwrap()[0];
            assert_eq!((info.ready, info.unacked), (1, 0));
            s.publish(Kind::Queue, "q", "a", 1).unwrap();
        }
    }
}
