//! The decision: a check request and a snapshot in, Cedar's answer out. Pure: no I/O, no protobuf.
//!
//! Every front door builds its Cedar request through [`decide`], so they cannot drift apart.
//!
//! Architecture invariants:
//! - Nothing here parses, clones or rebuilds what a snapshot already holds: a request without its own
//!   entities is decided against the stored `Entities` by reference.
//! - Only the policies whose scope matches the request are evaluated (`policy/scope.rs`); the others
//!   could neither apply nor error, so answers are unchanged. Each is evaluated by Cedar's evaluator
//!   on what remains of Cedar's condition once its scope has matched (`true && conditions`, built at
//!   load); the answer follows Cedar's rule (`combine`). Should an evaluation give a residual, the
//!   whole request goes to Cedar's authorizer on the whole policy set instead.
//! - A request carrying entities is decided on a slice: the request's entities plus every stored
//!   entity reachable from the principal, action, resource, context, the policies' entity literals and,
//!   transitively, the attributes and tags of what is included. Stored entities keep their transitive
//!   ancestors, so the slice answers exactly as the whole store would.
//! - A request-scoped entity can add to the store, never change what the store says: it may not be a
//!   stored entity (a caller cannot clear a stored `suspended` flag by sending its own copy of the
//!   user), nor anything the store or the policies refer to (it cannot give a stored user's undefined
//!   group new parents, or define the owner a stored document names).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cedar_policy::{Context, Entities, Entity, EntityId, EntityUid, Request, RequestValidationError, Response, Schema};
use cedar_policy_core::ast::{self, Literal, PartialValue, Value, ValueKind};
use cedar_policy_core::entities::{self, Dereference, NoEntitiesSchema, TCComputation};
use cedar_policy_core::evaluator::Evaluator;
use cedar_policy_core::extensions::Extensions;

use crate::error::RequestError;
use crate::policy::ForbidErrors;
use crate::policy::{Condition, Snapshot, collect_uids};
pub use crate::policy::{ContextFields, Field};

/// An entity uid as a client sent it: type text (possibly namespaced) and id.
#[derive(Debug, Clone, Copy)]
pub struct UidRef<'a> {
    pub ty: &'a str,
    pub id: &'a str,
}

/// One check, borrowed from whichever front door received it.
#[derive(Debug, Clone, Copy)]
pub struct CheckInput<'a> {
    pub principal: Option<UidRef<'a>>,
    pub action: Option<UidRef<'a>>,
    pub resource: Option<UidRef<'a>>,
    /// The Cedar context.
    pub context: ContextIn<'a>,
    /// Cedar entity JSON array; empty means none.
    pub entities_json: &'a str,
}

/// A check's Cedar context as its front door has it.
#[derive(Debug, Clone, Copy)]
pub enum ContextIn<'a> {
    /// JSON text (gRPC, the CLI); empty means `{}`.
    Json(&'a str),
    /// A JSON value the front door built or already parsed (AuthZEN's body, a test's context): it
    /// is not written out as text to be parsed again.
    Value(&'a serde_json::Value),
    /// Fields the front door computed (ext_authz's mapping), converted by the action's plan without
    /// JSON; decided exactly as their JSON (`ContextFields::to_json`) would be.
    Fields(&'a ContextFields),
}

impl<'a> ContextIn<'a> {
    pub const EMPTY: ContextIn<'static> = ContextIn::Json("");

    /// As JSON text, for what keeps the request (a replayable log record, the shadow queue).
    pub fn text(&self) -> Cow<'a, str> {
        match self {
            ContextIn::Json(text) => Cow::Borrowed(text),
            ContextIn::Value(value) => Cow::Owned(value.to_string()),
            ContextIn::Fields(fields) => Cow::Owned(fields.to_json().to_string()),
        }
    }

    /// The value, parsed once for the whole decision; None for an empty context. A text that is not
    /// strict JSON is refused in the words of Cedar's parser, as it always was.
    fn parsed(
        &self,
        snapshot: &Snapshot,
        action: &EntityUid,
    ) -> Result<Option<Cow<'a, serde_json::Value>>, RequestError> {
        match self {
            ContextIn::Json(text) if text.trim().is_empty() => Ok(None),
            ContextIn::Json(text) => match crate::json::parse_strict(text) {
                Ok(value) => Ok(Some(Cow::Owned(value))),
                Err(e) => Err(parse_context(snapshot, text, action)
                    .err()
                    .unwrap_or_else(|| RequestError::invalid("context_json", e))),
            },
            ContextIn::Value(value) => Ok(Some(Cow::Borrowed(value))),
            ContextIn::Fields(fields) => Ok(Some(Cow::Owned(fields.to_json()))),
        }
    }
}

/// Bounds on what one check may ask of the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most request-scoped entities one check may carry. Cedar computes ancestors recursively and
    /// stores them quadratically, so an unbounded chain of entities could exhaust the stack or memory.
    pub max_request_entities: usize,
    /// Most candidate entities one listing call (ListResources, ListPrincipals) examines before it
    /// answers with what it found and a page token to go on from.
    pub max_list_candidates: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_request_entities: 100, max_list_candidates: 10_000 }
    }
}

