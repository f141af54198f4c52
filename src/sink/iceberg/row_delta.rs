//! The RowDelta commit iceberg 0.10.1 does not have: a snapshot that adds data files and
//! equality-delete files at once (or, for a truncate, replaces everything), built from the
//! crate's public pieces — manifests for the new files, the parent's manifests carried over,
//! a manifest list, a snapshot with the checkpoint in its summary, and the next metadata file.
//!
//! Staging is a pure function of the table's current metadata and the files already written,
//! so a lost compare-and-swap re-stages on the winner's metadata and reuses the files.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use iceberg::MetadataLocation;
use iceberg::io::FileIO;
use iceberg::spec::{
    DataContentType, DataFile, FormatVersion, MAIN_BRANCH, ManifestContentType, ManifestFile,
    ManifestList, ManifestListWriter, ManifestWriterBuilder, Operation, Snapshot, Summary,
    TableMetadata, UNASSIGNED_SEQUENCE_NUMBER,
};

use crate::catalog::StagedMetadata;
use crate::lsn::Lsn;
use crate::sink::{CHECKPOINT_PROPERTY, COPY_PROPERTY};

/// A commit's files, written once and committed by one snapshot.
#[derive(Debug, Clone)]
pub(super) struct RowDelta {
    /// New data files, written with partition spec `spec_id`.
    pub data_files: Vec<DataFile>,
    /// New equality-delete files, written with partition spec `spec_id`.
    pub delete_files: Vec<DataFile>,
    /// The partition spec the files were written with (a file does not say so publicly).
    pub spec_id: i32,
    /// Drop every file the table holds before adding these.
    pub truncate: bool,
    /// The checkpoint the snapshot carries; `None` for an initial snapshot's chunk before its
    /// last.
    pub lsn: Option<Lsn>,
    /// The progress of the table's chunked copy ([`COPY_PROPERTY`]); a rewrite carries the
    /// table's forward itself.
    pub copy: Option<String>,
    /// A compaction: the data files replace `removes`, read from an earlier snapshot.
    pub rewrite: Option<Rewrite>,
    /// The snapshot its position deletes name rows of (`delete_mode = "position"`): staged on
    /// any other, a row they name may have moved (a compaction, another engine's rewrite) or
    /// another row of the key been added, so that is a conflict.
    pub based_on: Option<i64>,
}

impl RowDelta {
    /// Files to add in spec `spec_id`, nothing else: no checkpoint, no truncate, no rewrite,
    /// staged on no particular snapshot.
    pub fn files(spec_id: i32, data_files: Vec<DataFile>, delete_files: Vec<DataFile>) -> Self {
        RowDelta {
            data_files,
            delete_files,
            spec_id,
            truncate: false,
            lsn: None,
            copy: None,
            rewrite: None,
            based_on: None,
        }
    }
}

/// What a compaction replaces, and what it read (DESIGN.md invariant 8).
#[derive(Debug, Clone)]
pub struct Rewrite {
    /// The data sequence number of the snapshot the rewrite read: its new files carry it, so
    /// equality deletes committed since still apply to their rows.
    pub data_sequence: i64,
    /// The schema the rewrite read with; a commit on another one is a conflict.
    pub schema_id: i32,
    /// The live data and delete files it replaces, by path. One no longer live (a truncate or
    /// another rewrite committed meanwhile) is a conflict.
    pub removes: HashSet<String>,
}

/// Why a snapshot could not be staged.
#[derive(Debug)]
pub(super) enum StageError {
    /// Reading or writing a manifest or metadata file, or building the metadata, failed.
    Iceberg(iceberg::Error),
    /// The table already holds this checkpoint or a later one: another writer committed it
    /// (or this delta's commit landed although its answer was lost).
    AlreadyCommitted {
        /// The table's checkpoint.
        holds: Lsn,
    },
    /// The metadata is not what this commit can build on.
    Invalid(String),
    /// A rewrite lost to a commit that changed what it read (a truncate, another rewrite, a
    /// schema change): it must read the table again.
    Conflict(String),
}

impl From<iceberg::Error> for StageError {
    fn from(e: iceberg::Error) -> Self {
        StageError::Iceberg(e)
    }
}

