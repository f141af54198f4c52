//! Reduces one table's buffered changes to what a lake commit needs (DESIGN.md invariant 5):
//! the final state of every key, and the old rows whose keys must be deleted. Equality deletes
//! do not apply to rows of the same commit, so a commit must hold one final state per key:
//! each key's changes are folded in stream order (commit LSN, then position), and
//!
//! - a key first seen as an INSERT was absent from the lake (exactly-once guarantees it), so
//!   it needs no delete, whatever happens to it later in the flush;
//! - a key first seen in an UPDATE or DELETE is in the lake: its old row becomes a delete
//!   (routed by the old row's partition values), and its final state, if any, a new row;
//! - an UPDATE that changes the key deletes the old key and adds the new one;
//! - an unchanged TOAST value is taken from the change's own old row (`REPLICA IDENTITY
//!   FULL`), from the key's previous version in the flush, or, failing both, looked up in the
//!   lake — never written as a placeholder.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, new_null_array};
use arrow::compute::{cast, interleave};
use arrow::datatypes::SchemaRef;
use arrow::row::{OwnedRow, Row, RowConverter, Rows, SortField};

use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::table::{ChangeBatch, OldRow, Op, TableSchema};

/// A buffered item of one table, in stream order.
#[derive(Debug, Clone)]
pub enum Entry {
    /// Changes.
    Changes(ChangeBatch),
    /// A TRUNCATE in the transaction committing at this LSN: everything before it is gone.
    Truncate(Lsn),
}

/// Where a value comes from: `(source, row)`, a source being a batch side or a lookup batch.
type At = (usize, usize);

/// A key's fold.
#[derive(Debug, Clone)]
struct KeyState {
    /// The key may be in the lake from earlier commits: its old row must be deleted.
    in_lake: bool,
    /// The row the delete is made from (the first old row seen: its partition is the lake's).
    delete_from: Option<At>,
    /// The final row, if the key survives the flush.
    last: Option<At>,
    /// Columns of `last` taken from elsewhere (unchanged TOAST), by column index; `None`: from
    /// the lake row of `lake_key`.
    patched: Vec<(usize, Option<At>)>,
    /// The key under which the lake holds this row's earlier version (the old key of a
    /// re-keyed row).
    lake_key: Option<OwnedRow>,
}

/// The reduced changes of one table, before any lake lookup.
#[derive(Debug)]
pub struct Plan {
    schema: Arc<TableSchema>,
    key_columns: Vec<usize>,
    truncate: bool,
    /// Batch sides as sources: `2 * i` = new rows of batch `i`, `2 * i + 1` = its old rows.
    sources: Vec<RecordBatch>,
    /// The keys' folds, in order of their first appearance.
    keys: Vec<KeyState>,
    /// Batches of inserts whose keys nothing else in the flush touches: final rows as they are.
    fresh: Vec<RecordBatch>,
    /// The encoder of keys: rows of one encoder can only be decoded by it.
    converter: RowConverter,
}

/// What a commit needs.
#[derive(Debug)]
pub struct Reduced {
    /// Remove every row first.
    pub truncate: bool,
    /// Old rows whose keys must be deleted.
    pub deletes: Option<RecordBatch>,
    /// Final rows.
    pub rows: Vec<RecordBatch>,
}

/// Batches of at least this many plain inserts (no old row, no unchanged TOAST) are checked
/// for keys that no other change of the flush touches: those rows are final as they are and
/// skip the fold (a chunked copy's chunk, a bulk insert).
const FRESH_MIN_ROWS: usize = 1024;

/// Folds `entries` (one table's changes in stream order) into a plan, in the layout of
/// `schema` (the table's latest shape; older batches are conformed to it by column name).
pub fn plan(schema: Arc<TableSchema>, key: &[String], entries: &[Entry]) -> Result<Plan> {
    plan_with(schema, key, entries, FRESH_MIN_ROWS)
}

/// [`plan`], taking batches of `fresh_min` plain inserts or more as fresh candidates.
fn plan_with(
    schema: Arc<TableSchema>,
    key: &[String],
    entries: &[Entry],
    fresh_min: usize,
) -> Result<Plan> {
    let table = schema.table.clone();
    let target = schema.arrow_nullable.clone();
    let key_columns: Vec<usize> = key
        .iter()
        .map(|name| {
            target.index_of(name).map_err(|_| Error::Source {
                message: format!("table {table}: key column {name} is not in the table"),
            })
        })
        .collect::<Result<_>>()?;
    let converter = RowConverter::new(
        key_columns
            .iter()
            .map(|&i| SortField::new(target.field(i).data_type().clone()))
            .collect(),
    )
    .map_err(|e| arrow_error(&schema, e))?;
    let mut plan = Plan {
        schema,
        key_columns,
        truncate: false,
        sources: Vec::new(),
        keys: Vec::new(),
        fresh: Vec::new(),
        converter,
    };
    let fresh = plan.fresh_candidates(entries, fresh_min)?;
    let skip: Vec<usize> = fresh.iter().map(|f| f.entry).collect();
    let index = plan.fold(entries, &skip)?;
    if fresh.iter().any(|f| index.keys().any(|k| f.contains(k))) {
        // a candidate's key is changed elsewhere in the flush: every row takes the fold
        plan.sources.clear();
        plan.keys.clear();
        plan.truncate = false;
        plan.fold(entries, &[])?;
    } else {
        plan.fresh = fresh.into_iter().map(|f| f.rows).collect();
    }
    Ok(plan)
}

