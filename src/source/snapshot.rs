//! The initial snapshot: a slot created with an exported snapshot, and each table read with
//! COPY inside that snapshot, so the rows copied and the changes streamed from the slot's
//! consistent point on fit together with no gap and no overlap. Large tables are read in
//! parallel ranges of pages (`ctid`), every range in its own transaction importing the same
//! snapshot.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use futures::StreamExt;
use pgwire_replication::ReplicationClient;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::ColumnPolicy;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::masking::{Hasher, MASK_METADATA_KEY, Masking};
use crate::source::changes::TableSchema;
use crate::source::connection;
use crate::source::copy_binary::{BinaryCopyError, BinaryCopyReader, BinaryRow};
use crate::source::schema::SourceTable;
use crate::source::types::{ColumnBuilder, PgType, TypeOptions, Wire, resolve_type};
use crate::table::{TableId, quote_ident, quote_literal};

/// A snapshot exported by the creation of a replication slot: what COPY reads in it is the
/// database exactly at `lsn`, the slot's consistent point, where streaming picks up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedSnapshot {
    /// The snapshot's name, for `SET TRANSACTION SNAPSHOT`.
    pub name: String,
    /// The slot's consistent point.
    pub lsn: Lsn,
}

impl ExportedSnapshot {
    /// The checkpoint of a table copied in this snapshot: the last position the copy covers,
    /// just below the consistent point. The snapshot holds every transaction committed before
    /// the consistent point and none at or after it, so a transaction whose commit record
    /// starts exactly there comes from the stream and must not be skipped (PostgreSQL's own
    /// table sync applies a transaction when its sync LSN <= the transaction's final LSN).
    /// With this checkpoint the one skip rule, `commit_lsn <= checkpoint`, holds at the
    /// boundary too.
    pub fn checkpoint(&self) -> Lsn {
        Lsn(self.lsn.get().saturating_sub(1))
    }
}

/// A replication session that created a slot and holds its exported snapshot. The snapshot
/// stays importable until the session runs another command or ends, so it must live until
/// every COPY transaction has started.
pub struct SnapshotSession {
    client: ReplicationClient,
    /// The exported snapshot.
    pub snapshot: ExportedSnapshot,
}

impl std::fmt::Debug for SnapshotSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotSession")
            .field("snapshot", &self.snapshot)
            .finish()
    }
}

impl SnapshotSession {
    /// Creates the configured slot (or, with `temporary`, a slot named `slot` that disappears
    /// with the session: for tables added while the stream runs) and exports its snapshot.
    pub async fn create_slot(config: &Config, slot: &str, temporary: bool) -> Result<Self> {
        let source = &config.source;
        let mut client = ReplicationClient::connect_gated(connection::replication_config(
            source,
            Lsn::ZERO,
            connection::COPY,
        )?)
        .await
        .map_err(|e| Error::Replication {
            context: format!(
                "open a replication session on {}",
                connection::describe(source)
            ),
            source: e,
        })?;
        let command = format!(
            "CREATE_REPLICATION_SLOT {}{} LOGICAL pgoutput EXPORT_SNAPSHOT",
            quote_ident(slot),
            if temporary { " TEMPORARY" } else { "" }
        );
        let rows = client
            .simple_query(&command)
            .await
            .map_err(|e| Error::Replication {
                context: format!("create replication slot {slot}"),
                source: e,
            })?;
        let text = |row: &Vec<Option<bytes::Bytes>>, i: usize| -> Option<String> {
            row.get(i)
                .and_then(|v| v.as_ref())
                .map(|b| String::from_utf8_lossy(b).into_owned())
        };
        let row = rows.first().ok_or_else(|| Error::Source {
            message: format!("creating slot {slot} returned no row"),
        })?;
        let lsn = text(row, 1)
            .and_then(|t| t.parse::<Lsn>().ok())
            .ok_or_else(|| Error::Source {
                message: format!("creating slot {slot} returned no consistent point"),
            })?;
        let name = text(row, 2).ok_or_else(|| Error::Source {
            message: format!("creating slot {slot} exported no snapshot"),
        })?;
        tracing::info!(slot = %slot, lsn = %lsn, "slot created with an exported snapshot");
        Ok(SnapshotSession {
            client,
            snapshot: ExportedSnapshot { name, lsn },
        })
    }