/// Builds, on `metadata` (read from `current_location`), the snapshot committing `delta`, and
/// writes its manifests, manifest list and metadata file. The metadata file is not yet the
/// table's: the catalog's compare-and-swap makes it so.
pub(super) async fn stage(
    file_io: &FileIO,
    current_location: &str,
    metadata: TableMetadata,
    delta: &RowDelta,
) -> Result<StagedMetadata, StageError> {
    if metadata.format_version() != FormatVersion::V2 {
        return Err(StageError::Invalid(format!(
            "the table is Iceberg format {}; lakewriter writes equality deletes to v2 tables only",
            metadata.format_version()
        )));
    }
    if let (Ok(Some(holds)), Some(lsn)) = (super::table::checkpoint(&metadata), delta.lsn)
        && holds >= lsn
    {
        return Err(StageError::AlreadyCommitted { holds });
    }
    let schema = metadata.current_schema().clone();
    if let Some(rewrite) = &delta.rewrite
        && rewrite.schema_id != schema.schema_id()
    {
        return Err(StageError::Conflict(format!(
            "the schema changed (to {}) since the rewrite read the table (with {})",
            schema.schema_id(),
            rewrite.schema_id
        )));
    }
    // a rewrite carries the latest checkpoint forward, and a chunked copy's progress with it
    let (carried_checkpoint, carried_copy) = match &delta.rewrite {
        Some(_) => (
            super::table::checkpoint(&metadata).ok().flatten(),
            super::table::copy_progress(&metadata),
        ),
        None => (None, None),
    };
    let added_sequence = delta
        .rewrite
        .as_ref()
        .map_or(UNASSIGNED_SEQUENCE_NUMBER, |r| r.data_sequence);
    let snapshot_id = new_snapshot_id(&metadata);
    let sequence_number = metadata.next_sequence_number();
    let parent = metadata.snapshot_for_ref(MAIN_BRANCH).cloned();
    if let Some(based_on) = delta.based_on
        && parent.as_ref().map(|p| p.snapshot_id()) != Some(based_on)
    {
        return Err(StageError::Conflict(format!(
            "the position deletes name rows of snapshot {based_on}, and the table is at {} \
             now (another commit landed: a compaction, another engine)",
            parent
                .as_ref()
                .map_or("no snapshot".to_string(), |p| p.snapshot_id().to_string())
        )));
    }
    let commit_id = unique_id();
    let metadata_dir = format!("{}/metadata", metadata.location().trim_end_matches('/'));
    let mut manifest_count = 0;
    let mut next_manifest_path = || {
        manifest_count += 1;
        format!("{metadata_dir}/{commit_id}-m{manifest_count}.avro")
    };

    let mut metrics = Metrics::default();
    let mut manifests: Vec<ManifestFile> = Vec::new();
    let spec = metadata
        .partition_spec_by_id(delta.spec_id)
        .ok_or_else(|| {
            StageError::Invalid(format!(
                "the files were written with partition spec {}, which the table no longer has",
                delta.spec_id
            ))
        })?
        .as_ref()
        .clone();
    for (files, content) in [
        (&delta.data_files, ManifestContentType::Data),
        (&delta.delete_files, ManifestContentType::Deletes),
    ] {
        if files.is_empty() {
            continue;
        }
        let builder = ManifestWriterBuilder::new(
            file_io.new_output(next_manifest_path())?,
            Some(snapshot_id),
            schema.clone(),
            spec.clone(),
        );
        let mut writer = match content {
            ManifestContentType::Data => builder.build_v2_data(),
            ManifestContentType::Deletes => builder.build_v2_deletes(),
        };
        for file in files {
            metrics.add(file);
            // Unassigned: the entry inherits the snapshot's sequence number from the manifest
            // list, so a retried commit does not have to rewrite it. A rewrite's files keep the
            // sequence number of the snapshot it read.
            writer.add_file(file.clone(), added_sequence)?;
        }
        manifests.push(writer.write_manifest_file().await?);
    }

    let mut removed = 0usize;
    // the parent's manifests this snapshot keeps as they are: candidates for merging
    let mut carried: Vec<ManifestFile> = Vec::new();
    if let Some(parent) = &parent {
        let bytes = file_io.new_input(parent.manifest_list())?.read().await?;
        let list = ManifestList::parse_with_version(&bytes, metadata.format_version())?;
        // `entries` rather than `consume_entries`, whose iterator is not `Send` across the
        // awaits below.
        for manifest in list.entries().iter().cloned() {
            let live = manifest.has_added_files() || manifest.has_existing_files();
            if !live {
                // Only removals of an earlier snapshot: nothing for this one to carry.
                continue;
            }
            // a truncate removes every live file, a rewrite the files it replaces
            let removes = |path: &str| {
                delta.truncate
                    || delta
                        .rewrite
                        .as_ref()
                        .is_some_and(|r| r.removes.contains(path))
            };
            if !delta.truncate && delta.rewrite.is_none() {
                carried.push(manifest);
                continue;
            }
            if let Some(rewrite) = &delta.rewrite {
                position_deletes_since(file_io, &manifest, rewrite).await?;
            }
            let kept = remove_from(
                file_io,
                &manifest,
                snapshot_id,
                removes,
                &mut next_manifest_path,
                &mut removed,
                &mut metrics,
            )
            .await?;
            if kept.manifest_path == manifest.manifest_path {
                carried.push(kept);
            } else {
                manifests.push(kept);
            }
        }
    }
    let mut counts = ManifestCounts {
        created: manifests.len(),
        ..ManifestCounts::default()
    };
    match MergePolicy::of(&metadata) {
        Some(policy) => manifests.extend(
            policy
                .merge(
                    file_io,
                    carried,
                    snapshot_id,
                    &mut next_manifest_path,
                    &mut counts,
                )
                .await?,
        ),
        None => {
            counts.kept = carried.len();
            manifests.extend(carried);
        }
    }

    if let Some(rewrite) = &delta.rewrite
        && removed != rewrite.removes.len()
    {
        return Err(StageError::Conflict(format!(
            "{} of the {} files the rewrite replaces are no longer live: a truncate or another \
             rewrite committed meanwhile",
            rewrite.removes.len() - removed,
            rewrite.removes.len()
        )));
    }

    let manifest_list = format!("{metadata_dir}/snap-{snapshot_id}-1-{commit_id}.avro");
    let mut list_writer = ManifestListWriter::v2(
        file_io.new_output(&manifest_list)?.writer().await?,
        snapshot_id,
        parent.as_ref().map(|p| p.snapshot_id()),
        sequence_number,
    );
    list_writer.add_manifests(manifests.into_iter())?;
    list_writer.close().await?;

    let operation = if delta.rewrite.is_some() {
        Operation::Replace
    } else if delta.truncate || !delta.delete_files.is_empty() {
        Operation::Overwrite
    } else {
        Operation::Append
    };
    let mut properties = metrics.summary(parent.as_ref().map(|p| p.summary()), delta.truncate);
    counts.describe(&mut properties);
    match delta.lsn.or(carried_checkpoint) {
        Some(lsn) => properties.insert(CHECKPOINT_PROPERTY.to_string(), lsn.to_string()),
        None => properties.insert(
            super::table::INCOMPLETE_PROPERTY.to_string(),
            "true".to_string(),
        ),
    };
    if let Some(copy) = delta.copy.clone().or(carried_copy) {
        properties.insert(COPY_PROPERTY.to_string(), copy);
    }
    // A snapshot older than the table's last update by more than a minute is refused, so a
    // clock that went back does not stop commits.
    let timestamp_ms = now_ms().max(metadata.last_updated_ms());
    let snapshot = Snapshot::builder()
        .with_snapshot_id(snapshot_id)
        .with_parent_snapshot_id(parent.as_ref().map(|p| p.snapshot_id()))
        .with_sequence_number(sequence_number)
        .with_timestamp_ms(timestamp_ms)
        .with_manifest_list(manifest_list)
        .with_summary(Summary {
            operation,
            additional_properties: properties,
        })
        .with_schema_id(schema.schema_id())
        .build();
    let updated = metadata
        .into_builder(Some(current_location.to_string()))
        .set_branch_snapshot(snapshot, MAIN_BRANCH)?
        .build()?
        .metadata;
    write_next_metadata(file_io, current_location, updated).await
}

