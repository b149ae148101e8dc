//! Counting a session's work for its pool: queries and transactions as the machine
//! reports them finished, their times, and the bytes moved for the client. Per request a
//! clock read and a few atomic adds; nothing per message.

use std::mem;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::link::Link;
use super::machine::Tally;
use crate::stats::clock;

impl Link<'_> {
    /// Adds what the machine finished to the pool's counters: per request a clock read
    /// and a few atomic adds, nothing per message.
    pub(super) fn meter(&mut self) {
        let tally = self.machine.take_tally();
        if tally == Tally::default() {
            return;
        }
        let now = clock::now_us();
        // Written by this session only: a load and a store, no read-modify-write.
        let (query, xact) = (&self.listing.query_us, &self.listing.xact_us);
        if tally.queries > 0 {
            let took = |since: u64| match since {
                0 => Duration::ZERO,
                since => Duration::from_micros(now.saturating_sub(since)),
            };
            let xact_time = match tally.xacts {
                0 => Duration::ZERO,
                _ => took(xact.load(Relaxed)),
            };
            let (queries, xacts) = (u64::from(tally.queries), u64::from(tally.xacts));
            let query_time = took(query.load(Relaxed));
            (self.pool.counters()).finished(queries, xacts, query_time, xact_time);
            // Requests pipelined behind the answered ones run from now on.
            let next = if self.machine.owes() { now } else { 0 };
            query.store(next, Relaxed);
            if tally.xacts > 0 {
                xact.store(next, Relaxed);
            }
            let received = mem::take(&mut self.machine.c2s.sent);
            let sent = mem::take(&mut self.machine.s2c.sent);
            self.pool.counters().bytes(received, sent);
        }
        if tally.started {
            if query.load(Relaxed) == 0 {
                query.store(now, Relaxed);
            }
            if xact.load(Relaxed) == 0 {
                xact.store(now, Relaxed);
            }
        }
    }

    /// Adds the bytes moved for the client since last time to the pool's counters.
    pub(super) fn meter_bytes(&mut self) {
        let received = mem::take(&mut self.machine.c2s.sent);
        let sent = mem::take(&mut self.machine.s2c.sent);
        self.pool.counters().bytes(received, sent);
    }
}
