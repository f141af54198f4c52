//! Read benchmarks of the lake, each measured against references in the same run on the same
//! data and reported as ratios (DESIGN.md, "Performance"): never a timed assertion.
//!
//! 1. Merge-on-read (`--only mor`): a lake table `(id bigint key, v bigint, s text)` built
//!    directly with the Iceberg sink (`Sink::prepare`, `Sink::commit` of `TableDelta`s; no
//!    PostgreSQL involved): one commit of `--rows` rows, then `--commits` commits that update
//!    `--deleted` keys between them (each update an equality delete of the old key and the new
//!    row in the same delta), so the table ends with `--rows` live rows and `--deleted`
//!    equality-deleted keys. The same aggregate, `SELECT count(*), sum(v)`, then runs on:
//!    - lakewriter's plan: `lake::session` (catalog, metadata, manifests, the
//!      anti-join plan) then `ctx.sql(…)` collected; timed from the session's creation;
//!    - the iceberg crate's DataFusion provider (`iceberg_datafusion::
//!      IcebergStaticTableProvider` over an `iceberg::table::Table` built from the same
//!      metadata file; `IcebergTableProvider` proper needs an `iceberg::Catalog`, which the
//!      SQLite catalog is not), in a child process of this bench so that it can be stopped
//!      after `--iceberg-timeout` seconds; only `ctx.sql(…)` collected is timed;
//!    - DuckDB's `iceberg_scan` of the same metadata file (the venv's Python, extensions
//!      loaded from tests/readers/duck.py), in a child process stopped after
//!      `--duckdb-timeout` seconds; only the query is timed.
//!
//!    All three must give the answer the bench computed while building the table. They run in
//!    that order, up to `--runs` runs each, best kept: lakewriter with a fresh session per run;
//!    DuckDB with a fresh connection per run in one Python process; the iceberg crate in one
//!    child process with a fresh table and provider per run. The two children repeat only runs
//!    shorter than 10 s. The iceberg crate turns every equality-deleted key into a predicate
//!    evaluated on every row, so its cost grows with rows × deletes (DuckDB 1.5's grows
//!    steeply too): when either does not finish at full size, all three run again on tables
//!    built the same way but proportionally smaller (`--small`, deleted-key counts, rows
//!    scaled alike), and its time at full size is extrapolated from them (proportionally to
//!    rows × deletes, and by a power law fitted on the two largest sizes that finished),
//!    printed as an extrapolation, never as a measurement; the timeout itself gives a
//!    measured lower bound.
//! 2. Verify (`--only verify`): a PostgreSQL table of `--verify-rows` rows (id bigint primary
//!    key, integer, numeric(12,2), text, timestamptz; `INSERT … SELECT … FROM generate_series`,
//!    then VACUUM ANALYZE), copied into the lake by `pipeline::service::run` in this process
//!    until the table's lake checkpoint exists (then stopped, and its slot dropped). Then,
//!    alternating, `--verify-runs` times each: `COPY … TO STDOUT (FORMAT binary)` drained and
//!    counted (the reference: what PostgreSQL can send, one stream) and
//!    `verify::compare::run(&config, Some("public.vt"), true)`, which must find the table
//!    equal (its JSON report is printed). A full scan of the lake table through
//!    `lake::session` (every column, counted) is shown as a diagnostic: the lake side
//!    of verify without its hashing.
//! 3. Compact (`--only compact`): a table built like 1's with `--compact-rows` live rows and
//!    `--compact-deleted` equality-deleted keys (defaults 200 000 and 20 000, so DuckDB answers
//!    before); its files, and `SELECT count(*), sum(v)` through lakewriter's plan and DuckDB,
//!    before and after `maintenance::compact::run`, and the compaction's rows/s.
//!
//! The CPU seconds shown are this process's during the run (the iceberg crate and DuckDB run in
//! child processes: their CPU is not shown).
//!
//! ```text
//! cargo bench --bench query -- [--rows N] [--deleted N] [--commits N] [--runs N]
//!                              [--iceberg-timeout SECONDS] [--duckdb-timeout SECONDS]
//!                              [--small N,N,…]
//!                              [--verify-rows N] [--verify-runs N]
//!                              [--compact-rows N] [--compact-deleted N] [--only LIST]
//! ```
//!
//! or the same through `LAKEWRITER_BENCH_ROWS`, `…_DELETED`, `…_COMMITS`, `…_RUNS`,
//! `…_ICEBERG_TIMEOUT`, `…_DUCKDB_TIMEOUT`, `…_SMALL`, `…_VERIFY_ROWS`, `…_VERIFY_RUNS`,
//! `…_COMPACT_ROWS`, `…_COMPACT_DELETED`, `…_ONLY` (`--only mor,verify,compact`, the default). Defaults: 2 000 000 rows, 1 000 000 deleted keys in 4
//! commits, 3 runs, 300 s limits, small sizes 10 000 and 100 000 deleted keys, 10 000 000
//! verify rows, 1 verify run. `--small none` skips the smaller sizes. Needs the local stack
//! (`scripts/stack up`, started on demand like the tests do).

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, new_null_array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::display::array_value_to_string;
use common::{Options, Run, copy_drain, cpu_seconds, fastest, load_average};
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use iceberg::spec::TableMetadata;
use iceberg::table::Table;
use iceberg::{Runtime, TableIdent};
use iceberg_datafusion::IcebergStaticTableProvider;
use lakewriter::Lsn;
use lakewriter::catalog::{Catalog, CatalogTable, LakeCatalog};
use lakewriter::config::Config;
use lakewriter::lake;
use lakewriter::pipeline::service;
use lakewriter::sink::iceberg::{IcebergSink, checkpoint, file_io, lake_table};
use lakewriter::sink::{Sink, TableDelta, TableLayout};
use lakewriter::source::changes::{ColumnSchema, TableSchema};
use lakewriter::source::pgoutput::ReplicaIdentity;
use lakewriter::source::{Oid, RelationId};
use lakewriter::table::TableId;
use lakewriter::verify::compare;
use support::{TestDb, project_dir, stack};
use tokio::sync::watch;