/// A conflict when `manifest` holds a live position delete committed after the snapshot
/// `rewrite` read (another engine's merge-on-read `DELETE` meanwhile): it names rows by the
/// paths of the files the rewrite replaces, and would no longer apply to their rows.
async fn position_deletes_since(
    file_io: &FileIO,
    manifest: &ManifestFile,
    rewrite: &Rewrite,
) -> Result<(), StageError> {
    if manifest.content != ManifestContentType::Deletes
        || manifest.sequence_number <= rewrite.data_sequence
    {
        return Ok(());
    }
    let entries = manifest.load_manifest(file_io).await?;
    for entry in entries.entries().iter().filter(|e| {
        e.is_alive()
            && e.data_file().content_type() == DataContentType::PositionDeletes
            && e.sequence_number().unwrap_or(i64::MAX) > rewrite.data_sequence
    }) {
        // one naming only files the rewrite keeps applies to them as before
        let names_replaced = match entry.data_file().referenced_data_file() {
            Some(only) => rewrite.removes.contains(&only),
            None => super::positions::DeletedPositions::load(file_io, entry.file_path())
                .await
                .map_err(StageError::Invalid)?
                .data_files()
                .any(|name| rewrite.removes.contains(name)),
        };
        if names_replaced {
            return Err(StageError::Conflict(format!(
                "position deletes of rows it rewrites were committed since the rewrite read \
                 the table ({})",
                entry.file_path()
            )));
        }
    }
    Ok(())
}

