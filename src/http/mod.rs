//! The HTTP front door (axum on `--http-listen`, TLS as every listener): the OpenID AuthZEN 1.0
//! Authorization API's access evaluation endpoints (`authzen.rs`), deciding through the one
//! decision service.
//!
//! Architecture invariants: every answer about access comes from `decision::Decisions`; errors map to
//! HTTP statuses through `error::http_status`, the same table as gRPC's; a caller with credentials
//! configured and none presented gets nothing.

mod authzen;
mod scim;

use std::sync::Arc;

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::decision::Decisions;
use crate::grpc::Gate;
use crate::tls::{Incoming, Peer};
pub use crate::web::ConnLimits;

/// Largest request body accepted.
const MAX_BODY: usize = 1 << 20;

/// What the handlers share.
pub struct HttpApi {
    decisions: Arc<Decisions>,
    /// Most items one `evaluations` call may carry (`--max-batch`).
    max_batch: usize,
    /// `--http-token`s and `--check-peer`s; with neither, any caller the TLS policy admits.
    gate: Gate,
    /// The SCIM service and its `--scim-token`s; None (SCIM refused) without a token.
    scim: Option<(crate::scim::Scim, Gate)>,
    /// `http` or `https`, for the URLs SCIM answers with.
    scheme: &'static str,
}

impl HttpApi {
    pub fn new(decisions: Arc<Decisions>, max_batch: usize, tokens: Vec<(String, String)>, peers: Vec<String>) -> Self {
        HttpApi { decisions, max_batch, gate: Gate::new("the AuthZEN API", tokens, peers), scim: None, scheme: "http" }
    }

    /// Serves SCIM under `/scim/v2` for callers `gate` admits; with no token in it, SCIM is off.
    pub fn with_scim(mut self, scim: crate::scim::Scim, gate: Gate, tls: bool) -> Self {
        if !gate.is_unconfigured() {
            self.scim = Some((scim, gate));
        }
        self.scheme = if tls { "https" } else { "http" };
        self
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
    authzen::routes()
        .merge(scim::routes())
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(traced))
        .with_state(api)
}

/// Every HTTP call in its trace span (none with tracing off), named by its route.
async fn traced(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use tracing::Instrument;
    // Off, nothing is built per request.
    if !crate::telemetry::trace::enabled() {
        return next.run(request).await;
    }
    let route = request.extensions().get::<axum::extract::MatchedPath>().map(|p| p.as_str().to_string());
    // The route, not the path: a span name the caller cannot multiply.
    let name = format!("{} {}", request.method(), route.as_deref().unwrap_or("(no route)"));
    let span = crate::telemetry::trace::call_span(&name, request.headers());
    next.run(request).instrument(span).await
}

/// Serves the AuthZEN API on `listener` until `stop`, within `limits` (see `web.rs`).
pub fn serve(listener: Incoming, api: Arc<HttpApi>, limits: ConnLimits, stop: tokio_util::sync::CancellationToken) {
    crate::web::serve(listener, router(api), limits, stop);
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
