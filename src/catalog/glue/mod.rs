//! The AWS Glue catalog: a table's pointer is its `metadata_location` parameter, and a commit is
//! `UpdateTable` with the `VersionId` read before it, so Glue refuses a commit that lost a race.
//! The rest of the Glue table (parameters set by people or other tools) is kept; its columns are
//! rewritten from the Iceberg schema so Athena and the Glue console show the table as it is.
//! Delta tables are registered here too ([`GlueCatalog::register_delta`], in `delta`): a name
//! for Athena's native Delta reader, never their truth, which is their `_delta_log`. `columns`
//! maps both formats' schemas to the Glue columns Athena reads.

use std::collections::HashMap;

use aws_sdk_glue::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_glue::types::{Column, DatabaseInput, StorageDescriptor, Table, TableInput};
use iceberg::spec::TableMetadata;

use self::columns::glue_columns;
use super::{Catalog, CatalogError, CatalogTable, Pointer, VersionToken};

/// Glue table parameters of Iceberg tables, shared with every other Iceberg writer (Java's
/// `GlueTableOperations`, pyiceberg, Athena).
mod columns;
mod delta;

const TABLE_TYPE: &str = "table_type";
const ICEBERG: &str = "ICEBERG";
const METADATA_LOCATION: &str = "metadata_location";
const PREVIOUS_METADATA_LOCATION: &str = "previous_metadata_location";

/// A catalog in AWS Glue (or a server that speaks its API). Namespaces are Glue databases.
#[derive(Debug, Clone)]
pub struct GlueCatalog {
    client: aws_sdk_glue::Client,
    catalog_id: Option<String>,
    describe: String,
}

impl GlueCatalog {
    /// A catalog over `client`; `catalog_id` names a Data Catalog in another account
    /// (default: the caller's).
    pub fn new(client: aws_sdk_glue::Client, catalog_id: Option<String>) -> GlueCatalog {
        let describe = match &catalog_id {
            Some(id) => format!("glue catalog {id}"),
            None => "glue catalog".to_string(),
        };
        GlueCatalog {
            client,
            catalog_id,
            describe,
        }
    }

    fn glue_error<E>(&self, context: String, error: SdkError<E>) -> CatalogError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let retryable = super::aws_transient(
            &error,
            &[
                "ThrottlingException",
                "InternalServiceException",
                "OperationTimeoutException",
                "ResourceNotReadyException",
            ],
        );
        CatalogError::Glue {
            catalog: self.describe.clone(),
            context,
            message: DisplayErrorContext(&error).to_string(),
            retryable,
        }
    }

    fn not_found(&self, table: &CatalogTable) -> CatalogError {
        CatalogError::TableNotFound {
            catalog: self.describe.clone(),
            table: table.clone(),
        }
    }

    /// The Glue table, `None` when it does not exist.
    async fn get_table(&self, table: &CatalogTable) -> Result<Option<Table>, CatalogError> {
        let answer = self
            .client
            .get_table()
            .set_catalog_id(self.catalog_id.clone())
            .database_name(&table.namespace)
            .name(&table.name)
            .send()
            .await;
        match answer {
            Ok(output) => Ok(output.table),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_entity_not_found_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(self.glue_error(format!("get table {table}"), e)),
        }
    }

    /// The pointer of a Glue table, refusing tables that are not Iceberg tables.
    fn pointer(&self, table: &CatalogTable, glue: &Table) -> Result<Pointer, CatalogError> {
        let not_iceberg = |message: String| CatalogError::NotIceberg {
            catalog: self.describe.clone(),
            table: table.clone(),
            message,
        };
        let parameters = glue.parameters.as_ref();
        let parameter = |key: &str| parameters.and_then(|p| p.get(key));
        match parameter(TABLE_TYPE) {
            Some(kind) if kind.eq_ignore_ascii_case(ICEBERG) => {}
            other => {
                return Err(not_iceberg(format!(
                    "its parameter {TABLE_TYPE} is {other:?}, not {ICEBERG:?}"
                )));
            }
        }
        let location = parameter(METADATA_LOCATION)
            .ok_or_else(|| not_iceberg(format!("it has no {METADATA_LOCATION} parameter")))?;
        // Without a version the swap cannot be compared; Glue always returns one.
        let version = glue.version_id.clone().ok_or_else(|| CatalogError::Glue {
            catalog: self.describe.clone(),
            context: format!("get table {table}"),
            message: "the answer has no VersionId, so a commit could not be checked".into(),
            retryable: false,
        })?;
        Ok(Pointer {
            metadata_location: location.clone(),
            previous_metadata_location: parameter(PREVIOUS_METADATA_LOCATION).cloned(),
            token: VersionToken(version),
        })
    }

    /// A request that could not be built: a bug or a name Glue cannot hold, never transient.
    fn input_error(&self, context: String, error: impl std::fmt::Display) -> CatalogError {
        CatalogError::Glue {
            catalog: self.describe.clone(),
            context,
            message: error.to_string(),
            retryable: false,
        }
    }
}

