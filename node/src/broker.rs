//! The embedded MQTT broker (rumqttd) and a probe that tells whether a broker
//! answers at an address.
//!
//! rumqttd's `Broker::start` blocks forever, cannot be stopped, and only logs a
//! bind error. So the port is chosen (and checked free) first, the broker runs
//! on its own thread for the rest of the process, and [`start`] returns only
//! once an MQTT CONNECT to it has been answered.
//!
//! A broker that listens beyond loopback serves TLS only: rumqttd then
//! listens on a free loopback port, and [`crate::tls::front`] terminates
//! TLS on the public address and relays to it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::bus::MAX_PAYLOAD;
use crate::config::BrokerAddr;
use crate::credentials::Credentials;
use crate::tls::{BrokerCert, Fingerprint};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {addr}: {source}; pick another address with --listen")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the embedded broker did not answer on {addr} within {waited:?}: {last}")]
    NotReady {
        addr: SocketAddr,
        waited: Duration,
        last: String,
    },
    #[error("cannot start the broker thread: {0}")]
    Thread(std::io::Error),
    #[error(
        "a broker on {0} would be reachable from other machines, so it needs TLS (a certificate)"
    )]
    NeedsTls(SocketAddr),
    #[error(transparent)]
    Certificate(#[from] crate::tls::TlsError),
}

/// A running embedded broker. It lives until the process ends.
#[derive(Debug, Clone)]
pub struct EmbeddedBroker {
    /// Where it listens (TLS when `tls` is set).
    pub addr: SocketAddr,
    /// Where the MQTT broker itself listens, plain: `addr` without TLS, a
    /// loopback port behind the TLS front with it.
    pub plain: SocketAddr,
    /// What every client must present.
    pub credentials: Credentials,
    /// The certificate the TLS front presents.
    pub tls: Option<Fingerprint>,
}

impl EmbeddedBroker {
    /// Where processes on this machine reach it (plain MQTT on loopback),
    /// with the credentials they present.
    pub fn client_addr(&self) -> BrokerAddr {
        BrokerAddr {
            host: self.plain.ip().to_string(),
            port: self.plain.port(),
            credentials: Some(self.credentials.clone().pinning(None)),
        }
    }

    /// Where other machines reach it, with the credentials (and the pinned
    /// certificate) they present. Listening on every interface, it names
    /// this machine.
    pub fn remote_addr(&self) -> BrokerAddr {
        let ip = self.addr.ip();
        let host = if ip.is_unspecified() {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| ip.to_string())
        } else {
            ip.to_string()
        };
        BrokerAddr {
            host,
            port: self.addr.port(),
            credentials: Some(self.credentials.clone().pinning(self.tls)),
        }
    }
}

/// What a broker on `listen` serves: TLS with `cert` if given, else TLS
/// with the certificate kept in `cert_dir` (made there once) when `listen`
/// is beyond loopback, else plain MQTT.
pub fn start_for(
    listen: SocketAddr,
    credentials: Credentials,
    cert: Option<BrokerCert>,
    cert_dir: &std::path::Path,
) -> Result<EmbeddedBroker, BrokerError> {
    let cert = match cert {
        Some(cert) => Some(cert),
        None if listen.ip().is_loopback() => None,
        None => Some(BrokerCert::load_or_create(cert_dir)?),
    };
    start_with(listen, credentials, cert)
}

/// Whether rumqttd can take `id` as a client id: its router refuses ids
/// with `+ $ # /`, and a refused id left behind a will handler that panics
/// the broker at the next CONNECT with the same id (rumqttd 0.20,
/// `server/broker.rs`, while holding a lock every later CONNECT needs).
/// Refused here, in the authentication hook, the connection never gets
/// that far. Empty is fine (the broker assigns one).
pub fn valid_client_id(id: &str) -> bool {
    id.len() <= 256 && !id.contains(['+', '$', '#', '/'])
}

