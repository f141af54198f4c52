//! Chunked copies of tables that join the publication while `run` streams (the DBLog
//! algorithm): the table is emptied in the lake and streams from then on like any other,
//! while its existing rows are read in key-ordered chunks beside the stream, each bracketed by
//! a low and a high watermark in the WAL (`source::chunk`). When the high watermark comes
//! through the stream, the chunk's rows join the table's buffer at that position, as if they
//! were a transaction committed there, and flush with the table's other changes — so every
//! other table keeps committing meanwhile.
//!
//! A chunk's row whose key the stream changed since the copy began is dropped: the stream's
//! version is newer, or as new (this covers DBLog's rule — a key changed between the chunk's
//! two watermarks — and the changes before the low watermark that a plain insert would
//! duplicate). The other rows are plain inserts: their keys are not in the lake yet. The keys
//! are remembered until the copy ends.
//!
//! Each commit of the table carries the copy's progress (the last key the committed chunks
//! read), so a restart resumes after the last committed chunk. The keys the stream changed
//! before the restart are not known then, so a resumed copy writes its rows as upserts (each
//! row deletes its key first).
//!
//! A table of more than a few chunks is split into `source.snapshot_parallelism` key ranges
//! of about equal rows (from a sample of its keys, `chunk::split_points`), each read by a task
//! of its own on its own connection, chunk after chunk, so PostgreSQL's index scans and the
//! decoding of several chunks run side by side. Each range reads ahead: up to
//! [`READ_AHEAD`] of its chunks may be read and wait for their high watermark, so reading
//! overlaps the watermarks' way through the stream and the flushes. A chunk read ahead (or
//! in another range) is still right when it joins: the keys the stream changed since the copy
//! began, up to its own high watermark, are dropped from it, whenever it was read; the ranges
//! hold disjoint keys, so their chunks join in whatever order their watermarks come.
//!
//! The copy's pace is measured from when its chunks were committed (as `status` measures it
//! from the lake's snapshots) and reported on the progress interval (or a bar on a terminal).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, new_null_array};
use arrow::row::{RowConverter, SortField};

use super::{Pipeline, TableState};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::masking::Masking;
use crate::pipeline::reduce::Entry;
use crate::progress::{CopyTracker, Progress};
use crate::sink::Sink;
use crate::source::chunk::{self, Chunk, Mark, Watermark};
use crate::source::{connection, schema, snapshot};
use crate::table::{
    ChangeBatch, ChunkCommit, CopyPace, CopyProgress, OldRow, Op, PACE_CHUNKS, TableId, TableSchema,
};

/// Chunk reads of one copy that may fail in a row before the run stops.
const READ_ATTEMPTS: u32 = 8;

/// Chunks of one key range that may be read and wait for their high watermark.
pub(super) const READ_AHEAD: usize = 2;

/// Chunks a key range should hold at least for a table to be split into ranges.
const CHUNKS_PER_RANGE: u64 = 2;

/// What the chunk reads left for the pipeline, by table; taken when the chunk's high
/// watermark comes through the stream.
pub(super) type ChunkInbox = Arc<Inbox>;

/// The chunks read and waiting for their high watermark, in order, by table; and which read of
/// each table's copy is current, so that a reading task the pipeline gave up on stops.
#[derive(Debug, Default)]
pub(super) struct Inbox {
    waiting: Mutex<HashMap<TableId, Waiting>>,
    /// Told whenever a chunk is taken or the current read changes.
    changed: tokio::sync::Notify,
}

/// One table's part of the [`Inbox`].
#[derive(Debug, Default)]
struct Waiting {
    /// The read the pipeline waits for: its copy id and attempt.
    current: Option<(String, u32)>,
    chunks: VecDeque<ChunkRead>,
}

