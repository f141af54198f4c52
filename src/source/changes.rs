//! A relation's decoded changes, appended straight from pgoutput's text values into Arrow
//! builders (no `String` per value), and handed on as [`ChangeBatch`]es: the new rows, the old
//! rows (key or whole, as the replica identity logs them), the operation of each row, and which
//! values are unchanged TOAST that the pipeline must resolve.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::Schema;

use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::source::pgoutput::{self, OldTuple, TupleData, Value};
use crate::source::schema::{ReplicaIdentity, SourceTable};
use crate::source::types::{ColumnBuilder, PgType, TypeOptions, arrow_field};
use crate::table::TableId;

pub use crate::table::{ChangeBatch, ColumnSchema, OldRow, Op, TableSchema};

impl TableSchema {
    /// Builds the schema of `relation`, with its column types resolved by `types`.
    pub fn from_relation(
        relation: &pgoutput::Relation<'_>,
        types: &[PgType],
        options: &TypeOptions,
    ) -> Result<TableSchema> {
        let table = TableId::new(relation.namespace, relation.name);
        let mut fields = Vec::with_capacity(relation.columns.len());
        let mut columns = Vec::with_capacity(relation.columns.len());
        for (column, pg_type) in relation.columns.iter().zip(types) {
            let field = arrow_field(column.name, pg_type, column.type_modifier, true, options)
                .map_err(|e| Error::Source {
                    message: format!("table {table}: {e}"),
                })?;
            fields.push(field);
            columns.push(ColumnSchema {
                name: column.name.to_string(),
                type_oid: column.type_oid,
                type_modifier: column.type_modifier,
                key: column.is_key(),
            });
        }
        let arrow = Arc::new(Schema::new(fields));
        Ok(TableSchema {
            relation: relation.id,
            replica_identity: relation.replica_identity,
            columns,
            arrow_nullable: arrow.clone(),
            arrow,
            table,
        })
    }

    /// Builds the schema of a table from the catalog, the way the stream's Relation message
    /// would describe it (key flags are the replica identity's columns), so a snapshot and the
    /// stream that follows agree on the shape.
    pub fn from_catalog(
        table: &SourceTable,
        types: &[PgType],
        options: &TypeOptions,
    ) -> Result<TableSchema> {
        let logged = table.logged_old_columns();
        let mut fields = Vec::with_capacity(table.columns.len());
        let mut columns = Vec::with_capacity(table.columns.len());
        for (column, pg_type) in table.columns.iter().zip(types) {
            fields.push(
                arrow_field(&column.name, pg_type, column.type_modifier, true, options).map_err(
                    |e| Error::Source {
                        message: format!("table {}: {e}", table.id),
                    },
                )?,
            );
            columns.push(ColumnSchema {
                name: column.name.clone(),
                type_oid: column.type_oid,
                type_modifier: column.type_modifier,
                key: logged.contains(&column.name),
            });
        }
        let arrow = Arc::new(Schema::new(fields));
        Ok(TableSchema {
            table: table.id.clone(),
            relation: table.oid,
            replica_identity: match table.replica_identity {
                ReplicaIdentity::Default => pgoutput::ReplicaIdentity::Default,
                ReplicaIdentity::Nothing => pgoutput::ReplicaIdentity::Nothing,
                ReplicaIdentity::Full => pgoutput::ReplicaIdentity::Full,
                ReplicaIdentity::Index => pgoutput::ReplicaIdentity::Index,
            },
            columns,
            arrow_nullable: arrow.clone(),
            arrow,
        })
    }
}

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
}

impl ChangeBuilder {
    /// An empty builder for `schema`, in the transaction committing at `commit_lsn`.
    pub fn new(schema: Arc<TableSchema>, commit_lsn: Lsn, first_position: u64) -> Result<Self> {
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
        if tuple.len() != self.schema.columns.len() {
            return Err(Error::Source {
                message: format!(
                    "table {table} at LSN {lsn}: a row of {} columns for a relation of {}",
                    tuple.len(),
                    self.schema.columns.len()
                ),
            });
        }
        let row = u32::try_from(self.ops.len()).unwrap_or(u32::MAX);
        let builders = match side {
            Side::New => &mut self.new,
            Side::Old => &mut self.old,
        };
        for (index, (value, builder)) in tuple.iter().zip(builders.iter_mut()).enumerate() {
            let column = &self.schema.columns[index].name;
            match value {
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
