//! The configuration: one TOML file, typed here, every option documented where it is declared
//! with its default. Unknown keys are errors that name the key and the file;
//! `LAKEWRITER__SECTION__KEY` environment variables override the file; secrets never print.
//!
//! `catalogs/` in the repository holds a ready profile for each catalog.

mod encryption;
mod masking;
mod overrides;
mod pattern;
mod units;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use encryption::ServerSideEncryption;
pub use masking::{ColumnPolicy, MaskingConfig, key_policy_refused};
pub use pattern::TablePattern;
pub use units::{ByteSize, Secret, Span};

use crate::error::{Error, Result};

/// The prefix of environment variables that override the file: `LAKEWRITER__FLUSH__MAX_ROWS=10`
/// sets `max_rows` in `[flush]`. Nested sections add segments:
/// `LAKEWRITER__SINK__GLUE__REGION=eu-west-1`.
pub const ENV_PREFIX: &str = "LAKEWRITER__";

/// The whole configuration of one pipeline.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The PostgreSQL database to replicate. Required.
    pub source: SourceConfig,
    /// Where and how the lake tables are written. Default: Iceberg tables in `./warehouse`
    /// with the local SQLite catalog.
    #[serde(default)]
    pub sink: SinkConfig,
    /// When buffered changes are committed to the lake.
    #[serde(default)]
    pub flush: FlushConfig,
    /// Table maintenance (`lakewriter compact`, and its schedule inside `run`).
    #[serde(default)]
    pub compaction: CompactionConfig,
    /// Progress reporting and metrics.
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// `[source]`: the PostgreSQL connection, the publication and slot, which tables to copy.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Host name or IP address of the server. Default: `"127.0.0.1"`.
    #[serde(default = "defaults::host")]
    pub host: String,
    /// Port. Default: `5432`.
    #[serde(default = "defaults::port")]
    pub port: u16,
    /// Database name. Required.
    pub database: String,
    /// Role to connect as; it needs the REPLICATION attribute and SELECT on the replicated
    /// tables (`sql/setup.sql` creates one). Default: `"lakewriter"`.
    #[serde(default = "defaults::user")]
    pub user: String,
    /// Password of that role. Default: empty (trust or peer authentication). Prefer setting it
    /// with `LAKEWRITER__SOURCE__PASSWORD` over writing it in the file. Never printed.
    #[serde(default)]
    pub password: Secret,
    /// TLS to the server, as libpq's `sslmode`: `disable`, `prefer` (when the server offers
    /// it, certificate unchecked), `require` (certificate unchecked), `verify-ca` or
    /// `verify-full` (the certificate must chain to `sslrootcert` and, for `verify-full`, name
    /// `host`). Default: `"prefer"`.
    #[serde(default)]
    pub sslmode: crate::source::tls::SslMode,
    /// PEM file of the certificates trusted for `verify-ca` and `verify-full` (for Amazon RDS,
    /// its regional bundle). Default: the Mozilla root set.
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// PEM file of a client certificate to show the server, for `cert` authentication in
    /// `pg_hba.conf`; goes with `sslkey`. Default: none.
    #[serde(default)]
    pub sslcert: Option<PathBuf>,
    /// PEM file of that certificate's private key. Default: none.
    #[serde(default)]
    pub sslkey: Option<PathBuf>,
    /// How long to wait for a connection. Default: `"10s"`.
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: Span,
    /// Publication to stream. Default: `"lakewriter"`.
    #[serde(default = "defaults::publication")]
    pub publication: String,
    /// Logical replication slot (pgoutput). Default: `"lakewriter"`.
    #[serde(default = "defaults::slot")]
    pub slot: String,
    /// Create the publication (for the included tables) when it is missing. Needs ownership of
    /// the tables. When false, a missing publication is an error. Default: `false`.
    #[serde(default)]
    pub create_publication: bool,
    /// Create the replication slot when it is missing. When false, a missing slot is an error.
    /// Default: `true`.
    #[serde(default = "defaults::yes")]
    pub create_slot: bool,
    /// Tables to replicate, as `schema.table` patterns where `*` matches any run of characters
    /// (like DMS table mappings). A table must also be in the publication. Default:
    /// `["public.*"]`.
    #[serde(default = "defaults::include")]
    pub include: Vec<TablePattern>,
    /// Tables to leave out, as patterns; exclusion wins over inclusion. Default: `[]`.
    #[serde(default)]
    pub exclude: Vec<TablePattern>,
    /// Copy each table's existing rows before streaming (tables already in the lake are not
    /// copied again). Default: `true`.
    #[serde(default = "defaults::yes")]
    pub initial_snapshot: bool,
    /// How many COPY streams one large table's snapshot uses at once, and how many key
    /// ranges (each read on its own connection) a table copied in chunks beside the stream is
    /// split into when it holds two chunks or more per range. Default: `2`.
    #[serde(default = "defaults::snapshot_parallelism")]
    pub snapshot_parallelism: usize,
    /// Rows per chunk when a table that joins the publication while `run` streams is copied
    /// in key-ordered chunks beside the stream. Each chunk is held in memory until its rows
    /// are in the table's buffer. Default: `100000`.
    #[serde(default = "defaults::snapshot_chunk_rows")]
    pub snapshot_chunk_rows: u64,
    /// How the first start (or a start after the slot was lost) copies a table that has a key
    /// of NOT NULL columns: in one exported snapshot before the stream starts, or in chunks
    /// beside the stream, which a restart resumes. Default: `snapshot`.
    #[serde(default)]
    pub initial_copy: InitialCopy,
    /// Per-table settings, keyed by `schema.table`:
    /// `[source.tables."public.orders"] key = ["order_id"], mode = "changelog"`.
    #[serde(default)]
    pub tables: BTreeMap<String, SourceTableConfig>,
}

/// `[source.tables."schema.table"]`: one table's overrides.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceTableConfig {
    /// Columns that identify a row, instead of the primary key or replica identity index
    /// (for tables without one; they must be unique and must be sent in the old tuple, so the
    /// table needs `REPLICA IDENTITY FULL`). Default: the table's replica identity.
    #[serde(default)]
    pub key: Option<Vec<String>>,
    /// How changes are written. Default: `"upsert"`.
    #[serde(default)]
    pub mode: TableMode,
}

/// How a table's changes land in the lake.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TableMode {
    /// The lake table holds the current state of every row (updates and deletes applied).
    #[default]
    Upsert,
    /// The lake table is append-only: every change as a row, with its operation (I/U/D), commit
    /// LSN and commit time, like DMS's S3 output.
    Changelog,
}

