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
async fn shutdown_turns_health_not_serving_then_drains_within_the_grace() {
    let mut server =
        TestServer::start_with(&example_policies(), |c| c.shutdown_grace = Duration::from_millis(500)).await;
    let mut health = HealthClient::new(server.channel().await);
    let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status(), ServingStatus::Serving);

    server.begin_stop();
    let next = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.expect("a status change");
    assert_eq!(next.unwrap().unwrap().status(), ServingStatus::NotServing);
    // The open Watch stream is an in-flight call that never ends by itself: the grace bounds the wait.
    let ended = tokio::time::timeout(Duration::from_secs(10), server.wait()).await.expect("shutdown is bounded");
    ended.unwrap();
    drop(watch);
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
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection.server_reflection_info(tokio_stream::once(request)).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("not a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["cedar_pdp.v1.AuthorizationService", "cedar_pdp.v1.AdminService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
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
