//! What the source catalog says about the replicated tables: which tables the publication and
//! the config select, their columns, and the key that identifies a row (replica identity,
//! primary key, or the config's override).

use tokio_postgres::Client;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::source::{Oid, RelationId};
use crate::table::TableId;

/// A table's `REPLICA IDENTITY`: what its UPDATE and DELETE records carry of the old row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// The primary key's columns (or nothing, without a primary key).
    Default,
    /// Nothing: UPDATE and DELETE of a published table fail on the primary.
    Nothing,
    /// The whole old row.
    Full,
    /// The columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// From `pg_class.relreplident`.
    pub fn from_code(code: i8) -> Option<Self> {
        match code as u8 {
            b'd' => Some(ReplicaIdentity::Default),
            b'n' => Some(ReplicaIdentity::Nothing),
            b'f' => Some(ReplicaIdentity::Full),
            b'i' => Some(ReplicaIdentity::Index),
            _ => None,
        }
    }
}

/// One column of a source table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceColumn {
    /// Column name.
    pub name: String,
    /// Type.
    pub type_oid: Oid,
    /// Type modifier (`atttypmod`: length, precision and scale), -1 when none.
    pub type_modifier: i32,
    /// `NOT NULL`.
    pub not_null: bool,
    /// The type as PostgreSQL prints it (`numeric(10,2)`), for messages.
    pub type_name: String,
    /// Its number in the table (`attnum`): it stays when the column is renamed.
    pub attnum: i16,
}

/// A replicated table as the catalog describes it.
#[derive(Debug, Clone)]
pub struct SourceTable {
    /// Its name.
    pub id: TableId,
    /// Its object id.
    pub oid: RelationId,
    /// `REPLICA IDENTITY`.
    pub replica_identity: ReplicaIdentity,
    /// Published columns in order (generated columns are not published, so not listed).
    pub columns: Vec<SourceColumn>,
    /// Primary key columns, in key order; empty without one.
    pub primary_key: Vec<String>,
    /// Columns of the replica identity index (`REPLICA IDENTITY USING INDEX`), in order.
    pub identity_index: Vec<String>,
    /// Whether the connected role may SELECT it (the snapshot and verify need it).
    pub selectable: bool,
}

impl SourceTable {
    /// The columns that identify a row: the config's override, else the replica identity index,
    /// else the primary key. Empty when the table has none (only changelog mode can take it).
    pub fn key_columns(&self, config: &Config) -> Vec<String> {
        if let Some(key) = config
            .source
            .tables
            .get(&self.id.to_string())
            .and_then(|t| t.key.clone())
        {
            return key;
        }
        match self.replica_identity {
            ReplicaIdentity::Index => self.identity_index.clone(),
            _ => self.primary_key.clone(),
        }
    }

    /// The columns whose old values UPDATE and DELETE records carry.
    pub fn logged_old_columns(&self) -> Vec<String> {
        match self.replica_identity {
            ReplicaIdentity::Full => self.columns.iter().map(|c| c.name.clone()).collect(),
            ReplicaIdentity::Index => self.identity_index.clone(),
            ReplicaIdentity::Default => self.primary_key.clone(),
            ReplicaIdentity::Nothing => Vec::new(),
        }
    }

    /// The column called `name`.
    pub fn column(&self, name: &str) -> Option<&SourceColumn> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// The tables of `publication`, in name order.
pub async fn publication_tables(client: &Client, publication: &str) -> Result<Vec<TableId>> {
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables \
             WHERE pubname = $1 ORDER BY 1, 2",
            &[&publication],
        )
        .await
        .map_err(|e| Error::postgres(format!("list the tables of publication {publication}"), e))?;
    Ok(rows
        .iter()
        .map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect())
}

/// Ordinary and partitioned tables of the database outside the system schemas that the
/// config's include and exclude patterns select, in name order.
pub async fn selected_tables(client: &Client, config: &Config) -> Result<Vec<TableId>> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' \
             ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| Error::postgres("list the database's tables", e))?;
    Ok(rows
        .iter()
        .map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .filter(|t| config.includes_table(&t.schema, &t.name))
        .collect())
}

/// Describes `table` from the catalog; `Ok(None)` when it does not exist.
pub async fn describe_table(client: &Client, table: &TableId) -> Result<Option<SourceTable>> {
    let context = || format!("describe table {table}");
    let Some(row) = client
        .query_opt(
            "SELECT c.oid, c.relreplident, \
               has_table_privilege(c.oid, 'SELECT'), \
               array(SELECT a.attname::text FROM pg_index i \
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                     WHERE i.indrelid = c.oid AND i.indisprimary \
                     ORDER BY array_position(i.indkey::int2[], a.attnum)), \
               array(SELECT a.attname::text FROM pg_index i \
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                     WHERE i.indrelid = c.oid AND i.indisreplident \
                     ORDER BY array_position(i.indkey::int2[], a.attnum)) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(|e| Error::postgres(context(), e))?
    else {
        return Ok(None);
    };
    let oid: u32 = row.get(0);
    let code: i8 = row.get(1);
    let replica_identity = ReplicaIdentity::from_code(code).ok_or_else(|| Error::Source {
        message: format!("table {table}: unknown replica identity code {code}"),
    })?;
    let columns = client
        .query(
            "SELECT attname::text, atttypid, atttypmod, attnotnull, \
               format_type(atttypid, atttypmod), attnum \
             FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped \
               AND attgenerated = '' ORDER BY attnum",
            &[&oid],
        )
        .await
        .map_err(|e| Error::postgres(context(), e))?
        .iter()
        .map(|r| SourceColumn {
            name: r.get(0),
            type_oid: Oid(r.get(1)),
            type_modifier: r.get(2),
            not_null: r.get(3),
            type_name: r.get(4),
            attnum: r.get(5),
        })
        .collect();
    Ok(Some(SourceTable {
        id: table.clone(),
        oid: RelationId(oid),
        replica_identity,
        columns,
        selectable: row.get(2),
        primary_key: row.get(3),
        identity_index: row.get(4),
    }))
}

/// The source column a partition expression reads: `day(created_at)` → `created_at`,
/// `bucket(16, id)` → `id`, `status` → `status`.
pub fn partition_source_column(expression: &str) -> &str {
    let expression = expression.trim();
    match expression.split_once('(') {
        Some((_, args)) => {
            let args = args.trim_end().trim_end_matches(')');
            args.rsplit(',').next().unwrap_or(args).trim()
        }
        None => expression,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_expressions_name_their_column() {
        assert_eq!(partition_source_column("status"), "status");
        assert_eq!(partition_source_column("day(created_at)"), "created_at");
        assert_eq!(
            partition_source_column("bucket(16, customer_id)"),
            "customer_id"
        );
        assert_eq!(partition_source_column(" truncate(4,sku) "), "sku");
    }
}
