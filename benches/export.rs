//! The export benchmark: `lakewriter export` (lake → PostgreSQL) against
//! `COPY … FROM STDIN (FORMAT binary)` of the same rows, in the same run, as a ratio of rates
//! (DESIGN.md, "Performance"): never a timed assertion.
//!
//! `orders` is seeded with `--rows` rows and copied into a lake by `lakewriter run` (the
//! binary, as a child, left running). Then, `--runs` times each, alternating with their
//! references, and keeping the best run of each side:
//!
//! 1. Full: the lake table exported (in this process, as the command does it) into a new
//!    destination table of a second database — created from the lake's schema, the rows
//!    copied straight into it, the state recorded, committed — against the same rows (taken
//!    from the source beforehand with `COPY … TO STDOUT (FORMAT binary)`) copied into an empty
//!    table of the same shape and primary key, committed.
//! 2. Incremental: `--changed-percent` of the keys updated in the source (another slice each
//!    run), the writer caught up, then the export of what changed into the first full run's
//!    table (touched keys found, their rows staged by COPY, upserted) against the same changed
//!    rows copied into an empty table with the key — and against a second reference, the
//!    server's own share: the same rows copied into a temporary table and upserted by the
//!    same `INSERT … ON CONFLICT DO UPDATE` into a full copy of the table.
//!
//! The destination of the first full run is checked against the source at the end (a count
//! and a hash of every row).
//!
//! ```text
//! cargo bench --bench export -- [--rows N] [--changed-percent N] [--runs N]
//!                               [--format iceberg|delta]
//! ```
//!
//! or the same through `LAKEWRITER_BENCH_ROWS`, `…_CHANGED_PERCENT`, `…_RUNS`, `…_FORMAT`.
//! Defaults: 200 000 rows, 10 %, 2 runs, Iceberg.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::time::Instant;

use bytes::Bytes;
use common::{Options, Run, cpu_seconds, fastest, load_average};
use futures::{SinkExt, StreamExt};
use lakewriter::Config;
use lakewriter::export::{ExportOptions, TableExport};
use support::TestDb;
use support::writer::{caught_up, config_path, start, stop, write_config};

/// The destination tables' shape: what `export` creates from the lake's schema.
const SHAPE: &str = "(order_id integer NOT NULL PRIMARY KEY, customer_id integer NOT NULL, \
     order_date date NOT NULL, total_amount numeric(10,2) NOT NULL, status text NOT NULL, \
     created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL)";

/// A row's text for the final check, alike in both databases.
const ROW_HASH: &str = "SELECT count(*)::text || ' ' || coalesce(sum(hashtext(concat_ws('|', \
     order_id, customer_id, order_date, total_amount, status, created_at, updated_at)))::text, \
     '0') FROM ";

