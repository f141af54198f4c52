//! `lakewriter run` with `sink.format = "delta"` as a user runs it — the binary, against the
//! real PostgreSQL, writing Delta tables into a local warehouse — read back by DuckDB's
//! `delta_scan`, an independent reader. The lake must equal PostgreSQL row for row: after a
//! clean stop, after a restart that resumes from the `txn` checkpoint, and after the writer is
//! killed with SIGKILL at random moments and restarted.

mod support;

use std::path::PathBuf;

use support::TestDb;
use support::delta::{commit_count, delta_query, txn_version};
use support::extremes;
use support::orders::{LAKE_DUPLICATES, LAKE_LINES, postgres_lines};
use support::writer::{caught_up, crash_and_restart, start_with, stop, write_config};

const DELTA: &[(&str, &str)] = &[("SINK__FORMAT", "delta")];

/// Where the writer puts the Delta table of `public.<name>`.
fn location(db: &TestDb, name: &str) -> PathBuf {
    db.warehouse.path().join(&db.namespace).join(name)
}

/// The lines of `postgres_lines` from the Delta table, read by DuckDB; also checks no key
/// appears twice.
fn lake_lines(db: &TestDb) -> Vec<String> {
    let table = location(db, "orders");
    assert_eq!(
        delta_query(&table, LAKE_DUPLICATES),
        ["0"],
        "duplicated keys in the lake"
    );
    delta_query(&table, LAKE_LINES)
}

/// The checkpoint the Delta log of `orders` holds (its latest `txn` version).
fn checkpoint(db: &TestDb) -> Option<i64> {
    txn_version(
        &location(db, "orders"),
        &format!("lakewriter.lsn:{}.orders", db.namespace),
    )
}

#[tokio::test]
async fn run_streams_into_delta_and_resumes_from_its_txn_checkpoint() {
    let db = TestDb::new("run_delta").await;
    db.psql(&["-v", "rows=5000", "-f", "sql/orders.sql"]);
    let mut child = start_with(&db, DELTA);
    db.workload(3, 400);
    caught_up(&db, &mut child).await;
    let log = stop(child);
    assert!(log.contains("stopped"), "{log}");
    assert!(
        log.contains("snapshot"),
        "the first run copies the table: {log}"
    );
    assert_eq!(lake_lines(&db), postgres_lines(&db).await);
    let first = checkpoint(&db).expect("a checkpoint in the Delta log");
    assert!(first > 0, "checkpoint {first}");

    // changes made while the writer is down arrive after a restart, nothing twice: the new run
    // copies nothing again (the table has its checkpoint) and skips what the lake holds
    db.workload(2, 300);
    let mut child = start_with(&db, DELTA);
    caught_up(&db, &mut child).await;
    let log = stop(child);
    assert!(
        !log.contains("snapshot"),
        "the table was copied again: {log}"
    );
    assert_eq!(lake_lines(&db), postgres_lines(&db).await);
    let second = checkpoint(&db).expect("a checkpoint");
    assert!(
        second > first,
        "the checkpoint did not move: {first} then {second}"
    );
}

#[tokio::test]
async fn truncates_and_added_columns_reach_the_delta_table() {
    let db = TestDb::new("run_delta_evolve").await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE docs (id int PRIMARY KEY, body text, n int);
             INSERT INTO docs SELECT i, repeat(md5(i::text), 400), i FROM generate_series(1, 20) i;",
        )
        .await
        .expect("schema");
    let mut child = start_with(&db, DELTA);
    caught_up(&db, &mut child).await;
    for statement in [
        // the toasted body is not sent: the writer must find it in the lake
        "UPDATE docs SET n = n + 100 WHERE id <= 5",
        "ALTER TABLE docs ADD COLUMN tag text",
        "UPDATE docs SET tag = 'tagged' WHERE id BETWEEN 3 AND 8",
        "DELETE FROM docs WHERE id = 20",
    ] {
        db.client()
            .await
            .batch_execute(statement)
            .await
            .expect(statement);
    }
    caught_up(&db, &mut child).await;
    let query = "SELECT id, md5(body), n, tag FROM {scan} ORDER BY id";
    let expected = |db: &TestDb| {
        let url = db.url.clone();
        async move {
            support::connect(&url)
                .await
                .query(
                    "SELECT id || '|' || md5(body) || '|' || n || '|' || coalesce(tag, 'NULL') \
                     FROM docs ORDER BY id",
                    &[],
                )
                .await
                .expect("read")
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        delta_query(&location(&db, "docs"), query),
        expected(&db).await
    );

    for statement in [
        "TRUNCATE docs",
        "INSERT INTO docs VALUES (100, 'after truncate', 1, 'new')",
    ] {
        db.client()
            .await
            .batch_execute(statement)
            .await
            .expect(statement);
    }
    caught_up(&db, &mut child).await;
    stop(child);
    assert_eq!(
        delta_query(&location(&db, "docs"), query),
        expected(&db).await
    );
}

