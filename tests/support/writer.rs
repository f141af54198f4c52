//! `lakewriter run` as a child process, and the lake it writes read back by DuckDB: the
//! helpers the end-to-end tests share.

use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{TestDb, project_dir, stack};

/// The test database's config file for the writer (a 300 ms flush latency), written out
/// the first time (see [`write_config`]).
pub fn config_path(db: &TestDb) -> std::path::PathBuf {
    let path = db.warehouse.path().join("lakewriter.toml");
    if path.exists() {
        return path;
    }
    write_config(db, "")
}

/// Writes the test database's config file with `extra` TOML appended (table sections, say),
/// for every command the test runs after.
pub fn write_config(db: &TestDb, extra: &str) -> std::path::PathBuf {
    let path = db.warehouse.path().join("lakewriter.toml");
    let text = db.config_toml(&format!("{extra}\n[flush]\nmax_latency = \"300ms\"\n"));
    std::fs::write(&path, text).expect("write config");
    path
}

/// A running `lakewriter run`, killed if the test panics before stopping it (so no writer
/// outlives its test). Its log goes to a file of its own: a pipe nobody reads until the end
/// fills (64 KiB) and stops a writer that logs more in the middle of its line.
#[derive(Debug)]
pub struct Writer {
    child: Option<Child>,
    log: Option<tempfile::NamedTempFile>,
}

impl Writer {
    /// Takes care of `child`: it is killed if the test panics before stopping it.
    pub fn from_child(child: Child) -> Self {
        Writer {
            child: Some(child),
            log: None,
        }
    }

    /// The process, no longer killed on drop (its log, if in a file, is not in its output).
    pub fn into_child(mut self) -> Child {
        self.child.take().expect("the writer is running")
    }

    /// What the writer logged so far (from its log file; empty for a writer whose stderr the
    /// caller set up).
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|f| std::fs::read(f.path()).ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Waits for the writer to exit: its exit status and everything it logged.
    pub fn wait_with_log(mut self) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().expect("the writer is running");
        if self.log.is_none() {
            let output = child.wait_with_output().expect("wait for lakewriter");
            return (
                output.status,
                String::from_utf8_lossy(&output.stderr).into_owned(),
            );
        }
        let status = child.wait().expect("wait for lakewriter");
        (status, self.log())
    }
}

impl Deref for Writer {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.child.as_ref().expect("the writer is running")
    }
}

impl DerefMut for Writer {
    fn deref_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("the writer is running")
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `lakewriter run` on the test database.
pub fn start(db: &TestDb) -> Writer {
    start_with(db, &[])
}

/// The lakewriter binary the tests and benchmarks run: this build's, or the one
/// `LAKEWRITER_BINARY` names (a benchmark comparing two builds runs each in turn).
pub fn binary() -> std::path::PathBuf {
    std::env::var_os("LAKEWRITER_BINARY")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_lakewriter").into())
}

/// Runs the command `args[0]` of the binary on the test config with `args[1..]` and settings
/// as environment overrides (`SECTION__KEY`); its output, whatever the exit.
pub fn command(db: &TestDb, args: &[&str], settings: &[(&str, &str)]) -> std::process::Output {
    Command::new(binary())
        .args(&args[..1])
        .arg("--config")
        .arg(config_path(db))
        .args(&args[1..])
        .envs(
            settings
                .iter()
                .map(|(k, v)| (format!("LAKEWRITER__{k}"), *v)),
        )
        .output()
        .expect("run lakewriter")
}

/// [`command`], asserting it succeeded; its standard output.
pub fn command_ok(db: &TestDb, args: &[&str], settings: &[(&str, &str)]) -> String {
    let output = command(db, args, settings);
    assert!(
        output.status.success(),
        "lakewriter {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Stops the writer the way a service manager does (SIGTERM), asserts it exited 0, and
/// returns its log.
pub fn stop(child: Writer) -> String {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let (status, log) = child.wait_with_log();
    assert!(status.success(), "lakewriter run failed: {log}");
    log
}

/// The durable position a stopped writer reports in its last log line (`stopped
/// durable=…`): what it committed to the lake, and so what the slot must have acknowledged.
pub fn stopped_at(log: &str) -> lakewriter::Lsn {
    log.lines()
        .filter(|line| line.contains(" stopped "))
        .find_map(|line| {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix("durable="))
        })
        .and_then(|lsn| lsn.parse().ok())
        .unwrap_or_else(|| panic!("the writer logged no durable position: {log}"))
}

/// The slot's acknowledged position (zero before the writer created it).
pub async fn acknowledged(db: &TestDb) -> lakewriter::Lsn {
    db.client()
        .await
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.slot],
        )
        .await
        .expect("read the slot")
        .and_then(|r| r.get::<_, Option<String>>(0))
        .and_then(|t| t.parse().ok())
        .unwrap_or_default()
}

