//! The segmentation harness at work: every exchange of [`exchanges`] is replayed after
//! login against Postgres and through the pgwarden binary (transaction mode, then session
//! mode), written whole, byte by byte, and cut at random points with fixed seeds, and the
//! answers must be the same (see `common::segment` for what is compared). After every
//! replay through pgwarden a fresh client must get `SELECT 1`; at the end the proxy must be
//! healthy (`assert_healthy`).
//!
//! A replay that pgwarden fails is recorded and the next one runs; a pgwarden that stops
//! serving is restarted. After three such freezes in one test the remaining replays are
//! listed as not run, to keep a broken proxy from costing minutes (set
//! `PGWARDEN_SEG_ALL=1` to run them all anyway, `PGWARDEN_SEG_ONLY=name,…` to run only
//! some exchanges).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio_postgres::Client;

use common::prepared::{bind, close, describe, execute, flush, parse, query, sync};
use common::process::Pgwarden;
use common::segment::{
    copy_data, copy_done, copy_fail, exchange, execute_max, plan, replay, step, steps_of_recording,
    terminate, Cut, Exchange, Until,
};
use common::{describe as describe_err, PgServer};

const USER: &str = "trust_user";
const DB: &str = "postgres";
/// How long a fresh client may take to get `SELECT 1` after a replay.
const FRESH_CLIENT_DEADLINE: Duration = Duration::from_secs(3);
const MAX_FREEZES: usize = 3;

const COPY_TABLE: &str = "CREATE TABLE IF NOT EXISTS seg_copy(a int, b text); \
                          GRANT ALL ON seg_copy TO PUBLIC; TRUNCATE seg_copy";

use Until::{Closed, Ready, Tag};

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// Bind of the unnamed portal to `statement` with text parameters, then Execute.
fn bind_execute(statement: &str, params: &[&str]) -> Vec<u8> {
    let params: Vec<Option<&str>> = params.iter().map(|p| Some(*p)).collect();
    cat(&[bind("", statement, &params), execute("")])
}

/// The frontend bytes asyncpg sent after login for one `fetchrow` (tests/fixtures/README.md).
pub fn asyncpg_recording() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/asyncpg_introspection.bin"
    );
    std::fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn simple_exchanges() -> Vec<Exchange> {
    vec![
        exchange("simple_select", "", vec![step(query("SELECT 1"), Ready(1))]),
        exchange(
            "simple_rows",
            "",
            vec![step(
                query("SELECT g, repeat('x', g) FROM generate_series(1, 50) g"),
                Ready(1),
            )],
        ),
        exchange(
            "multi_statement",
            "",
            vec![step(
                query("SELECT 1; SELECT 2, 'two'; SET application_name = 'seg'; SHOW application_name"),
                Ready(1),
            )],
        ),
        exchange(
            "multi_statement_error",
            "",
            vec![step(query("SELECT 1; SELECT 1/0; SELECT 3"), Ready(1))],
        ),
        exchange(
            "transaction_blocks",
            "",
            vec![
                step(query("BEGIN"), Ready(1)),
                step(query("SELECT 1"), Ready(1)),
                step(query("COMMIT"), Ready(1)),
                step(query("BEGIN; SELECT 1/0"), Ready(1)),
                step(query("SELECT 1"), Ready(1)),
                step(query("ROLLBACK"), Ready(1)),
            ],
        ),
        exchange(
            "empty_queries",
            "",
            vec![
                step(query(""), Ready(1)),
                step(query(";"), Ready(1)),
                step(query("-- nothing"), Ready(1)),
            ],
        ),
        exchange(
            "long_query_after_idle",
            "",
            vec![
                step(query("SELECT 1"), Ready(1)),
                step(
                    query(&format!("SELECT length('{}')", "q".repeat(3000))),
                    Ready(1),
                ),
            ],
        ),
        exchange(
            "set_then_show",
            "",
            vec![
                step(query("SET search_path = seg, public"), Ready(1)),
                step(query("SHOW search_path"), Ready(1)),
                step(query("RESET search_path; SHOW search_path"), Ready(1)),
            ],
        ),
        exchange(
            "notices_from_do",
            "",
            vec![step(
                query(
                    "DO $$ BEGIN RAISE NOTICE 'one'; RAISE NOTICE 'two %', 2; \
                     RAISE WARNING 'three'; END $$",
                ),
                Ready(1),
            )],
        ),
        exchange(
            "listen_notify",
            "",
            vec![
                step(query("LISTEN seg_chan"), Ready(1)),
                step(query("NOTIFY seg_chan, 'hello'"), Ready(1)),
                step(query("SELECT pg_notify('seg_chan', 'again')"), Ready(1)),
                step(query("UNLISTEN *"), Ready(1)),
            ],
        ),
        exchange(
            "big_row",
            "",
            vec![step(
                query("SELECT repeat('x', 3000000) AS big, 1 AS one"),
                Ready(1),
            )],
        ),
        exchange(
            "sql_prepare_execute",
            "",
            vec![
                step(query("PREPARE q(int) AS SELECT $1 * 2"), Ready(1)),
                step(query("EXECUTE q(21)"), Ready(1)),
                step(query("DEALLOCATE q"), Ready(1)),
                step(query("EXECUTE nope"), Ready(1)),
                step(query("DEALLOCATE nope"), Ready(1)),
                step(query("PREPARE d AS SELECT 1; PREPARE d AS SELECT 2"), Ready(1)),
            ],
        ),
    ]
}

