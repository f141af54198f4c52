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

/// The application name lakewriter's sessions show in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "lakewriter";

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

/// The tokio-postgres settings of `source`.
pub fn pg_config(source: &SourceConfig) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&source.host)
        .port(source.port)
        .user(&source.user)
        .dbname(&source.database)
        .application_name(APPLICATION_NAME)
        .options(SESSION_OPTIONS)
        .connect_timeout(source.connect_timeout.get().max(Duration::from_millis(1)));
    if !source.password.is_empty() {
        config.password(source.password.expose());
    }
    config
}

/// Opens an ordinary session and drives it in the background.
pub async fn connect(source: &SourceConfig) -> Result<Client> {
    let tls = tls(source)?;
    let mut config = pg_config(source);
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
/// at `start` (the lowest checkpoint of the lake's tables).
pub fn replication_config(
    source: &SourceConfig,
    start: crate::Lsn,
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
    .with_application_name(APPLICATION_NAME))
}