/// What a table error that retrying cannot fix (a schema change the lake cannot take, a row
/// without its key) does to the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TableErrorPolicy {
    /// The table stops at its last good commit and the other tables go on. The slot keeps the
    /// table's WAL from there, so after the fix a restart resumes it with nothing lost (watch
    /// the retained WAL: `lakewriter status`).
    #[default]
    StopTable,
    /// The table leaves the run and its WAL is released; its lake table is marked incomplete,
    /// so the next start copies it again.
    SuspendTable,
    /// The run stops with the error.
    StopAll,
}

/// `[sink]`: the table format, catalog and storage.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Table format: `"iceberg"` or `"delta"`. Default: `"iceberg"`.
    #[serde(default)]
    pub format: TableFormat,
    /// Catalog the tables are registered in: `"sqlite"` (a local file, readable by pyiceberg's
    /// SQL catalog) or `"glue"` (AWS Glue, readable by Athena). Default: `"sqlite"`.
    #[serde(default)]
    pub catalog: CatalogKind,
    /// Where table files go: a local directory or `s3://bucket/prefix`. A relative path is taken
    /// from the working directory. Default: `"./warehouse"`.
    #[serde(default = "defaults::warehouse")]
    pub warehouse: String,
    /// Namespace (Glue database) of the lake tables. Default: `"lakewriter"`.
    #[serde(default = "defaults::namespace")]
    pub namespace: String,
    /// Size a data file is rolled at. Default: `"128MiB"`.
    #[serde(default = "defaults::target_file_size")]
    pub target_file_size: ByteSize,
    /// The SQLite catalog, when `catalog = "sqlite"`.
    #[serde(default)]
    pub sqlite: SqliteCatalogConfig,
    /// The Glue catalog, when `catalog = "glue"`.
    #[serde(default)]
    pub glue: GlueCatalogConfig,
    /// S3 access, when the warehouse is `s3://…` (and to S3 Tables' table storage).
    #[serde(default)]
    pub s3: S3Config,
    /// The table bucket, when `catalog = "s3tables"`.
    #[serde(default)]
    pub s3tables: S3TablesConfig,
    /// The Iceberg REST catalog, when `catalog = "rest"`.
    #[serde(default)]
    pub rest: RestCatalogConfig,
    /// Per-table settings, keyed by the source's `schema.table`:
    /// `[sink.tables."public.orders"] partition_by = ["day(order_date)"]`.
    #[serde(default)]
    pub tables: BTreeMap<String, SinkTableConfig>,
    /// A table error retrying cannot fix: `"stop_table"` (the others go on), `"suspend_table"`
    /// (and release its WAL; copied again on the next start) or `"stop_all"`. Default:
    /// `"stop_table"`.
    #[serde(default)]
    pub on_table_error: TableErrorPolicy,
    /// Where the key of the `hash` column policy comes from (see `masking`).
    #[serde(default)]
    pub masking: MaskingConfig,
    /// How an Iceberg upsert table's updates and deletes remove the old rows: `"equality"`
    /// (equality deletes by key; no local state), `"position"` (position deletes of the rows
    /// a local key index finds, readable by engines that refuse equality deletes) or
    /// `"deletion_vector"` (the same rows as deletion vectors, in format-3 tables). Per table:
    /// `[sink.tables."…"] delete_mode`. Default: `"position"` (Iceberg; Delta tables take
    /// deletes by rewriting files).
    #[serde(default)]
    pub delete_mode: Option<DeleteMode>,
    /// The key index of `delete_mode = "position"` tables.
    #[serde(default)]
    pub key_index: KeyIndexConfig,
}

/// How the tables without a checkpoint are copied at a start (`source.initial_copy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InitialCopy {
    /// In the slot's exported snapshot, the fastest; the stream starts after it, and a copy
    /// interrupted by a crash starts again from the first row.
    #[default]
    Snapshot,
    /// In key-ordered chunks beside the stream, as a table that joins while running: every
    /// committed chunk is kept across a crash, and the stream starts at once. Tables without
    /// a key of NOT NULL columns, changelog tables and Delta lakes are copied in the snapshot.
    Chunked,
}

/// How an upsert table's changes remove the rows they replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteMode {
    /// An equality delete of each changed key: no local state; every reader joins.
    Equality,
    /// A position delete (data file, row) of each changed key's live row, found in the
    /// table's key index; a key not in the lake needs none. In a format-3 table (upgraded by
    /// another engine), these are deletion vectors: v3 takes no new position-delete files.
    Position,
    /// As `Position`, in Iceberg format-3 tables, as deletion vectors (one Puffin blob of
    /// positions per data file): new tables are created in format 3, and a format-2 table is
    /// upgraded at the start (engines that read only format 2 then no longer read it).
    DeletionVector,
}

/// `[sink.key_index]`: where the key indexes of `delete_mode = "position"` tables live.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyIndexConfig {
    /// Local directory of the indexes (one file per table, `<namespace>/<table>-<hash of the
    /// table's location>.redb`, so pipelines writing other lakes never share one). A
    /// cache of the lake: deleting it costs a rebuild at the next start, nothing else. A
    /// relative path is taken from the working directory. Default: `"./key-index"`.
    #[serde(default = "defaults::key_index_dir")]
    pub dir: PathBuf,
    /// Page cache of each table's index, in memory. Default: `"256MiB"`.
    #[serde(default = "defaults::key_index_cache")]
    pub cache: ByteSize,
}

impl Default for KeyIndexConfig {
    fn default() -> Self {
        KeyIndexConfig {
            dir: defaults::key_index_dir(),
            cache: defaults::key_index_cache(),
        }
    }
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            format: TableFormat::default(),
            catalog: CatalogKind::default(),
            warehouse: defaults::warehouse(),
            namespace: defaults::namespace(),
            target_file_size: defaults::target_file_size(),
            on_table_error: TableErrorPolicy::default(),
            sqlite: SqliteCatalogConfig::default(),
            glue: GlueCatalogConfig::default(),
            s3: S3Config::default(),
            s3tables: S3TablesConfig::default(),
            rest: RestCatalogConfig::default(),
            tables: BTreeMap::new(),
            masking: MaskingConfig::default(),
            delete_mode: None,
            key_index: KeyIndexConfig::default(),
        }
    }
}

/// The lake table format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TableFormat {
    /// Apache Iceberg v2, upserts as equality deletes.
    #[default]
    Iceberg,
    /// Delta Lake, upserts as MERGE.
    Delta,
}

/// The catalog lake tables are registered in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CatalogKind {
    /// A local SQLite file in the schema of pyiceberg's SQL catalog.
    #[default]
    Sqlite,
    /// AWS Glue Data Catalog.
    Glue,
    /// Amazon S3 Tables: a table bucket's namespaces and tables, each table with the storage
    /// the service gives it.
    S3tables,
    /// An Iceberg REST catalog (`[sink.rest]`): Polaris, Lakekeeper, Unity, Nessie, …; the
    /// writer chooses where a table's files go (`<warehouse>/<namespace>/<name>`).
    Rest,
}

