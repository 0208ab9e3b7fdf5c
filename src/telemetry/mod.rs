//! Logs, the decision log and metrics.
//!
//! Log lines are formatted on the calling thread and written by a background thread in batches
//! (`sink.rs`), so writes, their syscalls and wake-ups stay off the request path. When the sink falls
//! 16 MiB behind, callers wait rather than records being dropped: no decision record is silently lost.
//! Decision records are events with target `cedar_pdp::decision`: filter them with `--log`, or turn
//! them off with `--decision-log false`.

mod sink;

use std::time::Duration;

use sink::BatchWriter;
pub use sink::FlushGuard;
use tracing_subscriber::EnvFilter;

use crate::authz::Outcome;
use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. Keep the guard alive until exit: dropping it flushes the log.
pub fn init(config: &LogConfig) -> Result<FlushGuard, String> {
    let filter = EnvFilter::try_new(&config.log).map_err(|e| format!("invalid --log filter `{}`: {e}", config.log))?;
    let (writer, guard) =
        BatchWriter::new(std::io::stderr()).map_err(|e| format!("cannot start the log writer thread: {e}"))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(writer);
    let result = match config.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    result.map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    Ok(guard)
}

/// Installs the Prometheus recorder and serves `/metrics` on `listener` (over TLS when the
/// listener's connections are), until `stop`.
pub fn serve_metrics(listener: crate::tls::Incoming, stop: tokio_util::sync::CancellationToken) -> Result<(), String> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder().map_err(|e| e.to_string())?;
    let app = axum::Router::new().route("/metrics", axum::routing::get(move || std::future::ready(handle.render())));
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
        if let Err(e) = served {
            tracing::error!("the metrics endpoint stopped: {e}");
        }
    });
    Ok(())
}

/// Counts one decision and, when enabled, writes its decision-log record.
/// What an ext_authz decision adds to its decision-log entry.
#[derive(Debug, Clone, Copy)]
pub struct HttpInfo<'a> {
    pub route: &'a str,
    /// Envoy's `x-request-id`, for correlation with its access log.
    pub request_id: &'a str,
    pub dry_run: bool,
}

pub fn record_decision(
    log: bool,
    front_door: &'static str,
    decision_id: &str,
    policy_version: &str,
    outcome: &Outcome,
    latency: Duration,
    http: Option<HttpInfo<'_>>,
) {
    let decision = if outcome.allow { "allow" } else { "deny" };
    metrics::counter!("cedar_pdp_decisions_total", "decision" => decision, "api" => front_door).increment(1);
    metrics::histogram!("cedar_pdp_decision_seconds", "api" => front_door).record(latency.as_secs_f64());
    if !log {
        return;
    }
    let errors: Vec<String> = outcome.errors.iter().map(|e| format!("{}: {}", e.policy_id, e.message)).collect();
    tracing::info!(
        target: "cedar_pdp::decision",
        decision_id,
        api = front_door,
        principal = %outcome.principal,
        action = %outcome.action,
        resource = %outcome.resource,
        decision,
        determining_policies = ?outcome.determining,
        errors = ?errors,
        policy_version,
        latency_us = latency.as_micros() as u64,
        route = http.map(|h| h.route),
        request_id = http.map(|h| h.request_id),
        dry_run = http.map(|h| h.dry_run),
        "decision"
    );
}
