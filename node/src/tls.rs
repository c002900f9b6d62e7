//! TLS for a broker that listens beyond loopback: its certificate (made
//! once, self-signed, or one the user provides), the fingerprint the nodes
//! pin it by, the client configuration that checks that pin, and the front
//! that terminates TLS before the broker.
//!
//! The nodes do not check a name or a chain of trust: they compare the
//! SHA-256 of the certificate the broker presents with the fingerprint
//! they were given (in the lab's credentials file, or
//! `DISTLAB_BROKER_FINGERPRINT`), and rustls checks the handshake's
//! signature against that certificate's key, so only the holder of the
//! broker's private key can answer.
//!
//! rumqttd can serve TLS itself, but it runs each handshake inline in its
//! accept loop with no timeout: one client that opens a connection and
//! says nothing would stop every later connection. The [`front`] here runs
//! each handshake in its own task, with a deadline and a cap on
//! connections, and then relays the bytes to the broker's plain listener
//! on loopback.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// The environment variable a node reads the broker's fingerprint from
/// when its credentials come from the environment.
pub const FINGERPRINT_ENV: &str = "DISTLAB_BROKER_FINGERPRINT";
/// Where a broker keeps the certificate it made, under its data dir.
pub const CERT_DIR: &str = "broker-tls";
/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no usable {what} (PEM): {why}")]
    Pem {
        path: PathBuf,
        what: &'static str,
        why: String,
    },
    #[error("cannot make a certificate: {0}")]
    Generate(String),
    #[error("the certificate and key do not go together: {0}")]
    Mismatch(String),
}

/// The SHA-256 of a certificate's DER bytes. Written `sha256:` and 64 hex
/// digits; read also with colons between the bytes and in either case
/// (as `openssl x509 -noout -fingerprint -sha256` prints it).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(cert_der: &[u8]) -> Self {
        Self(Sha256::digest(cert_der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Fingerprint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let body = [
            "sha256:",
            "SHA256:",
            "sha256 Fingerprint=",
            "SHA256 Fingerprint=",
        ]
        .iter()
        .find_map(|p| s.strip_prefix(p))
        .unwrap_or(s);
        let hex_digits: String = body.chars().filter(|&c| c != ':').collect();
        let mut out = [0u8; 32];
        hex::decode_to_slice(&hex_digits, &mut out).map_err(|_| {
            format!(
                "`{s}` is not a SHA-256 fingerprint (`sha256:` and 64 hex digits, colons allowed)"
            )
        })?;
        Ok(Self(out))
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A broker's certificate chain and key, and the fingerprint of its
/// certificate.
#[derive(Clone)]
pub struct BrokerCert {
    pub chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    pub fingerprint: Fingerprint,
}

impl fmt::Debug for BrokerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerCert")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl BrokerCert {
    /// The user's certificate (PEM, the broker's first, then its chain)
    /// and private key (PEM).
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        fn pem<'a>(
            path: &'a Path,
            what: &'static str,
        ) -> impl Fn(rustls::pki_types::pem::Error) -> TlsError + 'a {
            move |e| match e {
                rustls::pki_types::pem::Error::Io(source) => TlsError::Read {
                    path: path.to_owned(),
                    source,
                },
                other => TlsError::Pem {
                    path: path.to_owned(),
                    what,
                    why: other.to_string(),
                },
            }
        }
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(pem(cert, "certificate"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem(cert, "certificate"))?;
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(pem(key, "private key"))?;
        Self::new(chain, key_der).map_err(|e| match e {
            TlsError::Pem { why, .. } => TlsError::Pem {
                path: cert.to_owned(),
                what: "certificate",
                why,
            },
            other => other,
        })
    }

    fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let Some(first) = chain.first() else {
            return Err(TlsError::Pem {
                path: PathBuf::new(),
                what: "certificate",
                why: "no CERTIFICATE block".into(),
            });
        };
        let fingerprint = Fingerprint::of(first);
        let cert = Self {
            chain,
            key: Arc::new(key),
            fingerprint,
        };
        // Fails now, with a clear message, if the key is not the
        // certificate's (rather than at every handshake).
        cert.server_config()?;
        Ok(cert)
    }

    /// The certificate in `dir` (`cert.pem`, `key.pem`), made there once
    /// if missing: self-signed, the key readable by this user only. The
    /// same one comes back at every start, so pinned nodes keep working.
    pub fn load_or_create(dir: &Path) -> Result<Self, TlsError> {
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        if cert_path.exists() && key_path.exists() {
            return Self::from_files(&cert_path, &key_path);
        }
        let write = |path: &Path| {
            let path = path.to_owned();
            move |source| TlsError::Write { path, source }
        };
        std::fs::create_dir_all(dir).map_err(write(dir))?;
        let names = vec!["distlab-broker".to_owned(), "localhost".to_owned()];
        let made = rcgen::generate_simple_self_signed(names)
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        crate::credentials::write_private(&key_path, made.signing_key.serialize_pem().as_bytes())
            .map_err(write(&key_path))?;
        crate::credentials::write_private(&cert_path, made.cert.pem().as_bytes())
            .map_err(write(&cert_path))?;
        Self::from_files(&cert_path, &key_path)
    }

    fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Mismatch(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Mismatch(e.to_string()))?;
        Ok(Arc::new(config))
    }
}