/// Writes `metadata` as the version after `current_location`
/// (`<location>/metadata/<version>-<uuid>.metadata.json`).
pub(super) async fn write_next_metadata(
    file_io: &FileIO,
    current_location: &str,
    metadata: TableMetadata,
) -> Result<StagedMetadata, StageError> {
    let next = match MetadataLocation::from_str(current_location) {
        Ok(current) => current.with_next_version().with_new_metadata(&metadata),
        // A name another tool chose: number the next version after the metadata log.
        Err(_) => {
            let mut next = MetadataLocation::new_with_metadata(metadata.location(), &metadata);
            for _ in 0..metadata.metadata_log().len() {
                next = next.with_next_version();
            }
            next
        }
    };
    metadata.write_to(file_io, &next).await?;
    Ok(StagedMetadata {
        location: next.to_string(),
        metadata,
    })
}

/// `manifest` with the live entries whose path `removes` picks marked removed by
/// `snapshot_id` (a truncate, a rewrite), counted in `removed`: readers of the new snapshot no
/// longer see them, readers of older snapshots still do. Unchanged (the same file) when it
/// picks none.
async fn remove_from(
    file_io: &FileIO,
    manifest: &ManifestFile,
    snapshot_id: i64,
    removes: impl Fn(&str) -> bool,
    next_path: &mut impl FnMut() -> String,
    removed: &mut usize,
    metrics: &mut Metrics,
) -> Result<ManifestFile, StageError> {
    let loaded = manifest.load_manifest(file_io).await?;
    let (entries, manifest_metadata) = loaded.into_parts();
    if !entries
        .iter()
        .any(|e| e.is_alive() && removes(e.file_path()))
    {
        return Ok(manifest.clone());
    }
    let builder = ManifestWriterBuilder::new(
        file_io.new_output(next_path())?,
        Some(snapshot_id),
        manifest_metadata.schema().clone(),
        manifest_metadata.partition_spec().clone(),
    );
    let mut writer = match manifest.content {
        ManifestContentType::Data => builder.build_v2_data(),
        ManifestContentType::Deletes => builder.build_v2_deletes(),
    };
    for entry in entries.iter().filter(|e| e.is_alive()) {
        let sequence_number = entry.sequence_number().ok_or_else(|| {
            StageError::Invalid(format!(
                "manifest {}: entry {} has no sequence number",
                manifest.manifest_path,
                entry.file_path()
            ))
        })?;
        let file_sequence = Some(entry.file_sequence_number.unwrap_or(sequence_number));
        if removes(entry.file_path()) {
            *removed += 1;
            metrics.remove(entry.data_file());
            writer.add_delete_file(entry.data_file().clone(), sequence_number, file_sequence)?;
        } else {
            let added_by = entry.snapshot_id().unwrap_or(manifest.added_snapshot_id);
            writer.add_existing_file(
                entry.data_file().clone(),
                added_by,
                sequence_number,
                file_sequence,
            )?;
        }
    }
    Ok(writer.write_manifest_file().await?)
}

