//! The replication stream against a real PostgreSQL: every change of the sample workload
//! arrives decoded into Arrow and, applied in order, rebuilds exactly the table PostgreSQL
//! holds; nothing is acknowledged before the consumer says it is durable, and an idle slot's
//! position still advances; a killed connection resumes without losing a change.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use lakewriter::Lsn;
use lakewriter::config::Config;
use lakewriter::source::changes::{ChangeBatch, Op};
use lakewriter::source::stream::{SourceEvent, StreamSettings, stream};
use support::TestDb;
use support::orders::{Table, apply, postgres_orders};
use tokio::sync::{mpsc, watch};

/// A consumer standing in for the pipeline: applies changes to a model of `orders`, and
/// acknowledges commits (and idle positions) only when told to.
struct Consumer {
    table: Table,
    pending: Table,
    pending_batches: Vec<ChangeBatch>,
    last_end: Lsn,
    starts: usize,
    ack: bool,
    durable: watch::Sender<Lsn>,
    schemas: Vec<Vec<String>>,
}

impl Consumer {
    fn handle(&mut self, event: SourceEvent) {
        match event {
            SourceEvent::Started { .. } => {
                self.starts += 1;
                self.pending_batches.clear();
            }
            SourceEvent::Begin { .. } => self.pending_batches.clear(),
            SourceEvent::Schema { schema, .. } => self.schemas.push(
                schema
                    .arrow
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect(),
            ),
            SourceEvent::Changes(batch) => self.pending_batches.push(batch),
            SourceEvent::Truncate { .. } => self.table.clear(),
            SourceEvent::Commit { end_lsn, .. } => {
                for batch in std::mem::take(&mut self.pending_batches) {
                    if batch.schema.table.name == "orders" {
                        apply(&mut self.table, &batch);
                    }
                }
                self.last_end = end_lsn;
                if self.ack {
                    let _ = self.durable.send(end_lsn);
                }
            }
            SourceEvent::Watermark(_) | SourceEvent::Resync(_) => {}
            SourceEvent::Idle { server_lsn } => {
                // the server has sent everything before this position (other databases share
                // the WAL, so our last commit may never reach the current LSN by itself)
                self.last_end = self.last_end.max(server_lsn);
                if self.ack {
                    let _ = self.durable.send(server_lsn);
                }
            }
        }
        let _ = &self.pending;
    }
}

struct Running {
    events: mpsc::Receiver<SourceEvent>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<lakewriter::Result<()>>,
    consumer: Consumer,
}

impl Running {
    async fn start(db: &TestDb, ack: bool) -> Running {
        let config =
            Config::parse(&db.config_toml(""), Path::new("test.toml"), Vec::new()).expect("config");
        let (tx, events) = mpsc::channel(16);
        let (durable_tx, durable_rx) = watch::channel(Lsn::ZERO);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let settings = StreamSettings {
            batch_rows: 500,
            status_interval: Duration::from_millis(100),
            ..StreamSettings::default()
        };
        let task =
            tokio::spawn(
                async move { stream(&config, settings, tx, durable_rx, shutdown_rx).await },
            );
        Running {
            events,
            shutdown,
            task,
            consumer: Consumer {
                table: Table::new(),
                pending: Table::new(),
                pending_batches: Vec::new(),
                last_end: Lsn::ZERO,
                starts: 0,
                ack,
                durable: durable_tx,
                schemas: Vec::new(),
            },
        }
    }

    /// Consumes events until the consumer has every commit up to `lsn`.
    async fn until(&mut self, lsn: Lsn) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.consumer.last_end < lsn {
            assert!(
                Instant::now() < deadline,
                "stream stalled at {}",
                self.consumer.last_end
            );
            match tokio::time::timeout(Duration::from_secs(5), self.events.recv()).await {
                Ok(Some(event)) => self.consumer.handle(event),
                Ok(None) => panic!("the stream ended: {:?}", (&mut self.task).await),
                Err(_) => {}
            }
        }
    }

    /// Consumes events for `time`.
    async fn drain_for(&mut self, time: Duration) {
        let deadline = tokio::time::Instant::now() + time;
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            self.consumer.handle(event);
        }
    }

    async fn stop(self) -> Consumer {
        let _ = self.shutdown.send(true);
        let mut events = self.events;
        let drain = async { while events.recv().await.is_some() {} };
        let (result, ()) = tokio::join!(self.task, drain);
        result.expect("join").expect("the stream stops cleanly");
        self.consumer
    }
}

