//! Snapshot expiry on the writer's own cadence: which snapshots go (never the current one,
//! what tags and branches hold, or the checkpoint's), and the files only they referenced —
//! their manifest lists, and the manifests no remaining snapshot lists — removed after the
//! expiry commits, so a table committed every few seconds keeps bounded metadata between
//! compactions.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use iceberg::io::FileIO;
use iceberg::spec::{ManifestList, TableMetadata};

use super::{IcebergSink, TableState, table};
use crate::catalog::Catalog;

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
pub(super) struct ManifestRefs {
    ids: HashMap<Arc<str>, u32>,
    paths: Vec<Arc<str>>,
    lists: HashMap<i64, Box<[u32]>>,
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
        let read: Vec<Option<(i64, Vec<String>)>> = futures::stream::iter(unknown)
            .map(|(id, list)| async move {
                let bytes = file_io.new_input(&list)?.read().await?;
                let list = ManifestList::parse_with_version(&bytes, version)?;
                Ok::<_, iceberg::Error>((
                    id,
                    list.entries()
                        .iter()
                        .map(|m| m.manifest_path.clone())
                        .collect(),
                ))
            })
            .buffer_unordered(READ_AHEAD)
            .map(Result::ok)
            .collect()
            .await;
        let mut complete = true;
        for entry in read {
            match entry {
                Some((id, manifests)) => {
                    let ids = manifests.iter().map(|p| self.intern(p)).collect();
                    self.lists.insert(id, ids);
                }
                None => complete = false,
            }
        }
        complete
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

impl<C: Catalog> IcebergSink<C> {
    /// Expires `state`'s snapshots older than `snapshot_retention` (keeping the newest
    /// `keep_snapshots`, what tags and branches hold and the checkpoint's snapshot) and
    /// removes the manifest lists of those that went and the manifests no remaining snapshot
    /// lists (only files in the table's own metadata directory). A manifest is removed only
    /// when every remaining snapshot's list was read; otherwise compaction's orphan removal
    /// takes it later. A failure is logged: the next expiry tries again.
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
        // what the snapshots about to go list, read before their lists are removed
        state
            .manifest_refs
            .learn(&self.file_io, &state.metadata)
            .await;
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
        let mut removed = 0usize;
        let remove = |file: String| {
            let io = &self.file_io;
            let lake = &state.lake;
            async move {
                if let Err(e) = io.delete(&file).await {
                    tracing::warn!(
                        table = %lake,
                        file = %file,
                        error = %e,
                        "a file only expired snapshots referenced could not be removed; \
                         compact's orphan removal takes it later"
                    );
                    false
                } else {
                    true
                }
            }
        };
        // snapshots another writer added meanwhile must be known before anything is removed
        let complete = state.manifest_refs.learn(&self.file_io, &metadata).await;
        let unreferenced = state.manifest_refs.release(&metadata);
        if complete {
            for manifest in unreferenced {
                if manifest.starts_with(&own) && remove(manifest.to_string()).await {
                    removed += 1;
                }
            }
        }
        for (id, list) in lists {
            if metadata.snapshot_by_id(id).is_some() || !list.starts_with(&own) {
                continue;
            }
            if remove(list).await {
                removed += 1;
            }
        }
        tracing::info!(
            table = %state.lake,
            expired = count,
            snapshots = metadata.snapshots().len(),
            files_removed = removed,
            "expired old snapshots"
        );
        state.pointer = pointer;
        state.metadata = metadata;
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
