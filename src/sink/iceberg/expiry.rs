//! Snapshot expiry on the writer's own cadence: which snapshots go (never the current one,
//! what tags and branches hold, or the checkpoint's), and the files only they referenced —
//! their manifest lists, the manifests no remaining snapshot lists, and the data and delete
//! files an expired snapshot removed from the table (a compaction's replaced files, a
//! truncate's) once no kept snapshot can still hold them — removed after the expiry commits,
//! so a table committed every few seconds keeps bounded metadata between compactions, and
//! its storage does not grow with what compaction replaces.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use iceberg::io::FileIO;
use iceberg::spec::{FormatVersion, Manifest, ManifestList, ManifestStatus, TableMetadata};

use super::{IcebergSink, TableState, table};
use crate::catalog::{Catalog, CatalogTable, Pointer};
use crate::error::Result;

/// How many commits of a table the writer makes between two expiries of its own: enough
/// that the cost (one metadata-only commit) is small beside the commits, few enough that
/// the table's metadata never holds many snapshots past `snapshot_retention`.
pub(super) const EXPIRE_EVERY: u32 = 100;

/// Manifest lists read at once when learning a table's snapshots.
const READ_AHEAD: usize = 16;

/// Which manifests each snapshot of a table lists, read once per snapshot and kept for the
/// life of the sink: an expiry then knows which manifests only the expired snapshots
/// referenced without reading every remaining snapshot's list again. Paths are interned, so a
/// manifest carried by a thousand snapshots is one string.
#[derive(Debug, Default)]
pub struct ManifestRefs {
    ids: HashMap<Arc<str>, u32>,
    paths: Vec<Arc<str>>,
    lists: HashMap<i64, Box<[u32]>>,
    /// Per known snapshot that removed files from the table: its sequence number and the
    /// manifests it wrote that mark them deleted.
    removing: HashMap<i64, (i64, Vec<Arc<str>>)>,
    /// Files removed from the table by snapshots expired since, with the sequence number of
    /// the snapshot that removed each: waiting until no kept snapshot is older than it.
    removed: Vec<(i64, Arc<str>)>,
}

impl ManifestRefs {
    fn intern(&mut self, path: &str) -> u32 {
        if let Some(id) = self.ids.get(path) {
            return *id;
        }
        let id = self.paths.len() as u32;
        let path: Arc<str> = Arc::from(path);
        self.paths.push(path.clone());
        self.ids.insert(path, id);
        id
    }

    /// Reads the manifest lists of `metadata`'s snapshots not known yet. Returns whether
    /// every one could be read (a snapshot whose list is gone — another engine expired it —
    /// leaves what it referenced unknown).
    pub(super) async fn learn(&mut self, file_io: &FileIO, metadata: &TableMetadata) -> bool {
        let unknown: Vec<(i64, String)> = metadata
            .snapshots()
            .filter(|s| !self.lists.contains_key(&s.snapshot_id()))
            .map(|s| (s.snapshot_id(), s.manifest_list().to_string()))
            .collect();
        let version = metadata.format_version();
        let read: Vec<Option<(i64, ManifestList)>> = futures::stream::iter(unknown)
            .map(|(id, list)| async move {
                let bytes = file_io.new_input(&list)?.read().await?;
                let list = ManifestList::parse_with_version(&bytes, version)?;
                Ok::<_, iceberg::Error>((id, list))
            })
            .buffer_unordered(READ_AHEAD)
            .map(Result::ok)
            .collect()
            .await;
        let mut complete = true;
        for entry in read {
            let Some((id, list)) = entry else {
                complete = false;
                continue;
            };
            let ids = list
                .entries()
                .iter()
                .map(|m| self.intern(&m.manifest_path))
                .collect();
            self.lists.insert(id, ids);
            let removing: Vec<Arc<str>> = list
                .entries()
                .iter()
                .filter(|m| m.added_snapshot_id == id && m.has_deleted_files())
                .map(|m| Arc::from(m.manifest_path.as_str()))
                .collect();
            if let Some(snapshot) = metadata.snapshot_by_id(id)
                && !removing.is_empty()
            {
                self.removing
                    .insert(id, (snapshot.sequence_number(), removing));
            }
        }
        complete
    }

