//! Scope slicing: the policies whose scope can match a request, so Cedar evaluates only those.
//!
//! Cedar evaluates a policy as `principal-scope && action-scope && resource-scope && conditions`,
//! left to right, and a scope test never errors. A policy whose scope does not match therefore can
//! neither be satisfied nor report an error: leaving it out changes neither the decision, nor the
//! determining policies, nor the errors. What it saves is Cedar building and walking that policy's
//! condition for every request — and with per-user grants (thousands of template links of the form
//! `principal == ?principal`) the work per request stays proportional to the grants that apply.
//!
//! A matching policy without `when`/`unless` conditions (a role grant, every link of a scope-only
//! template) is satisfied by its scope alone and cannot error, so it needs no evaluation at all: it is
//! reported as satisfied, and only the matching policies with conditions are evaluated
//! (`authz::combine` merges the two as Cedar does).
//!
//! Each policy with conditions keeps the expression to evaluate for it, built here once (Cedar's
//! authorizer builds `scope && conditions` again for every policy on every request, and drops it).
//! Its scope has already been matched, by the same rules on the same entities, so the expression is
//! `true && conditions`: the same value, the same type error for a non-boolean condition, the same
//! error at the same source location as Cedar's, without testing the scope a second time. (A policy
//! whose conditions Cedar does not expose keeps Cedar's whole condition.)
//!
//! Candidates come from an index on the principal scope's entity (for `==`, `in` and `is … in`),
//! looked up with the principal and each of its ancestors; each candidate's whole scope is then
//! checked against the same entities Cedar will see. The slice for each distinct set of matching
//! policies is built once and cached, in a bounded cache that evicts the least useful slices (moka's
//! TinyLFU), so that many distinct match sets cost a rebuild only on a miss, never on every request.

use std::collections::HashMap;
use std::sync::Arc;

use cedar_policy::{
    ActionConstraint, Effect, Entities, EntityTypeName, EntityUid, Policy, PolicySet, PrincipalConstraint,
    ResourceConstraint,
};
use cedar_policy_core::ast;

/// Slices kept per snapshot, weighed by the policies they hold.
const MAX_CACHED_POLICY_REFS: u64 = 1 << 18;

/// A cached slice weighs the policies it was matched from (moka passes the key as stored).
#[allow(clippy::borrowed_box)]
fn weigh(matching: &Box<[u32]>, _: &Arc<Slice>) -> u32 {
    u32::try_from(matching.len()).unwrap_or(u32::MAX).max(1)
}

/// A principal or resource scope, in one shape for both.
enum Scope {
    Any,
    Eq(EntityUid),
    In(EntityUid),
    Is(EntityTypeName),
    IsIn(EntityTypeName, EntityUid),
}

struct Entry {
    /// The raw id, as Cedar reports it (`Display` would escape it).
    id: String,
    principal: Scope,
    action: ActionConstraint,
    resource: Scope,
    effect: Effect,
    /// `None` for a policy without conditions.
    condition: Option<Arc<Condition>>,
}

/// What remains to evaluate of a policy whose scope matched, and the link's slot values.
pub(crate) struct Condition {
    /// The raw id.
    pub id: String,
    pub effect: Effect,
    pub expr: ast::Expr,
    pub slots: ast::SlotEnv,
}

pub(crate) struct ScopeIndex {
    entries: Vec<Entry>,
    /// Policies whose principal scope names an entity, by that entity.
    by_principal: HashMap<EntityUid, Vec<u32>>,
    /// Policies whose principal scope names no entity (`principal`, `principal is T`).
    any_principal: Vec<u32>,
    /// Every policy, for a request that matches them all.
    all: Arc<Slice>,
    slices: moka::sync::Cache<Box<[u32]>, Arc<Slice>>,
}

/// The policies that can apply to one request.
#[derive(Default)]
pub(crate) struct Slice {
    /// Matching policies with conditions, in the policy set's order: these are evaluated.
    pub conditional: Vec<Arc<Condition>>,
    /// Ids of the matching policies without conditions, satisfied by their scope alone.
    pub permits: Vec<String>,
    pub forbids: Vec<String>,
}

#[cfg(test)]
impl Slice {
    /// How many policies it holds.
    pub fn len(&self) -> usize {
        self.conditional.len() + self.permits.len() + self.forbids.len()
    }
}

