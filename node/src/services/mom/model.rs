//! The MOM's vocabulary: channel kinds, errors, deliveries, and the
//! [`Command`]s that change a store (the unit of the replication log).

use serde::{Deserialize, Serialize};

/// Topics fan out (every subscriber gets every message published after it
/// subscribed); queues have competing consumers (each message goes to one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Topic,
    Queue,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Topic => "topic",
            Kind::Queue => "queue",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a MOM call failed. Each maps to one HTTP status ([`MomError::status`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "error", content = "message", rename_all = "snake_case")]
pub enum MomError {
    #[error("missing or unknown key; create a user with /create_user and send its key")]
    BadKey,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    NotOwner(String),
    #[error("{0}")]
    NotSubscribed(String),
    #[error("message of {size} bytes is over the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    /// Something else too large (a batch, a request body), said.
    #[error("{0}")]
    Oversize(String),
    #[error("{0}")]
    BadRequest(String),
    /// This node does not accept writes (a replica, or a fenced old primary).
    #[error("{0}")]
    NotPrimary(String),
    #[error("storage failed: {0}")]
    Storage(String),
}

impl From<crate::replica::ReplError> for MomError {
    fn from(e: crate::replica::ReplError) -> Self {
        use crate::replica::ReplError;
        match e {
            ReplError::NotLeader(why) => MomError::NotPrimary(why),
            ReplError::BadRequest(why) => MomError::BadRequest(why),
            ReplError::Storage(why) => MomError::Storage(why),
        }
    }
}

impl From<MomError> for crate::replica::ReplError {
    fn from(e: MomError) -> Self {
        use crate::replica::ReplError;
        match e {
            MomError::NotPrimary(why) => ReplError::NotLeader(why),
            MomError::BadRequest(why) => ReplError::BadRequest(why),
            MomError::Storage(why) => ReplError::Storage(why),
            other => ReplError::Storage(other.to_string()),
        }
    }
}

impl MomError {
    /// The HTTP status of this error.
    pub fn status(&self) -> u16 {
        match self {
            MomError::BadKey => 401,
            MomError::NotOwner(_) | MomError::NotSubscribed(_) => 403,
            MomError::NotFound(_) => 404,
            MomError::Exists(_) => 409,
            MomError::TooLarge { .. } | MomError::Oversize(_) => 413,
            MomError::BadRequest(_) => 400,
            MomError::NotPrimary(_) => 503,
            MomError::Storage(_) => 500,
        }
    }

    pub fn not_found(kind: Kind, name: &str) -> Self {
        MomError::NotFound(format!("no {kind} named `{name}`"))
    }
}

impl From<rusqlite::Error> for MomError {
    fn from(e: rusqlite::Error) -> Self {
        MomError::Storage(e.to_string())
    }
}

/// A message handed to a consumer; ack it by `id` before `visible_again_ms`
/// or it is delivered again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: u64,
    pub body: String,
    /// How many times this message has been handed out (1 on first delivery).
    pub deliveries: u32,
    pub published_ms: u64,
    pub visible_again_ms: u64,
}

/// One topic or queue as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelInfo {
    pub kind: Kind,
    pub name: String,
    pub owner: String,
    pub subscribers: u64,
    /// Its place in the order of creation (larger: created later); the
    /// seed listed channels in this order.
    #[serde(default)]
    pub created: u64,
    /// Waiting to be consumed (for a topic: summed over its subscribers).
    pub ready: u64,
    /// Handed out, not acknowledged yet.
    pub unacked: u64,
    /// Messages published to it since it was created.
    pub published: u64,
    /// Deliveries handed out (redeliveries count again).
    #[serde(default)]
    pub delivered: u64,
    /// Only the owner and the users it granted may subscribe.
    #[serde(default)]
    pub private: bool,
}

