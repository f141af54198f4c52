//! One chunk of a chunked copy (DBLog's watermarks): a low watermark written into the WAL,
//! the next rows of the table in key order read with an ordinary query, a high watermark
//! after them. The stream brings the two watermarks back in WAL order, so the pipeline knows
//! which of its changes came before, between and after the read.

use std::sync::Arc;

use arrow::array::RecordBatch;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::config::ColumnPolicy;
use crate::error::{Error, Result};
use crate::masking::Masking;
use crate::source::changes::TableSchema;
use crate::source::copy_binary::{BinaryCopyReader, BinaryRow};
use crate::source::schema::SourceTable;
use crate::source::snapshot::{self, RowBatch};
use crate::table::{TableId, quote_ident, quote_literal};

/// The prefix of lakewriter's logical decoding messages (`pg_logical_emit_message`).
pub const WATERMARK_PREFIX: &str = "lakewriter";

/// Which side of a chunk's read a watermark marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mark {
    /// Written before the read.
    Low,
    /// Written after the read.
    High,
}

/// A watermark: which copy, table, chunk and attempt it brackets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// The copy's id, unique to one copy by one process: a watermark of an earlier run (or an
    /// earlier copy of the table) names another.
    pub copy: String,
    /// The table (`schema.table`).
    pub table: String,
    /// The chunk's number in its copy (0 first).
    pub chunk: u64,
    /// The read's attempt at this chunk (a failed read is made again under the next).
    pub attempt: u32,
    /// Before or after the read.
    pub mark: Mark,
}

impl Watermark {
    /// Reads a message's content; `None` when it is not a watermark of this version.
    pub fn decode(content: &[u8]) -> Option<Watermark> {
        serde_json::from_slice(content).ok()
    }
}

/// Writes `watermark` into the WAL, in a transaction of its own (the stream brings it back at
/// that transaction's commit, in commit order with every other transaction).
pub async fn emit(client: &Client, watermark: &Watermark) -> Result<()> {
    let content = serde_json::to_string(watermark).map_err(|e| Error::Source {
        message: format!("table {}: encode a watermark: {e}", watermark.table),
    })?;
    client
        .execute(
            "SELECT pg_logical_emit_message(true, $1, $2)",
            &[&WATERMARK_PREFIX, &content],
        )
        .await
        .map_err(|e| {
            Error::postgres(
                format!(
                    "write a watermark of table {} with pg_logical_emit_message (every role \
                     may run it unless EXECUTE was revoked)",
                    watermark.table
                ),
                e,
            )
        })?;
    Ok(())
}

/// A key column of a chunked copy: its name and its type as PostgreSQL prints it (for the
/// casts of the bound).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyColumn {
    /// The column.
    pub name: String,
    /// Its type (`format_type`).
    pub type_name: String,
}

/// The key columns of `table` named `key`, in that order; `None` when one is missing or may
/// hold NULL (rows with a NULL key cannot be ordered into chunks).
pub fn key_columns(table: &SourceTable, key: &[String]) -> Option<Vec<KeyColumn>> {
    if key.is_empty() {
        return None;
    }
    key.iter()
        .map(|name| {
            let column = table.columns.iter().find(|c| &c.name == name)?;
            column.not_null.then(|| KeyColumn {
                name: column.name.clone(),
                type_name: column.type_name.clone(),
            })
        })
        .collect()
}

/// The rows one chunk read.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// The rows, in key order, in the shape they were read with.
    pub rows: Vec<RecordBatch>,
    /// How many.
    pub count: u64,
    /// The key of the last row, each column in text form; `None` when the chunk is empty.
    pub last_key: Option<Vec<String>>,
}

