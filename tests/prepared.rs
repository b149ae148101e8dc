//! Named prepared statements in transaction mode (issue 4): protocol-level statements work
//! across transactions and servers without pinning the client, clients never see each
//! other's names, identical statements share one server-side statement, the number per
//! server is bounded, errors are Postgres's own, and real drivers (tokio-postgres, sqlx,
//! pgbench -M prepared) work with their statement caches.
//!
//! Raw-protocol sequences run twice, against Postgres directly and through pgwarden, and
//! must get the same replies (see `common::prepared::same_as_direct`); the tests also assert
//! the values and SQLSTATEs expected.

mod common;

use std::collections::HashSet;
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::pgbench::{output_text, pgbench_command, processed};
use common::prepared::{
    assert_error, bind, close, describe, errors, execute, hold, parse, pid, query, release, rows,
    run_named, same_as_direct, shape, single, step, sync, transaction_config, value, RawClient,
    Reply, RAW_DB, RAW_USER,
};
use common::{describe as describe_error, start_proxy, PgServer, Proxy};
use tokio_postgres::Client;

/// Long enough for anything that should happen promptly on a loaded 2-core machine.
const PROMPTLY: Duration = Duration::from_secs(5);

async fn start_pg() -> PgServer {
    tokio::task::spawn_blocking(PgServer::start).await.unwrap()
}

/// A tokio-postgres client of the proxy as app on appdb (trust through the proxy).
async fn app(proxy: &Proxy) -> Client {
    proxy.connect("app", "app_pw", "appdb").await
}

/// A tokio-postgres client of the proxy as the raw clients' role (trust_user on postgres).
async fn trust(proxy: &Proxy) -> Client {
    proxy.connect(RAW_USER, "", RAW_DB).await
}

fn does_not_exist(name: &str) -> String {
    format!("prepared statement \"{name}\" does not exist")
}

// 1. Protocol-level named statements across transactions and servers.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_named_statement_is_used_in_many_transactions_on_both_servers() {
    let pg = start_pg().await;
    let proxy = start_proxy(&transaction_config(&pg, 2, "")).await;
    let (h1, h2) = (trust(&proxy).await, trust(&proxy).await);
    let holders = [&h1, &h2];
    let mut raw = RawClient::proxied(&proxy).await;

    let sql = "select pg_backend_pid()::text, ($1::int * 2)::text";
    let parsed = raw.run(&[parse("s1", sql), sync()].concat(), 1).await;
    assert_eq!(shape(&parsed), "1ZI", "{parsed:?}");
    let first = raw.run(&run_named("s1", &["0"]), 1).await;
    assert_eq!(shape(&first), "2DCZI", "{first:?}");
    let mut last = rows(&first)[0][0].clone().unwrap();
    assert_eq!(rows(&first)[0][1].as_deref(), Some("0"));

    let mut servers = HashSet::from([last.clone()]);
    for i in 1..=20 {
        // The server the raw client used last is busy: its transaction gets the other one,
        // which may never have seen s1 under any name.
        let holder = hold(holders, &last).await;
        let replies = raw.run(&run_named("s1", &[&i.to_string()]), 1).await;
        assert_eq!(shape(&replies), "2DCZI", "transaction {i}: {replies:?}");
        let row = &rows(&replies)[0];
        let server = row[0].clone().unwrap();
        assert_eq!(row[1], Some((i * 2).to_string()), "transaction {i}");
        assert_ne!(server, last, "transaction {i} ran on the busy server");
        release(holder).await;
        servers.insert(server.clone());
        last = server;
    }
    assert_eq!(servers.len(), 2, "s1 ran on {servers:?}");

    // Describe of the statement on the other server, and an Execute in the same pipeline.
    let holder = hold(holders, &last).await;
    let pipeline = [describe(b'S', "s1"), run_named("s1", &["21"])].concat();
    let replies = raw.run(&pipeline, 1).await;
    assert_eq!(shape(&replies), "tT2DCZI", "{replies:?}");
    assert_eq!(replies[0], Reply::ParameterDescription(1));
    let columns = vec!["pg_backend_pid".to_owned(), "text".to_owned()];
    assert_eq!(replies[1], Reply::RowDescription(columns));
    assert_eq!(rows(&replies)[0][1].as_deref(), Some("42"));
    assert_ne!(rows(&replies)[0][0].as_ref(), Some(&last));
    release(holder).await;
    assert!(pg.backend_count(RAW_USER).await <= 2);
}