/// Everything that changes a store, with every input it needs (keys and
/// times are chosen by the caller), so applying the same commands in the same
/// order gives the same state on every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    AddUser {
        key: String,
    },
    Create {
        kind: Kind,
        name: String,
        owner: String,
        /// The seed's rule (its API): the creator is subscribed at once.
        #[serde(default, skip_serializing_if = "is_false")]
        subscribe: bool,
    },
    Delete {
        kind: Kind,
        name: String,
        user: String,
    },
    Subscribe {
        kind: Kind,
        name: String,
        user: String,
    },
    Unsubscribe {
        kind: Kind,
        name: String,
        user: String,
    },
    Publish {
        kind: Kind,
        name: String,
        body: String,
        now_ms: u64,
        /// The seed's rule (its API): the sender must be subscribed, and a
        /// topic's copy is not made for the sender itself.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sender: Option<String>,
    },
    /// Messages published together: stored in order, all or none.
    PublishBatch {
        kind: Kind,
        name: String,
        bodies: Vec<String>,
        now_ms: u64,
    },
    /// Hands out up to `max` messages (at least one if any is there, and
    /// bodies of at most [`CONSUME_BYTES`] beyond the first).
    Consume {
        kind: Kind,
        name: String,
        user: String,
        now_ms: u64,
        visibility_ms: u64,
        #[serde(default = "one", skip_serializing_if = "is_one")]
        max: u32,
    },
    Ack {
        user: String,
        id: u64,
    },
    /// Acks several copies at once; ids the user does not hold are skipped.
    AckBatch {
        user: String,
        ids: Vec<u64>,
    },
    /// The owner makes a channel private (only it and the users it grants
    /// may subscribe; other subscribers are dropped) or public again.
    SetPrivate {
        kind: Kind,
        name: String,
        user: String,
        private: bool,
    },
    /// The owner lets user `to` subscribe to its private channel.
    Grant {
        kind: Kind,
        name: String,
        user: String,
        to: String,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// Messages one consume hands out at most, and ids one batch ack takes.
pub const CONSUME_MAX: usize = 1000;
/// Bytes of bodies one consume hands out at most (the first message always
/// goes, whatever its size): a reply fits one bus message, escaped.
pub const CONSUME_BYTES: usize = 512 * 1024;

impl Command {
    /// An upper bound of its size as JSON (a body's characters can take up
    /// to 6 bytes each when escaped), for keeping bus messages small enough.
    pub fn max_json_len(&self) -> usize {
        let bodies = match self {
            Command::Publish { body, .. } => body.len(),
            Command::PublishBatch { bodies, .. } => {
                bodies.iter().map(|b| b.len() + 3).sum::<usize>()
            }
            _ => 0,
        };
        512 + 6 * bodies
    }
}

/// What a command returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Done,
    /// Subscribe/unsubscribe: whether anything changed.
    Changed {
        changed: bool,
    },
    /// Publish: the ids of the stored copies (a queue: one; a topic: one per
    /// subscriber, none without subscribers).
    Published {
        ids: Vec<u64>,
    },
    /// A batch publish: the copy ids of each message, in order.
    PublishedBatch {
        ids: Vec<Vec<u64>>,
    },
    /// A consume: what was handed out, oldest first (none if nothing was there).
    Delivered {
        deliveries: Vec<Delivery>,
    },
    /// A batch ack: the ids acked, in the order asked.
    Acked {
        ids: Vec<u64>,
    },
}

/// Topic and queue names: 1–200 ASCII letters, digits and `-_.:@`, not
/// starting with `.` (so never `.` or `..`, which no URL path can name).
/// ASCII only: a look-alike letter from another script would make a second
/// channel that reads like the first.
pub fn check_name(name: &str) -> Result<(), MomError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(MomError::BadRequest(format!(
            "`{}` is not a valid name: use 1-200 ASCII letters, digits and - _ . : @, not starting with .",
            name.escape_debug()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_ascii_and_reachable_by_path() {
        for ok in ["jobs", "a", "jobs.high-1_x:y@z", "v1.2", &"x".repeat(200)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        // Empty, too long, dots alone or first, look-alikes from other
        // scripts (Cyrillic а, Greek ο), accents, spaces, path characters.
        for bad in [
            "",
            &"x".repeat(201),
            ".",
            "..",
            ".hidden",
            "j\u{430}bs",
            "j\u{3bf}bs",
            "caf\u{e9}",
            "a b",
            "a/b",
            "a%2Fb",
        ] {
            let err = check_name(bad).unwrap_err().to_string();
            assert!(err.contains("not a valid name"), "{bad}: {err}");
        }
    }

    #[test]
    fn oversize_is_413_and_says_what() {
        let e =
            MomError::Oversize("a batch of 600000 bytes is over the limit of 524288 bytes".into());
        assert_eq!(e.status(), 413);
        assert!(e.to_string().starts_with("a batch of 600000 bytes"));
    }
}