    /// Ends the session (the snapshot with it; a permanent slot stays).
    pub fn close(mut self) {
        self.client.abort();
    }
}

/// Rows of one table read by the snapshot, as of its consistent point.
#[derive(Debug, Clone)]
pub struct SnapshotRows {
    /// The table's shape.
    pub schema: Arc<TableSchema>,
    /// The rows.
    pub rows: RecordBatch,
    /// The snapshot's consistent point: the table's first checkpoint.
    pub lsn: Lsn,
}

/// How a table is copied.
#[derive(Debug, Clone)]
pub struct CopySettings {
    /// Rows per batch handed on.
    pub batch_rows: usize,
    /// COPY streams for one table at once.
    pub parallelism: usize,
    /// The most pages (8 KiB each) one COPY of a large table reads: a table is split into
    /// page ranges of at most this many (and into `parallelism` ranges at least, once it has
    /// more than 1024 pages).
    pub pages_per_range: u32,
    /// Type mapping options.
    pub type_options: TypeOptions,
    /// The key of the columns a masked shape hashes (marked [`MASK_METADATA_KEY`]).
    pub masking: Arc<Masking>,
}

impl Default for CopySettings {
    fn default() -> Self {
        CopySettings {
            batch_rows: 65_536,
            parallelism: 2,
            pages_per_range: 16_384,
            type_options: TypeOptions::default(),
            masking: Masking::none(),
        }
    }
}

/// The shape of `table` with its column types resolved.
pub async fn table_schema(
    client: &tokio_postgres::Client,
    table: &SourceTable,
    options: &TypeOptions,
) -> Result<Arc<TableSchema>> {
    let mut types = Vec::with_capacity(table.columns.len());
    for column in &table.columns {
        let pg_type = match PgType::builtin(column.type_oid) {
            Some(t) => t,
            None => resolve_type(client, column.type_oid)
                .await
                .map_err(|e| Error::Source {
                    message: format!("table {}, column {}: {e}", table.id, column.name),
                })?,
        };
        types.push(pg_type);
    }
    Ok(Arc::new(TableSchema::from_catalog(table, &types, options)?))
}

/// The shape of `table` as the lake gets it, with `masking`'s policies applied: what `run`
/// writes and `verify` compares. A COPY of this shape reads the masked columns masked.
pub async fn masked_table_schema(
    client: &tokio_postgres::Client,
    table: &SourceTable,
    options: &TypeOptions,
    masking: &Masking,
) -> Result<Arc<TableSchema>> {
    if !masking.masks(&table.id) {
        return table_schema(client, table, options).await;
    }
    let columns: Vec<(&str, Option<i16>)> = table
        .columns
        .iter()
        .map(|c| (c.name.as_str(), Some(c.attnum)))
        .collect();
    let policies = masking.resolve(&table.id, table.oid, &columns);
    let mut types = Vec::with_capacity(table.columns.len());
    for column in &table.columns {
        // a dropped or hashed column's type is never mapped: any type can be masked
        let pg_type = match policies.get(&column.name) {
            Some(ColumnPolicy::Drop | ColumnPolicy::Hash) => PgType::Text,
            _ => match PgType::builtin(column.type_oid) {
                Some(t) => t,
                None => resolve_type(client, column.type_oid)
                    .await
                    .map_err(|e| Error::Source {
                        message: format!("table {}, column {}: {e}", table.id, column.name),
                    })?,
            },
        };
        types.push(pg_type);
    }
    let (schema, _) = TableSchema::from_catalog_masked(table, &types, options, &policies)?;
    Ok(Arc::new(schema))
}

