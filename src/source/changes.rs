//! A relation's decoded changes, appended straight from pgoutput's text values into Arrow
//! builders (no `String` per value), and handed on as [`ChangeBatch`]es: the new rows, the old
//! rows (key or whole, as the replica identity logs them), the operation of each row, and which
//! values are unchanged TOAST that the pipeline must resolve.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};

use crate::config::ColumnPolicy;
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::masking::{Hasher, MASK_METADATA_KEY};
use crate::source::pgoutput::{self, OldTuple, TupleData, Value};
use crate::source::schema::{ReplicaIdentity, SourceTable};
use crate::source::types::{ColumnBuilder, PG_TYPE_METADATA_KEY, PgType, TypeOptions, arrow_field};
use crate::source::{Oid, RelationId};
use crate::table::TableId;

pub use crate::table::{ChangeBatch, ColumnSchema, OldRow, Op, TableSchema};

impl TableSchema {
    /// Builds the schema of `relation`, with its column types resolved by `types`.
    pub fn from_relation(
        relation: &pgoutput::Relation<'_>,
        types: &[PgType],
        options: &TypeOptions,
    ) -> Result<TableSchema> {
        Ok(TableSchema::from_relation_masked(relation, types, options, &BTreeMap::new())?.0)
    }

    /// [`from_relation`](Self::from_relation) with the masking `policies` (by column name)
    /// applied: the shape the lake gets, and how each of the relation's columns reaches it.
    pub fn from_relation_masked(
        relation: &pgoutput::Relation<'_>,
        types: &[PgType],
        options: &TypeOptions,
        policies: &BTreeMap<String, ColumnPolicy>,
    ) -> Result<(TableSchema, Vec<Intake>)> {
        let table = TableId::new(relation.namespace, relation.name);
        let columns = relation
            .columns
            .iter()
            .zip(types)
            .map(|(column, pg_type)| Described {
                name: column.name,
                type_oid: column.type_oid,
                type_modifier: column.type_modifier,
                key: column.is_key(),
                pg_type,
            });
        shape(
            table,
            relation.id,
            relation.replica_identity,
            columns,
            options,
            policies,
        )
    }

    /// Builds the schema of a table from the catalog, the way the stream's Relation message
    /// would describe it (key flags are the replica identity's columns), so a snapshot and the
    /// stream that follows agree on the shape.
    pub fn from_catalog(
        table: &SourceTable,
        types: &[PgType],
        options: &TypeOptions,
    ) -> Result<TableSchema> {
        Ok(TableSchema::from_catalog_masked(table, types, options, &BTreeMap::new())?.0)
    }

    /// [`from_catalog`](Self::from_catalog) with the masking `policies` (by column name)
    /// applied, as [`from_relation_masked`](Self::from_relation_masked) applies them.
    pub fn from_catalog_masked(
        table: &SourceTable,
        types: &[PgType],
        options: &TypeOptions,
        policies: &BTreeMap<String, ColumnPolicy>,
    ) -> Result<(TableSchema, Vec<Intake>)> {
        let logged = table.logged_old_columns();
        let columns = table
            .columns
            .iter()
            .zip(types)
            .map(|(column, pg_type)| Described {
                name: &column.name,
                type_oid: column.type_oid,
                type_modifier: column.type_modifier,
                key: logged.contains(&column.name),
                pg_type,
            });
        let replica_identity = match table.replica_identity {
            ReplicaIdentity::Default => pgoutput::ReplicaIdentity::Default,
            ReplicaIdentity::Nothing => pgoutput::ReplicaIdentity::Nothing,
            ReplicaIdentity::Full => pgoutput::ReplicaIdentity::Full,
            ReplicaIdentity::Index => pgoutput::ReplicaIdentity::Index,
        };
        shape(
            table.id.clone(),
            table.oid,
            replica_identity,
            columns,
            options,
            policies,
        )
    }
}

/// How one column of a source row reaches a change batch, its masking policy applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intake {
    /// Parsed into the batch's column at this index.
    Value(usize),
    /// Its text output hashed ([`Hasher::hex`]) into the string column at this index.
    Hash(usize),
    /// NULL in the column at this index, whatever the value.
    Redact(usize),
    /// Not taken at all.
    Drop,
}

/// One source column, as the stream or the catalog describes it.
struct Described<'a> {
    name: &'a str,
    type_oid: Oid,
    type_modifier: i32,
    key: bool,
    pg_type: &'a PgType,
}

