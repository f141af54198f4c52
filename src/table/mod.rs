//! The table model, owned by no layer: [`TableId`], a source table's name (`schema.table`, the
//! key every per-table setting, buffer, checkpoint and lake table hangs on), and in `model`
//! its shape ([`TableSchema`], [`ColumnSchema`]) and its changes ([`ChangeBatch`], [`Op`],
//! [`OldRow`]).

use std::fmt;

mod copy;
mod model;

pub use copy::{ChunkCommit, CopyPace, CopyProgress, KeyRange, LatestChunkCommits, PACE_CHUNKS};

pub use model::{
    ChangeBatch, ColumnSchema, Oid, OldRow, Op, RelationId, ReplicaIdentity, TableSchema,
};

/// A table of the source database, by schema and name (case preserved, as in the catalog).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableId {
    /// The schema (namespace).
    pub schema: String,
    /// The table name.
    pub name: String,
}

impl TableId {
    /// `schema.name`.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        TableId {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// The name quoted for SQL: `"schema"."name"`, with embedded quotes doubled.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// Quotes an SQL identifier: `"name"`, with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal: `'text'`, with embedded quotes doubled.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

impl fmt::Debug for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TableId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_hostile_names() {
        let id = TableId::new("Sales", "order \"items\"");
        assert_eq!(id.to_string(), "Sales.order \"items\"");
        assert_eq!(id.quoted(), "\"Sales\".\"order \"\"items\"\"\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
