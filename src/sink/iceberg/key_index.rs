//! The key index of an upsert table in `delete_mode = "position"`: primary key → (data file,
//! row position) of the key's live row, in an embedded redb file on local disk, so that an
//! update or delete of a key already in the lake becomes a position delete instead of an
//! equality delete (the sink's use of it: `by_position`).
//!
//! It is a cache (DESIGN.md invariant 14): it records the snapshot it is exact for, and one that
//! does not match the table's current snapshot is brought up to it from the lake ([`bring_up`]) before it
//! is used. redb gives one ACID write transaction per update, so a crash leaves the index as of
//! its last update, never half of one, with its snapshot saying which.
//!
//! Keys are stored in Arrow's row format, which is not promised stable across Arrow releases:
//! the index records the format and the key's types, and any difference means a rebuild.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, Rows, SortField};
use iceberg::io::FileIO;
use parquet::arrow::ProjectionMask;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::files::conform;
use super::positions::{DeletedPositions, open};

/// Key (row format) → (file id, row position).
const KEYS: TableDefinition<&[u8], At> = TableDefinition::new("keys");
/// File id → data file path.
const FILES: TableDefinition<u32, &str> = TableDefinition::new("files");
/// Data file path → file id.
const FILE_IDS: TableDefinition<&str, u32> = TableDefinition::new("file_ids");
/// What the index is exact for: `snapshot` (i64, big-endian) and `layout` (text).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// The key encoding: bumped when the Arrow major version (and so its row format) changes, or
/// the stored value's type does (an index of another layout is rebuilt).
const ENCODING: &str = "arrow-58-row;at-12";

/// Where [`KEYS`] has a key's row: a file id of [`FILES`] and the row's position, stored as 12
/// bytes (the id's 4, then the position's 8, little-endian). redb's tuples allocate a buffer
/// for every value they write; this writes none, which a copy's millions of inserts notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct At {
    file: u32,
    position: u64,
}

impl redb::Value for At {
    type SelfType<'a> = At;
    type AsBytes<'a> = [u8; 12];

    fn fixed_width() -> Option<usize> {
        Some(12)
    }

    fn from_bytes<'a>(data: &'a [u8]) -> At
    where
        Self: 'a,
    {
        // redb hands a fixed-width value its 12 bytes
        let (file, position) = data.split_at(4.min(data.len()));
        At {
            file: file.try_into().map_or(u32::MAX, u32::from_le_bytes),
            position: position.try_into().map_or(u64::MAX, u64::from_le_bytes),
        }
    }

    fn as_bytes<'a, 'b: 'a>(value: &'a At) -> [u8; 12]
    where
        Self: 'b,
    {
        let mut bytes = [0; 12];
        bytes[..4].copy_from_slice(&value.file.to_le_bytes());
        bytes[4..].copy_from_slice(&value.position.to_le_bytes());
        bytes
    }

    fn type_name() -> redb::TypeName {
        redb::TypeName::new("lakewriter::key_index::At")
    }
}

/// Where a key's live row is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowLocation {
    /// The data file's path, as the table's manifests name it (shared by its rows).
    pub file: std::sync::Arc<str>,
    /// The row's position in the file (0-based).
    pub position: u64,
}

/// What the index is exact for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExactFor {
    /// The snapshot id.
    pub snapshot: i64,
    /// The key encoding and types it was written with.
    pub layout: String,
}

/// Every this many updates, one is written durably (fsync); the others are written without
/// one. A crash loses at most the updates since the last durable one, and the index then
/// records the older snapshot it is exact for, so it catches up from the lake: the fsync per
/// flush would buy nothing the lake does not already hold.
const DURABLE_EVERY: u32 = 16;

/// The key index of one table.
#[derive(Debug)]
pub struct KeyIndex {
    db: Database,
    layout: String,
    converter: RowConverter,
    /// Updates applied by this handle (see [`DURABLE_EVERY`]).
    updates: std::sync::atomic::AtomicU32,
}

