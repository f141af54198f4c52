//! A table that joins the publication while `run` streams is copied in key-ordered chunks
//! beside the stream, bracketed by watermarks in the WAL, against the real PostgreSQL: a
//! workload updates, deletes and re-inserts keys inside and around the chunk being read, the
//! writer is killed with SIGKILL during the copy, and the restarted writer resumes after the
//! last committed chunk. The lake must then equal PostgreSQL (`verify` and DuckDB), and no
//! chunk may have been read more than twice. The watermarks are counted from the WAL itself,
//! through a `test_decoding` slot of the test's own.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::TestDb;
use support::delta::{delta_copy_progress, delta_query};
use support::writer::{
    assert_same_lines, caught_up, command_ok, duck_query, lake_copy_progress, log_of, start_with,
    stop, wait_for_chunks, wait_until_chunks,
};

/// Rows of the joining table, and rows per chunk: a copy of 60 chunks in the suite. A longer
/// run by hand sets both, e.g. `LAKEWRITER_TEST_COPY_ROWS=2000000
/// LAKEWRITER_TEST_CHUNK_ROWS=20000` (100 chunks of the issue's 2 M rows).
fn rows() -> i64 {
    // large enough that the copy outlasts the test's reads of the lake mid-copy on a loaded
    // machine (at 120 000 it once ended before them)
    knob("LAKEWRITER_TEST_COPY_ROWS", 300_000)
}

fn chunk_rows() -> i64 {
    knob("LAKEWRITER_TEST_CHUNK_ROWS", 2_000)
}

fn knob(name: &str, default: i64) -> i64 {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| panic!("{name}={value}: not a positive number")),
        Err(_) => default,
    }
}

/// Chunks of `chunk_rows()`, and the copy's progress in the log every second.
fn settings() -> Vec<(&'static str, String)> {
    vec![
        ("SOURCE__SNAPSHOT_CHUNK_ROWS", chunk_rows().to_string()),
        ("METRICS__PROGRESS_INTERVAL", "1s".to_string()),
    ]
}

fn as_pairs<'a>(settings: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    settings.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The low watermarks of `joined`'s chunks in the WAL, by key range and chunk number, and the
/// chunk of each range read last: read (and consumed) from the test's `test_decoding` slot.
#[derive(Debug, Default)]
struct Reads {
    by_chunk: BTreeMap<(u64, u64), u32>,
    latest: BTreeMap<u64, u64>,
}

async fn drain_watermarks(client: &tokio_postgres::Client, watch: &str, reads: &Mutex<Reads>) {
    let rows = client
        .query(
            "SELECT data FROM pg_logical_slot_get_changes($1, NULL, NULL) \
             WHERE data LIKE 'message: transactional: 1 prefix: lakewriter%'",
            &[&watch],
        )
        .await
        .expect("read the watch slot");
    let mut reads = reads.lock().expect("reads");
    for row in rows {
        let data: String = row.get(0);
        let Some(content) = data.split_once("content:").map(|(_, c)| c) else {
            continue;
        };
        let Ok(mark) = serde_json::from_str::<serde_json::Value>(content) else {
            continue;
        };
        if mark["table"] == "public.joined" && mark["mark"] == "low" {
            let chunk = mark["chunk"].as_u64().expect("a chunk number");
            let range = mark["range"].as_u64().unwrap_or(0);
            *reads.by_chunk.entry((range, chunk)).or_default() += 1;
            reads.latest.insert(range, chunk);
        }
    }
}

