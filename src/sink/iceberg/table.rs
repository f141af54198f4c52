//! A lake table's shape: the Iceberg schema made from a source table's Arrow schema (field ids,
//! required key columns), the partition spec parsed from the config's expressions, the metadata
//! of a new table, the schema evolution a new source shape needs, and the checkpoint a table's
//! snapshots carry.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema as ArrowSchema, TimeUnit};
use iceberg::spec::{
    FormatVersion, ListType, MAIN_BRANCH, NestedField, NestedFieldRef, PrimitiveType, Schema,
    SortOrder, TableMetadata, TableMetadataBuilder, Transform, Type, UnboundPartitionSpec,
};

use crate::lsn::Lsn;
use crate::sink::{CHECKPOINT_PROPERTY, COPY_PROPERTY, TableLayout};
use crate::table::{ChunkCommit, CopyProgress, LatestChunkCommits};

/// Table properties every lake table is created with: readers and other writers (Spark,
/// Athena, compaction) then write the same format and codec, and every writer removes the
/// metadata files that fall off the table's metadata log (the last 100 are kept), so a table
/// committed every few seconds for months keeps a bounded `metadata/` directory.
pub(super) const TABLE_PROPERTIES: [(&str, &str); 4] = [
    ("write.format.default", "parquet"),
    ("write.parquet.compression-codec", "zstd"),
    (DELETE_AFTER_COMMIT, "true"),
    ("write.metadata.previous-versions-max", "100"),
];

/// The table property that lets a writer remove the metadata files its commit pushed off
/// the metadata log.
pub(super) const DELETE_AFTER_COMMIT: &str = "write.metadata.delete-after-commit.enabled";

/// The table's own `metadata/` directory (with its trailing `/`): the only place its writer
/// removes metadata files from.
pub(super) fn metadata_directory(metadata: &TableMetadata) -> String {
    format!("{}/metadata/", metadata.location().trim_end_matches('/'))
}

/// The metadata files a commit from `before` (at `before_location`) to `after` (at
/// `after_location`) pushed off the metadata log: no reader or writer that follows the log
/// reaches them again. Only files under the table's own `metadata/` directory, and only when
/// the table allows it ([`DELETE_AFTER_COMMIT`]).
pub(super) fn superseded_metadata(
    before_location: &str,
    before: &TableMetadata,
    after_location: &str,
    after: &TableMetadata,
) -> Vec<String> {
    if after
        .properties()
        .get(DELETE_AFTER_COMMIT)
        .map(String::as_str)
        != Some("true")
    {
        return Vec::new();
    }
    let kept: std::collections::HashSet<&str> = after
        .metadata_log()
        .iter()
        .map(|m| m.metadata_file.as_str())
        .chain(std::iter::once(after_location))
        .collect();
    let own = metadata_directory(after);
    before
        .metadata_log()
        .iter()
        .map(|m| m.metadata_file.as_str())
        .chain(std::iter::once(before_location))
        .filter(|file| !kept.contains(file) && file.starts_with(&own))
        .map(str::to_string)
        .collect()
}

/// The Arrow extension name the source puts on `uuid` columns (a 16-byte fixed binary).
const ARROW_EXTENSION_NAME: &str = "ARROW:extension:name";
const ARROW_UUID: &str = "arrow.uuid";