/// Cedar's answer, in the terms the API reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub allow: bool,
    /// Determining policy ids, sorted.
    pub determining: Vec<String>,
    pub errors: Vec<PolicyFailure>,
    /// The request's uids, for the decision log.
    pub principal: EntityUid,
    pub action: EntityUid,
    pub resource: EntityUid,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFailure {
    pub policy_id: String,
    pub message: String,
}

/// Decides one check on `snapshot`, with the entities of its files.
pub fn decide(snapshot: &Snapshot, input: &CheckInput<'_>, limits: &Limits) -> Result<Outcome, RequestError> {
    let prepared = prepare(snapshot, input, limits)?;
    if prepared.own.is_empty() {
        return Ok(decide_on(snapshot, prepared, &snapshot.entities));
    }
    let slice = file_slice(snapshot, &prepared)?;
    Ok(decide_on(snapshot, prepared, &slice))
}

/// A check parsed and validated, waiting for its entities.
pub struct Prepared {
    request: Request,
    pub(crate) uids: [EntityUid; 3],
    /// Request-scoped entities, validated, with their position in `entities_json`.
    pub(crate) own: Vec<(usize, Entity)>,
    /// Uids the request-scoped entities' attributes, tags and parents mention.
    pub(crate) own_mentions: Vec<EntityUid>,
    /// Uids the context mentions: entities the evaluation may dereference.
    pub(crate) context_uids: Vec<EntityUid>,
}

impl Prepared {
    /// The Cedar request (its context, for partial evaluation).
    pub(crate) fn request(&self) -> &Request {
        &self.request
    }
}

/// Parses and validates a check: uids, context, request-scoped entities.
pub fn prepare(snapshot: &Snapshot, input: &CheckInput<'_>, limits: &Limits) -> Result<Prepared, RequestError> {
    let principal = parse_uid(snapshot, input.principal, "principal")?;
    let action = parse_uid(snapshot, input.action, "action")?;
    let resource = parse_uid(snapshot, input.resource, "resource")?;
    let schema = snapshot.request_schema();
    if schema.is_some() && !snapshot.index.schema_actions.contains(&action) {
        return Err(RequestError::schema("action", format!("`{action}` is not an action the schema declares")));
    }
    let uids = [principal, action, resource];
    let (request, context_uids) = match input.context {
        ContextIn::Fields(fields) if schema.is_some() => {
            match snapshot.plans.request_fields(&uids[0], &uids[1], &uids[2], fields) {
                Some(request) => (request, fields_uids(fields)),
                None => request_of(snapshot, &input.context, &uids)?,
            }
        }
        _ => request_of(snapshot, &input.context, &uids)?,
    };
    let (own, own_mentions) = request_entities(snapshot, input, limits)?;
    Ok(Prepared { request, uids, own, own_mentions, context_uids })
}

/// The uids the fields' JSON names, read as from any context (a record of strings with `type` and
/// `id`): written out only when it may name one.
fn fields_uids(fields: &ContextFields) -> Vec<EntityUid> {
    let mut uids = Vec::new();
    if fields.may_name_entities() {
        collect_uids(&fields.to_json(), &mut uids);
    }
    uids
}

/// The Cedar request for `context` as JSON (by the action's plan, else Cedar's path), and the uids
/// the context names.
fn request_of(
    snapshot: &Snapshot,
    context: &ContextIn<'_>,
    [principal, action, resource]: &[EntityUid; 3],
) -> Result<(Request, Vec<EntityUid>), RequestError> {
    let schema = snapshot.request_schema();
    let context = context.parsed(snapshot, action)?;
    let planned = schema.and_then(|_| snapshot.plans.request(principal, action, resource, context.as_deref()));
    let mut context_uids = Vec::new();
    if let Some(value) = &context {
        collect_uids(value, &mut context_uids);
    }
    let request = match planned {
        Some(request) => request,
        None => {
            let context = cedar_context(snapshot, context, action)?;
            Request::new(principal.clone(), action.clone(), resource.clone(), context, schema)
                .map_err(|e| RequestError::schema(rejected_field(&e), &e))?
        }
    };
    Ok((request, context_uids))
}

/// Decides a prepared check on `entities`, which must hold everything the evaluation can reach.
pub fn decide_on(snapshot: &Snapshot, prepared: Prepared, entities: &Entities) -> Outcome {
    let [principal, action, resource] = prepared.uids;
    let Verdict { allow, determining, errors } =
        evaluate(snapshot, &prepared.request, [&principal, &action, &resource], entities);
    Outcome { allow, determining, errors, principal, action, resource }
}

/// Cedar's answer in the API's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub allow: bool,
    /// Sorted.
    pub determining: Vec<String>,
    pub errors: Vec<PolicyFailure>,
}