/// Until `stop`: rounds of changes to `joined`, each one transaction that updates, deletes
/// and re-inserts keys of the chunks being read (each key range's latest low watermark's,
/// the ranges taken as equal parts of the keys) and of the next ones, deletes and re-inserts
/// keys anywhere, and adds keys past the end; between rounds the watermarks are counted.
fn workload(
    db: &TestDb,
    watch: String,
    reads: Arc<Mutex<Reads>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u32> {
    let url = db.url.clone();
    tokio::spawn(async move {
        let client = support::connect(&url).await;
        let mut round = 0u32;
        while !stop.load(Ordering::Relaxed) {
            drain_watermarks(&client, &watch, &reads).await;
            // the keys of the chunks being read, and of the next (deletes shift the bounds)
            let lows: Vec<i64> = {
                let reads = reads.lock().expect("reads");
                let ranges = reads.latest.len().max(1) as i64;
                let mut lows: Vec<i64> = reads
                    .latest
                    .iter()
                    .map(|(&range, &chunk)| {
                        range as i64 * rows() / ranges + chunk as i64 * chunk_rows()
                    })
                    .collect();
                if lows.is_empty() {
                    lows.push(0);
                }
                lows
            };
            let around: String = lows
                .iter()
                .map(|low| {
                    format!(
                        "UPDATE joined SET v = v + 1, note = 'u{round}'
                           WHERE id IN (SELECT {low} + (random() * {span})::int
                                        FROM generate_series(1, 20));
                         DELETE FROM joined
                           WHERE id IN (SELECT {low} + (random() * {span})::int
                                        FROM generate_series(1, 8));
                         INSERT INTO joined (id, v, note)
                           SELECT DISTINCT {low} + (random() * {span})::int, {round}, 'r{round}'
                           FROM generate_series(1, 8)
                           ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v, note = EXCLUDED.note;",
                        span = 2 * chunk_rows(),
                    )
                })
                .collect();
            let sql = format!(
                "BEGIN;
                 {around}
                 UPDATE joined SET v = -v
                   WHERE id IN (SELECT 1 + (random() * {all})::int FROM generate_series(1, 10));
                 DELETE FROM joined
                   WHERE id IN (SELECT 1 + (random() * {all})::int FROM generate_series(1, 5));
                 INSERT INTO joined (id, v, note)
                   SELECT 1 + (random() * {all})::int, {round}, 'back{round}'
                   FROM generate_series(1, 5)
                   ON CONFLICT (id) DO NOTHING;
                 INSERT INTO joined (id, v, note) VALUES ({all} + 1 + {round}, {round}, 'tail')
                   ON CONFLICT (id) DO NOTHING;
                 UPDATE orders SET status = 'r{round}' WHERE order_id = 1 + {round} % 500;
                 COMMIT;",
                all = rows(),
            );
            client.batch_execute(&sql).await.expect("a workload round");
            round += 1;
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        drain_watermarks(&client, &watch, &reads).await;
        round
    })
}

/// The lake table `joined` is written to, as `status` names it.
fn lake_name(db: &TestDb) -> String {
    format!("{}.joined", db.namespace)
}

/// `52 300`: as `status` writes a rate.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(d);
    }
    out
}

async fn joined_in_postgres(db: &TestDb) -> Vec<String> {
    db.client()
        .await
        .query(
            "SELECT id::text || '|' || v::text || '|' || note FROM joined ORDER BY id",
            &[],
        )
        .await
        .expect("read joined")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Whether the writer's `log` says the chunked copy of `joined` completed.
fn copied_joined(log: &str) -> bool {
    log.lines().any(|l| {
        l.contains("copied the table in chunks while streaming") && l.contains("public.joined")
    })
}

/// Adds `joined` to the test's publication.
async fn publish_joined(db: &TestDb, client: &tokio_postgres::Client) {
    client
        .batch_execute(&format!(
            "ALTER PUBLICATION {} ADD TABLE joined",
            db.publication
        ))
        .await
        .expect("publish joined");
}

/// Creates the `joined` table with its `rows()` rows, and the test's `test_decoding` slot that
/// counts the chunks' watermarks; the slot's name.
async fn create_joined(db: &TestDb, client: &tokio_postgres::Client) -> String {
    client
        .batch_execute(&format!(
            "CREATE TABLE joined (id int PRIMARY KEY, v int NOT NULL, note text);
             INSERT INTO joined SELECT g, g, 'n' || g FROM generate_series(1, {rows}) g;
             ANALYZE joined;",
            rows = rows()
        ))
        .await
        .expect("create joined");
    let watch = format!("{}_watch", db.slot);
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
            &[&watch],
        )
        .await
        .expect("create the watch slot");
    watch
}

#[tokio::test]
async fn a_joining_table_copied_in_chunks_through_a_workload_and_kill_9_equals_postgres() {
    let db = TestDb::new("chunked_copy").await;
    db.psql(&["-v", "rows=2000", "-f", "sql/orders.sql"]);
    let settings = settings();
    let mut writer = start_with(&db, &as_pairs(&settings));
    caught_up(&db, &mut writer).await;

    let client = db.client().await;
    let watch = create_joined(&db, &client).await;
    publish_joined(&db, &client).await;
    copied_through_a_workload_and_kill_9(&db, writer, &watch, &as_pairs(&settings)).await;
}

