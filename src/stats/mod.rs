//! What pgwarden counts and who is connected, for the console, `/metrics` and the alert
//! rules. The data path only bumps plain `Relaxed` atomics (a few per transaction, none per
//! message, no lock, no allocation); everything else is computed when someone asks.
//!
//! - [`counters`]: per-pool totals (transactions, queries, bytes, times, waits, failures)
//!   and the wait-time histogram, with their snapshots, averages and percentiles.
//! - [`live`]: registries of connected clients and open servers (SHOW CLIENTS / SERVERS):
//!   an entry is listed at login or connect and unlisted when dropped.
//! - [`alerts`]: the seam the alert rules fill for SHOW ALERTS.
//! - [`clock`]: microseconds on one monotonic clock, and their wall-clock time.

pub mod alerts;
pub mod clock;
pub mod counters;
pub mod live;

pub use counters::{Averages, PoolCounters, Totals, Window, WAIT_BUCKETS_US};
pub use live::{ClientInfo, ClientState, Entry, Listed, Live, ServerInfo, ServerState};
