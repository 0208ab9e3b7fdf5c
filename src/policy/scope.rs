//! Scope slicing: the policies whose scope can match a request, so Cedar evaluates only those.
//!
//! Cedar evaluates a policy as `principal-scope && action-scope && resource-scope && conditions`,
//! left to right, and a scope test never errors. A policy whose scope does not match therefore can
//! neither be satisfied nor report an error: leaving it out changes neither the decision, nor the
//! determining policies, nor the errors. What it saves is Cedar building and walking that policy's
//! condition for every request — and with per-user grants (thousands of template links of the form
//! `principal == ?principal`) the work per request stays proportional to the grants that apply.
//!
//! Candidates come from an index on the principal scope's entity (for `==`, `in` and `is … in`),
//! looked up with the principal and each of its ancestors; each candidate's whole scope is then
//! checked against the same entities Cedar will see. The sub-`PolicySet` for each distinct set of
//! matching policies is built once and cached (bounded; past the bound the full set is used).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use cedar_policy::{
    ActionConstraint, Entities, EntityTypeName, EntityUid, PolicyId, PolicySet, PrincipalConstraint, ResourceConstraint,
};

/// Distinct policy subsets kept per snapshot.
const MAX_CACHED_SETS: usize = 4096;

/// A principal or resource scope, in one shape for both.
enum Scope {
    Any,
    Eq(EntityUid),
    In(EntityUid),
    Is(EntityTypeName),
    IsIn(EntityTypeName, EntityUid),
}

struct Entry {
    id: PolicyId,
    principal: Scope,
    action: ActionConstraint,
    resource: Scope,
}

pub(crate) struct ScopeIndex {
    entries: Vec<Entry>,
    /// Policies whose principal scope names an entity, by that entity.
    by_principal: HashMap<EntityUid, Vec<u32>>,
    /// Policies whose principal scope names no entity (`principal`, `principal is T`).
    any_principal: Vec<u32>,
    subsets: RwLock<HashMap<Box<[u32]>, Arc<PolicySet>>>,
}

/// The policy set to evaluate a request against.
pub(crate) enum Selected<'a> {
    Full(&'a PolicySet),
    Subset(Arc<PolicySet>),
}

impl Selected<'_> {
    pub fn set(&self) -> &PolicySet {
        match self {
            Selected::Full(set) => set,
            Selected::Subset(set) => set,
        }
    }
}

impl ScopeIndex {
    pub fn build(set: &PolicySet) -> Self {
        let mut index = ScopeIndex {
            entries: Vec::new(),
            by_principal: HashMap::new(),
            any_principal: Vec::new(),
            subsets: RwLock::new(HashMap::new()),
        };
        for (i, policy) in set.policies().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            let principal = match policy.principal_constraint() {
                PrincipalConstraint::Any => Scope::Any,
                PrincipalConstraint::Eq(uid) => Scope::Eq(uid),
                PrincipalConstraint::In(uid) => Scope::In(uid),
                PrincipalConstraint::Is(ty) => Scope::Is(ty),
                PrincipalConstraint::IsIn(ty, uid) => Scope::IsIn(ty, uid),
            };
            let resource = match policy.resource_constraint() {
                ResourceConstraint::Any => Scope::Any,
                ResourceConstraint::Eq(uid) => Scope::Eq(uid),
                ResourceConstraint::In(uid) => Scope::In(uid),
                ResourceConstraint::Is(ty) => Scope::Is(ty),
                ResourceConstraint::IsIn(ty, uid) => Scope::IsIn(ty, uid),
            };
            match &principal {
                Scope::Eq(uid) | Scope::In(uid) | Scope::IsIn(_, uid) => {
                    index.by_principal.entry(uid.clone()).or_default().push(i)
                }
                Scope::Any | Scope::Is(_) => index.any_principal.push(i),
            }
            index.entries.push(Entry {
                id: policy.id().clone(),
                principal,
                action: policy.action_constraint(),
                resource,
            });
        }
        index
    }

    /// The policies of `full` whose scope matches the request, as Cedar would judge it on `entities`.
    pub fn select<'a>(
        &self,
        full: &'a PolicySet,
        principal: &EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
        entities: &Entities,
    ) -> Selected<'a> {
        let principal_ancestors = ancestors(entities, principal);
        let action_ancestors = ancestors(entities, action);
        let resource_ancestors = ancestors(entities, resource);

        let mut matching: Vec<u32> = self.any_principal.clone();
        for key in std::iter::once(principal).chain(principal_ancestors.iter().copied()) {
            if let Some(ids) = self.by_principal.get(key) {
                matching.extend_from_slice(ids);
            }
        }
        matching.sort_unstable();
        matching.dedup();
        matching.retain(|&i| {
            let e = &self.entries[i as usize];
            scope_matches(&e.principal, principal, &principal_ancestors)
                && action_matches(&e.action, action, &action_ancestors)
                && scope_matches(&e.resource, resource, &resource_ancestors)
        });
        if matching.len() == self.entries.len() {
            return Selected::Full(full);
        }
        if let Some(set) = self.subsets.read().ok().and_then(|cache| cache.get(matching.as_slice()).cloned()) {
            return Selected::Subset(set);
        }
        let Some(subset) = self.subset(full, &matching) else {
            return Selected::Full(full);
        };
        let subset = Arc::new(subset);
        if let Ok(mut cache) = self.subsets.write() {
            if cache.len() < MAX_CACHED_SETS {
                cache.insert(matching.into_boxed_slice(), subset.clone());
            }
        }
        Selected::Subset(subset)
    }

    /// A policy set holding the given policies of `full` (links re-linked from their templates).
    fn subset(&self, full: &PolicySet, members: &[u32]) -> Option<PolicySet> {
        let mut set = PolicySet::new();
        for &i in members {
            let id = &self.entries[i as usize].id;
            let policy = full.policy(id)?;
            match policy.template_id() {
                None => set.add(policy.clone()).ok()?,
                Some(template_id) => {
                    if set.template(template_id).is_none() {
                        set.add_template(full.template(template_id)?.clone()).ok()?;
                    }
                    set.link(template_id.clone(), id.clone(), policy.template_links()?).ok()?;
                }
            }
        }
        Some(set)
    }
}

