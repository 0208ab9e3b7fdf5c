//! Protobuf ⇄ core conversions, the only code that knows both.

use std::time::SystemTime;

use super::pb;
use crate::authz::{CheckInput, ContextIn, Outcome, UidRef};
use crate::entities::{AuditRecord, EntityInput};
use crate::policy::{ReloadStats, Snapshot};

pub fn uid_ref(u: &pb::EntityUid) -> UidRef<'_> {
    UidRef { ty: &u.r#type, id: &u.id }
}

/// A check with some of its uids left out (the part a listing or plan varies).
pub fn partial_input<'a>(
    [principal, action, resource]: [Option<&'a pb::EntityUid>; 3],
    context_json: &'a str,
    entities_json: &'a str,
) -> CheckInput<'a> {
    CheckInput {
        principal: principal.map(uid_ref),
        action: action.map(uid_ref),
        resource: resource.map(uid_ref),
        context: ContextIn::Json(context_json),
        entities_json,
    }
}

pub fn check_input(req: &pb::CheckRequest) -> CheckInput<'_> {
    fn uid(u: &Option<pb::EntityUid>) -> Option<UidRef<'_>> {
        u.as_ref().map(uid_ref)
    }
    CheckInput {
        principal: uid(&req.principal),
        action: uid(&req.action),
        resource: uid(&req.resource),
        context: ContextIn::Json(&req.context_json),
        entities_json: &req.entities_json,
    }
}

/// The instant a listing must give up by: 90% of the caller's `grpc-timeout` from now, so that its
/// DEADLINE_EXCEEDED reaches the caller before the caller (or tonic's own timer) gives up.
pub fn deadline(metadata: &tonic::metadata::MetadataMap) -> Option<std::time::Instant> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => std::time::Duration::from_secs(n.saturating_mul(3600)),
        "M" => std::time::Duration::from_secs(n.saturating_mul(60)),
        "S" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_millis(n),
        "u" => std::time::Duration::from_micros(n),
        "n" => std::time::Duration::from_nanos(n),
        _ => return None,
    };
    std::time::Instant::now().checked_add(timeout.mul_f64(0.9))
}

