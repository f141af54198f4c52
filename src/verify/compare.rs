//! `lakewriter verify`: proof, row by row, that each lake table equals its PostgreSQL table.
//!
//! Both sides are reduced to one hash per key over every column, in one canonical encoding:
//! the lake read through [`super::lake`] (merge-on-read), PostgreSQL read with COPY into Arrow
//! by the snapshot code, each column cast to the lake column's type, and both encoded with
//! Arrow's row format (equal values encode equally, nulls included). The lake side is kept as
//! a map from the key's 64-bit hash to the row's (16 bytes a row, plus the map's overhead);
//! the PostgreSQL side streams through it, and the lake is read a second time only to name
//! extra keys when there are some.
//!
//! Against a running writer it first waits until the slot has acknowledged the source's
//! current position, so every transaction committed before `verify` started is in the lake.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Schema};
use arrow::row::{OwnedRow, RowConverter, Rows, SortField};
use arrow::util::display::array_value_to_string;
use datafusion::prelude::{DataFrame, SessionContext};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::catalog::CatalogTable;
use crate::config::{Config, TableMode};
use crate::error::{Error, Result};
use crate::lake;
use crate::lsn::Lsn;
use crate::masking::Masking;
use crate::sink::delta::types::convert;
use crate::sink::iceberg::lake_table;
use crate::source::snapshot::{self, CopySettings, ExportedSnapshot, SnapshotRows};
use crate::source::{connection, schema};
use crate::table::TableId;

/// How long `verify` waits for a running writer to catch up with the source.
const CATCH_UP: Duration = Duration::from_secs(120);
/// Example keys shown per kind of difference.
const EXAMPLES: usize = 10;

/// What `verify` found for one table.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// The source table.
    pub source: String,
    /// The lake table.
    pub lake: String,
    /// Whether they hold the same rows.
    pub equal: bool,
    /// Rows in PostgreSQL.
    pub source_rows: u64,
    /// Rows in the lake.
    pub lake_rows: u64,
    /// Keys in PostgreSQL and not in the lake.
    pub missing: u64,
    /// Keys in the lake and not in PostgreSQL.
    pub extra: u64,
    /// Keys in both whose rows differ.
    pub different: u64,
    /// Up to ten keys of each kind.
    pub missing_keys: Vec<String>,
    /// Up to ten extra keys.
    pub extra_keys: Vec<String>,
    /// Up to ten keys whose rows differ.
    pub different_keys: Vec<String>,
    /// Why the table could not be compared, or what was left out (a source column the lake
    /// lacks).
    pub note: Option<String>,
}

/// Compares every lake table of the config (or only `only`, a source `schema.table`) with
/// PostgreSQL and prints the report; `Ok(true)` when all are equal.
pub async fn run(config: &Config, only: Option<&str>, json: bool) -> Result<bool> {
    // the source side is masked as the writer masks it, so the lake's masked values compare
    let masking = Masking::from_config(config)?;
    let client = connection::connect(&config.source).await?;
    let tables: Vec<TableId> = match only {
        Some(name) => vec![parse_table(name)?],
        None => schema::selected_tables(&client, config).await?,
    };
    wait_for_writer(config, &client).await?;
    let mut reports = Vec::new();
    for table in tables {
        let report = compare_table(config, &client, &table, &masking).await?;
        if !json {
            print_report(&report);
        }
        reports.push(report);
    }
    if json {
        let text = serde_json::to_string_pretty(&reports).map_err(|e| Error::Io {
            path: "stdout".into(),
            source: std::io::Error::other(e),
        })?;
        println!("{text}");
    }
    Ok(reports.iter().all(|r| r.equal))
}

fn parse_table(name: &str) -> Result<TableId> {
    let (schema, table) = name.split_once('.').unwrap_or(("public", name));
    if table.is_empty() || schema.is_empty() {
        return Err(Error::config(
            "--table",
            format!("{name:?}: name a source table as schema.table"),
        ));
    }
    Ok(TableId::new(schema, table))
}

