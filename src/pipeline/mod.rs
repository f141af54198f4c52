//! The pipeline: the only place where source and sink meet. It buffers each table's committed
//! transactions, reduces them to one final state per key, commits them through the sink on
//! the flush policy, and computes the durable LSN — the only position acknowledged to
//! PostgreSQL (DESIGN.md invariants 1, 3, 4, 5).
//!
//! - Flushes fall on source-transaction boundaries: only committed transactions are buffered
//!   for a flush; the open transaction waits apart until its Commit.
//! - Each table skips every transaction at or below its checkpoint (the LSN its last lake
//!   commit carries), so a restart from the lowest checkpoint duplicates nothing.
//! - The durable LSN is the server's position when nothing is buffered, else just below the
//!   oldest buffered (or open) transaction's commit LSN.
//!
//! Beside the buffers: `flush` (the way out: reduced commits when due, spilled transactions,
//! failed tables), `reduce` (one final state per key), `spill` (transactions larger than
//! memory), `changelog` (append-only tables), and `run` itself in `service` (start, stream,
//! stop), with `copy` (initial, joining and rejoining tables' copies), `chunks` (the chunked
//! copy beside the stream of a table that joins while streaming), `membership` (the slot
//! record: which tables streamed, how far the slot may go), `acknowledge` (the slot never
//! confirmed past the record) and `observe` (the metrics' hooks).

mod acknowledge;
pub mod changelog;
mod chunks;
mod copy;
mod flush;
pub mod membership;
mod observe;
pub mod reduce;
pub(crate) mod sealed;
pub mod service;
pub mod spill;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use crate::config::{Config, TableMode};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::masking::Masking;
use crate::pipeline::reduce::Entry;
use crate::pipeline::spill::Spill;
use crate::progress::Progress;
use crate::sink::{Sink, TableLayout};
use crate::source::stream::SourceEvent;
use crate::table::{TableId, TableSchema};

/// One table as the pipeline tracks it.
#[derive(Debug)]
pub struct TableState {
    /// The source table's latest shape.
    pub schema: Arc<TableSchema>,
    /// The shape the sink was last prepared with.
    prepared: Option<Arc<TableSchema>>,
    /// Key and partitioning.
    pub layout: TableLayout,
    /// Upsert or changelog.
    pub mode: TableMode,
    /// The columns that identify a row: the layout's key for an upsert table; a changelog
    /// table's layout has none (it only appends), but its unchanged TOAST values are resolved
    /// and its changes folded by this key.
    pub row_key: Vec<String>,
    /// The LSN the lake holds this table up to; transactions at or below it are skipped.
    pub checkpoint: Option<Lsn>,
    /// Committed transactions waiting for a flush, in stream order.
    buffer: Vec<Entry>,
    rows: usize,
    bytes: usize,
    /// When the oldest buffered change arrived.
    oldest: Option<Instant>,
    /// Commit LSN of the first and last buffered transactions.
    first_commit: Option<Lsn>,
    last_commit: Option<Lsn>,
    /// Discovered while streaming and not copied yet: buffered, never flushed.
    awaiting_copy: bool,
    /// Stopped by an error retrying cannot fix (`[sink] on_table_error`): its changes are no
    /// longer applied.
    pub stopped: Option<String>,
    /// Its chunked copy, while one runs beside the stream.
    copy: Option<chunks::ChunkedCopy>,
    /// The commit LSN of the `lakewriter resync` request the table waits on, until its copy
    /// has emptied the lake table: the acknowledgement stays below it meanwhile, so a run that
    /// fails in between leaves the request in the slot for the next start to take up.
    resync: Option<Lsn>,
}

/// Whether `error` belongs to one table (a schema the lake cannot take, a row without its key),
/// so `[sink] on_table_error` decides, rather than to the run (retryable failures, the source
/// connection, local files).
pub fn is_table_error(error: &Error) -> bool {
    matches!(
        error,
        Error::Sink {
            retryable: false,
            ..
        } | Error::Source { .. }
    )
}

