//! TLS and mTLS with certificates generated here (rcgen), through tonic's real TLS client: which
//! connections are served, the identities certificates carry, and certificates rotated under load.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cedar_pdp::grpc::{AuthorizationServiceClient, EntityServiceClient, pb};
use cedar_pdp::tls::ClientAuth;
use common::pki::{Ca, Pki};
use common::{TestServer, entity, eventually, example_policies, req};
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tonic::Code;
use tonic::transport::{Channel, ClientTlsConfig};

const PROVISIONER: &str = "spiffe://example.org/ns/idp/sa/provisioner";
const GATEWAY: &str = "spiffe://example.org/ns/edge/sa/gateway";
const INTRUDER: &str = "spiffe://example.org/ns/dev/sa/anything";

fn alice_views() -> pb::CheckRequest {
    req(r#"User::"bob""#, r#"Action::"view""#, r#"Document::"handbook""#)
}

/// A server with TLS from `pki`, mTLS with `client_auth` when given, adjusted further by `adjust`.
async fn start(
    pki: &Pki,
    client_auth: Option<ClientAuth>,
    client: ClientTlsConfig,
    adjust: impl FnOnce(&mut cedar_pdp::config::ServeConfig),
) -> TestServer {
    TestServer::start_tls(&example_policies(), client, |config| {
        config.tls.tls_cert = Some(pki.cert());
        config.tls.tls_key = Some(pki.key());
        if let Some(auth) = client_auth {
            config.tls.tls_client_ca = Some(pki.ca_file());
            config.tls.tls_client_auth = auth;
        }
        adjust(config);
    })
    .await
}

async fn connect(server: &TestServer, tls: ClientTlsConfig) -> Result<Channel, tonic::transport::Error> {
    Channel::from_shared(format!("https://{}", server.addr)).unwrap().tls_config(tls).unwrap().connect().await
}

/// What a Check over a new connection with `tls` gets: Ok, or the failure's text.
async fn check_with(server: &TestServer, tls: ClientTlsConfig) -> Result<bool, String> {
    let channel = connect(server, tls).await.map_err(|e| format!("connect: {e:?}"))?;
    let resp = AuthorizationServiceClient::new(channel).check(alice_views()).await.map_err(|s| format!("{s:?}"))?;
    Ok(common::is_allow(&resp.into_inner()))
}

#[tokio::test]
async fn checks_over_tls_and_plaintext_to_a_tls_port_fails() {
    let pki = Pki::new();
    let server = start(&pki, None, pki.client_tls(), |_| {}).await;
    assert_eq!(check_with(&server, pki.client_tls()).await, Ok(true));
    // A plaintext client gets no answer from a TLS port.
    let plain = Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await;
    if let Ok(channel) = plain {
        let status = AuthorizationServiceClient::new(channel).check(alice_views()).await.unwrap_err();
        assert_ne!(status.code(), Code::Ok);
    }
    // A client that does not trust the server's CA refuses it.
    let stranger = Ca::new("another CA");
    let untrusting = ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(&stranger.pem));
    assert!(check_with(&server, untrusting.domain_name("localhost")).await.is_err());
}

#[tokio::test]
async fn mtls_serves_only_clients_with_a_certificate_from_the_ca() {
    let pki = Pki::new();
    let server = start(&pki, Some(ClientAuth::Required), pki.client_tls_as(&pki.ca, GATEWAY), |_| {}).await;
    assert_eq!(check_with(&server, pki.client_tls_as(&pki.ca, GATEWAY)).await, Ok(true));
    // No certificate, or one from another CA: the handshake fails, nothing is answered.
    assert!(check_with(&server, pki.client_tls()).await.is_err());
    let other = Ca::new("another CA");
    assert!(check_with(&server, pki.client_tls_as(&other, GATEWAY)).await.is_err());
}

