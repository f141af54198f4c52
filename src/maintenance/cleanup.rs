//! Snapshot expiry and orphan removal, the second half of `lakewriter compact`.
//!
//! - Snapshots older than `snapshot_retention` are expired, except the current one and the
//!   newest `keep_snapshots`, by compare-and-swap like every commit; their manifest lists and
//!   the manifests only they listed are removed at once (see the sink's expiry).
//! - Then every file under the table's location that the table no longer references — not
//!   the current metadata file or one in its log, not a manifest list, manifest or data or
//!   delete file of a remaining snapshot — is removed, if it is older than `orphan_age`. The
//!   age is the safety window: a writer's files are written before its commit makes them
//!   referenced, and a commit in flight is never that old. Only the location lakewriter gives
//!   the table (`<warehouse>/<namespace>/<name>`) is cleaned: a table whose metadata names
//!   another location keeps its orphans, and nothing outside its own directory is touched.

use std::collections::HashSet;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use iceberg::io::FileIO;
use iceberg::spec::TableMetadata;

use crate::catalog::{Catalog, CatalogTable, Pointer};
use crate::cloud::{S3Location, s3_client};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::sink::iceberg::{IcebergSink, ManifestRefs, catalog_error};

/// What cleaning one table removed.
#[derive(Debug, Clone, Default)]
pub struct Cleanup {
    /// The lake table.
    pub table: String,
    /// Snapshots expired.
    pub snapshots: usize,
    /// Data and delete files the expired snapshots had replaced or truncated, removed with
    /// them.
    pub replaced_files: usize,
    /// Orphan files removed.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// A file under a table's location.
#[derive(Debug)]
struct Listed {
    path: String,
    size: u64,
    modified_ms: i64,
}

/// Expires the snapshots of `lake` and removes its orphan files.
pub async fn clean_table(
    config: &Config,
    sink: &IcebergSink,
    io: &FileIO,
    lake: &CatalogTable,
) -> Result<Cleanup> {
    let mut cleanup = Cleanup {
        table: lake.to_string(),
        ..Cleanup::default()
    };
    let Some(pointer) = sink
        .catalog()
        .load(lake)
        .await
        .map_err(|e| catalog_error(lake, e))?
    else {
        return Ok(cleanup);
    };
    let metadata = read_metadata(io, lake, &pointer).await?;
    let now = now_ms();
    let retention = config.compaction.snapshot_retention.get().as_millis() as i64;
    let (pointer, metadata, expired) = sink
        .expire_removing_files(
            lake,
            &pointer,
            &metadata,
            now - retention,
            config.compaction.keep_snapshots.max(1),
            &mut ManifestRefs::default(),
        )
        .await?;
    cleanup.snapshots = expired.snapshots;
    cleanup.replaced_files = expired.data_files;
    tracing::debug!(
        table = %lake,
        files = expired.files,
        data_files = expired.data_files,
        "removed the manifest lists and manifests only expired snapshots listed, and the \
         files they had removed from the table"
    );

    if !sink.settings().removes_files {
        tracing::debug!(
            table = %lake,
            "S3 Tables removes unreferenced files itself (its storage takes no deletes)"
        );
        return Ok(cleanup);
    }
    // files are removed only under the location lakewriter gives the table: a location
    // another engine moved to a shared directory (the namespace's, the warehouse's) holds
    // other tables' files, which this table's metadata does not reference
    let own = sink.settings().table_location(lake);
    let own = normalize(&own).trim_end_matches('/').to_string();
    if normalize(metadata.location()).trim_end_matches('/') != own {
        tracing::warn!(
            table = %lake,
            location = %metadata.location(),
            expected = %own,
            "the table's location is not its own: orphan files are not removed"
        );
        return Ok(cleanup);
    }
    let inside = format!("{own}/");
    let referenced = referenced_files(io, lake, &pointer, &metadata).await?;
    let orphan_age = config.compaction.orphan_age.get().as_millis() as i64;
    for file in list_files(config, &own).await? {
        let path = normalize(&file.path);
        if !path.starts_with(&inside)
            || referenced.contains(&path)
            || file.modified_ms > now - orphan_age
        {
            continue;
        }
        io.delete(&file.path)
            .await
            .map_err(|e| sink_error(lake, format!("remove orphan file {}: {e}", file.path)))?;
        tracing::debug!(table = %lake, file = %file.path, "removed an orphan file");
        cleanup.files += 1;
        cleanup.bytes += file.size;
    }
    Ok(cleanup)
}

async fn read_metadata(
    io: &FileIO,
    lake: &CatalogTable,
    pointer: &Pointer,
) -> Result<TableMetadata> {
    TableMetadata::read_from(io, &pointer.metadata_location)
        .await
        .map_err(|e| sink_error(lake, format!("read {}: {e}", pointer.metadata_location)))
}

/// Every file the table references: its metadata files (current and logged), and for each
/// snapshot its manifest list, its manifests and the files they list alive.
async fn referenced_files(
    io: &FileIO,
    lake: &CatalogTable,
    pointer: &Pointer,
    metadata: &TableMetadata,
) -> Result<HashSet<String>> {
    let mut files = HashSet::new();
    files.insert(normalize(&pointer.metadata_location));
    for log in metadata.metadata_log() {
        files.insert(normalize(&log.metadata_file));
    }
    // statistics files (Puffin, partition statistics) another engine wrote belong to the table
    for statistics in metadata.statistics_iter() {
        files.insert(normalize(&statistics.statistics_path));
    }
    for statistics in metadata.partition_statistics_iter() {
        files.insert(normalize(&statistics.statistics_path));
    }
    let mut manifests_seen = HashSet::new();
    for snapshot in metadata.snapshots() {
        files.insert(normalize(snapshot.manifest_list()));
        let list = crate::lake::manifest_list(io, lake, snapshot, metadata).await?;
        for manifest in list.entries() {
            if !manifests_seen.insert(manifest.manifest_path.clone()) {
                continue;
            }
            files.insert(normalize(&manifest.manifest_path));
            let loaded = manifest.load_manifest(io).await.map_err(|e| {
                sink_error(
                    lake,
                    format!("read manifest {}: {e}", manifest.manifest_path),
                )
            })?;
            // an entry marked deleted is a removal by that snapshot: the file is needed only
            // by an earlier snapshot, whose own manifests list it alive if it remains
            for entry in loaded.entries().iter().filter(|e| e.is_alive()) {
                files.insert(normalize(entry.file_path()));
            }
        }
    }
    Ok(files)
}

/// The files under `location` (a local directory or `s3://…`), with size and age.
async fn list_files(config: &Config, location: &str) -> Result<Vec<Listed>> {
    let io_error = |e: std::io::Error, path: &Path| Error::Io {
        path: path.to_path_buf(),
        source: e,
    };
    if let Some(s3) = S3Location::parse(location).map_err(|m| Error::config("sink.warehouse", m))? {
        let client = s3_client(config).await;
        let prefix = format!("{}/", s3.prefix);
        let mut files = Vec::new();
        let mut pages = client
            .list_objects_v2()
            .bucket(&s3.bucket)
            .prefix(&prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| Error::Sink {
                table: location.to_string(),
                message: format!(
                    "list s3://{}/{prefix}: {}",
                    s3.bucket,
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                ),
                retryable: true,
            })?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                files.push(Listed {
                    path: format!("s3://{}/{key}", s3.bucket),
                    size: object.size().unwrap_or(0).max(0) as u64,
                    modified_ms: object
                        .last_modified()
                        .and_then(|t| t.to_millis().ok())
                        .unwrap_or(i64::MAX),
                });
            }
        }
        return Ok(files);
    }
    let root = Path::new(location.strip_prefix("file://").unwrap_or(location));
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error(e, &dir)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_error(e, &dir))?;
            let path = entry.path();
            let meta = entry.metadata().map_err(|e| io_error(e, &path))?;
            if meta.is_dir() {
                pending.push(path);
            } else {
                let modified_ms = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(i64::MAX, |d| d.as_millis() as i64);
                files.push(Listed {
                    path: path.display().to_string(),
                    size: meta.len(),
                    modified_ms,
                });
            }
        }
    }
    Ok(files)
}

/// A file's path as both the metadata and a listing spell it.
fn normalize(path: &str) -> String {
    match path.strip_prefix("file://") {
        Some(rest) => rest.to_string(),
        None => match path.strip_prefix("file:") {
            Some(rest) => rest.to_string(),
            None => path.to_string(),
        },
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn sink_error(table: &CatalogTable, message: impl Into<String>) -> Error {
    Error::Sink {
        table: table.to_string(),
        message: message.into(),
        retryable: false,
    }
}
