//! Changelog mode: a table that appends every change instead of keeping the current state,
//! like DMS's S3 output — each row with its operation, the source transaction's commit LSN,
//! the change's order within that transaction, and the commit time. A consumer rebuilds the
//! table exactly by keeping, per key, the row latest in (`_lsn`, `_seq`) order, dropping keys
//! whose latest row is a delete and everything at or before a truncate:
//!
//! - `I`, `U`: the row after the change, every column resolved: an unchanged TOAST value
//!   (which pgoutput does not send) is taken from the change's old row (`REPLICA IDENTITY
//!   FULL`), from the key's earlier version in the same flush, or from the key's latest row in
//!   the lake — never written as a null;
//! - `D`: the old row (its key, or all of it with `REPLICA IDENTITY FULL`); an update that
//!   changes the key writes a `D` for the old key before the `U` of the new one;
//! - `T`: a TRUNCATE of the table, every source column null.
//!
//! For a changelog table the lake's current row of a key is its latest changelog row: rows
//! are only appended, each row of a key resolved when written, so the latest `I` or `U` holds
//! the key's values after every change committed before it (a key whose latest row is a `D`,
//! or that a later truncate removed, has no values to take).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    new_null_array,
};
use arrow::compute::interleave;
use arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};
use arrow::row::{OwnedRow, RowConverter, SortField};

use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::pipeline::reduce::{Entry, conform};
use crate::table::{ColumnSchema, Oid, OldRow, Op, TableSchema};

/// The operation column: `I`, `U`, `D` or `T` (truncate).
pub const OP_COLUMN: &str = "_op";
/// The commit LSN column (the 64-bit position).
pub const LSN_COLUMN: &str = "_lsn";
/// The commit time column (UTC).
pub const COMMIT_TIME_COLUMN: &str = "_commit_time";
/// The change's order among the table's changes in its source transaction, from 0: with
/// `_lsn`, the order to fold the changelog in.
pub const SEQ_COLUMN: &str = "_seq";
/// The operation letter of a TRUNCATE row.
pub const TRUNCATE_OP: &str = "T";

/// The changelog table's shape: the source's columns, then the change columns (`_seq` last,
/// so tables written before it only gain a column).
pub fn schema(source: &TableSchema) -> TableSchema {
    let mut fields: Vec<Field> = source
        .arrow_nullable
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(OP_COLUMN, DataType::Utf8, true));
    fields.push(Field::new(LSN_COLUMN, DataType::Int64, true));
    fields.push(Field::new(
        COMMIT_TIME_COLUMN,
        DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        true,
    ));
    fields.push(Field::new(SEQ_COLUMN, DataType::Int64, true));
    let mut columns = source.columns.clone();
    for (name, oid) in [
        (OP_COLUMN, 25),
        (LSN_COLUMN, 20),
        (COMMIT_TIME_COLUMN, 1184),
        (SEQ_COLUMN, 20),
    ] {
        columns.push(ColumnSchema {
            name: name.to_string(),
            type_oid: Oid(oid),
            type_modifier: -1,
            key: false,
        });
    }
    let arrow = Arc::new(Schema::new(fields));
    TableSchema {
        table: source.table.clone(),
        relation: source.relation,
        replica_identity: source.replica_identity,
        columns,
        arrow_nullable: arrow.clone(),
        arrow,
    }
}

/// Where a value comes from: `(side, row)`, a side being a batch's new or old rows, a lake
/// batch, or the all-null row of truncates.
type At = (usize, usize);

/// Where an unchanged TOAST value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A row of this flush.
    Flush(At),
    /// The lake's latest row of the looked-up key with this index.
    Lake(usize),
}

/// A key's latest full version in the flush: its row, with the columns taken from elsewhere.
#[derive(Debug, Clone)]
struct Image {
    row: At,
    patched: Vec<(usize, Origin)>,
}