/// Waits until the slot has acknowledged the source's current position (when a writer is
/// streaming from it); warns when the slot is idle and behind.
async fn wait_for_writer(config: &Config, client: &tokio_postgres::Client) -> Result<()> {
    let current: Lsn = lsn_query(client, "SELECT pg_current_wal_lsn()::text", &[]).await?;
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let row = client
            .query_opt(
                "SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[&config.source.slot],
            )
            .await
            .map_err(|e| Error::postgres("read the slot", e))?;
        let Some(row) = row else {
            return Ok(());
        };
        let confirmed: Option<Lsn> = row.get::<_, Option<String>>(0).and_then(|t| t.parse().ok());
        let active: bool = row.get::<_, Option<bool>>(1).unwrap_or(false);
        if confirmed.is_some_and(|c| c >= current) {
            return Ok(());
        }
        if !active {
            tracing::warn!(
                slot = %config.source.slot,
                confirmed = ?confirmed.map(|c| c.to_string()),
                source = %current,
                behind_bytes = confirmed.map(|c| current.bytes_since(c)),
                "no writer is streaming from the slot, and the source's WAL has moved past its \
                 position: changes made since then are not in the lake"
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                source = %current,
                "the writer did not catch up within {}s: comparing anyway",
                CATCH_UP.as_secs()
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn lsn_query(
    client: &tokio_postgres::Client,
    query: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Lsn> {
    let text: String = client
        .query_one(query, params)
        .await
        .map_err(|e| Error::postgres("read the server's position", e))?
        .get(0);
    text.parse().map_err(|e| Error::Source {
        message: format!("the server's position {text:?}: {e}"),
    })
}

/// Where one side's compared columns are, and the encoders both sides share (rows of one
/// encoder compare only with rows of the same encoder).
struct Side<'a> {
    key_columns: &'a [usize],
    compared: Vec<(usize, DataType)>,
    keys: &'a RowConverter,
    rows: &'a RowConverter,
}

impl Side<'_> {
    /// For `batch`, whose columns are found at the given indexes and cast to the given
    /// types: its keys (encoded), and for each row the hash of its key and the hash of its
    /// compared columns.
    fn hashes(&self, batch: &RecordBatch) -> std::result::Result<(Rows, Vec<(u64, u64)>), String> {
        let pick = |columns: &[(usize, DataType)]| -> std::result::Result<Vec<ArrayRef>, String> {
            columns
                .iter()
                .map(|(i, to)| {
                    let column = batch
                        .columns()
                        .get(*i)
                        .ok_or_else(|| format!("column {i} is missing from a batch"))?;
                    // as the Delta sink stores them: UUIDs as their text, lists item by item
                    convert(column, to)
                })
                .collect()
        };
        let key_types: Vec<(usize, DataType)> = self
            .key_columns
            .iter()
            .map(|&k| (self.compared[k].0, self.compared[k].1.clone()))
            .collect();
        let keys = self
            .keys
            .convert_columns(&pick(&key_types)?)
            .map_err(|e| e.to_string())?;
        let rows = self
            .rows
            .convert_columns(&pick(&self.compared)?)
            .map_err(|e| e.to_string())?;
        let hashes = (0..batch.num_rows())
            .map(|i| (hash(keys.row(i).as_ref()), hash(rows.row(i).as_ref())))
            .collect();
        Ok((keys, hashes))
    }
}

/// A 64-bit hash of an encoded row (keys are told apart by it: two of ten million keys
/// collide with a chance of about one in a million).
fn hash(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    hasher.write(bytes);
    hasher.finish()
}

async fn compare_table(
    config: &Config,
    client: &tokio_postgres::Client,
    table: &TableId,
    masking: &Arc<Masking>,
) -> Result<TableReport> {
    let copy_settings = CopySettings {
        masking: masking.clone(),
        ..CopySettings::default()
    };
    let lake_name = lake_table(&config.sink.namespace, table);
    let mut report = TableReport {
        source: table.to_string(),
        lake: lake_name.to_string(),
        equal: false,
        source_rows: 0,
        lake_rows: 0,
        missing: 0,
        extra: 0,
        different: 0,
        missing_keys: Vec::new(),
        extra_keys: Vec::new(),
        different_keys: Vec::new(),
        note: None,
    };
    let mode = config
        .source
        .tables
        .get(&table.to_string())
        .map(|t| t.mode)
        .unwrap_or_default();
    let Some(described) = schema::describe_table(client, table).await? else {
        report.note = Some("no such table in PostgreSQL".into());
        return Ok(report);
    };
    let source_schema =
        snapshot::masked_table_schema(client, &described, &copy_settings.type_options, masking)
            .await?;
    let key = described.key_columns(config);
    let (ctx, tables) = match lake::session(config, Some(&lake_name)).await {
        Ok(found) => found,
        Err(e) => {
            report.note = Some(format!("cannot read the lake table: {e}"));
            return Ok(report);
        }
    };
    let Some(lake_info) = tables.first() else {
        report.note = Some("no such table in the lake".into());
        return Ok(report);
    };
    // the columns both sides hold, in the source's order, typed as the lake types them
    let lake_schema = lake_info.schema.clone();
    let mut compared = Vec::new();
    let mut source_index = Vec::new();
    let mut left_out = Vec::new();
    for (i, field) in source_schema.arrow.fields().iter().enumerate() {
        match lake_schema.index_of(field.name()) {
            Ok(l) => {
                compared.push((l, lake_schema.field(l).data_type().clone()));
                source_index.push((i, lake_schema.field(l).data_type().clone()));
            }
            Err(_) => left_out.push(field.name().clone()),
        }
    }
    if !left_out.is_empty() {
        report.note = Some(format!(
            "source columns not in the lake, not compared: {}",
            left_out.join(", ")
        ));
    }
    let key_positions: Vec<usize> = key
        .iter()
        .map(|k| {
            source_schema
                .arrow
                .fields()
                .iter()
                .enumerate()
                .filter(|(i, _)| source_index.iter().any(|(s, _)| s == i))
                .position(|(_, f)| f.name() == k)
                .ok_or_else(|| Error::Source {
                    message: format!("table {table}: key column {k} is not in both sides"),
                })
        })
        .collect::<Result<_>>()?;
    let encoder = |types: Vec<DataType>| {
        RowConverter::new(types.into_iter().map(SortField::new).collect())
            .map_err(|e| verify_error(table, e.to_string()))
    };
    let keys = encoder(
        key_positions
            .iter()
            .map(|&k| compared[k].1.clone())
            .collect(),
    )?;
    let rows = encoder(compared.iter().map(|(_, t)| t.clone()).collect())?;
    let lake_side = Side {
        key_columns: &key_positions,
        compared: compared.clone(),
        keys: &keys,
        rows: &rows,
    };
    let source_side = Side {
        key_columns: &key_positions,
        compared: source_index.clone(),
        keys: &keys,
        rows: &rows,
    };

    // the lake side, as a map: a changelog table folded to the rows it describes
    let frame = match mode {
        TableMode::Upsert => ctx
            .table(lake::reference(&lake_name))
            .await
            .map_err(|e| verify_error(table, e.to_string()))?,
        TableMode::Changelog => changelog_fold(&ctx, &lake_name, &lake_schema, &key)
            .await
            .map_err(|m| verify_error(table, m))?,
    };
    let mut stream = frame
        .clone()
        .execute_stream()
        .await
        .map_err(|e| verify_error(table, e.to_string()))?;
    let mut lake_rows: HashMap<u64, u64> = HashMap::new();
    let mut duplicates = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| verify_error(table, e.to_string()))?;
        report.lake_rows += batch.num_rows() as u64;
        let (_, hashes) = lake_side
            .hashes(&batch)
            .map_err(|m| verify_error(table, m))?;
        for (key, row) in hashes {
            if lake_rows.insert(key, row).is_some() {
                duplicates += 1;
            }
        }
    }

    // the source side, streamed through it
    let exporter = connection::connect(&config.source).await?;
    exporter
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| Error::postgres("begin the comparison snapshot", e))?;
    let name: String = exporter
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map_err(|e| Error::postgres("export the comparison snapshot", e))?
        .get(0);
    let lsn = lsn_query(&exporter, "SELECT pg_current_wal_lsn()::text", &[]).await?;
    let (tx, mut rx) = mpsc::channel::<SnapshotRows>(4);
    let copy = {
        let config = config.clone();
        let schema = source_schema.clone();
        tokio::spawn(async move {
            snapshot::copy_table(
                &config,
                &ExportedSnapshot { name, lsn },
                schema,
                &copy_settings,
                tx,
                |_| {},
            )
            .await
        })
    };
    let mut examples: Vec<(u8, OwnedRow)> = Vec::new();
    while let Some(rows) = rx.recv().await {
        report.source_rows += rows.rows.num_rows() as u64;
        let (keys, hashes) = source_side
            .hashes(&rows.rows)
            .map_err(|m| verify_error(table, m))?;
        for (i, (key, row)) in hashes.into_iter().enumerate() {
            match lake_rows.remove(&key) {
                None => {
                    report.missing += 1;
                    if report.missing as usize <= EXAMPLES {
                        examples.push((0, keys.row(i).owned()));
                    }
                }
                Some(h) if h != row => {
                    report.different += 1;
                    if report.different as usize <= EXAMPLES {
                        examples.push((2, keys.row(i).owned()));
                    }
                }
                Some(_) => {}
            }
        }
    }
    copy.await
        .map_err(|e| verify_error(table, format!("the copy task failed: {e}")))??;
    let _ = exporter.batch_execute("COMMIT").await;
    report.extra = lake_rows.len() as u64 + duplicates;
    if !lake_rows.is_empty() {
        // the extra keys' values: a second read of the lake, only when there are some
        let mut stream = frame
            .execute_stream()
            .await
            .map_err(|e| verify_error(table, e.to_string()))?;
        let mut found = 0;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| verify_error(table, e.to_string()))?;
            let (keys, hashes) = lake_side
                .hashes(&batch)
                .map_err(|m| verify_error(table, m))?;
            for (i, (key, _)) in hashes.into_iter().enumerate() {
                if found < EXAMPLES && lake_rows.contains_key(&key) {
                    examples.push((1, keys.row(i).owned()));
                    found += 1;
                }
            }
            if found >= EXAMPLES {
                break;
            }
        }
    }
    let key_names: Vec<&str> = key.iter().map(String::as_str).collect();
    for (kind, row) in examples {
        let text = key_text(&keys, &key_names, row).map_err(|m| verify_error(table, m))?;
        match kind {
            0 => report.missing_keys.push(text),
            1 => report.extra_keys.push(text),
            _ => report.different_keys.push(text),
        }
    }
    report.equal = report.missing == 0 && report.extra == 0 && report.different == 0;
    Ok(report)
}

