//! OpenTelemetry traces from the real binary to a real OTLP/gRPC collector (the OpenTelemetry
//! protocol's own service, served here on a loopback port): a span per call that continues the
//! caller's `traceparent` — from gRPC metadata, from the request Envoy asks about, from an HTTP
//! header — with the decision on it and its trace id in the decision log; nothing exported for a
//! caller that said "not sampled" when the ratio is 0.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cedar_pdp::grpc::AuthorizationServiceClient;
use common::process::{BIN, Process};
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;

/// Every span exported to it.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = request.into_inner().resource_spans.into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans);
        self.0.lock().unwrap().extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// The exported span of trace `trace_id` (hex), waiting for the exporter's next batch.
    fn span_of(&self, trace_id: &str) -> Span {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(span) = self.0.lock().unwrap().iter().find(|s| hex(&s.trace_id) == trace_id) {
                return span.clone();
            }
            assert!(Instant::now() < deadline, "no span of trace {trace_id} was exported");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn has(&self, trace_id: &str) -> bool {
        self.0.lock().unwrap().iter().any(|s| hex(&s.trace_id) == trace_id)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some((kv.key.clone(), s.clone())),
            _ => None,
        })
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn calls_continue_the_callers_trace_with_the_decision_on_their_span() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let collector = Collector::default();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let service = TraceServiceServer::new(collector.clone());
    runtime.spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming));

    let http = format!("127.0.0.1:{}", free_port());
    let mut command = Command::new(BIN);
    command
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0", "--store", "memory", "--http-listen", &http])
        .args(["--otlp-endpoint", &endpoint, "--otlp-sample-ratio", "0", "--policies"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"))
        // The exporter sends its batch after 50 ms instead of 5 s.
        .env("OTEL_BSP_SCHEDULE_DELAY", "50");
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    command.arg("--data-dir").arg(&data);
    let server = Process::try_spawn(command, scratch, data).unwrap();

    let (sampled, unsampled) = ("0af7651916cd43dd8448eb211c80319c", "1bf7651916cd43dd8448eb211c80319d");
    runtime.block_on(async {
        let mut client = AuthorizationServiceClient::connect(server.url()).await.unwrap();
        for (trace, flags) in [(sampled, "01"), (unsampled, "00")] {
            let mut request =
                tonic::Request::new(req(r#"User::"bob""#, r#"Action::"view""#, r#"Document::"handbook""#));
            let traceparent = format!("00-{trace}-b7ad6b7169203331-{flags}");
            request.metadata_mut().insert("traceparent", traceparent.parse().unwrap());
            client.check(request).await.unwrap();
        }
    });
    let span = collector.span_of(sampled);
    assert_eq!(span.name, "/cedar_pdp.v1.AuthorizationService/Check");
    assert_eq!(hex(&span.parent_span_id), "b7ad6b7169203331", "a child of the caller's span");
    let attrs = attributes(&span);
    for field in ["decision_id", "policy_version", "decision"] {
        assert!(attrs.get(field).is_some_and(|v| !v.is_empty()), "the span has {field}: {attrs:?}");
    }
    // The decision log names the trace.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let line = server.lines.recv_timeout(Duration::from_secs(5)).expect("a decision record");
        let record: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if record["decision_id"] == attrs["decision_id"].as_str() {
            assert_eq!(record["trace_id"], sampled, "{record}");
            break;
        }
        assert!(Instant::now() < deadline, "no decision record for the traced Check");
    }

    // A trace Envoy's request carries, and one an HTTP caller sends.
    let (via_envoy, via_http) = ("2cf7651916cd43dd8448eb211c80319e", "3df7651916cd43dd8448eb211c80319f");
    runtime.block_on(async {
        use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
        use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, attribute_context};
        let traceparent = format!("00-{via_envoy}-c7ad6b7169203332-01");
        let checked = attribute_context::HttpRequest {
            method: "GET".into(),
            path: "/anything".into(),
            headers: [("traceparent".to_string(), traceparent)].into(),
            ..Default::default()
        };
        let request = attribute_context::Request { http: Some(checked), ..Default::default() };
        let check =
            CheckRequest { attributes: Some(AttributeContext { request: Some(request), ..Default::default() }) };
        let mut envoy = AuthorizationClient::connect(server.url()).await.unwrap();
        envoy.check(check).await.unwrap();
        let body = serde_json::json!({"subject": {"type": "User", "id": "bob"}, "action": {"name": "view"},
            "resource": {"type": "Document", "id": "handbook"}});
        let answer = reqwest::Client::new()
            .post(format!("http://{http}/access/v1/evaluation"))
            .header("traceparent", format!("00-{via_http}-d7ad6b7169203333-01"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    });
    assert_eq!(hex(&collector.span_of(via_envoy).parent_span_id), "c7ad6b7169203332");
    let span = collector.span_of(via_http);
    assert_eq!(span.name, "POST /access/v1/evaluation");
    assert!(attributes(&span).contains_key("decision_id"));
    assert!(!collector.has(unsampled), "a caller's \"not sampled\" is followed");
}
