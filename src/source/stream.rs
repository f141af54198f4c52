//! The replication stream: streams the slot with pgoutput, decodes each message with our
//! decoder, appends rows to per-table Arrow builders, and hands [`SourceEvent`]s to the
//! pipeline through a bounded channel (so a slow sink slows the source, and memory stays
//! bounded). The pipeline answers with the durable LSN, which alone is acknowledged to
//! PostgreSQL. A dropped connection or a server restart reconnects with backoff from the durable
//! LSN.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgwire_replication::{ReplicationClient, ReplicationEvent};
use tokio::sync::{mpsc, watch};
use tokio_postgres::Client;
use tracing::Instrument;

use crate::config::{ColumnPolicy, Config};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::masking::Masking;
use crate::source::changes::{ChangeBatch, ChangeBuilder, Intake, TableSchema};
use crate::source::chunk::{WATERMARK_PREFIX, Watermark};
use crate::source::connection;
use crate::source::pgoutput::{self, Message};
use crate::source::resync::{RESYNC_PREFIX, ResyncRequest};
use crate::source::types::{PgType, TypeOptions, resolve_type};
use crate::source::{Oid, RelationId};
use crate::table::TableId;

/// What the source tells the pipeline, in WAL order.
#[derive(Debug, Clone)]
pub enum SourceEvent {
    /// A session started streaming at `from`: whatever arrived of a transaction that did not
    /// commit before is void.
    Started {
        /// Where the stream resumes.
        from: Lsn,
    },
    /// A transaction begins.
    Begin {
        /// Its commit LSN, known from the start (pgoutput sends transactions once committed).
        commit_lsn: Lsn,
        /// Commit time, microseconds since the Unix epoch.
        commit_time_micros: i64,
    },
    /// A table's shape is new or has changed, effective from the next change of this
    /// transaction (committing at `commit_lsn`) on.
    Schema {
        /// The shape.
        schema: Arc<TableSchema>,
        /// The transaction in which the new shape takes effect.
        commit_lsn: Lsn,
    },
    /// Changes of one table in the current transaction; a large transaction sends several.
    Changes(ChangeBatch),
    /// The tables were truncated in the current transaction, after its earlier changes.
    Truncate {
        /// The truncated tables.
        tables: Vec<TableId>,
        /// The transaction's commit LSN.
        commit_lsn: Lsn,
    },
    /// The current transaction committed: everything since its Begin is whole.
    Commit {
        /// Its commit LSN.
        commit_lsn: Lsn,
        /// The LSN just past its commit record: the position to acknowledge once it is durable.
        end_lsn: Lsn,
        /// Commit time, microseconds since the Unix epoch.
        commit_time_micros: i64,
    },
    /// A watermark of a chunked copy (a `pg_logical_emit_message` of lakewriter's), in the
    /// current transaction: it sits in WAL order between the transactions committed before
    /// and after it.
    Watermark(Watermark),
    /// A request of `lakewriter resync` to copy this table again, in the current transaction:
    /// the copy starts at its commit.
    Resync(TableId),
    /// No transaction is open and the server has sent everything up to `server_lsn`: with
    /// nothing pending, the pipeline may acknowledge up to here so the slot holds no WAL for
    /// idle tables or unpublished traffic.
    Idle {
        /// The server's position.
        server_lsn: Lsn,
    },
}

/// How the stream runs.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Where to start when the slot's confirmed position is earlier (the lowest table checkpoint).
    pub start: Lsn,
    /// A table's changes in a transaction are handed on in batches of at most this many rows.
    pub batch_rows: usize,
    /// ... or at most this many bytes of Arrow buffers.
    pub batch_bytes: usize,
    /// Type mapping options.
    pub type_options: TypeOptions,
    /// How often standby status is sent when nothing else happens.
    pub status_interval: Duration,
    /// The column masking policies, applied to every row as it is decoded.
    pub masking: Arc<Masking>,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            start: Lsn::ZERO,
            batch_rows: 65_536,
            batch_bytes: 32 << 20,
            type_options: TypeOptions::default(),
            status_interval: Duration::from_secs(1),
            masking: Masking::none(),
        }
    }
}

