//! `delete_mode = "position"`: an update or delete of a key already in the lake removes the
//! old row by a position delete (data file, row) found in the table's key index, instead of
//! an equality delete of the key; a key the lake does not hold needs no delete at all.
//! Engines that refuse equality deletes (pyiceberg, Snowflake, older Hive and Impala) then
//! read every snapshot, and the others skip the anti-join.
//!
//! The index is a cache of the lake (DESIGN.md invariant 14), exact for one snapshot:
//! - before a flush's lookups it must be exact for the snapshot the sink knows, else it is
//!   rebuilt from that snapshot's live files (after a crash between a commit and its index
//!   update, a lost disk, a compaction or another engine's commit);
//! - the commit is staged only on that snapshot ([`RowDelta::based_on`]): another commit
//!   landing first (a compaction moving the rows, another engine adding a row of the key)
//!   is a conflict, and that flush writes equality deletes instead, which need no index;
//! - after a commit made on the index's snapshot, the index takes the commit's changes (its
//!   new data files' keys with their positions, kept by the file writers as they wrote the
//!   rows or else read back; the keys it deleted) and records the new snapshot, in one redb
//!   transaction.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Schema as ArrowSchema, SchemaRef};
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::{DataFile, FormatVersion, Struct, TableMetadata};
use roaring::RoaringTreemap;

use super::key_index::{
    self, FileKeys, IndexUpdate, KeyIndex, Rebuilt, SnapshotFile, SnapshotFiles,
};
use super::parquet::{KeyCapture, WrittenKeys};
use super::positions::{self, DeletedPositions};
use super::row_delta::{self, RowDelta};
use super::vectors::{self, VectorAt};
use super::{IcebergSink, TableState, iceberg_error, sink_error};
use crate::catalog::{Catalog, CatalogTable};
use crate::config::DeleteMode;
use crate::error::Result;
use crate::table::TableId;

/// The snapshot id an index of a table without snapshots is exact for.
const NO_SNAPSHOT: i64 = 0;

/// The key index of one table in position mode.
pub(super) struct TableIndex {
    store: Arc<KeyIndex>,
    /// The last commit's update of the store, applied on a blocking thread while the writer
    /// goes on: awaited ([`TableIndex::settled`]) before the store is read or changed again.
    pending: Mutex<Option<tokio::task::JoinHandle<std::result::Result<(), String>>>>,
    /// The key columns, in the lake's Arrow types (the index's encoding is of these).
    key: SchemaRef,
    /// Identifier field ids of the key (equality deletes on them can be indexed).
    key_ids: Vec<i32>,
    /// The partition spec and tuple of the data files the index names, as far as known: a
    /// position delete goes in its data file's partition. Filled from the manifests at the
    /// first need after a start, then by each commit's new files.
    partitions: Mutex<HashMap<String, (i32, Struct)>>,
    /// The key columns of the data files written for the next commit, kept by their writers
    /// ([`TableIndex::capture`]); taken by each commit ([`TableIndex::take_written`]).
    written: Arc<Mutex<WrittenKeys>>,
    /// Of a format-3 table: the live deletion vectors as of one snapshot, which the next
    /// vector of each data file must take in (filled at the first need, kept by each commit).
    vectors: Mutex<Option<LiveVectors>>,
}

/// The deletes a format-3 table's next deletion vectors must take in, as of `snapshot`.
#[derive(Debug, Default)]
struct LiveVectors {
    snapshot: i64,
    /// The live vector of each data file that has one: its Puffin file and place there.
    vectors: HashMap<String, (String, VectorAt)>,
    /// What the live Parquet position-delete files remove (written before the table was
    /// upgraded to format 3, which takes no new ones).
    legacy: DeletedPositions,
}

impl std::fmt::Debug for TableIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableIndex")
            .field("key", &self.key)
            .finish()
    }
}

impl TableIndex {
    /// Where the data files written for the next commit keep their rows' key columns.
    pub(super) fn capture(&self) -> KeyCapture {
        KeyCapture {
            names: self.key.fields().iter().map(|f| f.name().clone()).collect(),
            into: self.written.clone(),
        }
    }

