//! Primary/backup replication of a SQLite store, shared by every replicated
//! role (the MOM, the bookstore's catalog and order servers).
//!
//! - [`election`]: who leads a group — a pure state machine (retained
//!   `<group>/primary` record, presence, epochs for fencing).
//! - [`log`]: [`LogStore`], what a store provides to be replicated (apply a
//!   command), and what it gets for that: an ordered log of the commands that
//!   changed it, kept in the same SQLite transaction as the change.
//! - [`engine`]: one thread owning the store, group commit; as primary it
//!   hands committed batches to the replicator, as replica it applies the
//!   primary's entries.
//! - [`shell`]: the async part: elections on the bus, the replicator, and
//!   catch-up of a replica.
//!
//! A write is answered once it is committed on the primary and applied by
//! the in-sync replica; a replica that misses a write is dropped from
//! `in_sync` (and the broker has that record) before the write is answered,
//! so a replica that takes over holds every answered write.

pub mod election;
pub mod engine;
pub mod log;
pub mod shell;

pub use election::{Action, Position, PrimaryRecord, Replication, Role};
pub use engine::{Committed, Engine, Mode};
pub use log::{Entry, LogStore};
pub use shell::{Replicas, Status};

use serde::{Deserialize, Serialize};

/// Why a replication step failed (also the error on the wire between the
/// nodes of a group).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "error", content = "message", rename_all = "snake_case")]
pub enum ReplError {
    /// This node does not take writes now (a replica, waiting, stopped).
    #[error("{0}")]
    NotPrimary(String),
    /// A newer epoch has begun: the sender is an old primary.
    #[error("fenced: {0}")]
    Fenced(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("storage failed: {0}")]
    Storage(String),
}

impl From<rusqlite::Error> for ReplError {
    fn from(e: rusqlite::Error) -> Self {
        ReplError::Storage(e.to_string())
    }
}