/// Reads the next `limit` rows of `schema`'s table in key order, those whose key is above
/// `after` (all from the start when `None`), in one snapshot: the chunk's last key first (an
/// index-only scan on the key), then its rows with binary COPY. Masked columns are read
/// masked, as the initial copy reads them.
pub async fn read_chunk(
    client: &Client,
    schema: &Arc<TableSchema>,
    key: &[KeyColumn],
    after: Option<&[String]>,
    limit: u64,
    masking: &Masking,
) -> Result<Chunk> {
    let table = &schema.table;
    let fail = |what: &str, e: tokio_postgres::Error| {
        Error::postgres(format!("{what} a chunk of table {table}"), e)
    };
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| fail("begin", e))?;
    let columns: Vec<String> = key.iter().map(|k| quote_ident(&k.name)).collect();
    let tuple = columns.join(", ");
    let above = match after {
        Some(values) => bound(key, values, ">", table)?,
        None => "true".to_string(),
    };
    // qualified: a bare name in ORDER BY would be the text output column of that name
    let descending: Vec<String> = columns.iter().map(|c| format!("c.{c} DESC")).collect();
    let texts: Vec<String> = columns.iter().map(|c| format!("c.{c}::text")).collect();
    let last = format!(
        "SELECT {} FROM (SELECT {tuple} FROM {} WHERE {above} ORDER BY {tuple} LIMIT {limit}) c \
         ORDER BY {} LIMIT 1",
        texts.join(", "),
        table.quoted(),
        descending.join(", ")
    );
    let row = client
        .query_opt(&last, &[])
        .await
        .map_err(|e| fail("find the end of", e))?;
    let Some(row) = row else {
        client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| fail("end", e))?;
        return Ok(Chunk {
            rows: Vec::new(),
            count: 0,
            last_key: None,
        });
    };
    let mut last_key = Vec::with_capacity(key.len());
    for (i, column) in key.iter().enumerate() {
        let value: Option<String> = row.try_get(i).map_err(|e| fail("read the end of", e))?;
        last_key.push(value.ok_or_else(|| Error::Source {
            message: format!(
                "table {table}, key column {}: a NULL in a key a chunked copy orders by",
                column.name
            ),
        })?);
    }
    let upto = bound(key, &last_key, "<=", table)?;
    let wires = snapshot::wires(schema);
    let masks = snapshot::masks(schema);
    if masks.contains(&Some(ColumnPolicy::Hash)) && masking.hasher().is_none() {
        return Err(Error::Source {
            message: format!(
                "copy table {table}: a column is hashed, but no masking key is loaded"
            ),
        });
    }
    let select = snapshot::masked_select_list(schema, &wires, &masks);
    let query = format!(
        "COPY (SELECT {select} FROM {} WHERE {above} AND {upto} ORDER BY {tuple}) TO STDOUT \
         (FORMAT binary)",
        table.quoted()
    );
    let stream = client
        .copy_out(query.as_str())
        .await
        .map_err(|e| fail("copy", e))?;
    futures::pin_mut!(stream);
    let batch_rows = usize::try_from(limit).unwrap_or(usize::MAX).min(65_536);
    let mut batch = RowBatch::new(schema, batch_rows)?;
    batch.masks = masks;
    batch.hasher = masking.hasher().cloned();
    let mut reader = BinaryCopyReader::new(schema.columns.len());
    let mut rows = Vec::new();
    let mut count = 0u64;
    while let Some(data) = stream.next().await {
        let data = data.map_err(|e| fail("copy", e))?;
        let mut full = Vec::new();
        reader.push(&data, |row: BinaryRow<'_>| -> Result<()> {
            batch.append(row, &wires)?;
            if batch.len() >= batch_rows {
                full.push(batch.finish()?);
            }
            Ok(())
        })?;
        for done in full {
            count += done.num_rows() as u64;
            rows.push(done);
        }
    }
    reader
        .finish()
        .map_err(|e| snapshot::copy_error(table, e))?;
    if !batch.is_empty() {
        let done = batch.finish()?;
        count += done.num_rows() as u64;
        rows.push(done);
    }
    client
        .batch_execute("COMMIT")
        .await
        .map_err(|e| fail("end", e))?;
    Ok(Chunk {
        rows,
        count,
        last_key: Some(last_key),
    })
}

/// `(k1, k2) <op> ('v1'::t1, 'v2'::t2)`: the row comparison PostgreSQL orders the key by
/// (and can answer from the key's index).
fn bound(key: &[KeyColumn], values: &[String], op: &str, table: &TableId) -> Result<String> {
    if values.len() != key.len() {
        return Err(Error::Source {
            message: format!(
                "table {table}: a chunk bound of {} values for a key of {} columns",
                values.len(),
                key.len()
            ),
        });
    }
    let columns: Vec<String> = key.iter().map(|k| quote_ident(&k.name)).collect();
    let literals: Vec<String> = key
        .iter()
        .zip(values)
        .map(|(k, v)| format!("{}::{}", quote_literal(v), k.type_name))
        .collect();
    Ok(if key.len() == 1 {
        format!("{} {op} {}", columns[0], literals[0])
    } else {
        format!("({}) {op} ({})", columns.join(", "), literals.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(names: &[(&str, &str)]) -> Vec<KeyColumn> {
        names
            .iter()
            .map(|(n, t)| KeyColumn {
                name: n.to_string(),
                type_name: t.to_string(),
            })
            .collect()
    }

    #[test]
    fn bounds_compare_the_whole_key_with_quoted_typed_literals() -> Result<()> {
        let table = TableId::new("public", "t");
        let one = key(&[("id", "bigint")]);
        assert_eq!(
            bound(&one, &["41".into()], ">", &table)?,
            "\"id\" > '41'::bigint"
        );
        let two = key(&[("a", "text"), ("b", "numeric(10,2)")]);
        assert_eq!(
            bound(&two, &["it's".into(), "1.50".into()], "<=", &table)?,
            "(\"a\", \"b\") <= ('it''s'::text, '1.50'::numeric(10,2))"
        );
        assert!(bound(&two, &["x".into()], ">", &table).is_err());
        Ok(())
    }

    #[test]
    fn watermarks_round_trip_and_other_messages_are_not_watermarks() {
        let mark = Watermark {
            copy: "c1".into(),
            table: "public.t".into(),
            chunk: 3,
            attempt: 1,
            mark: Mark::High,
        };
        let text = serde_json::to_vec(&mark).unwrap_or_default();
        assert_eq!(Watermark::decode(&text), Some(mark));
        assert_eq!(Watermark::decode(b"hello"), None);
    }
}
