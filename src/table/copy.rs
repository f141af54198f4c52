//! How far a chunked copy of a table has got ([`CopyProgress`]): written into every lake
//! commit of the table while the copy runs (beside the LSN checkpoint), so a restart resumes
//! after the last committed chunk, and `status` shows it — with the copy's pace
//! ([`CopyPace`]), measured from when its chunks were committed, so `status` can say it with
//! the writer down too, and `run`'s progress says the same.

use serde::{Deserialize, Serialize};

/// The progress of a table's chunked copy, as its lake commits carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredProgress")]
pub struct CopyProgress {
    /// Chunks committed so far, in all key ranges.
    pub chunks: u64,
    /// Rows the committed chunks read.
    pub rows: u64,
    /// The table's rows as PostgreSQL estimated them when the copy began; `None` when unknown.
    pub estimate: Option<u64>,
    /// Rows per chunk (`source.snapshot_chunk_rows` when the copy began).
    pub chunk_rows: u64,
    /// The key ranges the table is read in, side by side, in key order: one unless the copy
    /// split the table (`source.snapshot_parallelism`). Never empty.
    pub ranges: Vec<KeyRange>,
}

/// One key range of a chunked copy, read chunk after chunk on a connection of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    /// The key the range's next chunk reads after: the last row its committed chunks read,
    /// or the key the range begins after; `None`: from the table's first key. Each key
    /// column in PostgreSQL's text form (a hashed column's sealed).
    pub after: Option<Vec<String>>,
    /// The range's last key (it reads up to it, inclusive); `None`: to the table's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upto: Option<Vec<String>>,
    /// The range's chunks committed.
    #[serde(default)]
    pub chunks: u64,
    /// The range's last chunk is committed.
    #[serde(default)]
    pub done: bool,
}

impl KeyRange {
    /// A range after `after` up to `upto`, none of it read.
    fn new(after: Option<Vec<String>>, upto: Option<Vec<String>>) -> Self {
        KeyRange {
            after,
            upto,
            chunks: 0,
            done: false,
        }
    }
}

/// A [`CopyProgress`] as committed: also as versions before key ranges wrote it (one range,
/// its last key in `after`).
#[derive(Deserialize)]
struct StoredProgress {
    #[serde(default)]
    after: Option<Vec<String>>,
    chunks: u64,
    rows: u64,
    estimate: Option<u64>,
    chunk_rows: u64,
    #[serde(default)]
    ranges: Vec<KeyRange>,
}

impl From<StoredProgress> for CopyProgress {
    fn from(stored: StoredProgress) -> Self {
        let ranges = if stored.ranges.is_empty() {
            vec![KeyRange {
                chunks: stored.chunks,
                ..KeyRange::new(stored.after, None)
            }]
        } else {
            stored.ranges
        };
        CopyProgress {
            chunks: stored.chunks,
            rows: stored.rows,
            estimate: stored.estimate,
            chunk_rows: stored.chunk_rows,
            ranges,
        }
    }
}

impl CopyProgress {
    /// A copy about to read its first chunk, of one key range.
    pub fn start(estimate: Option<u64>, chunk_rows: u64) -> Self {
        CopyProgress {
            chunks: 0,
            rows: 0,
            estimate,
            chunk_rows: chunk_rows.max(1),
            ranges: vec![KeyRange::new(None, None)],
        }
    }

    /// The copy about to start, split at `points` (keys in key order, each the last of its
    /// range): one range more than points.
    pub fn split(mut self, points: Vec<Vec<String>>) -> Self {
        let mut after = None;
        let mut ranges = Vec::with_capacity(points.len() + 1);
        for point in points {
            ranges.push(KeyRange::new(after, Some(point.clone())));
            after = Some(point);
        }
        ranges.push(KeyRange::new(after, None));
        self.ranges = ranges;
        self
    }

