//! System 4, lockers: users and lockers, each a raft group of three, that
//! talk by messages through the lab's own MOM (see ARCHITECTURE.md for the
//! message flow).
//!
//! - [`model`]: users, lockers, requests and answers, commands, errors.
//! - [`state`]: the two state machines and the rules that keep a locker
//!   from going to two users; references in memory; the conformance suite.
//! - [`sql`]: the SQLite stores the replicas run.

pub mod model;
pub mod sql;
pub mod state;