impl TableState {
    /// Whether something waits for the table's next commit: buffered changes, or a chunked
    /// copy's chunk (which may have kept no row, but moves the copy on).
    fn has_pending(&self) -> bool {
        !self.buffer.is_empty() || self.last_commit.is_some()
    }

    /// Empties the table's buffer: its copy holds what it held.
    fn clear_buffer(&mut self) {
        self.buffer.clear();
        self.rows = 0;
        self.bytes = 0;
        self.oldest = None;
        self.first_commit = None;
        self.last_commit = None;
    }

    /// A table stopped at startup by `message` (`[sink] on_table_error = "stop_table"`): it
    /// takes no change, and the acknowledged position stays at its `checkpoint`, so the slot
    /// keeps its WAL.
    pub fn stopped(
        schema: Arc<TableSchema>,
        layout: TableLayout,
        mode: TableMode,
        checkpoint: Lsn,
        message: String,
    ) -> Self {
        let mut state = TableState::new(schema, layout, mode, Some(checkpoint));
        state.first_commit = Some(Lsn(checkpoint.get().saturating_add(1)));
        state.stopped = Some(message);
        state
    }

    /// A table ready to stream, with its lake checkpoint.
    pub fn new(
        schema: Arc<TableSchema>,
        layout: TableLayout,
        mode: TableMode,
        checkpoint: Option<Lsn>,
    ) -> Self {
        TableState {
            prepared: Some(schema.clone()),
            schema,
            row_key: layout.key.clone(),
            layout,
            mode,
            checkpoint,
            buffer: Vec::new(),
            rows: 0,
            bytes: 0,
            oldest: None,
            first_commit: None,
            last_commit: None,
            awaiting_copy: false,
            stopped: None,
            copy: None,
            resync: None,
        }
    }
}

/// The source transaction being received.
#[derive(Debug)]
struct OpenTransaction {
    commit_lsn: Lsn,
    entries: Vec<(TableId, Entry)>,
    schemas: Vec<Arc<TableSchema>>,
    /// Arrow bytes of `entries`.
    bytes: usize,
    /// Where the transaction went once it outgrew its share of the memory budget: from then
    /// on every change goes there, and `entries` stays empty.
    spill: Option<Spill>,
    /// A transaction the pipeline took in before a reconnect, resent by the new session: it
    /// is dropped whole (DESIGN.md invariant 11).
    replay: bool,
    /// The watermarks of chunked copies it carries, taken at its commit.
    watermarks: Vec<crate::source::chunk::Watermark>,
    /// The tables `lakewriter resync` asked, in it, to copy again.
    resyncs: Vec<TableId>,
}

/// Counters for logs and `status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// Transactions received.
    pub transactions: u64,
    /// Changes received.
    pub changes: u64,
    /// Lake commits made.
    pub commits: u64,
    /// Changes skipped as already in the lake.
    pub skipped: u64,
}

/// Buffers, flushes and acknowledges. Feed it the source's events with [`Pipeline::handle`],
/// and call [`Pipeline::tick`] periodically for the latency limit.
#[derive(Debug)]
pub struct Pipeline<S: Sink> {
    config: Arc<Config>,
    sink: S,
    tables: HashMap<TableId, TableState>,
    open: Option<OpenTransaction>,
    commit_times: HashMap<Lsn, i64>,
    /// The end of the last transaction received, or the server's idle position.
    received: Lsn,
    /// The commit LSN of the last transaction taken in (buffered, spilled, committed or
    /// skipped by its tables' checkpoints). Commit LSNs rise strictly along the stream, so a
    /// transaction at or below it is one a new session resends.
    taken: Lsn,
    /// The source said it had sent everything (an idle message after the last commit).
    caught_up: bool,
    durable: watch::Sender<Lsn>,
    stats: Stats,
    /// Tables that appeared in the stream without being known at the start: they need a copy.
    discovered: Vec<TableId>,
    /// The column masking policies the copies of joining tables apply.
    masking: Arc<Masking>,
    /// The chunks read for chunked copies, waiting for their high watermarks.
    chunk_inbox: chunks::ChunkInbox,
    /// Where chunked copies report their progress.
    progress: Progress,
    /// Tables `[sink] on_table_error = "suspend_table"` set aside at the start (their
    /// preparation failed): not streamed. A resync request takes one up as a table that
    /// joins the publication.
    suspended: HashSet<TableId>,
}

