//! Sinks: lake table formats behind one trait, so a second format is a second implementation,
//! not a second pipeline. A sink knows tables and files and nothing of PostgreSQL's protocol:
//! the pipeline hands it, per table, the final state of every key a flush touched, and the
//! sink makes that one atomic commit carrying the source position it covers.
//!
//! The contract every sink keeps:
//! - [`Sink::commit`] is atomic: after it returns `Ok`, the table holds the whole delta and the
//!   checkpoint `lsn`; after an error or a crash, it holds none of it.
//! - The checkpoint lives in the commit itself (Iceberg: the snapshot summary's
//!   `lakewriter.lsn`; Delta: a `txn` action), so [`Sink::prepare`] reads back exactly what
//!   the lake holds.
//! - Deletes apply to rows committed before, never to rows of the same commit.

pub mod delta;
pub mod iceberg;

use std::sync::Arc;

use arrow::array::RecordBatch;

use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::table::{TableId, TableSchema};

/// The key in an Iceberg snapshot summary (and the Delta `txn` app id prefix) holding the
/// source position a commit covers.
pub const CHECKPOINT_PROPERTY: &str = "lakewriter.lsn";

/// The key in an Iceberg snapshot summary holding the progress of a chunked copy (the table
/// joined while streaming): what the copy read so far, committed with the rows it read, so
/// a restart resumes after the last committed chunk. Absent once the copy is complete.
pub const COPY_PROPERTY: &str = "lakewriter.copy";

/// Refuses source tables that would share one lake table: `public.sales_orders` and
/// `sales.orders` both become `sales_orders` (Glue and Athena also fold case), and their rows
/// would mix. The error names every pair.
pub fn refuse_shared_lake_names(namespace: &str, tables: &[TableId]) -> Result<()> {
    let mut by_name: std::collections::BTreeMap<String, Vec<&TableId>> = Default::default();
    for table in tables {
        let lake = iceberg::lake_table(namespace, table);
        by_name
            .entry(lake.name.to_lowercase())
            .or_default()
            .push(table);
    }
    let clashes: Vec<String> = by_name
        .iter()
        .filter(|(_, sources)| sources.len() > 1)
        .map(|(name, sources)| {
            let names: Vec<String> = sources.iter().map(|t| t.to_string()).collect();
            format!("{} all become {namespace}.{name}", names.join(" and "))
        })
        .collect();
    if clashes.is_empty() {
        return Ok(());
    }
    Err(Error::Source {
        message: format!(
            "two source tables would share one lake table: {}; leave one out of [source] \
             include (or rename it in PostgreSQL)",
            clashes.join("; ")
        ),
    })
}

/// How a table is laid out in the lake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableLayout {
    /// Columns identifying a row (Iceberg identifier fields; the equality-delete columns).
    /// Empty for append-only (changelog) tables.
    pub key: Vec<String>,
    /// Partition expressions over source columns (`day(created_at)`, `bucket(16, id)`, …).
    pub partition_by: Vec<String>,
}

/// One table's part of a flush: the final state of every key it touched.
#[derive(Debug, Clone)]
pub struct TableDelta {
    /// The source table.
    pub table: TableId,
    /// The table's shape for these rows (the latest, after any schema change in the flush).
    pub schema: Arc<TableSchema>,
    /// Remove every row first (a TRUNCATE in the flush, before the rows below). On a part
    /// given to [`Sink::stage`]: whether the transaction's commit truncates.
    pub truncate: bool,
    /// On a part given to [`Sink::stage`]: the transaction's commit removes no row committed
    /// before, other than by `truncate` (an initial snapshot, an insert-only or truncating
    /// transaction), so its parts may be written straight into the table's own data files
    /// (the Delta sink does). Every part of one transaction says the same. Unused by
    /// [`Sink::commit`].
    pub adds_only: bool,
    /// Old rows whose keys must no longer match any row committed before: updated, deleted
    /// and re-keyed rows. In [`TableSchema::arrow_nullable`] layout; the key columns are always
    /// set, and so are the partition columns (the delete goes to the old row's partition).
    pub deletes: Vec<RecordBatch>,
    /// Rows to add: the final state of inserted and updated keys, one per key, in
    /// [`TableSchema::arrow_nullable`] layout.
    pub rows: Vec<RecordBatch>,
    /// The commit LSN of the last source transaction this delta contains: the table's new
    /// checkpoint, written into the commit (`lakewriter.lsn`). `None` for the chunks of an
    /// initial snapshot before its last: a table whose current commit carries no checkpoint is
    /// incomplete, and [`Sink::prepare`] reports it as `None` so it is copied again (the
    /// first chunk of a copy truncates).
    pub lsn: Option<Lsn>,
    /// The progress of the table's chunked copy, written into the commit beside `lsn`
    /// ([`COPY_PROPERTY`]); `None` when the table is not being copied in chunks (then the
    /// commit says the copy, if any, is complete). Only sinks whose
    /// [`Sink::keeps_copy_progress`] is true are given one.
    pub copy: Option<String>,
}

