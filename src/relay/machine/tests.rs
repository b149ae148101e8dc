//! The machine against a model backend ([`super::sim`]), no sockets: the cases that broke
//! the old relay, and properties over random message sequences cut at random points —
//! the server never goes back while it owes an answer, answers reach the client as the
//! server sent them, and nothing panics, whatever the bytes.

use bytes::BytesMut;
use proptest::prelude::*;

use super::sim::Sim;
use super::{Checks, Machine, Stop, Verdict};
use crate::config::PoolMode;
use crate::prepared::ServerStatements;
use crate::protocol::framing::FramingError;
use crate::protocol::sql::Strings;
use crate::server::params::ServerParams;
use crate::server::Held;

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn query(text: &str) -> Vec<u8> {
    msg(b'Q', &[text.as_bytes(), b"\0"].concat())
}

fn parse(name: &str, text: &str) -> Vec<u8> {
    msg(
        b'P',
        &[name.as_bytes(), b"\0", text.as_bytes(), b"\0\0\0"].concat(),
    )
}

fn bind(statement: &str) -> Vec<u8> {
    msg(
        b'B',
        &[b"\0", statement.as_bytes(), b"\0\0\0\0\0\0\0"].concat(),
    )
}

fn execute() -> Vec<u8> {
    msg(b'E', b"\0\0\0\0\0")
}

fn describe(name: &str) -> Vec<u8> {
    msg(b'D', &[b"S", name.as_bytes(), b"\0"].concat())
}

const SYNC: [u8; 5] = [b'S', 0, 0, 0, 4];
const FLUSH: [u8; 5] = [b'H', 0, 0, 0, 4];
const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];
const COPY_DONE: [u8; 5] = [b'c', 0, 0, 0, 4];

/// A machine, its model backend, and what the client has been sent.
struct Harness {
    m: Machine,
    sim: Sim,
    server: ServerStatements,
    params: ServerParams,
    to_client: Vec<u8>,
    /// What the backend sent, all of it (the client must get the same, unprepared).
    from_server: Vec<u8>,
    /// Sizes to cut the server's output into, cycled.
    cuts: Vec<usize>,
    releases: usize,
}

impl Harness {
    fn new(mode: PoolMode, prepared: bool) -> Harness {
        let max = prepared.then_some(200);
        Harness {
            m: Machine::new(
                mode,
                BytesMut::new(),
                1 << 20,
                max,
                (Strings::Standard, true),
            ),
            sim: Sim::default(),
            server: ServerStatements::default(),
            params: ServerParams::default(),
            to_client: Vec::new(),
            from_server: Vec::new(),
            cuts: vec![usize::MAX],
            releases: 0,
        }
    }

    /// The client sends `bytes` (one read); then everything runs until it settles.
    fn send(&mut self, bytes: &[u8]) -> Verdict {
        self.m.c2s.buf.extend_from_slice(bytes);
        let attached = self.m.phase == super::Phase::Attached;
        self.m.client_read(attached.then_some(&mut self.server));
        self.settle()
    }

    /// Acts on verdicts and moves bytes until nothing moves.
    fn settle(&mut self) -> Verdict {
        for _ in 0..10_000 {
            let verdict = self.m.verdict();
            self.check_invariants(&verdict);
            match verdict {
                Verdict::Attach => self.m.attach(&mut self.server),
                Verdict::Release => {
                    self.releases += 1;
                    self.m.detach();
                }
                Verdict::Check(checks) => {
                    assert!(checks.any());
                    self.m.checked(Some(&Held::default()));
                }
                Verdict::Relay => {
                    if !self.pump() {
                        return Verdict::Relay;
                    }
                }
                other => return other,
            }
        }
        panic!("the machine did not settle: {:?}", self.m.verdict());
    }

    /// Moves bytes one step each way; false when nothing moved.
    fn pump(&mut self) -> bool {
        let mut moved = false;
        if self.m.c2s.has_output() {
            let (a, b) = self.m.c2s.output();
            let bytes = [a, b].concat();
            self.m.c2s.wrote(bytes.len());
            self.sim.feed(&bytes);
            moved = true;
        }
        if !self.sim.output.is_empty() && self.m.wants_server() {
            let cut = self.cuts[self.from_server.len() % self.cuts.len()].max(1);
            let n = cut.min(self.sim.output.len());
            let chunk: Vec<u8> = self.sim.output.drain(..n).collect();
            self.from_server.extend_from_slice(&chunk);
            self.m.s2c.buf.extend_from_slice(&chunk);
            self.m.server_read(&mut self.server, &mut self.params);
            moved = true;
        }
        if self.m.s2c.has_output() {
            let (a, b) = self.m.s2c.output();
            let bytes = [a, b].concat();
            self.m.s2c.wrote(bytes.len());
            self.to_client.extend_from_slice(&bytes);
            moved = true;
        }
        moved
    }

