//! The copies `run` makes: the initial copy of the tables without a checkpoint, in the slot's
//! exported snapshot (or a new temporary slot's after an interruption); a table that joins
//! while streaming, in key-ordered chunks beside the stream (`chunks`), or, without a key to
//! order them by (or on Delta), in a temporary slot's snapshot while the stream waits; and,
//! from the periodic membership check, a table that rejoined the publication or was created
//! again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::{Config, TableMode};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::masking::Masking;
use crate::pipeline::acknowledge::Acknowledger;
use crate::pipeline::chunks::{self, ChunkedCopy};
use crate::pipeline::is_table_error;
use crate::pipeline::membership;
use crate::pipeline::{Pipeline, TableState, changelog};
use crate::progress::Progress;
use crate::sink::{Sink, TableDelta};
use crate::source::snapshot::{self, CopySettings, SnapshotRows, SnapshotSession};
use crate::source::types::TypeOptions;
use crate::source::{chunk, connection, schema};
use crate::table::{CopyProgress, TableId, TableSchema};

/// How often, at most, the publication's membership is compared with what streams.
pub(super) const MEMBERSHIP_INTERVAL: Duration = Duration::from_secs(10);

/// Copies the tables that joined the stream, and records their membership. A copy starts
/// between two source transactions, so that none of the table's changes is half in the
/// stream's part and half in the copy's.
pub(super) async fn copy_joined<S: Sink>(
    config: &Config,
    control: &mut connection::Session,
    pipeline: &mut Pipeline<S>,
    acknowledger: &mut Acknowledger,
) -> Result<()> {
    if pipeline.in_transaction() {
        return Ok(());
    }
    for table in pipeline.take_discovered() {
        let copied = match start_chunked(config, control, pipeline, &table).await {
            Ok(Some(membership)) => Ok(membership),
            Ok(None) => copy_discovered(config, control, pipeline, &table).await,
            Err(e) => Err(e),
        };
        let membership = match copied {
            Ok(membership) => membership,
            Err(e) if is_table_error(&e) => {
                // the lake refused the table (its preparation or copy failed): stopped or
                // suspended as `[sink] on_table_error` says, or the run stops; a resync
                // after the fix takes it up again
                let at = pipeline.received();
                pipeline.table_failed(&table, at, e).await?;
                pipeline.copy_abandoned(&table);
                continue;
            }
            Err(e) => return Err(e),
        };
        // copied (which lets a resync request go), or gone from the catalog (nothing left to
        // copy, at the next start either); a copy that failed returned above, holding it
        pipeline.copy_abandoned(&table);
        if let Some(membership) = membership {
            acknowledger.member(&table, Some(membership)).await?;
        }
    }
    Ok(())
}

/// Starts the chunked copy of a table that joined while streaming (see `chunks`): the lake
/// table emptied, at a checkpoint just below the next transaction the stream brings, with
/// the copy's progress at its start. `None` when the table cannot be copied in chunks (said
/// in the log); else its membership, read before the copy begins. A start the server
/// interrupts is made again.
async fn start_chunked<S: Sink>(
    config: &Config,
    control: &mut connection::Session,
    pipeline: &mut Pipeline<S>,
    table: &TableId,
) -> Result<Option<Option<String>>> {
    let mut attempt = 0u32;
    loop {
        let started = match control.client().await {
            Ok(client) => start_chunked_once(config, client, pipeline, table).await,
            Err(e) => Err(e),
        };
        match started {
            Err(e) if e.is_retryable() && attempt < COPY_ATTEMPTS => {
                attempt += 1;
                let pause = Duration::from_millis(500 * (1 << attempt.min(6)));
                tracing::warn!(
                    table = %table,
                    error = %e,
                    retry_in = ?pause,
                    "starting the chunked copy of a table that joined while streaming failed; \
                     starting it again"
                );
                tokio::time::sleep(pause).await;
            }
            other => return other,
        }
    }
}

