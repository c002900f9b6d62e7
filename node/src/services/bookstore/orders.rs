//! [`OrderStore`]: what the `order` servers keep — every order, recorded
//! once the catalog has taken its copy (SQLite, WAL, full sync; replicated
//! like the catalog). Recording is idempotent by order id, so a buy retried
//! after a failover records its order once.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::model::{BookError, Digest, Order};
use crate::replica::Position;
use crate::replica::log::{LOG_SCHEMA, LogStore, exec};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orders (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL UNIQUE,
    book INTEGER NOT NULL,
    cost INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    h INTEGER NOT NULL
);
";

/// A change to the order store; the unit of its replication log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OrderCommand {
    /// Record a sale the catalog made.
    Record { order: Order },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    pub order: Order,
    /// This order id was recorded before (nothing changed now).
    pub repeat: bool,
}

pub struct OrderStore {
    conn: Connection,
    tip: Option<Position>,
}

fn order_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Order> {
    Ok(Order {
        order_id: r.get(0)?,
        book: r.get(1)?,
        cost: r.get(2)?,
        ts_ms: r.get::<_, i64>(3)? as u64,
    })
}

impl OrderStore {
    pub fn open(path: &Path) -> Result<Self, BookError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        Self::with(conn)
    }

    pub fn open_in_memory() -> Result<Self, BookError> {
        Self::with(Connection::open_in_memory()?)
    }

    fn with(conn: Connection) -> Result<Self, BookError> {
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(LOG_SCHEMA)?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(Self { conn, tip: None })
    }

    pub fn order(&self, order_id: &str) -> Result<Option<Order>, BookError> {
        Ok(self
            .conn
            .prepare_cached("SELECT order_id, book, cost, ts_ms FROM orders WHERE order_id = ?1")?
            .query_row([order_id], order_of)
            .optional()?)
    }

    /// Every order, in the order they were recorded.
    pub fn orders(&self) -> Result<Vec<Order>, BookError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT order_id, book, cost, ts_ms FROM orders ORDER BY seq")?;
        let rows = stmt.query_map([], order_of)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Orders per book id.
    pub fn per_book(&self) -> Result<Vec<(u32, u64)>, BookError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT book, COUNT(*) FROM orders GROUP BY book ORDER BY book")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn digest(&self) -> Result<Digest, BookError> {
        Ok(self
            .conn
            .prepare_cached("SELECT COUNT(*), COALESCE(SUM(h), 0) FROM orders")?
            .query_row([], |r| {
                Ok(Digest {
                    orders: r.get::<_, i64>(0)? as u64,
                    sum: r.get::<_, i64>(1)? as u64,
                })
            })?)
    }
}

impl LogStore for OrderStore {
    type Command = OrderCommand;
    type Outcome = Recorded;
    type Error = BookError;

    fn conn(&self) -> &Connection {
        &self.conn
    }

    fn tip(&self) -> Option<Position> {
        self.tip
    }

    fn set_tip(&mut self, tip: Option<Position>) {
        self.tip = tip;
    }

    fn apply_command(&mut self, command: &OrderCommand) -> Result<Recorded, BookError> {
        let OrderCommand::Record { order } = command;
        if let Some(earlier) = self.order(&order.order_id)? {
            if earlier.book != order.book {
                return Err(BookError::BadRequest(format!(
                    "order {} was for book {}, not {}",
                    order.order_id, earlier.book, order.book
                )));
            }
            return Ok(Recorded {
                order: earlier,
                repeat: true,
            });
        }
        exec(
            &self.conn,
            "INSERT INTO orders (order_id, book, cost, ts_ms, h) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                order.order_id,
                order.book,
                order.cost,
                order.ts_ms as i64,
                order.hash()
            ],
        )?;
        Ok(Recorded {
            order: order.clone(),
            repeat: false,
        })
    }

    fn changed(outcome: &Recorded) -> bool {
        !outcome.repeat
    }

    fn clear_state(&mut self) -> Result<(), BookError> {
        self.conn
            .execute_batch("DELETE FROM orders; DELETE FROM sqlite_sequence;")?;
        Ok(())
    }

    fn json_len(command: &OrderCommand) -> usize {
        let OrderCommand::Record { order } = command;
        256 + 6 * order.order_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::log::apply_entries;

    fn order(id: &str, book: u32) -> Order {
        Order {
            order_id: id.into(),
            book,
            cost: 10,
            ts_ms: 1,
        }
    }

    fn record(id: &str, book: u32) -> OrderCommand {
        OrderCommand::Record {
            order: order(id, book),
        }
    }

    #[test]
    fn an_order_is_recorded_once_and_logged_once() {
        let mut s = OrderStore::open_in_memory().unwrap();
        let (first, entry) = s.apply_logged(record("o1", 1), Some(1));
        assert!(!first.unwrap().repeat);
        assert!(entry.is_some());
        let (again, entry) = s.apply_logged(record("o1", 1), Some(1));
        assert!(again.unwrap().repeat, "a retry is the same order");
        assert!(
            entry.is_none(),
            "a repeat changes nothing, so is not logged"
        );
        let (wrong, _) = s.apply_logged(record("o1", 2), Some(1));
        assert!(matches!(wrong, Err(BookError::BadRequest(_))));
        assert_eq!(s.orders().unwrap(), vec![order("o1", 1)]);
        assert_eq!(s.per_book().unwrap(), vec![(1, 1)]);
    }

    #[test]
    fn a_replica_applying_the_log_has_the_same_orders_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = OrderStore::open(&dir.path().join("p.db")).unwrap();
        for i in 0..50 {
            let (r, _) = p.apply_logged(record(&format!("o{i}"), 1 + i % 7), Some(1));
            r.unwrap();
        }
        let log = p.entries_after(0, 1000, usize::MAX).unwrap();
        let mut r = OrderStore::open(&dir.path().join("r.db")).unwrap();
        apply_entries(&mut r, &log[..20], 1).unwrap();
        assert_ne!(r.digest().unwrap(), p.digest().unwrap());
        apply_entries(&mut r, &log[10..], 1).unwrap();
        assert_eq!(r.orders().unwrap(), p.orders().unwrap());
        assert_eq!(r.digest().unwrap(), p.digest().unwrap());
        assert_eq!(r.digest().unwrap().orders, 50);
        // A reset (diverged replica) forgets everything.
        r.reset().unwrap();
        assert_eq!(r.digest().unwrap(), Digest::default());
        assert_eq!(r.position().unwrap(), Position::default());
    }
}
