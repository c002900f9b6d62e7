//! The two state machines, over small storage traits: [`apply_users`]
//! (users, each with at most one locker, and the requests they wait on)
//! and [`apply_lockers`] (lockers, each free or held by one user, and the
//! answers given). [`MemUsers`] and [`MemLockers`] are the references in
//! memory; [`super::sql`] has the SQLite stores the replicas run; one
//! conformance suite (`conformance` below) runs on both.
//!
//! The rules that keep a locker from going to two users, or to nobody:
//! - the lockers answer each request id once and remember the answer, so a
//!   request delivered again (a crash before its ack, a resend) gets the
//!   same answer and changes nothing;
//! - a take by a user who holds a locker is answered with that locker
//!   (at most one per user, even for two different requests);
//! - a take picks the lowest free locker in one conditional update, on the
//!   log's order, so the decision never rests on a stale read;
//! - a locker granted to a user who is gone by the time the answer comes
//!   back is freed again (the users group queues a free for it);
//! - deleting a user frees what it holds or is being given.

use std::collections::{BTreeMap, VecDeque};

use super::model::{
    Answered, Done, Finished, Holder, Locker, LockerError, LockerId, LockerReply, LockerRequest,
    LockersCommand, Op, Outgoing, Pending, RequestState, User, UserId, UsersCommand, UsersOutcome,
    check_name,
};

/// How many answers the lockers remember (by request id); far more than
/// can be in flight, so a redelivery is always recognised.
pub const REMEMBERED: usize = 100_000;

pub trait UserTable {
    fn user(&self, name: &str) -> Result<Option<User>, LockerError>;
    fn user_by_id(&self, id: UserId) -> Result<Option<User>, LockerError>;
    /// Every user, oldest first.
    fn users(&self) -> Result<Vec<User>, LockerError>;
    /// Adds a user without a locker; `Exists` if the name is taken.
    fn insert_user(&mut self, name: &str, now_ms: u64) -> Result<User, LockerError>;
    fn remove_user(&mut self, id: UserId) -> Result<(), LockerError>;
    /// Stores a user's locker, pending request and last answer.
    fn put_user(&mut self, user: &User) -> Result<(), LockerError>;
    /// Queues a request for the lockers (a request id already queued is kept).
    fn push_out(&mut self, request: &LockerRequest, now_ms: u64) -> Result<(), LockerError>;
    /// Removes a queued request, returning it.
    fn take_out(&mut self, request: &str) -> Result<Option<LockerRequest>, LockerError>;
    /// The queued requests, oldest first.
    fn outbox(&self) -> Result<Vec<Outgoing>, LockerError>;
    fn outbox_len(&self) -> Result<u64, LockerError>;
}

pub trait LockerTable {
    /// Every locker by id.
    fn lockers(&self) -> Result<Vec<Locker>, LockerError>;
    fn held_by(&self, user: UserId) -> Result<Option<LockerId>, LockerError>;
    /// Gives the lowest free locker to `holder`, if one is free.
    fn take_free(&mut self, holder: &Holder, now_ms: u64) -> Result<Option<LockerId>, LockerError>;
    /// Frees the locker `user` holds, if any.
    fn release(&mut self, user: UserId, now_ms: u64) -> Result<Option<LockerId>, LockerError>;
    fn answered(&self, request: &str) -> Result<Option<Done>, LockerError>;
    /// Remembers an answer (forgetting the oldest beyond [`REMEMBERED`]).
    fn record(&mut self, request: &str, done: &Done) -> Result<(), LockerError>;
}

fn finished(request: &str, done: Done) -> RequestState {
    RequestState::Done {
        request: request.to_owned(),
        done,
    }
}

