//! Delta tables read back by DuckDB's delta extension (`delta_scan`), loaded from its PyPI
//! package with nothing downloaded: the independent reader of the Delta tests.

use std::path::Path;

use super::{project_dir, stack};

/// Runs `query` in DuckDB, with `{scan}` standing for `delta_scan` of the Delta table at
/// `location`, and returns its rows as lines (`|` between values, `NULL` for nulls).
pub fn delta_query(location: &Path, query: &str) -> Vec<String> {
    let script = format!(
        r#"
import duck
con = duck.connect()
query = {query:?}.replace("{{scan}}", "delta_scan('" + {location:?} + "')")
for values in con.sql(query).fetchall():
    print("|".join("NULL" if v is None else str(v) for v in values))
"#,
        location = location.display().to_string(),
    );
    let output = stack()
        .python()
        .arg("-c")
        .arg(script)
        .env("PYTHONPATH", project_dir().join("tests/readers"))
        .output()
        .expect("run DuckDB");
    assert!(
        output.status.success(),
        "DuckDB over {}: {}",
        location.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The latest `txn` version the Delta log of the table at `location` holds for `app_id`, read
/// from the JSON commit files themselves (`None` when no commit has one).
pub fn txn_version(location: &Path, app_id: &str) -> Option<i64> {
    let mut latest = None;
    for commit in commit_files(location) {
        let text = std::fs::read_to_string(&commit).expect("read a commit");
        for line in text.lines() {
            let action: serde_json::Value = serde_json::from_str(line).expect("a JSON action");
            if let Some(txn) = action.get("txn")
                && txn.get("appId").and_then(|a| a.as_str()) == Some(app_id)
            {
                latest = txn.get("version").and_then(|v| v.as_i64());
            }
        }
    }
    latest
}

/// The progress of the chunked copy of the Delta table at `location` (lake name `lake`,
/// `<namespace>.<name>`) as its log carries it: while the copy's `txn` marker is set, the
/// `lakewriter.copy` of the newest commit holding one; `None` with no copy under way (or no
/// table yet).
pub fn delta_copy_progress(location: &Path, lake: &str) -> Option<String> {
    if !location.join("_delta_log").is_dir() {
        return None;
    }
    if txn_version(location, &format!("lakewriter.copy:{lake}")) != Some(1) {
        return None;
    }
    commit_files(location).iter().rev().find_map(|commit| {
        let text = std::fs::read_to_string(commit).expect("read a commit");
        text.lines().find_map(|line| {
            let action: serde_json::Value = serde_json::from_str(line).expect("a JSON action");
            action
                .get("commitInfo")
                .and_then(|info| info.get("lakewriter.copy"))
                .and_then(|copy| copy.as_str())
                .map(str::to_string)
        })
    })
}

/// The rows of the Delta table at `uri` (a local path or `s3://…`, reached with the
/// `storage_options` deltalake's Python package takes), read by that package — a reader
/// independent of DuckDB and of the Rust crate — as sorted lines of `columns`.
pub fn python_delta_rows(
    uri: &str,
    storage_options: &[(&str, &str)],
    columns: &[&str],
) -> Vec<String> {
    let options: std::collections::HashMap<&str, &str> = storage_options.iter().copied().collect();
    let script = format!(
        r#"
import json, os, sys
from decimal import Decimal
from deltalake import DeltaTable
table = DeltaTable({uri:?}, storage_options=json.loads(sys.argv[1])).to_pyarrow_table()
columns = json.loads(sys.argv[2])
def text(v):
    if v is None:
        return "NULL"
    # decimals in positional notation, as PostgreSQL and DuckDB print them
    return format(v, "f") if isinstance(v, Decimal) else str(v)
lines = sorted(
    "|".join(text(v) for v in row)
    for row in zip(*(table.column(c).to_pylist() for c in columns))
)
print("\n".join(lines), flush=True)
# the package's threads sometimes abort the interpreter's shutdown after a read from S3
# ("terminate called without an active exception"): the answer is out, leave at once
os._exit(0)
"#
    );
    let output = stack()
        .python()
        .arg("-c")
        .arg(script)
        .arg(serde_json::to_string(&options).expect("options as JSON"))
        .arg(serde_json::to_string(columns).expect("columns as JSON"))
        .output()
        .expect("run python deltalake");
    assert!(
        output.status.success(),
        "deltalake over {uri}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// How many commits the Delta log of the table at `location` holds (its JSON commit files).
pub fn commit_count(location: &Path) -> usize {
    commit_files(location).len()
}

/// The JSON commit files of the Delta log of the table at `location`, oldest first.
fn commit_files(location: &Path) -> Vec<std::path::PathBuf> {
    let log = location.join("_delta_log");
    let mut commits: Vec<_> = std::fs::read_dir(&log)
        .unwrap_or_else(|e| panic!("read {}: {e}", log.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    commits.sort();
    commits
}
