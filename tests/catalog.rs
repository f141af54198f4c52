//! The catalog layer against real servers: the same suite runs on the SQLite catalog (a file
//! pyiceberg opens too) and on Glue (moto, with the VersionId check scripts/moto_server.py adds).
//! Metadata files are real Iceberg v2 metadata, written to a per-test warehouse directory.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aws_sdk_glue::types::TableInput;
use iceberg::spec::{
    ListType, NestedField, PrimitiveType, Schema, TableMetadata, TableMetadataBuilder, Type,
};
use iceberg::{MetadataLocation, TableCreation};
use lakewriter::Config;
use lakewriter::catalog::{
    Catalog, CatalogError, CatalogTable, LakeCatalog, Pointer, RetryPolicy, StagedMetadata,
    commit_with_retry,
};
use support::stack;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sqlite,
    Glue,
}

/// One test's catalog: a namespace of its own, a warehouse directory of its own for the
/// metadata files, and the catalog opened from a config file as `run` would open it.
struct Fixture {
    kind: Kind,
    namespace: String,
    warehouse: tempfile::TempDir,
    config: Config,
    catalog: LakeCatalog,
}

impl Fixture {
    async fn new(kind: Kind, label: &str) -> Fixture {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let namespace = format!(
            "cat_{label}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let warehouse = tempfile::tempdir().expect("a temporary warehouse");
        let sink = match kind {
            Kind::Sqlite => format!(
                "warehouse = \"{}\"\n[sink.sqlite]\nname = \"lake\"\n",
                warehouse.path().display()
            ),
            // The catalog never touches the warehouse; Glue configs must name one on S3.
            Kind::Glue => format!(
                "catalog = \"glue\"\nwarehouse = \"s3://lake-bucket/warehouse\"\n\
                 [sink.glue]\nregion = \"us-east-1\"\nendpoint = \"{endpoint}\"\n\
                 [sink.s3]\naccess_key_id = \"testing\"\nsecret_access_key = \"testing\"\n",
                endpoint = stack().aws_endpoint()
            ),
        };
        let text = format!(
            "[source]\ndatabase = \"unused\"\n\n[sink]\nnamespace = \"{namespace}\"\n{sink}"
        );
        let config = Config::parse(&text, Path::new("catalog-test.toml"), Vec::new())
            .expect("a valid config");
        let catalog = LakeCatalog::from_config(&config)
            .await
            .expect("open the catalog");
        catalog
            .ensure_namespace(&namespace)
            .await
            .expect("create the namespace");
        Fixture {
            kind,
            namespace,
            warehouse,
            config,
            catalog,
        }
    }

    /// A second, independent writer on the same catalog: its own SQLite connection or its own
    /// Glue client, as a second process would have.
    async fn second_writer(&self) -> LakeCatalog {
        LakeCatalog::from_config(&self.config)
            .await
            .expect("open the catalog again")
    }

    fn table(&self, name: &str) -> CatalogTable {
        CatalogTable::new(&self.namespace, name)
    }

    /// The table's location: a `file://` URL in the warehouse, which pyiceberg also reads.
    fn location(&self, table: &CatalogTable) -> String {
        format!(
            "file://{}/{}/{}",
            self.warehouse.path().display(),
            table.namespace,
            table.name
        )
    }

    /// Writes the first metadata file of a new table and registers it.
    async fn create(&self, table: &CatalogTable, schema: Schema) -> (Pointer, TableMetadata) {
        let metadata = new_metadata(&self.location(table), schema);
        let location = write_metadata(
            &metadata,
            &MetadataLocation::new_with_metadata(self.location(table), &metadata),
        );
        let pointer = self
            .catalog
            .create(table, &location, &metadata)
            .await
            .expect("create the table");
        assert_eq!(pointer.metadata_location, location);
        (pointer, metadata)
    }

    /// A plain Glue client on the stack, for what a test checks or does by hand.
    async fn glue(&self) -> Option<aws_sdk_glue::Client> {
        if self.kind != Kind::Glue {
            return None;
        }
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(stack().aws_endpoint())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_glue::config::Credentials::new(
                "testing", "testing", None, None, "stack",
            ))
            .load()
            .await;
        Some(aws_sdk_glue::Client::new(&config))
    }
}

