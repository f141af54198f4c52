//! `lakewriter run` through the faults of a real week, against the real PostgreSQL: the
//! replication session terminated while transactions sit in the writer's buffers (PostgreSQL
//! then resends everything not acknowledged), a SIGKILL right after such a reconnect, every
//! session of the writer terminated one by one, copy sessions terminated mid-copy (the initial
//! copy, and a table joining while streaming), and the server restarted mid-stream and while
//! idle, with SIGKILLs between. Every change reaches the lake exactly once (the upsert table
//! equals PostgreSQL, the changelog table holds each change once), and a SIGTERM afterwards
//! exits 0 with the slot confirmed exactly at the writer's durable position.

mod support;

use std::time::{Duration, Instant};

use lakewriter::Lsn;
use support::orders::{LAKE_DUPLICATES, LAKE_LINES, postgres_lines};
use support::writer::{
    acknowledged, assert_same_lines, caught_up, copy_completed, duck_query, start, start_with,
    stop, stopped_at, write_config,
};
use support::{Cluster, TestDb};

/// Changes sit in the buffers until the stop: a reconnect always finds some there.
const BUFFERED: &[(&str, &str)] = &[("FLUSH__MAX_LATENCY", "1h"), ("FLUSH__IDLE_ROWS", "0")];

/// Terminates the walsender serving the test's slot and waits until the writer has
/// reconnected (the slot active again under another backend).
async fn terminate_walsender(db: &TestDb) {
    let client = db.client().await;
    let pid: i32 = loop {
        let row = client
            .query_one(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&db.slot],
            )
            .await
            .expect("read the slot");
        if let Some(pid) = row.get::<_, Option<i32>>(0) {
            break pid;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    client
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate the walsender");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = client
            .query_one(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&db.slot],
            )
            .await
            .expect("read the slot");
        if row.get::<_, Option<i32>>(0).is_some_and(|p| p != pid) {
            return;
        }
        assert!(Instant::now() < deadline, "the writer did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One round of changes to both tables: `orders` updated and deleted by the workload, and
/// `events` given a new row `round` and an update of it.
async fn changes(db: &TestDb, round: i32) {
    db.workload(1, 200);
    db.client()
        .await
        .batch_execute(&format!(
            "INSERT INTO events VALUES ({round}, 0);
             UPDATE events SET v = v + 1 WHERE id = {round};"
        ))
        .await
        .expect("change events");
}

/// The changelog as DuckDB reads it: `op|id|v`, by key, then in commit order.
fn changelog(db: &TestDb) -> Vec<String> {
    duck_query(
        db,
        "events",
        "SELECT _op, id, v FROM {scan} ORDER BY id, _lsn, _op",
    )
}

/// The changelog every round of [`changes`] must leave: each change once.
fn expected_changelog(rounds: std::ops::RangeInclusive<i32>) -> Vec<String> {
    rounds
        .flat_map(|r| [format!("I|{r}|0"), format!("U|{r}|1")])
        .collect()
}

fn assert_orders_equal(db: &TestDb, expected: Vec<String>) {
    assert_eq!(
        duck_query(db, "orders", LAKE_DUPLICATES),
        vec!["0".to_string()],
        "duplicated keys in the lake"
    );
    assert!(
        duck_query(db, "orders", LAKE_LINES) == expected,
        "the lake's orders differ from PostgreSQL"
    );
}

/// The slot confirms exactly the position the stopped writer reports durable, which covers
/// everything committed up to `target`.
async fn assert_acknowledged_at_the_durable_position(db: &TestDb, log: &str, target: Lsn) {
    let durable = stopped_at(log);
    let confirmed = acknowledged(db).await;
    assert_eq!(
        confirmed, durable,
        "the slot's confirmed_flush_lsn is not the writer's durable position"
    );
    assert!(
        durable >= target,
        "the durable position {durable} is before the last change ({target})"
    );
}

/// The two tables of these tests: `orders` (upsert) and `events` (a changelog table), with
/// the config the writer runs with.
async fn orders_and_events(db: &TestDb) {
    db.psql(&["-v", "rows=2000", "-f", "sql/orders.sql"]);
    db.client()
        .await
        .batch_execute("CREATE TABLE events (id int PRIMARY KEY, v int)")
        .await
        .expect("schema");
    write_config(
        db,
        "[source.tables.\"public.events\"]\nmode = \"changelog\"\n",
    );
}

#[tokio::test]
async fn walsender_terminated_with_buffered_changes_then_kill_9_applies_each_change_once() {
    let db = TestDb::new("run_reconnect").await;
    orders_and_events(&db).await;

    // Three reconnects while both tables hold buffered transactions, then a clean stop
    // commits the buffers: a resent transaction buffered twice would show here.
    let mut child = start_with(&db, BUFFERED);
    caught_up(&db, &mut child).await;
    for round in 1..=3 {
        changes(&db, round).await;
        // let the writer receive (and buffer) them before its session goes
        tokio::time::sleep(Duration::from_millis(700)).await;
        terminate_walsender(&db).await;
    }
    changes(&db, 4).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop(child);
    assert_eq!(changelog(&db), expected_changelog(1..=4));
    assert_orders_equal(&db, postgres_lines(&db).await);

    // Buffered changes, a reconnect, and SIGKILL right after it: the restart takes them from
    // the slot again, once.
    let mut child = start_with(&db, BUFFERED);
    caught_up(&db, &mut child).await;
    changes(&db, 5).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    terminate_walsender(&db).await;
    changes(&db, 6).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    child.kill().expect("SIGKILL");
    let _ = child.wait();

    let mut child = start_with(&db, &[]);
    caught_up(&db, &mut child).await;
    stop(child);
    assert_eq!(changelog(&db), expected_changelog(1..=6));
    assert_orders_equal(&db, postgres_lines(&db).await);
}

/// The writer's sessions on the test database: `(pid, application_name)`.
async fn writer_backends(db: &TestDb) -> Vec<(i32, String)> {
    db.client()
        .await
        .query(
            "SELECT pid, application_name FROM pg_stat_activity \
             WHERE datname = $1 AND application_name LIKE 'lakewriter run:%' ORDER BY pid",
            &[&db.name],
        )
        .await
        .expect("read pg_stat_activity")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn every_writer_session_terminated_one_by_one_then_sigterm_exits_0_with_the_slot_acknowledged()
 {
    let db = TestDb::new("run_terminate").await;
    orders_and_events(&db).await;
    let mut child = start(&db);
    caught_up(&db, &mut child).await;
    let backends = writer_backends(&db).await;
    let roles: Vec<&str> = backends.iter().map(|(_, name)| name.as_str()).collect();
    for role in ["lakewriter run: control", "lakewriter run: stream"] {
        assert!(
            roles.contains(&role),
            "no session named {role} among {roles:?}"
        );
    }
    for (round, (pid, role)) in (1..).zip(&backends) {
        db.client()
            .await
            .execute("SELECT pg_terminate_backend($1)", &[pid])
            .await
            .expect("terminate a writer session");
        changes(&db, round).await;
        caught_up(&db, &mut child).await;
        println!("terminated {role} ({pid}); the writer caught up");
    }
    let target = db.sync_point().await;
    caught_up(&db, &mut child).await;
    let log = stop(child);
    assert_acknowledged_at_the_durable_position(&db, &log, target).await;
    assert_eq!(
        changelog(&db),
        expected_changelog(1..=backends.len() as i32),
        "a change applied twice, or lost"
    );
    assert_orders_equal(&db, postgres_lines(&db).await);
}

#[tokio::test]
async fn postgres_restarted_mid_stream_and_while_idle_then_sigterm_exits_0_with_the_slot_acknowledged()
 {
    let cluster = Cluster::start();
    let db = TestDb::on(&cluster, "run_restart").await;
    orders_and_events(&db).await;
    let mut child = start(&db);
    caught_up(&db, &mut child).await;

    // mid-stream: the writer is still receiving and committing the workload
    db.workload(2, 300);
    changes(&db, 1).await;
    cluster.restart();
    changes(&db, 2).await;
    db.workload(2, 300);
    caught_up(&db, &mut child).await;

    // idle: nothing in flight, every session closed under the writer
    cluster.restart();
    tokio::time::sleep(Duration::from_secs(1)).await;
    changes(&db, 3).await;
    let target = db.sync_point().await;
    caught_up(&db, &mut child).await;
    let log = stop(child);
    assert_acknowledged_at_the_durable_position(&db, &log, target).await;
    // each restart is said once, however many attempts the reconnection took
    assert_eq!(
        log.matches("replication stream interrupted").count(),
        2,
        "two restarts: {log}"
    );
    assert_eq!(changelog(&db), expected_changelog(1..=3));
    assert_orders_equal(&db, postgres_lines(&db).await);
}

#[tokio::test]
async fn a_lost_slot_with_initial_snapshot_false_is_refused_and_the_lake_kept() {
    let db = TestDb::new("run_lost_slot").await;
    db.psql(&["-v", "rows=500", "-f", "sql/orders.sql"]);
    let mut child = start(&db);
    caught_up(&db, &mut child).await;
    stop(child);
    db.client()
        .await
        .execute("SELECT pg_drop_replication_slot($1)", &[&db.slot])
        .await
        .expect("drop the slot");

    let output = support::writer::command(&db, &["run"], &[("SOURCE__INITIAL_SNAPSHOT", "false")]);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "run started without its slot: {log}"
    );
    assert!(
        log.contains(&db.slot) && log.contains("public.orders") && log.contains("initial_snapshot"),
        "the error names the slot, the table and the fix: {log}"
    );
    assert_orders_equal(&db, postgres_lines(&db).await);
}

/// The writer's sessions running a COPY of the initial copy.
async fn running_copies(db: &TestDb) -> Vec<i32> {
    db.client()
        .await
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 \
             AND application_name = 'lakewriter run: copy' AND state = 'active' \
             AND query LIKE 'COPY%'",
            &[&db.name],
        )
        .await
        .expect("read pg_stat_activity")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn copy_sessions_terminated_during_the_initial_copy_are_taken_up_in_a_new_snapshot() {
    let db = TestDb::new("run_copy_terminated").await;
    db.psql(&["-v", "rows=300000", "-f", "sql/orders.sql"]);
    let mut child = start(&db);
    let deadline = Instant::now() + Duration::from_secs(60);
    let copies = loop {
        let copies = running_copies(&db).await;
        if !copies.is_empty() {
            break copies;
        }
        assert!(Instant::now() < deadline, "no copy showed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    for pid in &copies {
        db.client()
            .await
            .execute("SELECT pg_terminate_backend($1)", &[pid])
            .await
            .expect("terminate a copy session");
    }
    db.workload(1, 300);
    caught_up(&db, &mut child).await;
    let log = stop(child);
    assert!(
        log.contains("copying the remaining tables in a new snapshot"),
        "the copy was not taken up again: {log}"
    );
    assert_orders_equal(&db, postgres_lines(&db).await);
}

/// The writer's sessions running a COPY of a table (the initial copy, or a table that joined
/// the publication while streaming), waited for up to three minutes (a loaded machine takes
/// its time to see a table join: the bound only says when to give up).
async fn wait_for_copies(db: &TestDb) -> Vec<i32> {
    wait_for_sessions(db, false).await
}

/// The writer's sessions reading chunks of the `joined` table: each lives for one chunk (its
/// watermarks, the chunk's last key, its COPY), so any of them is caught, not only a COPY.
async fn chunk_sessions(db: &TestDb) -> Vec<i32> {
    db.client()
        .await
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 \
             AND application_name = 'lakewriter run: copy' AND query LIKE '%joined%'",
            &[&db.name],
        )
        .await
        .expect("read pg_stat_activity")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Waits (as [`wait_for_copies`]) for copy sessions, or with `chunks` for
/// [`chunk_sessions`].
async fn wait_for_sessions(db: &TestDb, chunks: bool) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let copies = if chunks {
            chunk_sessions(db).await
        } else {
            running_copies(db).await
        };
        if !copies.is_empty() {
            return copies;
        }
        assert!(Instant::now() < deadline, "no copy showed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `id|v` of the `joined` table, sorted, from PostgreSQL.
async fn joined_in_postgres(db: &TestDb) -> Vec<String> {
    db.client()
        .await
        .query(
            "SELECT id::text || '|' || v::text FROM joined ORDER BY id",
            &[],
        )
        .await
        .expect("read joined")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A table joins the publication while the writer streams; the sessions copying it are
/// terminated mid-copy. `keyed`: it has a primary key, so it is copied in chunks beside the
/// stream; otherwise its key (from the config) may hold NULLs, and it is copied in one piece
/// in a snapshot. Returns the writer's log, the lake checked equal to PostgreSQL.
async fn joining_copy_terminated(label: &str, keyed: bool) -> String {
    let db = TestDb::new(label).await;
    db.psql(&["-v", "rows=2000", "-f", "sql/orders.sql"]);
    if !keyed {
        write_config(&db, "[source.tables.\"public.joined\"]\nkey = [\"id\"]\n");
    }
    // chunks small enough for a read to be caught running
    let mut child = start_with(&db, &[("SOURCE__SNAPSHOT_CHUNK_ROWS", "20000")]);
    caught_up(&db, &mut child).await;

    // a table joins the publication with rows enough for its copy to be caught running: a
    // COPY of narrow rows ends between two looks at pg_stat_activity on a loaded machine, so
    // each row carries 300 bytes more to read (about 120 MB for the copy)
    let client = db.client().await;
    let create = if keyed {
        "CREATE TABLE joined (id int PRIMARY KEY, v int, pad text);"
    } else {
        "CREATE TABLE joined (id int, v int, pad text); ALTER TABLE joined REPLICA IDENTITY FULL;"
    };
    client
        .batch_execute(&format!(
            "{create}
             INSERT INTO joined SELECT g, g, repeat('x', 300) FROM generate_series(1, 400000) g;"
        ))
        .await
        .expect("create joined");
    client
        .batch_execute(&format!(
            "ALTER PUBLICATION {} ADD TABLE joined;
             UPDATE joined SET v = -v WHERE id <= 10;",
            db.publication
        ))
        .await
        .expect("publish joined");
    let sessions = if keyed {
        wait_for_sessions(&db, true).await
    } else {
        wait_for_copies(&db).await
    };
    for pid in sessions {
        client
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .expect("terminate a copy session");
    }
    client
        .batch_execute(
            "UPDATE joined SET v = v + 1 WHERE id % 1000 = 0;
             DELETE FROM joined WHERE id % 777 = 0;",
        )
        .await
        .expect("change joined");
    db.workload(1, 200);
    caught_up(&db, &mut child).await;
    // a chunked copy goes on beside the stream: the slot does not wait for it
    copy_completed(&db, &mut child, "joined").await;
    let log = stop(child);
    assert_orders_equal(&db, postgres_lines(&db).await);
    assert_eq!(
        duck_query(
            &db,
            "joined",
            "SELECT count(*) - count(DISTINCT id) FROM {scan}"
        ),
        vec!["0".to_string()],
        "duplicated keys in the lake"
    );
    let lake = duck_query(
        &db,
        "joined",
        "SELECT id || '|' || v FROM {scan} ORDER BY id",
    );
    let postgres = joined_in_postgres(&db).await;
    assert_same_lines("joined", &lake, &postgres, &log);
    log
}

#[tokio::test]
async fn copy_sessions_of_a_table_joining_while_streaming_terminated_then_copied_again() {
    let log = joining_copy_terminated("run_join_terminated", false).await;
    assert!(
        log.contains("the table has no key of NOT NULL columns to order chunks by"),
        "the log does not say why the table is copied in one piece: {log}"
    );
    assert!(
        log.contains("copying it again in a new snapshot"),
        "the copy was not taken up again: {log}"
    );
}

#[tokio::test]
async fn chunk_reads_of_a_table_joining_while_streaming_terminated_then_read_again() {
    let log = joining_copy_terminated("run_join_chunk_terminated", true).await;
    assert!(
        log.contains("copying the table in chunks beside the stream"),
        "the table was not copied in chunks: {log}"
    );
    assert!(
        log.contains("reading it again"),
        "the chunk was not read again: {log}"
    );
}

/// Runs `rounds` rounds of the orders workload on `db` in the background, one psql each, a
/// quarter second apart. A round the server cuts short (it restarts under it) is simply cut
/// short: the lake must equal whatever PostgreSQL committed.
fn background_workload(db: &TestDb, rounds: usize) -> std::thread::JoinHandle<()> {
    let url = db.url.clone();
    std::thread::spawn(move || {
        for _ in 0..rounds {
            let _ = support::stack()
                .pg_program("psql")
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &url])
                .args([
                    "-v",
                    "rounds=1",
                    "-v",
                    "batch=300",
                    "-f",
                    "sql/workload.sql",
                ])
                .current_dir(support::project_dir())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            std::thread::sleep(Duration::from_millis(250));
        }
    })
}

#[tokio::test]
async fn kill_9_and_postgres_restarts_mid_stream_and_while_idle_lose_and_duplicate_nothing() {
    let cluster = Cluster::start();
    let db = TestDb::on(&cluster, "run_restart_crash").await;
    orders_and_events(&db).await;
    let mut child = start(&db);
    caught_up(&db, &mut child).await;
    changes(&db, 1).await;

    // mid-stream: a workload runs while the server restarts under the writer, which is then
    // killed right after it reconnected, started again, and killed again mid-stream
    let workload = background_workload(&db, 10);
    tokio::time::sleep(Duration::from_millis(900)).await;
    cluster.restart();
    tokio::time::sleep(Duration::from_millis(600)).await;
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let mut child = start(&db);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let mut child = start(&db);
    workload.join().expect("the workload");
    changes(&db, 2).await;
    caught_up(&db, &mut child).await;

    // idle: the server restarts with nothing in flight; the writer is killed after it
    // reconnected, and the next one stops cleanly after more changes
    cluster.restart();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let mut child = start(&db);
    caught_up(&db, &mut child).await;
    cluster.restart();
    tokio::time::sleep(Duration::from_secs(1)).await;
    changes(&db, 3).await;
    db.workload(1, 200);
    let target = db.sync_point().await;
    caught_up(&db, &mut child).await;
    let log = stop(child);
    assert_acknowledged_at_the_durable_position(&db, &log, target).await;
    assert_eq!(
        changelog(&db),
        expected_changelog(1..=3),
        "a change applied twice, or lost"
    );
    assert_orders_equal(&db, postgres_lines(&db).await);
}
