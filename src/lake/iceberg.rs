//! The lake's tables as DataFusion tables, with a merge-on-read that scales.
//!
//! iceberg 0.10.1's scan turns each equality-deleted row into a predicate, so its cost grows
//! with rows × deletes. Here a table's current snapshot becomes a plan DataFusion runs as a
//! hash anti-join: the live data files (each tagged with its data sequence number and its
//! partition) left-anti-joined with the rows of the live equality-delete files (tagged the
//! same way) on the key, the partition, and `data sequence < delete sequence` — the Iceberg
//! rule that a delete applies to files committed before it, in its own partition.
//!
//! Position deletes (other engines' merge-on-read `DELETE` and `UPDATE`) name a data file and
//! a row position: a data file they apply to (its path named, its data sequence number at or
//! below the delete's, Iceberg's rule) is read with those rows left out by a Parquet row
//! selection, then joined with the equality deletes like any other. Format v3 deletion
//! vectors are refused, naming the file.
//!
//! Files are read through DataFusion's Parquet reader with the table's current schema, by
//! column name: columns added since a file was written read as null, widened ones are cast.
//! It reads through the catalog, never around it: the file list is the snapshot's manifests.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{MemorySchemaProvider, Session, TableProvider};
use datafusion::common::{DataFusionError, JoinType};
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::LexOrdering;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::prelude::{DataFrame, Expr, ParquetReadOptions, SessionContext, col, lit};
use futures::TryStreamExt;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::io::FileIO;
use iceberg::spec::{
    DataContentType, DataFileFormat, ManifestContentType, ManifestList, TableMetadata,
};

use crate::catalog::{Catalog, CatalogTable, LakeCatalog};
use crate::cloud::S3Location;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::sink::iceberg::{
    DeletedPositions, Keep, VectorAt, catalog_error, checkpoint, conform, file_io, read_data_file,
};

use super::table::LakeTable;

const SEQUENCE: &str = "__lakewriter_seq";
const PARTITION: &str = "__lakewriter_partition";
const DELETE_SEQUENCE: &str = "__lakewriter_delete_seq";
const DELETE_PARTITION: &str = "__lakewriter_delete_partition";
const DELETE_PREFIX: &str = "__lakewriter_delete_";

/// A live file of the current snapshot.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LiveFile {
    pub path: String,
    /// Its data sequence number.
    pub sequence: i64,
    /// The partition spec id and the partition tuple, as one comparable text.
    pub partition: String,
    /// The partition spec it was written with, and its partition tuple.
    pub spec_id: i32,
    pub partition_value: iceberg::spec::Struct,
    pub size: u64,
    /// Rows it holds (before any delete); of a deletion vector, the rows it removes.
    pub records: u64,
    /// Of a deletion vector (format v3): where in its Puffin file `path` it is, and the data
    /// file it removes rows of. Several vectors share one file.
    pub vector: Option<VectorAt>,
}

/// The files of a table's current snapshot.
#[derive(Debug, Clone, Default)]
pub(crate) struct LiveFiles {
    pub data: Vec<LiveFile>,
    /// Equality deletes, by their equality field ids.
    pub deletes: BTreeMap<Vec<i32>, Vec<LiveFile>>,
    /// Position deletes: Parquet files of `file_path`, `pos`, and deletion vectors.
    pub positions: Vec<LiveFile>,
}

impl LiveFiles {
    /// Live delete files, equality and position.
    pub fn delete_count(&self) -> usize {
        self.deletes.values().map(Vec::len).sum::<usize>() + self.positions.len()
    }
}

/// A position-delete file and what it removes.
#[derive(Debug, Clone)]
pub(crate) struct PositionDeleteFile {
    pub file: LiveFile,
    pub removes: DeletedPositions,
}

impl PositionDeleteFile {
    /// Whether it applies to `data`: it names the file, and the file's data sequence number is
    /// at or below its own (Iceberg's rule for position deletes).
    pub fn applies_to(&self, data: &LiveFile) -> bool {
        data.sequence <= self.file.sequence && self.removes.of(&data.path).is_some()
    }
}