/// The rows a changelog table describes, in its own layout: per key, the row latest in
/// (`_lsn`, `_seq`) order after the latest truncate, unless that row is a delete. Rows written
/// before `_seq` existed count as position 0.
async fn changelog_fold(
    ctx: &SessionContext,
    lake_name: &CatalogTable,
    lake_schema: &Schema,
    key: &[String],
) -> std::result::Result<DataFrame, String> {
    use crate::pipeline::changelog::{LSN_COLUMN, OP_COLUMN, SEQ_COLUMN, TRUNCATE_OP};
    let quote = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    for needed in [OP_COLUMN, LSN_COLUMN] {
        if lake_schema.index_of(needed).is_err() {
            return Err(format!(
                "the lake table has no {needed} column: it was not written as a changelog"
            ));
        }
    }
    let view = "lakewriter_changelog";
    let source = ctx
        .table(lake::reference(lake_name))
        .await
        .map_err(|e| e.to_string())?;
    ctx.register_table(view, source.into_view())
        .map_err(|e| e.to_string())?;
    let (op, lsn) = (quote(OP_COLUMN), quote(LSN_COLUMN));
    let seq = if lake_schema.index_of(SEQ_COLUMN).is_ok() {
        format!("coalesce({}, 0)", quote(SEQ_COLUMN))
    } else {
        "0".to_string()
    };
    // the latest truncate: everything at or before it is gone
    let last_truncate = ctx
        .sql(&format!(
            "SELECT {lsn}, {seq} FROM {view} WHERE {op} = '{TRUNCATE_OP}' \
             ORDER BY {lsn} DESC, {seq} DESC LIMIT 1"
        ))
        .await
        .map_err(|e| e.to_string())?
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let (truncate_lsn, truncate_seq) = match last_truncate.iter().find(|b| b.num_rows() > 0) {
        Some(batch) => {
            let cell = |c: usize| {
                arrow::compute::cast(batch.column(c), &DataType::Int64)
                    .map_err(|e| e.to_string())
                    .map(|a| a.as_primitive::<arrow::datatypes::Int64Type>().value(0))
            };
            (cell(0)?, cell(1)?)
        }
        // LSNs and positions are never negative
        None => (-1, -1),
    };
    let columns: Vec<String> = lake_schema
        .fields()
        .iter()
        .map(|f| quote(f.name()))
        .collect();
    let keys: Vec<String> = key.iter().map(|k| quote(k)).collect();
    let sql = format!(
        "SELECT {columns} FROM (\
            SELECT *, row_number() OVER (PARTITION BY {keys} ORDER BY {lsn} DESC, {seq} DESC) \
                AS lakewriter_rank \
            FROM {view} \
            WHERE {op} <> '{TRUNCATE_OP}' \
              AND ({lsn} > {truncate_lsn} OR ({lsn} = {truncate_lsn} AND {seq} > {truncate_seq}))\
         ) WHERE lakewriter_rank = 1 AND {op} <> 'D'",
        columns = columns.join(", "),
        keys = keys.join(", "),
    );
    ctx.sql(&sql).await.map_err(|e| e.to_string())
}