fn extended_exchanges() -> Vec<Exchange> {
    vec![
        exchange(
            "extended_unnamed",
            "",
            vec![step(
                cat(&[
                    parse("", "SELECT $1::int + 1 AS n"),
                    bind("", "", &[Some("41")]),
                    describe(b'P', ""),
                    execute(""),
                    sync(),
                ]),
                Ready(1),
            )],
        ),
        exchange(
            "extended_named",
            "",
            vec![
                step(
                    cat(&[
                        parse("s1", "SELECT $1::text || 'x' AS t"),
                        describe(b'S', "s1"),
                        sync(),
                    ]),
                    Ready(1),
                ),
                step(cat(&[bind_execute("s1", &["a"]), sync()]), Ready(1)),
                step(cat(&[bind_execute("s1", &["b"]), sync()]), Ready(1)),
                step(cat(&[close(b'S', "s1"), sync()]), Ready(1)),
            ],
        ),
        exchange(
            "describe_statement_and_portal",
            "",
            vec![step(
                cat(&[
                    parse("st", "SELECT $1::int AS a, $2::text AS b"),
                    describe(b'S', "st"),
                    bind("po", "st", &[Some("1"), Some("x")]),
                    describe(b'P', "po"),
                    execute("po"),
                    close(b'P', "po"),
                    close(b'S', "st"),
                    sync(),
                ]),
                Ready(1),
            )],
        ),
        exchange(
            "portal_suspended",
            "",
            vec![step(
                cat(&[
                    query("BEGIN"),
                    parse("", "SELECT g FROM generate_series(1, 5) g"),
                    bind("cur", "", &[]),
                    execute_max("cur", 2),
                    execute_max("cur", 2),
                    execute_max("cur", 2),
                    sync(),
                    query("COMMIT"),
                ]),
                Ready(3),
            )],
        ),
        exchange(
            "pipeline_several_syncs",
            "",
            vec![step(
                cat(&[
                    parse("", "SELECT 1"),
                    bind_execute("", &[]),
                    sync(),
                    parse("p2", "SELECT $1::int * 10"),
                    bind_execute("p2", &["2"]),
                    sync(),
                    bind_execute("p2", &["3"]),
                    sync(),
                ]),
                Ready(3),
            )],
        ),
        exchange(
            "flush_without_sync",
            "",
            vec![
                step(
                    cat(&[parse("", "SELECT 42"), bind_execute("", &[]), flush()]),
                    Tag(b'C'),
                ),
                step(cat(&[bind_execute("", &[]), flush()]), Tag(b'C')),
                step(sync(), Ready(1)),
            ],
        ),
        exchange(
            "error_mid_pipeline",
            "",
            vec![step(
                cat(&[
                    parse("", "SELECT 1/0"),
                    bind_execute("", &[]),
                    parse("", "SELECT 2"),
                    bind_execute("", &[]),
                    sync(),
                    parse("", "SELECT 3"),
                    bind_execute("", &[]),
                    sync(),
                ]),
                Ready(2),
            )],
        ),
        exchange(
            "query_between_unsynced_messages",
            "",
            vec![
                step(
                    cat(&[
                        parse("", "SELECT 1"),
                        bind_execute("", &[]),
                        query("SELECT 2"),
                    ]),
                    Ready(1),
                ),
                step(cat(&[bind_execute("", &[]), sync()]), Ready(1)),
            ],
        ),
        exchange(
            "big_row_extended",
            "",
            vec![step(
                cat(&[
                    parse("", "SELECT repeat('y', 2500000) AS big"),
                    bind_execute("", &[]),
                    sync(),
                ]),
                Ready(1),
            )],
        ),
        exchange(
            "big_parameter",
            "",
            vec![step(
                cat(&[
                    parse("", "SELECT length($1::text), md5($1::text)"),
                    bind_execute("", &[&"z".repeat(8 << 20)]),
                    sync(),
                ]),
                Ready(1),
            )],
        ),
        exchange(
            "unknown_statement",
            "",
            vec![
                step(cat(&[bind_execute("nope", &[]), sync()]), Ready(1)),
                step(cat(&[describe(b'S', "nope"), sync()]), Ready(1)),
                step(cat(&[describe(b'P', "nope"), sync()]), Ready(1)),
                step(cat(&[close(b'S', "nope"), sync()]), Ready(1)),
                step(query("SELECT 1"), Ready(1)),
            ],
        ),
        exchange(
            "duplicate_statement",
            "",
            vec![
                step(cat(&[parse("dup", "SELECT 1"), sync()]), Ready(1)),
                step(cat(&[parse("dup", "SELECT 2"), sync()]), Ready(1)),
                step(cat(&[bind_execute("dup", &[]), sync()]), Ready(1)),
                step(cat(&[close(b'S', "dup"), sync()]), Ready(1)),
            ],
        ),
        exchange(
            "terminate_mid_pipeline",
            "",
            vec![step(
                cat(&[parse("", "SELECT 1"), bind_execute("", &[]), terminate()]),
                Closed,
            )],
        ),
        exchange(
            "asyncpg_introspection",
            "",
            steps_of_recording(&asyncpg_recording()),
        ),
    ]
}

