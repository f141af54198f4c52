//! The destination database of `export`: its connection, the state table that records the
//! lake version each destination table holds, and what a destination table looks like (its
//! columns and primary key), or how it is created from the lake's schema.

use arrow::datatypes::SchemaRef;
use tokio_postgres::{Client, GenericClient};

use super::copy_in::pg_type;
use crate::error::{Error, Result};
use crate::source::tls::{SourceTls, SslMode};
use crate::table::{TableId, quote_ident};

/// The schema of the state table.
pub const STATE_SCHEMA: &str = "lakewriter_export";

/// The state table: per lake table and destination table, the version last exported. It is
/// updated in the transaction that merges the rows, so the two never disagree.
pub const STATE_TABLE: &str = "lakewriter_export.state";

/// Opens a session on the destination `url` (a libpq URL or `key=value` string). A password
/// missing from it is taken from `PGPASSWORD`; `sslmode` is `disable`, `prefer` or `require`.
pub async fn connect(url: &str) -> Result<Client> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
        // the URL is not repeated: it may hold a password
        Error::config("--to", format!("the destination connection string: {e}"))
    })?;
    if config.get_password().is_none()
        && let Ok(password) = std::env::var("PGPASSWORD")
    {
        config.password(password);
    }
    config.application_name("lakewriter export");
    let mode = match config.get_ssl_mode() {
        tokio_postgres::config::SslMode::Disable => SslMode::Disable,
        tokio_postgres::config::SslMode::Require => SslMode::Require,
        _ => SslMode::Prefer,
    };
    let tls = SourceTls::new(mode, None, None)?;
    config.ssl_mode(tls.pg_mode());
    let target = describe(&config);
    let (client, connection) = config
        .connect(tls.connector())
        .await
        .map_err(|e| Error::postgres(format!("connect to the destination {target}"), e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(target = %target, error = %e, "destination connection closed");
        }
    });
    Ok(client)
}

/// `user@host:port/database` of a connection, without its password.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_string(),
    };
    format!(
        "{}@{host}:{}/{}",
        config.get_user().unwrap_or(""),
        config.get_ports().first().copied().unwrap_or(5432),
        config.get_dbname().unwrap_or("")
    )
}

/// Creates the state table when it is missing (a role that may not create schemas can
/// export once it exists).
pub async fn ensure_state_table(client: &Client) -> Result<()> {
    let exists: bool = client
        .query_one(
            &format!("SELECT to_regclass('{STATE_TABLE}') IS NOT NULL"),
            &[],
        )
        .await
        .map_err(|e| Error::postgres(format!("look for the state table {STATE_TABLE}"), e))?
        .get(0);
    if exists {
        return Ok(());
    }
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {STATE_SCHEMA};
             CREATE TABLE IF NOT EXISTS {STATE_TABLE} (
                 lake_table    text        NOT NULL,
                 destination   text        NOT NULL,
                 format        text        NOT NULL,
                 version       bigint      NOT NULL,
                 version_time  timestamptz NOT NULL,
                 rows_upserted bigint      NOT NULL,
                 rows_deleted  bigint      NOT NULL,
                 rows_changed  bigint      NOT NULL,
                 exported_at   timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (lake_table, destination)
             )"
        ))
        .await
        .map_err(|e| Error::postgres(format!("create the state table {STATE_TABLE}"), e))
}

/// The version of `lake_table` last exported into `destination`, if any.
pub async fn exported(
    client: &impl GenericClient,
    lake_table: &str,
    destination: &str,
) -> Result<Option<i64>> {
    let row = client
        .query_opt(
            &format!(
                "SELECT version FROM {STATE_TABLE} WHERE lake_table = $1 AND destination = $2"
            ),
            &[&lake_table, &destination],
        )
        .await
        .map_err(|e| Error::postgres(format!("read {STATE_TABLE}"), e))?;
    Ok(row.map(|r| r.get(0)))
}

/// One row of the state table: what a destination table holds of a lake table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportRecord {
    /// The lake table (`namespace.table`).
    pub lake_table: String,
    /// The destination table (`schema.table`).
    pub destination: String,
    /// `iceberg` or `delta`.
    pub format: String,
    /// The Iceberg snapshot id or Delta version exported.
    pub version: i64,
    /// When that version was committed (UTC).
    pub version_time: String,
    /// When it was exported (UTC).
    pub exported_at: String,
    /// Seconds since it was exported.
    pub age_seconds: i64,
    /// The last export's rows upserted.
    pub rows_upserted: i64,
    /// The last export's keys deleted.
    pub rows_deleted: i64,
    /// The last export's destination rows changed.
    pub rows_changed: i64,
}

