//! Point lookups of current rows by key, for unchanged TOAST values the source did not send.
//! iceberg plans the scan (the data files whose bounds may hold the keys, each with the delete
//! files that apply to it by sequence number and partition); the rows are read and the
//! deletes applied here, because iceberg 0.10.1's own reader cannot apply equality deletes on
//! `uuid` keys. Rare and small, so simple: each file is read whole.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Date32Array, Decimal128Array, FixedSizeBinaryArray,
    Float32Array, Float64Array, Int32Array, Int64Array, LargeBinaryArray, RecordBatch, StringArray,
    Time64MicrosecondArray, TimestampMicrosecondArray,
};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::SchemaRef as ArrowSchemaRef;
use arrow::row::{OwnedRow, RowConverter, SortField};
use futures::TryStreamExt;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::expr::{Predicate, Reference};
use iceberg::io::FileIO;
use iceberg::scan::FileScanTaskDeleteFile;
use iceberg::spec::{DataContentType, Datum, PrimitiveType, TableMetadata, Type};
use iceberg::table::Table;
use iceberg::{Runtime, TableIdent};

use super::files::conform;
use super::positions::{DeletedPositions, open};
use crate::catalog::CatalogTable;

/// Keys per planned scan: each scan's filter is a tree over this many keys.
const KEYS_PER_SCAN: usize = 512;

/// What an equality-delete file removes: its rows over its equality columns.
struct EqualityDeletes {
    columns: Vec<String>,
    converter: RowConverter,
    rows: HashSet<OwnedRow>,
}

