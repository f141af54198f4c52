//! Arrow record batches as PostgreSQL's binary COPY format (`COPY … FROM STDIN (FORMAT
//! binary)`), and the PostgreSQL type each Arrow type is written as: the fast path of
//! `export`. Values go out in the server's own binary representations (`int8recv`,
//! `numeric_recv`, `array_recv`, …), so the server parses nothing.
//!
//! The stream is an 11-byte signature, a flags word and an empty header extension, then per
//! row a 16-bit field count and per field a 32-bit length (-1 for NULL) and the bytes; a field
//! count of -1 ends it.

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryViewArray, BooleanArray, Date32Array,
    Decimal128Array, FixedSizeBinaryArray, Float32Array, Float64Array, Int16Array, Int32Array,
    Int64Array, LargeBinaryArray, LargeStringArray, StringArray, StringViewArray,
    Time64MicrosecondArray,
};
use arrow::datatypes::{DataType, TimeUnit};

/// The binary COPY signature, flags and header extension length.
pub const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The end-of-data marker.
pub const TRAILER: &[u8] = &[0xff, 0xff];

/// Days from 1970-01-01 (Arrow's epoch) to 2000-01-01 (PostgreSQL's).
const EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A PostgreSQL type an Arrow column is written as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgType {
    /// As SQL and `format_type` name it (`numeric(10,2)`, `timestamp with time zone`,
    /// `text[]`).
    pub name: String,
    /// The element type's OID, for array elements.
    oid: u32,
}

/// The PostgreSQL type of an Arrow type (the lake's type mapping, reversed); `None` when it
/// has no binary encoding here (structs, maps, nested lists).
pub fn pg_type(data_type: &DataType) -> Option<PgType> {
    let (name, oid) = match data_type {
        DataType::Boolean => ("boolean".to_string(), 16),
        DataType::Int8 | DataType::Int16 => ("smallint".to_string(), 21),
        DataType::Int32 => ("integer".to_string(), 23),
        DataType::Int64 => ("bigint".to_string(), 20),
        DataType::Float32 => ("real".to_string(), 700),
        DataType::Float64 => ("double precision".to_string(), 701),
        DataType::Decimal128(p, s) if *s >= 0 => (format!("numeric({p},{s})"), 1700),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ("text".to_string(), 25),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            ("bytea".to_string(), 17)
        }
        DataType::FixedSizeBinary(16) => ("uuid".to_string(), 2950),
        DataType::FixedSizeBinary(_) => ("bytea".to_string(), 17),
        DataType::Date32 => ("date".to_string(), 1082),
        DataType::Time64(TimeUnit::Microsecond) => ("time without time zone".to_string(), 1083),
        DataType::Timestamp(_, None) => ("timestamp without time zone".to_string(), 1114),
        DataType::Timestamp(_, Some(_)) => ("timestamp with time zone".to_string(), 1184),
        DataType::List(element) | DataType::LargeList(element) => {
            if matches!(
                element.data_type(),
                DataType::List(_) | DataType::LargeList(_)
            ) {
                return None;
            }
            let element = pg_type(element.data_type())?;
            return Some(PgType {
                name: format!("{}[]", element.name),
                oid: element.oid,
            });
        }
        _ => return None,
    };
    Some(PgType { name, oid })
}

/// Why a column cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct EncodeError {
    /// The column.
    pub column: String,
    /// What is wrong.
    pub message: String,
}

