//! The `public.items (id int PRIMARY KEY, name text)` table of the sink tests, built by hand
//! as the source would describe it, its rows, and the deltas that commit them.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use lakewriter::Lsn;
use lakewriter::sink::{TableDelta, TableLayout};
use lakewriter::source::changes::{ColumnSchema, TableSchema};
use lakewriter::source::pgoutput::ReplicaIdentity;
use lakewriter::source::{Oid, RelationId};
use lakewriter::table::TableId;

/// Builds a table's shape by hand, as the source would describe it: every field nullable,
/// with the PostgreSQL type in the field metadata.
pub fn table_schema(
    table: &TableId,
    columns: &[(&str, DataType, u32, bool)],
    uuid_columns: &[&str],
) -> Arc<TableSchema> {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, data_type, _, _)| {
            let mut metadata =
                HashMap::from([("lakewriter.pg_type".to_string(), format!("{data_type}"))]);
            if uuid_columns.contains(name) {
                metadata.insert("ARROW:extension:name".into(), "arrow.uuid".into());
            }
            Field::new(*name, data_type.clone(), true).with_metadata(metadata)
        })
        .collect();
    let arrow = Arc::new(Schema::new(fields));
    Arc::new(TableSchema {
        table: table.clone(),
        relation: RelationId(16384),
        replica_identity: ReplicaIdentity::Full,
        columns: columns
            .iter()
            .map(|(name, _, oid, key)| ColumnSchema {
                name: name.to_string(),
                type_oid: Oid(*oid),
                type_modifier: -1,
                key: *key,
            })
            .collect(),
        arrow: arrow.clone(),
        arrow_nullable: arrow,
    })
}

/// `public.items (id int PRIMARY KEY, name text)`.
pub fn items_schema() -> Arc<TableSchema> {
    table_schema(
        &TableId::new("public", "items"),
        &[
            ("id", DataType::Int32, 23, true),
            ("name", DataType::Utf8, 25, false),
        ],
        &[],
    )
}

pub fn keyed(key: &[&str], partition_by: &[&str]) -> TableLayout {
    TableLayout {
        key: key.iter().map(|k| k.to_string()).collect(),
        partition_by: partition_by.iter().map(|p| p.to_string()).collect(),
    }
}

/// Rows of `items`; a `None` name leaves the column null (a key-only old row).
pub fn items(schema: &TableSchema, rows: &[(i32, Option<&str>)]) -> RecordBatch {
    RecordBatch::try_new(
        schema.arrow_nullable.clone(),
        vec![
            Arc::new(Int32Array::from(
                rows.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|(_, name)| *name).collect::<Vec<_>>(),
            )),
        ],
    )
    .expect("an items batch")
}

pub fn delta(
    schema: &Arc<TableSchema>,
    deletes: Vec<RecordBatch>,
    rows: Vec<RecordBatch>,
    lsn: u64,
) -> TableDelta {
    TableDelta {
        table: schema.table.clone(),
        schema: schema.clone(),
        truncate: false,
        adds_only: false,
        deletes,
        rows,
        lsn: Some(Lsn(lsn)),
        copy: None,
    }
}
