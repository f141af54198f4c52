//! The local stack itself: the servers every other test relies on behave like the real ones in
//! the ways lakewriter depends on.

mod support;

use aws_sdk_glue::types::{DatabaseInput, TableInput};
use support::{TestDb, stack};

async fn aws_config() -> aws_config::SdkConfig {
    let stack = stack();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(stack.aws_endpoint())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_glue::config::Credentials::new(
            "testing", "testing", None, None, "stack",
        ))
        .load()
        .await
}

#[tokio::test]
async fn postgres_streams_logical_changes_through_pgoutput() {
    let db = TestDb::new("pgoutput").await;
    let client = db.client().await;
    let wal_level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .expect("show wal_level")
        .get(0);
    assert_eq!(wal_level, "logical");

    // one statement per call: a slot cannot be created in a transaction that wrote
    for statement in [
        "CREATE TABLE t (id int PRIMARY KEY, v text)".to_string(),
        format!("CREATE PUBLICATION {} FOR TABLE t", db.publication),
        format!(
            "SELECT pg_create_logical_replication_slot('{}', 'pgoutput')",
            db.slot
        ),
        "INSERT INTO t VALUES (1, 'a'), (2, 'b')".to_string(),
        "UPDATE t SET v = 'c' WHERE id = 1".to_string(),
        "DELETE FROM t WHERE id = 2".to_string(),
    ] {
        client
            .batch_execute(&statement)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e:?}"));
    }
    // pgoutput messages start with their kind byte: B(egin) I(nsert) U(pdate) D(elete) C(ommit)
    let rows = client
        .query(
            "SELECT substr(data, 1, 1) FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, \
             'proto_version', '1', 'publication_names', $2)",
            &[&db.slot, &db.publication],
        )
        .await
        .expect("peek the slot");
    let kinds: String = rows
        .iter()
        .map(|r| char::from(r.get::<_, Vec<u8>>(0)[0]))
        .collect();
    assert_eq!(kinds.matches('I').count(), 2, "{kinds}");
    assert_eq!(kinds.matches('U').count(), 1, "{kinds}");
    assert_eq!(kinds.matches('D').count(), 1, "{kinds}");
    assert_eq!(kinds.matches('C').count(), 3, "three transactions: {kinds}");
}

#[tokio::test]
async fn glue_refuses_a_commit_with_a_stale_version_id() {
    let glue = aws_sdk_glue::Client::new(&aws_config().await);
    let db = format!("stale_version_{}", std::process::id());
    glue.create_database()
        .database_input(DatabaseInput::builder().name(&db).build().expect("input"))
        .send()
        .await
        .expect("create database");
    let table = |location: &str| {
        TableInput::builder()
            .name("orders")
            .parameters("table_type", "ICEBERG")
            .parameters("metadata_location", location)
            .build()
            .expect("table input")
    };
    glue.create_table()
        .database_name(&db)
        .table_input(table("s3://b/m1.json"))
        .send()
        .await
        .expect("create table");
    let read_version = || async {
        glue.get_table()
            .database_name(&db)
            .name("orders")
            .send()
            .await
            .expect("get table")
            .table
            .expect("a table")
    };
    let before = read_version().await;
    let version = before.version_id.clone().expect("Glue returns a VersionId");

    // The first writer to commit with the version it read wins.
    glue.update_table()
        .database_name(&db)
        .table_input(table("s3://b/m2.json"))
        .version_id(&version)
        .send()
        .await
        .expect("a commit with the current VersionId succeeds");

    // A second writer that read the same version loses, and nothing of its commit lands.
    let err = glue
        .update_table()
        .database_name(&db)
        .table_input(table("s3://b/m3.json"))
        .version_id(&version)
        .send()
        .await
        .expect_err("a commit with a stale VersionId must be refused");
    let service_error = err.into_service_error();
    assert!(
        service_error.is_concurrent_modification_exception(),
        "{service_error:?}"
    );
    let after = read_version().await;
    let location = after
        .parameters
        .as_ref()
        .and_then(|p| p.get("metadata_location"))
        .cloned();
    assert_eq!(location.as_deref(), Some("s3://b/m2.json"));
    assert_ne!(after.version_id, before.version_id);
}

#[tokio::test]
async fn s3_serves_path_style_buckets() {
    let config = aws_sdk_s3::config::Builder::from(&aws_config().await)
        .force_path_style(true)
        .build();
    let s3 = aws_sdk_s3::Client::from_conf(config);
    let bucket = format!("lakewriter-stack-{}", std::process::id());
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket");
    s3.put_object()
        .bucket(&bucket)
        .key("warehouse/x.parquet")
        .body(b"PAR1".to_vec().into())
        .send()
        .await
        .expect("put");
    let body = s3
        .get_object()
        .bucket(&bucket)
        .key("warehouse/x.parquet")
        .send()
        .await
        .expect("get")
        .body
        .collect()
        .await
        .expect("read body")
        .into_bytes();
    assert_eq!(&body[..], b"PAR1");
}

#[test]
fn the_independent_readers_are_installed() {
    // DuckDB loads its Iceberg (after avro), httpfs and Delta extensions from their PyPI
    // packages, with downloads switched off; pyiceberg and deltalake import.
    let readers = support::project_dir().join("tests/readers");
    let output = stack()
        .python()
        .arg("-c")
        .arg(
            "import duck, duckdb, pyiceberg, deltalake\n\
             con = duck.connect()\n\
             loaded = {n for (n,) in con.execute('SELECT extension_name FROM duckdb_extensions() WHERE loaded').fetchall()}\n\
             assert {'avro', 'iceberg', 'httpfs', 'delta'} <= loaded, loaded\n\
             print(duckdb.__version__, pyiceberg.__version__)\n",
        )
        .env("PYTHONPATH", &readers)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("1.5.5 0.12"), "{stdout}");
}
