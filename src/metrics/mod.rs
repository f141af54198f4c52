//! What the running service measures, for Prometheus: one registry of `lakewriter_*` figures
//! (base units, `_total` counters, `_seconds` histograms, a `table` label bounded by the
//! config's tables) and the facts `/healthz` and `/readyz` answer from.
//!
//! `run` installs one [`Metrics`] for the process when `[metrics] listen` is set; the code that
//! knows a figure records it through the free functions below, which do nothing when none is
//! installed (one-shot commands, tests of the library), so instrumentation costs a branch.

pub mod sampler;
pub mod server;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::config::Config;
use crate::lsn::Lsn;
use crate::table::Op;
use crate::table::TableId;

/// A figure of one table.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    /// The source table, `schema.table`.
    pub table: String,
}

/// Changes of one table by operation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    /// The source table.
    pub table: String,
    /// `insert`, `update`, `delete` or `truncate`.
    pub op: &'static str,
}

/// One state of a table, for the state gauge (1 for the state it is in, 0 for the others).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// The source table.
    pub table: String,
    /// One of [`TableStatus::NAMES`].
    pub state: &'static str,
}

/// Errors by kind.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The error's kind: one of [`ERROR_KINDS`].
    pub kind: &'static str,
}

/// A compaction run of one table and how it ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// The lake table compacted.
    pub table: String,
    /// `ok`, `skipped` or `failed`.
    pub result: &'static str,
}

/// The build.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    /// The crate version.
    pub version: &'static str,
}

/// Where a table stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TableStatus {
    /// Its changes are applied as they come.
    Streaming,
    /// Its initial (or late) copy is in progress.
    Copying,
    /// Stopped by `[sink] on_table_error = "stop_table"`: the slot keeps its WAL.
    Stopped,
    /// Suspended by `on_table_error = "suspend_table"`: copied again at the next start.
    Suspended,
}

impl TableStatus {
    /// Every state's label value.
    pub const NAMES: [&'static str; 4] = ["streaming", "copying", "stopped", "suspended"];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            TableStatus::Streaming => "streaming",
            TableStatus::Copying => "copying",
            TableStatus::Stopped => "stopped",
            TableStatus::Suspended => "suspended",
        }
    }
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;
type FloatGauge = Gauge<f64, AtomicU64>;

fn commit_buckets() -> Histogram {
    // 5 ms to about 80 s
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

fn freshness_buckets() -> Histogram {
    // 50 ms to about 3.6 hours
    Histogram::new(exponential_buckets(0.05, 2.0, 19))
}

fn compaction_buckets() -> Histogram {
    // 100 ms to about 1.8 hours
    Histogram::new(exponential_buckets(0.1, 2.0, 17))
}

/// The process's figures and health.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    started: Instant,
    changes: Family<OpLabel, Counter>,
    committed_rows: Family<TableLabel, Counter>,
    committed_deletes: Family<TableLabel, Counter>,
    committed_bytes: Family<TableLabel, Counter>,
    data_files: Family<TableLabel, Counter>,
    delete_files: Family<TableLabel, Counter>,
    commits: Family<TableLabel, Counter>,
    commit_duration: Histograms<TableLabel>,
    catalog_conflicts: Family<TableLabel, Counter>,
    commit_retries: Family<TableLabel, Counter>,
    errors: Family<KindLabel, Counter>,
    freshness: Histograms<TableLabel>,
    oldest_buffered: Family<TableLabel, FloatGauge>,
    table_max_latency: Family<TableLabel, FloatGauge>,
    last_commit: Family<TableLabel, FloatGauge>,
    wal_end: Gauge,
    slot_confirmed: Gauge,
    slot_retained: Gauge,
    slot_active: Gauge,
    source_up: Gauge,
    stream_connected: Gauge,
    durable_lsn: Family<TableLabel, Gauge>,
    buffered_rows: Family<TableLabel, Gauge>,
    buffered_bytes: Family<TableLabel, Gauge>,
    spilled_bytes: Gauge,
    memory_budget: Gauge,
    max_latency: FloatGauge,
    snapshot_rows: Family<TableLabel, Counter>,
    snapshot_estimate: Family<TableLabel, Gauge>,
    compaction_runs: Family<ResultLabel, Counter>,
    compaction_duration: Histograms<TableLabel>,
    compaction_files_in: Family<TableLabel, Counter>,
    compaction_files_out: Family<TableLabel, Counter>,
    compaction_bytes_in: Family<TableLabel, Counter>,
    compaction_bytes_out: Family<TableLabel, Counter>,
    snapshots_expired: Family<TableLabel, Counter>,
    orphans_removed: Family<TableLabel, Counter>,
    table_state: Family<StateLabel, Gauge>,
    health: Health,
}