fn copy_exchanges() -> Vec<Exchange> {
    let copy_select = || query("SELECT a, b FROM seg_copy ORDER BY a");
    vec![
        exchange(
            "copy_from_stdin_simple",
            COPY_TABLE,
            vec![
                step(query("COPY seg_copy FROM STDIN"), Tag(b'G')),
                step(
                    cat(&[
                        copy_data(b"1\tone\n"),
                        copy_data(b"2\ttwo\n3\tthree\n"),
                        copy_done(),
                    ]),
                    Ready(1),
                ),
                step(copy_select(), Ready(1)),
            ],
        ),
        exchange(
            "copy_from_stdin_extended",
            COPY_TABLE,
            vec![
                step(
                    cat(&[
                        parse("", "COPY seg_copy FROM STDIN"),
                        bind("", "", &[]),
                        describe(b'P', ""),
                        execute(""),
                        sync(),
                    ]),
                    Tag(b'G'),
                ),
                step(
                    cat(&[copy_data(b"4\tfour\n"), copy_done(), sync()]),
                    Ready(1),
                ),
                step(copy_select(), Ready(1)),
            ],
        ),
        exchange(
            "copy_to_stdout",
            "",
            vec![
                step(
                    query(
                        "COPY (SELECT g, md5(g::text) FROM generate_series(1, 2000) g) TO STDOUT",
                    ),
                    Ready(1),
                ),
                step(
                    cat(&[
                        parse(
                            "",
                            "COPY (SELECT g FROM generate_series(1, 10) g) TO STDOUT",
                        ),
                        bind_execute("", &[]),
                        sync(),
                    ]),
                    Ready(1),
                ),
            ],
        ),
        exchange(
            "copy_bad_data",
            COPY_TABLE,
            vec![
                step(query("COPY seg_copy FROM STDIN"), Tag(b'G')),
                step(cat(&[copy_data(b"x\ty\n"), copy_done()]), Ready(1)),
                step(copy_select(), Ready(1)),
            ],
        ),
        exchange(
            "copy_fail",
            COPY_TABLE,
            vec![
                step(query("COPY seg_copy FROM STDIN"), Tag(b'G')),
                step(
                    cat(&[copy_data(b"1\ta\n"), copy_fail("client gave up")]),
                    Ready(1),
                ),
                step(copy_select(), Ready(1)),
            ],
        ),
        exchange(
            "sync_after_failed_copy",
            COPY_TABLE,
            vec![
                step(
                    cat(&[
                        parse("", "COPY seg_copy FROM STDIN"),
                        bind_execute("", &[]),
                        sync(),
                    ]),
                    Tag(b'G'),
                ),
                step(copy_data(b"bad\n"), Tag(b'E')),
                step(
                    cat(&[sync(), query("SELECT pg_sleep(0.1), 'after'")]),
                    Ready(2),
                ),
                step(copy_select(), Ready(1)),
            ],
        ),
        exchange(
            "copy_data_after_failed_copy",
            COPY_TABLE,
            vec![
                step(
                    cat(&[
                        parse("", "COPY seg_copy FROM STDIN"),
                        bind_execute("", &[]),
                        sync(),
                    ]),
                    Tag(b'G'),
                ),
                step(copy_data(b"bad\n"), Tag(b'E')),
                step(
                    cat(&[
                        copy_data(b"5\tfive\n"),
                        copy_done(),
                        sync(),
                        query("SELECT pg_sleep(0.2), 'after'"),
                    ]),
                    Ready(2),
                ),
                step(copy_select(), Ready(1)),
            ],
        ),
    ]
}

