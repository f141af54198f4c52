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
//! Beside the buffers: `reduce` (one final state per key), `spill` (transactions larger than
//! memory), `changelog` (append-only tables), and `run` itself in `service` (start, stream,
//! stop), with `copy` (initial, joining and rejoining tables' copies), `membership` (the slot
//! record: which tables streamed, how far the slot may go), `acknowledge` (the slot never
//! confirmed past the record) and `observe` (the metrics' hooks).

mod acknowledge;
pub mod changelog;
mod copy;
pub mod membership;
mod observe;
pub mod reduce;
pub mod service;
pub mod spill;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use crate::config::{Config, TableErrorPolicy, TableMode};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::pipeline::reduce::Entry;
use crate::pipeline::spill::Spill;
use crate::sink::{Sink, TableDelta, TableLayout};
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
}

/// A table's part of a flush, reduced: the shape it is committed in, and what it holds.
struct Reduced {
    target: Arc<TableSchema>,
    truncate: bool,
    deletes: Option<arrow::array::RecordBatch>,
    rows: Option<arrow::array::RecordBatch>,
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
            config,
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
        }
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
            state.buffer.clear();
            state.rows = 0;
            state.bytes = 0;
            state.oldest = None;
            state.first_commit = None;
            state.last_commit = None;
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
            state.buffer.clear();
            state.rows = 0;
            state.bytes = 0;
            state.oldest = None;
            state.first_commit = None;
            state.last_commit = None;
            self.discovered.push(table.clone());
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
                if self.open.is_some() {
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
                    match open.spill.take() {
                        Some(spill) => self.commit_spilled(open, spill, commit_lsn).await?,
                        None => self.commit_transaction(open, commit_lsn).await?,
                    }
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

    /// Commits a spilled transaction: per table, each bucket is reduced and written to files
    /// on its own, and one commit takes them all in.
    async fn commit_spilled(
        &mut self,
        open: OpenTransaction,
        mut spill: Spill,
        commit_lsn: Lsn,
    ) -> Result<()> {
        for schema in open.schemas {
            self.apply_schema(schema).await?;
        }
        spill.finish()?;
        // a flush below may drop commit times it thinks unused; a changelog table needs this one
        let time = self.commit_times.get(&commit_lsn).copied();
        tracing::info!(
            lsn = %commit_lsn,
            changes = spill.rows(),
            bytes = spill.bytes(),
            "committing a spilled transaction"
        );
        for table in spill.tables().to_vec() {
            let Some(state) = self.tables.get(&table) else {
                continue;
            };
            if state.awaiting_copy
                || state.stopped.is_some()
                || state.checkpoint.is_some_and(|c| commit_lsn <= c)
            {
                continue;
            }
            // what the table buffered before goes first, in its own commit
            if !state.buffer.is_empty() {
                let first = state.first_commit.unwrap_or(commit_lsn);
                if let Err(e) = self.flush_table(&table).await {
                    self.table_failed(&table, first, e).await?;
                    continue;
                }
            }
            if let Some(time) = time {
                self.commit_times.insert(commit_lsn, time);
            }
            if let Err(e) = self.commit_spilled_table(&table, &spill, commit_lsn).await {
                self.sink.discard_staged(&table);
                self.table_failed(&table, commit_lsn, e).await?;
            }
        }
        Ok(())
    }

    /// A flush of `table` from the transaction at `first` on failed with `error`: stops the
    /// run, or only the table, as `[sink] on_table_error` says. Errors retrying may fix, and
    /// errors that are not the table's, always stop the run.
    async fn table_failed(&mut self, table: &TableId, first: Lsn, error: Error) -> Result<()> {
        observe::commit_failed(table, &error);
        let policy = self.config.sink.on_table_error;
        if policy == TableErrorPolicy::StopAll || !is_table_error(&error) {
            return Err(error);
        }
        let Some(state) = self.tables.get_mut(table) else {
            return Err(error);
        };
        let message = format!("{error} (in the transaction committed at LSN {first})");
        state.buffer.clear();
        state.rows = 0;
        state.bytes = 0;
        state.oldest = None;
        state.last_commit = None;
        state.stopped = Some(message.clone());
        match policy {
            TableErrorPolicy::StopTable => {
                // the acknowledged position stays below this transaction: the slot keeps the
                // table's WAL, and a restart after the fix resumes it
                state.first_commit = Some(state.first_commit.map_or(first, |f| f.min(first)));
                tracing::error!(
                    table = %table,
                    lsn = %first,
                    error = %message,
                    "the table stops at its last commit; the other tables go on, and the slot \
                     keeps its WAL until a restart after the fix"
                );
            }
            TableErrorPolicy::SuspendTable | TableErrorPolicy::StopAll => {
                state.first_commit = None;
                tracing::error!(
                    table = %table,
                    lsn = %first,
                    error = %message,
                    "the table is suspended: its WAL is released and the next start copies it \
                     again"
                );
                self.sink.discard_staged(table);
                self.sink.mark_incomplete(table).await?;
            }
        }
        Ok(())
    }

    async fn commit_spilled_table(
        &mut self,
        table: &TableId,
        spill: &Spill,
        commit_lsn: Lsn,
    ) -> Result<()> {
        let started = Instant::now();
        let (mut written, mut deleted, mut target) = (0, 0, None);
        for group in 0..spill.groups(table) {
            let entries = spill.group(table, group)?;
            if entries.is_empty() {
                continue;
            }
            let reduced = self.reduce(table, &entries).await?;
            self.prepare_for(table, &reduced.target).await?;
            written += reduced.rows.as_ref().map_or(0, |b| b.num_rows());
            deleted += reduced.deletes.as_ref().map_or(0, |b| b.num_rows());
            self.sink
                .stage(TableDelta {
                    table: table.clone(),
                    schema: reduced.target.clone(),
                    truncate: spill.truncates(table),
                    adds_only: spill.adds_only(table),
                    deletes: reduced.deletes.into_iter().collect(),
                    rows: reduced.rows.into_iter().collect(),
                    lsn: None,
                })
                .await?;
            target = Some(reduced.target);
        }
        let target = match target {
            Some(target) => target,
            None => self.reduce(table, &[]).await?.target,
        };
        self.prepare_for(table, &target).await?;
        self.sink
            .commit(TableDelta {
                table: table.clone(),
                schema: target.clone(),
                truncate: spill.truncates(table),
                adds_only: false,
                deletes: Vec::new(),
                rows: Vec::new(),
                lsn: Some(commit_lsn),
            })
            .await?;
        self.stats.commits += 1;
        let lsn = Some(commit_lsn);
        self.observe_commit(table, written, deleted, started, lsn, lsn);
        if let Some(state) = self.tables.get_mut(table) {
            state.prepared = Some(target);
            state.checkpoint = Some(commit_lsn);
        }
        tracing::info!(
            table = %table,
            rows = written,
            deletes = deleted,
            lsn = %commit_lsn,
            ms = started.elapsed().as_millis() as u64,
            "committed a spilled transaction"
        );
        Ok(())
    }

    /// Reduces `entries` of `table` to what one commit holds: the final state of each key
    /// (upsert), or every change as a row (changelog).
    async fn reduce(&mut self, table: &TableId, entries: &[Entry]) -> Result<Reduced> {
        let Some(state) = self.tables.get(table) else {
            return Err(Error::Source {
                message: format!("table {table}: changes for a table the pipeline does not know"),
            });
        };
        // rows of an older shape keep the values of columns dropped or renamed since
        let mut schema = state.schema.clone();
        for entry in entries {
            if let Entry::Changes(batch) = entry
                && !batch.schema.same_shape(&schema)
                && let Some(wider) = schema.with_columns_of(&batch.schema)
            {
                schema = Arc::new(wider);
            }
        }
        match state.mode {
            TableMode::Upsert => {
                let plan = reduce::plan(schema.clone(), &state.layout.key, entries)?;
                let lake = match plan.lookup_keys()? {
                    Some(keys) => self.sink.lookup(table, &keys).await?,
                    None => Vec::new(),
                };
                let reduced = plan.materialize(&lake)?;
                Ok(Reduced {
                    target: schema,
                    truncate: reduced.truncate,
                    deletes: reduced.deletes,
                    rows: reduced.rows,
                })
            }
            TableMode::Changelog => {
                let target = Arc::new(changelog::schema(&schema));
                let plan = changelog::plan(&schema, &target, &state.row_key, entries)?;
                let lake = match plan.lookup_keys()? {
                    Some(keys) => self.sink.lookup(table, &keys).await?,
                    None => Vec::new(),
                };
                let rows = plan.materialize(&lake, &self.commit_times)?;
                Ok(Reduced {
                    target,
                    truncate: false,
                    deletes: None,
                    rows,
                })
            }
        }
    }

    /// Prepares the sink for `table` in `target` when it was last prepared in another shape.
    async fn prepare_for(&mut self, table: &TableId, target: &Arc<TableSchema>) -> Result<()> {
        let Some(state) = self.tables.get_mut(table) else {
            return Ok(());
        };
        let needs_prepare = state
            .prepared
            .as_ref()
            .is_none_or(|p| !p.same_shape(target));
        if needs_prepare {
            let layout = state.layout.clone();
            self.sink.prepare(table, target, &layout).await?;
            if let Some(state) = self.tables.get_mut(table) {
                state.prepared = Some(target.clone());
            }
        }
        Ok(())
    }

    async fn apply_schema(&mut self, schema: Arc<TableSchema>) -> Result<()> {
        let table = schema.table.clone();
        match self.tables.get_mut(&table) {
            Some(state) => state.schema = schema,
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

    async fn flush_due(&mut self, all: bool) -> Result<()> {
        let flush = &self.config.flush;
        let mut due: Vec<TableId> = self
            .tables
            .iter()
            .filter(|(_, s)| !s.buffer.is_empty() && !s.awaiting_copy && s.stopped.is_none())
            .filter(|(_, s)| {
                all || s.rows >= flush.max_rows
                    || s.bytes as u64 >= flush.max_bytes.bytes()
                    || s.oldest
                        .is_some_and(|t| t.elapsed() >= flush.max_latency.get())
                    || (self.caught_up && flush.idle_rows > 0 && s.rows >= flush.idle_rows)
            })
            .map(|(t, _)| t.clone())
            .collect();
        // over the memory budget: the largest tables go first until half of it is free
        let total: usize = self.tables.values().map(|s| s.bytes).sum();
        if total as u64 > flush.memory_budget.bytes() {
            let mut by_size: Vec<(usize, TableId)> = self
                .tables
                .iter()
                .filter(|(t, s)| {
                    !s.buffer.is_empty()
                        && !s.awaiting_copy
                        && s.stopped.is_none()
                        && !due.contains(t)
                })
                .map(|(t, s)| (s.bytes, t.clone()))
                .collect();
            by_size.sort_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
            let mut left = total;
            for (bytes, table) in by_size {
                if left as u64 <= flush.memory_budget.bytes() / 2 {
                    break;
                }
                left -= bytes;
                due.push(table);
            }
        }
        for table in due {
            let first = self.tables.get(&table).and_then(|s| s.first_commit);
            if let Err(e) = self.flush_table(&table).await {
                self.table_failed(&table, first.unwrap_or_default(), e)
                    .await?;
            }
        }
        Ok(())
    }

    async fn flush_table(&mut self, table: &TableId) -> Result<()> {
        let Some(state) = self.tables.get_mut(table) else {
            return Ok(());
        };
        let entries = std::mem::take(&mut state.buffer);
        let lsn = state.last_commit;
        let first = state.first_commit;
        let rows = state.rows;
        let started = Instant::now();
        let Reduced {
            target,
            truncate,
            deletes,
            rows: rows_out,
        } = self.reduce(table, &entries).await?;
        self.prepare_for(table, &target).await?;
        let delta = TableDelta {
            table: table.clone(),
            schema: target.clone(),
            truncate,
            adds_only: false,
            deletes: deletes.into_iter().collect(),
            rows: rows_out.into_iter().collect(),
            lsn,
        };
        let (deleted, written) = (
            delta.deletes.iter().map(|b| b.num_rows()).sum::<usize>(),
            delta.rows.iter().map(|b| b.num_rows()).sum::<usize>(),
        );
        self.sink.commit(delta).await?;
        self.stats.commits += 1;
        self.observe_commit(table, written, deleted, started, first, lsn);
        if let Some(state) = self.tables.get_mut(table) {
            state.prepared = Some(target);
            state.checkpoint = lsn.or(state.checkpoint);
            state.rows = 0;
            state.bytes = 0;
            state.oldest = None;
            state.first_commit = None;
            state.last_commit = None;
        }
        tracing::info!(
            table = %table,
            changes = rows,
            rows = written,
            deletes = deleted,
            lsn = %lsn.unwrap_or_default(),
            ms = started.elapsed().as_millis() as u64,
            "committed"
        );
        // commit times of transactions every table has flushed are no longer needed
        if let Some(oldest) = self.tables.values().filter_map(|s| s.first_commit).min() {
            self.commit_times.retain(|lsn, _| *lsn >= oldest);
        } else if self.open.is_none() {
            self.commit_times.clear();
        }
        Ok(())
    }

    /// Sends the durable LSN: the received position when nothing waits, else just below the
    /// oldest transaction that is not in the lake yet. Never moves backwards.
    fn acknowledge(&mut self) {
        let pending = self
            .tables
            .values()
            .filter_map(|s| s.first_commit)
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