    /// The key columns kept for the files written since the last commit, taken: the commit's
    /// files are among them, the rest (files of a failed or discarded commit) are dropped.
    pub(super) fn take_written(&self) -> WrittenKeys {
        std::mem::take(&mut *self.written.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Waits for the update of the last commit, if one is still being applied. One that
    /// failed leaves the index exact for the snapshot before that commit: it catches up from
    /// the lake before its next use (logged).
    pub(super) async fn settled(&self, lake: &CatalogTable) {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(pending) = pending else {
            return;
        };
        let error = match pending.await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(e) => e.to_string(),
        };
        tracing::warn!(table = %lake, error = %error, "the key index missed a commit: it catches up before its next use");
    }
}

/// The position deletes of one flush, before its commit.
pub(super) struct Positional {
    /// The position-delete files written, one per partition of the rows it deletes.
    pub files: Vec<DataFile>,
    /// The keys (encoded) whose rows it deletes.
    removed: Vec<Vec<u8>>,
    /// The snapshot the rows were found in.
    pub based_on: i64,
    /// Of a format-3 table: the data files whose live deletion vector `files` replace.
    pub replaced_vectors: HashSet<String>,
}

impl Positional {
    /// Makes `files` (a flush's data files) delete by these positions: their delete files,
    /// the snapshot they were found in, the live vectors they replace.
    pub(super) fn add_to(&self, files: &mut RowDelta) {
        files.delete_files.extend(self.files.iter().cloned());
        files.based_on = Some(self.based_on);
        files.replaced_vectors = self.replaced_vectors.clone();
    }
}

/// The directory (with its trailing `/`, empty when unpartitioned) of `partition` under the
/// table's `data/`, where its delete files go beside its data files, as the equality deletes'.
fn partition_dir(metadata: &TableMetadata, partition: &Struct) -> String {
    let spec = metadata.default_partition_spec();
    let schema = metadata.current_schema();
    if spec.fields().is_empty() || spec.partition_type(schema).is_err() {
        return String::new();
    }
    format!("{}/", spec.partition_to_path(partition, schema.clone()))
}

/// The current snapshot id of `metadata`, as the index records it.
fn snapshot_of(metadata: &TableMetadata) -> i64 {
    metadata.current_snapshot_id().unwrap_or(NO_SNAPSHOT)
}

impl<C: Catalog> IcebergSink<C> {
    /// The key index of `table` (prepared as `state`) when it is in position mode, opened;
    /// `None` in equality mode, or when position deletes cannot serve the table (no key, a
    /// partition spec: each delete file must be in its data files' partition, not written
    /// yet), which the log says.
    pub(super) fn open_index(
        &self,
        table: &TableId,
        state: &TableState,
    ) -> Result<Option<TableIndex>> {
        if self.settings.delete_mode(table) == DeleteMode::Equality {
            return Ok(None);
        }
        let lake = &state.lake;
        if state.layout.key.is_empty() {
            tracing::info!(table = %lake, "delete_mode = position: the table has no key (a changelog); nothing to delete");
            return Ok(None);
        }
        match self.open_index_of(lake, &state.metadata, &state.layout.key) {
            Ok(index) => Ok(Some(index)),
            // equality deletes need no index: the table is written, the reason logged
            Err(e) => {
                tracing::warn!(
                    table = %lake,
                    error = %e,
                    "the key index cannot be opened: this table writes equality deletes"
                );
                Ok(None)
            }
        }
    }

    /// The rows that `delete_files` (position deletes not committed) name, as their data
    /// files hold them: what the staged parts of a large transaction deleted, read back to be
    /// found again (or deleted by key) after another commit landed first.
    pub(super) async fn rows_at_positions(
        &self,
        lake: &CatalogTable,
        delete_files: &[DataFile],
    ) -> Result<Vec<RecordBatch>> {
        let mut rows = Vec::new();
        for delete in delete_files {
            let removes = DeletedPositions::load(&self.file_io, delete.file_path())
                .await
                .map_err(|m| sink_error(lake, format!("read staged position deletes: {m}")))?;
            rows.extend(removes.read_rows(&self.file_io, None).await.map_err(|m| {
                sink_error(lake, format!("read the rows staged deletes name: {m}"))
            })?);
        }
        Ok(rows)
    }

    /// Opens the key index again when the lake's key column types changed (a key widened by
    /// a schema change while running): it holds keys encoded for the old types. Opened for
    /// the new ones, it is exact for no snapshot, so it is rebuilt from the lake before its
    /// next use and the table keeps writing position deletes.
    pub(super) async fn refit_index(&self, table: &TableId, state: &mut TableState) -> Result<()> {
        let Some(index) = &state.index else {
            return Ok(());
        };
        // an update still being applied holds the file open
        index.settled(&state.lake).await;
        let key = key_schema(&state.lake, &state.metadata, &state.layout.key)?;
        if key == index.key {
            return Ok(());
        }
        tracing::info!(
            table = %state.lake,
            from = ?index.key.fields().iter().map(|f| f.data_type().to_string()).collect::<Vec<_>>(),
            to = ?key.fields().iter().map(|f| f.data_type().to_string()).collect::<Vec<_>>(),
            "the key's types changed: the key index is rebuilt for them from the lake"
        );
        // redb opens the file for one handle at a time: the old one is closed first
        state.index = None;
        state.index = self.open_index(table, state)?;
        Ok(())
    }