// 2. The same name for different queries in different clients.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_with_the_same_name_for_different_queries_each_get_their_own() {
    let pg = start_pg().await;
    let proxy = start_proxy(&transaction_config(&pg, 1, "")).await;
    let mut steps = vec![
        step(0, [parse("s1", "select 1"), sync()].concat(), 1),
        step(1, [parse("s1", "select 'two', 2"), sync()].concat(), 1),
        step(0, [describe(b'S', "s1"), sync()].concat(), 1),
        step(1, [describe(b'S', "s1"), sync()].concat(), 1),
    ];
    for _ in 0..10 {
        steps.push(step(0, run_named("s1", &[]), 1));
        steps.push(step(1, run_named("s1", &[]), 1));
    }
    let replies = same_as_direct(&pg, &proxy, 2, &steps).await;
    assert_eq!(shape(&replies[0]), "1ZI");
    assert_eq!(shape(&replies[1]), "1ZI");
    assert_eq!(
        replies[2][1],
        Reply::RowDescription(vec!["?column?".into()])
    );
    assert_eq!(
        replies[3][1],
        Reply::RowDescription(vec!["?column?".into(), "?column?".into()])
    );
    for pair in replies[4..].chunks(2) {
        assert_eq!(rows(&pair[0]), vec![vec![Some("1".to_owned())]]);
        assert_eq!(
            rows(&pair[1]),
            vec![vec![Some("two".to_owned()), Some("2".to_owned())]]
        );
    }
}

// 3. Identical statements share one server-side statement.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_statements_of_different_clients_share_one_server_statement() {
    let pg = start_pg().await;
    let proxy = start_proxy(&transaction_config(&pg, 1, "")).await;
    let sql = "select $1::int + 1";
    let mut clients = Vec::new();
    for k in 0..5 {
        let mut raw = RawClient::proxied(&proxy).await;
        let name = format!("stmt{k}");
        let replies = raw.run(&[parse(&name, sql), sync()].concat(), 1).await;
        assert_eq!(shape(&replies), "1ZI", "client {k}: {replies:?}");
        let replies = raw.run(&run_named(&name, &[&k.to_string()]), 1).await;
        assert_eq!(single(&replies), (k + 1).to_string(), "client {k}");
        clients.push(raw);
    }
    // Each still works, in any order.
    for (k, raw) in clients.iter_mut().enumerate().rev() {
        let replies = raw.run(&run_named(&format!("stmt{k}"), &["10"]), 1).await;
        assert_eq!(single(&replies), "11", "client {k}");
    }

    // pool_size 1: this simple query runs on the server every client used.
    let mut check = RawClient::proxied(&proxy).await;
    let same_text =
        format!("select count(*) from pg_prepared_statements where statement = '{sql}'");
    assert_eq!(check.value(&same_text).await, "1", "one server statement");
    let client_names = "select count(*) from pg_prepared_statements where name like 'stmt%'";
    assert_eq!(
        check.value(client_names).await,
        "0",
        "client names reached the server"
    );
    assert_eq!(pg.backend_count(RAW_USER).await, 1);
}

// 4. max_prepared_statements bounds the statements per server.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_prepared_statements_bounds_the_server_and_evicted_ones_still_work() {
    let pg = start_pg().await;
    let config = transaction_config(&pg, 1, "max_prepared_statements = 3");
    let proxy = start_proxy(&config).await;
    let mut raw = RawClient::proxied(&proxy).await;
    let mut check = RawClient::proxied(&proxy).await;
    let on_server = "select count(*) from pg_prepared_statements";

    for k in 0..10 {
        let name = format!("q{k}");
        let sql = format!("select {k} * $1::int");
        let replies = raw.run(&[parse(&name, &sql), sync()].concat(), 1).await;
        assert_eq!(shape(&replies), "1ZI", "q{k}: {replies:?}");
        let replies = raw.run(&run_named(&name, &["1"]), 1).await;
        assert_eq!(single(&replies), k.to_string(), "q{k}");
        let count: usize = check.value(on_server).await.parse().unwrap();
        assert!(
            (1..=3).contains(&count),
            "{count} statements on the server after q{k}"
        );
    }
    // Every name still works, the evicted ones prepared again, newest and oldest first.
    for k in (0..10).chain(0..10).rev() {
        let replies = raw.run(&run_named(&format!("q{k}"), &["2"]), 1).await;
        assert_eq!(single(&replies), (2 * k).to_string(), "q{k} again");
    }
    let count: usize = check.value(on_server).await.parse().unwrap();
    assert!((1..=3).contains(&count), "{count} statements at the end");
}

