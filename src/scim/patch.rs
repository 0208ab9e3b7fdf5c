//! PATCH (RFC 7644 §3.5.2) as the IdPs send it: `op` in any case, booleans as strings, paths with
//! or without the schema URN, dotted sub-attributes, value filters (`members[value eq "id"]`,
//! `emails[type eq "work"].value`), no-path operations whose value is an object of paths (Okta's
//! `{"active": false}`, Entra's dotted and URN keys), member removal by a value array, and Okta's
//! rename that also sends the read-only `id` (ignored). Operations apply to a copy: all or none.

use serde_json::{Map, Value};

use super::attrs::{Target, target};
use super::filter::{self, Filter, Op};
use super::resource::{coerce, single, writable};
use crate::error::ScimError;
use crate::policy::scim::{Kind, SchemaDef};

pub const PATCH_URN: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Add,
    Replace,
    Remove,
}

/// Where an operation's path points.
struct Path {
    target: Target,
    filter: Option<Filter>,
    /// After a filter: the sub-attribute of the matching elements.
    then: Option<Target>,
}

/// Applies a PatchOp body to `resource` (stored form, with `id`); on any error nothing changes.
pub fn apply(resource: &mut Value, body: &Value, schemas: &'static [SchemaDef]) -> Result<(), ScimError> {
    let operations = body
        .as_object()
        .and_then(|b| b.iter().find(|(k, _)| k.eq_ignore_ascii_case("Operations")))
        .and_then(|(_, v)| v.as_array())
        .ok_or_else(|| ScimError::bad("invalidSyntax", "a PatchOp needs an `Operations` array"))?;
    let mut copy = resource.clone();
    for (i, operation) in operations.iter().enumerate() {
        one(&mut copy, operation, schemas).map_err(|mut e| {
            e.detail = format!("Operations[{i}]: {}", e.detail);
            e
        })?;
    }
    if let Some(object) = copy.as_object_mut() {
        object.retain(|k, v| !(k.starts_with("urn:") && v.as_object().is_some_and(Map::is_empty)));
    }
    *resource = copy;
    Ok(())
}

fn one(resource: &mut Value, operation: &Value, schemas: &'static [SchemaDef]) -> Result<(), ScimError> {
    let field = |name: &str| {
        operation.as_object().and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case(name))).map(|(_, v)| v)
    };
    let verb = match field("op").and_then(Value::as_str).map(str::to_ascii_lowercase).as_deref() {
        Some("add") => Verb::Add,
        Some("replace") => Verb::Replace,
        Some("remove") => Verb::Remove,
        _ => return Err(ScimError::bad("invalidSyntax", "`op` is add, replace or remove")),
    };
    let value = field("value").unwrap_or(&Value::Null);
    match field("path").and_then(Value::as_str) {
        // A whole extension: its value is an object of the extension's attributes.
        Some(text) if schemas[1..].iter().any(|s| s.id.eq_ignore_ascii_case(text)) => {
            let urn = schemas[1..].iter().find(|s| s.id.eq_ignore_ascii_case(text)).map_or(text, |s| s.id);
            match verb {
                Verb::Remove => {
                    if let Some(o) = resource.as_object_mut() {
                        o.remove(urn);
                    }
                    Ok(())
                }
                _ => without_path(resource, verb, &serde_json::json!({ urn: value }), schemas),
            }
        }
        Some(text) => {
            let path = parse_path(text, schemas)?;
            if !writable(path.target.attr) || path.target.sub.is_some_and(|s| !writable(s)) {
                return Err(ScimError::bad("mutability", format!("`{text}` is read-only")));
            }
            at_path(resource, verb, &path, value)
        }
        None if verb == Verb::Remove => Err(ScimError::bad("noTarget", "`remove` needs a `path`")),
        None => without_path(resource, verb, value, schemas),
    }
}

/// `add`/`replace` with no path: the value's keys are paths (an extension URN key holds an object
/// of its attributes); read-only and unknown ones are ignored, as in a POST.
fn without_path(
    resource: &mut Value,
    verb: Verb,
    value: &Value,
    schemas: &'static [SchemaDef],
) -> Result<(), ScimError> {
    let Value::Object(fields) = value else {
        return Err(ScimError::invalid_value("an operation without `path` needs an object `value`"));
    };
    for (key, value) in fields {
        if let Some(schema) = schemas[1..].iter().find(|s| s.id.eq_ignore_ascii_case(key))
            && let Value::Object(inner) = value
        {
            for (sub, value) in inner {
                apply_key(resource, verb, &format!("{}:{sub}", schema.id), value, schemas)?;
            }
            continue;
        }
        apply_key(resource, verb, key, value, schemas)?;
    }
    Ok(())
}