/// The current rows of `table` whose key columns equal a row of `keys`, in the layout
/// `target` (columns by name, cast to the target's types; lake columns it lacks are left out).
pub(super) async fn lookup(
    file_io: &FileIO,
    table: &CatalogTable,
    metadata: &TableMetadata,
    metadata_location: &str,
    keys: &RecordBatch,
    target: &ArrowSchemaRef,
) -> Result<Vec<RecordBatch>, String> {
    if keys.num_rows() == 0 || metadata.current_snapshot().is_none() {
        return Ok(Vec::new());
    }
    let schema = metadata.current_schema();
    let lake_arrow =
        Arc::new(schema_to_arrow_schema(schema).map_err(|e| format!("lake schema to Arrow: {e}"))?);
    let mut key_names = Vec::new();
    let mut key_columns: Vec<(PrimitiveType, ArrayRef)> = Vec::new();
    for field in keys.schema().fields() {
        let lake = schema.field_by_name(field.name()).ok_or_else(|| {
            format!(
                "lookup key column {} is not a column of the lake table",
                field.name()
            )
        })?;
        let Type::Primitive(primitive) = lake.field_type.as_ref() else {
            return Err(format!(
                "lookup key column {} is not of a primitive type",
                field.name()
            ));
        };
        let lake_type = lake_arrow
            .field_with_name(field.name())
            .map_err(|e| e.to_string())?
            .data_type()
            .clone();
        let column = keys
            .column_by_name(field.name())
            .ok_or_else(|| format!("lookup key column {} is missing", field.name()))?;
        let column = cast(column, &lake_type).map_err(|e| {
            format!(
                "lookup key column {}: cannot compare with the lake's {lake_type}: {e}",
                field.name()
            )
        })?;
        key_names.push(field.name().clone());
        key_columns.push((primitive.clone(), column));
    }
    let key_converter = converter(&lake_arrow, &key_names)?;
    let columns: Vec<ArrayRef> = key_columns.iter().map(|(_, c)| c.clone()).collect();
    let key_rows = key_converter
        .convert_columns(&columns)
        .map_err(|e| e.to_string())?;
    let wanted: HashSet<OwnedRow> = (0..keys.num_rows())
        // A null key matches nothing, as in SQL.
        .filter(|&r| columns.iter().all(|c| !c.is_null(r)))
        .map(|r| key_rows.row(r).owned())
        .collect();

    let scanned = Table::builder()
        .file_io(file_io.clone())
        .metadata(metadata.clone())
        .metadata_location(metadata_location)
        .identifier(
            TableIdent::from_strs([table.namespace.as_str(), table.name.as_str()])
                .map_err(|e| e.message().to_string())?,
        )
        .runtime(Runtime::try_current().map_err(|e| e.message().to_string())?)
        .build()
        .map_err(|e| format!("cannot open the table for a lookup: {e}"))?;

    let mut deletes_cache: HashMap<String, Arc<EqualityDeletes>> = HashMap::new();
    let mut positions_cache: HashMap<String, Arc<DeletedPositions>> = HashMap::new();
    let mut read_files: HashSet<String> = HashSet::new();
    let mut found = Vec::new();
    let rows: Vec<usize> = (0..keys.num_rows()).collect();
    for chunk in rows.chunks(KEYS_PER_SCAN) {
        let filter = key_filter(&key_names, &key_columns, chunk)?;
        let scan = scanned
            .scan()
            .select_all()
            .with_filter(filter)
            .build()
            .map_err(|e| format!("cannot plan the lookup scan: {e}"))?;
        let tasks: Vec<_> = scan
            .plan_files()
            .await
            .map_err(|e| format!("plan the lookup scan: {e}"))?
            .try_collect()
            .await
            .map_err(|e| format!("plan the lookup scan: {e}"))?;
        for task in tasks {
            // A file planned for two chunks of keys is read once, for all keys.
            if !read_files.insert(task.data_file_path.clone()) {
                continue;
            }
            let mut equality = Vec::new();
            let mut removed_positions = HashSet::new();
            for delete in &task.deletes {
                match delete.file_type {
                    DataContentType::EqualityDeletes => {
                        if !deletes_cache.contains_key(&delete.file_path) {
                            let loaded = load_equality_deletes(file_io, metadata, delete).await?;
                            deletes_cache.insert(delete.file_path.clone(), Arc::new(loaded));
                        }
                        if let Some(d) = deletes_cache.get(&delete.file_path) {
                            equality.push(d.clone());
                        }
                    }
                    DataContentType::PositionDeletes => {
                        if !positions_cache.contains_key(&delete.file_path) {
                            let loaded = DeletedPositions::load(file_io, &delete.file_path).await?;
                            positions_cache.insert(delete.file_path.clone(), Arc::new(loaded));
                        }
                        if let Some(p) = positions_cache
                            .get(&delete.file_path)
                            .and_then(|p| p.of(&task.data_file_path))
                        {
                            removed_positions.extend(p.iter().copied());
                        }
                    }
                    DataContentType::Data => {}
                }
            }
            let mut position = 0_u64;
            for batch in read_parquet(file_io, &task.data_file_path).await? {
                let batch = conform(&batch, &lake_arrow)?;
                let start = position;
                position += batch.num_rows() as u64;
                let data_keys = project_rows(&key_converter, &batch, &key_names)?;
                let deleted = equality
                    .iter()
                    .map(|d| project_rows(&d.converter, &batch, &d.columns))
                    .collect::<Result<Vec<_>, String>>()?;
                let keep: Vec<bool> = (0..batch.num_rows())
                    .map(|row| {
                        wanted.contains(&data_keys.row(row).owned())
                            && !removed_positions.contains(&(start + row as u64))
                            && equality
                                .iter()
                                .zip(&deleted)
                                .all(|(d, values)| !d.rows.contains(&values.row(row).owned()))
                    })
                    .collect();
                let matched = filter_record_batch(&batch, &BooleanArray::from(keep))
                    .map_err(|e| e.to_string())?;
                if matched.num_rows() > 0 {
                    found.push(conform(&matched, target)?);
                }
            }
        }
    }
    Ok(found)
}

