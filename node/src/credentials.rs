//! The lab's bus credentials: one user name and a random password that
//! every node, the app and the CLI present to the broker, and that the
//! embedded broker requires.
//!
//! They live in a small TOML file, mode 0600 (`bus-credentials` in the
//! data dir, made at first start by the app or `distlab-node broker`).
//! A process finds them, in order: an explicit file (`--credentials`),
//! `DISTLAB_BUS_PASSWORD` (with `DISTLAB_BUS_USER`, default `distlab`),
//! the file named by `DISTLAB_CREDENTIALS`, the file in the default data
//! dir. Child processes get them in their environment, never on a command
//! line (which any user can read in `ps`).
//!
//! When the broker serves TLS (it listens beyond loopback), the file also
//! holds the fingerprint of its certificate (`broker_fingerprint`), which
//! the nodes pin: a node whose credentials carry one connects with TLS and
//! accepts only that certificate.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::tls::{FINGERPRINT_ENV, Fingerprint};

/// Environment variables a node reads its credentials from.
pub const PASSWORD_ENV: &str = "DISTLAB_BUS_PASSWORD";
pub const USER_ENV: &str = "DISTLAB_BUS_USER";
pub const FILE_ENV: &str = "DISTLAB_CREDENTIALS";
/// The file's name in a data dir.
pub const FILE_NAME: &str = "bus-credentials";
/// The user name when none is given.
pub const DEFAULT_USER: &str = "distlab";

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub user: String,
    pub password: String,
    /// The broker's TLS certificate, pinned; none: plain MQTT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_fingerprint: Option<Fingerprint>,
}

/// Never prints the password.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"…")
            .field("broker_fingerprint", &self.broker_fingerprint)
            .finish()
    }
}

/// Where [`Credentials::resolve`] finds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// In the environment.
    Env(Credentials),
    /// In this file.
    File(PathBuf),
}

/// Writes `bytes` to `path` readable by this user only, whole or not at
/// all (a temporary file beside it, synced, then renamed over it).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read the bus credentials {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the bus credentials {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the bus credentials {path} are not valid: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("{PASSWORD_ENV} is set but empty")]
    EmptyEnv,
    #[error("{0}: {1}")]
    BadEnv(&'static str, String),
}

