//! One loaded, validated policy set with its schema and entities: what a request decides against.
//!
//! Everything a request would otherwise redo is computed here once per reload: parsed entity type
//! names, the schema's actions, and which entities each entity's attributes refer to (so a request
//! carrying its own entities can be decided on a small slice of the store instead of a copy of it).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::SystemTime;

use cedar_policy::{Authorizer, Entities, EntityId, EntityTypeName, EntityUid, PolicySet, Schema};

use super::ValidationMode;
use super::context::RequestPlans;
use super::scope::{ScopeIndex, Slice, Targets};

/// What one policy file contributed to a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileStat {
    pub policies: usize,
    pub forbids: usize,
}

pub struct Snapshot {
    /// A digest of the files and mode: equal content gives an equal version on every replica.
    pub version: String,
    pub loaded_at: SystemTime,
    pub mode: ValidationMode,
    pub policies: PolicySet,
    pub schema: Option<Schema>,
    pub entities: Entities,
    pub policy_count: usize,
    pub template_count: usize,
    /// The Envoy ext_authz mapping (`ext_authz.toml`), when the directory has one.
    pub ext_authz: Option<std::sync::Arc<crate::envoy::Mapping>>,
    /// AuthZEN's names for Cedar types (`authzen.toml`; the same names without it).
    pub authzen: std::sync::Arc<super::AuthzenNames>,
    /// How SCIM users and groups become Cedar entities (`scim.toml`; the defaults without it).
    pub scim: std::sync::Arc<super::ScimMapping>,
    /// What an erroring `forbid` does (`--forbid-errors`; set by the `PolicyStore`).
    pub forbid_errors: super::ForbidErrors,
    /// The file (relative to the directory) each policy and template came from, by id.
    pub origins: std::collections::HashMap<String, String>,
    /// Per policy file: what it holds, to notice an edit that empties a file or drops its forbids.
    pub files: std::collections::BTreeMap<String, FileStat>,
    pub(crate) authorizer: Authorizer,
    /// Unique per snapshot in this process: a cheap key for what is derived from it.
    pub(crate) generation: u64,
    pub(crate) index: EntityIndex,
    pub(crate) scope: ScopeIndex,
    /// Per schema action, how a request for it is built without Cedar's generic typed parse.
    pub(crate) plans: RequestPlans,
}

/// Per-snapshot lookups that keep parsing and graph walks off the request path.
#[derive(Default)]
pub(crate) struct EntityIndex {
    /// Entity uids that each stored entity's attributes and tags mention.
    pub refs: HashMap<EntityUid, Vec<EntityUid>>,
    /// Entity uids written in the conditions of policies and templates.
    pub policy_literals: Vec<EntityUid>,
    /// Parsed entity type names by their text.
    pub types: HashMap<String, EntityTypeName>,
    /// Actions the schema declares (empty without a schema).
    pub schema_actions: HashSet<EntityUid>,
    /// Every uid the store or the policies mention: stored entities, their ancestors, what their
    /// attributes and tags refer to, and every policy literal. A request may not define any of them,
    /// or it could give a stored entity new ancestors or attributes.
    pub mentioned: HashSet<EntityUid>,
    /// An upper bound on how many attribute or tag accesses any policy chains (`principal.manager.team`
    /// is 2): entities further than this from the request, by attribute references, cannot be read by
    /// any policy, so a decision on provisioned entities need not load them.
    pub deref_depth: usize,
}

impl Snapshot {
    /// The actions a principal might be allowed: the schema's, or without a schema those the policy
    /// and template scopes and the entity files name. In uid order.
    pub fn candidate_actions(&self) -> Vec<EntityUid> {
        let mut actions: Vec<EntityUid> = if self.schema.is_some() {
            self.index.schema_actions.iter().cloned().collect()
        } else {
            let scoped = self.policies.policies().map(|p| p.action_constraint());
            let templated = self.policies.templates().map(|t| t.action_constraint());
            let mut named: Vec<EntityUid> = scoped
                .chain(templated)
                .flat_map(|c| match c {
                    cedar_policy::ActionConstraint::Eq(uid) => vec![uid],
                    cedar_policy::ActionConstraint::In(uids) => uids,
                    cedar_policy::ActionConstraint::Any => Vec::new(),
                })
                .collect();
            let is_action = |uid: &EntityUid| uid.type_name().basename() == "Action";
            named.extend(self.entities.iter().map(cedar_policy::Entity::uid).filter(is_action));
            named
        };
        actions.sort_by_key(ToString::to_string);
        actions.dedup();
        actions
    }

