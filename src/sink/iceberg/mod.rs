//! The Iceberg sink: Iceberg v2 and v3 tables, upserts as position deletes (deletion vectors in
//! v3, `vectors`) of the rows a key index finds or as equality deletes, one snapshot per commit
//! carrying its checkpoint (`lakewriter.lsn`), committed by a compare-and-swap of the catalog
//! pointer (Glue, SQLite, S3 Tables or REST, [`crate::catalog`]).
//!
//! - `table`: schemas, partition specs, evolution and the checkpoint of a table;
//! - `files`: data and equality-delete files, partitioned and rolled;
//! - `parquet`: the Parquet files themselves, with Iceberg's metrics and UUID annotations;
//! - `row_delta`: the snapshot iceberg 0.10.1 cannot commit (data and delete files at once);
//! - `lookup`: current rows by key, merge-on-read;
//! - `commit`: a change staged on the current metadata and swapped in by compare-and-swap,
//!   lost races and lost answers, snapshot expiry, superseded metadata files removed.
//!
//! A commit writes its files once; a lost race re-stages only manifests and metadata on the
//! winner's metadata. Files of a commit that fails are never referenced (compaction removes
//! them later as orphans).

mod by_position;
mod commit;
mod expiry;
pub use self::commit::{CommitGates, Turn};
pub use self::expiry::{Expired, ManifestRefs};
mod files;
pub mod key_index;
mod lookup;
mod parquet;
mod positions;
mod row_delta;
mod table;
mod vectors;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::io::{
    FileIO, FileIOBuilder, S3_ACCESS_KEY_ID, S3_ENDPOINT, S3_PATH_STYLE_ACCESS, S3_REGION,
    S3_SECRET_ACCESS_KEY, S3_SESSION_TOKEN, S3_SSE_KEY, S3_SSE_TYPE,
};
use iceberg::spec::{DataFile, TableMetadata};
use iceberg_storage_opendal::OpenDalStorageFactory;

pub use table::PartitionExpr;

use self::commit::Change;
use self::files::FileWriter;
pub(crate) use self::files::conform;
pub use self::positions::DeletedPositions;
pub(crate) use self::positions::{Keep, read_data_file};
pub use self::row_delta::Rewrite;
use self::row_delta::{RowDelta, StageError};
pub(crate) use self::vectors::VectorAt;
use crate::catalog::{Catalog, CatalogError, CatalogTable, LakeCatalog, Pointer, RetryPolicy};
use crate::config::{Config, DeleteMode, ServerSideEncryption};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::sink::{Sink, TableDelta, TableLayout};
use crate::table::{TableId, TableSchema};

/// The lake table a source table is written to: in `namespace`, named after the source table
/// (`orders` for `public.orders`, `sales_orders` for `sales.orders`).
pub fn lake_table(namespace: &str, table: &TableId) -> CatalogTable {
    let name = if table.schema == "public" {
        table.name.clone()
    } else {
        format!("{}_{}", table.schema, table.name)
    };
    CatalogTable::new(namespace, name)
}

/// The progress of the table's chunked copy its metadata holds (`lakewriter.copy`); `None`
/// when no copy is under way.
pub fn copy_progress(metadata: &TableMetadata) -> Option<String> {
    table::copy_progress(metadata)
}

/// The commits that brought the latest chunks of the table's copy under way in, with their
/// snapshots' timestamps: the copy's pace, for `status` and for a copy resumed after a stop.
pub fn copy_commits(metadata: &TableMetadata) -> Vec<crate::table::ChunkCommit> {
    table::copy_commits(metadata)
}

/// The checkpoint a table's metadata holds: the `lakewriter.lsn` of its current snapshot
/// (`None` when it has none), for `status` and `compact` (which carries it forward).
pub fn checkpoint(table: &CatalogTable, metadata: &TableMetadata) -> Result<Option<Lsn>> {
    table::checkpoint(metadata).map_err(|m| sink_error(table, m))
}

/// Whether lakewriter writes the table of `metadata` (one of its snapshots carries
/// `lakewriter.lsn` or `lakewriter.incomplete`).
pub fn written_by_lakewriter(metadata: &TableMetadata) -> bool {
    table::written_by_lakewriter(metadata)
}

/// Where the sink puts tables, and how it writes them.
#[derive(Debug, Clone)]
pub struct IcebergSettings {
    /// The warehouse root: an absolute local directory or `s3://bucket/prefix`, without a
    /// trailing `/`.
    pub warehouse: String,
    /// The namespace of every lake table.
    pub namespace: String,
    /// Size a data or delete file is rolled at, in bytes.
    pub target_file_size: usize,
    /// How lost compare-and-swaps are retried.
    pub retry: RetryPolicy,
    /// Snapshots older than this are expired, on the writer's cadence too
    /// (`[compaction] snapshot_retention`).
    pub snapshot_retention: std::time::Duration,
    /// The newest snapshots always kept (`[compaction] keep_snapshots`).
    pub keep_snapshots: usize,
    /// Whether the sink removes the files its commits and expiries leave unreferenced
    /// (metadata files off the log, expired manifest lists and manifests). Not on S3 Tables,
    /// whose storage takes no deletes: its unreferenced file removal does it.
    pub removes_files: bool,
    /// Where this sink's commits take turns with the other sinks' of the process.
    pub commit_gates: CommitGates,
    /// `[sink] delete_mode`, and per table (`schema.table`) where it differs.
    pub delete_mode: DeleteMode,
    /// Tables whose `delete_mode` differs from the sink's.
    pub table_delete_modes: HashMap<String, DeleteMode>,
    /// The key indexes' directory (absolute) and each one's page cache, in bytes.
    pub key_index: (std::path::PathBuf, usize),
}