/// A batch of plain inserts whose keys are unique in it, with them in key order.
struct Fresh {
    /// Its place among the entries.
    entry: usize,
    /// Its rows, in the plan's layout.
    rows: RecordBatch,
    keys: Rows,
    /// The rows in key order, when they are not in it already.
    order: Option<Vec<usize>>,
}

impl Fresh {
    /// The `i`-th key in key order.
    fn key(&self, i: usize) -> Row<'_> {
        self.keys
            .row(self.order.as_ref().map_or(i, |order| order[i]))
    }

    fn first(&self) -> Row<'_> {
        self.key(0)
    }

    fn last(&self) -> Row<'_> {
        self.key(self.keys.num_rows() - 1)
    }

    /// Whether it holds `key` (row-format bytes, which order as the keys do).
    fn contains(&self, key: &[u8]) -> bool {
        if key < self.first().as_ref() || key > self.last().as_ref() {
            return false;
        }
        let (mut low, mut high) = (0, self.keys.num_rows());
        while low < high {
            let middle = low + (high - low) / 2;
            match self.key(middle).as_ref().cmp(key) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => return true,
            }
        }
        false
    }
}

impl Plan {
    /// The batches after the last TRUNCATE that may skip the fold: `fresh_min` or more plain
    /// inserts, no NULL in the key, every key once, and no key in another candidate's range.
    fn fresh_candidates(&self, entries: &[Entry], fresh_min: usize) -> Result<Vec<Fresh>> {
        let start = entries
            .iter()
            .rposition(|e| matches!(e, Entry::Truncate(_)))
            .map_or(0, |i| i + 1);
        let mut candidates = Vec::new();
        for (entry, item) in entries.iter().enumerate().skip(start) {
            let Entry::Changes(batch) = item else {
                continue;
            };
            let plain = batch.len() >= fresh_min.max(1)
                && batch.unchanged_toast.is_empty()
                && batch.ops.iter().all(|op| *op == Op::Insert)
                && batch.old_rows.iter().all(|o| *o == OldRow::Absent);
            if !plain {
                continue;
            }
            let rows = conform(&batch.new, &self.schema.arrow_nullable, &self.schema)?;
            if self
                .key_columns
                .iter()
                .any(|&c| rows.column(c).null_count() > 0)
            {
                continue;
            }
            let keys = self.keys_of(&rows)?;
            let sorted = (1..keys.num_rows()).all(|i| keys.row(i - 1) < keys.row(i));
            let order = if sorted {
                None
            } else {
                let mut order: Vec<usize> = (0..keys.num_rows()).collect();
                order.sort_unstable_by(|&a, &b| keys.row(a).cmp(&keys.row(b)));
                if order.windows(2).any(|w| keys.row(w[0]) == keys.row(w[1])) {
                    continue;
                }
                Some(order)
            };
            candidates.push(Fresh {
                entry,
                rows,
                keys,
                order,
            });
        }
        // candidates whose key ranges overlap an earlier-kept one's take the fold
        candidates.sort_by(|a, b| a.first().cmp(&b.first()));
        let mut kept: Vec<Fresh> = Vec::with_capacity(candidates.len());
        for candidate in candidates {
            if kept.last().is_none_or(|k| k.last() < candidate.first()) {
                kept.push(candidate);
            }
        }
        Ok(kept)
    }

    fn keys_of(&self, rows: &RecordBatch) -> Result<Rows> {
        self.converter
            .convert_columns(
                &self
                    .key_columns
                    .iter()
                    .map(|&i| rows.column(i).clone())
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| arrow_error(&self.schema, e))
    }

