//! The Iceberg sink against real components: a SQLite catalog (and Glue on moto), tables in a
//! temporary warehouse (and on moto's S3), every outcome read back by an independent reader —
//! DuckDB's iceberg_scan, which applies equality deletes by sequence number.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use arrow::array::{
    ArrayRef, Date32Array, Decimal128Array, FixedSizeBinaryArray, Int32Array, Int64Array,
    ListBuilder, RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use iceberg::spec::{Operation, TableMetadata};
use lakewriter::catalog::{Catalog, CatalogError, CatalogTable, LakeCatalog, Pointer};
use lakewriter::sink::iceberg::{IcebergSettings, IcebergSink, file_io};
use lakewriter::sink::{CHECKPOINT_PROPERTY, Sink, TableDelta};
use lakewriter::source::changes::TableSchema;
use lakewriter::table::TableId;
use lakewriter::{Config, Lsn};
use support::items::{delta, items, items_schema, keyed, table_schema};
use support::{project_dir, stack};

/// One test's lake: a warehouse directory and a namespace of its own, with the SQLite catalog
/// in the warehouse (or Glue and S3 on moto), opened from a config as `run` opens it.
struct Lake {
    _warehouse: tempfile::TempDir,
    namespace: String,
    config: Config,
}

impl Lake {
    fn new(label: &str) -> Lake {
        Lake::with_sink(label, |warehouse, _| {
            format!("warehouse = \"{}\"\n", warehouse.display())
        })
    }

    /// A lake whose `[sink]` section (after the namespace) is `sink(warehouse dir, namespace)`.
    fn with_sink(label: &str, sink: impl FnOnce(&Path, &str) -> String) -> Lake {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let namespace = format!(
            "sink_{label}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let warehouse = tempfile::tempdir().expect("a temporary warehouse");
        let text = format!(
            "[source]\ndatabase = \"unused\"\n\n[sink]\nnamespace = \"{namespace}\"\n{}",
            sink(warehouse.path(), &namespace)
        );
        let mut config = Config::parse(&text, Path::new("iceberg-sink-test.toml"), Vec::new())
            .expect("a valid config");
        config.sink.key_index.dir = warehouse.path().join("key-index");
        Lake {
            _warehouse: warehouse,
            namespace,
            config,
        }
    }

    /// A sink on this lake, as a separate writer (its own catalog connection) would open it.
    async fn sink(&self) -> IcebergSink {
        IcebergSink::from_config(&self.config)
            .await
            .expect("open the sink")
    }
}

/// The table's current metadata file, as its catalog names it.
async fn current_metadata(sink: &IcebergSink, table: &TableId) -> (String, TableMetadata) {
    let lake = sink.lake_table(table);
    let pointer = sink
        .catalog()
        .load(&lake)
        .await
        .expect("load the pointer")
        .expect("the table is registered");
    let (cached, metadata) = sink
        .table_metadata(table)
        .expect("the sink knows the table");
    assert_eq!(
        cached, pointer.metadata_location,
        "the sink's view is the catalog's"
    );
    (cached.to_string(), metadata.clone())
}

/// The table's current metadata as the catalog points at it, read from the file (a sink's
/// cached view may be behind another writer's commit).
async fn catalog_metadata(sink: &IcebergSink, table: &TableId) -> (String, TableMetadata) {
    let pointer = sink
        .catalog()
        .load(&sink.lake_table(table))
        .await
        .expect("load the pointer")
        .expect("the table is registered");
    let bytes = std::fs::read(&pointer.metadata_location).expect("read the metadata file");
    let metadata: TableMetadata = serde_json::from_slice(&bytes).expect("parse the metadata");
    (pointer.metadata_location, metadata)
}

/// Runs `query` in DuckDB (with the iceberg extension, after the `setup` statements) and
/// returns its rows, every value as text (`None` for NULL).
fn duck(query: &str, setup: &[String]) -> Vec<Vec<Option<String>>> {
    const SCRIPT: &str = r#"
import json, sys
import duck
con = duck.connect()
for statement in sys.argv[2:]:
    con.execute(statement)
rows = con.execute(sys.argv[1]).fetchall()
print(json.dumps([[None if v is None else str(v) for v in row] for row in rows]))
"#;
    let output = stack()
        .python()
        .arg("-c")
        .arg(SCRIPT)
        .arg(query)
        .args(setup)
        .env("PYTHONPATH", project_dir().join("tests/readers"))
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "duckdb failed on {query}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("duckdb's answer is JSON")
}

/// The table's rows as DuckDB reads them from `metadata_location`: `columns` as text, ordered
/// by the first.
fn duck_rows(metadata_location: &str, columns: &str) -> Vec<Vec<Option<String>>> {
    duck(
        &format!("SELECT {columns} FROM iceberg_scan('{metadata_location}') ORDER BY 1"),
        &[],
    )
}

fn text_rows(rows: &[(i32, Option<&str>)]) -> Vec<Vec<Option<String>>> {
    rows.iter()
        .map(|(id, name)| vec![Some(id.to_string()), name.map(str::to_string)])
        .collect()
}

/// Commits a delta and checks that DuckDB then reads exactly `expected` from the table.
async fn commit_and_read(
    sink: &mut IcebergSink,
    delta: TableDelta,
    expected: &[(i32, Option<&str>)],
) -> TableMetadata {
    let table = delta.table.clone();
    sink.commit(delta).await.expect("commit");
    let (location, metadata) = current_metadata(sink, &table).await;
    assert_eq!(
        duck_rows(&location, "id, name"),
        text_rows(expected),
        "after the commit of snapshot {:?}",
        metadata.current_snapshot_id()
    );
    metadata
}

#[tokio::test]
async fn upserts_deletes_rekeys_and_truncate_read_back_in_duckdb() {
    let lake = Lake::new("upserts");
    let schema = items_schema();
    let table = schema.table.clone();
    let mut sink = lake.sink().await;
    let checkpoint = sink
        .prepare(&table, &schema, &keyed(&["id"], &[]))
        .await
        .expect("create the table");
    assert_eq!(checkpoint, None, "a new table needs its initial copy");

    // inserts
    let s = &schema;
    let rows = |r: &[(i32, Option<&str>)]| vec![items(s, r)];
    commit_and_read(
        &mut sink,
        delta(
            s,
            vec![],
            rows(&[(1, Some("a")), (2, Some("b")), (3, Some("c"))]),
            10,
        ),
        &[(1, Some("a")), (2, Some("b")), (3, Some("c"))],
    )
    .await;
    // an update: the old key deleted, the new row added (the old row may carry only its key)
    commit_and_read(
        &mut sink,
        delta(s, rows(&[(2, None)]), rows(&[(2, Some("b2"))]), 20),
        &[(1, Some("a")), (2, Some("b2")), (3, Some("c"))],
    )
    .await;
    // a delete
    commit_and_read(
        &mut sink,
        delta(s, rows(&[(3, Some("c"))]), vec![], 30),
        &[(1, Some("a")), (2, Some("b2"))],
    )
    .await;
    // a key change: 1 becomes 10
    commit_and_read(
        &mut sink,
        delta(s, rows(&[(1, Some("a"))]), rows(&[(10, Some("a"))]), 40),
        &[(2, Some("b2")), (10, Some("a"))],
    )
    .await;
    // an insert and a delete of the same key in one commit: the delete applies to rows
    // committed before, never to the row of its own commit; a delete of a key the lake never
    // had changes nothing
    commit_and_read(
        &mut sink,
        delta(
            s,
            rows(&[(10, None), (77, None)]),
            rows(&[(10, Some("a2")), (11, Some("k"))]),
            50,
        ),
        &[(2, Some("b2")), (10, Some("a2")), (11, Some("k"))],
    )
    .await;

    // lookups see the current rows only: 3 was deleted, 10 replaced
    let keys = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, true)])),
        vec![Arc::new(Int32Array::from(vec![2, 3, 10]))],
    )
    .expect("a key batch");
    let found = sink.lookup(&table, &keys).await.expect("lookup");
    let mut seen: Vec<(i32, String)> = Vec::new();
    for batch in &found {
        assert_eq!(batch.schema(), schema.arrow_nullable, "the source's layout");
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int32Array>()
            .expect("ids");
        let names = batch
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("names");
        for i in 0..batch.num_rows() {
            seen.push((ids.value(i), names.value(i).to_string()));
        }
    }
    seen.sort();
    assert_eq!(seen, vec![(2, "b2".to_string()), (10, "a2".to_string())]);

    // a truncate, then rows
    let mut truncate = delta(s, vec![], rows(&[(100, Some("z"))]), 60);
    truncate.truncate = true;
    let metadata = commit_and_read(&mut sink, truncate, &[(100, Some("z"))]).await;
    let summary = metadata.current_snapshot().expect("a snapshot").summary();
    assert_eq!(summary.operation, Operation::Overwrite);
    let props = &summary.additional_properties;
    assert_eq!(props["total-records"], "1");
    assert_eq!(props["total-data-files"], "1");
    assert_eq!(props["total-delete-files"], "0");
    assert_eq!(
        props["deleted-data-files"], "4",
        "every earlier data file is removed"
    );
    assert_eq!(props["removed-delete-files"], "4");
    assert_eq!(props[CHECKPOINT_PROPERTY], "0/3C");

    // the snapshot before the truncate still reads its rows (time travel keeps them)
    let before = metadata
        .snapshots()
        .filter(|s| s.sequence_number() == 5)
        .map(|s| s.snapshot_id())
        .next()
        .expect("the fifth snapshot");
    let (location, _) = current_metadata(&sink, &table).await;
    assert_eq!(
        duck(
            &format!(
                "SELECT count(*) FROM iceberg_scan('{location}', snapshot_from_id => {before})"
            ),
            &[]
        ),
        vec![vec![Some("3".to_string())]]
    );
}

