//! lakewriter copies a PostgreSQL database into lakehouse tables — Apache Iceberg v2 (AWS Glue,
//! Amazon S3 Tables, an Iceberg REST catalog or a local SQLite catalog) and Delta Lake — from
//! logical replication, exactly once.
//!
//! A tour of the crate (the README has the whole picture):
//!
//! - [`config`]: the one TOML file that describes a pipeline, with environment overrides.
//! - [`source`]: PostgreSQL — the replication stream, our pgoutput decoder, types to Arrow.
//! - [`pipeline`]: per-table buffers, one final state per key, the flush policy, the durable LSN.
//! - [`sink`]: lake table formats behind one trait (Iceberg, Delta Lake).
//! - [`lsn`]: [`Lsn`], the WAL position every checkpoint is made of.
//! - [`table`]: the table model no layer owns: [`table::TableId`] (the `schema.table` every
//!   buffer and lake table hangs on), a table's shape and its changes.
//! - [`access`]: the least AWS IAM policy a configuration needs (`lakewriter iam-policy`).
//! - [`catalog`]: the pointer from a lake table to its current Iceberg metadata, swapped by
//!   compare-and-swap in AWS Glue, a local SQLite file (pyiceberg's schema) or S3 Tables, or
//!   as a REST catalog's requirements and updates; Glue also registers Delta tables for Athena.
//! - [`commands`]: one function per command of the binary (`run`, `compact`, `verify`, `query`,
//!   `doctor`, `status`, `export`); `main.rs` only parses arguments and calls them.
//! - [`status`]: per lake table (Iceberg or Delta), checkpoint, lag, snapshots or log version,
//!   and files.
//! - [`doctor`]: checks the source and the sink before a run, each finding with its fix.
//! - [`cloud`]: AWS clients (S3, Glue) from the configuration.
//! - [`progress`]: bars on a terminal, log lines elsewhere, for long work.
//! - [`maintenance`]: `compact`, which rewrites Iceberg files with their deletes applied, or
//!   optimizes, vacuums and checkpoints Delta tables.
//! - [`lake`]: reading the lake — DataFusion sessions over its tables (Iceberg's merge-on-read
//!   as an anti-join; Delta through deltalake's table provider), a snapshot's live files — for
//!   `query`, `verify` and `compact`.
//! - [`masking`]: per-column policies (hash, redact, drop) applied where values are decoded,
//!   so nothing downstream holds an unmasked value.
//! - [`metrics`]: what `run` measures (Prometheus), served with `/healthz` and `/readyz`.
//! - [`verify`]: `query` and `verify`: SQL over the lake, and the row-by-row comparison with
//!   the source.
//! - [`export`]: `export`, lake tables back into PostgreSQL tables, incrementally and exactly
//!   once (the merge and the record of the exported version in one transaction).
//! - [`error`]: the one error type, whose kinds say whether to retry.

pub mod access;
pub mod catalog;
pub mod cloud;
pub mod commands;
pub mod config;
pub mod doctor;
pub mod error;
pub mod export;
pub mod lake;
pub mod lsn;
pub mod maintenance;
pub mod masking;
pub mod metrics;
pub mod pipeline;
pub mod progress;
pub mod sink;
pub mod source;
pub mod status;
pub mod table;
pub mod verify;

pub use config::Config;
pub use error::{Error, Result};
pub use lsn::Lsn;
