//! What a lake table holds for `export`: its live rows at its current version, or only what
//! changed since an earlier version — the live rows of the keys touched since, and the touched
//! keys that are gone.
//!
//! Iceberg: a key is touched by a snapshot that adds a data file holding it, adds an equality
//! delete naming it, adds a position delete naming a row that holds it (another engine's
//! merge-on-read `DELETE` or `UPDATE`), or removes a data file holding it (a truncate, another
//! engine's copy-on-write rewrite). A compaction (`replace`) moves rows without changing them and
//! touches nothing. The final state of the touched keys is read from the current version by
//! merge-on-read — from the data files added since the earlier version only, unless a
//! snapshot in between removed data files — so any number of commits in between collapse
//! into one row or one delete per key.
//!
//! Delta (copy-on-write, no deletes to read): the files live now and not then are compared
//! with the files live then and not now, row by row; the rows only the new side holds are the
//! changed rows, the keys only the old side holds are gone.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::JoinType;
use datafusion::prelude::{DataFrame, Expr, ParquetReadOptions, SessionContext, col};
use iceberg::spec::{Operation, TableMetadata};

use super::iceberg::{
    LiveFile, ManifestCache, df_error, file_url, live_files_at, quoted, register_location,
    register_object_store, sink_error, table_frame,
};
use super::table::LakeTable;
use crate::catalog::{Catalog, CatalogTable, LakeCatalog};
use crate::config::{Config, TableFormat};
use crate::error::{Error, Result};
use crate::sink::iceberg::{DeletedPositions, catalog_error, conform, file_io};

/// A version of a lake table: an Iceberg snapshot or a Delta table version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LakeVersion {
    /// The Iceberg snapshot id, or the Delta version.
    pub id: i64,
    /// When it was committed, in milliseconds since the epoch.
    pub committed_at_ms: i64,
}

/// What to read of a lake table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// Every live row of the current version.
    Everything,
    /// What changed after this version (an Iceberg snapshot id, a Delta version).
    Since(i64),
    /// Every live row of an earlier version: time travel.
    AsOf(AsOf),
}

/// A version of the past, as a user names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// An Iceberg snapshot id, or a Delta version.
    Version(i64),
    /// The version current at this time, in milliseconds since the epoch: the newest one
    /// committed at or before it.
    Time(i64),
}

impl std::str::FromStr for AsOf {
    type Err = String;

    /// A whole number is a version; anything else a timestamp (`2026-01-31T09:26:56Z`, a
    /// zone-less one read as UTC).
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        if let Ok(version) = text.trim().parse::<i64>() {
            return Ok(AsOf::Version(version));
        }
        arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(text.trim())
            .map(|nanos| AsOf::Time(nanos.div_euclid(1_000_000)))
            .map_err(|_| {
                format!(
                    "{text:?} is neither a snapshot id (Delta: a version) nor a timestamp such \
                     as 2026-01-31T09:26:56Z"
                )
            })
    }
}

/// A lake table's rows to export, as DataFusion plans not yet run.
#[derive(Debug)]
pub struct LakeChanges {
    /// The table: its key and its columns.
    pub table: LakeTable,
    /// The version read; `None` for a table without any snapshot yet.
    pub version: Option<LakeVersion>,
    /// Live rows at `version`: all of them, or those of the touched keys.
    pub rows: DataFrame,
    /// The touched keys without a live row at `version` (the key columns only); `None` when
    /// `rows` is the whole table.
    pub gone: Option<DataFrame>,
    /// Files whose keys were read to find the touched keys.
    pub files_read: usize,
}

/// The rows of `name` to export, as `read` says. An Iceberg table's key is its identifier
/// fields; a Delta table carries none, and is read with `delta_key` (the source's key, which
/// the writer merged on).
pub async fn changes(
    config: &Config,
    name: &CatalogTable,
    read: ReadFrom,
    delta_key: &[String],
) -> Result<LakeChanges> {
    match config.sink.format {
        TableFormat::Iceberg => iceberg_changes(config, name, read).await,
        TableFormat::Delta => super::delta::changes(config, name, read, delta_key).await,
    }
}

