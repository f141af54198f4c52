//! The pipeline against a recording sink: what reaches the lake, and what is acknowledged,
//! for event sequences a real server produces but a test server cannot time (a reconnect
//! between two buffered transactions).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int32Type, Schema};
use tokio::sync::watch;

use super::*;
use crate::sink::TableDelta;
use crate::table::{ChangeBatch, ColumnSchema, Oid, OldRow, Op, RelationId, ReplicaIdentity};

/// Keeps every commit it is given; a commit takes in the parts staged for its table before it
/// (a spilled transaction's), as a lake commit does.
#[derive(Debug, Default)]
struct RecordingSink {
    commits: Vec<TableDelta>,
    staged: HashMap<TableId, Vec<TableDelta>>,
}

impl Sink for RecordingSink {
    async fn prepare(
        &mut self,
        _table: &TableId,
        _schema: &TableSchema,
        _layout: &TableLayout,
    ) -> Result<Option<Lsn>> {
        Ok(None)
    }

    async fn commit(&mut self, mut delta: TableDelta) -> Result<()> {
        for part in self.staged.remove(&delta.table).unwrap_or_default() {
            delta.rows.extend(part.rows);
            delta.deletes.extend(part.deletes);
        }
        self.commits.push(delta);
        Ok(())
    }

    async fn stage(&mut self, part: TableDelta) -> Result<()> {
        self.staged
            .entry(part.table.clone())
            .or_default()
            .push(part);
        Ok(())
    }

    fn discard_staged(&mut self, table: &TableId) {
        self.staged.remove(table);
    }

    fn known_checkpoint(&self, _table: &TableId) -> Option<Lsn> {
        None
    }

    async fn mark_incomplete(&mut self, _table: &TableId) -> Result<()> {
        Ok(())
    }

    async fn lookup(&mut self, _table: &TableId, _keys: &RecordBatch) -> Result<Vec<RecordBatch>> {
        Ok(Vec::new())
    }
}

fn config() -> Arc<Config> {
    config_with("")
}

/// The test config with `flush` appended to its `[flush]` section.
fn config_with(flush: &str) -> Arc<Config> {
    let text = r#"
[source]
host = "127.0.0.1"
database = "db"
user = "u"
publication = "p"
slot = "s"

[sink]
warehouse = "./warehouse"
namespace = "ns"

[flush]
max_latency = "1h"
"#
    .to_string()
        + flush;
    Arc::new(Config::parse(&text, Path::new("test.toml"), Vec::new()).expect("config"))
}

fn schema(table: &str) -> Arc<TableSchema> {
    let arrow = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int32, true),
        Field::new("v", DataType::Utf8, true),
    ]));
    let column = |name: &str, oid: u32, key: bool| ColumnSchema {
        name: name.into(),
        type_oid: Oid(oid),
        type_modifier: -1,
        key,
    };
    Arc::new(TableSchema {
        table: TableId::new("public", table),
        relation: RelationId(1),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![column("id", 23, true), column("v", 25, false)],
        arrow_nullable: arrow.clone(),
        arrow,
    })
}

/// One insert or update (by key, so the old row is absent) of `(id, v)`.
fn change(table: &str, commit_lsn: u64, op: Op, id: i32, v: &str) -> SourceEvent {
    let schema = schema(table);
    let new = RecordBatch::try_new(
        schema.arrow_nullable.clone(),
        vec![
            Arc::new(Int32Array::from(vec![id])),
            Arc::new(StringArray::from(vec![v])),
        ],
    )
    .expect("batch");
    // the old row is absent: all nulls
    let old = RecordBatch::try_new(
        schema.arrow_nullable.clone(),
        vec![
            Arc::new(Int32Array::from(vec![None::<i32>])),
            Arc::new(StringArray::from(vec![None::<&str>])),
        ],
    )
    .expect("old batch");
    SourceEvent::Changes(ChangeBatch {
        schema,
        commit_lsn: Lsn(commit_lsn),
        first_position: 0,
        ops: vec![op],
        new,
        old,
        old_rows: vec![OldRow::Absent],
        unchanged_toast: Vec::new(),
    })
}

/// A whole transaction committing at `lsn` with `changes`.
fn transaction(lsn: u64, changes: Vec<SourceEvent>) -> Vec<SourceEvent> {
    let mut events = vec![SourceEvent::Begin {
        commit_lsn: Lsn(lsn),
        commit_time_micros: lsn as i64,
    }];
    events.extend(changes);
    events.push(SourceEvent::Commit {
        commit_lsn: Lsn(lsn),
        end_lsn: Lsn(lsn + 8),
        commit_time_micros: lsn as i64,
    });
    events
}

