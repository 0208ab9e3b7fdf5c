//! Typed requests without Cedar's generic schema-directed parse: for each action the schema declares,
//! a plan made at load of what its context holds (each attribute's type, whether it is required) and
//! which principal and resource types it applies to.
//!
//! A request the plan accepts is built by the plan alone and checked once, here: Cedar's path converts
//! the schema's context type on every request, types the JSON against it and then validates the
//! result against the schema a second time. Anything the plan does not accept in so many words (a
//! type it does not cover, an escape other than `__extn` calling the type's own constructor with one
//! string, a missing or extra attribute, a wrong type) goes
//! to Cedar's path instead, so every refusal keeps Cedar's words. The plan accepts a request only
//! when Cedar's path would accept it with the same values (tested in `tests` below, type by type).

use std::collections::{HashMap, HashSet};

use cedar_policy::{Context, EntityTypeName, EntityUid, Request, Schema};
use cedar_policy_core::ast::{self, Eid, EntityType, ExtensionFunction, Name};
use cedar_policy_core::extensions::Extensions;
use cedar_policy_core::validator::types::{BoolType, EntityKind, OpenTag, Type};
use cedar_policy_core::validator::{ValidatorEntityTypeKind, ValidatorSchema};
use serde_json::Value;

/// Per action, what a request for it may carry.
#[derive(Default)]
pub(crate) struct RequestPlans(HashMap<EntityUid, ActionPlan>);

struct ActionPlan {
    principals: HashSet<EntityTypeName>,
    resources: HashSet<EntityTypeName>,
    context: Record,
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
        let plans = actions.iter().filter_map(|uid| Some((uid.clone(), ActionPlan::build(core, uid)?))).collect();
        RequestPlans(plans)
    }

    /// The request, if the plan for `action` accepts it; None sends it to Cedar's path.
    pub(crate) fn request(
        &self,
        principal: &EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
        context_json: &str,
    ) -> Option<Request> {
        let plan = self.0.get(action)?;
        if !plan.principals.contains(principal.type_name()) || !plan.resources.contains(resource.type_name()) {
            return None;
        }
        let attrs = if context_json.trim().is_empty() {
            plan.context.convert(&serde_json::Map::new())?
        } else {
            match crate::json::parse_strict(context_json).ok()? {
                Value::Object(map) => plan.context.convert(&map)?,
                _ => return None,
            }
        };
        let ast::ValueKind::Record(attrs) = attrs.value else { return None };
        let context = Context::from(ast::Context::Value(attrs));
        // Checked above against the schema; a second validation would repeat it.
        Request::new(principal.clone(), action.clone(), resource.clone(), context, None).ok()
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
                let mut fields = HashMap::new();
                for (name, attr) in attrs.iter() {
                    fields.insert(name.to_string(), (Shape::of(schema, &attr.attr_type)?, attr.is_required));
                }
                Shape::Record(Record(fields))
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
    /// The record, every attribute converted, every required one present and none undeclared; else
    /// None.
    fn convert(&self, map: &serde_json::Map<String, Value>) -> Option<ast::Value> {
        let present = self.0.iter().filter(|(name, (_, required))| *required || map.contains_key(name.as_str()));
        if present.count() != map.len() {
            return None;
        }
        let attrs = map.iter().map(|(name, value)| Some((name.as_str(), self.0.get(name)?.0.convert(value)?)));
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
fn extension_call<'a>(name: &str, map: &'a serde_json::Map<String, Value>) -> Option<&'a str> {
    let Some(Value::Object(call)) = map.get("__extn").filter(|_| map.len() == 1) else { return None };
    match (call.len(), call.get("fn"), call.get("arg")) {
        (2, Some(Value::String(f)), Some(Value::String(arg))) if f == name => Some(arg),
        _ => None,
    }
}

/// `{"type": T, "id": I}` or `{"__entity": {"type": T, "id": I}}` for the expected type `ty`.
fn entity_ref(ty: &EntityType, name: &str, map: &serde_json::Map<String, Value>) -> Option<ast::EntityUID> {
    let map = match map.get("__entity") {
        Some(Value::Object(inner)) if map.len() == 1 => inner,
        Some(_) => return None,
        None => map,
    };
    match (map.len(), map.get("type"), map.get("id")) {
        (2, Some(Value::String(named)), Some(Value::String(id))) if named == name => {
            Some(ast::EntityUID::from_components(ty.clone(), Eid::new(id.as_str()), None))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    const SCHEMA: &str = r#"
        entity Group;
        entity User in [Group] { email?: String };
        entity Doc;
        entity Color enum ["red", "blue"];
        type Net = { ip: ipaddr, "x-tenant"?: String };
        action view appliesTo {
            principal: User, resource: Doc,
            context: {
                flag: Bool, n: Long, s: String, who: User, tags: Set<String>, owners?: Set<User>,
                net: Net, price?: decimal, at?: datetime, ttl?: duration, deep?: { a: { b?: Set<Long> } },
            },
        };
        action paint appliesTo { principal: User, resource: Doc, context: { color: Color } };
        action empty appliesTo { principal: [User, Color], resource: Doc };
    "#;

    fn setup() -> (Schema, RequestPlans) {
        let (schema, _) = Schema::from_cedarschema_str(SCHEMA).unwrap();
        let actions = ["view", "paint", "empty"].map(|a| EntityUid::from_str(&format!("Action::\"{a}\"")).unwrap());
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

    /// Accepted by the plan with exactly Cedar's values.
    fn planned_as_cedar(json: &str) {
        let (schema, plans) = setup();
        let (p, a, r) = (uid(r#"User::"alice""#), uid(r#"Action::"view""#), uid(r#"Doc::"d""#));
        let planned = plans.request(&p, &a, &r, json).unwrap_or_else(|| panic!("the plan refused {json}"));
        let cedar = cedar(&schema, &p, &a, &r, json).unwrap_or_else(|| panic!("Cedar refused {json}"));
        assert_eq!(planned.context(), cedar.context(), "{json}");
        assert_eq!(format!("{planned}"), format!("{cedar}"), "{json}");
    }

    /// Refused by the plan, so Cedar's path answers instead: whether Cedar accepts it.
    fn left_to_cedar(action: &str, principal: &str, json: &str) -> bool {
        let (schema, plans) = setup();
        let (p, a, r) = (uid(principal), uid(&format!("Action::\"{action}\"")), uid(r#"Doc::"d""#));
        assert!(plans.request(&p, &a, &r, json).is_none(), "the plan accepted {json}");
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
            let planned = plans.request(&p, &a, &r, json).unwrap();
            assert_eq!(planned.context(), cedar(&schema, &p, &a, &r, json).unwrap().context());
        }
        assert!(plans.request(&p, &a, &r, r#"{"x": 1}"#).is_none());
    }
}
