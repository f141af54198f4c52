//! The lake's Delta tables as DataFusion tables: each table's latest version through
//! deltalake's own table provider (its log replayed, its files pruned by their statistics),
//! registered as `namespace.table` like the Iceberg tables of [`super::iceberg`].
//!
//! Delta has no identifier fields, so a [`LakeTable`] of a Delta table has no key of its own:
//! `verify` takes the key from the source, as the sink does when it merges.

use std::collections::BTreeSet;

use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::prelude::SessionContext;

use super::changes::{AsOf, LakeChanges, LakeVersion, ReadFrom};
use super::table::{LakeTable, register_namespace};
use crate::catalog::CatalogTable;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::sink::delta::{DeltaSettings, tables};

/// A DataFusion session over the Delta tables of `config`'s namespace (only `only` when
/// given), each registered as `namespace.table`; the session and the tables it registered.
pub(crate) async fn session(
    config: &Config,
    only: Option<&CatalogTable>,
) -> Result<(SessionContext, Vec<LakeTable>)> {
    let settings = DeltaSettings::from_config(config)?;
    let names = match only {
        Some(table) => vec![table.clone()],
        None => tables::list(config, &settings).await?,
    };
    let ctx = deltalake::delta_datafusion::create_session().into_inner();
    let schemas = MemorySchemaProvider::new();
    let mut registered = Vec::new();
    for name in names {
        let table = match only {
            Some(_) => tables::open_existing(&settings, &name).await?,
            None => match tables::open(&settings, &name).await? {
                Some(table) => table,
                // removed since it was listed
                None => continue,
            },
        };
        let register_error = |e: String| Error::Sink {
            table: name.to_string(),
            message: format!("register in DataFusion: {e}"),
            retryable: false,
        };
        table
            .update_datafusion_session(&ctx.state())
            .map_err(|e| register_error(e.to_string()))?;
        let provider = table
            .table_provider()
            .await
            .map_err(|e| register_error(e.to_string()))?;
        let snapshot = table.snapshot().map_err(|e| Error::Sink {
            table: name.to_string(),
            message: format!("read the table's state: {e}"),
            retryable: true,
        })?;
        let version = snapshot.version();
        let data_files = snapshot.log_data().into_iter().count();
        registered.push(LakeTable {
            name: name.clone(),
            metadata_location: format!(
                "{}/_delta_log/{version:020}.json",
                settings.table_location(&name)
            ),
            checkpoint: tables::checkpoint(&name, &table).await?,
            key: Vec::new(),
            schema: provider.schema(),
            data_files,
            delete_files: 0,
        });
        schemas
            .register_table(name.name.clone(), provider)
            .map_err(|e| register_error(e.to_string()))?;
    }
    register_namespace(&ctx, config, schemas)?;
    Ok((ctx, registered))
}

