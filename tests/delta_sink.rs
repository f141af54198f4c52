//! The Delta sink in-process against a local warehouse, every outcome read back by DuckDB's
//! `delta_scan` (an independent reader) and the checkpoint by the `txn` actions of the Delta
//! log itself: upserts through MERGE, re-keys, a key both deleted and written, staged parts,
//! truncate, an added column, lookups, and "no checkpoint" after an incomplete commit.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use arrow::array::{Int32Array, RecordBatch, StringArray, Time64MicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use lakewriter::sink::delta::{DeltaSettings, DeltaSink, checkpoint_app_id};
use lakewriter::sink::iceberg::lake_table;
use lakewriter::sink::{Sink, TableDelta, TableLayout};
use lakewriter::source::changes::{ColumnSchema, TableSchema};
use lakewriter::source::pgoutput::ReplicaIdentity;
use lakewriter::source::{Oid, RelationId};
use lakewriter::table::TableId;
use lakewriter::{Config, Lsn};
use support::delta::{delta_query, txn_version};

struct Lake {
    warehouse: tempfile::TempDir,
    namespace: String,
    config: Config,
}

impl Lake {
    fn new(label: &str) -> Lake {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let namespace = format!(
            "delta_{label}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let warehouse = tempfile::tempdir().expect("a temporary warehouse");
        let text = format!(
            "[source]\ndatabase = \"unused\"\n\n[sink]\nformat = \"delta\"\nnamespace = \
             \"{namespace}\"\nwarehouse = \"{}\"\n\n[flush]\nspill_dir = \"{}\"\n",
            warehouse.path().display(),
            warehouse.path().join("spill").display(),
        );
        let config = Config::parse(&text, Path::new("delta-sink-test.toml"), Vec::new())
            .expect("a valid config");
        Lake {
            warehouse,
            namespace,
            config,
        }
    }

    fn sink(&self) -> DeltaSink {
        DeltaSink::new(DeltaSettings::from_config(&self.config).expect("the sink's settings"))
    }

    fn location(&self, table: &TableId) -> PathBuf {
        self.warehouse
            .path()
            .join(&self.namespace)
            .join(&lake_table(&self.namespace, table).name)
    }

    fn rows(&self, table: &TableId, query: &str) -> Vec<String> {
        delta_query(&self.location(table), query)
    }

    fn checkpoint(&self, table: &TableId) -> Option<i64> {
        txn_version(
            &self.location(table),
            &checkpoint_app_id(&lake_table(&self.namespace, table)),
        )
    }
}

fn items() -> TableId {
    TableId::new("public", "items")
}

/// `public.items (id int PRIMARY KEY, name text[, at time])`.
fn items_schema(with_time: bool) -> Arc<TableSchema> {
    let mut columns = vec![
        ("id", DataType::Int32, 23, true),
        ("name", DataType::Utf8, 25, false),
    ];
    if with_time {
        columns.push(("at", DataType::Time64(TimeUnit::Microsecond), 1083, false));
    }
    let arrow = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, t, _, _)| Field::new(*name, t.clone(), true))
            .collect::<Vec<_>>(),
    ));
    Arc::new(TableSchema {
        table: items(),
        relation: RelationId(16384),
        replica_identity: ReplicaIdentity::Default,
        columns: columns
            .iter()
            .map(|(name, _, oid, key)| ColumnSchema {
                name: name.to_string(),
                type_oid: Oid(*oid),
                type_modifier: -1,
                key: *key,
            })
            .collect(),
        arrow: arrow.clone(),
        arrow_nullable: arrow,
    })
}

fn batch(schema: &TableSchema, rows: &[(i32, Option<&str>)]) -> RecordBatch {
    let mut columns: Vec<arrow::array::ArrayRef> = vec![
        Arc::new(Int32Array::from(
            rows.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            rows.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        )),
    ];
    if schema.arrow.fields().len() == 3 {
        columns.push(Arc::new(Time64MicrosecondArray::from(
            rows.iter()
                .map(|(id, _)| i64::from(*id) * 1_000_000)
                .collect::<Vec<_>>(),
        )));
    }
    RecordBatch::try_new(schema.arrow.clone(), columns).expect("a batch")
}

fn delta(
    schema: &Arc<TableSchema>,
    truncate: bool,
    deletes: &[(i32, Option<&str>)],
    rows: &[(i32, Option<&str>)],
    lsn: Option<u64>,
) -> TableDelta {
    TableDelta {
        table: items(),
        schema: schema.clone(),
        truncate,
        adds_only: false,
        deletes: vec![batch(schema, deletes)],
        rows: vec![batch(schema, rows)],
        lsn: lsn.map(Lsn),
        copy: None,
    }
}

fn layout() -> TableLayout {
    TableLayout {
        key: vec!["id".into()],
        partition_by: Vec::new(),
    }
}

const ALL: &str = "SELECT id, name FROM {scan} ORDER BY id";

