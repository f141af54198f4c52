//! The set-based merge of one export, inside the destination transaction the caller commits
//! with the state record: rows go in by binary COPY into a temporary staging table, then one
//! `INSERT … SELECT … ON CONFLICT (key) DO UPDATE` upserts them and one `DELETE … USING`
//! removes the keys that are gone. A first export into an empty table whose column types are
//! the lake's copies straight into it.

use bytes::Bytes;
use datafusion::prelude::DataFrame;
use futures::{SinkExt, StreamExt};
use tokio_postgres::Transaction;

use super::copy_in::{HEADER, TRAILER, encode_rows, pg_type};
use super::destination::{Applied, DestinationTable};
use crate::error::{Error, Result};
use crate::lake::LakeChanges;
use crate::progress::TableProgress;
use crate::table::{TableId, quote_ident};

/// The staging table of the rows.
const STAGE: &str = "pg_temp.lakewriter_export_rows";
/// The staging table of the keys that are gone.
const GONE: &str = "pg_temp.lakewriter_export_gone";
/// COPY data is sent in chunks of about this many bytes.
const CHUNK: usize = 4 << 20;

/// The environment variable that makes `export` abort the process at a phase of its
/// transaction (`staged`, `merged`, `recorded`): how the tests prove that a run killed there
/// applies nothing, and the next run everything, once. Only debug builds (the tests') read
/// it: a release binary has no way to be told to abort.
pub const CRASH_AT: &str = "LAKEWRITER_EXPORT_CRASH_AT";

/// Aborts the process, as a `kill -9` would stop it, when [`CRASH_AT`] names `phase` (debug
/// builds only).
pub fn crash_point(phase: &str) {
    if cfg!(debug_assertions) && std::env::var(CRASH_AT).is_ok_and(|p| p == phase) {
        eprintln!("{CRASH_AT}={phase}: aborting");
        std::process::abort();
    }
}