    /// Opens the key index of `lake` (as `metadata` has it) with key columns `key`.
    fn open_index_of(
        &self,
        lake: &CatalogTable,
        metadata: &TableMetadata,
        key: &[String],
    ) -> Result<TableIndex> {
        let key_ids = super::key_field_ids(lake, metadata, key)?;
        let key = key_schema(lake, metadata, key)?;
        let path = self.settings.key_index_path(lake, metadata.location());
        let store = KeyIndex::open(&path, &key, self.settings.key_index.1).map_err(|m| {
            sink_error(
                lake,
                format!(
                    "key index: {m} (a second lakewriter on this lake holds it? Each pipeline \
                     needs its own sink.key_index.dir)"
                ),
            )
        })?;
        Ok(TableIndex {
            store: Arc::new(store),
            pending: Mutex::new(None),
            key,
            key_ids,
            partitions: Mutex::new(HashMap::new()),
            written: Arc::new(Mutex::new(HashMap::new())),
            vectors: Mutex::new(None),
        })
    }

    /// Rebuilds the key index of `table` from every live file of its current snapshot, as
    /// a start after the index was lost does (the index must not be open elsewhere: a
    /// running writer holds it). How many files and keys, for the benchmarks.
    pub async fn rebuild_key_index(&self, table: &TableId) -> Result<Rebuilt> {
        let lake = self.lake_table(table);
        let pointer = self
            .catalog
            .load(&lake)
            .await
            .map_err(|e| super::catalog_error(&lake, e))?
            .ok_or_else(|| sink_error(&lake, "the table is not in the catalog"))?;
        let metadata = self.read_metadata(&lake, &pointer).await?;
        let key = crate::lake::iceberg::key_columns(metadata.current_schema());
        let index = self.open_index_of(&lake, &metadata, &key)?;
        index
            .store
            .clear()
            .map_err(|m| sink_error(&lake, format!("key index: {m}")))?;
        Ok(self
            .index_exact_at(&lake, &metadata, &index)
            .await?
            .unwrap_or_default())
    }

    /// Makes `index` exact for the snapshot `state` knows: from the snapshots it missed when
    /// it is exact for an ancestor still in the metadata (only what changed is read), else
    /// rebuilt from every live file.
    pub(super) async fn index_exact(&self, state: &TableState, index: &TableIndex) -> Result<()> {
        self.index_exact_at(&state.lake, &state.metadata, index)
            .await
            .map(drop)
    }

    /// [`IcebergSink::index_exact`] for `lake` as `metadata` has it; what it read, when it
    /// had to.
    async fn index_exact_at(
        &self,
        lake: &CatalogTable,
        metadata: &TableMetadata,
        index: &TableIndex,
    ) -> Result<Option<Rebuilt>> {
        index.settled(lake).await;
        let snapshot = snapshot_of(metadata);
        let holds = index
            .store
            .exact_for()
            .map_err(|m| sink_error(lake, format!("key index: {m}")))?;
        if holds == Some(snapshot) {
            return Ok(None);
        }
        let since = holds.and_then(|held| ancestor_sequence(metadata, held));
        let started = std::time::Instant::now();
        let files = self.snapshot_files(lake, metadata, index).await?;
        let mut how = if since.is_some() {
            "caught up"
        } else {
            "rebuilt"
        };
        let mut done = key_index::bring_up(
            &index.store,
            &self.file_io,
            &index.key,
            snapshot,
            &files,
            since,
        )
        .await;
        if let (Err(e), Some(_)) = (&done, since) {
            // a file of a snapshot it missed may be gone (expired): every live file then
            tracing::info!(table = %lake, reason = %e, "the key index cannot catch up: rebuilding it");
            how = "rebuilt";
            done = key_index::bring_up(
                &index.store,
                &self.file_io,
                &index.key,
                snapshot,
                &files,
                None,
            )
            .await;
        }
        let done = done.map_err(|m| sink_error(lake, format!("bring the key index up: {m}")))?;
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            table = %lake,
            index_snapshot = ?holds,
            snapshot,
            how,
            files_read = done.files,
            keys_added = done.keys,
            seconds,
            keys_per_second = (done.keys as f64 / seconds.max(1e-3)) as u64,
            "key index {how}: exact for the table's snapshot"
        );
        Ok(Some(done))
    }

