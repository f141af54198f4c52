//! Other engines commit to lakewriter's tables: an `OPTIMIZE` by Athena, Spark's
//! `rewrite_data_files`, S3 Tables' compaction. Their snapshots carry no `lakewriter.lsn`, so
//! the checkpoint is the newest one in the current snapshot's ancestry (DESIGN.md invariant
//! 12): a restart after a foreign commit neither copies the table again nor, with
//! `initial_snapshot = false`, empties it; it streams on from where the lake is. Delta keeps
//! each writer's latest `txn` across other writers' commits, and the same holds there.
//! Spark's merge-on-read `DELETE` and `UPDATE` leave position deletes, which every command
//! reads, `compact` applies and `export` exports, and over which the writer streams on.

mod support;

use std::process::Command;

use lakewriter::catalog::Catalog;
use lakewriter::sink::iceberg::{IcebergSink, Rewrite, file_io, is_conflict, lake_table};
use lakewriter::table::TableId;
use support::delta::delta_query;
use support::orders::{
    LAKE_DUPLICATES, LAKE_LINES, delete_file_counts, postgres_ids, postgres_lines, pyiceberg_ids,
};
use support::writer::{
    caught_up, command, command_ok, config_path, duck_query, pyiceberg, start_with, stop,
};
use support::{TestDb, project_dir, stack};

/// Rewrites the lake's orders table with pyiceberg (its own rows, read and written back as
/// one overwrite), the way another engine's compaction commits; returns the new snapshot's
/// summary keys.
fn foreign_rewrite(db: &TestDb) -> String {
    pyiceberg(
        db,
        "orders",
        r#"
table = catalog.load_table(ident)
table.overwrite(table.scan().to_arrow())
table = catalog.load_table(ident)
print(",".join(sorted(table.current_snapshot().summary.additional_properties)))
"#,
        &[],
    )
    .trim()
    .to_string()
}

async fn assert_lake_equal(db: &TestDb) {
    assert_eq!(
        duck_query(db, "orders", LAKE_DUPLICATES),
        vec!["0".to_string()],
        "duplicated keys in the lake"
    );
    assert!(
        duck_query(db, "orders", LAKE_LINES) == postgres_lines(db).await,
        "the lake's orders differ from PostgreSQL"
    );
}

#[tokio::test]
async fn a_foreign_commit_between_two_runs_neither_recopies_nor_empties_the_table() {
    let db = TestDb::new("foreign").await;
    db.psql(&["-v", "rows=2000", "-f", "sql/orders.sql"]);
    let mut child = start_with(&db, &[]);
    db.workload(2, 300);
    caught_up(&db, &mut child).await;
    stop(child);

    // pyiceberg refuses equality deletes: compact, then another engine rewrites the table
    command_ok(&db, &["compact"], &[]);
    let keys = foreign_rewrite(&db);
    assert!(
        !keys.contains("lakewriter"),
        "the foreign snapshot carries lakewriter's keys: {keys}"
    );

    // changes while down arrive once, and the table is not copied again
    db.workload(1, 300);
    let mut child = start_with(&db, &[]);
    caught_up(&db, &mut child).await;
    let log = stop(child);
    assert!(
        !log.contains("table copied"),
        "the table was copied again: {log}"
    );
    assert_lake_equal(&db).await;

    // the same with initial_snapshot = false: the table must not be emptied
    command_ok(&db, &["compact"], &[]);
    foreign_rewrite(&db);
    db.workload(1, 300);
    let mut child = start_with(&db, &[("SOURCE__INITIAL_SNAPSHOT", "false")]);
    caught_up(&db, &mut child).await;
    stop(child);
    assert_lake_equal(&db).await;
}