/// Applies one command to the users state.
pub fn apply_users(
    t: &mut dyn UserTable,
    command: &UsersCommand,
) -> Result<UsersOutcome, LockerError> {
    match command {
        UsersCommand::Add { name, now_ms } => {
            check_name(name)?;
            Ok(UsersOutcome::Added(t.insert_user(name, *now_ms)?))
        }
        UsersCommand::Delete {
            name,
            request,
            now_ms,
        } => {
            let Some(user) = t.user(name)? else {
                return Ok(UsersOutcome::Deleted(None));
            };
            t.remove_user(user.id)?;
            let taking = matches!(&user.pending, Some(p) if p.op == Op::Take);
            if user.locker.is_some() || taking {
                let free = LockerRequest {
                    request: request.clone(),
                    op: Op::Free,
                    user: user.id,
                    name: user.name.clone(),
                };
                t.push_out(&free, *now_ms)?;
            }
            Ok(UsersOutcome::Deleted(Some(user)))
        }
        UsersCommand::Request {
            name,
            request,
            op,
            now_ms,
            max_waiting,
            retry,
        } => request_op(t, name, request, *op, *now_ms, *max_waiting, *retry)
            .map(UsersOutcome::Requested),
        UsersCommand::Replies { replies, now_ms } => {
            let mut answered = Vec::new();
            for reply in replies {
                if let Some(a) = apply_reply(t, reply, *now_ms)? {
                    answered.push(a);
                }
            }
            Ok(UsersOutcome::Applied(answered))
        }
    }
}

fn request_op(
    t: &mut dyn UserTable,
    name: &str,
    request: &str,
    op: Op,
    now_ms: u64,
    max_waiting: u64,
    retry: bool,
) -> Result<RequestState, LockerError> {
    check_name(name)?;
    if request.is_empty() || request.len() > 128 {
        return Err(LockerError::BadRequest(
            "a request id is 1 to 128 bytes".into(),
        ));
    }
    let mut user = t
        .user(name)?
        .ok_or_else(|| LockerError::UserNotExists(name.to_owned()))?;
    // The same request again: where it stands.
    if let Some(p) = &user.pending
        && p.request == request
    {
        return Ok(RequestState::Pending {
            request: request.to_owned(),
        });
    }
    if let Some(f) = &user.last
        && f.request == request
    {
        return Ok(finished(request, f.done));
    }
    if retry {
        return Err(LockerError::BadRequest(format!(
            "request `{request}` is neither the pending nor the last request of `{name}`; \
             leave `request` out to ask anew"
        )));
    }
    match (op, &user.pending) {
        (Op::Take, Some(p)) if p.op == Op::Take => {
            return Ok(RequestState::Pending {
                request: p.request.clone(),
            });
        }
        (Op::Take, Some(_)) => {
            return Err(LockerError::Busy(format!(
                "the locker of `{name}` is being freed; take again once it is"
            )));
        }
        (Op::Take, None) => {
            if let Some(locker) = user.locker {
                return Ok(finished(request, Done::Granted { locker }));
            }
        }
        (Op::Free, Some(p)) if p.op == Op::Free => {
            return Ok(RequestState::Pending {
                request: p.request.clone(),
            });
        }
        (Op::Free, Some(_)) => return Err(LockerError::WithoutLocker(name.to_owned())),
        (Op::Free, None) => {
            if user.locker.is_none() {
                return Err(LockerError::WithoutLocker(name.to_owned()));
            }
        }
    }
    let waiting = t.outbox_len()?;
    if waiting >= max_waiting {
        return Err(LockerError::Full(format!(
            "{waiting} requests are waiting for the lockers already, the most this group keeps \
             (is the MOM down?); try again later"
        )));
    }
    t.push_out(
        &LockerRequest {
            request: request.to_owned(),
            op,
            user: user.id,
            name: user.name.clone(),
        },
        now_ms,
    )?;
    user.pending = Some(Pending {
        request: request.to_owned(),
        op,
        since_ms: now_ms,
    });
    t.put_user(&user)?;
    Ok(RequestState::Pending {
        request: request.to_owned(),
    })
}

