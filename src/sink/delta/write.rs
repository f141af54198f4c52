//! One delta, one Delta commit, carrying the table's checkpoint as a `txn` action:
//!
//! - no deletes (inserts only, changelog tables, initial snapshot chunks): an append. An
//!   inserted key is absent from the lake (exactly once: it was never committed, or its delete
//!   is in the same delta), so nothing needs replacing;
//! - `truncate`: an overwrite, which removes every file and adds the rows in the same commit.
//!   The deletes are dropped: they name rows committed before, which the overwrite removes
//!   anyway;
//! - deletes: one MERGE on the key. Its source is the rows (op `U`: replace or insert) plus
//!   the deleted keys no row carries (op `D`: remove), each key once, since MERGE refuses two
//!   source rows matching one target row, and a key both deleted and written is a replace.
//!
//! Staged parts join in as Parquet scans, so a transaction larger than memory streams through
//! DataFusion rather than through memory; parts already written as the table's own data files
//! (`data_files`: the transaction only adds rows) are committed by their `add` actions
//! ([`commit_files`]) instead, without being read or written again. A commit that changes no file (a MERGE matching
//! nothing, an empty append) still has to move the checkpoint: an empty commit carries it.

use std::num::NonZeroU64;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::{Column, JoinType, ScalarValue};
use datafusion::dataframe::DataFrame;
use datafusion::prelude::{Expr, SessionContext, cast, col, lit};
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use futures::StreamExt;

use super::staging::{StagedFile, StagedPart};
use super::{
    DeltaSettings, Failure, TableState, checkpoint_app_id, copy_app_id, txn_version, types,
};
use crate::catalog::CatalogTable;
use crate::error::Result;
use crate::lsn::Lsn;
use crate::sink::{COPY_PROPERTY, TableDelta};

/// The MERGE source's column saying what a row does (`U` replace or insert, `D` remove).
const OP: &str = "__lakewriter_op";

/// Commits `delta` and the `staged` parts to `state`'s table; returns the table's new version.
pub async fn commit(
    state: &mut TableState,
    delta: &TableDelta,
    staged: &[StagedPart],
    settings: &DeltaSettings,
) -> Result<u64> {
    let lake = state.lake.clone();
    match commit_inner(state, delta, staged, settings).await {
        Ok(version) => Ok(version),
        Err(e) => Err(e.about(&lake, "commit")),
    }
}

async fn commit_inner(
    state: &mut TableState,
    delta: &TableDelta,
    staged: &[StagedPart],
    settings: &DeltaSettings,
) -> Result<u64, Failure> {
    let before = state.table.version();
    let target = state.table.snapshot()?.snapshot().arrow_schema();
    let ctx = deltalake::delta_datafusion::create_session().into_inner();
    state.table.update_datafusion_session(&ctx.state())?;

    let rows = frame(
        &ctx,
        &delta.rows,
        staged.iter().filter_map(|p| p.rows.as_ref()),
        settings,
        &target,
    )
    .await?;
    let upsert = !state.layout.key.is_empty();
    let deletes = if upsert && !delta.truncate {
        frame(
            &ctx,
            &delta.deletes,
            staged.iter().filter_map(|p| p.deletes.as_ref()),
            settings,
            &target,
        )
        .await?
    } else {
        None
    };
    let properties = checkpoint_properties(
        &state.lake,
        delta.lsn,
        delta.copy.as_deref(),
        &state.commit_id,
    )
    .with_cleanup_expired_logs(log_cleanup(state));

    let table = state.table.clone();
    let written = match (rows, deletes) {
        (None, None) if !delta.truncate => None,
        (rows, None) => {
            let rows = match rows {
                Some(rows) => rows,
                None => ctx.read_batch(RecordBatch::new_empty(target.clone()))?,
            };
            let mode = if delta.truncate {
                SaveMode::Overwrite
            } else {
                SaveMode::Append
            };
            let written = table
                .write(Vec::new())
                .with_input_plan(rows.into_unoptimized_plan())
                .with_session_state(Arc::new(ctx.state()))
                .with_save_mode(mode)
                .with_target_file_size(NonZeroU64::new(settings.target_file_size))
                .with_commit_properties(properties)
                .await?;
            Some(written)
        }
        (rows, Some(deletes)) => {
            let source = merge_source(rows, deletes, &state.layout.key, &target)?;
            let on = state
                .layout
                .key
                .iter()
                .map(|k| {
                    col(Column::new(Some("target"), k)).eq(col(Column::new(Some("source"), k)))
                })
                .reduce(Expr::and)
                .ok_or_else(|| Failure::Message("the table has no key to merge on".into()))?;
            let is_op = |op: &str| col(Column::new(Some("source"), OP)).eq(lit(op.to_string()));
            let columns: Vec<String> = target.fields().iter().map(|f| f.name().clone()).collect();
            let (merged, _metrics) = table
                .merge(source, on)
                .with_source_alias("source")
                .with_target_alias("target")
                .with_session_state(Arc::new(ctx.state()))
                .with_commit_properties(properties)
                .when_matched_delete(|d| d.predicate(is_op("D")))?
                .when_matched_update(|mut u| {
                    u = u.predicate(is_op("U"));
                    for name in &columns {
                        u = u.update(
                            Column::new_unqualified(name),
                            col(Column::new(Some("source"), name)),
                        );
                    }
                    u
                })?
                .when_not_matched_insert(|mut i| {
                    i = i.predicate(is_op("U"));
                    for name in &columns {
                        i = i.set(
                            Column::new_unqualified(name),
                            col(Column::new(Some("source"), name)),
                        );
                    }
                    i
                })?
                .await?;
            Some(merged)
        }
    };
    if let Some(table) = written {
        state.table = table;
    }
    if state.table.version() == before {
        // nothing changed a file: the checkpoint still has to move
        commit_checkpoint_inner(state, delta.lsn, delta.copy.as_deref()).await?;
    }
    Ok(state.table.version().unwrap_or_default())
}