impl<S: Sink> Pipeline<S> {
    /// A pipeline over `tables` (prepared in the sink, with their checkpoints) that reports the
    /// durable LSN on `durable`.
    pub fn new(
        config: Arc<Config>,
        sink: S,
        tables: HashMap<TableId, TableState>,
        durable: watch::Sender<Lsn>,
    ) -> Self {
        let received = *durable.borrow();
        Pipeline {
            sink,
            tables,
            open: None,
            commit_times: HashMap::new(),
            received,
            taken: Lsn::ZERO,
            caught_up: false,
            durable,
            stats: Stats::default(),
            discovered: Vec::new(),
            masking: Masking::none(),
            chunk_inbox: Default::default(),
            progress: Progress::new(config.metrics.progress_interval.get()),
            suspended: HashSet::new(),
            config,
        }
    }

    /// Sets the tables suspended at the start (see [`Pipeline::suspended`]).
    pub fn set_suspended(&mut self, tables: HashSet<TableId>) {
        self.suspended = tables;
    }

    /// Tables suspended at the start and not taken up since: the membership check leaves
    /// them out.
    pub fn suspended(&self) -> &HashSet<TableId> {
        &self.suspended
    }

    /// Sets the column masking policies the copies of joining tables apply.
    pub fn set_masking(&mut self, masking: Arc<Masking>) {
        self.masking = masking;
    }

    /// The column masking policies.
    pub fn masking(&self) -> &Arc<Masking> {
        &self.masking
    }

    /// Tables that appeared in the stream since the last call (added to the publication, or
    /// created, while running). Until [`Pipeline::copied`] is called for one, its changes are
    /// buffered and never flushed.
    pub fn take_discovered(&mut self) -> Vec<TableId> {
        std::mem::take(&mut self.discovered)
    }

    /// `table` was copied into the lake as of `lsn` (a snapshot taken while streaming): what
    /// was buffered for it is in the copy, and the stream skips its changes up to `lsn`.
    pub fn copied(&mut self, table: &TableId, lsn: Lsn, schema: Arc<TableSchema>) {
        if let Some(state) = self.tables.get_mut(table) {
            state.checkpoint = Some(lsn);
            state.prepared = Some(schema);
            state.awaiting_copy = false;
            state.resync = None;
            state.clear_buffer();
        }
    }

    /// `table` waited for a copy that will not come (it is gone from the catalog): a resync
    /// request it waited on no longer holds the acknowledgement back.
    pub(crate) fn copy_abandoned(&mut self, table: &TableId) {
        if let Some(state) = self.tables.get_mut(table).filter(|s| s.awaiting_copy) {
            state.resync = None;
        }
    }

    /// A table new to the stream (added to the publication, or created, while running): it
    /// waits for a copy (see [`Pipeline::take_discovered`]) and takes every change from it on.
    pub fn join(&mut self, schema: Arc<TableSchema>) {
        let table = schema.table.clone();
        let settings = self.config.source.tables.get(&table.to_string());
        let mode = settings.map(|s| s.mode).unwrap_or_default();
        let row_key: Vec<String> = match settings.and_then(|s| s.key.clone()) {
            Some(key) => key,
            None => schema
                .columns
                .iter()
                .filter(|c| c.key)
                .map(|c| c.name.clone())
                .collect(),
        };
        let key = match mode {
            TableMode::Changelog => Vec::new(),
            TableMode::Upsert => row_key.clone(),
        };
        let layout = TableLayout {
            key,
            partition_by: self
                .config
                .sink
                .tables
                .get(&table.to_string())
                .map(|t| t.partition_by.clone())
                .unwrap_or_default(),
        };
        tracing::info!(table = %table, "a table new to the publication: copying it while streaming");
        let mut state = TableState::new(schema, layout, mode, None);
        state.row_key = row_key;
        state.prepared = None;
        state.awaiting_copy = true;
        self.discovered.push(table.clone());
        self.tables.insert(table, state);
    }