/// A pipeline over an upsert table `u` and a changelog table `c`, both in the lake up to LSN 10.
fn pipeline() -> (Pipeline<RecordingSink>, watch::Receiver<Lsn>) {
    pipeline_with(config())
}

/// [`pipeline`] with `config`.
fn pipeline_with(config: Arc<Config>) -> (Pipeline<RecordingSink>, watch::Receiver<Lsn>) {
    let mut tables = HashMap::new();
    let upsert = schema("u");
    tables.insert(
        upsert.table.clone(),
        TableState::new(
            upsert,
            TableLayout {
                key: vec!["id".into()],
                partition_by: Vec::new(),
            },
            TableMode::Upsert,
            Some(Lsn(10)),
        ),
    );
    let log = schema("c");
    tables.insert(
        log.table.clone(),
        TableState::new(
            log,
            TableLayout {
                key: Vec::new(),
                partition_by: Vec::new(),
            },
            TableMode::Changelog,
            Some(Lsn(10)),
        ),
    );
    let (durable, acknowledged) = watch::channel(Lsn(10));
    (
        Pipeline::new(config, RecordingSink::default(), tables, durable),
        acknowledged,
    )
}

/// `(id, v)` of every row `table` committed, in commit order.
fn committed(sink: &RecordingSink, table: &str) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for delta in sink.commits.iter().filter(|d| d.table.name == table) {
        for batch in &delta.rows {
            let ids = batch
                .column_by_name("id")
                .expect("id")
                .as_primitive::<Int32Type>();
            let vs = batch.column_by_name("v").expect("v").as_string::<i32>();
            for row in 0..batch.num_rows() {
                assert!(!ids.is_null(row));
                out.push((ids.value(row), vs.value(row).to_string()));
            }
        }
    }
    out
}

#[tokio::test]
async fn a_transaction_resent_after_a_reconnect_is_buffered_once() {
    let (mut pipeline, acknowledged) = pipeline();
    let t1 = transaction(
        100,
        vec![
            change("u", 100, Op::Insert, 1, "t1"),
            change("c", 100, Op::Insert, 1, "t1"),
        ],
    );
    let t2 = transaction(
        200,
        vec![
            change("u", 200, Op::Update, 1, "t2"),
            change("c", 200, Op::Update, 1, "t2"),
        ],
    );
    for event in t1.iter().chain(&t2).cloned() {
        pipeline.handle(event).await.expect("handle");
    }
    // the connection drops before anything was acknowledged: the server resends from T1
    pipeline
        .handle(SourceEvent::Started { from: Lsn(10) })
        .await
        .expect("started");
    for event in t1.iter().cloned() {
        pipeline.handle(event).await.expect("handle the resent T1");
    }
    // acknowledging past T2 now would lose it: T2 is not in the lake
    assert!(
        *acknowledged.borrow() < Lsn(200),
        "acknowledged {} with T2 (200) still buffered",
        *acknowledged.borrow()
    );
    pipeline.flush_all().await.expect("flush");
    let sink = pipeline.into_sink();
    assert_eq!(
        committed(&sink, "u"),
        vec![(1, "t2".to_string())],
        "the upsert table's key must end in T2's state"
    );
    assert_eq!(
        committed(&sink, "c"),
        vec![(1, "t1".to_string()), (1, "t2".to_string())],
        "the changelog must hold each change once"
    );
    for delta in &sink.commits {
        assert_eq!(
            delta.lsn,
            Some(Lsn(200)),
            "table {} checkpoint",
            delta.table
        );
    }
}

fn sorted(mut rows: Vec<(i32, String)>) -> Vec<(i32, String)> {
    rows.sort();
    rows
}

/// A config whose memory budget no transaction fits: every transaction spills to `dir`.
fn spilling(dir: &Path) -> Arc<Config> {
    config_with(&format!(
        "memory_budget = \"1KiB\"\nmax_bytes = \"1KiB\"\nspill_dir = {:?}\n",
        dir.display().to_string()
    ))
}

