//! `lakewriter compact` on Delta tables, per table:
//!
//! 1. optimize: deltalake's bin-packing compaction merges the files smaller than
//!    `compaction.target_file_size` (default: the sink's `target_file_size`), per partition,
//!    into files of about that size, in one commit that removes the small files and adds the
//!    merged ones. Delta's MERGE is copy-on-write, so there are no deletes to apply;
//! 2. vacuum: files no longer referenced by the table's latest version — the ones optimize and
//!    the writer's MERGEs replaced, and files of commits that never landed — are removed once
//!    older than `compaction.orphan_age`, the safety window (a commit's files exist before the
//!    commit references them; a replaced file may still be read by a reader of an older
//!    version);
//! 3. a log checkpoint (a Parquet summary of the log), so readers do not replay every JSON
//!    commit since the table was created.
//!
//! Beside a running writer both commit through Delta's optimistic concurrency (a put that
//! fails when the version exists). A writer's append that lands meanwhile does not conflict
//! with optimize and is kept; a MERGE or overwrite that removed a file optimize read makes the
//! optimize commit fail, and the table is read again (three tries) and otherwise reported as a
//! failure, the table left as it was. When optimize wins, the writer's MERGE that read the
//! replaced files loses instead, and the sink runs it again on the new version. Either way no
//! commit removes rows it did not read. Optimize carries no `txn` action: Delta keeps the
//! latest `txn` of each application across commits, so the checkpoint stays as the writer
//! left it.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::time::Instant;

use deltalake::DeltaTable;
use deltalake::operations::vacuum::VacuumMode;

use super::cleanup::Cleanup;
use super::compact::Outcome;
use crate::catalog::CatalogTable;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::sink::delta::{DeltaSettings, tables};
use crate::sink::iceberg::lake_table;
use crate::table::TableId;

/// Attempts per table when the writer's commits keep conflicting with optimize.
const ATTEMPTS: usize = 3;

