//! SCIM 2.0 provisioning (RFC 7643, 7644) on the entity store: users and groups as the IdP sees
//! them, and the Cedar entities `scim.toml` maps them to, written together.
//!
//! Every SCIM change is one guarded store write (`EntityStore::apply_guarded`): the SCIM state, the
//! Cedar entities it maps to and their audit records commit together, only if nothing it read
//! changed meanwhile (else it is re-read and redone; with `If-Match`, a 412). The state lives in the
//! store as entities of the reserved namespace (`CedarPdp::Scim::`), so every replica sharing the
//! store serves one SCIM view:
//! - `CedarPdp::Scim::User::"<id>"`, `…::Group::"<id>"`: the resource as JSON text (`resource`),
//!   the Cedar uid it maps to (`cedar`), and the groups it is a direct member of (`groups`: id,
//!   display name, Cedar uid);
//! - `CedarPdp::Scim::Name::"user:<userName, lowercased>"` (and `group:<displayName>`): the id that
//!   holds the name, for uniqueness and `eq` lookups;
//! - `CedarPdp::Scim::Owner::"<Cedar uid>"`: marks a Cedar entity as SCIM's, so that the
//!   EntityService cannot overwrite it (and SCIM refuses a uid the EntityService wrote).
//!
//! Architecture invariants: a deactivated user's Cedar entity has no group parents (the SCIM view
//! keeps its memberships); an acknowledged SCIM write is an ordinary store write, audited as
//! `scim:<token name>` and invalidated on every replica.

mod attrs;
mod cedar;
mod discovery;
pub mod filter;
pub mod patch;
mod resource;
mod state;

use std::sync::Arc;

use serde_json::Value;

pub use self::state::{ResourceType, Stored};
use crate::entities::{EntityStore, Guard};
use crate::error::{ScimError, StoreError};
use crate::policy::PolicyStore;
use crate::policy::scim::{GROUP, SchemaDef, USER};

/// Most resources one list answer carries (`filter.maxResults`).
pub const MAX_RESULTS: usize = 1000;

/// How often a write that lost a race with another writer is redone before giving up (with a
/// short random pause growing each time, so that concurrent writers to one group spread out).
const ATTEMPTS: u32 = 16;

/// The SCIM service: what the HTTP handlers call.
pub struct Scim {
    store: Arc<EntityStore>,
    policies: Arc<PolicyStore>,
}

/// One page of a listing.
pub struct Page {
    pub total: usize,
    pub resources: Vec<Stored>,
}

impl Scim {
    pub fn new(store: Arc<EntityStore>, policies: Arc<PolicyStore>) -> Self {
        Scim { store, policies }
    }

    pub async fn get(&self, ty: ResourceType, id: &str) -> Result<Stored, ScimError> {
        state::read(&self.store, ty, id).await?.ok_or_else(|| not_found(ty, id))
    }

    /// Resources matching `filter`, in id order; `start` is 1-based.
    pub async fn list(
        &self,
        ty: ResourceType,
        filter: Option<&str>,
        start: usize,
        count: usize,
    ) -> Result<Page, ScimError> {
        let filter = filter.map(|f| filter::parse(f, ty.schemas())).transpose()?;
        let matching = match filter.as_ref().and_then(|f| state::name_lookup(ty, f)) {
            Some(name) => state::by_name(&self.store, ty, &name).await?.into_iter().collect(),
            None => {
                state::scan(&self.store, ty, |resource| filter.as_ref().is_none_or(|f| filter::matches(f, resource)))
                    .await?
            }
        };
        let total = matching.len();
        let resources = matching.into_iter().skip(start.saturating_sub(1)).take(count).collect();
        Ok(Page { total, resources })
    }

    pub async fn create(&self, ty: ResourceType, body: &Value, actor: &str) -> Result<Stored, ScimError> {
        let wanted = resource::normalize(body, ty.schemas())?;
        let id = uuid::Uuid::now_v7().to_string();
        self.retrying(|| async {
            let mut txn = state::Txn::new(&self.store, self.snapshot()?);
            txn.put(ty, &id, wanted.clone(), None).await?;
            txn.commit(actor).await
        })
        .await
    }

