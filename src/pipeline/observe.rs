//! What the pipeline tells the process's metrics (when `run` installed them): changes
//! received, commits and their freshness, failures, and on every tick each table's buffers,
//! checkpoint and state. Kept apart so the pipeline's own code only calls in.

use std::time::Instant;

use crate::config::TableErrorPolicy;
use crate::error::Error;
use crate::lsn::Lsn;
use crate::metrics::{self, TableStatus};
use crate::pipeline::Pipeline;
use crate::sink::Sink;
use crate::table::Op;
use crate::table::TableId;

/// A replication session started.
pub(super) fn stream_started() {
    if let Some(m) = metrics::installed() {
        m.stream_started();
    }
}

/// Changes of `table` received.
pub(super) fn changes(table: &TableId, ops: &[Op]) {
    if let Some(m) = metrics::installed() {
        m.changes(table, ops);
    }
}

/// A TRUNCATE of `table` received.
pub(super) fn truncate(table: &TableId) {
    if let Some(m) = metrics::installed() {
        m.truncate(table);
    }
}

/// A flush of `table` failed with `error`.
pub(super) fn commit_failed(table: &TableId, error: &Error) {
    if let Some(m) = metrics::installed() {
        m.commit_failed(table, error);
    }
}

impl<S: Sink> Pipeline<S> {
    /// A flush of `table` committed `rows` rows and `deletes` deletes, started at `started`,
    /// holding the transactions committed between `first` and `last`.
    pub(super) fn observe_commit(
        &self,
        table: &TableId,
        rows: usize,
        deletes: usize,
        started: Instant,
        first: Option<Lsn>,
        last: Option<Lsn>,
    ) {
        if let Some(m) = metrics::installed() {
            let times = metrics::commit_times_between(&self.commit_times, first, last);
            m.committed(table, rows, deletes, started.elapsed(), times);
        }
    }

    /// Each table's buffers, checkpoint and state, and the spilled bytes, now.
    pub(super) fn report_metrics(&self) {
        let Some(m) = metrics::installed() else {
            return;
        };
        m.beat();
        let suspends = self.config.sink.on_table_error == TableErrorPolicy::SuspendTable;
        for (table, state) in &self.tables {
            let status = match (&state.stopped, state.awaiting_copy) {
                (Some(_), _) if suspends => TableStatus::Suspended,
                (Some(_), _) => TableStatus::Stopped,
                (None, true) => TableStatus::Copying,
                (None, false) => TableStatus::Streaming,
            };
            m.set_state(table, status, state.stopped.as_deref());
            m.buffered(
                table,
                state.rows,
                state.bytes,
                state.oldest.map(|t| t.elapsed()),
                state.checkpoint,
                self.config.max_latency_of(table),
            );
        }
        let spilled = self
            .open
            .as_ref()
            .and_then(|o| o.spill.as_ref())
            .map_or(0, |s| s.bytes());
        m.spilled(spilled);
    }
}