/// What the position-delete files `files` remove, each read once.
pub(crate) async fn load_positions(
    io: &FileIO,
    name: &CatalogTable,
    files: &[LiveFile],
) -> Result<Vec<PositionDeleteFile>> {
    let mut loaded = Vec::with_capacity(files.len());
    for file in files {
        let removes = DeletedPositions::load_entry(io, &file.path, file.vector.as_ref())
            .await
            .map_err(|e| sink_error(name, format!("read position deletes: {e}")))?;
        loaded.push(PositionDeleteFile {
            file: file.clone(),
            removes,
        });
    }
    Ok(loaded)
}

/// The positions `positions` remove from `data`, over every delete file that applies to it.
fn removed_from(data: &LiveFile, positions: &[PositionDeleteFile]) -> Option<BTreeSet<u64>> {
    let mut removed: Option<BTreeSet<u64>> = None;
    for delete in positions.iter().filter(|d| d.applies_to(data)) {
        if let Some(rows) = delete.removes.of(&data.path) {
            match &mut removed {
                // the first delete file's set copied whole (a linear clone of the tree)
                None => removed = Some(rows.clone()),
                Some(removed) => removed.extend(rows.iter().copied()),
            }
        }
    }
    removed
}

/// A DataFusion session over the lake tables of `config`, each registered as
/// `namespace.table` (only `only` when given, as the lake names it). Returns the session and
/// the tables it registered. Delta tables are read by [`super::delta`].
pub(crate) async fn session(
    config: &Config,
    only: Option<&CatalogTable>,
) -> Result<(SessionContext, Vec<LakeTable>)> {
    let namespace_error = |e| catalog_error(&config.sink.namespace, e);
    let catalog = LakeCatalog::from_config(config)
        .await
        .map_err(namespace_error)?;
    let io = file_io(config)?;
    let ctx = SessionContext::new();
    register_object_store(config, &ctx)?;
    let names = match only {
        Some(table) => vec![table.clone()],
        None => catalog
            .list(&config.sink.namespace)
            .await
            .map_err(namespace_error)?,
    };
    let schemas = MemorySchemaProvider::new();
    let mut tables = Vec::new();
    for name in names {
        let Some(pointer) = catalog.load(&name).await.map_err(namespace_error)? else {
            if only.is_some() {
                return Err(Error::Sink {
                    table: name.to_string(),
                    message: "no such table in the catalog".into(),
                    retryable: false,
                });
            }
            continue;
        };
        let metadata = TableMetadata::read_from(&io, &pointer.metadata_location)
            .await
            .map_err(|e| Error::Sink {
                table: name.to_string(),
                message: format!("read {}: {e}", pointer.metadata_location),
                retryable: true,
            })?;
        if !metadata
            .location()
            .starts_with(config.sink.warehouse.trim_end_matches('/'))
        {
            register_location(config, &ctx, metadata.location())?;
        }
        let (table, frame) =
            table_frame(&ctx, &io, &name, &pointer.metadata_location, &metadata).await?;
        datafusion::catalog::SchemaProvider::register_table(
            &schemas,
            name.name.clone(),
            frame.into_view(),
        )
        .map_err(|e| df_error(&name, "register", e))?;
        tables.push(table);
    }
    super::table::register_namespace(&ctx, config, schemas)?;
    Ok((ctx, tables))
}

/// The plan of `name`'s current snapshot: data files anti-joined with equality deletes.
pub(crate) async fn table_frame(
    ctx: &SessionContext,
    io: &FileIO,
    name: &CatalogTable,
    metadata_location: &str,
    metadata: &TableMetadata,
) -> Result<(LakeTable, DataFrame)> {
    let iceberg_schema = metadata.current_schema();
    let schema = plain(
        &schema_to_arrow_schema(iceberg_schema)
            .map_err(|e| sink_error(name, format!("convert the schema to Arrow: {e}")))?,
    );
    let key = key_columns(iceberg_schema);
    let files = live_files(io, name, metadata).await?;
    let table = LakeTable {
        name: name.clone(),
        metadata_location: metadata_location.to_string(),
        checkpoint: checkpoint(name, metadata)?,
        key,
        schema: schema.clone(),
        data_files: files.data.len(),
        delete_files: files.delete_count(),
    };
    let frame = files_frame(ctx, io, name, metadata, &files).await?;
    Ok((table, frame))
}

