//! The store's token check, [`TokenGate`]: a batch is admitted only with a
//! grant signed by the coordinator's key (or, in ring mode, passed on by the
//! holder's predecessor in the epoch's ring), of the current epoch, held by
//! the sender (shown by a proof with the holder's key), not expired, and
//! whose seq was not used for different data. Re-sending the very same batch
//! under the same grant (a retry after a lost reply) is recognised and
//! acknowledged without writing twice. Receivers use the same gate to tell a
//! genuine grant from a forged one.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::keys::public_key_from_hex;
use super::token::{RingMember, SignedGrant, proof_valid, successor};

/// Why the store refused a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    /// The store does not know the coordinator's public key yet.
    NoKey,
    /// Not signed by the coordinator (forged or altered).
    BadSignature,
    /// Signed, but for an epoch older than the current one.
    StaleEpoch,
    /// Signed for someone other than the sender.
    WrongHolder,
    /// Past its expiry.
    Expired,
    /// A seq already used for different data (a replay).
    Replayed,
}

impl Rejection {
    pub const ALL: [Rejection; 6] = [
        Rejection::NoKey,
        Rejection::BadSignature,
        Rejection::StaleEpoch,
        Rejection::WrongHolder,
        Rejection::Expired,
        Rejection::Replayed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::NoKey => "no_key",
            Rejection::BadSignature => "bad_signature",
            Rejection::StaleEpoch => "stale_epoch",
            Rejection::WrongHolder => "wrong_holder",
            Rejection::Expired => "expired",
            Rejection::Replayed => "replayed",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the gate says to a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Write it.
    Fresh,
    /// This exact batch was written under this grant already: acknowledge it
    /// again, write nothing.
    Duplicate,
}

/// The store's token check. `batch_digest` identifies the batch's content
/// (e.g. a hash of its readings) so a retry is told from a replay.
#[derive(Debug, Default)]
pub struct TokenGate {
    key: Option<VerifyingKey>,
    epoch: u64,
    /// Ring of the current epoch (ring mode), from its root grant.
    ring: Vec<RingMember>,
    /// Digest of the batch admitted under each seq of the current epoch.
    used: HashMap<u64, u64>,
    rejected: BTreeMap<Rejection, u64>,
}

impl TokenGate {
    pub fn new(key: Option<VerifyingKey>) -> Self {
        Self {
            key,
            ..Default::default()
        }
    }

    /// Restores the state a store persisted: the epoch and the seqs used in it.
    pub fn restore(&mut self, epoch: u64, used: impl IntoIterator<Item = (u64, u64)>) {
        self.epoch = epoch;
        self.used = used.into_iter().collect();
    }

