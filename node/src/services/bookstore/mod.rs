//! System 3: the bookstore (the seed "Pygmy" store, fixed). See
//! `ARCHITECTURE.md` for the roles and the replication scheme.

pub mod api;
pub mod cache;
pub mod check;
pub mod frontend;
pub mod load;
pub mod model;
pub mod orders;
pub mod servers;
pub mod sql;
pub mod store;
pub mod wire;
