//! `lakewriter compact`: rewrites a table's data files with its equality deletes applied, so
//! reads stop paying for deletes and small files, safe beside a running writer.
//!
//! Per table: when it has equality-delete files (at least `min_delete_files`) or at least two
//! data files smaller than `small_file_ratio` of the target size, its current snapshot is read
//! through the same merge-on-read plan `query` uses, sorted by key (`sort_by_key`), written to
//! files of the target size, and committed as a `replace` snapshot (DESIGN.md invariant 8):
//! - the new files keep the data sequence number of the snapshot that was read, so equality
//!   deletes the writer commits meanwhile (with higher sequence numbers) still apply to them;
//! - every data and delete file live in that snapshot is removed: the rewritten data is in the
//!   new files, and a delete file of that snapshot applies to no file with its sequence number
//!   or a later one;
//! - the writer's commits that landed meanwhile stay; one that removed a rewritten file (a
//!   truncate, another rewrite) or changed the schema makes the rewrite read the table again
//!   (three tries), then give up, leaving the table as it was;
//! - the snapshot carries the table's latest `lakewriter.lsn`.
//!
//! Then [`super::cleanup`] expires old snapshots and removes orphan files.
//!
//! The whole table is rewritten at once and sorted in memory: expect memory about the size of
//! the table's live rows in Arrow (`sort_by_key = false` streams instead).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use datafusion::prelude::{SessionContext, col};
use futures::StreamExt;
use iceberg::spec::{DataFile, TableMetadata};

use crate::catalog::{Catalog, CatalogTable};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::maintenance::cleanup::{Cleanup, clean_table};
use crate::progress::Progress;
use crate::sink::iceberg::{IcebergSink, Rewrite, catalog_error, file_io, is_conflict, lake_table};
use crate::table::TableId;
use crate::verify::lake::{live_files, register_object_store, table_frame};

/// Attempts per table when commits of others keep changing what it read.
const ATTEMPTS: usize = 3;

/// What compacting one table did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The lake table.
    pub table: String,
    /// Why it was left alone, when it was.
    pub skipped: Option<String>,
    /// Data files and delete files replaced, and their bytes.
    pub data_files_in: usize,
    /// Delete files removed.
    pub delete_files_in: usize,
    /// Bytes of the files replaced.
    pub bytes_in: u64,
    /// Data files written, and their bytes.
    pub data_files_out: usize,
    /// Bytes written.
    pub bytes_out: u64,
    /// Live rows rewritten.
    pub rows: u64,
    /// How long it took.
    pub duration: Duration,
    /// Snapshots expired, and orphan files removed with their bytes, after the rewrite.
    pub cleanup: Cleanup,
}

