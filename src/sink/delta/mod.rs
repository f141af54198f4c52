//! The Delta Lake sink: one Delta table per source table at `<warehouse>/<namespace>/<name>`
//! (the layout of the Iceberg sink; the table's `_delta_log` is its own catalog, and with
//! `sink.catalog = "glue"` the table is also registered in Glue for Athena after its commits;
//! with `"sqlite"` it is recorded in the catalog file, where `query` and `compact` find it),
//! upserts as one MERGE per commit, each commit carrying its checkpoint as an application
//! transaction (`txn` action).
//!
//! - `types`: how source columns are stored (Delta has no `time` or `uuid`);
//! - `lookup`: current rows by key, for unchanged TOAST values;
//! - `schema`: creating a table, adding columns, replacing an incomplete table's schema,
//!   and keeping its statistics exact (`delta.dataSkippingStatsColumns`);
//! - `write`: the commit of one delta (MERGE, append or overwrite) with its checkpoint;
//! - `staging`: parts of a transaction too large for memory, as sealed local files until the
//!   transaction's commit takes them in (what a stopped process left is removed when the table
//!   is first prepared);
//! - `data_files`: parts of a transaction whose commit only adds rows (an initial snapshot, a
//!   truncating or insert-only large transaction), written once, straight into the table's
//!   data files, which that commit then names;
//! - `tables`: the namespace's tables opened for reading and maintenance (`query`, `verify`,
//!   `compact`).
//!
//! The checkpoint: app id `lakewriter.lsn:<namespace>.<table>` ([`checkpoint_app_id`]), version
//! the commit LSN. A commit without a checkpoint (an initial snapshot's chunks before its last,
//! `mark_incomplete`) writes version -1 for that app id, and a table whose latest version for
//! it is negative (or that has none) reads back as "no checkpoint": copied again, the first
//! chunk of the copy overwriting the table. Delta keeps only the latest `txn` of an app id, so
//! -1 after an LSN is exactly "the current commit carries no checkpoint".

mod data_files;
mod lookup;
mod schema;
mod staging;
pub mod tables;
pub mod types;
mod write;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::Field;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, TableProperty};
use url::Url;

use self::data_files::PendingFiles;
use self::staging::StagedPart;
use crate::catalog::{CatalogTable, GlueCatalog, RetryPolicy, SqliteCatalog};
use crate::config::{CatalogKind, Config};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::pipeline::sealed::Sealer;
use crate::sink::iceberg::lake_table;
use crate::sink::{CHECKPOINT_PROPERTY, COPY_PROPERTY, Sink, TableDelta, TableLayout};
use crate::table::{TableId, TableSchema};

/// The application id of `table`'s checkpoint in its `txn` actions:
/// `lakewriter.lsn:<namespace>.<name>`. Naming the table keeps two lakewriters that write
/// different tables of one warehouse from reading each other's positions.
pub fn checkpoint_app_id(table: &CatalogTable) -> String {
    format!("{CHECKPOINT_PROPERTY}:{table}")
}

/// The application id of the marker of `table`'s chunked copy in its `txn` actions:
/// `lakewriter.copy:<namespace>.<name>`, version 1 while a copy is under way (its progress is
/// then in the `commitInfo` of lakewriter's latest commit, as `lakewriter.copy`), -1 when
/// none is. The marker is in the table's state (checkpoints keep it), so a start reads the
/// log's history only for a table whose copy is under way.
pub fn copy_app_id(table: &CatalogTable) -> String {
    format!("{COPY_PROPERTY}:{table}")
}

/// The `txn` version a commit writes: the LSN, or -1 for "no checkpoint".
fn txn_version(lsn: Option<Lsn>) -> i64 {
    lsn.and_then(|l| i64::try_from(l.get()).ok()).unwrap_or(-1)
}

/// The checkpoint a `txn` version stands for (negative: none).
fn checkpoint_of(version: Option<i64>) -> Option<Lsn> {
    version.and_then(|v| u64::try_from(v).ok()).map(Lsn)
}

