//! `lakewriter export` as a user runs it: PostgreSQL A → `lakewriter run` → the lake →
//! `lakewriter export` → PostgreSQL B (another database of the test cluster). B must equal A
//! after every round of inserts, updates, key changes and deletes, after a compaction (which
//! exports nothing), and after an export killed at each phase of its transaction and run
//! again; every refusal names the table and column, with nothing applied.

mod support;

use std::process::{Command, Output};

use support::TestDb;
use support::writer::{Writer, caught_up, command_ok, config_path, start, stop, write_config};

/// The orders of `db`, one line per row, in a text both databases print alike.
async fn orders(db: &TestDb) -> Vec<String> {
    orders_in(db, "public.orders").await
}

/// [`orders`] of another table of the same shape.
async fn orders_in(db: &TestDb, table: &str) -> Vec<String> {
    lines(
        db,
        &format!(
            "SELECT concat_ws('|', order_id, customer_id, order_date, total_amount, status, \
               created_at, updated_at) FROM {table} ORDER BY order_id"
        ),
    )
    .await
}

async fn lines(db: &TestDb, sql: &str) -> Vec<String> {
    db.client()
        .await
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Runs `lakewriter export` of the lake of `source` into `destination`, with more `args` and
/// environment `env`.
fn export(source: &TestDb, destination: &TestDb, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lakewriter"))
        .args(["export", "--config"])
        .arg(config_path(source))
        .args(args)
        .env("LAKEWRITER_EXPORT_TO", &destination.url)
        .envs(env.iter().copied())
        .output()
        .expect("run lakewriter export")
}

/// [`export`] of `public.orders`, asserting success; the counts it printed: rows upserted,
/// deleted, destination rows changed.
fn export_ok(source: &TestDb, destination: &TestDb, args: &[&str]) -> (u64, u64, u64) {
    export_ok_env(source, destination, args, &[])
}

/// [`export_ok`] with environment `env`.
fn export_ok_env(
    source: &TestDb,
    destination: &TestDb,
    args: &[&str],
    env: &[(&str, &str)],
) -> (u64, u64, u64) {
    let mut all = vec!["--table", "public.orders"];
    all.extend_from_slice(args);
    let output = export(source, destination, &all, env);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "export failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    counts(&stdout)
}

fn counts(stdout: &str) -> (u64, u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("public.orders -> "))
        .unwrap_or_else(|| panic!("no report line in {stdout}"));
    let number_before = |word: &str| -> u64 {
        let at = line
            .find(word)
            .unwrap_or_else(|| panic!("no {word:?} in {line}"));
        line[..at]
            .split_whitespace()
            .last()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count before {word:?} in {line}"))
    };
    (
        number_before(" rows upserted"),
        number_before(" deleted"),
        number_before(" destination rows changed"),
    )
}

/// The version the state table records for the orders export.
async fn exported_version(destination: &TestDb) -> Option<i64> {
    destination
        .client()
        .await
        .query_opt(
            "SELECT version FROM lakewriter_export.state WHERE destination = 'public.orders'",
            &[],
        )
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0))
}

