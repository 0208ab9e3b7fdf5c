//! `envoy.service.auth.v3.Authorization`: Envoy's (and Istio's CUSTOM) external authorization, decided
//! through the same path as Check, with the directory's `ext_authz.toml` mapping (`envoy.rs`).
//!
//! Architecture invariants: every answer sets `status` explicitly (Envoy takes an unset status for an
//! Allow); identity headers are set with overwrite, so a client cannot forge them; a request the
//! mapping does not cover is denied unless the mapping says otherwise.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use envoy_types::ext_authz::v3::CheckRequestExt;
use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption,
    HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};

use crate::authz::{CheckInput, Limits, UidRef};
use crate::entities::{self, EntityStore};
use crate::envoy::{Fallback, Mapping, Source};
use crate::error::{DecideError, ServiceError};
use crate::policy::PolicyStore;
use crate::telemetry;

/// gRPC codes carried in `CheckResponse.status`.
const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;
const UNAUTHENTICATED: i32 = 16;
const INVALID_ARGUMENT: i32 = 3;

/// Where Envoy's jwt_authn filter puts verified payloads in `metadata_context`.
const JWT_AUTHN: &str = "envoy.filters.http.jwt_authn";

pub struct ExtAuthzApi {
    policies: Arc<PolicyStore>,
    entities: Arc<EntityStore>,
    decision_log: bool,
    limits: Limits,
}

impl ExtAuthzApi {
    pub fn new(policies: Arc<PolicyStore>, entities: Arc<EntityStore>, decision_log: bool, limits: Limits) -> Self {
        ExtAuthzApi { policies, entities, decision_log, limits }
    }
}

/// The principal's id, if the request identifies one (else the mapping's anonymous principal); an
/// error for a bearer token that is presented but does not verify.
fn principal(
    mapping: &Mapping,
    req: &CheckRequest,
    headers: &HashMap<String, String>,
) -> Result<Option<String>, String> {
    let Some(attrs) = req.attributes.as_ref() else { return Ok(None) };
    for source in &mapping.sources {
        let found = match source {
            Source::Bearer => {
                let token = headers.get("authorization").and_then(|v| v.strip_prefix("Bearer "));
                match (token, &mapping.jwt) {
                    (Some(token), Some(jwt)) => {
                        let claims = jwt.verify(token.trim())?;
                        match claims.get(&mapping.claim) {
                            Some(serde_json::Value::String(id)) if !id.is_empty() => Some(id.clone()),
                            _ => return Err(format!("the token has no `{}` claim", mapping.claim)),
                        }
                    }
                    _ => None,
                }
            }
            other => other_source(mapping, attrs, *other),
        };
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

fn other_source(
    mapping: &Mapping,
    attrs: &envoy_types::pb::envoy::service::auth::v3::AttributeContext,
    source: Source,
) -> Option<String> {
    match source {
        Source::Bearer => None,
        Source::Peer => attrs.source.as_ref().map(|p| p.principal.clone()).filter(|p| !p.is_empty()),
        Source::JwtAuthn => {
            let payload =
                attrs.metadata_context.as_ref()?.filter_metadata.get(JWT_AUTHN)?.fields.get(&mapping.jwt_payload)?;
            let Some(Kind::StructValue(payload)) = &payload.kind else { return None };
            match &payload.fields.get(&mapping.claim)?.kind {
                Some(Kind::StringValue(id)) if !id.is_empty() => Some(id.clone()),
                _ => None,
            }
        }
    }
}

/// The Cedar context the mapping allows: only what it names, so a schema can declare it exactly.
fn context(mapping: &Mapping, req: &CheckRequest, headers: &HashMap<String, String>, path: &str) -> String {
    let mut context = serde_json::Map::new();
    if !mapping.context_headers.is_empty() {
        let picked: serde_json::Map<String, serde_json::Value> = mapping
            .context_headers
            .iter()
            .filter_map(|h| headers.get(h).map(|v| (h.clone(), v.clone().into())))
            .collect();
        context.insert("headers".into(), picked.into());
    }
    if !mapping.context_query.is_empty() {
        let query = path.split_once('?').map(|(_, q)| q).unwrap_or_default();
        let picked: serde_json::Map<String, serde_json::Value> = query
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .filter(|(k, _)| mapping.context_query.iter().any(|q| q == k))
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect();
        context.insert("query".into(), picked.into());
    }
    if mapping.source_ip
        && let Some(ip) = req.get_client_address()
    {
        context.insert("source_ip".into(), serde_json::json!({"__extn": {"fn": "ip", "arg": ip}}));
    }
    if mapping.extensions {
        let extensions = req.attributes.as_ref().map(|a| a.context_extensions.clone()).unwrap_or_default();
        context.insert("extensions".into(), serde_json::to_value(extensions).unwrap_or_default());
    }
    serde_json::Value::Object(context).to_string()
}

fn header(name: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: name.into(), value: value.into(), ..Default::default() }),
        // Replace whatever the client sent under this name.
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn allow(headers: Vec<HeaderValueOption>) -> CheckResponse {
    CheckResponse {
        status: Some(rpc::Status { code: OK, ..Default::default() }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse { headers, ..Default::default() })),
        ..Default::default()
    }
}