// 5. Errors are Postgres's own.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_of_named_statements_are_those_of_postgres() {
    let pg = start_pg().await;
    let proxy = start_proxy(&transaction_config(&pg, 1, "")).await;
    let pipeline = [
        parse("good", "select $1::int + 10"),
        bind("", "good", &[Some("5")]),
        execute(""),
        parse("bad", "selec 1"),
        bind("", "bad", &[]),
        execute(""),
        sync(),
    ]
    .concat();
    let steps = [
        // 0-1: unknown names.
        step(0, run_named("nope", &[]), 1),
        step(0, [describe(b'S', "nope"), sync()].concat(), 1),
        // 2-4: a name prepared twice; the first definition stays.
        step(0, [parse("s1", "select 1"), sync()].concat(), 1),
        step(0, [parse("s1", "select 2"), sync()].concat(), 1),
        step(
            0,
            [
                describe(b'S', "s1"),
                bind("", "s1", &[]),
                execute(""),
                sync(),
            ]
            .concat(),
            1,
        ),
        // 5-8: a syntax error in the middle of a pipeline, then the session goes on.
        step(0, pipeline, 1),
        step(0, run_named("bad", &[]), 1),
        step(0, run_named("good", &["1"]), 1),
        step(0, query("select 3"), 1),
        // 9-14: an unknown name in an explicit transaction fails the transaction.
        step(0, query("begin"), 1),
        step(0, run_named("nope", &[]), 1),
        step(0, query("select 1"), 1),
        step(0, run_named("s1", &[]), 1),
        step(0, query("rollback"), 1),
        step(0, run_named("s1", &[]), 1),
    ];
    let r = same_as_direct(&pg, &proxy, 1, &steps).await;

    assert_eq!(shape(&r[0]), "EZI");
    assert_error(&r[0], "26000", &does_not_exist("nope"));
    assert_eq!(shape(&r[1]), "EZI");
    assert_error(&r[1], "26000", &does_not_exist("nope"));
    assert_eq!(shape(&r[2]), "1ZI");
    assert_eq!(shape(&r[3]), "EZI");
    assert_error(&r[3], "42P05", "prepared statement \"s1\" already exists");
    assert_eq!(shape(&r[4]), "tT2DCZI");
    assert_eq!(single(&r[4]), "1");

    assert_eq!(shape(&r[5]), "12DCEZI", "{:?}", r[5]);
    assert_eq!(rows(&r[5]), vec![vec![Some("15".to_owned())]]);
    assert_error(&r[5], "42601", "syntax error at or near \"selec\"");
    assert_error(&r[6], "26000", &does_not_exist("bad"));
    assert_eq!(single(&r[7]), "11", "the statement before the error");
    assert_eq!(single(&r[8]), "3");

    assert_eq!(shape(&r[9]), "CZT");
    assert_eq!(shape(&r[10]), "EZE");
    assert_error(&r[10], "26000", &does_not_exist("nope"));
    let aborted = "current transaction is aborted, commands ignored until end of transaction block";
    assert_eq!(shape(&r[11]), "EZE");
    assert_error(&r[11], "25P02", aborted);
    assert_eq!(shape(&r[12]), "EZE");
    assert_error(&r[12], "25P02", aborted);
    assert_eq!(shape(&r[13]), "CZI");
    assert_eq!(single(&r[14]), "1");
}

