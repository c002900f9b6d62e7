//! System 3: the bookstore (the seed "Pygmy" store, fixed). See
//! `ARCHITECTURE.md` for the roles and the replication scheme.

pub mod api;
pub mod cache;
pub mod model;
pub mod sql;
pub mod store;