/// Every row of the state table (none when it does not exist yet).
pub async fn records(client: &Client) -> Result<Vec<ExportRecord>> {
    let context = || format!("read {STATE_TABLE}");
    let exists: bool = client
        .query_one(
            &format!("SELECT to_regclass('{STATE_TABLE}') IS NOT NULL"),
            &[],
        )
        .await
        .map_err(|e| Error::postgres(context(), e))?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let time = |column: &str| {
        format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')")
    };
    let rows = client
        .query(
            &format!(
                "SELECT lake_table, destination, format, version, {}, {}, \
                   extract(epoch FROM now() - exported_at)::bigint, rows_upserted, \
                   rows_deleted, rows_changed FROM {STATE_TABLE} ORDER BY lake_table, destination",
                time("version_time"),
                time("exported_at")
            ),
            &[],
        )
        .await
        .map_err(|e| Error::postgres(context(), e))?;
    Ok(rows
        .iter()
        .map(|r| ExportRecord {
            lake_table: r.get(0),
            destination: r.get(1),
            format: r.get(2),
            version: r.get(3),
            version_time: r.get(4),
            exported_at: r.get(5),
            age_seconds: r.get(6),
            rows_upserted: r.get(7),
            rows_deleted: r.get(8),
            rows_changed: r.get(9),
        })
        .collect())
}

/// What one export applied, as recorded in the state table.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Applied {
    /// Seconds spent copying rows into PostgreSQL (reading the lake, encoding, COPY).
    pub copy_seconds: f64,
    /// Seconds spent in the merge statements after the copy.
    pub merge_seconds: f64,
    /// Rows of touched keys written (inserted, updated, or found equal).
    pub upserted: u64,
    /// Keys deleted from the destination.
    pub deleted: u64,
    /// Destination rows that changed: inserted, updated (they differed from the lake), deleted.
    pub changed: u64,
}

/// Records `version` (committed at `committed_at_ms`) as exported, in the merge's transaction.
pub async fn record(
    client: &impl GenericClient,
    lake_table: &str,
    destination: &str,
    format: &str,
    version: i64,
    committed_at_ms: i64,
    applied: Applied,
) -> Result<()> {
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    client
        .execute(
            &format!(
                "INSERT INTO {STATE_TABLE} (lake_table, destination, format, version, \
                   version_time, rows_upserted, rows_deleted, rows_changed) \
                 VALUES ($1, $2, $3, $4, to_timestamp($5::bigint / 1000.0), $6, $7, $8) \
                 ON CONFLICT (lake_table, destination) DO UPDATE SET format = EXCLUDED.format, \
                   version = EXCLUDED.version, version_time = EXCLUDED.version_time, \
                   rows_upserted = EXCLUDED.rows_upserted, rows_deleted = EXCLUDED.rows_deleted, \
                   rows_changed = EXCLUDED.rows_changed, exported_at = now()"
            ),
            &[
                &lake_table,
                &destination,
                &format,
                &version,
                &committed_at_ms,
                &count(applied.upserted),
                &count(applied.deleted),
                &count(applied.changed),
            ],
        )
        .await
        .map_err(|e| Error::postgres(format!("record the export in {STATE_TABLE}"), e))?;
    Ok(())
}

/// A column of a destination table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationColumn {
    /// Its name.
    pub name: String,
    /// Its type as `format_type` prints it (`numeric(10,2)`, `timestamp with time zone`).
    pub type_name: String,
}

/// A destination table's columns (in table order) and primary key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationTable {
    /// Its columns.
    pub columns: Vec<DestinationColumn>,
    /// Its primary key's columns, in the key's order; empty without one.
    pub key: Vec<String>,
}

