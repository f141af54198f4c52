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

pub mod changelog;
pub mod reduce;
pub mod service;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use crate::config::{Config, TableMode};
use crate::error::Result;
use crate::lsn::Lsn;
use crate::pipeline::reduce::Entry;
use crate::sink::{Sink, TableDelta, TableLayout};
use crate::source::changes::TableSchema;
use crate::source::stream::SourceEvent;
use crate::table::TableId;

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
}

impl TableState {
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
        }
    }
}

/// The source transaction being received.
#[derive(Debug)]
struct OpenTransaction {
    commit_lsn: Lsn,
    entries: Vec<(TableId, Entry)>,
    schemas: Vec<Arc<TableSchema>>,
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
            SourceEvent::Started { .. } => {
                // a new session resends whatever had not committed
                self.open = None;
            }
            SourceEvent::Begin {
                commit_lsn,
                commit_time_micros,
            } => {
                self.commit_times.insert(commit_lsn, commit_time_micros);
                self.open = Some(OpenTransaction {
                    commit_lsn,
                    entries: Vec::new(),
                    schemas: Vec::new(),
                });
            }
            SourceEvent::Schema { schema, .. } => {
                if let Some(open) = &mut self.open {
                    open.schemas.push(schema);
                } else {
                    self.apply_schema(schema).await?;
                }
            }
            SourceEvent::Changes(batch) => {
                self.stats.changes += batch.len() as u64;
                let table = batch.schema.table.clone();
                if let Some(open) = &mut self.open {
                    open.entries.push((table, Entry::Changes(batch)));
                }
            }
            SourceEvent::Truncate { tables, .. } => {
                if let Some(open) = &mut self.open {
                    for table in tables {
                        open.entries.push((table, Entry::Truncate));
                    }
                }
            }
            SourceEvent::Commit {
                commit_lsn,
                end_lsn,
                ..
            } => {
                self.stats.transactions += 1;
                if let Some(open) = self.open.take() {
                    self.commit_transaction(open, commit_lsn).await?;
                }
                self.received = self.received.max(end_lsn);
                self.flush_due(false).await?;
                self.acknowledge();
            }
            SourceEvent::Idle { server_lsn } => {
                if self.open.is_none() {
                    self.received = self.received.max(server_lsn);
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
        Ok(())
    }

    /// Flushes every buffered table (on shutdown) and acknowledges.
    pub async fn flush_all(&mut self) -> Result<()> {
        self.flush_due(true).await?;
        self.acknowledge();
        Ok(())
    }

    async fn apply_schema(&mut self, schema: Arc<TableSchema>) -> Result<()> {
        let table = schema.table.clone();
        match self.tables.get_mut(&table) {
            Some(state) => state.schema = schema,
            None => {
                // a table that appeared in the publication while streaming: it starts empty in
                // the lake and takes every change from here on
                let settings = self.config.source.tables.get(&table.to_string());
                let mode = settings.map(|s| s.mode).unwrap_or_default();
                let key = match (mode, settings.and_then(|s| s.key.clone())) {
                    (TableMode::Changelog, _) => Vec::new(),
                    (_, Some(key)) => key,
                    (_, None) => schema
                        .columns
                        .iter()
                        .filter(|c| c.key)
                        .map(|c| c.name.clone())
                        .collect(),
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
                state.prepared = None;
                state.awaiting_copy = true;
                self.discovered.push(table.clone());
                self.tables.insert(table, state);
            }
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
            .filter(|(_, s)| !s.buffer.is_empty() && !s.awaiting_copy)
            .filter(|(_, s)| {
                all || s.rows >= flush.max_rows
                    || s.bytes as u64 >= flush.max_bytes.bytes()
                    || s.oldest
                        .is_some_and(|t| t.elapsed() >= flush.max_latency.get())
            })
            .map(|(t, _)| t.clone())
            .collect();
        // over the memory budget: the largest tables go first until half of it is free
        let total: usize = self.tables.values().map(|s| s.bytes).sum();
        if total as u64 > flush.memory_budget.bytes() {
            let mut by_size: Vec<(usize, TableId)> = self
                .tables
                .iter()
                .filter(|(t, s)| !s.buffer.is_empty() && !s.awaiting_copy && !due.contains(t))
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
            self.flush_table(&table).await?;
        }
        Ok(())
    }

    async fn flush_table(&mut self, table: &TableId) -> Result<()> {
        let Some(state) = self.tables.get_mut(table) else {
            return Ok(());
        };
        let entries = std::mem::take(&mut state.buffer);
        let lsn = state.last_commit;
        let rows = state.rows;
        let started = Instant::now();
        let schema = state.schema.clone();
        let (target, truncate, deletes, rows_out) = match state.mode {
            TableMode::Upsert => {
                let plan = reduce::plan(schema.clone(), &state.layout.key, &entries)?;
                let lake = match plan.lookup_keys()? {
                    Some(keys) => self.sink.lookup(table, &keys).await?,
                    None => Vec::new(),
                };
                let reduced = plan.materialize(&lake)?;
                (schema, reduced.truncate, reduced.deletes, reduced.rows)
            }
            TableMode::Changelog => {
                let target = Arc::new(changelog::schema(&schema));
                let rows = changelog::rows(&schema, &target, &entries, &self.commit_times)?;
                (target, false, None, rows)
            }
        };
        let Some(state) = self.tables.get_mut(table) else {
            return Ok(());
        };
        let needs_prepare = state
            .prepared
            .as_ref()
            .is_none_or(|p| !p.same_shape(&target));
        if needs_prepare {
            let layout = state.layout.clone();
            self.sink.prepare(table, &target, &layout).await?;
        }
        let delta = TableDelta {
            table: table.clone(),
            schema: target.clone(),
            truncate,
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
            .chain(self.open.as_ref().map(|o| o.commit_lsn))
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