// 6. Close, DEALLOCATE and DISCARD ALL, for one client only.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_deallocate_and_discard_drop_the_clients_own_statements_only() {
    let pg = start_pg().await;
    let proxy = start_proxy(&transaction_config(&pg, 1, "")).await;
    let prepare_both = [
        parse("s1", "select 'a1'"),
        parse("s2", "select 'a2'"),
        sync(),
    ]
    .concat();
    let steps = [
        step(0, prepare_both.clone(), 1),
        step(1, [parse("s1", "select 'b1'"), sync()].concat(), 1),
        // 2-7: Close.
        step(0, [close(b'S', "s1"), sync()].concat(), 1),
        step(0, run_named("s1", &[]), 1),
        step(1, run_named("s1", &[]), 1),
        step(0, [close(b'S', "never"), sync()].concat(), 1),
        step(0, run_named("s2", &[]), 1),
        step(
            0,
            [
                parse("s1", "select 'a1 again'"),
                bind("", "s1", &[]),
                execute(""),
                sync(),
            ]
            .concat(),
            1,
        ),
        // 8-11: DEALLOCATE name.
        step(0, query("deallocate s1"), 1),
        step(0, run_named("s1", &[]), 1),
        step(1, run_named("s1", &[]), 1),
        step(0, query("deallocate nope"), 1),
        // 12-14: DEALLOCATE ALL.
        step(0, query("deallocate all"), 1),
        step(0, run_named("s2", &[]), 1),
        step(1, run_named("s1", &[]), 1),
        // 15-19: DISCARD ALL.
        step(0, prepare_both, 1),
        step(0, query("discard all"), 1),
        step(0, [run_named("s1", &[]), run_named("s2", &[])].concat(), 2),
        step(1, run_named("s1", &[]), 1),
        step(
            0,
            [
                parse("s1", "select 'a1 third'"),
                bind("", "s1", &[]),
                execute(""),
                sync(),
            ]
            .concat(),
            1,
        ),
        // 20: Close then Bind in one pipeline.
        step(
            0,
            [close(b'S', "s1"), bind("", "s1", &[]), execute(""), sync()].concat(),
            1,
        ),
    ];
    let r = same_as_direct(&pg, &proxy, 2, &steps).await;
    let value = |i: usize| single(&r[i]);

    assert_eq!(shape(&r[0]), "11ZI");
    assert_eq!(shape(&r[2]), "3ZI");
    assert_error(&r[3], "26000", &does_not_exist("s1"));
    assert_eq!(value(4), "b1");
    assert_eq!(shape(&r[5]), "3ZI", "Close of a name never prepared");
    assert_eq!(value(6), "a2");
    assert_eq!(value(7), "a1 again");

    assert_eq!(r[8][0], Reply::CommandComplete("DEALLOCATE".into()));
    assert_error(&r[9], "26000", &does_not_exist("s1"));
    assert_eq!(value(10), "b1");
    assert_error(&r[11], "26000", &does_not_exist("nope"));

    assert_eq!(r[12][0], Reply::CommandComplete("DEALLOCATE ALL".into()));
    assert_error(&r[13], "26000", &does_not_exist("s2"));
    assert_eq!(value(14), "b1");

    assert_eq!(r[16][0], Reply::CommandComplete("DISCARD ALL".into()));
    assert_eq!(
        errors(&r[17]),
        vec![
            ("26000".to_owned(), does_not_exist("s1")),
            ("26000".to_owned(), does_not_exist("s2"))
        ]
    );
    assert_eq!(value(18), "b1");
    assert_eq!(value(19), "a1 third");
    assert_eq!(shape(&r[20]), "3EZI");
    assert_error(&r[20], "26000", &does_not_exist("s1"));
}

// 7. Pipelines stay pipelines.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_of_named_statements_are_answered_as_by_postgres() {
    let pg = start_pg().await;
    let proxy = start_proxy(&transaction_config(&pg, 2, "")).await;
    let mut first = Vec::new();
    let mut again = Vec::new();
    for i in 0..5 {
        let name = format!("q{i}");
        first.extend(parse(&name, &format!("select {i} * $1::int")));
        first.extend(bind("", &name, &[Some("10")]));
        first.extend(execute(""));
        first.extend(sync());
        again.extend(run_named(&name, &["3"]));
    }
    let mixed = [
        parse("q5", "select 5 * $1::int"),
        bind("", "q5", &[Some("7")]),
        execute(""),
        bind("", "q1", &[Some("7")]),
        execute(""),
        sync(),
        bind("", "q2", &[Some("7")]),
        execute(""),
        close(b'S', "q2"),
        sync(),
        run_named("q2", &[]),
        run_named("q4", &["7"]),
    ]
    .concat();
    let steps = [
        step(0, first, 5),
        // Client 1 holds a server in a transaction: client 0 runs elsewhere.
        step(1, query("begin; select 1"), 1),
        step(0, again, 5),
        step(1, query("commit"), 1),
        step(0, mixed, 4),
    ];
    let r = same_as_direct(&pg, &proxy, 2, &steps).await;
    assert_eq!(shape(&r[0]), "12DCZI".repeat(5));
    let values = |i: usize| -> Vec<String> {
        rows(&r[i])
            .into_iter()
            .map(|row| row[0].clone().unwrap())
            .collect()
    };
    assert_eq!(values(0), ["0", "10", "20", "30", "40"]);
    assert_eq!(shape(&r[2]), "2DCZI".repeat(5));
    assert_eq!(values(2), ["0", "3", "6", "9", "12"]);
    assert_eq!(shape(&r[4]), "12DC2DCZI2DC3ZIEZI2DCZI");
    assert_eq!(values(4), ["35", "7", "14", "28"]);
    assert_error(&r[4], "26000", &does_not_exist("q2"));
}

