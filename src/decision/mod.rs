//! The one home of a decision, whatever front door asked: the snapshot it is made on, the
//! provisioned entities it reads, its id, its latency, its metrics and its decision-log record, in
//! one format for every front door. Front doors (gRPC Check and BatchCheck, ext_authz) turn their
//! requests into a `CheckInput` and the `Decided` back into their answers; nothing else.
//!
//! Architecture invariant: every answer a front door gives about access has a decision id and one
//! decision-log record, made here — answers made without the policies (ext_authz's fallbacks) too.

mod list;
mod plan;
mod shadow;

use std::sync::Arc;
use std::time::Instant;

pub use list::{ListQuery, Listed, Varying, page_token, parse_page_token};
pub use plan::{Plan, Residual};
pub use shadow::{Shadow, ShadowCounts};

use crate::authz::{CheckInput, Limits, Outcome, UidRef};
use crate::entities::{self, EntityStore};
use crate::error::{DecideError, ServiceError};
use crate::policy::{PolicyStore, Snapshot};
use crate::telemetry::{self, HttpInfo};

/// A decision and what identifies it.
pub struct Decided {
    pub outcome: Outcome,
    pub decision_id: String,
}

/// Which front door asked, and (ext_authz) about which HTTP request.
#[derive(Clone, Copy)]
pub struct Origin<'a> {
    pub api: &'static str,
    pub http: Option<HttpInfo<'a>>,
}

impl Origin<'static> {
    pub const CHECK: Origin<'static> = Origin { api: "check", http: None };
}

/// Makes decisions for every front door.
pub struct Decisions {
    policies: Arc<PolicyStore>,
    entities: Arc<EntityStore>,
    limits: Limits,
    log: bool,
    /// `--shadow-policies`: every decision is offered to it, off the request's path.
    shadow: Option<Shadow>,
    /// `--decision-log-requests`: records carry what `cedar-pdp replay` needs.
    log_requests: bool,
}

impl Decisions {
    pub fn new(policies: Arc<PolicyStore>, entities: Arc<EntityStore>, limits: Limits, log: bool) -> Self {
        Decisions { policies, entities, limits, log, shadow: None, log_requests: false }
    }

    /// Decision-log records carry the whole request (see `telemetry::Replayable`).
    pub fn with_logged_requests(mut self, on: bool) -> Self {
        self.log_requests = on;
        self
    }

    /// Decides every decision again on `shadow`'s policies too (see `shadow.rs`).
    pub fn with_shadow(mut self, shadow: Shadow) -> Self {
        self.shadow = Some(shadow);
        self
    }

    /// The policy set answering now; a batch takes it once so that every item has the same version.
    pub fn snapshot(&self) -> Result<Arc<Snapshot>, ServiceError> {
        self.policies.current().ok_or(ServiceError::NotReady)
    }

    /// Decides `input` on `snapshot` and the provisioned entities (at least as fresh as
    /// `min_revision`), counted and logged once. A request or store error is not a decision and is
    /// neither counted nor logged as one.
    pub async fn decide(
        &self,
        snapshot: &Snapshot,
        input: &CheckInput<'_>,
        min_revision: u64,
        origin: Origin<'_>,
    ) -> Result<Decided, DecideError> {
        let started = Instant::now();
        let outcome = entities::decide(&self.entities, snapshot, input, &self.limits, min_revision).await?;
        let decision_id = uuid::Uuid::now_v7().to_string();
        let context = self.log_requests.then(|| input.context.text());
        let replay = context.as_deref().map(|context| telemetry::Replayable {
            context,
            entities: input.entities_json,
            min_revision,
            entity_revision: self.entities.seen_revision(),
        });
        telemetry::record_decision(
            self.log,
            origin.api,
            &decision_id,
            &snapshot.version,
            &outcome,
            started.elapsed(),
            origin.http,
            replay,
        );
        if let Some(shadow) = &self.shadow {
            shadow.offer(&decision_id, input, min_revision, &outcome);
        }
        Ok(Decided { outcome, decision_id })
    }

