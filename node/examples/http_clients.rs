//! Why the load generators keep their own HTTP/1.1 client: the same
//! closed loop of GETs against one in-process axum server, once with
//! `distlab_node::http1::Http1` and once with reqwest (the client the app
//! uses), printing requests per second and latency quantiles for each.
//!
//! `cargo run --release -p distlab-node --example http_clients [-- SECONDS CONNECTIONS]`
//! (defaults: 5 s, 32 connections). The server answers a small JSON body, as
//! the bookstore's cached lookup does, so the client's own cost per request
//! is what differs.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use distlab_node::http1::Http1;
use hdrhistogram::Histogram;

const BODY: &str = r#"{"item":[{"id":3,"title":"RPCs for Noobs","count":100,"cost":50}]}"#;

#[derive(Clone, Copy)]
enum Kind {
    Http1,
    Reqwest,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Http1 => "http1 (own)",
            Kind::Reqwest => "reqwest 0.13",
        }
    }
}

async fn serve() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let addr = listener.local_addr().expect("bound");
    let app = Router::new().route("/lookup", get(|| async { BODY }));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    addr
}

/// One connection's closed loop until `until`; its latencies in µs.
async fn client(kind: Kind, addr: SocketAddr, until: Instant) -> Histogram<u64> {
    let mut h = Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid bounds");
    let url = format!("http://{addr}/lookup?id=3");
    match kind {
        Kind::Http1 => {
            let mut c = Http1::connect(addr).await.expect("connect");
            while Instant::now() < until {
                let t = Instant::now();
                let (status, body) = c
                    .request("GET", "/lookup?id=3", None, None)
                    .await
                    .expect("a reply");
                assert!(status == 200 && body.len() == BODY.len());
                h.saturating_record(t.elapsed().as_micros() as u64);
            }
        }
        Kind::Reqwest => {
            // One client per connection, keep-alive, as one Http1 each.
            let c = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .no_proxy()
                .build()
                .expect("a client");
            while Instant::now() < until {
                let t = Instant::now();
                let r = c.get(&url).send().await.expect("a reply");
                let status = r.status();
                let body = r.text().await.expect("a body");
                assert!(status == 200 && body.len() == BODY.len());
                h.saturating_record(t.elapsed().as_micros() as u64);
            }
        }
    }
    h
}

async fn run(kind: Kind, addr: SocketAddr, seconds: u64, connections: usize) {
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(client(kind, addr, until)))
        .collect();
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 2).expect("valid bounds");
    for t in tasks {
        all.add(t.await.expect("a client task"))
            .expect("same bounds");
    }
    let secs = start.elapsed().as_secs_f64();
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{:<14}{:>10.0}{:>9.2}{:>9.2}{:>9.2}",
        kind.name(),
        all.len() as f64 / secs,
        ms(0.5),
        ms(0.9),
        ms(0.99)
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map_or(5, |s| s.parse().expect("SECONDS"));
    let connections: usize = args.next().map_or(32, |s| s.parse().expect("CONNECTIONS"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let addr = serve().await;
        println!("{connections} connections x {seconds} s of GET /lookup, one process");
        println!(
            "{:<14}{:>10}{:>9}{:>9}{:>9}",
            "client", "req/s", "p50 ms", "p90 ms", "p99 ms"
        );
        for kind in [Kind::Http1, Kind::Reqwest, Kind::Http1, Kind::Reqwest] {
            run(kind, addr, seconds, connections).await;
        }
    });
}
