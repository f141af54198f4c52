//! `query`, `verify` and `compact` on Delta tables the writer made, as a user runs them (the
//! binary, against the real PostgreSQL): `query` and `verify` read what PostgreSQL holds and
//! `verify` names a difference; `compact` merges small files, vacuums only what no version
//! needs and checkpoints the log, with DuckDB's `delta_scan` and the Python `deltalake`
//! package, two independent readers, still reading rows equal to PostgreSQL — also while the
//! writer streams and compacts on its schedule.

mod support;

use std::path::{Path, PathBuf};

use support::delta::{delta_query, python_delta_rows};
use support::writer::{caught_up, command, start_with, stop, write_config};
use support::{TestDb, stack};

const DELTA: &[(&str, &str)] = &[("SINK__FORMAT", "delta")];

fn location(db: &TestDb, name: &str) -> PathBuf {
    db.warehouse.path().join(&db.namespace).join(name)
}

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

/// The Delta table's live files, as the Python `deltalake` package lists them (file names).
fn live_files(table: &Path) -> Vec<String> {
    let script = r#"
import os, sys
from deltalake import DeltaTable
for uri in DeltaTable(sys.argv[1]).file_uris():
    print(os.path.basename(uri))
os._exit(0)
"#;
    let output = stack()
        .python()
        .arg("-c")
        .arg(script)
        .arg(table)
        .output()
        .expect("run python deltalake");
    assert!(
        output.status.success(),
        "deltalake over {}: {}",
        table.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let mut files: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    files.sort();
    files
}

/// The Parquet data files under the table's directory (partition directories included).
fn files_on_disk(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read the table directory") {
        let path = entry.expect("an entry").path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if path.is_dir() && name != "_delta_log" {
            found.extend(files_on_disk(&path));
        } else if name.ends_with(".parquet") {
            found.push(name);
        }
    }
    found.sort();
    found
}