#[tokio::test]
async fn upserts_deletes_and_rekeys_land_as_one_final_state_per_key() {
    let lake = Lake::new("upsert");
    let schema = items_schema(false);
    let mut sink = lake.sink();
    assert_eq!(
        sink.prepare(&items(), &schema, &layout())
            .await
            .expect("prepare"),
        None
    );

    sink.commit(delta(
        &schema,
        true,
        &[],
        &[(1, Some("a")), (2, Some("b")), (3, Some("c"))],
        Some(100),
    ))
    .await
    .expect("first commit");
    assert_eq!(lake.rows(&items(), ALL), ["1|a", "2|b", "3|c"]);
    assert_eq!(lake.checkpoint(&items()), Some(100));

    // 1 updated, 2 deleted, 3 re-keyed to 30, 4 inserted; 2 also deleted twice
    sink.commit(delta(
        &schema,
        false,
        &[(1, None), (2, None), (2, None), (3, None)],
        &[(1, Some("a2")), (30, Some("c")), (4, Some("d"))],
        Some(200),
    ))
    .await
    .expect("merge");
    assert_eq!(lake.rows(&items(), ALL), ["1|a2", "4|d", "30|c"]);
    assert_eq!(lake.checkpoint(&items()), Some(200));

    // deletes matching nothing still move the checkpoint
    sink.commit(delta(&schema, false, &[(99, None)], &[], Some(300)))
        .await
        .expect("a delete of nothing");
    assert_eq!(lake.rows(&items(), ALL), ["1|a2", "4|d", "30|c"]);
    assert_eq!(lake.checkpoint(&items()), Some(300));

    // a reopened sink reads the checkpoint back
    let mut again = lake.sink();
    assert_eq!(
        again
            .prepare(&items(), &schema, &layout())
            .await
            .expect("prepare"),
        Some(Lsn(300))
    );
    let keys = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, true)])),
        vec![Arc::new(Int32Array::from(vec![4, 5]))],
    )
    .expect("keys");
    let found = again.lookup(&items(), &keys).await.expect("lookup");
    let found: usize = found.iter().map(|b| b.num_rows()).sum();
    assert_eq!(found, 1);
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[tokio::test]
async fn staged_parts_are_sealed_on_local_disk_until_their_commit() {
    const PLAIN: &str = "staged-plaintext-value-that-must-not-show";
    let lake = Lake::new("sealed");
    let schema = items_schema(false);
    let mut sink = lake.sink();
    sink.prepare(&items(), &schema, &layout())
        .await
        .expect("prepare");
    sink.commit(delta(
        &schema,
        false,
        &[],
        &[(1, Some("a")), (2, Some("b"))],
        Some(10),
    ))
    .await
    .expect("first commit");
    // a key's changes are in one part, as the spill's buckets send them
    let mut many: Vec<(i32, Option<&str>)> = (100..2100).map(|i| (i, Some(PLAIN))).collect();
    many.push((1, Some(PLAIN)));
    sink.stage(delta(&schema, false, &[(1, None)], &many, None))
        .await
        .expect("stage");
    sink.stage(delta(&schema, false, &[(2, None)], &[], None))
        .await
        .expect("stage a delete");

    // the parts wait in the spill directory, sealed: neither a value nor a key shows
    let staged = files_under(&lake.warehouse.path().join("spill"));
    assert!(
        !staged.is_empty(),
        "nothing was staged, so this proves nothing"
    );
    for file in &staged {
        let bytes = std::fs::read(file).expect("a staged file");
        for marker in [PLAIN.as_bytes(), b"PAR1", b"ARROW1"] {
            assert!(
                !bytes.windows(marker.len()).any(|w| w == marker),
                "{} holds {:?} in the clear",
                file.display(),
                String::from_utf8_lossy(marker)
            );
        }
    }

    // and their commit reads them back whole
    sink.commit(delta(&schema, false, &[], &[], Some(20)))
        .await
        .expect("commit the staged parts");
    let count = lake.rows(
        &items(),
        "SELECT count(*), count(DISTINCT name), min(id), max(id) FROM {scan}",
    );
    assert_eq!(count, ["2001|1|1|2099"]);
    assert!(
        files_under(&lake.warehouse.path().join("spill")).is_empty(),
        "staged files left behind"
    );
}