fn apply_reply(
    t: &mut dyn UserTable,
    reply: &LockerReply,
    now_ms: u64,
) -> Result<Option<Answered>, LockerError> {
    // Not queued (any more): an answer given twice, already applied.
    let Some(sent) = t.take_out(&reply.request)? else {
        return Ok(None);
    };
    let mut user = t.user_by_id(reply.user)?;
    let since = match &user {
        Some(u) => u.pending.as_ref().filter(|p| p.request == reply.request),
        None => None,
    }
    .map(|p| p.since_ms);
    if let (Some(user), Some(since)) = (user.as_mut(), since) {
        match reply.done {
            Done::Granted { locker } => user.locker = Some(locker),
            Done::NoneFree => {}
            Done::Freed { .. } => user.locker = None,
        }
        user.pending = None;
        user.last = Some(Finished {
            request: reply.request.clone(),
            done: reply.done,
        });
        t.put_user(user)?;
        return Ok(Some(Answered {
            request: reply.request.clone(),
            done: reply.done,
            waited_ms: now_ms.saturating_sub(since),
        }));
    }
    // A locker granted to a user who is gone (or no longer asks): back it goes.
    if let Done::Granted { locker } = reply.done
        && user.and_then(|u| u.locker) != Some(locker)
    {
        let undo = LockerRequest {
            request: format!("{}~undo", reply.request),
            op: Op::Free,
            user: reply.user,
            name: sent.name,
        };
        t.push_out(&undo, now_ms)?;
    }
    Ok(None)
}

/// Applies one command to the lockers state; returns the answers, in order.
pub fn apply_lockers(
    t: &mut dyn LockerTable,
    command: &LockersCommand,
) -> Result<Vec<LockerReply>, LockerError> {
    let LockersCommand::Handle { requests, now_ms } = command;
    let mut replies = Vec::with_capacity(requests.len());
    for r in requests {
        let done = match t.answered(&r.request)? {
            Some(done) => done,
            None => {
                let done = match r.op {
                    Op::Take => match t.held_by(r.user)? {
                        Some(locker) => Done::Granted { locker },
                        None => {
                            let holder = Holder {
                                user: r.user,
                                name: r.name.clone(),
                            };
                            match t.take_free(&holder, *now_ms)? {
                                Some(locker) => Done::Granted { locker },
                                None => Done::NoneFree,
                            }
                        }
                    },
                    Op::Free => Done::Freed {
                        locker: t.release(r.user, *now_ms)?,
                    },
                };
                t.record(&r.request, &done)?;
                done
            }
        };
        replies.push(LockerReply {
            request: r.request.clone(),
            user: r.user,
            done,
        });
    }
    Ok(replies)
}

/// The users state in memory: the reference for [`super::sql::SqlUsers`].
#[derive(Debug, Default)]
pub struct MemUsers {
    users: BTreeMap<UserId, User>,
    next: UserId,
    outbox: Vec<Outgoing>,
}

impl UserTable for MemUsers {
    fn user(&self, name: &str) -> Result<Option<User>, LockerError> {
        Ok(self.users.values().find(|u| u.name == name).cloned())
    }

    fn user_by_id(&self, id: UserId) -> Result<Option<User>, LockerError> {
        Ok(self.users.get(&id).cloned())
    }

    fn users(&self) -> Result<Vec<User>, LockerError> {
        Ok(self.users.values().cloned().collect())
    }

    fn insert_user(&mut self, name: &str, now_ms: u64) -> Result<User, LockerError> {
        if self.user(name)?.is_some() {
            return Err(LockerError::Exists(name.to_owned()));
        }
        self.next += 1;
        let user = User {
            id: self.next,
            name: name.to_owned(),
            locker: None,
            pending: None,
            last: None,
            since_ms: now_ms,
        };
        self.users.insert(user.id, user.clone());
        Ok(user)
    }