/// Compacts every Delta table of the config's namespace, or only `only` (a source
/// `schema.table`), and returns what happened to each.
pub async fn run(config: &Config, only: Option<&str>) -> Result<Vec<Outcome>> {
    let settings = DeltaSettings::from_config(config)?;
    let target = config
        .compaction
        .target_file_size
        .unwrap_or(config.sink.target_file_size)
        .bytes();
    let names = match only {
        Some(name) => {
            let (schema, table) = name.split_once('.').unwrap_or(("public", name));
            vec![lake_table(
                &settings.namespace,
                &TableId::new(schema, table),
            )]
        }
        None => tables::list(config, &settings).await?,
    };
    let mut outcomes = Vec::new();
    for lake in names {
        let outcome = match compact_one(config, &settings, &lake, target).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::error!(
                    table = %lake,
                    error = %e,
                    "compaction of the table failed; the other tables go on"
                );
                Outcome {
                    table: lake.to_string(),
                    failed: Some(e.to_string()),
                    ..Outcome::default()
                }
            }
        };
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Optimizes, vacuums and checkpoints one table, when lakewriter writes it (its log holds
/// lakewriter's `txn` for the table).
async fn compact_one(
    config: &Config,
    settings: &DeltaSettings,
    lake: &CatalogTable,
    target: u64,
) -> Result<Outcome> {
    let started = Instant::now();
    if let Some(table) = tables::open(settings, lake).await? {
        let skipped = if !tables::written_by_lakewriter(lake, &table).await? {
            Some("not written by lakewriter: left to the engine that writes it")
        } else if tables::checkpoint(lake, &table).await?.is_none() {
            // marked incomplete: a copy is in flight or starts at the next run, and its
            // files, written long before its one commit, must not be vacuumed
            Some(super::compact::NOT_COPIED_YET)
        } else {
            None
        };
        if let Some(why) = skipped {
            let outcome = Outcome {
                table: lake.to_string(),
                skipped: Some(why.into()),
                ..Outcome::default()
            };
            outcome.log(lake);
            return Ok(outcome);
        }
    }
    let (table, mut outcome) = optimize(settings, lake, target).await?;
    let table = vacuum(config, lake, table, &mut outcome).await?;
    // a table nothing committed to since its last checkpoint keeps that one
    if last_checkpoint(&table).await != table.version() {
        deltalake::checkpoints::create_checkpoint(&table, None)
            .await
            .map_err(|e| sink_error(lake, format!("write a log checkpoint: {e}")))?;
    }
    outcome.duration = started.elapsed();
    outcome.log(lake);
    tracing::info!(
        table = %lake,
        files_removed = outcome.cleanup.files,
        bytes_removed = outcome.cleanup.bytes,
        version = table.version(),
        "vacuumed and checkpointed"
    );
    Ok(outcome)
}

/// A live file's size and rows, by path.
type Files = HashMap<String, (i64, u64)>;

fn live_files(lake: &CatalogTable, table: &DeltaTable) -> Result<Files> {
    let snapshot = table
        .snapshot()
        .map_err(|e| sink_error(lake, format!("read the table's files: {e}")))?;
    Ok(snapshot
        .log_data()
        .into_iter()
        .map(|f| {
            let records = f.num_records().unwrap_or(0) as u64;
            (f.path().into_owned(), (f.size(), records))
        })
        .collect())
}

/// Bin-packs `lake`'s small files, reading the table again when a commit of the writer
/// conflicts; the table as optimize left it, and what it did.
async fn optimize(
    settings: &DeltaSettings,
    lake: &CatalogTable,
    target: u64,
) -> Result<(DeltaTable, Outcome)> {
    let target_size = NonZeroU64::new(target).ok_or_else(|| {
        Error::config(
            "compaction.target_file_size",
            "the target file size must be above zero",
        )
    })?;
    let mut outcome = Outcome {
        table: lake.to_string(),
        ..Outcome::default()
    };
    for attempt in 1..=ATTEMPTS {
        let table = tables::open_existing(settings, lake).await?;
        let before = live_files(lake, &table)?;
        match table.clone().optimize().with_target_size(target_size).await {
            Ok((optimized, metrics)) => {
                if metrics.num_files_removed == 0 {
                    outcome.skipped = Some(format!(
                        "{} data files: nothing to merge below {target} bytes",
                        before.len()
                    ));
                    return Ok((optimized, outcome));
                }
                let after = live_files(lake, &optimized)?;
                // the rows of the files optimize replaced (a writer's append that landed
                // meanwhile is in both sets and is not counted)
                outcome.rows = before
                    .iter()
                    .filter(|(path, _)| !after.contains_key(*path))
                    .map(|(_, (_, rows))| rows)
                    .sum();
                outcome.data_files_in = metrics.num_files_removed as usize;
                outcome.bytes_in = metrics.files_removed.total_size.max(0) as u64;
                outcome.data_files_out = metrics.num_files_added as usize;
                outcome.bytes_out = metrics.files_added.total_size.max(0) as u64;
                outcome.data_files_kept = after.len().saturating_sub(outcome.data_files_out);
                return Ok((optimized, outcome));
            }
            Err(e) => {
                let e = crate::sink::delta::delta_error(lake, "optimize", e);
                if !crate::sink::delta::is_lost_race(&e) || attempt == ATTEMPTS {
                    return Err(e);
                }
                // the files optimize wrote are referenced by no version: vacuum's orphans
                tracing::warn!(table = %lake, attempt, error = %e, "reading the table again");
            }
        }
    }
    Err(sink_error(lake, "optimize kept losing to other commits"))
}

/// Removes the files `table` no longer references that are older than `orphan_age`, and
/// records them in `outcome.cleanup`.
async fn vacuum(
    config: &Config,
    lake: &CatalogTable,
    table: DeltaTable,
    outcome: &mut Outcome,
) -> Result<DeltaTable> {
    let age = config.compaction.orphan_age.get();
    let millis = i64::try_from(age.as_millis())
        .map_err(|e| Error::config("compaction.orphan_age", e.to_string()))?;
    // deltalake takes chrono's duration, which arrow's conversions build
    let retention =
        arrow::temporal_conversions::try_duration_ms_to_duration(millis).ok_or_else(|| {
            Error::config("compaction.orphan_age", format!("{age:?} is out of range"))
        })?;
    let vacuum_error = |e| crate::sink::delta::delta_error(lake, "vacuum", e);
    // a dry run first, for the sizes of what goes (and whether it is there at all): vacuum
    // reports only the paths it removed
    // Delta's own retention check is off: `compaction.orphan_age` has its own floor, checked
    // when the config is read (config::ORPHAN_AGE_FLOOR)
    let (table, planned) = table
        .vacuum()
        .with_mode(VacuumMode::Full)
        .with_retention_period(retention)
        .with_enforce_retention_duration(false)
        .with_dry_run(true)
        .await
        .map_err(vacuum_error)?;
    let store = table.log_store().object_store(None);
    let mut sizes = HashMap::new();
    for path in &planned.files_deleted {
        use object_store::ObjectStoreExt;
        let location = object_store::path::Path::from(path.as_str());
        if let Ok(meta) = store.head(&location).await {
            sizes.insert(path.clone(), meta.size);
        }
    }
    if sizes.is_empty() {
        // nothing is there to remove: no vacuum commits (which would also move the log past
        // its checkpoint)
        outcome.cleanup = Cleanup {
            table: lake.to_string(),
            ..Cleanup::default()
        };
        return Ok(table);
    }
    let (table, metrics) = table
        .vacuum()
        .with_mode(VacuumMode::Full)
        .with_retention_period(retention)
        .with_enforce_retention_duration(false)
        .await
        .map_err(vacuum_error)?;
    // vacuum also lists the paths of expired tombstones whose files an earlier vacuum already
    // removed: only the files that were there count
    let removed: Vec<u64> = metrics
        .files_deleted
        .iter()
        .filter_map(|p| sizes.get(p).copied())
        .collect();
    outcome.cleanup = Cleanup {
        table: lake.to_string(),
        snapshots: 0,
        files: removed.len(),
        bytes: removed.iter().sum(),
        ..Cleanup::default()
    };
    Ok(table)
}

/// The version of the table's latest log checkpoint, from `_delta_log/_last_checkpoint`
/// (`None` when there is none or it cannot be read: a checkpoint is then written).
async fn last_checkpoint(table: &DeltaTable) -> Option<u64> {
    use object_store::ObjectStoreExt;
    let store = table.log_store().object_store(None);
    let location = object_store::path::Path::from("_delta_log/_last_checkpoint");
    let bytes = store.get(&location).await.ok()?.bytes().await.ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("version")?
        .as_u64()
}

fn sink_error(table: &CatalogTable, message: impl Into<String>) -> Error {
    Error::Sink {
        table: table.to_string(),
        message: message.into(),
        retryable: false,
    }
}