#[tokio::test]
async fn a_delete_goes_to_the_partition_of_the_old_row() {
    let lake = Lake::new("partitioned");
    let table = TableId::new("sales", "orders");
    let schema = table_schema(
        &table,
        &[
            ("order_id", DataType::Int32, 23, true),
            ("order_date", DataType::Date32, 1082, false),
            ("total", DataType::Decimal128(10, 2), 1700, false),
        ],
        &[],
    );
    let orders = |rows: &[(i32, i32, i128)]| {
        RecordBatch::try_new(
            schema.arrow_nullable.clone(),
            vec![
                Arc::new(Int32Array::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )) as ArrayRef,
                Arc::new(Date32Array::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
                Arc::new(
                    Decimal128Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())
                        .with_precision_and_scale(10, 2)
                        .expect("decimal(10,2)"),
                ),
            ],
        )
        .expect("an orders batch")
    };
    // 2024-01-15, 2024-02-10, 2024-03-01 as days since 1970-01-01
    let (jan, feb, mar) = (19737, 19763, 19783);
    let mut sink = lake.sink().await;
    sink.prepare(
        &table,
        &schema,
        &keyed(&["order_id"], &["month(order_date)"]),
    )
    .await
    .expect("create the table");
    sink.commit(delta(
        &schema,
        vec![],
        vec![orders(&[(1, jan, 1050), (2, feb, 999)])],
        100,
    ))
    .await
    .expect("insert");
    // order 1 moves from January to March: its delete must land in January's partition
    sink.commit(delta(
        &schema,
        vec![orders(&[(1, jan, 1050)])],
        vec![orders(&[(1, mar, 2000)])],
        200,
    ))
    .await
    .expect("update across partitions");

    let (location, metadata) = current_metadata(&sink, &table).await;
    assert_eq!(
        sink.lake_table(&table).name,
        "sales_orders",
        "non-public schemas prefix the name"
    );
    let spec = metadata.default_partition_spec();
    assert_eq!(spec.fields().len(), 1);
    assert_eq!(spec.fields()[0].name, "order_date_month");
    assert_eq!(
        duck_rows(
            &location,
            "order_id, CAST(order_date AS VARCHAR), CAST(total AS VARCHAR)"
        ),
        vec![
            vec![
                Some("1".into()),
                Some("2024-03-01".into()),
                Some("20.00".into())
            ],
            vec![
                Some("2".into()),
                Some("2024-02-10".into()),
                Some("9.99".into())
            ],
        ]
    );
    // the files sit in their partitions' directories
    let data_dir = Path::new(metadata.location()).join("data");
    let mut partitions: Vec<String> = std::fs::read_dir(&data_dir)
        .expect("the data directory")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    partitions.sort();
    // iceberg-rust names month directories by months since 1970 (648 is January 2024)
    assert_eq!(
        partitions,
        vec![
            "order_date_month=648",
            "order_date_month=649",
            "order_date_month=650"
        ]
    );
    let january = std::fs::read_dir(data_dir.join("order_date_month=648"))
        .expect("january")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("-delete-"))
        .count();
    assert_eq!(january, 1, "the delete is in January's partition");
}