/// Appends the rows of `columns` to `out` in binary COPY row format.
pub fn encode_rows(
    names: &[&str],
    columns: &[ArrayRef],
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let encoders = columns
        .iter()
        .zip(names)
        .map(|(array, name)| {
            Encoder::new(array.as_ref()).ok_or_else(|| EncodeError {
                column: name.to_string(),
                message: format!("type {} cannot be exported", array.data_type()),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let rows = columns.first().map_or(0, |c| c.len());
    let count = i16::try_from(columns.len()).map_err(|_| EncodeError {
        column: names.first().map(|n| n.to_string()).unwrap_or_default(),
        message: "more than 32767 columns".into(),
    })?;
    for row in 0..rows {
        out.extend_from_slice(&count.to_be_bytes());
        for (encoder, name) in encoders.iter().zip(names) {
            encoder.field(row, out).map_err(|message| EncodeError {
                column: name.to_string(),
                message,
            })?;
        }
    }
    Ok(())
}

/// One column, downcast once per batch.
enum Encoder<'a> {
    Bool(&'a BooleanArray),
    I8(&'a arrow::array::Int8Array),
    I16(&'a Int16Array),
    I32(&'a Int32Array),
    I64(&'a Int64Array),
    F32(&'a Float32Array),
    F64(&'a Float64Array),
    Decimal(&'a Decimal128Array, u32),
    Text(&'a StringArray),
    LargeText(&'a LargeStringArray),
    TextView(&'a StringViewArray),
    Bytes(&'a BinaryArray),
    LargeBytes(&'a LargeBinaryArray),
    BytesView(&'a BinaryViewArray),
    Fixed(&'a FixedSizeBinaryArray),
    Date(&'a Date32Array),
    Time(&'a Time64MicrosecondArray),
    /// Timestamps in any unit: the array (for its nulls), its values and their unit.
    Timestamp(&'a dyn Array, &'a [i64], TimeUnit),
    List(ListColumn<'a>),
}

/// A list column: offsets into its values and the values' encoder.
struct ListColumn<'a> {
    array: &'a dyn Array,
    offsets: Vec<(usize, usize)>,
    values: Box<Encoder<'a>>,
    element_oid: u32,
}

impl<'a> Encoder<'a> {
    fn new(array: &'a dyn Array) -> Option<Encoder<'a>> {
        Some(match array.data_type() {
            DataType::Boolean => Encoder::Bool(array.as_boolean()),
            DataType::Int8 => Encoder::I8(array.as_primitive()),
            DataType::Int16 => Encoder::I16(array.as_primitive()),
            DataType::Int32 => Encoder::I32(array.as_primitive()),
            DataType::Int64 => Encoder::I64(array.as_primitive()),
            DataType::Float32 => Encoder::F32(array.as_primitive()),
            DataType::Float64 => Encoder::F64(array.as_primitive()),
            DataType::Decimal128(_, s) if *s >= 0 => {
                Encoder::Decimal(array.as_primitive(), u32::try_from(*s).ok()?)
            }
            DataType::Utf8 => Encoder::Text(array.as_string()),
            DataType::LargeUtf8 => Encoder::LargeText(array.as_string()),
            DataType::Utf8View => Encoder::TextView(array.as_string_view()),
            DataType::Binary => Encoder::Bytes(array.as_binary()),
            DataType::LargeBinary => Encoder::LargeBytes(array.as_binary()),
            DataType::BinaryView => Encoder::BytesView(array.as_binary_view()),
            DataType::FixedSizeBinary(_) => Encoder::Fixed(array.as_fixed_size_binary()),
            DataType::Date32 => Encoder::Date(array.as_primitive()),
            DataType::Time64(TimeUnit::Microsecond) => Encoder::Time(array.as_primitive()),
            DataType::Timestamp(unit, _) => {
                let values: &'a [i64] = match unit {
                    TimeUnit::Second => array
                        .as_primitive::<arrow::datatypes::TimestampSecondType>()
                        .values(),
                    TimeUnit::Millisecond => array
                        .as_primitive::<arrow::datatypes::TimestampMillisecondType>()
                        .values(),
                    TimeUnit::Microsecond => array
                        .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                        .values(),
                    TimeUnit::Nanosecond => array
                        .as_primitive::<arrow::datatypes::TimestampNanosecondType>()
                        .values(),
                };
                Encoder::Timestamp(array, values, *unit)
            }
            DataType::List(element) => {
                let list = array.as_list::<i32>();
                let offsets = list
                    .offsets()
                    .windows(2)
                    .map(|w| (w[0] as usize, w[1] as usize))
                    .collect();
                Encoder::List(ListColumn {
                    array,
                    offsets,
                    values: Box::new(Encoder::new(list.values().as_ref())?),
                    element_oid: pg_type(element.data_type())?.oid,
                })
            }
            DataType::LargeList(element) => {
                let list = array.as_list::<i64>();
                let offsets = list
                    .offsets()
                    .windows(2)
                    .map(|w| (w[0] as usize, w[1] as usize))
                    .collect();
                Encoder::List(ListColumn {
                    array,
                    offsets,
                    values: Box::new(Encoder::new(list.values().as_ref())?),
                    element_oid: pg_type(element.data_type())?.oid,
                })
            }
            _ => return None,
        })
    }

    fn is_null(&self, row: usize) -> bool {
        match self {
            Encoder::Bool(a) => a.is_null(row),
            Encoder::I8(a) => a.is_null(row),
            Encoder::I16(a) => a.is_null(row),
            Encoder::I32(a) => a.is_null(row),
            Encoder::I64(a) => a.is_null(row),
            Encoder::F32(a) => a.is_null(row),
            Encoder::F64(a) => a.is_null(row),
            Encoder::Decimal(a, _) => a.is_null(row),
            Encoder::Text(a) => a.is_null(row),
            Encoder::LargeText(a) => a.is_null(row),
            Encoder::TextView(a) => a.is_null(row),
            Encoder::Bytes(a) => a.is_null(row),
            Encoder::LargeBytes(a) => a.is_null(row),
            Encoder::BytesView(a) => a.is_null(row),
            Encoder::Fixed(a) => a.is_null(row),
            Encoder::Date(a) => a.is_null(row),
            Encoder::Time(a) => a.is_null(row),
            Encoder::Timestamp(a, _, _) => a.is_null(row),
            Encoder::List(l) => l.array.is_null(row),
        }
    }

    /// Writes the field of `row`: its length and bytes, or -1 for NULL.
    fn field(&self, row: usize, out: &mut Vec<u8>) -> Result<(), String> {
        if self.is_null(row) {
            out.extend_from_slice(&(-1i32).to_be_bytes());
            return Ok(());
        }
        fn bytes(out: &mut Vec<u8>, value: &[u8]) -> Result<(), String> {
            let len = i32::try_from(value.len())
                .map_err(|_| format!("a value of {} bytes is over 2 GiB", value.len()))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(value);
            Ok(())
        }
        match self {
            Encoder::Bool(a) => bytes(out, &[u8::from(a.value(row))]),
            Encoder::I8(a) => bytes(out, &i16::from(a.value(row)).to_be_bytes()),
            Encoder::I16(a) => bytes(out, &a.value(row).to_be_bytes()),
            Encoder::I32(a) => bytes(out, &a.value(row).to_be_bytes()),
            Encoder::I64(a) => bytes(out, &a.value(row).to_be_bytes()),
            Encoder::F32(a) => bytes(out, &a.value(row).to_be_bytes()),
            Encoder::F64(a) => bytes(out, &a.value(row).to_be_bytes()),
            Encoder::Decimal(a, scale) => {
                let start = out.len();
                out.extend_from_slice(&[0; 4]);
                numeric(a.value(row), *scale, out);
                let len = (out.len() - start - 4) as i32;
                out[start..start + 4].copy_from_slice(&len.to_be_bytes());
                Ok(())
            }
            Encoder::Text(a) => bytes(out, a.value(row).as_bytes()),
            Encoder::LargeText(a) => bytes(out, a.value(row).as_bytes()),
            Encoder::TextView(a) => bytes(out, a.value(row).as_bytes()),
            Encoder::Bytes(a) => bytes(out, a.value(row)),
            Encoder::LargeBytes(a) => bytes(out, a.value(row)),
            Encoder::BytesView(a) => bytes(out, a.value(row)),
            Encoder::Fixed(a) => bytes(out, a.value(row)),
            Encoder::Date(a) => {
                // PostgreSQL's dates are days since 2000; its ±infinity are INT_MIN/INT_MAX
                let days = a.value(row);
                let pg = match days {
                    i32::MIN | i32::MAX => days,
                    _ => days
                        .checked_sub(EPOCH_DAYS)
                        .ok_or_else(|| format!("date {days} is out of PostgreSQL's range"))?,
                };
                bytes(out, &pg.to_be_bytes())
            }
            Encoder::Time(a) => bytes(out, &a.value(row).to_be_bytes()),
            Encoder::Timestamp(_, values, unit) => {
                let value = values[row];
                let micros = match unit {
                    TimeUnit::Second => value.checked_mul(1_000_000),
                    TimeUnit::Millisecond => value.checked_mul(1_000),
                    TimeUnit::Microsecond => Some(value),
                    TimeUnit::Nanosecond => Some(value.div_euclid(1_000)),
                };
                // ±infinity are i64::MIN/MAX in both, and kept as they are
                let pg = match micros {
                    Some(i64::MIN) | Some(i64::MAX) => micros,
                    Some(m) => m.checked_sub(EPOCH_MICROS),
                    None => None,
                }
                .ok_or_else(|| format!("timestamp {value} is out of PostgreSQL's range"))?;
                bytes(out, &pg.to_be_bytes())
            }
            Encoder::List(list) => {
                let (start, end) = list.offsets[row];
                let start_len = out.len();
                out.extend_from_slice(&[0; 4]);
                let has_null = (start..end).any(|i| list.values.is_null(i));
                if start == end {
                    // an empty array has no dimensions
                    out.extend_from_slice(&0i32.to_be_bytes());
                    out.extend_from_slice(&0i32.to_be_bytes());
                    out.extend_from_slice(&list.element_oid.to_be_bytes());
                } else {
                    out.extend_from_slice(&1i32.to_be_bytes());
                    out.extend_from_slice(&i32::from(has_null).to_be_bytes());
                    out.extend_from_slice(&list.element_oid.to_be_bytes());
                    let count = i32::try_from(end - start)
                        .map_err(|_| "an array of over 2^31 elements".to_string())?;
                    out.extend_from_slice(&count.to_be_bytes());
                    out.extend_from_slice(&1i32.to_be_bytes());
                    for i in start..end {
                        list.values.field(i, out)?;
                    }
                }
                let len = i32::try_from(out.len() - start_len - 4)
                    .map_err(|_| "an array over 2 GiB".to_string())?;
                out[start_len..start_len + 4].copy_from_slice(&len.to_be_bytes());
                Ok(())
            }
        }
    }
}

/// Writes `unscaled × 10^-scale` in `numeric_recv`'s form: digit count, weight (of the first
/// base-10000 digit), sign, display scale, then the base-10000 digits.
fn numeric(unscaled: i128, scale: u32, out: &mut Vec<u8>) {
    let negative = unscaled < 0;
    let magnitude = unscaled.unsigned_abs();
    let divisor = 10u128.pow(scale);
    let (mut whole, mut fraction) = (magnitude / divisor, magnitude % divisor);
    let mut integer_digits = Vec::new();
    while whole > 0 {
        integer_digits.push((whole % 10_000) as i16);
        whole /= 10_000;
    }
    integer_digits.reverse();
    // the fraction's digits, padded on the right to whole groups of four
    let mut fraction_digits = Vec::new();
    let partial = scale % 4;
    if partial != 0 {
        let tail = 10u128.pow(partial);
        fraction_digits.push(((fraction % tail) * 10u128.pow(4 - partial)) as i16);
        fraction /= tail;
    }
    for _ in 0..scale / 4 {
        fraction_digits.push((fraction % 10_000) as i16);
        fraction /= 10_000;
    }
    fraction_digits.reverse();
    let mut weight = integer_digits.len() as i16 - 1;
    let mut digits: Vec<i16> = integer_digits;
    digits.extend(fraction_digits);
    let leading = digits.iter().take_while(|d| **d == 0).count();
    digits.drain(..leading);
    weight -= leading as i16;
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        weight = 0;
    }
    out.extend_from_slice(&(digits.len() as i16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    let sign: u16 = if negative && !digits.is_empty() {
        0x4000
    } else {
        0
    };
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&(scale as i16).to_be_bytes());
    for digit in digits {
        out.extend_from_slice(&digit.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric_bytes(unscaled: i128, scale: u32) -> Vec<i16> {
        let mut out = Vec::new();
        numeric(unscaled, scale, &mut out);
        out.chunks(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]))
            .collect()
    }

    #[test]
    fn numerics_encode_as_numeric_recv_reads_them() {
        // 12345.67: digits 1, 2345, 6700; weight 1
        assert_eq!(numeric_bytes(1_234_567, 2), vec![3, 1, 0, 2, 1, 2345, 6700]);
        // -0.05: one digit 500 at weight -1
        assert_eq!(numeric_bytes(-5, 2), vec![1, -1, 0x4000, 2, 500]);
        // 0.00001: weight -2 (digit 0100 of the second group)
        assert_eq!(numeric_bytes(1, 5), vec![1, -2, 0, 5, 1000]);
        // zero keeps its scale and has no digits
        assert_eq!(numeric_bytes(0, 3), vec![0, 0, 0, 3]);
        // 10000 is one digit 1 at weight 1
        assert_eq!(numeric_bytes(10_000, 0), vec![1, 1, 0, 0, 1]);
        // the largest decimal(38, 0) does not overflow
        let max = 10i128.pow(38) - 1;
        assert_eq!(numeric_bytes(max, 0)[0], 10);
        assert_eq!(numeric_bytes(max, 38)[1], -1);
    }

    #[test]
    fn types_without_an_encoding_are_refused_by_name() {
        let array: ArrayRef =
            std::sync::Arc::new(arrow::array::StructArray::new_empty_fields(1, None));
        let err = encode_rows(&["shape"], &[array], &mut Vec::new()).expect_err("a struct");
        assert_eq!(err.column, "shape");
    }
}
