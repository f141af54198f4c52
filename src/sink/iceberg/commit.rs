//! Committing to an Iceberg table: a [`Change`] staged on the table's current metadata and
//! swapped in by compare-and-swap, rebuilt and tried again after a lost race; a commit whose
//! answer was lost is recognised in the metadata log; the metadata files a commit pushes off
//! the log are removed; snapshot expiry is one such change.

use std::sync::{Mutex, PoisonError};

use iceberg::spec::TableMetadata;

use super::row_delta::{self, RowDelta};
use super::{
    IcebergSink, TableState, catalog_error, iceberg_error, sink_error, stage_error, table,
};
use crate::catalog::{
    Catalog, CatalogError, CatalogTable, Pointer, StagedMetadata, commit_with_retry,
};
use crate::error::{Error, Result};

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
        let staged: Mutex<Option<StagedMetadata>> = Mutex::new(None);
        let outcome = commit_with_retry(&self.catalog, lake, &self.settings.retry, |current| {
            let staged = &staged;
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
                // commit on top of it since: its metadata file is then in the table's log,
                // and the change is done (staging it again would find the lake past it).
                let earlier = staged
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .as_ref()
                    .map(|s| s.location.clone());
                if let Some(earlier) = earlier
                    && base
                        .metadata_log()
                        .iter()
                        .any(|m| m.metadata_file == earlier)
                {
                    tracing::info!(
                        table = %lake,
                        metadata = %earlier,
                        "a commit whose answer was lost had landed; the table moved on since"
                    );
                    return Err(AttemptError::Unchanged(current, Box::new(base)));
                }
                match self
                    .stage(lake, change, &current, base)
                    .await
                    .map_err(AttemptError::Failed)?
                {
                    Ok(next) => {
                        *staged.lock().unwrap_or_else(PoisonError::into_inner) = Some(next.clone());
                        Ok(next)
                    }
                    Err(unchanged) => Err(AttemptError::Unchanged(current, Box::new(unchanged))),
                }
            }
        })
        .await;
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
                for file in table::superseded_metadata(
                    &pointer.metadata_location,
                    metadata,
                    &committed.metadata_location,
                    &after,
                ) {
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

/// How many commits of a table the writer makes between two expiries of its own: enough
/// that the cost (one metadata-only commit) is small beside the commits, few enough that
/// the table's metadata never holds many snapshots past `snapshot_retention`.
pub(super) const EXPIRE_EVERY: u32 = 100;

impl<C: Catalog> IcebergSink<C> {
    /// Expires `state`'s snapshots older than `snapshot_retention` (keeping the newest
    /// `keep_snapshots`, what tags and branches hold and the checkpoint's snapshot) and
    /// removes the manifest lists of those that went, so that a table committed every few
    /// seconds keeps bounded metadata between compactions. Manifests the expired snapshots
    /// alone referenced are left to compaction's orphan removal. A failure is logged: the
    /// next expiry tries again.
    pub(super) async fn expire_on_cadence(&self, state: &mut TableState) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let older_than_ms =
            now_ms.saturating_sub(self.settings.snapshot_retention.as_millis() as i64);
        let keep = self.settings.keep_snapshots.max(1);
        if expired_snapshots(&state.metadata, older_than_ms, keep).is_empty() {
            return;
        }
        let lists: Vec<(i64, String)> = state
            .metadata
            .snapshots()
            .map(|s| (s.snapshot_id(), s.manifest_list().to_string()))
            .collect();
        let expired = self
            .expire_snapshots(
                &state.lake,
                &state.pointer,
                &state.metadata,
                older_than_ms,
                keep,
            )
            .await;
        let (pointer, metadata, count) = match expired {
            Ok(expired) => expired,
            Err(e) => {
                tracing::warn!(
                    table = %state.lake,
                    error = %e,
                    "expiring old snapshots failed; the next expiry tries again"
                );
                return;
            }
        };
        let own = table::metadata_directory(&metadata);
        for (id, list) in lists {
            if metadata.snapshot_by_id(id).is_some() || !list.starts_with(&own) {
                continue;
            }
            if let Err(e) = self.file_io.delete(&list).await {
                tracing::warn!(
                    table = %state.lake,
                    file = %list,
                    error = %e,
                    "an expired snapshot's manifest list could not be removed; compact's \
                     orphan removal takes it later"
                );
            }
        }
        tracing::info!(
            table = %state.lake,
            expired = count,
            snapshots = metadata.snapshots().len(),
            "expired old snapshots"
        );
        state.pointer = pointer;
        state.metadata = metadata;
    }
}

/// The snapshots of `metadata` older than `older_than_ms`, except the current one, the
/// newest `keep`, what tags and branches hold, and the snapshot the table's checkpoint is
/// read from (other engines' commits on top of it must not expire it away).
fn expired_snapshots(metadata: &TableMetadata, older_than_ms: i64, keep: usize) -> Vec<i64> {
    let current = metadata.current_snapshot_id();
    let mut kept_by_refs = kept_by_refs(metadata);
    if let Ok(Some(head)) = table::lakewriter_head(metadata) {
        kept_by_refs.insert(head.snapshot_id());
    }
    let mut snapshots: Vec<(i64, i64)> = metadata
        .snapshots()
        .map(|s| (s.timestamp_ms(), s.snapshot_id()))
        .collect();
    snapshots.sort_unstable_by(|a, b| b.cmp(a));
    snapshots
        .into_iter()
        .skip(keep)
        .filter(|(at, id)| {
            *at < older_than_ms && Some(*id) != current && !kept_by_refs.contains(id)
        })
        .map(|(_, id)| id)
        .collect()
}

/// The snapshots tags and branches other than `main` hold: a tag's snapshot, and a branch's
/// head with its ancestry. Expiry never removes them: they are someone's named history.
fn kept_by_refs(metadata: &TableMetadata) -> std::collections::HashSet<i64> {
    let mut kept = std::collections::HashSet::new();
    // iceberg 0.10.1 lists no refs publicly: read them from the metadata's own JSON form
    let Ok(json) = serde_json::to_value(metadata) else {
        return kept;
    };
    let Some(refs) = json.get("refs").and_then(|r| r.as_object()) else {
        return kept;
    };
    for (name, reference) in refs {
        if name == iceberg::spec::MAIN_BRANCH {
            continue;
        }
        let Some(id) = reference.get("snapshot-id").and_then(|v| v.as_i64()) else {
            continue;
        };
        let branch = reference.get("type").and_then(|t| t.as_str()) == Some("branch");
        let mut next = Some(id);
        while let Some(id) = next {
            if !kept.insert(id) || !branch {
                break;
            }
            next = metadata
                .snapshot_by_id(id)
                .and_then(|s| s.parent_snapshot_id());
        }
    }
    kept
}
