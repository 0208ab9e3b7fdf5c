//! A SCIM resource → the Cedar entity `scim.toml` maps it to.

#[cfg(test)]
use serde_json::json;
use serde_json::{Map, Value};

use super::attrs::target;
use super::state::ResourceType;
use crate::error::ScimError;
use crate::policy::scim::{ResourceMapping, ScimMapping, Source};

/// The mapping of one resource type.
pub fn mapping(mapping: &ScimMapping, ty: ResourceType) -> &ResourceMapping {
    match ty {
        ResourceType::User => &mapping.user,
        ResourceType::Group => &mapping.group,
    }
}

/// The Cedar uid (type, id) of a resource with `id`.
pub fn uid(mapping: &ResourceMapping, resource: &Value, id: &str) -> Result<(String, String), ScimError> {
    let cedar_id = match mapping.id.as_str() {
        "id" => id.to_string(),
        attr => resource
            .get(attr)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ScimError::invalid_value(format!("`{attr}` is required: scim.toml makes it the Cedar id")))?
            .to_string(),
    };
    Ok((mapping.cedar_type.clone(), cedar_id))
}

/// Whether a user is active: `active` absent means active.
pub fn active(resource: &Value) -> bool {
    resource.get("active").and_then(Value::as_bool).unwrap_or(true)
}

/// The Cedar attributes of a resource, by the mapping; a source with no value leaves the attribute
/// out (the schema then says whether it may be missing).
/// `refs`: the Cedar uids of the users `Source::Ref` attributes name, by SCIM id (see `references`).
pub fn attributes(mapping: &ResourceMapping, ty: ResourceType, resource: &Value, refs: &Refs) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, sources) in &mapping.attributes {
        if let Some(value) = sources.iter().find_map(|s| source(s, ty, resource, refs)) {
            out.insert(name.clone(), value);
        }
    }
    out
}

/// SCIM id → Cedar uid (type, id) of the users a resource references.
pub type Refs = std::collections::BTreeMap<String, (String, String)>;

/// The SCIM ids of the users a resource's `Source::Ref` attributes name.
pub fn references(mapping: &ResourceMapping, ty: ResourceType, resource: &Value) -> Vec<String> {
    mapping
        .attributes
        .values()
        .flatten()
        .filter_map(|s| match s {
            Source::Ref(path) => path_value(path, ty, resource)?.as_str().map(str::to_string),
            _ => None,
        })
        .collect()
}

fn source(source: &Source, ty: ResourceType, resource: &Value, refs: &Refs) -> Option<Value> {
    match source {
        // A user not provisioned (yet) leaves the attribute out.
        Source::Ref(path) => {
            let (ty, id) = refs.get(path_value(path, ty, resource)?.as_str()?)?;
            Some(serde_json::json!({"__entity": {"type": ty, "id": id}}))
        }
        Source::Email => email(resource).map(Value::from),
        Source::Not(path) => path_value(path, ty, resource).and_then(|v| v.as_bool()).map(|b| Value::Bool(!b)),
        Source::Path(path) => path_value(path, ty, resource),
    }
}

fn path_value(path: &str, ty: ResourceType, resource: &Value) -> Option<Value> {
    if path.eq_ignore_ascii_case("active") {
        return Some(Value::Bool(active(resource)));
    }
    let target = target(ty.schemas(), path)?;
    let values = if target.sub.is_none() && target.attr.sub.iter().all(|s| s.name != "value") {
        target.elements(resource)
    } else {
        target.values(resource)
    };
    if target.attr.multi && target.sub.is_none() {
        return Some(Value::Array(values.into_iter().cloned().collect()));
    }
    values.into_iter().next().cloned()
}

/// The primary email, else the work one, else the first.
fn email(resource: &Value) -> Option<&str> {
    let emails = resource.get("emails")?.as_array()?;
    let pick = |f: &dyn Fn(&Value) -> bool| emails.iter().find(|e| f(e)).and_then(|e| e.get("value")?.as_str());
    pick(&|e| e.get("primary") == Some(&Value::Bool(true)))
        .or_else(|| pick(&|e| e.get("type").and_then(Value::as_str) == Some("work")))
        .or_else(|| pick(&|_| true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_mapping_makes_the_entity_the_issue_describes() {
        let mapping = ScimMapping::default();
        let user = json!({"userName": "ann@x", "displayName": "Ann",
            "emails": [{"value": "home@x", "type": "home"}, {"value": "work@x", "type": "work"}]});
        let m = super::mapping(&mapping, ResourceType::User);
        assert_eq!(uid(m, &user, "id1").unwrap(), ("User".into(), "ann@x".into()));
        let attrs = attributes(m, ResourceType::User, &user, &Refs::new());
        assert_eq!(
            Value::Object(attrs),
            json!({"userName": "ann@x", "active": true, "displayName": "Ann", "email": "work@x"})
        );
        let group = json!({"displayName": "Admins"});
        let g = super::mapping(&mapping, ResourceType::Group);
        assert_eq!(uid(g, &group, "g1").unwrap(), ("Group".into(), "Admins".into()));
        let text = "[user]\nid = \"externalId\"\n[user.attributes]\nsuspended = \"!active\"\nname = [\"displayName\", \"userName\"]\nmails = \"emails\"";
        let custom = ScimMapping::parse(text, None).unwrap();
        let m = super::mapping(&custom, ResourceType::User);
        assert!(uid(m, &user, "id1").is_err(), "no externalId");
        let off = json!({"userName": "bo", "active": false, "emails": [{"value": "b@x"}]});
        assert_eq!(
            Value::Object(attributes(m, ResourceType::User, &off, &Refs::new())),
            json!({"suspended": true, "name": "bo", "mails": ["b@x"]})
        );
        let text = "[user.attributes]\nboss = \"&urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager\"";
        let with_manager = ScimMapping::parse(text, None).unwrap();
        let m = super::mapping(&with_manager, ResourceType::User);
        let managed = json!({"userName": "cy", "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"manager": {"value": "m1"}}});
        assert_eq!(references(m, ResourceType::User, &managed), vec!["m1".to_string()]);
        let refs = Refs::from([("m1".to_string(), ("User".to_string(), "dee".to_string()))]);
        assert_eq!(
            Value::Object(attributes(m, ResourceType::User, &managed, &refs)),
            json!({"boss": {"__entity": {"type": "User", "id": "dee"}}})
        );
    }
}