/// One changelog row to write.
#[derive(Debug)]
enum Planned {
    Change {
        op: char,
        row: At,
        patched: Vec<(usize, Origin)>,
        lsn: Lsn,
        seq: i64,
    },
    Truncate {
        lsn: Lsn,
        seq: i64,
    },
}

/// A looked-up key's latest changelog row in the lake.
#[derive(Debug, Clone, Copy)]
struct LakeRow {
    at: At,
    /// It is a delete: the key has no values to take.
    deleted: bool,
    /// Its (`_lsn`, `_seq`).
    order: (i64, i64),
}

/// A flush's changelog rows before the lake lookup of unchanged TOAST values.
#[derive(Debug)]
pub struct Plan {
    source: Arc<TableSchema>,
    target: Arc<TableSchema>,
    key_columns: Vec<usize>,
    converter: Option<RowConverter>,
    sides: Vec<RecordBatch>,
    rows: Vec<Planned>,
    /// Keys whose values must come from the lake, in order of first need.
    lookups: Vec<OwnedRow>,
}

/// Plans every change of `entries` (one table's, in stream order) as a row of the changelog
/// table `target` (from [`schema`]); `key` names the columns that identify a row (the
/// replica identity, or the configured key).
pub fn plan(
    source: &Arc<TableSchema>,
    target: &Arc<TableSchema>,
    key: &[String],
    entries: &[Entry],
) -> Result<Plan> {
    let data_schema = source.arrow_nullable.clone();
    let key_columns: Vec<usize> = key
        .iter()
        .map(|name| {
            data_schema.index_of(name).map_err(|_| Error::Source {
                message: format!(
                    "table {}: key column {name} is not in the table",
                    source.table
                ),
            })
        })
        .collect::<Result<_>>()?;
    let converter = if key_columns.is_empty() {
        None
    } else {
        Some(
            RowConverter::new(
                key_columns
                    .iter()
                    .map(|&i| SortField::new(data_schema.field(i).data_type().clone()))
                    .collect(),
            )
            .map_err(|e| arrow_error(source, e))?,
        )
    };
    let mut sides: Vec<RecordBatch> = Vec::new();
    let mut rows: Vec<Planned> = Vec::new();
    let mut lookups: Vec<OwnedRow> = Vec::new();
    let mut looked_up: HashMap<OwnedRow, usize> = HashMap::new();
    // each key's latest version in the flush; `None`: deleted in the flush
    let mut latest: HashMap<OwnedRow, Option<Image>> = HashMap::new();
    // after a truncate in the flush, a key the flush has not seen since is in no table
    let mut truncated = false;
    let mut sequence = Sequence::default();
    for entry in entries {
        let batch = match entry {
            Entry::Truncate(lsn) => {
                rows.push(Planned::Truncate {
                    lsn: *lsn,
                    seq: sequence.next(*lsn),
                });
                latest.clear();
                truncated = true;
                continue;
            }
            Entry::Changes(batch) => batch,
        };
        let new_side = sides.len();
        let old_side = new_side + 1;
        let new = conform(&batch.new, &data_schema, source)?;
        let old = conform(&batch.old, &data_schema, source)?;
        let keys_of = |rows: &RecordBatch| -> Result<Option<arrow::row::Rows>> {
            converter
                .as_ref()
                .map(|c| {
                    c.convert_columns(
                        &key_columns
                            .iter()
                            .map(|&i| rows.column(i).clone())
                            .collect::<Vec<_>>(),
                    )
                    .map_err(|e| arrow_error(source, e))
                })
                .transpose()
        };
        let new_keys = keys_of(&new)?;
        let old_keys = keys_of(&old)?;
        let key_set = |rows: &RecordBatch, row: usize| {
            !key_columns.is_empty() && key_columns.iter().all(|&i| rows.column(i).is_valid(row))
        };
        // unchanged TOAST values of this batch, by row, as columns of the data layout
        let mut toast: HashMap<usize, Vec<usize>> = HashMap::new();
        for &(row, column) in &batch.unchanged_toast {
            let name = batch
                .schema
                .arrow_nullable
                .fields()
                .get(usize::from(column))
                .map(|f| f.name().clone());
            if let Some(target_column) = name.and_then(|n| data_schema.index_of(&n).ok()) {
                toast.entry(row as usize).or_default().push(target_column);
            }
        }
        for (row, op) in batch.ops.iter().enumerate() {
            let old_row = batch.old_rows.get(row).copied().unwrap_or(OldRow::Absent);
            let new_key = new_keys
                .as_ref()
                .filter(|_| key_set(&new, row))
                .map(|k| k.row(row).owned());
            let old_key = old_keys
                .as_ref()
                .filter(|_| old_row != OldRow::Absent && key_set(&old, row))
                .map(|k| k.row(row).owned());
            match op {
                Op::Insert => {
                    if let Some(key) = new_key {
                        latest.insert(
                            key,
                            Some(Image {
                                row: (new_side, row),
                                patched: Vec::new(),
                            }),
                        );
                    }
                    rows.push(Planned::Change {
                        op: 'I',
                        row: (new_side, row),
                        patched: Vec::new(),
                        lsn: batch.commit_lsn,
                        seq: sequence.next(batch.commit_lsn),
                    });
                }
                Op::Update => {
                    // the key the row had before: the old key of a key change, else its own
                    let before = old_key.clone().or_else(|| new_key.clone());
                    let mut patched = Vec::new();
                    for &column in toast.get(&row).into_iter().flatten() {
                        let origin = if old_row == OldRow::Full {
                            Origin::Flush((old_side, row))
                        } else {
                            match before.as_ref().map(|k| (k, latest.get(k))) {
                                Some((_, Some(Some(image)))) => image
                                    .patched
                                    .iter()
                                    .find(|(c, _)| *c == column)
                                    .map(|(_, o)| *o)
                                    .unwrap_or(Origin::Flush(image.row)),
                                Some((key, None)) if !truncated => {
                                    let next = lookups.len();
                                    let at = *looked_up.entry(key.clone()).or_insert(next);
                                    if at == next {
                                        lookups.push(key.clone());
                                    }
                                    Origin::Lake(at)
                                }
                                _ => {
                                    return Err(no_placeholder(
                                        source,
                                        data_schema.field(column).name(),
                                        batch.commit_lsn,
                                    ));
                                }
                            }
                        };
                        patched.push((column, origin));
                    }
                    if let (Some(old), Some(new_key)) = (&old_key, &new_key)
                        && old != new_key
                    {
                        // the old key leaves the table: a consumer must see it deleted
                        rows.push(Planned::Change {
                            op: 'D',
                            row: (old_side, row),
                            patched: Vec::new(),
                            lsn: batch.commit_lsn,
                            seq: sequence.next(batch.commit_lsn),
                        });
                        latest.insert(old.clone(), None);
                    }
                    if let Some(key) = new_key {
                        latest.insert(
                            key,
                            Some(Image {
                                row: (new_side, row),
                                patched: patched.clone(),
                            }),
                        );
                    }
                    rows.push(Planned::Change {
                        op: 'U',
                        row: (new_side, row),
                        patched,
                        lsn: batch.commit_lsn,
                        seq: sequence.next(batch.commit_lsn),
                    });
                }
                Op::Delete => {
                    if let Some(key) = old_key {
                        latest.insert(key, None);
                    }
                    rows.push(Planned::Change {
                        op: 'D',
                        row: (old_side, row),
                        patched: Vec::new(),
                        lsn: batch.commit_lsn,
                        seq: sequence.next(batch.commit_lsn),
                    });
                }
            }
        }
        sides.push(new);
        sides.push(old);
    }
    Ok(Plan {
        source: source.clone(),
        target: target.clone(),
        key_columns,
        converter,
        sides,
        rows,
        lookups,
    })
}

