//! How lakewriter proves itself to a REST catalog: not at all, with a bearer token, or with
//! an OAuth2 client-credentials grant whose token is renewed before it expires (and once more
//! when the server refuses it anyway). Secrets come from environment variables the
//! configuration names, never from the file, and never appear in `Debug` or errors.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// The credentials of a REST catalog.
pub(crate) enum Auth {
    /// No `Authorization` header.
    None,
    /// A fixed bearer token.
    Bearer(String),
    /// OAuth2 client credentials.
    OAuth2(OAuth2),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("Auth::None"),
            Auth::Bearer(_) => f.write_str("Auth::Bearer(..)"),
            Auth::OAuth2(o) => f
                .debug_struct("Auth::OAuth2")
                .field("token_uri", &o.token_uri)
                .field("client_id", &o.client_id)
                .field("scope", &o.scope)
                .finish_non_exhaustive(),
        }
    }
}

/// An OAuth2 client-credentials grant and the token it last gave.
pub(crate) struct OAuth2 {
    /// The token endpoint.
    pub token_uri: String,
    /// The client id (the part of the credential before `:`).
    pub client_id: String,
    client_secret: String,
    /// The scope asked for.
    pub scope: String,
    token: Mutex<Option<Token>>,
}

#[derive(Clone)]
struct Token {
    value: String,
    /// When to ask for the next one: before the server stops taking this one.
    renew_at: Option<Instant>,
}

/// What a token endpoint answers (RFC 6749, section 5.1).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Why no token could be had: a message naming the endpoint, and whether trying again later
/// may help.
#[derive(Debug)]
pub(crate) struct AuthError {
    pub message: String,
    pub retryable: bool,
}

impl OAuth2 {
    /// A grant of `credential` (`client_id:client_secret`) at `token_uri` for `scope`.
    pub(crate) fn new(token_uri: String, credential: &str, scope: String) -> Option<OAuth2> {
        let (id, secret) = credential.split_once(':')?;
        if id.is_empty() || secret.is_empty() {
            return None;
        }
        Some(OAuth2 {
            token_uri,
            client_id: id.to_string(),
            client_secret: secret.to_string(),
            scope,
            token: Mutex::new(None),
        })
    }

    /// The current token, asking the endpoint for one when there is none or it is due.
    async fn token(&self, http: &reqwest::Client) -> Result<String, AuthError> {
        let held = self
            .token
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(token) = held
            && token.renew_at.is_none_or(|at| Instant::now() < at)
        {
            return Ok(token.value);
        }
        let token = self.fetch(http).await?;
        let value = token.value.clone();
        *self.token.lock().unwrap_or_else(PoisonError::into_inner) = Some(token);
        Ok(value)
    }

    /// Forgets the token (the server refused it), so the next request asks for another.
    fn forget(&self) {
        *self.token.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    async fn fetch(&self, http: &reqwest::Client) -> Result<Token, AuthError> {
        let fail = |message: String, retryable: bool| AuthError {
            message: format!("OAuth2 token from {}: {message}", self.token_uri),
            retryable,
        };
        let asked = Instant::now();
        let answer = http
            .post(&self.token_uri)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", self.client_id.as_str()),
                ("client_secret", self.client_secret.as_str()),
                ("scope", self.scope.as_str()),
            ])
            .send()
            .await
            .map_err(|e| fail(super::transport_message(&e), true))?;
        let status = answer.status();
        let body = answer
            .text()
            .await
            .map_err(|e| fail(super::transport_message(&e), true))?;
        if !status.is_success() {
            return Err(fail(
                format!(
                    "HTTP {status}: {} (check the client id and secret in the environment \
                     variable sink.rest.credential_env names, and sink.rest.scope)",
                    super::error_message(&body)
                ),
                status.is_server_error(),
            ));
        }
        let token: TokenResponse = serde_json::from_str(&body)
            .map_err(|e| fail(format!("not a token response: {e}"), false))?;
        if let Some(kind) = &token.token_type
            && !kind.eq_ignore_ascii_case("bearer")
        {
            return Err(fail(
                format!("token type {kind:?}, not a bearer token"),
                false,
            ));
        }
        Ok(Token {
            value: token.access_token,
            renew_at: token.expires_in.map(|s| asked + renew_after(s)),
        })
    }
}

/// How long after it was asked for a token living `expires_in` seconds is renewed: a tenth of
/// its life early, at most a minute early.
fn renew_after(expires_in: u64) -> Duration {
    let life = Duration::from_secs(expires_in);
    life - (life / 10).min(Duration::from_secs(60))
}

impl Auth {
    /// The `Authorization` header value for the next request, if any.
    pub(crate) async fn header(&self, http: &reqwest::Client) -> Result<Option<String>, AuthError> {
        match self {
            Auth::None => Ok(None),
            Auth::Bearer(token) => Ok(Some(format!("Bearer {token}"))),
            Auth::OAuth2(grant) => Ok(Some(format!("Bearer {}", grant.token(http).await?))),
        }
    }