    /// The property that matters most: no server goes back while it owes anything.
    fn check_invariants(&self, verdict: &Verdict) {
        if matches!(verdict, Verdict::Release | Verdict::Check(_)) {
            assert!(self.sim.idle(), "{verdict:?} while the backend is busy");
            assert!(
                self.sim.output.is_empty(),
                "{verdict:?} while answers are owed: sent {} pending {}",
                tags(&self.to_client),
                tags(&self.sim.output)
            );
        }
        if self.m.server_clean() {
            assert!(
                self.sim.idle() && self.sim.output.is_empty(),
                "clean while owed"
            );
        }
    }

    fn tags_to_client(&self) -> String {
        tags(&self.to_client)
    }
}

fn tags(mut bytes: &[u8]) -> String {
    let mut out = String::new();
    while bytes.len() >= 5 {
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        out.push(bytes[0] as char);
        bytes = &bytes[(1 + len).min(bytes.len())..];
    }
    out
}

#[test]
fn a_message_in_two_reads_waits_for_its_second_half() {
    let mut h = Harness::new(PoolMode::Transaction, true);
    let select = query("ok");
    assert_eq!(
        h.send(&select[..5]),
        Verdict::Wait,
        "a header alone asks for nothing"
    );
    assert_eq!(h.send(&select[5..7]), Verdict::Wait);
    assert_eq!(h.send(&select[7..]), Verdict::Wait, "answered and released");
    assert_eq!(h.tags_to_client(), "DCZ");
    assert_eq!(h.releases, 1);
}

#[test]
fn an_oversized_sync_header_ends_the_session_at_once() {
    let mut h = Harness::new(PoolMode::Transaction, true);
    let verdict = h.send(&[b'S', 0, 1, 0x86, 0xa0]);
    assert_eq!(
        verdict,
        Verdict::End(Stop::ClientViolation(FramingError::BadLength {
            tag: 'S',
            len: 100_000
        }))
    );
}

#[test]
fn a_failed_copy_counts_the_clients_next_sync() {
    let mut h = Harness::new(PoolMode::Transaction, true);
    assert_eq!(h.send(&query("copy in")), Verdict::Relay, "in COPY");
    let bad = msg(b'd', b"bad");
    assert_eq!(
        h.send(&bad),
        Verdict::Wait,
        "the failed COPY ended at its ReadyForQuery"
    );
    // After the error: a Sync and a query in one write, both answered before release.
    let releases = h.releases;
    let mut both = SYNC.to_vec();
    both.extend(query("ok"));
    assert_eq!(h.send(&both), Verdict::Wait);
    assert_eq!(h.releases, releases + 1);
    assert_eq!(h.tags_to_client(), "GEZZDCZ");
}

#[test]
fn syncs_sent_during_copy_in_are_not_counted() {
    let mut h = Harness::new(PoolMode::Transaction, true);
    let mut pipeline = parse("", "copy in");
    pipeline.extend(bind(""));
    pipeline.extend(execute());
    pipeline.extend(SYNC);
    assert_eq!(h.send(&pipeline), Verdict::Relay);
    let mut data = msg(b'd', b"1");
    data.extend(SYNC); // ignored by Postgres in COPY: never forwarded
    data.extend(COPY_DONE);
    data.extend(SYNC);
    assert_eq!(h.send(&data), Verdict::Wait);
    assert_eq!(h.tags_to_client(), "12GCZ");
}

#[test]
fn terminate_mid_pipeline_leaves_a_server_that_must_be_closed() {
    let mut h = Harness::new(PoolMode::Transaction, true);
    let mut pipeline = parse("", "ok");
    pipeline.extend(bind(""));
    pipeline.extend(execute());
    pipeline.extend(TERMINATE);
    assert_eq!(h.send(&pipeline), Verdict::End(Stop::ClientLeft));
    assert!(h.m.client_terminated());
    assert!(!h.m.server_clean(), "no Sync: the pipeline is still open");
}

