//! `query` and `verify` on Delta tables the writer made, as a user runs them (the binary,
//! against the real PostgreSQL): they read what PostgreSQL holds, and `verify` names a
//! difference.

mod support;

use support::TestDb;
use support::writer::{caught_up, command, start_with, stop};

const DELTA: &[(&str, &str)] = &[("SINK__FORMAT", "delta")];

/// Runs a command of the binary on the Delta config: exit success, stdout, stderr.
fn lakewriter(db: &TestDb, args: &[&str], settings: &[(&str, &str)]) -> (bool, String, String) {
    let settings = [DELTA, settings].concat();
    let output = command(db, args, &settings);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `lakewriter query` as CSV lines without the header.
fn query(db: &TestDb, sql: &str) -> Vec<String> {
    let (ok, out, err) = lakewriter(db, &["query", "--format", "csv", sql], &[]);
    assert!(ok, "lakewriter query failed: {err}");
    out.lines().skip(1).map(str::to_string).collect()
}

/// One column of text lines from PostgreSQL.
async fn postgres(db: &TestDb, sql: &str) -> Vec<String> {
    db.client()
        .await
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn execute(db: &TestDb, statements: &[&str]) {
    let client = db.client().await;
    for statement in statements {
        client
            .batch_execute(statement)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

#[tokio::test]
async fn query_and_verify_read_delta_tables_and_name_a_difference() {
    let db = TestDb::new("delta_verify").await;
    db.psql(&["-v", "rows=2000", "-f", "sql/orders.sql"]);
    // time and uuid are stored as text in Delta: verify must still find them equal
    execute(
        &db,
        &[
            "CREATE TABLE kinds (id int PRIMARY KEY, at time, ref uuid, seen timestamptz, \
           amount numeric(10,2), tags text[]);
           INSERT INTO kinds SELECT i, time '13:45:00.123456' + i * interval '1 minute',
             md5(i::text)::uuid, timestamptz '2024-03-01 12:00+02' + i * interval '1 hour',
             i * 1.25, ARRAY['a' || i, NULL]
             FROM generate_series(1, 50) i;
           INSERT INTO kinds VALUES (51, NULL, NULL, NULL, NULL, NULL);",
        ],
    )
    .await;
    let mut child = start_with(&db, DELTA);
    db.psql(&[
        "-v",
        "rounds=2",
        "-v",
        "batch=200",
        "-f",
        "sql/workload.sql",
    ]);
    execute(
        &db,
        &[
            "UPDATE kinds SET at = '23:59:59.999999', ref = gen_random_uuid() WHERE id <= 5",
            "DELETE FROM kinds WHERE id = 50",
        ],
    )
    .await;
    caught_up(&db, &mut child).await;
    stop(child);

    let ns = &db.namespace;
    assert_eq!(
        query(
            &db,
            &format!("SELECT count(*), sum(total_amount) FROM {ns}.orders")
        ),
        postgres(
            &db,
            "SELECT count(*) || ',' || sum(total_amount)::numeric(20,2) FROM orders"
        )
        .await,
        "lakewriter query over the Delta table differs from PostgreSQL"
    );
    assert_eq!(
        query(&db, &format!("SELECT id FROM {ns}.kinds ORDER BY id")),
        postgres(&db, "SELECT id::text FROM kinds ORDER BY kinds.id").await
    );

    let (equal, out, err) = lakewriter(&db, &["verify"], &[]);
    assert!(equal, "verify found differences: {out}{err}");
    assert!(
        out.contains(&format!("public.orders → {ns}.orders: equal")),
        "{out}"
    );
    assert!(
        out.contains(&format!("public.kinds → {ns}.kinds: equal (50 rows)")),
        "{out}"
    );

    // with the writer stopped, PostgreSQL moves on: verify must see it
    execute(
        &db,
        &[
            "UPDATE kinds SET at = '00:00:01' WHERE id = 7",
            "DELETE FROM kinds WHERE id = 8",
            "INSERT INTO kinds (id) VALUES (900)",
        ],
    )
    .await;
    let (equal, out, _) = lakewriter(&db, &["verify", "--table", "public.kinds"], &[]);
    assert!(!equal, "verify missed the differences: {out}");
    assert!(
        out.contains("1 missing, 1 extra, 1 different"),
        "verify's counts: {out}"
    );
    for key in ["missing: id=900", "extra: id=8", "different: id=7"] {
        assert!(out.contains(key), "verify did not name {key}: {out}");
    }
}
