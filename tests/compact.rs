//! `lakewriter compact` beside a running writer: the rewrite keeps the data sequence number
//! of the snapshot it read, so the writer's equality deletes committed meanwhile still apply;
//! afterwards DuckDB and `verify` find the lake equal to PostgreSQL, and pyiceberg, which
//! refuses tables with equality deletes, reads the compacted table. A truncate committed
//! while a rewrite is in flight makes the rewrite read again, never undo it.

mod support;

use lakewriter::catalog::Catalog;
use lakewriter::sink::iceberg::{IcebergSink, Rewrite, lake_table};
use lakewriter::table::TableId;
use support::orders::{LAKE_LINES, postgres_lines};
use support::writer::{
    caught_up, command_ok, config_path, duck_query, pyiceberg, start, start_with, stop,
    write_config,
};
use support::{TestDb, stack};

/// The orders rows in the lake, as [`postgres_lines`] gives them from PostgreSQL.
fn lake_rows(db: &TestDb) -> Vec<String> {
    duck_query(db, "orders", LAKE_LINES)
}

/// The live files of the lake's orders table (data and delete files), as DuckDB's metadata
/// reader lists them.
fn live_files(db: &TestDb) -> Vec<String> {
    duck_query(
        db,
        "orders",
        // (DuckDB 1.5.5 names an entry's status in both `status` and `content`)
        "SELECT manifest_content || ' ' || file_path FROM iceberg_metadata('{metadata}') \
         WHERE status <> 'DELETED' AND content <> 'DELETED'",
    )
}