/// Where the Delta sink puts tables and how it reaches them.
#[derive(Debug, Clone)]
pub struct DeltaSettings {
    /// The warehouse root: an absolute local directory or `s3://bucket/prefix`, without a
    /// trailing `/`.
    pub warehouse: String,
    /// The namespace (a directory under the warehouse) of every lake table.
    pub namespace: String,
    /// Object store options (S3 endpoint, region, path style, keys) for deltalake.
    pub storage_options: HashMap<String, String>,
    /// Local directory of staged parts (`<spill_dir>/lakewriter-delta-staged`).
    pub staging_dir: PathBuf,
    /// The key staged parts are sealed with, held in this process's memory only.
    pub sealer: Arc<Sealer>,
    /// Size a data file is rolled at, in bytes.
    pub target_file_size: u64,
    /// How commits that lost a race or hit a storage hiccup are tried again.
    pub retry: RetryPolicy,
    /// The object store the tables are read and written through, instead of the one their
    /// location names (an embedder's own store; the tests' store that loses answers).
    pub storage: Option<Arc<dyn object_store::ObjectStore>>,
    /// How long log entries are kept for time travel: `delta.logRetentionDuration` of the
    /// tables the sink creates (`[compaction] snapshot_retention`).
    pub log_retention: std::time::Duration,
}

impl DeltaSettings {
    /// The settings of `config`'s `[sink]` (a relative local warehouse is taken from the
    /// working directory).
    pub fn from_config(config: &Config) -> Result<DeltaSettings> {
        let warehouse = config.sink.warehouse.trim_end_matches('/');
        let on_s3 = crate::cloud::warehouse_location(config)?.is_some();
        let warehouse = if on_s3 {
            warehouse.to_string()
        } else {
            let path = std::path::absolute(warehouse).map_err(|source| Error::Io {
                path: warehouse.into(),
                source,
            })?;
            path.to_string_lossy().trim_end_matches('/').to_string()
        };
        let staging_dir = config
            .flush
            .spill_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir)
            .join("lakewriter-delta-staged");
        Ok(DeltaSettings {
            warehouse,
            namespace: config.sink.namespace.clone(),
            storage_options: if on_s3 {
                storage_options(config)
            } else {
                HashMap::new()
            },
            sealer: Arc::new(Sealer::new().map_err(|source| Error::Io {
                path: staging_dir.clone(),
                source,
            })?),
            staging_dir,
            target_file_size: config.sink.target_file_size.bytes(),
            retry: RetryPolicy::default(),
            storage: None,
            log_retention: config.compaction.snapshot_retention.get(),
        })
    }

    /// Where `table` lives: `<warehouse>/<namespace>/<name>`.
    pub fn table_location(&self, table: &CatalogTable) -> String {
        format!("{}/{}/{}", self.warehouse, table.namespace, table.name)
    }

    fn table_url(&self, table: &CatalogTable) -> Result<Url> {
        let location = self.table_location(table);
        let url = if location.starts_with("s3://") {
            Url::parse(&format!("{location}/"))
                .map_err(|e| sink_error(table, format!("location {location}: {e}")))?
        } else {
            Url::from_directory_path(&location)
                .map_err(|()| sink_error(table, format!("location {location} is not absolute")))?
        };
        Ok(url)
    }
}

/// deltalake's object store options for an `s3://` warehouse: the endpoint (`[sink.s3]
/// endpoint`, else `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`), region, path-style addressing
/// and static keys of `[sink.s3]` (else the AWS credential chain deltalake reads itself).
fn storage_options(config: &Config) -> HashMap<String, String> {
    let s3 = &config.sink.s3;
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut options = HashMap::new();
    if let Some(endpoint) = s3
        .endpoint
        .clone()
        .or_else(|| env("AWS_ENDPOINT_URL_S3"))
        .or_else(|| env("AWS_ENDPOINT_URL"))
    {
        if endpoint.starts_with("http://") {
            options.insert("AWS_ALLOW_HTTP".to_string(), "true".to_string());
        }
        options.insert("AWS_ENDPOINT_URL".to_string(), endpoint);
    }
    if let Some(region) = s3.region.clone().or_else(|| env("AWS_REGION")) {
        options.insert("AWS_REGION".to_string(), region);
    }
    let style = if s3.force_path_style {
        "path"
    } else {
        "virtual"
    };
    options.insert("AWS_S3_ADDRESSING_STYLE".to_string(), style.to_string());
    // object_store sends these with every put, multipart upload and copy: data files, the
    // log's commits and checkpoints, optimize's output
    if let Some(sse) = s3.sse {
        options.insert(
            "aws_server_side_encryption".to_string(),
            sse.header().to_string(),
        );
    }
    if let Some(key) = &s3.kms_key_id {
        options.insert("aws_sse_kms_key_id".to_string(), key.clone());
    }
    if s3.bucket_key {
        options.insert("aws_sse_bucket_key_enabled".to_string(), "true".to_string());
    }
    if let Some(key_id) = &s3.access_key_id {
        options.insert("AWS_ACCESS_KEY_ID".to_string(), key_id.clone());
        options.insert(
            "AWS_SECRET_ACCESS_KEY".to_string(),
            s3.secret_access_key.expose().to_string(),
        );
    }
    options
}

