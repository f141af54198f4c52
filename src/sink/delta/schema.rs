//! A Delta table's schema: created with the source's columns and the configured partition
//! columns, columns added as the source adds them, an incomplete table's columns replaced, and
//! its statistics kept exact (only the columns deltalake bounds exactly are named in
//! `delta.dataSkippingStatsColumns`).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema};
use deltalake::kernel::StructField;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, TableProperty};

use super::{DeltaSink, TableState, delta_error, sink_error, stats_property, types, write};
use crate::catalog::CatalogTable;
use crate::error::Result;
use crate::sink::TableLayout;
use crate::table::TableSchema;

impl DeltaSink {
    /// Creates `lake` with the columns of `schema`, partitioned as `layout` says (plain column
    /// names only); another writer's table created meanwhile is taken as it is.
    pub(super) async fn create(
        &self,
        lake: &CatalogTable,
        table: &DeltaTable,
        schema: &TableSchema,
        layout: &TableLayout,
    ) -> Result<DeltaTable> {
        let columns = schema
            .arrow
            .fields()
            .iter()
            .map(|f| types::lake_field(f))
            .collect::<Result<Vec<StructField>, String>>()
            .map_err(|m| sink_error(lake, m))?;
        for expression in &layout.partition_by {
            if !columns.iter().any(|c| c.name() == expression) {
                return Err(sink_error(
                    lake,
                    format!(
                        "partition_by {expression:?}: Delta tables partition by plain column \
                         names of the table; transforms such as day(…) or bucket(…) are \
                         Iceberg's"
                    ),
                ));
            }
        }
        let (stats_key, stats_value) = stats_property(schema.arrow.fields().iter().map(|f| &**f));
        let created = table
            .create()
            .with_columns(columns)
            .with_configuration_property(stats_key, Some(stats_value))
            .with_configuration_property(
                TableProperty::LogRetentionDuration,
                Some(format!(
                    "interval {} seconds",
                    self.settings.log_retention.as_secs().max(1)
                )),
            )
            .with_partition_columns(layout.partition_by.clone())
            .with_table_name(lake.name.clone())
            .with_save_mode(SaveMode::Ignore)
            .await
            .map_err(|e| delta_error(lake, "create the table", e))?;
        tracing::info!(
            table = %lake,
            location = %self.settings.table_location(lake),
            "created delta table"
        );
        Ok(created)
    }

    /// Adds the columns of `schema` the table lacks. A column whose stored type would change
    /// is an error (this writer does not use Delta's type widening), unless `replace`: the
    /// table is incomplete and about to be copied again, so one commit empties it and gives it
    /// `schema`'s columns.
    pub(super) async fn evolve(
        &self,
        state: &mut TableState,
        schema: &TableSchema,
        replace: bool,
    ) -> Result<()> {
        let current = state.lake_schema()?;
        let mut added = Vec::new();
        for field in schema.arrow.fields() {
            let wanted = types::lake_field(field).map_err(|m| sink_error(&state.lake, m))?;
            match current.field_with_name(field.name()) {
                Ok(existing) => {
                    let stored =
                        types::lake_field(existing).map_err(|m| sink_error(&state.lake, m))?;
                    if stored.data_type() == wanted.data_type() {
                        continue;
                    }
                    if replace {
                        return self.replace_schema(state, schema).await;
                    }
                    return Err(sink_error(
                        &state.lake,
                        format!(
                            "column {} is {} in the Delta table and {} in the source: this \
                             writer cannot change a Delta column's type (with \
                             on_table_error = \"suspend_table\" the table is copied again \
                             with the new type)",
                            field.name(),
                            stored.data_type(),
                            wanted.data_type()
                        ),
                    ));
                }
                Err(_) => added.push(wanted),
            }
        }
        if added.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = added.iter().map(|f| f.name().clone()).collect();
        state.table = state
            .table
            .clone()
            .add_columns()
            .with_fields(added)
            .await
            .map_err(|e| delta_error(&state.lake, "add columns", e))?;
        tracing::info!(table = %state.lake, columns = ?names, "added columns to the delta table");
        Ok(())
    }

    /// Makes the table's statistics settings match its columns (see [`types::stats_columns`]):
    /// needed after columns were added, and for tables created before decimals were left out.
    pub(super) async fn keep_stats_exact(state: &mut TableState) -> Result<()> {
        let lake_schema = state.lake_schema()?;
        let (key, wanted) = stats_property(lake_schema.fields().iter().map(|f| &**f));
        let properties = state
            .table
            .snapshot()
            .map_err(|e| delta_error(&state.lake, "read the table properties", e))?
            .snapshot()
            .table_properties()
            .clone();
        let current = match key {
            TableProperty::DataSkippingStatsColumns => {
                properties.data_skipping_stats_columns.map(|columns| {
                    columns
                        .iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                })
            }
            _ => properties
                .data_skipping_num_indexed_cols
                .map(|_| types::NO_STATS.to_string()),
        };
        if current.as_deref() == Some(wanted.as_str()) {
            return Ok(());
        }
        state.table = state
            .table
            .clone()
            .set_tbl_properties()
            .with_properties(HashMap::from([(key.as_ref().to_string(), wanted.clone())]))
            .await
            .map_err(|e| delta_error(&state.lake, "set the statistics columns", e))?;
        tracing::info!(
            table = %state.lake,
            property = key.as_ref(),
            value = %wanted,
            "statistics limited to the columns whose bounds are written exactly"
        );
        Ok(())
    }

    /// Empties the (incomplete) table and gives it the columns of `schema`, in one overwrite
    /// commit that keeps "no checkpoint": its copy follows.
    pub(super) async fn replace_schema(
        &self,
        state: &mut TableState,
        schema: &TableSchema,
    ) -> Result<()> {
        let lake = state.lake.clone();
        let fields = schema
            .arrow
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), types::lake_type(f.data_type()), true))
            .collect::<Vec<_>>();
        let partition_columns: Vec<String> = state
            .table
            .snapshot()
            .map_err(|e| delta_error(&lake, "read the metadata", e))?
            .metadata()
            .partition_columns()
            .iter()
            .filter(|c| fields.iter().any(|f| f.name() == *c))
            .cloned()
            .collect();
        let empty = RecordBatch::new_empty(Arc::new(Schema::new(fields)));
        state.table = state
            .table
            .clone()
            .write(vec![empty])
            .with_save_mode(SaveMode::Overwrite)
            .with_schema_mode(SchemaMode::Overwrite)
            .with_partition_columns(partition_columns)
            .with_commit_properties(write::checkpoint_properties(&lake, None, None, ""))
            .await
            .map_err(|e| delta_error(&lake, "replace the incomplete table's schema", e))?;
        tracing::info!(
            table = %lake,
            "replaced the schema of the incomplete delta table: its copy follows"
        );
        Ok(())
    }
}