/// `orders`: a key (the identifier field), and a column of each kind the Glue names cover.
/// Ids are as a new table assigns them (top-level fields first, then nested ones).
fn orders_schema() -> Schema {
    let field = |id, name: &str, ty: PrimitiveType, required| {
        Arc::new(NestedField::new(id, name, Type::Primitive(ty), required))
    };
    Schema::builder()
        .with_schema_id(0)
        .with_identifier_field_ids([1])
        .with_fields([
            field(1, "id", PrimitiveType::Long, true),
            field(2, "customer_id", PrimitiveType::Int, false),
            field(
                3,
                "total",
                PrimitiveType::Decimal {
                    precision: 12,
                    scale: 2,
                },
                false,
            ),
            field(4, "status", PrimitiveType::String, false),
            field(5, "created_at", PrimitiveType::Timestamptz, false),
            field(6, "order_date", PrimitiveType::Date, false),
            field(7, "ref", PrimitiveType::Uuid, false),
            field(8, "paid", PrimitiveType::Boolean, false),
            field(9, "weight", PrimitiveType::Float, false),
            field(10, "score", PrimitiveType::Double, false),
            field(11, "receipt", PrimitiveType::Binary, false),
            field(12, "updated_at", PrimitiveType::Timestamp, false),
            Arc::new(NestedField::optional(
                13,
                "tags",
                Type::List(ListType::new(Arc::new(NestedField::list_element(
                    15,
                    Type::Primitive(PrimitiveType::String),
                    false,
                )))),
            )),
            field(14, "note", PrimitiveType::String, false),
        ])
        .build()
        .expect("a valid schema")
}

fn small_schema() -> Schema {
    Schema::builder()
        .with_schema_id(0)
        .with_identifier_field_ids([1])
        .with_fields([
            Arc::new(NestedField::required(
                1,
                "id",
                Type::Primitive(PrimitiveType::Long),
            )),
            Arc::new(NestedField::optional(
                2,
                "v",
                Type::Primitive(PrimitiveType::String),
            )),
        ])
        .build()
        .expect("a valid schema")
}

fn new_metadata(location: &str, schema: Schema) -> TableMetadata {
    let creation = TableCreation::builder()
        .name("t".to_string())
        .location(location.to_string())
        .schema(schema)
        .build();
    TableMetadataBuilder::from_table_creation(creation)
        .expect("a table creation")
        .build()
        .expect("valid metadata")
        .metadata
}

fn local_path(location: &str) -> PathBuf {
    PathBuf::from(location.strip_prefix("file://").unwrap_or(location))
}

fn write_metadata(metadata: &TableMetadata, location: &MetadataLocation) -> String {
    let location = location.to_string();
    let path = local_path(&location);
    std::fs::create_dir_all(path.parent().expect("a metadata directory")).expect("mkdir");
    std::fs::write(&path, serde_json::to_vec(metadata).expect("serialise")).expect("write");
    location
}

fn read_metadata(location: &str) -> TableMetadata {
    let bytes = std::fs::read(local_path(location)).expect("read the metadata file");
    serde_json::from_slice(&bytes).expect("parse the metadata file")
}

/// What one commit attempt does: reads the metadata the pointer names, applies `change` to it,
/// and writes the next metadata file.
fn stage(
    current: &Pointer,
    change: impl FnOnce(TableMetadataBuilder) -> TableMetadataBuilder,
) -> StagedMetadata {
    let base = read_metadata(&current.metadata_location);
    let builder = base.into_builder(Some(current.metadata_location.clone()));
    let metadata = change(builder).build().expect("valid metadata").metadata;
    let next = MetadataLocation::from_str(&current.metadata_location)
        .expect("a metadata location")
        .with_next_version();
    StagedMetadata {
        location: write_metadata(&metadata, &next),
        metadata,
    }
}

