//! `query` and `verify`: SQL over the lake (read by [`crate::lake`]), and the proof that the
//! lake equals the source.

pub mod compare;
pub mod query;
