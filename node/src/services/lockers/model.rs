//! The lockers' vocabulary: users, lockers, the requests and replies that
//! travel between the two groups on the MOM's queues, the [`UsersCommand`]s
//! and [`LockersCommand`]s of the two replication logs, and the errors.

use serde::{Deserialize, Serialize};

pub type UserId = u64;
pub type LockerId = u32;

/// The longest user name, in bytes (any UTF-8, stored literally).
pub const NAME_MAX: usize = 64;

/// The MOM queue of take requests (the seed's name).
pub const TAKE_QUEUE: &str = "get_locker_id";
/// The MOM queue of free requests (the seed's name).
pub const FREE_QUEUE: &str = "free_locker_id";
/// The MOM queue the lockers answer on; the users group consumes it.
pub const REPLY_QUEUE: &str = "locker_replies";

/// Why a lockers call failed; each maps to one HTTP status ([`LockerError::status`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "error", content = "message", rename_all = "snake_case")]
pub enum LockerError {
    #[error("no user named `{0}`")]
    UserNotExists(String),
    #[error("a user named `{0}` exists already")]
    Exists(String),
    #[error("user `{0}` holds no locker")]
    WithoutLocker(String),
    /// Another request of the same user is in progress and conflicts.
    #[error("{0}")]
    Busy(String),
    /// As many requests wait for the MOM as this group keeps.
    #[error("{0}")]
    Full(String),
    #[error("{0}")]
    BadRequest(String),
    /// No leader within reach (an election, or a majority down).
    #[error("{0}")]
    Unavailable(String),
    #[error("storage failed: {0}")]
    Storage(String),
}

impl LockerError {
    /// The HTTP status of this error on the JSON API.
    pub fn status(&self) -> u16 {
        match self {
            LockerError::UserNotExists(_) => 404,
            LockerError::Exists(_) | LockerError::WithoutLocker(_) | LockerError::Busy(_) => 409,
            LockerError::BadRequest(_) => 400,
            LockerError::Full(_) | LockerError::Unavailable(_) => 503,
            LockerError::Storage(_) => 500,
        }
    }
}

impl From<rusqlite::Error> for LockerError {
    fn from(e: rusqlite::Error) -> Self {
        LockerError::Storage(e.to_string())
    }
}

impl From<crate::replica::ReplError> for LockerError {
    fn from(e: crate::replica::ReplError) -> Self {
        use crate::replica::ReplError;
        match e {
            ReplError::NotLeader(why) => LockerError::Unavailable(why),
            ReplError::BadRequest(why) => LockerError::BadRequest(why),
            ReplError::Storage(why) => LockerError::Storage(why),
        }
    }
}

impl From<LockerError> for crate::replica::ReplError {
    fn from(e: LockerError) -> Self {
        use crate::replica::ReplError;
        match e {
            LockerError::Unavailable(why) => ReplError::NotLeader(why),
            LockerError::BadRequest(why) => ReplError::BadRequest(why),
            LockerError::Storage(why) => ReplError::Storage(why),
            other => ReplError::Storage(other.to_string()),
        }
    }
}

/// A user name is any UTF-8 of 1 to [`NAME_MAX`] bytes, kept literally.
pub fn check_name(name: &str) -> Result<(), LockerError> {
    if name.is_empty() || name.len() > NAME_MAX {
        return Err(LockerError::BadRequest(format!(
            "a user name is 1 to {NAME_MAX} bytes of UTF-8; this one has {}",
            name.len()
        )));
    }
    Ok(())
}

/// What a request asks of the lockers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Take,
    Free,
}

/// A request on [`TAKE_QUEUE`] or [`FREE_QUEUE`]. `request` is unique and
/// makes it idempotent: the lockers answer a request they have seen with
/// the answer they gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockerRequest {
    pub request: String,
    pub op: Op,
    /// The user by id: a user deleted and added again under the same name
    /// is another user.
    pub user: UserId,
    pub name: String,
}

