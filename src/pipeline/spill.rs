//! Source transactions larger than the memory budget (DESIGN.md invariant 4).
//!
//! A lake commit never holds part of a source transaction, and a transaction may be far larger
//! than memory (one `UPDATE` of a whole table). Once the open transaction outgrows its share of
//! the budget, its changes leave memory for local Arrow IPC files, split by a hash of the key
//! into [`BUCKETS`] buckets per table. At the transaction's commit, each bucket is read back on
//! its own and reduced to one final state per key — a key's whole history is in its bucket, so
//! the reduction per bucket equals the reduction of the whole — and its rows and deletes go to
//! lake files that stay uncommitted until the transaction's single commit names them all.
//! Memory then holds one bucket at a time.
//!
//! Two cases keep the result exact where keys cross buckets:
//! - An update that changes the key goes to the new key's bucket (which deletes the old key
//!   and writes the new row) and, as a delete of the old key, to the old key's bucket, so a
//!   later change of the old key in the transaction still finds it deleted. Both buckets may
//!   write the same equality delete; deletes never apply to rows of their own commit, so a
//!   row re-inserted under the old key survives.
//! - If such an update also leaves TOASTed values unchanged that its old row does not carry,
//!   the values must come from the old key's latest version, which may be in the other bucket:
//!   the table's buckets are then read back as one, in the transaction's order (correct, at the
//!   cost of memory; logged).
//!
//! A TRUNCATE in the transaction drops what the table spilled before it. A schema change in
//! the transaction starts a new segment of files (IPC files hold one schema); a bucket is read
//! back segment after segment, in order.

use std::collections::HashMap;
use std::fs::File;
use std::hash::{DefaultHasher, Hasher};
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, BooleanArray, RecordBatch, UInt8Array, UInt32Array,
    UInt64Array,
};
use arrow::compute::{concat_batches, filter_record_batch, sort_to_indices, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt8Type, UInt64Type};
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use arrow::row::{RowConverter, SortField};

use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::pipeline::reduce::Entry;
use crate::pipeline::sealed::{SealedWriter, Sealer};
use crate::table::{ChangeBatch, OldRow, Op, TableId, TableSchema};

/// Buckets per table. A 10 M-row transaction of a 7-column table spills about 2 GiB of Arrow
/// data: 64 buckets keep each read-back near 30 MiB.
pub const BUCKETS: usize = 64;

const OP: &str = "_op";
const OLD_ROW: &str = "_old";
const POSITION: &str = "_pos";
const COPY: &str = "_copy";
const TOAST: &str = "_toast";
const FIXED: usize = 5;

/// The spilled part of one open source transaction. Its directory is removed on drop.
#[derive(Debug)]
pub struct Spill {
    dir: PathBuf,
    commit_lsn: Lsn,
    tables: HashMap<TableId, TableSpill>,
    order: Vec<TableId>,
    /// Changes written so far: also the next change's sequence number (its order in the
    /// transaction, which a merged read-back restores).
    rows: u64,
    bytes: u64,
    /// The key every file of this spill is sealed with, in memory only.
    sealer: Arc<Sealer>,
}

/// One table's spilled changes.
#[derive(Debug)]
struct TableSpill {
    key: Vec<String>,
    truncate: bool,
    /// Whether an update or a delete is among the changes: the commit may then remove rows
    /// committed before.
    removes: bool,
    merged: bool,
    segments: Vec<Segment>,
    generation: u32,
    /// An append-only (changelog) table's truncates, which it records as changes: each
    /// comes before the segment of this index (segments after it start anew).
    truncates_before: Vec<usize>,
    /// The next change starts a segment (it follows a recorded truncate).
    new_segment: bool,
}

#[derive(Debug)]
struct Segment {
    schema: Arc<TableSchema>,
    encoded: SchemaRef,
    files: Vec<Option<BucketFile>>,
}

struct BucketFile {
    path: PathBuf,
    writer: Option<FileWriter<BufWriter<SealedWriter<File>>>>,
}

