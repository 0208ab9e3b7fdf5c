//! Logs, the decision log and metrics.
//!
//! Log lines are formatted on the calling thread and written by a background thread in batches
//! (`sink.rs`), so writes, their syscalls and wake-ups stay off the request path. When the sink falls
//! 16 MiB behind, callers wait rather than records being dropped: no decision record is silently lost.
//! Decision records are events with target `cedar_pdp::decision`: filter them with `--log`, or turn
//! them off with `--decision-log false`.

mod record;
mod sink;
pub mod trace;

use std::time::Duration;

use sink::BatchWriter;
use sink::FlushGuard;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::authz::Outcome;
use crate::config::{LogConfig, LogFormat, TraceConfig};

/// Flushes the log, and the traces, when dropped.
pub struct Guard {
    _log: FlushGuard,
    traces: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.traces.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber: the log, and the trace exporter when `traces` names a collector
/// (call it inside the async runtime then). Keep the guard alive until exit.
pub fn init(config: &LogConfig, traces: Option<&TraceConfig>) -> Result<Guard, String> {
    // Call spans are for the trace exporter only: log lines stay as they are.
    let directives = format!("{},{}=off", config.log, trace::TARGET);
    let filter = EnvFilter::try_new(directives).map_err(|e| format!("invalid --log filter `{}`: {e}", config.log))?;
    let (writer, guard) =
        BatchWriter::new(std::io::stderr()).map_err(|e| format!("cannot start the log writer thread: {e}"))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if !ansi {
        record::install(writer.clone(), config.log_format == LogFormat::Json);
    }
    let fmt = tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(writer);
    let log: Box<dyn Layer<Registry> + Send + Sync> = match config.log_format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => {
            fmt.json().flatten_event(true).with_current_span(false).with_span_list(false).with_filter(filter).boxed()
        }
    };
    let mut layers = vec![log];
    let mut provider = None;
    if let Some((layer, tracer)) = traces.map(trace::layer).transpose()?.flatten() {
        layers.push(layer);
        provider = Some(tracer);
    }
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    Ok(Guard { _log: guard, traces: provider })
}

/// Installs the Prometheus recorder and serves `/metrics` on `listener` (over TLS when the
/// listener's connections are), until `stop`, within the same connection bounds as the HTTP API:
/// a scraper needs few connections.
pub fn serve_metrics(listener: crate::tls::Incoming, stop: tokio_util::sync::CancellationToken) -> Result<(), String> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder().map_err(|e| e.to_string())?;
    let app = axum::Router::new().route("/metrics", axum::routing::get(move || std::future::ready(handle.render())));
    let limits =
        crate::web::ConnLimits { name: "metrics", header_timeout: Duration::from_secs(10), max_connections: 64 };
    crate::web::serve(listener, app, limits, stop);
    Ok(())
}

/// What an ext_authz decision adds to its decision-log entry.
#[derive(Debug, Clone, Copy)]
pub struct HttpInfo<'a> {
    pub route: &'a str,
    /// Envoy's `x-request-id`, for correlation with its access log.
    pub request_id: &'a str,
    pub dry_run: bool,
}

/// Counts one decision and, when enabled, writes its decision-log record.
/// What makes a decision-log record replayable (`--decision-log-requests`): the rest of the request
/// and the entity store revision it was decided at.
#[derive(Debug, Clone, Copy)]
pub struct Replayable<'a> {
    pub context: &'a str,
    pub entities: &'a str,
    pub min_revision: u64,
    pub entity_revision: u64,
}

#[allow(clippy::too_many_arguments)]
pub fn record_decision(
    log: bool,
    front_door: &'static str,
    decision_id: &str,
    policy_version: &str,
    outcome: &Outcome,
    latency: Duration,
    http: Option<HttpInfo<'_>>,
    replay: Option<Replayable<'_>>,
) {
    let decision = if outcome.allow { "allow" } else { "deny" };
    metrics::counter!("cedar_pdp_decisions_total", "decision" => decision, "api" => front_door).increment(1);
    metrics::histogram!("cedar_pdp_decision_seconds", "api" => front_door).record(latency.as_secs_f64());
    trace::record(decision_id, policy_version, decision);
    if !log {
        return;
    }
    let errors: Vec<String> = outcome.errors.iter().map(|e| format!("{}: {}", e.policy_id, e.message)).collect();
    let (uids, [principal, action, resource]) = uid_texts([&outcome.principal, &outcome.action, &outcome.resource]);
    let record = Record {
        decision_id,
        front_door,
        principal: &uids[principal],
        action: &uids[action],
        resource: &uids[resource],
        decision,
        determining: &outcome.determining,
        errors: &errors,
        policy_version,
        latency,
        reason: None,
        listing: None,
        http,
        replay,
    };
    write(&record);
}

