//! System 1, the IoT pipeline: sensors → receivers → coordinated, signed DB
//! writes → store.
//!
//! Pure parts (tested without sockets):
//! - [`sensor`]: simulated sensors (seeded random walks).
//! - [`token`]: the write grant and its signed form (the signed layout,
//!   write proofs, the ring's successor).
//! - [`keys`]: ed25519 key pairs (signing grants, passes and proofs) and
//!   their key files.
//! - [`gate`]: the store's gate that admits or rejects a token (and why).
//! - [`schedule`]: the coordinator's grant schedule (central or ring mode).
//! - [`holder`]: a receiver's protocol (buffer, batch kept until confirmed,
//!   release or ring pass).
//! - [`rpc`]: the store's requests, one enum variant per envelope kind.
//! - [`db`]: the store's SQLite tables (`meas`, used grants).
//!
//! Role shells (thin async tasks on the bus):
//! - [`sensors`], [`receiver`], [`coordinator`], [`store`].
//!
//! Topics (under `distlab/<cluster>/`): `data/sensors/<sensor>` (readings),
//! `iot/key` (retained public key), `iot/keys/<receiver>` (each receiver's
//! public key), `iot/root` (retained, the first grant of the current epoch),
//! `iot/grant`, `iot/release`, `iot/refresh`, `iot/store-http` (retained HTTP
//! address), `rpc/store/<store>` (`write`, `query`). [`sensor_topic`] and
//! [`sensors_shared`] name the data topics; the rest are
//! `Topics::service("iot", name)`.

pub mod coordinator;
pub mod db;
#[cfg(test)]
mod fixtures;
pub mod gate;
pub mod holder;
pub mod keys;
pub mod receiver;
pub mod rpc;
pub mod schedule;
pub mod sensor;
pub mod sensors;
pub mod store;
pub mod token;

use crate::envelope::Topics;

/// Readings of one sensor: `data/sensors/<sensor>`.
pub fn sensor_topic(topics: &Topics, sensor: &str) -> String {
    topics.service("data", &format!("sensors/{sensor}"))
}

/// Every sensor, shared among a group: each reading goes to one member.
pub fn sensors_shared(topics: &Topics, group: &str) -> String {
    format!("$share/{group}/{}/data/sensors/+", topics.prefix())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sensor_topic_matches_the_shared_filter() {
        let t = Topics::new("lab");
        assert_eq!(sensor_topic(&t, "s1"), "distlab/lab/data/sensors/s1");
        assert!(rumqttc::matches(
            &sensor_topic(&t, "s1"),
            Topics::match_filter(&sensors_shared(&t, "g"))
        ));
    }
}
