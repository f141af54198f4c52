//! [`ColumnBuilder`]: one column of a record batch being built from PostgreSQL's text output.
//! Values are parsed from bytes straight into plain vectors (no `String` per value), and those
//! vectors become the Arrow array's buffers without a copy.

use std::fmt;
use std::mem::take;
use std::sync::Arc;

use arrow::array::builder::NullBufferBuilder;
use arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, FixedSizeBinaryArray,
    Float32Array, Float64Array, Int32Array, Int64Array, ListArray, StringArray,
    Time64MicrosecondArray, TimestampMicrosecondArray,
};
use arrow::buffer::{Buffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, FieldRef, TimeUnit};
use arrow::error::ArrowError;

use super::text::{self, ArrayError, MAX_DECIMAL_PRECISION, Reason};
use super::{Oid, PG_TYPE_METADATA_KEY, PgType, TypeError};

/// Appends PostgreSQL text values of one column and finishes them into an Arrow array of the
/// column's field type (see [`arrow_field`](super::arrow_field)).
///
/// An append either adds one value or fails and adds nothing (for arrays too: the elements
/// already taken are removed), so a caller may report the error and keep the builder.
pub struct ColumnBuilder {
    column: Arc<str>,
    /// What errors call the type: the field's PostgreSQL type when its metadata says, else its
    /// Arrow type.
    pg_type: Arc<str>,
    nulls: NullBufferBuilder,
    values: Values,
}

impl fmt::Debug for ColumnBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ColumnBuilder")
            .field("column", &self.column)
            .field("pg_type", &self.pg_type)
            .field("len", &self.len())
            .finish()
    }
}

/// The values so far, in the layout of the Arrow array they become.
enum Values {
    Boolean(arrow::array::BooleanBufferBuilder),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Float32(Vec<f32>),
    Float64(Vec<f64>),
    Decimal {
        values: Vec<i128>,
        precision: u8,
        scale: u8,
    },
    Utf8(ByteValues),
    Binary(ByteValues),
    Date32(Vec<i32>),
    Time64(Vec<i64>),
    Timestamp {
        values: Vec<i64>,
        /// `Some` for `timestamptz`: the text carries an offset.
        zone: Option<Arc<str>>,
    },
    Uuid(Vec<u8>),
    List(Box<ListValues>),
}

/// Variable-length values: Arrow's offsets (starting at 0) and the concatenated bytes.
struct ByteValues {
    offsets: Vec<i32>,
    data: Vec<u8>,
}

/// A list column: offsets into a builder of all the lists' elements.
struct ListValues {
    item: FieldRef,
    offsets: Vec<i32>,
    items: ColumnBuilder,
    /// Unescaped elements, reused from value to value.
    scratch: Vec<u8>,
}

/// Why an append was refused: a reason about this value, or an element's own error.
enum Refused {
    Reason(Reason),
    Element(TypeError),
}

impl From<Reason> for Refused {
    fn from(reason: Reason) -> Self {
        Refused::Reason(reason)
    }
}

/// How a column's values come in binary COPY: the types decoded here, or their text output
/// (the column cast to `text` in the query, or a type whose binary form is its text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// Text output, parsed as [`ColumnBuilder::append_text`] does.
    Text,
    /// `bool`: one byte.
    Bool,
    /// `int2`: 16-bit big-endian.
    Int2,
    /// `int4`: 32-bit big-endian.
    Int4,
    /// `int8`: 64-bit big-endian.
    Int8,
    /// `float4`: IEEE 754, big-endian.
    Float4,
    /// `float8`: IEEE 754, big-endian.
    Float8,
    /// `bytea`: the bytes.
    Bytea,
    /// `date`: 32-bit days since 2000-01-01.
    Date,
    /// `time`: 64-bit microseconds since midnight.
    Time,
    /// `timestamp`, `timestamptz`: 64-bit microseconds since 2000-01-01 (UTC).
    Timestamp,
    /// `uuid`: 16 bytes.
    Uuid,
    /// `numeric` into a decimal: base-10000 digits.
    Numeric,
}