/// The Iceberg type of an Arrow type, as the source maps PostgreSQL types (see
/// `source::types::mapping`); `None` for a type no source column has.
fn primitive_type(field: &Field, data_type: &DataType) -> Option<PrimitiveType> {
    Some(match data_type {
        DataType::Boolean => PrimitiveType::Boolean,
        DataType::Int8 | DataType::Int16 | DataType::Int32 => PrimitiveType::Int,
        DataType::Int64 => PrimitiveType::Long,
        DataType::Float32 => PrimitiveType::Float,
        DataType::Float64 => PrimitiveType::Double,
        DataType::Decimal128(precision, scale) if *scale >= 0 => PrimitiveType::Decimal {
            precision: u32::from(*precision),
            scale: u32::from(scale.unsigned_abs()),
        },
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => PrimitiveType::String,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => PrimitiveType::Binary,
        DataType::Date32 => PrimitiveType::Date,
        DataType::Time64(TimeUnit::Microsecond) => PrimitiveType::Time,
        DataType::Timestamp(TimeUnit::Microsecond, None) => PrimitiveType::Timestamp,
        DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => PrimitiveType::Timestamptz,
        DataType::FixedSizeBinary(16)
            if field
                .metadata()
                .get(ARROW_EXTENSION_NAME)
                .map(String::as_str)
                == Some(ARROW_UUID) =>
        {
            PrimitiveType::Uuid
        }
        DataType::FixedSizeBinary(width) => PrimitiveType::Fixed(u64::try_from(*width).ok()?),
        _ => return None,
    })
}

/// The Iceberg type of `field`, taking nested ids (list elements) from `next_id`.
fn iceberg_type(field: &Field, next_id: &mut i32) -> Result<Type, String> {
    match field.data_type() {
        DataType::List(element) | DataType::LargeList(element) => {
            let id = *next_id;
            *next_id += 1;
            let element_type = iceberg_type(element, next_id)?;
            Ok(Type::List(ListType::new(Arc::new(
                NestedField::list_element(id, element_type, !element.is_nullable()),
            ))))
        }
        other => primitive_type(field, other)
            .map(Type::Primitive)
            .ok_or_else(|| {
                format!(
                    "column {}: Arrow type {other} has no Iceberg equivalent",
                    field.name()
                )
            }),
    }
}

/// The Iceberg schema of a new table: the source's columns in order, ids from 1 (nested ids
/// after the top-level ones), key columns required and marked as identifier fields.
pub(super) fn new_schema(arrow: &ArrowSchema, key: &[String]) -> Result<Schema, String> {
    for name in key {
        if arrow.field_with_name(name).is_err() {
            return Err(format!("key column {name} is not a column of the table"));
        }
    }
    let mut next_id =
        i32::try_from(arrow.fields().len()).map_err(|_| "too many columns".to_string())? + 1;
    let mut fields: Vec<NestedFieldRef> = Vec::with_capacity(arrow.fields().len());
    let mut identifiers = Vec::with_capacity(key.len());
    for (id, field) in (1..).zip(arrow.fields().iter()) {
        let field_type = iceberg_type(field, &mut next_id)?;
        let required = key.iter().any(|k| k == field.name());
        if required {
            identifiers.push(id);
        }
        fields.push(Arc::new(NestedField::new(
            id,
            field.name(),
            field_type,
            required,
        )));
    }
    Schema::builder()
        .with_schema_id(0)
        .with_fields(fields)
        .with_identifier_field_ids(identifiers)
        .build()
        .map_err(|e| format!("invalid schema: {}", e.message()))
}

/// How a source column's type fits the lake column's.
enum Fit {
    /// The lake column takes the values as they are, or after a lossless cast.
    Fits,
    /// The lake column must be widened to this type first.
    Widen(Type),
}

/// Whether values of `from` can be written losslessly into a `to` column (Iceberg's allowed
/// type promotions).
fn promotes(from: &PrimitiveType, to: &PrimitiveType) -> bool {
    match (from, to) {
        (a, b) if a == b => true,
        (PrimitiveType::Int, PrimitiveType::Long) => true,
        (PrimitiveType::Float, PrimitiveType::Double) => true,
        (
            PrimitiveType::Decimal {
                precision: p1,
                scale: s1,
            },
            PrimitiveType::Decimal {
                precision: p2,
                scale: s2,
            },
        ) => s1 == s2 && p1 <= p2,
        _ => false,
    }
}