async fn iceberg_changes(
    config: &Config,
    name: &CatalogTable,
    read: ReadFrom,
) -> Result<LakeChanges> {
    let namespace_error = |e| catalog_error(&config.sink.namespace, e);
    let catalog = LakeCatalog::from_config(config)
        .await
        .map_err(namespace_error)?;
    let io = file_io(config)?;
    let pointer = catalog
        .load(name)
        .await
        .map_err(namespace_error)?
        .ok_or_else(|| sink_error(name, "no such table in the catalog"))?;
    let metadata = TableMetadata::read_from(&io, &pointer.metadata_location)
        .await
        .map_err(|e| Error::Sink {
            table: name.to_string(),
            message: format!("read {}: {e}", pointer.metadata_location),
            retryable: true,
        })?;
    let ctx = SessionContext::new();
    register_object_store(config, &ctx)?;
    if !metadata
        .location()
        .starts_with(config.sink.warehouse.trim_end_matches('/'))
    {
        register_location(config, &ctx, metadata.location())?;
    }
    let (table, rows) = table_frame(&ctx, &io, name, &pointer.metadata_location, &metadata).await?;
    if table.key.is_empty() {
        return Err(sink_error(
            name,
            "the table has no key (no identifier fields): export needs one to merge rows",
        ));
    }
    let Some(current) = metadata.current_snapshot() else {
        return Ok(LakeChanges {
            table,
            version: None,
            rows,
            gone: None,
            files_read: 0,
        });
    };
    let version = LakeVersion {
        id: current.snapshot_id(),
        committed_at_ms: current.timestamp_ms(),
    };
    let since = match read {
        ReadFrom::Everything => {
            return Ok(LakeChanges {
                table,
                version: Some(version),
                rows,
                gone: None,
                files_read: 0,
            });
        }
        ReadFrom::AsOf(as_of) => {
            let snapshot = iceberg_as_of(name, &metadata, as_of)?;
            let mut cache = ManifestCache::default();
            let files = live_files_at(&io, name, &metadata, &snapshot, &mut cache).await?;
            let rows = super::iceberg::files_frame(&ctx, &io, name, &metadata, &files).await?;
            return Ok(LakeChanges {
                table,
                version: Some(LakeVersion {
                    id: snapshot.snapshot_id(),
                    committed_at_ms: snapshot.timestamp_ms(),
                }),
                rows,
                gone: None,
                files_read: 0,
            });
        }
        ReadFrom::Since(since) => since,
    };
    if metadata.snapshot_by_id(since).is_none() {
        return Err(expired(name, since, "snapshot"));
    }
    // the snapshots after `since` up to the current one, by their parents
    let mut chain = Vec::new();
    let mut next = Some(current.clone());
    loop {
        let Some(snapshot) = next else {
            return Err(sink_error(
                name,
                format!(
                    "snapshot {since}, exported last, is not an ancestor of the current \
                     snapshot {} (the table was rolled back, or snapshots between them were \
                     expired): the changes in between are unknown; run the export again with \
                     --full to copy the whole table",
                    version.id
                ),
            ));
        };
        if snapshot.snapshot_id() == since {
            break;
        }
        next = snapshot
            .parent_snapshot_id()
            .and_then(|p| metadata.snapshot_by_id(p).cloned());
        chain.push(snapshot);
    }
    let key_ids: BTreeSet<i32> = metadata.current_schema().identifier_field_ids().collect();
    let mut cache = ManifestCache::default();
    let mut touched: BTreeSet<String> = BTreeSet::new();
    // whether a snapshot other than a compaction removed data files (a truncate, another
    // engine's copy-on-write rewrite): the keys of such a file may live on in files older
    // than `since`
    let mut removed_data = false;
    // rows named by the position deletes added after `since`: their keys are touched
    let mut deleted_rows = DeletedPositions::default();
    let mut position_files: BTreeSet<(String, Option<u64>)> = BTreeSet::new();
    for snapshot in &chain {
        if snapshot.summary().operation == Operation::Replace {
            continue;
        }
        let after = live_files_at(&io, name, &metadata, snapshot, &mut cache).await?;
        let before = match snapshot
            .parent_snapshot_id()
            .and_then(|p| metadata.snapshot_by_id(p))
        {
            Some(parent) => live_files_at(&io, name, &metadata, parent, &mut cache).await?,
            None => Default::default(),
        };
        let before_data: BTreeSet<&str> = before.data.iter().map(|f| f.path.as_str()).collect();
        let after_data: BTreeSet<&str> = after.data.iter().map(|f| f.path.as_str()).collect();
        removed_data |= before_data.difference(&after_data).next().is_some();
        touched.extend(
            after_data
                .symmetric_difference(&before_data)
                .map(|p| p.to_string()),
        );
        let before_deletes: BTreeSet<&str> = before
            .deletes
            .values()
            .flatten()
            .map(|f| f.path.as_str())
            .collect();
        for (ids, files) in &after.deletes {
            for file in files {
                if before_deletes.contains(file.path.as_str()) {
                    continue;
                }
                let ids: BTreeSet<i32> = ids.iter().copied().collect();
                if ids != key_ids {
                    return Err(sink_error(
                        name,
                        format!(
                            "{}: an equality delete on field ids {ids:?}, not on the key's \
                             {key_ids:?}, is not supported by export",
                            file.path
                        ),
                    ));
                }
                touched.insert(file.path.clone());
            }
        }
        // a deletion vector is one blob of its Puffin file: known by both
        let entry = |f: &LiveFile| (f.path.clone(), f.vector.as_ref().map(|v| v.offset));
        let before_positions: BTreeSet<(String, Option<u64>)> =
            before.positions.iter().map(entry).collect();
        for file in &after.positions {
            if before_positions.contains(&entry(file)) || !position_files.insert(entry(file)) {
                continue;
            }
            deleted_rows.merge(
                DeletedPositions::load_entry(&io, &file.path, file.vector.as_ref())
                    .await
                    .map_err(|e| sink_error(name, format!("read position deletes: {e}")))?,
            );
        }
    }
    let mut keys = key_frame(&ctx, name, &table, touched.iter().cloned().collect()).await?;
    let mut files_read = touched.len() + position_files.len();
    if !deleted_rows.is_empty() {
        let (deleted, read) = deleted_keys(&ctx, &io, name, &table, &deleted_rows).await?;
        files_read += read;
        keys = keys
            .union(deleted)
            .and_then(|k| k.distinct())
            .map_err(|e| df_error(name, "plan the touched keys", e))?;
    }
    let rows = if removed_data {
        rows
    } else {
        // Every change of a key after `since` added a delete of it (equality, or another
        // engine's position delete) or was new,
        // so a touched key's live row, if it has one, is in a data file added after `since`
        // (by the change itself, or by a compaction that moved the row since): only those
        // files need reading, with every delete file applied as usual.
        let earlier = metadata
            .snapshot_by_id(since)
            .ok_or_else(|| expired(name, since, "snapshot"))?;
        let earlier = live_files_at(&io, name, &metadata, earlier, &mut cache).await?;
        let earlier: BTreeSet<&str> = earlier.data.iter().map(|f| f.path.as_str()).collect();
        let mut newer = live_files_at(&io, name, &metadata, current, &mut cache).await?;
        newer.data.retain(|f| !earlier.contains(f.path.as_str()));
        super::iceberg::files_frame(&ctx, &io, name, &metadata, &newer).await?
    };
    let (rows, gone) = restrict(name, &table, rows, keys)?;
    Ok(LakeChanges {
        table,
        version: Some(version),
        rows,
        gone: Some(gone),
        files_read,
    })
}

