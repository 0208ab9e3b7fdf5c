//! Benchmark ceiling: the check API on the same tonic stack and settings as `cedar-pdp serve`, with
//! handlers that return a constant answer of the same size. Not part of the product.
//!
//! `cargo run --release --example noop_server -- 127.0.0.1:50061`

use cedar_pdp::grpc::{AuthorizationServiceServer, pb};
use tonic::{Request, Response, Status};

// The same allocator as the cedar-pdp binary: a ceiling on the same footing.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Noop;

fn constant() -> pb::CheckResponse {
    pb::CheckResponse {
        decision: pb::Decision::Allow.into(),
        determining_policies: vec!["engineering-reads-engineering-folder".into()],
        errors: vec![],
        policy_version: "0123456789abcdef".into(),
        decision_id: "01234567-89ab-7def-8123-456789abcdef".into(),
    }
}

#[tonic::async_trait]
impl pb::authorization_service_server::AuthorizationService for Noop {
    async fn check(&self, _: Request<pb::CheckRequest>) -> Result<Response<pb::CheckResponse>, Status> {
        Ok(Response::new(constant()))
    }

    async fn batch_check(&self, r: Request<pb::BatchCheckRequest>) -> Result<Response<pb::BatchCheckResponse>, Status> {
        Ok(Response::new(pb::BatchCheckResponse { results: vec![constant(); r.get_ref().checks.len()] }))
    }

    async fn list_actions(
        &self,
        _: Request<pb::ListActionsRequest>,
    ) -> Result<Response<pb::ListActionsResponse>, Status> {
        Ok(Response::new(pb::ListActionsResponse::default()))
    }

    async fn list_resources(&self, _: Request<pb::ListResourcesRequest>) -> Result<Response<pb::ListResponse>, Status> {
        Ok(Response::new(pb::ListResponse::default()))
    }

    async fn list_principals(
        &self,
        _: Request<pb::ListPrincipalsRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        Ok(Response::new(pb::ListResponse::default()))
    }

    async fn plan_resources(
        &self,
        _: Request<pb::PlanResourcesRequest>,
    ) -> Result<Response<pb::PlanResourcesResponse>, Status> {
        Ok(Response::new(pb::PlanResourcesResponse::default()))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:50061".into()).parse()?;
    let defaults = cedar_pdp::config::ServeConfig::new(addr, "policies".into())?;
    let service = AuthorizationServiceServer::new(Noop).max_decoding_message_size(defaults.max_message_bytes);
    println!("noop server on {addr}");
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_shutdown(addr, cedar_pdp::shutdown_signal())
        .await?;
    Ok(())
}
