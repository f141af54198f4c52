//! `lakewriter run`: prepares the source (publication, slot) and the lake tables, copies the
//! tables that need an initial snapshot, then streams until shutdown — on which it commits
//! every whole transaction received, acknowledges the durable position and returns.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::config::{Config, TableErrorPolicy, TableMode};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::pipeline::membership::{self, Record, RecordStore};
use crate::pipeline::{Pipeline, TableState, changelog, is_table_error};
use crate::progress::Progress;
use crate::sink::{Sink, TableDelta, TableLayout};
use crate::source::setup::{self, Readiness};
use crate::source::snapshot::{self, CopySettings, SnapshotRows, SnapshotSession};
use crate::source::stream::{self, StreamSettings};
use crate::source::types::TypeOptions;
use crate::source::{connection, schema};
use crate::table::{TableId, TableSchema, quote_literal};

/// Runs the service until `shutdown` turns true.
pub async fn run<S: Sink>(
    config: Arc<Config>,
    mut sink: S,
    shutdown: watch::Receiver<bool>,
) -> Result<Pipeline<S>> {
    // the session beside the stream: catalog reads now, copies of tables that join while
    // streaming, and the last acknowledgement; it reopens itself after a server restart
    let mut control = connection::Session::open(&config.source, connection::CONTROL).await?;
    let client = control.client().await?;
    setup::ensure_publication(client, &config).await?;
    let slot = setup::slot_state(client, &config).await?;
    let type_options = TypeOptions::default();

    let published = schema::publication_tables(client, &config.source.publication).await?;
    let tables: Vec<TableId> = schema::selected_tables(client, &config)
        .await?
        .into_iter()
        .filter(|t| published.contains(t))
        .collect();
    crate::sink::refuse_shared_lake_names(&config.sink.namespace, &tables)?;
    if tables.is_empty() {
        return Err(Error::Source {
            message: format!(
                "no table to replicate: none of the tables [source] include selects is in \
                 publication {} (lakewriter doctor says more)",
                config.source.publication
            ),
        });
    }

    // What the last run streamed, and where it let the slot go (see `membership`).
    let records = RecordStore::new(&config).await?;
    let record = records.read().await?;
    tracing::debug!(record = %records.describe(), found = record.is_some(), "slot record");
    let members = membership::memberships(client, &config.source.publication).await?;
    let slot_at = slot_position(client, &config).await?;

    // Each table: its shape, layout and lake checkpoint.
    let mut states: HashMap<TableId, TableState> = HashMap::new();
    let mut targets: HashMap<TableId, Arc<TableSchema>> = HashMap::new();
    // suspended by `on_table_error`: copied again at the next start, not while running
    let mut suspended: HashSet<TableId> = HashSet::new();
    for table in &tables {
        let Some(described) = schema::describe_table(client, table).await? else {
            continue;
        };
        let shape = snapshot::table_schema(client, &described, &type_options).await?;
        let settings = config.source.tables.get(&table.to_string());
        let mode = settings.map(|s| s.mode).unwrap_or_default();
        let key = match mode {
            TableMode::Changelog => Vec::new(),
            TableMode::Upsert => described.key_columns(&config),
        };
        // a key outside the replica identity: an update that changes it, or a delete, would
        // not say which row it replaces, and the old row would stay beside the new one
        if mode == TableMode::Upsert {
            let logged = described.logged_old_columns();
            let unlogged: Vec<&String> = key.iter().filter(|k| !logged.contains(k)).collect();
            if !unlogged.is_empty() {
                return Err(Error::Source {
                    message: format!(
                        "table {table}: key column(s) {} (from [source.tables.\"{table}\"] key) \
                         are outside the table's replica identity, so updates of the key and \
                         deletes would leave the old rows in the lake; run `ALTER TABLE {} \
                         REPLICA IDENTITY FULL;` or key the table on its primary key",
                        unlogged
                            .iter()
                            .map(|c| c.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        table.quoted()
                    ),
                });
            }
        }
        if mode == TableMode::Upsert && key.is_empty() {
            return Err(Error::Source {
                message: format!(
                    "table {table} has no primary key or replica identity index to upsert on: add \
                     one, name key columns in [source.tables.\"{table}\"] key, or set mode = \
                     \"changelog\" (lakewriter doctor shows the SQL)"
                ),
            });
        }
        let layout = TableLayout {
            key,
            partition_by: config
                .sink
                .tables
                .get(&table.to_string())
                .map(|t| t.partition_by.clone())
                .unwrap_or_default(),
        };
        // a delete goes to the old row's partition: the old row must carry the partition
        // columns (DESIGN.md invariant 6)
        if mode == TableMode::Upsert {
            let logged = described.logged_old_columns();
            for expression in &layout.partition_by {
                let column = schema::partition_source_column(expression);
                if !logged.iter().any(|c| c == column) {
                    return Err(Error::Source {
                        message: format!(
                            "table {table}: [sink.tables.\"{table}\"] partitions on {column}, which \
                             is outside the table's replica identity, so a delete could not reach \
                             the old row's partition; run `ALTER TABLE {} REPLICA IDENTITY FULL;` \
                             or partition on key columns",
                            table.quoted()
                        ),
                    });
                }
            }
        }
        let target = match mode {
            TableMode::Upsert => shape.clone(),
            TableMode::Changelog => Arc::new(changelog::schema(&shape)),
        };
        let checkpoint = match sink.prepare(table, &target, &layout).await {
            Ok(checkpoint) => checkpoint,
            Err(e) if is_table_error(&e) => match config.sink.on_table_error {
                TableErrorPolicy::StopAll => return Err(e),
                TableErrorPolicy::StopTable => {
                    // a table that could not even be read (a log its format's reader refuses)
                    // holds the slot where it is: the lake has every change before it
                    let checkpoint = match sink.known_checkpoint(table) {
                        Some(checkpoint) => checkpoint,
                        None => slot_position(client, &config).await?,
                    };
                    tracing::error!(
                        table = %table,
                        checkpoint = %checkpoint,
                        error = %e,
                        "the table stays stopped at its last commit; the other tables go on, \
                         and the slot keeps its WAL until a restart after the fix"
                    );
                    states.insert(
                        table.clone(),
                        TableState::stopped(shape, layout, mode, checkpoint, e.to_string()),
                    );
                    continue;
                }
                TableErrorPolicy::SuspendTable => {
                    tracing::error!(
                        table = %table,
                        error = %e,
                        "the table is suspended: its WAL is released and the next start copies \
                         it again"
                    );
                    sink.mark_incomplete(table).await?;
                    suspended.insert(table.clone());
                    if let Some(m) = crate::metrics::installed() {
                        m.set_state(table, crate::metrics::TableStatus::Suspended, None);
                    }
                    continue;
                }
            },
            Err(e) => return Err(e),
        };
        tracing::info!(table = %table, checkpoint = ?checkpoint.map(|c| c.to_string()), "table ready");
        targets.insert(table.clone(), target);
        let mut state = TableState::new(shape, layout, mode, checkpoint);
        // a changelog table only appends, but resolves and is folded by its key
        state.row_key = described.key_columns(&config);
        states.insert(table.clone(), state);
    }

    // A slot lost (dropped, or not carried over by a failover) with tables already in the
    // lake: the changes since their checkpoints are gone. Copying again is the way back;
    // starting them empty, as initial_snapshot = false would, would throw the lake away.
    if slot == Readiness::Missing && !config.source.initial_snapshot {
        let mut held: Vec<String> = states
            .iter()
            .filter(|(_, s)| s.checkpoint.is_some())
            .map(|(t, _)| t.to_string())
            .collect();
        if !held.is_empty() {
            held.sort();
            return Err(Error::Source {
                message: format!(
                    "slot {} does not exist, but the lake holds {} up to a checkpoint: the \
                     changes since are gone, and with initial_snapshot = false the tables \
                     would start empty. Set [source] initial_snapshot = true to copy them \
                     again (or drop the lake tables to start them empty)",
                    config.source.slot,
                    held.join(", ")
                ),
            });
        }
    }

    // A table whose stream broke while lakewriter was not looking (it left the publication or
    // the include list and came back, it was created again, the slot was recreated or
    // advanced by hand) holds a checkpoint the stream cannot continue: copy it again.
    if let Some(record) = &record
        && slot != Readiness::Missing
    {
        let moved = (slot_at > record.acknowledged()).then(|| {
            format!(
                "slot {} is at {slot_at}, past the {} lakewriter last let it reach: it was                  created again or advanced outside lakewriter, and the changes before are not                  in it",
                config.source.slot,
                record.acknowledged()
            )
        });
        let mut broken: Vec<(TableId, String)> = states
            .iter()
            .filter(|(_, s)| s.checkpoint.is_some() && s.stopped.is_none())
            .filter_map(|(table, _)| {
                moved
                    .clone()
                    .or_else(|| {
                        membership::broken(record, table, members.get(table).map(String::as_str))
                    })
                    .map(|why| (table.clone(), why))
            })
            .collect();
        broken.sort();
        if !broken.is_empty() && !config.source.initial_snapshot {
            return Err(Error::Source {
                message: format!(
                    "the lake's {} cannot continue from its checkpoint ({}); with                      initial_snapshot = false it would start empty. Set [source]                      initial_snapshot = true to copy it again (or drop the lake table to start                      it empty)",
                    broken[0].0, broken[0].1
                ),
            });
        }
        for (table, why) in broken {
            tracing::warn!(table = %table, why = %why, "copying the table again");
            if let Some(state) = states.get_mut(&table) {
                state.checkpoint = None;
            }
        }
    }

    // Tables without a checkpoint need a copy; a new slot means every table does (changes
    // between their checkpoint and the new slot are gone).
    let needs_copy: Vec<TableId> = match slot {
        Readiness::Missing => states
            .iter()
            .filter(|(_, s)| s.stopped.is_none())
            .map(|(t, _)| t.clone())
            .collect(),
        _ => states
            .iter()
            .filter(|(_, s)| s.checkpoint.is_none())
            .map(|(t, _)| t.clone())
            .collect(),
    };
    if !needs_copy.is_empty() || slot == Readiness::Missing {
        let mut pending = needs_copy.clone();
        pending.sort();
        let progress = Progress::new(config.metrics.progress_interval.get());
        // the first session creates the slot when it is missing; a copy interrupted by the
        // server (a restart, a terminated session) goes on in a new temporary slot's snapshot
        let mut create_slot = slot == Readiness::Missing;
        let mut attempt = 0u32;
        loop {
            let temporary = !create_slot;
            let slot_name = if temporary {
                format!("{}_snapshot", config.source.slot)
            } else {
                config.source.slot.clone()
            };
            let session = SnapshotSession::create_slot(&config, &slot_name, temporary).await?;
            create_slot = false;
            let copied = copy_tables(
                &config,
                &mut control,
                &mut sink,
                &session,
                &mut pending,
                &mut states,
                &targets,
                &progress,
            )
            .await;
            session.close();
            match copied {
                Ok(()) => break,
                Err(e) if (e.is_retryable() || snapshot_lost(&e)) && attempt < COPY_ATTEMPTS => {
                    attempt += 1;
                    let pause = Duration::from_millis(500 * (1 << attempt.min(6)));
                    tracing::warn!(
                        error = %e,
                        tables = pending.len(),
                        retry_in = ?pause,
                        "the initial copy was interrupted; copying the remaining tables in a \
                         new snapshot"
                    );
                    tokio::time::sleep(pause).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    // Stream from the lowest checkpoint; each table skips what it already holds.
    let start = states
        .values()
        .filter_map(|s| s.checkpoint)
        .min()
        .unwrap_or(Lsn::ZERO);
    // The record first: the slot is let go only up to the position it names.
    let mut acknowledger = {
        let previous = record
            .as_ref()
            .map(|r| r.acknowledged())
            .unwrap_or(Lsn::ZERO);
        let allowed = previous
            .max(slot_position(control.client().await?, &config).await?)
            .max(start);
        let record = Record {
            slot: config.source.slot.clone(),
            acknowledged: allowed.to_string(),
            tables: states
                .keys()
                .filter_map(|t| members.get(t).map(|m| (t.to_string(), m.clone())))
                .collect(),
            stopped: stopped_tables(states.iter()),
        };
        records.write(&record).await?;
        Acknowledger::new(records, record, &config, start)
    };
    let (events_tx, mut events) = mpsc::channel(64);
    let (durable_tx, mut durable) = watch::channel(start);
    let durable_rx = acknowledger.stream_position();
    let stream_config = config.clone();
    let settings = StreamSettings {
        start,
        type_options,
        ..StreamSettings::default()
    };
    // The stream stops after the pipeline's last commit, so that it can report that position
    // to the slot itself before it closes.
    let (stop_stream, stream_shutdown) = watch::channel(false);
    let streaming = tokio::spawn(async move {
        stream::stream(
            &stream_config,
            settings,
            events_tx,
            durable_rx,
            stream_shutdown,
        )
        .await
    });
    let mut pipeline = Pipeline::new(config.clone(), sink, states, durable_tx.clone());
    let tick = (config.flush.max_latency.get() / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(tick);
    let mut membership_check = tokio::time::interval(
        config
            .flush
            .max_latency
            .get()
            .clamp(Duration::from_secs(1), MEMBERSHIP_INTERVAL),
    );
    let mut shutdown = shutdown;
    // Events flow until shutdown (then every whole transaction received is committed before
    // the stream stops) or until the stream ends on its own.
    let outcome: Result<bool> = async {
        if *shutdown.borrow() {
            return Ok(true);
        }
        loop {
            tokio::select! {
                changed = shutdown.changed() => {
                    // a dropped sender stops too: nobody is left to ask
                    if changed.is_err() || *shutdown.borrow() {
                        return Ok(true);
                    }
                }
                event = events.recv() => match event {
                    Some(event) => {
                        pipeline.handle(event).await?;
                        copy_joined(&config, &mut control, &mut pipeline, &mut acknowledger)
                            .await?;
                    }
                    None => return Ok(false),
                },
                _ = durable.changed() => {
                    let position = *durable.borrow();
                    acknowledger.pass(position, false).await?;
                }
                _ = ticker.tick() => {
                    pipeline.tick().await?;
                    let position = *durable.borrow();
                    acknowledger.pass(position, false).await?;
                    acknowledger.stopped(stopped_tables(pipeline.tables().iter())).await;
                }
                _ = membership_check.tick() => {
                    check_membership(
                        &config,
                        &mut control,
                        &mut pipeline,
                        &mut acknowledger,
                        &suspended,
                    )
                    .await?;
                }
            }
        }
    }
    .await;
    let flushed = match outcome {
        Ok(true) => pipeline.flush_all().await,
        _ => Ok(()),
    };
    // the stream reports the last position to the slot as it stops: let it through first
    let position = *durable_tx.borrow();
    let passed = acknowledger.pass(position, true).await;
    // Told to stop in every case: after a pipeline error too, since nothing reads its events
    // any more and an idle stream would otherwise wait for the next one forever. What it had
    // received beyond the durable position is not acknowledged (the slot keeps it).
    let _ = stop_stream.send(true);
    drop(events);
    let streamed = match streaming.await {
        Ok(result) => result,
        Err(e) => Err(Error::Source {
            message: format!("the replication task failed: {e}"),
        }),
    };
    let shut_down = outcome?;
    streamed?;
    flushed?;
    passed?;
    if !shut_down {
        // the stream ended without being asked: commit what it delivered
        pipeline.flush_all().await?;
        let position = *durable_tx.borrow();
        acknowledger.pass(position, true).await?;
    }
    let durable = acknowledger.allowed(*durable_tx.borrow());
    advance_slot(&mut control, &config, durable).await?;
    let stats = pipeline.stats();
    tracing::info!(
        durable = %durable,
        transactions = stats.transactions,
        changes = stats.changes,
        commits = stats.commits,
        skipped = stats.skipped,
        "stopped"
    );
    Ok(pipeline)
}

/// How often, at most, the publication's membership is compared with what streams.
const MEMBERSHIP_INTERVAL: Duration = Duration::from_secs(10);

/// How often, at most, the slot record is written for the acknowledgements alone.
const RECORD_INTERVAL: Duration = Duration::from_secs(10);

/// Passes the pipeline's durable position on to the stream (which reports it to the slot),
/// never past the slot record's position: the record is written ahead first, at most every
/// `max_latency` (10 s at most) for acknowledgements alone, so the slot is never found past it
/// unless someone else moved it.
struct Acknowledger {
    store: RecordStore,
    record: Record,
    written: Instant,
    interval: Duration,
    stream: watch::Sender<Lsn>,
    /// When a write of the record last failed and was logged.
    failed: Option<Instant>,
}

impl Acknowledger {
    fn new(store: RecordStore, record: Record, config: &Config, start: Lsn) -> Self {
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
    fn stream_position(&self) -> watch::Receiver<Lsn> {
        self.stream.subscribe()
    }

    /// `durable`, or less: as far as the record lets the slot go.
    fn allowed(&self, durable: Lsn) -> Lsn {
        durable.min(self.record.acknowledged())
    }

    /// Lets the stream acknowledge `durable`, writing the record ahead when it is behind and
    /// due (or `now`). A write that fails holds the acknowledgement (the slot keeps its WAL)
    /// and is tried again at the next call; with `now` it is an error.
    async fn pass(&mut self, durable: Lsn, now: bool) -> Result<()> {
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
    async fn member(&mut self, table: &TableId, membership: Option<String>) -> Result<()> {
        let mut next = self.record.clone();
        match membership {
            Some(membership) => next.tables.insert(table.to_string(), membership),
            None => next.tables.remove(&table.to_string()),
        };
        self.save(next, true).await
    }

    /// Records the tables stopped by `on_table_error` (for `status`) when they changed. A
    /// failed write is tried again at the next call.
    async fn stopped(&mut self, stopped: BTreeMap<String, String>) {
        if stopped != self.record.stopped {
            let mut next = self.record.clone();
            next.stopped = stopped;
            // not `must`: a failure is logged, and the next tick tries again
            let _ = self.save(next, false).await;
        }
    }

    fn membership(&self, table: &TableId) -> Option<&str> {
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
fn stopped_tables<'a>(
    tables: impl Iterator<Item = (&'a TableId, &'a TableState)>,
) -> BTreeMap<String, String> {
    tables
        .filter_map(|(t, s)| s.stopped.as_ref().map(|why| (t.to_string(), why.clone())))
        .collect()
}

/// Copies the tables that joined the stream, and records their membership.
async fn copy_joined<S: Sink>(
    config: &Config,
    control: &mut connection::Session,
    pipeline: &mut Pipeline<S>,
    acknowledger: &mut Acknowledger,
) -> Result<()> {
    for table in pipeline.take_discovered() {
        if let Some(membership) = copy_discovered(config, control, pipeline, &table).await? {
            acknowledger.member(&table, Some(membership)).await?;
        }
    }
    Ok(())
}

/// Compares the publication's membership with what streams. A table that left (or was
/// dropped) is taken off the record — the stream, which may lag, still brings what it changed
/// before — so that if it comes back it is copied again; so is one whose membership changed
/// between two checks (it left and rejoined, or was created again). A table that joined
/// without a change yet is copied now. A check the server interrupts is skipped: the next
/// one sees the same.
async fn check_membership<S: Sink>(
    config: &Config,
    control: &mut connection::Session,
    pipeline: &mut Pipeline<S>,
    acknowledger: &mut Acknowledger,
    suspended: &HashSet<TableId>,
) -> Result<()> {
    // a session the server ended is reopened here only briefly: a long outage is the
    // stream's to wait out, and the check comes again
    let read = match tokio::time::timeout(Duration::from_secs(5), control.client()).await {
        Ok(Ok(client)) => membership::memberships(client, &config.source.publication).await,
        Ok(Err(e)) => Err(e),
        Err(_) => return Ok(()),
    };
    let now: HashMap<TableId, String> = match read {
        Ok(now) => now
            .into_iter()
            .filter(|(t, _)| config.includes_table(&t.schema, &t.name))
            .collect(),
        Err(e) if e.is_retryable() => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut left = Vec::new();
    let mut broken = Vec::new();
    for (table, state) in pipeline.tables() {
        if state.awaiting_copy || state.stopped.is_some() {
            continue;
        }
        match (acknowledger.membership(table), now.get(table)) {
            (Some(_), None) => left.push(table.clone()),
            (None, Some(current)) => broken.push((table.clone(), "none".into(), current.clone())),
            (Some(before), Some(current)) if before != current => {
                broken.push((table.clone(), before.to_string(), current.clone()));
            }
            _ => {}
        }
    }
    for table in left {
        tracing::warn!(
            table = %table,
            publication = %config.source.publication,
            "the table left the publication (or was dropped): the lake keeps it as of its last              change, and copies it again if it comes back"
        );
        acknowledger.member(&table, None).await?;
    }
    for (table, before, current) in broken {
        tracing::warn!(
            table = %table,
            before = %before,
            now = %current,
            "the table rejoined the publication (or was created again): its changes while it              was out were not streamed, so it is copied again"
        );
        pipeline.recopy(&table);
    }
    let mut joined: Vec<TableId> = now
        .keys()
        .filter(|t| !pipeline.tables().contains_key(*t) && !suspended.contains(*t))
        .cloned()
        .collect();
    joined.sort();
    for table in joined {
        let client = control.client().await?;
        let Some(described) = schema::describe_table(client, &table).await? else {
            continue;
        };
        let shape = snapshot::table_schema(client, &described, &TypeOptions::default()).await?;
        pipeline.join(shape);
    }
    copy_joined(config, control, pipeline, acknowledger).await
}

/// Whether `error` says the exported snapshot is gone (its exporting session ended, by a
/// restart or a `pg_terminate_backend`, before a copy session imported it): a new snapshot
/// serves as well.
fn snapshot_lost(error: &Error) -> bool {
    matches!(
        error,
        Error::Postgres { context, source }
            if context.starts_with("import snapshot")
                && source.code().is_some_and(|c| c.code() == "22023")
    )
}

/// How often an initial copy interrupted by the server is taken up again.
const COPY_ATTEMPTS: u32 = 8;

/// Copies the `pending` tables in `session`'s snapshot (or, with `initial_snapshot = false`,
/// starts them empty at its position), each committed with the snapshot's checkpoint and
/// taken off `pending` once in the lake.
#[allow(clippy::too_many_arguments)]
async fn copy_tables<S: Sink>(
    config: &Config,
    control: &mut connection::Session,
    sink: &mut S,
    session: &SnapshotSession,
    pending: &mut Vec<TableId>,
    states: &mut HashMap<TableId, TableState>,
    targets: &HashMap<TableId, Arc<TableSchema>>,
    progress: &Progress,
) -> Result<()> {
    let lsn = session.snapshot.checkpoint();
    while let Some(table) = pending.first().cloned() {
        if let (Some(state), Some(target)) = (states.get_mut(&table), targets.get(&table)) {
            if config.source.initial_snapshot {
                copy_into_lake(
                    config,
                    control.client().await?,
                    sink,
                    session,
                    state,
                    target.clone(),
                    progress,
                )
                .await?;
            } else {
                // no copy wanted: the table starts from the snapshot's position, empty
                sink.commit(TableDelta {
                    table: table.clone(),
                    schema: target.clone(),
                    truncate: true,
                    adds_only: false,
                    deletes: Vec::new(),
                    rows: Vec::new(),
                    lsn: Some(lsn),
                })
                .await?;
            }
            state.checkpoint = Some(lsn);
        }
        pending.remove(0);
    }
    Ok(())
}

/// Copies a table that appeared while streaming, in a snapshot of a temporary slot taken now:
/// the copy holds everything up to that slot's consistent point, and the stream's changes of
/// the table up to there are skipped. The stream waits meanwhile (back-pressure). A copy the
/// server interrupted (a restart, a failover, a terminated session) is taken up again in a
/// new snapshot: the table's changes stay buffered until one copy is in the lake.
async fn copy_discovered<S: Sink>(
    config: &Config,
    control: &mut connection::Session,
    pipeline: &mut Pipeline<S>,
    table: &TableId,
) -> Result<Option<String>> {
    let mut attempt = 0u32;
    loop {
        let copied = match control.client().await {
            Ok(client) => copy_discovered_once(config, client, pipeline, table).await,
            Err(e) => Err(e),
        };
        match copied {
            Ok(membership) => return Ok(membership),
            Err(e) if (e.is_retryable() || snapshot_lost(&e)) && attempt < COPY_ATTEMPTS => {
                attempt += 1;
                // at least a second: the temporary slot of the interrupted copy goes with its
                // session, which the server ends a moment after the client closed it
                let pause = Duration::from_millis(500 * (1 << attempt.min(6)));
                tracing::warn!(
                    table = %table,
                    error = %e,
                    retry_in = ?pause,
                    "the copy of a table that joined while streaming was interrupted; copying \
                     it again in a new snapshot"
                );
                tokio::time::sleep(pause).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One attempt of [`copy_discovered`]: the table's membership, read before the copy's
/// snapshot (a change after it shows at the next check), once it is in the lake.
async fn copy_discovered_once<S: Sink>(
    config: &Config,
    client: &tokio_postgres::Client,
    pipeline: &mut Pipeline<S>,
    table: &TableId,
) -> Result<Option<String>> {
    let Some(described) = schema::describe_table(client, table).await? else {
        return Ok(None);
    };
    let membership = membership::memberships(client, &config.source.publication)
        .await?
        .remove(table);
    let shape = snapshot::table_schema(client, &described, &TypeOptions::default()).await?;
    let Some(state) = pipeline.tables.get_mut(table) else {
        return Ok(None);
    };
    if state.mode == TableMode::Upsert {
        state.layout.key = described.key_columns(config);
    }
    let target = match state.mode {
        TableMode::Upsert => shape.clone(),
        TableMode::Changelog => Arc::new(changelog::schema(&shape)),
    };
    let layout = state.layout.clone();
    let mut state = TableState::new(shape.clone(), layout.clone(), state.mode, None);
    state.row_key = described.key_columns(config);
    pipeline.sink_mut().prepare(table, &target, &layout).await?;
    let session =
        SnapshotSession::create_slot(config, &format!("{}_snapshot", config.source.slot), true)
            .await?;
    let lsn = session.snapshot.checkpoint();
    let progress = Progress::new(config.metrics.progress_interval.get());
    let copied = copy_into_lake(
        config,
        client,
        pipeline.sink_mut(),
        &session,
        &mut state,
        target.clone(),
        &progress,
    )
    .await;
    // closed either way, so a retry can create the temporary slot again
    session.close();
    copied?;
    pipeline.copied(table, lsn, target);
    Ok(membership)
}

/// Copies one table in the snapshot into the lake: chunks committed without a checkpoint
/// (the first truncating, so an interrupted copy restarts clean), the last with the
/// snapshot's consistent point.
async fn copy_into_lake<S: Sink>(
    config: &Config,
    client: &tokio_postgres::Client,
    sink: &mut S,
    session: &SnapshotSession,
    state: &mut TableState,
    target: Arc<TableSchema>,
    progress: &Progress,
) -> Result<()> {
    let table = state.schema.table.clone();
    let estimate = snapshot::estimated_rows(client, &table).await?;
    let bar = Arc::new(progress.table("snapshot", &table.to_string(), estimate));
    let metrics = crate::metrics::installed();
    if let Some(m) = metrics {
        m.copy_started(&table, estimate);
    }
    let copied_table = table.clone();
    let (tx, mut rx) = mpsc::channel::<SnapshotRows>(4);
    let copy_config = config.clone();
    let snapshot = session.snapshot.clone();
    let shape = state.schema.clone();
    let counter = bar.clone();
    let settings = CopySettings {
        parallelism: config.source.snapshot_parallelism,
        ..CopySettings::default()
    };
    let copying = tokio::spawn(async move {
        snapshot::copy_table(&copy_config, &snapshot, shape, &settings, tx, move |n| {
            counter.add(n);
            if let Some(m) = metrics {
                m.copied_rows(&copied_table, n);
            }
        })
        .await
    });
    let now_micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    // Each batch is written as it arrives, into files that stay uncommitted, while the copy
    // goes on; one commit at the end takes them all in. An interrupted copy leaves only
    // orphan files and the table without a checkpoint, so the next start copies it again.
    let staged: Result<()> = async {
        while let Some(rows) = rx.recv().await {
            let rows = match state.mode {
                TableMode::Upsert => rows.rows,
                TableMode::Changelog => changelog::snapshot_rows(
                    &state.schema,
                    &target,
                    &rows.rows,
                    rows.lsn,
                    now_micros,
                )?,
            };
            sink.stage(TableDelta {
                table: table.clone(),
                schema: target.clone(),
                // the commit below truncates: the copy's rows go straight into the table
                truncate: true,
                adds_only: true,
                deletes: Vec::new(),
                rows: vec![rows],
                lsn: None,
            })
            .await?;
        }
        Ok(())
    }
    .await;
    // on an error here the copy stops at its next send, the receiver gone
    drop(rx);
    let copied = match copying.await {
        Ok(result) => result.map(|_| ()),
        Err(e) => Err(Error::Source {
            message: format!("snapshot of {table}: the copy task failed: {e}"),
        }),
    };
    if let Err(e) = staged.and(copied) {
        sink.discard_staged(&table);
        return Err(e);
    }
    sink.commit(TableDelta {
        table: table.clone(),
        schema: target,
        truncate: true,
        adds_only: false,
        deletes: Vec::new(),
        rows: Vec::new(),
        lsn: Some(session.snapshot.checkpoint()),
    })
    .await?;
    bar.finish();
    if let Some(m) = metrics {
        m.copy_committed(&table, bar.rows());
    }
    Ok(())
}

/// The slot's confirmed position; zero when it does not exist yet.
async fn slot_position(client: &tokio_postgres::Client, config: &Config) -> Result<Lsn> {
    let slot = &config.source.slot;
    let row = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[slot],
        )
        .await
        .map_err(|e| Error::postgres(format!("read slot {slot}"), e))?;
    Ok(row
        .and_then(|r| r.get::<_, Option<String>>(0))
        .and_then(|t| t.parse().ok())
        .unwrap_or(Lsn::ZERO))
}

/// Makes sure the slot has acknowledged `durable` after the stream has stopped, so a clean
/// shutdown leaves it holding no WAL the lake already has. The stream's last status report
/// normally carried it already (the walsender applies it as it ends, so this waits for the
/// slot to be released first); advancing the slot by SQL, which decodes the WAL again from its
/// restart point, is the fallback for a stream that could not report.
async fn advance_slot(
    control: &mut connection::Session,
    config: &Config,
    durable: Lsn,
) -> Result<()> {
    let slot = &config.source.slot;
    let released_by = Instant::now() + Duration::from_secs(5);
    let mut reopened = 0;
    loop {
        let read = control
            .client()
            .await?
            .query_opt(
                "SELECT confirmed_flush_lsn::text, active_pid IS NOT NULL \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[slot],
            )
            .await;
        let row = match read {
            Ok(row) => row,
            // the server closed the session (a restart, a failover): read again on a new one
            Err(e) if control.lost(&e) && reopened < 3 => {
                reopened += 1;
                continue;
            }
            Err(e) => return Err(Error::postgres(format!("read slot {slot}"), e)),
        };
        let confirmed = row
            .as_ref()
            .and_then(|r| r.get::<_, Option<String>>(0))
            .and_then(|t| t.parse::<Lsn>().ok())
            .unwrap_or(Lsn::ZERO);
        if durable <= confirmed {
            return Ok(());
        }
        let active = row.is_some_and(|r| r.get::<_, bool>(1));
        if !active || Instant::now() >= released_by {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::debug!(slot = %slot, durable = %durable, "acknowledging on the slot by SQL");
    // the walsender of the stream that just ended may hold the slot for a moment longer
    let mut attempts = 0;
    loop {
        let advanced = control
            .client()
            .await?
            .batch_execute(&format!(
                "SELECT pg_replication_slot_advance({}, {}::pg_lsn)",
                quote_literal(slot),
                quote_literal(&durable.to_string())
            ))
            .await;
        match advanced {
            Ok(()) => return Ok(()),
            Err(e) if attempts < 50 && control.lost(&e) => {
                attempts += 1;
            }
            Err(e) if attempts < 50 && e.code().is_some_and(|c| c.code() == "55006") => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(Error::postgres(
                    format!("acknowledge {durable} on slot {slot}"),
                    e,
                ));
            }
        }
    }
}
