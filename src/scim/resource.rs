//! A resource as an IdP sends it → the stored form: attribute names made canonical, values checked
//! against their types (booleans also as the strings `"True"`/`"False"` Entra sends), extension
//! attributes under their URN, unassigned (`null`) values dropped, and what the server manages (`id`,
//! `meta`, `groups`, read-only attributes) and what it never keeps (`password`) left out.

use serde_json::{Map, Value};

use super::attrs::target;
use crate::error::ScimError;
use crate::policy::scim::{Attr, Kind, Mutability, SchemaDef};

/// The stored form of a POSTed or PUT resource.
pub fn normalize(input: &Value, schemas: &'static [SchemaDef]) -> Result<Value, ScimError> {
    let Value::Object(fields) = input else {
        return Err(ScimError::bad("invalidSyntax", "a resource is a JSON object"));
    };
    let mut out = Map::new();
    for (key, value) in fields {
        if let Some(schema) = schemas[1..].iter().find(|s| s.id.eq_ignore_ascii_case(key)) {
            let extension = extension(schema, value)?;
            if !extension.is_empty() {
                out.insert(schema.id.to_string(), Value::Object(extension));
            }
            continue;
        }
        let Some(found) = target(schemas, key) else { continue };
        if found.sub.is_some() || found.extension.is_some() {
            continue;
        }
        if let Some(value) = coerce(found.attr, value, key)? {
            out.insert(found.attr.name.to_string(), value);
        }
    }
    Ok(Value::Object(out))
}

fn extension(schema: &'static SchemaDef, value: &Value) -> Result<Map<String, Value>, ScimError> {
    let Value::Object(fields) = value else {
        return Err(ScimError::invalid_value(format!("`{}` is a JSON object", schema.id)));
    };
    let mut out = Map::new();
    for (key, value) in fields {
        let Some(attr) = schema.attributes.iter().find(|a| a.name.eq_ignore_ascii_case(key)) else { continue };
        if let Some(value) = coerce(attr, value, &format!("{}:{key}", schema.id))? {
            out.insert(attr.name.to_string(), value);
        }
    }
    Ok(out)
}

/// Whether the client may set this attribute at all (read-only ones are ignored when sent).
pub fn writable(attr: &Attr) -> bool {
    attr.mutability != Mutability::ReadOnly
}

/// `value` checked for `attr`: None for a value to drop (null, read-only, a password).
pub fn coerce(attr: &'static Attr, value: &Value, field: &str) -> Result<Option<Value>, ScimError> {
    if value.is_null() || !writable(attr) || attr.mutability == Mutability::WriteOnly {
        return Ok(None);
    }
    if attr.multi {
        let items = match value {
            Value::Array(items) => items.as_slice(),
            one => std::slice::from_ref(one),
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if let Some(item) = single(attr, item, &format!("{field}[{i}]"))? {
                out.push(item);
            }
        }
        // An empty list is an unassigned attribute (RFC 7643 §2.5).
        return Ok((!out.is_empty()).then_some(Value::Array(out)));
    }
    single(attr, value, field)
}

/// One value of `attr` (an element, for a multi-valued one).
pub fn single(attr: &'static Attr, value: &Value, field: &str) -> Result<Option<Value>, ScimError> {
    let wrong = |what: &str| ScimError::invalid_value(format!("`{field}`: expected {what}, found {value}"));
    Ok(Some(match (attr.kind, value) {
        (_, Value::Null) => return Ok(None),
        (Kind::Boolean, Value::Bool(b)) => Value::Bool(*b),
        (Kind::Boolean, Value::String(s)) if s.eq_ignore_ascii_case("true") => Value::Bool(true),
        (Kind::Boolean, Value::String(s)) if s.eq_ignore_ascii_case("false") => Value::Bool(false),
        (Kind::Boolean, _) => return Err(wrong("a boolean")),
        (Kind::Complex, Value::Object(fields)) => {
            let mut out = Map::new();
            for (key, value) in fields {
                let Some(sub) = attr.sub.iter().find(|a| a.name.eq_ignore_ascii_case(key)) else { continue };
                if sub.mutability == Mutability::ReadOnly {
                    continue;
                }
                if let Some(value) = single(sub, value, &format!("{field}.{key}"))? {
                    out.insert(sub.name.to_string(), value);
                }
            }
            Value::Object(out)
        }
        // Entra sends `manager` as the bare id: the `value` of the complex attribute.
        (Kind::Complex, Value::String(s)) if attr.sub.iter().any(|a| a.name == "value") => {
            serde_json::json!({ "value": s })
        }
        (Kind::Complex, _) => return Err(wrong("an object")),
        (_, Value::String(s)) => Value::String(s.clone()),
        (_, _) => return Err(wrong("a string")),
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policy::scim::{ENTERPRISE_URN, GROUP, USER};

    #[test]
    fn resources_are_made_canonical_and_checked() {
        let input = json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "id": "forged", "meta": {"x": 1},
            "USERNAME": "ann", "Active": "False", "password": "hunter2", "roles": [],
            "emails": {"Value": "a@x", "primary": "true", "colour": "red"}, "name": {"givenName": "Ann"},
            "groups": [{"value": "g1"}], "nickName": null, "madeUp": 1,
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:user": {"Department": "R&D", "manager": {"value": "m1"}}
        });
        let got = normalize(&input, USER).unwrap();
        assert_eq!(
            got,
            json!({
                "userName": "ann", "active": false,
                "emails": [{"value": "a@x", "primary": true}], "name": {"givenName": "Ann"},
                ENTERPRISE_URN: {"department": "R&D", "manager": {"value": "m1"}}
            })
        );
        let manager = normalize(&json!({ENTERPRISE_URN: {"manager": "m7"}}), USER).unwrap();
        assert_eq!(manager[ENTERPRISE_URN]["manager"], json!({"value": "m7"}));
        for bad in [json!({"active": "maybe"}), json!({"userName": 5}), json!({"name": "Ann"}), json!([])] {
            assert!(normalize(&bad, USER).is_err(), "{bad}");
        }
        let group = normalize(&json!({"displayName": "G", "members": [{"value": "u1", "$ref": null}]}), GROUP).unwrap();
        assert_eq!(group, json!({"displayName": "G", "members": [{"value": "u1"}]}));
    }
}