    /// Folds every entry but those at `skip` into the plan; returns where each key is.
    fn fold(&mut self, entries: &[Entry], skip: &[usize]) -> Result<KeyPlaces> {
        let schema = self.schema.clone();
        let target = schema.arrow_nullable.clone();
        let mut index = KeyPlaces::default();
        for (at, entry) in entries.iter().enumerate() {
            if skip.contains(&at) {
                continue;
            }
            let batch = match entry {
                Entry::Truncate(_) => {
                    self.truncate = true;
                    index.clear();
                    self.keys.clear();
                    continue;
                }
                Entry::Changes(batch) => batch,
            };
            let new_source = self.sources.len();
            let old_source = new_source + 1;
            let new = conform(&batch.new, &target, &schema)?;
            let old = conform(&batch.old, &target, &schema)?;
            let new_keys = self.keys_of(&new)?;
            let old_keys = self.keys_of(&old)?;
            let keys = &mut self.keys;
            let key_columns = &self.key_columns;
            // unchanged TOAST values of this batch, by row, as columns of the target layout
            let mut toast: HashMap<usize, Vec<usize>> = HashMap::new();
            for &(row, column) in &batch.unchanged_toast {
                let name = batch
                    .schema
                    .arrow_nullable
                    .fields()
                    .get(usize::from(column))
                    .map(|f| f.name().clone());
                if let Some(target_column) = name.and_then(|n| target.index_of(&n).ok()) {
                    toast.entry(row as usize).or_default().push(target_column);
                }
            }
            let key_nulls = |rows: &RecordBatch, row: usize| {
                key_columns.iter().any(|&i| rows.column(i).is_null(row))
            };
            for (row, op) in batch.ops.iter().enumerate() {
                let has_old =
                    batch.old_rows.get(row).copied().unwrap_or(OldRow::Absent) != OldRow::Absent;
                match op {
                    Op::Insert => {
                        if key_nulls(&new, row) {
                            return Err(null_key(&schema, batch, "an insert"));
                        }
                        let key = new_keys.row(row);
                        let state = fold_state(&mut index, keys, key.as_ref(), false);
                        match toast.get(&row) {
                            // every value sent: no earlier version is needed
                            None => state.set_whole((new_source, row)),
                            unchanged => {
                                let previous = Previous::of(state, key.owned());
                                set_last(state, (new_source, row), unchanged, None, previous);
                            }
                        }
                    }
                    Op::Update => {
                        if key_nulls(&new, row) {
                            return Err(null_key(&schema, batch, "an update"));
                        }
                        let new_key = new_keys.row(row);
                        let (old_key, delete_from) = if has_old && !key_nulls(&old, row) {
                            (old_keys.row(row), (old_source, row))
                        } else {
                            (new_key, (new_source, row))
                        };
                        let full_old = (batch.old_rows.get(row) == Some(&OldRow::Full))
                            .then_some((old_source, row));
                        let unchanged = toast.get(&row);
                        if old_key != new_key {
                            // the key changed: the old key goes, the new one is new to the lake;
                            // values the update did not send come from the old key's row
                            let old_state = fold_state(&mut index, keys, old_key.as_ref(), true);
                            if old_state.in_lake {
                                old_state.delete_from.get_or_insert(delete_from);
                            }
                            let previous = unchanged
                                .is_some()
                                .then(|| Previous::of(old_state, old_key.owned()));
                            old_state.last = None;
                            old_state.patched.clear();
                            let state = fold_state(&mut index, keys, new_key.as_ref(), false);
                            match previous {
                                None => state.set_whole((new_source, row)),
                                Some(previous) => set_last(
                                    state,
                                    (new_source, row),
                                    unchanged,
                                    full_old,
                                    previous,
                                ),
                            }
                        } else {
                            let state = fold_state(&mut index, keys, new_key.as_ref(), true);
                            if state.in_lake {
                                state.delete_from.get_or_insert(delete_from);
                            }
                            match unchanged {
                                None => state.set_whole((new_source, row)),
                                unchanged => {
                                    let previous = Previous::of(state, new_key.owned());
                                    set_last(
                                        state,
                                        (new_source, row),
                                        unchanged,
                                        full_old,
                                        previous,
                                    );
                                }
                            }
                        }
                    }
                    Op::Delete => {
                        if !has_old || key_nulls(&old, row) {
                            return Err(null_key(&schema, batch, "a delete"));
                        }
                        let state = fold_state(&mut index, keys, old_keys.row(row).as_ref(), true);
                        if state.in_lake {
                            state.delete_from.get_or_insert((old_source, row));
                        }
                        state.last = None;
                        state.patched.clear();
                    }
                }
            }
            self.sources.push(new);
            self.sources.push(old);
        }
        Ok(index)
    }
}

/// Where each key of a fold is among its states, by the key's row-format bytes.
type KeyPlaces = HashMap<Box<[u8]>, usize, foldhash::fast::RandomState>;

/// The state of `key` (its row-format bytes), created on first sight: `seen_in_lake` says
/// whether that first sight implies the key is already in the lake.
fn fold_state<'a>(
    index: &mut KeyPlaces,
    keys: &'a mut Vec<KeyState>,
    key: &[u8],
    seen_in_lake: bool,
) -> &'a mut KeyState {
    let at = match index.get(key) {
        Some(&at) => at,
        None => {
            index.insert(key.into(), keys.len());
            keys.push(KeyState {
                in_lake: seen_in_lake,
                delete_from: None,
                last: None,
                patched: Vec::new(),
                lake_key: None,
            });
            keys.len() - 1
        }
    };
    &mut keys[at]
}

impl KeyState {
    /// Makes `row`, which carries every value, the key's final state.
    fn set_whole(&mut self, row: At) {
        self.last = Some(row);
        self.patched.clear();
        self.lake_key = None;
    }
}

/// Where a key's values were before a change: its final row in the flush so far (with its
/// patched columns), or the lake's row under `key` when the flush has none.
struct Previous {
    last: Option<At>,
    patched: Vec<(usize, Option<At>)>,
    lake_key: Option<OwnedRow>,
    key: OwnedRow,
    in_lake: bool,
}

