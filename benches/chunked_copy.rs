//! The chunked copy benchmark: a table that joins the publication while `lakewriter run`
//! streams is copied beside the stream in watermarked chunks. Measured in the same run:
//!
//! 1. the copy's rate against `COPY big TO STDOUT (FORMAT binary)` of the same table, drained
//!    (the fastest a client can read the rows), as a ratio of rates; the copy's time runs
//!    from the lake commit that begins it (which empties the table) to the one that completes
//!    it (the first snapshot without the copy's progress after those with it), both on this
//!    machine's clock. Printed too: the time from `ALTER PUBLICATION … ADD TABLE` to that
//!    end, which adds how long the writer took to notice the table (it checks the
//!    publication's tables every `max_latency`, at least every second);
//! 2. the freshness of another table (`orders`, one update every 20 ms) during the copy: the
//!    writer's own `lakewriter_freshness_seconds` histogram, scraped before and after, its
//!    99th percentile as the bucket bound that holds it, against `max_latency` + 1 s.
//!
//! At the end the writer catches up and stops, and `verify` must find the lake equal to
//! PostgreSQL; the count and size of the copied table's Parquet files are printed.
//!
//! ```text
//! cargo bench --bench chunked_copy -- [--rows N] [--chunk-rows N] [--runs N]
//!                                      [--delete-mode position|equality]
//! ```
//!
//! or the same through `LAKEWRITER_BENCH_ROWS`, `…_CHUNK_ROWS`, `…_RUNS`. Defaults: 5 000 000
//! rows, the configured chunk size (`source.snapshot_chunk_rows`, 100 000), 2 runs of the
//! reference.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Options, Run, cpu_seconds, fastest, load_average};
use futures::StreamExt;
use support::TestDb;
use support::http::{free_address, get};
use support::writer::{caught_up, command_ok, start_with, stop, write_config};

/// The flush latency of the run: the freshness goal is this plus one second.
const MAX_LATENCY_MS: u64 = 1000;