    /// Whether every range's last chunk is committed.
    pub fn complete(&self) -> bool {
        self.ranges.iter().all(|r| r.done)
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

    /// The chunks the copy will have read in all, as the estimate says; `None` without one.
    pub fn total_chunks(&self) -> Option<u64> {
        self.estimate
            .filter(|&e| e > 0)
            .map(|estimate| estimate.div_ceil(self.chunk_rows).max(self.chunks + 1))
    }

    /// `copying 41 % (chunk 812/1970, 52 300 rows/s, ETA 4 min)`; without an estimate,
    /// `copying (chunk 812, 52 300 rows/s)`; without a `pace` (fewer than two chunks
    /// committed), `copying 41 % (chunk 812/1970)`.
    pub fn describe(&self, pace: Option<&CopyPace>) -> String {
        let mut inside = match (self.estimate.filter(|&e| e > 0), self.total_chunks()) {
            (Some(estimate), Some(total)) => {
                let percent = (self.rows.saturating_mul(100) / estimate).min(99);
                format!("{percent} % (chunk {}/{total}", self.chunks)
            }
            _ => format!("(chunk {}", self.chunks),
        };
        if let Some(pace) = pace {
            inside.push_str(&format!(
                ", {} rows/s",
                group_thousands(pace.rows_per_second.round() as u64)
            ));
            if let Some(eta) = pace.eta_seconds {
                inside.push_str(&format!(", ETA {}", duration_words(eta)));
            }
        }
        format!("copying {inside})")
    }

    /// The copy's pace, from `commits` (when each of its chunks was committed, in any order)
    /// with this the latest progress; `None` until two chunks were committed apart.
    pub fn pace(&self, commits: &[ChunkCommit]) -> Option<CopyPace> {
        CopyPace::measure(self, commits)
    }
}

/// A commit that brought chunks of a copy in: the copy's progress it carried, and when it
/// landed (milliseconds since the epoch: a snapshot's timestamp, or the writer's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkCommit {
    /// Chunks committed with it (and before).
    pub chunks: u64,
    /// Rows those chunks read.
    pub rows: u64,
    /// When it was committed, in milliseconds since the epoch.
    pub at_ms: i64,
}

impl ChunkCommit {
    /// The commit of `progress` at `at_ms`.
    pub fn of(progress: &CopyProgress, at_ms: i64) -> Self {
        ChunkCommit {
            chunks: progress.chunks,
            rows: progress.rows,
            at_ms,
        }
    }
}

/// The commits of a copy under way that brought its latest chunks in, gathered from the
/// newest commit back (lake snapshots, log entries), for its pace.
#[derive(Debug, Default)]
pub struct LatestChunkCommits {
    commits: Vec<ChunkCommit>,
}

impl LatestChunkCommits {
    /// Takes the next older commit carrying `progress`, landed at `at_ms` when known; `false`
    /// when the walk back should stop: this one is an earlier copy's (more chunks than a later
    /// one), older than the pace needs ([`PACE_CHUNKS`] back), or the copy's emptying commit.
    pub fn take(&mut self, progress: &CopyProgress, at_ms: Option<i64>) -> bool {
        let newest = self.commits.first().map_or(progress.chunks, |c| c.chunks);
        let newer = self.commits.last().map_or(progress.chunks, |c| c.chunks);
        if progress.chunks > newer || progress.chunks + PACE_CHUNKS < newest {
            return false;
        }
        if let Some(at_ms) = at_ms {
            self.commits.push(ChunkCommit::of(progress, at_ms));
        }
        progress.chunks != 0
    }

    /// The commits taken, newest first.
    pub fn into_commits(self) -> Vec<ChunkCommit> {
        self.commits
    }
}

/// How many of a copy's latest chunks its pace is measured over: long enough to smooth out
/// one slow chunk, short enough that it follows the copy as it speeds up or slows down (the
/// stream's load, wider rows in a key range) and that an outage the copy was resumed after
/// leaves the figure once that many chunks were committed since.
pub const PACE_CHUNKS: u64 = 20;

/// How fast a chunked copy reads: rows per second between two of its chunk commits, and the
/// time left at that pace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CopyPace {
    /// Rows read per second.
    pub rows_per_second: f64,
    /// Seconds left until the estimated rows are read; `None` without an estimate, or once
    /// the copy has read more than it (the estimate was low: the end is near but not known).
    pub eta_seconds: Option<u64>,
}

