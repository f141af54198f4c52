//! The lake's Delta tables as DataFusion tables: each table's latest version through
//! deltalake's own table provider (its log replayed, its files pruned by their statistics),
//! registered as `namespace.table` like the Iceberg tables of [`super::iceberg`].
//!
//! Delta has no identifier fields, so a [`LakeTable`] of a Delta table has no key of its own:
//! `verify` takes the key from the source, as the sink does when it merges.

use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::prelude::SessionContext;

use super::table::{LakeTable, register_namespace};
use crate::catalog::CatalogTable;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::sink::delta::{DeltaSettings, tables};

/// A DataFusion session over the Delta tables of `config`'s namespace (only `only` when
/// given), each registered as `namespace.table`; the session and the tables it registered.
pub(crate) async fn session(
    config: &Config,
    only: Option<&CatalogTable>,
) -> Result<(SessionContext, Vec<LakeTable>)> {
    let settings = DeltaSettings::from_config(config)?;
    let names = match only {
        Some(table) => vec![table.clone()],
        None => tables::list(config, &settings).await?,
    };
    let ctx = deltalake::delta_datafusion::create_session().into_inner();
    let schemas = MemorySchemaProvider::new();
    let mut registered = Vec::new();
    for name in names {
        let table = match only {
            Some(_) => tables::open_existing(&settings, &name).await?,
            None => match tables::open(&settings, &name).await? {
                Some(table) => table,
                // removed since it was listed
                None => continue,
            },
        };
        let register_error = |e: String| Error::Sink {
            table: name.to_string(),
            message: format!("register in DataFusion: {e}"),
            retryable: false,
        };
        table
            .update_datafusion_session(&ctx.state())
            .map_err(|e| register_error(e.to_string()))?;
        let provider = table
            .table_provider()
            .await
            .map_err(|e| register_error(e.to_string()))?;
        let snapshot = table.snapshot().map_err(|e| Error::Sink {
            table: name.to_string(),
            message: format!("read the table's state: {e}"),
            retryable: true,
        })?;
        let version = snapshot.version();
        let data_files = snapshot.log_data().into_iter().count();
        registered.push(LakeTable {
            name: name.clone(),
            metadata_location: format!(
                "{}/_delta_log/{version:020}.json",
                settings.table_location(&name)
            ),
            checkpoint: tables::checkpoint(&name, &table).await?,
            key: Vec::new(),
            schema: provider.schema(),
            data_files,
            delete_files: 0,
        });
        schemas
            .register_table(name.name.clone(), provider)
            .map_err(|e| register_error(e.to_string()))?;
    }
    register_namespace(&ctx, config, schemas)?;
    Ok((ctx, registered))
}