fn set_property(
    key: &str,
    value: &str,
) -> impl FnOnce(TableMetadataBuilder) -> TableMetadataBuilder {
    let properties = [(key.to_string(), value.to_string())].into_iter().collect();
    move |builder| builder.set_properties(properties).expect("set a property")
}

/// Runs a test body once per catalog, each on its own fixture.
macro_rules! on_both_catalogs {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$body(super::Fixture::new(super::Kind::Sqlite, stringify!($name)).await)
                    .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn glue() {
                super::$body(super::Fixture::new(super::Kind::Glue, stringify!($name)).await).await;
            }
        }
    };
}

on_both_catalogs!(create_load_commit, create_load_commit_moves_the_pointer);
on_both_catalogs!(stale_pointer, a_stale_pointer_conflicts_and_changes_nothing);
on_both_catalogs!(racing_writers, racing_writers_one_wins_each_round);
on_both_catalogs!(retry_loses_nothing, commit_with_retry_loses_no_update);

async fn create_load_commit_moves_the_pointer(fx: Fixture) {
    let catalog = &fx.catalog;
    // Ensuring the namespace again is harmless.
    catalog
        .ensure_namespace(&fx.namespace)
        .await
        .expect("ensure the namespace twice");
    let table = fx.table("orders");
    assert_eq!(catalog.load(&table).await.expect("load"), None);

    let (created, _) = fx.create(&table, small_schema()).await;
    assert_eq!(created.previous_metadata_location, None);
    assert_eq!(
        catalog.load(&table).await.expect("load"),
        Some(created.clone())
    );
    let again = fx
        .catalog
        .create(
            &table,
            &created.metadata_location,
            &read_metadata(&created.metadata_location),
        )
        .await
        .expect_err("a second create of the same name fails");
    assert!(
        matches!(again, CatalogError::AlreadyExists { .. }),
        "{again}"
    );

    let staged = stage(&created, set_property("owner", "payments"));
    let committed = catalog
        .commit(&table, &created, &staged.location, &staged.metadata)
        .await
        .expect("commit");
    assert_eq!(committed.metadata_location, staged.location);
    assert_eq!(
        committed.previous_metadata_location.as_deref(),
        Some(created.metadata_location.as_str())
    );
    assert_ne!(committed.token, created.token);
    let loaded = catalog.load(&table).await.expect("load").expect("a table");
    assert_eq!(loaded, committed, "load sees the committed pointer");
    assert_eq!(
        read_metadata(&loaded.metadata_location)
            .properties()
            .get("owner")
            .map(String::as_str),
        Some("payments")
    );

    // Another table in the namespace, then list and drop.
    fx.create(&fx.table("customers"), small_schema()).await;
    assert_eq!(
        catalog.list(&fx.namespace).await.expect("list"),
        vec![fx.table("customers"), fx.table("orders")]
    );
    assert!(catalog.drop_table(&table).await.expect("drop"));
    assert!(!catalog.drop_table(&table).await.expect("drop again"));
    assert_eq!(catalog.load(&table).await.expect("load"), None);
    assert_eq!(
        catalog.list(&fx.namespace).await.expect("list"),
        vec![fx.table("customers")]
    );
    // Commits to a dropped table are refused as such, not as a conflict to retry.
    let gone = catalog
        .commit(&table, &committed, &staged.location, &staged.metadata)
        .await
        .expect_err("a commit to a dropped table fails");
    assert!(matches!(gone, CatalogError::TableNotFound { .. }), "{gone}");
    assert!(!gone.is_retryable());
}

