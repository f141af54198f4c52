//! The extreme values of every type, through `lakewriter run` into Delta and Iceberg, read
//! back by every independent reader here: decimals at full precision (whose statistics once
//! went through a float, `1e+28`, and left a Delta table no engine could load), NaN and
//! ±Infinity, years 1 and 9999, empty arrays and NULL elements. Each reader opens the table
//! and reads the exact values, after the initial copy, after streamed updates, and after a
//! restart that loads the table again.

mod support;

use std::path::Path;

use support::TestDb;
use support::delta::{delta_query, python_delta_rows};
use support::extremes::{self, LAKE_DECIMALS, LAKE_OTHERS, postgres_decimals, update};
use support::writer::{caught_up, command_ok, duck_query, pyiceberg, start_with, stop};

fn others_expected() -> Vec<String> {
    vec![
        "1|True|True|1|1|1|0|False".to_string(),
        "2|True|True|9999|9999|9999|2|True".to_string(),
        "3|False|True|2024|2024|2024|NULL|False".to_string(),
    ]
}

#[tokio::test]
async fn extremes_of_every_type_reach_delta_and_every_reader_loads_them() {
    let db = TestDb::new("extremes_delta").await;
    extremes::create(&db);
    let delta = &[("SINK__FORMAT", "delta")];
    let location = db.warehouse.path().join(&db.namespace).join("extremes");

    let mut child = start_with(&db, delta);
    caught_up(&db, &mut child).await;
    update(&db, 1).await;
    caught_up(&db, &mut child).await;
    stop(child);
    // a restart loads the table with the Delta kernel, statistics and all, and commits again
    let mut child = start_with(&db, delta);
    update(&db, 2).await;
    caught_up(&db, &mut child).await;
    let log = stop(child);
    // a log fit for a file or a journal: no terminal colours, no dependency chatter at info
    assert!(!log.contains('\x1b'), "colour codes in a piped log: {log}");
    for line in log.lines().filter(|l| l.contains(" INFO ")) {
        assert!(
            line.contains(" lakewriter"),
            "a dependency's info line: {line}"
        );
    }

    let expected = postgres_decimals(&db).await;
    assert_eq!(
        delta_query(&location, LAKE_DECIMALS),
        expected,
        "DuckDB delta_scan"
    );
    let mut python = python_delta_rows(
        &location.display().to_string(),
        &[],
        &["id", "d", "d0", "d2"],
    );
    let mut wanted = expected.clone();
    python.sort();
    wanted.sort();
    assert_eq!(python, wanted, "Python deltalake");
    let others = delta_query(&location, LAKE_OTHERS);
    assert_eq!(&others[..3], &others_expected()[..], "DuckDB delta_scan");
    assert_no_inexact_decimal_statistics(&location);
}

/// Every decimal statistic in the Delta log is exact: written as the column's own digits,
/// never a rounded float such as `1e+28`, or not at all.
fn assert_no_inexact_decimal_statistics(location: &Path) {
    let log = location.join("_delta_log");
    let mut exact_bounds = 0;
    for entry in std::fs::read_dir(&log).expect("read the log").flatten() {
        if entry.path().extension().is_none_or(|x| x != "json") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).expect("read a commit");
        for line in text.lines() {
            let action: serde_json::Value = serde_json::from_str(line).expect("an action");
            let Some(stats) = action
                .get("add")
                .and_then(|a| a.get("stats"))
                .and_then(|s| s.as_str())
            else {
                continue;
            };
            let stats: serde_json::Value = serde_json::from_str(stats).expect("stats JSON");
            if stats.pointer("/minValues/id").is_some() {
                exact_bounds += 1;
            }
            for bound in ["minValues", "maxValues"] {
                for column in ["d", "d0", "d2"] {
                    if let Some(value) = stats.get(bound).and_then(|b| b.get(column)) {
                        let text = value.to_string();
                        assert!(
                            !text.contains(['e', 'E']),
                            "{}: {bound}.{column} = {text}, a rounded float",
                            entry.path().display()
                        );
                    }
                }
            }
        }
    }
    // the other columns keep their statistics (data skipping still works on them)
    assert!(exact_bounds > 0, "no file has statistics for id");
}