    /// After a 401: whether a new token may fix it (it was renewed here: try once more).
    pub(crate) fn refused(&self) -> bool {
        match self {
            Auth::OAuth2(grant) => {
                grant.forget();
                true
            }
            Auth::None | Auth::Bearer(_) => false,
        }
    }

    /// The kind of authentication, for `doctor` and logs.
    pub(crate) fn describe(&self) -> String {
        match self {
            Auth::None => "no authentication".to_string(),
            Auth::Bearer(_) => "a bearer token".to_string(),
            Auth::OAuth2(grant) => format!(
                "OAuth2 client credentials of client {} at {}",
                grant.client_id, grant.token_uri
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A token endpoint on 127.0.0.1 that gives `token-<n>` living `ttl` seconds, and counts
    /// what it gave; it checks the grant's form.
    async fn token_endpoint(ttl: u64) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let address = listener.local_addr().expect("an address");
        let issued = Arc::new(AtomicUsize::new(0));
        let counter = issued.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                // the form is short: read until its body is in
                loop {
                    let n = stream.read(&mut buffer).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    request.extend_from_slice(&buffer[..n]);
                    let text = String::from_utf8_lossy(&request);
                    if text.contains("scope=") {
                        break;
                    }
                }
                let text = String::from_utf8_lossy(&request).to_string();
                let good = text.contains("grant_type=client_credentials")
                    && text.contains("client_id=lakewriter")
                    && text.contains("client_secret=s3cr%3At")
                    && text.contains("scope=catalog");
                let (status, body) = if good {
                    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                    (
                        "200 OK",
                        format!(
                            r#"{{"access_token":"token-{n}","token_type":"Bearer","expires_in":{ttl}}}"#
                        ),
                    )
                } else {
                    (
                        "401 Unauthorized",
                        r#"{"error":"invalid_client"}"#.to_string(),
                    )
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            }
        });
        (format!("http://{address}/v1/oauth/tokens"), issued)
    }

    #[tokio::test]
    async fn a_token_is_kept_until_it_is_due_then_renewed() {
        let (uri, issued) = token_endpoint(1).await;
        let http = reqwest::Client::new();
        let auth = Auth::OAuth2(
            OAuth2::new(uri, "lakewriter:s3cr:t", "catalog".into()).expect("a credential"),
        );
        let first = auth.header(&http).await.expect("a token");
        assert_eq!(first.as_deref(), Some("Bearer token-1"));
        assert_eq!(
            auth.header(&http).await.expect("a token").as_deref(),
            Some("Bearer token-1")
        );
        assert_eq!(issued.load(Ordering::SeqCst), 1);
        // a 1 s token is renewed 0.1 s early
        tokio::time::sleep(Duration::from_millis(950)).await;
        assert_eq!(
            auth.header(&http).await.expect("a token").as_deref(),
            Some("Bearer token-2")
        );
        assert_eq!(issued.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_token_is_replaced_once() {
        let (uri, issued) = token_endpoint(3600).await;
        let http = reqwest::Client::new();
        let auth = Auth::OAuth2(
            OAuth2::new(uri, "lakewriter:s3cr:t", "catalog".into()).expect("a credential"),
        );
        auth.header(&http).await.expect("a token");
        assert!(auth.refused(), "OAuth2 may fix a 401 with a new token");
        assert_eq!(
            auth.header(&http).await.expect("a token").as_deref(),
            Some("Bearer token-2")
        );
        assert_eq!(issued.load(Ordering::SeqCst), 2);
        assert!(!Auth::Bearer("t".into()).refused());
    }

    #[tokio::test]
    async fn a_wrong_secret_is_an_error_naming_the_endpoint_not_the_secret() {
        let (uri, _) = token_endpoint(3600).await;
        let http = reqwest::Client::new();
        let auth = Auth::OAuth2(
            OAuth2::new(uri.clone(), "lakewriter:wrong-secret", "catalog".into())
                .expect("a credential"),
        );
        let error = auth.header(&http).await.expect_err("refused");
        assert!(error.message.contains(&uri), "{}", error.message);
        assert!(error.message.contains("401"), "{}", error.message);
        assert!(!error.message.contains("wrong-secret"), "{}", error.message);
        assert!(!error.retryable);
        assert!(!format!("{auth:?}").contains("wrong-secret"));
    }

    #[test]
    fn a_credential_needs_an_id_and_a_secret() {
        assert!(OAuth2::new("u".into(), "secret-only", "s".into()).is_none());
        assert!(OAuth2::new("u".into(), ":secret", "s".into()).is_none());
        assert!(OAuth2::new("u".into(), "id:", "s".into()).is_none());
        assert_eq!(renew_after(3600), Duration::from_secs(3540));
        assert_eq!(renew_after(10), Duration::from_secs(9));
    }
}