async fn a_stale_pointer_conflicts_and_changes_nothing(fx: Fixture) {
    let table = fx.table("orders");
    let (p0, _) = fx.create(&table, small_schema()).await;
    let first = stage(&p0, set_property("round", "1"));
    let p1 = fx
        .catalog
        .commit(&table, &p0, &first.location, &first.metadata)
        .await
        .expect("the first commit");

    // A writer that still holds p0 loses, whatever it wanted to commit.
    let late = stage(&p0, set_property("round", "late"));
    let error = fx
        .catalog
        .commit(&table, &p0, &late.location, &late.metadata)
        .await
        .expect_err("a commit from a stale pointer must fail");
    assert!(error.is_conflict(), "{error}");
    assert!(error.is_retryable());
    assert!(error.to_string().contains(&table.to_string()), "{error}");
    assert_eq!(
        fx.catalog.load(&table).await.expect("load"),
        Some(p1.clone()),
        "the table is unchanged"
    );
    if let Some(glue) = fx.glue().await {
        let parameters = glue
            .get_table()
            .database_name(&table.namespace)
            .name(&table.name)
            .send()
            .await
            .expect("get table")
            .table
            .and_then(|t| t.parameters)
            .unwrap_or_default();
        assert_eq!(
            parameters.get("metadata_location"),
            Some(&first.location),
            "Glue still points at the winner"
        );
    }
}

async fn racing_writers_one_wins_each_round(fx: Fixture) {
    let table = fx.table("orders");
    fx.create(&table, small_schema()).await;
    let a = &fx.catalog;
    let b = &fx.second_writer().await;
    for round in 0..5 {
        // Both writers read the same pointer, then race to swap it.
        let pa = a.load(&table).await.expect("load").expect("a table");
        let pb = b.load(&table).await.expect("load").expect("a table");
        assert_eq!(pa, pb);
        let sa = stage(&pa, set_property("winner", "a"));
        let sb = stage(&pb, set_property("winner", "b"));
        let (ra, rb) = tokio::join!(
            a.commit(&table, &pa, &sa.location, &sa.metadata),
            b.commit(&table, &pb, &sb.location, &sb.metadata),
        );
        let (winner, loser) = match (ra, rb) {
            (Ok(p), Err(e)) => ((p, sa), e),
            (Err(e), Ok(p)) => ((p, sb), e),
            (ra, rb) => panic!("round {round}: exactly one must win: {ra:?} / {rb:?}"),
        };
        assert!(loser.is_conflict(), "round {round}: {loser}");
        let now = a.load(&table).await.expect("load").expect("a table");
        assert_eq!(now.metadata_location, winner.1.location, "round {round}");
        assert_eq!(now, winner.0, "round {round}");
    }
}

