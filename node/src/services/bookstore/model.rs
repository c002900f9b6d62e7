//! The bookstore's vocabulary: the catalog file, books as the seed's API
//! shows them, orders, errors, and the [`Command`]s that change a store
//! (applied in the same order on every replica, they give the same state).

use serde::{Deserialize, Serialize};

/// The catalog shipped in `assets/books.toml` (data, not code).
pub const BUILT_IN_CATALOG: &str = include_str!("../../../../assets/books.toml");

/// One book as the seed's API shows it (`item` entries of search/lookup).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Book {
    pub id: u32,
    pub title: String,
    /// Copies in stock.
    pub count: u32,
    pub cost: u32,
    pub topic: String,
}

/// A sale: recorded with the stock it took, in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Chosen by whoever starts the buy; a retry with the same id is the
    /// same order (never a second sale).
    pub order_id: String,
    pub book: u32,
    pub cost: u32,
    pub ts_ms: u64,
}

impl Order {
    /// 32 bits of FNV-1a over (order_id, book, cost): order stores sum these
    /// to compare their contents cheaply.
    pub fn hash(&self) -> u32 {
        let mut h: u32 = 0x811c_9dc5;
        let bytes = self
            .order_id
            .bytes()
            .chain([0])
            .chain(self.book.to_le_bytes())
            .chain(self.cost.to_le_bytes());
        for b in bytes {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        h
    }
}

/// A summary of a store's orders (count and hash sum) to compare replicas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub orders: u64,
    pub sum: u64,
}

/// What a catalog file says.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogFile {
    pub initial_stock: u32,
    pub restock: u32,
    #[serde(rename = "book")]
    pub books: Vec<CatalogBook>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogBook {
    pub id: u32,
    pub title: String,
    pub topic: String,
    pub cost: u32,
}

/// Why a catalog file is refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog: {0}")]
    Syntax(#[from] toml::de::Error),
    #[error("catalog: no [[book]]")]
    NoBooks,
    #[error("catalog: initial_stock must be at least 1")]
    NoStock,
    #[error("catalog: book id {0} appears twice")]
    DuplicateId(u32),
    #[error("catalog: book {0} needs a title and a topic")]
    Untitled(u32),
}

impl CatalogFile {
    /// Parses and checks a catalog: ids unique, titles and topics not empty,
    /// at least one book, some stock.
    pub fn parse(text: &str) -> Result<Self, CatalogError> {
        let file: Self = toml::from_str(text)?;
        if file.books.is_empty() {
            return Err(CatalogError::NoBooks);
        }
        if file.initial_stock == 0 {
            return Err(CatalogError::NoStock);
        }
        let mut ids = std::collections::BTreeSet::new();
        for b in &file.books {
            if !ids.insert(b.id) {
                return Err(CatalogError::DuplicateId(b.id));
            }
            if b.title.trim().is_empty() || b.topic.trim().is_empty() {
                return Err(CatalogError::Untitled(b.id));
            }
        }
        Ok(file)
    }

    pub fn built_in() -> Self {
        Self::parse(BUILT_IN_CATALOG).expect("the built-in catalog is valid")
    }

    /// The books as a fresh store holds them.
    pub fn initial_books(&self) -> Vec<Book> {
        self.books
            .iter()
            .map(|b| Book {
                id: b.id,
                title: b.title.clone(),
                count: self.initial_stock,
                cost: b.cost,
                topic: b.topic.clone(),
            })
            .collect()
    }
}

/// A change to a store; the unit of replication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Sell one copy of `book` as order `order_id`. If that takes the last
    /// copy, `restock` more arrive in the same step, so stock never runs out
    /// and never goes below zero.
    Buy {
        order_id: String,
        book: u32,
        restock: u32,
        now_ms: u64,
    },
    /// Add copies by hand.
    Restock {
        book: u32,
        amount: u32,
    },
    SetCost {
        book: u32,
        cost: u32,
    },
}