async fn start_chunked_once<S: Sink>(
    config: &Config,
    client: &tokio_postgres::Client,
    pipeline: &mut Pipeline<S>,
    table: &TableId,
) -> Result<Option<Option<String>>> {
    let Some(described) = schema::describe_table(client, table).await? else {
        return Ok(Some(None));
    };
    let key = described.key_columns(config);
    let key_columns = chunk::key_columns(&described, &key);
    let keeps_progress = pipeline.sink_mut().keeps_copy_progress();
    let Some(state) = pipeline.tables.get(table) else {
        return Ok(Some(None));
    };
    if let Err(why) = chunks::chunkable(keeps_progress, state, key_columns.as_deref()) {
        tracing::info!(
            table = %table,
            why,
            "the table is copied in one piece, in a snapshot, while the stream waits"
        );
        return Ok(None);
    }
    let membership = membership::memberships(client, &config.source.publication)
        .await?
        .remove(table);
    let masking = pipeline.masking().clone();
    let shape =
        snapshot::masked_table_schema(client, &described, &TypeOptions::default(), &masking)
            .await?;
    let estimate = snapshot::estimated_rows(client, table).await?;
    let Some(state) = pipeline.tables.get_mut(table) else {
        return Ok(Some(None));
    };
    state.layout.key = key.clone();
    state.row_key = key.clone();
    let layout = state.layout.clone();
    let holds = pipeline.sink_mut().prepare(table, &shape, &layout).await?;
    // every transaction the stream brings from now on commits at or after `received`, and
    // what the lake held of the table (a table that rejoined) is below this commit's
    let lsn = Lsn(pipeline.received().get().saturating_sub(1))
        .max(holds.map_or(Lsn::ZERO, |h| Lsn(h.get().saturating_add(1))));
    let progress = CopyProgress::start(estimate, config.source.snapshot_chunk_rows);
    let parts = chunks::key_ranges(
        estimate,
        config.source.snapshot_chunk_rows,
        config.source.snapshot_parallelism,
    );
    let points = match (&key_columns, estimate) {
        (Some(key_columns), Some(estimate)) if parts > 1 => {
            chunk::split_points(client, &shape, key_columns, estimate, parts, &masking).await?
        }
        _ => Vec::new(),
    };
    let progress = progress.split(points);
    pipeline
        .sink_mut()
        .commit(TableDelta {
            table: table.clone(),
            schema: shape.clone(),
            truncate: true,
            adds_only: false,
            deletes: Vec::new(),
            rows: Vec::new(),
            lsn: Some(lsn),
            copy: Some(progress.encode()),
        })
        .await?;
    if let Some(m) = crate::metrics::installed() {
        m.copy_started(table, estimate);
    }
    tracing::info!(
        table = %table,
        lsn = %lsn,
        key = %key.join(", "),
        chunk_rows = config.source.snapshot_chunk_rows,
        estimate = ?estimate,
        key_ranges = progress.ranges.len(),
        "copying the table in chunks beside the stream"
    );
    pipeline.start_chunked(table, lsn, shape, ChunkedCopy::start(key, progress));
    Ok(Some(membership))
}

/// Compares the publication's membership with what streams. A table that left (or was
/// dropped) is taken off the record — the stream, which may lag, still brings what it changed
/// before — so that if it comes back it is copied again; so is one whose membership changed
/// between two checks (it left and rejoined, or was created again). A table that joined
/// without a change yet is copied now. A check the server interrupts is skipped: the next
/// one sees the same.
pub(super) async fn check_membership<S: Sink>(
    config: &Config,
    control: &mut connection::Session,
    pipeline: &mut Pipeline<S>,
    acknowledger: &mut Acknowledger,
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
        .filter(|t| !pipeline.tables().contains_key(*t) && !pipeline.suspended().contains(*t))
        .cloned()
        .collect();
    joined.sort();
    for table in joined {
        let client = control.client().await?;
        let Some(described) = schema::describe_table(client, &table).await? else {
            continue;
        };
        let shape = snapshot::masked_table_schema(
            client,
            &described,
            &TypeOptions::default(),
            pipeline.masking(),
        )
        .await?;
        pipeline.join(shape);
    }
    copy_joined(config, control, pipeline, acknowledger).await
}

/// Whether `error` says the exported snapshot is gone (its exporting session ended, by a
/// restart or a `pg_terminate_backend`, before a copy session imported it): a new snapshot
/// serves as well.
pub(super) fn snapshot_lost(error: &Error) -> bool {
    matches!(
        error,
        Error::Postgres { context, source }
            if context.starts_with("import snapshot")
                && source.code().is_some_and(|c| c.code() == "22023")
    )
}

/// How often an initial copy interrupted by the server is taken up again.
pub(super) const COPY_ATTEMPTS: u32 = 8;

/// Copies the `pending` tables in `session`'s snapshot (or, with `initial_snapshot = false`,
/// starts them empty at its position), each committed with the snapshot's checkpoint and
/// taken off `pending` once in the lake.
#[allow(clippy::too_many_arguments)]
pub(super) async fn copy_tables<S: Sink>(
    config: &Config,
    control: &mut connection::Session,
    sink: &mut S,
    session: &SnapshotSession,
    pending: &mut Vec<TableId>,
    states: &mut HashMap<TableId, TableState>,
    targets: &HashMap<TableId, Arc<TableSchema>>,
    progress: &Progress,
    masking: &Arc<Masking>,
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
                    masking,
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
                    copy: None,
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
pub(super) async fn copy_discovered<S: Sink>(
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
    let masking = pipeline.masking().clone();
    let shape =
        snapshot::masked_table_schema(client, &described, &TypeOptions::default(), &masking)
            .await?;
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
        &masking,
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
#[allow(clippy::too_many_arguments)]
async fn copy_into_lake<S: Sink>(
    config: &Config,
    client: &tokio_postgres::Client,
    sink: &mut S,
    session: &SnapshotSession,
    state: &mut TableState,
    target: Arc<TableSchema>,
    progress: &Progress,
    masking: &Arc<Masking>,
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
        masking: masking.clone(),
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
                copy: None,
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
        copy: None,
    })
    .await?;
    bar.finish();
    if let Some(m) = metrics {
        m.copy_committed(&table, bar.rows());
    }
    Ok(())
}
