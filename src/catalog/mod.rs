//! The catalog: the pointer from a lake table's name to its current Iceberg metadata file, and
//! nothing else. Every change to a table is one compare-and-swap of that pointer (DESIGN.md,
//! invariant 9), against AWS Glue ([`GlueCatalog`]), a local SQLite file ([`SqliteCatalog`]),
//! Amazon S3 Tables ([`S3TablesCatalog`]) or an Iceberg REST catalog ([`RestCatalog`]).
//!
//! Writing metadata files is the caller's job: a commit takes the location of a metadata file
//! that is already written, and the metadata itself so the catalog can describe the table
//! (Glue's columns and location) or, for REST, send the change it makes.

mod glue;
mod rest;
mod retry;
mod s3tables;
mod sqlite;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;

use iceberg::spec::TableMetadata;

pub use glue::GlueCatalog;
pub use rest::RestCatalog;
pub use retry::{RetryPolicy, StagedMetadata, commit_with_retry};
pub use s3tables::S3TablesCatalog;
pub use sqlite::SqliteCatalog;

use crate::config::{CatalogKind, Config};

/// A lake table by namespace (Glue database) and name, as the catalog knows it — not the
/// source's `schema.table` ([`crate::table::TableId`]), which the sink maps onto a namespace.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CatalogTable {
    /// The namespace: a Glue database, or pyiceberg's `table_namespace`.
    pub namespace: String,
    /// The table name inside the namespace.
    pub name: String,
}

impl CatalogTable {
    /// The table `namespace.name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        CatalogTable {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for CatalogTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.namespace, self.name)
    }
}

impl fmt::Debug for CatalogTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CatalogTable({self})")
    }
}

/// What a compare-and-swap compares: the version of the pointer that was read. For Glue the
/// table's `VersionId`; for SQLite the metadata location itself (a location is written once, so
/// it names one version).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VersionToken(pub String);

impl VersionToken {
    /// The token as the catalog spells it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VersionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A table's pointer as read from the catalog: what a commit must name as its expected state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    /// The current metadata file (`…/metadata/00001-<uuid>.metadata.json`).
    pub metadata_location: String,
    /// The metadata file the last commit replaced; `None` after a create.
    pub previous_metadata_location: Option<String>,
    /// The version a commit compares against.
    pub token: VersionToken,
}

