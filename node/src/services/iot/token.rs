//! The DB write token: an ed25519-signed grant `{holder, epoch, seq, issued,
//! expires}` from the coordinator.
//!
//! Three plain state machines, tested without sockets or clocks:
//! - [`KeyPair`]/[`SignedGrant`]: signing and verifying over a fixed binary
//!   layout (never over JSON, whose byte form is not canonical).
//! - [`TokenGate`]: the store's check. A batch is admitted only with a grant
//!   signed by the coordinator's key, of the current epoch, held by the
//!   sender, not expired, and whose seq was not used for different data.
//!   Re-sending the very same batch under the same grant (a retry after a lost
//!   reply) is recognised and acknowledged without writing twice.
//! - [`Schedule`]: the coordinator in `central` mode: grants receivers in
//!   turn; when a holder neither writes nor hands back before the grant
//!   expires, a new epoch starts and the next receiver gets the token.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Domain separation: a signature over a grant is never valid for anything else.
const CONTEXT: &[u8] = b"distlab/iot/grant/v1\0";

/// What the coordinator grants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub holder: String,
    pub epoch: u64,
    pub seq: u64,
    pub issued_ms: u64,
    pub expires_ms: u64,
    /// The holder's own public key (hex): a write under this grant must carry
    /// a proof signed with it, so a copied grant is useless to anyone else.
    /// Empty for grants that carry no write (cache refresh).
    #[serde(default)]
    pub holder_key: String,
    /// Ring mode, epoch roots only: the ring in order, with each member's
    /// public key. Passes within the epoch are checked against it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ring: Vec<RingMember>,
}

/// One receiver of a token ring.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingMember {
    pub name: String,
    pub key: String,
}

/// The member after `name` in `ring` (wrapping), if `name` is in it.
pub fn successor<'a>(ring: &'a [RingMember], name: &str) -> Option<&'a RingMember> {
    let i = ring.iter().position(|m| m.name == name)?;
    ring.get((i + 1) % ring.len())
}

impl Grant {
    /// The exact bytes that are signed.
    fn signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CONTEXT.len() + 8 * 5 + self.holder.len());
        out.extend_from_slice(CONTEXT);
        out.extend_from_slice(&(self.holder.len() as u64).to_be_bytes());
        out.extend_from_slice(self.holder.as_bytes());
        for n in [self.epoch, self.seq, self.issued_ms, self.expires_ms] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.extend_from_slice(&(self.holder_key.len() as u64).to_be_bytes());
        out.extend_from_slice(self.holder_key.as_bytes());
        out.extend_from_slice(&(self.ring.len() as u64).to_be_bytes());
        for m in &self.ring {
            for part in [&m.name, &m.key] {
                out.extend_from_slice(&(part.len() as u64).to_be_bytes());
                out.extend_from_slice(part.as_bytes());
            }
        }
        out
    }
}

const PROOF_CONTEXT: &[u8] = b"distlab/iot/write/v1\0";

fn proof_bytes(grant: &Grant, batch_digest: u64) -> Vec<u8> {
    let mut out = PROOF_CONTEXT.to_vec();
    for n in [grant.epoch, grant.seq, batch_digest] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    out
}

/// Whether `proof` is the holder's signature over this grant and batch.
pub fn proof_valid(grant: &Grant, batch_digest: u64, proof: &str) -> bool {
    let (Some(key), Some(sig)) = (
        public_key_from_hex(&grant.holder_key),
        from_hex::<64>(proof),
    ) else {
        return false;
    };
    key.verify_strict(
        &proof_bytes(grant, batch_digest),
        &Signature::from_bytes(&sig),
    )
    .is_ok()
}

/// A grant with the coordinator's signature (hex), as it travels on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedGrant {
    pub grant: Grant,
    pub sig: String,
    /// Who signed: absent for the coordinator; in ring mode, the receiver
    /// that passed the token on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
}

impl SignedGrant {
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        let Some(bytes) = from_hex::<64>(&self.sig) else {
            return false;
        };
        key.verify_strict(&self.grant.signing_bytes(), &Signature::from_bytes(&bytes))
            .is_ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read or write the key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the key file {path} is damaged (expected 64 hex digits); move it away to make a new key"
    )]
    Damaged { path: String },
    #[error("no randomness for a new key: {0}")]
    Random(String),
}

