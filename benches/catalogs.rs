//! Commit latency per catalog: `--commits` small commits (one upserted row each) of one table
//! through the Iceberg sink, on the SQLite catalog with a local warehouse (the reference), on
//! Glue with an S3 warehouse, on S3 Tables — those two on the stack's moto — and on an Iceberg
//! REST catalog (Apache Iceberg's Java reference server, `scripts/iceberg_java`) with a local
//! warehouse, so what is compared is each catalog's round trips and the storage's, on one
//! machine, not a cloud's latency. Prints the median and p99 of each and their ratios to the
//! reference.
//!
//! ```text
//! cargo bench --bench catalogs -- [--commits N]
//! ```
//!
//! or `LAKEWRITER_BENCH_COMMITS`.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::{Options, load_average};
use lakewriter::sink::iceberg::IcebergSink;
use lakewriter::sink::{Sink, TableDelta, TableLayout};
use lakewriter::source::changes::{ColumnSchema, TableSchema};
use lakewriter::source::pgoutput::ReplicaIdentity;
use lakewriter::source::{Oid, RelationId};
use lakewriter::table::TableId;
use lakewriter::{Config, Lsn};
use support::stack;

fn main() {
    let options = Options::read("catalogs.rs", &["commits"]);
    let commits = options.count("commits", 300);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(bench(commits));
}

fn schema() -> Arc<TableSchema> {
    let arrow = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int32, true),
        Field::new("v", DataType::Utf8, true),
    ]));
    let column = |name: &str, oid: u32, key: bool| ColumnSchema {
        name: name.into(),
        type_oid: Oid(oid),
        type_modifier: -1,
        key,
    };
    Arc::new(TableSchema {
        table: TableId::new("public", "items"),
        relation: RelationId(16384),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![column("id", 23, true), column("v", 25, false)],
        arrow_nullable: arrow.clone(),
        arrow,
    })
}

fn row(schema: &TableSchema, id: i32, v: Option<&str>) -> RecordBatch {
    RecordBatch::try_new(
        schema.arrow_nullable.clone(),
        vec![
            Arc::new(Int32Array::from(vec![id])),
            Arc::new(StringArray::from(vec![v])),
        ],
    )
    .expect("a batch")
}

/// `commits` commits of one upserted row each; each commit's seconds.
async fn commit_times(config: &Config, commits: usize) -> Vec<f64> {
    let schema = schema();
    let layout = TableLayout {
        key: vec!["id".into()],
        partition_by: Vec::new(),
    };
    let mut sink = IcebergSink::from_config(config).await.expect("the sink");
    sink.prepare(&schema.table, &schema, &layout)
        .await
        .expect("create the table");
    let mut times = Vec::with_capacity(commits);
    for i in 0..commits {
        let id = (i % 50) as i32;
        let started = Instant::now();
        sink.commit(TableDelta {
            table: schema.table.clone(),
            schema: schema.clone(),
            truncate: false,
            adds_only: false,
            deletes: vec![row(&schema, id, None)],
            rows: vec![row(&schema, id, Some("v"))],
            lsn: Some(Lsn(i as u64 + 1)),
            copy: None,
        })
        .await
        .expect("a commit");
        times.push(started.elapsed().as_secs_f64());
    }
    times
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn parse(text: &str) -> Config {
    Config::parse(text, Path::new("catalogs-bench.toml"), Vec::new()).expect("a valid config")
}

async fn bench(commits: usize) {
    let endpoint = stack().aws_endpoint().to_string();
    let id = std::process::id();
    let warehouse = tempfile::tempdir().expect("a warehouse");
    let aws = format!(
        "[sink.s3]\nregion = \"us-east-1\"\nendpoint = \"{endpoint}\"\nforce_path_style = true\n\
         access_key_id = \"testing\"\nsecret_access_key = \"testing\"\n"
    );
    let sqlite = parse(&format!(
        "[source]\ndatabase = \"unused\"\n[sink]\nnamespace = \"bench_{id}\"\nwarehouse = \"{}\"\n",
        warehouse.path().display()
    ));
    let bucket = format!("catalogs-bench-{id}");
    let glue = parse(&format!(
        "[source]\ndatabase = \"unused\"\n[sink]\nnamespace = \"bench_{id}\"\ncatalog = \"glue\"\n\
         warehouse = \"s3://{bucket}/lake\"\n[sink.glue]\nregion = \"us-east-1\"\n\
         endpoint = \"{endpoint}\"\n{aws}"
    ));
    let s3 = lakewriter::cloud::s3_client(&glue).await;
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create the S3 bucket");
    let table_bucket = format!("catalogs-bench-{id}");
    let arn = format!("arn:aws:s3tables:us-east-1:123456789012:bucket/{table_bucket}");
    let s3tables = parse(&format!(
        "[source]\ndatabase = \"unused\"\n[sink]\nnamespace = \"bench_{id}\"\ncatalog = \"s3tables\"\n\
         warehouse = \"{}\"\n[sink.s3tables]\ntable_bucket_arn = \"{arn}\"\nendpoint = \"{endpoint}\"\n{aws}",
        warehouse.path().display()
    ));
    lakewriter::cloud::s3tables_client(&s3tables)
        .await
        .create_table_bucket()
        .name(&table_bucket)
        .send()
        .await
        .expect("create the table bucket");

    let server = support::rest_server::RestServer::start();
    let rest_warehouse = tempfile::tempdir().expect("a warehouse");
    let rest = parse(&format!(
        "[source]\ndatabase = \"unused\"\n[sink]\nnamespace = \"bench_{id}\"\ncatalog = \"rest\"\n\
         warehouse = \"{}\"\n[sink.rest]\nuri = \"{}\"\n",
        rest_warehouse.path().display(),
        server.uri()
    ));

    println!(
        "{commits} commits of one upserted row per catalog; load average {}",
        load_average()
    );
    let mut results: HashMap<&str, (f64, f64)> = HashMap::new();
    println!("\n| catalog | median ms | p99 ms | median ratio | p99 ratio |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, config) in [
        ("sqlite, local warehouse", &sqlite),
        ("glue, S3 warehouse (moto)", &glue),
        ("s3tables (moto)", &s3tables),
        ("rest, local warehouse (Java reference server)", &rest),
    ] {
        let mut times = commit_times(config, commits).await;
        times.sort_by(f64::total_cmp);
        let (median, p99) = (quantile(&times, 0.5), quantile(&times, 0.99));
        let (reference_median, reference_p99) =
            *results.entry("reference").or_insert((median, p99));
        println!(
            "| {name} | {:.1} | {:.1} | {:.2} | {:.2} |",
            median * 1000.0,
            p99 * 1000.0,
            median / reference_median,
            p99 / reference_p99
        );
    }
}
