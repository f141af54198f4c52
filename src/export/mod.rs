//! `lakewriter export`: lake tables back into PostgreSQL, incrementally and exactly once.
//!
//! A destination table holds a lake table as of one version (an Iceberg snapshot, a Delta
//! version), recorded in the destination's state table ([`destination::STATE_TABLE`]). A run
//! reads what changed since that version ([`crate::lake::changes`]: the live rows of the keys
//! touched since, and the touched keys that are gone), and in ONE destination transaction
//! copies them into a staging table, merges them ([`merge`]) and records the new version.
//! Killed anywhere, the transaction leaves nothing; run again, it starts from the recorded
//! version, so nothing is applied twice and nothing is missed.
//!
//! - [`destination`]: the connection, the state table, destination tables and their checks;
//! - [`merge`]: staging by binary COPY and the set-based merge;
//! - [`copy_in`]: Arrow to PostgreSQL's binary COPY format, and the types it maps back to.

pub mod copy_in;
pub mod destination;
pub mod merge;

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::config::{Config, TableFormat, TableMode};
use crate::error::{Error, Result};
use crate::lake;
use crate::progress::Progress;
use crate::sink::iceberg::lake_table;
use crate::table::TableId;

/// A lake table to export and the destination table it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMapping {
    /// The lake table, by its source table's name (`schema.table`), as the config names it.
    pub source: TableId,
    /// The destination table (`schema.table`); by default the source's name.
    pub destination: TableId,
}

impl FromStr for TableMapping {
    type Err = String;

    /// `schema.table`, or `schema.table=destination_schema.destination_table`.
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let parse = |name: &str| {
            name.split_once('.')
                .filter(|(s, t)| !s.is_empty() && !t.is_empty())
                .map(|(s, t)| TableId::new(s, t))
                .ok_or_else(|| format!("{name:?}: name a table as schema.table"))
        };
        let (source, destination) = match text.split_once('=') {
            Some((source, destination)) => (parse(source)?, parse(destination)?),
            None => {
                let source = parse(text)?;
                (source.clone(), source)
            }
        };
        Ok(TableMapping {
            source,
            destination,
        })
    }
}

/// What `export` does.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The tables, exported one after the other.
    pub tables: Vec<TableMapping>,
    /// The destination connection string (libpq URL or `key=value` pairs); it may hold a
    /// password, so it never prints.
    pub destination: crate::config::Secret,
    /// Export every row, whatever the state table says (after an expired snapshot, or to
    /// repair a destination changed by someone else).
    pub full: bool,
    /// Export the table as it was at this version or time, into destination tables that do
    /// not exist yet (a restore); recorded, so a later export brings them forward.
    pub as_of: Option<lake::AsOf>,
}

/// What one table's export did.
#[derive(Debug, Clone)]
pub struct TableExport {
    /// The source table name of the lake table.
    pub source: TableId,
    /// The destination table.
    pub destination: TableId,
    /// The version exported before, if any.
    pub previous: Option<i64>,
    /// The version the destination now holds.
    pub version: i64,
    /// The table was created by this run.
    pub created: bool,
    /// The merge's counts (all zero when the destination was up to date).
    pub applied: destination::Applied,
    /// Wall time.
    pub elapsed: Duration,
    /// Wall time until the destination transaction began: reading the lake's metadata and
    /// planning what changed.
    pub plan_seconds: f64,
}

impl fmt::Display for TableExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.previous == Some(self.version) && self.applied.upserted == 0 {
            "up to date".to_string()
        } else {
            match self.previous {
                Some(previous) => format!("{previous} -> {}", self.version),
                None => format!("full copy of {}", self.version),
            }
        };
        write!(
            f,
            "{} -> {}{}: {what}: {} rows upserted, {} deleted, {} destination rows changed ({:.1}s)",
            self.source,
            self.destination,
            if self.created { " (created)" } else { "" },
            self.applied.upserted,
            self.applied.deleted,
            self.applied.changed,
            self.elapsed.as_secs_f64()
        )
    }
}