#[tokio::test]
async fn staged_parts_commit_with_the_transaction_and_truncate_replaces_everything() {
    let lake = Lake::new("staged");
    let schema = items_schema(false);
    let mut sink = lake.sink();
    sink.prepare(&items(), &schema, &layout())
        .await
        .expect("prepare");
    sink.commit(delta(
        &schema,
        false,
        &[],
        &[(1, Some("a")), (2, Some("b"))],
        Some(10),
    ))
    .await
    .expect("first commit");

    sink.stage(delta(
        &schema,
        false,
        &[(1, None)],
        &[(1, Some("a2")), (5, Some("e"))],
        None,
    ))
    .await
    .expect("stage");
    sink.stage(delta(&schema, false, &[(2, None)], &[], None))
        .await
        .expect("stage");
    // staged parts are not in the table before the commit
    assert_eq!(lake.rows(&items(), ALL), ["1|a", "2|b"]);
    sink.commit(delta(&schema, false, &[], &[(6, Some("f"))], Some(20)))
        .await
        .expect("commit with staged parts");
    assert_eq!(lake.rows(&items(), ALL), ["1|a2", "5|e", "6|f"]);
    assert_eq!(lake.checkpoint(&items()), Some(20));

    // a discarded part never reaches the table
    sink.stage(delta(&schema, false, &[], &[(7, Some("g"))], None))
        .await
        .expect("stage");
    sink.discard_staged(&items());
    sink.commit(delta(
        &schema,
        true,
        &[(5, None)],
        &[(8, Some("h"))],
        Some(30),
    ))
    .await
    .expect("truncate");
    assert_eq!(lake.rows(&items(), ALL), ["8|h"]);
    assert_eq!(lake.checkpoint(&items()), Some(30));
    let staged = std::fs::read_dir(lake.warehouse.path().join("spill/lakewriter-delta-staged"))
        .map(|dir| {
            dir.flat_map(|d| std::fs::read_dir(d.expect("entry").path()).expect("dir"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(staged, 0, "staged files left behind");
}

/// The data files (not the log) under `dir`, recursively.
fn data_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            if !path.ends_with("_delta_log") {
                found.extend(data_files(&path));
            }
        } else if path.extension().is_some_and(|e| e == "parquet") {
            found.push(path);
        }
    }
    found
}

/// A staged part of a transaction whose commit only adds rows.
fn adding(schema: &Arc<TableSchema>, truncate: bool, rows: &[(i32, Option<&str>)]) -> TableDelta {
    TableDelta {
        adds_only: true,
        ..delta(schema, truncate, &[], rows, None)
    }
}

#[tokio::test]
async fn parts_that_only_add_rows_are_written_once_into_the_table_and_committed_together() {
    let lake = Lake::new("adding");
    let schema = items_schema(false);
    let mut sink = lake.sink();
    sink.prepare(&items(), &schema, &layout())
        .await
        .expect("prepare");
    sink.commit(delta(
        &schema,
        false,
        &[],
        &[(1, Some("a")), (2, Some("b"))],
        Some(10),
    ))
    .await
    .expect("first commit");
    let files_before = data_files(&lake.location(&items())).len();

    // an initial snapshot's parts: the commit truncates
    sink.stage(adding(&schema, true, &[(3, Some("c")), (4, Some("d"))]))
        .await
        .expect("stage");
    sink.stage(adding(&schema, true, &[(5, Some("e"))]))
        .await
        .expect("stage");
    assert_eq!(lake.rows(&items(), ALL), ["1|a", "2|b"]);
    sink.commit(delta(&schema, true, &[], &[(6, Some("f"))], Some(20)))
        .await
        .expect("commit the written files");
    assert_eq!(
        lake.rows(&items(), ALL),
        ["3|c", "4|d", "5|e", "6|f"],
        "the overwrite removes the rows committed before and adds the parts"
    );
    assert_eq!(lake.checkpoint(&items()), Some(20));
    // both parts and the commit's own rows went through one writer into one file, in the
    // table's location: nothing was staged locally
    assert_eq!(data_files(&lake.location(&items())).len(), files_before + 1);
    let local = files_under(&lake.warehouse.path().join("spill"));
    assert!(local.is_empty(), "staged locally: {local:?}");

    // an insert-only transaction: an append
    sink.stage(adding(&schema, false, &[(7, Some("g"))]))
        .await
        .expect("stage");
    sink.commit(delta(&schema, false, &[], &[], Some(30)))
        .await
        .expect("commit the appended files");
    assert_eq!(
        lake.rows(&items(), ALL),
        ["3|c", "4|d", "5|e", "6|f", "7|g"]
    );
    assert_eq!(lake.checkpoint(&items()), Some(30));

    // a discarded transaction never reaches the table
    sink.stage(adding(&schema, false, &[(8, Some("h"))]))
        .await
        .expect("stage");
    sink.discard_staged(&items());
    sink.commit(delta(&schema, false, &[], &[], Some(40)))
        .await
        .expect("commit nothing");
    assert_eq!(
        lake.rows(&items(), ALL),
        ["3|c", "4|d", "5|e", "6|f", "7|g"]
    );

    // a part carrying deletes of a transaction that does not truncate is refused, named
    let refused = sink
        .stage(TableDelta {
            adds_only: true,
            ..delta(&schema, false, &[(3, None)], &[(9, Some("i"))], None)
        })
        .await
        .expect_err("deletes in a part that only adds rows");
    assert!(refused.to_string().contains("items"), "{refused}");
    sink.discard_staged(&items());

    // a stop between the parts and their commit leaves the table as it was
    sink.stage(adding(&schema, true, &[(10, Some("j"))]))
        .await
        .expect("stage");
    drop(sink);
    let mut again = lake.sink();
    let checkpoint = again
        .prepare(&items(), &schema, &layout())
        .await
        .expect("prepare again");
    assert_eq!(checkpoint, Some(Lsn(40)));
    assert_eq!(
        lake.rows(&items(), ALL),
        ["3|c", "4|d", "5|e", "6|f", "7|g"]
    );
}

#[tokio::test]
async fn the_sqlite_catalog_records_delta_tables_and_query_finds_them_through_it() {
    let lake = Lake::new("recorded");
    let schema = items_schema(false);
    let mut sink = DeltaSink::from_config(&lake.config)
        .await
        .expect("a sink with the default (sqlite) catalog");
    sink.prepare(&items(), &schema, &layout())
        .await
        .expect("prepare");
    sink.commit(delta(&schema, false, &[], &[(1, Some("a"))], Some(10)))
        .await
        .expect("commit");
    // a table in the warehouse that no catalog records (written by a sink without one)
    let other = TableId::new("public", "other");
    let mut unrecorded = lake.sink();
    unrecorded
        .prepare(&other, &items_schema(false), &layout())
        .await
        .expect("prepare the unrecorded table");
    assert!(lake.location(&other).join("_delta_log").is_dir());

    let file = lake.config.sqlite_catalog_path();
    let connection = rusqlite::Connection::open(&file).expect("open the catalog file");
    let mut statement = connection
        .prepare(
            "SELECT catalog_name, table_namespace, table_name, location \
             FROM lakewriter_delta_tables ORDER BY table_name",
        )
        .expect("lakewriter_delta_tables exists");
    let recorded: Vec<(String, String, String, String)> = statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .expect("read the record")
        .collect::<Result<_, _>>()
        .expect("rows");
    let lake_name = lake_table(&lake.namespace, &items());
    assert_eq!(
        recorded,
        [(
            lake.config.sink.sqlite.name.clone(),
            lake.namespace.clone(),
            lake_name.name.clone(),
            lake.location(&items()).display().to_string(),
        )]
    );

    // `query` finds the recorded table through the catalog, not the unrecorded one beside it
    let (ctx, tables) = lakewriter::lake::session(&lake.config, None)
        .await
        .expect("a session over the recorded tables");
    assert_eq!(
        tables
            .iter()
            .map(|t| t.name.to_string())
            .collect::<Vec<_>>(),
        [lake_name.to_string()]
    );
    assert_eq!(tables[0].checkpoint, Some(Lsn(10)));
    let batches = ctx
        .sql(&format!("SELECT count(*) FROM {lake_name}"))
        .await
        .expect("plan")
        .collect()
        .await
        .expect("run");
    let count = arrow::compute::cast(batches[0].column(0), &DataType::Int64).expect("cast");
    let count = count
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .expect("a count");
    assert_eq!(count.value(0), 1);

    // pyiceberg still opens the file as its SQL catalog
    let script = "import sys\nfrom pyiceberg.catalog.sql import SqlCatalog\n\
                  c = SqlCatalog(sys.argv[2], uri=f'sqlite:///{sys.argv[1]}', warehouse='file:///tmp')\n\
                  print(len(c.list_namespaces()))\n";
    let output = support::stack()
        .python()
        .args(["-c", script])
        .arg(&file)
        .arg(&lake.config.sink.sqlite.name)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "pyiceberg refused the catalog file: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn a_commit_without_checkpoint_reads_back_as_none_and_columns_are_added() {
    let lake = Lake::new("incomplete");
    let schema = items_schema(false);
    let mut sink = lake.sink();
    sink.prepare(&items(), &schema, &layout())
        .await
        .expect("prepare");
    sink.commit(delta(&schema, false, &[], &[(1, Some("a"))], Some(10)))
        .await
        .expect("commit");
    sink.commit(delta(&schema, true, &[], &[(2, Some("b"))], None))
        .await
        .expect("a snapshot chunk");
    assert_eq!(lake.checkpoint(&items()), Some(-1));
    assert_eq!(
        lake.sink()
            .prepare(&items(), &schema, &layout())
            .await
            .expect("prepare"),
        None
    );
    sink.commit(delta(&schema, false, &[], &[(3, Some("c"))], Some(40)))
        .await
        .expect("the last chunk");
    assert_eq!(sink.known_checkpoint(&items()), Some(Lsn(40)));
    sink.mark_incomplete(&items())
        .await
        .expect("mark incomplete");
    assert_eq!(sink.known_checkpoint(&items()), None);
    assert_eq!(
        lake.sink()
            .prepare(&items(), &schema, &layout())
            .await
            .expect("prepare"),
        None
    );
    assert_eq!(lake.rows(&items(), ALL), ["2|b", "3|c"]);

    // a new column (a time, stored as text) is added; older rows read it as null
    let wider = items_schema(true);
    sink.commit(delta(
        &wider,
        false,
        &[(2, None)],
        &[(2, Some("b2")), (4, Some("d"))],
        Some(50),
    ))
    .await
    .expect("commit with a new column");
    assert_eq!(
        lake.rows(
            &items(),
            "SELECT id, name, coalesce(\"at\", 'NULL') FROM {scan} ORDER BY id"
        ),
        ["2|b2|00:00:02", "3|c|NULL", "4|d|00:00:04"]
    );
    let keys = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, true)])),
        vec![Arc::new(Int32Array::from(vec![4]))],
    )
    .expect("keys");
    let found = sink.lookup(&items(), &keys).await.expect("lookup");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0], batch(&wider, &[(4, Some("d"))]));
}