/// Cedar's answer to `request` on `entities`, evaluating only the policies that can apply.
pub(crate) fn evaluate(snapshot: &Snapshot, request: &Request, uids: [&EntityUid; 3], entities: &Entities) -> Verdict {
    let [principal, action, resource] = uids;
    let slice = snapshot.policies_for(principal, action, resource, entities);
    let verdict = match satisfied(&slice.conditional, request, entities) {
        Some(evaluated) => combine(evaluated, &slice.permits, &slice.forbids),
        // A residual (Cedar's `unknown`): Cedar's authorizer says what that means.
        None => verdict(snapshot.authorizer.is_authorized(request, &snapshot.policies, entities)),
    };
    if snapshot.forbid_errors == ForbidErrors::Deny { forbid_errors_deny(snapshot, verdict) } else { verdict }
}

/// What evaluating some policies found, in their order.
#[derive(Debug, Default, PartialEq, Eq)]
struct Satisfied {
    permits: Vec<String>,
    forbids: Vec<String>,
    errors: Vec<PolicyFailure>,
}

/// Evaluates each condition with Cedar's evaluator (`partial_interpret`; the `&&` the expression
/// starts with checks for a boolean, as in Cedar's whole condition), or `None` if one gives anything
/// but a boolean or an error: a residual, which only Cedar's `unknown` extension makes.
fn satisfied(conditions: &[Arc<Condition>], request: &Request, entities: &Entities) -> Option<Satisfied> {
    let mut found = Satisfied::default();
    if conditions.is_empty() {
        return Some(found);
    }
    let evaluator = Evaluator::new(request.as_ref().clone(), entities.as_ref(), Extensions::all_available());
    for c in conditions {
        match evaluator.partial_interpret(&c.expr, &c.slots) {
            Ok(PartialValue::Value(Value { value: ValueKind::Lit(Literal::Bool(holds)), .. })) => {
                let ids =
                    if c.effect == cedar_policy::Effect::Permit { &mut found.permits } else { &mut found.forbids };
                if holds {
                    ids.push(c.id.clone());
                }
            }
            Ok(_) => return None,
            Err(e) => found.errors.push(PolicyFailure { policy_id: c.id.clone(), message: e.to_string() }),
        }
    }
    Some(found)
}

/// `--forbid-errors deny`: a forbid whose evaluation errored denies, as if its condition held, and
/// is among the determining policies (its error stays listed). Cedar itself skips it.
fn forbid_errors_deny(snapshot: &Snapshot, verdict: Verdict) -> Verdict {
    let is_forbid = |id: &str| {
        snapshot
            .policies
            .policy(&cedar_policy::PolicyId::new(id))
            .is_some_and(|p| p.effect() == cedar_policy::Effect::Forbid)
    };
    let erred: Vec<String> =
        verdict.errors.iter().filter(|e| is_forbid(&e.policy_id)).map(|e| e.policy_id.clone()).collect();
    if erred.is_empty() {
        return verdict;
    }
    let mut determining = if verdict.allow { erred } else { [verdict.determining, erred].concat() };
    determining.sort_unstable();
    determining.dedup();
    Verdict { allow: false, determining, errors: verdict.errors }
}

/// Merges the evaluated policies with the satisfied unconditional ones, by Cedar's rule: any
/// satisfied forbid denies and the satisfied forbids are the reasons; otherwise any satisfied permit
/// allows and the satisfied permits are the reasons; otherwise deny, no reasons. Errors are skipped.
fn combine(evaluated: Satisfied, permits: &[String], forbids: &[String]) -> Verdict {
    let Satisfied { permits: evaluated_permits, forbids: evaluated_forbids, errors } = evaluated;
    let (allow, mut determining) = if !forbids.is_empty() || !evaluated_forbids.is_empty() {
        (false, [forbids, &evaluated_forbids].concat())
    } else if !permits.is_empty() || !evaluated_permits.is_empty() {
        (true, [permits, &evaluated_permits].concat())
    } else {
        (false, Vec::new())
    };
    determining.sort_unstable();
    Verdict { allow, determining, errors }
}

/// Parses a uid a client sent, naming `field` if it is missing or malformed.
pub fn parse_uid(snapshot: &Snapshot, uid: Option<UidRef<'_>>, field: &str) -> Result<EntityUid, RequestError> {
    let uid = uid.ok_or_else(|| RequestError::missing(field))?;
    if uid.ty.is_empty() {
        return Err(RequestError::missing(&format!("{field}.type")));
    }
    let ty = snapshot.index.type_name(uid.ty).map_err(|e| {
        RequestError::invalid(&format!("{field}.type"), format!("`{}` is not an entity type name: {e}", uid.ty))
    })?;
    Ok(EntityUid::from_type_name_and_id(ty, EntityId::new(uid.id)))
}

/// The schema's context type for `action`, when the schema declares the action: schema-typed values
/// (an `ipaddr` given as a plain string) convert as Cedar allows.
fn context_schema<'s>(snapshot: &'s Snapshot, action: &'s EntityUid) -> Option<(&'s Schema, &'s EntityUid)> {
    snapshot.schema.as_ref().filter(|_| snapshot.index.schema_actions.contains(action)).map(|s| (s, action))
}