#[tokio::test]
async fn a_foreign_delta_commit_between_two_runs_keeps_the_txn_checkpoint() {
    let db = TestDb::new("foreign_delta").await;
    db.psql(&["-v", "rows=1000", "-f", "sql/orders.sql"]);
    let delta = &[("SINK__FORMAT", "delta")];
    let mut child = start_with(&db, delta);
    db.workload(1, 300);
    caught_up(&db, &mut child).await;
    stop(child);

    // another engine rewrites the table with its own rows (Python deltalake's overwrite)
    let table = db.warehouse.path().join(&db.namespace).join("orders");
    let script = r#"
import sys
from deltalake import DeltaTable, write_deltalake
rows = DeltaTable(sys.argv[1]).to_pyarrow_table()
write_deltalake(sys.argv[1], rows, mode="overwrite")
"#;
    let output = stack()
        .python()
        .arg("-c")
        .arg(script)
        .arg(&table)
        .output()
        .expect("run deltalake");
    assert!(
        output.status.success(),
        "deltalake: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    db.workload(1, 300);
    let mut child = start_with(&db, delta);
    caught_up(&db, &mut child).await;
    let log = stop(child);
    assert!(
        !log.contains("table copied"),
        "the table was copied again: {log}"
    );
    assert_eq!(
        delta_query(&table, LAKE_DUPLICATES),
        ["0"],
        "duplicated keys"
    );
    assert!(
        delta_query(&table, LAKE_LINES) == postgres_lines(&db).await,
        "the lake's orders differ from PostgreSQL"
    );
}

/// Runs the Spark SQL `statements` in one session of `tests/readers/spark_rest.py`, with
/// Iceberg's JdbcCatalog on the test's SQLite catalog file (the catalog lakewriter commits
/// through); what they printed, one block per statement.
fn spark_sql(db: &TestDb, statements: &[String]) -> Vec<String> {
    let warehouse = db.warehouse.path();
    let output = stack()
        .python()
        .arg(project_dir().join("tests/readers/spark_rest.py"))
        .arg(format!(
            "jdbc:sqlite:{}",
            warehouse.join("catalog.db").display()
        ))
        .arg("--warehouse")
        .arg(format!("file://{}", warehouse.display()))
        .args(statements)
        .output()
        .expect("run Spark");
    assert!(
        output.status.success(),
        "Spark on the SQLite catalog: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .strip_suffix('\n')
        .unwrap_or(&stdout)
        .split("\n\n")
        .map(str::to_string)
        .collect()
}

/// The orders of `db` (source or export destination), one line per row.
async fn order_lines(db: &TestDb) -> Vec<String> {
    db.client()
        .await
        .query(
            "SELECT concat_ws('|', order_id, customer_id, order_date, total_amount, status, \
               created_at, updated_at) FROM public.orders ORDER BY order_id",
            &[],
        )
        .await
        .expect("read orders")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// `lakewriter export --table public.orders` of `source`'s lake into `destination`,
/// asserting success, then that the destination holds the source's orders.
async fn export_equal(source: &TestDb, destination: &TestDb, when: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_lakewriter"))
        .args(["export", "--config"])
        .arg(config_path(source))
        .args(["--table", "public.orders"])
        .env("LAKEWRITER_EXPORT_TO", &destination.url)
        .output()
        .expect("run lakewriter export");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "export {when} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        order_lines(destination).await == order_lines(source).await,
        "the export {when} differs from the source: {stdout}"
    );
    stdout
}

/// The current metadata file of the lake's orders table, as JSON.
fn orders_metadata(db: &TestDb) -> serde_json::Value {
    let location = duck_query(db, "orders", "SELECT '{metadata}'");
    let path = location[0].trim_start_matches("file://");
    serde_json::from_slice(&std::fs::read(path).expect("read the metadata file"))
        .expect("metadata JSON")
}

/// After Spark's change (rows deleted, and updated to status `spark`, with `deletes`):
/// DuckDB reads PostgreSQL's rows, `verify` passes, and `query` counts the rows and the updated
/// ones as PostgreSQL does.
async fn spark_change_read_right(db: &TestDb, deletes: &str) {
    assert!(
        duck_query(db, "orders", LAKE_LINES) == postgres_lines(db).await,
        "DuckDB: the lake differs from PostgreSQL after Spark's {deletes}"
    );
    let verify = command(db, &["verify", "--table", "public.orders"], &[]);
    assert!(
        verify.status.success(),
        "verify over Spark's {deletes}: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let counted = command_ok(
        db,
        &[
            "query",
            "--format",
            "csv",
            &format!(
                "SELECT count(*), count(*) FILTER (WHERE status = 'spark') FROM {}.orders",
                db.namespace
            ),
        ],
        &[],
    );
    let in_postgres: String = db
        .client()
        .await
        .query_one(
            "SELECT count(*)::text || ',' || (count(*) FILTER (WHERE status = 'spark'))::text \
             FROM orders",
            &[],
        )
        .await
        .expect("count orders")
        .get(0);
    assert_eq!(
        counted.lines().last(),
        Some(in_postgres.as_str()),
        "query over Spark's {deletes}: {counted}"
    );
}

#[tokio::test]
async fn spark_position_deletes_are_read_compacted_exported_and_streamed_over() {
    let db = TestDb::new("foreign_positions").await;
    let destination = TestDb::new("foreign_positions_dst").await;
    db.psql(&["-v", "rows=2000", "-f", "sql/orders.sql"]);
    let mut child = start_with(&db, &[]);
    db.workload(1, 300);
    caught_up(&db, &mut child).await;
    stop(child);
    command_ok(&db, &["compact"], &[]);
    export_equal(&db, &destination, "of the whole table").await;

    // a compaction reads the table as it is now (its rewrite committed after Spark's change)
    let config = lakewriter::Config::load(&config_path(&db)).expect("config");
    let sink = IcebergSink::from_config(&config).await.expect("sink");
    let lake = lake_table(&config.sink.namespace, &TableId::new("public", "orders"));
    let pointer = sink
        .catalog()
        .load(&lake)
        .await
        .expect("load")
        .expect("the table");
    let io = file_io(&config).expect("file io");
    let read = iceberg::spec::TableMetadata::read_from(&io, &pointer.metadata_location)
        .await
        .expect("metadata");
    let data_files: std::collections::HashSet<String> = duck_query(
        &db,
        "orders",
        "SELECT file_path FROM iceberg_metadata('{metadata}') \
         WHERE status <> 'DELETED' AND content <> 'DELETED' AND manifest_content = 'DATA'",
    )
    .into_iter()
    .collect();
    assert!(!data_files.is_empty());

    // One change, made twice: in PostgreSQL while the writer is stopped (its slot keeps it for
    // the next run), and by Spark in the lake, as merge-on-read: position deletes.
    let change = "DELETE FROM {t} WHERE order_id % 7 = 0; \
                  UPDATE {t} SET status = 'spark' WHERE order_id % 7 = 1";
    db.psql(&["-c", &change.replace("{t}", "orders")]);
    let table = format!("lakewriter.{}.orders", db.namespace);
    let mut statements = vec![format!(
        "ALTER TABLE {table} SET TBLPROPERTIES ('write.delete.mode' = 'merge-on-read', \
         'write.update.mode' = 'merge-on-read')"
    )];
    statements.extend(
        change
            .replace("{t}", &table)
            .split("; ")
            .map(str::to_string),
    );
    statements.push(format!(
        "SELECT count(*) FROM {table}.delete_files WHERE content = 1"
    ));
    let blocks = spark_sql(&db, &statements);
    let position_deletes: u64 = blocks
        .last()
        .and_then(|b| b.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count of position deletes in {blocks:?}"));
    assert!(position_deletes > 0, "Spark wrote no position deletes");
    assert_eq!(
        orders_metadata(&db)["format-version"],
        2,
        "the table left v2"
    );

    // the compaction that read the table before Spark's change loses: its files would no
    // longer be named by Spark's position deletes, and the rows they delete would come back
    let err = sink
        .commit_rewrite(
            &lake,
            &pointer,
            &read,
            Vec::new(),
            Rewrite {
                data_sequence: read
                    .current_snapshot()
                    .expect("a snapshot")
                    .sequence_number(),
                schema_id: read.current_schema_id(),
                removes: data_files,
            },
        )
        .await
        .expect_err("a rewrite must lose to position deletes committed meanwhile");
    assert!(is_conflict(&err), "{err}");

    // query and verify see Spark's change; DuckDB, an independent reader, agrees
    spark_change_read_right(&db, "position deletes").await;
    // export takes the keys of the rows Spark deleted and updated
    export_equal(&db, &destination, "of Spark's snapshots").await;

    // the writer streams on: PostgreSQL's own copy of the change comes as equality deletes
    // beside Spark's position deletes, then more changes
    let mut child = start_with(&db, &[]);
    db.workload(1, 300);
    caught_up(&db, &mut child).await;
    stop(child);
    assert_lake_equal(&db).await;
    command_ok(&db, &["verify"], &[]);
    export_equal(&db, &destination, "after the writer's commits").await;

    // compact applies the position deletes and drops their files: pyiceberg, which reads no
    // equality deletes, then reads PostgreSQL's rows and finds no delete file
    let report = command_ok(&db, &["compact"], &[]);
    let read = pyiceberg(
        &db,
        "orders",
        r#"
table = catalog.load_table(ident)
files = table.inspect.files()
print(sum(1 for c in files.column("content").to_pylist() if c != 0))
rows = table.scan().to_arrow().sort_by("order_id")
print(rows.num_rows)
"#,
        &[],
    );
    let mut lines = read.lines();
    assert_eq!(
        lines.next(),
        Some("0"),
        "delete files left after compact: {report}"
    );
    assert_eq!(
        lines.next().and_then(|n| n.parse::<usize>().ok()),
        Some(expected_rows(&db).await),
        "pyiceberg's rows after compact"
    );
    assert_lake_equal(&db).await;
    command_ok(&db, &["verify"], &[]);
    export_equal(&db, &destination, "after compact").await;
}

async fn expected_rows(db: &TestDb) -> usize {
    postgres_lines(db).await.len()
}

/// What a user checks after each phase: DuckDB and pyiceberg (which refuses equality deletes)
/// read PostgreSQL's rows without a compaction, and only position deletes are live.
async fn read_by_every_engine(db: &TestDb, when: &str) {
    assert_lake_equal(db).await;
    let ids = postgres_ids(db).await;
    assert_eq!(pyiceberg_ids(db), ids, "pyiceberg {when}");
    let counts = delete_file_counts(db);
    assert!(
        counts.starts_with("0 "),
        "equality deletes (equality position) {when}: {counts}"
    );
}

/// `delete_mode = "position"` (issue 17): through SIGKILLs at random moments, a lost index,
/// an index update lost after its commit, and Spark's `rewrite_data_files` between two runs,
/// every snapshot reads right in pyiceberg, DuckDB and Spark without `compact`, and the
/// writer's deletes are position deletes only.
#[tokio::test]
async fn position_mode_through_kill_9_a_lost_index_and_a_spark_rewrite_reads_in_every_engine() {
    let db = TestDb::new("position_mode").await;
    db.psql(&["-v", "rows=3000", "-f", "sql/orders.sql"]);
    let index_dir = db.warehouse.path().join("key-index");
    let index_dir_text = index_dir.display().to_string();
    let settings = [
        ("SINK__DELETE_MODE", "position"),
        ("SINK__KEY_INDEX__DIR", index_dir_text.as_str()),
    ];
    support::writer::crash_and_restart(&db, &settings, 8, 6, 2500).await;
    read_by_every_engine(&db, "after kill -9").await;
    let counts = delete_file_counts(&db);
    assert_ne!(
        counts, "0 0",
        "the workload's updates wrote no position deletes"
    );
    command_ok(&db, &["verify"], &[]);
    let status = command_ok(&db, &["status"], &[]);
    assert!(
        status.lines().any(
            |l| l.starts_with(&format!("{}.orders: key index ", db.namespace))
                && l.ends_with(" bytes on local disk")
        ),
        "status does not show the key index's size: {status}"
    );

    let run = |what: &'static str| {
        let db = &db;
        let settings = &settings;
        async move {
            let mut child = start_with(db, settings);
            db.workload(2, 200);
            caught_up(db, &mut child).await;
            let log = stop(child);
            read_by_every_engine(db, what).await;
            log
        }
    };

    // the index deleted while stopped: rebuilt from the lake at the next start
    std::fs::remove_dir_all(&index_dir).expect("remove the key index");
    let log = run("after the index was deleted").await;
    assert!(log.contains("key index rebuilt"), "{log}");

    // a commit that landed but whose index update was lost: the index as of a run ago
    let file = std::fs::read_dir(index_dir.join(&db.namespace))
        .expect("the namespace's key indexes")
        .map(|entry| entry.expect("an index file").path())
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("orders-") && n.ends_with(".redb"))
        })
        .expect("the key index of orders");
    let saved = db.warehouse.path().join("orders.redb.saved");
    std::fs::copy(&file, &saved).expect("save the index");
    let log = run("before the lost update").await;
    assert!(!log.contains("key index rebuilt"), "{log}");
    assert!(!log.contains("key index caught up"), "{log}");
    std::fs::copy(&saved, &file).expect("put the older index back");
    let log = run("after the lost index update").await;
    assert!(log.contains("key index caught up"), "{log}");

    // Spark's rewrite_data_files between two runs moves every live row to new files
    let table = format!("lakewriter.{}.orders", db.namespace);
    spark_sql(
        &db,
        &[format!(
            "CALL lakewriter.system.rewrite_data_files(table => '{}.orders', \
             options => map('rewrite-all', 'true'))",
            db.namespace
        )],
    );
    let log = run("after Spark's rewrite").await;
    assert!(log.contains("key index caught up"), "{log}");
    let ids = postgres_ids(&db).await;
    let spark = spark_sql(
        &db,
        &[format!(
            "SELECT concat_ws(',', collect_list(CAST(order_id AS STRING))) FROM \
             (SELECT order_id FROM {table} ORDER BY order_id)"
        )],
    );
    assert_eq!(spark.first().map(|s| s.trim()), Some(ids.as_str()), "Spark");
    command_ok(&db, &["verify"], &[]);
}

