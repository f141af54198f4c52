//! Writing a commit's files: rows as Parquet data files and deleted keys as equality-delete
//! files, split by the table's partition spec (a delete goes to the partition of the old row)
//! and rolled at the target size — iceberg's writer layers, fed batches conformed to the lake
//! table's layout.

use std::fmt;
use std::sync::{Mutex, PoisonError};

use arrow::array::{RecordBatch, RecordBatchOptions, new_null_array};
use arrow::compute::cast;
use arrow::datatypes::SchemaRef as ArrowSchemaRef;
use iceberg::arrow::RecordBatchPartitionSplitter;
use iceberg::io::FileIO;
use iceberg::spec::{DataFile, DataFileFormat, PartitionSpecRef, Schema, SchemaRef, TableMetadata};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::base_writer::equality_delete_writer::{
    EqualityDeleteFileWriterBuilder, EqualityDeleteWriterConfig,
};
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::partitioning::PartitioningWriter;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::parquet::{KeyCapture, ParquetFileBuilder, TableDictionaries};

/// Where and how a commit writes its files.
pub(super) struct FileWriter<'a> {
    /// The table's storage.
    pub file_io: &'a FileIO,
    /// The table as the files are written against it (schema, default spec, properties).
    pub metadata: &'a TableMetadata,
    /// Size a file is rolled at.
    pub target_file_size: usize,
    /// A name unique to this commit, prefixed to every file it writes.
    pub commit_id: &'a str,
    /// Where data files keep their rows' key columns for the key index, if anywhere.
    pub keys: Option<KeyCapture>,
    /// What the table's data files learned about dictionary encoding, if kept.
    pub dictionaries: Option<TableDictionaries>,
}

impl FileWriter<'_> {
    /// Writes `batches` (in the lake layout, [`conform`]ed) as data files.
    pub async fn write_rows(&self, batches: Vec<RecordBatch>) -> iceberg::Result<Vec<DataFile>> {
        let mut writer = self.open_rows().await?;
        for batch in &batches {
            writer.write(batch).await?;
        }
        writer.close().await
    }

    /// A data-file writer to feed batches (in the lake layout, [`conform`]ed) over several
    /// calls.
    pub async fn open_rows(&self) -> iceberg::Result<OpenRows> {
        let schema = self.metadata.current_schema().clone();
        let parquet = ParquetFileBuilder::new(self.writer_properties(), &schema)?
            .capturing(self.keys.clone())
            .learning(self.dictionaries.clone());
        let builder = DataFileWriterBuilder::new(self.rolling(parquet, "data")?);
        Ok(OpenRows {
            writer: Mutex::new(Partitioned::new(builder, self.metadata, &schema).await?),
            schema_id: schema.schema_id(),
        })
    }

    /// Writes the key columns (`equality_ids`) of `batches` (old rows in the lake layout) as
    /// equality-delete files, each in the partition of its old row.
    pub async fn write_deletes(
        &self,
        batches: Vec<RecordBatch>,
        equality_ids: Vec<i32>,
    ) -> iceberg::Result<Vec<DataFile>> {
        let schema = self.metadata.current_schema().clone();
        // The key columns with their table types: a schema derived back from Arrow would turn
        // a uuid key into fixed[16], which readers then fail to compare with the data.
        let key_fields = equality_ids
            .iter()
            .map(|id| {
                schema.field_by_id(*id).cloned().ok_or_else(|| {
                    iceberg::Error::new(
                        iceberg::ErrorKind::DataInvalid,
                        format!("equality field id {id} is not in the table's schema"),
                    )
                })
            })
            .collect::<iceberg::Result<Vec<_>>>()?;
        let delete_schema = Schema::builder().with_fields(key_fields).build()?;
        let config = EqualityDeleteWriterConfig::new(equality_ids, schema.clone())?;
        let parquet = ParquetFileBuilder::new(self.writer_properties(), &delete_schema)?;
        let builder =
            EqualityDeleteFileWriterBuilder::new(self.rolling(parquet, "delete")?, config);
        write_partitioned(builder, self.metadata, &schema, batches).await
    }

    fn rolling(
        &self,
        parquet: ParquetFileBuilder,
        kind: &str,
    ) -> iceberg::Result<
        RollingFileWriterBuilder<
            ParquetFileBuilder,
            DefaultLocationGenerator,
            DefaultFileNameGenerator,
        >,
    > {
        Ok(RollingFileWriterBuilder::new(
            parquet,
            self.target_file_size,
            self.file_io.clone(),
            DefaultLocationGenerator::new(self.metadata)?,
            DefaultFileNameGenerator::new(
                format!("{}-{kind}", self.commit_id),
                None,
                DataFileFormat::Parquet,
            ),
        ))
    }

    /// Parquet settings from the table's properties: the codec other writers of the table use
    /// (zstd unless the table says otherwise).
    fn writer_properties(&self) -> WriterProperties {
        let properties = self.metadata.properties();
        let level = properties
            .get("write.parquet.compression-level")
            .and_then(|l| l.parse::<i32>().ok());
        let codec = properties
            .get("write.parquet.compression-codec")
            .map(|c| c.to_ascii_lowercase());
        let compression = match codec.as_deref() {
            Some("uncompressed" | "none") => Compression::UNCOMPRESSED,
            Some("snappy") => Compression::SNAPPY,
            Some("gzip") => Compression::GZIP(
                level
                    .and_then(|l| GzipLevel::try_new(u32::try_from(l).ok()?).ok())
                    .unwrap_or_default(),
            ),
            _ => Compression::ZSTD(
                level
                    .and_then(|l| ZstdLevel::try_new(l).ok())
                    .unwrap_or_default(),
            ),
        };
        WriterProperties::builder()
            .set_compression(compression)
            .build()
    }
}

