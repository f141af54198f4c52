//! The Iceberg REST catalog against Apache Iceberg's own Java reference (`CatalogHandlers`
//! over a `JdbcCatalog`, `scripts/iceberg_java`), so every update lakewriter sends is applied
//! and every requirement checked by the reference implementation: commits read back by DuckDB,
//! expiry, a forced conflict, commits whose answer is lost in each way, the kill -9
//! end-to-end run, and bearer and OAuth2 authentication.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::{Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use iceberg::spec::TableMetadata;
use lakewriter::catalog::{Catalog, CatalogError, CatalogTable, LakeCatalog, Pointer};
use lakewriter::sink::Sink;
use lakewriter::sink::iceberg::{IcebergSettings, IcebergSink, file_io};
use lakewriter::table::TableId;
use lakewriter::{Config, Lsn};
use support::items::{delta, items, items_schema, keyed, table_schema};
use support::orders::{LAKE_DUPLICATES, LAKE_LINES, postgres_lines};
use support::rest_server::{CommitFault, RestServer, RestServerOptions};
use support::writer::{caught_up, crash_and_restart_env, start_with_env, stop, write_config};
use support::{TestDb, project_dir, stack};

/// The `[sink]` lines (after `namespace`) that point lakewriter at `server`.
fn sink_toml(server: &RestServer, auth: &str) -> String {
    format!(
        "catalog = \"rest\"\n[sink.rest]\nuri = \"{}\"\n{auth}",
        server.uri()
    )
}

/// A config with its tables in `namespace` of `server`, their files under `warehouse`.
fn config(namespace: &str, warehouse: &Path, server: &RestServer) -> Config {
    let mut config = Config::parse(
        &format!(
            "[source]\ndatabase = \"unused\"\n[sink]\nnamespace = \"{namespace}\"\n\
             warehouse = \"{}\"\n{}",
            warehouse.display(),
            sink_toml(server, "")
        ),
        Path::new("rest-test.toml"),
        Vec::new(),
    )
    .expect("a valid config");
    config.sink.key_index.dir = warehouse.join("key-index");
    config
}

/// `query` in DuckDB, `{metadata}` standing for the metadata file `location`; rows as lines.
fn duck(location: &str, query: &str) -> Vec<String> {
    let script = format!(
        r#"
import duck
con = duck.connect()
for values in con.sql({query:?}.replace("{{metadata}}", {location:?})).fetchall():
    print("|".join("NULL" if v is None else str(v) for v in values))
"#
    );
    stack().python_lines(&format!("DuckDB over {location}"), &script, &[])
}

/// The table's pointer and metadata as the server has them now.
async fn current(config: &Config, lake: &CatalogTable) -> (Pointer, TableMetadata) {
    let catalog = LakeCatalog::from_config(config).await.expect("the catalog");
    let pointer = catalog
        .load(lake)
        .await
        .expect("load")
        .expect("the table exists");
    let metadata = TableMetadata::read_from(
        &file_io(config).expect("file io"),
        &pointer.metadata_location,
    )
    .await
    .expect("the server's metadata file reads");
    (pointer, metadata)
}

/// Every `*.metadata.json` of the table's metadata directory is the current one or in its
/// log: lakewriter left none of its staged files behind.
fn no_staged_files_left(pointer: &Pointer, metadata: &TableMetadata) {
    let strip = |p: &str| {
        p.trim_start_matches("file://")
            .trim_start_matches("file:")
            .to_string()
    };
    let current = strip(&pointer.metadata_location);
    let dir = Path::new(&current)
        .parent()
        .expect("a metadata directory")
        .to_path_buf();
    let mut known: Vec<String> = metadata
        .metadata_log()
        .iter()
        .map(|m| strip(&m.metadata_file))
        .collect();
    known.push(current);
    for entry in std::fs::read_dir(&dir).expect("the metadata directory") {
        let path = entry.expect("an entry").path();
        let name = path.display().to_string();
        if name.ends_with(".metadata.json") {
            assert!(
                known.contains(&name),
                "{name} is neither current nor logged"
            );
        }
    }
}

fn commits_applied(server: &RestServer) -> u64 {
    server.stats()["commits_applied"]
        .as_u64()
        .expect("a commit count")
}