/// Numbers a table's changes within each source transaction (a transaction's changes are
/// contiguous in a flush and never split across flushes).
#[derive(Debug, Default)]
struct Sequence {
    lsn: Option<Lsn>,
    next: i64,
}

impl Sequence {
    fn next(&mut self, lsn: Lsn) -> i64 {
        if self.lsn != Some(lsn) {
            self.lsn = Some(lsn);
            self.next = 0;
        }
        self.next += 1;
        self.next - 1
    }
}

impl Plan {
    /// The keys whose unchanged TOAST values must come from the lake, as a batch of key
    /// columns; `None` when the flush resolved all of them.
    pub fn lookup_keys(&self) -> Result<Option<RecordBatch>> {
        let Some(converter) = self.converter.as_ref().filter(|_| !self.lookups.is_empty()) else {
            return Ok(None);
        };
        let columns = converter
            .convert_rows(self.lookups.iter().map(|k| k.row()))
            .map_err(|e| arrow_error(&self.source, e))?;
        let fields: Vec<_> = self
            .key_columns
            .iter()
            .map(|&c| self.source.arrow_nullable.field(c).clone())
            .collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .map(Some)
            .map_err(|e| arrow_error(&self.source, e))
    }

    /// The changelog rows, `None` when there are none; `lake` holds the lake's changelog rows
    /// of [`Plan::lookup_keys`] (the changelog layout, conformed by column name), and
    /// `commit_times` each commit LSN's time (µs since the Unix epoch).
    pub fn materialize(
        &self,
        lake: &[RecordBatch],
        commit_times: &HashMap<Lsn, i64>,
    ) -> Result<Option<RecordBatch>> {
        if self.rows.is_empty() {
            return Ok(None);
        }
        let data_schema = self.source.arrow_nullable.clone();
        let width = data_schema.fields().len();
        let mut sides = self.sides.clone();
        // the lake's latest row of each looked-up key
        let mut found: Vec<Option<LakeRow>> = vec![None; self.lookups.len()];
        if let Some(converter) = &self.converter
            && !self.lookups.is_empty()
        {
            let wanted: HashMap<&OwnedRow, usize> = self
                .lookups
                .iter()
                .enumerate()
                .map(|(i, k)| (k, i))
                .collect();
            for batch in lake {
                let batch = conform(batch, &self.target.arrow_nullable, &self.target)?;
                let column = |name: &str| {
                    batch
                        .column_by_name(name)
                        .cloned()
                        .ok_or_else(|| Error::Source {
                            message: format!(
                                "table {}: the lake's changelog rows lack column {name}",
                                self.source.table
                            ),
                        })
                };
                let (ops, lsns, seqs) =
                    (column(OP_COLUMN)?, column(LSN_COLUMN)?, column(SEQ_COLUMN)?);
                let ops = ops.as_string::<i32>();
                let lsns = lsns.as_primitive::<Int64Type>();
                let seqs = seqs.as_primitive::<Int64Type>();
                let keys = converter
                    .convert_columns(
                        &self
                            .key_columns
                            .iter()
                            .map(|&i| batch.column(i).clone())
                            .collect::<Vec<_>>(),
                    )
                    .map_err(|e| arrow_error(&self.source, e))?;
                let side = sides.len();
                let mut used = false;
                for r in 0..batch.num_rows() {
                    let Some(&index) = wanted.get(&keys.row(r).owned()) else {
                        continue;
                    };
                    if ops.is_null(r) || ops.value(r) == TRUNCATE_OP {
                        continue;
                    }
                    // rows written before `_seq` existed have none: read order breaks ties
                    let order = (
                        if lsns.is_null(r) { 0 } else { lsns.value(r) },
                        if seqs.is_null(r) { 0 } else { seqs.value(r) },
                    );
                    if found[index].is_none_or(|f| order >= f.order) {
                        found[index] = Some(LakeRow {
                            at: (side, r),
                            deleted: ops.value(r) == "D",
                            order,
                        });
                        used = true;
                    }
                }
                if used {
                    let data = batch
                        .project(&(0..width).collect::<Vec<_>>())
                        .map_err(|e| arrow_error(&self.source, e))?;
                    sides.push(data);
                }
            }
        }
        // the source columns of a truncate row: one all-null row
        let null_side = sides.len();
        let nulls: Vec<ArrayRef> = data_schema
            .fields()
            .iter()
            .map(|f| new_null_array(f.data_type(), 1))
            .collect();
        sides.push(
            RecordBatch::try_new(data_schema.clone(), nulls)
                .map_err(|e| arrow_error(&self.source, e))?,
        );

        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.target.arrow.fields().len());
        for column in 0..width {
            let mut at = Vec::with_capacity(self.rows.len());
            for planned in &self.rows {
                at.push(match planned {
                    Planned::Truncate { .. } => (null_side, 0),
                    Planned::Change {
                        row, patched, lsn, ..
                    } => match patched.iter().find(|(c, _)| *c == column) {
                        None => *row,
                        Some((_, Origin::Flush(from))) => *from,
                        Some((_, Origin::Lake(index))) => match found[*index] {
                            Some(LakeRow {
                                at, deleted: false, ..
                            }) => at,
                            _ => {
                                return Err(no_placeholder(
                                    &self.source,
                                    data_schema.field(column).name(),
                                    *lsn,
                                ));
                            }
                        },
                    },
                });
            }
            let arrays: Vec<&dyn Array> = sides.iter().map(|b| b.column(column).as_ref()).collect();
            columns.push(interleave(&arrays, &at).map_err(|e| arrow_error(&self.source, e))?);
        }
        let (mut ops, mut lsns, mut times, mut seqs) = (
            Vec::with_capacity(self.rows.len()),
            Vec::with_capacity(self.rows.len()),
            Vec::with_capacity(self.rows.len()),
            Vec::with_capacity(self.rows.len()),
        );
        for planned in &self.rows {
            let (op, lsn, seq) = match planned {
                Planned::Change { op, lsn, seq, .. } => (op.to_string(), *lsn, *seq),
                Planned::Truncate { lsn, seq } => (TRUNCATE_OP.to_string(), *lsn, *seq),
            };
            ops.push(op);
            lsns.push(lsn.get() as i64);
            times.push(commit_times.get(&lsn).copied());
            seqs.push(seq);
        }
        columns.push(Arc::new(StringArray::from(ops)));
        columns.push(Arc::new(Int64Array::from(lsns)));
        columns.push(Arc::new(
            TimestampMicrosecondArray::from(times).with_timezone("+00:00"),
        ));
        columns.push(Arc::new(Int64Array::from(seqs)));
        RecordBatch::try_new(self.target.arrow.clone(), columns)
            .map(Some)
            .map_err(|e| arrow_error(&self.source, e))
    }
}