/// A key as `name=value, …`.
fn key_text(
    converter: &RowConverter,
    names: &[&str],
    row: OwnedRow,
) -> std::result::Result<String, String> {
    let columns = converter
        .convert_rows([row.row()])
        .map_err(|e| e.to_string())?;
    let mut parts = Vec::new();
    for (name, column) in names.iter().zip(&columns) {
        let value = array_value_to_string(column, 0).map_err(|e| e.to_string())?;
        parts.push(format!("{name}={value}"));
    }
    Ok(parts.join(", "))
}

fn print_report(report: &TableReport) {
    let head = format!("{} → {}", report.source, report.lake);
    if report.equal {
        println!("{head}: equal ({} rows)", report.source_rows);
    } else {
        println!(
            "{head}: DIFFERENT: {} rows in PostgreSQL, {} in the lake; {} missing, {} extra, {} \
             different",
            report.source_rows, report.lake_rows, report.missing, report.extra, report.different
        );
        for (what, keys) in [
            ("missing", &report.missing_keys),
            ("extra", &report.extra_keys),
            ("different", &report.different_keys),
        ] {
            if !keys.is_empty() {
                println!("  {what}: {}", keys.join("; "));
            }
        }
    }
    if let Some(note) = &report.note {
        println!("  note: {note}");
    }
}

fn verify_error(table: &TableId, message: impl Into<String>) -> Error {
    Error::Sink {
        table: table.to_string(),
        message: format!("verify: {}", message.into()),
        retryable: false,
    }
}