/// The coordinator's signing key.
pub struct KeyPair {
    key: SigningKey,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair(public {})", self.public_hex())
    }
}

impl KeyPair {
    /// A key from fixed bytes (tests use seeded keys).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// A new random key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self::from_seed(seed))
    }

    /// Loads the key in `path`, or makes one there (mode 0600) at first start.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        let shown = path.display().to_string();
        let io = |source| KeyError::Io {
            path: shown.clone(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => from_hex::<32>(text.trim())
                .map(Self::from_seed)
                .ok_or(KeyError::Damaged {
                    path: shown.clone(),
                }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let pair = Self::generate()?;
                let tmp = path.with_extension("tmp");
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(io)?;
                writeln!(file, "{}", to_hex(&pair.key.to_bytes())).map_err(io)?;
                file.sync_all().map_err(io)?;
                std::fs::rename(&tmp, path).map_err(io)?;
                Ok(pair)
            }
            Err(err) => Err(io(err)),
        }
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn public_hex(&self) -> String {
        to_hex(self.key.verifying_key().as_bytes())
    }

    /// A holder's proof that it writes `batch_digest` under `grant`.
    pub fn prove(&self, grant: &Grant, batch_digest: u64) -> String {
        to_hex(&self.key.sign(&proof_bytes(grant, batch_digest)).to_bytes())
    }

    pub fn sign(&self, grant: Grant) -> SignedGrant {
        let sig = self.key.sign(&grant.signing_bytes());
        SignedGrant {
            sig: to_hex(&sig.to_bytes()),
            grant,
            signer: None,
        }
    }

    /// A receiver passing the ring token on: `grant` signed with its own key.
    pub fn pass(&self, grant: Grant, me: &str) -> SignedGrant {
        SignedGrant {
            signer: Some(me.to_owned()),
            ..self.sign(grant)
        }
    }
}

/// A public key from its hex form.
pub fn public_key_from_hex(hex: &str) -> Option<VerifyingKey> {
    VerifyingKey::from_bytes(&from_hex::<32>(hex)?).ok()
}

pub fn to_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Exactly `N` bytes from `2 N` hex digits (either case), or `None`.
pub fn from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

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

/// The coordinator's grant schedule in `central` mode.
#[derive(Debug)]
pub struct Schedule {
    receivers: Vec<String>,
    lease_ms: u64,
    epoch: u64,
    seq: u64,
    next: usize,
    current: Option<Grant>,
    /// Receivers known to be down are skipped.
    down: std::collections::BTreeSet<String>,
    /// Public keys of receivers (hex); a receiver without one is not granted.
    keys: BTreeMap<String, String>,
    /// Ring mode: the coordinator only roots each epoch and watches passes.
    ring: bool,
    /// Ring mode: the members of the current epoch's ring.
    members: Vec<String>,
}

/// Why the schedule started a new epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Granted(Grant),
    /// The holder let its grant expire (or died); a new epoch began.
    Expired {
        holder: String,
        new_epoch: u64,
    },
}

impl Schedule {
    /// `epoch` is the first epoch to use: one more than any epoch used before
    /// (a restarted coordinator must never reuse an epoch).
    pub fn new(receivers: Vec<String>, lease_ms: u64, epoch: u64) -> Self {
        Self {
            receivers,
            lease_ms: lease_ms.max(1),
            epoch,
            seq: 0,
            next: 0,
            current: None,
            down: Default::default(),
            keys: Default::default(),
            ring: false,
            members: Vec::new(),
        }
    }

    /// Ring mode: when the live receivers differ from the current ring, the
    /// ring is rebuilt in a new epoch (a newcomer joins, a dead one leaves).
    fn rering(&mut self, now_ms: u64) -> Vec<Event> {
        if !self.ring || self.current.is_none() {
            return self.tick(now_ms);
        }
        let live: Vec<String> = self.roster("").into_iter().map(|m| m.name).collect();
        let mut now_members = self.members.clone();
        now_members.sort();
        let mut sorted_live = live;
        sorted_live.sort();
        if sorted_live != now_members {
            return self.revoke(now_ms);
        }
        self.tick(now_ms)
    }