#[tokio::test]
async fn rounds_of_changes_compaction_and_repairs_reach_the_destination() {
    let a = TestDb::new("export_rounds").await;
    let b = TestDb::new("export_rounds_dst").await;
    a.psql(&["-v", "rows=3000", "-f", "sql/orders.sql"]);
    let mut writer = start(&a);
    caught_up(&a, &mut writer).await;

    // the first export copies everything and creates the table
    let (upserted, deleted, _) = export_ok(&a, &b, &[]);
    assert_eq!((upserted, deleted), (3000, 0));
    assert_eq!(orders(&b).await, orders(&a).await);
    let key: Vec<String> = lines(
        &b,
        "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a \
           ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
         WHERE i.indrelid = 'public.orders'::regclass AND i.indisprimary",
    )
    .await;
    assert_eq!(key, vec!["order_id".to_string()]);

    for round in 0..3 {
        a.workload(1, 200 + round * 50);
        caught_up(&a, &mut writer).await;
        let (upserted, deleted, changed) = export_ok(&a, &b, &[]);
        assert!(
            upserted > 0 && deleted > 0,
            "round {round}: {upserted} {deleted}"
        );
        assert!(changed <= upserted + deleted, "round {round}");
        // only the touched keys, not the whole table
        assert!(
            upserted < 1000,
            "round {round}: {upserted} rows for a small round"
        );
        assert_eq!(orders(&b).await, orders(&a).await, "round {round}");
    }
    // nothing new: up to date
    assert_eq!(export_ok(&a, &b, &[]), (0, 0, 0));
    // a compaction moves rows without changing them: it exports nothing, yet is recorded
    let before = exported_version(&b).await;
    let compacted = command_ok(&a, &["compact"], &[]);
    assert_eq!(export_ok(&a, &b, &[]), (0, 0, 0));
    assert_ne!(
        exported_version(&b).await,
        before,
        "not recorded: {compacted}"
    );
    assert_eq!(orders(&b).await, orders(&a).await);
    // changes, then a compaction before the export: the changed rows have moved into the
    // compaction's files, and are read from there
    a.workload(1, 300);
    caught_up(&a, &mut writer).await;
    command_ok(&a, &["compact"], &[]);
    let (upserted, deleted, _) = export_ok(&a, &b, &[]);
    assert!(
        upserted > 0 && upserted < 1000 && deleted > 0,
        "{upserted} {deleted}"
    );
    assert_eq!(orders(&b).await, orders(&a).await);

    // a truncate drops every file: every key is gone but the ten new ones
    truncate_and_refill(&a, &mut writer).await;
    let (upserted, deleted, _) = export_ok(&a, &b, &[]);
    assert_eq!(upserted, 10);
    assert!(deleted > 3000, "{deleted}");
    assert_eq!(orders(&b).await, orders(&a).await);
    stop(writer);

    // a row changed in the destination by someone else: --full puts the lake's back and
    // says it changed one row, and removes a row the lake does not hold
    b.client()
        .await
        .batch_execute(
            "UPDATE public.orders SET status = 'tampered' WHERE order_id = \
               (SELECT min(order_id) FROM public.orders);
             INSERT INTO public.orders SELECT order_id + 50000000, customer_id, order_date, \
               total_amount, status, created_at, updated_at FROM public.orders LIMIT 1;",
        )
        .await
        .expect("tamper");
    let (upserted, deleted, changed) = export_ok(&a, &b, &["--full"]);
    assert_eq!((deleted, changed), (1, 2), "{upserted}");
    assert_eq!(orders(&b).await, orders(&a).await);

    // a last exported snapshot the lake no longer has: a clear error offering --full
    b.client()
        .await
        .batch_execute("UPDATE lakewriter_export.state SET version = 4242")
        .await
        .expect("point the state at a lost snapshot");
    let output = export(&a, &b, &["--table", "public.orders"], &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("4242") && stderr.contains("expired") && stderr.contains("--full"),
        "{stderr}"
    );
    export_ok(&a, &b, &["--full"]);
    assert_eq!(orders(&b).await, orders(&a).await);

    // status shows the export: the version the destination holds, and its age
    let version = exported_version(&b).await.expect("a recorded version");
    let status = command_ok(&a, &["status", "--exports-to", &b.url], &[]);
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("export {}.orders -> public.orders", a.namespace)))
        .unwrap_or_else(|| panic!("no export line in {status}"));
    assert!(
        line.contains(&format!("iceberg version {version} ")),
        "{line}"
    );
    assert!(line.contains(" s ago"), "{line}");
}

/// Truncates the orders and inserts ten new ones: the lake's truncate drops every file.
async fn truncate_and_refill(db: &TestDb, writer: &mut std::process::Child) {
    db.client()
        .await
        .batch_execute(
            "TRUNCATE public.orders;
             INSERT INTO public.orders (customer_id, order_date, total_amount, status)
             SELECT i, date '2025-01-01', 1.5, 'new' FROM generate_series(1, 10) i;",
        )
        .await
        .expect("truncate");
    caught_up(db, writer).await;
}

