//! What `run` lets the slot confirm: the pipeline's durable position, never past the slot
//! record's (see `membership`), which is written ahead first. The record also carries the
//! tables `on_table_error` stopped, for `status`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::Config;
use crate::error::Result;
use crate::lsn::Lsn;
use crate::pipeline::TableState;
use crate::pipeline::membership::{Record, RecordStore};
use crate::table::TableId;

/// How often, at most, the slot record is written for the acknowledgements alone.
const RECORD_INTERVAL: Duration = Duration::from_secs(10);

/// Passes the pipeline's durable position on to the stream (which reports it to the slot),
/// never past the slot record's position: the record is written ahead first, at most every
/// `max_latency` (10 s at most) for acknowledgements alone, so the slot is never found past it
/// unless someone else moved it.
pub(super) struct Acknowledger {
    store: RecordStore,
    record: Record,
    written: Instant,
    interval: Duration,
    stream: watch::Sender<Lsn>,
    /// When a write of the record last failed and was logged.
    failed: Option<Instant>,
}

impl Acknowledger {
    pub(super) fn new(store: RecordStore, record: Record, config: &Config, start: Lsn) -> Self {
        let allowed = start.min(record.acknowledged());
        Acknowledger {
            store,
            record,
            written: Instant::now(),
            interval: config.flush.max_latency.get().min(RECORD_INTERVAL),
            stream: watch::channel(allowed).0,
            failed: None,
        }
    }

    /// What the stream reports to the slot.
    pub(super) fn stream_position(&self) -> watch::Receiver<Lsn> {
        self.stream.subscribe()
    }

    /// `durable`, or less: as far as the record lets the slot go.
    pub(super) fn allowed(&self, durable: Lsn) -> Lsn {
        durable.min(self.record.acknowledged())
    }

    /// Lets the stream acknowledge `durable`, writing the record ahead when it is behind and
    /// due (or `now`). A write that fails holds the acknowledgement (the slot keeps its WAL)
    /// and is tried again at the next call; with `now` it is an error.
    pub(super) async fn pass(&mut self, durable: Lsn, now: bool) -> Result<()> {
        if durable > self.record.acknowledged() && (now || self.written.elapsed() >= self.interval)
        {
            let mut next = self.record.clone();
            next.acknowledged = durable.to_string();
            self.save(next, now).await?;
        }
        let allowed = self.allowed(durable);
        self.stream.send_if_modified(|current| {
            if allowed > *current {
                *current = allowed;
                true
            } else {
                false
            }
        });
        Ok(())
    }

    /// Records `table`'s membership (a table copied while streaming), or forgets it (`None`:
    /// the table left), at once.
    pub(super) async fn member(
        &mut self,
        table: &TableId,
        membership: Option<String>,
    ) -> Result<()> {
        let mut next = self.record.clone();
        match membership {
            Some(membership) => next.tables.insert(table.to_string(), membership),
            None => next.tables.remove(&table.to_string()),
        };
        self.save(next, true).await
    }

    /// Records the tables stopped by `on_table_error` (for `status`) when they changed. A
    /// failed write is tried again at the next call.
    pub(super) async fn stopped(&mut self, stopped: BTreeMap<String, String>) {
        if stopped != self.record.stopped {
            let mut next = self.record.clone();
            next.stopped = stopped;
            // not `must`: a failure is logged, and the next tick tries again
            let _ = self.save(next, false).await;
        }
    }

    pub(super) fn membership(&self, table: &TableId) -> Option<&str> {
        self.record
            .tables
            .get(&table.to_string())
            .map(String::as_str)
    }

    async fn save(&mut self, next: Record, must: bool) -> Result<()> {
        match self.store.write(&next).await {
            Ok(()) => {
                self.record = next;
                self.written = Instant::now();
                self.failed = None;
                Ok(())
            }
            Err(e) if !must => {
                if self
                    .failed
                    .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
                {
                    tracing::warn!(
                        record = %self.store.describe(),
                        error = %e,
                        "the slot record could not be written: the slot keeps its WAL until it can"
                    );
                    self.failed = Some(Instant::now());
                }
                self.written = Instant::now();
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// The stopped tables among `tables`, with the errors that stopped them.
pub(super) fn stopped_tables<'a>(
    tables: impl Iterator<Item = (&'a TableId, &'a TableState)>,
) -> BTreeMap<String, String> {
    tables
        .filter_map(|(t, s)| s.stopped.as_ref().map(|why| (t.to_string(), why.clone())))
        .collect()
}
