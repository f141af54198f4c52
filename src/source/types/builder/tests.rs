//! The builder end to end: fields from the mapping, text in, Arrow arrays of the field's type
//! out; errors that name the column and never the value; refused appends that leave nothing.

// Tests unwrap freely: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use arrow::array::{Array, AsArray};
use arrow::datatypes::{
    Date32Type, Decimal128Type, Float32Type, Float64Type, Int32Type, Int64Type,
    Time64MicrosecondType, TimestampMicrosecondType,
};
use proptest::prelude::*;

use super::*;
use crate::source::Oid;
use crate::source::types::{
    DATE_INFINITY, PgType, TIMESTAMP_NEG_INFINITY, TypeOptions, arrow_field,
};

fn field(pg_type: PgType, typmod: i32) -> Field {
    arrow_field("col", &pg_type, typmod, true, &TypeOptions::default()).unwrap()
}

/// Builds a column from text values (`None` for NULL) and checks the array's type.
fn build(field: &Field, values: &[Option<&str>]) -> ArrayRef {
    let mut builder = ColumnBuilder::new(field).unwrap();
    for value in values {
        builder.append_text(value.map(str::as_bytes)).unwrap();
    }
    assert_eq!(builder.len(), values.len());
    let array = builder.finish().unwrap();
    assert_eq!(array.data_type(), field.data_type());
    assert_eq!(array.len(), values.len());
    assert!(builder.is_empty(), "finish empties the builder");
    array
}

#[test]
fn scalars_of_every_arrow_type() {
    let ints = build(
        &field(PgType::Int2, -1),
        &[Some("-32768"), None, Some("32767")],
    );
    let ints = ints.as_primitive::<Int32Type>();
    assert_eq!(
        (ints.value(0), ints.is_null(1), ints.value(2)),
        (-32768, true, 32767)
    );

    let longs = build(&field(PgType::Int8, -1), &[Some("-9223372036854775808")]);
    assert_eq!(longs.as_primitive::<Int64Type>().value(0), i64::MIN);

    let reals = build(
        &field(PgType::Float4, -1),
        &[Some("NaN"), Some("-Infinity")],
    );
    let reals = reals.as_primitive::<Float32Type>();
    assert!(reals.value(0).is_nan());
    assert_eq!(reals.value(1), f32::NEG_INFINITY);

    let doubles = build(
        &field(PgType::Float8, -1),
        &[Some("Infinity"), Some("1e-300")],
    );
    let doubles = doubles.as_primitive::<Float64Type>();
    assert_eq!(
        (doubles.value(0), doubles.value(1)),
        (f64::INFINITY, 1e-300)
    );

    let numeric_10_2 = ((10 << 16) | 2) + 4;
    let amounts = build(
        &field(PgType::Numeric, numeric_10_2),
        &[Some("-12345678.90"), None],
    );
    let amounts = amounts.as_primitive::<Decimal128Type>();
    assert_eq!(amounts.value(0), -1_234_567_890);
    assert_eq!((amounts.precision(), amounts.scale()), (10, 2));
    assert!(amounts.is_null(1));

    let bools = build(&field(PgType::Bool, -1), &[Some("t"), Some("f"), None]);
    let bools = bools.as_boolean();
    assert_eq!(
        (bools.value(0), bools.value(1), bools.is_null(2)),
        (true, false, true)
    );

    let texts = build(
        &field(PgType::Text, -1),
        &[Some("日本語 🎉"), Some(""), None],
    );
    let texts = texts.as_string::<i32>();
    assert_eq!(
        (texts.value(0), texts.value(1), texts.is_null(2)),
        ("日本語 🎉", "", true)
    );

    let blobs = build(
        &field(PgType::Bytea, -1),
        &[Some("\\x00ff00"), None, Some("\\x")],
    );
    let blobs = blobs.as_binary::<i32>();
    assert_eq!(
        (blobs.value(0), blobs.is_null(1), blobs.value(2)),
        (&[0u8, 255, 0][..], true, &[][..])
    );

    let dates = build(
        &field(PgType::Date, -1),
        &[Some("1970-01-02"), Some("infinity")],
    );
    let dates = dates.as_primitive::<Date32Type>();
    assert_eq!((dates.value(0), dates.value(1)), (1, DATE_INFINITY));

    let times = build(&field(PgType::Time, -1), &[Some("24:00:00")]);
    assert_eq!(
        times.as_primitive::<Time64MicrosecondType>().value(0),
        86_400_000_000
    );

    let stamps = build(
        &field(PgType::Timestamp, -1),
        &[Some("1970-01-01 00:00:01"), Some("-infinity")],
    );
    let stamps = stamps.as_primitive::<TimestampMicrosecondType>();
    assert_eq!(
        (stamps.value(0), stamps.value(1)),
        (1_000_000, TIMESTAMP_NEG_INFINITY)
    );

    let zoned = build(
        &field(PgType::Timestamptz, -1),
        &[Some("1970-01-01 05:30:00+05:30")],
    );
    let zoned = zoned.as_primitive::<TimestampMicrosecondType>();
    assert_eq!(zoned.value(0), 0);
    assert_eq!(zoned.timezone(), Some("+00:00"));

    let uuids = build(
        &field(PgType::Uuid, -1),
        &[None, Some("00000000-0000-0000-0000-0000000000ff")],
    );
    let uuids = uuids.as_fixed_size_binary();
    assert!(uuids.is_null(0));
    assert_eq!(uuids.value(1)[15], 0xff);
}

