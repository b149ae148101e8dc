//! Why a client is pinned to its server, and for how long: exactly as long as the server
//! holds session state that cannot follow the client elsewhere. The scanner only says
//! when to look; what is held is asked of the server itself ([`Held`]), so a lock taken
//! and released in one statement pins nothing, and `pg_advisory_unlock_all()`,
//! `UNLISTEN *`, `DROP`, `CLOSE` or `DISCARD ALL` end the pin they end.

use crate::protocol::sql::{Feature, Features};
pub use crate::server::Held;

/// One reason to keep a client on its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinReason {
    AdvisoryLock,
    Listen,
    HoldCursor,
    TempTable,
    /// A library loaded into the backend: nothing can tell whether it changed the session.
    Load,
    /// An SQL-level prepared statement pgwarden did not rewrite.
    SqlPrepare,
    /// A named protocol-level statement, when statements do not follow clients.
    NamedStatement,
    /// pgwarden can no longer be sure what the server owes (see the machine's `Trust`).
    ProtocolState,
}

impl PinReason {
    pub const ALL: [PinReason; 8] = [
        PinReason::AdvisoryLock,
        PinReason::Listen,
        PinReason::HoldCursor,
        PinReason::TempTable,
        PinReason::Load,
        PinReason::SqlPrepare,
        PinReason::NamedStatement,
        PinReason::ProtocolState,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PinReason::AdvisoryLock => Feature::AdvisoryLock.name(),
            PinReason::Listen => Feature::Listen.name(),
            PinReason::HoldCursor => Feature::HoldCursor.name(),
            PinReason::TempTable => Feature::TempTable.name(),
            PinReason::Load => Feature::Load.name(),
            PinReason::SqlPrepare => Feature::SqlPrepare.name(),
            PinReason::NamedStatement => "named prepared statement",
            PinReason::ProtocolState => "protocol state unknown",
        }
    }

    /// Reasons no query can end: they last the session.
    fn sticky(self) -> bool {
        matches!(self, PinReason::Load | PinReason::ProtocolState)
    }
}

/// A set of reasons (a bitset).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reasons(u16);

impl Reasons {
    pub fn with(self, reason: PinReason) -> Reasons {
        Reasons(self.0 | 1 << reason as u16)
    }

    pub fn union(self, other: Reasons) -> Reasons {
        Reasons(self.0 | other.0)
    }

    pub fn contains(self, reason: PinReason) -> bool {
        self.0 & (1 << reason as u16) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = PinReason> {
        PinReason::ALL
            .into_iter()
            .filter(move |r| self.contains(*r))
    }

    /// The reason names, for logs and the pool's counters.
    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(PinReason::name).collect()
    }

    fn sticky(self) -> Reasons {
        self.iter()
            .filter(|r| r.sticky())
            .fold(Reasons::default(), Reasons::with)
    }

    /// Whether a query could end some of these reasons.
    pub fn checkable(self) -> bool {
        self.iter().any(|r| !r.sticky())
    }

    /// The sticky reasons kept, the others as the server says it holds now.
    pub fn after(self, held: &Held) -> Reasons {
        let mut out = self.sticky();
        let counts = [
            (held.advisory_locks, PinReason::AdvisoryLock),
            (held.listens, PinReason::Listen),
            (held.hold_cursors, PinReason::HoldCursor),
            (held.temp_objects, PinReason::TempTable),
            (held.sql_statements, PinReason::SqlPrepare),
            (held.protocol_statements, PinReason::NamedStatement),
        ];
        for (count, reason) in counts {
            if count > 0 {
                out = out.with(reason);
            }
        }
        out
    }

    /// The sticky reasons among features a statement may acquire.
    pub fn sticky_in(features: Features) -> Reasons {
        match features.contains(Feature::Load) {
            true => Reasons::default().with(PinReason::Load),
            false => Reasons::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_ends_with_its_reason_but_sticky_ones_stay() {
        let pinned = Reasons::default()
            .with(PinReason::AdvisoryLock)
            .with(PinReason::Load);
        let nothing = Held::default();
        assert_eq!(pinned.after(&nothing).names(), ["LOAD"]);
        let locked = Held {
            advisory_locks: 1,
            listens: 2,
            ..Held::default()
        };
        let after = Reasons::default().after(&locked);
        assert_eq!(after.names(), ["session-level advisory lock", "LISTEN"]);
        assert!(after.checkable());
        assert!(!Reasons::default().with(PinReason::Load).checkable());
    }
}