impl KeyIndex {
    /// Opens (or creates) the index file at `path` for keys of the types of `key` (the key
    /// columns, in order), with a page cache of `cache_bytes`.
    pub fn open(path: &Path, key: &SchemaRef, cache_bytes: usize) -> Result<Self, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("create the key index's directory {}: {e}", dir.display()))?;
        }
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| format!("open the key index {}: {e}", path.display()))?;
        let converter = RowConverter::new(
            key.fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .map_err(|e| format!("key index {}: {e}", path.display()))?;
        let layout = format!(
            "{ENCODING}:{}",
            key.fields()
                .iter()
                .map(|f| format!("{}={}", f.name(), f.data_type()))
                .collect::<Vec<_>>()
                .join(",")
        );
        Ok(KeyIndex {
            db,
            layout,
            converter,
            updates: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// The converter that encodes keys for [`KeyIndex::lookup`] and [`IndexUpdate`].
    pub fn converter(&self) -> &RowConverter {
        &self.converter
    }

    /// The snapshot the index is exact for, if it is for this key layout; `None` for an index
    /// never built, or built for other key types or another encoding (to be rebuilt).
    pub fn exact_for(&self) -> Result<Option<i64>, String> {
        let read = self.db.begin_read().map_err(|e| e.to_string())?;
        let meta = match read.open_table(META) {
            Ok(meta) => meta,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let layout = meta.get("layout").map_err(|e| e.to_string())?;
        if layout.as_ref().map(|l| l.value()) != Some(self.layout.as_bytes()) {
            return Ok(None);
        }
        let snapshot = meta.get("snapshot").map_err(|e| e.to_string())?;
        Ok(snapshot.and_then(|s| <[u8; 8]>::try_from(s.value()).ok().map(i64::from_be_bytes)))
    }

    /// Where each key of `keys` (encoded by [`KeyIndex::converter`]) has its live row.
    pub fn lookup(&self, keys: &Rows) -> Result<Vec<Option<RowLocation>>, String> {
        self.lookup_encoded(keys.iter().map(|k| k.data()), keys.num_rows())
    }

    /// [`KeyIndex::lookup`] of keys already encoded (`count` of them).
    pub fn lookup_encoded<'k>(
        &self,
        keys: impl Iterator<Item = &'k [u8]>,
        count: usize,
    ) -> Result<Vec<Option<RowLocation>>, String> {
        let read = self.db.begin_read().map_err(|e| e.to_string())?;
        let (index, files) = match (read.open_table(KEYS), read.open_table(FILES)) {
            (Ok(index), Ok(files)) => (index, files),
            (Err(redb::TableError::TableDoesNotExist(_)), _)
            | (_, Err(redb::TableError::TableDoesNotExist(_))) => {
                return Ok(vec![None; count]);
            }
            (Err(e), _) | (_, Err(e)) => return Err(e.to_string()),
        };
        let mut paths: HashMap<u32, std::sync::Arc<str>> = HashMap::new();
        let mut found = Vec::with_capacity(count);
        for key in keys {
            let Some(entry) = index.get(key).map_err(|e| e.to_string())? else {
                found.push(None);
                continue;
            };
            let At { file, position } = entry.value();
            let path = match paths.get(&file) {
                Some(path) => path.clone(),
                None => {
                    let path: std::sync::Arc<str> = files
                        .get(file)
                        .map_err(|e| e.to_string())?
                        .ok_or_else(|| format!("the key index names file id {file}, unknown"))?
                        .value()
                        .into();
                    paths.insert(file, path.clone());
                    path
                }
            };
            found.push(Some(RowLocation {
                file: path,
                position,
            }));
        }
        Ok(found)
    }

    /// Applies `update` and records `snapshot` as the one the index is exact for (`None`: for
    /// none, as while a rebuild is under way), in one transaction: after a crash the index is
    /// as before or as after, never in between.
    pub fn apply(&self, snapshot: Option<i64>, update: &IndexUpdate) -> Result<(), String> {
        let mut write = self.db.begin_write().map_err(|e| e.to_string())?;
        let n = self
            .updates
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % DURABLE_EVERY != DURABLE_EVERY - 1 {
            write
                .set_durability(redb::Durability::None)
                .map_err(|e| e.to_string())?;
        }
        {
            let mut index = write.open_table(KEYS).map_err(|e| e.to_string())?;
            let mut files = write.open_table(FILES).map_err(|e| e.to_string())?;
            let mut ids = write.open_table(FILE_IDS).map_err(|e| e.to_string())?;
            for path in &update.removed_files {
                if let Some(id) = ids.remove(path.as_str()).map_err(|e| e.to_string())? {
                    files.remove(id.value()).map_err(|e| e.to_string())?;
                }
            }
            // every key added, with its location; of a key given twice, the later is kept
            let mut entries: Vec<(&[u8], At)> =
                Vec::with_capacity(update.added.iter().map(|(_, keys)| keys.len()).sum());
            for (path, keys) in &update.added {
                let known = ids
                    .get(path.as_str())
                    .map_err(|e| e.to_string())?
                    .map(|id| id.value());
                let id = match known {
                    Some(id) => id,
                    None => {
                        let next = files
                            .last()
                            .map_err(|e| e.to_string())?
                            .map_or(0, |(id, _)| id.value() + 1);
                        files
                            .insert(next, path.as_str())
                            .map_err(|e| e.to_string())?;
                        ids.insert(path.as_str(), next).map_err(|e| e.to_string())?;
                        next
                    }
                };
                entries.extend(
                    keys.iter()
                        .map(|(key, position)| (key, At { file: id, position })),
                );
            }
            sort_unique(&mut entries);
            let mut removed: Vec<&[u8]> = update.removed.iter().map(Vec::as_slice).collect();
            if !removed.is_sorted() {
                removed.sort_unstable();
            }
            // one walk of both in key order: a key removed and added again (an update) is
            // only overwritten, half the B-tree's page writes of an update-heavy flush; a key
            // only removed goes; the keys new to the index are spliced in runs, one per gap
            // between its keys. With nothing removed (a copy's chunk, inserts) every key goes
            // to the splice as it is
            let fresh = if removed.is_empty() {
                entries
            } else {
                let mut removed = removed.into_iter().peekable();
                let mut fresh: Vec<(&[u8], At)> = Vec::with_capacity(entries.len());
                for (key, location) in entries {
                    while let Some(gone) = removed.next_if(|gone| *gone < key) {
                        index.remove(gone).map_err(|e| e.to_string())?;
                    }
                    if removed.next_if_eq(&key).is_some() {
                        while removed.next_if_eq(&key).is_some() {}
                        index.insert(key, location).map_err(|e| e.to_string())?;
                    } else {
                        fresh.push((key, location));
                    }
                }
                for gone in removed {
                    index.remove(gone).map_err(|e| e.to_string())?;
                }
                fresh
            };
            splice(&mut index, fresh)?;
            let mut meta = write.open_table(META).map_err(|e| e.to_string())?;
            meta.insert("layout", self.layout.as_bytes())
                .map_err(|e| e.to_string())?;
            match snapshot {
                Some(snapshot) => meta
                    .insert("snapshot", snapshot.to_be_bytes().as_slice())
                    .map(drop),
                None => meta.remove("snapshot").map(drop),
            }
            .map_err(|e| e.to_string())?;
        }
        write.commit().map_err(|e| e.to_string())
    }

    /// The data files it knows (every data file live at the snapshot it is exact for).
    pub fn files(&self) -> Result<HashSet<String>, String> {
        let read = self.db.begin_read().map_err(|e| e.to_string())?;
        let ids = match read.open_table(FILE_IDS) {
            Ok(ids) => ids,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(HashSet::new()),
            Err(e) => return Err(e.to_string()),
        };
        let mut paths = HashSet::new();
        for entry in ids.iter().map_err(|e| e.to_string())? {
            let (path, _) = entry.map_err(|e| e.to_string())?;
            paths.insert(path.value().to_string());
        }
        Ok(paths)
    }

    /// Writes what the updates so far hold durably (after a rebuild, and when the index is
    /// closed).
    pub fn persist(&self) -> Result<(), String> {
        let write = self.db.begin_write().map_err(|e| e.to_string())?;
        write.commit().map_err(|e| e.to_string())
    }

    /// Empties the index (before a rebuild), in one transaction.
    pub fn clear(&self) -> Result<(), String> {
        let write = self.db.begin_write().map_err(|e| e.to_string())?;
        write.delete_table(KEYS).map_err(|e| e.to_string())?;
        write.delete_table(FILES).map_err(|e| e.to_string())?;
        write.delete_table(FILE_IDS).map_err(|e| e.to_string())?;
        write.delete_table(META).map_err(|e| e.to_string())?;
        write.commit().map_err(|e| e.to_string())
    }

    /// How many keys it holds.
    pub fn len(&self) -> Result<u64, String> {
        let read = self.db.begin_read().map_err(|e| e.to_string())?;
        match read.open_table(KEYS) {
            Ok(index) => index.len().map_err(|e| e.to_string()),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> Result<bool, String> {
        self.len().map(|n| n == 0)
    }
}

impl Drop for KeyIndex {
    fn drop(&mut self) {
        // a clean stop keeps the last updates; a failure here costs a catch-up at the next start
        if let Err(e) = self.persist() {
            tracing::warn!(error = %e, "the key index's last updates were not written durably");
        }
    }
}

/// The keys (encoded) of one data file's live rows, each with its position: the keys back to
/// back in one buffer (a file's keys are a copy's chunk, 100 000 and more: one allocation for
/// them all, not one each).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FileKeys {
    bytes: Vec<u8>,
    /// Where each key ends in `bytes`.
    ends: Vec<usize>,
    positions: Vec<u64>,
}

impl FileKeys {
    /// Room for `keys` keys of `bytes` bytes in all.
    pub fn with_capacity(keys: usize, bytes: usize) -> Self {
        FileKeys {
            bytes: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(keys),
            positions: Vec::with_capacity(keys),
        }
    }

    /// Adds `key` at `position`.
    pub fn push(&mut self, key: &[u8], position: u64) {
        self.bytes.extend_from_slice(key);
        self.ends.push(self.bytes.len());
        self.positions.push(position);
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn key(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }

    /// Each key with its position, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&[u8], u64)> + '_ {
        (0..self.len()).map(|i| (self.key(i), self.positions[i]))
    }

    /// Only the keys `keep` says yes to.
    pub fn filtered(self, mut keep: impl FnMut(&[u8], u64) -> bool) -> FileKeys {
        let mut kept = FileKeys::with_capacity(self.len(), self.bytes.len());
        for (key, position) in self.iter() {
            if keep(key, position) {
                kept.push(key, position);
            }
        }
        kept
    }

    /// In key order (then position order); nothing moves when they are already (a copy's
    /// chunk, rows of a serial key).
    pub fn sort(&mut self) {
        let sorted = (1..self.len())
            .all(|i| (self.key(i - 1), self.positions[i - 1]) <= (self.key(i), self.positions[i]));
        if sorted {
            return;
        }
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.sort_unstable_by(|&a, &b| {
            (self.key(a), self.positions[a]).cmp(&(self.key(b), self.positions[b]))
        });
        let mut sorted = FileKeys::with_capacity(self.len(), self.bytes.len());
        for i in order {
            sorted.push(self.key(i), self.positions[i]);
        }
        *self = sorted;
    }
}

impl<K: AsRef<[u8]>> FromIterator<(K, u64)> for FileKeys {
    fn from_iter<I: IntoIterator<Item = (K, u64)>>(iter: I) -> Self {
        let mut keys = FileKeys::default();
        for (key, position) in iter {
            keys.push(key.as_ref(), position);
        }
        keys
    }
}

/// One change of the index: keys whose row is gone, rows added (per data file, each key with
/// its position), data files no longer live.
#[derive(Debug, Default)]
pub struct IndexUpdate {
    /// Keys (encoded) whose live row was deleted or moved.
    pub removed: Vec<Vec<u8>>,
    /// Per data file added, its keys (encoded) and their positions.
    pub added: Vec<(String, FileKeys)>,
    /// Data files no longer live (rewritten, truncated).
    pub removed_files: Vec<String>,
}

/// Of `entries` (keys with their locations), one per key in key order: of a key given twice,
/// the later.
fn sort_unique(entries: &mut Vec<(&[u8], At)>) {
    if entries.is_sorted_by(|a, b| a.0 < b.0) {
        return;
    }
    // stable: of a key given twice, the later sorts last, and is the one kept
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let mut write = 0;
    for read in 0..entries.len() {
        if write > 0 && entries[write - 1].0 == entries[read].0 {
            entries[write - 1] = entries[read];
        } else {
            entries[write] = entries[read];
            write += 1;
        }
    }
    entries.truncate(write);
}

/// Puts `entries` (in key order, one per key: [`sort_unique`]) into `index`: a key the index
/// holds already is overwritten; each run of the others that falls into one gap between the
/// index's keys (a copy's chunk, within its key range or past the last key; rows of a serial
/// key) is spliced in through one cursor, which redb builds a leaf at a time, where one insert
/// per key would search the tree and copy its path each time. A run goes in from its last key
/// down, each key before the one put in just before it: upward, redb keeps a copy of every
/// key it is given (the bound for the next), one allocation per key.
fn splice(
    index: &mut redb::Table<'_, &'static [u8], At>,
    entries: Vec<(&[u8], At)>,
) -> Result<(), String> {
    let mut i = 0;
    while let Some(&(first, location)) = entries.get(i) {
        let mut cursor = index
            .lower_bound_mut(std::ops::Bound::Included(first))
            .map_err(|e| e.to_string())?;
        // the gap's upper end: the least key held at or above `first`; the run, the entries
        // below it
        let next: Option<Vec<u8>> = cursor
            .peek_next()
            .map_err(|e| e.to_string())?
            .map(|(key, _)| key.value().to_vec());
        let end = match next.as_deref() {
            Some(next) => i + entries[i..].partition_point(|(key, _)| *key < next),
            None => entries.len(),
        };
        for &(key, location) in entries[i..end].iter().rev() {
            cursor
                .insert_after(key, location)
                .map_err(|e| e.to_string())?;
        }
        cursor.close().map_err(|e| e.to_string())?;
        if end == i {
            // `first` is held already: overwritten
            index.insert(first, location).map_err(|e| e.to_string())?;
            i += 1;
        } else {
            i = end;
        }
    }
    Ok(())
}

/// The keys of the data file at `path` with their positions, the rows `deleted` names left
/// out: what the index holds for a file (key columns `key`, read by name).
pub async fn file_keys(
    file_io: &FileIO,
    path: &str,
    key: &SchemaRef,
    converter: &RowConverter,
    deleted: Option<&BTreeSet<u64>>,
) -> Result<FileKeys, String> {
    let builder = open(file_io, path).await?;
    let names: Vec<&str> = key.fields().iter().map(|f| f.name().as_str()).collect();
    let mask = ProjectionMask::columns(builder.parquet_schema(), names.iter().copied());
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| format!("{path}: {e}"))?;
    let mut keys = FileKeys::default();
    let mut position = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| format!("{path}: {e}"))?;
        let batch = conform(&batch, key).map_err(|e| format!("{path}: {e}"))?;
        let rows = converter
            .convert_columns(batch.columns())
            .map_err(|e| format!("{path}: {e}"))?;
        push_keys(&rows, &mut position, deleted, &mut keys);
    }
    Ok(keys)
}

