//! The HTTP front door (axum on `--http-listen`, TLS as every listener): the OpenID AuthZEN 1.0
//! Authorization API's access evaluation endpoints (`authzen.rs`), deciding through the one
//! decision service.
//!
//! Architecture invariants: every answer about access comes from `decision::Decisions`; errors map to
//! HTTP statuses through `error::http_status`, the same table as gRPC's; a caller with credentials
//! configured and none presented gets nothing.

mod authzen;
mod idle;

use std::sync::Arc;

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::decision::Decisions;
use crate::grpc::Gate;
use crate::tls::{Incoming, Peer};

/// Largest request body accepted.
const MAX_BODY: usize = 1 << 20;

/// What the handlers share.
pub struct HttpApi {
    decisions: Arc<Decisions>,
    /// Most items one `evaluations` call may carry (`--max-batch`).
    max_batch: usize,
    /// `--http-token`s and `--check-peer`s; with neither, any caller the TLS policy admits.
    gate: Gate,
}

impl HttpApi {
    pub fn new(decisions: Arc<Decisions>, max_batch: usize, tokens: Vec<(String, String)>, peers: Vec<String>) -> Self {
        HttpApi { decisions, max_batch, gate: Gate::new("the AuthZEN API", tokens, peers) }
    }

    fn admit(&self, headers: &HeaderMap, peer: &Peer) -> Result<(), HttpError> {
        if self.gate.is_unconfigured() {
            return Ok(());
        }
        let mut request = tonic::Request::new(());
        request.extensions_mut().insert(peer.clone());
        if let Some(value) =
            headers.get("authorization").and_then(|v| tonic::metadata::MetadataValue::try_from(v.as_bytes()).ok())
        {
            request.metadata_mut().insert("authorization", value);
        }
        self.gate.identify(&request).map(drop).map_err(|e| HttpError::from_status(&tonic::Status::from(e)))
    }
}

/// The router: AuthZEN endpoints and the metadata document.
pub fn router(api: Arc<HttpApi>) -> axum::Router {
    authzen::routes().layer(axum::extract::DefaultBodyLimit::max(MAX_BODY)).with_state(api)
}

/// What one HTTP connection may hold: a client trickling its headers, or opening connections
/// without end, cannot tie the listener up.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_timeout: std::time::Duration,
    pub max_connections: usize,
}

/// How often an idle HTTP/2 connection is pinged, and how long an answer may take before it is closed.
const H2_PING: (std::time::Duration, std::time::Duration) =
    (std::time::Duration::from_secs(20), std::time::Duration::from_secs(10));

/// Serves `router` on `listener` until `stop`, each connection on its own task, within `limits`;
/// on `stop`, open connections finish their requests and close.
pub fn serve(listener: Incoming, api: Arc<HttpApi>, limits: ConnLimits, stop: tokio_util::sync::CancellationToken) {
    let app = router(api);
    let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(H2_PING.0)
        .keep_alive_timeout(H2_PING.1);
    let open = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut connections = listener.into_stream();
    tokio::spawn(async move {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let conn = tokio::select! {
                () = stop.cancelled() => break,
                conn = tokio_stream::StreamExt::next(&mut connections) => conn,
            };
            let Some(Ok(conn)) = conn else { break };
            let Ok(permit) = open.clone().try_acquire_owned() else {
                metrics::counter!("cedar_pdp_http_connections_refused_total").increment(1);
                continue;
            };
            let peer = conn.peer().clone();
            let service = tower::ServiceExt::map_request(app.clone(), move |request: axum::http::Request<_>| {
                let mut request = request.map(axum::body::Body::new);
                request.extensions_mut().insert(axum::extract::ConnectInfo(peer.clone()));
                request
            });
            let service = hyper_util::service::TowerToHyperService::new(service);
            let io = hyper_util::rt::TokioIo::new(idle::Quiet::new(conn, limits.header_timeout));
            let served = graceful.watch(builder.serve_connection_with_upgrades(io, service).into_owned());
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = served.await {
                    tracing::debug!("HTTP connection ended: {e}");
                }
            });
        }
        graceful.shutdown().await;
    });
}

/// An HTTP error answer: `{"error": "..."}` with its status.
#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    message: String,
}

impl HttpError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        HttpError { status, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// The HTTP form of what gRPC would answer, by the one mapping in `error.rs`.
    pub fn from_status(status: &tonic::Status) -> Self {
        let code =
            StatusCode::from_u16(crate::error::http_status(status.code())).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self::new(code, status.message())
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

/// Echoes the request's `X-Request-ID` on the answer.
fn with_request_id(request_id: Option<&HeaderValue>, response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    if let Some(id) = request_id {
        response.headers_mut().insert("x-request-id", id.clone());
    }
    response
}
