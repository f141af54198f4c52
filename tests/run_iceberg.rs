//! `lakewriter run` as a user runs it — the binary, against the real PostgreSQL, writing
//! Iceberg tables with the local SQLite catalog — read back by DuckDB, an independent reader.
//! The lake must equal PostgreSQL row for row: after a clean stop, and after the writer is
//! killed with SIGKILL at random moments (during the snapshot, while streaming, mid-commit)
//! and restarted, again and again: no row lost, none duplicated.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::TestDb;
use support::orders::{
    LAKE_DUPLICATES, LAKE_LINES, delete_file_counts, postgres_ids, postgres_lines, pyiceberg_ids,
};
use support::writer::{
    acknowledged, caught_up, command_ok, config_path, crash_and_restart, duck_query, lake_shows,
    lake_shows_now, start, start_with, stop,
};

/// The lines of `postgres_lines` from the lake, read by DuckDB's iceberg extension through the
/// metadata file the SQLite catalog points at; also checks no key appears twice.
fn lake_lines(db: &TestDb) -> Vec<String> {
    assert_eq!(
        duck_query(db, "orders", LAKE_DUPLICATES),
        vec!["0".to_string()],
        "duplicated keys in the lake"
    );
    duck_query(db, "orders", LAKE_LINES)
}

#[tokio::test]
async fn run_streams_into_iceberg_and_duckdb_reads_what_postgres_holds() {
    let db = TestDb::new("run_iceberg").await;
    db.psql(&["-v", "rows=5000", "-f", "sql/orders.sql"]);
    let mut child = start(&db);
    db.workload(3, 400);
    caught_up(&db, &mut child).await;
    let log = stop(child);
    assert!(log.contains("stopped"), "{log}");
    assert_eq!(lake_lines(&db), postgres_lines(&db).await);

    // status shows the table with its checkpoint, and the slot
    let output = Command::new(env!("CARGO_BIN_EXE_lakewriter"))
        .args(["status", "--config"])
        .arg(config_path(&db))
        .output()
        .expect("run lakewriter status");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{}.orders ", db.namespace)))
        .unwrap_or_else(|| panic!("no orders line in:\n{text}"));
    assert!(!line.contains("incomplete"), "{line}");
    // the last two columns: manifests of the current snapshot, and metadata.json's size
    let fields: Vec<&str> = line.split_whitespace().collect();
    let manifests: usize = fields[fields.len() - 2].parse().expect("manifests");
    let metadata_bytes: u64 = fields[fields.len() - 1].parse().expect("metadata bytes");
    assert!(manifests >= 1 && metadata_bytes > 0, "{line}");
    assert!(
        !text.contains("warning:"),
        "a small table is warned about: {text}"
    );
    assert!(
        text.contains(&format!("slot {}: confirmed", db.slot)),
        "{text}"
    );
}

#[tokio::test]
async fn kill_9_at_random_moments_loses_and_duplicates_nothing() {
    let db = TestDb::new("run_crash").await;
    db.psql(&["-v", "rows=20000", "-f", "sql/orders.sql"]);
    crash_and_restart(&db, &[], 12, 8, 2500).await;
    assert_eq!(lake_lines(&db), postgres_lines(&db).await);
}

