//! How lakewriter proves itself to a REST catalog: not at all, with a bearer token, with an
//! OAuth2 client-credentials grant whose token is renewed before it expires (and once more when
//! the server refuses it anyway), or by signing each request with AWS SigV4 (the REST endpoints
//! of S3 Tables and Glue) with the AWS SDK's credential chain. Secrets come from environment
//! variables the configuration names (or the SDK's chain), never from the file, and never
//! appear in `Debug` or errors.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};

use serde::Deserialize;

/// The credentials of a REST catalog.
pub(crate) enum Auth {
    /// No `Authorization` header.
    None,
    /// A fixed bearer token.
    Bearer(String),
    /// OAuth2 client credentials.
    OAuth2(OAuth2),
    /// AWS SigV4 signatures.
    SigV4(SigV4),
}

/// AWS SigV4 request signing: the service's signing name (`s3tables`, `glue`), the region,
/// and the credentials of the AWS SDK's chain.
pub(crate) struct SigV4 {
    /// The signing name.
    pub name: String,
    /// The signing region.
    pub region: String,
    credentials: SharedCredentialsProvider,
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
            Auth::SigV4(s) => f
                .debug_struct("Auth::SigV4")
                .field("name", &s.name)
                .field("region", &s.region)
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

impl SigV4 {
    /// Signing for service `name` in `region` with the credentials `credentials` provides.
    pub(crate) fn new(
        name: String,
        region: String,
        credentials: SharedCredentialsProvider,
    ) -> Self {
        SigV4 {
            name,
            region,
            credentials,
        }
    }

    /// Signs `request` (headers, and a body already in memory) with the current credentials.
    async fn sign(&self, request: &mut reqwest::Request) -> Result<(), AuthError> {
        let credentials = self
            .credentials
            .provide_credentials()
            .await
            .map_err(|e| AuthError {
                message: format!(
                    "AWS credentials for SigV4 ({}): {}",
                    self.name,
                    aws_sdk_glue::error::DisplayErrorContext(&e)
                ),
                retryable: true,
            })?;
        sign_request(
            request,
            credentials,
            &self.region,
            &self.name,
            SystemTime::now(),
            true,
        )
    }
}

/// Adds the SigV4 headers (`authorization`, `x-amz-date`, `x-amz-security-token`) that sign
/// `request` as of `time`; `sign_body`: and `x-amz-content-sha256`, the body's hash, signed
/// too (the S3 family of services requires it, the others take it).
fn sign_request(
    request: &mut reqwest::Request,
    credentials: Credentials,
    region: &str,
    name: &str,
    time: SystemTime,
    sign_body: bool,
) -> Result<(), AuthError> {
    use aws_sigv4::http_request::{
        PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings, sign,
    };
    let fail = |what: String| AuthError {
        message: format!("SigV4 signing for {name} in {region}: {what}"),
        retryable: false,
    };
    let identity = credentials.into();
    let mut settings = SigningSettings::default();
    if sign_body {
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(name)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| fail(e.to_string()))?
        .into();
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let body = request
        .body()
        .map(|b| b.as_bytes().ok_or_else(|| fail("a streaming body".into())))
        .transpose()?
        .unwrap_or_default();
    let signable = SignableRequest::new(
        request.method().as_str(),
        request.url().as_str(),
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .map_err(|e| fail(e.to_string()))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| fail(e.to_string()))?
        .into_parts();
    let mut signed = Vec::new();
    for (name, value) in instructions.headers() {
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
        let value =
            reqwest::header::HeaderValue::from_str(value).map_err(|e| fail(e.to_string()))?;
        signed.push((name, value));
    }
    for (name, value) in signed {
        request.headers_mut().insert(name, value);
    }
    Ok(())
}

impl Auth {
    /// Adds what proves the client to `request`: an `Authorization` header, or a signature.
    pub(crate) async fn apply(
        &self,
        http: &reqwest::Client,
        request: &mut reqwest::Request,
    ) -> Result<(), AuthError> {
        let bearer = match self {
            Auth::None => return Ok(()),
            Auth::SigV4(signer) => return signer.sign(request).await,
            Auth::Bearer(token) => format!("Bearer {token}"),
            Auth::OAuth2(grant) => format!("Bearer {}", grant.token(http).await?),
        };
        let value = reqwest::header::HeaderValue::from_str(&bearer).map_err(|_| AuthError {
            message: "the token is not a valid header value".into(),
            retryable: false,
        })?;
        request
            .headers_mut()
            .insert(reqwest::header::AUTHORIZATION, value);
        Ok(())
    }