    fn remove_user(&mut self, id: UserId) -> Result<(), LockerError> {
        self.users.remove(&id);
        Ok(())
    }

    fn put_user(&mut self, user: &User) -> Result<(), LockerError> {
        if let Some(u) = self.users.get_mut(&user.id) {
            u.clone_from(user);
        }
        Ok(())
    }

    fn push_out(&mut self, request: &LockerRequest, now_ms: u64) -> Result<(), LockerError> {
        if !self
            .outbox
            .iter()
            .any(|o| o.request.request == request.request)
        {
            self.outbox.push(Outgoing {
                request: request.clone(),
                queued_ms: now_ms,
            });
        }
        Ok(())
    }

    fn take_out(&mut self, request: &str) -> Result<Option<LockerRequest>, LockerError> {
        let at = self
            .outbox
            .iter()
            .position(|o| o.request.request == request);
        Ok(at.map(|i| self.outbox.remove(i).request))
    }

    fn outbox(&self) -> Result<Vec<Outgoing>, LockerError> {
        Ok(self.outbox.clone())
    }

    fn outbox_len(&self) -> Result<u64, LockerError> {
        Ok(self.outbox.len() as u64)
    }
}

/// The lockers state in memory: the reference for [`super::sql::SqlLockers`].
#[derive(Debug)]
pub struct MemLockers {
    lockers: Vec<Locker>,
    answers: BTreeMap<String, Done>,
    order: VecDeque<String>,
}

impl MemLockers {
    /// `count` lockers, numbered from 1, all free.
    pub fn new(count: LockerId) -> Self {
        Self {
            lockers: (1..=count)
                .map(|id| Locker {
                    id,
                    holder: None,
                    changed_ms: 0,
                })
                .collect(),
            answers: BTreeMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl LockerTable for MemLockers {
    fn lockers(&self) -> Result<Vec<Locker>, LockerError> {
        Ok(self.lockers.clone())
    }

    fn held_by(&self, user: UserId) -> Result<Option<LockerId>, LockerError> {
        Ok(self
            .lockers
            .iter()
            .find(|l| l.holder.as_ref().is_some_and(|h| h.user == user))
            .map(|l| l.id))
    }

    fn take_free(&mut self, holder: &Holder, now_ms: u64) -> Result<Option<LockerId>, LockerError> {
        let Some(l) = self.lockers.iter_mut().find(|l| l.holder.is_none()) else {
            return Ok(None);
        };
        l.holder = Some(holder.clone());
        l.changed_ms = now_ms;
        Ok(Some(l.id))
    }

    fn release(&mut self, user: UserId, now_ms: u64) -> Result<Option<LockerId>, LockerError> {
        let Some(l) = self
            .lockers
            .iter_mut()
            .find(|l| l.holder.as_ref().is_some_and(|h| h.user == user))
        else {
            return Ok(None);
        };
        l.holder = None;
        l.changed_ms = now_ms;
        Ok(Some(l.id))
    }

    fn answered(&self, request: &str) -> Result<Option<Done>, LockerError> {
        Ok(self.answers.get(request).copied())
    }

    fn record(&mut self, request: &str, done: &Done) -> Result<(), LockerError> {
        if self.answers.insert(request.to_owned(), *done).is_none() {
            self.order.push_back(request.to_owned());
        }
        while self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.answers.remove(&old);
            }
        }
        Ok(())
    }
}

/// The behaviour every store must have, as tests over any store.
#[cfg(test)]
pub mod conformance {
    use super::*;

    fn add(t: &mut dyn UserTable, name: &str) -> User {
        match apply_users(
            t,
            &UsersCommand::Add {
                name: name.into(),
                now_ms: 1,
            },
        )
        .unwrap()
        {
            UsersOutcome::Added(u) => u,
            other => panic!("{other:?}"),
        }
    }