/// What `/healthz` and `/readyz` answer from.
#[derive(Debug, Default)]
struct Health {
    /// Milliseconds after `started` of the last sign of life of the pipeline's loop.
    beat_ms: AtomicU64,
    /// The replication stream is connected (a session started and was not interrupted since).
    connected: AtomicBool,
    /// Why the stream is not connected, when it was interrupted.
    disconnected: Mutex<Option<String>>,
    /// Each table's state and, when stopped or suspended, why.
    tables: Mutex<BTreeMap<String, (TableStatus, Option<String>)>>,
    /// The last commit's failure, until a commit of that table succeeds.
    commit_failed: Mutex<Option<(String, String)>>,
    /// Milliseconds a beat may be late before the process counts as wedged.
    wedged_after_ms: AtomicI64,
}

static INSTALLED: OnceLock<Metrics> = OnceLock::new();
static RECORDING: AtomicBool = AtomicBool::new(true);

/// The process's metrics, when `run` installed them (and recording is on).
pub fn installed() -> Option<&'static Metrics> {
    INSTALLED
        .get()
        .filter(|_| RECORDING.load(Ordering::Relaxed))
}

/// Pauses (`false`) or resumes recording into the installed metrics: for a benchmark that
/// measures runs with and without them in one process.
pub fn set_recording(on: bool) {
    RECORDING.store(on, Ordering::Relaxed);
}

/// Installs the process's metrics for `config` (once: a second call returns the first).
pub fn install(config: &Config) -> &'static Metrics {
    INSTALLED.get_or_init(|| {
        Metrics::new(
            config.flush.memory_budget.bytes(),
            config.flush.max_latency.get(),
        )
    })
}

/// How long the pipeline's loop may show no sign of life before `/healthz` fails: a commit
/// retrying a lost catalog race or a slow store takes minutes at worst.
const WEDGED_AFTER: Duration = Duration::from_secs(300);

