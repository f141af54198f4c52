//! `lakewriter resync`'s request to the running writer: a logical decoding message
//! (`pg_logical_emit_message`, prefix [`RESYNC_PREFIX`]) naming one table. It needs no table
//! or channel of its own, and the stream brings it back in WAL order, so `run` starts the
//! table's copy at exactly the position of the request; a writer that is not running finds it
//! in the slot's WAL at its next start.

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::config::{Config, TableFormat, TableMode};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::source::{chunk, connection, schema};
use crate::table::TableId;

/// The prefix of resync requests (the watermarks' prefix is `lakewriter` alone).
pub const RESYNC_PREFIX: &str = "lakewriter-resync";

/// The content of a resync request: the source table, schema and name apart (either may hold
/// a dot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResyncRequest {
    /// The table's schema.
    pub schema: String,
    /// The table's name.
    pub table: String,
}

impl ResyncRequest {
    /// The request for `table`.
    pub fn new(table: &TableId) -> Self {
        ResyncRequest {
            schema: table.schema.clone(),
            table: table.name.clone(),
        }
    }

    /// Reads a message's content; `None` when it is not a request of this version.
    pub fn decode(content: &[u8]) -> Option<TableId> {
        let request: ResyncRequest = serde_json::from_slice(content).ok()?;
        Some(TableId::new(request.schema, request.table))
    }
}

/// Writes the request to copy `table` again into the WAL, in a transaction of its own; its
/// position.
pub async fn emit(client: &Client, table: &TableId) -> Result<Lsn> {
    let content = serde_json::to_string(&ResyncRequest::new(table)).map_err(|e| Error::Source {
        message: format!("table {table}: encode a resync request: {e}"),
    })?;
    let row = client
        .query_one(
            "SELECT pg_logical_emit_message(true, $1, $2)::text",
            &[&RESYNC_PREFIX, &content],
        )
        .await
        .map_err(|e| {
            Error::postgres(
                format!(
                    "write the resync request of table {table} with pg_logical_emit_message \
                     (every role may run it unless EXECUTE was revoked)"
                ),
                e,
            )
        })?;
    let text: String = row.get(0);
    text.parse().map_err(|_| Error::Source {
        message: format!("table {table}: pg_logical_emit_message returned {text:?}, not an LSN"),
    })
}

/// What [`request`] asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requested {
    /// The table.
    pub table: TableId,
    /// The request's position in the WAL.
    pub lsn: Lsn,
    /// Whether a writer streams the slot now (else the next `run` takes the request up).
    pub writer_running: bool,
}

/// Asks the writer of `config` to copy the source table `name` (`schema.table`) again, in
/// chunks beside the stream. Refused, with the reason, for a table the writer does not stream
/// (not selected by `[source] include`, or not in the publication), one the chunked copy
/// cannot take (no key of NOT NULL columns, a changelog table, a Delta lake), and when the
/// slot does not exist yet (the first `run` copies every table anyway).
pub async fn request(config: &Config, name: &str) -> Result<Requested> {
    let client = connection::connect(&config.source).await?;
    let refuse = |message: String| Error::Source { message };
    let slot = client
        .query_opt(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&config.source.slot],
        )
        .await
        .map_err(|e| Error::postgres(format!("read slot {}", config.source.slot), e))?;
    let Some(slot) = slot else {
        return Err(refuse(format!(
            "slot {} does not exist: no writer has started yet, and the first `run` copies \
             every table, {name} among them",
            config.source.slot
        )));
    };
    let writer_running: bool = slot.get(0);
    let published = schema::publication_tables(&client, &config.source.publication).await?;
    let streamed: Vec<TableId> = schema::selected_tables(&client, config)
        .await?
        .into_iter()
        .filter(|t| published.contains(t))
        .collect();
    let Some(table) = streamed.iter().find(|t| t.to_string() == name).cloned() else {
        return Err(refuse(format!(
            "table {name} is not one of the writer's tables (those of publication {} that \
             [source] include selects): {}",
            config.source.publication,
            if streamed.is_empty() {
                "none".to_string()
            } else {
                streamed
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )));
    };
    if config.sink.format == TableFormat::Delta {
        return Err(refuse(format!(
            "table {table}: resync copies a table in chunks beside the stream, which needs the \
             copy's progress in the table's commits; Delta tables do not record it (restart \
             `run` after removing the lake table to copy it again)"
        )));
    }
    let mode = config
        .source
        .tables
        .get(&table.to_string())
        .map(|t| t.mode)
        .unwrap_or_default();
    if mode == TableMode::Changelog {
        return Err(refuse(format!(
            "table {table} is a changelog table: its history cannot be copied again, only its \
             current rows (resync copies upsert tables)"
        )));
    }
    let Some(described) = schema::describe_table(&client, &table).await? else {
        return Err(refuse(format!("table {table} is gone from the catalog")));
    };
    let key = described.key_columns(config);
    if chunk::key_columns(&described, &key).is_none() {
        return Err(refuse(format!(
            "table {table} has no key of NOT NULL columns (key: {}): resync copies in chunks \
             ordered by the key (give it a primary key, or [source.tables.\"{table}\"] key = \
             [NOT NULL columns])",
            if key.is_empty() {
                "none".to_string()
            } else {
                key.join(", ")
            }
        )));
    }
    let lsn = emit(&client, &table).await?;
    Ok(Requested {
        table,
        lsn,
        writer_running,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_watermarks_are_not_requests() {
        let table = TableId::new("sales", "order.items");
        let content = serde_json::to_vec(&ResyncRequest::new(&table)).unwrap_or_default();
        assert_eq!(ResyncRequest::decode(&content), Some(table));
        let watermark = br#"{"copy":"c","table":"public.a","chunk":0,"attempt":0,"mark":"low"}"#;
        assert_eq!(ResyncRequest::decode(watermark), None);
    }
}
