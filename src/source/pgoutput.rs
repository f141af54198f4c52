//! The pgoutput decoder (being written).
