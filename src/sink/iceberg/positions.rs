//! Iceberg position deletes (`file_path`, `pos`), as other engines write them (Spark's
//! merge-on-read `DELETE`, `UPDATE` and `MERGE`): what one position-delete file removes, and a
//! data file read with those rows left out — or only those rows kept. The one reader of them:
//! the TOAST lookups ([`super::lookup`]) and the lake's merge-on-read (`query`, `verify`,
//! `compact`, `export`) both go through it.
//!
//! A data file whose positions form long runs is read with a Parquet row selection built from
//! them, so the rows left out are never decoded; one whose positions are scattered (every
//! other row, as a delete of every other key leaves) is decoded whole and filtered batch by
//! batch with a mask, which is far cheaper than a selection of millions of one-row runs.
//! Either way its batches are decoded as they are consumed.

use std::collections::{BTreeSet, HashMap};

use arrow::array::{Array, BooleanArray, RecordBatch, StringArray, UInt64Array};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::DataType;
use arrow::error::ArrowError;
use bytes::Bytes;
use iceberg::io::FileIO;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};

use super::vectors::{self, VectorAt};

/// The rows position-delete files remove: per data file path, the positions (0-based, in the
/// file's row order).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeletedPositions {
    files: HashMap<String, BTreeSet<u64>>,
}

impl DeletedPositions {
    /// What the position-delete file at `path` removes: a Parquet file of `file_path` and
    /// `pos`, or a Puffin file of deletion vectors (all of them).
    pub async fn load(file_io: &FileIO, path: &str) -> Result<Self, String> {
        let bytes = read_bytes(file_io, path).await?;
        if vectors::is_puffin(&bytes) {
            return Ok(DeletedPositions {
                files: vectors::read_all(&bytes, path)?,
            });
        }
        let rows = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .map_err(|e| format!("{path}: {e}"))?
            .build()
            .map_err(|e| format!("{path}: {e}"))?;
        // positions gathered in lists first, then each list built into its set at once (the
        // spec sorts them: the build is linear, where inserting one by one searches the tree)
        let mut lists: HashMap<String, Vec<u64>> = HashMap::new();
        for batch in rows {
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
                // an allocation per data file, not per row
                let (file, position) = (files.value(row), positions.value(row));
                match lists.get_mut(file) {
                    Some(list) => list.push(position),
                    None => {
                        lists.insert(file.to_string(), vec![position]);
                    }
                }
            }
        }
        Ok(DeletedPositions {
            files: lists
                .into_iter()
                .map(|(file, list)| (file, list.into_iter().collect()))
                .collect(),
        })
    }

    /// What the delete file at `path` removes, as its manifest entry describes it: the one
    /// deletion vector at `vector`, else the whole file.
    pub async fn load_entry(
        file_io: &FileIO,
        path: &str,
        vector: Option<&VectorAt>,
    ) -> Result<Self, String> {
        match vector {
            Some(at) => Ok(DeletedPositions {
                files: HashMap::from([(
                    at.referenced.clone(),
                    vectors::load(file_io, path, at).await?,
                )]),
            }),
            None => Self::load(file_io, path).await,
        }
    }

    /// The positions removed from the data file at `data_path`, if any.
    pub fn of(&self, data_path: &str) -> Option<&BTreeSet<u64>> {
        self.files.get(data_path)
    }

    /// The data files it removes rows from.
    pub fn data_files(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// Adds `positions` of the data file at `path`.
    pub fn insert(&mut self, path: &str, positions: impl IntoIterator<Item = u64>) {
        self.files
            .entry(path.to_string())
            .or_default()
            .extend(positions);
    }

    /// Adds what `other` removes.
    pub fn merge(&mut self, other: DeletedPositions) {
        for (path, positions) in other.files {
            self.files.entry(path).or_default().extend(positions);
        }
    }

    /// The rows it names, read from their data files (only `columns` of them when given, as
    /// [`read_data_file`] reads), file by file.
    pub async fn read_rows(
        &self,
        file_io: &FileIO,
        columns: Option<&[String]>,
    ) -> Result<Vec<RecordBatch>, String> {
        let mut rows = Vec::new();
        for (path, positions) in &self.files {
            for batch in read_data_file(file_io, path, positions, Keep::Only, columns).await? {
                rows.push(batch.map_err(|e| format!("{path}: {e}"))?);
            }
        }
        Ok(rows)
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

/// The field ids the spec reserves for a position-delete file's columns.
const FILE_PATH_FIELD_ID: i32 = 2_147_483_546;
const POS_FIELD_ID: i32 = 2_147_483_545;

/// Writes, at `path`, the position-delete file of the rows `deleted` names, sorted by file
/// path then position as the spec requires; every data file it names must be of `partition`
/// in spec `spec_id` (a reader applies a delete file only within its partition). Returns its
/// entry for a manifest, naming its data file when it has only one (`referenced_data_file`,
/// which lets readers skip it for every other file).
pub async fn write_position_deletes(
    file_io: &FileIO,
    path: &str,
    deleted: &DeletedPositions,
    partition: iceberg::spec::Struct,
    spec_id: i32,
) -> Result<iceberg::spec::DataFile, String> {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array};
    use arrow::datatypes::{Field, Schema};
    use parquet::arrow::{ArrowWriter, PARQUET_FIELD_ID_META_KEY};

    let with_id = |field: Field, id: i32| {
        field.with_metadata(HashMap::from([(
            PARQUET_FIELD_ID_META_KEY.to_string(),
            id.to_string(),
        )]))
    };
    let schema = Arc::new(Schema::new(vec![
        with_id(
            Field::new("file_path", DataType::Utf8, false),
            FILE_PATH_FIELD_ID,
        ),
        with_id(Field::new("pos", DataType::Int64, false), POS_FIELD_ID),
    ]));
    let mut files: Vec<(&String, &BTreeSet<u64>)> = deleted.files.iter().collect();
    files.sort();
    let (mut paths, mut positions) = (Vec::new(), Vec::new());
    for (file, rows) in &files {
        for &row in rows.iter() {
            paths.push(file.as_str());
            positions
                .push(i64::try_from(row).map_err(|_| format!("{path}: position {row} of {file}"))?);
        }
    }
    let records = paths.len() as u64;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(paths)),
        Arc::new(Int64Array::from(positions)),
    ];
    let batch = arrow::array::RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| format!("{path}: {e}"))?;
    let mut bytes = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut bytes, schema, None).map_err(|e| format!("{path}: {e}"))?;
    writer.write(&batch).map_err(|e| format!("{path}: {e}"))?;
    writer.close().map_err(|e| format!("{path}: {e}"))?;
    let size = bytes.len() as u64;
    write_bytes(file_io, path, bytes).await?;
    let referenced = match files.as_slice() {
        [(only, _)] => Some((*only).clone()),
        _ => None,
    };
    iceberg::spec::DataFileBuilder::default()
        .content(iceberg::spec::DataContentType::PositionDeletes)
        .file_path(path.to_string())
        .file_format(iceberg::spec::DataFileFormat::Parquet)
        .partition(partition)
        .partition_spec_id(spec_id)
        .record_count(records)
        .file_size_in_bytes(size)
        .referenced_data_file(referenced)
        .build()
        .map_err(|e| format!("{path}: {e}"))
}