impl Inbox {
    /// `table`'s copy now waits for the reads of `copy` under `attempt` (or none): the chunks
    /// of any other are dropped, and its reading task stops at its next chunk.
    pub(super) fn wait_for(&self, table: &TableId, read: Option<(String, u32)>) {
        if let Ok(mut waiting) = self.waiting.lock() {
            let entry = waiting.entry(table.clone()).or_default();
            entry.chunks.clear();
            entry.current = read;
        }
        self.changed.notify_waiters();
    }

    /// The tables with a read the pipeline waits for.
    fn reading(&self) -> Vec<TableId> {
        self.waiting
            .lock()
            .map(|w| {
                w.iter()
                    .filter(|(_, w)| w.current.is_some())
                    .map(|(t, _)| t.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Takes the oldest chunk read of `table`'s key range `range`, if any.
    fn take(&self, table: &TableId, range: usize) -> Option<ChunkRead> {
        let read = self.waiting.lock().ok().and_then(|mut w| {
            let chunks = &mut w.get_mut(table)?.chunks;
            let at = chunks.iter().position(|c| c.range == range)?;
            chunks.remove(at)
        });
        self.changed.notify_waiters();
        read
    }

    /// Leaves `read` for the pipeline; false when its read is not the current one any more.
    pub(super) fn put(&self, table: &TableId, read: ChunkRead) -> bool {
        let Ok(mut waiting) = self.waiting.lock() else {
            return false;
        };
        let Some(entry) = waiting.get_mut(table) else {
            return false;
        };
        if entry.current.as_ref() != Some(&(read.copy.clone(), read.attempt)) {
            return false;
        }
        entry.chunks.push_back(read);
        true
    }

    /// Waits until fewer than `window` chunks of `table`'s key range `range` wait for the
    /// stream; false when the read `copy`/`attempt` is not the current one any more (its task
    /// stops).
    pub(super) async fn room(
        &self,
        table: &TableId,
        copy: &str,
        attempt: u32,
        range: usize,
        window: usize,
    ) -> bool {
        loop {
            let changed = self.changed.notified();
            {
                let Ok(waiting) = self.waiting.lock() else {
                    return false;
                };
                let Some(entry) = waiting.get(table) else {
                    return false;
                };
                if entry
                    .current
                    .as_ref()
                    .is_none_or(|(c, a)| c != copy || *a != attempt)
                {
                    return false;
                }
                if entry.chunks.iter().filter(|c| c.range == range).count() < window {
                    return true;
                }
            }
            changed.await;
        }
    }
}

/// One chunk read, waiting for its high watermark.
#[derive(Debug)]
pub(super) struct ChunkRead {
    pub(super) copy: String,
    pub(super) range: usize,
    pub(super) chunk: u64,
    pub(super) attempt: u32,
    pub(super) schema: Arc<TableSchema>,
    pub(super) data: Chunk,
}

/// The chunks for a reading task to read: of key range `range`, from its chunk `chunk` on,
/// after the key `after` up to `upto`, until a chunk comes back short (the range's end).
#[derive(Debug, Clone)]
pub(super) struct ChunkRequest {
    /// The table.
    pub table: TableId,
    /// Which read this is ([`ReadId`]).
    pub id: ReadId,
    pub(super) copy: String,
    pub(super) range: usize,
    pub(super) chunk: u64,
    pub(super) attempt: u32,
    pub(super) after: Option<Vec<String>>,
    pub(super) upto: Option<Vec<String>>,
    pub(super) key: Vec<String>,
    pub(super) limit: u64,
    /// Chunks of the range read ahead of the stream at most.
    pub(super) window: usize,
}

/// The reading tasks of a copy's attempt: the copy and the attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ReadId(String, u32);

/// A table's chunked copy, as the pipeline runs it.
#[derive(Debug)]
pub(super) struct ChunkedCopy {
    /// Unique to this copy by this process: the watermarks it writes carry it.
    id: String,
    key: Vec<String>,
    progress: CopyProgress,
    attempt: u32,
    /// The reads of the key ranges, as `progress.ranges`.
    reads: Vec<RangeRead>,
    /// Rows are written as upserts (a resumed copy does not know the keys changed before).
    upserts: bool,
    /// The last chunk is in the buffer: the next commit completes the copy.
    done: bool,
    /// Keys the stream changed since the copy (or its resumption) began, encoded.
    touched: HashSet<Box<[u8]>>,
    failures: u32,
    started: Instant,
    /// The progress the table's last commit carried (what `status` reads), and the commits
    /// that brought the latest chunks in, for the pace.
    committed: CopyProgress,
    commits: Vec<ChunkCommit>,
    /// Where the progress is reported; made at the first report.
    tracker: Option<CopyTracker>,
}

/// The read of one key range of a copy.
#[derive(Debug, Clone, Copy, Default)]
struct RangeRead {
    /// A reading task of the current attempt is under way (it reads until the range's end).
    in_flight: bool,
    /// The low watermark of the range's next chunk to join came through the stream.
    low_seen: bool,
}

/// A new copy id: this process's, and counted, so no two copies share one.
fn copy_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(|| uuid::Uuid::new_v4().simple().to_string());
    format!("{run}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

impl ChunkedCopy {
    /// A copy from the table's first key.
    pub(super) fn start(key: Vec<String>, progress: CopyProgress) -> Self {
        ChunkedCopy {
            id: copy_id(),
            key,
            attempt: 0,
            reads: vec![RangeRead::default(); progress.ranges.len()],
            upserts: false,
            done: progress.complete(),
            touched: HashSet::new(),
            failures: 0,
            started: Instant::now(),
            committed: progress.clone(),
            commits: Vec::new(),
            tracker: None,
            progress,
        }
    }

    /// A copy resumed after the chunks `progress` says are committed; `commits`, the lake's
    /// commits that brought its latest chunks in (when each landed), give its pace until
    /// its own commits take over (an outage between them slows the figure down until
    /// [`PACE_CHUNKS`] chunks were committed since, as `status` shows it).
    pub(super) fn resume(
        key: Vec<String>,
        progress: CopyProgress,
        commits: Vec<ChunkCommit>,
    ) -> Self {
        let mut copy = ChunkedCopy {
            upserts: true,
            ..ChunkedCopy::start(key, progress)
        };
        // oldest first, as the copy's own commits are appended
        copy.commits = commits;
        copy.commits.sort_by_key(|c| (c.chunks, c.at_ms));
        copy.keep_pace_window();
        copy
    }

    /// The committed progress and its pace, as the copy's reports give them.
    pub(super) fn describe(&self) -> String {
        self.committed.describe(self.pace().as_ref())
    }

    /// The pace of the committed chunks.
    fn pace(&self) -> Option<CopyPace> {
        self.committed.pace(&self.commits)
    }

    /// Keeps the commits the pace reads, and no more.
    fn keep_pace_window(&mut self) {
        let window = self.progress.chunks.saturating_sub(PACE_CHUNKS);
        self.commits.retain(|c| c.chunks >= window);
    }

    /// The progress the table's next commit carries; `None` once the last chunk is in.
    pub(super) fn committed_progress(&self) -> Option<String> {
        (!self.done).then(|| self.progress.encode())
    }

    /// Whether the last chunk is in the buffer.
    pub(super) fn done(&self) -> bool {
        self.done
    }

    /// The table's commit carried [`ChunkedCopy::committed_progress`] just now: a commit that
    /// brought chunks in counts for the pace.
    pub(super) fn committed(&mut self) {
        if self.done {
            return;
        }
        self.committed = self.progress.clone();
        if self
            .commits
            .last()
            .is_some_and(|c| c.chunks == self.progress.chunks)
        {
            return;
        }
        self.commits.push(ChunkCommit::of(&self.progress, now_ms()));
        self.keep_pace_window();
    }

    /// Every range is read again from its next chunk to join, under a new attempt (the
    /// watermarks and chunks of the current one are passed over).
    fn read_again(&mut self) {
        self.attempt += 1;
        self.reads.fill(RangeRead::default());
    }

    /// Whether a reading task of the current attempt is under way.
    fn reading(&self) -> bool {
        self.reads.iter().any(|r| r.in_flight)
    }

    /// Reports the committed progress and its pace to `progress` (a bar, or a log line when
    /// one is due).
    fn report(&mut self, table: &TableId, progress: &Progress) {
        let pace = self.pace();
        self.tracker
            .get_or_insert_with(|| progress.copy(&table.to_string()))
            .update(&self.committed, pace.as_ref());
    }
}

/// Milliseconds since the epoch, now: the clock snapshots' timestamps are taken on.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How many key ranges a table of `estimate` rows is split into to be copied in chunks of
/// `chunk_rows`: `parallelism`, or fewer so that each holds [`CHUNKS_PER_RANGE`] chunks or
/// more; one without an estimate.
pub(super) fn key_ranges(estimate: Option<u64>, chunk_rows: u64, parallelism: usize) -> usize {
    let Some(estimate) = estimate else {
        return 1;
    };
    let most = estimate / (chunk_rows.max(1) * CHUNKS_PER_RANGE);
    usize::try_from(most)
        .unwrap_or(usize::MAX)
        .clamp(1, parallelism.max(1))
}

/// Whether `table` can be copied in chunks beside the stream; otherwise why not, for the log.
pub(super) fn chunkable(
    keeps_progress: bool,
    state: &TableState,
    key: Option<&[chunk::KeyColumn]>,
) -> std::result::Result<(), &'static str> {
    if !keeps_progress {
        return Err("the sink's format does not record a copy's progress");
    }
    if state.mode != crate::config::TableMode::Upsert {
        return Err("changelog tables are copied whole");
    }
    if key.is_none() {
        return Err("the table has no key of NOT NULL columns to order chunks by");
    }
    Ok(())
}

/// Reads the chunks of the key range `request` asks for, one after the other on one
/// connection, each between its two watermarks, and leaves each in `inbox` before its high
/// watermark is written, so the pipeline finds it when the watermark comes through. Reads
/// ahead of the stream by at most the request's window; stops after the range's last chunk,
/// or when the pipeline gave up on this read (another attempt, another copy).
pub(super) async fn read(
    config: Arc<Config>,
    masking: Arc<Masking>,
    request: ChunkRequest,
    inbox: ChunkInbox,
) -> Result<()> {
    let table = &request.table;
    let client = connection::connect_as(&config.source, Some(connection::COPY)).await?;
    let mut chunk = request.chunk;
    let mut after = request.after.clone();
    loop {
        if !inbox
            .room(
                table,
                &request.copy,
                request.attempt,
                request.range,
                request.window,
            )
            .await
        {
            return Ok(());
        }
        let data = read_one(&client, &masking, &request, chunk, after.as_deref(), &inbox).await?;
        match data {
            Some(last) => after = Some(last),
            None => return Ok(()),
        }
        chunk += 1;
    }
}

/// Reads chunk `chunk` of `request`'s key range, the rows after `after`, between its
/// watermarks; the chunk's last key when the range may hold more, `None` after its last chunk
/// (or when the pipeline no longer waits for this read).
async fn read_one(
    client: &tokio_postgres::Client,
    masking: &Masking,
    request: &ChunkRequest,
    chunk: u64,
    after: Option<&[String]>,
    inbox: &Inbox,
) -> Result<Option<Vec<String>>> {
    let table = &request.table;
    let started = Instant::now();
    let Some(described) = schema::describe_table(client, table).await? else {
        return Err(Error::Source {
            message: format!("table {table}: gone from the catalog during its chunked copy"),
        });
    };
    // the shape now: a column added since the copy began is read with its values
    let shape = snapshot::masked_table_schema(
        client,
        &described,
        &crate::source::types::TypeOptions::default(),
        masking,
    )
    .await?;
    let key = chunk::key_columns(&described, &request.key).ok_or_else(|| Error::Source {
        message: format!(
            "table {table}: key ({}) is no longer NOT NULL columns of the table",
            request.key.join(", ")
        ),
    })?;
    let mut watermark = Watermark {
        copy: request.copy.clone(),
        table: table.to_string(),
        range: u32::try_from(request.range).unwrap_or(u32::MAX),
        chunk,
        attempt: request.attempt,
        mark: Mark::Low,
    };
    tracing::debug!(
        table = %table,
        range = request.range,
        chunk,
        attempt = request.attempt,
        "reading a chunk of the table"
    );
    let described_in = started.elapsed();
    chunk::emit(client, &watermark).await?;
    let data = chunk::read_chunk(
        client,
        &shape,
        &key,
        after,
        request.upto.as_deref(),
        request.limit,
        masking,
    )
    .await?;
    tracing::debug!(
        table = %table,
        range = request.range,
        chunk,
        rows = data.count,
        describe_ms = described_in.as_millis() as u64,
        read_ms = (started.elapsed() - described_in).as_millis() as u64,
        "read a chunk of the table"
    );
    let next = data
        .last_key
        .clone()
        .filter(|_| data.count >= request.limit);
    let read = ChunkRead {
        copy: request.copy.clone(),
        range: request.range,
        chunk,
        attempt: request.attempt,
        schema: shape,
        data,
    };
    if !inbox.put(table, read) {
        return Ok(None);
    }
    watermark.mark = Mark::High;
    chunk::emit(client, &watermark).await?;
    Ok(next)
}

/// The encoded keys of `columns` (key columns of one batch) at each row; `None` where a key
/// column is NULL (the side of a change that has no row).
fn encode_keys(columns: &[ArrayRef]) -> Result<Vec<Option<Box<[u8]>>>> {
    let Some(first) = columns.first() else {
        return Ok(Vec::new());
    };
    let rows = key_rows(columns)?;
    Ok((0..first.len())
        .map(|i| {
            (!columns.iter().any(|c| c.is_null(i))).then(|| Box::<[u8]>::from(rows.row(i).as_ref()))
        })
        .collect())
}

/// `columns` (a key's) encoded as comparable bytes, row by row.
fn key_rows(columns: &[ArrayRef]) -> Result<arrow::row::Rows> {
    let converter = RowConverter::new(
        columns
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )
    .map_err(|e| Error::Source {
        message: format!("encode the keys of a chunked copy: {e}"),
    })?;
    converter
        .convert_columns(columns)
        .map_err(|e| Error::Source {
            message: format!("encode the keys of a chunked copy: {e}"),
        })
}

/// The key columns named `key` of `batch` (laid out as `schema`); `None` when one is missing.
fn key_arrays(batch: &RecordBatch, key: &[String]) -> Option<Vec<ArrayRef>> {
    key.iter()
        .map(|name| {
            batch
                .schema()
                .index_of(name)
                .ok()
                .map(|i| batch.column(i).clone())
        })
        .collect()
}

impl<S: Sink> Pipeline<S> {
    /// What the chunk reads leave for the pipeline.
    pub(super) fn chunk_inbox(&self) -> ChunkInbox {
        self.chunk_inbox.clone()
    }

    /// Whether a source transaction is being received (a copy starts between two).
    pub(super) fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// The end of what the stream has delivered.
    pub(super) fn received(&self) -> Lsn {
        self.received
    }

    /// `table` starts a chunked copy: the lake holds it empty as of `lsn` (committed by the
    /// caller), the stream applies its changes after that, and the chunks add the rest. A
    /// resync request the table waited on is taken up: the acknowledgement may pass it.
    pub(super) fn start_chunked(
        &mut self,
        table: &TableId,
        lsn: Lsn,
        target: Arc<TableSchema>,
        copy: ChunkedCopy,
    ) {
        if let Some(state) = self.tables.get_mut(table) {
            state.checkpoint = Some(lsn);
            state.prepared = Some(target);
            state.awaiting_copy = false;
            // the emptying commit is past the request: a restart no longer needs it
            state.resync = None;
            state.clear_buffer();
            self.chunk_inbox.wait_for(table, None);
            state.copy = Some(copy);
        }
    }

    /// The reads to start now: one per key range not read to its end of every copy with none
    /// under way, each from the range's next chunk.
    pub(super) fn chunk_requests(&mut self) -> Vec<ChunkRequest> {
        let limit = self.config.source.snapshot_chunk_rows;
        // the reads of copies that ended (completed, stopped with their table, replaced) stop
        for table in self.chunk_inbox.reading() {
            let reading = self.tables.get(&table).is_some_and(|s| {
                s.stopped.is_none()
                    && !s.awaiting_copy
                    && s.copy.as_ref().is_some_and(ChunkedCopy::reading)
            });
            if !reading {
                self.chunk_inbox.wait_for(&table, None);
            }
        }
        let mut requests = Vec::new();
        for (table, state) in &mut self.tables {
            if state.stopped.is_some() || state.awaiting_copy {
                continue;
            }
            let Some(copy) = state.copy.as_mut() else {
                continue;
            };
            // an attempt's ranges start together: none is under way, or all that are not
            // read to their end are
            if copy.reading() || copy.done {
                continue;
            }
            self.chunk_inbox
                .wait_for(table, Some((copy.id.clone(), copy.attempt)));
            for (r, range) in copy.progress.ranges.iter().enumerate() {
                let Some(read) = copy.reads.get_mut(r).filter(|_| !range.done) else {
                    continue;
                };
                *read = RangeRead {
                    in_flight: true,
                    low_seen: false,
                };
                requests.push(ChunkRequest {
                    table: table.clone(),
                    id: ReadId(copy.id.clone(), copy.attempt),
                    copy: copy.id.clone(),
                    range: r,
                    chunk: range.chunks,
                    attempt: copy.attempt,
                    after: range.after.clone(),
                    upto: range.upto.clone(),
                    key: copy.key.clone(),
                    limit,
                    window: READ_AHEAD,
                });
            }
        }
        requests
    }

    /// A chunk read of `table` failed with `error`: the copy reads on from its next chunk to
    /// join (under a new attempt, so the watermarks and chunks read ahead of the failed one
    /// are passed over), up to a limit.
    /// Past the limit, or on an error retrying cannot fix, the table fails as any table
    /// commit does (`[sink] on_table_error`).
    pub(super) async fn chunk_failed(
        &mut self,
        table: &TableId,
        read: ReadId,
        error: Error,
    ) -> Result<()> {
        let Some(state) = self.tables.get_mut(table) else {
            return Ok(());
        };
        let first = state.first_commit.or(state.checkpoint).unwrap_or_default();
        let Some(copy) = state.copy.as_mut() else {
            return Ok(());
        };
        // a read the copy has moved past (it was read again already)
        if !copy.reading() || read != ReadId(copy.id.clone(), copy.attempt) {
            return Ok(());
        }
        copy.read_again();
        copy.failures += 1;
        self.chunk_inbox.wait_for(table, None);
        if copy.failures > READ_ATTEMPTS || !error.is_retryable() {
            let error = Error::Source {
                message: format!(
                    "table {table}: chunk {} of its copy while streaming: {error}",
                    copy.progress.chunks
                ),
            };
            return self.table_failed(table, first, error).await;
        }
        tracing::warn!(
            table = %table,
            chunk = copy.progress.chunks,
            error = %error,
            "a chunk read of a table copied while streaming failed; reading it again"
        );
        Ok(())
    }

    /// Remembers the keys `batch` (of the transaction committed at `commit_lsn`) changes,
    /// when its table is being copied in chunks. A transaction at or below the table's
    /// checkpoint is not: the lake holds it already (the emptying commit is above it, or a
    /// restart streams it again), so the stream will not bring its rows, and the chunks must.
    pub(super) fn note_touched(&mut self, batch: &ChangeBatch, commit_lsn: Lsn) -> Result<()> {
        let Some(state) = self.tables.get_mut(&batch.schema.table) else {
            return Ok(());
        };
        if state.checkpoint.is_some_and(|c| commit_lsn <= c) {
            return Ok(());
        }
        let Some(copy) = state.copy.as_mut() else {
            return Ok(());
        };
        for side in [&batch.new, &batch.old] {
            let Some(columns) = key_arrays(side, &copy.key) else {
                return Err(Error::Source {
                    message: format!(
                        "table {}: a change without the key columns ({}) its chunked copy \
                         orders by",
                        batch.schema.table,
                        copy.key.join(", ")
                    ),
                });
            };
            for key in encode_keys(&columns)?.into_iter().flatten() {
                copy.touched.insert(key);
            }
        }
        Ok(())
    }

    /// Takes the watermarks of the transaction committed at `commit_lsn`: a high watermark
    /// puts its chunk's rows into the table's buffer there.
    pub(super) fn take_watermarks(
        &mut self,
        watermarks: Vec<Watermark>,
        commit_lsn: Lsn,
    ) -> Result<()> {
        for watermark in watermarks {
            let table = self
                .tables
                .keys()
                .find(|t| t.to_string() == watermark.table)
                .cloned();
            let Some(table) = table else { continue };
            let Some(copy) = self.tables.get_mut(&table).and_then(|s| s.copy.as_mut()) else {
                continue;
            };
            let range = watermark.range as usize;
            let current = watermark.copy == copy.id
                && watermark.attempt == copy.attempt
                && copy.reads.get(range).is_some_and(|r| r.in_flight)
                && copy
                    .progress
                    .ranges
                    .get(range)
                    .is_some_and(|r| r.chunks == watermark.chunk);
            if !current {
                continue;
            }
            match watermark.mark {
                Mark::Low => {
                    if let Some(read) = copy.reads.get_mut(range) {
                        read.low_seen = true;
                    }
                }
                Mark::High => self.chunk_through(&table, range, commit_lsn)?,
            }
        }
        Ok(())
    }

    /// The high watermark of the next chunk of `table`'s key range `range` came through at
    /// `commit_lsn`: its rows, but those whose key the stream changed, join the buffer there.
    fn chunk_through(&mut self, table: &TableId, range: usize, commit_lsn: Lsn) -> Result<()> {
        let read = self.chunk_inbox.take(table, range);
        let Some(state) = self.tables.get_mut(table) else {
            return Ok(());
        };
        let Some(copy) = state.copy.as_mut() else {
            return Ok(());
        };
        let (Some(next), Some(reading)) = (
            copy.progress.ranges.get(range).map(|r| r.chunks),
            copy.reads.get(range).copied(),
        ) else {
            return Ok(());
        };
        let read = read.filter(|r| {
            r.copy == copy.id && r.range == range && r.chunk == next && r.attempt == copy.attempt
        });
        let Some(read) = read.filter(|_| reading.low_seen) else {
            // the stream brought the watermarks, but not the read's rows (or not in order):
            // the chunk is read again, and the ones read ahead of it (every range's)
            copy.read_again();
            self.chunk_inbox.wait_for(table, None);
            return Ok(());
        };
        let mut kept = 0usize;
        let mut batches = Vec::new();
        for batch in &read.data.rows {
            if copy.touched.is_empty() {
                kept += batch.num_rows();
                batches.push(batch.clone());
                continue;
            }
            let columns = key_arrays(batch, &copy.key).ok_or_else(|| Error::Source {
                message: format!("table {table}: a chunk without its key columns"),
            })?;
            let rows = key_rows(&columns)?;
            let keep: BooleanArray = (0..batch.num_rows())
                .map(|i| {
                    let null = columns.iter().any(|c| c.is_null(i));
                    Some(null || !copy.touched.contains(rows.row(i).as_ref()))
                })
                .collect();
            let filtered =
                arrow::compute::filter_record_batch(batch, &keep).map_err(|e| Error::Source {
                    message: format!("table {table}: filter a chunk: {e}"),
                })?;
            if filtered.num_rows() == 0 {
                continue;
            }
            kept += filtered.num_rows();
            batches.push(filtered);
        }
        let op = if copy.upserts { Op::Update } else { Op::Insert };
        let now = Instant::now();
        for batch in batches {
            let rows = batch.num_rows();
            let new =
                RecordBatch::try_new(read.schema.arrow_nullable.clone(), batch.columns().to_vec())
                    .map_err(|e| Error::Source {
                        message: format!("table {table}: a chunk's rows: {e}"),
                    })?;
            let old_columns: Vec<ArrayRef> = read
                .schema
                .arrow_nullable
                .fields()
                .iter()
                .map(|f| new_null_array(f.data_type(), rows))
                .collect();
            let old = RecordBatch::try_new(read.schema.arrow_nullable.clone(), old_columns)
                .map_err(|e| Error::Source {
                    message: format!("table {table}: a chunk's rows: {e}"),
                })?;
            state.rows += rows;
            state.bytes += new.get_array_memory_size();
            state.buffer.push(Entry::Changes(ChangeBatch {
                schema: read.schema.clone(),
                commit_lsn,
                first_position: 0,
                ops: vec![op; rows],
                new,
                old,
                old_rows: vec![OldRow::Absent; rows],
                unchanged_toast: Vec::new(),
            }));
        }
        // the commit at the watermark carries the progress, even with no row kept
        state.oldest.get_or_insert(now);
        state.first_commit.get_or_insert(commit_lsn);
        state.last_commit = Some(commit_lsn);
        let dropped = read.data.count as usize - kept;
        copy.progress.chunks += 1;
        copy.progress.rows += read.data.count;
        copy.failures = 0;
        let limit = self.config.source.snapshot_chunk_rows;
        let (Some(progress), Some(reading)) = (
            copy.progress.ranges.get_mut(range),
            copy.reads.get_mut(range),
        ) else {
            return Ok(());
        };
        progress.chunks += 1;
        reading.low_seen = false;
        match read.data.last_key {
            Some(last) if read.data.count >= limit => progress.after = Some(last),
            // fewer rows than asked for: the range has no more (rows added since come
            // through the stream)
            last => {
                if let Some(last) = last {
                    progress.after = Some(last);
                }
                progress.done = true;
                reading.in_flight = false;
            }
        }
        copy.done = copy.progress.complete();
        tracing::debug!(
            table = %table,
            range,
            chunk = copy.progress.chunks,
            rows = read.data.count,
            dropped,
            lsn = %commit_lsn,
            "a chunk joined the buffer"
        );
        if copy.done {
            tracing::info!(
                table = %table,
                chunks = copy.progress.chunks,
                rows = copy.progress.rows,
                seconds = copy.started.elapsed().as_secs_f64(),
                "the table's chunked copy has read its last chunk; its next commit completes it"
            );
        }
        if let Some(m) = crate::metrics::installed() {
            m.copied_rows(table, read.data.count);
        }
        Ok(())
    }

    /// Reports the progress and pace of every chunked copy under way (see [`CopyTracker`]).
    pub(super) fn report_copies(&mut self) {
        for (table, state) in &mut self.tables {
            if state.stopped.is_some() {
                continue;
            }
            if let Some(copy) = state.copy.as_mut() {
                copy.report(table, &self.progress);
            }
        }
    }

    /// The table's commit completed its copy: it streams as any other from now on.
    pub(super) fn copy_committed(&mut self, table: &TableId) {
        if let Some(state) = self.tables.get_mut(table)
            && state.copy.as_ref().is_some_and(ChunkedCopy::done)
            && let Some(copy) = state.copy.take()
        {
            tracing::info!(
                table = %table,
                chunks = copy.progress.chunks,
                rows = copy.progress.rows,
                "copied the table in chunks while streaming"
            );
            if let Some(m) = crate::metrics::installed() {
                m.copy_committed(table, copy.progress.rows);
            }
        }
    }
}