/// Starts the embedded broker on `listen`; every client must present
/// `credentials` and a valid client id. Port 0 picks a free port.
pub fn start(listen: SocketAddr, credentials: Credentials) -> Result<EmbeddedBroker, BrokerError> {
    start_with(listen, credentials, None)
}

/// Starts the embedded broker on `listen`, serving TLS with `cert` when
/// given (required beyond loopback).
pub fn start_with(
    listen: SocketAddr,
    credentials: Credentials,
    cert: Option<BrokerCert>,
) -> Result<EmbeddedBroker, BrokerError> {
    if cert.is_none() && !listen.ip().is_loopback() {
        return Err(BrokerError::NeedsTls(listen));
    }
    let credentials = credentials.pinning(None);
    let (public, addr) = match &cert {
        None => {
            let addr = reserve(listen)?;
            (None, addr)
        }
        Some(_) => {
            let public = TcpListener::bind(listen).map_err(|source| BrokerError::Bind {
                addr: listen,
                source,
            })?;
            (
                Some(public),
                reserve(SocketAddr::from(([127, 0, 0, 1], 0)))?,
            )
        }
    };
    let config = broker_config(addr, credentials.clone());
    give_back_large_buffers();
    std::thread::Builder::new()
        .name("mqtt-broker".to_owned())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(err) = broker.start() {
                tracing::error!(error = %err, "embedded MQTT broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;
    let waited = Duration::from_secs(10);
    let deadline = Instant::now() + waited;
    loop {
        match probe(addr, Some(&credentials), Duration::from_millis(500)) {
            Ok(()) => {
                if !disable_nagle_on_listener(addr.port()) {
                    tracing::warn!(%addr, "could not set TCP_NODELAY on the broker's listener; small messages may wait ~40 ms");
                }
                break;
            }
            Err(err) if Instant::now() >= deadline => {
                return Err(BrokerError::NotReady {
                    addr,
                    waited,
                    last: err.to_string(),
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let (Some(public), Some(cert)) = (public, cert) else {
        return Ok(EmbeddedBroker {
            addr,
            plain: addr,
            credentials,
            tls: None,
        });
    };
    let front_addr = public.local_addr().map_err(|source| BrokerError::Bind {
        addr: listen,
        source,
    })?;
    public.set_nonblocking(true).map_err(BrokerError::Thread)?;
    let fingerprint = cert.fingerprint;
    let max = front_connections();
    std::thread::Builder::new()
        .name("mqtt-tls-front".to_owned())
        .spawn(move || {
            // Two workers: the handshakes and the encryption of every remote
            // node's traffic may use both cores of a small machine.
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("mqtt-tls")
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(err) => {
                    tracing::error!(error = %err, "the broker's TLS front cannot start");
                    return;
                }
            };
            rt.block_on(async move {
                match tokio::net::TcpListener::from_std(public) {
                    Ok(listener) => crate::tls::front(listener, cert, addr, max).await,
                    Err(err) => {
                        tracing::error!(error = %err, "the broker's TLS front cannot listen")
                    }
                }
            });
        })
        .map_err(BrokerError::Thread)?;
    let pinned = credentials.clone().pinning(Some(fingerprint));
    probe(front_addr, Some(&pinned), Duration::from_secs(5)).map_err(|err| {
        BrokerError::NotReady {
            addr: front_addr,
            waited: Duration::from_secs(5),
            last: err.to_string(),
        }
    })?;
    Ok(EmbeddedBroker {
        addr: front_addr,
        plain: addr,
        credentials,
        tls: Some(fingerprint),
    })
}

/// How many connections the TLS front holds at once: half of this
/// process's open-file limit (each takes two descriptors), 16 to 10,000.
fn front_connections() -> usize {
    (crate::front_door::open_files() / 2).clamp(16, 10_000) as usize
}

/// rumqttd has no TCP_NODELAY option, so Nagle's algorithm stays on for every
/// client socket: a small message (an RPC reply, a grant) then waits for the
/// ACK of the previous segment, ~40 ms against a delayed ACK. Linux copies
/// TCP_NODELAY from a listening socket to the sockets it accepts, and the
/// broker runs in this process: find its listener among our file descriptors
/// and set it there — and on the connections it already accepted (a client
/// retrying its connect can get in between the listen and this). Returns
/// whether a listener on `port` was found and set.
fn disable_nagle_on_listener(port: u16) -> bool {
    use nix::sys::socket::{setsockopt, sockopt};
    let mut done = false;
    for_each_socket_on(port, |fd, listening| {
        let set = setsockopt(&fd, sockopt::TcpNoDelay, &true).is_ok();
        done |= listening && set;
    });
    done
}

/// Calls `f` with every TCP socket of this process whose local port is
/// `port`, and whether it is listening.
fn for_each_socket_on(port: u16, mut f: impl FnMut(std::os::fd::BorrowedFd<'_>, bool)) {
    use nix::sys::socket::{
        AddressFamily, SockaddrLike, SockaddrStorage, getsockname, getsockopt, sockopt,
    };
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in dir.flatten() {
        let Some(raw) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(local) = getsockname::<SockaddrStorage>(raw) else {
            continue; // not a socket (or closed meanwhile)
        };
        let local_port = match local.family() {
            Some(AddressFamily::Inet) => local.as_sockaddr_in().map(|a| a.port()),
            Some(AddressFamily::Inet6) => local.as_sockaddr_in6().map(|a| a.port()),
            _ => None,
        };
        if local_port != Some(port) {
            continue;
        }
        // SAFETY: only borrowed for the duration of `f`; the broker's sockets
        // are not closed under us (and a closed fd only makes calls fail).
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
        let listening = getsockopt(&fd, sockopt::AcceptConn).unwrap_or(false);
        f(fd, listening);
    }
}

/// The lab's broker as the app or `distlab-node broker` starts it.
#[derive(Debug)]
pub struct LabBroker {
    pub broker: EmbeddedBroker,
    /// The credentials file the clients take (none: they came from the
    /// environment). With TLS it holds the certificate's fingerprint.
    pub credentials_file: Option<std::path::PathBuf>,
}

/// Starts the lab's broker on `listen` (none: 127.0.0.1:1883, or a free
/// port when that is taken) with the credentials found as
/// [`Credentials::resolve`] finds them, or made now in `data_dir`. Beyond
/// loopback it serves TLS, with `cert` (certificate and key files) or a
/// certificate made once in `data_dir`, and writes the certificate's
/// fingerprint into the credentials file for the nodes to pin.
pub fn start_lab(
    listen: Option<SocketAddr>,
    explicit_credentials: Option<&std::path::Path>,
    data_dir: &std::path::Path,
    cert: Option<(&std::path::Path, &std::path::Path)>,
) -> anyhow::Result<LabBroker> {
    use crate::credentials::{FILE_NAME, Source};
    let (credentials, file) = match Credentials::locate(explicit_credentials, data_dir)? {
        Some(Source::Env(c)) => (c, None),
        Some(Source::File(path)) => (Credentials::load(&path)?, Some(path)),
        None => {
            let path = data_dir.join(FILE_NAME);
            (Credentials::load_or_create(&path)?, Some(path))
        }
    };
    let cert = cert
        .map(|(cert, key)| BrokerCert::from_files(cert, key))
        .transpose()?;
    let cert_dir = data_dir.join(crate::tls::CERT_DIR);
    let broker = match listen {
        Some(listen) => start_for(listen, credentials.clone(), cert, &cert_dir)?,
        None => {
            let preferred = SocketAddr::from(([127, 0, 0, 1], 1883));
            let listen = match TcpListener::bind(preferred) {
                Ok(_) => preferred,
                Err(_) => {
                    tracing::info!(%preferred, "port taken; the embedded broker uses a free port");
                    SocketAddr::from(([127, 0, 0, 1], 0))
                }
            };
            start_for(listen, credentials.clone(), cert, &cert_dir)?
        }
    };
    // The file says what this broker serves now: its certificate, or no
    // pin when it is plain (a pin left from an earlier start beyond
    // loopback would send the CLI to a plain broker with TLS).
    if let Some(path) = &file
        && credentials.broker_fingerprint != broker.tls
    {
        credentials.clone().pinning(broker.tls).store(path)?;
    }
    if let (Some(fp), None) = (broker.tls, &file) {
        tracing::warn!(
            "the bus credentials come from the environment; nodes on other machines need {}={fp}",
            crate::tls::FINGERPRINT_ENV
        );
    }
    Ok(LabBroker {
        broker,
        credentials_file: file,
    })
}

/// Makes the allocator return a large buffer to the system as soon as it is
/// freed. The broker copies every message into buffers sized to it; after a
/// burst of 4 MB messages glibc would otherwise keep those pages for later
/// (its threshold for giving memory back rises with the largest block freed),
/// so the process stayed hundreds of MB above what it holds.
fn give_back_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes allocator parameters; glibc
            // documents it as safe to call at any time.
            let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024) };
            if ok != 1 {
                tracing::debug!("mallopt(M_MMAP_THRESHOLD) was refused");
            }
        });
    }
}

/// Checks the address is free now and resolves port 0 to a concrete port.
fn reserve(listen: SocketAddr) -> Result<SocketAddr, BrokerError> {
    let listener = TcpListener::bind(listen).map_err(|source| BrokerError::Bind {
        addr: listen,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| BrokerError::Bind {
        addr: listen,
        source,
    })?;
    Ok(addr)
}

fn broker_config(addr: SocketAddr, credentials: Credentials) -> Config {
    let mut connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: MAX_PAYLOAD + 1024,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    // rumqttd calls this for every CONNECT that carries a user name (one
    // without is refused when a handler is set), before the client id
    // reaches the code that can panic on it.
    connections.set_auth_handler(move |client_id: String, user: String, password: String| {
        let ok = valid_client_id(&client_id) && credentials.accepts(&user, &password);
        if !ok {
            tracing::warn!(client_id = %client_id.escape_debug(), %user, "broker refused a connection: bad client id or credentials");
        }
        std::future::ready(ok)
    });
    let server = ServerSettings {
        name: "v4".to_owned(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_000,
            max_outgoing_packet_count: 500,
            // Each subscription keeps two full segments of about 2 MiB
            // (a subscriber that falls further behind skips to the oldest
            // one kept). rumqttd's default of 8 kept 32 MB per subscription
            // after a burst of 4 MB messages, and each retained message pins
            // the publisher's read buffer it came in.
            max_segment_size: 2 * 1024 * 1024,
            max_segment_count: 2,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("v4".to_owned(), server)])),
        ..Default::default()
    }
}

