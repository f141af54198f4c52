//! Tables whose stream breaks without a sign in the stream itself, against the real
//! PostgreSQL: a table that leaves the publication and rejoins it (while the writer runs,
//! between two of its checks, or while it is stopped), one left out of the `include` list for
//! a run, and a slot dropped and created again out of band. In each, the changes made
//! meanwhile never reach the slot; the writer must notice, copy the table again, and end with
//! the lake equal to PostgreSQL — while a table whose stream did not break is not copied.

mod support;

use std::time::{Duration, Instant};

use support::TestDb;
use support::writer::{Writer, caught_up, config_path, duck_query, start, stop, write_config};

/// Tables `a` and `b`, 50 rows each, in a publication naming them one by one.
async fn two_tables(db: &TestDb) {
    db.client()
        .await
        .batch_execute(&format!(
            "CREATE TABLE a (id int PRIMARY KEY, v text);
             CREATE TABLE b (id int PRIMARY KEY, v text);
             INSERT INTO a SELECT g, 'a' || g FROM generate_series(1, 50) g;
             INSERT INTO b SELECT g, 'b' || g FROM generate_series(1, 50) g;
             CREATE PUBLICATION {} FOR TABLE a, b;",
            db.publication
        ))
        .await
        .expect("schema");
    write_config(db, "");
}

/// A round of changes to `table`: an update, a delete and an insert, all named by `round`.
async fn change(db: &TestDb, table: &str, round: i32) {
    db.client()
        .await
        .batch_execute(&format!(
            "UPDATE {table} SET v = 'r{round}' WHERE id = {round};
             DELETE FROM {table} WHERE id = {round} + 10;
             INSERT INTO {table} VALUES (100 + {round}, 'new{round}');"
        ))
        .await
        .expect("change");
}