impl Wire {
    /// How a column of PostgreSQL type `oid` mapped to Arrow `data_type` is read from binary
    /// COPY: decoded when the pair is one the builder decodes, else as its text output (the
    /// query casts the column to `text` unless its binary form is its text already).
    pub fn of(oid: Oid, data_type: &DataType) -> Wire {
        let Some(pg) = PgType::builtin(oid) else {
            return Wire::Text;
        };
        match (pg, data_type) {
            (PgType::Bool, DataType::Boolean) => Wire::Bool,
            (PgType::Int2, DataType::Int32) => Wire::Int2,
            (PgType::Int4, DataType::Int32) => Wire::Int4,
            (PgType::Int8, DataType::Int64) => Wire::Int8,
            (PgType::Float4, DataType::Float32) => Wire::Float4,
            (PgType::Float8, DataType::Float64) => Wire::Float8,
            (PgType::Bytea, DataType::Binary) => Wire::Bytea,
            (PgType::Date, DataType::Date32) => Wire::Date,
            (PgType::Time, DataType::Time64(TimeUnit::Microsecond)) => Wire::Time,
            (PgType::Timestamp, DataType::Timestamp(TimeUnit::Microsecond, None)) => {
                Wire::Timestamp
            }
            (PgType::Timestamptz, DataType::Timestamp(TimeUnit::Microsecond, Some(_))) => {
                Wire::Timestamp
            }
            (PgType::Uuid, DataType::FixedSizeBinary(16)) => Wire::Uuid,
            (PgType::Numeric, DataType::Decimal128(_, _)) => Wire::Numeric,
            _ => Wire::Text,
        }
    }

    /// The expression selecting `column` (already quoted) for binary COPY read as `self`: the
    /// column itself when it is decoded or its binary form is its text (`text`, `varchar`,
    /// `char(n)`, `name`, `json`), else its text output. That is `format('%s', …)`, which calls
    /// the type's output function, not a cast to `text`: casts differ from the output for some
    /// types (`char(n)` loses its padding, `inet` gains a netmask).
    pub fn select(self, oid: Oid, column: &str) -> String {
        let raw = self != Wire::Text
            || matches!(
                PgType::builtin(oid),
                Some(PgType::Text | PgType::Varchar | PgType::Bpchar | PgType::Name | PgType::Json)
            );
        if raw {
            column.to_string()
        } else {
            format!("CASE WHEN {column} IS NULL THEN NULL ELSE format('%s', {column}) END")
        }
    }
}

/// Days from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
const DATE_RANGE: Reason = "a date out of Arrow's range";
const TIMESTAMP_RANGE: Reason =
    "a timestamp after 294247-01-10 does not fit 64-bit microseconds since 1970";

/// Arrow offsets are 32-bit: a column's values must stay under 2 GiB per batch.
const TOO_LARGE: Reason = "the column's batch would exceed 2 GiB; flush smaller batches";

impl ByteValues {
    fn with_capacity(capacity: usize) -> Self {
        let mut offsets = Vec::with_capacity(capacity + 1);
        offsets.push(0);
        ByteValues {
            offsets,
            data: Vec::new(),
        }
    }

    /// Ends the current value at the data's length.
    fn close_value(&mut self) -> Result<(), Reason> {
        let end = i32::try_from(self.data.len()).map_err(|_| TOO_LARGE)?;
        self.offsets.push(end);
        Ok(())
    }

    fn push(&mut self, value: &[u8]) -> Result<(), Reason> {
        if self.data.len() + value.len() > i32::MAX as usize {
            return Err(TOO_LARGE);
        }
        self.data.extend_from_slice(value);
        self.close_value()
    }

    fn truncate(&mut self, len: usize) {
        self.offsets.truncate(len + 1);
        let end = self.offsets.last().copied().unwrap_or(0);
        self.data.truncate(usize::try_from(end).unwrap_or(0));
    }

    fn take(&mut self) -> (OffsetBuffer<i32>, Buffer) {
        let offsets = std::mem::replace(&mut self.offsets, vec![0]);
        // Offsets start at 0 and never decrease (each is the data length when pushed), which
        // is all OffsetBuffer::new asserts.
        (
            OffsetBuffer::new(offsets.into()),
            Buffer::from_vec(take(&mut self.data)),
        )
    }