/// Why a session ended without an error.
enum SessionEnd {
    /// Shutdown was requested.
    Shutdown,
    /// The pipeline stopped listening.
    Closed,
}

/// Streams the configured slot until `shutdown` turns true or the pipeline drops `events`.
/// Acknowledges to PostgreSQL only what `durable` says; reconnects with backoff (from the
/// durable LSN) after retryable failures.
///
/// The replication connection and the decoder run on a thread of their own, with a
/// single-threaded runtime: every WAL message goes from the connection's task to the decoder's,
/// and there that hand-over costs no wake-up of another thread. Sharing the caller's worker
/// threads, the two tasks traded threads message by message: on two cores with one of them
/// busy, that cost a fifth of the rate and a third more CPU (`benches/source.rs`, stream).
/// Dropping the returned future stops the thread.
pub async fn stream(
    config: &Config,
    settings: StreamSettings,
    events: mpsc::Sender<SourceEvent>,
    durable: watch::Receiver<Lsn>,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let config = config.clone();
    let slot = config.source.slot.clone();
    let thread_failed = |what: &str| Error::Source {
        message: format!("replication stream of slot {slot}: {what}"),
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    // the caller's span goes along, so the stream's logs keep their context
    let span = tracing::Span::current();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| thread_failed(&format!("cannot start its runtime: {e}")))?;
    std::thread::Builder::new()
        .name("lakewriter-source".into())
        .spawn(move || {
            let mut done_tx = done_tx;
            let streaming = async {
                tokio::select! {
                    result = stream_here(&config, settings, events, durable, shutdown) => {
                        Some(result)
                    }
                    // the caller dropped stream(): stop (dropping the runtime ends its tasks)
                    _ = done_tx.closed() => None,
                }
            };
            let result = runtime.block_on(streaming.instrument(span));
            if let Some(result) = result {
                let _ = done_tx.send(result);
            }
        })
        .map_err(|e| thread_failed(&format!("cannot start its thread: {e}")))?;
    done_rx
        .await
        .unwrap_or_else(|_| Err(thread_failed("its thread ended unexpectedly")))
}

/// [`stream`], on the current runtime.
async fn stream_here(
    config: &Config,
    settings: StreamSettings,
    events: mpsc::Sender<SourceEvent>,
    durable: watch::Receiver<Lsn>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let mut backoff = Duration::from_millis(250);
    // whether this interruption was logged already
    let mut said = false;
    loop {
        let start = settings.start.max(*durable.borrow());
        let began = Instant::now();
        let mut connected = false;
        match session(
            config,
            &settings,
            start,
            &events,
            durable.clone(),
            shutdown.clone(),
            &mut connected,
        )
        .await
        {
            Ok(SessionEnd::Shutdown) | Ok(SessionEnd::Closed) => return Ok(()),
            Err(e) if e.is_retryable() => {
                if let Some(m) = crate::metrics::installed() {
                    m.stream_interrupted(&e);
                }
                if began.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_millis(250);
                }
                // said once per interruption: the attempts while the server is still away (a
                // restart, a failover) are detail, and "streaming" says when it is back
                if connected || !said {
                    said = true;
                    tracing::warn!(error = %e, retry_in = ?backoff, "replication stream interrupted; reconnecting");
                } else {
                    tracing::debug!(error = %e, retry_in = ?backoff, "the source is still unreachable; reconnecting");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    }
}

async fn session(
    config: &Config,
    settings: &StreamSettings,
    start: Lsn,
    events: &mpsc::Sender<SourceEvent>,
    mut durable: watch::Receiver<Lsn>,
    mut shutdown: watch::Receiver<bool>,
    connected: &mut bool,
) -> Result<SessionEnd> {
    let source = &config.source;
    let catalog = connection::connect_as(source, Some(connection::STREAM)).await?;
    let replication = connection::replication_config(source, start, connection::STREAM)?
        .with_status_interval(settings.status_interval)
        .with_ack_lsn((*durable.borrow()).into());
    let mut client = ReplicationClient::connect(replication)
        .await
        .map_err(|e| replication_error(source, e))?;
    *connected = true;
    tracing::info!(slot = %source.slot, from = %start, "streaming");
    let mut decoder = Decoder::new(config, settings, catalog);
    let acknowledged_at_start = *durable.borrow();
    if events
        .send(SourceEvent::Started { from: start })
        .await
        .is_err()
    {
        close(client).await;
        return Ok(SessionEnd::Closed);
    }
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                acknowledge_and_close(client, &durable, acknowledged_at_start, settings).await;
                return Ok(SessionEnd::Shutdown);
            }
            changed = durable.changed() => {
                if changed.is_ok() {
                    client.update_applied_lsn((*durable.borrow_and_update()).into());
                }
            }
            received = client.recv() => {
                let event = received.map_err(|e| replication_error(source, e))?;
                let Some(event) = event else {
                    return Err(Error::Replication {
                        context: format!("slot {}", source.slot),
                        source: pgwire_replication::PgWireError::Io(Arc::new(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the server ended the stream",
                        ))),
                    });
                };
                for out in decoder.handle(event).await? {
                    if events.send(out).await.is_err() {
                        acknowledge_and_close(client, &durable, acknowledged_at_start, settings)
                            .await;
                        return Ok(SessionEnd::Closed);
                    }
                }
            }
        }
    }
}

