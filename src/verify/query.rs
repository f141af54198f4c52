//! `lakewriter query "SQL"`: every lake table of the config registered in DataFusion as
//! `namespace.table`, the result streamed to stdout as an aligned table, CSV or JSON lines.

use std::io::Write;

use arrow::array::RecordBatch;
use arrow::util::pretty::pretty_format_batches;
use futures::StreamExt;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::lake;

/// How `query` prints its result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OutputFormat {
    /// An aligned text table.
    #[default]
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON object per line.
    Json,
}

/// Rows an aligned table holds before it is printed; a larger result is printed as several
/// tables of this many rows, so memory stays bounded.
const TABLE_ROWS: usize = 10_000;

/// Runs `sql` over the lake and writes the result to `out`.
pub async fn run(
    config: &Config,
    sql: &str,
    format: OutputFormat,
    out: &mut impl Write,
) -> Result<()> {
    let (ctx, tables) = lake::session(config, None).await?;
    tracing::debug!(tables = tables.len(), "lake tables registered");
    let query_error = |e: datafusion::error::DataFusionError| Error::Sink {
        table: config.sink.namespace.clone(),
        message: format!("query: {e}"),
        retryable: false,
    };
    let frame = ctx.sql(sql).await.map_err(query_error)?;
    let mut stream = frame.execute_stream().await.map_err(query_error)?;
    let mut printer = Printer::new(format);
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(query_error)?;
        printer.push(batch, out)?;
    }
    printer.finish(out)
}

/// Writes batches as they come, in one format.
struct Printer {
    format: OutputFormat,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    printed_any: bool,
    header_written: bool,
}

impl Printer {
    fn new(format: OutputFormat) -> Printer {
        Printer {
            format,
            pending: Vec::new(),
            pending_rows: 0,
            printed_any: false,
            header_written: false,
        }
    }

    fn push(&mut self, batch: RecordBatch, out: &mut impl Write) -> Result<()> {
        match self.format {
            OutputFormat::Table => {
                self.pending_rows += batch.num_rows();
                self.pending.push(batch);
                if self.pending_rows >= TABLE_ROWS {
                    self.flush_table(out)?;
                }
                Ok(())
            }
            OutputFormat::Csv => {
                let mut writer = arrow::csv::WriterBuilder::new()
                    .with_header(!self.header_written)
                    .build(&mut *out);
                writer.write(&batch).map_err(output_error)?;
                self.header_written = true;
                Ok(())
            }
            OutputFormat::Json => {
                let mut writer = arrow::json::LineDelimitedWriter::new(&mut *out);
                writer.write(&batch).map_err(output_error)?;
                writer.finish().map_err(output_error)
            }
        }
    }

    fn flush_table(&mut self, out: &mut impl Write) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let table = pretty_format_batches(&self.pending).map_err(output_error)?;
        writeln!(out, "{table}").map_err(io_error)?;
        self.pending.clear();
        self.pending_rows = 0;
        self.printed_any = true;
        Ok(())
    }

    fn finish(mut self, out: &mut impl Write) -> Result<()> {
        if self.format == OutputFormat::Table {
            self.flush_table(out)?;
            if !self.printed_any {
                writeln!(out, "(no rows)").map_err(io_error)?;
            }
        }
        out.flush().map_err(io_error)
    }
}

fn output_error(e: arrow::error::ArrowError) -> Error {
    Error::Io {
        path: "stdout".into(),
        source: std::io::Error::other(e.to_string()),
    }
}

fn io_error(e: std::io::Error) -> Error {
    Error::Io {
        path: "stdout".into(),
        source: e,
    }
}
