//! The seam between the alert rules and the console: the rules publish what they see as
//! [`AlertLine`]s through an [`AlertSource`] set in the context; SHOW ALERTS lists them
//! (its columns and no row while no source is set).

use std::time::Duration;

/// One alert as SHOW ALERTS shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertLine {
    /// The rule's name (`pool_saturated`).
    pub rule: String,
    pub database: String,
    pub user: String,
    /// The cap or threshold it is about, with its value.
    pub cap: String,
    /// `firing` or `resolved`.
    pub state: String,
    /// How long it has been in that state.
    pub since: Duration,
    /// The line it logged: the pool, the value, the threshold, the application behind it.
    pub message: String,
}

/// Where SHOW ALERTS reads alerts from.
pub trait AlertSource: Send + Sync {
    fn alert_lines(&self) -> Vec<AlertLine>;
}