#[tokio::test]
async fn a_transaction_larger_than_the_memory_budget_reaches_delta_in_one_commit() {
    let db = TestDb::new("run_delta_spill").await;
    db.psql(&["-v", "rows=1000", "-f", "sql/orders.sql"]);
    let spill = tempfile::tempdir().expect("a temporary directory");
    let spill_dir = spill.path().display().to_string();
    let settings = [
        ("SINK__FORMAT", "delta"),
        ("FLUSH__MEMORY_BUDGET", "256KiB"),
        ("FLUSH__MAX_BYTES", "128KiB"),
        ("FLUSH__SPILL_DIR", spill_dir.as_str()),
    ];
    let mut child = start_with(&db, &settings);
    caught_up(&db, &mut child).await;
    let copied = commit_count(&location(&db, "orders"));
    db.client()
        .await
        .batch_execute(
            "BEGIN;
             INSERT INTO orders (customer_id, order_date, total_amount, status)
               SELECT g % 97, date '2024-06-01', g, 'new' FROM generate_series(1, 20000) g;
             UPDATE orders SET status = 'paid' WHERE order_id % 3 = 0;
             UPDATE orders SET order_id = order_id + 1000000 WHERE order_id % 7 = 0;
             DELETE FROM orders WHERE order_id % 11 = 0;
             COMMIT;",
        )
        .await
        .expect("one large transaction");
    // an insert-only one: its parts go straight into the table's data files
    db.client()
        .await
        .batch_execute(
            "INSERT INTO orders (customer_id, order_date, total_amount, status)
               SELECT g % 89, date '2024-07-01', g, 'new' FROM generate_series(1, 20000) g;",
        )
        .await
        .expect("one large insert-only transaction");
    caught_up(&db, &mut child).await;
    let log = stop(child);
    assert!(
        log.contains("spilling"),
        "the transaction was not spilled: {log}"
    );
    assert_eq!(
        lake_lines(&db),
        postgres_lines(&db).await,
        "after a spilled transaction the lake differs from PostgreSQL"
    );
    // one more commit per transaction, staged parts included
    assert_eq!(commit_count(&location(&db, "orders")), copied + 2);
    // the initial copy's commit and the insert-only transaction's name the data files their
    // parts wrote; the merging transaction's none
    let file_commits = plain(&log)
        .lines()
        .filter(|l| {
            l.contains("committed") && l.contains("data_files=") && !l.contains("data_files=0")
        })
        .count();
    assert_eq!(
        file_commits, 2,
        "commits of parts written as data files: {log}"
    );
    let staged = spill.path().join("lakewriter-delta-staged");
    let left: usize = std::fs::read_dir(&staged)
        .map(|dirs| {
            dirs.filter_map(|d| d.ok())
                .map(|d| std::fs::read_dir(d.path()).map_or(0, |f| f.count()))
                .sum()
        })
        .unwrap_or(0);
    assert_eq!(left, 0, "staged files left in {}", staged.display());
}

/// `log` without its ANSI colour escapes.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // an escape runs to its final letter
            for e in chars.by_ref() {
                if e.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test]