/// ring's algorithms. rustls 0.23.48 deprecates this provider only for
/// lacking post-quantum key exchange; the lab's bus does not need that,
/// and ring builds without a C toolchain beyond the compiler (aws-lc needs
/// CMake and doubles the build).
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts exactly the certificate with this fingerprint (and a handshake
/// signed by its key).
#[derive(Debug)]
struct Pinned {
    fingerprint: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = Fingerprint::of(end_entity);
        if presented == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the broker's certificate is {presented}, not the pinned {}",
                self.fingerprint
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration that trusts only the certificate `fingerprint`.
pub fn client_config(fingerprint: Fingerprint) -> Arc<rustls::ClientConfig> {
    let provider = provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            fingerprint,
            provider,
        }))
        .with_no_client_auth();
    Arc::new(config)
}

/// The name a client sends: the host when it is one, else a fixed name
/// (the pin, not the name, is what is checked).
pub fn server_name(host: &str) -> ServerName<'static> {
    ServerName::try_from(host.to_owned())
        .unwrap_or_else(|_| ServerName::try_from("distlab-broker").expect("a valid DNS name"))
}

/// Terminates TLS on `listener` and relays each connection to `inner`
/// (the broker's plain listener on loopback): each handshake in its own
/// task with [`HANDSHAKE_TIMEOUT`], at most `max_connections` at once
/// (more are closed at once). Runs until the process ends.
pub async fn front(
    listener: tokio::net::TcpListener,
    cert: BrokerCert,
    inner: std::net::SocketAddr,
    max_connections: usize,
) {
    let config = match cert.server_config() {
        Ok(c) => c,
        Err(err) => {
            tracing::error!(error = %err, "the broker's TLS front cannot start");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors, most likely: wait for some to
                // close rather than spin.
                tracing::warn!(error = %err, "the broker's TLS front cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max_connections, "broker connection refused: too many connections");
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tcp.set_nodelay(true);
            let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    tracing::info!(%peer, error = %err, "TLS handshake with the broker failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "TLS handshake with the broker timed out");
                    return;
                }
            };
            let Ok(mut plain) = tokio::net::TcpStream::connect(inner).await else {
                tracing::warn!(%peer, %inner, "the broker behind the TLS front does not answer");
                return;
            };
            let _ = plain.set_nodelay(true);
            const BUF: usize = 64 * 1024;
            let _ = tokio::io::copy_bidirectional_with_sizes(&mut tls, &mut plain, BUF, BUF).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_read_back_in_every_spelling() {
        let fp = Fingerprint::of(b"certificate");
        let text = fp.to_string();
        assert!(
            text.starts_with("sha256:") && text.len() == 7 + 64,
            "{text}"
        );
        assert_eq!(text.parse::<Fingerprint>().unwrap(), fp);
        let openssl = format!(
            "SHA256 Fingerprint={}",
            fp.0.iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join(":")
        );
        assert_eq!(openssl.parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(hex::encode(fp.0).parse::<Fingerprint>().unwrap(), fp);
        for bad in ["", "sha256:", "sha256:abc", &format!("{text}00"), "md5:00"] {
            let err = bad.parse::<Fingerprint>().unwrap_err();
            assert!(err.contains("not a SHA-256 fingerprint"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_made_certificate_is_kept_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let made = BrokerCert::load_or_create(dir.path()).unwrap();
        let again = BrokerCert::load_or_create(dir.path()).unwrap();
        assert_eq!(made.fingerprint, again.fingerprint);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(
            BrokerCert::load_or_create(other.path())
                .unwrap()
                .fingerprint,
            made.fingerprint
        );
    }

    #[test]
    fn bad_certificate_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        BrokerCert::load_or_create(&path("a")).unwrap();
        BrokerCert::load_or_create(&path("b")).unwrap();
        std::fs::write(path("junk.pem"), "not pem").unwrap();
        for (cert, key, needles) in [
            // A's certificate with B's key.
            ("a/cert.pem", "b/key.pem", ["do not go together", ""]),
            ("junk.pem", "a/key.pem", ["junk.pem", "certificate"]),
            ("a/cert.pem", "junk.pem", ["junk.pem", "private key"]),
            ("none.pem", "junk.pem", ["cannot read", "none.pem"]),
        ] {
            let err = BrokerCert::from_files(&path(cert), &path(key))
                .unwrap_err()
                .to_string();
            assert!(
                needles.iter().all(|n| err.contains(n)),
                "{cert}, {key}: {err}"
            );
        }
    }
}
