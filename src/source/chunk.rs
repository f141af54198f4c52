//! One chunk of a chunked copy (DBLog's watermarks): a low watermark written into the WAL,
//! the next rows of the table in key order read with an ordinary query, a high watermark
//! after them. The stream brings the two watermarks back in WAL order, so the pipeline knows
//! which of its changes came before, between and after the read.

use std::sync::Arc;

use arrow::array::RecordBatch;
use bytes::BytesMut;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use crate::config::ColumnPolicy;
use crate::error::{Error, Result};
use crate::masking::Masking;
use crate::source::changes::TableSchema;
use crate::source::copy_binary::{BinaryCopyReader, BinaryRow};
use crate::source::schema::SourceTable;
use crate::source::snapshot::{self, RowBatch};
use crate::source::types::Wire;
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
    /// The key range of the copy the chunk is in (0 first; one unless the table was split).
    #[serde(default)]
    pub range: u32,
    /// The chunk's number in its key range (0 first).
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
/// `after` (all from the start when `None`) and at most `upto` (to the end when `None`), with
/// one binary COPY of an index scan on the key.
/// The chunk's last key is taken from its last row; the key columns read in binary are
/// turned into their text form by PostgreSQL itself (one short query), so the bound of the
/// next chunk casts back to exactly that key, whatever its type. Masked columns are read
/// masked, as the initial copy reads them.
pub async fn read_chunk(
    client: &Client,
    schema: &Arc<TableSchema>,
    key: &[KeyColumn],
    after: Option<&[String]>,
    upto: Option<&[String]>,
    limit: u64,
    masking: &Masking,
) -> Result<Chunk> {
    let table = &schema.table;
    let fail = |what: &str, e: tokio_postgres::Error| {
        Error::postgres(format!("{what} a chunk of table {table}"), e)
    };
    let wires = snapshot::wires(schema);
    let masks = snapshot::masks(schema);
    if masks.contains(&Some(ColumnPolicy::Hash)) && masking.hasher().is_none() {
        return Err(Error::Source {
            message: format!(
                "copy table {table}: a column is hashed, but no masking key is loaded"
            ),
        });
    }
    let fields = key_fields(schema, key, &wires, &masks)?;
    // a bound given (sealed key columns opened), or none
    let range_bound = |values: Option<&[String]>, op: &str| -> Result<String> {
        match values {
            Some(values) => bound(
                key,
                &open_bound(values, key, &fields, masking, table)?,
                op,
                table,
            ),
            None => Ok("true".to_string()),
        }
    };
    let above = range_bound(after, ">")?;
    let below = range_bound(upto, "<=")?;
    // qualified: a bare name in ORDER BY could be an output column of that name
    let order: Vec<String> = key
        .iter()
        .map(|k| format!("src.{}", quote_ident(&k.name)))
        .collect();
    let select = snapshot::masked_select_list(schema, &wires, &masks);
    let query = format!(
        "COPY (SELECT {select} FROM {} AS src WHERE {above} AND {below} ORDER BY {} \
         LIMIT {limit}) TO STDOUT (FORMAT binary)",
        table.quoted(),
        order.join(", ")
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
    // the key fields of the last row read, one after the other
    let mut last = LastKey::default();
    while let Some(data) = stream.next().await {
        let data = data.map_err(|e| fail("copy", e))?;
        let mut full = Vec::new();
        reader.push(&data, |row: BinaryRow<'_>| -> Result<()> {
            last.keep(&row, &fields);
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
    let last_key = if count == 0 {
        None
    } else {
        Some(last.text(client, table, key, &fields, masking).await?)
    };
    Ok(Chunk {
        rows,
        count,
        last_key,
    })
}

/// Rows sampled per key range to split a table at.
const SAMPLE_ROWS_PER_RANGE: f64 = 1000.0;

/// The keys that split `schema`'s table, of about `estimate` rows, into `parts` key ranges of
/// about as many rows each: the last key of every range but the last, in key order, each key
/// column in PostgreSQL's text form (a hashed column's sealed, as a chunk's last key is). Found
/// in a sample of the table's pages (`TABLESAMPLE SYSTEM`, about a thousand rows per range),
/// so a skewed key splits where its rows are. Fewer points (none) when the sample is too
/// small to tell.
pub async fn split_points(
    client: &Client,
    schema: &Arc<TableSchema>,
    key: &[KeyColumn],
    estimate: u64,
    parts: usize,
    masking: &Masking,
) -> Result<Vec<Vec<String>>> {
    let table = &schema.table;
    if parts < 2 || estimate == 0 {
        return Ok(Vec::new());
    }
    let wires = snapshot::wires(schema);
    let masks = snapshot::masks(schema);
    let fields = key_fields(schema, key, &wires, &masks)?;
    let percent =
        (100.0 * SAMPLE_ROWS_PER_RANGE * parts as f64 / estimate as f64).clamp(1e-4, 100.0);
    let columns: Vec<String> = key
        .iter()
        .map(|k| format!("src.{}", quote_ident(&k.name)))
        .collect();
    let texts: Vec<String> = columns.iter().map(|c| format!("{c}::text")).collect();
    let query = format!(
        "SELECT {} FROM {} AS src TABLESAMPLE SYSTEM ({percent}) ORDER BY {}",
        texts.join(", "),
        table.quoted(),
        columns.join(", ")
    );
    let rows = client.query(query.as_str(), &[]).await.map_err(|e| {
        Error::postgres(
            format!("sample the keys of table {table} to split its copy"),
            e,
        )
    })?;
    if rows.len() < parts {
        return Ok(Vec::new());
    }
    let mut points: Vec<Vec<String>> = Vec::with_capacity(parts - 1);
    // the plain key of the last point: a repeated sample row splits nothing
    let mut previous: Option<Vec<String>> = None;
    for part in 1..parts {
        let row = &rows[part * rows.len() / parts];
        let mut plain = Vec::with_capacity(key.len());
        for (i, column) in key.iter().enumerate() {
            let value: Option<String> = row
                .try_get(i)
                .map_err(|e| Error::postgres(format!("read a sampled key of table {table}"), e))?;
            plain.push(value.ok_or_else(|| Error::Source {
                message: format!(
                    "table {table}, key column {}: a NULL in a key a chunked copy orders by",
                    column.name
                ),
            })?);
        }
        if previous.as_ref() == Some(&plain) {
            continue;
        }
        // hashed columns sealed, as a chunk's last key is
        let point = plain
            .iter()
            .zip(key.iter().zip(&fields))
            .map(|(value, (column, field))| match field.hashed {
                true => seal(masking, table, column, value),
                false => Ok(value.clone()),
            })
            .collect::<Result<Vec<String>>>()?;
        points.push(point);
        previous = Some(plain);
    }
    Ok(points)
}

/// `plain`, a value of the hashed key column `column`, sealed under the masking key.
fn seal(masking: &Masking, table: &TableId, column: &KeyColumn, plain: &str) -> Result<String> {
    match masking.hasher() {
        Some(hasher) => hasher.seal(plain),
        None => Err(Error::Source {
            message: format!(
                "table {table}, key column {}: hashed, but no masking key is loaded",
                column.name
            ),
        }),
    }
}

/// How a key column comes in a chunk's COPY: its field, and whether the field is the
/// column's text output (text-like types, types read as text, hashed columns) or its binary
/// form.
#[derive(Debug, Clone, Copy)]
struct KeyField {
    index: usize,
    text: bool,
    /// A hashed column: its plaintext in a key bound is sealed ([`Hasher::seal`]), as the
    /// bound is committed to the lake with the copy's progress.
    ///
    /// [`Hasher::seal`]: crate::masking::Hasher::seal
    hashed: bool,
}

/// `values` (a key bound as committed: a hashed column's value sealed) in plain text, for the
/// query. A hashed column's value that is not sealed is taken as it is (progress committed
/// before bounds were sealed).
fn open_bound(
    values: &[String],
    key: &[KeyColumn],
    fields: &[KeyField],
    masking: &Masking,
    table: &TableId,
) -> Result<Vec<String>> {
    values
        .iter()
        .zip(fields.iter().zip(key))
        .map(|(value, (field, column))| {
            if !field.hashed || !value.starts_with(crate::masking::SEALED_PREFIX) {
                return Ok(value.clone());
            }
            masking
                .hasher()
                .and_then(|h| h.open(value))
                .ok_or_else(|| Error::Source {
                    message: format!(
                        "table {table}, key column {}: the chunked copy's last key was sealed \
                         under another masking key; copy the table again (`lakewriter resync \
                         --table {table}`)",
                        column.name
                    ),
                })
        })
        .collect()
}

/// Where each of `key`'s columns is in `schema`'s COPY, and in which form: as
/// [`snapshot::masked_select_list`] selects it (a hashed column, whose Arrow type is a
/// string, and a column read as text both bring their text output).
fn key_fields(
    schema: &TableSchema,
    key: &[KeyColumn],
    wires: &[Wire],
    masks: &[Option<ColumnPolicy>],
) -> Result<Vec<KeyField>> {
    key.iter()
        .map(|k| {
            let index = schema
                .columns
                .iter()
                .position(|c| c.name == k.name)
                .ok_or_else(|| Error::Source {
                    message: format!(
                        "table {}: key column {} is not a column of the table",
                        schema.table, k.name
                    ),
                })?;
            let hashed = masks.get(index) == Some(&Some(ColumnPolicy::Hash));
            let text = wires.get(index) == Some(&Wire::Text) || hashed;
            Ok(KeyField {
                index,
                text,
                hashed,
            })
        })
        .collect()
}

/// The key fields of the last row a chunk read, kept as the rows go by.
#[derive(Debug, Default)]
struct LastKey {
    /// The fields' bytes, one after the other.
    bytes: Vec<u8>,
    /// Where each field ends in `bytes`; `None` for a NULL.
    ends: Vec<Option<usize>>,
}

impl LastKey {
    fn keep(&mut self, row: &BinaryRow<'_>, fields: &[KeyField]) {
        self.bytes.clear();
        self.ends.clear();
        for field in fields {
            let value = row.get(field.index);
            if let Some(value) = value {
                self.bytes.extend_from_slice(value);
            }
            self.ends.push(value.map(|_| self.bytes.len()));
        }
    }

    /// The kept key in text form, each column as PostgreSQL prints it; a hashed column's
    /// sealed.
    async fn text(
        &self,
        client: &Client,
        table: &TableId,
        key: &[KeyColumn],
        fields: &[KeyField],
        masking: &Masking,
    ) -> Result<Vec<String>> {
        let mut start = 0;
        let mut values: Vec<&[u8]> = Vec::with_capacity(key.len());
        for (column, end) in key.iter().zip(&self.ends) {
            let end = end.ok_or_else(|| Error::Source {
                message: format!(
                    "table {table}, key column {}: a NULL in a key a chunked copy orders by",
                    column.name
                ),
            })?;
            values.push(&self.bytes[start..end]);
            start = end;
        }
        let mut text = vec![String::new(); key.len()];
        let mut casts = Vec::new();
        let mut params: Vec<BinaryValue<'_>> = Vec::new();
        for (i, ((column, field), value)) in key.iter().zip(fields).zip(&values).enumerate() {
            if field.text {
                let plain = String::from_utf8(value.to_vec()).map_err(|_| Error::Source {
                    message: format!(
                        "table {table}, key column {}: the last key of a chunk is not UTF-8",
                        column.name
                    ),
                })?;
                text[i] = if field.hashed {
                    seal(masking, table, column, &plain)?
                } else {
                    plain
                };
            } else {
                params.push(BinaryValue(value));
                casts.push((
                    i,
                    format!("(${}::{})::text", params.len(), column.type_name),
                ));
            }
        }
        if casts.is_empty() {
            return Ok(text);
        }
        let query = format!(
            "SELECT {}",
            casts
                .iter()
                .map(|(_, c)| c.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let args: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let row = client.query_one(&query, &args).await.map_err(|e| {
            Error::postgres(format!("print the last key of a chunk of table {table}"), e)
        })?;
        for (n, (i, _)) in casts.iter().enumerate() {
            let value: Option<String> = row.try_get(n).map_err(|e| {
                Error::postgres(format!("read the last key of a chunk of table {table}"), e)
            })?;
            text[*i] = value.ok_or_else(|| Error::Source {
                message: format!(
                    "table {table}, key column {}: a NULL in a key a chunked copy orders by",
                    key[*i].name
                ),
            })?;
        }
        Ok(text)
    }
}

/// A value in PostgreSQL's binary form, sent as is as a parameter of whatever type the
/// statement gives it (the type of the column it was read from).
#[derive(Debug)]
struct BinaryValue<'a>(&'a [u8]);

impl ToSql for BinaryValue<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(self.0);
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
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
            range: 1,
            chunk: 3,
            attempt: 1,
            mark: Mark::High,
        };
        let text = serde_json::to_vec(&mark).unwrap_or_default();
        assert_eq!(Watermark::decode(&text), Some(mark));
        assert_eq!(Watermark::decode(b"hello"), None);
    }
}
