//! Committing to an Iceberg table: a [`Change`] staged on the table's current metadata and
//! swapped in by compare-and-swap, rebuilt and tried again after a lost race; a commit whose
//! answer was lost is recognised in the metadata log; the metadata files a commit pushes off
//! the log are removed; snapshot expiry is one such change.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use iceberg::spec::TableMetadata;

use super::expiry::expired_snapshots;
use super::row_delta::{self, RowDelta};
use super::{IcebergSink, catalog_error, iceberg_error, sink_error, stage_error, table};
use crate::catalog::{
    Catalog, CatalogError, CatalogTable, Pointer, StagedMetadata, commit_with_retry,
};
use crate::error::{Error, Result};

/// Where the commits of each table take turns (see [`IcebergSink::commit_change`]): fair
/// locks, so commits go in the order they asked. Every sink of a process shares one
/// ([`CommitGates::process`]), so `run`'s scheduled compaction and its writer take turns; a
/// sink given [`CommitGates::private`] races the others as a writer in another process does.
#[derive(Debug, Clone)]
pub struct CommitGates(Arc<Mutex<HashMap<CatalogTable, Arc<tokio::sync::Mutex<()>>>>>);

impl CommitGates {
    /// The gates every sink of this process shares.
    pub fn process() -> CommitGates {
        static GATES: LazyLock<CommitGates> =
            LazyLock::new(|| CommitGates(Arc::new(Mutex::new(HashMap::new()))));
        GATES.clone()
    }

    /// Gates of one sink's own.
    pub fn private() -> CommitGates {
        CommitGates(Arc::new(Mutex::new(HashMap::new())))
    }

    /// Waits for `lake`'s turn and keeps it until the guard is dropped: a compaction that
    /// must land holds it from its read to its commit, so this process's writer cannot
    /// commit in between (see [`IcebergSink::commit_rewrite_in_turn`]).
    pub async fn hold(&self, lake: &CatalogTable) -> Turn {
        Turn(self.of(lake).lock_owned().await)
    }

    /// The gate of `lake`.
    fn of(&self, lake: &CatalogTable) -> Arc<tokio::sync::Mutex<()>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(lake.clone())
            .or_default()
            .clone()
    }
}

