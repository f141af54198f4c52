//! `lakewriter doctor`: checks the source and the sink before a run and prints every finding
//! with the fix for it. A run would fail exactly when a finding is an error, and then the
//! command exits non-zero.

mod masking;
mod privileges;
mod sink;
mod source;

use std::fmt;

use crate::config::Config;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// As it should be.
    Ok,
    /// Works, but worth attention (retained WAL, a table outside the publication, …).
    Warning,
    /// `lakewriter run` would fail.
    Error,
}

/// One checked fact, with the fix when it is not as it should be.
#[derive(Debug, Clone)]
pub struct Finding {
    /// How bad it is.
    pub severity: Severity,
    /// What was checked, and what was found.
    pub message: String,
    /// How to fix it (SQL, a setting), when there is something to fix.
    pub fix: Option<String>,
}

impl Finding {
    fn ok(message: impl Into<String>) -> Self {
        Finding {
            severity: Severity::Ok,
            message: message.into(),
            fix: None,
        }
    }

    fn warning(message: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            severity: Severity::Warning,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }

    fn error(message: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            severity: Severity::Error,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.severity {
            Severity::Ok => "ok     ",
            Severity::Warning => "warning",
            Severity::Error => "error  ",
        };
        write!(f, "{tag} {}", self.message)?;
        if let Some(fix) = &self.fix {
            for (i, line) in fix.lines().enumerate() {
                let lead = if i == 0 { "fix:" } else { "    " };
                write!(f, "\n        {lead} {line}")?;
            }
        }
        Ok(())
    }
}

/// Everything doctor found, source first.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The findings in the order they were checked.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether `lakewriter run` would start: no finding is an error.
    pub fn passed(&self) -> bool {
        self.findings.iter().all(|f| f.severity != Severity::Error)
    }

    /// Findings of `severity`.
    pub fn count(&self, severity: Severity) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == severity)
            .count()
    }
}

/// Checks the source database and the sink of `config`.
pub async fn check(config: &Config) -> Report {
    let mut report = Report::default();
    source::check(config, &mut report.findings).await;
    sink::check(config, &mut report.findings).await;
    if let Some(finding) = metrics_endpoint(config) {
        report.findings.push(finding);
    }
    report
}

/// Whether `run` could serve its metrics on `[metrics] listen`: the address is bound and
/// released at once. A writer already running on it makes this an error too, as a second
/// writer could not start.
fn metrics_endpoint(config: &Config) -> Option<Finding> {
    let addr = config.metrics.listen?;
    Some(match crate::metrics::server::bind(addr) {
        Ok(_) => Finding::ok(format!("metrics: {addr} is free to serve /metrics on")),
        Err(e) => Finding::error(
            format!("metrics: {e}"),
            "choose a free address for [metrics] listen (or stop what holds it)",
        ),
    })
}
