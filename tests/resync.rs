//! `lakewriter resync --table T` against the real PostgreSQL: asked while `run` streams, the
//! running writer copies T again in key-ordered chunks beside the stream while another table
//! keeps committing (its change seen in the lake while the copy is under way); a writer
//! killed with SIGKILL mid-copy resumes the copy after its last committed chunk (the request,
//! streamed again, is not taken up twice); a second request during the copy is ignored; and
//! the lake then equals PostgreSQL (`verify`, DuckDB). `resync` refuses a table the writer
//! does not stream and one without a key, naming it, and with no writer running says the
//! next start takes the request up. A table `on_table_error = "suspend_table"` set aside,
//! while running or at the start, is copied again online by a resync.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::TestDb;
use support::writer::{
    assert_same_lines, caught_up, command, command_ok, copy_chunks, copy_completed, duck_query,
    lake_checkpoint, lake_copy_progress, lake_shows, log_of, start_with, stop, wait_for_chunks,
    write_config,
};

/// Rows of the table copied again, in chunks of `CHUNK_ROWS`: a copy of 120 chunks, in two
/// key ranges of 60 read side by side (long enough for another table to commit meanwhile).
const ROWS: i64 = 120_000;
const CHUNK_ROWS: i64 = 1_000;
const SETTINGS: &[(&str, &str)] = &[("SOURCE__SNAPSHOT_CHUNK_ROWS", "1000")];

