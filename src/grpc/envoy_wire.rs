//! Envoy's `envoy.service.auth.v3.CheckRequest` as this service reads it, and the `Authorization`
//! service that decodes it.
//!
//! Only the fields the ext_authz mapping reads are declared; prost skips the rest on the wire without
//! allocating. Protobuf maps are declared as the repeated entries they are on the wire, so decoding
//! hashes nothing (envoy-types decodes each into a SipHash `HashMap`: a fifth of the decode). A key
//! repeated in a map keeps its last value, as a protobuf map does. The answer is envoy-types'
//! `CheckResponse`, unchanged.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use envoy_types::ext_authz::v3::pb::CheckResponse;
use tonic::codegen::{Body, BoxFuture, StdError, http};

use super::ext_authz::ExtAuthzApi;

#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckRequest {
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<AttributeContext>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeContext {
    #[prost(message, optional, tag = "1")]
    pub source: Option<Peer>,
    #[prost(message, optional, tag = "4")]
    pub request: Option<Request>,
    #[prost(message, repeated, tag = "10")]
    pub context_extensions: Vec<Entry>,
    #[prost(message, optional, tag = "11")]
    pub metadata_context: Option<Metadata>,
}

/// The downstream peer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Peer {
    #[prost(message, optional, tag = "1")]
    pub address: Option<Address>,
    /// The mTLS identity (a SPIFFE id or the certificate's subject).
    #[prost(string, tag = "4")]
    pub principal: String,
}

/// `config.core.v3.Address`: its `socket_address` member.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Address {
    #[prost(message, optional, tag = "1")]
    pub socket_address: Option<SocketAddress>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SocketAddress {
    #[prost(string, tag = "2")]
    pub address: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    #[prost(message, optional, tag = "2")]
    pub http: Option<HttpRequest>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpRequest {
    #[prost(string, tag = "2")]
    pub method: String,
    /// Lowercase names; a name Envoy saw twice has its values joined with `,`.
    #[prost(message, repeated, tag = "3")]
    pub headers: Vec<Entry>,
    #[prost(string, tag = "4")]
    pub path: String,
    /// Instead of `headers`, with Envoy's `encode_raw_headers`.
    #[prost(message, optional, tag = "13")]
    pub header_map: Option<HeaderMap>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderMap {
    #[prost(message, repeated, tag = "1")]
    pub headers: Vec<HeaderValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
    #[prost(bytes = "vec", tag = "3")]
    pub raw_value: Vec<u8>,
}

/// One entry of a `map<string, string>`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `config.core.v3.Metadata`: `filter_metadata`, a `map<string, Struct>`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metadata {
    #[prost(message, repeated, tag = "1")]
    pub filter_metadata: Vec<StructEntry>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StructEntry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Struct>,
}

/// `google.protobuf.Struct`: `fields`, a `map<string, Value>`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Struct {
    #[prost(message, repeated, tag = "1")]
    pub fields: Vec<ValueEntry>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueEntry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Value>,
}

/// `google.protobuf.Value`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    #[prost(oneof = "Kind", tags = "1, 2, 3, 4, 5, 6")]
    pub kind: Option<Kind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Kind {
    #[prost(int32, tag = "1")]
    Null(i32),
    #[prost(double, tag = "2")]
    Number(f64),
    #[prost(string, tag = "3")]
    String(String),
    #[prost(bool, tag = "4")]
    Bool(bool),
    #[prost(message, tag = "5")]
    Struct(Struct),
    #[prost(message, tag = "6")]
    List(ListValue),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListValue {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<Value>,
}

/// The value of `key` among a `map<string, string>`'s entries: the last, as a protobuf map keeps it.
pub fn entry<'a>(entries: &'a [Entry], key: &str) -> Option<&'a str> {
    entries.iter().rev().find(|e| e.key == key).map(|e| e.value.as_str())
}

impl Struct {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.iter().rev().find(|f| f.key == key)?.value.as_ref()
    }
}

impl Value {
    /// As JSON (Envoy metadata, claims); a field repeated in a struct keeps its last value.
    pub fn to_json(&self) -> serde_json::Value {
        match &self.kind {
            Some(Kind::String(s)) => s.clone().into(),
            Some(Kind::Number(n)) => serde_json::Number::from_f64(*n).map_or(serde_json::Value::Null, Into::into),
            Some(Kind::Bool(b)) => (*b).into(),
            Some(Kind::Struct(s)) => s
                .fields
                .iter()
                .map(|f| (f.key.clone(), f.value.as_ref().map_or(serde_json::Value::Null, Value::to_json)))
                .collect(),
            Some(Kind::List(l)) => l.values.iter().map(Value::to_json).collect(),
            Some(Kind::Null(_)) | None => serde_json::Value::Null,
        }
    }
}