#[tokio::test]
async fn a_first_start_with_initial_copy_chunked_copies_beside_the_stream_through_kill_9() {
    let db = TestDb::new("chunked_initial").await;
    db.psql(&["-v", "rows=2000", "-f", "sql/orders.sql"]);
    let client = db.client().await;
    let watch = create_joined(&db, &client).await;
    let settings = settings();
    let mut settings = as_pairs(&settings);
    settings.push(("SOURCE__INITIAL_COPY", "chunked"));
    let writer = start_with(&db, &settings);
    let (first, _) = copied_through_a_workload_and_kill_9(&db, writer, &watch, &settings).await;
    assert!(
        first.contains("initial_copy = \"chunked\""),
        "the first start did not copy beside the stream: {first}"
    );
    // orders was copied in chunks too, at the same start, and completed first
    assert!(
        first
            .lines()
            .any(|l| l.contains("copied the table in chunks") && l.contains("public.orders")),
        "{first}"
    );
}

/// The restarted writer's `log` resumed the copy after its last committed chunk and
/// completed it; the WAL's watermarks (`reads`) show every chunk the rows left in `joined`
/// fill read, more than the `killed_at` committed before the kill, none more than twice;
/// and the workload ran its `rounds`.
async fn assert_resumed_reading_each_chunk_at_most_twice(
    db: &TestDb,
    log: &str,
    reads: &Mutex<Reads>,
    rounds: u32,
    killed_at: u64,
) {
    assert!(
        log.contains("resuming the table's chunked copy after its last committed chunk"),
        "the copy did not resume: {log}"
    );
    assert!(
        log.contains("copied the table in chunks while streaming"),
        "{log}"
    );
    let by_chunk = reads.lock().expect("reads").by_chunk.clone();
    let chunks = by_chunk.len() as u64;
    // per key range, its chunks' numbers from 0 without a gap
    let mut per_range: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for &(range, chunk) in by_chunk.keys() {
        per_range.entry(range).or_default().push(chunk);
    }
    let gapless = per_range
        .values()
        .all(|chunks| chunks.iter().copied().eq(0..chunks.len() as u64));
    println!(
        "{rounds} workload rounds; killed after {killed_at} committed chunks; reads by chunk: \
         {by_chunk:?}"
    );
    // the workload deletes more rows than it adds, so the copy needed at least as many
    // chunks as the rows left now fill, every one of them read, none skipped
    let left: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM joined", &[])
        .await
        .expect("count joined")
        .get(0);
    assert!(
        chunks >= (left / chunk_rows()) as u64 && chunks > killed_at && gapless,
        "the WAL shows {chunks} chunks read, {left} rows left: {by_chunk:?}"
    );
    // `source.snapshot_parallelism` (2 by default) key ranges, read side by side
    assert_eq!(
        per_range.keys().copied().collect::<Vec<_>>(),
        vec![0, 1],
        "the copy was not split in two key ranges: {by_chunk:?}"
    );
    let thrice: Vec<(&(u64, u64), &u32)> = by_chunk.iter().filter(|(_, n)| **n > 2).collect();
    assert!(thrice.is_empty(), "chunks read more than twice: {thrice:?}");
    assert!(rounds > 20, "the workload ran only {rounds} rounds");
}

/// The chunks committed so far of the chunked copy of Delta table `joined`, from its log.
fn delta_chunks(db: &TestDb) -> Option<u64> {
    delta_copy_progress(&delta_location(db), &lake_name(db))
        .and_then(|p| serde_json::from_str::<serde_json::Value>(&p).ok())
        .and_then(|p| p["chunks"].as_u64())
}

fn delta_location(db: &TestDb) -> std::path::PathBuf {
    db.warehouse.path().join(&db.namespace).join("joined")
}

const DELTA: [(&str, &str); 1] = [("SINK__FORMAT", "delta")];

/// [`settings`] for a Delta lake.
fn delta_settings() -> Vec<(&'static str, String)> {
    let mut settings = settings();
    settings.push((DELTA[0].0, DELTA[0].1.to_string()));
    settings
}

