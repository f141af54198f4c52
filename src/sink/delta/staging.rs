//! Parts of a source transaction too large for memory, staged as local Parquet files (already
//! in the table's lake layout) until the transaction's single commit reads them as part of its
//! MERGE source. They never enter the table by themselves: after a crash they are orphan files
//! of a local directory, which the next part of the same name never reuses.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;

use super::types;
use crate::catalog::CatalogTable;
use crate::error::{Error, Result};

/// One staged part: its rows and deletes files (absent when it had none).
#[derive(Debug)]
pub struct StagedPart {
    /// Rows to add, in the lake layout of when they were staged.
    pub rows: Option<PathBuf>,
    /// Old rows whose keys go, in the same layout.
    pub deletes: Option<PathBuf>,
}

impl StagedPart {
    /// Writes `rows` and `deletes` (source layout) into files under `dir`, shaped as
    /// `lake_schema`.
    pub fn write(
        dir: &Path,
        lake: &CatalogTable,
        lake_schema: &SchemaRef,
        rows: &[RecordBatch],
        deletes: &[RecordBatch],
    ) -> Result<StagedPart> {
        let dir = dir.join(lake.to_string());
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        let id = unique_id();
        Ok(StagedPart {
            rows: write_file(
                &dir.join(format!("{id}-rows.parquet")),
                lake,
                lake_schema,
                rows,
            )?,
            deletes: write_file(
                &dir.join(format!("{id}-deletes.parquet")),
                lake,
                lake_schema,
                deletes,
            )?,
        })
    }

    /// Removes the part's files (a file already gone is fine).
    pub fn remove(&self) {
        for path in [&self.rows, &self.deletes].into_iter().flatten() {
            if let Err(e) = std::fs::remove_file(path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(file = %path.display(), error = %e, "could not remove a staged file");
            }
        }
    }
}

/// Writes the non-empty `batches` to `path` in the layout `schema`; `None` when there is
/// nothing to write.
fn write_file(
    path: &Path,
    lake: &CatalogTable,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Option<PathBuf>> {
    if batches.iter().all(|b| b.num_rows() == 0) {
        return Ok(None);
    }
    let failed = |message: String| Error::Sink {
        table: lake.to_string(),
        message: format!("stage {}: {message}", path.display()),
        retryable: false,
    };
    let file = File::create(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut writer =
        ArrowWriter::try_new(file, schema.clone(), None).map_err(|e| failed(e.to_string()))?;
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        let shaped = types::to_lake(batch, schema).map_err(failed)?;
        writer.write(&shaped).map_err(|e| failed(e.to_string()))?;
    }
    writer.close().map_err(|e| failed(e.to_string()))?;
    Ok(Some(path.to_path_buf()))
}

/// A name no other staged file of this machine has: process, time and a counter.
fn unique_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes what an earlier process staged for `lake` and never committed (it stopped between
/// staging and the commit): called before this process stages anything for the table.
pub fn remove_orphans(dir: &Path, lake: &CatalogTable) {
    let dir = dir.join(lake.to_string());
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {
            tracing::debug!(table = %lake, dir = %dir.display(), "removed orphan staged files")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(
            table = %lake,
            dir = %dir.display(),
            error = %e,
            "could not remove orphan staged files"
        ),
    }
}
