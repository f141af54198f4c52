//! The Parquet files of a commit, written here rather than by iceberg-rust's `ParquetWriter`:
//! that writer derives the Parquet schema from the Iceberg schema without annotating `uuid`
//! columns as Parquet UUIDs, and DuckDB fails on such files. This writer annotates them and
//! computes the Iceberg metrics of each file (sizes, value, null and NaN counts, bounds) from
//! its Parquet footer; it plugs into iceberg's rolling, data and equality-delete writers.
//! A data file's writer can also keep the key columns of the rows it writes, in order
//! ([`KeyCapture`]): the key index then learns each new row's position without reading the
//! file back. A table's data files also learn from each other which columns a Parquet
//! dictionary does not pay for ([`Dictionaries`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use arrow::array::{Array, ArrayRef, Float32Array, Float64Array, RecordBatch};
use arrow::datatypes::SchemaRef as ArrowSchemaRef;
use bytes::Bytes;
use futures::future::BoxFuture;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::io::{FileWrite, OutputFile};
use iceberg::spec::{
    DataContentType, DataFileBuilder, DataFileFormat, Datum, NestedFieldRef, PrimitiveType, Schema,
    Type,
};
use iceberg::writer::CurrentFileStatus;
use iceberg::writer::file_writer::{FileWriter, FileWriterBuilder};
use iceberg::{Error as IcebergError, ErrorKind};
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::arrow::{ArrowSchemaConverter, AsyncArrowWriter};
use parquet::basic::{Encoding, LogicalType, PageType, Type as PhysicalType};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ColumnChunkMetaData, ParquetMetaData};
use parquet::file::properties::WriterProperties;
use parquet::file::statistics::Statistics;
use parquet::schema::types::{ColumnPath, SchemaDescriptor, Type as ParquetType, TypePtr};

/// Bounds longer than this (in characters or bytes) are truncated, as Iceberg's default
/// metrics mode (`truncate(16)`) does, so long text does not bloat the manifests.
const BOUND_LENGTH: usize = 16;

/// An Iceberg column the metrics are collected for.
#[derive(Debug, Clone)]
struct Column {
    primitive: PrimitiveType,
    /// Index of the top-level Arrow column (for NaN counts and bounds); `None` inside a list.
    top_level: Option<usize>,
}

#[derive(Debug)]
struct Shared {
    props: WriterProperties,
    arrow: ArrowSchemaRef,
    parquet: SchemaDescriptor,
    columns: HashMap<i32, Column>,
}

/// The key columns of each written data file's rows, by file path: one entry per batch
/// written, in the order of the rows in the file (the first batch's first row is position 0).
pub(super) type WrittenKeys = HashMap<String, Vec<Vec<ArrayRef>>>;

/// Where data-file writers keep the key columns of the rows they write, for the key index.
#[derive(Debug, Clone)]
pub(super) struct KeyCapture {
    /// The key columns, by name, in the index's order.
    pub names: Vec<String>,
    /// Filled as each file is closed.
    pub into: Arc<Mutex<WrittenKeys>>,
}

/// A [`KeyCapture`] resolved against the written schema.
#[derive(Debug)]
struct Capture {
    /// Top-level column indices of the key columns, in the index's order.
    columns: Vec<usize>,
    into: Arc<Mutex<WrittenKeys>>,
}

/// Every this many files of a table, one is written with a dictionary for every column, to
/// learn again which columns it pays for (a column's values may change).
const RELEARN_EVERY: u64 = 16;

/// A column chunk of fewer values teaches nothing about its column: a few values are too few
/// for a dictionary to pay, whatever the column.
const LEARN_FROM_VALUES: i64 = 10_000;

/// What a table's data files taught about each column's encoding. Parquet's writer
/// dictionary-encodes every column until the dictionary outgrows its page limit: for a column
/// of distinct values (a key, a timestamp) that is a hash lookup and an insert per value for a
/// dictionary larger than the values, or one given up half-way. Like parquet-mr, which drops a
/// dictionary that does not make the first page smaller than plain encoding, the table's next
/// files leave the dictionary out of the columns where a complete file's dictionary did not
/// pay. Shared by the table's writers (one per commit) while the sink runs.
#[derive(Debug, Default)]
pub(super) struct Dictionaries {
    /// Leaf columns written without a dictionary.
    plain: HashSet<ColumnPath>,
    /// Files opened.
    files: u64,
}

