//! `lakewriter run` through the faults of a real week, against the real PostgreSQL: the
//! replication session terminated while transactions sit in the writer's buffers (PostgreSQL
//! then resends everything not acknowledged), and a SIGKILL right after such a reconnect.
//! Every change reaches the lake exactly once: the upsert table equals PostgreSQL, and the
//! changelog table holds each change once.

mod support;

use std::time::{Duration, Instant};

use support::TestDb;
use support::orders::{LAKE_DUPLICATES, LAKE_LINES, postgres_lines};
use support::writer::{caught_up, duck_query, start_with, stop, write_config};

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

#[tokio::test]
async fn walsender_terminated_with_buffered_changes_then_kill_9_applies_each_change_once() {
    let db = TestDb::new("run_reconnect").await;
    db.psql(&["-v", "rows=2000", "-f", "sql/orders.sql"]);
    db.client()
        .await
        .batch_execute("CREATE TABLE events (id int PRIMARY KEY, v int)")
        .await
        .expect("schema");
    write_config(
        &db,
        "[source.tables.\"public.events\"]\nmode = \"changelog\"\n",
    );

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