/// The Delta table `joined` holds PostgreSQL's rows, each key once, and `verify` agrees.
async fn assert_delta_joined_equals_postgres(db: &TestDb, log: &str) {
    let location = delta_location(db);
    assert_eq!(
        delta_query(
            &location,
            "SELECT count(*) - count(DISTINCT id) FROM {scan}"
        ),
        vec!["0".to_string()],
        "duplicated keys in the Delta table"
    );
    let lake = delta_query(
        &location,
        "SELECT id || '|' || v || '|' || note FROM {scan} ORDER BY id",
    );
    let postgres = joined_in_postgres(db).await;
    assert_same_lines("joined", &lake, &postgres, log);
    command_ok(db, &["verify"], &DELTA);
}

#[tokio::test]
async fn a_table_joining_a_delta_lake_is_copied_in_chunks_through_a_workload_and_kill_9() {
    let db = TestDb::new("chunked_delta").await;
    db.psql(&["-v", "rows=2000", "-f", "sql/orders.sql"]);
    let settings = delta_settings();
    let settings = as_pairs(&settings);
    let mut writer = start_with(&db, &settings);
    caught_up(&db, &mut writer).await;

    let client = db.client().await;
    let watch = create_joined(&db, &client).await;
    publish_joined(&db, &client).await;
    let reads = Arc::new(Mutex::new(Reads::default()));
    let stop_workload = Arc::new(AtomicBool::new(false));
    let running = workload(&db, watch.clone(), reads.clone(), stop_workload.clone());

    // SIGKILL once a few chunks are committed, well before the last
    let (writer, killed_at) = wait_until_chunks(writer, "joined", 3, || delta_chunks(&db)).await;
    let first_log = log_of(writer);
    assert!(
        first_log.contains("copying the table in chunks beside the stream"),
        "the table was not copied in chunks into Delta: {first_log}"
    );
    assert!(
        !copied_joined(&first_log),
        "the copy ended before the kill: make the table larger"
    );

    // the log says how far the copy got, with the writer down, through status too; a
    // compaction mid-copy keeps it
    let committed = delta_chunks(&db).expect("the log holds the copy's progress after the kill");
    let status = command_ok(&db, &["status"], &DELTA);
    let expected = format!("(chunk {committed}/{}", rows() / chunk_rows());
    assert!(
        status
            .lines()
            .any(|l| l.contains("joined: copying") && l.contains(&expected)),
        "status does not show the Delta copy's progress ({expected}): {status}"
    );
    let before = delta_copy_progress(&delta_location(&db), &lake_name(&db));
    let compacted = command_ok(&db, &["compact"], &DELTA);
    assert_eq!(
        delta_copy_progress(&delta_location(&db), &lake_name(&db)),
        before,
        "compact dropped the copy's progress: {compacted}"
    );

    // the restarted writer resumes after the last committed chunk, under the same workload
    let mut writer = start_with(&db, &settings);
    let deadline = Instant::now() + Duration::from_secs(300 + rows() as u64 / 2_000);
    while delta_chunks(&db).is_some() {
        if let Ok(Some(status)) = writer.try_wait() {
            panic!("lakewriter exited early with {status}: {}", log_of(writer));
        }
        assert!(
            Instant::now() < deadline,
            "the copy never completed: {}",
            log_of(writer)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_workload.store(true, Ordering::Relaxed);
    let rounds = running.await.expect("the workload");
    caught_up(&db, &mut writer).await;
    let log = stop(writer);
    assert_resumed_reading_each_chunk_at_most_twice(&db, &log, &reads, rounds, killed_at).await;

    assert_delta_joined_equals_postgres(&db, &log).await;
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&watch])
        .await
        .expect("drop the watch slot");
}