impl Metadata {
    pub fn get(&self, key: &str) -> Option<&Struct> {
        self.filter_metadata.iter().rev().find(|f| f.key == key)?.value.as_ref()
    }
}

impl CheckRequest {
    /// The downstream's IP address, as Envoy saw it.
    pub fn client_address(&self) -> Option<&str> {
        let peer = self.attributes.as_ref()?.source.as_ref()?;
        Some(peer.address.as_ref()?.socket_address.as_ref()?.address.as_str())
    }
}

const CHECK: &str = "/envoy.service.auth.v3.Authorization/Check";

/// `envoy.service.auth.v3.Authorization`, decoding requests as [`CheckRequest`].
#[derive(Clone)]
pub struct AuthorizationServer {
    api: Arc<ExtAuthzApi>,
    max_decoding_message_size: usize,
}

impl AuthorizationServer {
    pub fn new(api: ExtAuthzApi, max_decoding_message_size: usize) -> Self {
        AuthorizationServer { api: Arc::new(api), max_decoding_message_size }
    }
}

impl tonic::server::NamedService for AuthorizationServer {
    const NAME: &'static str = "envoy.service.auth.v3.Authorization";
}

impl<B> tower::Service<http::Request<B>> for AuthorizationServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != CHECK {
            return Box::pin(async { Ok(tonic::Status::unimplemented("no such method").into_http()) });
        }
        let (api, limit) = (self.api.clone(), self.max_decoding_message_size);
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<CheckResponse, CheckRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec).apply_max_message_size_config(Some(limit), None);
            Ok(grpc.unary(Check(api), request).await)
        })
    }
}

struct Check(Arc<ExtAuthzApi>);