/// What can go wrong in a catalog call. Each error names the catalog and the table or
/// namespace; [`CatalogError::is_retryable`] says whether the same call may succeed later.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Another writer committed since the pointer was read. Reload the table, re-apply the
    /// change on the new metadata, and commit again ([`commit_with_retry`] does this).
    #[error(
        "{catalog}: table {table} was committed by another writer since it was read \
         (expected metadata {expected}); reload, re-apply and retry"
    )]
    Conflict {
        /// The catalog, described for a reader.
        catalog: String,
        /// The table.
        table: CatalogTable,
        /// The metadata location the commit expected to replace.
        expected: String,
    },

    /// [`commit_with_retry`] lost every attempt to concurrent writers.
    #[error(
        "{catalog}: table {table}: gave up after {attempts} commit attempts lost to other writers"
    )]
    TooManyConflicts {
        /// The catalog, described for a reader.
        catalog: String,
        /// The table.
        table: CatalogTable,
        /// How many commits were tried.
        attempts: u32,
    },

    /// A create found the table already registered.
    #[error("{catalog}: table {table} already exists")]
    AlreadyExists {
        /// The catalog, described for a reader.
        catalog: String,
        /// The table.
        table: CatalogTable,
    },

    /// The table is not registered (never created, or dropped meanwhile).
    #[error("{catalog}: table {table} does not exist")]
    TableNotFound {
        /// The catalog, described for a reader.
        catalog: String,
        /// The table.
        table: CatalogTable,
    },

    /// The namespace does not exist; [`Catalog::ensure_namespace`] creates it.
    #[error("{catalog}: namespace {namespace} does not exist")]
    NamespaceNotFound {
        /// The catalog, described for a reader.
        catalog: String,
        /// The namespace.
        namespace: String,
    },

    /// The name is taken by something that is not an Iceberg table lakewriter can commit to
    /// (a Glue table without `table_type = ICEBERG` or without a `metadata_location`).
    #[error("{catalog}: table {table} is not an Iceberg table: {message}")]
    NotIceberg {
        /// The catalog, described for a reader.
        catalog: String,
        /// The table.
        table: CatalogTable,
        /// What is missing or different.
        message: String,
    },

    /// The SQLite catalog file failed.
    #[error("{catalog}: {context}: {source}")]
    Sqlite {
        /// The catalog, described for a reader.
        catalog: String,
        /// What lakewriter was doing, naming the table.
        context: String,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },

    /// A Glue call failed.
    #[error("{catalog}: {context}: {message}")]
    Glue {
        /// The catalog, described for a reader.
        catalog: String,
        /// What lakewriter was doing, naming the table.
        context: String,
        /// The SDK's error with its causes.
        message: String,
        /// Whether the failure is transient (throttling, timeouts, lost connections).
        retryable: bool,
    },

    /// An S3 Tables request failed.
    #[error("{catalog}: {context}: {message}")]
    S3Tables {
        /// The catalog, described for a reader.
        catalog: String,
        /// What lakewriter was doing, naming the table.
        context: String,
        /// The SDK's error with its causes.
        message: String,
        /// Whether the failure is transient (throttling, timeouts, lost connections).
        retryable: bool,
    },

    /// A REST catalog request failed.
    #[error("{catalog}: {context}: {message}")]
    Rest {
        /// The catalog, described for a reader.
        catalog: String,
        /// What lakewriter was doing, naming the table.
        context: String,
        /// The server's answer (status and message) or the transport's error.
        message: String,
        /// Whether the failure is transient (5xx, 429, timeouts, lost connections).
        retryable: bool,
    },

    /// A commit changes the table in a way the REST protocol's updates cannot say: it is
    /// refused whole rather than sent in part.
    #[error(
        "{catalog}: table {table}: the commit changes {change}, which no REST catalog update \
         expresses; nothing was committed"
    )]
    Inexpressible {
        /// The catalog, described for a reader.
        catalog: String,
        /// The table.
        table: CatalogTable,
        /// The difference, named.
        change: String,
    },

    /// A local file or directory of the catalog could not be created or opened.
    #[error("{catalog}: {}: {source}", path.display())]
    Io {
        /// The catalog, described for a reader.
        catalog: String,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The blocking task that runs a SQLite call panicked or was cancelled.
    #[error("{catalog}: {context}: the catalog task failed: {message}")]
    Task {
        /// The catalog, described for a reader.
        catalog: String,
        /// What lakewriter was doing.
        context: String,
        /// The runtime's error.
        message: String,
    },
}

impl CatalogError {
    /// Whether the same call may succeed if tried again after a backoff. A [`Conflict`] is
    /// retryable only after reloading and re-applying; [`TooManyConflicts`] may succeed in a
    /// later round, when the other writer is done.
    ///
    /// [`Conflict`]: CatalogError::Conflict
    /// [`TooManyConflicts`]: CatalogError::TooManyConflicts
    pub fn is_retryable(&self) -> bool {
        match self {
            CatalogError::Conflict { .. } | CatalogError::TooManyConflicts { .. } => true,
            CatalogError::Glue { retryable, .. }
            | CatalogError::S3Tables { retryable, .. }
            | CatalogError::Rest { retryable, .. } => *retryable,
            CatalogError::Sqlite { source, .. } => sqlite::is_transient(source),
            CatalogError::AlreadyExists { .. }
            | CatalogError::TableNotFound { .. }
            | CatalogError::NamespaceNotFound { .. }
            | CatalogError::NotIceberg { .. }
            | CatalogError::Inexpressible { .. }
            | CatalogError::Io { .. }
            | CatalogError::Task { .. } => false,
        }
    }

    /// Whether this is a lost compare-and-swap: the table moved since it was read.
    pub fn is_conflict(&self) -> bool {
        matches!(self, CatalogError::Conflict { .. })
    }
}

/// A catalog of Iceberg tables that swaps pointers atomically. The methods return `Send`
/// futures so a commit can run on any task. A REST catalog is the same contract in another
/// form: the server applies the difference between the expected metadata and the staged one
/// only if the table is still at the expected version, and writes the metadata file itself
/// (the returned pointer names its file, not the staged one).
///
/// The contract of [`Catalog::commit`]: the pointer moves from `expected` to the new location
/// only if it still is `expected` at the instant of the swap; otherwise nothing changes and the
/// call fails with [`CatalogError::Conflict`]. A failed call other than a conflict may or may
/// not have moved the pointer (the answer was lost): reload and compare before retrying, as
/// [`commit_with_retry`] does.
pub trait Catalog: Send + Sync {
    /// The catalog described for logs and errors (kind, name, file or account).
    fn describe(&self) -> &str;