/// A Delta copy whose progress the log no longer holds (another engine committed to the table,
/// checkpointed it and cleaned the log up to the checkpoint, while the writer was down) cannot
/// resume: the restarted writer says so and copies the table again from its first row, and
/// the lake still equals PostgreSQL.
#[tokio::test]
async fn a_delta_copy_whose_progress_the_cleaned_log_lost_starts_again_from_the_first_row() {
    let db = TestDb::new("chunked_delta_cleaned").await;
    db.psql(&["-v", "rows=200", "-f", "sql/orders.sql"]);
    let settings = delta_settings();
    let settings = as_pairs(&settings);
    let mut writer = start_with(&db, &settings);
    caught_up(&db, &mut writer).await;

    let client = db.client().await;
    let watch = create_joined(&db, &client).await;
    publish_joined(&db, &client).await;
    let (writer, _) = wait_until_chunks(writer, "joined", 3, || delta_chunks(&db)).await;
    let first_log = log_of(writer);
    assert!(
        !copied_joined(&first_log),
        "the copy ended before the kill: make the table larger"
    );

    // another engine (deltalake's Python package) shortens the log's retention and
    // checkpoints the table, and the log is cleaned up to that checkpoint (as after the
    // retention passed): the commits that carried the copy's progress are gone, its `txn`
    // marker is kept by the checkpoint
    let location = delta_location(&db);
    let cleaned = support::stack().python_lines(
        "commit, checkpoint and clean the Delta log",
        r#"
import os, sys
from deltalake import DeltaTable
path = sys.argv[1]
table = DeltaTable(path)
before = table.version()
table.alter.set_table_properties({"delta.logRetentionDuration": "interval 1 days"})
table = DeltaTable(path)
assert table.version() > before, "the property change committed nothing"
table.create_checkpoint()
log = os.path.join(path, "_delta_log")
removed = 0
for name in os.listdir(log):
    if name.endswith(".json") and int(name.split(".")[0]) < table.version():
        os.remove(os.path.join(log, name))
        removed += 1
print(removed)
"#,
        &[&location.display().to_string()],
    );
    assert!(
        cleaned
            .last()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
            > 0,
        "the log was not cleaned: {cleaned:?}"
    );

    let mut writer = start_with(&db, &settings);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if copied_joined(&writer.log()) {
            break;
        }
        if let Ok(Some(status)) = writer.try_wait() {
            panic!("lakewriter exited early with {status}: {}", log_of(writer));
        }
        assert!(
            Instant::now() < deadline,
            "the copy never completed: {}",
            log_of(writer)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client
        .execute(
            "UPDATE joined SET v = -v, note = 'after' WHERE id % 1000 = 7",
            &[],
        )
        .await
        .expect("update joined");
    caught_up(&db, &mut writer).await;
    let log = stop(writer);
    assert!(
        log.contains("starts again from the first row"),
        "the restarted writer did not say the copy starts again: {log}"
    );
    assert_eq!(
        delta_chunks(&db),
        None,
        "the copy is still marked under way"
    );
    assert_delta_joined_equals_postgres(&db, &log).await;
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&watch])
        .await
        .expect("drop the watch slot");
}

