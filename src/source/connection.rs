//! Connections to the source database: ordinary ones (catalog queries, COPY) through
//! tokio-postgres, and the replication connection's settings for pgwire-replication. Every
//! session pins the settings that decide how values are rendered as text (DateStyle, TimeZone,
//! extra_float_digits, IntervalStyle), so the text the decoder parses never depends on the
//! server's or the role's defaults.

use std::time::Duration;

use tokio_postgres::Client;

use crate::config::SourceConfig;
use crate::error::{Error, Result};
use crate::source::tls::{ClientCertificate, SourceTls};

/// Session settings that fix the text form of values: ISO dates, UTC timestamps, floats that
/// round-trip exactly.
pub const SESSION_OPTIONS: &str =
    "-c DateStyle=ISO,YMD -c TimeZone=UTC -c extra_float_digits=3 -c IntervalStyle=postgres";

/// The application name lakewriter's sessions show in `pg_stat_activity`, followed by the
/// session's role (`lakewriter run: stream`), so an operator can tell them apart.
pub const APPLICATION_NAME: &str = "lakewriter";

/// The role of the ordinary session `run` keeps beside the stream: it reads the catalog at
/// start, copies tables that join while streaming, and acknowledges on the slot at the end.
pub const CONTROL: &str = "run: control";
/// The role of the replication session and of the catalog session beside it.
pub const STREAM: &str = "run: stream";
/// The role of the sessions that copy a table in an exported snapshot.
pub const COPY: &str = "run: copy";

/// How long a closed ordinary session is retried before the operation fails: a server
/// restart or a failover to a replica at the same address takes seconds to a few minutes.
const RECONNECT_WINDOW: Duration = Duration::from_secs(300);

/// The application name of a session with `role` (`None`: the plain name).
pub fn application_name(role: Option<&str>) -> String {
    match role {
        Some(role) => format!("{APPLICATION_NAME} {role}"),
        None => APPLICATION_NAME.to_string(),
    }
}

/// Where a config connects, without the password: `user@host:port/database`.
pub fn describe(source: &SourceConfig) -> String {
    format!(
        "{}@{}:{}/{}",
        source.user, source.host, source.port, source.database
    )
}

/// The TLS settings of `source` (reads `sslrootcert` when a mode checks certificates, and the
/// client certificate when one is set).
pub fn tls(source: &SourceConfig) -> Result<SourceTls> {
    let client = match (&source.sslcert, &source.sslkey) {
        (Some(cert), Some(key)) => Some(ClientCertificate {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    SourceTls::new(source.sslmode, source.sslrootcert.as_deref(), client)
}

/// The tokio-postgres settings of `source`, for a session with `role`.
pub fn pg_config(source: &SourceConfig, role: Option<&str>) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&source.host)
        .port(source.port)
        .user(&source.user)
        .dbname(&source.database)
        .application_name(application_name(role))
        .options(SESSION_OPTIONS)
        .connect_timeout(source.connect_timeout.get().max(Duration::from_millis(1)));
    if !source.password.is_empty() {
        config.password(source.password.expose());
    }
    config
}

/// Opens an ordinary session and drives it in the background.
pub async fn connect(source: &SourceConfig) -> Result<Client> {
    connect_as(source, None).await
}

/// [`connect`], for a session with `role` (see [`application_name`]).
pub async fn connect_as(source: &SourceConfig, role: Option<&str>) -> Result<Client> {
    let tls = tls(source)?;
    let mut config = pg_config(source, role);
    config.ssl_mode(tls.pg_mode());
    let (client, connection) = config
        .connect(tls.connector())
        .await
        .map_err(|e| Error::postgres(format!("connect to {}", describe(source)), e))?;
    let target = describe(source);
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(target = %target, error = %e, "source connection closed");
        }
    });
    Ok(client)
}

/// The replication connection's settings for the slot and publication of `source`, starting
/// at `start` (the lowest checkpoint of the lake's tables), for a session with `role`.
pub fn replication_config(
    source: &SourceConfig,
    start: crate::Lsn,
    role: &str,
) -> Result<pgwire_replication::ReplicationConfig> {
    let tls = tls(source)?;
    Ok(pgwire_replication::ReplicationConfig::new(
        source.host.clone(),
        source.user.clone(),
        source.password.expose().to_string(),
        source.database.clone(),
        source.slot.clone(),
        source.publication.clone(),
    )
    .with_port(source.port)
    .with_tls(tls.replication(&source.host))
    .with_start_lsn(start.into())
    .with_options(SESSION_OPTIONS)
    .with_application_name(application_name(Some(role))))
}

/// An ordinary session that outlives its connection: when the server closed it (a restart, a
/// failover to a replica at the same address, `pg_terminate_backend`), the next use opens a
/// new one, with backoff, and says so once in the log.
#[derive(Debug)]
pub struct Session {
    source: SourceConfig,
    role: &'static str,
    client: Client,
    /// An error said the server ended the session, whether or not the client has seen the
    /// socket close yet: the next use opens a new one.
    ended: std::sync::atomic::AtomicBool,
}

impl Session {
    /// Opens the session of `role` on `source`.
    pub async fn open(source: &SourceConfig, role: &'static str) -> Result<Session> {
        let client = connect_as(source, Some(role)).await?;
        Ok(Session {
            source: source.clone(),
            role,
            client,
            ended: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The session's client, opened again first when the server has closed it.
    pub async fn client(&mut self) -> Result<&Client> {
        if self.client.is_closed() || self.ended.load(std::sync::atomic::Ordering::Relaxed) {
            self.reopen().await?;
        }
        Ok(&self.client)
    }

    /// Whether `error`, met using this session, came from its connection going away: the
    /// operation may be retried on a new one.
    pub fn lost(&self, error: &tokio_postgres::Error) -> bool {
        // the server's last word before it closes a session (terminated, shutting down, a
        // connection failure) may reach the query before the client sees the socket close
        let ended_by_server = error.code().is_some_and(|c| {
            matches!(c.code(), "57P01" | "57P02" | "57P03") || c.code().starts_with("08")
        });
        let lost = self.client.is_closed() || error.is_closed() || ended_by_server;
        if lost {
            self.ended.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        lost
    }

    async fn reopen(&mut self) -> Result<()> {
        tracing::warn!(
            role = self.role,
            source = %describe(&self.source),
            "the source closed a session; opening it again"
        );
        let deadline = tokio::time::Instant::now() + RECONNECT_WINDOW;
        let mut backoff = Duration::from_millis(100);
        loop {
            match connect_as(&self.source, Some(self.role)).await {
                Ok(client) => {
                    self.client = client;
                    self.ended
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(role = self.role, "source session open again");
                    return Ok(());
                }
                Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(role = self.role, error = %e, "source still unreachable");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }
}
