//! SQL-level prepared statements in transaction mode (issue 4, point 4): `PREPARE`,
//! `EXECUTE`, `DEALLOCATE` and `DISCARD ALL` behave as on a direct connection, for the
//! client that sent them only, whichever server each of its transactions gets; the SQL and
//! protocol namespaces are one, as in Postgres.
//!
//! Sequences run against Postgres directly and through pgwarden and must get the same
//! replies (`common::prepared::same_as_direct`); the values and SQLSTATEs are asserted too.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::prepared::{
    assert_error, bind, describe, errors, execute, hold, parse, query, release, rows, run_named,
    same_as_direct, shape, single, step, sync, transaction_config, value, Reply, RAW_DB, RAW_USER,
};
use common::{describe as describe_error, start_proxy, PgServer};
use tokio_postgres::types::Type;

async fn start_pg() -> PgServer {
    tokio::task::spawn_blocking(PgServer::start).await.unwrap()
}

fn does_not_exist(name: &str) -> String {
    format!("prepared statement \"{name}\" does not exist")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_execute_deallocate_behave_as_on_postgres_for_each_client() {
    let pg = start_pg().await;
    let proxy = start_proxy(&transaction_config(&pg, 1, "")).await;
    let steps = [
        // 0-7: PREPARE and EXECUTE in separate transactions, two clients, one name.
        step(0, query("prepare p(int) as select $1 + 1"), 1),
        step(1, query("select 1"), 1),
        step(0, query("execute p(41)"), 1),
        step(0, query("execute nope"), 1),
        step(0, query("prepare p(int) as select $1"), 1),
        step(1, query("prepare p as select 'b'"), 1),
        step(1, query("execute p"), 1),
        step(0, query("execute p(1)"), 1),
        // 8-12: one namespace with the protocol's statements.
        step(0, run_named("p", &["5"]), 1),
        step(0, [parse("s9", "select $1::int * 3"), sync()].concat(), 1),
        step(0, query("execute s9(5)"), 1),
        step(0, [describe(b'S', "p"), sync()].concat(), 1),
        step(
            0,
            [
                parse("", "execute p(9)"),
                bind("", "", &[]),
                execute(""),
                sync(),
            ]
            .concat(),
            1,
        ),
        // 13-15: DEALLOCATE name.
        step(0, query("deallocate p"), 1),
        step(0, query("execute p(1)"), 1),
        step(1, query("execute p"), 1),
        // 16-20: several in one query, DEALLOCATE ALL.
        step(
            0,
            query("prepare q1 as select 'q1'; prepare q2 as select 'q2'; execute q2"),
            1,
        ),
        step(0, query("deallocate all"), 1),
        step(0, query("execute q1"), 1),
        step(0, run_named("s9", &["1"]), 1),
        step(1, query("execute p"), 1),
        // 21-26: PREPARE inside transactions, committed and rolled back.
        step(0, query("begin"), 1),
        step(0, query("prepare x as select 'x'"), 1),
        step(0, query("rollback"), 1),
        step(0, query("execute x"), 1),
        step(
            0,
            query("begin; prepare y as select 'y'; execute y; commit"),
            1,
        ),
        step(0, query("execute y"), 1),
        // 27-30: parameters of several types; quoted names.
        step(0, query("prepare t2(text, int) as select $1 || $2"), 1),
        step(0, query("execute t2('x', 5)"), 1),
        step(0, query("prepare \"Mixed\" as select 'mixed'"), 1),
        step(
            0,
            [query("execute mixed"), run_named("Mixed", &[])].concat(),
            2,
        ),
        // 31-33: DISCARD ALL.
        step(0, query("discard all"), 1),
        step(0, query("execute t2('x', 5)"), 1),
        step(1, query("execute p"), 1),
    ];
    let r = same_as_direct(&pg, &proxy, 2, &steps).await;
    let value = |i: usize| single(&r[i]);

    assert_eq!(r[0][0], Reply::CommandComplete("PREPARE".into()));
    assert_eq!(value(2), "42");
    assert_error(&r[3], "26000", &does_not_exist("nope"));
    assert_error(&r[4], "42P05", "prepared statement \"p\" already exists");
    assert_eq!(value(6), "b");
    assert_eq!(value(7), "2");

    assert_eq!(value(8), "6", "Bind of a statement made by PREPARE");
    assert_eq!(value(10), "15", "EXECUTE of a statement made by Parse");
    assert_eq!(shape(&r[11]), "tTZI");
    assert_eq!(r[11][0], Reply::ParameterDescription(1));
    assert_eq!(value(12), "10", "EXECUTE through the extended protocol");

    assert_eq!(r[13][0], Reply::CommandComplete("DEALLOCATE".into()));
    assert_error(&r[14], "26000", &does_not_exist("p"));
    assert_eq!(value(15), "b");

    assert_eq!(shape(&r[16]), "CCTDCZI");
    assert_eq!(single(&r[16]), "q2");
    assert_eq!(r[17][0], Reply::CommandComplete("DEALLOCATE ALL".into()));
    assert_error(&r[18], "26000", &does_not_exist("q1"));
    assert_error(&r[19], "26000", &does_not_exist("s9"));
    assert_eq!(value(20), "b");

    // Prepared statements are not transactional in Postgres: x survives the rollback.
    assert_eq!(value(24), "x");
    assert_eq!(single(&r[25]), "y");
    assert_eq!(value(26), "y");

    assert_eq!(value(28), "x5");
    assert_eq!(
        errors(&r[30]),
        vec![("26000".to_owned(), does_not_exist("mixed"))]
    );
    assert_eq!(rows(&r[30]), vec![vec![Some("mixed".to_owned())]]);

    assert_eq!(r[31][0], Reply::CommandComplete("DISCARD ALL".into()));
    assert_error(&r[32], "26000", &does_not_exist("t2"));
    assert_eq!(value(33), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_prepared_statement_follows_its_client_across_servers() {
    let pg = start_pg().await;
    let proxy = start_proxy(&transaction_config(&pg, 2, "")).await;
    let a = proxy.connect(RAW_USER, "", RAW_DB).await;
    let b = proxy.connect(RAW_USER, "", RAW_DB).await;
    let c = proxy.connect(RAW_USER, "", RAW_DB).await;

    let prepare = "prepare p(int) as select $1 + 1, pg_backend_pid()";
    a.batch_execute(prepare).await.unwrap();
    let row = a.query_typed("execute p(0)", &[]).await.unwrap();
    let mut last = row[0].get::<_, i32>(1).to_string();
    let mut servers = HashSet::from([last.clone()]);
    for i in 1..=20i32 {
        let holder = hold([&b, &c], &last).await;
        let sql = format!("execute p({i})");
        let result = a.simple_query(&sql).await;
        let messages = result.unwrap_or_else(|e| panic!("{sql}: {}", describe_error(&e)));
        let got = common::clients::simple_rows(&messages);
        assert_eq!(got.len(), 1, "{sql}");
        assert_eq!(got[0][0], Some((i + 1).to_string()), "{sql}");
        let server = got[0][1].clone().unwrap();
        assert_ne!(server, last, "{sql} ran on the busy server");
        release(holder).await;
        servers.insert(server.clone());
        last = server;
    }
    assert_eq!(servers.len(), 2);

    // EXECUTE through the extended protocol, with tokio-postgres's own statements.
    for i in 0..20 {
        let holder = hold([&b, &c], &last).await;
        let rows = a.query("execute p(41)", &[]).await;
        let rows = rows.unwrap_or_else(|e| panic!("query {i}: {}", describe_error(&e)));
        assert_eq!(rows[0].get::<_, i32>(0), 42);
        last = rows[0].get::<_, i32>(1).to_string();
        release(holder).await;
    }
    // A parameter in EXECUTE's arguments: whatever Postgres answers, pgwarden answers.
    let direct = pg.connect(RAW_USER, "", RAW_DB).await;
    direct.batch_execute(prepare).await.unwrap();
    let answer = |r: Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>| match r {
        Ok(rows) => Ok(rows[0].get::<_, i32>(0)),
        Err(e) => Err(describe_error(&e)),
    };
    let sql = "execute p($1)";
    let params: &[(&(dyn tokio_postgres::types::ToSql + Sync), Type)] = &[(&1i32, Type::INT4)];
    let expected = answer(direct.query_typed(sql, params).await);
    assert_eq!(answer(a.query_typed(sql, params).await), expected);
    assert_eq!(value(&a, "execute p(1)").await, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_executing_the_same_sql_name_at_once_each_get_their_own() {
    let pg = start_pg().await;
    let proxy = start_proxy(&transaction_config(&pg, 1, "")).await;
    let a = Arc::new(proxy.connect(RAW_USER, "", RAW_DB).await);
    let b = Arc::new(proxy.connect(RAW_USER, "", RAW_DB).await);
    a.batch_execute("prepare p(int) as select 'a' || $1")
        .await
        .unwrap();
    b.batch_execute("prepare p(int) as select 'b' || $1")
        .await
        .unwrap();
    let run = |client: Arc<tokio_postgres::Client>, who: &'static str| async move {
        for i in 0..100 {
            let got = value(&client, &format!("execute p({i})")).await;
            assert_eq!(got, format!("{who}{i}"));
        }
    };
    let both = async { tokio::join!(run(a.clone(), "a"), run(b.clone(), "b")) };
    tokio::time::timeout(Duration::from_secs(30), both)
        .await
        .expect("two clients with SQL-prepared statements over one server");
    assert_eq!(pg.backend_count(RAW_USER).await, 1);
}
