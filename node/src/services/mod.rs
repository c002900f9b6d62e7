//! The services a node runs, one module (or folder) per system.
//!
//! [`start`] subscribes a role's topics and spawns its tasks on the node's
//! tracker; each task ends when the node's shutdown token is cancelled.

pub mod echo;
pub mod iot;

use tokio_util::task::TaskTracker;

use crate::bus::BusError;
use crate::config::Role;
use crate::runtime::NodeContext;

pub async fn start(role: Role, ctx: NodeContext, tasks: &TaskTracker) -> Result<(), BusError> {
    match role {
        Role::Echo => echo::start(ctx, tasks).await,
    }
}