async fn commit_with_retry_loses_no_update(fx: Fixture) {
    const COMMITS: usize = 6;
    let table = fx.table("orders");
    fx.create(&table, small_schema()).await;
    let second = fx.second_writer().await;
    let policy = RetryPolicy {
        max_attempts: 50,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(100),
    };
    // Both writers' first attempts wait for each other, so both build on the same pointer and
    // one of them must lose and re-apply.
    let start = Arc::new(tokio::sync::Barrier::new(2));
    let attempts = AtomicU32::new(0);
    let writer = |catalog: &LakeCatalog, name: &'static str| {
        let (table, policy, start, attempts) = (&table, &policy, start.clone(), &attempts);
        let catalog = catalog.clone();
        async move {
            let mut first = true;
            for i in 0..COMMITS {
                let key = format!("{name}-{i}");
                commit_with_retry(&catalog, table, policy, |current| {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    let wait = std::mem::take(&mut first).then(|| start.clone());
                    let key = key.clone();
                    async move {
                        if let Some(start) = wait {
                            start.wait().await;
                        }
                        Ok::<_, CatalogError>(stage(&current, set_property(&key, "done")))
                    }
                })
                .await
                .unwrap_or_else(|e| panic!("{name} commit {i}: {e}"));
            }
        }
    };
    tokio::join!(writer(&fx.catalog, "a"), writer(&second, "b"));

    let pointer = fx
        .catalog
        .load(&table)
        .await
        .expect("load")
        .expect("a table");
    let properties: BTreeMap<String, String> = read_metadata(&pointer.metadata_location)
        .properties()
        .iter()
        .filter(|(k, _)| k.starts_with("a-") || k.starts_with("b-"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let expected: BTreeMap<String, String> = ["a", "b"]
        .iter()
        .flat_map(|w| (0..COMMITS).map(move |i| (format!("{w}-{i}"), "done".to_string())))
        .collect();
    assert_eq!(properties, expected, "every change of both writers is in");
    let attempts = attempts.load(Ordering::Relaxed) as usize;
    assert!(
        attempts > 2 * COMMITS,
        "{attempts} attempts for {} commits: no race was lost, so nothing was retried",
        2 * COMMITS
    );
}

#[tokio::test]
async fn glue_keeps_other_table_parameters_and_fields() {
    let fx = Fixture::new(Kind::Glue, "keeps_params").await;
    let glue = fx.glue().await.expect("a Glue fixture");
    let table = fx.table("orders");
    let (p0, _) = fx.create(&table, small_schema()).await;

    // Someone sets a parameter and a description by hand, as a console user or a tag job does.
    let current = glue
        .get_table()
        .database_name(&table.namespace)
        .name(&table.name)
        .send()
        .await
        .expect("get table")
        .table
        .expect("a table");
    let mut parameters = current.parameters.clone().unwrap_or_default();
    parameters.insert("owner_team".into(), "payments".into());
    glue.update_table()
        .database_name(&table.namespace)
        .table_input(
            TableInput::builder()
                .name(&table.name)
                .description("orders from the shop")
                .set_table_type(current.table_type.clone())
                .set_storage_descriptor(current.storage_descriptor.clone())
                .set_parameters(Some(parameters))
                .build()
                .expect("table input"),
        )
        .send()
        .await
        .expect("update by hand");

    let before = fx
        .catalog
        .load(&table)
        .await
        .expect("load")
        .expect("a table");
    assert_eq!(before.metadata_location, p0.metadata_location);
    assert_ne!(before.token, p0.token, "the hand edit is a new version");
    let staged = stage(&before, set_property("k", "v"));
    fx.catalog
        .commit(&table, &before, &staged.location, &staged.metadata)
        .await
        .expect("commit");

    let after = glue
        .get_table()
        .database_name(&table.namespace)
        .name(&table.name)
        .send()
        .await
        .expect("get table")
        .table
        .expect("a table");
    let parameters = after.parameters.clone().unwrap_or_default();
    assert_eq!(
        parameters.get("owner_team").map(String::as_str),
        Some("payments")
    );
    assert_eq!(after.description.as_deref(), Some("orders from the shop"));
    assert_eq!(
        parameters.get("table_type").map(String::as_str),
        Some("ICEBERG")
    );
    assert_eq!(parameters.get("metadata_location"), Some(&staged.location));
    assert_eq!(
        parameters.get("previous_metadata_location"),
        Some(&p0.metadata_location)
    );

    // A commit from the pointer read before the hand edit would have undone it: it conflicts.
    let late = stage(&p0, set_property("k", "late"));
    let error = fx
        .catalog
        .commit(&table, &p0, &late.location, &late.metadata)
        .await
        .expect_err("a pointer older than a hand edit is stale");
    assert!(error.is_conflict(), "{error}");
}

/// A Glue column as (name, type, id, optional, current).
type GlueColumn = (String, String, String, String, String);

async fn glue_columns(
    glue: &aws_sdk_glue::Client,
    table: &CatalogTable,
) -> (aws_sdk_glue::types::Table, Vec<GlueColumn>) {
    let got = glue
        .get_table()
        .database_name(&table.namespace)
        .name(&table.name)
        .send()
        .await
        .expect("get table")
        .table
        .expect("a table");
    let columns = got
        .storage_descriptor
        .as_ref()
        .and_then(|sd| sd.columns.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            let p = c.parameters.clone().unwrap_or_default();
            let get = |k: &str| p.get(k).cloned().unwrap_or_default();
            (
                c.name.clone(),
                c.r#type.clone().unwrap_or_default(),
                get("iceberg.field.id"),
                get("iceberg.field.optional"),
                get("iceberg.field.current"),
            )
        })
        .collect();
    (got, columns)
}

