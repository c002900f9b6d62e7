//! A receiver's protocol as a plain state machine, without sockets or
//! clocks: [`Holder`] buffers readings, decides what to write under a grant,
//! keeps a batch the store did not confirm for the next grant, and builds
//! the hand-off at the end of a turn (a release to the coordinator, or in
//! ring mode a pass signed for the successor). The async shell
//! ([`super::receiver`]) feeds it what arrives and carries out each [`Step`].
//!
//! A turn: [`Holder::granted`] → [`Step::Write`] → (the shell sends it and
//! reports) [`Holder::written`] → [`Step::Hold`] until the shortest turn is
//! over → [`Holder::hand_off`] → [`Step::Release`] or [`Step::Pass`].

use std::collections::VecDeque;

use ed25519_dalek::VerifyingKey;

use super::coordinator::Release;
use super::db::digest;
use super::gate::TokenGate;
use super::keys::KeyPair;
use super::receiver::{ReceiverStats, WriteRequest};
use super::sensor::Reading;
use super::token::{Grant, SignedGrant, successor};
use crate::config::TokenMode;

/// Readings written under one grant at most (keeps a write request well under
/// the bus's payload limit); the rest wait for the next grant.
pub const MAX_BATCH: usize = 4000;
/// Shortest turn of a holder that has no backlog, in ms: an idle pipeline
/// must not spin the token hundreds of times a second for nothing.
pub const MIN_TURN_MS: u64 = 20;
/// How long a holder waits for the store's answer at most, in ms.
pub const WRITE_TIMEOUT_MS: u64 = 2000;
/// How long it waits at least, even when the grant is about to expire.
const MIN_WRITE_TIMEOUT_MS: u64 = 100;

/// What the shell does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing: the grant is someone else's, or a turn is already under way.
    Idle,
    /// A grant for this receiver that is not genuine (forged, or a pass from
    /// someone who is not the predecessor in this epoch's ring): ignored.
    NotGenuine { signer: Option<String>, epoch: u64 },
    /// Send this batch to the store, waiting at most `timeout_ms` for the
    /// answer; then report it with [`Holder::written`].
    Write {
        request: WriteRequest,
        timeout_ms: u64,
    },
    /// Keep the token until `until_ms`, then call [`Holder::hand_off`] with
    /// `grant`.
    Hold { until_ms: u64, grant: SignedGrant },
    /// Central mode: publish this release on `iot/release`.
    Release(Release),
    /// Ring mode: publish this pass (a grant for the successor, signed by
    /// this receiver) on `iot/grant`.
    Pass(SignedGrant),
    /// Ring mode, but this receiver is not in the epoch's ring: nobody to
    /// pass to. The coordinator re-roots once the grant lapses.
    NoSuccessor { epoch: u64 },
}

#[derive(Debug)]
struct Turn {
    grant: SignedGrant,
    started_ms: u64,
    /// Readings in the batch of this turn.
    count: usize,
}

/// One receiver's buffer, unconfirmed batch and turns with the token.
#[derive(Debug)]
pub struct Holder {
    me: String,
    mode: TokenMode,
    lease_ms: u64,
    capacity: usize,
    keys: KeyPair,
    /// What this receiver knows of the token: the coordinator's key, the
    /// current epoch and (ring mode) its ring.
    gate: TokenGate,
    buffer: VecDeque<Reading>,
    /// Taken from the buffer, not yet confirmed by the store: sent again,
    /// unchanged, under the next grant until the store confirms it.
    pending: Vec<Reading>,
    /// The turn whose write is under way.
    turn: Option<Turn>,
    stats: ReceiverStats,
}

impl Holder {
    /// Receiver `me` signing with `keys`, buffering at most `capacity`
    /// readings; `lease_ms` is the life of a pass it signs (ring mode).
    pub fn new(me: &str, mode: TokenMode, lease_ms: u64, capacity: usize, keys: KeyPair) -> Self {
        Self {
            me: me.to_owned(),
            mode,
            lease_ms,
            capacity,
            keys,
            gate: TokenGate::new(None),
            buffer: VecDeque::new(),
            pending: Vec::new(),
            turn: None,
            stats: ReceiverStats {
                capacity: capacity as u64,
                ..Default::default()
            },
        }
    }

