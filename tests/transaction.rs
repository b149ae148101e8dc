//! Transaction pooling through pgwarden: a client holds a server only from its first message
//! to the end of its transaction (ReadyForQuery `I` with nothing pending), its session
//! settings follow it from server to server, state that cannot move pins it to its server,
//! and many clients share a few servers without ever seeing each other's state, rows,
//! errors or cancels.
//!
//! Most tests speak the simple protocol (`simple_query`, `batch_execute`) or the unnamed
//! extended-protocol statement (`query_typed`): tokio-postgres' `prepare` and `query` use
//! named statements, which pin a client to its server in this version.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{future, stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{AsyncMessage, Client, Error, NoTls, Notification};

use common::clients::{pool_config, simple_rows};
use common::pgbench::{self, output_text, processed};
use common::{describe, start_proxy, PgServer, Proxy};

/// Long enough for anything that should happen promptly on a loaded 2-core machine.
const PROMPTLY: Duration = Duration::from_secs(5);
/// How long a client that must keep waiting is watched before we call it waiting.
const STILL_WAITING: Duration = Duration::from_millis(300);
/// Every test's clients use this database (owned by app).
const DB: &str = "appdb";

/// A transaction-mode proxy in front of `pg`: clients log in with SCRAM, app's password
/// logs in to the server. `settings` are top-level `key = value` lines; they replace the
/// defaults given here (SCRAM, a 10 s query_wait_timeout, a 2 s shutdown_timeout).
fn config(pg: &PgServer, settings: &[(&str, &str)]) -> String {
    let head = "pool_mode = \"transaction\"\n";
    let defaults = [
        ("auth_type", "\"scram-sha-256\""),
        ("query_wait_timeout", "\"10s\""),
        ("shutdown_timeout", "\"2s\""),
    ];
    pool_config(head, &defaults, settings, "127.0.0.1", pg.port)
}

/// A client of the proxy (app on appdb). Its connection task is kept so that a test can
/// end the connection abruptly, and it forwards the notifications the client receives.
struct Conn {
    client: Arc<Client>,
    task: JoinHandle<()>,
    notifications: mpsc::UnboundedReceiver<Notification>,
}

impl Conn {
    /// Leaves politely: drops the client, so tokio-postgres sends Terminate, and waits for
    /// the connection task to finish.
    async fn close(self) {
        drop(self.client);
        let done = tokio::time::timeout(PROMPTLY, self.task).await;
        done.expect("connection task did not finish after Terminate")
            .unwrap();
    }

    /// Leaves abruptly: the socket closes without a Terminate message.
    async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// The next notification, waited for at most [`PROMPTLY`].
    async fn notification(&mut self, what: &str) -> Notification {
        let next = tokio::time::timeout(PROMPTLY, self.notifications.recv()).await;
        next.unwrap_or_else(|_| panic!("{what}: no notification within {PROMPTLY:?}"))
            .unwrap_or_else(|| panic!("{what}: the connection ended"))
    }
}

/// Connects as app to appdb through the proxy on `port`, with `setup` applied to the
/// config. Sends nothing after login.
async fn try_open_with(
    port: u16,
    setup: impl FnOnce(&mut tokio_postgres::Config),
) -> Result<Conn, Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user("app")
        .password("app_pw")
        .dbname(DB)
        .connect_timeout(Duration::from_secs(60));
    setup(&mut config);
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, notifications) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(note)) => {
                    let _ = tx.send(note);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    Ok(Conn {
        client: Arc::new(client),
        task,
        notifications,
    })
}

async fn open_with(proxy: &Proxy, setup: impl FnOnce(&mut tokio_postgres::Config)) -> Conn {
    let conn = try_open_with(proxy.addr.port(), setup).await;
    conn.unwrap_or_else(|e| panic!("connect through pgwarden: {}", describe(&e)))
}

async fn open(proxy: &Proxy) -> Conn {
    open_with(proxy, |_| {}).await
}

/// Every row of every statement in `sql` (simple protocol), as text.
async fn rows(client: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, Error> {
    let messages = client.simple_query(sql).await?;
    Ok(simple_rows(&messages))
}

/// The first column of the first row `sql` returns (simple protocol).
async fn try_value(client: &Client, sql: &str) -> Result<Option<String>, Error> {
    let rows = rows(client, sql).await?;
    Ok(rows
        .into_iter()
        .next()
        .and_then(|row| row.into_iter().next()?))
}

/// [`try_value`] that must succeed with a non-NULL value.
async fn value(client: &Client, sql: &str) -> String {
    let result = try_value(client, sql).await;
    result
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)))
        .unwrap_or_else(|| panic!("{sql}: no row or NULL"))
}

async fn exec(client: &Client, sql: &str) {
    let result = client.batch_execute(sql).await;
    result.unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
}

/// A direct connection to appdb as postgres, for setup and checks: it is not one of the
/// app backends the tests count.
async fn appdb_superuser(pg: &PgServer) -> Client {
    pg.connect("postgres", "postgres", DB).await
}

/// The backend serving this query.
async fn pid(client: &Client) -> String {
    value(client, "SELECT pg_backend_pid()").await
}

async fn show(client: &Client, setting: &str) -> String {
    value(client, &format!("SELECT current_setting('{setting}')")).await
}

