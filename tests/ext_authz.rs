//! Envoy's ext_authz v3 Check against the real server, through the envoy-types client, with the
//! `tests/fixtures/mesh` mapping.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;

use common::*;
use envoy_types::pb::envoy::config::core::v3::{Address, Metadata, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

#[derive(Default)]
struct Call<'a> {
    method: &'a str,
    path: &'a str,
    /// `sub` of a jwt_authn-verified payload.
    jwt_sub: Option<&'a str>,
    /// mTLS peer identity.
    peer: Option<&'a str>,
    headers: &'a [(&'a str, &'a str)],
    source_ip: Option<&'a str>,
}

fn check_request(call: &Call<'_>) -> CheckRequest {
    let mut headers: HashMap<String, String> =
        call.headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    headers.insert(":method".into(), call.method.into());
    headers.insert(":path".into(), call.path.into());
    let metadata_context = call.jwt_sub.map(|sub| {
        let string = |s: &str| Value { kind: Some(Kind::StringValue(s.into())) };
        let payload = Struct { fields: [("sub".to_string(), string(sub))].into() };
        let namespace =
            Struct { fields: [("jwt_payload".to_string(), Value { kind: Some(Kind::StructValue(payload)) })].into() };
        Metadata {
            filter_metadata: [("envoy.filters.http.jwt_authn".to_string(), namespace)].into(),
            ..Default::default()
        }
    });
    let address = call.source_ip.map(|ip| Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(40000)),
            ..Default::default()
        })),
    });
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer { address, principal: call.peer.unwrap_or_default().into(), ..Default::default() }),
            request: (!call.method.is_empty()).then(|| Request {
                http: Some(HttpRequest {
                    method: call.method.into(),
                    path: call.path.into(),
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

async fn ext_authz(server: &TestServer, call: Call<'_>) -> CheckResponse {
    let mut client = AuthorizationClient::new(server.channel().await);
    client.check(check_request(&call)).await.unwrap().into_inner()
}

fn code(r: &CheckResponse) -> i32 {
    r.status.as_ref().expect("status is always set").code
}

/// Upstream headers of an allow, by name.
fn upstream_headers(r: &CheckResponse) -> HashMap<String, (String, i32)> {
    match &r.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok
            .headers
            .iter()
            .map(|h| {
                let hv = h.header.as_ref().unwrap();
                (hv.key.clone(), (hv.value.clone(), h.append_action))
            })
            .collect(),
        other => panic!("not an allow: {other:?}"),
    }
}

/// (HTTP status, JSON body) of a deny.
fn denial(r: &CheckResponse) -> (i32, serde_json::Value) {
    match &r.http_response {
        Some(HttpResponse::DeniedResponse(d)) => {
            (d.status.as_ref().unwrap().code, serde_json::from_str(&d.body).unwrap())
        }
        other => panic!("not a deny: {other:?}"),
    }
}

#[tokio::test]
async fn identified_callers_are_decided_by_the_policies() {
    let server = TestServer::start(&fixture("mesh")).await;
    // A jwt_authn-verified alice reads a document: allowed, identity and decision id overwrite
    // anything the client sent.
    let r =
        ext_authz(&server, Call { method: "GET", path: "/docs/plan", jwt_sub: Some("alice"), ..Default::default() })
            .await;
    assert_eq!(code(&r), 0);
    let headers = upstream_headers(&r);
    let overwrite = envoy_types::ext_authz::v3::pb::HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
    assert_eq!(headers["x-cedar-principal"], (r#"User::"alice""#.to_string(), overwrite));
    assert_eq!(headers["x-cedar-decision-id"].0.len(), 36);
    assert_eq!(headers["x-cedar-decision-id"].1, overwrite);

    // bob is identified (mTLS peer) but not staff: 403 with a JSON body carrying the decision id.
    let r =
        ext_authz(&server, Call { method: "GET", path: "/docs/plan", peer: Some("bob"), ..Default::default() }).await;
    assert_eq!(code(&r), 7);
    let (status, body) = denial(&r);
    assert_eq!(status, 403);
    assert_eq!(body["decision"], "deny");
    assert_eq!(body["decision_id"].as_str().unwrap().len(), 36);

    // jwt_authn comes first in `from`: the verified claim wins over the peer identity.
    let r = ext_authz(
        &server,
        Call { method: "GET", path: "/docs/plan", jwt_sub: Some("alice"), peer: Some("bob"), ..Default::default() },
    )
    .await;
    assert_eq!(code(&r), 0);
}

#[tokio::test]
async fn anonymous_callers_reach_public_routes_and_get_401_elsewhere() {
    let server = TestServer::start(&fixture("mesh")).await;
    let r = ext_authz(&server, Call { method: "GET", path: "/docs/handbook", ..Default::default() }).await;
    assert_eq!(code(&r), 0);
    assert_eq!(upstream_headers(&r)["x-cedar-principal"].0, r#"User::"anonymous""#);
    let r = ext_authz(&server, Call { method: "GET", path: "/docs/plan", ..Default::default() }).await;
    assert_eq!(code(&r), 16);
    assert_eq!(denial(&r).0, 401);
}

#[tokio::test]
async fn unmatched_and_non_http_requests_are_denied() {
    let server = TestServer::start(&fixture("mesh")).await;
    for (method, path) in [("DELETE", "/docs/plan"), ("GET", "/admin"), ("GET", "/docs/plan/extra")] {
        let r = ext_authz(&server, Call { method, path, jwt_sub: Some("alice"), ..Default::default() }).await;
        assert_eq!(code(&r), 7, "{method} {path}");
        assert_eq!(denial(&r).0, 403);
    }
    // Envoy's network filter sends no HTTP attributes.
    let r = ext_authz(&server, Call { peer: Some("alice"), ..Default::default() }).await;
    assert_eq!(code(&r), 7);
}

#[tokio::test]
async fn context_carries_allowed_headers_and_the_source_address() {
    let server = TestServer::start(&fixture("mesh")).await;
    let call = |headers, source_ip| Call {
        method: "PUT",
        path: "/docs/plan",
        jwt_sub: Some("alice"),
        headers,
        source_ip,
        ..Default::default()
    };
    assert_eq!(code(&ext_authz(&server, call(&[], Some("127.0.0.1"))).await), 0);
    // Edits only from loopback; a blocked tenant never.
    assert_eq!(code(&ext_authz(&server, call(&[], Some("10.1.2.3"))).await), 7);
    assert_eq!(code(&ext_authz(&server, call(&[("x-tenant", "blocked")], Some("127.0.0.1"))).await), 7);
    // Headers not in the allow-list never reach Cedar (the schema would refuse them).
    assert_eq!(code(&ext_authz(&server, call(&[("x-other", "1")], Some("127.0.0.1"))).await), 0);
}

#[tokio::test]
async fn dry_run_routes_allow_what_the_policies_deny() {
    let server = TestServer::start(&fixture("mesh")).await;
    // bob may not edit alice's plan; on the dry-run route he passes, and the real decision is logged.
    let r = ext_authz(
        &server,
        Call {
            method: "POST",
            path: "/docs/plan/draft",
            peer: Some("bob"),
            source_ip: Some("127.0.0.1"),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(code(&r), 0);
    let r = ext_authz(
        &server,
        Call {
            method: "PUT",
            path: "/docs/plan",
            peer: Some("bob"),
            source_ip: Some("127.0.0.1"),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(code(&r), 7);
}

#[tokio::test]
async fn a_bad_mapping_does_not_load_and_says_where() {
    let dir = copy_dir(&fixture("mesh"));
    let text = std::fs::read_to_string(dir.path().join("ext_authz.toml")).unwrap();
    std::fs::write(dir.path().join("ext_authz.toml"), text.replace(r#"Action::"edit""#, r#"Action::"delete""#))
        .unwrap();
    let err = match TestServer::try_start_with(dir.path(), |_| {}).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("started with a bad mapping"),
    };
    assert!(
        err.contains("ext_authz.toml") && err.contains(r#"`Action::"delete"` is not an action the schema declares"#),
        "{err}"
    );
}

#[tokio::test]
async fn without_a_mapping_every_request_is_denied() {
    let server = TestServer::start(&example_policies()).await;
    let r = ext_authz(&server, Call { method: "GET", path: "/", jwt_sub: Some("alice"), ..Default::default() }).await;
    assert_eq!(code(&r), 7);
}

fn token(sub: &str, aud: &str, exp_from_now: i64, secret: &[u8]) -> String {
    token_with(serde_json::json!({"sub": sub, "aud": aud}), exp_from_now, secret)
}

fn token_with(mut claims: serde_json::Value, exp_from_now: i64, secret: &[u8]) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    if claims.get("iss").is_none() {
        claims["iss"] = "https://issuer.test".into();
    }
    claims["exp"] = (now + exp_from_now).into();
    claims["nbf"] = (now - 5).into();
    // A null claim is left out: how a test drops `iss`.
    claims.as_object_mut().unwrap().retain(|_, v| !v.is_null());
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("test-hs256".into());
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(secret)).unwrap()
}

const SECRET: &[u8] = b"cedar-pdp-test-secret-0123456789abcdef";

#[tokio::test]
async fn bearer_tokens_are_verified_here() {
    let server = TestServer::start(&fixture("mesh")).await;
    let server = &server;
    let call = |auth: String| async move {
        let headers = [("authorization", auth.as_str())];
        ext_authz(server, Call { method: "GET", path: "/docs/plan", headers: &headers, ..Default::default() }).await
    };
    let ok = call(format!("Bearer {}", token("alice", "docs", 300, SECRET))).await;
    assert_eq!(code(&ok), 0);
    assert_eq!(upstream_headers(&ok)["x-cedar-principal"].0, r#"User::"alice""#);
    // Verified but not allowed: 403, not 401.
    let bob = call(format!("Bearer {}", token("bob", "docs", 300, SECRET))).await;
    assert_eq!(denial(&bob).0, 403);
    for (what, auth) in [
        ("expired", format!("Bearer {}", token("alice", "docs", -120, SECRET))),
        ("another audience", format!("Bearer {}", token("alice", "billing", 300, SECRET))),
        ("another key", format!("Bearer {}", token("alice", "docs", 300, b"not-the-secret"))),
        ("garbage", "Bearer not.a.jwt".to_string()),
    ] {
        let r = call(auth).await;
        assert_eq!(code(&r), 16, "{what}");
        let (status, body) = denial(&r);
        assert_eq!(status, 401, "{what}");
        assert!(body["reason"].as_str().unwrap().starts_with("invalid bearer token"), "{what}: {body}");
    }
    // A public route with a bad token is still a 401: a token that does not verify is never ignored.
    let headers = [("authorization", "Bearer not.a.jwt")];
    let r = ext_authz(server, Call { method: "GET", path: "/docs/handbook", headers: &headers, ..Default::default() })
        .await;
    assert_eq!(denial(&r).0, 401);
}

/// With `groups_claim` and `attributes`, a token's groups become the principal's parents and its
/// claims its attributes, for that request; a stored principal cannot be redefined that way.
#[tokio::test]
async fn token_claims_can_carry_groups_and_attributes() {
    let dir = copy_dir(&fixture("mesh"));
    let path = dir.path().join("ext_authz.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace(
        "anonymous = 'User::\"anonymous\"'",
        "anonymous = 'User::\"anonymous\"'\ngroups_claim = \"groups\"\ngroup_type = \"Group\"\nattributes = { email = \"email\" }",
    );
    std::fs::write(&path, text).unwrap();
    let server = TestServer::start(dir.path()).await;
    let read = |claims: serde_json::Value| {
        let auth = format!("Bearer {}", token_with(claims, 300, SECRET));
        let server = &server;
        async move {
            let headers = [("authorization", auth.as_str())];
            ext_authz(server, Call { method: "GET", path: "/docs/plan", headers: &headers, ..Default::default() }).await
        }
    };
    // carol is not a stored user: her token's groups and email decide.
    assert_eq!(code(&read(serde_json::json!({"sub": "carol", "aud": "docs", "groups": ["staff"]})).await), 0);
    assert_eq!(code(&read(serde_json::json!({"sub": "carol", "aud": "docs", "groups": "eng staff"})).await), 0);
    assert_eq!(code(&read(serde_json::json!({"sub": "carol", "aud": "docs", "groups": ["eng"]})).await), 7);
    assert_eq!(code(&read(serde_json::json!({"sub": "carol", "aud": "docs", "email": "carol@example.com"})).await), 0);
    // A claim cannot smuggle in an entity reference.
    let smuggled =
        serde_json::json!({"sub": "carol", "aud": "docs", "email": {"__entity": {"type": "User", "id": "alice"}}});
    assert_eq!(code(&read(smuggled).await), 7);
    // alice is stored: a token cannot redefine her, so the request is refused, never allowed.
    let r = read(serde_json::json!({"sub": "alice", "aud": "docs", "groups": ["staff"]})).await;
    assert_eq!(code(&r), 3);
    assert_eq!(denial(&r).0, 403);
}

#[tokio::test]
async fn credentials_that_do_not_verify_are_never_ignored() {
    let server = TestServer::start(&fixture("mesh")).await;
    let server = &server;
    let get = |auth: String| async move {
        let headers = [("authorization", auth.as_str())];
        ext_authz(server, Call { method: "GET", path: "/docs/handbook", headers: &headers, ..Default::default() }).await
    };
    let expired = token("alice", "docs", -300, SECRET);
    for (what, auth) in [
        ("lower-case scheme", format!("bearer {expired}")),
        ("another scheme", "Basic YWxpY2U6c2VjcmV0".to_string()),
        ("no audience", format!("Bearer {}", token_with(serde_json::json!({"sub": "alice"}), 300, SECRET))),
        (
            "no issuer",
            format!(
                "Bearer {}",
                token_with(serde_json::json!({"sub": "alice", "aud": "docs", "iss": null}), 300, SECRET)
            ),
        ),
        ("no subject", format!("Bearer {}", token_with(serde_json::json!({"aud": "docs"}), 300, SECRET))),
    ] {
        let r = get(auth).await;
        assert_eq!(code(&r), 16, "{what}");
        let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else { panic!("{what}: not denied") };
        assert!(d.headers.iter().any(|h| h.header.as_ref().unwrap().key == "www-authenticate"), "{what}");
    }
    assert_eq!(code(&get(format!("bearer {}", token("alice", "docs", 300, SECRET))).await), 0);
}

#[tokio::test]
async fn raw_header_maps_are_read_like_headers() {
    let server = TestServer::start(&fixture("mesh")).await;
    let raw = |pairs: &[(&str, &str)]| {
        let mut req = check_request(&Call {
            method: "GET",
            path: "/docs/plan",
            source_ip: Some("127.0.0.1"),
            ..Default::default()
        });
        let http = req.attributes.as_mut().unwrap().request.as_mut().unwrap().http.as_mut().unwrap();
        http.headers.clear();
        http.header_map = Some(envoy_types::pb::envoy::config::core::v3::HeaderMap {
            headers: pairs
                .iter()
                .map(|(k, v)| envoy_types::pb::envoy::config::core::v3::HeaderValue {
                    key: k.to_string(),
                    raw_value: v.as_bytes().to_vec(),
                    ..Default::default()
                })
                .collect(),
        });
        req
    };
    let mut client = AuthorizationClient::new(server.channel().await);
    let alice = format!("Bearer {}", token("alice", "docs", 300, SECRET));
    let ok = client.check(raw(&[("authorization", &alice)])).await.unwrap().into_inner();
    assert_eq!(code(&ok), 0);
    let blocked = client.check(raw(&[("authorization", &alice), ("x-tenant", "blocked")])).await.unwrap().into_inner();
    assert_eq!(code(&blocked), 7);
}

#[tokio::test]
async fn fallback_allows_still_overwrite_identity_headers_and_repeated_query_keys_are_refused() {
    let dir = copy_dir(&fixture("mesh"));
    let path = dir.path().join("ext_authz.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace("unmatched = \"deny\"", "unmatched = \"allow\"");
    std::fs::write(&path, text.replace("[context]\n", "[context]\nquery = [\"v\"]\n")).unwrap();
    let server = TestServer::start(dir.path()).await;
    let forged = [("x-cedar-principal", r#"User::"admin""#)];
    let r = ext_authz(&server, Call { method: "GET", path: "/somewhere/else", headers: &forged, ..Default::default() })
        .await;
    assert_eq!(code(&r), 0);
    let headers = upstream_headers(&r);
    assert_eq!(headers["x-cedar-principal"].0, r#"User::"anonymous""#);
    assert_eq!(
        headers["x-cedar-principal"].1,
        envoy_types::ext_authz::v3::pb::HeaderAppendAction::OverwriteIfExistsOrAdd as i32
    );
    let r = ext_authz(&server, Call { method: "GET", path: "/docs/handbook?v=1&v=2", ..Default::default() }).await;
    assert_eq!(code(&r), 3);
    assert_eq!(denial(&r).0, 400);
}

#[tokio::test]
async fn rotated_keys_take_effect_on_reload() {
    let dir = copy_dir(&fixture("mesh"));
    let server = TestServer::start(dir.path()).await;
    let new_secret = b"a-rotated-secret-for-the-test-0123456789";
    let new_key = serde_json::json!({"keys": [{"kty": "oct", "kid": "test-hs256", "alg": "HS256",
        "k": base64_url(new_secret)}]});
    let before = server.status().await.policy_version;
    write_atomic(&dir.path().join("jwks.json"), &new_key.to_string());
    eventually("the new key set is loaded", std::time::Duration::from_secs(10), || async {
        server.status().await.policy_version != before
    })
    .await;
    let with = |secret: &'static [u8]| {
        let auth = format!("Bearer {}", token("alice", "docs", 300, secret));
        let server = &server;
        async move {
            let headers = [("authorization", auth.as_str())];
            code(
                &ext_authz(server, Call { method: "GET", path: "/docs/plan", headers: &headers, ..Default::default() })
                    .await,
            )
        }
    };
    assert_eq!(with(new_secret).await, 0);
    assert_eq!(with(SECRET).await, 16);
}

fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A JWKS endpoint over HTTPS on loopback: the set it serves, or an error status, and a count of
/// the fetches it answered.
struct JwksServer {
    url: String,
    answer: std::sync::Arc<std::sync::Mutex<(u16, String)>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _stop: tokio_util::sync::CancellationToken,
}

impl JwksServer {
    async fn start(pki: &common::pki::Pki) -> JwksServer {
        use axum::http::StatusCode;
        let files = cedar_pdp::tls::TlsFiles {
            cert: pki.cert(),
            key: pki.key(),
            client_ca: None,
            client_auth: cedar_pdp::tls::ClientAuth::Required,
        };
        let tls = cedar_pdp::tls::Tls::load(files).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let incoming = cedar_pdp::tls::Incoming::new(listener, Some((tls, cedar_pdp::tls::Alpn::Http))).unwrap();
        let answer = std::sync::Arc::new(std::sync::Mutex::new((200, String::new())));
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (state, count) = (answer.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (status, body) = state.lock().unwrap().clone();
                std::future::ready((StatusCode::from_u16(status).unwrap(), body))
            }),
        );
        let stop = tokio_util::sync::CancellationToken::new();
        let until = stop.clone();
        tokio::spawn(async move {
            axum::serve(incoming, app).with_graceful_shutdown(async move { until.cancelled().await }).await.unwrap();
        });
        JwksServer { url: format!("https://localhost:{port}/jwks.json"), answer, fetches, _stop: stop }
    }

    /// Serves a set of HS256 keys: (kid, secret).
    fn publish(&self, keys: &[(&str, &[u8])]) {
        let keys: Vec<serde_json::Value> = keys
            .iter()
            .map(|(kid, secret)| serde_json::json!({"kty": "oct", "kid": kid, "alg": "HS256", "k": base64url(secret)}))
            .collect();
        *self.answer.lock().unwrap() = (200, serde_json::json!({ "keys": keys }).to_string());
    }

    fn fail(&self) {
        *self.answer.lock().unwrap() = (500, "down".into());
    }

    fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A token for alice signed with `secret`, naming key `kid`.
fn token_signed(kid: &str, secret: &[u8]) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let claims = serde_json::json!({"sub": "alice", "aud": "docs", "iss": "https://issuer.test", "exp": now + 300});
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(secret)).unwrap()
}

/// The mesh fixture with its keys at `jwks`'s URL, fetched again every `refresh`.
async fn mesh_with_jwks_url(
    pki: &common::pki::Pki,
    jwks: &JwksServer,
    refresh: &str,
) -> (tempfile::TempDir, TestServer) {
    let dir = copy_dir(&fixture("mesh"));
    let path = dir.path().join("ext_authz.toml");
    std::fs::copy(pki.ca_file(), dir.path().join("idp-ca.crt")).unwrap();
    let toml = std::fs::read_to_string(&path).unwrap().replace(
        "jwks_file = \"jwks.json\"",
        &format!("jwks_url = \"{}\"\njwks_ca_file = \"idp-ca.crt\"\njwks_refresh = \"{refresh}\"", jwks.url),
    );
    std::fs::write(&path, toml).unwrap();
    let server = TestServer::start(dir.path()).await;
    (dir, server)
}

async fn with_bearer(server: &TestServer, token: &str) -> CheckResponse {
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str())];
    ext_authz(server, Call { method: "GET", path: "/docs/plan", headers: &headers, ..Default::default() }).await
}

const K1: &[u8] = b"first-key-0123456789abcdef-0123456789";
const K2: &[u8] = b"second-key-0123456789abcdef-012345678";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_url_is_fetched_again_when_a_token_names_an_unknown_key() {
    let pki = common::pki::Pki::new();
    let jwks = JwksServer::start(&pki).await;
    jwks.publish(&[("k1", K1)]);
    let (_dir, server) = mesh_with_jwks_url(&pki, &jwks, "1h").await;
    assert_eq!(code(&with_bearer(&server, &token_signed("k1", K1)).await), 0);
    assert_eq!(jwks.fetches(), 1, "fetched once, at load");

    // The IdP rotates a key in: the first token naming it is accepted, after one fetch.
    jwks.publish(&[("k1", K1), ("k2", K2)]);
    assert_eq!(code(&with_bearer(&server, &token_signed("k2", K2)).await), 0);
    assert_eq!(jwks.fetches(), 2);
    // Made-up key ids get a 401, and do not make the server hammer the IdP: at most one fetch per
    // 30 s, and there was one just now.
    for _ in 0..3 {
        assert_eq!(denial(&with_bearer(&server, &token_signed("k9", K2)).await).0, 401);
    }
    assert_eq!(jwks.fetches(), 2);
    let status = server.status().await.jwks.unwrap();
    assert_eq!((status.url.as_str(), status.keys), (jwks.url.as_str(), 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_key_is_refused_after_a_refresh_and_a_failing_endpoint_keeps_the_last_keys() {
    let pki = common::pki::Pki::new();
    let jwks = JwksServer::start(&pki).await;
    jwks.publish(&[("k1", K1), ("k2", K2)]);
    let (_dir, server) = mesh_with_jwks_url(&pki, &jwks, "200ms").await;
    assert_eq!(code(&with_bearer(&server, &token_signed("k1", K1)).await), 0);

    // k1 is withdrawn: once a refresh has run, tokens signed with it are refused.
    jwks.publish(&[("k2", K2)]);
    let server = &server;
    eventually("a token on the removed key is refused", std::time::Duration::from_secs(5), || async move {
        code(&with_bearer(server, &token_signed("k1", K1)).await) == 16
    })
    .await;
    assert_eq!(code(&with_bearer(server, &token_signed("k2", K2)).await), 0);

    // The endpoint fails: the last keys stay, the failure is counted and shown.
    jwks.fail();
    eventually("the failed fetch shows in status", std::time::Duration::from_secs(5), || async move {
        server.status().await.jwks.is_some_and(|j| j.fetch_failures > 0 && j.last_error.contains("500"))
    })
    .await;
    assert_eq!(code(&with_bearer(server, &token_signed("k2", K2)).await), 0);
    assert_eq!(server.status().await.jwks.unwrap().keys, 1);
}

#[test]
fn a_jwks_url_must_be_https_except_on_loopback() {
    let dir = copy_dir(&fixture("mesh"));
    let path = dir.path().join("ext_authz.toml");
    let toml = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, toml.replace("jwks_file = \"jwks.json\"", "jwks_url = \"http://idp.example/jwks\"")).unwrap();
    let Err(error) = cedar_pdp::policy::load_dir(dir.path(), cedar_pdp::config::ValidationMode::Strict) else {
        panic!("a plain-HTTP JWKS URL to another host loaded")
    };
    assert!(error.to_string().contains("must be https://"), "{error}");
}

/// A route's `context_extensions` and a header Envoy sent twice in a raw header map (joined with `,`)
/// reach the policies as `context.extensions` and `context.headers`.
#[tokio::test]
async fn route_extensions_and_repeated_raw_headers_reach_the_context() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.cedar"),
        r#"permit (principal == User::"alice", action, resource)
           when { context.extensions.tenant == "acme" && context.headers["x-tenant"] == "a,b" };"#,
    )
    .unwrap();
    let mapping = "[principal]\ntype = \"User\"\nfrom = [\"peer\"]\nanonymous = 'User::\"anonymous\"'\n\n[context]\nheaders = [\"x-tenant\"]\nextensions = true\n\n\
                   [[route]]\nname = \"read\"\npath = \"/docs/{id}\"\naction = 'Action::\"view\"'\nresource = 'Document::\"{id}\"'\n";
    std::fs::write(dir.path().join("ext_authz.toml"), mapping).unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = AuthorizationClient::new(server.channel().await);
    let call = |tenants: &[&str], extension: &str| {
        let mut req =
            check_request(&Call { method: "GET", path: "/docs/plan", peer: Some("alice"), ..Default::default() });
        let attributes = req.attributes.as_mut().unwrap();
        attributes.context_extensions = [("tenant".to_string(), extension.to_string())].into();
        let http = attributes.request.as_mut().unwrap().http.as_mut().unwrap();
        let raw = tenants.iter().map(|t| envoy_types::pb::envoy::config::core::v3::HeaderValue {
            key: "X-Tenant".into(),
            raw_value: t.as_bytes().to_vec(),
            ..Default::default()
        });
        http.header_map = Some(envoy_types::pb::envoy::config::core::v3::HeaderMap { headers: raw.collect() });
        req
    };
    assert_eq!(code(&client.check(call(&["a", "b"], "acme")).await.unwrap().into_inner()), 0);
    assert_eq!(code(&client.check(call(&["a", "b"], "other")).await.unwrap().into_inner()), 7);
    assert_eq!(code(&client.check(call(&["a"], "acme")).await.unwrap().into_inner()), 7);
    assert_eq!(code(&client.check(call(&["b", "a"], "acme")).await.unwrap().into_inner()), 7);
}
