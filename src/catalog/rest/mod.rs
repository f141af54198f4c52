//! An Iceberg REST catalog (Polaris, Lakekeeper, Unity, Nessie, Gravitino, Apache Iceberg's
//! own reference): the server, not the writer, writes each metadata file. The writer still
//! stages its change as the next metadata (as for every catalog); a commit sends the
//! difference from the metadata it was staged on as `requirements` and `updates`
//! ([`diff::TableChange`]), and the server applies it only if the requirements still hold —
//! the REST form of the compare-and-swap. A refused requirement (409) is a conflict: reload,
//! rebase, retry.
//!
//! A new table is registered (`register`) at the first metadata file the writer wrote, so its
//! uuid and field ids are exactly the writer's. A commit whose answer is lost (a 5xx, a
//! timeout, a dropped connection) reloads the table and looks for the commit's own snapshot
//! before anything is tried again, so a commit is never applied twice.

mod auth;
mod diff;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use iceberg::spec::TableMetadata;
use serde::Deserialize;
use serde_json::json;

use self::auth::{Auth, OAuth2, SigV4};
use self::diff::TableChange;
use super::{Catalog, CatalogError, CatalogTable, Pointer, VersionToken};
use crate::config::RestCatalogConfig;

/// Metadata versions kept per table: the one a commit was staged on is almost always the
/// newest, or one just before it.
const CACHED_VERSIONS: usize = 4;

/// A catalog behind the Iceberg REST protocol. Cheap to clone (the client and token are
/// shared).
#[derive(Debug, Clone)]
pub struct RestCatalog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    /// `{uri}/v1/{prefix}/`, to which `namespaces/…` is appended.
    base: url::Url,
    auth: Auth,
    describe: String,
    /// Metadata the server sent, by table and metadata location: what a commit diffs against.
    cache: Mutex<HashMap<CatalogTable, Versions>>,
}

/// A table's latest metadata versions, oldest first, by metadata location.
type Versions = VecDeque<(String, Arc<TableMetadata>)>;

/// `GET /v1/config`'s answer.
#[derive(Debug, Deserialize)]
struct ConfigResponse {
    #[serde(default)]
    defaults: HashMap<String, String>,
    #[serde(default)]
    overrides: HashMap<String, String>,
}

/// A table as `GET …/tables/{t}`, `register` and a commit answer it.
#[derive(Deserialize)]
struct TableResponse {
    #[serde(rename = "metadata-location", default)]
    metadata_location: Option<String>,
    metadata: TableMetadata,
}

#[derive(Deserialize)]
struct ListTablesResponse {
    #[serde(default)]
    identifiers: Vec<TableIdentifier>,
    #[serde(rename = "next-page-token", default)]
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct TableIdentifier {
    name: String,
}

/// How a request ended without an HTTP answer, or with one.
enum Sent {
    Answer(reqwest::StatusCode, String),
    /// No answer: the request may or may not have reached the server.
    Lost(String),
}

/// A transport error as one line with its causes (reqwest's display leaves them out).
pub(crate) fn transport_message(error: &reqwest::Error) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// The message of a REST error body (`{"error": {"message", "type", "code"}}`), else the
/// body itself, shortened.
pub(crate) fn error_message(body: &str) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: ErrorModel,
    }
    #[derive(Deserialize)]
    struct ErrorModel {
        #[serde(default)]
        message: String,
        #[serde(rename = "type", default)]
        kind: String,
    }
    match serde_json::from_str::<ErrorBody>(body) {
        Ok(ErrorBody { error }) if error.kind.is_empty() => error.message,
        Ok(ErrorBody { error }) => format!("{}: {}", error.kind, error.message),
        Err(_) => {
            let body = body.trim();
            match body.char_indices().nth(300) {
                Some((cut, _)) => format!("{}…", &body[..cut]),
                None if body.is_empty() => "(no message)".to_string(),
                None => body.to_string(),
            }
        }
    }
}

