//! `/metrics` (Prometheus text format), `/healthz` (the process is alive)
//! and `/readyz` (connected to NATS, lexicon loaded, consumer bound).

use crate::listen::ListenError;
use crate::metrics::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::oneshot;

/// Shared connection status, read by `/readyz`.
#[derive(Debug, Default)]
pub struct Status {
    pub connected: AtomicBool,
    pub consumer_bound: AtomicBool,
    pub lexicon_loaded: AtomicBool,
    /// Set by the watchdog: work pending, nothing stored for a while.
    pub output_stalled: AtomicBool,
}

impl Status {
    pub fn ready(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
            && self.consumer_bound.load(Ordering::Relaxed)
            && self.lexicon_loaded.load(Ordering::Relaxed)
            && !self.output_stalled.load(Ordering::Relaxed)
    }
}

/// A running HTTP server.
pub struct Http {
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
}

impl Http {
    pub fn stop(self) {
        let _ = self.stop.send(());
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    status: Arc<Status>,
}

/// Binds `addr` (port 0 picks a free port; the bound address is logged) and
/// serves until stopped.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
) -> Result<Http, ListenError> {
    let (listener, addr) = crate::listen::bind(addr, "metrics").await?;
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(AppState { metrics, status });
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
    let st = &s.status;
    use std::sync::atomic::Ordering::Relaxed;
    let body = format!(
        "nats_connected {}\nlexicon_loaded {}\nconsumer_bound {}\noutput_stalled {}\n",
        st.connected.load(Relaxed),
        st.lexicon_loaded.load(Relaxed),
        st.consumer_bound.load(Relaxed),
        st.output_stalled.load(Relaxed)
    );
    let code = if st.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}
