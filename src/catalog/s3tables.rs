//! Amazon S3 Tables: tables in a table bucket, each with its own storage (`warehouseLocation`,
//! chosen by the service), whose pointer is the metadata location `UpdateTableMetadataLocation`
//! swaps, guarded by the `versionToken` read with it. A token that moved means another writer,
//! or the bucket's own maintenance (compaction, snapshot management), committed: the commit is
//! refused as a conflict, and the sink reloads, rebases and retries as it does for Glue.
//!
//! A table is created in two steps: `CreateTable` (format ICEBERG, no metadata yet) reserves
//! the table and its storage, the sink writes the first metadata file there, and
//! `UpdateTableMetadataLocation` makes it the table's. A table reserved and never given
//! metadata (a crash between the two) loads as absent, and its storage is reused.

use aws_sdk_s3tables::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3tables::types::OpenTableFormat;
use iceberg::spec::TableMetadata;

use super::{Catalog, CatalogError, CatalogTable, Pointer, VersionToken};

/// A catalog in one S3 table bucket. Namespaces are the bucket's namespaces.
#[derive(Debug, Clone)]
pub struct S3TablesCatalog {
    client: aws_sdk_s3tables::Client,
    bucket: String,
    describe: String,
}

impl S3TablesCatalog {
    /// A catalog over the table bucket `table_bucket_arn`.
    pub fn new(client: aws_sdk_s3tables::Client, table_bucket_arn: &str) -> S3TablesCatalog {
        S3TablesCatalog {
            client,
            bucket: table_bucket_arn.to_string(),
            describe: format!("s3tables catalog {table_bucket_arn}"),
        }
    }

    fn error<E>(&self, context: String, error: SdkError<E>) -> CatalogError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let retryable = super::aws_transient(
            &error,
            &["TooManyRequestsException", "InternalServerErrorException"],
        );
        CatalogError::S3Tables {
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

    fn code<E: ProvideErrorMetadata, R>(error: &SdkError<E, R>) -> Option<&str> {
        error.as_service_error().and_then(|e| e.code())
    }

    /// The table's version token, metadata location (`None` before its first commit) and
    /// storage; `None` when the table does not exist.
    async fn get(
        &self,
        table: &CatalogTable,
    ) -> Result<Option<(String, Option<String>, String)>, CatalogError> {
        let answer = self
            .client
            .get_table_metadata_location()
            .table_bucket_arn(&self.bucket)
            .namespace(&table.namespace)
            .name(&table.name)
            .send()
            .await;
        match answer {
            Ok(output) => Ok(Some((
                output.version_token().to_string(),
                output.metadata_location().map(str::to_string),
                output.warehouse_location().to_string(),
            ))),
            Err(e) if Self::code(&e) == Some("NotFoundException") => Ok(None),
            Err(e) => Err(self.error(format!("get the metadata location of {table}"), e)),
        }
    }

    /// Swaps `table`'s metadata location to `location` if its token is still `token`.
    async fn swap(
        &self,
        table: &CatalogTable,
        token: &str,
        expected: Option<&str>,
        location: &str,
    ) -> Result<Pointer, CatalogError> {
        let answer = self
            .client
            .update_table_metadata_location()
            .table_bucket_arn(&self.bucket)
            .namespace(&table.namespace)
            .name(&table.name)
            .version_token(token)
            .metadata_location(location)
            .send()
            .await;
        match answer {
            Ok(output) => Ok(Pointer {
                metadata_location: output.metadata_location().to_string(),
                previous_metadata_location: expected.map(str::to_string),
                token: VersionToken(output.version_token().to_string()),
            }),
            Err(e) if Self::code(&e) == Some("ConflictException") => Err(CatalogError::Conflict {
                catalog: self.describe.clone(),
                table: table.clone(),
                expected: expected.unwrap_or("(none)").to_string(),
            }),
            Err(e) if Self::code(&e) == Some("NotFoundException") => Err(self.not_found(table)),
            Err(e) => Err(self.error(format!("update the metadata location of {table}"), e)),
        }
    }
}

impl Catalog for S3TablesCatalog {
    fn describe(&self) -> &str {
        &self.describe
    }

