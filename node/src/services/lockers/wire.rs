//! What travels on the bus for the lockers: RPC requests and replies of
//! `rpc/users/<node>` and `rpc/lockers/<node>`, and the telemetry of both
//! roles (`telemetry/<node>/users`, `telemetry/<node>/lockers`).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::model::{Locker, LockerError, LockerId, Op, RequestState, User};
use crate::replica::shell::GroupStatus;

/// A request to the users group; any member takes it (changes run on the
/// leader, which a member forwards them to; reads are current everywhere).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum UsersRequest {
    Add {
        name: String,
    },
    Delete {
        name: String,
    },
    /// Asks for a locker. `request` makes a retry idempotent (a new id is
    /// drawn when it is missing); `wait_ms` is how long to wait for the
    /// lockers' answer before answering "pending" (0: do not wait).
    Take {
        name: String,
        #[serde(default)]
        request: Option<String>,
        #[serde(default)]
        wait_ms: u64,
    },
    Free {
        name: String,
        #[serde(default)]
        request: Option<String>,
        #[serde(default)]
        wait_ms: u64,
    },
    User {
        name: String,
    },
    Users,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum UsersReply {
    User {
        user: User,
    },
    Users {
        users: Vec<User>,
    },
    /// The user deleted (none: there was no such user).
    Deleted {
        user: Option<User>,
    },
    Request {
        state: RequestState,
    },
}

impl UsersRequest {
    /// A take or free (by `op`) for `name`.
    pub fn ask(op: Op, name: String, request: Option<String>, wait_ms: u64) -> Self {
        match op {
            Op::Take => UsersRequest::Take {
                name,
                request,
                wait_ms,
            },
            Op::Free => UsersRequest::Free {
                name,
                request,
                wait_ms,
            },
        }
    }
}

pub type UsersAnswer = Result<UsersReply, LockerError>;

/// A request to a lockers replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum LockersRequest {
    /// Every locker, as of every write acknowledged before the call.
    List,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum LockersReply {
    Lockers { lockers: Vec<Locker> },
}

pub type LockersAnswer = Result<LockersReply, LockerError>;

/// How a node's link to the MOM stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    /// Whether the last call to the MOM succeeded.
    pub up: bool,
    /// The MOM node calls go to.
    pub target: String,
    /// Why the last call failed, if it did.
    pub error: Option<String>,
}

/// The most users a telemetry report lists.
pub const USERS_SHOWN: usize = 500;

/// A `users` node twice a second.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsersStats {
    /// Where it serves HTTP.
    pub http: Option<SocketAddr>,
    pub raft: GroupStatus,
    /// The users (name, locker, pending) as this replica applied them,
    /// oldest first, at most [`USERS_SHOWN`] of them.
    pub users: Vec<UserView>,
    /// How many users there are.
    pub users_total: u64,
    /// Requests waiting for the lockers (queued in the group).
    pub waiting: u64,
    /// Requests answered while this node led (since it started), and how
    /// many of them were takes granted a locker.
    pub answered: u64,
    pub granted: u64,
    /// Accepted to answered, ms (answers applied on this node as leader).
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub mom: LinkStatus,
    pub requests: u64,
    pub failed: u64,
}

/// A user as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    pub name: String,
    pub locker: Option<LockerId>,
    /// `take` or `free` while a request waits for the lockers.
    pub pending: Option<String>,
}

/// A `lockers` node twice a second.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LockersStats {
    pub raft: GroupStatus,
    /// Every locker, as this replica applied them.
    pub lockers: Vec<Locker>,
    /// Requests answered as leader since this node started.
    pub handled: u64,
    /// Queue messages that were no request (acked and dropped).
    pub malformed: u64,
    pub mom: LinkStatus,
}