    pub(crate) fn new(
        version: String,
        loaded_at: SystemTime,
        mode: ValidationMode,
        policies: PolicySet,
        schema: Option<Schema>,
        entities: Entities,
    ) -> Result<Self, String> {
        let index = EntityIndex::build(&policies, schema.as_ref(), &entities)?;
        let scope = ScopeIndex::build(&policies);
        let plans = schema.as_ref().map(|s| RequestPlans::build(s, &index.schema_actions)).unwrap_or_default();
        Ok(Snapshot {
            version,
            loaded_at,
            mode,
            policy_count: policies.policies().count(),
            template_count: policies.templates().count(),
            ext_authz: None,
            authzen: Default::default(),
            scim: Default::default(),
            forbid_errors: Default::default(),
            origins: Default::default(),
            files: Default::default(),
            policies,
            schema,
            entities,
            authorizer: Authorizer::new(),
            generation: {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
            index,
            scope,
            plans,
        })
    }

    /// The policies whose scope matches the request (see `scope.rs`): exact, and cheaper to evaluate.
    pub(crate) fn policies_for(
        &self,
        principal: &EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
        entities: &Entities,
    ) -> std::sync::Arc<Slice> {
        self.scope.select(principal, action, resource, entities)
    }

    /// What the permits that can apply to `principal` and `action` admit as resources of `ty`.
    pub fn resource_targets(
        &self,
        principal: &EntityUid,
        action: &EntityUid,
        ty: &cedar_policy::EntityTypeName,
        entities: &Entities,
    ) -> Targets {
        self.scope.resource_targets(principal, action, ty, entities)
    }

    /// The schema requests are validated against: none in `off` mode.
    pub fn request_schema(&self) -> Option<&Schema> {
        match self.mode {
            ValidationMode::Off => None,
            ValidationMode::Strict | ValidationMode::Permissive => self.schema.as_ref(),
        }
    }
}

impl EntityIndex {
    fn build(policies: &PolicySet, schema: Option<&Schema>, entities: &Entities) -> Result<Self, String> {
        let mut index = EntityIndex::default();
        for entity in entities.iter() {
            let json = entity.to_json_value().map_err(|e| format!("entity `{}`: {e}", entity.uid()))?;
            let mut refs = Vec::new();
            for key in ["attrs", "tags"] {
                if let Some(value) = json.get(key) {
                    collect_uids(value, &mut refs);
                }
            }
            let uid = entity.uid();
            index.remember_type(uid.type_name());
            index.mentioned.extend(refs.iter().cloned());
            index.mentioned.extend(entities.ancestors(&uid).into_iter().flatten().cloned());
            index.mentioned.insert(uid.clone());
            if !refs.is_empty() {
                index.refs.insert(uid, refs);
            }
        }
        let json = policies.clone().to_json().map_err(|e| format!("policy set: {e}"))?;
        let mut all_literals = Vec::new();
        collect_uids(&json, &mut all_literals);
        index.mentioned.extend(all_literals);
        index.deref_depth = access_depth(&json);
        // Only literals in conditions can be dereferenced or be the left side of `in`; those in a scope
        // (`principal in Group::"x"`, a link's slot values) need no entity data of their own.
        for kind in ["staticPolicies", "templates"] {
            for policy in json.get(kind).and_then(|v| v.as_object()).into_iter().flat_map(|m| m.values()) {
                if let Some(conditions) = policy.get("conditions") {
                    collect_uids(conditions, &mut index.policy_literals);
                }
            }
        }
        index.policy_literals.sort_by_key(|uid| uid.to_string());
        index.policy_literals.dedup();
        if let Some(schema) = schema {
            for ty in schema.entity_types() {
                index.remember_type(ty);
            }
            for action in schema.actions() {
                index.remember_type(action.type_name());
                index.schema_actions.insert(action.clone());
            }
        }
        for uid in index.policy_literals.clone() {
            index.remember_type(uid.type_name());
        }
        Ok(index)
    }

