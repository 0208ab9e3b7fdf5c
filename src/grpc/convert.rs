//! Protobuf ⇄ core conversions, the only code that knows both.

use std::time::SystemTime;

use super::pb;
use crate::authz::{CheckInput, Outcome, UidRef};
use crate::policy::{ReloadStats, Snapshot};

pub fn check_input(req: &pb::CheckRequest) -> CheckInput<'_> {
    fn uid(u: &Option<pb::EntityUid>) -> Option<UidRef<'_>> {
        u.as_ref().map(|u| UidRef { ty: &u.r#type, id: &u.id })
    }
    CheckInput {
        principal: uid(&req.principal),
        action: uid(&req.action),
        resource: uid(&req.resource),
        context_json: &req.context_json,
        entities_json: &req.entities_json,
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