#[tokio::test]
async fn commits_are_applied_by_the_reference_server_and_duckdb_reads_them() {
    let server = RestServer::start();
    let warehouse = tempfile::tempdir().expect("a warehouse");
    let config = config("lake", warehouse.path(), &server);
    let schema = items_schema();
    let table = schema.table.clone();
    let lake = CatalogTable::new("lake", "items");
    let mut sink = IcebergSink::from_config(&config).await.expect("the sink");
    sink.prepare(&table, &schema, &keyed(&["id"], &[]))
        .await
        .expect("register the table");
    let (_, registered) = current(&config, &lake).await;
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
        vec![items(&schema, &[(1, None), (2, None)])],
        vec![items(&schema, &[(3, Some("c")), (2, Some("b2"))])],
        20,
    ))
    .await
    .expect("delete, update and insert");
    assert_eq!(commits_applied(&server), 2);

    // the server wrote the metadata: the table is the writer's (same uuid and field ids),
    // with both snapshots and their checkpoints
    let (pointer, metadata) = current(&config, &lake).await;
    assert_eq!(metadata.uuid(), registered.uuid());
    assert_eq!(metadata.current_schema(), registered.current_schema());
    assert_eq!(metadata.snapshots().len(), 2);
    assert_eq!(
        lakewriter::sink::iceberg::checkpoint(&lake, &metadata).expect("a checkpoint"),
        Some(Lsn(20))
    );
    assert_eq!(
        duck(
            &pointer.metadata_location,
            "SELECT id, name FROM iceberg_scan('{metadata}') ORDER BY 1"
        ),
        ["2|b2", "3|c"]
    );
    no_staged_files_left(&pointer, &metadata);

    // expiry: remove-snapshots, applied by the server
    let (_, known) = sink.table_metadata(&table).expect("known");
    let known = known.clone();
    let (_, after, expired) = sink
        .expire_snapshots(&lake, &pointer, &known, i64::MAX, 1)
        .await
        .expect("expire");
    assert_eq!(expired, 1);
    let (pointer, metadata) = current(&config, &lake).await;
    assert_eq!(metadata.snapshots().len(), 1);
    assert_eq!(after.current_snapshot_id(), metadata.current_snapshot_id());
    assert_eq!(
        duck(
            &pointer.metadata_location,
            "SELECT id, name FROM iceberg_scan('{metadata}') ORDER BY 1"
        ),
        ["2|b2", "3|c"]
    );

    // listed in its namespace, and a fresh writer reads the checkpoint back
    let catalog = LakeCatalog::from_config(&config)
        .await
        .expect("the catalog");
    assert_eq!(
        catalog.list("lake").await.expect("list"),
        vec![lake.clone()]
    );
    assert_eq!(
        IcebergSink::from_config(&config)
            .await
            .expect("a second sink")
            .prepare(&table, &schema, &keyed(&["id"], &[]))
            .await
            .expect("prepare"),
        Some(Lsn(20))
    );
    assert!(catalog.drop_table(&lake).await.expect("drop"));
    assert!(catalog.load(&lake).await.expect("load").is_none());
    assert!(!catalog.drop_table(&lake).await.expect("drop again"));
}

