//! The Delta tables a warehouse holds, opened for reading and maintenance (`query`, `verify`,
//! `status`, `compact`) rather than for writing. With the SQLite catalog, a namespace's tables
//! are the ones the sink recorded in the catalog file ([`SqliteCatalog::register_delta`]);
//! a warehouse whose file records none (written before the record was kept), and every other
//! case, is listed: the directories under `<warehouse>/<namespace>/` that hold a `_delta_log`.

use std::path::PathBuf;

use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};

use crate::sink::COPY_PROPERTY;
use crate::table::{ChunkCommit, CopyProgress, LatestChunkCommits};

use super::write;

use super::{
    DeltaSettings, checkpoint_app_id, checkpoint_of, copy_app_id, delta_error, sink_error,
};
use crate::catalog::{CatalogTable, SqliteCatalog};
use crate::cloud::S3Location;
use crate::config::{CatalogKind, Config};
use crate::error::{Error, Result};
use crate::lsn::Lsn;

/// The SQLite catalog file Delta tables are recorded in: with `sink.catalog = "sqlite"`,
/// `sink.sqlite.path`, else `<warehouse>/catalog.db` for a local warehouse (an S3 warehouse
/// has no local default); `None` with Glue.
pub fn catalog_path(config: &Config, settings: &DeltaSettings) -> Option<PathBuf> {
    let local = !settings.warehouse.starts_with("s3://");
    (config.sink.catalog == CatalogKind::Sqlite && (local || config.sink.sqlite.path.is_some()))
        .then(|| config.sqlite_catalog_path())
}

/// The Delta tables of `settings`' namespace recorded in the catalog file, when it records
/// any; `None` when there is no such file or record.
async fn recorded(config: &Config, settings: &DeltaSettings) -> Result<Option<Vec<CatalogTable>>> {
    let Some(path) = catalog_path(config, settings).filter(|p| p.is_file()) else {
        return Ok(None);
    };
    let namespace = &settings.namespace;
    let failed = |e: crate::catalog::CatalogError| Error::Sink {
        table: namespace.clone(),
        retryable: e.is_retryable(),
        message: format!("list the delta tables in the catalog: {e}"),
    };
    let catalog = SqliteCatalog::open(&path, &config.sink.sqlite.name)
        .await
        .map_err(failed)?;
    let Some(tables) = catalog.delta_tables(namespace).await.map_err(failed)? else {
        return Ok(None);
    };
    if tables.is_empty() {
        return Ok(None);
    }
    for (table, location) in &tables {
        let expected = settings.table_location(table);
        if *location != expected {
            tracing::warn!(
                table = %table,
                recorded = %location,
                expected = %expected,
                "the catalog records the delta table elsewhere than the warehouse's layout; \
                 reading the warehouse's"
            );
        }
    }
    Ok(Some(tables.into_iter().map(|(table, _)| table).collect()))
}

/// The Delta tables of `settings`' namespace, by name: the catalog's record, else the
/// warehouse's listing.
pub async fn list(config: &Config, settings: &DeltaSettings) -> Result<Vec<CatalogTable>> {
    if let Some(tables) = recorded(config, settings).await? {
        return Ok(tables);
    }
    let mut names = match S3Location::parse(&settings.warehouse)
        .map_err(|m| Error::config("sink.warehouse", m))?
    {
        Some(location) => list_s3(config, &location, &settings.namespace).await?,
        None => list_local(settings)?,
    };
    names.sort();
    Ok(names
        .into_iter()
        .map(|name| CatalogTable::new(&settings.namespace, &name))
        .collect())
}

/// The directories under the local namespace directory that hold a `_delta_log`.
fn list_local(settings: &DeltaSettings) -> Result<Vec<String>> {
    let root = std::path::Path::new(&settings.warehouse).join(&settings.namespace);
    let entries = match std::fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(Error::Io { path: root, source }),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            path: root.clone(),
            source,
        })?;
        if entry.path().join("_delta_log").is_dir()
            && let Some(name) = entry.file_name().to_str()
        {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// The "directories" under the namespace prefix that hold a `_delta_log/` key.
async fn list_s3(config: &Config, location: &S3Location, namespace: &str) -> Result<Vec<String>> {
    let client = crate::cloud::s3_client(config).await;
    let prefix = format!("{}/", location.key(namespace));
    let list_error = |e: String| Error::Sink {
        table: namespace.to_string(),
        message: format!("list s3://{}/{prefix}: {e}", location.bucket),
        retryable: true,
    };
    let mut pages = client
        .list_objects_v2()
        .bucket(&location.bucket)
        .prefix(&prefix)
        .delimiter("/")
        .into_paginator()
        .send();
    let mut candidates = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| list_error(e.to_string()))?;
        for common in page.common_prefixes() {
            if let Some(name) = common
                .prefix()
                .and_then(|p| p.strip_prefix(&prefix))
                .map(|p| p.trim_end_matches('/'))
                .filter(|p| !p.is_empty())
            {
                candidates.push(name.to_string());
            }
        }
    }
    let mut names = Vec::new();
    for name in candidates {
        let log = client
            .list_objects_v2()
            .bucket(&location.bucket)
            .prefix(format!("{prefix}{name}/_delta_log/"))
            .max_keys(1)
            .send()
            .await
            .map_err(|e| list_error(e.to_string()))?;
        if !log.contents().is_empty() {
            names.push(name);
        }
    }
    Ok(names)
}

