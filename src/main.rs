//! The `lakewriter` binary: parses arguments, sets up logging, loads the configuration and calls
//! one library function per command. Exit codes: 0 success, 1 failure (or a difference found by
//! `verify`, a problem found by `doctor`), 2 usage errors and commands not built yet.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use lakewriter::commands::{self, OutputFormat};
use lakewriter::{Config, Error};

/// Copy PostgreSQL into Apache Iceberg and Delta Lake tables from logical replication, exactly
/// once.
#[derive(Debug, Parser)]
#[command(name = "lakewriter", version, about, long_about = None)]
struct Cli {
    /// Log format on stderr. The level comes from LAKEWRITER_LOG (default: lakewriter's own
    /// events at info, its dependencies' at warn), e.g. LAKEWRITER_LOG=lakewriter=debug.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// The pipeline's TOML configuration (catalogs/ holds ready profiles). Values can be
    /// overridden with LAKEWRITER__SECTION__KEY environment variables.
    #[arg(long, short, env = "LAKEWRITER_CONFIG")]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service: snapshot the tables not yet in the lake, then stream changes into them.
    ///
    /// Reads the publication's tables through a logical replication slot (pgoutput), buffers
    /// changes as Arrow batches and commits them as Iceberg snapshots or Delta commits, each
    /// carrying the LSN it covers, so a restart continues exactly where the lake ends.
    /// SIGTERM or SIGINT flushes, commits, acknowledges and exits 0.
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Rewrite small files and apply deletes; expire old snapshots; remove orphan files.
    ///
    /// Safe beside a running `run`: the rewrite commits by compare-and-swap and keeps the
    /// sequence numbers that make deletes committed meanwhile still apply. On Delta tables:
    /// optimize (bin-packing), vacuum files older than `compaction.orphan_age` that no longer
    /// belong to the table, and checkpoint the log.
    Compact {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this table (`schema.table` of the source). Default: every table.
        #[arg(long)]
        table: Option<String>,
    },
    /// Copy one table again, online: the running `run` empties its lake table at the request's
    /// place in the stream and copies it in chunks while every other table streams on.
    ///
    /// The request is a message in the WAL (`pg_logical_emit_message`); with no writer
    /// running, the next `run` takes it up. Refused for a table the writer does not stream,
    /// or one without a key of NOT NULL columns (the chunks are ordered by it).
    Resync {
        #[command(flatten)]
        config: ConfigArg,
        /// The table (`schema.table` of the source).
        #[arg(long)]
        table: String,
    },
    /// Compare the lake with PostgreSQL row by row; exit 0 only when they are equal.
    ///
    /// Prints, per table, equal or the number of missing, extra and different rows with
    /// example keys.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this table (`schema.table` of the source). Default: every table.
        #[arg(long)]
        table: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run DataFusion SQL over every lake table of the config (named `namespace.table`).
    Query {
        #[command(flatten)]
        config: ConfigArg,
        /// Output format.
        #[arg(long, value_enum, default_value_t = QueryFormat::Table)]
        format: QueryFormat,
        /// Read the SQL from this file (`sql/athena/*.sql`) instead.
        #[arg(long, conflicts_with = "sql")]
        file: Option<std::path::PathBuf>,
        /// The SQL statement (it may start with a `--` comment).
        #[arg(allow_hyphen_values = true, required_unless_present = "file")]
        sql: Option<String>,
    },
    /// Check the source and the sink before a run; print each problem with its fix.
    ///
    /// wal_level, slots and senders, privileges, the publication, the slot and its retained
    /// WAL, replica identities and keys, catalog and bucket access. Exits 1 when a run would
    /// fail.
    Doctor {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print the least AWS IAM policy this configuration needs, as JSON.
    ///
    /// S3 actions on the warehouse prefix only, Glue actions on the namespace's database and
    /// tables only, KMS actions on the configured key only.
    IamPolicy {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Export lake tables into PostgreSQL tables, incrementally and exactly once.
    ///
    /// The first run copies the whole table (creating the destination table from the lake's
    /// schema when it is missing); later runs apply only what changed since the version last
    /// exported: rows of touched keys are upserted, keys that are gone are deleted. The merge
    /// and the record of the exported version (table lakewriter_export.state in the
    /// destination) commit in one transaction, so a run killed anywhere and run again applies
    /// everything once.
    Export {
        #[command(flatten)]
        config: ConfigArg,
        /// A lake table, by its source table's name (`schema.table`), exported into the table
        /// of the same name; `schema.table=dest_schema.dest_table` names the destination.
        /// Repeat for several tables.
        #[arg(long = "table", required = true, value_name = "SCHEMA.TABLE[=DEST]")]
        tables: Vec<lakewriter::export::TableMapping>,
        /// The destination PostgreSQL, as a libpq URL or `key=value` string. Prefer the
        /// environment variable, which keeps a password out of the process list; a password
        /// missing from it is read from PGPASSWORD.
        #[arg(
            long,
            env = "LAKEWRITER_EXPORT_TO",
            hide_env_values = true,
            value_name = "URL"
        )]
        to: String,
        /// Copy the whole table again instead of what changed since the last export (after the
        /// last exported snapshot was expired, or to repair a destination changed by others).
        #[arg(long)]
        full: bool,
        /// Time travel: export the table as it was at this snapshot id (Delta: version) or at
        /// this time (`2026-01-31T09:26:56Z`: the newest version committed by then), into a
        /// destination table that does not exist yet. Recorded like any export, so a later
        /// run without it brings the table forward.
        #[arg(long, value_name = "SNAPSHOT_ID|TIMESTAMP", conflicts_with_all = ["full", "every"])]
        as_of: Option<lakewriter::lake::AsOf>,
        /// Keep running: export again every DURATION (`30s`, `15m`, `1h`) until SIGTERM or
        /// SIGINT.
        #[arg(long, value_name = "DURATION", value_parser = parse_span)]
        every: Option<lakewriter::config::Span>,
    },
    /// Per table: checkpoint LSN, lag in bytes and seconds, snapshots, data and delete files.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the report as JSON, its fields named as the metrics name them.
        #[arg(long)]
        json: bool,
        /// Also show the exports (`lakewriter export`) recorded in this destination database:
        /// per lake table and destination table, the version exported, when, and its counts.
        #[arg(
            long,
            env = "LAKEWRITER_EXPORT_TO",
            hide_env_values = true,
            value_name = "URL"
        )]
        exports_to: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum QueryFormat {
    Table,
    Csv,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            match e.downcast_ref::<Error>() {
                Some(Error::NotBuilt { .. }) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// Runs one command; `Ok(false)` is a clean "no" (verify found differences, doctor problems).
async fn dispatch(command: Command) -> anyhow::Result<bool> {
    let load = |arg: &ConfigArg| Config::load(&arg.config);
    match command {
        Command::Run { config } => commands::run(&load(&config)?).await.map(|()| true),
        Command::Compact { config, table } => commands::compact(&load(&config)?, table.as_deref())
            .await
            .map(|()| true),
        Command::Resync { config, table } => commands::resync(&load(&config)?, &table)
            .await
            .map(|()| true),
        Command::Verify {
            config,
            table,
            json,
        } => commands::verify(&load(&config)?, table.as_deref(), json).await,
        Command::Query {
            config,
            format,
            file,
            sql,
        } => {
            let format = match format {
                QueryFormat::Table => OutputFormat::Table,
                QueryFormat::Csv => OutputFormat::Csv,
                QueryFormat::Json => OutputFormat::Json,
            };
            let sql = match (sql, file) {
                (Some(sql), _) => sql,
                (None, Some(file)) => {
                    std::fs::read_to_string(&file).map_err(|source| Error::Io {
                        path: file.clone(),
                        source,
                    })?
                }
                (None, None) => String::new(),
            };
            commands::query(&load(&config)?, &sql, format)
                .await
                .map(|()| true)
        }
        Command::Doctor { config } => commands::doctor(&load(&config)?).await,
        Command::IamPolicy { config } => commands::iam_policy(&load(&config)?).map(|()| true),
        Command::Export {
            config,
            tables,
            to,
            full,
            as_of,
            every,
        } => {
            let options = lakewriter::export::ExportOptions {
                tables,
                destination: lakewriter::config::Secret::new(to),
                full,
                as_of,
            };
            commands::export(&load(&config)?, &options, every.map(|e| e.get()))
                .await
                .map(|()| true)
        }
        Command::Status {
            config,
            json,
            exports_to,
        } => commands::status(&load(&config)?, json, exports_to.as_deref())
            .await
            .map(|()| true),
    }
    .map_err(anyhow::Error::from)
}

/// A duration as the config writes one (`30s`, `1h`), above zero.
fn parse_span(text: &str) -> Result<lakewriter::config::Span, String> {
    let span = lakewriter::config::Span::parse(text)?;
    if span.is_zero() {
        return Err("must be above zero".into());
    }
    Ok(span)
}

/// The default log filter: lakewriter's own events, and only warnings and errors of the
/// dependencies (the Delta kernel alone logs several lines per table load at info).
const DEFAULT_LOG: &str = "warn,lakewriter=info";

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LAKEWRITER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG));
    // colours only for a person at a terminal: a file, a pipe or a journal gets plain text
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
