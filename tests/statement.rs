//! Statement pooling: the server goes back after every statement, and a transaction block is
//! refused with a clear error that leaves the client's session usable.

mod common;

use common::clients::one_server_config;
use common::{start_proxy, PgServer};

fn config(pg: &PgServer) -> String {
    one_server_config(pg, "statement")
}

/// The first column of the first row, over the simple protocol.
async fn one(client: &tokio_postgres::Client, sql: &str) -> String {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", common::describe(&e)));
    messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_of_two_clients_share_one_server() {
    let pg = PgServer::start();
    let proxy = start_proxy(&config(&pg)).await;
    let a = proxy.connect("trust_user", "", "postgres").await;
    let b = proxy.connect("trust_user", "", "postgres").await;
    let pid = "select pg_backend_pid()::text";
    for _ in 0..3 {
        assert_eq!(one(&a, pid).await, one(&b, pid).await);
    }
    // Settings still follow each client.
    a.batch_execute("set work_mem = '7MB'").await.unwrap();
    assert_eq!(one(&b, "select current_setting('work_mem')").await, "4MB");
    assert_eq!(one(&a, "select current_setting('work_mem')").await, "7MB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_block_is_refused_and_the_session_goes_on() {
    let pg = PgServer::start();
    let admin = pg.admin().await;
    admin
        .batch_execute("create table t (x int); grant all on t to trust_user")
        .await
        .unwrap();
    let proxy = start_proxy(&config(&pg)).await;
    let a = proxy.connect("trust_user", "", "postgres").await;
    let b = proxy.connect("trust_user", "", "postgres").await;

    for begin in ["begin", "start transaction isolation level serializable"] {
        let err = a
            .batch_execute(begin)
            .await
            .expect_err("a transaction block was allowed");
        let db = err.as_db_error().expect("a server-side error");
        assert_eq!(db.code().code(), "0A000");
        assert_eq!(
            db.message(),
            "transaction blocks are not allowed in statement pooling mode"
        );
    }
    // The block was rolled back: no transaction is open, and the server is free for others.
    a.batch_execute("insert into t values (1)").await.unwrap();
    assert_eq!(one(&b, "select count(*)::text from t").await, "1");
    assert_eq!(
        one(&a, "select (txid_current_if_assigned() is null)::text").await,
        "true"
    );

    // The same through the extended protocol.
    let err = a
        .query_typed("begin", &[])
        .await
        .expect_err("allowed via extended protocol");
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("0A000"));
    assert_eq!(one(&a, "select 'still usable'").await, "still usable");

    // A whole transaction inside one Query message ends idle, so it is one statement.
    a.batch_execute("begin; insert into t values (2); commit")
        .await
        .unwrap();
    assert_eq!(one(&b, "select count(*)::text from t").await, "2");
    assert_eq!(pg.backend_count("trust_user").await, 1);
}

/// Named prepared statements follow their clients in statement pooling too: two clients
/// prepare statements (one the same text, one each their own) and use them alternately on
/// the one server, each getting its own results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_of_two_clients_share_one_server() {
    let pg = PgServer::start();
    let proxy = start_proxy(&config(&pg)).await;
    let a = proxy.connect("trust_user", "", "postgres").await;
    let b = proxy.connect("trust_user", "", "postgres").await;
    let same_a = a.prepare("select $1::int + 1").await.unwrap();
    let same_b = b.prepare("select $1::int + 1").await.unwrap();
    let own_a = a.prepare("select 'a:' || $1::text").await.unwrap();
    let own_b = b.prepare("select 'b:' || $1::text").await.unwrap();
    for i in 0..20i32 {
        let row = a.query_one(&same_a, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
        let row = b.query_one(&own_b, &[&i.to_string()]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), format!("b:{i}"));
        let row = a.query_one(&own_a, &[&i.to_string()]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), format!("a:{i}"));
        let row = b.query_one(&same_b, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
    }
    let pid = "select pg_backend_pid()::text";
    assert_eq!(one(&a, pid).await, one(&b, pid).await, "not one server");
}
