//! End-to-end benchmarks of the writer, PostgreSQL to committed Iceberg (or Delta with
//! `--format delta`, for the stream and snapshot parts), each measured against a
//! reference in the same run and reported as a ratio (DESIGN.md, "Performance"): never a timed
//! assertion. The lakes are the default local kind (SQLite catalog, local warehouse), in a
//! temporary directory removed at the end.
//!
//! 1. Stream: `orders` seeded and copied into one lake per run by `service::run` (then stopped);
//!    a twin pgoutput slot per run for pg_recvlogical; the orders workload committed; its row
//!    changes counted and its last commit found by peeking a twin slot. Then, alternating:
//!    pg_recvlogical draining a twin slot to the workload's end into a file (the reference),
//!    and `service::run` restarted on a lake until that lake's checkpoint (`lakewriter.lsn`,
//!    read through the catalog every 50 ms) reaches the workload's last commit — with
//!    `[flush] max_latency = "1s"` and the default `idle_rows`, so the last rows are committed
//!    once the walsender reports it has sent everything (or, under `idle_rows` of them, at
//!    the latency). Also shown: when `pg_stat_replication` says the writer's walsender had sent the
//!    workload's end (PostgreSQL's side done). Afterwards DuckDB counts the first lake against
//!    PostgreSQL (slow: DuckDB's merge-on-read of equality deletes takes a minute or more).
//!    With `--metrics 1`, each run also restarts `service::run` on a lake of its own with the
//!    metrics recorded, `/metrics` served on 127.0.0.1 and scraped every second (and the
//!    source sampled as `run` samples it): the ratio of its rate to the run without them.
//!    With `--masking 1`, each run also restarts `service::run` on a lake of its own whose
//!    `customer_id` and `status` are hashed (`[sink.tables."public.orders"] columns`): the
//!    ratio of its rate to the run without masking. With `--position 1`, likewise on lakes in
//!    `[sink] delete_mode = "position"` (each with its key index): the ratio of its rate to
//!    the run in equality mode.
//! 2. Freshness: `service::run` with the default flush policy (`max_latency = "10s"`) on a
//!    fresh lake; after its initial snapshot, `--commits` single-row transactions, one every
//!    `--spacing` seconds (not waiting for the lake); for each, the time from the commit
//!    returning to the lake's checkpoint reaching it, against `max_latency`. The commit's
//!    position is bounded below by `pg_current_wal_insert_lsn()` read inside it, and no other
//!    transaction touches the table, so "checkpoint ≥ that bound" means "the commit is in".
//! 3. Snapshot: `orders` grown to `--snapshot-rows` and vacuumed; `service::run` copying it into
//!    a fresh lake with a new slot (from the call until the table's checkpoint exists, i.e.
//!    the initial snapshot is committed; slot creation, connections and the default two COPY
//!    streams included), against `COPY orders TO STDOUT (FORMAT binary)` drained and counted.
//! 4. Memory: the `lakewriter` binary (`run --config F`, same build profile as this bench) as
//!    a child with `[flush] memory_budget = "--budget-mib MiB"` and its spill directory in the
//!    temporary directory; after its initial snapshot of a small table, one transaction
//!    inserting `--big-rows` rows; when the lake's checkpoint reaches that transaction, the
//!    child's peak RSS (VmHWM of /proc/PID/status, read just before SIGTERM; VmRSS is also
//!    sampled every 100 ms) against the budget. The lake's row count (snapshot summary
//!    `total-records`, and DuckDB) is compared with PostgreSQL's. This part takes minutes.
//!
//! 5. Deletes (only with `--only deletes`, Iceberg): `--delete-rows` rows (default 2 000 000)
//!    copied into three lakes, `delete_mode` equality, position and deletion_vector (a
//!    format-3 table); half the keys deleted in
//!    transactions of 100 000; each lake's writer timed to the last delete; a query over
//!    each lake (lakewriter's and DuckDB's, the latter given up after `--duck-limit`
//!    seconds, 300 by default); the position lake's key index rebuilt from scratch against a
//!    read of the key column through the same merge-on-read; with `--rebuild-rows N`, then the key index of a table of N
//!    rows of its own copied into a position lake, rebuilt.
//!
//! 6. Key index (only with `--only index`, no PostgreSQL work): the key index of
//!    `--index-keys` `bigint` keys (default 100 000 000) built directly in flushes of 100 000
//!    inserts, with a cache of `--index-cache-mib` (default 256, as `[sink]
//!    key_index_cache`); then 100 flushes of 10 000 updates of random keys (lookup, remove,
//!    add). The build and update rates, the file's size per key, and this process's peak RSS
//!    against the budget. 100 M keys take a few minutes and about 20 GB of disk.
//!
//! Each side of 1 and 3 runs `--runs` times (default 2), alternating, and keeps its best run;
//! the CPU seconds shown are this process's (the writer runs in it) or pg_recvlogical's. Rate
//! ratios are the measured side's rate over the reference's; freshness and memory ratios are
//! the measured value over the configured limit.
//!
//! ```text
//! cargo bench --bench lake -- [--seed-rows N] [--rounds N] [--batch N] [--snapshot-rows N]
//!                             [--big-rows N] [--budget-mib N] [--runs N] [--commits N]
//!                             [--spacing SECONDS] [--only LIST] [--format iceberg|delta]
//!                             [--metrics 1] [--masking 1] [--position 1]
//!                             [--delete-rows N] [--rebuild-rows N]
//!                             [--duck-limit SECONDS] [--index-keys N] [--index-cache-mib N]
//! ```
//!
//! or the same through `LAKEWRITER_BENCH_SEED_ROWS`, `…_ROUNDS`, `…_BATCH`, `…_SNAPSHOT_ROWS`,
//! `…_BIG_ROWS`, `…_BUDGET_MIB`, `…_RUNS`, `…_COMMITS`, `…_SPACING`, `…_ONLY`, `…_FORMAT`,
//! `…_METRICS`, `…_MASKING`, `…_POSITION`
//! (`--only stream,freshness,snapshot,memory`, the default; the parts run in that order;
//! `--format delta` takes `--only stream,snapshot`).
//! Defaults: 100 000 seed rows, 16 rounds of 4 000 (about 210 k row changes), 1 000 000
//! snapshot rows, 10 000 000 big rows, 256 MiB, 2 runs, 3 commits 3 s apart; about 4 minutes
//! on 2 cores, most of it the memory part (and DuckDB's count of the streamed lake).

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{
    Options, Run, copy_drain, cpu_of, cpu_seconds, fastest, load_average, recvlogical_drain,
};
use iceberg::io::FileIO;
use iceberg::spec::TableMetadata;
use lakewriter::Lsn;
use lakewriter::catalog::{Catalog, CatalogTable, LakeCatalog};
use lakewriter::config::{Config, TableFormat};
use lakewriter::pipeline::{Stats, service};
use lakewriter::sink::Sink;
use lakewriter::sink::delta::tables as delta_tables;
use lakewriter::sink::delta::{DeltaSettings, DeltaSink};
use lakewriter::sink::iceberg::{IcebergSink, checkpoint, file_io, lake_table};
use lakewriter::source::pgoutput::{self, Message};
use lakewriter::table::TableId;
use support::{TestDb, stack};
use tokio::sync::watch;

/// The table format of the lakes (`--format`), set once at the start.
static FORMAT: std::sync::OnceLock<TableFormat> = std::sync::OnceLock::new();

fn format() -> TableFormat {
    FORMAT.get().copied().unwrap_or(TableFormat::Iceberg)
}

/// The format's name in the printed titles.
fn format_name() -> &'static str {
    match format() {
        TableFormat::Iceberg => "Iceberg",
        TableFormat::Delta => "Delta",
    }
}

/// How often the lake's checkpoint is read while waiting for it.
const POLL: Duration = Duration::from_millis(50);

/// Rows of the small table the memory measurement's writer copies first.
const MEMORY_SEED_ROWS: u64 = 10_000;

/// The parts, in the order they run.
const PARTS: [&str; 4] = ["stream", "freshness", "snapshot", "memory"];
/// Every part, those run only when `--only` names them included.
const ALL_PARTS: [&str; 6] = [
    "stream",
    "freshness",
    "snapshot",
    "memory",
    "deletes",
    "index",
];

/// Sizes and choices, from arguments or the environment.
#[derive(Debug, Clone)]
struct Args {
    /// Rows in `orders` before the workload (copied into the lakes, not streamed).
    seed_rows: u64,
    /// Rounds of sql/workload.sql.
    rounds: u64,
    /// Inserts per round; the other statements scale with it and with the table.
    batch: u64,
    /// Rows in `orders` for the snapshot measurement.
    snapshot_rows: u64,
    /// Rows of the one large transaction of the memory measurement.
    big_rows: u64,
    /// `[flush] memory_budget` of the memory measurement, in MiB.
    budget_mib: u64,
    /// Runs of each side of the stream and snapshot measurements; the best is kept.
    runs: usize,
    /// Single-row commits of the freshness measurement.
    commits: usize,
    /// Seconds between those commits.
    spacing: u64,
    /// Which parts run.
    only: Vec<String>,
    /// The table format the stream and snapshot parts write: `iceberg` or `delta`.
    format: TableFormat,
    /// The stream part also runs, on lakes of its own, with metrics served and scraped
    /// every second (`--metrics 1`).
    metrics: bool,
    /// The stream part also runs, on lakes of its own, with `customer_id` and `status`
    /// hashed (`--masking 1`).
    masking: bool,
    /// The stream part also runs, on lakes of their own, with `[sink] delete_mode =
    /// "position"` (`--position 1`).
    position: bool,
    /// Rows of the deletes part's table, half of which it deletes (`--delete-rows`).
    delete_rows: u64,
    /// Rows of a table of its own whose key index the deletes part rebuilds last
    /// (`--rebuild-rows`; 0: none).
    rebuild_rows: u64,
    /// How long DuckDB may take to count a lake in the deletes part before the bench gives
    /// up on that figure (`--duck-limit` seconds, default 300: its merge-on-read of a million
    /// equality deletes takes it longer).
    duck_limit: Duration,
    /// Keys of the index part's key index (`--index-keys`).
    index_keys: u64,
    /// The index part's cache budget, MiB (`--index-cache-mib`; the default of
    /// `[sink] key_index_cache`).
    index_cache_mib: u64,
}