/// `Type::"id"` as Cedar writes it; an id with nothing to escape is written without Cedar's escaping
/// formatter, which was a quarter of a record's cost.
pub(crate) fn uid_text(uid: &cedar_policy::EntityUid) -> String {
    let mut out = String::with_capacity(uid.id().unescaped().len() + 32);
    push_uid(&mut out, uid);
    out
}

fn push_uid(out: &mut String, uid: &cedar_policy::EntityUid) {
    let id = uid.id().unescaped();
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-_.@:/+=,;!$%&()*<>?[]^`{|}~ #".contains(&b);
    if !id.bytes().all(plain) {
        let _ = std::fmt::Write::write_fmt(out, format_args!("{uid}"));
        return;
    }
    // Pieces pushed, not formatted: a third of a text record went to the formatter here.
    let ty = uid.type_name();
    for part in ty.namespace_components() {
        out.push_str(part);
        out.push_str("::");
    }
    out.push_str(ty.basename());
    out.push_str("::\"");
    out.push_str(id);
    out.push('"');
}

/// The three uids of a decision written into one string (one allocation, not three).
fn uid_texts(uids: [&cedar_policy::EntityUid; 3]) -> (String, [std::ops::Range<usize>; 3]) {
    let mut out = String::with_capacity(96);
    let mut ranges: [std::ops::Range<usize>; 3] = Default::default();
    for (uid, range) in uids.into_iter().zip(&mut ranges) {
        let start = out.len();
        push_uid(&mut out, uid);
        *range = start..out.len();
    }
    (out, ranges)
}

/// Counts and logs an answer made without the policies, in the decision log's one format (no
/// principal, action or resource; the reason instead of determining policies).
pub fn record_without_policies(
    log: bool,
    front_door: &'static str,
    decision_id: &str,
    allowed: bool,
    reason: &str,
    http: Option<HttpInfo<'_>>,
) {
    let decision = if allowed { "allow" } else { "deny" };
    metrics::counter!("cedar_pdp_decisions_total", "decision" => decision, "api" => front_door).increment(1);
    trace::record(decision_id, "", decision);
    if !log {
        return;
    }
    let record = Record {
        decision_id,
        front_door,
        principal: "",
        action: "",
        resource: "",
        decision,
        determining: &[],
        errors: &[],
        policy_version: "",
        latency: Duration::ZERO,
        reason: Some(reason),
        listing: None,
        http,
        replay: None,
    };
    write(&record);
}

/// What a listing's decision-log record says: the query (the varying part as `Type::*`) and how
/// many candidates were listed and examined.
pub struct Listing<'a> {
    pub parts: &'a [String; 3],
    pub listed: usize,
    pub scanned: usize,
    /// Whether every candidate has been examined (no page follows).
    pub complete: bool,
}

/// Counts and logs one page of a listing, in the decision log's one format (decision `list`).
pub fn record_listing(
    log: bool,
    front_door: &'static str,
    decision_id: &str,
    policy_version: &str,
    listing: &Listing<'_>,
    latency: Duration,
    http: Option<HttpInfo<'_>>,
) {
    metrics::counter!("cedar_pdp_list_candidates_total", "api" => front_door).increment(listing.scanned as u64);
    metrics::histogram!("cedar_pdp_list_seconds", "api" => front_door).record(latency.as_secs_f64());
    if !log {
        return;
    }
    let [principal, action, resource] = listing.parts;
    let record = Record {
        decision_id,
        front_door,
        principal,
        action,
        resource,
        decision: "list",
        determining: &[],
        errors: &[],
        policy_version,
        latency,
        reason: None,
        listing: Some(listing),
        http,
        replay: None,
    };
    write(&record);
}

/// Counts and logs a PlanResources answer, in the decision log's one format (decision `plan`, the
/// plan's kind as its reason).
pub fn record_plan(
    log: bool,
    front_door: &'static str,
    decision_id: &str,
    policy_version: &str,
    parts: &[String; 3],
    outcome: &str,
    latency: Duration,
) {
    metrics::histogram!("cedar_pdp_plan_seconds", "api" => front_door).record(latency.as_secs_f64());
    if !log {
        return;
    }
    let [principal, action, resource] = parts;
    let record = Record {
        decision_id,
        front_door,
        principal,
        action,
        resource,
        decision: "plan",
        determining: &[],
        errors: &[],
        policy_version,
        latency,
        reason: Some(outcome),
        listing: None,
        http: None,
        replay: None,
    };
    write(&record);
}

/// One decision-log record: every front door, every kind of answer.
struct Record<'a> {
    decision_id: &'a str,
    front_door: &'static str,
    principal: &'a str,
    action: &'a str,
    resource: &'a str,
    decision: &'static str,
    determining: &'a [String],
    errors: &'a [String],
    policy_version: &'a str,
    latency: Duration,
    /// Why the answer was made without the policies, if it was.
    reason: Option<&'a str>,
    listing: Option<&'a Listing<'a>>,
    http: Option<HttpInfo<'a>>,
    replay: Option<Replayable<'a>>,
}

fn write(r: &Record<'_>) {
    let trace_id = trace::trace_id();
    if !record::write_direct(r, trace_id.as_deref()) {
        via_tracing(r, trace_id.as_deref());
    }
}

/// The record as a `tracing` event: the reference format `record.rs` writes directly.
fn via_tracing(r: &Record<'_>, trace_id: Option<&str>) {
    tracing::info!(
        target: "cedar_pdp::decision",
        trace_id,
        decision_id = r.decision_id,
        api = r.front_door,
        principal = r.principal,
        action = r.action,
        resource = r.resource,
        decision = r.decision,
        determining_policies = ?r.determining,
        errors = ?r.errors,
        policy_version = r.policy_version,
        latency_us = r.latency.as_micros() as u64,
        reason = r.reason,
        listed = r.listing.map(|l| l.listed as u64),
        scanned = r.listing.map(|l| l.scanned as u64),
        complete = r.listing.map(|l| l.complete),
        route = r.http.map(|h| h.route),
        request_id = r.http.map(|h| h.request_id),
        dry_run = r.http.map(|h| h.dry_run),
        context = r.replay.map(|x| x.context),
        request_entities = r.replay.map(|x| x.entities),
        min_revision = r.replay.map(|x| x.min_revision),
        entity_revision = r.replay.map(|x| x.entity_revision),
        "decision"
    );
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    #[test]
    fn uids_are_written_as_cedar_writes_them() {
        let ids = [
            "bob",
            "a-b_c.d@e:f/g+h=i",
            "x y",
            "q\"uote",
            "back\\slash",
            "new\nline",
            "tab\t",
            "\u{e9}t\u{e9}",
            "'",
            "",
            "-_.@:/+=,;!$%&()*<>?[]^`{|}~ #09azAZ",
        ];
        for ty in ["User", "Acme::Corp::User"] {
            for id in ids {
                let uid = cedar_policy::EntityUid::from_type_name_and_id(
                    cedar_policy::EntityTypeName::from_str(ty).unwrap(),
                    cedar_policy::EntityId::new(id),
                );
                assert_eq!(super::uid_text(&uid), uid.to_string(), "{ty} {id:?}");
                // Three in one string, each where its range says.
                let other = cedar_policy::EntityUid::from_str(r#"Action::"view""#).unwrap();
                let (text, ranges) = super::uid_texts([&uid, &other, &uid]);
                let got: Vec<&str> = ranges.iter().map(|r| &text[r.clone()]).collect();
                assert_eq!(got, [uid.to_string(), other.to_string(), uid.to_string()], "{ty} {id:?}");
            }
        }
    }
}