/// A table the sink has prepared.
struct TableState {
    lake: CatalogTable,
    table: DeltaTable,
    /// The source shape it was last prepared or committed with.
    source: Arc<TableSchema>,
    layout: TableLayout,
    /// The checkpoint as last read or committed.
    checkpoint: Option<Lsn>,
    /// Parts staged for the next commit (its MERGE source).
    staged: Vec<StagedPart>,
    /// Data files written for the next commit, which only adds rows.
    pending: PendingFiles,
    /// The identity of the commit being made, in its `commitInfo` (`lakewriter.commit`): a
    /// commit whose answer was lost is recognised by it in the log.
    commit_id: String,
    /// The table's chunked copy under way as the table held it when prepared: its progress
    /// and the commits that brought its latest chunks in.
    copy: Option<tables::CopyState>,
}

impl TableState {
    /// The table's current columns, as Arrow.
    fn lake_schema(&self) -> Result<arrow::datatypes::SchemaRef> {
        Ok(self
            .table
            .snapshot()
            .map_err(|e| delta_error(&self.lake, "read the schema", e))?
            .snapshot()
            .arrow_schema())
    }
}

/// The Delta Lake [`Sink`].
pub struct DeltaSink {
    settings: DeltaSettings,
    tables: HashMap<TableId, TableState>,
    /// Where tables are registered for Athena and Spark (`sink.catalog = "glue"`).
    glue: Option<GlueCatalog>,
    /// The local catalog file tables are recorded in (`sink.catalog = "sqlite"`), for
    /// `query`, `verify`, `status` and `compact` to find them; with neither catalog, tables are
    /// found by listing the warehouse.
    sqlite: Option<SqliteCatalog>,
}

impl fmt::Debug for DeltaSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeltaSink")
            .field("warehouse", &self.settings.warehouse)
            .field("namespace", &self.settings.namespace)
            .field("tables", &self.tables.keys().collect::<Vec<_>>())
            .field("glue", &self.glue.is_some())
            .field("sqlite", &self.sqlite.is_some())
            .finish()
    }
}

impl DeltaSink {
    /// The sink of `config`, registering its tables in Glue when `sink.catalog = "glue"`, and
    /// recording them in the SQLite catalog file when `sink.catalog = "sqlite"` (see
    /// [`tables::catalog_path`]).
    pub async fn from_config(config: &Config) -> Result<Self> {
        let settings = DeltaSettings::from_config(config)?;
        let sqlite_path = tables::catalog_path(config, &settings);
        let sink = DeltaSink::new(settings);
        Ok(match config.sink.catalog {
            CatalogKind::Glue => sink.with_glue(GlueCatalog::new(
                crate::cloud::glue_client(config).await,
                config.sink.glue.catalog_id.clone(),
            )),
            CatalogKind::Sqlite => match sqlite_path {
                Some(path) => {
                    let catalog = SqliteCatalog::open(&path, &config.sink.sqlite.name)
                        .await
                        .map_err(|e| Error::Sink {
                            table: config.sink.namespace.clone(),
                            retryable: e.is_retryable(),
                            message: format!("open the catalog: {e}"),
                        })?;
                    sink.with_sqlite(catalog)
                }
                None => sink,
            },
            CatalogKind::S3tables => {
                return Err(Error::config(
                    "sink.catalog",
                    "S3 Tables holds Iceberg tables only: use sink.format = \"iceberg\"",
                ));
            }
            CatalogKind::Rest => {
                return Err(Error::config(
                    "sink.catalog",
                    "a REST catalog holds Iceberg tables only: use sink.format = \"iceberg\"",
                ));
            }
        })
    }