/// The first argument of this bench run as the iceberg crate's side of measurement 1.
const ICEBERG_CHILD: &str = "--iceberg-child";

/// Rows per batch handed to the sink.
const BATCH_ROWS: usize = 65_536;

/// A run in a child process (the iceberg crate, DuckDB) is repeated only when it took less
/// than this.
const REPEAT_BELOW: Duration = Duration::from_secs(10);

/// The parts, in the order they run.
const PARTS: [&str; 3] = ["mor", "verify", "compact"];

/// Sizes and choices, from arguments or the environment.
#[derive(Debug, Clone)]
struct Args {
    /// Live rows of the merge-on-read table.
    rows: u64,
    /// Keys updated (equality-deleted, then re-added) after the first commit.
    deleted: u64,
    /// Commits the updates are spread over.
    commits: u64,
    /// Runs of each side of measurement 1; the best is kept.
    runs: usize,
    /// Seconds the iceberg crate's scan may take (its whole child process).
    iceberg_timeout: u64,
    /// Seconds DuckDB's scan may take (its whole child process).
    duckdb_timeout: u64,
    /// Deleted-key counts of the smaller tables, measured when the full size times out.
    small: Vec<u64>,
    /// Rows of the verify table.
    verify_rows: u64,
    /// Live rows and equality-deleted keys of the table `compact` rewrites.
    compact_rows: u64,
    compact_deleted: u64,
    /// Runs of each side of measurement 2; the best is kept.
    verify_runs: usize,
    /// The parts that run.
    only: Vec<String>,
}

impl Args {
    fn parse() -> Args {
        let options = Options::read(
            "query.rs",
            &[
                "rows",
                "deleted",
                "commits",
                "runs",
                "iceberg-timeout",
                "duckdb-timeout",
                "small",
                "verify-rows",
                "verify-runs",
                "compact-rows",
                "compact-deleted",
                "only",
            ],
        );
        let small = match options.text("small") {
            None => vec![10_000, 100_000],
            Some("" | "none") => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|v| Options::parse_number("small", v))
                .collect(),
        };
        let args = Args {
            rows: options.number("rows", 2_000_000),
            deleted: options.number("deleted", 1_000_000),
            commits: options.number("commits", 4).max(1),
            runs: options.count("runs", 3),
            iceberg_timeout: options.number("iceberg-timeout", 300),
            duckdb_timeout: options.number("duckdb-timeout", 300),
            small,
            verify_rows: options.number("verify-rows", 10_000_000),
            compact_rows: options.number("compact-rows", 200_000),
            compact_deleted: options.number("compact-deleted", 20_000),
            verify_runs: options.count("verify-runs", 1),
            only: options.parts(&PARTS),
        };
        assert!(
            args.deleted <= args.rows,
            "--deleted ({}) must not exceed --rows ({})",
            args.deleted,
            args.rows
        );
        args
    }

    fn runs_part(&self, part: &str) -> bool {
        self.only.iter().any(|p| p == part)
    }
}

#[tokio::main]
async fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    if arguments.get(1).map(String::as_str) == Some(ICEBERG_CHILD) {
        iceberg_child(&arguments[2..]).await;
        return;
    }
    let args = Args::parse();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "an unknown CPU".into());
    println!(
        "lakewriter query benchmarks: {} cores ({cpu}), load average {}\n{args:?}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    let started = Instant::now();
    let db = TestDb::new("bench_query").await;
    let config = Config::parse(&db.config_toml(""), Path::new("bench.toml"), Vec::new())
        .expect("the bench config parses");
    if args.runs_part("mor") {
        let part = Instant::now();
        mor_bench(&db, &config, &args).await;
        println!("  (part 1 took {:.1} s)", part.elapsed().as_secs_f64());
    }
    if args.runs_part("verify") {
        let part = Instant::now();
        verify_bench(&db, &config, &args).await;
        println!("  (part 2 took {:.1} s)", part.elapsed().as_secs_f64());
    }
    if args.runs_part("compact") {
        let part = Instant::now();
        compact_bench(&db, &config, &args).await;
        println!("  (part 3 took {:.1} s)", part.elapsed().as_secs_f64());
    }
    println!(
        "\ntotal time {:.1} s; load average {}",
        started.elapsed().as_secs_f64(),
        load_average()
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Merge-on-read

/// The aggregate every engine runs; `{table}` is replaced by each engine's name of the table.
const QUERY: &str = "SELECT count(*), sum(v) FROM {table}";

/// One merge-on-read table, built and committed.
#[derive(Debug, Clone)]
struct MorTable {
    lake: CatalogTable,
    metadata_location: String,
    rows: u64,
    deleted: u64,
    /// `(count, sum of v)` as text: what the query must return.
    answer: (String, String),
}

impl MorTable {
    /// Rows × deleted keys: the iceberg crate's scan does work in proportion to it.
    fn work(&self) -> f64 {
        self.rows as f64 * self.deleted as f64
    }
}

/// `(id bigint key, v bigint, s text)`, as the source would describe it.
fn mor_schema(table: &TableId) -> Arc<TableSchema> {
    let columns = [
        ("id", DataType::Int64, 20, "bigint", true),
        ("v", DataType::Int64, 20, "bigint", false),
        ("s", DataType::Utf8, 25, "text", false),
    ];
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, data_type, _, pg_type, _)| {
            Field::new(*name, data_type.clone(), true).with_metadata(HashMap::from([(
                "lakewriter.pg_type".to_string(),
                pg_type.to_string(),
            )]))
        })
        .collect();
    let arrow = Arc::new(Schema::new(fields));
    Arc::new(TableSchema {
        table: table.clone(),
        relation: RelationId(16384),
        replica_identity: ReplicaIdentity::Default,
        columns: columns
            .iter()
            .map(|(name, _, oid, _, key)| ColumnSchema {
                name: name.to_string(),
                type_oid: Oid(*oid),
                type_modifier: -1,
                key: *key,
            })
            .collect(),
        arrow: arrow.clone(),
        arrow_nullable: arrow,
    })
}