/// Reports the last durable position through this session, then closes it: the pipeline
/// commits what it holds before it stops the stream, and that final position reaches the slot
/// here. (Advancing the slot afterwards with `pg_replication_slot_advance` would decode the WAL
/// again from the slot's restart point: seconds after a large transaction.) The client sends a
/// status at most every `status_interval`, so this waits up to that long, and no longer than
/// that plus a second.
async fn acknowledge_and_close(
    client: ReplicationClient,
    durable: &watch::Receiver<Lsn>,
    acknowledged_at_start: Lsn,
    settings: &StreamSettings,
) {
    let last = *durable.borrow();
    if last > acknowledged_at_start {
        client.update_applied_lsn(last.into());
        let metrics = client.metrics();
        let deadline = Instant::now() + settings.status_interval + Duration::from_secs(1);
        while Lsn::from(metrics.last_applied_lsn()) < last && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    close(client).await;
}

/// Ends a replication session cleanly (CopyDone, and the connection's task finished) before
/// the stream's runtime, which would cut it off, goes away; bounded, so a server that does not
/// answer cannot hold up a shutdown.
async fn close(mut client: ReplicationClient) {
    let _ = tokio::time::timeout(Duration::from_secs(5), client.shutdown()).await;
}

fn replication_error(
    source: &crate::config::SourceConfig,
    error: pgwire_replication::PgWireError,
) -> Error {
    Error::Replication {
        context: format!("slot {} on {}", source.slot, connection::describe(source)),
        source: error,
    }
}

/// The open transaction.
struct Transaction {
    commit_lsn: Lsn,
    /// Changes so far (all tables): the position of the next one.
    position: u64,
    /// Builders of the tables changed so far, in order of first change.
    builders: Vec<(RelationId, ChangeBuilder)>,
}

/// Turns replication events into source events: relation cache, type resolution, builders.
struct Decoder<'a> {
    config: &'a Config,
    settings: &'a StreamSettings,
    catalog: Client,
    /// Known relations; `None` for relations the config does not select.
    relations: HashMap<RelationId, Option<Arc<TableSchema>>>,
    /// How the columns of a masked relation reach its batches (absent: unmasked).
    intakes: HashMap<RelationId, Arc<[Intake]>>,
    types: HashMap<Oid, PgType>,
    transaction: Option<Transaction>,
    last_idle: Lsn,
    /// The WAL position of the message being handled, for error messages.
    at: Lsn,
}

impl<'a> Decoder<'a> {
    fn new(config: &'a Config, settings: &'a StreamSettings, catalog: Client) -> Self {
        Decoder {
            config,
            settings,
            catalog,
            relations: HashMap::new(),
            intakes: HashMap::new(),
            types: HashMap::new(),
            transaction: None,
            last_idle: Lsn::ZERO,
            at: Lsn::ZERO,
        }
    }