#[tokio::test]
async fn compaction_beside_a_streaming_writer_keeps_the_lake_equal_to_postgres() {
    let db = TestDb::new("compact").await;
    db.psql(&["-v", "rows=3000", "-f", "sql/orders.sql"]);
    let mut child = start(&db);
    caught_up(&db, &mut child).await;

    // a workload of updates and deletes runs while compact rewrites, twice
    let url = db.url.clone();
    let workload = std::thread::spawn(move || {
        let status = stack()
            .pg_program("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &url])
            .args([
                "-v",
                "rounds=6",
                "-v",
                "batch=200",
                "-f",
                "sql/workload.sql",
            ])
            .current_dir(support::project_dir())
            .status()
            .expect("run the workload");
        assert!(status.success(), "workload failed");
    });
    for _ in 0..2 {
        let report = command_ok(&db, &["compact"], &[]);
        assert!(report.contains("orders"), "{report}");
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    }
    workload.join().expect("workload");
    caught_up(&db, &mut child).await;
    assert_eq!(
        lake_rows(&db),
        postgres_lines(&db).await,
        "after compacting under load"
    );
    stop(child);

    // quiet: a last compaction leaves no delete file, and every reader agrees
    let report = command_ok(&db, &["compact", "--table", "public.orders"], &[]);
    assert!(report.contains("data files"), "{report}");
    let files = live_files(&db);
    assert!(
        files.iter().all(|f| f.starts_with("DATA ")),
        "delete files left after compaction: {files:?}"
    );
    assert_eq!(
        lake_rows(&db),
        postgres_lines(&db).await,
        "after compaction"
    );
    let verify = command_ok(&db, &["verify"], &[]);
    assert!(verify.contains("equal"), "{verify}");

    // pyiceberg refuses equality deletes: reading the table proves they are gone
    let stdout = pyiceberg(
        &db,
        "orders",
        r#"
table = catalog.load_table(ident)
print(table.scan().to_arrow().num_rows)
print(table.current_snapshot().summary.get("lakewriter.lsn"))
"#,
        &[],
    );
    let mut lines = stdout.lines();
    let rows: usize = lines.next().and_then(|l| l.parse().ok()).expect("a count");
    assert_eq!(rows, postgres_lines(&db).await.len());
    let lsn = lines.next().unwrap_or_default();
    assert!(
        lsn.contains('/'),
        "the checkpoint was not carried forward: {lsn:?}"
    );
}

/// A truncate that lands while a rewrite is in flight wins: the rewrite's commit sees a
/// rewritten file gone, and the table is never brought back.
#[tokio::test]
async fn a_truncate_during_a_rewrite_is_never_undone() {
    let db = TestDb::new("compact_conflict").await;
    db.psql(&["-v", "rows=500", "-f", "sql/orders.sql"]);
    let mut child = start(&db);
    caught_up(&db, &mut child).await;
    db.client()
        .await
        .batch_execute("UPDATE orders SET status = 'x' WHERE order_id % 2 = 0")
        .await
        .expect("update");
    caught_up(&db, &mut child).await;

    // the rewrite reads and writes against the table as it is now …
    let config = lakewriter::Config::load(&config_path(&db)).expect("config");
    let sink = IcebergSink::from_config(&config).await.expect("sink");
    let lake = lake_table(&config.sink.namespace, &TableId::new("public", "orders"));
    let pointer = sink
        .catalog()
        .load(&lake)
        .await
        .expect("load")
        .expect("the table");
    let io = lakewriter::sink::iceberg::file_io(&config).expect("file io");
    let metadata = iceberg::spec::TableMetadata::read_from(&io, &pointer.metadata_location)
        .await
        .expect("metadata");
    let snapshot = metadata.current_snapshot().expect("a snapshot").clone();
    let removes: std::collections::HashSet<String> = live_files(&db)
        .iter()
        .filter_map(|f| f.split_once(' ').map(|(_, path)| path.to_string()))
        .collect();
    assert!(!removes.is_empty());

    // … a truncate commits meanwhile …
    db.client()
        .await
        .batch_execute("TRUNCATE orders")
        .await
        .expect("truncate");
    caught_up(&db, &mut child).await;
    stop(child);
    assert!(lake_rows(&db).is_empty());

    // … and the rewrite, committing the old rows as a replacement of files the truncate
    // removed, must lose
    let rows = duck_query(&db, "orders", "SELECT count(*) FROM {scan}");
    assert_eq!(rows, vec!["0".to_string()]);
    let err = sink
        .commit_rewrite(
            &lake,
            &pointer,
            &metadata,
            Vec::new(),
            Rewrite {
                data_sequence: snapshot.sequence_number(),
                schema_id: metadata.current_schema_id(),
                removes,
            },
        )
        .await
        .expect_err("the rewrite must lose to the truncate");
    assert!(lakewriter::sink::iceberg::is_conflict(&err), "{err}");
    assert!(lake_rows(&db).is_empty(), "the truncated rows came back");
}

/// Files under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("list").flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// `orders` (500 rows) copied by `run`, then a third of its rows updated in each of three
/// commits, the writer stopped: a table with equality deletes for `compact`. Returns the
/// database and the table's data directory.
async fn orders_updated_three_times(label: &str) -> (TestDb, std::path::PathBuf) {
    let db = TestDb::new(label).await;
    db.psql(&["-v", "rows=500", "-f", "sql/orders.sql"]);
    let mut child = start(&db);
    caught_up(&db, &mut child).await;
    for round in 0..3 {
        db.client()
            .await
            .batch_execute(&format!(
                "UPDATE orders SET status = 'r{round}' WHERE order_id % 3 = {round}"
            ))
            .await
            .expect("update");
        caught_up(&db, &mut child).await;
    }
    stop(child);
    let data_dir = db
        .warehouse
        .path()
        .join(&db.namespace)
        .join("orders")
        .join("data");
    (db, data_dir)
}

#[tokio::test]
async fn expiry_and_orphan_removal_never_touch_a_live_file() {
    let (db, data_dir) = orders_updated_three_times("compact_clean").await;
    // an orphan a failed commit could leave: a data file no snapshot references
    let orphan = data_dir.join("orphan-from-a-lost-commit.parquet");
    std::fs::write(&orphan, b"not referenced").expect("write an orphan");

    // the default safety window keeps everything recent, orphan included
    let report = command_ok(&db, &["compact"], &[]);
    assert!(report.contains("0 orphan files"), "{report}");
    assert!(orphan.exists());

    // no window, one snapshot kept: the old snapshots' files and the orphan go
    let settings = [
        ("COMPACTION__SNAPSHOT_RETENTION", "0s"),
        ("COMPACTION__KEEP_SNAPSHOTS", "1"),
        ("COMPACTION__ORPHAN_AGE", "0s"),
        ("COMPACTION__ENFORCE_ORPHAN_AGE_FLOOR", "false"),
    ];
    let report = command_ok(&db, &["compact"], &settings);
    assert!(!report.contains(" 0 snapshots expired"), "{report}");
    assert!(!orphan.exists(), "the orphan is still there: {report}");
    assert_eq!(
        lake_rows(&db),
        postgres_lines(&db).await,
        "a live file was removed"
    );

    // what is left on disk is exactly what the table references
    let live: std::collections::BTreeSet<String> = live_files(&db)
        .iter()
        .filter_map(|f| f.split_once(' ').map(|(_, path)| path.to_string()))
        .collect();
    let on_disk: std::collections::BTreeSet<String> = files_under(&data_dir)
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(
        on_disk, live,
        "data files on disk differ from the live ones"
    );
    let again = command_ok(&db, &["compact"], &settings);
    assert!(again.contains("0 orphan files"), "{again}");
    let verify = command_ok(&db, &["verify"], &[]);
    assert!(verify.contains("equal"), "{verify}");
}

#[tokio::test]
async fn files_compaction_replaced_go_with_the_last_snapshot_that_held_them() {
    let (db, data_dir) = orders_updated_three_times("compact_replaced").await;
    let on_disk = || -> std::collections::BTreeSet<String> {
        files_under(&data_dir)
            .iter()
            .map(|p| p.display().to_string())
            .collect()
    };
    let live = || -> std::collections::BTreeSet<String> {
        live_files(&db)
            .iter()
            .filter_map(|f| f.split_once(' ').map(|(_, path)| path.to_string()))
            .collect()
    };

    // the rewrite replaces every file; the snapshots before it still hold the old ones
    let report = command_ok(&db, &["compact"], &[]);
    assert!(report.contains("0 orphan files"), "{report}");
    let before = on_disk();
    assert!(
        before.len() > live().len(),
        "the old files are gone while snapshots still hold them: {report}"
    );

    // once no kept snapshot holds them, the expiry removes them itself: orphan removal,
    // three days away, finds nothing left to take
    let settings = [
        ("COMPACTION__SNAPSHOT_RETENTION", "0s"),
        ("COMPACTION__KEEP_SNAPSHOTS", "1"),
    ];
    let report = command_ok(&db, &["compact"], &settings);
    assert!(!report.contains(" 0 snapshots expired"), "{report}");
    assert!(!report.contains("(0 replaced files"), "{report}");
    assert!(report.contains(" 0 orphan files"), "{report}");
    assert_eq!(
        on_disk(),
        live(),
        "data files on disk differ from the live ones"
    );
    assert_eq!(
        lake_rows(&db),
        postgres_lines(&db).await,
        "a live file was removed"
    );
    let verify = command_ok(&db, &["verify"], &[]);
    assert!(verify.contains("equal"), "{verify}");
}

#[tokio::test]
async fn run_compacts_on_its_schedule_while_it_streams() {
    let db = TestDb::new("compact_scheduled").await;
    db.psql(&["-v", "rows=1000", "-f", "sql/orders.sql"]);
    let mut child = start_with(&db, &[("COMPACTION__INTERVAL", "1s")]);
    caught_up(&db, &mut child).await;
    for round in 0..4 {
        db.client()
            .await
            .batch_execute(&format!(
                "UPDATE orders SET status = 's{round}' WHERE order_id % 4 = {round};
                 DELETE FROM orders WHERE order_id % 29 = {round};"
            ))
            .await
            .expect("update");
        caught_up(&db, &mut child).await;
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    }
    caught_up(&db, &mut child).await;
    let log = stop(child);
    assert!(log.contains("scheduled compaction done"), "{log}");
    assert!(log.contains("compacted"), "no table was rewritten: {log}");
    assert_eq!(lake_rows(&db), postgres_lines(&db).await);
}

/// `delete_mode = "position"` beside `run`'s scheduled compaction: each compaction moves rows
/// the key index pointed at, so the writer's next flush loses its race, reads the table
/// again, finds the rows anew and commits position deletes still; no snapshot carries an
/// equality delete, so pyiceberg (which refuses them) reads the lake at every stop.
#[tokio::test]
async fn position_deletes_beside_scheduled_compaction_find_moved_rows_again() {
    let db = TestDb::new("compact_positions").await;
    db.psql(&["-v", "rows=1000", "-f", "sql/orders.sql"]);
    let index_dir = db.warehouse.path().join("key-index").display().to_string();
    let settings = [
        ("COMPACTION__INTERVAL", "1s"),
        ("SINK__DELETE_MODE", "position"),
        ("SINK__KEY_INDEX__DIR", index_dir.as_str()),
    ];
    let mut child = start_with(&db, &settings);
    caught_up(&db, &mut child).await;
    for round in 0..6 {
        db.client()
            .await
            .batch_execute(&format!(
                "UPDATE orders SET status = 's{round}' WHERE order_id % 4 = {};
                 DELETE FROM orders WHERE order_id % 29 = {round};",
                round % 4
            ))
            .await
            .expect("update");
        caught_up(&db, &mut child).await;
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    }
    caught_up(&db, &mut child).await;
    let log = stop(child);
    assert!(log.contains("compacted"), "no table was rewritten: {log}");
    assert!(
        log.contains("finding the deleted rows again"),
        "no flush met a compaction's commit: {log}"
    );
    assert!(
        !log.contains("writes equality deletes"),
        "a flush fell back to equality deletes: {log}"
    );
    assert_eq!(lake_rows(&db), postgres_lines(&db).await);
    let count = pyiceberg(
        &db,
        "orders",
        "print(len(catalog.load_table(ident).scan().to_arrow()))",
        &[],
    );
    assert_eq!(
        count.trim(),
        postgres_lines(&db).await.len().to_string(),
        "pyiceberg"
    );
}

/// Only the files that slow reads down are rewritten: a large file no delete applies to stays
/// as it is, and the delete files go once nothing left is older than them.
#[tokio::test]
async fn compact_rewrites_only_small_files_and_files_hit_by_deletes() {
    let db = TestDb::new("compact_select").await;
    db.psql(&["-v", "rows=5000", "-f", "sql/orders.sql"]);
    let mut child = start(&db);
    caught_up(&db, &mut child).await;
    // a small data file and a delete file that applies to the copied file …
    db.client()
        .await
        .batch_execute("UPDATE orders SET status = 'changed' WHERE order_id % 50 = 0")
        .await
        .expect("update");
    caught_up(&db, &mut child).await;
    // … then a large file committed after the delete, which it does not apply to
    let before: std::collections::BTreeSet<String> = live_files(&db).into_iter().collect();
    db.psql(&["-v", "rows=5000", "-f", "sql/orders.sql"]);
    caught_up(&db, &mut child).await;
    stop(child);
    let after_insert: std::collections::BTreeSet<String> = live_files(&db).into_iter().collect();
    let late: Vec<&String> = after_insert.difference(&before).collect();
    assert_eq!(late.len(), 1, "one file for the insert: {late:?}");
    let late = late[0].clone();
    assert!(late.starts_with("DATA "), "{late}");
    let size = |entry: &str| {
        std::fs::metadata(entry.split_once(' ').expect("an entry").1)
            .expect("a live file on disk")
            .len()
    };
    let sizes: Vec<(String, u64)> = after_insert.iter().map(|f| (f.clone(), size(f))).collect();

    // 16 KiB files: the two 5000-row files are large, the update's file is small
    let report = command_ok(
        &db,
        &["compact"],
        &[("COMPACTION__TARGET_FILE_SIZE", "16KiB")],
    );
    let after: std::collections::BTreeSet<String> = live_files(&db).into_iter().collect();
    assert!(
        after.contains(&late),
        "the late large file was rewritten: {report}\nbefore: {sizes:?}\nafter: {after:?}"
    );
    assert!(
        after.iter().all(|f| f.starts_with("DATA ")),
        "delete files left: {after:?}\n{report}"
    );
    assert!(
        after
            .iter()
            .filter(|f| **f != late)
            .all(|f| !after_insert.contains(f)),
        "a file hit by deletes or a small one is still live: {after:?}\nbefore: {sizes:?}"
    );
    assert!(report.contains("1 data files kept"), "{report}");
    assert_eq!(lake_rows(&db), postgres_lines(&db).await);
    let verify = command_ok(&db, &["verify"], &[]);
    assert!(verify.contains("equal"), "{verify}");

    // nothing left to do: a second pass leaves the table alone
    let again = command_ok(
        &db,
        &["compact"],
        &[("COMPACTION__TARGET_FILE_SIZE", "16KiB")],
    );
    assert!(again.contains("not compacted"), "{again}");
}

/// In a partitioned table, files are chosen per partition: a delete in one bucket rewrites
/// that bucket's files only.
#[tokio::test]
async fn compact_chooses_files_per_partition() {
    let db = TestDb::new("compact_partitioned").await;
    db.psql(&["-v", "rows=4000", "-f", "sql/orders.sql"]);
    write_config(
        &db,
        "[sink.tables.\"public.orders\"]\npartition_by = [\"bucket(4, order_id)\"]\n",
    );
    let mut child = start(&db);
    caught_up(&db, &mut child).await;
    let copied: std::collections::BTreeSet<String> = live_files(&db).into_iter().collect();
    assert_eq!(copied.len(), 4, "one file per bucket: {copied:?}");
    db.client()
        .await
        .batch_execute("UPDATE orders SET status = 'changed' WHERE order_id = 7")
        .await
        .expect("update");
    caught_up(&db, &mut child).await;
    stop(child);

    let report = command_ok(&db, &["compact"], &[]);
    assert!(report.contains("3 data files kept"), "{report}");
    let after: std::collections::BTreeSet<String> = live_files(&db).into_iter().collect();
    assert_eq!(
        after.intersection(&copied).count(),
        3,
        "the three buckets without a delete were rewritten: {after:?}"
    );
    assert!(
        after.iter().all(|f| f.starts_with("DATA ")),
        "delete files left: {after:?}"
    );
    assert_eq!(after.len(), 4, "{after:?}");
    assert_eq!(lake_rows(&db), postgres_lines(&db).await);
}

/// Creates `<namespace>.foreign` in the SQLite catalog with pyiceberg, as another engine
/// would, with two appends; returns its table location.
fn foreign_table(db: &TestDb) -> std::path::PathBuf {
    let location = pyiceberg(
        db,
        "foreign",
        r#"
import pyarrow as pa
rows = pa.table({"id": pa.array([1, 2], pa.int64())})
table = catalog.create_table(ident, schema=rows.schema)
table.append(rows)
table.append(rows)
print(table.location())
"#,
        &[],
    );
    std::path::PathBuf::from(location.trim().trim_start_matches("file://"))
}

#[tokio::test]
async fn compact_leaves_other_engines_tables_alone_and_one_failing_table_stops_no_other() {
    let db = TestDb::new("compact_scope").await;
    db.psql(&["-v", "rows=500", "-f", "sql/orders.sql"]);
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, qty int);
             INSERT INTO items SELECT i, i FROM generate_series(1, 10) i;",
        )
        .await
        .expect("items");
    let mut child = start(&db);
    db.workload(1, 200);
    caught_up(&db, &mut child).await;
    stop(child);

    // another engine's table in the same namespace, with a file it is still writing
    let foreign = foreign_table(&db);
    let in_flight = foreign
        .join("data")
        .join("being-written-by-another-engine.parquet");
    std::fs::write(&in_flight, b"not committed yet").expect("write the foreign file");
    // and one of lakewriter's tables whose metadata no longer parses
    let items = db
        .warehouse
        .path()
        .join(&db.namespace)
        .join("items")
        .join("metadata");
    for entry in std::fs::read_dir(&items).expect("items metadata").flatten() {
        if entry.path().to_string_lossy().ends_with(".metadata.json") {
            std::fs::write(entry.path(), b"{").expect("break the metadata");
        }
    }

    let output = support::writer::command(
        &db,
        &["compact"],
        &[
            ("COMPACTION__ORPHAN_AGE", "0s"),
            ("COMPACTION__ENFORCE_ORPHAN_AGE_FLOOR", "false"),
        ],
    );
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success(),
        "a failed table must fail the command: {report}"
    );
    assert!(
        report.contains("foreign: not compacted (not written by lakewriter"),
        "{report}"
    );
    assert!(report.contains("items: failed"), "{report}");
    let orders = report
        .lines()
        .find(|l| l.starts_with(&format!("{}.orders:", db.namespace)))
        .unwrap_or_else(|| panic!("no orders line: {report}"));
    assert!(!orders.contains("failed"), "{orders}");
    assert!(in_flight.exists(), "another engine's file was removed");
    assert_eq!(lake_rows(&db), postgres_lines(&db).await);
}

