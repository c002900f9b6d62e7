//! The bookstore's storage: one trait, [`MemStore`] (the reference) and
//! [`super::sql::SqlStore`] (SQLite), one conformance suite run on both.
//!
//! What a command does is decided in one place, [`decide`], from the book
//! and any earlier order with the same id; a store only writes the result,
//! atomically. So every store (and every replica applying the same commands
//! in the same order) ends in the same state.

use std::collections::{BTreeMap, HashMap};

use super::model::{Book, BookError, CatalogFile, Command, Ledger, Order, Outcome};

pub trait BookStore {
    /// Every book, by id.
    fn books(&self) -> Result<Vec<Book>, BookError>;
    fn book(&self, id: u32) -> Result<Option<Book>, BookError>;
    fn order(&self, order_id: &str) -> Result<Option<Order>, BookError>;
    /// Every order, in the order they were sold.
    fn orders(&self) -> Result<Vec<Order>, BookError>;
    /// The sales after the first `after`, at most `limit`, each with its
    /// place in the sale order (1-based; the same on every replica).
    fn sales_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Order)>, BookError>;
    /// Per book: initial stock, restocked, sold, in stock.
    fn ledger(&self) -> Result<Vec<Ledger>, BookError>;
    /// Applies one command, all of it or nothing.
    fn apply(&mut self, command: &Command) -> Result<Outcome, BookError>;
}

/// What applying a command writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    /// The book afterwards.
    pub book: Book,
    /// Copies restocked by this command.
    pub restocked: u32,
    /// A new order to record.
    pub order: Option<Order>,
}

/// Decides what `command` does to `book` (None: unknown), given an earlier
/// order with the same id. `Ok(None)` effect: nothing to write.
pub fn decide(
    book: Option<&Book>,
    earlier: Option<&Order>,
    command: &Command,
) -> Result<(Option<Effect>, Outcome), BookError> {
    let id = command.book();
    let book = book.ok_or(BookError::UnknownBook(id))?;
    match command {
        Command::Buy {
            order_id,
            restock,
            now_ms,
            ..
        } => {
            if order_id.is_empty() || order_id.len() > 100 {
                return Err(BookError::BadRequest(
                    "an order id has 1 to 100 characters".into(),
                ));
            }
            if let Some(order) = earlier {
                if order.book != id {
                    return Err(BookError::BadRequest(format!(
                        "order {order_id} was for book {}, not {id}",
                        order.book
                    )));
                }
                let outcome = Outcome::Bought {
                    order: order.clone(),
                    book: book.clone(),
                    restocked: 0,
                    repeat: true,
                };
                return Ok((None, outcome));
            }
            if book.count == 0 {
                return Err(BookError::SoldOut(id));
            }
            let mut after = book.clone();
            after.count -= 1;
            let restocked = if after.count == 0 { *restock } else { 0 };
            after.count += restocked;
            let order = Order {
                order_id: order_id.clone(),
                book: id,
                cost: book.cost,
                ts_ms: *now_ms,
            };
            let outcome = Outcome::Bought {
                order: order.clone(),
                book: after.clone(),
                restocked,
                repeat: false,
            };
            let effect = Effect {
                book: after,
                restocked,
                order: Some(order),
            };
            Ok((Some(effect), outcome))
        }
        Command::Restock { amount, .. } => {
            let mut after = book.clone();
            after.count = after.count.checked_add(*amount).ok_or_else(|| {
                BookError::BadRequest(format!("restocking {amount} overflows the stock"))
            })?;
            Ok(changed(after, *amount))
        }
        Command::SetCost { cost, .. } => {
            let mut after = book.clone();
            after.cost = *cost;
            Ok(changed(after, 0))
        }
    }
}

/// A book changed by hand (no order): the write and the outcome.
fn changed(after: Book, restocked: u32) -> (Option<Effect>, Outcome) {
    let outcome = Outcome::Changed {
        book: after.clone(),
    };
    let effect = Effect {
        book: after,
        restocked,
        order: None,
    };
    (Some(effect), outcome)
}