/// Which rows of a data file a read keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Every row but those at the positions: the live rows.
    AllBut,
    /// Only the rows at the positions: the rows deleted (what `export` needs their keys of).
    Only,
}

/// Batches of a data file's rows, decoded as they are consumed.
pub type DataRows = Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>> + Send>;

/// A row selection of more runs than one per this many rows is read as a filter instead.
const ROWS_PER_RUN: u64 = 64;

/// The rows of the data file at `path` that `keep` picks by `positions`, as a reader that
/// decodes them batch by batch (in the file's own schema). With `columns`, only the top-level
/// columns of those names that the file has are decoded (none at all reads only row counts).
pub async fn read_data_file(
    file_io: &FileIO,
    path: &str,
    positions: &BTreeSet<u64>,
    keep: Keep,
    columns: Option<&[String]>,
) -> Result<DataRows, String> {
    let mut builder = open(file_io, path).await?;
    if let Some(columns) = columns {
        let roots: Vec<usize> = builder
            .schema()
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| columns.iter().any(|c| c == f.name()))
            .map(|(i, _)| i)
            .collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        builder = builder.with_projection(mask);
    }
    let rows = u64::try_from(builder.metadata().file_metadata().num_rows())
        .map_err(|_| format!("{path}: a negative row count"))?;
    if runs(positions, rows) * ROWS_PER_RUN <= rows {
        let reader: ParquetRecordBatchReader = builder
            .with_row_selection(selection(positions, rows, keep))
            .build()
            .map_err(|e| format!("{path}: {e}"))?;
        return Ok(Box::new(reader));
    }
    let reader = builder.build().map_err(|e| format!("{path}: {e}"))?;
    Ok(Box::new(Filtered {
        reader,
        positions: positions.range(..rows).copied().collect(),
        next: 0,
        offset: 0,
        keep,
    }))
}