/// A row converter over `columns` of `schema`.
fn converter(schema: &ArrowSchemaRef, columns: &[String]) -> Result<RowConverter, String> {
    let fields = columns
        .iter()
        .map(|name| {
            schema
                .field_with_name(name)
                .map(|f| SortField::new(f.data_type().clone()))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, String>>()?;
    RowConverter::new(fields).map_err(|e| e.to_string())
}

/// The rows of `columns` of `batch`, encoded by `converter`.
fn project_rows(
    converter: &RowConverter,
    batch: &RecordBatch,
    columns: &[String],
) -> Result<arrow::row::Rows, String> {
    let arrays = columns
        .iter()
        .map(|name| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| format!("column {name} is missing"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    converter
        .convert_columns(&arrays)
        .map_err(|e| e.to_string())
}

/// The filter that plans only files whose bounds may hold a key of `rows`.
fn key_filter(
    names: &[String],
    columns: &[(PrimitiveType, ArrayRef)],
    rows: &[usize],
) -> Result<Predicate, String> {
    let mut keys_predicates = Vec::with_capacity(rows.len());
    for &row in rows {
        let mut equalities = Vec::with_capacity(columns.len());
        for (name, (primitive, column)) in names.iter().zip(columns) {
            let datum = datum(primitive, column, row)
                .map_err(|e| format!("lookup key column {name}: {e}"))?;
            equalities.push(match datum {
                Some(datum) => Reference::new(name.as_str()).equal_to(datum),
                None => Reference::new(name.as_str()).is_null(),
            });
        }
        keys_predicates.push(balanced(equalities, Predicate::and));
    }
    Ok(balanced(keys_predicates, Predicate::or))
}

/// Every batch of the Parquet file at `path`.
async fn read_parquet(file_io: &FileIO, path: &str) -> Result<Vec<RecordBatch>, String> {
    open(file_io, path)
        .await?
        .build()
        .map_err(|e| format!("{path}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path}: {e}"))
}

/// The rows an equality-delete file removes, over its equality columns (by the table's
/// current names and types).
async fn load_equality_deletes(
    file_io: &FileIO,
    metadata: &TableMetadata,
    delete: &FileScanTaskDeleteFile,
) -> Result<EqualityDeletes, String> {
    let schema = metadata.current_schema();
    let ids = delete.equality_ids.clone().unwrap_or_default();
    let fields = ids
        .iter()
        .map(|id| {
            schema.field_by_id(*id).cloned().ok_or_else(|| {
                format!(
                    "delete file {}: equality field {id} is not in the table's schema",
                    delete.file_path
                )
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let columns: Vec<String> = fields.iter().map(|f| f.name.clone()).collect();
    let delete_schema = iceberg::spec::Schema::builder()
        .with_fields(fields)
        .build()
        .map_err(|e| e.to_string())?;
    let arrow = Arc::new(schema_to_arrow_schema(&delete_schema).map_err(|e| e.to_string())?);
    let converter = converter(&arrow, &columns)?;
    let mut rows = HashSet::new();
    for batch in read_parquet(file_io, &delete.file_path).await? {
        let batch = conform(&batch, &arrow)?;
        let encoded = project_rows(&converter, &batch, &columns)?;
        rows.extend(encoded.iter().map(|r| r.owned()));
    }
    Ok(EqualityDeletes {
        columns,
        converter,
        rows,
    })
}

/// Combines `items` into a tree of depth log(n), so a long key list does not make the
/// predicate visitors recurse once per key.
fn balanced(mut items: Vec<Predicate>, join: fn(Predicate, Predicate) -> Predicate) -> Predicate {
    while items.len() > 1 {
        let mut next = Vec::with_capacity(items.len().div_ceil(2));
        let mut iter = items.into_iter();
        while let Some(left) = iter.next() {
            next.push(match iter.next() {
                Some(right) => join(left, right),
                None => left,
            });
        }
        items = next;
    }
    items.pop().unwrap_or(Predicate::AlwaysFalse)
}

/// The value at `row` of `column` (already in the lake column's Arrow type) as an Iceberg
/// datum; `None` for null.
fn datum(
    primitive: &PrimitiveType,
    column: &ArrayRef,
    row: usize,
) -> Result<Option<Datum>, String> {
    if column.is_null(row) {
        return Ok(None);
    }
    fn get<T: 'static>(column: &ArrayRef) -> Result<&T, String> {
        column
            .as_any()
            .downcast_ref::<T>()
            .ok_or_else(|| format!("unexpected Arrow type {}", column.data_type()))
    }
    let datum = match primitive {
        PrimitiveType::Boolean => Datum::bool(get::<BooleanArray>(column)?.value(row)),
        PrimitiveType::Int => Datum::int(get::<Int32Array>(column)?.value(row)),
        PrimitiveType::Long => Datum::long(get::<Int64Array>(column)?.value(row)),
        PrimitiveType::Float => Datum::float(get::<Float32Array>(column)?.value(row)),
        PrimitiveType::Double => Datum::double(get::<Float64Array>(column)?.value(row)),
        PrimitiveType::Date => Datum::date(get::<Date32Array>(column)?.value(row)),
        PrimitiveType::Time => {
            Datum::time_micros(get::<Time64MicrosecondArray>(column)?.value(row))
                .map_err(|e| e.message().to_string())?
        }
        PrimitiveType::Timestamp => {
            Datum::timestamp_micros(get::<TimestampMicrosecondArray>(column)?.value(row))
        }
        PrimitiveType::Timestamptz => {
            Datum::timestamptz_micros(get::<TimestampMicrosecondArray>(column)?.value(row))
        }
        PrimitiveType::String => Datum::string(get::<StringArray>(column)?.value(row)),
        PrimitiveType::Binary => {
            Datum::binary(get::<LargeBinaryArray>(column)?.value(row).iter().copied())
        }
        PrimitiveType::Fixed(_) => Datum::fixed(
            get::<FixedSizeBinaryArray>(column)?
                .value(row)
                .iter()
                .copied(),
        ),
        // Iceberg's single-value serialisation: a uuid's 16 bytes, a decimal's unscaled value
        // in big-endian two's complement — the only public way to build these datums.
        PrimitiveType::Uuid => Datum::try_from_bytes(
            get::<FixedSizeBinaryArray>(column)?.value(row),
            primitive.clone(),
        )
        .map_err(|e| e.message().to_string())?,
        PrimitiveType::Decimal { .. } => Datum::try_from_bytes(
            &get::<Decimal128Array>(column)?.value(row).to_be_bytes(),
            primitive.clone(),
        )
        .map_err(|e| e.message().to_string())?,
        other => return Err(format!("keys of type {other} cannot be looked up")),
    };
    Ok(Some(datum))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn long_key_lists_make_shallow_predicates() {
        let leaves: Vec<Predicate> = (0..1000)
            .map(|i| Reference::new("id").equal_to(Datum::int(i)))
            .collect();
        let tree = balanced(leaves, Predicate::or);
        fn depth(p: &Predicate) -> usize {
            match p {
                Predicate::Or(e) | Predicate::And(e) => {
                    1 + e.inputs().iter().map(|c| depth(c)).max().unwrap_or(0)
                }
                _ => 1,
            }
        }
        assert!(depth(&tree) <= 11, "depth {}", depth(&tree));
        assert_eq!(balanced(Vec::new(), Predicate::or), Predicate::AlwaysFalse);
    }

    #[test]
    fn decimals_and_uuids_become_datums() {
        let decimals: ArrayRef = Arc::new(
            Decimal128Array::from(vec![-12345_i128])
                .with_precision_and_scale(10, 2)
                .expect("a decimal"),
        );
        let decimal_type = PrimitiveType::Decimal {
            precision: 10,
            scale: 2,
        };
        let d = datum(&decimal_type, &decimals, 0)
            .expect("converts")
            .expect("not null");
        assert_eq!(d.to_human_string(), "-123.45");

        let uuids: ArrayRef = Arc::new(
            FixedSizeBinaryArray::try_from_iter(vec![[0x12_u8; 16]].into_iter()).expect("a uuid"),
        );
        let u = datum(&PrimitiveType::Uuid, &uuids, 0)
            .expect("converts")
            .expect("not null");
        assert_eq!(u.to_human_string(), "12121212-1212-1212-1212-121212121212");
    }
}
