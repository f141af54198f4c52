//! The operator files in `monitoring/`, checked with the real tools: the alert rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`, one per alert), and a real
//! Prometheus on 127.0.0.1 scraping a running `lakewriter run` every second reports as
//! committed the rows PostgreSQL has, and answers every query of the Grafana dashboard with
//! data. Prometheus and promtool come from Debian's `prometheus` package (scripts/stack
//! installs it).

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::http::{self, free_address};
use support::writer::{Writer, config_path, write_config};
use support::{TestDb, project_dir};

fn monitoring(file: &str) -> PathBuf {
    project_dir().join("monitoring").join(file)
}

/// `program` from PATH, or a failure that says how to install it.
fn tool(program: &str) -> Command {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{program} is not installed: run scripts/stack install (Debian's prometheus package)"
    );
    Command::new(program)
}

#[test]
fn the_alert_rules_pass_their_unit_tests_one_per_alert() {
    let check = tool("promtool")
        .args(["check", "rules"])
        .arg(monitoring("alerts.yml"))
        .output()
        .expect("run promtool check rules");
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let tested = tool("promtool")
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(project_dir().join("monitoring"))
        .output()
        .expect("run promtool test rules");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&tested.stdout),
        String::from_utf8_lossy(&tested.stderr)
    );
    assert!(tested.status.success(), "{said}");
    assert!(said.contains("SUCCESS"), "{said}");

    // every alert has a test of its own
    let rules = std::fs::read_to_string(monitoring("alerts.yml")).expect("read alerts.yml");
    let tests = std::fs::read_to_string(monitoring("alerts.test.yml")).expect("read the tests");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 6, "{alerts:?}");
    for alert in alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "alert {alert} has no unit test"
        );
    }
}

/// Every query of the dashboard (its panels' targets).
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(monitoring("dashboard.json")).expect("read dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard.json is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect()
}

/// A Prometheus server with its data in a temporary directory, stopped on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts one that scrapes `target` every second as job `lakewriter`, with the alert rules.
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("a directory for Prometheus");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: lakewriter\n    static_configs:\n      \
                 - targets: ['{target}']\n",
                rules = monitoring("alerts.yml").display()
            ),
        )
        .expect("write prometheus.yml");
        let addr = free_address();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("a log file");
        let child = tool("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The result vector of the instant query `expr`; `None` while Prometheus does not answer.
    fn query(&self, expr: &str) -> Option<Vec<serde_json::Value>> {
        let encoded: String = url::form_urlencoded::byte_serialize(expr.as_bytes()).collect();
        let answer = http::get(self.addr, &format!("/api/v1/query?query={encoded}"), &[])?;
        let body: serde_json::Value = serde_json::from_str(&answer.body).ok()?;
        assert_eq!(
            body["status"], "success",
            "query {expr} failed: {}",
            answer.body
        );
        body["data"]["result"].as_array().cloned()
    }

    /// The single value `expr` evaluates to, when it has one.
    fn value(&self, expr: &str) -> Option<f64> {
        let result = self.query(expr)?;
        let first = result.first()?;
        first["value"][1].as_str()?.parse().ok()
    }
}

async fn wait_until(
    what: &str,
    writer: &mut Writer,
    prometheus: &Prometheus,
    log: &Path,
    mut done: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        if let Ok(Some(status)) = writer.try_wait() {
            panic!(
                "lakewriter exited with {status}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "never saw {what}\nwriter log: {}\nprometheus log: {}",
            std::fs::read_to_string(log).unwrap_or_default(),
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn prometheus_scraping_the_writer_sees_the_rows_postgres_has_and_every_dashboard_query_has_data()
 {
    let db = TestDb::new("metrics prometheus").await;
    db.psql(&[
        "-c",
        "CREATE TABLE events (id bigint PRIMARY KEY, kind text, at timestamptz DEFAULT now()); \
         INSERT INTO events (id, kind) SELECT g, 'seed' FROM generate_series(1, 200) g; \
         ANALYZE events;",
    ]);
    // compaction every few seconds, so its figures are there to chart
    write_config(&db, "[compaction]\ninterval = \"3s\"\n");
    let addr = free_address();
    let log = db.warehouse.path().join("writer.log");
    let file = std::fs::File::create(&log).expect("create the log file");
    let mut writer = Writer::from_child(
        Command::new(env!("CARGO_BIN_EXE_lakewriter"))
            .args(["run", "--config"])
            .arg(config_path(&db))
            .env("LAKEWRITER__METRICS__LISTEN", addr.to_string())
            .env_remove("LAKEWRITER_LOG")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start lakewriter run"),
    );
    let prometheus = Prometheus::start(addr);

    // streamed changes in a few transactions, after the copy
    wait_until("the writer ready", &mut writer, &prometheus, &log, || {
        http::get(addr, "/readyz", &[]).is_some_and(|a| a.status == 200)
    })
    .await;
    for round in 0..5 {
        let from = 1000 + round * 100;
        db.psql(&[
            "-c",
            &format!(
                "INSERT INTO events (id, kind) SELECT g, 'stream' FROM generate_series({from}, {}) g;",
                from + 99
            ),
        ]);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let rows: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 700);

    wait_until(
        "Prometheus report the rows PostgreSQL has as committed",
        &mut writer,
        &prometheus,
        &log,
        || {
            prometheus.value(
                r#"sum(lakewriter_committed_rows_total{job="lakewriter", table="public.events"})"#,
            ) == Some(rows as f64)
        },
    )
    .await;
    assert_eq!(
        prometheus.value(r#"up{job="lakewriter"}"#),
        Some(1.0),
        "the target is up"
    );

    // every dashboard query answers with data (compaction runs every 3 s; rates need two
    // samples of a series)
    let queries = dashboard_queries();
    assert!(queries.len() >= 12, "{queries:?}");
    let mut missing: Vec<String> = queries.clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        missing.retain(|q| prometheus.query(q).is_none_or(|r| r.is_empty()));
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dashboard queries without data: {missing:#?}\nwriter log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // and the target was scraped as Prometheus text without a failure
    assert_eq!(
        prometheus.value(r#"sum(lakewriter_table_state{state="streaming"})"#),
        Some(1.0)
    );
}