#[tokio::test]
async fn the_checkpoint_round_trips_through_snapshot_summaries() {
    let lake = Lake::new("checkpoint");
    let schema = items_schema();
    let table = schema.table.clone();
    let layout = keyed(&["id"], &[]);
    let mut sink = lake.sink().await;
    sink.prepare(&table, &schema, &layout)
        .await
        .expect("create");

    // an initial copy in two chunks: only the last carries the checkpoint
    let mut first = delta(&schema, vec![], vec![items(&schema, &[(1, Some("a"))])], 0);
    first.truncate = true;
    first.lsn = None;
    sink.commit(first).await.expect("first chunk");
    assert_eq!(
        lake.sink()
            .await
            .prepare(&table, &schema, &layout)
            .await
            .expect("prepare"),
        None,
        "an interrupted copy has no checkpoint"
    );
    let lsn = "16/B374D848".parse::<Lsn>().expect("an LSN");
    let mut last = delta(&schema, vec![], vec![items(&schema, &[(2, Some("b"))])], 0);
    last.lsn = Some(lsn);
    sink.commit(last).await.expect("last chunk");
    sink.commit(delta(
        &schema,
        vec![items(&schema, &[(1, None)])],
        vec![],
        lsn.0 + 8,
    ))
    .await
    .expect("a streamed delete");

    let mut fresh = lake.sink().await;
    assert_eq!(
        fresh
            .prepare(&table, &schema, &layout)
            .await
            .expect("prepare"),
        Some(Lsn(lsn.0 + 8)),
        "a fresh sink reads the checkpoint back from the lake"
    );

    let (_, metadata) = current_metadata(&fresh, &table).await;
    let mut snapshots: Vec<_> = metadata.snapshots().cloned().collect();
    snapshots.sort_by_key(|s| s.sequence_number());
    let seen: Vec<(i64, Operation, Option<String>)> = snapshots
        .iter()
        .map(|s| {
            (
                s.sequence_number(),
                s.summary().operation.clone(),
                s.summary()
                    .additional_properties
                    .get(CHECKPOINT_PROPERTY)
                    .cloned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (1, Operation::Overwrite, None),
            (2, Operation::Append, Some("16/B374D848".into())),
            (3, Operation::Overwrite, Some("16/B374D850".into())),
        ]
    );
    for pair in snapshots.windows(2) {
        assert_eq!(pair[1].parent_snapshot_id(), Some(pair[0].snapshot_id()));
    }
    let props = &snapshots[2].summary().additional_properties;
    // the delete of a row the lake holds: a position delete (the default delete mode)
    assert_eq!(props["added-position-deletes"], "1");
    assert_eq!(props["total-position-deletes"], "1");
    assert_eq!(props["total-records"], "2", "records in data files");
    assert_eq!(props["total-delete-files"], "1");

    // a commit at or below the checkpoint is refused and changes nothing
    let stale = fresh
        .commit(delta(
            &schema,
            vec![],
            vec![items(&schema, &[(9, Some("x"))])],
            lsn.0,
        ))
        .await
        .expect_err("a commit below the checkpoint");
    assert!(stale.to_string().contains("16/B374D850"), "{stale}");
    let (after, _) = current_metadata(&fresh, &table).await;
    assert_eq!(duck_rows(&after, "id, name"), text_rows(&[(2, Some("b"))]));
}

#[tokio::test]
async fn a_writer_with_stale_metadata_reloads_and_both_commits_land() {
    let lake = Lake::new("race");
    let schema = items_schema();
    let table = schema.table.clone();
    let layout = keyed(&["id"], &[]);
    let mut first = lake.sink().await;
    let mut second = lake.sink().await;
    first
        .prepare(&table, &schema, &layout)
        .await
        .expect("prepare");
    second
        .prepare(&table, &schema, &layout)
        .await
        .expect("prepare");
    first
        .commit(delta(
            &schema,
            vec![],
            vec![items(&schema, &[(1, Some("a")), (2, Some("b"))])],
            10,
        ))
        .await
        .expect("first writer");
    // the second writer still holds the table before the first commit: it loses the
    // compare-and-swap, reloads, and re-applies on the winner's snapshot
    second
        .commit(delta(
            &schema,
            vec![items(&schema, &[(1, None)])],
            vec![items(&schema, &[(1, Some("a2")), (3, Some("c"))])],
            20,
        ))
        .await
        .expect("second writer");

    let (location, metadata) = current_metadata(&second, &table).await;
    assert_eq!(
        duck_rows(&location, "id, name"),
        text_rows(&[(1, Some("a2")), (2, Some("b")), (3, Some("c"))])
    );
    let mut sequence: Vec<i64> = metadata.snapshots().map(|s| s.sequence_number()).collect();
    sequence.sort();
    assert_eq!(sequence, vec![1, 2]);
    assert_eq!(metadata.last_sequence_number(), 2);
    assert_eq!(metadata.metadata_log().len(), 2, "create, first commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_lose_the_swap_retry_and_lose_no_commit() {
    let lake = Lake::new("racing");
    let schema = items_schema();
    let table = schema.table.clone();
    let layout = keyed(&["id"], &[]);
    // two writers as two processes are: each with its own commit gates
    let mut first = lake.sink().await.with_private_commit_gates();
    let mut second = lake.sink().await.with_private_commit_gates();
    first
        .prepare(&table, &schema, &layout)
        .await
        .expect("prepare");
    second
        .prepare(&table, &schema, &layout)
        .await
        .expect("prepare");

    // Both commit at once, round after round, until one of them has lost a race: its staged
    // metadata file was never committed, and it retried on the winner's metadata.
    let metadata_dir = |location: &str| {
        Path::new(location)
            .parent()
            .expect("the metadata directory")
            .to_path_buf()
    };
    let mut rounds = 0;
    let mut expected = Vec::new();
    loop {
        let (a, b) = (rounds * 2, rounds * 2 + 1);
        // the copy's chunks carry no checkpoint, the stream's do: neither refuses the other
        let mut chunk = delta(&schema, vec![], vec![items(&schema, &[(a, Some("a"))])], 0);
        chunk.lsn = None;
        let streamed = delta(
            &schema,
            vec![],
            vec![items(&schema, &[(b, Some("b"))])],
            u64::try_from(b).expect("positive"),
        );
        // each writer on a thread of its own, as two processes would be
        let a_task = tokio::spawn(async move {
            first.commit(chunk).await.expect("first writer");
            first
        });
        let b_task = tokio::spawn(async move {
            second.commit(streamed).await.expect("second writer");
            second
        });
        first = a_task.await.expect("first writer's task");
        second = b_task.await.expect("second writer's task");
        expected.extend([(a, Some("a")), (b, Some("b"))]);
        rounds += 1;
        // either writer may have committed last: read what the catalog points at
        let (location, metadata) = catalog_metadata(&second, &table).await;
        let files = std::fs::read_dir(metadata_dir(&location))
            .expect("the metadata directory")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".metadata.json"))
            .count();
        let committed = metadata.metadata_log().len() + 1;
        if files > committed || rounds == 20 {
            assert!(files > committed, "no race was lost in {rounds} rounds");
            assert_eq!(duck_rows(&location, "id, name"), text_rows(&expected));
            let mut sequence: Vec<i64> =
                metadata.snapshots().map(|s| s.sequence_number()).collect();
            sequence.sort();
            assert_eq!(sequence, (1..=i64::from(rounds) * 2).collect::<Vec<_>>());
            break;
        }
    }
}

