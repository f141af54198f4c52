//! The S3 Tables catalog against moto's S3 Tables server (table buckets, namespaces, tables and
//! the `versionToken` check) and its S3: the sink's commits, a token moved by another writer,
//! the kill -9 end-to-end run, and DuckDB reading what was written.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use lakewriter::catalog::{Catalog, CatalogError, CatalogTable, LakeCatalog};
use lakewriter::sink::Sink;
use lakewriter::sink::iceberg::IcebergSink;
use lakewriter::{Config, Lsn};
use support::items::{delta, items, items_schema, keyed};
use support::orders::{LAKE_DUPLICATES, LAKE_LINES, postgres_lines};
use support::writer::{command_ok, crash_and_restart, write_config};
use support::{TestDb, stack};

/// A fresh table bucket on the stack's moto, and the `[sink]` lines (after `namespace`) that
/// point lakewriter at it.
async fn table_bucket(label: &str) -> (String, String) {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let endpoint = stack().aws_endpoint().to_string();
    let name = format!(
        "lw-{label}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let sink = format!(
        "catalog = \"s3tables\"\n\
         [sink.s3tables]\ntable_bucket_arn = \"arn:aws:s3tables:us-east-1:123456789012:bucket/{name}\"\n\
         region = \"us-east-1\"\nendpoint = \"{endpoint}\"\n\
         [sink.s3]\nregion = \"us-east-1\"\nendpoint = \"{endpoint}\"\nforce_path_style = true\n\
         access_key_id = \"testing\"\nsecret_access_key = \"testing\"\n"
    );
    let config = Config::parse(
        &format!("[source]\ndatabase = \"unused\"\n[sink]\n{sink}"),
        Path::new("s3tables-test.toml"),
        Vec::new(),
    )
    .expect("a valid config");
    let client = lakewriter::cloud::s3tables_client(&config).await;
    let created = client
        .create_table_bucket()
        .name(&name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create table bucket {name}: {e:?}"));
    assert!(created.arn().ends_with(&format!("bucket/{name}")));
    (created.arn().to_string(), sink)
}

/// A config on a local warehouse (the slot record's) with the lake in table bucket `sink`.
fn config(namespace: &str, warehouse: &Path, sink: &str) -> Config {
    let mut config = Config::parse(
        &format!(
            "[source]\ndatabase = \"unused\"\n[sink]\nnamespace = \"{namespace}\"\n\
             warehouse = \"{}\"\n{sink}",
            warehouse.display()
        ),
        Path::new("s3tables-test.toml"),
        Vec::new(),
    )
    .expect("a valid config");
    config.sink.key_index.dir = warehouse.join("key-index");
    config
}

/// `query` in DuckDB over moto's S3, `{metadata}` standing for `location`; rows as lines.
fn duck_over_s3(location: &str, query: &str) -> Vec<String> {
    let endpoint = stack().aws_endpoint().trim_end_matches('/').to_string();
    let host = endpoint.trim_start_matches("http://").to_string();
    let script = format!(
        r#"
import duck
con = duck.connect()
for statement in [
    "SET s3_endpoint='{host}'", "SET s3_use_ssl=false", "SET s3_url_style='path'",
    "SET s3_access_key_id='testing'", "SET s3_secret_access_key='testing'",
    "SET s3_region='us-east-1'",
]:
    con.execute(statement)
for values in con.sql({query:?}.replace("{{metadata}}", {location:?})).fetchall():
    print("|".join("NULL" if v is None else str(v) for v in values))
"#
    );
    stack().python_lines(&format!("DuckDB over {location}"), &script, &[])
}

#[tokio::test]
async fn commits_land_in_the_table_storage_s3_tables_gives_and_duckdb_reads_them() {
    let (arn, sink_toml) = table_bucket("sink").await;
    let warehouse = tempfile::tempdir().expect("a warehouse");
    let config = config("lake", warehouse.path(), &sink_toml);
    let schema = items_schema();
    let table = schema.table.clone();
    let mut sink = IcebergSink::from_config(&config).await.expect("the sink");
    sink.prepare(&table, &schema, &keyed(&["id"], &[]))
        .await
        .expect("create the table in the bucket");
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

    // the table is the bucket's: its storage and metadata location are what S3 Tables says
    let client = lakewriter::cloud::s3tables_client(&config).await;
    let answer = client
        .get_table_metadata_location()
        .table_bucket_arn(&arn)
        .namespace("lake")
        .name("items")
        .send()
        .await
        .expect("get the metadata location");
    let location = answer.metadata_location().expect("a metadata location");
    assert!(
        location.starts_with(&format!("{}/metadata/", answer.warehouse_location())),
        "{location} is not in the table's storage {}",
        answer.warehouse_location()
    );
    assert_eq!(
        duck_over_s3(
            location,
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
        vec![CatalogTable::new("lake", "items")]
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
}

#[tokio::test]
async fn a_version_token_moved_by_another_writer_refuses_the_swap_and_the_sink_rebases() {
    let (_arn, sink_toml) = table_bucket("token").await;
    let warehouse = tempfile::tempdir().expect("a warehouse");
    let config = config("lake", warehouse.path(), &sink_toml);
    let schema = items_schema();
    let table = schema.table.clone();
    let mut first = IcebergSink::from_config(&config).await.expect("a sink");
    first
        .prepare(&table, &schema, &keyed(&["id"], &[]))
        .await
        .expect("create");
    let mut second = IcebergSink::from_config(&config).await.expect("a sink");
    second
        .prepare(&table, &schema, &keyed(&["id"], &[]))
        .await
        .expect("prepare the same table");

    // the catalog itself refuses a stale token
    let catalog = LakeCatalog::from_config(&config)
        .await
        .expect("the catalog");
    let lake = CatalogTable::new("lake", "items");
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
    let (_, metadata) = first.table_metadata(&table).expect("known");
    let stale = catalog
        .commit(&lake, &before, &before.metadata_location, metadata)
        .await
        .expect_err("a commit on a token that moved");
    assert!(
        matches!(stale, CatalogError::Conflict { .. }),
        "not a conflict: {stale}"
    );

    // the second writer, behind the first, loses its swap, rebases and lands
    second
        .commit(delta(
            &schema,
            vec![],
            vec![items(&schema, &[(2, Some("b"))])],
            20,
        ))
        .await
        .expect("the second writer commits after a rebase");
    let now = catalog.load(&lake).await.expect("load").expect("the table");
    assert_eq!(
        duck_over_s3(
            &now.metadata_location,
            "SELECT id, name FROM iceberg_scan('{metadata}') ORDER BY 1"
        ),
        ["1|a", "2|b"]
    );
}

#[tokio::test]
async fn kill_9_on_s3_tables_loses_and_duplicates_nothing() {
    let db = TestDb::new("s3tables_crash").await;
    db.psql(&["-v", "rows=5000", "-f", "sql/orders.sql"]);
    let (arn, sink_toml) = table_bucket("run").await;
    write_config(&db, &sink_toml);
    crash_and_restart(&db, &[], 6, 5, 2500).await;

    let verify = command_ok(&db, &["verify"], &[]);
    assert!(verify.contains("equal"), "{verify}");
    // compact rewrites through the bucket's API (no file removed: its storage takes no
    // deletes), and the table stays equal; status reads it the same way
    let compacted = command_ok(&db, &["compact"], &[]);
    assert!(compacted.contains("orders"), "{compacted}");
    let verify = command_ok(&db, &["verify"], &[]);
    assert!(verify.contains("equal"), "after compact: {verify}");
    let status = command_ok(&db, &["status"], &[]);
    assert!(
        status.contains(&format!("{}.orders", db.namespace)),
        "{status}"
    );
    // and an independent reader finds PostgreSQL's rows through the bucket's pointer
    let config = config(&db.namespace, db.warehouse.path(), &sink_toml);
    let answer = lakewriter::cloud::s3tables_client(&config)
        .await
        .get_table_metadata_location()
        .table_bucket_arn(&arn)
        .namespace(&db.namespace)
        .name("orders")
        .send()
        .await
        .expect("get the metadata location");
    let location = answer.metadata_location().expect("a metadata location");
    let scan = "iceberg_scan('{metadata}')";
    assert_eq!(
        duck_over_s3(location, &LAKE_DUPLICATES.replace("{scan}", scan)),
        ["0"],
        "duplicated keys in the lake"
    );
    assert_eq!(
        duck_over_s3(location, &LAKE_LINES.replace("{scan}", scan)),
        postgres_lines(&db).await
    );
}