    async fn handle(&mut self, event: ReplicationEvent) -> Result<Vec<SourceEvent>> {
        let mut out = Vec::new();
        match event {
            ReplicationEvent::Begin {
                final_lsn,
                commit_time_micros,
                ..
            } => {
                let commit_lsn = Lsn::from(final_lsn);
                self.transaction = Some(Transaction {
                    commit_lsn,
                    position: 0,
                    builders: Vec::new(),
                });
                out.push(SourceEvent::Begin {
                    commit_lsn,
                    commit_time_micros: unix_micros(commit_time_micros),
                });
            }
            ReplicationEvent::Commit {
                lsn,
                end_lsn,
                commit_time_micros,
            } => {
                let Some(mut transaction) = self.transaction.take() else {
                    return Err(self.protocol("a Commit without a Begin"));
                };
                let next = transaction.position;
                for (_, builder) in &mut transaction.builders {
                    if !builder.is_empty() {
                        out.push(SourceEvent::Changes(builder.finish(next)?));
                    }
                }
                out.push(SourceEvent::Commit {
                    commit_lsn: Lsn::from(lsn),
                    end_lsn: Lsn::from(end_lsn),
                    commit_time_micros: unix_micros(commit_time_micros),
                });
            }
            ReplicationEvent::XLogData {
                wal_start, data, ..
            } => {
                self.at = Lsn::from(wal_start);
                self.message(&data, &mut out).await?;
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                let server_lsn = Lsn::from(wal_end);
                if self.transaction.is_none() && server_lsn > self.last_idle {
                    self.last_idle = server_lsn;
                    out.push(SourceEvent::Idle { server_lsn });
                }
            }
            ReplicationEvent::Message {
                transactional,
                prefix,
                content,
                lsn,
            } => {
                // lakewriter writes its watermarks in transactions of their own
                if transactional && prefix == RESYNC_PREFIX && self.transaction.is_some() {
                    match ResyncRequest::decode(&content) {
                        Some(table) => out.push(SourceEvent::Resync(table)),
                        None => tracing::warn!(
                            lsn = %Lsn::from(lsn),
                            "a resync request this version cannot read: ignored"
                        ),
                    }
                }
                if transactional && prefix == WATERMARK_PREFIX && self.transaction.is_some() {
                    match Watermark::decode(&content) {
                        Some(watermark) => out.push(SourceEvent::Watermark(watermark)),
                        None => tracing::debug!(
                            lsn = %Lsn::from(lsn),
                            "a lakewriter message that is no watermark of this version: ignored"
                        ),
                    }
                }
            }
            ReplicationEvent::StoppedAt { .. } => {}
        }
        Ok(out)
    }

    async fn message(&mut self, data: &[u8], out: &mut Vec<SourceEvent>) -> Result<()> {
        let at = self.at;
        let message = pgoutput::decode(data).map_err(|e| Error::Source {
            message: format!("undecodable pgoutput message at LSN {at}: {e}"),
        })?;
        match message {
            Message::Relation(relation) => self.relation(&relation, out).await?,
            Message::Insert(insert) => {
                if let Some(builder) = self.builder(insert.relation, out)? {
                    builder.insert(insert.new, at)?;
                    self.after_change(insert.relation, out)?;
                }
            }
            Message::Update(update) => {
                if let Some(builder) = self.builder(update.relation, out)? {
                    builder.update(update.old, update.new, at)?;
                    self.after_change(update.relation, out)?;
                }
            }
            Message::Delete(delete) => {
                if let Some(builder) = self.builder(delete.relation, out)? {
                    builder.delete(delete.old, at)?;
                    self.after_change(delete.relation, out)?;
                }
            }
            Message::Truncate(truncate) => {
                let mut tables = Vec::new();
                for relation in truncate.relations.iter() {
                    let Some(Some(schema)) = self.relations.get(&relation).cloned() else {
                        continue;
                    };
                    self.flush_relation(relation, out)?;
                    tables.push(schema.table.clone());
                }
                let commit_lsn = self.commit_lsn()?;
                if !tables.is_empty() {
                    out.push(SourceEvent::Truncate { tables, commit_lsn });
                }
            }
            Message::Begin(_) | Message::Commit(_) => {
                // the replication client delivers these as their own events
            }
            Message::Origin(_) | Message::Type(_) | Message::Logical(_) => {}
            Message::StreamStart(_)
            | Message::StreamStop
            | Message::StreamCommit(_)
            | Message::StreamAbort(_) => {
                return Err(self.protocol("a streamed-transaction message on a protocol 1 stream"));
            }
        }
        Ok(())
    }