impl std::fmt::Debug for BucketFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketFile")
            .field("path", &self.path)
            .field("open", &self.writer.is_some())
            .finish()
    }
}

impl Spill {
    /// An empty spill for the transaction committing at `commit_lsn`, in a new directory under
    /// `parent`.
    pub fn create(parent: &Path, commit_lsn: Lsn) -> Result<Spill> {
        let dir = parent.join(format!(
            "lakewriter-spill-{}-{:016X}",
            std::process::id(),
            commit_lsn.get()
        ));
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        let sealer = Sealer::new().map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Spill {
            dir,
            commit_lsn,
            tables: HashMap::new(),
            order: Vec::new(),
            rows: 0,
            bytes: 0,
            sealer: Arc::new(sealer),
        })
    }

    /// Changes written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Arrow bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The tables with spilled changes, in the order they first appeared.
    pub fn tables(&self) -> &[TableId] {
        &self.order
    }

    /// Adds `entry` of `table`, whose rows are identified by `key` (empty: an append-only
    /// table, one bucket).
    pub fn add(&mut self, table: &TableId, key: &[String], entry: Entry) -> Result<()> {
        if !self.tables.contains_key(table) {
            self.order.push(table.clone());
            self.tables.insert(
                table.clone(),
                TableSpill {
                    key: key.to_vec(),
                    truncate: false,
                    removes: false,
                    merged: false,
                    segments: Vec::new(),
                    generation: 0,
                    truncates_before: Vec::new(),
                    new_segment: false,
                },
            );
        }
        let dir = self.dir.clone();
        let Some(spill) = self.tables.get_mut(table) else {
            return Ok(());
        };
        match entry {
            Entry::Truncate(_) if spill.key.is_empty() => {
                // an append-only table keeps what came before and records the truncate in
                // its place among the changes
                spill.truncates_before.push(spill.segments.len());
                spill.new_segment = true;
                Ok(())
            }
            Entry::Truncate(_) => {
                // what came before is gone: drop its files
                for segment in spill.segments.drain(..) {
                    for file in segment.files.into_iter().flatten() {
                        drop(file.writer);
                        let _ = std::fs::remove_file(&file.path);
                    }
                }
                spill.truncate = true;
                spill.removes = false;
                spill.merged = false;
                spill.generation += 1;
                Ok(())
            }
            Entry::Changes(batch) => {
                let sequence = self.rows;
                self.rows += batch.len() as u64;
                self.bytes +=
                    (batch.new.get_array_memory_size() + batch.old.get_array_memory_size()) as u64;
                spill.removes |= batch.ops.iter().any(|op| !matches!(op, Op::Insert));
                spill.write(&dir, &self.sealer, table, &batch, sequence)
            }
        }
    }

    /// Closes the files: the spill is ready to be read back.
    pub fn finish(&mut self) -> Result<()> {
        for spill in self.tables.values_mut() {
            for segment in &mut spill.segments {
                for file in segment.files.iter_mut().flatten() {
                    if let Some(mut writer) = file.writer.take() {
                        writer.finish().map_err(|e| io_error(&file.path, e))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether a TRUNCATE of `table` is in the transaction (before its spilled changes).
    pub fn truncates(&self, table: &TableId) -> bool {
        self.tables.get(table).is_some_and(|s| s.truncate)
    }

    /// Whether the commit of `table`'s changes removes no row committed before other than by
    /// a TRUNCATE: it truncates, the table is append-only (changelog, no key), or the changes
    /// are all inserts (of keys the lake lacks: exactly once). Its parts then only add rows.
    pub fn adds_only(&self, table: &TableId) -> bool {
        self.tables
            .get(table)
            .is_some_and(|s| s.truncate || s.key.is_empty() || !s.removes)
    }

    /// How many groups [`Spill::group`] reads `table` back in.
    pub fn groups(&self, table: &TableId) -> usize {
        match self.tables.get(table) {
            Some(spill) if spill.merged => 1,
            Some(_) => BUCKETS,
            None => 0,
        }
    }

    /// Reads back group `group` of `table` (after [`Spill::finish`]): its changes, in the
    /// transaction's order, each batch with the shape it was made in.
    pub fn group(&self, table: &TableId, group: usize) -> Result<Vec<Entry>> {
        let Some(spill) = self.tables.get(table) else {
            return Ok(Vec::new());
        };
        let mut entries = Vec::new();
        // an append-only table's changes (and so its recorded truncates) are all in bucket 0
        let truncates = |before: usize, entries: &mut Vec<Entry>| {
            if group == 0 || spill.merged {
                for _ in spill.truncates_before.iter().filter(|&&b| b == before) {
                    entries.push(Entry::Truncate(self.commit_lsn));
                }
            }
        };
        for (index, segment) in spill.segments.iter().enumerate() {
            truncates(index, &mut entries);
            if spill.merged {
                // every bucket as one, copies left out, in the transaction's order
                let mut batches = Vec::new();
                for file in segment.files.iter().flatten() {
                    batches.extend(read_file(&file.path, &self.sealer)?);
                }
                if batches.is_empty() {
                    continue;
                }
                let all = concat_batches(&segment.encoded, &batches)
                    .map_err(|e| arrow_error(table, "merge spilled buckets", e))?;
                let originals = all
                    .column(3)
                    .as_boolean_opt()
                    .map(arrow::compute::not)
                    .transpose()
                    .map_err(|e| arrow_error(table, "merge spilled buckets", e))?;
                let all = match originals {
                    Some(keep) => filter_record_batch(&all, &keep)
                        .map_err(|e| arrow_error(table, "merge spilled buckets", e))?,
                    None => all,
                };
                let order = sort_to_indices(all.column(2), None, None)
                    .map_err(|e| arrow_error(table, "merge spilled buckets", e))?;
                let sorted = take_batch(&all, &order)
                    .map_err(|e| arrow_error(table, "merge spilled buckets", e))?;
                entries.push(Entry::Changes(decode(
                    &segment.schema,
                    self.commit_lsn,
                    &sorted,
                )?));
            } else if let Some(Some(file)) = segment.files.get(group) {
                for batch in read_file(&file.path, &self.sealer)? {
                    entries.push(Entry::Changes(decode(
                        &segment.schema,
                        self.commit_lsn,
                        &batch,
                    )?));
                }
            }
        }
        truncates(spill.segments.len(), &mut entries);
        Ok(entries)
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        self.tables.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TableSpill {
    fn write(
        &mut self,
        dir: &Path,
        sealer: &Arc<Sealer>,
        table: &TableId,
        batch: &ChangeBatch,
        sequence: u64,
    ) -> Result<()> {
        let starts_segment = std::mem::take(&mut self.new_segment)
            || self
                .segments
                .last()
                .is_none_or(|s| !s.schema.same_shape(&batch.schema));
        if starts_segment {
            self.segments.push(Segment {
                schema: batch.schema.clone(),
                encoded: encoded_schema(&batch.schema),
                files: (0..BUCKETS).map(|_| None).collect(),
            });
        }
        let (buckets, merge) = route(table, &self.key, batch)?;
        if merge && !self.merged {
            tracing::warn!(
                table = %table,
                lsn = %batch.commit_lsn,
                "a key change with unchanged TOAST values in a transaction larger than the \
                 memory budget: its table is read back whole at the commit"
            );
            self.merged = true;
        }
        let segment_no = self.segments.len() - 1;
        let generation = self.generation;
        let Some(segment) = self.segments.last_mut() else {
            return Ok(());
        };
        for (bucket, rows) in buckets.into_iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let encoded = encode(&segment.encoded, batch, &rows, sequence)
                .map_err(|e| arrow_error(table, "encode spilled changes", e))?;
            let slot = &mut segment.files[bucket];
            if slot.is_none() {
                let path = dir.join(format!(
                    "{}.{}-{generation}-{segment_no}-{bucket}.arrow",
                    table.schema, table.name
                ));
                let file = File::create(&path).map_err(|source| Error::Io {
                    path: path.clone(),
                    source,
                })?;
                let writer =
                    FileWriter::try_new(BufWriter::new(sealer.writer(file)), &segment.encoded)
                        .map_err(|e| io_error(&path, e))?;
                *slot = Some(BucketFile {
                    path,
                    writer: Some(writer),
                });
            }
            if let Some(file) = slot
                && let Some(writer) = file.writer.as_mut()
            {
                writer
                    .write(&encoded)
                    .map_err(|e| io_error(&file.path, e))?;
            }
        }
        Ok(())
    }
}

/// One row of a batch as it goes to a bucket: its index, and whether it is the delete-of-the-
/// old-key copy of a key change.
type Routed = (u32, bool);

/// The key columns `keys` in Arrow's row format, from their values in a type-independent
/// form: a key column whose type widens within one spilled transaction (int → bigint, a
/// wider decimal or varchar) keeps each key in one bucket, so its changes still meet in one
/// reduction.
fn key_rows(table: &TableId, keys: Vec<arrow::array::ArrayRef>) -> Result<arrow::row::Rows> {
    let keys: Vec<arrow::array::ArrayRef> = keys
        .iter()
        .map(|array| {
            let canonical = canonical_key_type(array.data_type());
            if &canonical == array.data_type() {
                Ok(array.clone())
            } else {
                arrow::compute::cast(array, &canonical)
                    .map_err(|e| arrow_error(table, "hash keys", e))
            }
        })
        .collect::<Result<_>>()?;
    let converter = RowConverter::new(
        keys.iter()
            .map(|a| SortField::new(a.data_type().clone()))
            .collect(),
    )
    .map_err(|e| arrow_error(table, "hash keys", e))?;
    converter
        .convert_columns(&keys)
        .map_err(|e| arrow_error(table, "hash keys", e))
}

/// The type a key column's values are hashed in: one per family of types a column can widen
/// within (integers, floats, text, decimals of one scale).
fn canonical_key_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => DataType::Int64,
        DataType::Float16 | DataType::Float32 | DataType::Float64 => DataType::Float64,
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::Decimal128(_, scale) => DataType::Decimal128(38, *scale),
        other => other.clone(),
    }
}

/// Splits `batch` by bucket. The second value says whether the table must be read back whole
/// (a key change across buckets with TOAST values only the old key's history holds).
fn route(table: &TableId, key: &[String], batch: &ChangeBatch) -> Result<(Vec<Vec<Routed>>, bool)> {
    let mut buckets: Vec<Vec<Routed>> = vec![Vec::new(); BUCKETS];
    if key.is_empty() {
        buckets[0] = (0..batch.len() as u32).map(|r| (r, false)).collect();
        return Ok((buckets, false));
    }
    let arrow = &batch.schema.arrow_nullable;
    let columns: Vec<usize> = key
        .iter()
        .map(|name| {
            arrow.index_of(name).map_err(|_| Error::Source {
                message: format!("table {table}: key column {name} is not in the table"),
            })
        })
        .collect::<Result<_>>()?;
    let rows_of = |side: &RecordBatch| {
        key_rows(
            table,
            columns.iter().map(|&i| side.column(i).clone()).collect(),
        )
    };
    let new_keys = rows_of(&batch.new)?;
    let old_keys = rows_of(&batch.old)?;
    let bucket_of = |bytes: &[u8]| {
        let mut hasher = DefaultHasher::new();
        hasher.write(bytes);
        (hasher.finish() % BUCKETS as u64) as usize
    };
    let old_key_set = |row: usize| columns.iter().all(|&i| batch.old.column(i).is_valid(row));
    let mut merge = false;
    for (row, op) in batch.ops.iter().enumerate() {
        let old_row = batch.old_rows.get(row).copied().unwrap_or(OldRow::Absent);
        let r = row as u32;
        match op {
            Op::Insert => buckets[bucket_of(new_keys.row(row).as_ref())].push((r, false)),
            Op::Delete => buckets[bucket_of(old_keys.row(row).as_ref())].push((r, false)),
            Op::Update => {
                let new_bucket = bucket_of(new_keys.row(row).as_ref());
                buckets[new_bucket].push((r, false));
                if old_row != OldRow::Absent && old_key_set(row) {
                    let old_bucket = bucket_of(old_keys.row(row).as_ref());
                    if old_bucket != new_bucket {
                        buckets[old_bucket].push((r, true));
                        let toast = batch.unchanged_toast.iter().any(|&(t, _)| t == r);
                        merge |= toast && old_row != OldRow::Full;
                    }
                }
            }
        }
    }
    Ok((buckets, merge))
}

/// The IPC layout of a spilled batch: op, old-row kind, sequence number in the transaction,
/// copy flag, unchanged TOAST columns, then the new row's columns and the old row's.
fn encoded_schema(schema: &TableSchema) -> SchemaRef {
    let mut fields = vec![
        Field::new(OP, DataType::UInt8, false),
        Field::new(OLD_ROW, DataType::UInt8, false),
        Field::new(POSITION, DataType::UInt64, false),
        Field::new(COPY, DataType::Boolean, false),
        Field::new(TOAST, DataType::Binary, true),
    ];
    for prefix in ['n', 'o'] {
        for (i, field) in schema.arrow_nullable.fields().iter().enumerate() {
            fields.push(Field::new(
                format!("{prefix}{i}"),
                field.data_type().clone(),
                true,
            ));
        }
    }
    Arc::new(Schema::new(fields))
}

/// Encodes `rows` of `batch`, whose first change is the transaction's `sequence`th spilled.
fn encode(
    encoded: &SchemaRef,
    batch: &ChangeBatch,
    rows: &[Routed],
    sequence: u64,
) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    let indices = UInt32Array::from_iter_values(rows.iter().map(|(r, _)| *r));
    let ops = UInt8Array::from_iter_values(rows.iter().map(|&(r, copy)| {
        if copy {
            op_code(Op::Delete)
        } else {
            batch
                .ops
                .get(r as usize)
                .map(|&op| op_code(op))
                .unwrap_or(0)
        }
    }));
    let old_rows = UInt8Array::from_iter_values(rows.iter().map(|&(r, _)| {
        match batch
            .old_rows
            .get(r as usize)
            .copied()
            .unwrap_or(OldRow::Absent)
        {
            OldRow::Absent => 0,
            OldRow::Key => 1,
            OldRow::Full => 2,
        }
    }));
    let positions = UInt64Array::from_iter_values(rows.iter().map(|&(r, _)| sequence + r as u64));
    let copies = BooleanArray::from_iter(rows.iter().map(|&(_, copy)| Some(copy)));
    let mut toast_by_row: HashMap<u32, Vec<u8>> = HashMap::new();
    for &(row, column) in &batch.unchanged_toast {
        toast_by_row
            .entry(row)
            .or_default()
            .extend_from_slice(&column.to_le_bytes());
    }
    let mut toast = BinaryBuilder::new();
    for &(r, copy) in rows {
        match toast_by_row.get(&r) {
            Some(columns) if !copy => toast.append_value(columns),
            _ => toast.append_null(),
        }
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(ops),
        Arc::new(old_rows),
        Arc::new(positions),
        Arc::new(copies),
        Arc::new(toast.finish()),
    ];
    for side in [&batch.new, &batch.old] {
        for column in side.columns() {
            columns.push(take(column.as_ref(), &indices, None)?);
        }
    }
    RecordBatch::try_new(encoded.clone(), columns)
}

fn decode(schema: &Arc<TableSchema>, commit_lsn: Lsn, batch: &RecordBatch) -> Result<ChangeBatch> {
    let table = &schema.table;
    let bad = |what: &str| Error::Source {
        message: format!("table {table}: a spilled batch has a bad {what} column"),
    };
    let width = schema.arrow_nullable.fields().len();
    if batch.num_columns() != FIXED + 2 * width {
        return Err(bad("layout"));
    }
    let ops = batch
        .column(0)
        .as_primitive_opt::<UInt8Type>()
        .ok_or_else(|| bad(OP))?
        .values()
        .iter()
        .map(|&code| match code {
            1 => Ok(Op::Insert),
            2 => Ok(Op::Update),
            3 => Ok(Op::Delete),
            _ => Err(bad(OP)),
        })
        .collect::<Result<Vec<_>>>()?;
    let old_rows = batch
        .column(1)
        .as_primitive_opt::<UInt8Type>()
        .ok_or_else(|| bad(OLD_ROW))?
        .values()
        .iter()
        .map(|&code| match code {
            1 => OldRow::Key,
            2 => OldRow::Full,
            _ => OldRow::Absent,
        })
        .collect();
    let positions = batch
        .column(2)
        .as_primitive_opt::<UInt64Type>()
        .ok_or_else(|| bad(POSITION))?;
    let toast = batch
        .column(4)
        .as_binary_opt::<i32>()
        .ok_or_else(|| bad(TOAST))?;
    let mut unchanged_toast = Vec::new();
    for row in 0..batch.num_rows() {
        if toast.is_valid(row) {
            for pair in toast.value(row).chunks_exact(2) {
                unchanged_toast.push((row as u32, u16::from_le_bytes([pair[0], pair[1]])));
            }
        }
    }
    let side = |offset: usize| {
        RecordBatch::try_new(
            schema.arrow_nullable.clone(),
            batch.columns()[offset..offset + width].to_vec(),
        )
        .map_err(|e| arrow_error(table, "decode spilled changes", e))
    };
    Ok(ChangeBatch {
        schema: schema.clone(),
        commit_lsn,
        first_position: if positions.is_empty() {
            0
        } else {
            positions.value(0)
        },
        ops,
        new: side(FIXED)?,
        old: side(FIXED + width)?,
        old_rows,
        unchanged_toast,
    })
}

fn op_code(op: Op) -> u8 {
    match op {
        Op::Insert => 1,
        Op::Update => 2,
        Op::Delete => 3,
    }
}

fn take_batch(
    batch: &RecordBatch,
    indices: &UInt32Array,
) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    let columns = batch
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), indices, None))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    RecordBatch::try_new(batch.schema(), columns)
}

