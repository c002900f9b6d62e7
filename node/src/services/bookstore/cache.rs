//! The frontend's cache of search and lookup answers (the seed's never
//! expired, and a restock never reached it). Every entry remembers the books
//! it shows; a change to any of them removes it. A read that started before
//! a change to one of its books is not cached when it returns (it may show
//! the old state). Entries also expire after `max_age`, a backstop for a
//! change notice that never arrived (say, during a broker outage).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::model::Book;

/// What was asked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Search(String),
    Lookup(u32),
}

#[derive(Debug, Clone)]
struct Entry {
    books: Vec<Book>,
    at: Instant,
}

/// Proof of when a read started; [`Cache::fill`] needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

#[derive(Debug)]
pub struct Cache {
    entries: HashMap<Key, Entry>,
    /// Book id → the keys whose answer shows it.
    shown_in: HashMap<u32, HashSet<Key>>,
    /// Book id → the change counter when it last changed.
    changed_at: HashMap<u32, u64>,
    /// Counts changes (and clears).
    clock: u64,
    cleared_at: u64,
    capacity: usize,
    max_age: Duration,
    pub hits: u64,
    pub misses: u64,
}

impl Cache {
    pub fn new(capacity: usize, max_age: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            shown_in: HashMap::new(),
            changed_at: HashMap::new(),
            clock: 0,
            cleared_at: 0,
            capacity: capacity.max(1),
            max_age,
            hits: 0,
            misses: 0,
        }
    }

    /// The cached answer, if any and fresh (counts a hit or a miss).
    pub fn get(&mut self, key: &Key, now: Instant) -> Option<Vec<Book>> {
        let fresh = self
            .entries
            .get(key)
            .filter(|e| now.saturating_duration_since(e.at) < self.max_age)
            .map(|e| e.books.clone());
        if fresh.is_some() {
            self.hits += 1;
        } else {
            self.misses += 1;
            self.remove(key);
        }
        fresh
    }

    /// Call before reading from a replica; pass the ticket to [`Self::fill`].
    pub fn ticket(&self) -> Ticket {
        Ticket(self.clock)
    }

    /// Caches `books` as the answer to `key`, unless one of them (or the
    /// whole cache) changed since `ticket` was taken. Returns whether cached.
    pub fn fill(&mut self, key: Key, books: Vec<Book>, ticket: Ticket, now: Instant) -> bool {
        let stale = self.cleared_at > ticket.0
            || books
                .iter()
                .any(|b| self.changed_at.get(&b.id).is_some_and(|&t| t > ticket.0));
        if stale {
            return false;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            // Full: drop the oldest entry.
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.at)
                .map(|(k, _)| k.clone())
            {
                self.remove(&oldest);
            }
        }
        self.remove(&key);
        for b in &books {
            self.shown_in.entry(b.id).or_default().insert(key.clone());
        }
        self.entries.insert(key, Entry { books, at: now });
        true
    }

    /// Book `id` changed (stock or cost): every answer showing it goes.
    pub fn changed(&mut self, id: u32) {
        self.clock += 1;
        self.changed_at.insert(id, self.clock);
        for key in self.shown_in.remove(&id).unwrap_or_default() {
            self.remove(&key);
        }
    }

    /// Forgets everything (say, after missing change notices).
    pub fn clear(&mut self) {
        self.clock += 1;
        self.cleared_at = self.clock;
        self.entries.clear();
        self.shown_in.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Hits / (hits + misses), 0 before any request.
    pub fn hit_ratio(&self) -> f64 {
        let all = self.hits + self.misses;
        if all == 0 {
            0.0
        } else {
            self.hits as f64 / all as f64
        }
    }

    fn remove(&mut self, key: &Key) {
        if let Some(e) = self.entries.remove(key) {
            for b in e.books {
                if let Some(keys) = self.shown_in.get_mut(&b.id) {
                    keys.remove(key);
                    if keys.is_empty() {
                        self.shown_in.remove(&b.id);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(id: u32, count: u32) -> Book {
        Book {
            id,
            title: format!("book {id}"),
            count,
            cost: 10,
            topic: if id < 3 { "ds" } else { "grad" }.into(),
        }
    }

    const AGE: Duration = Duration::from_secs(60);

    #[test]
    fn answers_are_served_until_a_book_they_show_changes() {
        let t0 = Instant::now();
        let mut c = Cache::new(100, AGE);
        let search = Key::Search("ds".into());
        assert_eq!(c.get(&search, t0), None);
        let ticket = c.ticket();
        assert!(c.fill(search.clone(), vec![book(1, 5), book(2, 5)], ticket, t0));
        let ticket = c.ticket();
        assert!(c.fill(Key::Lookup(3), vec![book(3, 5)], ticket, t0));
        assert_eq!(c.get(&search, t0).unwrap().len(), 2);
        assert_eq!((c.hits, c.misses), (1, 1));
        // A buy of book 2 (or a restock, or a new cost) removes the search
        // that shows it, and only that.
        c.changed(2);
        assert_eq!(c.get(&search, t0), None);
        assert!(c.get(&Key::Lookup(3), t0).is_some());
        assert_eq!(c.len(), 1);
        assert!((c.hit_ratio() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn a_read_that_raced_a_change_is_not_cached() {
        let t0 = Instant::now();
        let mut c = Cache::new(100, AGE);
        let ticket = c.ticket();
        // The read is under way when book 1 sells its last copy...
        c.changed(1);
        // ...so what it brings back may be the old stock: not cached.
        assert!(!c.fill(Key::Lookup(1), vec![book(1, 0)], ticket, t0));
        assert!(c.is_empty());
        // A change to another book does not matter.
        let ticket = c.ticket();
        c.changed(7);
        assert!(c.fill(Key::Lookup(1), vec![book(1, 10)], ticket, t0));
        // Nor does a clear that came before the ticket; one after does.
        let ticket = c.ticket();
        c.clear();
        assert!(!c.fill(Key::Lookup(2), vec![book(2, 1)], ticket, t0));
    }

    #[test]
    fn entries_expire_and_the_oldest_goes_when_full() {
        let t0 = Instant::now();
        let mut c = Cache::new(2, AGE);
        for id in 1..=3 {
            let ticket = c.ticket();
            let at = t0 + Duration::from_secs(u64::from(id));
            c.fill(Key::Lookup(id), vec![book(id, 1)], ticket, at);
        }
        assert_eq!(c.len(), 2);
        let now = t0 + Duration::from_secs(10);
        assert_eq!(c.get(&Key::Lookup(1), now), None, "the oldest went");
        assert!(c.get(&Key::Lookup(3), now).is_some());
        let later = t0 + Duration::from_secs(3) + AGE;
        assert_eq!(c.get(&Key::Lookup(3), later), None, "expired");
        // Removing an entry leaves no dangling index: a change to its book
        // touches nothing.
        c.changed(3);
        assert!(!c.shown_in.contains_key(&3));
    }
}