/// How a commit merges the small manifests it carries from its parent, so that the current
/// snapshot's manifest count — what every reader plans a scan over — stays bounded after any
/// number of commits. Read from the table properties Iceberg's Java `MergeAppend` reads, with
/// its defaults: a commit carrying at least `min_count` manifests of one content and partition
/// spec merges those smaller than `target_size` into manifests of about that size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MergePolicy {
    /// `commit.manifest.min-count-to-merge` (default 100).
    pub min_count: usize,
    /// `commit.manifest.target-size-bytes` (default 8 MiB).
    pub target_size: i64,
}

/// `commit.manifest-merge.enabled` (default `true`).
const MERGE_ENABLED: &str = "commit.manifest-merge.enabled";
const MIN_COUNT_TO_MERGE: &str = "commit.manifest.min-count-to-merge";
const TARGET_MANIFEST_SIZE: &str = "commit.manifest.target-size-bytes";

impl MergePolicy {
    /// The policy `metadata`'s properties ask for; `None` when merging is off. A value that
    /// does not parse is taken as its default, as Java does.
    pub(super) fn of(metadata: &TableMetadata) -> Option<MergePolicy> {
        let properties = metadata.properties();
        if properties
            .get(MERGE_ENABLED)
            .is_some_and(|v| v.eq_ignore_ascii_case("false"))
        {
            return None;
        }
        let min_count = properties
            .get(MIN_COUNT_TO_MERGE)
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(100)
            .max(2);
        let target_size = properties
            .get(TARGET_MANIFEST_SIZE)
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|v| *v > 0)
            .unwrap_or(8 * 1024 * 1024);
        Some(MergePolicy {
            min_count,
            target_size,
        })
    }

    /// `carried` (manifests kept unchanged from the parent, newest first) with, in each group
    /// of one content and partition spec that reaches `min_count`, the manifests smaller than
    /// `target_size` merged into as few as fit that size. A merged manifest lists the live
    /// entries of its inputs as existing, each with its own data and file sequence numbers, so
    /// every delete applies to exactly the rows it applied to before; entries the inputs
    /// marked deleted (by an earlier snapshot) are left out, as Java does. Manifests written
    /// against different schemas are not merged together.
    async fn merge(
        self,
        file_io: &FileIO,
        carried: Vec<ManifestFile>,
        snapshot_id: i64,
        next_path: &mut impl FnMut() -> String,
        counts: &mut ManifestCounts,
    ) -> Result<Vec<ManifestFile>, StageError> {
        let mut groups: Vec<((u8, i32), Vec<ManifestFile>)> = Vec::new();
        for manifest in carried {
            let key = (
                u8::from(manifest.content == ManifestContentType::Deletes),
                manifest.partition_spec_id,
            );
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, group)) => group.push(manifest),
                None => groups.push((key, vec![manifest])),
            }
        }
        let mut out = Vec::new();
        for (_, group) in groups {
            if group.len() < self.min_count {
                counts.kept += group.len();
                out.extend(group);
                continue;
            }
            // bins of small manifests, per schema, filled up to the target size in order
            let mut bins: Vec<Bin> = Vec::new();
            for manifest in group {
                if manifest.manifest_length >= self.target_size {
                    counts.kept += 1;
                    out.push(manifest);
                    continue;
                }
                let loaded = manifest.load_manifest(file_io).await?;
                let schema_id = loaded.metadata().schema_id();
                let size = manifest.manifest_length;
                match bins
                    .iter_mut()
                    .find(|(s, total, _)| *s == schema_id && total + size <= self.target_size)
                {
                    Some((_, total, bin)) => {
                        *total += size;
                        bin.push((manifest, loaded));
                    }
                    None => bins.push((schema_id, size, vec![(manifest, loaded)])),
                }
            }
            for (_, _, bin) in bins {
                if bin.len() == 1 {
                    counts.kept += 1;
                    out.extend(bin.into_iter().map(|(m, _)| m));
                    continue;
                }
                counts.replaced += bin.len();
                counts.created += 1;
                out.push(merge_manifests(file_io, bin, snapshot_id, next_path()).await?);
            }
        }
        Ok(out)
    }
}

/// Manifests to merge into one: their schema, total size, and each with its entries.
type Bin = (i32, i64, Vec<(ManifestFile, iceberg::spec::Manifest)>);