async fn postgres_rows(db: &TestDb, table: &str) -> Vec<String> {
    db.client()
        .await
        .query(
            &format!("SELECT id::text || '|' || v FROM {table} ORDER BY id"),
            &[],
        )
        .await
        .expect("read PostgreSQL")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn lake_rows(db: &TestDb, table: &str) -> Vec<String> {
    duck_query(
        db,
        table,
        "SELECT id::VARCHAR || '|' || v FROM {scan} ORDER BY id",
    )
}

/// Waits until the lake's `table` equals PostgreSQL's.
async fn lake_equals_postgres(db: &TestDb, writer: &mut Writer, table: &str) {
    let expected = postgres_rows(db, table).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if lake_rows(db, table) == expected {
            return;
        }
        if let Ok(Some(status)) = writer.try_wait() {
            panic!("lakewriter exited early with {status}");
        }
        if Instant::now() >= deadline {
            let lake = lake_rows(db, table);
            let _ = writer.kill();
            let log = writer.log();
            panic!(
                "lake table {table} never equalled PostgreSQL: lake {lake:?}, PostgreSQL \
                 {expected:?}; the writer's log:\n{log}"
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn publication(db: &TestDb, action: &str) {
    db.client()
        .await
        .batch_execute(&format!(
            "ALTER PUBLICATION {} {action} TABLE a",
            db.publication
        ))
        .await
        .expect("alter the publication");
}

/// The tables a writer's log says it copied again.
fn copied_again(log: &str) -> Vec<String> {
    let mut tables: Vec<String> = log
        .lines()
        .filter(|l| l.contains("copying the table again") || l.contains("so it is copied again"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("table=").map(str::to_string))
        })
        .collect();
    tables.sort();
    tables.dedup();
    tables
}

#[tokio::test]
async fn a_table_that_leaves_and_rejoins_the_publication_while_running_is_copied_again() {
    let db = TestDb::new("member_running").await;
    two_tables(&db).await;
    let mut writer = start(&db);
    caught_up(&db, &mut writer).await;

    publication(&db, "DROP").await;
    // the writer checks the membership every second here: let it see the table gone
    tokio::time::sleep(Duration::from_millis(2500)).await;
    change(&db, "a", 1).await;
    change(&db, "b", 1).await;
    publication(&db, "ADD").await;
    change(&db, "a", 2).await;

    lake_equals_postgres(&db, &mut writer, "a").await;
    lake_equals_postgres(&db, &mut writer, "b").await;
    let log = stop(writer);
    assert_eq!(copied_again(&log), vec!["public.a"], "{log}");
    assert_eq!(lake_rows(&db, "a"), postgres_rows(&db, "a").await);
}

#[tokio::test]
async fn a_table_that_leaves_and_rejoins_between_two_checks_is_copied_again() {
    let db = TestDb::new("member_quick").await;
    two_tables(&db).await;
    let mut writer = start(&db);
    caught_up(&db, &mut writer).await;

    // out and back in within one round trip: only its new membership says so
    db.client()
        .await
        .batch_execute(&format!(
            "ALTER PUBLICATION {p} DROP TABLE a;
             UPDATE a SET v = 'while out' WHERE id <= 20;
             DELETE FROM a WHERE id > 45;
             ALTER PUBLICATION {p} ADD TABLE a;",
            p = db.publication
        ))
        .await
        .expect("leave and rejoin");
    change(&db, "a", 3).await;
    change(&db, "b", 3).await;

    lake_equals_postgres(&db, &mut writer, "a").await;
    lake_equals_postgres(&db, &mut writer, "b").await;
    let log = stop(writer);
    assert_eq!(copied_again(&log), vec!["public.a"], "{log}");
}

#[tokio::test]
async fn a_table_that_left_and_rejoined_while_stopped_is_copied_again() {
    let db = TestDb::new("member_stopped").await;
    two_tables(&db).await;
    let mut writer = start(&db);
    caught_up(&db, &mut writer).await;
    change(&db, "a", 1).await;
    caught_up(&db, &mut writer).await;
    stop(writer);

    publication(&db, "DROP").await;
    change(&db, "a", 2).await;
    change(&db, "b", 2).await;
    publication(&db, "ADD").await;
    change(&db, "a", 3).await;

    let mut writer = start(&db);
    lake_equals_postgres(&db, &mut writer, "a").await;
    lake_equals_postgres(&db, &mut writer, "b").await;
    let log = stop(writer);
    assert_eq!(copied_again(&log), vec!["public.a"], "{log}");

    // and a plain restart copies nothing again
    change(&db, "b", 4).await;
    let mut writer = start(&db);
    lake_equals_postgres(&db, &mut writer, "b").await;
    let log = stop(writer);
    assert!(copied_again(&log).is_empty(), "{log}");
}

#[tokio::test]
async fn a_table_left_out_of_the_include_list_for_a_run_is_copied_again() {
    let db = TestDb::new("member_include").await;
    two_tables(&db).await;
    let mut writer = start(&db);
    caught_up(&db, &mut writer).await;
    stop(writer);

    // a run with `a` left out of the include list: its changes stream past, unwritten
    let path = config_path(&db);
    let full = std::fs::read_to_string(&path).expect("read config");
    let narrowed = full.replacen(
        "create_publication = true\n",
        "create_publication = true\ninclude = [\"public.b\"]\n",
        1,
    );
    assert_ne!(narrowed, full, "the config names create_publication");
    std::fs::write(&path, &narrowed).expect("write config");
    let mut writer = start(&db);
    change(&db, "a", 1).await;
    change(&db, "b", 1).await;
    caught_up(&db, &mut writer).await;
    lake_equals_postgres(&db, &mut writer, "b").await;
    stop(writer);

    std::fs::write(&path, &full).expect("write config");
    change(&db, "a", 2).await;
    let mut writer = start(&db);
    lake_equals_postgres(&db, &mut writer, "a").await;
    lake_equals_postgres(&db, &mut writer, "b").await;
    let log = stop(writer);
    assert_eq!(copied_again(&log), vec!["public.a"], "{log}");
}

#[tokio::test]
async fn a_slot_created_again_out_of_band_copies_every_table_again() {
    let db = TestDb::new("member_slot").await;
    two_tables(&db).await;
    let mut writer = start(&db);
    caught_up(&db, &mut writer).await;
    stop(writer);

    let client = db.client().await;
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&db.slot])
        .await
        .expect("drop the slot");
    change(&db, "a", 1).await;
    change(&db, "b", 1).await;
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&db.slot],
        )
        .await
        .expect("create the slot again");
    change(&db, "a", 2).await;

    let mut writer = start(&db);
    lake_equals_postgres(&db, &mut writer, "a").await;
    lake_equals_postgres(&db, &mut writer, "b").await;
    let log = stop(writer);
    assert_eq!(copied_again(&log), vec!["public.a", "public.b"], "{log}");
}