#[tokio::test]
async fn a_listed_certificate_identity_provisions_and_is_the_audit_actor() {
    let pki = Pki::new();
    let server = start(&pki, Some(ClientAuth::Optional), pki.client_tls(), |config| {
        config.tls.provisioning_peers = vec![PROVISIONER.to_string()];
    })
    .await;
    let client = |tls| async { EntityServiceClient::new(connect(&server, tls).await.unwrap()) };
    let upsert = |id: &str| pb::UpsertEntitiesRequest {
        entities: vec![entity(&format!(r#"User::"{id}""#), serde_json::json!({"name": id, "suspended": false}), &[])],
        ..Default::default()
    };

    let mut provisioner = client(pki.client_tls_as(&pki.ca, PROVISIONER)).await;
    provisioner.upsert_entities(upsert("newhire")).await.unwrap();
    let audit = provisioner.read_audit(pb::ReadAuditRequest::default()).await.unwrap().into_inner();
    assert_eq!(audit.records.last().unwrap().actor, PROVISIONER);

    // A valid certificate that is not listed: refused, and nothing is written.
    let mut intruder = client(pki.client_tls_as(&pki.ca, INTRUDER)).await;
    let status = intruder.upsert_entities(upsert("mallory")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(INTRUDER), "{status:?}");
    // No credential at all: unauthenticated.
    let mut anonymous = client(pki.client_tls()).await;
    assert_eq!(anonymous.upsert_entities(upsert("mallory")).await.unwrap_err().code(), Code::Unauthenticated);
    let get = pb::GetEntityRequest { uid: Some(common::uid(r#"User::"mallory""#)) };
    assert_eq!(provisioner.get_entity(get).await.unwrap_err().code(), Code::NotFound);
    let audit = provisioner.read_audit(pb::ReadAuditRequest::default()).await.unwrap().into_inner();
    assert_eq!(audit.records.len(), 1, "{audit:?}");
}

#[tokio::test]
async fn check_peers_restrict_who_may_ask() {
    let pki = Pki::new();
    let server = start(&pki, Some(ClientAuth::Optional), pki.client_tls_as(&pki.ca, GATEWAY), |config| {
        config.tls.check_peers = vec![GATEWAY.to_string()];
    })
    .await;
    assert_eq!(check_with(&server, pki.client_tls_as(&pki.ca, GATEWAY)).await, Ok(true));
    let refused = check_with(&server, pki.client_tls_as(&pki.ca, INTRUDER)).await.unwrap_err();
    assert!(refused.contains("PermissionDenied"), "{refused}");
    let anonymous = check_with(&server, pki.client_tls()).await.unwrap_err();
    assert!(anonymous.contains("Unauthenticated"), "{anonymous}");
}

#[tokio::test]
async fn a_mismatched_pair_at_start_is_an_error_naming_the_file() {
    let pki = Pki::new();
    let (_, other_key) = pki.ca.server("other");
    std::fs::write(pki.key(), other_key).unwrap();
    let error = TestServer::try_start_with(&example_policies(), |config| {
        config.tls.tls_cert = Some(pki.cert());
        config.tls.tls_key = Some(pki.key());
    })
    .await
    .err()
    .expect("a mismatched pair must not start");
    assert!(error.to_string().contains(&pki.key().display().to_string()), "{error}");
}

/// The serial of the certificate a new TLS connection is served.
async fn served_serial(server: &TestServer, ca_pem: &str) -> String {
    let connector = rustls_client(ca_pem, b"h2");
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.raw_serial_as_string()
}

/// Kubernetes' way of updating a mounted secret: a new directory, and a symlink swapped to it.
fn publish(dir: &std::path::Path, generation: usize, cert: &str, key: &str) {
    let target = dir.join(format!("gen-{generation}"));
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("tls.crt"), cert).unwrap();
    std::fs::write(target.join("tls.key"), key).unwrap();
    let link = dir.join(format!(".data-{generation}"));
    std::os::unix::fs::symlink(&target, &link).unwrap();
    std::fs::rename(&link, dir.join("..data")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_a_failed_call() {
    let pki = Pki::new();
    let secret = tempfile::tempdir().unwrap();
    let (cert, key) = pki.ca.server("pdp-gen-0");
    publish(secret.path(), 0, &cert, &key);
    for name in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{name}"), secret.path().join(name)).unwrap();
    }
    let server = TestServer::start_tls(&example_policies(), pki.client_tls(), |config| {
        config.tls.tls_cert = Some(secret.path().join("tls.crt"));
        config.tls.tls_key = Some(secret.path().join("tls.key"));
    })
    .await;

    // Four clients on persistent connections, calling Check until the rotations are done.
    let stop = Arc::new(AtomicBool::new(false));
    let (calls, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let mut client = AuthorizationServiceClient::new(connect(&server, pki.client_tls()).await.unwrap());
        let (stop, calls, failures) = (stop.clone(), calls.clone(), failures.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.check(alice_views()).await {
                    Ok(resp) if common::is_allow(resp.get_ref()) => calls.fetch_add(1, Ordering::Relaxed),
                    _ => failures.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }

    let mut serving = served_serial(&server, &pki.ca.pem).await;
    for generation in 1..=20 {
        let (cert, key) = pki.ca.server(&format!("pdp-gen-{generation}"));
        let valid = generation % 2 == 1;
        if valid {
            publish(secret.path(), generation, &cert, &key);
            let written = Instant::now();
            let wanted = x509_serial(&cert);
            eventually("new connections get the new certificate", Duration::from_secs(2), || async {
                served_serial(&server, &pki.ca.pem).await == wanted
            })
            .await;
            assert!(written.elapsed() < Duration::from_secs(2));
            serving = wanted;
        } else {
            // A certificate with another certificate's key: kept out, the last good one served.
            let (_, wrong_key) = pki.ca.server("unrelated");
            publish(secret.path(), generation, &cert, &wrong_key);
            let failed_before = server.status().await.tls.unwrap_or_default().reload_failures;
            eventually("the bad pair is seen and refused", Duration::from_secs(2), || async {
                server.status().await.tls.unwrap_or_default().reload_failures > failed_before
            })
            .await;
            assert_eq!(served_serial(&server, &pki.ca.pem).await, serving);
            let tls = server.status().await.tls.unwrap();
            assert!(tls.last_reload_error.contains("does not match"), "{tls:?}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert!(calls.load(Ordering::Relaxed) > 0);
}

fn x509_serial(pem: &str) -> String {
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).next().unwrap().unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.raw_serial_as_string()
}

/// A TLS client trusting `ca_pem`, offering `alpn`.
fn rustls_client(ca_pem: &str, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for der in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(der.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn metrics_are_served_over_tls_too() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let server = start(&pki, None, pki.client_tls(), |config| config.metrics_listen = Some(metrics)).await;
    assert_eq!(check_with(&server, pki.client_tls()).await, Ok(true));

    let tcp = tokio::net::TcpStream::connect(metrics).await.unwrap();
    let connector = rustls_client(&pki.ca.pem, b"http/1.1");
    let mut tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    tls.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut body = String::new();
    tls.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("cedar_pdp_decisions_total"), "{body}");

    // Plain HTTP to the metrics port gets no metrics.
    let mut plain = tokio::net::TcpStream::connect(metrics).await.unwrap();
    plain.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;
    assert!(!String::from_utf8_lossy(&answer).contains("cedar_pdp_"), "metrics served in plaintext");
}

#[tokio::test]
async fn a_certificate_close_to_expiry_is_a_warning_in_status() {
    let pki = Pki::new();
    let (cert, key) = pki.ca.server_expiring("pdp-short", 3);
    std::fs::write(pki.cert(), cert).unwrap();
    std::fs::write(pki.key(), key).unwrap();
    let server = start(&pki, None, pki.client_tls(), |_| {}).await;
    let tls = server.status().await.tls.unwrap();
    assert!(tls.subject.contains("pdp-short"), "{tls:?}");
    assert!(tls.warnings.iter().any(|w| w.contains("expires in")), "{tls:?}");
    assert!(tls.not_after.starts_with(&(time::OffsetDateTime::now_utc() + time::Duration::days(3)).year().to_string()));
}

#[test]
fn the_cli_talks_tls_and_refuses_a_scheme_mismatch() {
    use common::process::Process;
    let pki = Pki::new();
    let (cert, key) = pki.client_files("operator", "spiffe://example.org/ns/ops/sa/operator");
    let (ca, cert_s, key_s) = (pki.ca_file(), pki.cert(), pki.key());
    let server = Process::start(
        &example_policies(),
        &[
            "--tls-cert",
            cert_s.to_str().unwrap(),
            "--tls-key",
            key_s.to_str().unwrap(),
            "--tls-client-ca",
            ca.to_str().unwrap(),
            "--admin-peer",
            "spiffe://example.org/ns/ops/sa/operator",
        ],
    );
    let https = format!("https://{}", server.addr);
    let tls_args =
        ["--tls-ca", ca.to_str().unwrap(), "--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()];
    // The admin peer's certificate is its credential: no token involved (the CLI looks in an empty
    // data directory).
    let empty = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(common::process::BIN)
            .args(args)
            .env("CEDAR_PDP_DATA_DIR", empty.path())
            .env("CEDAR_PDP_LOG", "warn")
            .output()
            .unwrap()
    };
    let status = run(&[&["status", "--addr", &https][..], &tls_args[..]].concat());
    assert!(status.status.success(), "{status:?}");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("policy version") && text.contains("tls: CN=pdp-1"), "{text}");

    // Without the client certificate, the handshake fails: a clear error, not a decision.
    let refused = run(&[
        "check",
        "--addr",
        &https,
        "--tls-ca",
        ca.to_str().unwrap(),
        "--principal",
        r#"User::"bob""#,
        "--action",
        r#"Action::"view""#,
        "--resource",
        r#"Document::"handbook""#,
    ]);
    assert!(!refused.status.success());
    // TLS options with a plaintext address are refused before connecting.
    let mixed = run(&[&["status", "--addr", &format!("http://{}", server.addr)][..], &tls_args[..]].concat());
    let text = String::from_utf8_lossy(&mixed.stderr);
    assert!(!mixed.status.success() && text.contains("use https://"), "{text}");
    // Plaintext to the TLS port fails, and says what to try.
    let plain = run(&["status", "--addr", &format!("http://{}", server.addr)]);
    let text = String::from_utf8_lossy(&plain.stderr);
    assert!(!plain.status.success() && text.contains("https://"), "{text}");
}

#[tokio::test]
async fn peers_without_client_certificates_are_a_configuration_error() {
    let pki = Pki::new();
    let error = TestServer::try_start_with(&example_policies(), |config| {
        config.tls.tls_cert = Some(pki.cert());
        config.tls.tls_key = Some(pki.key());
        config.tls.provisioning_peers = vec![PROVISIONER.to_string()];
    })
    .await
    .err()
    .expect("a peer list without a client CA must not start");
    assert!(error.to_string().contains("--tls-client-ca"), "{error}");
}

/// Provisioning and decisions through a Redis that only speaks TLS, with a private CA and a client
/// certificate it requires; a PDP that does not trust Redis's certificate fails closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_private_ca_and_a_client_certificate() {
    let pki = Pki::new();
    let (client_cert, client_key) = pki.client_files("pdp-to-redis", "spiffe://example.org/ns/pdp/sa/pdp");
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _redis = common::redis::RedisServer::start_tls(tls_port, &pki.cert(), &pki.key(), &pki.ca_file(), true);
    let url = format!("rediss://127.0.0.1:{tls_port}/");
    let server = TestServer::start_with(&example_policies(), |config| {
        config.entities.redis_url = Some(url.clone());
        config.entities.redis_tls_ca = Some(pki.ca_file());
        config.entities.redis_tls_cert = Some(client_cert.clone());
        config.entities.redis_tls_key = Some(client_key.clone());
    })
    .await;
    let user = entity(
        r#"User::"newhire""#,
        serde_json::json!({"name": "n", "suspended": false}),
        &[r#"Group::"engineering""#],
    );
    let written = server
        .entities(None)
        .await
        .upsert_entities(pb::UpsertEntitiesRequest { entities: vec![user], ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let status = server.status().await;
    assert_eq!(status.entity_store, "redis");
    assert!(status.entity_invalidations_live, "{status:?}");
    let got = server
        .entities(None)
        .await
        .get_entity(pb::GetEntityRequest { uid: Some(common::uid(r#"User::"newhire""#)) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.revision, written.revision);

    // A PDP that does not trust Redis's certificate reads nothing: its decisions fail closed.
    let stranger = Ca::new("another CA");
    let other_ca = pki.dir.path().join("other-ca.crt");
    std::fs::write(&other_ca, &stranger.pem).unwrap();
    let untrusting = TestServer::start_with(&example_policies(), |config| {
        config.entities.redis_url = Some(url.clone());
        config.entities.redis_tls_ca = Some(other_ca.clone());
        config.entities.redis_tls_cert = Some(client_cert.clone());
        config.entities.redis_tls_key = Some(client_key.clone());
        config.entities.redis_timeout = Duration::from_millis(300);
    })
    .await;
    let err =
        untrusting.check(req(r#"User::"newhire""#, r#"Action::"view""#, r#"Document::"handbook""#)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}
