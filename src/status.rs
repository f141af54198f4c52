//! `lakewriter status`: where each lake table stands against the source — its checkpoint, how
//! far behind the server's WAL it is (bytes, and seconds since its last commit), its snapshots,
//! data and delete files — and what the slot retains. It reads through the catalog, never
//! around it.

use std::time::{SystemTime, UNIX_EPOCH};

use iceberg::spec::TableMetadata;

use crate::catalog::{Catalog, LakeCatalog};
use crate::config::{Config, TableFormat};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::sink::iceberg::{catalog_error, checkpoint, file_io};
use crate::source::connection;

/// Prints the status of every lake table of the config.
pub async fn print(config: &Config) -> Result<()> {
    if config.sink.format != TableFormat::Iceberg {
        return Err(Error::NotBuilt {
            what: "status for Delta tables",
        });
    }
    let namespace_error = |e| catalog_error(&config.sink.namespace, e);
    let catalog = LakeCatalog::from_config(config)
        .await
        .map_err(namespace_error)?;
    let io = file_io(config)?;
    let tables = catalog
        .list(&config.sink.namespace)
        .await
        .map_err(namespace_error)?;

    // the source side is optional: the lake's state is worth showing without it
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
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
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
        let lag_bytes = match (server, lsn) {
            (Some(server), Some(lsn)) => server.bytes_since(lsn).to_string(),
            _ => "-".into(),
        };
        let lag_seconds = match (server, lsn, current) {
            (Some(server), Some(lsn), Some(snapshot)) if server.bytes_since(lsn) > 0 => {
                format!(
                    "{:.0}",
                    (now_ms - snapshot.timestamp_ms()).max(0) as f64 / 1000.0
                )
            }
            (Some(_), Some(_), _) => "0".into(),
            _ => "-".into(),
        };
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