/// The SQLSTATE of a failure that must be an ErrorResponse.
fn sqlstate<T: std::fmt::Debug>(result: Result<T, Error>, what: &str) -> String {
    match result {
        Ok(v) => panic!("{what}: succeeded with {v:?}, expected an error"),
        Err(e) => match e.as_db_error() {
            Some(db) => db.code().code().to_owned(),
            None => panic!("{what}: expected an ErrorResponse, got {}", describe(&e)),
        },
    }
}

type Pending = JoinHandle<Result<Option<String>, Error>>;

/// [`try_value`] in its own task, so the test can watch whether it is still waiting.
fn spawn_value(client: &Arc<Client>, sql: &str) -> Pending {
    let client = client.clone();
    let sql = sql.to_owned();
    tokio::spawn(async move { try_value(&client, &sql).await })
}

async fn assert_waiting(pending: &mut Pending, what: &str) {
    if tokio::time::timeout(STILL_WAITING, pending).await.is_ok() {
        panic!("{what} got an answer; it should be waiting for the server");
    }
}

/// Waits for a waiting query's answer.
async fn served(pending: Pending, what: &str) -> String {
    let result = tokio::time::timeout(PROMPTLY, pending).await;
    let result = result.unwrap_or_else(|_| panic!("{what} still waiting after {PROMPTLY:?}"));
    result
        .unwrap()
        .unwrap_or_else(|e| panic!("{what}: {}", describe(&e)))
        .unwrap_or_else(|| panic!("{what}: no row"))
}

/// A client that has never had a server asks for one while the pool's only server is
/// pinned: refused with 53300 once query_wait_timeout (1 s in these tests) runs out.
async fn assert_newcomer_refused(proxy: &Proxy, what: &str) {
    let newcomer = open(proxy).await;
    let started = Instant::now();
    let result = try_value(&newcomer.client, "SELECT 'newcomer'").await;
    let waited = started.elapsed();
    assert_eq!(sqlstate(result, what), "53300", "{what}");
    assert!(
        waited >= Duration::from_millis(900),
        "{what}: refused after {waited:?}, before query_wait_timeout"
    );
}

