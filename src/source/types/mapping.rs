//! The PostgreSQL → Arrow type mapping of DESIGN.md, lossless first: each type maps to the Arrow
//! type that holds all of its values, or to its exact text; where neither a decimal nor the
//! options allow it, the mapping is refused with the column's name rather than rounding.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, TimeUnit};

use super::catalog::numeric_typmod;
use super::text::MAX_DECIMAL_PRECISION;
use super::{PgType, TypeError, TypeOptions};

/// The field metadata key that records the column's PostgreSQL type (`numeric(10,2)`,
/// `public.mood (enum)`, `text[]`), for the sink and for people reading the lake's schema.
pub const PG_TYPE_METADATA_KEY: &str = "lakewriter.pg_type";

/// The Arrow canonical extension that marks a 16-byte fixed binary as a UUID (Parquet writes
/// its UUID logical type for it).
const UUID_EXTENSION: (&str, &str) = ("ARROW:extension:name", "arrow.uuid");

/// The Arrow timezone of `timestamptz` columns: the one Iceberg's `timestamptz` is read back as.
const UTC: &str = "+00:00";

/// The name Iceberg gives a list's element field.
const LIST_ELEMENT: &str = "element";

/// Maps a column to its Arrow field: `typmod` is the column's `atttypmod` (pgoutput's Relation
/// message carries it; `-1` when none), `nullable` whether the column may hold NULL. The field's
/// metadata holds the PostgreSQL type under [`PG_TYPE_METADATA_KEY`].
///
/// | PostgreSQL | Arrow |
/// | --- | --- |
/// | smallint, integer / bigint | Int32 / Int64 |
/// | real / double precision | Float32 / Float64 (NaN, ±Infinity kept) |
/// | numeric(p,s), p ≤ 38 | Decimal128(p, s); s < 0 → Decimal128(p − s, 0); s > p → Decimal128(s, s) |
/// | numeric(p,s), p > 38 | Utf8 with `unconstrained_numeric_as_string`, else refused |
/// | numeric | Decimal128(38, `numeric_scale`), or Utf8 with `unconstrained_numeric_as_string` |
/// | boolean | Boolean |
/// | text, varchar, char, "char", name, json, jsonb, enum | Utf8 |
/// | bytea | Binary |
/// | date / time / timestamp | Date32 / Time64(µs) / Timestamp(µs) |
/// | timestamptz | Timestamp(µs, "+00:00") |
/// | uuid | FixedSizeBinary(16), marked `arrow.uuid` |
/// | domain | its base type (with the domain's typmod when the column has none) |
/// | T[] | List(T), item field `element`, nullable |
/// | anything else (timetz, interval, inet, money, bit, xml, ranges, composites, citext, …) | Utf8, the text form |
///
/// Arrays whose elements are arrays (of a domain over an array type), or whose element type
/// separates elements with something other than `,` (`box`), are carried as their whole text.
pub fn arrow_field(
    column_name: &str,
    pg_type: &PgType,
    typmod: i32,
    nullable: bool,
    options: &TypeOptions,
) -> Result<Field, TypeError> {
    let data_type = data_type(column_name, pg_type, typmod, options)?;
    let mut metadata =
        HashMap::from([(PG_TYPE_METADATA_KEY.to_string(), pg_type.describe(typmod))]);
    if base_type(pg_type) == &PgType::Uuid {
        metadata.insert(UUID_EXTENSION.0.into(), UUID_EXTENSION.1.into());
    }
    Ok(Field::new(column_name, data_type, nullable).with_metadata(metadata))
}

/// The type under any domains.
fn base_type(pg_type: &PgType) -> &PgType {
    match pg_type {
        PgType::Domain { base, .. } => base_type(base),
        other => other,
    }
}

fn data_type(
    column: &str,
    pg_type: &PgType,
    typmod: i32,
    options: &TypeOptions,
) -> Result<DataType, TypeError> {
    let data_type = match pg_type {
        PgType::Domain {
            base,
            typmod: domain_typmod,
            ..
        } => {
            let typmod = if typmod >= 0 { typmod } else { *domain_typmod };
            return data_type(column, base, typmod, options);
        }
        PgType::Bool => DataType::Boolean,
        PgType::Int2 | PgType::Int4 => DataType::Int32,
        PgType::Int8 => DataType::Int64,
        PgType::Float4 => DataType::Float32,
        PgType::Float8 => DataType::Float64,
        PgType::Numeric => numeric(column, pg_type, typmod, options)?,
        PgType::Text
        | PgType::Varchar
        | PgType::Bpchar
        | PgType::Char
        | PgType::Name
        | PgType::Json
        | PgType::Jsonb
        | PgType::TimeTz
        | PgType::TextForm { .. }
        | PgType::Enum { .. } => DataType::Utf8,
        PgType::Bytea => DataType::Binary,
        PgType::Date => DataType::Date32,
        PgType::Time => DataType::Time64(TimeUnit::Microsecond),
        PgType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        PgType::Timestamptz => DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from(UTC))),
        PgType::Uuid => DataType::FixedSizeBinary(16),
        PgType::Array { element, delimiter } => {
            // Typmods of array columns apply to their elements.
            let nested = matches!(base_type(element), PgType::Array { .. });
            if nested || *delimiter != b',' {
                DataType::Utf8
            } else {
                let item = data_type(column, element, typmod, options)?;
                let mut item_field = Field::new(LIST_ELEMENT, item, true);
                if base_type(element) == &PgType::Uuid {
                    item_field = item_field.with_metadata(HashMap::from([(
                        UUID_EXTENSION.0.to_string(),
                        UUID_EXTENSION.1.to_string(),
                    )]));
                }
                DataType::List(Arc::new(item_field))
            }
        }
    };
    Ok(data_type)
}