/// Appends `rows` (encoded keys of consecutive rows of one data file, the first at
/// `position`) to `keys` with their positions, the rows `deleted` names left out; advances
/// `position` past them.
pub fn push_keys(
    rows: &Rows,
    position: &mut u64,
    deleted: Option<&BTreeSet<u64>>,
    keys: &mut FileKeys,
) {
    for row in rows.iter() {
        if !deleted.is_some_and(|d| d.contains(position)) {
            keys.push(row.as_ref(), *position);
        }
        *position += 1;
    }
}

/// A file of the snapshot a rebuild reads.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    /// Its path.
    pub path: String,
    /// Its data sequence number.
    pub sequence: i64,
    /// Its partition (spec id and tuple, as one comparable text).
    pub partition: String,
}

/// What a rebuild reads: the live files of one snapshot.
#[derive(Debug, Default)]
pub struct SnapshotFiles {
    /// Data files.
    pub data: Vec<SnapshotFile>,
    /// Equality deletes on the key columns.
    pub equality: Vec<SnapshotFile>,
    /// Position deletes, each with what it removes.
    pub positions: Vec<(SnapshotFile, DeletedPositions)>,
}

/// How the index was brought up to a snapshot.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    /// Data files whose keys were read (added, removed or named by new position deletes).
    pub files: usize,
    /// Keys indexed from the files added.
    pub keys: u64,
}

