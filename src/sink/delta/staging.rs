//! Parts of a source transaction too large for memory, staged as local files (already in the
//! table's lake layout) until the transaction's single commit reads them as part of its MERGE
//! source. They never enter the table by themselves: after a crash they are orphan files of a
//! local directory, which the next part of the same name never reuses.
//!
//! A staged part is plain row data on local disk, so it is sealed as spill files are
//! ([`Sealer`]: Arrow IPC encrypted with a key held in this process's memory only), and its
//! commit streams it back through a [`StreamingTable`], decrypting as it reads: a part never
//! has to fit in memory, and what a crash leaves on disk is unreadable.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;

use super::types;
use crate::catalog::CatalogTable;
use crate::error::{Error, Result};
use crate::pipeline::sealed::Sealer;

/// One staged file: where it is and the layout its rows have.
#[derive(Debug, Clone)]
pub struct StagedFile {
    /// The sealed Arrow IPC file.
    pub path: PathBuf,
    /// The lake layout of when it was staged (older than the table's when a column was added
    /// since).
    pub schema: SchemaRef,
}

/// One staged part: its rows and deletes files (absent when it had none).
#[derive(Debug)]
pub struct StagedPart {
    /// Rows to add, in the lake layout of when they were staged.
    pub rows: Option<StagedFile>,
    /// Old rows whose keys go, in the same layout.
    pub deletes: Option<StagedFile>,
}

impl StagedPart {
    /// Writes `rows` and `deletes` (source layout) into files under `dir`, shaped as
    /// `lake_schema` and sealed by `sealer`.
    pub fn write(
        dir: &Path,
        sealer: &Arc<Sealer>,
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
        let file = |kind: &str, batches: &[RecordBatch]| {
            write_file(
                &dir.join(format!("{id}-{kind}.arrow")),
                sealer,
                lake,
                lake_schema,
                batches,
            )
        };
        let rows = file("rows", rows)?;
        let deletes = match file("deletes", deletes) {
            Ok(deletes) => deletes,
            Err(e) => {
                StagedPart {
                    rows,
                    deletes: None,
                }
                .remove();
                return Err(e);
            }
        };
        Ok(StagedPart { rows, deletes })
    }

    /// Removes the part's files (a file already gone is fine).
    pub fn remove(&self) {
        for file in [&self.rows, &self.deletes].into_iter().flatten() {
            if let Err(e) = std::fs::remove_file(&file.path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(file = %file.path.display(), error = %e, "could not remove a staged file");
            }
        }
    }
}

impl StagedFile {
    /// The file as a table the commit's MERGE reads: each scan streams it from disk again,
    /// decrypted by `sealer` batch by batch.
    pub fn table(&self, sealer: &Arc<Sealer>) -> datafusion::error::Result<Arc<StreamingTable>> {
        let stream = SealedStream {
            file: self.clone(),
            sealer: sealer.clone(),
        };
        Ok(Arc::new(StreamingTable::try_new(
            self.schema.clone(),
            vec![Arc::new(stream)],
        )?))
    }
}

/// A staged file read back, decrypted, on a blocking thread.
#[derive(Debug)]
struct SealedStream {
    file: StagedFile,
    sealer: Arc<Sealer>,
}

impl PartitionStream for SealedStream {
    fn schema(&self) -> &SchemaRef {
        &self.file.schema
    }

    fn execute(&self, _context: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (sender, receiver) = tokio::sync::mpsc::channel(2);
        let (path, sealer) = (self.file.path.clone(), self.sealer.clone());
        tokio::task::spawn_blocking(move || {
            let failed = |e: String| {
                DataFusionError::Execution(format!("read staged part {}: {e}", path.display()))
            };
            let read = || -> std::result::Result<(), DataFusionError> {
                let file = File::open(&path).map_err(|e| failed(e.to_string()))?;
                let sealed = sealer
                    .reader(BufReader::new(file))
                    .map_err(|e| failed(e.to_string()))?;
                let reader = FileReader::try_new(BufReader::new(sealed), None)
                    .map_err(|e| failed(e.to_string()))?;
                for batch in reader {
                    let batch = batch.map_err(|e| failed(e.to_string()));
                    if sender.blocking_send(batch).is_err() {
                        break; // the scan was dropped
                    }
                }
                Ok(())
            };
            if let Err(e) = read() {
                let _ = sender.blocking_send(Err(e));
            }
        });
        let batches = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|batch| (batch, receiver))
        });
        Box::pin(RecordBatchStreamAdapter::new(
            self.file.schema.clone(),
            batches,
        ))
    }
}

/// Writes the non-empty `batches` to `path` in the layout `schema`, sealed; `None` when there
/// is nothing to write.
fn write_file(
    path: &Path,
    sealer: &Arc<Sealer>,
    lake: &CatalogTable,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Option<StagedFile>> {
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
    let written = (|| {
        let mut writer = FileWriter::try_new(BufWriter::new(sealer.writer(file)), schema)
            .map_err(|e| failed(e.to_string()))?;
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            let shaped = types::to_lake(batch, schema).map_err(failed)?;
            writer.write(&shaped).map_err(|e| failed(e.to_string()))?;
        }
        writer.finish().map_err(|e| failed(e.to_string()))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(Some(StagedFile {
        path: path.to_path_buf(),
        schema: schema.clone(),
    }))
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
