//! Other engines commit to lakewriter's tables: an `OPTIMIZE` by Athena, Spark's
//! `rewrite_data_files`, S3 Tables' compaction. Their snapshots carry no `lakewriter.lsn`, so
//! the checkpoint is the newest one in the current snapshot's ancestry (DESIGN.md invariant
//! 12): a restart after a foreign commit neither copies the table again nor, with
//! `initial_snapshot = false`, empties it; it streams on from where the lake is.

mod support;

use support::TestDb;
use support::orders::{LAKE_DUPLICATES, LAKE_LINES, postgres_lines};
use support::writer::{caught_up, command_ok, duck_query, pyiceberg, start_with, stop};

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
