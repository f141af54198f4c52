//! `lakewriter compact`: rewrites the data files that slow reads down — small ones, and ones
//! hit by equality deletes — with the deletes applied, safely beside a running writer.
//!
//! Per table, per partition ([`plan`]):
//! - a data file is chosen when at least `min_delete_files` delete files apply to it
//!   (equality deletes: same partition, later sequence number; position deletes, which other
//!   engines write: naming the file, same or later sequence number), or when it is smaller than `small_file_ratio`
//!   of the target size and there is something to merge it with (another small file, or a
//!   file being rewritten anyway in that partition);
//! - the chosen files are read in groups of at most `group_size` bytes, through the same
//!   merge-on-read plan `query` uses, sorted by key (`sort_by_key`), and written to files of
//!   the target size;
//! - a delete file is removed when it applies to no data file left after the rewrite: an
//!   equality delete when none is older than it in its partition, a position delete when none
//!   it names is left.
//!
//! Everything is committed as one `replace` snapshot (DESIGN.md invariant 8):
//! - the new files keep the data sequence number of the snapshot that was read, so equality
//!   deletes the writer commits meanwhile (with higher sequence numbers) still apply to them,
//!   and the deletes already applied (sequence numbers up to it) do not apply again;
//! - the writer's commits that landed meanwhile stay; one that removed a file the rewrite
//!   replaces (a truncate, another rewrite) or changed the schema makes the rewrite read the
//!   table again (three tries), then give up, leaving the table as it was;
//! - the snapshot carries the table's latest `lakewriter.lsn`.
//!
//! Then [`super::cleanup`] expires old snapshots and removes orphan files.
//!
//! A group is sorted in memory: expect about its live rows in Arrow, several times its
//! Parquet bytes (`sort_by_key = false` streams instead).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use datafusion::prelude::{SessionContext, col};
use futures::StreamExt;
use iceberg::spec::{DataFile, TableMetadata};

use crate::catalog::{Catalog, CatalogTable};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::lake::{
    LiveFile, LiveFiles, PositionDeleteFile, files_frame, key_columns, live_files, load_positions,
    quoted, register_location, register_object_store,
};
use crate::maintenance::cleanup::{Cleanup, clean_table};
use crate::progress::Progress;
use crate::sink::iceberg::{
    IcebergSink, Rewrite, catalog_error, file_io, is_conflict, lake_table, written_by_lakewriter,
};
use crate::table::TableId;

/// Attempts per table when commits of others keep changing what it read.
const ATTEMPTS: usize = 3;

/// What compacting one table did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The lake table.
    pub table: String,
    /// Why it was left alone, when it was.
    pub skipped: Option<String>,
    /// Why compacting it failed, when it did (the other tables are compacted all the same).
    pub failed: Option<String>,
    /// Data files and delete files replaced, and their bytes.
    pub data_files_in: usize,
    /// Delete files removed.
    pub delete_files_in: usize,
    /// Bytes of the files replaced.
    pub bytes_in: u64,
    /// Data files left as they were.
    pub data_files_kept: usize,
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

