//! Before streaming: the publication and the slot exist, or are created when the config allows
//! it, or the run stops with the SQL that would create them. Nothing is created silently
//! against the config's wishes.

use tokio_postgres::Client;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::source::schema;
use crate::table::{TableId, quote_ident, quote_literal};

/// What [`ensure_publication`] and [`slot_state`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// It was there.
    Existing,
    /// It was missing and lakewriter created it.
    Created,
    /// It is missing and will be created by the caller (the slot, which the initial snapshot
    /// creates to export its snapshot).
    Missing,
}

/// Makes sure the publication exists: creates it for the selected tables when
/// `create_publication` is set, else fails naming the SQL that creates it.
pub async fn ensure_publication(client: &Client, config: &Config) -> Result<Readiness> {
    let name = &config.source.publication;
    let exists = client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[name])
        .await
        .map_err(|e| Error::postgres(format!("look up publication {name}"), e))?
        .is_some();
    if exists {
        return Ok(Readiness::Existing);
    }
    let tables = schema::selected_tables(client, config).await?;
    let list = tables
        .iter()
        .map(TableId::quoted)
        .collect::<Vec<_>>()
        .join(", ");
    let create = if tables.is_empty() {
        format!("CREATE PUBLICATION {} FOR ALL TABLES", quote_ident(name))
    } else {
        format!("CREATE PUBLICATION {} FOR TABLE {list}", quote_ident(name))
    };
    if !config.source.create_publication {
        return Err(Error::Source {
            message: format!(
                "publication {name} does not exist: create it with `{create};` \
                 (or set [source] create_publication = true)"
            ),
        });
    }
    if tables.is_empty() {
        return Err(Error::Source {
            message: format!(
                "publication {name} does not exist and no table matches [source] include: \
                 nothing to publish"
            ),
        });
    }
    client
        .batch_execute(&create)
        .await
        .map_err(|e| Error::postgres(format!("create publication {name}"), e))?;
    tracing::info!(publication = %name, tables = tables.len(), "publication created");
    Ok(Readiness::Created)
}

/// Whether the slot exists with pgoutput in this database; fails clearly when it exists in a
/// form lakewriter cannot use, or is missing and may not be created.
pub async fn slot_state(client: &Client, config: &Config) -> Result<Readiness> {
    let slot = &config.source.slot;
    let row = client
        .query_opt(
            "SELECT coalesce(plugin::text, ''), database::text FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[slot],
        )
        .await
        .map_err(|e| Error::postgres(format!("look up replication slot {slot}"), e))?;
    match row {
        Some(row) => {
            let (plugin, database): (String, Option<String>) = (row.get(0), row.get(1));
            if plugin != "pgoutput" {
                return Err(Error::Source {
                    message: format!(
                        "slot {slot} uses the {plugin:?} plugin, not pgoutput: choose another \
                         [source] slot, or drop it with `SELECT pg_drop_replication_slot({});`",
                        quote_literal(slot)
                    ),
                });
            }
            if database.as_deref() != Some(config.source.database.as_str()) {
                return Err(Error::Source {
                    message: format!(
                        "slot {slot} belongs to database {}, not {}: choose another [source] slot",
                        database.as_deref().unwrap_or("(none)"),
                        config.source.database
                    ),
                });
            }
            Ok(Readiness::Existing)
        }
        None if config.source.create_slot => Ok(Readiness::Missing),
        None => Err(Error::Source {
            message: format!(
                "slot {slot} does not exist: create it with \
                 `SELECT pg_create_logical_replication_slot({}, 'pgoutput');` \
                 (or set [source] create_slot = true)",
                quote_literal(slot)
            ),
        }),
    }
}