impl Command {
    /// The book this command changes.
    pub fn book(&self) -> u32 {
        match self {
            Command::Buy { book, .. }
            | Command::Restock { book, .. }
            | Command::SetCost { book, .. } => *book,
        }
    }
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Bought {
        order: Order,
        /// The book after the sale (and any restock).
        book: Book,
        /// Copies restocked by this sale (0 unless it took the last one).
        restocked: u32,
        /// This order id had been sold before: nothing changed now.
        repeat: bool,
    },
    Changed {
        book: Book,
    },
}

/// Per book: what the invariant `initial + restocked - sold = count` needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub book: u32,
    pub initial: u32,
    pub restocked: u64,
    pub sold: u64,
    pub count: u32,
}

impl Ledger {
    pub fn balanced(&self) -> bool {
        u64::from(self.initial) + self.restocked == self.sold + u64::from(self.count)
    }
}

/// Why a bookstore call failed; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "error", content = "message", rename_all = "snake_case")]
pub enum BookError {
    #[error("no book with id {0}")]
    UnknownBook(u32),
    #[error("no books on topic `{0}`")]
    UnknownTopic(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("book {0} is sold out")]
    SoldOut(u32),
    /// No replica can serve now (or this one is not serving yet).
    #[error("{0}")]
    Unavailable(String),
    #[error("storage failed: {0}")]
    Storage(String),
}

impl BookError {
    pub fn status(&self) -> u16 {
        match self {
            BookError::UnknownBook(_) | BookError::UnknownTopic(_) | BookError::NotFound(_) => 404,
            BookError::BadRequest(_) => 400,
            BookError::SoldOut(_) => 409,
            BookError::Unavailable(_) => 503,
            BookError::Storage(_) => 500,
        }
    }
}

impl From<crate::replica::ReplError> for BookError {
    fn from(e: crate::replica::ReplError) -> Self {
        use crate::replica::ReplError;
        match e {
            ReplError::NotLeader(why) => BookError::Unavailable(why),
            ReplError::BadRequest(why) => BookError::BadRequest(why),
            ReplError::Storage(why) => BookError::Storage(why),
        }
    }
}

impl From<BookError> for crate::replica::ReplError {
    fn from(e: BookError) -> Self {
        use crate::replica::ReplError;
        match e {
            BookError::Unavailable(why) => ReplError::NotLeader(why),
            BookError::BadRequest(why) => ReplError::BadRequest(why),
            other => ReplError::Storage(other.to_string()),
        }
    }
}

impl From<rusqlite::Error> for BookError {
    fn from(e: rusqlite::Error) -> Self {
        BookError::Storage(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_catalog_is_the_seeds() {
        let c = CatalogFile::built_in();
        assert_eq!((c.initial_stock, c.restock), (100, 10));
        let books = c.initial_books();
        assert_eq!(books.len(), 7);
        assert_eq!(books[1].title, "RPCs for Dummies.");
        assert_eq!(books[6].cost, 5);
        let ds = books
            .iter()
            .filter(|b| b.topic == "distributed systems")
            .count();
        assert_eq!(ds, 3);
        assert!(books.iter().all(|b| b.count == 100));
    }

    #[test]
    fn bad_catalogs_are_refused_with_a_reason() {
        let twice = "initial_stock = 1\nrestock = 1\n[[book]]\nid = 1\ntitle = \"a\"\ntopic = \"t\"\ncost = 1\n[[book]]\nid = 1\ntitle = \"b\"\ntopic = \"t\"\ncost = 1\n";
        assert!(matches!(
            CatalogFile::parse(twice),
            Err(CatalogError::DuplicateId(1))
        ));
        let empty = "initial_stock = 1\nrestock = 1\nbook = []\n";
        assert!(matches!(
            CatalogFile::parse(empty),
            Err(CatalogError::NoBooks)
        ));
        let typo = "initial_stok = 1\nrestock = 1\nbook = []\n";
        let err = CatalogFile::parse(typo).unwrap_err();
        assert!(matches!(err, CatalogError::Syntax(_)), "{err}");
        assert!(err.to_string().contains("initial_stok"), "{err}");
    }

    #[test]
    fn errors_map_to_statuses() {
        assert_eq!(BookError::UnknownBook(9).status(), 404);
        assert_eq!(BookError::BadRequest("x".into()).status(), 400);
        assert_eq!(BookError::Unavailable("x".into()).status(), 503);
    }
}