/// The planner's estimate of a table's rows (`reltuples`); `None` before the first ANALYZE.
pub async fn estimated_rows(
    client: &tokio_postgres::Client,
    table: &TableId,
) -> Result<Option<u64>> {
    let row = client
        .query_opt(
            "SELECT c.reltuples::float8 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(|e| Error::postgres(format!("estimate the rows of {table}"), e))?;
    Ok(row
        .map(|r| r.get::<_, f64>(0))
        .filter(|&n| n >= 0.0)
        .map(|n| n as u64))
}

/// Tables up to this many pages (8 KiB each) are copied in one stream.
const MIN_SPLIT_PAGES: i64 = 1024;

/// Copies `schema`'s table as it is in `snapshot`, handing batches to `out` (whose bound gives
/// back-pressure). Returns the number of rows. `progress` is told the rows as they come.
pub async fn copy_table(
    config: &Config,
    snapshot: &ExportedSnapshot,
    schema: Arc<TableSchema>,
    settings: &CopySettings,
    out: mpsc::Sender<SnapshotRows>,
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> Result<u64> {
    let client = connection::connect_as(&config.source, Some(connection::COPY)).await?;
    let table = &schema.table;
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| Error::postgres("read the server version", e))?
        .get(0);
    let (pages, partitioned): (i64, bool) = {
        let row = client
            .query_one(
                "SELECT pg_relation_size(c.oid) / current_setting('block_size')::bigint, \
                   c.relkind = 'p' FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2",
                &[&table.schema, &table.name],
            )
            .await
            .map_err(|e| Error::postgres(format!("size of table {table}"), e))?;
        (row.get(0), row.get(1))
    };
    drop(client);
    // TID range scans (PostgreSQL 14) make page ranges cheap; before that each range would scan
    // the whole table.
    // A table is split into at least `parallelism` ranges once it is worth it (more than
    // `MIN_SPLIT_PAGES`), and into ranges of at most `pages_per_range` pages.
    let max_per_range = i64::from(settings.pages_per_range.max(1));
    let ranges: Vec<(Option<i64>, Option<i64>)> = if version >= 140_000
        && !partitioned
        && settings.parallelism > 1
        && pages > MIN_SPLIT_PAGES
    {
        let count = ((pages + max_per_range - 1) / max_per_range).max(settings.parallelism as i64);
        let per_range = (pages + count - 1) / count;
        (0..count)
            .map(|i| {
                let start = i * per_range;
                let end = if i + 1 == count {
                    None
                } else {
                    Some(start + per_range)
                };
                (Some(start), end)
            })
            .collect()
    } else {
        vec![(None, None)]
    };
    let started = Instant::now();
    let progress = Arc::new(progress);
    let mut tasks = JoinSet::new();
    let mut pending = ranges.into_iter();
    let mut total = 0u64;
    loop {
        while tasks.len() < settings.parallelism.max(1) {
            let Some(range) = pending.next() else { break };
            let (config, snapshot, schema, settings, out, progress) = (
                config.clone(),
                snapshot.clone(),
                schema.clone(),
                settings.clone(),
                out.clone(),
                progress.clone(),
            );
            tasks.spawn(async move {
                copy_range(
                    &config, &snapshot, schema, range, &settings, &out, &*progress,
                )
                .await
            });
        }
        match tasks.join_next().await {
            None => break,
            Some(Ok(Ok(rows))) => total += rows,
            Some(Ok(Err(e))) => return Err(e),
            Some(Err(e)) => {
                return Err(Error::Source {
                    message: format!("snapshot of table {table}: a copy task failed: {e}"),
                });
            }
        }
    }
    tracing::info!(
        table = %table,
        rows = total,
        seconds = started.elapsed().as_secs_f64(),
        lsn = %snapshot.lsn,
        "table copied"
    );
    Ok(total)
}

/// One COPY of one page range (or the whole table) in its own snapshot-importing transaction.
async fn copy_range(
    config: &Config,
    snapshot: &ExportedSnapshot,
    schema: Arc<TableSchema>,
    (from_page, to_page): (Option<i64>, Option<i64>),
    settings: &CopySettings,
    out: &mpsc::Sender<SnapshotRows>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<u64> {
    let table = schema.table.clone();
    let client = connection::connect_as(&config.source, Some(connection::COPY)).await?;
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(&snapshot.name)
        ))
        .await
        .map_err(|e| {
            Error::postgres(
                format!("import snapshot {} to copy {table}", snapshot.name),
                e,
            )
        })?;
    let wires = wires(&schema);
    let masks = masks(&schema);
    if masks.contains(&Some(ColumnPolicy::Hash)) && settings.masking.hasher().is_none() {
        return Err(Error::Source {
            message: format!(
                "COPY table {table}: a column is hashed, but no masking key is loaded"
            ),
        });
    }
    let columns = masked_select_list(&schema, &wires, &masks);
    let mut conditions = Vec::new();
    if let Some(from) = from_page {
        conditions.push(format!("ctid >= '({from},0)'::tid"));
    }
    if let Some(to) = to_page {
        conditions.push(format!("ctid < '({to},0)'::tid"));
    }
    let query = if conditions.is_empty() {
        format!(
            "COPY (SELECT {columns} FROM {}) TO STDOUT (FORMAT binary)",
            table.quoted()
        )
    } else {
        format!(
            "COPY (SELECT {columns} FROM {} WHERE {}) TO STDOUT (FORMAT binary)",
            table.quoted(),
            conditions.join(" AND ")
        )
    };
    let stream = client
        .copy_out(query.as_str())
        .await
        .map_err(|e| Error::postgres(format!("COPY table {table}"), e))?;
    futures::pin_mut!(stream);
    let mut batch = RowBatch::new(&schema, settings.batch_rows)?;
    batch.masks = masks;
    batch.hasher = settings.masking.hasher().cloned();
    let mut reader = BinaryCopyReader::new(schema.columns.len());
    let mut rows = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::postgres(format!("COPY table {table}"), e))?;
        let mut full = Vec::new();
        reader.push(&chunk, |row: BinaryRow<'_>| -> Result<()> {
            batch.append(row, &wires)?;
            if batch.len() >= settings.batch_rows {
                full.push(batch.finish()?);
            }
            Ok(())
        })?;
        for rows_batch in full {
            rows += rows_batch.num_rows() as u64;
            progress(rows_batch.num_rows() as u64);
            send(out, &schema, rows_batch, snapshot.lsn).await?;
        }
    }
    reader.finish().map_err(|e| copy_error(&table, e))?;
    if !batch.is_empty() {
        let last = batch.finish()?;
        rows += last.num_rows() as u64;
        progress(last.num_rows() as u64);
        send(out, &schema, last, snapshot.lsn).await?;
    }
    client
        .batch_execute("COMMIT")
        .await
        .map_err(|e| Error::postgres(format!("end the snapshot transaction of {table}"), e))?;
    Ok(rows)
}