impl IcebergSettings {
    /// The settings of `config`'s `[sink]` (a relative local warehouse is taken from the
    /// working directory).
    pub fn from_config(config: &Config) -> Result<IcebergSettings> {
        let warehouse = config.sink.warehouse.trim_end_matches('/');
        let warehouse = if crate::cloud::warehouse_location(config)?.is_some() {
            warehouse.to_string()
        } else {
            let path = std::path::absolute(warehouse).map_err(|source| Error::Io {
                path: warehouse.into(),
                source,
            })?;
            path.to_string_lossy().trim_end_matches('/').to_string()
        };
        Ok(IcebergSettings {
            warehouse,
            namespace: config.sink.namespace.clone(),
            target_file_size: usize::try_from(config.sink.target_file_size.bytes())
                .unwrap_or(usize::MAX),
            retry: RetryPolicy::default(),
            snapshot_retention: config.compaction.snapshot_retention.get(),
            keep_snapshots: config.compaction.keep_snapshots.max(1),
            removes_files: config.sink.catalog != crate::config::CatalogKind::S3tables,
            commit_gates: CommitGates::process(),
            delete_mode: config.sink.delete_mode.unwrap_or(DeleteMode::Position),
            table_delete_modes: config
                .sink
                .tables
                .iter()
                .filter_map(|(name, t)| t.delete_mode.map(|m| (name.clone(), m)))
                .collect(),
            key_index: (
                std::path::absolute(&config.sink.key_index.dir).map_err(|source| Error::Io {
                    path: config.sink.key_index.dir.clone(),
                    source,
                })?,
                usize::try_from(config.sink.key_index.cache.bytes()).unwrap_or(usize::MAX),
            ),
        })
    }

    /// The delete mode of `table`.
    pub fn delete_mode(&self, table: &TableId) -> DeleteMode {
        self.table_delete_modes
            .get(&table.to_string())
            .copied()
            .unwrap_or(self.delete_mode)
    }

    /// Where the key index of lake table `table`, at `location`, lives: named after the
    /// table and a digest of its location, so two pipelines writing different lakes from one
    /// working directory never share an index.
    pub fn key_index_path(&self, table: &CatalogTable, location: &str) -> std::path::PathBuf {
        let digest = ring::digest::digest(&ring::digest::SHA256, location.as_bytes());
        let short: String = digest.as_ref()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.key_index
            .0
            .join(&table.namespace)
            .join(format!("{}-{short}.redb", table.name))
    }

    /// Where `table`'s files go: `<warehouse>/<namespace>/<name>`.
    pub fn table_location(&self, table: &CatalogTable) -> String {
        format!("{}/{}/{}", self.warehouse, table.namespace, table.name)
    }
}