#[tokio::test]
async fn delta_tables_export_incrementally_and_exactly_once_too() {
    let a = TestDb::new("export_delta").await;
    let b = TestDb::new("export_delta_dst").await;
    a.psql(&["-v", "rows=2000", "-f", "sql/orders.sql"]);
    write_config(&a, "format = \"delta\"");
    let mut writer = start(&a);
    caught_up(&a, &mut writer).await;
    assert_eq!(export_ok(&a, &b, &[]), (2000, 0, 2000));
    assert_eq!(orders(&b).await, orders(&a).await);
    let (first, first_version) = (orders(&a).await, exported_version(&b).await);
    for round in 0..2 {
        a.workload(1, 200);
        caught_up(&a, &mut writer).await;
        let (upserted, deleted, _) = export_ok(&a, &b, &[]);
        assert!(
            upserted > 0 && deleted > 0,
            "round {round}: {upserted} {deleted}"
        );
        // a MERGE rewrites whole files: only the rows that differ are touched
        assert!(
            upserted < 1000,
            "round {round}: {upserted} rows for a small round"
        );
        assert_eq!(orders(&b).await, orders(&a).await, "round {round}");
    }
    // killed in the middle of the merge: nothing applied; the next run applies it once
    a.workload(1, 100);
    caught_up(&a, &mut writer).await;
    let held = orders(&b).await;
    let output = export(
        &a,
        &b,
        &["--table", "public.orders"],
        &[("LAKEWRITER_EXPORT_CRASH_AT", "merged")],
    );
    assert!(!output.status.success());
    assert_eq!(orders(&b).await, held);
    export_ok(&a, &b, &[]);
    assert_eq!(orders(&b).await, orders(&a).await);
    truncate_and_refill(&a, &mut writer).await;
    let (upserted, deleted, _) = export_ok(&a, &b, &[]);
    assert_eq!(upserted, 10);
    assert!(deleted > 2000, "{deleted}");
    assert_eq!(orders(&b).await, orders(&a).await);
    a.workload(1, 100);
    caught_up(&a, &mut writer).await;
    export_ok(&a, &b, &[]);
    // OPTIMIZE's actions carry dataChange = false: nothing to export
    command_ok(&a, &["compact"], &[]);
    assert_eq!(export_ok(&a, &b, &[]), (0, 0, 0));
    assert_eq!(orders(&b).await, orders(&a).await);
    // changes, then OPTIMIZE before the export: the files the changes wrote are gone again,
    // and the changed rows are found in OPTIMIZE's
    a.workload(1, 100);
    caught_up(&a, &mut writer).await;
    stop(writer);
    command_ok(&a, &["compact"], &[]);
    let (upserted, deleted, _) = export_ok(&a, &b, &[]);
    assert!(
        upserted > 0 && upserted < 1000 && deleted > 0,
        "{upserted} {deleted}"
    );
    assert_eq!(orders(&b).await, orders(&a).await);

    // time travel to the first export's version, into a fresh table
    let version = first_version.expect("a recorded version").to_string();
    let output = export(
        &a,
        &b,
        &[
            "--table",
            "public.orders=restore.orders",
            "--as-of",
            &version,
        ],
        &[],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(orders_in(&b, "restore.orders").await, first);
}

#[tokio::test]
async fn as_of_restores_a_table_as_it_was_at_a_snapshot_or_a_time() {
    let a = TestDb::new("export_as_of").await;
    let b = TestDb::new("export_as_of_dst").await;
    a.psql(&["-v", "rows=500", "-f", "sql/orders.sql"]);
    let mut writer = start(&a);
    caught_up(&a, &mut writer).await;
    export_ok(&a, &b, &[]);
    let (first, snapshot) = (orders(&a).await, exported_version(&b).await);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let then: String = lines(
        &a,
        "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
    .await
    .remove(0);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for _ in 0..2 {
        a.workload(1, 100);
        caught_up(&a, &mut writer).await;
    }
    stop(writer);
    export_ok(&a, &b, &[]);
    assert_eq!(orders(&b).await, orders(&a).await);
    assert_ne!(orders(&a).await, first);

    let snapshot = snapshot.expect("a recorded snapshot").to_string();
    for (destination, as_of) in [
        ("restore.by_id", snapshot.as_str()),
        ("restore.by_time", then.as_str()),
    ] {
        let target = format!("public.orders={destination}");
        let output = export(&a, &b, &["--table", &target, "--as-of", as_of], &[]);
        assert!(
            output.status.success(),
            "{as_of}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let restored = orders_in(&b, destination).await;
        assert_eq!(restored, first, "--as-of {as_of}");
    }
    // never over an existing table
    let output = export(
        &a,
        &b,
        &[
            "--table",
            "public.orders=restore.by_id",
            "--as-of",
            &snapshot,
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("restore.by_id") && stderr.contains("does not exist yet"),
        "{stderr}"
    );
    // and a later export without it brings the restored table forward
    export_ok(&a, &b, &[]);
    let output = export(&a, &b, &["--table", "public.orders=restore.by_id"], &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let forward = orders_in(&b, "restore.by_id").await;
    assert_eq!(forward, orders(&a).await);
}

#[tokio::test]
async fn every_keeps_exporting_until_sigterm() {
    let a = TestDb::new("export_every").await;
    let b = TestDb::new("export_every_dst").await;
    a.psql(&["-v", "rows=300", "-f", "sql/orders.sql"]);
    let mut writer = start(&a);
    caught_up(&a, &mut writer).await;
    // killed if the test fails before stopping it
    let exporter = Writer::from_child(
        Command::new(env!("CARGO_BIN_EXE_lakewriter"))
            .args(["export", "--config"])
            .arg(config_path(&a))
            .args(["--table", "public.orders", "--every", "500ms"])
            .env("LAKEWRITER_EXPORT_TO", &b.url)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start export --every"),
    );
    let mut equal = false;
    for round in 0..2 {
        a.workload(1, 100);
        caught_up(&a, &mut writer).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        equal = false;
        while std::time::Instant::now() < deadline {
            let exported = b
                .client()
                .await
                .query_opt("SELECT 1 FROM pg_class WHERE relname = 'orders'", &[])
                .await
                .ok()
                .flatten()
                .is_some();
            if exported && orders(&b).await == orders(&a).await {
                equal = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        assert!(equal, "round {round}: the destination never caught up");
    }
    assert!(equal);
    stop(writer);
    // SIGTERM between runs: a clean exit 0
    let log = stop(exporter);
    assert!(log.contains("stopping"), "{log}");
}

/// `export --every` killed with SIGKILL at random points while `run` is killed at random
/// points too, under a workload of inserts, updates, key changes and deletes: after a last
/// run and a last export, B equals A.
#[tokio::test]
async fn run_and_export_killed_at_random_points_leave_the_destination_equal() {
    let a = TestDb::new("export_kill").await;
    let b = TestDb::new("export_kill_dst").await;
    a.psql(&["-v", "rows=2000", "-f", "sql/orders.sql"]);
    write_config(&a, "");
    let mut writer = start(&a);
    caught_up(&a, &mut writer).await;
    stop(writer);

    let seed = std::env::var("LAKEWRITER_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(11)
        });
    println!("export kill seed: {seed} (replay with LAKEWRITER_CRASH_SEED={seed})");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let done = done.clone();
        let config = config_path(&a);
        let url = b.url.clone();
        std::thread::spawn(move || {
            let mut state = seed | 1;
            let mut kills = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let mut exporter = Writer::from_child(
                    Command::new(env!("CARGO_BIN_EXE_lakewriter"))
                        .args(["export", "--config"])
                        .arg(&config)
                        .args(["--table", "public.orders", "--every", "200ms"])
                        .env("LAKEWRITER_EXPORT_TO", &url)
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::piped())
                        .spawn()
                        .expect("start export --every"),
                );
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let wait = 100 + (state >> 33) % 1500;
                std::thread::sleep(std::time::Duration::from_millis(wait));
                if let Ok(Some(status)) = exporter.try_wait() {
                    let output = exporter
                        .into_child()
                        .wait_with_output()
                        .expect("the exporter's output");
                    panic!(
                        "export --every exited by itself with {status}: {}",
                        String::from_utf8_lossy(&output.stderr)
                    );
                }
                exporter.kill().expect("SIGKILL");
                let _ = exporter.wait();
                kills += 1;
            }
            kills
        })
    };
    support::writer::crash_and_restart(&a, &[], 6, 5, 2000).await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let kills = killer.join().expect("the exporter's killer");
    assert!(kills >= 3, "the exporter was killed {kills} times only");
    // some exports committed between the kills (the first created the table)
    assert_eq!(
        lines(&b, "SELECT count(*)::text FROM lakewriter_export.state").await,
        vec!["1".to_string()]
    );

    // whatever the kills left, the next export brings B to A
    export_ok(&a, &b, &[]);
    assert_eq!(orders(&b).await, orders(&a).await);
    assert_eq!(export_ok(&a, &b, &[]), (0, 0, 0));
}

/// A lake on S3 (moto) registered in Glue, Iceberg and Delta: the export reads it through
/// the same catalog and object store as the writer, whole and then incrementally.
#[tokio::test]
async fn a_lake_on_s3_with_glue_exports_whole_then_incrementally() {
    for format in ["iceberg", "delta"] {
        let a = TestDb::new(&format!("export_s3_{format}")).await;
        let b = TestDb::new(&format!("export_s3_{format}_dst")).await;
        a.psql(&["-v", "rows=1500", "-f", "sql/orders.sql"]);
        let endpoint = support::stack().aws_endpoint().to_string();
        let bucket = format!("export-{format}-{}", std::process::id());
        let warehouse = format!("s3://{bucket}/warehouse");
        let extra = format!(
            "format = \"{format}\"\ncatalog = \"glue\"\n\
             [sink.glue]\nregion = \"us-east-1\"\nendpoint = \"{endpoint}\"\n\
             [sink.s3]\nregion = \"us-east-1\"\nendpoint = \"{endpoint}\"\n\
             force_path_style = true\naccess_key_id = \"testing\"\n\
             secret_access_key = \"testing\"\n"
        );
        write_config(&a, &extra);
        let config = lakewriter::Config::parse(
            &a.config_toml(&extra),
            std::path::Path::new("export-s3.toml"),
            vec![("LAKEWRITER__SINK__WAREHOUSE".to_string(), warehouse.clone())],
        )
        .expect("a valid config");
        let s3 = lakewriter::cloud::s3_client(&config).await;
        support::create_bucket(&s3, &bucket).await;
        let mut writer = support::writer::start_with(&a, &[("SINK__WAREHOUSE", &warehouse)]);
        caught_up(&a, &mut writer).await;
        let env = [("LAKEWRITER__SINK__WAREHOUSE", warehouse.as_str())];
        assert_eq!(export_ok_env(&a, &b, &[], &env).0, 1500, "{format}");
        assert_eq!(orders(&b).await, orders(&a).await, "{format}");
        a.workload(1, 200);
        caught_up(&a, &mut writer).await;
        stop(writer);
        let (upserted, deleted, _) = export_ok_env(&a, &b, &[], &env);
        assert!(
            upserted > 0 && upserted < 1000 && deleted > 0,
            "{format}: {upserted} {deleted}"
        );
        assert_eq!(orders(&b).await, orders(&a).await, "{format}");
        let local = a.warehouse.path().join(&a.namespace);
        assert!(!local.exists(), "{format}: the lake went to local disk");
    }
}

#[tokio::test]
async fn an_export_killed_at_each_phase_applies_nothing_and_the_next_run_everything_once() {
    let a = TestDb::new("export_crash").await;
    let b = TestDb::new("export_crash_dst").await;
    a.psql(&["-v", "rows=2000", "-f", "sql/orders.sql"]);
    let mut writer = start(&a);
    caught_up(&a, &mut writer).await;

    // killed during the first export: no table, no state
    let output = export(
        &a,
        &b,
        &["--table", "public.orders"],
        &[("LAKEWRITER_EXPORT_CRASH_AT", "staged")],
    );
    assert!(!output.status.success());
    let tables = lines(
        &b,
        "SELECT count(*)::text FROM pg_class WHERE relname = 'orders'",
    )
    .await;
    assert_eq!(tables, vec!["0".to_string()]);
    assert_eq!(exported_version(&b).await, None);
    export_ok(&a, &b, &[]);
    assert_eq!(orders(&b).await, orders(&a).await);

    for phase in ["staged", "merged", "recorded"] {
        a.workload(1, 150);
        caught_up(&a, &mut writer).await;
        let (held, version) = (orders(&b).await, exported_version(&b).await);
        let output = export(
            &a,
            &b,
            &["--table", "public.orders"],
            &[("LAKEWRITER_EXPORT_CRASH_AT", phase)],
        );
        assert!(
            !output.status.success(),
            "{phase}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(orders(&b).await, held, "{phase}: something was applied");
        assert_eq!(exported_version(&b).await, version, "{phase}");
        let (upserted, _, _) = export_ok(&a, &b, &[]);
        assert!(upserted > 0, "{phase}");
        assert_eq!(orders(&b).await, orders(&a).await, "{phase}");
        // and once only: a second run finds nothing
        assert_eq!(export_ok(&a, &b, &[]), (0, 0, 0), "{phase}");
    }

    // a destination table dropped behind the state's back is not refilled with changes only
    b.client()
        .await
        .batch_execute("DROP TABLE public.orders")
        .await
        .expect("drop");
    a.workload(1, 50);
    caught_up(&a, &mut writer).await;
    let output = export(&a, &b, &["--table", "public.orders"], &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("the table is gone") && stderr.contains("--full"),
        "{stderr}"
    );
    export_ok(&a, &b, &["--full"]);
    assert_eq!(orders(&b).await, orders(&a).await);
    stop(writer);
}

#[tokio::test]
async fn every_supported_type_comes_back_and_several_tables_export_in_one_run() {
    let a = TestDb::new("export_types").await;
    let b = TestDb::new("export_types_dst").await;
    support::extremes::create(&a);
    a.client()
        .await
        .batch_execute(
            "CREATE TABLE kinds (
                 id bigint PRIMARY KEY, s smallint, b boolean, bin bytea, u uuid, tm time,
                 j jsonb, js json, v varchar(12), tags text[], big bigint[], n numeric(6,3));
             INSERT INTO kinds VALUES
               (1, -32768, true, '\\x00ff10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
                '23:59:59.999999', '{\"a\": [1, 2.5, null]}', '{\"b\" : 1}', 'héllo',
                '{x,NULL,\"y z\"}', '{-9223372036854775808,9223372036854775807}', -999.999),
               (2, NULL, false, '', NULL, '00:00:00', 'null', '[]', '', '{}', NULL, 0),
               (3, 32767, NULL, NULL, '00000000-0000-0000-0000-000000000000', NULL, NULL,
                NULL, NULL, NULL, '{}', NULL);",
        )
        .await
        .expect("kinds");
    let mut writer = start(&a);
    caught_up(&a, &mut writer).await;
    let run = |args: &[&str]| {
        let output = export(&a, &b, args, &[]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let tables = [
        "--table",
        "public.extremes",
        "--table",
        "public.kinds=copies.kinds_copy",
    ];
    let report = run(&tables);
    assert!(
        report.contains("public.extremes -> public.extremes (created)"),
        "{report}"
    );
    assert!(
        report.contains("public.kinds -> copies.kinds_copy (created)"),
        "{report}"
    );

    let extremes = "SELECT concat_ws('|', id, d, d0, d2, r, f, ts, tstz, day, a, t) \
                    FROM public.extremes ORDER BY id";
    let kinds = |table: &str| {
        format!(
            "SELECT concat_ws('|', id, s, b, encode(bin, 'hex'), u, tm, j::text, js::text, v, \
               tags, big, n, coalesce(array_length(tags, 1), -1)) FROM {table} ORDER BY id"
        )
    };
    let check = || async {
        assert_eq!(lines(&b, extremes).await, lines(&a, extremes).await);
        assert_eq!(
            lines(&b, &kinds("copies.kinds_copy")).await,
            lines(&a, &kinds("public.kinds")).await
        );
    };
    check().await;
    // the types the destination was created with: the lake's, mapped back
    let types = lines(
        &b,
        "SELECT attname || ' ' || format_type(atttypid, atttypmod) FROM pg_attribute \
         WHERE attrelid = 'copies.kinds_copy'::regclass AND attnum > 0 ORDER BY attnum",
    )
    .await;
    for expected in [
        "bin bytea",
        "u uuid",
        "tm time without time zone",
        "tags text[]",
        "big bigint[]",
        "n numeric(6,3)",
    ] {
        assert!(types.contains(&expected.to_string()), "{types:?}");
    }

    // incremental rounds on both tables, through the staging path
    for round in 1..=2 {
        support::extremes::update(&a, round).await;
        a.client()
            .await
            .batch_execute(&format!(
                "UPDATE kinds SET tags = tags || '{{r{round}}}', big = '{{}}' WHERE id = 1;
                 DELETE FROM kinds WHERE id = 3;
                 INSERT INTO kinds (id, u) VALUES ({}, gen_random_uuid());",
                10 + round
            ))
            .await
            .expect("change kinds");
        caught_up(&a, &mut writer).await;
        run(&tables);
        check().await;
    }
    stop(writer);
}

#[tokio::test]
async fn refusals_name_the_table_and_column_and_apply_nothing() {
    let a = TestDb::new("export_refusals").await;
    let b = TestDb::new("export_refusals_dst").await;
    a.psql(&["-v", "rows=100", "-f", "sql/orders.sql"]);
    let mut writer = start(&a);
    caught_up(&a, &mut writer).await;
    stop(writer);
    let refused = |args: &[&str], expected: &[&str]| {
        let output = export(&a, &b, args, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!output.status.success(), "accepted: {args:?}");
        for text in expected {
            assert!(stderr.contains(text), "{text:?} not in: {stderr}");
        }
        stderr
    };

    // a destination without one of the lake's columns
    let client = b.client().await;
    client
        .batch_execute("CREATE TABLE public.orders (order_id int PRIMARY KEY, customer_id int)")
        .await
        .expect("a narrow table");
    refused(
        &["--table", "public.orders"],
        &["public.orders", "order_date", "not a column"],
    );
    // a destination keyed on another column
    client
        .batch_execute(
            "DROP TABLE public.orders;
             CREATE TABLE public.orders (order_id int, customer_id int PRIMARY KEY,
               order_date date, total_amount numeric(10,2), status text,
               created_at timestamptz, updated_at timestamptz)",
        )
        .await
        .expect("another key");
    refused(
        &["--table", "public.orders"],
        &["public.orders", "primary key (customer_id)", "(order_id)"],
    );
    // a lake table that does not exist
    refused(
        &["--table", "public.nothing"],
        &["nothing", "no such table"],
    );
    // nothing applied, nothing recorded
    assert_eq!(
        lines(&b, "SELECT count(*)::text FROM public.orders").await,
        vec!["0".to_string()]
    );
    assert_eq!(exported_version(&b).await, None);

    // a role without the privileges: the error names the table, nothing is half-applied
    client
        .batch_execute("DROP TABLE public.orders")
        .await
        .expect("drop");
    let (upserted, _, _) = export_ok(&a, &b, &[]);
    assert_eq!(upserted, 100);
    let role = format!("{}_reader", b.name);
    client
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'reader';
             GRANT USAGE ON SCHEMA lakewriter_export, public TO {role};
             GRANT SELECT ON ALL TABLES IN SCHEMA lakewriter_export, public TO {role};"
        ))
        .await
        .expect("a reading role");
    client
        .batch_execute("DELETE FROM lakewriter_export.state")
        .await
        .expect("forget the export");
    let server = &b.url[b.url.find('@').expect("an @ in the URL") + 1..];
    let url = format!("postgres://{role}:reader@{server}");
    let output = Command::new(env!("CARGO_BIN_EXE_lakewriter"))
        .args(["export", "--config"])
        .arg(config_path(&a))
        .args(["--table", "public.orders"])
        .env("LAKEWRITER_EXPORT_TO", &url)
        .output()
        .expect("run export");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("permission denied") && stderr.contains("orders"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("reader@"),
        "the password is not printed: {stderr}"
    );
    assert_eq!(exported_version(&b).await, None);
    assert_eq!(
        lines(&b, "SELECT count(*)::text FROM public.orders").await,
        vec!["100".to_string()]
    );
    client
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await
        .expect("drop the role");

    // a lake table without a key to merge on: a changelog table appends every change
    write_config(
        &a,
        "[source.tables.\"public.orders\"]\nmode = \"changelog\"\n",
    );
    refused(
        &["--table", "public.orders"],
        &["orders", "changelog", "no key"],
    );
}