    /// A sink with `settings` that registers its tables nowhere.
    pub fn new(settings: DeltaSettings) -> Self {
        DeltaSink {
            settings,
            tables: HashMap::new(),
            glue: None,
            sqlite: None,
        }
    }

    /// This sink, recording every table it prepares in the SQLite catalog `catalog`.
    pub fn with_sqlite(mut self, catalog: SqliteCatalog) -> Self {
        self.sqlite = Some(catalog);
        self
    }

    /// This sink, registering every table it prepares or adds columns to in `glue`.
    pub fn with_glue(mut self, glue: GlueCatalog) -> Self {
        self.glue = Some(glue);
        self
    }

    /// Records `state`'s table in the SQLite catalog, if the sink has one, and registers it in
    /// Glue, if the sink has a Glue catalog, with the columns its Delta log holds now. Runs after the Delta commit that changed the columns, never inside
    /// one: a failure leaves the lake as committed and is reported against the table.
    async fn register(&self, state: &TableState) -> Result<()> {
        if let Some(catalog) = &self.sqlite {
            let location = self.settings.table_location(&state.lake);
            catalog
                .register_delta(&state.lake, &location)
                .await
                .map_err(|e| Error::Sink {
                    table: state.lake.to_string(),
                    message: format!("record the Delta table in the SQLite catalog: {e}"),
                    retryable: e.is_retryable(),
                })?;
        }
        let Some(glue) = &self.glue else {
            return Ok(());
        };
        let schema = state.lake_schema()?;
        glue.register_delta(
            &state.lake,
            &self.settings.table_location(&state.lake),
            &schema,
        )
        .await
        .map(|_| ())
        .map_err(|e| Error::Sink {
            table: state.lake.to_string(),
            message: format!("register the Delta table in Glue: {e}"),
            retryable: e.is_retryable(),
        })
    }

    /// The lake table of a source table.
    pub fn lake_table(&self, table: &TableId) -> CatalogTable {
        lake_table(&self.settings.namespace, table)
    }

    /// Opens the Delta table of `lake`; `None` when there is none yet.
    async fn open(&self, lake: &CatalogTable) -> Result<(DeltaTable, bool)> {
        let url = self.settings.table_url(lake)?;
        if let Ok(path) = url.to_file_path() {
            // deltalake's local store wants the table's directory to exist, even to say there
            // is no table in it
            std::fs::create_dir_all(&path).map_err(|source| Error::Io { path, source })?;
        }
        let mut builder = DeltaTableBuilder::from_url(url.clone())
            .map_err(|e| delta_error(lake, "open the table", e))?
            .with_storage_options(self.settings.storage_options.clone());
        if let Some(store) = &self.settings.storage {
            builder = builder.with_storage_backend(store.clone(), url);
        }
        let table = builder
            .build()
            .map_err(|e| delta_error(lake, "open the table", e))?;
        let mut table = table;
        let loaded = contained(lake, "load the table", table.load()).await?;
        match loaded {
            Ok(()) => Ok((table, true)),
            Err(DeltaTableError::NotATable(_)) => Ok((table, false)),
            Err(e) => Err(delta_error(lake, "load the table", e)),
        }
    }

    /// The checkpoint `table`'s latest commit carries.
    async fn read_checkpoint(lake: &CatalogTable, table: &DeltaTable) -> Result<Option<Lsn>> {
        tables::checkpoint(lake, table).await
    }

