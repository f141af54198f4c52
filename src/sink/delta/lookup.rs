//! Current rows by key, for values the source did not send (unchanged TOAST): a DataFusion
//! semi-join of the Delta table with the wanted keys, the scan filtered by the key values so
//! the Delta provider can skip files by their statistics.

use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::common::{Column, JoinType};
use datafusion::prelude::{Expr, SessionContext, col, lit};

use super::{Failure, TableState, types};

/// The current rows of `keys` in `state`'s table, in the source's layout.
pub async fn lookup(state: &TableState, keys: &RecordBatch) -> Result<Vec<RecordBatch>, Failure> {
    if keys.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let snapshot = state.table.snapshot()?;
    let lake_schema = snapshot.snapshot().arrow_schema();
    // the keys in their lake types, so they compare with what the table stores
    let key_schema = Arc::new(arrow::datatypes::Schema::new(
        keys.schema()
            .fields()
            .iter()
            .map(|f| {
                lake_schema
                    .field_with_name(f.name())
                    .map(|lake| lake.clone().with_nullable(true))
                    .map_err(|_| {
                        Failure::Message(format!("key column {} is not in the table", f.name()))
                    })
            })
            .collect::<Result<Vec<_>, Failure>>()?,
    ));
    let keys = types::to_lake(keys, &key_schema).map_err(Failure::Message)?;
    let ctx = SessionContext::new();
    state.table.update_datafusion_session(&ctx.state())?;
    let provider = state.table.table_provider().await?;
    let mut lake = ctx.read_table(provider)?;
    if let Some(filter) = key_filter(&keys)? {
        lake = lake.filter(filter)?;
    }
    let lake = lake.alias("lake")?;
    let wanted = ctx.read_batch(keys.clone())?.alias("wanted")?;
    let on: Vec<Expr> = keys
        .schema()
        .fields()
        .iter()
        .map(|f| {
            col(Column::new(Some("lake"), f.name())).eq(col(Column::new(Some("wanted"), f.name())))
        })
        .collect();
    let found = lake
        .join_on(wanted, JoinType::LeftSemi, on)?
        .collect()
        .await?;
    found
        .iter()
        .map(|b| types::from_lake(b, &state.source.arrow_nullable).map_err(Failure::Message))
        .collect()
}

/// Up to this many keys, a lookup also filters the scan by the keys' values, which lets the
/// Delta scan skip files by their column statistics instead of reading the whole table.
const LOOKUP_PRUNING_KEYS: usize = 1000;

/// `column IN (values)` for each key column of `keys` (a superset of the wanted rows: the join
/// that follows matches whole keys), or `None` for too many keys.
fn key_filter(keys: &RecordBatch) -> Result<Option<Expr>, Failure> {
    if keys.num_rows() > LOOKUP_PRUNING_KEYS {
        return Ok(None);
    }
    let mut filter: Option<Expr> = None;
    for (field, column) in keys.schema().fields().iter().zip(keys.columns()) {
        let values = (0..column.len())
            .map(|i| datafusion::common::ScalarValue::try_from_array(column, i).map(lit))
            .collect::<Result<Vec<_>, _>>()?;
        let condition = col(Column::new_unqualified(field.name())).in_list(values, false);
        filter = Some(match filter {
            Some(f) => f.and(condition),
            None => condition,
        });
    }
    Ok(filter)
}