#[tokio::test]
async fn expiry_and_cleanup_keep_what_tags_and_branches_hold() {
    let db = TestDb::new("compact_refs").await;
    db.psql(&["-v", "rows=500", "-f", "sql/orders.sql"]);
    let mut child = start(&db);
    caught_up(&db, &mut child).await;
    for round in 0..3 {
        db.client()
            .await
            .batch_execute(&format!(
                "UPDATE orders SET status = 'r{round}' WHERE order_id % 3 = {round}"
            ))
            .await
            .expect("update");
        caught_up(&db, &mut child).await;
    }
    stop(child);

    // another engine tags the first snapshot and branches from the second
    let script = r#"
import os
table = catalog.load_table(ident)
if args[0] == "tag":
    history = sorted(table.metadata.snapshots, key=lambda s: s.sequence_number)
    table.manage_snapshots().create_tag(history[0].snapshot_id, "audit").create_branch(
        history[1].snapshot_id, "experiment").commit()
else:
    for name, ref in sorted(table.metadata.refs.items()):
        snapshot = table.metadata.snapshot_by_id(ref.snapshot_id)
        manifest_list = snapshot.manifest_list.removeprefix("file://")
        print(name, os.path.exists(manifest_list))
"#;
    let refs = |action: &str| pyiceberg(&db, "orders", script, &[action]);
    refs("tag");

    let settings = [
        ("COMPACTION__SNAPSHOT_RETENTION", "0s"),
        ("COMPACTION__KEEP_SNAPSHOTS", "1"),
        ("COMPACTION__ORPHAN_AGE", "0s"),
        ("COMPACTION__ENFORCE_ORPHAN_AGE_FLOOR", "false"),
    ];
    let report = command_ok(&db, &["compact"], &settings);
    assert!(
        !report.contains(" 0 snapshots expired"),
        "nothing expired: {report}"
    );
    assert_eq!(
        refs("list"),
        "audit True\nexperiment True\nmain True\n",
        "a tag or branch lost its snapshot: {report}"
    );
    assert_eq!(lake_rows(&db), postgres_lines(&db).await);
}