/// The secret held in the environment variable `name`, which `key` of `[sink.rest]` names.
fn secret_from_env(name: &str, key: &str, describe: &str) -> Result<String, CatalogError> {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => Ok(value.trim().to_string()),
        _ => Err(CatalogError::Rest {
            catalog: describe.to_string(),
            context: format!("read sink.rest.{key}"),
            message: format!(
                "the environment variable {name} (named by sink.rest.{key}) is not set or empty"
            ),
            retryable: false,
        }),
    }
}

impl RestCatalog {
    /// Connects to the catalog of `config`: reads its credentials from the environment, and
    /// asks `GET /v1/config` for the server's settings (its `prefix`, and a `uri` it may
    /// move clients to), honouring `defaults` under and `overrides` over the client's own.
    pub async fn connect(config: &RestCatalogConfig) -> Result<RestCatalog, CatalogError> {
        let uri = config.uri.trim_end_matches('/').to_string();
        let describe = format!("rest catalog {uri}");
        let fail = |context: &str, message: String, retryable: bool| CatalogError::Rest {
            catalog: describe.clone(),
            context: context.to_string(),
            message,
            retryable,
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| fail("build the HTTP client", transport_message(&e), false))?;
        let auth = if let Some(name) = &config.token_env {
            Auth::Bearer(secret_from_env(name, "token_env", &describe)?)
        } else if let Some(name) = &config.credential_env {
            let credential = secret_from_env(name, "credential_env", &describe)?;
            let token_uri = config
                .oauth2_server_uri
                .clone()
                .unwrap_or_else(|| format!("{uri}/v1/oauth/tokens"));
            let grant = OAuth2::new(token_uri, &credential, config.scope().to_string())
                .ok_or_else(|| {
                    fail(
                        "read sink.rest.credential_env",
                        format!(
                            "the environment variable {name} must hold client_id:client_secret"
                        ),
                        false,
                    )
                })?;
            Auth::OAuth2(grant)
        } else if config.sigv4 {
            let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
            if let Some(region) = &config.signing_region {
                loader = loader.region(aws_config::Region::new(region.clone()));
            }
            let shared = loader.load().await;
            let region = shared.region().map(|r| r.to_string()).ok_or_else(|| {
                fail(
                    "sign with SigV4",
                    "no AWS region: set sink.rest.signing_region or AWS_REGION".into(),
                    false,
                )
            })?;
            let credentials = shared.credentials_provider().ok_or_else(|| {
                fail(
                    "sign with SigV4",
                    "the AWS SDK found no credential provider".into(),
                    false,
                )
            })?;
            let name = config.signing_name.clone().unwrap_or_default();
            Auth::SigV4(SigV4::new(name, region, credentials))
        } else {
            Auth::None
        };

        let root = url::Url::parse(&format!("{uri}/"))
            .map_err(|e| fail("parse sink.rest.uri", e.to_string(), false))?;
        let mut config_url = root
            .join("v1/config")
            .map_err(|e| fail("parse sink.rest.uri", e.to_string(), false))?;
        if let Some(warehouse) = &config.warehouse {
            config_url
                .query_pairs_mut()
                .append_pair("warehouse", warehouse);
        }
        let provisional = RestCatalog {
            inner: Arc::new(Inner {
                http,
                base: root.clone(),
                auth,
                describe: describe.clone(),
                cache: Mutex::new(HashMap::new()),
            }),
        };
        let context = "read the catalog's configuration (GET /v1/config)";
        let body = match provisional
            .send(context, |http| http.get(config_url.clone()))
            .await?
        {
            Sent::Answer(status, body) if status.is_success() => body,
            Sent::Answer(status, body) => {
                return Err(provisional.status_error(context, status, &body));
            }
            Sent::Lost(message) => return Err(fail(context, message, true)),
        };
        let answer: ConfigResponse = serde_json::from_str(&body)
            .map_err(|e| fail(context, format!("not a config response: {e}"), false))?;
        let mut properties = answer.defaults;
        if let Some(warehouse) = &config.warehouse {
            properties.insert("warehouse".into(), warehouse.clone());
        }
        properties.extend(answer.overrides);
        let root = match properties.get("uri") {
            Some(moved) if moved.trim_end_matches('/') != uri => {
                let moved_to = url::Url::parse(&format!("{}/", moved.trim_end_matches('/')))
                    .map_err(|e| {
                        fail(context, format!("the server's uri {moved:?}: {e}"), false)
                    })?;
                // credentials sent over TLS stay on TLS
                if root.scheme() == "https" && moved_to.scheme() != "https" {
                    return Err(fail(
                        context,
                        format!("the server moves clients to {moved:?}, which is not https"),
                        false,
                    ));
                }
                moved_to
            }
            _ => root,
        };
        let mut base = root
            .join("v1/")
            .map_err(|e| fail(context, e.to_string(), false))?;
        if let Some(prefix) = properties.get("prefix").filter(|p| !p.is_empty()) {
            base.path_segments_mut()
                .map_err(|()| fail(context, "the uri cannot take a path".into(), false))?
                .pop_if_empty()
                .extend(prefix.split('/').filter(|s| !s.is_empty()))
                .push("");
        }
        let inner = Arc::into_inner(provisional.inner)
            .ok_or_else(|| fail(context, "the client is still in use".into(), false))?;
        Ok(RestCatalog {
            inner: Arc::new(Inner { base, ..inner }),
        })
    }

