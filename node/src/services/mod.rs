//! The services a node runs, one module (or folder) per system.
//!
//! [`start`] subscribes a role's topics and spawns its tasks on the node's
//! tracker; each task ends when the node's shutdown token is cancelled.

pub mod bookstore;
pub mod echo;
pub mod iot;
pub mod lockers;
pub mod maplog;
pub mod mom;

use tokio_util::task::TaskTracker;

use crate::config::Role;
use crate::runtime::NodeContext;

/// Why a service could not start (shown to the user, then the node exits).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
    #[error(transparent)]
    Http(#[from] crate::runtime::BindError),
    #[error("cannot start the replication: {0}")]
    Replication(#[from] crate::replica::ReplError),
    #[error("MOM store: {0}")]
    Mom(#[from] mom::model::MomError),
    #[error("lockers: {0}")]
    Lockers(#[from] lockers::model::LockerError),
    #[error("bookstore store: {0}")]
    Bookstore(#[from] bookstore::model::BookError),
    #[error("database: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("key file: {0}")]
    Key(#[from] iot::keys::KeyError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    /// The lab's config lacks what this role needs.
    #[error("{0}")]
    Setup(&'static str),
}

pub async fn start(role: Role, ctx: NodeContext, tasks: &TaskTracker) -> Result<(), StartError> {
    match role {
        Role::Echo => echo::start(ctx, tasks).await?,
        Role::Sensors => iot::sensors::start(ctx, tasks).await?,
        Role::Receiver => iot::receiver::start(ctx, tasks).await?,
        Role::Coordinator => iot::coordinator::start(ctx, tasks).await?,
        Role::Store => iot::store::start(ctx, tasks).await?,
        Role::Mom => mom::node::start(ctx, tasks).await?,
        Role::MomGateway => mom::gateway::start(ctx, tasks).await?,
        Role::Catalog => bookstore::servers::start_catalog(ctx, tasks).await?,
        Role::Order => bookstore::servers::start_order(ctx, tasks).await?,
        Role::Frontend => bookstore::frontend::start(ctx, tasks).await?,
        Role::Users => lockers::users::start(ctx, tasks).await?,
        Role::Lockers => lockers::keeper::start(ctx, tasks).await?,
        Role::Logger => maplog::logger::start(ctx, tasks).await?,
        Role::Facade => maplog::facade::start(ctx, tasks).await?,
        Role::Messages => maplog::messages::start(ctx, tasks).await?,
    }
    Ok(())
}