    fn allocated_bytes(&self) -> usize {
        self.offsets.capacity() * 4 + self.data.capacity()
    }
}

impl ColumnBuilder {
    /// A builder for `field`'s Arrow type; errors name `field`'s name and, when its metadata
    /// has [`PG_TYPE_METADATA_KEY`], its PostgreSQL type.
    pub fn new(field: &Field) -> Result<Self, TypeError> {
        Self::with_capacity(field, 0)
    }

    /// Like [`ColumnBuilder::new`], with room for `capacity` values before reallocating.
    pub fn with_capacity(field: &Field, capacity: usize) -> Result<Self, TypeError> {
        let pg_type = match field.metadata().get(PG_TYPE_METADATA_KEY) {
            Some(described) => Arc::from(described.as_str()),
            None => Arc::from(field.data_type().to_string()),
        };
        Self::for_type(
            Arc::from(field.name().as_str()),
            pg_type,
            field.data_type(),
            capacity,
        )
    }

    fn for_type(
        column: Arc<str>,
        pg_type: Arc<str>,
        data_type: &DataType,
        capacity: usize,
    ) -> Result<Self, TypeError> {
        let unsupported = || TypeError::UnsupportedArrowType {
            column: column.to_string(),
            data_type: data_type.to_string(),
        };
        let values = match data_type {
            DataType::Boolean => Values::Boolean(arrow::array::BooleanBufferBuilder::new(capacity)),
            DataType::Int32 => Values::Int32(Vec::with_capacity(capacity)),
            DataType::Int64 => Values::Int64(Vec::with_capacity(capacity)),
            DataType::Float32 => Values::Float32(Vec::with_capacity(capacity)),
            DataType::Float64 => Values::Float64(Vec::with_capacity(capacity)),
            DataType::Decimal128(precision, scale)
                if (1..=MAX_DECIMAL_PRECISION).contains(precision)
                    && (0..=*precision as i8).contains(scale) =>
            {
                Values::Decimal {
                    values: Vec::with_capacity(capacity),
                    precision: *precision,
                    scale: scale.unsigned_abs(),
                }
            }
            DataType::Utf8 => Values::Utf8(ByteValues::with_capacity(capacity)),
            DataType::Binary => Values::Binary(ByteValues::with_capacity(capacity)),
            DataType::Date32 => Values::Date32(Vec::with_capacity(capacity)),
            DataType::Time64(TimeUnit::Microsecond) => Values::Time64(Vec::with_capacity(capacity)),
            DataType::Timestamp(TimeUnit::Microsecond, zone) => Values::Timestamp {
                values: Vec::with_capacity(capacity),
                zone: zone.clone(),
            },
            DataType::FixedSizeBinary(16) => Values::Uuid(Vec::with_capacity(capacity * 16)),
            DataType::List(item) if !matches!(item.data_type(), DataType::List(_)) => {
                let item_type = pg_type.strip_suffix("[]").unwrap_or(&pg_type);
                let items = Self::for_type(
                    Arc::clone(&column),
                    Arc::from(item_type),
                    item.data_type(),
                    capacity,
                )?;
                let mut offsets = Vec::with_capacity(capacity + 1);
                offsets.push(0);
                Values::List(Box::new(ListValues {
                    item: Arc::clone(item),
                    offsets,
                    items,
                    scratch: Vec::new(),
                }))
            }
            _ => return Err(unsupported()),
        };
        Ok(ColumnBuilder {
            column,
            pg_type,
            nulls: NullBufferBuilder::new(capacity),
            values,
        })
    }

    /// Appends one value in PostgreSQL's text output format, or NULL for `None`. On error
    /// nothing is appended, and the error names the column, its type and the value's length
    /// (never the value).
    pub fn append_text(&mut self, text: Option<&[u8]>) -> Result<(), TypeError> {
        let Some(text) = text else {
            self.append_null();
            return Ok(());
        };
        match self.values.push_text(text) {
            Ok(()) => {
                self.nulls.append_non_null();
                Ok(())
            }
            Err(Refused::Reason(reason)) => Err(self.refused(text.len(), reason)),
            Err(Refused::Element(error)) => Err(error),
        }
    }