#[test]
fn flush_without_sync_keeps_the_server() {
    let mut h = Harness::new(PoolMode::Transaction, true);
    let mut pipeline = parse("", "ok");
    pipeline.extend(bind(""));
    pipeline.extend(execute());
    pipeline.extend(FLUSH);
    assert_eq!(h.send(&pipeline), Verdict::Relay);
    assert_eq!(h.tags_to_client(), "12DC");
    assert_eq!(h.send(&SYNC), Verdict::Wait);
    assert_eq!(h.releases, 1);
}

#[test]
fn an_error_mid_pipeline_skips_to_its_sync() {
    let mut h = Harness::new(PoolMode::Transaction, true);
    let mut pipeline = parse("", "err");
    pipeline.extend(bind(""));
    pipeline.extend(execute());
    pipeline.extend(query("ok")); // skipped too: no ReadyForQuery of its own
    pipeline.extend(SYNC);
    pipeline.extend(query("ok"));
    assert_eq!(h.send(&pipeline), Verdict::Wait);
    assert_eq!(h.tags_to_client(), "EZDCZ");
}

#[test]
fn an_error_before_any_sync_means_later_messages_go_unanswered() {
    let mut h = Harness::new(PoolMode::Transaction, false);
    assert_eq!(h.send(&parse("", "err")), Verdict::Relay);
    let mut more = bind("");
    more.extend(execute());
    assert_eq!(
        h.send(&more),
        Verdict::Relay,
        "skipped by the server: nothing owed"
    );
    assert_eq!(h.send(&SYNC), Verdict::Wait);
    assert_eq!(h.tags_to_client(), "EZ");
}

#[test]
fn unknown_statements_are_postgres_own_errors_renamed() {
    let mut h = Harness::new(PoolMode::Transaction, true);
    let mut pipeline = bind("mine");
    pipeline.extend(execute());
    pipeline.extend(SYNC);
    assert_eq!(h.send(&pipeline), Verdict::Wait);
    assert_eq!(h.tags_to_client(), "EZ");
    let text = String::from_utf8_lossy(&h.to_client);
    assert!(text.contains("C26000"), "{text}");
}

#[test]
fn faulty_server_messages_close_the_server() {
    let faults: [(&[u8], &str); 4] = [
        (
            b"E\0\0\0\x0eSERROR\0Mx\0\0",
            "ErrorResponse without SQLSTATE",
        ),
        (
            b"N\0\0\0\x0fSNOTICE\0Mx\0\0",
            "NoticeResponse without SQLSTATE",
        ),
        (
            b"Z\0\0\0\x05X",
            "ReadyForQuery with invalid transaction status 'X'",
        ),
        (b"q\0\0\0\x04", "unknown message type 'q'"),
    ];
    for (bytes, fault) in faults {
        let mut h = Harness::new(PoolMode::Transaction, true);
        h.m.c2s.buf.extend_from_slice(&query("ok"));
        assert_eq!(h.m.verdict(), Verdict::Attach);
        h.m.attach(&mut h.server);
        h.m.s2c.buf.extend_from_slice(bytes);
        h.m.server_read(&mut h.server, &mut h.params);
        assert_eq!(
            h.m.verdict(),
            Verdict::End(Stop::ServerFault(fault.into())),
            "{fault}"
        );
        assert!(!h.m.server_clean());
        assert!(
            !h.m.s2c.has_output(),
            "{fault}: nothing of it reaches the client"
        );
    }
}

#[test]
fn an_answer_nobody_asked_for_is_the_servers_fault() {
    let mut h = Harness::new(PoolMode::Transaction, true);
    h.m.c2s.buf.extend_from_slice(&query("ok"));
    h.m.attach(&mut h.server);
    h.m.s2c.buf.extend_from_slice(b"Z\0\0\0\x05IZ\0\0\0\x05I");
    h.m.server_read(&mut h.server, &mut h.params);
    let fault = "unexpected message type 'Z'".to_owned();
    assert_eq!(h.m.verdict(), Verdict::End(Stop::ServerFault(fault)));
}

