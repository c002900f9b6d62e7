//! What the dashboard knows of each system, from the bus: one model per
//! system, fed bus messages in `observe`, read by its panel.
//!
//! - [`time`]: the one time base every model counts in, and [`time::Rate`].
//! - [`iot`]: sensor series, token history, counters; decimation.
//! - [`mom`]: the raft group, replica lag, channel table, depth history.
//! - [`bookstore`]: beats, frontend figures, live checks, the load run.
//! - [`lockers`]: both groups, the locker grid, users, the live check.
//! - [`maplog`]: the map's partition table and members, the facade and
//!   messages nodes, what this app logged and the read-back check.

pub mod bookstore;
pub mod faults;
pub mod flow;
pub mod iot;
pub mod lockers;
pub mod maplog;
pub mod mom;
pub mod scenarios;
pub mod time;

use distlab_node::envelope::Topics;

/// The levels of a topic below the cluster's prefix (`<prefix>/telemetry/mom-a/mom`
/// → `["telemetry", "mom-a", "mom"]`); `None` for a topic of another cluster.
pub fn levels<'t>(topics: &Topics, topic: &'t str) -> Option<Vec<&'t str>> {
    let rest = topic.strip_prefix(topics.prefix())?;
    Some(rest.trim_start_matches('/').split('/').collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_read_below_the_clusters_prefix() {
        let topics = Topics::new("lab");
        assert_eq!(
            levels(&topics, &topics.telemetry("mom-a", "mom")),
            Some(vec!["telemetry", "mom-a", "mom"])
        );
        assert_eq!(
            levels(&topics, &topics.service("iot", "grant")),
            Some(vec!["iot", "grant"])
        );
        assert_eq!(
            levels(&topics, &Topics::new("other").telemetry("mom-a", "mom")),
            None
        );
    }
}