    async fn commit_prepared(&self, state: &mut TableState, delta: &TableDelta) -> Result<()> {
        if !delta.schema.same_shape(&state.source) {
            self.evolve(state, &delta.schema, false).await?;
            self.register(state).await?;
            state.source = delta.schema.clone();
        }
        let staged = std::mem::take(&mut state.staged);
        let adds = if state.pending.is_empty() {
            None
        } else {
            Some(self.finish_pending(state, delta, &staged).await?)
        };
        state.commit_id = uuid::Uuid::new_v4().to_string();
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            let committed = match &adds {
                Some(adds) => write::commit_files(state, delta, adds).await,
                None => write::commit(state, delta, &staged, &self.settings).await,
            };
            match committed {
                Ok(version) => break Ok(version),
                Err(e) => {
                    let e = match Self::after_failed_commit(state, delta.lsn, e).await {
                        Ok(version) => break Ok(version),
                        Err(e) => e,
                    };
                    // a lost race (a concurrent OPTIMIZE rewrote files the MERGE read): the
                    // whole commit again, on the reloaded table
                    if !is_lost_race(&e) || attempt >= self.settings.retry.max_attempts {
                        break Err(e);
                    }
                    let pause = self.settings.retry.backoff(attempt);
                    if let Some(m) = crate::metrics::installed() {
                        m.commit_retry(&state.lake.to_string(), true);
                    }
                    tracing::warn!(
                        table = %state.lake,
                        attempt,
                        error = %e,
                        pause_ms = pause.as_millis() as u64,
                        "delta commit failed; trying again"
                    );
                    tokio::time::sleep(pause).await;
                }
            }
        };
        for part in &staged {
            part.remove();
        }
        let version = result?;
        if let (Some(m), Some(adds)) = (crate::metrics::installed(), &adds) {
            let bytes = adds.iter().map(|a| a.size.max(0) as u64).sum();
            m.files(&delta.table, adds.len(), 0, bytes);
        }
        state.checkpoint = delta.lsn;
        tracing::info!(
            table = %state.lake,
            lsn = delta.lsn.map(|l| l.to_string()),
            staged = staged.len(),
            data_files = adds.as_ref().map_or(0, Vec::len),
            truncate = delta.truncate,
            version,
            "committed"
        );
        Ok(())
    }

    /// Reloads the table after a failed commit, so a retry starts from what the lake holds.
    /// A commit whose answer was lost but which landed (its `lakewriter.commit` identity is in
    /// the log) is a success: `Ok` with the table's version. Otherwise `error`, made lasting
    /// when the lake already holds a checkpoint at or past `lsn`: another writer commits the
    /// same source, and retrying would lose to it forever (deltalake reports such a race as a
    /// retryable conflict on the same app id).
    async fn after_failed_commit(
        state: &mut TableState,
        lsn: Option<Lsn>,
        error: Error,
    ) -> std::result::Result<u64, Error> {
        if let Err(e) = state.table.update_state().await {
            tracing::warn!(table = %state.lake, error = %e, "could not reload the table after a failed commit");
            return Err(error);
        }
        match (lsn, Self::read_checkpoint(&state.lake, &state.table).await) {
            (Some(lsn), Ok(Some(holds))) if holds >= lsn => {
                if holds == lsn && Self::landed(state).await {
                    let version = state.table.version().unwrap_or(0);
                    tracing::info!(
                        table = %state.lake,
                        lsn = %lsn,
                        version,
                        error = %error,
                        "a commit whose answer was lost had landed"
                    );
                    return Ok(version);
                }
                Err(sink_error(
                    &state.lake,
                    format!(
                        "the table already holds checkpoint {holds}, at or past this commit's \
                         ({lsn}): another writer is committing the same source (is a second \
                         lakewriter running?)"
                    ),
                ))
            }
            _ => Err(error),
        }
    }

    /// Whether the commit `state` is making (its `commit_id`) is among the table's latest.
    async fn landed(state: &TableState) -> bool {
        match state.table.history(Some(LANDED_WINDOW)).await {
            Ok(commits) => commits.into_iter().any(|c| {
                c.info.get(write::COMMIT_ID).and_then(|v| v.as_str()) == Some(&state.commit_id)
            }),
            Err(e) => {
                tracing::warn!(table = %state.lake, error = %e, "could not read the table's history");
                false
            }
        }
    }

    /// Adds `delta`'s own rows to the data files written for this commit and finishes them:
    /// the `add` actions of the commit. The commit must only add rows (or truncate first):
    /// one that would merge deletes, or parts staged for a MERGE beside the files, is refused
    /// (the pipeline stages a transaction's parts one way).
    async fn finish_pending(
        &self,
        state: &mut TableState,
        delta: &TableDelta,
        staged: &[StagedPart],
    ) -> Result<Vec<deltalake::kernel::Add>> {
        let merges = !delta.truncate
            && !state.layout.key.is_empty()
            && (has_rows(&delta.deletes) || staged.iter().any(|p| p.deletes.is_some()));
        if merges || !staged.is_empty() {
            state.pending.discard();
            return Err(sink_error(
                &state.lake,
                "a commit with parts written as data files (adding rows only) also has parts \
                 or deletes to merge: the transaction was staged both ways",
            ));
        }
        let lake_schema = state.lake_schema()?;
        let written = state
            .pending
            .write(
                &state.table,
                &lake_schema,
                &delta.rows,
                self.settings.target_file_size,
            )
            .await;
        let finished = match written {
            Ok(()) => state.pending.finish().await,
            Err(e) => Err(e),
        };
        finished.map_err(|e| {
            state.pending.discard();
            e.about(&state.lake, "finish the written data files")
        })
    }

    async fn stage_prepared(&self, state: &mut TableState, part: &TableDelta) -> Result<()> {
        if !part.schema.same_shape(&state.source) {
            self.evolve(state, &part.schema, false).await?;
            self.register(state).await?;
            state.source = part.schema.clone();
        }
        let lake_schema = state.lake_schema()?;
        if part.adds_only {
            if !part.truncate && !state.layout.key.is_empty() && has_rows(&part.deletes) {
                return Err(sink_error(
                    &state.lake,
                    "a part staged as adding rows only carries deletes (and its transaction \
                     does not truncate): its commit would have to merge",
                ));
            }
            state
                .pending
                .write(
                    &state.table,
                    &lake_schema,
                    &part.rows,
                    self.settings.target_file_size,
                )
                .await
                .map_err(|e| e.about(&state.lake, "write staged rows into data files"))?;
            tracing::debug!(table = %state.lake, "wrote a part of a transaction into uncommitted data files");
            return Ok(());
        }
        let staged = StagedPart::write(
            &self.settings.staging_dir,
            &self.settings.sealer,
            &state.lake,
            &lake_schema,
            &part.rows,
            &part.deletes,
        )?;
        tracing::debug!(table = %state.lake, "staged a part of a transaction for its commit");
        state.staged.push(staged);
        Ok(())
    }
}

