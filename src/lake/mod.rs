//! Reading the lake, for every command that needs it (`query`, `verify`, `compact`, and what
//! comes next): one entry point per question, whatever the table format.
//!
//! - "the live rows of these tables": [`session`], a DataFusion session with each lake table
//!   registered as `namespace.table` — Iceberg through its catalog and manifests, with
//!   merge-on-read of equality deletes as a hash anti-join and of other engines' position
//!   deletes as row selections ([`iceberg`]); Delta through
//!   deltalake's table provider ([`delta`]) — and the [`LakeTable`] facts of each;
//! - "the files and deletes of this snapshot": [`live_files`], the live data and delete files
//!   of an Iceberg snapshot, with their sequence numbers and partitions, and
//!   [`files_frame`], the live rows of a chosen set of them (what `compact` rewrites);
//! - "what changed since version A": [`changes`], the live rows of the keys touched after A
//!   and the touched keys that are gone (what `export` merges into PostgreSQL).
//!
//! It sits below `verify`, `maintenance` and `export`, beside `sink`, and reads through the catalog,
//! never around it.

mod changes;
mod delta;
pub(crate) mod iceberg;
mod table;

use datafusion::prelude::SessionContext;

use crate::catalog::CatalogTable;
use crate::config::{Config, TableFormat};
use crate::error::Result;

pub use changes::{AsOf, LakeChanges, LakeVersion, ReadFrom, changes};
pub(crate) use iceberg::{
    LiveFile, LiveFiles, PositionDeleteFile, files_frame, key_columns, live_files, load_positions,
    manifest_list, quoted, register_location, register_object_store,
};
pub use table::{LakeTable, reference};

/// A DataFusion session over the lake tables of `config` (only `only` when given), each
/// registered as `namespace.table`, and what each table is.
pub async fn session(
    config: &Config,
    only: Option<&CatalogTable>,
) -> Result<(SessionContext, Vec<LakeTable>)> {
    match config.sink.format {
        TableFormat::Iceberg => iceberg::session(config, only).await,
        TableFormat::Delta => delta::session(config, only).await,
    }
}