/// The rows of Delta table `name` to export (see [`super::changes`]): everything when `since`
/// is `None`, else the live rows of the keys touched by the commits after version `since`
/// and the touched keys that are gone. `key` comes from the caller: Delta tables carry none.
/// Actions with `dataChange = false` (OPTIMIZE, compaction) touch nothing.
pub(crate) async fn changes(
    config: &Config,
    name: &CatalogTable,
    read: ReadFrom,
    key: &[String],
) -> Result<LakeChanges> {
    let settings = DeltaSettings::from_config(config)?;
    let mut table = tables::open_existing(&settings, name).await?;
    if let ReadFrom::AsOf(as_of) = read {
        let version = match as_of {
            AsOf::Version(v) => v,
            AsOf::Time(ms) => version_at(name, &table, ms).await?,
        };
        let wanted = u64::try_from(version).map_err(|_| Error::Sink {
            table: name.to_string(),
            message: format!("version {version} is not a Delta version"),
            retryable: false,
        })?;
        table.load_version(wanted).await.map_err(|e| Error::Sink {
            table: name.to_string(),
            message: format!("load version {version} (never was, or its log was cleaned up): {e}"),
            retryable: false,
        })?;
    }
    let since = match read {
        ReadFrom::Since(since) => Some(since),
        ReadFrom::Everything | ReadFrom::AsOf(_) => None,
    };
    let ctx = deltalake::delta_datafusion::create_session().into_inner();
    let fail = |message: String| Error::Sink {
        table: name.to_string(),
        message,
        retryable: false,
    };
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|e| fail(format!("register in DataFusion: {e}")))?;
    let provider = table
        .table_provider()
        .await
        .map_err(|e| fail(format!("register in DataFusion: {e}")))?;
    let snapshot = table.snapshot().map_err(|e| Error::Sink {
        table: name.to_string(),
        message: format!("read the table's state: {e}"),
        retryable: true,
    })?;
    let version = i64::try_from(snapshot.version())
        .map_err(|_| fail(format!("version {} is out of range", snapshot.version())))?;
    let partitioned: Vec<String> = snapshot.metadata().partition_columns().to_vec();
    if let Some(column) = key.iter().find(|k| partitioned.contains(k)) {
        return Err(fail(format!(
            "the key column {column} is a partition column: export reads keys from the data \
             files, which do not hold it"
        )));
    }
    let schema = provider.schema();
    for column in key {
        if schema.field_with_name(column).is_err() {
            return Err(fail(format!(
                "the key column {column} is not a column of the table"
            )));
        }
    }
    let lake_table = LakeTable {
        name: name.clone(),
        metadata_location: format!(
            "{}/_delta_log/{version:020}.json",
            settings.table_location(name)
        ),
        checkpoint: tables::checkpoint(name, &table).await?,
        key: key.to_vec(),
        schema: schema.clone(),
        data_files: snapshot.log_data().into_iter().count(),
        delete_files: 0,
    };
    let rows = ctx
        .read_table(provider)
        .map_err(|e| fail(format!("plan the rows: {e}")))?;
    let log = table.log_store();
    let committed_at_ms = match log
        .read_commit_entry(snapshot.version())
        .await
        .map_err(|e| fail(format!("read the log entry of version {version}: {e}")))?
    {
        Some(entry) => commit_timestamp(&entry).unwrap_or_else(now_ms),
        // the entry was cleaned up behind a checkpoint
        None => now_ms(),
    };
    let current = LakeVersion {
        id: version,
        committed_at_ms,
    };
    let Some(since) = since else {
        return Ok(LakeChanges {
            table: lake_table,
            version: Some(current),
            rows,
            gone: None,
            files_read: 0,
        });
    };
    if since > version {
        return Err(fail(format!(
            "version {since}, exported last, is newer than the table's version {version} \
             (the table was re-created?): run the export again with --full"
        )));
    }
    let root = table.table_url().clone();
    let url = |path: &String| {
        root.join(path)
            .map(|u| u.to_string())
            .map_err(|e| fail(format!("{path}: {e}")))
    };
    // the files live now and not at `since`, and those live then and not now, whatever
    // happened in between: one comparison, however many commits rewrote the same files
    let (mut added, mut removed) = (BTreeSet::new(), BTreeSet::new());
    for v in since + 1..=version {
        let entry = log
            .read_commit_entry(v as u64)
            .await
            .map_err(|e| fail(format!("read the log entry of version {v}: {e}")))?
            .ok_or_else(|| super::changes::expired(name, since, "version"))?;
        let actions = file_actions(&entry).map_err(|m| fail(format!("version {v}: {m}")))?;
        for (path, kind) in actions {
            match kind {
                Action::Add => {
                    added.insert(path);
                }
                Action::Remove => {
                    if !added.remove(&path) {
                        removed.insert(path);
                    }
                }
            }
        }
    }
    let files_read = added.len() + removed.len();
    let added = added.iter().map(url).collect::<Result<Vec<_>>>()?;
    let removed = removed.iter().map(url).collect::<Result<Vec<_>>>()?;
    let (rows, gone) =
        super::changes::file_difference(&ctx, name, &lake_table, added, removed).await?;
    Ok(LakeChanges {
        table: lake_table,
        version: Some(current),
        rows,
        gone: Some(gone),
        files_read,
    })
}

