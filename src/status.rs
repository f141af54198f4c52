//! `lakewriter status`: where each lake table stands against the source — its checkpoint, how
//! far behind the server's WAL it is (bytes, and seconds since its last commit), its snapshots,
//! data and delete files — and what the slot retains. It reads Iceberg tables through the
//! catalog, never around it, and Delta tables through their logs (their own catalog).
//! `--json` prints the same facts for scripts, named as the metrics name them
//! (`slot_retained_wal_bytes`, `table_durable_lsn`, …, without the `lakewriter_` prefix).

use std::time::{SystemTime, UNIX_EPOCH};

use iceberg::spec::TableMetadata;
use serde::Serialize;

use crate::catalog::{Catalog, LakeCatalog};
use crate::config::{Config, TableFormat};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::sink::delta::{DeltaSettings, tables};
use crate::sink::iceberg::{catalog_error, checkpoint, copy_commits, file_io};
use crate::source::connection;
use crate::table::CopyProgress;

/// What `status` reports: the source's positions and each lake table.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The source and its slot; `None` when it could not be reached.
    pub source: Option<SourceReport>,
    /// Why the source could not be reached, when it could not.
    pub source_error: Option<String>,
    /// Each lake table of the config's namespace.
    pub tables: Vec<TableReport>,
    /// The tables the writer stopped (`[sink] on_table_error = "stop_table"`), with the error
    /// that stopped each, as its slot record says.
    pub stopped_tables: std::collections::BTreeMap<String, String>,
    /// The exports recorded in a destination database (`lakewriter export`), when one was
    /// given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exports: Option<Vec<crate::export::destination::ExportRecord>>,
    /// Why that destination's exports could not be read, when they could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exports_error: Option<String>,
}

/// The source's positions, named as the metrics name them.
#[derive(Debug, Clone, Serialize)]
pub struct SourceReport {
    /// The server's WAL position as a byte offset (`lakewriter_source_wal_end_lsn`).
    pub source_wal_end_lsn: Option<u64>,
    /// The slot's name.
    pub slot: String,
    /// Whether the slot exists.
    pub slot_exists: bool,
    /// The slot's confirmed flush position as a byte offset.
    pub slot_confirmed_flush_lsn: Option<u64>,
    /// The same, as PostgreSQL writes it (`16/B374D848`).
    pub slot_confirmed_flush: Option<String>,
    /// Whether a session streams from the slot.
    pub slot_active: bool,
    /// WAL the slot retains, in bytes.
    pub slot_retained_wal_bytes: i64,
}

/// One lake table, named as the metrics name it.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// The lake table, `namespace.name`.
    pub table: String,
    /// The LSN the lake holds the table up to, as a byte offset; `None` while incomplete.
    pub table_durable_lsn: Option<u64>,
    /// The same, as PostgreSQL writes it.
    pub checkpoint: Option<String>,
    /// WAL bytes between the server's position and the checkpoint.
    pub lag_bytes: Option<u64>,
    /// Seconds since the last commit while behind the server (0 when caught up).
    pub lag_seconds: Option<f64>,
    /// Unix time of the table's last commit.
    pub last_commit_timestamp_seconds: Option<f64>,
    /// Iceberg: snapshots kept.
    pub snapshots: Option<usize>,
    /// Delta: the log version.
    pub version: Option<u64>,
    /// Live data files.
    pub data_files: Option<u64>,
    /// Iceberg: live delete files.
    pub delete_files: Option<u64>,
    /// Rows (Iceberg: the snapshot's total records; Delta: from the files' statistics).
    pub rows: Option<u64>,
    /// Iceberg: the size of the current `metadata.json`, rewritten whole on every commit.
    pub metadata_bytes: Option<u64>,
    /// Iceberg: the manifests of the current snapshot, which every reader plans over.
    pub manifests: Option<usize>,
    /// The table's chunked copy while one runs beside the stream: `copying 41 % (chunk
    /// 812/1970, 52 300 rows/s, ETA 4 min)`.
    pub copy: Option<String>,
    /// The copy's pace over its latest chunks, from when the lake committed them; `None`
    /// until two chunks were committed apart.
    pub copy_rows_per_second: Option<f64>,
    /// The seconds the copy has left at that pace, from its last committed chunk; `None`
    /// without a pace or an estimate of the table's rows.
    pub copy_eta_seconds: Option<u64>,
    /// Iceberg, `delete_mode = "position"`: the size of the table's key index on local disk.
    pub key_index_bytes: Option<u64>,
}