// 8. tokio-postgres: prepare, query with its own statements, transactions.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_statements_work_across_transactions_and_servers() {
    let pg = start_pg().await;
    let proxy = start_proxy(&transaction_config(&pg, 2, "")).await;
    let mut a = app(&proxy).await;
    let b = app(&proxy).await;
    let c = app(&proxy).await;

    let statement = a
        .prepare("select $1::int + 1, pg_backend_pid()::text")
        .await
        .unwrap();
    let row = a.query_one(&statement, &[&0i32]).await.unwrap();
    let mut last: String = row.get(1);
    let mut servers = HashSet::from([last.clone()]);
    for i in 1..=20i32 {
        let holder = hold([&b, &c], &last).await;
        let row = a.query_one(&statement, &[&i]).await;
        let row = row.unwrap_or_else(|e| panic!("transaction {i}: {}", describe_error(&e)));
        assert_eq!(row.get::<_, i32>(0), i + 1);
        let server: String = row.get(1);
        assert_ne!(server, last, "transaction {i} ran on the busy server");
        release(holder).await;
        servers.insert(server.clone());
        last = server;
    }
    assert_eq!(servers.len(), 2);

    // query() with a string prepares a new statement (s1, s2, ...) and closes it after.
    let b_statement = b.prepare("select $1::text || '!'").await.unwrap();
    for i in 0..200 {
        let row = a.query_one("select $1::int", &[&7i32]).await;
        let row = row.unwrap_or_else(|e| panic!("query {i}: {}", describe_error(&e)));
        assert_eq!(row.get::<_, i32>(0), 7, "query {i}");
        let row = b.query_one(&b_statement, &[&"b"]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "b!");
    }

    // Statements inside transactions, and prepared inside one that rolls back.
    let tx = a.transaction().await.unwrap();
    let row = tx.query_one(&statement, &[&41i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    let double = tx.prepare("select $1::int * 2").await.unwrap();
    assert_eq!(
        tx.query_one(&double, &[&21i32])
            .await
            .unwrap()
            .get::<_, i32>(0),
        42
    );
    tx.commit().await.unwrap();
    let tx = a.transaction().await.unwrap();
    let triple = tx.prepare("select $1::int * 3").await.unwrap();
    tx.rollback().await.unwrap();
    for i in 0..5i32 {
        let holder = hold([&b, &c], &last).await;
        let row = a.query_one(&double, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 2 * i);
        let row = a.query_one(&triple, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 3 * i);
        last = pid(&a).await;
        release(holder).await;
    }
    assert!(pg.backend_count("app").await <= 2);
}

// 9. sqlx and its per-connection statement cache.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_statement_cache_works_over_a_small_pool() {
    use sqlx::postgres::PgPoolOptions;
    use sqlx::Row;

    let pg = start_pg().await;
    let proxy = start_proxy(&transaction_config(&pg, 2, "")).await;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .min_connections(4)
        .acquire_timeout(Duration::from_secs(20))
        .connect(&proxy.url("app", "app_pw", "appdb"))
        .await
        .expect("sqlx connects through pgwarden");

    let tasks = (0..4i64).map(|t| {
        let pool = pool.clone();
        tokio::spawn(async move {
            for i in (t * 50)..(t * 50 + 50) {
                let row = sqlx::query("select $1::int8 + 1")
                    .bind(i)
                    .fetch_one(&pool)
                    .await
                    .unwrap_or_else(|e| panic!("query {i}: {e}"));
                assert_eq!(row.get::<i64, _>(0), i + 1);
                let (n, s): (i64, String) = sqlx::query_as("select $1::int8 * 2, $2::text")
                    .bind(i)
                    .bind(format!("task {t}"))
                    .fetch_one(&pool)
                    .await
                    .unwrap_or_else(|e| panic!("query_as {i}: {e}"));
                assert_eq!((n, s), (i * 2, format!("task {t}")));
                let (total,): (i64,) =
                    sqlx::query_as("select count(*) from generate_series(1, $1::int8)")
                        .bind(i % 10)
                        .fetch_one(&pool)
                        .await
                        .unwrap_or_else(|e| panic!("count {i}: {e}"));
                assert_eq!(total, i % 10);
            }
        })
    });
    for task in futures_util::future::join_all(tasks).await {
        task.unwrap();
    }

    let mut tx = pool.begin().await.unwrap();
    let (n,): (i64,) = sqlx::query_as("select $1::int8 + 1")
        .bind(41i64)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 42);
    tx.commit().await.unwrap();
    assert!(pg.backend_count("app").await <= 2);
    pool.close().await;
}

