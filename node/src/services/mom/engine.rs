//! The MOM's engine: the replicated engine ([`crate::replica::Engine`]:
//! one thread owning the store and its raft replica, group commit) on the
//! MOM's [`SqlStore`], plus the MOM's reads.

use tokio::sync::Notify;

use super::model::{ChannelInfo, Kind, MomError};
use super::sql::SqlStore;
use super::store::MomStore;

pub type Engine = crate::replica::Engine<SqlStore>;

impl crate::replica::Engine<SqlStore> {
    /// The channels as of now (a current read: every acknowledged change is in).
    pub async fn list(
        &self,
        kind: Option<Kind>,
        now_ms: u64,
    ) -> Result<Vec<ChannelInfo>, MomError> {
        self.read_current(move |s| s.list(kind, now_ms)).await
    }

    pub async fn is_user(&self, id: &str) -> Result<bool, MomError> {
        let id = id.to_owned();
        self.read_current(move |s| s.is_user(&id)).await
    }

    /// Channels as this replica has applied them (may lag the leader; for
    /// telemetry).
    pub async fn list_local(
        &self,
        kind: Option<Kind>,
        now_ms: u64,
    ) -> Result<Vec<ChannelInfo>, MomError> {
        self.read(move |s| s.list(kind, now_ms)).await
    }

    /// Whether `user` could consume from the channel now, as this replica
    /// has applied (a local read, no log entry).
    pub async fn has_visible(
        &self,
        kind: Kind,
        name: &str,
        user: &str,
        now_ms: u64,
    ) -> Result<bool, MomError> {
        let (name, user) = (name.to_owned(), user.to_owned());
        self.read(move |s| s.has_visible(kind, &name, &user, now_ms))
            .await
    }

    /// Resolves after the next commit that stored a message.
    pub fn published(&self) -> &Notify {
        self.changes()
    }
}