/// `delete_mode = "deletion_vector"` on a format-2 table of a REST catalog: the upgrade to
/// format 3 is applied by the reference server, and so is each commit of deletion vectors with
/// its row lineage; DuckDB reads the rows they leave.
#[tokio::test]
async fn an_upgrade_to_format_3_and_deletion_vectors_are_applied_by_the_reference_server() {
    let server = RestServer::start();
    let warehouse = tempfile::tempdir().expect("a warehouse");
    let config = config("lake", warehouse.path(), &server);
    let schema = items_schema();
    let table = schema.table.clone();
    let lake = CatalogTable::new("lake", "items");
    let mut sink = IcebergSink::from_config(&config).await.expect("the sink");
    sink.prepare(&table, &schema, &keyed(&["id"], &[]))
        .await
        .expect("register the table");
    sink.commit(delta(
        &schema,
        vec![],
        vec![items(
            &schema,
            &[(1, Some("a")), (2, Some("b")), (3, Some("c"))],
        )],
        10,
    ))
    .await
    .expect("insert");
    drop(sink);
    assert_eq!(
        current(&config, &lake).await.1.format_version(),
        iceberg::spec::FormatVersion::V2
    );

    let mut vectors = config.clone();
    vectors.sink.delete_mode = Some(lakewriter::config::DeleteMode::DeletionVector);
    let mut sink = IcebergSink::from_config(&vectors).await.expect("the sink");
    sink.prepare(&table, &schema, &keyed(&["id"], &[]))
        .await
        .expect("prepare, upgrading the table");
    for (n, lsn) in [(Some("b2"), 20), (Some("b3"), 30)] {
        sink.commit(delta(
            &schema,
            vec![items(&schema, &[(2, None), (3, None)])],
            vec![items(&schema, &[(2, n)])],
            lsn,
        ))
        .await
        .expect("update and delete");
    }
    let (pointer, metadata) = current(&config, &lake).await;
    assert_eq!(metadata.format_version(), iceberg::spec::FormatVersion::V3);
    assert_eq!(metadata.snapshots().len(), 3);
    assert!(
        metadata.next_row_id() >= 5,
        "row lineage: {}",
        metadata.next_row_id()
    );
    assert_eq!(
        duck(
            &pointer.metadata_location,
            "SELECT id, name FROM iceberg_scan('{metadata}') ORDER BY 1"
        ),
        ["1|a", "2|b3"]
    );
    assert_eq!(
        duck(
            &pointer.metadata_location,
            "SELECT DISTINCT file_format FROM iceberg_metadata('{metadata}') \
             WHERE manifest_content = 'DELETE' AND status <> 'DELETED'"
        ),
        ["PUFFIN"]
    );
}

#[tokio::test]
async fn schema_changes_and_truncates_are_applied_by_the_reference_server() {
    let server = RestServer::start();
    let warehouse = tempfile::tempdir().expect("a warehouse");
    let config = config("lake", warehouse.path(), &server);
    let table = TableId::new("public", "counters");
    let lake = CatalogTable::new("lake", "counters");
    let layout = keyed(&["id"], &[]);
    let v1 = table_schema(
        &table,
        &[
            ("id", DataType::Int32, 23, true),
            ("hits", DataType::Int32, 23, false),
        ],
        &[],
    );
    let mut sink = IcebergSink::from_config(&config).await.expect("the sink");
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

    // ALTER TABLE … ALTER hits TYPE bigint, ADD note text: add-schema, set-current-schema
    let v2 = table_schema(
        &table,
        &[
            ("id", DataType::Int32, 23, true),
            ("hits", DataType::Int64, 20, false),
            ("note", DataType::Utf8, 25, false),
        ],
        &[],
    );
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
    let (pointer, metadata) = current(&config, &lake).await;
    let names: Vec<String> = metadata
        .current_schema()
        .as_struct()
        .fields()
        .iter()
        .map(|f| f.name.clone())
        .collect();
    assert_eq!(names, ["id", "hits", "note"]);
    assert_eq!(metadata.schemas_iter().len(), 2);
    assert_eq!(
        duck(
            &pointer.metadata_location,
            "SELECT id, hits, note FROM iceberg_scan('{metadata}') ORDER BY 1"
        ),
        ["1|5|NULL", "2|NULL|NULL", "3|5000000000|big"]
    );

    // a truncate, then a row
    let batch = RecordBatch::try_new(
        v2.arrow_nullable.clone(),
        vec![
            Arc::new(Int32Array::from(vec![9])),
            Arc::new(Int64Array::from(vec![1])),
            Arc::new(StringArray::from(vec!["after"])),
        ],
    )
    .expect("rows");
    let mut truncate = delta(&v2, vec![], vec![batch], 30);
    truncate.truncate = true;
    sink.commit(truncate).await.expect("truncate");
    let (pointer, metadata) = current(&config, &lake).await;
    assert_eq!(
        duck(
            &pointer.metadata_location,
            "SELECT id, hits, note FROM iceberg_scan('{metadata}') ORDER BY 1"
        ),
        ["9|1|after"]
    );
    assert_eq!(
        lakewriter::sink::iceberg::checkpoint(&lake, &metadata).expect("a checkpoint"),
        Some(Lsn(30))
    );
    assert_eq!(
        commits_applied(&server),
        4,
        "rows, the schema change, rows, the truncate"
    );
    no_staged_files_left(&pointer, &metadata);
}

