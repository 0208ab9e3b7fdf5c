//! Benchmark helper: writes gRPC request bodies for h2load, and verifies them with a real client
//! (h2load cannot see gRPC errors: they arrive as HTTP 200 with `grpc-status` in trailers).
//!
//! `bench_client body <check|batch100|health|ext_authz|ext_authz_jwt> FILE` — one length-prefixed gRPC frame.
//! `bench_client verify <check|batch100|health> URL` — sends the same message, checks the answer,
//! prints the response frame's size in bytes (h2load's DATA bytes must be a multiple of it).
//! `bench_client provision URL FILE` — upserts a Cedar entity JSON file through the EntityService,
//! presenting `CEDAR_PDP_TOKEN` when set.

use cedar_pdp::grpc::{AuthorizationServiceClient, EntityServiceClient, pb};
use envoy_types::pb::envoy::config::core::v3::{Address, Metadata, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::service::auth::v3 as authz;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

fn check() -> pb::CheckRequest {
    let uid = |t: &str, id: &str| Some(pb::EntityUid { r#type: t.into(), id: id.into() });
    pb::CheckRequest {
        principal: uid("User", "bob"),
        action: uid("Action", "view"),
        resource: uid("Document", "design-doc"),
        ..Default::default()
    }
}

/// Envoy's check for `GET /docs/plan` on the `tests/fixtures/mesh` mapping, from 127.0.0.1: the
/// principal alice either as jwt_authn-verified claims or as a bearer JWT the PDP verifies (HS256 with
/// the fixture's test key, valid for a day).
fn ext_authz(bearer: bool) -> authz::CheckRequest {
    let mut headers = std::collections::HashMap::from([(":method".to_string(), "GET".to_string())]);
    let mut metadata_context = None;
    if bearer {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let claims =
            serde_json::json!({"sub": "alice", "iss": "https://issuer.test", "aud": "docs", "exp": now + 86_400});
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("test-hs256".into());
        let key = jsonwebtoken::EncodingKey::from_secret(b"cedar-pdp-test-secret-0123456789abcdef");
        let token = jsonwebtoken::encode(&header, &claims, &key).unwrap_or_default();
        headers.insert("authorization".into(), format!("Bearer {token}"));
    } else {
        let payload =
            Struct { fields: [("sub".into(), Value { kind: Some(Kind::StringValue("alice".into())) })].into() };
        let namespace =
            Struct { fields: [("jwt_payload".into(), Value { kind: Some(Kind::StructValue(payload)) })].into() };
        metadata_context = Some(Metadata {
            filter_metadata: [("envoy.filters.http.jwt_authn".into(), namespace)].into(),
            ..Default::default()
        });
    }
    let address = Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: "127.0.0.1".into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(40000)),
            ..Default::default()
        })),
    };
    authz::CheckRequest {
        attributes: Some(authz::AttributeContext {
            source: Some(authz::attribute_context::Peer { address: Some(address), ..Default::default() }),
            request: Some(authz::attribute_context::Request {
                http: Some(authz::attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: "/docs/plan".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            metadata_context,
            ..Default::default()
        }),
    }
}

fn batch100() -> pb::BatchCheckRequest {
    pb::BatchCheckRequest { checks: vec![check(); 100] }
}

/// A Cedar entity JSON array as EntityService entities.
fn entities(file: &str) -> Result<Vec<pb::Entity>, Box<dyn std::error::Error>> {
    let json: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(file)?)?;
    let uid = |v: &serde_json::Value| pb::EntityUid {
        r#type: v["type"].as_str().unwrap_or_default().into(),
        id: v["id"].as_str().unwrap_or_default().into(),
    };
    Ok(json
        .iter()
        .map(|e| pb::Entity {
            uid: Some(uid(&e["uid"])),
            attrs_json: e["attrs"].to_string(),
            parents: e["parents"].as_array().into_iter().flatten().map(uid).collect(),
            tags_json: String::new(),
        })
        .collect())
}

fn frame(message: &impl Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut out = vec![0u8];
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Counts the spans exported to it.
struct Sink {
    spans: std::sync::atomic::AtomicU64,
    file: std::path::PathBuf,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum::<usize>();
        let total = self.spans.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed) + n as u64;
        let _ = std::fs::write(&self.file, total.to_string());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (verb, kind, target) = match args.as_slice() {
        [_, verb, kind, target] => (verb.as_str(), kind.as_str(), target.clone()),
        _ => {
            return Err(
                "usage: bench_client <body|verify> <check|batch100|health> <FILE|URL> | provision URL FILE".into()
            );
        }
    };
    match verb {
        "provision" => {
            let request = pb::UpsertEntitiesRequest { entities: entities(&target)?, ..Default::default() };
            let mut request = tonic::Request::new(request);
            if let Ok(token) = std::env::var("CEDAR_PDP_TOKEN") {
                request.metadata_mut().insert("authorization", format!("Bearer {}", token.trim()).parse()?);
            }
            let revision = EntityServiceClient::connect(kind.to_string()).await?.upsert_entities(request).await?;
            println!("{}", revision.into_inner().revision);
        }
        // An OTLP/gRPC trace collector at `kind` that keeps the number of spans received in `target`.
        "otlp-sink" => {
            let service = TraceServiceServer::new(Sink { spans: Default::default(), file: target.into() });
            tonic::transport::Server::builder().add_service(service).serve(kind.parse()?).await?;
        }
        "body" => {
            let bytes = match kind {
                "check" => frame(&check()),
                "batch100" => frame(&batch100()),
                "health" => frame(&HealthCheckRequest { service: String::new() }),
                "ext_authz" => frame(&ext_authz(false)),
                "ext_authz_jwt" => frame(&ext_authz(true)),
                _ => return Err(format!("unknown kind {kind}").into()),
            };
            std::fs::write(target, bytes)?;
        }
        "verify" => {
            let size = match kind {
                "check" => {
                    let r = AuthorizationServiceClient::connect(target).await?.check(check()).await?.into_inner();
                    if r.decision() != pb::Decision::Allow {
                        return Err(format!("unexpected answer {r:?}").into());
                    }
                    frame(&r).len()
                }
                "batch100" => {
                    let r =
                        AuthorizationServiceClient::connect(target).await?.batch_check(batch100()).await?.into_inner();
                    if r.results.len() != 100 || r.results.iter().any(|c| c.decision() != pb::Decision::Allow) {
                        return Err("unexpected batch answer".into());
                    }
                    frame(&r).len()
                }
                "ext_authz" | "ext_authz_jwt" => {
                    let mut client = authz::authorization_client::AuthorizationClient::connect(target).await?;
                    let r = client.check(ext_authz(kind == "ext_authz_jwt")).await?.into_inner();
                    if r.status.as_ref().map(|s| s.code) != Some(0) {
                        return Err(format!("unexpected answer {r:?}").into());
                    }
                    frame(&r).len()
                }
                "health" => {
                    let channel = tonic::transport::Channel::from_shared(target)?.connect().await?;
                    let r = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await?;
                    frame(&r.into_inner()).len()
                }
                _ => return Err(format!("unknown kind {kind}").into()),
            };
            println!("{size}");
        }
        _ => return Err(format!("unknown verb {verb}").into()),
    }
    Ok(())
}