    /// The live files of the snapshot `state` knows, as the index reads them.
    async fn snapshot_files(
        &self,
        lake: &CatalogTable,
        metadata: &TableMetadata,
        index: &TableIndex,
    ) -> Result<SnapshotFiles> {
        let live = crate::lake::iceberg::live_files(&self.file_io, lake, metadata).await?;
        let mut files = SnapshotFiles::default();
        let file = |f: &crate::lake::iceberg::LiveFile| SnapshotFile {
            path: f.path.clone(),
            sequence: f.sequence,
            partition: f.partition.clone(),
        };
        files.data = live.data.iter().map(file).collect();
        for (ids, deletes) in &live.deletes {
            if *ids != index.key_ids {
                return Err(sink_error(
                    lake,
                    format!(
                        "key index: the table has equality deletes on field ids {ids:?}, not \
                         its key ({:?}), written by another engine; compact the table, or set \
                         delete_mode = \"equality\" for it",
                        index.key_ids
                    ),
                ));
            }
            files.equality.extend(deletes.iter().map(file));
        }
        for delete in
            crate::lake::iceberg::load_positions(&self.file_io, lake, &live.positions).await?
        {
            files.positions.push((file(&delete.file), delete.removes));
        }
        Ok(files)
    }

    /// Finds the live rows of the keys of `deletes` (old rows, source layout) and writes
    /// the position-delete file removing them. In a format-3 table, deletion vectors: with
    /// `merge_live`, each holding its data file's live vector too (else only the rows found,
    /// a large transaction's part, merged by [`IcebergSink::merge_staged_vectors`]).
    pub(super) async fn position_deletes(
        &self,
        state: &TableState,
        index: &TableIndex,
        deletes: &[RecordBatch],
        merge_live: bool,
    ) -> Result<Positional> {
        self.index_exact(state, index).await?;
        let lake = &state.lake;
        // the lookups are CPU work: off the runtime's workers, beside the flush's data files
        let (store, key) = (index.store.clone(), index.key.clone());
        let batches: Vec<RecordBatch> = deletes
            .iter()
            .filter(|b| b.num_rows() > 0)
            .cloned()
            .collect();
        let (found, removed) =
            tokio::task::spawn_blocking(move || find_rows(&store, &key, &batches))
                .await
                .map_err(|e| sink_error(lake, format!("key index: lookups: {e}")))?
                .map_err(|m| sink_error(lake, format!("key index: {m}")))?;
        // each data file's rows with its partition, in the table's current spec
        let spec = state.metadata.default_partition_spec();
        let mut by_file: Vec<(Arc<str>, Vec<u64>, Struct)> = Vec::with_capacity(found.len());
        for (path, positions) in found {
            let (spec_id, partition) = self.partition_of(state, index, &path).await?;
            if spec_id != spec.spec_id() {
                return Err(sink_error(
                    lake,
                    format!(
                        "{path} was written with partition spec {spec_id}, not the current \
                         {}: its rows are deleted by key",
                        spec.spec_id()
                    ),
                ));
            }
            by_file.push((path, positions, partition));
        }
        let based_on = snapshot_of(&state.metadata);
        if state.metadata.format_version() >= FormatVersion::V3 {
            // format 3: one vector per data file; with `merge_live`, holding what its live
            // vector and any older position-delete file removed besides the rows found now
            let rows = by_file
                .into_iter()
                .map(|(path, positions, partition)| {
                    (
                        path.to_string(),
                        (positions.into_iter().collect(), partition),
                    )
                })
                .collect();
            let live = match merge_live {
                true => Some(self.live_vectors(state, index).await?),
                false => None,
            };
            let written = self
                .write_vectors(state, live.as_ref(), rows, spec.spec_id())
                .await;
            if let Some(live) = live {
                self.keep_vectors(index, live);
            }
            let (files, replaced_vectors) = written?;
            return Ok(Positional {
                files,
                removed,
                based_on,
                replaced_vectors,
            });
        }
        // one position-delete file per partition of the rows found
        let mut groups: HashMap<Struct, DeletedPositions> = HashMap::new();
        for (path, positions, partition) in by_file {
            groups
                .entry(partition)
                .or_default()
                .insert(&path, positions);
        }
        let mut files = Vec::with_capacity(groups.len());
        let location = state.metadata.location().trim_end_matches('/');
        for (partition, deleted) in groups {
            let dir = partition_dir(&state.metadata, &partition);
            let unique = row_delta::unique_id();
            let path = format!("{location}/data/{dir}{unique}-position-delete-00000.parquet");
            files.push(
                positions::write_position_deletes(
                    &self.file_io,
                    &path,
                    &deleted,
                    partition,
                    spec.spec_id(),
                )
                .await
                .map_err(|m| sink_error(lake, format!("write position deletes: {m}")))?,
            );
        }
        Ok(Positional {
            files,
            removed,
            based_on,
            replaced_vectors: HashSet::new(),
        })
    }