impl CopyPace {
    /// The pace over the latest [`PACE_CHUNKS`] chunks of `commits`, from the commit that
    /// brought in the first of them to the one that brought in the latest, and the time
    /// `progress` has left at it. A chunk count seen in several commits (stream commits and
    /// compactions carry the progress on) counts at its earliest: that one brought it in.
    /// Commits of no chunk (the copy's emptying commit) do not count, so there is no pace
    /// until two chunks were committed in different commits.
    pub fn measure(progress: &CopyProgress, commits: &[ChunkCommit]) -> Option<CopyPace> {
        let mut earliest: std::collections::BTreeMap<u64, ChunkCommit> = Default::default();
        for commit in commits.iter().filter(|c| c.chunks > 0) {
            earliest
                .entry(commit.chunks)
                .and_modify(|e| {
                    if commit.at_ms < e.at_ms {
                        *e = *commit;
                    }
                })
                .or_insert(*commit);
        }
        let (&last_chunks, last) = earliest.last_key_value()?;
        let (_, first) = earliest
            .range(last_chunks.saturating_sub(PACE_CHUNKS).max(1)..)
            .next()?;
        let millis = last.at_ms.checked_sub(first.at_ms)?;
        let rows = last.rows.checked_sub(first.rows)?;
        if last.chunks == first.chunks || millis <= 0 || rows == 0 {
            return None;
        }
        let rows_per_second = rows as f64 * 1000.0 / millis as f64;
        let eta_seconds = progress
            .estimate
            .and_then(|estimate| estimate.checked_sub(progress.rows))
            .filter(|&left| left > 0)
            .map(|left| (left as f64 / rows_per_second).ceil() as u64);
        Some(CopyPace {
            rows_per_second,
            eta_seconds,
        })
    }
}

/// `52 300`: digits in groups of three, as a reader scans a rate.
fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(d);
    }
    out
}

