//! The service end to end with an in-memory lake that keeps equality-delete semantics (and
//! refuses a key written twice): the initial snapshot plus the stream rebuild PostgreSQL's
//! table; a clean stop acknowledges everything; a restart continues exactly where the lake's
//! checkpoints say, duplicating nothing. (The Iceberg sink has its own tests; this one pins the
//! pipeline's logic against the real PostgreSQL.)

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use lakewriter::config::Config;
use lakewriter::pipeline::service;
use lakewriter::sink::{Sink, TableDelta, TableLayout};
use lakewriter::source::changes::TableSchema;
use lakewriter::table::TableId;
use lakewriter::{Lsn, Result};
use support::TestDb;
use support::orders::{Table, order_at, postgres_orders, postgres_table};
use tokio::sync::watch;

/// A lake in memory: per table, the rows by key and the checkpoint, with commits applied
/// atomically the way an Iceberg equality-delete snapshot applies.
#[derive(Debug, Default)]
struct MemoryLake {
    tables: HashMap<TableId, (Table, Option<Lsn>)>,
    /// Parts of a transaction too large for memory, waiting for its commit.
    staged: HashMap<TableId, Vec<TableDelta>>,
    commits: usize,
    staged_parts: usize,
}

impl Sink for MemoryLake {
    async fn prepare(
        &mut self,
        table: &TableId,
        _schema: &TableSchema,
        layout: &TableLayout,
    ) -> Result<Option<Lsn>> {
        assert_eq!(layout.key, vec!["order_id".to_string()]);
        Ok(self.tables.entry(table.clone()).or_default().1)
    }

    async fn commit(&mut self, delta: TableDelta) -> Result<()> {
        let staged = self.staged.remove(&delta.table).unwrap_or_default();
        let (rows, checkpoint) = self.tables.entry(delta.table.clone()).or_default();
        if delta.truncate {
            rows.clear();
        }
        // every delete of the commit applies before any of its rows, as in Iceberg
        let parts: Vec<&TableDelta> = staged.iter().chain([&delta]).collect();
        for batch in parts.iter().flat_map(|p| &p.deletes) {
            for row in 0..batch.num_rows() {
                let (key, _) = order_at(batch, row);
                rows.remove(&key.expect("a delete has its key"));
            }
        }
        for batch in parts.iter().flat_map(|p| &p.rows) {
            for row in 0..batch.num_rows() {
                let (key, order) = order_at(batch, row);
                let key = key.expect("key");
                let previous = rows.insert(key, order.expect("a row"));
                assert!(previous.is_none(), "key {key} written twice: a duplicate");
            }
        }
        if let Some(lsn) = delta.lsn {
            assert!(
                checkpoint.is_none_or(|c| lsn >= c),
                "the checkpoint went backwards"
            );
            *checkpoint = Some(lsn);
        }
        self.commits += 1;
        Ok(())
    }

    async fn stage(&mut self, part: TableDelta) -> Result<()> {
        self.staged_parts += 1;
        self.staged
            .entry(part.table.clone())
            .or_default()
            .push(part);
        Ok(())
    }

    fn discard_staged(&mut self, table: &TableId) {
        self.staged.remove(table);
    }

    fn known_checkpoint(&self, table: &TableId) -> Option<Lsn> {
        self.tables
            .get(table)
            .and_then(|(_, checkpoint)| *checkpoint)
    }

    async fn mark_incomplete(&mut self, table: &TableId) -> Result<()> {
        self.tables.entry(table.clone()).or_default().1 = None;
        Ok(())
    }

    async fn lookup(&mut self, _table: &TableId, _keys: &RecordBatch) -> Result<Vec<RecordBatch>> {
        panic!("orders has no TOAST columns")
    }
}

fn config(db: &TestDb, flush: &str) -> Arc<Config> {
    let text = db.config_toml(&format!("[flush]\nmax_latency = \"200ms\"\n{flush}"));
    Arc::new(Config::parse(&text, Path::new("test.toml"), Vec::new()).expect("config"))
}

/// Runs the service, with `during` running while it streams, until the lake holds everything
/// PostgreSQL committed; then stops it the way SIGTERM does.
async fn run_until_caught_up(db: &TestDb, lake: MemoryLake, during: impl FnOnce()) -> MemoryLake {
    run_with(db, "", lake, during).await
}

