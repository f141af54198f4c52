//! Server-side encryption on S3 (moto): after `lakewriter run` with updates and deletes, then
//! `lakewriter compact`, every object under the warehouse — data and delete files, manifests,
//! manifest lists, metadata, Delta log entries and checkpoints, compaction output,
//! lakewriter's own slot record — carries the configured encryption, for Iceberg and Delta.

mod support;

use support::TestDb;
use support::writer::{caught_up, command_ok, start_with, stop, write_config};

/// An object as stored: its key, its server-side encryption, its KMS key id, whether it
/// uses a bucket key.
type Stored = (String, Option<String>, Option<String>, Option<bool>);

/// Every object under `prefix` of `bucket` with its encryption.
async fn objects(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<Stored> {
    let mut found = Vec::new();
    let mut token = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await
            .expect("list the warehouse");
        for object in page.contents() {
            let Some(key) = object.key() else { continue };
            let head = s3
                .head_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .expect("head an object");
            found.push((
                key.to_string(),
                head.server_side_encryption()
                    .map(|s| s.as_str().to_string()),
                head.ssekms_key_id().map(str::to_string),
                head.bucket_key_enabled(),
            ));
        }
        token = page.next_continuation_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    found
}

/// Runs the orders workload into an S3 warehouse with `format` and `encryption` (TOML lines of
/// `[sink.s3]`), compacts, and returns every object under the warehouse with its encryption.
async fn run_and_compact(label: &str, format: &str, encryption: &str) -> Vec<Stored> {
    let db = TestDb::new(label).await;
    db.psql(&["-v", "rows=2000", "-f", "sql/orders.sql"]);
    let endpoint = support::stack().aws_endpoint().to_string();
    let bucket = format!("sse-{}-{}", label.replace('_', "-"), std::process::id());
    let warehouse = format!("s3://{bucket}/warehouse");
    let extra = format!(
        "format = \"{format}\"\ncatalog = \"glue\"\n\
         [sink.glue]\nregion = \"us-east-1\"\nendpoint = \"{endpoint}\"\n\
         [sink.s3]\nregion = \"us-east-1\"\nendpoint = \"{endpoint}\"\nforce_path_style = true\n\
         access_key_id = \"testing\"\nsecret_access_key = \"testing\"\n{encryption}\n\
         [compaction]\ninterval = \"0\"\norphan_age = \"1s\"\nenforce_orphan_age_floor = false\n"
    );
    write_config(&db, &extra);
    let config = lakewriter::Config::parse(
        &db.config_toml(&extra),
        std::path::Path::new("sse.toml"),
        vec![("LAKEWRITER__SINK__WAREHOUSE".to_string(), warehouse.clone())],
    )
    .expect("a valid config");
    let s3 = lakewriter::cloud::s3_client(&config).await;
    support::create_bucket(&s3, &bucket).await;
    let settings = [("SINK__WAREHOUSE", warehouse.as_str())];
    let mut child = start_with(&db, &settings);
    caught_up(&db, &mut child).await;
    for _ in 0..3 {
        db.workload(1, 300);
        caught_up(&db, &mut child).await;
    }
    stop(child);
    let report = command_ok(&db, &["compact"], &settings);
    assert!(report.contains("orders"), "{report}");
    let verified = command_ok(&db, &["verify"], &settings);
    assert!(verified.contains("orders"), "{verified}");
    objects(&s3, &bucket, "warehouse/").await
}

/// Checks `found` holds every `kinds` of object and each carries `sse` (and, with KMS, the key
/// and the bucket-key flag).
fn assert_encrypted(
    found: &[Stored],
    kinds: &[&str],
    sse: &str,
    kms_key: Option<&str>,
    bucket_key: Option<bool>,
) {
    for kind in kinds {
        assert!(
            found.iter().any(|(key, ..)| key.contains(kind)),
            "no object like {kind} in {:?}",
            found.iter().map(|o| &o.0).collect::<Vec<_>>()
        );
    }
    let plain: Vec<_> = found
        .iter()
        .filter(|(_, s, key_id, bucket)| {
            s.as_deref() != Some(sse)
                || kms_key.is_some_and(|k| !key_id.as_deref().is_some_and(|id| id.ends_with(k)))
                || (bucket_key.is_some() && *bucket != bucket_key)
        })
        .collect();
    assert!(plain.is_empty(), "objects without {sse}: {plain:?}");
}

/// The kinds of object an Iceberg table's run and compaction write.
const ICEBERG_OBJECTS: [&str; 6] = [
    "-data-",
    "-delete-",
    "-m1.avro",
    "snap-",
    ".metadata.json",
    "_lakewriter/",
];

#[tokio::test]
async fn iceberg_with_kms_encrypts_every_object_it_writes_compaction_included() {
    let found = run_and_compact(
        "sse_iceberg_kms",
        "iceberg",
        "sse = \"aws:kms\"\nkms_key_id = \"alias/lakewriter-test\"",
    )
    .await;
    // compaction rewrote the data files the deletes hit: more data files than commits alone
    assert!(
        found
            .iter()
            .filter(|(key, ..)| key.contains("-data-"))
            .count()
            >= 3,
        "{found:?}"
    );
    assert_encrypted(
        &found,
        &ICEBERG_OBJECTS,
        "aws:kms",
        Some("alias/lakewriter-test"),
        None,
    );
}

#[tokio::test]
async fn iceberg_with_aes256_encrypts_every_object_it_writes() {
    let found = run_and_compact("sse_iceberg_s3", "iceberg", "sse = \"AES256\"").await;
    assert_encrypted(&found, &ICEBERG_OBJECTS, "AES256", None, None);
}

#[tokio::test]
async fn delta_with_kms_and_bucket_keys_encrypts_every_object_it_writes_checkpoints_included() {
    let found = run_and_compact(
        "sse_delta",
        "delta",
        "sse = \"aws:kms\"\nkms_key_id = \"alias/lakewriter-test\"\nbucket_key = true",
    )
    .await;
    assert_encrypted(
        &found,
        &[
            "_delta_log/00000000000000000000.json",
            ".checkpoint.parquet",
            ".parquet",
            "_lakewriter/",
        ],
        "aws:kms",
        Some("alias/lakewriter-test"),
        Some(true),
    );
}