/// The [`Dictionaries`] of one table, shared by its writers.
pub(super) type TableDictionaries = Arc<Mutex<Dictionaries>>;

impl Dictionaries {
    /// The properties of the next file, from `base`: whether it relearns (dictionaries
    /// everywhere), and its properties.
    fn next_file(&mut self, base: &WriterProperties) -> (bool, WriterProperties) {
        let relearn = self.files.is_multiple_of(RELEARN_EVERY);
        self.files += 1;
        if relearn || self.plain.is_empty() {
            return (relearn, base.clone());
        }
        let mut builder = base.clone().into_builder();
        for column in &self.plain {
            builder = builder.set_column_dictionary_enabled(column.clone(), false);
        }
        (false, builder.build())
    }

    /// Learns from a complete file: its columns whose dictionary did not pay are written
    /// plain from now on (after a file that relearned: only those).
    fn learn(&mut self, metadata: &ParquetMetaData, relearned: bool) {
        if relearned {
            self.plain.clear();
        }
        for group in metadata.row_groups() {
            for column in group.columns() {
                if column.num_values() >= LEARN_FROM_VALUES && !dictionary_pays(column) {
                    self.plain.insert(column.column_path().clone());
                }
            }
        }
    }

    /// The columns written without a dictionary.
    #[cfg(test)]
    pub fn plain(&self) -> &HashSet<ColumnPath> {
        &self.plain
    }
}

/// Whether a column chunk written with a dictionary is smaller for it: `false` when the
/// writer gave the dictionary up (it outgrew its page) or when dictionary and indices take
/// more bytes than the values plainly encoded. A chunk without a dictionary says nothing.
fn dictionary_pays(column: &ColumnChunkMetaData) -> bool {
    if column.dictionary_page_offset().is_none() {
        return true;
    }
    let dictionary =
        |e: &Encoding| matches!(e, Encoding::PLAIN_DICTIONARY | Encoding::RLE_DICTIONARY);
    let all_pages = match (
        column.page_encoding_stats(),
        column.page_encoding_stats_mask(),
    ) {
        (Some(stats), _) => stats
            .iter()
            .filter(|s| matches!(s.page_type, PageType::DATA_PAGE | PageType::DATA_PAGE_V2))
            .all(|s| dictionary(&s.encoding)),
        (None, Some(mask)) => {
            mask.is_only(Encoding::PLAIN_DICTIONARY) || mask.is_only(Encoding::RLE_DICTIONARY)
        }
        (None, None) => return true,
    };
    if !all_pages {
        return false;
    }
    let values = column.num_values();
    let plain = match column.column_type() {
        PhysicalType::INT32 | PhysicalType::FLOAT => 4 * values,
        PhysicalType::INT64 | PhysicalType::DOUBLE => 8 * values,
        PhysicalType::INT96 => 12 * values,
        PhysicalType::FIXED_LEN_BYTE_ARRAY => {
            i64::from(column.column_descr().type_length()) * values
        }
        PhysicalType::BYTE_ARRAY => match column.unencoded_byte_array_data_bytes() {
            Some(bytes) => bytes + 4 * values,
            None => return true,
        },
        PhysicalType::BOOLEAN => return true,
    };
    column.uncompressed_size() < plain
}

/// Builds a [`ParquetFile`] per output file, for one Iceberg schema (the table's, or an
/// equality-delete file's key columns).
#[derive(Debug, Clone)]
pub(super) struct ParquetFileBuilder {
    shared: Arc<Shared>,
    capture: Option<Arc<Capture>>,
    dictionaries: Option<TableDictionaries>,
}