/// The storage of `config`'s warehouse: the local file system, or S3 with the endpoint
/// (`[sink.s3] endpoint`, else `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`), region, path-style
/// addressing and static keys of the config, else the AWS credential chain (environment,
/// profile, web identity, instance role).
pub fn file_io(config: &Config) -> Result<FileIO> {
    // S3 Tables keeps every table in storage of its own, on S3 whatever the warehouse says
    let s3_tables = config.sink.catalog == crate::config::CatalogKind::S3tables;
    if crate::cloud::warehouse_location(config)?.is_none() && !s3_tables {
        return Ok(FileIO::new_with_fs());
    }
    let s3 = &config.sink.s3;
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut props: Vec<(&str, String)> = Vec::new();
    if let Some(endpoint) = s3
        .endpoint
        .clone()
        .or_else(|| env("AWS_ENDPOINT_URL_S3"))
        .or_else(|| env("AWS_ENDPOINT_URL"))
    {
        props.push((S3_ENDPOINT, endpoint));
    }
    if let Some(region) = s3
        .region
        .clone()
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
    {
        props.push((S3_REGION, region));
    }
    if s3.force_path_style {
        props.push((S3_PATH_STYLE_ACCESS, "true".into()));
    }
    // every file the FileIO writes (data, deletes, manifests, lists, metadata, compaction
    // output) carries the configured encryption
    match s3.sse {
        Some(ServerSideEncryption::Aes256) => props.push((S3_SSE_TYPE, "s3".into())),
        Some(ServerSideEncryption::Kms) => {
            props.push((S3_SSE_TYPE, "kms".into()));
            if let Some(key) = &s3.kms_key_id {
                props.push((S3_SSE_KEY, key.clone()));
            }
        }
        None => {}
    }
    if let Some(key_id) = &s3.access_key_id {
        props.push((S3_ACCESS_KEY_ID, key_id.clone()));
        props.push((
            S3_SECRET_ACCESS_KEY,
            s3.secret_access_key.expose().to_string(),
        ));
    } else if let (Some(key_id), Some(secret)) =
        (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"))
    {
        props.push((S3_ACCESS_KEY_ID, key_id));
        props.push((S3_SECRET_ACCESS_KEY, secret));
        if let Some(token) = env("AWS_SESSION_TOKEN") {
            props.push((S3_SESSION_TOKEN, token));
        }
    }
    Ok(FileIOBuilder::new(Arc::new(OpenDalStorageFactory::S3 {
        customized_credential_load: None,
    }))
    .with_props(props)
    .build())
}

/// A table the sink has prepared: its pointer and the metadata that pointer names, and the
/// source shape and layout it was prepared with.
struct TableState {
    lake: CatalogTable,
    pointer: Pointer,
    metadata: TableMetadata,
    source: Arc<TableSchema>,
    layout: TableLayout,
    /// Files written for the next commit (parts of a transaction too large for memory).
    staged: Vec<RowDelta>,
    /// The snapshot the staged position deletes name rows of, when there are some: the
    /// commit is staged only on it, like a flush's own position deletes.
    staged_positions: Option<i64>,
    /// The data-file writer staged rows go to, left open until the commit so they fill files
    /// of the target size.
    open_rows: Option<files::OpenRows>,
    /// Commits since this sink last expired the table's snapshots (see `commit`).
    commits: u32,
    /// The manifests each snapshot lists, as far as read (see `expiry`).
    manifest_refs: expiry::ManifestRefs,
    /// The key index, when the table is in `delete_mode = "position"` (see `by_position`).
    index: Option<by_position::TableIndex>,
    /// Which columns the table's data files write without a dictionary (see `parquet`).
    dictionaries: self::parquet::TableDictionaries,
}

/// The Iceberg [`Sink`] over catalog `C` (Glue, SQLite, S3 Tables or REST: [`LakeCatalog`]
/// picks from the config).
pub struct IcebergSink<C: Catalog = LakeCatalog> {
    catalog: C,
    file_io: FileIO,
    settings: IcebergSettings,
    namespace_ready: bool,
    tables: HashMap<TableId, TableState>,
}

impl<C: Catalog> fmt::Debug for IcebergSink<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IcebergSink")
            .field("catalog", &self.catalog.describe())
            .field("warehouse", &self.settings.warehouse)
            .field("namespace", &self.settings.namespace)
            .field("tables", &self.tables.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl IcebergSink<LakeCatalog> {
    /// The sink of `config`: its catalog, warehouse storage and settings.
    pub async fn from_config(config: &Config) -> Result<Self> {
        let catalog = LakeCatalog::from_config(config)
            .await
            .map_err(|e| catalog_error(&config.sink.namespace, e))?;
        Ok(IcebergSink::new(
            catalog,
            file_io(config)?,
            IcebergSettings::from_config(config)?,
        ))
    }
}

impl<C: Catalog> IcebergSink<C> {
    /// This sink with commit gates of its own: it races the process's other sinks for each
    /// compare-and-swap, as a writer in another process does.
    pub fn with_private_commit_gates(mut self) -> Self {
        self.settings.commit_gates = CommitGates::private();
        self
    }

    /// A sink committing through `catalog`, writing files with `file_io`.
    pub fn new(catalog: C, file_io: FileIO, settings: IcebergSettings) -> Self {
        IcebergSink {
            catalog,
            file_io,
            settings,
            namespace_ready: false,
            tables: HashMap::new(),
        }
    }

    /// The catalog the sink commits through.
    pub fn catalog(&self) -> &C {
        &self.catalog
    }

    /// The sink's settings.
    pub fn settings(&self) -> &IcebergSettings {
        &self.settings
    }

    /// The lake table of a source table.
    pub fn lake_table(&self, table: &TableId) -> CatalogTable {
        lake_table(&self.settings.namespace, table)
    }

    /// The metadata location and metadata of a prepared table as of its last commit by this
    /// sink (`None` before [`Sink::prepare`]).
    pub fn table_metadata(&self, table: &TableId) -> Option<(&str, &TableMetadata)> {
        self.tables
            .get(table)
            .map(|s| (s.pointer.metadata_location.as_str(), &s.metadata))
    }

    async fn read_metadata(&self, lake: &CatalogTable, pointer: &Pointer) -> Result<TableMetadata> {
        // a REST catalog sends the metadata with each answer
        if let Some(metadata) = self.catalog.known_metadata(lake, pointer) {
            return Ok(metadata);
        }
        TableMetadata::read_from(&self.file_io, &pointer.metadata_location)
            .await
            .map_err(|e| {
                iceberg_error(
                    lake,
                    &format!("read metadata {}", pointer.metadata_location),
                    e,
                )
            })
    }

    /// Loads the table, creating it (with `schema` and `layout`) when it is not registered.
    async fn load_or_create(
        &mut self,
        lake: &CatalogTable,
        schema: &TableSchema,
        layout: &TableLayout,
        version: iceberg::spec::FormatVersion,
    ) -> Result<(Pointer, TableMetadata)> {
        if !self.namespace_ready {
            self.catalog
                .ensure_namespace(&lake.namespace)
                .await
                .map_err(|e| catalog_error(lake, e))?;
            self.namespace_ready = true;
        }
        if let Some(pointer) = self
            .catalog
            .load(lake)
            .await
            .map_err(|e| catalog_error(lake, e))?
        {
            let metadata = self.read_metadata(lake, &pointer).await?;
            return Ok((pointer, metadata));
        }
        let location = match self
            .catalog
            .table_location(lake)
            .await
            .map_err(|e| catalog_error(lake, e))?
        {
            Some(location) => location,
            None => self.settings.table_location(lake),
        };
        let iceberg_schema =
            table::new_schema(&schema.arrow, &layout.key).map_err(|m| sink_error(lake, m))?;
        let metadata = table::new_table_metadata(&location, iceberg_schema, layout, version)
            .map_err(|m| sink_error(lake, m))?;
        let first = iceberg::MetadataLocation::new_with_metadata(&location, &metadata);
        metadata
            .write_to(&self.file_io, &first)
            .await
            .map_err(|e| iceberg_error(lake, "write the new table's metadata", e))?;
        match self
            .catalog
            .create(lake, &first.to_string(), &metadata)
            .await
        {
            Ok(pointer) => {
                tracing::info!(table = %lake, location = %location, "created lake table");
                Ok((pointer, metadata))
            }
            // Another writer created it meanwhile: use theirs (ours is an orphan file).
            Err(CatalogError::AlreadyExists { .. }) => {
                let pointer = self
                    .catalog
                    .load(lake)
                    .await
                    .map_err(|e| catalog_error(lake, e))?
                    .ok_or_else(|| {
                        sink_error(lake, "the table was created and dropped meanwhile")
                    })?;
                let metadata = self.read_metadata(lake, &pointer).await?;
                Ok((pointer, metadata))
            }
            Err(e) => Err(catalog_error(lake, e)),
        }
    }

    /// Brings the lake schema of `state` to take rows of `schema`.
    async fn evolve(
        &self,
        state: &mut TableState,
        schema: &TableSchema,
        replace: bool,
    ) -> Result<()> {
        let needed = table::evolve(
            state.metadata.current_schema(),
            state.metadata.last_column_id(),
            &schema.arrow,
            replace,
        )
        .map_err(|m| sink_error(&state.lake, m))?;
        if needed.is_none() {
            return Ok(());
        }
        let (pointer, metadata) = self
            .commit_change(
                &state.lake,
                &state.pointer,
                &state.metadata,
                Change::Evolve(&schema.arrow, replace),
            )
            .await?;
        tracing::info!(
            table = %state.lake,
            schema_id = metadata.current_schema_id(),
            "evolved lake schema"
        );
        state.pointer = pointer;
        state.metadata = metadata;
        Ok(())
    }

    /// The field ids of the key columns: the columns equality deletes compare.
    fn equality_ids(state: &TableState) -> Result<Vec<i32>> {
        key_field_ids(&state.lake, &state.metadata, &state.layout.key)
    }

    /// `batches` in the layout of the table as it is now ([`files::conform`]), empty ones
    /// left out.
    fn conformed(&self, state: &TableState, batches: &[RecordBatch]) -> Result<Vec<RecordBatch>> {
        if batches.iter().all(|b| b.num_rows() == 0) {
            return Ok(Vec::new());
        }
        let lake = &state.lake;
        let arrow = Arc::new(
            schema_to_arrow_schema(state.metadata.current_schema())
                .map_err(|e| iceberg_error(lake, "convert the schema to Arrow", e))?,
        );
        batches
            .iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| files::conform(b, &arrow).map_err(|m| sink_error(lake, m)))
            .collect()
    }

    /// A writer of files against `metadata`, named after `commit_id`, its data files keeping
    /// their rows' key columns into `keys` (for the key index) and learning which columns a
    /// dictionary pays for in `dictionaries` (the table's), when given.
    fn file_writer<'a>(
        &'a self,
        metadata: &'a TableMetadata,
        commit_id: &'a str,
        keys: Option<self::parquet::KeyCapture>,
        dictionaries: Option<self::parquet::TableDictionaries>,
    ) -> FileWriter<'a> {
        FileWriter {
            file_io: &self.file_io,
            metadata,
            target_file_size: self.settings.target_file_size,
            commit_id,
            keys,
            dictionaries,
        }
    }

    /// Writes the delta's files against the table as it is now; the data files keep their
    /// key columns for `index`, when given.
    async fn write_files(
        &self,
        state: &TableState,
        delta: &TableDelta,
        index: Option<&by_position::TableIndex>,
    ) -> Result<RowDelta> {
        let lake = &state.lake;
        let rows = self.conformed(state, &delta.rows)?;
        let deletes = self.conformed(state, &delta.deletes)?;
        let commit_id = row_delta::unique_id();
        let keys = index.map(by_position::TableIndex::capture);
        let writer = self.file_writer(
            &state.metadata,
            &commit_id,
            keys,
            Some(state.dictionaries.clone()),
        );
        let data_files = writer
            .write_rows(rows)
            .await
            .map_err(|e| iceberg_error(lake, "write data files", e))?;
        let delete_files = if deletes.is_empty() {
            Vec::new()
        } else {
            let ids = Self::equality_ids(state)?;
            if ids.is_empty() {
                return Err(sink_error(
                    lake,
                    "the delta deletes rows but the table has no key to delete them by",
                ));
            }
            writer
                .write_deletes(deletes, ids)
                .await
                .map_err(|e| iceberg_error(lake, "write equality-delete files", e))?
        };
        Ok(RowDelta {
            data_files,
            delete_files,
            spec_id: state.metadata.default_partition_spec_id(),
            truncate: delta.truncate,
            lsn: delta.lsn,
            copy: delta.copy.clone(),
            rewrite: None,
            based_on: None,
            replaced_vectors: std::collections::HashSet::new(),
        })
    }
}

