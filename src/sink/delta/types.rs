//! How source columns are stored in Delta, and the conversions both ways. Delta has no `time`
//! and no `uuid` type, and its timestamps with a time zone are UTC: `time` is stored as its
//! text (`13:45:00.123456`), `uuid` as its canonical text, `timestamptz` as a UTC timestamp.
//! Everything else keeps its Arrow type. [`to_lake`] shapes batches for a table's current
//! schema; [`from_lake`] shapes what the lake holds back into the source's layout (for lookups
//! of unchanged TOAST values).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeBinaryBuilder, GenericListArray, ListArray, RecordBatch,
    RecordBatchOptions, StringBuilder, new_null_array,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};
use deltalake::kernel::StructField;
use deltalake::kernel::engine::arrow_conversion::TryFromArrow;

/// The time zone Delta timestamps are in.
const UTC: &str = "UTC";

/// The Arrow type a source column of type `source` is stored as.
pub fn lake_type(source: &DataType) -> DataType {
    match source {
        DataType::Timestamp(_, Some(_)) => {
            DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from(UTC)))
        }
        DataType::Time32(_) | DataType::Time64(_) => DataType::Utf8,
        DataType::FixedSizeBinary(16) => DataType::Utf8,
        DataType::FixedSizeBinary(_) => DataType::Binary,
        DataType::List(item) => DataType::List(Arc::new(Field::new(
            item.name(),
            lake_type(item.data_type()),
            item.is_nullable(),
        ))),
        other => other.clone(),
    }
}

/// The value of `delta.dataSkippingStatsColumns` for a table of `fields`: the columns whose
/// statistics are written exactly. Decimals are left out: deltalake's writer passes their
/// minimum and maximum through an `f64`, and a rounded `1e+28` in a `NUMERIC(38,10)` column's
/// statistics makes the Delta kernel refuse the whole table. Columns of types without
/// min/max statistics (binary, boolean, lists) are left out too. `None` when no column
/// qualifies (then no column gets statistics: see [`NO_STATS`]).
pub fn stats_columns<'a>(fields: impl IntoIterator<Item = &'a Field>) -> Option<String> {
    let names: Vec<String> = fields
        .into_iter()
        .filter(|f| has_exact_stats(&lake_type(f.data_type())))
        .map(|f| quote_column(f.name()))
        .collect();
    (!names.is_empty()).then(|| names.join(","))
}

/// `delta.dataSkippingNumIndexedCols` for a table without any column [`stats_columns`] keeps.
pub const NO_STATS: &str = "0";

/// Whether deltalake writes exact min/max statistics for a column of Arrow type `data_type`.
fn has_exact_stats(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::Float32
            | DataType::Float64
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Date32
            | DataType::Timestamp(_, _)
    )
}

/// A column name as Delta's column lists write it: in backticks unless it is a plain
/// identifier.
fn quote_column(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("`{}`", name.replace('`', "``"))
    }
}

/// The Delta column of a source field (always nullable: deletes and lookups carry rows where
/// only the key is set, and a column added later is null in the rows written before).
pub fn lake_field(source: &Field) -> Result<StructField, String> {
    let arrow = Field::new(source.name(), lake_type(source.data_type()), true);
    StructField::try_from_arrow(&arrow).map_err(|e| {
        format!(
            "column {} ({}) has no Delta type: {e}",
            source.name(),
            source.data_type()
        )
    })
}

