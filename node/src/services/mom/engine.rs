//! The MOM's engine: the replicated engine ([`crate::replica::Engine`]:
//! one thread owning the store, group commit, the replication log) on the
//! MOM's [`SqlStore`], plus the MOM's reads.

use tokio::sync::Notify;

use super::model::{ChannelInfo, Kind, MomError};
use super::sql::SqlStore;
use super::store::MomStore;

pub type Engine = crate::replica::Engine<SqlStore>;
pub type Mode = crate::replica::Mode<SqlStore>;

impl crate::replica::Engine<SqlStore> {
    /// The MOM engine on `store`, serving nothing until a mode is set.
    pub fn start_mom(store: SqlStore) -> Result<Self, MomError> {
        Self::start(store, "mom-engine")
    }

    pub async fn list(
        &self,
        kind: Option<Kind>,
        now_ms: u64,
    ) -> Result<Vec<ChannelInfo>, MomError> {
        self.read(move |s| s.list(kind, now_ms)).await
    }

    pub async fn is_user(&self, id: &str) -> Result<bool, MomError> {
        let id = id.to_owned();
        self.read(move |s| s.is_user(&id)).await
    }

    /// Resolves after the next commit that stored a message.
    pub fn published(&self) -> &Notify {
        self.changes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::ReplError;
    use crate::replica::log::{LogStore, apply_entries};
    use crate::services::mom::model::Command;
    use crate::services::mom::sql::Entry;
    use crate::services::mom::store::user_id;

    /// A primary's store after `commands`, and its log.
    fn primary(epoch: u64, commands: &[Command]) -> (SqlStore, Vec<Entry>) {
        let mut s = SqlStore::open_in_memory().unwrap();
        for c in commands {
            let (outcome, entry) = s.apply_logged(c.clone(), Some(epoch));
            outcome.unwrap();
            assert!(entry.is_some(), "{c:?} is logged");
        }
        let log = s.entries_after(0, 1000, usize::MAX).unwrap();
        (s, log)
    }

    fn script(n: usize) -> Vec<Command> {
        let a = user_id("a");
        let mut c = vec![
            Command::AddUser { key: a.clone() },
            Command::Create {
                kind: Kind::Queue,
                name: "q".into(),
                owner: a.clone(),
            },
            Command::Subscribe {
                kind: Kind::Queue,
                name: "q".into(),
                user: a.clone(),
            },
        ];
        for i in 0..n {
            c.push(Command::Publish {
                kind: Kind::Queue,
                name: "q".into(),
                body: format!("m{i}"),
                now_ms: i as u64,
            });
        }
        c
    }

    #[test]
    fn catch_up_in_pieces_reaches_the_primary_state() {
        let (p, log) = primary(1, &script(10));
        let mut r = SqlStore::open_in_memory().unwrap();
        for piece in log.chunks(4) {
            apply_entries(&mut r, piece, 1).unwrap();
        }
        assert_eq!(r.position().unwrap(), p.position().unwrap());
        assert_eq!(r.list(None, 0).unwrap(), p.list(None, 0).unwrap());
        // A rejoin sends entries the replica has: they are skipped.
        let again = apply_entries(&mut r, &log[5..], 1).unwrap();
        assert_eq!(again.lsn, log.len() as u64);
        assert_eq!(r.list(None, 0).unwrap(), p.list(None, 0).unwrap());
    }

    #[test]
    fn a_gap_is_refused() {
        let (_, log) = primary(1, &script(3));
        let mut r = SqlStore::open_in_memory().unwrap();
        apply_entries(&mut r, &log[..2], 1).unwrap();
        let err = apply_entries(&mut r, &log[3..], 1).unwrap_err();
        assert!(matches!(err, ReplError::BadRequest(m) if m.contains("gap")));
    }

    #[test]
    fn entries_of_an_older_epoch_are_fenced() {
        let (_, log) = primary(1, &script(2));
        let mut r = SqlStore::open_in_memory().unwrap();
        r.set_epoch_seen(3).unwrap();
        let err = apply_entries(&mut r, &log, 2).unwrap_err();
        assert!(matches!(err, ReplError::Fenced(_)), "{err:?}");
        assert_eq!(r.position().unwrap().lsn, 0, "nothing applied");
    }

    #[test]
    fn a_diverged_replica_starts_over_and_matches_the_primary() {
        // The old primary wrote entries in epoch 1 that the new primary (epoch 2) never had.
        let (_, old_log) = primary(1, &script(5));
        let mut old = SqlStore::open_in_memory().unwrap();
        apply_entries(&mut old, &old_log, 1).unwrap();
        let mut new_script = script(2);
        new_script.push(Command::Publish {
            kind: Kind::Queue,
            name: "q".into(),
            body: "new".into(),
            now_ms: 9,
        });
        let (p, new_log) = primary(2, &new_script);
        // Its last entry is not the primary's: start over.
        let here = old.position().unwrap();
        assert_ne!(p.epoch_at(here.lsn).unwrap(), Some(here.epoch));
        old.reset().unwrap();
        apply_entries(&mut old, &new_log, 2).unwrap();
        assert_eq!(old.list(None, 0).unwrap(), p.list(None, 0).unwrap());
        assert_eq!(old.position().unwrap(), p.position().unwrap());
        // Same ids as the primary's, since ids restart with the log.
        let mut old = old;
        let d = old
            .consume(Kind::Queue, "q", &user_id("a"), 100, 10)
            .unwrap()
            .unwrap();
        assert_eq!((d.id, d.body.as_str()), (1, "m0"));
    }
}