/// `[sink.sqlite]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteCatalogConfig {
    /// The catalog file. Default: `catalog.db` inside a local warehouse.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The catalog name recorded in the file (pyiceberg's `catalog_name` column).
    /// Default: `"lakewriter"`.
    #[serde(default = "defaults::catalog_name")]
    pub name: String,
}

impl Default for SqliteCatalogConfig {
    fn default() -> Self {
        SqliteCatalogConfig {
            path: None,
            name: defaults::catalog_name(),
        }
    }
}

/// `[sink.glue]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GlueCatalogConfig {
    /// AWS region. Default: the AWS SDK's (`AWS_REGION`, the profile).
    #[serde(default)]
    pub region: Option<String>,
    /// The Data Catalog's account id, for a catalog in another account. Default: the caller's.
    #[serde(default)]
    pub catalog_id: Option<String>,
    /// Endpoint override, for a local Glue server. Default: AWS's (or `AWS_ENDPOINT_URL`).
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// `[sink.s3tables]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3TablesConfig {
    /// The table bucket: `arn:aws:s3tables:<region>:<account>:bucket/<name>`. Required with
    /// `catalog = "s3tables"`.
    #[serde(default)]
    pub table_bucket_arn: String,
    /// AWS region. Default: the one in the ARN.
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint override, for a local S3 Tables server. Default: AWS's (or
    /// `AWS_ENDPOINT_URL`).
    #[serde(default)]
    pub endpoint: Option<String>,
}

impl S3TablesConfig {
    /// The region: the configured one, else the ARN's.
    pub fn region(&self) -> Option<String> {
        self.region.clone().or_else(|| {
            self.table_bucket_arn
                .split(':')
                .nth(3)
                .filter(|r| !r.is_empty())
                .map(str::to_string)
        })
    }
}

/// `[sink.rest]`. Secrets are never in the file: the keys name environment variables.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RestCatalogConfig {
    /// The catalog's base URI, before `/v1/…`: `https://catalog.example.com/api/catalog`.
    /// `https://` (TLS, certificates checked against the system's roots); `http://` only to
    /// the loopback interface. Required with `catalog = "rest"`.
    #[serde(default)]
    pub uri: String,
    /// The warehouse the server is asked for (`GET /v1/config?warehouse=…`): a catalog name
    /// on Polaris, a warehouse name on Lakekeeper. Default: none sent.
    #[serde(default)]
    pub warehouse: Option<String>,
    /// The environment variable holding a bearer token, sent as `Authorization: Bearer …`.
    /// Default: none (no token).
    #[serde(default)]
    pub token_env: Option<String>,
    /// The environment variable holding OAuth2 client credentials, `client_id:client_secret`,
    /// exchanged for tokens (client-credentials grant) renewed before they expire. Not with
    /// `token_env`. Default: none.
    #[serde(default)]
    pub credential_env: Option<String>,
    /// The OAuth2 token endpoint, with `credential_env`. Default: `{uri}/v1/oauth/tokens`.
    #[serde(default)]
    pub oauth2_server_uri: Option<String>,
    /// The OAuth2 scope asked for, with `credential_env`. Default: `"catalog"`.
    #[serde(default)]
    pub scope: Option<String>,
    /// Sign every request with AWS SigV4, with the AWS SDK's credential chain (environment,
    /// profile, instance or task role): the REST endpoints of S3 Tables and Glue. Not with
    /// `token_env` or `credential_env`. Default: `false`.
    #[serde(default)]
    pub sigv4: bool,
    /// The SigV4 signing name, with `sigv4`: `"s3tables"` (S3 Tables' endpoint) or `"glue"`
    /// (Glue's). Required with `sigv4`.
    #[serde(default)]
    pub signing_name: Option<String>,
    /// The SigV4 signing region, with `sigv4`. Default: the AWS SDK's (`AWS_REGION`, the
    /// profile).
    #[serde(default)]
    pub signing_region: Option<String>,
}

impl RestCatalogConfig {
    /// The OAuth2 scope: the configured one, else `catalog`.
    pub fn scope(&self) -> &str {
        self.scope.as_deref().unwrap_or("catalog")
    }
}

/// Whether `uri` is `https://…`, or `http://` to the loopback interface; the message
/// otherwise, naming `key`.
fn check_catalog_uri(key: &str, uri: &str) -> std::result::Result<(), String> {
    let parsed = url::Url::parse(uri).map_err(|e| format!("{key} = {uri:?} is not a URI: {e}"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "{key} holds credentials: put them in the environment variable \
             sink.rest.token_env or sink.rest.credential_env names"
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!(
            "{key} = {uri:?}: a base URI takes no query or fragment"
        ));
    }
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => match parsed.host() {
            Some(url::Host::Ipv4(ip)) if ip.is_loopback() => Ok(()),
            Some(url::Host::Ipv6(ip)) if ip.is_loopback() => Ok(()),
            Some(url::Host::Domain("localhost")) => Ok(()),
            _ => Err(format!(
                "{key} = {uri:?} is plain http to another host: use https:// (tokens and \
                 credentials would cross the network in the clear)"
            )),
        },
        other => Err(format!("{key} = {uri:?}: use https:// (not {other}://)")),
    }
}

/// `[sink.s3]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// AWS region of the bucket. Default: the AWS SDK's.
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint override, for S3-compatible servers. Default: AWS's (or `AWS_ENDPOINT_URL`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Address buckets by path (`endpoint/bucket/key`), as most local S3 servers need.
    /// Default: `false`.
    #[serde(default)]
    pub force_path_style: bool,
    /// Static access key id. Default: the AWS SDK's credential chain (environment, profile,
    /// instance or task role) — prefer that.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Static secret access key, with `access_key_id`. Never printed.
    #[serde(default)]
    pub secret_access_key: Secret,
    /// Server-side encryption of every object lakewriter writes (data, delete files,
    /// manifests, metadata, Delta logs and checkpoints, compaction output, its own records):
    /// `"AES256"` or `"aws:kms"`. Default: none sent (the bucket's default encryption applies).
    #[serde(default)]
    pub sse: Option<ServerSideEncryption>,
    /// The KMS key (id, ARN or alias) of `sse = "aws:kms"`. Default: the account's `aws/s3` key.
    #[serde(default)]
    pub kms_key_id: Option<String>,
    /// S3 Bucket Keys with `sse = "aws:kms"` (far fewer KMS requests). Default: `false`.
    #[serde(default)]
    pub bucket_key: bool,
}