/// `40 s`, `4 min`, `2 h 5 min`, `3 d 4 h`: as precise as an estimate of that size deserves.
fn duration_words(seconds: u64) -> String {
    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    match seconds {
        s if s < MINUTE => format!("{s} s"),
        s if s < HOUR => format!("{} min", (s + MINUTE / 2) / MINUTE),
        s if s < DAY => {
            let minutes = (s + MINUTE / 2) / MINUTE;
            format!("{} h {} min", minutes / 60, minutes % 60)
        }
        s => {
            let hours = (s + HOUR / 2) / HOUR;
            format!("{} d {} h", hours / 24, hours % 24)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_round_trips_and_reads_as_a_percentage() {
        let progress = CopyProgress {
            chunks: 812,
            rows: 812_000,
            estimate: Some(1_970_000),
            chunk_rows: 1000,
            ranges: vec![KeyRange {
                chunks: 812,
                ..KeyRange::new(Some(vec!["41000".into(), "it's".into()]), None)
            }],
        };
        assert_eq!(
            CopyProgress::decode(&progress.encode()),
            Ok(progress.clone())
        );
        // as a version before key ranges committed it
        assert_eq!(
            CopyProgress::decode(
                r#"{"after":["41000","it's"],"chunks":812,"rows":812000,"estimate":1970000,"chunk_rows":1000}"#
            ),
            Ok(progress.clone())
        );
        let split = CopyProgress::start(None, 10).split(vec![vec!["7".into()], vec!["9".into()]]);
        let bounds: Vec<_> = split
            .ranges
            .iter()
            .map(|r| (r.after.clone(), r.upto.clone()))
            .collect();
        let key = |k: &str| Some(vec![k.to_string()]);
        assert_eq!(
            bounds,
            vec![(None, key("7")), (key("7"), key("9")), (key("9"), None)]
        );
        assert_eq!(CopyProgress::decode(&split.encode()), Ok(split.clone()));
        assert!(!split.complete());
        assert_eq!(progress.describe(None), "copying 41 % (chunk 812/1970)");
        let unknown = CopyProgress::start(None, 1000);
        assert_eq!(unknown.describe(None), "copying (chunk 0)");
        assert!(CopyProgress::decode("{").is_err());
    }

    fn at(chunks: u64, rows: u64, seconds: i64) -> ChunkCommit {
        ChunkCommit {
            chunks,
            rows,
            at_ms: 1_700_000_000_000 + seconds * 1000,
        }
    }

    #[test]
    fn the_pace_is_rows_between_the_first_and_latest_chunk_commits_over_their_time_apart() {
        let mut progress = CopyProgress {
            chunks: 812,
            rows: 812_000,
            estimate: Some(1_970_000),
            chunk_rows: 1000,
            ranges: vec![KeyRange::new(Some(vec!["812000".into()]), None)],
        };
        // chunk 792 in at t = 0 s, chunk 812 (20 000 rows later) at t = 20 s; the stream
        // commits and the compaction after them carry 812 on, later, and do not count
        let commits = [
            at(812, 812_000, 45),
            at(812, 812_000, 20),
            at(800, 800_000, 8),
            at(792, 792_000, 0),
            at(700, 700_000, -500),
            at(0, 0, -9_000),
        ];
        let pace = progress.pace(&commits).expect("a pace");
        assert_eq!(pace.rows_per_second, 1000.0);
        // 1 158 000 rows left at 1 000 rows/s
        assert_eq!(pace.eta_seconds, Some(1158));
        assert_eq!(
            progress.describe(Some(&pace)),
            "copying 41 % (chunk 812/1970, 1 000 rows/s, ETA 19 min)"
        );
        // the example of the issue: 52 300 rows/s, 4 minutes left
        let fast = CopyPace {
            rows_per_second: 52_300.4,
            eta_seconds: Some(250),
        };
        assert_eq!(
            progress.describe(Some(&fast)),
            "copying 41 % (chunk 812/1970, 52 300 rows/s, ETA 4 min)"
        );
        // past the estimate: a pace, but no time left to say
        progress.rows = 2_000_000;
        assert_eq!(progress.pace(&commits).map(|p| p.eta_seconds), Some(None));
        // without an estimate: a pace, and no time left either
        progress.estimate = None;
        let unknown = progress.pace(&commits);
        assert_eq!(
            progress.describe(unknown.as_ref()),
            "copying (chunk 812, 1 000 rows/s)"
        );
    }

    #[test]
    fn no_pace_until_two_chunks_are_committed_apart() {
        let progress = CopyProgress::start(Some(10_000), 1000);
        // the emptying commit and one chunk
        assert_eq!(progress.pace(&[at(0, 0, 0), at(1, 1000, 30)]), None);
        // one chunk commit carried on by later commits
        assert_eq!(progress.pace(&[at(1, 1000, 30), at(1, 1000, 60)]), None);
        // two chunks in one commit, then nothing
        assert_eq!(progress.pace(&[at(2, 2000, 30)]), None);
        // two chunk commits in the same millisecond say nothing of a pace
        assert_eq!(progress.pace(&[at(1, 1000, 30), at(2, 2000, 30)]), None);
        assert!(progress.pace(&[at(1, 1000, 30), at(2, 2000, 31)]).is_some());
        assert_eq!(progress.pace(&[]), None);
    }

    #[test]
    fn the_pace_follows_the_latest_chunks_so_an_outage_leaves_it() {
        // 10 chunks a second, then an hour down, then 21 chunks at 1 chunk a second: the
        // latest 20 were read at 100 rows/s
        let mut commits: Vec<ChunkCommit> = (1..=10).map(|c| at(c, c * 100, 0)).collect();
        commits
            .iter_mut()
            .enumerate()
            .for_each(|(i, c)| c.at_ms += i as i64 * 100);
        let last = 11 + PACE_CHUNKS;
        commits.extend((11..=last).map(|c| at(c, c * 100, 3_600 + c as i64)));
        let progress = CopyProgress {
            chunks: last,
            rows: last * 100,
            ..CopyProgress::start(None, 100)
        };
        let pace = progress.pace(&commits).expect("a pace");
        assert_eq!(pace.rows_per_second, 100.0, "{pace:?}");
    }

    #[test]
    fn rates_and_times_read_at_a_glance() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1000), "1 000");
        assert_eq!(group_thousands(1_234_567), "1 234 567");
        assert_eq!(duration_words(45), "45 s");
        assert_eq!(duration_words(89), "1 min");
        assert_eq!(duration_words(90), "2 min");
        assert_eq!(duration_words(2 * 3600 + 5 * 60 + 10), "2 h 5 min");
        assert_eq!(duration_words(3 * 86400 + 4 * 3600 + 100), "3 d 4 h");
    }
}