/// A listing's page in the API's terms.
pub fn list_response(listed: crate::decision::Listed, policy_version: &str) -> pb::ListResponse {
    pb::ListResponse {
        uids: listed
            .uids
            .iter()
            .map(|u| pb::EntityUid { r#type: u.type_name().to_string(), id: u.id().unescaped().to_string() })
            .collect(),
        next_page_token: listed.next.map(|key| crate::decision::page_token(policy_version, &key)).unwrap_or_default(),
        policy_version: policy_version.to_string(),
        decision_id: listed.decision_id,
    }
}

/// A PlanResources answer in the API's terms.
pub fn plan_response(
    plan: crate::decision::Plan,
    policy_version: &str,
    decision_id: String,
) -> pb::PlanResourcesResponse {
    use crate::decision::Plan;
    use pb::plan_resources_response::Kind;
    let (kind, residuals) = match plan {
        Plan::AlwaysAllowed => (Kind::AlwaysAllowed, Vec::new()),
        Plan::AlwaysDenied => (Kind::AlwaysDenied, Vec::new()),
        Plan::Conditional(residuals) => (Kind::Conditional, residuals),
    };
    pb::PlanResourcesResponse {
        kind: kind.into(),
        residuals: residuals
            .into_iter()
            .map(|r| pb::ResidualPolicy {
                policy_id: r.policy_id,
                effect: r.effect.to_string(),
                policy_json: r.json.unwrap_or_default(),
                cedar: r.cedar,
            })
            .collect(),
        policy_version: policy_version.to_string(),
        decision_id,
    }
}

pub fn check_response(outcome: Outcome, policy_version: &str, decision_id: String) -> pb::CheckResponse {
    let decision = if outcome.allow { pb::Decision::Allow } else { pb::Decision::Deny };
    pb::CheckResponse {
        decision: decision.into(),
        determining_policies: outcome.determining,
        errors: outcome
            .errors
            .into_iter()
            .map(|e| pb::PolicyError { policy_id: e.policy_id, message: e.message })
            .collect(),
        policy_version: policy_version.to_string(),
        decision_id,
    }
}

pub fn tls_status(tls: crate::tls::TlsStatus) -> pb::TlsStatus {
    let not_after = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(tls.certificate.not_after.max(0) as u64);
    pb::TlsStatus {
        subject: tls.certificate.subject,
        serial: tls.certificate.serial,
        not_after: humantime::format_rfc3339(not_after).to_string(),
        last_reload_error: tls.last_error.unwrap_or_default(),
        reload_failures: tls.failures,
        warnings: tls.warnings,
    }
}

pub fn jwks_status(jwks: crate::envoy::RemoteStatus) -> pb::JwksStatus {
    pb::JwksStatus {
        url: jwks.url,
        keys: u32::try_from(jwks.keys).unwrap_or(u32::MAX),
        fetched_at: humantime::format_rfc3339_millis(jwks.fetched_at).to_string(),
        last_error: jwks.last_error.unwrap_or_default(),
        fetch_failures: jwks.failures,
    }
}

/// The shadow set's version and counts.
pub fn shadow_status(
    policies: &crate::policy::PolicyStore,
    counts: &crate::decision::ShadowCounts,
) -> pb::ShadowStatus {
    use std::sync::atomic::Ordering::Relaxed;
    let last_reload_error = policies
        .stats()
        .last_error
        .map(|(_, diags)| diags.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
        .unwrap_or_default();
    pb::ShadowStatus {
        policy_version: policies.current().map(|s| s.version.clone()).unwrap_or_default(),
        same: counts.same.load(Relaxed),
        allow_gain: counts.allow_gain.load(Relaxed),
        allow_loss: counts.allow_loss.load(Relaxed),
        reasons_differ: counts.reasons_differ.load(Relaxed),
        errors: counts.errors.load(Relaxed),
        dropped: counts.dropped.load(Relaxed),
        last_reload_error,
    }
}

pub fn status_response(snapshot: Option<&Snapshot>, stats: ReloadStats) -> pb::GetStatusResponse {
    let rfc3339 = |t: SystemTime| humantime::format_rfc3339_millis(t).to_string();
    let mut out = pb::GetStatusResponse {
        reloads_succeeded: stats.succeeded,
        reloads_failed: stats.failed,
        last_error: stats.last_error.map(|(at, diags)| pb::ReloadError {
            at: rfc3339(at),
            diagnostics: diags.iter().map(|d| d.one_line()).collect(),
        }),
        ..Default::default()
    };
    if let Some(s) = snapshot {
        out.policy_version = s.version.clone();
        out.loaded_at = rfc3339(s.loaded_at);
        out.policy_count = u32::try_from(s.policy_count).unwrap_or(u32::MAX);
        out.template_count = u32::try_from(s.template_count).unwrap_or(u32::MAX);
        out.entity_count = u32::try_from(s.entities.len()).unwrap_or(u32::MAX);
        out.schema_loaded = s.schema.is_some();
        out.validation_mode = s.mode.as_str().to_string();
    }
    out
}

pub fn entity_inputs(items: &[pb::Entity]) -> Vec<EntityInput<'_>> {
    items
        .iter()
        .map(|e| EntityInput {
            uid: e.uid.as_ref().map(uid_ref),
            attrs_json: &e.attrs_json,
            parents: e.parents.iter().map(uid_ref).collect(),
            tags_json: &e.tags_json,
        })
        .collect()
}

/// A stored entity (Cedar entity JSON) as the API returns it.
pub fn entity_message(json: &serde_json::Value) -> pb::Entity {
    let uid = |v: &serde_json::Value| {
        let v = v.get("__entity").unwrap_or(v);
        pb::EntityUid {
            r#type: v.get("type").and_then(|t| t.as_str()).unwrap_or_default().to_string(),
            id: v.get("id").and_then(|t| t.as_str()).unwrap_or_default().to_string(),
        }
    };
    let record = |key: &str| json.get(key).filter(|v| v.as_object().is_some_and(|m| !m.is_empty()));
    pb::Entity {
        uid: json.get("uid").map(uid),
        attrs_json: record("attrs").map_or_else(|| "{}".to_string(), ToString::to_string),
        parents: json.get("parents").and_then(|p| p.as_array()).into_iter().flatten().map(uid).collect(),
        tags_json: record("tags").map(ToString::to_string).unwrap_or_default(),
    }
}

pub fn audit_message(record: AuditRecord) -> pb::AuditRecord {
    let json = |v: Option<serde_json::Value>| v.map(|v| v.to_string()).unwrap_or_default();
    let uid = crate::entities::uid_of_key(&record.uid)
        .map(|u| pb::EntityUid { r#type: u.type_name().to_string(), id: u.id().unescaped().to_string() });
    pb::AuditRecord {
        revision: record.revision,
        at: record.at,
        actor: record.actor,
        operation: record.operation,
        uid,
        before_json: json(record.before),
        after_json: json(record.after),
    }
}