#[tokio::test]
async fn on_s3_a_merge_lands_and_query_compact_and_python_deltalake_work_on_it() {
    let endpoint = support::stack().aws_endpoint().to_string();
    let bucket = format!("delta-{}", std::process::id());
    let namespace = format!("delta_s3_{}", std::process::id());
    let text = format!(
        "[source]\ndatabase = \"unused\"\n\n[sink]\nformat = \"delta\"\nnamespace = \
         \"{namespace}\"\nwarehouse = \"s3://{bucket}/warehouse\"\n[sink.s3]\nregion = \
         \"us-east-1\"\nendpoint = \"{endpoint}\"\nforce_path_style = true\naccess_key_id = \
         \"testing\"\nsecret_access_key = \"testing\"\n[compaction]\norphan_age = \"0s\"\nenforce_orphan_age_floor = false\n"
    );
    let config =
        Config::parse(&text, Path::new("delta-s3-test.toml"), Vec::new()).expect("a valid config");
    let s3 = lakewriter::cloud::s3_client(&config).await;
    support::create_bucket(&s3, &bucket).await;
    let schema = items_schema(false);
    let mut sink = DeltaSink::from_config(&config)
        .await
        .expect("open the sink");
    sink.prepare(&items(), &schema, &layout())
        .await
        .expect("create on S3");
    sink.commit(delta(
        &schema,
        false,
        &[],
        &[(1, Some("a")), (2, Some("b"))],
        Some(10),
    ))
    .await
    .expect("insert");
    sink.commit(delta(
        &schema,
        false,
        &[(1, None), (2, None)],
        &[(2, Some("b2")), (3, Some("c"))],
        Some(20),
    ))
    .await
    .expect("merge");
    let uri = format!("s3://{bucket}/warehouse/{namespace}/items");
    let options = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_S3_ALLOW_UNSAFE_RENAME", "true"),
    ];
    assert_eq!(
        support::delta::python_delta_rows(&uri, &options, &["id", "name"]),
        ["2|b2", "3|c"]
    );
    assert_eq!(
        DeltaSink::from_config(&config)
            .await
            .expect("open the sink")
            .prepare(&items(), &schema, &layout())
            .await
            .expect("prepare"),
        Some(Lsn(20))
    );

    // `query` finds the table by listing the bucket, and reads its checkpoint
    let (ctx, tables) = lakewriter::lake::session(&config, None)
        .await
        .expect("a session over the S3 warehouse");
    assert_eq!(
        tables
            .iter()
            .map(|t| t.name.to_string())
            .collect::<Vec<_>>(),
        [format!("{namespace}.items")]
    );
    assert_eq!(tables[0].checkpoint, Some(Lsn(20)));
    let rows = |ctx: datafusion::prelude::SessionContext| {
        let sql = format!("SELECT id, name FROM {namespace}.items ORDER BY id");
        async move {
            let batches = ctx
                .sql(&sql)
                .await
                .expect("plan")
                .collect()
                .await
                .expect("run");
            arrow::util::pretty::pretty_format_batches(&batches)
                .expect("format")
                .to_string()
        }
    };
    let before = rows(ctx).await;
    assert!(before.contains("| 2  | b2   |"), "{before}");
    assert!(before.contains("| 3  | c    |"), "{before}");

    // `compact` on S3: after an append, the two files become one, and the replaced ones
    // (those of the MERGE too) are vacuumed
    sink.commit(delta(&schema, false, &[], &[(4, Some("d"))], Some(30)))
        .await
        .expect("append");
    let outcomes = lakewriter::maintenance::delta::run(&config, None)
        .await
        .expect("compact on S3");
    assert_eq!(outcomes.len(), 1);
    let outcome = &outcomes[0];
    assert_eq!(
        (outcome.data_files_in, outcome.data_files_out, outcome.rows),
        (2, 1, 3),
        "{outcome:?}"
    );
    assert!(outcome.cleanup.files >= 3, "{outcome:?}");
    let (ctx, tables) = lakewriter::lake::session(&config, None)
        .await
        .expect("a session after compact");
    assert_eq!(tables[0].data_files, 1);
    assert_eq!(tables[0].checkpoint, Some(Lsn(30)));
    let after = rows(ctx).await;
    assert!(after.contains("| 4  | d    |"), "{after}");
    assert_eq!(
        support::delta::python_delta_rows(&uri, &options, &["id", "name"]),
        ["2|b2", "3|c", "4|d"]
    );
}

#[tokio::test]
async fn a_type_change_stops_a_complete_table_and_replaces_an_incomplete_ones_schema() {
    let lake = Lake::new("retype");
    let schema = items_schema(false);
    let mut sink = lake.sink();
    sink.prepare(&items(), &schema, &layout())
        .await
        .expect("prepare");
    sink.commit(delta(&schema, false, &[], &[(1, Some("a"))], Some(10)))
        .await
        .expect("commit");

    // name becomes a bigint
    let mut retyped = (*schema).clone();
    let fields = vec![
        Field::new("id", DataType::Int32, true),
        Field::new("name", DataType::Int64, true),
    ];
    retyped.arrow = Arc::new(Schema::new(fields));
    retyped.arrow_nullable = retyped.arrow.clone();
    retyped.columns[1].type_oid = Oid(20);
    let error = lake
        .sink()
        .prepare(&items(), &retyped, &layout())
        .await
        .expect_err("a type change on a complete table");
    assert!(error.to_string().contains("column name"), "{error}");
    assert_eq!(lake.rows(&items(), ALL), ["1|a"]);

    // once incomplete, the table is emptied and takes the new type, still without checkpoint
    let mut stopped = lake.sink();
    assert!(
        stopped
            .prepare(&items(), &retyped, &layout())
            .await
            .is_err()
    );
    assert_eq!(stopped.known_checkpoint(&items()), Some(Lsn(10)));
    stopped
        .mark_incomplete(&items())
        .await
        .expect("mark incomplete");
    let mut copy = lake.sink();
    assert_eq!(
        copy.prepare(&items(), &retyped, &layout())
            .await
            .expect("replace"),
        None
    );
    assert_eq!(lake.rows(&items(), "SELECT count(*) FROM {scan}"), ["0"]);
    let row = RecordBatch::try_new(
        retyped.arrow.clone(),
        vec![
            Arc::new(Int32Array::from(vec![1])),
            Arc::new(arrow::array::Int64Array::from(vec![5_000_000_000])),
        ],
    )
    .expect("a row");
    let retyped = Arc::new(retyped);
    copy.commit(TableDelta {
        table: items(),
        schema: retyped.clone(),
        truncate: true,
        adds_only: false,
        deletes: Vec::new(),
        rows: vec![row],
        lsn: Some(Lsn(20)),
        copy: None,
    })
    .await
    .expect("the copy");
    assert_eq!(lake.rows(&items(), ALL), ["1|5000000000"]);
    assert_eq!(lake.checkpoint(&items()), Some(20));
}