#[tokio::test]
async fn glue_columns_follow_the_iceberg_schema() {
    let fx = Fixture::new(Kind::Glue, "glue_columns").await;
    let glue = fx.glue().await.expect("a Glue fixture");
    let table = fx.table("orders");
    let (p0, metadata) = fx.create(&table, orders_schema()).await;

    let (got, columns) = glue_columns(&glue, &table).await;
    let parameters = got.parameters.clone().unwrap_or_default();
    assert_eq!(
        parameters.get("table_type").map(String::as_str),
        Some("ICEBERG")
    );
    assert_eq!(
        parameters.get("metadata_location"),
        Some(&p0.metadata_location)
    );
    assert_eq!(parameters.get("previous_metadata_location"), None);
    assert_eq!(got.table_type.as_deref(), Some("EXTERNAL_TABLE"));
    assert_eq!(
        got.storage_descriptor
            .as_ref()
            .and_then(|sd| sd.location.as_deref()),
        Some(fx.location(&table).as_str())
    );
    let column = |name: &str, ty: &str, id: u32, optional: bool, current: bool| {
        (
            name.to_string(),
            ty.to_string(),
            id.to_string(),
            optional.to_string(),
            current.to_string(),
        )
    };
    let mut expected = vec![
        column("id", "bigint", 1, false, true),
        column("customer_id", "int", 2, true, true),
        column("total", "decimal(12,2)", 3, true, true),
        column("status", "string", 4, true, true),
        column("created_at", "timestamp", 5, true, true),
        column("order_date", "date", 6, true, true),
        column("ref", "string", 7, true, true),
        column("paid", "boolean", 8, true, true),
        column("weight", "float", 9, true, true),
        column("score", "double", 10, true, true),
        column("receipt", "binary", 11, true, true),
        column("updated_at", "timestamp", 12, true, true),
        column("tags", "array<string>", 13, true, true),
        column("note", "string", 14, true, true),
    ];
    assert_eq!(columns, expected);

    // The schema evolves: `note` is dropped, `discount` added. The commit rewrites the columns;
    // the dropped one stays listed as not current, as other Iceberg writers keep it.
    let mut fields: Vec<_> = metadata
        .current_schema()
        .as_struct()
        .fields()
        .iter()
        .filter(|f| f.name != "note")
        .cloned()
        .collect();
    fields.push(Arc::new(NestedField::optional(
        16,
        "discount",
        Type::Primitive(PrimitiveType::Double),
    )));
    let evolved = Schema::builder()
        .with_schema_id(1)
        .with_identifier_field_ids([1])
        .with_fields(fields)
        .build()
        .expect("the evolved schema");
    let staged = stage(&p0, |b| {
        b.add_current_schema(evolved).expect("add the schema")
    });
    fx.catalog
        .commit(&table, &p0, &staged.location, &staged.metadata)
        .await
        .expect("commit the new schema");

    let (got, columns) = glue_columns(&glue, &table).await;
    expected.pop();
    expected.push(column("discount", "double", 16, true, true));
    expected.push(column("note", "string", 14, true, false));
    assert_eq!(columns, expected);
    let parameters = got.parameters.unwrap_or_default();
    assert_eq!(parameters.get("metadata_location"), Some(&staged.location));
    assert_eq!(
        parameters.get("previous_metadata_location"),
        Some(&p0.metadata_location)
    );
}

