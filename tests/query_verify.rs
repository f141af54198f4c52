//! `lakewriter query` over tables the writer made, with equality deletes: its merge-on-read
//! (an anti-join on key, partition and sequence number) must read what PostgreSQL holds, and
//! what DuckDB, an independent reader, reads from the same snapshot.

mod support;

use support::TestDb;
use support::writer::{caught_up, command, config_path, duck_query, start, stop};

/// Runs `lakewriter verify` with `args`: its exit success, stdout and stderr.
fn verify(db: &TestDb, args: &[&str]) -> (bool, String, String) {
    let output = command(db, &[&["verify"], args].concat(), &[]);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs `lakewriter query` and returns its stdout lines (CSV without the header).
fn query(db: &TestDb, sql: &str) -> Vec<String> {
    let output = command(db, &["query", "--format", "csv", sql], &[]);
    assert!(
        output.status.success(),
        "lakewriter query failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn query_reads_the_lake_as_postgres_and_duckdb_do() {
    let db = TestDb::new("query").await;
    db.psql(&["-v", "rows=2000", "-f", "sql/orders.sql"]);
    let mut child = start(&db);
    caught_up(&db, &mut child).await;
    // several flushes of updates, deletes and key changes: equality deletes over several
    // sequence numbers, and rows re-inserted under deleted keys
    for round in 0..3 {
        db.client()
            .await
            .batch_execute(&format!(
                "UPDATE orders SET status = 'round{round}' WHERE order_id % 5 = {round};
                 DELETE FROM orders WHERE order_id % 13 = {round};
                 UPDATE orders SET order_id = order_id + 100000 WHERE order_id % 17 = {round};
                 INSERT INTO orders (order_id, customer_id, order_date, total_amount, status)
                   SELECT g, 7, date '2024-05-05', 1.5, 'back' FROM generate_series(1, 40) g
                   WHERE NOT EXISTS (SELECT 1 FROM orders WHERE order_id = g);"
            ))
            .await
            .expect("workload");
        caught_up(&db, &mut child).await;
    }
    stop(child);

    let rows = "SELECT order_id, customer_id, order_date, total_amount, status";
    let expected: Vec<String> = db
        .client()
        .await
        .query(
            "SELECT order_id || ',' || customer_id || ',' || order_date || ',' || \
               total_amount || ',' || status FROM orders ORDER BY order_id",
            &[],
        )
        .await
        .expect("read orders")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lake = query(
        &db,
        &format!("{rows} FROM {}.orders ORDER BY order_id", db.namespace),
    );
    assert_eq!(lake.len(), expected.len(), "row count");
    assert!(lake == expected, "lakewriter query differs from PostgreSQL");

    let duck: Vec<String> = duck_query(
        &db,
        "orders",
        "SELECT order_id, customer_id, order_date, total_amount, status FROM {scan} ORDER BY order_id",
    )
    .into_iter()
    .map(|line| line.replace('|', ","))
    .collect();
    assert!(
        duck == lake,
        "DuckDB and lakewriter query read different rows"
    );

    // aggregates and the other formats
    let count = query(
        &db,
        &format!(
            "SELECT count(*) FROM {}.orders WHERE status = 'back'",
            db.namespace
        ),
    );
    let back: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM orders WHERE status = 'back'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, vec![back.to_string()]);

    // the iceberg crate's own scan reads the same rows (its cost grows with rows × deletes,
    // so it is the reference here, not the reader)
    assert_eq!(
        iceberg_crate_rows(&db).await,
        lakewriter_rows(&db).await,
        "the iceberg crate's scan and lakewriter's anti-join differ"
    );

    // verify finds them equal
    let (equal, out, log) = verify(&db, &[]);
    assert!(equal, "verify: {out} {log}");
    assert!(
        out.contains("public.orders") && out.contains("equal"),
        "{out}"
    );

    // and names what differs once PostgreSQL moves on without the writer
    db.client()
        .await
        .batch_execute(
            "UPDATE orders SET status = 'changed' WHERE order_id = 2;
             DELETE FROM orders WHERE order_id = 3;
             INSERT INTO orders (order_id, customer_id, order_date, total_amount, status)
               VALUES (900001, 1, date '2024-01-01', 1, 'new');",
        )
        .await
        .expect("change orders");
    let (equal, out, log) = verify(&db, &["--table", "public.orders", "--json"]);
    assert!(!equal, "verify must fail: {out} {log}");
    let report: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("verify --json prints JSON ({e}): {out} {log}"));
    let table = &report[0];
    assert_eq!(table["missing"], 1, "{out}");
    assert_eq!(table["extra"], 1, "{out}");
    assert_eq!(table["different"], 1, "{out}");
    assert_eq!(table["missing_keys"][0], "order_id=900001", "{out}");
    assert_eq!(table["extra_keys"][0], "order_id=3", "{out}");
    assert_eq!(table["different_keys"][0], "order_id=2", "{out}");
}