#[tokio::test]
async fn schema_changes_truncates_and_unchanged_toast_values_reach_the_lake() {
    let db = TestDb::new("run_evolve").await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE docs (id int PRIMARY KEY, body text, n int);
             ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
             INSERT INTO docs SELECT i, repeat(md5(i::text), 400), i FROM generate_series(1, 20) i;",
        )
        .await
        .expect("schema");
    let mut child = start(&db);
    caught_up(&db, &mut child).await;
    for statement in [
        // the toasted body is not sent: the writer must find it in the lake
        "UPDATE docs SET n = n + 100 WHERE id <= 5",
        "ALTER TABLE docs ADD COLUMN tag text",
        "UPDATE docs SET tag = 'tagged' WHERE id BETWEEN 3 AND 8",
        "ALTER TABLE docs ALTER COLUMN n TYPE bigint",
        "INSERT INTO docs VALUES (21, 'short', 5000000000, 'wide')",
        "DELETE FROM docs WHERE id = 20",
    ] {
        db.client()
            .await
            .batch_execute(statement)
            .await
            .expect(statement);
    }
    caught_up(&db, &mut child).await;
    let expected: Vec<String> = db
        .client()
        .await
        .query(
            "SELECT id || '|' || md5(body) || '|' || n || '|' || coalesce(tag, 'NULL') \
             FROM docs ORDER BY id",
            &[],
        )
        .await
        .expect("read")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        duck_query(
            &db,
            "docs",
            "SELECT id, md5(body), n, tag FROM {scan} ORDER BY id"
        ),
        expected
    );

    // a dropped column stays in the lake, null from then on; a renamed one is a new column
    // (matched by name), its old name null from then on
    for statement in [
        "ALTER TABLE docs DROP COLUMN tag",
        "INSERT INTO docs VALUES (22, 'after drop', 7)",
        "UPDATE docs SET n = n + 1 WHERE id = 4",
        "ALTER TABLE docs RENAME COLUMN n TO amount",
        "UPDATE docs SET amount = amount + 1 WHERE id = 1",
    ] {
        db.client()
            .await
            .batch_execute(statement)
            .await
            .expect(statement);
    }
    caught_up(&db, &mut child).await;
    let amount_of_1: i64 = db
        .client()
        .await
        .query_one("SELECT amount FROM docs WHERE id = 1", &[])
        .await
        .expect("read")
        .get(0);
    assert_eq!(
        duck_query(
            &db,
            "docs",
            "SELECT id, coalesce(tag, 'NULL'), coalesce(n::VARCHAR, 'NULL'), \
               coalesce(amount::VARCHAR, 'NULL') FROM {scan} WHERE id IN (1, 3, 4, 22) ORDER BY id"
        ),
        vec![
            format!("1|NULL|NULL|{amount_of_1}"),
            "3|tagged|103|NULL".to_string(),
            "4|NULL|105|NULL".to_string(),
            "22|NULL|7|NULL".to_string(),
        ]
    );

    // a truncate empties the lake table, and later rows arrive
    db.client()
        .await
        .batch_execute("TRUNCATE docs; INSERT INTO docs VALUES (1, 'after', 1)")
        .await
        .expect("truncate");
    caught_up(&db, &mut child).await;
    stop(child);
    assert_eq!(
        duck_query(&db, "docs", "SELECT id, body FROM {scan} ORDER BY id"),
        vec!["1|after".to_string()]
    );
}

#[tokio::test]
async fn a_schema_change_the_lake_cannot_take_stops_that_table_only() {
    let db = TestDb::new("run_table_error").await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE a (id int PRIMARY KEY, v int);
             CREATE TABLE b (id int PRIMARY KEY, v text);
             INSERT INTO a VALUES (1, 10), (2, 20);
             INSERT INTO b VALUES (1, 'one');",
        )
        .await
        .expect("schema");
    let mut child = start(&db);
    caught_up(&db, &mut child).await;
    let before = acknowledged(&db).await;

    // int to text is no widening: table a stops; b goes on
    db.client()
        .await
        .batch_execute(
            "ALTER TABLE a ALTER COLUMN v TYPE text USING v::text;
             UPDATE a SET v = 'ten' WHERE id = 1;",
        )
        .await
        .expect("change a");
    db.client()
        .await
        .batch_execute("INSERT INTO b VALUES (2, 'two')")
        .await
        .expect("insert into b");
    let b_rows = "SELECT id, v FROM {scan} ORDER BY id";
    lake_shows(&db, &mut child, "b", b_rows, &["1|one", "2|two"]).await;
    assert_eq!(
        duck_query(&db, "a", "SELECT id, v FROM {scan} ORDER BY id"),
        vec!["1|10".to_string(), "2|20".to_string()],
        "table a stays at its last good commit"
    );
    // the slot keeps a's WAL: the acknowledged position stays below a's change
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = acknowledged(&db).await;
    assert!(
        held < db.sync_point().await && held >= before,
        "the slot must hold table a's unwritten change (acknowledged {held})"
    );
    // status names the stopped table and its error, while the writer runs
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = command_ok(&db, &["status"], &[]);
        let line = status.lines().find(|l| l.contains("public.a:"));
        if line.is_some_and(|l| l.contains("column v")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status never named table a's error: {status}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let log = stop(child);
    assert!(
        log.contains("public.a") && log.contains("column v"),
        "the error names the table and column: {log}"
    );
    assert!(log.contains("LSN"), "the error names the LSN: {log}");

    // a restart before the fix keeps table a stopped, from the start, and b still goes on
    let mut child = start(&db);
    db.client()
        .await
        .batch_execute("INSERT INTO b VALUES (3, 'three')")
        .await
        .expect("insert into b");
    let all_of_b = ["1|one", "2|two", "3|three"];
    lake_shows(&db, &mut child, "b", b_rows, &all_of_b).await;
    assert_eq!(
        acknowledged(&db).await,
        held,
        "the slot still holds table a's WAL"
    );
    stop(child);

    // with stop_all, the same change stops the run, and nothing of a or b is lost
    let child = start_with(&db, &[("SINK__ON_TABLE_ERROR", "stop_all")]);
    let (status, log) = child.wait_with_log();
    assert!(!status.success(), "stop_all must fail the run: {log}");
    assert!(log.contains("column v"), "{log}");
    assert_eq!(
        duck_query(&db, "a", "SELECT id, v FROM {scan} ORDER BY id"),
        vec!["1|10".to_string(), "2|20".to_string()]
    );

    // with suspend_table, the table's WAL is released and b goes on
    let mut child = start_with(&db, &[("SINK__ON_TABLE_ERROR", "suspend_table")]);
    caught_up(&db, &mut child).await;
    let log = stop(child);
    assert!(log.contains("suspended"), "{log}");
    lake_shows_now(&db, "b", b_rows, &all_of_b);

    // and the next start copies it again, its column replaced by one of the new type
    let mut child = start(&db);
    caught_up(&db, &mut child).await;
    stop(child);
    assert_eq!(
        duck_query(&db, "a", "SELECT id, v FROM {scan} ORDER BY id"),
        vec!["1|ten".to_string(), "2|20".to_string()]
    );
}