/// pyiceberg's SQL catalog opens our file, reads the real metadata we registered, and commits
/// through its own compare-and-swap, which our catalog then sees.
#[tokio::test]
async fn pyiceberg_opens_and_commits_to_the_sqlite_catalog() {
    let fx = Fixture::new(Kind::Sqlite, "pyiceberg").await;
    let table = fx.table("t");
    let (p0, _) = fx.create(&table, orders_schema()).await;
    let staged = stage(&p0, set_property("lakewriter.lsn", "0/16B3748"));
    let p1 = fx
        .catalog
        .commit(&table, &p0, &staged.location, &staged.metadata)
        .await
        .expect("commit");

    let script = r#"
import json, sys
from pyiceberg.catalog.sql import SqlCatalog
path, warehouse, ident = sys.argv[1:4]
catalog = SqlCatalog("lake", uri=f"sqlite:///{path}", warehouse=warehouse)
table = catalog.load_table(ident)
schema = table.schema()
before = table.metadata_location
with table.transaction() as tx:
    tx.set_properties(written_by="pyiceberg")
print(json.dumps({
    "fields": [f.name for f in schema.fields],
    "identifier_field_ids": sorted(schema.identifier_field_ids),
    "metadata_location": before,
    "lsn": table.properties.get("lakewriter.lsn"),
    "tables": [".".join(t) for t in catalog.list_tables(ident.split(".")[0])],
    "committed": catalog.load_table(ident).metadata_location,
}))
"#;
    let output = stack()
        .python()
        .arg("-c")
        .arg(script)
        .arg(fx.config.sqlite_catalog_path())
        .arg(format!("file://{}", fx.warehouse.path().display()))
        .arg(table.to_string())
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "pyiceberg failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("pyiceberg's answer is JSON");
    assert_eq!(
        seen["fields"],
        serde_json::json!([
            "id",
            "customer_id",
            "total",
            "status",
            "created_at",
            "order_date",
            "ref",
            "paid",
            "weight",
            "score",
            "receipt",
            "updated_at",
            "tags",
            "note"
        ])
    );
    assert_eq!(seen["identifier_field_ids"], serde_json::json!([1]));
    assert_eq!(seen["metadata_location"], p1.metadata_location.as_str());
    assert_eq!(seen["lsn"], "0/16B3748");
    assert_eq!(seen["tables"], serde_json::json!([table.to_string()]));

    // pyiceberg's commit went through the same pointer: we see it, with ours as previous.
    let now = fx
        .catalog
        .load(&table)
        .await
        .expect("load")
        .expect("a table");
    assert_eq!(seen["committed"], now.metadata_location.as_str());
    assert_ne!(now.metadata_location, p1.metadata_location);
    assert_eq!(
        now.previous_metadata_location.as_deref(),
        Some(p1.metadata_location.as_str())
    );
    let metadata = read_metadata(&now.metadata_location);
    assert_eq!(
        metadata.properties().get("written_by").map(String::as_str),
        Some("pyiceberg")
    );
    // Our stale pointer lost to pyiceberg's commit.
    let late = stage(&p1, set_property("late", "yes"));
    let error = fx
        .catalog
        .commit(&table, &p1, &late.location, &late.metadata)
        .await
        .expect_err("stale after pyiceberg's commit");
    assert!(error.is_conflict(), "{error}");
}

/// A catalog file pyiceberg created first (its own schema, its own namespace rows) opens in
/// lakewriter, and tables lakewriter registers there load in pyiceberg.
#[tokio::test]
async fn a_catalog_file_made_by_pyiceberg_opens() {
    let dir = tempfile::tempdir().expect("a directory");
    let path = dir.path().join("catalog.db");
    let output = stack()
        .python()
        .arg("-c")
        .arg(
            "import sys\nfrom pyiceberg.catalog.sql import SqlCatalog\n\
             SqlCatalog('lake', uri=f'sqlite:///{sys.argv[1]}', warehouse='file:///tmp').create_namespace('ns')\n",
        )
        .arg(&path)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let catalog = lakewriter::catalog::SqliteCatalog::open(&path, "lake")
        .await
        .expect("open pyiceberg's file");
    catalog
        .ensure_namespace("ns")
        .await
        .expect("the namespace exists already");
    let table = CatalogTable::new("ns", "t");
    let location = format!("file://{}/ns/t", dir.path().display());
    let metadata = new_metadata(&location, small_schema());
    let metadata_location = write_metadata(
        &metadata,
        &MetadataLocation::new_with_metadata(&location, &metadata),
    );
    catalog
        .create(&table, &metadata_location, &metadata)
        .await
        .expect("create");
    let output = stack()
        .python()
        .arg("-c")
        .arg(
            "import sys\nfrom pyiceberg.catalog.sql import SqlCatalog\n\
             c = SqlCatalog('lake', uri=f'sqlite:///{sys.argv[1]}', warehouse='file:///tmp')\n\
             print(c.load_table('ns.t').metadata_location)\n",
        )
        .arg(&path)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        metadata_location
    );
}