    /// The authentication in use, described (never the secret), for `doctor`.
    pub fn auth_description(&self) -> String {
        self.inner.auth.describe()
    }

    /// Whether `namespace` exists (`GET …/namespaces/{namespace}`).
    pub async fn namespace_exists(&self, namespace: &str) -> Result<bool, CatalogError> {
        let context = format!("get namespace {namespace}");
        let url = self.url(&[namespace])?;
        match self.send(&context, |http| http.get(url.clone())).await? {
            Sent::Answer(status, _) if status.is_success() => Ok(true),
            Sent::Answer(status, _) if status == reqwest::StatusCode::NOT_FOUND => Ok(false),
            Sent::Answer(status, body) => Err(self.status_error(&context, status, &body)),
            Sent::Lost(message) => Err(self.error(&context, message, true)),
        }
    }

    /// `{base}/namespaces/{segments…}`, each segment escaped.
    fn url(&self, segments: &[&str]) -> Result<url::Url, CatalogError> {
        let mut url = self.inner.base.clone();
        url.path_segments_mut()
            .map_err(|()| self.error("build a request URL", "the uri cannot take a path", false))?
            .pop_if_empty()
            .push("namespaces")
            .extend(segments);
        Ok(url)
    }

    fn error(&self, context: &str, message: impl Into<String>, retryable: bool) -> CatalogError {
        CatalogError::Rest {
            catalog: self.inner.describe.clone(),
            context: context.to_string(),
            message: message.into(),
            retryable,
        }
    }

    /// An HTTP error answer as an error; 5xx and 429 may pass.
    fn status_error(&self, context: &str, status: reqwest::StatusCode, body: &str) -> CatalogError {
        let hint = match status.as_u16() {
            401 => " (check the token or credential in the environment variable sink.rest names)",
            403 => {
                " (refused: a wrong signature or key with sigv4, or the principal lacks a \
                 privilege on this catalog, namespace or table)"
            }
            _ => "",
        };
        self.error(
            context,
            format!("HTTP {status}: {}{hint}", error_message(body)),
            status.is_server_error() || status.as_u16() == 429,
        )
    }