#[tokio::test]
async fn a_spilled_transaction_resent_after_a_reconnect_is_committed_once() {
    let dir = tempfile::tempdir().expect("a spill directory");
    let (mut pipeline, acknowledged) = pipeline_with(spilling(dir.path()));
    let t1 = transaction(
        100,
        vec![
            change("u", 100, Op::Insert, 1, "t1"),
            change("c", 100, Op::Insert, 1, "t1"),
            change("u", 100, Op::Insert, 2, "t1"),
        ],
    );
    let t2 = transaction(
        200,
        vec![
            change("u", 200, Op::Update, 1, "t2"),
            change("c", 200, Op::Update, 1, "t2"),
        ],
    );
    for event in t1.iter().chain(&t2).cloned() {
        pipeline.handle(event).await.expect("handle");
    }
    pipeline
        .handle(SourceEvent::Started { from: Lsn(10) })
        .await
        .expect("started");
    for event in t1.iter().chain(&t2).cloned() {
        pipeline
            .handle(event)
            .await
            .expect("handle the resent T1 and T2");
    }
    pipeline.flush_all().await.expect("flush");
    assert_eq!(
        *acknowledged.borrow(),
        Lsn(208),
        "acknowledged past T2's end"
    );
    let sink = pipeline.into_sink();
    // a spilled transaction's rows come in the order of its key buckets
    assert_eq!(
        sorted(committed(&sink, "u")),
        vec![
            (1, "t1".to_string()),
            (1, "t2".to_string()),
            (2, "t1".to_string())
        ],
        "each spilled transaction must be committed once"
    );
    assert_eq!(
        committed(&sink, "c"),
        vec![(1, "t1".to_string()), (1, "t2".to_string())],
        "the changelog must hold each change once"
    );
    let lsns: Vec<(String, Option<Lsn>)> = sink
        .commits
        .iter()
        .map(|d| (d.table.name.clone(), d.lsn))
        .collect();
    assert_eq!(lsns.iter().filter(|(_, l)| *l == Some(Lsn(100))).count(), 2);
    assert_eq!(lsns.iter().filter(|(_, l)| *l == Some(Lsn(200))).count(), 2);
    assert_eq!(lsns.len(), 4, "commits: {lsns:?}");
    assert!(
        std::fs::read_dir(dir.path())
            .expect("spill dir")
            .next()
            .is_none(),
        "spill files were left behind"
    );
}

#[tokio::test]
async fn a_spilling_transaction_cut_by_a_reconnect_is_taken_whole_from_the_resend() {
    let dir = tempfile::tempdir().expect("a spill directory");
    let (mut pipeline, acknowledged) = pipeline_with(spilling(dir.path()));
    let t1 = transaction(
        100,
        vec![
            change("u", 100, Op::Insert, 1, "t1"),
            change("c", 100, Op::Insert, 1, "t1"),
            change("u", 100, Op::Insert, 2, "t1"),
            change("c", 100, Op::Insert, 2, "t1"),
        ],
    );
    // the session drops after T1's first changes spilled, before its commit
    for event in t1.iter().take(3).cloned() {
        pipeline.handle(event).await.expect("handle");
    }
    pipeline
        .handle(SourceEvent::Started { from: Lsn(10) })
        .await
        .expect("started");
    assert_eq!(*acknowledged.borrow(), Lsn(10));
    for event in t1.iter().cloned() {
        pipeline.handle(event).await.expect("handle the resent T1");
    }
    pipeline.flush_all().await.expect("flush");
    assert_eq!(*acknowledged.borrow(), Lsn(108));
    let sink = pipeline.into_sink();
    assert_eq!(
        sorted(committed(&sink, "u")),
        vec![(1, "t1".to_string()), (2, "t1".to_string())]
    );
    assert_eq!(
        committed(&sink, "c"),
        vec![(1, "t1".to_string()), (2, "t1".to_string())],
        "the changelog must hold each change of the resent transaction once"
    );
    assert!(
        std::fs::read_dir(dir.path())
            .expect("spill dir")
            .next()
            .is_none(),
        "the void transaction's spill files were left behind"
    );
}

#[tokio::test]
async fn a_table_with_its_own_max_latency_commits_on_its_own_cadence() {
    // the run's max_latency is an hour; table `u` asks for 50 ms
    let config =
        config_with("idle_rows = 0\n\n[sink.tables.\"public.u\"]\nmax_latency = \"50ms\"\n");
    assert_eq!(
        config.shortest_max_latency(),
        std::time::Duration::from_millis(50),
        "the pipeline looks for due tables at the shortest cadence"
    );
    let (mut pipeline, _acknowledged) = pipeline_with(config);
    let t1 = transaction(
        100,
        vec![
            change("u", 100, Op::Insert, 1, "t1"),
            change("c", 100, Op::Insert, 1, "t1"),
        ],
    );
    for event in t1 {
        pipeline.handle(event).await.expect("handle");
    }
    pipeline.flush_due(false).await.expect("flush what is due");
    assert!(
        pipeline.sink.commits.is_empty(),
        "nothing is due before 50 ms"
    );
    tokio::time::sleep(std::time::Duration::from_millis(80)).await;
    pipeline.flush_due(false).await.expect("flush what is due");
    let committed: Vec<String> = pipeline
        .sink
        .commits
        .iter()
        .map(|d| d.table.to_string())
        .collect();
    assert_eq!(
        committed,
        vec!["public.u".to_string()],
        "only the table whose own max_latency passed commits; the other waits for the run's"
    );
}

