//! THE protocol state machine of a client's session, sans-IO: it is given the bytes that
//! arrived from either side (complete messages or any part of one) and says what to do —
//! forward them, answer locally, wait for more, attach a server, let the server go back
//! to its pool, run a check on it, or end the session (closing the server when it cannot
//! prove the server owes nothing).
//!
//! It alone knows where both sides of the conversation stand: the transaction status,
//! the queue of answers the server owes ([`owed`]), whether an extended-protocol pipeline
//! is open, COPY in either direction, the session state that pins the client
//! ([`pins`]), and how the server lexes SQL. Prepared-statement rewriting
//! ([`crate::prepared`]) is a layer it calls; the session loop ([`super::link`]) only
//! moves bytes and acts on [`Verdict`]s.
//!
//! Rules it keeps:
//! - An incomplete message means "read more"; nothing is attached or released for one.
//! - A server goes back only at a proven boundary: nothing owed, no pipeline open, no
//!   COPY, outside a transaction, every byte delivered. When the machine loses track
//!   ([`Trust::Lost`]), the server is never handed on: it is closed when the client goes.
//! - Headers are checked per type before anything is buffered; every server message is
//!   checked against what is owed before it is acted on or forwarded.

mod client;
mod owed;
pub mod pins;
mod server;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
mod verdict;

use bytes::BytesMut;

use crate::config::PoolMode;
use crate::prepared::{ClientStatements, Prepared, ServerStatements};
use crate::protocol::buffer::Pump;
use crate::protocol::framing::Rules;
use crate::protocol::sql::{Effects, Strings};
use crate::protocol::tags::frontend;
use crate::protocol::{messages, PgError, TransactionStatus};
pub use owed::Owed;
use pins::{Held, Reasons};
pub use verdict::{Checks, Stop, Verdict};

/// Where the session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Detached,
    Attached,
    /// Statement pooling: a ReadyForQuery reporting a transaction block was held back.
    RefusingBlock,
    /// Boxed: an idle client's state holds a phase, and rarely this one.
    Done(Box<Stop>),
}

/// Whether the client is still there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientEnd {
    Connected,
    /// It sent Terminate; messages after it are ignored.
    Terminated,
    /// Its socket closed (or failed) without a Terminate: it died.
    Vanished,
}

/// Extended-protocol messages sent since the last Sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pipeline {
    Synced,
    /// The server may be inside an implicit transaction until a Sync.
    Open,
}

/// COPY, as both sides have shown it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyMode {
    Idle,
    /// The client sent CopyData while no COPY was known to run (it may be streaming into
    /// a COPY FROM STDIN the server is about to start).
    DataSent,
    /// The client sent CopyDone/CopyFail while no COPY was known to run: it may end a
    /// COPY FROM STDIN the server is about to start.
    EndSent,
    /// COPY FROM STDIN: the server reads only copy messages, ignoring Sync and Flush.
    In,
    /// COPY FROM STDIN that the client has ended; the server's answer is still to come.
    InEnded,
    /// COPY TO STDOUT.
    Out,
}

/// Whether the machine can still account for every answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trust {
    Exact,
    /// It cannot: the server is relayed as is for the rest of the session, never handed
    /// on, and closed at the end.
    Lost,
}

/// How the server lexes string constants, and whether a change may be in flight.
#[derive(Debug, Clone, Copy)]
struct Dialect {
    settled: Strings,
    /// A request that may change settings is unanswered: the next text may be lexed
    /// either way, so the scanner must hold for both readings.
    in_flight: bool,
    /// The client encoding lets a byte reading of SQL see what the server sees (not so
    /// in SJIS, BIG5, GBK and the like, where `\` and letters can be the second byte of a
    /// character): otherwise every text is unsure.
    scannable: bool,
}

impl Dialect {
    fn current(self) -> Strings {
        match self.in_flight {
            true => Strings::Unknown,
            false => self.settled,
        }
    }
}

/// What the client's statements since the last boundary may have done to the session.
#[derive(Debug, Clone, Copy, Default)]
struct Pending {
    effects: Effects,
    /// A named protocol-level statement was parsed (when statements do not follow).
    named: bool,
}

/// What the session finished since the session loop last asked, for its pool's counters
/// (as PgBouncer counts: a query per ReadyForQuery, a transaction per ReadyForQuery `I`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// A request was sent with nothing owed: a query began (and a transaction, if none runs).
    pub started: bool,
    /// ReadyForQuery messages forwarded to the client: requests answered.
    pub queries: u32,
    /// Of those, the ones reporting idle: transactions ended.
    pub xacts: u32,
}

/// One client's protocol state, across the servers it gets.
pub struct Machine {
    mode: PoolMode,
    /// Client to server.
    pub c2s: Pump,
    /// Server to client.
    pub s2c: Pump,
    phase: Phase,
    client: ClientEnd,
    draining: bool,
    owed: Owed,
    status: TransactionStatus,
    pipeline: Pipeline,
    copy: CopyMode,
    trust: Trust,
    dialect: Dialect,
    pending: Pending,
    /// What the unnamed statement may do when bound.
    unnamed: Effects,
    pins: Reasons,
    /// Transaction pooling with named statements following the client.
    prepared: Option<Box<Prepared>>,
    tally: Tally,
}