impl Sink for DeltaSink {
    async fn prepare(
        &mut self,
        table: &TableId,
        schema: &TableSchema,
        layout: &TableLayout,
    ) -> Result<Option<Lsn>> {
        let lake = self.lake_table(table);
        if !self.tables.contains_key(table) {
            staging::remove_orphans(&self.settings.staging_dir, &lake);
        }
        let (opened, exists) = self.open(&lake).await?;
        let delta_table = if exists {
            opened
        } else {
            self.create(&lake, &opened, schema, layout).await?
        };
        let checkpoint = Self::read_checkpoint(&lake, &delta_table).await?;
        let copy = tables::copy_state(&lake, &delta_table).await?;
        let partition_columns = delta_table
            .snapshot()
            .map_err(|e| delta_error(&lake, "read the metadata", e))?
            .metadata()
            .partition_columns()
            .to_vec();
        if partition_columns != layout.partition_by {
            tracing::warn!(
                table = %lake,
                partition_by = ?layout.partition_by,
                lake = ?partition_columns,
                "the delta table keeps its partition columns; the configured ones differ and \
                 apply only to new tables"
            );
        }
        let mut state = TableState {
            lake,
            table: delta_table,
            source: Arc::new(schema.clone()),
            layout: layout.clone(),
            checkpoint,
            staged: Vec::new(),
            pending: PendingFiles::default(),
            commit_id: String::new(),
            copy,
        };
        if let Some(before) = self.tables.remove(table) {
            state.staged = before.staged;
            state.pending = before.pending;
        }
        // a table without a checkpoint is copied again from scratch: a column whose type
        // changed may then be replaced
        let lake = state.lake.clone();
        let evolved = contained(&lake, "evolve", async {
            self.evolve(&mut state, schema, checkpoint.is_none())
                .await?;
            Self::keep_stats_exact(&mut state).await?;
            self.register(&state).await
        })
        .await
        .and_then(|evolved| evolved);
        tracing::debug!(table = %state.lake, checkpoint = ?checkpoint, "prepared delta table");
        // known as it is in the lake even when it cannot take `schema`, for known_checkpoint
        // and mark_incomplete
        self.tables.insert(table.clone(), state);
        evolved.map(|()| checkpoint)
    }