/// The plan of the rows of `files.data` that `files.deletes` and `files.positions` leave, in
/// the table's current schema: a subset of a snapshot's files, as `compact` rewrites them.
pub(crate) async fn files_frame(
    ctx: &SessionContext,
    io: &FileIO,
    name: &CatalogTable,
    metadata: &TableMetadata,
    files: &LiveFiles,
) -> Result<DataFrame> {
    let iceberg_schema = metadata.current_schema();
    let schema = plain(
        &schema_to_arrow_schema(iceberg_schema)
            .map_err(|e| sink_error(name, format!("convert the schema to Arrow: {e}")))?,
    );
    let columns: Vec<Expr> = schema
        .fields()
        .iter()
        .map(|f| col(quoted(f.name())))
        .collect();
    let positions = load_positions(io, name, &files.positions).await?;
    let mut whole = Vec::new();
    let mut hit = Vec::new();
    for file in &files.data {
        match removed_from(file, &positions) {
            Some(removed) => hit.push((file, Arc::new(removed))),
            None => whole.push(file.clone()),
        }
    }
    let whole = read_groups(ctx, name, &whole, &schema, SEQUENCE, PARTITION).await?;
    let hit = read_without(ctx, io, name, hit, &schema).await?;
    let data = match (whole, hit) {
        (Some(whole), Some(hit)) => Some(
            whole
                .union(hit)
                .map_err(|e| df_error(name, "plan the union of files", e))?,
        ),
        (whole, hit) => whole.or(hit),
    };
    let mut data = match data {
        Some(data) => data,
        None => {
            return ctx
                .read_batch(RecordBatch::new_empty(schema.clone()))
                .map_err(|e| df_error(name, "plan an empty table", e));
        }
    };
    for (ids, deletes) in &files.deletes {
        let delete_columns: Vec<Arc<Field>> = ids
            .iter()
            .map(|id| {
                let field_name = iceberg_schema.name_by_field_id(*id).ok_or_else(|| {
                    sink_error(
                        name,
                        format!("equality-delete field id {id} is not in the schema"),
                    )
                })?;
                schema
                    .field_with_name(field_name)
                    .map(|f| Arc::new(f.clone()))
                    .map_err(|e| sink_error(name, e.to_string()))
            })
            .collect::<Result<_>>()?;
        let delete_schema = Arc::new(Schema::new(delete_columns.clone()));
        let Some(frame) = read_groups(
            ctx,
            name,
            deletes,
            &delete_schema,
            DELETE_SEQUENCE,
            DELETE_PARTITION,
        )
        .await?
        else {
            continue;
        };
        // the delete side's key columns renamed apart from the data side's
        let mut renamed: Vec<Expr> = delete_columns
            .iter()
            .map(|f| col(quoted(f.name())).alias(format!("{DELETE_PREFIX}{}", f.name())))
            .collect();
        renamed.push(col(DELETE_SEQUENCE));
        renamed.push(col(DELETE_PARTITION));
        let frame = frame
            .select(renamed)
            .map_err(|e| df_error(name, "plan the deletes", e))?;
        let mut on: Vec<Expr> = delete_columns
            .iter()
            .map(|f| col(quoted(f.name())).eq(col(format!("{DELETE_PREFIX}{}", f.name()))))
            .collect();
        on.push(col(PARTITION).eq(col(DELETE_PARTITION)));
        on.push(col(SEQUENCE).lt(col(DELETE_SEQUENCE)));
        data = data
            .join_on(frame, JoinType::LeftAnti, on)
            .map_err(|e| df_error(name, "plan the merge-on-read", e))?;
    }
    data.select(columns)
        .map_err(|e| df_error(name, "plan the projection", e))
}