impl GlueCatalog {
    /// Creates an `EXTERNAL_TABLE` at `location` with `columns` and table `parameters`.
    async fn create_external(
        &self,
        table: &CatalogTable,
        location: &str,
        columns: Vec<Column>,
        parameters: &[(&str, &str)],
    ) -> Result<(), CatalogError> {
        let storage = StorageDescriptor::builder()
            .location(location)
            .set_columns(Some(columns))
            .build();
        let mut input = TableInput::builder()
            .name(&table.name)
            .table_type("EXTERNAL_TABLE")
            .storage_descriptor(storage);
        for (key, value) in parameters {
            input = input.parameters(*key, *value);
        }
        let input = input
            .build()
            .map_err(|e| self.input_error(format!("describe table {table}"), e))?;
        let created = self
            .client
            .create_table()
            .set_catalog_id(self.catalog_id.clone())
            .database_name(&table.namespace)
            .table_input(input)
            .send()
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_already_exists_exception()) =>
            {
                Err(CatalogError::AlreadyExists {
                    catalog: self.describe.clone(),
                    table: table.clone(),
                })
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_entity_not_found_exception()) =>
            {
                Err(CatalogError::NamespaceNotFound {
                    catalog: self.describe.clone(),
                    namespace: table.namespace.clone(),
                })
            }
            Err(e) => Err(self.glue_error(format!("create table {table}"), e)),
        }
    }
}

impl Catalog for GlueCatalog {
    fn describe(&self) -> &str {
        &self.describe
    }

    async fn ensure_namespace(&self, namespace: &str) -> Result<(), CatalogError> {
        // Read first: a role may be allowed glue:GetDatabase but not glue:CreateDatabase, and
        // a database made by the platform team is then fine.
        let got = self
            .client
            .get_database()
            .set_catalog_id(self.catalog_id.clone())
            .name(namespace)
            .send()
            .await;
        match got {
            Ok(_) => return Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_entity_not_found_exception()) => {}
            Err(e) => return Err(self.glue_error(format!("get database {namespace}"), e)),
        }
        let input = DatabaseInput::builder()
            .name(namespace)
            .build()
            .map_err(|e| self.input_error(format!("create database {namespace}"), e))?;
        let created = self
            .client
            .create_database()
            .set_catalog_id(self.catalog_id.clone())
            .database_input(input)
            .send()
            .await;
        match created {
            Ok(_) => Ok(()),
            // Another writer created it meanwhile: the outcome asked for.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_already_exists_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(self.glue_error(format!("create database {namespace}"), e)),
        }
    }

    async fn load(&self, table: &CatalogTable) -> Result<Option<Pointer>, CatalogError> {
        match self.get_table(table).await? {
            Some(glue) => self.pointer(table, &glue).map(Some),
            None => Ok(None),
        }
    }

    async fn create(
        &self,
        table: &CatalogTable,
        metadata_location: &str,
        metadata: &TableMetadata,
    ) -> Result<Pointer, CatalogError> {
        let columns = glue_columns(metadata)
            .map_err(|e| self.input_error(format!("describe table {table}"), e))?;
        // What Athena and the Java writer register Iceberg tables as.
        self.create_external(
            table,
            metadata.location(),
            columns,
            &[
                (TABLE_TYPE, ICEBERG),
                (METADATA_LOCATION, metadata_location),
            ],
        )
        .await?;
        // CreateTable does not answer with the version; read it back.
        let glue = self
            .get_table(table)
            .await?
            .ok_or_else(|| self.not_found(table))?;
        self.pointer(table, &glue)
    }

    async fn commit(
        &self,
        table: &CatalogTable,
        expected: &Pointer,
        new_metadata_location: &str,
        metadata: &TableMetadata,
    ) -> Result<Pointer, CatalogError> {
        let conflict = || CatalogError::Conflict {
            catalog: self.describe.clone(),
            table: table.clone(),
            expected: expected.metadata_location.clone(),
        };
        // The whole table is read so UpdateTable (which replaces it) keeps what others set.
        let current = self
            .get_table(table)
            .await?
            .ok_or_else(|| self.not_found(table))?;
        let now = self.pointer(table, &current)?;
        // Fail early when the table has already moved; the VersionId check below is what
        // makes the commit safe against a move after this read.
        if now.token != expected.token || now.metadata_location != expected.metadata_location {
            return Err(conflict());
        }
        let input = commit_input(
            &current,
            &expected.metadata_location,
            new_metadata_location,
            metadata,
        )
        .map_err(|e| self.input_error(format!("describe table {table}"), e))?;
        let updated = self
            .client
            .update_table()
            .set_catalog_id(self.catalog_id.clone())
            .database_name(&table.namespace)
            .table_input(input)
            .version_id(expected.token.as_str())
            // Glue would otherwise archive a table version per commit, and it caps versions per
            // table; the history that matters is in the Iceberg metadata.
            .skip_archive(true)
            .send()
            .await;
        match updated {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_concurrent_modification_exception()) =>
            {
                return Err(conflict());
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_entity_not_found_exception()) =>
            {
                return Err(self.not_found(table));
            }
            Err(e) => return Err(self.glue_error(format!("commit table {table}"), e)),
        }
        tracing::debug!(
            catalog = %self.describe,
            table = %table,
            metadata = %new_metadata_location,
            "committed"
        );
        // UpdateTable does not answer with the new version; read it back. If another writer
        // committed in between, its version is not ours to hand out: keep the version we
        // replaced, which is stale, so the caller's next commit conflicts and reloads.
        let after = self.get_table(table).await?;
        let after = after.map(|glue| self.pointer(table, &glue)).transpose()?;
        Ok(match after {
            Some(pointer) if pointer.metadata_location == new_metadata_location => pointer,
            _ => Pointer {
                metadata_location: new_metadata_location.to_string(),
                previous_metadata_location: Some(expected.metadata_location.clone()),
                token: expected.token.clone(),
            },
        })
    }

    async fn list(&self, namespace: &str) -> Result<Vec<CatalogTable>, CatalogError> {
        let mut tables = Vec::new();
        let mut next_token = None;
        loop {
            let page = self
                .client
                .get_tables()
                .set_catalog_id(self.catalog_id.clone())
                .database_name(namespace)
                .set_next_token(next_token)
                .send()
                .await;
            let page = match page {
                Ok(page) => page,
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_entity_not_found_exception()) =>
                {
                    return Ok(Vec::new());
                }
                Err(e) => return Err(self.glue_error(format!("list database {namespace}"), e)),
            };
            for glue in page.table_list.unwrap_or_default() {
                let iceberg = glue
                    .parameters
                    .as_ref()
                    .and_then(|p| p.get(TABLE_TYPE))
                    .is_some_and(|t| t.eq_ignore_ascii_case(ICEBERG));
                if iceberg {
                    tables.push(CatalogTable::new(namespace, glue.name));
                }
            }
            next_token = page.next_token.filter(|t| !t.is_empty());
            if next_token.is_none() {
                break;
            }
        }
        tables.sort();
        Ok(tables)
    }

    async fn drop_table(&self, table: &CatalogTable) -> Result<bool, CatalogError> {
        let deleted = self
            .client
            .delete_table()
            .set_catalog_id(self.catalog_id.clone())
            .database_name(&table.namespace)
            .name(&table.name)
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_entity_not_found_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(self.glue_error(format!("drop table {table}"), e)),
        }
    }
}