async fn changelog_tables_append_every_change_and_upsert_tables_partition_by_column() {
    let db = TestDb::new("run_delta_changelog").await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE events (id int PRIMARY KEY, kind text);
             CREATE TABLE items (id int PRIMARY KEY, region text NOT NULL, qty int);
             ALTER TABLE items REPLICA IDENTITY FULL;
             INSERT INTO events VALUES (1, 'a');
             INSERT INTO items SELECT i, CASE WHEN i % 2 = 0 THEN 'eu' ELSE 'us' END, i
               FROM generate_series(1, 10) i;",
        )
        .await
        .expect("schema");
    write_config(
        &db,
        "[sink.tables.\"public.items\"]\npartition_by = [\"region\"]\n\
         [source.tables.\"public.events\"]\nmode = \"changelog\"\n",
    );
    let mut child = start_with(&db, DELTA);
    caught_up(&db, &mut child).await;
    for statement in [
        "UPDATE events SET kind = 'b' WHERE id = 1",
        "DELETE FROM events WHERE id = 1",
        "UPDATE items SET qty = qty * 10 WHERE id <= 4",
        "UPDATE items SET region = 'eu' WHERE id = 5",
        "DELETE FROM items WHERE id = 6",
    ] {
        db.client()
            .await
            .batch_execute(statement)
            .await
            .expect(statement);
    }
    caught_up(&db, &mut child).await;
    stop(child);
    assert_eq!(
        delta_query(
            &location(&db, "events"),
            "SELECT _op, id, coalesce(kind, 'NULL') FROM {scan} ORDER BY _lsn"
        ),
        ["I|1|a", "U|1|b", "D|1|NULL"]
    );
    let expected: Vec<String> = db
        .client()
        .await
        .query(
            "SELECT id || '|' || region || '|' || qty FROM items ORDER BY id",
            &[],
        )
        .await
        .expect("read")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let items = location(&db, "items");
    assert_eq!(
        delta_query(&items, "SELECT id, region, qty FROM {scan} ORDER BY id"),
        expected
    );
    assert!(
        items.join("region=eu").is_dir(),
        "not partitioned by region"
    );
}