    /// Appends one value as binary COPY sends it in `wire` format, or NULL for `None`; like
    /// [`append_text`](Self::append_text) for [`Wire::Text`]. On error nothing is appended.
    pub fn append_binary(&mut self, value: Option<&[u8]>, wire: Wire) -> Result<(), TypeError> {
        let Some(value) = value else {
            self.append_null();
            return Ok(());
        };
        if wire == Wire::Text {
            return self.append_text(Some(value));
        }
        match self.values.push_binary(value, wire) {
            Ok(()) => {
                self.nulls.append_non_null();
                Ok(())
            }
            Err(reason) => Err(self.refused(value.len(), reason)),
        }
    }

    /// Appends NULL.
    pub fn append_null(&mut self) {
        self.values.push_null();
        self.nulls.append_null();
    }

    /// The number of values appended since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.nulls.len()
    }

    /// Whether no value was appended since the last [`finish`](Self::finish).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The memory the builder holds, in bytes (for the pipeline's memory budget).
    pub fn allocated_bytes(&self) -> usize {
        self.nulls.allocated_size() + self.values.allocated_bytes()
    }

    /// Builds the Arrow array of the values appended so far, of exactly the field's type, and
    /// empties the builder for the next batch.
    pub fn finish(&mut self) -> Result<ArrayRef, TypeError> {
        let nulls = self.nulls.finish();
        let column = &self.column;
        let arrow = |source: ArrowError| TypeError::Arrow {
            column: Arc::clone(column),
            source,
        };
        let array: ArrayRef = match &mut self.values {
            Values::Boolean(values) => {
                let values = values.finish();
                if nulls.as_ref().is_some_and(|n| n.len() != values.len()) {
                    return Err(arrow(ArrowError::InvalidArgumentError(
                        "boolean values and nulls differ in length".into(),
                    )));
                }
                Arc::new(BooleanArray::new(values, nulls))
            }
            Values::Int32(values) => {
                Arc::new(Int32Array::try_new(take(values).into(), nulls).map_err(arrow)?)
            }
            Values::Int64(values) => {
                Arc::new(Int64Array::try_new(take(values).into(), nulls).map_err(arrow)?)
            }
            Values::Float32(values) => {
                Arc::new(Float32Array::try_new(take(values).into(), nulls).map_err(arrow)?)
            }
            Values::Float64(values) => {
                Arc::new(Float64Array::try_new(take(values).into(), nulls).map_err(arrow)?)
            }
            Values::Decimal {
                values,
                precision,
                scale,
                ..
            } => Arc::new(
                Decimal128Array::try_new(take(values).into(), nulls)
                    .map_err(arrow)?
                    .with_precision_and_scale(*precision, scale.cast_signed())
                    .map_err(arrow)?,
            ),
            Values::Utf8(values) => {
                let (offsets, data) = values.take();
                Arc::new(StringArray::try_new(offsets, data, nulls).map_err(arrow)?)
            }
            Values::Binary(values) => {
                let (offsets, data) = values.take();
                Arc::new(BinaryArray::try_new(offsets, data, nulls).map_err(arrow)?)
            }
            Values::Date32(values) => {
                Arc::new(Date32Array::try_new(take(values).into(), nulls).map_err(arrow)?)
            }
            Values::Time64(values) => Arc::new(
                Time64MicrosecondArray::try_new(take(values).into(), nulls).map_err(arrow)?,
            ),
            Values::Timestamp { values, zone } => Arc::new(
                TimestampMicrosecondArray::try_new(take(values).into(), nulls)
                    .map_err(arrow)?
                    .with_timezone_opt(zone.clone()),
            ),
            Values::Uuid(values) => Arc::new(
                FixedSizeBinaryArray::try_new(16, Buffer::from_vec(take(values)), nulls)
                    .map_err(arrow)?,
            ),
            Values::List(list) => {
                let items = list.items.finish()?;
                let offsets = std::mem::replace(&mut list.offsets, vec![0]);
                // Offsets start at 0 and never decrease: see ListValues::push_text.
                let offsets = OffsetBuffer::new(offsets.into());
                Arc::new(
                    ListArray::try_new(Arc::clone(&list.item), offsets, items, nulls)
                        .map_err(arrow)?,
                )
            }
        };
        Ok(array)
    }

    fn refused(&self, len: usize, reason: Reason) -> TypeError {
        TypeError::Value {
            column: Arc::clone(&self.column),
            pg_type: Arc::clone(&self.pg_type),
            len,
            reason,
        }
    }

    /// Drops the values from `len` on (undoing a list's elements when the list is refused).
    fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.nulls.truncate(len);
            self.values.truncate(len);
        }
    }
}

