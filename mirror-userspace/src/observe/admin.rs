//! The admin endpoint: a small HTTP/1.1 server (hyper) on its own task, loopback by default.
//!
//! - `/metrics`: the registry, Prometheus text 0.0.4, or OpenMetrics when `Accept` asks;
//! - `/healthz`: 200 while the capture loop turns;
//! - `/readyz`: 200 while attached to every interface and reading the ring, else 503;
//! - `/config`: the effective settings as JSON (no secrets: the agent takes none).
//!
//! It never touches the capture loop: it reads atomics and the kernel's counter maps. It
//! serves a bounded number of connections at once (more are closed on accept), and a client
//! gets a bounded time to send its request.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use super::{
    health::Health,
    prometheus::{encode, Format},
    Registry,
};

/// Loopback, so that nothing is exposed unless asked for.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9477";
/// Connections served at once; a scraper and a person need a few.
const MAX_CONNECTIONS: usize = 16;
/// Time a client gets to send its request head, and to be served over one connection.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// What the endpoint serves.
#[derive(Debug)]
pub struct AdminState {
    pub registry: Registry,
    pub health: Arc<Health>,
    /// The effective settings, rendered once at start.
    pub config: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on the admin address {addr}")]
pub struct AdminError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// Binds `addr` and serves on a task of the current runtime; returns the bound address.
pub async fn start(addr: SocketAddr, state: Arc<AdminState>) -> Result<SocketAddr, AdminError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| AdminError { addr, source })?;
    tokio::spawn(serve(listener, state));
    Ok(bound)
}

async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors, most likely: wait rather than spin.
                tracing::warn!(%error, "admin endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            continue; // Dropping the stream closes it.
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(respond(&state, &request)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
            drop(slot);
        });
    }
}

fn respond(state: &AdminState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".to_owned());
    }
    match request.uri().path() {
        "/metrics" => {
            let accept = request
                .headers()
                .get(header::ACCEPT)
                .and_then(|value| value.to_str().ok());
            let format = Format::negotiate(accept);
            match encode(&state.registry, format) {
                Ok(body) => with_type(StatusCode::OK, format.content_type(), body),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "encoding failed\n".into(),
                ),
            }
        }
        "/healthz" => match state.health.heartbeat_age() {
            Some(age) if state.health.live() => text(
                StatusCode::OK,
                format!("ok: capture loop turned {:.3}s ago\n", age.as_secs_f64()),
            ),
            Some(age) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "stale: capture loop last turned {:.1}s ago\n",
                    age.as_secs_f64()
                ),
            ),
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "starting: capture loop not running yet\n".into(),
            ),
        },
        "/readyz" => readiness(&state.health),
        "/config" => match serde_json::to_string_pretty(&state.config) {
            Ok(mut body) => {
                body.push('\n');
                with_type(StatusCode::OK, "application/json", body)
            }
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding failed\n".into(),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics /healthz /readyz /config\n".into(),
        ),
    }
}

/// `ready` or `not ready`, then one line per interface.
fn readiness(health: &Health) -> Response<Full<Bytes>> {
    let ready = health.ready();
    let mut body = String::from(if ready { "ready\n" } else { "not ready\n" });
    if !health.live() {
        body.push_str("capture loop: not turning\n");
    }
    match health.interfaces() {
        None => body.push_str("interfaces: not attached yet\n"),
        Some(interfaces) => {
            for interface in interfaces {
                let state = if interface.attached {
                    "attached"
                } else {
                    "gone"
                };
                body.push_str(&format!("interface {} {state}\n", interface.name));
            }
        }
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(status, body)
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=utf-8", body)
}

fn with_type(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(addr: SocketAddr, path: &str, accept: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn serves_metrics_health_readiness_and_config() {
        let health = Arc::new(Health::default());
        let state = Arc::new(AdminState {
            registry: Registry::default(),
            health: Arc::clone(&health),
            config: serde_json::json!({ "shadow": "v2:80" }),
        });
        state.registry.register("agent", Arc::clone(&health) as _);
        let addr = start("127.0.0.1:0".parse().unwrap(), state).await.unwrap();

        let before = get(addr, "/readyz", "*/*").await;
        assert!(before.starts_with("HTTP/1.1 503"), "{before}");
        assert!(before.contains("not attached yet"), "{before}");
        assert!(get(addr, "/healthz", "*/*")
            .await
            .starts_with("HTTP/1.1 503"));

        health.beat();
        health.attached(&["lo".to_owned()]);
        let after = get(addr, "/readyz", "*/*").await;
        assert!(after.starts_with("HTTP/1.1 200"), "{after}");
        assert!(after.contains("interface lo attached"), "{after}");
        assert!(get(addr, "/healthz", "*/*")
            .await
            .starts_with("HTTP/1.1 200"));

        let metrics = get(addr, "/metrics", "*/*").await;
        assert!(metrics.contains("version=0.0.4"), "{metrics}");
        assert!(metrics.contains("\nmirror_agent_ready 1\n"), "{metrics}");
        let open = get(addr, "/metrics", "application/openmetrics-text").await;
        assert!(open.contains("application/openmetrics-text"), "{open}");
        assert!(open.contains("# EOF"), "{open}");

        let config = get(addr, "/config", "*/*").await;
        assert!(config.contains("\"shadow\": \"v2:80\""), "{config}");
        assert!(get(addr, "/nope", "*/*").await.starts_with("HTTP/1.1 404"));
    }
}
