//! Other engines commit to lakewriter's tables: an `OPTIMIZE` by Athena, Spark's
//! `rewrite_data_files`, S3 Tables' compaction. Their snapshots carry no `lakewriter.lsn`, so
//! the checkpoint is the newest one in the current snapshot's ancestry (DESIGN.md invariant
//! 12): a restart after a foreign commit neither copies the table again nor, with
//! `initial_snapshot = false`, empties it; it streams on from where the lake is. Delta keeps
//! each writer's latest `txn` across other writers' commits, and the same holds there.

mod support;

use support::delta::delta_query;
use support::orders::{LAKE_DUPLICATES, LAKE_LINES, postgres_lines};
use support::writer::{caught_up, command_ok, duck_query, pyiceberg, start_with, stop};
use support::{TestDb, stack};

/// Rewrites the lake's orders table with pyiceberg (its own rows, read and written back as
/// one overwrite), the way another engine's compaction commits; returns the new snapshot's
/// summary keys.
fn foreign_rewrite(db: &TestDb) -> String {
    pyiceberg(
        db,
        "orders",
        r#"
table = catalog.load_table(ident)
table.overwrite(table.scan().to_arrow())
table = catalog.load_table(ident)
print(",".join(sorted(table.current_snapshot().summary.additional_properties)))
"#,
        &[],
    )
    .trim()
    .to_string()
}

async fn assert_lake_equal(db: &TestDb) {
    assert_eq!(
        duck_query(db, "orders", LAKE_DUPLICATES),
        vec!["0".to_string()],
        "duplicated keys in the lake"
    );
    assert!(
        duck_query(db, "orders", LAKE_LINES) == postgres_lines(db).await,
        "the lake's orders differ from PostgreSQL"
    );
}

#[tokio::test]
async fn a_foreign_commit_between_two_runs_neither_recopies_nor_empties_the_table() {
    let db = TestDb::new("foreign").await;
    db.psql(&["-v", "rows=2000", "-f", "sql/orders.sql"]);
    let mut child = start_with(&db, &[]);
    db.workload(2, 300);
    caught_up(&db, &mut child).await;
    stop(child);

    // pyiceberg refuses equality deletes: compact, then another engine rewrites the table
    command_ok(&db, &["compact"], &[]);
    let keys = foreign_rewrite(&db);
    assert!(
        !keys.contains("lakewriter"),
        "the foreign snapshot carries lakewriter's keys: {keys}"
    );

    // changes while down arrive once, and the table is not copied again
    db.workload(1, 300);
    let mut child = start_with(&db, &[]);
    caught_up(&db, &mut child).await;
    let log = stop(child);
    assert!(
        !log.contains("table copied"),
        "the table was copied again: {log}"
    );
    assert_lake_equal(&db).await;

    // the same with initial_snapshot = false: the table must not be emptied
    command_ok(&db, &["compact"], &[]);
    foreign_rewrite(&db);
    db.workload(1, 300);
    let mut child = start_with(&db, &[("SOURCE__INITIAL_SNAPSHOT", "false")]);
    caught_up(&db, &mut child).await;
    stop(child);
    assert_lake_equal(&db).await;
}

#[tokio::test]
async fn a_foreign_delta_commit_between_two_runs_keeps_the_txn_checkpoint() {
    let db = TestDb::new("foreign_delta").await;
    db.psql(&["-v", "rows=1000", "-f", "sql/orders.sql"]);
    let delta = &[("SINK__FORMAT", "delta")];
    let mut child = start_with(&db, delta);
    db.workload(1, 300);
    caught_up(&db, &mut child).await;
    stop(child);

    // another engine rewrites the table with its own rows (Python deltalake's overwrite)
    let table = db.warehouse.path().join(&db.namespace).join("orders");
    let script = r#"
import sys
from deltalake import DeltaTable, write_deltalake
rows = DeltaTable(sys.argv[1]).to_pyarrow_table()
write_deltalake(sys.argv[1], rows, mode="overwrite")
"#;
    let output = stack()
        .python()
        .arg("-c")
        .arg(script)
        .arg(&table)
        .output()
        .expect("run deltalake");
    assert!(
        output.status.success(),
        "deltalake: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    db.workload(1, 300);
    let mut child = start_with(&db, delta);
    caught_up(&db, &mut child).await;
    let log = stop(child);
    assert!(
        !log.contains("table copied"),
        "the table was copied again: {log}"
    );
    assert_eq!(
        delta_query(&table, LAKE_DUPLICATES),
        ["0"],
        "duplicated keys"
    );
    assert!(
        delta_query(&table, LAKE_LINES) == postgres_lines(&db).await,
        "the lake's orders differ from PostgreSQL"
    );
}