/// Compacts every lake table of the config, or only `only` (a source `schema.table`), and
/// returns what happened to each.
pub async fn run(config: &Config, only: Option<&str>) -> Result<Vec<Outcome>> {
    let mut config = config.clone();
    if let Some(size) = config.compaction.target_file_size {
        config.sink.target_file_size = size;
    }
    let sink = IcebergSink::from_config(&config).await?;
    let io = file_io(&config)?;
    let namespace_error = |e| catalog_error(&config.sink.namespace, e);
    let tables: Vec<CatalogTable> = match only {
        Some(name) => {
            let (schema, table) = name.split_once('.').unwrap_or(("public", name));
            vec![lake_table(
                &config.sink.namespace,
                &TableId::new(schema, table),
            )]
        }
        None => sink
            .catalog()
            .list(&config.sink.namespace)
            .await
            .map_err(namespace_error)?,
    };
    let progress = Progress::new(config.metrics.progress_interval.get());
    let mut outcomes = Vec::new();
    for lake in tables {
        let mut outcome = compact_table(&config, &sink, &io, &lake, &progress).await?;
        outcome.cleanup = clean_table(&config, &sink, &io, &lake).await?;
        tracing::info!(
            table = %lake,
            snapshots_expired = outcome.cleanup.snapshots,
            files_removed = outcome.cleanup.files,
            bytes_removed = outcome.cleanup.bytes,
            "cleaned"
        );
        match &outcome.skipped {
            Some(why) => tracing::info!(table = %lake, "not compacted: {why}"),
            None => tracing::info!(
                table = %lake,
                data_files_in = outcome.data_files_in,
                delete_files_in = outcome.delete_files_in,
                bytes_in = outcome.bytes_in,
                data_files_out = outcome.data_files_out,
                bytes_out = outcome.bytes_out,
                rows = outcome.rows,
                seconds = outcome.duration.as_secs_f64(),
                "compacted"
            ),
        }
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Compacts one table, reading it again after a conflict.
async fn compact_table(
    config: &Config,
    sink: &IcebergSink,
    io: &iceberg::io::FileIO,
    lake: &CatalogTable,
    progress: &Progress,
) -> Result<Outcome> {
    let started = Instant::now();
    let mut outcome = Outcome {
        table: lake.to_string(),
        ..Outcome::default()
    };
    for attempt in 1..=ATTEMPTS {
        let pointer = sink
            .catalog()
            .load(lake)
            .await
            .map_err(|e| catalog_error(lake, e))?
            .ok_or_else(|| sink_error(lake, "no such table in the catalog"))?;
        let metadata = TableMetadata::read_from(io, &pointer.metadata_location)
            .await
            .map_err(|e| sink_error(lake, format!("read {}: {e}", pointer.metadata_location)))?;
        let Some(snapshot) = metadata.current_snapshot() else {
            outcome.skipped = Some("the table has no snapshot".into());
            return Ok(outcome);
        };
        let files = live_files(io, lake, &metadata).await?;
        let deletes: Vec<_> = files.deletes.values().flatten().collect();
        let target = config.sink.target_file_size.bytes() as f64;
        let small = files
            .data
            .iter()
            .filter(|f| (f.size as f64) < config.compaction.small_file_ratio * target)
            .count();
        if deletes.len() < config.compaction.min_delete_files.max(1) && small < 2 {
            outcome.skipped = Some(format!(
                "{} data files ({small} small), {} delete files: nothing to rewrite",
                files.data.len(),
                deletes.len()
            ));
            return Ok(outcome);
        }

        let ctx = SessionContext::new();
        register_object_store(config, &ctx)?;
        let (info, frame) =
            table_frame(&ctx, io, lake, &pointer.metadata_location, &metadata).await?;
        let frame = if config.compaction.sort_by_key && !info.key.is_empty() {
            frame
                .sort(
                    info.key
                        .iter()
                        .map(|k| col(format!("\"{}\"", k.replace('"', "\"\""))).sort(true, true))
                        .collect(),
                )
                .map_err(|e| sink_error(lake, format!("plan the sort: {e}")))?
        } else {
            frame
        };
        let total = snapshot
            .summary()
            .additional_properties
            .get("total-records")
            .and_then(|t| t.parse().ok());
        let bar = progress.table("compact", &lake.to_string(), total);
        let mut stream = frame
            .execute_stream()
            .await
            .map_err(|e| sink_error(lake, format!("read the table: {e}")))?;
        // files are written a chunk at a time: about one target-size file of Parquet from
        // several times its size in Arrow
        let chunk_bytes = (4.0 * target) as usize;
        let (mut chunk, mut bytes, mut rows) = (Vec::<RecordBatch>::new(), 0usize, 0u64);
        let mut written: Vec<DataFile> = Vec::new();
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| sink_error(lake, format!("read the table: {e}")))?;
            rows += batch.num_rows() as u64;
            bar.add(batch.num_rows() as u64);
            bytes += batch.get_array_memory_size();
            chunk.push(batch);
            if bytes >= chunk_bytes {
                written.extend(
                    sink.write_data(lake, &metadata, std::mem::take(&mut chunk))
                        .await?,
                );
                bytes = 0;
            }
        }
        if !chunk.is_empty() {
            written.extend(sink.write_data(lake, &metadata, chunk).await?);
        }
        bar.finish();
        let removes: HashSet<String> = files
            .data
            .iter()
            .chain(deletes.iter().copied())
            .map(|f| f.path.clone())
            .collect();
        outcome.data_files_in = files.data.len();
        outcome.delete_files_in = deletes.len();
        outcome.bytes_in = files
            .data
            .iter()
            .chain(deletes.iter().copied())
            .map(|f| f.size)
            .sum();
        outcome.data_files_out = written.len();
        outcome.bytes_out = written.iter().map(|f| f.file_size_in_bytes()).sum();
        outcome.rows = rows;
        match sink
            .commit_rewrite(
                lake,
                &pointer,
                &metadata,
                written,
                Rewrite {
                    data_sequence: snapshot.sequence_number(),
                    schema_id: metadata.current_schema_id(),
                    removes,
                },
            )
            .await
        {
            Ok(_) => {
                outcome.duration = started.elapsed();
                return Ok(outcome);
            }
            Err(e) if is_conflict(&e) && attempt < ATTEMPTS => {
                // the files just written are referenced by no snapshot: orphans
                tracing::warn!(table = %lake, attempt, error = %e, "reading the table again");
            }
            Err(e) => return Err(e),
        }
    }
    Err(sink_error(lake, "the rewrite kept losing to other commits"))
}

/// Prints what compaction did, one line per table.
pub fn print(outcomes: &[Outcome]) {
    for o in outcomes {
        let cleaned = format!(
            "; {} snapshots expired, {} orphan files ({} bytes) removed",
            o.cleanup.snapshots, o.cleanup.files, o.cleanup.bytes
        );
        match &o.skipped {
            Some(why) => println!("{}: not compacted ({why}){cleaned}", o.table),
            None => println!(
                "{}: {} data + {} delete files ({} bytes) → {} data files ({} bytes), {} rows, \
                 {:.1}s{cleaned}",
                o.table,
                o.data_files_in,
                o.delete_files_in,
                o.bytes_in,
                o.data_files_out,
                o.bytes_out,
                o.rows,
                o.duration.as_secs_f64()
            ),
        }
    }
}

fn sink_error(table: &CatalogTable, message: impl Into<String>) -> Error {
    Error::Sink {
        table: table.to_string(),
        message: message.into(),
        retryable: false,
    }
}
