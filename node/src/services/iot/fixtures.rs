//! Keys and grants shared by the IoT unit tests.

use super::gate::{Admission, Rejection, TokenGate};
use super::keys::KeyPair;
use super::token::{Grant, RingMember, SignedGrant};

/// The coordinator's key and a forger's.
pub fn keys() -> (KeyPair, KeyPair) {
    (KeyPair::from_seed([7; 32]), KeyPair::from_seed([9; 32]))
}

/// Each test holder's own key pair, seeded from its name.
pub fn holder_keys(name: &str) -> KeyPair {
    let mut seed = [0u8; 32];
    for (i, b) in name.bytes().enumerate() {
        seed[i % 32] ^= b;
    }
    seed[31] = 0xaa;
    KeyPair::from_seed(seed)
}

/// A grant to `holder`, bound to its [`holder_keys`].
pub fn grant(holder: &str, epoch: u64, seq: u64, expires_ms: u64) -> Grant {
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
pub fn admit(
    gate: &mut TokenGate,
    signed: &SignedGrant,
    sender: &str,
    digest: u64,
    now: u64,
) -> Result<Admission, Rejection> {
    let proof = holder_keys(sender).prove(&signed.grant, digest);
    gate.admit(signed, sender, digest, &proof, now)
}

/// A ring of these members in this order, each with its [`holder_keys`].
pub fn ring(names: &[&str]) -> Vec<RingMember> {
    names
        .iter()
        .map(|n| RingMember {
            name: n.to_string(),
            key: holder_keys(n).public_hex(),
        })
        .collect()
}
