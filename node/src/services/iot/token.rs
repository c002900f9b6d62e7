//! The DB write token itself: a grant `{holder, epoch, seq, issued,
//! expires, holder_key, ring}` and its signed form as it travels on the bus.
//!
//! Signatures are over a fixed binary layout with a domain prefix (never over
//! JSON, whose byte form is not canonical). Signing lives with the keys
//! ([`super::keys`]), the store's check in [`super::gate`], the coordinator's
//! turn order in [`super::schedule`].

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::keys::{from_hex, public_key_from_hex};

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
    pub(super) fn signing_bytes(&self) -> Vec<u8> {
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

pub(super) fn proof_bytes(grant: &Grant, batch_digest: u64) -> Vec<u8> {
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

#[cfg(test)]
mod tests {
    use super::super::fixtures::{grant, keys};

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
}
