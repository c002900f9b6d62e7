//! System 1, the IoT pipeline: sensors → receivers → coordinated, signed DB
//! writes → store.
//!
//! Pure parts (tested without sockets):
//! - [`sensor`]: simulated sensors (seeded random walks).
//! - [`token`]: the ed25519-signed write grant, the store's gate that admits
//!   or rejects a token (and why), and the coordinator's grant schedule.
//! - [`db`]: the store's SQLite tables (`meas`, used grants).
//!
//! Role shells (thin async tasks on the bus):
//! - [`sensors`], [`receiver`], [`coordinator`], [`store`].
//!
//! Topics (under `distlab/<cluster>/`): `data/sensors/<sensor>` (readings),
//! `iot/key` (retained public key), `iot/grant`, `iot/release`, `iot/refresh`,
//! `iot/store-http` (retained HTTP address), `rpc/store/<store>` (`write`, `query`).

pub mod coordinator;
pub mod db;
pub mod receiver;
pub mod sensor;
pub mod sensors;
pub mod store;
pub mod token;
