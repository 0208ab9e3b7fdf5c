//! `envoy.service.auth.v3.Authorization`: Envoy's (and Istio's CUSTOM) external authorization, decided
//! through the same path as Check, with the directory's `ext_authz.toml` mapping (`envoy.rs`).
//!
//! Architecture invariants: every answer sets `status` explicitly (Envoy takes an unset status for an
//! Allow); identity headers are set with overwrite, so a client cannot forge them; a request the
//! mapping does not cover is denied unless the mapping says otherwise.

use std::borrow::Cow;
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption, HttpResponse, HttpStatus,
    OkHttpResponse,
};
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};

use super::auth::CheckGate;
use super::envoy_wire::{self as wire, CheckRequest, Kind};
use crate::authz::{CheckInput, ContextFields, ContextIn, Field, UidRef};
use crate::decision::{Decided, Decisions, Origin};
use crate::envoy::{Claims, Fallback, Mapping, Source, percent_decode};
use crate::error::DecideError;
use crate::telemetry::HttpInfo;

/// gRPC codes carried in `CheckResponse.status`.
const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;
const UNAUTHENTICATED: i32 = 16;
const INVALID_ARGUMENT: i32 = 3;

/// Where Envoy's jwt_authn filter puts verified payloads in `metadata_context`.
const JWT_AUTHN: &str = "envoy.filters.http.jwt_authn";

pub struct ExtAuthzApi {
    decisions: Arc<Decisions>,
    callers: Arc<CheckGate>,
}

impl ExtAuthzApi {
    pub fn new(decisions: Arc<Decisions>, callers: Arc<CheckGate>) -> Self {
        ExtAuthzApi { decisions, callers }
    }
}

/// An identified principal: its type, id and the verified claims it came with (none for a peer).
struct Identified {
    ty: String,
    id: String,
    claims: Option<Claims>,
}