    /// `table`'s stream broke while streaming (it left the publication and rejoined, or was
    /// created again): it waits for a copy like a table that just joined, and what it buffered
    /// is dropped, the copy holding it.
    pub fn recopy(&mut self, table: &TableId) {
        if let Some(state) = self.tables.get_mut(table) {
            state.awaiting_copy = true;
            state.checkpoint = None;
            state.copy = None;
            state.clear_buffer();
            self.discovered.push(table.clone());
        }
    }

    /// Takes up `lakewriter resync`'s requests to copy `tables` again, made in the transaction
    /// committed at `commit_lsn`: each waits for a copy like a table that rejoined. A table
    /// `[sink] on_table_error` stopped or suspended is taken up again the same way (the copy
    /// replaces what the lake holds; a table that fails again stops again). A request the lake
    /// already took up (a restart streams it again, below the checkpoint of the copy it
    /// started), one for a table being copied (that copy ends equal to PostgreSQL too), and one
    /// for a table this run does not stream are logged and ignored. A table suspended at the
    /// start leaves [`Pipeline::suspended`], so the next membership check takes it up as a
    /// table that joined (a restart before then copies it anyway: it is marked incomplete).
    fn resync(&mut self, tables: Vec<TableId>, commit_lsn: Lsn) {
        for table in tables {
            if !self.tables.contains_key(&table) && self.suspended.remove(&table) {
                tracing::info!(
                    table = %table,
                    lsn = %commit_lsn,
                    "resync requested for a table suspended at the start: it joins the stream \
                     again and is copied beside it"
                );
                continue;
            }
            let Some(state) = self.tables.get(&table) else {
                tracing::warn!(
                    table = %table,
                    lsn = %commit_lsn,
                    "a resync request for a table this run does not stream: ignored"
                );
                continue;
            };
            if state.checkpoint.is_some_and(|c| commit_lsn <= c) {
                tracing::debug!(
                    table = %table,
                    lsn = %commit_lsn,
                    "a resync request the lake already took up: skipped"
                );
            } else if let Some(why) = &state.stopped {
                tracing::info!(
                    table = %table,
                    lsn = %commit_lsn,
                    stopped = %why,
                    "resync requested for a table stopped by an error: it is copied again \
                     beside the stream"
                );
                self.recopy(&table);
                if let Some(state) = self.tables.get_mut(&table) {
                    state.stopped = None;
                    state.resync = Some(commit_lsn);
                }
            } else if state.awaiting_copy || state.copy.is_some() {
                tracing::info!(
                    table = %table,
                    lsn = %commit_lsn,
                    "a resync request for a table being copied: ignored, the copy under way \
                     ends equal to PostgreSQL"
                );
            } else {
                tracing::info!(
                    table = %table,
                    lsn = %commit_lsn,
                    "resync requested: the table is copied again beside the stream"
                );
                self.recopy(&table);
                if let Some(state) = self.tables.get_mut(&table) {
                    state.resync = Some(commit_lsn);
                }
            }
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The tables and their state.
    pub fn tables(&self) -> &HashMap<TableId, TableState> {
        &self.tables
    }

    /// The sink.
    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    /// Gives the sink back.
    pub fn into_sink(self) -> S {
        self.sink
    }

    /// Takes one source event.
    pub async fn handle(&mut self, event: SourceEvent) -> Result<()> {
        match event {
            SourceEvent::Started { from } => {
                observe::stream_started();
                // a new session resends every transaction not acknowledged yet: the one open
                // is void, and the ones already taken in are recognised by their commit LSN
                if self.open.take().is_some() || self.taken > from {
                    tracing::info!(
                        from = %from,
                        taken = %self.taken,
                        "the replication session restarted: transactions already taken in are \
                         dropped as they are resent"
                    );
                }
            }
            SourceEvent::Begin {
                commit_lsn,
                commit_time_micros,
            } => {
                let replay = commit_lsn <= self.taken;
                if !replay {
                    self.commit_times.insert(commit_lsn, commit_time_micros);
                }
                self.caught_up = false;
                self.open = Some(OpenTransaction {
                    commit_lsn,
                    entries: Vec::new(),
                    schemas: Vec::new(),
                    bytes: 0,
                    spill: None,
                    replay,
                    watermarks: Vec::new(),
                    resyncs: Vec::new(),
                });
            }
            SourceEvent::Schema { schema, .. } => {
                if let Some(open) = &mut self.open {
                    // a resent transaction's shapes were applied when it first arrived
                    if !open.replay {
                        open.schemas.push(schema);
                    }
                } else {
                    self.apply_schema(schema).await?;
                }
            }
            SourceEvent::Changes(batch) => {
                self.stats.changes += batch.len() as u64;
                let table = batch.schema.table.clone();
                observe::changes(&table, &batch.ops);
                if let Some(open) = &self.open {
                    if !open.replay {
                        self.note_touched(&batch, open.commit_lsn)?;
                    }
                    let bytes =
                        batch.new.get_array_memory_size() + batch.old.get_array_memory_size();
                    self.receive(table, Entry::Changes(batch), bytes)?;
                }
            }
            SourceEvent::Truncate { tables, commit_lsn } => {
                if self.open.is_some() {
                    for table in tables {
                        observe::truncate(&table);
                        self.receive(table, Entry::Truncate(commit_lsn), 0)?;
                    }
                }
            }
            SourceEvent::Watermark(watermark) => {
                if let Some(open) = self.open.as_mut().filter(|o| !o.replay) {
                    open.watermarks.push(watermark);
                }
            }
            SourceEvent::Resync(table) => {
                if let Some(open) = self.open.as_mut().filter(|o| !o.replay) {
                    open.resyncs.push(table);
                }
            }
            SourceEvent::Commit {
                commit_lsn,
                end_lsn,
                ..
            } => {
                if let Some(mut open) = self.open.take()
                    && !open.replay
                {
                    self.stats.transactions += 1;
                    self.taken = self.taken.max(commit_lsn);
                    let watermarks = std::mem::take(&mut open.watermarks);
                    let resyncs = std::mem::take(&mut open.resyncs);
                    match open.spill.take() {
                        Some(spill) => self.commit_spilled(open, spill, commit_lsn).await?,
                        None => self.commit_transaction(open, commit_lsn).await?,
                    }
                    self.take_watermarks(watermarks, commit_lsn)?;
                    self.resync(resyncs, commit_lsn);
                }
                self.received = self.received.max(end_lsn);
                self.flush_due(false).await?;
                self.acknowledge();
            }
            SourceEvent::Idle { server_lsn } => {
                if self.open.is_none() {
                    self.received = self.received.max(server_lsn);
                    self.caught_up = true;
                }
                self.flush_due(false).await?;
                self.acknowledge();
            }
        }
        Ok(())
    }

    /// Flushes tables whose oldest change is older than the latency limit.
    pub async fn tick(&mut self) -> Result<()> {
        self.flush_due(false).await?;
        self.acknowledge();
        self.report_metrics();
        self.report_copies();
        Ok(())
    }

    /// Flushes every buffered table (on shutdown) and acknowledges.
    pub async fn flush_all(&mut self) -> Result<()> {
        self.flush_due(true).await?;
        self.acknowledge();
        Ok(())
    }

    /// Takes one entry of the open transaction: kept in memory while the transaction fits its
    /// share of the budget (half of it, less what the tables hold), else spilled to local
    /// files (invariant 4: the transaction is still committed whole, at its end).
    fn receive(&mut self, table: TableId, entry: Entry, bytes: usize) -> Result<()> {
        let buffered: usize = self.tables.values().map(|s| s.bytes).sum();
        let budget = self.config.flush.memory_budget.bytes();
        let Some(open) = self.open.as_mut().filter(|o| !o.replay) else {
            return Ok(());
        };
        open.bytes += bytes;
        if open.spill.is_none() && (open.bytes + buffered) as u64 > budget / 2 {
            let dir = self
                .config
                .flush
                .spill_dir
                .clone()
                .unwrap_or_else(std::env::temp_dir);
            tracing::info!(
                lsn = %open.commit_lsn,
                bytes = open.bytes,
                dir = %dir.display(),
                "a transaction larger than its share of the memory budget: spilling it to \
                 local files until its commit"
            );
            open.spill = Some(Spill::create(&dir, open.commit_lsn)?);
            for (table, entry) in std::mem::take(&mut open.entries) {
                spill_entry(&self.tables, open, table, entry)?;
            }
        }
        if open.spill.is_some() {
            spill_entry(&self.tables, open, table, entry)
        } else {
            open.entries.push((table, entry));
            Ok(())
        }
    }

    async fn apply_schema(&mut self, schema: Arc<TableSchema>) -> Result<()> {
        let table = schema.table.clone();
        match self.tables.get_mut(&table) {
            Some(state) => state.schema = schema,
            // suspended at the start: its changes are not streamed until a resync or a
            // restart takes it up, as for a table suspended while running
            None if self.suspended.contains(&table) => {}
            None => self.join(schema),
        }
        Ok(())
    }

    async fn commit_transaction(&mut self, open: OpenTransaction, commit_lsn: Lsn) -> Result<()> {
        for schema in open.schemas {
            self.apply_schema(schema).await?;
        }
        let now = Instant::now();
        for (table, entry) in open.entries {
            let Some(state) = self.tables.get_mut(&table) else {
                continue;
            };
            if state.stopped.is_some() {
                continue;
            }
            if state.checkpoint.is_some_and(|c| commit_lsn <= c) {
                if let Entry::Changes(batch) = &entry {
                    self.stats.skipped += batch.len() as u64;
                }
                continue;
            }
            if let Entry::Changes(batch) = &entry {
                state.rows += batch.len();
                state.bytes +=
                    batch.new.get_array_memory_size() + batch.old.get_array_memory_size();
            }
            state.buffer.push(entry);
            state.oldest.get_or_insert(now);
            state.first_commit.get_or_insert(commit_lsn);
            state.last_commit = Some(commit_lsn);
        }
        Ok(())
    }

    /// Sends the durable LSN: the received position when nothing waits, else just below the
    /// oldest transaction that is not in the lake yet, or the oldest resync request whose
    /// copy has not emptied its table yet. Never moves backwards.
    fn acknowledge(&mut self) {
        let pending = self
            .tables
            .values()
            .flat_map(|s| [s.first_commit, s.resync])
            .flatten()
            .chain(
                self.open
                    .as_ref()
                    .filter(|o| !o.replay)
                    .map(|o| o.commit_lsn),
            )
            .min();
        let durable = match pending {
            None => self.received,
            Some(oldest) => Lsn(oldest.get().saturating_sub(1)).min(self.received),
        };
        self.durable.send_if_modified(|current| {
            if durable > *current {
                *current = durable;
                true
            } else {
                false
            }
        });
    }
}

/// Adds `entry` of `table` to the open transaction's spill, unless the table would skip it
/// (already in the lake, unknown, or waiting for its copy, which covers it). A changelog table
/// keeps every change, so its spill records a TRUNCATE as a change and removes nothing.
fn spill_entry(
    tables: &HashMap<TableId, TableState>,
    open: &mut OpenTransaction,
    table: TableId,
    entry: Entry,
) -> Result<()> {
    let Some(state) = tables.get(&table) else {
        return Ok(());
    };
    if state.awaiting_copy
        || state.stopped.is_some()
        || state.checkpoint.is_some_and(|c| open.commit_lsn <= c)
    {
        return Ok(());
    }
    let Some(spill) = open.spill.as_mut() else {
        return Ok(());
    };
    match state.mode {
        TableMode::Upsert => spill.add(&table, &state.layout.key, entry),
        TableMode::Changelog => spill.add(&table, &[], entry),
    }
}