/// One statement answered by the backend model, up to the verdict at its boundary.
fn answered(h: &mut Harness, sql: &str) -> Verdict {
    h.m.c2s.buf.extend_from_slice(&query(sql));
    assert_eq!(h.m.verdict(), Verdict::Attach);
    h.m.attach(&mut h.server);
    while h.pump() {}
    h.m.verdict()
}

#[test]
fn a_pin_is_checked_with_the_server_and_ends_with_its_reason() {
    let mut h = Harness::new(PoolMode::Transaction, true);
    let held = Checks {
        settings: false,
        held: true,
    };
    let sql = "SELECT pg_try_advisory_lock(1) AND pg_advisory_unlock(1)";
    assert_eq!(answered(&mut h, sql), Verdict::Check(held));
    h.m.checked(Some(&Held::default()));
    assert_eq!(h.m.verdict(), Verdict::Release, "nothing held: no pin");
    h.m.detach();
    let sql = "SELECT pg_advisory_lock(1)";
    assert_eq!(answered(&mut h, sql), Verdict::Check(held));
    h.m.checked(Some(&Held {
        advisory_locks: 1,
        ..Held::default()
    }));
    assert_eq!(h.m.verdict(), Verdict::Relay, "pinned: the server stays");
    assert_eq!(h.m.pins().names(), ["session-level advisory lock"]);
}

#[test]
fn statement_pooling_holds_back_a_block() {
    let mut h = Harness::new(PoolMode::Statement, true);
    assert_eq!(h.send(&query("begin")), Verdict::RefuseBlock);
    assert_eq!(h.tags_to_client(), "C", "the ReadyForQuery is held back");
}

#[test]
fn session_pooling_relays_until_the_client_leaves() {
    let mut h = Harness::new(PoolMode::Session, false);
    assert_eq!(h.send(&query("ok")), Verdict::Relay);
    assert_eq!(h.send(&TERMINATE), Verdict::End(Stop::ClientLeft));
    assert!(h.m.server_clean());
}