#[tokio::test]
async fn a_transaction_larger_than_the_memory_budget_reaches_the_lake_whole() {
    let db = TestDb::new("run_spill").await;
    db.psql(&["-v", "rows=1000", "-f", "sql/orders.sql"]);
    let spill = tempfile::tempdir().expect("a temporary directory");
    let spill_dir = spill.path().display().to_string();
    let settings = [
        ("FLUSH__MEMORY_BUDGET", "256KiB"),
        ("FLUSH__MAX_BYTES", "128KiB"),
        ("FLUSH__SPILL_DIR", spill_dir.as_str()),
    ];
    let mut child = start_with(&db, &settings);
    caught_up(&db, &mut child).await;
    let snapshots = "SELECT count(*) FROM iceberg_snapshots('{metadata}')";
    let copied = duck_query(&db, "orders", snapshots);
    db.client()
        .await
        .batch_execute(
            "BEGIN;
             INSERT INTO orders (customer_id, order_date, total_amount, status)
               SELECT g % 97, date '2024-06-01', g, 'new' FROM generate_series(1, 20000) g;
             UPDATE orders SET status = 'paid' WHERE order_id % 3 = 0;
             UPDATE orders SET order_id = order_id + 1000000 WHERE order_id % 7 = 0;
             DELETE FROM orders WHERE order_id % 11 = 0;
             COMMIT;",
        )
        .await
        .expect("one large transaction");
    caught_up(&db, &mut child).await;
    assert_eq!(
        lake_lines(&db),
        postgres_lines(&db).await,
        "after a spilled transaction the lake differs from PostgreSQL"
    );
    // one more snapshot: the whole transaction
    let count = |lines: Vec<String>| lines.concat().parse::<u32>().expect("a count");
    assert_eq!(
        count(duck_query(&db, "orders", snapshots)),
        count(copied) + 1
    );
    // in position mode (the default) its deletes are position deletes too: pyiceberg, which
    // refuses equality deletes, reads it without a compaction
    let equality = |db: &TestDb| {
        let counts = delete_file_counts(db);
        counts.split(' ').next().unwrap_or_default().to_string()
    };
    assert_eq!(
        equality(&db),
        "0",
        "the spilled transaction wrote equality deletes"
    );
    assert_eq!(
        pyiceberg_ids(&db),
        postgres_ids(&db).await,
        "pyiceberg after the spilled transaction"
    );

    // the next flush updates and deletes rows the large transaction wrote and kept: the key
    // index catches up with that commit first, and its deletes stay positional
    db.client()
        .await
        .batch_execute(
            "UPDATE orders SET status = 'late' WHERE order_id % 5 = 0;
             DELETE FROM orders WHERE order_id % 13 = 0;",
        )
        .await
        .expect("changes after the large transaction");
    caught_up(&db, &mut child).await;
    let log = stop(child);
    assert!(
        log.contains("spilling"),
        "the transaction was not spilled: {log}"
    );
    assert_eq!(
        lake_lines(&db),
        postgres_lines(&db).await,
        "after the flush that followed a spilled transaction the lake differs: {log}"
    );
    assert_eq!(
        equality(&db),
        "0",
        "equality deletes after the spilled transaction: {log}"
    );
    assert_eq!(
        pyiceberg_ids(&db),
        postgres_ids(&db).await,
        "pyiceberg after the next flush"
    );
}