#[tokio::test]
async fn extremes_of_every_type_reach_iceberg_and_every_reader_loads_them() {
    let db = TestDb::new("extremes_iceberg").await;
    extremes::create(&db);
    let mut child = start_with(&db, &[]);
    caught_up(&db, &mut child).await;
    update(&db, 1).await;
    caught_up(&db, &mut child).await;
    stop(child);
    let mut child = start_with(&db, &[]);
    update(&db, 2).await;
    caught_up(&db, &mut child).await;
    stop(child);

    let expected = postgres_decimals(&db).await;
    assert_eq!(
        duck_query(&db, "extremes", LAKE_DECIMALS),
        expected,
        "DuckDB iceberg_scan"
    );
    let others = duck_query(&db, "extremes", LAKE_OTHERS);
    assert_eq!(&others[..3], &others_expected()[..], "DuckDB iceberg_scan");

    // pyiceberg refuses equality deletes: compact first, then it reads the exact decimals
    command_ok(&db, &["compact"], &[]);
    let lines: Vec<String> = pyiceberg(
        &db,
        "extremes",
        r#"
table = catalog.load_table(ident).scan().to_arrow().sort_by("id")
for row in zip(*(table.column(c).to_pylist() for c in ["id", "d", "d0", "d2"])):
    print("|".join(text(v) for v in row))
"#,
        &[],
    )
    .lines()
    .map(str::to_string)
    .collect();
    assert_eq!(lines, expected, "pyiceberg");
}

/// Rewrites the Delta log of the table at `location` the way writers before exact statistics
/// left it: no `delta.dataSkippingStatsColumns`, and decimal bounds rounded through a float,
/// past the column's precision (`1e+28` for `NUMERIC(38,10)`).
fn write_rounded_decimal_statistics(location: &Path) {
    let log = location.join("_delta_log");
    for entry in std::fs::read_dir(&log).expect("read the log").flatten() {
        if entry.path().extension().is_none_or(|x| x != "json") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).expect("read a commit");
        let mut out = Vec::new();
        for line in text.lines() {
            let mut action: serde_json::Value = serde_json::from_str(line).expect("an action");
            if let Some(configuration) = action.pointer_mut("/metaData/configuration")
                && let Some(map) = configuration.as_object_mut()
            {
                map.remove("delta.dataSkippingStatsColumns");
            }
            if let Some(stats) = action.pointer_mut("/add/stats")
                && let Some(text) = stats.as_str()
            {
                let mut parsed: serde_json::Value = serde_json::from_str(text).expect("stats");
                if let Some(max) = parsed.get_mut("maxValues").and_then(|m| m.as_object_mut()) {
                    max.insert("d".into(), serde_json::json!(1e28));
                }
                if let Some(min) = parsed.get_mut("minValues").and_then(|m| m.as_object_mut()) {
                    min.insert("d".into(), serde_json::json!(-1e28));
                }
                *stats = serde_json::Value::String(parsed.to_string());
            }
            out.push(action.to_string());
        }
        std::fs::write(entry.path(), out.join("\n") + "\n").expect("write a commit");
    }
}

#[tokio::test]
async fn a_delta_table_written_with_rounded_decimal_statistics_is_repaired_at_the_next_start() {
    let db = TestDb::new("extremes_repair").await;
    extremes::create(&db);
    db.psql(&["-v", "rows=500", "-f", "sql/orders.sql"]);
    let delta = &[("SINK__FORMAT", "delta")];
    let mut child = start_with(&db, delta);
    caught_up(&db, &mut child).await;
    stop(child);
    let broken = db.warehouse.path().join(&db.namespace).join("extremes");
    write_rounded_decimal_statistics(&broken);

    // the next start limits the statistics to exact columns, so no reader parses the rounded
    // bounds any more; both tables stream on
    let mut child = start_with(&db, delta);
    update(&db, 1).await;
    db.workload(1, 200);
    caught_up(&db, &mut child).await;
    let log = stop(child);
    assert!(
        log.contains("statistics limited to the columns whose bounds are written exactly"),
        "the table was not repaired: {log}"
    );
    let expected = postgres_decimals(&db).await;
    assert_eq!(
        delta_query(&broken, LAKE_DECIMALS),
        expected,
        "DuckDB delta_scan"
    );
    let mut python =
        python_delta_rows(&broken.display().to_string(), &[], &["id", "d", "d0", "d2"]);
    let mut wanted = expected;
    python.sort();
    wanted.sort();
    assert_eq!(python, wanted, "Python deltalake");
    let orders = db.warehouse.path().join(&db.namespace).join("orders");
    assert_eq!(
        delta_query(&orders, support::orders::LAKE_LINES),
        support::orders::postgres_lines(&db).await
    );
}
