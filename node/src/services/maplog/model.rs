//! What the map's members and clients send each other.

use serde::{Deserialize, Serialize};

use super::table::View;

/// Longest key and value a put takes, bytes.
pub const MAX_KEY: usize = 1024;
pub const MAX_VALUE: usize = 64 * 1024;

/// One entry with the version its owner gave it (last writer wins by
/// version; versions of a later epoch are always larger).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub version: u64,
}

/// A partition's entries as one message carries them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartData {
    pub part: u32,
    pub entries: Vec<Entry>,
}

/// A partition's summary: the XOR of its entries' hashes, and their count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub part: u32,
    pub digest: u64,
    pub count: u32,
}

/// Member to member, one way (`rpc/maplog-peer/<node>`). Every message
/// carries the sender's epoch; a member acts on it only at the same epoch
/// (it keeps one from a later epoch until it gets there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Peer {
    /// "I am at this epoch now; this is what I hold" (non-empty partitions).
    Digests {
        epoch: u64,
        digests: Vec<Digest>,
    },
    /// An owner still waiting for the receiver's digests asks again.
    DigestAsk {
        epoch: u64,
    },
    /// An owner asks for the entries of partitions whose digest differs.
    DataAsk {
        epoch: u64,
        parts: Vec<u32>,
    },
    /// The answer (`last`: the final message of the answer).
    Data {
        epoch: u64,
        parts: Vec<PartData>,
        last: bool,
    },
    /// Owner to backup: hold this entry of a put.
    Backup {
        epoch: u64,
        put: u64,
        part: u32,
        entry: Entry,
    },
    BackupAck {
        epoch: u64,
        put: u64,
        ok: bool,
    },
    /// Owner to backup: the whole partition, after the owner gathered it.
    Fill {
        epoch: u64,
        parts: Vec<PartData>,
    },
    FillAck {
        epoch: u64,
        parts: Vec<u32>,
    },
    /// Owner to everyone: these partitions are served at this epoch; a
    /// member that no longer holds them may drop its old copy.
    Served {
        epoch: u64,
        parts: Vec<u32>,
    },
}

impl Peer {
    pub fn epoch(&self) -> u64 {
        match self {
            Peer::Digests { epoch, .. }
            | Peer::DigestAsk { epoch }
            | Peer::DataAsk { epoch, .. }
            | Peer::Data { epoch, .. }
            | Peer::Backup { epoch, .. }
            | Peer::BackupAck { epoch, .. }
            | Peer::Fill { epoch, .. }
            | Peer::FillAck { epoch, .. }
            | Peer::Served { epoch, .. } => *epoch,
        }
    }
}

/// Client to member (`rpc/maplog/<node>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MapRequest {
    Put {
        key: String,
        value: String,
    },
    Get {
        key: String,
    },
    /// The entries of every partition this member owns, at `epoch`.
    Scan {
        epoch: u64,
    },
    /// The view this member is at.
    View,
}

/// Operations one [`MapBatch`] carries at most.
pub const BATCH_MAX: usize = 512;

/// Client to member (`rpc/maplog-batch/<node>`): many operations at once
/// (a client's requests for one owner that were waiting together), each
/// handled as if alone; answered by one `Vec<MapAnswer>` in the same order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapBatch {
    pub ops: Vec<MapRequest>,
}

/// Member to client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum MapAnswer {
    Stored,
    Value {
        value: Option<String>,
    },
    Scanned {
        epoch: u64,
        entries: Vec<(String, String)>,
    },
    /// Not here or not now (wrong owner, syncing, another epoch): ask
    /// again, after following `view` if it is newer than the caller's.
    Retry {
        reason: String,
        view: Option<View>,
    },
    Invalid {
        reason: String,
    },
    Current {
        view: Option<View>,
    },
}

/// Why a map operation failed for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("the map did not answer in time: {0}")]
    Unavailable(String),
}

/// RPC service of each logger for the facade (`rpc/logger/<node>`): the
/// seed's `POST /database/` and `GET /database/` over the bus.
pub const LOGGER_SERVICE: &str = "logger";

/// Facade (or anyone) to a logger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum LogRequest {
    /// Put `msg` under `uuid` in the map; answered `Logged` only once the
    /// owner and its backups hold it.
    Log { uuid: String, msg: String },
    /// Every message in the map, newline-separated, as the seed's
    /// `GET /database/` returned them.
    All,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum LogAnswer {
    Logged,
    All { text: String },
}