    /// The `Authorization` header value for the next request, if any (not with SigV4, which
    /// signs the request itself).
    #[cfg(test)]
    async fn header(&self, http: &reqwest::Client) -> Result<Option<String>, AuthError> {
        match self {
            Auth::None | Auth::SigV4(_) => Ok(None),
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
            Auth::None | Auth::Bearer(_) | Auth::SigV4(_) => false,
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
            Auth::SigV4(signer) => format!(
                "AWS SigV4 ({} in {}) with the AWS SDK's credentials",
                signer.name, signer.region
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

    /// The AWS signing test suite's `v4` cases (aws-sigv4's `aws-signing-test-suite`): its
    /// credentials, time, region and service, each request, and the signature it must get.
    #[test]
    fn sigv4_signatures_match_the_aws_signing_test_suite() {
        // 2015-08-30T12:36:00Z
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        type Case<'a> = (
            &'a str,
            reqwest::Method,
            &'a [(&'a str, &'a str)],
            Option<&'a str>,
            &'a str,
        );
        let cases: [Case; 6] = [
            (
                "get-vanilla",
                reqwest::Method::GET,
                &[],
                None,
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            (
                "post-vanilla",
                reqwest::Method::POST,
                &[],
                None,
                "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            ),
            (
                "post-header-key-sort",
                reqwest::Method::POST,
                &[("My-Header1", "value1")],
                None,
                "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c",
            ),
            (
                "get-vanilla-with-session-token",
                reqwest::Method::GET,
                &[],
                Some("6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267"),
                "07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8",
            ),
            (
                "get-vanilla-query-order-key-case",
                reqwest::Method::GET,
                &[],
                None,
                "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
            ),
            // the suite's case with a signed body (sign_body: true): x-amz-content-sha256
            (
                "post-x-www-form-urlencoded",
                reqwest::Method::POST,
                &[
                    ("Content-Type", "application/x-www-form-urlencoded"),
                    ("Content-Length", "13"),
                ],
                None,
                "d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b",
            ),
        ];
        for (case, method, headers, token, expected) in cases {
            let url = if case == "get-vanilla-query-order-key-case" {
                "https://example.amazonaws.com/?Param2=value2&Param1=value1"
            } else {
                "https://example.amazonaws.com/"
            };
            let mut request = reqwest::Request::new(method, url.parse().expect("a vector's URL"));
            for (name, value) in headers {
                request.headers_mut().insert(
                    reqwest::header::HeaderName::from_bytes(name.as_bytes()).expect("a name"),
                    reqwest::header::HeaderValue::from_static(value),
                );
            }
            let sign_body = case == "post-x-www-form-urlencoded";
            if sign_body {
                *request.body_mut() = Some(reqwest::Body::from("Param1=value1"));
            }
            let credentials = Credentials::new(
                "AKIDEXAMPLE",
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                token.map(str::to_string),
                None,
                "test-suite",
            );
            sign_request(
                &mut request,
                credentials,
                "us-east-1",
                "service",
                time,
                sign_body,
            )
            .unwrap_or_else(|e| panic!("{case}: {}", e.message));
            let authorization = request
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            assert!(
                authorization.starts_with(
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request"
                ),
                "{case}: {authorization}"
            );
            assert!(
                authorization.ends_with(&format!("Signature={expected}")),
                "{case}: {authorization}"
            );
            assert_eq!(
                request
                    .headers()
                    .get("x-amz-date")
                    .and_then(|v| v.to_str().ok()),
                Some("20150830T123600Z"),
                "{case}"
            );
        }
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
