//! The local catalog: a SQLite file in the schema of pyiceberg's SQL catalog (`SqlCatalog`), so
//! pyiceberg, DuckDB scripts and lakewriter's own `compact` open the same file. A commit is one
//! `UPDATE … WHERE metadata_location = <expected>`; SQLite serialises writers, across processes.
//!
//! The Delta tables lakewriter writes are recorded in a table of its own,
//! `lakewriter_delta_tables` (created when the first is recorded): pyiceberg reads only its
//! `iceberg_*` tables, so the file stays a valid pyiceberg catalog, and a Delta table (whose
//! `_delta_log` is its own catalog) is found by name without listing the warehouse.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use iceberg::spec::TableMetadata;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};

use super::{Catalog, CatalogError, CatalogTable, Pointer, VersionToken};

/// How long a call waits for another process's write to finish before it fails as busy (and
/// retryable): longer than any single catalog statement takes.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// pyiceberg's value of `iceberg_type` for tables (views are `VIEW`).
const TABLE_TYPE: &str = "TABLE";

/// pyiceberg 0.12's schema (`SqlCatalogBaseTable.metadata.create_all` on SQLite), column for
/// column, so either program can create the file and the other opens it.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS iceberg_tables (
    catalog_name VARCHAR(255) NOT NULL,
    table_namespace VARCHAR(255) NOT NULL,
    table_name VARCHAR(255) NOT NULL,
    metadata_location VARCHAR(1000),
    previous_metadata_location VARCHAR(1000),
    iceberg_type VARCHAR(5),
    PRIMARY KEY (catalog_name, table_namespace, table_name)
);
CREATE TABLE IF NOT EXISTS iceberg_namespace_properties (
    catalog_name VARCHAR(255) NOT NULL,
    namespace VARCHAR(255) NOT NULL,
    property_key VARCHAR(255) NOT NULL,
    property_value VARCHAR(1000) NOT NULL,
    PRIMARY KEY (catalog_name, namespace, property_key)
);
";

/// lakewriter's record of the Delta tables of the catalog: where each table's `_delta_log` is.
const DELTA_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS lakewriter_delta_tables (
    catalog_name VARCHAR(255) NOT NULL,
    table_namespace VARCHAR(255) NOT NULL,
    table_name VARCHAR(255) NOT NULL,
    location VARCHAR(1000) NOT NULL,
    PRIMARY KEY (catalog_name, table_namespace, table_name)
);
";

/// A catalog in a local SQLite file. Cloning shares the connection; two catalogs opened on
/// the same file (or two processes) are two writers that SQLite serialises.
#[derive(Debug, Clone)]
pub struct SqliteCatalog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The `catalog_name` of every row this catalog reads and writes.
    name: String,
    describe: String,
    /// Whether the file has pyiceberg's `iceberg_type` column: files made by pyiceberg before
    /// 0.10 lack it, and pyiceberg keeps using them without it unless told to migrate.
    typed: bool,
    /// rusqlite is synchronous: calls run on the blocking pool, one at a time per catalog.
    connection: Mutex<Connection>,
}

impl SqliteCatalog {
    /// Opens (creating when missing) the catalog file at `path`, with catalog name `name`
    /// (pyiceberg's `SqlCatalog(name, …)`).
    pub async fn open(
        path: impl Into<PathBuf>,
        name: impl Into<String>,
    ) -> Result<SqliteCatalog, CatalogError> {
        let path = path.into();
        let name = name.into();
        let describe = format!("sqlite catalog {name:?} at {}", path.display());
        let task_describe = describe.clone();
        let opened = tokio::task::spawn_blocking(move || open_file(&path, &task_describe)).await;
        let (connection, typed) = opened.map_err(|e| CatalogError::Task {
            catalog: describe.clone(),
            context: "open".into(),
            message: e.to_string(),
        })??;
        Ok(SqliteCatalog {
            inner: Arc::new(Inner {
                name,
                describe,
                typed,
                connection: Mutex::new(connection),
            }),
        })
    }

    /// Runs `f` on the connection in the blocking pool.
    async fn call<T: Send + 'static>(
        &self,
        context: String,
        f: impl FnOnce(&Inner, &mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, CatalogError> {
        let inner = Arc::clone(&self.inner);
        let task_context = context.clone();
        let joined = tokio::task::spawn_blocking(move || {
            // A panic in an earlier call leaves the connection usable (SQLite rolls back an
            // open transaction when the statement is dropped), so poisoning is ignored.
            let mut connection = inner
                .connection
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            f(&inner, &mut connection).map_err(|source| CatalogError::Sqlite {
                catalog: inner.describe.clone(),
                context: task_context,
                source,
            })
        })
        .await;
        joined.map_err(|e| CatalogError::Task {
            catalog: self.inner.describe.clone(),
            context,
            message: e.to_string(),
        })?
    }
}

impl SqliteCatalog {
    /// Records the Delta table `table` at `location` (the directory or prefix holding its
    /// `_delta_log`), replacing an earlier location.
    pub async fn register_delta(
        &self,
        table: &CatalogTable,
        location: &str,
    ) -> Result<(), CatalogError> {
        let t = table.clone();
        let location = location.to_string();
        self.call(format!("register delta table {table}"), move |inner, c| {
            c.execute_batch(DELTA_SCHEMA)?;
            c.execute(
                "INSERT INTO lakewriter_delta_tables \
                 (catalog_name, table_namespace, table_name, location) \
                 VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (catalog_name, table_namespace, table_name) \
                 DO UPDATE SET location = excluded.location",
                params![inner.name, t.namespace, t.name, location],
            )
            .map(drop)
        })
        .await
    }

