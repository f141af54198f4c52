//! Glue columns: from an Iceberg schema (the current fields, then the dropped ones marked not
//! current, as the other Iceberg writers register them) and from a Delta table's Arrow schema,
//! with the type names Athena reads.

use std::collections::{HashMap, HashSet};

use aws_sdk_glue::types::Column;
use iceberg::spec::{NestedField, PrimitiveType, Schema, TableMetadata, Type};

/// Column parameters that tie a Glue column to its Iceberg field.
const FIELD_ID: &str = "iceberg.field.id";
const FIELD_OPTIONAL: &str = "iceberg.field.optional";
const FIELD_CURRENT: &str = "iceberg.field.current";

/// Glue columns of a Delta table: its top-level fields, in order, with Athena's type names.
pub(super) fn delta_glue_columns(schema: &arrow::datatypes::Schema) -> Result<Vec<Column>, String> {
    schema
        .fields()
        .iter()
        .map(|field| {
            let ty = arrow_glue_type(field.data_type())
                .map_err(|e| format!("column {}: {e}", field.name()))?;
            Column::builder()
                .name(field.name())
                .r#type(ty)
                .build()
                .map_err(|e| format!("column {}: {e}", field.name()))
        })
        .collect()
}

/// The Hive/Athena type name of a Delta column's Arrow type, spelled as for Iceberg tables.
fn arrow_glue_type(ty: &arrow::datatypes::DataType) -> Result<String, String> {
    use arrow::datatypes::DataType as D;
    Ok(match ty {
        D::Boolean => "boolean".into(),
        D::Int8 => "tinyint".into(),
        D::Int16 => "smallint".into(),
        D::Int32 => "int".into(),
        D::Int64 => "bigint".into(),
        D::Float16 | D::Float32 => "float".into(),
        D::Float64 => "double".into(),
        D::Decimal128(p, s) | D::Decimal256(p, s) => format!("decimal({p},{s})"),
        D::Date32 | D::Date64 => "date".into(),
        D::Timestamp(_, _) => "timestamp".into(),
        D::Utf8 | D::LargeUtf8 | D::Utf8View => "string".into(),
        D::Binary | D::LargeBinary | D::BinaryView | D::FixedSizeBinary(_) => "binary".into(),
        D::List(item) | D::LargeList(item) | D::ListView(item) | D::FixedSizeList(item, _) => {
            format!("array<{}>", arrow_glue_type(item.data_type())?)
        }
        D::Map(entries, _) => match entries.data_type() {
            D::Struct(kv) if kv.len() == 2 => format!(
                "map<{},{}>",
                arrow_glue_type(kv[0].data_type())?,
                arrow_glue_type(kv[1].data_type())?
            ),
            other => return Err(format!("a map of {other} has no Glue type")),
        },
        D::Struct(fields) => {
            let inner = fields
                .iter()
                .map(|f| Ok(format!("{}:{}", f.name(), arrow_glue_type(f.data_type())?)))
                .collect::<Result<Vec<String>, String>>()?;
            format!("struct<{}>", inner.join(","))
        }
        other => return Err(format!("{other} has no Glue type")),
    })
}

/// Glue columns for the table: the current schema's top-level fields, then the fields older
/// schemas had and the current one dropped (marked not current), as the other Iceberg writers
/// register them, so a reader of Glue sees the column history too.
pub(super) fn glue_columns(metadata: &TableMetadata) -> Result<Vec<Column>, String> {
    let current = metadata.current_schema();
    let mut columns = Vec::new();
    let mut seen = HashSet::new();
    for field in current.as_struct().fields() {
        seen.insert(field.name.clone());
        columns.push(glue_column(field, true)?);
    }
    // Newest schema first, so a dropped column shows the last type it had.
    let mut older: Vec<&Schema> = metadata
        .schemas_iter()
        .filter(|s| s.schema_id() != current.schema_id())
        .map(|s| s.as_ref())
        .collect();
    older.sort_by_key(|s| std::cmp::Reverse(s.schema_id()));
    for schema in older {
        for field in schema.as_struct().fields() {
            if seen.insert(field.name.clone()) {
                columns.push(glue_column(field, false)?);
            }
        }
    }
    Ok(columns)
}

fn glue_column(field: &NestedField, current: bool) -> Result<Column, String> {
    let parameters = HashMap::from([
        (FIELD_ID.to_string(), field.id.to_string()),
        (FIELD_OPTIONAL.to_string(), (!field.required).to_string()),
        (FIELD_CURRENT.to_string(), current.to_string()),
    ]);
    Column::builder()
        .name(&field.name)
        .r#type(glue_type(&field.field_type))
        .set_comment(field.doc.clone())
        .set_parameters(Some(parameters))
        .build()
        .map_err(|e| e.to_string())
}

