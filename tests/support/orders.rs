//! The sample `orders` table (sql/orders.sql) on both sides: rows decoded from Arrow, rows
//! read from PostgreSQL, in units each side computes independently, and a model that applies
//! streamed changes in order.
#![allow(dead_code)]

use std::collections::BTreeMap;

use arrow::array::{
    Array, Date32Array, Decimal128Array, Int32Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use lakewriter::source::changes::{ChangeBatch, OldRow, Op};

use super::TestDb;
use super::writer::pyiceberg;

/// One `orders` row, in units both sides compute independently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub customer_id: i32,
    pub order_date_days: i32,
    pub total_cents: i128,
    pub status: String,
    pub created_micros: i64,
    pub updated_micros: i64,
}

pub type Table = BTreeMap<i32, Order>;

pub fn order_at(batch: &RecordBatch, row: usize) -> (Option<i32>, Option<Order>) {
    let col = |name: &str| {
        batch
            .column_by_name(name)
            .unwrap_or_else(|| panic!("column {name}"))
            .clone()
    };
    let id = col("order_id");
    let id = id
        .as_any()
        .downcast_ref::<Int32Array>()
        .expect("order_id is int");
    let key = (!id.is_null(row)).then(|| id.value(row));
    let customer = col("customer_id");
    let customer = customer.as_any().downcast_ref::<Int32Array>().expect("int");
    if customer.is_null(row) {
        return (key, None);
    }
    let date = col("order_date");
    let total = col("total_amount");
    let status = col("status");
    let created = col("created_at");
    let updated = col("updated_at");
    let order = Order {
        customer_id: customer.value(row),
        order_date_days: date
            .as_any()
            .downcast_ref::<Date32Array>()
            .expect("date32")
            .value(row),
        total_cents: total
            .as_any()
            .downcast_ref::<Decimal128Array>()
            .expect("decimal")
            .value(row),
        status: status
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("utf8")
            .value(row)
            .to_string(),
        created_micros: created
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .expect("timestamp")
            .value(row),
        updated_micros: updated
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .expect("timestamp")
            .value(row),
    };
    (key, Some(order))
}

pub fn apply(table: &mut Table, batch: &ChangeBatch) {
    assert!(
        batch.unchanged_toast.is_empty(),
        "orders has no toasted columns"
    );
    for (row, op) in batch.ops.iter().enumerate() {
        let (new_key, new_row) = order_at(&batch.new, row);
        let (old_key, _) = order_at(&batch.old, row);
        match op {
            Op::Insert => {
                let key = new_key.expect("an insert has its key");
                let previous = table.insert(key, new_row.expect("an insert has its row"));
                assert!(previous.is_none(), "insert of an existing key {key}");
            }
            Op::Update => {
                if batch.old_rows[row] != OldRow::Absent {
                    let old = old_key.expect("an old key");
                    table.remove(&old);
                }
                table.insert(
                    new_key.expect("an update has its key"),
                    new_row.expect("an update has its row"),
                );
            }
            Op::Delete => {
                let old = old_key.expect("a delete names its key");
                assert!(
                    table.remove(&old).is_some(),
                    "delete of a missing key {old}"
                );
            }
        }
    }
}

pub async fn postgres_orders(db: &TestDb) -> Table {
    postgres_table(db, "orders").await
}

/// The rows of `table`, a table shaped like `orders`.
pub async fn postgres_table(db: &TestDb, table: &str) -> Table {
    let client = db.client().await;
    client
        .query(
            &format!(
                "SELECT order_id, customer_id, order_date - date '1970-01-01', \
                   (total_amount * 100)::bigint, status, \
                   (extract(epoch FROM created_at) * 1000000)::bigint, \
                   (extract(epoch FROM updated_at) * 1000000)::bigint FROM {table}"
            ),
            &[],
        )
        .await
        .expect("read orders")
        .iter()
        .map(|r| {
            (
                r.get(0),
                Order {
                    customer_id: r.get(1),
                    order_date_days: r.get(2),
                    total_cents: i128::from(r.get::<_, i64>(3)),
                    status: r.get(4),
                    created_micros: r.get(5),
                    updated_micros: r.get(6),
                },
            )
        })
        .collect()
}

/// The `orders` table as sorted text lines `id|customer|date|amount|status|created|updated`
/// (timestamps in microseconds), from PostgreSQL; [`LAKE_LINES`] gives the same from a lake.
pub async fn postgres_lines(db: &TestDb) -> Vec<String> {
    db.client()
        .await
        .query(
            "SELECT order_id::text || '|' || customer_id || '|' || order_date::text || '|' || \
               total_amount::text || '|' || status || '|' || \
               (extract(epoch FROM created_at) * 1000000)::bigint || '|' || \
               (extract(epoch FROM updated_at) * 1000000)::bigint \
             FROM orders ORDER BY order_id",
            &[],
        )
        .await
        .expect("read orders")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The order ids of `orders` in PostgreSQL, sorted, as one line (`1,2,…`).
pub async fn postgres_ids(db: &TestDb) -> String {
    db.client()
        .await
        .query_one(
            "SELECT coalesce(string_agg(order_id::text, ',' ORDER BY order_id), '') FROM orders",
            &[],
        )
        .await
        .expect("read order ids")
        .get(0)
}

/// The order ids pyiceberg reads from the lake (no compaction first), sorted, as one line.
pub fn pyiceberg_ids(db: &TestDb) -> String {
    pyiceberg(
        db,
        "orders",
        r#"
ids = sorted(catalog.load_table(ident).scan().to_arrow().column("order_id").to_pylist())
print(",".join(str(i) for i in ids))
"#,
        &[],
    )
    .trim()
    .to_string()
}

/// Counts of the live delete files of `orders`, as pyiceberg lists them: `equality position`.
pub fn delete_file_counts(db: &TestDb) -> String {
    pyiceberg(
        db,
        "orders",
        r#"
files = catalog.load_table(ident).inspect.files().to_pylist()
print(sum(f["content"] == 2 for f in files), sum(f["content"] == 1 for f in files))
"#,
        &[],
    )
    .trim()
    .to_string()
}

/// DuckDB's query for the lines of [`postgres_lines`] over `{scan}`, a lake table's scan.
pub const LAKE_LINES: &str = "SELECT order_id::VARCHAR || '|' || customer_id || '|' || \
    order_date::VARCHAR || '|' || total_amount::VARCHAR || '|' || status || '|' || \
    epoch_us(created_at) || '|' || epoch_us(updated_at) FROM {scan} ORDER BY order_id";

/// DuckDB's query for how many keys appear more than once over `{scan}` (`0` in a sound lake).
pub const LAKE_DUPLICATES: &str = "SELECT count(*) - count(DISTINCT order_id) FROM {scan}";
