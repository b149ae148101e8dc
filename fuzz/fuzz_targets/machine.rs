//! Fuzz target: the relay's protocol machine fed arbitrary bytes from both sides, cut
//! anywhere, in any pool mode, with and without prepared-statement rewriting. It never
//! panics, always settles (every verdict it gives can be acted on), and never says a
//! server may go back unless it can show that nothing is owed and all is delivered.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgwarden::config::PoolMode;
use pgwarden::prepared::ServerStatements;
use pgwarden::protocol::sql::Strings;
use pgwarden::relay::machine::pins::Held;
use pgwarden::relay::machine::{Machine, Verdict};
use pgwarden::server::params::ServerParams;

struct Run {
    m: Machine,
    server: ServerStatements,
    params: ServerParams,
    attached: bool,
}

impl Run {
    /// Acts on verdicts until the machine waits for bytes; false when the session ended.
    fn settle(&mut self) -> bool {
        for _ in 0..64 {
            match self.m.verdict() {
                Verdict::Attach => {
                    assert!(!self.attached, "attach while attached");
                    self.attached = true;
                    self.m.attach(&mut self.server);
                }
                Verdict::Release => {
                    assert!(self.attached && self.m.server_clean(), "released unclean");
                    assert!(!self.m.c2s.has_output() && !self.m.s2c.has_output());
                    self.attached = false;
                    self.m.detach();
                }
                Verdict::Check(checks) => {
                    assert!(checks.any() && self.m.server_clean(), "check while busy");
                    self.m.checked(Some(&Held::default()));
                }
                Verdict::RefuseBlock => {
                    let refusal = pgwarden::protocol::PgError::error("0A000", "refused");
                    self.m.refused_block(&refusal);
                }
                Verdict::End(_) => return false,
                Verdict::Wait | Verdict::Relay => {
                    self.drain();
                    return true;
                }
            }
        }
        panic!("the machine did not settle: {:?}", self.m.verdict());
    }

    /// Both directions deliver everything the machine made ready.
    fn drain(&mut self) {
        for pump in [&mut self.m.c2s, &mut self.m.s2c] {
            let (a, b) = pump.output();
            let n = a.len() + b.len();
            pump.wrote(n);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&setup, mut rest)) = data.split_first() else {
        return;
    };
    let mode = [
        PoolMode::Session,
        PoolMode::Transaction,
        PoolMode::Statement,
    ][setup as usize % 3];
    let prepared = (setup & 4 != 0).then_some(1 + (setup as usize >> 4));
    let strings = [Strings::Standard, Strings::Escaped][(setup >> 3) as usize & 1];
    let mut run = Run {
        m: Machine::new(mode, BytesMut::new(), 1 << 16, prepared, (strings, true)),
        server: ServerStatements::default(),
        params: ServerParams::default(),
        attached: false,
    };
    // Chunks: a byte saying which side (low bit) and how long (the rest), then the bytes.
    while let Some((&head, tail)) = rest.split_first() {
        let n = ((head >> 1) as usize).min(tail.len());
        let (chunk, after) = tail.split_at(n);
        rest = after;
        if head & 1 == 0 {
            run.m.c2s.buf.extend_from_slice(chunk);
            let server = run.attached.then_some(&mut run.server);
            run.m.client_read(server);
        } else if run.attached {
            run.m.s2c.buf.extend_from_slice(chunk);
            run.m.server_read(&mut run.server, &mut run.params);
        }
        if !run.settle() {
            return;
        }
    }
    run.m.client_closed();
    run.settle();
});