impl Metrics {
    /// A registry with every figure, for a pipeline with `memory_budget` bytes and the
    /// latency limit `max_latency`.
    pub fn new(memory_budget: u64, max_latency: Duration) -> Self {
        let mut registry = Registry::with_prefix("lakewriter");
        let metrics = Metrics {
            registry: Registry::default(),
            started: Instant::now(),
            changes: Family::default(),
            committed_rows: Family::default(),
            committed_deletes: Family::default(),
            committed_bytes: Family::default(),
            data_files: Family::default(),
            delete_files: Family::default(),
            commits: Family::default(),
            commit_duration: Family::new_with_constructor(commit_buckets),
            catalog_conflicts: Family::default(),
            commit_retries: Family::default(),
            errors: Family::default(),
            freshness: Family::new_with_constructor(freshness_buckets),
            oldest_buffered: Family::default(),
            table_max_latency: Family::default(),
            last_commit: Family::default(),
            wal_end: Gauge::default(),
            slot_confirmed: Gauge::default(),
            slot_retained: Gauge::default(),
            slot_active: Gauge::default(),
            source_up: Gauge::default(),
            stream_connected: Gauge::default(),
            durable_lsn: Family::default(),
            buffered_rows: Family::default(),
            buffered_bytes: Family::default(),
            spilled_bytes: Gauge::default(),
            memory_budget: Gauge::default(),
            max_latency: FloatGauge::default(),
            snapshot_rows: Family::default(),
            snapshot_estimate: Family::default(),
            compaction_runs: Family::default(),
            compaction_duration: Family::new_with_constructor(compaction_buckets),
            compaction_files_in: Family::default(),
            compaction_files_out: Family::default(),
            compaction_bytes_in: Family::default(),
            compaction_bytes_out: Family::default(),
            snapshots_expired: Family::default(),
            orphans_removed: Family::default(),
            table_state: Family::default(),
            health: Health::default(),
        };
        let build: Family<VersionLabel, Gauge> = Family::default();
        build
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        let m = &metrics;
        let r = &mut registry;
        r.register("build_info", "The running version (always 1)", build);
        r.register(
            "changes_received",
            "Changes received from the replication stream, by table and operation",
            m.changes.clone(),
        );
        r.register(
            "committed_rows",
            "Rows written to the lake (new rows and new versions of rows, snapshot copies included)",
            m.committed_rows.clone(),
        );
        r.register(
            "committed_deletes",
            "Keys deleted in the lake (equality deletes, or Delta merge deletes)",
            m.committed_deletes.clone(),
        );
        r.register(
            "committed_bytes",
            "Bytes of data and delete files committed to the lake",
            m.committed_bytes.clone(),
        );
        r.register(
            "data_files_written",
            "Data files committed to the lake",
            m.data_files.clone(),
        );
        r.register(
            "delete_files_written",
            "Delete files committed to the lake",
            m.delete_files.clone(),
        );
        r.register(
            "commits",
            "Lake commits of streamed changes",
            m.commits.clone(),
        );
        r.register(
            "commit_duration_seconds",
            "Time to reduce, write and commit one table's flush",
            m.commit_duration.clone(),
        );
        r.register(
            "catalog_conflicts",
            "Catalog compare-and-swap commits lost to another writer (then retried)",
            m.catalog_conflicts.clone(),
        );
        r.register(
            "commit_retries",
            "Lake commits tried again after a lost race or a transient failure",
            m.commit_retries.clone(),
        );
        r.register(
            "errors",
            "Errors by kind: source, replication, postgres, sink, io, config, compaction",
            m.errors.clone(),
        );
        r.register(
            "freshness_seconds",
            "Seconds from a source transaction's commit to the lake commit that holds it",
            m.freshness.clone(),
        );
        r.register(
            "oldest_buffered_change_age_seconds",
            "Age of the oldest change buffered for the table and not yet committed (0 when none)",
            m.oldest_buffered.clone(),
        );
        r.register(
            "table_max_latency_seconds",
            "The table's latency limit ([sink.tables] max_latency, else [flush] max_latency)",
            m.table_max_latency.clone(),
        );
        r.register(
            "last_commit_timestamp_seconds",
            "Unix time of the table's last lake commit by this process",
            m.last_commit.clone(),
        );
        r.register(
            "source_wal_end_lsn",
            "The server's current WAL position (LSN as a byte offset)",
            m.wal_end.clone(),
        );
        r.register(
            "slot_confirmed_flush_lsn",
            "The slot's confirmed flush position (LSN as a byte offset)",
            m.slot_confirmed.clone(),
        );
        r.register(
            "slot_retained_wal_bytes",
            "WAL the slot retains on the server (current WAL position minus the slot's restart_lsn)",
            m.slot_retained.clone(),
        );
        r.register(
            "slot_active",
            "1 while a session streams from the slot",
            m.slot_active.clone(),
        );
        r.register(
            "source_up",
            "1 when the last sample of the source's positions succeeded",
            m.source_up.clone(),
        );
        r.register(
            "stream_connected",
            "1 while the replication stream is connected",
            m.stream_connected.clone(),
        );
        r.register(
            "table_durable_lsn",
            "The LSN the lake holds the table up to (its checkpoint)",
            m.durable_lsn.clone(),
        );
        r.register(
            "buffered_rows",
            "Changes buffered for the table, not yet committed",
            m.buffered_rows.clone(),
        );
        r.register(
            "buffered_bytes",
            "Arrow bytes buffered for the table, not yet committed",
            m.buffered_bytes.clone(),
        );
        r.register(
            "spilled_bytes",
            "Bytes of the open transaction spilled to local files",
            m.spilled_bytes.clone(),
        );
        r.register(
            "memory_budget_bytes",
            "The configured memory budget ([flush] memory_budget)",
            m.memory_budget.clone(),
        );
        r.register(
            "flush_max_latency_seconds",
            "The configured latency limit ([flush] max_latency)",
            m.max_latency.clone(),
        );
        r.register(
            "snapshot_rows_copied",
            "Rows copied by the table's initial snapshot",
            m.snapshot_rows.clone(),
        );
        r.register(
            "snapshot_rows_estimated",
            "PostgreSQL's estimate of the rows the table's snapshot copies",
            m.snapshot_estimate.clone(),
        );
        r.register(
            "compaction_runs",
            "Scheduled compactions of a table, by result (ok, skipped, failed)",
            m.compaction_runs.clone(),
        );
        r.register(
            "compaction_duration_seconds",
            "Time to compact one table",
            m.compaction_duration.clone(),
        );
        r.register(
            "compaction_files_in",
            "Data and delete files replaced by compaction",
            m.compaction_files_in.clone(),
        );
        r.register(
            "compaction_files_out",
            "Data files written by compaction",
            m.compaction_files_out.clone(),
        );
        r.register(
            "compaction_bytes_in",
            "Bytes of the files compaction replaced",
            m.compaction_bytes_in.clone(),
        );
        r.register(
            "compaction_bytes_out",
            "Bytes of the files compaction wrote",
            m.compaction_bytes_out.clone(),
        );
        r.register(
            "snapshots_expired",
            "Snapshots (Delta: log versions) expired by compaction",
            m.snapshots_expired.clone(),
        );
        r.register(
            "orphan_files_removed",
            "Files no snapshot references, removed by compaction",
            m.orphans_removed.clone(),
        );
        r.register(
            "table_state",
            "1 for the state the table is in (streaming, copying, stopped, suspended), 0 for the others",
            m.table_state.clone(),
        );
        // every kind from the start, so a rate over them has data before the first error
        for kind in ERROR_KINDS {
            let _ = metrics.errors.get_or_create(&KindLabel { kind });
        }
        metrics.memory_budget.set(clamp_i64(memory_budget));
        metrics.max_latency.set(max_latency.as_secs_f64());
        metrics
            .health
            .wedged_after_ms
            .store(WEDGED_AFTER.as_millis() as i64, Ordering::Relaxed);
        Metrics {
            registry,
            ..metrics
        }
    }