/// The lake's shape of a table whose columns are `columns`, with `policies` applied: a dropped
/// column is left out, a hashed one becomes a string column (marked, for COPY, with
/// [`MASK_METADATA_KEY`]), a redacted one keeps its type (and the mark).
fn shape<'a>(
    table: TableId,
    relation: RelationId,
    replica_identity: pgoutput::ReplicaIdentity,
    described: impl Iterator<Item = Described<'a>>,
    options: &TypeOptions,
    policies: &BTreeMap<String, ColumnPolicy>,
) -> Result<(TableSchema, Vec<Intake>)> {
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    let mut intake = Vec::new();
    for column in described {
        let policy = policies.get(column.name).copied();
        let index = fields.len();
        let field = match policy {
            Some(ColumnPolicy::Drop) => {
                intake.push(Intake::Drop);
                continue;
            }
            Some(ColumnPolicy::Hash) => {
                intake.push(Intake::Hash(index));
                columns.push(ColumnSchema {
                    name: column.name.to_string(),
                    type_oid: TEXT_OID,
                    type_modifier: -1,
                    key: column.key,
                });
                fields.push(Field::new(column.name, DataType::Utf8, true).with_metadata(
                    HashMap::from([
                        (PG_TYPE_METADATA_KEY.to_string(), "text".to_string()),
                        (MASK_METADATA_KEY.to_string(), "hash".to_string()),
                    ]),
                ));
                continue;
            }
            Some(ColumnPolicy::Redact) => {
                intake.push(Intake::Redact(index));
                let field = mapped(&table, &column, options)?;
                let mut metadata = field.metadata().clone();
                metadata.insert(MASK_METADATA_KEY.to_string(), "redact".to_string());
                field.with_metadata(metadata)
            }
            None => {
                intake.push(Intake::Value(index));
                mapped(&table, &column, options)?
            }
        };
        fields.push(field);
        columns.push(ColumnSchema {
            name: column.name.to_string(),
            type_oid: column.type_oid,
            type_modifier: column.type_modifier,
            key: column.key,
        });
    }
    let arrow = Arc::new(Schema::new(fields));
    Ok((
        TableSchema {
            table,
            relation,
            replica_identity,
            columns,
            arrow_nullable: arrow.clone(),
            arrow,
        },
        intake,
    ))
}

fn mapped(table: &TableId, column: &Described<'_>, options: &TypeOptions) -> Result<Field> {
    arrow_field(
        column.name,
        column.pg_type,
        column.type_modifier,
        true,
        options,
    )
    .map_err(|e| Error::Source {
        message: format!("table {table}: {e}"),
    })
}

/// `text`, the type a hashed column has in the lake.
const TEXT_OID: Oid = Oid(25);

/// Accumulates one table's changes into Arrow builders.
#[derive(Debug)]
pub struct ChangeBuilder {
    schema: Arc<TableSchema>,
    commit_lsn: Lsn,
    first_position: u64,
    ops: Vec<Op>,
    new: Vec<ColumnBuilder>,
    old: Vec<ColumnBuilder>,
    old_rows: Vec<OldRow>,
    unchanged_toast: Vec<(u32, u16)>,
    /// How each column of a source row reaches the builders.
    intake: Arc<[Intake]>,
    /// The key of hashed columns.
    hasher: Option<Hasher>,
}

impl ChangeBuilder {
    /// An empty builder for `schema`, in the transaction committing at `commit_lsn`.
    pub fn new(schema: Arc<TableSchema>, commit_lsn: Lsn, first_position: u64) -> Result<Self> {
        let intake: Arc<[Intake]> = (0..schema.columns.len()).map(Intake::Value).collect();
        ChangeBuilder::masked(schema, intake, None, commit_lsn, first_position)
    }

    /// An empty builder for the masked `schema`, whose source rows reach it as `intake` says
    /// ([`TableSchema::from_relation_masked`]), hashed with `hasher`.
    pub fn masked(
        schema: Arc<TableSchema>,
        intake: Arc<[Intake]>,
        hasher: Option<Hasher>,
        commit_lsn: Lsn,
        first_position: u64,
    ) -> Result<Self> {
        if hasher.is_none() && intake.iter().any(|i| matches!(i, Intake::Hash(_))) {
            return Err(Error::Source {
                message: format!(
                    "table {}: a column is hashed, but no masking key is loaded",
                    schema.table
                ),
            });
        }
        let builders = |schema: &TableSchema| -> Result<Vec<ColumnBuilder>> {
            schema
                .arrow_nullable
                .fields()
                .iter()
                .map(|f| {
                    ColumnBuilder::new(f).map_err(|e| Error::Source {
                        message: format!("table {}: {e}", schema.table),
                    })
                })
                .collect()
        };
        Ok(ChangeBuilder {
            new: builders(&schema)?,
            old: builders(&schema)?,
            schema,
            commit_lsn,
            first_position,
            ops: Vec::new(),
            old_rows: Vec::new(),
            unchanged_toast: Vec::new(),
            intake,
            hasher,
        })
    }

