//! The HTTP endpoints of `run` on `[metrics] listen`: `/metrics` (Prometheus text, or
//! OpenMetrics when the scraper asks for it), `/healthz` (the process is alive and its loop is
//! not wedged) and `/readyz` (streaming, every table streaming or copying, the last commit
//! good; else 503 with what is not ready).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::{prometheus_text, text};

use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// The content type of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr` now, so a taken or invalid address fails the start with an error naming it.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| listen_error(addr, &e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| listen_error(addr, &e))?;
    Ok(listener)
}

fn listen_error(addr: SocketAddr, error: &std::io::Error) -> Error {
    Error::Config {
        path: "[metrics] listen".into(),
        message: format!("cannot serve metrics on {addr}: {error}"),
    }
}

/// Serves `metrics` on `listener` until the task is aborted.
pub async fn serve(listener: std::net::TcpListener, metrics: &'static Metrics) -> Result<()> {
    let addr = listener
        .local_addr()
        .map_err(|e| listen_error(([0, 0, 0, 0], 0).into(), &e))?;
    let listener =
        tokio::net::TcpListener::from_std(listener).map_err(|e| listen_error(addr, &e))?;
    tracing::info!(listen = %addr, "serving /metrics, /healthz and /readyz");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // out of descriptors, say: the service goes on, the scraper retries
                tracing::warn!(listen = %addr, error = %e, "metrics: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| answer(metrics, request));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "metrics: connection ended");
            }
        });
    }
}

async fn answer(
    metrics: &'static Metrics,
    request: Request<Incoming>,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n"));
    }
    let response = match request.uri().path() {
        "/metrics" => {
            let openmetrics = request
                .headers()
                .get_all(ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("application/openmetrics-text"));
            exposition(metrics, openmetrics)
        }
        "/healthz" => health(metrics.liveness_problems(), "unhealthy"),
        "/readyz" => health(metrics.readiness_problems(), "not ready"),
        _ => plain(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /healthz or /readyz\n",
        ),
    };
    Ok(response)
}

fn exposition(metrics: &Metrics, openmetrics: bool) -> Response<Full<Bytes>> {
    let mut body = String::new();
    let (encoded, content_type) = if openmetrics {
        (text::encode(&mut body, metrics.registry()), OPENMETRICS)
    } else {
        (
            prometheus_text::encode(&mut body, metrics.registry()),
            prometheus_text::CONTENT_TYPE,
        )
    };
    if encoded.is_err() {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded\n",
        );
    }
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// 200 `{"status":"ok"}` when there is no problem, else 503 with `failing` and them.
fn health(problems: Vec<String>, failing: &str) -> Response<Full<Bytes>> {
    let (status, body) = if problems.is_empty() {
        (StatusCode::OK, serde_json::json!({ "status": "ok" }))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": failing, "problems": problems }),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}