/// `batch` (any layout whose columns are named like the lake's) in the lake layout `target`:
/// each column converted to its lake type, the columns `batch` lacks null.
pub fn to_lake(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch, String> {
    reshape(batch, target)
}

/// `batch` (read from the lake) in the source layout `target`: stored text turned back into
/// times and UUIDs, the columns the lake lacks null.
pub fn from_lake(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch, String> {
    reshape(batch, target)
}

/// `batch` with the columns of `target`, by name, each converted to the target's type.
fn reshape(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch, String> {
    let columns = target
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(column) => convert(column, field.data_type())
                .map_err(|e| format!("column {}: {e}", field.name())),
            None => Ok(new_null_array(field.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<_>, String>>()?;
    RecordBatch::try_new_with_options(
        target.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
    .map_err(|e| e.to_string())
}

/// `array` as type `to`: UUIDs between 16 bytes and text, lists item by item, the rest by
/// Arrow's cast (times to and from text, a timestamp's zone, string views). `verify` casts
/// the source's columns with it, so a value compares as the sink stored it.
pub fn convert(array: &ArrayRef, to: &DataType) -> Result<ArrayRef, String> {
    let from = array.data_type();
    if from == to {
        return Ok(array.clone());
    }
    match (from, to) {
        (DataType::FixedSizeBinary(16), _) => {
            let text = uuid_text(array)?;
            convert(&text, to)
        }
        (_, DataType::FixedSizeBinary(16)) => {
            let text = cast(array, &DataType::Utf8).map_err(|e| e.to_string())?;
            uuid_bytes(&text)
        }
        (DataType::List(_), DataType::List(item)) => {
            let list: &GenericListArray<i32> = array.as_list();
            let values = convert(list.values(), item.data_type())?;
            let rebuilt = ListArray::try_new(
                item.clone(),
                list.offsets().clone(),
                values,
                list.nulls().cloned(),
            )
            .map_err(|e| e.to_string())?;
            Ok(Arc::new(rebuilt))
        }
        _ => cast(array, to).map_err(|e| format!("{from} to {to}: {e}")),
    }
}

/// 16-byte UUIDs as their canonical text (`8-4-4-4-12` lowercase hex digits).
fn uuid_text(array: &ArrayRef) -> Result<ArrayRef, String> {
    let bytes = array.as_fixed_size_binary();
    let mut out = StringBuilder::with_capacity(bytes.len(), bytes.len() * 36);
    for value in bytes.iter() {
        match value {
            Some(value) => {
                let mut text = String::with_capacity(36);
                for (i, byte) in value.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        text.push('-');
                    }
                    text.push_str(&format!("{byte:02x}"));
                }
                out.append_value(text);
            }
            None => out.append_null(),
        }
    }
    Ok(Arc::new(out.finish()))
}

/// UUID text (with or without hyphens) as 16 bytes.
fn uuid_bytes(array: &ArrayRef) -> Result<ArrayRef, String> {
    let text = array.as_string::<i32>();
    let mut out = FixedSizeBinaryBuilder::with_capacity(text.len(), 16);
    for value in text.iter() {
        match value {
            Some(value) => {
                let digits: String = value.chars().filter(|c| *c != '-').collect();
                let parsed = (digits.len() == 32)
                    .then(|| {
                        (0..16)
                            .map(|i| u8::from_str_radix(digits.get(2 * i..2 * i + 2)?, 16).ok())
                            .collect::<Option<Vec<u8>>>()
                    })
                    .flatten()
                    .ok_or_else(|| format!("{value:?} is not a UUID"))?;
                out.append_value(parsed).map_err(|e| e.to_string())?;
            }
            None => out.append_null(),
        }
    }
    Ok(Arc::new(out.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    use arrow::array::{FixedSizeBinaryArray, Int32Array, StringArray, Time64MicrosecondArray};
    use arrow::datatypes::Schema;

    /// The lake layout of a source schema (the types [`lake_type`] gives, all nullable).
    fn lake_schema(source: &Schema) -> SchemaRef {
        Arc::new(Schema::new(
            source
                .fields()
                .iter()
                .map(|f| Field::new(f.name(), lake_type(f.data_type()), true))
                .collect::<Vec<_>>(),
        ))
    }

    fn source_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, true),
            Field::new("at", DataType::Time64(TimeUnit::Microsecond), true),
            Field::new("ref", DataType::FixedSizeBinary(16), true),
        ]))
    }

    #[test]
    fn times_and_uuids_go_to_text_and_come_back() {
        let uuid: Vec<u8> = (0u8..16).collect();
        let batch = RecordBatch::try_new(
            source_schema(),
            vec![
                Arc::new(Int32Array::from(vec![Some(1), Some(2)])),
                Arc::new(Time64MicrosecondArray::from(vec![
                    Some(49_500_123_456),
                    None,
                ])),
                Arc::new(
                    FixedSizeBinaryArray::try_from_sparse_iter_with_size(
                        vec![Some(uuid.as_slice()), None].into_iter(),
                        16,
                    )
                    .expect("uuids"),
                ),
            ],
        )
        .expect("a batch");
        let lake = to_lake(&batch, &lake_schema(&source_schema())).expect("to the lake");
        let refs = lake.column(2).as_string::<i32>();
        assert_eq!(refs.value(0), "00010203-0405-0607-0809-0a0b0c0d0e0f");
        assert!(refs.is_null(1));
        let times = lake.column(1).as_string::<i32>();
        assert_eq!(times.value(0), "13:45:00.123456");
        let back = from_lake(&lake, &source_schema()).expect("back");
        assert_eq!(back, batch);
    }

    #[test]
    fn a_column_the_batch_lacks_is_null() {
        let lake = lake_schema(&source_schema());
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, true)])),
            vec![Arc::new(Int32Array::from(vec![7]))],
        )
        .expect("a batch");
        let shaped = to_lake(&batch, &lake).expect("shaped");
        assert_eq!(shaped.num_columns(), 3);
        assert!(shaped.column(1).is_null(0));
        let bad = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("ref", DataType::Utf8, true)])),
            vec![Arc::new(StringArray::from(vec!["not a uuid"]))],
        )
        .expect("a batch");
        let error = from_lake(&bad, &source_schema()).expect_err("not a uuid");
        assert!(error.contains("ref"), "{error}");
    }

    #[test]
    fn decimals_and_types_without_exact_statistics_are_left_out() {
        let fields = [
            Field::new("id", DataType::Int32, true),
            Field::new("amount", DataType::Decimal128(38, 10), true),
            Field::new("odd name", DataType::Utf8, true),
            Field::new("flag", DataType::Boolean, true),
            Field::new("at", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ];
        assert_eq!(
            stats_columns(fields.iter()).as_deref(),
            Some("id,`odd name`,at")
        );
        let only_decimals = [Field::new("d", DataType::Decimal128(38, 10), true)];
        assert_eq!(stats_columns(only_decimals.iter()), None);
    }
}