/// Applies `changes` to `destination` (described as `shape`) in `tx`. `direct`: the table is
/// empty and its types are the lake's, so the rows are copied into it without staging.
pub async fn apply(
    tx: &Transaction<'_>,
    destination: &TableId,
    shape: &DestinationTable,
    changes: &LakeChanges,
    direct: bool,
    progress: &TableProgress,
) -> Result<Applied> {
    let columns: Vec<String> = changes
        .table
        .schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let key = &changes.table.key;
    let started = std::time::Instant::now();
    if direct {
        let copied = copy_frame(
            tx,
            destination,
            &destination.quoted(),
            &columns,
            changes.rows.clone(),
            progress,
        )
        .await?;
        crash_point("staged");
        return Ok(Applied {
            upserted: copied,
            deleted: 0,
            changed: copied,
            copy_seconds: started.elapsed().as_secs_f64(),
            merge_seconds: 0.0,
        });
    }
    let postgres = |what: &str, e| Error::postgres(format!("export into {destination}: {what}"), e);
    create_stage(tx, destination, STAGE, &changes.table.schema, &columns).await?;
    let staged = copy_frame(
        tx,
        destination,
        STAGE,
        &columns,
        changes.rows.clone(),
        progress,
    )
    .await?;
    let mut copy_seconds = started.elapsed().as_secs_f64();
    tx.batch_execute(&format!("ANALYZE {STAGE}"))
        .await
        .map_err(|e| postgres("analyze the staged rows", e))?;
    crash_point("staged");

    // each staged column cast to its destination type: text to jsonb, bigint to integer…
    let cast = |alias: &str, c: &String| -> Result<String> {
        let column = shape.column(c).ok_or_else(|| Error::Export {
            table: destination.to_string(),
            message: format!("the lake column {c} is not a column of the destination table"),
        })?;
        Ok(format!("{alias}.{}::{}", quote_ident(c), column.type_name))
    };
    let list = columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let selected = columns
        .iter()
        .map(|c| cast("s", c))
        .collect::<Result<Vec<_>>>()?
        .join(", ");
    let key_list = key
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let others: Vec<&String> = columns.iter().filter(|c| !key.contains(c)).collect();
    let on_conflict = if others.is_empty() {
        "DO NOTHING".to_string()
    } else {
        let set = others
            .iter()
            .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", ");
        let ours = others
            .iter()
            .map(|c| format!("d.{}", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", ");
        let theirs = others
            .iter()
            .map(|c| format!("EXCLUDED.{}", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", ");
        // an equal row is left alone: no dead tuple, and it does not count as changed
        format!("DO UPDATE SET {set} WHERE ROW({ours}) IS DISTINCT FROM ROW({theirs})")
    };
    let upsert = format!(
        "WITH written AS (INSERT INTO {table} AS d ({list}) SELECT {selected} FROM {STAGE} s \
         ON CONFLICT ({key_list}) {on_conflict} RETURNING 1) SELECT count(*) FROM written",
        table = destination.quoted(),
    );
    let written: i64 = tx
        .query_one(&upsert, &[])
        .await
        .map_err(|e| postgres("upsert the staged rows", e))?
        .get(0);

    let key_match = |alias: &str| -> Result<String> {
        Ok(key
            .iter()
            .map(|k| Ok(format!("d.{} = {}", quote_ident(k), cast(alias, k)?)))
            .collect::<Result<Vec<_>>>()?
            .join(" AND "))
    };
    let deleted = match &changes.gone {
        Some(gone) => {
            let key_schema = std::sync::Arc::new(
                changes
                    .table
                    .schema
                    .project(
                        &key.iter()
                            .map(|k| changes.table.schema.index_of(k))
                            .collect::<std::result::Result<Vec<_>, _>>()
                            .map_err(|e| Error::Export {
                                table: destination.to_string(),
                                message: format!("the lake key: {e}"),
                            })?,
                    )
                    .map_err(|e| Error::Export {
                        table: destination.to_string(),
                        message: format!("the lake key: {e}"),
                    })?,
            );
            create_stage(tx, destination, GONE, &key_schema, key).await?;
            let copy_started = std::time::Instant::now();
            let staged_gone =
                copy_frame(tx, destination, GONE, key, gone.clone(), progress).await?;
            copy_seconds += copy_started.elapsed().as_secs_f64();
            if staged_gone == 0 {
                0
            } else {
                tx.batch_execute(&format!("ANALYZE {GONE}"))
                    .await
                    .map_err(|e| postgres("analyze the staged keys", e))?;
                tx.execute(
                    &format!(
                        "DELETE FROM {} d USING {GONE} g WHERE {}",
                        destination.quoted(),
                        key_match("g")?
                    ),
                    &[],
                )
                .await
                .map_err(|e| postgres("delete the keys that are gone", e))?
            }
        }
        // the whole table was staged: what it does not hold is gone
        None => tx
            .execute(
                &format!(
                    "DELETE FROM {} d WHERE NOT EXISTS (SELECT 1 FROM {STAGE} s WHERE {})",
                    destination.quoted(),
                    key_match("s")?
                ),
                &[],
            )
            .await
            .map_err(|e| postgres("delete the rows the lake does not hold", e))?,
    };
    crash_point("merged");
    Ok(Applied {
        upserted: staged,
        deleted,
        changed: u64::try_from(written).unwrap_or(0) + deleted,
        copy_seconds,
        // the rest: creating the staging tables, ANALYZE, the upsert and the delete
        merge_seconds: (started.elapsed().as_secs_f64() - copy_seconds).max(0.0),
    })
}

/// Creates the temporary table `name` with `columns` of `schema` in their PostgreSQL types,
/// dropped when the transaction ends.
async fn create_stage(
    tx: &Transaction<'_>,
    destination: &TableId,
    name: &str,
    schema: &arrow::datatypes::SchemaRef,
    columns: &[String],
) -> Result<()> {
    let definitions = columns
        .iter()
        .map(|c| {
            let field = schema.field_with_name(c).map_err(|e| Error::Export {
                table: destination.to_string(),
                message: e.to_string(),
            })?;
            let pg = pg_type(field.data_type()).ok_or_else(|| Error::Export {
                table: destination.to_string(),
                message: format!(
                    "column {c}: the lake type {} has no PostgreSQL type here",
                    field.data_type()
                ),
            })?;
            Ok(format!("{} {}", quote_ident(c), pg.name))
        })
        .collect::<Result<Vec<_>>>()?;
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE {} ({}) ON COMMIT DROP",
        name.trim_start_matches("pg_temp."),
        definitions.join(", ")
    ))
    .await
    .map_err(|e| Error::postgres(format!("export into {destination}: create {name}"), e))
}

/// Runs `frame` and copies its rows into `target`'s `columns` by binary COPY; the rows
/// copied.
async fn copy_frame(
    tx: &Transaction<'_>,
    destination: &TableId,
    target: &str,
    columns: &[String],
    frame: DataFrame,
    progress: &TableProgress,
) -> Result<u64> {
    let postgres = |e| Error::postgres(format!("export into {destination}: copy into {target}"), e);
    let lake = |e: datafusion::error::DataFusionError| Error::Sink {
        table: destination.to_string(),
        message: format!("read the lake rows: {e}"),
        retryable: false,
    };
    let list = columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let sink = tx
        .copy_in::<_, Bytes>(&format!(
            "COPY {target} ({list}) FROM STDIN (FORMAT binary)"
        ))
        .await
        .map_err(postgres)?;
    futures::pin_mut!(sink);
    let names: Vec<&str> = columns.iter().map(String::as_str).collect();
    let mut buffer = Vec::with_capacity(CHUNK + (CHUNK >> 2));
    buffer.extend_from_slice(HEADER);
    let mut stream = frame.execute_stream().await.map_err(lake)?;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(lake)?;
        encode_rows(&names, batch.columns(), &mut buffer).map_err(|e| Error::Export {
            table: destination.to_string(),
            message: e.to_string(),
        })?;
        progress.add(batch.num_rows() as u64);
        if buffer.len() >= CHUNK {
            let chunk = Bytes::from(std::mem::replace(
                &mut buffer,
                Vec::with_capacity(CHUNK + (CHUNK >> 2)),
            ));
            sink.send(chunk).await.map_err(postgres)?;
        }
    }
    buffer.extend_from_slice(TRAILER);
    sink.send(Bytes::from(buffer)).await.map_err(postgres)?;
    sink.as_mut().finish().await.map_err(postgres)
}