/// A lake table format.
#[allow(async_fn_in_trait)]
pub trait Sink {
    /// Makes `table` ready to take deltas in `schema`: creates it (with `layout`) when it is
    /// not in the lake, evolves its schema when `schema` adds columns or widens types.
    /// Returns the table's checkpoint: the `lakewriter.lsn` of the table's current commit (the
    /// LSN of the last source transaction the lake holds); `None` for a table never committed
    /// to, or whose current commit carries none (an interrupted initial snapshot): it needs an
    /// initial snapshot.
    async fn prepare(
        &mut self,
        table: &TableId,
        schema: &TableSchema,
        layout: &TableLayout,
    ) -> Result<Option<Lsn>>;

    /// Commits `delta` atomically, with its checkpoint, together with every part staged for
    /// its table since the last commit.
    async fn commit(&mut self, delta: TableDelta) -> Result<()>;

    /// Writes `part` (a piece of a source transaction too large for memory: rows and deletes,
    /// `truncate` and `adds_only` saying what its commit will be, `lsn` unused) into files that stay uncommitted until the next
    /// [`Sink::commit`] of its table takes them in. After a crash they are orphans no
    /// snapshot references.
    async fn stage(&mut self, part: TableDelta) -> Result<()>;

    /// Forgets the parts staged for `table` (the transaction they belong to failed).
    fn discard_staged(&mut self, table: &TableId);

    /// The checkpoint of `table` as last read from the lake, also when [`Sink::prepare`]
    /// failed after reading it (a schema the lake cannot take); `None` when unknown.
    fn known_checkpoint(&self, table: &TableId) -> Option<Lsn>;

    /// Whether commits carry a chunked copy's progress ([`TableDelta::copy`]) and
    /// [`Sink::copy_progress`] reads it back. A sink that cannot copies joining tables in one
    /// piece.
    fn keeps_copy_progress(&self) -> bool {
        false
    }

    /// The progress of `table`'s chunked copy as its current commit carries it (read by
    /// [`Sink::prepare`]); `None` when no copy is under way.
    fn copy_progress(&self, _table: &TableId) -> Option<String> {
        None
    }

    /// The commits that brought the latest chunks of that copy in, with when each landed
    /// (newest first): a copy resumed after a stop measures its pace from them until its own
    /// commits take over, so its first progress report has a rate and an ETA.
    fn copy_commits(&self, _table: &TableId) -> Vec<crate::table::ChunkCommit> {
        Vec::new()
    }

    /// Marks `table` incomplete, so the next start copies it again: a commit without a
    /// checkpoint and without rows. Works after a failed [`Sink::prepare`] too.
    async fn mark_incomplete(&mut self, table: &TableId) -> Result<()>;

    /// The current rows of `keys` (a batch of key columns), for values the source did not
    /// send (unchanged TOAST): returns the matching rows in the table's current layout.
    async fn lookup(&mut self, table: &TableId, keys: &RecordBatch) -> Result<Vec<RecordBatch>>;

    /// Waits for the work it runs beside the writer after its commits (the key indexes'
    /// updates), so that a clean stop leaves nothing to catch up at the next start.
    async fn settle(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_tables_sharing_a_lake_table_are_refused_naming_both() {
        let clash = [
            TableId::new("public", "sales_orders"),
            TableId::new("sales", "orders"),
            TableId::new("public", "customers"),
        ];
        let error = refuse_shared_lake_names("lake", &clash)
            .expect_err("two tables become lake.sales_orders")
            .to_string();
        assert!(
            error.contains("public.sales_orders")
                && error.contains("sales.orders")
                && error.contains("lake.sales_orders"),
            "{error}"
        );
        let case = [
            TableId::new("public", "Orders"),
            TableId::new("public", "orders"),
        ];
        assert!(refuse_shared_lake_names("lake", &case).is_err());
        let fine = [
            TableId::new("public", "orders"),
            TableId::new("sales", "orders"),
        ];
        assert!(refuse_shared_lake_names("lake", &fine).is_ok());
    }
}