/// Cedar's own parse of a context the plan did not take.
fn cedar_context(
    snapshot: &Snapshot,
    value: Option<Cow<'_, serde_json::Value>>,
    action: &EntityUid,
) -> Result<Context, RequestError> {
    let Some(value) = value else { return Ok(Context::empty()) };
    Context::from_json_value(value.into_owned(), context_schema(snapshot, action))
        .map_err(|e| RequestError::invalid("context_json", &e))
}

/// Cedar's parse of context text, for the words of its refusal.
fn parse_context(snapshot: &Snapshot, json: &str, action: &EntityUid) -> Result<Context, RequestError> {
    crate::json::refuse_duplicate_keys(json).map_err(|e| RequestError::invalid("context_json", e))?;
    Context::from_json_str(json, context_schema(snapshot, action))
        .map_err(|e| RequestError::invalid("context_json", &e))
}

fn rejected_field(err: &RequestValidationError) -> &'static str {
    match err {
        RequestValidationError::UndeclaredAction(_) | RequestValidationError::ExternalAction(_) => "action",
        RequestValidationError::UndeclaredPrincipalType(_) | RequestValidationError::InvalidPrincipalType(_) => {
            "principal.type"
        }
        RequestValidationError::UndeclaredResourceType(_) | RequestValidationError::InvalidResourceType(_) => {
            "resource.type"
        }
        RequestValidationError::InvalidContext(_) | RequestValidationError::TypeOfContext(_) => "context_json",
        _ => "request",
    }
}

/// The request-scoped entities, validated (see the module docs), and the uids they mention.
#[allow(clippy::type_complexity)]
fn request_entities(
    snapshot: &Snapshot,
    input: &CheckInput<'_>,
    limits: &Limits,
) -> Result<(Vec<(usize, Entity)>, Vec<EntityUid>), RequestError> {
    const FIELD: &str = "entities_json";
    if input.entities_json.trim().is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let json = crate::json::parse_strict(input.entities_json).map_err(|e| RequestError::invalid(FIELD, e))?;
    let items = json.as_array().ok_or_else(|| RequestError::invalid(FIELD, "expected a JSON array of entities"))?;
    let mut own: HashSet<EntityUid> = HashSet::new();
    let mut parents_of: HashMap<EntityUid, Vec<EntityUid>> = HashMap::new();
    let mut entities = Vec::with_capacity(items.len());
    let mut mentions = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = || format!("{FIELD}[{i}]");
        // Cedar parses request entities against the schema in every validation mode; so does the plan.
        let entity = match snapshot.plans.entity(item) {
            Some((entity, named)) => {
                mentions.extend(named);
                entity
            }
            None => {
                // Its attributes may point into the store, and its parents' ancestors must reach the closure.
                for key in ["attrs", "tags", "parents"] {
                    if let Some(value) = item.get(key) {
                        collect_uids(value, &mut mentions);
                    }
                }
                Entity::from_json_value(item.clone(), snapshot.schema.as_ref())
                    .map_err(|e| RequestError::invalid(&field(), &e))?
            }
        };
        if items.len() > limits.max_request_entities {
            return Err(RequestError::TooMany {
                field: FIELD.into(),
                len: items.len(),
                limit: limits.max_request_entities,
            });
        }
        let uid = entity.uid();
        if snapshot.entities.get(&uid).is_some() {
            return Err(RequestError::invalid(
                &field(),
                format!("`{uid}` is a stored entity; a request cannot redefine it"),
            ));
        }
        if uid.type_name().basename() == "Action" {
            return Err(RequestError::invalid(
                &field(),
                format!("`{uid}` is an action; a request cannot define actions"),
            ));
        }
        if snapshot.index.mentioned.contains(&uid) {
            return Err(RequestError::invalid(
                &field(),
                format!("`{uid}` is referred to by stored entities or policies; a request cannot define it"),
            ));
        }
        if !own.insert(uid.clone()) {
            return Err(RequestError::invalid(&field(), format!("`{uid}` appears twice")));
        }
        let parents = entity.as_ref().parents().cloned().map(EntityUid::from).collect();
        parents_of.insert(uid, parents);
        entities.push((i, entity));
    }
    // Neither the store nor the files may point at a request entity (above), so a parent cycle
    // through one runs through request entities alone.
    if let Some(uid) = first_in_cycle(&parents_of) {
        return Err(RequestError::invalid(FIELD, format!("`{uid}` would be its own ancestor")));
    }
    Ok((entities, mentions))
}

/// A uid that is its own ancestor through `parents`, if any (depth first, each uid expanded once).
fn first_in_cycle(parents: &HashMap<EntityUid, Vec<EntityUid>>) -> Option<&EntityUid> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    let mut marks: HashMap<&EntityUid, Mark> = HashMap::new();
    for start in parents.keys() {
        let mut stack: Vec<(&EntityUid, usize)> = vec![(start, 0)];
        while let Some(&mut (uid, ref mut next)) = stack.last_mut() {
            if *next == 0 {
                match marks.get(uid) {
                    Some(Mark::Done) => {
                        stack.pop();
                        continue;
                    }
                    Some(Mark::Open) => return Some(uid),
                    None => {
                        marks.insert(uid, Mark::Open);
                    }
                }
            }
            match parents.get(uid).and_then(|p| p.get(*next)) {
                Some(parent) => {
                    *next += 1;
                    if marks.get(parent) == Some(&Mark::Open) {
                        return Some(parent);
                    }
                    if parents.contains_key(parent) && !marks.contains_key(parent) {
                        stack.push((parent, 0));
                    }
                }
                None => {
                    marks.insert(uid, Mark::Done);
                    stack.pop();
                }
            }
        }
    }
    None
}

