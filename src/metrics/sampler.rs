//! The source's positions, sampled on a session of their own: the server's WAL end and the
//! slot's confirmed flush and retained WAL, as `pg_replication_slots` reports them. A failed
//! sample marks the source down and the next one connects again.

use std::time::Duration;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::source::connection;

/// The role of the sampling session in `pg_stat_activity`.
pub const ROLE: &str = "run: metrics";

/// One reading of the source.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// The server's WAL position (the replay position on a standby).
    pub wal_end: Lsn,
    /// The slot, when it exists.
    pub slot: Option<SlotSample>,
}

/// The slot's figures.
#[derive(Debug, Clone, Copy)]
pub struct SlotSample {
    /// What the slot has confirmed as flushed.
    pub confirmed_flush: Lsn,
    /// WAL the slot keeps the server from removing, in bytes.
    pub retained_bytes: i64,
    /// Whether a session streams from it.
    pub active: bool,
}

/// Reads the positions of `config`'s source on `client`.
pub async fn sample(client: &tokio_postgres::Client, config: &Config) -> Result<Sample> {
    let slot = &config.source.slot;
    let row = client
        .query_one(
            "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
               ELSE pg_current_wal_lsn() END)::text, \
             s.confirmed_flush_lsn::text, \
             (CASE WHEN pg_is_in_recovery() THEN pg_wal_lsn_diff(pg_last_wal_replay_lsn(), \
               s.restart_lsn) ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn) \
               END)::bigint, \
             s.active \
             FROM (SELECT 1) AS one \
             LEFT JOIN pg_replication_slots s ON s.slot_name = $1",
            &[slot],
        )
        .await
        .map_err(|e| Error::postgres(format!("read the positions of slot {slot}"), e))?;
    let wal_end = row
        .get::<_, Option<String>>(0)
        .and_then(|t| t.parse::<Lsn>().ok())
        .unwrap_or(Lsn::ZERO);
    let confirmed = row
        .get::<_, Option<String>>(1)
        .and_then(|t| t.parse::<Lsn>().ok());
    let slot = confirmed.map(|confirmed_flush| SlotSample {
        confirmed_flush,
        retained_bytes: row.get::<_, Option<i64>>(2).unwrap_or(0).max(0),
        active: row.get::<_, Option<bool>>(3).unwrap_or(false),
    });
    Ok(Sample { wal_end, slot })
}

/// Samples the source into `metrics` every `every`, until the task is aborted.
pub async fn run(config: std::sync::Arc<Config>, metrics: &'static Metrics, every: Duration) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut timer = tokio::time::interval(every);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        timer.tick().await;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = match connection::connect_as(&config.source, Some(ROLE)).await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, "metrics: cannot reach the source");
                    metrics.source_sample(None);
                    continue;
                }
            };
        }
        let Some(session) = client.as_ref() else {
            continue;
        };
        match sample(session, &config).await {
            Ok(s) => metrics.source_sample(Some(s)),
            Err(e) => {
                tracing::debug!(error = %e, "metrics: sampling the source failed");
                metrics.source_sample(None);
                client = None;
            }
        }
    }
}