/// The numbers of a `compact` report line: files in, files out.
fn files_in_and_out(report: &str, table: &str) -> (usize, usize) {
    let line = report
        .lines()
        .find(|l| l.starts_with(table))
        .unwrap_or_else(|| panic!("no line for {table}: {report}"));
    let number_before = |marker: &str| -> usize {
        let at = line
            .find(marker)
            .unwrap_or_else(|| panic!("{marker:?} in {line}"));
        line[..at]
            .rsplit(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a number before {marker:?} in {line}"))
    };
    (number_before(" data +"), number_before(" data files ("))
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
           INSERT INTO kinds VALUES (51, NULL, NULL, NULL, NULL, NULL);
           CREATE TABLE zones (id int PRIMARY KEY, region text NOT NULL, qty int);
           ALTER TABLE zones REPLICA IDENTITY FULL;
           INSERT INTO zones SELECT i, CASE WHEN i % 2 = 0 THEN 'eu' ELSE 'us' END, i
             FROM generate_series(1, 20) i;",
        ],
    )
    .await;
    // a partitioned table: its partition column comes from the Delta paths, not the files
    write_config(
        &db,
        "[sink.tables.\"public.zones\"]\npartition_by = [\"region\"]\n",
    );
    let mut child = start_with(&db, DELTA);
    db.workload(2, 200);
    execute(
        &db,
        &[
            "UPDATE kinds SET at = '23:59:59.999999', ref = gen_random_uuid() WHERE id <= 5",
            "DELETE FROM kinds WHERE id = 50",
            "UPDATE zones SET region = 'eu', qty = -qty WHERE id IN (3, 5)",
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
    assert!(
        out.contains(&format!("public.zones → {ns}.zones: equal (20 rows)")),
        "{out}"
    );
    assert_eq!(
        query(
            &db,
            &format!("SELECT region, count(*) FROM {ns}.zones GROUP BY region ORDER BY region")
        ),
        ["eu,12", "us,8"]
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

#[tokio::test]
async fn compact_merges_small_delta_files_and_vacuum_removes_only_replaced_ones() {
    let db = TestDb::new("delta_compact").await;
    execute(
        &db,
        &["CREATE TABLE events (id int PRIMARY KEY, kind text, n int)"],
    )
    .await;
    let mut child = start_with(&db, DELTA);
    caught_up(&db, &mut child).await;
    // many small commits: one insert per flush; early on, updates and a delete that a MERGE
    // applies by replacing the files that hold their keys
    for round in 0..10 {
        execute(
            &db,
            &[&format!(
                "INSERT INTO events SELECT i, 'k' || (i % 3), i FROM generate_series({}, {}) i",
                round * 100 + 1,
                round * 100 + 100
            )],
        )
        .await;
        caught_up(&db, &mut child).await;
        if round == 1 {
            execute(
                &db,
                &[
                    "UPDATE events SET n = -n WHERE id <= 100 AND id % 10 = 0",
                    "DELETE FROM events WHERE id = 77",
                ],
            )
            .await;
            caught_up(&db, &mut child).await;
        }
    }
    stop(child);

    let table = location(&db, "events");
    let before = live_files(&table);
    assert!(before.len() >= 8, "too few files to compact: {before:?}");
    assert!(
        files_on_disk(&table).len() > before.len(),
        "the MERGE replaced no file"
    );

    let (ok, report, err) = lakewriter(
        &db,
        &["compact"],
        &[
            ("COMPACTION__ORPHAN_AGE", "0s"),
            ("COMPACTION__ENFORCE_ORPHAN_AGE_FLOOR", "false"),
        ],
    );
    assert!(ok, "compact failed: {err}");
    let name = format!("{}.events", db.namespace);
    let (files_in, files_out) = files_in_and_out(&report, &name);
    assert!(
        files_in >= 8 && files_out < files_in,
        "{files_in} files → {files_out}: {report}"
    );
    let after = live_files(&table);
    assert!(
        after.len() < before.len(),
        "{} files before, {} after: {report}",
        before.len(),
        after.len()
    );
    // vacuum with no safety window: every replaced file is gone, every live one is there
    assert_eq!(
        files_on_disk(&table),
        after,
        "files on disk are not the live ones"
    );
    let checkpoints = || {
        std::fs::read_dir(table.join("_delta_log"))
            .expect("the log")
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .ends_with(".checkpoint.parquet")
            })
            .count()
    };
    assert_eq!(checkpoints(), 1, "compact wrote no log checkpoint");

    let expected = postgres(
        &db,
        "SELECT id || '|' || kind || '|' || n FROM events ORDER BY id",
    )
    .await;
    assert_eq!(
        delta_query(&table, "SELECT id, kind, n FROM {scan} ORDER BY id"),
        expected,
        "DuckDB reads other rows after compact"
    );
    let mut sorted = expected.clone();
    sorted.sort();
    assert_eq!(
        python_delta_rows(&table.display().to_string(), &[], &["id", "kind", "n"]),
        sorted,
        "the deltalake package reads other rows after compact"
    );
    let (equal, out, err) = lakewriter(&db, &["verify"], &[]);
    assert!(equal, "verify after compact: {out}{err}");

    // a second compact has nothing left to merge, and removes nothing live
    let (ok, again, err) = lakewriter(
        &db,
        &["compact"],
        &[
            ("COMPACTION__ORPHAN_AGE", "0s"),
            ("COMPACTION__ENFORCE_ORPHAN_AGE_FLOOR", "false"),
        ],
    );
    assert!(ok, "compact failed: {err}");
    assert!(again.contains("not compacted"), "{again}");
    assert!(again.contains(" 0 orphan files"), "{again}");
    assert_eq!(
        checkpoints(),
        1,
        "a checkpoint again with nothing new in the log"
    );
    assert_eq!(live_files(&table), after);
    assert_eq!(
        delta_query(&table, "SELECT id, kind, n FROM {scan} ORDER BY id"),
        expected
    );

    // the writer resumes from its txn checkpoint, now read from the log checkpoint: it
    // copies nothing again and carries on
    execute(
        &db,
        &[
            "INSERT INTO events VALUES (5000, 'late', 1)",
            "DELETE FROM events WHERE id = 5",
        ],
    )
    .await;
    let mut child = start_with(&db, DELTA);
    caught_up(&db, &mut child).await;
    let log = stop(child);
    assert!(
        !log.contains("snapshot"),
        "the table was copied again: {log}"
    );
    assert_eq!(
        delta_query(&table, "SELECT id, kind, n FROM {scan} ORDER BY id"),
        postgres(
            &db,
            "SELECT id || '|' || kind || '|' || n FROM events ORDER BY id",
        )
        .await,
        "the writer's restart after compact"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_beside_a_streaming_writer_keeps_delta_equal_to_postgres() {
    let db = TestDb::new("delta_compact_live").await;
    execute(
        &db,
        &["CREATE TABLE events (id int PRIMARY KEY, kind text, n int)"],
    )
    .await;
    write_config(&db, "[compaction]\ninterval = \"1s\"\n");
    let mut child = start_with(&db, DELTA);
    caught_up(&db, &mut child).await;
    // appends (a new small file each flush), and MERGEs that replace files optimize may be
    // merging at the same moment
    let url = db.url.clone();
    let workload = tokio::spawn(async move {
        let client = support::connect(&url).await;
        for round in 0..40 {
            client
                .batch_execute(&format!(
                    "INSERT INTO events SELECT i, 'k' || (i % 3), i \
                     FROM generate_series({}, {}) i",
                    round * 50 + 1,
                    round * 50 + 50
                ))
                .await
                .expect("insert");
            if round % 8 == 7 {
                // recent keys: the MERGE replaces the newest files, which optimize may be
                // merging at that moment
                client
                    .batch_execute(&format!(
                        "UPDATE events SET n = n + 1000 WHERE id > {} AND id % 7 = 0;
                         DELETE FROM events WHERE id = {}",
                        round * 50 - 100,
                        round * 50 - 3
                    ))
                    .await
                    .expect("update and delete");
            }
            tokio::time::sleep(std::time::Duration::from_millis(350)).await;
        }
    });
    // `lakewriter compact` as well, beside the writer and its own scheduled compaction
    let mut compacted = 0;
    while !workload.is_finished() {
        let (ok, report, err) = lakewriter(&db, &["compact"], &[]);
        assert!(ok, "compact beside the writer failed: {err}");
        if report.contains(" data files (") {
            compacted += 1;
        }
    }
    workload.await.expect("workload");
    caught_up(&db, &mut child).await;
    let log = stop(child);
    assert!(
        log.contains("scheduled compaction done"),
        "no scheduled compaction ran: {log}"
    );
    // the merges, by `lakewriter compact` or by the writer's schedule (its log's counts)
    let scheduled = log.matches("data_files_in=").count();
    assert!(
        compacted + scheduled > 0,
        "no compaction beside the writer merged anything: {log}"
    );
    println!("{compacted} compact runs and {scheduled} scheduled ones merged files");
    let expected = postgres(
        &db,
        "SELECT id || '|' || kind || '|' || n FROM events ORDER BY id",
    )
    .await;
    assert!(
        expected.len() > 1500,
        "the workload did not run: {}",
        expected.len()
    );
    assert_eq!(
        delta_query(
            &location(&db, "events"),
            "SELECT id, kind, n FROM {scan} ORDER BY id"
        ),
        expected,
        "the lake differs from PostgreSQL after compactions beside the writer"
    );
    let (equal, out, err) = lakewriter(&db, &["verify"], &[]);
    assert!(equal, "verify: {out}{err}");
}

#[tokio::test]
async fn compact_leaves_a_delta_table_another_engine_writes_alone() {
    let db = TestDb::new("delta_foreign").await;
    db.psql(&["-v", "rows=300", "-f", "sql/orders.sql"]);
    let mut child = start_with(&db, DELTA);
    caught_up(&db, &mut child).await;
    stop(child);

    // another engine's Delta table beside lakewriter's, with a file it is still writing
    let foreign = location(&db, "foreign");
    let script = r#"
import sys
import pyarrow as pa
from deltalake import write_deltalake
write_deltalake(sys.argv[1], pa.table({"id": pa.array([1, 2], pa.int64())}))
write_deltalake(sys.argv[1], pa.table({"id": pa.array([3], pa.int64())}), mode="append")
"#;
    let output = stack()
        .python()
        .arg("-c")
        .arg(script)
        .arg(&foreign)
        .output()
        .expect("run deltalake");
    assert!(
        output.status.success(),
        "deltalake: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let in_flight = foreign.join("being-written-by-another-engine.parquet");
    std::fs::write(&in_flight, b"not committed yet").expect("write the foreign file");

    let settings = [
        DELTA[0],
        ("COMPACTION__ORPHAN_AGE", "0s"),
        ("COMPACTION__ENFORCE_ORPHAN_AGE_FLOOR", "false"),
    ];
    let (ok, report, err) = lakewriter(&db, &["compact", "--table", "public.foreign"], &settings);
    assert!(ok, "{report}{err}");
    assert!(report.contains("not written by lakewriter"), "{report}");
    assert!(in_flight.exists(), "another engine's file was removed");
    let (ok, report, err) = lakewriter(&db, &["compact"], &settings);
    assert!(ok, "{report}{err}");
    assert!(
        in_flight.exists(),
        "another engine's file was removed: {report}"
    );
}

#[tokio::test]
async fn a_copy_in_flight_into_an_incomplete_delta_table_keeps_its_files_through_compact() {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray};
    use lakewriter::sink::delta::DeltaSink;
    use lakewriter::sink::{Sink, TableDelta, TableLayout};
    use lakewriter::table::TableId;

    let db = TestDb::new("delta_compact_copy").await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE copying (id int PRIMARY KEY, name text)")
        .await
        .expect("schema");
    let mut config = lakewriter::Config::load(&support::writer::config_path(&db)).expect("config");
    config.sink.format = lakewriter::config::TableFormat::Delta;
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
    let rows = |n: i32| {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from_iter_values(0..n)),
            Arc::new(StringArray::from_iter_values((0..n).map(|i| {
                format!("{:016x}", (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            }))),
        ];
        let columns = columns
            .iter()
            .zip(schema.arrow_nullable.fields())
            .map(|(c, f)| arrow::compute::cast(c, f.data_type()).expect("cast"))
            .collect();
        RecordBatch::try_new(schema.arrow_nullable.clone(), columns).expect("rows")
    };
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

    // a table copied once, then marked incomplete (a table error with suspend_table): the
    // next start copies it again, its parts written straight into the table's data files
    let mut sink = DeltaSink::from_config(&config).await.expect("sink");
    sink.prepare(&table, &schema, &layout)
        .await
        .expect("prepare");
    sink.commit(part(vec![rows(10)], Some(lakewriter::Lsn(50))))
        .await
        .expect("first copy");
    sink.mark_incomplete(&table).await.expect("mark incomplete");
    let mut sink = DeltaSink::from_config(&config).await.expect("sink");
    sink.prepare(&table, &schema, &layout)
        .await
        .expect("prepare");
    let dir = location(&db, "copying");
    // what the copy has written so far: a data file no version references yet (the writer's
    // rolling files appear as each fills up, long before the copy's one commit)
    let before = files_on_disk(&dir);
    let first = before.first().expect("the first copy's file");
    let in_flight = dir.join("part-00001-in-flight-copy.snappy.parquet");
    std::fs::copy(dir.join(first), &in_flight).expect("the copy's file");

    // a compaction with no safety window meanwhile leaves the table to its copy
    let settings = [
        ("COMPACTION__ORPHAN_AGE", "0s"),
        ("COMPACTION__ENFORCE_ORPHAN_AGE_FLOOR", "false"),
    ];
    let (ok, report, err) = lakewriter(&db, &["compact"], &settings);
    assert!(ok, "{report}{err}");
    assert!(report.contains("no checkpoint yet"), "{report}");
    assert!(in_flight.exists(), "compact removed the copy's file");

    // once the copy has committed, the table is compacted and vacuumed as usual
    sink.commit(part(vec![rows(1000)], Some(lakewriter::Lsn(100))))
        .await
        .expect("commit the copy");
    assert_eq!(delta_query(&dir, "SELECT count(*) FROM {scan}"), ["1000"]);
    let (ok, report, err) = lakewriter(&db, &["compact"], &settings);
    assert!(ok, "{report}{err}");
    assert!(!report.contains("no checkpoint yet"), "{report}");
    assert!(
        !in_flight.exists(),
        "an unreferenced file outlived its copy's commit"
    );
    assert_eq!(delta_query(&dir, "SELECT count(*) FROM {scan}"), ["1000"]);
}