impl Values {
    fn push_text(&mut self, text: &[u8]) -> Result<(), Refused> {
        match self {
            Values::Boolean(values) => values.append(text::parse_bool(text)?),
            Values::Int32(values) => values.push(text::parse_i32(text)?),
            Values::Int64(values) => values.push(text::parse_i64(text)?),
            Values::Float32(values) => values.push(text::parse_f32(text)?),
            Values::Float64(values) => values.push(text::parse_f64(text)?),
            Values::Decimal {
                values,
                precision,
                scale,
                ..
            } => values.push(text::parse_decimal(text, *precision, *scale)?),
            Values::Utf8(values) => {
                text::check_utf8(text)?;
                values.push(text)?;
            }
            Values::Binary(values) => {
                let start = values.data.len();
                text::parse_bytea_into(text, &mut values.data)?;
                if values.data.len() > i32::MAX as usize {
                    values.data.truncate(start);
                    return Err(TOO_LARGE.into());
                }
                values.close_value()?;
            }
            Values::Date32(values) => values.push(text::parse_date(text)?),
            Values::Time64(values) => values.push(text::parse_time(text)?),
            Values::Timestamp { values, zone } => {
                values.push(text::parse_timestamp(text, zone.is_some())?)
            }
            Values::Uuid(values) => values.extend_from_slice(&text::parse_uuid(text)?),
            Values::List(list) => list.push_text(text)?,
        }
        Ok(())
    }

    fn push_binary(&mut self, value: &[u8], wire: Wire) -> Result<(), Reason> {
        const WRONG: Reason = "a binary value of another type than the column's";
        const LENGTH: Reason = "a binary value of the wrong length";
        fn fixed<const N: usize>(value: &[u8]) -> Result<[u8; N], Reason> {
            value.try_into().map_err(|_| LENGTH)
        }
        match (self, wire) {
            (Values::Boolean(values), Wire::Bool) => values.append(fixed::<1>(value)?[0] != 0),
            (Values::Int32(values), Wire::Int2) => {
                values.push(i32::from(i16::from_be_bytes(fixed(value)?)))
            }
            (Values::Int32(values), Wire::Int4) => values.push(i32::from_be_bytes(fixed(value)?)),
            (Values::Int64(values), Wire::Int8) => values.push(i64::from_be_bytes(fixed(value)?)),
            (Values::Float32(values), Wire::Float4) => {
                values.push(f32::from_be_bytes(fixed(value)?))
            }
            (Values::Float64(values), Wire::Float8) => {
                values.push(f64::from_be_bytes(fixed(value)?))
            }
            (Values::Binary(values), Wire::Bytea) => {
                values.push(value)?;
            }
            (Values::Date32(values), Wire::Date) => {
                // days since 2000-01-01, infinities at the ends of the range
                let days = match i32::from_be_bytes(fixed(value)?) {
                    i32::MAX => text::DATE_INFINITY,
                    i32::MIN => text::DATE_NEG_INFINITY,
                    days => days.checked_add(PG_EPOCH_DAYS).ok_or(DATE_RANGE)?,
                };
                values.push(days);
            }
            (Values::Time64(values), Wire::Time) => values.push(i64::from_be_bytes(fixed(value)?)),
            (Values::Timestamp { values, .. }, Wire::Timestamp) => {
                // microseconds since 2000-01-01 00:00 (UTC for timestamptz)
                let micros = match i64::from_be_bytes(fixed(value)?) {
                    i64::MAX => text::TIMESTAMP_INFINITY,
                    i64::MIN => text::TIMESTAMP_NEG_INFINITY,
                    micros => micros
                        .checked_add(PG_EPOCH_MICROS)
                        .filter(|m| *m != text::TIMESTAMP_INFINITY)
                        .ok_or(TIMESTAMP_RANGE)?,
                };
                values.push(micros);
            }
            (Values::Uuid(values), Wire::Uuid) => values.extend_from_slice(&fixed::<16>(value)?),
            (
                Values::Decimal {
                    values,
                    precision,
                    scale,
                },
                Wire::Numeric,
            ) => values.push(text::numeric_binary_to_decimal(value, *precision, *scale)?),
            _ => return Err(WRONG),
        }
        Ok(())
    }