#[tokio::test]
async fn every_stored_type_reads_back_in_duckdb_and_looks_up_as_the_source_sent_it() {
    use arrow::array::{
        ArrayRef, Decimal128Array, FixedSizeBinaryArray, ListBuilder, StringBuilder,
        TimestampMicrosecondArray,
    };
    let lake = Lake::new("types");
    let table = TableId::new("public", "kinds");
    let columns: Vec<(&str, DataType, u32, bool)> = vec![
        ("id", DataType::Int32, 23, true),
        (
            "tags",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            1009,
            false,
        ),
        ("ref", DataType::FixedSizeBinary(16), 2950, false),
        ("at", DataType::Time64(TimeUnit::Microsecond), 1083, false),
        (
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            1184,
            false,
        ),
        ("amount", DataType::Decimal128(10, 2), 1700, false),
    ];
    let arrow = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, t, _, _)| Field::new(*name, t.clone(), true))
            .collect::<Vec<_>>(),
    ));
    let schema = Arc::new(TableSchema {
        table: table.clone(),
        relation: RelationId(16385),
        replica_identity: ReplicaIdentity::Default,
        columns: columns
            .iter()
            .map(|(name, _, oid, key)| ColumnSchema {
                name: name.to_string(),
                type_oid: Oid(*oid),
                type_modifier: -1,
                key: *key,
            })
            .collect(),
        arrow: arrow.clone(),
        arrow_nullable: arrow.clone(),
    });
    let mut tags = ListBuilder::new(StringBuilder::new());
    tags.values().append_value("x");
    tags.values().append_null();
    tags.append(true);
    tags.append(true);
    tags.append(false);
    let uuid: Vec<u8> = (0u8..16).collect();
    let row: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from(vec![1, 2, 3])),
        Arc::new(tags.finish()),
        Arc::new(
            FixedSizeBinaryArray::try_from_sparse_iter_with_size(
                vec![Some(uuid.as_slice()), None, Some(uuid.as_slice())].into_iter(),
                16,
            )
            .expect("uuids"),
        ),
        Arc::new(Time64MicrosecondArray::from(vec![
            Some(0),
            Some(86_399_999_999),
            None,
        ])),
        Arc::new(
            TimestampMicrosecondArray::from(vec![Some(-62_135_596_800_000_000), Some(0), None])
                .with_timezone("+00:00"),
        ),
        Arc::new(
            Decimal128Array::from(vec![Some(-99_999_999), Some(12_345), None])
                .with_precision_and_scale(10, 2)
                .expect("decimals"),
        ),
    ];
    let rows = RecordBatch::try_new(arrow.clone(), row).expect("rows");
    let mut sink = lake.sink();
    sink.prepare(&table, &schema, &layout())
        .await
        .expect("prepare");
    sink.commit(TableDelta {
        table: table.clone(),
        schema: schema.clone(),
        truncate: true,
        adds_only: false,
        deletes: Vec::new(),
        rows: vec![rows.clone()],
        lsn: Some(Lsn(5)),
        copy: None,
    })
    .await
    .expect("commit");
    assert_eq!(
        lake.rows(
            &table,
            "SELECT id, tags::VARCHAR, ref, \"at\", epoch_us(ts), amount FROM {scan} ORDER BY id"
        ),
        [
            "1|[x, NULL]|00010203-0405-0607-0809-0a0b0c0d0e0f|00:00:00|-62135596800000000|-999999.99",
            "2|[]|NULL|23:59:59.999999|0|123.45",
            "3|NULL|00010203-0405-0607-0809-0a0b0c0d0e0f|NULL|NULL|NULL",
        ]
    );
    let keys = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, true)])),
        vec![Arc::new(Int32Array::from(vec![1, 2, 3]))],
    )
    .expect("keys");
    let found = sink.lookup(&table, &keys).await.expect("lookup");
    let found = arrow::compute::concat_batches(&arrow, &found).expect("one batch");
    let order = arrow::compute::sort_to_indices(found.column(0), None, None).expect("order");
    let found = arrow::compute::take_record_batch(&found, &order).expect("sorted");
    assert_eq!(found, rows);
}

#[tokio::test]
async fn a_second_writer_committing_the_same_position_is_refused() {
    let lake = Lake::new("race");
    let schema = items_schema(false);
    let mut first = lake.sink();
    let mut second = lake.sink();
    first
        .prepare(&items(), &schema, &layout())
        .await
        .expect("prepare");
    second
        .prepare(&items(), &schema, &layout())
        .await
        .expect("prepare");
    first
        .commit(delta(&schema, false, &[], &[(1, Some("a"))], Some(10)))
        .await
        .expect("the first writer commits");
    let error = second
        .commit(delta(&schema, false, &[], &[(1, Some("a"))], Some(10)))
        .await
        .expect_err("the second writer, with the same transaction");
    assert!(!error.is_retryable(), "{error}");
    assert!(error.to_string().contains("another writer"), "{error}");
    assert_eq!(lake.rows(&items(), ALL), ["1|a"]);
}