/// A partitioned table in the default delete mode: each position delete goes in its data
/// file's partition, so pyiceberg and DuckDB read every snapshot through SIGKILLs without
/// `compact`, and no equality delete is written.
#[tokio::test]
async fn a_partitioned_table_takes_position_deletes_in_each_partition_through_kill_9() {
    let db = TestDb::new("position_partitioned").await;
    db.psql(&["-v", "rows=3000", "-f", "sql/orders.sql"]);
    support::writer::write_config(
        &db,
        "[sink.tables.\"public.orders\"]\npartition_by = [\"bucket(4, order_id)\"]\n",
    );
    support::writer::crash_and_restart(&db, &[], 6, 4, 2500).await;
    read_by_every_engine(&db, "after kill -9").await;
    let counts = delete_file_counts(&db);
    assert_ne!(
        counts, "0 0",
        "the workload's updates wrote no position deletes"
    );
    let partitions = pyiceberg(
        &db,
        "orders",
        r#"
files = catalog.load_table(ident).inspect.files().to_pylist()
print(len({str(f["partition"]) for f in files if f["content"] == 1}))
"#,
        &[],
    );
    assert!(
        partitions.trim().parse::<u32>().expect("a count") > 1,
        "position deletes in {partitions} partition(s)"
    );
    command_ok(&db, &["verify"], &[]);
}