fn exchanges() -> Vec<Exchange> {
    let mut all = simple_exchanges();
    all.extend(extended_exchanges());
    all.extend(copy_exchanges());
    if let Ok(only) = std::env::var("PGWARDEN_SEG_ONLY") {
        let names: Vec<&str> = only.split(',').collect();
        all.retain(|e| names.contains(&e.name.as_str()));
    }
    all
}

fn config(pg: &PgServer, pool_mode: &str) -> String {
    format!(
        "auth_type = \"trust\"\npool_mode = \"{pool_mode}\"\npool_size = 2\n\
         max_prepared_statements = 200\nworkers = 1\nquery_wait_timeout = \"5s\"\n\
         shutdown_timeout = \"2s\"\n\
         [databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n",
        pg.port
    )
}

async fn setup(admin: &Client, sql: &str) {
    if !sql.is_empty() {
        let done = admin.batch_execute(sql).await;
        done.unwrap_or_else(|e| panic!("{sql}: {}", describe_err(&e)));
    }
}

/// Replays every exchange with every cut against Postgres and through pgwarden in
/// `pool_mode`; panics listing every replay whose answers differed.
async fn same_answers(pool_mode: &str, cuts: &[Cut]) {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let admin = pg.admin().await;
    let direct = SocketAddr::from(([127, 0, 0, 1], pg.port));
    let toml = config(&pg, pool_mode);
    let mut proxy = Pgwarden::with_config(&toml).await;
    let run_all = std::env::var_os("PGWARDEN_SEG_ALL").is_some();
    let (mut failures, mut not_run, mut freezes) = (Vec::new(), Vec::new(), 0);
    for ex in exchanges() {
        for &cut in cuts {
            let what = format!("{} ({pool_mode} mode, {cut})", ex.name);
            if freezes >= MAX_FREEZES && !run_all {
                not_run.push(what);
                continue;
            }
            setup(&admin, &ex.setup).await;
            let expected = replay(direct, USER, DB, &ex, cut)
                .await
                .unwrap_or_else(|why| panic!("{what} against Postgres: {why}"));
            setup(&admin, &ex.setup).await;
            match replay(proxy.addr(), USER, DB, &ex, cut).await {
                Ok(answers) => {
                    if let Some(diff) = common::segment::difference(&expected, &answers) {
                        failures.push(format!("{what}: answers differ: {diff}"));
                    }
                }
                Err(why) => failures.push(format!("{what}: {why}")),
            }
            if let Err(why) = proxy.serves(USER, DB, FRESH_CLIENT_DEADLINE).await {
                let alive = proxy.is_alive();
                failures.push(format!(
                    "after {what}: pgwarden stopped serving ({why}; process alive: {alive}, \
                     output: {})",
                    proxy.output_tail(5)
                ));
                freezes += 1;
                proxy = Pgwarden::with_config(&toml).await;
            }
        }
    }
    if failures.is_empty() {
        proxy.assert_healthy().await;
        return;
    }
    let mut report = format!(
        "{} replays through pgwarden went wrong:\n- {}",
        failures.len(),
        failures.join("\n- ")
    );
    if !not_run.is_empty() {
        report.push_str(&format!(
            "\nnot run after {MAX_FREEZES} freezes (PGWARDEN_SEG_ALL=1 runs them): {}",
            not_run.join(", ")
        ));
    }
    panic!("{report}");
}

