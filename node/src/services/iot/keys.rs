//! Ed25519 keys: the coordinator's and each receiver's [`KeyPair`] (the one
//! part of the token with I/O: it loads or writes its 0600 key file), the
//! signing of grants, passes and write proofs, and the hex form keys and
//! signatures travel in.

use std::fmt;
use std::path::Path;

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};

use super::token::{Grant, SignedGrant, proof_bytes};

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

/// The coordinator's public key as a store or receiver trusts it: the
/// first one it sees is written to a file in its data dir (pinned), and a
/// different one later is refused, so a newer retained `iot/key` from
/// anyone on the bus cannot replace it. The coordinator keeps its key
/// across restarts (its key file), so the pin holds; to trust a new
/// coordinator key, delete the pin file.
/// Where a store or receiver pins it, in its data dir.
pub const PIN_FILE: &str = "coordinator.pub";

#[derive(Debug)]
pub struct PinnedKey {
    path: std::path::PathBuf,
    pinned: Option<VerifyingKey>,
}

/// Why an offered key was not taken.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "the coordinator key offered ({offered}) is not the one pinned in {path} ({pinned}); refused (delete that file to trust a new coordinator key)"
    )]
    Changed {
        path: String,
        pinned: String,
        offered: String,
    },
    #[error("cannot pin the coordinator key in {path}: {error}")]
    Io { path: String, error: std::io::Error },
}

impl PinnedKey {
    /// The pin in `path`, if there is one (a damaged file counts as none
    /// and is replaced at the next key).
    pub fn load(path: &Path) -> Self {
        let pinned = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| public_key_from_hex(t.trim()));
        Self {
            path: path.to_owned(),
            pinned,
        }
    }

    pub fn key(&self) -> Option<VerifyingKey> {
        self.pinned
    }

    /// The key a retained `iot/key` message offers, if it is taken: it
    /// must come from a coordinator of the lab (`coordinators`), naming
    /// itself, and match the pin (or be the first).
    pub fn take(
        &mut self,
        message: &crate::envelope::Envelope,
        coordinators: &[String],
    ) -> Result<VerifyingKey, String> {
        let body = message
            .body_as::<super::coordinator::PublicKey>()
            .map_err(|e| format!("malformed coordinator key: {e}"))?;
        if body.coordinator != message.from || !coordinators.contains(&message.from) {
            return Err(format!(
                "a coordinator key from `{}` (naming `{}`), not from a coordinator of the lab; refused",
                message.from, body.coordinator
            ));
        }
        let key = public_key_from_hex(&body.public)
            .ok_or_else(|| "malformed coordinator key (not 64 hex digits)".to_owned())?;
        self.offer(key).map_err(|e| e.to_string())
    }

    /// Takes `offered` if nothing is pinned yet (pinning it) or it is the
    /// pinned key.
    pub fn offer(&mut self, offered: VerifyingKey) -> Result<VerifyingKey, PinError> {
        match self.pinned {
            Some(pinned) if pinned == offered => Ok(pinned),
            Some(pinned) => Err(PinError::Changed {
                path: self.path.display().to_string(),
                pinned: to_hex(pinned.as_bytes()),
                offered: to_hex(offered.as_bytes()),
            }),
            None => {
                std::fs::write(&self.path, to_hex(offered.as_bytes())).map_err(|error| {
                    PinError::Io {
                        path: self.path.display().to_string(),
                        error,
                    }
                })?;
                self.pinned = Some(offered);
                Ok(offered)
            }
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_first_coordinator_key_is_pinned_and_another_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.pub");
        let (real, forged) = (KeyPair::from_seed([1; 32]), KeyPair::from_seed([2; 32]));
        let mut pin = PinnedKey::load(&path);
        assert!(pin.key().is_none());
        assert_eq!(
            pin.offer(real.verifying_key()).unwrap(),
            real.verifying_key()
        );
        let err = pin.offer(forged.verifying_key()).unwrap_err().to_string();
        assert!(
            err.contains("refused") && err.contains("coordinator.pub"),
            "{err}"
        );
        assert_eq!(
            pin.offer(real.verifying_key()).unwrap(),
            real.verifying_key()
        );
        // Across a restart.
        let mut again = PinnedKey::load(&path);
        assert_eq!(again.key(), Some(real.verifying_key()));
        assert!(again.offer(forged.verifying_key()).is_err());
    }

    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(to_hex(&bytes), "0001abff");
        assert_eq!(from_hex::<4>("0001abff"), Some(bytes));
        assert_eq!(from_hex::<4>("0001abf"), None);
        assert_eq!(from_hex::<4>("0001abfg"), None);
        let coord = KeyPair::from_seed([7; 32]);
        assert_eq!(
            public_key_from_hex(&coord.public_hex()),
            Some(coord.verifying_key())
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