/// The resources a listing can find allowed (see `ScopeIndex::resource_targets`).
#[derive(Debug)]
pub enum Targets {
    Any,
    /// Each entity, and (when `true`) everything under it.
    Only(Vec<(EntityUid, bool)>),
}

impl ScopeIndex {
    pub fn build(set: &PolicySet) -> Self {
        let mut index = ScopeIndex {
            entries: Vec::new(),
            by_principal: HashMap::new(),
            any_principal: Vec::new(),
            all: Arc::default(),
            slices: moka::sync::Cache::builder().max_capacity(MAX_CACHED_POLICY_REFS).weigher(weigh).build(),
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
            let id = AsRef::<str>::as_ref(policy.id()).to_owned();
            let condition = (!is_unconditional(set, policy)).then(|| {
                let ast: &ast::Policy = policy.as_ref();
                let expr = match ast.non_scope_constraints() {
                    // As the innermost `&&` of `Policy::condition()`, with the scope's part true.
                    Some(conditions) => ast::Expr::and(ast::Expr::val(true), conditions.clone())
                        .with_maybe_source_loc(ast.loc().cloned()),
                    None => ast.condition(),
                };
                Arc::new(Condition { id: id.clone(), effect: policy.effect(), expr, slots: ast.env().clone() })
            });
            let action = policy.action_constraint();
            index.entries.push(Entry { id, principal, action, resource, effect: policy.effect(), condition });
        }
        let every: Vec<u32> = (0..index.entries.len()).map(|i| u32::try_from(i).unwrap_or(u32::MAX)).collect();
        index.all = Arc::new(index.slice(&every));
        index
    }

    /// The policies whose scope matches the request, as Cedar would judge it on `entities`.
    pub fn select(
        &self,
        principal: &EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
        entities: &Entities,
    ) -> Arc<Slice> {
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
            return self.all.clone();
        }
        if let Some(slice) = self.slices.get(matching.as_slice()) {
            return slice;
        }
        let slice = Arc::new(self.slice(&matching));
        self.slices.insert(matching.into_boxed_slice(), slice.clone());
        slice
    }

    /// Which entities of type `ty` any permit that can apply to `principal` and `action` admits as
    /// its resource: every one (`Targets::Any`), or only some named entities and what is under them.
    /// Exact for pruning a listing: a resource no matching permit's scope admits cannot be allowed.
    pub fn resource_targets(
        &self,
        principal: &EntityUid,
        action: &EntityUid,
        ty: &EntityTypeName,
        entities: &Entities,
    ) -> Targets {
        let principal_ancestors = ancestors(entities, principal);
        let action_ancestors = ancestors(entities, action);
        let mut only = Vec::new();
        let permits = self.entries.iter().filter(|e| e.effect == Effect::Permit);
        for entry in permits {
            if !scope_matches(&entry.principal, principal, &principal_ancestors)
                || !action_matches(&entry.action, action, &action_ancestors)
            {
                continue;
            }
            match &entry.resource {
                Scope::Any => return Targets::Any,
                Scope::Is(t) if t == ty => return Targets::Any,
                Scope::Eq(x) if x.type_name() == ty => only.push((x.clone(), false)),
                Scope::In(x) => only.push((x.clone(), true)),
                Scope::IsIn(t, x) if t == ty => only.push((x.clone(), true)),
                // A scope no entity of `ty` can match.
                Scope::Is(_) | Scope::Eq(_) | Scope::IsIn(..) => {}
            }
        }
        Targets::Only(only)
    }

    /// The given policies: those with conditions by their condition, those without by id and effect.
    fn slice(&self, members: &[u32]) -> Slice {
        let mut slice = Slice::default();
        for &i in members {
            let entry = &self.entries[i as usize];
            match (&entry.condition, entry.effect) {
                (Some(condition), _) => slice.conditional.push(condition.clone()),
                (None, Effect::Permit) => slice.permits.push(entry.id.clone()),
                (None, Effect::Forbid) => slice.forbids.push(entry.id.clone()),
            }
        }
        slice
    }
}

/// Whether a policy has no `when`/`unless` clauses (a link: whether its template has none).
fn is_unconditional(set: &PolicySet, policy: &Policy) -> bool {
    let json = match policy.template_id().and_then(|t| set.template(t)) {
        Some(template) => template.to_json(),
        None => policy.to_json(),
    };
    json.ok().and_then(|j| j.get("conditions").and_then(|c| c.as_array()).map(Vec::is_empty)).unwrap_or(false)
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