    /// Sends the request `build` makes, with the current credentials; a 401 with OAuth2
    /// renews the token and sends it once more.
    async fn send(
        &self,
        context: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Sent, CatalogError> {
        let inner = &self.inner;
        let mut renewed = false;
        loop {
            let mut request = build(&inner.http)
                .header("accept", "application/json")
                .build()
                .map_err(|e| self.error(context, transport_message(&e), false))?;
            if let Err(e) = inner.auth.apply(&inner.http, &mut request).await {
                return Err(self.error(context, e.message, e.retryable));
            }
            let answer = match inner.http.execute(request).await {
                Ok(answer) => answer,
                Err(e) => return Ok(Sent::Lost(transport_message(&e))),
            };
            let status = answer.status();
            if status == reqwest::StatusCode::UNAUTHORIZED && !renewed && inner.auth.refused() {
                renewed = true;
                continue;
            }
            return match answer.text().await {
                Ok(body) => Ok(Sent::Answer(status, body)),
                Err(e) => Ok(Sent::Lost(transport_message(&e))),
            };
        }
    }

    /// Keeps `metadata` as the version at `location` of `table`.
    fn remember(&self, table: &CatalogTable, location: &str, metadata: Arc<TableMetadata>) {
        let mut cache = self
            .inner
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let versions = cache.entry(table.clone()).or_default();
        versions.retain(|(l, _)| l != location);
        versions.push_back((location.to_string(), metadata));
        while versions.len() > CACHED_VERSIONS {
            versions.pop_front();
        }
    }

    fn cached(&self, table: &CatalogTable, location: &str) -> Option<Arc<TableMetadata>> {
        self.inner
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(table)
            .and_then(|versions| versions.iter().find(|(l, _)| l == location))
            .map(|(_, m)| m.clone())
    }

    /// A table answer as a pointer, kept in the cache.
    fn accept(
        &self,
        table: &CatalogTable,
        context: &str,
        body: &str,
    ) -> Result<(Pointer, Arc<TableMetadata>), CatalogError> {
        let answer: TableResponse = serde_json::from_str(body)
            .map_err(|e| self.error(context, format!("not a table response: {e}"), false))?;
        let Some(location) = answer.metadata_location else {
            return Err(CatalogError::NotIceberg {
                catalog: self.inner.describe.clone(),
                table: table.clone(),
                message: "the server answered without a metadata location (a staged create?)"
                    .into(),
            });
        };
        let metadata = Arc::new(answer.metadata);
        self.remember(table, &location, metadata.clone());
        Ok((
            Pointer {
                previous_metadata_location: metadata
                    .metadata_log()
                    .last()
                    .map(|m| m.metadata_file.clone()),
                token: VersionToken(location.clone()),
                metadata_location: location,
            },
            metadata,
        ))
    }

    /// The table's pointer and metadata, `None` when it (or its namespace) does not exist.
    async fn load_table(
        &self,
        table: &CatalogTable,
    ) -> Result<Option<(Pointer, Arc<TableMetadata>)>, CatalogError> {
        let context = format!("load table {table}");
        let url = self.url(&[&table.namespace, "tables", &table.name])?;
        match self.send(&context, |http| http.get(url.clone())).await? {
            Sent::Answer(status, body) if status.is_success() => {
                self.accept(table, &context, &body).map(Some)
            }
            Sent::Answer(status, _) if status == reqwest::StatusCode::NOT_FOUND => Ok(None),
            Sent::Answer(status, body) => Err(self.status_error(&context, status, &body)),
            Sent::Lost(message) => Err(self.error(&context, message, true)),
        }
    }

    /// The metadata `expected` names: kept from its load, else loaded again (the table must
    /// still be at it, or the commit has lost already).
    async fn base(
        &self,
        table: &CatalogTable,
        expected: &Pointer,
    ) -> Result<Arc<TableMetadata>, CatalogError> {
        if let Some(metadata) = self.cached(table, &expected.metadata_location) {
            return Ok(metadata);
        }
        match self.load_table(table).await? {
            Some((pointer, metadata))
                if pointer.metadata_location == expected.metadata_location =>
            {
                Ok(metadata)
            }
            Some(_) => Err(self.conflict(table, expected)),
            None => Err(CatalogError::TableNotFound {
                catalog: self.inner.describe.clone(),
                table: table.clone(),
            }),
        }
    }

    fn conflict(&self, table: &CatalogTable, expected: &Pointer) -> CatalogError {
        CatalogError::Conflict {
            catalog: self.inner.describe.clone(),
            table: table.clone(),
            expected: expected.metadata_location.clone(),
        }
    }

    /// After a commit whose outcome is unknown (`cause`): reloads the table and says whether
    /// `change` is in it. Landed: the table's pointer. Not landed: a retryable error (the
    /// retry stages again on the reloaded table). Unreadable: a retryable error, and the next
    /// attempt looks for the change again before staging.
    async fn resolve_unknown(
        &self,
        table: &CatalogTable,
        change: &TableChange,
        context: &str,
        cause: String,
    ) -> Result<Pointer, CatalogError> {
        match self.load_table(table).await {
            Ok(Some((pointer, metadata))) if change.landed_in(&metadata) => {
                tracing::info!(
                    catalog = %self.inner.describe,
                    table = %table,
                    metadata = %pointer.metadata_location,
                    cause = %cause,
                    "the commit's answer was lost, and the reloaded table holds it"
                );
                Ok(pointer)
            }
            Ok(Some(_)) => Err(self.error(
                context,
                format!("{cause}; the reloaded table does not hold the commit: not applied"),
                true,
            )),
            Ok(None) => Err(CatalogError::TableNotFound {
                catalog: self.inner.describe.clone(),
                table: table.clone(),
            }),
            Err(e) => Err(self.error(
                context,
                format!(
                    "{cause}; whether the commit was applied is unknown (the table could not \
                     be reloaded: {e})"
                ),
                true,
            )),
        }
    }
}

impl Catalog for RestCatalog {
    fn describe(&self) -> &str {
        &self.inner.describe
    }