    /// Writes a deletion vector per data file of `rows` (its rows' positions and partition,
    /// in spec `spec_id`), each a Puffin file of its own: DuckDB 1.5 applies the first
    /// vector of a Puffin file to every data file the file holds a vector of (measured: a lake
    /// of two vectors in one file read with duplicate keys). With `live`, each vector takes in
    /// its data file's live vector and older position-delete rows. Returns the vectors' entries
    /// and the data files whose live vector they replace.
    async fn write_vectors(
        &self,
        state: &TableState,
        live: Option<&LiveVectors>,
        rows: BTreeMap<String, (RoaringTreemap, Struct)>,
        spec_id: i32,
    ) -> Result<(Vec<DataFile>, HashSet<String>)> {
        let lake = &state.lake;
        let location = state.metadata.location().trim_end_matches('/');
        let unique = row_delta::unique_id();
        let (mut files, mut replaced) = (Vec::with_capacity(rows.len()), HashSet::new());
        for (n, (data, (mut positions, partition))) in rows.into_iter().enumerate() {
            if let Some(live) = live {
                if let Some((puffin, at)) = live.vectors.get(&data) {
                    positions |= vectors::load_bitmap(&self.file_io, puffin, at)
                        .await
                        .map_err(|m| sink_error(lake, format!("read a deletion vector: {m}")))?;
                    replaced.insert(data.clone());
                }
                if let Some(before) = live.legacy.of(&data) {
                    positions.extend(before.iter().copied());
                }
            }
            let dir = partition_dir(&state.metadata, &partition);
            let path = format!("{location}/data/{dir}{unique}-{n:05}-deletion-vector.puffin");
            files.extend(
                vectors::write(
                    &self.file_io,
                    &path,
                    &[(data, positions)],
                    &partition,
                    spec_id,
                )
                .await
                .map_err(|m| sink_error(lake, format!("write deletion vectors: {m}")))?,
            );
        }
        Ok((files, replaced))
    }

    /// The live deletion vectors of the snapshot `state` knows (format 3), read from its
    /// manifests unless kept from the last commit; taken out of `index` while in use.
    async fn live_vectors(&self, state: &TableState, index: &TableIndex) -> Result<LiveVectors> {
        let snapshot = snapshot_of(&state.metadata);
        let kept = index
            .vectors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(kept) = kept.filter(|k| k.snapshot == snapshot) {
            return Ok(kept);
        }
        let lake = &state.lake;
        let live = crate::lake::iceberg::live_files(&self.file_io, lake, &state.metadata).await?;
        let mut found = LiveVectors {
            snapshot,
            ..LiveVectors::default()
        };
        for file in live.positions {
            match file.vector {
                Some(at) => {
                    if let Some((other, _)) = found.vectors.get(&at.referenced) {
                        return Err(sink_error(
                            lake,
                            format!(
                                "{} has two live deletion vectors ({other} and {}): the table \
                                 breaks the format; compact it",
                                at.referenced, file.path
                            ),
                        ));
                    }
                    found.vectors.insert(at.referenced.clone(), (file.path, at));
                }
                None => found.legacy.merge(
                    DeletedPositions::load(&self.file_io, &file.path)
                        .await
                        .map_err(|m| sink_error(lake, format!("read position deletes: {m}")))?,
                ),
            }
        }
        Ok(found)
    }

    /// Puts the live vectors back into `index` for the next flush.
    fn keep_vectors(&self, index: &TableIndex, live: LiveVectors) {
        *index.vectors.lock().unwrap_or_else(PoisonError::into_inner) = Some(live);
    }

    /// A large transaction's commit in a format-3 table: `files` with the deletion vectors
    /// of its staged parts (each of the rows that part found) and of its last delta merged
    /// into one vector per data file, which holds the file's live vector (and any older
    /// position-delete file's rows of it) too; the live vectors it replaces named.
    pub(super) async fn merge_staged_vectors(
        &self,
        state: &TableState,
        index: &TableIndex,
        files: &RowDelta,
    ) -> Result<RowDelta> {
        let live = self.live_vectors(state, index).await?;
        let merged = self.merge_vectors(state, &live, files).await;
        self.keep_vectors(index, live);
        merged
    }