impl<C: Catalog> Sink for IcebergSink<C> {
    async fn prepare(
        &mut self,
        table: &TableId,
        schema: &TableSchema,
        layout: &TableLayout,
    ) -> Result<Option<Lsn>> {
        let lake = self.lake_table(table);
        // deletion vectors are of format 3
        let vectors = self.settings.delete_mode(table) == DeleteMode::DeletionVector;
        let version = match vectors {
            true => iceberg::spec::FormatVersion::V3,
            false => iceberg::spec::FormatVersion::V2,
        };
        let (pointer, metadata) = self.load_or_create(&lake, schema, layout, version).await?;
        let mut state = TableState {
            lake,
            pointer,
            metadata,
            source: Arc::new(schema.clone()),
            layout: layout.clone(),
            staged: Vec::new(),
            staged_positions: None,
            open_rows: None,
            commits: 0,
            manifest_refs: expiry::ManifestRefs::default(),
            index: None,
            dictionaries: Default::default(),
        };
        if let Some(earlier) = self.tables.remove(table) {
            state.dictionaries = earlier.dictionaries;
            state.staged = earlier.staged;
            state.staged_positions = earlier.staged_positions;
            state.open_rows = earlier.open_rows;
            // the index file stays open (redb takes it for one handle at a time)
            state.index = earlier.index;
            self.close_open_rows(&mut state).await?;
        }
        // a table without a checkpoint is copied again from scratch: a column whose type changed
        // beyond what Iceberg can widen may then be replaced
        let incomplete = checkpoint(&state.lake, &state.metadata)?.is_none();
        if let Err(e) = self.evolve(&mut state, schema, incomplete).await {
            // known as it is in the lake, for known_checkpoint and mark_incomplete
            self.tables.insert(table.clone(), state);
            return Err(e);
        }
        if let Err(e) = self.refit_index(table, &mut state).await {
            self.tables.insert(table.clone(), state);
            return Err(e);
        }
        if !table::same_partitioning(&state.metadata, layout) {
            tracing::warn!(
                table = %state.lake,
                partition_by = ?layout.partition_by,
                "the lake table keeps its partition spec; the configured one differs and \
                 applies only to new tables"
            );
        }
        Self::equality_ids(&state)?;
        if vectors && state.metadata.format_version() < version {
            match self
                .commit_change(
                    &state.lake,
                    &state.pointer,
                    &state.metadata,
                    Change::Upgrade(version),
                )
                .await
            {
                Ok((pointer, metadata)) => {
                    tracing::warn!(
                        table = %state.lake,
                        "delete_mode = deletion_vector: the table is upgraded to Iceberg format \
                         3 (engines that read only format 2 no longer read it)"
                    );
                    state.pointer = pointer;
                    state.metadata = metadata;
                }
                Err(e) => {
                    self.tables.insert(table.clone(), state);
                    return Err(e);
                }
            }
        }
        if state.index.is_none() {
            state.index = self.open_index(table, &state)?;
        }
        if let Some(index) = &state.index
            && let Err(e) = self.index_exact(&state, index).await
        {
            // exact before the first commit: a rebuild, if one is due, happens here; one
            // that fails is tried again before the first flush with deletes
            tracing::warn!(table = %state.lake, error = %e, "the key index could not be rebuilt");
        }
        let checkpoint = checkpoint(&state.lake, &state.metadata)?;
        tracing::debug!(table = %state.lake, checkpoint = ?checkpoint, "prepared lake table");
        self.tables.insert(table.clone(), state);
        Ok(checkpoint)
    }

