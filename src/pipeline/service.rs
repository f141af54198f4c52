//! `lakewriter run`: prepares the source (publication, slot) and the lake tables, copies the
//! tables that need an initial snapshot, then streams until shutdown — on which it commits
//! every whole transaction received, acknowledges the durable position and returns.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::config::{Config, InitialCopy, TableErrorPolicy, TableMode};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::masking::Masking;
use crate::pipeline::acknowledge::{Acknowledger, stopped_tables};
use crate::pipeline::chunks::{self, ChunkedCopy};
use crate::pipeline::copy::{
    COPY_ATTEMPTS, MEMBERSHIP_INTERVAL, check_membership, copy_joined, copy_tables, snapshot_lost,
};
use crate::pipeline::membership::{self, Record, RecordStore};
use crate::pipeline::{Pipeline, TableState, changelog, is_table_error};
use crate::progress::Progress;
use crate::sink::{Sink, TableLayout};
use crate::source::setup::{self, Readiness};
use crate::source::snapshot::{self, SnapshotSession};
use crate::source::stream::{self, StreamSettings};
use crate::source::types::TypeOptions;
use crate::source::{chunk, connection, schema};
use crate::table::{CopyProgress, TableId, TableSchema, quote_literal};

/// Runs the service until `shutdown` turns true.
pub async fn run<S: Sink>(
    config: Arc<Config>,
    mut sink: S,
    shutdown: watch::Receiver<bool>,
) -> Result<Pipeline<S>> {
    // the session beside the stream: catalog reads now, copies of tables that join while
    // streaming, and the last acknowledgement; it reopens itself after a server restart
    let mut control = connection::Session::open(&config.source, connection::CONTROL).await?;
    // the masking key is read before anything is copied: a hashed column without it stops here
    let masking = Masking::from_config(&config)?;
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
    // suspended by `on_table_error`: copied again at the next start, or by a resync
    let mut suspended: HashSet<TableId> = HashSet::new();
    // the tables a copy could take in chunks beside the stream (`source.initial_copy`)
    let mut chunkable: HashSet<TableId> = HashSet::new();
    for table in &tables {
        let Some(described) = schema::describe_table(client, table).await? else {
            continue;
        };
        let columns: Vec<&str> = described.columns.iter().map(|c| c.name.as_str()).collect();
        masking.check_table(table, &columns, &described.key_columns(&config))?;
        let shape =
            snapshot::masked_table_schema(client, &described, &type_options, &masking).await?;
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
                        "the table is suspended: its WAL is released and the next start (or a \
                         `lakewriter resync` of it) copies it again"
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
        if config.source.initial_copy == InitialCopy::Chunked {
            let key = described.key_columns(&config);
            let key_columns = chunk::key_columns(&described, &key);
            if chunks::chunkable(sink.keeps_copy_progress(), &state, key_columns.as_deref()).is_ok()
            {
                chunkable.insert(table.clone());
            }
        }
        // a chunked copy the last run did not finish goes on after its last committed chunk
        if let (Some(_), Some(text)) = (checkpoint, sink.copy_progress(table)) {
            let key = described.key_columns(&config);
            let key_columns = chunk::key_columns(&described, &key);
            let usable =
                chunks::chunkable(sink.keeps_copy_progress(), &state, key_columns.as_deref());
            match (CopyProgress::decode(&text), usable) {
                (Ok(progress), Ok(())) => {
                    let (chunks, rows) = (progress.chunks, progress.rows);
                    let copy = ChunkedCopy::resume(key, progress, sink.copy_commits(table));
                    tracing::info!(
                        table = %table,
                        chunks,
                        rows,
                        progress = %copy.describe(),
                        "resuming the table's chunked copy after its last committed chunk"
                    );
                    state.copy = Some(copy);
                }
                (progress, usable) => {
                    tracing::warn!(
                        table = %table,
                        progress = ?progress.err(),
                        chunks = ?usable.err(),
                        "the table's chunked copy cannot go on: copying it again"
                    );
                    state.checkpoint = None;
                }
            }
        }
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
                    .or_else(|| {
                        membership::masking_changed(record, table, &masking.fingerprint(table))
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
    let mut needs_copy: Vec<TableId> = match slot {
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
    needs_copy.sort();
    for table in &needs_copy {
        // copied whole now: a chunked copy under way is replaced
        if let Some(state) = states.get_mut(table) {
            state.copy = None;
        }
    }
    // with `initial_copy = "chunked"`, the tables that can be are copied beside the stream
    // once it runs, like tables that joined; the others in the snapshot as usual
    let mut beside: Vec<TableId> = Vec::new();
    if config.source.initial_snapshot {
        needs_copy.retain(|t| {
            let chunked = chunkable.contains(t);
            if chunked {
                beside.push(t.clone());
            }
            !chunked
        });
    }
    if !beside.is_empty() {
        tracing::info!(
            tables = beside.len(),
            "initial_copy = \"chunked\": copying these tables in chunks beside the stream"
        );
    }
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
                &masking,
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

    // Stream from the lowest checkpoint; each table skips what it already holds. Tables copied
    // beside the stream take every change from where the slot is now.
    let mut start = states
        .values()
        .filter_map(|s| s.checkpoint)
        .min()
        .unwrap_or(Lsn::ZERO);
    if !beside.is_empty() {
        let now = slot_position(control.client().await?, &config).await?;
        start = if start == Lsn::ZERO {
            now
        } else {
            start.min(now)
        };
    }
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
            masking: masking.fingerprints(),
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
        masking: masking.clone(),
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
    pipeline.set_masking(masking.clone());
    pipeline.set_suspended(suspended);
    for table in &beside {
        pipeline.recopy(table);
    }
    let tick = (config.shortest_max_latency() / 4)
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
    // the chunk reads of chunked copies, beside the stream
    let mut reads: JoinSet<(TableId, chunks::ReadId, Result<()>)> = JoinSet::new();
    let inbox = pipeline.chunk_inbox();
    // Events flow until shutdown (then every whole transaction received is committed before
    // the stream stops) or until the stream ends on its own.
    let outcome: Result<bool> = async {
        if *shutdown.borrow() {
            return Ok(true);
        }
        loop {
            for request in pipeline.chunk_requests() {
                let (config, masking, inbox) = (config.clone(), masking.clone(), inbox.clone());
                reads.spawn(async move {
                    let (table, id) = (request.table.clone(), request.id.clone());
                    (
                        table,
                        id,
                        chunks::read(config, masking, request, inbox).await,
                    )
                });
            }
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
                Some(read) = reads.join_next(), if !reads.is_empty() => match read {
                    Ok((_, _, Ok(()))) => {}
                    Ok((table, id, Err(e))) => pipeline.chunk_failed(&table, id, e).await?,
                    Err(e) => {
                        return Err(Error::Source {
                            message: format!("a chunk read of a chunked copy failed: {e}"),
                        });
                    }
                },
                _ = membership_check.tick() => {
                    check_membership(
                        &config,
                        &mut control,
                        &mut pipeline,
                        &mut acknowledger,
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
    // what the last commits left to finish beside the writer (the key indexes' updates)
    pipeline.sink_mut().settle().await;
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