    async fn merge_vectors(
        &self,
        state: &TableState,
        live: &LiveVectors,
        files: &RowDelta,
    ) -> Result<RowDelta> {
        let read = |m: String| sink_error(&state.lake, format!("read a deletion vector: {m}"));
        let mut rows: BTreeMap<String, (RoaringTreemap, Struct)> = BTreeMap::new();
        let mut others = Vec::new();
        for file in &files.delete_files {
            match VectorAt::of(file).map_err(read)? {
                Some(at) => {
                    let positions = vectors::load_bitmap(&self.file_io, file.file_path(), &at)
                        .await
                        .map_err(read)?;
                    rows.entry(at.referenced)
                        .or_insert_with(|| (RoaringTreemap::new(), file.partition().clone()))
                        .0 |= positions;
                }
                None => others.push(file.clone()),
            }
        }
        let (vectors, replaced_vectors) = self
            .write_vectors(state, Some(live), rows, files.spec_id)
            .await?;
        others.extend(vectors);
        Ok(RowDelta {
            delete_files: others,
            replaced_vectors,
            ..files.clone()
        })
    }

    /// The partition spec and tuple of data file `path`, read from the manifests of the
    /// snapshot `state` knows when not known yet.
    async fn partition_of(
        &self,
        state: &TableState,
        index: &TableIndex,
        path: &str,
    ) -> Result<(i32, Struct)> {
        let known = |index: &TableIndex| {
            index
                .partitions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(path)
                .cloned()
        };
        if let Some(found) = known(index) {
            return Ok(found);
        }
        let live =
            crate::lake::iceberg::live_files(&self.file_io, &state.lake, &state.metadata).await?;
        index
            .partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(
                live.data
                    .into_iter()
                    .map(|f| (f.path, (f.spec_id, f.partition_value))),
            );
        known(index).ok_or_else(|| {
            sink_error(
                &state.lake,
                format!("the key index names {path}, not a live data file of the table"),
            )
        })
    }

    /// After `files` were committed as the snapshot `state` now knows: when the index was
    /// exact for its parent, the index takes the commit's changes and becomes exact for it;
    /// otherwise (another commit came between) it is left to be rebuilt before its next use.
    /// `written` holds the key columns of data files as their writers kept them (the others
    /// are read back).
    pub(super) async fn index_committed(
        &self,
        state: &TableState,
        index: &TableIndex,
        files: &RowDelta,
        positional: Option<Positional>,
        mut written: WrittenKeys,
    ) -> Result<()> {
        let lake = &state.lake;
        let error = |m: String| sink_error(lake, format!("key index: {m}"));
        index.settled(lake).await;
        let Some(snapshot) = state.metadata.current_snapshot() else {
            return Ok(());
        };
        let parent = snapshot.parent_snapshot_id().unwrap_or(NO_SNAPSHOT);
        if index.store.exact_for().map_err(error)? != Some(parent) {
            tracing::debug!(table = %lake, "the key index missed a commit: rebuilt before its next use");
            return Ok(());
        }
        if files.truncate {
            index.store.clear().map_err(error)?;
        }
        {
            // the live vectors kept for the parent become the new snapshot's
            let mut kept = index.vectors.lock().unwrap_or_else(PoisonError::into_inner);
            match kept.as_mut() {
                Some(live) if live.snapshot == parent && !files.truncate => {
                    for file in &files.delete_files {
                        if let Ok(Some(at)) = VectorAt::of(file) {
                            live.vectors
                                .insert(at.referenced.clone(), (file.file_path().to_string(), at));
                        }
                    }
                    live.snapshot = snapshot.snapshot_id();
                }
                _ => *kept = None,
            }
        }
        {
            let mut partitions = index
                .partitions
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if files.truncate {
                partitions.clear();
            }
            partitions.extend(files.data_files.iter().map(|f| {
                (
                    f.file_path().to_string(),
                    (files.spec_id, f.partition().clone()),
                )
            }));
        }
        // read (the new files' keys) and applied beside the writer's next work (the next
        // chunk's or flush's files); the next use of the index waits for it
        let removed: Vec<Vec<u8>> = positional.map(|p| p.removed).unwrap_or_default();
        let equality: Vec<String> = files
            .delete_files
            .iter()
            .filter(|f| f.content_type() == iceberg::spec::DataContentType::EqualityDeletes)
            .map(|f| f.file_path().to_string())
            .collect();
        let data: Vec<(String, Option<Vec<Vec<ArrayRef>>>)> = files
            .data_files
            .iter()
            .map(|f| {
                let path = f.file_path().to_string();
                let kept = written.remove(&path);
                (path, kept)
            })
            .collect();
        let (store, file_io, key) = (index.store.clone(), self.file_io.clone(), index.key.clone());
        let snapshot = snapshot.snapshot_id();
        let applying = tokio::spawn(async move {
            let (mut update, kept) =
                read_back_update(&store, &file_io, &key, removed, &equality, data).await?;
            // the encoding and sorting of the kept keys is CPU work: off the runtime's
            // workers, which run the pipeline
            tokio::task::spawn_blocking(move || {
                let converter = store.converter();
                for (path, batches) in kept {
                    let keys = written_keys(&path, &batches, converter)?;
                    update.added.push((path, keys));
                }
                // (put in key order by `apply`, once for the removed and the added keys)
                store.apply(Some(snapshot), &update)
            })
            .await
            .map_err(|e| e.to_string())?
        });
        *index.pending.lock().unwrap_or_else(PoisonError::into_inner) = Some(applying);
        Ok(())
    }
}