/// Commits the data files `adds` (written for this commit, see `data_files`) with `delta`'s
/// checkpoint: an append, or for `delta.truncate` an overwrite that also removes every file of
/// the current version. Returns the table's new version.
pub async fn commit_files(state: &mut TableState, delta: &TableDelta, adds: &[Add]) -> Result<u64> {
    let lake = state.lake.clone();
    commit_files_inner(state, delta, adds)
        .await
        .map_err(|e| e.about(&lake, "commit the written data files"))
}

async fn commit_files_inner(
    state: &mut TableState,
    delta: &TableDelta,
    adds: &[Add],
) -> Result<u64, Failure> {
    let snapshot = state.table.snapshot()?;
    let mut actions: Vec<Action> = Vec::with_capacity(adds.len());
    if delta.truncate {
        let log_store = state.table.log_store();
        let mut files = snapshot.snapshot().file_views(log_store.as_ref(), None);
        while let Some(file) = files.next().await {
            actions.push(Action::Remove(file?.remove_action(true)));
        }
    }
    actions.extend(adds.iter().cloned().map(Action::Add));
    let partition_columns = snapshot.metadata().partition_columns().to_vec();
    let operation = DeltaOperation::Write {
        mode: if delta.truncate {
            SaveMode::Overwrite
        } else {
            SaveMode::Append
        },
        partition_by: (!partition_columns.is_empty()).then_some(partition_columns),
        predicate: None,
    };
    let committed = CommitBuilder::from(
        checkpoint_properties(
            &state.lake,
            delta.lsn,
            delta.copy.as_deref(),
            &state.commit_id,
        )
        .with_cleanup_expired_logs(log_cleanup(state)),
    )
    .with_actions(actions)
    .build(Some(snapshot), state.table.log_store(), operation)
    .await?;
    state.table.update_state().await?;
    Ok(committed.version())
}

/// An empty commit carrying only `lsn` (or "no checkpoint" for `None`), and no copy under way.
pub async fn commit_checkpoint(state: &mut TableState, lsn: Option<Lsn>) -> Result<()> {
    let lake = state.lake.clone();
    commit_checkpoint_inner(state, lsn, None)
        .await
        .map_err(|e| e.about(&lake, "commit the checkpoint"))
}

async fn commit_checkpoint_inner(
    state: &mut TableState,
    lsn: Option<Lsn>,
    copy: Option<&str>,
) -> Result<(), Failure> {
    let properties = checkpoint_properties(&state.lake, lsn, copy, &state.commit_id)
        .with_cleanup_expired_logs(log_cleanup(state));
    let snapshot = state.table.snapshot()?;
    CommitBuilder::from(properties)
        .with_actions(Vec::new())
        .build(
            Some(snapshot),
            state.table.log_store(),
            DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: None,
                predicate: None,
            },
        )
        .await?;
    state.table.update_state().await?;
    Ok(())
}

/// Whether the commit after `state`'s version removes expired log entries: deltalake would
/// list the whole `_delta_log` after every commit to find them, a cost that grows with the
/// log; the writer asks for it only on the commits that write a log checkpoint (every
/// `delta.checkpointInterval` versions), where the table's own
/// `delta.enableExpiredLogCleanup` decides (`None`), and turns it off on the others.
fn log_cleanup(state: &TableState) -> Option<bool> {
    let Ok(snapshot) = state.table.snapshot() else {
        return Some(false);
    };
    let interval =
        deltalake::table::config::TablePropertiesExt::checkpoint_interval(snapshot.table_config())
            .get();
    let next = state.table.version().map_or(0, |v| v + 1);
    if (next + 1).is_multiple_of(interval) {
        None
    } else {
        Some(false)
    }
}

