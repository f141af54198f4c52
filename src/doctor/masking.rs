//! Doctor's masking checks: the key of hashed columns is there (it is never shown), each
//! policy names a column of its table and no key column is dropped or redacted, and dropped
//! columns stay in PostgreSQL: a publication column list leaves them out of every change, where
//! otherwise they reach lakewriter (which discards them as it decodes).

use tokio_postgres::Client;

use super::Finding;
use crate::config::{ColumnPolicy, Config};
use crate::masking::{Masking, key_source};
use crate::source::schema::{ReplicaIdentity, SourceTable};
use crate::table::quote_ident;

/// Publication column lists arrived in PostgreSQL 15.
const COLUMN_LISTS: i32 = 150_000;

pub(super) async fn check(
    config: &Config,
    client: &Client,
    tables: &[SourceTable],
    version: i32,
    out: &mut Vec<Finding>,
) -> crate::Result<()> {
    let hashed = config
        .sink
        .tables
        .values()
        .any(|t| t.columns.values().any(|p| *p == ColumnPolicy::Hash));
    let masking = match Masking::from_config(config) {
        Ok(masking) => masking,
        Err(e) => {
            out.push(Finding::error(
                e.to_string(),
                format!(
                    "set the key (at least 32 bytes, e.g. `openssl rand -hex 32`) in the {}; \
                     keep it in a secret store: the same key must hash every run, or joins on \
                     hashed columns break",
                    key_source(&config.sink.masking)
                ),
            ));
            return Ok(());
        }
    };
    if masking.is_empty() {
        return Ok(());
    }
    if hashed {
        out.push(Finding::ok(format!(
            "masking key found in the {} (not shown)",
            key_source(&config.sink.masking)
        )));
    }
    let publication = &config.source.publication;
    for table in tables {
        let policies = masking.policies(&table.id);
        if policies.is_empty() {
            continue;
        }
        let columns: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
        if let Err(e) = masking.check_table(&table.id, &columns, &table.key_columns(config)) {
            out.push(Finding::error(
                e.to_string(),
                format!(
                    "fix [sink.tables.\"{}\"] columns: name the table's columns as the catalog \
                     has them; a key column may only be hashed",
                    table.id
                ),
            ));
            continue;
        }
        let summary = policies
            .iter()
            .map(|(c, p)| format!("{c} {}", p.name()))
            .collect::<Vec<_>>()
            .join(", ");
        out.push(Finding::ok(format!("table {}: masks {summary}", table.id)));
        let dropped: Vec<&str> = policies
            .iter()
            .filter(|(_, p)| **p == ColumnPolicy::Drop)
            .map(|(c, _)| c.as_str())
            .collect();
        if dropped.is_empty() {
            continue;
        }
        let published = published_columns(client, publication, table, version).await?;
        let sent: Vec<&str> = dropped
            .iter()
            .copied()
            .filter(|c| published.as_ref().is_none_or(|p| p.iter().any(|n| n == c)))
            .collect();
        if sent.is_empty() {
            out.push(Finding::ok(format!(
                "table {}: dropped column(s) {} are not published (a column list keeps them \
                 in PostgreSQL)",
                table.id,
                dropped.join(", ")
            )));
            continue;
        }
        let keep: Vec<String> = table
            .columns
            .iter()
            .filter(|c| !dropped.contains(&c.name.as_str()))
            .map(|c| quote_ident(&c.name))
            .collect();
        let message = format!(
            "table {}: dropped column(s) {} leave PostgreSQL in every change (lakewriter \
             discards them as it decodes, but they cross the network)",
            table.id,
            sent.join(", ")
        );
        let fix = if version < COLUMN_LISTS {
            "publication column lists need PostgreSQL 15; until then the columns are sent and \
             discarded"
                .to_string()
        } else if table.replica_identity == ReplicaIdentity::Full {
            format!(
                "a column list must keep every replica identity column, and {} has REPLICA \
                 IDENTITY FULL: give it a primary key (or REPLICA IDENTITY USING INDEX) first, \
                 then publish it with a column list",
                table.id.quoted()
            )
        } else {
            format!(
                "publish the table with a column list (a publication of listed tables, not FOR \
                 TABLES IN SCHEMA), before the first run: a table whose publication entry \
                 changes is copied again\n\
                 ALTER PUBLICATION {} DROP TABLE {};\n\
                 ALTER PUBLICATION {} ADD TABLE {} ({});",
                quote_ident(publication),
                table.id.quoted(),
                quote_ident(publication),
                table.id.quoted(),
                keep.join(", ")
            )
        };
        out.push(Finding::warning(message, fix));
    }
    Ok(())
}

/// The columns `publication` sends of `table`; `None` when it sends them all (no column list,
/// or a server without column lists).
async fn published_columns(
    client: &Client,
    publication: &str,
    table: &SourceTable,
    version: i32,
) -> crate::Result<Option<Vec<String>>> {
    if version < COLUMN_LISTS {
        return Ok(None);
    }
    let row = client
        .query_opt(
            "SELECT attnames::text[] FROM pg_publication_tables \
             WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
            &[&publication, &table.id.schema, &table.id.name],
        )
        .await
        .map_err(|e| {
            crate::Error::postgres(
                format!(
                    "read the columns publication {publication} sends of {}",
                    table.id
                ),
                e,
            )
        })?;
    Ok(row.and_then(|r| r.get::<_, Option<Vec<String>>>(0)))
}