/// The value of `v` for key `id` at `version` (0 first, 1 after its update).
fn value(id: i64, version: i64) -> i64 {
    id * 2 + version
}

/// Rows of `ids` at `version`, in batches of [`BATCH_ROWS`].
fn rows_of(schema: &TableSchema, ids: &[i64], version: i64) -> Vec<RecordBatch> {
    ids.chunks(BATCH_ROWS)
        .map(|chunk| {
            let v: Int64Array = chunk.iter().map(|&id| Some(value(id, version))).collect();
            let s: StringArray = chunk
                .iter()
                .map(|&id| Some(format!("row {id:010} version {version}")))
                .collect();
            RecordBatch::try_new(
                schema.arrow_nullable.clone(),
                vec![
                    Arc::new(Int64Array::from(chunk.to_vec())) as ArrayRef,
                    Arc::new(v),
                    Arc::new(s),
                ],
            )
            .expect("a batch of rows")
        })
        .collect()
}

/// Old rows of `ids` as an update sends them: the key only, the other columns null.
fn keys_of(schema: &TableSchema, ids: &[i64]) -> Vec<RecordBatch> {
    ids.chunks(BATCH_ROWS)
        .map(|chunk| {
            RecordBatch::try_new(
                schema.arrow_nullable.clone(),
                vec![
                    Arc::new(Int64Array::from(chunk.to_vec())) as ArrayRef,
                    new_null_array(&DataType::Int64, chunk.len()),
                    new_null_array(&DataType::Utf8, chunk.len()),
                ],
            )
            .expect("a batch of keys")
        })
        .collect()
}

/// Builds `public.<name>` in the lake of `config`: `rows` rows in one commit, then `deleted`
/// keys (every `rows / deleted`-th) updated over `commits` commits.
async fn build_mor_table(
    config: &Config,
    name: &str,
    rows: u64,
    deleted: u64,
    commits: u64,
) -> MorTable {
    let started = Instant::now();
    let table = TableId::new("public", name);
    let schema = mor_schema(&table);
    let mut sink = IcebergSink::from_config(config)
        .await
        .expect("open the Iceberg sink");
    let layout = TableLayout {
        key: vec!["id".to_string()],
        partition_by: Vec::new(),
    };
    sink.prepare(&table, &schema, &layout)
        .await
        .expect("create the table");
    let rows_i = i64::try_from(rows).expect("--rows fits i64");
    let ids: Vec<i64> = (0..rows_i).collect();
    let delta = |deletes: Vec<RecordBatch>, rows: Vec<RecordBatch>, lsn: u64| TableDelta {
        table: table.clone(),
        schema: schema.clone(),
        truncate: false,
        adds_only: false,
        deletes,
        rows,
        lsn: Some(Lsn(lsn)),
        copy: None,
    };
    sink.commit(delta(Vec::new(), rows_of(&schema, &ids, 0), 1))
        .await
        .expect("commit the first rows");
    drop(ids);
    let stride = rows.checked_div(deleted).unwrap_or(1);
    let updated: Vec<i64> = (0..deleted)
        .map(|i| i64::try_from(i * stride).expect("a key fits i64"))
        .collect();
    let per_commit = usize::try_from(deleted.div_ceil(commits))
        .expect("keys per commit fit usize")
        .max(1);
    let mut lsn = 1;
    for chunk in updated.chunks(per_commit) {
        lsn += 1;
        sink.commit(delta(
            keys_of(&schema, chunk),
            rows_of(&schema, chunk, 1),
            lsn,
        ))
        .await
        .expect("commit an update");
    }
    let (metadata_location, _) = sink
        .table_metadata(&table)
        .expect("the sink knows the table it committed to");
    let sum: i64 = (0..rows_i).map(|id| value(id, 0)).sum::<i64>()
        + i64::try_from(deleted).expect("--deleted fits i64");
    let built = MorTable {
        lake: lake_table(&config.sink.namespace, &table),
        metadata_location: metadata_location.to_string(),
        rows,
        deleted,
        answer: (rows.to_string(), sum.to_string()),
    };
    println!(
        "built {}: {rows} rows, then {deleted} keys updated in {} commits ({:.1} s)",
        built.lake,
        lsn - 1,
        started.elapsed().as_secs_f64()
    );
    built
}

/// The first row's first two values of a query's result, as text.
fn answer_of(batches: &[RecordBatch]) -> (String, String) {
    let batch = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .expect("the aggregate returns a row");
    let text = |column: usize| {
        array_value_to_string(batch.column(column), 0).expect("a value displays as text")
    };
    (text(0), text(1))
}