    fn ask(
        t: &mut dyn UserTable,
        name: &str,
        request: &str,
        op: Op,
    ) -> Result<RequestState, LockerError> {
        request_as(t, name, request, op, false)
    }

    /// A take or free; `retry`: with a caller's id of an earlier request.
    fn request_as(
        t: &mut dyn UserTable,
        name: &str,
        request: &str,
        op: Op,
        retry: bool,
    ) -> Result<RequestState, LockerError> {
        match apply_users(
            t,
            &UsersCommand::Request {
                name: name.into(),
                request: request.into(),
                op,
                now_ms: 10,
                max_waiting: 3,
                retry,
            },
        )? {
            UsersOutcome::Requested(s) => Ok(s),
            other => panic!("{other:?}"),
        }
    }

    fn pending(request: &str) -> RequestState {
        RequestState::Pending {
            request: request.into(),
        }
    }

    /// Runs every queued request of `u` through `l` and the answers back.
    fn round_trip(u: &mut dyn UserTable, l: &mut dyn LockerTable) -> Vec<Answered> {
        let requests: Vec<LockerRequest> =
            u.outbox().unwrap().into_iter().map(|o| o.request).collect();
        let replies = apply_lockers(
            l,
            &LockersCommand::Handle {
                requests,
                now_ms: 20,
            },
        )
        .unwrap();
        match apply_users(
            u,
            &UsersCommand::Replies {
                replies,
                now_ms: 25,
            },
        )
        .unwrap()
        {
            UsersOutcome::Applied(a) => a,
            other => panic!("{other:?}"),
        }
    }

    pub fn names_are_unique_and_literal(u: &mut dyn UserTable) {
        let evil = "'; DROP TABLE users; --";
        let a = add(u, evil);
        assert_eq!(a.name, evil);
        assert_eq!(u.user(evil).unwrap().unwrap().id, a.id);
        let again = apply_users(
            u,
            &UsersCommand::Add {
                name: evil.into(),
                now_ms: 2,
            },
        );
        assert_eq!(again, Err(LockerError::Exists(evil.into())));
        let b = add(u, "Ольга");
        assert!(b.id > a.id, "ids grow");
        let names: Vec<String> = u.users().unwrap().into_iter().map(|u| u.name).collect();
        assert_eq!(names, [evil, "Ольга"], "oldest first");
        let long = "x".repeat(65);
        assert!(matches!(
            apply_users(
                u,
                &UsersCommand::Add {
                    name: long,
                    now_ms: 3
                }
            ),
            Err(LockerError::BadRequest(_))
        ));
    }