    /// Every candidate action (`Snapshot::candidate_actions`) that `input`'s principal may take on
    /// its resource, each decided (and logged) as a check. An action the request is not valid for is
    /// left out; a request valid for none is that error. A store error fails the whole listing.
    pub async fn list_actions(
        &self,
        snapshot: &Snapshot,
        input: &CheckInput<'_>,
        min_revision: u64,
        origin: Origin<'_>,
    ) -> Result<Vec<cedar_policy::EntityUid>, DecideError> {
        let (mut allowed, mut first_error, mut decided) = (Vec::new(), None, false);
        for action in snapshot.candidate_actions() {
            let ty = action.type_name().to_string();
            let id = action.id().unescaped().to_string();
            let check = CheckInput { action: Some(UidRef { ty: &ty, id: &id }), ..*input };
            match self.decide(snapshot, &check, min_revision, origin).await {
                Ok(d) => {
                    decided = true;
                    if d.outcome.allow {
                        allowed.push(action);
                    }
                }
                Err(DecideError::Request(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(store) => return Err(store),
            }
        }
        match first_error {
            Some(e) if !decided => Err(DecideError::Request(e)),
            _ => Ok(allowed),
        }
    }

    /// One page of a listing (ListResources, ListPrincipals, AuthZEN subject and resource search):
    /// the candidates of `query.entity_type` that Check allows, in uid order (see `list.rs`). The
    /// page is one decision-log record, with the number listed and examined.
    pub async fn list(
        &self,
        snapshot: &Snapshot,
        query: &ListQuery<'_>,
        origin: Origin<'_>,
    ) -> Result<Listed, DecideError> {
        let started = Instant::now();
        let (uids, next, scanned) = list::list(&self.entities, snapshot, query, &self.limits).await?;
        let decision_id = uuid::Uuid::now_v7().to_string();
        let shown = |uid: Option<UidRef<'_>>, varying: bool| match (uid, varying) {
            (_, true) => format!("{}::*", query.entity_type),
            (Some(u), false) => format!("{}::{:?}", u.ty, u.id),
            (None, false) => String::new(),
        };
        let parts = [
            shown(query.input.principal, query.varying == Varying::Principal),
            shown(query.input.action, false),
            shown(query.input.resource, query.varying == Varying::Resource),
        ];
        let listing = telemetry::Listing { parts: &parts, listed: uids.len(), scanned, complete: next.is_none() };
        telemetry::record_listing(
            self.log,
            origin.api,
            &decision_id,
            &snapshot.version,
            &listing,
            started.elapsed(),
            origin.http,
        );
        Ok(Listed { uids, next, scanned, decision_id })
    }

    /// What the policies say about every resource of `resource_type` for `input` (its resource left
    /// out), by partial evaluation (see `plan.rs`); one decision-log record (decision `plan`).
    pub async fn plan_resources(
        &self,
        snapshot: &Snapshot,
        input: &CheckInput<'_>,
        resource_type: &str,
        min_revision: u64,
        origin: Origin<'_>,
    ) -> Result<(Plan, String), DecideError> {
        let started = Instant::now();
        let plan = plan::plan(&self.entities, snapshot, input, resource_type, min_revision, &self.limits).await?;
        let decision_id = uuid::Uuid::now_v7().to_string();
        let shown = |u: Option<UidRef<'_>>| u.map(|u| format!("{}::{:?}", u.ty, u.id)).unwrap_or_default();
        let parts = [shown(input.principal), shown(input.action), format!("{resource_type}::*")];
        let outcome = match &plan {
            Plan::AlwaysAllowed => "always_allowed",
            Plan::AlwaysDenied => "always_denied",
            Plan::Conditional(_) => "conditional",
        };
        telemetry::record_plan(
            self.log,
            origin.api,
            &decision_id,
            &snapshot.version,
            &parts,
            outcome,
            started.elapsed(),
        );
        Ok((plan, decision_id))
    }

    /// An answer made without the policies (ext_authz: no route, not HTTP, refused credentials):
    /// numbered, counted and logged like a decision. Returns its decision id.
    pub fn without_policies(&self, allowed: bool, reason: &str, origin: Origin<'_>) -> String {
        let decision_id = uuid::Uuid::now_v7().to_string();
        telemetry::record_without_policies(self.log, origin.api, &decision_id, allowed, reason, origin.http);
        decision_id
    }
}
