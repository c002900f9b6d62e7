//! [`SqlStore`]: the bookstore on SQLite (WAL, full sync). A command's writes
//! (stock, restock count, order) go in one savepoint; the stock column
//! cannot go below zero (CHECK). SQL only with bound parameters.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use super::model::{Book, BookError, CatalogFile, Command, Digest, Ledger, Order, Outcome};
use super::store::{BookStore, decide};
use crate::replica::store::{LogStore, exec};

/// Puts the catalog's books in a store that lacks them (stored ones are
/// never overwritten).
fn seed(conn: &Connection, catalog: &CatalogFile) -> Result<(), BookError> {
    for b in catalog.initial_books() {
        exec(
            conn,
            "INSERT OR IGNORE INTO books (id, title, topic, cost, count, initial)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            params![b.id, b.title, b.topic, b.cost, b.count],
        )?;
    }
    Ok(())
}

pub struct SqlStore {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS books (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    topic TEXT NOT NULL,
    cost INTEGER NOT NULL,
    count INTEGER NOT NULL CHECK (count >= 0),
    initial INTEGER NOT NULL,
    restocked INTEGER NOT NULL DEFAULT 0,
    sold INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS orders (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL UNIQUE,
    book INTEGER NOT NULL REFERENCES books (id),
    cost INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    -- 32 bits of a hash of (order_id, book, cost): sums compare replicas
    h INTEGER NOT NULL
);
";

fn book_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Book> {
    Ok(Book {
        id: r.get(0)?,
        title: r.get(1)?,
        count: r.get(2)?,
        cost: r.get(3)?,
        topic: r.get(4)?,
    })
}

fn order_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Order> {
    Ok(Order {
        order_id: r.get(0)?,
        book: r.get(1)?,
        cost: r.get(2)?,
        ts_ms: r.get::<_, i64>(3)? as u64,
    })
}

impl SqlStore {
    /// Opens (or creates) the store at `path`; a new store gets the
    /// catalog's books (books the catalog adds later are added too; stored
    /// ones are never overwritten).
    pub fn open(path: &Path, catalog: &CatalogFile) -> Result<Self, BookError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        Self::with(conn, catalog)
    }

    /// A second, read-only connection to the store at `path` (WAL lets it
    /// read the last committed state while the engine writes), so reads do
    /// not queue behind a commit's fsync. Opens after the writer made the
    /// schema.
    pub fn open_reader(path: &Path) -> Result<Self, BookError> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Self { conn })
    }

    pub fn open_in_memory(catalog: &CatalogFile) -> Result<Self, BookError> {
        Self::with(Connection::open_in_memory()?, catalog)
    }

    fn with(conn: Connection, catalog: &CatalogFile) -> Result<Self, BookError> {
        conn.execute_batch(SCHEMA)?;
        seed(&conn, catalog)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Self { conn })
    }

    /// How many orders, and the sum of their hashes: equal on two stores
    /// (almost surely) only if they hold the same orders.
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

    fn write(&self, e: &super::store::Effect) -> Result<(), BookError> {
        exec(
            &self.conn,
            "UPDATE books SET count = ?2, cost = ?3, restocked = restocked + ?4, sold = sold + ?5
             WHERE id = ?1",
            params![
                e.book.id,
                e.book.count,
                e.book.cost,
                e.restocked,
                i64::from(e.order.is_some())
            ],
        )?;
        if let Some(o) = &e.order {
            exec(
                &self.conn,
                "INSERT INTO orders (order_id, book, cost, ts_ms, h) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![o.order_id, o.book, o.cost, o.ts_ms as i64, o.hash()],
            )?;
        }
        Ok(())
    }
}

impl BookStore for SqlStore {
    fn books(&self) -> Result<Vec<Book>, BookError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, title, count, cost, topic FROM books ORDER BY id")?;
        let rows = stmt.query_map([], book_of)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn book(&self, id: u32) -> Result<Option<Book>, BookError> {
        Ok(self
            .conn
            .prepare_cached("SELECT id, title, count, cost, topic FROM books WHERE id = ?1")?
            .query_row([id], book_of)
            .optional()?)
    }

