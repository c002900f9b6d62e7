//! [`OrderStore`]: what the `order` servers keep — every order, recorded
//! once the catalog has taken its copy (SQLite, WAL, full sync; replicated
//! like the catalog). Recording is idempotent by order id, so a buy retried
//! after a failover records its order once, and so is the reconciler's
//! record of a sale whose buy was abandoned midway. `reconciled` is how far
//! (in the catalog's sale order) every sale is known to have its order.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::model::{BookError, Digest, Order};
use crate::replica::store::{LogStore, exec};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orders (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL UNIQUE,
    book INTEGER NOT NULL,
    cost INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    h INTEGER NOT NULL
);
-- Buys begun whose order was not recorded yet, as an earlier version kept
-- them (see `OrderCommand::Intend`); no longer written.
CREATE TABLE IF NOT EXISTS intents (
    order_id TEXT PRIMARY KEY,
    book INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL
);
-- Every sale of the catalog up to `upto` (its place in the sale order) has
-- its order here.
CREATE TABLE IF NOT EXISTS reconciled (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    upto INTEGER NOT NULL
);
";

/// A change to the order store; the unit of its replication log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OrderCommand {
    /// Record a sale the catalog made.
    Record { order: Order },
    /// Every catalog sale up to `upto` has its order (never moves back).
    Reconciled { upto: u64 },
    /// Legacy: a buy began (an earlier version recorded each buy's intent
    /// before selling; its logs still replay). No longer proposed: the
    /// catalog's sales are what the reconciler finishes.
    Intend {
        order_id: String,
        book: u32,
        ts_ms: u64,
    },
    /// Legacy: the catalog refused the sale of an intent.
    Abandon { order_id: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    pub order: Order,
    /// This order id was recorded before (nothing changed now).
    pub repeat: bool,
}

pub struct OrderStore {
    conn: Connection,
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
        conn.set_prepared_statement_cache_capacity(32);
        Ok(Self { conn })
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

    /// How far (in the catalog's sale order) every sale has its order.
    pub fn reconciled(&self) -> Result<u64, BookError> {
        Ok(self
            .conn
            .prepare_cached("SELECT upto FROM reconciled WHERE id = 0")?
            .query_row([], |r| r.get::<_, i64>(0))
            .optional()?
            .map_or(0, |n| n.max(0) as u64))
    }

    /// Those of `order_ids` that have no order here.
    pub fn missing(&self, order_ids: &[String]) -> Result<Vec<String>, BookError> {
        let mut out = Vec::new();
        for id in order_ids {
            if self.order(id)?.is_none() {
                out.push(id.clone());
            }
        }
        Ok(out)
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
    /// The order, for `Record`; nothing for the others.
    type Outcome = Option<Recorded>;
    type Error = BookError;

    fn conn(&self) -> &Connection {
        &self.conn
    }

    fn apply_command(&mut self, command: &OrderCommand) -> Result<Option<Recorded>, BookError> {
        let order = match command {
            OrderCommand::Record { order } => order,
            OrderCommand::Reconciled { upto } => {
                let upto = i64::try_from(*upto).unwrap_or(i64::MAX);
                exec(
                    &self.conn,
                    "INSERT INTO reconciled (id, upto) VALUES (0, ?1)
                     ON CONFLICT (id) DO UPDATE SET upto = MAX(upto, excluded.upto)",
                    [upto],
                )?;
                return Ok(None);
            }
            OrderCommand::Intend {
                order_id,
                book,
                ts_ms,
            } => {
                if self.order(order_id)?.is_none() {
                    exec(
                        &self.conn,
                        "INSERT OR IGNORE INTO intents (order_id, book, ts_ms) VALUES (?1, ?2, ?3)",
                        params![order_id, book, *ts_ms as i64],
                    )?;
                }
                return Ok(None);
            }
            OrderCommand::Abandon { order_id } => {
                exec(
                    &self.conn,
                    "DELETE FROM intents WHERE order_id = ?1",
                    [order_id],
                )?;
                return Ok(None);
            }
        };
        exec(
            &self.conn,
            "DELETE FROM intents WHERE order_id = ?1",
            [&order.order_id],
        )?;
        if let Some(earlier) = self.order(&order.order_id)? {
            if earlier.book != order.book {
                return Err(BookError::BadRequest(format!(
                    "order {} was for book {}, not {}",
                    order.order_id, earlier.book, order.book
                )));
            }
            return Ok(Some(Recorded {
                order: earlier,
                repeat: true,
            }));
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
        Ok(Some(Recorded {
            order: order.clone(),
            repeat: false,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::store::{dump_state, restore_state};

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

    fn apply(s: &mut OrderStore, c: OrderCommand) -> Result<Recorded, BookError> {
        s.atomic(|s| s.apply_command(&c))
            .map(|r| r.expect("a record has an outcome"))
    }

    #[test]
    fn the_reconciled_mark_only_moves_on_and_missing_orders_are_found() {
        let mut s = OrderStore::open_in_memory().unwrap();
        assert_eq!(s.reconciled().unwrap(), 0);
        for (upto, want) in [(5, 5), (3, 5), (9, 9)] {
            let c = OrderCommand::Reconciled { upto };
            assert_eq!(s.atomic(|s| s.apply_command(&c)).unwrap(), None);
            assert_eq!(s.reconciled().unwrap(), want, "never back");
        }
        apply(&mut s, record("o1", 1)).unwrap();
        let ids: Vec<String> = ["o0", "o1", "o2"].map(String::from).to_vec();
        assert_eq!(s.missing(&ids).unwrap(), ["o0", "o2"]);
        // A legacy intent changes no order.
        let legacy = OrderCommand::Intend {
            order_id: "o5".into(),
            book: 1,
            ts_ms: 1,
        };
        s.atomic(|s| s.apply_command(&legacy)).unwrap();
        assert_eq!(s.orders().unwrap(), vec![order("o1", 1)]);
    }

    #[test]
    fn an_order_is_recorded_once() {
        let mut s = OrderStore::open_in_memory().unwrap();
        assert!(!apply(&mut s, record("o1", 1)).unwrap().repeat);
        assert!(
            apply(&mut s, record("o1", 1)).unwrap().repeat,
            "a retry is the same order"
        );
        let wrong = apply(&mut s, record("o1", 2));
        assert!(matches!(wrong, Err(BookError::BadRequest(_))));
        assert_eq!(s.orders().unwrap(), vec![order("o1", 1)]);
        assert_eq!(s.per_book().unwrap(), vec![(1, 1)]);
    }

    #[test]
    fn a_replica_restored_from_a_snapshot_has_the_same_orders_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = OrderStore::open(&dir.path().join("p.db")).unwrap();
        for i in 0..50 {
            apply(&mut p, record(&format!("o{i}"), 1 + i % 7)).unwrap();
        }
        let mut r = OrderStore::open(&dir.path().join("r.db")).unwrap();
        apply(&mut r, record("stale", 1)).unwrap();
        assert_ne!(r.digest().unwrap(), p.digest().unwrap());
        restore_state(r.conn(), &dump_state(p.conn()).unwrap()).unwrap();
        assert_eq!(r.orders().unwrap(), p.orders().unwrap());
        assert_eq!(r.digest().unwrap(), p.digest().unwrap());
        assert_eq!(r.digest().unwrap().orders, 50);
        // Both go on alike (AUTOINCREMENT included).
        apply(&mut p, record("next", 2)).unwrap();
        apply(&mut r, record("next", 2)).unwrap();
        assert_eq!(r.orders().unwrap(), p.orders().unwrap());
    }
}
