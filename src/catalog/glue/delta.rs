//! Delta tables in Glue: a name for Athena's native Delta reader (and Spark's data source),
//! never their truth, which is their `_delta_log`.

use aws_sdk_glue::types::{Column, StorageDescriptor, Table};

use super::columns::delta_glue_columns;
use super::{GlueCatalog, TABLE_TYPE, kept_table_input};
use crate::catalog::{Catalog, CatalogError, CatalogTable};

/// Glue table parameters of Delta tables: Athena's native Delta reader looks for
/// `table_type = DELTA`, Spark (EMR, Glue jobs) for the data source provider.
const DELTA: &str = "DELTA";
const SPARK_PROVIDER: &str = "spark.sql.sources.provider";
const SPARK_DELTA: &str = "delta";
/// How often a registration that lost a VersionId race to another writer is read and tried
/// again; registering is idempotent, so trying again is always right.
const DELTA_REGISTER_ATTEMPTS: u32 = 5;

impl GlueCatalog {
    /// Registers the Delta table whose root is `location` as `table` (its database created
    /// when missing), with the columns of `schema`, the table's current Delta schema. A Glue
    /// table that already says so is left alone; one whose columns or location differ is
    /// updated by compare-and-swap on its `VersionId`, keeping every other parameter. Answers
    /// whether Glue changed. The Delta log stays the table's truth: Glue only names it.
    pub async fn register_delta(
        &self,
        table: &CatalogTable,
        location: &str,
        schema: &arrow::datatypes::Schema,
    ) -> Result<bool, CatalogError> {
        let columns = delta_glue_columns(schema)
            .map_err(|e| self.input_error(format!("describe table {table}"), e))?;
        self.ensure_namespace(&table.namespace).await?;
        for _ in 0..DELTA_REGISTER_ATTEMPTS {
            match self.get_table(table).await? {
                None => {
                    if self.create_delta(table, location, &columns).await? {
                        return Ok(true);
                    }
                    // created by another writer meanwhile: compare with what it registered
                }
                Some(current) => {
                    match current.parameters.as_ref().and_then(|p| p.get(TABLE_TYPE)) {
                        Some(kind) if !kind.eq_ignore_ascii_case(DELTA) => {
                            return Err(self.input_error(
                                format!("register table {table}"),
                                format!(
                                    "the Glue table is not a Delta table: its parameter                                      {TABLE_TYPE} is {kind:?}"
                                ),
                            ));
                        }
                        _ => {}
                    }
                    if delta_registered(&current, location, &columns) {
                        return Ok(false);
                    }
                    if self
                        .update_delta(table, &current, location, &columns)
                        .await?
                    {
                        return Ok(true);
                    }
                    // another writer updated it meanwhile: read again
                }
            }
        }
        Err(CatalogError::TooManyConflicts {
            catalog: self.describe.clone(),
            table: table.clone(),
            attempts: DELTA_REGISTER_ATTEMPTS,
        })
    }

    /// Creates the Glue table of a Delta table; `false` when the name was taken meanwhile.
    async fn create_delta(
        &self,
        table: &CatalogTable,
        location: &str,
        columns: &[Column],
    ) -> Result<bool, CatalogError> {
        let parameters = [
            (TABLE_TYPE, DELTA),
            (SPARK_PROVIDER, SPARK_DELTA),
            ("EXTERNAL", "TRUE"),
        ];
        match self
            .create_external(table, location, columns.to_vec(), &parameters)
            .await
        {
            Ok(()) => {
                tracing::info!(catalog = %self.describe, table = %table, location, "registered delta table");
                Ok(true)
            }
            Err(CatalogError::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Updates the Glue table of a Delta table to `columns` and `location` if it is still at
    /// the version `current` was read at; `false` when another writer moved it.
    async fn update_delta(
        &self,
        table: &CatalogTable,
        current: &Table,
        location: &str,
        columns: &[Column],
    ) -> Result<bool, CatalogError> {
        let version = current
            .version_id
            .clone()
            .ok_or_else(|| CatalogError::Glue {
                catalog: self.describe.clone(),
                context: format!("get table {table}"),
                message: "the answer has no VersionId, so an update could not be checked".into(),
                retryable: false,
            })?;
        let mut parameters = current.parameters.clone().unwrap_or_default();
        parameters.insert(TABLE_TYPE.into(), DELTA.into());
        parameters.insert(SPARK_PROVIDER.into(), SPARK_DELTA.into());
        let mut storage = current
            .storage_descriptor
            .clone()
            .unwrap_or_else(|| StorageDescriptor::builder().build());
        storage.columns = Some(columns.to_vec());
        storage.location = Some(location.to_string());
        let input = kept_table_input(current, storage, parameters)
            .map_err(|e| self.input_error(format!("describe table {table}"), e))?;
        let updated = self
            .client
            .update_table()
            .set_catalog_id(self.catalog_id.clone())
            .database_name(&table.namespace)
            .table_input(input)
            .version_id(version)
            .skip_archive(true)
            .send()
            .await;
        match updated {
            Ok(_) => {
                tracing::info!(catalog = %self.describe, table = %table, "updated delta table's registration");
                Ok(true)
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_concurrent_modification_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(self.glue_error(format!("update table {table}"), e)),
        }
    }
}

/// Whether the Glue table already registers the Delta table at `location` with `columns`.
fn delta_registered(current: &Table, location: &str, columns: &[Column]) -> bool {
    let parameter = |key: &str| current.parameters.as_ref().and_then(|p| p.get(key));
    let storage = current.storage_descriptor.as_ref();
    let registered: Vec<(&str, Option<&str>)> = storage
        .map(|s| s.columns())
        .unwrap_or_default()
        .iter()
        .map(|c| (c.name(), c.r#type()))
        .collect();
    let wanted: Vec<(&str, Option<&str>)> =
        columns.iter().map(|c| (c.name(), c.r#type())).collect();
    parameter(TABLE_TYPE).is_some_and(|t| t.eq_ignore_ascii_case(DELTA))
        && parameter(SPARK_PROVIDER).is_some_and(|p| p == SPARK_DELTA)
        && storage.and_then(|s| s.location()) == Some(location)
        && registered == wanted
}