/// Writes `batches` through writers built by `builder`: one writer when the table is
/// unpartitioned, else one per partition value, each batch split by the default spec.
async fn write_partitioned<B: IcebergWriterBuilder>(
    builder: B,
    metadata: &TableMetadata,
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
) -> iceberg::Result<Vec<DataFile>> {
    let mut writer = Partitioned::new(builder, metadata, schema).await?;
    for batch in &batches {
        writer.write(batch).await?;
    }
    writer.close().await
}

/// The data-file writer of a table, kept open from one staged part to the next so the parts
/// of a large transaction (or an initial snapshot's batches) fill files of the target size
/// while the next rows are still being read, instead of a few small files per part.
pub(super) struct OpenRows {
    /// Never locked: only reached through `&mut self` (`get_mut`), the mutex makes the sink
    /// `Sync` although a file upload is not.
    writer: Mutex<Partitioned<RowsBuilder>>,
    /// The schema the files are written in: a schema change closes the writer first.
    pub schema_id: i32,
}

impl OpenRows {
    /// Writes `batch` (in the lake layout, [`conform`]ed).
    pub async fn write(&mut self, batch: &RecordBatch) -> iceberg::Result<()> {
        self.writer
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .write(batch)
            .await
    }

    /// Closes the last files and returns every file written.
    pub async fn close(self) -> iceberg::Result<Vec<DataFile>> {
        self.writer
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .close()
            .await
    }
}

impl fmt::Debug for OpenRows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenRows")
            .field("schema_id", &self.schema_id)
            .finish()
    }
}

type RowsBuilder =
    DataFileWriterBuilder<ParquetFileBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>;

/// One writer for an unpartitioned table, one per partition value otherwise.
enum Partitioned<B: IcebergWriterBuilder> {
    Plain(B::R),
    Fanout(Box<Fanout<B>>),
}

struct Fanout<B: IcebergWriterBuilder> {
    writer: FanoutWriter<B>,
    splitter: RecordBatchPartitionSplitter,
}

