//! `cedar_pdp.v1.EntityService`: provisioning. Every call needs a provisioning credential; the
//! credential's name is the audit trail's actor.

use std::sync::Arc;

use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use super::auth::Gate;
use super::{convert, pb};
use crate::authz::parse_uid;
use crate::entities::{self, AuditFilter, EntityStore};
use crate::error::{RequestError, ServiceError};
use crate::policy::{PolicyStore, Snapshot};

/// The ExportEntities answer: chunks as the store reads them.
pub type ExportStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ExportEntitiesResponse, Status>> + Send>>;

/// Default and largest page of ListEntities and ReadAudit.
const PAGE: (u32, u32) = (100, 1000);

pub struct EntityApi {
    policies: Arc<PolicyStore>,
    store: Arc<EntityStore>,
    gate: Gate,
    max_batch: usize,
}

impl EntityApi {
    pub fn new(policies: Arc<PolicyStore>, store: Arc<EntityStore>, gate: Gate, max_batch: usize) -> Self {
        EntityApi { policies, store, gate, max_batch }
    }

    fn snapshot(&self) -> Result<Arc<Snapshot>, ServiceError> {
        self.policies.current().ok_or(ServiceError::NotReady)
    }

    fn check_batch(&self, field: &str, len: usize) -> Result<(), RequestError> {
        if len == 0 {
            return Err(RequestError::missing(field));
        }
        if len > self.max_batch {
            return Err(RequestError::TooMany { field: field.into(), len, limit: self.max_batch });
        }
        Ok(())
    }

    async fn write(
        &self,
        actor: &str,
        changes: Vec<entities::Change>,
        request_id: &str,
    ) -> Result<pb::WriteResponse, Status> {
        let count = changes.len();
        let request = entities::RequestKey::new(request_id, &changes)?;
        // What SCIM provisions is SCIM's: refused here, and guarded against SCIM taking it meanwhile.
        let uids: Vec<_> = changes.iter().map(|c| c.uid().clone()).collect();
        let guards = crate::scim::ownership_guards(&uids)?;
        let revision = self
            .store
            .apply_guarded(changes, guards, actor, request)
            .await
            .map_err(|e| crate::scim::owned_by_scim(&e).map_or_else(|| Status::from(e), Status::from))?;
        tracing::info!(target: "cedar_pdp::audit", actor, revision, count, "entities changed");
        Ok(pb::WriteResponse { revision })
    }
}

fn page_size(requested: u32) -> usize {
    (if requested == 0 { PAGE.0 } else { requested.min(PAGE.1) }) as usize
}

#[tonic::async_trait]
impl pb::entity_service_server::EntityService for EntityApi {
    async fn upsert_entities(
        &self,
        request: Request<pb::UpsertEntitiesRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let actor = self.gate.identify(&request)?;
        let items = &request.get_ref().entities;
        self.check_batch("entities", items.len())?;
        let snapshot = self.snapshot()?;
        let changes = entities::validate_upserts(&snapshot, &convert::entity_inputs(items))
            .inspect_err(|e| tracing::debug!(actor, "upsert rejected: {e}"))?;
        entities::check_acyclic(&self.store, &snapshot, &changes)
            .await
            .inspect_err(|e| tracing::debug!(actor, "upsert rejected: {e}"))?;
        Ok(Response::new(self.write(&actor, changes, &request.get_ref().request_id).await?))
    }

    async fn delete_entities(
        &self,
        request: Request<pb::DeleteEntitiesRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let actor = self.gate.identify(&request)?;
        let uids = &request.get_ref().uids;
        self.check_batch("uids", uids.len())?;
        let snapshot = self.snapshot()?;
        let refs: Vec<_> = uids.iter().map(|u| Some(convert::uid_ref(u))).collect();
        let changes = entities::validate_deletes(&snapshot, &refs)?;
        Ok(Response::new(self.write(&actor, changes, &request.get_ref().request_id).await?))
    }