    /// Creates the namespace when it is missing; succeeds when it exists.
    fn ensure_namespace(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<(), CatalogError>> + Send;

    /// The table's current pointer, `None` when the table is not registered.
    fn load(
        &self,
        table: &CatalogTable,
    ) -> impl Future<Output = Result<Option<Pointer>, CatalogError>> + Send;

    /// Where a new table's files go when the catalog chooses it (S3 Tables gives each table
    /// its own storage, reserving the table to learn it); `None` when the writer chooses
    /// (`<warehouse>/<namespace>/<name>`).
    fn table_location(
        &self,
        _table: &CatalogTable,
    ) -> impl Future<Output = Result<Option<String>, CatalogError>> + Send {
        async { Ok(None) }
    }

    /// Whether the catalog writes the table's metadata files itself (REST): a commit's staged
    /// file then only describes the change and never becomes the table's, and the committed
    /// pointer names the catalog's own file.
    fn writes_metadata(&self) -> bool {
        false
    }

    /// The metadata `pointer` names, when the catalog already holds it (a REST server sends
    /// it with every answer): saves reading the file.
    fn known_metadata(&self, _table: &CatalogTable, _pointer: &Pointer) -> Option<TableMetadata> {
        None
    }

    /// Registers a new table at `metadata_location` (already written, describing `metadata`).
    /// Fails with [`CatalogError::AlreadyExists`] when the name is taken, and (Glue) with
    /// [`CatalogError::NamespaceNotFound`] before [`Catalog::ensure_namespace`].
    fn create(
        &self,
        table: &CatalogTable,
        metadata_location: &str,
        metadata: &TableMetadata,
    ) -> impl Future<Output = Result<Pointer, CatalogError>> + Send;

    /// Swaps the pointer from `expected` to `new_metadata_location` (already written,
    /// describing `metadata`), recording `expected` as the previous location; returns the new
    /// pointer. See the trait's docs for the contract.
    fn commit(
        &self,
        table: &CatalogTable,
        expected: &Pointer,
        new_metadata_location: &str,
        metadata: &TableMetadata,
    ) -> impl Future<Output = Result<Pointer, CatalogError>> + Send;

    /// The Iceberg tables of a namespace, sorted by name; empty when the namespace is missing.
    fn list(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Vec<CatalogTable>, CatalogError>> + Send;

    /// Removes the table's pointer (its files stay); `false` when it was not registered.
    fn drop_table(
        &self,
        table: &CatalogTable,
    ) -> impl Future<Output = Result<bool, CatalogError>> + Send;
}

/// Whether an AWS SDK call's failure is transient: a timeout, a lost connection, an answer
/// that never came whole, or a service error whose code is one of `transient_codes`
/// (throttling, the service's own failures). Glue's and S3 Tables' clients share the type.
pub(crate) fn aws_transient<E>(
    error: &aws_sdk_glue::error::SdkError<E>,
    transient_codes: &[&str],
) -> bool
where
    E: aws_sdk_glue::error::ProvideErrorMetadata,
{
    use aws_sdk_glue::error::SdkError;
    match error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(service) => service
            .err()
            .code()
            .is_some_and(|code| transient_codes.contains(&code)),
        _ => false,
    }
}

/// The catalog a configuration names (`[sink] catalog`), so callers hold one type whichever
/// it is.
#[derive(Debug, Clone)]
pub enum LakeCatalog {
    /// `catalog = "sqlite"`.
    Sqlite(SqliteCatalog),
    /// `catalog = "glue"`.
    Glue(GlueCatalog),
    /// `catalog = "s3tables"`.
    S3Tables(S3TablesCatalog),
    /// `catalog = "rest"`.
    Rest(RestCatalog),
}

impl LakeCatalog {
    /// Opens the catalog of `config`: the SQLite file (created when missing), a Glue or S3
    /// Tables client, or a REST catalog (its configuration read, its credentials checked).
    pub async fn from_config(config: &Config) -> Result<LakeCatalog, CatalogError> {
        match config.sink.catalog {
            CatalogKind::Sqlite => Ok(LakeCatalog::Sqlite(
                SqliteCatalog::open(config.sqlite_catalog_path(), &config.sink.sqlite.name).await?,
            )),
            CatalogKind::Glue => Ok(LakeCatalog::Glue(GlueCatalog::new(
                crate::cloud::glue_client(config).await,
                config.sink.glue.catalog_id.clone(),
            ))),
            CatalogKind::S3tables => Ok(LakeCatalog::S3Tables(S3TablesCatalog::new(
                crate::cloud::s3tables_client(config).await,
                &config.sink.s3tables.table_bucket_arn,
            ))),
            CatalogKind::Rest => Ok(LakeCatalog::Rest(
                RestCatalog::connect(&config.sink.rest).await?,
            )),
        }
    }
}

impl Catalog for LakeCatalog {
    fn writes_metadata(&self) -> bool {
        match self {
            LakeCatalog::Rest(c) => c.writes_metadata(),
            LakeCatalog::Sqlite(_) | LakeCatalog::Glue(_) | LakeCatalog::S3Tables(_) => false,
        }
    }

