//! The soak: a trickle of small transactions into `orders`, committed by `lakewriter run`
//! about once a second, for `--minutes` (30 by default). Every `--sample` seconds it records
//! what grows when a table is committed for months — the current `metadata.json`'s size,
//! snapshots, manifests of the current snapshot, files under the table's `metadata/`, the
//! writer's CPU seconds per commit and resident memory — and the time of a DuckDB
//! `count(*)` over the table. At the end the trickle stops, the writer catches up and stops,
//! and `lakewriter verify` must find the lake equal to PostgreSQL.
//!
//! Nothing here is timed against a threshold: it prints the samples as a table, and for each
//! figure its slope per hour over the samples after the first retention window (the goal:
//! about zero, RSS within 10 %), and the extrapolation to 30 days at the default cadence.
//! `run` compacts the table every `--compaction` seconds (half the retention by default; an
//! hour in production), as it would beside the writer: the reader's cost (DuckDB's count)
//! depends on it, the writer's own state must not.
//!
//! ```text
//! cargo bench --bench soak -- [--minutes N] [--sample SECONDS] [--retention SECONDS]
//!                             [--compaction SECONDS] [--transactions-per-second N] [--rows N]
//! ```
//!
//! or the same through `LAKEWRITER_BENCH_MINUTES`, `…_SAMPLE`, `…_RETENTION`, `…_COMPACTION`,
//! `…_TRANSACTIONS_PER_SECOND`, `…_ROWS`. The retention (`compaction.snapshot_retention`,
//! 10 minutes by default, 6 hours in production) is shortened so that a 30-minute run has
//! two windows after the first. `cargo test` runs it scaled down (3 minutes, a sample every
//! 15 s, a 30 s retention) and checks that the lake equals PostgreSQL and that the bounded
//! figures stayed bounded.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Options, cpu_of, load_average};
use support::{TestDb, project_dir, stack};

/// The run's sizes.
#[derive(Debug, Clone, Copy)]
struct Args {
    minutes: f64,
    sample: Duration,
    retention: Duration,
    compaction: Duration,
    transactions_per_second: u64,
    rows: u64,
    /// Scaled down under `cargo test`: check the outcome, print less.
    check: bool,
}

impl Args {
    fn read() -> Args {
        let options = Options::read(
            "soak.rs",
            &[
                "minutes",
                "sample",
                "retention",
                "compaction",
                "transactions-per-second",
                "rows",
            ],
        );
        // `cargo bench` hands the bench `--bench`; `cargo test` runs it without
        let check = !std::env::args().any(|a| a == "--bench");
        let (minutes, sample, retention) = if check { (3, 15, 30) } else { (30, 60, 600) };
        let retention = options.number("retention", retention).max(1);
        Args {
            minutes: options.number("minutes", minutes) as f64,
            sample: Duration::from_secs(options.number("sample", sample).max(1)),
            retention: Duration::from_secs(retention),
            compaction: Duration::from_secs(options.number("compaction", retention / 2).max(1)),
            transactions_per_second: options.number("transactions-per-second", 20).max(1),
            rows: options.number("rows", 10_000).max(100),
            check,
        }
    }
}

/// One sample of the table's state and the writer's.
#[derive(Debug, Clone, Default)]
struct Sample {
    seconds: f64,
    commits: u64,
    snapshots: u64,
    manifests: u64,
    metadata_bytes: u64,
    metadata_files: u64,
    data_files: u64,
    cpu_seconds: f64,
    rss_bytes: u64,
    duck_ms: f64,
    duck_rows: u64,
}

fn main() {
    let args = Args::read();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(soak(args));
}