impl Credentials {
    /// New credentials: user `distlab`, 128 random bits as the password.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).expect("the OS random source");
        Self {
            user: DEFAULT_USER.to_owned(),
            password: hex::encode(bytes),
            broker_fingerprint: None,
        }
    }

    /// These credentials pinning the broker certificate `fingerprint`
    /// (none: plain MQTT).
    pub fn pinning(self, fingerprint: Option<Fingerprint>) -> Self {
        Self {
            broker_fingerprint: fingerprint,
            ..self
        }
    }

    /// The file's text.
    fn to_file_text(&self) -> String {
        let body = toml::to_string(self).expect("credentials serialise");
        format!(
            "# Distlab bus credentials: every node, the app and the CLI present\n\
             # them to the broker. Copy this file to the machines that run nodes\n\
             # (distlab-node serve --credentials FILE). Keep it private.\n{body}"
        )
    }

    /// Writes them to `path` (mode 0600), replacing what is there.
    pub fn store(&self, path: &Path) -> Result<(), CredentialsError> {
        write_private(path, self.to_file_text().as_bytes()).map_err(|source| {
            CredentialsError::Write {
                path: path.to_owned(),
                source,
            }
        })
    }

    /// Whether `user` and `password` are these (the passwords compared by
    /// their digests, so the time taken tells nothing about the password).
    pub fn accepts(&self, user: &str, password: &str) -> bool {
        let same = Sha256::digest(password.as_bytes()) == Sha256::digest(self.password.as_bytes());
        same && user == self.user
    }

    /// Reads the file at `path`.
    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |why: String| CredentialsError::Invalid {
            path: path.to_owned(),
            why,
        };
        let c: Credentials = toml::from_str(&text).map_err(|e| invalid(e.message().to_owned()))?;
        if c.user.is_empty() || c.password.len() < 16 {
            return Err(invalid(
                "user must be set and password at least 16 characters".into(),
            ));
        }
        Ok(c)
    }

    /// Reads the file at `path`, or makes new credentials there (mode 0600,
    /// never replacing a file another process wrote meanwhile).
    pub fn load_or_create(path: &Path) -> Result<Self, CredentialsError> {
        if path.exists() {
            return Self::load(path);
        }
        let write = |source| CredentialsError::Write {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(write)?;
        }
        let c = Self::generate();
        let text = c.to_file_text();
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(mut f) => {
                f.write_all(text.as_bytes()).map_err(write)?;
                f.sync_all().map_err(write)?;
                Ok(c)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(path),
            Err(e) => Err(write(e)),
        }
    }

    /// The credentials this process should use: `explicit` (a file) if
    /// given, else the environment, else the file in `data_dir`, else none.
    pub fn resolve(
        explicit: Option<&Path>,
        data_dir: &Path,
    ) -> Result<Option<Self>, CredentialsError> {
        match Self::locate(explicit, data_dir)? {
            Some(Source::Env(c)) => Ok(Some(c)),
            Some(Source::File(path)) => Self::load(&path).map(Some),
            None => Ok(None),
        }
    }

    /// Where [`resolve`](Self::resolve) finds them (the file not yet read).
    pub fn locate(
        explicit: Option<&Path>,
        data_dir: &Path,
    ) -> Result<Option<Source>, CredentialsError> {
        if let Some(path) = explicit {
            return Ok(Some(Source::File(path.to_owned())));
        }
        if let Some(password) = std::env::var_os(PASSWORD_ENV) {
            let password = password.to_string_lossy().into_owned();
            if password.is_empty() {
                return Err(CredentialsError::EmptyEnv);
            }
            let user = std::env::var(USER_ENV)
                .ok()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| DEFAULT_USER.to_owned());
            let broker_fingerprint = match std::env::var(FINGERPRINT_ENV) {
                Ok(text) if !text.is_empty() => Some(
                    text.parse()
                        .map_err(|why| CredentialsError::BadEnv(FINGERPRINT_ENV, why))?,
                ),
                _ => None,
            };
            return Ok(Some(Source::Env(Self {
                user,
                password,
                broker_fingerprint,
            })));
        }
        if let Some(path) = std::env::var_os(FILE_ENV).filter(|p| !p.is_empty()) {
            return Ok(Some(Source::File(PathBuf::from(path))));
        }
        let path = data_dir.join(FILE_NAME);
        if path.exists() {
            return Ok(Some(Source::File(path)));
        }
        Ok(None)
    }

    /// The environment a child process gets them in.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            (USER_ENV, self.user.clone()),
            (PASSWORD_ENV, self.password.clone()),
        ];
        if let Some(fp) = self.broker_fingerprint {
            env.push((FINGERPRINT_ENV, fp.to_string()));
        }
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(FILE_NAME);
        let made = Credentials::load_or_create(&path).unwrap();
        assert_eq!(made.user, DEFAULT_USER);
        assert_eq!(made.password.len(), 32);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(Credentials::load_or_create(&path).unwrap(), made);
        assert_eq!(Credentials::load(&path).unwrap(), made);
        assert_ne!(Credentials::generate(), made);
        // An explicit file wins over everything else.
        let found = Credentials::resolve(Some(&path), Path::new("/nonexistent")).unwrap();
        assert_eq!(found, Some(made.clone()));
        assert!(!format!("{made:?}").contains(&made.password));
    }

    #[test]
    fn a_pinned_fingerprint_is_stored_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let made = Credentials::load_or_create(&path).unwrap();
        assert_eq!(made.broker_fingerprint, None);
        let fp = Fingerprint::of(b"a certificate");
        let pinned = made.clone().pinning(Some(fp));
        pinned.store(&path).unwrap();
        assert_eq!(Credentials::load(&path).unwrap(), pinned);
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains(&fp.to_string())
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let env = pinned.env();
        assert!(
            env.iter()
                .any(|(k, v)| *k == FINGERPRINT_ENV && *v == fp.to_string())
        );
        assert_eq!(made.env().len(), 2);
        let bad =
            "user = \"a\"\npassword = \"0123456789abcdef\"\nbroker_fingerprint = \"sha256:12\"\n";
        std::fs::write(&path, bad).unwrap();
        let err = Credentials::load(&path).unwrap_err().to_string();
        assert!(err.contains("not a SHA-256 fingerprint"), "{err}");
    }

    #[test]
    fn only_the_right_pair_is_accepted() {
        let c = Credentials {
            user: "distlab".into(),
            password: "0123456789abcdef".into(),
            broker_fingerprint: None,
        };
        assert!(c.accepts("distlab", "0123456789abcdef"));
        assert!(!c.accepts("distlab", "0123456789abcdeF"));
        assert!(!c.accepts("other", "0123456789abcdef"));
        assert!(!c.accepts("distlab", ""));
    }

    #[test]
    fn a_bad_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        for (text, needle) in [
            ("user = \"a\"\npassword = \"short\"\n", "at least 16"),
            ("user = \"a\"\n", "password"),
            (
                "user = \"a\"\npassword = \"0123456789abcdef\"\nextra = 1\n",
                "extra",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = Credentials::load(&path).unwrap_err().to_string();
            assert!(err.contains(needle) && err.contains(FILE_NAME), "{err}");
        }
        let err = Credentials::load(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read"), "{err}");
    }
}