    /// The receiver's public key (hex), as announced on `iot/keys/<receiver>`.
    pub fn public_hex(&self) -> String {
        self.keys.public_hex()
    }

    pub fn stats(&self) -> ReceiverStats {
        ReceiverStats {
            buffered: (self.buffer.len() + self.pending.len()) as u64,
            ..self.stats
        }
    }

    /// Readings arrived: buffered while there is room, the rest dropped and
    /// counted.
    pub fn received(&mut self, taken: Vec<Reading>) {
        let room = self
            .capacity
            .saturating_sub(self.buffer.len())
            .min(taken.len());
        self.stats.dropped += (taken.len() - room) as u64;
        self.stats.accepted += room as u64;
        self.buffer.extend(taken.into_iter().take(room));
    }

    /// The coordinator's public key (from the retained `iot/key`).
    pub fn set_coordinator_key(&mut self, key: VerifyingKey) {
        self.gate.set_key(key);
    }

    /// The current epoch's root (retained `iot/root`): learns the epoch and
    /// ring, never acts on it (it may be an old grant to us, already used).
    pub fn observe_root(&mut self, signed: &SignedGrant) {
        self.gate.observe(signed);
    }

    /// A grant seen on `iot/grant` at `now_ms`. One for this receiver that
    /// is genuine starts a turn: the unconfirmed batch if there is one, else
    /// the oldest buffered readings (at most [`MAX_BATCH`]).
    pub fn granted(&mut self, signed: SignedGrant, now_ms: u64) -> Step {
        self.gate.observe(&signed);
        if signed.grant.holder != self.me {
            return Step::Idle;
        }
        if !self.gate.is_authentic(&signed) {
            return Step::NotGenuine {
                signer: signed.signer,
                epoch: signed.grant.epoch,
            };
        }
        if self.turn.is_some() {
            return Step::Idle;
        }
        if self.pending.is_empty() {
            let n = self.buffer.len().min(MAX_BATCH);
            self.pending = self.buffer.drain(..n).collect();
        }
        let count = self.pending.len();
        let expires_ms = signed.grant.expires_ms;
        let proof = self.keys.prove(&signed.grant, digest(&self.pending));
        self.turn = Some(Turn {
            grant: signed.clone(),
            started_ms: now_ms,
            count,
        });
        if count == 0 {
            // Nothing to write: the turn only lasts its shortest time.
            return self.written(true, now_ms);
        }
        // Not the whole lease: a store that does not answer (down, or it
        // missed the request) must not hold the token up.
        let timeout_ms = expires_ms
            .saturating_sub(now_ms)
            .clamp(MIN_WRITE_TIMEOUT_MS, WRITE_TIMEOUT_MS);
        Step::Write {
            request: WriteRequest {
                grant: signed,
                readings: self.pending.clone(),
                proof,
            },
            timeout_ms,
        }
    }

    /// The store confirmed the turn's batch (`confirmed`), or refused it or
    /// did not answer in time: then the batch is kept for the next grant.
    /// Grants are taken again from here on; the token is handed off after
    /// the shortest turn unless there is a backlog.
    pub fn written(&mut self, confirmed: bool, now_ms: u64) -> Step {
        let Some(turn) = self.turn.take() else {
            return Step::Idle;
        };
        if confirmed {
            self.stats.written += turn.count as u64;
            self.pending.clear();
        }
        let until_ms = turn.started_ms + MIN_TURN_MS;
        if turn.count < MAX_BATCH && now_ms < until_ms {
            return Step::Hold {
                until_ms,
                grant: turn.grant,
            };
        }
        self.hand_off(&turn.grant, now_ms)
    }