#[tokio::test]
async fn toast_under_replica_identity_full_and_a_transaction_across_tables() {
    let db = TestDb::new("run_full").await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE docs (id int PRIMARY KEY, body text, n int);
             ALTER TABLE docs REPLICA IDENTITY FULL;
             CREATE TABLE notes (id int PRIMARY KEY, note text);
             INSERT INTO docs SELECT i, repeat(md5(i::text), 400), i FROM generate_series(1, 10) i;",
        )
        .await
        .expect("schema");
    let mut child = start(&db);
    caught_up(&db, &mut child).await;
    // one transaction over both tables: unchanged TOAST under FULL, a row inserted and deleted
    // within it, a re-keyed row, and a row of the other table inserted then updated
    db.client()
        .await
        .batch_execute(
            "BEGIN;
             UPDATE docs SET n = n + 100 WHERE id <= 5;
             INSERT INTO notes VALUES (1, 'first');
             INSERT INTO docs VALUES (100, 'short-lived', 1);
             DELETE FROM docs WHERE id = 100;
             UPDATE docs SET id = 50 WHERE id = 6;
             UPDATE notes SET note = 'second' WHERE id = 1;
             COMMIT;",
        )
        .await
        .expect("one transaction");
    caught_up(&db, &mut child).await;
    stop(child);
    let expected: Vec<String> = db
        .client()
        .await
        .query(
            "SELECT id || '|' || md5(body) || '|' || n FROM docs ORDER BY id",
            &[],
        )
        .await
        .expect("read")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        duck_query(
            &db,
            "docs",
            "SELECT id, md5(body), n FROM {scan} ORDER BY id"
        ),
        expected
    );
    assert_eq!(
        duck_query(&db, "notes", "SELECT id, note FROM {scan}"),
        vec!["1|second".to_string()]
    );
}

/// `delete_mode = "deletion_vector"`: an unchanged TOAST value is found in the lake past the
/// deletion vectors of earlier updates (the old rows of a key they removed are not taken for
/// its current row), in a format-3 table.
#[tokio::test]
async fn unchanged_toast_values_are_found_past_deletion_vectors() {
    let db = TestDb::new("run_toast_vectors").await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE docs (id int PRIMARY KEY, body text, n int);
             ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
             INSERT INTO docs SELECT i, repeat(md5(i::text), 400), i FROM generate_series(1, 20) i;",
        )
        .await
        .expect("schema");
    let mut child = start_with(&db, &[("SINK__DELETE_MODE", "deletion_vector")]);
    caught_up(&db, &mut child).await;
    // each update in its own flush: the second finds the rows of ids 3 to 5 the first wrote,
    // their old rows removed by deletion vectors
    for statement in [
        "UPDATE docs SET n = n + 100 WHERE id <= 5",
        "UPDATE docs SET n = n + 1000 WHERE id BETWEEN 3 AND 8",
        "UPDATE docs SET body = repeat(md5('new' || id), 400) WHERE id = 4",
        "UPDATE docs SET n = n + 1 WHERE id BETWEEN 4 AND 5",
    ] {
        db.client()
            .await
            .batch_execute(statement)
            .await
            .expect(statement);
        caught_up(&db, &mut child).await;
    }
    stop(child);
    let expected: Vec<String> = db
        .client()
        .await
        .query(
            "SELECT id || '|' || md5(body) || '|' || n FROM docs ORDER BY id",
            &[],
        )
        .await
        .expect("read")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        duck_query(
            &db,
            "docs",
            "SELECT id, md5(body), n FROM {scan} ORDER BY id"
        ),
        expected
    );
    let formats = duck_query(
        &db,
        "docs",
        "SELECT DISTINCT file_format FROM iceberg_metadata('{metadata}') \
         WHERE manifest_content = 'DELETE' AND status <> 'DELETED' ORDER BY 1",
    );
    assert_eq!(formats, vec!["PUFFIN".to_string()], "deletion vectors only");
    // one vector per Puffin file: DuckDB applies a file's first vector to every data file
    // it holds a vector of
    let shared = duck_query(
        &db,
        "docs",
        "SELECT count(*) FROM (SELECT file_path FROM iceberg_metadata('{metadata}') \
         WHERE manifest_content = 'DELETE' AND status <> 'DELETED' GROUP BY file_path \
         HAVING count(*) > 1)",
    );
    assert_eq!(
        shared,
        vec!["0".to_string()],
        "Puffin files holding several vectors"
    );
}