    /// Ring mode: grants are epoch roots carrying the ring; receivers pass
    /// the token on themselves and the schedule only watches ([`Schedule::observe_pass`]).
    pub fn ring_mode(mut self) -> Self {
        self.ring = true;
        self
    }

    /// Ring mode: a pass seen on the bus moves the token (and its deadline)
    /// on; returns whether it did.
    pub fn observe_pass(&mut self, g: &Grant) -> bool {
        if self.ring
            && let Some(current) = &self.current
            && g.epoch == current.epoch
            && g.seq > current.seq
        {
            self.seq = g.seq;
            self.current = Some(g.clone());
            // A lapse skips the holder that let the token die.
            if let Some(i) = self.receivers.iter().position(|r| *r == g.holder) {
                self.next = i + 1;
            }
            return true;
        }
        false
    }

    /// The schedule with a receiver's key already known.
    pub fn with_key(mut self, receiver: &str, public_hex: &str) -> Self {
        self.keys.insert(receiver.to_owned(), public_hex.to_owned());
        self
    }

    /// Records a receiver's public key (from its retained announcement).
    pub fn set_key(&mut self, receiver: &str, public_hex: &str, now_ms: u64) -> Vec<Event> {
        self.keys.insert(receiver.to_owned(), public_hex.to_owned());
        self.rering(now_ms)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn current(&self) -> Option<&Grant> {
        self.current.as_ref()
    }

    /// Marks a receiver up or down (from presence). A holder that goes down
    /// loses the token at once, in a new epoch.
    pub fn set_down(&mut self, receiver: &str, down: bool, now_ms: u64) -> Vec<Event> {
        if down {
            self.down.insert(receiver.to_owned());
            if self.current.as_ref().is_some_and(|g| g.holder == receiver) {
                return self.revoke(now_ms);
            }
        } else {
            self.down.remove(receiver);
        }
        self.rering(now_ms)
    }

    /// The holder hands the token back (after writing, or with nothing to write).
    pub fn release(&mut self, holder: &str, epoch: u64, seq: u64, now_ms: u64) -> Vec<Event> {
        if self.ring {
            // In a ring the holder passes the token on instead.
            return Vec::new();
        }
        match &self.current {
            Some(g) if g.holder == holder && g.epoch == epoch && g.seq == seq => {
                self.current = None;
                self.tick(now_ms)
            }
            // A late or foreign release changes nothing.
            _ => Vec::new(),
        }
    }

    /// Advances time: expires an overdue grant, grants the next receiver.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Event> {
        let mut events = Vec::new();
        if self
            .current
            .as_ref()
            .is_some_and(|g| now_ms >= g.expires_ms)
        {
            events.extend(self.revoke(now_ms));
            return events;
        }
        if self.current.is_none()
            && let Some(holder) = self.pick_next()
        {
            self.seq += 1;
            let ring = if self.ring {
                self.roster(&holder)
            } else {
                Vec::new()
            };
            self.members = ring.iter().map(|m| m.name.clone()).collect();
            let grant = Grant {
                holder_key: self.keys.get(&holder).cloned().unwrap_or_default(),
                holder,
                epoch: self.epoch,
                seq: self.seq,
                issued_ms: now_ms,
                expires_ms: now_ms + self.lease_ms,
                ring,
            };
            self.current = Some(grant.clone());
            events.push(Event::Granted(grant));
        }
        events
    }

    fn revoke(&mut self, now_ms: u64) -> Vec<Event> {
        let Some(old) = self.current.take() else {
            return Vec::new();
        };
        self.epoch += 1;
        self.seq = 0;
        let mut events = vec![Event::Expired {
            holder: old.holder,
            new_epoch: self.epoch,
        }];
        events.extend(self.tick(now_ms));
        events
    }

    /// The live receivers with keys, in config order, starting at `first`.
    fn roster(&self, first: &str) -> Vec<RingMember> {
        let live: Vec<RingMember> = self
            .receivers
            .iter()
            .filter(|r| !self.down.contains(*r))
            .filter_map(|r| {
                self.keys.get(r).map(|k| RingMember {
                    name: r.clone(),
                    key: k.clone(),
                })
            })
            .collect();
        let start = live.iter().position(|m| m.name == first).unwrap_or(0);
        live[start..]
            .iter()
            .chain(&live[..start])
            .cloned()
            .collect()
    }