/// One run of lakewriter's plan: a fresh session over the table, then the query collected.
/// Returns the whole run, the session's share of its seconds, the answer, and the files read.
async fn lakewriter_run(config: &Config, table: &MorTable) -> (Run, f64, (String, String), String) {
    let cpu_before = cpu_seconds().0;
    let started = Instant::now();
    let (ctx, tables) = lake::session(config, Some(&table.lake))
        .await
        .expect("lakewriter's session over the table");
    let session_seconds = started.elapsed().as_secs_f64();
    let sql = QUERY.replace(
        "{table}",
        &format!("\"{}\".\"{}\"", table.lake.namespace, table.lake.name),
    );
    let batches = ctx
        .sql(&sql)
        .await
        .expect("plan the query")
        .collect()
        .await
        .expect("run the query");
    let run = Run {
        seconds: started.elapsed().as_secs_f64(),
        cpu: cpu_seconds().0 - cpu_before,
    };
    let info = tables.first().expect("the session registered the table");
    let files = format!(
        "{} data files, {} equality-delete files",
        info.data_files, info.delete_files
    );
    (run, session_seconds, answer_of(&batches), files)
}

/// What became of an engine run in a child process (the iceberg crate, DuckDB).
#[derive(Debug, Clone)]
enum Outcome {
    /// Finished: the fastest run's query seconds, that run's seconds to open the table (or
    /// the connection) beforehand, not counted, the runs made, and the answer.
    Done {
        seconds: f64,
        open: f64,
        runs: usize,
        answer: (String, String),
    },
    /// Stopped after the time limit, no run having finished.
    TimedOut { limit: f64 },
}

impl Outcome {
    fn seconds(&self) -> Option<f64> {
        match self {
            Outcome::Done { seconds, .. } => Some(*seconds),
            Outcome::TimedOut { .. } => None,
        }
    }

    /// The time as text: `>limit` when it timed out.
    fn seconds_text(&self) -> String {
        match self {
            Outcome::Done { seconds, .. } => format!("{seconds:.3}"),
            Outcome::TimedOut { limit } => format!(">{limit:.0}"),
        }
    }

    /// Its time over `ours` as text (`>…` when it timed out).
    fn ratio_text(&self, ours: f64) -> String {
        match self {
            Outcome::Done { seconds, .. } => format!("{:.2}", seconds / ours),
            Outcome::TimedOut { limit } => format!(">{:.1}", limit / ours),
        }
    }
}

/// Runs `command` (a child printing a line `RESULT <open s> <query s> <count> <sum>` per
/// finished run) and stops it, by its process id, after `limit`.
async fn run_child(what: &str, mut command: Command, limit: Duration) -> Outcome {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}'s child process: {e}"));
    let mut stdout = child.stdout.take().expect("the child's stdout");
    let mut stderr = child.stderr.take().expect("the child's stderr");
    let out_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            break Some(status);
        }
        if started.elapsed() >= limit {
            child.kill().expect("stop the child after its time limit");
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let out = out_reader.join().expect("the child's stdout reader");
    let err = err_reader.join().expect("the child's stderr reader");
    let results: Vec<(f64, f64, String, String)> = out
        .lines()
        .filter_map(|line| line.strip_prefix("RESULT "))
        .map(|rest| {
            let parts: Vec<&str> = rest.split_whitespace().collect();
            assert_eq!(parts.len(), 4, "a RESULT line has 4 fields: {rest:?}");
            (
                parts[0].parse().expect("open seconds"),
                parts[1].parse().expect("query seconds"),
                parts[2].to_string(),
                parts[3].to_string(),
            )
        })
        .collect();
    if let Some(status) = status {
        assert!(
            status.success(),
            "{what}'s child process failed ({status}):\n{err}"
        );
    }
    let Some(best) = results.iter().min_by(|a, b| a.1.total_cmp(&b.1)).cloned() else {
        assert!(
            status.is_none(),
            "{what}'s child finished without a result:\n{out}\n{err}"
        );
        return Outcome::TimedOut {
            limit: limit.as_secs_f64(),
        };
    };
    Outcome::Done {
        seconds: best.1,
        open: best.0,
        runs: results.len(),
        answer: (best.2, best.3),
    }
}

/// DuckDB's `iceberg_scan` of the table's metadata file, up to `runs` runs in one Python
/// process, each on a fresh connection (extensions loaded, not timed); only the query is
/// timed, and only runs shorter than [`REPEAT_BELOW`] are repeated.
async fn duckdb_run(table: &MorTable, runs: usize, limit: Duration) -> Outcome {
    const SCRIPT: &str = r#"
import sys, time
import duck
query, runs, repeat_below = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
for _ in range(runs):
    opened = time.perf_counter()
    con = duck.connect()
    con.execute("SET enable_progress_bar = false")
    open_seconds = time.perf_counter() - opened
    started = time.perf_counter()
    row = con.execute(query).fetchall()[0]
    seconds = time.perf_counter() - started
    print("RESULT", open_seconds, seconds, row[0], row[1], flush=True)
    con.close()
    if seconds >= repeat_below:
        break
"#;
    let sql = QUERY.replace(
        "{table}",
        &format!("iceberg_scan('{}')", table.metadata_location),
    );
    let mut command = stack().python();
    command
        .arg("-c")
        .arg(SCRIPT)
        .arg(&sql)
        .arg(runs.to_string())
        .arg(REPEAT_BELOW.as_secs_f64().to_string())
        .env("PYTHONPATH", project_dir().join("tests/readers"));
    run_child("DuckDB", command, limit).await
}

/// The iceberg crate's side in a child process (this bench, with [`ICEBERG_CHILD`]).
async fn iceberg_run(
    config_path: &Path,
    table: &MorTable,
    runs: usize,
    limit: Duration,
) -> Outcome {
    let mut command = Command::new(std::env::current_exe().expect("this bench's executable"));
    command.arg(ICEBERG_CHILD).arg(config_path).args([
        &table.lake.namespace,
        &table.lake.name,
        &table.metadata_location,
        &runs.to_string(),
    ]);
    run_child("the iceberg crate", command, limit).await
}