#[tokio::test]
async fn the_prefix_the_server_announces_is_where_tables_are() {
    let server = RestServer::start_with(RestServerOptions {
        prefix: Some("warehouse-1".into()),
        ..RestServerOptions::default()
    });
    let warehouse = tempfile::tempdir().expect("a warehouse");
    let config = config("lake", warehouse.path(), &server);
    let schema = items_schema();
    let mut sink = IcebergSink::from_config(&config).await.expect("the sink");
    sink.prepare(&schema.table, &schema, &keyed(&["id"], &[]))
        .await
        .expect("create");
    sink.commit(delta(
        &schema,
        vec![],
        vec![items(&schema, &[(1, Some("a"))])],
        10,
    ))
    .await
    .expect("commit");
    // the server serves its routes under /v1/warehouse-1/ only: the commit found them
    assert_eq!(server.commits_of("lake.items"), 1);
    let (pointer, _) = current(&config, &CatalogTable::new("lake", "items")).await;
    assert_eq!(
        duck(
            &pointer.metadata_location,
            "SELECT id, name FROM iceberg_scan('{metadata}')"
        ),
        ["1|a"]
    );
}

/// A catalog whose next commit is preceded by another writer's commit, between the load the
/// commit was staged on and the commit itself.
struct Interloper {
    inner: LakeCatalog,
    other: tokio::sync::Mutex<IcebergSink<LakeCatalog>>,
    armed: AtomicBool,
}

impl Catalog for Interloper {
    fn describe(&self) -> &str {
        self.inner.describe()
    }

    fn writes_metadata(&self) -> bool {
        self.inner.writes_metadata()
    }

    fn known_metadata(&self, table: &CatalogTable, pointer: &Pointer) -> Option<TableMetadata> {
        self.inner.known_metadata(table, pointer)
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
        if self.armed.swap(false, Ordering::SeqCst) {
            let schema = items_schema();
            self.other
                .lock()
                .await
                .commit(delta(
                    &schema,
                    vec![],
                    vec![items(&schema, &[(100, Some("other"))])],
                    15,
                ))
                .await
                .expect("the other writer commits");
        }
        self.inner
            .commit(table, expected, new_metadata_location, metadata)
            .await
    }

    async fn list(&self, namespace: &str) -> Result<Vec<CatalogTable>, CatalogError> {
        self.inner.list(namespace).await
    }

    async fn drop_table(&self, table: &CatalogTable) -> Result<bool, CatalogError> {
        self.inner.drop_table(table).await
    }
}

#[tokio::test]
async fn a_commit_another_writer_got_ahead_of_is_refused_then_rebased_and_retried() {
    let server = RestServer::start();
    let warehouse = tempfile::tempdir().expect("a warehouse");
    let config = config("lake", warehouse.path(), &server);
    let schema = items_schema();
    let table = schema.table.clone();
    let lake = CatalogTable::new("lake", "items");
    let layout = keyed(&["id"], &[]);
    let mut first = IcebergSink::from_config(&config).await.expect("a sink");
    first
        .prepare(&table, &schema, &layout)
        .await
        .expect("create");

    // the catalog itself refuses a commit staged on a table that moved (409)
    let catalog = LakeCatalog::from_config(&config)
        .await
        .expect("the catalog");
    let before = catalog.load(&lake).await.expect("load").expect("the table");
    first
        .commit(delta(
            &schema,
            vec![],
            vec![items(&schema, &[(1, Some("a"))])],
            10,
        ))
        .await
        .expect("the first writer commits");
    let (_, staged_on_newer) = first.table_metadata(&table).expect("known");
    let stale = catalog
        .commit(&lake, &before, &before.metadata_location, staged_on_newer)
        .await
        .expect_err("a commit on a table that moved");
    assert!(
        matches!(stale, CatalogError::Conflict { .. }),
        "not a conflict: {stale}"
    );
    assert_eq!(commits_applied(&server), 1);

    // a writer whose commit another one gets ahead of, between its load and its commit:
    // refused, reloaded, rebased and retried, and both commits are in the table
    let mut other = IcebergSink::from_config(&config)
        .await
        .expect("the other writer")
        .with_private_commit_gates();
    other
        .prepare(&table, &schema, &layout)
        .await
        .expect("prepare");
    let interloper = Interloper {
        inner: LakeCatalog::from_config(&config)
            .await
            .expect("the catalog"),
        other: tokio::sync::Mutex::new(other),
        armed: AtomicBool::new(true),
    };
    let settings = IcebergSettings::from_config(&config).expect("settings");
    let mut second = IcebergSink::new(interloper, file_io(&config).expect("file io"), settings);
    second
        .prepare(&table, &schema, &layout)
        .await
        .expect("prepare");
    second
        .commit(delta(
            &schema,
            vec![],
            vec![items(&schema, &[(2, Some("b"))])],
            20,
        ))
        .await
        .expect("the second writer commits after a rebase");
    assert_eq!(
        commits_applied(&server),
        3,
        "the first, the other's, the rebased one"
    );
    let (pointer, metadata) = current(&config, &lake).await;
    assert_eq!(metadata.snapshots().len(), 3);
    assert_eq!(
        duck(
            &pointer.metadata_location,
            "SELECT id, name FROM iceberg_scan('{metadata}') ORDER BY 1"
        ),
        ["1|a", "2|b", "100|other"]
    );
    no_staged_files_left(&pointer, &metadata);
}