/// Connects to an MQTT broker, sends CONNECT and waits for a CONNACK that
/// accepts the connection, then disconnects. Proves a broker (not just any
/// TCP listener) answers at `addr`.
pub fn probe(
    addr: impl ToSocketAddrs,
    credentials: Option<&Credentials>,
    timeout: Duration,
) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    let addr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| Error::new(ErrorKind::NotFound, "address resolves to nothing"))?;
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let client_id = format!(
        "distlab-probe-{}-{:x}",
        std::process::id(),
        crate::envelope::now_ms()
    );
    match credentials.and_then(|c| c.broker_fingerprint) {
        None => connect_once(stream, &client_id, credentials),
        Some(fp) => {
            let name = crate::tls::server_name(&addr.ip().to_string());
            let tls = rustls::ClientConnection::new(crate::tls::client_config(fp), name)
                .map_err(Error::other)?;
            connect_once(
                rustls::StreamOwned::new(tls, stream),
                &client_id,
                credentials,
            )
        }
    }
}

/// One CONNECT as `client_id` on `stream`; Ok if the broker accepted it
/// (then disconnects).
fn connect_once(
    mut stream: impl Read + Write,
    client_id: &str,
    credentials: Option<&Credentials>,
) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    // CONNECT (MQTT 3.1.1): clean session, keep-alive 10 s, and the user
    // name and password when given.
    let flags = 0b0000_0010 | credentials.map_or(0, |_| 0b1100_0000);
    let mut variable = Vec::new();
    variable.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 10]);
    let mut field = |bytes: &[u8]| {
        variable.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        variable.extend_from_slice(bytes);
    };
    field(client_id.as_bytes());
    if let Some(c) = credentials {
        field(c.user.as_bytes());
        field(c.password.as_bytes());
    }
    let mut packet = vec![0x10];
    // The remaining length, seven bits a byte.
    let mut len = variable.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        packet.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&variable);
    stream.write_all(&packet)?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).map_err(|e| {
        if e.kind() == ErrorKind::UnexpectedEof {
            Error::new(
                ErrorKind::PermissionDenied,
                "the broker closed the connection without an answer (wrong or missing credentials?)",
            )
        } else {
            e
        }
    })?;
    if connack[0] != 0x20 || connack[1] != 2 {
        return Err(Error::new(
            ErrorKind::InvalidData,
            "the peer is not an MQTT broker",
        ));
    }
    if connack[3] != 0 {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            format!("the broker refused the connection (code {})", connack[3]),
        ));
    }
    stream.write_all(&[0xe0, 0])?;
    stream.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_rejects_a_non_mqtt_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
            }
        });
        assert!(probe(addr, None, Duration::from_secs(2)).is_err());
    }

    #[test]
    fn probe_fails_fast_when_nothing_listens() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(probe(addr, None, Duration::from_secs(2)).is_err());
    }

    #[test]
    fn broker_connections_do_not_use_nagle() {
        use nix::sys::socket::{SockaddrStorage, getpeername, getsockopt, sockopt};
        use std::os::fd::AsRawFd;
        let broker = start("127.0.0.1:0".parse().unwrap(), Credentials::generate()).unwrap();
        let client = std::net::TcpStream::connect(broker.addr).unwrap();
        let ours = client.local_addr().unwrap().port();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // The broker's end of our connection (not the probe's).
            let mut nodelay = None;
            for_each_socket_on(broker.addr.port(), |fd, listening| {
                let peer = getpeername::<SockaddrStorage>(fd.as_raw_fd()).ok();
                let peer_port = peer.and_then(|p| p.as_sockaddr_in().map(|a| a.port()));
                if !listening && peer_port == Some(ours) {
                    nodelay = getsockopt(&fd, sockopt::TcpNoDelay).ok();
                }
            });
            if let Some(on) = nodelay {
                assert!(on, "the broker's socket has Nagle's algorithm on");
                return;
            }
            assert!(Instant::now() < deadline, "the broker never accepted");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn embedded_broker_answers_a_probe_with_its_credentials_only() {
        let credentials = Credentials::generate();
        let broker = start("127.0.0.1:0".parse().unwrap(), credentials.clone()).unwrap();
        assert_ne!(broker.addr.port(), 0);
        let t = Duration::from_secs(2);
        probe(broker.addr, Some(&credentials), t).unwrap();
        let err = probe(broker.addr, None, t).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
        assert!(err.to_string().contains("credentials"), "{err}");
        let wrong = Credentials::generate();
        assert!(probe(broker.addr, Some(&wrong), t).is_err());
        let user = Credentials {
            user: "someone".into(),
            ..credentials.clone()
        };
        assert!(probe(broker.addr, Some(&user), t).is_err());
    }

    /// rumqttd 0.20 panicked at the second CONNECT with an invalid client
    /// id and refused every CONNECT after; refused before that now.
    #[test]
    fn invalid_client_ids_cannot_break_the_broker() {
        let credentials = Credentials::generate();
        let broker = start("127.0.0.1:0".parse().unwrap(), credentials.clone()).unwrap();
        let t = Duration::from_secs(2);
        for id in ["a/b", "a+b", "a#b", "$sys", "/", &"x".repeat(300)] {
            for login in [Some(&credentials), None] {
                for _ in 0..2 {
                    let s = TcpStream::connect(broker.addr).unwrap();
                    s.set_read_timeout(Some(t)).unwrap();
                    assert!(connect_once(s, id, login).is_err(), "{id} accepted");
                }
            }
        }
        // Anyone with the credentials still gets in, again and again.
        for _ in 0..3 {
            probe(broker.addr, Some(&credentials), t).unwrap();
        }
        assert!(valid_client_id("") && valid_client_id("mom-a-1234-18f-9c2e"));
    }

    /// Beyond loopback: TLS only, the pinned certificate only, and a
    /// client that never finishes its handshake holds up nobody.
    #[test]
    fn a_broker_beyond_loopback_serves_pinned_tls_only() {
        let dir = tempfile::tempdir().unwrap();
        let credentials = Credentials::generate();
        let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let err = start(any, credentials.clone()).unwrap_err();
        assert!(err.to_string().contains("needs TLS"), "{err}");
        let broker = start_for(any, credentials.clone(), None, dir.path()).unwrap();
        let fp = broker.tls.expect("TLS beyond loopback");
        assert_eq!(
            fp,
            BrokerCert::load_or_create(dir.path()).unwrap().fingerprint,
            "the certificate kept in the data dir"
        );
        let front = SocketAddr::from(([127, 0, 0, 1], broker.addr.port()));
        let t = Duration::from_secs(3);
        // Silent clients first: each holds a connection open, says nothing.
        let silent: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(front).unwrap()).collect();
        let pinned = credentials.clone().pinning(Some(fp));
        probe(front, Some(&pinned), t).unwrap();
        assert_eq!(broker.remote_addr().credentials, Some(pinned.clone()));
        // Plain MQTT, even with the right password, gets no answer.
        assert!(probe(front, Some(&credentials), t).is_err());
        // A client pinning another certificate does not talk to this one.
        let other = tempfile::tempdir().unwrap();
        let wrong = BrokerCert::load_or_create(other.path())
            .unwrap()
            .fingerprint;
        let err = probe(front, Some(&credentials.clone().pinning(Some(wrong))), t).unwrap_err();
        assert!(err.to_string().contains("not the pinned"), "{err}");
        // The right certificate with a wrong password: refused by the broker.
        let stranger = Credentials::generate().pinning(Some(fp));
        assert!(probe(front, Some(&stranger), t).is_err());
        // Processes here use the plain loopback port.
        let local = broker.client_addr();
        assert!(broker.plain.ip().is_loopback());
        assert_eq!(local.credentials.as_ref().unwrap().broker_fingerprint, None);
        probe(broker.plain, local.credentials.as_ref(), t).unwrap();
        drop(silent);
    }

    /// The credentials file follows the broker: its certificate's pin
    /// when it serves TLS, none when it is plain again.
    #[test]
    fn the_lab_broker_keeps_the_credentials_file_true() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(crate::credentials::FILE_NAME);
        let made = Credentials::load_or_create(&file).unwrap();
        let any = Some("0.0.0.0:0".parse().unwrap());
        let tls = start_lab(any, Some(&file), dir.path(), None).unwrap();
        let fp = tls.broker.tls.expect("TLS beyond loopback");
        assert_eq!(tls.credentials_file.as_deref(), Some(file.as_path()));
        assert_eq!(
            Credentials::load(&file).unwrap(),
            made.clone().pinning(Some(fp))
        );
        let plain = start_lab(
            Some("127.0.0.1:0".parse().unwrap()),
            Some(&file),
            dir.path(),
            None,
        )
        .unwrap();
        assert_eq!(plain.broker.tls, None);
        assert_eq!(Credentials::load(&file).unwrap(), made);
        let again = start_lab(any, Some(&file), dir.path(), None).unwrap();
        assert_eq!(again.broker.tls, Some(fp), "the same certificate");
    }

    #[test]
    fn a_taken_port_is_reported() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = start(taken.local_addr().unwrap(), Credentials::generate()).unwrap_err();
        assert!(err.to_string().contains("--listen"), "{err}");
    }
}