/// The child process of [`iceberg_run`]: `config namespace table metadata_location runs`.
async fn iceberg_child(args: &[String]) {
    let [config_path, namespace, name, location, runs] = args else {
        panic!("{ICEBERG_CHILD} takes: config namespace table metadata_location runs");
    };
    let text = std::fs::read_to_string(config_path).expect("read the bench config");
    let config =
        Config::parse(&text, Path::new(config_path), Vec::new()).expect("the bench config parses");
    let io = file_io(&config).expect("the lake's file IO");
    let runs: usize = runs.parse().expect("runs is a number");
    let sql = QUERY.replace("{table}", "t");
    for _ in 0..runs.max(1) {
        let opened = Instant::now();
        let metadata = TableMetadata::read_from(&io, location)
            .await
            .expect("read the table's metadata");
        let table = Table::builder()
            .file_io(io.clone())
            .metadata(metadata)
            .metadata_location(location.as_str())
            .identifier(
                TableIdent::from_strs([namespace.as_str(), name.as_str()])
                    .expect("a table identifier"),
            )
            .runtime(Runtime::try_current().expect("the tokio runtime"))
            .build()
            .expect("the iceberg table");
        let provider = IcebergStaticTableProvider::try_new_from_table(table)
            .await
            .expect("the iceberg crate's table provider");
        let ctx = SessionContext::new();
        ctx.register_table("t", Arc::new(provider))
            .expect("register the provider");
        let open = opened.elapsed().as_secs_f64();
        let started = Instant::now();
        let batches = ctx
            .sql(&sql)
            .await
            .expect("plan the query")
            .collect()
            .await
            .expect("run the query");
        let seconds = started.elapsed();
        let (count, sum) = answer_of(&batches);
        println!("RESULT {open} {} {count} {sum}", seconds.as_secs_f64());
        std::io::stdout().flush().expect("flush stdout");
        if seconds >= REPEAT_BELOW {
            break;
        }
    }
}

/// What the three engines did on one table.
#[derive(Debug, Clone)]
struct Measured {
    table: MorTable,
    lakewriter: Run,
    /// The session's share of the fastest lakewriter run.
    session: f64,
    files: String,
    duckdb: Outcome,
    iceberg: Outcome,
}

/// Prints what a child engine did and checks its answer.
fn report_outcome(what: &str, outcome: &Outcome, table: &MorTable) {
    match outcome {
        Outcome::Done {
            seconds,
            open,
            runs,
            answer,
        } => {
            assert_eq!(answer, &table.answer, "{what} answers what was committed");
            println!(
                "  {what}: best of {runs} run(s) {seconds:.3} s (opening beforehand {open:.3} s, \
                 not counted)"
            );
        }
        Outcome::TimedOut { limit } => {
            println!("  {what}: no answer within {limit:.0} s: stopped");
        }
    }
}

/// The three engines on `table`, in this order, each answer checked.
async fn measure(config: &Config, config_path: &Path, table: &MorTable, args: &Args) -> Measured {
    let mut ours = Vec::new();
    let mut files = String::new();
    for run in 0..args.runs {
        let (timed, session, answer, read) = lakewriter_run(config, table).await;
        assert_eq!(
            answer, table.answer,
            "lakewriter's plan answers what was committed"
        );
        files = read;
        println!(
            "  run {}: lakewriter {:.3} s (session {session:.3} s), {:.2} CPU s",
            run + 1,
            timed.seconds,
            timed.cpu
        );
        ours.push((timed, session));
    }
    let duckdb = duckdb_run(table, args.runs, Duration::from_secs(args.duckdb_timeout)).await;
    report_outcome("DuckDB", &duckdb, table);
    let iceberg = iceberg_run(
        config_path,
        table,
        args.runs,
        Duration::from_secs(args.iceberg_timeout),
    )
    .await;
    report_outcome("the iceberg crate", &iceberg, table);
    let (lakewriter, session) = ours
        .iter()
        .copied()
        .min_by(|a, b| a.0.seconds.total_cmp(&b.0.seconds))
        .expect("at least one run");
    Measured {
        table: table.clone(),
        lakewriter,
        session,
        files,
        duckdb,
        iceberg,
    }
}

fn print_measured(title: &str, m: &Measured) {
    println!("\n{title}");
    println!(
        "  answer: count = {}, sum(v) = {} (computed while building; every engine that \
         finished returned it)",
        m.table.answer.0, m.table.answer.1
    );
    println!("  lakewriter's session read {}", m.files);
    println!(
        "  {:<52} {:>9} {:>12} {:>7} {:>22}",
        "engine", "seconds", "rows/s", "CPU s", "lakewriter speed-up"
    );
    let rows = m.table.rows as f64;
    println!(
        "  {:<52} {:>9.3} {:>12.0} {:>7.2} {:>22}",
        "lakewriter: lake::session + query",
        m.lakewriter.seconds,
        rows / m.lakewriter.seconds,
        m.lakewriter.cpu,
        "ref"
    );
    println!(
        "  {:<52} {:>9.3}",
        "  of which the session (catalog, manifests, plan)", m.session
    );
    for (name, outcome) in [
        (
            "iceberg crate: IcebergStaticTableProvider, query",
            &m.iceberg,
        ),
        ("DuckDB: iceberg_scan, query", &m.duckdb),
    ] {
        let (rate, speed_up) = match outcome {
            Outcome::Done { seconds, .. } => (
                format!("{:.0}", rows / seconds),
                format!("{:.2}×", seconds / m.lakewriter.seconds),
            ),
            Outcome::TimedOut { limit } => (
                format!("<{:.0}", rows / limit),
                format!(">{:.1}× (timed out)", limit / m.lakewriter.seconds),
            ),
        };
        println!(
            "  {:<52} {:>9} {:>12} {:>7} {:>22}",
            name,
            outcome.seconds_text(),
            rate,
            "-",
            speed_up
        );
    }
    println!(
        "  rows/s = live rows / seconds; speed-up = the engine's seconds / lakewriter's \
         (above 1: lakewriter is faster)"
    );
}