impl DestinationTable {
    /// The column `name`.
    pub fn column(&self, name: &str) -> Option<&DestinationColumn> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// The destination table `table`, or `None` when it does not exist.
pub async fn describe_table(
    client: &impl GenericClient,
    table: &TableId,
) -> Result<Option<DestinationTable>> {
    let context = || format!("describe the destination table {table}");
    let Some(row) = client
        .query_opt("SELECT to_regclass($1)::oid", &[&table.quoted()])
        .await
        .map_err(|e| Error::postgres(context(), e))?
    else {
        return Ok(None);
    };
    let Some(oid): Option<u32> = row.get(0) else {
        return Ok(None);
    };
    let columns = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&oid],
        )
        .await
        .map_err(|e| Error::postgres(context(), e))?
        .iter()
        .map(|r| DestinationColumn {
            name: r.get(0),
            type_name: r.get(1),
        })
        .collect();
    let key = client
        .query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = $1 AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&oid],
        )
        .await
        .map_err(|e| Error::postgres(context(), e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(Some(DestinationTable { columns, key }))
}

/// The `CREATE TABLE` of a destination table for lake rows of `schema` with `key`: each
/// column in the PostgreSQL type its lake type maps back to, the key as the primary key.
pub fn create_table_sql(table: &TableId, schema: &SchemaRef, key: &[String]) -> Result<String> {
    let mut lines = Vec::new();
    for field in schema.fields() {
        let pg = pg_type(field.data_type()).ok_or_else(|| Error::Export {
            table: table.to_string(),
            message: format!(
                "column {}: the lake type {} has no PostgreSQL type here",
                field.name(),
                field.data_type()
            ),
        })?;
        let not_null = if field.is_nullable() { "" } else { " NOT NULL" };
        lines.push(format!(
            "{} {}{not_null}",
            quote_ident(field.name()),
            pg.name
        ));
    }
    let key: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
    lines.push(format!("PRIMARY KEY ({})", key.join(", ")));
    Ok(format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};\nCREATE TABLE {table} (\n    {}\n)",
        lines.join(",\n    "),
        schema = quote_ident(&table.schema),
        table = table.quoted()
    ))
}

/// Checks that `destination` can take the rows of a lake table with `schema` and `key`: every
/// lake column is one of its columns, and its primary key is the lake's key.
pub fn check_table(
    table: &TableId,
    destination: &DestinationTable,
    schema: &SchemaRef,
    key: &[String],
) -> Result<()> {
    let fail = |message: String| {
        Err(Error::Export {
            table: table.to_string(),
            message,
        })
    };
    for field in schema.fields() {
        if destination.column(field.name()).is_none() {
            return fail(format!(
                "the lake column {} is not a column of the destination table (add it, or \
                 export into another table)",
                field.name()
            ));
        }
    }
    let mut theirs: Vec<&str> = destination.key.iter().map(String::as_str).collect();
    let mut ours: Vec<&str> = key.iter().map(String::as_str).collect();
    theirs.sort_unstable();
    ours.sort_unstable();
    if theirs != ours {
        let have = if theirs.is_empty() {
            "has no primary key".to_string()
        } else {
            format!("has the primary key ({})", destination.key.join(", "))
        };
        return fail(format!(
            "the destination table {have}, the lake table's key is ({}): export merges on it, \
             so it must be the primary key",
            key.join(", ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("amount", DataType::Decimal128(10, 2), true),
        ]))
    }

    fn column(name: &str, type_name: &str) -> DestinationColumn {
        DestinationColumn {
            name: name.into(),
            type_name: type_name.into(),
        }
    }

    #[test]
    fn a_created_table_has_the_key_as_primary_key() -> Result<()> {
        let sql = create_table_sql(&TableId::new("app", "Orders"), &schema(), &["id".into()])?;
        assert!(sql.contains("CREATE TABLE \"app\".\"Orders\""), "{sql}");
        assert!(sql.contains("\"id\" bigint NOT NULL"), "{sql}");
        assert!(sql.contains("\"amount\" numeric(10,2),"), "{sql}");
        assert!(sql.contains("PRIMARY KEY (\"id\")"), "{sql}");
        Ok(())
    }

    #[test]
    fn mismatches_name_the_table_and_column() {
        let table = TableId::new("app", "orders");
        let missing = DestinationTable {
            columns: vec![column("id", "bigint")],
            key: vec!["id".into()],
        };
        let err = check_table(&table, &missing, &schema(), &["id".into()]).expect_err("a column");
        assert!(err.to_string().contains("app.orders"), "{err}");
        assert!(err.to_string().contains("amount"), "{err}");
        let keyless = DestinationTable {
            columns: vec![column("id", "bigint"), column("amount", "numeric")],
            key: vec![],
        };
        let err = check_table(&table, &keyless, &schema(), &["id".into()]).expect_err("a key");
        assert!(err.to_string().contains("no primary key"), "{err}");
    }
}