/// The reference store, in memory.
#[derive(Debug, Clone)]
pub struct MemStore {
    books: BTreeMap<u32, Book>,
    initial: BTreeMap<u32, u32>,
    restocked: BTreeMap<u32, u64>,
    orders: Vec<Order>,
    by_id: HashMap<String, usize>,
}

impl MemStore {
    pub fn new(catalog: &CatalogFile) -> Self {
        let books: BTreeMap<u32, Book> = catalog
            .initial_books()
            .into_iter()
            .map(|b| (b.id, b))
            .collect();
        Self {
            initial: books.values().map(|b| (b.id, b.count)).collect(),
            restocked: BTreeMap::new(),
            books,
            orders: Vec::new(),
            by_id: HashMap::new(),
        }
    }
}

impl BookStore for MemStore {
    fn books(&self) -> Result<Vec<Book>, BookError> {
        Ok(self.books.values().cloned().collect())
    }

    fn book(&self, id: u32) -> Result<Option<Book>, BookError> {
        Ok(self.books.get(&id).cloned())
    }

    fn order(&self, order_id: &str) -> Result<Option<Order>, BookError> {
        Ok(self.by_id.get(order_id).map(|&i| self.orders[i].clone()))
    }

    fn orders(&self) -> Result<Vec<Order>, BookError> {
        Ok(self.orders.clone())
    }

    fn sales_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Order)>, BookError> {
        let from = usize::try_from(after).unwrap_or(usize::MAX);
        Ok(self
            .orders
            .iter()
            .enumerate()
            .skip(from)
            .take(limit)
            .map(|(i, o)| (i as u64 + 1, o.clone()))
            .collect())
    }

    fn ledger(&self) -> Result<Vec<Ledger>, BookError> {
        let mut sold: BTreeMap<u32, u64> = BTreeMap::new();
        for o in &self.orders {
            *sold.entry(o.book).or_default() += 1;
        }
        Ok(self
            .books
            .values()
            .map(|b| Ledger {
                book: b.id,
                initial: self.initial.get(&b.id).copied().unwrap_or(0),
                restocked: self.restocked.get(&b.id).copied().unwrap_or(0),
                sold: sold.get(&b.id).copied().unwrap_or(0),
                count: b.count,
            })
            .collect())
    }

    fn apply(&mut self, command: &Command) -> Result<Outcome, BookError> {
        let earlier = match command {
            Command::Buy { order_id, .. } => self.order(order_id)?,
            _ => None,
        };
        let (effect, outcome) = decide(self.books.get(&command.book()), earlier.as_ref(), command)?;
        if let Some(e) = effect {
            *self.restocked.entry(e.book.id).or_default() += u64::from(e.restocked);
            if let Some(order) = e.order {
                self.by_id.insert(order.order_id.clone(), self.orders.len());
                self.orders.push(order);
            }
            self.books.insert(e.book.id, e.book);
        }
        Ok(outcome)
    }
}

/// The conformance suite: every `BookStore` must pass it.
#[cfg(test)]
pub mod conformance {
    use super::*;

    pub fn catalog() -> CatalogFile {
        CatalogFile::parse(
            "initial_stock = 2\nrestock = 3\n\
             [[book]]\nid = 1\ntitle = \"One\"\ntopic = \"a\"\ncost = 10\n\
             [[book]]\nid = 2\ntitle = \"Two\"\ntopic = \"b\"\ncost = 7\n",
        )
        .unwrap()
    }

    fn buy(order_id: &str, book: u32) -> Command {
        Command::Buy {
            order_id: order_id.into(),
            book,
            restock: 3,
            now_ms: 1,
        }
    }

    fn count(store: &dyn BookStore, id: u32) -> u32 {
        store.book(id).unwrap().unwrap().count
    }

    pub fn starts_with_the_catalog(store: &mut dyn BookStore) {
        let books = store.books().unwrap();
        assert_eq!(books.len(), 2);
        assert_eq!(books[0].title, "One");
        assert_eq!((books[1].count, books[1].cost), (2, 7));
        assert!(store.orders().unwrap().is_empty());
        assert_eq!(store.book(9).unwrap(), None);
    }

