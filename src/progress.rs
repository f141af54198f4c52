//! Progress of long work (snapshots, chunked copies beside the stream; compaction later): a
//! live bar per table on a terminal, periodic structured log lines otherwise, so a service's
//! logs show it too.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::table::{CopyPace, CopyProgress};

/// Where progress goes: bars on a terminal, log lines elsewhere.
#[derive(Debug)]
pub struct Progress {
    bars: Option<MultiProgress>,
    interval: Duration,
}

impl Progress {
    /// Bars when stderr is a terminal, log lines every `interval` otherwise.
    pub fn new(interval: Duration) -> Self {
        let bars = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Progress { bars, interval }
    }

    /// Log lines only (tests, services).
    pub fn logs(interval: Duration) -> Self {
        Progress {
            bars: None,
            interval,
        }
    }

    /// Tracks the work `what` (for example `snapshot`) on `table`, with an estimate of its
    /// rows when one is known.
    pub fn table(
        &self,
        what: &'static str,
        table: &str,
        estimated_rows: Option<u64>,
    ) -> TableProgress {
        let bar = self.bars.as_ref().map(|bars| {
            let bar = match estimated_rows {
                Some(total) => ProgressBar::new(total),
                None => ProgressBar::no_length(),
            };
            let template = if estimated_rows.is_some() {
                "{prefix:24} {bar:30} {human_pos:>12}/~{human_len} rows {per_sec:>14} eta {eta}"
            } else {
                "{prefix:24} {spinner} {human_pos:>12} rows {per_sec:>14}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar.set_prefix(format!("{what} {table}"));
            bars.add(bar)
        });
        TableProgress {
            what,
            table: table.to_string(),
            estimated_rows,
            rows: AtomicU64::new(0),
            started: Instant::now(),
            last_log: Mutex::new(Instant::now()),
            interval: self.interval,
            bar,
        }
    }
}

impl Progress {
    /// Tracks the chunked copy of `table` beside the stream, as its commits report it
    /// ([`CopyTracker::update`]).
    pub fn copy(&self, table: &str) -> CopyTracker {
        let bar = self.bars.as_ref().map(|bars| {
            let bar = ProgressBar::no_length();
            if let Ok(style) = ProgressStyle::with_template("{prefix:24} {bar:30} {msg}") {
                bar.set_style(style);
            }
            bar.set_prefix(format!("copy {table}"));
            bars.add(bar)
        });
        CopyTracker {
            table: table.to_string(),
            bar,
            last_log: Instant::now(),
            interval: self.interval,
        }
    }
}

/// Progress of one table's chunked copy beside the stream: the figures `status` shows
/// (`copying 41 % (chunk 812/1970, 52 300 rows/s, ETA 4 min)`), on a bar that follows every
/// update on a terminal, else in a log line at most every interval.
#[derive(Debug)]
pub struct CopyTracker {
    table: String,
    bar: Option<ProgressBar>,
    last_log: Instant,
    interval: Duration,
}

impl CopyTracker {
    /// Reports `progress` (what the table's commits carry) at `pace`. Returns whether a log
    /// line was written.
    pub fn update(&mut self, progress: &CopyProgress, pace: Option<&CopyPace>) -> bool {
        let text = progress.describe(pace);
        if let Some(bar) = &self.bar {
            if let Some(estimate) = progress.estimate.filter(|&e| e > 0) {
                bar.set_length(estimate.max(progress.rows));
            }
            bar.set_position(progress.rows);
            bar.set_message(text);
            return false;
        }
        if self.last_log.elapsed() < self.interval {
            return false;
        }
        self.last_log = Instant::now();
        tracing::info!(
            table = %self.table,
            chunks = progress.chunks,
            total_chunks = progress.total_chunks(),
            rows = progress.rows,
            estimated_rows = progress.estimate,
            rows_per_second = pace.map(|p| p.rows_per_second.round() as u64),
            eta_seconds = pace.and_then(|p| p.eta_seconds),
            progress = %text,
            "copy progress"
        );
        true
    }
}

impl Drop for CopyTracker {
    /// A copy that ended (completed, started again, or its table stopped) takes its bar off.
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Progress of one table's work; shareable across the tasks doing it.
#[derive(Debug)]
pub struct TableProgress {
    what: &'static str,
    table: String,
    estimated_rows: Option<u64>,
    rows: AtomicU64,
    started: Instant,
    last_log: Mutex<Instant>,
    interval: Duration,
    bar: Option<ProgressBar>,
}

impl TableProgress {
    /// Counts `rows` more rows done.
    pub fn add(&self, rows: u64) {
        let done = self.rows.fetch_add(rows, Ordering::Relaxed) + rows;
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            if self.estimated_rows.is_some_and(|total| done > total) {
                bar.set_length(done);
            }
            return;
        }
        let Ok(mut last) = self.last_log.lock() else {
            return;
        };
        if last.elapsed() >= self.interval {
            *last = Instant::now();
            drop(last);
            let elapsed = self.started.elapsed().as_secs_f64().max(1e-3);
            let rate = done as f64 / elapsed;
            let eta = self
                .estimated_rows
                .filter(|&total| total > done && rate > 0.0)
                .map(|total| ((total - done) as f64 / rate).round() as u64);
            tracing::info!(
                work = self.what,
                table = %self.table,
                rows = done,
                estimated_rows = self.estimated_rows,
                rows_per_second = rate.round() as u64,
                eta_seconds = eta,
                "progress"
            );
        }
    }

    /// Rows done so far.
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// Marks the work done and reports its total.
    pub fn finish(&self) {
        let rows = self.rows();
        let seconds = self.started.elapsed().as_secs_f64();
        if let Some(bar) = &self.bar {
            bar.set_length(rows);
            bar.finish();
        }
        tracing::info!(
            work = self.what,
            table = %self.table,
            rows,
            seconds,
            rows_per_second = (rows as f64 / seconds.max(1e-3)).round() as u64,
            "done"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_across_callers() {
        let progress = Progress::logs(Duration::from_millis(0));
        let table = progress.table("snapshot", "public.orders", Some(10));
        table.add(4);
        table.add(8);
        assert_eq!(table.rows(), 12);
        table.finish();
    }

    #[test]
    fn a_copy_is_logged_at_most_once_an_interval_with_its_figures() {
        let progress = CopyProgress {
            chunks: 3,
            rows: 3000,
            ..CopyProgress::start(Some(10_000), 1000)
        };
        let pace = CopyPace {
            rows_per_second: 1000.0,
            eta_seconds: Some(7),
        };
        let mut now = Progress::logs(Duration::from_millis(0)).copy("public.orders");
        assert!(now.update(&progress, Some(&pace)));
        assert!(now.update(&progress, None), "every update is due");
        let mut hourly = Progress::logs(Duration::from_secs(3600)).copy("public.orders");
        assert!(!hourly.update(&progress, Some(&pace)), "not due yet");
    }
}