/// How the lockers answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Done {
    Granted {
        locker: LockerId,
    },
    NoneFree,
    /// The locker the user held, if any (freeing twice is harmless).
    Freed {
        locker: Option<LockerId>,
    },
}

/// An answer on [`REPLY_QUEUE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockerReply {
    pub request: String,
    pub user: UserId,
    #[serde(flatten)]
    pub done: Done,
}

/// A request of a user waiting for the lockers' answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub request: String,
    pub op: Op,
    pub since_ms: u64,
}

/// The last request of a user that was answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    pub request: String,
    #[serde(flatten)]
    pub done: Done,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub name: String,
    pub locker: Option<LockerId>,
    pub pending: Option<Pending>,
    pub last: Option<Finished>,
    pub since_ms: u64,
}

/// Who holds a locker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub user: UserId,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Locker {
    pub id: LockerId,
    pub holder: Option<Holder>,
    /// When it was last taken or freed (0: never).
    pub changed_ms: u64,
}

/// A request queued in the users group until the lockers answer it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    #[serde(flatten)]
    pub request: LockerRequest,
    pub queued_ms: u64,
}

/// Where a user's request stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RequestState {
    /// Accepted (durable in the users group), not answered yet.
    Pending { request: String },
    Done {
        request: String,
        #[serde(flatten)]
        done: Done,
    },
}

/// The changes to the users group (its replication log). Every input is
/// in the command (names, request ids, times), so replicas agree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum UsersCommand {
    Add {
        name: String,
        now_ms: u64,
    },
    /// Removes the user; a locker it holds (or is being given) is freed.
    Delete {
        name: String,
        request: String,
        now_ms: u64,
    },
    /// Queues a take or free for the lockers (at most `max_waiting`
    /// requests wait at once). `request` is a new id the leader drew
    /// (unique, never used before), or, with `retry`, a caller's id of an
    /// earlier request: then it only says where that request stands (the
    /// user's pending or last one), and is refused otherwise, so an old or
    /// foreign id never starts a request (the lockers would answer it with
    /// what they answered before).
    Request {
        name: String,
        request: String,
        op: Op,
        now_ms: u64,
        max_waiting: u64,
        #[serde(default)]
        retry: bool,
    },
    /// The lockers' answers, as consumed from [`REPLY_QUEUE`].
    Replies {
        replies: Vec<LockerReply>,
        now_ms: u64,
    },
}

/// A request answered by [`UsersCommand::Replies`]: its user's, with how
/// long it waited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answered {
    pub request: String,
    pub done: Done,
    pub waited_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsersOutcome {
    Added(User),
    Deleted(Option<User>),
    Requested(RequestState),
    Applied(Vec<Answered>),
}

/// The changes to the lockers group: requests as consumed, answered in
/// order, each once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum LockersCommand {
    Handle {
        requests: Vec<LockerRequest>,
        now_ms: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shapes_are_flat_json() {
        let reply = LockerReply {
            request: "r1".into(),
            user: 7,
            done: Done::Granted { locker: 3 },
        };
        let text = serde_json::to_string(&reply).unwrap();
        assert_eq!(
            text,
            r#"{"request":"r1","user":7,"result":"granted","locker":3}"#
        );
        assert_eq!(serde_json::from_str::<LockerReply>(&text).unwrap(), reply);
        let state = RequestState::Done {
            request: "r".into(),
            done: Done::NoneFree,
        };
        assert_eq!(
            serde_json::to_string(&state).unwrap(),
            r#"{"state":"done","request":"r","result":"none_free"}"#
        );
    }

    #[test]
    fn names_are_any_utf8_of_at_most_64_bytes() {
        assert!(check_name("'; DROP TABLE users; --").is_ok());
        assert!(check_name("Ольга").is_ok());
        assert!(check_name(&"ж".repeat(32)).is_ok());
        assert!(check_name(&"ж".repeat(33)).is_err());
        assert!(check_name("").is_err());
    }
}