    pub fn a_take_is_idempotent_and_gives_at_most_one_locker(
        u: &mut dyn UserTable,
        l: &mut dyn LockerTable,
    ) {
        add(u, "ann");
        assert_eq!(ask(u, "ann", "r1", Op::Take), Ok(pending("r1")));
        assert_eq!(
            ask(u, "ann", "r1", Op::Take),
            Ok(pending("r1")),
            "same again"
        );
        assert_eq!(
            ask(u, "ann", "r2", Op::Take),
            Ok(pending("r1")),
            "joins the one in flight"
        );
        assert_eq!(u.outbox_len().unwrap(), 1);
        // Delivered twice (a crash before the ack): the same answer.
        let requests: Vec<LockerRequest> =
            u.outbox().unwrap().into_iter().map(|o| o.request).collect();
        let twice = [requests.clone(), requests].concat();
        let replies = apply_lockers(
            l,
            &LockersCommand::Handle {
                requests: twice,
                now_ms: 5,
            },
        )
        .unwrap();
        assert_eq!(replies[0], replies[1]);
        assert_eq!(replies[0].done, Done::Granted { locker: 1 });
        let applied = apply_users(
            u,
            &UsersCommand::Replies {
                replies: replies.clone(),
                now_ms: 7,
            },
        )
        .unwrap();
        assert_eq!(
            applied,
            UsersOutcome::Applied(vec![Answered {
                request: "r1".into(),
                done: Done::Granted { locker: 1 },
                waited_ms: 0
            }])
        );
        // The same answers again change nothing.
        let again = apply_users(u, &UsersCommand::Replies { replies, now_ms: 8 }).unwrap();
        assert_eq!(again, UsersOutcome::Applied(vec![]));
        assert_eq!(u.user("ann").unwrap().unwrap().locker, Some(1));
        assert_eq!(u.outbox_len().unwrap(), 0);
        // A new take by a holder: the locker it has, no message.
        assert_eq!(
            ask(u, "ann", "r3", Op::Take),
            Ok(RequestState::Done {
                request: "r3".into(),
                done: Done::Granted { locker: 1 }
            })
        );
        assert_eq!(
            ask(u, "ann", "r1", Op::Take),
            Ok(RequestState::Done {
                request: "r1".into(),
                done: Done::Granted { locker: 1 }
            }),
            "an answered request is remembered"
        );
        assert_eq!(u.outbox_len().unwrap(), 0);
        // Even two different take requests of one user at the lockers: one locker.
        let both = ["x1", "x2"].map(|id| LockerRequest {
            request: id.into(),
            op: Op::Take,
            user: 99,
            name: "bob".into(),
        });
        let replies = apply_lockers(
            l,
            &LockersCommand::Handle {
                requests: both.to_vec(),
                now_ms: 9,
            },
        )
        .unwrap();
        assert_eq!(replies[0].done, Done::Granted { locker: 2 });
        assert_eq!(replies[1].done, Done::Granted { locker: 2 });
    }

    pub fn concurrent_takes_never_share_a_locker(u: &mut dyn UserTable, l: &mut dyn LockerTable) {
        // 3 lockers (the store's count), 5 users: 3 granted, 2 told none is free.
        for i in 0..5 {
            add(u, &format!("u{i}"));
        }
        let mut answers = Vec::new();
        for round in 0..2 {
            for i in 0..5 {
                let r = ask(u, &format!("u{i}"), &format!("t{i}-{round}"), Op::Take);
                if let Err(e) = r {
                    assert!(matches!(e, LockerError::Full(_)), "{e}");
                }
            }
            answers.extend(round_trip(u, l));
        }
        let granted: Vec<LockerId> = answers
            .iter()
            .filter_map(|a| match a.done {
                Done::Granted { locker } => Some(locker),
                _ => None,
            })
            .collect();
        assert_eq!(granted, [1, 2, 3]);
        assert_eq!(
            answers.iter().filter(|a| a.done == Done::NoneFree).count(),
            2
        );
        let held: Vec<_> = l
            .lockers()
            .unwrap()
            .into_iter()
            .map(|k| k.holder.map(|h| h.name))
            .collect();
        assert_eq!(held.iter().flatten().count(), 3);
        check_agree(u, l);
        // The bound: at most 3 waiting (max_waiting in `ask`).
        assert!(matches!(
            ask(u, "u3", "again", Op::Free),
            Err(LockerError::WithoutLocker(_))
        ));
    }