// 10. Many clients, few servers, the same and different statements.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_two_hundred_transactions_each_over_five_servers() {
    let pg = start_pg().await;
    let proxy = start_proxy(&transaction_config(&pg, 5, "query_wait_timeout = \"10s\"")).await;
    let proxy = Arc::new(proxy);
    let running = Arc::new(AtomicBool::new(true));
    let most = Arc::new(AtomicI64::new(0));

    // Every client prepares before any starts its transactions: all 50 hold named
    // statements at once, so none may keep a server to itself.
    let prepared = Arc::new(tokio::sync::Barrier::new(50));
    let clients = (0..50i32).map(|id| {
        let (proxy, prepared) = (proxy.clone(), prepared.clone());
        tokio::spawn(async move {
            let mut client = app(&proxy).await;
            // Even clients prepare the shared text first, odd ones their own: s0 names
            // different statements in different clients.
            let (shared, own) = if id % 2 == 0 {
                let shared = client.prepare("select $1::int + 1").await.unwrap();
                let own = client.prepare(&format!("select $1::int * {id}")).await;
                (shared, own.unwrap())
            } else {
                let own = client.prepare(&format!("select $1::int * {id}")).await;
                let shared = client.prepare("select $1::int + 1").await.unwrap();
                (shared, own.unwrap())
            };
            // The same text under a second name.
            let again = client.prepare("select $1::int + 1").await.unwrap();
            let all = tokio::time::timeout(Duration::from_secs(20), prepared.wait()).await;
            all.unwrap_or_else(|_| panic!("client {id}: not all 50 clients could prepare"));
            for i in 0..200i32 {
                let what = format!("client {id} transaction {i}");
                let get = |r: Result<tokio_postgres::Row, tokio_postgres::Error>| -> i32 {
                    r.unwrap_or_else(|e| panic!("{what}: {}", describe_error(&e)))
                        .get(0)
                };
                match i % 4 {
                    0 => assert_eq!(get(client.query_one(&shared, &[&i]).await), i + 1),
                    1 => assert_eq!(get(client.query_one(&again, &[&i]).await), i + 1),
                    2 => assert_eq!(get(client.query_one(&own, &[&i]).await), i * id),
                    _ => {
                        let tx = client.transaction().await.unwrap();
                        assert_eq!(get(tx.query_one(&own, &[&i]).await), i * id);
                        assert_eq!(get(tx.query_one(&shared, &[&id]).await), id + 1);
                        let sql = "select $1::int - 1";
                        assert_eq!(get(tx.query_one(sql, &[&i]).await), i - 1);
                        tx.commit().await.unwrap();
                    }
                }
            }
        })
    });
    let clients: Vec<_> = clients.collect();

    let sampler = {
        let (running, most) = (running.clone(), most.clone());
        let pg = &pg;
        async move {
            while running.load(Ordering::Relaxed) {
                most.fetch_max(pg.backend_count("app").await, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let work = async {
        let done = futures_util::future::join_all(clients).await;
        running.store(false, Ordering::Relaxed);
        done
    };
    let (done, ()) = tokio::time::timeout(Duration::from_secs(90), async {
        tokio::join!(work, sampler)
    })
    .await
    .expect("50 x 200 transactions within 90 s");
    for result in done {
        result.unwrap();
    }
    let most = most.load(Ordering::Relaxed);
    assert!(
        most <= 5,
        "Postgres saw {most} app backends with pool_size 5"
    );
    assert!(most > 0, "the sampling never saw a backend");
    assert!(pg.backend_count("app").await <= 5);
}

// 11. A schema change under a shared server-side statement.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_is_retried_transparently_outside_a_transaction() {
    let pg = start_pg().await;
    let admin = pg.admin().await;
    exec_direct(
        &admin,
        "create table t (a int); insert into t values (1); grant select on t to trust_user",
    )
    .await;
    let proxy = start_proxy(&transaction_config(&pg, 1, "")).await;
    let mut direct = RawClient::direct(&pg).await;
    let mut proxied = RawClient::proxied(&proxy).await;
    let prepare = [
        parse("s1", "select * from t"),
        bind("", "s1", &[]),
        describe(b'P', ""),
        execute(""),
        sync(),
    ]
    .concat();
    let run = [bind("", "s1", &[]), describe(b'P', ""), execute(""), sync()].concat();
    for raw in [&mut direct, &mut proxied] {
        let replies = raw.run(&prepare, 1).await;
        assert_eq!(shape(&replies), "12TDCZI", "{replies:?}");
        assert_eq!(rows(&replies), vec![vec![Some("1".to_owned())]]);
    }

    exec_direct(&admin, "alter table t add column b int").await;
    let stale = "cached plan must not change result type";
    let replies = direct.run(&run, 1).await;
    assert_eq!(shape(&replies), "EZI", "Postgres: {replies:?}");
    assert_error(&replies, "0A000", stale);
    let replies = proxied.run(&run, 1).await;
    assert_eq!(shape(&replies), "2TDCZI", "pgwarden: {replies:?}");
    assert_eq!(
        replies[1],
        Reply::RowDescription(vec!["a".into(), "b".into()])
    );
    assert_eq!(rows(&replies), vec![vec![Some("1".to_owned()), None]]);

    // Once the transaction has done something, the error is the client's, as on Postgres;
    // the next transaction works again.
    exec_direct(&admin, "alter table t add column c int").await;
    for raw in [&mut direct, &mut proxied] {
        assert_eq!(shape(&raw.simple("begin; select 1").await), "CTDCZT");
        let replies = raw.run(&run, 1).await;
        assert_eq!(shape(&replies), "EZE", "{replies:?}");
        assert_error(&replies, "0A000", stale);
        assert_eq!(shape(&raw.simple("rollback").await), "CZI");
    }
    let replies = proxied.run(&run, 1).await;
    assert_eq!(
        shape(&replies),
        "2TDCZI",
        "pgwarden after the rollback: {replies:?}"
    );
    assert_eq!(rows(&replies), vec![vec![Some("1".to_owned()), None, None]]);
}

async fn exec_direct(client: &Client, sql: &str) {
    let result = client.batch_execute(sql).await;
    result.unwrap_or_else(|e| panic!("{sql}: {}", describe_error(&e)));
}

// 13. pgbench -M prepared: 100 clients over 10 servers.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_with_100_clients_over_10_servers() {
    let pg = start_pg().await;
    let init = pgbench_command(pg.port, "app", "app_pw", "appdb", &["-i", "-q", "-s", "1"]);
    let out = run_blocking(init).await;
    assert!(out.status.success(), "pgbench -i:\n{}", output_text(&out));
    let extra = "max_client_conn = 200\nquery_wait_timeout = \"30s\"";
    let proxy = start_proxy(&transaction_config(&pg, 10, extra)).await;

    let args = ["-M", "prepared", "-S", "-c", "100", "-j", "2", "-T", "5"];
    let cmd = pgbench_command(proxy.addr.port(), "app", "app_pw", "appdb", &args);
    let run = tokio::spawn(run_blocking(cmd));
    let mut most = 0;
    while !run.is_finished() {
        most = most.max(pg.backend_count("app").await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = run.await.unwrap();
    let output = output_text(&out);
    assert!(out.status.success(), "pgbench failed:\n{output}");
    assert!(
        output.contains("number of failed transactions: 0 "),
        "pgbench reports failures:\n{output}"
    );
    assert!(processed(&output) > 0, "{output}");
    assert!(
        most <= 10,
        "Postgres saw {most} app backends with pool_size 10"
    );
    assert!(most > 0, "the sampling never saw a backend");
}

async fn run_blocking(mut cmd: std::process::Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}")))
        .await
        .unwrap()
}

// 14. No pinning.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_do_not_pin_a_client_to_its_server() {
    let pg = start_pg().await;
    let proxy = start_proxy(&transaction_config(&pg, 1, "")).await;
    let a = Arc::new(app(&proxy).await);
    let b = Arc::new(app(&proxy).await);

    let a_statement = a.prepare("select $1::int + 1").await.unwrap();
    let b_statement = b.prepare("select $1::int + 2").await.unwrap();
    for i in 0..5i32 {
        let row = a.query_one(&a_statement, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
        let row = tokio::time::timeout(PROMPTLY, b.query_one(&b_statement, &[&i])).await;
        let row = row.expect("B waited for A's server").unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 2);
    }

    // Both at once: each makes progress between the other's transactions.
    let run = |client: &Arc<Client>, statement: &tokio_postgres::Statement, add: i32| {
        let (client, statement) = (client.clone(), statement.clone());
        async move {
            for i in 0..100i32 {
                let row = client.query_one(&statement, &[&i]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), i + add);
            }
        }
    };
    let both = async { tokio::join!(run(&a, &a_statement, 1), run(&b, &b_statement, 2)) };
    tokio::time::timeout(Duration::from_secs(30), both)
        .await
        .expect("two clients sharing one server with named statements");

    // A raw client (app too, to share the pool) that only parsed does not hold the server.
    let mut raw = RawClient::login_as(proxy.addr, "app", "appdb").await;
    let parsed = raw
        .run(&[parse("s1", "select 'raw'"), sync()].concat(), 1)
        .await;
    assert_eq!(shape(&parsed), "1ZI");
    let row = tokio::time::timeout(PROMPTLY, b.query_one(&b_statement, &[&40i32])).await;
    assert_eq!(row.expect("B waited").unwrap().get::<_, i32>(0), 42);
    assert_eq!(single(&raw.run(&run_named("s1", &[]), 1).await), "raw");
    assert_eq!(value(&a, "select 'a'").await, "a");
    assert_eq!(pg.backend_count("app").await, 1);
}