    async fn commit(&mut self, delta: TableDelta) -> Result<()> {
        let Some(mut state) = self.tables.remove(&delta.table) else {
            return Err(sink_error(
                &self.lake_table(&delta.table),
                "commit before prepare: the sink does not know the table yet",
            ));
        };
        let result = self.commit_prepared(&mut state, &delta).await;
        if result.is_ok() {
            state.commits += 1;
            if state.commits >= expiry::EXPIRE_EVERY {
                state.commits = 0;
                self.expire_on_cadence(&mut state).await;
            }
        }
        self.tables.insert(delta.table.clone(), state);
        result
    }

    async fn stage(&mut self, part: TableDelta) -> Result<()> {
        let Some(mut state) = self.tables.remove(&part.table) else {
            return Err(sink_error(
                &self.lake_table(&part.table),
                "stage before prepare: the sink does not know the table yet",
            ));
        };
        let result = self.stage_prepared(&mut state, &part).await;
        self.tables.insert(part.table.clone(), state);
        result
    }

    fn known_checkpoint(&self, table: &TableId) -> Option<Lsn> {
        let state = self.tables.get(table)?;
        checkpoint(&state.lake, &state.metadata).ok().flatten()
    }

    fn keeps_copy_progress(&self) -> bool {
        true
    }

    fn copy_progress(&self, table: &TableId) -> Option<String> {
        let state = self.tables.get(table)?;
        table::copy_progress(&state.metadata)
    }

    fn copy_commits(&self, table: &TableId) -> Vec<crate::table::ChunkCommit> {
        self.tables
            .get(table)
            .map(|state| table::copy_commits(&state.metadata))
            .unwrap_or_default()
    }

    async fn mark_incomplete(&mut self, table: &TableId) -> Result<()> {
        let Some(state) = self.tables.get(table) else {
            return Err(sink_error(
                &self.lake_table(table),
                "mark incomplete before prepare: the sink does not know the table yet",
            ));
        };
        let empty = RowDelta::files(
            state.metadata.default_partition_spec_id(),
            Vec::new(),
            Vec::new(),
        );
        let (pointer, metadata) = self
            .commit_change(
                &state.lake,
                &state.pointer,
                &state.metadata,
                Change::Rows(&empty),
            )
            .await?;
        tracing::info!(table = %state.lake, "marked incomplete: the next start copies it again");
        if let Some(state) = self.tables.get_mut(table) {
            state.pointer = pointer;
            state.metadata = metadata;
        }
        Ok(())
    }

    fn discard_staged(&mut self, table: &TableId) {
        if let Some(state) = self.tables.get_mut(table) {
            state.staged.clear();
            state.staged_positions = None;
            // its files, unreferenced, are orphans for cleanup
            state.open_rows = None;
            if let Some(index) = &state.index {
                index.take_written();
            }
        }
    }

    async fn settle(&mut self) {
        for state in self.tables.values() {
            if let Some(index) = &state.index {
                index.settled(&state.lake).await;
            }
        }
    }

    async fn lookup(&mut self, table: &TableId, keys: &RecordBatch) -> Result<Vec<RecordBatch>> {
        let state = self.tables.get(table).ok_or_else(|| {
            sink_error(
                &self.lake_table(table),
                "lookup before prepare: the sink does not know the table yet",
            )
        })?;
        lookup::lookup(
            &self.file_io,
            &state.lake,
            &state.metadata,
            &state.pointer.metadata_location,
            keys,
            &state.source.arrow_nullable,
        )
        .await
        .map_err(|m| sink_error(&state.lake, m))
    }
}

