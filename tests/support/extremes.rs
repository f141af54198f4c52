//! The table of extreme values (`sql/extremes.sql`): creating it, changing it through the
//! streaming path, and reading its decimals back from PostgreSQL and from a lake table.

use super::TestDb;

/// Creates and fills `extremes`.
pub fn create(db: &TestDb) {
    db.psql(&["-f", "sql/extremes.sql"]);
}

/// The decimals and the id, the values a rounded statistic breaks, as PostgreSQL prints them.
pub const PG_DECIMALS: &str = "SELECT id || '|' || coalesce(d::text, 'NULL') || '|' || coalesce(d0::text, 'NULL') || '|' \
     || coalesce(d2::text, 'NULL') FROM extremes ORDER BY id";

/// The same from a lake table, in DuckDB.
pub const LAKE_DECIMALS: &str =
    "SELECT id, d::VARCHAR, d0::VARCHAR, d2::VARCHAR FROM {scan} ORDER BY id";

/// The other columns' extremes, in DuckDB: the floats' specials, the timestamps' years, the
/// arrays' lengths and NULL elements.
pub const LAKE_OTHERS: &str = "SELECT id, isnan(r) OR r IN ('inf'::REAL, '-inf'::REAL), \
     isnan(f) OR f IN ('inf'::DOUBLE, '-inf'::DOUBLE), year(ts), year(tstz), year(day), \
     coalesce(len(a)::VARCHAR, 'NULL'), coalesce(list_count(a) < len(a), false) \
     FROM {scan} ORDER BY id";

pub async fn postgres_decimals(db: &TestDb) -> Vec<String> {
    db.client()
        .await
        .query(PG_DECIMALS, &[])
        .await
        .expect("read extremes")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Changes that go through the streaming path (MERGE in Delta, equality deletes in Iceberg)
/// and keep the extremes.
pub async fn update(db: &TestDb, round: i32) {
    db.client()
        .await
        .batch_execute(&changes(round))
        .await
        .expect("update extremes");
}

/// The SQL of [`update`]'s round `round`.
pub fn changes(round: i32) -> String {
    format!(
        "UPDATE extremes SET t = 'round {round}' WHERE id = 3;
         UPDATE extremes SET d = -d, d0 = -d0, d2 = -d2 WHERE id IN (1, 2);
         INSERT INTO extremes (id, d) VALUES ({id}, 1234567890123456789012345678.0123456789);",
        id = 100 + round
    )
}