#[tokio::test]
async fn large_commits_roll_files_at_the_target_size() {
    let lake = Lake::with_sink("rolling", |warehouse, _| {
        format!(
            "warehouse = \"{}\"\ntarget_file_size = \"1MiB\"\n",
            warehouse.display()
        )
    });
    let schema = items_schema();
    let table = schema.table.clone();
    let mut sink = lake.sink().await;
    sink.prepare(&table, &schema, &keyed(&["id"], &[]))
        .await
        .expect("create");
    let rows: i32 = 200_000;
    let ids: Vec<i32> = (0..rows).collect();
    // distinct, poorly compressible names: about 6 MB of text
    let names: Vec<String> = ids
        .iter()
        .map(|i| format!("{:x}", (*i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
        .collect();
    let batch = RecordBatch::try_new(
        schema.arrow_nullable.clone(),
        vec![
            Arc::new(Int32Array::from(ids)),
            Arc::new(StringArray::from(names.clone())),
        ],
    )
    .expect("a large batch");
    sink.commit(delta(&schema, vec![], vec![batch], 10))
        .await
        .expect("commit");
    let (location, metadata) = current_metadata(&sink, &table).await;
    let summary = &metadata
        .current_snapshot()
        .expect("a snapshot")
        .summary()
        .additional_properties;
    let files: u64 = summary["added-data-files"].parse().expect("a count");
    assert!(files > 1, "one file for {rows} rows: {summary:?}");
    assert_eq!(summary["added-records"], rows.to_string());
    let (first, last) = (names.iter().min(), names.iter().max());
    assert_eq!(
        duck(
            &format!(
                "SELECT count(*), count(DISTINCT id), sum(id), count(DISTINCT name), \
                 min(name), max(name) FROM iceberg_scan('{location}')"
            ),
            &[]
        ),
        vec![vec![
            Some(rows.to_string()),
            Some(rows.to_string()),
            Some((0..i64::from(rows)).sum::<i64>().to_string()),
            Some(rows.to_string()),
            first.cloned(),
            last.cloned(),
        ]]
    );
    // the first file's dictionaries did not pay for these distinct values: the files after it
    // leave them out (plain encoding), and read the same
    let plain = duck(
        &format!(
            "SELECT DISTINCT path_in_schema FROM parquet_metadata('{}/data/*.parquet') \
             WHERE dictionary_page_offset IS NULL ORDER BY 1",
            metadata.location()
        ),
        &[],
    );
    assert_eq!(
        plain,
        vec![vec![Some("id".to_string())], vec![Some("name".to_string())]]
    );
}

/// The sink's futures can run on any task of a multi-threaded runtime.
#[allow(dead_code)]
fn sink_futures_are_send(sink: &mut IcebergSink, delta: TableDelta, keys: &RecordBatch) {
    fn send<T: Send>(_: T) {}
    let schema = delta.schema.clone();
    send(sink.prepare(&delta.table.clone(), &schema, &keyed(&[], &[])));
    send(sink.commit(delta.clone()));
    send(sink.lookup(&delta.table, keys));
}

#[tokio::test]
async fn a_key_widened_while_running_keeps_position_deletes() {
    let lake = Lake::new("key_widened");
    let table = TableId::new("public", "widened");
    let layout = keyed(&["id"], &[]);
    let v1 = table_schema(
        &table,
        &[
            ("id", DataType::Int32, 23, true),
            ("n", DataType::Int32, 23, false),
        ],
        &[],
    );
    let mut sink = lake.sink().await;
    sink.prepare(&table, &v1, &layout).await.expect("create");
    let rows = RecordBatch::try_new(
        v1.arrow_nullable.clone(),
        vec![
            Arc::new(Int32Array::from(vec![1, 2, 3])),
            Arc::new(Int32Array::from(vec![10, 20, 30])),
        ],
    )
    .expect("v1 rows");
    sink.commit(delta(&v1, vec![], vec![rows], 10))
        .await
        .expect("v1 rows");

    // ALTER TABLE … ALTER id TYPE bigint: the change comes with the next delta (the key
    // index then holds keys encoded as int), which deletes key 1 and updates key 2
    let v2 = table_schema(
        &table,
        &[
            ("id", DataType::Int64, 20, true),
            ("n", DataType::Int32, 23, false),
        ],
        &[],
    );
    let keys = |ids: Vec<i64>| {
        let n = ids.len();
        RecordBatch::try_new(
            v2.arrow_nullable.clone(),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(Int32Array::from(vec![None::<i32>; n])),
            ],
        )
        .expect("keys")
    };
    let rows = RecordBatch::try_new(
        v2.arrow_nullable.clone(),
        vec![
            Arc::new(Int64Array::from(vec![2, 5_000_000_000])),
            Arc::new(Int32Array::from(vec![21, 50])),
        ],
    )
    .expect("v2 rows");
    sink.commit(delta(&v2, vec![keys(vec![1, 2])], vec![rows], 20))
        .await
        .expect("the widened key's delta");
    // and one more after it, through the prepare the pipeline makes on a schema change
    sink.prepare(&table, &v2, &layout).await.expect("prepare");
    sink.commit(delta(&v2, vec![keys(vec![3])], vec![], 30))
        .await
        .expect("a delete by the widened key");

    let (location, metadata) = current_metadata(&sink, &table).await;
    let mut snapshots: Vec<_> = metadata.snapshots().cloned().collect();
    snapshots.sort_by_key(|s| s.sequence_number());
    for snapshot in &snapshots[snapshots.len() - 2..] {
        let props = &snapshot.summary().additional_properties;
        assert!(
            props.get("added-equality-deletes").is_none_or(|n| n == "0"),
            "the widened key went to equality deletes: {props:?}"
        );
        assert!(
            props
                .get("added-position-deletes")
                .is_some_and(|n| n != "0"),
            "no position delete after the key widened: {props:?}"
        );
    }
    assert_eq!(
        duck_rows(&location, "id, n"),
        vec![
            vec![Some("2".into()), Some("21".into())],
            vec![Some("5000000000".into()), Some("50".into())],
        ]
    );
}

/// A replica identity changed from (id, region) to (id) while the lake holds equality deletes
/// on the old key: the key index cannot stand for them, so each flush finds no rows and
/// deletes by the new key instead, its rows written as usual.
#[tokio::test]
async fn a_flush_the_key_index_cannot_serve_deletes_by_key_and_writes_its_rows() {
    let lake = Lake::new("unserved");
    let table = TableId::new("public", "rekeyed");
    let schema = table_schema(
        &table,
        &[
            ("id", DataType::Int32, 23, true),
            ("region", DataType::Utf8, 25, true),
            ("n", DataType::Int32, 23, false),
        ],
        &[],
    );
    let batch = |ids: Vec<i32>, regions: Vec<&str>, n: Vec<Option<i32>>| {
        RecordBatch::try_new(
            schema.arrow_nullable.clone(),
            vec![
                Arc::new(Int32Array::from(ids)),
                Arc::new(StringArray::from(regions)),
                Arc::new(Int32Array::from(n)),
            ],
        )
        .expect("a batch")
    };
    // written by key (id, region) with equality deletes
    let mut by_pair = lake.config.clone();
    by_pair.sink.delete_mode = Some(lakewriter::config::DeleteMode::Equality);
    let mut sink = IcebergSink::from_config(&by_pair)
        .await
        .expect("open the sink");
    let pair = keyed(&["id", "region"], &[]);
    sink.prepare(&table, &schema, &pair).await.expect("create");
    let rows = batch(
        vec![1, 2, 3, 4],
        vec!["eu"; 4],
        vec![Some(10), Some(20), Some(30), Some(40)],
    );
    sink.commit(delta(&schema, vec![], vec![rows], 10))
        .await
        .expect("rows");
    let gone = batch(vec![4], vec!["eu"], vec![None]);
    sink.commit(delta(&schema, vec![gone], vec![], 20))
        .await
        .expect("a delete by (id, region)");
    drop(sink);

    // then by key (id), in position mode: deletes key 1, updates key 2, inserts key 5
    let mut sink = lake.sink().await;
    sink.prepare(&table, &schema, &keyed(&["id"], &[]))
        .await
        .expect("prepare by the new key");
    let old = batch(vec![1, 2], vec!["eu", "eu"], vec![None, None]);
    let new = batch(vec![2, 5], vec!["eu", "us"], vec![Some(21), Some(50)]);
    sink.commit(delta(&schema, vec![old], vec![new], 30))
        .await
        .expect("a flush by the new key");

    let (location, metadata) = current_metadata(&sink, &table).await;
    let props = &metadata
        .current_snapshot()
        .expect("a snapshot")
        .summary()
        .additional_properties;
    assert!(
        props
            .get("added-equality-deletes")
            .is_some_and(|n| n == "2"),
        "the flush did not delete by key: {props:?}"
    );
    assert_eq!(
        duck_rows(&location, "id, region, n"),
        vec![
            vec![Some("2".into()), Some("eu".into()), Some("21".into())],
            vec![Some("3".into()), Some("eu".into()), Some("30".into())],
            vec![Some("5".into()), Some("us".into()), Some("50".into())],
        ]
    );
}

#[tokio::test]
async fn schema_evolution_adds_columns_and_widens_types() {
    let lake = Lake::new("evolution");
    let table = TableId::new("public", "counters");
    let layout = keyed(&["id"], &[]);
    let v1 = table_schema(
        &table,
        &[
            ("id", DataType::Int32, 23, true),
            ("hits", DataType::Int32, 23, false),
        ],
        &[],
    );
    let mut sink = lake.sink().await;
    sink.prepare(&table, &v1, &layout).await.expect("create");
    let batch = RecordBatch::try_new(
        v1.arrow_nullable.clone(),
        vec![
            Arc::new(Int32Array::from(vec![1, 2])),
            Arc::new(Int32Array::from(vec![Some(5), None])),
        ],
    )
    .expect("v1 rows");
    sink.commit(delta(&v1, vec![], vec![batch], 10))
        .await
        .expect("v1 rows");

    // ALTER TABLE … ALTER hits TYPE bigint, ADD note text
    let v2 = table_schema(
        &table,
        &[
            ("id", DataType::Int32, 23, true),
            ("hits", DataType::Int64, 20, false),
            ("note", DataType::Utf8, 25, false),
        ],
        &[],
    );
    sink.prepare(&table, &v2, &layout).await.expect("evolve");
    let batch = RecordBatch::try_new(
        v2.arrow_nullable.clone(),
        vec![
            Arc::new(Int32Array::from(vec![3])),
            Arc::new(Int64Array::from(vec![5_000_000_000])),
            Arc::new(StringArray::from(vec!["big"])),
        ],
    )
    .expect("v2 rows");
    sink.commit(delta(&v2, vec![], vec![batch], 20))
        .await
        .expect("v2 rows");

    // ALTER TABLE … DROP hits: the lake keeps the column, new rows hold nulls in it
    let v3 = table_schema(
        &table,
        &[
            ("id", DataType::Int32, 23, true),
            ("note", DataType::Utf8, 25, false),
        ],
        &[],
    );
    let batch = RecordBatch::try_new(
        v3.arrow_nullable.clone(),
        vec![
            Arc::new(Int32Array::from(vec![4])),
            Arc::new(StringArray::from(vec!["dropped"])),
        ],
    )
    .expect("v3 rows");
    // the schema change arrives with the delta, without a prepare
    sink.commit(delta(&v3, vec![], vec![batch], 30))
        .await
        .expect("v3 rows");

    let (location, metadata) = current_metadata(&sink, &table).await;
    let schema = metadata.current_schema();
    assert_eq!(
        schema
            .as_struct()
            .fields()
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>(),
        vec!["id", "hits", "note"]
    );
    assert_eq!(
        duck_rows(&location, "id, hits, note"),
        vec![
            vec![Some("1".into()), Some("5".into()), None],
            vec![Some("2".into()), None, None],
            vec![
                Some("3".into()),
                Some("5000000000".into()),
                Some("big".into())
            ],
            vec![Some("4".into()), None, Some("dropped".into())],
        ]
    );

    // a change Iceberg cannot follow is refused, naming the column
    let v4 = table_schema(
        &table,
        &[
            ("id", DataType::Int32, 23, true),
            ("note", DataType::Int32, 23, false),
        ],
        &[],
    );
    let error = sink
        .prepare(&table, &v4, &layout)
        .await
        .expect_err("text → int");
    let message = error.to_string();
    assert!(
        message.contains("column note") && message.contains("counters"),
        "{message}"
    );
}

#[tokio::test]
async fn uuid_keys_decimals_lists_and_timestamps_land_and_look_up() {
    let lake = Lake::new("types");
    let table = TableId::new("public", "events");
    let schema = table_schema(
        &table,
        &[
            ("id", DataType::FixedSizeBinary(16), 2950, true),
            ("amount", DataType::Decimal128(12, 3), 1700, false),
            (
                "tags",
                DataType::List(Arc::new(Field::new("element", DataType::Utf8, true))),
                1009,
                false,
            ),
            (
                "happened_at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                1184,
                false,
            ),
        ],
        &["id"],
    );
    let ids = [[0x11_u8; 16], [0x22_u8; 16]];
    let batch = |which: &[usize]| {
        let mut tags = ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new(
            "element",
            DataType::Utf8,
            true,
        )));
        for &i in which {
            tags.values().append_value(format!("t{i}"));
            tags.values().append_null();
            tags.append(true);
        }
        RecordBatch::try_new(
            schema.arrow_nullable.clone(),
            vec![
                Arc::new(
                    FixedSizeBinaryArray::try_from_iter(which.iter().map(|&i| ids[i]))
                        .expect("uuids"),
                ) as ArrayRef,
                Arc::new(
                    Decimal128Array::from(
                        which
                            .iter()
                            .map(|&i| -1_234_567 * (i as i128 + 1))
                            .collect::<Vec<_>>(),
                    )
                    .with_precision_and_scale(12, 3)
                    .expect("decimal(12,3)"),
                ),
                Arc::new(tags.finish()),
                Arc::new(
                    TimestampMicrosecondArray::from(
                        which
                            .iter()
                            .map(|&i| 1_700_000_000_000_000 + i as i64)
                            .collect::<Vec<_>>(),
                    )
                    .with_timezone("+00:00"),
                ),
            ],
        )
        .expect("an events batch")
    };
    let mut sink = lake.sink().await;
    sink.prepare(&table, &schema, &keyed(&["id"], &["bucket(4, id)"]))
        .await
        .expect("create");
    sink.commit(delta(&schema, vec![], vec![batch(&[0, 1])], 10))
        .await
        .expect("insert");
    sink.commit(delta(&schema, vec![batch(&[0])], vec![], 20))
        .await
        .expect("delete by uuid");

    let (location, _) = current_metadata(&sink, &table).await;
    assert_eq!(
        duck_rows(
            &location,
            "CAST(id AS VARCHAR), CAST(amount AS VARCHAR), CAST(tags AS VARCHAR), \
             CAST(epoch_us(happened_at) AS VARCHAR)"
        ),
        vec![vec![
            Some("22222222-2222-2222-2222-222222222222".into()),
            Some("-2469.134".into()),
            Some("[t1, NULL]".into()),
            Some("1700000000000001".into()),
        ]]
    );

    let keys = RecordBatch::try_new(
        Arc::new(Schema::new(vec![schema.arrow_nullable.field(0).clone()])),
        vec![Arc::new(
            FixedSizeBinaryArray::try_from_iter(ids.iter().copied()).expect("uuids"),
        )],
    )
    .expect("keys");
    let found = sink.lookup(&table, &keys).await.expect("lookup");
    let rows: usize = found.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(rows, 1, "only the live key");
    let found_ids = found[0]
        .column(0)
        .as_any()
        .downcast_ref::<FixedSizeBinaryArray>()
        .expect("uuids");
    assert_eq!(found_ids.value(0), &ids[1]);
}

