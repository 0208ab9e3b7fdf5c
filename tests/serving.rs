//! Health, reflection, the admin status API and graceful shutdown, through real clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use cedar_pdp::grpc::pb;
use common::*;
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

async fn health_of(server: &TestServer, service: &str) -> Result<ServingStatus, tonic::Status> {
    let mut health = HealthClient::new(server.channel().await);
    let resp = health.check(HealthCheckRequest { service: service.into() }).await?;
    Ok(resp.into_inner().status())
}

#[tokio::test]
async fn health_is_serving_for_the_server_and_the_check_service_once_loaded() {
    let server = TestServer::start(&example_policies()).await;
    assert_eq!(health_of(&server, "").await.unwrap(), ServingStatus::Serving);
    assert_eq!(health_of(&server, "cedar_pdp.v1.AuthorizationService").await.unwrap(), ServingStatus::Serving);
    assert_eq!(health_of(&server, "no.such.Service").await.unwrap_err().code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn shutdown_tells_watchers_not_serving_and_does_not_wait_for_them() {
    let mut server = TestServer::start_with(&example_policies(), |c| c.shutdown_grace = Duration::from_secs(30)).await;
    let mut health = HealthClient::new(server.channel().await);
    let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status(), ServingStatus::Serving);

    let stopping = std::time::Instant::now();
    server.begin_stop();
    let next = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.expect("a status change");
    assert_eq!(next.unwrap().unwrap().status(), ServingStatus::NotServing);
    // Then the stream ends: a watcher is not work in flight, and the drain does not wait for it.
    let end = tokio::time::timeout(Duration::from_secs(5), watch.next()).await.expect("the stream ends");
    assert!(end.is_none(), "{end:?}");
    let ended = tokio::time::timeout(Duration::from_secs(5), server.wait()).await;
    ended.expect("shutdown waited for a health watcher (grace is 30 s)").unwrap();
    println!("shut down in {:?} with a health watcher open", stopping.elapsed());
}

#[tokio::test]
async fn shutdown_with_nothing_in_flight_is_prompt() {
    let server = TestServer::start_with(&example_policies(), |c| c.shutdown_grace = Duration::from_secs(30)).await;
    server.check(req(r#"User::"bob""#, r#"Action::"view""#, r#"Document::"handbook""#)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), server.stop()).await.expect("did not wait for the grace").unwrap();
}

#[tokio::test]
async fn reflection_lists_the_services() {
    let server = TestServer::start(&example_policies()).await;
    let names = listed_services(server.channel().await).await;
    for expected in [
        "cedar_pdp.v1.AuthorizationService",
        "cedar_pdp.v1.AdminService",
        "grpc.health.v1.Health",
        "envoy.service.auth.v3.Authorization",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
}

/// Reflection describes Envoy's ext_authz service with every file it imports, so a client without
/// the protos (grpcurl) can build a CheckRequest.
#[tokio::test]
async fn reflection_describes_envoys_authorization_service() {
    let server = TestServer::start(&example_policies()).await;
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol("envoy.service.auth.v3.Authorization".into())),
    };
    let mut responses = reflection.server_reflection_info(tokio_stream::once(request)).await.unwrap().into_inner();
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("no file descriptors");
    };
    // Each encoded FileDescriptorProto starts with its name (field 1).
    let names: Vec<String> =
        files.file_descriptor_proto.iter().map(|bytes| String::from_utf8_lossy(bytes).into_owned()).collect();
    for expected in ["envoy/service/auth/v3/external_auth.proto", "envoy/service/auth/v3/attribute_context.proto"] {
        assert!(names.iter().any(|n| n.contains(expected)), "{expected} missing");
    }
}

#[tokio::test]
async fn status_reports_the_active_set() {
    let server = TestServer::start(&example_policies()).await;
    let status = server.status().await;
    let expected = cedar_pdp::policy::load_dir(&example_policies(), cedar_pdp::config::ValidationMode::Strict).unwrap();
    assert_eq!(status.policy_version, expected.version);
    assert_eq!((status.policy_count, status.template_count), (8, 1));
    assert_eq!(status.entity_count as usize, expected.entities.len());
    assert!(status.schema_loaded);
    assert_eq!(status.validation_mode, "strict");
    assert_eq!((status.reloads_succeeded, status.reloads_failed), (1, 0));
    assert!(status.last_error.is_none());
    assert!(humantime::parse_rfc3339(&status.loaded_at).is_ok(), "{}", status.loaded_at);
}

#[tokio::test]
async fn a_configured_admin_token_is_required_from_every_peer() {
    let server = TestServer::start_with(&example_policies(), |c| c.admin_token = Some("s3cret".into())).await;
    let mut admin = server.admin().await;
    let with = |token: &str| {
        let mut r = tonic::Request::new(pb::GetStatusRequest {});
        r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    };
    assert!(admin.get_status(with("s3cret")).await.is_ok());
    let err = admin.get_status(with("guess")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    // With a token configured, loopback is not trusted either (a local proxy makes everyone local).
    let err = admin.get_status(pb::GetStatusRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn decisions_work_without_watching_the_directory() {
    let dir = copy_dir(&example_policies());
    let server = TestServer::start_with(dir.path(), |c| c.watch = false).await;
    let allowed =
        server.check(req(r#"User::"alice""#, r#"Action::"edit""#, r#"Document::"design-doc""#)).await.unwrap();
    assert!(is_allow(&allowed));
}

async fn listed_services(channel: tonic::transport::Channel) -> Vec<String> {
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection.server_reflection_info(tokio_stream::once(request)).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("not a service list");
    };
    list.service.into_iter().map(|s| s.name).collect()
}

/// The services reflection v1alpha lists: what grpcurl, Postman and evans ask.
async fn listed_services_v1alpha(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection.server_reflection_info(tokio_stream::once(request)).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("not a service list");
    };
    list.service.into_iter().map(|s| s.name).collect()
}

#[tokio::test]
async fn reflection_v1alpha_lists_the_same_services() {
    let server = TestServer::start(&example_policies()).await;
    let mut v1 = listed_services(server.channel().await).await;
    let mut v1alpha = listed_services_v1alpha(server.channel().await).await;
    v1.sort();
    v1alpha.sort();
    assert_eq!(v1, v1alpha);
    assert!(v1alpha.iter().any(|n| n == "cedar_pdp.v1.AuthorizationService"), "{v1alpha:?}");
    assert!(v1alpha.iter().any(|n| n == "grpc.reflection.v1alpha.ServerReflection"), "{v1alpha:?}");
}

#[tokio::test]
async fn reflection_lists_what_each_port_serves() {
    let second = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let server = TestServer::start_with(&example_policies(), |c| c.entities.provisioning_listen = Some(second)).await;
    let main = listed_services(server.channel().await).await;
    assert!(main.iter().any(|n| n == "cedar_pdp.v1.AuthorizationService"), "{main:?}");
    assert!(!main.iter().any(|n| n.contains("EntityService") || n.contains("AdminService")), "{main:?}");
    let channel = tonic::transport::Channel::from_shared(format!("http://{second}")).unwrap().connect().await.unwrap();
    let provisioning = listed_services(channel).await;
    assert!(provisioning.iter().any(|n| n == "cedar_pdp.v1.EntityService"), "{provisioning:?}");
    assert!(provisioning.iter().any(|n| n == "cedar_pdp.v1.AdminService"), "{provisioning:?}");
    assert!(!provisioning.iter().any(|n| n.contains("AuthorizationService")), "{provisioning:?}");
}

#[tokio::test]
async fn credentials_come_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let (provisioning, admin) = (dir.path().join("provisioning.tokens"), dir.path().join("admin.token"));
    std::fs::write(&provisioning, "# the IdP sync\nhr-sync=s3cret-1\n\nscim=s3cret-2\n").unwrap();
    std::fs::write(&admin, "adm1n-token\n").unwrap();
    let server = TestServer::start_with(&example_policies(), |c| {
        c.entities.provisioning_token_file = Some(provisioning.clone());
        c.admin_token_file = Some(admin.clone());
    })
    .await;
    let mut client = server.entities(Some("s3cret-2")).await;
    let zoe = entity(r#"User::"zoe""#, serde_json::json!({"name": "Zoe", "suspended": false}), &[]);
    client
        .upsert_entities(cedar_pdp::grpc::pb::UpsertEntitiesRequest { entities: vec![zoe], ..Default::default() })
        .await
        .unwrap();
    let trail = client.read_audit(cedar_pdp::grpc::pb::ReadAuditRequest::default()).await.unwrap().into_inner();
    assert_eq!(trail.records[0].actor, "scim");
    let refused =
        server.entities(Some("wrong")).await.read_audit(cedar_pdp::grpc::pb::ReadAuditRequest::default()).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::Unauthenticated);
    let mut admin_client = cedar_pdp::grpc::AdminServiceClient::with_interceptor(
        server.channel().await,
        Bearer(Some("adm1n-token".into())),
    );
    admin_client.get_status(cedar_pdp::grpc::pb::GetStatusRequest {}).await.unwrap();
    assert!(
        server.admin().await.get_status(cedar_pdp::grpc::pb::GetStatusRequest {}).await.is_err(),
        "a token is needed"
    );

    // A malformed line stops the start, naming it.
    std::fs::write(&provisioning, "hr-sync=ok\nno-equals-sign\n").unwrap();
    let err = TestServer::try_start_with(&example_policies(), |c| {
        c.entities.provisioning_token_file = Some(provisioning.clone())
    })
    .await
    .err()
    .expect("started with a malformed token file");
    assert!(err.to_string().contains("provisioning.tokens:2"), "{err}");
}

/// The metrics endpoint has the HTTP API's bounds: a client that connects and sends nothing is
/// closed after the header timeout (10 s) instead of holding a connection for ever.
#[tokio::test]
async fn a_silent_metrics_connection_is_closed() {
    use tokio::io::AsyncReadExt;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let _server = TestServer::start_with(&example_policies(), |c| c.metrics_listen = Some(port)).await;
    let mut silent = tokio::net::TcpStream::connect(port).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), silent.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "a silent client kept its metrics connection");
    assert!(started.elapsed() >= Duration::from_secs(9), "{:?}", started.elapsed());
}