/// The request's entities plus the file entities the evaluation can reach (see the module docs).
fn file_slice(snapshot: &Snapshot, prepared: &Prepared) -> Result<Entities, RequestError> {
    // Borrowed uids: the walk clones no uid, only the stored entities it includes.
    let own: Vec<EntityUid> = prepared.own.iter().map(|(_, e)| e.uid()).collect();
    let mut pending: Vec<&EntityUid> = prepared.uids.iter().collect();
    pending.extend(snapshot.index.policy_literals.iter().chain(&prepared.context_uids).chain(&prepared.own_mentions));
    let mut seen: HashSet<&EntityUid> = own.iter().collect();
    let mut slice: Vec<ast::Entity> = with_ancestors(&snapshot.entities, &prepared.own);
    while let Some(uid) = pending.pop() {
        if !seen.insert(uid) {
            continue;
        }
        if let Some(entity) = snapshot.entities.get(uid) {
            if let Some(refs) = snapshot.index.refs.get(uid) {
                pending.extend(refs.iter());
            }
            slice.push(entity.as_ref().clone());
        }
    }
    // Already validated (the stored entities at load, the request's just now), and transitively
    // closed: no schema pass, no closure computed over the whole slice again.
    let closed = TCComputation::AssumeAlreadyComputed;
    let slice =
        entities::Entities::from_entities(slice, None::<&NoEntitiesSchema>, closed, Extensions::all_available())
            .map_err(|e| RequestError::invalid("entities_json", &e))?;
    Ok(Entities::from(slice))
}

/// The request's entities, each with all its ancestors: its parents', from the store (closed at load)
/// or, for a parent the request defines, computed first. Their parents form no cycle (refused in
/// `request_entities`), so the recursion ends, at most `max_request_entities` deep.
fn with_ancestors(store: &Entities, own: &[(usize, Entity)]) -> Vec<ast::Entity> {
    let index: HashMap<&ast::EntityUID, usize> =
        own.iter().enumerate().map(|(i, (_, e))| (e.as_ref().uid(), i)).collect();
    let mut memo: Vec<Option<HashSet<ast::EntityUID>>> = vec![None; own.len()];
    let walk = Ancestors { store: store.as_ref(), own, index: &index };
    (0..own.len())
        .map(|i| {
            let mut entity = own[i].1.as_ref().clone();
            for uid in walk.of(i, &mut memo) {
                entity.add_indirect_ancestor(uid);
            }
            entity
        })
        .collect()
}

struct Ancestors<'a> {
    store: &'a entities::Entities,
    own: &'a [(usize, Entity)],
    index: &'a HashMap<&'a ast::EntityUID, usize>,
}

impl Ancestors<'_> {
    fn of(&self, i: usize, memo: &mut Vec<Option<HashSet<ast::EntityUID>>>) -> HashSet<ast::EntityUID> {
        if let Some(done) = &memo[i] {
            return done.clone();
        }
        let mut all = HashSet::new();
        for parent in self.own[i].1.as_ref().parents() {
            all.insert(parent.clone());
            match (self.index.get(parent), self.store.entity(parent)) {
                (Some(&j), _) => all.extend(self.of(j, memo)),
                (None, Dereference::Data(stored)) => all.extend(stored.ancestors().cloned()),
                (None, _) => {}
            }
        }
        memo[i] = Some(all.clone());
        all
    }
}

