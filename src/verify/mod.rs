//! `query` and `verify`: DataFusion over the lake, through the catalog, and the proof that the
//! lake equals the source.

pub mod compare;
mod delta;
pub mod lake;
pub mod query;