impl Previous {
    fn of(state: &KeyState, key: OwnedRow) -> Previous {
        Previous {
            last: state.last,
            patched: state.patched.clone(),
            lake_key: state.lake_key.clone(),
            key,
            in_lake: state.in_lake,
        }
    }
}

/// Makes `row` the key's final state, resolving its unchanged TOAST columns from the change's
/// own old row (`full_old`), else from the previous version in the flush, else from the lake.
fn set_last(
    state: &mut KeyState,
    row: At,
    unchanged: Option<&Vec<usize>>,
    full_old: Option<At>,
    previous: Previous,
) {
    let mut patched = Vec::new();
    let mut needs_lake = false;
    for &column in unchanged.into_iter().flatten() {
        let from = match (full_old, previous.last) {
            (Some(old), _) => Some(old),
            (None, Some(last)) => previous
                .patched
                .iter()
                .find(|(c, _)| *c == column)
                .map(|(_, from)| *from)
                .unwrap_or(Some(last)),
            (None, None) => None,
        };
        needs_lake |= from.is_none();
        patched.push((column, from));
    }
    state.last = Some(row);
    state.patched = patched;
    state.lake_key = if needs_lake {
        // the lake holds the row under the previous key's own lake key, or that key itself
        previous
            .lake_key
            .clone()
            .or_else(|| previous.in_lake.then(|| previous.key.clone()))
    } else {
        None
    };
}

impl Plan {
    /// The keys whose unchanged TOAST values must come from the lake, as a batch of key
    /// columns; `None` when the flush resolved all of them.
    pub fn lookup_keys(&self) -> Result<Option<RecordBatch>> {
        let wanted: Vec<&OwnedRow> = self
            .keys
            .iter()
            .filter(|s| s.last.is_some() && s.patched.iter().any(|(_, f)| f.is_none()))
            .filter_map(|s| s.lake_key.as_ref())
            .collect();
        if wanted.is_empty() {
            return Ok(None);
        }
        let columns = self
            .converter
            .convert_rows(wanted.iter().map(|k| k.row()))
            .map_err(|e| arrow_error(&self.schema, e))?;
        let fields: Vec<_> = self
            .key_columns
            .iter()
            .map(|&c| self.schema.arrow_nullable.field(c).clone())
            .collect();
        RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns)
            .map(Some)
            .map_err(|e| arrow_error(&self.schema, e))
    }

    /// The commit's deletes and rows; `lake` holds the current lake rows of
    /// [`Plan::lookup_keys`] (full table layout, conformed by column name).
    pub fn materialize(&self, lake: &[RecordBatch]) -> Result<Reduced> {
        let target = self.schema.arrow_nullable.clone();
        let mut extra: Vec<RecordBatch> = Vec::with_capacity(lake.len());
        for batch in lake {
            extra.push(conform(batch, &target, &self.schema)?);
        }
        // where each looked-up key's lake row is
        let mut in_lake: HashMap<OwnedRow, At> = HashMap::new();
        if !extra.is_empty() {
            let converter = &self.converter;
            for (i, batch) in extra.iter().enumerate() {
                let rows = converter
                    .convert_columns(
                        &self
                            .key_columns
                            .iter()
                            .map(|&c| batch.column(c).clone())
                            .collect::<Vec<_>>(),
                    )
                    .map_err(|e| arrow_error(&self.schema, e))?;
                for r in 0..batch.num_rows() {
                    in_lake.insert(rows.row(r).owned(), (self.sources.len() + i, r));
                }
            }
        }
        let deletes: Vec<At> = self
            .keys
            .iter()
            .filter(|s| s.in_lake)
            .filter_map(|s| s.delete_from)
            .collect();
        let survivors: Vec<&KeyState> = self.keys.iter().filter(|s| s.last.is_some()).collect();
        let mut columns = Vec::with_capacity(target.fields().len());
        for column in 0..target.fields().len() {
            let mut at = Vec::with_capacity(survivors.len());
            for state in &survivors {
                let Some(last) = state.last else { continue };
                let from = match state.patched.iter().find(|(c, _)| *c == column) {
                    None => last,
                    Some((_, Some(from))) => *from,
                    Some((_, None)) => *state
                        .lake_key
                        .as_ref()
                        .and_then(|k| in_lake.get(k))
                        .ok_or_else(|| Error::Source {
                        message: format!(
                            "table {}, column {}: an unchanged TOAST value whose row is neither in \
                             this flush nor in the lake; refusing to write a placeholder",
                            self.schema.table,
                            target.field(column).name()
                        ),
                    })?,
                };
                at.push(from);
            }
            columns.push(self.take_column(column, &at, &extra)?);
        }
        let mut rows = Vec::with_capacity(1 + self.fresh.len());
        if !survivors.is_empty() {
            rows.push(
                RecordBatch::try_new(target.clone(), columns)
                    .map_err(|e| arrow_error(&self.schema, e))?,
            );
        }
        rows.extend(self.fresh.iter().cloned());
        let deletes = if deletes.is_empty() {
            None
        } else {
            let columns = (0..target.fields().len())
                .map(|c| self.take_column(c, &deletes, &extra))
                .collect::<Result<Vec<_>>>()?;
            Some(RecordBatch::try_new(target, columns).map_err(|e| arrow_error(&self.schema, e))?)
        };
        Ok(Reduced {
            truncate: self.truncate,
            deletes,
            rows,
        })
    }

    fn take_column(&self, column: usize, at: &[At], extra: &[RecordBatch]) -> Result<ArrayRef> {
        let arrays: Vec<&dyn Array> = self
            .sources
            .iter()
            .chain(extra)
            .map(|b| b.column(column).as_ref())
            .collect();
        if arrays.is_empty() {
            return Ok(new_null_array(
                self.schema.arrow_nullable.field(column).data_type(),
                0,
            ));
        }
        interleave(&arrays, at).map_err(|e| arrow_error(&self.schema, e))
    }
}