/// Row positions by data file (the path shared, not copied per row).
type RowsByFile = HashMap<Arc<str>, Vec<u64>>;

/// The rows of the keys of `deletes` that `store` (of key columns `key`) holds, by data file,
/// and those keys, encoded.
fn find_rows(
    store: &KeyIndex,
    key: &SchemaRef,
    deletes: &[RecordBatch],
) -> std::result::Result<(RowsByFile, Vec<Vec<u8>>), String> {
    let mut found = RowsByFile::new();
    let mut removed = Vec::new();
    for batch in deletes {
        let keys = super::files::conform(batch, key)?;
        let rows = store
            .converter()
            .convert_columns(keys.columns())
            .map_err(|e| format!("encode keys: {e}"))?;
        for (row, at) in rows.iter().zip(store.lookup(&rows)?) {
            if let Some(at) = at {
                found.entry(at.file).or_default().push(at.position);
                removed.push(row.as_ref().to_vec());
            }
        }
    }
    Ok((found, removed))
}

/// The index's update for a commit, as far as the lake must be read for it: the keys its
/// position deletes removed (`removed`), those its equality-delete files name, and the keys
/// of its new data files with their positions, read back for the files whose writers kept
/// none; the kept key columns of the others are returned as they are (not yet encoded, and
/// nothing sorted).
async fn read_back_update(
    store: &KeyIndex,
    file_io: &iceberg::io::FileIO,
    key: &SchemaRef,
    removed: Vec<Vec<u8>>,
    equality: &[String],
    data: Vec<(String, Option<Vec<Vec<ArrayRef>>>)>,
) -> std::result::Result<(IndexUpdate, Vec<(String, Vec<Vec<ArrayRef>>)>), String> {
    let converter = store.converter();
    let mut update = IndexUpdate {
        removed,
        ..IndexUpdate::default()
    };
    for path in equality {
        let keys = key_index::file_keys(file_io, path, key, converter, None).await?;
        update
            .removed
            .extend(keys.iter().map(|(key, _)| key.to_vec()));
    }
    let mut kept = Vec::new();
    for (path, batches) in data {
        match batches {
            Some(batches) => kept.push((path, batches)),
            None => {
                let keys = key_index::file_keys(file_io, &path, key, converter, None).await?;
                update.added.push((path, keys));
            }
        }
    }
    Ok((update, kept))
}

/// The keys of the rows a data file's writer kept (`batches`: the key columns of each batch
/// it wrote, in order), each with its position in the file.
fn written_keys(
    path: &str,
    batches: &[Vec<ArrayRef>],
    converter: &arrow::row::RowConverter,
) -> std::result::Result<FileKeys, String> {
    let rows_in_file = batches
        .iter()
        .map(|b| b.first().map_or(0, |c| c.len()))
        .sum();
    let mut keys = FileKeys::with_capacity(rows_in_file, 0);
    let mut position = 0u64;
    for columns in batches {
        let rows = converter
            .convert_columns(columns)
            .map_err(|e| format!("{path}: the keys of the written rows: {e}"))?;
        key_index::push_keys(&rows, &mut position, None, &mut keys);
    }
    Ok(keys)
}

/// The sequence number of snapshot `held` when it is the current snapshot's ancestor in
/// `metadata` (the index can catch up from it); `None` otherwise (a rollback, an expired or
/// never-seen snapshot, none at all: a rebuild).
fn ancestor_sequence(metadata: &TableMetadata, held: i64) -> Option<i64> {
    let mut at = metadata.current_snapshot()?;
    loop {
        if at.snapshot_id() == held {
            return Some(at.sequence_number());
        }
        at = metadata.snapshot_by_id(at.parent_snapshot_id()?)?;
    }
}