impl<C: Catalog> IcebergSink<C> {
    /// Writes `batches` (rows in the layout of `metadata`'s schema) as data files of that
    /// table, partitioned and rolled at the target size, for [`IcebergSink::commit_rewrite`].
    pub async fn write_data(
        &self,
        lake: &CatalogTable,
        metadata: &TableMetadata,
        batches: Vec<RecordBatch>,
    ) -> Result<Vec<DataFile>> {
        let arrow = Arc::new(
            schema_to_arrow_schema(metadata.current_schema())
                .map_err(|e| iceberg_error(lake, "convert the schema to Arrow", e))?,
        );
        let rows = batches
            .iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| files::conform(b, &arrow).map_err(|m| sink_error(lake, m)))
            .collect::<Result<Vec<_>>>()?;
        let commit_id = row_delta::unique_id();
        self.file_writer(metadata, &commit_id, None, None)
            .write_rows(rows)
            .await
            .map_err(|e| iceberg_error(lake, "write data files", e))
    }

    /// Commits a compaction of `lake` (at `pointer`, `metadata`): `data_files` (written by
    /// [`IcebergSink::write_data`] from what `rewrite` read) replace its files. The new files
    /// keep the data sequence number of the snapshot read, so equality deletes committed since
    /// still apply; the snapshot carries the table's latest checkpoint. Commits that landed
    /// meanwhile are kept; one that removed a replaced file or changed the schema makes this
    /// fail with an error [`is_conflict`] recognises.
    pub async fn commit_rewrite(
        &self,
        lake: &CatalogTable,
        pointer: &Pointer,
        metadata: &TableMetadata,
        data_files: Vec<DataFile>,
        rewrite: Rewrite,
    ) -> Result<(Pointer, TableMetadata)> {
        let delta = rewrite_delta(metadata, data_files, rewrite);
        self.commit_change(lake, pointer, metadata, Change::Rows(&delta))
            .await
    }

    /// Waits for `lake`'s turn to commit in this process and holds it (see
    /// [`IcebergSink::commit_rewrite_in_turn`]).
    pub async fn hold_turn(&self, lake: &CatalogTable) -> Turn {
        self.settings.commit_gates.hold(lake).await
    }

    /// [`IcebergSink::commit_rewrite`] by a compaction that holds `lake`'s turn (`_turn`)
    /// since before it read the table: no commit of this process's writer lands in between,
    /// so position deletes the writer found in the rewritten files cannot make it lose; the
    /// writer, waiting its turn, finds those rows again in the new files.
    pub async fn commit_rewrite_in_turn(
        &self,
        _turn: &Turn,
        lake: &CatalogTable,
        pointer: &Pointer,
        metadata: &TableMetadata,
        data_files: Vec<DataFile>,
        rewrite: Rewrite,
    ) -> Result<(Pointer, TableMetadata)> {
        let delta = rewrite_delta(metadata, data_files, rewrite);
        self.commit_in_turn(lake, pointer, metadata, Change::Rows(&delta))
            .await
    }

    /// Writes `part`'s rows into the table's open data-file writer and its deletes into
    /// files of their own, all for the next commit.
    async fn stage_prepared(&self, state: &mut TableState, part: &TableDelta) -> Result<()> {
        self.follow_schema(&part.table, state, &part.schema).await?;
        if state
            .open_rows
            .as_ref()
            .is_some_and(|open| open.schema_id != state.metadata.current_schema_id())
        {
            self.close_open_rows(state).await?;
        }
        let rows = self.conformed(state, &part.rows)?;
        if !rows.is_empty() {
            let lake = &state.lake;
            let open = match &mut state.open_rows {
                Some(open) => open,
                None => {
                    let commit_id = row_delta::unique_id();
                    let keys = state.index.as_ref().map(by_position::TableIndex::capture);
                    let writer = self.file_writer(
                        &state.metadata,
                        &commit_id,
                        keys,
                        Some(state.dictionaries.clone()),
                    );
                    let open = writer
                        .open_rows()
                        .await
                        .map_err(|e| iceberg_error(lake, "open a data file", e))?;
                    state.open_rows.insert(open)
                }
            };
            for batch in &rows {
                open.write(batch)
                    .await
                    .map_err(|e| iceberg_error(lake, "write data files", e))?;
            }
        }
        if !part.deletes.is_empty() {
            // in position mode, the part's old rows found in the key index now (every part is
            // looked up in the same snapshot: nothing commits until the transaction's end)
            if let Some(positional) = self.stage_positions(state, part).await {
                tracing::debug!(
                    table = %state.lake,
                    delete_files = positional.files.len(),
                    "staged position deletes for the transaction's commit"
                );
                state.staged_positions = Some(positional.based_on);
                state.staged.push(RowDelta::files(
                    state.metadata.default_partition_spec_id(),
                    Vec::new(),
                    positional.files,
                ));
                return Ok(());
            }
            let deletes = TableDelta {
                rows: Vec::new(),
                ..part.clone()
            };
            let files = self.write_files(state, &deletes, None).await?;
            tracing::debug!(
                table = %state.lake,
                delete_files = files.delete_files.len(),
                "staged delete files for the transaction's commit"
            );
            state.staged.push(files);
        }
        Ok(())
    }

    /// Takes a source schema that changed since the table's last part or commit (it came with
    /// the part or delta, without a prepare): the rows written so far are closed in their
    /// layout, the lake's schema evolved, and the key index opened again if the key's types
    /// changed.
    async fn follow_schema(
        &self,
        table: &TableId,
        state: &mut TableState,
        schema: &Arc<TableSchema>,
    ) -> Result<()> {
        if schema.same_shape(&state.source) {
            return Ok(());
        }
        self.close_open_rows(state).await?;
        self.evolve(state, schema, false).await?;
        state.source = schema.clone();
        self.refit_index(table, state).await
    }

    /// The position deletes of a staged part's old rows, when the table is in position mode
    /// and its index serves them in the snapshot of the parts staged before; `None` for
    /// equality deletes (logged when the index cannot serve).
    async fn stage_positions(
        &self,
        state: &mut TableState,
        part: &TableDelta,
    ) -> Option<by_position::Positional> {
        if part.truncate || !part.deletes.iter().any(|b| b.num_rows() > 0) {
            return None;
        }
        let index = state.index.take()?;
        // (a format-3 table's vector of a part holds only the rows it found: the commit
        // merges the parts' vectors of each data file, with the file's live one)
        let found = self
            .position_deletes(state, &index, &part.deletes, false)
            .await;
        state.index = Some(index);
        match found {
            Ok(found) if state.staged_positions.is_none_or(|s| s == found.based_on) => Some(found),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(
                    table = %state.lake,
                    error = %e,
                    "the key index cannot serve this part of a large transaction: it stages \
                     equality deletes"
                );
                None
            }
        }
    }

    /// Reads `state`'s table again from the catalog (after another writer's commit).
    async fn reload(&self, state: &mut TableState) -> Result<()> {
        let lake = &state.lake;
        let pointer = self
            .catalog
            .load(lake)
            .await
            .map_err(|e| catalog_error(lake, e))?
            .ok_or_else(|| sink_error(lake, "the table is no longer in the catalog"))?;
        state.metadata = self.read_metadata(lake, &pointer).await?;
        state.pointer = pointer;
        Ok(())
    }

    /// Closes the table's open data-file writer, its files staged for the next commit.
    async fn close_open_rows(&self, state: &mut TableState) -> Result<()> {
        let Some(open) = state.open_rows.take() else {
            return Ok(());
        };
        let data_files = open
            .close()
            .await
            .map_err(|e| iceberg_error(&state.lake, "write data files", e))?;
        tracing::debug!(
            table = %state.lake,
            data_files = data_files.len(),
            "staged data files for the transaction's commit"
        );
        state.staged.push(RowDelta::files(
            state.metadata.default_partition_spec_id(),
            data_files,
            Vec::new(),
        ));
        Ok(())
    }

    async fn commit_prepared(&self, state: &mut TableState, delta: &TableDelta) -> Result<()> {
        // a schema change that comes with the delta, before the index is taken: a key it
        // widens needs the index opened for the new types
        self.follow_schema(&delta.table, state, &delta.schema)
            .await?;
        self.close_open_rows(state).await?;
        let index = state.index.take();
        let result = self.commit_indexed(state, delta, index.as_ref()).await;
        state.index = index;
        result
    }

    /// The equality-delete files of `deletes` (old rows of `delta`'s table): a flush's deletes
    /// by key, where the key index cannot serve it.
    async fn by_key(
        &self,
        state: &TableState,
        delta: &TableDelta,
        deletes: Vec<RecordBatch>,
    ) -> Result<Vec<DataFile>> {
        let deletes_only = TableDelta {
            rows: Vec::new(),
            deletes,
            ..delta.clone()
        };
        Ok(self
            .write_files(state, &deletes_only, None)
            .await?
            .delete_files)
    }

    /// Commits `delta`, its deletes as position deletes of the rows `index` finds when there
    /// is one, and brings the index along.
    async fn commit_indexed(
        &self,
        state: &mut TableState,
        delta: &TableDelta,
        index: Option<&by_position::TableIndex>,
    ) -> Result<()> {
        // (the open rows closed and the schema evolved by `commit_prepared`)
        // a truncating delta removes every row anyway: nothing to find
        let (positional, mut files) = match index {
            Some(index) if !delta.truncate && delta.deletes.iter().any(|b| b.num_rows() > 0) => {
                // the old rows are found while the new ones are written
                let rows_only = TableDelta {
                    deletes: Vec::new(),
                    ..delta.clone()
                };
                let (found, written) = tokio::join!(
                    self.position_deletes(state, index, &delta.deletes, true),
                    self.write_files(state, &rows_only, Some(index)),
                );
                let mut files = written?;
                match found {
                    Ok(positional) => {
                        positional.add_to(&mut files);
                        (Some(positional), files)
                    }
                    // equality deletes need no index: the flush goes on with them
                    Err(e) => {
                        tracing::warn!(
                            table = %state.lake,
                            error = %e,
                            "the key index cannot serve this flush: it writes equality deletes"
                        );
                        files
                            .delete_files
                            .extend(self.by_key(state, delta, delta.deletes.clone()).await?);
                        (None, files)
                    }
                }
            }
            _ => (None, self.write_files(state, delta, index).await?),
        };
        // the parts of a large transaction staged before, their position deletes found in
        // the same snapshot as this delta's (nothing of the table committed in between)
        let mut staged_positions = state.staged_positions.take();
        if staged_positions.is_some() && index.is_none() {
            return Err(sink_error(
                &state.lake,
                "position deletes were staged without the key index that found them",
            ));
        }
        for part in state.staged.drain(..) {
            files.data_files.extend(part.data_files);
            files.delete_files.extend(part.delete_files);
        }
        if let Some(snapshot) = staged_positions {
            files.based_on = Some(files.based_on.unwrap_or(snapshot));
        }
        let mut positional = positional;
        // the rows deleted by key on a retry: this delta's, and those of the staged parts
        let mut deletes = delta.deletes.clone();
        // another commit landing on the snapshot the rows were found in (a compaction, another
        // engine) may have moved them: the table is read again, the index brought up to it and
        // the rows found again, once; losing again, the flush deletes by key, which needs no
        // index (its position-delete files, never committed, are orphans for cleanup)
        let mut attempts = 0;
        let vectors = state.metadata.format_version() >= iceberg::spec::FormatVersion::V3;
        let committed = loop {
            // a format-3 table: the staged parts' vectors (each of the rows it found) merged
            // with this delta's and the live ones, one per data file; `files` keeps them apart
            // for a read-back after a lost race
            let merged;
            let change = match (index, staged_positions.is_some() && vectors) {
                (Some(index), true) => {
                    merged = self.merge_staged_vectors(state, index, &files).await?;
                    &merged
                }
                _ => &files,
            };
            let committed = self
                .commit_change(
                    &state.lake,
                    &state.pointer,
                    &state.metadata,
                    Change::Rows(change),
                )
                .await;
            let (Err(e), Some(index)) = (&committed, index) else {
                break committed;
            };
            if (positional.is_none() && staged_positions.is_none()) || !is_conflict(e) {
                break committed;
            }
            attempts += 1;
            if staged_positions.take().is_some() {
                // the staged parts' deleted rows, read back from their position deletes (in
                // the files of the snapshot they were found in), to find or delete again
                let staged: Vec<iceberg::spec::DataFile> = files
                    .delete_files
                    .iter()
                    .filter(|f| {
                        f.content_type() == iceberg::spec::DataContentType::PositionDeletes
                            && positional.as_ref().is_none_or(|p| {
                                !p.files.iter().any(|o| o.file_path() == f.file_path())
                            })
                    })
                    .cloned()
                    .collect();
                deletes.extend(self.rows_at_positions(&state.lake, &staged).await?);
            }
            files
                .delete_files
                .retain(|f| f.content_type() != iceberg::spec::DataContentType::PositionDeletes);
            files.based_on = None;
            files.replaced_vectors.clear();
            positional = None;
            if attempts == 1 {
                tracing::info!(
                    table = %state.lake,
                    reason = %e,
                    "another commit landed first: finding the deleted rows again"
                );
                let found = match self.reload(state).await {
                    Ok(()) => self.position_deletes(state, index, &deletes, true).await,
                    Err(e) => Err(e),
                };
                match found {
                    Ok(found) => {
                        found.add_to(&mut files);
                        positional = Some(found);
                        continue;
                    }
                    Err(e) => tracing::warn!(
                        table = %state.lake,
                        error = %e,
                        "the key index cannot serve this flush: it writes equality deletes"
                    ),
                }
            } else {
                tracing::info!(
                    table = %state.lake,
                    reason = %e,
                    "another commit landed first again: this flush writes equality deletes"
                );
            }
            files
                .delete_files
                .extend(self.by_key(state, delta, deletes.clone()).await?);
        };
        // the key columns the commit's data files kept, taken whatever the outcome: files of
        // a commit that failed are never committed
        let written = index
            .map(by_position::TableIndex::take_written)
            .unwrap_or_default();
        let (pointer, metadata) = committed?;
        if let Some(m) = crate::metrics::installed() {
            let bytes = files
                .data_files
                .iter()
                .chain(&files.delete_files)
                .map(|f| f.file_size_in_bytes())
                .sum();
            m.files(
                &delta.table,
                files.data_files.len(),
                files.delete_files.len(),
                bytes,
            );
        }
        tracing::info!(
            table = %state.lake,
            lsn = delta.lsn.map(|l| l.to_string()),
            data_files = files.data_files.len(),
            delete_files = files.delete_files.len(),
            truncate = delta.truncate,
            snapshot = ?metadata.current_snapshot_id(),
            "committed"
        );
        state.pointer = pointer;
        state.metadata = metadata;
        if staged_positions.is_some() {
            // the staged parts' deleted keys are not held in memory (the transaction was too
            // large for it): the index, still exact for the snapshot before this commit,
            // catches up from the lake before its next use, reading the position deletes
            tracing::debug!(
                table = %state.lake,
                "the key index catches up with a large transaction's commit before its next use"
            );
        } else if let Some(index) = index
            && let Err(e) = self
                .index_committed(state, index, &files, positional, written)
                .await
        {
            // the commit stands; the index, still exact for the snapshot before it, is
            // rebuilt before its next use
            tracing::warn!(table = %state.lake, error = %e, "the key index missed this commit");
        }
        Ok(())
    }
}