    pub fn a_buy_takes_one_copy_and_records_the_order(store: &mut dyn BookStore) {
        let out = store.apply(&buy("o1", 1)).unwrap();
        let Outcome::Bought {
            order,
            book,
            restocked,
            repeat,
        } = out
        else {
            panic!("{out:?}")
        };
        assert_eq!((book.count, restocked, repeat), (1, 0, false));
        assert_eq!(
            (order.book, order.cost, order.order_id.as_str()),
            (1, 10, "o1")
        );
        assert_eq!(count(store, 1), 1);
        assert_eq!(store.orders().unwrap(), vec![order.clone()]);
        assert_eq!(store.order("o1").unwrap(), Some(order));
    }

    pub fn sales_are_read_in_order_from_a_place(store: &mut dyn BookStore) {
        for i in 0..5 {
            store.apply(&buy(&format!("o{i}"), 1 + i % 2)).unwrap();
        }
        store.apply(&buy("o0", 1)).unwrap(); // a repeat: no new sale
        let ids = |sales: Vec<(u64, Order)>| -> Vec<(u64, String)> {
            sales.into_iter().map(|(n, o)| (n, o.order_id)).collect()
        };
        assert_eq!(
            ids(store.sales_after(0, 2).unwrap()),
            [(1, "o0".to_owned()), (2, "o1".to_owned())]
        );
        assert_eq!(
            ids(store.sales_after(3, 100).unwrap()),
            [(4, "o3".to_owned()), (5, "o4".to_owned())]
        );
        assert!(store.sales_after(5, 100).unwrap().is_empty());
        assert!(store.sales_after(u64::MAX, 100).unwrap().is_empty());
        let all: Vec<Order> = store
            .sales_after(0, 100)
            .unwrap()
            .into_iter()
            .map(|(_, o)| o)
            .collect();
        assert_eq!(all, store.orders().unwrap());
    }

    pub fn the_last_copy_brings_a_restock(store: &mut dyn BookStore) {
        store.apply(&buy("o1", 1)).unwrap();
        let out = store.apply(&buy("o2", 1)).unwrap();
        assert!(
            matches!(&out, Outcome::Bought { restocked: 3, book, .. } if book.count == 3),
            "{out:?}"
        );
        assert_eq!(count(store, 1), 3);
        let l = store.ledger().unwrap()[0];
        assert_eq!((l.initial, l.restocked, l.sold, l.count), (2, 3, 2, 3));
        assert!(l.balanced());
    }

    pub fn a_repeated_order_id_sells_nothing_more(store: &mut dyn BookStore) {
        store.apply(&buy("o1", 1)).unwrap();
        let again = store.apply(&buy("o1", 1)).unwrap();
        assert!(
            matches!(again, Outcome::Bought { repeat: true, .. }),
            "{again:?}"
        );
        assert_eq!(count(store, 1), 1, "one copy taken, not two");
        assert_eq!(store.orders().unwrap().len(), 1);
        let other = store.apply(&buy("o1", 2));
        assert!(matches!(other, Err(BookError::BadRequest(_))), "{other:?}");
        assert_eq!(count(store, 2), 2);
    }

    pub fn unknown_books_and_bad_orders_change_nothing(store: &mut dyn BookStore) {
        let before = store.books().unwrap();
        assert_eq!(store.apply(&buy("o1", 9)), Err(BookError::UnknownBook(9)));
        assert!(matches!(
            store.apply(&buy("", 1)),
            Err(BookError::BadRequest(_))
        ));
        let huge = Command::Restock {
            book: 1,
            amount: u32::MAX,
        };
        assert!(matches!(store.apply(&huge), Err(BookError::BadRequest(_))));
        assert_eq!(store.books().unwrap(), before);
        assert!(store.orders().unwrap().is_empty());
        assert!(store.ledger().unwrap().iter().all(Ledger::balanced));
    }