fn main() {
    let options = Options::read(
        "chunked_copy.rs",
        &["rows", "chunk-rows", "runs", "delete-mode"],
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(bench(options));
}

async fn bench(options: Options) {
    let rows = options.number("rows", 5_000_000);
    let chunk_rows = options
        .text("chunk-rows")
        .map(|t| Options::parse_number("chunk-rows", t));
    let runs = options.count("runs", 2);
    println!(
        "chunked copy benchmark: {rows} rows, chunks of {}, {runs} reference runs; load {}",
        chunk_rows.map_or("the default".to_string(), |c| c.to_string()),
        load_average()
    );

    let db = TestDb::new("bench_chunked").await;
    db.psql(&["-v", "rows=2000", "-f", "sql/orders.sql"]);
    // the writer streams orders; big is made after its start, so not published yet
    let metrics = free_address();
    let mut extra = format!(
        "[metrics]\nlisten = \"{metrics}\"\n[flush]\nmax_latency = \"{MAX_LATENCY_MS}ms\"\n"
    );
    if let Some(chunk_rows) = chunk_rows {
        extra = format!("[source]\nsnapshot_chunk_rows = {chunk_rows}\n{extra}");
    }
    write_config(&db, "");
    let config = db.warehouse.path().join("lakewriter.toml");
    let text = std::fs::read_to_string(&config).expect("the config");
    std::fs::write(&config, merge_sections(&text, &extra)).expect("write the config");
    // the delete mode the lake is written in: the key index costs a copy of inserts too
    let mode = options
        .text("delete-mode")
        .unwrap_or("position")
        .to_string();
    assert!(
        mode == "position" || mode == "equality",
        "--delete-mode {mode:?}: position or equality"
    );
    println!("delete mode: {mode}");
    let mut writer = start_with(&db, &[("SINK__DELETE_MODE", mode.as_str())]);
    caught_up(&db, &mut writer).await;

    let client = db.client().await;
    let started = Instant::now();
    client
        .batch_execute(&format!(
            "CREATE TABLE big (id bigint PRIMARY KEY, customer_id integer NOT NULL, \
               amount numeric(12,2) NOT NULL, note text NOT NULL, created_at timestamptz NOT NULL);
             INSERT INTO big SELECT g, g % 10007, (g % 100000) / 100.0, 'note ' || g, \
               timestamptz '2026-01-01' + g * interval '1 second' \
               FROM generate_series(1, {rows}) g;"
        ))
        .await
        .expect("the big table");
    client
        .batch_execute("VACUUM ANALYZE big")
        .await
        .expect("vacuum the big table");
    println!(
        "big table of {rows} rows made in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // the stream decodes the table's insert too (unpublished, it is filtered out only after
    // decoding): the copy starts on a stream that has passed it, as for a table that existed
    // long before it joined, so neither the watermarks nor orders queue behind it
    let decoding = Instant::now();
    caught_up(&db, &mut writer).await;
    println!(
        "the stream passed the insert {:.1} s later",
        decoding.elapsed().as_secs_f64()
    );

    // 1. the reference: the table read by binary COPY, drained
    let mut copies = Vec::new();
    for _ in 0..runs {
        copies.push(copy_out(&client).await);
    }
    let reference = fastest(&copies);

    // orders keeps changing: one update every 20 ms
    let stop_probe = Arc::new(AtomicBool::new(false));
    let probe = {
        let url = db.url.clone();
        let stop_probe = stop_probe.clone();
        tokio::spawn(async move {
            let client = support::connect(&url).await;
            let mut round = 0u64;
            while !stop_probe.load(Ordering::Relaxed) {
                client
                    .execute(
                        "UPDATE orders SET status = 'probe', updated_at = clock_timestamp() \
                         WHERE order_id = $1",
                        &[&(1 + (round % 2000) as i32)],
                    )
                    .await
                    .expect("a probe update");
                round += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            round
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = scrape(metrics);

    // 2. the copy
    let cpu = common::cpu_of(&writer.id().to_string()).0;
    let added_ms = now_ms();
    client
        .batch_execute(&format!(
            "ALTER PUBLICATION {} ADD TABLE big",
            db.publication
        ))
        .await
        .expect("publish big");
    let deadline = Instant::now() + Duration::from_secs(3600);
    let (began_ms, completed_ms) = loop {
        if let Some(done) = copy_completed_at(&db) {
            break done;
        }
        if let Ok(Some(status)) = writer.try_wait() {
            panic!("lakewriter exited during the copy with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "the copy did not finish in an hour"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let after = scrape(metrics);
    let writer_cpu = common::cpu_of(&writer.id().to_string()).0 - cpu;
    let copy = Run {
        seconds: (completed_ms - began_ms).max(1) as f64 / 1000.0,
        cpu: writer_cpu,
    };
    let noticed = (began_ms - added_ms) as f64 / 1000.0;
    let end_to_end = (completed_ms - added_ms).max(1) as f64 / 1000.0;
    stop_probe.store(true, Ordering::Relaxed);
    let probes = probe.await.expect("the probe");
    caught_up(&db, &mut writer).await;
    stop(writer);

    let rate = |run: Run| rows as f64 / run.seconds.max(1e-9);
    println!(
        "copy: {rows} rows | COPY TO STDOUT binary, drained {:.2} s ({:.0} rows/s) | chunked \
         copy beside the stream {:.2} s ({:.0} rows/s, {:.1} CPU s in the writer) | ratio {:.2}",
        reference.seconds,
        rate(reference),
        copy.seconds,
        rate(copy),
        copy.cpu,
        rate(copy) / rate(reference)
    );
    println!(
        "from ALTER PUBLICATION: {end_to_end:.2} s, ratio {:.2} (the writer began the copy \
         {noticed:.2} s after it: it checks the publication every {} s)",
        reference.seconds / end_to_end,
        (MAX_LATENCY_MS as f64 / 1000.0).max(1.0)
    );
    let (count, p50, p99) = percentiles(&before, &after, "public.orders");
    println!(
        "freshness of orders during the copy ({probes} updates, {count} observed): p50 <= {p50} s, \
         p99 <= {p99} s (histogram bucket bounds); goal max_latency + 1 s = {:.1} s",
        (MAX_LATENCY_MS as f64 + 1000.0) / 1000.0
    );
    let verified = command_ok(&db, &["verify"], &[]);
    assert!(
        verified.lines().all(|l| l.contains("equal")),
        "the lake differs from PostgreSQL: {verified}"
    );
    println!("verify: {}", verified.trim().replace('\n', "; "));
    let (files, bytes) = parquet_files(db.warehouse.path(), "big");
    println!(
        "the copied table's Parquet files: {files}, {:.1} MB",
        bytes as f64 / 1e6
    );
}

/// The count and total size of the Parquet files under `dir` whose path names the table
/// `table` (a directory of that name).
fn parquet_files(dir: &std::path::Path, table: &str) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            let (f, b) = parquet_files(&path, table);
            files += f;
            bytes += b;
        } else if path.extension().is_some_and(|e| e == "parquet")
            && path.components().any(|c| c.as_os_str() == table)
        {
            files += 1;
            bytes += entry.metadata().map_or(0, |m| m.len());
        }
    }
    (files, bytes)
}

/// `text` (a TOML config) with the sections of `extra` merged in: a key of a section both have
/// replaces the config's own, so the test config's `[flush]` can be overridden.
fn merge_sections(text: &str, extra: &str) -> String {
    let parse = |t: &str| t.parse::<toml::Table>().expect("a TOML config");
    let mut config = parse(text);
    for (section, values) in parse(extra) {
        match (config.get_mut(&section), values) {
            (Some(toml::Value::Table(mine)), toml::Value::Table(theirs)) => mine.extend(theirs),
            (_, values) => {
                config.insert(section, values);
            }
        }
    }
    toml::to_string(&config).expect("a TOML config")
}

/// One drained `COPY big TO STDOUT (FORMAT binary)`, timed.
async fn copy_out(client: &tokio_postgres::Client) -> Run {
    let cpu = cpu_seconds().0;
    let started = Instant::now();
    let stream = client
        .copy_out("COPY big TO STDOUT (FORMAT binary)")
        .await
        .expect("start the COPY");
    let mut stream = std::pin::pin!(stream);
    let mut bytes = 0usize;
    while let Some(part) = stream.next().await {
        bytes += part.expect("a chunk of the COPY").len();
    }
    assert!(bytes > 0);
    Run {
        seconds: started.elapsed().as_secs_f64(),
        cpu: cpu_seconds().0 - cpu,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// When the lake's `big` began and completed its chunked copy: the commit times of the
/// snapshot before the first with the copy's progress (the copy's start empties the table)
/// and of the first snapshot without the progress after those with it; `None` while the copy
/// is under way.
fn copy_completed_at(db: &TestDb) -> Option<(i64, i64)> {
    let catalog = db.warehouse.path().join("catalog.db");
    let script = format!(
        r#"
import json, sqlite3
row = sqlite3.connect({catalog:?}).execute(
    "SELECT metadata_location FROM iceberg_tables WHERE table_namespace = ? AND table_name = ?",
    ({namespace:?}, "big"),
).fetchone()
if row is not None:
    meta = json.load(open(row[0].removeprefix("file://")))
    began = None
    previous = None
    for s in sorted(meta.get("snapshots", []), key=lambda s: s["sequence-number"]):
        if "lakewriter.copy" in s["summary"]:
            if began is None:
                began = (previous or s)["timestamp-ms"]
        elif began is not None:
            print(began, s["timestamp-ms"])
            break
        previous = s
"#,
        catalog = catalog.display().to_string(),
        namespace = db.namespace,
    );
    support::stack()
        .python_lines("the lake's metadata", &script, &[])
        .into_iter()
        .next()
        .and_then(|l| {
            let mut times = l.split_whitespace().map(|t| t.parse().ok());
            Some((times.next()??, times.next()??))
        })
}

/// The writer's `/metrics` text.
fn scrape(addr: std::net::SocketAddr) -> String {
    get(addr, "/metrics", &[])
        .expect("the writer's metrics")
        .body
}

/// The freshness histogram of `table` between two scrapes: observations, and the bucket
/// bounds holding the 50th and 99th percentiles.
fn percentiles(before: &str, after: &str, table: &str) -> (u64, String, String) {
    let buckets = |text: &str| -> Vec<(String, f64)> {
        text.lines()
            .filter(|l| l.starts_with("lakewriter_freshness_seconds_bucket{"))
            .filter(|l| l.contains(&format!("table=\"{table}\"")))
            .filter_map(|l| {
                let labels = l.split_once('{')?.1.split_once('}')?.0;
                let bound = labels
                    .split(',')
                    .find_map(|label| label.strip_prefix("le=\""))?
                    .trim_end_matches('"')
                    .to_string();
                let value = l.rsplit_once(' ')?.1.parse().ok()?;
                Some((bound, value))
            })
            .collect()
    };
    let (before, after) = (buckets(before), buckets(after));
    let counts: Vec<(String, f64)> = after
        .iter()
        .map(|(bound, value)| {
            let earlier = before
                .iter()
                .find(|(b, _)| b == bound)
                .map_or(0.0, |(_, v)| *v);
            (bound.clone(), value - earlier)
        })
        .collect();
    let total = counts.last().map_or(0.0, |(_, v)| *v);
    let at = |q: f64| {
        counts
            .iter()
            .find(|(_, v)| *v >= q * total)
            .map_or("-".to_string(), |(b, _)| b.clone())
    };
    (total as u64, at(0.5), at(0.99))
}