    fn push_null(&mut self) {
        match self {
            Values::Boolean(values) => values.append(false),
            Values::Int32(values) | Values::Date32(values) => values.push(0),
            Values::Int64(values) | Values::Time64(values) => values.push(0),
            Values::Timestamp { values, .. } => values.push(0),
            Values::Float32(values) => values.push(0.0),
            Values::Float64(values) => values.push(0.0),
            Values::Decimal { values, .. } => values.push(0),
            // A null adds no bytes, so the offset cannot overflow where the last one did not.
            Values::Utf8(values) | Values::Binary(values) => {
                let end = values.offsets.last().copied().unwrap_or(0);
                values.offsets.push(end);
            }
            Values::Uuid(values) => values.extend_from_slice(&[0; 16]),
            Values::List(list) => {
                let end = list.offsets.last().copied().unwrap_or(0);
                list.offsets.push(end);
            }
        }
    }

    fn truncate(&mut self, len: usize) {
        match self {
            Values::Boolean(values) => values.truncate(len),
            Values::Int32(values) | Values::Date32(values) => values.truncate(len),
            Values::Int64(values) | Values::Time64(values) => values.truncate(len),
            Values::Timestamp { values, .. } => values.truncate(len),
            Values::Float32(values) => values.truncate(len),
            Values::Float64(values) => values.truncate(len),
            Values::Decimal { values, .. } => values.truncate(len),
            Values::Utf8(values) | Values::Binary(values) => values.truncate(len),
            Values::Uuid(values) => values.truncate(len * 16),
            Values::List(list) => {
                list.offsets.truncate(len + 1);
                let end = list.offsets.last().copied().unwrap_or(0);
                list.items.truncate(usize::try_from(end).unwrap_or(0));
            }
        }
    }

    fn allocated_bytes(&self) -> usize {
        match self {
            Values::Boolean(values) => values.capacity() / 8,
            Values::Int32(values) | Values::Date32(values) => values.capacity() * 4,
            Values::Int64(values) | Values::Time64(values) => values.capacity() * 8,
            Values::Timestamp { values, .. } => values.capacity() * 8,
            Values::Float32(values) => values.capacity() * 4,
            Values::Float64(values) => values.capacity() * 8,
            Values::Decimal { values, .. } => values.capacity() * 16,
            Values::Utf8(values) | Values::Binary(values) => values.allocated_bytes(),
            Values::Uuid(values) => values.capacity(),
            Values::List(list) => {
                list.offsets.capacity() * 4 + list.scratch.capacity() + list.items.allocated_bytes()
            }
        }
    }
}

impl ListValues {
    /// Appends the elements of one array literal; on any error, none of them.
    fn push_text(&mut self, text: &[u8]) -> Result<(), Refused> {
        let ListValues {
            item,
            offsets,
            items,
            scratch,
        } = self;
        let start = items.len();
        let nullable = item.is_nullable();
        let result = text::for_each_element(text, b',', scratch, |element| {
            if element.is_none() && !nullable {
                return Err(items.refused(0, "NULL element in a list of non-nullable elements"));
            }
            items.append_text(element)
        });
        let end = match result {
            Ok(()) => i32::try_from(items.len()).map_err(|_| Refused::Reason(TOO_LARGE)),
            Err(ArrayError::Syntax(reason)) => Err(Refused::Reason(reason)),
            Err(ArrayError::Element(error)) => Err(Refused::Element(error)),
        };
        match end {
            Ok(end) => {
                offsets.push(end);
                Ok(())
            }
            Err(refused) => {
                items.truncate(start);
                Err(refused)
            }
        }
    }
}

#[cfg(test)]
mod tests;