impl ParquetFileBuilder {
    /// Files of `schema`, written with `props`.
    pub fn new(props: WriterProperties, schema: &Schema) -> iceberg::Result<Self> {
        let arrow = Arc::new(schema_to_arrow_schema(schema)?);
        let mut columns = HashMap::new();
        for (index, field) in schema.as_struct().fields().iter().enumerate() {
            collect_columns(field, Some(index), &mut columns);
        }
        let uuids: HashSet<i32> = columns
            .iter()
            .filter(|(_, c)| c.primitive == PrimitiveType::Uuid)
            .map(|(id, _)| *id)
            .collect();
        let converted = ArrowSchemaConverter::new()
            .convert(&arrow)
            .map_err(|e| parquet_error("convert the schema to Parquet", e))?;
        let root = annotate_uuids(&converted.root_schema_ptr(), &uuids)
            .map_err(|e| parquet_error("annotate uuid columns", e))?;
        Ok(ParquetFileBuilder {
            shared: Arc::new(Shared {
                props,
                arrow,
                parquet: SchemaDescriptor::new(root),
                columns,
            }),
            capture: None,
            dictionaries: None,
        })
    }

    /// Files that leave the dictionary out of the columns `dictionaries` found it does not
    /// pay for, and teach it from each file completed.
    pub fn learning(mut self, dictionaries: Option<TableDictionaries>) -> Self {
        self.dictionaries = dictionaries;
        self
    }

    /// Files that keep their rows' key columns into `keys` when closed. A key column the
    /// schema lacks captures nothing (the index then reads the files back).
    pub fn capturing(mut self, keys: Option<KeyCapture>) -> Self {
        self.capture = keys.and_then(|keys| {
            let columns = keys
                .names
                .iter()
                .map(|name| self.shared.arrow.index_of(name).ok())
                .collect::<Option<Vec<usize>>>()?;
            Some(Arc::new(Capture {
                columns,
                into: keys.into,
            }))
        });
        self
    }
}

fn collect_columns(
    field: &NestedFieldRef,
    top_level: Option<usize>,
    out: &mut HashMap<i32, Column>,
) {
    match field.field_type.as_ref() {
        Type::Primitive(primitive) => {
            out.insert(
                field.id,
                Column {
                    primitive: primitive.clone(),
                    top_level,
                },
            );
        }
        Type::List(list) => collect_columns(&list.element_field, None, out),
        Type::Map(map) => {
            collect_columns(&map.key_field, None, out);
            collect_columns(&map.value_field, None, out);
        }
        Type::Struct(fields) => {
            for f in fields.fields() {
                collect_columns(f, None, out);
            }
        }
    }
}

/// `ty` with the UUID logical type on the 16-byte leaves whose field id is in `uuids`.
fn annotate_uuids(ty: &TypePtr, uuids: &HashSet<i32>) -> parquet::errors::Result<TypePtr> {
    let info = ty.get_basic_info();
    let id = info.has_id().then(|| info.id());
    if ty.is_primitive() {
        if id.is_some_and(|id| uuids.contains(&id))
            && ty.get_physical_type() == PhysicalType::FIXED_LEN_BYTE_ARRAY
        {
            let annotated = ParquetType::primitive_type_builder(
                info.name(),
                PhysicalType::FIXED_LEN_BYTE_ARRAY,
            )
            .with_repetition(info.repetition())
            .with_length(16)
            .with_logical_type(Some(LogicalType::Uuid))
            .with_id(id)
            .build()?;
            return Ok(Arc::new(annotated));
        }
        return Ok(ty.clone());
    }
    let fields = ty
        .get_fields()
        .iter()
        .map(|f| annotate_uuids(f, uuids))
        .collect::<parquet::errors::Result<Vec<_>>>()?;
    if fields
        .iter()
        .zip(ty.get_fields())
        .all(|(a, b)| Arc::ptr_eq(a, b))
    {
        return Ok(ty.clone());
    }
    let mut group = ParquetType::group_type_builder(info.name())
        .with_fields(fields)
        .with_converted_type(info.converted_type())
        .with_logical_type(info.logical_type_ref().cloned())
        .with_id(id);
    if info.has_repetition() {
        group = group.with_repetition(info.repetition());
    }
    Ok(Arc::new(group.build()?))
}

impl FileWriterBuilder for ParquetFileBuilder {
    type R = ParquetFile;