fn apply_key(
    resource: &mut Value,
    verb: Verb,
    key: &str,
    value: &Value,
    schemas: &'static [SchemaDef],
) -> Result<(), ScimError> {
    // A key with a value filter is a path like any other (never dropped silently).
    if key.contains('[') {
        let path = parse_path(key, schemas)?;
        if !writable(path.target.attr) {
            return Err(ScimError::bad("mutability", format!("`{key}` is read-only")));
        }
        return at_path(resource, verb, &path, value);
    }
    let Some(target) = target(schemas, key) else { return Ok(()) };
    if !writable(target.attr) || target.sub.is_some_and(|s| !writable(s)) {
        return Ok(());
    }
    at_path(resource, verb, &Path { target, filter: None, then: None }, value)
}

fn parse_path(text: &str, schemas: &'static [SchemaDef]) -> Result<Path, ScimError> {
    let bad = |why: &str| ScimError::bad("invalidPath", format!("`{text}`: {why}"));
    let Some(open) = text.find('[') else {
        let target = target(schemas, text).ok_or_else(|| bad("no such attribute"))?;
        return Ok(Path { target, filter: None, then: None });
    };
    let close = text.rfind(']').filter(|c| *c > open).ok_or_else(|| bad("`[` without `]`"))?;
    let target = target(schemas, &text[..open]).ok_or_else(|| bad("no such attribute"))?;
    if !target.is_multi_complex() {
        return Err(bad("a filter needs a multi-valued complex attribute"));
    }
    let filter = filter::parse_within(&text[open + 1..close], schemas, target.clone())?;
    let then = match &text[close + 1..] {
        "" => None,
        rest => {
            let name = rest.strip_prefix('.').ok_or_else(|| bad("expected `.sub-attribute` after `]`"))?;
            Some(target.sub(name).ok_or_else(|| bad("no such sub-attribute"))?)
        }
    };
    Ok(Path { target, filter: Some(filter), then })
}

/// The object that holds the path's attribute: the resource, or its extension object.
fn container<'a>(resource: &'a mut Value, target: &Target) -> Result<&'a mut Map<String, Value>, ScimError> {
    let root =
        resource.as_object_mut().ok_or_else(|| ScimError::new(500, None, "a stored resource is not an object"))?;
    let Some(urn) = target.extension else { return Ok(root) };
    let slot = root.entry(urn.to_string()).or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut().ok_or_else(|| ScimError::new(500, None, "an extension is not an object"))
}

fn at_path(resource: &mut Value, verb: Verb, path: &Path, value: &Value) -> Result<(), ScimError> {
    let target = &path.target;
    let name = target.attr.name;
    if let Some(filter) = &path.filter {
        return filtered(container(resource, target)?, verb, path, filter, value);
    }
    let map = container(resource, target)?;
    if verb == Verb::Remove && target.leaf().required {
        return Err(ScimError::bad("mutability", format!("`{name}` is required and cannot be removed")));
    }
    if let Some(sub) = target.sub {
        if target.attr.multi {
            return Err(ScimError::bad("invalidPath", format!("`{name}.{}`: select elements with a filter", sub.name)));
        }
        let slot = map.entry(name.to_string()).or_insert_with(|| Value::Object(Map::new()));
        let object =
            slot.as_object_mut().ok_or_else(|| ScimError::invalid_value(format!("`{name}` is not complex")))?;
        match (verb, single(sub, value, &format!("{name}.{}", sub.name))?) {
            (Verb::Remove, _) | (_, None) => object.remove(sub.name),
            (_, Some(v)) => object.insert(sub.name.to_string(), v),
        };
        if object.is_empty() {
            map.remove(name);
        }
        return Ok(());
    }
    let given = coerce(target.attr, value, name)?;
    match (verb, given) {
        (Verb::Remove, Some(Value::Array(gone))) if target.attr.multi && !gone.is_empty() => {
            // Entra removes members by a value array.
            if let Some(Value::Array(items)) = map.get_mut(name) {
                items.retain(|item| !gone.iter().any(|g| same_element(item, g)));
            }
        }
        (Verb::Remove, _) | (_, None) => {
            map.remove(name);
        }
        (Verb::Add, Some(Value::Array(new))) => {
            let slot = map.entry(name.to_string()).or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(items) = slot {
                for item in new {
                    if !items.iter().any(|i| same_element(i, &item)) {
                        items.push(item);
                    }
                }
            }
        }
        (_, Some(Value::Object(subs))) if !target.attr.multi => {
            let slot = map.entry(name.to_string()).or_insert_with(|| Value::Object(Map::new()));
            match slot {
                Value::Object(existing) => existing.extend(subs),
                other => *other = Value::Object(subs),
            }
        }
        (_, Some(v)) => {
            map.insert(name.to_string(), v);
        }
    }
    if map.get(name).is_some_and(|v| v.as_array().is_some_and(Vec::is_empty)) {
        map.remove(name);
    }
    Ok(())
}