async fn orders_db(label: &str, rows: u32) -> TestDb {
    let db = TestDb::new(label).await;
    db.psql(&["-v", &format!("rows={rows}"), "-f", "sql/orders.sql"]);
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "CREATE PUBLICATION {} FOR TABLE orders",
            db.publication
        ))
        .await
        .expect("publication");
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&db.slot],
        )
        .await
        .expect("slot");
    db
}

#[tokio::test]
async fn the_workload_streams_into_arrow_and_rebuilds_the_table() {
    // the slot starts empty: the rows seeded before it are the consumer's starting point
    let db = orders_db("stream_workload", 300).await;
    let mut running = Running::start(&db, true).await;
    running.consumer.table = postgres_orders(&db).await;
    db.workload(4, 700);
    let end = db.current_lsn().await;
    running.until(end).await;
    let consumer = running.stop().await;
    assert_eq!(
        consumer.schemas.len(),
        1,
        "one Relation shape: {:?}",
        consumer.schemas
    );
    let expected = postgres_orders(&db).await;
    assert_eq!(consumer.table.len(), expected.len());
    assert!(
        consumer.table == expected,
        "the streamed table differs from PostgreSQL"
    );
}

#[tokio::test]
async fn nothing_is_acknowledged_before_it_is_durable_and_idle_slots_advance() {
    let db = orders_db("stream_ack", 10).await;
    let start = db.confirmed_flush().await;
    let initial = postgres_orders(&db).await;

    // A consumer that never acknowledges: the slot must not move past the changes.
    let mut running = Running::start(&db, false).await;
    running.consumer.table = initial.clone();
    db.psql(&["-v", "rounds=1", "-v", "batch=50", "-f", "sql/workload.sql"]);
    let end = db.current_lsn().await;
    running.until(end).await;
    running.drain_for(Duration::from_millis(600)).await;
    assert_eq!(
        db.confirmed_flush().await,
        start,
        "acknowledged what nobody made durable"
    );
    running.stop().await;

    // Nothing was acknowledged, so a new session gets the whole workload again (as after a
    // crash before the lake commit): applied to the initial rows, it rebuilds the table.
    // Then traffic on an unpublished table only: the slot's position still advances past it,
    // so it holds no WAL for nothing.
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE unpublished (id int); INSERT INTO unpublished SELECT generate_series(1, 1000)",
        )
        .await
        .expect("unpublished traffic");
    let after_unpublished = db.current_lsn().await;
    let mut running = Running::start(&db, true).await;
    running.consumer.table = initial;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        running.drain_for(Duration::from_millis(300)).await;
        if db.confirmed_flush().await >= after_unpublished {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the idle slot stayed at {} below {after_unpublished}",
            db.confirmed_flush().await
        );
    }
    let consumer = running.stop().await;
    assert!(
        consumer.table == postgres_orders(&db).await,
        "the replay rebuilt the table"
    );
}

#[tokio::test]
async fn a_killed_connection_resumes_from_the_durable_position() {
    let db = orders_db("stream_reconnect", 100).await;
    let mut running = Running::start(&db, true).await;
    running.consumer.table = postgres_orders(&db).await;
    db.workload(2, 200);
    running.until(db.current_lsn().await).await;
    // Kill the walsender, as a network failure or a failover would.
    let killed: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots \
             WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &[&db.slot],
        )
        .await
        .expect("terminate")
        .get(0);
    assert_eq!(killed, 1);
    db.workload(2, 200);
    running.until(db.current_lsn().await).await;
    let consumer = running.stop().await;
    assert!(consumer.starts >= 2, "the stream reconnected");
    assert!(consumer.table == postgres_orders(&db).await);
}

