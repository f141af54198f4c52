//! The commands of the binary, one library function each, so that tests and embedders call
//! exactly what the CLI calls. A command that is not built yet says so with
//! [`crate::Error::NotBuilt`] (exit code 2): it never pretends to succeed.

use crate::config::Config;
use crate::error::Result;

pub use crate::verify::query::OutputFormat;

/// `lakewriter iam-policy`: prints the least IAM policy the configuration needs.
pub fn iam_policy(config: &Config) -> Result<()> {
    let policy = crate::access::iam_policy(config)?;
    let text = serde_json::to_string_pretty(&policy).map_err(|e| crate::Error::Io {
        path: "stdout".into(),
        source: std::io::Error::other(e),
    })?;
    // written, not printed: a closed pipe (`| head`) is an error to report, not a panic
    std::io::Write::write_all(&mut std::io::stdout(), format!("{text}\n").as_bytes()).map_err(
        |source| crate::Error::Io {
            path: "stdout".into(),
            source,
        },
    )
}

/// `lakewriter run`: initial snapshot of the tables not yet in the lake, then streaming, until
/// SIGTERM or SIGINT (which flush, commit and exit 0).
pub async fn run(config: &Config) -> Result<()> {
    let config = std::sync::Arc::new(config.clone());
    // bound before anything else, so a taken address fails the start and names itself
    let served = serve_metrics(&config)?;
    let result = run_pipeline(config).await;
    if let (Err(e), Some(m)) = (&result, crate::metrics::installed()) {
        m.error(e);
    }
    for task in served {
        task.abort();
    }
    result
}

/// Starts `/metrics`, `/healthz` and `/readyz` on `[metrics] listen`, with the task that
/// samples the source's positions, when an address is set.
fn serve_metrics(config: &std::sync::Arc<Config>) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let Some(addr) = config.metrics.listen else {
        return Ok(Vec::new());
    };
    let listener = crate::metrics::server::bind(addr)?;
    let metrics = crate::metrics::install(config);
    metrics.beat();
    let server = tokio::spawn(async move {
        if let Err(e) = crate::metrics::server::serve(listener, metrics).await {
            tracing::error!(listen = %addr, error = %e, "the metrics endpoint stopped");
        }
    });
    let sampler = tokio::spawn(crate::metrics::sampler::run(
        config.clone(),
        metrics,
        SAMPLE_INTERVAL,
    ));
    Ok(vec![server, sampler])
}

/// How often the source's positions (WAL end, slot) are sampled for the metrics.
const SAMPLE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

async fn run_pipeline(config: std::sync::Arc<Config>) -> Result<()> {
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stopping: committing what was received, then acknowledging");
        let _ = stop.send(true);
    });
    match config.sink.format {
        crate::config::TableFormat::Iceberg => {
            let sink = crate::sink::iceberg::IcebergSink::from_config(&config).await?;
            let compaction = scheduled_compaction(config.clone());
            let result = crate::pipeline::service::run(config, sink, shutdown).await;
            // a rewrite cut short leaves only unreferenced files, which a later cleanup removes
            if let Some(task) = compaction {
                task.abort();
            }
            result.map(|_| ())
        }
        crate::config::TableFormat::Delta => {
            let sink = crate::sink::delta::DeltaSink::from_config(&config).await?;
            let compaction = scheduled_compaction(config.clone());
            let result = crate::pipeline::service::run(config, sink, shutdown).await;
            // an optimize cut short leaves only files no version references, which a later
            // vacuum removes
            if let Some(task) = compaction {
                task.abort();
            }
            result.map(|_| ())
        }
    }
}

/// `compact` every `[compaction] interval` beside the writer (none when it is zero): both
/// commit by compare-and-swap (Delta: a put that fails when the version exists), and an
/// Iceberg rewrite keeps the writer's deletes applying.
fn scheduled_compaction(config: std::sync::Arc<Config>) -> Option<tokio::task::JoinHandle<()>> {
    let every = config.compaction.interval.get();
    if every.is_zero() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut timer = tokio::time::interval(every);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // the first tick is immediate: the first compaction waits one interval
        timer.tick().await;
        loop {
            timer.tick().await;
            match compact_tables(&config, None).await {
                Ok(outcomes) => {
                    if let Some(m) = crate::metrics::installed() {
                        outcomes.iter().for_each(|o| m.compacted(o));
                    }
                    let rewritten = outcomes.iter().filter(|o| o.skipped.is_none()).count();
                    tracing::info!(
                        tables = outcomes.len(),
                        rewritten,
                        "scheduled compaction done"
                    );
                }
                Err(e) => {
                    if let Some(m) = crate::metrics::installed() {
                        m.error_kind("compaction");
                    }
                    tracing::warn!(error = %e, "scheduled compaction failed; the next one retries")
                }
            }
        }
    }))
}