    fn commit_lsn(&self) -> Result<Lsn> {
        self.transaction
            .as_ref()
            .map(|t| t.commit_lsn)
            .ok_or_else(|| self.protocol("a change outside a transaction"))
    }

    fn protocol(&self, what: &str) -> Error {
        Error::Source {
            message: format!("unexpected replication message at LSN {}: {what}", self.at),
        }
    }

    async fn relation(
        &mut self,
        relation: &pgoutput::Relation<'_>,
        out: &mut Vec<SourceEvent>,
    ) -> Result<()> {
        if !self
            .config
            .includes_table(relation.namespace, relation.name)
        {
            self.relations.insert(relation.id, None);
            return Ok(());
        }
        let mut types = Vec::with_capacity(relation.columns.len());
        for column in &relation.columns {
            types.push(self.pg_type(column.type_oid, relation, column.name).await?);
        }
        let table = TableId::new(relation.namespace, relation.name);
        let (schema, intake) = if self.settings.masking.masks(&table) {
            let policies = self.policies(relation, &table).await?;
            let (schema, intake) = TableSchema::from_relation_masked(
                relation,
                &types,
                &self.settings.type_options,
                &policies,
            )?;
            (Arc::new(schema), Some(Arc::<[Intake]>::from(intake)))
        } else {
            let schema = TableSchema::from_relation(relation, &types, &self.settings.type_options)?;
            (Arc::new(schema), None)
        };
        match intake {
            Some(intake) => self.intakes.insert(relation.id, intake),
            None => self.intakes.remove(&relation.id),
        };
        if let Some(Some(known)) = self.relations.get(&relation.id)
            && known.same_shape(&schema)
        {
            return Ok(());
        }
        // the rows already built keep the old shape: hand them on before the new one applies
        self.flush_relation(relation.id, out)?;
        if let Some(transaction) = &mut self.transaction {
            transaction.builders.retain(|(id, _)| *id != relation.id);
        }
        tracing::info!(table = %schema.table, lsn = %self.at, columns = schema.columns.len(), "table schema");
        out.push(SourceEvent::Schema {
            schema: schema.clone(),
            commit_lsn: self
                .transaction
                .as_ref()
                .map(|t| t.commit_lsn)
                .unwrap_or(self.at),
        });
        self.relations.insert(relation.id, Some(schema));
        Ok(())
    }

    /// The masking policy of each column of `relation` by its name in the message. Policies
    /// are bound to their columns' numbers (`attnum`) in the catalog at the start, so a column
    /// renamed since keeps its policy under its new name (and later copies of the table mask
    /// it there too). A column the catalog no longer knows (renamed or dropped since the
    /// message was written), while a masked column is missing from the message, could be that
    /// column: refused, never guessed.
    async fn policies(
        &mut self,
        relation: &pgoutput::Relation<'_>,
        table: &TableId,
    ) -> Result<BTreeMap<String, ColumnPolicy>> {
        let rows = self
            .catalog
            .query(
                "SELECT attnum, attname::text FROM pg_attribute \
                 WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
                &[&relation.id.0],
            )
            .await
            .map_err(|e| Error::postgres(format!("read the columns of table {table}"), e))?;
        let catalog: HashMap<String, i16> = rows
            .iter()
            .map(|r| (r.get::<_, String>(1), r.get::<_, i16>(0)))
            .collect();
        let columns: Vec<(&str, Option<i16>)> = relation
            .columns
            .iter()
            .map(|c| (c.name, catalog.get(c.name).copied()))
            .collect();
        let masking = &self.settings.masking;
        let policies = masking.resolve(table, relation.id, &columns);
        let placed: Vec<i16> = columns.iter().filter_map(|(_, a)| *a).collect();
        // a drop is a policy like the others: a dropped column must not come back unmasked
        let missing = masking
            .bound_columns(relation.id)
            .iter()
            .any(|attnum| !placed.contains(attnum));
        if let Some((column, _)) = columns
            .iter()
            .find(|(name, attnum)| attnum.is_none() && !policies.contains_key(*name))
            && missing
        {
            return Err(Error::Source {
                message: format!(
                    "table {table} at LSN {}: column {column} of the stream's schema is no \
                     longer in the catalog (renamed or dropped since), and a masked column of \
                     the table is not in that schema either: it may be the same column, so it \
                     is not written unmasked. Name the column's policy under every name it had \
                     in sink.tables.\"{table}\".columns",
                    self.at
                ),
            });
        }
        Ok(policies)
    }

