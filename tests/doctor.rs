//! `lakewriter doctor` against a real PostgreSQL: a database ready for replication passes; each
//! problem a run would trip on is reported with the SQL that fixes it, and fails the command.

mod support;

use std::process::Command;

use support::TestDb;

struct Outcome {
    code: Option<i32>,
    stdout: String,
}

fn doctor(db: &TestDb, extra: &str, env: &[(&str, &str)]) -> Outcome {
    let path = db.warehouse.path().join("doctor.toml");
    std::fs::write(&path, db.config_toml(extra)).expect("write config");
    let output = Command::new(env!("CARGO_BIN_EXE_lakewriter"))
        .args(["doctor", "--config"])
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .expect("run lakewriter doctor");
    Outcome {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
    }
}

#[tokio::test]
async fn a_ready_database_passes() {
    let db = TestDb::new("doctor_ok").await;
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "CREATE TABLE orders (order_id serial PRIMARY KEY, status text, created_at timestamptz);
             CREATE PUBLICATION {} FOR TABLE orders;",
            db.publication
        ))
        .await
        .expect("schema");
    let out = doctor(
        &db,
        "[sink.tables.\"public.orders\"]\npartition_by = [\"bucket(8, order_id)\"]\n",
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    for expected in [
        "ok      wal_level = logical",
        "may start replication",
        "publishes inserts, updates and deletes",
        "table public.orders: 3 columns, key (order_id), replica identity Default",
        "does not exist yet: run creates it",
        "ready to run",
    ] {
        assert!(
            out.stdout.contains(expected),
            "{expected:?} in:\n{}",
            out.stdout
        );
    }
    assert!(!out.stdout.contains("error "), "{}", out.stdout);
}

#[tokio::test]
async fn each_problem_is_reported_with_its_fix() {
    let db = TestDb::new("doctor_problems").await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE events (id bigint, payload text);
             CREATE TABLE orders (order_id int PRIMARY KEY, status text);
             CREATE TABLE audit (id int PRIMARY KEY);",
        )
        .await
        .expect("schema");
    // The publication leaves out `audit`; the slot exists with the wrong plugin.
    client
        .batch_execute(&format!(
            "CREATE PUBLICATION {} FOR TABLE events, orders WITH (publish = 'insert, update, delete')",
            db.publication
        ))
        .await
        .expect("publication");
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
            &[&db.slot],
        )
        .await
        .expect("slot");
    let out = doctor(
        &db,
        "[sink.tables.\"public.orders\"]\npartition_by = [\"status\"]\n\
         [source.tables.\"public.ordrs\"]\nmode = \"changelog\"\n",
        &[],
    );
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    for expected in [
        // a table with no key cannot be upserted
        "table public.events: no primary key or replica identity index",
        "ALTER TABLE \"public\".\"events\" ADD PRIMARY KEY",
        "mode = \"changelog\"",
        // a partition column outside the replica identity needs the whole old row
        "table public.orders: partitioned on status, which is outside its replica identity",
        "ALTER TABLE \"public\".\"orders\" REPLICA IDENTITY FULL;",
        // a table the patterns select but the publication leaves out
        "not in publication",
        "ADD TABLE \"public\".\"audit\";",
        // TRUNCATE is not published
        "does not publish TRUNCATE",
        // the slot was made by another plugin
        "uses the \"test_decoding\" plugin, not pgoutput",
        // a typo in a table section
        "[source.tables.\"public.ordrs\"] matches no replicated table",
        "lakewriter run would fail",
    ] {
        assert!(
            out.stdout.contains(expected),
            "{expected:?} in:\n{}",
            out.stdout
        );
    }
}

#[tokio::test]
async fn a_missing_publication_and_slot_are_errors_when_not_to_be_created() {
    let db = TestDb::new("doctor_missing").await;
    db.client()
        .await
        .batch_execute("CREATE TABLE orders (order_id int PRIMARY KEY)")
        .await
        .expect("schema");
    let out = doctor(
        &db,
        "",
        &[
            ("LAKEWRITER__SOURCE__CREATE_PUBLICATION", "false"),
            ("LAKEWRITER__SOURCE__CREATE_SLOT", "false"),
        ],
    );
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let create_publication = format!(
        "CREATE PUBLICATION \"{}\" FOR TABLE \"public\".\"orders\";",
        db.publication
    );
    let create_slot = format!(
        "SELECT pg_create_logical_replication_slot('{}', 'pgoutput');",
        db.slot
    );
    assert!(out.stdout.contains(&create_publication), "{}", out.stdout);
    assert!(out.stdout.contains(&create_slot), "{}", out.stdout);
}

#[tokio::test]
async fn a_wrong_password_is_reported_without_the_password() {
    let db = TestDb::new("doctor_auth").await;
    let out = doctor(
        &db,
        "",
        &[("LAKEWRITER__SOURCE__PASSWORD", "not-the-password")],
    );
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(
        out.stdout.contains("password authentication failed"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("not-the-password"), "{}", out.stdout);
}

#[tokio::test]
async fn with_delta_the_warehouse_is_checked_not_the_iceberg_catalog() {
    let db = TestDb::new("doctor_delta").await;
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "CREATE TABLE orders (order_id serial PRIMARY KEY, status text);
             CREATE PUBLICATION {} FOR TABLE orders;",
            db.publication
        ))
        .await
        .expect("schema");
    let ready = doctor(&db, "format = \"delta\"\n", &[]);
    assert_eq!(ready.code, Some(0), "{}", ready.stdout);
    assert!(ready.stdout.contains("is writable"), "{}", ready.stdout);
    assert!(
        ready.stdout.contains("Delta tables need no catalog"),
        "{}",
        ready.stdout
    );
    assert!(!ready.stdout.contains("SQLite catalog"), "{}", ready.stdout);

    // an Iceberg transform would stop the table when the Delta sink creates it
    let transform = doctor(
        &db,
        "format = \"delta\"\n[sink.tables.\"public.orders\"]\npartition_by = [\"bucket(8, order_id)\"]\n",
        &[],
    );
    assert_eq!(transform.code, Some(1), "{}", transform.stdout);
    assert!(
        transform
            .stdout
            .contains("table public.orders: partition_by \"bucket(8, order_id)\""),
        "{}",
        transform.stdout
    );
}