    async fn commit(&mut self, delta: TableDelta) -> Result<()> {
        let Some(mut state) = self.tables.remove(&delta.table) else {
            return Err(sink_error(
                &self.lake_table(&delta.table),
                "commit before prepare: the sink does not know the table yet",
            ));
        };
        let lake = state.lake.clone();
        let result = contained(&lake, "commit", self.commit_prepared(&mut state, &delta))
            .await
            .and_then(|committed| committed);
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
        let lake = state.lake.clone();
        let result = contained(&lake, "stage", self.stage_prepared(&mut state, &part))
            .await
            .and_then(|staged| staged);
        self.tables.insert(part.table.clone(), state);
        result
    }

    fn discard_staged(&mut self, table: &TableId) {
        if let Some(state) = self.tables.get_mut(table) {
            for part in state.staged.drain(..) {
                part.remove();
            }
            state.pending.discard();
        }
    }

    fn known_checkpoint(&self, table: &TableId) -> Option<Lsn> {
        self.tables.get(table).and_then(|s| s.checkpoint)
    }

    fn keeps_copy_progress(&self) -> bool {
        true
    }

    fn copy_progress(&self, table: &TableId) -> Option<String> {
        self.tables
            .get(table)
            .and_then(|s| s.copy.as_ref())
            .map(|c| c.progress.clone())
    }

    fn copy_commits(&self, table: &TableId) -> Vec<crate::table::ChunkCommit> {
        self.tables
            .get(table)
            .and_then(|s| s.copy.as_ref())
            .map(|c| c.commits.clone())
            .unwrap_or_default()
    }

    async fn mark_incomplete(&mut self, table: &TableId) -> Result<()> {
        let Some(state) = self.tables.get_mut(table) else {
            return Err(sink_error(
                &self.lake_table(table),
                "mark incomplete before prepare: the sink does not know the table yet",
            ));
        };
        write::commit_checkpoint(state, None).await?;
        state.checkpoint = None;
        tracing::info!(table = %state.lake, "marked incomplete: the next start copies it again");
        Ok(())
    }

    async fn lookup(&mut self, table: &TableId, keys: &RecordBatch) -> Result<Vec<RecordBatch>> {
        let state = self.tables.get(table).ok_or_else(|| {
            sink_error(
                &self.lake_table(table),
                "lookup before prepare: the sink does not know the table yet",
            )
        })?;
        lookup::lookup(state, keys)
            .await
            .map_err(|e| e.about(&state.lake, "look up rows by key"))
    }
}

/// Whether any of `batches` has a row.
/// The table property that keeps a table of `fields` to exact statistics, and its value.
fn stats_property<'a>(fields: impl IntoIterator<Item = &'a Field>) -> (TableProperty, String) {
    match types::stats_columns(fields) {
        Some(columns) => (TableProperty::DataSkippingStatsColumns, columns),
        None => (
            TableProperty::DataSkippingNumIndexedCols,
            types::NO_STATS.to_string(),
        ),
    }
}

fn has_rows(batches: &[RecordBatch]) -> bool {
    batches.iter().any(|b| b.num_rows() > 0)
}

/// A failure inside a Delta operation, before it is named after its table.
#[derive(Debug)]
enum Failure {
    Delta(DeltaTableError),
    DataFusion(datafusion::error::DataFusionError),
    Message(String),
}

impl From<DeltaTableError> for Failure {
    fn from(e: DeltaTableError) -> Self {
        Failure::Delta(e)
    }
}

impl From<datafusion::error::DataFusionError> for Failure {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        Failure::DataFusion(e)
    }
}

impl Failure {
    /// The sink error of this failure while doing `context` on `table`.
    fn about(self, table: &CatalogTable, context: &str) -> Error {
        match self {
            Failure::Delta(e) => delta_error(table, context, e),
            Failure::DataFusion(e) => Error::Sink {
                table: table.to_string(),
                message: format!("{context}: {e}"),
                // an object store hiccup under DataFusion may pass; planning errors will not
                retryable: matches!(
                    e.find_root(),
                    datafusion::error::DataFusionError::ObjectStore(_)
                        | datafusion::error::DataFusionError::IoError(_)
                ),
            },
            Failure::Message(message) => sink_error(table, format!("{context}: {message}")),
        }
    }
}