/// [`run_until_caught_up`] with more `[flush]` settings.
async fn run_with(db: &TestDb, flush: &str, lake: MemoryLake, during: impl FnOnce()) -> MemoryLake {
    let (stop, shutdown) = watch::channel(false);
    let config = config(db, flush);
    let task = tokio::spawn(async move { service::run(config, lake, shutdown).await });
    during();
    // a position taken once the slot exists is past its consistent point, so reaching it means
    // the initial copy is in the lake
    while slot_position(db).await == Lsn::ZERO {
        assert!(!task.is_finished(), "the service stopped early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let target = db.sync_point().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // caught up when the slot's acknowledged position passed the target
        let confirmed = slot_position(db).await;
        if confirmed >= target {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the service did not catch up: slot at {confirmed}, target {target}"
        );
        assert!(
            !task.is_finished(),
            "the service stopped early: {:?}",
            task.await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(true);
    task.await
        .expect("join")
        .expect("the service stops cleanly")
        .into_sink()
}

/// The slot's acknowledged position; zero until the service has created it.
async fn slot_position(db: &TestDb) -> Lsn {
    let row = db
        .client()
        .await
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.slot],
        )
        .await
        .expect("read the slot");
    row.and_then(|r| r.get::<_, Option<String>>(0))
        .and_then(|t| t.parse().ok())
        .unwrap_or(Lsn::ZERO)
}

#[tokio::test]
async fn snapshot_stream_stop_and_restart_keep_the_lake_equal_to_postgres() {
    let db = TestDb::new("service").await;
    db.psql(&["-v", "rows=3000", "-f", "sql/orders.sql"]);
    let table = TableId::new("public", "orders");

    // First run: creates the publication and the slot, copies, streams a workload.
    let lake = run_until_caught_up(&db, MemoryLake::default(), || {
        db.workload(2, 300);
    })
    .await;
    let expected = postgres_orders(&db).await;
    let (rows, checkpoint) = &lake.tables[&table];
    assert!(
        *rows == expected,
        "after the first run the lake differs from PostgreSQL"
    );
    assert!(checkpoint.is_some());

    // Changes while the service is down are picked up on restart, once.
    db.workload(2, 300);
    let commits_before = lake.commits;
    let lake = run_until_caught_up(&db, lake, || {
        db.workload(1, 300);
    })
    .await;
    assert!(
        lake.commits > commits_before,
        "the restart committed the new changes"
    );
    let (rows, _) = &lake.tables[&table];
    assert!(
        *rows == postgres_orders(&db).await,
        "after the restart the lake differs"
    );

    // A table added to the publication while the service runs is copied (its rows from before)
    // and then streamed.
    let lake = run_until_caught_up(&db, lake, || {
        db.psql(&[
            "-c",
            "CREATE TABLE orders_archive (LIKE orders INCLUDING ALL); \
             INSERT INTO orders_archive SELECT * FROM orders WHERE order_id % 3 = 0;",
        ]);
        db.psql(&[
            "-c",
            &format!(
                "ALTER PUBLICATION {} ADD TABLE orders_archive",
                db.publication
            ),
        ]);
        db.psql(&[
            "-c",
            "UPDATE orders_archive SET status = 'archived' WHERE order_id % 2 = 0; \
             DELETE FROM orders_archive WHERE order_id % 5 = 0;",
        ]);
    })
    .await;
    let archive = TableId::new("public", "orders_archive");
    let (rows, checkpoint) = lake
        .tables
        .get(&archive)
        .expect("the new table is in the lake");
    assert!(checkpoint.is_some());
    assert!(!rows.is_empty());
    assert!(
        *rows == postgres_table(&db, "orders_archive").await,
        "the new table differs"
    );

    // A restart with nothing new commits nothing and changes nothing.
    let commits_before = lake.commits;
    let lake = run_until_caught_up(&db, lake, || {}).await;
    assert_eq!(lake.commits, commits_before);
}

#[tokio::test]
async fn a_transaction_larger_than_the_memory_budget_is_committed_whole() {
    let db = TestDb::new("service_spill").await;
    db.psql(&["-v", "rows=2000", "-f", "sql/orders.sql"]);
    let table = TableId::new("public", "orders");
    // a budget of 256 KiB: the transaction below holds several MiB of changes
    let spill = tempfile::tempdir().expect("a temporary directory");
    let flush = format!(
        "memory_budget = \"256KiB\"\nmax_bytes = \"128KiB\"\nspill_dir = {:?}\n",
        spill.path().display().to_string()
    );
    let flush = flush.as_str();
    let lake = run_with(&db, flush, MemoryLake::default(), || {}).await;
    let commits_before = lake.commits;
    let lake = run_with(&db, flush, lake, || {
        db.psql(&[
            "-c",
            "BEGIN; \
             INSERT INTO orders (customer_id, order_date, total_amount, status) \
               SELECT g % 97, date '2024-06-01', g, 'new' FROM generate_series(1, 20000) g; \
             UPDATE orders SET status = 'paid', total_amount = total_amount + 1 \
               WHERE order_id % 3 = 0; \
             UPDATE orders SET order_id = order_id + 1000000 WHERE order_id % 7 = 0; \
             DELETE FROM orders WHERE order_id % 11 = 0; \
             INSERT INTO orders (order_id, customer_id, order_date, total_amount, status) \
               SELECT g, 1, date '2024-06-02', 0, 'again' FROM generate_series(7, 700, 7) g \
               WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.order_id = g); \
             COMMIT;",
        ]);
    })
    .await;
    assert!(lake.staged_parts > 1, "the transaction was not spilled");
    assert_eq!(
        lake.commits,
        commits_before + 1,
        "the transaction was not committed as one"
    );
    let (rows, _) = &lake.tables[&table];
    assert!(
        *rows == postgres_orders(&db).await,
        "after a spilled transaction the lake differs from PostgreSQL"
    );
    let left: Vec<_> = std::fs::read_dir(spill.path())
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "spill files were left behind: {left:?}");
}