    async fn build(&self, output_file: OutputFile) -> iceberg::Result<ParquetFile> {
        Ok(ParquetFile {
            shared: self.shared.clone(),
            output: output_file,
            writer: None,
            rows: 0,
            nan_counts: HashMap::new(),
            keys: self.capture.clone().map(|c| (c, Vec::new())),
            dictionaries: self.dictionaries.clone().map(|d| (d, false)),
        })
    }
}

/// iceberg's storage writer as the Parquet writer's sink.
struct Upload(Box<dyn FileWrite>);

impl AsyncFileWriter for Upload {
    fn write(&mut self, bytes: Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
        Box::pin(async move {
            self.0
                .write(bytes)
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))
        })
    }

    fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
        Box::pin(async move {
            self.0
                .close()
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))
        })
    }
}

/// One Parquet file being written; closed into its [`DataFileBuilder`] (path, size, metrics).
pub(super) struct ParquetFile {
    shared: Arc<Shared>,
    output: OutputFile,
    /// Opened on the first rows, so a file that gets none is never created.
    writer: Option<AsyncArrowWriter<Upload>>,
    rows: usize,
    nan_counts: HashMap<i32, u64>,
    /// The key columns of each batch written, when capturing.
    keys: Option<(Arc<Capture>, Vec<Vec<ArrayRef>>)>,
    /// The table's dictionaries, and whether this file relearns them.
    dictionaries: Option<(TableDictionaries, bool)>,
}

impl ParquetFile {
    fn count_nans(&mut self, batch: &RecordBatch) {
        for (id, column) in &self.shared.columns {
            let Some(index) = column.top_level else {
                continue;
            };
            let array = batch.column(index);
            let nans = match column.primitive {
                PrimitiveType::Float => array
                    .as_any()
                    .downcast_ref::<Float32Array>()
                    .map(|a| a.iter().flatten().filter(|v| v.is_nan()).count()),
                PrimitiveType::Double => array
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .map(|a| a.iter().flatten().filter(|v| v.is_nan()).count()),
                _ => continue,
            };
            *self.nan_counts.entry(*id).or_default() += nans.unwrap_or(0) as u64;
        }
    }

    /// The file's Iceberg metrics from its footer.
    fn data_file(&self, metadata: &ParquetMetaData, size: u64) -> iceberg::Result<DataFileBuilder> {
        let mut column_sizes: HashMap<i32, u64> = HashMap::new();
        let mut value_counts: HashMap<i32, u64> = HashMap::new();
        let mut null_counts: HashMap<i32, u64> = HashMap::new();
        let mut lower: HashMap<i32, Datum> = HashMap::new();
        let mut upper: HashMap<i32, Datum> = HashMap::new();
        // A metric some row group does not state is unknown for the file.
        let mut unknown_nulls: HashSet<i32> = HashSet::new();
        let mut unbounded: HashSet<i32> = HashSet::new();
        let mut split_offsets = Vec::new();
        for group in metadata.row_groups() {
            if let Some(offset) = group.file_offset() {
                split_offsets.push(offset);
            }
            for chunk in group.columns() {
                let info = chunk.column_descr().self_type().get_basic_info();
                if !info.has_id() {
                    continue;
                }
                let id = info.id();
                *column_sizes.entry(id).or_default() +=
                    u64::try_from(chunk.compressed_size()).unwrap_or(0);
                *value_counts.entry(id).or_default() +=
                    u64::try_from(chunk.num_values()).unwrap_or(0);
                let stats = chunk.statistics();
                match stats.and_then(Statistics::null_count_opt) {
                    Some(n) => *null_counts.entry(id).or_default() += n,
                    None => {
                        unknown_nulls.insert(id);
                    }
                }
                let Some(column) = self.shared.columns.get(&id) else {
                    continue;
                };
                if column.top_level.is_none() {
                    continue;
                }
                let (Some(min), Some(max)) = (
                    stats.and_then(|s| bound(s, &column.primitive, false)),
                    stats.and_then(|s| bound(s, &column.primitive, true)),
                ) else {
                    // All null, or no statistics: a group that says nothing about its values
                    // leaves the file's bounds unknown unless it holds only nulls.
                    let all_null = stats
                        .and_then(Statistics::null_count_opt)
                        .is_some_and(|n| i64::try_from(n).ok() == Some(chunk.num_values()));
                    if !all_null {
                        unbounded.insert(id);
                    }
                    continue;
                };
                let low = lower.entry(id).or_insert_with(|| min.clone());
                if min < *low {
                    *low = min;
                }
                let high = upper.entry(id).or_insert_with(|| max.clone());
                if max > *high {
                    *high = max;
                }
            }
        }
        for id in &unknown_nulls {
            null_counts.remove(id);
        }
        for id in &unbounded {
            lower.remove(id);
            upper.remove(id);
        }
        let lower: HashMap<i32, Datum> = lower
            .into_iter()
            .filter_map(|(id, d)| truncate_lower(d).map(|d| (id, d)))
            .collect();
        let upper: HashMap<i32, Datum> = upper
            .into_iter()
            .filter_map(|(id, d)| truncate_upper(d).map(|d| (id, d)))
            .collect();

        let mut builder = DataFileBuilder::default();
        builder
            .content(DataContentType::Data)
            .file_path(self.output.location().to_string())
            .file_format(DataFileFormat::Parquet)
            .record_count(self.rows as u64)
            .file_size_in_bytes(size)
            .column_sizes(column_sizes)
            .value_counts(value_counts)
            .null_value_counts(null_counts)
            .nan_value_counts(self.nan_counts.clone())
            .lower_bounds(lower)
            .upper_bounds(upper)
            .split_offsets(Some(split_offsets));
        Ok(builder)
    }
}

