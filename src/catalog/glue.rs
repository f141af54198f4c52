//! The AWS Glue catalog: a table's pointer is its `metadata_location` parameter, and a commit is
//! `UpdateTable` with the `VersionId` read before it, so Glue refuses a commit that lost a race.
//! The rest of the Glue table (parameters set by people or other tools) is kept; its columns are
//! rewritten from the Iceberg schema so Athena and the Glue console show the table as it is.
//! Delta tables are registered here too ([`GlueCatalog::register_delta`]): a name for Athena's
//! native Delta reader, never their truth, which is their `_delta_log`.

use std::collections::{HashMap, HashSet};

use aws_sdk_glue::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_glue::types::{Column, DatabaseInput, StorageDescriptor, Table, TableInput};
use iceberg::spec::{NestedField, PrimitiveType, Schema, TableMetadata, Type};

use super::{Catalog, CatalogError, CatalogTable, Pointer, VersionToken};

/// Glue table parameters of Iceberg tables, shared with every other Iceberg writer (Java's
/// `GlueTableOperations`, pyiceberg, Athena).
const TABLE_TYPE: &str = "table_type";
const ICEBERG: &str = "ICEBERG";
const METADATA_LOCATION: &str = "metadata_location";
const PREVIOUS_METADATA_LOCATION: &str = "previous_metadata_location";
/// Column parameters that tie a Glue column to its Iceberg field.
const FIELD_ID: &str = "iceberg.field.id";
const FIELD_OPTIONAL: &str = "iceberg.field.optional";
const FIELD_CURRENT: &str = "iceberg.field.current";

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
        let retryable = match &error {
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => true,
            SdkError::ServiceError(service) => matches!(
                service.err().code(),
                Some(
                    "ThrottlingException"
                        | "InternalServiceException"
                        | "OperationTimeoutException"
                        | "ResourceNotReadyException"
                )
            ),
            _ => false,
        };
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

/// Glue columns of a Delta table: its top-level fields, in order, with Athena's type names.
fn delta_glue_columns(schema: &arrow::datatypes::Schema) -> Result<Vec<Column>, String> {
    schema
        .fields()
        .iter()
        .map(|field| {
            let ty = arrow_glue_type(field.data_type())
                .map_err(|e| format!("column {}: {e}", field.name()))?;
            Column::builder()
                .name(field.name())
                .r#type(ty)
                .build()
                .map_err(|e| format!("column {}: {e}", field.name()))
        })
        .collect()
}