/// How `incoming` fits the lake's `lake` type; `None` when neither holds the other.
fn fit(lake: &Type, incoming: &Type) -> Option<Fit> {
    match (lake, incoming) {
        (Type::Primitive(l), Type::Primitive(i)) => {
            if promotes(i, l) {
                Some(Fit::Fits)
            } else if promotes(l, i) {
                Some(Fit::Widen(incoming.clone()))
            } else {
                None
            }
        }
        (Type::List(l), Type::List(i)) => {
            let element = &l.element_field;
            let loosen = element.required && !i.element_field.required;
            let widened = match fit(&element.field_type, &i.element_field.field_type)? {
                Fit::Fits => None,
                Fit::Widen(t) => Some(t),
            };
            if widened.is_none() && !loosen {
                return Some(Fit::Fits);
            }
            let element_type = widened.unwrap_or_else(|| (*element.field_type).clone());
            Some(Fit::Widen(Type::List(ListType::new(Arc::new(
                NestedField::list_element(element.id, element_type, element.required && !loosen),
            )))))
        }
        _ => None,
    }
}

/// The schema the lake table needs to take rows of `incoming`: `None` when the current one
/// does; otherwise the current schema with widened columns and the new columns appended (as
/// optional, with ids after `last_column_id`). Columns the source dropped stay. A column whose
/// type changed in a way Iceberg cannot follow is an error naming it, unless `replace` (the
/// table is about to be copied again from scratch): then it is replaced by a new column of
/// the new type (a new field id, so old files do not read into it). Key columns are never
/// replaced.
pub(super) fn evolve(
    current: &Schema,
    last_column_id: i32,
    incoming: &ArrowSchema,
    replace: bool,
) -> Result<Option<Schema>, String> {
    let mut widened: HashMap<i32, Type> = HashMap::new();
    let mut replaced: Vec<i32> = Vec::new();
    let mut added: Vec<&Field> = Vec::new();
    for field in incoming.fields() {
        // Types of new columns are converted with throwaway ids, only to compare.
        let incoming_type = iceberg_type(field, &mut 0)?;
        match current.field_by_name(field.name()) {
            None => added.push(field),
            Some(lake) => match fit(&lake.field_type, &incoming_type) {
                Some(Fit::Fits) => {}
                Some(Fit::Widen(t)) => {
                    widened.insert(lake.id, t);
                }
                None if replace && !current.identifier_field_ids().any(|id| id == lake.id) => {
                    replaced.push(lake.id);
                    added.push(field);
                }
                None => {
                    return Err(format!(
                        "column {}: the source type changed to {incoming_type}, which the lake \
                         column ({}) cannot take (Iceberg allows int→long, float→double and a \
                         decimal's precision to grow); recreate the lake table or rename the \
                         column",
                        field.name(),
                        lake.field_type
                    ));
                }
            },
        }
    }
    if widened.is_empty() && added.is_empty() {
        return Ok(None);
    }
    if !replaced.is_empty() {
        tracing::warn!(
            columns = ?incoming
                .fields()
                .iter()
                .filter(|f| current.field_by_name(f.name()).is_some_and(|l| replaced.contains(&l.id)))
                .map(|f| f.name())
                .collect::<Vec<_>>(),
            "columns whose type changed incompatibly are replaced by new columns: the table is \
             copied again"
        );
    }
    let mut next_id = last_column_id.max(current.highest_field_id()) + 1;
    let mut fields: Vec<NestedFieldRef> = current
        .as_struct()
        .fields()
        .iter()
        .filter(|f| !replaced.contains(&f.id))
        .map(|f| match widened.get(&f.id) {
            Some(t) => {
                let mut field = NestedField::clone(f);
                field.field_type = Box::new(t.clone());
                Arc::new(field)
            }
            None => f.clone(),
        })
        .collect();
    for field in added {
        let id = next_id;
        next_id += 1;
        let field_type = iceberg_type(field, &mut next_id)?;
        fields.push(Arc::new(NestedField::optional(
            id,
            field.name(),
            field_type,
        )));
    }
    Schema::builder()
        .with_schema_id(current.schema_id() + 1)
        .with_fields(fields)
        .with_identifier_field_ids(current.identifier_field_ids())
        .build()
        .map(Some)
        .map_err(|e| format!("evolved schema is invalid: {}", e.message()))
}