/// The field ids of the key columns `key` in `lake`'s current schema.
fn key_field_ids(
    lake: &CatalogTable,
    metadata: &TableMetadata,
    key: &[String],
) -> Result<Vec<i32>> {
    let schema = metadata.current_schema();
    key.iter()
        .map(|name| {
            schema.field_by_name(name).map(|f| f.id).ok_or_else(|| {
                sink_error(
                    lake,
                    format!("key column {name} is not a column of the lake table"),
                )
            })
        })
        .collect()
}

/// The row delta of a compaction: `data_files` replace what `rewrite` names.
fn rewrite_delta(
    metadata: &TableMetadata,
    data_files: Vec<DataFile>,
    rewrite: Rewrite,
) -> RowDelta {
    RowDelta {
        rewrite: Some(rewrite),
        ..RowDelta::files(metadata.default_partition_spec_id(), data_files, Vec::new())
    }
}

/// A sink error about `table` that retrying will not fix.
fn sink_error(table: &impl fmt::Display, message: impl Into<String>) -> Error {
    Error::Sink {
        table: table.to_string(),
        message: message.into(),
        retryable: false,
    }
}

/// An iceberg failure while doing `context`: storage failures (iceberg reports them as
/// unexpected) may pass on a retry.
fn iceberg_error(table: &impl fmt::Display, context: &str, e: iceberg::Error) -> Error {
    let retryable = e.retryable() || e.kind() == iceberg::ErrorKind::Unexpected;
    Error::Sink {
        table: table.to_string(),
        message: format!("{context}: {e}"),
        retryable,
    }
}