    /// The registry, for the exposition.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A sign of life of the pipeline's loop.
    pub fn beat(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.health.beat_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since the pipeline's loop last showed a sign of life.
    pub fn since_beat(&self) -> Duration {
        let beat = self.health.beat_ms.load(Ordering::Relaxed);
        self.started
            .elapsed()
            .saturating_sub(Duration::from_millis(beat))
    }

    /// The problems that make the process unhealthy (its loop wedged); empty when alive.
    pub fn liveness_problems(&self) -> Vec<String> {
        let late = self.since_beat();
        let limit = self.health.wedged_after_ms.load(Ordering::Relaxed);
        if late.as_millis() as i64 > limit {
            vec![format!(
                "the pipeline has shown no progress for {} s",
                late.as_secs()
            )]
        } else {
            Vec::new()
        }
    }

    /// What keeps the service from being ready; empty when it is.
    pub fn readiness_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.health.connected.load(Ordering::Relaxed) {
            let why = lock(&self.health.disconnected).clone();
            problems.push(match why {
                Some(error) => format!("source: disconnected, retrying ({error})"),
                None => "source: the replication stream is not connected yet".into(),
            });
        }
        for (table, (state, why)) in lock(&self.health.tables).iter() {
            if matches!(state, TableStatus::Stopped | TableStatus::Suspended) {
                problems.push(format!(
                    "table {table}: {}{}",
                    state.name(),
                    why.as_ref().map(|w| format!(" ({w})")).unwrap_or_default()
                ));
            }
        }
        if let Some((table, error)) = lock(&self.health.commit_failed).as_ref() {
            problems.push(format!("table {table}: the last commit failed ({error})"));
        }
        problems
    }

    /// Each table's state, for `status --json` of a running service.
    pub fn table_states(&self) -> BTreeMap<String, TableStatus> {
        lock(&self.health.tables)
            .iter()
            .map(|(t, (s, _))| (t.clone(), *s))
            .collect()
    }