/// How many runs (of rows kept or left out) `positions` cut a file of `rows` rows into.
fn runs(positions: &BTreeSet<u64>, rows: u64) -> u64 {
    if rows == 0 {
        return 0;
    }
    let mut boundaries = 0u64;
    let mut previous: Option<u64> = None;
    for &position in positions.range(..rows) {
        if previous.is_none_or(|p| p + 1 != position) {
            // a run of listed rows starts here: after unlisted rows, unless at the start; and
            // the run of listed rows before it (if any) ended with unlisted rows after it
            boundaries += u64::from(position > 0) + u64::from(previous.is_some());
        }
        previous = Some(position);
    }
    if previous.is_some_and(|p| p + 1 < rows) {
        boundaries += 1;
    }
    boundaries + 1
}

/// A whole data file's batches, each filtered by the positions that fall in it.
struct Filtered {
    reader: ParquetRecordBatchReader,
    /// The positions, sorted, and the first not yet passed.
    positions: Vec<u64>,
    next: usize,
    /// The file row the next batch starts at.
    offset: u64,
    keep: Keep,
}

impl Iterator for Filtered {
    type Item = Result<RecordBatch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = match self.reader.next()? {
            Ok(batch) => batch,
            Err(e) => return Some(Err(e)),
        };
        let rows = batch.num_rows() as u64;
        let listed = self.keep == Keep::Only;
        let mut mask = vec![!listed; batch.num_rows()];
        while let Some(&position) = self.positions.get(self.next) {
            if position >= self.offset + rows {
                break;
            }
            // positions are file rows at or past this batch's first (sorted, passed ones
            // skipped): the difference fits the batch
            mask[(position - self.offset) as usize] = listed;
            self.next += 1;
        }
        self.offset += rows;
        Some(filter_record_batch(&batch, &BooleanArray::from(mask)))
    }
}

/// The Parquet file at `path`, ready to read.
pub async fn open(
    file_io: &FileIO,
    path: &str,
) -> Result<ParquetRecordBatchReaderBuilder<Bytes>, String> {
    ParquetRecordBatchReaderBuilder::try_new(read_bytes(file_io, path).await?)
        .map_err(|e| format!("{path}: {e}"))
}

/// The whole file at `path`.
pub(super) async fn read_bytes(file_io: &FileIO, path: &str) -> Result<Bytes, String> {
    file_io
        .new_input(path)
        .map_err(|e| format!("{path}: {e}"))?
        .read()
        .await
        .map_err(|e| format!("{path}: {e}"))
}