/// One partition expression of the config (`status`, `day(created_at)`, `bucket(16, id)`,
/// `truncate(4, sku)`), parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionExpr {
    /// The source column.
    pub column: String,
    /// The Iceberg transform.
    pub transform: Transform,
}

impl PartitionExpr {
    /// Parses `expr`; the error says what forms are accepted.
    pub fn parse(expr: &str) -> Result<PartitionExpr, String> {
        let fail = || {
            format!(
                "partition expression {expr:?} is not one of: col, identity(col), year(col), \
                 month(col), day(col), hour(col), bucket(N, col), truncate(W, col)"
            )
        };
        let expr_trimmed = expr.trim();
        let Some((name, rest)) = expr_trimmed.split_once('(') else {
            return if is_column_name(expr_trimmed) {
                Ok(PartitionExpr {
                    column: expr_trimmed.to_string(),
                    transform: Transform::Identity,
                })
            } else {
                Err(fail())
            };
        };
        let args = rest.strip_suffix(')').ok_or_else(fail)?;
        let args: Vec<&str> = args.split(',').map(str::trim).collect();
        let (transform, column) = match (name.trim().to_ascii_lowercase().as_str(), &args[..]) {
            ("identity", [col]) => (Transform::Identity, *col),
            ("year" | "years", [col]) => (Transform::Year, *col),
            ("month" | "months", [col]) => (Transform::Month, *col),
            ("day" | "days", [col]) => (Transform::Day, *col),
            ("hour" | "hours", [col]) => (Transform::Hour, *col),
            ("bucket", [n, col]) => (Transform::Bucket(positive(n).ok_or_else(fail)?), *col),
            ("truncate", [w, col]) => (Transform::Truncate(positive(w).ok_or_else(fail)?), *col),
            _ => return Err(fail()),
        };
        if !is_column_name(column) {
            return Err(fail());
        }
        Ok(PartitionExpr {
            column: column.to_string(),
            transform,
        })
    }

    /// The partition field's name, as Spark and pyiceberg name it (`order_date_month`).
    pub fn field_name(&self) -> String {
        let suffix = match self.transform {
            Transform::Identity => return self.column.clone(),
            Transform::Year => "year",
            Transform::Month => "month",
            Transform::Day => "day",
            Transform::Hour => "hour",
            Transform::Bucket(_) => "bucket",
            Transform::Truncate(_) => "trunc",
            Transform::Void => "null",
            Transform::Unknown => "unknown",
        };
        format!("{}_{suffix}", self.column)
    }
}

fn is_column_name(text: &str) -> bool {
    !text.is_empty() && !text.contains(['(', ')', ',']) && text.trim() == text
}

fn positive(text: &str) -> Option<u32> {
    text.parse::<u32>().ok().filter(|n| *n > 0)
}

/// The partition spec of `layout` over `schema`.
pub(super) fn partition_spec(
    schema: &Schema,
    layout: &TableLayout,
) -> Result<UnboundPartitionSpec, String> {
    let mut builder = UnboundPartitionSpec::builder();
    for text in &layout.partition_by {
        let expr = PartitionExpr::parse(text)?;
        let source = schema.field_by_name(&expr.column).ok_or_else(|| {
            format!(
                "partition expression {text:?}: {} is not a column of the table",
                expr.column
            )
        })?;
        builder = builder
            .add_partition_field(source.id, expr.field_name(), expr.transform)
            .map_err(|e| format!("partition expression {text:?}: {}", e.message()))?;
    }
    Ok(builder.build())
}

