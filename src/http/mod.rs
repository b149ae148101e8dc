//! The monitoring listener (`metrics_listen`): `/metrics` in Prometheus' text format,
//! `/health/live` and `/health/ready` for probes, and a status page at `/`. HTTP/1.1 with
//! hyper, one task per connection; it keeps answering while the proxy drains (so readiness
//! can say so) and stops when the proxy has stopped.
//!
//! - [`metrics`]: the metric families, collected from the pools at scrape time.
//! - [`health`]: liveness and readiness.
//! - [`status`]: the HTML status page.

pub mod health;
pub mod metrics;
pub mod status;

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::context::Context;

type Reply = Response<Full<Bytes>>;

/// Monitoring connections served at once; past this a new one is closed at once, so a
/// flood of them costs a bounded number of tasks.
const MAX_CONNECTIONS: usize = 64;
/// How long a connection may take to send a request's head (slow clients hold a place).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts the alert rules and, with `metrics_listen`, the HTTP listener (bound before this
/// returns, so a taken port fails the start). Both stop when the returned guard drops: the
/// proxy keeps it until it has drained.
pub async fn start(ctx: &Context) -> io::Result<tokio_util::sync::DropGuard> {
    let stop = CancellationToken::new();
    if let Some(addr) = &ctx.config.metrics_listen {
        let listener = bind(addr).await?;
        tokio::spawn(serve(listener, ctx.clone(), stop.clone()));
    }
    let sampled = ctx.clone();
    tokio::spawn(crate::alerts::run(
        ctx.alerts.clone(),
        // The thresholds in force (a reload may change them), and the state now.
        move || {
            let thresholds = crate::alerts::Thresholds::of(&sampled.current_config());
            (thresholds, metrics::gather(&sampled).sample)
        },
        stop.clone(),
    ));
    Ok(stop.drop_guard())
}

/// Binds `metrics_listen` (the first address a name resolves to).
pub async fn bind(addr: &str) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} (metrics_listen): {e}"),
        )
    })
}

/// Answers HTTP requests on `listener` until `stop`.
pub async fn serve(listener: TcpListener, ctx: Context, stop: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!(addr = %addr, "serving metrics and health");
    }
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!(cause = %err, "failed to accept a metrics connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            debug!(peer = %peer, "too many metrics connections; closing one");
            continue;
        };
        let ctx = ctx.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let reply = answer(&req, &ctx);
                async move { Ok::<_, Infallible>(reply) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(socket), service);
            tokio::select! {
                result = conn => if let Err(err) = result {
                    debug!(peer = %peer, cause = %err, "metrics connection ended");
                },
                _ = stop.cancelled() => {}
            }
            drop(place);
        });
    }
}

/// Routes one request.
fn answer(req: &Request<Incoming>, ctx: &Context) -> Reply {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
    }
    match req.uri().path() {
        "/metrics" => reply(StatusCode::OK, metrics::CONTENT_TYPE, metrics::render(ctx)),
        "/health/live" => text(StatusCode::OK, "live\n".into()),
        "/health/ready" => match health::ready(ctx) {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/" => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            status::page(ctx),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /health/live, /health/ready or /\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Reply {
    reply(status, "text/plain; charset=utf-8", body)
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