    fn writes_metadata(&self) -> bool {
        true
    }

    fn known_metadata(&self, table: &CatalogTable, pointer: &Pointer) -> Option<TableMetadata> {
        self.cached(table, &pointer.metadata_location)
            .map(|m| m.as_ref().clone())
    }

    async fn ensure_namespace(&self, namespace: &str) -> Result<(), CatalogError> {
        if self.namespace_exists(namespace).await? {
            return Ok(());
        }
        let context = format!("create namespace {namespace}");
        let url = self.url(&[])?;
        let body = json!({ "namespace": [namespace], "properties": {} });
        match self
            .send(&context, |http| http.post(url.clone()).json(&body))
            .await?
        {
            Sent::Answer(status, _) if status.is_success() => Ok(()),
            // another writer created it meanwhile
            Sent::Answer(status, _) if status == reqwest::StatusCode::CONFLICT => Ok(()),
            Sent::Answer(status, body) => Err(self.status_error(&context, status, &body)),
            Sent::Lost(message) => Err(self.error(&context, message, true)),
        }
    }

    async fn load(&self, table: &CatalogTable) -> Result<Option<Pointer>, CatalogError> {
        Ok(self.load_table(table).await?.map(|(pointer, _)| pointer))
    }

    async fn create(
        &self,
        table: &CatalogTable,
        metadata_location: &str,
        _metadata: &TableMetadata,
    ) -> Result<Pointer, CatalogError> {
        let context = format!("register table {table} at {metadata_location}");
        let url = self.url(&[&table.namespace, "register"])?;
        let body = json!({ "name": table.name, "metadata-location": metadata_location });
        match self
            .send(&context, |http| http.post(url.clone()).json(&body))
            .await?
        {
            Sent::Answer(status, body) if status.is_success() => {
                Ok(self.accept(table, &context, &body)?.0)
            }
            Sent::Answer(status, _) if status == reqwest::StatusCode::CONFLICT => {
                Err(CatalogError::AlreadyExists {
                    catalog: self.inner.describe.clone(),
                    table: table.clone(),
                })
            }
            Sent::Answer(status, _) if status == reqwest::StatusCode::NOT_FOUND => {
                Err(CatalogError::NamespaceNotFound {
                    catalog: self.inner.describe.clone(),
                    namespace: table.namespace.clone(),
                })
            }
            Sent::Answer(status, body) => Err(self.status_error(&context, status, &body)),
            Sent::Lost(message) => {
                // registered or not: a table at exactly this file is the writer's own
                match self.load_table(table).await {
                    Ok(Some((pointer, _))) if pointer.metadata_location == metadata_location => {
                        Ok(pointer)
                    }
                    Ok(Some(_)) => Err(CatalogError::AlreadyExists {
                        catalog: self.inner.describe.clone(),
                        table: table.clone(),
                    }),
                    _ => Err(self.error(&context, message, true)),
                }
            }
        }
    }