/// Polls pg_stat_activity until a backend of app is running a statement containing
/// `needle` (and, if given, with that application_name).
async fn wait_until_running(admin: &Client, needle: &str, application_name: Option<&str>) {
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' \
               AND state = 'active' AND strpos(query, $1) > 0 \
               AND ($2::text IS NULL OR application_name = $2::text)";
    let deadline = Instant::now() + PROMPTLY;
    loop {
        let row = admin.query_one(sql, &[&needle, &application_name]).await;
        let count: i64 = row.unwrap().get(0);
        if count > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no backend of app ran {needle:?} within {PROMPTLY:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Samples `backend_count("app")` every 50 ms until `done`; returns the most seen.
async fn most_backends(pg: &PgServer, user: &str, done: &AtomicBool) -> i64 {
    let mut most = 0;
    loop {
        most = most.max(pg.backend_count(user).await);
        if done.load(Ordering::Relaxed) {
            return most;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- 1. transaction boundaries ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_take_turns_on_one_server_between_transactions() {
    let pg = PgServer::start();
    let proxy = start_proxy(&config(&pg, &[("pool_size", "1")])).await;
    let a = open(&proxy).await;
    let b = open(&proxy).await;

    // Neither client keeps the server between its queries: both use the same backend.
    let server = pid(&a.client).await;
    for _ in 0..3 {
        assert_eq!(pid(&b.client).await, server);
        assert_eq!(pid(&a.client).await, server);
    }
    exec(&a.client, "SELECT 1; SELECT 2; SELECT 3").await;
    let answer = a
        .client
        .query_typed("SELECT $1::int + 1", &[(&41i32, Type::INT4)])
        .await
        .unwrap_or_else(|e| panic!("query_typed: {}", describe(&e)));
    assert_eq!(answer[0].get::<_, i32>(0), 42);
    assert_eq!(pid(&b.client).await, server);
    assert_eq!(pg.backend_count("app").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_holds_the_server_until_commit() {
    let pg = PgServer::start();
    let proxy = start_proxy(&config(&pg, &[("pool_size", "1")])).await;
    let a = open(&proxy).await;
    let b = open(&proxy).await;
    let server = pid(&a.client).await;

    exec(&a.client, "BEGIN").await;
    let mut waiting = spawn_value(&b.client, "SELECT 'b ran'");
    assert_waiting(&mut waiting, "B's query while A is inside BEGIN").await;
    // A goes on inside its transaction, over both protocols; B keeps waiting.
    assert_eq!(pid(&a.client).await, server);
    let answer = a
        .client
        .query_typed("SELECT $1::int * 2", &[(&21i32, Type::INT4)])
        .await
        .unwrap_or_else(|e| panic!("query_typed inside BEGIN: {}", describe(&e)));
    assert_eq!(answer[0].get::<_, i32>(0), 42);
    assert_waiting(&mut waiting, "B's query while A is inside BEGIN").await;

    exec(&a.client, "COMMIT").await;
    assert_eq!(served(waiting, "B after A's COMMIT").await, "b ran");
    assert_eq!(pid(&b.client).await, server);

    // BEGIN sent together with other statements in one Query also holds it.
    exec(&a.client, "BEGIN; SELECT 1").await;
    let mut waiting = spawn_value(&b.client, "SELECT 'b ran again'");
    assert_waiting(
        &mut waiting,
        "B's query while A's multi-statement BEGIN is open",
    )
    .await;
    exec(&a.client, "COMMIT").await;
    assert_eq!(
        served(waiting, "B after the second COMMIT").await,
        "b ran again"
    );
    assert_eq!(pg.backend_count("app").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transaction_holds_the_server_until_rollback() {
    let pg = PgServer::start();
    let proxy = start_proxy(&config(&pg, &[("pool_size", "1")])).await;
    let a = open(&proxy).await;
    let b = open(&proxy).await;
    let server = pid(&a.client).await;

    let failed = a.client.batch_execute("BEGIN; SELECT 1/0").await;
    assert_eq!(sqlstate(failed, "SELECT 1/0"), "22012");
    let mut waiting = spawn_value(&b.client, "SELECT 'b ran'");
    assert_waiting(&mut waiting, "B's query while A's transaction is failed").await;
    // A is still in its failed transaction, on its server.
    let aborted = try_value(&a.client, "SELECT 1").await;
    assert_eq!(
        sqlstate(aborted, "a query in A's failed transaction"),
        "25P02"
    );
    assert_waiting(&mut waiting, "B's query while A's transaction is failed").await;

    exec(&a.client, "ROLLBACK").await;
    assert_eq!(served(waiting, "B after A's ROLLBACK").await, "b ran");
    // B got a working server, not the aborted transaction; A goes on too.
    assert_eq!(value(&b.client, "SELECT 'b works'").await, "b works");
    assert_eq!(pid(&b.client).await, server);
    assert_eq!(value(&a.client, "SELECT 'a works'").await, "a works");
    assert_eq!(pg.backend_count("app").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_extended_queries_get_their_own_answers() {
    let pg = PgServer::start();
    let direct = appdb_superuser(&pg).await;
    exec(
        &direct,
        "CREATE TABLE piped(i int); GRANT ALL ON piped TO app",
    )
    .await;
    let proxy = start_proxy(&config(&pg, &[("pool_size", "1")])).await;
    let a = open(&proxy).await;
    let b = open(&proxy).await;

    // 50 statements in flight at once (Parse/Bind/Describe/Execute/Sync each), while B
    // runs its own queries on the same single server.
    let inputs: Vec<i32> = (0..50).collect();
    let b_client = b.client.clone();
    let b_loop = tokio::spawn(async move {
        for i in 0..20 {
            let got = try_value(&b_client, &format!("SELECT {i}")).await;
            assert_eq!(got.unwrap().as_deref(), Some(i.to_string().as_str()));
        }
    });
    let params: Vec<[(&(dyn ToSql + Sync), Type); 1]> = inputs
        .iter()
        .map(|i| [(i as &(dyn ToSql + Sync), Type::INT4)])
        .collect();
    let queries = params
        .iter()
        .map(|p| a.client.query_typed("SELECT $1::int * 2", p));
    let answers = future::join_all(queries).await;
    for (i, answer) in inputs.iter().zip(answers) {
        let rows = answer.unwrap_or_else(|e| panic!("pipelined query {i}: {}", describe(&e)));
        assert_eq!(rows[0].get::<_, i32>(0), i * 2);
    }

    // A whole transaction pipelined: BEGIN, inserts, COMMIT.
    let mut steps = vec![a.client.query_typed("BEGIN", &[])];
    for p in &params[..10] {
        steps.push(a.client.query_typed("INSERT INTO piped VALUES ($1)", p));
    }
    steps.push(a.client.query_typed("COMMIT", &[]));
    for result in future::join_all(steps).await {
        result.unwrap_or_else(|e| panic!("pipelined transaction: {}", describe(&e)));
    }
    b_loop.await.unwrap();
    assert_eq!(value(&b.client, "SELECT count(*) FROM piped").await, "10");
    assert_eq!(pg.backend_count("app").await, 1);
}

// ---- 2. what a client leaves on a shared server ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_settings_follow_their_client_between_transactions() {
    let pg = PgServer::start();
    let proxy = start_proxy(&config(&pg, &[("pool_size", "1")])).await;
    let a = open(&proxy).await;
    let b = open(&proxy).await;
    let server = pid(&a.client).await;
    let (a, b) = (&a.client, &b.client);
    let default_path = show(b, "search_path").await;

    exec(a, "SET work_mem = '7MB'").await;
    assert_eq!(show(b, "work_mem").await, "4MB", "B sees A's SET");
    assert_eq!(show(a, "work_mem").await, "7MB", "A lost its SET");
    assert_eq!(pid(b).await, server);

    exec(a, "SELECT set_config('application_name', 'a2', false)").await;
    assert_eq!(
        show(b, "application_name").await,
        "",
        "B sees A's set_config"
    );
    assert_eq!(show(a, "application_name").await, "a2");

    exec(a, "BEGIN; SET LOCAL work_mem = '9MB'").await;
    assert_eq!(show(a, "work_mem").await, "9MB");
    exec(a, "COMMIT").await;
    assert_eq!(
        show(a, "work_mem").await,
        "7MB",
        "SET LOCAL outlived COMMIT"
    );
    assert_eq!(show(b, "work_mem").await, "4MB");

    exec(a, "BEGIN; SET work_mem = '8MB'; ROLLBACK").await;
    assert_eq!(show(a, "work_mem").await, "7MB", "a rolled back SET stuck");
    exec(a, "BEGIN; SET search_path = a_schema, public; COMMIT").await;
    assert_eq!(show(a, "search_path").await, "a_schema, public");
    assert_eq!(show(b, "search_path").await, default_path);

    // B's own SET follows B, and A keeps its values.
    exec(b, "SET work_mem = '5MB'").await;
    assert_eq!(show(a, "work_mem").await, "7MB");
    assert_eq!(show(b, "work_mem").await, "5MB");

    exec(a, "RESET work_mem").await;
    assert_eq!(show(a, "work_mem").await, "4MB", "RESET work_mem");
    assert_eq!(show(a, "application_name").await, "a2", "RESET took more");

    exec(a, "SET work_mem = '7MB'").await;
    exec(a, "RESET ALL").await;
    assert_eq!(show(a, "work_mem").await, "4MB", "RESET ALL: work_mem");
    assert_eq!(show(a, "application_name").await, "", "RESET ALL: app name");
    assert_eq!(
        show(a, "search_path").await,
        default_path,
        "RESET ALL: path"
    );
    assert_eq!(show(b, "work_mem").await, "5MB");
    assert_eq!(pid(a).await, server);
    assert_eq!(pid(b).await, server);
    assert_eq!(pg.backend_count("app").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_role_stays_with_its_client() {
    let pg = PgServer::start();
    let admin = pg.admin().await;
    exec(&admin, "CREATE ROLE r1; GRANT r1 TO app").await;
    let proxy = start_proxy(&config(&pg, &[("pool_size", "1")])).await;
    let a = open(&proxy).await;
    let b = open(&proxy).await;
    let server = pid(&a.client).await;
    let (a, b) = (&a.client, &b.client);

    exec(a, "SET ROLE r1").await;
    assert_eq!(value(a, "SELECT current_user").await, "r1");
    assert_eq!(pid(b).await, server);
    assert_eq!(
        value(b, "SELECT current_user").await,
        "app",
        "B runs as the role A set"
    );
    assert_eq!(
        value(a, "SELECT current_user").await,
        "r1",
        "A lost its SET ROLE"
    );
    exec(a, "RESET ROLE").await;
    assert_eq!(value(a, "SELECT current_user").await, "app");
    assert_eq!(value(b, "SELECT current_user").await, "app");
}

/// State that cannot follow its client: what creates it, what uses it later (run twice,
/// with the answers expected), and a query that is true once it is gone.
struct Unmovable {
    what: &'static str,
    create: &'static str,
    uses: (&'static str, [&'static str; 2]),
    gone: &'static str,
}

const UNMOVABLE: [Unmovable; 3] = [
    Unmovable {
        what: "CREATE TEMP TABLE",
        create: "CREATE TEMP TABLE tt(x int)",
        uses: (
            "INSERT INTO tt VALUES (1); SELECT count(*) FROM tt",
            ["1", "2"],
        ),
        gone: "SELECT to_regclass('pg_temp.tt') IS NULL",
    },
    Unmovable {
        what: "SELECT INTO TEMP",
        create: "SELECT 1 AS x INTO TEMP st",
        uses: (
            "INSERT INTO st VALUES (2); SELECT count(*) FROM st",
            ["2", "3"],
        ),
        gone: "SELECT to_regclass('pg_temp.st') IS NULL",
    },
    Unmovable {
        what: "DECLARE ... WITH HOLD",
        create: "DECLARE c CURSOR WITH HOLD FOR SELECT generate_series(1, 3)",
        uses: ("FETCH NEXT FROM c", ["1", "2"]),
        gone: "SELECT count(*) = 0 FROM pg_cursors",
    },
];

/// pool_size 1: once A has made the state, nobody else gets the server (a newcomer is
/// refused after query_wait_timeout), A uses its state in later transactions, and after A
/// leaves the server is reset and reused without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmovable_state_pins_its_client_until_it_leaves() {
    let pg = PgServer::start();
    let settings = [("pool_size", "1"), ("query_wait_timeout", "\"1s\"")];
    for case in UNMOVABLE {
        let what = case.what;
        let proxy = start_proxy(&config(&pg, &settings)).await;
        let a = open(&proxy).await;
        let server = pid(&a.client).await;
        exec(&a.client, case.create).await;

        assert_newcomer_refused(&proxy, &format!("a newcomer after A's {what}")).await;
        let (sql, expected) = case.uses;
        for expected in expected {
            assert_eq!(value(&a.client, sql).await, expected, "{what}: {sql}");
        }
        assert_eq!(pid(&a.client).await, server, "{what}: A moved");
        assert_eq!(pg.backend_count("app").await, 1, "{what}");

        a.close().await;
        let next = open(&proxy).await;
        assert_eq!(value(&next.client, case.gone).await, "t", "{what} survived");
        assert_eq!(pid(&next.client).await, server, "{what}: server not reused");
        next.close().await;
        proxy.stop().await;
    }
}

/// Named statements follow their client from server to server (tests/prepared.rs), so they
/// pin nobody; with `max_prepared_statements = 0` they pin their client instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_prepared_statements_follow_their_client_or_pin_when_disabled() {
    let pg = PgServer::start();
    let settings = [("pool_size", "1"), ("query_wait_timeout", "\"1s\"")];
    let proxy = start_proxy(&config(&pg, &settings)).await;
    let a = open(&proxy).await;
    let b = open(&proxy).await;
    let statement = a.client.prepare("SELECT $1::int + 1").await.unwrap();
    assert_eq!(
        value(&b.client, "SELECT 'b'").await,
        "b",
        "B blocked by A's prepare()"
    );
    let row = a.client.query_one(&statement, &[&41i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    a.close().await;
    b.close().await;
    proxy.stop().await;

    let settings = [
        ("pool_size", "1"),
        ("query_wait_timeout", "\"1s\""),
        ("max_prepared_statements", "0"),
    ];
    let proxy = start_proxy(&config(&pg, &settings)).await;
    let a = open(&proxy).await;
    let b = open(&proxy).await;
    let server = pid(&a.client).await;

    let unnamed = a
        .client
        .query_typed("SELECT $1::int + 1", &[(&1i32, Type::INT4)])
        .await;
    assert_eq!(unnamed.unwrap()[0].get::<_, i32>(0), 2);
    assert_eq!(pid(&b.client).await, server, "query_typed pinned A");
    b.close().await;

    let statement = a.client.prepare("SELECT $1::int + 1").await.unwrap();
    assert_newcomer_refused(&proxy, "a newcomer after A's prepare()").await;
    let row = a.client.query_one(&statement, &[&41i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(pid(&a.client).await, server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listening_client_is_pinned_and_gets_its_notifications() {
    let pg = PgServer::start();
    let proxy = start_proxy(&config(&pg, &[("pool_size", "2")])).await;
    let mut a = open(&proxy).await;
    exec(&a.client, "LISTEN chan").await;
    let a_server = pid(&a.client).await;
    // Counted by reason on its pool.
    let pools = proxy.ctx.pools.all();
    let reasons: Vec<_> = pools.iter().flat_map(|p| p.pinned_by_reason()).collect();
    assert_eq!(reasons, [("LISTEN", 1)], "pinned clients by reason");

    // The other server is all B and C have.
    let mut b = open(&proxy).await;
    let mut c = open(&proxy).await;
    let other = pid(&b.client).await;
    assert_ne!(other, a_server, "B got the listening client's server");
    assert_eq!(pid(&c.client).await, other);

    exec(&b.client, "NOTIFY chan, 'hello'").await;
    let note = a.notification("A after B's NOTIFY").await;
    assert_eq!((note.channel(), note.payload()), ("chan", "hello"));
    assert_eq!(note.process_id().to_string(), other);

    // A still listens in later transactions, on its own server.
    let channels = "SELECT string_agg(c, ',') FROM pg_listening_channels() c";
    assert_eq!(value(&a.client, channels).await, "chan");
    assert_eq!(pid(&a.client).await, a_server);
    exec(&c.client, "SELECT pg_notify('chan', 'second')").await;
    let note = a.notification("A after C's pg_notify").await;
    assert_eq!(note.payload(), "second");
    assert!(b.notifications.try_recv().is_err() && c.notifications.try_recv().is_err());
    assert_eq!(pg.backend_count("app").await, 2);

    // After A leaves, nobody inherits its LISTEN, and nobody is counted pinned.
    a.close().await;
    for _ in 0..100 {
        if pools.iter().all(|p| p.pinned_by_reason().is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(pools
        .iter()
        .all(|p| p.pinned_by_reason().is_empty() && p.pinned_clients() == 0));
    let d = open(&proxy).await;
    // One holds a server in a transaction, so the other gets the second server: both
    // servers are checked, and neither carries A's LISTEN.
    exec(&b.client, "BEGIN").await;
    let none = "SELECT count(*) FROM pg_listening_channels()";
    assert_eq!(value(&b.client, none).await, "0", "A's LISTEN survived");
    assert_eq!(value(&d.client, none).await, "0", "A's LISTEN survived");
    let mut servers = [pid(&b.client).await, pid(&d.client).await];
    servers.sort();
    let mut expected = [a_server, other];
    expected.sort();
    assert_eq!(servers, expected, "A's server was not reset and reused");
    exec(&b.client, "COMMIT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_advisory_lock_pins_its_client_and_goes_with_it() {
    let pg = PgServer::start();
    let proxy = start_proxy(&config(&pg, &[("pool_size", "2")])).await;
    let a = open(&proxy).await;
    assert_eq!(value(&a.client, "SELECT pg_advisory_lock(42)").await, "");
    let a_server = pid(&a.client).await;

    // B asks with the transaction-level variant, which does not pin B itself.
    let b = open(&proxy).await;
    let c = open(&proxy).await;
    let try_lock = "SELECT pg_try_advisory_xact_lock(42)";
    assert_eq!(value(&b.client, try_lock).await, "f", "A's lock was lost");
    let other = pid(&b.client).await;
    assert_ne!(other, a_server);
    assert_eq!(pid(&c.client).await, other);
    let held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
                AND pid = pg_backend_pid()";
    assert_eq!(value(&a.client, held).await, "1");
    assert_eq!(pid(&a.client).await, a_server);

    a.close().await;
    let deadline = Instant::now() + PROMPTLY;
    while value(&b.client, try_lock).await != "t" {
        assert!(
            Instant::now() < deadline,
            "A's advisory lock still held {PROMPTLY:?} after A left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- 3. startup parameters ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_keeps_its_startup_parameters_on_a_shared_server() {
    let pg = PgServer::start();
    let proxy = start_proxy(&config(&pg, &[("pool_size", "1")])).await;
    let one = open_with(&proxy, |c| {
        c.application_name("one");
    })
    .await;
    let two = open_with(&proxy, |c| {
        c.application_name("two")
            .options("-c statement_timeout=1234 -c search_path=two_schema");
    })
    .await;
    let plain = open(&proxy).await;
    let settings = "SELECT current_setting('application_name') || '|' || \
                    current_setting('statement_timeout') || '|' || current_setting('search_path')";
    let server = pid(&one.client).await;
    let default_path = show(&plain.client, "search_path").await;
    for round in 0..5 {
        assert_eq!(
            value(&one.client, settings).await,
            format!("one|0|{default_path}"),
            "round {round}"
        );
        assert_eq!(
            value(&two.client, settings).await,
            "two|1234ms|two_schema",
            "round {round}"
        );
        assert_eq!(
            value(&plain.client, settings).await,
            format!("|0|{default_path}"),
            "round {round}"
        );
    }
    // Postgres sees each client's name while it runs.
    let name = "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()";
    assert_eq!(value(&two.client, name).await, "two");
    assert_eq!(value(&one.client, name).await, "one");
    // A client's SET changes its own value only.
    exec(&one.client, "SET statement_timeout = '5s'").await;
    assert_eq!(value(&two.client, settings).await, "two|1234ms|two_schema");
    assert_eq!(
        value(&one.client, settings).await,
        format!("one|5s|{default_path}")
    );
    assert_eq!(pid(&two.client).await, server);
    assert_eq!(pg.backend_count("app").await, 1);
}

/// In Postgres, RESET ALL (and DISCARD ALL) return each setting to its value at
/// connection time: startup parameters survive. Through a pool they must too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_all_keeps_startup_parameters_as_postgres_does() {
    let pg = PgServer::start();
    let proxy = start_proxy(&config(&pg, &[("pool_size", "1")])).await;
    let setup = |c: &mut tokio_postgres::Config| {
        c.application_name("one")
            .options("-c statement_timeout=1234");
    };
    let settings = "SELECT current_setting('application_name') || '|' || \
                    current_setting('statement_timeout') || '|' || current_setting('work_mem')";

    // What Postgres itself does, for reference.
    let mut direct = tokio_postgres::Config::new();
    direct
        .host("127.0.0.1")
        .port(pg.port)
        .user("app")
        .password("app_pw")
        .dbname(DB);
    setup(&mut direct);
    let (direct, connection) = direct.connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    exec(
        &direct,
        "SET statement_timeout = '5s'; SET work_mem = '7MB'; RESET ALL",
    )
    .await;
    assert_eq!(value(&direct, settings).await, "one|1234ms|4MB");
    drop(direct);
    pg.wait_backends("app", 0).await;

    let one = open_with(&proxy, setup).await;
    let other = open(&proxy).await;
    for reset in ["RESET ALL", "DISCARD ALL"] {
        exec(
            &one.client,
            "SET statement_timeout = '5s'; SET work_mem = '7MB'",
        )
        .await;
        assert_eq!(value(&one.client, settings).await, "one|5s|7MB");
        exec(&one.client, reset).await;
        assert_eq!(
            value(&one.client, settings).await,
            "one|1234ms|4MB",
            "after {reset}"
        );
        assert_eq!(value(&other.client, settings).await, "|0|4MB");
        assert_eq!(
            value(&one.client, settings).await,
            "one|1234ms|4MB",
            "after {reset} and another client's turn"
        );
    }
}

// ---- 4. many clients ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_share_five_servers() {
    const CLIENTS: i32 = 200;
    const TRANSACTIONS: i32 = 50;
    let pg = PgServer::start();
    let direct = appdb_superuser(&pg).await;
    exec(
        &direct,
        "CREATE TABLE t(c int, i int); CREATE INDEX ON t(c); GRANT ALL ON t TO app",
    )
    .await;
    let settings = [
        ("pool_size", "5"),
        ("max_client_conn", "400"),
        ("query_wait_timeout", "\"60s\""),
    ];
    let proxy = start_proxy(&config(&pg, &settings)).await;
    let port = proxy.addr.port();

    let started = Instant::now();
    let done = AtomicBool::new(false);
    let workers: Vec<JoinHandle<Result<(), String>>> = (0..CLIENTS)
        .map(|c| {
            tokio::spawn(async move {
                let conn = try_open_with(port, |_| {}).await;
                let conn = conn.map_err(|e| format!("client {c}: connect: {}", describe(&e)))?;
                for i in 0..TRANSACTIONS {
                    let sql = format!(
                        "BEGIN; INSERT INTO t VALUES ({c}, {i}); \
                         SELECT count(*) FROM t WHERE c = {c}; COMMIT"
                    );
                    let count = try_value(&conn.client, &sql).await;
                    let count = count.map_err(|e| format!("client {c} #{i}: {}", describe(&e)))?;
                    if count != Some((i + 1).to_string()) {
                        return Err(format!(
                            "client {c} #{i}: count {count:?}, expected {}",
                            i + 1
                        ));
                    }
                }
                conn.close().await;
                Ok(())
            })
        })
        .collect();
    let all = async {
        let mut failures = Vec::new();
        for worker in workers {
            if let Err(e) = worker.await.unwrap() {
                failures.push(e);
            }
        }
        done.store(true, Ordering::Relaxed);
        failures
    };
    let (failures, most) = tokio::join!(all, most_backends(&pg, "app", &done));
    let elapsed = started.elapsed();
    eprintln!(
        "{CLIENTS} clients x {TRANSACTIONS} transactions in {elapsed:?}, at most {most} backends"
    );
    assert!(
        failures.is_empty(),
        "{} clients failed, first: {}",
        failures.len(),
        failures[0]
    );
    assert!(most <= 5, "Postgres saw {most} backends with pool_size = 5");
    assert!(most > 0, "no backend was ever seen: the sampling is broken");
    let total = value(&direct, "SELECT count(*) FROM t").await;
    assert_eq!(total, (CLIENTS * TRANSACTIONS).to_string());
    let per_client = "SELECT count(*) FROM (SELECT c FROM t GROUP BY c \
                      HAVING count(*) = 50 AND count(DISTINCT i) = 50) full_clients";
    assert_eq!(value(&direct, per_client).await, CLIENTS.to_string());
}

// ---- 5. pgbench ----

/// `pgbench` as app (password app_pw) against 127.0.0.1:`port`, database appdb.
fn pgbench_command(port: u16, args: &[&str]) -> Command {
    pgbench::pgbench_command(port, "app", "app_pw", DB, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_hundred_clients_over_ten_servers() {
    let pg = PgServer::start();
    // The tables are made directly on Postgres, as app in its own database.
    let mut init = pgbench_command(pg.port, &["-i", "-q", "-s", "1"]);
    let out = tokio::task::spawn_blocking(move || init.output().expect("run pgbench -i"))
        .await
        .unwrap();
    assert!(out.status.success(), "pgbench -i:\n{}", output_text(&out));
    let settings = [
        ("pool_size", "10"),
        ("max_client_conn", "300"),
        ("query_wait_timeout", "\"60s\""),
    ];
    let proxy = start_proxy(&config(&pg, &settings)).await;

    for mode in ["simple", "extended", "prepared"] {
        let args = ["-S", "-c", "100", "-j", "2", "-T", "5", "-M", mode];
        let mut cmd = pgbench_command(proxy.addr.port(), &args);
        let started = Instant::now();
        let done = Arc::new(AtomicBool::new(false));
        let finished = done.clone();
        let run = tokio::task::spawn_blocking(move || {
            let out = cmd.output().expect("run pgbench");
            finished.store(true, Ordering::Relaxed);
            out
        });
        let most = most_backends(&pg, "app", &done).await;
        let out = run.await.unwrap();
        let output = output_text(&out);
        eprintln!(
            "pgbench -M {mode}: {:?}, at most {most} backends",
            started.elapsed()
        );
        assert!(out.status.success(), "pgbench -M {mode} failed:\n{output}");
        assert!(
            output.contains("number of failed transactions: 0 "),
            "pgbench -M {mode} reports failures:\n{output}"
        );
        assert!(processed(&output) > 0, "no transactions:\n{output}");
        assert!(
            most <= 10,
            "-M {mode}: Postgres saw {most} backends with pool_size = 10"
        );
        assert!(most > 0, "no backend was ever seen: the sampling is broken");
    }
    proxy.stop().await;
}

// ---- 6. leaving mid-transaction ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_mid_transaction_never_commits_anything() {
    let pg = PgServer::start();
    let direct = appdb_superuser(&pg).await;
    exec(
        &direct,
        "CREATE TABLE dirty(x int); GRANT ALL ON dirty TO app",
    )
    .await;
    let proxy = start_proxy(&config(&pg, &[("pool_size", "1")])).await;
    let admin = pg.admin().await;

    for abort in [true, false] {
        let how = if abort { "aborted" } else { "terminated" };
        let a = open(&proxy).await;
        exec(&a.client, "BEGIN; INSERT INTO dirty VALUES (1)").await;
        let a_server = pid(&a.client).await;
        if abort {
            a.abort().await;
        } else {
            a.close().await;
        }
        let b = open(&proxy).await;
        let count = "SELECT count(*) FROM dirty";
        assert_eq!(value(&b.client, count).await, "0", "{how}: row visible");
        assert_eq!(
            try_value(&b.client, "SELECT txid_current_if_assigned()")
                .await
                .unwrap(),
            None,
            "{how}: B is inside A's transaction"
        );
        assert_ne!(
            pid(&b.client).await,
            a_server,
            "{how}: A's server was reused"
        );
        pg.wait_backends("app", 1).await;
        assert_eq!(value(&direct, count).await, "0", "{how}: row committed");
        b.close().await;
    }

    // Leaving while a statement of the transaction runs: cancelled, closed, never committed.
    let a = open(&proxy).await;
    let a_server = pid(&a.client).await;
    exec(&a.client, "BEGIN; INSERT INTO dirty VALUES (2)").await;
    let _running = spawn_value(&a.client, "SELECT pg_sleep(30)");
    wait_until_running(&admin, "pg_sleep(30)", None).await;
    let left = Instant::now();
    a.abort().await;
    let b = open(&proxy).await;
    assert_eq!(value(&b.client, "SELECT count(*) FROM dirty").await, "0");
    assert_ne!(pid(&b.client).await, a_server);
    assert!(
        left.elapsed() < PROMPTLY,
        "the next client waited {:?} for the abandoned server",
        left.elapsed()
    );
    pg.wait_backends("app", 1).await;
}

// ---- 7. cancel requests ----

/// The statements Postgres reports it cancelled, from its log ("ERROR: canceling
/// statement due to user request" and the STATEMENT line after it), with the backend pid.
fn cancelled_statements(pg: &PgServer) -> Vec<String> {
    let log = pg.log();
    let mut lines = log.lines().peekable();
    let mut out = Vec::new();
    while let Some(line) = lines.next() {
        if line.contains("canceling statement due to user request") {
            let statement = lines.next_if(|l| l.contains("STATEMENT:"));
            out.push(statement.unwrap_or(line).to_owned());
        }
    }
    out
}

/// `n` clients of the proxy on `port` running `SELECT pg_sleep(0.005)` until `stop`,
/// counting their queries in `queries`; each returns its failures. A client whose
/// connection is closed stops there.
fn spawn_busy_clients(
    port: u16,
    n: usize,
    stop: &Arc<AtomicBool>,
    queries: &Arc<AtomicUsize>,
) -> Vec<JoinHandle<Vec<String>>> {
    (0..n)
        .map(|n| {
            let (stop, queries) = (stop.clone(), queries.clone());
            tokio::spawn(async move {
                let conn = try_open_with(port, |_| {}).await.unwrap();
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let result = try_value(&conn.client, "SELECT pg_sleep(0.005)").await;
                    queries.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = result {
                        failures.push(format!("client {n}: {}", describe(&e)));
                        if conn.client.is_closed() {
                            failures.push(format!("client {n}: connection closed"));
                            break;
                        }
                    }
                }
                conn.close().await;
                failures
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_clients_own_query() {
    let pg = PgServer::start();
    let admin = pg.admin().await;
    let proxy = start_proxy(&config(&pg, &[("pool_size", "2")])).await;
    let a = open(&proxy).await;
    let token = a.client.cancel_token();

    let started = Instant::now();
    let sleeper = spawn_value(&a.client, "SELECT pg_sleep(30)");
    wait_until_running(&admin, "pg_sleep(30)", None).await;
    token
        .cancel_query(NoTls)
        .await
        .unwrap_or_else(|e| panic!("send cancel request: {}", describe(&e)));
    let result = tokio::time::timeout(PROMPTLY, sleeper)
        .await
        .expect("the cancelled query still runs")
        .unwrap();
    assert_eq!(sqlstate(result, "cancelled pg_sleep(30)"), "57014");
    assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
    assert_eq!(value(&a.client, "SELECT 'usable'").await, "usable");
}

/// 20 clients run short queries over pool_size 2 while another cancels its own long
/// query again and again: every cancel stops that query, and nobody else is cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_reach_only_the_cancelling_client() {
    let pg = PgServer::start();
    let admin = pg.admin().await;
    let proxy = start_proxy(&config(&pg, &[("pool_size", "2")])).await;
    let port = proxy.addr.port();
    let canceller = open_with(&proxy, |c| {
        c.application_name("canceller");
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let queries = Arc::new(AtomicUsize::new(0));
    let others = spawn_busy_clients(port, 20, &stop, &queries);

    for round in 0..10 {
        let token = canceller.client.cancel_token();
        let sleeper = spawn_value(&canceller.client, "SELECT pg_sleep(10)");
        wait_until_running(&admin, "pg_sleep(10)", Some("canceller")).await;
        token.cancel_query(NoTls).await.unwrap();
        let result = tokio::time::timeout(PROMPTLY, sleeper)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the cancelled query still runs"))
            .unwrap();
        assert_eq!(sqlstate(result, "the canceller's pg_sleep(10)"), "57014");
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for other in others {
        failures.extend(other.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "other clients failed ({} of {} queries): {failures:?}\ncancelled in Postgres: {:#?}",
        failures.len(),
        queries.load(Ordering::Relaxed),
        cancelled_statements(&pg)
    );
    assert!(pg.backend_count("app").await <= 2);
}

/// A cancel that arrives around the end of its client's query, when the server may already
/// be running another client's query, must not cancel that other client. The canceller's
/// 50 ms query is seen running, then cancelled 0 to 60 ms later, so that some cancels
/// stop it and some arrive just after it ended, while 20 clients queue for its server.
/// (The varying delay is the condition under test, not synchronisation.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_cancel_never_hits_another_client() {
    const ROUNDS: u64 = 100;
    let pg = PgServer::start();
    let admin = pg.admin().await;
    let proxy = start_proxy(&config(&pg, &[("pool_size", "2")])).await;
    let port = proxy.addr.port();
    let canceller = open_with(&proxy, |c| {
        c.application_name("canceller");
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let queries = Arc::new(AtomicUsize::new(0));
    let others = spawn_busy_clients(port, 20, &stop, &queries);

    let (mut cancelled, mut finished) = (0, 0);
    let mut canceller_failures = Vec::new();
    for round in 0..ROUNDS {
        let token = canceller.client.cancel_token();
        let mut query = spawn_value(&canceller.client, "SELECT pg_sleep(0.05)");
        let result = tokio::select! {
            _ = wait_until_running(&admin, "pg_sleep(0.05)", Some("canceller")) => {
                tokio::time::sleep(Duration::from_millis(round % 61)).await;
                token.cancel_query(NoTls).await.unwrap();
                query.await.unwrap()
            }
            // Over before it was seen running: nothing to cancel this round.
            result = &mut query => result.unwrap(),
        };
        match result {
            Ok(_) => finished += 1,
            Err(e) if e.code().map(|c| c.code()) == Some("57014") => cancelled += 1,
            Err(e) => {
                canceller_failures.push(format!("round {round}: {}", describe(&e)));
                if canceller.client.is_closed() {
                    break;
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for other in others {
        failures.extend(other.await.unwrap());
    }
    let queries = queries.load(Ordering::Relaxed);
    eprintln!(
        "canceller: {cancelled} cancelled, {finished} finished first; others ran {queries} queries"
    );
    assert!(
        failures.is_empty(),
        "other clients were hit ({} failures of {queries} queries): {failures:?}\n\
         cancelled in Postgres: {:#?}",
        failures.len(),
        cancelled_statements(&pg)
    );
    assert!(
        canceller_failures.is_empty(),
        "the canceller failed otherwise than with 57014: {canceller_failures:?}"
    );
    assert!(
        cancelled > 0 && finished > 0,
        "the cancels did not straddle the end of the query: {cancelled} cancelled, \
         {finished} finished first"
    );
}