/// One line comparing lakewriter with `what` (measured, or a lower bound when it timed out).
fn print_versus(what: &str, outcome: &Outcome, ours: f64, target: Option<f64>) {
    let verdict = |ratio: f64| {
        target.map_or_else(String::new, |t| {
            format!(
                "; target ≥ {t}×: {}",
                if ratio >= t { "met" } else { "NOT met" }
            )
        })
    };
    match outcome {
        Outcome::Done { seconds, .. } => {
            let ratio = seconds / ours;
            println!(
                "  lakewriter vs {what}: {ratio:.2}× ({}, measured{})",
                if ratio >= 1.0 {
                    "lakewriter faster"
                } else {
                    "lakewriter slower"
                },
                verdict(ratio)
            );
        }
        Outcome::TimedOut { limit } => {
            let ratio = limit / ours;
            println!(
                "  lakewriter vs {what}: more than {ratio:.1}× faster (a measured lower bound: \
                 {what} did not finish in {limit:.0} s{})",
                verdict(ratio)
            );
        }
    }
}

async fn mor_bench(db: &TestDb, base: &Config, args: &Args) {
    // a namespace of its own, in the bench database's warehouse
    let mut config = base.clone();
    config.sink.namespace = format!("{}_mor", db.namespace);
    let dir = tempfile::tempdir().expect("a directory for the child's config");
    let config_path = dir.path().join("bench.toml");
    std::fs::write(
        &config_path,
        db.config_toml("").replace(
            &format!("namespace = \"{}\"", db.namespace),
            &format!("namespace = \"{}\"", config.sink.namespace),
        ),
    )
    .expect("write the child's config");

    let full = build_mor_table(&config, "mor", args.rows, args.deleted, args.commits).await;
    let measured = measure(&config, &config_path, &full, args).await;
    print_measured(
        &format!(
            "1. merge-on-read: SELECT count(*), sum(v) over {} live rows and {} equality-deleted \
             keys (each engine best of up to {} runs)",
            args.rows, args.deleted, args.runs
        ),
        &measured,
    );
    print_versus(
        "the iceberg crate",
        &measured.iceberg,
        measured.lakewriter.seconds,
        Some(5.0),
    );
    print_versus(
        "DuckDB",
        &measured.duckdb,
        measured.lakewriter.seconds,
        None,
    );
    let timed_out = measured.iceberg.seconds().is_none() || measured.duckdb.seconds().is_none();
    if !timed_out || args.small.is_empty() {
        return;
    }

    // smaller tables, built the same way in proportion, where the others finish
    let mut smaller = Vec::new();
    for &deleted in &args.small {
        if deleted >= args.deleted {
            continue;
        }
        let rows = (u128::from(args.rows) * u128::from(deleted) / u128::from(args.deleted))
            .max(u128::from(deleted));
        let rows = u64::try_from(rows).expect("rows fit u64");
        let table = build_mor_table(
            &config,
            &format!("mor_{deleted}"),
            rows,
            deleted,
            args.commits,
        )
        .await;
        let m = measure(&config, &config_path, &table, args).await;
        print_measured(
            &format!(
                "1b. merge-on-read, smaller: {rows} live rows and {deleted} equality-deleted keys"
            ),
            &m,
        );
        let finished = m.iceberg.seconds().is_some() || m.duckdb.seconds().is_some();
        smaller.push(m);
        if !finished {
            // a larger size would not finish either
            break;
        }
    }
    print_extrapolation(&measured, &smaller);
}

/// Picks one engine's outcome out of a [`Measured`].
type OutcomeOf = fn(&Measured) -> &Outcome;

