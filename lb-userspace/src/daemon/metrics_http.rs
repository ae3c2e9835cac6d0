//! `lb run --metrics <ADDR:PORT>` serves the OpenMetrics text at `/metrics`. Every scrape
//! reads the datapath's counters (summed over CPUs) afresh; they live in pinned maps, so
//! they never go backwards across a daemon restart. Scrapes are answered by a reader
//! (`daemon::reader`), so one never waits behind a change or a reload.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::net::TcpListener;

use crate::daemon::{
    metrics::render,
    reader::Reader,
    tasks::{self, Fatal},
};

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds early, so a taken address fails before anything is loaded.
pub(crate) async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot serve metrics on {addr} (--metrics)"))
}

pub(crate) async fn serve(
    listener: TcpListener,
    reader: Arc<Reader>,
    fatal: Fatal,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state((reader, fatal));
    axum::serve(listener, app)
        .await
        .context("the metrics server stopped")
}

async fn scrape(State((reader, fatal)): State<(Arc<Reader>, Fatal)>) -> impl IntoResponse {
    let text = tasks::blocking(&fatal, "metrics scrape", move || {
        let snapshot = reader.metrics().map_err(|e| e.message)?;
        render(snapshot).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|| Err("the scrape failed (the daemon logged why and is ending)".to_owned()));
    match text {
        Ok(text) => (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], text),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{error}\n"),
        ),
    }
}
