//! `cedar_pdp.v1.AuthorizationService`: Check and BatchCheck.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use super::{convert, pb};
use crate::authz;
use crate::error::{RequestError, ServiceError};
use crate::policy::{PolicyStore, Snapshot};
use crate::telemetry;

pub struct AuthorizationApi {
    store: Arc<PolicyStore>,
    decision_log: bool,
    max_batch: usize,
    limits: authz::Limits,
}

impl AuthorizationApi {
    pub fn new(store: Arc<PolicyStore>, decision_log: bool, max_batch: usize, limits: authz::Limits) -> Self {
        AuthorizationApi { store, decision_log, max_batch, limits }
    }

    fn snapshot(&self) -> Result<Arc<Snapshot>, ServiceError> {
        self.store.current().ok_or(ServiceError::NotReady)
    }

    fn decide(&self, snapshot: &Snapshot, req: &pb::CheckRequest) -> Result<pb::CheckResponse, RequestError> {
        let started = Instant::now();
        let outcome = authz::decide(snapshot, &convert::check_input(req), &self.limits)?;
        let decision_id = uuid::Uuid::now_v7().to_string();
        telemetry::record_decision(
            self.decision_log,
            "check",
            &decision_id,
            &snapshot.version,
            &outcome,
            started.elapsed(),
        );
        Ok(convert::check_response(outcome, &snapshot.version, decision_id))
    }
}

#[tonic::async_trait]
impl pb::authorization_service_server::AuthorizationService for AuthorizationApi {
    async fn check(&self, request: Request<pb::CheckRequest>) -> Result<Response<pb::CheckResponse>, Status> {
        let snapshot = self.snapshot()?;
        let response =
            self.decide(&snapshot, request.get_ref()).inspect_err(|e| tracing::debug!("check rejected: {e}"))?;
        Ok(Response::new(response))
    }

    async fn batch_check(
        &self,
        request: Request<pb::BatchCheckRequest>,
    ) -> Result<Response<pb::BatchCheckResponse>, Status> {
        let checks = &request.get_ref().checks;
        if checks.len() > self.max_batch {
            return Err(
                RequestError::TooMany { field: "checks".into(), len: checks.len(), limit: self.max_batch }.into()
            );
        }
        // One snapshot for the whole batch: every item is decided by the same policy version.
        let snapshot = self.snapshot()?;
        let results = checks
            .iter()
            .enumerate()
            .map(|(i, check)| self.decide(&snapshot, check).map_err(|e| e.within(&format!("checks[{i}]"))))
            .collect::<Result<Vec<_>, _>>()
            .inspect_err(|e| tracing::debug!("batch check rejected: {e}"))?;
        Ok(Response::new(pb::BatchCheckResponse { results }))
    }
}
