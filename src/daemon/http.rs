//! `/metrics` (Prometheus text format), `/healthz` (the process is alive)
//! and `/readyz` (judging: see `health`).

use super::health::Health;
use crate::listen::ListenError;
use crate::metrics::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::oneshot;

/// A running HTTP server.
pub(super) struct Http {
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
}

impl Http {
    pub(super) fn stop(self) {
        let _ = self.stop.send(());
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// Binds `addr` (port 0 picks a free port; the bound address is logged) and
/// serves until stopped.
pub(super) async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> Result<Http, ListenError> {
    let (listener, addr) = crate::listen::bind(addr, "metrics").await?;
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(AppState { metrics, health });
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics server failed");
        }
    });
    Ok(Http { addr, stop })
}

async fn metrics_page(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn ready(State(s): State<AppState>) -> impl IntoResponse {
    let checks = s.health.checks();
    let body: String = checks
        .iter()
        .map(|(name, ok)| format!("{name} {ok}\n"))
        .collect();
    let code = if checks.iter().all(|(_, ok)| *ok) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}
