//! The pipeline: the only place where source and sink meet. It buffers each table's committed
//! transactions, reduces them to one final state per key, commits them through the sink on
//! the flush policy, and computes the durable LSN — the only position acknowledged to
//! PostgreSQL.

pub mod reduce;