    fn table(table: &TableId) -> TableLabel {
        TableLabel {
            table: table.to_string(),
        }
    }

    /// `table` is now in `state` (`why` it was stopped or suspended).
    pub fn set_state(&self, table: &TableId, state: TableStatus, why: Option<&str>) {
        let name = table.to_string();
        {
            let mut tables = lock(&self.health.tables);
            if tables.get(&name).map(|(s, _)| *s) == Some(state) {
                return;
            }
            tables.insert(name.clone(), (state, why.map(str::to_string)));
        }
        for candidate in TableStatus::NAMES {
            self.table_state
                .get_or_create(&StateLabel {
                    table: name.clone(),
                    state: candidate,
                })
                .set(i64::from(candidate == state.name()));
        }
    }

    /// The replication stream started a session.
    pub fn stream_started(&self) {
        self.health.connected.store(true, Ordering::Relaxed);
        *lock(&self.health.disconnected) = None;
        self.stream_connected.set(1);
    }

    /// The replication stream was interrupted by `error` and reconnects.
    pub fn stream_interrupted(&self, error: &crate::Error) {
        self.health.connected.store(false, Ordering::Relaxed);
        *lock(&self.health.disconnected) = Some(error.to_string());
        self.stream_connected.set(0);
        self.error(error);
    }

    /// Changes of `table` received, one per op.
    pub fn changes(&self, table: &TableId, ops: &[Op]) {
        let (mut inserts, mut updates, mut deletes) = (0u64, 0u64, 0u64);
        for op in ops {
            match op {
                Op::Insert => inserts += 1,
                Op::Update => updates += 1,
                Op::Delete => deletes += 1,
            }
        }
        let name = table.to_string();
        for (op, n) in [
            ("insert", inserts),
            ("update", updates),
            ("delete", deletes),
        ] {
            if n > 0 {
                self.changes
                    .get_or_create(&OpLabel {
                        table: name.clone(),
                        op,
                    })
                    .inc_by(n);
            }
        }
    }

    /// A TRUNCATE of `table` received.
    pub fn truncate(&self, table: &TableId) {
        self.changes
            .get_or_create(&OpLabel {
                table: table.to_string(),
                op: "truncate",
            })
            .inc();
    }

    /// A flush of `table` committed `rows` rows and `deletes` deletes in `took`, holding the
    /// transactions committed at the source at `source_commits` (Unix microseconds).
    pub fn committed(
        &self,
        table: &TableId,
        rows: usize,
        deletes: usize,
        took: Duration,
        source_commits: impl Iterator<Item = i64>,
    ) {
        let label = Self::table(table);
        self.commits.get_or_create(&label).inc();
        self.committed_rows
            .get_or_create(&label)
            .inc_by(rows as u64);
        self.committed_deletes
            .get_or_create(&label)
            .inc_by(deletes as u64);
        self.commit_duration
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        let now = unix_micros();
        let freshness = self.freshness.get_or_create(&label);
        for at in source_commits {
            freshness.observe((now - at).max(0) as f64 / 1e6);
        }
        self.last_commit.get_or_create(&label).set(now as f64 / 1e6);
        let mut failed = lock(&self.health.commit_failed);
        if failed.as_ref().is_some_and(|(t, _)| *t == label.table) {
            *failed = None;
        }
    }

    /// Files the sink committed for `table`: data and delete files, and their bytes.
    pub fn files(&self, table: &TableId, data: usize, deletes: usize, bytes: u64) {
        let label = Self::table(table);
        self.data_files.get_or_create(&label).inc_by(data as u64);
        self.delete_files
            .get_or_create(&label)
            .inc_by(deletes as u64);
        self.committed_bytes.get_or_create(&label).inc_by(bytes);
    }

    /// A commit of `table` lost its compare-and-swap (`conflict`) or failed transiently, and
    /// is tried again.
    pub fn commit_retry(&self, table: &str, conflict: bool) {
        let label = TableLabel {
            table: table.to_string(),
        };
        self.commit_retries.get_or_create(&label).inc();
        if conflict {
            self.catalog_conflicts.get_or_create(&label).inc();
        }
    }

