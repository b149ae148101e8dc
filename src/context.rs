//! What every client task shares: the configuration snapshot, the pools, the cancel keys and
//! the shutdown signal. Passed in explicitly; nothing in pgwarden reads a global.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::cancel::CancelRegistry;
use crate::config::Config;
use crate::pool::Pools;

#[derive(Clone)]
pub struct Context {
    pub config: Arc<Config>,
    pub pools: Pools,
    pub cancels: CancelRegistry,
    /// Cancelled when pgwarden starts shutting down: clients leave at their next idle point.
    pub shutdown: CancellationToken,
}