#[tokio::test]
async fn a_commit_that_lost_a_race_runs_again_on_the_table_as_it_is_now() {
    let lake = Lake::new("retry");
    let schema = items_schema(false);
    let mut stale = lake.sink();
    stale
        .prepare(&items(), &schema, &layout())
        .await
        .expect("prepare");
    stale
        .commit(delta(
            &schema,
            false,
            &[],
            &[(1, Some("a")), (2, Some("b"))],
            Some(10),
        ))
        .await
        .expect("first commit");
    // another commit lands behind the stale sink's back
    let mut other = lake.sink();
    other
        .prepare(&items(), &schema, &layout())
        .await
        .expect("prepare");
    other
        .commit(delta(
            &schema,
            false,
            &[(2, None)],
            &[(2, Some("b2")), (3, Some("c"))],
            Some(20),
        ))
        .await
        .expect("the other commit");
    // the stale sink's MERGE loses to it, reloads and runs again
    stale
        .commit(delta(
            &schema,
            false,
            &[(1, None)],
            &[(1, Some("a3"))],
            Some(30),
        ))
        .await
        .expect("the stale sink's commit, run again");
    assert_eq!(lake.rows(&items(), ALL), ["1|a3", "2|b2", "3|c"]);
    assert_eq!(lake.checkpoint(&items()), Some(30));
}

#[tokio::test]
async fn mixed_case_and_spaced_column_names_merge_by_their_exact_names() {
    let lake = Lake::new("names");
    let table = TableId::new("Sales", "Line Items");
    let fields = vec![
        Field::new("Id", DataType::Int32, true),
        Field::new("Display Name", DataType::Utf8, true),
    ];
    let arrow = Arc::new(Schema::new(fields));
    let schema = Arc::new(TableSchema {
        table: table.clone(),
        relation: RelationId(16386),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![
            ColumnSchema {
                name: "Id".into(),
                type_oid: Oid(23),
                type_modifier: -1,
                key: true,
            },
            ColumnSchema {
                name: "Display Name".into(),
                type_oid: Oid(25),
                type_modifier: -1,
                key: false,
            },
        ],
        arrow: arrow.clone(),
        arrow_nullable: arrow.clone(),
    });
    let rows = |pairs: &[(i32, Option<&str>)]| {
        RecordBatch::try_new(
            arrow.clone(),
            vec![
                Arc::new(Int32Array::from(
                    pairs.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    pairs.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
                )),
            ],
        )
        .expect("rows")
    };
    let layout = TableLayout {
        key: vec!["Id".into()],
        partition_by: Vec::new(),
    };
    let mut sink = lake.sink();
    sink.prepare(&table, &schema, &layout)
        .await
        .expect("prepare");
    for (deletes, written, lsn) in [
        (vec![], vec![(1, Some("a")), (2, Some("b"))], 10),
        (vec![(1, None), (2, None)], vec![(1, Some("a2"))], 20),
    ] {
        sink.commit(TableDelta {
            table: table.clone(),
            schema: schema.clone(),
            truncate: false,
            adds_only: false,
            deletes: vec![rows(&deletes)],
            rows: vec![rows(&written)],
            lsn: Some(Lsn(lsn)),
            copy: None,
        })
        .await
        .expect("commit");
    }
    assert_eq!(
        lake.rows(
            &table,
            "SELECT \"Id\", \"Display Name\" FROM {scan} ORDER BY \"Id\""
        ),
        ["1|a2"]
    );
}

#[tokio::test]
async fn truncate_empties_every_partition_of_a_partitioned_table() {
    let lake = Lake::new("partitions");
    let schema = items_schema(false);
    let layout = TableLayout {
        key: vec!["id".into()],
        partition_by: vec!["name".into()],
    };
    let mut sink = lake.sink();
    sink.prepare(&items(), &schema, &layout)
        .await
        .expect("prepare");
    sink.commit(delta(
        &schema,
        false,
        &[],
        &[(1, Some("a")), (2, Some("b"))],
        Some(10),
    ))
    .await
    .expect("commit");
    // a row moving to another partition: its old row goes, wherever it is
    sink.commit(delta(
        &schema,
        false,
        &[(1, Some("a"))],
        &[(1, Some("b"))],
        Some(20),
    ))
    .await
    .expect("merge across partitions");
    assert_eq!(lake.rows(&items(), ALL), ["1|b", "2|b"]);
    sink.commit(delta(&schema, true, &[], &[(3, Some("a"))], Some(30)))
        .await
        .expect("truncate");
    assert_eq!(lake.rows(&items(), ALL), ["3|a"]);
    assert!(
        lake.location(&items()).join("name=a").is_dir(),
        "not partitioned"
    );
    let error = lake
        .sink()
        .prepare(
            &TableId::new("public", "other"),
            &items_schema(false),
            &TableLayout {
                key: vec!["id".into()],
                partition_by: vec!["day(at)".into()],
            },
        )
        .await
        .expect_err("a transform");
    assert!(error.to_string().contains("day(at)"), "{error}");
}