impl Args {
    fn parse() -> Args {
        let options = Options::read(
            "lake.rs",
            &[
                "seed-rows",
                "rounds",
                "batch",
                "snapshot-rows",
                "big-rows",
                "budget-mib",
                "runs",
                "commits",
                "spacing",
                "only",
                "format",
                "metrics",
                "masking",
                "position",
                "delete-rows",
                "rebuild-rows",
                "index-keys",
                "index-cache-mib",
                "duck-limit",
            ],
        );
        let only = match options.text("only") {
            None => PARTS.iter().map(|p| p.to_string()).collect(),
            Some(_) => options.parts(&ALL_PARTS),
        };
        let format = match options.text("format") {
            None | Some("iceberg") => TableFormat::Iceberg,
            Some("delta") => TableFormat::Delta,
            Some(other) => panic!("--format {other:?}: iceberg or delta"),
        };
        if format == TableFormat::Delta {
            for part in &only {
                assert!(
                    part == "stream" || part == "snapshot",
                    "--format delta measures the stream and snapshot parts only (not {part})"
                );
            }
        }
        Args {
            format,
            seed_rows: options.number("seed-rows", 100_000),
            rounds: options.number("rounds", 16),
            batch: options.number("batch", 4000),
            snapshot_rows: options.number("snapshot-rows", 1_000_000),
            big_rows: options.number("big-rows", 10_000_000),
            budget_mib: options.number("budget-mib", 256).max(1),
            runs: options.count("runs", 2),
            commits: options.count("commits", 3),
            spacing: options.number("spacing", 3),
            only,
            metrics: options.number("metrics", 0) > 0,
            masking: options.number("masking", 0) > 0,
            position: options.number("position", 0) > 0,
            delete_rows: options.number("delete-rows", 2_000_000).max(2),
            rebuild_rows: options.number("rebuild-rows", 0),
            duck_limit: Duration::from_secs(options.number("duck-limit", 300)),
            index_keys: options.number("index-keys", 100_000_000).max(1_000_000),
            index_cache_mib: options.number("index-cache-mib", 256).max(1),
        }
    }