impl Machine {
    /// `max_prepared`: statements per server when they follow the client (`None`: named
    /// statements pin, as in session pooling). `strings` and `scannable`: how its
    /// standard_conforming_strings and client_encoding, as told at login, let SQL be read.
    pub fn new(
        mode: PoolMode,
        client_buf: BytesMut,
        max_len: u32,
        max_prepared: Option<usize>,
        (strings, scannable): (Strings, bool),
    ) -> Machine {
        let prepared = max_prepared
            .filter(|_| mode != PoolMode::Session)
            .map(|max| Box::new(Prepared::new(max)));
        Machine {
            mode,
            c2s: Pump::new(client_buf, max_len, Rules::Frontend),
            s2c: Pump::new(BytesMut::new(), max_len, Rules::Backend),
            phase: Phase::Detached,
            client: ClientEnd::Connected,
            draining: false,
            owed: Owed::default(),
            status: TransactionStatus::Idle,
            pipeline: Pipeline::Synced,
            copy: CopyMode::Idle,
            trust: Trust::Exact,
            dialect: Dialect {
                settled: strings,
                in_flight: false,
                scannable,
            },
            pending: Pending::default(),
            unnamed: Effects::default(),
            pins: Reasons::default(),
            prepared,
            tally: Tally::default(),
        }
    }

    /// What was finished since the last call (and forgets it).
    pub fn take_tally(&mut self) -> Tally {
        std::mem::take(&mut self.tally)
    }

    /// Whether the server still owes answers (a pipeline goes on after a ReadyForQuery).
    pub fn owes(&self) -> bool {
        !self.owed.is_empty()
    }

    /// What to do next. Cheap: called after every event.
    pub fn verdict(&self) -> Verdict {
        match &self.phase {
            Phase::Done(stop) => Verdict::End((**stop).clone()),
            Phase::RefusingBlock => Verdict::RefuseBlock,
            Phase::Detached => self.detached_verdict(),
            Phase::Attached => self.attached_verdict(),
        }
    }

    fn detached_verdict(&self) -> Verdict {
        if self.client != ClientEnd::Connected {
            return Verdict::End(Stop::ClientLeft);
        }
        match self.c2s.has_whole_message() {
            Err(e) => Verdict::End(Stop::ClientViolation(e)),
            Ok(true) if self.c2s.buf.first() == Some(&frontend::TERMINATE) => {
                Verdict::End(Stop::ClientLeft)
            }
            Ok(true) => Verdict::Attach,
            Ok(false) if self.draining => Verdict::End(Stop::Shutdown),
            Ok(false) => Verdict::Wait,
        }
    }

    fn attached_verdict(&self) -> Verdict {
        if self.client != ClientEnd::Connected {
            return Verdict::End(Stop::ClientLeft);
        }
        if !self.at_boundary() {
            return Verdict::Relay;
        }
        if self.draining {
            return Verdict::End(Stop::Shutdown);
        }
        let checks = self.checks_due();
        if checks.any() {
            return Verdict::Check(checks);
        }
        match self.keeps_server() {
            true => Verdict::Relay,
            false => Verdict::Release,
        }
    }

    /// Whether the server stays with the client at a boundary (session pooling, or pinned).
    pub fn keeps_server(&self) -> bool {
        self.mode == PoolMode::Session || !self.pins.is_empty()
    }

    /// The server owes nothing, stands outside any transaction, pipeline and COPY, and
    /// every byte either way has been delivered: another client may have it (after a
    /// reset in session pooling).
    pub fn at_boundary(&self) -> bool {
        self.trust == Trust::Exact
            && self.owed.is_empty()
            && self.pipeline == Pipeline::Synced
            && self.status == TransactionStatus::Idle
            && matches!(
                self.copy,
                CopyMode::Idle | CopyMode::DataSent | CopyMode::EndSent
            )
            && self.c2s.quiet()
            && self.s2c.quiet()
            && self.s2c.buf.is_empty()
    }

    /// Whether a server left now may be reused (rather than closed).
    pub fn server_clean(&self) -> bool {
        matches!(self.phase, Phase::Attached) && self.at_boundary()
    }

    fn checks_due(&self) -> Checks {
        if self.mode == PoolMode::Session {
            return Checks::default();
        }
        let Pending { effects, named } = self.pending;
        let acquires = !effects.acquires.is_empty() || named || effects.unsure;
        let releases = effects.releases && self.pins.checkable();
        Checks {
            settings: effects.settings || effects.unsure,
            held: acquires || releases,
        }
    }

    /// Whether to read from the client now (not while its last bytes wait to be sent on).
    pub fn wants_client(&self) -> bool {
        self.client == ClientEnd::Connected
            && !self.c2s.has_output()
            && !matches!(self.phase, Phase::Done(_))
    }