/// The Glue table of `table`'s Delta table: its parameters, location and `name:type` columns.
async fn glue_registration(
    glue: &aws_sdk_glue::Client,
    namespace: &str,
    table: &str,
) -> (
    std::collections::HashMap<String, String>,
    Option<String>,
    Vec<String>,
) {
    let got = glue
        .get_table()
        .database_name(namespace)
        .name(table)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get glue table {namespace}.{table}: {e:?}"))
        .table
        .expect("a glue table");
    let storage = got
        .storage_descriptor
        .clone()
        .expect("a storage descriptor");
    let columns = storage
        .columns()
        .iter()
        .map(|c| format!("{}:{}", c.name(), c.r#type().unwrap_or("?")))
        .collect();
    (
        got.parameters.clone().unwrap_or_default(),
        storage.location.clone(),
        columns,
    )
}

#[tokio::test]
async fn with_the_glue_catalog_delta_tables_are_registered_for_athena_and_gain_columns() {
    let endpoint = support::stack().aws_endpoint().to_string();
    let bucket = format!("delta-glue-{}", std::process::id());
    let namespace = format!("delta_glue_{}", std::process::id());
    let text = format!(
        "[source]\ndatabase = \"unused\"\n\n[sink]\nformat = \"delta\"\ncatalog = \"glue\"\n\
         namespace = \"{namespace}\"\nwarehouse = \"s3://{bucket}/warehouse\"\n[sink.s3]\n\
         region = \"us-east-1\"\nendpoint = \"{endpoint}\"\nforce_path_style = true\n\
         access_key_id = \"testing\"\nsecret_access_key = \"testing\"\n[sink.glue]\nregion = \
         \"us-east-1\"\nendpoint = \"{endpoint}\"\n"
    );
    let config = Config::parse(&text, Path::new("delta-glue-test.toml"), Vec::new())
        .expect("a valid config");
    let s3 = lakewriter::cloud::s3_client(&config).await;
    support::create_bucket(&s3, &bucket).await;
    let glue = lakewriter::cloud::glue_client(&config).await;

    // prepare creates the database and the table, as Athena's native Delta reader wants it
    let schema = items_schema(false);
    let mut sink = DeltaSink::from_config(&config)
        .await
        .expect("open the sink");
    sink.prepare(&items(), &schema, &layout())
        .await
        .expect("create and register");
    sink.commit(delta(&schema, false, &[], &[(1, Some("a"))], Some(10)))
        .await
        .expect("insert");
    let (parameters, location, columns) = glue_registration(&glue, &namespace, "items").await;
    assert_eq!(
        parameters.get("table_type").map(String::as_str),
        Some("DELTA")
    );
    assert_eq!(
        parameters
            .get("spark.sql.sources.provider")
            .map(String::as_str),
        Some("delta")
    );
    assert_eq!(
        location.as_deref(),
        Some(format!("s3://{bucket}/warehouse/{namespace}/items").as_str())
    );
    assert_eq!(columns, ["id:int", "name:string"]);

    // someone else's parameter survives a column added at the source
    let current = glue
        .get_table()
        .database_name(&namespace)
        .name("items")
        .send()
        .await
        .expect("get the glue table")
        .table
        .expect("a glue table");
    let input = aws_sdk_glue::types::TableInput::builder()
        .name("items")
        .set_table_type(current.table_type.clone())
        .set_storage_descriptor(current.storage_descriptor.clone())
        .set_parameters(current.parameters.clone())
        .parameters("owner_team", "analytics")
        .build()
        .expect("a table input");
    glue.update_table()
        .database_name(&namespace)
        .table_input(input)
        .send()
        .await
        .expect("tag the glue table");
    let wider = items_schema(true);
    sink.commit(delta(&wider, false, &[], &[(2, Some("b"))], Some(20)))
        .await
        .expect("commit with a new column");
    let (parameters, _, columns) = glue_registration(&glue, &namespace, "items").await;
    assert_eq!(columns, ["id:int", "name:string", "at:string"]);
    assert_eq!(
        parameters.get("owner_team").map(String::as_str),
        Some("analytics")
    );
    assert_eq!(
        parameters.get("table_type").map(String::as_str),
        Some("DELTA")
    );

    // a name Glue holds for an Iceberg table is refused, naming the table, before any write
    let taken = TableId::new("public", "taken");
    let input = aws_sdk_glue::types::TableInput::builder()
        .name("taken")
        .table_type("EXTERNAL_TABLE")
        .parameters("table_type", "ICEBERG")
        .build()
        .expect("a table input");
    glue.create_table()
        .database_name(&namespace)
        .table_input(input)
        .send()
        .await
        .expect("create an iceberg glue table");
    let mut taken_schema = (*items_schema(false)).clone();
    taken_schema.table = taken.clone();
    let error = sink
        .prepare(&taken, &Arc::new(taken_schema), &layout())
        .await
        .expect_err("an iceberg table's name is not registered over");
    let message = error.to_string();
    assert!(
        message.contains(&format!("{namespace}.taken")) && message.contains("ICEBERG"),
        "{message}"
    );
}

#[tokio::test]
async fn status_reports_each_delta_tables_checkpoint_files_rows_and_last_commit() {
    let lake = Lake::new("status");
    let schema = items_schema(false);
    let mut sink = lake.sink();
    sink.prepare(&items(), &schema, &layout())
        .await
        .expect("prepare");
    sink.commit(delta(
        &schema,
        false,
        &[],
        &[(1, Some("a")), (2, Some("b"))],
        Some(0x16_0000_0010),
    ))
    .await
    .expect("insert");
    sink.commit(delta(
        &schema,
        false,
        &[],
        &[(3, Some("c"))],
        Some(0x16_0000_0020),
    ))
    .await
    .expect("append");
    let config = lake.warehouse.path().join("status.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\ndatabase = \"lakewriter_status_absent\"\n\n[sink]\nformat = \"delta\"\n\
             namespace = \"{}\"\nwarehouse = \"{}\"\n",
            lake.namespace,
            lake.warehouse.path().display()
        ),
    )
    .expect("write the config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_lakewriter"))
        .args(["status", "--config"])
        .arg(&config)
        .env_remove("LAKEWRITER_CONFIG")
        .output()
        .expect("run lakewriter status");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{}.items ", lake.namespace)))
        .unwrap_or_else(|| panic!("no line for the table:\n{stdout}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    // table, checkpoint, lag bytes, lag s, version, data files, rows, last commit
    assert_eq!(cells.len(), 8, "{row}");
    assert_eq!(cells[1], "16/20", "{row}");
    assert_eq!((cells[4], cells[5], cells[6]), ("2", "2", "3"), "{row}");
    assert!(
        cells[7].starts_with("20") && cells[7].ends_with('Z'),
        "{row}"
    );
}

/// The local file system, except that once armed it lands the next Delta log entry and then
/// answers with an error — what a timeout after a successful PUT looks like to the writer.
#[derive(Debug)]
struct LosesAnAnswer {
    inner: object_store::local::LocalFileSystem,
    armed: std::sync::atomic::AtomicBool,
}

impl LosesAnAnswer {
    /// An error instead of `done`'s answer, when armed and `to` is a log entry.
    fn answer<T>(
        &self,
        to: &object_store::path::Path,
        done: object_store::Result<T>,
    ) -> object_store::Result<T> {
        let entry = to.as_ref().contains("_delta_log/") && to.as_ref().ends_with(".json");
        if done.is_ok() && entry && self.armed.swap(false, Ordering::SeqCst) {
            return Err(object_store::Error::Generic {
                store: "LosesAnAnswer",
                source: "the connection timed out after the request was sent".into(),
            });
        }
        done
    }
}

impl std::fmt::Display for LosesAnAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LosesAnAnswer({})", self.inner)
    }
}

#[async_trait::async_trait]
impl object_store::ObjectStore for LosesAnAnswer {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        let done = self.inner.put_opts(location, payload, opts).await;
        self.answer(location, done)
    }

    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<
            'static,
            object_store::Result<object_store::path::Path>,
        >,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        let done = self.inner.copy_opts(from, to, options).await;
        self.answer(to, done)
    }

    async fn rename_opts(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
        options: object_store::RenameOptions,
    ) -> object_store::Result<()> {
        let done = self.inner.rename_opts(from, to, options).await;
        self.answer(to, done)
    }
}