/// One manifest at `path` listing the live entries of `inputs` as existing.
async fn merge_manifests(
    file_io: &FileIO,
    inputs: Vec<(ManifestFile, iceberg::spec::Manifest)>,
    snapshot_id: i64,
    path: String,
) -> Result<ManifestFile, StageError> {
    let Some((first, first_loaded)) = inputs.first() else {
        return Err(StageError::Invalid("no manifest to merge".to_string()));
    };
    let builder = ManifestWriterBuilder::new(
        file_io.new_output(path)?,
        Some(snapshot_id),
        first_loaded.metadata().schema().clone(),
        first_loaded.metadata().partition_spec().clone(),
    );
    let mut writer = match first.content {
        ManifestContentType::Data => builder.build_v2_data(),
        ManifestContentType::Deletes => builder.build_v2_deletes(),
    };
    for (manifest, loaded) in &inputs {
        for entry in loaded.entries().iter().filter(|e| e.is_alive()) {
            let sequence_number = entry.sequence_number().ok_or_else(|| {
                StageError::Invalid(format!(
                    "manifest {}: entry {} has no sequence number",
                    manifest.manifest_path,
                    entry.file_path()
                ))
            })?;
            let file_sequence = Some(entry.file_sequence_number.unwrap_or(sequence_number));
            let added_by = entry.snapshot_id().unwrap_or(manifest.added_snapshot_id);
            writer.add_existing_file(
                entry.data_file().clone(),
                added_by,
                sequence_number,
                file_sequence,
            )?;
        }
    }
    Ok(writer.write_manifest_file().await?)
}

/// The manifests of a snapshot by where they come from, for its summary (as Java names them).
#[derive(Debug, Default)]
struct ManifestCounts {
    /// Written by this commit: its new files, rewrites, merges.
    created: usize,
    /// Carried from the parent as they were.
    kept: usize,
    /// Carried from the parent into a merged manifest.
    replaced: usize,
}

impl ManifestCounts {
    fn describe(&self, properties: &mut HashMap<String, String>) {
        for (key, value) in [
            ("manifests-created", self.created),
            ("manifests-kept", self.kept),
            ("manifests-replaced", self.replaced),
        ] {
            properties.insert(key.to_string(), value.to_string());
        }
    }
}

/// What a snapshot adds and removes, for its summary.
#[derive(Debug, Default)]
struct Metrics {
    added_data_files: u64,
    added_records: u64,
    added_delete_files: u64,
    added_equality_delete_files: u64,
    added_equality_deletes: u64,
    added_position_delete_files: u64,
    added_position_deletes: u64,
    added_size: u64,
    removed_data_files: u64,
    removed_records: u64,
    removed_delete_files: u64,
    removed_equality_delete_files: u64,
    removed_equality_deletes: u64,
    removed_position_delete_files: u64,
    removed_position_deletes: u64,
    removed_size: u64,
}

impl Metrics {
    fn add(&mut self, file: &DataFile) {
        self.added_size += file.file_size_in_bytes();
        match file.content_type() {
            DataContentType::Data => {
                self.added_data_files += 1;
                self.added_records += file.record_count();
            }
            DataContentType::EqualityDeletes => {
                self.added_delete_files += 1;
                self.added_equality_delete_files += 1;
                self.added_equality_deletes += file.record_count();
            }
            DataContentType::PositionDeletes => {
                self.added_delete_files += 1;
                self.added_position_delete_files += 1;
                self.added_position_deletes += file.record_count();
            }
        }
    }

    fn remove(&mut self, file: &DataFile) {
        self.removed_size += file.file_size_in_bytes();
        match file.content_type() {
            DataContentType::Data => {
                self.removed_data_files += 1;
                self.removed_records += file.record_count();
            }
            DataContentType::EqualityDeletes => {
                self.removed_delete_files += 1;
                self.removed_equality_delete_files += 1;
                self.removed_equality_deletes += file.record_count();
            }
            DataContentType::PositionDeletes => {
                self.removed_delete_files += 1;
                self.removed_position_delete_files += 1;
                self.removed_position_deletes += file.record_count();
            }
        }
    }