/// Reads `files` grouped by sequence number and partition, each group tagged with both, as
/// one frame in `schema` (plus the two tags); `None` for no file.
async fn read_groups(
    ctx: &SessionContext,
    name: &CatalogTable,
    files: &[LiveFile],
    schema: &SchemaRef,
    sequence_column: &str,
    partition_column: &str,
) -> Result<Option<DataFrame>> {
    let mut groups: BTreeMap<(i64, &str), Vec<String>> = BTreeMap::new();
    for file in files {
        groups
            .entry((file.sequence, file.partition.as_str()))
            .or_default()
            .push(file_url(&file.path));
    }
    let mut frame: Option<DataFrame> = None;
    for ((sequence, partition), paths) in groups {
        let options = ParquetReadOptions {
            file_extension: "",
            schema: Some(schema),
            ..Default::default()
        };
        let group = ctx
            .read_parquet(paths, options)
            .await
            .map_err(|e| df_error(name, "read data files", e))?
            .with_column(sequence_column, lit(sequence))
            .and_then(|f| f.with_column(partition_column, lit(partition)))
            .map_err(|e| df_error(name, "tag data files", e))?;
        frame = Some(match frame {
            None => group,
            Some(frame) => frame
                .union(group)
                .map_err(|e| df_error(name, "plan the union of files", e))?,
        });
    }
    Ok(frame)
}

/// Reads each data file of `files` without the rows at its positions, grouped by sequence
/// number and partition and tagged with both, as [`read_groups`] does; `None` for no file.
async fn read_without(
    ctx: &SessionContext,
    io: &FileIO,
    name: &CatalogTable,
    files: Vec<(&LiveFile, Arc<BTreeSet<u64>>)>,
    schema: &SchemaRef,
) -> Result<Option<DataFrame>> {
    let mut groups: BTreeMap<(i64, &str), Vec<FileWithout>> = BTreeMap::new();
    for (file, removed) in files {
        groups
            .entry((file.sequence, file.partition.as_str()))
            .or_default()
            .push((file.path.clone(), removed));
    }
    let mut frame: Option<DataFrame> = None;
    for ((sequence, partition), files) in groups {
        let table = WithoutPositions {
            io: io.clone(),
            files,
            schema: schema.clone(),
        };
        let group = ctx
            .read_table(Arc::new(table))
            .map_err(|e| df_error(name, "read data files", e))?
            .with_column(SEQUENCE, lit(sequence))
            .and_then(|f| f.with_column(PARTITION, lit(partition)))
            .map_err(|e| df_error(name, "tag data files", e))?;
        frame = Some(match frame {
            None => group,
            Some(frame) => frame
                .union(group)
                .map_err(|e| df_error(name, "plan the union of files", e))?,
        });
    }
    Ok(frame)
}

/// A data file's path and the positions left out of it.
type FileWithout = (String, Arc<BTreeSet<u64>>);

/// Data files with the rows at their positions left out, as one table: a scan reads only the
/// columns the query projects, each file a partition of its own (read side by side).
#[derive(Debug)]
struct WithoutPositions {
    io: FileIO,
    files: Vec<FileWithout>,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for WithoutPositions {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _: &dyn Session,
        projection: Option<&Vec<usize>>,
        _: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let schema = match projection {
            Some(columns) => Arc::new(self.schema.project(columns)?),
            None => self.schema.clone(),
        };
        let streams = self
            .files
            .iter()
            .map(|(path, removed)| {
                Arc::new(LiveRows {
                    io: self.io.clone(),
                    path: path.clone(),
                    removed: removed.clone(),
                    schema: schema.clone(),
                }) as Arc<dyn PartitionStream>
            })
            .collect();
        let plan = StreamingTableExec::try_new(
            schema,
            streams,
            None,
            Vec::<LexOrdering>::new(),
            false,
            limit,
        )?;
        Ok(Arc::new(plan))
    }
}

/// The live rows of one data file that position deletes apply to, read by column name into
/// `schema` (the table's current schema, or the part of it a query projects) as DataFusion
/// consumes them: only those columns are decoded.
#[derive(Debug)]
struct LiveRows {
    io: FileIO,
    path: String,
    removed: Arc<BTreeSet<u64>>,
    schema: SchemaRef,
}

impl PartitionStream for LiveRows {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (io, path, removed, schema) = (
            self.io.clone(),
            self.path.clone(),
            self.removed.clone(),
            self.schema.clone(),
        );
        let open = async move {
            let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
            let reader = read_data_file(&io, &path, &removed, Keep::AllBut, Some(&columns))
                .await
                .map_err(DataFusionError::Execution)?;
            let batches = reader.map(move |batch| {
                batch
                    .map_err(|e| DataFusionError::Execution(format!("{path}: {e}")))
                    .and_then(|b| {
                        conform(&b, &schema)
                            .map_err(|e| DataFusionError::Execution(format!("{path}: {e}")))
                    })
            });
            Ok::<_, DataFusionError>(futures::stream::iter(batches))
        };
        Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::once(open).try_flatten(),
        ))
    }
}