    /// PUT: the resource replaced by `body` (read-only attributes and memberships kept).
    pub async fn replace(
        &self,
        ty: ResourceType,
        id: &str,
        body: &Value,
        if_match: Option<&str>,
        actor: &str,
    ) -> Result<Stored, ScimError> {
        let wanted = resource::normalize(body, ty.schemas())?;
        self.retrying(|| async {
            let mut txn = state::Txn::new(&self.store, self.snapshot()?);
            let current = txn.current(ty, id, if_match).await?;
            let mut next = wanted.clone();
            let sent_members = body.as_object().is_some_and(|b| b.keys().any(|k| k.eq_ignore_ascii_case("members")));
            if ty == ResourceType::Group && !sent_members {
                // A PUT that leaves `members` out (Okta's rename) keeps them.
                if let Some(members) = current.resource.get("members") {
                    next["members"] = members.clone();
                }
            }
            txn.put(ty, id, next, Some(current)).await?;
            txn.commit(actor).await
        })
        .await
    }

    pub async fn patch(
        &self,
        ty: ResourceType,
        id: &str,
        body: &Value,
        if_match: Option<&str>,
        actor: &str,
    ) -> Result<Stored, ScimError> {
        self.retrying(|| async {
            let mut txn = state::Txn::new(&self.store, self.snapshot()?);
            let current = txn.current(ty, id, if_match).await?;
            let mut next = current.resource.clone();
            patch::apply(&mut next, body, ty.schemas())?;
            let next = resource::normalize(&next, ty.schemas())?;
            txn.put(ty, id, next, Some(current)).await?;
            txn.commit(actor).await
        })
        .await
    }

    pub async fn delete(
        &self,
        ty: ResourceType,
        id: &str,
        if_match: Option<&str>,
        actor: &str,
    ) -> Result<(), ScimError> {
        self.retrying(|| async {
            let mut txn = state::Txn::new(&self.store, self.snapshot()?);
            let current = txn.current(ty, id, if_match).await?;
            txn.remove(ty, current).await?;
            txn.commit(actor).await
        })
        .await
        .map(drop)
    }

    fn snapshot(&self) -> Result<Arc<crate::policy::Snapshot>, ScimError> {
        self.policies.current().ok_or_else(|| ScimError::new(503, None, "no policy set is loaded yet"))
    }

    /// Runs a read-modify-write until it commits without a conflict. A conflict on the resource
    /// itself under `If-Match` is the caller's (412, raised by `Txn::current` on the re-read).
    async fn retrying<T, F, Fut>(&self, attempt: F) -> Result<T, ScimError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        for n in 1..=ATTEMPTS {
            match attempt().await {
                Err(Failure::Store(StoreError::Conflict(uid))) => {
                    tracing::debug!(uid, "a SCIM write raced another writer; redoing it");
                    // A v7 uuid's low bits are random: jitter without another crate.
                    let random = (uuid::Uuid::now_v7().as_u128() & 0xffff) as u64;
                    let pause = random % (u64::from(n.min(8)) * 2 + 1);
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                }
                other => return other.map_err(ScimError::from),
            }
        }
        Err(ScimError::new(503, None, "too many concurrent writes to the same resources; retry"))
    }
}

/// What a write attempt can fail with: a store conflict is redone, the rest is the answer.
pub enum Failure {
    Store(StoreError),
    Scim(ScimError),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

impl From<ScimError> for Failure {
    fn from(e: ScimError) -> Self {
        Failure::Scim(e)
    }
}

impl From<crate::error::RequestError> for Failure {
    fn from(e: crate::error::RequestError) -> Self {
        Failure::Scim(e.into())
    }
}

impl From<crate::error::DecideError> for Failure {
    fn from(e: crate::error::DecideError) -> Self {
        match e {
            crate::error::DecideError::Store(s) => Failure::Store(s),
            other => Failure::Scim(other.into()),
        }
    }
}

impl From<Failure> for ScimError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Store(e) => e.into(),
            Failure::Scim(e) => e,
        }
    }
}

fn not_found(ty: ResourceType, id: &str) -> ScimError {
    ScimError::not_found(format!("no {} with id `{id}`", ty.name()))
}

/// EntityService writes may not touch what SCIM owns: the guards that make the store refuse such a
/// write (see `owned_by_scim` for the error), or an error for SCIM's own state.
pub fn ownership_guards(uids: &[cedar_policy::EntityUid]) -> Result<Vec<Guard>, ScimError> {
    state::ownership_guards(uids)
}

pub use state::owned_by_scim;

/// The schemas of a resource type, for discovery.
pub fn schemas(ty: ResourceType) -> &'static [SchemaDef] {
    match ty {
        ResourceType::User => USER,
        ResourceType::Group => GROUP,
    }
}

pub use discovery::{resource_types, schema_documents, service_provider_config};