    /// The Delta tables recorded in `namespace` and their locations, by name; `None` when the
    /// file has no record of Delta tables at all (written before lakewriter kept one).
    pub async fn delta_tables(
        &self,
        namespace: &str,
    ) -> Result<Option<Vec<(CatalogTable, String)>>, CatalogError> {
        let ns = namespace.to_string();
        self.call(
            format!("list delta tables of {namespace}"),
            move |inner, c| {
                let kept: Option<i64> = c
                    .query_row(
                        "SELECT 1 FROM sqlite_master \
                     WHERE type = 'table' AND name = 'lakewriter_delta_tables'",
                        [],
                        |row| row.get(0),
                    )
                    .optional()?;
                if kept.is_none() {
                    return Ok(None);
                }
                let mut statement = c.prepare(
                    "SELECT table_name, location FROM lakewriter_delta_tables \
                 WHERE catalog_name = ?1 AND table_namespace = ?2 ORDER BY table_name",
                )?;
                let rows = statement.query_map(params![inner.name, ns], |row| {
                    Ok((
                        CatalogTable::new(ns.clone(), row.get::<_, String>(0)?),
                        row.get::<_, String>(1)?,
                    ))
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map(Some)
            },
        )
        .await
    }
}

fn open_file(path: &Path, describe: &str) -> Result<(Connection, bool), CatalogError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| CatalogError::Io {
            catalog: describe.to_string(),
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let sqlite = |context: &str| {
        let context = context.to_string();
        move |source| CatalogError::Sqlite {
            catalog: describe.to_string(),
            context,
            source,
        }
    };
    let connection = Connection::open(path).map_err(sqlite("open the file"))?;
    connection
        .busy_timeout(BUSY_TIMEOUT)
        .map_err(sqlite("set the busy timeout"))?;
    // WAL lets readers (pyiceberg, `status`) run beside a writer, and two writers (`run` and
    // `compact`) queue on the busy timeout instead of failing at once.
    let mode: String = connection
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(sqlite("switch to WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(catalog = %describe, mode = %mode, "sqlite catalog is not in WAL mode");
    }
    // A commit acknowledged to PostgreSQL must survive a power cut: WAL's default of NORMAL
    // may lose the last transactions, FULL syncs each one.
    connection
        .pragma_update(None, "synchronous", "FULL")
        .map_err(sqlite("set synchronous = FULL"))?;
    connection
        .execute_batch(SCHEMA)
        .map_err(sqlite("create the catalog tables"))?;
    let typed = connection
        .prepare("SELECT 1 FROM pragma_table_info('iceberg_tables') WHERE name = 'iceberg_type'")
        .and_then(|mut s| s.exists([]))
        .map_err(sqlite("read the catalog schema"))?;
    Ok((connection, typed))
}

/// Whether a SQLite error is a lock held by another writer, which goes away.
pub(super) fn is_transient(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

fn is_constraint(error: &rusqlite::Error) -> bool {
    error.sqlite_error_code() == Some(ErrorCode::ConstraintViolation)
}

impl Inner {
    /// The filter that keeps views (rows other writers may add) out of table lookups, as
    /// pyiceberg does; rows without a type are tables.
    fn tables_only(&self) -> &'static str {
        if self.typed {
            " AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL)"
        } else {
            ""
        }
    }

    fn read_pointer(
        &self,
        connection: &Connection,
        table: &CatalogTable,
    ) -> rusqlite::Result<Option<Pointer>> {
        let sql = format!(
            "SELECT metadata_location, previous_metadata_location FROM iceberg_tables \
             WHERE catalog_name = ?1 AND table_namespace = ?2 AND table_name = ?3{}",
            self.tables_only()
        );
        let row: Option<(Option<String>, Option<String>)> = connection
            .query_row(
                &sql,
                params![self.name, table.namespace, table.name],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        // pyiceberg treats a row without a metadata location as no table; so do we.
        Ok(row.and_then(|(location, previous)| {
            location.map(|location| Pointer {
                token: VersionToken(location.clone()),
                metadata_location: location,
                previous_metadata_location: previous,
            })
        }))
    }
}

impl Catalog for SqliteCatalog {
    fn describe(&self) -> &str {
        &self.inner.describe
    }

    async fn ensure_namespace(&self, namespace: &str) -> Result<(), CatalogError> {
        let namespace = namespace.to_string();
        // pyiceberg's create_namespace writes the minimal property `exists = true`; a namespace
        // exists for it when it has a property or a table.
        self.call(format!("create namespace {namespace}"), move |inner, c| {
            c.execute(
                "INSERT OR IGNORE INTO iceberg_namespace_properties \
                 (catalog_name, namespace, property_key, property_value) \
                 VALUES (?1, ?2, 'exists', 'true')",
                params![inner.name, namespace],
            )
            .map(drop)
        })
        .await
    }

    async fn load(&self, table: &CatalogTable) -> Result<Option<Pointer>, CatalogError> {
        let t = table.clone();
        self.call(format!("load table {table}"), move |inner, c| {
            inner.read_pointer(c, &t)
        })
        .await
    }

    async fn create(
        &self,
        table: &CatalogTable,
        metadata_location: &str,
        _metadata: &TableMetadata,
    ) -> Result<Pointer, CatalogError> {
        let t = table.clone();
        let location = metadata_location.to_string();
        let result = self
            .call(format!("create table {table}"), move |inner, c| {
                let insert = if inner.typed {
                    "INSERT INTO iceberg_tables (catalog_name, table_namespace, table_name, \
                     metadata_location, previous_metadata_location, iceberg_type) \
                     VALUES (?1, ?2, ?3, ?4, NULL, ?5)"
                } else {
                    "INSERT INTO iceberg_tables (catalog_name, table_namespace, table_name, \
                     metadata_location, previous_metadata_location) \
                     VALUES (?1, ?2, ?3, ?4, NULL)"
                };
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                // pyiceberg refuses tables in a namespace it does not know; register the
                // namespace with the table, as ensure_namespace would.
                tx.execute(
                    "INSERT OR IGNORE INTO iceberg_namespace_properties \
                     (catalog_name, namespace, property_key, property_value) \
                     VALUES (?1, ?2, 'exists', 'true')",
                    params![inner.name, t.namespace],
                )?;
                if inner.typed {
                    tx.execute(
                        insert,
                        params![inner.name, t.namespace, t.name, location, TABLE_TYPE],
                    )?;
                } else {
                    tx.execute(insert, params![inner.name, t.namespace, t.name, location])?;
                }
                tx.commit()?;
                Ok(Pointer {
                    token: VersionToken(location.clone()),
                    metadata_location: location,
                    previous_metadata_location: None,
                })
            })
            .await;
        match result {
            Err(CatalogError::Sqlite { source, .. }) if is_constraint(&source) => {
                Err(CatalogError::AlreadyExists {
                    catalog: self.inner.describe.clone(),
                    table: table.clone(),
                })
            }
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
        let t = table.clone();
        let old = expected.metadata_location.clone();
        let new = new_metadata_location.to_string();
        let outcome = self
            .call(format!("commit table {table}"), move |inner, c| {
                let sql = format!(
                    "UPDATE iceberg_tables \
                     SET metadata_location = ?1, previous_metadata_location = ?2 \
                     WHERE catalog_name = ?3 AND table_namespace = ?4 AND table_name = ?5 \
                     AND metadata_location = ?2{}",
                    inner.tables_only()
                );
                let changed =
                    c.execute(&sql, params![new, old, inner.name, t.namespace, t.name])?;
                if changed == 1 {
                    return Ok(Ok(Pointer {
                        token: VersionToken(new.clone()),
                        metadata_location: new,
                        previous_metadata_location: Some(old),
                    }));
                }
                // Nothing changed: tell a moved pointer from a table that is gone, because
                // only the first is worth a retry.
                let exists = inner.read_pointer(c, &t)?.is_some();
                Ok(Err(exists))
            })
            .await?;
        let result = outcome.map_err(|exists| {
            let catalog = self.inner.describe.clone();
            let table = table.clone();
            if exists {
                CatalogError::Conflict {
                    catalog,
                    table,
                    expected: expected.metadata_location.clone(),
                }
            } else {
                CatalogError::TableNotFound { catalog, table }
            }
        });
        if result.is_ok() {
            tracing::debug!(
                catalog = %self.inner.describe,
                table = %table,
                metadata = %new_metadata_location,
                "committed"
            );
        }
        result
    }

    async fn list(&self, namespace: &str) -> Result<Vec<CatalogTable>, CatalogError> {
        let ns = namespace.to_string();
        self.call(format!("list namespace {namespace}"), move |inner, c| {
            let sql = format!(
                "SELECT table_name FROM iceberg_tables \
                 WHERE catalog_name = ?1 AND table_namespace = ?2{} ORDER BY table_name",
                inner.tables_only()
            );
            let mut statement = c.prepare(&sql)?;
            let names = statement.query_map(params![inner.name, ns], |row| row.get(0))?;
            names
                .map(|name| name.map(|name: String| CatalogTable::new(ns.clone(), name)))
                .collect()
        })
        .await
    }

    async fn drop_table(&self, table: &CatalogTable) -> Result<bool, CatalogError> {
        let t = table.clone();
        self.call(format!("drop table {table}"), move |inner, c| {
            let sql = format!(
                "DELETE FROM iceberg_tables \
                 WHERE catalog_name = ?1 AND table_namespace = ?2 AND table_name = ?3{}",
                inner.tables_only()
            );
            Ok(c.execute(&sql, params![inner.name, t.namespace, t.name])? > 0)
        })
        .await
    }
}