    /// Reads which files known snapshots removed from the table (their manifests' `DELETED`
    /// entries) once it matters: for a snapshot `after` no longer has (before its manifests
    /// are removed with it), and for one no kept snapshot is older than, `oldest` being the
    /// kept snapshots' lowest sequence number (what it removed is then in no kept snapshot). They wait in memory until [`removable`](Self::removable)
    /// lets them go. A manifest that cannot be read leaves its files to orphan removal.
    async fn collect_removed(
        &mut self,
        file_io: &FileIO,
        after: &TableMetadata,
        oldest: Option<i64>,
    ) {
        let due: Vec<i64> = self
            .removing
            .iter()
            .filter(|(id, (sequence, _))| {
                after.snapshot_by_id(**id).is_none() || oldest.is_some_and(|o| *sequence <= o)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some((sequence, manifests)) = self.removing.remove(&id) else {
                continue;
            };
            for path in manifests {
                let read = async {
                    let bytes = file_io.new_input(path.as_ref())?.read().await?;
                    Manifest::parse_avro(&bytes)
                };
                match read.await {
                    Ok(manifest) => self.removed.extend(
                        manifest
                            .entries()
                            .iter()
                            .filter(|e| {
                                e.status() == ManifestStatus::Deleted && e.snapshot_id() == Some(id)
                            })
                            .map(|e| (sequence, Arc::from(e.file_path()))),
                    ),
                    Err(e) => tracing::warn!(
                        manifest = %path,
                        error = %e,
                        "could not read which files a snapshot removed from the table; \
                         compact's orphan removal takes them later"
                    ),
                }
            }
        }
    }

    /// The files removed from the table that no kept snapshot can hold any more, `oldest`
    /// being the kept snapshots' lowest sequence number ([`oldest_sequence`]): on a
    /// table whose only history is `main` (sequence numbers then order its snapshots), a
    /// file removed by the snapshot of sequence number `n` is in no snapshot from `n` on, so
    /// once every kept snapshot is at `n` or later nothing reads it. With tags or other
    /// branches (which may hold older states), or on a format v1 table, nothing is released
    /// and orphan removal takes the files.
    fn removable(&mut self, oldest: Option<i64>) -> Vec<Arc<str>> {
        let Some(oldest) = oldest else {
            self.removed.clear();
            return Vec::new();
        };
        let (go, stay): (Vec<_>, Vec<_>) = std::mem::take(&mut self.removed)
            .into_iter()
            .partition(|(sequence, _)| *sequence <= oldest);
        self.removed = stay;
        go.into_iter().map(|(_, path)| path).collect()
    }

    /// The files removed from the table (by snapshots known here) that no snapshot of `after`
    /// holds any more: [`collect_removed`](Self::collect_removed), then
    /// [`removable`](Self::removable), with `after`'s history read once.
    pub(super) async fn take_removable(
        &mut self,
        file_io: &FileIO,
        after: &TableMetadata,
    ) -> Vec<Arc<str>> {
        let oldest = oldest_sequence(after);
        self.collect_removed(file_io, after, oldest).await;
        self.removable(oldest)
    }

    /// Forgets the snapshots `metadata` no longer has; returns the manifests they listed
    /// that none of its snapshots lists. Every snapshot of `metadata` must be known
    /// ([`learn`](Self::learn)).
    pub(super) fn release(&mut self, metadata: &TableMetadata) -> Vec<Arc<str>> {
        let gone: Vec<i64> = self
            .lists
            .keys()
            .filter(|id| metadata.snapshot_by_id(**id).is_none())
            .copied()
            .collect();
        if gone.is_empty() {
            return Vec::new();
        }
        // what they removed from the table was collected by the expiry that took them, or
        // is orphan removal's when another writer expired them
        self.removing
            .retain(|id, _| metadata.snapshot_by_id(*id).is_some());
        let mut candidates: HashSet<u32> = HashSet::new();
        for id in gone {
            if let Some(list) = self.lists.remove(&id) {
                candidates.extend(list.iter().copied());
            }
        }
        let mut live: HashSet<u32> = HashSet::new();
        for list in self.lists.values() {
            live.extend(list.iter().copied());
        }
        let unreferenced = candidates
            .difference(&live)
            .filter_map(|id| self.paths.get(*id as usize).cloned())
            .collect();
        // renumber what is still referenced, so the table's paths stay bounded
        let old = std::mem::take(&mut self.paths);
        self.ids.clear();
        let mut renumbered: HashMap<u32, u32> = HashMap::new();
        let lists = std::mem::take(&mut self.lists);
        for (snapshot, list) in lists {
            let list = list
                .iter()
                .filter_map(|id| {
                    if let Some(new) = renumbered.get(id) {
                        return Some(*new);
                    }
                    let path = old.get(*id as usize)?;
                    let new = self.intern(path);
                    renumbered.insert(*id, new);
                    Some(new)
                })
                .collect();
            self.lists.insert(snapshot, list);
        }
        unreferenced
    }
}

/// What one expiry did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Expired {
    /// Snapshots expired.
    pub snapshots: usize,
    /// Manifest lists and manifests removed with them.
    pub files: usize,
    /// Data and delete files the expired snapshots had removed from the table (replaced by
    /// compaction, truncated), removed from storage.
    pub data_files: usize,
}