#[tokio::test]
async fn kill_9_at_random_moments_loses_and_duplicates_nothing_in_delta() {
    let db = TestDb::new("run_delta_crash").await;
    db.psql(&["-v", "rows=20000", "-f", "sql/orders.sql"]);
    // beside orders, the table of extreme values, changed all through the crashes: its
    // decimals at full precision once left a Delta table no reader could load
    extremes::create(&db);
    let changing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = changing.clone();
    let client = db.client().await;
    let changes = tokio::spawn(async move {
        let mut round = 0;
        while flag.load(std::sync::atomic::Ordering::Relaxed) {
            round += 1;
            client
                .batch_execute(&extremes::changes(round))
                .await
                .expect("change extremes");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        round
    });
    crash_and_restart(&db, DELTA, 8, 6, 3000).await;
    changing.store(false, std::sync::atomic::Ordering::Relaxed);
    let rounds = changes.await.expect("the extremes' changes");
    assert!(rounds > 0, "the extremes never changed during the crashes");
    // one more run takes in the extremes' last changes
    let mut child = start_with(&db, DELTA);
    caught_up(&db, &mut child).await;
    stop(child);
    let extremes_location = location(&db, "extremes");
    assert_eq!(
        delta_query(&extremes_location, extremes::LAKE_DECIMALS),
        extremes::postgres_decimals(&db).await,
        "the extremes in Delta differ from PostgreSQL"
    );
    assert_eq!(lake_lines(&db), postgres_lines(&db).await);
}

/// A moto server (S3 and Glue) of one test, on a port of its own, stopped on drop: what a Glue
/// outage is made of.
#[derive(Debug)]
struct OwnMoto {
    child: std::process::Child,
    port: u16,
}

impl OwnMoto {
    /// Starts moto on `port` (a free one when `None`) and waits until it answers.
    fn start(port: Option<u16>) -> OwnMoto {
        let port = port.unwrap_or_else(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port()
        });
        let child = support::stack()
            .python()
            .arg(support::project_dir().join("scripts/moto_server.py"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start moto");
        let moto = OwnMoto { child, port };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto did not answer on port {port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        moto
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server: Glue is gone, and with it everything it held.
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnMoto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `[sink]` settings of a Delta lake in `bucket` on the stack's S3, registered in the Glue
/// at `glue_endpoint`; created bucket included. Returns the TOML to append to `[sink]`, the
/// environment overrides for the writer, and a config for the test's own clients.
async fn glue_lake(
    db: &TestDb,
    bucket: &str,
    glue_endpoint: &str,
) -> (String, Vec<(&'static str, String)>, lakewriter::Config) {
    let s3_endpoint = support::stack().aws_endpoint().to_string();
    let warehouse = format!("s3://{bucket}/warehouse");
    let extra = format!(
        "format = \"delta\"\ncatalog = \"glue\"\n[sink.s3]\nregion = \"us-east-1\"\n\
         endpoint = \"{s3_endpoint}\"\nforce_path_style = true\naccess_key_id = \"testing\"\n\
         secret_access_key = \"testing\"\n[sink.glue]\nregion = \"us-east-1\"\n\
         endpoint = \"{glue_endpoint}\"\n"
    );
    let clients = lakewriter::Config::parse(
        &format!(
            "[source]\ndatabase = \"unused\"\n\n[sink]\nnamespace = \"{}\"\n\
             warehouse = \"{warehouse}\"\n{extra}",
            db.namespace
        ),
        std::path::Path::new("run-delta-glue-clients.toml"),
        Vec::new(),
    )
    .expect("a valid config");
    let s3 = lakewriter::cloud::s3_client(&clients).await;
    support::create_bucket(&s3, bucket).await;
    (extra, vec![("SINK__WAREHOUSE", warehouse)], clients)
}

/// `(order_id, status)` of the lake's `orders` on S3, read by the Python `deltalake` package.
fn s3_lake_pairs(bucket: &str, namespace: &str) -> Vec<String> {
    let endpoint = support::stack().aws_endpoint().to_string();
    let options = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_S3_ALLOW_UNSAFE_RENAME", "true"),
    ];
    support::delta::python_delta_rows(
        &format!("s3://{bucket}/warehouse/{namespace}/orders"),
        &options,
        &["order_id", "status"],
    )
}

/// The same pairs from PostgreSQL, sorted as text like the lake's.
async fn postgres_pairs(db: &TestDb) -> Vec<String> {
    let mut pairs: Vec<String> = db
        .client()
        .await
        .query("SELECT order_id::text || '|' || status FROM orders", &[])
        .await
        .expect("read orders")
        .iter()
        .map(|r| r.get(0))
        .collect();
    pairs.sort();
    pairs
}

/// The Glue table of `orders`: its parameters, location and column names.
async fn glue_orders(
    glue: &aws_sdk_glue::Client,
    namespace: &str,
) -> (
    std::collections::HashMap<String, String>,
    Option<String>,
    Vec<String>,
) {
    let table = glue
        .get_table()
        .database_name(namespace)
        .name("orders")
        .send()
        .await
        .unwrap_or_else(|e| panic!("get glue table {namespace}.orders: {e:?}"))
        .table
        .expect("a glue table");
    let storage = table
        .storage_descriptor
        .clone()
        .expect("a storage descriptor");
    (
        table.parameters.clone().unwrap_or_default(),
        storage.location.clone(),
        storage
            .columns()
            .iter()
            .map(|c| c.name().to_string())
            .collect(),
    )
}

/// `settings` as the `(key, value)` pairs the writer helpers take.
fn pairs<'a>(settings: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    settings.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test]
async fn run_with_the_glue_catalog_writes_delta_on_s3_and_registers_it() {
    let db = TestDb::new("run_delta_glue").await;
    db.psql(&["-v", "rows=500", "-f", "sql/orders.sql"]);
    let bucket = format!("delta-run-glue-{}", std::process::id());
    let endpoint = support::stack().aws_endpoint().to_string();
    let (extra, settings, clients) = glue_lake(&db, &bucket, &endpoint).await;
    write_config(&db, &extra);
    let settings = pairs(&settings);

    let mut child = start_with(&db, &settings);
    caught_up(&db, &mut child).await;
    db.workload(2, 200);
    caught_up(&db, &mut child).await;
    stop(child);

    assert_eq!(
        s3_lake_pairs(&bucket, &db.namespace),
        postgres_pairs(&db).await,
        "the Delta table on S3 differs from PostgreSQL"
    );
    support::writer::command_ok(&db, &["verify"], &settings);
    let glue = lakewriter::cloud::glue_client(&clients).await;
    let (parameters, location, columns) = glue_orders(&glue, &db.namespace).await;
    assert_eq!(
        parameters.get("table_type").map(String::as_str),
        Some("DELTA")
    );
    assert_eq!(
        location.as_deref(),
        Some(format!("s3://{bucket}/warehouse/{}/orders", db.namespace).as_str())
    );
    assert!(columns.iter().any(|c| c == "order_id"), "{columns:?}");
}

#[tokio::test]
async fn a_glue_outage_after_a_delta_commit_keeps_the_commit_and_a_restart_registers_again() {
    let db = TestDb::new("run_delta_glue_outage").await;
    db.psql(&["-v", "rows=300", "-f", "sql/orders.sql"]);
    let bucket = format!("delta-glue-outage-{}", std::process::id());
    let mut glue_server = OwnMoto::start(None);
    let (extra, settings, clients) = glue_lake(&db, &bucket, &glue_server.endpoint()).await;
    write_config(&db, &extra);
    let settings = pairs(&settings);

    let mut child = start_with(&db, &settings);
    caught_up(&db, &mut child).await;
    let glue = lakewriter::cloud::glue_client(&clients).await;
    assert_eq!(
        glue_orders(&glue, &db.namespace)
            .await
            .0
            .get("table_type")
            .map(String::as_str),
        Some("DELTA")
    );

    // Glue goes away: commits that need no registration go on
    glue_server.stop();
    db.workload(1, 100);
    caught_up(&db, &mut child).await;
    assert_eq!(
        s3_lake_pairs(&bucket, &db.namespace),
        postgres_pairs(&db).await
    );

    // a new column is committed to the Delta log, then its registration fails: the run stops
    // with an error naming the table and Glue
    db.client()
        .await
        .batch_execute(
            "ALTER TABLE orders ADD COLUMN note text;
             INSERT INTO orders (customer_id, order_date, total_amount, status, note)
               VALUES (7, date '2024-08-01', 12.5, 'new', 'during the outage');",
        )
        .await
        .expect("add a column during the outage");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for lakewriter") {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let log = child.log();
    drop(child);
    let Some(status) = status else {
        panic!("lakewriter kept running without Glue: {}", plain(&log));
    };
    let log = plain(&log);
    assert!(
        !status.success(),
        "lakewriter exited cleanly without Glue: {log}"
    );
    assert!(
        log.lines().any(|l| l.starts_with("error:")
            && l.contains(&format!("{}.orders", db.namespace))
            && l.contains("Glue")),
        "no error naming the table and Glue: {log}"
    );

    // Glue back (empty: a new server on the same port): a restart registers the table again,
    // with the new column, and the lake catches up without loss or duplicates
    let _glue_back = OwnMoto::start(Some(glue_server.port));
    let mut child = start_with(&db, &settings);
    caught_up(&db, &mut child).await;
    stop(child);
    assert_eq!(
        s3_lake_pairs(&bucket, &db.namespace),
        postgres_pairs(&db).await,
        "after the outage the lake differs from PostgreSQL"
    );
    support::writer::command_ok(&db, &["verify"], &settings);
    let (parameters, _, columns) = glue_orders(&glue, &db.namespace).await;
    assert_eq!(
        parameters.get("table_type").map(String::as_str),
        Some("DELTA")
    );
    assert!(columns.iter().any(|c| c == "note"), "{columns:?}");
}