#[tokio::test]
async fn on_s3_with_glue_a_commit_lands_and_duckdb_reads_it() {
    let endpoint = stack().aws_endpoint().to_string();
    let bucket = format!("lake-{}", std::process::id());
    let lake = Lake::with_sink("s3", |_, _| {
        format!(
            "catalog = \"glue\"\nwarehouse = \"s3://{bucket}/warehouse\"\n\
             [sink.glue]\nregion = \"us-east-1\"\nendpoint = \"{endpoint}\"\n\
             [sink.s3]\nregion = \"us-east-1\"\nendpoint = \"{endpoint}\"\n\
             force_path_style = true\naccess_key_id = \"testing\"\n\
             secret_access_key = \"testing\"\n"
        )
    });
    let s3 = lakewriter::cloud::s3_client(&lake.config).await;
    match s3.create_bucket().bucket(&bucket).send().await {
        Ok(_) => {}
        Err(e) => {
            let text = format!("{e:?}");
            assert!(
                text.contains("BucketAlreadyOwnedByYou"),
                "create bucket: {text}"
            );
        }
    }

    let schema = items_schema();
    let table = schema.table.clone();
    let mut sink = lake.sink().await;
    sink.prepare(&table, &schema, &keyed(&["id"], &[]))
        .await
        .expect("create on glue");
    sink.commit(delta(
        &schema,
        vec![],
        vec![items(&schema, &[(1, Some("a")), (2, Some("b"))])],
        10,
    ))
    .await
    .expect("insert");
    sink.commit(delta(
        &schema,
        vec![items(&schema, &[(1, None)])],
        vec![items(&schema, &[(3, Some("c"))])],
        20,
    ))
    .await
    .expect("delete and insert");

    let (location, metadata) = current_metadata(&sink, &table).await;
    assert!(
        location.starts_with(&format!(
            "s3://{bucket}/warehouse/{}/items/metadata/",
            lake.namespace
        )),
        "{location}"
    );
    assert_eq!(
        metadata.current_snapshot().map(|s| s.sequence_number()),
        Some(2)
    );
    let port = endpoint
        .rsplit(':')
        .next()
        .expect("a port")
        .trim_end_matches('/');
    let setup = vec![
        format!("SET s3_endpoint='127.0.0.1:{port}'"),
        "SET s3_use_ssl=false".to_string(),
        "SET s3_url_style='path'".to_string(),
        "SET s3_access_key_id='testing'".to_string(),
        "SET s3_secret_access_key='testing'".to_string(),
        "SET s3_region='us-east-1'".to_string(),
    ];
    assert_eq!(
        duck(
            &format!("SELECT id, name FROM iceberg_scan('{location}') ORDER BY 1"),
            &setup
        ),
        text_rows(&[(2, Some("b")), (3, Some("c"))])
    );

    // a fresh sink reads the checkpoint back through Glue
    assert_eq!(
        lake.sink()
            .await
            .prepare(&table, &schema, &keyed(&["id"], &[]))
            .await
            .expect("prepare"),
        Some(Lsn(20))
    );
}