/// Brings `index` to the live files of `snapshot`. `since`: the data sequence number of the
/// snapshot the index is exact for, an ancestor of `snapshot` — then only what changed is
/// read: the keys of the data files no longer live (dropped where they still point into them),
/// the deletes committed since (their keys or rows dropped where the index points at a row
/// they remove) and the data files it does not know (indexed, less the rows the live deletes
/// remove). `None`: emptied and rebuilt from every live file. The index is exact for no
/// snapshot until the end: a crash meanwhile means another rebuild.
pub async fn bring_up(
    index: &KeyIndex,
    file_io: &FileIO,
    key: &SchemaRef,
    snapshot: i64,
    files: &SnapshotFiles,
    since: Option<i64>,
) -> Result<Rebuilt, String> {
    let converter = index.converter();
    // the newest equality delete of each key, per partition
    let mut deleted: HashMap<&str, HashMap<Vec<u8>, i64>> = HashMap::new();
    for delete in &files.equality {
        let keys = file_keys(file_io, &delete.path, key, converter, None).await?;
        let partition = deleted.entry(delete.partition.as_str()).or_default();
        for (row, _) in keys.iter() {
            let newest = partition.entry(row.to_vec()).or_default();
            *newest = (*newest).max(delete.sequence);
        }
    }
    let live: HashMap<&str, &SnapshotFile> =
        files.data.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut rebuilt = Rebuilt::default();
    let known = match since {
        None => {
            index.clear()?;
            HashSet::new()
        }
        Some(since) => {
            let known = index.files()?;
            index.apply(None, &IndexUpdate::default())?;
            let mut update = IndexUpdate::default();
            // the keys of files no longer live, where the index still has them there
            for path in known.iter().filter(|p| !live.contains_key(p.as_str())) {
                let keys = file_keys(file_io, path, key, converter, None).await?;
                rebuilt.files += 1;
                let found = index.lookup_encoded(keys.iter().map(|(k, _)| k), keys.len())?;
                for ((row, _), at) in keys.iter().zip(found) {
                    if at.is_some_and(|at| *at.file == **path) {
                        update.removed.push(row.to_vec());
                    }
                }
                update.removed_files.push(path.clone());
            }
            // equality deletes since: the keys whose indexed row is older
            for delete in files.equality.iter().filter(|d| d.sequence > since) {
                let keys = file_keys(file_io, &delete.path, key, converter, None).await?;
                let found = index.lookup_encoded(keys.iter().map(|(k, _)| k), keys.len())?;
                for ((row, _), at) in keys.iter().zip(found) {
                    let older =
                        at.and_then(|at| live.get(&*at.file).copied())
                            .is_some_and(|data| {
                                data.sequence < delete.sequence
                                    && data.partition == delete.partition
                            });
                    if older {
                        update.removed.push(row.to_vec());
                    }
                }
            }
            // position deletes since, of files the index knows: the rows they name
            for (delete, removes) in files.positions.iter().filter(|(d, _)| d.sequence > since) {
                for path in removes.data_files() {
                    let Some(data) = live.get(path) else { continue };
                    if data.sequence > delete.sequence || !known.contains(path) {
                        continue;
                    }
                    let Some(positions) = removes.of(path) else {
                        continue;
                    };
                    let keys: FileKeys = file_keys(file_io, path, key, converter, None)
                        .await?
                        .filtered(|_, position| positions.contains(&position));
                    rebuilt.files += 1;
                    let found = index.lookup_encoded(keys.iter().map(|(k, _)| k), keys.len())?;
                    for ((row, position), at) in keys.iter().zip(found) {
                        if at.is_some_and(|at| &*at.file == path && at.position == position) {
                            update.removed.push(row.to_vec());
                        }
                    }
                }
            }
            index.apply(None, &update)?;
            known
        }
    };
    // the oldest files first: a table whose keys grow with time (a copy's key-ordered chunks,
    // a serial key) then adds each file's keys above the ones before, which the index
    // appends in one run instead of inserting one by one (the manifests list the newest first)
    let mut unknown: Vec<&SnapshotFile> = files
        .data
        .iter()
        .filter(|f| !known.contains(&f.path))
        .collect();
    unknown.sort_by(|a, b| (a.sequence, &a.path).cmp(&(b.sequence, &b.path)));
    for file in unknown {
        let mut removed: Option<BTreeSet<u64>> = None;
        for (delete, rows) in &files.positions {
            if file.sequence <= delete.sequence
                && let Some(rows) = rows.of(&file.path)
            {
                removed.get_or_insert_default().extend(rows.iter().copied());
            }
        }
        let mut keys: FileKeys =
            file_keys(file_io, &file.path, key, converter, removed.as_ref()).await?;
        if let Some(deleted) = deleted.get(file.partition.as_str()) {
            keys = keys.filtered(|row, _| {
                deleted
                    .get(row)
                    .is_none_or(|&newest| newest <= file.sequence)
            });
        }
        // in key order: the B-tree's pages are then written one after another
        keys.sort();
        rebuilt.files += 1;
        rebuilt.keys += keys.len() as u64;
        index.apply(
            None,
            &IndexUpdate {
                added: vec![(file.path.clone(), keys)],
                ..IndexUpdate::default()
            },
        )?;
    }
    index.apply(Some(snapshot), &IndexUpdate::default())?;
    index.persist()?;
    Ok(rebuilt)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int32Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn key_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("region", DataType::Utf8, false),
        ]))
    }

    fn encode(index: &KeyIndex, keys: &[(i32, &str)]) -> Rows {
        let ids: ArrayRef = Arc::new(Int32Array::from_iter_values(keys.iter().map(|k| k.0)));
        let regions: ArrayRef = Arc::new(StringArray::from_iter_values(keys.iter().map(|k| k.1)));
        index
            .converter()
            .convert_columns(&[ids, regions])
            .expect("encode keys")
    }

    fn at(file: &str, position: u64) -> Option<RowLocation> {
        Some(RowLocation {
            file: file.into(),
            position,
        })
    }

    /// Writes `columns` (named) as a Parquet file `name` in `dir`; its path.
    fn parquet(dir: &Path, name: &str, columns: Vec<(&str, ArrayRef)>) -> String {
        let batch = arrow::array::RecordBatch::try_from_iter(columns).expect("a batch");
        let path = dir.join(name);
        let file = std::fs::File::create(&path).expect("create a Parquet file");
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None)
            .expect("a Parquet writer");
        writer.write(&batch).expect("write");
        writer.close().expect("close");
        path.display().to_string()
    }

    fn ids(values: &[i32]) -> ArrayRef {
        Arc::new(Int32Array::from(values.to_vec()))
    }

    fn regions(values: &[&str]) -> ArrayRef {
        Arc::new(StringArray::from(values.to_vec()))
    }

    #[tokio::test]
    async fn a_rebuild_indexes_the_live_rows_of_a_snapshot() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = |path: &str, sequence: i64| SnapshotFile {
            path: path.into(),
            sequence,
            partition: "0/[]".into(),
        };
        // seq 1: keys 1..4 in `a`; seq 2: key 2 updated (equality delete + new row in `b`);
        // seq 3: another engine deletes key 3 by position (row 2 of `a`)
        let a = parquet(
            dir.path(),
            "a.parquet",
            vec![
                ("id", ids(&[1, 2, 3, 4])),
                ("region", regions(&["eu", "eu", "eu", "eu"])),
                ("note", regions(&["x", "y", "z", "w"])),
            ],
        );
        let b = parquet(
            dir.path(),
            "b.parquet",
            vec![("region", regions(&["eu"])), ("id", ids(&[2]))],
        );
        let eq = parquet(
            dir.path(),
            "eq.parquet",
            vec![("id", ids(&[2])), ("region", regions(&["eu"]))],
        );
        let files = SnapshotFiles {
            data: vec![file(&a, 1), file(&b, 2)],
            equality: vec![file(&eq, 2)],
            positions: vec![(
                file("pos.parquet", 3),
                [(a.clone(), 2)].into_iter().collect(),
            )],
        };
        let index =
            KeyIndex::open(&dir.path().join("i.redb"), &key_schema(), 1 << 20).expect("open");
        let rebuilt = bring_up(
            &index,
            &FileIO::new_with_fs(),
            &key_schema(),
            42,
            &files,
            None,
        )
        .await
        .expect("rebuild");
        assert_eq!(rebuilt, Rebuilt { files: 2, keys: 3 });
        assert_eq!(index.exact_for().expect("read"), Some(42));
        let keys = encode(&index, &[(1, "eu"), (2, "eu"), (3, "eu"), (4, "eu")]);
        assert_eq!(
            index.lookup(&keys).expect("lookup"),
            vec![at(&a, 0), at(&b, 0), None, at(&a, 3)]
        );
    }

    /// From an index exact for seq 1 (keys 1..4 in `a`, 5 in `b`), a compaction rewrites `a`
    /// into `c` (keeping seq 1, rows reordered), then seq 3 deletes key 2 by equality and adds
    /// key 6 in `d`, and seq 4 deletes key 4 by position in `c` and key 5 in `b`: caught up,
    /// the index finds what a rebuild finds, reading only `a`, `c`, `b` and `d`.
    #[tokio::test]
    async fn catching_up_finds_what_a_rebuild_finds() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = |path: &str, sequence: i64| SnapshotFile {
            path: path.into(),
            sequence,
            partition: "0/[]".into(),
        };
        let eu = |n: usize| regions(&vec!["eu"; n]);
        let a = parquet(
            dir.path(),
            "a.parquet",
            vec![("id", ids(&[1, 2, 3, 4])), ("region", eu(4))],
        );
        let b = parquet(
            dir.path(),
            "b.parquet",
            vec![("id", ids(&[5])), ("region", eu(1))],
        );
        let c = parquet(
            dir.path(),
            "c.parquet",
            vec![("id", ids(&[4, 3, 2, 1])), ("region", eu(4))],
        );
        let d = parquet(
            dir.path(),
            "d.parquet",
            vec![("id", ids(&[6])), ("region", eu(1))],
        );
        let eq = parquet(
            dir.path(),
            "eq.parquet",
            vec![("id", ids(&[2])), ("region", eu(1))],
        );
        let io = FileIO::new_with_fs();
        let before = SnapshotFiles {
            data: vec![file(&a, 1), file(&b, 1)],
            ..SnapshotFiles::default()
        };
        let after = SnapshotFiles {
            data: vec![file(&c, 1), file(&b, 1), file(&d, 3)],
            equality: vec![file(&eq, 3)],
            positions: vec![(
                file("pos.parquet", 4),
                [(c.clone(), 0), (b.clone(), 0)].into_iter().collect(),
            )],
        };
        let caught =
            KeyIndex::open(&dir.path().join("c.redb"), &key_schema(), 1 << 20).expect("open");
        bring_up(&caught, &io, &key_schema(), 10, &before, None)
            .await
            .expect("build");
        let done = bring_up(&caught, &io, &key_schema(), 11, &after, Some(1))
            .await
            .expect("catch up");
        // a (gone), c (b's delete is of a file it knows), c and d (new)
        assert_eq!(done, Rebuilt { files: 4, keys: 3 });
        let rebuilt =
            KeyIndex::open(&dir.path().join("r.redb"), &key_schema(), 1 << 20).expect("open");
        bring_up(&rebuilt, &io, &key_schema(), 11, &after, None)
            .await
            .expect("rebuild");
        let keys = encode(
            &caught,
            &[
                (1, "eu"),
                (2, "eu"),
                (3, "eu"),
                (4, "eu"),
                (5, "eu"),
                (6, "eu"),
            ],
        );
        let expected = vec![at(&c, 3), None, at(&c, 1), None, None, at(&d, 0)];
        assert_eq!(caught.lookup(&keys).expect("lookup"), expected);
        assert_eq!(rebuilt.lookup(&keys).expect("lookup"), expected);
        assert_eq!(caught.exact_for().expect("read"), Some(11));
        assert_eq!(
            caught.files().expect("files"),
            rebuilt.files().expect("files")
        );
    }

    /// Updates that append keys above the greatest (in order, shuffled, one key added
    /// twice), add runs of keys into one gap (a copy's second key range, above the first),
    /// insert keys between others and remove keys leave the index where a plain map of the
    /// same updates is, across flushes and a reopen.
    #[test]
    fn appended_and_inserted_keys_are_found_where_a_map_finds_them() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("orders.redb");
        let index = KeyIndex::open(&path, &key_schema(), 1 << 20).expect("open");
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut random = move |bound: u64| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x9e37_79b9_7f4a_7c15) % bound
        };
        let regions = ["eu", "us", "ap"];
        let mut model: BTreeMap<(i32, &str), (String, u64)> = BTreeMap::new();
        let mut top = 0i32;
        const UPPER: i32 = 1_000_000;
        let mut upper_top = UPPER;
        for flush in 0..40u64 {
            let mut added: Vec<(String, Vec<(i32, &str)>)> = Vec::new();
            let below = top;
            // new keys above every key so far, in order or not
            let mut fresh: Vec<(i32, &str)> = (0..random(300) as i32)
                .map(|i| (top + 1 + i / 3, regions[i as usize % 3]))
                .collect();
            top += fresh.len() as i32 / 3 + 1;
            if flush % 3 == 1 {
                fresh.reverse();
            }
            // keys between the others: updates of keys held, and new ones in the gaps
            let between: Vec<(i32, &str)> = (0..random(50))
                .map(|_| (random(below as u64 + 1) as i32, regions[random(3) as usize]))
                .collect();
            if flush % 5 == 4 && !fresh.is_empty() {
                // one key added twice in the flush: the later file holds it
                let again = fresh[0];
                added.push((format!("f{flush}-a.parquet"), fresh.clone()));
                added.push((format!("f{flush}-b.parquet"), vec![again]));
            } else {
                added.push((format!("f{flush}-a.parquet"), fresh));
            }
            added.push((format!("f{flush}-c.parquet"), between));
            // a run above everything else, so the run of `fresh` goes into the gap below it
            let upper: Vec<(i32, &str)> = (0..random(60) as i32)
                .map(|i| (upper_top + 1 + i / 3, regions[i as usize % 3]))
                .collect();
            upper_top += upper.len() as i32 / 3 + 1;
            added.push((format!("f{flush}-d.parquet"), upper));
            let mut removed: Vec<(i32, &str)> =
                model.keys().filter(|_| random(10) == 0).copied().collect();
            // half of them updated (removed and added again, out of order), the rest deleted
            let updated: Vec<(i32, &str)> = removed.iter().rev().step_by(2).copied().collect();
            added.push((format!("f{flush}-e.parquet"), updated));
            if flush % 2 == 1 {
                removed.reverse();
            }

            for key in &removed {
                model.remove(key);
            }
            let mut update = IndexUpdate {
                removed: removed
                    .iter()
                    .map(|k| encode(&index, &[*k]).row(0).as_ref().to_vec())
                    .collect(),
                ..IndexUpdate::default()
            };
            for (file, keys) in &added {
                let mut encoded = FileKeys::default();
                for (position, key) in keys.iter().enumerate() {
                    model.insert(*key, (file.clone(), position as u64));
                    encoded.push(encode(&index, &[*key]).row(0).as_ref(), position as u64);
                }
                update.added.push((file.clone(), encoded));
            }
            index.apply(Some(flush as i64), &update).expect("apply");

            let universe: Vec<(i32, &str)> = (0..=top)
                .chain(UPPER..=upper_top)
                .flat_map(|id| regions.iter().map(move |r| (id, *r)))
                .collect();
            let expected: Vec<Option<RowLocation>> = universe
                .iter()
                .map(|k| model.get(k).and_then(|(f, p)| at(f, *p)))
                .collect();
            assert_eq!(
                index.lookup(&encode(&index, &universe)).expect("lookup"),
                expected,
                "after flush {flush}"
            );
            assert_eq!(index.len().expect("len"), model.len() as u64);
        }
        drop(index);
        let index = KeyIndex::open(&path, &key_schema(), 1 << 20).expect("reopen");
        assert_eq!(index.exact_for().expect("read"), Some(39));
        let held: Vec<(i32, &str)> = model.keys().copied().collect();
        let expected: Vec<Option<RowLocation>> = model.values().map(|(f, p)| at(f, *p)).collect();
        assert_eq!(
            index.lookup(&encode(&index, &held)).expect("lookup"),
            expected
        );
    }

    #[test]
    fn file_keys_sort_and_filter_as_a_list_of_pairs_does() {
        // keys of several lengths, out of order, a key twice at two positions
        let pairs: Vec<(Vec<u8>, u64)> = vec![
            (b"m".to_vec(), 0),
            (b"abc".to_vec(), 1),
            (b"".to_vec(), 2),
            (b"zz".to_vec(), 3),
            (b"abc".to_vec(), 4),
            (b"ab".to_vec(), 5),
            (b"m".to_vec(), 6),
        ];
        let mut keys: FileKeys = pairs.iter().map(|(k, p)| (k, *p)).collect();
        assert_eq!(keys.len(), pairs.len());
        let listed: Vec<(Vec<u8>, u64)> = keys.iter().map(|(k, p)| (k.to_vec(), p)).collect();
        assert_eq!(listed, pairs);
        let mut expected = pairs.clone();
        expected.sort();
        // the same positions again, reversed: the later position of a key sorts after
        let mut reversed: FileKeys = pairs.iter().rev().map(|(k, p)| (k, *p)).collect();
        for keys in [&mut keys, &mut reversed] {
            keys.sort();
            let sorted: Vec<(Vec<u8>, u64)> = keys.iter().map(|(k, p)| (k.to_vec(), p)).collect();
            assert_eq!(sorted, expected);
        }
        let even = keys.filtered(|_, p| p % 2 == 0);
        let kept: Vec<u64> = even.iter().map(|(_, p)| p).collect();
        assert_eq!(kept, vec![2, 4, 0, 6]);
        assert_eq!(
            even.iter().map(|(k, _)| k.to_vec()).collect::<Vec<_>>(),
            vec![b"".to_vec(), b"abc".to_vec(), b"m".to_vec(), b"m".to_vec()]
        );
    }

    #[test]
    fn updates_are_looked_up_and_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("orders.redb");
        let index = KeyIndex::open(&path, &key_schema(), 1 << 20).expect("open");
        assert_eq!(index.exact_for().expect("read"), None);
        let keys = encode(&index, &[(1, "eu"), (2, "eu"), (1, "us")]);
        let owned: Vec<Vec<u8>> = keys.iter().map(|r| r.as_ref().to_vec()).collect();
        index
            .apply(
                Some(10),
                &IndexUpdate {
                    added: vec![
                        (
                            "a.parquet".into(),
                            [(&owned[0], 0), (&owned[1], 1)].into_iter().collect(),
                        ),
                        ("b.parquet".into(), [(&owned[2], 0)].into_iter().collect()),
                    ],
                    ..IndexUpdate::default()
                },
            )
            .expect("apply");
        // (1, eu) is updated: its old row removed and its new one in c.parquet, in one
        // update as a flush makes it; (2, eu) is deleted
        index
            .apply(
                Some(11),
                &IndexUpdate {
                    removed: vec![owned[0].clone(), owned[1].clone()],
                    added: vec![("c.parquet".into(), [(&owned[0], 4)].into_iter().collect())],
                    ..IndexUpdate::default()
                },
            )
            .expect("apply");
        drop(index);

        let index = KeyIndex::open(&path, &key_schema(), 1 << 20).expect("reopen");
        assert_eq!(index.exact_for().expect("read"), Some(11));
        assert_eq!(index.len().expect("len"), 2);
        let missing = encode(&index, &[(3, "eu")]);
        assert_eq!(
            index.lookup(&keys).expect("lookup"),
            vec![at("c.parquet", 4), None, at("b.parquet", 0)]
        );
        assert_eq!(index.lookup(&missing).expect("lookup"), vec![None]);

        // other key types: the index is not exact for anything, and is rebuilt
        let other = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        drop(index);
        let index = KeyIndex::open(&path, &other, 1 << 20).expect("reopen");
        assert_eq!(index.exact_for().expect("read"), None);
        index.clear().expect("clear");
        assert!(index.is_empty().expect("len"));
    }

    /// An index written before the value type was [`At`] (redb's `(u32, u64)` tuples, layout
    /// `arrow-58-row:…`) is exact for nothing, so the sink rebuilds it: it empties without
    /// opening the old table as the new type (which redb refuses) and takes keys again.
    #[test]
    fn an_index_of_the_tuple_layout_is_rebuilt() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("old.redb");
        {
            let old: TableDefinition<&[u8], (u32, u64)> = TableDefinition::new("keys");
            let db = Database::create(&path).expect("create");
            let write = db.begin_write().expect("write");
            write
                .open_table(old)
                .expect("open")
                .insert(b"k".as_slice(), (0, 7))
                .expect("insert");
            write
                .open_table(META)
                .expect("meta")
                .insert("layout", b"arrow-58-row:id=Int32,region=Utf8".as_slice())
                .expect("layout");
            // exact for a snapshot under the old layout: only the layout says to rebuild
            write
                .open_table(META)
                .expect("meta")
                .insert("snapshot", 7i64.to_be_bytes().as_slice())
                .expect("snapshot");
            write.commit().expect("commit");
        }
        let index = KeyIndex::open(&path, &key_schema(), 1 << 20).expect("reopen");
        assert_eq!(index.exact_for().expect("read"), None);
        index.clear().expect("clear");
        let keys = encode(&index, &[(1, "eu")]);
        let owned = keys.row(0).as_ref().to_vec();
        index
            .apply(
                Some(3),
                &IndexUpdate {
                    added: vec![("a.parquet".into(), [(&owned, 5)].into_iter().collect())],
                    ..IndexUpdate::default()
                },
            )
            .expect("apply");
        assert_eq!(index.exact_for().expect("read"), Some(3));
        assert_eq!(
            index.lookup(&keys).expect("lookup"),
            vec![at("a.parquet", 5)]
        );
    }

    /// A run of new keys larger than redb's cursor buffers at once (about 1 MiB), into a gap
    /// between held keys and past the last: redb splices it in several parts, and every key
    /// is found where it was put, with the keys around the gap untouched.
    #[test]
    fn a_run_larger_than_the_cursors_buffer_is_found_whole() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let index =
            KeyIndex::open(&dir.path().join("big.redb"), &key_schema(), 4 << 20).expect("open");
        let encoded = |keys: &[(i32, &str)]| -> Vec<Vec<u8>> {
            encode(&index, keys)
                .iter()
                .map(|r| r.as_ref().to_vec())
                .collect()
        };
        let file = |name: &str, keys: &[Vec<u8>]| -> (String, FileKeys) {
            (name.to_string(), keys.iter().zip(0u64..).collect())
        };
        let edges = encoded(&[(0, "eu"), (300_000, "eu")]);
        index
            .apply(
                Some(1),
                &IndexUpdate {
                    added: vec![file("edges.parquet", &edges)],
                    ..IndexUpdate::default()
                },
            )
            .expect("apply the edges");
        // 120 000 keys into the gap between the edges, 60 000 past the last
        let gap: Vec<(i32, &str)> = (1..=120_000).map(|i| (i, "eu")).collect();
        let past: Vec<(i32, &str)> = (300_001..=360_000).map(|i| (i, "eu")).collect();
        let (gap, past) = (encoded(&gap), encoded(&past));
        index
            .apply(
                Some(2),
                &IndexUpdate {
                    added: vec![file("gap.parquet", &gap), file("past.parquet", &past)],
                    ..IndexUpdate::default()
                },
            )
            .expect("apply the runs");
        assert_eq!(index.len().expect("len"), 2 + 120_000 + 60_000);
        for (name, keys) in [
            ("edges.parquet", &edges),
            ("gap.parquet", &gap),
            ("past.parquet", &past),
        ] {
            let found = index
                .lookup_encoded(keys.iter().map(Vec::as_slice), keys.len())
                .expect("lookup");
            for (position, at) in found.into_iter().enumerate() {
                assert_eq!(
                    at,
                    Some(RowLocation {
                        file: name.into(),
                        position: position as u64,
                    }),
                    "key {position} of {name}"
                );
            }
        }
    }
}