    fn known_metadata(&self, table: &CatalogTable, pointer: &Pointer) -> Option<TableMetadata> {
        match self {
            LakeCatalog::Rest(c) => c.known_metadata(table, pointer),
            LakeCatalog::Sqlite(_) | LakeCatalog::Glue(_) | LakeCatalog::S3Tables(_) => None,
        }
    }

    fn describe(&self) -> &str {
        match self {
            LakeCatalog::Sqlite(c) => c.describe(),
            LakeCatalog::Glue(c) => c.describe(),
            LakeCatalog::S3Tables(c) => c.describe(),
            LakeCatalog::Rest(c) => c.describe(),
        }
    }

    async fn ensure_namespace(&self, namespace: &str) -> Result<(), CatalogError> {
        match self {
            LakeCatalog::Sqlite(c) => c.ensure_namespace(namespace).await,
            LakeCatalog::Glue(c) => c.ensure_namespace(namespace).await,
            LakeCatalog::S3Tables(c) => c.ensure_namespace(namespace).await,
            LakeCatalog::Rest(c) => c.ensure_namespace(namespace).await,
        }
    }

    async fn load(&self, table: &CatalogTable) -> Result<Option<Pointer>, CatalogError> {
        match self {
            LakeCatalog::Sqlite(c) => c.load(table).await,
            LakeCatalog::Glue(c) => c.load(table).await,
            LakeCatalog::S3Tables(c) => c.load(table).await,
            LakeCatalog::Rest(c) => c.load(table).await,
        }
    }

    async fn create(
        &self,
        table: &CatalogTable,
        metadata_location: &str,
        metadata: &TableMetadata,
    ) -> Result<Pointer, CatalogError> {
        match self {
            LakeCatalog::Sqlite(c) => c.create(table, metadata_location, metadata).await,
            LakeCatalog::Glue(c) => c.create(table, metadata_location, metadata).await,
            LakeCatalog::S3Tables(c) => c.create(table, metadata_location, metadata).await,
            LakeCatalog::Rest(c) => c.create(table, metadata_location, metadata).await,
        }
    }

    async fn commit(
        &self,
        table: &CatalogTable,
        expected: &Pointer,
        new_metadata_location: &str,
        metadata: &TableMetadata,
    ) -> Result<Pointer, CatalogError> {
        match self {
            LakeCatalog::Sqlite(c) => {
                c.commit(table, expected, new_metadata_location, metadata)
                    .await
            }
            LakeCatalog::Glue(c) => {
                c.commit(table, expected, new_metadata_location, metadata)
                    .await
            }
            LakeCatalog::S3Tables(c) => {
                c.commit(table, expected, new_metadata_location, metadata)
                    .await
            }
            LakeCatalog::Rest(c) => {
                c.commit(table, expected, new_metadata_location, metadata)
                    .await
            }
        }
    }

    async fn table_location(&self, table: &CatalogTable) -> Result<Option<String>, CatalogError> {
        match self {
            LakeCatalog::Sqlite(c) => c.table_location(table).await,
            LakeCatalog::Glue(c) => c.table_location(table).await,
            LakeCatalog::S3Tables(c) => c.table_location(table).await,
            LakeCatalog::Rest(c) => c.table_location(table).await,
        }
    }

    async fn list(&self, namespace: &str) -> Result<Vec<CatalogTable>, CatalogError> {
        match self {
            LakeCatalog::Sqlite(c) => c.list(namespace).await,
            LakeCatalog::Glue(c) => c.list(namespace).await,
            LakeCatalog::S3Tables(c) => c.list(namespace).await,
            LakeCatalog::Rest(c) => c.list(namespace).await,
        }
    }

    async fn drop_table(&self, table: &CatalogTable) -> Result<bool, CatalogError> {
        match self {
            LakeCatalog::Sqlite(c) => c.drop_table(table).await,
            LakeCatalog::Glue(c) => c.drop_table(table).await,
            LakeCatalog::S3Tables(c) => c.drop_table(table).await,
            LakeCatalog::Rest(c) => c.drop_table(table).await,
        }
    }
}
