//! System 4, lockers: users and lockers, each a raft group of three, that
//! talk by messages through the lab's own MOM (see ARCHITECTURE.md for the
//! message flow).
//!
//! - [`model`]: users, lockers, requests and answers, commands, errors.
//! - [`state`]: the two state machines and the rules that keep a locker
//!   from going to two users; references in memory; the conformance suite.
//! - [`sql`]: the SQLite stores the replicas run.
//! - [`users`] and [`keeper`]: the `users` and `lockers` roles;
//!   [`link`] their link to the MOM; [`wire`] what they send on the bus;
//!   [`http`] the users' HTTP APIs and page.

pub mod http;
pub mod keeper;
pub mod link;
pub mod model;
pub mod sql;
pub mod state;
pub mod users;
pub mod wire;
