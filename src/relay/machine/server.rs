//! The server's side of the machine: every message is checked before it is acted on or
//! forwarded (known type and length, a SQLSTATE in errors and notices, a valid
//! transaction status, an answer to something owed), then moves the state on.

use super::owed::Verdict as Fate;
use super::{CopyMode, Machine, Phase, Stop, Trust};
use crate::config::PoolMode;
use crate::prepared::ServerStatements;
use crate::protocol::buffer::Found;
use crate::protocol::errors::{has_sqlstate, rename};
use crate::protocol::framing::HEADER_LEN;
use crate::protocol::sql::{scannable_encoding, Strings};
use crate::protocol::tags::backend;
use crate::protocol::tags::backend::{
    COMMAND_COMPLETE, COPY_BOTH_RESPONSE, COPY_OUT_RESPONSE, NOTIFICATION,
};
use crate::protocol::TransactionStatus;
use crate::server::params::ServerParams;

/// Server messages read whole: the ones acted on or checked. All small.
fn server_inspects(tag: u8) -> bool {
    matches!(
        tag,
        backend::READY_FOR_QUERY
            | backend::ERROR_RESPONSE
            | backend::NOTICE_RESPONSE
            | backend::PARAMETER_STATUS
            | backend::COPY_IN_RESPONSE
            | COPY_OUT_RESPONSE
            | COPY_BOTH_RESPONSE
    )
}

impl Machine {
    /// Bytes arrived from the server. What it reports of its parameters is recorded in
    /// `params`, the server's own record.
    pub fn server_read(&mut self, server: &mut ServerStatements, params: &mut ServerParams) {
        while self.phase == Phase::Attached {
            match self.s2c.next(server_inspects) {
                Ok(Some(found)) => self.server_message(found, server, params),
                Ok(None) => break,
                Err(e) => return self.stop(Stop::ServerFault(e.to_string())),
            }
        }
        self.write_due();
    }

    fn server_message(
        &mut self,
        found: Found,
        server: &mut ServerStatements,
        params: &mut ServerParams,
    ) {
        self.write_due();
        if let Err(fault) = self.check(found) {
            return self.stop(Stop::ServerFault(fault));
        }
        let tag = found.tag;
        match tag {
            backend::NOTICE_RESPONSE | NOTIFICATION => return self.s2c.forward(found.taken),
            backend::PARAMETER_STATUS => return self.parameter_status(found, params),
            COPY_BOTH_RESPONSE => self.lose("the server started COPY BOTH"),
            _ => {}
        }
        if self.trust == Trust::Lost {
            self.follow_status(found);
            if tag == backend::READY_FOR_QUERY {
                self.count_ready();
            }
            return self.s2c.forward(found.taken);
        }
        self.follow_copy(tag);
        let replay = self.stale_plan(found);
        let fate = self.answer_fate(tag, replay.is_some(), server);
        match fate {
            Fate::Wrong => {
                let fault = format!("unexpected message type {:?}", tag as char);
                return self.stop(Stop::ServerFault(fault));
            }
            Fate::Forward if tag == backend::READY_FOR_QUERY => self.ready_for_query(found),
            Fate::Forward => self.s2c.forward(found.taken),
            Fate::Swallow => {
                self.follow_status(found);
                self.s2c.drop_message(found.taken);
            }
            Fate::Rename(names) => {
                let renamed = rename(self.s2c.message(found), &names.provoked, &names.client);
                self.s2c.drop_message(found.taken);
                self.s2c.inject().extend_from_slice(&renamed);
            }
        }
        if let (Some(replay), Some(prepared)) = (replay, self.prepared.as_deref_mut()) {
            prepared.replay(replay, &mut self.c2s, server, &mut self.owed);
        }
    }

    /// What becomes of an answer, as the queue of answers owed says.
    fn answer_fate(&mut self, tag: u8, replay: bool, server: &mut ServerStatements) -> Fate {
        let client = match self.prepared.as_deref_mut() {
            Some(prepared) => {
                if !replay {
                    prepared.on_answer(self.owed.front());
                }
                Some(&mut prepared.client)
            }
            None => None,
        };
        let fate = self.owed.on_server(tag, client, server);
        if !replay {
            return fate;
        }
        // A stale plan retried: what the server skipped, and the ReadyForQuery that ends
        // it, are not the client's; its own come after the pipeline is sent again.
        self.owed.swallow_front();
        Fate::Swallow
    }

