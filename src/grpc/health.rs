//! `grpc.health.v1.Health`: one status for the server and its decision services.
//!
//! Watch streams end when shutdown begins, right after telling the watcher NOT_SERVING: a watcher
//! (a load balancer, a mesh) holds its stream open forever, and the drain must wait only for calls
//! that do work, not for the whole grace period.

use std::pin::Pin;

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The services health answers for, besides the whole server's `""`.
pub const SERVICES: [&str; 3] = ["", "cedar_pdp.v1.AuthorizationService", "envoy.service.auth.v3.Authorization"];

/// What the server sets; every Check and Watch reads it.
#[derive(Clone)]
pub struct HealthState {
    status: watch::Sender<ServingStatus>,
    /// Cancelled when shutdown begins: Watch streams end.
    closing: CancellationToken,
}

impl Default for HealthState {
    fn default() -> Self {
        HealthState { status: watch::Sender::new(ServingStatus::NotServing), closing: CancellationToken::new() }
    }
}

impl HealthState {
    pub fn set(&self, status: ServingStatus) {
        self.status.send_replace(status);
    }

    /// NOT_SERVING, and every Watch stream ends once it has said so.
    pub fn close(&self) {
        self.set(ServingStatus::NotServing);
        self.closing.cancel();
    }
}

pub struct HealthApi {
    state: HealthState,
}

impl HealthApi {
    pub fn new(state: HealthState) -> Self {
        HealthApi { state }
    }

    fn known(service: &str) -> Result<(), Status> {
        if SERVICES.contains(&service) { Ok(()) } else { Err(Status::not_found("service not registered")) }
    }
}

fn answer(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse { status: status.into() }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthApi {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        Self::known(&request.get_ref().service)?;
        Ok(Response::new(answer(*self.state.status.borrow())))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<WatchStream>, Status> {
        Self::known(&request.get_ref().service)?;
        let (mut status, closing) = (self.state.status.subscribe(), self.state.closing.clone());
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let sent = *status.borrow_and_update();
                if tx.send(Ok(answer(sent))).await.is_err() {
                    return;
                }
                tokio::select! {
                    // The watcher went away: nothing more to tell it.
                    () = tx.closed() => return,
                    changed = status.changed() => if changed.is_err() { return },
                    () = closing.cancelled() => {
                        let last = *status.borrow();
                        if last != sent {
                            let _ = tx.send(Ok(answer(last))).await;
                        }
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
