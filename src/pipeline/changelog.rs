//! Changelog mode: a table that appends every change instead of keeping the current state,
//! like DMS's S3 output — each row with its operation (`I`, `U`, `D`), the source transaction's
//! commit LSN and its commit time. Deletes carry the old row (its key, or all of it with
//! `REPLICA IDENTITY FULL`).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::compute::interleave;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::pipeline::reduce::{Entry, conform};
use crate::source::Oid;
use crate::source::changes::{ColumnSchema, Op, TableSchema};

/// The operation column.
pub const OP_COLUMN: &str = "_op";
/// The commit LSN column (the 64-bit position).
pub const LSN_COLUMN: &str = "_lsn";
/// The commit time column (UTC).
pub const COMMIT_TIME_COLUMN: &str = "_commit_time";

/// The changelog table's shape: the source's columns, then the three change columns.
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
    let mut columns = source.columns.clone();
    for (name, oid) in [
        (OP_COLUMN, 25),
        (LSN_COLUMN, 20),
        (COMMIT_TIME_COLUMN, 1184),
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

/// Every change of `entries` as a row of the changelog table `target` (from [`schema`]), in
/// stream order. `commit_times` gives each commit LSN's time (µs since the Unix epoch).
pub fn rows(
    source: &TableSchema,
    target: &TableSchema,
    entries: &[Entry],
    commit_times: &HashMap<Lsn, i64>,
) -> Result<Option<RecordBatch>> {
    let data_schema = source.arrow_nullable.clone();
    let mut sides: Vec<RecordBatch> = Vec::new();
    let mut at: Vec<(usize, usize)> = Vec::new();
    let (mut ops, mut lsns, mut times) = (Vec::new(), Vec::new(), Vec::new());
    for entry in entries {
        let Entry::Changes(batch) = entry else {
            continue;
        };
        let new = conform(&batch.new, &data_schema, source)?;
        let old = conform(&batch.old, &data_schema, source)?;
        let base = sides.len();
        sides.push(new);
        sides.push(old);
        for (row, op) in batch.ops.iter().enumerate() {
            at.push(if *op == Op::Delete {
                (base + 1, row)
            } else {
                (base, row)
            });
            ops.push(op.letter().to_string());
            lsns.push(batch.commit_lsn.get() as i64);
            times.push(commit_times.get(&batch.commit_lsn).copied());
        }
    }
    if at.is_empty() {
        return Ok(None);
    }
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(target.arrow.fields().len());
    for column in 0..data_schema.fields().len() {
        let arrays: Vec<&dyn arrow::array::Array> =
            sides.iter().map(|b| b.column(column).as_ref()).collect();
        columns.push(interleave(&arrays, &at).map_err(|e| Error::Source {
            message: format!("table {}: {e}", source.table),
        })?);
    }
    columns.push(Arc::new(StringArray::from(ops)));
    columns.push(Arc::new(Int64Array::from(lsns)));
    columns.push(Arc::new(
        TimestampMicrosecondArray::from(times).with_timezone("+00:00"),
    ));
    RecordBatch::try_new(target.arrow.clone(), columns)
        .map(Some)
        .map_err(|e| Error::Source {
            message: format!("table {}: {e}", source.table),
        })
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
    RecordBatch::try_new(target.arrow.clone(), columns).map_err(|e| Error::Source {
        message: format!("table {}: {e}", source.table),
    })
}
