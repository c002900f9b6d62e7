//! Replication of a SQLite store by Raft, shared by every replicated role
//! (the MOM, the bookstore's catalog and order servers). The consensus is
//! raft-rs (tikv/raft-rs, the Raft of TiKV), driven as a plain state
//! machine; MQTT is only its transport, and no decision depends on a
//! retained message or on the broker being up.
//!
//! - [`store`]: [`LogStore`], what a store provides (apply a command), and
//!   snapshots as a dump of its tables.
//! - [`storage`]: the raft log, hard state and applied index in the same
//!   SQLite database and transaction as the state.
//! - [`core`]: one replica as a state machine (ticks, messages, proposals,
//!   reads in; messages and answers out), with no thread or socket — the
//!   simulator drives it in tests.
//! - [`engine`]: the thread that owns a replica, with group commit.
//! - [`transport`]: raft messages cut into bus-sized frames and joined.
//! - [`shell`]: the async glue to the bus, and the [`Replicas`] view.
//!
//! A write is answered once a majority of the group holds it and it is
//! applied on the leader; a current read runs after a ReadIndex. A group
//! of three survives one member down; a group of two stops taking writes
//! when either is down (a majority of two is two).

pub mod core;
pub mod engine;
pub mod shell;
pub mod storage;
pub mod store;
pub mod transport;

#[cfg(test)]
mod sim;

pub use self::core::{RaftStatus, Role};
pub use engine::Engine;
pub use shell::{GroupStatus, RaftTelemetry, Replicas};
pub use store::LogStore;

use serde::{Deserialize, Serialize};

/// Why a replication step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "error", content = "message", rename_all = "snake_case")]
pub enum ReplError {
    /// This node does not lead now, or the write was not committed (the
    /// leader changed before a majority had it): try the leader.
    #[error("{0}")]
    NotLeader(String),
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