/// The `commitInfo` key of a commit's identity.
pub const COMMIT_ID: &str = "lakewriter.commit";

/// Commit properties carrying `lsn` as `lake`'s checkpoint (`None`: "no checkpoint"), the
/// progress of the table's chunked copy (`None`: no copy under way, see [`copy_app_id`]) and
/// the commit's identity `commit_id` (none when empty).
pub fn checkpoint_properties(
    lake: &CatalogTable,
    lsn: Option<Lsn>,
    copy: Option<&str>,
    commit_id: &str,
) -> CommitProperties {
    let properties = CommitProperties::default()
        .with_application_transaction(Transaction::new(checkpoint_app_id(lake), txn_version(lsn)))
        .with_application_transaction(Transaction::new(
            copy_app_id(lake),
            if copy.is_some() { 1 } else { -1 },
        ));
    let mut metadata = Vec::new();
    if !commit_id.is_empty() {
        metadata.push((
            COMMIT_ID.to_string(),
            serde_json::Value::String(commit_id.to_string()),
        ));
    }
    if let Some(copy) = copy {
        metadata.push((
            COPY_PROPERTY.to_string(),
            serde_json::Value::String(copy.to_string()),
        ));
    }
    if metadata.is_empty() {
        return properties;
    }
    properties.with_metadata(metadata)
}

/// The rows of `batches` (source layout) and of the staged `files` (lake layout, maybe of an
/// older schema, sealed with the settings' key) as one frame in the layout `target`; `None`
/// when there are none.
async fn frame(
    ctx: &SessionContext,
    batches: &[RecordBatch],
    files: impl Iterator<Item = &StagedFile>,
    settings: &DeltaSettings,
    target: &SchemaRef,
) -> Result<Option<DataFrame>, Failure> {
    let shaped = batches
        .iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| types::to_lake(b, target).map_err(Failure::Message))
        .collect::<Result<Vec<_>, Failure>>()?;
    let mut frames = Vec::new();
    if !shaped.is_empty() {
        frames.push(ctx.read_batches(shaped)?);
    }
    for file in files {
        let scanned = ctx.read_table(file.table(&settings.sealer)?)?;
        frames.push(align(scanned, target)?);
    }
    let mut frames = frames.into_iter();
    let Some(first) = frames.next() else {
        return Ok(None);
    };
    let mut all = first;
    for next in frames {
        all = all.union(next)?;
    }
    Ok(Some(all))
}

/// `frame` with exactly the columns of `target`, in order: its own cast to the target's type,
/// the ones it lacks (added to the table since it was staged) null.
fn align(frame: DataFrame, target: &SchemaRef) -> Result<DataFrame, Failure> {
    let has = |name: &str| frame.schema().has_column_with_unqualified_name(name);
    let exprs = target
        .fields()
        .iter()
        .map(|f| {
            let value = if has(f.name()) {
                cast(
                    col(Column::new_unqualified(f.name())),
                    f.data_type().clone(),
                )
            } else {
                lit(ScalarValue::try_from(f.data_type())?)
            };
            Ok(value.alias(f.name()))
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    Ok(frame.select(exprs)?)
}

/// The MERGE source: `rows` as `U`, and the keys of `deletes` that no row carries, once each,
/// as `D` (other columns null).
fn merge_source(
    rows: Option<DataFrame>,
    deletes: DataFrame,
    key: &[String],
    target: &SchemaRef,
) -> Result<DataFrame, Failure> {
    let key_columns = |relation: Option<&str>| -> Vec<Expr> {
        key.iter()
            .map(|k| match relation {
                Some(r) => col(Column::new(Some(r), k)).alias(k),
                None => col(Column::new_unqualified(k)),
            })
            .collect()
    };
    let mut gone = deletes.select(key_columns(None))?.distinct()?;
    if let Some(rows) = &rows {
        let written = rows.clone().select(key_columns(None))?.alias("written")?;
        let on: Vec<Expr> = key
            .iter()
            .map(|k| col(Column::new(Some("gone"), k)).eq(col(Column::new(Some("written"), k))))
            .collect();
        gone = gone
            .alias("gone")?
            .join_on(written, JoinType::LeftAnti, on)?
            .select(key_columns(Some("gone")))?;
    }
    let mut exprs = target
        .fields()
        .iter()
        .map(|f| {
            let value = if key.contains(f.name()) {
                col(Column::new_unqualified(f.name()))
            } else {
                lit(ScalarValue::try_from(f.data_type())?)
            };
            Ok(value.alias(f.name()))
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    exprs.push(lit("D").alias(OP));
    let gone = gone.select(exprs)?;
    let source = match rows {
        Some(rows) => rows.with_column(OP, lit("U"))?.union(gone)?,
        None => gone,
    };
    Ok(source)
}
