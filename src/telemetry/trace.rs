//! OpenTelemetry traces, off unless `--otlp-endpoint` is set: a span per call (gRPC and the HTTP API)
//! that continues the caller's W3C `traceparent`, carries the decision id, policy version and
//! decision, and is exported over OTLP/gRPC in batches off the request path. Where the caller
//! decided nothing, `--otlp-sample-ratio` of the traces are kept; a caller's decision is followed.
//! The decision is made before any span exists: a call that is not traced (tracing off, or not
//! sampled) makes no span at all, since an unsampled span costs nearly what a sampled one does.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;

/// Whether spans are made.
static ON: AtomicBool = AtomicBool::new(false);
/// `--otlp-sample-ratio` as a threshold on a random `u64`.
static THRESHOLD: AtomicU64 = AtomicU64::new(0);

/// The target of call spans: only they go to the exporter, and the log never shows them.
pub const TARGET: &str = "cedar_pdp::rpc";

/// The trace exporter's subscriber layer, and the provider to flush at exit.
pub type Exporter<S> = (Box<dyn Layer<S> + Send + Sync>, SdkTracerProvider);

/// The exporter; `None` without an endpoint. Call inside the async runtime: the exporter's
/// connection lives on it.
pub fn layer<S>(config: &crate::config::TraceConfig) -> Result<Option<Exporter<S>>, String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
{
    let Some(endpoint) = &config.otlp_endpoint else { return Ok(None) };
    if !(0.0..=1.0).contains(&config.otlp_sample_ratio) {
        return Err(format!("--otlp-sample-ratio {}: expected 0 to 1", config.otlp_sample_ratio));
    }
    let uri: http::Uri = endpoint.parse().map_err(|e| format!("--otlp-endpoint {endpoint}: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        return Err(format!("--otlp-endpoint {endpoint}: expected http://HOST:PORT or https://HOST:PORT"));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| format!("--otlp-endpoint {endpoint}: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name("cedar-pdp").build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        // Sampled already: a span exists only for a call that is kept (`call_span`).
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource)
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("cedar-pdp"))
        .with_filter(Targets::new().with_target(TARGET, tracing::Level::INFO));
    THRESHOLD.store((config.otlp_sample_ratio * u64::MAX as f64) as u64, Ordering::Relaxed);
    ON.store(true, Ordering::Relaxed);
    Ok(Some((Box::new(layer), provider)))
}

/// Header lookups for the W3C trace-context propagator.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Whether spans are made (`--otlp-endpoint` is set).
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Whether a root trace is kept: a coin weighted by the ratio (std's per-thread random keys, hashed).
fn keep_root() -> bool {
    use std::hash::BuildHasher;
    std::hash::RandomState::new().hash_one(0u8) < THRESHOLD.load(Ordering::Relaxed)
}

/// The span of one call to `method` when it is traced: a child of the caller's `traceparent` when
/// it sent one (and kept when that says "sampled"), else a root kept at the sample ratio.
pub fn call_span(method: &str, headers: &http::HeaderMap) -> tracing::Span {
    if !ON.load(Ordering::Relaxed) {
        return tracing::Span::none();
    }
    let parent = headers
        .contains_key("traceparent")
        .then(|| TraceContextPropagator::new().extract(&Headers(headers)))
        .filter(|cx| cx.span().span_context().is_valid());
    let kept = match &parent {
        Some(cx) => cx.span().span_context().is_sampled(),
        None => keep_root(),
    };
    if !kept {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        "call",
        otel.name = method,
        otel.kind = "server",
        rpc.method = method,
        decision_id = Empty,
        policy_version = Empty,
        decision = Empty,
    );
    if let Some(cx) = parent {
        let _ = span.set_parent(cx);
    }
    span
}

/// A span for the rest of the current call, in the trace of the request Envoy asks about (for when
/// Envoy's own call carried no `traceparent`; the call's span has started by then).
pub fn child_of(traceparent: &str, tracestate: Option<&str>) -> tracing::Span {
    let mut headers = http::HeaderMap::new();
    for (name, value) in [("traceparent", Some(traceparent)), ("tracestate", tracestate)] {
        if let Some(value) = value.and_then(|v| http::HeaderValue::from_str(v).ok()) {
            headers.insert(name, value);
        }
    }
    call_span("ext_authz checked request", &headers)
}

/// Puts a decision on the current call's span.
pub fn record(decision_id: &str, policy_version: &str, decision: &str) {
    if ON.load(Ordering::Relaxed) {
        let span = tracing::Span::current();
        span.record("decision_id", decision_id);
        span.record("policy_version", policy_version);
        span.record("decision", decision);
    }
}

/// The current call's trace id, for its decision-log record; `None` with tracing off.
pub fn trace_id() -> Option<String> {
    if !ON.load(Ordering::Relaxed) {
        return None;
    }
    let context = tracing::Span::current().context();
    let span = context.span();
    let ids = span.span_context();
    ids.is_valid().then(|| ids.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_are_kept_at_the_ratio() {
        THRESHOLD.store((0.25 * u64::MAX as f64) as u64, Ordering::Relaxed);
        let kept = (0..100_000).filter(|_| keep_root()).count();
        assert!((23_500..26_500).contains(&kept), "{kept} of 100000 kept at 0.25");
        THRESHOLD.store(0, Ordering::Relaxed);
        assert!(!(0..10_000).any(|_| keep_root()), "nothing kept at 0");
    }
}