    async fn commit(
        &self,
        table: &CatalogTable,
        expected: &Pointer,
        _new_metadata_location: &str,
        metadata: &TableMetadata,
    ) -> Result<Pointer, CatalogError> {
        let base = self.base(table, expected).await?;
        let change = TableChange::between(&base, metadata).map_err(|refused| {
            CatalogError::Inexpressible {
                catalog: self.inner.describe.clone(),
                table: table.clone(),
                change: refused.0,
            }
        })?;
        if change.is_empty() {
            return Ok(expected.clone());
        }
        let context = format!("commit to table {table}");
        let url = self.url(&[&table.namespace, "tables", &table.name])?;
        let body = json!({
            "identifier": { "namespace": [table.namespace], "name": table.name },
            "requirements": change.requirements,
            "updates": change.updates,
        });
        match self
            .send(&context, |http| http.post(url.clone()).json(&body))
            .await?
        {
            Sent::Answer(status, body) if status.is_success() => {
                Ok(self.accept(table, &context, &body)?.0)
            }
            Sent::Answer(status, _) if status == reqwest::StatusCode::CONFLICT => {
                Err(self.conflict(table, expected))
            }
            Sent::Answer(status, _) if status == reqwest::StatusCode::NOT_FOUND => {
                Err(CatalogError::TableNotFound {
                    catalog: self.inner.describe.clone(),
                    table: table.clone(),
                })
            }
            Sent::Answer(status, body) if status.is_server_error() => {
                let cause = format!("HTTP {status}: {}", error_message(&body));
                self.resolve_unknown(table, &change, &context, cause).await
            }
            Sent::Answer(status, body) => Err(self.status_error(&context, status, &body)),
            Sent::Lost(cause) => self.resolve_unknown(table, &change, &context, cause).await,
        }
    }

    async fn list(&self, namespace: &str) -> Result<Vec<CatalogTable>, CatalogError> {
        let context = format!("list tables of {namespace}");
        let mut tables = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let mut url = self.url(&[namespace, "tables"])?;
            if let Some(token) = &page {
                url.query_pairs_mut().append_pair("pageToken", token);
            }
            let answer = match self.send(&context, |http| http.get(url.clone())).await? {
                Sent::Answer(status, body) if status.is_success() => body,
                Sent::Answer(status, _) if status == reqwest::StatusCode::NOT_FOUND => {
                    return Ok(Vec::new());
                }
                Sent::Answer(status, body) => {
                    return Err(self.status_error(&context, status, &body));
                }
                Sent::Lost(message) => return Err(self.error(&context, message, true)),
            };
            let answer: ListTablesResponse = serde_json::from_str(&answer)
                .map_err(|e| self.error(&context, format!("not a list of tables: {e}"), false))?;
            tables.extend(
                answer
                    .identifiers
                    .into_iter()
                    .map(|id| CatalogTable::new(namespace, id.name)),
            );
            page = answer.next_page_token.filter(|t| !t.is_empty());
            if page.is_none() {
                break;
            }
        }
        tables.sort();
        Ok(tables)
    }