/// `batch` in the `target` layout: columns matched by name, cast where a type was widened,
/// nulls for columns the batch predates.
pub fn conform(
    batch: &RecordBatch,
    target: &SchemaRef,
    schema: &TableSchema,
) -> Result<RecordBatch> {
    if batch.schema() == *target {
        return Ok(batch.clone());
    }
    let rows = batch.num_rows();
    let columns = target
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            None => Ok(new_null_array(field.data_type(), rows)),
            Some(column) if column.data_type() == field.data_type() => Ok(column.clone()),
            Some(column) => cast(column, field.data_type()).map_err(|e| Error::Source {
                message: format!(
                    "table {}, column {}: cannot convert {} to {}: {e}",
                    schema.table,
                    field.name(),
                    column.data_type(),
                    field.data_type()
                ),
            }),
        })
        .collect::<Result<Vec<_>>>()?;
    RecordBatch::try_new(target.clone(), columns).map_err(|e| arrow_error(schema, e))
}

fn arrow_error(schema: &TableSchema, error: arrow::error::ArrowError) -> Error {
    Error::Source {
        message: format!("table {}: {error}", schema.table),
    }
}

fn null_key(schema: &TableSchema, batch: &ChangeBatch, what: &str) -> Error {
    Error::Source {
        message: format!(
            "table {}: {what} at commit LSN {} has a NULL in its key columns; the key must be \
             NOT NULL (or set [source.tables.\"{}\"] key to columns that are)",
            schema.table, batch.commit_lsn, schema.table
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow::array::{AsArray, Int32Array, StringArray};
    use arrow::datatypes::{DataType, Field, Int32Type, Schema};
    use proptest::prelude::*;

    use super::*;
    use crate::pipeline::spill::Spill;
    use crate::table::{ColumnSchema, RelationId, ReplicaIdentity, TableId};

    fn schema() -> Arc<TableSchema> {
        let arrow = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, true),
            Field::new("v", DataType::Utf8, true),
        ]));
        Arc::new(TableSchema {
            table: TableId::new("public", "t"),
            relation: RelationId(1),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                ColumnSchema {
                    name: "id".into(),
                    type_oid: crate::table::Oid(23),
                    type_modifier: -1,
                    key: true,
                },
                ColumnSchema {
                    name: "v".into(),
                    type_oid: crate::table::Oid(25),
                    type_modifier: -1,
                    key: false,
                },
            ],
            arrow_nullable: arrow.clone(),
            arrow,
        })
    }

    /// One change: op, new row, old row, whether `v` of the new row is unchanged TOAST.
    #[derive(Debug, Clone)]
    struct Change {
        op: Op,
        new: Option<(i32, Option<String>)>,
        old: Option<(i32, Option<String>)>,
        old_row: OldRow,
        toast: bool,
    }

    fn rows(schema: &TableSchema, values: &[Option<(i32, Option<String>)>]) -> RecordBatch {
        let ids: Int32Array = values
            .iter()
            .map(|v| v.as_ref().map(|(id, _)| *id))
            .collect();
        let vs: StringArray = values
            .iter()
            .map(|v| v.as_ref().and_then(|(_, s)| s.clone()))
            .collect();
        RecordBatch::try_new(
            schema.arrow_nullable.clone(),
            vec![Arc::new(ids), Arc::new(vs)],
        )
        .expect("batch")
    }

    fn batch(changes: &[Change]) -> Entry {
        let schema = schema();
        let new: Vec<_> = changes.iter().map(|c| c.new.clone()).collect();
        let old: Vec<_> = changes.iter().map(|c| c.old.clone()).collect();
        Entry::Changes(ChangeBatch {
            commit_lsn: Lsn(1),
            first_position: 0,
            ops: changes.iter().map(|c| c.op).collect(),
            new: rows(&schema, &new),
            old: rows(&schema, &old),
            old_rows: changes.iter().map(|c| c.old_row).collect(),
            unchanged_toast: changes
                .iter()
                .enumerate()
                .filter(|(_, c)| c.toast)
                .map(|(i, _)| (i as u32, 1))
                .collect(),
            schema,
        })
    }

    fn ins(id: i32, v: &str) -> Change {
        Change {
            op: Op::Insert,
            new: Some((id, Some(v.into()))),
            old: None,
            old_row: OldRow::Absent,
            toast: false,
        }
    }
    fn upd(id: i32, v: &str) -> Change {
        Change {
            op: Op::Update,
            new: Some((id, Some(v.into()))),
            old: None,
            old_row: OldRow::Absent,
            toast: false,
        }
    }
    fn upd_toast(id: i32) -> Change {
        Change {
            op: Op::Update,
            new: Some((id, None)),
            old: None,
            old_row: OldRow::Absent,
            toast: true,
        }
    }
    fn rekey(from: i32, to: i32, v: &str) -> Change {
        Change {
            op: Op::Update,
            new: Some((to, Some(v.into()))),
            old: Some((from, None)),
            old_row: OldRow::Key,
            toast: false,
        }
    }
    fn del(id: i32) -> Change {
        Change {
            op: Op::Delete,
            new: None,
            old: Some((id, None)),
            old_row: OldRow::Key,
            toast: false,
        }
    }

    type Lake = BTreeMap<i32, Option<String>>;

    fn ids<'a>(batches: impl IntoIterator<Item = &'a RecordBatch>) -> Vec<i32> {
        let mut ids: Vec<i32> = batches
            .into_iter()
            .flat_map(|b| b.column(0).as_primitive::<Int32Type>().values().to_vec())
            .collect();
        ids.sort();
        ids
    }

    /// Applies a reduced commit to `lake` the way an equality-delete commit does, refusing a
    /// row whose key is still live (that would be a duplicate).
    fn commit(lake: &mut Lake, reduced: &Reduced) {
        if reduced.truncate {
            lake.clear();
        }
        for id in ids(&reduced.deletes) {
            lake.remove(&id);
        }
        for rows in &reduced.rows {
            let id = rows.column(0).as_primitive::<Int32Type>();
            let v = rows.column(1).as_string::<i32>();
            for i in 0..rows.num_rows() {
                let value = v.is_valid(i).then(|| v.value(i).to_string());
                assert!(
                    lake.insert(id.value(i), value).is_none(),
                    "key {} would be duplicated",
                    id.value(i)
                );
            }
        }
    }

    /// Reduces as a flush does, with every batch of plain inserts a fresh candidate.
    fn reduce(entries: &[Entry], lake: &Lake) -> Result<Reduced> {
        let plan = plan_with(schema(), &["id".to_string()], entries, 1)?;
        let looked_up = match plan.lookup_keys()? {
            None => Vec::new(),
            Some(keys) => {
                let found: Vec<_> = keys
                    .column(0)
                    .as_primitive::<Int32Type>()
                    .values()
                    .iter()
                    .filter_map(|k| lake.get(k).map(|v| Some((*k, v.clone()))))
                    .collect();
                vec![rows(&schema(), &found)]
            }
        };
        plan.materialize(&looked_up)
    }

    #[test]
    fn each_kind_of_change_reduces_to_final_states() -> Result<()> {
        let lake: Lake = [(1, Some("a".into())), (2, Some("b".into()))].into();
        let cases: Vec<(Vec<Change>, Vec<i32>, Vec<i32>)> = vec![
            (vec![ins(3, "c"), ins(4, "d")], vec![], vec![3, 4]),
            (vec![upd(1, "x")], vec![1], vec![1]),
            (vec![ins(5, "e"), upd(5, "f"), del(5)], vec![], vec![]),
            (vec![del(1), ins(1, "again")], vec![1], vec![1]),
            (vec![rekey(1, 7, "moved")], vec![1], vec![7]),
            (vec![ins(8, "x"), rekey(8, 9, "y")], vec![], vec![9]),
        ];
        for (changes, deletes, survivors) in cases {
            let reduced = reduce(&[batch(&changes)], &lake)?;
            assert_eq!(ids(&reduced.deletes), deletes, "{changes:?}");
            assert_eq!(ids(&reduced.rows), survivors, "{changes:?}");
        }
        Ok(())
    }

    fn inserts(ids: &[i32]) -> Entry {
        batch(&ids.iter().map(|&id| ins(id, "v")).collect::<Vec<_>>())
    }

    /// How many rows took the fold and how many batches skipped it.
    fn folded(entries: &[Entry]) -> Result<(usize, usize)> {
        let plan = plan_with(schema(), &["id".to_string()], entries, 1)?;
        Ok((plan.keys.len(), plan.fresh.len()))
    }

    #[test]
    fn inserts_no_other_change_touches_skip_the_fold() -> Result<()> {
        // a chunk in key order, one out of order, and a change to other keys
        let entries = [
            inserts(&[10, 11, 12]),
            inserts(&[22, 20, 21]),
            batch(&[upd(1, "x"), del(2)]),
        ];
        assert_eq!(folded(&entries)?, (2, 2));
        let reduced = reduce(&entries, &[(1, None), (2, None)].into())?;
        assert_eq!(ids(&reduced.rows), vec![1, 10, 11, 12, 20, 21, 22]);
        assert_eq!(ids(&reduced.deletes), vec![1, 2]);
        Ok(())
    }

    #[test]
    fn inserts_whose_keys_change_elsewhere_in_the_flush_take_the_fold() -> Result<()> {
        // changed after
        let entries = [inserts(&[1, 2, 3]), batch(&[upd(2, "x"), del(3)])];
        assert_eq!(folded(&entries)?, (3, 0));
        let reduced = reduce(&entries, &Lake::new())?;
        assert_eq!(ids(&reduced.rows), vec![1, 2]);
        assert!(reduced.deletes.is_none());
        // deleted before, inserted again
        let entries = [batch(&[del(5)]), inserts(&[4, 5])];
        assert_eq!(folded(&entries)?, (2, 0));
        let reduced = reduce(&entries, &[(5, None)].into())?;
        assert_eq!(ids(&reduced.rows), vec![4, 5]);
        assert_eq!(ids(&reduced.deletes), vec![5]);
        // a key twice in one batch, and two batches with overlapping ranges
        assert_eq!(folded(&[inserts(&[7, 6, 7])])?, (2, 0));
        let entries = [inserts(&[1, 5, 9]), inserts(&[3, 4])];
        assert_eq!(folded(&entries)?, (2, 1));
        let entries = [inserts(&[1, 5, 9]), inserts(&[3, 5])];
        assert_eq!(folded(&entries)?, (4, 0));
        // before a truncate
        let entries = [inserts(&[1, 2]), Entry::Truncate(Lsn(1)), inserts(&[3])];
        assert_eq!(folded(&entries)?, (0, 1));
        assert_eq!(ids(&reduce(&entries, &Lake::new())?.rows), vec![3]);
        Ok(())
    }

    #[test]
    fn a_truncate_drops_everything_before_it() -> Result<()> {
        let reduced = reduce(
            &[
                batch(&[upd(1, "x")]),
                Entry::Truncate(Lsn(1)),
                batch(&[ins(1, "new")]),
            ],
            &Lake::new(),
        )?;
        assert!(reduced.truncate);
        assert_eq!(ids(&reduced.deletes), Vec::<i32>::new());
        assert_eq!(ids(&reduced.rows), vec![1]);
        Ok(())
    }

    #[test]
    fn unchanged_toast_values_come_from_the_flush_or_the_lake_never_null() -> Result<()> {
        let lake: Lake = [(1, Some("lake value".into()))].into();
        let value = |reduced: &Reduced| {
            reduced
                .rows
                .first()
                .map(|r| r.column(1).as_string::<i32>().value(0).to_string())
        };
        // from an earlier version in the same flush
        let reduced = reduce(&[batch(&[ins(2, "big"), upd_toast(2)])], &lake)?;
        assert_eq!(value(&reduced).as_deref(), Some("big"));
        // from the lake
        let reduced = reduce(&[batch(&[upd_toast(1)])], &lake)?;
        assert_eq!(value(&reduced).as_deref(), Some("lake value"));
        // from the change's own old row under REPLICA IDENTITY FULL
        let full = Change {
            old: Some((1, Some("old full".into()))),
            old_row: OldRow::Full,
            ..upd_toast(1)
        };
        let reduced = reduce(&[batch(&[full])], &Lake::new())?;
        assert_eq!(value(&reduced).as_deref(), Some("old full"));
        // a re-keyed row keeps the old key's value
        let reduced = reduce(
            &[batch(&[Change {
                old: Some((1, None)),
                old_row: OldRow::Key,
                ..upd_toast(3)
            }])],
            &lake,
        )?;
        assert_eq!(value(&reduced).as_deref(), Some("lake value"));
        // nowhere to be found: an error, not a null
        let err = reduce(&[batch(&[upd_toast(1)])], &Lake::new()).expect_err("no source");
        assert!(err.to_string().contains("placeholder"), "{err}");
        Ok(())
    }

    #[derive(Debug, Clone)]
    enum Step {
        Insert(i32, u8),
        Update(u8, u8),
        Rekey(u8, i32),
        /// A key change that leaves the TOASTed value unchanged (sent as a placeholder).
        RekeyToast(u8, i32),
        Delete(u8),
        Toast(u8),
        Truncate,
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            prop_oneof![
                4 => (0..12i32, any::<u8>()).prop_map(|(k, v)| Step::Insert(k, v)),
                4 => (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Step::Update(k, v)),
                2 => (any::<u8>(), 0..12i32).prop_map(|(k, to)| Step::Rekey(k, to)),
                1 => (any::<u8>(), 0..12i32).prop_map(|(k, to)| Step::RekeyToast(k, to)),
                2 => any::<u8>().prop_map(Step::Delete),
                2 => any::<u8>().prop_map(Step::Toast),
                1 => Just(Step::Truncate),
            ],
            0..40,
        )
    }

    /// Plays `step` on the model `expected`, adding its change to `changes` (a truncate closes
    /// `changes` into `pending` and adds itself there).
    fn play(step: Step, expected: &mut Lake, changes: &mut Vec<Change>, pending: &mut Vec<Entry>) {
        let pick = |model: &Lake, i: u8| model.keys().nth(i as usize % model.len().max(1)).copied();
        match step {
            Step::Insert(k, v) if !expected.contains_key(&k) => {
                expected.insert(k, Some(v.to_string()));
                changes.push(ins(k, &v.to_string()));
            }
            Step::Update(i, v) => {
                if let Some(k) = pick(expected, i) {
                    expected.insert(k, Some(v.to_string()));
                    changes.push(upd(k, &v.to_string()));
                }
            }
            Step::Rekey(i, to) => {
                if let Some(k) = pick(expected, i)
                    && !expected.contains_key(&to)
                {
                    expected.remove(&k);
                    expected.insert(to, Some("moved".into()));
                    changes.push(rekey(k, to, "moved"));
                }
            }
            Step::RekeyToast(i, to) => {
                if let Some(k) = pick(expected, i)
                    && !expected.contains_key(&to)
                {
                    let value = expected.remove(&k).flatten();
                    expected.insert(to, value);
                    changes.push(Change {
                        old: Some((k, None)),
                        old_row: OldRow::Key,
                        ..upd_toast(to)
                    });
                }
            }
            Step::Delete(i) => {
                if let Some(k) = pick(expected, i) {
                    expected.remove(&k);
                    changes.push(del(k));
                }
            }
            Step::Toast(i) => {
                if let Some(k) = pick(expected, i) {
                    changes.push(upd_toast(k));
                }
            }
            Step::Truncate => {
                if !changes.is_empty() {
                    pending.push(batch(&std::mem::take(changes)));
                }
                pending.push(Entry::Truncate(Lsn(1)));
                expected.clear();
            }
            Step::Insert(..) => {}
        }
    }

    fn model(initial: &BTreeMap<i32, u8>) -> Lake {
        initial
            .iter()
            .map(|(k, v)| (*k, Some(v.to_string())))
            .collect()
    }

    proptest! {
        /// Reduced commits leave the lake exactly as applying every change in order would,
        /// without ever writing a key twice, whatever the mix of changes and flush points.
        #[test]
        fn reduced_commits_equal_sequential_application(
            initial in prop::collection::btree_map(0..12i32, any::<u8>(), 0..8),
            steps in steps(),
            flush_every in 1usize..10,
        ) {
            let mut expected = model(&initial);
            let mut lake = expected.clone();
            let mut pending: Vec<Entry> = Vec::new();
            let mut changes: Vec<Change> = Vec::new();
            for (n, step) in steps.iter().enumerate() {
                play(step.clone(), &mut expected, &mut changes, &mut pending);
                if (n + 1) % flush_every == 0 || n + 1 == steps.len() {
                    if !changes.is_empty() {
                        pending.push(batch(&std::mem::take(&mut changes)));
                    }
                    let reduced = reduce(&pending, &lake).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    commit(&mut lake, &reduced);
                    pending.clear();
                }
            }
            prop_assert_eq!(lake, expected);
        }

        /// A transaction spilled by key bucket, each bucket reduced on its own and all of them
        /// committed as one, leaves the lake as applying every change in order would: key
        /// changes across buckets, unchanged TOAST and truncates included.
        #[test]
        fn spilled_transactions_commit_like_sequential_application(
            initial in prop::collection::btree_map(0..12i32, any::<u8>(), 0..8),
            steps in steps(),
            batch_every in 1usize..10,
        ) {
            let fail = |e: crate::error::Error| TestCaseError::fail(e.to_string());
            let mut expected = model(&initial);
            let mut lake = expected.clone();
            let mut pending: Vec<Entry> = Vec::new();
            let mut changes: Vec<Change> = Vec::new();
            for (n, step) in steps.iter().enumerate() {
                play(step.clone(), &mut expected, &mut changes, &mut pending);
                if ((n + 1) % batch_every == 0 || n + 1 == steps.len()) && !changes.is_empty() {
                    pending.push(batch(&std::mem::take(&mut changes)));
                }
            }
            let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let table = schema().table.clone();
            let mut spill = Spill::create(dir.path(), Lsn(1)).map_err(fail)?;
            for entry in pending {
                spill.add(&table, &["id".to_string()], entry).map_err(fail)?;
            }
            spill.finish().map_err(fail)?;
            let mut parts = Vec::new();
            for group in 0..spill.groups(&table) {
                let entries = spill.group(&table, group).map_err(fail)?;
                if !entries.is_empty() {
                    parts.push(reduce(&entries, &lake).map_err(fail)?);
                }
            }
            // one commit: every delete first, then every row, refusing a key written twice
            let merged = Reduced {
                truncate: spill.truncates(&table),
                deletes: concat(parts.iter().filter_map(|p| p.deletes.clone()).collect()),
                rows: parts.iter().flat_map(|p| p.rows.clone()).collect(),
            };
            commit(&mut lake, &merged);
            prop_assert_eq!(lake, expected);
        }
    }

    fn concat(batches: Vec<RecordBatch>) -> Option<RecordBatch> {
        let first = batches.first()?;
        Some(arrow::compute::concat_batches(&first.schema(), &batches).expect("same schema"))
    }
}