/// One frontend message of a random conversation.
#[derive(Debug, Clone)]
enum Op {
    Query(&'static str),
    Parse(Option<&'static str>, &'static str),
    Bind(Option<&'static str>),
    Describe(&'static str),
    Execute,
    Sync,
    Flush,
    CopyData(bool),
    CopyDone,
    Garbage(Vec<u8>),
}

const TEXTS: [&str; 7] = [
    "ok", "err", "begin", "commit", "copy in", "copy out", "notice",
];
const NAMES: [&str; 3] = ["a", "b", "pgwarden.absent"];

fn op() -> impl Strategy<Value = Op> {
    let text = proptest::sample::select(&TEXTS[..]);
    let name = proptest::option::of(proptest::sample::select(&NAMES[..]));
    prop_oneof![
        4 => text.clone().prop_map(Op::Query),
        3 => (name.clone(), text).prop_map(|(n, t)| Op::Parse(n, t)),
        3 => name.prop_map(Op::Bind),
        1 => proptest::sample::select(&NAMES[..]).prop_map(Op::Describe),
        3 => Just(Op::Execute),
        4 => Just(Op::Sync),
        1 => Just(Op::Flush),
        2 => any::<bool>().prop_map(Op::CopyData),
        2 => Just(Op::CopyDone),
    ]
}

fn encode(op: &Op) -> Vec<u8> {
    match op {
        Op::Query(t) => query(t),
        Op::Parse(n, t) => parse(n.unwrap_or(""), t),
        Op::Bind(n) => bind(n.unwrap_or("")),
        Op::Describe(n) => describe(n),
        Op::Execute => execute(),
        Op::Sync => SYNC.to_vec(),
        Op::Flush => FLUSH.to_vec(),
        Op::CopyData(good) => msg(b'd', if *good { b"1" } else { b"bad" }),
        Op::CopyDone => COPY_DONE.to_vec(),
        Op::Garbage(bytes) => bytes.clone(),
    }
}

/// Runs `ops` in writes cut at `cuts`, the server's answers cut at `server_cuts`.
fn converse(
    mode: PoolMode,
    prepared: bool,
    ops: &[Op],
    cuts: &[usize],
    server_cuts: &[usize],
) -> Harness {
    let mut h = Harness::new(mode, prepared);
    h.cuts = server_cuts.to_vec();
    let stream: Vec<u8> = ops.iter().flat_map(encode).collect();
    let mut at = 0;
    let mut i = 0;
    while at < stream.len() {
        let n = cuts[i % cuts.len()].clamp(1, stream.len() - at);
        i += 1;
        if let Verdict::End(_) = h.send(&stream[at..at + n]) {
            break;
        }
        at += n;
    }
    h
}

/// After any conversation, a client that ends COPY, syncs and commits is answered and
/// leaves its server idle: the machine never waits for an answer that cannot come.
fn finishes(h: &mut Harness) -> Result<(), TestCaseError> {
    if let Verdict::End(_) = h.m.verdict() {
        return Ok(());
    }
    let mut tail = COPY_DONE.to_vec();
    tail.extend(SYNC);
    tail.extend(query("commit"));
    let verdict = h.send(&tail);
    // Having lost track, the machine keeps the server to the end: that is the fallback.
    let lost = h.m.pins().contains(super::pins::PinReason::ProtocolState);
    let done = matches!(verdict, Verdict::Wait | Verdict::End(Stop::Lost(_)))
        || (lost && verdict == Verdict::Relay);
    prop_assert!(done, "stuck at {verdict:?} after {}", h.tags_to_client());
    Ok(())
}

fn cut_sizes() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(
        prop_oneof![1 => 1..4usize, 1 => 1..64usize, 1 => Just(usize::MAX)],
        1..8,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Whatever the client sends and however the bytes are cut, the machine never lets
    /// a server go while it owes anything (checked at every verdict), and in transaction
    /// pooling without rewriting the client gets exactly what the server sent.
    #[test]
    fn never_releases_a_server_that_owes_an_answer(
        ops in proptest::collection::vec(op(), 1..40),
        cuts in cut_sizes(),
        server_cuts in cut_sizes(),
        prepared in any::<bool>(),
    ) {
        let mut h = converse(PoolMode::Transaction, prepared, &ops, &cuts, &server_cuts);
        finishes(&mut h)?;
        if !prepared {
            let (got, sent) = (&h.to_client, &h.from_server);
            prop_assert!(sent.starts_with(got), "the client got bytes the server never sent");
        }
    }

    /// The same in session pooling: the server is clean at the end only if it owes nothing.
    #[test]
    fn session_pooling_is_clean_only_when_nothing_is_owed(
        ops in proptest::collection::vec(op(), 1..40),
        cuts in cut_sizes(),
    ) {
        let mut h = converse(PoolMode::Session, false, &ops, &cuts, &[usize::MAX]);
        h.send(&TERMINATE);
        prop_assert_eq!(&h.to_client, &h.from_server);
    }

    /// Mutated sequences: random bytes spliced into valid ones never panic the machine,
    /// and a server faced with them is never released owing something.
    #[test]
    fn garbage_never_panics(
        mut ops in proptest::collection::vec(op(), 0..20),
        garbage in proptest::collection::vec(any::<u8>(), 0..64),
        at in any::<proptest::sample::Index>(),
        cuts in cut_sizes(),
    ) {
        let i = at.index(ops.len() + 1);
        ops.insert(i, Op::Garbage(garbage));
        converse(PoolMode::Transaction, true, &ops, &cuts, &cuts);
    }
}

/// PgBouncer's counts: a query per ReadyForQuery, a transaction per ReadyForQuery `I`.
#[test]
fn the_tally_counts_queries_and_transactions_as_pgbouncer() {
    let mut h = Harness::new(PoolMode::Session, false);
    let mut total = super::Tally::default();
    let mut send = |h: &mut Harness, bytes: &[u8]| {
        h.send(bytes);
        let t = h.m.take_tally();
        total.queries += t.queries;
        total.xacts += t.xacts;
        t
    };
    assert!(send(&mut h, &query("ok")).started);
    send(&mut h, &query("begin"));
    send(&mut h, &query("ok"));
    send(&mut h, &query("commit"));
    let extended = [parse("", "ok"), bind(""), execute(), SYNC.to_vec()].concat();
    send(&mut h, &extended);
    send(
        &mut h,
        &[parse("", "ok"), SYNC.to_vec(), SYNC.to_vec()].concat(),
    );
    // 1 + 3 + 1 + 2 ReadyForQuery; transactions: the lone query, the block, the
    // extended one, and each of the two Syncs.
    assert_eq!((total.queries, total.xacts), (7, 5));
    assert_eq!(h.m.take_tally(), super::Tally::default(), "taken once");
}
