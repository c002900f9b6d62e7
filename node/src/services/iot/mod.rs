//! System 1, the IoT pipeline: sensors → receivers → coordinated, signed DB
//! writes → store.
//!
//! - [`db`]: the store's SQLite tables (`meas`, used grants).
//! - [`sensor`]: simulated sensors (seeded random walks).
//! - [`token`]: the ed25519-signed write grant, the store's gate that admits
//!   or rejects a token (and why), and the coordinator's grant schedule.

pub mod db;
pub mod sensor;
pub mod token;
