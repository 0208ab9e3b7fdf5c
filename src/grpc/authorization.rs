//! `cedar_pdp.v1.AuthorizationService`: Check and BatchCheck.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::CheckGate;
use super::{convert, pb};
use crate::authz::CheckInput;
use crate::decision::{Decisions, ListQuery, Origin, Varying};
use crate::error::{DecideError, RequestError};
use crate::policy::Snapshot;

pub struct AuthorizationApi {
    decisions: Arc<Decisions>,
    max_batch: usize,
    callers: Arc<CheckGate>,
}

/// Default and largest page of a listing.
pub const PAGE: (u32, u32) = (100, 1000);

impl AuthorizationApi {
    pub fn new(decisions: Arc<Decisions>, max_batch: usize, callers: Arc<CheckGate>) -> Self {
        AuthorizationApi { decisions, max_batch, callers }
    }

    /// One page of a listing: `input` with the `varying` part filled by each candidate of `ty`.
    async fn list(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        input: CheckInput<'_>,
        (varying, ty): (Varying, &str),
        (page_size, page_token, min_revision): (u32, &str, u64),
    ) -> Result<pb::ListResponse, Status> {
        let snapshot = self.decisions.snapshot()?;
        let after = crate::decision::parse_page_token(page_token, &snapshot.version, "page_token")?;
        let page_size = if page_size == 0 { PAGE.0 } else { page_size.min(PAGE.1) } as usize;
        let query = ListQuery {
            input,
            varying,
            entity_type: ty,
            after: &after,
            page_size,
            min_revision,
            deadline: convert::deadline(metadata),
        };
        let api = match varying {
            Varying::Principal => "list_principals",
            Varying::Resource => "list_resources",
        };
        let listed = self.decisions.list(&snapshot, &query, Origin { api, http: None }).await?;
        Ok(convert::list_response(listed, &snapshot.version))
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
        let uids = [req.principal.as_ref(), None, req.resource.as_ref()];
        let input = convert::partial_input(uids, &req.context_json, &req.entities_json);
        let origin = Origin { api: "list_actions", http: None };
        let actions = self.decisions.list_actions(&snapshot, &input, req.min_revision, origin).await?;
        let actions = actions
            .iter()
            .map(|a| pb::EntityUid { r#type: a.type_name().to_string(), id: a.id().unescaped().to_string() })
            .collect();
        Ok(Response::new(pb::ListActionsResponse { actions, policy_version: snapshot.version.clone() }))
    }

    async fn list_resources(
        &self,
        request: Request<pb::ListResourcesRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        self.callers.admit(&request)?;
        let req = request.get_ref();
        let uids = [req.principal.as_ref(), req.action.as_ref(), None];
        let input = convert::partial_input(uids, &req.context_json, &req.entities_json);
        let page = (req.page_size, req.page_token.as_str(), req.min_revision);
        let listed = self.list(request.metadata(), input, (Varying::Resource, &req.resource_type), page).await?;
        Ok(Response::new(listed))
    }

    async fn list_principals(
        &self,
        request: Request<pb::ListPrincipalsRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        self.callers.admit(&request)?;
        let req = request.get_ref();
        let uids = [None, req.action.as_ref(), req.resource.as_ref()];
        let input = convert::partial_input(uids, &req.context_json, &req.entities_json);
        let page = (req.page_size, req.page_token.as_str(), req.min_revision);
        let listed = self.list(request.metadata(), input, (Varying::Principal, &req.principal_type), page).await?;
        Ok(Response::new(listed))
    }

    async fn plan_resources(
        &self,
        request: Request<pb::PlanResourcesRequest>,
    ) -> Result<Response<pb::PlanResourcesResponse>, Status> {
        self.callers.admit(&request)?;
        let req = request.get_ref();
        let snapshot = self.decisions.snapshot()?;
        let uids = [req.principal.as_ref(), req.action.as_ref(), None];
        let input = convert::partial_input(uids, &req.context_json, &req.entities_json);
        let origin = Origin { api: "plan_resources", http: None };
        let (plan, decision_id) =
            self.decisions.plan_resources(&snapshot, &input, &req.resource_type, req.min_revision, origin).await?;
        Ok(Response::new(convert::plan_response(plan, &snapshot.version, decision_id)))
    }
}