/// An engine's time at full size from the smaller sizes, assuming a power law in rows ×
/// deleted keys.
fn print_extrapolation(full: &Measured, smaller: &[Measured]) {
    println!(
        "\n1c. the engines that timed out, at full size ({} rows, {} deleted keys): \
         EXTRAPOLATED from the smaller sizes, not measured",
        full.table.rows, full.table.deleted
    );
    println!(
        "  {:>10} {:>10} {:>13} {:>13} {:>11} {:>11} {:>13} {:>12}",
        "rows",
        "deleted",
        "rows×deleted",
        "lakewriter s",
        "iceberg s",
        "DuckDB s",
        "iceberg/ours",
        "DuckDB/ours"
    );
    for m in smaller.iter().chain(std::iter::once(full)) {
        println!(
            "  {:>10} {:>10} {:>13.3e} {:>13.3} {:>11} {:>11} {:>13} {:>12}",
            m.table.rows,
            m.table.deleted,
            m.table.work(),
            m.lakewriter.seconds,
            m.iceberg.seconds_text(),
            m.duckdb.seconds_text(),
            m.iceberg.ratio_text(m.lakewriter.seconds),
            m.duckdb.ratio_text(m.lakewriter.seconds),
        );
    }
    println!(
        "  (the last line is the full size, measured; ratios = engine seconds / lakewriter's)"
    );
    let engines: [(&str, OutcomeOf); 2] = [
        ("the iceberg crate", |m| &m.iceberg),
        ("DuckDB", |m| &m.duckdb),
    ];
    for (what, outcome) in engines {
        if outcome(full).seconds().is_some() {
            continue;
        }
        let finished: Vec<(f64, f64)> = smaller
            .iter()
            .filter_map(|m| outcome(m).seconds().map(|s| (m.table.work(), s)))
            .collect();
        let Some(&(work, seconds)) = finished.last() else {
            println!("  {what}: no smaller size finished: nothing to extrapolate from");
            continue;
        };
        let target = full.table.work();
        let ours = full.lakewriter.seconds;
        let linear = seconds * target / work;
        println!(
            "  {what}, proportional to rows × deleted keys from the largest that finished: \
             about {linear:.0} s at full size, {:.0}× lakewriter's measured {ours:.3} s \
             (EXTRAPOLATED)",
            linear / ours
        );
        if finished.len() >= 2 {
            let (w1, s1) = finished[finished.len() - 2];
            let exponent = (seconds / s1).ln() / (work / w1).ln();
            let fitted = seconds * (target / work).powf(exponent);
            println!(
                "  {what}, fitted on the two largest that finished (time ∝ (rows × \
                 deleted)^{exponent:.2}): about {fitted:.0} s at full size, {:.0}× \
                 lakewriter's (EXTRAPOLATED)",
                fitted / ours
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Verify

/// The lake checkpoint of `table`, read through the catalog; `None` while it has none.
async fn lake_checkpoint(
    catalog: &LakeCatalog,
    config: &Config,
    table: &CatalogTable,
) -> Option<Lsn> {
    let pointer = catalog
        .load(table)
        .await
        .expect("load the lake table's pointer")?;
    let io = file_io(config).expect("the lake's file IO");
    let metadata = TableMetadata::read_from(&io, &pointer.metadata_location)
        .await
        .expect("read the lake table's metadata");
    checkpoint(table, &metadata).expect("the lake table's checkpoint")
}

async fn verify_bench(db: &TestDb, config: &Config, args: &Args) {
    let client = db.client().await;
    let rows = args.verify_rows;
    let generated = Instant::now();
    client
        .batch_execute(&format!(
            "CREATE TABLE public.vt (id bigint PRIMARY KEY, account integer NOT NULL, \
             amount numeric(12,2), note text, created_at timestamptz); \
             INSERT INTO public.vt \
             SELECT i, (i % 1000)::integer, (i % 100000) / 100.0, md5(i::text), \
                    timestamptz '2024-01-01 00:00:00+00' + i * interval '1 second' \
             FROM generate_series(1, {rows}) AS i"
        ))
        .await
        .expect("create and fill public.vt");
    // Hint bits and the visibility map set, statistics fresh: every reader sees a settled table.
    client
        .batch_execute("VACUUM (ANALYZE) public.vt")
        .await
        .expect("vacuum public.vt");
    let pages: i64 = client
        .query_one(
            "SELECT relpages::bigint FROM pg_class WHERE oid = 'public.vt'::regclass",
            &[],
        )
        .await
        .expect("public.vt's size")
        .get(0);
    println!(
        "\nverify table public.vt: {rows} rows, {pages} pages of 8 KiB (generated and vacuumed \
         in {:.1} s)",
        generated.elapsed().as_secs_f64()
    );

    // the writer copies it into the lake
    let table = TableId::new("public", "vt");
    let lake_name = lake_table(&config.sink.namespace, &table);
    let catalog = LakeCatalog::from_config(config)
        .await
        .expect("open the lake's catalog");
    let shared = Arc::new(config.clone());
    let copied = Instant::now();
    let cpu_before = cpu_seconds().0;
    let sink = IcebergSink::from_config(config)
        .await
        .expect("open the Iceberg sink");
    let (shutdown, stop) = watch::channel(false);
    let writer = tokio::spawn({
        let config = shared.clone();
        async move { service::run(config, sink, stop).await.map(|_| ()) }
    });
    let limit = Duration::from_secs(3600);
    loop {
        if lake_checkpoint(&catalog, config, &lake_name)
            .await
            .is_some()
        {
            break;
        }
        if writer.is_finished() {
            let result = writer.await.expect("join the writer");
            panic!("the writer stopped before the initial copy was committed: {result:?}");
        }
        assert!(
            copied.elapsed() < limit,
            "the initial copy was not committed within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let copy_run = Run {
        seconds: copied.elapsed().as_secs_f64(),
        cpu: cpu_seconds().0 - cpu_before,
    };
    let _ = shutdown.send(true);
    writer
        .await
        .expect("join the writer")
        .expect("the writer stops cleanly");
    // No writer streams from the slot any more: dropped, so verify does not wait for it and
    // the shared cluster keeps no WAL for it.
    client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&config.source.slot],
        )
        .await
        .expect("drop the writer's slot");
    println!(
        "  service::run copied it into the lake in {:.1} s ({:.0} rows/s, {:.1} CPU s; slot \
         creation and connections included)",
        copy_run.seconds,
        rows as f64 / copy_run.seconds,
        copy_run.cpu
    );

    // diagnostic: the lake side of verify without its hashing
    let cpu_before = cpu_seconds().0;
    let started = Instant::now();
    let (ctx, _) = lake::session(config, Some(&lake_name))
        .await
        .expect("a session over the lake table");
    let mut stream = ctx
        .table(lake::reference(&lake_name))
        .await
        .expect("the lake table")
        .execute_stream()
        .await
        .expect("scan the lake table");
    let mut scanned = 0u64;
    while let Some(batch) = stream.next().await {
        scanned += batch.expect("a batch of the lake table").num_rows() as u64;
    }
    let scan_run = Run {
        seconds: started.elapsed().as_secs_f64(),
        cpu: cpu_seconds().0 - cpu_before,
    };
    assert_eq!(scanned, rows, "the lake holds every row");

    let source_name = table.to_string();
    let (mut binary, mut verified) = (Vec::new(), Vec::new());
    let mut binary_bytes = 0;
    for run in 0..args.verify_runs {
        let (timed, bytes) = copy_drain(&client, "COPY public.vt TO STDOUT (FORMAT binary)").await;
        println!(
            "  run {}: COPY binary {:.3} s, {:.2} CPU s ({:.1} MB)",
            run + 1,
            timed.seconds,
            timed.cpu,
            bytes as f64 / 1e6
        );
        binary.push(timed);
        binary_bytes = bytes;

        let cpu_before = cpu_seconds().0;
        let started = Instant::now();
        let equal = compare::run(config, Some(&source_name), true)
            .await
            .expect("verify runs");
        let timed = Run {
            seconds: started.elapsed().as_secs_f64(),
            cpu: cpu_seconds().0 - cpu_before,
        };
        assert!(equal, "verify finds the lake equal to PostgreSQL");
        println!(
            "  run {}: verify {:.3} s, {:.2} CPU s",
            run + 1,
            timed.seconds,
            timed.cpu
        );
        verified.push(timed);
    }
    let reference = fastest(&binary);
    let ours = fastest(&verified);
    println!(
        "\n2. verify: public.vt, {rows} rows (id bigint key, integer, numeric(12,2), text, \
         timestamptz; each side best of {} run(s), alternating)",
        args.verify_runs
    );
    println!(
        "  {:<58} {:>10} {:>9} {:>12} {:>7} {:>8}",
        "measurement", "rows", "seconds", "rows/s", "CPU s", "ratio"
    );
    let line = |name: &str, run: Run, ratio: String| {
        println!(
            "  {:<58} {:>10} {:>9.3} {:>12.0} {:>7.2} {:>8}",
            name,
            rows,
            run.seconds,
            rows as f64 / run.seconds,
            run.cpu,
            ratio
        );
    };
    line(
        &format!(
            "COPY binary, drained and counted ({:.0} MB)",
            binary_bytes as f64 / 1e6
        ),
        reference,
        "ref".into(),
    );
    line(
        "verify::compare::run",
        ours,
        format!("{:.3}", reference.seconds / ours.seconds),
    );
    line(
        "  diagnostic: lake::session full scan, counted",
        scan_run,
        format!("{:.3}", reference.seconds / scan_run.seconds),
    );
    println!(
        "  ratio = rows/s of the line / rows/s of COPY binary. verify reads the lake (merge-on-\
         read, every column), then binary COPY from PostgreSQL (copy_table's default streams) \
         into Arrow, hashing every row on both sides: it does more than the reference."
    );
}

/// Part 3, `compact`: a table of `--compact-rows` live rows with `--compact-deleted`
/// equality-deleted keys (small enough for DuckDB to answer before); files, the query
/// (lakewriter's plan and DuckDB's) before and after, and the compaction's rows/s.
async fn compact_bench(db: &TestDb, base: &Config, args: &Args) {
    let mut config = base.clone();
    config.sink.namespace = format!("{}_compact", db.namespace);
    let before = build_mor_table(
        &config,
        "compacted",
        args.compact_rows,
        args.compact_deleted,
        args.commits,
    )
    .await;
    let limit = Duration::from_secs(args.duckdb_timeout);
    let (ours_before, _, answer_before, files_before) = lakewriter_run(&config, &before).await;
    let duck_before = duckdb_run(&before, 1, limit).await;
    let started = Instant::now();
    let outcomes = lakewriter::maintenance::compact::run(&config, Some("public.compacted"))
        .await
        .expect("compact");
    let compact_seconds = started.elapsed().as_secs_f64();
    let outcome = outcomes.first().expect("one table compacted");
    let pointer = IcebergSink::from_config(&config)
        .await
        .expect("open the sink")
        .catalog()
        .load(&before.lake)
        .await
        .expect("load")
        .expect("the table");
    let after = MorTable {
        metadata_location: pointer.metadata_location,
        deleted: 0,
        ..before.clone()
    };
    let (ours_after, _, answer_after, files_after) = lakewriter_run(&config, &after).await;
    let duck_after = duckdb_run(&after, 1, limit).await;
    assert_eq!(answer_before, answer_after, "compaction changed the answer");
    println!(
        "\n3. compact: {} live rows, {} equality-deleted keys in {} commits",
        before.rows, before.deleted, args.commits
    );
    println!("  files before: {files_before}; after: {files_after}");
    println!(
        "  compact: {} data + {} delete files ({} bytes) -> {} data files ({} bytes), {} rows in {:.2} s: {:.0} rows/s",
        outcome.data_files_in,
        outcome.delete_files_in,
        outcome.bytes_in,
        outcome.data_files_out,
        outcome.bytes_out,
        outcome.rows,
        compact_seconds,
        outcome.rows as f64 / compact_seconds
    );
    println!(
        "  {:<44} {:>12} {:>12} {:>10}",
        "query (SELECT count(*), sum(v))", "before s", "after s", "speed-up"
    );
    println!(
        "  {:<44} {:>12.3} {:>12.3} {:>9.1}x",
        "lakewriter query",
        ours_before.seconds,
        ours_after.seconds,
        ours_before.seconds / ours_after.seconds
    );
    let speed_up = match (duck_before.seconds(), duck_after.seconds()) {
        (Some(b), Some(a)) => format!("{:.1}x", b / a),
        _ => "-".into(),
    };
    println!(
        "  {:<44} {:>12} {:>12} {:>10}",
        "DuckDB iceberg_scan",
        duck_before.seconds_text(),
        duck_after.seconds_text(),
        speed_up
    );
}