/// A catalog whose next commit lands, is followed by another writer's commit, and then
/// answers with a transient error, as a Glue call that timed out after the service applied it.
struct LostAnswer {
    inner: LakeCatalog,
    armed: std::sync::atomic::AtomicBool,
}

impl Catalog for LostAnswer {
    fn describe(&self) -> &str {
        self.inner.describe()
    }

    async fn ensure_namespace(&self, namespace: &str) -> Result<(), CatalogError> {
        self.inner.ensure_namespace(namespace).await
    }

    async fn load(&self, table: &CatalogTable) -> Result<Option<Pointer>, CatalogError> {
        self.inner.load(table).await
    }

    async fn create(
        &self,
        table: &CatalogTable,
        metadata_location: &str,
        metadata: &TableMetadata,
    ) -> Result<Pointer, CatalogError> {
        self.inner.create(table, metadata_location, metadata).await
    }

    async fn commit(
        &self,
        table: &CatalogTable,
        expected: &Pointer,
        new_metadata_location: &str,
        metadata: &TableMetadata,
    ) -> Result<Pointer, CatalogError> {
        let landed = self
            .inner
            .commit(table, expected, new_metadata_location, metadata)
            .await?;
        if !self.armed.swap(false, Ordering::SeqCst) {
            return Ok(landed);
        }
        // another writer's commit on top (a property change), before the answer comes back
        let mut properties = metadata.properties().clone();
        properties.insert("other.writer".into(), "was here".into());
        let next = metadata
            .clone()
            .into_builder(Some(new_metadata_location.to_string()))
            .set_properties(properties)
            .and_then(|b| b.build())
            .expect("the other writer's metadata")
            .metadata;
        let location = new_metadata_location.replace(".metadata.json", "-other.metadata.json");
        std::fs::write(&location, serde_json::to_vec(&next).expect("metadata JSON"))
            .expect("write the other writer's metadata");
        self.inner
            .commit(table, &landed, &location, &next)
            .await
            .expect("the other writer commits");
        Err(CatalogError::Glue {
            catalog: self.describe().to_string(),
            context: format!("update table {table}"),
            message: "timed out waiting for the answer".into(),
            retryable: true,
        })
    }

    async fn list(&self, namespace: &str) -> Result<Vec<CatalogTable>, CatalogError> {
        self.inner.list(namespace).await
    }

    async fn drop_table(&self, table: &CatalogTable) -> Result<bool, CatalogError> {
        self.inner.drop_table(table).await
    }
}

#[tokio::test]
async fn a_commit_whose_answer_was_lost_under_a_later_commit_is_a_success_not_a_table_error() {
    let lake = Lake::new("lost_answer");
    let schema = items_schema();
    let table = schema.table.clone();
    let layout = keyed(&["id"], &[]);
    let catalog = LostAnswer {
        inner: LakeCatalog::from_config(&lake.config)
            .await
            .expect("the catalog"),
        armed: std::sync::atomic::AtomicBool::new(false),
    };
    let mut sink = IcebergSink::new(
        catalog,
        file_io(&lake.config).expect("file io"),
        IcebergSettings::from_config(&lake.config).expect("settings"),
    );
    sink.prepare(&table, &schema, &layout)
        .await
        .expect("prepare");
    sink.catalog().armed.store(true, Ordering::SeqCst);
    sink.commit(delta(
        &schema,
        vec![],
        vec![items(&schema, &[(1, Some("a")), (2, Some("b"))])],
        10,
    ))
    .await
    .expect("the commit landed: its lost answer is no error");
    // the table goes on from there, and holds each row once
    sink.commit(delta(
        &schema,
        vec![items(&schema, &[(2, None)])],
        vec![items(&schema, &[(2, Some("b2"))])],
        20,
    ))
    .await
    .expect("the next commit");
    let reader = lake.sink().await;
    let (location, metadata) = catalog_metadata(&reader, &table).await;
    assert_eq!(
        duck_rows(&location, "id, name"),
        text_rows(&[(1, Some("a")), (2, Some("b2"))])
    );
    assert_eq!(metadata.snapshots().count(), 2, "one snapshot per commit");
}

/// Commits rows `1..=commits`, one per commit at LSN = its id; the rows the table then holds.
async fn commit_one_row_each(
    sink: &mut IcebergSink,
    schema: &Arc<TableSchema>,
    commits: u64,
) -> Vec<(i32, Option<&'static str>)> {
    let mut expected = Vec::new();
    for i in 1..=commits {
        let id = i as i32;
        sink.commit(delta(
            schema,
            vec![],
            vec![items(schema, &[(id, Some("v"))])],
            i,
        ))
        .await
        .expect("commit");
        expected.push((id, Some("v")));
    }
    expected
}

#[tokio::test]
async fn metadata_files_off_the_log_are_removed_and_the_table_reads_the_same() {
    let lake = Lake::new("metadata_log");
    let schema = items_schema();
    let table = schema.table.clone();
    let layout = keyed(&["id"], &[]);
    let mut sink = lake.sink().await;
    sink.prepare(&table, &schema, &layout)
        .await
        .expect("create");

    // a month of commits in miniature: more than the 100 metadata files the log keeps
    let commits = 120u64;
    let expected = commit_one_row_each(&mut sink, &schema, commits).await;
    let (location, metadata) = current_metadata(&sink, &table).await;
    assert_eq!(
        metadata.metadata_log().len(),
        100,
        "the log keeps 100 entries"
    );
    let directory = Path::new(&location)
        .parent()
        .expect("the metadata directory");
    let mut on_disk: Vec<String> = std::fs::read_dir(directory)
        .expect("list the metadata directory")
        .filter_map(|e| e.ok())
        .map(|e| e.path().display().to_string())
        .filter(|p| p.ends_with(".metadata.json"))
        .collect();
    on_disk.sort();
    let mut reachable: Vec<String> = metadata
        .metadata_log()
        .iter()
        .map(|m| m.metadata_file.clone())
        .chain(std::iter::once(location.clone()))
        .collect();
    reachable.sort();
    assert_eq!(
        on_disk, reachable,
        "exactly the current metadata file and the ones its log names stay"
    );
    // every reader still reads the whole table, through the current file
    assert_eq!(duck_rows(&location, "id, name"), text_rows(&expected));
}

