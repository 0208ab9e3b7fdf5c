//! `cedar_pdp.v1.AdminService`: operator queries, closed to anyone who merely reaches the port.
//!
//! Every call needs the admin token, the token the server generated when none is configured, or a
//! client certificate listed with `--admin-peer` (`auth.rs`).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::Gate;
use super::{convert, pb};
use crate::entities::EntityStore;
use crate::policy::{PolicyStore, ReloadOutcome};
use crate::tls::Tls;

pub struct AdminApi {
    store: Arc<PolicyStore>,
    entities: Arc<EntityStore>,
    gate: Gate,
    tls: Option<Arc<Tls>>,
    /// With `--shadow-policies`: the shadow set and its counts.
    shadow: Option<(Arc<PolicyStore>, Arc<crate::decision::ShadowCounts>)>,
}

impl AdminApi {
    pub fn new(store: Arc<PolicyStore>, entities: Arc<EntityStore>, gate: Gate, tls: Option<Arc<Tls>>) -> Self {
        AdminApi { store, entities, gate, tls, shadow: None }
    }

    pub fn with_shadow(mut self, shadow: Option<(Arc<PolicyStore>, Arc<crate::decision::ShadowCounts>)>) -> Self {
        self.shadow = shadow;
        self
    }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminApi {
    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        self.gate.identify(&request)?;
        let snapshot = self.store.current();
        let mut status = convert::status_response(snapshot.as_deref(), self.store.stats());
        let (subscribed, revision) = self.entities.coherence();
        status.entity_store = self.entities.kind().to_string();
        status.entity_invalidations_live = subscribed;
        status.entity_revision = revision;
        status.entity_store_location = self.entities.location();
        status.entity_store_warnings = self.entities.warnings();
        let jwks = snapshot.as_deref().and_then(|s| s.ext_authz.as_deref()).and_then(|m| m.jwt.as_ref());
        status.jwks = jwks.and_then(|j| j.remote_status()).map(convert::jwks_status);
        status.tls = self.tls.as_ref().map(|tls| convert::tls_status(tls.status()));
        status.shadow = self.shadow.as_ref().map(|(policies, counts)| convert::shadow_status(policies, counts));
        Ok(Response::new(status))
    }

    async fn reload(&self, request: Request<pb::ReloadRequest>) -> Result<Response<pb::ReloadResponse>, Status> {
        self.gate.identify(&request)?;
        let outcome = self.store.reload().await?;
        let policy_version = self.store.current().map(|s| s.version.clone()).unwrap_or_default();
        let changed = matches!(outcome, ReloadOutcome::Swapped { .. });
        Ok(Response::new(pb::ReloadResponse { policy_version, changed }))
    }
}