fn read_file(path: &Path, sealer: &Sealer) -> Result<Vec<RecordBatch>> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let sealed = sealer.reader(BufReader::new(file)).map_err(io)?;
    let reader =
        FileReader::try_new(BufReader::new(sealed), None).map_err(|e| io_error(path, e))?;
    reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| io_error(path, e))
}

fn io_error(path: &Path, e: arrow::error::ArrowError) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    }
}

fn arrow_error(table: &TableId, context: &str, e: arrow::error::ArrowError) -> Error {
    Error::Source {
        message: format!("table {table}: {context}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Decimal128Array, Int32Array, Int64Array, StringArray};

    use super::*;

    fn bytes(keys: Vec<ArrayRef>) -> Vec<Vec<u8>> {
        let rows = key_rows(&TableId::new("public", "t"), keys).expect("key rows");
        rows.iter().map(|r| r.as_ref().to_vec()).collect()
    }

    #[test]
    fn a_key_whose_column_widens_hashes_the_same() {
        let int4: ArrayRef = Arc::new(Int32Array::from(vec![5, -7]));
        let int8: ArrayRef = Arc::new(Int64Array::from(vec![5, -7]));
        assert_eq!(bytes(vec![int4]), bytes(vec![int8]));

        let narrow: ArrayRef = Arc::new(
            Decimal128Array::from(vec![1234])
                .with_precision_and_scale(10, 2)
                .expect("decimal"),
        );
        let wide: ArrayRef = Arc::new(
            Decimal128Array::from(vec![1234])
                .with_precision_and_scale(20, 2)
                .expect("decimal"),
        );
        let text: ArrayRef = Arc::new(StringArray::from(vec!["k"]));
        assert_eq!(bytes(vec![narrow, text.clone()]), bytes(vec![wide, text]));
    }

    /// A table `(id, v)` whose key column has the Arrow type `id_type`.
    fn shape(id_type: DataType) -> Arc<TableSchema> {
        use crate::table::ColumnSchema;
        let arrow = Arc::new(Schema::new(vec![
            Field::new("id", id_type.clone(), true),
            Field::new("v", DataType::Utf8, true),
        ]));
        let oid = if id_type == DataType::Int32 { 23 } else { 20 };
        Arc::new(TableSchema {
            table: TableId::new("public", "t"),
            relation: crate::table::RelationId(1),
            replica_identity: crate::table::ReplicaIdentity::Default,
            columns: vec![
                ColumnSchema {
                    name: "id".into(),
                    type_oid: crate::table::Oid(oid),
                    type_modifier: -1,
                    key: true,
                },
                ColumnSchema {
                    name: "v".into(),
                    type_oid: crate::table::Oid(25),
                    type_modifier: -1,
                    key: false,
                },
            ],
            arrow_nullable: arrow.clone(),
            arrow,
        })
    }

    /// Changes of one key column type: `(op, id, v)`.
    fn changes(schema: &Arc<TableSchema>, rows: &[(Op, i64, &str)]) -> Entry {
        let ids: ArrayRef = match schema.arrow_nullable.field(0).data_type() {
            DataType::Int32 => Arc::new(Int32Array::from(
                rows.iter().map(|r| r.1 as i32).collect::<Vec<_>>(),
            )),
            _ => Arc::new(Int64Array::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
        };
        let values: ArrayRef = Arc::new(StringArray::from(
            rows.iter().map(|r| Some(r.2)).collect::<Vec<_>>(),
        ));
        let new =
            RecordBatch::try_new(schema.arrow_nullable.clone(), vec![ids, values]).expect("batch");
        // inserts and updates that keep their key carry no old row
        let nulls: Vec<ArrayRef> = schema
            .arrow_nullable
            .fields()
            .iter()
            .map(|f| arrow::array::new_null_array(f.data_type(), rows.len()))
            .collect();
        let old = RecordBatch::try_new(schema.arrow_nullable.clone(), nulls).expect("old");
        Entry::Changes(ChangeBatch {
            schema: schema.clone(),
            commit_lsn: Lsn(9),
            first_position: 0,
            ops: rows.iter().map(|r| r.0).collect(),
            new,
            old,
            old_rows: vec![OldRow::Absent; rows.len()],
            unchanged_toast: Vec::new(),
        })
    }

    #[test]
    fn a_key_widened_within_a_spilled_transaction_meets_in_one_bucket_with_one_final_state()
    -> Result<()> {
        let dir = tempfile::tempdir().map_err(|source| Error::Io {
            path: std::env::temp_dir(),
            source,
        })?;
        let table = TableId::new("public", "t");
        let key = ["id".to_string()];
        let (int4, int8) = (shape(DataType::Int32), shape(DataType::Int64));
        let mut spill = Spill::create(dir.path(), Lsn(9))?;
        // key 5 inserted as int4, the column then widened to int8, key 5 updated twice
        spill.add(&table, &key, changes(&int4, &[(Op::Insert, 5, "a")]))?;
        spill.add(
            &table,
            &key,
            changes(&int8, &[(Op::Update, 5, "b"), (Op::Update, 5, "c")]),
        )?;
        spill.finish()?;
        let mut groups = 0;
        let mut finals = Vec::new();
        for group in 0..spill.groups(&table) {
            let entries = spill.group(&table, group)?;
            if entries.is_empty() {
                continue;
            }
            groups += 1;
            let plan = crate::pipeline::reduce::plan(int8.clone(), &key, &entries)?;
            assert!(plan.lookup_keys()?.is_none());
            let reduced = plan.materialize(&[])?;
            assert!(reduced.deletes.is_none(), "an inserted key needs no delete");
            for rows in reduced.rows {
                let v = rows.column(1).as_string::<i32>();
                finals.extend((0..rows.num_rows()).map(|r| v.value(r).to_string()));
            }
        }
        assert_eq!(groups, 1, "the key's changes were split across buckets");
        assert_eq!(finals, ["c"]);
        Ok(())
    }
}