fn numeric(
    column: &str,
    pg_type: &PgType,
    typmod: i32,
    options: &TypeOptions,
) -> Result<DataType, TypeError> {
    let refuse = |reason: String| TypeError::Unmappable {
        column: column.into(),
        pg_type: pg_type.describe(typmod),
        reason,
    };
    let max = i32::from(MAX_DECIMAL_PRECISION);
    let Some((precision, scale)) = numeric_typmod(typmod) else {
        if options.unconstrained_numeric_as_string {
            return Ok(DataType::Utf8);
        }
        let scale = options.numeric_scale;
        if !(0..=MAX_DECIMAL_PRECISION as i8).contains(&scale) {
            return Err(refuse(format!(
                "the numeric_scale option is {scale}; it must be within 0..=38"
            )));
        }
        return Ok(DataType::Decimal128(MAX_DECIMAL_PRECISION, scale));
    };
    // Every value of numeric(p, s) has at most p significant digits, the last at 10^-s. A
    // negative scale only adds trailing zeros to the integer part, and a scale above the
    // precision only leading zeros to the fraction: both fit a wider decimal exactly.
    let (arrow_precision, arrow_scale) = if scale < 0 {
        (precision - scale, 0)
    } else {
        (precision.max(scale), scale)
    };
    if arrow_precision > max || arrow_precision < 1 {
        if options.unconstrained_numeric_as_string {
            return Ok(DataType::Utf8);
        }
        return Err(refuse(format!(
            "a decimal holds at most 38 digits and this type needs {arrow_precision}; \
             set unconstrained_numeric_as_string to carry it as a string"
        )));
    }
    // Both are within 0..=38 here.
    let precision = u8::try_from(arrow_precision).map_err(|_| refuse("bad precision".into()))?;
    let scale = i8::try_from(arrow_scale).map_err(|_| refuse("bad scale".into()))?;
    Ok(DataType::Decimal128(precision, scale))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn field(pg_type: &PgType, typmod: i32) -> Field {
        arrow_field("c", pg_type, typmod, true, &TypeOptions::default()).unwrap()
    }

    /// The typmod PostgreSQL stores for numeric(p, s).
    fn numeric_mod(precision: i32, scale: i32) -> i32 {
        ((precision << 16) | (scale & 0x7ff)) + 4
    }

    #[test]
    fn scalars_map_as_the_design_says() {
        let cases = [
            (PgType::Int2, DataType::Int32),
            (PgType::Int4, DataType::Int32),
            (PgType::Int8, DataType::Int64),
            (PgType::Float4, DataType::Float32),
            (PgType::Float8, DataType::Float64),
            (PgType::Bool, DataType::Boolean),
            (PgType::Text, DataType::Utf8),
            (PgType::Varchar, DataType::Utf8),
            (PgType::Bpchar, DataType::Utf8),
            (PgType::Char, DataType::Utf8),
            (PgType::Name, DataType::Utf8),
            (PgType::Json, DataType::Utf8),
            (PgType::Jsonb, DataType::Utf8),
            (PgType::TimeTz, DataType::Utf8),
            (PgType::Bytea, DataType::Binary),
            (PgType::Date, DataType::Date32),
            (PgType::Time, DataType::Time64(TimeUnit::Microsecond)),
            (
                PgType::Timestamp,
                DataType::Timestamp(TimeUnit::Microsecond, None),
            ),
            (
                PgType::Timestamptz,
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            ),
            (PgType::Uuid, DataType::FixedSizeBinary(16)),
            (
                PgType::TextForm {
                    name: "interval".into(),
                },
                DataType::Utf8,
            ),
            (
                PgType::Enum {
                    name: "public.mood".into(),
                },
                DataType::Utf8,
            ),
        ];
        for (pg_type, expected) in cases {
            assert_eq!(field(&pg_type, -1).data_type(), &expected, "{pg_type:?}");
        }
    }

    #[test]
    fn numeric_typmods_become_exact_decimals() {
        let cases = [
            ((10, 2), DataType::Decimal128(10, 2)),
            ((38, 0), DataType::Decimal128(38, 0)),
            ((38, 38), DataType::Decimal128(38, 38)),
            ((1, 0), DataType::Decimal128(1, 0)),
            // PostgreSQL 15: negative scale rounds to tens/hundreds; scale above precision.
            ((5, -2), DataType::Decimal128(7, 0)),
            ((2, 5), DataType::Decimal128(5, 5)),
        ];
        for ((precision, scale), expected) in cases {
            let f = field(&PgType::Numeric, numeric_mod(precision, scale));
            assert_eq!(f.data_type(), &expected);
            assert_eq!(
                f.metadata()[PG_TYPE_METADATA_KEY],
                format!("numeric({precision},{scale})")
            );
        }
    }

    #[test]
    fn wide_and_unconstrained_numerics_follow_the_options() {
        let wide = numeric_mod(50, 2);
        let err = arrow_field(
            "amount",
            &PgType::Numeric,
            wide,
            true,
            &TypeOptions::default(),
        )
        .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("amount") && message.contains("numeric(50,2)"),
            "{message}"
        );
        let as_string = TypeOptions {
            unconstrained_numeric_as_string: true,
            ..TypeOptions::default()
        };
        let f = arrow_field("amount", &PgType::Numeric, wide, true, &as_string).unwrap();
        assert_eq!(f.data_type(), &DataType::Utf8);
        // numeric(36,-3) needs 39 digits.
        assert!(
            arrow_field(
                "n",
                &PgType::Numeric,
                numeric_mod(36, -3),
                true,
                &TypeOptions::default()
            )
            .is_err()
        );

        assert_eq!(
            field(&PgType::Numeric, -1).data_type(),
            &DataType::Decimal128(38, 9)
        );
        let scale_4 = TypeOptions {
            numeric_scale: 4,
            ..TypeOptions::default()
        };
        let f = arrow_field("n", &PgType::Numeric, -1, false, &scale_4).unwrap();
        assert_eq!(f.data_type(), &DataType::Decimal128(38, 4));
        assert!(!f.is_nullable());
        let f = arrow_field("n", &PgType::Numeric, -1, true, &as_string).unwrap();
        assert_eq!(f.data_type(), &DataType::Utf8);
        let bad_scale = TypeOptions {
            numeric_scale: -1,
            ..TypeOptions::default()
        };
        assert!(arrow_field("n", &PgType::Numeric, -1, true, &bad_scale).is_err());
    }

    #[test]
    fn arrays_are_lists_of_nullable_elements() {
        let array = PgType::builtin(crate::source::Oid(1231)).unwrap();
        let f = field(&array, numeric_mod(10, 2));
        let DataType::List(item) = f.data_type() else {
            panic!("not a list: {f:?}");
        };
        assert_eq!(item.name(), "element");
        assert!(item.is_nullable());
        assert_eq!(item.data_type(), &DataType::Decimal128(10, 2));
        assert_eq!(f.metadata()[PG_TYPE_METADATA_KEY], "numeric(10,2)[]");

        let uuids = field(&PgType::builtin(crate::source::Oid(2951)).unwrap(), -1);
        let DataType::List(item) = uuids.data_type() else {
            panic!("not a list");
        };
        assert_eq!(item.metadata()["ARROW:extension:name"], "arrow.uuid");

        let boxes = PgType::Array {
            element: Box::new(PgType::TextForm { name: "box".into() }),
            delimiter: b';',
        };
        assert_eq!(field(&boxes, -1).data_type(), &DataType::Utf8);
        let nested = PgType::Array {
            element: Box::new(PgType::Domain {
                name: "public.ints".into(),
                base: Box::new(PgType::builtin(crate::source::Oid(1007)).unwrap()),
                typmod: -1,
            }),
            delimiter: b',',
        };
        assert_eq!(field(&nested, -1).data_type(), &DataType::Utf8);
    }

    #[test]
    fn domains_map_as_their_base_with_their_typmod() {
        let money = PgType::Domain {
            name: "public.money2".into(),
            base: Box::new(PgType::Numeric),
            typmod: numeric_mod(12, 2),
        };
        let f = field(&money, -1);
        assert_eq!(f.data_type(), &DataType::Decimal128(12, 2));
        assert_eq!(
            f.metadata()[PG_TYPE_METADATA_KEY],
            "public.money2 (domain over numeric(12,2))"
        );
        let id = PgType::Domain {
            name: "public.id".into(),
            base: Box::new(PgType::Uuid),
            typmod: -1,
        };
        let f = field(&id, -1);
        assert_eq!(f.data_type(), &DataType::FixedSizeBinary(16));
        assert_eq!(f.metadata()["ARROW:extension:name"], "arrow.uuid");
    }
}