/// The snapshot `as_of` names: by id, or the newest of the main branch's ancestry committed
/// at or before a time.
fn iceberg_as_of(
    name: &CatalogTable,
    metadata: &TableMetadata,
    as_of: AsOf,
) -> Result<iceberg::spec::SnapshotRef> {
    match as_of {
        AsOf::Version(id) => metadata.snapshot_by_id(id).cloned().ok_or_else(|| {
            sink_error(
                name,
                format!("snapshot {id} is not in the table (never was, or expired)"),
            )
        }),
        AsOf::Time(ms) => {
            let mut next = metadata.current_snapshot().cloned();
            let mut oldest = None;
            while let Some(snapshot) = next {
                if snapshot.timestamp_ms() <= ms {
                    return Ok(snapshot);
                }
                oldest = Some(snapshot.timestamp_ms());
                next = snapshot
                    .parent_snapshot_id()
                    .and_then(|p| metadata.snapshot_by_id(p).cloned());
            }
            Err(sink_error(
                name,
                format!(
                    "no snapshot committed at or before {ms} ms since the epoch: the oldest \
                     kept is from {} ms",
                    oldest.unwrap_or(0)
                ),
            ))
        }
    }
}

/// The error of a last exported version the table no longer has.
pub(super) fn expired(name: &CatalogTable, since: i64, what: &str) -> Error {
    sink_error(
        name,
        format!(
            "{what} {since}, exported last, has been expired: the changes since are gone; run \
             the export again with --full to copy the whole table"
        ),
    )
}