impl<C: Catalog> IcebergSink<C> {
    /// Expires `lake`'s snapshots older than `older_than_ms` (milliseconds since the epoch),
    /// keeping the newest `keep`, what tags and branches hold and the checkpoint's snapshot,
    /// by compare-and-swap; then removes the manifest lists of the snapshots that went and the
    /// manifests no remaining snapshot lists (only files in the table's own metadata
    /// directory), so that neither `metadata/` nor the snapshot count grows with the commits.
    /// `refs` knows the manifests of the snapshots already read (the writer keeps one per
    /// table; `compact` starts afresh). A manifest is removed only when every remaining
    /// snapshot's list was read; otherwise compaction's orphan removal takes it later, as it
    /// takes a file whose removal failed. Returns the table after it.
    pub async fn expire_removing_files(
        &self,
        lake: &CatalogTable,
        pointer: &Pointer,
        metadata: &TableMetadata,
        older_than_ms: i64,
        keep: usize,
        refs: &mut ManifestRefs,
    ) -> Result<(Pointer, TableMetadata, Expired)> {
        if expired_snapshots(metadata, older_than_ms, keep).is_empty() {
            // snapshots another writer (or `compact`) expired are forgotten here
            refs.release(metadata);
            return Ok((pointer.clone(), metadata.clone(), Expired::default()));
        }
        // what the snapshots about to go list, read before their lists are removed
        if self.settings.removes_files {
            refs.learn(&self.file_io, metadata).await;
        }
        let lists: Vec<(i64, String)> = metadata
            .snapshots()
            .map(|s| (s.snapshot_id(), s.manifest_list().to_string()))
            .collect();
        let (pointer, after, snapshots) = self
            .expire_snapshots(lake, pointer, metadata, older_than_ms, keep)
            .await?;
        if !self.settings.removes_files {
            refs.release(&after);
            return Ok((
                pointer,
                after,
                Expired {
                    snapshots,
                    ..Expired::default()
                },
            ));
        }
        let own = table::metadata_directory(&after);
        let remove = |file: String| async move {
            match self.file_io.delete(&file).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(
                        table = %lake,
                        file = %file,
                        error = %e,
                        "a file only expired snapshots referenced could not be removed; \
                         compact's orphan removal takes it later"
                    );
                    false
                }
            }
        };
        let mut files = 0usize;
        // snapshots another writer added meanwhile must be known before anything is removed
        let complete = refs.learn(&self.file_io, &after).await;
        let removable = refs.take_removable(&self.file_io, &after).await;
        let mut data_files = 0usize;
        if gc_enabled(&after) {
            let location = format!("{}/", after.location().trim_end_matches('/'));
            for file in removable {
                // a `compact` that starts afresh finds again what an earlier one removed
                let there = self.file_io.exists(file.as_ref()).await.unwrap_or(true);
                if file.starts_with(&location) && there && remove(file.to_string()).await {
                    data_files += 1;
                }
            }
        }
        let unreferenced = refs.release(&after);
        if complete {
            for manifest in unreferenced {
                if manifest.starts_with(&own) && remove(manifest.to_string()).await {
                    files += 1;
                }
            }
        }
        for (id, list) in lists {
            if after.snapshot_by_id(id).is_some() || !list.starts_with(&own) {
                continue;
            }
            if remove(list).await {
                files += 1;
            }
        }
        Ok((
            pointer,
            after,
            Expired {
                snapshots,
                files,
                data_files,
            },
        ))
    }

    /// [`expire_removing_files`](Self::expire_removing_files) on the writer's cadence, with
    /// `snapshot_retention` and `keep_snapshots`. A failure is logged: the next expiry tries
    /// again.
    pub(super) async fn expire_on_cadence(&self, state: &mut TableState) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let older_than_ms =
            now_ms.saturating_sub(self.settings.snapshot_retention.as_millis() as i64);
        let keep = self.settings.keep_snapshots.max(1);
        let mut refs = std::mem::take(&mut state.manifest_refs);
        let expired = self
            .expire_removing_files(
                &state.lake,
                &state.pointer,
                &state.metadata,
                older_than_ms,
                keep,
                &mut refs,
            )
            .await;
        state.manifest_refs = refs;
        match expired {
            Ok((pointer, metadata, expired)) => {
                if expired.snapshots > 0 {
                    tracing::info!(
                        table = %state.lake,
                        expired = expired.snapshots,
                        snapshots = metadata.snapshots().len(),
                        files_removed = expired.files,
                        data_files_removed = expired.data_files,
                        "expired old snapshots"
                    );
                }
                state.pointer = pointer;
                state.metadata = metadata;
            }
            Err(e) => tracing::warn!(
                table = %state.lake,
                error = %e,
                "expiring old snapshots failed; the next expiry tries again"
            ),
        }
    }
}

/// The snapshots of `metadata` older than `older_than_ms`, except the current one, the
/// newest `keep`, what tags and branches hold, and the snapshot the table's checkpoint is
/// read from (other engines' commits on top of it must not expire it away).
pub(super) fn expired_snapshots(
    metadata: &TableMetadata,
    older_than_ms: i64,
    keep: usize,
) -> Vec<i64> {
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

/// The sequence number of `metadata`'s oldest snapshot, when sequence numbers order its whole
/// history: a format v2 table whose only ref is `main`.
fn oldest_sequence(metadata: &TableMetadata) -> Option<i64> {
    if metadata.format_version() < FormatVersion::V2 || !kept_by_refs(metadata).is_empty() {
        return None;
    }
    metadata.snapshots().map(|s| s.sequence_number()).min()
}

/// Whether the table lets its writers delete the files it no longer references (Iceberg's
/// `gc.enabled`, true unless set to false: a table registered in several catalogs sets it
/// false so that no one of them deletes what another still lists).
fn gc_enabled(metadata: &TableMetadata) -> bool {
    metadata
        .properties()
        .get("gc.enabled")
        .is_none_or(|v| !v.eq_ignore_ascii_case("false"))
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