    /// A commit of `table` failed with `error`.
    pub fn commit_failed(&self, table: &TableId, error: &crate::Error) {
        *lock(&self.health.commit_failed) = Some((table.to_string(), error.to_string()));
        self.error(error);
    }

    /// `error` happened (counted by its kind).
    pub fn error(&self, error: &crate::Error) {
        self.error_kind(error_kind(error));
    }

    /// An error of `kind` happened.
    pub fn error_kind(&self, kind: &'static str) {
        self.errors.get_or_create(&KindLabel { kind }).inc();
    }

    /// The buffers of `table` now: rows, bytes, the age of the oldest change, its checkpoint.
    pub fn buffered(
        &self,
        table: &TableId,
        rows: usize,
        bytes: usize,
        oldest: Option<Duration>,
        checkpoint: Option<Lsn>,
        max_latency: Duration,
    ) {
        let label = Self::table(table);
        self.table_max_latency
            .get_or_create(&label)
            .set(max_latency.as_secs_f64());
        self.buffered_rows
            .get_or_create(&label)
            .set(clamp_i64(rows as u64));
        self.buffered_bytes
            .get_or_create(&label)
            .set(clamp_i64(bytes as u64));
        self.oldest_buffered
            .get_or_create(&label)
            .set(oldest.map_or(0.0, |d| d.as_secs_f64()));
        if let Some(lsn) = checkpoint {
            self.durable_lsn
                .get_or_create(&label)
                .set(clamp_i64(lsn.get()));
        }
    }

    /// Bytes of the open transaction spilled to local files.
    pub fn spilled(&self, bytes: u64) {
        self.spilled_bytes.set(clamp_i64(bytes));
    }

    /// The snapshot of `table` starts, PostgreSQL estimating `estimate` rows.
    pub fn copy_started(&self, table: &TableId, estimate: Option<u64>) {
        self.set_state(table, TableStatus::Copying, None);
        if let Some(estimate) = estimate {
            self.snapshot_estimate
                .get_or_create(&Self::table(table))
                .set(clamp_i64(estimate));
        }
    }

    /// The snapshot of `table` copied `rows` more rows.
    pub fn copied_rows(&self, table: &TableId, rows: u64) {
        self.snapshot_rows
            .get_or_create(&Self::table(table))
            .inc_by(rows);
        self.beat();
    }

    /// The snapshot of `table` is committed, with `rows` rows.
    pub fn copy_committed(&self, table: &TableId, rows: u64) {
        let label = Self::table(table);
        self.committed_rows.get_or_create(&label).inc_by(rows);
        self.last_commit
            .get_or_create(&label)
            .set(unix_micros() as f64 / 1e6);
        self.set_state(table, TableStatus::Streaming, None);
    }

    /// The server's WAL end, and the slot's confirmed flush, retained WAL and activity; `None`
    /// when the source could not be read.
    pub fn source_sample(&self, sample: Option<sampler::Sample>) {
        match sample {
            Some(s) => {
                self.source_up.set(1);
                self.wal_end.set(clamp_i64(s.wal_end.get()));
                if let Some(slot) = s.slot {
                    self.slot_confirmed
                        .set(clamp_i64(slot.confirmed_flush.get()));
                    self.slot_retained.set(slot.retained_bytes);
                    self.slot_active.set(i64::from(slot.active));
                }
            }
            None => {
                self.source_up.set(0);
            }
        }
    }

    /// A compaction of `outcome`'s table ended.
    pub fn compacted(&self, outcome: &crate::maintenance::compact::Outcome) {
        let table = outcome.table.clone();
        let result = if outcome.failed.is_some() {
            "failed"
        } else if outcome.skipped.is_some() {
            "skipped"
        } else {
            "ok"
        };
        self.compaction_runs
            .get_or_create(&ResultLabel {
                table: table.clone(),
                result,
            })
            .inc();
        let label = TableLabel { table };
        self.compaction_duration
            .get_or_create(&label)
            .observe(outcome.duration.as_secs_f64());
        self.compaction_files_in
            .get_or_create(&label)
            .inc_by((outcome.data_files_in + outcome.delete_files_in) as u64);
        self.compaction_files_out
            .get_or_create(&label)
            .inc_by(outcome.data_files_out as u64);
        self.compaction_bytes_in
            .get_or_create(&label)
            .inc_by(outcome.bytes_in);
        self.compaction_bytes_out
            .get_or_create(&label)
            .inc_by(outcome.bytes_out);
        self.snapshots_expired
            .get_or_create(&label)
            .inc_by(outcome.cleanup.snapshots as u64);
        self.orphans_removed
            .get_or_create(&label)
            .inc_by(outcome.cleanup.files as u64);
    }
}