    fn remember_type(&mut self, ty: &EntityTypeName) {
        self.types.entry(ty.to_string()).or_insert_with(|| ty.clone());
    }

    /// The type name `text` names, parsed once per snapshot for every type the snapshot knows.
    pub fn type_name(&self, text: &str) -> Result<EntityTypeName, String> {
        match self.types.get(text) {
            Some(ty) => Ok(ty.clone()),
            None => EntityTypeName::from_str(text).map_err(|e| e.to_string()),
        }
    }
}

/// The deepest nesting of attribute and tag operators in a policy set's JSON form. Counting every
/// such operator on a path over-approximates the entity hops (record accesses count too), which only
/// loads more than needed, never less.
fn access_depth(value: &serde_json::Value) -> usize {
    const ACCESS: [&str; 4] = [".", "has", "getTag", "hasTag"];
    match value {
        serde_json::Value::Array(items) => items.iter().map(access_depth).max().unwrap_or(0),
        serde_json::Value::Object(map) => {
            map.iter().map(|(k, v)| access_depth(v) + usize::from(ACCESS.contains(&k.as_str()))).max().unwrap_or(0)
        }
        _ => 0,
    }
}

/// Adds every entity uid that appears in a Cedar JSON value: `{"__entity": {...}}` escapes and bare
/// `{"type": …, "id": …}` objects (schema-directed JSON may omit the escape). Over-collecting a record
/// that merely looks like a uid is harmless: it only widens a slice.
pub(crate) fn collect_uids(value: &serde_json::Value, out: &mut Vec<EntityUid>) {
    match value {
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_uids(v, out)),
        serde_json::Value::Object(map) => {
            if let Some(inner) = map.get("__entity") {
                collect_uids(inner, out);
                return;
            }
            if let (Some(ty), Some(id)) =
                (map.get("type").and_then(|v| v.as_str()), map.get("id").and_then(|v| v.as_str()))
                && let Ok(ty) = EntityTypeName::from_str(ty)
            {
                out.push(EntityUid::from_type_name_and_id(ty, EntityId::new(id)));
            }
            map.values().for_each(|v| collect_uids(v, out));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_escaped_and_bare_uids() {
        let json = serde_json::json!({
            "owner": {"__entity": {"type": "User", "id": "alice"}},
            "team": {"type": "App::Group", "id": "eng"},
            "list": [{"__entity": {"type": "User", "id": "bob"}}, 3, "x"],
            "not": {"type": "no spaces allowed", "id": "x"}
        });
        let mut out = Vec::new();
        collect_uids(&json, &mut out);
        let mut names: Vec<String> = out.iter().map(ToString::to_string).collect();
        names.sort();
        assert_eq!(names, [r#"App::Group::"eng""#, r#"User::"alice""#, r#"User::"bob""#]);
    }

    #[test]
    fn access_depth_counts_chained_attribute_and_tag_accesses() {
        let depth = |src: &str| {
            let policies: PolicySet = src.parse().unwrap();
            access_depth(&policies.to_json().unwrap())
        };
        assert_eq!(depth("permit (principal, action, resource);"), 0);
        assert_eq!(depth("permit (principal, action, resource) when { principal.admin };"), 1);
        assert_eq!(depth("permit (principal, action, resource) when { resource.owner.team == principal.team };"), 2);
        assert_eq!(depth(r#"permit (principal, action, resource) when { principal.getTag("m").boss has name };"#), 3);
        assert_eq!(
            depth(
                "permit (principal, action, resource) when { principal.a.b.c.d }; permit (principal, action, resource);"
            ),
            4
        );
    }
}