    fn pick_next(&mut self) -> Option<String> {
        for _ in 0..self.receivers.len() {
            let candidate = &self.receivers[self.next % self.receivers.len()];
            self.next = (self.next + 1) % self.receivers.len();
            if !self.down.contains(candidate) && self.keys.contains_key(candidate) {
                return Some(candidate.clone());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (KeyPair, KeyPair) {
        (KeyPair::from_seed([7; 32]), KeyPair::from_seed([9; 32]))
    }

    /// Each test holder's own key pair, seeded from its name.
    fn holder_keys(name: &str) -> KeyPair {
        let mut seed = [0u8; 32];
        for (i, b) in name.bytes().enumerate() {
            seed[i % 32] ^= b;
        }
        seed[31] = 0xaa;
        KeyPair::from_seed(seed)
    }

    fn grant(holder: &str, epoch: u64, seq: u64, expires_ms: u64) -> Grant {
        Grant {
            holder: holder.into(),
            epoch,
            seq,
            issued_ms: 0,
            expires_ms,
            holder_key: holder_keys(holder).public_hex(),
            ring: Vec::new(),
        }
    }

    /// Admits as `sender` would send: proof signed with the sender's own key.
    fn admit(
        gate: &mut TokenGate,
        signed: &SignedGrant,
        sender: &str,
        digest: u64,
        now: u64,
    ) -> Result<Admission, Rejection> {
        let proof = holder_keys(sender).prove(&signed.grant, digest);
        gate.admit(signed, sender, digest, &proof, now)
    }

    fn schedule(names: &[&str], lease: u64, epoch: u64) -> Schedule {
        names.iter().fold(
            Schedule::new(names.iter().map(|n| n.to_string()).collect(), lease, epoch),
            |s, n| s.with_key(n, &holder_keys(n).public_hex()),
        )
    }

    #[test]
    fn signatures_verify_and_tampering_breaks_them() {
        let (coord, other) = keys();
        let signed = coord.sign(grant("r1", 1, 1, 100));
        assert!(signed.verify(&coord.verifying_key()));
        assert!(!signed.verify(&other.verifying_key()));
        let mut tampered = signed.clone();
        tampered.grant.expires_ms = 1_000_000;
        assert!(!tampered.verify(&coord.verifying_key()));
        let mut garbled = signed;
        garbled.sig = "zz".into();
        assert!(!garbled.verify(&coord.verifying_key()));
    }

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(to_hex(&bytes), "0001abff");
        assert_eq!(from_hex::<4>("0001abff"), Some(bytes));
        assert_eq!(from_hex::<4>("0001abf"), None);
        assert_eq!(from_hex::<4>("0001abfg"), None);
        let (coord, _) = keys();
        assert_eq!(
            public_key_from_hex(&coord.public_hex()),
            Some(coord.verifying_key())
        );
    }

    #[test]
    fn gate_admits_a_valid_token_and_names_every_rejection() {
        let (coord, forger) = keys();
        let mut gate = TokenGate::new(None);
        let ok = coord.sign(grant("r1", 3, 1, 1000));
        assert_eq!(admit(&mut gate, &ok, "r1", 11, 10), Err(Rejection::NoKey));
        gate.set_key(coord.verifying_key());
        assert_eq!(admit(&mut gate, &ok, "r1", 11, 10), Ok(Admission::Fresh));
        assert_eq!(gate.epoch(), 3);
        // Retry of the same batch: acknowledged, not written again.
        assert_eq!(
            admit(&mut gate, &ok, "r1", 11, 10),
            Ok(Admission::Duplicate)
        );
        // Same grant, other data: a replay.
        assert_eq!(
            admit(&mut gate, &ok, "r1", 12, 10),
            Err(Rejection::Replayed)
        );
        // Forged: signed by someone else.
        let forged = forger.sign(grant("r1", 3, 2, 1000));
        assert_eq!(
            admit(&mut gate, &forged, "r1", 13, 10),
            Err(Rejection::BadSignature)
        );
        // The holder's name, but not the holder's key: a copied grant is useless.
        let copied = coord.sign(grant("r1", 3, 6, 1000));
        let proof = holder_keys("mallory").prove(&copied.grant, 20);
        assert_eq!(
            gate.admit(&copied, "r1", 20, &proof, 10),
            Err(Rejection::WrongHolder)
        );
        // Wrong holder.
        let theirs = coord.sign(grant("r2", 3, 3, 1000));
        assert_eq!(
            admit(&mut gate, &theirs, "r1", 14, 10),
            Err(Rejection::WrongHolder)
        );
        // Expired.
        let late = coord.sign(grant("r1", 3, 4, 50));
        assert_eq!(
            admit(&mut gate, &late, "r1", 15, 50),
            Err(Rejection::Expired)
        );
        // A newer epoch moves the gate on; the old epoch is stale from then on.
        let newer = coord.sign(grant("r2", 4, 1, 1000));
        assert_eq!(admit(&mut gate, &newer, "r2", 16, 20), Ok(Admission::Fresh));
        let old = coord.sign(grant("r1", 3, 5, 1000));
        assert_eq!(
            admit(&mut gate, &old, "r1", 17, 20),
            Err(Rejection::StaleEpoch)
        );
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
        assert_eq!(
            admit(&mut gate, &used, "r1", 43, 0),
            Err(Rejection::Replayed)
        );
        assert_eq!(
            admit(&mut gate, &used, "r1", 42, 0),
            Ok(Admission::Duplicate)
        );
    }

    fn granted(events: &[Event]) -> Vec<(String, u64, u64)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Granted(g) => Some((g.holder.clone(), g.epoch, g.seq)),
                Event::Expired { .. } => None,
            })
            .collect()
    }

    #[test]
    fn schedule_grants_in_turn() {
        let mut s = schedule(&["a", "b", "c"], 100, 1);
        assert_eq!(granted(&s.tick(0)), vec![("a".into(), 1, 1)]);
        // Only one holder at a time.
        assert!(s.tick(10).is_empty());
        assert_eq!(granted(&s.release("a", 1, 1, 20)), vec![("b".into(), 1, 2)]);
        assert_eq!(granted(&s.release("b", 1, 2, 30)), vec![("c".into(), 1, 3)]);
        assert_eq!(granted(&s.release("c", 1, 3, 40)), vec![("a".into(), 1, 4)]);
    }

    #[test]
    fn stale_or_foreign_releases_change_nothing() {
        let mut s = schedule(&["a", "b"], 100, 1);
        s.tick(0);
        assert!(s.release("b", 1, 1, 5).is_empty());
        assert!(s.release("a", 0, 1, 5).is_empty());
        assert!(s.release("a", 1, 9, 5).is_empty());
        assert_eq!(s.current().unwrap().holder, "a");
    }

    #[test]
    fn expiry_starts_a_new_epoch_and_moves_on() {
        let mut s = schedule(&["a", "b"], 100, 1);
        s.tick(0);
        assert!(s.tick(99).is_empty());
        let events = s.tick(100);
        assert_eq!(
            events[0],
            Event::Expired {
                holder: "a".into(),
                new_epoch: 2
            }
        );
        assert_eq!(granted(&events), vec![("b".into(), 2, 1)]);
    }

    #[test]
    fn a_dead_holder_loses_the_token_and_is_skipped() {
        let mut s = schedule(&["a", "b", "c"], 100, 7);
        s.tick(0);
        let events = s.set_down("a", true, 5);
        assert_eq!(granted(&events), vec![("b".into(), 8, 1)]);
        s.release("b", 8, 1, 6);
        s.release("c", 8, 2, 7);
        // a is still down: b again, not a.
        assert_eq!(s.current().unwrap().holder, "b");
        s.set_down("a", false, 8);
        s.release("b", 8, 3, 9);
        assert_eq!(s.current().unwrap().holder, "c");
        s.release("c", 8, 4, 10);
        assert_eq!(s.current().unwrap().holder, "a");
    }

    #[test]
    fn ring_roots_carry_the_ring_and_passes_move_the_token() {
        let (coord, _) = keys();
        let mut s = schedule(&["a", "b", "c"], 100, 1).ring_mode();
        let events = s.tick(0);
        let Event::Granted(root) = &events[0] else {
            panic!("{events:?}")
        };
        let names: Vec<&str> = root.ring.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        // Releases mean nothing in a ring; a pass from a to b moves the token.
        assert!(s.release("a", 1, 1, 10).is_empty());
        let pass = Grant {
            holder: "b".into(),
            holder_key: holder_keys("b").public_hex(),
            epoch: 1,
            seq: 2,
            issued_ms: 10,
            expires_ms: 110,
            ring: vec![],
        };
        s.observe_pass(&pass);
        assert_eq!(s.current().unwrap().holder, "b");
        // Nobody passes on: the coordinator roots a new epoch after the lease.
        assert!(s.tick(100).is_empty());
        let events = s.tick(110);
        assert!(matches!(&events[0], Event::Expired { holder, new_epoch: 2 } if holder == "b"));
        assert_eq!(granted(&events), vec![("c".into(), 2, 1)]);

        // The store checks a pass against the root's ring.
        let mut gate = TokenGate::new(Some(coord.verifying_key()));
        let root = coord.sign(root.clone());
        gate.observe(&root);
        let good = holder_keys("a").pass(pass.clone(), "a");
        assert_eq!(admit(&mut gate, &good, "b", 5, 20), Ok(Admission::Fresh));
        // Signed by a member that is not b's predecessor, or by an outsider.
        let skip = holder_keys("c").pass(pass.clone(), "c");
        assert_eq!(
            admit(&mut gate, &skip, "b", 6, 20),
            Err(Rejection::BadSignature)
        );
        let outsider = holder_keys("mallory").pass(pass.clone(), "a");
        assert_eq!(
            admit(&mut gate, &outsider, "b", 7, 20),
            Err(Rejection::BadSignature)
        );
        // A pass naming another key for b.
        let mut wrong_key = pass;
        wrong_key.holder_key = holder_keys("mallory").public_hex();
        let wrong = holder_keys("a").pass(wrong_key, "a");
        assert_eq!(
            admit(&mut gate, &wrong, "b", 8, 20),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn a_receiver_joining_or_leaving_rebuilds_the_ring() {
        let mut s = Schedule::new(vec!["a".into(), "b".into()], 100, 1)
            .ring_mode()
            .with_key("a", &holder_keys("a").public_hex());
        let events = s.tick(0);
        let Event::Granted(root) = &events[0] else {
            panic!()
        };
        assert_eq!(root.ring.len(), 1);
        let events = s.set_key("b", &holder_keys("b").public_hex(), 5);
        assert!(
            matches!(events[0], Event::Expired { new_epoch: 2, .. }),
            "{events:?}"
        );
        let Event::Granted(root) = &events[1] else {
            panic!("{events:?}")
        };
        assert_eq!(root.ring.len(), 2);
        let events = s.set_down("a", true, 6);
        let Event::Granted(root) = events.last().unwrap() else {
            panic!("{events:?}")
        };
        assert_eq!((root.epoch, root.ring.len()), (3, 1));
    }

    #[test]
    fn receivers_without_a_key_are_not_granted() {
        let mut s = Schedule::new(vec!["a".into(), "b".into()], 100, 1);
        assert!(s.tick(0).is_empty());
        let events = s.set_key("b", &holder_keys("b").public_hex(), 1);
        assert_eq!(granted(&events), vec![("b".into(), 1, 1)]);
        assert_eq!(
            s.current().unwrap().holder_key,
            holder_keys("b").public_hex()
        );
    }

    #[test]
    fn nobody_alive_means_no_grant() {
        let mut s = schedule(&["a"], 100, 1);
        s.set_down("a", true, 0);
        assert!(s.tick(10).is_empty());
        assert!(s.current().is_none());
        assert_eq!(
            granted(&s.set_down("a", false, 20)),
            vec![("a".into(), 1, 1)]
        );
    }

    #[test]
    fn key_file_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.key");
        let a = KeyPair::load_or_create(&path).unwrap();
        let b = KeyPair::load_or_create(&path).unwrap();
        assert_eq!(a.public_hex(), b.public_hex());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(
            KeyPair::load_or_create(&path),
            Err(KeyError::Damaged { .. })
        ));
    }
}