#[test]
fn arrays_become_lists() {
    let ints = field(PgType::builtin(Oid(1007)).unwrap(), -1);
    let lists = build(
        &ints,
        &[Some("{1,NULL,3}"), Some("{}"), None, Some("{-2147483648}")],
    );
    let lists = lists.as_list::<i32>();
    assert_eq!(lists.value_offsets(), &[0, 3, 3, 3, 4]);
    assert!(lists.is_null(2) && !lists.is_null(1));
    let first = lists.value(0);
    let first = first.as_primitive::<Int32Type>();
    assert_eq!(
        (first.value(0), first.is_null(1), first.value(2)),
        (1, true, 3)
    );

    let texts = field(PgType::builtin(Oid(1009)).unwrap(), -1);
    let lists = build(&texts, &[Some(r#"{"a b","c\"d",NULL,"NULL",日本}"#)]);
    let items = lists.as_list::<i32>().value(0);
    let items = items.as_string::<i32>();
    assert_eq!(items.value(0), "a b");
    assert_eq!(items.value(1), "c\"d");
    assert!(items.is_null(2));
    assert_eq!(items.value(3), "NULL");
    assert_eq!(items.value(4), "日本");
}

#[test]
fn a_refused_list_leaves_nothing_behind() {
    let ints = field(PgType::builtin(Oid(1007)).unwrap(), -1);
    let mut builder = ColumnBuilder::new(&ints).unwrap();
    builder.append_text(Some(b"{1,2}")).unwrap();
    let error = builder.append_text(Some(b"{3,4,oops}")).unwrap_err();
    assert!(error.to_string().contains("not an integer"), "{error}");
    let error = builder.append_text(Some(b"{{5,6},{7,8}}")).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("col") && message.contains("multidimensional"),
        "{message}"
    );
    assert!(message.contains("integer[]"), "{message}");
    builder.append_text(Some(b"{9}")).unwrap();
    assert_eq!(builder.len(), 2);
    let lists = builder.finish().unwrap();
    let lists = lists.as_list::<i32>();
    assert_eq!(lists.value_offsets(), &[0, 2, 3]);
    assert_eq!(
        lists.values().as_primitive::<Int32Type>().values(),
        &[1, 2, 9]
    );
}

#[test]
fn errors_name_the_column_and_type_but_never_the_value() {
    let amount = arrow_field(
        "amount",
        &PgType::Numeric,
        -1,
        true,
        &TypeOptions::default(),
    )
    .unwrap();
    let mut builder = ColumnBuilder::new(&amount).unwrap();
    let error = builder.append_text(Some(b"NaN")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "column amount (numeric): value of 3 bytes refused: NaN cannot be stored in a decimal"
    );
    let secret = b"secret-4242-password";
    for pg_type in [
        PgType::Int4,
        PgType::Date,
        PgType::Uuid,
        PgType::Timestamptz,
        PgType::Bool,
    ] {
        let mut builder = ColumnBuilder::new(&field(pg_type, -1)).unwrap();
        let message = builder.append_text(Some(secret)).unwrap_err().to_string();
        assert!(
            !message.contains("secret") && !message.contains("4242"),
            "{message}"
        );
        assert!(
            message.contains("col") && message.contains("20 bytes"),
            "{message}"
        );
        assert_eq!(builder.len(), 0);
    }
    let mut texts = ColumnBuilder::new(&field(PgType::Text, -1)).unwrap();
    let message = texts.append_text(Some(b"caf\xe9")).unwrap_err().to_string();
    assert!(message.contains("UTF-8"), "{message}");
}

#[test]
fn fields_without_metadata_and_unsupported_types() {
    let plain = Field::new("n", DataType::Int64, false);
    let mut builder = ColumnBuilder::new(&plain).unwrap();
    let message = builder.append_text(Some(b"x")).unwrap_err().to_string();
    assert!(message.contains("column n (Int64)"), "{message}");
    for data_type in [
        DataType::Int16,
        DataType::LargeUtf8,
        DataType::Time64(TimeUnit::Nanosecond),
        DataType::FixedSizeBinary(8),
        DataType::Decimal128(10, -2),
        DataType::new_list(DataType::new_list(DataType::Int32, true), true),
    ] {
        let error = ColumnBuilder::new(&Field::new("x", data_type, true)).unwrap_err();
        assert!(matches!(error, TypeError::UnsupportedArrowType { .. }));
    }
    let strict = Field::new("l", DataType::new_list(DataType::Int32, false), true);
    let mut builder = ColumnBuilder::new(&strict).unwrap();
    assert!(builder.append_text(Some(b"{1,NULL}")).is_err());
    builder.append_text(Some(b"{1}")).unwrap();
    assert_eq!(builder.finish().unwrap().len(), 1);
}

#[test]
fn allocated_bytes_grow_with_the_data() {
    let mut builder = ColumnBuilder::new(&field(PgType::Text, -1)).unwrap();
    let before = builder.allocated_bytes();
    for _ in 0..1000 {
        builder.append_text(Some(b"some text value")).unwrap();
    }
    assert!(builder.allocated_bytes() >= before + 15_000);
}

/// `array_out`'s quoting: elements that are empty, say NULL, or hold special characters or
/// whitespace are double-quoted, with `"` and `\` escaped.
fn pg_array(items: &[Option<String>]) -> String {
    let rendered: Vec<String> = items
        .iter()
        .map(|item| match item {
            None => "NULL".to_string(),
            Some(text) => {
                let needs_quotes = text.is_empty()
                    || text.eq_ignore_ascii_case("NULL")
                    || text.bytes().any(|b| {
                        matches!(
                            b,
                            b'{' | b'}'
                                | b','
                                | b'"'
                                | b'\\'
                                | b' '
                                | b'\t'
                                | b'\n'
                                | b'\r'
                                | 0x0b
                                | 0x0c
                        )
                    });
                if needs_quotes {
                    let escaped = text.replace('\\', "\\\\").replace('"', "\\\"");
                    format!("\"{escaped}\"")
                } else {
                    text.clone()
                }
            }
        })
        .collect();
    format!("{{{}}}", rendered.join(","))
}

fn all_arrow_fields() -> Vec<Field> {
    let mut fields: Vec<Field> = [
        PgType::Bool,
        PgType::Int4,
        PgType::Int8,
        PgType::Float4,
        PgType::Float8,
        PgType::Numeric,
        PgType::Text,
        PgType::Bytea,
        PgType::Date,
        PgType::Time,
        PgType::Timestamp,
        PgType::Timestamptz,
        PgType::Uuid,
    ]
    .into_iter()
    .map(|t| field(t, -1))
    .collect();
    for array in [1000, 1007, 1009, 1182, 1185, 2951, 1231, 1001] {
        fields.push(field(PgType::builtin(Oid(array)).unwrap(), -1));
    }
    fields
}

proptest! {
    #[test]
    fn text_arrays_read_back(items in proptest::collection::vec(proptest::option::of(".{0,12}"), 0..8)) {
        let texts = field(PgType::builtin(Oid(1009)).unwrap(), -1);
        let mut builder = ColumnBuilder::new(&texts).unwrap();
        builder.append_text(Some(pg_array(&items).as_bytes())).unwrap();
        let lists = builder.finish().unwrap();
        let values = lists.as_list::<i32>().value(0);
        let values = values.as_string::<i32>();
        let read: Vec<Option<String>> = values.iter().map(|v| v.map(str::to_string)).collect();
        prop_assert_eq!(read, items);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_finish_builds(values in proptest::collection::vec(
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..24)), 0..6)) {
        for field in all_arrow_fields() {
            let mut builder = ColumnBuilder::new(&field).unwrap();
            let mut accepted = 0;
            for value in &values {
                if builder.append_text(value.as_deref()).is_ok() {
                    accepted += 1;
                }
            }
            prop_assert_eq!(builder.len(), accepted);
            let array = builder.finish().unwrap();
            prop_assert_eq!(array.len(), accepted);
        }
    }

    #[test]
    fn array_shaped_noise_never_panics(text in r#"[{}",\\ 1NUL]{0,24}"#) {
        for field in all_arrow_fields() {
            let mut builder = ColumnBuilder::new(&field).unwrap();
            let ok = builder.append_text(Some(text.as_bytes())).is_ok();
            prop_assert_eq!(builder.len(), usize::from(ok));
            prop_assert_eq!(builder.finish().unwrap().len(), usize::from(ok));
        }
    }
}