#[tokio::test]
async fn a_partition_outside_the_replica_identity_is_refused() {
    let db = TestDb::new("service_partition").await;
    db.psql(&["-v", "rows=10", "-f", "sql/orders.sql"]);
    let text =
        db.config_toml("[sink.tables.\"public.orders\"]\npartition_by = [\"month(order_date)\"]\n");
    let config =
        Arc::new(Config::parse(&text, Path::new("test.toml"), Vec::new()).expect("config"));
    let (_stop, shutdown) = watch::channel(false);
    let err = service::run(config, MemoryLake::default(), shutdown)
        .await
        .expect_err("a delete could not reach the old partition");
    let message = err.to_string();
    assert!(message.contains("REPLICA IDENTITY FULL"), "{message}");
    assert!(message.contains("order_date"), "{message}");
}

/// `[flush] idle_rows`: a burst is committed as soon as the source has sent it all, long
/// before `max_latency`; a trickle below the threshold still waits for `max_latency` (or, here,
/// for the stop).
#[tokio::test]
async fn a_burst_is_committed_when_the_source_goes_idle_and_a_trickle_waits() {
    let db = TestDb::new("service_idle").await;
    db.psql(&["-v", "rows=10", "-f", "sql/orders.sql"]);
    let text = db.config_toml("[flush]\nmax_latency = \"1h\"\nidle_rows = 500\n");
    let config =
        Arc::new(Config::parse(&text, Path::new("test.toml"), Vec::new()).expect("config"));
    let (stop, shutdown) = watch::channel(false);
    let task =
        tokio::spawn(async move { service::run(config, MemoryLake::default(), shutdown).await });
    while slot_position(&db).await == Lsn::ZERO {
        assert!(!task.is_finished(), "the service stopped early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 2000 rows in one transaction: over the threshold, committed once the stream is idle
    db.psql(&[
        "-c",
        "INSERT INTO orders (customer_id, order_date, total_amount, status) \
           SELECT g % 97, date '2024-06-01', g, 'new' FROM generate_series(1, 2000) g",
    ]);
    let burst = db.current_lsn().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while slot_position(&db).await < burst {
        assert!(
            Instant::now() < deadline,
            "the burst was not committed while the source was idle (max_latency is 1h)"
        );
        assert!(!task.is_finished(), "the service stopped early");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // one row: under the threshold, it waits
    db.psql(&["-c", "UPDATE orders SET status = 'paid' WHERE order_id = 1"]);
    let trickle = db.current_lsn().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let acknowledged = slot_position(&db).await;
    assert!(
        acknowledged < trickle,
        "a one-row change was committed before max_latency (acknowledged {acknowledged}, \
         change before {trickle})"
    );

    let _ = stop.send(true);
    let lake = task
        .await
        .expect("join")
        .expect("the service stops cleanly")
        .into_sink();
    // the initial copy, the burst, and the trickle at the stop
    assert_eq!(lake.commits, 3, "commits: copy, burst, stop");
    let (rows, _) = &lake.tables[&TableId::new("public", "orders")];
    assert!(
        *rows == postgres_orders(&db).await,
        "the lake differs from PostgreSQL"
    );
}
