//! Maintenance that keeps lake tables fast to read, through the catalog like every writer:
//! `compact` rewrites files with their equality deletes applied.

pub mod compact;