/// `[sink.tables."schema.table"]`: one table's layout.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SinkTableConfig {
    /// Partition spec as Iceberg transforms of source columns: `"status"`, `"day(created_at)"`,
    /// `"bucket(16, customer_id)"`, `"truncate(4, sku)"`, `"year(…)"`, `"month(…)"`, `"hour(…)"`.
    /// A spec on columns outside the key needs `REPLICA IDENTITY FULL`. Default: unpartitioned.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// This table's `[flush] max_latency`: a table with a steady trickle can commit less
    /// often (fewer snapshots, files and catalog calls) without touching the others.
    /// Default: `[flush] max_latency`.
    #[serde(default)]
    pub max_latency: Option<Span>,
    /// Masking policies by column name: `{ email = "hash", ssn = "redact", notes = "drop" }`
    /// (see [`ColumnPolicy`]). Applied where values are decoded, before anything else sees
    /// them. Default: none.
    #[serde(default)]
    pub columns: BTreeMap<String, ColumnPolicy>,
    /// This table's `[sink] delete_mode`. Default: `[sink] delete_mode`.
    #[serde(default)]
    pub delete_mode: Option<DeleteMode>,
}

/// `[flush]`: a table's buffered changes are committed when any limit is reached, always on a
/// source-transaction boundary.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlushConfig {
    /// Rows buffered for one table. Default: `1000000`.
    #[serde(default = "defaults::max_rows")]
    pub max_rows: usize,
    /// Arrow bytes buffered for one table. Default: `"128MiB"`.
    #[serde(default = "defaults::max_bytes")]
    pub max_bytes: ByteSize,
    /// Age of the oldest buffered change at which its table is committed: the lake trails the
    /// source by up to this plus the check interval (a quarter of it, at most 1 s) and the
    /// commit. Default: `"10s"`.
    #[serde(default = "defaults::max_latency")]
    pub max_latency: Span,
    /// Once the source has sent everything it has (it says so when it goes idle), a table
    /// with at least this many rows buffered is committed at once rather than at
    /// `max_latency`: a burst is in the lake as soon as it has arrived, while a trickle still
    /// waits, so that each commit carries enough rows to be worth a snapshot. `0` turns this
    /// off. Default: `10000`.
    #[serde(default = "defaults::idle_rows")]
    pub idle_rows: usize,
    /// Memory for all buffers together; past it the largest table flushes, and a transaction
    /// larger than it streams into files that are committed at its end. Default: `"1GiB"`.
    #[serde(default = "defaults::memory_budget")]
    pub memory_budget: ByteSize,
    /// Where such a transaction's changes wait for its commit (removed after it). Default: the
    /// system's temporary directory (`TMPDIR`).
    #[serde(default)]
    pub spill_dir: Option<PathBuf>,
}

impl Default for FlushConfig {
    fn default() -> Self {
        FlushConfig {
            max_rows: defaults::max_rows(),
            max_bytes: defaults::max_bytes(),
            max_latency: defaults::max_latency(),
            idle_rows: defaults::idle_rows(),
            memory_budget: defaults::memory_budget(),
            spill_dir: None,
        }
    }
}

/// `[compaction]`: what `lakewriter compact` does, and how often `run` does it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CompactionConfig {
    /// How often `run` compacts its tables; `"0"` leaves it to `lakewriter compact`.
    /// Default: `"1h"`.
    #[serde(default = "defaults::compaction_interval")]
    pub interval: Span,
    /// Size of the rewritten files. Default: the sink's `target_file_size`.
    #[serde(default)]
    pub target_file_size: Option<ByteSize>,
    /// Data files smaller than this fraction of the target size are rewritten. Default: `0.75`.
    #[serde(default = "defaults::small_file_ratio")]
    pub small_file_ratio: f64,
    /// Data files that this many equality-delete files apply to are rewritten. Default: `1`.
    #[serde(default = "defaults::one")]
    pub min_delete_files: usize,
    /// Input bytes read and sorted at once: a partition with more files to rewrite is
    /// rewritten in several groups. Sorting holds a group's live rows in Arrow, several times
    /// its Parquet size. Default: `"512MiB"`.
    #[serde(default = "defaults::group_size")]
    pub group_size: ByteSize,
    /// Sort rewritten files by the table's key. Default: `true`.
    #[serde(default = "defaults::yes")]
    pub sort_by_key: bool,
    /// Snapshots older than this are expired: by `compact`, and by `run` itself every 100
    /// commits of a table. Default: `"6h"` — at one commit per table every 10 s that keeps
    /// about 2,200 snapshots (about 2 MB of `metadata.json`, rewritten on every commit) where
    /// a week would keep 60,000 (about 55 MB).
    #[serde(default = "defaults::snapshot_retention")]
    pub snapshot_retention: Span,
    /// The newest snapshots always kept, whatever their age. Default: `10`.
    #[serde(default = "defaults::keep_snapshots")]
    pub keep_snapshots: usize,
    /// Files no snapshot references are removed only when older than this, so the files of a
    /// commit in flight are never touched. Default: `"3d"`; at least [`ORPHAN_AGE_FLOOR`]
    /// (one day) unless `enforce_orphan_age_floor` is off.
    #[serde(default = "defaults::orphan_age")]
    pub orphan_age: Span,
    /// Refuse an `orphan_age` below [`ORPHAN_AGE_FLOOR`]. Turn off only where no writer can
    /// be committing (a test, a cleanup with every writer stopped), like Delta's
    /// `retentionDurationCheck`. Default: `true`.
    #[serde(default = "defaults::yes")]
    pub enforce_orphan_age_floor: bool,
}

/// The least `compaction.orphan_age`: a commit's files exist before the commit references
/// them, and the longest commits (a spilled transaction of many GiB, an initial copy of a
/// large table) run for hours. `compact` leaves a table alone while it has no checkpoint (its
/// first copy in flight), so the floor only has to outlast the other commits.
pub const ORPHAN_AGE_FLOOR: Span = Span::secs(86_400);

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            interval: defaults::compaction_interval(),
            target_file_size: None,
            small_file_ratio: defaults::small_file_ratio(),
            min_delete_files: defaults::one(),
            group_size: defaults::group_size(),
            sort_by_key: true,
            snapshot_retention: defaults::snapshot_retention(),
            keep_snapshots: defaults::keep_snapshots(),
            orphan_age: defaults::orphan_age(),
            enforce_orphan_age_floor: true,
        }
    }
}