    fn order(&self, order_id: &str) -> Result<Option<Order>, BookError> {
        Ok(self
            .conn
            .prepare_cached("SELECT order_id, book, cost, ts_ms FROM orders WHERE order_id = ?1")?
            .query_row([order_id], order_of)
            .optional()?)
    }

    fn orders(&self) -> Result<Vec<Order>, BookError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT order_id, book, cost, ts_ms FROM orders ORDER BY seq")?;
        let rows = stmt.query_map([], order_of)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn sales_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Order)>, BookError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT order_id, book, cost, ts_ms, seq FROM orders WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![after, limit], |r| {
            Ok((r.get::<_, i64>(4)? as u64, order_of(r)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn ledger(&self) -> Result<Vec<Ledger>, BookError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, initial, restocked, sold, count FROM books ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok(Ledger {
                book: r.get(0)?,
                initial: r.get(1)?,
                restocked: r.get::<_, i64>(2)? as u64,
                sold: r.get::<_, i64>(3)? as u64,
                count: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn apply(&mut self, command: &Command) -> Result<Outcome, BookError> {
        let earlier = match command {
            Command::Buy { order_id, .. } => self.order(order_id)?,
            _ => None,
        };
        let book = self.book(command.book())?;
        let (effect, outcome) = decide(book.as_ref(), earlier.as_ref(), command)?;
        if let Some(e) = effect {
            exec(&self.conn, "SAVEPOINT cmd", [])?;
            if let Err(err) = self.write(&e) {
                // The write's own error is the one to report; a failed
                // rollback is logged (the store then errs on its next use).
                for undo in ["ROLLBACK TO cmd", "RELEASE cmd"] {
                    if let Err(e) = exec(&self.conn, undo, []) {
                        tracing::error!(error = %e, "catalog store: {undo} failed");
                    }
                }
                return Err(err);
            }
            exec(&self.conn, "RELEASE cmd", [])?;
        }
        Ok(outcome)
    }
}

impl LogStore for SqlStore {
    type Command = Command;
    type Outcome = Outcome;
    type Error = BookError;

    fn conn(&self) -> &Connection {
        &self.conn
    }

    fn apply_command(&mut self, command: &Command) -> Result<Outcome, BookError> {
        BookStore::apply(self, command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::bookstore_conformance_tests!(|c: &CatalogFile| SqlStore::open_in_memory(c).unwrap());

    #[test]
    fn a_reopened_store_keeps_its_sales_and_is_not_reseeded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("books.db");
        let catalog = CatalogFile::built_in();
        {
            let mut s = SqlStore::open(&path, &catalog).unwrap();
            s.conn().execute_batch("BEGIN").unwrap();
            {
                for i in 0..150 {
                    s.apply(&Command::Buy {
                        order_id: format!("o{i}"),
                        book: 1,
                        restock: 10,
                        now_ms: i,
                    })
                    .unwrap();
                }
            }
            s.conn().execute_batch("COMMIT").unwrap();
        }
        let s = SqlStore::open(&path, &catalog).unwrap();
        assert_eq!(s.orders().unwrap().len(), 150);
        let l = s.ledger().unwrap()[0];
        // 100 at first, restocked 10 at each sell-out (after 100, 110, ...).
        assert_eq!((l.sold, l.restocked, l.count), (150, 60, 10));
        assert!(l.balanced());
        assert!(s.ledger().unwrap().iter().all(Ledger::balanced));
    }

    #[test]
    fn the_database_refuses_negative_stock() {
        let s = SqlStore::open_in_memory(&CatalogFile::built_in()).unwrap();
        let r = s
            .conn
            .execute("UPDATE books SET count = -1 WHERE id = 1", []);
        assert!(r.is_err(), "CHECK (count >= 0)");
    }
}
