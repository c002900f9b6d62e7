//! [`LogStore`]: a SQLite store that a replication group keeps equal on
//! every node. It says how to apply one of its commands; the replication
//! applies committed log entries through it, each in a savepoint, in the
//! same transaction that records the raft log and the applied index (see
//! [`super::storage`]).
//!
//! Snapshots (for a replica too far behind for the log) are the store's
//! tables themselves: [`dump_state`] writes every state table, rows and
//! all, and [`restore_state`] replaces them. Nothing per store: the raft
//! tables (`raft_*`) are left out, everything else goes.

use std::fmt::{Debug, Display};

use rusqlite::Connection;
use rusqlite::types::Value;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::ReplError;

/// Runs one statement from the connection's statement cache (parsed once).
pub fn exec(c: &Connection, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(p)
}

/// A store whose state is a function of the commands applied to it, in
/// order: the same commands on two stores give the same state.
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

    /// Applies one command to the state (the caller holds a savepoint).
    /// Must be deterministic: no clock, no randomness (the command carries
    /// them), or replicas differ.
    fn apply_command(&mut self, command: &Self::Command) -> Result<Self::Outcome, Self::Error>;

    /// Outcomes that wake [`super::Engine::changes`] waiters.
    fn wakes(_outcome: &Self::Outcome) -> bool {
        false
    }

    /// Runs `f` in a savepoint: kept if it succeeds, undone if it fails.
    fn atomic<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, Self::Error>,
    ) -> Result<T, Self::Error>
    where
        Self: Sized,
    {
        exec(self.conn(), "SAVEPOINT op", [])?;
        match f(self) {
            Ok(out) => {
                exec(self.conn(), "RELEASE op", [])?;
                Ok(out)
            }
            Err(e) => {
                // Undo, then end the savepoint; if even that fails the
                // enclosing transaction fails at its commit.
                if let Err(undo) = exec(self.conn(), "ROLLBACK TO op", [])
                    .and_then(|_| exec(self.conn(), "RELEASE op", []))
                {
                    tracing::error!(error = %undo, "cannot undo a failed command");
                }
                Err(e)
            }
        }
    }
}

/// One cell of a dumped table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob { blob: Vec<u8> },
}

impl From<Value> for Cell {
    fn from(v: Value) -> Self {
        match v {
            Value::Null => Cell::Null,
            Value::Integer(i) => Cell::Int(i),
            Value::Real(r) => Cell::Real(r),
            Value::Text(t) => Cell::Text(t),
            Value::Blob(b) => Cell::Blob { blob: b },
        }
    }
}