    fn runs_part(&self, part: &str) -> bool {
        self.only.iter().any(|p| p == part)
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    FORMAT.get_or_init(|| args.format);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|line| {
                line.strip_prefix("model name")
                    .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "an unknown CPU".to_string());
    println!(
        "lakewriter lake benchmarks: {} cores ({cpu}), load average {}\n{args:?}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    let started = Instant::now();
    let root = tempfile::Builder::new()
        .prefix("lakewriter-bench-lake-")
        .tempdir()
        .expect("a temporary directory for the lakes");
    let db = TestDb::new("bench_lake").await;
    if args.runs_part("stream") {
        stream_bench(&db, root.path(), &args).await;
    }
    if args.runs_part("freshness") {
        freshness_bench(&db, root.path(), &args).await;
    }
    if args.runs_part("snapshot") {
        snapshot_bench(&db, root.path(), &args).await;
    }
    drop(db);
    if args.runs_part("deletes") {
        deletes_bench(root.path(), &args).await;
    }
    if args.runs_part("memory") {
        memory_bench(root.path(), &args).await;
    }
    if args.runs_part("index") {
        index_bench(root.path(), &args);
    }
    println!(
        "\ntotal time {:.1} s; load average {}",
        started.elapsed().as_secs_f64(),
        load_average()
    );
}

// ---------------------------------------------------------------------------------------------
// Measuring and printing

/// A line of a rate table: rows moved in some seconds, maybe against a reference.
struct Rate {
    name: String,
    rows: u64,
    run: Run,
    /// Seconds the reference took for the same rows; `None` on the reference itself.
    reference: Option<f64>,
    note: String,
}

fn print_rates(title: &str, reference: &str, lines: &[Rate]) {
    println!("\n{title}");
    println!(
        "  {:<52} {:>10} {:>9} {:>12} {:>7} {:>8}",
        "measurement", "rows", "seconds", "rows/s", "CPU s", "ratio"
    );
    for line in lines {
        let ratio = match line.reference {
            Some(seconds) => format!("{:.3}", seconds / line.run.seconds),
            None => "ref".to_string(),
        };
        println!(
            "  {:<52} {:>10} {:>9.3} {:>12.0} {:>7.2} {:>8}",
            line.name,
            line.rows,
            line.run.seconds,
            line.rows as f64 / line.run.seconds,
            line.run.cpu,
            ratio
        );
    }
    println!("  ratio = rows/s of the line / rows/s of {reference:?}");
    for line in lines.iter().filter(|l| !l.note.is_empty()) {
        println!("  {}: {}", line.name, line.note);
    }
}

/// A line of a value table: a measured quantity against a limit of the same unit.
struct Value {
    name: String,
    value: f64,
    /// The limit it is held against; `None` on the limit's own line.
    limit: Option<f64>,
}

fn print_values(title: &str, unit: &str, limit: &str, lines: &[Value]) {
    println!("\n{title}");
    println!("  {:<52} {:>12} {:>8}", "measurement", unit, "ratio");
    for line in lines {
        let ratio = match line.limit {
            Some(limit) => format!("{:.3}", line.value / limit),
            None => "ref".to_string(),
        };
        println!("  {:<52} {:>12.3} {:>8}", line.name, line.value, ratio);
    }
    println!("  ratio = the line's value / {limit}");
}

// ---------------------------------------------------------------------------------------------
// Lakes and the writer

/// One lake: a config naming its own slot and warehouse directory.
struct Lake {
    config: Arc<Config>,
    warehouse: PathBuf,
}

impl Lake {
    /// Writes this lake with `delete_mode = "position"`, its key index beside it.
    fn position_deletes(&mut self) {
        self.delete_mode(lakewriter::config::DeleteMode::Position);
    }

    /// Writes this lake with `mode` (its key index beside it).
    fn delete_mode(&mut self, mode: lakewriter::config::DeleteMode) {
        let mut config = (*self.config).clone();
        config.sink.delete_mode = Some(mode);
        config.sink.key_index.dir = self.warehouse.join("key-index");
        self.config = Arc::new(config);
    }
    /// A lake of `db` in `root/name`, streaming `slot`; `extra` is appended to the config.
    fn new(db: &TestDb, root: &Path, name: &str, slot: &str, extra: &str) -> Lake {
        let warehouse = root.join(name);
        std::fs::create_dir_all(&warehouse).expect("create a warehouse directory");
        let mut config = Config::parse(&db.config_toml(extra), Path::new("bench.toml"), Vec::new())
            .expect("the bench config parses");
        config.source.slot = slot.to_string();
        config.sink.warehouse = warehouse.display().to_string();
        config.sink.format = format();
        // equality deletes unless a part asks for position ones, each lake's index its own
        config.sink.delete_mode = Some(lakewriter::config::DeleteMode::Equality);
        config.sink.key_index.dir = warehouse.join("key-index");
        Lake {
            config: Arc::new(config),
            warehouse,
        }
    }

    async fn drop_slot(&self, db: &TestDb) {
        drop_slot(db, &self.config.source.slot).await;
    }

    fn remove(self) {
        std::fs::remove_dir_all(&self.warehouse).expect("remove a warehouse directory");
    }
}

async fn drop_slot(db: &TestDb, slot: &str) {
    db.client()
        .await
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("drop a replication slot");
}

/// What the catalog says of the lake's `orders` now.
#[derive(Debug, Clone)]
struct LakeState {
    /// The metadata file (Iceberg) or the log version (Delta) read.
    metadata_location: String,
    /// DuckDB's table function reading this state: `iceberg_scan('…')` or `delta_scan('…')`.
    scan: String,
    checkpoint: Option<Lsn>,
    /// `total-records` of the current snapshot's summary.
    records: Option<u64>,
    snapshots: usize,
}

impl LakeState {
    fn reached(&self, lsn: Lsn) -> bool {
        self.checkpoint.is_some_and(|c| c >= lsn)
    }
}

/// Reads the lake's `orders` through the catalog, as `lakewriter status` does; the metadata
/// file is read again only when the catalog's pointer moved.
struct LakeProbe {
    catalog: LakeCatalog,
    io: FileIO,
    table: CatalogTable,
    last: Option<LakeState>,
    /// Set for a Delta lake: its tables are read from their logs, not through the catalog.
    delta: Option<DeltaSettings>,
}

impl LakeProbe {
    async fn open(config: &Config) -> LakeProbe {
        LakeProbe {
            catalog: LakeCatalog::from_config(config)
                .await
                .expect("open the lake's catalog"),
            io: file_io(config).expect("the lake's file IO"),
            table: lake_table(&config.sink.namespace, &TableId::new("public", "orders")),
            last: None,
            delta: (config.sink.format == TableFormat::Delta)
                .then(|| DeltaSettings::from_config(config).expect("the Delta settings")),
        }
    }

    /// A Delta table's state, `None` while it has no log.
    async fn read_delta(&self, settings: &DeltaSettings) -> Option<LakeState> {
        let table = delta_tables::open(settings, &self.table)
            .await
            .expect("open the Delta table")?;
        let version = table.version();
        Some(LakeState {
            metadata_location: format!("version {version:?}"),
            scan: format!("delta_scan('{}')", settings.table_location(&self.table)),
            checkpoint: delta_tables::checkpoint(&self.table, &table)
                .await
                .expect("the Delta table's checkpoint"),
            records: None,
            snapshots: version.map_or(0, |v| usize::try_from(v + 1).unwrap_or(usize::MAX)),
        })
    }

    /// The table's state, `None` while it is not registered.
    async fn read(&mut self) -> Option<LakeState> {
        if let Some(settings) = &self.delta {
            return self.read_delta(settings).await;
        }
        let pointer = self
            .catalog
            .load(&self.table)
            .await
            .expect("load the lake table's pointer")?;
        if let Some(last) = &self.last
            && last.metadata_location == pointer.metadata_location
        {
            return Some(last.clone());
        }
        let metadata = TableMetadata::read_from(&self.io, &pointer.metadata_location)
            .await
            .expect("read the lake table's metadata");
        let records = metadata.current_snapshot().and_then(|snapshot| {
            snapshot
                .summary()
                .additional_properties
                .get("total-records")
                .and_then(|n| n.parse().ok())
        });
        let state = LakeState {
            scan: format!("iceberg_scan('{}')", pointer.metadata_location),
            checkpoint: checkpoint(&self.table, &metadata).expect("the lake's checkpoint"),
            records,
            snapshots: metadata.snapshots().count(),
            metadata_location: pointer.metadata_location,
        };
        self.last = Some(state.clone());
        Some(state)
    }

    /// Polls until `done` holds; panics when the writer stopped (`stopped`) or after `limit`.
    async fn wait(
        &mut self,
        what: &str,
        limit: Duration,
        mut stopped: impl FnMut() -> bool,
        mut done: impl FnMut(&LakeState) -> bool,
    ) -> LakeState {
        let started = Instant::now();
        loop {
            if let Some(state) = self.read().await
                && done(&state)
            {
                return state;
            }
            assert!(!stopped(), "the writer stopped before {what}");
            assert!(
                started.elapsed() < limit,
                "{what}: not reached within {limit:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// `service::run` on a task of its own, with the sink of the config's format.
struct Service {
    task: tokio::task::JoinHandle<Option<Stats>>,
    shutdown: watch::Sender<bool>,
}

impl Service {
    async fn start(config: Arc<Config>) -> Service {
        let (shutdown, stop) = watch::channel(false);
        let task = match config.sink.format {
            TableFormat::Iceberg => {
                let sink = IcebergSink::from_config(&config)
                    .await
                    .expect("open the Iceberg sink");
                tokio::spawn(async move { stats_of(service::run(config, sink, stop).await) })
            }
            TableFormat::Delta => {
                let sink = DeltaSink::from_config(&config)
                    .await
                    .expect("open the Delta sink");
                tokio::spawn(async move { stats_of(service::run(config, sink, stop).await) })
            }
        };
        Service { task, shutdown }
    }

    fn stopped(&self) -> bool {
        self.task.is_finished()
    }

    /// Asks it to stop (it commits what it holds) and waits; returns its counters.
    async fn stop(self) -> Stats {
        let _ = self.shutdown.send(true);
        self.task
            .await
            .expect("join the service::run task")
            .expect("service::run stops cleanly (its error is printed above)")
    }
}

/// The counters of a finished `service::run`, `None` (the error printed) when it failed.
fn stats_of<S: Sink>(
    result: lakewriter::Result<lakewriter::pipeline::Pipeline<S>>,
) -> Option<Stats> {
    match result {
        Ok(pipeline) => Some(pipeline.stats()),
        Err(e) => {
            eprintln!("service::run failed: {e}");
            None
        }
    }
}

/// What [`run_until`] saw.
struct Until {
    /// From the start to the poll that saw the state wanted.
    run: Run,
    /// That state.
    state: LakeState,
    /// The writer's counters when it stopped.
    stats: Stats,
    /// Seconds from the start to the first poll that found the table in the catalog.
    registered: f64,
}

/// Starts `service::run` on `lake` and stops it once the lake's state satisfies `done`; times
/// it (with this process's CPU seconds meanwhile).
async fn run_until(
    lake: &Lake,
    what: &str,
    limit: Duration,
    mut done: impl FnMut(&LakeState) -> bool,
) -> Until {
    let mut probe = LakeProbe::open(&lake.config).await;
    let cpu_before = cpu_seconds().0;
    let started = Instant::now();
    let service = Service::start(lake.config.clone()).await;
    let mut registered = None;
    let state = probe
        .wait(
            what,
            limit,
            || service.stopped(),
            |state| {
                registered.get_or_insert_with(|| started.elapsed().as_secs_f64());
                done(state)
            },
        )
        .await;
    let run = Run {
        seconds: started.elapsed().as_secs_f64(),
        cpu: cpu_seconds().0 - cpu_before,
    };
    let stats = service.stop().await;
    Until {
        run,
        state,
        stats,
        registered: registered.unwrap_or(run.seconds),
    }
}

/// Polls `pg_stat_replication` until the walsender streaming `slot` has sent up to `end`
/// (PostgreSQL's side done: decoded and handed to the socket); returns the seconds from
/// `started`, or `None` if that was not seen within `limit`.
fn watch_sent(
    url: String,
    slot: String,
    end: Lsn,
    started: Instant,
    limit: Duration,
) -> tokio::task::JoinHandle<Sent> {
    tokio::spawn(async move {
        let client = support::connect(&url).await;
        let mut sent = Sent::default();
        while started.elapsed() < limit {
            let row = client
                .query_opt(
                    "SELECT r.sent_lsn::text FROM pg_stat_replication r \
                     JOIN pg_replication_slots s ON s.active_pid = r.pid \
                     WHERE s.slot_name = $1",
                    &[&slot],
                )
                .await
                .expect("read pg_stat_replication");
            if row.is_some() && sent.streaming.is_none() {
                sent.streaming = Some(started.elapsed().as_secs_f64());
            }
            let lsn = row
                .and_then(|row| row.get::<_, Option<String>>(0))
                .and_then(|text| text.parse::<Lsn>().ok());
            if lsn.is_some_and(|lsn| lsn >= end) {
                sent.end = Some(started.elapsed().as_secs_f64());
                return sent;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sent
    })
}

/// When [`watch_sent`] first saw the slot's walsender, and when it had sent the workload's end
/// (seconds from the writer's start; 10 ms polls).
#[derive(Default, Clone, Copy)]
struct Sent {
    streaming: Option<f64>,
    end: Option<f64>,
}

/// `SELECT count(*), count(DISTINCT order_id)` of a lake table by DuckDB (an independent
/// reader), through `scan` (`iceberg_scan('…')` or `delta_scan('…')`); `None`, with the
/// reason printed, when DuckDB fails.
fn duck_count(scan: &str) -> Option<(u64, u64)> {
    duck_count_within(scan, None)
}

/// [`duck_count`], given up (the process killed, `None` printed as such) after `limit`.
fn duck_count_within(scan: &str, limit: Option<Duration>) -> Option<(u64, u64)> {
    let script = "import sys, duck\n\
                  con = duck.connect()\n\
                  con.execute('SET enable_progress_bar = false')\n\
                  row = con.sql(\n\
                  \"SELECT count(*), count(DISTINCT order_id) FROM \" + sys.argv[1]\n\
                  ).fetchone()\n\
                  print(row[0], row[1])\n";
    let started = Instant::now();
    let mut child = stack()
        .python()
        .args(["-c", script, scan])
        .env(
            "PYTHONPATH",
            support::project_dir().join("tests").join("readers"),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the project's Python for DuckDB");
    if let Some(limit) = limit {
        while child.try_wait().expect("wait for DuckDB").is_none() {
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                println!(
                    "  DuckDB had not counted the lake after {:.0} s: given up",
                    limit.as_secs_f64()
                );
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let output = child
        .wait_with_output()
        .expect("wait for the project's Python for DuckDB");
    if !output.status.success() {
        println!(
            "  DuckDB could not read the lake: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    // the counts are the last line (anything before is DuckDB's own output)
    let last = text.lines().last().unwrap_or_default();
    let mut numbers = last.split_whitespace().map(|n| n.parse::<u64>().ok());
    match (numbers.next().flatten(), numbers.next().flatten()) {
        (Some(rows), Some(keys)) => {
            println!(
                "  (DuckDB counted the lake in {:.1} s)",
                started.elapsed().as_secs_f64()
            );
            Some((rows, keys))
        }
        _ => {
            println!("  DuckDB printed {text:?}, not two counts");
            None
        }
    }
}

/// Rows of `public.orders` in PostgreSQL.
async fn postgres_count(db: &TestDb) -> u64 {
    let count: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM public.orders", &[])
        .await
        .expect("count orders in PostgreSQL")
        .get(0);
    count.unsigned_abs()
}

/// Prints how DuckDB's count of the lake compares with PostgreSQL's.
fn print_check(what: &str, lake: Option<(u64, u64)>, postgres: u64) {
    match lake {
        Some((rows, keys)) if rows == postgres && keys == rows => {
            println!("  {what}: DuckDB reads {rows} rows, as PostgreSQL holds: equal");
        }
        Some((rows, keys)) => println!(
            "  {what}: MISMATCH: DuckDB reads {rows} rows ({keys} distinct keys), PostgreSQL \
             holds {postgres}"
        ),
        None => println!("  {what}: not checked (DuckDB failed); PostgreSQL holds {postgres}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Stream

/// The workload committed after its lakes and slots existed.
struct Workload {
    /// One lake per run, each copied before the workload, each with its own slot.
    lakes: Vec<Lake>,
    /// One pg_recvlogical slot per run.
    twins: Vec<String>,
    /// Inserts, updates and deletes of the workload.
    changes: u64,
    /// Its transactions (those holding changes).
    transactions: u64,
    /// Commit LSN of its last transaction holding changes: the checkpoint the lake must reach.
    last_commit: Lsn,
    /// End of its last commit: where pg_recvlogical stops.
    end: Lsn,
}

impl Workload {
    async fn prepare(db: &TestDb, root: &Path, args: &Args) -> Workload {
        let seeded = Instant::now();
        db.psql(&[
            "-v",
            &format!("rows={}", args.seed_rows),
            "-f",
            "sql/orders.sql",
        ]);
        // Each lake is copied by its own first run, which creates its slot and the
        // publication; nothing changes orders between the copies and the twins' creation, so
        // every slot starts where its lake ends.
        let mut lakes = Vec::new();
        let sides = if args.metrics { 2 } else { 1 };
        // the masked lakes come last: two columns hashed, with a key from a file
        let key = root.join("masking.key");
        std::fs::write(&key, "bench-masking-key-0123456789abcdef0123456789")
            .expect("write the masking key");
        let masked = format!(
            "[sink.tables.\"public.orders\"]\ncolumns = {{ customer_id = \"hash\", status = \"hash\" }}\n\
             [sink.masking]\nkey_file = \"{}\"\n",
            key.display()
        );
        let masked_sides = sides + usize::from(args.masking);
        for run in 0..args.runs * (masked_sides + usize::from(args.position)) {
            let extra = if run >= args.runs * sides && run < args.runs * masked_sides {
                format!("{masked}[flush]\nmax_latency = \"1s\"\n")
            } else {
                "[flush]\nmax_latency = \"1s\"\n".to_string()
            };
            let mut lake = Lake::new(
                db,
                root,
                &format!("stream{run}"),
                &format!("{}_lake{run}", db.slot),
                &extra,
            );
            // the position-delete lakes come last, each with its key index beside it
            if run >= args.runs * masked_sides {
                lake.position_deletes();
            }
            let copied = run_until(
                &lake,
                "the initial snapshot",
                Duration::from_secs(600),
                |s| s.checkpoint.is_some(),
            )
            .await;
            // (a Delta log carries no row total to check cheaply here)
            if copied.state.records.is_some() {
                assert_eq!(
                    copied.state.records,
                    Some(args.seed_rows),
                    "the initial snapshot holds the seed rows"
                );
            }
            lakes.push(lake);
        }
        let client = db.client().await;
        let twins: Vec<String> = (0..args.runs)
            .map(|run| format!("{}_twin{run}", db.slot))
            .collect();
        for twin in &twins {
            client
                .execute(
                    "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[twin],
                )
                .await
                .expect("create a twin slot for pg_recvlogical");
        }
        let committing = Instant::now();
        db.psql(&[
            "-v",
            &format!("rounds={}", args.rounds),
            "-v",
            &format!("batch={}", args.batch),
            "-f",
            "sql/workload.sql",
        ]);
        let committed = committing.elapsed().as_secs_f64();

        // Counted from the pgoutput stream itself (peeked: the slot is left as it was).
        let peeked = Instant::now();
        let rows = client
            .query(
                "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, \
                 'proto_version', '1', 'publication_names', $2)",
                &[&twins[0], &db.publication],
            )
            .await
            .expect("peek the twin slot");
        let (mut changes, mut transactions, mut in_transaction) = (0u64, 0u64, 0u64);
        let (mut last_commit, mut end) = (Lsn::ZERO, Lsn::ZERO);
        let mut bytes = 0usize;
        for row in &rows {
            let data: &[u8] = row.get(0);
            bytes += data.len();
            match pgoutput::decode(data).expect("a peeked pgoutput message decodes") {
                Message::Begin(_) => in_transaction = 0,
                Message::Insert(_) | Message::Update(_) | Message::Delete(_) => {
                    in_transaction += 1;
                }
                Message::Commit(commit) => {
                    end = end.max(commit.end_lsn);
                    if in_transaction > 0 {
                        changes += in_transaction;
                        transactions += 1;
                        last_commit = last_commit.max(commit.commit_lsn);
                    }
                }
                _ => {}
            }
        }
        assert!(changes > 0, "the workload made no change");
        println!(
            "\nworkload: {} seed rows copied into {} lake(s) (setup {:.1} s); {} rounds of {} \
             committed in {committed:.1} s: {changes} row changes in {transactions} transactions, \
             {:.1} MB of pgoutput, last commit at {last_commit}, ending at {end} (counted in \
             {:.1} s)",
            args.seed_rows,
            lakes.len(),
            committing.duration_since(seeded).as_secs_f64(),
            args.rounds,
            args.batch,
            bytes as f64 / 1e6,
            peeked.elapsed().as_secs_f64()
        );
        Workload {
            lakes,
            twins,
            changes,
            transactions,
            last_commit,
            end,
        }
    }
}

async fn stream_bench(db: &TestDb, root: &Path, args: &Args) {
    let workload = Workload::prepare(db, root, args).await;
    let output = root.join("recvlogical");
    std::fs::create_dir_all(&output).expect("a directory for pg_recvlogical's files");
    let (mut references, mut ours, mut served) = (Vec::new(), Vec::new(), Vec::new());
    let mut masked = Vec::new();
    let mut positioned = Vec::new();
    let mut lake_states = Vec::new();
    // the metrics of the measured side with --metrics, paused for the runs without them
    let metrics = args.metrics.then(|| {
        let config = &workload.lakes[0].config;
        let metrics = lakewriter::metrics::install(config);
        lakewriter::metrics::set_recording(false);
        metrics
    });
    // alternated, so that a drift of the machine's load touches both sides alike
    for run in 0..args.runs {
        let file = output.join(format!("run{run}.out"));
        let (timed, written) = recvlogical_drain(db, &workload.twins[run], workload.end, &file);
        println!(
            "  run {}: pg_recvlogical {:.3} s, {:.2} CPU s ({:.1} MB written)",
            run + 1,
            timed.seconds,
            timed.cpu,
            written as f64 / 1e6
        );
        std::fs::remove_file(&file).expect("remove pg_recvlogical's file");
        references.push(timed);

        let lake = &workload.lakes[run];
        let limit = Duration::from_secs(1800);
        let sent = watch_sent(
            db.url.clone(),
            lake.config.source.slot.clone(),
            workload.end,
            Instant::now(),
            limit,
        );
        let until = run_until(lake, "the workload's last commit in the lake", limit, |s| {
            s.reached(workload.last_commit)
        })
        .await;
        sent.abort();
        let sent = sent.await.unwrap_or_default();
        println!(
            "  run {}: service::run {:.3} s, {:.2} CPU s (received {} changes in {} \
             transactions; {} lake commits; the walsender streamed from {} and had sent the \
             end after {})",
            run + 1,
            until.run.seconds,
            until.run.cpu,
            until.stats.changes,
            until.stats.transactions,
            until.stats.commits,
            sent.streaming
                .map_or_else(|| "-".to_string(), |s| format!("{s:.3} s")),
            sent.end
                .map_or_else(|| "-".to_string(), |s| format!("{s:.3} s")),
        );
        ours.push(until.run);
        lake_states.push(until.state);

        if let Some(metrics) = metrics {
            let lake = &workload.lakes[args.runs + run];
            lakewriter::metrics::set_recording(true);
            let scraping = Scraping::start(lake.config.clone(), metrics);
            let until = run_until(lake, "the workload's last commit in the lake", limit, |s| {
                s.reached(workload.last_commit)
            })
            .await;
            let scrapes = scraping.stop();
            lakewriter::metrics::set_recording(false);
            println!(
                "  run {}: service::run with metrics served and scraped every second {:.3} s, \
                 {:.2} CPU s ({} scrapes, {} changes received)",
                run + 1,
                until.run.seconds,
                until.run.cpu,
                scrapes,
                until.stats.changes,
            );
            served.push(until.run);
        }
        if args.masking {
            let sides = if args.metrics { 2 } else { 1 };
            let lake = &workload.lakes[args.runs * sides + run];
            let until = run_until(lake, "the workload's last commit in the lake", limit, |s| {
                s.reached(workload.last_commit)
            })
            .await;
            println!(
                "  run {}: service::run with customer_id and status hashed {:.3} s, {:.2} CPU s \
                 ({} changes received)",
                run + 1,
                until.run.seconds,
                until.run.cpu,
                until.stats.changes,
            );
            masked.push(until.run);
        }
        if args.position {
            let sides = if args.metrics { 2 } else { 1 } + usize::from(args.masking);
            let lake = &workload.lakes[args.runs * sides + run];
            let until = run_until(lake, "the workload's last commit in the lake", limit, |s| {
                s.reached(workload.last_commit)
            })
            .await;
            println!(
                "  run {}: service::run with delete_mode = \"position\" {:.3} s, {:.2} CPU s \
                 ({} changes received, {} lake commits)",
                run + 1,
                until.run.seconds,
                until.run.cpu,
                until.stats.changes,
                until.stats.commits,
            );
            positioned.push(until.run);
        }
    }
    // the lakes are alike: DuckDB reads one (merge-on-read of equality deletes is slow there)
    let postgres = postgres_count(db).await;
    if let Some(state) = lake_states.first() {
        print_check("lake of run 1", duck_count(&state.scan), postgres);
    }
    for lake in &workload.lakes {
        lake.drop_slot(db).await;
    }
    for twin in &workload.twins {
        drop_slot(db, twin).await;
    }
    for lake in workload.lakes {
        lake.remove();
    }
    let reference = fastest(&references);
    let mut lines = vec![
        Rate {
            name: "pg_recvlogical (pgoutput, to a file)".into(),
            rows: workload.changes,
            run: reference,
            reference: None,
            note: String::new(),
        },
        Rate {
            name: "service::run to the last commit in the lake".into(),
            rows: workload.changes,
            run: fastest(&ours),
            reference: Some(reference.seconds),
            note: "[flush] max_latency = \"1s\" and the default idle_rows for this \
                   measurement (a buffer of at least idle_rows rows is committed once the \
                   source is idle); from the call (restart on the lake: connections, table \
                   preparation) to the poll (every 50 ms) that saw the checkpoint reach \
                   the workload's last commit; target ratio ≥ 0.8"
                .into(),
        },
    ];
    if !served.is_empty() {
        let (with, without) = (fastest(&served), fastest(&ours));
        lines.push(Rate {
            name: "the same, metrics served and scraped every second".into(),
            rows: workload.changes,
            run: with,
            reference: Some(reference.seconds),
            note: format!(
                "/metrics on 127.0.0.1 scraped every second, the source sampled every 5 s; \
                 rows/s with metrics over rows/s without: {:.3} (target ≥ 0.97)",
                without.seconds / with.seconds
            ),
        });
    }
    if !masked.is_empty() {
        let (with, without) = (fastest(&masked), fastest(&ours));
        lines.push(Rate {
            name: "the same, customer_id and status hashed".into(),
            rows: workload.changes,
            run: with,
            reference: Some(reference.seconds),
            note: format!(
                "[sink.tables.\"public.orders\"] columns = {{ customer_id = \"hash\", status = \
                 \"hash\" }} (HMAC-SHA-256 of every value, new and old rows); rows/s hashed over \
                 rows/s without: {:.3} (target ≥ 0.9)",
                without.seconds / with.seconds
            ),
        });
    }
    if !positioned.is_empty() {
        let (with, without) = (fastest(&positioned), fastest(&ours));
        lines.push(Rate {
            name: "the same, delete_mode = \"position\"".into(),
            rows: workload.changes,
            run: with,
            reference: Some(reference.seconds),
            note: format!(
                "[sink] delete_mode = \"position\": each update's old row found in the key \
                 index (redb) and removed by a position delete; rows/s in position mode over \
                 rows/s in equality mode: {:.3} (target ≥ 0.9)",
                without.seconds / with.seconds
            ),
        });
    }
    print_rates(
        &format!(
            "1. stream, PostgreSQL to committed {}: {} row changes in {} transactions \
             (each side run {} times, each run on its own slot; best run kept)",
            format_name(),
            workload.changes,
            workload.transactions,
            args.runs
        ),
        "pg_recvlogical",
        &lines,
    );
}

/// `/metrics` served as `run` serves it (with the source's sampler), and a scraper reading it
/// every second on a thread of its own, as Prometheus would.
struct Scraping {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    scraper: std::thread::JoinHandle<u64>,
}

impl Scraping {
    fn start(config: Arc<Config>, metrics: &'static lakewriter::metrics::Metrics) -> Scraping {
        let addr = support::http::free_address();
        let listener = lakewriter::metrics::server::bind(addr).expect("bind the metrics address");
        let server = tokio::spawn(async move {
            let _ = lakewriter::metrics::server::serve(listener, metrics).await;
        });
        let sampler = tokio::spawn(lakewriter::metrics::sampler::run(
            config,
            metrics,
            Duration::from_secs(5),
        ));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let scraper = std::thread::spawn(move || {
            let mut scrapes = 0;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                if support::http::get(addr, "/metrics", &[]).is_some_and(|a| a.status == 200) {
                    scrapes += 1;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            scrapes
        });
        Scraping {
            tasks: vec![server, sampler],
            stop,
            scraper,
        }
    }

    /// Stops serving and scraping; the number of successful scrapes.
    fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in self.tasks {
            task.abort();
        }
        self.scraper.join().expect("the scraper thread")
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Freshness

/// Creates `orders` with `rows` rows when it does not exist yet.
async fn ensure_orders(db: &TestDb, rows: u64) {
    let exists: bool = db
        .client()
        .await
        .query_one("SELECT to_regclass('public.orders') IS NOT NULL", &[])
        .await
        .expect("look for orders")
        .get(0);
    if !exists {
        db.psql(&["-v", &format!("rows={rows}"), "-f", "sql/orders.sql"]);
    }
}

/// One committed single-row insert into orders: a lower bound of its commit LSN, and when the
/// commit returned.
async fn single_row_commit(client: &mut tokio_postgres::Client, n: usize) -> (Lsn, Instant) {
    let transaction = client
        .transaction()
        .await
        .expect("begin a single-row transaction");
    transaction
        .execute(
            "INSERT INTO public.orders (customer_id, order_date, total_amount, status) \
             VALUES ($1, date '2025-03-01', 1.00, 'pending')",
            &[&i32::try_from(n).expect("a small number")],
        )
        .await
        .expect("insert one row");
    let lsn: String = transaction
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .expect("read the WAL insert position")
        .get(0);
    transaction
        .commit()
        .await
        .expect("commit the single-row transaction");
    (lsn.parse().expect("an LSN"), Instant::now())
}

async fn freshness_bench(db: &TestDb, root: &Path, args: &Args) {
    ensure_orders(db, args.seed_rows).await;
    let lake = Lake::new(db, root, "fresh", &format!("{}_fresh", db.slot), "");
    let max_latency = lake.config.flush.max_latency.get();
    let mut probe = LakeProbe::open(&lake.config).await;
    let service = Service::start(lake.config.clone()).await;
    let copied = probe
        .wait(
            "the initial snapshot",
            Duration::from_secs(600),
            || service.stopped(),
            |s| s.checkpoint.is_some(),
        )
        .await;
    // let the writer settle into streaming
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut client = db.client().await;
    let spacing = Duration::from_secs(args.spacing);
    let limit = max_latency * 3 + spacing * args.commits as u32 + Duration::from_secs(60);
    let mut freshness: Vec<Option<f64>> = vec![None; args.commits];
    let mut pending: Vec<(usize, Lsn, Instant)> = Vec::new();
    let first = Instant::now();
    let mut made = 0;
    while made < args.commits || !pending.is_empty() {
        if made < args.commits && first.elapsed() >= spacing * made as u32 {
            let (lsn, at) = single_row_commit(&mut client, made + 1).await;
            pending.push((made, lsn, at));
            made += 1;
        }
        if let Some(state) = probe.read().await {
            pending.retain(|&(n, lsn, at)| {
                if state.reached(lsn) {
                    freshness[n] = Some(at.elapsed().as_secs_f64());
                    false
                } else {
                    true
                }
            });
        }
        assert!(!service.stopped(), "the writer stopped while streaming");
        assert!(
            first.elapsed() < limit,
            "freshness: the commits did not all reach the lake within {limit:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    let stats = service.stop().await;
    lake.drop_slot(db).await;
    lake.remove();
    let mut seconds: Vec<f64> = freshness
        .iter()
        .map(|f| f.expect("every commit measured"))
        .collect();
    for (n, s) in seconds.iter().enumerate() {
        println!(
            "  commit {} (made {} s after the first): in the lake {s:.3} s after it returned",
            n + 1,
            args.spacing * n as u64
        );
    }
    seconds.sort_by(f64::total_cmp);
    let median = if seconds.len() % 2 == 1 {
        seconds[seconds.len() / 2]
    } else {
        (seconds[seconds.len() / 2 - 1] + seconds[seconds.len() / 2]) / 2.0
    };
    let limit = max_latency.as_secs_f64();
    print_values(
        &format!(
            "2. freshness at the default flush policy: {} single-row commits {} s apart, \
             while streaming (the lake copied {} rows first; {} lake commits in all)",
            args.commits,
            args.spacing,
            copied.records.unwrap_or(0),
            stats.commits
        ),
        "seconds",
        "[flush] max_latency",
        &[
            Value {
                name: "[flush] max_latency (default)".into(),
                value: limit,
                limit: None,
            },
            Value {
                name: "freshness, min".into(),
                value: seconds[0],
                limit: Some(limit),
            },
            Value {
                name: "freshness, median".into(),
                value: median,
                limit: Some(limit),
            },
            Value {
                name: "freshness, max".into(),
                value: seconds[seconds.len() - 1],
                limit: Some(limit),
            },
        ],
    );
    println!(
        "  freshness = from the commit returning to the poll (every 50 ms) that saw the lake's \
         checkpoint reach it; a buffer is flushed when its oldest change is max_latency old, \
         checked every max_latency / 4 clamped to [50 ms, 1 s]"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Snapshot

async fn snapshot_bench(db: &TestDb, root: &Path, args: &Args) {
    let grown = Instant::now();
    ensure_orders(db, 0).await;
    let present = postgres_count(db).await;
    let missing = args.snapshot_rows.saturating_sub(present);
    if missing > 0 {
        db.psql(&["-v", &format!("rows={missing}"), "-f", "sql/orders.sql"]);
    }
    let client = db.client().await;
    // hint bits and the visibility map set, statistics fresh: both sides read a settled table
    client
        .batch_execute("VACUUM (ANALYZE) public.orders")
        .await
        .expect("vacuum orders");
    let rows = postgres_count(db).await;
    let pages: i64 = client
        .query_one(
            "SELECT relpages::bigint FROM pg_class WHERE oid = 'public.orders'::regclass",
            &[],
        )
        .await
        .expect("read the size of orders")
        .get(0);
    println!(
        "\nsnapshot table: {rows} rows, {pages} pages of 8 KiB (grown and vacuumed in {:.1} s)",
        grown.elapsed().as_secs_f64()
    );
    let (mut references, mut ours) = (Vec::new(), Vec::new());
    let mut copy_bytes = 0;
    for run in 0..args.runs {
        let (timed, bytes) =
            copy_drain(&client, "COPY public.orders TO STDOUT (FORMAT binary)").await;
        println!(
            "  run {}: COPY binary {:.3} s, {:.2} CPU s ({:.1} MB)",
            run + 1,
            timed.seconds,
            timed.cpu,
            bytes as f64 / 1e6
        );
        references.push(timed);
        copy_bytes = bytes;

        let lake = Lake::new(
            db,
            root,
            &format!("snapshot{run}"),
            &format!("{}_snap{run}", db.slot),
            "",
        );
        let until = run_until(
            &lake,
            "the initial snapshot",
            Duration::from_secs(1800),
            |s| s.checkpoint.is_some(),
        )
        .await;
        // a Delta log carries no row total: DuckDB counts the table instead (after the timing)
        let records = until
            .state
            .records
            .or_else(|| duck_count(&until.state.scan).map(|(rows, _)| rows));
        println!(
            "  run {}: service::run {:.3} s, {:.2} CPU s ({} rows in the lake, {} snapshots; \
             the table was in the catalog after {:.3} s)",
            run + 1,
            until.run.seconds,
            until.run.cpu,
            records.unwrap_or(0),
            until.state.snapshots,
            until.registered
        );
        if records != Some(rows) {
            println!(
                "  MISMATCH: the lake's snapshot holds {records:?} records, PostgreSQL {rows}"
            );
        }
        ours.push(until.run);
        lake.drop_slot(db).await;
        lake.remove();
    }
    let reference = fastest(&references);
    print_rates(
        &format!(
            "3. snapshot into committed {}: {rows} rows, {:.1} MB as COPY binary (each \
             side run {} times; best run kept)",
            format_name(),
            copy_bytes as f64 / 1e6,
            args.runs
        ),
        "COPY binary",
        &[
            Rate {
                name: "COPY binary, drained and counted".into(),
                rows,
                run: reference,
                reference: None,
                note: String::new(),
            },
            Rate {
                name: "service::run to the initial snapshot committed".into(),
                rows,
                run: fastest(&ours),
                reference: Some(reference.seconds),
                note: "a fresh lake and slot: from the call (slot with exported snapshot, \
                       connections, binary COPY with the default snapshot_parallelism = 2, \
                       Parquet, commits) to the poll (every 50 ms) that saw the checkpoint; \
                       target ratio ≥ 0.5"
                    .into(),
            },
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Memory

/// Reads VmRSS and VmHWM (kB) of `/proc/<pid>/status`.
fn memory_of(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status.lines().find_map(|line| {
            line.strip_prefix(name)?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Bytes of the files under `dir` (0 when it is gone).
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => tree_bytes(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// What the sampler saw.
#[derive(Debug, Clone, Copy, Default)]
struct Samples {
    /// The largest VmRSS sampled, kB.
    rss_kb: u64,
    /// The last VmHWM read, kB: the kernel's own peak of RSS.
    hwm_kb: u64,
    /// The largest size of the spill directory sampled, bytes.
    spill_bytes: u64,
}

/// A thread sampling a child's memory every 100 ms (and its spill directory every second).
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Samples>>,
    thread: JoinHandle<()>,
}

impl Sampler {
    fn start(pid: u32, spill: PathBuf) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Samples::default()));
        let thread = {
            let (stop, samples) = (stop.clone(), samples.clone());
            std::thread::spawn(move || {
                let mut tick = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let Some((rss, hwm)) = memory_of(pid) else {
                        break;
                    };
                    let spill_bytes = if tick.is_multiple_of(10) {
                        tree_bytes(&spill)
                    } else {
                        0
                    };
                    {
                        let mut s = samples.lock().unwrap_or_else(PoisonError::into_inner);
                        s.rss_kb = s.rss_kb.max(rss);
                        s.hwm_kb = s.hwm_kb.max(hwm);
                        s.spill_bytes = s.spill_bytes.max(spill_bytes);
                    }
                    tick += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Sampler {
            stop,
            samples,
            thread,
        }
    }

    fn now(&self) -> Samples {
        *self.samples.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn finish(self) -> Samples {
        let Sampler {
            stop,
            samples,
            thread,
        } = self;
        stop.store(true, Ordering::Relaxed);
        thread.join().expect("join the memory sampler");
        *samples.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The writer's process: SIGKILLed if still running when dropped (a failed bench).
struct Writer(Child);

impl Drop for Writer {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

const MIB: f64 = 1024.0 * 1024.0;

async fn memory_bench(root: &Path, args: &Args) {
    let db = TestDb::new("bench_lake_memory").await;
    db.psql(&[
        "-v",
        &format!("rows={MEMORY_SEED_ROWS}"),
        "-f",
        "sql/orders.sql",
    ]);
    let spill = root.join("spill");
    std::fs::create_dir_all(&spill).expect("create the spill directory");
    // max_bytes (default 128 MiB) may not exceed the budget: a small budget halves it
    let max_bytes = if args.budget_mib < 128 {
        format!("max_bytes = \"{}KiB\"\n", args.budget_mib * 512)
    } else {
        String::new()
    };
    let text = db.config_toml(&format!(
        "[flush]\nmemory_budget = \"{}MiB\"\n{max_bytes}spill_dir = \"{}\"\n",
        args.budget_mib,
        spill.display()
    ));
    let path = root.join("memory.toml");
    std::fs::write(&path, &text).expect("write the memory measurement's config");
    let config = Config::parse(&text, &path, Vec::new()).expect("the memory config parses");
    let budget = config.flush.memory_budget.bytes();
    let log_path = root.join("memory.log");
    let log = File::create(&log_path).expect("create the writer's log file");
    let binary = support::writer::binary();
    let started = Instant::now();
    let mut writer = Writer(
        Command::new(&binary)
            .args(["run", "--config"])
            .arg(&path)
            .env("LAKEWRITER_LOG", "lakewriter=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start lakewriter run"),
    );
    let pid = writer.0.id();
    let sampler = Sampler::start(pid, spill.clone());
    let mut probe = LakeProbe::open(&config).await;
    let mut exited = || matches!(writer.0.try_wait(), Ok(Some(_)));
    probe
        .wait(
            "the initial snapshot",
            Duration::from_secs(600),
            &mut exited,
            |s| s.checkpoint.is_some(),
        )
        .await;
    let after_snapshot = memory_of(pid).expect("the writer's memory after its snapshot");
    println!(
        "\nmemory: {} run, [flush] memory_budget = {}, max_bytes = {}, max_rows = {}; \
         initial snapshot of {MEMORY_SEED_ROWS} rows committed in {:.1} s, RSS then {:.1} MiB",
        binary.display(),
        config.flush.memory_budget,
        config.flush.max_bytes,
        config.flush.max_rows,
        started.elapsed().as_secs_f64(),
        after_snapshot.0 as f64 / 1024.0
    );

    let mut client = db.client().await;
    let inserting = Instant::now();
    let transaction = client
        .transaction()
        .await
        .expect("begin the large transaction");
    let inserted = transaction
        .execute(
            "INSERT INTO public.orders \
               (customer_id, order_date, total_amount, status, created_at, updated_at) \
             SELECT 1 + g % 9999, date '2025-04-01' + (g % 30)::int, \
                    ((g % 100000) / 100.0)::numeric(10, 2), \
                    (ARRAY['pending', 'paid', 'shipped', 'delivered', 'cancelled'])[1 + g % 5], \
                    timestamptz '2025-04-01 00:00:00+00' + g * interval '1 ms', \
                    timestamptz '2025-04-01 00:00:00+00' + g * interval '2 ms' \
             FROM generate_series(1::bigint, $1::bigint) AS g",
            &[&i64::try_from(args.big_rows).expect("--big-rows fits i64")],
        )
        .await
        .expect("insert the large transaction's rows");
    let lsn: String = transaction
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .expect("read the WAL insert position")
        .get(0);
    let lsn: Lsn = lsn.parse().expect("an LSN");
    transaction
        .commit()
        .await
        .expect("commit the large transaction");
    let committed = Instant::now();
    println!(
        "  one transaction of {inserted} rows committed in {:.1} s (its commit at or after {lsn})",
        committed.duration_since(inserting).as_secs_f64()
    );
    // waited for by hand, to show the memory on the way
    let limit = Duration::from_secs(3 * 3600);
    let mut shown = Instant::now();
    let state = loop {
        if let Some(state) = probe.read().await
            && state.reached(lsn)
        {
            break state;
        }
        assert!(
            !exited(),
            "the writer exited before committing the large transaction (log: {})",
            log_tail(&log_path)
        );
        assert!(
            committed.elapsed() < limit,
            "the large transaction did not reach the lake within {limit:?}"
        );
        if shown.elapsed() >= Duration::from_secs(30) {
            shown = Instant::now();
            let samples = sampler.now();
            let current = memory_of(pid).map_or(0, |m| m.0);
            println!(
                "  +{:.0} s: RSS {:.1} MiB (peak {:.1} MiB), spill directory {:.1} MiB",
                committed.elapsed().as_secs_f64(),
                current as f64 / 1024.0,
                samples.hwm_kb as f64 / 1024.0,
                tree_bytes(&spill) as f64 / MIB
            );
        }
        tokio::time::sleep(POLL).await;
    };
    let to_lake = committed.elapsed().as_secs_f64();
    // read just before SIGTERM: the peak of the whole run so far
    let (rss_now, hwm) = memory_of(pid).expect("the writer's memory before SIGTERM");
    let (cpu, _) = cpu_of(&pid.to_string());
    let stopping = Instant::now();
    let signalled = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(signalled.success(), "SIGTERM to the writer");
    let status = writer.0.wait().expect("wait for the writer");
    let stop_seconds = stopping.elapsed().as_secs_f64();
    let samples = sampler.finish();
    assert!(
        status.success(),
        "the writer failed: {status} (log: {})",
        log_tail(&log_path)
    );
    let postgres = postgres_count(&db).await;

    println!(
        "  in the lake {to_lake:.1} s after the commit ({:.0} rows/s), {cpu:.1} CPU s in the \
         writer in all; RSS {:.1} MiB when seen; stopped {stop_seconds:.1} s after SIGTERM; \
         spill directory peaked at {:.1} MiB (sampled every second)",
        args.big_rows as f64 / to_lake,
        rss_now as f64 / 1024.0,
        samples.spill_bytes as f64 / MIB
    );
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    for line in log.lines().filter(|line| {
        ["spill", "stopp", "WARN", "ERROR"]
            .iter()
            .any(|word| line.contains(word))
    }) {
        println!("  log: {}", strip_ansi(line));
    }
    match state.records {
        Some(records) if records == postgres => println!(
            "  the lake's snapshot summary holds {records} records, as PostgreSQL holds: equal"
        ),
        records => println!(
            "  MISMATCH: the lake's snapshot summary holds {records:?} records, PostgreSQL \
             {postgres}"
        ),
    }
    print_check(
        "the lake after the large transaction",
        duck_count(&state.scan),
        postgres,
    );
    // the database and its warehouse (the lake DuckDB just read) go only now
    drop(db);
    let budget_mib = budget as f64 / MIB;
    let peak_mib = hwm.max(samples.hwm_kb) as f64 / 1024.0;
    print_values(
        &format!(
            "4. memory: one transaction of {} rows streamed through the writer's binary",
            args.big_rows
        ),
        "MiB",
        "[flush] memory_budget",
        &[
            Value {
                name: "[flush] memory_budget".into(),
                value: budget_mib,
                limit: None,
            },
            Value {
                name: "RSS after the initial snapshot".into(),
                value: after_snapshot.0 as f64 / 1024.0,
                limit: Some(budget_mib),
            },
            Value {
                name: "largest RSS sampled (every 100 ms)".into(),
                value: samples.rss_kb as f64 / 1024.0,
                limit: Some(budget_mib),
            },
            Value {
                name: "peak RSS (VmHWM before SIGTERM)".into(),
                value: peak_mib,
                limit: Some(budget_mib),
            },
        ],
    );
    let over = peak_mib - budget_mib;
    println!(
        "  peak RSS - budget = {over:.1} MiB (target ≤ 100 MiB): {}",
        if over <= 100.0 { "within" } else { "OVER" }
    );
}

/// The last lines of the writer's log, for a failure message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..]
        .iter()
        .map(|line| strip_ansi(line))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The line without terminal colour codes (`ESC [ … m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// 5. Deletes in each delete mode

/// The delete modes the deletes part compares, one lake each, and their names.
const DELETE_MODES: [lakewriter::config::DeleteMode; 3] = [
    lakewriter::config::DeleteMode::Equality,
    lakewriter::config::DeleteMode::Position,
    lakewriter::config::DeleteMode::DeletionVector,
];
const MODE_NAMES: [&str; 3] = ["equality", "position", "deletion_vector"];

/// `--delete-rows` rows copied into three lakes, one per `[sink] delete_mode`; half their keys
/// deleted in PostgreSQL (transactions of 100 000, so none spills); each lake's writer timed
/// to the last delete; then a query over each (lakewriter's DataFusion and DuckDB), and the
/// position lake's key index rebuilt from scratch, against reading the key column of the
/// same table through the same merge-on-read.
async fn deletes_bench(root: &Path, args: &Args) {
    assert_eq!(
        format(),
        TableFormat::Iceberg,
        "the deletes part is for Iceberg"
    );
    let db = TestDb::new("bench_deletes").await;
    db.psql(&[
        "-v",
        &format!("rows={}", args.delete_rows),
        "-f",
        "sql/orders.sql",
    ]);
    let client = db.client().await;
    client
        .batch_execute("VACUUM (ANALYZE) public.orders")
        .await
        .expect("vacuum orders");
    let mut lakes = Vec::new();
    for (i, mode) in DELETE_MODES.into_iter().enumerate() {
        let mut lake = Lake::new(
            &db,
            root,
            &format!("deletes{i}"),
            &format!("{}_deletes{i}", db.slot),
            "[flush]\nmax_latency = \"1s\"\n",
        );
        lake.delete_mode(mode);
        run_until(
            &lake,
            "the initial snapshot",
            Duration::from_secs(3600),
            |s| s.checkpoint.is_some(),
        )
        .await;
        lakes.push(lake);
    }
    let (min, max): (i64, i64) = {
        let row = client
            .query_one(
                "SELECT min(order_id)::bigint, max(order_id)::bigint FROM orders",
                &[],
            )
            .await
            .expect("read the key range");
        (row.get(0), row.get(1))
    };
    let step = 200_000i64;
    let mut bound = Lsn::ZERO;
    let mut deleted = 0u64;
    let mut from = min;
    while from <= max {
        let transaction = client.simple_query("BEGIN").await;
        transaction.expect("begin");
        let n = client
            .execute(
                "DELETE FROM orders WHERE order_id % 2 = 0 AND order_id >= $1::bigint \
                 AND order_id < $2::bigint",
                &[&from, &(from + step)],
            )
            .await
            .expect("delete");
        deleted += n;
        let inside: String = client
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .expect("read the WAL position")
            .get(0);
        client.simple_query("COMMIT").await.expect("commit");
        bound = inside.parse().expect("an LSN");
        from += step;
    }
    println!(
        "\ndeletes: {} rows copied into an equality, a position and a deletion-vector lake; \
         {deleted} of them deleted in PostgreSQL",
        args.delete_rows
    );
    let mut streamed = Vec::new();
    for (lake, mode) in lakes.iter().zip(MODE_NAMES) {
        let until = run_until(lake, "the last delete", Duration::from_secs(3600), |s| {
            s.reached(bound)
        })
        .await;
        println!(
            "  {mode}: the deletes committed in {:.3} s, {:.2} CPU s ({} lake commits)",
            until.run.seconds, until.run.cpu, until.stats.commits
        );
        streamed.push(until.run);
    }
    let postgres = postgres_count(&db).await;
    let namespace = &lakes[0].config.sink.namespace;
    let sql = format!("SELECT count(*), sum(total_amount) FROM {namespace}.orders");
    let sql = sql.as_str();
    let mut queried = Vec::new();
    let mut ducked = Vec::new();
    for (lake, mode) in lakes.iter().zip(MODE_NAMES).rev() {
        let mut best = f64::MAX;
        let mut printed = Vec::new();
        for _ in 0..args.runs {
            printed.clear();
            let started = Instant::now();
            lakewriter::verify::query::run(
                &lake.config,
                sql,
                lakewriter::verify::query::OutputFormat::Csv,
                &mut printed,
            )
            .await
            .expect("query the lake");
            best = best.min(started.elapsed().as_secs_f64());
        }
        let text = String::from_utf8_lossy(&printed);
        println!(
            "  {mode}: lakewriter query {best:.3} s: {}",
            text.trim().replace('\n', " | ")
        );
        queried.push(best);
        let state = LakeProbe::open(&lake.config)
            .await
            .read()
            .await
            .expect("the lake table");
        let started = Instant::now();
        let counted = duck_count_within(&state.scan, Some(args.duck_limit));
        ducked.push(started.elapsed().as_secs_f64());
        if counted.is_some() {
            print_check(&format!("{mode} lake"), counted, postgres);
        }
    }
    // measured position first, so that a DuckDB given up on cannot hold the rest back
    queried.reverse();
    ducked.reverse();
    // the key index rebuilt from every live file, against a read of the key column
    let position = &lakes[1];
    let mut keys_read = Vec::new();
    let started = Instant::now();
    lakewriter::verify::query::run(
        &position.config,
        &format!("SELECT count(order_id) FROM {namespace}.orders"),
        lakewriter::verify::query::OutputFormat::Csv,
        &mut keys_read,
    )
    .await
    .expect("read the key column");
    let key_read = started.elapsed().as_secs_f64();
    let sink = IcebergSink::from_config(&position.config)
        .await
        .expect("a sink");
    let started = Instant::now();
    let rebuilt = sink
        .rebuild_key_index(&TableId::new("public", "orders"))
        .await
        .expect("rebuild the key index");
    let rebuild = started.elapsed().as_secs_f64();
    // the index file is named after the table and a digest of its location
    let index_bytes: u64 = std::fs::read_dir(
        position
            .warehouse
            .join("key-index")
            .join(&position.config.sink.namespace),
    )
    .map(|entries| {
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("orders-"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
    .unwrap_or(0);
    println!(
        "\n5. deletes: {deleted} keys deleted of {} (best of {} for the queries)",
        args.delete_rows, args.runs
    );
    println!(
        "  streaming the deletes: equality {:.3} s, position {:.3} s, deletion vectors {:.3} s: \
         rate over equality's {:.3} and {:.3} (target ≥ 0.9)",
        streamed[0].seconds,
        streamed[1].seconds,
        streamed[2].seconds,
        streamed[0].seconds / streamed[1].seconds,
        streamed[0].seconds / streamed[2].seconds
    );
    println!(
        "  `{sql}`: equality {:.3} s, position {:.3} s, deletion vectors {:.3} s: {:.2}× and \
         {:.2}× as fast",
        queried[0],
        queried[1],
        queried[2],
        queried[0] / queried[1],
        queried[0] / queried[2]
    );
    println!(
        "  DuckDB count(*), count(DISTINCT order_id): equality {:.3} s{}, position {:.3} s, \
         deletion vectors {:.3} s (process start included)",
        ducked[0],
        if ducked[0] > args.duck_limit.as_secs_f64() {
            " (given up)"
        } else {
            ""
        },
        ducked[1],
        ducked[2]
    );
    println!(
        "  key index rebuilt from {} files: {} keys in {rebuild:.3} s = {:.0} keys/s ({:.1} MB \
         on disk); reading the key column through the same merge-on-read took {key_read:.3} s: \
         ratio {:.3}",
        rebuilt.files,
        rebuilt.keys,
        rebuilt.keys as f64 / rebuild,
        index_bytes as f64 / 1e6,
        key_read / rebuild
    );
    for lake in &lakes {
        lake.drop_slot(&db).await;
    }
    for lake in lakes {
        lake.remove();
    }
    if args.rebuild_rows > 0 {
        rebuild_bench(root, args.rebuild_rows).await;
    }
}

/// `rows` rows of `orders` copied into a position lake, whose key index is then rebuilt from
/// scratch: the rate of a rebuild at a size the deletes part does not reach.
async fn rebuild_bench(root: &Path, rows: u64) {
    let db = TestDb::new("bench_rebuild").await;
    db.psql(&["-v", &format!("rows={rows}"), "-f", "sql/orders.sql"]);
    let mut lake = Lake::new(
        &db,
        root,
        "rebuild",
        &format!("{}_rebuild", db.slot),
        "[flush]\nmax_latency = \"1s\"\n",
    );
    lake.position_deletes();
    let copied = run_until(
        &lake,
        "the initial snapshot",
        Duration::from_secs(3600),
        |s| s.checkpoint.is_some(),
    )
    .await;
    let sink = IcebergSink::from_config(&lake.config)
        .await
        .expect("a sink");
    let started = Instant::now();
    let rebuilt = sink
        .rebuild_key_index(&TableId::new("public", "orders"))
        .await
        .expect("rebuild the key index");
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "\n  key index of {rows} rows (copied in {:.1} s): rebuilt from {} files, {} keys in \
         {seconds:.3} s = {:.0} keys/s",
        copied.run.seconds,
        rebuilt.files,
        rebuilt.keys,
        rebuilt.keys as f64 / seconds
    );
    assert_eq!(rebuilt.keys, rows, "every key of the table indexed");
    drop(sink);
    lake.drop_slot(&db).await;
    lake.remove();
}

// ---------------------------------------------------------------------------------------------
// 6. The key index at scale

/// Keys the index part adds per update: one flush of inserts.
const INDEX_FLUSH_KEYS: u64 = 100_000;
/// Rows per data file the index part's keys are spread over.
const INDEX_FILE_ROWS: u64 = 1_000_000;
/// Keys per flush of updates in the index part's lookups.
const INDEX_UPDATE_KEYS: usize = 10_000;

/// The key index of `--index-keys` `bigint` keys (as `orders.order_id`) built directly, in
/// flushes of 100 000 inserts over data files of 1 000 000 rows, with the cache budget
/// `--index-cache-mib`; then flushes of 10 000 updates of random keys (each key looked up,
/// its old row removed, its new one added in a new file), as a stream of updates makes
/// them. Prints the build and update rates, the file's size, and this process's peak RSS
/// against the budget.
fn index_bench(root: &Path, args: &Args) {
    use arrow::array::{ArrayRef, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use lakewriter::sink::iceberg::key_index::{FileKeys, IndexUpdate, KeyIndex};

    let keys = args.index_keys;
    let budget = args.index_cache_mib * 1024 * 1024;
    println!(
        "\n== The key index of {keys} keys, cache {} MiB ==",
        args.index_cache_mib
    );
    let own = std::process::id();
    let (_, before) = memory_of(own).unwrap_or_default();
    let path = root.join("index").join("orders.redb");
    let key = Arc::new(Schema::new(vec![Field::new(
        "order_id",
        DataType::Int64,
        false,
    )]));
    let index = KeyIndex::open(&path, &key, budget as usize).expect("open the key index");
    let file_name = |n: u64| {
        format!(
            "s3://lakewriter-bench/warehouse/sales/orders/data/00000-{n}-3f2c1e4a-7b9d-4e21-\
             a8c5-2d9e8f1b6c70-00001.parquet"
        )
    };
    let encode = |values: Vec<i64>| {
        let column: ArrayRef = Arc::new(Int64Array::from(values));
        let rows = index
            .converter()
            .convert_columns(&[column])
            .expect("encode keys");
        rows.iter().map(|r| r.data().to_vec()).collect::<Vec<_>>()
    };

    let started = Instant::now();
    let cpu_before = cpu_seconds().0;
    let mut snapshot = 0i64;
    let mut next = 0u64;
    while next < keys {
        let count = INDEX_FLUSH_KEYS.min(keys - next);
        let encoded = encode((next..next + count).map(|k| k as i64 + 1).collect());
        let file = next / INDEX_FILE_ROWS;
        let first = next % INDEX_FILE_ROWS;
        let update = IndexUpdate {
            removed: Vec::new(),
            added: vec![(
                file_name(file),
                encoded.into_iter().zip(first..).collect::<FileKeys>(),
            )],
            removed_files: Vec::new(),
        };
        snapshot += 1;
        index
            .apply(Some(snapshot), &update)
            .expect("apply a flush of inserts");
        next += count;
        if next.is_multiple_of(10 * INDEX_FILE_ROWS) || next == keys {
            let (rss, _) = memory_of(own).unwrap_or_default();
            println!(
                "  {next:>11} keys  {:>6.1} s  RSS {:>6.0} MiB",
                started.elapsed().as_secs_f64(),
                rss as f64 / 1024.0
            );
        }
    }
    index.persist().expect("write the index durably");
    let build = started.elapsed().as_secs_f64();
    let build_cpu = cpu_seconds().0 - cpu_before;
    let disk = std::fs::metadata(&path).map_or(0, |m| m.len());

    // updates of random keys: each looked up, then moved to a new file
    let started = Instant::now();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = move || {
        // xorshift64*: a spread of keys without a dependency
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let flushes = 100usize;
    let mut found = 0usize;
    let mut lookup_seconds = 0.0;
    for flush in 0..flushes {
        let values: Vec<i64> = (0..INDEX_UPDATE_KEYS)
            .map(|_| (random() % keys) as i64 + 1)
            .collect();
        let mut encoded = encode(values);
        // in key order, as a flush hands them to the index
        encoded.sort_unstable();
        let looked = Instant::now();
        let locations = index
            .lookup_encoded(encoded.iter().map(Vec::as_slice), encoded.len())
            .expect("look the keys up");
        lookup_seconds += looked.elapsed().as_secs_f64();
        found += locations.iter().filter(|l| l.is_some()).count();
        let update = IndexUpdate {
            removed: encoded.clone(),
            added: vec![(
                file_name(keys / INDEX_FILE_ROWS + 1 + flush as u64),
                encoded.into_iter().zip(0..).collect(),
            )],
            removed_files: Vec::new(),
        };
        snapshot += 1;
        index
            .apply(Some(snapshot), &update)
            .expect("apply a flush of updates");
    }
    let updates = started.elapsed().as_secs_f64();
    let looked_up = (flushes * INDEX_UPDATE_KEYS) as f64;
    assert_eq!(
        found,
        flushes * INDEX_UPDATE_KEYS,
        "every key updated was found"
    );
    let (rss, peak) = memory_of(own).unwrap_or_default();
    assert_eq!(
        index.len().expect("count the keys"),
        keys,
        "every key indexed"
    );
    drop(index);
    let budget_mib = args.index_cache_mib as f64;
    println!(
        "  built: {keys} keys in {build:.1} s ({build_cpu:.1} CPU s) = {:.0} keys/s\n  \
         file: {:.0} MiB, {:.1} bytes per key\n  \
         updates: {} flushes of {INDEX_UPDATE_KEYS} random keys in {updates:.1} s = {:.0} keys/s \
         (lookups alone {:.0} keys/s)\n  \
         peak RSS (VmHWM) {:.0} MiB, {:.0} MiB before the index opened, RSS now {:.0} MiB: \
         peak over budget {:.2}",
        keys as f64 / build,
        disk as f64 / MIB,
        disk as f64 / keys as f64,
        flushes,
        looked_up / updates,
        looked_up / lookup_seconds,
        peak as f64 / 1024.0,
        before as f64 / 1024.0,
        rss as f64 / 1024.0,
        (peak.saturating_sub(before)) as f64 / 1024.0 / budget_mib
    );
    let _ = std::fs::remove_file(&path);
}
