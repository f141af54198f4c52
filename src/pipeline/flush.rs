//! The pipeline's way out: flushing a table's buffered transactions (when due, or all on
//! shutdown) as one reduced commit through the sink, committing a spilled transaction bucket
//! by bucket, and what a failed table commit does under `on_table_error`.

use std::sync::Arc;
use std::time::Instant;

use super::{OpenTransaction, Pipeline, changelog, is_table_error, observe, reduce};
use crate::config::{TableErrorPolicy, TableMode};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::pipeline::reduce::Entry;
use crate::pipeline::spill::Spill;
use crate::sink::{Sink, TableDelta};
use crate::table::{TableId, TableSchema};

/// A table's part of a flush, reduced: the shape it is committed in, and what it holds.
pub(super) struct Reduced {
    target: Arc<TableSchema>,
    truncate: bool,
    deletes: Option<arrow::array::RecordBatch>,
    rows: Vec<arrow::array::RecordBatch>,
}

impl<S: Sink> Pipeline<S> {
    /// Commits a spilled transaction: per table, each bucket is reduced and written to files
    /// on its own, and one commit takes them all in.
    pub(super) async fn commit_spilled(
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
            if state.has_pending() {
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
    pub(super) async fn table_failed(
        &mut self,
        table: &TableId,
        first: Lsn,
        error: Error,
    ) -> Result<()> {
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

    pub(super) async fn commit_spilled_table(
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
            written += reduced.rows.iter().map(|b| b.num_rows()).sum::<usize>();
            deleted += reduced.deletes.as_ref().map_or(0, |b| b.num_rows());
            self.sink
                .stage(TableDelta {
                    table: table.clone(),
                    schema: reduced.target.clone(),
                    truncate: spill.truncates(table),
                    adds_only: spill.adds_only(table),
                    deletes: reduced.deletes.into_iter().collect(),
                    rows: reduced.rows,
                    lsn: None,
                    copy: None,
                })
                .await?;
            target = Some(reduced.target);
        }
        let target = match target {
            Some(target) => target,
            None => self.reduce(table, &[]).await?.target,
        };
        self.prepare_for(table, &target).await?;
        // the buffer, chunks included, was committed before: the copy stands where it was
        let copy = self
            .tables
            .get(table)
            .and_then(|s| s.copy.as_ref())
            .and_then(|c| c.committed_progress());
        self.sink
            .commit(TableDelta {
                table: table.clone(),
                schema: target.clone(),
                truncate: spill.truncates(table),
                adds_only: false,
                deletes: Vec::new(),
                rows: Vec::new(),
                lsn: Some(commit_lsn),
                copy,
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
    pub(super) async fn reduce(&mut self, table: &TableId, entries: &[Entry]) -> Result<Reduced> {
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
                    rows: rows.into_iter().collect(),
                })
            }
        }
    }

    /// Prepares the sink for `table` in `target` when it was last prepared in another shape.
    pub(super) async fn prepare_for(
        &mut self,
        table: &TableId,
        target: &Arc<TableSchema>,
    ) -> Result<()> {
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

    pub(super) async fn flush_due(&mut self, all: bool) -> Result<()> {
        let flush = &self.config.flush;
        let config = &self.config;
        let mut due: Vec<TableId> = self
            .tables
            .iter()
            .filter(|(_, s)| s.has_pending() && !s.awaiting_copy && s.stopped.is_none())
            .filter(|(t, s)| {
                all || s.rows >= flush.max_rows
                    // a chunked copy's last chunk: its commit completes the copy
                    || s.copy.as_ref().is_some_and(|c| c.done())
                    || s.bytes as u64 >= flush.max_bytes.bytes()
                    || s.oldest
                        .is_some_and(|oldest| oldest.elapsed() >= config.max_latency_of(t))
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

    pub(super) async fn flush_table(&mut self, table: &TableId) -> Result<()> {
        let Some(state) = self.tables.get_mut(table) else {
            return Ok(());
        };
        let entries = std::mem::take(&mut state.buffer);
        let copy = state.copy.as_ref().and_then(|c| c.committed_progress());
        let carries_copy = copy.is_some();
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
            copy,
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
            if let Some(copy) = state.copy.as_mut().filter(|_| carries_copy) {
                copy.committed();
            }
        }
        self.copy_committed(table);
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
}