    /// The summary properties, as the Iceberg spec names them: what changed (only what is
    /// non-zero, as Java and pyiceberg write it) and the table's totals, carried from the
    /// parent's. After a truncate the totals are exactly what this snapshot adds; otherwise a
    /// total the parent does not state stays unstated rather than guessed.
    fn summary(&self, parent: Option<&Summary>, truncate: bool) -> HashMap<String, String> {
        let mut properties = HashMap::new();
        let mut changed = |key: &str, value: u64| {
            if value > 0 {
                properties.insert(key.to_string(), value.to_string());
            }
        };
        changed("added-data-files", self.added_data_files);
        changed("added-records", self.added_records);
        changed("added-delete-files", self.added_delete_files);
        changed(
            "added-equality-delete-files",
            self.added_equality_delete_files,
        );
        changed("added-equality-deletes", self.added_equality_deletes);
        changed(
            "added-position-delete-files",
            self.added_position_delete_files,
        );
        changed("added-position-deletes", self.added_position_deletes);
        changed("added-files-size", self.added_size);
        changed("deleted-data-files", self.removed_data_files);
        changed("deleted-records", self.removed_records);
        changed("removed-delete-files", self.removed_delete_files);
        changed(
            "removed-equality-delete-files",
            self.removed_equality_delete_files,
        );
        changed("removed-equality-deletes", self.removed_equality_deletes);
        changed(
            "removed-position-delete-files",
            self.removed_position_delete_files,
        );
        changed("removed-position-deletes", self.removed_position_deletes);
        changed("removed-files-size", self.removed_size);

        let totals = [
            (
                "total-data-files",
                self.added_data_files,
                self.removed_data_files,
            ),
            (
                "total-delete-files",
                self.added_delete_files,
                self.removed_delete_files,
            ),
            ("total-records", self.added_records, self.removed_records),
            ("total-files-size", self.added_size, self.removed_size),
            (
                "total-equality-deletes",
                self.added_equality_deletes,
                self.removed_equality_deletes,
            ),
            (
                "total-position-deletes",
                self.added_position_deletes,
                self.removed_position_deletes,
            ),
        ];
        for (key, added, removed) in totals {
            let previous = match parent {
                _ if truncate => Some(removed),
                None => Some(0),
                Some(summary) => summary
                    .additional_properties
                    .get(key)
                    .and_then(|v| v.parse::<u64>().ok()),
            };
            if let Some(previous) = previous {
                properties.insert(
                    key.to_string(),
                    (previous + added).saturating_sub(removed).to_string(),
                );
            }
        }
        properties
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A random 64-bit number from the standard library's randomly keyed hasher (a new key per
/// call), mixed with the clock and a counter: enough for ids that must not collide, without a
/// dependency.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_i64(now_ms());
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// A 32-hex-digit id naming one commit's files.
pub(super) fn unique_id() -> String {
    format!("{:016x}{:016x}", random_u64(), random_u64())
}

/// A positive snapshot id the table does not have yet.
fn new_snapshot_id(metadata: &TableMetadata) -> i64 {
    loop {
        let id = i64::try_from(random_u64() >> 1).unwrap_or(1);
        if id != 0 && metadata.snapshot_by_id(id).is_none() {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_carry_from_the_parent_and_reset_on_truncate() {
        let metrics = Metrics {
            added_data_files: 2,
            added_records: 10,
            added_delete_files: 1,
            added_equality_delete_files: 1,
            added_equality_deletes: 3,
            added_size: 100,
            ..Metrics::default()
        };
        let parent = Summary {
            operation: Operation::Append,
            additional_properties: HashMap::from([
                ("total-data-files".to_string(), "5".to_string()),
                ("total-records".to_string(), "50".to_string()),
            ]),
        };
        let summary = metrics.summary(Some(&parent), false);
        assert_eq!(summary["total-data-files"], "7");
        assert_eq!(summary["total-records"], "60");
        assert_eq!(summary["added-equality-deletes"], "3");
        assert!(
            !summary.contains_key("total-delete-files"),
            "unknown totals stay unstated"
        );
        assert!(!summary.contains_key("deleted-records"));

        let fresh = metrics.summary(None, false);
        assert_eq!(fresh["total-delete-files"], "1");
        assert_eq!(fresh["total-position-deletes"], "0");

        let truncated = Metrics {
            removed_data_files: 5,
            removed_records: 50,
            ..Metrics::default()
        };
        let summary = truncated.summary(Some(&parent), true);
        assert_eq!(summary["total-data-files"], "0");
        assert_eq!(summary["deleted-records"], "50");
    }

    #[test]
    fn ids_do_not_repeat() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| unique_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| id.len() == 32));
    }
}