#[test]
fn cuts_cover_every_byte_once_in_order() {
    let bytes = cat(&[
        parse("", "SELECT 1"),
        bind_execute("", &[&"p".repeat(40_000)]),
        sync(),
    ]);
    for cut in [Cut::Whole, Cut::Bytewise, Cut::Random(1), Cut::Random(99)] {
        let writes = plan(&bytes, cut, 7);
        let mut at = 0;
        for (range, _) in &writes {
            assert_eq!(range.start, at, "{cut}: a gap or overlap at {at}");
            assert!(range.end > range.start, "{cut}: an empty write");
            at = range.end;
        }
        assert_eq!(at, bytes.len(), "{cut}: not every byte written");
        match cut {
            Cut::Whole => assert_eq!(writes.len(), 1),
            // Every header byte of every message is a write of its own.
            Cut::Bytewise => assert!(writes.iter().filter(|(r, _)| r.len() == 1).count() > 100),
            Cut::Random(_) => assert!(writes.len() > 10, "{cut}: {} writes", writes.len()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_whole() {
    same_answers("transaction", &[Cut::Whole]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_byte_by_byte() {
    same_answers("transaction", &[Cut::Bytewise]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_random_cuts() {
    same_answers("transaction", &[Cut::Random(1), Cut::Random(2)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_whole() {
    same_answers("session", &[Cut::Whole]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_byte_by_byte() {
    same_answers("session", &[Cut::Bytewise]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_random_cuts() {
    same_answers("session", &[Cut::Random(3)]).await;
}

/// The recorded asyncpg exchange on its own, every cut, so that its result stands out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_introspection_recording() {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let direct = SocketAddr::from(([127, 0, 0, 1], pg.port));
    let proxy = Pgwarden::with_config(&config(&pg, "transaction")).await;
    let ex = exchange(
        "asyncpg_introspection",
        "",
        steps_of_recording(&asyncpg_recording()),
    );
    let mut failures = Vec::new();
    for cut in [Cut::Whole, Cut::Bytewise, Cut::Random(5)] {
        let expected = replay(direct, USER, DB, &ex, cut)
            .await
            .unwrap_or_else(|why| panic!("against Postgres ({cut}): {why}"));
        // The recording ends with the row asyncpg asked for: [1, NULL] as an int4 array.
        let last_rows: Vec<_> = expected[expected.len() - 2]
            .messages
            .iter()
            .filter(|m| m.tag == b'D')
            .collect();
        assert_eq!(last_rows.len(), 1, "the fetchrow's row: {expected:?}");
        match replay(proxy.addr(), USER, DB, &ex, cut).await {
            Ok(answers) => {
                if let Some(diff) = common::segment::difference(&expected, &answers) {
                    failures.push(format!("{cut}: {diff}"));
                }
            }
            Err(why) => failures.push(format!("{cut}: {why}")),
        }
        if let Err(why) = proxy.serves(USER, DB, FRESH_CLIENT_DEADLINE).await {
            failures.push(format!("after {cut}: pgwarden stopped serving: {why}"));
            break;
        }
    }
    assert!(
        failures.is_empty(),
        "asyncpg's exchange through pgwarden:\n{}\n{}",
        failures.join("\n"),
        proxy.output_tail(10)
    );
    proxy.assert_healthy().await;
}