#[tokio::test]
async fn a_commit_whose_answer_was_lost_but_landed_is_a_success_not_a_table_error() {
    let lake = Lake::new("lost_answer");
    let schema = items_schema(false);
    let store = Arc::new(LosesAnAnswer {
        inner: object_store::local::LocalFileSystem::new(),
        armed: std::sync::atomic::AtomicBool::new(false),
    });
    let mut settings = DeltaSettings::from_config(&lake.config).expect("the sink's settings");
    settings.storage = Some(store.clone());
    let mut sink = DeltaSink::new(settings);
    sink.prepare(&items(), &schema, &layout())
        .await
        .expect("prepare");
    sink.commit(delta(
        &schema,
        true,
        &[],
        &[(1, Some("a")), (2, Some("b"))],
        Some(100),
    ))
    .await
    .expect("first commit");
    let commits = support::delta::commit_count(&lake.location(&items()));

    // the MERGE's log entry lands, and its answer is lost
    store.armed.store(true, Ordering::SeqCst);
    sink.commit(delta(
        &schema,
        false,
        &[(1, None)],
        &[(1, Some("a2")), (3, Some("c"))],
        Some(200),
    ))
    .await
    .expect("a commit that landed is a success, answer or not");
    assert!(
        !store.armed.load(Ordering::SeqCst),
        "the answer was never lost"
    );
    assert_eq!(
        support::delta::commit_count(&lake.location(&items())),
        commits + 1,
        "the commit landed once"
    );
    assert_eq!(lake.rows(&items(), ALL), ["1|a2", "2|b", "3|c"]);
    assert_eq!(lake.checkpoint(&items()), Some(200));

    // and the next commit goes on from it
    sink.commit(delta(&schema, false, &[(2, None)], &[], Some(300)))
        .await
        .expect("the next commit");
    assert_eq!(lake.rows(&items(), ALL), ["1|a2", "3|c"]);
    assert_eq!(lake.checkpoint(&items()), Some(300));
}

#[tokio::test]
async fn the_delta_log_is_checkpointed_every_hundred_commits_and_reads_the_same() {
    let lake = Lake::new("log_checkpoint");
    let schema = items_schema(false);
    let mut sink = lake.sink();
    sink.prepare(&items(), &schema, &layout())
        .await
        .expect("prepare");
    let mut expected = Vec::new();
    for i in 1..=120i32 {
        sink.commit(delta(
            &schema,
            false,
            &[],
            &[(i, Some("v"))],
            Some(i as u64),
        ))
        .await
        .expect("commit");
        expected.push(format!("{i}|v"));
    }
    let log = lake.location(&items()).join("_delta_log");
    let checkpoints: Vec<String> = std::fs::read_dir(&log)
        .expect("list the log")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".checkpoint."))
        .collect();
    // deltalake checkpoints the log after every hundredth version (`delta.checkpointInterval`)
    assert_eq!(
        checkpoints,
        vec!["00000000000000000099.checkpoint.parquet".to_string()],
        "one checkpoint, after the hundredth version"
    );
    assert!(log.join("_last_checkpoint").exists(), "no _last_checkpoint");
    // a reader and a new writer start from the checkpoint and see every row
    assert_eq!(lake.rows(&items(), ALL), expected);
    assert_eq!(
        lake.sink()
            .prepare(&items(), &schema, &layout())
            .await
            .expect("prepare again"),
        Some(Lsn(120))
    );
}

#[tokio::test]
async fn log_entries_past_the_retention_go_at_the_checkpoints_and_the_table_reads_the_same() {
    let lake = Lake::new("log_cleanup");
    let schema = items_schema(false);
    let mut settings = DeltaSettings::from_config(&lake.config).expect("the sink's settings");
    // `[compaction] snapshot_retention` (6 h by default), shortened to see it act
    // (an hour: the log entries are aged by hand below, so no commit ever finds them past
    // the retention because the machine was slow)
    settings.log_retention = std::time::Duration::from_secs(3600);
    let mut sink = DeltaSink::new(settings);
    sink.prepare(&items(), &schema, &layout())
        .await
        .expect("prepare");
    let log = lake.location(&items()).join("_delta_log");
    // the table's own property says how long its log is kept, for every engine's cleanup
    let created = std::fs::read_to_string(log.join("00000000000000000000.json"))
        .expect("read the first log entry");
    let retention = created
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|a| {
            a.pointer("/metaData/configuration/delta.logRetentionDuration")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        });
    assert_eq!(retention.as_deref(), Some("interval 3600 seconds"));
    let entries = || -> Vec<u64> {
        let mut versions: Vec<u64> = std::fs::read_dir(&log)
            .expect("list the log")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter_map(|name| name.strip_suffix(".json")?.parse::<u64>().ok())
            .collect();
        versions.sort_unstable();
        versions
    };
    let mut expected = Vec::new();
    let commit = async |sink: &mut DeltaSink, i: i32| {
        sink.commit(delta(
            &schema,
            false,
            &[],
            &[(i, Some("v"))],
            Some(i as u64),
        ))
        .await
        .expect("commit");
    };
    for i in 1..=150i32 {
        commit(&mut sink, i).await;
        expected.push(format!("{i}|v"));
    }
    // past the retention, the entries before the checkpoint at version 99 may go — but only
    // when the next checkpoint is written: the commits between do not touch the log
    let aged = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 3600);
    for entry in std::fs::read_dir(&log).expect("list the log").flatten() {
        std::fs::File::options()
            .write(true)
            .open(entry.path())
            .and_then(|f| f.set_modified(aged))
            .expect("age a log entry");
    }
    for i in 151..=198i32 {
        commit(&mut sink, i).await;
        expected.push(format!("{i}|v"));
    }
    assert_eq!(
        entries().first().copied(),
        Some(0),
        "entries stay until a commit writes a checkpoint"
    );
    for i in 199..=200i32 {
        commit(&mut sink, i).await;
        expected.push(format!("{i}|v"));
    }
    let left = entries();
    assert_eq!(
        left.first().copied(),
        Some(99),
        "the entries before the checkpoint at 99 are gone, the ones after it stay"
    );
    assert_eq!(left.len(), 200 - 99 + 1, "{left:?}");
    assert_eq!(lake.rows(&items(), ALL), expected);
    assert_eq!(
        lake.sink()
            .prepare(&items(), &schema, &layout())
            .await
            .expect("prepare again"),
        Some(Lsn(200))
    );
}