/// Whether the table's partition spec is the one `layout` asks for (by source column and
/// transform), so a changed config can be reported rather than silently ignored.
pub(super) fn same_partitioning(metadata: &TableMetadata, layout: &TableLayout) -> bool {
    let schema = metadata.current_schema();
    let current: Vec<(Option<&str>, Transform)> = metadata
        .default_partition_spec()
        .fields()
        .iter()
        .map(|f| {
            (
                schema.field_by_id(f.source_id).map(|s| s.name.as_str()),
                f.transform,
            )
        })
        .collect();
    let wanted: Vec<(Option<&str>, Transform)> = layout
        .partition_by
        .iter()
        .filter_map(|text| PartitionExpr::parse(text).ok())
        .map(|e| {
            (
                schema.field_by_name(&e.column).map(|s| s.name.as_str()),
                e.transform,
            )
        })
        .collect();
    current == wanted
}

/// The metadata of a new table at `location`: format `version` (2, or 3 for deletion
/// vectors), `schema`, the partition spec of `layout`, unsorted, [`TABLE_PROPERTIES`].
pub(super) fn new_table_metadata(
    location: &str,
    schema: Schema,
    layout: &TableLayout,
    version: FormatVersion,
) -> Result<TableMetadata, String> {
    let spec = partition_spec(&schema, layout)?;
    let properties = TABLE_PROPERTIES
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    TableMetadataBuilder::new(
        schema,
        spec,
        SortOrder::unsorted_order(),
        location.to_string(),
        version,
        properties,
    )
    .and_then(TableMetadataBuilder::build)
    .map(|result| result.metadata)
    .map_err(|e| format!("cannot build the table's metadata: {}", e.message()))
}

/// The checkpoint the table holds: the `lakewriter.lsn` of the newest snapshot in the
/// ancestry of `main` that lakewriter committed. Snapshots of other engines (an `OPTIMIZE` by
/// Athena, Spark's `rewrite_data_files`, S3 Tables' compaction, an append by pyiceberg) carry
/// no checkpoint and are passed over (DESIGN.md invariant 12). `None` when the newest of
/// lakewriter's snapshots is marked [`INCOMPLETE_PROPERTY`] (an interrupted or suspended
/// copy: the table is copied again), or when none is left in the ancestry (a new table, or
/// one whose history was expired past lakewriter's last commit).
pub(super) fn checkpoint(metadata: &TableMetadata) -> Result<Option<Lsn>, String> {
    let Some(snapshot) = lakewriter_head(metadata)? else {
        return Ok(None);
    };
    match snapshot
        .summary()
        .additional_properties
        .get(CHECKPOINT_PROPERTY)
    {
        Some(text) => text.parse::<Lsn>().map(Some).map_err(|e| {
            format!(
                "snapshot {}: {CHECKPOINT_PROPERTY}: {e}",
                snapshot.snapshot_id()
            )
        }),
        // marked incomplete
        None => Ok(None),
    }
}

/// The progress of the table's chunked copy ([`COPY_PROPERTY`]) as the snapshot its
/// checkpoint is read from carries it; `None` when no copy is under way.
pub(crate) fn copy_progress(metadata: &TableMetadata) -> Option<String> {
    let snapshot = lakewriter_head(metadata).ok().flatten()?;
    snapshot
        .summary()
        .additional_properties
        .get(COPY_PROPERTY)
        .cloned()
}

/// The commits of the table's chunked copy under way that brought its latest chunks in,
/// with their snapshots' timestamps, for its pace: from the current snapshot of `main` back
/// to the copy's emptying commit, or [`crate::table::PACE_CHUNKS`] chunks back. Snapshots of other engines
/// are passed over; a snapshot of lakewriter's without a copy's progress, or with more chunks
/// than a later one, belongs to before this copy. Expired snapshots shorten the history, and
/// the pace with it.
pub(crate) fn copy_commits(metadata: &TableMetadata) -> Vec<ChunkCommit> {
    let mut commits = LatestChunkCommits::default();
    let mut next = metadata.snapshot_for_ref(MAIN_BRANCH);
    // a parent id that loops back is a corrupt table, not a reason to spin
    let mut seen = std::collections::HashSet::new();
    while let Some(snapshot) = next
        && seen.insert(snapshot.snapshot_id())
    {
        let properties = &snapshot.summary().additional_properties;
        match properties
            .get(COPY_PROPERTY)
            .map(|t| CopyProgress::decode(t))
        {
            Some(Ok(progress)) if !commits.take(&progress, Some(snapshot.timestamp_ms())) => break,
            Some(Ok(_)) => {}
            Some(Err(_)) => break,
            None if properties.keys().any(|k| k.starts_with("lakewriter.")) => break,
            None => {}
        }
        next = snapshot
            .parent_snapshot_id()
            .and_then(|id| metadata.snapshot_by_id(id));
    }
    commits.into_commits()
}

