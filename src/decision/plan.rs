//! PlanResources: what the policies say about every resource of a type, for resources that live in
//! the caller's own database. Cedar's type-aware partial evaluation (`tpe`) runs with the resource
//! unknown and everything else known — the principal and what it is in (from the files and the
//! store, as a decision reads them), the action, the context — and either decides (every resource
//! allowed, or none) or leaves residual policies over `resource` for the caller to turn into a query.
//!
//! Limits: needs a schema (partial evaluation is typed); the residuals speak of the resource's
//! attributes and ancestors, which the caller's data must answer; Cedar marks the `tpe` API
//! experimental.

use cedar_policy::{Decision, EntityTypeName, EntityUid, PartialEntities, PartialEntityUid, PartialRequest, Policy};

use crate::authz::{self, CheckInput, UidRef};
use crate::entities::{self, EntityStore};
use crate::error::{DecideError, RequestError};
use crate::policy::Snapshot;

/// A plan's answer. With `Conditional`, a resource is allowed exactly when one of the residual
/// permits holds for it and none of the residual forbids does (Cedar's rule on the residuals).
pub enum Plan {
    AlwaysAllowed,
    AlwaysDenied,
    Conditional(Vec<Residual>),
}

pub struct Residual {
    pub policy_id: String,
    pub effect: &'static str,
    /// Cedar's JSON policy format; `None` when Cedar cannot write this residual as JSON.
    pub json: Option<String>,
    pub cedar: String,
}

/// Plans `input` (its resource left out) over every resource of `resource_type`.
pub(super) async fn plan(
    store: &EntityStore,
    snapshot: &Snapshot,
    input: &CheckInput<'_>,
    resource_type: &str,
    min_revision: u64,
    limits: &authz::Limits,
) -> Result<Plan, DecideError> {
    let Some(schema) = snapshot.request_schema() else {
        return Err(DecideError::Unsupported(
            "PlanResources needs a schema in the policy directory (and validation not `off`)".into(),
        ));
    };
    // Partial evaluation keeps Cedar's semantics, where an erroring forbid does not apply: its plan
    // could allow what Check, denying on such errors, refuses.
    if snapshot.forbid_errors == crate::policy::ForbidErrors::Deny {
        return Err(DecideError::Unsupported("PlanResources is not available with --forbid-errors deny".into()));
    }
    let ty: EntityTypeName = snapshot.index.type_name(resource_type).map_err(|e| {
        RequestError::invalid("resource_type", format!("`{resource_type}` is not an entity type name: {e}"))
    })?;
    // A check on a resource that does not exist validates the rest and reads the principal's slice.
    let ty_text = ty.to_string();
    let probe = CheckInput { resource: Some(UidRef { ty: &ty_text, id: "" }), ..*input };
    let prepared = authz::prepare(snapshot, &probe, limits)
        .map_err(|e| e.renamed(|f| if f.starts_with("resource") { "resource_type".into() } else { f.to_string() }))?;
    let slice = entities::slice_for(store, snapshot, &prepared, min_revision).await?;
    let [principal, action, _] = prepared.uids.clone();
    // Partial evaluation takes an entity it does not have as unknown, where Check takes it as absent:
    // a plan about a principal nobody holds would leave conditions on it that the caller cannot
    // evaluate. Refused, naming it.
    if slice.get(&principal).is_none() {
        return Err(RequestError::invalid(
            "principal",
            format!("`{principal}` is neither in the entity files nor in the store: there is nothing to plan on"),
        )
        .into());
    }
    let context = prepared.request().context().cloned();
    let unknown = |e: &dyn std::fmt::Display| DecideError::Unsupported(format!("partial evaluation: {e}"));
    let request = PartialRequest::new(
        PartialEntityUid::from_concrete(principal),
        action,
        PartialEntityUid::new(ty, None),
        context,
        schema,
    )
    .map_err(|e| RequestError::schema("resource_type", &e))?;
    let known_uids: std::collections::HashSet<EntityUid> = slice.iter().map(|e| e.uid()).collect();
    let known = PartialEntities::from_concrete(slice, schema).map_err(|e| unknown(&e))?;
    let response = snapshot.policies.tpe(&request, &known, schema).map_err(|e| unknown(&e))?;
    Ok(match response.decision() {
        Some(Decision::Allow) => Plan::AlwaysAllowed,
        Some(Decision::Deny) => Plan::AlwaysDenied,
        // The permits already satisfied are part of the answer (`when { true }`): with them, a
        // resource is allowed iff some listed permit holds and no listed forbid does.
        None => {
            let satisfied: std::collections::HashSet<_> = response.true_permits().cloned().collect();
            let residuals: Vec<Residual> = response
                .residual_policies()
                .chain(response.policies().filter(|p| satisfied.contains(p.id())))
                .map(|p| residual(&p))
                .collect();
            // Fail closed on a residual that reads an entity other than the resource: its data is
            // this server's, missing here (a dangling reference), and no caller could decide it.
            if let Some((id, entity)) = residuals.iter().find_map(|r| {
                r.json.as_deref().and_then(|j| reads_an_absent_entity(j, &known_uids)).map(|e| (&r.policy_id, e))
            }) {
                return Err(DecideError::Unsupported(format!(
                    "policy `{id}` reads entity {entity}, which this server does not hold: no plan over the resource alone"
                )));
            }
            Plan::Conditional(residuals)
        }
    })
}

fn residual(policy: &Policy) -> Residual {
    let effect = match policy.effect() {
        cedar_policy::Effect::Permit => "permit",
        cedar_policy::Effect::Forbid => "forbid",
    };
    Residual {
        policy_id: policy.id().to_string(),
        effect,
        json: policy.to_json().ok().map(|j| j.to_string()),
        cedar: policy.to_string(),
    }
}

/// The first entity literal a residual (Cedar JSON) reads — the left side of `.`, `has`, `in`,
/// `getTag` or `hasTag` — that is not among `known`. The resource is a variable, never counted.
fn reads_an_absent_entity(json: &str, known: &std::collections::HashSet<EntityUid>) -> Option<String> {
    fn walk(value: &serde_json::Value, known: &std::collections::HashSet<EntityUid>) -> Option<String> {
        match value {
            serde_json::Value::Object(map) => map.iter().find_map(|(key, inner)| {
                let read = [".", "has", "in", "getTag", "hasTag"].contains(&key.as_str());
                let literal = inner.get("left").and_then(|l| l.get("Value")).and_then(|v| v.get("__entity"));
                let absent = literal.and_then(|e| EntityUid::from_json(e.clone()).ok()).filter(|u| !known.contains(u));
                match absent {
                    Some(uid) if read => Some(uid.to_string()),
                    _ => walk(inner, known),
                }
            }),
            serde_json::Value::Array(items) => items.iter().find_map(|v| walk(v, known)),
            _ => None,
        }
    }
    walk(&serde_json::from_str(json).ok()?, known)
}