/// Writes `bytes` as the file at `path`.
pub(super) async fn write_bytes(
    file_io: &FileIO,
    path: &str,
    bytes: Vec<u8>,
) -> Result<(), String> {
    file_io
        .new_output(path)
        .map_err(|e| format!("{path}: {e}"))?
        .write(Bytes::from(bytes))
        .await
        .map_err(|e| format!("{path}: {e}"))
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

    /// Rows 0..`rows` as a one-column Parquet file at `path`.
    fn numbers_file(path: &std::path::Path, rows: i64) {
        use arrow::array::Int64Array;
        let batch = RecordBatch::try_from_iter([(
            "n",
            std::sync::Arc::new(Int64Array::from_iter_values(0..rows)) as arrow::array::ArrayRef,
        )])
        .expect("a batch");
        let file = std::fs::File::create(path).expect("create");
        let properties = parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(1000))
            .build();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(properties))
                .expect("a writer");
        writer.write(&batch).expect("write");
        writer.close().expect("close");
    }

    async fn numbers_read(path: &str, positions: &BTreeSet<u64>, keep: Keep) -> Vec<i64> {
        use arrow::array::Int64Array;
        let io = FileIO::new_with_fs();
        let mut out = Vec::new();
        for batch in read_data_file(&io, path, positions, keep, None)
            .await
            .expect("read")
        {
            let batch = batch.expect("a batch");
            let column = batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("numbers")
                .clone();
            out.extend(column.values().iter().copied());
        }
        out
    }

    #[tokio::test]
    async fn scattered_and_clustered_positions_read_the_same_rows_either_way() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("numbers.parquet");
        numbers_file(&path, 5000);
        let path = path.display().to_string();
        // every other row (a filter), a few runs (a selection), a position past the end
        let scattered: BTreeSet<u64> = (0..5000).filter(|n| n % 2 == 0).chain([9999]).collect();
        let clustered: BTreeSet<u64> = (100..400).chain(4990..5000).collect();
        assert!(runs(&scattered, 5000) * ROWS_PER_RUN > 5000);
        assert!(runs(&clustered, 5000) * ROWS_PER_RUN <= 5000);
        for positions in [&scattered, &clustered] {
            let kept: Vec<i64> = (0..5000)
                .filter(|n| !positions.contains(&(*n as u64)))
                .collect();
            let listed: Vec<i64> = (0..5000)
                .filter(|n| positions.contains(&(*n as u64)))
                .collect();
            assert_eq!(numbers_read(&path, positions, Keep::AllBut).await, kept);
            assert_eq!(numbers_read(&path, positions, Keep::Only).await, listed);
        }
        assert_eq!(runs(&BTreeSet::new(), 10), 1);
        assert_eq!(runs(&BTreeSet::from([0]), 10), 2);
        assert_eq!(runs(&BTreeSet::from([0, 1, 5]), 10), 4);
        assert_eq!(runs(&BTreeSet::from([9]), 10), 2);
    }

    #[tokio::test]
    async fn a_projection_decodes_only_its_columns_and_keeps_the_row_counts() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("numbers.parquet");
        numbers_file(&path, 5000);
        let path = path.display().to_string();
        let io = FileIO::new_with_fs();
        let scattered: BTreeSet<u64> = (0..5000).filter(|n| n % 3 == 0).collect();
        let clustered: BTreeSet<u64> = (1000..1500).collect();
        for positions in [&scattered, &clustered] {
            let kept = 5000 - positions.len();
            // no column (what `count(*)` asks for), a column the file lacks, and `n`
            for (columns, width) in [
                (vec![], 0),
                (vec!["gone".to_string()], 0),
                (vec!["n".to_string()], 1),
            ] {
                let mut rows = 0;
                for batch in read_data_file(&io, &path, positions, Keep::AllBut, Some(&columns))
                    .await
                    .expect("read")
                {
                    let batch = batch.expect("a batch");
                    assert_eq!(batch.num_columns(), width, "{columns:?}");
                    rows += batch.num_rows();
                }
                assert_eq!(rows, kept, "{columns:?}");
            }
        }
    }

    fn rows_of(selection: &RowSelection) -> Vec<(bool, usize)> {
        selection
            .iter()
            .map(|s| (!s.skip, s.row_count))
            .collect::<Vec<_>>()
    }

    #[tokio::test]
    async fn written_position_deletes_read_back_with_the_spec_field_ids() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("deletes.parquet").display().to_string();
        let deleted: DeletedPositions = [
            ("s3://b/t/data/b.parquet".to_string(), 7),
            ("s3://b/t/data/a.parquet".to_string(), 3),
            ("s3://b/t/data/a.parquet".to_string(), 0),
        ]
        .into_iter()
        .collect();
        let io = FileIO::new_with_fs();
        let entry = write_position_deletes(&io, &path, &deleted, iceberg::spec::Struct::empty(), 0)
            .await
            .expect("write");
        assert_eq!(entry.record_count(), 3);
        assert_eq!(entry.referenced_data_file(), None);
        assert_eq!(
            DeletedPositions::load(&io, &path).await.expect("read"),
            deleted
        );
        let builder = open(&io, &path).await.expect("open");
        let ids: Vec<i32> = builder
            .parquet_schema()
            .columns()
            .iter()
            .map(|c| c.self_type().get_basic_info().id())
            .collect();
        assert_eq!(ids, vec![FILE_PATH_FIELD_ID, POS_FIELD_ID]);
        // sorted by file path, then position
        let rows: Vec<(String, i64)> = builder
            .build()
            .expect("read")
            .flat_map(|b| {
                let b = b.expect("a batch");
                let files = b.column(0).as_any().downcast_ref::<StringArray>().cloned();
                let pos = b
                    .column(1)
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .cloned();
                let (files, pos) = (files.expect("text"), pos.expect("longs"));
                (0..b.num_rows())
                    .map(|r| (files.value(r).to_string(), pos.value(r)))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                ("s3://b/t/data/a.parquet".to_string(), 0),
                ("s3://b/t/data/a.parquet".to_string(), 3),
                ("s3://b/t/data/b.parquet".to_string(), 7),
            ]
        );
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