impl FileWriter for ParquetFile {
    async fn write(&mut self, batch: &RecordBatch) -> iceberg::Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.count_nans(batch);
        if self.writer.is_none() {
            let upload = Upload(self.output.writer().await?);
            let props = match self.dictionaries.as_mut() {
                Some((dictionaries, relearn)) => {
                    let (again, props) = dictionaries
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .next_file(&self.shared.props);
                    *relearn = again;
                    props
                }
                None => self.shared.props.clone(),
            };
            let options = ArrowWriterOptions::new()
                .with_properties(props)
                .with_parquet_schema(self.shared.parquet.clone());
            let writer =
                AsyncArrowWriter::try_new_with_options(upload, self.shared.arrow.clone(), options)
                    .map_err(|e| parquet_error("open the Parquet writer", e))?;
            self.writer = Some(writer);
        }
        if let Some(writer) = self.writer.as_mut() {
            writer
                .write(batch)
                .await
                .map_err(|e| parquet_error("write rows", e))?;
        }
        self.rows += batch.num_rows();
        if let Some((capture, batches)) = self.keys.as_mut() {
            // the arrays share the batch's buffers: only the key columns stay in memory
            batches.push(
                capture
                    .columns
                    .iter()
                    .map(|&c| batch.column(c).clone())
                    .collect(),
            );
        }
        Ok(())
    }

    async fn close(mut self) -> iceberg::Result<Vec<DataFileBuilder>> {
        let Some(mut writer) = self.writer.take() else {
            return Ok(Vec::new());
        };
        let metadata = writer
            .finish()
            .await
            .map_err(|e| parquet_error("finish the file", e))?;
        let size = writer.bytes_written() as u64;
        let file = self.data_file(&metadata, size)?;
        if let Some((dictionaries, relearned)) = &self.dictionaries {
            dictionaries
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .learn(&metadata, *relearned);
        }
        // kept only once the file is complete: a file that failed is never committed
        if let Some((capture, batches)) = self.keys.take() {
            capture
                .into
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(self.output.location().to_string(), batches);
        }
        Ok(vec![file])
    }
}

impl CurrentFileStatus for ParquetFile {
    fn current_file_path(&self) -> String {
        self.output.location().to_string()
    }

    fn current_row_num(&self) -> usize {
        self.rows
    }

    fn current_written_size(&self) -> usize {
        self.writer
            .as_ref()
            .map(|w| w.bytes_written() + w.in_progress_size())
            .unwrap_or(0)
    }
}

fn parquet_error(context: &str, e: ParquetError) -> IcebergError {
    IcebergError::new(ErrorKind::Unexpected, format!("parquet: {context}")).with_source(e)
}

