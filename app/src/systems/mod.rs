//! What the dashboard knows of each system, from the bus: one model per
//! system, fed bus messages in `observe`, read by its panel.
//!
//! - [`time`]: the one time base every model counts in, and [`time::Rate`].
//! - [`iot`]: sensor series, token history, counters; decimation.
//! - [`mom`]: the raft group, replica lag, channel table, depth history.
//! - [`bookstore`]: beats, frontend figures, live checks, the load run.

pub mod bookstore;
pub mod iot;
pub mod mom;
pub mod time;