/// `[metrics]`: how the running service reports itself.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address `run` serves `/metrics` (Prometheus text, or OpenMetrics when asked),
    /// `/healthz` and `/readyz` on, such as `"127.0.0.1:9187"`; taken or invalid, the start
    /// fails naming it. Default: none (no endpoint, nothing measured).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// How often progress is logged when not on a terminal. Default: `"30s"`.
    #[serde(default = "defaults::progress_interval")]
    pub progress_interval: Span,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: None,
            progress_interval: defaults::progress_interval(),
        }
    }
}

mod defaults {
    use super::{ByteSize, Span, TablePattern};

    pub fn host() -> String {
        "127.0.0.1".into()
    }
    pub fn port() -> u16 {
        5432
    }
    pub fn user() -> String {
        "lakewriter".into()
    }
    pub fn connect_timeout() -> Span {
        Span::secs(10)
    }
    pub fn publication() -> String {
        "lakewriter".into()
    }
    pub fn slot() -> String {
        "lakewriter".into()
    }
    pub fn yes() -> bool {
        true
    }
    pub fn one() -> usize {
        1
    }
    pub fn include() -> Vec<TablePattern> {
        vec![TablePattern::any_in_schema("public")]
    }
    pub fn snapshot_parallelism() -> usize {
        2
    }
    pub fn snapshot_chunk_rows() -> u64 {
        100_000
    }
    pub fn warehouse() -> String {
        "./warehouse".into()
    }
    pub fn namespace() -> String {
        "lakewriter".into()
    }
    pub fn catalog_name() -> String {
        "lakewriter".into()
    }
    pub fn target_file_size() -> ByteSize {
        ByteSize::mib(128)
    }
    pub fn key_index_dir() -> std::path::PathBuf {
        std::path::PathBuf::from("./key-index")
    }
    pub fn key_index_cache() -> ByteSize {
        ByteSize::mib(256)
    }
    pub fn max_rows() -> usize {
        1_000_000
    }
    pub fn max_bytes() -> ByteSize {
        ByteSize::mib(128)
    }
    pub fn max_latency() -> Span {
        Span::secs(10)
    }
    pub fn idle_rows() -> usize {
        10_000
    }
    pub fn memory_budget() -> ByteSize {
        ByteSize::mib(1024)
    }
    pub fn compaction_interval() -> Span {
        Span::secs(3600)
    }
    pub fn group_size() -> ByteSize {
        ByteSize::mib(512)
    }
    pub fn small_file_ratio() -> f64 {
        0.75
    }
    pub fn snapshot_retention() -> Span {
        Span::secs(6 * 3600)
    }
    pub fn keep_snapshots() -> usize {
        10
    }
    pub fn orphan_age() -> Span {
        Span::secs(3 * 86400)
    }
    pub fn progress_interval() -> Span {
        Span::secs(30)
    }
}