/// The manifest list of `snapshot` of table `name`: the manifests a reader of it plans over.
pub(crate) async fn manifest_list(
    io: &FileIO,
    name: &CatalogTable,
    snapshot: &iceberg::spec::Snapshot,
    metadata: &TableMetadata,
) -> Result<ManifestList> {
    let list_error = |e: iceberg::Error| {
        sink_error(
            name,
            format!("read manifest list {}: {e}", snapshot.manifest_list()),
        )
    };
    let bytes = io
        .new_input(snapshot.manifest_list())
        .map_err(list_error)?
        .read()
        .await
        .map_err(list_error)?;
    ManifestList::parse_with_version(&bytes, metadata.format_version()).map_err(list_error)
}

/// The live files of the current snapshot, with their data sequence numbers and partitions.
pub(crate) async fn live_files(
    io: &FileIO,
    name: &CatalogTable,
    metadata: &TableMetadata,
) -> Result<LiveFiles> {
    let Some(snapshot) = metadata.current_snapshot() else {
        return Ok(LiveFiles::default());
    };
    live_files_at(io, name, metadata, snapshot, &mut ManifestCache::default()).await
}

/// The live files of each manifest read so far, by the manifest's path: the snapshots of a
/// table share most of their manifests, so a walk over many snapshots reads each once.
#[derive(Debug, Default)]
pub(crate) struct ManifestCache {
    manifests: std::collections::HashMap<String, Arc<LiveFiles>>,
}

/// The live files of `snapshot`, with their data sequence numbers and partitions.
pub(crate) async fn live_files_at(
    io: &FileIO,
    name: &CatalogTable,
    metadata: &TableMetadata,
    snapshot: &iceberg::spec::Snapshot,
    cache: &mut ManifestCache,
) -> Result<LiveFiles> {
    let mut files = LiveFiles::default();
    let list = manifest_list(io, name, snapshot, metadata).await?;
    for manifest_file in list.entries() {
        let live = match cache.manifests.get(&manifest_file.manifest_path) {
            Some(live) => live.clone(),
            None => {
                let live = Arc::new(manifest_live_files(io, name, manifest_file).await?);
                cache
                    .manifests
                    .insert(manifest_file.manifest_path.clone(), live.clone());
                live
            }
        };
        files.data.extend(live.data.iter().cloned());
        files.positions.extend(live.positions.iter().cloned());
        for (ids, deletes) in &live.deletes {
            files
                .deletes
                .entry(ids.clone())
                .or_default()
                .extend(deletes.iter().cloned());
        }
    }
    Ok(files)
}

/// The live entries of one manifest.
async fn manifest_live_files(
    io: &FileIO,
    name: &CatalogTable,
    manifest_file: &iceberg::spec::ManifestFile,
) -> Result<LiveFiles> {
    let mut files = LiveFiles::default();
    let manifest = manifest_file.load_manifest(io).await.map_err(|e| {
        sink_error(
            name,
            format!("read manifest {}: {e}", manifest_file.manifest_path),
        )
    })?;
    for entry in manifest.entries().iter().filter(|e| e.is_alive()) {
        let sequence = entry.sequence_number().ok_or_else(|| {
            sink_error(
                name,
                format!(
                    "{}: a live file without a sequence number",
                    entry.file_path()
                ),
            )
        })?;
        let file = entry.data_file();
        let live = LiveFile {
            path: file.file_path().to_string(),
            sequence,
            partition: format!("{}/{:?}", manifest_file.partition_spec_id, file.partition()),
            spec_id: manifest_file.partition_spec_id,
            partition_value: file.partition().clone(),
            size: file.file_size_in_bytes(),
            records: file.record_count(),
            vector: VectorAt::of(file).map_err(|m| sink_error(name, m))?,
        };
        match (manifest_file.content, file.content_type()) {
            (ManifestContentType::Data, _) => files.data.push(live),
            (ManifestContentType::Deletes, DataContentType::EqualityDeletes) => {
                let ids = file.equality_ids().unwrap_or_default();
                files.deletes.entry(ids).or_default().push(live);
            }
            (ManifestContentType::Deletes, DataContentType::PositionDeletes)
                if file.file_format() == DataFileFormat::Parquet || live.vector.is_some() =>
            {
                files.positions.push(live);
            }
            (ManifestContentType::Deletes, _) => {
                return Err(sink_error(
                    name,
                    format!(
                        "{}: {:?} deletes in {} files are not supported; compact the table \
                         with the engine that wrote them to apply them",
                        file.file_path(),
                        file.content_type(),
                        file.file_format()
                    ),
                ));
            }
        }
    }
    Ok(files)
}