impl tonic::server::UnaryService<CheckRequest> for Check {
    type Response = CheckResponse;
    type Future = BoxFuture<tonic::Response<CheckResponse>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<CheckRequest>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move { api.check(request).await })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::envoy::service::auth::v3 as auth;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context as attrs;
    use envoy_types::pb::google::protobuf as pbuf;
    use prost::Message;

    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn text(s: &str) -> pbuf::Value {
        pbuf::Value { kind: Some(pbuf::value::Kind::StringValue(s.into())) }
    }

    fn object(fields: Vec<(&str, pbuf::Value)>) -> pbuf::Struct {
        pbuf::Struct { fields: fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect() }
    }

    /// A check with every field Envoy fills in, the ones skipped here too.
    fn envoy(tenant: &str, sub: &str) -> auth::CheckRequest {
        let peer = |ip: &str, principal: &str| attrs::Peer {
            address: Some(core::Address {
                address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                    address: ip.into(),
                    port_specifier: Some(core::socket_address::PortSpecifier::PortValue(443)),
                    ..Default::default()
                })),
            }),
            service: "svc".into(),
            labels: map(&[("app", "web")]),
            principal: principal.into(),
            certificate: "-----BEGIN CERTIFICATE-----".into(),
        };
        let list = pbuf::Value {
            kind: Some(pbuf::value::Kind::ListValue(pbuf::ListValue { values: vec![text("eng"), text(tenant)] })),
        };
        let claims = object(vec![
            ("sub", text(sub)),
            ("groups", list),
            ("n", pbuf::Value { kind: Some(pbuf::value::Kind::NumberValue(2.5)) }),
            ("ok", pbuf::Value { kind: Some(pbuf::value::Kind::BoolValue(true)) }),
            ("none", pbuf::Value { kind: Some(pbuf::value::Kind::NullValue(0)) }),
        ]);
        let payload = object(vec![("jwt_payload", pbuf::Value { kind: Some(pbuf::value::Kind::StructValue(claims)) })]);
        let metadata = core::Metadata {
            filter_metadata: [("envoy.filters.http.jwt_authn".to_string(), payload)].into(),
            ..Default::default()
        };
        let raw = |k: &str, v: &str| core::HeaderValue {
            key: k.into(),
            raw_value: v.as_bytes().to_vec(),
            ..Default::default()
        };
        auth::CheckRequest {
            attributes: Some(auth::AttributeContext {
                source: Some(peer("10.0.0.7", "spiffe://mesh/ns/a/sa/web")),
                destination: Some(peer("10.0.0.8", "spiffe://mesh/ns/b/sa/api")),
                request: Some(attrs::Request {
                    time: Some(pbuf::Timestamp { seconds: 1_700_000_000, nanos: 5 }),
                    http: Some(attrs::HttpRequest {
                        id: "1234".into(),
                        method: "PUT".into(),
                        headers: map(&[(":method", "PUT"), ("x-tenant", tenant), ("x-request-id", "r-1")]),
                        header_map: Some(core::HeaderMap {
                            headers: vec![raw("x-tenant", tenant), raw("accept", "*/*")],
                        }),
                        path: "/docs/plan?x=1".into(),
                        host: "docs.internal".into(),
                        scheme: "https".into(),
                        size: 12,
                        protocol: "HTTP/2".into(),
                        body: "{\"a\": 1}".into(),
                        raw_body: b"{\"a\": 1}".to_vec(),
                        ..Default::default()
                    }),
                }),
                context_extensions: map(&[("tenant", tenant), ("route", "docs")]),
                metadata_context: Some(metadata.clone()),
                route_metadata_context: Some(metadata),
                tls_session: Some(attrs::TlsSession { sni: "docs.internal".into() }),
            }),
        }
    }

    fn json_theirs(value: &pbuf::Value) -> serde_json::Value {
        use pbuf::value::Kind as K;
        match &value.kind {
            Some(K::StringValue(s)) => s.clone().into(),
            Some(K::NumberValue(n)) => (*n).into(),
            Some(K::BoolValue(b)) => (*b).into(),
            Some(K::StructValue(s)) => s.fields.iter().map(|(k, v)| (k.clone(), json_theirs(v))).collect(),
            Some(K::ListValue(l)) => l.values.iter().map(json_theirs).collect(),
            Some(K::NullValue(_)) | None => serde_json::Value::Null,
        }
    }

    /// What envoy-types decodes, this decodes too, with the same value for every key a map repeats:
    /// two messages back to back are one message, merged by protobuf's rules, so every map key in the
    /// second repeats one of the first.
    #[test]
    fn decodes_as_envoy_types_does_and_a_repeated_map_key_keeps_its_last_value() {
        let mut bytes = envoy("acme", "alice").encode_to_vec();
        bytes.extend(envoy("globex", "bob").encode_to_vec());
        let theirs = auth::CheckRequest::decode(&bytes[..]).unwrap().attributes.unwrap();
        let ours = CheckRequest::decode(&bytes[..]).unwrap();
        let (theirs_http, ours_http) = (
            theirs.request.as_ref().unwrap().http.as_ref().unwrap(),
            ours.attributes.as_ref().unwrap().request.as_ref().unwrap().http.as_ref().unwrap(),
        );
        assert_eq!((&ours_http.method, &ours_http.path), (&theirs_http.method, &theirs_http.path));
        assert_eq!(theirs_http.headers["x-tenant"], "globex");
        for (name, value) in &theirs_http.headers {
            assert_eq!(entry(&ours_http.headers, name), Some(value.as_str()), "{name}");
        }
        let pairs = |keys: Vec<(&str, &str, &[u8])>| {
            keys.into_iter().map(|(k, v, r)| (k.to_owned(), v.to_owned(), r.to_vec())).collect::<Vec<_>>()
        };
        let theirs_raw = theirs_http
            .header_map
            .as_ref()
            .unwrap()
            .headers
            .iter()
            .map(|h| (h.key.as_str(), h.value.as_str(), &h.raw_value[..]));
        let ours_raw = ours_http
            .header_map
            .as_ref()
            .unwrap()
            .headers
            .iter()
            .map(|h| (h.key.as_str(), h.value.as_str(), &h.raw_value[..]));
        assert_eq!(pairs(ours_raw.collect()), pairs(theirs_raw.collect()));
        let ours = ours.attributes.as_ref().unwrap();
        assert_eq!(theirs.context_extensions["tenant"], "globex");
        for (key, value) in &theirs.context_extensions {
            assert_eq!(entry(&ours.context_extensions, key), Some(value.as_str()), "{key}");
        }
        let theirs_payload = &theirs.metadata_context.as_ref().unwrap().filter_metadata["envoy.filters.http.jwt_authn"];
        let ours_payload = ours.metadata_context.as_ref().unwrap().get("envoy.filters.http.jwt_authn").unwrap();
        let (theirs_claims, ours_claims) =
            (&theirs_payload.fields["jwt_payload"], ours_payload.get("jwt_payload").unwrap());
        assert_eq!(ours_claims.to_json(), json_theirs(theirs_claims));
        assert_eq!(ours_claims.to_json()["sub"], "bob");
        let source = theirs.source.as_ref().unwrap();
        assert_eq!(ours.source.as_ref().unwrap().principal, source.principal);
        let Some(core::address::Address::SocketAddress(address)) = &source.address.as_ref().unwrap().address else {
            panic!("a socket address")
        };
        assert_eq!(CheckRequest::decode(&bytes[..]).unwrap().client_address(), Some(address.address.as_str()));
    }
}
