//! The table model every layer shares — what a replicated table *is* and what a change to
//! it carries — owned by none of them: the source builds it from PostgreSQL
//! (`source::changes`), the pipeline buffers and reduces it, the sinks write it.

use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};

use crate::lsn::Lsn;
use crate::table::TableId;

/// A PostgreSQL object id of a type (`pg_type.oid`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Oid(pub u32);

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Oid({})", self.0)
    }
}

/// A table's object id (`pg_class.oid`), as pgoutput's Relation messages name it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelationId(pub u32);

impl fmt::Display for RelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for RelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelationId({})", self.0)
    }
}

/// The replica identity of a table (`pg_class.relreplident`): which old values pgoutput sends
/// with updates and deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `d`: the primary key's columns.
    Default,
    /// `n`: nothing (updates and deletes cannot be replicated).
    Nothing,
    /// `f`: the whole old row.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// The setting named by its `relreplident` byte.
    pub fn from_byte(byte: u8) -> Option<ReplicaIdentity> {
        Some(match byte {
            b'd' => ReplicaIdentity::Default,
            b'n' => ReplicaIdentity::Nothing,
            b'f' => ReplicaIdentity::Full,
            b'i' => ReplicaIdentity::Index,
            _ => return None,
        })
    }

    /// The `relreplident` byte.
    pub fn byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }
}

/// One column of a replicated table, as the stream describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnSchema {
    /// Name.
    pub name: String,
    /// Type.
    pub type_oid: Oid,
    /// Type modifier, -1 when none.
    pub type_modifier: i32,
    /// Part of the replica identity (the key pgoutput marks).
    pub key: bool,
}

/// A replicated table's shape at some point of the stream: its columns and their Arrow types.
#[derive(Debug, Clone)]
pub struct TableSchema {
    /// The table.
    pub table: TableId,
    /// Its object id.
    pub relation: RelationId,
    /// What its UPDATE and DELETE records carry of the old row.
    pub replica_identity: ReplicaIdentity,
    /// Columns in table order.
    pub columns: Vec<ColumnSchema>,
    /// The Arrow schema of the rows. Every field is nullable: pgoutput does not say which
    /// columns are NOT NULL, and with `REPLICA IDENTITY FULL` it flags every column as key, so
    /// the lake table's required key columns are decided from the catalog, not from here.
    pub arrow: SchemaRef,
    /// The same fields all nullable: the layout of [`ChangeBatch::new`] and
    /// [`ChangeBatch::old`], where an absent row is all nulls.
    pub arrow_nullable: SchemaRef,
}

impl TableSchema {
    /// Whether `other` has the same columns, types and key: a Relation message that repeats the
    /// known shape (after a reconnect or a cache flush) is not a schema change.
    pub fn same_shape(&self, other: &TableSchema) -> bool {
        self.table == other.table
            && self.columns == other.columns
            && self.replica_identity == other.replica_identity
    }

    /// This shape plus the columns of `older` it no longer has (dropped, or renamed since: a
    /// rename reaches lakewriter as another column), so rows written in the older shape keep
    /// their values there. `None` when it has them all.
    pub fn with_columns_of(&self, older: &TableSchema) -> Option<TableSchema> {
        let missing: Vec<usize> = older
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| !self.columns.iter().any(|own| own.name == c.name))
            .map(|(i, _)| i)
            .collect();
        if missing.is_empty() {
            return None;
        }
        let mut columns = self.columns.clone();
        let mut fields: Vec<_> = self.arrow.fields().iter().cloned().collect();
        let mut nullable: Vec<_> = self.arrow_nullable.fields().iter().cloned().collect();
        for i in missing {
            let (Some(column), Some(field), Some(field_nullable)) = (
                older.columns.get(i),
                older.arrow.fields().get(i),
                older.arrow_nullable.fields().get(i),
            ) else {
                continue;
            };
            columns.push(ColumnSchema {
                key: false,
                ..column.clone()
            });
            fields.push(field.clone());
            nullable.push(field_nullable.clone());
        }
        Some(TableSchema {
            table: self.table.clone(),
            relation: self.relation,
            replica_identity: self.replica_identity,
            columns,
            arrow: Arc::new(Schema::new_with_metadata(
                fields,
                self.arrow.metadata().clone(),
            )),
            arrow_nullable: Arc::new(Schema::new_with_metadata(
                nullable,
                self.arrow_nullable.metadata().clone(),
            )),
        })
    }

    /// Indexes of the key columns.
    pub fn key_indices(&self) -> Vec<usize> {
        (0..self.columns.len())
            .filter(|&i| self.columns[i].key)
            .collect()
    }
}

/// What a change did to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// A new row.
    Insert,
    /// A changed row (maybe with a changed key: then the old key is in the old row).
    Update,
    /// A removed row.
    Delete,
}

impl Op {
    /// The letter DMS-style change logs use: I, U or D.
    pub fn letter(self) -> char {
        match self {
            Op::Insert => 'I',
            Op::Update => 'U',
            Op::Delete => 'D',
        }
    }
}

/// Which old values a change carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldRow {
    /// None: an insert, or an update that kept its key under the default replica identity.
    Absent,
    /// The replica identity's columns (the others are null).
    Key,
    /// The whole old row (`REPLICA IDENTITY FULL`).
    Full,
}

/// Consecutive changes of one table within one source transaction.
#[derive(Debug, Clone)]
pub struct ChangeBatch {
    /// The table and its shape when these changes were made.
    pub schema: Arc<TableSchema>,
    /// The source transaction's commit LSN (pgoutput's final LSN in Begin).
    pub commit_lsn: Lsn,
    /// Position of the first change among the transaction's changes (all tables together).
    pub first_position: u64,
    /// What each row's change did.
    pub ops: Vec<Op>,
    /// New rows (all null for deletes), in [`TableSchema::arrow_nullable`] layout.
    pub new: RecordBatch,
    /// Old rows (all null where absent), in [`TableSchema::arrow_nullable`] layout.
    pub old: RecordBatch,
    /// Which old values each change carries.
    pub old_rows: Vec<OldRow>,
    /// `(row, column)` of new values that are unchanged TOAST: the update did not send them,
    /// and they are null in `new` only as a placeholder the pipeline must fill.
    pub unchanged_toast: Vec<(u32, u16)>,
}

impl ChangeBatch {
    /// Number of changes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether it holds no change.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}