#[tokio::test]
async fn a_commit_whose_answer_is_lost_is_applied_exactly_once() {
    let server = RestServer::start();
    let warehouse = tempfile::tempdir().expect("a warehouse");
    let config = config("lake", warehouse.path(), &server);
    let schema = items_schema();
    let table = schema.table.clone();
    let lake = CatalogTable::new("lake", "items");
    let mut sink = IcebergSink::from_config(&config).await.expect("the sink");
    sink.prepare(&table, &schema, &keyed(&["id"], &[]))
        .await
        .expect("create");
    let mut expected = Vec::new();
    // the initial copy's chunks carry no checkpoint: only the snapshot id can tell that a
    // lost commit landed
    for (n, fault) in [CommitFault::Before, CommitFault::After, CommitFault::Close]
        .into_iter()
        .enumerate()
    {
        let mode = format!("{fault:?}");
        let mode = mode.as_str();
        for checkpointed in [true, false] {
            let id = i32::try_from(n * 2).expect("small") + i32::from(checkpointed);
            let applied = commits_applied(&server);
            server.fail_next_commit(fault);
            let mut change = delta(
                &schema,
                vec![],
                vec![items(&schema, &[(id, Some(mode))])],
                u64::try_from(10 + id).expect("positive"),
            );
            if !checkpointed {
                change.lsn = None;
            }
            sink.commit(change)
                .await
                .unwrap_or_else(|e| panic!("mode {mode}: {e}"));
            expected.push(format!("{id}|{mode}"));
            assert_eq!(
                commits_applied(&server),
                applied + 1,
                "mode {mode}: the commit was applied once"
            );
        }
    }
    expected.sort();
    let (pointer, metadata) = current(&config, &lake).await;
    assert_eq!(metadata.snapshots().len(), 6);
    assert_eq!(
        duck(
            &pointer.metadata_location,
            "SELECT id, name FROM iceberg_scan('{metadata}') ORDER BY 1"
        ),
        expected
    );
    no_staged_files_left(&pointer, &metadata);
}

