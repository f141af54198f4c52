//! Maintenance that keeps lake tables fast to read, through the catalog like every writer:
//! `compact` rewrites files with their equality deletes applied, then expires old snapshots
//! and removes orphan files.

pub mod cleanup;
pub mod compact;
