//! Through pgwarden in session mode, a client sees exactly what it sees connected to Postgres
//! directly: simple and extended protocol, prepared statements, pipelines, COPY both ways,
//! notices, LISTEN/NOTIFY, very large values, errors inside transactions, and a whole psql
//! transcript.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage};

use common::clients::{session_setup, simple_rows};
use common::{describe, pg_bin, PgServer, Proxy};

/// How long a test waits for an asynchronous message before failing.
const ASYNC_DEADLINE: Duration = Duration::from_secs(5);

/// A throwaway Postgres and a session-mode pgwarden in front of it that knows `app`.
async fn setup() -> (PgServer, Proxy) {
    session_setup("scram-sha-256").await
}

/// The SQLSTATE of a server error; panics (describing it) on any other error.
fn sqlstate(err: &tokio_postgres::Error) -> &str {
    match err.as_db_error() {
        Some(db) => db.code().code(),
        None => panic!("expected a server error, got: {}", describe(err)),
    }
}

/// A connection whose asynchronous messages (notices, notifications) arrive on a channel.
async fn connect_with_messages(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    db: &str,
) -> (Client, mpsc::UnboundedReceiver<AsyncMessage>) {
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port)
        .user(user)
        .password(password)
        .dbname(db)
        .connect_timeout(Duration::from_secs(10));
    let (client, mut connection) = config
        .connect(NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {host}:{port}: {}", describe(&e)));
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            let _ = tx.send(message);
        }
    });
    (client, rx)
}