/// The key columns of `table`, as a schema.
fn key_schema(name: &CatalogTable, table: &LakeTable) -> Result<SchemaRef> {
    let fields = table
        .key
        .iter()
        .map(|k| {
            table
                .schema
                .field_with_name(k)
                .cloned()
                .map_err(|_| sink_error(name, format!("key column {k} is not in the schema")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

/// The distinct keys in the Parquet files at `paths` (data files or equality deletes), read
/// by column name in the table's current key types.
pub(super) async fn key_frame(
    ctx: &SessionContext,
    name: &CatalogTable,
    table: &LakeTable,
    paths: Vec<String>,
) -> Result<DataFrame> {
    read_files(ctx, name, paths, key_schema(name, table)?)
        .await?
        .distinct()
        .map_err(|e| df_error(name, "plan the touched keys", e))
}

/// The rows of the Parquet files at `paths`, read by column name in `schema` (a column a file
/// lacks reads as null).
pub(super) async fn read_files(
    ctx: &SessionContext,
    name: &CatalogTable,
    paths: Vec<String>,
    schema: SchemaRef,
) -> Result<DataFrame> {
    if paths.is_empty() {
        return ctx
            .read_batch(RecordBatch::new_empty(schema))
            .map_err(|e| df_error(name, "plan an empty read", e));
    }
    let urls: Vec<String> = paths.iter().map(|p| file_url(p)).collect();
    let options = ParquetReadOptions {
        file_extension: "",
        schema: Some(&schema),
        ..Default::default()
    };
    ctx.read_parquet(urls, options)
        .await
        .map_err(|e| df_error(name, "read changed files", e))
}

/// The keys of the rows `deleted` names (read from the data files it names, which a later
/// compaction may have replaced but not yet expired), and how many data files were read.
async fn deleted_keys(
    ctx: &SessionContext,
    io: &iceberg::io::FileIO,
    name: &CatalogTable,
    table: &LakeTable,
    deleted: &DeletedPositions,
) -> Result<(DataFrame, usize)> {
    let schema = key_schema(name, table)?;
    let keys: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let files = deleted.data_files().count();
    let batches = deleted
        .read_rows(io, Some(&keys))
        .await
        .map_err(|e| sink_error(name, format!("read the rows position deletes name: {e}")))?
        .iter()
        .map(|batch| {
            conform(batch, &schema).map_err(|e| {
                sink_error(name, format!("the keys of rows position deletes name: {e}"))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let frame = if batches.is_empty() {
        ctx.read_batch(RecordBatch::new_empty(schema))
    } else {
        ctx.read_batches(batches)
    }
    .map_err(|e| df_error(name, "plan the deleted rows' keys", e))?;
    Ok((frame, files))
}

/// What changed between two sets of files of a copy-on-write table (Delta): the rows of the
/// files `added` that the files `removed` do not hold (the new and changed rows, whole), and
/// the keys of the rows of `removed` that `added` does not hold and that have no new row (the
/// deleted keys). A MERGE rewrites whole files, so most rows of the two sides are equal and
/// cancel out; a rewrite without a data change (OPTIMIZE) cancels out entirely.
pub(super) async fn file_difference(
    ctx: &SessionContext,
    name: &CatalogTable,
    table: &LakeTable,
    added: Vec<String>,
    removed: Vec<String>,
) -> Result<(DataFrame, DataFrame)> {
    let schema = table.schema.clone();
    let added = read_files(ctx, name, added, schema.clone()).await?;
    let removed = read_files(ctx, name, removed, schema).await?;
    let key: Vec<Expr> = table.key.iter().map(|k| col(quoted(k))).collect();
    let plan = || -> datafusion::error::Result<(DataFrame, DataFrame)> {
        let new = added.clone().except(removed.clone())?;
        let old_keys = removed.except(added)?.select(key.clone())?;
        Ok((new, old_keys))
    };
    let (new, old_keys) = plan().map_err(|e| df_error(name, "plan the rewritten rows", e))?;
    let (_, gone) = restrict(name, table, new.clone(), old_keys)?;
    Ok((new, gone))
}

/// `rows` restricted to the keys in `keys`, and the keys without a row.
pub(super) fn restrict(
    name: &CatalogTable,
    table: &LakeTable,
    rows: DataFrame,
    keys: DataFrame,
) -> Result<(DataFrame, DataFrame)> {
    let renamed = |k: &String| format!("__lakewriter_touched_{k}");
    let touched = keys
        .clone()
        .select(
            table
                .key
                .iter()
                .map(|k| col(quoted(k)).alias(renamed(k)))
                .collect::<Vec<Expr>>(),
        )
        .map_err(|e| df_error(name, "plan the touched keys", e))?;
    let on: Vec<Expr> = table
        .key
        .iter()
        .map(|k| col(quoted(k)).eq(col(quoted(&renamed(k)))))
        .collect();
    let live = rows
        .clone()
        .join_on(touched.clone(), JoinType::LeftSemi, on.clone())
        .map_err(|e| df_error(name, "plan the touched rows", e))?;
    let live_keys = rows
        .select(table.key.iter().map(|k| col(quoted(k))).collect::<Vec<_>>())
        .map_err(|e| df_error(name, "plan the live keys", e))?;
    let gone = touched
        .join_on(live_keys, JoinType::LeftAnti, on)
        .and_then(|f| {
            f.select(
                table
                    .key
                    .iter()
                    .map(|k| col(quoted(&renamed(k))).alias(k.as_str()))
                    .collect::<Vec<_>>(),
            )
        })
        .map_err(|e| df_error(name, "plan the deleted keys", e))?;
    Ok((live, gone))
}
