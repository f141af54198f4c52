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
    DataContentType, DataFile, DataFileFormat, FormatVersion, MAIN_BRANCH, ManifestContentType,
    ManifestFile, ManifestList, ManifestListWriter, ManifestWriterBuilder, Operation, Snapshot,
    Summary, TableMetadata, UNASSIGNED_SEQUENCE_NUMBER,
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
    /// The data files whose live deletion vector a new one in `delete_files` replaces (it
    /// holds every position of the old): the old vectors are removed by the same snapshot,
    /// so a data file never has two (format 3).
    pub replaced_vectors: HashSet<String>,
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
            replaced_vectors: HashSet::new(),
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
    let version = metadata.format_version();
    if version < FormatVersion::V2 {
        return Err(StageError::Invalid(format!(
            "the table is Iceberg format {version}; row-level deletes need format 2 or 3"
        )));
    }
    if version >= FormatVersion::V3
        && let Some(file) = delta.delete_files.iter().find(|f| {
            f.content_type() == DataContentType::PositionDeletes
                && f.file_format() != DataFileFormat::Puffin
        })
    {
        return Err(StageError::Invalid(format!(
            "{}: a position-delete file cannot be added to a format {version} table (deletion \
             vectors only)",
            file.file_path()
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
        let mut writer = manifest_writer(builder, content, version);
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
            // a truncate removes every live file, a rewrite the files it replaces (and the
            // deletion vectors of those, which go with their data file), a new deletion vector
            // the one before it of its data file
            let replaces = |path: &str| {
                delta
                    .rewrite
                    .as_ref()
                    .is_some_and(|r| r.removes.contains(path))
            };
            let removes = |file: &DataFile| {
                if delta.truncate || replaces(file.file_path()) {
                    return Removal::Named;
                }
                match file.referenced_data_file() {
                    Some(data) if file.file_format() == DataFileFormat::Puffin => {
                        if replaces(&data) || delta.replaced_vectors.contains(&data) {
                            Removal::Follows
                        } else {
                            Removal::Kept
                        }
                    }
                    _ => Removal::Kept,
                }
            };
            let vectors_replaced = manifest.content == ManifestContentType::Deletes
                && !delta.replaced_vectors.is_empty();
            if !delta.truncate && delta.rewrite.is_none() && !vectors_replaced {
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
                version,
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
                    version,
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
    let list_output = file_io.new_output(&manifest_list)?.writer().await?;
    let parent_id = parent.as_ref().map(|p| p.snapshot_id());
    // format 3: the rows each data manifest adds or carries get the next row ids (row lineage)
    let first_row_id = metadata.next_row_id();
    let mut list_writer = if version >= FormatVersion::V3 {
        ManifestListWriter::v3(
            list_output,
            snapshot_id,
            parent_id,
            sequence_number,
            Some(first_row_id),
        )
    } else {
        ManifestListWriter::v2(list_output, snapshot_id, parent_id, sequence_number)
    };
    list_writer.add_manifests(manifests.into_iter())?;
    let row_range = list_writer
        .next_row_id()
        .map(|next| (first_row_id, next.saturating_sub(first_row_id)));
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
        .with_row_range(
            row_range.map_or(0, |(first, _)| first),
            row_range.map_or(0, |(_, added)| added),
        )
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
#[allow(clippy::too_many_arguments)]
async fn remove_from(
    file_io: &FileIO,
    manifest: &ManifestFile,
    snapshot_id: i64,
    version: FormatVersion,
    removes: impl Fn(&DataFile) -> Removal,
    next_path: &mut impl FnMut() -> String,
    removed: &mut usize,
    metrics: &mut Metrics,
) -> Result<ManifestFile, StageError> {
    let loaded = manifest.load_manifest(file_io).await?;
    let (entries, manifest_metadata) = loaded.into_parts();
    if !entries
        .iter()
        .any(|e| e.is_alive() && removes(e.data_file()) != Removal::Kept)
    {
        return Ok(manifest.clone());
    }
    let builder = ManifestWriterBuilder::new(
        file_io.new_output(next_path())?,
        Some(snapshot_id),
        manifest_metadata.schema().clone(),
        manifest_metadata.partition_spec().clone(),
    );
    let mut writer = manifest_writer(builder, manifest.content, version);
    let row_ids = inherited_row_ids(manifest, &entries);
    for (entry, row_id) in entries.iter().zip(row_ids).filter(|(e, _)| e.is_alive()) {
        let file = with_row_id(entry.data_file(), row_id, manifest.partition_spec_id)?;
        let sequence_number = entry.sequence_number().ok_or_else(|| {
            StageError::Invalid(format!(
                "manifest {}: entry {} has no sequence number",
                manifest.manifest_path,
                entry.file_path()
            ))
        })?;
        let file_sequence = Some(entry.file_sequence_number.unwrap_or(sequence_number));
        let removal = removes(entry.data_file());
        if removal != Removal::Kept {
            if removal == Removal::Named {
                *removed += 1;
            }
            metrics.remove(entry.data_file());
            writer.add_delete_file(file, sequence_number, file_sequence)?;
        } else {
            let added_by = entry.snapshot_id().unwrap_or(manifest.added_snapshot_id);
            writer.add_existing_file(file, added_by, sequence_number, file_sequence)?;
        }
    }
    Ok(writer.write_manifest_file().await?)
}

/// The first row id each entry of `manifest` (a format-3 data manifest) inherits: its own when
/// it has one, else the manifest's plus the rows of the entries before it without their own
/// (row lineage). Written into an entry carried into another manifest, its rows keep their
/// ids. `None` throughout for a manifest without row ids (delete manifests, format 2).
fn inherited_row_ids(
    manifest: &ManifestFile,
    entries: &[iceberg::spec::ManifestEntryRef],
) -> Vec<Option<i64>> {
    let mut next = manifest
        .first_row_id
        .filter(|_| manifest.content == ManifestContentType::Data)
        .and_then(|id| i64::try_from(id).ok());
    entries
        .iter()
        .map(|entry| {
            let file = entry.data_file();
            file.first_row_id().or_else(|| {
                let id = next?;
                next = id.checked_add(i64::try_from(file.record_count()).ok()?);
                Some(id)
            })
        })
        .collect()
}

/// `file` with the first row id `row_id` written in (when it inherited one; unchanged else),
/// in partition spec `spec_id`.
fn with_row_id(file: &DataFile, row_id: Option<i64>, spec_id: i32) -> Result<DataFile, StageError> {
    let Some(row_id) = row_id.filter(|_| file.first_row_id().is_none()) else {
        return Ok(file.clone());
    };
    let mut builder = iceberg::spec::DataFileBuilder::default();
    builder
        .content(file.content_type())
        .file_path(file.file_path().to_string())
        .file_format(file.file_format())
        .partition(file.partition().clone())
        .partition_spec_id(spec_id)
        .record_count(file.record_count())
        .file_size_in_bytes(file.file_size_in_bytes())
        .column_sizes(file.column_sizes().clone())
        .value_counts(file.value_counts().clone())
        .null_value_counts(file.null_value_counts().clone())
        .nan_value_counts(file.nan_value_counts().clone())
        .lower_bounds(file.lower_bounds().clone())
        .upper_bounds(file.upper_bounds().clone())
        .key_metadata(file.key_metadata().map(<[u8]>::to_vec))
        .split_offsets(file.split_offsets().map(<[i64]>::to_vec))
        .equality_ids(file.equality_ids())
        .first_row_id(Some(row_id))
        .referenced_data_file(file.referenced_data_file())
        .content_offset(file.content_offset())
        .content_size_in_bytes(file.content_size_in_bytes());
    if let Some(order) = file.sort_order_id() {
        builder.sort_order_id(order);
    }
    builder.build().map_err(|e| {
        StageError::Invalid(format!("{}: write its first row id: {e}", file.file_path()))
    })
}

/// Whether a staged snapshot keeps a live entry of its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removal {
    Kept,
    /// Removed by name: a rewrite's replaced file (counted against what it replaces), or any
    /// file under a truncate.
    Named,
    /// A deletion vector removed with its data file, or replaced by a new vector of that file.
    Follows,
}

/// The manifest writer of `content` in the table's format `version` (2 or 3).
fn manifest_writer(
    builder: ManifestWriterBuilder,
    content: ManifestContentType,
    version: FormatVersion,
) -> iceberg::spec::ManifestWriter {
    match (content, version >= FormatVersion::V3) {
        (ManifestContentType::Data, false) => builder.build_v2_data(),
        (ManifestContentType::Deletes, false) => builder.build_v2_deletes(),
        (ManifestContentType::Data, true) => builder.build_v3_data(),
        (ManifestContentType::Deletes, true) => builder.build_v3_deletes(),
    }
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
        version: FormatVersion,
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
                out.push(merge_manifests(file_io, bin, snapshot_id, version, next_path()).await?);
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
    version: FormatVersion,
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
    let mut writer = manifest_writer(builder, first.content, version);
    for (manifest, loaded) in &inputs {
        let row_ids = inherited_row_ids(manifest, loaded.entries());
        for (entry, row_id) in loaded.entries().iter().zip(row_ids) {
            if !entry.is_alive() {
                continue;
            }
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
                with_row_id(entry.data_file(), row_id, manifest.partition_spec_id)?,
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

#[cfg(test)]
mod lineage_tests {
    use arrow::datatypes::{DataType, Field, Schema as ArrowSchema};
    use iceberg::spec::DataFileBuilder;

    use super::*;

    fn data_file(dir: &str, name: &str, rows: u64) -> DataFile {
        DataFileBuilder::default()
            .content(DataContentType::Data)
            .file_path(format!("{dir}/data/{name}.parquet"))
            .file_format(DataFileFormat::Parquet)
            .record_count(rows)
            .file_size_in_bytes(100)
            .build()
            .expect("a data file")
    }

    /// The first row id each live data file of `metadata`'s current snapshot inherits.
    async fn row_ids(io: &FileIO, metadata: &TableMetadata) -> HashMap<String, i64> {
        let snapshot = metadata.current_snapshot().expect("a snapshot");
        let bytes = io
            .new_input(snapshot.manifest_list())
            .expect("input")
            .read()
            .await
            .expect("read the list");
        let list =
            ManifestList::parse_with_version(&bytes, metadata.format_version()).expect("a list");
        let mut ids = HashMap::new();
        for manifest in list.entries() {
            let loaded = manifest.load_manifest(io).await.expect("a manifest");
            for (entry, id) in loaded
                .entries()
                .iter()
                .zip(inherited_row_ids(manifest, loaded.entries()))
            {
                if entry.is_alive() {
                    let name = entry.file_path().rsplit('/').next().expect("a name");
                    ids.insert(name.to_string(), id.expect("a row id"));
                }
            }
        }
        ids
    }

    /// Format 3: rows keep their ids (`_row_id`, row lineage) when the manifest listing their
    /// file is written again (a rewrite removing another file of it); new rows take the next.
    #[tokio::test]
    async fn a_rewritten_manifest_keeps_the_row_ids_of_the_files_it_carries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let location = dir.path().display().to_string();
        let io = FileIO::new_with_fs();
        let arrow = ArrowSchema::new(vec![Field::new("id", DataType::Int64, false)]);
        let schema = super::super::table::new_schema(&arrow, &["id".to_string()]).expect("schema");
        let layout = crate::sink::TableLayout {
            key: vec!["id".to_string()],
            partition_by: Vec::new(),
        };
        let metadata =
            super::super::table::new_table_metadata(&location, schema, &layout, FormatVersion::V3)
                .expect("metadata");
        let first = MetadataLocation::new_with_metadata(&location, &metadata);
        metadata.write_to(&io, &first).await.expect("write");
        let mut current = first.to_string();
        let mut metadata = metadata;
        let deltas = [
            vec![data_file(&location, "a", 10), data_file(&location, "b", 5)],
            vec![data_file(&location, "c", 3)],
        ];
        for files in deltas {
            let staged = stage(
                &io,
                &current,
                metadata,
                &RowDelta::files(0, files, Vec::new()),
            )
            .await
            .expect("stage");
            (current, metadata) = (staged.location, staged.metadata);
        }
        let before = row_ids(&io, &metadata).await;
        assert_eq!(before["a.parquet"], 0);
        assert_eq!(before["b.parquet"], 10);
        assert_eq!(before["c.parquet"], 15);
        assert_eq!(metadata.next_row_id(), 18);

        let rewrite = Rewrite {
            data_sequence: metadata
                .current_snapshot()
                .expect("a snapshot")
                .sequence_number(),
            schema_id: metadata.current_schema_id(),
            removes: HashSet::from([format!("{location}/data/a.parquet")]),
        };
        let delta = RowDelta {
            rewrite: Some(rewrite),
            ..RowDelta::files(0, vec![data_file(&location, "d", 10)], Vec::new())
        };
        let staged = stage(&io, &current, metadata, &delta).await.expect("stage");
        let after = row_ids(&io, &staged.metadata).await;
        assert!(!after.contains_key("a.parquet"));
        assert_eq!(after["b.parquet"], 10, "b's rows keep their ids");
        assert_eq!(after["c.parquet"], 15, "c's rows keep their ids");
        assert!(after["d.parquet"] >= 18, "new rows take new ids: {after:?}");
        let snapshot = staged.metadata.current_snapshot().expect("a snapshot");
        assert_eq!(snapshot.first_row_id(), Some(18));
        assert!(staged.metadata.next_row_id() >= 28);
    }
}