impl Outcome {
    /// Logs what compacting `lake` did, or why it was left alone.
    pub(crate) fn log(&self, lake: &impl std::fmt::Display) {
        match &self.skipped {
            Some(why) => tracing::info!(table = %lake, "not compacted: {why}"),
            None => tracing::info!(
                table = %lake,
                data_files_in = self.data_files_in,
                delete_files_in = self.delete_files_in,
                bytes_in = self.bytes_in,
                data_files_kept = self.data_files_kept,
                data_files_out = self.data_files_out,
                bytes_out = self.bytes_out,
                rows = self.rows,
                seconds = self.duration.as_secs_f64(),
                "compacted"
            ),
        }
    }
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
        let outcome = match compact_one(&config, &sink, &io, &lake, &progress).await {
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

/// Why a table without a checkpoint is left alone.
pub(crate) const NOT_COPIED_YET: &str = "no checkpoint yet: its initial copy is in flight or has not run; left alone until it \
     commits, so the copy's files stay";

/// Compacts and cleans one table, when lakewriter writes it and its copy has committed.
async fn compact_one(
    config: &Config,
    sink: &IcebergSink,
    io: &iceberg::io::FileIO,
    lake: &CatalogTable,
    progress: &Progress,
) -> Result<Outcome> {
    if let Some(pointer) = sink
        .catalog()
        .load(lake)
        .await
        .map_err(|e| catalog_error(lake, e))?
    {
        let metadata = TableMetadata::read_from(io, &pointer.metadata_location)
            .await
            .map_err(|e| sink_error(lake, format!("read {}: {e}", pointer.metadata_location)))?;
        if metadata.snapshots().next().is_some() && !written_by_lakewriter(&metadata) {
            let outcome = Outcome {
                table: lake.to_string(),
                skipped: Some(
                    "not written by lakewriter: left to the engine that writes it".into(),
                ),
                ..Outcome::default()
            };
            outcome.log(lake);
            return Ok(outcome);
        }
        // no checkpoint: its copy is in flight (or starts at the next run), and the copy's
        // files, written long before its one commit, must not look like orphans
        if crate::sink::iceberg::checkpoint(lake, &metadata)?.is_none() {
            let outcome = Outcome {
                table: lake.to_string(),
                skipped: Some(NOT_COPIED_YET.into()),
                ..Outcome::default()
            };
            outcome.log(lake);
            return Ok(outcome);
        }
    }
    let mut outcome = compact_table(config, sink, io, lake, progress).await?;
    outcome.cleanup = clean_table(config, sink, io, lake).await?;
    tracing::info!(
        table = %lake,
        snapshots_expired = outcome.cleanup.snapshots,
        files_removed = outcome.cleanup.files,
        bytes_removed = outcome.cleanup.bytes,
        "cleaned"
    );
    outcome.log(lake);
    Ok(outcome)
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
        // the last attempt holds the table's turn from its read to its commit: a writer of
        // this process committing position deletes into the files being rewritten (each
        // flush names rows of the files it reads) cannot make it lose again; the writer waits
        // and then finds its rows in the new files
        let turn = if attempt == ATTEMPTS {
            Some(sink.hold_turn(lake).await)
        } else {
            None
        };
        let pointer = sink
            .catalog()
            .load(lake)
            .await
            .map_err(|e| catalog_error(lake, e))?
            .ok_or_else(|| sink_error(lake, "no such table in the catalog"))?;
        let metadata = TableMetadata::read_from(io, &pointer.metadata_location)
            .await
            .map_err(|e| sink_error(lake, format!("read {}: {e}", pointer.metadata_location)))?;
        let Some(snapshot) = metadata.current_snapshot().cloned() else {
            outcome.skipped = Some("the table has no snapshot".into());
            return Ok(outcome);
        };
        let files = live_files(io, lake, &metadata).await?;
        let positions = load_positions(io, lake, &files.positions).await?;
        let target = config.sink.target_file_size.bytes();
        let plan = plan(
            &files,
            &positions,
            (config.compaction.small_file_ratio * target as f64) as u64,
            config.compaction.min_delete_files,
            config.compaction.group_size.bytes(),
        );
        if plan.groups.is_empty() && plan.obsolete_deletes.is_empty() {
            outcome.skipped = Some(format!(
                "{} data files, {} delete files: nothing to rewrite",
                files.data.len(),
                files.delete_count()
            ));
            return Ok(outcome);
        }

        let ctx = SessionContext::new();
        register_object_store(config, &ctx)?;
        register_location(config, &ctx, metadata.location())?;
        let key = key_columns(metadata.current_schema());
        let chosen: Vec<&LiveFile> = plan.groups.iter().flatten().collect();
        let total = chosen.iter().map(|f| f.records).sum();
        let bar = progress.table("compact", &lake.to_string(), Some(total));
        // files are written a chunk at a time: about one target-size file of Parquet from
        // several times its size in Arrow
        let chunk_bytes = 4 * target as usize;
        let mut rows = 0u64;
        let mut written: Vec<DataFile> = Vec::new();
        for group in &plan.groups {
            let partition = &group[0].partition;
            let subset = LiveFiles {
                data: group.clone(),
                deletes: files
                    .deletes
                    .iter()
                    .map(|(ids, deletes)| {
                        let deletes = deletes
                            .iter()
                            .filter(|d| &d.partition == partition)
                            .cloned()
                            .collect();
                        (ids.clone(), deletes)
                    })
                    .collect(),
                positions: positions
                    .iter()
                    .filter(|p| group.iter().any(|f| p.applies_to(f)))
                    .map(|p| p.file.clone())
                    .collect(),
            };
            let frame = files_frame(&ctx, io, lake, &metadata, &subset).await?;
            let frame = if config.compaction.sort_by_key && !key.is_empty() {
                frame
                    .sort(
                        key.iter()
                            .map(|k| col(quoted(k)).sort(true, true))
                            .collect(),
                    )
                    .map_err(|e| sink_error(lake, format!("plan the sort: {e}")))?
            } else {
                frame
            };
            let mut stream = frame
                .execute_stream()
                .await
                .map_err(|e| sink_error(lake, format!("read the table: {e}")))?;
            let (mut chunk, mut bytes) = (Vec::<RecordBatch>::new(), 0usize);
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
        }
        bar.finish();
        let replaced: Vec<&LiveFile> = chosen
            .iter()
            .copied()
            .chain(plan.obsolete_deletes.iter())
            .collect();
        // a deletion vector goes with its data file (one Puffin file may hold the vectors of
        // files kept too): only the other files are removed by name
        let removes: HashSet<String> = replaced
            .iter()
            .filter(|f| f.vector.is_none())
            .map(|f| f.path.clone())
            .collect();
        outcome.data_files_in = chosen.len();
        outcome.delete_files_in = plan.obsolete_deletes.len();
        outcome.bytes_in = replaced.iter().map(|f| f.size).sum();
        outcome.data_files_kept = files.data.len() - chosen.len();
        outcome.data_files_out = written.len();
        outcome.bytes_out = written.iter().map(|f| f.file_size_in_bytes()).sum();
        outcome.rows = rows;
        let rewrite = Rewrite {
            data_sequence: snapshot.sequence_number(),
            schema_id: metadata.current_schema_id(),
            removes,
        };
        let committed = match &turn {
            Some(turn) => {
                sink.commit_rewrite_in_turn(turn, lake, &pointer, &metadata, written, rewrite)
                    .await
            }
            None => {
                sink.commit_rewrite(lake, &pointer, &metadata, written, rewrite)
                    .await
            }
        };
        match committed {
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

/// What one compaction of a table rewrites.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Plan {
    /// Data files read and written together: each group in one partition, at most the group
    /// size in bytes (or one file larger than that).
    pub groups: Vec<Vec<LiveFile>>,
    /// Delete files that apply to no data file left after the rewrite.
    pub obsolete_deletes: Vec<LiveFile>,
}

/// Chooses the data files to rewrite and the delete files that go with them (see the module
/// documentation). An equality delete applies to a data file of its partition with a smaller
/// data sequence number — the Iceberg rule for a table with one partition spec, which is all
/// lakewriter creates; a position delete (`positions`, the loaded `files.positions`) to a data
/// file it names with a data sequence number at or below its own.
pub(crate) fn plan(
    files: &LiveFiles,
    positions: &[PositionDeleteFile],
    small_below: u64,
    min_delete_files: usize,
    group_size: u64,
) -> Plan {
    let mut partitions: BTreeMap<&str, (Vec<&LiveFile>, Vec<&LiveFile>)> = BTreeMap::new();
    for file in &files.data {
        partitions.entry(&file.partition).or_default().0.push(file);
    }
    for file in files.deletes.values().flatten() {
        partitions.entry(&file.partition).or_default().1.push(file);
    }
    let mut plan = Plan::default();
    let mut kept_files: Vec<&LiveFile> = Vec::new();
    for (data, deletes) in partitions.values() {
        // per data file: hit by enough deletes, small
        let marks: Vec<(bool, bool)> = data
            .iter()
            .map(|f| {
                let applying = deletes.iter().filter(|d| f.sequence < d.sequence).count()
                    + positions.iter().filter(|p| p.applies_to(f)).count();
                (applying >= min_delete_files.max(1), f.size < small_below)
            })
            .collect();
        let worth = marks.iter().any(|(hit, _)| *hit)
            || marks.iter().filter(|(_, small)| *small).count() >= 2;
        let (mut chosen, mut kept) = (Vec::new(), Vec::new());
        for (file, (hit, small)) in data.iter().zip(&marks) {
            if worth && (*hit || *small) {
                chosen.push(*file);
            } else {
                kept.push(*file);
            }
        }
        plan.obsolete_deletes.extend(
            deletes
                .iter()
                .filter(|d| !kept.iter().any(|f| f.sequence < d.sequence))
                .map(|d| (*d).clone()),
        );
        kept_files.extend(kept.iter().copied());
        chosen.sort_by(|a, b| (a.sequence, &a.path).cmp(&(b.sequence, &b.path)));
        let mut group: Vec<LiveFile> = Vec::new();
        let mut bytes = 0u64;
        for file in chosen {
            if !group.is_empty() && bytes + file.size > group_size {
                plan.groups.push(std::mem::take(&mut group));
                bytes = 0;
            }
            bytes += file.size;
            group.push(file.clone());
        }
        if !group.is_empty() {
            plan.groups.push(group);
        }
    }
    plan.obsolete_deletes.extend(
        positions
            .iter()
            .filter(|p| !kept_files.iter().any(|f| p.applies_to(f)))
            .map(|p| p.file.clone()),
    );
    plan
}

/// Prints what compaction did, one line per table.
pub fn print(outcomes: &[Outcome]) {
    for o in outcomes {
        let cleaned = format!(
            "; {} snapshots expired ({} replaced files removed with them), {} orphan files \
             ({} bytes) removed",
            o.cleanup.snapshots, o.cleanup.replaced_files, o.cleanup.files, o.cleanup.bytes
        );
        if let Some(error) = &o.failed {
            println!("{}: failed: {error}", o.table);
            continue;
        }
        match &o.skipped {
            Some(why) => println!("{}: not compacted ({why}){cleaned}", o.table),
            None => println!(
                "{}: {} data + {} delete files ({} bytes) → {} data files ({} bytes), {} rows, \
                 {} data files kept, {:.1}s{cleaned}",
                o.table,
                o.data_files_in,
                o.delete_files_in,
                o.bytes_in,
                o.data_files_out,
                o.bytes_out,
                o.rows,
                o.data_files_kept,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, partition: &str, sequence: i64, size: u64) -> LiveFile {
        LiveFile {
            path: path.into(),
            sequence,
            partition: partition.into(),
            spec_id: 0,
            partition_value: iceberg::spec::Struct::empty(),
            size,
            records: size,
            vector: None,
        }
    }

    fn files(data: Vec<LiveFile>, deletes: Vec<LiveFile>) -> LiveFiles {
        LiveFiles {
            data,
            deletes: BTreeMap::from([(vec![1], deletes)]),
            positions: Vec::new(),
        }
    }

    fn paths(plan: &Plan) -> (Vec<Vec<&str>>, Vec<&str>) {
        (
            plan.groups
                .iter()
                .map(|g| g.iter().map(|f| f.path.as_str()).collect())
                .collect(),
            plan.obsolete_deletes
                .iter()
                .map(|f| f.path.as_str())
                .collect(),
        )
    }

    #[test]
    fn a_large_file_no_delete_applies_to_is_kept_and_the_deletes_go() {
        // d1 (seq 2) applies to `old` (seq 1) and `small` (seq 1), not to `big` (seq 3)
        let plan = plan(
            &files(
                vec![
                    file("old", "p", 1, 1000),
                    file("small", "p", 1, 10),
                    file("big", "p", 3, 1000),
                ],
                vec![file("d1", "p", 2, 5)],
            ),
            &[],
            100,
            1,
            10_000,
        );
        assert_eq!(paths(&plan), (vec![vec!["old", "small"]], vec!["d1"]));
    }

    #[test]
    fn a_delete_file_stays_while_a_kept_file_is_older() {
        // with two deletes needed, `old` (hit by d2 only) is kept, so d2 stays; d1 applies to
        // nothing left once `older` is rewritten
        let plan = plan(
            &files(
                vec![file("older", "p", 1, 1000), file("old", "p", 2, 1000)],
                vec![file("d1", "p", 2, 5), file("d2", "p", 3, 5)],
            ),
            &[],
            100,
            2,
            10_000,
        );
        assert_eq!(paths(&plan), (vec![vec!["older"]], vec!["d1"]));
    }

    #[test]
    fn one_small_file_alone_is_not_rewritten_but_two_are() {
        let alone = plan(
            &files(
                vec![file("a", "p", 1, 10), file("big", "p", 1, 1000)],
                vec![],
            ),
            &[],
            100,
            1,
            10_000,
        );
        assert_eq!(alone, Plan::default());
        let two = plan(
            &files(
                vec![
                    file("a", "p", 1, 10),
                    file("b", "p", 2, 10),
                    file("c", "q", 2, 10),
                ],
                vec![],
            ),
            &[],
            100,
            1,
            10_000,
        );
        // `c` is alone in its partition
        assert_eq!(paths(&two), (vec![vec!["a", "b"]], vec![]));
    }

    #[test]
    fn deletes_only_apply_within_their_partition() {
        let plan = plan(
            &files(
                vec![file("p1", "p", 1, 1000), file("q1", "q", 1, 1000)],
                vec![file("dq", "q", 2, 5), file("dr", "r", 2, 5)],
            ),
            &[],
            100,
            1,
            10_000,
        );
        // `dr` has no data file in its partition: it applies to nothing
        assert_eq!(paths(&plan), (vec![vec!["q1"]], vec!["dq", "dr"]));
    }

    fn positions(path: &str, sequence: i64, removes: &[(&str, u64)]) -> PositionDeleteFile {
        PositionDeleteFile {
            file: file(path, "p", sequence, 5),
            removes: removes.iter().map(|(f, p)| (f.to_string(), *p)).collect(),
        }
    }

    #[test]
    fn a_position_delete_chooses_the_files_it_names_and_goes_when_they_are_rewritten() {
        let data = vec![
            file("a", "p", 1, 1000),
            file("b", "p", 1, 1000),
            file("c", "p", 3, 1000),
        ];
        // `p1` names `a` (older: applies) and `c` (newer than it: does not apply); `p2` names
        // `b` at its own sequence number (applies, as Spark's do)
        let deletes = vec![
            positions("p1", 2, &[("a", 0), ("c", 1)]),
            positions("p2", 1, &[("b", 7)]),
        ];
        let one = plan(&files(data.clone(), vec![]), &deletes, 100, 1, 10_000);
        assert_eq!(paths(&one), (vec![vec!["a", "b"]], vec!["p1", "p2"]));
        // with two deletes needed per file, nothing is rewritten and both stay
        let two = plan(&files(data, vec![]), &deletes, 100, 2, 10_000);
        assert_eq!(two, Plan::default());
    }

    #[test]
    fn a_position_delete_naming_a_kept_file_stays() {
        let data = vec![file("a", "p", 1, 1000), file("b", "p", 1, 1000)];
        let deletes = vec![
            positions("p1", 2, &[("a", 0), ("b", 0)]),
            positions("p2", 2, &[("b", 1)]),
        ];
        // `a` is hit by one delete, `b` by two: with two needed, only `b` is rewritten, and
        // `p1` still applies to `a`
        let plan = plan(&files(data, vec![]), &deletes, 100, 2, 10_000);
        assert_eq!(paths(&plan), (vec![vec!["b"]], vec!["p2"]));
    }

    #[test]
    fn chosen_files_are_split_into_groups_of_the_group_size() {
        let data = (1..=5)
            .map(|i| file(&format!("f{i}"), "p", i, 40))
            .collect();
        let plan = plan(&files(data, vec![]), &[], 100, 1, 100);
        assert_eq!(
            paths(&plan).0,
            vec![vec!["f1", "f2"], vec!["f3", "f4"], vec!["f5"]]
        );
    }
}