/// Past these, a table's state costs every commit and every reader more than it should:
/// `status` warns, naming the fix.
const SNAPSHOTS_WARN: usize = 10_000;
const METADATA_BYTES_WARN: u64 = 16 * 1024 * 1024;
const MANIFESTS_WARN: usize = 1_000;

/// What about `table` has grown past its threshold, and what to do about it.
fn growth_warnings(table: &TableReport) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some(n) = table.snapshots.filter(|n| *n > SNAPSHOTS_WARN) {
        warnings.push(format!(
            "{}: {n} snapshots (more than {SNAPSHOTS_WARN}): lower [compaction] \
             snapshot_retention or keep_snapshots",
            table.table
        ));
    }
    if let Some(n) = table.metadata_bytes.filter(|n| *n > METADATA_BYTES_WARN) {
        warnings.push(format!(
            "{}: metadata.json is {n} bytes (more than {METADATA_BYTES_WARN}), rewritten on every \
             commit: lower [compaction] snapshot_retention",
            table.table
        ));
    }
    if let Some(n) = table.manifests.filter(|n| *n > MANIFESTS_WARN) {
        warnings.push(format!(
            "{}: {n} manifests in the current snapshot (more than {MANIFESTS_WARN}): run \
             lakewriter compact",
            table.table
        ));
    }
    warnings
}

/// Prints the status of every lake table of the config, as text or as one JSON object.
pub async fn print(config: &Config, json: bool, exports_to: Option<&str>) -> Result<()> {
    let mut report = report(config).await?;
    if let Some(url) = exports_to {
        let read = async {
            let client = crate::export::destination::connect(url).await?;
            crate::export::destination::records(&client).await
        };
        match read.await {
            Ok(records) => report.exports = Some(records),
            Err(e) => report.exports_error = Some(e.to_string()),
        }
    }
    if json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| Error::Source {
            message: format!("status as JSON: {e}"),
        })?;
        println!("{text}");
        return Ok(());
    }
    print_source(config, &report);
    match config.sink.format {
        TableFormat::Iceberg => print_iceberg(&report),
        TableFormat::Delta => print_delta(&report),
    }
    print_stopped(&report);
    print_exports(&report);
    Ok(())
}

/// The exports a destination records, one line each, with their age.
fn print_exports(report: &Report) {
    if let Some(error) = &report.exports_error {
        println!("\nexports: cannot read them: {error}");
    }
    let Some(exports) = &report.exports else {
        return;
    };
    println!("\nexports ({}):", exports.len());
    for e in exports {
        println!(
            "export {} -> {}: {} version {} (committed {}), exported {} ({} s ago): {} \
             upserted, {} deleted, {} changed",
            e.lake_table,
            e.destination,
            e.format,
            e.version,
            e.version_time,
            e.exported_at,
            e.age_seconds,
            e.rows_upserted,
            e.rows_deleted,
            e.rows_changed
        );
    }
}

/// The status of every lake table of the config.
pub async fn report(config: &Config) -> Result<Report> {
    let (source, source_error) = match source_position(config).await {
        Ok(source) => (Some(source), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let server = source.as_ref().and_then(|s| s.source_wal_end_lsn).map(Lsn);
    let tables = match config.sink.format {
        TableFormat::Iceberg => iceberg_tables(config, server).await?,
        TableFormat::Delta => delta_tables(config, server).await?,
    };
    Ok(Report {
        source,
        source_error,
        tables,
        stopped_tables: stopped_tables(config).await,
        exports: None,
        exports_error: None,
    })
}

/// The tables the writer stopped and why, from its slot record (see `pipeline::membership`);
/// none when there is no record or it cannot be read (logged).
async fn stopped_tables(config: &Config) -> std::collections::BTreeMap<String, String> {
    let read = match crate::pipeline::membership::RecordStore::new(config).await {
        Ok(store) => store.read().await,
        Err(e) => Err(e),
    };
    match read {
        Ok(record) => record.map(|r| r.stopped).unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, "the writer's slot record could not be read");
            Default::default()
        }
    }
}

