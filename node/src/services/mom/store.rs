//! The MOM's storage: one trait, [`MemStore`] (the reference, in memory) and
//! [`super::sql::SqlStore`] (SQLite), and one conformance suite run on both
//! (`conformance` below).
//!
//! Users are stored by id only ([`user_id`]: a hash of the key), so no access
//! key is ever written to disk. A published message is stored as one *copy*
//! per recipient: a queue's single copy is shared by its consumers, a topic
//! has one copy per subscriber. A consumed copy is in flight until acked; if
//! its visibility timeout passes first, it is handed out again (at least once
//! delivery) and its delivery count grows. Ids only ever grow, so applying the
//! same [`Command`]s in the same order yields the same ids on every replica.

use std::collections::{BTreeMap, BTreeSet};

use super::model::{
    CONSUME_BYTES, ChannelInfo, Command, Delivery, Kind, MomError, Outcome, check_name,
};

/// The public id of the user holding `key`: `u` + 16 hex digits of its SHA-256.
pub fn user_id(key: &str) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(key.as_bytes());
    format!("u{}", hex::encode(&hash[..8]))
}

pub trait MomStore {
    fn add_user(&mut self, id: &str) -> Result<(), MomError>;
    fn is_user(&self, id: &str) -> Result<bool, MomError>;
    /// Creates a topic or queue; `Exists` if the name is taken for that kind.
    fn create(&mut self, kind: Kind, name: &str, owner: &str) -> Result<(), MomError>;
    /// Deletes a channel with its subscriptions and messages; owner only.
    fn delete(&mut self, kind: Kind, name: &str, user: &str) -> Result<(), MomError>;
    /// Whether `user` was not subscribed before.
    fn subscribe(&mut self, kind: Kind, name: &str, user: &str) -> Result<bool, MomError>;
    /// Whether `user` was subscribed; its undelivered topic copies go too.
    fn unsubscribe(&mut self, kind: Kind, name: &str, user: &str) -> Result<bool, MomError>;
    /// Whether `user` is subscribed to the channel (`NotFound` if none).
    fn is_subscriber(&self, kind: Kind, name: &str, user: &str) -> Result<bool, MomError>;
    /// Stores messages in order, all or none, one copy per recipient (a
    /// topic's subscribers other than `skip`; a queue: one); returns each
    /// message's copy ids.
    fn publish_many(
        &mut self,
        kind: Kind,
        name: &str,
        bodies: &[String],
        now_ms: u64,
        skip: Option<&str>,
    ) -> Result<Vec<Vec<u64>>, MomError>;
    /// Stores a message; returns the ids of its copies.
    fn publish(
        &mut self,
        kind: Kind,
        name: &str,
        body: &str,
        now_ms: u64,
    ) -> Result<Vec<u64>, MomError> {
        let mut ids = self.publish_many(kind, name, &[body.to_owned()], now_ms, None)?;
        Ok(ids.pop().unwrap_or_default())
    }
    /// Stores messages in order, all or none; returns each one's copy ids.
    fn publish_all(
        &mut self,
        kind: Kind,
        name: &str,
        bodies: &[String],
        now_ms: u64,
    ) -> Result<Vec<Vec<u64>>, MomError> {
        self.publish_many(kind, name, bodies, now_ms, None)
    }
    /// Hands the oldest available copies to `user` (a subscriber), oldest
    /// first: up to `max` of them, and once one is handed out, no more than
    /// [`CONSUME_BYTES`] of bodies in all.
    fn consume(
        &mut self,
        kind: Kind,
        name: &str,
        user: &str,
        now_ms: u64,
        visibility_ms: u64,
        max: usize,
    ) -> Result<Vec<Delivery>, MomError>;
    /// Acknowledges a copy `user` holds in flight; it is gone for good.
    fn ack(&mut self, user: &str, id: u64) -> Result<(), MomError>;
    /// Acknowledges each copy of `ids` that `user` holds in flight; returns
    /// those acked, in order (the others were not `user`'s to ack: acked
    /// already, redelivered to another, unknown). (The default suits any
    /// store whose `ack` fails only before it changes anything.)
    fn ack_all(&mut self, user: &str, ids: &[u64]) -> Result<Vec<u64>, MomError> {
        let mut acked = Vec::new();
        for &id in ids {
            match self.ack(user, id) {
                Ok(()) => acked.push(id),
                Err(MomError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(acked)
    }
    /// Every channel (of `kind`, or all), by kind and name.
    fn list(&self, kind: Option<Kind>, now_ms: u64) -> Result<Vec<ChannelInfo>, MomError>;
    /// The owner of a channel.
    fn owner_of(&self, kind: Kind, name: &str) -> Result<String, MomError>;
    /// Makes a channel private (dropping the subscribers that are neither
    /// its owner nor granted, with their topic copies) or public.
    fn set_private(&mut self, kind: Kind, name: &str, private: bool) -> Result<(), MomError>;
    /// Lets `user` subscribe to the channel while it is private.
    fn grant(&mut self, kind: Kind, name: &str, user: &str) -> Result<(), MomError>;
    /// Whether `user` may subscribe: the channel is public, or it is the
    /// owner, or granted.
    fn may_subscribe(&self, kind: Kind, name: &str, user: &str) -> Result<bool, MomError>;
}

/// `NotOwner` unless `user` owns the channel.
fn owned_by(
    store: &dyn MomStore,
    kind: Kind,
    name: &str,
    user: &str,
    to: &str,
) -> Result<(), MomError> {
    if store.owner_of(kind, name)? == user {
        Ok(())
    } else {
        Err(MomError::NotOwner(format!(
            "only the owner of {kind} `{name}` may {to}"
        )))
    }
}

/// Applies one command (checking that its user exists) and returns its outcome.
pub fn apply(store: &mut dyn MomStore, command: &Command) -> Result<Outcome, MomError> {
    let known = |store: &dyn MomStore, user: &str| -> Result<(), MomError> {
        if store.is_user(user)? {
            Ok(())
        } else {
            Err(MomError::BadKey)
        }
    };
    match command {
        Command::AddUser { key } => store.add_user(key).map(|()| Outcome::Done),
        Command::Create {
            kind,
            name,
            owner,
            subscribe,
        } => {
            known(store, owner)?;
            check_name(name)?;
            store.create(*kind, name, owner)?;
            if *subscribe {
                store.subscribe(*kind, name, owner)?;
            }
            Ok(Outcome::Done)
        }
        Command::Delete { kind, name, user } => {
            known(store, user)?;
            store.delete(*kind, name, user).map(|()| Outcome::Done)
        }
        Command::Subscribe { kind, name, user } => {
            known(store, user)?;
            if !store.may_subscribe(*kind, name, user)? {
                return Err(MomError::NotOwner(format!(
                    "{kind} `{name}` is private: its owner must grant you access first"
                )));
            }
            let changed = store.subscribe(*kind, name, user)?;
            Ok(Outcome::Changed { changed })
        }
        Command::SetPrivate {
            kind,
            name,
            user,
            private,
        } => {
            known(store, user)?;
            owned_by(store, *kind, name, user, "make it private or public")?;
            store.set_private(*kind, name, *private)?;
            Ok(Outcome::Done)
        }
        Command::Grant {
            kind,
            name,
            user,
            to,
        } => {
            known(store, user)?;
            owned_by(store, *kind, name, user, "grant access to it")?;
            if !store.is_user(to)? {
                return Err(MomError::BadRequest(format!("no user `{to}` to grant")));
            }
            store.grant(*kind, name, to)?;
            Ok(Outcome::Done)
        }
        Command::Unsubscribe { kind, name, user } => {
            known(store, user)?;
            let changed = store.unsubscribe(*kind, name, user)?;
            Ok(Outcome::Changed { changed })
        }
        Command::Publish {
            kind,
            name,
            body,
            now_ms,
            sender,
        } => {
            if let Some(sender) = sender {
                known(store, sender)?;
                if !store.is_subscriber(*kind, name, sender)? {
                    return Err(MomError::NotSubscribed(format!(
                        "subscribe to {kind} `{name}` before publishing to it"
                    )));
                }
            }
            let mut ids = store.publish_many(
                *kind,
                name,
                std::slice::from_ref(body),
                *now_ms,
                sender.as_deref(),
            )?;
            Ok(Outcome::Published {
                ids: ids.pop().unwrap_or_default(),
            })
        }
        Command::PublishBatch {
            kind,
            name,
            bodies,
            now_ms,
        } => {
            let ids = store.publish_all(*kind, name, bodies, *now_ms)?;
            Ok(Outcome::PublishedBatch { ids })
        }
        Command::Consume {
            kind,
            name,
            user,
            now_ms,
            visibility_ms,
            max,
        } => {
            known(store, user)?;
            let max = usize::try_from(*max).unwrap_or(usize::MAX).max(1);
            let deliveries = store.consume(*kind, name, user, *now_ms, *visibility_ms, max)?;
            Ok(Outcome::Delivered { deliveries })
        }
        Command::Ack { user, id } => {
            known(store, user)?;
            store.ack(user, *id).map(|()| Outcome::Done)
        }
        Command::AckBatch { user, ids } => {
            known(store, user)?;
            let ids = store.ack_all(user, ids)?;
            Ok(Outcome::Acked { ids })
        }
    }
}

#[derive(Debug, Clone)]
struct Channel {
    owner: String,
    created: u64,
    subscribers: BTreeSet<String>,
    published: u64,
    delivered: u64,
    private: bool,
    granted: BTreeSet<String>,
}

#[derive(Debug, Clone)]
struct Copy {
    kind: Kind,
    name: String,
    /// The subscriber (topic) or "" (queue).
    recipient: String,
    body: String,
    published_ms: u64,
    deliveries: u32,
    consumer: Option<String>,
    /// In flight until then; 0 when never delivered.
    visible_at: u64,
}

/// The reference implementation: everything in memory.
#[derive(Debug, Default, Clone)]
pub struct MemStore {
    users: BTreeSet<String>,
    channels: BTreeMap<(Kind, String), Channel>,
    copies: BTreeMap<u64, Copy>,
    last_id: u64,
}

impl MemStore {
    fn channel_mut(&mut self, kind: Kind, name: &str) -> Result<&mut Channel, MomError> {
        self.channels
            .get_mut(&(kind, name.to_owned()))
            .ok_or_else(|| MomError::not_found(kind, name))
    }
}

/// Who a copy of a message on `kind` is for, for one consumer.
pub fn recipient(kind: Kind, user: &str) -> &str {
    match kind {
        Kind::Topic => user,
        Kind::Queue => "",
    }
}

impl MomStore for MemStore {
    fn add_user(&mut self, id: &str) -> Result<(), MomError> {
        if !self.users.insert(id.to_owned()) {
            return Err(MomError::Exists(format!("user `{id}` exists")));
        }
        Ok(())
    }

    fn is_user(&self, id: &str) -> Result<bool, MomError> {
        Ok(self.users.contains(id))
    }

    fn create(&mut self, kind: Kind, name: &str, owner: &str) -> Result<(), MomError> {
        let key = (kind, name.to_owned());
        if self.channels.contains_key(&key) {
            return Err(MomError::Exists(format!("a {kind} named `{name}` exists")));
        }
        // One more than the newest (the SQL store's rule too).
        let created = self.channels.values().map(|c| c.created).max().unwrap_or(0) + 1;
        self.channels.insert(
            key,
            Channel {
                owner: owner.to_owned(),
                created,
                subscribers: BTreeSet::new(),
                published: 0,
                delivered: 0,
                private: false,
                granted: BTreeSet::new(),
            },
        );
        Ok(())
    }

    fn delete(&mut self, kind: Kind, name: &str, user: &str) -> Result<(), MomError> {
        let channel = self.channel_mut(kind, name)?;
        if channel.owner != user {
            return Err(MomError::NotOwner(format!(
                "only the owner may delete {kind} `{name}`"
            )));
        }
        self.channels.remove(&(kind, name.to_owned()));
        self.copies
            .retain(|_, c| !(c.kind == kind && c.name == name));
        Ok(())
    }

    fn subscribe(&mut self, kind: Kind, name: &str, user: &str) -> Result<bool, MomError> {
        Ok(self
            .channel_mut(kind, name)?
            .subscribers
            .insert(user.to_owned()))
    }

    fn unsubscribe(&mut self, kind: Kind, name: &str, user: &str) -> Result<bool, MomError> {
        let was = self.channel_mut(kind, name)?.subscribers.remove(user);
        if kind == Kind::Topic {
            self.copies
                .retain(|_, c| !(c.kind == kind && c.name == name && c.recipient == user));
        }
        Ok(was)
    }

    fn is_subscriber(&self, kind: Kind, name: &str, user: &str) -> Result<bool, MomError> {
        self.channels
            .get(&(kind, name.to_owned()))
            .map(|c| c.subscribers.contains(user))
            .ok_or_else(|| MomError::not_found(kind, name))
    }

    fn publish_many(
        &mut self,
        kind: Kind,
        name: &str,
        bodies: &[String],
        now_ms: u64,
        skip: Option<&str>,
    ) -> Result<Vec<Vec<u64>>, MomError> {
        let channel = self.channel_mut(kind, name)?;
        channel.published += bodies.len() as u64;
        let recipients: Vec<String> = match kind {
            Kind::Topic => channel
                .subscribers
                .iter()
                .filter(|s| Some(s.as_str()) != skip)
                .cloned()
                .collect(),
            Kind::Queue => vec![String::new()],
        };
        let mut all = Vec::with_capacity(bodies.len());
        for body in bodies {
            let mut ids = Vec::with_capacity(recipients.len());
            for recipient in &recipients {
                self.last_id += 1;
                ids.push(self.last_id);
                self.copies.insert(
                    self.last_id,
                    Copy {
                        kind,
                        name: name.to_owned(),
                        recipient: recipient.clone(),
                        body: body.clone(),
                        published_ms: now_ms,
                        deliveries: 0,
                        consumer: None,
                        visible_at: 0,
                    },
                );
            }
            all.push(ids);
        }
        Ok(all)
    }

    fn consume(
        &mut self,
        kind: Kind,
        name: &str,
        user: &str,
        now_ms: u64,
        visibility_ms: u64,
        max: usize,
    ) -> Result<Vec<Delivery>, MomError> {
        if !self.channel_mut(kind, name)?.subscribers.contains(user) {
            return Err(MomError::NotSubscribed(format!(
                "subscribe to {kind} `{name}` before consuming from it"
            )));
        }
        let wanted = recipient(kind, user);
        let visible_again_ms = now_ms.saturating_add(visibility_ms);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (&id, copy) in self.copies.iter_mut() {
            if out.len() >= max {
                break;
            }
            if copy.kind != kind
                || copy.name != name
                || copy.recipient != wanted
                || copy.visible_at > now_ms
            {
                continue;
            }
            bytes = bytes.saturating_add(copy.body.len());
            if !out.is_empty() && bytes > CONSUME_BYTES {
                break;
            }
            copy.deliveries = copy.deliveries.saturating_add(1);
            copy.consumer = Some(user.to_owned());
            copy.visible_at = visible_again_ms;
            out.push(Delivery {
                id,
                body: copy.body.clone(),
                deliveries: copy.deliveries,
                published_ms: copy.published_ms,
                visible_again_ms,
            });
        }
        if let Some(channel) = self.channels.get_mut(&(kind, name.to_owned())) {
            channel.delivered += out.len() as u64;
        }
        Ok(out)
    }

    fn ack(&mut self, user: &str, id: u64) -> Result<(), MomError> {
        match self.copies.get(&id) {
            Some(c) if c.consumer.as_deref() == Some(user) => {
                self.copies.remove(&id);
                Ok(())
            }
            _ => Err(MomError::NotFound(format!(
                "no message {id} delivered to you awaits an ack (acked already, or redelivered to another consumer)"
            ))),
        }
    }

    fn list(&self, kind: Option<Kind>, now_ms: u64) -> Result<Vec<ChannelInfo>, MomError> {
        let mut out = Vec::new();
        for ((k, name), channel) in &self.channels {
            if kind.is_some_and(|kind| kind != *k) {
                continue;
            }
            let (mut ready, mut unacked) = (0, 0);
            for c in self.copies.values() {
                if c.kind == *k && &c.name == name {
                    if c.visible_at <= now_ms {
                        ready += 1;
                    } else {
                        unacked += 1;
                    }
                }
            }
            out.push(ChannelInfo {
                kind: *k,
                name: name.clone(),
                owner: channel.owner.clone(),
                subscribers: channel.subscribers.len() as u64,
                created: channel.created,
                ready,
                unacked,
                published: channel.published,
                delivered: channel.delivered,
                private: channel.private,
            });
        }
        Ok(out)
    }

    fn owner_of(&self, kind: Kind, name: &str) -> Result<String, MomError> {
        self.channels
            .get(&(kind, name.to_owned()))
            .map(|c| c.owner.clone())
            .ok_or_else(|| MomError::not_found(kind, name))
    }

    fn set_private(&mut self, kind: Kind, name: &str, private: bool) -> Result<(), MomError> {
        let channel = self.channel_mut(kind, name)?;
        channel.private = private;
        if !private {
            return Ok(());
        }
        let dropped: Vec<String> = channel
            .subscribers
            .iter()
            .filter(|u| **u != channel.owner && !channel.granted.contains(*u))
            .cloned()
            .collect();
        for user in dropped {
            self.unsubscribe(kind, name, &user)?;
        }
        Ok(())
    }

    fn grant(&mut self, kind: Kind, name: &str, user: &str) -> Result<(), MomError> {
        self.channel_mut(kind, name)?
            .granted
            .insert(user.to_owned());
        Ok(())
    }

    fn may_subscribe(&self, kind: Kind, name: &str, user: &str) -> Result<bool, MomError> {
        let c = self
            .channels
            .get(&(kind, name.to_owned()))
            .ok_or_else(|| MomError::not_found(kind, name))?;
        Ok(!c.private || c.owner == user || c.granted.contains(user))
    }
}

/// One suite, run on every implementation (see `conformance_tests!`).
#[cfg(test)]
pub mod conformance {
    use super::*;

    fn users(store: &mut dyn MomStore) -> (String, String) {
        let (a, b) = (user_id("key-a"), user_id("key-b"));
        apply(store, &Command::AddUser { key: a.clone() }).unwrap();
        apply(store, &Command::AddUser { key: b.clone() }).unwrap();
        (a, b)
    }

    fn create(store: &mut dyn MomStore, kind: Kind, name: &str, owner: &str) {
        apply(
            store,
            &Command::Create {
                kind,
                name: name.into(),
                owner: owner.into(),
                subscribe: false,
            },
        )
        .unwrap();
    }

    fn consume(
        store: &mut dyn MomStore,
        kind: Kind,
        name: &str,
        user: &str,
        now: u64,
    ) -> Option<Delivery> {
        let mut got = store.consume(kind, name, user, now, 1000, 1).unwrap();
        assert!(got.len() <= 1, "at most the one asked for");
        got.pop()
    }

    pub fn names_are_unique_per_kind(store: &mut dyn MomStore) {
        let (a, b) = users(store);
        create(store, Kind::Topic, "news", &a);
        let again = apply(
            store,
            &Command::Create {
                kind: Kind::Topic,
                name: "news".into(),
                owner: b.clone(),
                subscribe: false,
            },
        );
        assert!(matches!(again, Err(MomError::Exists(_))), "{again:?}");
        // A queue may share a topic's name.
        create(store, Kind::Queue, "news", &b);
        let all = store.list(None, 0).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(store.list(Some(Kind::Queue), 0).unwrap()[0].owner, b);
        let bad = apply(
            store,
            &Command::Create {
                kind: Kind::Queue,
                name: "no spaces".into(),
                owner: a,
                subscribe: false,
            },
        );
        assert!(matches!(bad, Err(MomError::BadRequest(_))), "{bad:?}");
    }

    pub fn unknown_users_are_refused(store: &mut dyn MomStore) {
        let (a, _) = users(store);
        create(store, Kind::Queue, "q", &a);
        for command in [
            Command::Create {
                kind: Kind::Queue,
                name: "x".into(),
                owner: "nobody".into(),
                subscribe: false,
            },
            Command::Subscribe {
                kind: Kind::Queue,
                name: "q".into(),
                user: "nobody".into(),
            },
            Command::Ack {
                user: "nobody".into(),
                id: 1,
            },
        ] {
            assert_eq!(apply(store, &command), Err(MomError::BadKey), "{command:?}");
        }
        let twice = apply(store, &Command::AddUser { key: a });
        assert!(matches!(twice, Err(MomError::Exists(_))));
    }

    pub fn topics_fan_out_to_subscribers_from_then_on(store: &mut dyn MomStore) {
        let (a, b) = users(store);
        create(store, Kind::Topic, "t", &a);
        store.subscribe(Kind::Topic, "t", &a).unwrap();
        assert_eq!(store.publish(Kind::Topic, "t", "one", 1).unwrap().len(), 1);
        assert!(store.subscribe(Kind::Topic, "t", &b).unwrap());
        assert!(
            !store.subscribe(Kind::Topic, "t", &b).unwrap(),
            "already subscribed"
        );
        assert_eq!(store.publish(Kind::Topic, "t", "two", 2).unwrap().len(), 2);
        let got_a: Vec<String> = std::iter::from_fn(|| consume(store, Kind::Topic, "t", &a, 10))
            .map(|d| d.body)
            .collect();
        assert_eq!(got_a, ["one", "two"]);
        let d = consume(store, Kind::Topic, "t", &b, 10).unwrap();
        assert_eq!((d.body.as_str(), d.deliveries), ("two", 1));
        assert_eq!(consume(store, Kind::Topic, "t", &b, 10), None);
        // Nobody subscribed: a publish is accepted and goes nowhere.
        create(store, Kind::Topic, "empty", &a);
        assert!(
            store
                .publish(Kind::Topic, "empty", "x", 3)
                .unwrap()
                .is_empty()
        );
    }

    pub fn private_channels_admit_only_the_owner_and_granted(store: &mut dyn MomStore) {
        let (a, b) = users(store);
        let c = user_id("key-c");
        apply(store, &Command::AddUser { key: c.clone() }).unwrap();
        create(store, Kind::Topic, "t", &a);
        let sub = |user: &str| Command::Subscribe {
            kind: Kind::Topic,
            name: "t".into(),
            user: user.into(),
        };
        let private = |user: &str, private| Command::SetPrivate {
            kind: Kind::Topic,
            name: "t".into(),
            user: user.into(),
            private,
        };
        let grant = |user: &str, to: &str| Command::Grant {
            kind: Kind::Topic,
            name: "t".into(),
            user: user.into(),
            to: to.into(),
        };
        apply(store, &sub(&b)).unwrap();
        store.publish(Kind::Topic, "t", "before", 1).unwrap();
        // Only the owner may change it.
        let r = apply(store, &private(&b, true));
        assert!(matches!(r, Err(MomError::NotOwner(_))), "{r:?}");
        let r = apply(store, &grant(&b, &b));
        assert!(matches!(r, Err(MomError::NotOwner(_))), "{r:?}");
        // Private: b is dropped with its copy; c may not subscribe.
        apply(store, &private(&a, true)).unwrap();
        assert!(!store.is_subscriber(Kind::Topic, "t", &b).unwrap());
        let info = &store.list(Some(Kind::Topic), 0).unwrap()[0];
        assert!(info.private);
        assert_eq!((info.subscribers, info.ready), (0, 0), "{info:?}");
        let r = apply(store, &sub(&c));
        assert!(
            matches!(r, Err(MomError::NotOwner(ref m)) if m.contains("private")),
            "{r:?}"
        );
        // The owner may, and a granted user.
        apply(store, &sub(&a)).unwrap();
        let r = apply(store, &grant(&a, "u-nobody"));
        assert!(matches!(r, Err(MomError::BadRequest(_))), "{r:?}");
        apply(store, &grant(&a, &c)).unwrap();
        apply(store, &sub(&c)).unwrap();
        store.publish(Kind::Topic, "t", "after", 2).unwrap();
        assert_eq!(
            consume(store, Kind::Topic, "t", &c, 10).unwrap().body,
            "after"
        );
        // Public again: anyone.
        apply(store, &private(&a, false)).unwrap();
        apply(store, &sub(&b)).unwrap();
        assert!(!store.list(Some(Kind::Topic), 0).unwrap()[0].private);
        // Deleting it takes the grants too: a new `t` is public, c not granted.
        apply(
            store,
            &Command::Delete {
                kind: Kind::Topic,
                name: "t".into(),
                user: a.clone(),
            },
        )
        .unwrap();
        create(store, Kind::Topic, "t", &a);
        apply(store, &private(&a, true)).unwrap();
        let r = apply(store, &sub(&c));
        assert!(matches!(r, Err(MomError::NotOwner(_))), "{r:?}");
    }

    pub fn queues_give_each_message_to_one_consumer(store: &mut dyn MomStore) {
        let (a, b) = users(store);
        create(store, Kind::Queue, "jobs", &a);
        store.subscribe(Kind::Queue, "jobs", &a).unwrap();
        store.subscribe(Kind::Queue, "jobs", &b).unwrap();
        for i in 0..4 {
            store
                .publish(Kind::Queue, "jobs", &format!("m{i}"), i)
                .unwrap();
        }
        let mut seen = Vec::new();
        for user in [&a, &b, &a, &b] {
            let d = consume(store, Kind::Queue, "jobs", user, 10).unwrap();
            store.ack(user, d.id).unwrap();
            seen.push(d.body);
        }
        assert_eq!(seen, ["m0", "m1", "m2", "m3"], "in order, each once");
        assert_eq!(consume(store, Kind::Queue, "jobs", &a, 10), None);
    }

    pub fn batches_are_stored_in_order_all_or_none(store: &mut dyn MomStore) {
        let (a, b) = users(store);
        create(store, Kind::Topic, "t", &a);
        store.subscribe(Kind::Topic, "t", &a).unwrap();
        store.subscribe(Kind::Topic, "t", &b).unwrap();
        let bodies: Vec<String> = (0..3).map(|i| format!("m{i}")).collect();
        let ids = store.publish_all(Kind::Topic, "t", &bodies, 1).unwrap();
        assert_eq!(ids.len(), 3, "one entry per message");
        assert!(ids.iter().all(|copies| copies.len() == 2), "{ids:?}");
        let flat: Vec<u64> = ids.concat();
        assert!(flat.windows(2).all(|w| w[0] < w[1]), "ids grow: {flat:?}");
        for user in [&a, &b] {
            let got: Vec<String> =
                std::iter::from_fn(|| consume(store, Kind::Topic, "t", user, 10))
                    .map(|d| d.body)
                    .collect();
            assert_eq!(got, bodies, "{user} gets the batch in order");
        }
        let before = store.list(None, 0).unwrap();
        let r = store.publish_all(Kind::Queue, "nope", &bodies, 2);
        assert!(matches!(r, Err(MomError::NotFound(_))), "{r:?}");
        assert_eq!(store.list(None, 0).unwrap(), before, "nothing stored");
        let info = &store.list(Some(Kind::Topic), 0).unwrap()[0];
        assert_eq!(info.published, 3);
        assert_eq!(
            store.publish_all(Kind::Topic, "t", &[], 3).unwrap().len(),
            0
        );
    }

    pub fn a_consume_hands_out_several_in_order_within_its_bounds(store: &mut dyn MomStore) {
        let (a, b) = users(store);
        create(store, Kind::Queue, "q", &a);
        store.subscribe(Kind::Queue, "q", &a).unwrap();
        store.subscribe(Kind::Queue, "q", &b).unwrap();
        for i in 0..10 {
            store
                .publish(Kind::Queue, "q", &format!("m{i}"), i)
                .unwrap();
        }
        let bodies = |d: &[Delivery]| d.iter().map(|d| d.body.clone()).collect::<Vec<_>>();
        let first = store.consume(Kind::Queue, "q", &a, 100, 1000, 4).unwrap();
        assert_eq!(bodies(&first), ["m0", "m1", "m2", "m3"]);
        assert!(
            first
                .iter()
                .all(|d| d.deliveries == 1 && d.visible_again_ms == 1100)
        );
        let rest = store.consume(Kind::Queue, "q", &b, 100, 1000, 100).unwrap();
        assert_eq!(
            bodies(&rest),
            ["m4", "m5", "m6", "m7", "m8", "m9"],
            "the others"
        );
        assert!(
            store
                .consume(Kind::Queue, "q", &b, 100, 1000, 100)
                .unwrap()
                .is_empty()
        );
        let info = &store.list(Some(Kind::Queue), 100).unwrap()[0];
        assert_eq!((info.ready, info.unacked, info.delivered), (0, 10, 10));

        // One batch ack: only what the caller holds goes.
        let mut ids: Vec<u64> = first.iter().map(|d| d.id).collect();
        ids.push(rest[0].id); // b's
        ids.push(first[0].id); // twice
        let acked = store.ack_all(&a, &ids).unwrap();
        assert_eq!(acked, first.iter().map(|d| d.id).collect::<Vec<_>>());
        let info = &store.list(Some(Kind::Queue), 100).unwrap()[0];
        assert_eq!((info.ready, info.unacked), (0, 6));
        assert_eq!(store.ack_all(&a, &[]).unwrap(), Vec::<u64>::new());

        // Redelivered after the timeout, in order, several at once.
        let again = store.consume(Kind::Queue, "q", &a, 1100, 1000, 3).unwrap();
        assert_eq!(bodies(&again), ["m4", "m5", "m6"]);
        assert!(again.iter().all(|d| d.deliveries == 2));

        // Bodies beyond the byte bound wait for the next consume; the first
        // one always goes.
        create(store, Kind::Queue, "big", &a);
        store.subscribe(Kind::Queue, "big", &a).unwrap();
        let half = "x".repeat(CONSUME_BYTES / 2);
        let huge = "y".repeat(CONSUME_BYTES + 1);
        for body in [&huge, &half, &half, &half] {
            store.publish(Kind::Queue, "big", body, 1).unwrap();
        }
        let sizes = |d: Vec<Delivery>| d.iter().map(|d| d.body.len()).collect::<Vec<_>>();
        let take =
            |store: &mut dyn MomStore| store.consume(Kind::Queue, "big", &a, 2, 1000, 10).unwrap();
        assert_eq!(sizes(take(store)), [huge.len()]);
        assert_eq!(sizes(take(store)), [half.len(), half.len()]);
        assert_eq!(sizes(take(store)), [half.len()]);
    }

    pub fn consuming_needs_a_subscription(store: &mut dyn MomStore) {
        let (a, b) = users(store);
        create(store, Kind::Queue, "q", &a);
        store.publish(Kind::Queue, "q", "x", 1).unwrap();
        let r = store.consume(Kind::Queue, "q", &b, 2, 1000, 1);
        assert!(matches!(r, Err(MomError::NotSubscribed(_))), "{r:?}");
        let r = store.consume(Kind::Queue, "nope", &b, 2, 1000, 1);
        assert!(matches!(r, Err(MomError::NotFound(_))), "{r:?}");
    }

    pub fn unacked_messages_come_back_after_the_visibility_timeout(store: &mut dyn MomStore) {
        let (a, b) = users(store);
        create(store, Kind::Queue, "q", &a);
        store.subscribe(Kind::Queue, "q", &a).unwrap();
        store.subscribe(Kind::Queue, "q", &b).unwrap();
        let id = store.publish(Kind::Queue, "q", "x", 0).unwrap()[0];
        let first = consume(store, Kind::Queue, "q", &a, 100).unwrap();
        assert_eq!(
            (first.id, first.deliveries, first.visible_again_ms),
            (id, 1, 1100)
        );
        // In flight: nobody else gets it before the timeout.
        assert_eq!(consume(store, Kind::Queue, "q", &b, 1099), None);
        let info = &store.list(Some(Kind::Queue), 500).unwrap()[0];
        assert_eq!((info.ready, info.unacked), (0, 1));
        let again = consume(store, Kind::Queue, "q", &b, 1100).unwrap();
        assert_eq!((again.id, again.deliveries), (id, 2));
        // The first consumer's late ack is refused; the new holder's counts.
        assert!(matches!(store.ack(&a, id), Err(MomError::NotFound(_))));
        store.ack(&b, id).unwrap();
        assert!(
            matches!(store.ack(&b, id), Err(MomError::NotFound(_))),
            "acked twice"
        );
        let info = &store.list(Some(Kind::Queue), 5000).unwrap()[0];
        assert_eq!(
            (info.ready, info.unacked, info.published, info.delivered),
            (0, 0, 1, 2)
        );
    }

    pub fn only_the_owner_deletes_and_delete_takes_everything(store: &mut dyn MomStore) {
        let (a, b) = users(store);
        create(store, Kind::Topic, "t", &a);
        store.subscribe(Kind::Topic, "t", &b).unwrap();
        store.publish(Kind::Topic, "t", "x", 1).unwrap();
        let r = apply(
            store,
            &Command::Delete {
                kind: Kind::Topic,
                name: "t".into(),
                user: b.clone(),
            },
        );
        assert!(matches!(r, Err(MomError::NotOwner(_))), "{r:?}");
        store.delete(Kind::Topic, "t", &a).unwrap();
        assert!(store.list(None, 0).unwrap().is_empty());
        // Re-created under the same name: nothing of the old one remains.
        create(store, Kind::Topic, "t", &b);
        store.subscribe(Kind::Topic, "t", &b).unwrap();
        assert_eq!(consume(store, Kind::Topic, "t", &b, 5), None);
        let r = store.delete(Kind::Queue, "t", &b);
        assert!(matches!(r, Err(MomError::NotFound(_))), "{r:?}");
    }

    pub fn unsubscribing_from_a_topic_drops_its_pending_copies(store: &mut dyn MomStore) {
        let (a, b) = users(store);
        create(store, Kind::Topic, "t", &a);
        store.subscribe(Kind::Topic, "t", &a).unwrap();
        store.subscribe(Kind::Topic, "t", &b).unwrap();
        store.publish(Kind::Topic, "t", "x", 1).unwrap();
        assert!(store.unsubscribe(Kind::Topic, "t", &b).unwrap());
        assert!(!store.unsubscribe(Kind::Topic, "t", &b).unwrap());
        let info = &store.list(None, 2).unwrap()[0];
        assert_eq!((info.subscribers, info.ready), (1, 1));
        store.subscribe(Kind::Topic, "t", &b).unwrap();
        assert_eq!(consume(store, Kind::Topic, "t", &b, 5), None);
    }

    pub fn ids_only_grow(store: &mut dyn MomStore) {
        let (a, _) = users(store);
        create(store, Kind::Queue, "q", &a);
        store.subscribe(Kind::Queue, "q", &a).unwrap();
        let first = store.publish(Kind::Queue, "q", "x", 1).unwrap()[0];
        let d = consume(store, Kind::Queue, "q", &a, 2).unwrap();
        store.ack(&a, d.id).unwrap();
        let second = store.publish(Kind::Queue, "q", "y", 3).unwrap()[0];
        assert!(second > first, "{second} after {first}");
        store.delete(Kind::Queue, "q", &a).unwrap();
        create(store, Kind::Queue, "q", &a);
        let third = store.publish(Kind::Queue, "q", "z", 4).unwrap()[0];
        assert!(third > second);
    }

    /// The seed's rules, asked for by its API: the creator is subscribed at
    /// once; a publisher must be subscribed and gets no copy of its own
    /// topic message (a queue's one copy is anyone's, the sender's too);
    /// channels list in the order they were created.
    pub fn the_seed_rules_when_asked_for(store: &mut dyn MomStore) {
        let (a, b) = users(store);
        let create = |store: &mut dyn MomStore, kind: Kind, name: &str, owner: &str| {
            apply(
                store,
                &Command::Create {
                    kind,
                    name: name.into(),
                    owner: owner.into(),
                    subscribe: true,
                },
            )
            .unwrap();
        };
        let publish = |store: &mut dyn MomStore, kind: Kind, name: &str, sender: &str| {
            apply(
                store,
                &Command::Publish {
                    kind,
                    name: name.into(),
                    body: format!("from {sender}"),
                    now_ms: 1,
                    sender: Some(sender.into()),
                },
            )
        };
        create(store, Kind::Queue, "zq", &a);
        assert!(store.is_subscriber(Kind::Queue, "zq", &a).unwrap());
        assert!(!store.is_subscriber(Kind::Queue, "zq", &b).unwrap());
        let r = publish(store, Kind::Queue, "zq", &b);
        assert!(matches!(r, Err(MomError::NotSubscribed(_))), "{r:?}");
        assert_eq!(
            publish(store, Kind::Queue, "zq", &a),
            Ok(Outcome::Published { ids: vec![1] })
        );
        let d =
            consume(store, Kind::Queue, "zq", &a, 2).expect("the creator consumes its own queue");
        assert_eq!(d.body, format!("from {a}"));

        create(store, Kind::Topic, "t", &a);
        store.subscribe(Kind::Topic, "t", &b).unwrap();
        let Ok(Outcome::Published { ids }) = publish(store, Kind::Topic, "t", &a) else {
            panic!("a subscribed publisher may publish");
        };
        assert_eq!(ids.len(), 1, "one copy, for b: none for the sender");
        assert_eq!(consume(store, Kind::Topic, "t", &a, 3), None);
        assert_eq!(
            consume(store, Kind::Topic, "t", &b, 3).unwrap().body,
            format!("from {a}")
        );
        // Without the rule (the JSON API), anyone publishes to everyone.
        assert_eq!(store.publish(Kind::Topic, "t", "all", 4).unwrap().len(), 2);
        let unknown = publish(store, Kind::Topic, "nope", &a);
        assert!(matches!(unknown, Err(MomError::NotFound(_))), "{unknown:?}");

        // Creation order, not name order; a re-created channel comes last.
        create(store, Kind::Queue, "aq", &a);
        store.delete(Kind::Queue, "zq", &a).unwrap();
        create(store, Kind::Queue, "zq", &a);
        let mut queues = store.list(Some(Kind::Queue), 5).unwrap();
        queues.sort_by_key(|c| c.created);
        let names: Vec<&str> = queues.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["aq", "zq"]);
    }

    /// A replica applying the same commands ends in the same state.
    pub fn same_commands_same_state(make: &mut dyn FnMut() -> Box<dyn MomStore>) {
        let (a, b) = (user_id("a"), user_id("b"));
        let script = vec![
            Command::AddUser { key: a.clone() },
            Command::AddUser { key: b.clone() },
            Command::Create {
                kind: Kind::Queue,
                name: "q".into(),
                owner: a.clone(),
                subscribe: false,
            },
            Command::Subscribe {
                kind: Kind::Queue,
                name: "q".into(),
                user: b.clone(),
            },
            Command::Publish {
                kind: Kind::Queue,
                name: "q".into(),
                body: "1".into(),
                now_ms: 1,
                sender: None,
            },
            Command::Publish {
                kind: Kind::Queue,
                name: "q".into(),
                body: "2".into(),
                now_ms: 2,
                sender: None,
            },
            Command::Consume {
                kind: Kind::Queue,
                name: "q".into(),
                user: b.clone(),
                now_ms: 3,
                visibility_ms: 10,
                max: 1,
            },
            Command::Ack {
                user: b.clone(),
                id: 1,
            },
            Command::Consume {
                kind: Kind::Queue,
                name: "q".into(),
                user: b.clone(),
                now_ms: 4,
                visibility_ms: 10,
                max: 1,
            },
            Command::Publish {
                kind: Kind::Queue,
                name: "q".into(),
                body: "3".into(),
                now_ms: 5,
                sender: None,
            },
            Command::AckBatch {
                user: b.clone(),
                ids: vec![2, 1, 99],
            },
            Command::Consume {
                kind: Kind::Queue,
                name: "q".into(),
                user: b.clone(),
                now_ms: 6,
                visibility_ms: 10,
                max: 10,
            },
        ];
        let mut one = make();
        let mut two = make();
        let outcomes: Vec<_> = script.iter().map(|c| apply(one.as_mut(), c)).collect();
        let again: Vec<_> = script.iter().map(|c| apply(two.as_mut(), c)).collect();
        assert_eq!(outcomes, again);
        assert_eq!(one.list(None, 5).unwrap(), two.list(None, 5).unwrap());
        assert_eq!(
            outcomes[outcomes.len() - 4],
            Ok(Outcome::Delivered {
                deliveries: vec![Delivery {
                    id: 2,
                    body: "2".into(),
                    deliveries: 1,
                    published_ms: 2,
                    visible_again_ms: 14
                }]
            })
        );
        assert_eq!(
            outcomes[outcomes.len() - 2],
            Ok(Outcome::Acked { ids: vec![2] }),
            "1 was acked before, 99 never was"
        );
        assert_eq!(
            outcomes[outcomes.len() - 1],
            Ok(Outcome::Delivered {
                deliveries: vec![Delivery {
                    id: 3,
                    body: "3".into(),
                    deliveries: 1,
                    published_ms: 5,
                    visible_again_ms: 16
                }]
            })
        );
    }
}

/// Runs the conformance suite on one implementation: `$make` builds a fresh store.
#[cfg(test)]
#[macro_export]
macro_rules! mom_conformance_tests {
    ($make:expr) => {
        mod conformance {
            use super::*;
            use $crate::services::mom::store::{MomStore, conformance};

            fn fresh() -> Box<dyn MomStore> {
                Box::new($make)
            }

            #[test]
            fn names_are_unique_per_kind() {
                conformance::names_are_unique_per_kind(fresh().as_mut());
            }
            #[test]
            fn unknown_users_are_refused() {
                conformance::unknown_users_are_refused(fresh().as_mut());
            }
            #[test]
            fn topics_fan_out_to_subscribers_from_then_on() {
                conformance::topics_fan_out_to_subscribers_from_then_on(fresh().as_mut());
            }
            #[test]
            fn private_channels_admit_only_the_owner_and_granted() {
                conformance::private_channels_admit_only_the_owner_and_granted(fresh().as_mut());
            }
            #[test]
            fn queues_give_each_message_to_one_consumer() {
                conformance::queues_give_each_message_to_one_consumer(fresh().as_mut());
            }
            #[test]
            fn batches_are_stored_in_order_all_or_none() {
                conformance::batches_are_stored_in_order_all_or_none(fresh().as_mut());
            }
            #[test]
            fn a_consume_hands_out_several_in_order_within_its_bounds() {
                conformance::a_consume_hands_out_several_in_order_within_its_bounds(
                    fresh().as_mut(),
                );
            }
            #[test]
            fn consuming_needs_a_subscription() {
                conformance::consuming_needs_a_subscription(fresh().as_mut());
            }
            #[test]
            fn unacked_messages_come_back_after_the_visibility_timeout() {
                conformance::unacked_messages_come_back_after_the_visibility_timeout(
                    fresh().as_mut(),
                );
            }
            #[test]
            fn only_the_owner_deletes_and_delete_takes_everything() {
                conformance::only_the_owner_deletes_and_delete_takes_everything(fresh().as_mut());
            }
            #[test]
            fn unsubscribing_from_a_topic_drops_its_pending_copies() {
                conformance::unsubscribing_from_a_topic_drops_its_pending_copies(fresh().as_mut());
            }
            #[test]
            fn ids_only_grow() {
                conformance::ids_only_grow(fresh().as_mut());
            }
            #[test]
            fn the_seed_rules_when_asked_for() {
                conformance::the_seed_rules_when_asked_for(fresh().as_mut());
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

    crate::mom_conformance_tests!(MemStore::default());

    #[test]
    fn user_ids_hide_the_key() {
        let id = user_id("secret-key");
        assert_eq!(id.len(), 17);
        assert!(!id.contains("secret"));
        assert_eq!(id, user_id("secret-key"));
        assert_ne!(id, user_id("other-key"));
    }
}