    pub fn set_key(&mut self, key: VerifyingKey) {
        self.key = Some(key);
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The ring of the current epoch (ring mode; empty otherwise).
    pub fn ring(&self) -> &[RingMember] {
        &self.ring
    }

    pub fn rejected(&self) -> &BTreeMap<Rejection, u64> {
        &self.rejected
    }

    /// Learns a newer epoch from a validly signed grant seen on the bus, so
    /// tokens of older epochs are refused even before a new holder writes.
    pub fn observe(&mut self, signed: &SignedGrant) {
        let root = signed.signer.is_none() && self.key.as_ref().is_some_and(|k| signed.verify(k));
        if root && signed.grant.epoch > self.epoch {
            self.epoch = signed.grant.epoch;
            self.used.clear();
            self.ring.clear();
        }
        if root && signed.grant.epoch == self.epoch && !signed.grant.ring.is_empty() {
            self.ring = signed.grant.ring.clone();
        }
    }

    /// Whether a grant seen on the bus is genuine for the current epoch (a
    /// receiver checks this before it acts on a grant, so a forged pass can
    /// never start a second token).
    pub fn is_authentic(&self, signed: &SignedGrant) -> bool {
        self.key
            .as_ref()
            .is_some_and(|k| signed.grant.epoch >= self.epoch && self.authentic(signed, k))
    }

    /// Signed by the coordinator, or (ring mode) passed on by the holder's
    /// predecessor in the current epoch's ring, naming the holder's ring key.
    fn authentic(&self, signed: &SignedGrant, key: &VerifyingKey) -> bool {
        let Some(signer) = &signed.signer else {
            return signed.verify(key);
        };
        let g = &signed.grant;
        let Some(member) = self.ring.iter().find(|m| &m.name == signer) else {
            return false;
        };
        let next = successor(&self.ring, signer);
        g.epoch == self.epoch
            && next.is_some_and(|n| n.name == g.holder && n.key == g.holder_key)
            && public_key_from_hex(&member.key).is_some_and(|k| signed.verify(&k))
    }

    /// Forgets an admitted seq whose batch could not be committed, so the
    /// holder's retry is admitted as fresh rather than acknowledged unwritten.
    pub fn forget(&mut self, epoch: u64, seq: u64) {
        if epoch == self.epoch {
            self.used.remove(&seq);
        }
    }

    /// Whether `signed` is a valid grant for `holder` now (signature and
    /// expiry only; used for the store's cache-refresh grants).
    pub fn valid_for(&self, signed: &SignedGrant, holder: &str, now_ms: u64) -> bool {
        self.key.as_ref().is_some_and(|k| signed.verify(k))
            && signed.grant.holder == holder
            && now_ms < signed.grant.expires_ms
            && signed.grant.epoch >= self.epoch
    }

    /// Checks a batch from `sender` under `signed` at time `now_ms`.
    /// `proof` is the holder's signature over the grant and the batch digest.
    pub fn admit(
        &mut self,
        signed: &SignedGrant,
        sender: &str,
        batch_digest: u64,
        proof: &str,
        now_ms: u64,
    ) -> Result<Admission, Rejection> {
        let verdict = self.check(signed, sender, batch_digest, proof, now_ms);
        if let Err(why) = verdict {
            *self.rejected.entry(why).or_default() += 1;
        }
        verdict
    }

    fn check(
        &mut self,
        signed: &SignedGrant,
        sender: &str,
        batch_digest: u64,
        proof: &str,
        now_ms: u64,
    ) -> Result<Admission, Rejection> {
        let key = self.key.as_ref().ok_or(Rejection::NoKey)?;
        if signed.signer.is_some() && signed.grant.epoch < self.epoch {
            return Err(Rejection::StaleEpoch);
        }
        if !self.authentic(signed, key) {
            return Err(Rejection::BadSignature);
        }
        let g = &signed.grant;
        if g.epoch < self.epoch {
            return Err(Rejection::StaleEpoch);
        }
        // The sender's name is only a claim; the proof shows it holds the key
        // the coordinator bound to this grant.
        if g.holder != sender || !proof_valid(g, batch_digest, proof) {
            return Err(Rejection::WrongHolder);
        }
        if g.epoch == self.epoch
            && let Some(&digest) = self.used.get(&g.seq)
        {
            // Same grant again: a retry of the same batch is fine (even after
            // expiry: it was admitted in time), anything else is a replay.
            return if digest == batch_digest {
                Ok(Admission::Duplicate)
            } else {
                Err(Rejection::Replayed)
            };
        }
        if now_ms >= g.expires_ms {
            return Err(Rejection::Expired);
        }
        if g.epoch > self.epoch {
            self.epoch = g.epoch;
            self.used.clear();
            self.ring = g.ring.clone();
        }
        self.used.insert(g.seq, batch_digest);
        Ok(Admission::Fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{admit, grant, holder_keys, keys, ring};
    use super::super::token::Grant;
    use super::*;

    #[test]
    fn gate_admits_a_valid_token_and_names_every_rejection() {
        let (coord, forger) = keys();
        let mut gate = TokenGate::new(None);
        let ok = coord.sign(grant("r1", 3, 1, 1000));
        assert_eq!(admit(&mut gate, &ok, "r1", 11, 10), Err(Rejection::NoKey));
        gate.set_key(coord.verifying_key());
        assert_eq!(admit(&mut gate, &ok, "r1", 11, 10), Ok(Admission::Fresh));
        assert_eq!(gate.epoch(), 3);
        // The holder's name, but not the holder's key: a copied grant is useless.
        let copied = coord.sign(grant("r1", 3, 6, 1000));
        let proof = holder_keys("mallory").prove(&copied.grant, 20);
        assert_eq!(
            gate.admit(&copied, "r1", 20, &proof, 10),
            Err(Rejection::WrongHolder)
        );
        let forged = forger.sign(grant("r1", 3, 2, 1000));
        let theirs = coord.sign(grant("r2", 3, 3, 1000));
        let late = coord.sign(grant("r1", 3, 4, 50));
        let newer = coord.sign(grant("r2", 4, 1, 1000));
        let old = coord.sign(grant("r1", 3, 5, 1000));
        use Admission::*;
        use Rejection::*;
        // (grant, sender, batch digest, now) → verdict, in this order.
        let cases = [
            (&ok, "r1", 11, 10, Ok(Duplicate)), // a retry of the same batch: not written again
            (&ok, "r1", 12, 10, Err(Replayed)), // the same grant with other data
            (&forged, "r1", 13, 10, Err(BadSignature)), // signed by someone else
            (&theirs, "r1", 14, 10, Err(WrongHolder)), // someone else's grant
            (&late, "r1", 15, 50, Err(Expired)),
            (&newer, "r2", 16, 20, Ok(Fresh)), // a newer epoch moves the gate on …
            (&old, "r1", 17, 20, Err(StaleEpoch)), // … and the old one is stale from then on
        ];
        for (signed, sender, digest, now, verdict) in cases {
            let got = admit(&mut gate, signed, sender, digest, now);
            assert_eq!(got, verdict, "{:?} from {sender}", signed.grant);
        }
        let counts: Vec<(Rejection, u64)> = gate.rejected().iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(
            counts,
            vec![
                (Rejection::NoKey, 1),
                (Rejection::BadSignature, 1),
                (Rejection::StaleEpoch, 1),
                (Rejection::WrongHolder, 2),
                (Rejection::Expired, 1),
                (Rejection::Replayed, 1),
            ]
        );
    }

    #[test]
    fn observed_grants_advance_the_epoch_only_when_signed() {
        let (coord, forger) = keys();
        let mut gate = TokenGate::new(Some(coord.verifying_key()));
        gate.observe(&forger.sign(grant("r1", 99, 1, 1000)));
        assert_eq!(gate.epoch(), 0);
        gate.observe(&coord.sign(grant("r1", 5, 1, 1000)));
        assert_eq!(gate.epoch(), 5);
        let stale = coord.sign(grant("r1", 4, 1, 1000));
        assert_eq!(
            admit(&mut gate, &stale, "r1", 1, 0),
            Err(Rejection::StaleEpoch)
        );
    }

    #[test]
    fn a_restored_gate_still_refuses_replays() {
        let (coord, _) = keys();
        let mut gate = TokenGate::new(Some(coord.verifying_key()));
        gate.restore(2, [(7, 42)]);
        let used = coord.sign(grant("r1", 2, 7, 1000));
        let mut send = |digest| admit(&mut gate, &used, "r1", digest, 0);
        // Seq 7 was used for the batch with digest 42, before the restart.
        assert_eq!(send(43), Err(Rejection::Replayed));
        assert_eq!(send(42), Ok(Admission::Duplicate));
    }

    #[test]
    fn a_ring_pass_is_checked_against_the_roots_ring() {
        let (coord, _) = keys();
        let root = coord.sign(Grant {
            ring: ring(&["a", "b", "c"]),
            ..grant("a", 1, 1, 100)
        });
        let mut gate = TokenGate::new(Some(coord.verifying_key()));
        gate.observe(&root);
        let pass = Grant {
            issued_ms: 10,
            ..grant("b", 1, 2, 110)
        };
        let good = holder_keys("a").pass(pass.clone(), "a");
        assert!(gate.is_authentic(&good));
        assert_eq!(admit(&mut gate, &good, "b", 5, 20), Ok(Admission::Fresh));
        let other_key = Grant {
            holder_key: holder_keys("mallory").public_hex(),
            ..pass.clone()
        };
        let forged = [
            (
                "signed by c, not b's predecessor",
                holder_keys("c").pass(pass.clone(), "c"),
            ),
            (
                "signed by an outsider in a's name",
                holder_keys("mallory").pass(pass, "a"),
            ),
            (
                "naming another key for b",
                holder_keys("a").pass(other_key, "a"),
            ),
        ];
        for (digest, (what, bad)) in (6..).zip(forged) {
            assert!(!gate.is_authentic(&bad), "{what}");
            assert_eq!(
                admit(&mut gate, &bad, "b", digest, 20),
                Err(Rejection::BadSignature),
                "{what}"
            );
        }
    }
}