/// Runs the SQL of `file` (in `sql/athena`, written for Athena's `lakewriter` database)
/// through `lakewriter query`, on the test's namespace.
fn athena_query(db: &TestDb, file: &str) -> Vec<String> {
    let path = support::project_dir().join("sql/athena").join(file);
    let text = std::fs::read_to_string(&path).expect("read the query");
    query(
        db,
        &text.replace("lakewriter.", &format!("{}.", db.namespace)),
    )
}

/// `sql/athena/*.sql` read through `lakewriter query` what PostgreSQL answers to the same
/// questions.
#[tokio::test]
async fn the_athena_queries_run_through_query_and_match_postgres() {
    let db = TestDb::new("athena").await;
    db.psql(&["-v", "rows=500", "-f", "sql/orders.sql"]);
    let mut child = start(&db);
    caught_up(&db, &mut child).await;
    db.workload(1, 100);
    caught_up(&db, &mut child).await;
    stop(child);
    let postgres = |sql: &'static str| {
        let db = &db;
        async move {
            db.client()
                .await
                .query(sql, &[])
                .await
                .expect(sql)
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        athena_query(&db, "current_state.sql"),
        postgres(
            "SELECT order_id || ',' || customer_id || ',' || order_date || ',' || total_amount \
               || ',' || status FROM orders ORDER BY order_id LIMIT 100"
        )
        .await
    );
    assert_eq!(
        athena_query(&db, "counts_by_status.sql"),
        postgres(
            "SELECT status || ',' || count(*) || ',' || sum(total_amount) FROM orders \
             GROUP BY status ORDER BY status"
        )
        .await
    );
    let latest = athena_query(&db, "latest_changes.sql");
    let expected = postgres(
        "SELECT order_id::text FROM orders \
         WHERE updated_at >= (SELECT max(updated_at) FROM orders) - interval '1 day' \
         ORDER BY updated_at DESC, orders.order_id LIMIT 20",
    )
    .await;
    assert!(!latest.is_empty());
    assert_eq!(
        latest
            .iter()
            .map(|l| l.split(',').next().unwrap_or_default().to_string())
            .collect::<Vec<_>>(),
        expected
    );
}

const ROWS_SQL: &str = "SELECT CAST(order_id AS VARCHAR) || ',' || CAST(customer_id AS VARCHAR) \
     || ',' || CAST(total_amount AS VARCHAR) || ',' || status AS line FROM {table} ORDER BY order_id";

async fn lines(ctx: &datafusion::prelude::SessionContext, table: &str) -> Vec<String> {
    let batches = ctx
        .sql(&ROWS_SQL.replace("{table}", table))
        .await
        .expect("plan")
        .collect()
        .await
        .expect("run");
    let mut lines = Vec::new();
    for batch in batches {
        let column =
            arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8).expect("text");
        let column = arrow::array::AsArray::as_string::<i32>(column.as_ref());
        lines.extend(column.iter().map(|v| v.unwrap_or("NULL").to_string()));
    }
    lines
}

/// The orders rows as lakewriter's merge-on-read plan reads them.
async fn lakewriter_rows(db: &TestDb) -> Vec<String> {
    let config = lakewriter::Config::load(&config_path(db)).expect("config");
    let (ctx, _) = lakewriter::lake::session(&config, None)
        .await
        .expect("session");
    lines(&ctx, &format!("{}.orders", db.namespace)).await
}

/// The same rows through the iceberg crate's DataFusion table provider.
async fn iceberg_crate_rows(db: &TestDb) -> Vec<String> {
    let config = lakewriter::Config::load(&config_path(db)).expect("config");
    let io = lakewriter::sink::iceberg::file_io(&config).expect("file io");
    let location: String = rusqlite::Connection::open(db.warehouse.path().join("catalog.db"))
        .expect("open the catalog")
        .query_row(
            "SELECT metadata_location FROM iceberg_tables WHERE table_namespace = ?1 \
             AND table_name = 'orders'",
            [&db.namespace],
            |row| row.get(0),
        )
        .expect("the table's metadata location");
    let metadata = iceberg::spec::TableMetadata::read_from(&io, &location)
        .await
        .expect("metadata");
    let table = iceberg::table::Table::builder()
        .file_io(io)
        .metadata(metadata)
        .metadata_location(location)
        .identifier(
            iceberg::TableIdent::from_strs([db.namespace.as_str(), "orders"]).expect("name"),
        )
        .runtime(iceberg::Runtime::try_current().expect("runtime"))
        .build()
        .expect("table");
    let provider = iceberg_datafusion::IcebergStaticTableProvider::try_new_from_table(table)
        .await
        .expect("provider");
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_table("orders", std::sync::Arc::new(provider))
        .expect("register");
    lines(&ctx, "orders").await
}