#[tokio::test]
async fn the_writer_expires_old_snapshots_on_its_own_cadence_and_keeps_the_checkpoint() {
    let lake = Lake::with_sink("expiry_cadence", |warehouse, _| {
        format!(
            "warehouse = \"{}\"\n\n[compaction]\nsnapshot_retention = \"0s\"\nkeep_snapshots = 5\n",
            warehouse.display()
        )
    });
    let schema = items_schema();
    let table = schema.table.clone();
    let layout = keyed(&["id"], &[]);
    let mut sink = lake.sink().await;
    sink.prepare(&table, &schema, &layout)
        .await
        .expect("create");
    // manifests merged often, so that many are referenced by old snapshots only
    set_properties_with_pyiceberg(
        &lake,
        &sink,
        &table,
        &[("commit.manifest.min-count-to-merge", "4")],
    );

    // past one expiry (every 100 commits) and half way to the next
    let commits = 150u64;
    let expected = commit_one_row_each(&mut sink, &schema, commits).await;
    let (location, metadata) = current_metadata(&sink, &table).await;
    let snapshots = metadata.snapshots().count();
    assert_eq!(
        snapshots, 55,
        "the 5 kept at the expiry after commit 100, and the 50 since"
    );
    // every manifest list on disk belongs to a snapshot still in the table
    let directory = Path::new(&location)
        .parent()
        .expect("the metadata directory");
    let lists = std::fs::read_dir(directory)
        .expect("list the metadata directory")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("snap-"))
        .count();
    assert_eq!(
        lists, snapshots,
        "the expired snapshots' manifest lists are gone"
    );
    // and every manifest on disk is one a remaining snapshot lists
    let mut listed = std::collections::BTreeSet::new();
    for snapshot in metadata.snapshots() {
        let bytes = std::fs::read(snapshot.manifest_list()).expect("read a manifest list");
        let list =
            iceberg::spec::ManifestList::parse_with_version(&bytes, metadata.format_version())
                .expect("parse a manifest list");
        listed.extend(list.entries().iter().map(|m| m.manifest_path.clone()));
    }
    let manifests: std::collections::BTreeSet<String> = std::fs::read_dir(directory)
        .expect("list the metadata directory")
        .filter_map(|e| e.ok())
        .map(|e| e.path().display().to_string())
        .filter(|p| p.ends_with(".avro") && !p.contains("/snap-"))
        .collect();
    let left: Vec<&String> = manifests.difference(&listed).collect();
    let missing: Vec<&String> = listed.difference(&manifests).collect();
    assert!(
        left.is_empty() && missing.is_empty(),
        "{} manifests only expired snapshots listed are left, {} listed ones are missing: \
         {left:?} {missing:?}",
        left.len(),
        missing.len()
    );
    assert_eq!(duck_rows(&location, "id, name"), text_rows(&expected));
    assert_eq!(
        lake.sink()
            .await
            .prepare(&table, &schema, &layout)
            .await
            .expect("prepare"),
        Some(Lsn(commits)),
        "the checkpoint stays"
    );
}