/// The newest version committed at or before `ms`, from the commits' timestamps.
async fn version_at(name: &CatalogTable, table: &deltalake::DeltaTable, ms: i64) -> Result<i64> {
    let fail = |message: String| Error::Sink {
        table: name.to_string(),
        message,
        retryable: false,
    };
    let current = table
        .snapshot()
        .map_err(|e| fail(format!("read the table's state: {e}")))?
        .version();
    let log = table.log_store();
    for v in (0..=current).rev() {
        let Some(entry) = log
            .read_commit_entry(v)
            .await
            .map_err(|e| fail(format!("read the log entry of version {v}: {e}")))?
        else {
            break;
        };
        if commit_timestamp(&entry).is_some_and(|t| t <= ms) {
            return i64::try_from(v).map_err(|_| fail(format!("version {v} is out of range")));
        }
    }
    Err(fail(format!(
        "no version committed at or before {ms} ms since the epoch is left in the log"
    )))
}

/// What a log entry's action does to a data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Add,
    Remove,
}

/// The data files a commit adds and removes, in the order of its actions, as paths relative
/// to the table (with or without a data change: OPTIMIZE's moves cancel out in the
/// comparison); deletion vectors (position deletes by other engines) are refused, naming the
/// file.
fn file_actions(entry: &[u8]) -> std::result::Result<Vec<(String, Action)>, String> {
    let mut actions = Vec::new();
    for line in entry.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let action: serde_json::Value = serde_json::from_slice(line)
            .map_err(|e| format!("a log line that is not JSON: {e}"))?;
        for (kind, what) in [("add", Action::Add), ("remove", Action::Remove)] {
            let Some(file) = action.get(kind) else {
                continue;
            };
            let path = file
                .get("path")
                .and_then(|p| p.as_str())
                .ok_or_else(|| format!("an {kind} action without a path"))?;
            if file.get("deletionVector").is_some_and(|d| !d.is_null()) {
                return Err(format!(
                    "{path}: deletion vectors (written by another engine) are not supported; \
                     run OPTIMIZE with that engine to apply them"
                ));
            }
            actions.push((path.to_string(), what));
        }
    }
    Ok(actions)
}

/// The `commitInfo.timestamp` of a log entry.
fn commit_timestamp(entry: &[u8]) -> Option<i64> {
    entry
        .split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
        .find_map(|a| a.get("commitInfo")?.get("timestamp")?.as_i64())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_action_counts_in_order_and_deletion_vectors_are_refused() {
        let entry = br#"{"commitInfo":{"timestamp":1700000000000,"operation":"MERGE"}}
{"add":{"path":"a.parquet","dataChange":true}}
{"remove":{"path":"b.parquet","dataChange":true}}
{"add":{"path":"c.parquet","dataChange":false}}
{"remove":{"path":"d.parquet","dataChange":false}}
"#;
        assert_eq!(
            file_actions(entry),
            Ok(vec![
                ("a.parquet".to_string(), Action::Add),
                ("b.parquet".to_string(), Action::Remove),
                ("c.parquet".to_string(), Action::Add),
                ("d.parquet".to_string(), Action::Remove),
            ])
        );
        assert_eq!(commit_timestamp(entry), Some(1_700_000_000_000));
        let dv = br#"{"add":{"path":"e.parquet","dataChange":true,"deletionVector":{"storageType":"u"}}}"#;
        let err = file_actions(dv).expect_err("a deletion vector");
        assert!(err.contains("e.parquet"), "{err}");
    }
}
