//! What `lakewriter run` refuses before it writes anything, because running would mix,
//! lose or duplicate rows: two source tables that would share one lake table, and an upsert
//! key outside the replica identity. Each refusal names the tables and columns and says
//! what to do; `doctor` reports the same.

mod support;

use support::TestDb;
use support::writer::{caught_up, command, duck_query, start, stop, write_config};

#[tokio::test]
async fn two_source_tables_sharing_a_lake_table_are_refused_naming_both() {
    let db = TestDb::new("refuse_clash").await;
    db.client()
        .await
        .batch_execute(
            "CREATE SCHEMA sales;
             CREATE TABLE sales.orders (id int PRIMARY KEY);
             CREATE TABLE public.sales_orders (id int PRIMARY KEY);",
        )
        .await
        .expect("schema");
    write_config(&db, "");
    let include = ("SOURCE__INCLUDE", r#"["public.*", "sales.*"]"#);
    for format in ["iceberg", "delta"] {
        let output = command(&db, &["run"], &[("SINK__FORMAT", format), include]);
        let log = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{format}: run started: {log}");
        assert!(
            log.contains("sales.orders") && log.contains("public.sales_orders"),
            "{format}: the error names both tables: {log}"
        );
    }
    let output = command(&db, &["doctor"], &[include]);
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{report}");
    assert!(
        report.contains("sales.orders") && report.contains("public.sales_orders"),
        "{report}"
    );
}

#[tokio::test]
async fn a_configured_key_outside_the_replica_identity_is_refused_until_replica_identity_full() {
    let db = TestDb::new("refuse_key").await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, code text NOT NULL UNIQUE, qty int);
             INSERT INTO items SELECT i, 'c' || i, i FROM generate_series(1, 10) i;",
        )
        .await
        .expect("schema");
    write_config(&db, "[source.tables.\"public.items\"]\nkey = [\"code\"]\n");
    let output = command(&db, &["run"], &[]);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "run started: {log}");
    assert!(
        log.contains("public.items")
            && log.contains("code")
            && log.contains("REPLICA IDENTITY FULL"),
        "the error names the table, the column and the fix: {log}"
    );

    // with the whole old row logged, a key update replaces the row instead of adding one
    db.client()
        .await
        .batch_execute("ALTER TABLE items REPLICA IDENTITY FULL")
        .await
        .expect("replica identity full");
    let mut child = start(&db);
    caught_up(&db, &mut child).await;
    db.client()
        .await
        .batch_execute("UPDATE items SET code = 'new' || id WHERE id <= 3")
        .await
        .expect("update keys");
    caught_up(&db, &mut child).await;
    stop(child);
    assert_eq!(
        duck_query(
            &db,
            "items",
            "SELECT count(*), count(DISTINCT code), min(code) FROM {scan}"
        ),
        vec!["10|10|c10".to_string()]
    );
}
