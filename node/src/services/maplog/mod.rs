//! System 5, the map log: `logger` nodes form a partitioned in-memory map
//! with synchronous backups (Hazelcast-style); a `facade` logs messages
//! into it through the loggers and reads them back; `messages` nodes
//! consume a copy of each message from the lab's MOM.
//!
//! - [`table`]: partitions, views and the partition table (rendezvous
//!   hashing over the view's members).
//! - [`model`]: what members and clients send each other.
//! - [`member`]: one member as a state machine; [`sim`] its simulator.
//! - [`logger`], [`facade`], [`messages`]: the roles, with the seed's HTTP.

pub mod client;
pub mod facade;
pub mod logger;
pub mod member;
pub mod messages;
pub mod model;
#[cfg(test)]
mod sim;
pub mod table;