    async fn ensure_namespace(&self, namespace: &str) -> Result<(), CatalogError> {
        let exists = self
            .client
            .get_namespace()
            .table_bucket_arn(&self.bucket)
            .namespace(namespace)
            .send()
            .await;
        match exists {
            Ok(_) => return Ok(()),
            Err(e) if Self::code(&e) == Some("NotFoundException") => {}
            Err(e) => return Err(self.error(format!("get namespace {namespace}"), e)),
        }
        let created = self
            .client
            .create_namespace()
            .table_bucket_arn(&self.bucket)
            .namespace(namespace)
            .send()
            .await;
        match created {
            Ok(_) => Ok(()),
            // another writer created it meanwhile
            Err(e) if Self::code(&e) == Some("ConflictException") => Ok(()),
            Err(e) => Err(self.error(format!("create namespace {namespace}"), e)),
        }
    }

    async fn load(&self, table: &CatalogTable) -> Result<Option<Pointer>, CatalogError> {
        Ok(self.get(table).await?.and_then(|(token, location, _)| {
            location.map(|metadata_location| Pointer {
                metadata_location,
                previous_metadata_location: None,
                token: VersionToken(token),
            })
        }))
    }

    async fn table_location(&self, table: &CatalogTable) -> Result<Option<String>, CatalogError> {
        if let Some((_, _, storage)) = self.get(table).await? {
            return Ok(Some(storage));
        }
        let created = self
            .client
            .create_table()
            .table_bucket_arn(&self.bucket)
            .namespace(&table.namespace)
            .name(&table.name)
            .format(OpenTableFormat::Iceberg)
            .send()
            .await;
        match created {
            Ok(_) => {}
            // another writer reserved it meanwhile: its storage is the table's
            Err(e) if Self::code(&e) == Some("ConflictException") => {}
            Err(e) => return Err(self.error(format!("create table {table}"), e)),
        }
        match self.get(table).await? {
            Some((_, _, storage)) => Ok(Some(storage.trim_end_matches('/').to_string())),
            None => Err(self.not_found(table)),
        }
    }

    async fn create(
        &self,
        table: &CatalogTable,
        metadata_location: &str,
        _metadata: &TableMetadata,
    ) -> Result<Pointer, CatalogError> {
        let Some((token, current, _)) = self.get(table).await? else {
            return Err(self.not_found(table));
        };
        if current.is_some() {
            return Err(CatalogError::AlreadyExists {
                catalog: self.describe.clone(),
                table: table.clone(),
            });
        }
        match self.swap(table, &token, None, metadata_location).await {
            // the token moved: another writer gave the table its first metadata
            Err(CatalogError::Conflict { .. }) => Err(CatalogError::AlreadyExists {
                catalog: self.describe.clone(),
                table: table.clone(),
            }),
            other => other,
        }
    }

    async fn commit(
        &self,
        table: &CatalogTable,
        expected: &Pointer,
        new_metadata_location: &str,
        _metadata: &TableMetadata,
    ) -> Result<Pointer, CatalogError> {
        self.swap(
            table,
            expected.token.as_str(),
            Some(&expected.metadata_location),
            new_metadata_location,
        )
        .await
    }

    async fn list(&self, namespace: &str) -> Result<Vec<CatalogTable>, CatalogError> {
        let mut tables = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let answer = self
                .client
                .list_tables()
                .table_bucket_arn(&self.bucket)
                .namespace(namespace)
                .set_continuation_token(token.clone())
                .send()
                .await;
            let page = match answer {
                Ok(page) => page,
                Err(e) if Self::code(&e) == Some("NotFoundException") => return Ok(Vec::new()),
                Err(e) => return Err(self.error(format!("list tables of {namespace}"), e)),
            };
            for summary in page.tables() {
                tables.push(CatalogTable::new(namespace, summary.name()));
            }
            token = page.continuation_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        tables.sort();
        Ok(tables)
    }

    async fn drop_table(&self, table: &CatalogTable) -> Result<bool, CatalogError> {
        let answer = self
            .client
            .delete_table()
            .table_bucket_arn(&self.bucket)
            .namespace(&table.namespace)
            .name(&table.name)
            .send()
            .await;
        match answer {
            Ok(_) => Ok(true),
            Err(e) if Self::code(&e) == Some("NotFoundException") => Ok(false),
            Err(e) => Err(self.error(format!("delete table {table}"), e)),
        }
    }
}