/// The stopped tables' section of the text report.
fn print_stopped(report: &Report) {
    if report.stopped_tables.is_empty() {
        return;
    }
    println!(
        "\nstopped by on_table_error (the slot keeps their WAL until a restart after the fix):"
    );
    for (table, why) in &report.stopped_tables {
        println!("  {table}: {why}");
    }
}

/// The server's WAL position and what the slot retains.
async fn source_position(config: &Config) -> Result<SourceReport> {
    let client = connection::connect(&config.source).await?;
    let server = client
        .query_one(
            "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
             ELSE pg_current_wal_lsn() END)::text",
            &[],
        )
        .await
        .ok()
        .and_then(|r| r.get::<_, Option<String>>(0))
        .and_then(|t| t.parse::<Lsn>().ok());
    let slot = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text, active, \
               pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&config.source.slot],
        )
        .await
        .ok()
        .flatten()
        .map(|r| {
            (
                r.get::<_, Option<String>>(0),
                r.get::<_, Option<bool>>(1).unwrap_or(false),
                r.get::<_, Option<i64>>(2).unwrap_or(0),
            )
        });
    let confirmed = slot.as_ref().and_then(|(c, _, _)| c.clone());
    Ok(SourceReport {
        source_wal_end_lsn: server.map(Lsn::get),
        slot: config.source.slot.clone(),
        slot_exists: slot.is_some(),
        slot_confirmed_flush_lsn: confirmed
            .as_deref()
            .and_then(|t| t.parse::<Lsn>().ok())
            .map(Lsn::get),
        slot_confirmed_flush: confirmed,
        slot_active: slot.as_ref().is_some_and(|(_, a, _)| *a),
        slot_retained_wal_bytes: slot.map_or(0, |(_, _, r)| r),
    })
}

fn print_source(config: &Config, report: &Report) {
    if let Some(error) = &report.source_error {
        println!("source: {error}");
    }
    match &report.source {
        Some(source) if source.slot_exists => println!(
            "slot {}: confirmed {}, {}, retaining {} bytes of WAL{}",
            source.slot,
            source.slot_confirmed_flush.as_deref().unwrap_or("-"),
            if source.slot_active {
                "streaming"
            } else {
                "idle"
            },
            source.slot_retained_wal_bytes,
            source
                .source_wal_end_lsn
                .map(|s| format!(" (server at {})", Lsn(s)))
                .unwrap_or_default()
        ),
        _ => println!("slot {}: not found", config.source.slot),
    }
}

