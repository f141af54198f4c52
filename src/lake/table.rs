//! What the lake layer answers with, whatever the format: a [`LakeTable`] and the names
//! DataFusion knows it by.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::common::TableReference;
use datafusion::prelude::SessionContext;

use crate::catalog::CatalogTable;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::lsn::Lsn;

/// One lake table as DataFusion reads it.
#[derive(Debug, Clone)]
pub struct LakeTable {
    /// Its name in the catalog (for Delta, its directory under the namespace).
    pub name: CatalogTable,
    /// The metadata file the catalog points at (for Delta, the log entry of the version read).
    pub metadata_location: String,
    /// The checkpoint its current snapshot (Delta: its `txn` action) carries.
    pub checkpoint: Option<Lsn>,
    /// The names of its key (identifier) columns; empty for Delta, which has none.
    pub key: Vec<String>,
    /// Its columns, as Arrow (the current schema).
    pub schema: SchemaRef,
    /// Live data files.
    pub data_files: usize,
    /// Live delete files, equality and position (none in Delta).
    pub delete_files: usize,
}

/// Makes `schemas` the namespace of `config` in the session's default catalog, so that SQL
/// names the tables `namespace.table` (or by table alone).
pub(crate) fn register_namespace(
    ctx: &SessionContext,
    config: &Config,
    schemas: MemorySchemaProvider,
) -> Result<()> {
    let default_catalog = ctx
        .catalog(&ctx.state().config().options().catalog.default_catalog)
        .ok_or_else(|| Error::Sink {
            table: config.sink.namespace.clone(),
            message: "DataFusion has no default catalog".into(),
            retryable: false,
        })?;
    default_catalog
        .register_schema(&config.sink.namespace, Arc::new(schemas))
        .map_err(|e| Error::Sink {
            table: config.sink.namespace.clone(),
            message: format!("register the namespace in DataFusion: {e}"),
            retryable: false,
        })?;
    Ok(())
}

/// The reference of `table` in a [`session`].
pub fn reference(table: &CatalogTable) -> TableReference {
    TableReference::partial(table.namespace.clone(), table.name.clone())
}
