//! `lb run --metrics <ADDR:PORT>` serves the OpenMetrics text at `/metrics`. Every scrape
//! reads the datapath's counters (summed over CPUs) afresh; they live in pinned maps, so
//! they never go backwards across a daemon restart.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::net::TcpListener;

use crate::daemon::{controller::Controller, metrics::render};

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds early, so a taken address fails before anything is loaded.
pub(crate) async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot serve metrics on {addr} (--metrics)"))
}

pub(crate) async fn serve(listener: TcpListener, controller: Arc<Mutex<Controller>>) {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(controller);
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!(%error, "the metrics server stopped");
    }
}

async fn scrape(State(controller): State<Arc<Mutex<Controller>>>) -> impl IntoResponse {
    let text = tokio::task::spawn_blocking(move || {
        let snapshot = controller
            .lock()
            .map_err(|_| "the daemon's state is poisoned".to_owned())?
            .metrics()
            .map_err(|e| e.message)?;
        render(snapshot).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    match text {
        Ok(text) => (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], text),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{error}\n"),
        ),
    }
}
