//! Maintenance that keeps lake tables fast to read, through the catalog like every writer:
//! `compact` rewrites Iceberg files with their equality deletes applied, then expires old
//! snapshots and removes orphan files (`compact`, `cleanup`); on Delta tables it optimizes,
//! vacuums and checkpoints the log (`delta`).

pub mod cleanup;
pub mod compact;
pub mod delta;