/// The live delete files of `orders` as pyiceberg lists them, sorted, one `content format
/// path` line each (`1 PUFFIN …` a deletion vector, `1 PARQUET …` a position-delete file,
/// `2 PARQUET …` an equality-delete file; a Puffin file holding the vectors of several data
/// files shows once per vector).
fn live_delete_files(db: &TestDb) -> Vec<String> {
    pyiceberg(
        db,
        "orders",
        r#"
files = catalog.load_table(ident).inspect.files().to_pylist()
lines = [f"{f['content']} {f['file_format']} {f['file_path']}" for f in files if f["content"] != 0]
for line in sorted(lines):
    print(line)
"#,
        &[],
    )
    .lines()
    .map(str::to_string)
    .collect()
}

/// What Spark reads from the lake's orders table in one session: its order ids, sorted, as
/// one line (as [`postgres_ids`] prints them), and its live delete files as counts:
/// `[deletion vectors, data files they name, delete files of other kinds]`.
fn spark_ids_and_deletion_vectors(db: &TestDb) -> (String, [u64; 3]) {
    let table = format!("lakewriter.{}.orders", db.namespace);
    let blocks = spark_sql(
        db,
        &[
            format!(
                "SELECT concat_ws(',', collect_list(CAST(order_id AS STRING))) FROM \
                 (SELECT order_id FROM {table} ORDER BY order_id)"
            ),
            format!(
                "SELECT count(*) FILTER (WHERE file_format = 'PUFFIN'), \
                 count(DISTINCT referenced_data_file) FILTER (WHERE file_format = 'PUFFIN'), \
                 count(*) FILTER (WHERE file_format <> 'PUFFIN') FROM {table}.delete_files"
            ),
        ],
    );
    let counts: Vec<u64> = blocks
        .get(1)
        .map(|b| b.trim().split('|').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    let counts: [u64; 3] = counts
        .try_into()
        .unwrap_or_else(|_| panic!("no counts of delete files in {blocks:?}"));
    (blocks[0].trim().to_string(), counts)
}

/// Spark upgrades a table lakewriter created (format v2, position deletes) to Iceberg format
/// v3 and deletes and updates rows in it as merge-on-read: deletion vectors, in Puffin files.
/// `query` and `verify` read them, as DuckDB does, and `export` exports them; the writer
/// streams on into the v3 table, its own deletes there deletion vectors (v3 takes no new
/// position-delete files), so pyiceberg and Spark read PostgreSQL's rows without `compact`;
/// the table stays v3, and `compact` applies every deletion vector.
#[tokio::test]
async fn spark_deletion_vectors_in_a_v3_table_are_read_exported_streamed_over_and_compacted() {
    let db = TestDb::new("foreign_vectors").await;
    let destination = TestDb::new("foreign_vectors_dst").await;
    db.psql(&["-v", "rows=2000", "-f", "sql/orders.sql"]);
    let mut child = start_with(&db, &[]);
    db.workload(1, 300);
    caught_up(&db, &mut child).await;
    stop(child);
    assert_eq!(
        orders_metadata(&db)["format-version"],
        2,
        "the writer's new table in the default delete mode"
    );

    // One change, made twice: in PostgreSQL while the writer is stopped, and by Spark in the
    // lake once it upgraded the table to v3, as merge-on-read: deletion vectors (which take in
    // the writer's position deletes of the data files they name)
    let change = "DELETE FROM {t} WHERE order_id % 7 = 0; \
                  UPDATE {t} SET status = 'spark' WHERE order_id % 7 = 1";
    db.psql(&["-c", &change.replace("{t}", "orders")]);
    let table = format!("lakewriter.{}.orders", db.namespace);
    let mut statements = vec![format!(
        "ALTER TABLE {table} SET TBLPROPERTIES ('format-version' = '3', \
         'write.delete.mode' = 'merge-on-read', 'write.update.mode' = 'merge-on-read')"
    )];
    statements.extend(
        change
            .replace("{t}", &table)
            .split("; ")
            .map(str::to_string),
    );
    statements.push(format!(
        "SELECT count(*) FROM {table}.delete_files WHERE file_format = 'PUFFIN'"
    ));
    let blocks = spark_sql(&db, &statements);
    let vectors: u64 = blocks
        .last()
        .and_then(|b| b.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count of deletion vectors in {blocks:?}"));
    assert!(vectors > 0, "Spark wrote no deletion vectors");
    assert_eq!(orders_metadata(&db)["format-version"], 3, "Spark's upgrade");

    // DuckDB, an independent reader, reads the deletion vectors; query and verify agree
    spark_change_read_right(&db, "deletion vectors").await;
    export_equal(&db, &destination, "of Spark's deletion vectors").await;

    // The writer streams on (PostgreSQL's copy of the change, then more changes) into the v3
    // table: every delete file it adds is a deletion vector, never a position-delete file
    let before = live_delete_files(&db);
    let mut child = start_with(&db, &[]);
    db.workload(1, 300);
    caught_up(&db, &mut child).await;
    stop(child);
    assert_lake_equal(&db).await;
    let after = live_delete_files(&db);
    let added: Vec<&String> = after.iter().filter(|f| !before.contains(f)).collect();
    assert!(
        !added.is_empty(),
        "the writer's updates added no delete file: {after:?}"
    );
    assert!(
        added.iter().all(|f| f.starts_with("1 PUFFIN ")),
        "the writer added delete files other than deletion vectors to a v3 table: {added:?}"
    );
    assert_eq!(
        orders_metadata(&db)["format-version"],
        3,
        "the writer's commits"
    );

    // pyiceberg and Spark read PostgreSQL's rows without a compaction, one deletion vector
    // per data file at most
    let ids = postgres_ids(&db).await;
    assert_eq!(
        pyiceberg_ids(&db),
        ids,
        "pyiceberg over the deletion vectors"
    );
    let (spark, [vectors, named, _]) = spark_ids_and_deletion_vectors(&db);
    assert_eq!(spark, ids, "Spark over the deletion vectors");
    assert!(vectors > 0, "Spark finds no deletion vector");
    assert_eq!(
        vectors, named,
        "two deletion vectors name one data file, or one names none"
    );
    command_ok(&db, &["verify"], &[]);
    export_equal(&db, &destination, "after the writer's deletion vectors").await;

    // compact applies the deletion vectors and drops them: pyiceberg reads PostgreSQL's rows
    // and finds no delete file, in a table still v3
    let report = command_ok(&db, &["compact"], &[]);
    let read = pyiceberg(
        &db,
        "orders",
        r#"
table = catalog.load_table(ident)
files = table.inspect.files()
print(sum(1 for c in files.column("content").to_pylist() if c != 0))
print(table.scan().to_arrow().num_rows)
"#,
        &[],
    );
    let mut lines = read.lines();
    assert_eq!(
        lines.next(),
        Some("0"),
        "delete files left after compact: {report}"
    );
    assert_eq!(
        lines.next().and_then(|n| n.parse::<usize>().ok()),
        Some(expected_rows(&db).await),
        "pyiceberg's rows after compact"
    );
    assert_eq!(orders_metadata(&db)["format-version"], 3, "the compaction");
    assert_lake_equal(&db).await;
    command_ok(&db, &["verify"], &[]);
}

/// `delete_mode = "deletion_vector"`: the writer creates its tables as Iceberg format v3, and
/// through SIGKILLs at random moments its updates and deletes of rows in the lake are
/// deletion vectors only (no equality deletes, no position-delete files), at most one live
/// per data file; DuckDB, pyiceberg and Spark read PostgreSQL's rows without `compact`.
#[tokio::test]
async fn deletion_vector_mode_through_kill_9_writes_v3_tables_every_engine_reads() {
    let db = TestDb::new("vector_mode").await;
    db.psql(&["-v", "rows=3000", "-f", "sql/orders.sql"]);
    let settings = [("SINK__DELETE_MODE", "deletion_vector")];
    support::writer::crash_and_restart(&db, &settings, 8, 6, 2500).await;
    assert_eq!(
        orders_metadata(&db)["format-version"],
        3,
        "a new table in deletion-vector mode"
    );
    read_by_every_engine(&db, "after kill -9").await;
    let files = live_delete_files(&db);
    assert!(
        !files.is_empty(),
        "the workload's updates wrote no deletion vectors"
    );
    assert!(
        files.iter().all(|f| f.starts_with("1 PUFFIN ")),
        "delete files other than deletion vectors: {files:?}"
    );
    // one vector per Puffin file (DuckDB applies a file's first vector to every data file it
    // holds a vector of)
    let paths: std::collections::HashSet<&String> = files.iter().collect();
    assert_eq!(
        paths.len(),
        files.len(),
        "Puffin files holding several vectors: {files:?}"
    );
    let (spark, [vectors, named, others]) = spark_ids_and_deletion_vectors(&db);
    assert_eq!(spark, postgres_ids(&db).await, "Spark after kill -9");
    assert_eq!(
        others, 0,
        "Spark finds delete files other than deletion vectors"
    );
    assert!(vectors > 0, "Spark finds no deletion vector");
    assert_eq!(
        vectors, named,
        "two deletion vectors name one data file, or one names none"
    );
    command_ok(&db, &["verify"], &[]);
}