/// A table's turn to commit, held ([`CommitGates::hold`]).
#[derive(Debug)]
pub struct Turn(#[allow(dead_code)] tokio::sync::OwnedMutexGuard<()>);

/// Why one commit attempt (inside [`commit_with_retry`]) did not stage metadata.
pub(super) enum AttemptError {
    /// The catalog failed.
    Catalog(CatalogError),
    /// Staging failed.
    Failed(Error),
    /// Nothing to commit on this metadata (another writer made the change already).
    Unchanged(Pointer, Box<TableMetadata>),
}

impl From<CatalogError> for AttemptError {
    fn from(e: CatalogError) -> Self {
        AttemptError::Catalog(e)
    }
}

/// A change the sink commits with compare-and-swap, re-applied on each attempt's metadata.
pub(super) enum Change<'a> {
    /// Make the lake schema take rows of this (source) shape; `replace`: columns it cannot
    /// take are replaced (the table is copied again from scratch).
    Evolve(&'a arrow::datatypes::Schema, bool),
    /// Commit these files as one snapshot.
    Rows(&'a RowDelta),
    /// Remove the snapshots older than `older_than_ms`, except the current one and the
    /// newest `keep`.
    Expire { older_than_ms: i64, keep: usize },
    /// Raise the table's format version to this one (nothing when it is there already).
    Upgrade(iceberg::spec::FormatVersion),
}

impl<C: Catalog> IcebergSink<C> {
    /// Builds `change` on `metadata` (what `pointer` names) and writes the metadata file that
    /// would commit it; `None` when `metadata` needs no change.
    pub(super) async fn stage(
        &self,
        lake: &CatalogTable,
        change: &Change<'_>,
        pointer: &Pointer,
        metadata: TableMetadata,
    ) -> Result<Result<StagedMetadata, TableMetadata>> {
        match change {
            Change::Evolve(incoming, replace) => {
                let evolved = table::evolve(
                    metadata.current_schema(),
                    metadata.last_column_id(),
                    incoming,
                    *replace,
                )
                .map_err(|m| sink_error(lake, m))?;
                let Some(evolved) = evolved else {
                    return Ok(Err(metadata));
                };
                let updated = metadata
                    .into_builder(Some(pointer.metadata_location.clone()))
                    .add_current_schema(evolved)
                    .and_then(|b| b.build())
                    .map_err(|e| iceberg_error(lake, "evolve the schema", e))?
                    .metadata;
                row_delta::write_next_metadata(&self.file_io, &pointer.metadata_location, updated)
                    .await
                    .map(Ok)
                    .map_err(|e| stage_error(lake, e))
            }
            Change::Rows(delta) => {
                row_delta::stage(&self.file_io, &pointer.metadata_location, metadata, delta)
                    .await
                    .map(Ok)
                    .map_err(|e| stage_error(lake, e))
            }
            Change::Upgrade(version) => {
                if metadata.format_version() >= *version {
                    return Ok(Err(metadata));
                }
                let updated = metadata
                    .into_builder(Some(pointer.metadata_location.clone()))
                    .upgrade_format_version(*version)
                    .and_then(|b| b.build())
                    .map_err(|e| iceberg_error(lake, "upgrade the format version", e))?
                    .metadata;
                row_delta::write_next_metadata(&self.file_io, &pointer.metadata_location, updated)
                    .await
                    .map(Ok)
                    .map_err(|e| stage_error(lake, e))
            }
            Change::Expire {
                older_than_ms,
                keep,
            } => {
                let expired = expired_snapshots(&metadata, *older_than_ms, *keep);
                if expired.is_empty() {
                    return Ok(Err(metadata));
                }
                let updated = metadata
                    .into_builder(Some(pointer.metadata_location.clone()))
                    .remove_snapshots(&expired)
                    .build()
                    .map_err(|e| iceberg_error(lake, "expire snapshots", e))?
                    .metadata;
                row_delta::write_next_metadata(&self.file_io, &pointer.metadata_location, updated)
                    .await
                    .map(Ok)
                    .map_err(|e| stage_error(lake, e))
            }
        }
    }

    /// Expires the snapshots of `lake` older than `older_than_ms` (milliseconds since the
    /// epoch), keeping the current one and the newest `keep`, by compare-and-swap (a commit
    /// landing meanwhile is kept and the choice made again). Returns the table after it and
    /// how many snapshots went.
    pub async fn expire_snapshots(
        &self,
        lake: &CatalogTable,
        pointer: &Pointer,
        metadata: &TableMetadata,
        older_than_ms: i64,
        keep: usize,
    ) -> Result<(Pointer, TableMetadata, usize)> {
        let before = metadata.snapshots().len();
        let (pointer, metadata) = self
            .commit_change(
                lake,
                pointer,
                metadata,
                Change::Expire {
                    older_than_ms,
                    keep,
                },
            )
            .await?;
        let expired = before.saturating_sub(metadata.snapshots().len());
        Ok((pointer, metadata, expired))
    }

    /// Commits `change` by compare-and-swap, starting from the known `pointer` and
    /// `metadata`; after a lost race, reloads and re-applies. Returns the table's pointer and
    /// metadata after the commit (unchanged when there was nothing to do).
    pub(super) async fn commit_change(
        &self,
        lake: &CatalogTable,
        pointer: &Pointer,
        metadata: &TableMetadata,
        change: Change<'_>,
    ) -> Result<(Pointer, TableMetadata)> {
        // one commit of a table at a time in this process: the writer's, a scheduled
        // compaction's, an expiry's. Each commit then stages on the table as the previous one
        // left it, so a compaction beside a writer committing every second lands at its turn
        // instead of losing every compare-and-swap to commits quicker than its staging.
        let _turn = self.settings.commit_gates.hold(lake).await;
        self.commit_in_turn(lake, pointer, metadata, change).await
    }

    /// [`IcebergSink::commit_change`] by a caller that holds `lake`'s turn.
    pub(super) async fn commit_in_turn(
        &self,
        lake: &CatalogTable,
        pointer: &Pointer,
        metadata: &TableMetadata,
        change: Change<'_>,
    ) -> Result<(Pointer, TableMetadata)> {
        let staged: Mutex<Option<StagedMetadata>> = Mutex::new(None);
        // every attempt's staged file and the snapshot it adds: an attempt whose answer was
        // lost may have landed, and is recognised by either
        let attempts: Mutex<Vec<(String, Option<i64>)>> = Mutex::new(Vec::new());
        let outcome = commit_with_retry(&self.catalog, lake, &self.settings.retry, |current| {
            let staged = &staged;
            let attempts = &attempts;
            let change = &change;
            async move {
                let base = if current.metadata_location == pointer.metadata_location {
                    metadata.clone()
                } else {
                    self.read_metadata(lake, &current)
                        .await
                        .map_err(AttemptError::Failed)?
                };
                // An earlier attempt whose answer was lost may have landed, with another
                // commit on top of it since: its metadata file is then in the table's log (a
                // catalog that swaps pointers), or its snapshot is in the table (one that
                // writes its own metadata, REST; snapshot ids are unique per commit), and the
                // change is done (staging it again would find the lake past it, or apply it
                // twice).
                let landed = attempts
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .find(|(location, snapshot)| {
                        base.metadata_log()
                            .iter()
                            .any(|m| &m.metadata_file == location)
                            || snapshot.is_some_and(|id| base.snapshot_by_id(id).is_some())
                    })
                    .map(|(location, _)| location.clone());
                if let Some(earlier) = landed {
                    tracing::info!(
                        table = %lake,
                        metadata = %earlier,
                        "a commit whose answer was lost had landed; the table moved on since"
                    );
                    return Err(AttemptError::Unchanged(current, Box::new(base)));
                }
                let base_snapshot = base.current_snapshot_id();
                match self
                    .stage(lake, change, &current, base)
                    .await
                    .map_err(AttemptError::Failed)?
                {
                    Ok(next) => {
                        let added = next
                            .metadata
                            .current_snapshot_id()
                            .filter(|id| Some(*id) != base_snapshot);
                        attempts
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push((next.location.clone(), added));
                        *staged.lock().unwrap_or_else(PoisonError::into_inner) = Some(next.clone());
                        Ok(next)
                    }
                    Err(unchanged) => Err(AttemptError::Unchanged(current, Box::new(unchanged))),
                }
            }
        })
        .await;
        if self.catalog.writes_metadata() && self.settings.removes_files {
            // the catalog wrote its own metadata files: the staged ones only described the
            // change, and nothing references them
            let files = attempts
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner);
            for (file, _) in files {
                if let Err(e) = self.file_io.delete(&file).await {
                    tracing::warn!(
                        table = %lake,
                        file = %file,
                        error = %e,
                        "a staged metadata file could not be removed; compact's orphan \
                         removal takes it later"
                    );
                }
            }
        }
        match outcome {
            Ok(committed) => {
                let staged = staged
                    .into_inner()
                    .unwrap_or_else(PoisonError::into_inner)
                    .filter(|s| s.location == committed.metadata_location);
                let after = match staged {
                    Some(staged) => staged.metadata,
                    None => self.read_metadata(lake, &committed).await?,
                };
                // the files this commit pushed off the metadata log; the ones an earlier
                // base (before a lost race) pushed off were the winner's to remove
                let superseded = if self.settings.removes_files {
                    table::superseded_metadata(
                        &pointer.metadata_location,
                        metadata,
                        &committed.metadata_location,
                        &after,
                    )
                } else {
                    Vec::new()
                };
                for file in superseded {
                    if let Err(e) = self.file_io.delete(&file).await {
                        tracing::warn!(
                            table = %lake,
                            file = %file,
                            error = %e,
                            "a metadata file off the log could not be removed; compact's \
                             orphan removal takes it later"
                        );
                    }
                }
                Ok((committed, after))
            }
            Err(AttemptError::Unchanged(pointer, metadata)) => Ok((pointer, *metadata)),
            Err(AttemptError::Failed(e)) => Err(e),
            Err(AttemptError::Catalog(e)) => Err(catalog_error(lake, e)),
        }
    }
}
