//! Distlab node library: everything a node process (and the dashboard) stands on.
//!
//! # Layout
//! - [`config`]: the lab file (TOML): cluster settings, nodes and their roles.
//! - [`envelope`]: the one JSON message format, and the topic names.
//! - [`bus`]: the MQTT connection: reconnects, subscriptions, RPC with deadlines.
//! - [`shim`]: the fault shim every message passes (per link from a peer: cut, loss,
//!   delay with jitter, duplicates).
//! - [`faults`]: the lab's faults per directed link, as people set them, sent
//!   retained to each node's control topic.
//! - [`broker`]: the embedded rumqttd broker and a broker probe.
//! - [`presence`]: presence, heartbeats, and the membership state machine.
//! - [`liveness`]: the one rule for "is a peer alive" (heard within a limit).
//! - [`runtime`]: runs one node: data dir, presence, heartbeats, services, shutdown.
//! - [`replica`]: Raft replication of a SQLite store (raft-rs, driven as a
//!   state machine; a deterministic simulator in its tests), shared by the
//!   replicated roles.
//! - [`services`]: one module per system (echo, IoT, MOM, bookstore, lockers).
//! - [`status`]: the `distlab-node status` report.
//! - [`http1`]: a tiny keep-alive HTTP/1.1 client for the load generators.
//! - [`pyjson`]: JSON written as Python's `json.dumps` writes it (the seeds' replies).
//!
//! The `distlab-node` command line and its benchmarks live in the binary
//! (`src/main.rs`, `cli.rs`, `bench/`), behind the default `cli` feature:
//! the library does not need clap or a log subscriber.

pub mod broker;
pub mod bus;
pub mod config;
pub mod credentials;
pub mod envelope;
pub mod faults;
pub mod front_door;
pub mod history;
pub mod http1;
pub mod liveness;
pub mod presence;
pub mod pyjson;
pub mod replica;
pub mod runtime;
pub mod scenario;
pub mod services;
pub mod shim;
pub mod status;
pub mod tls;

/// An error with its causes, each said once: `msg: cause: cause`, leaving
/// out a cause whose text the message already holds (most of ours quote
/// their cause, so `{:#}` would say it twice).
pub fn report(err: &anyhow::Error) -> String {
    let mut out = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !out.contains(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
    }
    out
}

#[cfg(test)]
mod report_tests {
    #[derive(Debug, thiserror::Error)]
    #[error("cannot listen on 1.2.3.4:5: {source}")]
    struct Bind {
        source: std::io::Error,
    }

    #[test]
    fn a_cause_the_message_quotes_is_not_said_again() {
        let io = || std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let err = anyhow::Error::new(Bind { source: io() }).context("starting the broker");
        let said = super::report(&err);
        assert_eq!(
            said,
            format!("starting the broker: cannot listen on 1.2.3.4:5: {}", io())
        );
        // A cause not quoted is said.
        let bare = anyhow::Error::new(io()).context("cannot listen");
        assert_eq!(super::report(&bare), format!("cannot listen: {}", io()));
    }
}