    async fn get_entity(
        &self,
        request: Request<pb::GetEntityRequest>,
    ) -> Result<Response<pb::GetEntityResponse>, Status> {
        self.gate.identify(&request)?;
        let snapshot = self.snapshot()?;
        let uid = parse_uid(&snapshot, request.get_ref().uid.as_ref().map(convert::uid_ref), "uid")?;
        // Files win in decisions, so they win here too.
        if let Some(entity) = snapshot.entities.get(&uid) {
            let json = entity.to_json_value().map_err(|e| ServiceError::Internal(e.to_string()))?;
            return Ok(Response::new(pb::GetEntityResponse {
                entity: Some(convert::entity_message(&json)),
                revision: 0,
                source: "files".into(),
            }));
        }
        let record = self.store.get(&uid).await?.ok_or_else(|| ServiceError::NotFound(format!("`{uid}`")))?;
        Ok(Response::new(pb::GetEntityResponse {
            entity: Some(convert::entity_message(&record.json())),
            revision: record.revision,
            source: "provisioned".into(),
        }))
    }

    type ExportEntitiesStream = ExportStream;

    async fn export_entities(
        &self,
        request: Request<pb::ExportEntitiesRequest>,
    ) -> Result<Response<Self::ExportEntitiesStream>, Status> {
        self.gate.identify(&request)?;
        let ty = match request.get_ref().r#type.as_str() {
            "" => None,
            ty => Some(self.snapshot()?.index.type_name(ty).map_err(|e| RequestError::invalid("type", e))?.to_string()),
        };
        // A small buffer: the store reads no faster than the client takes the chunks.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let store = self.store.clone();
        tokio::spawn(async move { store.export(ty, PAGE.1 as usize, tx).await });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|chunk| {
            let chunk = chunk?;
            let entities = chunk.records.iter().map(|r| convert::entity_message(&r.json())).collect();
            Ok(pb::ExportEntitiesResponse { entities, revision: chunk.revision })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_entities(
        &self,
        request: Request<pb::ListEntitiesRequest>,
    ) -> Result<Response<pb::ListEntitiesResponse>, Status> {
        self.gate.identify(&request)?;
        let req = request.get_ref();
        if req.r#type.is_empty() {
            return Err(RequestError::missing("type").into());
        }
        let snapshot = self.snapshot()?;
        let ty = snapshot.index.type_name(&req.r#type).map_err(|e| RequestError::invalid("type", e))?.to_string();
        // The token is the last uid of the previous page, in Cedar's form.
        if !req.page_token.is_empty() && !req.page_token.starts_with(&format!("{ty}::\"")) {
            return Err(RequestError::invalid("page_token", "not a page token of this type").into());
        }
        let size = page_size(req.page_size);
        let (records, next) = self.store.list(&ty, &req.page_token, size).await?;
        let next_page_token = next.unwrap_or_default();
        let entities = records.iter().map(|r| convert::entity_message(&r.json())).collect();
        Ok(Response::new(pb::ListEntitiesResponse { entities, next_page_token }))
    }

    async fn read_audit(
        &self,
        request: Request<pb::ReadAuditRequest>,
    ) -> Result<Response<pb::ReadAuditResponse>, Status> {
        self.gate.identify(&request)?;
        let req = request.get_ref();
        let time = |field: &str, text: &str| {
            (!text.is_empty())
                .then(|| humantime::parse_rfc3339_weak(text).map_err(|e| RequestError::invalid(field, e)))
                .transpose()
        };
        let uid = match &req.uid {
            Some(uid) => Some(entities::key_of(&parse_uid(&*self.snapshot()?, Some(convert::uid_ref(uid)), "uid")?)),
            None => None,
        };
        let after = match req.page_token.as_str() {
            "" => None,
            token => Some(
                entities::parse_cursor(token)
                    .ok_or_else(|| RequestError::invalid("page_token", "not a page token of ReadAudit"))?,
            ),
        };
        let filter = AuditFilter {
            uid,
            since: time("since", &req.since)?,
            until: time("until", &req.until)?,
            limit: page_size(req.limit),
            after,
        };
        let records = self.store.audit(&filter).await?;
        let next_page_token = match records.last() {
            Some(last) if records.len() == filter.limit => last.cursor.clone(),
            _ => String::new(),
        };
        let records = records.into_iter().map(convert::audit_message).collect();
        Ok(Response::new(pb::ReadAuditResponse { records, next_page_token }))
    }
}