/// Sets table properties of `table` through pyiceberg's SQL catalog: a foreign commit, as an
/// operator tuning a table with another engine makes.
fn set_properties_with_pyiceberg(
    lake: &Lake,
    sink: &IcebergSink,
    table: &TableId,
    set: &[(&str, &str)],
) {
    let script = r#"
import sys
from pyiceberg.catalog.sql import SqlCatalog
path, warehouse, ident = sys.argv[1:4]
pairs = sys.argv[4:]
catalog = SqlCatalog("lakewriter", uri=f"sqlite:///{path}", warehouse=warehouse)
table = catalog.load_table(ident)
with table.transaction() as tx:
    tx.set_properties(**dict(zip(pairs[0::2], pairs[1::2])))
"#;
    let output = stack()
        .python()
        .arg("-c")
        .arg(script)
        .arg(lake.config.sqlite_catalog_path())
        .arg(format!("file://{}", lake._warehouse.path().display()))
        .arg(sink.lake_table(table).to_string())
        .args(set.iter().flat_map(|(k, v)| [*k, *v]))
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "pyiceberg failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The manifests of `metadata`'s current snapshot: (data, delete) counts.
async fn current_manifests(metadata: &TableMetadata) -> (usize, usize) {
    let snapshot = metadata.current_snapshot().expect("a current snapshot");
    let bytes = iceberg::io::FileIO::new_with_fs()
        .new_input(snapshot.manifest_list())
        .expect("the manifest list")
        .read()
        .await
        .expect("read the manifest list");
    let list = iceberg::spec::ManifestList::parse_with_version(&bytes, metadata.format_version())
        .expect("parse the manifest list");
    let deletes = list
        .entries()
        .iter()
        .filter(|m| m.content == iceberg::spec::ManifestContentType::Deletes)
        .count();
    (list.entries().len() - deletes, deletes)
}

#[tokio::test]
async fn carried_manifests_merge_past_the_min_count_and_deletes_still_apply_by_sequence() {
    let lake = Lake::new("manifest_merge");
    let schema = items_schema();
    let table = schema.table.clone();
    let layout = keyed(&["id"], &[]);
    let mut sink = lake.sink().await;
    sink.prepare(&table, &schema, &layout)
        .await
        .expect("create");
    sink.commit(delta(
        &schema,
        vec![],
        vec![items(&schema, &[(1, Some("v0"))])],
        1,
    ))
    .await
    .expect("first commit");
    // the Java property, set by another engine: the writer honours it on its next commit
    let min_count = 6;
    set_properties_with_pyiceberg(
        &lake,
        &sink,
        &table,
        &[("commit.manifest.min-count-to-merge", "6")],
    );

    // upserts of five keys over and over, and deletes: every commit adds a data manifest and
    // a delete manifest, and every data file's rows are deleted by later delete files
    let mut expected: std::collections::BTreeMap<i32, String> =
        std::collections::BTreeMap::from([(1, "v0".to_string())]);
    let mut merged = 0;
    for i in 2..=40u64 {
        let id = (i % 5) as i32 + 1;
        let value = format!("v{i}");
        let (deletes, rows) = if i % 7 == 0 {
            expected.remove(&id);
            (vec![items(&schema, &[(id, None)])], vec![])
        } else {
            expected.insert(id, value.clone());
            (
                vec![items(&schema, &[(id, None)])],
                vec![items(&schema, &[(id, Some(value.as_str()))])],
            )
        };
        sink.commit(delta(&schema, deletes, rows, i))
            .await
            .expect("commit");
        let (_, metadata) = current_metadata(&sink, &table).await;
        let (data, deletes) = current_manifests(&metadata).await;
        assert!(
            data <= min_count && deletes <= min_count,
            "commit {i}: {data} data and {deletes} delete manifests, past the min count \
             {min_count} that triggers a merge"
        );
        let summary = metadata
            .current_snapshot()
            .expect("a snapshot")
            .summary()
            .additional_properties
            .clone();
        if summary.get("manifests-replaced").is_some_and(|v| v != "0") {
            merged += 1;
        }
        // a reader applying deletes by sequence number sees exactly the keys' final states,
        // after merges as before them
        if i % 10 == 0 || i == 40 {
            let (location, _) = current_metadata(&sink, &table).await;
            let want: Vec<Vec<Option<String>>> = expected
                .iter()
                .map(|(id, name)| vec![Some(id.to_string()), Some(name.clone())])
                .collect();
            assert_eq!(duck_rows(&location, "id, name"), want, "after commit {i}");
        }
    }
    assert!(merged >= 4, "merges happened ({merged} commits merged)");
    // a writer starting afresh reads the merged table the same way
    assert_eq!(
        lake.sink()
            .await
            .prepare(&table, &schema, &layout)
            .await
            .expect("prepare"),
        Some(Lsn(40))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_beside_a_writer_committing_back_to_back_lands_at_its_turn() {
    let lake = Lake::new("compact_beside");
    let schema = items_schema();
    let table = schema.table.clone();
    let layout = keyed(&["id"], &[]);
    let mut sink = lake.sink().await;
    sink.prepare(&table, &schema, &layout)
        .await
        .expect("create");
    let mut expected = commit_one_row_each(&mut sink, &schema, 30).await;

    // the writer commits as fast as it can, each commit an upsert of a few keys, until told
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let schema = schema.clone();
        tokio::spawn(async move {
            let mut lsn = 30u64;
            let mut last = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                lsn += 1;
                let id = (lsn % 30) as i32 + 1;
                sink.commit(delta(
                    &schema,
                    vec![items(&schema, &[(id, None)])],
                    vec![items(&schema, &[(id, Some("w"))])],
                    lsn,
                ))
                .await
                .expect("a writer commit");
                last.push(id);
            }
            (sink, last)
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let outcomes = lakewriter::maintenance::compact::run(&lake.config, None)
        .await
        .expect("compact");
    stop.store(true, Ordering::SeqCst);
    let (sink, updated) = writer.await.expect("the writer");
    assert!(
        updated.len() > 5,
        "the writer kept committing ({} commits)",
        updated.len()
    );
    let outcome = outcomes.first().expect("one table compacted");
    assert_eq!(
        outcome.failed, None,
        "the compaction lost to the writer's commits"
    );
    assert_eq!(outcome.skipped, None);
    assert!(outcome.data_files_in > 0, "nothing was rewritten");
    for id in updated {
        expected[id as usize - 1] = (id, Some("w"));
    }
    let (location, _) = current_metadata(&sink, &table).await;
    assert_eq!(duck_rows(&location, "id, name"), text_rows(&expected));
}

#[tokio::test]
async fn a_large_transactions_staged_position_deletes_survive_a_compaction_landing_first() {
    let lake = Lake::new("staged_positions");
    let schema = items_schema();
    let table = schema.table.clone();
    let layout = keyed(&["id"], &[]);
    let mut sink = lake.sink().await;
    sink.prepare(&table, &schema, &layout)
        .await
        .expect("create");
    let mut expected = commit_one_row_each(&mut sink, &schema, 30).await;

    // a transaction too large for memory stages its parts: keys 1 to 10 deleted (their rows
    // found in the key index), 1 to 5 written again
    let deleted: Vec<(i32, Option<&str>)> = (1..=10).map(|id| (id, None)).collect();
    let written: Vec<(i32, Option<&str>)> = (1..=5).map(|id| (id, Some("s"))).collect();
    let mut part = delta(
        &schema,
        vec![items(&schema, &deleted)],
        vec![items(&schema, &written)],
        0,
    );
    part.lsn = None;
    sink.stage(part).await.expect("stage a part");

    // a compaction lands before the transaction's commit: every row the staged position
    // deletes name moves to a new file
    let outcomes = lakewriter::maintenance::compact::run(&lake.config, None)
        .await
        .expect("compact");
    let outcome = outcomes.first().expect("one table compacted");
    assert_eq!(outcome.failed, None);
    assert!(outcome.data_files_in > 0, "nothing was rewritten");

    sink.commit(delta(&schema, vec![], vec![], 40))
        .await
        .expect("the transaction's commit");
    for id in 1..=10 {
        expected.retain(|(e, _)| *e != id);
    }
    expected.extend(written.iter().copied());
    expected.sort();
    let (location, metadata) = current_metadata(&sink, &table).await;
    assert_eq!(duck_rows(&location, "id, name"), text_rows(&expected));
    // the rows were found again in the compacted file: still no equality delete
    let props = &metadata
        .current_snapshot()
        .expect("a snapshot")
        .summary()
        .additional_properties;
    assert!(
        props.get("total-equality-deletes").is_none_or(|n| n == "0"),
        "{props:?}"
    );
    assert_eq!(props["added-position-deletes"], "10", "{props:?}");
}

/// The live delete files of `metadata`'s current snapshot: (content, format, referenced data
/// file) of each.
async fn live_deletes(
    config: &Config,
    metadata: &TableMetadata,
) -> Vec<(
    iceberg::spec::DataContentType,
    iceberg::spec::DataFileFormat,
    Option<String>,
)> {
    let io = file_io(config).expect("file io");
    let snapshot = metadata.current_snapshot().expect("a snapshot");
    let bytes = io
        .new_input(snapshot.manifest_list())
        .expect("the manifest list")
        .read()
        .await
        .expect("read the manifest list");
    let list = iceberg::spec::ManifestList::parse_with_version(&bytes, metadata.format_version())
        .expect("a manifest list");
    let mut deletes = Vec::new();
    for manifest in list.entries() {
        let loaded = manifest.load_manifest(&io).await.expect("a manifest");
        for entry in loaded.entries().iter().filter(|e| e.is_alive()) {
            let file = entry.data_file();
            if file.content_type() != iceberg::spec::DataContentType::Data {
                deletes.push((
                    file.content_type(),
                    file.file_format(),
                    file.referenced_data_file(),
                ));
            }
        }
    }
    deletes
}

/// `delete_mode = "deletion_vector"`: a transaction too large for memory stages parts whose old
/// rows are found in the key index, some in the same data files; its commit holds one vector
/// per data file (the parts' rows, the commit's own and the file's live vector, merged), and
/// no equality delete, also when a compaction lands before the commit (the parts' rows read
/// back from what they staged, found again).
#[tokio::test]
async fn a_large_transactions_parts_commit_one_deletion_vector_per_data_file() {
    for compaction_first in [false, true] {
        let mut lake = Lake::new("staged_vectors");
        lake.config.sink.delete_mode = Some(lakewriter::config::DeleteMode::DeletionVector);
        let schema = items_schema();
        let table = schema.table.clone();
        let mut sink = lake.sink().await;
        sink.prepare(&table, &schema, &keyed(&["id"], &[]))
            .await
            .expect("create");
        let all: Vec<(i32, Option<&str>)> = (1..=20).map(|id| (id, Some("v"))).collect();
        sink.commit(delta(&schema, vec![], vec![items(&schema, &all)], 10))
            .await
            .expect("insert");
        let first: Vec<(i32, Option<&str>)> = (1..=3).map(|id| (id, None)).collect();
        let updated: Vec<(i32, Option<&str>)> = (1..=3).map(|id| (id, Some("u"))).collect();
        sink.commit(delta(
            &schema,
            vec![items(&schema, &first)],
            vec![items(&schema, &updated)],
            20,
        ))
        .await
        .expect("update: a live vector");

        // two parts and the commit, their old rows in both data files
        let mut expected: std::collections::BTreeMap<i32, &str> = (1..=20)
            .map(|id| (id, if id <= 3 { "u" } else { "v" }))
            .collect();
        for ids in [vec![4, 5, 6, 7, 8], vec![2, 9, 10, 11, 12]] {
            let old: Vec<(i32, Option<&str>)> = ids.iter().map(|&id| (id, None)).collect();
            let new: Vec<(i32, Option<&str>)> = ids.iter().map(|&id| (id, Some("s"))).collect();
            let mut part = delta(
                &schema,
                vec![items(&schema, &old)],
                vec![items(&schema, &new)],
                0,
            );
            part.lsn = None;
            sink.stage(part).await.expect("stage a part");
            for id in ids {
                expected.insert(id, "s");
            }
        }
        if compaction_first {
            let outcomes = lakewriter::maintenance::compact::run(&lake.config, None)
                .await
                .expect("compact");
            assert_eq!(outcomes.first().and_then(|o| o.failed.clone()), None);
        }
        // the commit's own old row in the other file only: the first file's live vector
        // reaches its new vector through the parts' alone
        sink.commit(delta(
            &schema,
            vec![items(&schema, &[(3, None)])],
            vec![items(&schema, &[(3, Some("c")), (21, Some("c"))])],
            40,
        ))
        .await
        .expect("the transaction's commit");
        expected.insert(3, "c");
        expected.insert(21, "c");

        let (location, metadata) = current_metadata(&sink, &table).await;
        let rows: Vec<(i32, Option<&str>)> =
            expected.iter().map(|(&id, &n)| (id, Some(n))).collect();
        assert_eq!(
            duck_rows(&location, "id, name"),
            text_rows(&rows),
            "compaction first: {compaction_first}"
        );
        let deletes = live_deletes(&lake.config, &metadata).await;
        assert!(!deletes.is_empty());
        assert!(
            deletes.iter().all(|(content, format, referenced)| {
                *content == iceberg::spec::DataContentType::PositionDeletes
                    && *format == iceberg::spec::DataFileFormat::Puffin
                    && referenced.is_some()
            }),
            "deletion vectors only (compaction first: {compaction_first}): {deletes:?}"
        );
        let named: std::collections::HashSet<&Option<String>> =
            deletes.iter().map(|(_, _, r)| r).collect();
        assert_eq!(
            named.len(),
            deletes.len(),
            "one vector per data file (compaction first: {compaction_first}): {deletes:?}"
        );
    }
}