/// The lower (`max` false) or upper bound a column chunk's statistics give, as a datum of the
/// column's Iceberg type.
fn bound(stats: &Statistics, primitive: &PrimitiveType, max: bool) -> Option<Datum> {
    fn pick<T>(s: &parquet::file::statistics::ValueStatistics<T>, max: bool) -> Option<&T> {
        if max { s.max_opt() } else { s.min_opt() }
    }
    let decimal =
        |unscaled: i128| Datum::try_from_bytes(&unscaled.to_be_bytes(), primitive.clone()).ok();
    match (primitive, stats) {
        (PrimitiveType::Boolean, Statistics::Boolean(s)) => pick(s, max).map(|v| Datum::bool(*v)),
        (PrimitiveType::Int, Statistics::Int32(s)) => pick(s, max).map(|v| Datum::int(*v)),
        (PrimitiveType::Date, Statistics::Int32(s)) => pick(s, max).map(|v| Datum::date(*v)),
        (PrimitiveType::Long, Statistics::Int64(s)) => pick(s, max).map(|v| Datum::long(*v)),
        (PrimitiveType::Time, Statistics::Int64(s)) => {
            pick(s, max).and_then(|v| Datum::time_micros(*v).ok())
        }
        (PrimitiveType::Timestamp, Statistics::Int64(s)) => {
            pick(s, max).map(|v| Datum::timestamp_micros(*v))
        }
        (PrimitiveType::Timestamptz, Statistics::Int64(s)) => {
            pick(s, max).map(|v| Datum::timestamptz_micros(*v))
        }
        (PrimitiveType::Float, Statistics::Float(s)) => pick(s, max)
            .filter(|v| !v.is_nan())
            .map(|v| Datum::float(*v)),
        (PrimitiveType::Double, Statistics::Double(s)) => pick(s, max)
            .filter(|v| !v.is_nan())
            .map(|v| Datum::double(*v)),
        (PrimitiveType::Decimal { .. }, Statistics::Int32(s)) => {
            pick(s, max).and_then(|v| decimal(i128::from(*v)))
        }
        (PrimitiveType::Decimal { .. }, Statistics::Int64(s)) => {
            pick(s, max).and_then(|v| decimal(i128::from(*v)))
        }
        (PrimitiveType::Decimal { .. }, Statistics::FixedLenByteArray(s)) => {
            pick(s, max).and_then(|v| Datum::try_from_bytes(v.data(), primitive.clone()).ok())
        }
        (PrimitiveType::String, Statistics::ByteArray(s)) => pick(s, max)
            .and_then(|v| std::str::from_utf8(v.data()).ok())
            .map(Datum::string),
        (PrimitiveType::Binary, Statistics::ByteArray(s)) => {
            pick(s, max).map(|v| Datum::binary(v.data().iter().copied()))
        }
        (PrimitiveType::Uuid, Statistics::FixedLenByteArray(s)) => {
            pick(s, max).and_then(|v| Datum::try_from_bytes(v.data(), PrimitiveType::Uuid).ok())
        }
        (PrimitiveType::Fixed(_), Statistics::FixedLenByteArray(s)) => {
            pick(s, max).map(|v| Datum::fixed(v.data().iter().copied()))
        }
        _ => None,
    }
}

/// A lower bound no longer than [`BOUND_LENGTH`]: a prefix is still a lower bound.
fn truncate_lower(datum: Datum) -> Option<Datum> {
    match datum.data_type() {
        PrimitiveType::String => {
            let text = datum.to_human_string();
            if text.chars().count() <= BOUND_LENGTH {
                return Some(datum);
            }
            Some(Datum::string(
                text.chars().take(BOUND_LENGTH).collect::<String>(),
            ))
        }
        PrimitiveType::Binary => {
            let bytes = datum_bytes(&datum)?;
            if bytes.len() <= BOUND_LENGTH {
                return Some(datum);
            }
            Some(Datum::binary(bytes[..BOUND_LENGTH].iter().copied()))
        }
        _ => Some(datum),
    }
}

