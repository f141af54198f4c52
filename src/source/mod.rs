//! The PostgreSQL source: knows PostgreSQL and nothing of lakes. It streams a logical slot with
//! pgoutput, decodes the messages with our own decoder ([`pgoutput`]), maps column types and
//! values to Arrow ([`types`]), and takes back, from the pipeline, the durable LSN it may
//! acknowledge.

pub mod changes;
pub mod connection;
pub mod copy_binary;
pub mod pgoutput;
pub mod schema;
pub mod setup;
pub mod snapshot;
pub mod stream;
pub mod tls;
pub mod types;

use std::fmt;

/// A PostgreSQL object id of a type (`pg_type.oid`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Oid(pub u32);

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Oid({})", self.0)
    }
}

/// A table's object id (`pg_class.oid`), as pgoutput's Relation messages name it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelationId(pub u32);

impl fmt::Display for RelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for RelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelationId({})", self.0)
    }
}
