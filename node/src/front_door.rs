//! Every HTTP port of a node is served here: axum on hyper's HTTP/1.1 with
//! the limits a front door needs against slow and abusive clients.
//!
//! - A connection that takes longer than [`HEADER_TIMEOUT`] to send a
//!   request's headers is closed; hyper starts that clock whenever it waits
//!   for a request, so an idle keep-alive connection is closed after it too.
//!   Slowloris holds a connection at most that long.
//! - At most [`Limits::connections`] connections at once per port; one
//!   more is answered `503` at once and closed, so a flood costs the node
//!   no more than the cap (the cap leaves room in the process's open-file
//!   limit, which [`raise_open_files`] lifts to its hard ceiling first).

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a client may take to send a request's headers (or, between
/// requests, to start the next one).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections one port takes at most, whatever the open-file limit.
const MAX_CONNECTIONS: usize = 4096;

/// What one HTTP port allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub connections: usize,
    pub header_timeout: Duration,
}

impl Limits {
    /// For a process whose open-file limit is `open_files`: a quarter of it
    /// per port (a node has up to two ports, plus its database, broker
    /// connection and logs), at least 16 and at most [`MAX_CONNECTIONS`].
    pub fn for_open_files(open_files: u64) -> Self {
        let share = (open_files / 4).clamp(16, MAX_CONNECTIONS as u64) as usize;
        Self {
            connections: share,
            header_timeout: HEADER_TIMEOUT,
        }
    }

    /// From this process's open-file limit.
    pub fn here() -> Self {
        Self::for_open_files(open_files())
    }
}

/// This process's soft open-file limit (1,024 if it cannot be read).
pub fn open_files() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024)
}

/// Lifts this process's soft open-file limit to its hard limit (desktops
/// often start processes at 1,024 with a far higher ceiling); returns the
/// soft limit now in force.
pub fn raise_open_files() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// The answer to one connection too many.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
    Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\nRetry-After: 1\r\n\
    Content-Length: 50\r\n\r\ntoo many connections to this port; try again later";

/// Serves `app` on `listener` with `limits` until `stop` (then each
/// connection finishes its request in progress); connection tasks run on
/// `tasks`. `what` names the server in the log.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    stop: CancellationToken,
    tasks: TaskTracker,
    what: &'static str,
) {
    let slots = Arc::new(Semaphore::new(limits.connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let mut refused = 0u64;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        let (mut stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors, say: a pause, not a busy loop.
                tracing::warn!(error = %e, server = what, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(server = what, %peer, refused, cap = limits.connections, "too many connections; answered 503");
            }
            tasks.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(BUSY)).await;
                let _ = stream.shutdown().await;
            });
            continue;
        };
        let conn =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let stop = stop.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, %peer, "HTTP connection ended");
                    }
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_a_share_of_the_open_file_limit() {
        assert_eq!(Limits::for_open_files(1024).connections, 256);
        assert_eq!(Limits::for_open_files(40).connections, 16);
        assert_eq!(Limits::for_open_files(1 << 20).connections, MAX_CONNECTIONS);
        assert_eq!(
            BUSY.len() - BUSY.windows(4).position(|w| w == b"\r\n\r\n").unwrap() - 4,
            50
        );
    }

    async fn server(limits: Limits) -> (std::net::SocketAddr, CancellationToken) {
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tokio::spawn(serve(listener, app, limits, stop.clone(), tasks, "test"));
        (addr, stop)
    }

    /// Reads until the server closes the connection; what came. Fails if
    /// it is still open after 20 s.
    async fn read_all(s: &mut tokio::net::TcpStream) -> String {
        use tokio::io::AsyncReadExt;
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "the server did not close the connection");
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn slow_headers_are_cut_and_others_are_served_meanwhile() {
        let limits = Limits {
            connections: 64,
            header_timeout: Duration::from_millis(300),
        };
        let (addr, stop) = server(limits).await;
        // Forty slow clients: half a request line each, then nothing.
        let mut slow = Vec::new();
        for _ in 0..40 {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTT").await.unwrap();
            slow.push(s);
        }
        // Meanwhile a normal client is served, again and again.
        let mut http = crate::http1::Http1::connect(addr).await.unwrap();
        for _ in 0..5 {
            assert_eq!(
                http.request("GET", "/", None, None).await.unwrap(),
                (200, "hello".into())
            );
        }
        // Each slow one is closed by the server (EOF, or an error status
        // hyper sends for the timed-out head).
        for s in &mut slow {
            let got = read_all(s).await;
            assert!(got.is_empty() || got.starts_with("HTTP/1.1 408"), "{got}");
        }
        // An idle keep-alive connection is closed after the same time.
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let got = read_all(&mut idle).await;
        assert!(
            got.starts_with("HTTP/1.1 200") && got.ends_with("hello"),
            "{got}"
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn one_connection_over_the_cap_gets_503_and_a_freed_slot_serves_again() {
        let limits = Limits {
            connections: 3,
            header_timeout: Duration::from_secs(30),
        };
        let (addr, stop) = server(limits).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut c = crate::http1::Http1::connect(addr).await.unwrap();
            assert_eq!(c.request("GET", "/", None, None).await.unwrap().0, 200);
            held.push(c);
        }
        let mut over = tokio::net::TcpStream::connect(addr).await.unwrap();
        let got = read_all(&mut over).await;
        assert!(got.starts_with("HTTP/1.1 503"), "{got}");
        assert!(
            got.ends_with("too many connections to this port; try again later"),
            "{got}"
        );
        // One closed: its slot serves a new client (the server notices the
        // close when it next reads, at once).
        drop(held.pop());
        let mut served = false;
        for _ in 0..200 {
            let mut c = crate::http1::Http1::connect(addr).await.unwrap();
            if let Ok((200, _)) = c.request("GET", "/", None, None).await {
                served = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(served, "a freed slot was never reused");
        stop.cancel();
    }
}