/// A transaction holding only `request`'s watermark `mark`, committing at `lsn`.
fn watermark(
    lsn: u64,
    request: &chunks::ChunkRequest,
    mark: crate::source::chunk::Mark,
) -> Vec<SourceEvent> {
    transaction(
        lsn,
        vec![SourceEvent::Watermark(crate::source::chunk::Watermark {
            copy: request.copy.clone(),
            table: request.table.to_string(),
            range: request.range as u32,
            chunk: request.chunk,
            attempt: request.attempt,
            mark,
        })],
    )
}

/// Leaves `(id, v)` rows in the inbox as `request`'s read, ending at `last`.
fn read_chunk(
    pipeline: &Pipeline<RecordingSink>,
    request: &chunks::ChunkRequest,
    rows: &[(i32, &str)],
    last: &str,
) {
    read_chunk_at(pipeline, request, request.chunk, rows, last);
}

/// [`read_chunk`] of chunk `chunk` of `request`'s read (one read ahead of the stream).
fn read_chunk_at(
    pipeline: &Pipeline<RecordingSink>,
    request: &chunks::ChunkRequest,
    chunk: u64,
    rows: &[(i32, &str)],
    last: &str,
) {
    let schema = schema("u");
    let batch = RecordBatch::try_new(
        schema.arrow.clone(),
        vec![
            Arc::new(Int32Array::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
        ],
    )
    .expect("chunk");
    let put = pipeline.chunk_inbox().put(
        &request.table,
        chunks::ChunkRead {
            copy: request.copy.clone(),
            range: request.range,
            chunk,
            attempt: request.attempt,
            schema,
            data: crate::source::chunk::Chunk {
                rows: vec![batch],
                count: rows.len() as u64,
                last_key: Some(vec![last.to_string()]),
            },
        },
    );
    assert!(put, "the pipeline waits for this read");
}

/// `request`'s watermark `mark` of chunk `chunk`, in a transaction committing at `lsn`.
fn watermark_at(
    lsn: u64,
    request: &chunks::ChunkRequest,
    chunk: u64,
    mark: crate::source::chunk::Mark,
) -> Vec<SourceEvent> {
    let request = chunks::ChunkRequest {
        chunk,
        ..request.clone()
    };
    watermark(lsn, &request, mark)
}

/// Table `u` copied in chunks of 4 rows from LSN 10 (`resumed`: after a restart).
fn copying(resumed: bool) -> (Pipeline<RecordingSink>, chunks::ChunkRequest) {
    let mut config = (*config()).clone();
    config.source.snapshot_chunk_rows = 4;
    let (mut pipeline, _) = pipeline_with(Arc::new(config));
    let table = TableId::new("public", "u");
    let progress = crate::table::CopyProgress::start(Some(8), 4);
    let copy = if resumed {
        chunks::ChunkedCopy::resume(vec!["id".into()], progress, Vec::new())
    } else {
        chunks::ChunkedCopy::start(vec!["id".into()], progress)
    };
    pipeline.start_chunked(&table, Lsn(10), schema("u"), copy);
    let request = pipeline.chunk_requests().pop().expect("a chunk to read");
    assert!(pipeline.chunk_requests().is_empty(), "one read at a time");
    (pipeline, request)
}

/// A copy resumed after a stop has its pace from the lake's commits of its latest chunks
/// before any commit of its own: its first report gives a rate and the time left. Without
/// them (none kept, or all older than the pace's window) it has none until it commits twice.
#[test]
fn a_resumed_copy_reports_its_pace_from_the_lakes_commits_at_once() {
    let commit = |chunks: u64, seconds: i64| crate::table::ChunkCommit {
        chunks,
        rows: chunks * 1000,
        at_ms: 1_700_000_000_000 + seconds * 1000,
    };
    let mut progress = crate::table::CopyProgress::start(Some(100_000), 1000);
    progress.chunks = 30;
    progress.rows = 30_000;
    // newest first, as the lake's history gives them: 1000 rows/s over chunks 10 to 30
    let commits: Vec<_> = (0..30u64).rev().map(|c| commit(c + 1, c as i64)).collect();
    let key = vec!["id".to_string()];
    let resumed = chunks::ChunkedCopy::resume(key.clone(), progress.clone(), commits.clone());
    assert_eq!(
        resumed.describe(),
        "copying 30 % (chunk 30/100, 1 000 rows/s, ETA 1 min)"
    );
    let unseeded = chunks::ChunkedCopy::resume(key.clone(), progress.clone(), Vec::new());
    assert_eq!(unseeded.describe(), "copying 30 % (chunk 30/100)");
    // commits of another copy's earlier chunks (more than 20 back) give no pace
    let old: Vec<_> = commits.iter().filter(|c| c.chunks < 5).copied().collect();
    let stale = chunks::ChunkedCopy::resume(key, progress, old);
    assert_eq!(stale.describe(), "copying 30 % (chunk 30/100)");
}

/// A transaction committed below the copy's start (the stream lagging behind the copy's
/// emptying commit, or a restart streaming from an older checkpoint) is in the lake's past:
/// the table skips it, so its keys must not be dropped from the chunks, which then bring the
/// rows as PostgreSQL holds them.
#[tokio::test]
async fn a_change_below_the_copys_start_keeps_its_key_in_the_chunk() {
    use crate::source::chunk::Mark;
    let (mut pipeline, request) = copying(false);
    let mut events = transaction(5, vec![change("u", 5, Op::Update, 2, "before the copy")]);
    events.extend(watermark(110, &request, Mark::Low));
    for event in events {
        pipeline.handle(event).await.expect("handle");
    }
    read_chunk(
        &pipeline,
        &request,
        &[
            (1, "chunk"),
            (2, "before the copy"),
            (3, "chunk"),
            (4, "chunk"),
        ],
        "4",
    );
    for event in watermark(130, &request, Mark::High) {
        pipeline.handle(event).await.expect("handle");
    }
    pipeline.flush_all().await.expect("flush");
    let mut rows = committed(&pipeline.into_sink(), "u");
    rows.sort();
    assert_eq!(
        rows,
        vec![
            (1, "chunk".to_string()),
            (2, "before the copy".to_string()),
            (3, "chunk".to_string()),
            (4, "chunk".to_string())
        ]
    );
}

#[tokio::test]
async fn a_chunk_joins_at_its_high_watermark_without_the_keys_the_stream_changed() {
    use crate::source::chunk::Mark;
    let (mut pipeline, request) = copying(false);
    let mut events = transaction(100, vec![change("u", 100, Op::Insert, 2, "stream")]);
    events.extend(watermark(110, &request, Mark::Low));
    events.extend(transaction(
        120,
        vec![change("u", 120, Op::Update, 3, "stream")],
    ));
    for event in events {
        pipeline.handle(event).await.expect("handle");
    }
    // read between the watermarks: keys 2 and 3 as the read saw them
    read_chunk(
        &pipeline,
        &request,
        &[(1, "chunk"), (2, "chunk"), (3, "old"), (4, "chunk")],
        "4",
    );
    for event in watermark(130, &request, Mark::High) {
        pipeline.handle(event).await.expect("handle");
    }
    assert!(
        pipeline.chunk_requests().is_empty(),
        "the reading task reads the next chunks itself"
    );
    pipeline.flush_all().await.expect("flush");
    let sink = pipeline.into_sink();
    let mut rows = committed(&sink, "u");
    rows.sort();
    assert_eq!(
        rows,
        vec![
            (1, "chunk".to_string()),
            (2, "stream".to_string()),
            (3, "stream".to_string()),
            (4, "chunk".to_string())
        ]
    );
    let last = sink.commits.last().expect("a commit");
    assert_eq!(
        last.lsn,
        Some(Lsn(130)),
        "the commit is at the high watermark"
    );
    let progress = crate::table::CopyProgress::decode(last.copy.as_deref().expect("progress"))
        .expect("progress");
    assert_eq!(
        (progress.chunks, progress.ranges[0].after.clone()),
        (1, Some(vec!["4".to_string()]))
    );
}

#[tokio::test]
async fn chunks_read_ahead_join_in_order_each_without_the_keys_changed_before_its_high_watermark() {
    use crate::source::chunk::Mark;
    let (mut pipeline, request) = copying(false);
    // two chunks read before the stream brings either's watermarks
    read_chunk_at(
        &pipeline,
        &request,
        0,
        &[(1, "chunk"), (2, "chunk"), (3, "chunk"), (4, "chunk")],
        "4",
    );
    read_chunk_at(
        &pipeline,
        &request,
        1,
        &[(5, "chunk"), (6, "old"), (7, "chunk"), (8, "chunk")],
        "8",
    );
    let mut events = watermark_at(110, &request, 0, Mark::Low);
    events.extend(watermark_at(120, &request, 0, Mark::High));
    events.extend(watermark_at(130, &request, 1, Mark::Low));
    // key 6 changed after chunk 0 joined, before chunk 1's high watermark
    events.extend(transaction(
        140,
        vec![change("u", 140, Op::Update, 6, "stream")],
    ));
    events.extend(watermark_at(150, &request, 1, Mark::High));
    for event in events {
        pipeline.handle(event).await.expect("handle");
    }
    assert!(pipeline.chunk_requests().is_empty(), "still reading");
    pipeline.flush_all().await.expect("flush");
    let sink = pipeline.into_sink();
    let mut rows = committed(&sink, "u");
    rows.sort();
    let expected: Vec<(i32, String)> = (1..=8)
        .map(|k| (k, if k == 6 { "stream" } else { "chunk" }.to_string()))
        .collect();
    assert_eq!(rows, expected);
    let last = sink.commits.last().expect("a commit");
    let progress = crate::table::CopyProgress::decode(last.copy.as_deref().expect("progress"))
        .expect("progress");
    assert_eq!(
        (progress.chunks, progress.ranges[0].after.clone()),
        (2, Some(vec!["8".to_string()]))
    );
}

#[tokio::test]
async fn a_reading_task_waits_while_its_window_is_full_and_stops_when_replaced() {
    let (pipeline, request) = copying(false);
    let inbox = pipeline.chunk_inbox();
    let (copy, attempt) = (request.copy.clone(), request.attempt);
    let room = |window| inbox.room(&request.table, &copy, attempt, request.range, window);
    assert!(room(2).await, "room for the first chunk");
    read_chunk_at(&pipeline, &request, 0, &[(1, "a")], "1");
    read_chunk_at(&pipeline, &request, 1, &[(2, "b")], "2");
    let full = tokio::time::timeout(std::time::Duration::from_millis(50), room(2)).await;
    assert!(full.is_err(), "two chunks wait: no room for a third");
    assert!(room(3).await, "a wider window has room");
    // another attempt is expected now: the waiting task is told to stop
    let waiting = room(2);
    inbox.wait_for(&request.table, Some((copy.clone(), attempt + 1)));
    assert!(!waiting.await, "the replaced read stops");
}

#[tokio::test]
async fn a_chunk_read_under_another_attempt_or_without_its_low_watermark_is_read_again() {
    use crate::source::chunk::Mark;
    let (mut pipeline, request) = copying(false);
    // the high watermark alone (the low one was lost with a failed read): read again
    read_chunk(&pipeline, &request, &[(1, "chunk")], "1");
    for event in watermark(130, &request, Mark::High) {
        pipeline.handle(event).await.expect("handle");
    }
    let again = pipeline.chunk_requests().pop().expect("the chunk again");
    assert_eq!((again.chunk, again.attempt), (0, 1));
    // the old attempt's watermarks are passed over
    let mut events = watermark(140, &request, Mark::Low);
    events.extend(watermark(150, &request, Mark::High));
    for event in events {
        pipeline.handle(event).await.expect("handle");
    }
    assert!(
        pipeline.chunk_requests().is_empty(),
        "the new read is under way"
    );
    pipeline.flush_all().await.expect("flush");
    assert!(committed(&pipeline.into_sink(), "u").is_empty());
}

#[tokio::test]
async fn a_resumed_copy_writes_its_rows_as_upserts_and_the_last_chunk_completes_it() {
    use crate::source::chunk::Mark;
    let (mut pipeline, request) = copying(true);
    let mut events = watermark(110, &request, Mark::Low);
    read_chunk(&pipeline, &request, &[(5, "chunk")], "5");
    events.extend(watermark(120, &request, Mark::High));
    for event in events {
        pipeline.handle(event).await.expect("handle");
    }
    // fewer rows than a chunk: the last one; its commit is due at once and carries no progress
    assert!(pipeline.chunk_requests().is_empty(), "the copy is done");
    pipeline.tick().await.expect("tick");
    let sink = pipeline.into_sink();
    let last = sink.commits.last().expect("the copy's last commit");
    assert_eq!(last.copy, None, "the copy is complete");
    assert_eq!(
        last.deletes.iter().map(|b| b.num_rows()).sum::<usize>(),
        1,
        "the resumed copy's row deletes its key first"
    );
    assert_eq!(committed(&sink, "u"), vec![(5, "chunk".to_string())]);
}

/// Table `u`, of 16 rows, copied in chunks of 4 rows from LSN 10 in two key ranges split
/// after key 8; the requests of the two ranges, in key order.
fn copying_in_two_ranges() -> (Pipeline<RecordingSink>, Vec<chunks::ChunkRequest>) {
    let mut config = (*config()).clone();
    config.source.snapshot_chunk_rows = 4;
    let (mut pipeline, _) = pipeline_with(Arc::new(config));
    let table = TableId::new("public", "u");
    let progress = crate::table::CopyProgress::start(Some(16), 4).split(vec![vec!["8".into()]]);
    let copy = chunks::ChunkedCopy::start(vec!["id".into()], progress);
    pipeline.start_chunked(&table, Lsn(10), schema("u"), copy);
    let requests = pipeline.chunk_requests();
    assert!(
        pipeline.chunk_requests().is_empty(),
        "each range is read once"
    );
    (pipeline, requests)
}

/// The key ranges of a split copy are read side by side: each request bounds its keys, their
/// chunks join at their own watermarks in whatever order those come, the commits carry each
/// range's progress, and the copy completes when the last range's last chunk is in. A failed
/// read starts every range not read to its end again, each from its own next chunk.
#[tokio::test]
async fn the_key_ranges_of_a_split_copy_join_in_any_order_and_complete_together() {
    use crate::source::chunk::Mark;
    let (mut pipeline, requests) = copying_in_two_ranges();
    let [first, second] = &requests[..] else {
        panic!("two ranges: {requests:?}");
    };
    let key = |k: &str| Some(vec![k.to_string()]);
    assert_eq!(
        (first.range, first.after.clone(), first.upto.clone()),
        (0, None, key("8"))
    );
    assert_eq!(
        (second.range, second.after.clone(), second.upto.clone()),
        (1, key("8"), None)
    );
    // the second range's first chunk joins before the first range's; key 10 changed in the
    // stream meanwhile
    read_chunk(
        &pipeline,
        second,
        &[(9, "chunk"), (10, "old"), (11, "chunk"), (12, "chunk")],
        "12",
    );
    read_chunk(
        &pipeline,
        first,
        &[(1, "chunk"), (2, "chunk"), (3, "chunk"), (4, "chunk")],
        "4",
    );
    let mut events = watermark(110, second, Mark::Low);
    events.extend(watermark(115, first, Mark::Low));
    events.extend(transaction(
        120,
        vec![change("u", 120, Op::Update, 10, "stream")],
    ));
    events.extend(watermark(130, second, Mark::High));
    events.extend(watermark(140, first, Mark::High));
    for event in events {
        pipeline.handle(event).await.expect("handle");
    }
    pipeline.flush_all().await.expect("flush");
    // the first range's next chunk fails to read: both ranges are read again, from their
    // own next chunks, under a new attempt
    pipeline
        .chunk_failed(
            &first.table,
            first.id.clone(),
            Error::Io {
                path: "chunk".into(),
                source: std::io::Error::from(std::io::ErrorKind::TimedOut),
            },
        )
        .await
        .expect("a retryable failure");
    let again = pipeline.chunk_requests();
    let resumed: Vec<_> = again
        .iter()
        .map(|r| (r.range, r.chunk, r.attempt, r.after.clone()))
        .collect();
    assert_eq!(
        resumed,
        vec![(0, 1, 1, key("4")), (1, 1, 1, key("12"))],
        "each range from its own next chunk"
    );
    let [first, second] = &again[..] else {
        panic!("two ranges again: {again:?}");
    };
    // the first range ends (a short chunk); the copy is not complete until the second does
    read_chunk(&pipeline, first, &[(5, "chunk"), (7, "chunk")], "7");
    let mut events = watermark(150, first, Mark::Low);
    events.extend(watermark(160, first, Mark::High));
    for event in events {
        pipeline.handle(event).await.expect("handle");
    }
    pipeline.flush_all().await.expect("flush");
    read_chunk(&pipeline, second, &[(13, "chunk")], "13");
    let mut events = watermark(170, second, Mark::Low);
    events.extend(watermark(180, second, Mark::High));
    for event in events {
        pipeline.handle(event).await.expect("handle");
    }
    assert!(pipeline.chunk_requests().is_empty(), "the copy is done");
    pipeline.flush_all().await.expect("flush");
    let sink = pipeline.into_sink();
    let progress: Vec<_> = sink
        .commits
        .iter()
        .map(|c| {
            c.copy.as_deref().map(|text| {
                let p = crate::table::CopyProgress::decode(text).expect("progress");
                let ranges: Vec<_> = p
                    .ranges
                    .iter()
                    .map(|r| (r.chunks, r.after.clone(), r.done))
                    .collect();
                (p.chunks, p.rows, ranges)
            })
        })
        .collect();
    assert_eq!(
        progress,
        vec![
            Some((2, 8, vec![(1, key("4"), false), (1, key("12"), false)])),
            Some((3, 10, vec![(2, key("7"), true), (1, key("12"), false)])),
            None,
        ],
        "each commit carries every range's progress; the last completes the copy"
    );
    let mut rows = committed(&sink, "u");
    rows.sort();
    let expected: Vec<(i32, String)> = [1, 2, 3, 4, 5, 7, 9, 10, 11, 12, 13]
        .into_iter()
        .map(|k| (k, if k == 10 { "stream" } else { "chunk" }.to_string()))
        .collect();
    assert_eq!(rows, expected);
}

/// A resync request of `table` in a transaction of its own committing at `lsn`.
fn resync_request(table: &str, lsn: u64) -> Vec<SourceEvent> {
    transaction(lsn, vec![SourceEvent::Resync(schema(table).table.clone())])
}

#[tokio::test]
async fn a_resync_request_is_taken_up_once_above_the_checkpoint_and_not_during_a_copy() {
    let (mut pipeline, _acknowledged) = pipeline();
    let u = schema("u").table.clone();
    // below the checkpoint: a request the lake already took up, streamed again
    for event in resync_request("u", 8) {
        pipeline.handle(event).await.expect("handle");
    }
    assert!(pipeline.take_discovered().is_empty());
    // a change buffered before the request is in the copy: dropped
    for event in transaction(15, vec![change("u", 15, Op::Insert, 1, "a")]) {
        pipeline.handle(event).await.expect("handle");
    }
    for event in resync_request("u", 20) {
        pipeline.handle(event).await.expect("handle");
    }
    assert_eq!(pipeline.take_discovered(), vec![u.clone()]);
    let state = &pipeline.tables()[&u];
    assert!(state.awaiting_copy && state.checkpoint.is_none() && state.buffer.is_empty());
    // again while the table waits for its copy, and for a table this run does not stream
    for event in resync_request("u", 30)
        .into_iter()
        .chain(resync_request("gone", 40))
    {
        pipeline.handle(event).await.expect("handle");
    }
    assert!(pipeline.take_discovered().is_empty());
}

/// Takes a resync request of `u` at LSN 20 and traffic after it, then the emptying commit of
/// its copy (chunked, or in one piece): the acknowledgement stays below the request until
/// then, so a run that fails in between leaves it in the slot for the next start.
async fn resync_held_until_emptied(chunked: bool) {
    let (mut pipeline, acknowledged) = pipeline();
    let u = schema("u").table.clone();
    for event in resync_request("u", 20)
        .into_iter()
        .chain(transaction(30, vec![change("c", 30, Op::Insert, 1, "a")]))
    {
        pipeline.handle(event).await.expect("handle");
    }
    pipeline.flush_all().await.expect("flush");
    pipeline
        .handle(SourceEvent::Idle {
            server_lsn: Lsn(100),
        })
        .await
        .expect("idle");
    pipeline.tick().await.expect("tick");
    assert!(
        pipeline
            .sink_mut()
            .commits
            .iter()
            .any(|d| d.table.name == "c"),
        "the other table commits meanwhile"
    );
    assert_eq!(pipeline.take_discovered(), vec![u.clone()]);
    assert_eq!(
        *acknowledged.borrow(),
        Lsn(19),
        "acknowledged past the resync request before its copy emptied the table"
    );
    // the copy's emptying commit, as `copy` makes it, lands
    if chunked {
        let copy = chunks::ChunkedCopy::start(
            vec!["id".into()],
            crate::table::CopyProgress::start(None, 4),
        );
        pipeline.start_chunked(&u, Lsn(99), schema("u"), copy);
    } else {
        pipeline.copied(&u, Lsn(99), schema("u"));
    }
    pipeline.tick().await.expect("tick");
    assert_eq!(
        *acknowledged.borrow(),
        Lsn(100),
        "the acknowledgement stayed held after the emptying commit"
    );
}

#[tokio::test]
async fn the_acknowledgement_stays_below_a_resync_request_until_its_copy_empties_the_table() {
    resync_held_until_emptied(true).await;
    resync_held_until_emptied(false).await;
}

#[tokio::test]
async fn a_resync_request_for_a_table_gone_from_the_catalog_holds_nothing() {
    let (mut pipeline, acknowledged) = pipeline();
    let u = schema("u").table.clone();
    for event in resync_request("u", 20) {
        pipeline.handle(event).await.expect("handle");
    }
    pipeline
        .handle(SourceEvent::Idle {
            server_lsn: Lsn(100),
        })
        .await
        .expect("idle");
    assert_eq!(*acknowledged.borrow(), Lsn(19));
    // the copy found no table to copy
    pipeline.copy_abandoned(&u);
    pipeline.tick().await.expect("tick");
    assert_eq!(*acknowledged.borrow(), Lsn(100));
}