    async fn drop_table(&self, table: &CatalogTable) -> Result<bool, CatalogError> {
        let context = format!("drop table {table}");
        let url = self.url(&[&table.namespace, "tables", &table.name])?;
        let dropped = match self.send(&context, |http| http.delete(url.clone())).await? {
            Sent::Answer(status, _) if status.is_success() => true,
            Sent::Answer(status, _) if status == reqwest::StatusCode::NOT_FOUND => false,
            Sent::Answer(status, body) => return Err(self.status_error(&context, status, &body)),
            Sent::Lost(message) => return Err(self.error(&context, message, true)),
        };
        self.inner
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(table);
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server on 127.0.0.1 answering `GET /v1/config` with `config` and anything else with
    /// `{}`; it records each request line.
    async fn recording_server(config: &'static str) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let address = listener.local_addr().expect("an address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buffer = vec![0u8; 8192];
                let n = stream.read(&mut buffer).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buffer[..n]).to_string();
                let line = request.lines().next().unwrap_or_default().to_string();
                let body = if line.starts_with("GET /v1/config") {
                    config
                } else {
                    "{}"
                };
                record
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            }
        });
        (format!("http://{address}"), seen)
    }

    #[tokio::test]
    async fn the_servers_overrides_win_over_its_defaults_and_its_prefix_is_used() {
        let (uri, seen) = recording_server(
            r#"{"defaults":{"prefix":"not-this"},"overrides":{"prefix":"cat/a b"}}"#,
        )
        .await;
        let catalog = RestCatalog::connect(&RestCatalogConfig {
            uri: format!("{uri}/"),
            warehouse: Some("lake house".into()),
            ..RestCatalogConfig::default()
        })
        .await
        .expect("connected");
        assert!(catalog.namespace_exists("my ns").await.expect("an answer"));
        let seen = seen.lock().unwrap_or_else(PoisonError::into_inner).clone();
        assert_eq!(
            seen,
            [
                "GET /v1/config?warehouse=lake+house HTTP/1.1",
                "GET /v1/cat/a%20b/namespaces/my%20ns HTTP/1.1",
            ]
        );
        assert_eq!(catalog.describe(), format!("rest catalog {uri}"));
    }

    #[tokio::test]
    async fn without_a_prefix_namespaces_are_under_v1() {
        let (uri, seen) = recording_server(r#"{"defaults":{},"overrides":{}}"#).await;
        let catalog = RestCatalog::connect(&RestCatalogConfig {
            uri,
            ..RestCatalogConfig::default()
        })
        .await
        .expect("connected");
        catalog.namespace_exists("lake").await.expect("an answer");
        let seen = seen.lock().unwrap_or_else(PoisonError::into_inner).clone();
        assert_eq!(seen[0], "GET /v1/config HTTP/1.1");
        assert_eq!(seen[1], "GET /v1/namespaces/lake HTTP/1.1");
    }

    #[tokio::test]
    async fn a_missing_secret_names_the_variable_and_the_key() {
        let error = RestCatalog::connect(&RestCatalogConfig {
            uri: "http://127.0.0.1:9".into(),
            token_env: Some("LAKEWRITER_TEST_TOKEN_THAT_IS_NOT_SET".into()),
            ..RestCatalogConfig::default()
        })
        .await
        .expect_err("no token");
        let text = error.to_string();
        assert!(
            text.contains("LAKEWRITER_TEST_TOKEN_THAT_IS_NOT_SET"),
            "{text}"
        );
        assert!(text.contains("sink.rest.token_env"), "{text}");
    }

    #[test]
    fn error_bodies_are_read_for_their_message() {
        assert_eq!(
            error_message(
                r#"{"error":{"message":"Requirement failed: branch main has changed","type":"CommitFailedException","code":409}}"#
            ),
            "CommitFailedException: Requirement failed: branch main has changed"
        );
        assert_eq!(error_message("  "), "(no message)");
        assert_eq!(error_message("bad gateway"), "bad gateway");
        assert!(error_message(&"x".repeat(1000)).ends_with('…'));
    }
}
