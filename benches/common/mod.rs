//! What the benchmarks share: their options (from `--name value` or `LAKEWRITER_BENCH_NAME`),
//! the machine's load and a process's CPU time, a timed run, and the references they measure
//! against (a COPY drained, pg_recvlogical draining a slot).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use futures::StreamExt;
use lakewriter::Lsn;

use super::support::{TestDb, stack};

/// The options a benchmark was given: the environment (`LAKEWRITER_BENCH_SEED_ROWS` for
/// `seed-rows`) first, then the arguments, which win.
pub struct Options {
    bench: &'static str,
    given: BTreeMap<String, String>,
}

impl Options {
    /// Reads the options `known` of benchmark `bench` (its file name, for the messages); an
    /// unknown option or a missing value stops the benchmark with a message.
    pub fn read(bench: &'static str, known: &[&str]) -> Options {
        let mut given: BTreeMap<String, String> = known
            .iter()
            .filter_map(|option| {
                let var = format!(
                    "LAKEWRITER_BENCH_{}",
                    option.to_uppercase().replace('-', "_")
                );
                std::env::var(var).ok().map(|v| (option.to_string(), v))
            })
            .collect();
        let mut argv = std::env::args().skip(1);
        while let Some(arg) = argv.next() {
            // cargo bench hands a harness-less bench `--bench`
            if arg == "--bench" {
                continue;
            }
            let name = arg.strip_prefix("--").unwrap_or_else(|| {
                panic!(
                    "unexpected argument {arg:?}: the header of benches/{bench} lists the options"
                )
            });
            let (name, value) = match name.split_once('=') {
                Some((name, value)) => (name.to_string(), value.to_string()),
                None => {
                    let value = argv
                        .next()
                        .unwrap_or_else(|| panic!("--{name} takes a value"));
                    (name.to_string(), value)
                }
            };
            assert!(
                known.contains(&name.as_str()),
                "unknown option --{name}: the header of benches/{bench} lists the options"
            );
            given.insert(name, value);
        }
        Options { bench, given }
    }

    /// The option's text, if given.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.given.get(name).map(String::as_str)
    }

    /// A whole number (`1_000_000` allowed), or `default`.
    pub fn number(&self, name: &str, default: u64) -> u64 {
        self.text(name)
            .map_or(default, |text| Self::parse_number(name, text))
    }

    /// [`Options::number`] as a count of at least one.
    pub fn count(&self, name: &str, default: usize) -> usize {
        usize::try_from(self.number(name, default as u64))
            .unwrap_or_else(|_| panic!("--{name} is too large"))
            .max(1)
    }

    /// A whole number in `text`, the value of option `name`.
    pub fn parse_number(name: &str, text: &str) -> u64 {
        text.trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("--{name} {text:?}: a whole number is expected"))
    }

    /// `--only`: the comma-separated parts to run, each one of `parts` (all of them by
    /// default).
    pub fn parts(&self, parts: &[&str]) -> Vec<String> {
        let only: Vec<String> = self
            .text("only")
            .map_or_else(|| parts.join(","), str::to_string)
            .split(',')
            .map(|part| part.trim().to_string())
            .filter(|part| !part.is_empty())
            .collect();
        for part in &only {
            assert!(
                parts.contains(&part.as_str()),
                "--only: unknown part {part:?} of benches/{} (the parts: {})",
                self.bench,
                parts.join(",")
            );
        }
        only
    }
}

/// The machine's load average over 1, 5 and 15 minutes.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// CPU seconds of process `pid` ("self" for this one): its own, and its waited-for children's.
pub fn cpu_of(pid: &str) -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0.0, 0.0);
    };
    // the command name, in parentheses, may hold spaces: count fields after its end
    let Some((_, after_name)) = stat.rsplit_once(')') else {
        return (0.0, 0.0);
    };
    // after the name come field 3 (state) onwards; utime, stime, cutime, cstime are 14 to 17,
    // in clock ticks of 1/100 s on Linux
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let seconds = |number: usize| -> f64 {
        fields
            .get(number - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .map_or(0.0, |ticks| ticks as f64 / 100.0)
    };
    (seconds(14) + seconds(15), seconds(16) + seconds(17))
}

/// CPU seconds of this process: its own, and its waited-for children's.
pub fn cpu_seconds() -> (f64, f64) {
    cpu_of("self")
}

/// One timed run: wall-clock and CPU seconds.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub seconds: f64,
    pub cpu: f64,
}

/// The fastest of `runs`.
pub fn fastest(runs: &[Run]) -> Run {
    runs.iter()
        .copied()
        .min_by(|a, b| a.seconds.total_cmp(&b.seconds))
        .expect("at least one run")
}

/// `query` (a `COPY … TO STDOUT`) drained and counted: the run (this process's CPU) and the
/// bytes received.
pub async fn copy_drain(client: &tokio_postgres::Client, query: &str) -> (Run, u64) {
    let cpu_before = cpu_seconds().0;
    let started = Instant::now();
    let mut stream = std::pin::pin!(client.copy_out(query).await.expect("start the COPY"));
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        bytes += chunk.expect("a chunk of the COPY").len() as u64;
    }
    let run = Run {
        seconds: started.elapsed().as_secs_f64(),
        cpu: cpu_seconds().0 - cpu_before,
    };
    (run, bytes)
}

/// pg_recvlogical drains `slot` (pgoutput, the test database's publication) up to `end` into
/// `file`: its run (its CPU) and the bytes it wrote.
pub fn recvlogical_drain(db: &TestDb, slot: &str, end: Lsn, file: &Path) -> (Run, u64) {
    let mut command = stack().pg_program("pg_recvlogical");
    command
        .args(["--dbname", &db.name, "--slot", slot, "--start", "--no-loop"])
        .args(["--option", "proto_version=1"])
        .arg("--option")
        .arg(format!("publication_names={}", db.publication))
        .arg("--endpos")
        .arg(end.to_string())
        .arg("--file")
        .arg(file);
    let children_before = cpu_seconds().1;
    let started = Instant::now();
    let output = command.output().expect("run pg_recvlogical");
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds().1 - children_before;
    assert!(
        output.status.success(),
        "pg_recvlogical failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let written = std::fs::metadata(file).map_or(0, |m| m.len());
    assert!(written > 0, "pg_recvlogical wrote nothing");
    (Run { seconds, cpu }, written)
}