/// With `writer` copying `joined` in chunks beside the stream (its watermarks counted through
/// the slot `watch`): a workload on `joined` and `orders`, SIGKILL mid-copy, `status` and
/// `compact` while down, a restart that resumes, and the lake then equal to PostgreSQL with
/// no chunk read more than twice. The killed writer's log and the restarted one's.
async fn copied_through_a_workload_and_kill_9(
    db: &TestDb,
    writer: support::writer::Writer,
    watch: &str,
    settings: &[(&str, &str)],
) -> (String, String) {
    let client = db.client().await;
    let watch = watch.to_string();
    let reads = Arc::new(Mutex::new(Reads::default()));
    let stop_workload = Arc::new(AtomicBool::new(false));
    let running = workload(db, watch.clone(), reads.clone(), stop_workload.clone());

    // SIGKILL once a few chunks are committed, in two commits at least (the pace needs two),
    // well before the last
    let (writer, seen) = wait_for_chunks(db, writer, "joined", 3).await;
    // the stream goes on meanwhile: orders takes the workload's changes while joined is being
    // copied (the copy still under way at the kill below is asserted after it)
    let deadline = Instant::now() + Duration::from_secs(120);
    while duck_query(
        db,
        "orders",
        "SELECT count(*) FROM {scan} WHERE status LIKE 'r%'",
    )
    .first()
    .is_none_or(|n| n == "0")
    {
        assert!(
            Instant::now() < deadline,
            "orders took no change while joined was being copied: {}",
            log_of(writer)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (writer, killed_at) = wait_for_chunks(db, writer, "joined", seen + 1).await;
    let first_log = log_of(writer);
    assert!(
        first_log.contains("copying the table in chunks beside the stream"),
        "the table was not copied in chunks: {first_log}"
    );
    assert!(
        !copied_joined(&first_log),
        "the copy ended before the kill: make the table larger"
    );

    // the lake says how far the copy got, with the writer down as well
    let status = command_ok(db, &["status"], &[]);
    let committed = lake_copy_progress(db, "joined")
        .and_then(|p| serde_json::from_str::<serde_json::Value>(&p).ok())
        .and_then(|p| p["chunks"].as_u64())
        .expect("the lake holds the copy's progress after the kill");
    let expected = format!("(chunk {committed}/{}, ", rows() / chunk_rows());
    assert!(
        status
            .lines()
            .any(|l| l.contains("joined: copying") && l.contains("% ") && l.contains(&expected)),
        "status does not show the copy's progress ({expected}): {status}"
    );
    // with its pace and the time it has left, the same in JSON, from the lake alone
    let report: serde_json::Value =
        serde_json::from_str(&command_ok(db, &["status", "--json"], &[])).expect("status JSON");
    let joined = report["tables"]
        .as_array()
        .and_then(|t| {
            t.iter()
                .find(|t| t["table"].as_str() == Some(&lake_name(db)))
        })
        .unwrap_or_else(|| panic!("no joined table in status --json: {report}"));
    let rate = joined["copy_rows_per_second"].as_f64().unwrap_or(0.0);
    let eta = joined["copy_eta_seconds"].as_u64();
    assert!(
        rate > 0.0 && eta.is_some(),
        "status --json gives no pace or ETA for the copy: {joined}"
    );
    let rate_text = format!("{} rows/s, ETA ", grouped(rate.round() as u64));
    assert!(
        status
            .lines()
            .any(|l| l.contains("joined: copying") && l.contains(&rate_text)),
        "status does not show the copy's pace as --json gives it ({rate_text}): {status}"
    );

    // a compaction mid-copy keeps the progress (it reads as the head of lakewriter's commits)
    let before = lake_copy_progress(db, "joined");
    let compacted = command_ok(db, &["compact"], &[]);
    println!("compact mid-copy: {compacted}");
    assert_eq!(
        lake_copy_progress(db, "joined"),
        before,
        "compact dropped the copy's progress: {compacted}"
    );

    // the restarted writer resumes after the last committed chunk, under the same workload
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut writer = start_with(db, settings);
    let deadline = Instant::now() + Duration::from_secs(300 + rows() as u64 / 2_000);
    while lake_copy_progress(db, "joined").is_some() {
        if let Ok(Some(status)) = writer.try_wait() {
            panic!("lakewriter exited early with {status}: {}", log_of(writer));
        }
        assert!(
            Instant::now() < deadline,
            "the copy never completed: {}",
            log_of(writer)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // a few more rounds on the copied table, then quiet
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_workload.store(true, Ordering::Relaxed);
    let rounds = running.await.expect("the workload");
    caught_up(db, &mut writer).await;
    let log = stop(writer);
    // the runs say the copy's progress and pace as it goes, every second (the first run may
    // be killed before its first line); the resumed one from its first line on, its pace
    // taken from the lake's commits of the chunks before the kill until its own take over
    let resumed: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("copy progress")
                || l.contains("resuming the table's chunked copy after its last committed chunk")
        })
        .collect();
    // (the time left goes once the copy has read more rows than PostgreSQL estimated, which
    // the workload's inserts may bring about near its end: only the first line must have it)
    assert!(
        resumed.first().is_some_and(|l| l.contains("rows/s, ETA "))
            && resumed.iter().all(|l| l.contains(" rows/s")),
        "the resumed run did not give the copy's pace from its first line: {resumed:#?}"
    );
    assert_resumed_reading_each_chunk_at_most_twice(db, &log, &reads, rounds, killed_at).await;

    assert_eq!(
        duck_query(
            db,
            "joined",
            "SELECT count(*) - count(DISTINCT id) FROM {scan}"
        ),
        vec!["0".to_string()],
        "duplicated keys in the lake"
    );
    let lake = duck_query(
        db,
        "joined",
        "SELECT id || '|' || v || '|' || note FROM {scan} ORDER BY id",
    );
    let postgres = joined_in_postgres(db).await;
    assert_same_lines("joined", &lake, &postgres, &log);
    command_ok(db, &["verify"], &[]);
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&watch])
        .await
        .expect("drop the watch slot");
    (first_log, log)
}
