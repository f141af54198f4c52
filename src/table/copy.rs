//! How far a chunked copy of a table has got ([`CopyProgress`]): written into every lake
//! commit of the table while the copy runs (beside the LSN checkpoint), so a restart resumes
//! after the last committed chunk, and `status` shows it.

use serde::{Deserialize, Serialize};

/// The progress of a table's chunked copy, as its lake commits carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyProgress {
    /// The key of the last row the committed chunks read, each key column in PostgreSQL's
    /// text form (key order); `None` before the first chunk.
    pub after: Option<Vec<String>>,
    /// Chunks committed so far.
    pub chunks: u64,
    /// Rows the committed chunks read.
    pub rows: u64,
    /// The table's rows as PostgreSQL estimated them when the copy began; `None` when unknown.
    pub estimate: Option<u64>,
    /// Rows per chunk (`source.snapshot_chunk_rows` when the copy began).
    pub chunk_rows: u64,
}

impl CopyProgress {
    /// A copy about to read its first chunk.
    pub fn start(estimate: Option<u64>, chunk_rows: u64) -> Self {
        CopyProgress {
            after: None,
            chunks: 0,
            rows: 0,
            estimate,
            chunk_rows: chunk_rows.max(1),
        }
    }

    /// The text a commit carries.
    pub fn encode(&self) -> String {
        // a struct of strings and integers always serializes
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads the text a commit carries.
    pub fn decode(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("not a lakewriter copy progress: {e}"))
    }

    /// `copying 41 % (chunk 812/1970)`; without an estimate, `copying (chunk 812)`.
    pub fn describe(&self) -> String {
        match self.estimate.filter(|&e| e > 0) {
            Some(estimate) => {
                let total = estimate.div_ceil(self.chunk_rows).max(self.chunks + 1);
                let percent = (self.rows.saturating_mul(100) / estimate).min(99);
                format!("copying {percent} % (chunk {}/{total})", self.chunks)
            }
            None => format!("copying (chunk {})", self.chunks),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_round_trips_and_reads_as_a_percentage() {
        let progress = CopyProgress {
            after: Some(vec!["41000".into(), "it's".into()]),
            chunks: 812,
            rows: 812_000,
            estimate: Some(1_970_000),
            chunk_rows: 1000,
        };
        assert_eq!(
            CopyProgress::decode(&progress.encode()),
            Ok(progress.clone())
        );
        assert_eq!(progress.describe(), "copying 41 % (chunk 812/1970)");
        let unknown = CopyProgress::start(None, 1000);
        assert_eq!(unknown.describe(), "copying (chunk 0)");
        assert!(CopyProgress::decode("{").is_err());
    }
}
