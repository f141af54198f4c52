//! `lakewriter run` with `[metrics] listen`, as an operator watches it: `/metrics` reports the
//! rows PostgreSQL has as committed (Prometheus text, OpenMetrics when asked), `/healthz` and
//! `/readyz` answer, a table stopped by a schema change makes `/readyz` fail naming it, a taken
//! address fails the start (and `doctor`) naming it, and the JSON log names tables and LSNs
//! without a secret.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::TestDb;
use support::http::{self, Answer, free_address, sample_sum};
use support::writer::{Writer, command, config_path};

const ACCESS_KEY: &str = "AKIAMETRICSTESTKEY01";
const SECRET_KEY: &str = "metrics-test-secret-key-never-logged";

/// Starts `lakewriter --log-format json run` serving metrics on `addr`, its log going to
/// `log` (a file: a pipe nobody reads would fill and stall the writer).
fn start_serving(db: &TestDb, addr: SocketAddr, log: &Path) -> Writer {
    let file = std::fs::File::create(log).expect("create the log file");
    let child = Command::new(env!("CARGO_BIN_EXE_lakewriter"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(config_path(db))
        .env("LAKEWRITER__METRICS__LISTEN", addr.to_string())
        // keys in the environment, as a service on AWS has them: never to be logged
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env_remove("LAKEWRITER_LOG")
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("start lakewriter run");
    Writer::from_child(child)
}

/// Polls `path` on `addr` until `done` holds for the answer, failing with the last answer
/// and the writer's log after a minute or when the writer exits.
async fn wait_for(
    addr: SocketAddr,
    path: &str,
    child: &mut Child,
    log: &Path,
    what: &str,
    done: impl Fn(&Answer) -> bool,
) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let answer = http::get(addr, path, &[]);
        if let Some(answer) = answer.as_ref().filter(|a| done(a)) {
            return Answer {
                status: answer.status,
                headers: answer.headers.clone(),
                body: answer.body.clone(),
            };
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "lakewriter exited with {status} while waiting for {what}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "never saw {what} on {path}; last answer: {answer:?}\nlog: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn count_rows(db: &TestDb, table: &str) -> i64 {
    db.client()
        .await
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count rows")
        .get(0)
}

#[tokio::test]
async fn the_endpoints_report_what_postgres_has_and_a_stopped_table_is_not_ready() {
    let db = TestDb::new("metrics endpoints").await;
    db.psql(&[
        "-c",
        "CREATE TABLE items (id int PRIMARY KEY, name text); \
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 50) g; \
         CREATE TABLE other (id int PRIMARY KEY); ANALYZE items;",
    ]);
    let addr = free_address();
    let log = db.warehouse.path().join("writer.log");
    let mut writer = start_serving(&db, addr, &log);

    // ready once streaming: the snapshot's rows are committed
    let ready = wait_for(addr, "/readyz", &mut writer, &log, "ready", |a| {
        a.status == 200
    })
    .await;
    assert!(ready.body.contains("ok"), "{}", ready.body);
    db.psql(&[
        "-c",
        "INSERT INTO items SELECT g, 'item ' || g FROM generate_series(51, 80) g; \
         UPDATE items SET name = 'renamed' WHERE id <= 5; DELETE FROM items WHERE id = 80;",
    ]);
    let postgres = count_rows(&db, "items").await;
    assert_eq!(postgres, 79);

    // every change received, and the rows committed: the copy's 50 and the stream's 30 new
    // rows and 5 new versions (a delete writes no row)
    let metrics = wait_for(
        addr,
        "/metrics",
        &mut writer,
        &log,
        "the stream's commits",
        |a| {
            sample_sum(
                &a.body,
                "lakewriter_changes_received_total",
                &[r#"table="public.items""#],
            ) == Some(36.0)
                && sample_sum(
                    &a.body,
                    "lakewriter_committed_rows_total",
                    &[r#"table="public.items""#],
                ) == Some(50.0 + 29.0 + 5.0)
                && sample_sum(&a.body, "lakewriter_slot_retained_wal_bytes", &[]).is_some()
        },
    )
    .await;
    let body = &metrics.body;
    let value = |name: &str, labels: &[&str]| {
        sample_sum(body, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{body}"))
    };
    let items = r#"table="public.items""#;
    assert_eq!(
        value(
            "lakewriter_changes_received_total",
            &[items, r#"op="insert""#]
        ),
        30.0
    );
    assert_eq!(
        value(
            "lakewriter_changes_received_total",
            &[items, r#"op="update""#]
        ),
        5.0
    );
    assert_eq!(
        value(
            "lakewriter_changes_received_total",
            &[items, r#"op="delete""#]
        ),
        1.0
    );
    assert_eq!(
        value("lakewriter_committed_rows_total", &[items]),
        50.0 + 29.0 + 5.0
    );
    assert!(value("lakewriter_committed_deletes_total", &[items]) >= 1.0);
    assert!(value("lakewriter_commits_total", &[items]) >= 1.0);
    assert!(value("lakewriter_data_files_written_total", &[items]) >= 1.0);
    assert!(value("lakewriter_committed_bytes_total", &[items]) > 0.0);
    assert!(value("lakewriter_freshness_seconds_count", &[items]) >= 1.0);
    assert!(value("lakewriter_commit_duration_seconds_count", &[items]) >= 1.0);
    assert_eq!(
        value("lakewriter_snapshot_rows_copied_total", &[items]),
        50.0
    );
    assert_eq!(
        value("lakewriter_table_state", &[items, r#"state="streaming""#]),
        1.0
    );
    assert_eq!(value("lakewriter_stream_connected", &[]), 1.0);
    assert!(value("lakewriter_table_durable_lsn", &[items]) > 0.0);
    assert!(
        value("lakewriter_source_wal_end_lsn", &[])
            >= value("lakewriter_slot_confirmed_flush_lsn", &[])
    );
    assert!(value("lakewriter_memory_budget_bytes", &[]) > 0.0);
    assert_eq!(value("lakewriter_build_info", &[]), 1.0);
    assert!(
        metrics
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        metrics.headers
    );

    // OpenMetrics when the scraper asks for it
    let open = http::get(
        addr,
        "/metrics",
        &[(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )],
    )
    .expect("an OpenMetrics answer");
    assert_eq!(open.status, 200);
    assert!(
        open.header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        open.headers
    );
    assert!(open.body.ends_with("# EOF\n"), "{}", open.body);
    let health = http::get(addr, "/healthz", &[]).expect("a health answer");
    assert_eq!(health.status, 200, "{}", health.body);

    // the address is taken: a second writer and doctor both say which
    let second = command(&db, &["run"], &[("METRICS__LISTEN", &addr.to_string())]);
    assert!(!second.status.success());
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains(&addr.to_string()), "{said}");
    let doctor = command(&db, &["doctor"], &[("METRICS__LISTEN", &addr.to_string())]);
    assert!(!doctor.status.success());
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("error") && l.contains(&addr.to_string())),
        "{report}"
    );

    // an address of no interface of this machine (TEST-NET-1): the same, naming it
    let foreign = "192.0.2.1:9187";
    let refused = command(&db, &["run"], &[("METRICS__LISTEN", foreign)]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains(foreign), "{said}");

    // a type change the lake cannot take stops the table (on_table_error = stop_table)
    db.psql(&[
        "-c",
        "ALTER TABLE items ALTER COLUMN name TYPE integer USING length(name); \
         INSERT INTO items VALUES (1000, 7);",
    ]);
    let unready = wait_for(
        addr,
        "/readyz",
        &mut writer,
        &log,
        "the table stopped",
        |a| a.status == 503,
    )
    .await;
    let problems: serde_json::Value =
        serde_json::from_str(&unready.body).expect("a JSON body from /readyz");
    let listed = problems["problems"].to_string();
    assert!(listed.contains("public.items"), "{listed}");
    assert!(listed.contains("stopped"), "{listed}");
    let metrics = wait_for(
        addr,
        "/metrics",
        &mut writer,
        &log,
        "the stopped state",
        |a| {
            sample_sum(
                &a.body,
                "lakewriter_table_state",
                &[items, r#"state="stopped""#],
            ) == Some(1.0)
        },
    )
    .await;
    assert!(
        sample_sum(
            &metrics.body,
            "lakewriter_errors_total",
            &[r#"kind="sink""#]
        )
        .is_some_and(|n| n >= 1.0),
        "{}",
        metrics.body
    );
    // the process itself is alive
    let health = http::get(addr, "/healthz", &[]).expect("a health answer");
    assert_eq!(health.status, 200, "{}", health.body);
    drop(writer);

    // every event of a table in the JSON log carries it as a field, and its LSN where it
    // has one; the source's password appears nowhere
    let text = std::fs::read_to_string(&log).expect("read the log");
    let password = support::stack().var("PGPASSWORD").to_string();
    assert!(!password.is_empty());
    assert!(!text.contains(&password), "the password is in the log");
    assert!(
        !text.contains(ACCESS_KEY) && !text.contains(SECRET_KEY),
        "a key is in the log"
    );
    let mut committed = 0;
    for line in text.lines() {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
        let fields = &event["fields"];
        // the pipeline's commit of a flush and the sink's of its snapshot or version alike
        if fields["message"] == "committed" {
            committed += 1;
            assert!(fields["table"].is_string(), "{line}");
            assert!(
                fields["lsn"]
                    .as_str()
                    .is_some_and(|l| l.parse::<lakewriter::Lsn>().is_ok()),
                "an lsn field that is not an LSN: {line}"
            );
        }
    }
    assert!(committed >= 2, "no commits in the log: {text}");
}

#[tokio::test]
async fn status_json_reports_the_slot_and_each_table_with_the_metrics_names() {
    let db = TestDb::new("metrics status json").await;
    db.psql(&[
        "-c",
        "CREATE TABLE items (id int PRIMARY KEY, name text); \
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 40) g;",
    ]);
    let mut writer = support::writer::start(&db);
    support::writer::caught_up(&db, &mut writer).await;
    db.psql(&["-c", "INSERT INTO items VALUES (41, 'late');"]);
    support::writer::caught_up(&db, &mut writer).await;
    let log = support::writer::stop(writer);
    let durable = support::writer::stopped_at(&log);

    let text = support::writer::command_ok(&db, &["status", "--json"], &[]);
    let report: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("status --json: {e}: {text}"));
    let source = &report["source"];
    assert_eq!(source["slot"], db.slot.as_str(), "{text}");
    assert_eq!(source["slot_exists"], true, "{text}");
    assert_eq!(source["slot_active"], false, "{text}");
    assert!(source["slot_retained_wal_bytes"].is_i64(), "{text}");
    assert!(
        source["source_wal_end_lsn"].as_u64() >= source["slot_confirmed_flush_lsn"].as_u64(),
        "{text}"
    );
    let tables = report["tables"].as_array().expect("tables");
    assert_eq!(tables.len(), 1, "{text}");
    let items = &tables[0];
    assert_eq!(items["table"], format!("{}.items", db.namespace), "{text}");
    assert_eq!(items["rows"], 41, "{text}");
    assert!(
        items["data_files"].as_u64().is_some_and(|n| n >= 1),
        "{text}"
    );
    // the table's checkpoint is where the stopped writer said the lake was durable, at most
    let checkpoint = items["table_durable_lsn"].as_u64().expect("a checkpoint");
    assert!(checkpoint > 0 && checkpoint <= durable.get(), "{text}");
    assert_eq!(
        items["checkpoint"]
            .as_str()
            .and_then(|c| c.parse::<lakewriter::Lsn>().ok()),
        Some(lakewriter::Lsn(checkpoint)),
        "{text}"
    );
    assert!(
        items["last_commit_timestamp_seconds"].as_f64().is_some(),
        "{text}"
    );
}