    /// Whether to read from the server now.
    pub fn wants_server(&self) -> bool {
        self.phase == Phase::Attached && !self.s2c.has_output()
    }

    /// Shutdown began: the session ends at its next boundary.
    pub fn drain(&mut self) {
        self.draining = true;
    }

    pub fn draining(&self) -> bool {
        self.draining
    }

    /// A server is attached: scanning of what the client sent can begin.
    pub fn attach(&mut self, server: &mut ServerStatements) {
        self.phase = Phase::Attached;
        self.status = TransactionStatus::Idle;
        if let Some(prepared) = self.prepared.as_deref_mut() {
            prepared.attach(server);
        }
        self.client_read(Some(server));
    }

    /// The server went back at a boundary: forget what was known of it.
    pub fn detach(&mut self) {
        self.phase = Phase::Detached;
        self.pending = Pending::default();
        self.dialect.in_flight = false;
        self.copy = CopyMode::Idle;
        self.c2s.release_memory();
        self.owed.release_memory();
        if let Some(prepared) = self.prepared.as_deref_mut() {
            prepared.release_memory();
        }
    }

    /// The session's server is being given up mid-request: answers owed never come, and
    /// what the client's messages changed in the statement maps is taken back.
    pub fn abandon(&mut self, server: &mut ServerStatements) {
        let mut none = ClientStatements::default();
        let client = match self.prepared.as_deref_mut() {
            Some(prepared) => &mut prepared.client,
            None => &mut none,
        };
        self.owed.abandon(client, server);
    }

    /// The checks asked for ran: `settings` read back, `held` what the server holds. Says
    /// how the pins changed (before, after).
    pub fn checked(&mut self, held: Option<&Held>) -> (Reasons, Reasons) {
        let before = self.pins;
        if let Some(held) = held {
            self.pins = self.pins.after(held);
        }
        if let Some(prepared) = self.prepared.as_deref_mut() {
            prepared.pinned = !self.pins.is_empty();
        }
        self.pending = Pending::default();
        self.dialect.in_flight = false;
        (before, self.pins)
    }

    pub fn pins(&self) -> Reasons {
        self.pins
    }

    /// Statement pooling: the block was rolled back; the client gets `refusal` and
    /// ReadyForQuery `I` in place of the server's ReadyForQuery.
    pub fn refused_block(&mut self, refusal: &PgError) {
        self.status = TransactionStatus::Idle;
        self.phase = Phase::Attached;
        let out = self.s2c.inject();
        refusal.encode(out);
        messages::ready_for_query(TransactionStatus::Idle, out);
    }

    /// Whether more than the held-back ReadyForQuery was asked of the server.
    pub fn more_owed(&self) -> bool {
        !self.owed.is_empty() || !self.s2c.buf.is_empty()
    }

    /// The client closed its socket.
    pub fn client_closed(&mut self) {
        if self.client == ClientEnd::Connected {
            self.client = ClientEnd::Vanished;
        }
    }

    /// The client said goodbye with Terminate (rather than vanishing): what it sent before
    /// is meant to be run to the end.
    pub fn client_terminated(&self) -> bool {
        self.client == ClientEnd::Terminated
    }

    /// The server closed its socket or failed.
    pub fn server_lost(&mut self, why: String) {
        self.stop(Stop::ServerLost(why));
    }

    fn stop(&mut self, stop: Stop) {
        if !matches!(self.phase, Phase::Done(_)) {
            self.phase = Phase::Done(Box::new(stop));
        }
    }

    /// The machine can no longer account for the server's answers.
    fn lose(&mut self, why: &'static str) {
        if self.trust != Trust::Exact {
            return;
        }
        tracing::warn!(
            cause = why,
            "lost track of the server's answers; it will be closed"
        );
        self.trust = Trust::Lost;
        if self.prepared.is_some() && self.mode != PoolMode::Session {
            // Answers are rewritten for this client: without the queue they cannot be.
            return self.stop(Stop::Lost(why));
        }
        self.pins = self.pins.with(pins::PinReason::ProtocolState);
    }

    /// Where a timeout's clocks stand.
    pub fn progress(&self) -> Progress {
        let idle = self.owed.is_empty()
            && self.pipeline == Pipeline::Synced
            && self.status == TransactionStatus::Idle;
        Progress {
            idle,
            requests: self.owed.len(),
            idle_in_block: self.owed.is_empty()
                && self.pipeline == Pipeline::Synced
                && self.status != TransactionStatus::Idle,
        }
    }

    /// Gives back buffers grown while attached.
    pub fn release_memory(&mut self) {
        self.c2s.release_memory();
        self.s2c.release_memory();
    }
}

/// What the timeouts need to know of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Nothing owed, outside any transaction.
    pub idle: bool,
    /// Answers owed; a change means the next request started.
    pub requests: usize,
    /// Everything answered, inside a transaction block: the client is thinking.
    pub idle_in_block: bool,
}