/// The `UpdateTable` input of a commit: the current table with only the pointer parameters,
/// the columns and the location changed. (`TableInput` holds the fields a caller may set;
/// those Glue maintains itself — create time, version, owner account — stay as they are.)
fn commit_input(
    current: &Table,
    previous_location: &str,
    new_location: &str,
    metadata: &TableMetadata,
) -> Result<TableInput, String> {
    let mut parameters = current.parameters.clone().unwrap_or_default();
    parameters.insert(TABLE_TYPE.into(), ICEBERG.into());
    parameters.insert(METADATA_LOCATION.into(), new_location.into());
    parameters.insert(PREVIOUS_METADATA_LOCATION.into(), previous_location.into());
    let mut storage = current
        .storage_descriptor
        .clone()
        .unwrap_or_else(|| StorageDescriptor::builder().build());
    storage.columns = Some(glue_columns(metadata)?);
    storage.location = Some(metadata.location().to_string());
    kept_table_input(current, storage, parameters)
}

/// The `TableInput` that replaces `current` with `storage` and `parameters`, keeping the
/// fields a caller may set as they are.
fn kept_table_input(
    current: &Table,
    storage: StorageDescriptor,
    parameters: HashMap<String, String>,
) -> Result<TableInput, String> {
    TableInput::builder()
        .name(&current.name)
        .set_description(current.description.clone())
        .set_owner(current.owner.clone())
        .set_last_access_time(current.last_access_time)
        .set_last_analyzed_time(current.last_analyzed_time)
        .retention(current.retention)
        .storage_descriptor(storage)
        .set_partition_keys(current.partition_keys.clone())
        .set_view_original_text(current.view_original_text.clone())
        .set_view_expanded_text(current.view_expanded_text.clone())
        .set_table_type(current.table_type.clone())
        .set_parameters(Some(parameters))
        .set_target_table(current.target_table.clone())
        .build()
        .map_err(|e| e.to_string())
}