async fn send(
    out: &mpsc::Sender<SnapshotRows>,
    schema: &Arc<TableSchema>,
    rows: RecordBatch,
    lsn: Lsn,
) -> Result<()> {
    out.send(SnapshotRows {
        schema: schema.clone(),
        rows,
        lsn,
    })
    .await
    .map_err(|_| Error::Source {
        message: format!(
            "snapshot of table {}: the consumer stopped listening",
            schema.table
        ),
    })
}

pub(super) fn copy_error(table: &TableId, error: BinaryCopyError) -> Error {
    Error::Source {
        message: format!("COPY table {table}: {error}"),
    }
}

impl From<BinaryCopyError> for Error {
    fn from(error: BinaryCopyError) -> Self {
        Error::Source {
            message: format!("COPY data: {error}"),
        }
    }
}

/// The columns of `schema` as the binary COPY of a snapshot selects them ([`Wire::select`]).
pub fn select_list(schema: &TableSchema, wires: &[Wire]) -> String {
    schema
        .columns
        .iter()
        .zip(wires)
        .map(|(c, wire)| wire.select(c.type_oid, &quote_ident(&c.name)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The masking of each column of a masked shape ([`MASK_METADATA_KEY`]): hashed, redacted or
/// neither.
pub(super) fn masks(schema: &TableSchema) -> Vec<Option<ColumnPolicy>> {
    schema
        .arrow
        .fields()
        .iter()
        .map(
            |field| match field.metadata().get(MASK_METADATA_KEY).map(String::as_str) {
                Some("hash") => Some(ColumnPolicy::Hash),
                Some("redact") => Some(ColumnPolicy::Redact),
                _ => None,
            },
        )
        .collect()
}

/// [`select_list`] with the masked columns masked in PostgreSQL's reply: a redacted column
/// selects NULL (its values never leave the server), a hashed one its text output (what
/// pgoutput sends, so the copy and the stream hash the same bytes).
pub(super) fn masked_select_list(
    schema: &TableSchema,
    wires: &[Wire],
    masks: &[Option<ColumnPolicy>],
) -> String {
    schema
        .columns
        .iter()
        .zip(wires)
        .zip(masks)
        .map(|((c, wire), mask)| {
            let column = quote_ident(&c.name);
            match mask {
                Some(ColumnPolicy::Redact | ColumnPolicy::Drop) => "NULL".to_string(),
                Some(ColumnPolicy::Hash) => {
                    format!("CASE WHEN {column} IS NULL THEN NULL ELSE format('%s', {column}) END")
                }
                None => wire.select(c.type_oid, &column),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// How each column of `schema` is read from binary COPY ([`Wire::of`]).
pub fn wires(schema: &TableSchema) -> Vec<Wire> {
    schema
        .columns
        .iter()
        .zip(schema.arrow.fields())
        .map(|(column, field)| Wire::of(column.type_oid, field.data_type()))
        .collect()
}

/// Builders for one batch of a table's rows.
pub(super) struct RowBatch<'a> {
    schema: &'a TableSchema,
    builders: Vec<ColumnBuilder>,
    /// Which columns are masked (empty: none).
    pub(super) masks: Vec<Option<ColumnPolicy>>,
    pub(super) hasher: Option<Hasher>,
}

impl<'a> RowBatch<'a> {
    pub(super) fn new(schema: &'a TableSchema, capacity: usize) -> Result<Self> {
        let builders = schema
            .arrow
            .fields()
            .iter()
            .map(|f| {
                ColumnBuilder::with_capacity(f, capacity).map_err(|e| Error::Source {
                    message: format!("table {}: {e}", schema.table),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RowBatch {
            schema,
            builders,
            masks: Vec::new(),
            hasher: None,
        })
    }

    pub(super) fn len(&self) -> usize {
        self.builders.first().map_or(0, ColumnBuilder::len)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn append(&mut self, row: BinaryRow<'_>, wires: &[Wire]) -> Result<()> {
        if row.len() != self.builders.len() {
            return Err(Error::Source {
                message: format!(
                    "COPY table {}: a row of {} fields for {} columns",
                    self.schema.table,
                    row.len(),
                    self.builders.len()
                ),
            });
        }
        for (i, (builder, wire)) in self.builders.iter_mut().zip(wires).enumerate() {
            match self.masks.get(i).copied().flatten() {
                None => builder
                    .append_binary(row.get(i), *wire)
                    .map_err(|e| Error::Source {
                        message: format!(
                            "COPY table {}, column {}: {e}",
                            self.schema.table, self.schema.columns[i].name
                        ),
                    })?,
                Some(ColumnPolicy::Hash) => {
                    let hash = match (row.get(i), &self.hasher) {
                        (Some(text), Some(hasher)) => Some(hasher.hex(text)),
                        _ => None,
                    };
                    // a hashed value's error says nothing of the value
                    builder
                        .append_text(hash.as_ref().map(|h| &h[..]))
                        .map_err(|_| Error::Source {
                            message: format!(
                                "COPY table {}, column {} (hashed): the hash could not be stored",
                                self.schema.table, self.schema.columns[i].name
                            ),
                        })?
                }
                Some(_) => builder.append_null(),
            }
        }
        Ok(())
    }

    pub(super) fn finish(&mut self) -> Result<RecordBatch> {
        let columns = self
            .builders
            .iter_mut()
            .map(|b| {
                b.finish().map_err(|e| Error::Source {
                    message: format!("table {}: {e}", self.schema.table),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        RecordBatch::try_new(self.schema.arrow.clone(), columns).map_err(|e| Error::Source {
            message: format!(
                "table {}: building a snapshot batch: {e}",
                self.schema.table
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_committed_at_the_consistent_point_is_streamed_not_skipped() {
        let snapshot = ExportedSnapshot {
            name: "s".into(),
            lsn: Lsn(0x1000),
        };
        let skipped = |commit_lsn: u64| Lsn(commit_lsn) <= snapshot.checkpoint();
        // committed before the consistent point: in the copy
        assert!(skipped(0x0fff));
        // at it or after: not in the copy, so the stream's change applies
        assert!(!skipped(0x1000));
        assert!(!skipped(0x1001));
    }
}