/// The newest snapshot in the ancestry of `main` that lakewriter committed (carrying its
/// checkpoint or the [`INCOMPLETE_PROPERTY`] mark): where the table's checkpoint is read, so
/// expiry never removes it.
pub(super) fn lakewriter_head(
    metadata: &TableMetadata,
) -> Result<Option<&iceberg::spec::SnapshotRef>, String> {
    let mut next = metadata.snapshot_for_ref(MAIN_BRANCH);
    // a parent id that loops back is a corrupt table, not a reason to spin
    let mut seen = std::collections::HashSet::new();
    while let Some(snapshot) = next {
        if !seen.insert(snapshot.snapshot_id()) {
            return Err(format!(
                "snapshot {}: the ancestry of main loops back on itself",
                snapshot.snapshot_id()
            ));
        }
        let properties = &snapshot.summary().additional_properties;
        if properties.contains_key(CHECKPOINT_PROPERTY)
            || properties.contains_key(INCOMPLETE_PROPERTY)
        {
            return Ok(Some(snapshot));
        }
        next = snapshot
            .parent_snapshot_id()
            .and_then(|id| metadata.snapshot_by_id(id));
    }
    Ok(None)
}

/// Whether lakewriter writes this table: one of its snapshots carries lakewriter's summary
/// keys. `compact` leaves every other table of the namespace to the engine that writes it.
pub(super) fn written_by_lakewriter(metadata: &TableMetadata) -> bool {
    metadata.snapshots().any(|s| {
        let properties = &s.summary().additional_properties;
        properties.contains_key(CHECKPOINT_PROPERTY) || properties.contains_key(INCOMPLETE_PROPERTY)
    })
}