/// The names of `schema`'s key (identifier) columns.
pub(crate) fn key_columns(schema: &iceberg::spec::Schema) -> Vec<String> {
    schema
        .identifier_field_ids()
        .filter_map(|id| schema.name_by_field_id(id).map(str::to_string))
        .collect()
}

/// The schema without field metadata (Iceberg field ids), for DataFusion's readers.
pub(super) fn plain(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_metadata(Default::default()))
            .collect::<Vec<_>>(),
    ))
}

/// A column name as DataFusion's `col` takes it verbatim (quoted: case and dots kept).
pub(crate) fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A file path as a URL DataFusion's object stores resolve.
pub(super) fn file_url(path: &str) -> String {
    if path.starts_with('/') {
        format!("file://{path}")
    } else {
        path.to_string()
    }
}

/// Registers the S3 store of an `s3://` warehouse (local files need none).
pub(crate) fn register_object_store(config: &Config, ctx: &SessionContext) -> Result<()> {
    register_location(config, ctx, &config.sink.warehouse)
}

/// Registers the S3 store of the bucket `location` (`s3://bucket/…`) is in, with the
/// warehouse's S3 settings: a table whose files are elsewhere than the warehouse (S3 Tables
/// gives each table storage of its own) is read through it. Local files need none.
pub(crate) fn register_location(
    config: &Config,
    ctx: &SessionContext,
    location: &str,
) -> Result<()> {
    let Some(location) =
        S3Location::parse(location).map_err(|m| Error::config("sink.warehouse", m))?
    else {
        return Ok(());
    };
    let s3 = &config.sink.s3;
    let mut builder = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(&location.bucket)
        .with_virtual_hosted_style_request(!s3.force_path_style);
    let region = s3
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok());
    if let Some(region) = region {
        builder = builder.with_region(region);
    }
    let endpoint = s3
        .endpoint
        .clone()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok())
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
    if let Some(endpoint) = endpoint {
        builder = builder
            .with_allow_http(endpoint.starts_with("http://"))
            .with_endpoint(endpoint);
    }
    if let Some(key) = &s3.access_key_id {
        builder = builder
            .with_access_key_id(key)
            .with_secret_access_key(s3.secret_access_key.expose());
    }
    // queries only read; should anything write through this store, it is encrypted too
    let mut encryption = Vec::new();
    if let Some(sse) = s3.sse {
        encryption.push(("aws_server_side_encryption", sse.header().to_string()));
    }
    if let Some(key) = &s3.kms_key_id {
        encryption.push(("aws_sse_kms_key_id", key.clone()));
    }
    if s3.bucket_key {
        encryption.push(("aws_sse_bucket_key_enabled", "true".to_string()));
    }
    for (name, value) in encryption {
        let key = name
            .parse::<object_store::aws::AmazonS3ConfigKey>()
            .map_err(|e| Error::config("sink.s3", format!("{name}: {e}")))?;
        builder = builder.with_config(key, value);
    }
    let store = builder
        .build()
        .map_err(|e| Error::config("sink.s3", format!("the S3 store for queries: {e}")))?;
    let url = url::Url::parse(&format!("s3://{}", location.bucket))
        .map_err(|e| Error::config("sink.warehouse", e.to_string()))?;
    ctx.register_object_store(&url, Arc::new(store));
    Ok(())
}

pub(super) fn sink_error(table: &CatalogTable, message: impl Into<String>) -> Error {
    Error::Sink {
        table: table.to_string(),
        message: message.into(),
        retryable: false,
    }
}

pub(super) fn df_error(
    table: &CatalogTable,
    context: &str,
    e: datafusion::error::DataFusionError,
) -> Error {
    sink_error(table, format!("{context}: {e}"))
}