    /// The table's shape this builder appends to.
    pub fn schema(&self) -> &Arc<TableSchema> {
        &self.schema
    }

    /// Changes appended.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Memory the builders hold, for the flush policy.
    pub fn allocated_bytes(&self) -> usize {
        self.new
            .iter()
            .chain(&self.old)
            .map(ColumnBuilder::allocated_bytes)
            .sum::<usize>()
            + self.ops.capacity()
            + self.old_rows.capacity()
    }

    /// Appends an INSERT.
    pub fn insert(&mut self, new: TupleData<'_>, lsn: Lsn) -> Result<()> {
        self.append_tuple(Side::New, new, lsn)?;
        self.append_absent(Side::Old);
        self.ops.push(Op::Insert);
        self.old_rows.push(OldRow::Absent);
        Ok(())
    }

    /// Appends an UPDATE.
    pub fn update(
        &mut self,
        old: Option<OldTuple<'_>>,
        new: TupleData<'_>,
        lsn: Lsn,
    ) -> Result<()> {
        self.append_tuple(Side::New, new, lsn)?;
        let old_row = self.append_old(old, lsn)?;
        self.ops.push(Op::Update);
        self.old_rows.push(old_row);
        Ok(())
    }

    /// Appends a DELETE.
    pub fn delete(&mut self, old: OldTuple<'_>, lsn: Lsn) -> Result<()> {
        self.append_absent(Side::New);
        let old_row = self.append_old(Some(old), lsn)?;
        self.ops.push(Op::Delete);
        self.old_rows.push(old_row);
        Ok(())
    }

    /// Finishes the builders into a batch, leaving the builder empty and ready to continue
    /// the transaction at `next_position`.
    pub fn finish(&mut self, next_position: u64) -> Result<ChangeBatch> {
        let table = &self.schema.table;
        let finish = |builders: &mut Vec<ColumnBuilder>| -> Result<Vec<ArrayRef>> {
            builders
                .iter_mut()
                .map(|b| {
                    b.finish().map_err(|e| Error::Source {
                        message: format!("table {table}: {e}"),
                    })
                })
                .collect()
        };
        let batch = |columns: Vec<ArrayRef>| {
            RecordBatch::try_new(self.schema.arrow_nullable.clone(), columns).map_err(|e| {
                Error::Source {
                    message: format!("table {table}: building a change batch: {e}"),
                }
            })
        };
        let new = batch(finish(&mut self.new)?)?;
        let old = batch(finish(&mut self.old)?)?;
        let first_position = self.first_position;
        self.first_position = next_position;
        Ok(ChangeBatch {
            schema: self.schema.clone(),
            commit_lsn: self.commit_lsn,
            first_position,
            ops: std::mem::take(&mut self.ops),
            new,
            old,
            old_rows: std::mem::take(&mut self.old_rows),
            unchanged_toast: std::mem::take(&mut self.unchanged_toast),
        })
    }

    fn append_old(&mut self, old: Option<OldTuple<'_>>, lsn: Lsn) -> Result<OldRow> {
        Ok(match old {
            None => {
                self.append_absent(Side::Old);
                OldRow::Absent
            }
            Some(OldTuple::Key(tuple)) => {
                self.append_tuple(Side::Old, tuple, lsn)?;
                OldRow::Key
            }
            Some(OldTuple::Row(tuple)) => {
                self.append_tuple(Side::Old, tuple, lsn)?;
                OldRow::Full
            }
        })
    }

    fn append_absent(&mut self, side: Side) {
        let builders = match side {
            Side::New => &mut self.new,
            Side::Old => &mut self.old,
        };
        for builder in builders {
            builder.append_null();
        }
    }