/// Opens the Delta table of `lake` at its latest version; `None` when there is none. Unlike
/// the sink's own open, nothing is created on the way.
pub async fn open(settings: &DeltaSettings, lake: &CatalogTable) -> Result<Option<DeltaTable>> {
    let url = settings.table_url(lake)?;
    if let Ok(path) = url.to_file_path()
        && !path.join("_delta_log").is_dir()
    {
        return Ok(None);
    }
    let table = DeltaTableBuilder::from_url(url)
        .map_err(|e| delta_error(lake, "open the table", e))?
        .with_storage_options(settings.storage_options.clone())
        .build()
        .map_err(|e| delta_error(lake, "open the table", e))?;
    let mut table = table;
    let loaded = super::contained(lake, "load the table", table.load()).await?;
    match loaded {
        Ok(()) => Ok(Some(table)),
        Err(DeltaTableError::NotATable(_)) => Ok(None),
        Err(e) => Err(delta_error(lake, "load the table", e)),
    }
}

/// Opens the Delta table of `lake`, which must exist.
pub async fn open_existing(settings: &DeltaSettings, lake: &CatalogTable) -> Result<DeltaTable> {
    open(settings, lake).await?.ok_or_else(|| {
        sink_error(
            lake,
            format!(
                "no Delta table at {} (no _delta_log)",
                settings.table_location(lake)
            ),
        )
    })
}

/// Whether lakewriter writes `table`: its log holds lakewriter's `txn` for the table (a
/// checkpoint, or -1 for an incomplete copy).
pub async fn written_by_lakewriter(lake: &CatalogTable, table: &DeltaTable) -> Result<bool> {
    let version = txn_version(lake, table, checkpoint_app_id(lake), "read the log").await?;
    Ok(version.is_some())
}

/// The version of the latest `txn` of `app_id` in `table`'s state (`what` names the read in
/// an error).
async fn txn_version(
    lake: &CatalogTable,
    table: &DeltaTable,
    app_id: String,
    what: &str,
) -> Result<Option<i64>> {
    let snapshot = table.snapshot().map_err(|e| delta_error(lake, what, e))?;
    snapshot
        .transaction_version(table.log_store().as_ref(), app_id)
        .await
        .map_err(|e| delta_error(lake, what, e))
}

/// The checkpoint the latest commit of `table` carries (its `txn` for the table's app id).
pub async fn checkpoint(lake: &CatalogTable, table: &DeltaTable) -> Result<Option<Lsn>> {
    let version = txn_version(lake, table, checkpoint_app_id(lake), "read the checkpoint").await?;
    Ok(checkpoint_of(version))
}

/// How many of the latest commits are searched for a chunked copy's progress: lakewriter
/// commits the table at every flush while it copies, so only foreign commits (`compact`,
/// another engine) come between.
const COPY_WINDOW: usize = 2000;

/// A chunked copy under way, as the log holds it.
#[derive(Debug, Clone)]
pub struct CopyState {
    /// The progress lakewriter's latest commit carries (`lakewriter.copy`).
    pub progress: String,
    /// The commits that brought its latest chunks in, newest first, for its pace.
    pub commits: Vec<ChunkCommit>,
}

/// `table`'s chunked copy under way; `None` when there is none. A copy whose progress is not
/// among the latest [`COPY_WINDOW`] commits (the log cleaned up under it) starts again from
/// the first row.
pub async fn copy_state(lake: &CatalogTable, table: &DeltaTable) -> Result<Option<CopyState>> {
    let marker = txn_version(lake, table, copy_app_id(lake), "read the copy's progress").await?;
    if marker.is_none_or(|v| v < 0) {
        return Ok(None);
    }
    // lakewriter commits the table at every flush while it copies: the latest commits
    // nearly always hold the progress, and a longer history is read only when not
    let mut state = None;
    for window in [COPY_WINDOW / 10, COPY_WINDOW] {
        let history = table
            .history(Some(window))
            .await
            .map_err(|e| delta_error(lake, "read the history for the copy's progress", e))?;
        state = copy_in(history);
        if state.is_some() {
            break;
        }
    }
    if state.is_none() {
        tracing::warn!(
            table = %lake,
            window = COPY_WINDOW,
            "a chunked copy is under way but its progress is not in the latest commits: it \
             starts again from the first row"
        );
        return Ok(Some(CopyState {
            progress: CopyProgress::start(None, 1).encode(),
            commits: Vec::new(),
        }));
    }
    Ok(state)
}

/// The copy the commits of `history` (newest first) carry.
fn copy_in(history: impl Iterator<Item = deltalake::kernel::CommitInfo>) -> Option<CopyState> {
    let mut progress_text: Option<String> = None;
    let mut commits = LatestChunkCommits::default();
    for commit in history {
        let Some(text) = commit.info.get(COPY_PROPERTY).and_then(|v| v.as_str()) else {
            // a commit of lakewriter's without progress is before this copy
            if commit.info.contains_key(write::COMMIT_ID) && progress_text.is_some() {
                break;
            }
            continue;
        };
        let Ok(progress) = CopyProgress::decode(text) else {
            break;
        };
        progress_text.get_or_insert_with(|| text.to_string());
        if !commits.take(&progress, commit.timestamp) {
            break;
        }
    }
    progress_text.map(|progress| CopyState {
        progress,
        commits: commits.into_commits(),
    })
}
