//! `lakewriter status`: where each lake table stands against the source — its checkpoint, how
//! far behind the server's WAL it is (bytes, and seconds since its last commit), its snapshots,
//! data and delete files — and what the slot retains. It reads Iceberg tables through the
//! catalog, never around it, and Delta tables through their logs (their own catalog).

use std::time::{SystemTime, UNIX_EPOCH};

use iceberg::spec::TableMetadata;

use crate::catalog::{Catalog, LakeCatalog};
use crate::config::{Config, TableFormat};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::sink::delta::{DeltaSettings, tables};
use crate::sink::iceberg::{catalog_error, checkpoint, file_io};
use crate::source::connection;

/// Prints the status of every lake table of the config.
pub async fn print(config: &Config) -> Result<()> {
    match config.sink.format {
        TableFormat::Iceberg => print_iceberg(config).await?,
        TableFormat::Delta => print_delta(config).await?,
    }
    print_stopped(config).await
}

/// The tables the writer stopped (`[sink] on_table_error = "stop_table"`) and why, as its
/// slot record says (see `pipeline::membership`).
async fn print_stopped(config: &Config) -> Result<()> {
    let store = crate::pipeline::membership::RecordStore::new(config).await?;
    let record = match store.read().await {
        Ok(record) => record,
        Err(e) => {
            println!("\nthe writer's slot record could not be read: {e}");
            return Ok(());
        }
    };
    let Some(record) = record.filter(|r| !r.stopped.is_empty()) else {
        return Ok(());
    };
    println!(
        "\nstopped by on_table_error (the slot keeps their WAL until a restart after the fix):"
    );
    for (table, why) in &record.stopped {
        println!("  {table}: {why}");
    }
    Ok(())
}

/// The server's WAL position, after printing what the slot retains; `None` when the source
/// cannot be reached (the lake's state is worth showing without it).
async fn source_position(config: &Config) -> Option<Lsn> {
    let (server, slot) = match connection::connect(&config.source).await {
        Ok(client) => {
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
            (server, slot)
        }
        Err(e) => {
            println!("source: {e}");
            (None, None)
        }
    };
    match &slot {
        Some((confirmed, active, retained)) => println!(
            "slot {}: confirmed {}, {}, retaining {} bytes of WAL{}",
            config.source.slot,
            confirmed.as_deref().unwrap_or("-"),
            if *active { "streaming" } else { "idle" },
            retained,
            server
                .map(|s| format!(" (server at {s})"))
                .unwrap_or_default()
        ),
        None => println!("slot {}: not found", config.source.slot),
    }
    server
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
fn lag(server: Option<Lsn>, lsn: Option<Lsn>, committed_ms: Option<i64>) -> (String, String) {
    let bytes = match (server, lsn) {
        (Some(server), Some(lsn)) => server.bytes_since(lsn).to_string(),
        _ => "-".into(),
    };
    let seconds = match (server, lsn, committed_ms) {
        (Some(server), Some(lsn), Some(at)) if server.bytes_since(lsn) > 0 => {
            format!("{:.0}", (now_ms() - at).max(0) as f64 / 1000.0)
        }
        (Some(_), Some(_), _) => "0".into(),
        _ => "-".into(),
    };
    (bytes, seconds)
}

async fn print_iceberg(config: &Config) -> Result<()> {
    let namespace_error = |e| catalog_error(&config.sink.namespace, e);
    let catalog = LakeCatalog::from_config(config)
        .await
        .map_err(namespace_error)?;
    let io = file_io(config)?;
    let tables = catalog
        .list(&config.sink.namespace)
        .await
        .map_err(namespace_error)?;
    let server = source_position(config).await;
    println!(
        "{:<28} {:>14} {:>12} {:>10} {:>9} {:>10} {:>12} {:>12}",
        "table",
        "checkpoint",
        "lag bytes",
        "lag s",
        "snapshots",
        "data files",
        "delete files",
        "rows"
    );
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
                .and_then(|s| s.summary().additional_properties.get(key).cloned())
                .unwrap_or_else(|| "-".into())
        };
        let (lag_bytes, lag_seconds) = lag(server, lsn, current.map(|s| s.timestamp_ms()));
        println!(
            "{:<28} {:>14} {:>12} {:>10} {:>9} {:>10} {:>12} {:>12}",
            table.to_string(),
            lsn.map(|l| l.to_string())
                .unwrap_or_else(|| "incomplete".into()),
            lag_bytes,
            lag_seconds,
            metadata.snapshots().count(),
            total("total-data-files"),
            total("total-delete-files"),
            total("total-records"),
        );
    }
    Ok(())
}

/// The Delta report: per table its checkpoint (the `txn` action), lag, log version, live data
/// files, rows (from the files' statistics) and when it was last committed.
async fn print_delta(config: &Config) -> Result<()> {
    let settings = DeltaSettings::from_config(config)?;
    let names = tables::list(config, &settings).await?;
    let server = source_position(config).await;
    println!(
        "{:<28} {:>14} {:>12} {:>10} {:>9} {:>10} {:>12}  last commit",
        "table", "checkpoint", "lag bytes", "lag s", "version", "data files", "rows"
    );
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
        let mut files = 0usize;
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
        let last_commit = committed_ms
            .and_then(arrow::temporal_conversions::timestamp_ms_to_datetime)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<28} {:>14} {:>12} {:>10} {:>9} {:>10} {:>12}  {}",
            name.to_string(),
            lsn.map(|l| l.to_string())
                .unwrap_or_else(|| "incomplete".into()),
            lag_bytes,
            lag_seconds,
            version,
            files,
            rows.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
            last_commit,
        );
    }
    Ok(())
}
