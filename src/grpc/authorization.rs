//! `cedar_pdp.v1.AuthorizationService`: Check and BatchCheck.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::CheckGate;
use super::{convert, pb};
use crate::authz::CheckInput;
use crate::decision::{Decisions, Origin};
use crate::error::{DecideError, RequestError};
use crate::policy::Snapshot;

pub struct AuthorizationApi {
    decisions: Arc<Decisions>,
    max_batch: usize,
    callers: Arc<CheckGate>,
}

impl AuthorizationApi {
    pub fn new(decisions: Arc<Decisions>, max_batch: usize, callers: Arc<CheckGate>) -> Self {
        AuthorizationApi { decisions, max_batch, callers }
    }

    async fn decide(&self, snapshot: &Snapshot, req: &pb::CheckRequest) -> Result<pb::CheckResponse, DecideError> {
        let input = convert::check_input(req);
        let decided = self.decisions.decide(snapshot, &input, req.min_revision, Origin::CHECK).await?;
        Ok(convert::check_response(decided.outcome, &snapshot.version, decided.decision_id))
    }
}

#[tonic::async_trait]
impl pb::authorization_service_server::AuthorizationService for AuthorizationApi {
    async fn check(&self, request: Request<pb::CheckRequest>) -> Result<Response<pb::CheckResponse>, Status> {
        self.callers.admit(&request)?;
        let snapshot = self.decisions.snapshot()?;
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
        let snapshot = self.decisions.snapshot()?;
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

    async fn list_actions(
        &self,
        request: Request<pb::ListActionsRequest>,
    ) -> Result<Response<pb::ListActionsResponse>, Status> {
        self.callers.admit(&request)?;
        let req = request.get_ref();
        let snapshot = self.decisions.snapshot()?;
        let input = CheckInput {
            principal: req.principal.as_ref().map(convert::uid_ref),
            action: None,
            resource: req.resource.as_ref().map(convert::uid_ref),
            context_json: &req.context_json,
            entities_json: &req.entities_json,
        };
        let origin = Origin { api: "list_actions", http: None };
        let actions = self.decisions.list_actions(&snapshot, &input, req.min_revision, origin).await?;
        let actions = actions
            .iter()
            .map(|a| pb::EntityUid { r#type: a.type_name().to_string(), id: a.id().unescaped().to_string() })
            .collect();
        Ok(Response::new(pb::ListActionsResponse { actions, policy_version: snapshot.version.clone() }))
    }
}