/// Two elements of a multi-valued attribute are the same when their `value`s are (else when equal).
fn same_element(a: &Value, b: &Value) -> bool {
    match (a.get("value"), b.get("value")) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn filtered(
    map: &mut Map<String, Value>,
    verb: Verb,
    path: &Path,
    filter: &Filter,
    value: &Value,
) -> Result<(), ScimError> {
    let name = path.target.attr.name;
    let mut items = match map.remove(name) {
        Some(Value::Array(items)) => items,
        Some(one) => vec![one],
        None => Vec::new(),
    };
    let hits: Vec<usize> = (0..items.len()).filter(|&i| filter::matches(filter, &items[i])).collect();
    let result = (|| {
        if hits.is_empty() {
            return match (verb, new_element(filter, path, value)?) {
                // Entra replaces `emails[type eq "work"].value` on a user with no work email.
                (Verb::Add | Verb::Replace, Some(element)) => {
                    items.push(element);
                    Ok(())
                }
                _ => Err(ScimError::bad("noTarget", format!("no `{name}` matches the filter"))),
            };
        }
        for &i in hits.iter().rev() {
            let item = &mut items[i];
            match (verb, &path.then) {
                (Verb::Remove, None) => {
                    items.remove(i);
                }
                (Verb::Remove, Some(sub)) => {
                    if let Some(o) = item.as_object_mut() {
                        o.remove(sub.attr.name);
                    }
                }
                (_, Some(sub)) => {
                    let v = single(sub.attr, value, &format!("{name}.{}", sub.attr.name))?;
                    if let (Some(o), Some(v)) = (item.as_object_mut(), v) {
                        o.insert(sub.attr.name.to_string(), v);
                    }
                }
                (_, None) => {
                    if let (Some(o), Some(Value::Object(new))) =
                        (item.as_object_mut(), single(path.target.attr, value, name)?)
                    {
                        o.extend(new);
                    }
                }
            }
        }
        Ok(())
    })();
    if !items.is_empty() {
        map.insert(name.to_string(), Value::Array(items));
    }
    result
}

/// For `attr[sub eq "x"].other` with nothing matching: the element `{sub: "x", other: value}`.
fn new_element(filter: &Filter, path: &Path, value: &Value) -> Result<Option<Value>, ScimError> {
    let (Filter::Compare(key, Op::Eq, Value::String(wanted)), Some(then)) = (filter, &path.then) else {
        return Ok(None);
    };
    if key.attr.kind == Kind::Complex {
        return Ok(None);
    }
    let Some(v) = single(then.attr, value, then.attr.name)? else { return Ok(None) };
    let mut element = Map::new();
    element.insert(key.attr.name.to_string(), Value::String(wanted.clone()));
    element.insert(then.attr.name.to_string(), v);
    Ok(Some(Value::Object(element)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policy::scim::{ENTERPRISE_URN, GROUP, USER};

    fn patched(mut resource: Value, ops: Value, schemas: &'static [SchemaDef]) -> Result<Value, ScimError> {
        apply(&mut resource, &json!({"schemas": [PATCH_URN], "Operations": ops}), schemas)?;
        Ok(resource)
    }

    fn user() -> Value {
        json!({"id": "u1", "userName": "ann", "active": true, "emails": [{"value": "a@x", "type": "work"}]})
    }

    #[test]
    fn entra_payloads() {
        // Capitalised op, string boolean.
        let u = patched(user(), json!([{"op": "Replace", "path": "active", "value": "False"}]), USER).unwrap();
        assert_eq!(u["active"], json!(false));
        // Multi-attribute replace with dotted and URN keys.
        let ops = json!([{"op": "replace", "value": {
            "name.givenName": "Ann", "displayName": "Ann A",
            (format!("{ENTERPRISE_URN}:employeeNumber")): "42",
            "emails[type eq \"work\"].value": "w@x"
        }}]);
        let u = patched(user(), ops, USER).unwrap();
        assert_eq!(u["name"]["givenName"], "Ann");
        assert_eq!(u[ENTERPRISE_URN]["employeeNumber"], "42");
        assert_eq!(u["displayName"], "Ann A");
        assert_eq!(u["emails"], json!([{"value": "w@x", "type": "work"}]));
        // A work email replaced through a filter, and added where there is none.
        let ops = json!([{"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "new@x"}]);
        assert_eq!(patched(user(), ops.clone(), USER).unwrap()["emails"], json!([{"value": "new@x", "type": "work"}]));
        let bare = json!({"id": "u1", "userName": "ann"});
        assert_eq!(patched(bare, ops, USER).unwrap()["emails"], json!([{"type": "work", "value": "new@x"}]));
        // Members: add as a value array with a null $ref, remove by value array, then by filter.
        let group = json!({"id": "g1", "displayName": "G", "members": [{"value": "u1"}]});
        let g = patched(
            group,
            json!([{"op": "Add", "path": "members", "value": [{"$ref": null, "value": "u2"}, {"value": "u1"}]}]),
            GROUP,
        )
        .unwrap();
        assert_eq!(g["members"], json!([{"value": "u1"}, {"value": "u2"}]));
        let g = patched(g, json!([{"op": "Remove", "path": "members", "value": [{"value": "u1"}]}]), GROUP).unwrap();
        assert_eq!(g["members"], json!([{"value": "u2"}]));
        let g = patched(g, json!([{"op": "remove", "path": "members[value eq \"u2\"]"}]), GROUP).unwrap();
        assert!(g.get("members").is_none(), "{g}");
    }

    #[test]
    fn okta_payloads() {
        let u = patched(user(), json!([{"op": "replace", "value": {"active": false}}]), USER).unwrap();
        assert_eq!(u["active"], json!(false));
        // Group rename that also sends the read-only id: the id is ignored.
        let group = json!({"id": "g1", "displayName": "G", "members": [{"value": "u1"}]});
        let g =
            patched(group.clone(), json!([{"op": "replace", "value": {"id": "g1", "displayName": "Renamed"}}]), GROUP)
                .unwrap();
        assert_eq!((g["id"].clone(), g["displayName"].clone()), (json!("g1"), json!("Renamed")));
        let g =
            patched(group, json!([{"op": "replace", "path": "members", "value": [{"value": "u9"}]}]), GROUP).unwrap();
        assert_eq!(g["members"], json!([{"value": "u9"}]));
        // URN-qualified paths and dotted sub-attributes.
        let u = patched(user(), json!([{"op": "add", "path": "urn:ietf:params:scim:schemas:core:2.0:User:name.familyName", "value": "Smith"}]), USER).unwrap();
        assert_eq!(u["name"]["familyName"], "Smith");
        let u = patched(
            u,
            json!([{"op": "add", "path": format!("{ENTERPRISE_URN}:manager"), "value": {"value": "u7"}}]),
            USER,
        )
        .unwrap();
        assert_eq!(u[ENTERPRISE_URN]["manager"]["value"], "u7");
        // A whole extension, with the `schemas` key scim2-tester sends in it.
        let ext = json!({"schemas": [ENTERPRISE_URN], "department": "R&D"});
        let u = patched(u, json!([{"op": "replace", "path": ENTERPRISE_URN, "value": ext}]), USER).unwrap();
        assert_eq!(u[ENTERPRISE_URN]["department"], "R&D");
        let u = patched(u, json!([{"op": "remove", "path": ENTERPRISE_URN}]), USER).unwrap();
        assert!(u.get(ENTERPRISE_URN).is_none());
    }

    #[test]
    fn a_patch_applies_all_operations_or_none() {
        let ops = json!([
            {"op": "replace", "path": "displayName", "value": "changed"},
            {"op": "remove", "path": "emails[type eq \"home\"]"}
        ]);
        let mut resource = user();
        let err = apply(&mut resource, &json!({"Operations": ops}), USER).unwrap_err();
        assert_eq!(err.scim_type, Some("noTarget"));
        assert_eq!(resource, user(), "nothing applied");
        for (ops, scim_type) in [
            (json!([{"op": "jump", "path": "active"}]), "invalidSyntax"),
            (json!([{"op": "remove"}]), "noTarget"),
            (json!([{"op": "replace", "path": "colour", "value": 1}]), "invalidPath"),
            (json!([{"op": "replace", "path": "id", "value": "x"}]), "mutability"),
            (json!([{"op": "replace", "path": "groups", "value": []}]), "mutability"),
            (json!([{"op": "remove", "path": "userName"}]), "mutability"),
            (json!([{"op": "replace", "path": "active", "value": "maybe"}]), "invalidValue"),
            (json!([{"op": "replace", "path": "emails[type eq]", "value": "x"}]), "invalidFilter"),
            (json!([{"op": "replace", "path": "userName[value eq \"x\"]", "value": "x"}]), "invalidPath"),
        ] {
            let err = patched(user(), ops.clone(), USER).unwrap_err();
            assert_eq!(err.scim_type, Some(scim_type), "{ops}: {err:?}");
        }
        assert!(apply(&mut user(), &json!({"ops": []}), USER).is_err());
    }
}