/// Exports each table of `options` once, in order; stops at the first table that fails
/// (the ones before it are committed).
pub async fn run(config: &Config, options: &ExportOptions) -> Result<Vec<TableExport>> {
    let mut client = destination::connect(options.destination.expose()).await?;
    destination::ensure_state_table(&client).await?;
    let progress = Progress::new(config.metrics.progress_interval.get());
    let mut done = Vec::new();
    for mapping in &options.tables {
        let export = export_table(config, &mut client, mapping, options, &progress).await?;
        tracing::info!(
            table = %export.source,
            destination = %export.destination,
            version = export.version,
            upserted = export.applied.upserted,
            deleted = export.applied.deleted,
            changed = export.applied.changed,
            plan_seconds = export.plan_seconds,
            copy_seconds = export.applied.copy_seconds,
            merge_seconds = export.applied.merge_seconds,
            seconds = export.elapsed.as_secs_f64(),
            "exported"
        );
        done.push(export);
    }
    Ok(done)
}

/// Exports one table in one destination transaction.
async fn export_table(
    config: &Config,
    client: &mut tokio_postgres::Client,
    mapping: &TableMapping,
    options: &ExportOptions,
    progress: &Progress,
) -> Result<TableExport> {
    let started = Instant::now();
    let lake_name = lake_table(&config.sink.namespace, &mapping.source);
    let (lake_key, destination) = (lake_name.to_string(), mapping.destination.to_string());
    let previous = destination::exported(client, &lake_key, &destination).await?;
    let since = match (options.full, options.as_of) {
        (false, None) => previous,
        _ => None,
    };
    let table_config = config.source.tables.get(&mapping.source.to_string());
    if table_config.is_some_and(|t| t.mode == TableMode::Changelog) {
        return Err(Error::Sink {
            table: lake_key,
            message: "a changelog table holds every change as a row of its own: it has no key \
                      to merge on, and is not exported"
                .into(),
            retryable: false,
        });
    }
    let delta_key = match config.sink.format {
        TableFormat::Iceberg => Vec::new(),
        TableFormat::Delta => delta_key(config, &mapping.source).await?,
    };
    let read = match (options.as_of, since) {
        (Some(as_of), _) => lake::ReadFrom::AsOf(as_of),
        (None, Some(since)) => lake::ReadFrom::Since(since),
        (None, None) => lake::ReadFrom::Everything,
    };
    let changes = lake::changes(config, &lake_name, read, &delta_key).await?;
    let Some(version) = changes.version else {
        return Err(Error::Sink {
            table: lake_key,
            message: "the table has no snapshot yet: nothing to export".into(),
            retryable: true,
        });
    };
    let format = match config.sink.format {
        TableFormat::Iceberg => "iceberg",
        TableFormat::Delta => "delta",
    };
    if since == Some(version.id) {
        return Ok(TableExport {
            source: mapping.source.clone(),
            destination: mapping.destination.clone(),
            previous,
            version: version.id,
            created: false,
            applied: Default::default(),
            elapsed: started.elapsed(),
            plan_seconds: started.elapsed().as_secs_f64(),
        });
    }
    let plan_seconds = started.elapsed().as_secs_f64();
    let postgres = |what: &str, e| Error::postgres(format!("export into {destination}: {what}"), e);
    let tx = client
        .transaction()
        .await
        .map_err(|e| postgres("begin", e))?;
    // one export of a lake table into a destination table at a time; the state read before
    // the lock must still hold under it
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 7411))",
        &[&format!("{lake_key} {destination}")],
    )
    .await
    .map_err(|e| postgres("take the export lock", e))?;
    let locked = destination::exported(&tx, &lake_key, &destination).await?;
    if locked != previous {
        return Err(Error::Sink {
            table: lake_key,
            message: format!(
                "another export into {destination} committed meanwhile (version {locked:?}); \
                 run again"
            ),
            retryable: true,
        });
    }
    let (shape, created) = match destination::describe_table(&tx, &mapping.destination).await? {
        Some(_) if options.as_of.is_some() => {
            return Err(Error::Export {
                table: destination,
                message: "--as-of restores into a table that does not exist yet, and this one \
                          does: name another destination (schema.table=restore.table)"
                    .into(),
            });
        }
        Some(shape) => (shape, false),
        None => {
            let sql = destination::create_table_sql(
                &mapping.destination,
                &changes.table.schema,
                &changes.table.key,
            )?;
            tx.batch_execute(&sql)
                .await
                .map_err(|e| postgres("create the table", e))?;
            let shape = destination::describe_table(&tx, &mapping.destination)
                .await?
                .ok_or_else(|| Error::Export {
                    table: destination.clone(),
                    message: "the table just created is not there".into(),
                })?;
            (shape, true)
        }
    };
    if created && changes.gone.is_some() {
        // only the changes would go into an empty table
        return Err(Error::Export {
            table: destination,
            message: format!(
                "the table is gone, though {STATE} records version {previous:?} exported into \
                 it: run the export again with --full to copy the whole table",
                STATE = destination::STATE_TABLE
            ),
        });
    }
    destination::check_table(
        &mapping.destination,
        &shape,
        &changes.table.schema,
        &changes.table.key,
    )?;
    // a whole table into an empty one whose types are the lake's: straight in, no staging
    let direct = changes.gone.is_none()
        && same_types(&shape, &changes.table.schema)
        && (created
            || !tx
                .query_one(
                    &format!(
                        "SELECT EXISTS (SELECT 1 FROM {})",
                        mapping.destination.quoted()
                    ),
                    &[],
                )
                .await
                .map_err(|e| postgres("look for rows", e))?
                .get::<_, bool>(0));
    let table_progress = progress.table("export", &destination, None);
    let applied = merge::apply(
        &tx,
        &mapping.destination,
        &shape,
        &changes,
        direct,
        &table_progress,
    )
    .await?;
    destination::record(
        &tx,
        &lake_key,
        &destination,
        format,
        version.id,
        version.committed_at_ms,
        applied,
    )
    .await?;
    merge::crash_point("recorded");
    tx.commit().await.map_err(|e| postgres("commit", e))?;
    table_progress.finish();
    Ok(TableExport {
        source: mapping.source.clone(),
        destination: mapping.destination.clone(),
        previous,
        version: version.id,
        created,
        applied,
        elapsed: started.elapsed(),
        plan_seconds,
    })
}