    /// The end of the turn under `grant`: central mode releases it; ring
    /// mode signs the next grant for the successor in this epoch's ring.
    pub fn hand_off(&self, grant: &SignedGrant, now_ms: u64) -> Step {
        let g = &grant.grant;
        if self.mode == TokenMode::Central {
            return Step::Release(Release {
                holder: self.me.clone(),
                epoch: g.epoch,
                seq: g.seq,
            });
        }
        let Some(next) = successor(self.gate.ring(), &self.me) else {
            return Step::NoSuccessor { epoch: g.epoch };
        };
        let pass = Grant {
            holder: next.name.clone(),
            holder_key: next.key.clone(),
            epoch: g.epoch,
            seq: g.seq + 1,
            issued_ms: now_ms,
            expires_ms: now_ms + self.lease_ms,
            ring: Vec::new(),
        };
        Step::Pass(self.keys.pass(pass, &self.me))
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{grant, holder_keys, keys, ring};
    use super::super::gate::Admission;
    use super::super::sensor::SensorSim;
    use super::super::token::proof_valid;
    use super::*;

    const LEASE: u64 = 400;

    fn readings(n: u64, from: u64) -> Vec<Reading> {
        let mut s = SensorSim::new("s1", 1, (10, 10));
        (from..from + n).map(|t| s.next(t)).collect()
    }

    fn holder(me: &str, mode: TokenMode, capacity: usize) -> Holder {
        let mut h = Holder::new(me, mode, LEASE, capacity, holder_keys(me));
        h.set_coordinator_key(keys().0.verifying_key());
        h
    }

    /// The batch a write step carries (panics on any other step).
    fn batch(step: &Step) -> &WriteRequest {
        match step {
            Step::Write { request, .. } => request,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    fn ring_root(names: &[&str], epoch: u64, now: u64) -> SignedGrant {
        keys().0.sign(Grant {
            ring: ring(names),
            issued_ms: now,
            ..grant(names[0], epoch, 1, now + LEASE)
        })
    }

    /// Central-mode receiver `r1` with `n` readings buffered, and the
    /// coordinator's key.
    fn loaded(n: u64) -> (KeyPair, Holder) {
        let mut h = holder("r1", TokenMode::Central, 100);
        h.received(readings(n, 0));
        (keys().0, h)
    }

    #[test]
    fn readings_beyond_the_capacity_are_dropped_and_counted() {
        let mut h = holder("r1", TokenMode::Central, 5);
        h.received(readings(3, 0));
        h.received(readings(4, 3));
        let s = h.stats();
        assert_eq!(
            (s.accepted, s.dropped, s.buffered, s.capacity),
            (5, 2, 5, 5)
        );
    }

    #[test]
    fn a_grant_writes_the_buffer_then_releases_after_the_shortest_turn() {
        let (coord, mut h) = loaded(10);
        let signed = coord.sign(grant("r1", 3, 7, 1_500));
        let step = h.granted(signed.clone(), 1_000);
        let Step::Write {
            request,
            timeout_ms,
        } = &step
        else {
            panic!("{step:?}")
        };
        assert_eq!(request.readings, readings(10, 0));
        assert_eq!(request.grant, signed);
        assert!(proof_valid(
            &signed.grant,
            digest(&request.readings),
            &request.proof
        ));
        // Until the grant expires, but never longer than WRITE_TIMEOUT_MS.
        assert_eq!(*timeout_ms, 500);
        // The store confirms 5 ms later: the token is kept until the turn's
        // shortest end, then released.
        let step = h.written(true, 1_005);
        assert_eq!(
            step,
            Step::Hold {
                until_ms: 1_000 + MIN_TURN_MS,
                grant: signed.clone()
            }
        );
        assert_eq!(
            h.hand_off(&signed, 1_020),
            Step::Release(Release {
                holder: "r1".into(),
                epoch: 3,
                seq: 7
            })
        );
        let s = h.stats();
        assert_eq!((s.written, s.buffered), (10, 0));
    }

    #[test]
    fn a_failed_batch_is_kept_and_sent_again_under_the_next_grant() {
        let (coord, mut h) = loaded(10);
        let first = coord.sign(grant("r1", 1, 1, 10_000));
        let sent = batch(&h.granted(first, 0)).readings.clone();
        // More readings arrive while the store does not answer.
        h.received(readings(5, 10));
        assert!(matches!(h.written(false, 30), Step::Release(_)));
        assert_eq!((h.stats().written, h.stats().buffered), (0, 15));
        // The next grant carries exactly the unconfirmed batch again (same
        // digest, so the store can tell a retry from a replay).
        let second = coord.sign(grant("r1", 1, 2, 10_000));
        let step = h.granted(second.clone(), 40);
        let retry = batch(&step);
        assert_eq!(retry.readings, sent);
        assert!(proof_valid(&second.grant, digest(&sent), &retry.proof));
        h.written(true, 45);
        assert_eq!((h.stats().written, h.stats().buffered), (10, 5));
        // Once confirmed, the next grant takes what came meanwhile.
        let third = coord.sign(grant("r1", 1, 3, 10_000));
        assert_eq!(
            batch(&h.granted(third, 80)).readings,
            readings(5, 10),
            "the readings buffered during the failed turn"
        );
    }

    #[test]
    fn an_empty_buffer_still_takes_its_turn_and_a_backlog_hands_off_at_once() {
        let (coord, _) = keys();
        let mut h = holder("r1", TokenMode::Central, 2 * MAX_BATCH);
        let idle = coord.sign(grant("r1", 1, 1, 1_000));
        assert_eq!(
            h.granted(idle.clone(), 0),
            Step::Hold {
                until_ms: MIN_TURN_MS,
                grant: idle
            }
        );
        h.received(readings(MAX_BATCH as u64 + 1, 0));
        let full = coord.sign(grant("r1", 1, 2, 1_000));
        assert_eq!(batch(&h.granted(full, 5)).readings.len(), MAX_BATCH);
        assert!(matches!(h.written(true, 6), Step::Release(_)));
        assert_eq!(h.stats().buffered, 1);
    }

    #[test]
    fn grants_for_others_forged_ones_and_grants_during_a_write_start_nothing() {
        let (coord, mut h) = loaded(3);
        let forger = keys().1;
        assert_eq!(
            h.granted(coord.sign(grant("r2", 1, 1, 1_000)), 0),
            Step::Idle
        );
        assert_eq!(
            h.granted(forger.sign(grant("r1", 1, 2, 1_000)), 0),
            Step::NotGenuine {
                signer: None,
                epoch: 1
            }
        );
        assert!(matches!(
            h.granted(coord.sign(grant("r1", 1, 3, 1_000)), 0),
            Step::Write { .. }
        ));
        assert_eq!(
            h.granted(coord.sign(grant("r1", 1, 4, 1_000)), 1),
            Step::Idle
        );
    }

    #[test]
    fn in_a_ring_the_holder_passes_to_its_successor_and_the_pass_is_genuine() {
        let mut a = holder("a", TokenMode::Ring, 100);
        let mut b = holder("b", TokenMode::Ring, 100);
        let root = ring_root(&["a", "b", "c"], 4, 1_000);
        b.observe_root(&root);
        a.received(readings(3, 0));
        let step = a.granted(root.clone(), 1_000);
        batch(&step);
        let Step::Pass(pass) = a.written(true, 1_030) else {
            panic!("expected a pass")
        };
        let g = &pass.grant;
        assert_eq!(pass.signer.as_deref(), Some("a"));
        assert_eq!(
            (g.holder.as_str(), g.epoch, g.seq, g.holder_key.clone()),
            ("b", 4, 2, holder_keys("b").public_hex())
        );
        assert_eq!((g.issued_ms, g.expires_ms), (1_030, 1_030 + LEASE));
        // b takes it as genuine and writes under it; the store admits it.
        b.received(readings(2, 10));
        let step = b.granted(pass.clone(), 1_031);
        let request = batch(&step);
        let mut store = TokenGate::new(Some(keys().0.verifying_key()));
        store.observe(&root);
        assert_eq!(
            store.admit(
                &request.grant,
                "b",
                digest(&request.readings),
                &request.proof,
                1_040
            ),
            Ok(Admission::Fresh)
        );
        // The last member passes back to the first.
        let mut c = holder("c", TokenMode::Ring, 100);
        c.observe_root(&root);
        let to_c = keys().0.sign(grant("c", 4, 3, 2_000));
        let Step::Pass(back) = c.hand_off(&to_c, 1_050) else {
            panic!("expected a pass")
        };
        assert_eq!(back.grant.holder, "a");
    }

    #[test]
    fn outside_the_ring_there_is_nobody_to_pass_to() {
        let mut d = holder("d", TokenMode::Ring, 100);
        let root = ring_root(&["a", "b"], 2, 0);
        d.observe_root(&root);
        let own = keys().0.sign(grant("d", 2, 5, 1_000));
        assert_eq!(d.hand_off(&own, 10), Step::NoSuccessor { epoch: 2 });
    }
}