impl From<Cell> for Value {
    fn from(c: Cell) -> Self {
        match c {
            Cell::Null => Value::Null,
            Cell::Int(i) => Value::Integer(i),
            Cell::Real(r) => Value::Real(r),
            Cell::Text(t) => Value::Text(t),
            Cell::Blob { blob } => Value::Blob(blob),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Table {
    name: String,
    columns: Vec<String>,
    rows: Vec<Vec<Cell>>,
}

/// The state tables of a store: every table but the raft's own and the
/// old replication's (`log`, `meta`), with `sqlite_sequence` (so
/// AUTOINCREMENT ids continue the same on every replica).
fn state_tables(c: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = c.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table'
         AND name NOT LIKE 'raft\\_%' ESCAPE '\\' AND name NOT IN ('log', 'meta')
         ORDER BY name",
    )?;
    let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
    names.collect()
}

/// SQLite's own table of AUTOINCREMENT counters.
const SEQUENCE: &str = "sqlite_sequence";

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Every state table, rows and all (a snapshot's data).
pub fn dump_state(c: &Connection) -> Result<Vec<u8>, ReplError> {
    let mut tables = Vec::new();
    for name in state_tables(c)? {
        let mut stmt = c.prepare(&format!("SELECT * FROM {}", quoted(&name)))?;
        let columns: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
        let n = columns.len();
        let rows = stmt.query_map([], |r| {
            (0..n)
                .map(|i| r.get::<_, Value>(i).map(Cell::from))
                .collect::<rusqlite::Result<Vec<Cell>>>()
        })?;
        let rows = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        tables.push(Table {
            name,
            columns,
            rows,
        });
    }
    serde_json::to_vec(&tables)
        .map_err(|e| ReplError::Storage(format!("cannot encode a snapshot: {e}")))
}

/// Replaces every state table with the dumped one (the caller holds a
/// transaction). Tables the dump lacks are emptied.
pub fn restore_state(c: &Connection, data: &[u8]) -> Result<(), ReplError> {
    let tables: Vec<Table> = serde_json::from_slice(data)
        .map_err(|e| ReplError::Storage(format!("unreadable snapshot: {e}")))?;
    for name in state_tables(c)? {
        c.execute(&format!("DELETE FROM {}", quoted(&name)), [])?;
    }
    let here = state_tables(c)?;
    // Inserting into an AUTOINCREMENT table writes its own sequence row,
    // so the dumped sequence rows go in last, over those.
    let (sequence, tables): (Vec<Table>, Vec<Table>) =
        tables.into_iter().partition(|t| t.name == SEQUENCE);
    for t in tables.into_iter().chain(sequence) {
        if t.name == SEQUENCE {
            c.execute(&format!("DELETE FROM {SEQUENCE}"), [])?;
        }
        if !here.contains(&t.name) {
            return Err(ReplError::Storage(format!(
                "the snapshot has a table {} that this store lacks (another version?)",
                t.name
            )));
        }
        if t.columns.is_empty() {
            continue;
        }
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            quoted(&t.name),
            t.columns
                .iter()
                .map(|c| quoted(c))
                .collect::<Vec<_>>()
                .join(", "),
            vec!["?"; t.columns.len()].join(", ")
        );
        let mut stmt = c.prepare(&sql)?;
        for row in t.rows {
            let values: Vec<Value> = row.into_iter().map(Value::from).collect();
            stmt.execute(rusqlite::params_from_iter(values))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_restores_every_state_table_and_nothing_else() {
        let a = Connection::open_in_memory().unwrap();
        a.execute_batch(
            "CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, s TEXT, r REAL, b BLOB);
             CREATE TABLE \"odd \"\"name\" (x);
             CREATE TABLE raft_log (idx INTEGER PRIMARY KEY);
             INSERT INTO items (s, r, b) VALUES ('one', 1.5, x'00ff'), (NULL, NULL, NULL);
             INSERT INTO \"odd \"\"name\" VALUES (7);
             INSERT INTO raft_log VALUES (42);",
        )
        .unwrap();
        // "items" sorts before "sqlite_sequence": its rows go in first.
        let data = dump_state(&a).unwrap();
        let b = Connection::open_in_memory().unwrap();
        b.execute_batch(
            "CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, s TEXT, r REAL, b BLOB);
             CREATE TABLE \"odd \"\"name\" (x);
             CREATE TABLE raft_log (idx INTEGER PRIMARY KEY);
             INSERT INTO items (s) VALUES ('stale'), ('stale'), ('stale');
             INSERT INTO raft_log VALUES (1);",
        )
        .unwrap();
        restore_state(&b, &data).unwrap();
        assert_eq!(dump_state(&b).unwrap(), data, "same state");
        let raft: i64 = b
            .query_row("SELECT idx FROM raft_log", [], |r| r.get(0))
            .unwrap();
        assert_eq!(raft, 1, "raft tables are not state");
        // AUTOINCREMENT continues where the source was.
        b.execute("INSERT INTO items (s) VALUES ('next')", [])
            .unwrap();
        let id: i64 = b
            .query_row("SELECT MAX(id) FROM items", [], |r| r.get(0))
            .unwrap();
        assert_eq!(id, 3);
        assert!(restore_state(&b, b"not json").is_err());
    }
}