    /// Checks what needs a whole message. `Err` names the server's fault.
    fn check(&self, found: Found) -> Result<(), String> {
        if !found.whole {
            return Ok(());
        }
        let body = &self.s2c.message(found)[HEADER_LEN..];
        match found.tag {
            backend::ERROR_RESPONSE if !has_sqlstate(body) => {
                Err("ErrorResponse without SQLSTATE".to_owned())
            }
            backend::NOTICE_RESPONSE if !has_sqlstate(body) => {
                Err("NoticeResponse without SQLSTATE".to_owned())
            }
            backend::READY_FOR_QUERY if TransactionStatus::from_body(body).is_none() => {
                Err(format!(
                    "ReadyForQuery with invalid transaction status {:?}",
                    body.first().copied().unwrap_or(0) as char
                ))
            }
            _ => Ok(()),
        }
    }

    /// ParameterStatus: recorded for the server, and a change of
    /// standard_conforming_strings changes how the client's SQL is read.
    fn parameter_status(&mut self, found: Found, params: &mut ServerParams) {
        let body = &self.s2c.message(found)[HEADER_LEN..];
        let mut fields = body.split(|b| *b == 0);
        match (fields.next(), fields.next()) {
            (Some(b"standard_conforming_strings"), Some(value)) => {
                self.dialect.settled = Strings::from_setting(value)
            }
            (Some(b"client_encoding"), Some(value)) => {
                self.dialect.scannable = scannable_encoding(value)
            }
            _ => {}
        }
        // A reported parameter changed under the client's own statements: read the
        // session back at the boundary (where settings follow the client).
        self.pending.effects.settings |= self.mode != PoolMode::Session;
        params.record_status(body);
        self.s2c.forward(found.taken);
    }

    /// COPY starts with the server's CopyInResponse or CopyOutResponse and ends with the
    /// server's CommandComplete or ErrorResponse, whatever the client sends.
    fn follow_copy(&mut self, tag: u8) {
        self.copy = match (tag, self.copy) {
            (backend::COPY_IN_RESPONSE, prior) => return self.copy_in_began(prior),
            (COPY_OUT_RESPONSE, _) => CopyMode::Out,
            (
                backend::ERROR_RESPONSE | COMMAND_COMPLETE | backend::READY_FOR_QUERY,
                CopyMode::In | CopyMode::InEnded | CopyMode::Out,
            ) => CopyMode::Idle,
            // Copy messages the client sent outside COPY are remembered until its next
            // request: they may still meet a COPY started by the one before.
            (_, copy) => copy,
        };
    }

    /// The server reads everything sent after the request that started COPY FROM STDIN in
    /// COPY mode: Syncs sent right after the request are ignored. Syncs sent after copy
    /// data are ignored or not depending on where the COPY fails, and anything else fails
    /// it: the machine cannot account for those.
    fn copy_in_began(&mut self, prior: CopyMode) {
        let early_data = prior != CopyMode::Idle && self.owed.len() > 1;
        if early_data || !self.owed.on_copy_in() {
            self.lose("messages were pipelined after a COPY FROM STDIN");
        }
        self.copy = match prior {
            CopyMode::EndSent => CopyMode::InEnded,
            _ => CopyMode::In,
        };
    }

    /// A whole ErrorResponse that a retry can hide: the plan of a shared statement went
    /// stale, and the pipeline can be sent again.
    fn stale_plan(&mut self, found: Found) -> Option<crate::prepared::Replay> {
        if found.tag != backend::ERROR_RESPONSE || !found.whole {
            return None;
        }
        let prepared = self.prepared.as_deref_mut()?;
        let sync_is_last = self.owed.sync_is_last();
        prepared.stale(self.s2c.message(found), self.owed.front(), sync_is_last)
    }

    /// A ReadyForQuery for the client ends a query, and a transaction when it says idle.
    fn count_ready(&mut self) {
        self.tally.queries += 1;
        self.tally.xacts += u32::from(self.status == TransactionStatus::Idle);
    }

    /// The transaction status a ReadyForQuery reports.
    fn follow_status(&mut self, found: Found) {
        if found.tag != backend::READY_FOR_QUERY || !found.whole {
            return;
        }
        let body = &self.s2c.message(found)[HEADER_LEN..];
        if let Some(status) = TransactionStatus::from_body(body) {
            self.status = status;
        }
    }

    /// A ReadyForQuery for the client. In statement pooling, one that reports a
    /// transaction block is held back for the session to refuse the block.
    fn ready_for_query(&mut self, found: Found) {
        self.follow_status(found);
        self.count_ready();
        if self.mode == PoolMode::Statement && self.status != TransactionStatus::Idle {
            self.phase = Phase::RefusingBlock;
            return self.s2c.drop_message(found.taken);
        }
        self.s2c.forward(found.taken);
    }
}
