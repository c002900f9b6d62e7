//! `distlab-node bench …`: throughput and latency figures, printed (never
//! asserted: these machines are shared and noisy).
//!
//! - [`iot`]: sensor publish → committed row, next to the raw broker.
//! - [`mom`]: MOM publish → ack and publish → consume, single node and
//!   replicated, with HdrHistogram quantiles.
//! - [`bookstore`]: cached lookup, search and replicated buy through the
//!   bookstore's frontend.
//! - [`lockers`]: take and free through the users' JSON API, both groups
//!   replicated, through the MOM.
//! - [`maplog`]: the map log's map through its client: puts and gets from
//!   many callers, and puts at a fixed rate.
//! - [`cluster`]: a lab's nodes as tasks in this process.

pub mod bookstore;
pub mod cluster;
pub mod iot;
pub mod lockers;
pub mod maplog;
pub mod mom;

use hdrhistogram::Histogram;

/// Latencies in µs, 1 µs to 60 s.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// p50, p99, p99.9 and max of µs latencies, in ms.
pub fn quantiles(h: &Histogram<u64>) -> String {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    )
}

pub use iot::{IotBench, run_iot};