#[tokio::test]
async fn an_initial_copy_in_flight_keeps_its_files_through_compact() {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray};
    use lakewriter::sink::{Sink, TableDelta, TableLayout};

    let db = TestDb::new("compact_copy").await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE copying (id int PRIMARY KEY, name text)")
        .await
        .expect("schema");
    let config = lakewriter::Config::load(&config_path(&db)).expect("config");
    let table = TableId::new("public", "copying");
    let described = lakewriter::source::schema::describe_table(&client, &table)
        .await
        .expect("describe")
        .expect("the table");
    let schema =
        lakewriter::source::snapshot::table_schema(&client, &described, &Default::default())
            .await
            .expect("its shape");
    let layout = TableLayout {
        key: vec!["id".into()],
        partition_by: Vec::new(),
    };

    // the writer's copy: the table created, its first rows staged in files no commit names yet
    let mut sink = IcebergSink::from_config(&config).await.expect("sink");
    sink.prepare(&table, &schema, &layout)
        .await
        .expect("prepare");
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from_iter_values(0..1000)),
        Arc::new(StringArray::from_iter_values(
            (0..1000).map(|i| format!("n{i}")),
        )),
    ];
    let columns = columns
        .iter()
        .zip(schema.arrow_nullable.fields())
        .map(|(c, f)| arrow::compute::cast(c, f.data_type()).expect("cast"))
        .collect();
    let rows = RecordBatch::try_new(schema.arrow_nullable.clone(), columns).expect("rows");
    let part = |rows: Vec<RecordBatch>, lsn| TableDelta {
        table: table.clone(),
        schema: schema.clone(),
        truncate: true,
        adds_only: true,
        deletes: Vec::new(),
        rows,
        lsn,
        copy: None,
    };
    sink.stage(part(vec![rows], None)).await.expect("stage");
    let table_dir = db.warehouse.path().join(&db.namespace).join("copying");
    let staged: Vec<_> = files_under(&table_dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    assert!(!staged.is_empty(), "the copy staged no file");

    // a compaction with no safety window meanwhile leaves the table to its copy
    let settings = [
        ("COMPACTION__ORPHAN_AGE", "0s"),
        ("COMPACTION__ENFORCE_ORPHAN_AGE_FLOOR", "false"),
    ];
    let report = command_ok(&db, &["compact"], &settings);
    assert!(report.contains("no checkpoint yet"), "{report}");
    for file in &staged {
        assert!(
            file.exists(),
            "compact removed the copy's file {}",
            file.display()
        );
    }

    // the copy commits, and every row is there; then the table is compacted as usual
    sink.commit(part(Vec::new(), Some(lakewriter::Lsn(100))))
        .await
        .expect("commit the copy");
    let count = || duck_query(&db, "copying", "SELECT count(*) FROM {scan}");
    assert_eq!(count(), ["1000"]);
    let report = command_ok(&db, &["compact"], &settings);
    assert!(!report.contains("no checkpoint yet"), "{report}");
    assert_eq!(count(), ["1000"]);
}