#[tokio::test]
async fn kill_9_on_a_rest_catalog_with_oauth2_loses_and_duplicates_nothing() {
    let db = TestDb::new("rest_crash").await;
    db.psql(&["-v", "rows=5000", "-f", "sql/orders.sql"]);
    // tokens live 3 s: the run renews them many times
    let server = RestServer::start_with(RestServerOptions {
        client_credentials: Some(("lakewriter".into(), "s3cret".into())),
        token_ttl: Some(std::time::Duration::from_secs(3)),
        ..RestServerOptions::default()
    });
    let sink = sink_toml(
        &server,
        "credential_env = \"LAKEWRITER_TEST_REST_CREDENTIAL\"\n",
    );
    write_config(&db, &sink);
    let credential = [(
        "LAKEWRITER_TEST_REST_CREDENTIAL".to_string(),
        "lakewriter:s3cret".to_string(),
    )];
    crash_and_restart_env(
        &db,
        &[],
        &[("LAKEWRITER_TEST_REST_CREDENTIAL", "lakewriter:s3cret")],
        6,
        5,
        2500,
    )
    .await;

    // one writer streaming for several token lifetimes renews its token before it expires
    let issued = server.stats()["token_issues"]
        .as_u64()
        .expect("a token count");
    let mut writer = start_with_env(
        &db,
        &[],
        &[("LAKEWRITER_TEST_REST_CREDENTIAL", "lakewriter:s3cret")],
    );
    caught_up(&db, &mut writer).await;
    for _ in 0..4 {
        db.workload(1, 50);
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
    caught_up(&db, &mut writer).await;
    stop(writer);
    let renewed = server.stats()["token_issues"]
        .as_u64()
        .expect("a token count")
        - issued;
    assert!(
        renewed >= 3,
        "one writer over ~9 s of 3 s tokens got {renewed} tokens"
    );

    let verify = command_ok_env(&db, &["verify"], &credential);
    assert!(verify.contains("equal"), "{verify}");
    // Spark with Iceberg's Java REST client finds PostgreSQL's rows through the server, the
    // deletes of the run applied by the reference implementation's reader
    let (lines, deletes) = spark_read(&server, &db.namespace, "lakewriter:s3cret");
    assert_ne!(deletes, "0", "the run left no deletes for Spark");
    assert_eq!(lines, postgres_lines(&db).await, "Spark before compact");
    let compacted = command_ok_env(&db, &["compact"], &credential);
    assert!(compacted.contains("orders"), "{compacted}");
    let verify = command_ok_env(&db, &["verify"], &credential);
    assert!(verify.contains("equal"), "after compact: {verify}");
    let status = command_ok_env(&db, &["status"], &credential);
    assert!(
        status.contains(&format!("{}.orders", db.namespace)),
        "{status}"
    );
    // and after compact, which applied them
    let (lines, deletes) = spark_read(&server, &db.namespace, "lakewriter:s3cret");
    assert_eq!(deletes, "0", "delete files left by compact");
    assert_eq!(lines, postgres_lines(&db).await, "Spark after compact");

    // pyiceberg's REST catalog client, after compact (it refuses equality deletes, which
    // compact applied), finds PostgreSQL's rows through the server
    assert_eq!(
        pyiceberg_lines(&server, &db.namespace, "lakewriter:s3cret"),
        postgres_lines(&db).await
    );

    // an independent reader finds PostgreSQL's rows in the server's metadata file
    let location = server_location(&server, &db.namespace, "orders");
    let scan = "iceberg_scan('{metadata}')";
    assert_eq!(
        duck(&location, &LAKE_DUPLICATES.replace("{scan}", scan)),
        ["0"],
        "duplicated keys in the lake"
    );
    assert_eq!(
        duck(&location, &LAKE_LINES.replace("{scan}", scan)),
        postgres_lines(&db).await
    );
}

#[tokio::test]
async fn a_bearer_token_is_sent_and_a_wrong_one_is_an_error_doctor_explains() {
    let db = TestDb::new("rest_token").await;
    let server = RestServer::start_with(RestServerOptions {
        token: Some("t0ken".into()),
        ..RestServerOptions::default()
    });
    write_config(
        &db,
        &sink_toml(&server, "token_env = \"LAKEWRITER_TEST_REST_TOKEN\"\n"),
    );
    let good = [(
        "LAKEWRITER_TEST_REST_TOKEN".to_string(),
        "t0ken".to_string(),
    )];
    let doctor = command_env(&db, &["doctor"], &good);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&doctor.stdout),
        String::from_utf8_lossy(&doctor.stderr)
    );
    assert!(text.contains("a bearer token"), "{text}");
    assert!(!text.contains("t0ken"), "the token was printed: {text}");

    let bad = [(
        "LAKEWRITER_TEST_REST_TOKEN".to_string(),
        "wrong".to_string(),
    )];
    let doctor = command_env(&db, &["doctor"], &bad);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&doctor.stdout),
        String::from_utf8_lossy(&doctor.stderr)
    );
    assert!(!doctor.status.success(), "{text}");
    assert!(text.contains("401"), "{text}");
    assert!(!text.contains("wrong"), "the token was printed: {text}");

    // with the token, a run commits the table and verify finds it equal
    db.psql(&["-v", "rows=200", "-f", "sql/orders.sql"]);
    let mut writer =
        support::writer::start_with_env(&db, &[], &[("LAKEWRITER_TEST_REST_TOKEN", "t0ken")]);
    support::writer::caught_up(&db, &mut writer).await;
    support::writer::stop(writer);
    let verify = command_ok_env(&db, &["verify"], &good);
    assert!(verify.contains("equal"), "{verify}");
}