/// The principal, if the request identifies one (else the mapping's anonymous principal); an error
/// for credentials that are presented but do not verify. With the `bearer` source configured, an
/// `authorization` header is checked whatever the order of sources: a bad token is never ignored.
fn principal(mapping: &Mapping, req: &CheckRequest, headers: &Headers<'_>) -> Result<Option<Identified>, String> {
    let Some(attrs) = req.attributes.as_ref() else { return Ok(None) };
    let id_in = |claims: Claims| match claims.get(&mapping.claim) {
        Some(serde_json::Value::String(id)) if !id.is_empty() => {
            Some(Identified { ty: mapping.principal_type.clone(), id: id.clone(), claims: Some(claims) })
        }
        _ => None,
    };
    let mut bearer = None;
    if let (true, Some(value)) = (mapping.sources.contains(&Source::Bearer), headers.get("authorization")) {
        let (scheme, token) = value.split_once(' ').unwrap_or((&value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err("the authorization header is not a bearer token".into());
        }
        let jwt = mapping.jwt.as_ref().ok_or("no keys are configured")?;
        match id_in(jwt.verify(token.trim())?) {
            Some(found) => bearer = Some(found),
            None => return Err(format!("the token has no `{}` claim", mapping.claim)),
        }
    }
    for source in &mapping.sources {
        let found = match source {
            Source::Bearer => bearer.take(),
            Source::Peer => attrs
                .source
                .as_ref()
                .map(|p| p.principal.clone())
                .filter(|p| !p.is_empty())
                .map(|id| Identified { ty: mapping.peer_type.clone(), id, claims: None }),
            Source::JwtAuthn if mapping.needs_claims() => jwt_authn_claims(mapping, attrs).and_then(id_in),
            Source::JwtAuthn => jwt_authn_id(mapping, attrs).map(|id| Identified {
                ty: mapping.principal_type.clone(),
                id,
                claims: None,
            }),
        };
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

fn jwt_authn_claims(mapping: &Mapping, attrs: &wire::AttributeContext) -> Option<Claims> {
    let payload = attrs.metadata_context.as_ref()?.get(JWT_AUTHN)?.get(&mapping.jwt_payload)?;
    match payload.to_json() {
        serde_json::Value::Object(claims) => Some(Arc::new(claims)),
        _ => None,
    }
}

/// The id claim alone, when the mapping needs no other claim: no copy of the whole payload.
fn jwt_authn_id(mapping: &Mapping, attrs: &wire::AttributeContext) -> Option<String> {
    let payload = attrs.metadata_context.as_ref()?.get(JWT_AUTHN)?.get(&mapping.jwt_payload)?;
    let Some(Kind::Struct(claims)) = &payload.kind else { return None };
    match claims.get(&mapping.claim)?.kind.as_ref()? {
        Kind::String(id) if !id.is_empty() => Some(id.clone()),
        _ => None,
    }
}

/// The principal as a request-scoped entity carrying the claims the mapping names: its groups as
/// parents and mapped attributes. None when the mapping names none.
fn principal_entity(mapping: &Mapping, ty: &str, id: &str, claims: &Claims) -> Option<String> {
    if !mapping.needs_claims() {
        return None;
    }
    let mut parents = Vec::new();
    if let Some((claim, group_type)) = &mapping.groups {
        let names: Vec<String> = match claims.get(claim) {
            Some(serde_json::Value::Array(items)) => {
                items.iter().filter_map(|g| g.as_str().map(str::to_string)).collect()
            }
            Some(serde_json::Value::String(list)) => list.split_whitespace().map(str::to_string).collect(),
            _ => Vec::new(),
        };
        let group_type = group_type.to_string();
        parents = names.into_iter().map(|g| serde_json::json!({"type": group_type, "id": g})).collect();
    }
    // Plain strings, integers and booleans only: a claim cannot smuggle in an entity reference or an
    // extension value.
    let attrs: serde_json::Map<String, serde_json::Value> = mapping
        .attributes
        .iter()
        .filter_map(|(attr, claim)| match claims.get(claim)? {
            v @ (serde_json::Value::String(_) | serde_json::Value::Bool(_)) => Some((attr.clone(), v.clone())),
            serde_json::Value::Number(n) => n.as_i64().map(|n| (attr.clone(), n.into())),
            _ => None,
        })
        .collect();
    Some(serde_json::json!([{"uid": {"type": ty, "id": id}, "attrs": attrs, "parents": parents}]).to_string())
}

/// The checked request's headers, looked up by lowercase name. Envoy sends either `headers` or, with
/// `encode_raw_headers`, `header_map`, where a repeated name is joined with `,` as Envoy joins it in
/// `headers`.
enum Headers<'a> {
    Joined(&'a [wire::Entry]),
    Raw(&'a [wire::HeaderValue]),
}

impl<'a> Headers<'a> {
    fn of(http: &'a wire::HttpRequest) -> Self {
        match http.header_map.as_ref().filter(|m| !m.headers.is_empty()) {
            Some(map) => Headers::Raw(&map.headers),
            None => Headers::Joined(&http.headers),
        }
    }

    fn get(&self, name: &str) -> Option<Cow<'a, str>> {
        match self {
            Headers::Joined(entries) => wire::entry(entries, name).map(Cow::Borrowed),
            Headers::Raw(headers) => {
                let mut values = headers.iter().filter(|h| h.key.eq_ignore_ascii_case(name)).map(|h| {
                    if h.raw_value.is_empty() {
                        Cow::Borrowed(h.value.as_str())
                    } else {
                        String::from_utf8_lossy(&h.raw_value)
                    }
                });
                let first = values.next()?;
                Some(values.fold(first, |mut joined, value| {
                    let text = joined.to_mut();
                    text.push(',');
                    text.push_str(&value);
                    joined
                }))
            }
        }
    }
}

/// The Cedar context the mapping allows: only what it names, so a schema can declare it exactly. An
/// error for a listed query parameter that repeats or does not decode: an upstream might read
/// another value than the policies saw.
fn context(mapping: &Mapping, req: &CheckRequest, headers: &Headers<'_>, path: &str) -> Result<ContextFields, String> {
    let mut context = ContextFields::default();
    if !mapping.context_headers.is_empty() {
        let listed = mapping.context_headers.iter().filter_map(|h| Some((h.clone(), headers.get(h)?.into_owned())));
        context.push_strings("headers", listed);
    }
    if !mapping.context_query.is_empty() {
        context.push_strings("query", picked_query(mapping, path)?);
    }
    if let Some(ip) = req.client_address().filter(|_| mapping.source_ip) {
        // Written as the extension call: typed without a schema too.
        context.push("source_ip", Field::Ip(ip.to_string()));
    }
    if let Some(attrs) = req.attributes.as_ref().filter(|_| mapping.extensions) {
        // In wire order: a key Envoy repeated keeps its last value, as in a map.
        let extensions = attrs.context_extensions.iter().map(|e| (e.key.clone(), e.value.clone()));
        context.push_strings("extensions", extensions);
    }
    Ok(context)
}

/// The query parameters the mapping lists, decoded, in their order.
fn picked_query(mapping: &Mapping, path: &str) -> Result<Vec<(String, String)>, String> {
    let query = path.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let query = query.split('#').next().unwrap_or_default();
    let mut picked: Vec<(String, String)> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |t: &str| {
            percent_decode(&t.replace('+', " "))
                .map(Cow::into_owned)
                .ok_or(format!("query parameter `{k}` does not decode"))
        };
        let key = decode(k)?;
        if !mapping.context_query.contains(&key) {
            continue;
        }
        if picked.iter().any(|(seen, _)| *seen == key) {
            return Err(format!("query parameter `{key}` is repeated"));
        }
        let value = decode(v)?;
        picked.push((key, value));
    }
    Ok(picked)
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
    if http == 401 {
        headers.push(header("www-authenticate", "Bearer"));
    }
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

/// An answer made without a policy decision (no route, not HTTP, bad credentials, a request the schema
/// refuses). It gets a decision id and a log record too; it allows only when the mapping says so, or
/// in global dry run, and then the upstream still gets identity headers of our making, never the
/// client's.
fn fallback(decisions: &Decisions, refusal: Refusal<'_>, mapping: &Mapping, http: HttpInfo<'_>) -> CheckResponse {
    let allowed = refusal.choice == Fallback::Allow || mapping.dry_run;
    let origin = Origin { api: "ext_authz", http: Some(HttpInfo { dry_run: mapping.dry_run, ..http }) };
    let decision_id = decisions.without_policies(allowed, refusal.reason, origin);
    if allowed {
        allow(vec![
            header(&mapping.principal_header, &mapping.anonymous_uid),
            header(&mapping.decision_header, &decision_id),
        ])
    } else {
        deny(refusal.code, refusal.http, refusal.reason, Some(&decision_id), Some(mapping))
    }
}

/// Why and how a request is answered without the policies.
struct Refusal<'a> {
    choice: Fallback,
    code: i32,
    http: u16,
    reason: &'a str,
}

/// With tracing on, and when Envoy's own call carried no `traceparent` (Envoy without a tracer), a
/// span in the trace of the request Envoy asks about.
fn checked_request_span(
    metadata: &tonic::metadata::MetadataMap,
    http: Option<&wire::HttpRequest>,
) -> Option<tracing::Span> {
    if !crate::telemetry::trace::enabled() || metadata.contains_key("traceparent") {
        return None;
    }
    let headers = Headers::of(http?);
    let traceparent = headers.get("traceparent")?;
    Some(crate::telemetry::trace::child_of(&traceparent, headers.get("tracestate").as_deref()))
}

impl ExtAuthzApi {
    /// Envoy's `Check` (served by `envoy_wire::AuthorizationServer`).
    pub async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        self.callers.admit(&request)?;
        let checked =
            request.get_ref().attributes.as_ref().and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref());
        match checked_request_span(request.metadata(), checked) {
            Some(span) => tracing::Instrument::instrument(self.decide(&request), span).await,
            None => self.decide(&request).await,
        }
    }

    async fn decide(&self, request: &Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let req = request.get_ref();
        let snapshot = self.decisions.snapshot()?;
        let Some(mapping) = snapshot.ext_authz.as_deref() else {
            return Ok(Response::new(deny(PERMISSION_DENIED, 403, "no ext_authz mapping is configured", None, None)));
        };
        let Some(http) = req.attributes.as_ref().and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref()) else {
            let refusal =
                Refusal { choice: mapping.non_http, code: PERMISSION_DENIED, http: 403, reason: "not an HTTP request" };
            let http = HttpInfo { route: "", request_id: "", dry_run: false };
            return Ok(Response::new(fallback(&self.decisions, refusal, mapping, http)));
        };
        let headers = Headers::of(http);
        let request_id = headers.get("x-request-id").map(Cow::into_owned).unwrap_or_default();
        let unrouted = HttpInfo { route: "", request_id: &request_id, dry_run: false };
        let Some(route) = mapping.route(&http.method, &http.path) else {
            let reason = "no route matches this request";
            let refusal = Refusal { choice: mapping.unmatched, code: PERMISSION_DENIED, http: 403, reason };
            return Ok(Response::new(fallback(&self.decisions, refusal, mapping, unrouted)));
        };
        let routed = HttpInfo { route: route.route, ..unrouted };
        // Keys at a URL may not know a rotated-in key yet: fetch them first (awaited, rate-limited).
        if let (Some(jwt), Some(value)) = (&mapping.jwt, headers.get("authorization"))
            && let Some((_, token)) = value.split_once(' ')
        {
            jwt.prepare(token.trim()).await;
        }
        let identified = match principal(mapping, req, &headers) {
            Ok(identified) => identified,
            Err(why) => {
                // The details go to the log, not to the client.
                tracing::info!(route = route.route, request_id, "ext_authz: credentials refused: {why}");
                let reason = "invalid bearer token";
                let refusal = Refusal { choice: Fallback::Deny, code: UNAUTHENTICATED, http: 401, reason };
                return Ok(Response::new(fallback(&self.decisions, refusal, mapping, routed)));
            }
        };
        let (ty, id) = match &identified {
            Some(p) => (p.ty.as_str(), p.id.as_str()),
            None => (mapping.anonymous_type.as_str(), mapping.anonymous_id.as_str()),
        };
        let own_entities = match &identified {
            Some(Identified { ty, id, claims: Some(claims) }) => principal_entity(mapping, ty, id, claims),
            _ => None,
        };
        let context = match context(mapping, req, &headers, &http.path) {
            Ok(context) => context,
            Err(why) => {
                tracing::info!(route = route.route, request_id, "ext_authz: {why}");
                let refusal = Refusal { choice: Fallback::Deny, code: INVALID_ARGUMENT, http: 400, reason: &why };
                return Ok(Response::new(fallback(&self.decisions, refusal, mapping, routed)));
            }
        };
        let input = CheckInput {
            principal: Some(UidRef { ty, id }),
            action: Some(UidRef { ty: route.action_type, id: route.action_id }),
            resource: Some(UidRef { ty: route.resource_type, id: &route.resource_id }),
            context: ContextIn::Fields(&context),
            entities_json: own_entities.as_deref().unwrap_or_default(),
        };
        let origin = Origin { api: "ext_authz", http: Some(HttpInfo { dry_run: route.dry_run, ..routed }) };
        let Decided { outcome, decision_id } = match self.decisions.decide(&snapshot, &input, 0, origin).await {
            Ok(decided) => decided,
            // The mapping produced a request the schema refuses: a deny the operator must fix.
            Err(DecideError::Request(e)) => {
                tracing::warn!(route = route.route, request_id, "ext_authz: request not decidable: {e}");
                let reason = "the request cannot be decided (see the PDP's log)";
                let refusal = Refusal { choice: Fallback::Deny, code: INVALID_ARGUMENT, http: 403, reason };
                return Ok(Response::new(fallback(&self.decisions, refusal, mapping, routed)));
            }
            // The store cannot answer: an error, which Envoy turns into `status_on_error`.
            Err(e) => return Err(e.into()),
        };
        let principal_text = crate::telemetry::uid_text(&outcome.principal);
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