#[tokio::test]
async fn cleanup_never_removes_files_outside_the_tables_own_location() {
    let db = TestDb::new("compact_location").await;
    db.psql(&["-v", "rows=200", "-f", "sql/orders.sql"]);
    let mut child = start(&db);
    caught_up(&db, &mut child).await;
    stop(child);

    // another engine moves the table's location to the namespace's directory, where other
    // tables' files live (a bystander's, which orders' metadata does not reference)
    let namespace_dir = db.warehouse.path().join(&db.namespace);
    let bystander = namespace_dir.join("bystander").join("data");
    std::fs::create_dir_all(&bystander).expect("bystander directory");
    let bystander = bystander.join("a-file-of-another-table.parquet");
    std::fs::write(&bystander, b"another table's data").expect("bystander file");
    let script = r#"
import json, os, sqlite3, sys, uuid
catalog, namespace, name, location = sys.argv[1:]
con = sqlite3.connect(catalog)
(current,) = con.execute(
    "SELECT metadata_location FROM iceberg_tables WHERE table_namespace = ? AND table_name = ?",
    (namespace, name),
).fetchone()
prefix = "file://" if current.startswith("file://") else ""
path = current[len(prefix):]
metadata = json.load(open(path))
metadata["location"] = location
moved = os.path.join(os.path.dirname(path), "99999-" + str(uuid.uuid4()) + ".metadata.json")
json.dump(metadata, open(moved, "w"))
con.execute(
    "UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ? "
    "WHERE table_namespace = ? AND table_name = ?",
    (prefix + moved, current, namespace, name),
)
con.commit()
"#;
    let output = stack()
        .python()
        .arg("-c")
        .arg(script)
        .arg(db.warehouse.path().join("catalog.db"))
        .arg(&db.namespace)
        .arg("orders")
        .arg(&namespace_dir)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "move the location: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let report = command_ok(
        &db,
        &["compact"],
        &[
            ("COMPACTION__ORPHAN_AGE", "0s"),
            ("COMPACTION__ENFORCE_ORPHAN_AGE_FLOOR", "false"),
        ],
    );
    assert!(report.contains("orders"), "{report}");
    assert!(
        bystander.exists(),
        "compact removed a file outside the table's location: {report}"
    );
    assert_eq!(lake_rows(&db), postgres_lines(&db).await);
}