/// The Hive/Athena type name of an Iceberg type, as Athena's DDL spells it. Types Athena has
/// no name for are shown as the closest one that reads the Parquet column: time and uuid as
/// string, fixed as binary; timestamps with a zone and nanosecond timestamps as timestamp.
/// (Athena reads an Iceberg table's data through its metadata; these names are for the Glue
/// console, crawlers and Hive-style readers.)
fn glue_type(ty: &Type) -> String {
    match ty {
        Type::Primitive(p) => match p {
            PrimitiveType::Boolean => "boolean".into(),
            PrimitiveType::Int => "int".into(),
            PrimitiveType::Long => "bigint".into(),
            PrimitiveType::Float => "float".into(),
            PrimitiveType::Double => "double".into(),
            PrimitiveType::Decimal { precision, scale } => format!("decimal({precision},{scale})"),
            PrimitiveType::Date => "date".into(),
            PrimitiveType::Timestamp
            | PrimitiveType::Timestamptz
            | PrimitiveType::TimestampNs
            | PrimitiveType::TimestamptzNs => "timestamp".into(),
            PrimitiveType::Time | PrimitiveType::String | PrimitiveType::Uuid => "string".into(),
            PrimitiveType::Fixed(_) | PrimitiveType::Binary => "binary".into(),
        },
        Type::List(list) => format!("array<{}>", glue_type(&list.element_field.field_type)),
        Type::Map(map) => format!(
            "map<{},{}>",
            glue_type(&map.key_field.field_type),
            glue_type(&map.value_field.field_type)
        ),
        Type::Struct(fields) => {
            let inner: Vec<String> = fields
                .fields()
                .iter()
                .map(|f| format!("{}:{}", f.name, glue_type(&f.field_type)))
                .collect();
            format!("struct<{}>", inner.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use iceberg::spec::{ListType, MapType, StructType};

    use super::*;

    fn primitive(p: PrimitiveType) -> Type {
        Type::Primitive(p)
    }

    #[test]
    fn iceberg_types_get_athena_names() {
        let cases = [
            (primitive(PrimitiveType::Boolean), "boolean"),
            (primitive(PrimitiveType::Int), "int"),
            (primitive(PrimitiveType::Long), "bigint"),
            (primitive(PrimitiveType::Float), "float"),
            (primitive(PrimitiveType::Double), "double"),
            (
                primitive(PrimitiveType::Decimal {
                    precision: 38,
                    scale: 9,
                }),
                "decimal(38,9)",
            ),
            (primitive(PrimitiveType::Date), "date"),
            (primitive(PrimitiveType::Time), "string"),
            (primitive(PrimitiveType::Timestamp), "timestamp"),
            (primitive(PrimitiveType::Timestamptz), "timestamp"),
            (primitive(PrimitiveType::TimestampNs), "timestamp"),
            (primitive(PrimitiveType::String), "string"),
            (primitive(PrimitiveType::Uuid), "string"),
            (primitive(PrimitiveType::Fixed(16)), "binary"),
            (primitive(PrimitiveType::Binary), "binary"),
        ];
        for (ty, name) in cases {
            assert_eq!(glue_type(&ty), name, "{ty:?}");
        }
    }

    #[test]
    fn delta_columns_get_the_names_iceberg_columns_get() {
        use arrow::datatypes::{DataType as D, Field, Schema as ArrowSchema, TimeUnit};
        let schema = ArrowSchema::new(vec![
            Field::new("id", D::Int64, false),
            Field::new("qty", D::Int32, true),
            Field::new("price", D::Decimal128(12, 2), true),
            Field::new("score", D::Float64, true),
            Field::new("ok", D::Boolean, true),
            Field::new("day", D::Date32, true),
            Field::new(
                "at",
                D::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("raw", D::Binary, true),
            Field::new(
                "tags",
                D::List(Arc::new(Field::new("element", D::Utf8, true))),
                true,
            ),
        ]);
        let columns = delta_glue_columns(&schema).expect("glue columns");
        let named: Vec<String> = columns
            .iter()
            .map(|c| format!("{}:{}", c.name(), c.r#type().unwrap_or("?")))
            .collect();
        assert_eq!(
            named,
            [
                "id:bigint",
                "qty:int",
                "price:decimal(12,2)",
                "score:double",
                "ok:boolean",
                "day:date",
                "at:timestamp",
                "raw:binary",
                "tags:array<string>",
            ]
        );
        let odd = ArrowSchema::new(vec![Field::new("gap", D::Duration(TimeUnit::Second), true)]);
        let error = delta_glue_columns(&odd).expect_err("no Glue type for a duration");
        assert!(error.contains("column gap"), "{error}");
    }

    #[test]
    fn nested_types_nest_their_names() {
        let list = Type::List(ListType::new(Arc::new(NestedField::list_element(
            3,
            primitive(PrimitiveType::Timestamptz),
            false,
        ))));
        assert_eq!(glue_type(&list), "array<timestamp>");
        let map = Type::Map(MapType::new(
            Arc::new(NestedField::map_key_element(
                4,
                primitive(PrimitiveType::String),
            )),
            Arc::new(NestedField::map_value_element(5, list.clone(), false)),
        ));
        assert_eq!(glue_type(&map), "map<string,array<timestamp>>");
        let record = Type::Struct(StructType::new(vec![
            Arc::new(NestedField::required(
                6,
                "id",
                primitive(PrimitiveType::Long),
            )),
            Arc::new(NestedField::optional(7, "tags", map)),
        ]));
        assert_eq!(
            glue_type(&record),
            "struct<id:bigint,tags:map<string,array<timestamp>>>"
        );
    }
}
