//! Parts of a source transaction written straight into the table's own data files, when the
//! transaction's commit only adds rows (an initial snapshot, a truncating or insert-only large
//! transaction): the rows are written once, in the table's location, and the commit names the
//! files in its `add` actions. Until then no version of the log references them, so readers
//! never see them; a process that stops before the commit leaves orphans that `compact`'s
//! vacuum removes once older than `compaction.orphan_age`.
//!
//! One writer stays open from one part to the next, so the parts fill files of the target
//! size rather than one small file each; a part of a newer schema (columns added meanwhile)
//! closes it and opens another.

use std::num::NonZeroU64;
use std::sync::{Mutex, PoisonError};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use deltalake::DeltaTable;
use deltalake::kernel::Add;
use deltalake::operations::write::WriterStatsConfig;
use deltalake::operations::write::writer::{DeltaWriter, WriterConfig};

use super::{Failure, types};

/// The data files written for a table's next commit, and the writer still filling one.
#[derive(Default)]
pub struct PendingFiles {
    /// The open writer and the lake schema it writes. deltalake's writer is not `Sync`, and
    /// the sink is shared by reference across awaits: the mutex makes it `Sync` without ever
    /// being locked (only reached through `&mut self`, by `get_mut`).
    writer: Mutex<Option<(SchemaRef, DeltaWriter)>>,
    /// Files the closed writers wrote.
    adds: Vec<Add>,
    /// Whether anything was written since the last commit or discard.
    written: bool,
}

impl PendingFiles {
    /// Whether no part waits for the next commit.
    pub fn is_empty(&self) -> bool {
        !self.written
    }

    /// Writes `batches` (source layout) into data files of `table`, shaped as `lake_schema`
    /// (the table's current columns).
    pub async fn write(
        &mut self,
        table: &DeltaTable,
        lake_schema: &SchemaRef,
        batches: &[RecordBatch],
        target_file_size: u64,
    ) -> Result<(), Failure> {
        let open = self
            .writer
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if open
            .as_ref()
            .is_some_and(|(schema, _)| schema != lake_schema)
            && let Some((_, writer)) = open.take()
        {
            self.adds.extend(writer.close().await?);
        }
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            let shaped = types::to_lake(batch, lake_schema).map_err(Failure::Message)?;
            let (_, writer) = match open {
                Some(open) => open,
                None => open.insert((
                    lake_schema.clone(),
                    open_writer(table, lake_schema, target_file_size)?,
                )),
            };
            writer.write(&shaped).await?;
            self.written = true;
        }
        Ok(())
    }

    /// Finishes the files written since the last commit: their `add` actions, for the commit
    /// that takes them in. Nothing is pending afterwards.
    pub async fn finish(&mut self) -> Result<Vec<Add>, Failure> {
        self.written = false;
        let mut adds = std::mem::take(&mut self.adds);
        let open = self
            .writer
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, writer)) = open.take() {
            adds.extend(writer.close().await?);
        }
        Ok(adds)
    }

    /// Forgets what was written: the files stay as orphans for vacuum (an upload still in
    /// flight is abandoned).
    pub fn discard(&mut self) {
        self.written = false;
        self.adds.clear();
        *self
            .writer
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// deltalake's writer of `table`'s data files: its partition columns and statistics settings,
/// files rolled at `target_file_size`.
fn open_writer(
    table: &DeltaTable,
    lake_schema: &SchemaRef,
    target_file_size: u64,
) -> Result<DeltaWriter, Failure> {
    let snapshot = table.snapshot()?;
    let partition_columns = snapshot.metadata().partition_columns().to_vec();
    let stats = WriterStatsConfig::from_config(snapshot.snapshot().table_configuration());
    let config = WriterConfig::new(
        lake_schema.clone(),
        partition_columns,
        None,
        NonZeroU64::new(target_file_size),
        None,
        stats.num_indexed_cols,
        stats.stats_columns,
    );
    Ok(DeltaWriter::new(table.object_store(), config))
}