fn main() {
    let options = Options::read("export.rs", &["rows", "changed-percent", "runs", "format"]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(bench(options));
}

async fn bench(options: Options) {
    let rows = options.number("rows", 200_000);
    let percent = options.number("changed-percent", 10).clamp(1, 100);
    let runs = options.count("runs", 2);
    let format = options.text("format").unwrap_or("iceberg").to_string();
    assert!(
        format == "iceberg" || format == "delta",
        "--format iceberg|delta"
    );
    println!(
        "export benchmark: {rows} rows, {percent} % changed, {runs} runs, {format}; load {}",
        load_average()
    );

    let a = TestDb::new("bench_export").await;
    let b = TestDb::new("bench_export_dst").await;
    a.psql(&["-v", &format!("rows={rows}"), "-f", "sql/orders.sql"]);
    a.psql(&["-c", "VACUUM ANALYZE public.orders"]);
    write_config(
        &a,
        if format == "delta" {
            "format = \"delta\""
        } else {
            ""
        },
    );
    let started = Instant::now();
    let mut writer = start(&a);
    caught_up(&a, &mut writer).await;
    println!(
        "lake written by `lakewriter run` in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let config = Config::load(&config_path(&a)).expect("the bench config");
    let source = a.client().await;
    let destination = b.client().await;
    destination
        .batch_execute("CREATE SCHEMA bench")
        .await
        .expect("a schema");

    // 1. full
    let all = copy_out(&source, "COPY public.orders TO STDOUT (FORMAT binary)").await;
    let (mut copies, mut exports) = (Vec::new(), Vec::new());
    for run in 0..runs {
        copies.push(copy_in(&destination, &format!("bench.copy_full_{run}"), &all).await);
        let (timed, report) = export(&config, &b, &format!("bench.export_full_{run}")).await;
        assert_eq!(report.applied.upserted, rows, "the full export's rows");
        phases(&report);
        exports.push(timed);
    }
    let full = (fastest(&copies), fastest(&exports));
    report("full", "COPY FROM STDIN binary", rows, full.0, full.1);

    // 2. incremental
    let modulus = (100 / percent).max(1);
    let (mut copies, mut exports, mut upserts) = (Vec::new(), Vec::new(), Vec::new());
    let mut changed = 0;
    for run in 0..runs {
        let slice = format!("order_id % {modulus} = {}", run as u64 % modulus);
        changed = source
            .execute(
                &format!(
                    "UPDATE public.orders SET total_amount = total_amount + 1, \
                       updated_at = now() WHERE {slice}"
                ),
                &[],
            )
            .await
            .expect("change a slice");
        caught_up(&a, &mut writer).await;
        let rows_changed = copy_out(
            &source,
            &format!("COPY (SELECT * FROM public.orders WHERE {slice}) TO STDOUT (FORMAT binary)"),
        )
        .await;
        copies.push(
            copy_in(
                &destination,
                &format!("bench.copy_changed_{run}"),
                &rows_changed,
            )
            .await,
        );
        upserts.push(
            upsert_in(
                &destination,
                &format!("bench.copy_full_{run}"),
                &rows_changed,
            )
            .await,
        );
        let (timed, report) = export(&config, &b, "bench.export_full_0").await;
        assert_eq!(
            report.applied.upserted, changed,
            "the incremental export's rows"
        );
        phases(&report);
        exports.push(timed);
    }
    let incremental = (fastest(&copies), fastest(&exports));
    report(
        "incremental",
        "COPY FROM STDIN binary",
        changed,
        incremental.0,
        incremental.1,
    );
    report(
        "incremental",
        "COPY into a temporary table + the same upsert",
        changed,
        fastest(&upserts),
        incremental.1,
    );
    stop(writer);

    let expected: String = source
        .query_one(&format!("{ROW_HASH} public.orders"), &[])
        .await
        .expect("hash the source")
        .get(0);
    let exported: String = destination
        .query_one(&format!("{ROW_HASH} bench.export_full_0"), &[])
        .await
        .expect("hash the destination")
        .get(0);
    assert_eq!(
        exported, expected,
        "the destination differs from the source"
    );
    println!("destination equals the source (count and hash of every row): {expected}");
}

/// `query` (a `COPY … TO STDOUT (FORMAT binary)`) collected in chunks of 4 MiB, the size
/// `export` sends: the server sends a message per row, and sending those one by one would
/// flush per row and slow the reference down.
async fn copy_out(client: &tokio_postgres::Client, query: &str) -> Vec<Bytes> {
    const CHUNK: usize = 4 << 20;
    let mut stream = std::pin::pin!(client.copy_out(query).await.expect("start the COPY"));
    let mut chunks = Vec::new();
    let mut chunk = Vec::with_capacity(CHUNK);
    while let Some(part) = stream.next().await {
        chunk.extend_from_slice(&part.expect("a chunk of the COPY"));
        if chunk.len() >= CHUNK {
            chunks.push(Bytes::from(std::mem::replace(
                &mut chunk,
                Vec::with_capacity(CHUNK),
            )));
        }
    }
    chunks.push(Bytes::from(chunk));
    chunks
}

/// The reference: `data` copied into a new table `table` of the destination's shape, in a
/// transaction, committed.
async fn copy_in(client: &tokio_postgres::Client, table: &str, data: &[Bytes]) -> Run {
    client
        .batch_execute(&format!("CREATE TABLE {table} {SHAPE}"))
        .await
        .expect("the reference table");
    let cpu = cpu_seconds().0;
    let started = Instant::now();
    client.batch_execute("BEGIN").await.expect("begin");
    let sink = client
        .copy_in::<_, Bytes>(&format!("COPY {table} FROM STDIN (FORMAT binary)"))
        .await
        .expect("start the COPY");
    let mut sink = std::pin::pin!(sink);
    for chunk in data {
        sink.send(chunk.clone()).await.expect("send a chunk");
    }
    sink.as_mut().finish().await.expect("finish the COPY");
    client.batch_execute("COMMIT").await.expect("commit");
    Run {
        seconds: started.elapsed().as_secs_f64(),
        cpu: cpu_seconds().0 - cpu,
    }
}

/// The second reference of the incremental export, the floor of any upsert: `data` copied
/// into a temporary table and upserted from there into `table` (a full copy of the table, as
/// the export's destination is) by the same `INSERT … ON CONFLICT DO UPDATE`, in a
/// transaction, committed — what the server itself spends on the merge.
async fn upsert_in(client: &tokio_postgres::Client, table: &str, data: &[Bytes]) -> Run {
    let cpu = cpu_seconds().0;
    let started = Instant::now();
    client
        .batch_execute(&format!(
            "BEGIN; CREATE TEMP TABLE stage (LIKE {table}) ON COMMIT DROP"
        ))
        .await
        .expect("the staging table");
    let sink = client
        .copy_in::<_, Bytes>("COPY stage FROM STDIN (FORMAT binary)")
        .await
        .expect("start the COPY");
    let mut sink = std::pin::pin!(sink);
    for chunk in data {
        sink.send(chunk.clone()).await.expect("send a chunk");
    }
    sink.as_mut().finish().await.expect("finish the COPY");
    let others = [
        "customer_id",
        "order_date",
        "total_amount",
        "status",
        "created_at",
        "updated_at",
    ];
    let set = others
        .iter()
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let ours = others
        .iter()
        .map(|c| format!("d.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let theirs = others
        .iter()
        .map(|c| format!("EXCLUDED.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    client
        .batch_execute(&format!(
            "ANALYZE stage; INSERT INTO {table} AS d SELECT * FROM stage ON CONFLICT (order_id) \
             DO UPDATE SET {set} WHERE ROW({ours}) IS DISTINCT FROM ROW({theirs}); COMMIT"
        ))
        .await
        .expect("the upsert");
    Run {
        seconds: started.elapsed().as_secs_f64(),
        cpu: cpu_seconds().0 - cpu,
    }
}

/// `lakewriter export` of the lake's orders into `table`, timed.
async fn export(config: &Config, b: &TestDb, table: &str) -> (Run, TableExport) {
    let options = ExportOptions {
        tables: vec![
            format!("public.orders={table}")
                .parse()
                .expect("a table mapping"),
        ],
        destination: lakewriter::config::Secret::new(b.url.clone()),
        full: false,
        as_of: None,
    };
    let cpu = cpu_seconds().0;
    let started = Instant::now();
    let mut done = lakewriter::export::run(config, &options)
        .await
        .expect("the export");
    let run = Run {
        seconds: started.elapsed().as_secs_f64(),
        cpu: cpu_seconds().0 - cpu,
    };
    (run, done.pop().expect("one table exported"))
}

/// Where one export's time went.
fn phases(report: &TableExport) {
    println!(
        "  export into {}: plan {:.2} s, copy {:.2} s, merge {:.2} s, total {:.2} s",
        report.destination,
        report.plan_seconds,
        report.applied.copy_seconds,
        report.applied.merge_seconds,
        report.elapsed.as_secs_f64()
    );
}

fn report(what: &str, reference: &str, rows: u64, copy: Run, export: Run) {
    let rate = |run: Run| rows as f64 / run.seconds.max(1e-9);
    println!(
        "{what:>11}: {rows} rows | {reference} {:.2} s ({:.0} rows/s) | export \
         {:.2} s ({:.0} rows/s, {:.1} CPU s in this process) | ratio {:.2}",
        copy.seconds,
        rate(copy),
        export.seconds,
        rate(export),
        export.cpu,
        rate(export) / rate(copy)
    );
}