    pub fn free_and_delete_give_lockers_back(u: &mut dyn UserTable, l: &mut dyn LockerTable) {
        add(u, "ann");
        add(u, "bob");
        ask(u, "ann", "a1", Op::Take).unwrap();
        ask(u, "bob", "b1", Op::Take).unwrap();
        round_trip(u, l);
        assert_eq!(
            ask(u, "ann", "a2", Op::Free),
            Ok(pending("a2")),
            "free is queued"
        );
        assert_eq!(
            ask(u, "ann", "a3", Op::Take),
            Err(LockerError::Busy(
                "the locker of `ann` is being freed; take again once it is".into()
            ))
        );
        let a = round_trip(u, l);
        assert_eq!(a[0].done, Done::Freed { locker: Some(1) });
        assert_eq!(u.user("ann").unwrap().unwrap().locker, None);
        assert!(matches!(
            ask(u, "ann", "a4", Op::Free),
            Err(LockerError::WithoutLocker(_))
        ));
        // Freeing twice at the lockers is harmless.
        let twice = apply_lockers(
            l,
            &LockersCommand::Handle {
                requests: vec![LockerRequest {
                    request: "other".into(),
                    op: Op::Free,
                    user: 1,
                    name: "ann".into(),
                }],
                now_ms: 30,
            },
        )
        .unwrap();
        assert_eq!(twice[0].done, Done::Freed { locker: None });
        // Deleting bob frees locker 2.
        let gone = apply_users(
            u,
            &UsersCommand::Delete {
                name: "bob".into(),
                request: "d1".into(),
                now_ms: 31,
            },
        )
        .unwrap();
        assert!(matches!(gone, UsersOutcome::Deleted(Some(_))));
        round_trip(u, l);
        assert!(l.lockers().unwrap().iter().all(|k| k.holder.is_none()));
        assert_eq!(
            apply_users(
                u,
                &UsersCommand::Delete {
                    name: "bob".into(),
                    request: "d2".into(),
                    now_ms: 32
                }
            ),
            Ok(UsersOutcome::Deleted(None))
        );
        // Deleted while its take is in flight: the locker granted to nobody
        // comes back, and a new user of the same name is another user.
        add(u, "cat");
        ask(u, "cat", "c1", Op::Take).unwrap();
        let requests: Vec<LockerRequest> =
            u.outbox().unwrap().into_iter().map(|o| o.request).collect();
        apply_users(
            u,
            &UsersCommand::Delete {
                name: "cat".into(),
                request: "d3".into(),
                now_ms: 33,
            },
        )
        .unwrap();
        add(u, "cat");
        // The take reaches the lockers after the delete's free.
        let free = u.outbox().unwrap().into_iter().map(|o| o.request);
        let late: Vec<LockerRequest> = free.filter(|r| r.op == Op::Free).chain(requests).collect();
        let replies = apply_lockers(
            l,
            &LockersCommand::Handle {
                requests: late,
                now_ms: 34,
            },
        )
        .unwrap();
        assert!(
            l.lockers().unwrap().iter().any(|k| k.holder.is_some()),
            "granted to the old cat for now"
        );
        apply_users(
            u,
            &UsersCommand::Replies {
                replies,
                now_ms: 35,
            },
        )
        .unwrap();
        round_trip(u, l);
        assert!(
            l.lockers().unwrap().iter().all(|k| k.holder.is_none()),
            "the undo freed it"
        );
        assert_eq!(u.user("cat").unwrap().unwrap().locker, None);
        check_agree(u, l);
    }

    pub fn a_user_unknown_or_the_bound_reached_is_refused(u: &mut dyn UserTable) {
        assert_eq!(
            ask(u, "nobody", "r", Op::Take),
            Err(LockerError::UserNotExists("nobody".into()))
        );
        for i in 0..4 {
            add(u, &format!("u{i}"));
        }
        for i in 0..3 {
            ask(u, &format!("u{i}"), &format!("r{i}"), Op::Take).unwrap();
        }
        assert!(matches!(
            ask(u, "u3", "r3", Op::Take),
            Err(LockerError::Full(_))
        ));
        assert!(matches!(
            ask(u, "u0", "", Op::Take),
            Err(LockerError::BadRequest(_))
        ));
    }