fn verdict(response: Response) -> Verdict {
    let diagnostics = response.diagnostics();
    let mut determining: Vec<String> = diagnostics.reason().map(|id| AsRef::<str>::as_ref(id).to_owned()).collect();
    determining.sort_unstable();
    let errors = diagnostics
        .errors()
        .map(|e| match e {
            cedar_policy::AuthorizationError::PolicyEvaluationError(inner) => PolicyFailure {
                policy_id: AsRef::<str>::as_ref(inner.policy_id()).to_owned(),
                message: inner.inner().to_string(),
            },
        })
        .collect();
    Verdict { allow: response.decision() == cedar_policy::Decision::Allow, determining, errors }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::str::FromStr;

    use cedar_policy::{Authorizer, Context};

    use super::*;
    use crate::policy::ValidationMode;
    use crate::policy::load_dir;

    fn cedar(snapshot: &Snapshot, request: &Request) -> Verdict {
        verdict(Authorizer::new().is_authorized(request, &snapshot.policies, &snapshot.entities))
    }

    /// Every uid of `ty` in the store, plus one that is not stored.
    fn uids(snapshot: &Snapshot, ty: &str) -> Vec<EntityUid> {
        let mut out: Vec<EntityUid> =
            snapshot.entities.iter().map(|e| e.uid()).filter(|u| u.type_name().to_string() == ty).collect();
        out.push(format!(r#"{ty}::"not-stored""#).parse().unwrap());
        out
    }

    /// Slicing, the unconditional shortcut and the conditions kept at load answer exactly as Cedar's
    /// authorizer on the whole set does (decision, reasons, each error's policy, message and order),
    /// for every principal × action × resource of `dir`.
    fn assert_exact(dir: &Path, contexts: &[&str]) -> (usize, usize) {
        let snapshot = load_dir(dir, ValidationMode::Off).unwrap();
        let (mut sliced, mut total) = (0, 0);
        let actions: Vec<EntityUid> =
            uids(&snapshot, "Action").into_iter().filter(|a| a.id().unescaped() != "not-stored").collect();
        for p in uids(&snapshot, "User") {
            for a in &actions {
                for r in uids(&snapshot, "Document") {
                    for c in contexts {
                        let context = Context::from_json_str(c, None).unwrap();
                        let request = Request::new(p.clone(), a.clone(), r.clone(), context, None).unwrap();
                        let ours = evaluate(&snapshot, &request, [&p, a, &r], &snapshot.entities);
                        assert_eq!(ours, cedar(&snapshot, &request), "{p} {a} {r} {c}");
                        total += 1;
                        let slice = snapshot.policies_for(&p, a, &r, &snapshot.entities);
                        sliced += usize::from(slice.len() < snapshot.policies.num_of_policies());
                    }
                }
            }
        }
        (sliced, total)
    }

    #[test]
    fn the_example_application_answers_exactly_as_cedar() {
        let (sliced, total) =
            assert_exact(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &["{}", r#"{"mfa": true}"#]);
        assert!(sliced * 2 > total, "sliced {sliced} of {total}");
    }

    #[test]
    fn unconditional_forbids_permits_and_errors_combine_as_cedar() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.cedar"),
            r#"
            @id("grant") permit (principal in Group::"g", action, resource);
            @id("ban") forbid (principal == User::"banned", action, resource);
            @id("freeze") forbid (principal, action == Action::"edit", resource in Folder::"frozen");
            @id("erroring-permit") permit (principal, action, resource) when { principal.missing == 1 };
            @id("erroring-forbid") forbid (principal, action, resource) unless { resource.missing == 1 };
            @id("conditional-forbid") forbid (principal, action, resource) when { resource has locked && resource.locked };
            @id("conditional-permit") permit (principal, action, resource) when { resource has open && resource.open };
            @id("per-user") permit (principal == ?principal, action, resource == ?resource);
            @id("non-boolean") permit (principal, action, resource) when { resource.missing };
            @id("conditional-link") permit (principal == ?principal, action, resource) when { resource has open };
            @id("typed-scope") forbid (principal is User, action in [Action::"edit", Action::"view"], resource is Document in Folder::"frozen") when { true };
            @id("both-clauses") permit (principal in ?principal, action == Action::"view", resource == ?resource) when { resource.missing == 2 } unless { principal has missing };
            @id("say \"hi\" \\ to bob") permit (principal == User::"bob", action == Action::"view", resource);
            "#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("links.json"),
            r#"[{"template_id": "per-user", "link_id": "bob-d1", "args": {"?principal": "User::\"bob\"", "?resource": "Document::\"d1\""}},
                {"template_id": "per-user", "link_id": "banned-d2", "args": {"?principal": "User::\"banned\"", "?resource": "Document::\"d2\""}},
                {"template_id": "conditional-link", "link_id": "alice-open", "args": {"?principal": "User::\"alice\""}},
                {"template_id": "both-clauses", "link_id": "g-d3", "args": {"?principal": "Group::\"g\"", "?resource": "Document::\"d3\""}},
                {"template_id": "both-clauses", "link_id": "bob-d1-both", "args": {"?principal": "User::\"bob\"", "?resource": "Document::\"d1\""}}]"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("entities.json"),
            r#"[
              {"uid": {"type": "User", "id": "alice"}, "attrs": {"missing": 1}, "parents": [{"type": "Group", "id": "g"}]},
              {"uid": {"type": "User", "id": "bob"}, "attrs": {}, "parents": []},
              {"uid": {"type": "User", "id": "banned"}, "attrs": {}, "parents": [{"type": "Group", "id": "g"}]},
              {"uid": {"type": "Document", "id": "d1"}, "attrs": {"open": true}, "parents": [{"type": "Folder", "id": "frozen"}]},
              {"uid": {"type": "Document", "id": "d2"}, "attrs": {"locked": true, "missing": 1}, "parents": []},
              {"uid": {"type": "Document", "id": "d3"}, "attrs": {"missing": 2}, "parents": []},
              {"uid": {"type": "Action", "id": "view"}, "attrs": {}, "parents": []},
              {"uid": {"type": "Action", "id": "edit"}, "attrs": {}, "parents": []}
            ]"#,
        )
        .unwrap();
        let (sliced, total) = assert_exact(dir.path(), &["{}"]);
        assert_eq!(sliced, total, "every request here leaves some policy out by its scope");
    }

    #[test]
    fn requests_cannot_define_actions_even_without_a_schema() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.cedar"), "permit (principal, action in Action::\"read\", resource);")
            .unwrap();
        let snapshot = load_dir(dir.path(), ValidationMode::Strict).unwrap();
        let input = CheckInput {
            principal: Some(UidRef { ty: "User", id: "u" }),
            action: Some(UidRef { ty: "Action", id: "delete" }),
            resource: Some(UidRef { ty: "Doc", id: "d" }),
            context: ContextIn::EMPTY,
            entities_json: r#"[{"uid": {"type": "Action", "id": "delete"}, "attrs": {}, "parents": [{"type": "Action", "id": "read"}]}]"#,
        };
        let err = decide(&snapshot, &input, &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("`Action::\"delete\"` is an action"), "{err}");
        // Without the entity, `delete` is not in `read`: denied.
        let plain = CheckInput { entities_json: "", ..input };
        assert!(!decide(&snapshot, &plain, &Limits::default()).unwrap().allow);
    }

    /// A context handed over as a value decides, and is refused, exactly as its text does.
    #[test]
    fn a_context_value_decides_as_its_text() {
        let snapshot =
            load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), ValidationMode::Strict).unwrap();
        let contexts = [
            "{}",
            r#"{"mfa": true}"#,
            r#"{"mfa": true, "source_ip": "10.1.2.3"}"#,
            r#"{"mfa": true, "source_ip": {"__extn": {"fn": "ip", "arg": "192.168.0.1"}}}"#,
            r#"{"mfa": 1}"#,
            r#"{"extra": true}"#,
            "[1]",
            r#""text""#,
        ];
        for (principal, action) in [("alice", "view"), ("bob", "edit"), ("carol", "delete")] {
            for text in contexts {
                let value: serde_json::Value = serde_json::from_str(text).unwrap();
                let input = |context| CheckInput {
                    principal: Some(UidRef { ty: "User", id: principal }),
                    action: Some(UidRef { ty: "Action", id: action }),
                    resource: Some(UidRef { ty: "Document", id: "design-doc" }),
                    context,
                    entities_json: "",
                };
                let as_text = decide(&snapshot, &input(ContextIn::Json(text)), &Limits::default());
                let as_value = decide(&snapshot, &input(ContextIn::Value(&value)), &Limits::default());
                assert_eq!(format!("{as_text:?}"), format!("{as_value:?}"), "{principal} {action} {text}");
            }
        }
    }

    /// A context of fields (ext_authz's) decides, and is refused, exactly as its JSON does: through
    /// the plan when the schema takes it, through Cedar's path when not, and without a schema.
    #[test]
    fn a_context_of_fields_decides_as_its_json() {
        let mesh = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mesh");
        let strings =
            |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let contexts = [
            (vec![("x-tenant", "acme")], Some("127.0.0.1"), vec![]),
            (vec![("x-tenant", "blocked")], Some("10.0.0.1"), vec![]),
            (vec![], None, vec![]),
            (vec![("x-other", "undeclared")], Some("127.0.0.1"), vec![]),
            (vec![], Some("not an address"), vec![]),
            (vec![], None, vec![("route", "extensions are undeclared")]),
        ];
        for mode in [ValidationMode::Strict, ValidationMode::Off] {
            let snapshot = load_dir(&mesh, mode).unwrap();
            for (headers, ip, extensions) in &contexts {
                let mut fields = ContextFields::default();
                fields.push_strings("headers", strings(headers));
                if let Some(ip) = ip {
                    fields.push("source_ip", Field::Ip(ip.to_string()));
                }
                if !extensions.is_empty() {
                    fields.push_strings("extensions", strings(extensions));
                }
                let json = fields.to_json();
                for (principal, action, resource) in [("alice", "view", "plan"), ("bob", "edit", "handbook")] {
                    let input = |context| CheckInput {
                        principal: Some(UidRef { ty: "User", id: principal }),
                        action: Some(UidRef { ty: "Action", id: action }),
                        resource: Some(UidRef { ty: "Document", id: resource }),
                        context,
                        entities_json: "",
                    };
                    let direct = decide(&snapshot, &input(ContextIn::Fields(&fields)), &Limits::default());
                    let as_json = decide(&snapshot, &input(ContextIn::Value(&json)), &Limits::default());
                    assert_eq!(format!("{direct:?}"), format!("{as_json:?}"), "{mode:?} {principal} {action} {json}");
                }
            }
        }
    }

    /// The uids a context of fields names are those its JSON names, through the plan or not.
    #[test]
    fn a_context_of_fields_names_what_its_json_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.cedar"), "permit (principal, action, resource);").unwrap();
        let schema = r#"entity User; entity Doc;
            action view appliesTo { principal: User, resource: Doc, context: { query: { "type"?: String, id?: String } } };
            action edit appliesTo { principal: User, resource: Doc, context: { query: { "type"?: Long, id?: String } } };"#;
        std::fs::write(dir.path().join("s.cedarschema"), schema).unwrap();
        let snapshot = load_dir(dir.path(), ValidationMode::Strict).unwrap();
        let mut fields = ContextFields::default();
        fields.push_strings("query", [("type".to_string(), "User".to_string()), ("id".into(), "bob".into())]);
        let json = fields.to_json();
        let named = |action, context| {
            let input = CheckInput {
                principal: Some(UidRef { ty: "User", id: "alice" }),
                action: Some(UidRef { ty: "Action", id: action }),
                resource: Some(UidRef { ty: "Doc", id: "d" }),
                context,
                entities_json: "",
            };
            prepare(&snapshot, &input, &Limits::default()).map(|p| p.context_uids).map_err(|e| e.to_string())
        };
        let bob = vec![EntityUid::from_str(r#"User::"bob""#).unwrap()];
        // Taken by the plan.
        assert_eq!(named("view", ContextIn::Value(&json)), Ok(bob.clone()));
        assert_eq!(named("view", ContextIn::Fields(&fields)), Ok(bob));
        // Refused by the plan and by Cedar: the same refusal.
        assert_eq!(named("edit", ContextIn::Fields(&fields)), named("edit", ContextIn::Value(&json)));
        assert!(named("edit", ContextIn::Fields(&fields)).is_err());
    }

    /// The entities a context value names reach the slice a request with its own entities is decided on.
    #[test]
    fn entities_a_context_value_names_are_in_the_slice() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.cedar"),
            "permit (principal, action, resource) when { context.owner.level > 3 };",
        )
        .unwrap();
        let stored = r#"[{"uid": {"type": "User", "id": "alice"}, "attrs": {"level": 5}, "parents": []}]"#;
        std::fs::write(dir.path().join("entities.json"), stored).unwrap();
        let snapshot = load_dir(dir.path(), ValidationMode::Off).unwrap();
        let value = serde_json::json!({"owner": {"__entity": {"type": "User", "id": "alice"}}});
        let input = CheckInput {
            principal: Some(UidRef { ty: "User", id: "bob" }),
            action: Some(UidRef { ty: "Action", id: "view" }),
            resource: Some(UidRef { ty: "Doc", id: "new" }),
            context: ContextIn::Value(&value),
            entities_json: r#"[{"uid": {"type": "Doc", "id": "new"}, "attrs": {}, "parents": []}]"#,
        };
        let outcome = decide(&snapshot, &input, &Limits::default()).unwrap();
        assert!(outcome.allow && outcome.errors.is_empty(), "{outcome:?}");
    }

    /// A residual (only Cedar's `unknown`, not in this build, makes one) or a bare non-boolean (a
    /// loaded condition starts with `&&`, which turns one into a type error) is not judged here.
    #[test]
    fn only_boolean_conditions_are_judged_here() {
        let snapshot = load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), ValidationMode::Off).unwrap();
        let uid = |s: &str| s.parse::<EntityUid>().unwrap();
        let request = Request::new(
            uid(r#"User::"bob""#),
            uid(r#"Action::"view""#),
            uid(r#"Document::"d""#),
            Context::empty(),
            None,
        )
        .unwrap();
        let judged = |expr: ast::Expr| {
            let condition =
                Condition { id: "c".into(), effect: cedar_policy::Effect::Permit, expr, slots: Default::default() };
            satisfied(&[Arc::new(condition)], &request, &snapshot.entities)
        };
        assert_eq!(judged(ast::Expr::unknown(ast::Unknown::new_untyped("u"))), None);
        assert_eq!(judged(ast::Expr::val(1)), None);
        assert_eq!(judged(ast::Expr::val(true)).map(|s| s.permits), Some(vec!["c".to_owned()]));
        assert_eq!(judged(ast::Expr::val(false)).map(|s| s.permits), Some(vec![]));
    }

    #[test]
    fn combine_follows_cedars_rule() {
        let v = |allow: bool, ids: &[&str]| Verdict {
            allow,
            determining: ids.iter().map(ToString::to_string).collect(),
            errors: Vec::new(),
        };
        let s = |ids: &[&str]| ids.iter().map(ToString::to_string).collect::<Vec<_>>();
        let e =
            |permits: &[&str], forbids: &[&str]| Satisfied { permits: s(permits), forbids: s(forbids), errors: vec![] };
        assert_eq!(combine(e(&[], &[]), &[], &[]), v(false, &[]));
        assert_eq!(combine(e(&[], &[]), &s(&["p"]), &[]), v(true, &["p"]));
        assert_eq!(combine(e(&["c"], &[]), &s(&["p"]), &[]), v(true, &["c", "p"]));
        assert_eq!(combine(e(&["c"], &[]), &s(&["p"]), &s(&["f"])), v(false, &["f"]));
        assert_eq!(combine(e(&["c"], &["cf"]), &s(&["p"]), &s(&["f"])), v(false, &["cf", "f"]));
        assert_eq!(combine(e(&["c"], &["cf"]), &s(&["p"]), &[]), v(false, &["cf"]));
        assert_eq!(combine(e(&["c"], &[]), &[], &[]), v(true, &["c"]));
    }
}