    pub fn restock_and_cost_changes(store: &mut dyn BookStore) {
        store
            .apply(&Command::Restock { book: 2, amount: 5 })
            .unwrap();
        store.apply(&Command::SetCost { book: 2, cost: 4 }).unwrap();
        let b = store.book(2).unwrap().unwrap();
        assert_eq!((b.count, b.cost), (7, 4));
        let out = store.apply(&buy("o1", 2)).unwrap();
        assert!(matches!(out, Outcome::Bought { order, .. } if order.cost == 4));
        let l = store.ledger().unwrap()[1];
        assert_eq!((l.restocked, l.sold, l.count), (5, 1, 6));
        assert!(l.balanced());
    }

    /// Replicas applying the same commands end in the same state.
    pub fn same_commands_same_state(make: &mut dyn FnMut() -> Box<dyn BookStore>) {
        let mut script = Vec::new();
        for i in 0..20 {
            script.push(buy(&format!("o{i}"), 1 + i % 2));
            if i % 7 == 0 {
                script.push(Command::SetCost {
                    book: 2,
                    cost: i + 1,
                });
            }
        }
        script.push(buy("o3", 2));
        let (mut a, mut b) = (make(), make());
        for c in &script {
            let (x, y) = (a.apply(c), b.apply(c));
            assert_eq!(x, y, "{c:?}");
        }
        assert_eq!(a.books().unwrap(), b.books().unwrap());
        assert_eq!(a.orders().unwrap(), b.orders().unwrap());
        assert_eq!(a.ledger().unwrap(), b.ledger().unwrap());
        assert!(a.ledger().unwrap().iter().all(Ledger::balanced));
    }
}

/// Runs the conformance suite on one implementation: `$make` builds a fresh
/// store from a catalog.
#[cfg(test)]
#[macro_export]
macro_rules! bookstore_conformance_tests {
    ($make:expr) => {
        mod conformance {
            use super::*;
            use $crate::services::bookstore::store::{BookStore, conformance};

            fn fresh() -> Box<dyn BookStore> {
                let make = $make;
                Box::new(make(&conformance::catalog()))
            }

            #[test]
            fn starts_with_the_catalog() {
                conformance::starts_with_the_catalog(fresh().as_mut());
            }
            #[test]
            fn a_buy_takes_one_copy_and_records_the_order() {
                conformance::a_buy_takes_one_copy_and_records_the_order(fresh().as_mut());
            }
            #[test]
            fn sales_are_read_in_order_from_a_place() {
                conformance::sales_are_read_in_order_from_a_place(fresh().as_mut());
            }
            #[test]
            fn the_last_copy_brings_a_restock() {
                conformance::the_last_copy_brings_a_restock(fresh().as_mut());
            }
            #[test]
            fn a_repeated_order_id_sells_nothing_more() {
                conformance::a_repeated_order_id_sells_nothing_more(fresh().as_mut());
            }
            #[test]
            fn unknown_books_and_bad_orders_change_nothing() {
                conformance::unknown_books_and_bad_orders_change_nothing(fresh().as_mut());
            }
            #[test]
            fn restock_and_cost_changes() {
                conformance::restock_and_cost_changes(fresh().as_mut());
            }
            #[test]
            fn same_commands_same_state() {
                conformance::same_commands_same_state(&mut fresh);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::bookstore_conformance_tests!(|c: &CatalogFile| MemStore::new(c));

    #[test]
    fn a_sold_out_book_with_no_restock_refuses_the_sale() {
        let mut s = MemStore::new(&super::conformance::catalog());
        let buy = |id: &str| Command::Buy {
            order_id: id.into(),
            book: 2,
            restock: 0,
            now_ms: 0,
        };
        s.apply(&buy("a")).unwrap();
        s.apply(&buy("b")).unwrap();
        assert_eq!(s.apply(&buy("c")), Err(BookError::SoldOut(2)));
        assert_eq!(s.book(2).unwrap().unwrap().count, 0, "never below zero");
    }
}