/// A catalog failure about `table` (a lake table or a namespace), retryable when the
/// catalog's error is.
pub fn catalog_error(table: &impl fmt::Display, e: CatalogError) -> Error {
    Error::Sink {
        table: table.to_string(),
        retryable: e.is_retryable(),
        message: e.to_string(),
    }
}

fn stage_error(table: &CatalogTable, e: StageError) -> Error {
    match e {
        StageError::Iceberg(e) => iceberg_error(table, "stage the commit", e),
        StageError::AlreadyCommitted { holds } => sink_error(
            table,
            format!(
                "the table already holds checkpoint {holds}, at or past this commit's: another \
                 writer is committing the same source (is a second lakewriter running?)"
            ),
        ),
        StageError::Invalid(message) => sink_error(table, message),
        StageError::Conflict(message) => sink_error(table, format!("{CONFLICT}{message}")),
    }
}

/// How a rewrite's lost conflict begins its message ([`is_conflict`]).
const CONFLICT: &str = "rewrite conflict: ";

/// Whether `error` is a rewrite that lost to a commit changing what it read: reading the table
/// again and rewriting may succeed.
pub fn is_conflict(error: &Error) -> bool {
    matches!(error, Error::Sink { message, .. } if message.starts_with(CONFLICT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_warehouse_is_taken_from_the_working_directory() {
        let config = Config::parse(
            "[source]\ndatabase = \"d\"\n[sink]\nwarehouse = \"./lake/\"\n",
            std::path::Path::new("t.toml"),
            Vec::new(),
        )
        .expect("a config");
        let settings = IcebergSettings::from_config(&config).expect("settings");
        let cwd = std::env::current_dir().expect("a working directory");
        assert_eq!(settings.warehouse, format!("{}/lake", cwd.display()));
        assert_eq!(
            settings.table_location(&CatalogTable::new("ns", "orders")),
            format!("{}/lake/ns/orders", cwd.display())
        );
    }

    #[test]
    fn lake_tables_are_named_after_the_source_table() {
        assert_eq!(
            lake_table("lake", &TableId::new("public", "orders")),
            CatalogTable::new("lake", "orders")
        );
        assert_eq!(
            lake_table("lake", &TableId::new("sales", "orders")),
            CatalogTable::new("lake", "sales_orders")
        );
    }
}