/// How many of the latest commits are searched for a commit whose answer was lost: the
/// writer's own, plus what other writers (compaction) landed on top meanwhile.
const LANDED_WINDOW: usize = 20;

/// Runs `work` on `lake` (loading, evolving, staging, committing), turning a panic inside it
/// (the Delta kernel's executor has panicked on a log it could not parse) into the table's
/// error, which `on_table_error` handles, instead of unwinding through the pipeline and
/// ending the run; `work`'s own output otherwise.
pub(crate) async fn contained<T>(
    lake: &impl fmt::Display,
    what: &str,
    work: impl std::future::Future<Output = T>,
) -> Result<T> {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(output) => Ok(output),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|m| m.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(sink_error(
                lake,
                format!("{what}: the Delta kernel failed inside ({message})"),
            ))
        }
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

/// A deltalake failure while doing `context`: lost commit races (another writer committed the
/// same version, or a conflicting change, past deltalake's own retries) and storage failures
/// may pass on a retry.
pub(crate) fn delta_error(table: &impl fmt::Display, context: &str, e: DeltaTableError) -> Error {
    use deltalake::kernel::transaction::TransactionError;
    // the commit was refused before its log entry was written: nothing of it landed
    let lost_race = match &e {
        DeltaTableError::VersionAlreadyExists(_) => true,
        DeltaTableError::Transaction { source } => matches!(
            source,
            TransactionError::VersionAlreadyExists(_)
                | TransactionError::CommitConflict(_)
                | TransactionError::MaxCommitAttempts(_)
        ),
        _ => false,
    };
    let storage = match &e {
        DeltaTableError::ObjectStore { .. } | DeltaTableError::Io { .. } => true,
        DeltaTableError::Transaction { source } => {
            matches!(source, TransactionError::ObjectStore { .. })
        }
        _ => false,
    };
    Error::Sink {
        table: table.to_string(),
        message: if lost_race {
            format!("{context}: {LOST_RACE}{e}")
        } else {
            format!("{context}: {e}")
        },
        retryable: lost_race || storage,
    }
}

/// How the message of a commit that lost a race begins, after its context: the commit did not
/// land, so the sink may run it again on the reloaded table. (A storage failure may have
/// landed the commit's log entry before it was reported, so it is left to the run: a restart
/// reads the checkpoint the lake really holds.)
const LOST_RACE: &str = "lost a commit race: ";

/// Whether `error` is a commit that lost a race (see [`LOST_RACE`]).
pub(crate) fn is_lost_race(error: &Error) -> bool {
    matches!(error, Error::Sink { retryable: true, message, .. } if message.contains(LOST_RACE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkpoint_round_trips_and_minus_one_means_none() {
        let lsn = Lsn(0x16_B374_D848);
        assert_eq!(checkpoint_of(Some(txn_version(Some(lsn)))), Some(lsn));
        assert_eq!(txn_version(None), -1);
        assert_eq!(checkpoint_of(Some(-1)), None);
        assert_eq!(checkpoint_of(None), None);
        assert_eq!(
            checkpoint_app_id(&CatalogTable::new("lake", "orders")),
            "lakewriter.lsn:lake.orders"
        );
    }

    #[tokio::test]
    async fn a_panic_inside_the_kernel_is_the_tables_error_not_the_runs() {
        let lake = CatalogTable::new("lake", "orders");
        let failed = contained(&lake, "commit", async {
            if lake.name == "orders" {
                panic!("TokioMultiThreadExecutor has crashed: RecvError");
            }
        })
        .await;
        let error = failed.expect_err("the panic comes back as an error");
        assert!(crate::pipeline::is_table_error(&error), "{error}");
        let message = error.to_string();
        assert!(
            message.contains("lake.orders") && message.contains("RecvError"),
            "{message}"
        );
        assert_eq!(contained(&lake, "commit", async { 7 }).await.ok(), Some(7));
    }
}