/// Milliseconds since the epoch, now.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The lag of a table at checkpoint `lsn` behind the server at `server`: bytes of WAL, and
/// seconds since the table's last commit at `committed_ms` (0 when it is caught up).
fn lag(
    server: Option<Lsn>,
    lsn: Option<Lsn>,
    committed_ms: Option<i64>,
) -> (Option<u64>, Option<f64>) {
    let bytes = match (server, lsn) {
        (Some(server), Some(lsn)) => Some(server.bytes_since(lsn)),
        _ => None,
    };
    let seconds = match (server, lsn, committed_ms) {
        (Some(server), Some(lsn), Some(at)) if server.bytes_since(lsn) > 0 => {
            Some((now_ms() - at).max(0) as f64 / 1000.0)
        }
        (Some(_), Some(_), _) => Some(0.0),
        _ => None,
    };
    (bytes, seconds)
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

async fn iceberg_tables(config: &Config, server: Option<Lsn>) -> Result<Vec<TableReport>> {
    let namespace_error = |e| catalog_error(&config.sink.namespace, e);
    let catalog = LakeCatalog::from_config(config)
        .await
        .map_err(namespace_error)?;
    let io = file_io(config)?;
    let settings = crate::sink::iceberg::IcebergSettings::from_config(config)?;
    let tables = catalog
        .list(&config.sink.namespace)
        .await
        .map_err(namespace_error)?;
    let mut reports = Vec::new();
    for table in tables {
        let Some(pointer) = catalog.load(&table).await.map_err(namespace_error)? else {
            continue;
        };
        let metadata = TableMetadata::read_from(&io, &pointer.metadata_location)
            .await
            .map_err(|e| Error::Sink {
                table: table.to_string(),
                message: format!("read {}: {e}", pointer.metadata_location),
                retryable: true,
            })?;
        let lsn = checkpoint(&table, &metadata)?;
        let current = metadata.current_snapshot();
        let total = |key: &str| {
            current
                .and_then(|s| s.summary().additional_properties.get(key))
                .and_then(|v| v.parse::<u64>().ok())
        };
        let committed_ms = current.map(|s| s.timestamp_ms());
        let (lag_bytes, lag_seconds) = lag(server, lsn, committed_ms);
        // sizes for the growth warnings; a file that cannot be read leaves them unknown
        let metadata_bytes = match io.new_input(&pointer.metadata_location) {
            Ok(input) => input.metadata().await.ok().map(|m| m.size),
            Err(_) => None,
        };
        let copy = crate::sink::iceberg::copy_progress(&metadata).map(|text| {
            match CopyProgress::decode(&text) {
                Ok(progress) => {
                    let pace = progress.pace(&copy_commits(&metadata));
                    (progress.describe(pace.as_ref()), pace)
                }
                Err(e) => (format!("copying ({e})"), None),
            }
        });
        let manifests = match current {
            Some(snapshot) => crate::lake::manifest_list(&io, &table, snapshot, &metadata)
                .await
                .ok()
                .map(|list| list.entries().len()),
            None => Some(0),
        };
        reports.push(TableReport {
            table: table.to_string(),
            table_durable_lsn: lsn.map(Lsn::get),
            checkpoint: lsn.map(|l| l.to_string()),
            lag_bytes,
            lag_seconds,
            last_commit_timestamp_seconds: committed_ms.map(|ms| ms as f64 / 1000.0),
            snapshots: Some(metadata.snapshots().count()),
            version: None,
            data_files: total("total-data-files"),
            delete_files: total("total-delete-files"),
            rows: total("total-records"),
            metadata_bytes,
            manifests,
            copy: copy.as_ref().map(|(text, _)| text.clone()),
            copy_rows_per_second: copy
                .as_ref()
                .and_then(|(_, p)| p.map(|p| p.rows_per_second)),
            copy_eta_seconds: copy.and_then(|(_, p)| p.and_then(|p| p.eta_seconds)),
            key_index_bytes: std::fs::metadata(
                settings.key_index_path(&table, metadata.location()),
            )
            .ok()
            .map(|m| m.len()),
        });
    }
    Ok(reports)
}

fn print_iceberg(report: &Report) {
    println!(
        "{:<28} {:>14} {:>12} {:>10} {:>9} {:>10} {:>12} {:>12} {:>9} {:>14}",
        "table",
        "checkpoint",
        "lag bytes",
        "lag s",
        "snapshots",
        "data files",
        "delete files",
        "rows",
        "manifests",
        "metadata bytes"
    );
    for t in &report.tables {
        println!(
            "{:<28} {:>14} {:>12} {:>10} {:>9} {:>10} {:>12} {:>12} {:>9} {:>14}",
            t.table,
            t.checkpoint.as_deref().unwrap_or("incomplete"),
            or_dash(t.lag_bytes),
            or_dash(t.lag_seconds.map(|s| format!("{s:.0}"))),
            or_dash(t.snapshots),
            or_dash(t.data_files),
            or_dash(t.delete_files),
            or_dash(t.rows),
            or_dash(t.manifests),
            or_dash(t.metadata_bytes),
        );
    }
    for t in &report.tables {
        if let Some(copy) = &t.copy {
            println!("{}: {copy}", t.table);
        }
    }
    for t in &report.tables {
        if let Some(bytes) = t.key_index_bytes {
            println!("{}: key index {bytes} bytes on local disk", t.table);
        }
    }
    for warning in report.tables.iter().flat_map(growth_warnings) {
        println!("warning: {warning}");
    }
}

/// The Delta report: per table its checkpoint (the `txn` action), lag, log version, live data
/// files, rows (from the files' statistics) and when it was last committed.
async fn delta_tables(config: &Config, server: Option<Lsn>) -> Result<Vec<TableReport>> {
    let settings = DeltaSettings::from_config(config)?;
    let names = tables::list(config, &settings).await?;
    let mut reports = Vec::new();
    for name in names {
        let Some(table) = tables::open(&settings, &name).await? else {
            continue;
        };
        let read_error = |e: deltalake::DeltaTableError| Error::Sink {
            table: name.to_string(),
            message: format!("read the table's state: {e}"),
            retryable: true,
        };
        let lsn = tables::checkpoint(&name, &table).await?;
        let snapshot = table.snapshot().map_err(read_error)?;
        let version = snapshot.version();
        let mut files = 0u64;
        let mut rows = Some(0u64);
        for file in snapshot.log_data() {
            files += 1;
            // a file written without statistics leaves the total unknown, not short
            rows = rows.zip(file.num_records()).map(|(r, n)| r + n as u64);
        }
        let committed_ms = table
            .history(Some(1))
            .await
            .map_err(read_error)?
            .last()
            .and_then(|c| c.timestamp)
            .or_else(|| snapshot.version_timestamp(version));
        let (lag_bytes, lag_seconds) = lag(server, lsn, committed_ms);
        let copy =
            tables::copy_state(&name, &table).await?.map(|state| {
                match CopyProgress::decode(&state.progress) {
                    Ok(progress) => {
                        let pace = progress.pace(&state.commits);
                        (progress.describe(pace.as_ref()), pace)
                    }
                    Err(e) => (format!("copying ({e})"), None),
                }
            });
        reports.push(TableReport {
            table: name.to_string(),
            table_durable_lsn: lsn.map(Lsn::get),
            checkpoint: lsn.map(|l| l.to_string()),
            lag_bytes,
            lag_seconds,
            last_commit_timestamp_seconds: committed_ms.map(|ms| ms as f64 / 1000.0),
            snapshots: None,
            metadata_bytes: None,
            manifests: None,
            version: Some(version),
            data_files: Some(files),
            delete_files: None,
            rows,
            copy: copy.as_ref().map(|(text, _)| text.clone()),
            copy_rows_per_second: copy
                .as_ref()
                .and_then(|(_, p)| p.map(|p| p.rows_per_second)),
            copy_eta_seconds: copy.and_then(|(_, p)| p.and_then(|p| p.eta_seconds)),
            key_index_bytes: None,
        });
    }
    Ok(reports)
}

fn print_delta(report: &Report) {
    println!(
        "{:<28} {:>14} {:>12} {:>10} {:>9} {:>10} {:>12}  last commit",
        "table", "checkpoint", "lag bytes", "lag s", "version", "data files", "rows"
    );
    for t in &report.tables {
        let last_commit = t
            .last_commit_timestamp_seconds
            .and_then(|s| {
                arrow::temporal_conversions::timestamp_ms_to_datetime((s * 1000.0).round() as i64)
            })
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<28} {:>14} {:>12} {:>10} {:>9} {:>10} {:>12}  {}",
            t.table,
            t.checkpoint.as_deref().unwrap_or("incomplete"),
            or_dash(t.lag_bytes),
            or_dash(t.lag_seconds.map(|s| format!("{s:.0}"))),
            or_dash(t.version),
            or_dash(t.data_files),
            or_dash(t.rows),
            last_commit,
        );
    }
    for t in &report.tables {
        if let Some(copy) = &t.copy {
            println!("{}: {copy}", t.table);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(snapshots: usize, metadata_bytes: u64, manifests: usize) -> TableReport {
        TableReport {
            table: "lake.orders".into(),
            table_durable_lsn: None,
            checkpoint: None,
            lag_bytes: None,
            lag_seconds: None,
            last_commit_timestamp_seconds: None,
            snapshots: Some(snapshots),
            version: None,
            data_files: None,
            delete_files: None,
            rows: None,
            metadata_bytes: Some(metadata_bytes),
            manifests: Some(manifests),
            copy: None,
            copy_rows_per_second: None,
            copy_eta_seconds: None,
            key_index_bytes: None,
        }
    }

    #[test]
    fn a_table_past_a_threshold_is_warned_about_with_the_fix() {
        assert!(growth_warnings(&table(100, 1024, 3)).is_empty());
        let warnings = growth_warnings(&table(SNAPSHOTS_WARN + 1, METADATA_BYTES_WARN + 1, 2_000));
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].contains("lake.orders") && warnings[0].contains("snapshot_retention"));
        assert!(warnings[1].contains("metadata.json"));
        assert!(warnings[2].contains("lakewriter compact"));
    }
}