/// The key of a Delta table, which carries none: the one the writer merged on, from
/// `[source.tables."schema.table"] key` or else the source table's primary key (or replica
/// identity index).
async fn delta_key(config: &Config, source: &TableId) -> Result<Vec<String>> {
    if let Some(key) = config
        .source
        .tables
        .get(&source.to_string())
        .and_then(|t| t.key.clone())
    {
        return Ok(key);
    }
    let hint = format!(
        "a Delta table has no key of its own; export takes the source table's, or \
         [source.tables.\"{source}\"] key = [...]"
    );
    let client = crate::source::connection::connect(&config.source)
        .await
        .map_err(|e| Error::Sink {
            table: source.to_string(),
            message: format!("{hint}: cannot read it from the source: {e}"),
            retryable: e.is_retryable(),
        })?;
    let key = match crate::source::schema::describe_table(&client, source).await? {
        Some(described) => described.key_columns(config),
        None => Vec::new(),
    };
    if key.is_empty() {
        return Err(Error::Sink {
            table: source.to_string(),
            message: format!("{hint}: the source table has none"),
            retryable: false,
        });
    }
    Ok(key)
}

/// Whether every lake column's destination column has exactly the type the lake's maps to.
fn same_types(shape: &destination::DestinationTable, schema: &arrow::datatypes::SchemaRef) -> bool {
    schema.fields().iter().all(|field| {
        let ours = copy_in::pg_type(field.data_type());
        match (shape.column(field.name()), ours) {
            (Some(column), Some(ours)) => column.type_name == ours.name,
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapping_names_its_destination_or_defaults_to_the_source() {
        let plain: TableMapping = "public.orders".parse().expect("a table");
        assert_eq!(plain.destination, TableId::new("public", "orders"));
        let renamed: TableMapping = "public.orders=archive.orders_copy".parse().expect("two");
        assert_eq!(renamed.source, TableId::new("public", "orders"));
        assert_eq!(renamed.destination, TableId::new("archive", "orders_copy"));
        assert!("orders".parse::<TableMapping>().is_err());
        assert!("public.orders=".parse::<TableMapping>().is_err());
    }
}