#[tokio::test]
async fn schema_changes_and_unchanged_toast_values_are_reported() {
    let db = TestDb::new("stream_schema").await;
    let client = db.client().await;
    for statement in [
        "CREATE TABLE docs (id int PRIMARY KEY, body text, n int)".to_string(),
        format!("CREATE PUBLICATION {} FOR TABLE docs", db.publication),
        format!("SELECT pg_create_logical_replication_slot('{}', 'pgoutput')", db.slot),
        // a body far past the TOAST threshold, incompressible so it is stored out of line
        "INSERT INTO docs SELECT 1, string_agg(md5(i::text), ''), 0 FROM generate_series(1, 2000) i"
            .to_string(),
        "UPDATE docs SET n = 1 WHERE id = 1".to_string(),
        "ALTER TABLE docs ADD COLUMN tag text".to_string(),
        "INSERT INTO docs VALUES (2, 'short', 2, 'new')".to_string(),
        "ALTER TABLE docs RENAME COLUMN tag TO label".to_string(),
        "INSERT INTO docs VALUES (3, 'x', 3, 'renamed')".to_string(),
        "ALTER TABLE docs ALTER COLUMN n TYPE bigint".to_string(),
        "INSERT INTO docs VALUES (4, 'y', 5000000000, 'wide')".to_string(),
        "ALTER TABLE docs DROP COLUMN label".to_string(),
        "INSERT INTO docs VALUES (5, 'z', 6)".to_string(),
        // a DDL that changes nothing pgoutput describes sends no new shape
        "CREATE INDEX ON docs (n)".to_string(),
        "INSERT INTO docs VALUES (6, 'w', 7)".to_string(),
    ] {
        client.batch_execute(&statement).await.expect("statement");
    }
    let mut running = Running::start(&db, true).await;
    let mut batches = Vec::new();
    let mut schemas = Vec::new();
    let end = db.current_lsn().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = Lsn::ZERO;
    while last < end {
        assert!(Instant::now() < deadline, "stalled");
        if let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_secs(5), running.events.recv()).await
        {
            match event {
                SourceEvent::Changes(batch) => batches.push(batch),
                SourceEvent::Schema { schema, .. } => schemas.push(schema),
                SourceEvent::Commit { end_lsn, .. } => last = last.max(end_lsn),
                SourceEvent::Idle { server_lsn } => last = last.max(server_lsn),
                _ => {}
            }
        }
    }
    running.stop().await;
    let names = |i: usize| -> Vec<String> {
        schemas[i]
            .arrow
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    };
    let types = |i: usize| -> Vec<String> {
        schemas[i]
            .arrow
            .fields()
            .iter()
            .map(|f| f.data_type().to_string())
            .collect()
    };
    assert_eq!(
        schemas.len(),
        5,
        "one shape per schema change: {:?}",
        (0..schemas.len()).map(names).collect::<Vec<_>>()
    );
    assert_eq!(names(0), ["id", "body", "n"]);
    assert_eq!(names(1), ["id", "body", "n", "tag"], "ADD COLUMN");
    assert_eq!(names(2), ["id", "body", "n", "label"], "RENAME COLUMN");
    assert_eq!(types(2)[2], "Int32");
    assert_eq!(types(3)[2], "Int64", "ALTER COLUMN TYPE");
    assert_eq!(names(4), ["id", "body", "n"], "DROP COLUMN");
    // the update left the toasted body unchanged: marked, not sent, not a null
    let update = batches
        .iter()
        .find(|b| b.ops == [Op::Update])
        .expect("the update");
    assert_eq!(update.unchanged_toast, vec![(0, 1)]);
    let insert = batches
        .iter()
        .find(|b| b.new.num_columns() == 4)
        .expect("the insert after ADD COLUMN");
    assert_eq!(insert.new.column(3).as_string::<i32>().value(0), "new");
    // every batch is in the shape of its own time
    for batch in &batches {
        assert!(batch.new.schema() == batch.schema.arrow_nullable);
    }
}