/// A moto server of the test's own (S3 and IAM), stopped on drop: its IAM enforcement,
/// once on, checks every request's SigV4 signature.
struct Moto {
    child: std::process::Child,
    port: u16,
}

impl Moto {
    fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = stack()
            .python()
            .arg(project_dir().join("scripts/moto_server.py"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start moto");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto did not answer on {port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Moto { child, port }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn sigv4_signed_requests_pass_motos_signature_check_and_a_wrong_key_does_not() {
    // moto serves no Iceberg REST routes: a bucket named like the catalog's path holds the
    // answer of GET /v1/config, so the signed request is an S3 GetObject whose signature and
    // IAM policy moto checks
    let db = TestDb::new("rest_sigv4").await;
    let moto = Moto::start();
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let setup = stack()
        .python()
        .arg("-c")
        .arg(
            "import sys, json, boto3, urllib.request\n\
             endpoint = sys.argv[1]\n\
             def client(name):\n\
             \x20   return boto3.client(name, endpoint_url=endpoint, region_name='us-east-1',\n\
             \x20       aws_access_key_id='testing', aws_secret_access_key='testing')\n\
             s3 = client('s3')\n\
             s3.create_bucket(Bucket='rest-catalog')\n\
             s3.put_object(Bucket='rest-catalog', Key='v1/config',\n\
             \x20   Body=json.dumps({'defaults': {}, 'overrides': {}}).encode())\n\
             iam = client('iam')\n\
             iam.create_user(UserName='catalog')\n\
             iam.put_user_policy(UserName='catalog', PolicyName='read', PolicyDocument=json.dumps(\n\
             \x20   {'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow',\n\
             \x20    'Action': 's3:GetObject', 'Resource': 'arn:aws:s3:::rest-catalog/*'}]}))\n\
             key = iam.create_access_key(UserName='catalog')['AccessKey']\n\
             urllib.request.urlopen(urllib.request.Request(\n\
             \x20   endpoint + '/moto-api/reset-auth', data=b'0', method='POST',\n\
             \x20   headers={'Content-Type': 'text/plain'})).read()\n\
             print(key['AccessKeyId'])\n\
             print(key['SecretAccessKey'])\n",
        )
        .arg(&endpoint)
        .output()
        .expect("run the moto set-up");
    assert!(
        setup.status.success(),
        "moto set-up: {}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let keys = String::from_utf8_lossy(&setup.stdout).into_owned();
    let mut keys = keys.lines();
    let id = keys.next().expect("an access key id").to_string();
    let secret = keys.next().expect("a secret key").to_string();

    write_config(
        &db,
        &format!(
            "catalog = \"rest\"\n[sink.rest]\nuri = \"{endpoint}/rest-catalog\"\nsigv4 = true\n\
             signing_name = \"s3\"\nsigning_region = \"us-east-1\"\n"
        ),
    );
    let doctor = |secret: &str| {
        let env = [
            ("AWS_ACCESS_KEY_ID".to_string(), id.clone()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), secret.to_string()),
            ("AWS_REGION".to_string(), "us-east-1".to_string()),
        ];
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_lakewriter"))
            .args(["doctor", "--config"])
            .arg(support::writer::config_path(&db))
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .envs(env)
            .output()
            .expect("run lakewriter doctor");
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    };
    let signed = doctor(&secret);
    assert!(
        signed.contains("answers its configuration, with AWS SigV4 (s3 in us-east-1)"),
        "{signed}"
    );
    let wrong = doctor("not-the-secret");
    assert!(
        wrong.contains("HTTP 403") && wrong.contains("SignatureDoesNotMatch"),
        "{wrong}"
    );
    assert!(
        !wrong.contains("not-the-secret"),
        "the secret was printed: {wrong}"
    );
}

/// The metadata location the server holds for `namespace.name`, read without lakewriter:
/// from its JdbcCatalog's database.
fn server_location(server: &RestServer, namespace: &str, name: &str) -> String {
    let db = rusqlite::Connection::open(server.catalog_db()).expect("the server's catalog");
    db.query_row(
        "SELECT metadata_location FROM iceberg_tables \
         WHERE table_namespace = ?1 AND table_name = ?2",
        [namespace, name],
        |row| row.get(0),
    )
    .expect("the table in the server's catalog")
}

/// The lines of [`LAKE_LINES`] over `namespace.orders` as pyiceberg's `RestCatalog` reads it
/// through `server` (OAuth2 with `credential`), DuckDB running the query over its Arrow table.
fn pyiceberg_lines(server: &RestServer, namespace: &str, credential: &str) -> Vec<String> {
    let script = format!(
        r#"
import sys
import duck
from pyiceberg.catalog.rest import RestCatalog
catalog = RestCatalog("lakewriter_test", uri=sys.argv[1], credential=sys.argv[2])
orders = catalog.load_table(sys.argv[3] + ".orders").scan().to_arrow()
con = duck.connect()
con.register("orders", orders)
for values in con.sql({query:?}).fetchall():
    print("|".join("NULL" if v is None else str(v) for v in values))
"#,
        query = LAKE_LINES.replace("{scan}", "orders")
    );
    stack().python_lines(
        "pyiceberg over the REST catalog",
        &script,
        &[&server.uri(), credential, namespace],
    )
}

/// Spark SQL's query for the lines of [`postgres_lines`] over `{table}`, as [`LAKE_LINES`] is
/// DuckDB's (the reader's session is in UTC; dates and decimals print as PostgreSQL's do).
const SPARK_LINES: &str = "SELECT concat_ws('|', CAST(order_id AS STRING), \
    CAST(customer_id AS STRING), CAST(order_date AS STRING), CAST(total_amount AS STRING), \
    status, CAST(unix_micros(created_at) AS STRING), CAST(unix_micros(updated_at) AS STRING)) \
    FROM {table} ORDER BY order_id";

/// `namespace.orders` as Spark reads it through `server`'s REST routes with Iceberg's own Java
/// client (OAuth2 with `credential`), in one session of `tests/readers/spark_rest.py`: the
/// lines of [`SPARK_LINES`], and how many delete files the current snapshot has.
fn spark_read(server: &RestServer, namespace: &str, credential: &str) -> (Vec<String>, String) {
    let table = format!("lake.{namespace}.orders");
    let output = stack()
        .python()
        .arg(project_dir().join("tests/readers/spark_rest.py"))
        .arg(server.uri())
        .args(["--credential", credential])
        .arg(SPARK_LINES.replace("{table}", &table))
        // content 1: position deletes, 2: equality deletes
        .arg(format!(
            "SELECT count(*) FROM {table}.delete_files WHERE content IN (1, 2)"
        ))
        .output()
        .expect("run Spark");
    assert!(
        output.status.success(),
        "Spark over the REST catalog: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    // one block of lines per query, separated by an empty line
    let blocks: Vec<&str> = stdout
        .strip_suffix('\n')
        .unwrap_or(&stdout)
        .split("\n\n")
        .collect();
    let [lines, count] = blocks[..] else {
        panic!("Spark's output is not two queries' rows: {stdout}");
    };
    (
        lines.lines().map(str::to_string).collect(),
        count.to_string(),
    )
}

/// `lakewriter <args>` on the test config with `env` set; its output.
fn command_env(db: &TestDb, args: &[&str], env: &[(String, String)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_lakewriter"))
        .args(&args[..1])
        .arg("--config")
        .arg(support::writer::config_path(db))
        .args(&args[1..])
        .envs(env.iter().cloned())
        .output()
        .expect("run lakewriter")
}

fn command_ok_env(db: &TestDb, args: &[&str], env: &[(String, String)]) -> String {
    let output = command_env(db, args, env);
    assert!(
        output.status.success(),
        "lakewriter {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
