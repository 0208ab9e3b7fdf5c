//! Typed requests without Cedar's generic schema-directed parse: for each action the schema declares,
//! a plan made at load of what its context holds (each attribute's type, whether it is required) and
//! which principal and resource types it applies to; for each entity type, what a request-scoped
//! entity of that type holds (its attributes, its tags, the types its parents may have).
//!
//! A request or entity the plan accepts is built by the plan alone and checked once, here: Cedar's
//! path converts the schema's types on every request, types the JSON against them and then validates
//! the result against the schema a second time. Anything the plan does not accept in so many words (a
//! type it does not cover, an escape other than `__extn` calling the type's own constructor with one
//! string, a missing or extra attribute, a wrong type, a parent type the schema does not allow) goes
//! to Cedar's path instead, so every refusal keeps Cedar's words. The plan accepts a request only
//! when Cedar's path would accept it with the same values (tested in `tests` below, type by type).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cedar_policy::{Context, Entity, EntityTypeName, EntityUid, Request, Schema};
use cedar_policy_core::ast::{self, Eid, EntityType, ExtensionFunction, Name, PartialValue};
use cedar_policy_core::extensions::Extensions;
use cedar_policy_core::validator::types::{Attributes, BoolType, EntityKind, OpenTag, Type};
use cedar_policy_core::validator::{ValidatorEntityType, ValidatorEntityTypeKind, ValidatorSchema};
use serde_json::{Map, Value};

/// Per action, what a request for it may carry; per entity type, what a request-scoped entity holds.
#[derive(Default)]
pub(crate) struct RequestPlans {
    actions: HashMap<EntityUid, ActionPlan>,
    /// By the type's name as a request writes it.
    entities: HashMap<String, EntityPlan>,
}

struct ActionPlan {
    principals: HashSet<EntityTypeName>,
    resources: HashSet<EntityTypeName>,
    context: Record,
}

/// A standard entity type with closed attributes.
struct EntityPlan {
    ty: EntityType,
    attrs: Record,
    /// Its tags' type; None when it takes no tags.
    tags: Option<Shape>,
    /// The types its parents may have (the schema's `in`, transitively), by name; standard ones only,
    /// since an enumerated type's ids are checked too.
    parents: HashMap<String, EntityType>,
}

/// A record type: attributes by name, with whether each is required.
struct Record(HashMap<String, (Shape, bool)>);

/// The value types the plan converts itself, into the values Cedar evaluates.
enum Shape {
    Bool,
    Long,
    String,
    /// The type, and its name as a request writes it.
    Entity(EntityType, String),
    Set(Box<Shape>),
    Record(Record),
    /// An extension type, written as the string its constructor takes (`"10.0.0.1"` for an ipaddr) or
    /// as that call (`{"__extn": {"fn": "ip", "arg": "10.0.0.1"}}`): the constructor, looked up once,
    /// and its name.
    Extension(&'static ExtensionFunction, &'static str),
}

impl RequestPlans {
    /// Plans every action of `schema` whose context and scope types it covers; the others are left to
    /// Cedar's path.
    pub(crate) fn build(schema: &Schema, actions: &HashSet<EntityUid>) -> Self {
        let core: &ValidatorSchema = schema.as_ref();
        let actions = actions.iter().filter_map(|uid| Some((uid.clone(), ActionPlan::build(core, uid)?))).collect();
        let entities = core.entity_types().filter_map(|ty| Some((ty.name().to_string(), EntityPlan::build(core, ty)?)));
        RequestPlans { actions, entities: entities.collect() }
    }

    /// The request, if the plan for `action` accepts it; None sends it to Cedar's path.
    pub(crate) fn request(
        &self,
        principal: &EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
        context: Option<&Value>,
    ) -> Option<Request> {
        let plan = self.applying(principal, action, resource)?;
        let attrs = match context {
            None => plan.context.convert(&Map::new())?,
            Some(Value::Object(map)) => plan.context.convert(map)?,
            Some(_) => return None,
        };
        finish(principal, action, resource, attrs)
    }

    /// The request for a context of fields (see `ContextFields`), if the plan accepts it as it would
    /// accept the fields' JSON; None sends it to Cedar's path.
    pub(crate) fn request_fields(
        &self,
        principal: &EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
        fields: &ContextFields,
    ) -> Option<Request> {
        let plan = self.applying(principal, action, resource)?;
        finish(principal, action, resource, plan.context.convert_fields(fields)?)
    }

    /// The plan for `action`, if it takes this principal's and resource's types.
    fn applying(&self, principal: &EntityUid, action: &EntityUid, resource: &EntityUid) -> Option<&ActionPlan> {
        let plan = self.actions.get(action)?;
        (plan.principals.contains(principal.type_name()) && plan.resources.contains(resource.type_name()))
            .then_some(plan)
    }

