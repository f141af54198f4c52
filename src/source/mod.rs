//! The PostgreSQL source: knows PostgreSQL and nothing of lakes. It streams a logical slot with
//! pgoutput, decodes the messages with our own decoder ([`pgoutput`]), maps column types and
//! values to Arrow ([`types`]), and takes back, from the pipeline, the durable LSN it may
//! acknowledge.

pub mod changes;
pub mod chunk;
pub mod connection;
pub mod copy_binary;
pub mod pgoutput;
pub mod resync;
pub mod schema;
pub mod setup;
pub mod snapshot;
pub mod stream;
pub mod tls;
pub mod types;

pub use crate::table::{Oid, RelationId};
