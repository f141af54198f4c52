//! PostgreSQL column types to Arrow: [`resolve_type`] turns a type OID into a [`PgType`] (through
//! the catalog for user-defined types), [`arrow_field`] maps it to an Arrow [`Field`] (lossless
//! first, as DESIGN.md's table says), and [`ColumnBuilder`] parses PostgreSQL's text output of
//! values straight from bytes into Arrow arrays.
//!
//! The text format parsed is what pgoutput (text mode), `COPY … TO` (after unescaping) and a
//! text-mode `SELECT` produce with `DateStyle=ISO`, `IntervalStyle=postgres`, `TimeZone=UTC` and
//! `extra_float_digits=3`: the session settings every lakewriter connection pins.
//!
//! [`Field`]: arrow::datatypes::Field

mod builder;
mod catalog;
mod mapping;
mod text;

use std::sync::Arc;

pub use builder::{ColumnBuilder, Wire};
pub use catalog::{PgType, resolve_type};
pub use mapping::{PG_TYPE_METADATA_KEY, arrow_field};
pub use text::{DATE_INFINITY, DATE_NEG_INFINITY, TIMESTAMP_INFINITY, TIMESTAMP_NEG_INFINITY};

use super::Oid;

/// How the types without an exact Arrow counterpart are mapped. The defaults are lossless or
/// refuse: nothing is rounded or truncated silently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeOptions {
    /// The scale of the `decimal(38, scale)` an unconstrained `numeric` column becomes (default
    /// 9, within 0..=38). A value with more integer digits than `38 - scale`, or with non-zero
    /// digits past `scale` decimals, is refused with a [`TypeError::Value`].
    pub numeric_scale: i8,
    /// Carry as strings (their exact text) the numerics a `decimal(38)` cannot declare:
    /// unconstrained `numeric` and `numeric(p, s)` with `p` above 38 (default false: the former
    /// becomes `decimal(38, numeric_scale)`, the latter is refused).
    pub unconstrained_numeric_as_string: bool,
}

impl Default for TypeOptions {
    fn default() -> Self {
        TypeOptions {
            numeric_scale: 9,
            unconstrained_numeric_as_string: false,
        }
    }
}

/// A type that cannot be resolved or mapped, or a value that cannot be parsed. Messages name the
/// column and its type, never the value (row data stays out of logs): at most its length.
#[derive(Debug, thiserror::Error)]
pub enum TypeError {
    /// `pg_type` has no row for this OID (the type was dropped, or the OID is corrupt).
    #[error("type oid {oid} does not exist in pg_type")]
    UnknownOid {
        /// The OID looked up.
        oid: Oid,
    },

    /// The catalog query failed (connection lost, permission denied).
    #[error("looking up type oid {oid} in pg_type: {source}")]
    Catalog {
        /// The OID looked up.
        oid: Oid,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// The catalog row describes something no column can have (a pseudo-type, a domain chain
    /// deeper than PostgreSQL allows).
    #[error("type oid {oid} ({name}): {reason}")]
    BadCatalogEntry {
        /// The OID looked up.
        oid: Oid,
        /// Its name as the catalog spells it.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The column's type has no Arrow mapping under the options in force.
    #[error("column {column}: type {pg_type} cannot be mapped to Arrow: {reason}")]
    Unmappable {
        /// The column.
        column: String,
        /// The PostgreSQL type, with its modifier (`numeric(50,2)`).
        pg_type: String,
        /// Why, and what to change.
        reason: String,
    },

    /// A [`ColumnBuilder`] was asked for an Arrow type it has no text parser for.
    #[error("column {column}: no PostgreSQL text parser builds Arrow type {data_type}")]
    UnsupportedArrowType {
        /// The column.
        column: String,
        /// The Arrow type, as Arrow displays it.
        data_type: String,
    },

    /// A value was refused: malformed text, or a value the Arrow type cannot hold.
    #[error("column {column} ({pg_type}): value of {len} bytes refused: {reason}")]
    Value {
        /// The column.
        column: Arc<str>,
        /// The PostgreSQL type, or the Arrow type when the field does not say.
        pg_type: Arc<str>,
        /// The value's length in bytes (never the value).
        len: usize,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// Arrow refused the finished buffers (a bug in this module, reported rather than panicking).
    #[error("column {column}: building the Arrow array: {source}")]
    Arrow {
        /// The column.
        column: Arc<str>,
        /// Arrow's error.
        #[source]
        source: arrow::error::ArrowError,
    },
}

impl TypeError {
    /// Whether trying again may help: only a failed catalog query over a lost connection does;
    /// a type or value that was refused is refused again.
    pub fn is_retryable(&self) -> bool {
        match self {
            TypeError::Catalog { source, .. } => {
                source.is_closed() || source.as_db_error().is_none()
            }
            _ => false,
        }
    }
}