async fn next_message(rx: &mut mpsc::UnboundedReceiver<AsyncMessage>) -> AsyncMessage {
    tokio::time::timeout(ASYNC_DEADLINE, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no asynchronous message within {ASYNC_DEADLINE:?}"))
        .expect("connection closed before an asynchronous message arrived")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_query_returns_every_statement_of_a_multi_statement_string() {
    let (pg, proxy) = setup().await;
    let direct = pg.connect("app", "app_pw", "appdb").await;
    let client = proxy.connect("app", "app_pw", "appdb").await;

    let sql = "select 1; select 'a', null::text; select g from generate_series(1, 3) g";
    let through = client.simple_query(sql).await.unwrap();
    assert_eq!(
        simple_rows(&through),
        vec![
            vec![Some("1".to_owned())],
            vec![Some("a".to_owned()), None],
            vec![Some("1".to_owned())],
            vec![Some("2".to_owned())],
            vec![Some("3".to_owned())],
        ]
    );
    let completions = |messages: &[SimpleQueryMessage]| -> Vec<u64> {
        messages
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::CommandComplete(n) => Some(*n),
                _ => None,
            })
            .collect()
    };
    assert_eq!(completions(&through), vec![1, 1, 3]);
    let plain = direct.simple_query(sql).await.unwrap();
    assert_eq!(simple_rows(&through), simple_rows(&plain));
    assert_eq!(completions(&through), completions(&plain));

    // An empty query string gets EmptyQueryResponse, as directly.
    assert!(simple_rows(&client.simple_query("").await.unwrap()).is_empty());
    client.batch_execute(";").await.unwrap();
    let after = client.simple_query("select 'still here'").await.unwrap();
    assert_eq!(
        simple_rows(&after),
        vec![vec![Some("still here".to_owned())]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_with_unnamed_statements() {
    let (_pg, proxy) = setup().await;
    let client = proxy.connect("app", "app_pw", "appdb").await;

    // query_typed: Parse/Bind/Execute on the unnamed statement in one round trip.
    let rows = client
        .query_typed("select $1::int + 1", &[(&41i32, Type::INT4)])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i32>(0), 42);

    let row = client
        .query_typed_one(
            "select $1::text || '!', $2::int8 * 2",
            &[(&"hi", Type::TEXT), (&21i64, Type::INT8)],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "hi!");
    assert_eq!(row.get::<_, i64>(1), 42);

    // query with a string: prepare, bind, execute, close.
    let row = client
        .query_one("select $1::int + 1", &[&41i32])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);

    let err = client
        .query_typed("select 1 / $1::int", &[(&0i32, Type::INT4)])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "22012");
    let row = client.query_one("select 'after error'", &[]).await.unwrap();
    assert_eq!(row.get::<_, &str>(0), "after error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_prepared_statements_live_for_the_session() {
    let (_pg, proxy) = setup().await;
    let client = proxy.connect("app", "app_pw", "appdb").await;

    let double = client.prepare("select $1::int * 2").await.unwrap();
    let concat = client
        .prepare_typed("select $1 || '-' || $2", &[Type::TEXT, Type::TEXT])
        .await
        .unwrap();
    for i in 0..10i32 {
        let row = client.query_one(&double, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i * 2);
        let row = client
            .query_one(&concat, &[&"n", &i.to_string()])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), format!("n-{i}"));
    }
    assert_eq!(double.params(), &[Type::INT4]);
    assert_eq!(double.columns()[0].type_(), &Type::INT4);

    // The statements are server-side named statements of this session.
    let names = client
        .query_one(
            "select count(*) from pg_prepared_statements where not from_sql",
            &[],
        )
        .await
        .unwrap();
    assert!(names.get::<_, i64>(0) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_each_get_their_own_result() {
    let (_pg, proxy) = setup().await;
    let client = proxy.connect("app", "app_pw", "appdb").await;
    let stmt = client
        .prepare("select $1::int, 100 / ($1::int - 7), repeat('x', $1::int)")
        .await
        .unwrap();

    let inputs: Vec<i32> = (0..30).collect();
    // All issued before any is awaited: tokio-postgres sends them back to back.
    let params: Vec<[&(dyn ToSql + Sync); 1]> = inputs.iter().map(|i| [i as _]).collect();
    let results =
        futures_util::future::join_all(params.iter().map(|p| client.query_one(&stmt, p))).await;
    for (i, result) in inputs.iter().zip(results) {
        if *i == 7 {
            let err = result.expect_err("7 divides by zero");
            assert_eq!(sqlstate(&err), "22012");
            continue;
        }
        let row = result.unwrap_or_else(|e| panic!("query {i}: {}", describe(&e)));
        assert_eq!(row.get::<_, i32>(0), *i);
        assert_eq!(row.get::<_, i32>(1), 100 / (i - 7));
        assert_eq!(row.get::<_, String>(2), "x".repeat(*i as usize));
    }

    // Mixed statements, pipelined, all succeeding.
    let queries = [
        "select 'one'::text",
        "select 'two'::text",
        "select string_agg(g::text, ',') from generate_series(1, 5) g",
    ];
    let no_params: [&(dyn ToSql + Sync); 0] = [];
    let rows = futures_util::future::try_join_all(
        queries.iter().map(|q| client.query_one(*q, &no_params)),
    )
    .await
    .unwrap();
    let got: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(got, ["one", "two", "1,2,3,4,5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_stdin_loads_a_megabyte() {
    let (_pg, proxy) = setup().await;
    let client = proxy.connect("app", "app_pw", "appdb").await;
    client
        .batch_execute("create temp table loaded (id int, body text)")
        .await
        .unwrap();

    const ROWS: usize = 10_000;
    let body = "y".repeat(100);
    let sink = client
        .copy_in("copy loaded (id, body) from stdin")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    let mut sent = 0;
    for chunk in (0..ROWS).collect::<Vec<_>>().chunks(700) {
        let mut data = String::new();
        for id in chunk {
            data.push_str(&format!("{id}\t{body}\n"));
        }
        sent += data.len();
        sink.send(Bytes::from(data)).await.unwrap();
    }
    assert!(sent > 1_000_000, "sent only {sent} bytes");
    assert_eq!(sink.as_mut().finish().await.unwrap(), ROWS as u64);

    let row = client
        .query_one(
            "select count(*), count(distinct id), sum(length(body))::int8 from loaded",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), ROWS as i64);
    assert_eq!(row.get::<_, i64>(1), ROWS as i64);
    assert_eq!(row.get::<_, i64>(2), (ROWS * body.len()) as i64);

    // A COPY that fails midway (bad data) reports the server's error and the session goes on.
    let sink = client.copy_in("copy loaded (id) from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from_static(b"1\nnot a number\n"))
        .await
        .unwrap();
    let err = sink.as_mut().finish().await.unwrap_err();
    assert_eq!(sqlstate(&err), "22P02");

    // A COPY the client abandons (CopyFail) loads nothing, and the session goes on.
    {
        let sink = client.copy_in("copy loaded (id) from stdin").await.unwrap();
        futures_util::pin_mut!(sink);
        sink.send(Bytes::from_static(b"999\n")).await.unwrap();
    }
    let row = client
        .query_one("select count(*), max(id) from loaded", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), ROWS as i64);
    assert_eq!(row.get::<_, Option<i32>>(1), Some(ROWS as i32 - 1));
}

/// All the bytes of a COPY TO STDOUT.
async fn copy_out_bytes(client: &Client, sql: &str) -> Vec<u8> {
    let stream = client.copy_out(sql).await.unwrap();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    chunks.concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_to_stdout_is_byte_for_byte_as_direct() {
    let (pg, proxy) = setup().await;
    let direct = pg.connect("app", "app_pw", "appdb").await;
    let client = proxy.connect("app", "app_pw", "appdb").await;

    let text = "copy (select g, md5(g::text), g % 3 = 0, null::text \
                from generate_series(1, 20000) g) to stdout";
    let through = copy_out_bytes(&client, text).await;
    assert!(through.len() > 500_000, "{} bytes", through.len());
    assert!(through.starts_with(b"1\tc4ca4238a0b923820dcc509a6f75849b\tf\t\\N\n"));
    assert!(through == copy_out_bytes(&direct, text).await);

    let binary = "copy (select g, repeat('z', g % 50)::bytea from generate_series(1, 5000) g) \
                  to stdout with (format binary)";
    let through = copy_out_bytes(&client, binary).await;
    assert!(through.starts_with(b"PGCOPY\n\xff\r\n\0"));
    assert!(through == copy_out_bytes(&direct, binary).await);

    let csv = "copy (select 'a,b' as x, 'quote\"d' as y, E'multi\\nline' as z) \
               to stdout with (format csv, header)";
    let through = copy_out_bytes(&client, csv).await;
    assert_eq!(
        String::from_utf8(through.clone()).unwrap(),
        "x,y,z\n\"a,b\",\"quote\"\"d\",\"multi\nline\"\n"
    );
    assert!(through == copy_out_bytes(&direct, csv).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_reach_the_client() {
    let (_pg, proxy) = setup().await;
    let port = proxy.addr.port();
    let (client, mut rx) = connect_with_messages("127.0.0.1", port, "app", "app_pw", "appdb").await;

    client
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$")
        .await
        .unwrap();
    match next_message(&mut rx).await {
        AsyncMessage::Notice(notice) => {
            assert_eq!(notice.severity(), "NOTICE");
            assert_eq!(notice.code().code(), "00000");
            assert_eq!(notice.message(), "hello 42");
        }
        other => panic!("expected a notice, got {other:?}"),
    }

    // A warning with detail and hint, from the extended protocol this time.
    client
        .execute(
            "DO $$ BEGIN RAISE WARNING 'careful' USING DETAIL = 'the detail', HINT = 'a hint', \
             ERRCODE = '01000'; END $$",
            &[],
        )
        .await
        .unwrap();
    match next_message(&mut rx).await {
        AsyncMessage::Notice(notice) => {
            assert_eq!(notice.severity(), "WARNING");
            assert_eq!(notice.code().code(), "01000");
            assert_eq!(notice.message(), "careful");
            assert_eq!(notice.detail(), Some("the detail"));
            assert_eq!(notice.hint(), Some("a hint"));
        }
        other => panic!("expected a warning, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_delivers_notifications_to_an_idle_listener() {
    let (_pg, proxy) = setup().await;
    let port = proxy.addr.port();
    let (listener, mut rx) =
        connect_with_messages("127.0.0.1", port, "app", "app_pw", "appdb").await;
    listener.batch_execute("LISTEN jobs").await.unwrap();

    let notifier = proxy.connect("app", "app_pw", "appdb").await;
    notifier
        .batch_execute("NOTIFY jobs, 'first'")
        .await
        .unwrap();
    notifier
        .execute("select pg_notify('jobs', $1)", &[&"second, with a payload"])
        .await
        .unwrap();
    notifier
        .batch_execute("NOTIFY elsewhere, 'not for us'")
        .await
        .unwrap();

    // The listener sends nothing meanwhile: pgwarden must forward what its server sends.
    for expected in ["first", "second, with a payload"] {
        match next_message(&mut rx).await {
            AsyncMessage::Notification(n) => {
                assert_eq!(n.channel(), "jobs");
                assert_eq!(n.payload(), expected);
            }
            other => panic!("expected a notification, got {other:?}"),
        }
    }

    // A notification sent inside a transaction arrives at commit, not before.
    let tx_sql = "BEGIN; NOTIFY jobs, 'committed'; COMMIT";
    notifier.batch_execute(tx_sql).await.unwrap();
    match next_message(&mut rx).await {
        AsyncMessage::Notification(n) => assert_eq!(n.payload(), "committed"),
        other => panic!("expected a notification, got {other:?}"),
    }
    listener.batch_execute("UNLISTEN *").await.unwrap();
    assert!(rx.try_recv().is_err(), "nothing else was sent to `jobs`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_megabyte_parameters_and_rows() {
    let (_pg, proxy) = setup().await;
    let client = proxy.connect("app", "app_pw", "appdb").await;

    // A 20 MB parameter goes in and comes back unchanged.
    let big: String = (0..20 * 1024 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let row = client
        .query_one("select $1::text, length($1::text)", &[&big])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(1) as usize, big.len());
    let echoed: &str = row.get(0);
    assert!(echoed == big, "the 20 MB parameter came back changed");

    // A 50 MB row.
    let row = client
        .query_one("select repeat('x', 50000000)", &[])
        .await
        .unwrap();
    let value: &str = row.get(0);
    assert_eq!(value.len(), 50_000_000);
    assert!(value.bytes().all(|b| b == b'x'));

    // The same through the simple protocol, and the session still answers small queries.
    let rows = client
        .simple_query("select md5(repeat('ab', 5000000)), length(repeat('ab', 5000000))")
        .await
        .unwrap();
    let expected = client
        .query_one("select md5(repeat('ab', 5000000))", &[])
        .await
        .unwrap()
        .get::<_, String>(0);
    assert_eq!(
        simple_rows(&rows),
        vec![vec![Some(expected), Some("10000000".to_owned())]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_mid_transaction_aborts_it_until_rollback() {
    let (_pg, proxy) = setup().await;
    let client = proxy.connect("app", "app_pw", "appdb").await;
    client
        .batch_execute("create temp table t (x int)")
        .await
        .unwrap();

    client.batch_execute("BEGIN").await.unwrap();
    client
        .execute("insert into t values (1)", &[])
        .await
        .unwrap();
    let err = client.execute("select 1/0", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "22012");
    assert_eq!(err.as_db_error().unwrap().message(), "division by zero");

    let err = client.simple_query("select 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), "25P02");
    assert_eq!(
        err.as_db_error().unwrap().message(),
        "current transaction is aborted, commands ignored until end of transaction block"
    );
    let err = client.query("select 2", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "25P02");

    client.batch_execute("ROLLBACK").await.unwrap();
    let row = client
        .query_one("select count(*) from t", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0, "the insert was rolled back");

    // And a transaction that commits works afterwards.
    client
        .batch_execute("BEGIN; insert into t values (2); COMMIT")
        .await
        .unwrap();
    let row = client
        .query_one("select sum(x)::int from t", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
}

/// The psql script of [`psql_transcript_is_identical_to_a_direct_session`]; `DATA` is the
/// path of a file for `\copy`.
const PSQL_SCRIPT: &str = r#"\set ON_ERROR_STOP 0
select 1 as one, 'two' as two;
select g, g * g as square, repeat('#', g) as bar from generate_series(1, 5) g;
select 1/0;
;
-- a comment only

create temp table fruit (id int primary key, name text);
copy fruit from stdin;
1	apple
2	banana
3	\N
\.
\copy fruit from 'DATA'
select * from fruit order by id;
\copy (select name from fruit where name is not null order by id) to stdout
do $$ begin raise notice 'hello %', 42; end $$;
insert into fruit values (1, 'duplicate');
begin;
select * from no_such_table;
select 'ignored';
rollback;
\set VERBOSITY verbose
select 'x'::int;
\set VERBOSITY default
select current_user, current_database(), pg_catalog.current_setting('server_version_num')::int >= 150000 as v15;
\echo done
"#;

fn run_psql(port: u16, script: &Path) -> Output {
    Command::new(pg_bin("psql"))
        .args(["-X", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "app", "-d", "appdb", "-f"])
        .arg(script)
        .env("PGPASSWORD", "app_pw")
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGOPTIONS")
        .env_remove("PGSERVICE")
        .env_remove("PGSSLMODE")
        .env_remove("PSQLRC")
        .output()
        .expect("run psql")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_transcript_is_identical_to_a_direct_session() {
    let (pg, proxy) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fruit.tsv");
    std::fs::write(&data, "10\tcherry\n11\tdate\n").unwrap();
    let script = dir.path().join("script.sql");
    let text = PSQL_SCRIPT.replace("DATA", data.to_str().unwrap());
    std::fs::write(&script, text).unwrap();

    let (direct_port, proxy_port) = (pg.port, proxy.addr.port());
    let script_path = script.clone();
    let (direct, through) = tokio::task::spawn_blocking(move || {
        (
            run_psql(direct_port, &script_path),
            run_psql(proxy_port, &script_path),
        )
    })
    .await
    .unwrap();

    let stdout = String::from_utf8_lossy(&through.stdout);
    let stderr = String::from_utf8_lossy(&through.stderr);
    // Sanity: the script did what it should, so equality below means something.
    assert!(
        stdout.contains("COPY 3"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains(" 11 | date"), "stdout:\n{stdout}");
    assert!(stdout.contains("\ndone\n"), "stdout:\n{stdout}");
    assert!(
        stderr.contains("ERROR:  division by zero"),
        "stderr:\n{stderr}"
    );
    assert!(stderr.contains("NOTICE:  hello 42"), "stderr:\n{stderr}");
    assert!(
        stderr.contains("ERROR:  22P02: invalid input syntax"),
        "stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("current transaction is aborted"),
        "stderr:\n{stderr}"
    );

    assert_eq!(
        String::from_utf8_lossy(&direct.stdout),
        stdout,
        "psql stdout differs through pgwarden"
    );
    assert_eq!(
        String::from_utf8_lossy(&direct.stderr),
        stderr,
        "psql stderr differs through pgwarden"
    );
    assert_eq!(direct.status.code(), through.status.code());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_round_trips_on_one_session_and_server_side_state_persists() {
    // Session mode: temp tables, session settings and prepared statements made with SQL
    // survive across statements because the client keeps its server.
    let (pg, proxy) = setup().await;
    let client = proxy.connect("app", "app_pw", "appdb").await;
    client
        .batch_execute(
            "SET application_name = 'protocol-test'; \
             PREPARE twice(int) AS SELECT $1 * 2; \
             CREATE TEMP TABLE seen (n int)",
        )
        .await
        .unwrap();
    for i in 0..50i32 {
        client
            .execute("insert into seen values ($1)", &[&i])
            .await
            .unwrap();
    }
    let rows = client.simple_query("EXECUTE twice(21)").await.unwrap();
    assert_eq!(simple_rows(&rows), vec![vec![Some("42".to_owned())]]);
    let row = client
        .query_one(
            "select count(*), current_setting('application_name') from seen",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 50);
    assert_eq!(row.get::<_, &str>(1), "protocol-test");
    assert_eq!(pg.backend_count("app").await, 1);
}