/// The Hive/Athena type name of a Delta column's Arrow type, spelled as for Iceberg tables.
fn arrow_glue_type(ty: &arrow::datatypes::DataType) -> Result<String, String> {
    use arrow::datatypes::DataType as D;
    Ok(match ty {
        D::Boolean => "boolean".into(),
        D::Int8 => "tinyint".into(),
        D::Int16 => "smallint".into(),
        D::Int32 => "int".into(),
        D::Int64 => "bigint".into(),
        D::Float16 | D::Float32 => "float".into(),
        D::Float64 => "double".into(),
        D::Decimal128(p, s) | D::Decimal256(p, s) => format!("decimal({p},{s})"),
        D::Date32 | D::Date64 => "date".into(),
        D::Timestamp(_, _) => "timestamp".into(),
        D::Utf8 | D::LargeUtf8 | D::Utf8View => "string".into(),
        D::Binary | D::LargeBinary | D::BinaryView | D::FixedSizeBinary(_) => "binary".into(),
        D::List(item) | D::LargeList(item) | D::ListView(item) | D::FixedSizeList(item, _) => {
            format!("array<{}>", arrow_glue_type(item.data_type())?)
        }
        D::Map(entries, _) => match entries.data_type() {
            D::Struct(kv) if kv.len() == 2 => format!(
                "map<{},{}>",
                arrow_glue_type(kv[0].data_type())?,
                arrow_glue_type(kv[1].data_type())?
            ),
            other => return Err(format!("a map of {other} has no Glue type")),
        },
        D::Struct(fields) => {
            let inner = fields
                .iter()
                .map(|f| Ok(format!("{}:{}", f.name(), arrow_glue_type(f.data_type())?)))
                .collect::<Result<Vec<String>, String>>()?;
            format!("struct<{}>", inner.join(","))
        }
        other => return Err(format!("{other} has no Glue type")),
    })
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

/// Glue columns for the table: the current schema's top-level fields, then the fields older
/// schemas had and the current one dropped (marked not current), as the other Iceberg writers
/// register them, so a reader of Glue sees the column history too.
fn glue_columns(metadata: &TableMetadata) -> Result<Vec<Column>, String> {
    let current = metadata.current_schema();
    let mut columns = Vec::new();
    let mut seen = HashSet::new();
    for field in current.as_struct().fields() {
        seen.insert(field.name.clone());
        columns.push(glue_column(field, true)?);
    }
    // Newest schema first, so a dropped column shows the last type it had.
    let mut older: Vec<&Schema> = metadata
        .schemas_iter()
        .filter(|s| s.schema_id() != current.schema_id())
        .map(|s| s.as_ref())
        .collect();
    older.sort_by_key(|s| std::cmp::Reverse(s.schema_id()));
    for schema in older {
        for field in schema.as_struct().fields() {
            if seen.insert(field.name.clone()) {
                columns.push(glue_column(field, false)?);
            }
        }
    }
    Ok(columns)
}

fn glue_column(field: &NestedField, current: bool) -> Result<Column, String> {
    let parameters = HashMap::from([
        (FIELD_ID.to_string(), field.id.to_string()),
        (FIELD_OPTIONAL.to_string(), (!field.required).to_string()),
        (FIELD_CURRENT.to_string(), current.to_string()),
    ]);
    Column::builder()
        .name(&field.name)
        .r#type(glue_type(&field.field_type))
        .set_comment(field.doc.clone())
        .set_parameters(Some(parameters))
        .build()
        .map_err(|e| e.to_string())
}

/// The Hive/Athena type name of an Iceberg type, as Athena's DDL spells it. Types Athena has
/// no name for are shown as the closest one that reads the Parquet column: time and uuid as
/// string, fixed as binary; timestamps with a zone and nanosecond timestamps as timestamp.
/// (Athena reads an Iceberg table's data through its metadata; these names are for the Glue
/// console, crawlers and Hive-style readers.)
fn glue_type(ty: &Type) -> String {
    match ty {
        Type::Primitive(p) => match p {
            PrimitiveType::Boolean => "boolean".into(),
            PrimitiveType::Int => "int".into(),
            PrimitiveType::Long => "bigint".into(),
            PrimitiveType::Float => "float".into(),
            PrimitiveType::Double => "double".into(),
            PrimitiveType::Decimal { precision, scale } => format!("decimal({precision},{scale})"),
            PrimitiveType::Date => "date".into(),
            PrimitiveType::Timestamp
            | PrimitiveType::Timestamptz
            | PrimitiveType::TimestampNs
            | PrimitiveType::TimestamptzNs => "timestamp".into(),
            PrimitiveType::Time | PrimitiveType::String | PrimitiveType::Uuid => "string".into(),
            PrimitiveType::Fixed(_) | PrimitiveType::Binary => "binary".into(),
        },
        Type::List(list) => format!("array<{}>", glue_type(&list.element_field.field_type)),
        Type::Map(map) => format!(
            "map<{},{}>",
            glue_type(&map.key_field.field_type),
            glue_type(&map.value_field.field_type)
        ),
        Type::Struct(fields) => {
            let inner: Vec<String> = fields
                .fields()
                .iter()
                .map(|f| format!("{}:{}", f.name, glue_type(&f.field_type)))
                .collect();
            format!("struct<{}>", inner.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use iceberg::spec::{ListType, MapType, StructType};

    use super::*;

    fn primitive(p: PrimitiveType) -> Type {
        Type::Primitive(p)
    }

    #[test]
    fn iceberg_types_get_athena_names() {
        let cases = [
            (primitive(PrimitiveType::Boolean), "boolean"),
            (primitive(PrimitiveType::Int), "int"),
            (primitive(PrimitiveType::Long), "bigint"),
            (primitive(PrimitiveType::Float), "float"),
            (primitive(PrimitiveType::Double), "double"),
            (
                primitive(PrimitiveType::Decimal {
                    precision: 38,
                    scale: 9,
                }),
                "decimal(38,9)",
            ),
            (primitive(PrimitiveType::Date), "date"),
            (primitive(PrimitiveType::Time), "string"),
            (primitive(PrimitiveType::Timestamp), "timestamp"),
            (primitive(PrimitiveType::Timestamptz), "timestamp"),
            (primitive(PrimitiveType::TimestampNs), "timestamp"),
            (primitive(PrimitiveType::String), "string"),
            (primitive(PrimitiveType::Uuid), "string"),
            (primitive(PrimitiveType::Fixed(16)), "binary"),
            (primitive(PrimitiveType::Binary), "binary"),
        ];
        for (ty, name) in cases {
            assert_eq!(glue_type(&ty), name, "{ty:?}");
        }
    }

    #[test]
    fn delta_columns_get_the_names_iceberg_columns_get() {
        use arrow::datatypes::{DataType as D, Field, Schema as ArrowSchema, TimeUnit};
        let schema = ArrowSchema::new(vec![
            Field::new("id", D::Int64, false),
            Field::new("qty", D::Int32, true),
            Field::new("price", D::Decimal128(12, 2), true),
            Field::new("score", D::Float64, true),
            Field::new("ok", D::Boolean, true),
            Field::new("day", D::Date32, true),
            Field::new(
                "at",
                D::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("raw", D::Binary, true),
            Field::new(
                "tags",
                D::List(Arc::new(Field::new("element", D::Utf8, true))),
                true,
            ),
        ]);
        let columns = delta_glue_columns(&schema).expect("glue columns");
        let named: Vec<String> = columns
            .iter()
            .map(|c| format!("{}:{}", c.name(), c.r#type().unwrap_or("?")))
            .collect();
        assert_eq!(
            named,
            [
                "id:bigint",
                "qty:int",
                "price:decimal(12,2)",
                "score:double",
                "ok:boolean",
                "day:date",
                "at:timestamp",
                "raw:binary",
                "tags:array<string>",
            ]
        );
        let odd = ArrowSchema::new(vec![Field::new("gap", D::Duration(TimeUnit::Second), true)]);
        let error = delta_glue_columns(&odd).expect_err("no Glue type for a duration");
        assert!(error.contains("column gap"), "{error}");
    }

    #[test]
    fn nested_types_nest_their_names() {
        let list = Type::List(ListType::new(Arc::new(NestedField::list_element(
            3,
            primitive(PrimitiveType::Timestamptz),
            false,
        ))));
        assert_eq!(glue_type(&list), "array<timestamp>");
        let map = Type::Map(MapType::new(
            Arc::new(NestedField::map_key_element(
                4,
                primitive(PrimitiveType::String),
            )),
            Arc::new(NestedField::map_value_element(5, list.clone(), false)),
        ));
        assert_eq!(glue_type(&map), "map<string,array<timestamp>>");
        let record = Type::Struct(StructType::new(vec![
            Arc::new(NestedField::required(
                6,
                "id",
                primitive(PrimitiveType::Long),
            )),
            Arc::new(NestedField::optional(7, "tags", map)),
        ]));
        assert_eq!(
            glue_type(&record),
            "struct<id:bigint,tags:map<string,array<timestamp>>>"
        );
    }
}
