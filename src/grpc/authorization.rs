//! `cedar_pdp.v1.AuthorizationService`: Check and BatchCheck.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use super::auth::CheckGate;
use super::{convert, pb};
use crate::authz;
use crate::entities::{self, EntityStore};
use crate::error::{DecideError, RequestError, ServiceError};
use crate::policy::{PolicyStore, Snapshot};
use crate::telemetry;

pub struct AuthorizationApi {
    store: Arc<PolicyStore>,
    entities: Arc<EntityStore>,
    decision_log: bool,
    max_batch: usize,
    limits: authz::Limits,
    callers: Arc<CheckGate>,
}

impl AuthorizationApi {
    pub fn new(
        store: Arc<PolicyStore>,
        entities: Arc<EntityStore>,
        decision_log: bool,
        max_batch: usize,
        limits: authz::Limits,
        callers: Arc<CheckGate>,
    ) -> Self {
        AuthorizationApi { store, entities, decision_log, max_batch, limits, callers }
    }

    fn snapshot(&self) -> Result<Arc<Snapshot>, ServiceError> {
        self.store.current().ok_or(ServiceError::NotReady)
    }

    async fn decide(&self, snapshot: &Snapshot, req: &pb::CheckRequest) -> Result<pb::CheckResponse, DecideError> {
        let started = Instant::now();
        let input = convert::check_input(req);
        let outcome = entities::decide(&self.entities, snapshot, &input, &self.limits, req.min_revision).await?;
        let decision_id = uuid::Uuid::now_v7().to_string();
        telemetry::record_decision(
            self.decision_log,
            "check",
            &decision_id,
            &snapshot.version,
            &outcome,
            started.elapsed(),
            None,
        );
        Ok(convert::check_response(outcome, &snapshot.version, decision_id))
    }
}

#[tonic::async_trait]
impl pb::authorization_service_server::AuthorizationService for AuthorizationApi {
    async fn check(&self, request: Request<pb::CheckRequest>) -> Result<Response<pb::CheckResponse>, Status> {
        self.callers.admit(&request)?;
        let snapshot = self.snapshot()?;
        let response =
            self.decide(&snapshot, request.get_ref()).await.inspect_err(|e| tracing::debug!("check rejected: {e}"))?;
        Ok(Response::new(response))
    }

    async fn batch_check(
        &self,
        request: Request<pb::BatchCheckRequest>,
    ) -> Result<Response<pb::BatchCheckResponse>, Status> {
        self.callers.admit(&request)?;
        let checks = &request.get_ref().checks;
        if checks.len() > self.max_batch {
            return Err(
                RequestError::TooMany { field: "checks".into(), len: checks.len(), limit: self.max_batch }.into()
            );
        }
        // One snapshot for the whole batch: every item is decided by the same policy version.
        let snapshot = self.snapshot()?;
        let mut results = Vec::with_capacity(checks.len());
        for (i, check) in checks.iter().enumerate() {
            let result = self.decide(&snapshot, check).await.map_err(|e| match e {
                DecideError::Request(e) => DecideError::Request(e.within(&format!("checks[{i}]"))),
                other => other,
            });
            results.push(result.inspect_err(|e| tracing::debug!("batch check rejected: {e}"))?);
        }
        Ok(Response::new(pb::BatchCheckResponse { results }))
    }
}