async fn soak(args: Args) {
    let db = TestDb::new("soak").await;
    db.psql(&["-v", &format!("rows={}", args.rows), "-f", "sql/orders.sql"]);
    let config = db.warehouse.path().join("lakewriter.toml");
    std::fs::write(
        &config,
        db.config_toml(&format!(
            "\n[flush]\nmax_latency = \"1s\"\n\n[compaction]\ninterval = \"{}s\"\n\
             snapshot_retention = \"{}s\"\n",
            args.compaction.as_secs(),
            args.retention.as_secs()
        )),
    )
    .expect("write the config");
    let log_path = db.warehouse.path().join("lakewriter.log");
    let mut writer = start_writer(&config, &log_path);
    wait_for_copy(&db, &mut writer).await;

    println!(
        "soak: {} min, a sample every {} s, snapshot_retention {} s, compaction every {} s, {} \
         transactions/s of a few rows on orders ({} rows), max_latency 1 s; load average {}",
        args.minutes,
        args.sample.as_secs(),
        args.retention.as_secs(),
        args.compaction.as_secs(),
        args.transactions_per_second,
        args.rows,
        load_average()
    );
    let stop = tokio::sync::watch::channel(false);
    let trickle = tokio::spawn(trickle(
        db.client().await,
        args.transactions_per_second,
        args.rows,
        stop.1,
    ));

    let started = Instant::now();
    let end = started + Duration::from_secs_f64(args.minutes * 60.0);
    let metadata_dir = db
        .warehouse
        .path()
        .join(&db.namespace)
        .join("orders")
        .join("metadata");
    let data_dir = metadata_dir.with_file_name("data");
    let mut samples: Vec<Sample> = Vec::new();
    let mut next = started + args.sample;
    while Instant::now() < end {
        tokio::time::sleep_until(next.into()).await;
        next += args.sample;
        if let Ok(Some(status)) = writer.try_wait() {
            panic!("lakewriter exited early with {status}: {}", tail(&log_path));
        }
        let sample = sample(
            &db,
            &config,
            &writer,
            &log_path,
            &metadata_dir,
            &data_dir,
            started,
        );
        print_sample(&sample, samples.last());
        samples.push(sample);
    }

    let _ = stop.0.send(true);
    let transactions = trickle.await.expect("the trickle");
    let end_lsn = db.sync_point().await;
    wait_until_acknowledged(&db, end_lsn, &mut writer).await;
    let _ = Command::new("kill")
        .args(["-TERM", &writer.id().to_string()])
        .status();
    let status = writer.wait().expect("wait for lakewriter");
    assert!(status.success(), "lakewriter run: {}", tail(&log_path));
    let verify = Command::new(support::writer::binary())
        .args(["verify", "--config"])
        .arg(&config)
        .output()
        .expect("run lakewriter verify");
    let verdict = String::from_utf8_lossy(&verify.stdout).into_owned();
    println!(
        "\n{transactions} transactions; lakewriter verify: {}",
        verdict.trim()
    );
    assert!(
        verify.status.success() && verdict.contains("equal"),
        "the lake differs from PostgreSQL after the soak: {verdict}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    summarize(&args, &samples);
}

fn start_writer(config: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("create the writer's log");
    Command::new(support::writer::binary())
        .args(["run", "--config"])
        .arg(config)
        .env_remove("LAKEWRITER_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start lakewriter run")
}

/// The last lines of the writer's log, for a failure's message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The position the soak's slot has confirmed (zero before the writer made it).
async fn confirmed(db: &TestDb) -> lakewriter::Lsn {
    let row = db
        .client()
        .await
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.slot],
        )
        .await
        .expect("read the slot");
    row.and_then(|r| r.get::<_, Option<String>>(0))
        .and_then(|text| text.parse().ok())
        .unwrap_or_default()
}