    fn append_tuple(&mut self, side: Side, tuple: TupleData<'_>, lsn: Lsn) -> Result<()> {
        let table = &self.schema.table;
        if tuple.len() != self.intake.len() {
            return Err(Error::Source {
                message: format!(
                    "table {table} at LSN {lsn}: a row of {} columns for a relation of {}",
                    tuple.len(),
                    self.intake.len()
                ),
            });
        }
        let row = u32::try_from(self.ops.len()).unwrap_or(u32::MAX);
        let builders = match side {
            Side::New => &mut self.new,
            Side::Old => &mut self.old,
        };
        for (value, intake) in tuple.iter().zip(self.intake.iter()) {
            let (index, hashed) = match *intake {
                Intake::Value(index) => (index, false),
                Intake::Hash(index) => (index, true),
                Intake::Redact(index) => {
                    // NULL whatever was sent, unchanged TOAST included: nothing to resolve
                    if let Some(builder) = builders.get_mut(index) {
                        builder.append_null();
                    }
                    continue;
                }
                Intake::Drop => continue,
            };
            let (Some(builder), Some(column)) =
                (builders.get_mut(index), self.schema.columns.get(index))
            else {
                return Err(Error::Source {
                    message: format!(
                        "table {table} at LSN {lsn}: no column {index} in the table's shape"
                    ),
                });
            };
            let column = &column.name;
            match value {
                Value::Text(text) if hashed => {
                    let hash = self.hasher.as_ref().map(|h| h.hex(text));
                    // a hashed value's error says nothing of the value
                    builder
                        .append_text(hash.as_ref().map(|h| &h[..]))
                        .map_err(|_| Error::Source {
                            message: format!(
                                "table {table}, column {column} (hashed), at LSN {lsn}: the \
                                 hash could not be stored"
                            ),
                        })?
                }
                Value::Text(text) => {
                    builder.append_text(Some(text)).map_err(|e| Error::Source {
                        message: format!("table {table}, column {column}, at LSN {lsn}: {e}"),
                    })?
                }
                Value::Null => builder.append_null(),
                Value::UnchangedToast => {
                    builder.append_null();
                    if side == Side::New {
                        self.unchanged_toast
                            .push((row, u16::try_from(index).unwrap_or(u16::MAX)));
                    }
                }
                Value::Binary(_) => {
                    return Err(Error::Source {
                        message: format!(
                            "table {table}, column {column}, at LSN {lsn}: a binary value, but \
                             the stream was opened in text mode"
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    New,
    Old,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::schema::SourceColumn;

    fn column(name: &str, oid: u32, attnum: i16) -> SourceColumn {
        SourceColumn {
            name: name.into(),
            type_oid: Oid(oid),
            type_modifier: -1,
            not_null: false,
            type_name: String::new(),
            attnum,
        }
    }

    #[test]
    fn a_masked_shape_hashes_to_strings_keeps_redacted_types_and_leaves_dropped_out() -> Result<()>
    {
        let table = SourceTable {
            id: TableId::new("public", "customers"),
            oid: RelationId(1),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                column("id", 23, 1),
                column("email", 25, 2),
                column("ssn", 23, 3),
                column("notes", 25, 4),
            ],
            primary_key: vec!["id".into()],
            identity_index: Vec::new(),
            selectable: true,
        };
        let types = [PgType::Int4, PgType::Text, PgType::Int4, PgType::Text];
        let policies = BTreeMap::from([
            ("email".to_string(), ColumnPolicy::Hash),
            ("ssn".to_string(), ColumnPolicy::Redact),
            ("notes".to_string(), ColumnPolicy::Drop),
        ]);
        let (schema, intake) =
            TableSchema::from_catalog_masked(&table, &types, &TypeOptions::default(), &policies)?;
        assert_eq!(
            intake,
            vec![
                Intake::Value(0),
                Intake::Hash(1),
                Intake::Redact(2),
                Intake::Drop
            ]
        );
        let fields = schema.arrow.fields();
        assert_eq!(
            fields.len(),
            3,
            "a dropped column is not in the lake's shape"
        );
        assert_eq!(fields[1].data_type(), &DataType::Utf8);
        assert_eq!(fields[2].data_type(), &DataType::Int32);
        assert_eq!(
            fields[1]
                .metadata()
                .get(MASK_METADATA_KEY)
                .map(String::as_str),
            Some("hash")
        );
        assert_eq!(
            fields[2]
                .metadata()
                .get(MASK_METADATA_KEY)
                .map(String::as_str),
            Some("redact")
        );
        assert!(schema.columns[0].key);
        // a shape that hashes cannot be built into without the key
        let schema = Arc::new(schema);
        let intake: Arc<[Intake]> = intake.into();
        assert!(ChangeBuilder::masked(schema.clone(), intake.clone(), None, Lsn(1), 0).is_err());
        assert!(ChangeBuilder::masked(schema, intake, Some(Hasher::new(b"k")), Lsn(1), 0).is_ok());
        Ok(())
    }
}