/// The key columns `key` of `lake`'s table, in their Arrow types, required.
fn key_schema(lake: &CatalogTable, metadata: &TableMetadata, key: &[String]) -> Result<SchemaRef> {
    let arrow = schema_to_arrow_schema(metadata.current_schema())
        .map_err(|e| iceberg_error(lake, "convert the schema to Arrow", e))?;
    let fields = key
        .iter()
        .map(|name| {
            arrow
                .field_with_name(name)
                .map(|f| Arc::new(f.clone().with_nullable(false)))
                .map_err(|_| {
                    sink_error(
                        lake,
                        format!("key column {name} is not a column of the lake table"),
                    )
                })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(ArrowSchema::new(fields)))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema as ArrowSchema};
    use iceberg::spec::{NestedField, PrimitiveType, Schema, Type};

    use super::super::files::{FileWriter, conform};
    use super::super::parquet::KeyCapture;
    use super::*;

    /// The positions the file writers keep for the index are the rows' positions in the files
    /// they wrote, file by file, also when a flush's rows roll over several files.
    #[tokio::test]
    async fn the_keys_kept_while_writing_are_the_keys_read_back_from_the_files() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let schema = Schema::builder()
            .with_fields([
                NestedField::required(1, "id", Type::Primitive(PrimitiveType::Long)).into(),
                NestedField::required(2, "region", Type::Primitive(PrimitiveType::String)).into(),
                NestedField::optional(3, "note", Type::Primitive(PrimitiveType::String)).into(),
            ])
            .with_identifier_field_ids([1, 2])
            .build()
            .expect("a valid schema");
        let metadata = super::super::table::new_table_metadata(
            &dir.path().display().to_string(),
            schema,
            &crate::sink::TableLayout {
                key: vec!["id".to_string(), "region".to_string()],
                partition_by: Vec::new(),
            },
            iceberg::spec::FormatVersion::V2,
        )
        .expect("a valid table");
        let lake =
            Arc::new(schema_to_arrow_schema(metadata.current_schema()).expect("an Arrow schema"));
        let key: SchemaRef = Arc::new(ArrowSchema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("region", DataType::Utf8, false),
        ]));
        let index =
            KeyIndex::open(&dir.path().join("index.redb"), &key, 1 << 20).expect("an index");
        let written = Arc::new(Mutex::new(HashMap::new()));
        let file_io = iceberg::io::FileIO::new_with_fs();
        let writer = FileWriter {
            file_io: &file_io,
            metadata: &metadata,
            target_file_size: 64 * 1024,
            commit_id: "test",
            keys: Some(KeyCapture {
                names: vec!["id".to_string(), "region".to_string()],
                into: written.clone(),
            }),
            dictionaries: None,
        };
        // keys in no particular order (an update-heavy flush), notes that do not compress
        let batches = (0..3)
            .map(|b| {
                let ids: Vec<i64> = (0..20_000).map(|i| (i * 7919 + b) % 60_001).collect();
                let source = RecordBatch::try_from_iter([
                    (
                        "note",
                        Arc::new(StringArray::from_iter_values(ids.iter().map(|i| {
                            format!("{:x}", (*i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
                        }))) as ArrayRef,
                    ),
                    (
                        "region",
                        Arc::new(StringArray::from_iter_values(
                            ids.iter().map(|i| ["eu", "us", "ap"][(*i % 3) as usize]),
                        )) as ArrayRef,
                    ),
                    ("id", Arc::new(Int64Array::from(ids)) as ArrayRef),
                ])
                .expect("a batch");
                conform(&source, &lake).expect("conforms")
            })
            .collect();
        let files = writer.write_rows(batches).await.expect("written");
        assert!(
            files.len() > 2,
            "the rows roll over several files: {}",
            files.len()
        );

        let mut kept = written.lock().expect("not poisoned").clone();
        let mut total = 0;
        for file in &files {
            let path = file.file_path();
            let batches = kept.remove(path).expect("the writer kept the file's keys");
            let from_writer = written_keys(path, &batches, index.converter()).expect("encoded");
            let read_back = key_index::file_keys(&file_io, path, &key, index.converter(), None)
                .await
                .expect("read back");
            assert_eq!(from_writer.len() as u64, file.record_count());
            assert!(
                from_writer == read_back,
                "{path}: kept keys differ from the file's"
            );
            total += from_writer.len();
        }
        assert_eq!(total, 60_000);
        assert!(kept.is_empty(), "only written files are kept");
    }
}