/// Waits for the initial copy of `orders` to be committed.
async fn wait_for_copy(db: &TestDb, writer: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let position = confirmed(db).await;
        if position.get() > 0 {
            return;
        }
        if let Ok(Some(status)) = writer.try_wait() {
            panic!("lakewriter exited during the copy with {status}");
        }
        assert!(Instant::now() < deadline, "the initial copy never finished");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until the slot has confirmed `lsn`: everything before it is in the lake.
async fn wait_until_acknowledged(db: &TestDb, lsn: lakewriter::Lsn, writer: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while confirmed(db).await < lsn {
        if let Ok(Some(status)) = writer.try_wait() {
            panic!("lakewriter exited before catching up with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "the writer never caught up to {lsn}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Small transactions, `per_second` of them a second until `stop`: each updates three
/// orders, inserts one, and one in ten deletes one. Returns how many committed.
async fn trickle(
    client: tokio_postgres::Client,
    per_second: u64,
    rows: u64,
    stop: tokio::sync::watch::Receiver<bool>,
) -> u64 {
    let mut random = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |below: u64| {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        1 + random % below
    };
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut done = 0u64;
    // the live keys are a window of `rows` ids, `oldest..oldest + rows`: each transaction adds
    // the next id (the serial) and deletes the oldest, so the table keeps its size and what
    // grows is the writer's state, not the data compaction rewrites
    let mut oldest = 1u64;
    while !*stop.borrow() {
        ticker.tick().await;
        let mut sql = String::from("BEGIN;");
        for _ in 0..3 {
            sql.push_str(&format!(
                "UPDATE orders SET total_amount = round((random() * 1000)::numeric, 2), \
                 status = 'paid', updated_at = now() WHERE order_id = {};",
                oldest + next(rows) - 1
            ));
        }
        sql.push_str(
            "INSERT INTO orders (customer_id, order_date, total_amount, status) \
             VALUES (1, current_date, 1.00, 'pending');",
        );
        sql.push_str(&format!("DELETE FROM orders WHERE order_id = {oldest};"));
        oldest += 1;
        sql.push_str("COMMIT;");
        client
            .batch_execute(&sql)
            .await
            .expect("a trickle transaction");
        done += 1;
    }
    done
}

fn sample(
    db: &TestDb,
    config: &Path,
    writer: &Child,
    log: &Path,
    metadata_dir: &Path,
    data_dir: &Path,
    started: Instant,
) -> Sample {
    let seconds = started.elapsed().as_secs_f64();
    let pid = writer.id().to_string();
    let (cpu, _) = cpu_of(&pid);
    let rss_bytes = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    let commits = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("committed") && l.contains("public.orders"))
        .count() as u64;
    let status = Command::new(support::writer::binary())
        .args(["status", "--json", "--config"])
        .arg(config)
        .output()
        .expect("run lakewriter status");
    let report: serde_json::Value =
        serde_json::from_slice(&status.stdout).unwrap_or(serde_json::Value::Null);
    let table = report
        .get("tables")
        .and_then(|t| t.as_array())
        .and_then(|t| {
            t.iter().find(|t| {
                t.get("table")
                    .and_then(|n| n.as_str())
                    .is_some_and(|n| n.ends_with(".orders"))
            })
        })
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let number = |key: &str| table.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
    let (duck_ms, duck_rows) = duck_count(db);
    Sample {
        seconds,
        commits,
        snapshots: number("snapshots"),
        manifests: number("manifests"),
        metadata_bytes: number("metadata_bytes"),
        metadata_files: count_files(metadata_dir),
        data_files: count_files(data_dir),
        cpu_seconds: cpu,
        rss_bytes,
        duck_ms,
        duck_rows,
    }
}

fn count_files(dir: &Path) -> u64 {
    let mut count = 0;
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(_) => count += 1,
                Err(_) => {}
            }
        }
    }
    count
}

/// DuckDB's `count(*)` over the table's current metadata: milliseconds (the query alone, its
/// planning included) and the count.
fn duck_count(db: &TestDb) -> (f64, u64) {
    let catalog = db.warehouse.path().join("catalog.db");
    let script = format!(
        r#"
import sqlite3, time
import duck
row = sqlite3.connect({catalog:?}).execute(
    "SELECT metadata_location FROM iceberg_tables WHERE table_namespace = ? AND table_name = ?",
    ({namespace:?}, "orders"),
).fetchone()
con = duck.connect()
started = time.perf_counter()
count = con.sql(f"SELECT count(*) FROM iceberg_scan('{{row[0]}}')").fetchall()[0][0]
print((time.perf_counter() - started) * 1000, count)
"#,
        catalog = catalog.display().to_string(),
        namespace = db.namespace,
    );
    let output = stack()
        .python()
        .arg("-c")
        .arg(script)
        .env("PYTHONPATH", project_dir().join("tests/readers"))
        .output()
        .expect("run DuckDB");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut parts = text.split_whitespace();
    let ms = parts
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    let rows = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    (ms, rows)
}

fn print_sample(sample: &Sample, previous: Option<&Sample>) {
    if previous.is_none() {
        println!(
            "\n| min | commits | snapshots | manifests | metadata.json KiB | files in metadata/ \
             | data files | writer CPU ms/commit | RSS MiB | DuckDB count ms | rows |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    }
    let (cpu_per_commit, commits) = match previous {
        Some(p) if sample.commits > p.commits => (
            (sample.cpu_seconds - p.cpu_seconds) * 1000.0 / (sample.commits - p.commits) as f64,
            sample.commits,
        ),
        _ => (f64::NAN, sample.commits),
    };
    println!(
        "| {:.1} | {} | {} | {} | {:.1} | {} | {} | {:.1} | {:.1} | {:.0} | {} |",
        sample.seconds / 60.0,
        commits,
        sample.snapshots,
        sample.manifests,
        sample.metadata_bytes as f64 / 1024.0,
        sample.metadata_files,
        sample.data_files,
        cpu_per_commit,
        sample.rss_bytes as f64 / (1024.0 * 1024.0),
        sample.duck_ms,
        sample.duck_rows,
    );
}

/// A figure of the samples: its name, and how to read it from a sample.
type Figure = (&'static str, fn(&Sample) -> f64);

/// Least-squares slope of `values` over `x`, per hour when `x` is in seconds.
fn slope_per_hour(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let covariance: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let variance: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if variance == 0.0 {
        0.0
    } else {
        covariance / variance * 3600.0
    }
}

fn summarize(args: &Args, samples: &[Sample]) {
    // after the first retention window, plus one expiry cadence (100 commits ≈ 100 s)
    let settled_after = args.retention.as_secs_f64() + 100.0;
    let settled: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.seconds >= settled_after)
        .collect();
    let Some(last) = samples.last() else {
        println!("no samples");
        return;
    };
    let commits_per_second = last.commits as f64 / last.seconds.max(1.0);
    println!(
        "\n{} commits in {:.1} min ({commits_per_second:.2} a second); after the first \
         retention window ({:.0} s) and an expiry, {} samples:",
        last.commits,
        last.seconds / 60.0,
        settled_after,
        settled.len()
    );
    let figures: [Figure; 6] = [
        ("snapshots", |s| s.snapshots as f64),
        ("manifests", |s| s.manifests as f64),
        ("metadata.json bytes", |s| s.metadata_bytes as f64),
        ("files in metadata/", |s| s.metadata_files as f64),
        ("writer RSS bytes", |s| s.rss_bytes as f64),
        ("DuckDB count ms", |s| s.duck_ms),
    ];
    for (name, value) in figures {
        let points: Vec<(f64, f64)> = settled.iter().map(|s| (s.seconds, value(s))).collect();
        let (min, max) = points
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                (lo.min(p.1), hi.max(p.1))
            });
        println!(
            "  {name:<20} min {min:>12.0}  max {max:>12.0}  slope {:>+12.1} per hour",
            slope_per_hour(&points)
        );
    }
    let cpu: Vec<(f64, f64)> = settled
        .windows(2)
        .filter(|w| w[1].commits > w[0].commits)
        .map(|w| {
            (
                w[1].seconds,
                (w[1].cpu_seconds - w[0].cpu_seconds) * 1000.0
                    / (w[1].commits - w[0].commits) as f64,
            )
        })
        .collect();
    println!(
        "  {:<20} mean {:>11.1}  slope {:>+12.2} per hour",
        "CPU ms per commit",
        cpu.iter().map(|p| p.1).sum::<f64>() / cpu.len().max(1) as f64,
        slope_per_hour(&cpu)
    );
    // 30 days at the default cadence: one commit per 10 s per table, 6 h retention
    if let Some(settled_last) = settled.last()
        && settled_last.snapshots > 0
    {
        let bytes_per_snapshot = settled_last.metadata_bytes as f64 / settled_last.snapshots as f64;
        let kept = 6.0 * 3600.0 / 10.0 + 10.0;
        println!(
            "\n30 days at the default cadence (a commit per 10 s, snapshot_retention 6 h): \
             {:.0} snapshots kept at any time, metadata.json about {:.1} MiB ({bytes_per_snapshot:.0} \
             bytes a snapshot, measured), manifests at most about 2 × 100 (merged at \
             commit.manifest.min-count-to-merge), metadata.json files about 101; without \
             expiry and merging it would be 259,200 snapshots, {:.0} MiB and 518,400 manifests",
            kept,
            kept * bytes_per_snapshot / (1024.0 * 1024.0),
            259_200.0 * bytes_per_snapshot / (1024.0 * 1024.0),
        );
    }
    if args.check {
        check(args, &settled);
    }
}

/// Scaled down under `cargo test`: the figures the writer bounds by count stayed bounded.
fn check(args: &Args, settled: &[&Sample]) {
    // the retention window at about a commit a second, the kept newest, an expiry cadence
    let snapshot_bound = args.retention.as_secs() + 10 + 100 + 20;
    for sample in settled {
        assert!(
            sample.snapshots <= snapshot_bound,
            "{} snapshots at {:.0} s, past the retention's {snapshot_bound}",
            sample.snapshots,
            sample.seconds
        );
        assert!(
            sample.manifests <= 2 * 101,
            "{} manifests in the current snapshot at {:.0} s",
            sample.manifests,
            sample.seconds
        );
    }
}