/// Snapshot rows as changelog rows: inserts at the snapshot's consistent point.
pub fn snapshot_rows(
    source: &TableSchema,
    target: &TableSchema,
    rows: &RecordBatch,
    lsn: Lsn,
    time_micros: i64,
) -> Result<RecordBatch> {
    let rows = conform(rows, &source.arrow_nullable, source)?;
    let n = rows.num_rows();
    let mut columns: Vec<ArrayRef> = rows.columns().to_vec();
    columns.push(Arc::new(StringArray::from(vec!["I"; n])));
    columns.push(Arc::new(Int64Array::from(vec![lsn.get() as i64; n])));
    columns.push(Arc::new(
        TimestampMicrosecondArray::from(vec![time_micros; n]).with_timezone("+00:00"),
    ));
    // one row per key at one position: their order among themselves does not matter
    columns.push(Arc::new(Int64Array::from(vec![0i64; n])));
    RecordBatch::try_new(target.arrow.clone(), columns).map_err(|e| Error::Source {
        message: format!("table {}: {e}", source.table),
    })
}

fn arrow_error(schema: &TableSchema, error: arrow::error::ArrowError) -> Error {
    Error::Source {
        message: format!("table {}: {error}", schema.table),
    }
}

fn no_placeholder(schema: &TableSchema, column: &str, lsn: Lsn) -> Error {
    Error::Source {
        message: format!(
            "table {}, column {column}: an update at commit LSN {lsn} left a TOASTed value \
             unchanged whose row is neither in this flush nor in the lake's changelog; refusing \
             to write a placeholder",
            schema.table
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow::array::{Int32Array, StringArray};
    use arrow::datatypes::Int32Type;

    use super::*;
    use crate::pipeline::spill::Spill;
    use crate::table::{ChangeBatch, RelationId, ReplicaIdentity, TableId};

    fn source() -> Arc<TableSchema> {
        let arrow = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, true),
            Field::new("body", DataType::Utf8, true),
        ]));
        let column = |name: &str, oid: u32, key: bool| ColumnSchema {
            name: name.into(),
            type_oid: Oid(oid),
            type_modifier: -1,
            key,
        };
        Arc::new(TableSchema {
            table: TableId::new("public", "docs"),
            relation: RelationId(1),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![column("id", 23, true), column("body", 25, false)],
            arrow_nullable: arrow.clone(),
            arrow,
        })
    }

    type Row = Option<(i32, Option<&'static str>)>;

    /// One change: op, new row, old row, old-row kind, whether `body` is unchanged TOAST.
    struct Change(Op, Row, Row, OldRow, bool);

    fn side(schema: &TableSchema, rows: &[Row]) -> RecordBatch {
        let ids: Int32Array = rows.iter().map(|r| r.map(|(id, _)| id)).collect();
        let bodies: StringArray = rows.iter().map(|r| r.and_then(|(_, b)| b)).collect();
        RecordBatch::try_new(
            schema.arrow_nullable.clone(),
            vec![Arc::new(ids), Arc::new(bodies)],
        )
        .expect("batch")
    }

    fn batch(lsn: u64, changes: &[Change]) -> Entry {
        let schema = source();
        let new: Vec<Row> = changes.iter().map(|c| c.1).collect();
        let old: Vec<Row> = changes.iter().map(|c| c.2).collect();
        Entry::Changes(ChangeBatch {
            commit_lsn: Lsn(lsn),
            first_position: 0,
            ops: changes.iter().map(|c| c.0).collect(),
            new: side(&schema, &new),
            old: side(&schema, &old),
            old_rows: changes.iter().map(|c| c.3).collect(),
            unchanged_toast: changes
                .iter()
                .enumerate()
                .filter(|(_, c)| c.4)
                .map(|(i, _)| (i as u32, 1))
                .collect(),
            schema,
        })
    }

    fn ins(id: i32, body: &'static str) -> Change {
        Change(
            Op::Insert,
            Some((id, Some(body))),
            None,
            OldRow::Absent,
            false,
        )
    }
    /// An update that leaves `body` unchanged (TOASTed, not sent).
    fn touch(id: i32) -> Change {
        Change(Op::Update, Some((id, None)), None, OldRow::Absent, true)
    }
    /// A key change that leaves `body` unchanged.
    fn rekey(from: i32, to: i32) -> Change {
        Change(
            Op::Update,
            Some((to, None)),
            Some((from, None)),
            OldRow::Key,
            true,
        )
    }
    fn del(id: i32) -> Change {
        Change(Op::Delete, None, Some((id, None)), OldRow::Key, false)
    }

    /// Changelog rows as `op id body lsn seq`.
    fn lines(batch: &Option<RecordBatch>) -> Vec<String> {
        let Some(batch) = batch else {
            return Vec::new();
        };
        let ids = batch.column(0).as_primitive::<Int32Type>();
        let bodies = batch.column(1).as_string::<i32>();
        let ops = batch.column(2).as_string::<i32>();
        let lsns = batch.column(3).as_primitive::<Int64Type>();
        let seqs = batch.column(5).as_primitive::<Int64Type>();
        (0..batch.num_rows())
            .map(|r| {
                let id = ids.is_valid(r).then(|| ids.value(r).to_string());
                let body = bodies.is_valid(r).then(|| bodies.value(r));
                format!(
                    "{} {} {} {} {}",
                    ops.value(r),
                    id.unwrap_or_else(|| "-".into()),
                    body.unwrap_or("NULL"),
                    lsns.value(r),
                    seqs.value(r)
                )
            })
            .collect()
    }

    /// Writes `entries` as the pipeline does, looking keys up in `lake` (changelog rows).
    fn write(entries: &[Entry], lake: &[RecordBatch]) -> Result<Option<RecordBatch>> {
        let source = source();
        let target = Arc::new(schema(&source));
        let plan = plan(&source, &target, &["id".to_string()], entries)?;
        let found = match plan.lookup_keys()? {
            None => Vec::new(),
            Some(keys) => {
                let wanted: Vec<i32> = keys.column(0).as_primitive::<Int32Type>().values().to_vec();
                // the sink's lookup: every changelog row of the wanted keys
                lake.iter()
                    .map(|b| {
                        let ids = b.column(0).as_primitive::<Int32Type>();
                        let keep: arrow::array::BooleanArray = (0..b.num_rows())
                            .map(|r| Some(ids.is_valid(r) && wanted.contains(&ids.value(r))))
                            .collect();
                        arrow::compute::filter_record_batch(b, &keep).expect("filter")
                    })
                    .collect()
            }
        };
        plan.materialize(&found, &HashMap::new())
    }

    /// What a consumer rebuilds: per key the latest row in (`_lsn`, `_seq`) order, keys
    /// whose latest row is a delete dropped, nothing at or before the latest truncate.
    fn fold(changelog: &[RecordBatch]) -> BTreeMap<i32, Option<String>> {
        type Line = (i64, i64, String, Option<i32>, Option<String>);
        let mut all: Vec<Line> = Vec::new();
        for batch in changelog {
            let ids = batch.column(0).as_primitive::<Int32Type>();
            let bodies = batch.column(1).as_string::<i32>();
            let ops = batch.column(2).as_string::<i32>();
            let lsns = batch.column(3).as_primitive::<Int64Type>();
            let seqs = batch.column(5).as_primitive::<Int64Type>();
            for r in 0..batch.num_rows() {
                all.push((
                    lsns.value(r),
                    seqs.value(r),
                    ops.value(r).to_string(),
                    ids.is_valid(r).then(|| ids.value(r)),
                    bodies.is_valid(r).then(|| bodies.value(r).to_string()),
                ));
            }
        }
        all.sort_by_key(|(lsn, seq, ..)| (*lsn, *seq));
        let mut table = BTreeMap::new();
        for (_, _, op, id, body) in all {
            match (op.as_str(), id) {
                ("T", _) => table.clear(),
                ("D", Some(id)) => {
                    table.remove(&id);
                }
                (_, Some(id)) => {
                    table.insert(id, body);
                }
                _ => {}
            }
        }
        table
    }

    #[test]
    fn unchanged_toast_values_come_from_the_flush_or_the_lake_never_null() -> Result<()> {
        // an earlier flush: 2 inserted, then updated with a new body
        let earlier = write(
            &[
                batch(10, &[ins(2, "first")]),
                batch(
                    11,
                    &[Change(
                        Op::Update,
                        Some((2, Some("second"))),
                        None,
                        OldRow::Absent,
                        false,
                    )],
                ),
            ],
            &[],
        )?
        .expect("rows");
        let rows = write(
            &[
                batch(20, &[ins(1, "big"), touch(1)]),
                batch(21, &[touch(2), touch(1)]),
                // REPLICA IDENTITY FULL: the old row carries the value
                batch(
                    22,
                    &[Change(
                        Op::Update,
                        Some((3, None)),
                        Some((3, Some("full"))),
                        OldRow::Full,
                        true,
                    )],
                ),
            ],
            std::slice::from_ref(&earlier),
        )?;
        assert_eq!(
            lines(&rows),
            [
                "I 1 big 20 0",
                "U 1 big 20 1",
                "U 2 second 21 0",
                "U 1 big 21 1",
                "U 3 full 22 0",
            ]
        );
        Ok(())
    }

    #[test]
    fn a_key_change_writes_a_delete_of_the_old_key_then_the_new_row() -> Result<()> {
        let earlier = write(&[batch(10, &[ins(1, "body")])], &[])?.expect("rows");
        let rows = write(
            &[batch(20, &[rekey(1, 7), touch(7)])],
            std::slice::from_ref(&earlier),
        )?;
        assert_eq!(
            lines(&rows),
            ["D 1 NULL 20 0", "U 7 body 20 1", "U 7 body 20 2"]
        );
        let rebuilt = fold(&[earlier, rows.expect("rows")]);
        assert_eq!(rebuilt, [(7, Some("body".to_string()))].into());
        Ok(())
    }

    #[test]
    fn a_truncate_is_a_row_and_the_fold_starts_over() -> Result<()> {
        let earlier = write(&[batch(10, &[ins(1, "a"), ins(2, "b")])], &[])?.expect("rows");
        let rows = write(
            &[
                batch(20, &[ins(3, "c")]),
                Entry::Truncate(Lsn(20)),
                batch(20, &[ins(1, "again")]),
                batch(21, &[del(1), ins(4, "d")]),
            ],
            std::slice::from_ref(&earlier),
        )?;
        assert_eq!(
            lines(&rows),
            [
                "I 3 c 20 0",
                "T - NULL 20 1",
                "I 1 again 20 2",
                "D 1 NULL 21 0",
                "I 4 d 21 1",
            ]
        );
        let rebuilt = fold(&[earlier, rows.expect("rows")]);
        assert_eq!(rebuilt, [(4, Some("d".to_string()))].into());
        Ok(())
    }

    #[test]
    fn a_value_neither_in_the_flush_nor_live_in_the_lake_is_refused() -> Result<()> {
        let earlier = write(&[batch(10, &[ins(1, "a"), del(1)])], &[])?.expect("rows");
        let err = write(&[batch(20, &[touch(1)])], std::slice::from_ref(&earlier))
            .expect_err("the lake's latest row of 1 is a delete");
        assert!(err.to_string().contains("column body"), "{err}");
        assert!(err.to_string().contains("placeholder"), "{err}");
        // after a truncate in the flush, nothing before it can supply a value
        let err =
            write(&[Entry::Truncate(Lsn(20)), batch(21, &[touch(2)])], &[]).expect_err("truncated");
        assert!(err.to_string().contains("placeholder"), "{err}");
        Ok(())
    }

    #[test]
    fn a_spilled_transaction_keeps_its_truncates_in_place() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|source| Error::Io {
            path: std::env::temp_dir(),
            source,
        })?;
        let table = source().table.clone();
        let mut spill = Spill::create(dir.path(), Lsn(30))?;
        spill.add(&table, &[], batch(30, &[ins(1, "a")]))?;
        spill.add(&table, &[], Entry::Truncate(Lsn(30)))?;
        spill.add(&table, &[], batch(30, &[ins(2, "b"), touch(2)]))?;
        spill.add(&table, &[], Entry::Truncate(Lsn(30)))?;
        spill.finish()?;
        assert!(!spill.truncates(&table), "a changelog keeps its rows");
        let mut entries = Vec::new();
        for group in 0..spill.groups(&table) {
            entries.extend(spill.group(&table, group)?);
        }
        let rows = write(&entries, &[])?;
        assert_eq!(
            lines(&rows),
            [
                "I 1 a 30 0",
                "T - NULL 30 1",
                "I 2 b 30 2",
                "U 2 b 30 3",
                "T - NULL 30 4",
            ]
        );
        Ok(())
    }
}