    /// A request-scoped entity written `{"uid": …, "attrs": {…}, "parents": […]}` (and `"tags"`), with
    /// the uids its attributes, tags and parents name, if the plan for its type accepts it; None sends
    /// it to Cedar's path.
    pub(crate) fn entity(&self, json: &Value) -> Option<(Entity, Vec<EntityUid>)> {
        let Value::Object(map) = json else { return None };
        let (Some(Value::Object(uid)), Some(Value::Object(attrs)), Some(Value::Array(parents))) =
            (map.get("uid"), map.get("attrs"), map.get("parents"))
        else {
            return None;
        };
        let tags = map.get("tags");
        if map.len() != 3 + usize::from(tags.is_some()) {
            return None;
        }
        let (ty, id) = type_and_id(uid)?;
        let plan = self.entities.get(ty)?;
        let uid = ast::EntityUID::from_components(plan.ty.clone(), Eid::new(id), None);
        let ast::ValueKind::Record(attrs) = plan.attrs.convert(attrs)?.value else { return None };
        let tags = match (tags, &plan.tags) {
            (None, _) => Vec::new(),
            (Some(Value::Object(tags)), None) if tags.is_empty() => Vec::new(),
            (Some(Value::Object(tags)), Some(shape)) => {
                tags.iter().map(|(k, v)| Some((k.into(), shape.convert(v)?.into()))).collect::<Option<_>>()?
            }
            _ => return None,
        };
        let parents = parents.iter().map(|p| plan.parent(p)).collect::<Option<HashSet<_>>>()?;
        let mut mentions: Vec<EntityUid> = parents.iter().cloned().map(EntityUid::from).collect();
        let attrs = Arc::unwrap_or_clone(attrs);
        let values = attrs.values().chain(tags.iter().filter_map(|(_, v): &(_, PartialValue)| match v {
            PartialValue::Value(v) => Some(v),
            PartialValue::Residual(_) => None,
        }));
        values.for_each(|v| value_uids(v, &mut mentions));
        let attrs = attrs.into_iter().map(|(k, v)| (k, PartialValue::Value(v)));
        let entity = ast::Entity::new_with_attr_partial_value(uid, attrs, HashSet::new(), parents, tags);
        Some((Entity::from(entity), mentions))
    }
}

/// The request with a context record the plan converted: checked against the schema already, so
/// not validated a second time.
fn finish(principal: &EntityUid, action: &EntityUid, resource: &EntityUid, attrs: ast::Value) -> Option<Request> {
    let ast::ValueKind::Record(attrs) = attrs.value else { return None };
    let context = Context::from(ast::Context::Value(attrs));
    Request::new(principal.clone(), action.clone(), resource.clone(), context, None).ok()
}

