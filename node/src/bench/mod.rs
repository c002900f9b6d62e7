//! `distlab-node bench …`: throughput and latency figures, printed (never
//! asserted: these machines are shared and noisy).
//!
//! - [`iot`]: sensor publish → committed row, next to the raw broker.
//! - [`mom`]: MOM publish → ack and publish → consume, single node and
//!   replicated, with HdrHistogram quantiles.
//! - [`bookstore`]: cached lookup, search and replicated buy through the
//!   bookstore's frontend.
//! - [`cluster`]: a lab's nodes as tasks in this process.

pub mod bookstore;
pub mod cluster;
pub mod iot;
pub mod mom;

pub use iot::{IotBench, run_iot};
