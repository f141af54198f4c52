//! Iceberg position deletes (`file_path`, `pos`), as other engines write them (Spark's
//! merge-on-read `DELETE`, `UPDATE` and `MERGE`): what one position-delete file removes, and a
//! data file read with those rows left out — or only those rows kept. The one reader of them:
//! the TOAST lookups ([`super::lookup`]) and the lake's merge-on-read (`query`, `verify`,
//! `compact`, `export`) both go through it.
//!
//! A data file is read with a Parquet row selection built from the positions, so the rows
//! left out are never decoded, and its batches are decoded as they are consumed.

use std::collections::{BTreeSet, HashMap};

use arrow::array::{Array, StringArray, UInt64Array};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use bytes::Bytes;
use iceberg::io::FileIO;
use parquet::arrow::arrow_reader::{
    ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};

/// The rows position-delete files remove: per data file path, the positions (0-based, in the
/// file's row order).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeletedPositions {
    files: HashMap<String, BTreeSet<u64>>,
}

impl DeletedPositions {
    /// What the position-delete file at `path` removes.
    pub async fn load(file_io: &FileIO, path: &str) -> Result<Self, String> {
        let mut deleted = DeletedPositions::default();
        for batch in open(file_io, path)
            .await?
            .build()
            .map_err(|e| format!("{path}: {e}"))?
        {
            let batch = batch.map_err(|e| format!("{path}: {e}"))?;
            let files = batch
                .column_by_name("file_path")
                .ok_or_else(|| format!("{path}: a position-delete file without file_path"))?;
            let files = cast(files, &DataType::Utf8)
                .map_err(|e| format!("{path}: file_path is not text: {e}"))?;
            let files = files
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| format!("{path}: file_path is not text"))?;
            let positions = batch
                .column_by_name("pos")
                .ok_or_else(|| format!("{path}: a position-delete file without pos"))?;
            let positions = cast(positions, &DataType::UInt64)
                .map_err(|e| format!("{path}: pos is not a position: {e}"))?;
            let positions = positions
                .as_any()
                .downcast_ref::<UInt64Array>()
                .ok_or_else(|| format!("{path}: pos is not a position"))?;
            for row in 0..batch.num_rows() {
                if files.is_null(row) || positions.is_null(row) {
                    return Err(format!("{path}: row {row} has no file_path or no pos"));
                }
                deleted
                    .files
                    .entry(files.value(row).to_string())
                    .or_default()
                    .insert(positions.value(row));
            }
        }
        Ok(deleted)
    }

    /// The positions removed from the data file at `data_path`, if any.
    pub fn of(&self, data_path: &str) -> Option<&BTreeSet<u64>> {
        self.files.get(data_path)
    }

    /// The data files it removes rows from.
    pub fn data_files(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// Adds what `other` removes.
    pub fn merge(&mut self, other: DeletedPositions) {
        for (path, positions) in other.files {
            self.files.entry(path).or_default().extend(positions);
        }
    }

    /// Whether it removes nothing.
    pub fn is_empty(&self) -> bool {
        self.files.values().all(BTreeSet::is_empty)
    }
}

impl FromIterator<(String, u64)> for DeletedPositions {
    /// Data file paths and positions, as the rows of a position-delete file.
    fn from_iter<T: IntoIterator<Item = (String, u64)>>(rows: T) -> Self {
        let mut deleted = DeletedPositions::default();
        for (path, position) in rows {
            deleted.files.entry(path).or_default().insert(position);
        }
        deleted
    }
}

/// Which rows of a data file a read keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Every row but those at the positions: the live rows.
    AllBut,
    /// Only the rows at the positions: the rows deleted (what `export` needs their keys of).
    Only,
}

/// The rows of the data file at `path` that `keep` picks by `positions`, as a reader that
/// decodes them batch by batch (in the file's own schema).
pub async fn read_data_file(
    file_io: &FileIO,
    path: &str,
    positions: &BTreeSet<u64>,
    keep: Keep,
) -> Result<ParquetRecordBatchReader, String> {
    let builder = open(file_io, path).await?;
    let rows = u64::try_from(builder.metadata().file_metadata().num_rows())
        .map_err(|_| format!("{path}: a negative row count"))?;
    builder
        .with_row_selection(selection(positions, rows, keep))
        .build()
        .map_err(|e| format!("{path}: {e}"))
}

/// The Parquet file at `path`, ready to read.
pub async fn open(
    file_io: &FileIO,
    path: &str,
) -> Result<ParquetRecordBatchReaderBuilder<Bytes>, String> {
    let bytes = file_io
        .new_input(path)
        .map_err(|e| format!("{path}: {e}"))?
        .read()
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| format!("{path}: {e}"))
}

/// The row selection over a file of `rows` rows that `keep` makes of `positions` (positions
/// past the end are ignored: they name no row).
fn selection(positions: &BTreeSet<u64>, rows: u64, keep: Keep) -> RowSelection {
    let (at, between) = match keep {
        Keep::AllBut => (
            RowSelector::skip as fn(usize) -> RowSelector,
            RowSelector::select as fn(usize) -> RowSelector,
        ),
        Keep::Only => (
            RowSelector::select as fn(usize) -> RowSelector,
            RowSelector::skip as fn(usize) -> RowSelector,
        ),
    };
    let mut selectors = Vec::new();
    let mut next = 0u64;
    for &position in positions.range(..rows) {
        if position > next {
            selectors.push(between((position - next) as usize));
        }
        selectors.push(at(1));
        next = position + 1;
    }
    if rows > next {
        selectors.push(between((rows - next) as usize));
    }
    RowSelection::from(selectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows_of(selection: &RowSelection) -> Vec<(bool, usize)> {
        selection
            .iter()
            .map(|s| (!s.skip, s.row_count))
            .collect::<Vec<_>>()
    }

    #[test]
    fn a_selection_leaves_out_or_keeps_exactly_the_positions() {
        let positions = BTreeSet::from([0, 3, 4, 9, 42]);
        // rows 0..10: position 42 names no row
        let all_but = selection(&positions, 10, Keep::AllBut);
        assert_eq!(all_but.row_count(), 6);
        assert_eq!(all_but.skipped_row_count(), 4);
        let only = selection(&positions, 10, Keep::Only);
        assert_eq!(only.row_count(), 4);
        assert_eq!(only.skipped_row_count(), 6);
        // consecutive selectors of one kind are merged by RowSelection
        assert_eq!(
            rows_of(&all_but),
            vec![(false, 1), (true, 2), (false, 2), (true, 4), (false, 1)]
        );
        assert_eq!(
            rows_of(&selection(&BTreeSet::new(), 5, Keep::AllBut)),
            vec![(true, 5)]
        );
        assert_eq!(selection(&BTreeSet::new(), 5, Keep::Only).row_count(), 0);
    }
}