/// Hostile extended-protocol messages (truncated names, missing terminators, wrong kinds,
/// names that collide with pgwarden's own) never crash the proxy or leak into another
/// client: each mangled session ends or goes on, and a well-behaved client sharing the one
/// server keeps getting its own statement's results throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mangled_statement_messages_hurt_nobody_else() {
    use rand::{Rng, SeedableRng};
    let pg = start_pg().await;
    let proxy = start_proxy(&transaction_config(&pg, 1, "")).await;
    let good = trust(&proxy).await;
    let statement = good.prepare("select $1::int * 2").await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let names: [&[u8]; 6] = [
        b"s1",
        b"",
        b"pgw_0000000000000000",
        b"pgwarden.absent",
        b"\xff",
        b"s1\0x",
    ];
    for round in 0..200 {
        let mut mangled = RawClient::proxied(&proxy).await;
        let mut bytes = Vec::new();
        for _ in 0..rng.gen_range(1..8) {
            let name = names[rng.gen_range(0..names.len())];
            let (tag, mut body): (u8, Vec<u8>) = match rng.gen_range(0..6) {
                0 => (b'P', [name, b"\0select 1\0\0\0"].concat()),
                1 => (b'B', [b"\0", name, b"\0\0\0\0\0\0\0"].concat()),
                2 => (b'D', [b"S", name, b"\0"].concat()),
                3 => (b'C', [&[rng.gen::<u8>()][..], name, b"\0"].concat()),
                4 => (b'Q', [b"execute ", name, b"\0"].concat()),
                _ => (b'E', b"\0\0\0\0\0".to_vec()),
            };
            // Now and then cut the body short (a name without its terminator).
            if rng.gen_bool(0.3) {
                body.truncate(rng.gen_range(0..body.len().max(1)));
            }
            bytes.push(tag);
            bytes.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
            bytes.extend_from_slice(&body);
        }
        bytes.extend_from_slice(&sync());
        mangled.send(&bytes).await;
        // Whatever the answer (errors, or a FATAL and a closed connection), it comes.
        let replies = mangled.read_until_ready_or_closed().await;
        assert!(
            matches!(replies.last(), Some(Reply::Ready(_) | Reply::Error(..))),
            "round {round}: no ReadyForQuery or error for {bytes:?}: {replies:?}"
        );
        let rows = good.query(&statement, &[&round]).await;
        let rows = rows.unwrap_or_else(|e| panic!("round {round}: {}", describe_error(&e)));
        assert_eq!(rows[0].get::<_, i32>(0), round * 2, "round {round}");
    }
    assert_eq!(pg.backend_count(RAW_USER).await, 1);
}