impl Config {
    /// Reads the file at `path`, applies `LAKEWRITER__…` overrides from the process
    /// environment, and validates the result.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path, std::env::vars())
    }

    /// Parses configuration `text` (that came from `path`, for messages), with overrides from
    /// `env` (pairs of variable name and value; names without the prefix are ignored).
    pub fn parse(
        text: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config> {
        let overrides = overrides::collect(env);
        let config: Config = if overrides.is_empty() {
            // Straight from the text, so errors point at the line.
            toml::from_str(text).map_err(|e| Error::config(path, e.to_string().trim_end()))?
        } else {
            let mut table: toml::Table =
                toml::from_str(text).map_err(|e| Error::config(path, e.to_string().trim_end()))?;
            for o in &overrides {
                o.apply(&mut table).map_err(|m| Error::config(path, m))?;
            }
            let names: Vec<&str> = overrides.iter().map(|o| o.variable.as_str()).collect();
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    Error::config(
                        path,
                        format!(
                            "{} (after applying the environment overrides {})",
                            e.to_string().trim_end(),
                            names.join(", ")
                        ),
                    )
                })?
        };
        config.validate(path)?;
        Ok(config)
    }

    /// Checks what serde cannot: names, ranges and combinations.
    fn validate(&self, path: &Path) -> Result<()> {
        let fail = |message: String| Err(Error::config(path, message));
        if self.source.database.trim().is_empty() {
            return fail("source.database is empty: name the database to replicate".into());
        }
        for (name, what) in [
            (&self.source.publication, "source.publication"),
            (&self.source.slot, "source.slot"),
        ] {
            if !is_identifier(name) {
                return fail(format!(
                    "{what} = {name:?} is not a valid name: use lowercase letters, digits and _, \
                     starting with a letter or _, at most 63 characters"
                ));
            }
        }
        if self.source.snapshot_parallelism == 0 {
            return fail("source.snapshot_parallelism must be at least 1".into());
        }
        if self.source.snapshot_chunk_rows == 0 {
            return fail("source.snapshot_chunk_rows must be at least 1".into());
        }
        for name in self.source.tables.keys().chain(self.sink.tables.keys()) {
            if name
                .split_once('.')
                .is_none_or(|(s, t)| s.is_empty() || t.is_empty())
            {
                return fail(format!(
                    "table {name:?}: per-table settings are keyed by \"schema.table\""
                ));
            }
        }
        for (name, table) in &self.source.tables {
            if table.key.as_ref().is_some_and(|k| k.is_empty()) {
                return fail(format!(
                    "source.tables.\"{name}\".key is empty: name the columns, or remove it"
                ));
            }
        }
        if self.sink.namespace.trim().is_empty() {
            return fail("sink.namespace is empty".into());
        }
        if self.sink.format == TableFormat::Delta {
            let by_index = |mode: Option<DeleteMode>| {
                mode.filter(|m| *m != DeleteMode::Equality)
                    .map(|m| match m {
                        DeleteMode::DeletionVector => "deletion_vector",
                        _ => "position",
                    })
            };
            let position = by_index(self.sink.delete_mode)
                .map(|m| ("sink.delete_mode".to_string(), m))
                .or_else(|| {
                    self.sink.tables.iter().find_map(|(name, t)| {
                        by_index(t.delete_mode)
                            .map(|m| (format!("sink.tables.\"{name}\".delete_mode"), m))
                    })
                });
            if let Some((key, mode)) = position {
                return fail(format!(
                    "{key} = \"{mode}\" is for Iceberg tables; Delta tables are written \
                     copy-on-write (remove it, or use sink.format = \"iceberg\")"
                ));
            }
        }
        if self.sink.target_file_size.bytes() < 1 << 20 {
            return fail(format!(
                "sink.target_file_size = {} is below 1MiB",
                self.sink.target_file_size
            ));
        }
        if self.sink.catalog == CatalogKind::Glue && !self.sink.warehouse.starts_with("s3://") {
            return fail(format!(
                "sink.catalog = \"glue\" needs an s3:// warehouse (Athena reads from S3), \
                 not {:?}",
                self.sink.warehouse
            ));
        }
        if self.sink.catalog == CatalogKind::S3tables {
            let arn = &self.sink.s3tables.table_bucket_arn;
            let parts: Vec<&str> = arn.split(':').collect();
            if parts.len() != 6
                || parts[0] != "arn"
                || parts[2] != "s3tables"
                || !parts[5].starts_with("bucket/")
            {
                return fail(format!(
                    "sink.catalog = \"s3tables\" needs sink.s3tables.table_bucket_arn, the \
                     table bucket's ARN (arn:aws:s3tables:<region>:<account>:bucket/<name>), \
                     not {arn:?}"
                ));
            }
            if self.sink.format == TableFormat::Delta {
                return fail(
                    "sink.catalog = \"s3tables\" holds Iceberg tables only: use \
                     sink.format = \"iceberg\""
                        .into(),
                );
            }
            if self.sink.s3.sse == Some(ServerSideEncryption::Kms) {
                return fail(
                    "sink.s3.sse = \"aws:kms\" with sink.catalog = \"s3tables\": a table \
                     bucket's objects take only its own encryption; set SSE-KMS on the table \
                     bucket (PutTableBucketEncryption) and leave sse out"
                        .into(),
                );
            }
        }
        self.validate_rest().or_else(fail)?;
        let has_key_id = self.sink.s3.access_key_id.is_some();
        let has_secret = !self.sink.s3.secret_access_key.is_empty();
        if has_key_id != has_secret {
            return fail(
                "sink.s3.access_key_id and sink.s3.secret_access_key go together: set both, \
                 or neither to use the AWS credential chain"
                    .into(),
            );
        }
        if self.source.sslcert.is_some() != self.source.sslkey.is_some() {
            return fail(
                "source.sslcert and source.sslkey go together: set both, or neither".into(),
            );
        }
        masking::validate(self).or_else(fail)?;
        encryption::validate(&self.sink.s3, self.sink.format).or_else(fail)?;
        if self.flush.max_rows == 0 {
            return fail("flush.max_rows must be at least 1".into());
        }
        if self.flush.max_latency.is_zero() {
            return fail("flush.max_latency must be above zero".into());
        }
        for (name, table) in &self.sink.tables {
            if table.max_latency.is_some_and(|l| l.is_zero()) {
                return fail(format!(
                    "sink.tables.\"{name}\".max_latency must be above zero"
                ));
            }
        }
        if self.flush.max_bytes > self.flush.memory_budget {
            return fail(format!(
                "flush.max_bytes = {} is above flush.memory_budget = {}",
                self.flush.max_bytes, self.flush.memory_budget
            ));
        }
        if !(0.0..=1.0).contains(&self.compaction.small_file_ratio) {
            return fail("compaction.small_file_ratio must be between 0 and 1".into());
        }
        if self.compaction.enforce_orphan_age_floor
            && self.compaction.orphan_age.get() < ORPHAN_AGE_FLOOR.get()
        {
            return fail(format!(
                "compaction.orphan_age = \"{}\" is below its floor of {ORPHAN_AGE_FLOOR}: a \
                 commit's files (a large transaction's, an initial copy's) exist before the \
                 commit references them, and a shorter age would remove them while it runs",
                self.compaction.orphan_age
            ));
        }
        Ok(())
    }

    /// `[sink.rest]`: required with `catalog = "rest"`, and only then; one kind of
    /// credentials; the OAuth2 settings only with OAuth2.
    fn validate_rest(&self) -> std::result::Result<(), String> {
        let rest = &self.sink.rest;
        if self.sink.catalog != CatalogKind::Rest {
            let set = [
                ("uri", !rest.uri.is_empty()),
                ("warehouse", rest.warehouse.is_some()),
                ("token_env", rest.token_env.is_some()),
                ("credential_env", rest.credential_env.is_some()),
                ("oauth2_server_uri", rest.oauth2_server_uri.is_some()),
                ("scope", rest.scope.is_some()),
                ("sigv4", rest.sigv4),
                ("signing_name", rest.signing_name.is_some()),
                ("signing_region", rest.signing_region.is_some()),
            ];
            if let Some((key, _)) = set.iter().find(|(_, set)| *set) {
                return Err(format!(
                    "sink.rest.{key} is set, but sink.catalog is not \"rest\": set \
                     catalog = \"rest\", or remove [sink.rest]"
                ));
            }
            return Ok(());
        }
        if rest.uri.trim().is_empty() {
            return Err(
                "sink.catalog = \"rest\" needs sink.rest.uri, the catalog's base URI \
                        (before /v1/…)"
                    .into(),
            );
        }
        check_catalog_uri("sink.rest.uri", &rest.uri)?;
        if self.sink.format == TableFormat::Delta {
            return Err(
                "sink.catalog = \"rest\" holds Iceberg tables only: use sink.format = \"iceberg\""
                    .into(),
            );
        }
        for (key, value) in [
            ("token_env", &rest.token_env),
            ("credential_env", &rest.credential_env),
            ("warehouse", &rest.warehouse),
            ("scope", &rest.scope),
            ("signing_name", &rest.signing_name),
            ("signing_region", &rest.signing_region),
        ] {
            if value.as_ref().is_some_and(|v| v.trim().is_empty()) {
                return Err(format!("sink.rest.{key} is empty: set it, or remove it"));
            }
        }
        if rest.token_env.is_some() && rest.credential_env.is_some() {
            return Err(
                "sink.rest.token_env and sink.rest.credential_env are both set: a bearer token \
                 or OAuth2 client credentials, not both"
                    .into(),
            );
        }
        if rest.credential_env.is_none() {
            for (key, set) in [
                ("oauth2_server_uri", rest.oauth2_server_uri.is_some()),
                ("scope", rest.scope.is_some()),
            ] {
                if set {
                    return Err(format!(
                        "sink.rest.{key} is an OAuth2 setting: it needs sink.rest.credential_env"
                    ));
                }
            }
        }
        if let Some(uri) = &rest.oauth2_server_uri {
            check_catalog_uri("sink.rest.oauth2_server_uri", uri)?;
        }
        if rest.sigv4 {
            if rest.token_env.is_some() || rest.credential_env.is_some() {
                return Err(
                    "sink.rest.sigv4 signs with AWS credentials: it goes with neither \
                     sink.rest.token_env nor sink.rest.credential_env"
                        .into(),
                );
            }
            if rest.signing_name.is_none() {
                return Err(
                    "sink.rest.sigv4 needs sink.rest.signing_name: \"s3tables\" for the S3 \
                     Tables endpoint, \"glue\" for Glue's"
                        .into(),
                );
            }
        } else {
            for (key, set) in [
                ("signing_name", rest.signing_name.is_some()),
                ("signing_region", rest.signing_region.is_some()),
            ] {
                if set {
                    return Err(format!(
                        "sink.rest.{key} is a SigV4 setting: it needs sink.rest.sigv4 = true"
                    ));
                }
            }
        }
        Ok(())
    }

    /// How old `table`'s oldest buffered change may get before the table is committed: its
    /// own `[sink.tables] max_latency`, or `[flush] max_latency`.
    pub fn max_latency_of(&self, table: &crate::table::TableId) -> std::time::Duration {
        let own = match self.sink.tables.is_empty() {
            // the pipeline asks for every buffered table on every tick: no name built for nothing
            true => None,
            false => self
                .sink
                .tables
                .get(&table.to_string())
                .and_then(|t| t.max_latency),
        };
        own.unwrap_or(self.flush.max_latency).get()
    }

    /// The shortest `max_latency` of any table: how often the pipeline looks for tables due.
    pub fn shortest_max_latency(&self) -> std::time::Duration {
        self.sink
            .tables
            .values()
            .filter_map(|t| t.max_latency)
            .map(|l| l.get())
            .fold(self.flush.max_latency.get(), std::cmp::Ord::min)
    }

    /// The SQLite catalog file: `[sink.sqlite] path`, or `catalog.db` in a local warehouse.
    pub fn sqlite_catalog_path(&self) -> PathBuf {
        match &self.sink.sqlite.path {
            Some(path) => path.clone(),
            None => Path::new(&self.sink.warehouse).join("catalog.db"),
        }
    }

    /// The configuration as TOML, secrets replaced by `***`: what `--print-config` shows.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print: {e}"))
    }

    /// Whether the table `schema.table` is selected by `include` and not by `exclude`.
    pub fn includes_table(&self, schema: &str, table: &str) -> bool {
        self.source.include.iter().any(|p| p.matches(schema, table))
            && !self.source.exclude.iter().any(|p| p.matches(schema, table))
    }
}