/// A context made of fields a front door computed (ext_authz's mapping: records of header, query and
/// route values, the client's address). The plan converts them to Cedar's values directly; they are
/// written as JSON only for Cedar's own path and for what keeps the request's text.
#[derive(Debug, Default)]
pub struct ContextFields(Vec<(&'static str, Field)>);

#[derive(Debug, Clone)]
pub enum Field {
    /// A record of strings, keys unique, in order.
    Strings(Vec<(String, String)>),
    /// An IP address, as `ip`'s argument.
    Ip(String),
}

impl ContextFields {
    /// Adds a field; a name already present gets the new value in its place, and a repeated key of a
    /// record keeps its last value: as a JSON object (with Cedar's order-keeping maps) would have it.
    pub fn push(&mut self, name: &'static str, field: Field) {
        let field = match field {
            Field::Strings(pairs) => Field::Strings(last_wins(pairs)),
            other => other,
        };
        match self.0.iter_mut().find(|(present, _)| *present == name) {
            Some(slot) => slot.1 = field,
            None => self.0.push((name, field)),
        }
    }

    /// A record of strings (see `push`).
    pub fn push_strings(&mut self, name: &'static str, pairs: impl IntoIterator<Item = (String, String)>) {
        self.push(name, Field::Strings(pairs.into_iter().collect()));
    }

    /// Whether the fields' JSON could be read as naming an entity (`collect_uids` reads any object
    /// with `type` and `id`): only with a `type` key somewhere.
    pub fn may_name_entities(&self) -> bool {
        self.0.iter().any(|(name, field)| {
            *name == "type" || matches!(field, Field::Strings(pairs) if pairs.iter().any(|(key, _)| key == "type"))
        })
    }

    /// The fields as JSON: records as objects, an address as the `ip` extension call.
    pub fn to_json(&self) -> Value {
        let field = |f: &Field| match f {
            Field::Strings(pairs) => {
                Value::Object(pairs.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
            }
            Field::Ip(ip) => serde_json::json!({"__extn": {"fn": "ip", "arg": ip}}),
        };
        Value::Object(self.0.iter().map(|(name, f)| (name.to_string(), field(f))).collect())
    }
}

/// Pairs with unique keys, each in its first place with its last value; in place, so a record
/// without repeats (every request's) costs no copy.
fn last_wins(mut pairs: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut at = 0;
    while at < pairs.len() {
        match pairs[..at].iter().position(|(seen, _)| *seen == pairs[at].0) {
            Some(first) => pairs[first].1 = pairs.remove(at).1,
            None => at += 1,
        }
    }
    pairs
}

/// The entity uids in `value`, at any depth.
fn value_uids(value: &ast::Value, out: &mut Vec<EntityUid>) {
    match &value.value {
        ast::ValueKind::Lit(ast::Literal::EntityUID(uid)) => out.push(EntityUid::from(uid.as_ref().clone())),
        ast::ValueKind::Set(set) => set.authoritative.iter().for_each(|v| value_uids(v, out)),
        ast::ValueKind::Record(record) => record.values().for_each(|v| value_uids(v, out)),
        ast::ValueKind::Lit(_) | ast::ValueKind::ExtensionValue(_) => {}
    }
}

/// A standard (not enumerated, not action) entity type the schema declares.
fn standard(schema: &ValidatorSchema, ty: &EntityType) -> bool {
    schema.get_entity_type(ty).is_some_and(|known| matches!(known.kind, ValidatorEntityTypeKind::Standard(_)))
}

impl ActionPlan {
    fn build(schema: &ValidatorSchema, action: &EntityUid) -> Option<Self> {
        let declared = schema.get_action_id(action.as_ref())?;
        // An enumerated type's ids are checked too: left to Cedar.
        let names = |types: &mut dyn Iterator<Item = &EntityType>| {
            types.filter(|ty| standard(schema, ty)).map(|ty| EntityTypeName::from(ty.clone())).collect()
        };
        let principals = names(&mut declared.applies_to_principals());
        let resources = names(&mut declared.applies_to_resources());
        let context = match Shape::of(schema, declared.context_type()?)? {
            Shape::Record(record) => record,
            _ => return None,
        };
        Some(ActionPlan { principals, resources, context })
    }
}

impl EntityPlan {
    fn build(schema: &ValidatorSchema, ty: &ValidatorEntityType) -> Option<Self> {
        let ValidatorEntityTypeKind::Standard(_) = ty.kind else { return None };
        if ty.open_attributes() != OpenTag::ClosedAttributes {
            return None;
        }
        let attrs = Record::of(schema, ty.attributes())?;
        let tags = match ty.tag_type() {
            Some(tags) => Some(Shape::of(schema, tags)?),
            None => None,
        };
        let parents = schema
            .entity_types()
            .filter(|parent| parent.descendants.contains(ty.name()) && standard(schema, parent.name()))
            .map(|parent| (parent.name().to_string(), parent.name().clone()))
            .collect();
        Some(EntityPlan { ty: ty.name().clone(), attrs, tags, parents })
    }

    /// A parent reference, when its type is one this type may be in.
    fn parent(&self, json: &Value) -> Option<ast::EntityUID> {
        let Value::Object(map) = json else { return None };
        let (ty, id) = type_and_id(map)?;
        Some(ast::EntityUID::from_components(self.parents.get(ty)?.clone(), Eid::new(id), None))
    }
}

impl Shape {
    /// The shape of `ty`, or None for what the plan leaves to Cedar: open records, enumerated or
    /// action entity types, untyped sets and entities, unknown extension types.
    fn of(schema: &ValidatorSchema, ty: &Type) -> Option<Shape> {
        Some(match ty {
            Type::Bool(BoolType::AnyBool) => Shape::Bool,
            Type::Long => Shape::Long,
            Type::String => Shape::String,
            Type::Entity(EntityKind::Entity(lub)) => {
                let ty = lub.get_single_entity().filter(|ty| standard(schema, ty))?;
                Shape::Entity(ty.clone(), ty.to_string())
            }
            Type::Set { element_type: Some(element) } => Shape::Set(Box::new(Shape::of(schema, element)?)),
            Type::Record { attrs, open_attributes: OpenTag::ClosedAttributes } => {
                Shape::Record(Record::of(schema, attrs)?)
            }
            Type::ExtensionType { name } => {
                let constructor = match name.to_string().as_str() {
                    "ipaddr" => "ip",
                    "decimal" => "decimal",
                    "datetime" => "datetime",
                    "duration" => "duration",
                    _ => return None,
                };
                let name = Name::parse_unqualified_name(constructor).ok()?;
                Shape::Extension(Extensions::all_available().func(&name).ok()?, constructor)
            }
            _ => return None,
        })
    }

    fn convert(&self, value: &Value) -> Option<ast::Value> {
        Some(match (self, value) {
            (Shape::Bool, Value::Bool(b)) => ast::Value::from(*b),
            (Shape::Long, Value::Number(n)) => ast::Value::from(n.as_i64()?),
            (Shape::String, Value::String(s)) => ast::Value::from(s.as_str()),
            (Shape::Entity(ty, name), Value::Object(map)) => ast::Value::from(entity_ref(ty, name, map)?),
            (Shape::Set(element), Value::Array(items)) => {
                ast::Value::set(items.iter().map(|v| element.convert(v)).collect::<Option<Vec<_>>>()?, None)
            }
            (Shape::Record(record), Value::Object(map)) => record.convert(map)?,
            (Shape::Extension(constructor, _), Value::String(arg)) => construct(constructor, arg)?,
            (Shape::Extension(constructor, name), Value::Object(map)) => {
                construct(constructor, extension_call(name, map)?)?
            }
            _ => return None,
        })
    }
}

impl Record {
    fn of(schema: &ValidatorSchema, attrs: &Attributes) -> Option<Self> {
        let fields = attrs
            .iter()
            .map(|(name, attr)| Some((name.to_string(), (Shape::of(schema, &attr.attr_type)?, attr.is_required))));
        Some(Record(fields.collect::<Option<_>>()?))
    }

    /// The record, every attribute converted, every required one present and none undeclared; else
    /// None.
    fn convert(&self, map: &Map<String, Value>) -> Option<ast::Value> {
        let attrs = map.iter().map(|(name, value)| Some((name.as_str(), self.0.get(name)?.0.convert(value)?)));
        self.convert_named(map.len(), |name| map.contains_key(name), attrs)
    }

    /// `convert` for a context of fields: what it does with the fields' JSON, without the JSON.
    fn convert_fields(&self, fields: &ContextFields) -> Option<ast::Value> {
        let named = |name: &str| fields.0.iter().any(|(present, _)| *present == name);
        self.convert_named(
            fields.0.len(),
            named,
            fields.0.iter().map(|(name, field)| {
                let converted = match (&self.0.get(*name)?.0, field) {
                    (Shape::Record(record), Field::Strings(pairs)) => record.convert_strings(pairs)?,
                    (Shape::Extension(constructor, "ip"), Field::Ip(ip)) => construct(constructor, ip)?,
                    _ => return None,
                };
                Some((*name, converted))
            }),
        )
    }

    /// `convert` for a record of strings (keys unique).
    fn convert_strings(&self, pairs: &[(String, String)]) -> Option<ast::Value> {
        let named = |name: &str| pairs.iter().any(|(key, _)| key == name);
        self.convert_named(
            pairs.len(),
            named,
            pairs.iter().map(|(key, value)| match self.0.get(key)?.0 {
                Shape::String => Some((key.as_str(), ast::Value::from(value.as_str()))),
                _ => None,
            }),
        )
    }

    /// The record of `attrs` (converted, `count` of them, unique), when every required attribute is
    /// `present` and none is undeclared.
    fn convert_named<'a>(
        &self,
        count: usize,
        present: impl Fn(&str) -> bool,
        attrs: impl Iterator<Item = Option<(&'a str, ast::Value)>>,
    ) -> Option<ast::Value> {
        let expected = self.0.iter().filter(|(name, (_, required))| *required || present(name)).count();
        if expected != count {
            return None;
        }
        Some(ast::Value::record(attrs.collect::<Option<Vec<_>>>()?, None))
    }
}

fn construct(constructor: &ExtensionFunction, arg: &str) -> Option<ast::Value> {
    match constructor.call(&[arg.into()]).ok()? {
        ast::PartialValue::Value(value) => Some(value),
        ast::PartialValue::Residual(_) => None,
    }
}

/// The argument of `{"__extn": {"fn": F, "arg": A}}` when F is `name`.
fn extension_call<'a>(name: &str, map: &'a Map<String, Value>) -> Option<&'a str> {
    let Some(Value::Object(call)) = map.get("__extn").filter(|_| map.len() == 1) else { return None };
    match (call.len(), call.get("fn"), call.get("arg")) {
        (2, Some(Value::String(f)), Some(Value::String(arg))) if f == name => Some(arg),
        _ => None,
    }
}

/// `{"type": T, "id": I}` or `{"__entity": {"type": T, "id": I}}` for the expected type `ty`.
fn entity_ref(ty: &EntityType, name: &str, map: &Map<String, Value>) -> Option<ast::EntityUID> {
    let (named, id) = type_and_id(map)?;
    (named == name).then(|| ast::EntityUID::from_components(ty.clone(), Eid::new(id), None))
}

/// The type and id of `{"type": T, "id": I}` or `{"__entity": {"type": T, "id": I}}`.
fn type_and_id(map: &Map<String, Value>) -> Option<(&str, &str)> {
    let map = match map.get("__entity") {
        Some(Value::Object(inner)) if map.len() == 1 => inner,
        Some(_) => return None,
        None => map,
    };
    match (map.len(), map.get("type"), map.get("id")) {
        (2, Some(Value::String(ty)), Some(Value::String(id))) => Some((ty, id)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    const SCHEMA: &str = r#"
        entity Org;
        entity Group in [Org];
        entity User in [Group] { email?: String };
        entity Doc;
        entity Color enum ["red", "blue"];
        entity Painted in [Color, Group];
        type Net = { ip: ipaddr, "x-tenant"?: String };
        entity Asset in [Group] {
            owner: User, net: Net, labels: Set<String>, level: Long, live: Bool, price?: decimal,
            meta?: { a: { b?: Set<Long> } },
        } tags Set<User>;
        entity Swatch { shade: Color };
        action view appliesTo {
            principal: User, resource: Doc,
            context: {
                flag: Bool, n: Long, s: String, who: User, tags: Set<String>, owners?: Set<User>,
                net: Net, price?: decimal, at?: datetime, ttl?: duration, deep?: { a: { b?: Set<Long> } },
            },
        };
        action paint appliesTo { principal: User, resource: Doc, context: { color: Color } };
        action empty appliesTo { principal: [User, Color], resource: Doc };
        action fetch appliesTo {
            principal: User, resource: Doc,
            context: { headers: { "x-b": String, "x-tenant"?: String }, query?: { q?: String }, source_ip?: ipaddr,
                       levels?: { n?: Long }, addr?: String },
        };
    "#;

    fn setup() -> (Schema, RequestPlans) {
        let (schema, _) = Schema::from_cedarschema_str(SCHEMA).unwrap();
        let actions =
            ["view", "paint", "empty", "fetch"].map(|a| EntityUid::from_str(&format!("Action::\"{a}\"")).unwrap());
        let plans = RequestPlans::build(&schema, &actions.into_iter().collect());
        (schema, plans)
    }

    fn uid(text: &str) -> EntityUid {
        EntityUid::from_str(text).unwrap()
    }

    /// Cedar's own path: the typed parse, then the request validated against the schema.
    fn cedar(schema: &Schema, p: &EntityUid, a: &EntityUid, r: &EntityUid, json: &str) -> Option<Request> {
        let context = if json.trim().is_empty() {
            Context::empty()
        } else {
            Context::from_json_str(json, Some((schema, a))).ok()?
        };
        Request::new(p.clone(), a.clone(), r.clone(), context, Some(schema)).ok()
    }

    const BASE: &str = r#""flag": true, "n": -3, "s": "x", "who": {"type": "User", "id": "a"}, "tags": ["b", "a", "b"],
        "net": {"ip": "10.1.2.3"}"#;

    fn base(extra: &str) -> String {
        format!("{{{BASE}{extra}}}")
    }

    /// The plan's answer for context text parsed as a decision parses it: text that is not strict
    /// JSON never reaches the plan.
    fn plan_of(plans: &RequestPlans, p: &EntityUid, a: &EntityUid, r: &EntityUid, json: &str) -> Option<Request> {
        if json.trim().is_empty() {
            return plans.request(p, a, r, None);
        }
        plans.request(p, a, r, Some(&crate::json::parse_strict(json).ok()?))
    }

    /// Accepted by the plan with exactly Cedar's values.
    fn planned_as_cedar(json: &str) {
        let (schema, plans) = setup();
        let (p, a, r) = (uid(r#"User::"alice""#), uid(r#"Action::"view""#), uid(r#"Doc::"d""#));
        let planned = plan_of(&plans, &p, &a, &r, json).unwrap_or_else(|| panic!("the plan refused {json}"));
        let cedar = cedar(&schema, &p, &a, &r, json).unwrap_or_else(|| panic!("Cedar refused {json}"));
        assert_eq!(planned.context(), cedar.context(), "{json}");
        assert_eq!(format!("{planned}"), format!("{cedar}"), "{json}");
    }

    /// Refused by the plan, so Cedar's path answers instead: whether Cedar accepts it.
    fn left_to_cedar(action: &str, principal: &str, json: &str) -> bool {
        let (schema, plans) = setup();
        let (p, a, r) = (uid(principal), uid(&format!("Action::\"{action}\"")), uid(r#"Doc::"d""#));
        assert!(plan_of(&plans, &p, &a, &r, json).is_none(), "the plan accepted {json}");
        cedar(&schema, &p, &a, &r, json).is_some()
    }

    #[test]
    fn every_type_converts_as_cedar_converts_it() {
        planned_as_cedar(&base(""));
        planned_as_cedar(&base(
            r#", "owners": [{"__entity": {"type": "User", "id": "o"}}, {"type": "User", "id": "p"}]"#,
        ));
        planned_as_cedar(&base(r#", "price": "1.2345", "at": "2024-10-15T11:38:02Z", "ttl": "1h30m""#));
        planned_as_cedar(&base(r#", "deep": {"a": {"b": [3, 1, 2, 3]}}, "owners": []"#));
        planned_as_cedar(&base(r#", "at": "2024-10-15", "ttl": "-2d", "deep": {"a": {}}"#));
        planned_as_cedar(&base(
            r#", "price": {"__extn": {"fn": "decimal", "arg": "-0.5"}}, "at": {"__extn": {"fn": "datetime", "arg": "2024-10-15"}}"#,
        ));
        planned_as_cedar(
            r#"{"flag": false, "n": 9223372036854775807, "s": "", "who": {"type": "User", "id": ""}, "tags": [],
                "net": {"ip": "::1/128", "x-tenant": "acme"}}"#,
        );
    }

    #[test]
    fn what_the_plan_does_not_cover_is_left_to_cedar() {
        let alice = r#"User::"alice""#;
        // Missing, extra and mistyped attributes: Cedar refuses them in its words.
        assert!(!left_to_cedar("view", alice, r#"{"flag": true}"#));
        assert!(!left_to_cedar("view", alice, &base(r#", "extra": 1"#)));
        assert!(!left_to_cedar("view", alice, &base(r#", "price": 1.5"#)));
        assert!(!left_to_cedar("view", alice, &base(r#", "deep": {"a": {"c": 1}}"#)));
        assert!(!left_to_cedar("view", alice, &base(r#", "owners": [{"type": "Group", "id": "g"}]"#)));
        assert!(!left_to_cedar("view", alice, &base(r#", "price": "not a decimal""#)));
        assert!(!left_to_cedar("view", alice, &base(r#", "at": "yesterday""#)));
        assert!(!left_to_cedar("view", alice, r#"{"flag": 1.5}"#));
        assert!(!left_to_cedar("view", alice, "[]"));
        assert!(!left_to_cedar("view", alice, ""));
        assert!(!left_to_cedar("view", alice, r#"{"flag": true, "flag": false}"#));
        // Escapes and forms the plan does not write itself.
        assert!(left_to_cedar("view", alice, &base(r#", "price": {"__extn": {"fn": "decimal", "args": ["1.0"]}}"#)));
        assert!(!left_to_cedar("view", alice, &base(r#", "price": {"__extn": {"fn": "ip", "arg": "10.0.0.1"}}"#)));
        assert!(left_to_cedar("view", alice, &base(r#", "ttl": {"fn": "duration", "arg": "1h"}"#)));
        assert!(left_to_cedar("view", alice, &base(r#", "owners": [{"type": "User", "id": "g", "x": 1}]"#)));
        assert!(!left_to_cedar("view", alice, &base(r#", "n": 9223372036854775808"#).replace(r#""n": -3, "#, "")));
        // Enumerated entity types (their ids are checked too), and principals the action does not take.
        assert!(left_to_cedar("paint", alice, r#"{"color": {"type": "Color", "id": "red"}}"#));
        assert!(left_to_cedar("empty", r#"Color::"red""#, ""));
        assert!(!left_to_cedar("view", r#"Group::"g""#, &base("")));
    }

    #[test]
    fn an_action_without_context_takes_an_empty_one() {
        let (schema, plans) = setup();
        let (p, a, r) = (uid(r#"User::"alice""#), uid(r#"Action::"empty""#), uid(r#"Doc::"d""#));
        for json in ["", "{}", " { } "] {
            let planned = plan_of(&plans, &p, &a, &r, json).unwrap();
            assert_eq!(planned.context(), cedar(&schema, &p, &a, &r, json).unwrap().context());
        }
        assert!(plan_of(&plans, &p, &a, &r, r#"{"x": 1}"#).is_none());
    }

    /// A context of fields converts exactly as its JSON does, and is refused where its JSON is.
    #[test]
    fn fields_convert_as_their_json() {
        let (_, plans) = setup();
        let (p, a, r) = (uid(r#"User::"alice""#), uid(r#"Action::"fetch""#), uid(r#"Doc::"d""#));
        let strings =
            |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let fields = |headers: &[(&str, &str)], rest: &[(&'static str, Field)]| {
            let mut fields = ContextFields::default();
            fields.push_strings("headers", strings(headers));
            for (name, field) in rest {
                fields.push(name, field.clone());
            }
            fields
        };
        let ip = |text: &str| Field::Ip(text.into());
        let accepted = [
            fields(&[("x-b", "1")], &[]),
            fields(&[("x-b", "1"), ("x-tenant", "acme")], &[("source_ip", ip("10.0.0.1"))]),
            fields(
                &[("x-b", "1")],
                &[("source_ip", ip("10.0.0.0/8")), ("query", Field::Strings(strings(&[("q", "x")])))],
            ),
            fields(&[("x-b", "1")], &[("query", Field::Strings(vec![])), ("levels", Field::Strings(vec![]))]),
            // A repeated key keeps its last value, as in a JSON object.
            fields(&[("x-b", "1"), ("x-b", "2")], &[]),
        ];
        for fields in &accepted {
            let direct = plans.request_fields(&p, &a, &r, fields).unwrap_or_else(|| panic!("refused {fields:?}"));
            let json = plans.request(&p, &a, &r, Some(&fields.to_json())).unwrap();
            assert_eq!(direct.context(), json.context(), "{fields:?}");
        }
        let last = plans.request_fields(&p, &a, &r, &accepted[4]).unwrap();
        assert_eq!(accepted[4].to_json()["headers"]["x-b"], "2");
        assert!(format!("{:?}", last.context()).contains("\"2\""), "{:?}", last.context());
        let refused = [
            fields(&[], &[]),
            fields(&[("x-b", "1"), ("x-c", "undeclared")], &[]),
            fields(&[("x-b", "1")], &[("source_ip", ip("not an address"))]),
            fields(&[("x-b", "1")], &[("levels", Field::Strings(strings(&[("n", "3")])))]),
            fields(&[("x-b", "1")], &[("extensions", Field::Strings(vec![]))]),
            fields(&[("x-b", "1")], &[("addr", ip("10.0.0.1"))]),
            fields(&[("x-b", "1")], &[("source_ip", Field::Strings(vec![]))]),
        ];
        for fields in &refused {
            assert!(plans.request_fields(&p, &a, &r, fields).is_none(), "accepted {fields:?}");
            assert!(plans.request(&p, &a, &r, Some(&fields.to_json())).is_none(), "{fields:?}");
        }
        let view = uid(r#"Action::"view""#);
        assert!(plans.request_fields(&p, &view, &r, &accepted[0]).is_none());
        // A record pushed whole with a repeated key is one attribute too: a required one stays missing.
        let mut repeated = ContextFields::default();
        repeated.push("headers", Field::Strings(strings(&[("x-tenant", "a"), ("x-tenant", "b")])));
        assert!(plans.request_fields(&p, &a, &r, &repeated).is_none());
        assert!(plans.request(&p, &a, &r, Some(&repeated.to_json())).is_none());
    }

    /// The text kept for replay and the shadow: what ext_authz wrote before it handed over fields.
    #[test]
    fn fields_are_written_as_the_mapping_wrote_its_json() {
        let mut fields = ContextFields::default();
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        fields.push_strings("headers", [pair("x-tenant", "a"), pair("x-b", "1"), pair("x-tenant", "c")]);
        fields.push_strings("query", [pair("q", "1")]);
        fields.push("source_ip", Field::Ip("10.0.0.1".into()));
        fields.push_strings("extensions", [pair("k", "v")]);
        fields.push_strings("query", [pair("q", "2")]);
        assert_eq!(
            fields.to_json().to_string(),
            r#"{"headers":{"x-tenant":"c","x-b":"1"},"query":{"q":"2"},"source_ip":{"__extn":{"fn":"ip","arg":"10.0.0.1"}},"extensions":{"k":"v"}}"#
        );
        assert!(!fields.may_name_entities());
        fields.push_strings("query", [pair("type", "User"), pair("id", "alice")]);
        assert!(fields.may_name_entities());
    }

    /// Cedar's own parse of a request-scoped entity, against the schema.
    fn cedar_entity(schema: &Schema, json: &str) -> Option<Entity> {
        Entity::from_json_value(serde_json::from_str(json).unwrap(), Some(schema)).ok()
    }

    /// Accepted by the entity plan as exactly Cedar's entity, naming the uids its JSON names.
    fn entity_planned_as_cedar(json: &str) {
        let (schema, plans) = setup();
        let value: Value = serde_json::from_str(json).unwrap();
        let (planned, mentions) = plans.entity(&value).unwrap_or_else(|| panic!("the plan refused {json}"));
        let cedar = cedar_entity(&schema, json).unwrap_or_else(|| panic!("Cedar refused {json}"));
        assert!(planned.as_ref().deep_eq(cedar.as_ref()), "{json}: {planned} against {cedar}");
        let mut named = Vec::new();
        for key in ["attrs", "tags", "parents"] {
            value.get(key).into_iter().for_each(|v| crate::policy::snapshot::collect_uids(v, &mut named));
        }
        let set = |uids: Vec<EntityUid>| uids.into_iter().collect::<HashSet<_>>();
        assert_eq!(set(mentions), set(named), "{json}");
    }

    /// Refused by the entity plan, so Cedar's path answers instead: whether Cedar accepts it.
    fn entity_left_to_cedar(json: &str) -> bool {
        let (schema, plans) = setup();
        assert!(plans.entity(&serde_json::from_str(json).unwrap()).is_none(), "the plan accepted {json}");
        cedar_entity(&schema, json).is_some()
    }

    const ASSET: &str = r#""owner": {"type": "User", "id": "u"}, "net": {"ip": "10.0.0.1"}, "labels": ["x", "y"],
        "level": 3, "live": true"#;

    fn asset(attrs: &str, rest: &str) -> String {
        format!(r#"{{"uid": {{"type": "Asset", "id": "a"}}, "attrs": {{{ASSET}{attrs}}}{rest}}}"#)
    }

    #[test]
    fn every_entity_type_converts_as_cedar_converts_it() {
        entity_planned_as_cedar(&asset("", r#", "parents": []"#));
        entity_planned_as_cedar(&asset(
            r#", "price": "1.25", "meta": {"a": {"b": [2, 1]}}"#,
            r#", "parents": [{"type": "Group", "id": "g"}, {"__entity": {"type": "Group", "id": "h"}}],
                "tags": {"readers": [{"type": "User", "id": "r"}], "none": []}"#,
        ));
        entity_planned_as_cedar(&asset(r#", "meta": {"a": {}}"#, r#", "parents": [], "tags": {}"#));
        entity_planned_as_cedar(r#"{"uid": {"__entity": {"type": "User", "id": "u"}}, "attrs": {}, "parents": []}"#);
        entity_planned_as_cedar(
            r#"{"uid": {"type": "User", "id": "u"}, "attrs": {"email": "u@x"}, "parents": [{"type": "Group", "id": "g"}], "tags": {}}"#,
        );
        // The schema's `in` is transitive: a user may be placed straight in an organisation.
        entity_planned_as_cedar(
            r#"{"uid": {"type": "User", "id": "u"}, "attrs": {}, "parents": [{"type": "Org", "id": "o"}]}"#,
        );
        entity_planned_as_cedar(
            r#"{"uid": {"type": "Group", "id": "g"}, "attrs": {}, "parents": [{"type": "Org", "id": "o"}]}"#,
        );
    }

    #[test]
    fn what_the_entity_plan_does_not_cover_is_left_to_cedar() {
        let user = |rest: &str| format!(r#"{{"uid": {{"type": "User", "id": "u"}}, "attrs": {{}}{rest}}}"#);
        // Missing, extra and mistyped attributes, tags and parents: Cedar refuses them in its words.
        assert!(!entity_left_to_cedar(&asset(r#", "extra": 1"#, r#", "parents": []"#)));
        assert!(!entity_left_to_cedar(
            &asset(r#", "level": "3""#, r#", "parents": []"#).replace(r#""level": 3, "#, "")
        ));
        assert!(!entity_left_to_cedar(r#"{"uid": {"type": "Asset", "id": "a"}, "attrs": {}, "parents": []}"#));
        assert!(!entity_left_to_cedar(&asset("", r#", "parents": [], "tags": {"t": ["not a user"]}"#)));
        assert!(!entity_left_to_cedar(&user(r#", "parents": [], "tags": {"t": "x"}"#)));
        assert!(!entity_left_to_cedar(&user(r#", "parents": [{"type": "Doc", "id": "d"}]"#)));
        assert!(!entity_left_to_cedar(&user(r#", "parents": [{"type": "Nope", "id": "d"}]"#)));
        assert!(!entity_left_to_cedar(r#"{"uid": {"type": "Nope", "id": "n"}, "attrs": {}, "parents": []}"#));
        assert!(!entity_left_to_cedar(r#"{"uid": {"type": "Color", "id": "green"}, "attrs": {}, "parents": []}"#));
        // Forms the plan does not write itself: Cedar's path decides them.
        entity_left_to_cedar(&user(""));
        entity_left_to_cedar(&user(r#", "parents": [], "extra": 1"#));
        entity_left_to_cedar(r#"[1]"#);
        assert!(entity_left_to_cedar(r#"{"uid": {"type": "Color", "id": "red"}, "attrs": {}, "parents": []}"#));
        let swatch = r#"{"uid": {"type": "Swatch", "id": "s"}, "attrs": {"shade": {"type": "Color", "id": "red"}}, "parents": []}"#;
        assert!(entity_left_to_cedar(swatch));
        assert!(entity_left_to_cedar(
            r#"{"uid": {"type": "Painted", "id": "p"}, "attrs": {}, "parents": [{"type": "Color", "id": "red"}]}"#
        ));
        assert!(!entity_left_to_cedar(
            r#"{"uid": {"type": "Painted", "id": "p"}, "attrs": {}, "parents": [{"type": "Color", "id": "green"}]}"#
        ));
    }
}