/// SIGTERM (how service managers stop a process) or SIGINT (Ctrl-C).
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `lakewriter compact`: rewrite each table's small files (Iceberg: and the ones hit by
/// equality deletes), then remove what no snapshot or version needs, for every table or just
/// `table`.
pub async fn compact(config: &Config, table: Option<&str>) -> Result<()> {
    let outcomes = compact_tables(config, table).await?;
    crate::maintenance::compact::print(&outcomes);
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.failed.is_some())
        .map(|o| o.table.as_str())
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    Err(crate::Error::Sink {
        table: failed.join(", "),
        message: format!(
            "compaction failed for {} of {} tables (the others were compacted)",
            failed.len(),
            outcomes.len()
        ),
        retryable: false,
    })
}

/// Compaction of the config's format: Iceberg's rewrite, expiry and orphan removal, or
/// Delta's optimize, vacuum and log checkpoint.
async fn compact_tables(
    config: &Config,
    table: Option<&str>,
) -> Result<Vec<crate::maintenance::compact::Outcome>> {
    match config.sink.format {
        crate::config::TableFormat::Iceberg => {
            crate::maintenance::compact::run(config, table).await
        }
        crate::config::TableFormat::Delta => crate::maintenance::delta::run(config, table).await,
    }
}

/// `lakewriter resync`: ask the writer to copy `table` again, online, in chunks beside the
/// stream (see `source::resync`); prints what was asked.
pub async fn resync(config: &Config, table: &str) -> Result<()> {
    let asked = crate::source::resync::request(config, table).await?;
    println!(
        "asked to copy {} again (request at LSN {} in the WAL of slot {})",
        asked.table, asked.lsn, config.source.slot
    );
    if asked.writer_running {
        println!("the running writer copies it now, in chunks; `lakewriter status` shows the copy");
    } else {
        println!(
            "no writer is streaming the slot now: the next `lakewriter run` takes the request up"
        );
    }
    Ok(())
}

/// `lakewriter verify`: compare the lake with PostgreSQL row by row; `Ok(true)` when every
/// table is equal.
pub async fn verify(config: &Config, table: Option<&str>, json: bool) -> Result<bool> {
    crate::verify::compare::run(config, table, json).await
}

/// `lakewriter query`: DataFusion SQL over every lake table of the config, as
/// `namespace.table`, printed to stdout.
pub async fn query(config: &Config, sql: &str, format: OutputFormat) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    crate::verify::query::run(config, sql, format, &mut out).await
}

/// `lakewriter doctor`: check the source and the sink before a run; `Ok(true)` when a run
/// would start.
pub async fn doctor(config: &Config) -> Result<bool> {
    let report = crate::doctor::check(config).await;
    for finding in &report.findings {
        println!("{finding}");
    }
    let (errors, warnings) = (
        report.count(crate::doctor::Severity::Error),
        report.count(crate::doctor::Severity::Warning),
    );
    if report.passed() {
        println!("\nready to run ({warnings} warning(s))");
    } else {
        println!("\nlakewriter run would fail: {errors} error(s), {warnings} warning(s)");
    }
    Ok(report.passed())
}

/// `lakewriter status`: per table, checkpoint LSN, lag, snapshots and files; as JSON with
/// the metrics' field names when `json`; and the exports recorded in the destination
/// `exports_to`, when given.
pub async fn status(config: &Config, json: bool, exports_to: Option<&str>) -> Result<()> {
    crate::status::print(config, json, exports_to).await
}

/// `lakewriter export`: each table of `options` into its destination, once, or every `every`
/// until SIGTERM or SIGINT. A signal during a run abandons its transaction (nothing of it is
/// applied) and exits cleanly; with `every`, a failure that may pass (a destination that is
/// down) is logged and retried at the next run.
pub async fn export(
    config: &Config,
    options: &crate::export::ExportOptions,
    every: Option<std::time::Duration>,
) -> Result<()> {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = stop.send(true);
    });
    loop {
        let outcome = tokio::select! {
            outcome = crate::export::run(config, options) => outcome,
            _ = stopped.wait_for(|s| *s) => {
                tracing::info!("stopping: the export in flight is rolled back");
                return Ok(());
            }
        };
        match (outcome, every) {
            (Ok(done), _) => {
                for table in done {
                    println!("{table}");
                }
            }
            (Err(e), Some(_)) if e.is_retryable() => {
                tracing::warn!(error = %e, "export failed; the next run retries");
            }
            (Err(e), _) => return Err(e),
        }
        let Some(every) = every else {
            return Ok(());
        };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.wait_for(|s| *s) => {
                tracing::info!("stopping between exports");
                return Ok(());
            }
        }
    }
}