/// A PostgreSQL name lakewriter creates or looks up unquoted: publication and slot names.
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("test.toml"), Vec::new())
    }

    #[test]
    fn a_minimal_file_gets_the_documented_defaults() -> Result<()> {
        let config = parse("[source]\ndatabase = \"app\"\n")?;
        assert_eq!(config.source.port, 5432);
        assert_eq!(config.source.slot, "lakewriter");
        assert_eq!(config.sink.format, TableFormat::Iceberg);
        assert_eq!(config.sink.catalog, CatalogKind::Sqlite);
        assert_eq!(config.sink.target_file_size, ByteSize::mib(128));
        assert_eq!(config.flush.max_latency, Span::secs(10));
        assert_eq!(
            config.sqlite_catalog_path(),
            Path::new("./warehouse/catalog.db")
        );
        // pyiceberg opens the file by this name: it must not be empty without a [sink.sqlite]
        assert_eq!(config.sink.sqlite.name, "lakewriter");
        assert_eq!(config.sink.on_table_error, TableErrorPolicy::StopTable);
        assert!(config.includes_table("public", "orders"));
        assert!(!config.includes_table("audit", "orders"));
        Ok(())
    }

    #[test]
    fn an_unknown_key_is_named_with_the_file() {
        let err = parse("[source]\ndatabase = \"app\"\n[flush]\nmax_row = 10\n")
            .expect_err("a misspelt key must be refused");
        let message = err.to_string();
        assert!(message.contains("max_row"), "{message}");
        assert!(message.contains("test.toml"), "{message}");
        assert!(message.contains("line 4"), "{message}");
    }

    #[test]
    fn tls_settings_parse_and_a_client_certificate_needs_its_key() {
        let config = parse(
            "[source]\ndatabase = \"app\"\nsslmode = \"verify-full\"\n\
             sslrootcert = \"ca.pem\"\nsslcert = \"c.pem\"\nsslkey = \"c.key\"\n",
        )
        .expect("valid TLS settings");
        assert_eq!(
            config.source.sslmode,
            crate::source::tls::SslMode::VerifyFull
        );
        let err = parse("[source]\ndatabase = \"app\"\nsslcert = \"c.pem\"\n")
            .expect_err("a certificate without its key");
        assert!(err.to_string().contains("sslkey"), "{err}");
        let err = parse("[source]\ndatabase = \"app\"\nsslmode = \"verify\"\n")
            .expect_err("an unknown mode");
        assert!(err.to_string().contains("sslmode"), "{err}");
    }

    #[test]
    fn environment_overrides_win_and_are_typed() -> Result<()> {
        let env = [
            ("LAKEWRITER__FLUSH__MAX_ROWS", "42"),
            ("LAKEWRITER__SOURCE__PASSWORD", "12345"),
            ("LAKEWRITER__SINK__GLUE__REGION", "eu-west-1"),
            ("LAKEWRITER__SOURCE__INCLUDE", "[\"app.*\"]"),
            ("LAKEWRITER_PG_URL", "not an override: one underscore"),
            ("HOME", "/"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let config = Config::parse(
            "[source]\ndatabase = \"app\"\npassword = \"from-file\"\n",
            Path::new("test.toml"),
            env,
        )?;
        assert_eq!(config.flush.max_rows, 42);
        assert_eq!(config.source.password.expose(), "12345");
        assert_eq!(config.sink.glue.region.as_deref(), Some("eu-west-1"));
        assert!(config.includes_table("app", "orders"));
        assert!(!config.includes_table("public", "orders"));
        Ok(())
    }

    #[test]
    fn an_override_of_an_unknown_key_names_the_variable() {
        let env = vec![("LAKEWRITER__FLUSH__MAX_ROW".to_string(), "1".to_string())];
        let err = Config::parse("[source]\ndatabase = \"app\"\n", Path::new("x.toml"), env)
            .expect_err("an unknown override must be refused");
        let message = err.to_string();
        assert!(message.contains("max_row"), "{message}");
        assert!(message.contains("LAKEWRITER__FLUSH__MAX_ROW"), "{message}");
    }

    #[test]
    fn secrets_are_redacted_in_debug_and_printed_config() -> Result<()> {
        let config = parse(
            "[source]\ndatabase = \"app\"\npassword = \"s3cr3t-pw\"\n\
             [sink.s3]\naccess_key_id = \"AKIA\"\nsecret_access_key = \"s3cr3t-key\"\n",
        )?;
        for shown in [format!("{config:?}"), config.to_redacted_toml()] {
            assert!(!shown.contains("s3cr3t"), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
        Ok(())
    }

    #[test]
    fn an_orphan_age_below_its_floor_is_refused_naming_the_key_and_the_floor() -> Result<()> {
        let err = parse("[source]\ndatabase = \"a\"\n[compaction]\norphan_age = \"1h\"\n")
            .expect_err("below the floor");
        let message = err.to_string();
        assert!(message.contains("compaction.orphan_age"), "{message}");
        assert!(message.contains("floor of 1d"), "{message}");
        let config = parse("[source]\ndatabase = \"a\"\n[compaction]\norphan_age = \"1d\"\n")?;
        assert_eq!(config.compaction.orphan_age, ORPHAN_AGE_FLOOR);
        // only where no writer commits: a test, a cleanup with the writers stopped
        let config = parse(
            "[source]\ndatabase = \"a\"\n[compaction]\norphan_age = \"0s\"\n\
             enforce_orphan_age_floor = false\n",
        )?;
        assert_eq!(config.compaction.orphan_age, Span::secs(0));
        Ok(())
    }

    #[test]
    fn a_rest_catalog_takes_a_uri_and_one_kind_of_credentials() -> Result<()> {
        let base = "[source]\ndatabase = \"a\"\n[sink]\ncatalog = \"rest\"\n[sink.rest]\n";
        let config = parse(&format!(
            "{base}uri = \"https://catalog.example.com/api/catalog\"\nwarehouse = \"lake\"\n\
             credential_env = \"LAKEWRITER_REST_CREDENTIAL\"\n"
        ))?;
        assert_eq!(config.sink.catalog, CatalogKind::Rest);
        assert_eq!(config.sink.rest.scope(), "catalog");
        assert_eq!(config.sink.rest.warehouse.as_deref(), Some("lake"));
        parse(&format!("{base}uri = \"http://127.0.0.1:8181\"\n"))?;
        let signed = parse(&format!(
            "{base}uri = \"https://s3tables.us-east-1.amazonaws.com/iceberg\"\nsigv4 = true\n\
             signing_name = \"s3tables\"\nsigning_region = \"us-east-1\"\n"
        ))?;
        assert!(signed.sink.rest.sigv4);
        parse(&format!(
            "{base}uri = \"http://localhost:8181/\"\ntoken_env = \"T\"\n"
        ))?;
        let refused = [
            (format!("{base}warehouse = \"lake\"\n"), "sink.rest.uri"),
            (
                format!("{base}uri = \"http://catalog.example.com\"\n"),
                "use https://",
            ),
            (format!("{base}uri = \"ftp://catalog\"\n"), "sink.rest.uri"),
            (format!("{base}uri = \"not a uri\"\n"), "sink.rest.uri"),
            (
                format!("{base}uri = \"https://me:pw@catalog.example.com\"\n"),
                "holds credentials",
            ),
            (
                format!("{base}uri = \"https://c\"\ntoken_env = \"T\"\ncredential_env = \"C\"\n"),
                "not both",
            ),
            (
                format!("{base}uri = \"https://c\"\nscope = \"catalog\"\n"),
                "sink.rest.scope is an OAuth2 setting",
            ),
            (
                format!("{base}uri = \"https://c\"\noauth2_server_uri = \"https://c/t\"\n"),
                "sink.rest.oauth2_server_uri is an OAuth2 setting",
            ),
            (
                format!(
                    "{base}uri = \"https://c\"\ncredential_env = \"C\"\n\
                     oauth2_server_uri = \"http://idp.example.com/token\"\n"
                ),
                "sink.rest.oauth2_server_uri",
            ),
            (
                format!("{base}uri = \"https://c\"\ntoken_env = \"\"\n"),
                "sink.rest.token_env is empty",
            ),
            (
                format!("{base}uri = \"https://c\"\nsigv4 = true\n"),
                "needs sink.rest.signing_name",
            ),
            (
                format!(
                    "{base}uri = \"https://c\"\nsigv4 = true\nsigning_name = \"glue\"\n\
                     token_env = \"T\"\n"
                ),
                "goes with neither",
            ),
            (
                format!("{base}uri = \"https://c\"\nsigning_region = \"eu-west-1\"\n"),
                "sink.rest.signing_region is a SigV4 setting",
            ),
            (
                format!("{base}uri = \"https://c\"\nsigv5 = true\n"),
                "unknown field `sigv5`",
            ),
            (
                format!("{base}uri = \"https://c\"\n")
                    .replace("[sink]\n", "[sink]\nformat = \"delta\"\n"),
                "Iceberg tables only",
            ),
            (
                "[source]\ndatabase = \"a\"\n[sink.rest]\nuri = \"https://c\"\n".to_string(),
                "sink.catalog is not \"rest\"",
            ),
        ];
        for (text, expected) in refused {
            match parse(&text) {
                Ok(_) => panic!("accepted: {text}"),
                Err(e) => assert!(e.to_string().contains(expected), "{text}: {e}"),
            }
        }
        Ok(())
    }

    #[test]
    fn contradictions_are_refused_with_the_key() {
        let cases = [
            ("[source]\ndatabase = \"\"\n", "source.database"),
            (
                "[source]\ndatabase = \"a\"\nslot = \"Bad-Slot\"\n",
                "source.slot",
            ),
            (
                "[source]\ndatabase = \"a\"\n[sink]\ncatalog = \"glue\"\n",
                "s3:// warehouse",
            ),
            (
                "[source]\ndatabase = \"a\"\n[flush]\nmax_latency = \"10\"\n",
                "unit",
            ),
            (
                "[source]\ndatabase = \"a\"\n[sink]\nformat = \"hudi\"\n",
                "hudi",
            ),
            (
                "[source]\ndatabase = \"a\"\n[sink.tables.orders]\npartition_by = []\n",
                "schema.table",
            ),
            (
                "[source]\ndatabase = \"a\"\n[flush]\nmax_bytes = \"2GiB\"\nmemory_budget = \"1GiB\"\n",
                "memory_budget",
            ),
            (
                "[source]\ndatabase = \"a\"\n[sink]\ncatalog = \"s3tables\"\n",
                "sink.s3tables.table_bucket_arn",
            ),
            (
                "[source]\ndatabase = \"a\"\n[sink]\ncatalog = \"s3tables\"\nformat = \"delta\"\n\
                 [sink.s3tables]\ntable_bucket_arn = \"arn:aws:s3tables:us-east-1:123456789012:bucket/b\"\n",
                "Iceberg tables only",
            ),
            (
                "[source]\ndatabase = \"a\"\n[sink.tables.\"public.orders\"]\nmax_latency = \"0s\"\n",
                "sink.tables.\"public.orders\".max_latency",
            ),
        ];
        for (text, expected) in cases {
            match parse(text) {
                Ok(_) => panic!("accepted: {text}"),
                Err(e) => assert!(e.to_string().contains(expected), "{text}: {e}"),
            }
        }
    }
}