fn deny(code: i32, http: u16, reason: &str, decision_id: Option<&str>, mapping: Option<&Mapping>) -> CheckResponse {
    let body = serde_json::json!({"decision": "deny", "reason": reason, "decision_id": decision_id}).to_string();
    let mut headers = vec![header("content-type", "application/json")];
    if let (Some(id), Some(m)) = (decision_id, mapping) {
        headers.push(header(&m.decision_header, id));
    }
    CheckResponse {
        status: Some(rpc::Status { code, message: reason.into(), ..Default::default() }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: i32::from(http) }),
            headers,
            body,
        })),
        ..Default::default()
    }
}

fn fallback(choice: Fallback, reason: &str, mapping: &Mapping) -> CheckResponse {
    match choice {
        Fallback::Allow => allow(Vec::new()),
        Fallback::Deny => deny(PERMISSION_DENIED, 403, reason, None, Some(mapping)),
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzApi {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let started = Instant::now();
        let snapshot = self.policies.current().ok_or(ServiceError::NotReady)?;
        let req = request.get_ref();
        let Some(mapping) = snapshot.ext_authz.as_deref() else {
            return Ok(Response::new(deny(PERMISSION_DENIED, 403, "no ext_authz mapping is configured", None, None)));
        };
        let Some(http) = req.attributes.as_ref().and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref()) else {
            return Ok(Response::new(fallback(mapping.non_http, "not an HTTP request", mapping)));
        };
        let request_id = http.headers.get("x-request-id").cloned().unwrap_or_default();
        let Some(route) = mapping.route(&http.method, &http.path) else {
            tracing::debug!(method = http.method, path = http.path, request_id, "ext_authz: no route");
            return Ok(Response::new(fallback(mapping.unmatched, "no route matches this request", mapping)));
        };
        let identified = match principal(mapping, req, &http.headers) {
            Ok(identified) => identified,
            Err(why) => {
                tracing::info!(route = route.route, request_id, "ext_authz: bearer token refused: {why}");
                let reason = format!("invalid bearer token: {why}");
                return Ok(Response::new(deny(UNAUTHENTICATED, 401, &reason, None, Some(mapping))));
            }
        };
        let principal_ty = mapping.principal_type.to_string();
        let (ty, id) = match &identified {
            Some(id) => (principal_ty.as_str(), id.as_str()),
            None => (mapping.anonymous_type.as_str(), mapping.anonymous_id.as_str()),
        };
        let action_ty = route.action.type_name().to_string();
        let action_id = route.action.id().unescaped().to_string();
        let resource_ty = route.resource.type_name().to_string();
        let resource_id = route.resource.id().unescaped().to_string();
        let context_json = context(mapping, req, &http.headers, &http.path);
        let input = CheckInput {
            principal: Some(UidRef { ty, id }),
            action: Some(UidRef { ty: &action_ty, id: &action_id }),
            resource: Some(UidRef { ty: &resource_ty, id: &resource_id }),
            context_json: &context_json,
            entities_json: "",
        };
        let outcome = match entities::decide(&self.entities, &snapshot, &input, &self.limits, 0).await {
            Ok(outcome) => outcome,
            // The mapping produced a request the schema refuses: a deny the operator must fix.
            Err(DecideError::Request(e)) => {
                tracing::warn!(route = route.route, request_id, "ext_authz: request not decidable: {e}");
                return Ok(Response::new(deny(INVALID_ARGUMENT, 403, &e.to_string(), None, Some(mapping))));
            }
            // The store cannot answer: an error, which Envoy turns into `status_on_error`.
            Err(DecideError::Store(e)) => return Err(e.into()),
        };
        let decision_id = uuid::Uuid::now_v7().to_string();
        telemetry::record_decision(
            self.decision_log,
            "ext_authz",
            &decision_id,
            &snapshot.version,
            &outcome,
            started.elapsed(),
        );
        tracing::info!(
            target: "cedar_pdp::ext_authz",
            decision_id,
            request_id,
            route = route.route,
            principal = %outcome.principal,
            action = %outcome.action,
            resource = %outcome.resource,
            allow = outcome.allow,
            dry_run = route.dry_run,
            "ext_authz decision"
        );
        let principal_text = outcome.principal.to_string();
        let response = if outcome.allow || route.dry_run {
            if !outcome.allow {
                metrics::counter!("cedar_pdp_ext_authz_dry_run_denials_total", "route" => route.route.to_string())
                    .increment(1);
            }
            allow(vec![
                header(&mapping.principal_header, &principal_text),
                header(&mapping.decision_header, &decision_id),
            ])
        } else if identified.is_none() {
            deny(UNAUTHENTICATED, 401, "unauthenticated", Some(&decision_id), Some(mapping))
        } else {
            deny(PERMISSION_DENIED, 403, "forbidden", Some(&decision_id), Some(mapping))
        };
        Ok(Response::new(response))
    }
}