/// Ancestor lists are short: a vector beats hashing them per request.
fn ancestors<'e>(entities: &'e Entities, uid: &EntityUid) -> Vec<&'e EntityUid> {
    entities.ancestors(uid).map(Iterator::collect).unwrap_or_default()
}

/// Cedar's `in` on entities: reflexive, then through the stored transitive ancestors.
fn is_in(uid: &EntityUid, ancestors: &[&EntityUid], target: &EntityUid) -> bool {
    uid == target || ancestors.contains(&target)
}

fn scope_matches(scope: &Scope, uid: &EntityUid, ancestors: &[&EntityUid]) -> bool {
    match scope {
        Scope::Any => true,
        Scope::Eq(target) => uid == target,
        Scope::In(target) => is_in(uid, ancestors, target),
        Scope::Is(ty) => uid.type_name() == ty,
        Scope::IsIn(ty, target) => uid.type_name() == ty && is_in(uid, ancestors, target),
    }
}

fn action_matches(scope: &ActionConstraint, uid: &EntityUid, ancestors: &[&EntityUid]) -> bool {
    match scope {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(target) => uid == target,
        ActionConstraint::In(targets) => targets.iter().any(|t| is_in(uid, ancestors, t)),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use cedar_policy::{Authorizer, Context, Request};

    use super::*;
    use crate::config::ValidationMode;
    use crate::policy::load_dir;

    /// Every principal × action × resource of the example application: the slice answers exactly as
    /// the full set does, and it is smaller for most requests.
    #[test]
    fn slices_decide_exactly_as_the_full_set() {
        let snapshot =
            load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), ValidationMode::Strict).unwrap();
        let uids = |ty: &str| -> Vec<EntityUid> {
            snapshot.entities.iter().map(|e| e.uid()).filter(|u| u.type_name().to_string() == ty).collect()
        };
        let index = ScopeIndex::build(&snapshot.policies);
        let authorizer = Authorizer::new();
        let (mut smaller, mut total) = (0, 0);
        let mut resources = uids("Document");
        resources.push(r#"Document::"missing""#.parse().unwrap());
        let mut principals = uids("User");
        principals.push(r#"User::"missing""#.parse().unwrap());
        for p in &principals {
            for a in uids("Action") {
                for r in &resources {
                    for context in [Context::empty(), Context::from_json_str(r#"{"mfa": true}"#, None).unwrap()] {
                        let request = Request::new(p.clone(), a.clone(), r.clone(), context, None).unwrap();
                        let full = authorizer.is_authorized(&request, &snapshot.policies, &snapshot.entities);
                        let selected = index.select(&snapshot.policies, p, &a, r, &snapshot.entities);
                        let sliced = authorizer.is_authorized(&request, selected.set(), &snapshot.entities);
                        assert_eq!(full.decision(), sliced.decision(), "{p} {a} {r}");
                        let ids = |resp: &cedar_policy::Response| {
                            let mut v: Vec<String> = resp.diagnostics().reason().map(ToString::to_string).collect();
                            v.extend(resp.diagnostics().errors().map(|e| format!("error {e}")));
                            v.sort();
                            v
                        };
                        assert_eq!(ids(&full), ids(&sliced), "{p} {a} {r}");
                        total += 1;
                        smaller +=
                            usize::from(selected.set().policies().count() < snapshot.policies.policies().count());
                    }
                }
            }
        }
        assert!(smaller * 2 > total, "slices were smaller for only {smaller} of {total} requests");
    }
}