    async fn pg_type(
        &mut self,
        oid: Oid,
        relation: &pgoutput::Relation<'_>,
        column: &str,
    ) -> Result<PgType> {
        if let Some(known) = PgType::builtin(oid).or_else(|| self.types.get(&oid).cloned()) {
            return Ok(known);
        }
        let resolved = resolve_type(&self.catalog, oid)
            .await
            .map_err(|e| Error::Source {
                message: format!(
                    "table {}.{}, column {column}: {e}",
                    relation.namespace, relation.name
                ),
            })?;
        self.types.insert(oid, resolved.clone());
        Ok(resolved)
    }

    /// The builder for `relation` in the open transaction; `None` when the table is not
    /// selected.
    fn builder(
        &mut self,
        relation: RelationId,
        _out: &mut Vec<SourceEvent>,
    ) -> Result<Option<&mut ChangeBuilder>> {
        let at = self.at;
        let schema = match self.relations.get(&relation) {
            Some(Some(schema)) => schema.clone(),
            Some(None) => return Ok(None),
            None => {
                return Err(Error::Source {
                    message: format!(
                        "a change at LSN {at} for relation {relation} before its Relation message"
                    ),
                });
            }
        };
        if self.transaction.is_none() {
            return Err(self.protocol("a change outside a transaction"));
        }
        let Some(transaction) = self.transaction.as_mut() else {
            return Ok(None);
        };
        let index = match transaction
            .builders
            .iter()
            .position(|(id, _)| *id == relation)
        {
            Some(index) => index,
            None => {
                let builder = match self.intakes.get(&relation) {
                    Some(intake) => ChangeBuilder::masked(
                        schema,
                        intake.clone(),
                        self.settings.masking.hasher().cloned(),
                        transaction.commit_lsn,
                        transaction.position,
                    )?,
                    None => {
                        ChangeBuilder::new(schema, transaction.commit_lsn, transaction.position)?
                    }
                };
                transaction.builders.push((relation, builder));
                transaction.builders.len() - 1
            }
        };
        Ok(transaction.builders.get_mut(index).map(|(_, b)| b))
    }

    /// Counts the change; hands the table's batch on when it is full.
    fn after_change(&mut self, relation: RelationId, out: &mut Vec<SourceEvent>) -> Result<()> {
        let Some(transaction) = self.transaction.as_mut() else {
            return Ok(());
        };
        transaction.position += 1;
        let next = transaction.position;
        if let Some((_, builder)) = transaction
            .builders
            .iter_mut()
            .find(|(id, _)| *id == relation)
        {
            let rows = builder.len();
            let full = rows >= self.settings.batch_rows
                || (rows % 1024 == 0 && builder.allocated_bytes() >= self.settings.batch_bytes);
            if full {
                out.push(SourceEvent::Changes(builder.finish(next)?));
            }
        }
        Ok(())
    }

    /// Hands on what is built for `relation` in the open transaction.
    fn flush_relation(&mut self, relation: RelationId, out: &mut Vec<SourceEvent>) -> Result<()> {
        let Some(transaction) = self.transaction.as_mut() else {
            return Ok(());
        };
        let next = transaction.position;
        if let Some((_, builder)) = transaction
            .builders
            .iter_mut()
            .find(|(id, _)| *id == relation)
            && !builder.is_empty()
        {
            out.push(SourceEvent::Changes(builder.finish(next)?));
        }
        Ok(())
    }
}

/// PostgreSQL timestamps count microseconds from 2000-01-01; Unix time from 1970-01-01.
fn unix_micros(pg_micros: i64) -> i64 {
    const EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;
    pg_micros.saturating_add(EPOCH_OFFSET_MICROS)
}