/// The snapshot summary key marking a commit of lakewriter's without a checkpoint: the table
/// is incomplete and is copied again on the next start. It sets such commits apart from
/// other engines' commits, which carry no checkpoint either.
pub const INCOMPLETE_PROPERTY: &str = "lakewriter.incomplete";

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, data_type: DataType) -> Field {
        Field::new(name, data_type, true)
    }

    fn uuid_field(name: &str) -> Field {
        field(name, DataType::FixedSizeBinary(16)).with_metadata(HashMap::from([(
            ARROW_EXTENSION_NAME.to_string(),
            ARROW_UUID.to_string(),
        )]))
    }

    fn orders() -> ArrowSchema {
        ArrowSchema::new(vec![
            field("id", DataType::Int32),
            field("total", DataType::Decimal128(10, 2)),
            field(
                "tags",
                DataType::List(Arc::new(Field::new("element", DataType::Utf8, true))),
            ),
            uuid_field("ref"),
            field(
                "at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            ),
        ])
    }

    #[test]
    fn new_schemas_number_top_level_columns_first_and_require_the_key() {
        let schema = new_schema(&orders(), &["id".to_string()]).expect("a schema");
        let id = schema.field_by_name("id").expect("id");
        assert_eq!((id.id, id.required), (1, true));
        assert_eq!(schema.identifier_field_ids().collect::<Vec<_>>(), vec![1]);
        let tags = schema.field_by_name("tags").expect("tags");
        assert_eq!(tags.id, 3);
        let Type::List(list) = tags.field_type.as_ref() else {
            panic!("tags is a list")
        };
        assert_eq!(list.element_field.id, 6, "nested ids follow the top level");
        assert_eq!(
            *schema.field_by_name("ref").expect("ref").field_type,
            Type::Primitive(PrimitiveType::Uuid)
        );
        assert_eq!(
            *schema.field_by_name("at").expect("at").field_type,
            Type::Primitive(PrimitiveType::Timestamptz)
        );
        assert!(new_schema(&orders(), &["nope".to_string()]).is_err());
    }

    #[test]
    fn evolution_adds_columns_widens_types_and_keeps_dropped_columns() {
        let current = new_schema(&orders(), &["id".to_string()]).expect("a schema");
        assert!(
            evolve(&current, 6, &orders(), false)
                .expect("fits")
                .is_none(),
            "same shape"
        );

        let incoming = ArrowSchema::new(vec![
            field("id", DataType::Int64),
            field("total", DataType::Decimal128(12, 2)),
            field("note", DataType::Utf8),
        ]);
        let evolved = evolve(&current, 6, &incoming, false)
            .expect("fits")
            .expect("changed");
        let id = evolved.field_by_name("id").expect("id");
        assert_eq!(*id.field_type, Type::Primitive(PrimitiveType::Long));
        assert!(id.required, "the key stays required");
        assert_eq!(evolved.identifier_field_ids().collect::<Vec<_>>(), vec![1]);
        assert!(
            evolved.field_by_name("tags").is_some(),
            "dropped columns stay"
        );
        let note = evolved.field_by_name("note").expect("note");
        assert_eq!((note.id, note.required), (7, false));

        // A narrower source type is written into the wider lake column.
        let narrower = ArrowSchema::new(vec![field("total", DataType::Decimal128(8, 2))]);
        assert!(
            evolve(&current, 6, &narrower, false)
                .expect("fits")
                .is_none()
        );

        let incompatible = ArrowSchema::new(vec![field("total", DataType::Utf8)]);
        let error = evolve(&current, 6, &incompatible, false).expect_err("refused");
        assert!(error.contains("column total"), "{error}");
        let rescaled = ArrowSchema::new(vec![field("total", DataType::Decimal128(12, 4))]);
        assert!(evolve(&current, 6, &rescaled, false).is_err());
    }

    #[test]
    fn partition_expressions_parse_into_transforms() {
        let parse = |text: &str| PartitionExpr::parse(text).map(|e| (e.column, e.transform));
        assert_eq!(parse("status"), Ok(("status".into(), Transform::Identity)));
        assert_eq!(
            parse(" month(order_date) "),
            Ok(("order_date".into(), Transform::Month))
        );
        assert_eq!(
            parse("bucket(16, customer_id)"),
            Ok(("customer_id".into(), Transform::Bucket(16)))
        );
        assert_eq!(
            parse("truncate(4,sku)"),
            Ok(("sku".into(), Transform::Truncate(4)))
        );
        assert_eq!(parse("HOUR(at)"), Ok(("at".into(), Transform::Hour)));
        for bad in [
            "",
            "bucket(x, id)",
            "bucket(0, id)",
            "day(a, b)",
            "week(at)",
            "day(at",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
        let expr = PartitionExpr::parse("month(order_date)").expect("parses");
        assert_eq!(expr.field_name(), "order_date_month");
    }

    #[test]
    fn partition_specs_bind_to_the_schema() {
        let schema = new_schema(&orders(), &["id".to_string()]).expect("a schema");
        let layout = TableLayout {
            key: vec!["id".into()],
            partition_by: vec!["day(at)".into(), "bucket(4, id)".into()],
        };
        let spec = partition_spec(&schema, &layout).expect("binds");
        assert_eq!(spec.fields().len(), 2);
        assert_eq!(spec.fields()[0].source_id, 5);
        let missing = TableLayout {
            key: vec![],
            partition_by: vec!["day(nope)".into()],
        };
        assert!(partition_spec(&schema, &missing).is_err());
        let metadata = new_table_metadata("/tmp/t", schema, &layout, FormatVersion::V2)
            .expect("metadata of a new table");
        assert!(same_partitioning(&metadata, &layout));
        assert!(!same_partitioning(&metadata, &missing));
        assert_eq!(checkpoint(&metadata), Ok(None));
    }
}
