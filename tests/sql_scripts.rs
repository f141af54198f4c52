//! sql/: the source setup, the sample schema and the workload, run with psql as a user would,
//! against the real cluster.

mod support;

use std::process::Command;

use support::{TestDb, stack};

fn psql(db: &TestDb, args: &[&str]) -> String {
    let output = stack()
        .pg_program("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &db.url])
        .args(args)
        .current_dir(support::project_dir())
        .output()
        .expect("run psql");
    assert!(
        output.status.success(),
        "psql {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn setup_orders_and_workload_prepare_a_replicable_database() {
    let db = TestDb::new("sql_scripts").await;
    let role = format!("{}_role", db.name);
    psql(&db, &["-v", "rows=500", "-f", "sql/orders.sql"]);
    psql(
        &db,
        &[
            "-v",
            &format!("role={role}"),
            "-v",
            "password=role-pw",
            "-v",
            &format!("publication={}", db.publication),
            "-f",
            "sql/setup.sql",
        ],
    );
    // idempotent: a second run changes nothing and does not fail
    psql(
        &db,
        &[
            "-v",
            &format!("role={role}"),
            "-v",
            &format!("publication={}", db.publication),
            "-f",
            "sql/setup.sql",
        ],
    );

    let client = db.client().await;
    let published: Vec<String> = client
        .query(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1",
            &[&db.publication],
        )
        .await
        .expect("publication tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(published, vec!["public.orders".to_string()]);

    // the role has exactly what replication needs
    let row = client
        .query_one(
            "SELECT rolreplication, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .expect("the role exists");
    assert!(row.get::<_, bool>(0), "REPLICATION");
    assert!(!row.get::<_, bool>(1) && !row.get::<_, bool>(2) && !row.get::<_, bool>(3));
    let as_role = format!(
        "postgres://{role}:role-pw@127.0.0.1:{}/{}",
        stack().var("PGPORT"),
        db.name
    );
    let reader = support::connect(&as_role).await;
    let count: i64 = reader
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .expect("the role reads orders")
        .get(0);
    assert_eq!(count, 500);
    let denied = reader
        .execute("DELETE FROM orders WHERE order_id = 1", &[])
        .await
        .expect_err("the role must not write");
    assert_eq!(
        denied.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{denied:?}"
    );
    // a replication connection as the role answers IDENTIFY_SYSTEM
    let identify = stack()
        .pg_program("psql")
        .args(["-X", "-tA", "-c", "IDENTIFY_SYSTEM"])
        .arg(format!("{as_role}?replication=database"))
        .output()
        .expect("psql replication");
    assert!(
        identify.status.success(),
        "{}",
        String::from_utf8_lossy(&identify.stderr)
    );
    let slot_created = reader
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&db.slot],
        )
        .await;
    assert!(
        slot_created.is_ok(),
        "the role creates its slot: {slot_created:?}"
    );

    // the workload commits every kind of change, and the slot sees them
    psql(
        &db,
        &[
            "-v",
            "rounds=2",
            "-v",
            "batch=100",
            "-f",
            "sql/workload.sql",
        ],
    );
    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE order_id > 10000000), \
             count(*) FILTER (WHERE order_id < 0) FROM orders",
            &[],
        )
        .await
        .expect("count");
    let (rows, moved, negative): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(moved, 2, "one key change per round");
    assert_eq!(
        negative, 2,
        "one surviving row of the mixed transaction per round"
    );
    assert!(rows > 500, "inserts outnumber deletes: {rows}");
    let changes: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, \
             'proto_version', '1', 'publication_names', $2) WHERE substr(data, 1, 1) IN ('I', 'U', 'D')",
            &[&db.slot, &db.publication],
        )
        .await
        .expect("peek")
        .get(0);
    assert!(
        changes >= 200,
        "the slot holds the workload's changes: {changes}"
    );
}

#[test]
fn the_stack_script_is_idempotent() {
    stack();
    let again = Command::new(support::project_dir().join("scripts/stack"))
        .arg("up")
        .output()
        .expect("scripts/stack up");
    assert!(again.status.success());
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(
        text.contains(&format!("PGPORT={}", stack().var("PGPORT"))),
        "a second `up` reuses the running stack: {text}"
    );
}