    /// A caller's id only says where that request stands: an old id (the
    /// lockers remember its grant) or one never used starts nothing, so a
    /// late retry cannot hand the user a locker someone else holds now.
    pub fn a_retried_id_only_looks_up(u: &mut dyn UserTable, l: &mut dyn LockerTable) {
        let retry = |u: &mut dyn UserTable, name: &str, request: &str, op| {
            request_as(u, name, request, op, true)
        };
        add(u, "ann");
        add(u, "bob");
        assert!(matches!(
            retry(u, "ann", "never", Op::Take),
            Err(LockerError::BadRequest(_))
        ));
        assert_eq!(ask(u, "ann", "t1", Op::Take), Ok(pending("t1")));
        assert_eq!(retry(u, "ann", "t1", Op::Take), Ok(pending("t1")));
        round_trip(u, l);
        let granted = finished("t1", Done::Granted { locker: 1 });
        assert_eq!(retry(u, "ann", "t1", Op::Take), Ok(granted));
        // Ann frees; Bob takes locker 1; Ann's old take comes again.
        ask(u, "ann", "f1", Op::Free).unwrap();
        round_trip(u, l);
        ask(u, "bob", "t2", Op::Take).unwrap();
        round_trip(u, l);
        assert!(matches!(
            retry(u, "ann", "t1", Op::Take),
            Err(LockerError::BadRequest(_))
        ));
        assert!(matches!(
            retry(u, "bob", "t1", Op::Take),
            Err(LockerError::BadRequest(_))
        ));
        assert!(u.outbox().unwrap().is_empty());
        assert_eq!(u.user("ann").unwrap().unwrap().locker, None);
        check_agree(u, l);
    }

    pub fn answers_are_remembered_and_forgotten_oldest_first(l: &mut dyn LockerTable) {
        l.record("first", &Done::NoneFree).unwrap();
        for i in 0..REMEMBERED {
            l.record(&format!("r{i}"), &Done::Freed { locker: None })
                .unwrap();
        }
        assert_eq!(l.answered("first").unwrap(), None);
        assert_eq!(
            l.answered("r0").unwrap(),
            Some(Done::Freed { locker: None })
        );
    }

    /// Every user's locker is held by that user at the lockers, and back.
    pub fn check_agree(u: &dyn UserTable, l: &dyn LockerTable) {
        let users = u.users().unwrap();
        for k in l.lockers().unwrap() {
            if let Some(h) = k.holder {
                let user = users.iter().find(|x| x.id == h.user);
                assert_eq!(user.and_then(|x| x.locker), Some(k.id), "locker {}", k.id);
            }
        }
        for x in users {
            if let Some(id) = x.locker {
                assert_eq!(l.held_by(x.id).unwrap(), Some(id));
            }
        }
    }
}

/// Runs the conformance suite on a pair of constructors (users, lockers of 3).
#[cfg(test)]
#[macro_export]
macro_rules! lockers_conformance_tests {
    ($users:expr, $lockers:expr) => {
        use $crate::services::lockers::state::conformance as suite;

        #[test]
        fn a_retried_id_only_looks_up() {
            suite::a_retried_id_only_looks_up(&mut $users, &mut $lockers);
        }

        #[test]
        fn names_are_unique_and_literal() {
            suite::names_are_unique_and_literal(&mut $users);
        }

        #[test]
        fn a_take_is_idempotent_and_gives_at_most_one_locker() {
            suite::a_take_is_idempotent_and_gives_at_most_one_locker(&mut $users, &mut $lockers);
        }

        #[test]
        fn concurrent_takes_never_share_a_locker() {
            suite::concurrent_takes_never_share_a_locker(&mut $users, &mut $lockers);
        }

        #[test]
        fn free_and_delete_give_lockers_back() {
            suite::free_and_delete_give_lockers_back(&mut $users, &mut $lockers);
        }

        #[test]
        fn a_user_unknown_or_the_bound_reached_is_refused() {
            suite::a_user_unknown_or_the_bound_reached_is_refused(&mut $users);
        }

        #[test]
        fn answers_are_remembered_and_forgotten_oldest_first() {
            suite::answers_are_remembered_and_forgotten_oldest_first(&mut $lockers);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::lockers_conformance_tests!(MemUsers::default(), MemLockers::new(3));
}