/// Until `stop`: updates, deletes and re-inserts of `big`'s keys, one transaction a round.
fn workload(db: &TestDb, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u32> {
    let url = db.url.clone();
    tokio::spawn(async move {
        let client = support::connect(&url).await;
        let mut round = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let sql = format!(
                "BEGIN;
                 UPDATE big SET v = v + 1, note = 'u{round}'
                   WHERE id IN (SELECT 1 + (random() * {ROWS})::int FROM generate_series(1, 20));
                 DELETE FROM big
                   WHERE id IN (SELECT 1 + (random() * {ROWS})::int FROM generate_series(1, 5));
                 INSERT INTO big (id, v, note)
                   SELECT 1 + (random() * {ROWS})::int, {round}, 'back{round}'
                   FROM generate_series(1, 5)
                   ON CONFLICT (id) DO NOTHING;
                 COMMIT;"
            );
            client.batch_execute(&sql).await.expect("a workload round");
            round += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        round
    })
}

async fn rows(db: &TestDb, query: &str) -> Vec<String> {
    db.client()
        .await
        .query(query, &[])
        .await
        .expect("read PostgreSQL")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn resync_copies_one_table_again_beside_the_stream_through_kill_9() {
    let db = TestDb::new("resync").await;
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL, note text);
             INSERT INTO big SELECT g, g, 'n' || g FROM generate_series(1, {ROWS}) g;
             ANALYZE big;
             CREATE TABLE other (id int PRIMARY KEY, v int NOT NULL);
             INSERT INTO other SELECT g, g FROM generate_series(1, 100) g;
             CREATE TABLE nokey (v int);
             ALTER TABLE nokey REPLICA IDENTITY FULL;
             INSERT INTO nokey VALUES (1), (2);"
        ))
        .await
        .expect("create the tables");

    // `nokey` is keyed by a column that may hold NULL: fine to upsert, not to order chunks
    write_config(&db, "[source.tables.\"public.nokey\"]\nkey = [\"v\"]\n");
    // before any run: no slot, so nothing to ask
    let early = command(&db, &["resync", "--table", "public.big"], SETTINGS);
    assert!(!early.status.success(), "resync before the first run");
    assert!(
        String::from_utf8_lossy(&early.stderr).contains("does not exist"),
        "{}",
        String::from_utf8_lossy(&early.stderr)
    );

    let mut writer = start_with(&db, SETTINGS);
    caught_up(&db, &mut writer).await;
    assert_eq!(
        copy_chunks(&db, "big"),
        None,
        "the first copy is not chunked"
    );

    // the refusals name the table and the reason
    let unknown = command(&db, &["resync", "--table", "public.missing"], SETTINGS);
    let said = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        !unknown.status.success()
            && said.contains("public.missing")
            && said.contains("not one of the writer's tables")
            && said.contains("public.big"),
        "{said}"
    );
    let keyless = command(&db, &["resync", "--table", "public.nokey"], SETTINGS);
    let said = String::from_utf8_lossy(&keyless.stderr);
    assert!(
        !keyless.status.success() && said.contains("public.nokey") && said.contains("no key"),
        "{said}"
    );

    // the resync, under a workload on the table copied again
    let stop_workload = Arc::new(AtomicBool::new(false));
    let running = workload(&db, stop_workload.clone());
    let asked = command_ok(&db, &["resync", "--table", "public.big"], SETTINGS);
    assert!(
        asked.contains("asked to copy public.big again") && asked.contains("copies it now"),
        "{asked}"
    );
    let (writer, _) = wait_for_chunks(&db, writer, "big", 2).await;
    // the copy is held while the other table commits and a second request comes (its chunk
    // reads wait for this lock; the stream does not), so the copy outlasts both on any
    // machine however fast its ranges read
    let holder = db.client().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE big IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock big");

    // the other table commits while the copy goes on
    client
        .execute("UPDATE other SET v = 777 WHERE id = 1", &[])
        .await
        .expect("update other");
    let deadline = Instant::now() + Duration::from_secs(60);
    while duck_query(&db, "other", "SELECT v FROM {scan} WHERE id = 1") != ["777"] {
        assert!(Instant::now() < deadline, "other never committed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = copy_chunks(&db, "big");
    assert!(
        during.is_some_and(|c| c < (ROWS / CHUNK_ROWS) as u64),
        "the copy was over before the other table's commit: make the table larger ({during:?})"
    );

    // a second request while the table is being copied is ignored: the writer is killed
    // once the table committed past it (chunks read ahead may be past it already)
    let again = command_ok(&db, &["resync", "--table", "public.big"], SETTINGS);
    let request: lakewriter::Lsn = again
        .split("request at LSN ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|lsn| lsn.parse().ok())
        .unwrap_or_else(|| panic!("no request LSN in {again:?}"));
    holder.batch_execute("COMMIT").await.expect("unlock big");
    let deadline = Instant::now() + Duration::from_secs(180);
    while lake_checkpoint(&db, "big").is_none_or(|c| c < request) {
        assert!(
            Instant::now() < deadline,
            "big never committed past {request}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_log = log_of(writer); // SIGKILL mid-copy
    assert!(
        first_log.contains("resync requested: the table is copied again beside the stream")
            && first_log.contains("copying the table in chunks beside the stream"),
        "the resync was not taken up in chunks: {first_log}"
    );
    assert!(
        first_log.contains("a resync request for a table being copied: ignored"),
        "the second request was not ignored: {first_log}"
    );
    assert!(
        !first_log.contains("copied the table in chunks while streaming"),
        "the copy ended before the kill: make the table larger"
    );
    let killed_at = copy_chunks(&db, "big").expect("the lake keeps the copy's progress");
    let status = command_ok(&db, &["status"], &[]);
    // with its pace: chunks were committed at least twice apart
    assert!(
        status
            .lines()
            .any(|l| l.contains("big: copying") && l.contains(" rows/s, ETA ")),
        "status does not show the copy with its pace: {status}"
    );

    // a request with no writer running waits for the next start, which also resumes the copy
    let waiting = command_ok(&db, &["resync", "--table", "public.other"], SETTINGS);
    assert!(
        waiting.contains("the next `lakewriter run` takes"),
        "{waiting}"
    );
    let mut writer = start_with(&db, SETTINGS);
    let deadline = Instant::now() + Duration::from_secs(300);
    while copy_chunks(&db, "big").is_some() || lake_copy_progress(&db, "other").is_some() {
        if let Ok(Some(status)) = writer.try_wait() {
            panic!("lakewriter exited early with {status}: {}", log_of(writer));
        }
        assert!(Instant::now() < deadline, "the copy never completed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_workload.store(true, Ordering::Relaxed);
    let rounds = running.await.expect("the workload");
    caught_up(&db, &mut writer).await;
    let log = stop(writer);
    assert!(
        log.contains("resuming the table's chunked copy after its last committed chunk"),
        "the copy did not resume after chunk {killed_at}: {log}"
    );
    let taken_up: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("resync requested: the table is copied again"))
        .collect();
    assert!(
        taken_up.len() == 1 && taken_up[0].contains("public.other"),
        "after the restart, not just the request made with no writer running was taken up: \
         {taken_up:?}"
    );
    assert!(
        log.contains("copied the table in chunks while streaming"),
        "{log}"
    );
    assert!(rounds > 10, "the workload ran only {rounds} rounds");

    let lake = duck_query(
        &db,
        "big",
        "SELECT id || '|' || v || '|' || note FROM {scan} ORDER BY id",
    );
    let postgres = rows(
        &db,
        "SELECT id::text || '|' || v::text || '|' || note FROM big ORDER BY id",
    )
    .await;
    assert!(
        lake == postgres,
        "the lake's big table differs from PostgreSQL: {} rows against {}",
        lake.len(),
        postgres.len()
    );
    command_ok(&db, &["verify"], &[]);
}

/// A table error suspends the table; chunks of 500 rows.
const SUSPENDING: &[(&str, &str)] = &[
    ("SINK__ON_TABLE_ERROR", "suspend_table"),
    ("SOURCE__SNAPSHOT_CHUNK_ROWS", "500"),
];

/// Table `a` (6 000 rows, `v int`) to be suspended, and `b` (one row) that goes on beside it.
async fn tables_a_and_b(db: &TestDb) -> tokio_postgres::Client {
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE a (id int PRIMARY KEY, v int NOT NULL);
             INSERT INTO a SELECT g, g FROM generate_series(1, 6000) g;
             CREATE TABLE b (id int PRIMARY KEY, v text);
             INSERT INTO b VALUES (1, 'one');",
        )
        .await
        .expect("create the tables");
    client
}

#[tokio::test]
async fn a_table_suspended_while_running_is_copied_again_online_on_resync() {
    let db = TestDb::new("resync_suspended").await;
    let client = tables_a_and_b(&db).await;
    let settings = SUSPENDING;
    let mut writer = start_with(&db, settings);
    caught_up(&db, &mut writer).await;

    // int to text is no widening: table a is suspended while the writer runs; b goes on
    client
        .batch_execute(
            "ALTER TABLE a ALTER COLUMN v TYPE text USING 'v' || v;
             UPDATE a SET v = 'ten' WHERE id = 10;
             DELETE FROM a WHERE id % 100 = 0;
             INSERT INTO b VALUES (2, 'two');",
        )
        .await
        .expect("change a and b");
    let b_rows = "SELECT id, v FROM {scan} ORDER BY id";
    lake_shows(&db, &mut writer, "b", b_rows, &["1|one", "2|two"]).await;

    // the fix: copy it again, online, while b keeps committing
    let asked = command_ok(&db, &["resync", "--table", "public.a"], settings);
    assert!(asked.contains("asked to copy public.a again"), "{asked}");
    client
        .batch_execute(
            "UPDATE a SET v = 'changed' WHERE id = 4000; INSERT INTO b VALUES (3, 'three');",
        )
        .await
        .expect("change a and b again");
    lake_shows(
        &db,
        &mut writer,
        "b",
        b_rows,
        &["1|one", "2|two", "3|three"],
    )
    .await;
    caught_up(&db, &mut writer).await;
    copy_completed(&db, &mut writer, "a").await;
    let log = stop(writer);
    assert!(
        log.contains("suspended"),
        "the table was not suspended: {log}"
    );
    assert!(
        log.contains("resync requested for a table stopped by an error")
            && log.contains("copying the table in chunks beside the stream"),
        "the suspended table was not copied again in chunks: {log}"
    );
    let lake = duck_query(&db, "a", "SELECT id || '|' || v FROM {scan} ORDER BY id");
    let postgres = rows(&db, "SELECT id::text || '|' || v FROM a ORDER BY id").await;
    assert_same_lines("a", &lake, &postgres, &log);
    assert_eq!(postgres.len(), 5940);
    command_ok(&db, &["verify"], &[]);
}

#[tokio::test]
async fn a_table_suspended_at_the_start_is_copied_again_online_on_resync() {
    let db = TestDb::new("resync_suspended_start").await;
    let client = tables_a_and_b(&db).await;
    let settings = SUSPENDING;
    let mut writer = start_with(&db, settings);
    caught_up(&db, &mut writer).await;
    stop(writer);

    // int to text while the writer is down: its next start cannot prepare table a and
    // suspends it; b goes on
    client
        .batch_execute(
            "ALTER TABLE a ALTER COLUMN v TYPE text USING 'v' || v;
             UPDATE a SET v = 'ten' WHERE id = 10;
             DELETE FROM a WHERE id % 100 = 0;",
        )
        .await
        .expect("change a");
    let mut writer = start_with(&db, settings);
    client
        .batch_execute("INSERT INTO b VALUES (2, 'two');")
        .await
        .expect("change b");
    let b_rows = "SELECT id, v FROM {scan} ORDER BY id";
    lake_shows(&db, &mut writer, "b", b_rows, &["1|one", "2|two"]).await;
    assert_eq!(
        lake_checkpoint(&db, "a"),
        None,
        "the suspended table is not marked incomplete"
    );

    // the fix: copy it again, online, without a restart, while b keeps committing
    let asked = command_ok(&db, &["resync", "--table", "public.a"], settings);
    assert!(asked.contains("asked to copy public.a again"), "{asked}");
    client
        .batch_execute(
            "UPDATE a SET v = 'changed' WHERE id = 4000; INSERT INTO b VALUES (3, 'three');",
        )
        .await
        .expect("change a and b again");
    lake_shows(
        &db,
        &mut writer,
        "b",
        b_rows,
        &["1|one", "2|two", "3|three"],
    )
    .await;
    // copied: the lake table has a checkpoint again and no copy under way
    let deadline = Instant::now() + Duration::from_secs(300);
    while lake_checkpoint(&db, "a").is_none() || lake_copy_progress(&db, "a").is_some() {
        if let Ok(Some(status)) = writer.try_wait() {
            panic!("lakewriter exited early with {status}: {}", log_of(writer));
        }
        assert!(
            Instant::now() < deadline,
            "table a was never copied again: {}",
            log_of(writer)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    caught_up(&db, &mut writer).await;
    let log = stop(writer);
    assert!(
        log.contains("the table is suspended"),
        "the table was not suspended at the start: {log}"
    );
    assert!(
        log.contains("resync requested for a table suspended at the start")
            && log.contains("copying the table in chunks beside the stream"),
        "the suspended table was not copied again in chunks: {log}"
    );
    let lake = duck_query(&db, "a", "SELECT id || '|' || v FROM {scan} ORDER BY id");
    let postgres = rows(&db, "SELECT id::text || '|' || v FROM a ORDER BY id").await;
    assert_same_lines("a", &lake, &postgres, &log);
    assert_eq!(postgres.len(), 5940);
    command_ok(&db, &["verify"], &[]);
}
