//! A changelog table lets a consumer rebuild its PostgreSQL table exactly: `lakewriter run`
//! into a changelog table through the changes that used to lose information (an update that
//! leaves a large TOASTed value unchanged, so pgoutput does not send it; an update that
//! changes the key; a TRUNCATE followed by inserts), then `lakewriter verify` folds the
//! changelog and finds it equal to PostgreSQL, and so does DuckDB's own fold of the rows —
//! into Iceberg and into Delta.

mod support;

use std::time::Duration;

use support::TestDb;
use support::delta::delta_query;
use support::writer::{caught_up, command_ok, duck_query, start_with, stop, write_config};

/// DuckDB's fold of the changelog: per key the row latest in (`_lsn`, `_seq`) order after
/// the latest truncate, unless a delete; as `id|title|md5(body)`.
const FOLD: &str = "WITH c AS (SELECT * FROM {scan}),
     t AS (SELECT _lsn AS tl, _seq AS ts FROM c WHERE _op = 'T' ORDER BY _lsn DESC, _seq DESC LIMIT 1),
     live AS (SELECT c.* FROM c LEFT JOIN t ON true
              WHERE c._op <> 'T' AND (t.tl IS NULL OR c._lsn > t.tl OR (c._lsn = t.tl AND c._seq > t.ts))),
     ranked AS (SELECT *, row_number() OVER (PARTITION BY id ORDER BY _lsn DESC, _seq DESC) AS rn FROM live)
SELECT id, title, md5(body) FROM ranked WHERE rn = 1 AND _op <> 'D' ORDER BY id";

/// PostgreSQL's rows, as [`FOLD`] prints them.
async fn postgres_rows(db: &TestDb) -> Vec<String> {
    db.client()
        .await
        .query("SELECT id, title, md5(body) FROM docs ORDER BY id", &[])
        .await
        .expect("read docs")
        .iter()
        .map(|r| {
            format!(
                "{}|{}|{}",
                r.get::<_, i32>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2)
            )
        })
        .collect()
}

async fn sql(db: &TestDb, text: &str) {
    db.client().await.batch_execute(text).await.expect(text);
}

#[tokio::test]
async fn changelog_with_toast_key_change_and_truncate_folds_to_postgres() {
    let db = TestDb::new("changelog_fold").await;
    scenario(&db, &[], |db, query| duck_query(db, "docs", query)).await;
}

#[tokio::test]
async fn delta_changelog_with_toast_key_change_and_truncate_folds_to_postgres() {
    let db = TestDb::new("changelog_fold_delta").await;
    scenario(&db, &[("SINK__FORMAT", "delta")], |db, query| {
        delta_query(&db.warehouse.path().join(&db.namespace).join("docs"), query)
    })
    .await;
}

/// The changes, each phase checked by `verify` and by `read` (DuckDB over the lake table).
async fn scenario(
    db: &TestDb,
    settings: &[(&str, &str)],
    read: impl Fn(&TestDb, &str) -> Vec<String>,
) {
    // bodies of 64 KiB stored out of line and uncompressed: an update that does not touch
    // them sends them as "unchanged TOAST"
    sql(
        db,
        "CREATE TABLE docs (id int PRIMARY KEY, title text NOT NULL, body text);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
         INSERT INTO docs SELECT i, 'copied ' || i, repeat(md5(i::text), 2048)
           FROM generate_series(1, 3) i;",
    )
    .await;
    write_config(
        db,
        "[source.tables.\"public.docs\"]\nmode = \"changelog\"\n",
    );
    let mut child = start_with(db, settings);
    caught_up(db, &mut child).await;

    // body unchanged: from the copied row in the lake (1), from the same flush (4), from a
    // streamed row in the lake (4 again, after a flush)
    sql(db, "UPDATE docs SET title = 'retitled 1' WHERE id = 1").await;
    sql(
        db,
        "INSERT INTO docs VALUES (4, 'streamed 4', repeat('four', 16384));
         UPDATE docs SET title = 'retitled 4' WHERE id = 4;",
    )
    .await;
    caught_up(db, &mut child).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    sql(db, "UPDATE docs SET title = 'again 4' WHERE id = 4").await;
    // a key change that leaves body unchanged: the old key must leave the changelog's fold
    sql(db, "UPDATE docs SET id = 20 WHERE id = 2").await;
    caught_up(db, &mut child).await;
    let expected = postgres_rows(db).await;
    assert_eq!(expected.len(), 4);
    assert_eq!(read(db, FOLD), expected);
    assert_eq!(
        read(
            db,
            "SELECT count(*) FROM {scan} WHERE _op IN ('I', 'U') AND body IS NULL"
        ),
        ["0"],
        "an unchanged TOAST value written as NULL"
    );
    let report = command_ok(db, &["verify"], settings);
    assert!(report.contains("equal (4 rows)"), "{report}");

    // a TRUNCATE, then new rows: the fold starts over at the truncate
    sql(db, "TRUNCATE docs").await;
    sql(
        db,
        "INSERT INTO docs VALUES (1, 'after truncate', repeat('new', 20000)), (5, 'five', 'small');
         UPDATE docs SET title = 'after truncate, retitled' WHERE id = 1;",
    )
    .await;
    caught_up(db, &mut child).await;
    stop(child);
    let expected = postgres_rows(db).await;
    assert_eq!(expected.len(), 2);
    assert_eq!(read(db, FOLD), expected);
    assert_eq!(
        read(db, "SELECT count(*) FROM {scan} WHERE _op = 'T'"),
        ["1"]
    );
    let report = command_ok(db, &["verify"], settings);
    assert!(report.contains("equal (2 rows)"), "{report}");
}