/// Every value of the `kind` label of `lakewriter_errors_total`.
pub const ERROR_KINDS: [&str; 8] = [
    "config",
    "not_built",
    "io",
    "source",
    "replication",
    "sink",
    "postgres",
    "compaction",
];

/// The label value of `error`'s kind.
pub fn error_kind(error: &crate::Error) -> &'static str {
    match error {
        crate::Error::Config { .. } => "config",
        crate::Error::NotBuilt { .. } => "not_built",
        crate::Error::Io { .. } => "io",
        crate::Error::Source { .. } => "source",
        crate::Error::Replication { .. } => "replication",
        crate::Error::Sink { .. } => "sink",
        // only `export` meets these, and it reports no metrics: a destination's PostgreSQL
        crate::Error::Postgres { .. } | crate::Error::Export { .. } => "postgres",
    }
}

/// Commit times of the transactions a flush holds: those in `times` between `first` and
/// `last` (their commit LSNs).
pub fn commit_times_between(
    times: &HashMap<Lsn, i64>,
    first: Option<Lsn>,
    last: Option<Lsn>,
) -> impl Iterator<Item = i64> + '_ {
    times
        .iter()
        .filter(move |(lsn, _)| {
            first.is_some_and(|f| **lsn >= f) && last.is_some_and(|l| **lsn <= l)
        })
        .map(|(_, at)| *at)
}

fn clamp_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// A poisoned lock still holds figures worth reporting.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(metrics: &Metrics) -> String {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, metrics.registry())
            .expect("encode");
        text
    }

    #[test]
    fn a_commit_counts_rows_and_clears_a_failure_of_its_table() {
        let metrics = Metrics::new(1 << 30, Duration::from_secs(10));
        let table = TableId::new("public", "orders");
        metrics.commit_failed(
            &table,
            &crate::Error::Sink {
                table: "lake.orders".into(),
                message: "store unreachable".into(),
                retryable: true,
            },
        );
        metrics.stream_started();
        assert_eq!(metrics.readiness_problems().len(), 1);
        metrics.committed(&table, 7, 2, Duration::from_millis(30), [0i64].into_iter());
        assert!(metrics.readiness_problems().is_empty());
        let text = encoded(&metrics);
        assert!(
            text.contains("lakewriter_committed_rows_total{table=\"public.orders\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("lakewriter_errors_total{kind=\"sink\"} 1"),
            "{text}"
        );
        assert!(text.contains("lakewriter_build_info{version="), "{text}");
    }

    #[test]
    fn a_loop_late_past_the_limit_is_unhealthy_and_a_beat_within_it_is_not() {
        let metrics = Metrics::new(1 << 30, Duration::from_secs(10));
        metrics.beat();
        assert!(metrics.liveness_problems().is_empty());
        // a limit every beat is already past
        metrics.health.wedged_after_ms.store(-1, Ordering::Relaxed);
        let problems = metrics.liveness_problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("no progress"), "{problems:?}");
    }

    #[test]
    fn a_stopped_table_makes_the_service_unready_and_its_state_gauge_says_so() {
        let metrics = Metrics::new(1 << 30, Duration::from_secs(10));
        metrics.stream_started();
        let table = TableId::new("public", "orders");
        metrics.set_state(&table, TableStatus::Streaming, None);
        assert!(metrics.readiness_problems().is_empty());
        metrics.set_state(&table, TableStatus::Stopped, Some("column type changed"));
        let problems = metrics.readiness_problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("public.orders"), "{problems:?}");
        let text = encoded(&metrics);
        assert!(
            text.contains("lakewriter_table_state{table=\"public.orders\",state=\"stopped\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("lakewriter_table_state{table=\"public.orders\",state=\"streaming\"} 0"),
            "{text}"
        );
    }
}
