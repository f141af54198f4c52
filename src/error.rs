//! The one error type of the library. Each kind says whether retrying can help, so loops decide
//! their policy from the kind alone; every message names what it is about (file, table, column,
//! LSN) because the person reading it is an operator at three in the morning.

use std::path::PathBuf;

/// A library result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in lakewriter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid: a parse error, an unknown key, a contradiction.
    #[error("config {path}: {message}")]
    Config {
        /// The file the configuration came from.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },

    /// A command or option exists in the interface but is not built yet.
    #[error("{what} is not built yet")]
    NotBuilt {
        /// The command or feature.
        what: &'static str,
    },

    /// Reading or writing a local file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The source database is not in a state lakewriter can replicate from (a missing slot or
    /// publication, a table without a key, …), or sent something it cannot read.
    #[error("source: {message}")]
    Source {
        /// What is wrong, naming the table, column or LSN, and the fix when there is one.
        message: String,
    },

    /// The replication connection failed or was refused.
    #[error("replication: {context}: {source}")]
    Replication {
        /// What lakewriter was doing.
        context: String,
        /// The replication client's error.
        #[source]
        source: pgwire_replication::PgWireError,
    },

    /// A lake table could not be prepared, written or committed (a file that could not be
    /// written, a schema change the lake cannot take, a catalog commit lost too often).
    #[error("sink: table {table}: {message}")]
    Sink {
        /// The lake table (`namespace.name`), or the source table when there is none yet.
        table: String,
        /// What failed, naming the column, file or LSN.
        message: String,
        /// Whether trying again later may succeed (storage or catalog hiccups, lost races).
        retryable: bool,
    },

    /// `export` cannot put a lake table's rows into its destination table: a column or key
    /// that does not match, a type without a PostgreSQL counterpart.
    #[error("export into {table}: {message}")]
    Export {
        /// The destination table (`schema.table`).
        table: String,
        /// What is wrong, naming the column or key.
        message: String,
    },

    /// A PostgreSQL query or connection failed.
    #[error("postgres: {context}: {}", describe_postgres(source))]
    Postgres {
        /// What lakewriter was doing.
        context: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl Error {
    /// Whether the same operation may succeed if tried again (after a backoff): lost connections
    /// do, bad configuration does not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Config { .. }
            | Error::NotBuilt { .. }
            | Error::Source { .. }
            | Error::Export { .. } => false,
            Error::Sink { retryable, .. } => *retryable,
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
            ),
            Error::Postgres { source, .. } => match source.as_db_error() {
                Some(db) => is_transient_sqlstate(db.code().code()),
                None => true,
            },
            Error::Replication { source, .. } => match source {
                pgwire_replication::PgWireError::Io(_)
                | pgwire_replication::PgWireError::Task(_) => true,
                pgwire_replication::PgWireError::Server(message) => message
                    .rsplit_once("SQLSTATE ")
                    .is_some_and(|(_, code)| is_transient_sqlstate(code.trim_end_matches(')'))),
                _ => false,
            },
        }
    }

    /// Builds a configuration error for `path`.
    pub fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Builds a PostgreSQL error with what lakewriter was doing.
    pub fn postgres(context: impl Into<String>, source: tokio_postgres::Error) -> Self {
        Error::Postgres {
            context: context.into(),
            source,
        }
    }
}

/// tokio-postgres prints only the kind of an error ("db error"); the server's message, detail
/// and hint, or the underlying I/O or configuration cause, are what an operator needs.
fn describe_postgres(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut text = format!("{} ({})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            text.push_str(&format!("; detail: {detail}"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
        return text;
    }
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// Server errors that a retry after a pause can get past: connection failures (class 08), the
/// server shutting down or restarting (57P01-57P03), too many connections (53300), and a slot
/// still held by a connection that is going away (55006).
fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "53300" | "55006" | "40001"
        )
}