/// An upper bound no longer than [`BOUND_LENGTH`]: the prefix with its last character (or
/// byte) that can grow incremented; `None` when none can (no bound is then recorded).
fn truncate_upper(datum: Datum) -> Option<Datum> {
    match datum.data_type() {
        PrimitiveType::String => {
            let text = datum.to_human_string();
            if text.chars().count() <= BOUND_LENGTH {
                return Some(datum);
            }
            let mut chars: Vec<char> = text.chars().take(BOUND_LENGTH).collect();
            while let Some(last) = chars.pop() {
                let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
                if let Some(next) = next {
                    chars.push(next);
                    return Some(Datum::string(chars.into_iter().collect::<String>()));
                }
            }
            None
        }
        PrimitiveType::Binary => {
            let bytes = datum_bytes(&datum)?;
            if bytes.len() <= BOUND_LENGTH {
                return Some(datum);
            }
            let mut prefix = bytes[..BOUND_LENGTH].to_vec();
            while let Some(last) = prefix.pop() {
                if last < u8::MAX {
                    prefix.push(last + 1);
                    return Some(Datum::binary(prefix));
                }
            }
            None
        }
        _ => Some(datum),
    }
}

fn datum_bytes(datum: &Datum) -> Option<Vec<u8>> {
    match datum.literal() {
        iceberg::spec::PrimitiveLiteral::Binary(bytes) => Some(bytes.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table's second data file leaves the dictionary out of the columns of distinct values
    /// the first file's dictionary did not pay for, keeps it for a column of few values, and
    /// holds the same values; every 16th file writes dictionaries everywhere again.
    #[tokio::test]
    async fn columns_whose_dictionary_did_not_pay_are_written_plain_in_the_next_files() {
        use arrow::array::{Int32Array, Int64Array, StringArray};
        use iceberg::spec::NestedField;
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

        let dir = tempfile::tempdir().expect("a temporary directory");
        let schema = Schema::builder()
            .with_fields([
                NestedField::required(1, "id", Type::Primitive(PrimitiveType::Long)).into(),
                NestedField::required(2, "customer", Type::Primitive(PrimitiveType::Int)).into(),
                NestedField::optional(3, "note", Type::Primitive(PrimitiveType::String)).into(),
            ])
            .build()
            .expect("a valid schema");
        let metadata = super::super::table::new_table_metadata(
            &dir.path().display().to_string(),
            schema,
            &crate::sink::TableLayout {
                key: vec!["id".to_string()],
                partition_by: Vec::new(),
            },
            iceberg::spec::FormatVersion::V2,
        )
        .expect("a valid table");
        let arrow =
            Arc::new(schema_to_arrow_schema(metadata.current_schema()).expect("an Arrow schema"));
        let file_io = iceberg::io::FileIO::new_with_fs();
        let dictionaries = TableDictionaries::default();
        let batch = |first: i64| {
            let ids: Vec<i64> = (first..first + 20_000).collect();
            RecordBatch::try_new(
                arrow.clone(),
                vec![
                    Arc::new(Int64Array::from(ids.clone())) as ArrayRef,
                    Arc::new(Int32Array::from_iter_values(
                        ids.iter().map(|i| (i % 10) as i32),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        ids.iter().map(|i| format!("note {i}")),
                    )),
                ],
            )
            .expect("a batch")
        };
        let mut files = Vec::new();
        for commit in 0..2 {
            let writer = super::super::files::FileWriter {
                file_io: &file_io,
                metadata: &metadata,
                target_file_size: 512 << 20,
                commit_id: &format!("test{commit}"),
                keys: None,
                dictionaries: Some(dictionaries.clone()),
            };
            let written = writer
                .write_rows(vec![batch(commit * 20_000)])
                .await
                .expect("written");
            files.extend(written.iter().map(|f| f.file_path().to_string()));
        }
        let plain: HashSet<String> = dictionaries
            .lock()
            .expect("not poisoned")
            .plain()
            .iter()
            .map(|c| c.string())
            .collect();
        assert_eq!(plain, HashSet::from(["id".to_string(), "note".to_string()]));

        let with_dictionary = |path: &str| -> Vec<(String, bool)> {
            let file = std::fs::File::open(path).expect("the file");
            let reader = ParquetRecordBatchReaderBuilder::try_new(file).expect("a reader");
            reader.metadata().row_groups()[0]
                .columns()
                .iter()
                .map(|c| {
                    (
                        c.column_path().string(),
                        c.dictionary_page_offset().is_some(),
                    )
                })
                .collect()
        };
        let read = |path: &str| -> Vec<RecordBatch> {
            let file = std::fs::File::open(path).expect("the file");
            ParquetRecordBatchReaderBuilder::try_new(file)
                .expect("a reader")
                .build()
                .expect("a reader")
                .collect::<Result<_, _>>()
                .expect("read")
        };
        let everywhere = vec![
            ("id".to_string(), true),
            ("customer".to_string(), true),
            ("note".to_string(), true),
        ];
        assert_eq!(with_dictionary(&files[0]), everywhere);
        assert_eq!(
            with_dictionary(&files[1]),
            vec![
                ("id".to_string(), false),
                ("customer".to_string(), true),
                ("note".to_string(), false),
            ]
        );
        for (n, path) in files.iter().enumerate() {
            let expected = batch(n as i64 * 20_000);
            let rows = read(path);
            let got = arrow::compute::concat_batches(&rows[0].schema(), &rows).expect("concat");
            for c in 0..3 {
                assert_eq!(
                    got.column(c).as_ref(),
                    expected.column(c).as_ref(),
                    "{path}"
                );
            }
        }

        // the 17th file relearns: dictionaries everywhere, and only what it finds stays plain
        let mut learned = dictionaries.lock().expect("not poisoned");
        learned.files = RELEARN_EVERY;
        let base = WriterProperties::default();
        let (relearn, props) = learned.next_file(&base);
        assert!(relearn);
        assert!(props.dictionary_enabled(&ColumnPath::from("id")));
        let (relearn, props) = learned.next_file(&base);
        assert!(!relearn);
        assert!(!props.dictionary_enabled(&ColumnPath::from("id")));
        assert!(props.dictionary_enabled(&ColumnPath::from("customer")));
    }

    #[test]
    fn long_bounds_are_truncated_and_stay_bounds() {
        let long = "abcdefghijklmnopqrstuvwxyz";
        let low = truncate_lower(Datum::string(long)).expect("a lower bound");
        assert_eq!(low, Datum::string("abcdefghijklmnop"));
        assert!(low <= Datum::string(long));
        let high = truncate_upper(Datum::string(long)).expect("an upper bound");
        assert_eq!(high, Datum::string("abcdefghijklmnoq"));
        assert!(high >= Datum::string(long));
        assert_eq!(
            truncate_upper(Datum::string("short")),
            Some(Datum::string("short"))
        );
        assert_eq!(truncate_upper(Datum::binary(vec![0xFF; 20])), None);
        assert_eq!(
            truncate_upper(Datum::binary([vec![1; 16], vec![0xFF; 4]].concat())),
            Some(Datum::binary([vec![1; 15], vec![2]].concat()))
        );
    }

    #[test]
    fn uuid_columns_are_annotated_in_the_parquet_schema() {
        use iceberg::spec::{ListType, NestedField};
        let schema = Schema::builder()
            .with_fields(vec![
                Arc::new(NestedField::required(
                    1,
                    "id",
                    Type::Primitive(PrimitiveType::Uuid),
                )),
                Arc::new(NestedField::optional(
                    2,
                    "refs",
                    Type::List(ListType::new(Arc::new(NestedField::list_element(
                        3,
                        Type::Primitive(PrimitiveType::Uuid),
                        false,
                    )))),
                )),
                Arc::new(NestedField::optional(
                    4,
                    "name",
                    Type::Primitive(PrimitiveType::String),
                )),
            ])
            .build()
            .expect("a schema");
        let builder =
            ParquetFileBuilder::new(WriterProperties::default(), &schema).expect("a builder");
        let parquet = &builder.shared.parquet;
        let logical: Vec<(i32, Option<LogicalType>)> = parquet
            .columns()
            .iter()
            .map(|c| {
                (
                    c.self_type().get_basic_info().id(),
                    c.logical_type_ref().cloned(),
                )
            })
            .collect();
        assert_eq!(
            logical,
            vec![
                (1, Some(LogicalType::Uuid)),
                (3, Some(LogicalType::Uuid)),
                (4, Some(LogicalType::String)),
            ]
        );
    }
}