/// Waits until the writer has acknowledged everything committed so far.
pub async fn caught_up(db: &TestDb, child: &mut Child) {
    // the slot's first position is its consistent point, before the initial copy: a position
    // taken once the slot exists is past it, so reaching it means the copy is in the lake
    let created = Instant::now() + Duration::from_secs(120);
    while acknowledged(db).await == lakewriter::Lsn::ZERO {
        assert!(
            Instant::now() < created,
            "the writer never created its slot"
        );
        exited_early(child);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let target = db.sync_point().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while acknowledged(db).await < target {
        exited_early(child);
        assert!(Instant::now() < deadline, "the writer did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fails the test with the writer's log if it has exited.
fn exited_early(child: &mut Child) {
    if let Ok(Some(status)) = child.try_wait() {
        let mut log = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut stderr, &mut log);
        }
        panic!("lakewriter exited early with {status}: {log}");
    }
}

/// Runs `query` (with `{scan}` standing for the table's scan, `{metadata}` for its metadata
/// file) in DuckDB over the lake table `name` and returns its rows as lines.
pub fn duck_query(db: &TestDb, name: &str, query: &str) -> Vec<String> {
    let catalog = db.warehouse.path().join("catalog.db");
    let script = format!(
        r#"
import pathlib, sqlite3, sys
import duck
# read-only: a reader never creates the catalog the writer is about to make
catalog = sqlite3.connect(pathlib.Path({catalog:?}).as_uri() + "?mode=ro", uri=True)
row = catalog.execute(
    "SELECT metadata_location FROM iceberg_tables WHERE table_namespace = ? AND table_name = ?",
    ({namespace:?}, {name:?}),
).fetchone()
if row is None:
    sys.exit("no such table in the catalog")
con = duck.connect()
query = {query:?}.replace("{{scan}}", f"iceberg_scan('{{row[0]}}')").replace("{{metadata}}", row[0])
for values in con.sql(query).fetchall():
    print("|".join("NULL" if v is None else str(v) for v in values))
"#,
        catalog = catalog.display().to_string(),
        namespace = db.namespace,
    );
    stack().python_lines("DuckDB", &script, &[])
}

/// The progress of lake table `name`'s chunked copy as its current snapshot carries it
/// (`lakewriter.copy`); `None` when no copy is under way (or no such table).
pub fn lake_copy_progress(db: &TestDb, name: &str) -> Option<String> {
    lake_summary(db, name, "lakewriter.copy")
}

/// The checkpoint of lake table `name`'s current snapshot (`lakewriter.lsn`).
pub fn lake_checkpoint(db: &TestDb, name: &str) -> Option<lakewriter::Lsn> {
    lake_summary(db, name, "lakewriter.lsn").and_then(|l| l.parse().ok())
}

/// Property `property` of the summary of lake table `name`'s current snapshot.
fn lake_summary(db: &TestDb, name: &str, property: &str) -> Option<String> {
    let catalog = db.warehouse.path().join("catalog.db");
    let script = format!(
        r#"
import json, pathlib, sqlite3
# read-only: a reader never creates the catalog the writer is about to make; before the
# writer has made it (no file, or no table yet) there is no such lake table
try:
    catalog = sqlite3.connect(pathlib.Path({catalog:?}).as_uri() + "?mode=ro", uri=True)
    row = catalog.execute(
        "SELECT metadata_location FROM iceberg_tables WHERE table_namespace = ? AND table_name = ?",
        ({namespace:?}, {name:?}),
    ).fetchone()
except sqlite3.OperationalError:
    row = None
if row is not None:
    meta = json.load(open(row[0].removeprefix("file://")))
    current = meta.get("current-snapshot-id")
    for s in meta.get("snapshots", []):
        if s["snapshot-id"] == current and {property:?} in s["summary"]:
            print(s["summary"][{property:?}])
"#,
        catalog = catalog.display().to_string(),
        namespace = db.namespace,
    );
    stack()
        .python_lines("the lake's metadata", &script, &[])
        .into_iter()
        .next()
}

/// Waits until lake table `name` has no chunked copy under way.
pub async fn copy_completed(db: &TestDb, child: &mut Child, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while lake_copy_progress(db, name).is_some() {
        exited_early(child);
        assert!(
            Instant::now() < deadline,
            "the copy of {name} never completed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs the pyiceberg `body` on the test's SQLite catalog and returns what it printed. The
/// body finds `catalog` (the catalog), `ident` (`<namespace>.<table>`), `args` (the extra
/// `args`) and `text(v)` (a value as PostgreSQL prints it: decimals positional, `NULL`).
pub fn pyiceberg(db: &TestDb, table: &str, body: &str, args: &[&str]) -> String {
    const PREAMBLE: &str = r#"
import sys
from decimal import Decimal
from pyiceberg.catalog.sql import SqlCatalog
path, warehouse, ident = sys.argv[1:4]
args = sys.argv[4:]
catalog = SqlCatalog("lakewriter", uri=f"sqlite:///{path}", warehouse=warehouse)
def text(v):
    if v is None:
        return "NULL"
    return format(v, "f") if isinstance(v, Decimal) else str(v)
"#;
    let output = stack()
        .python()
        .arg("-c")
        .arg(format!("{PREAMBLE}{body}"))
        .arg(db.warehouse.path().join("catalog.db"))
        .arg(format!("file://{}", db.warehouse.path().display()))
        .arg(format!("{}.{table}", db.namespace))
        .args(args)
        .output()
        .expect("run pyiceberg");
    assert!(
        output.status.success(),
        "pyiceberg on {table}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Starts the writer with more settings, as environment overrides (`SECTION__KEY`).
pub fn start_with(db: &TestDb, settings: &[(&str, &str)]) -> Writer {
    start_with_env(db, settings, &[])
}

/// [`start_with`], with the environment variables `env` set too (secrets a config names).
pub fn start_with_env(db: &TestDb, settings: &[(&str, &str)], env: &[(&str, &str)]) -> Writer {
    let log = tempfile::NamedTempFile::new().expect("a log file for lakewriter run");
    let stderr = log.reopen().expect("open the log file");
    let child = Command::new(binary())
        .args(["run", "--config"])
        .arg(config_path(db))
        .envs(
            settings
                .iter()
                .map(|(k, v)| (format!("LAKEWRITER__{k}"), *v)),
        )
        .envs(env.iter().copied())
        // the default filter, as a user runs it
        .env_remove("LAKEWRITER_LOG")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start lakewriter run");
    Writer {
        child: Some(child),
        log: Some(log),
    }
}

/// Waits until DuckDB reads `expected` from `query` over lake table `name`.
pub async fn lake_shows(
    db: &TestDb,
    child: &mut Child,
    name: &str,
    query: &str,
    expected: &[&str],
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if duck_query(db, name, query) == expected {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("lakewriter exited early with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "lake table {name} never showed {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub fn lake_shows_now(db: &TestDb, name: &str, query: &str, expected: &[&str]) {
    assert_eq!(duck_query(db, name, query), expected, "lake table {name}");
}

/// A small deterministic generator, so a failing run can be replayed from its seed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

/// The crash test's run: `workloads` rounds of `sql/workload.sql` run in the background while
/// the writer (with `settings`) is started and killed with SIGKILL `crashes` times, each after
/// a random 300 ms to `300 + wait_ms`; then a last run catches up and stops cleanly. The seed
/// comes from `LAKEWRITER_CRASH_SEED`, or the clock, and is printed for a replay. The caller
/// then compares the lake with PostgreSQL.
pub async fn crash_and_restart(
    db: &TestDb,
    settings: &[(&str, &str)],
    workloads: usize,
    crashes: usize,
    wait_ms: u64,
) {
    crash_and_restart_env(db, settings, &[], workloads, crashes, wait_ms).await;
}

/// [`crash_and_restart`], each writer started with the environment variables `env` too.
pub async fn crash_and_restart_env(
    db: &TestDb,
    settings: &[(&str, &str)],
    env: &[(&str, &str)],
    workloads: usize,
    crashes: usize,
    wait_ms: u64,
) {
    let seed = std::env::var("LAKEWRITER_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        });
    println!("crash test seed: {seed} (replay with LAKEWRITER_CRASH_SEED={seed})");
    let mut random = Lcg(seed);

    // A workload that runs through every crash and restart.
    let url = db.url.clone();
    let workload = std::thread::spawn(move || {
        for _ in 0..workloads {
            let status = stack()
                .pg_program("psql")
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &url])
                .args([
                    "-v",
                    "rounds=1",
                    "-v",
                    "batch=300",
                    "-f",
                    "sql/workload.sql",
                ])
                .current_dir(project_dir())
                .stdout(Stdio::null())
                .status()
                .expect("psql");
            assert!(status.success());
            std::thread::sleep(Duration::from_millis(250));
        }
    });

    for round in 0..crashes {
        let mut child = start_with_env(db, settings, env);
        let wait = 300 + random.next(wait_ms);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "round {round}: lakewriter exited by itself with {status}: {}",
                child.wait_with_log().1
            );
        }
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    }
    workload.join().expect("workload");

    // A last run to the end, then a clean stop.
    let mut child = start_with_env(db, settings, env);
    caught_up(db, &mut child).await;
    stop(child);
}

/// Kills `writer` (if still running) and returns what it logged.
pub fn log_of(mut writer: Writer) -> String {
    let _ = writer.kill();
    writer.wait_with_log().1
}

/// Panics, naming up to ten rows only the lake holds and ten only PostgreSQL holds, and the
/// writer's `log`, unless the two sides' lines of table `what` are equal.
pub fn assert_same_lines(what: &str, lake: &[String], postgres: &[String], log: &str) {
    if lake == postgres {
        return;
    }
    let lake_set: std::collections::BTreeSet<&String> = lake.iter().collect();
    let postgres_set: std::collections::BTreeSet<&String> = postgres.iter().collect();
    let missing: Vec<_> = postgres_set.difference(&lake_set).take(10).collect();
    let extra: Vec<_> = lake_set.difference(&postgres_set).take(10).collect();
    panic!(
        "the lake's {what} table differs from PostgreSQL ({} rows against {}): missing \
         {missing:?}, extra {extra:?}; the writer's log:\n{log}",
        lake.len(),
        postgres.len()
    );
}

/// The chunks lake table `name`'s copy has committed; `None` with no copy under way.
pub fn copy_chunks(db: &TestDb, name: &str) -> Option<u64> {
    lake_copy_progress(db, name)
        .and_then(|p| serde_json::from_str::<serde_json::Value>(&p).ok())
        .and_then(|p| p["chunks"].as_u64())
}

/// Waits (three minutes at most) until lake table `name`'s copy has committed `chunks`
/// chunks; the writer back, and the count seen.
pub async fn wait_for_chunks(
    db: &TestDb,
    writer: Writer,
    name: &str,
    chunks: u64,
) -> (Writer, u64) {
    wait_until_chunks(writer, name, chunks, || copy_chunks(db, name)).await
}

/// Waits (three minutes at most) until the copy of `name` has committed `chunks` chunks, as
/// `committed` reads them from the lake (Iceberg's summary, Delta's log); the writer back, and
/// the count seen.
pub async fn wait_until_chunks(
    writer: Writer,
    name: &str,
    chunks: u64,
    committed: impl Fn() -> Option<u64>,
) -> (Writer, u64) {
    let mut writer = writer;
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut under_way = false;
    loop {
        let now = committed();
        if let Some(seen) = now.filter(|c| *c >= chunks) {
            return (writer, seen);
        }
        // progress seen and gone: the copy completed, and will not reach `chunks` any more
        assert!(
            !(under_way && now.is_none()),
            "the copy of {name} completed before {chunks} chunks were seen committed (make \
             the table larger): {}",
            log_of(writer)
        );
        under_way |= now.is_some();
        if let Ok(Some(status)) = writer.try_wait() {
            panic!("lakewriter exited early with {status}: {}", log_of(writer));
        }
        assert!(
            Instant::now() < deadline,
            "the copy of {name} committed no {chunks} chunks: {}",
            log_of(writer)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