impl<B: IcebergWriterBuilder> Partitioned<B> {
    async fn new(
        builder: B,
        metadata: &TableMetadata,
        schema: &SchemaRef,
    ) -> iceberg::Result<Self> {
        let spec: PartitionSpecRef = metadata.default_partition_spec().clone();
        if spec.is_unpartitioned() {
            return Ok(Partitioned::Plain(builder.build(None).await?));
        }
        Ok(Partitioned::Fanout(Box::new(Fanout {
            writer: FanoutWriter::new(builder),
            splitter: RecordBatchPartitionSplitter::try_new_with_computed_values(
                schema.clone(),
                spec,
            )?,
        })))
    }

    /// Writes `batch`, in slices: the rolling writer checks the file size between writes, so
    /// files roll near the target size.
    async fn write(&mut self, batch: &RecordBatch) -> iceberg::Result<()> {
        for offset in (0..batch.num_rows()).step_by(ROWS_PER_WRITE) {
            let slice = batch.slice(offset, ROWS_PER_WRITE.min(batch.num_rows() - offset));
            match self {
                Partitioned::Plain(writer) => writer.write(slice).await?,
                Partitioned::Fanout(fanout) => {
                    for (key, part) in fanout.splitter.split(&slice)? {
                        fanout.writer.write(key, part).await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn close(self) -> iceberg::Result<Vec<DataFile>> {
        match self {
            Partitioned::Plain(mut writer) => writer.close().await,
            Partitioned::Fanout(fanout) => fanout.writer.close().await,
        }
    }
}

/// Rows handed to a file writer at once.
const ROWS_PER_WRITE: usize = 8192;

/// `batch` in the lake table's layout `lake` (the Arrow schema of its current Iceberg
/// schema): columns matched by name and cast where the lake type differs (a widened column, a
/// list's element field, binary as large binary); columns the source no longer has are
/// null. Fails, naming the column, when a value does not fit or a required (key) column is
/// null.
pub(crate) fn conform(batch: &RecordBatch, lake: &ArrowSchemaRef) -> Result<RecordBatch, String> {
    let rows = batch.num_rows();
    let mut columns = Vec::with_capacity(lake.fields().len());
    for field in lake.fields() {
        let column = match batch.column_by_name(field.name()) {
            None => new_null_array(field.data_type(), rows),
            Some(column) if column.data_type() == field.data_type() => column.clone(),
            Some(column) => cast(column, field.data_type()).map_err(|e| {
                format!(
                    "column {}: cannot write {} values as {}: {e}",
                    field.name(),
                    column.data_type(),
                    field.data_type()
                )
            })?,
        };
        if !field.is_nullable() && column.null_count() > 0 {
            return Err(format!(
                "column {} is a key column (required in the lake) but {} of {rows} rows have \
                 no value",
                field.name(),
                column.null_count()
            ));
        }
        columns.push(column);
    }
    RecordBatch::try_new_with_options(
        lake.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )
    .map_err(|e| format!("rows do not fit the lake table's layout: {e}"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, Int32Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn conform_matches_by_name_casts_and_fills_dropped_columns() {
        let source = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("id", DataType::Int32, true),
        ]));
        let batch = RecordBatch::try_new(
            source,
            vec![
                Arc::new(StringArray::from(vec![Some("a"), None])),
                Arc::new(Int32Array::from(vec![1, 2])),
            ],
        )
        .expect("a batch");
        let lake = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("gone", DataType::Utf8, true),
        ]));
        let conformed = conform(&batch, &lake).expect("fits");
        let ids = conformed
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("widened");
        assert_eq!(ids.values(), &[1, 2]);
        assert_eq!(conformed.column(2).null_count(), 2);

        let keyless = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, true)])),
            vec![Arc::new(Int32Array::from(vec![Some(1), None]))],
        )
        .expect("a batch");
        let error = conform(&keyless, &lake).expect_err("a null key");
        assert!(error.contains("column id"), "{error}");
    }
}
