//! `authzen.toml`: how the AuthZEN API's names map to Cedar's. Optional; without it an AuthZEN type
//! is the Cedar type of the same name and an action is `Action::"<name>"`.
//!
//! ```toml
//! action_namespace = "App"            # action {"name": "view"} → App::Action::"view"
//! [types]
//! user = "App::User"                  # subject {"type": "user"} → App::User
//! document = "App::Document"
//! ```
//!
//! Validated with the directory (each Cedar type must parse and, with a schema, be declared; no two
//! names for one type) and reloaded with it.

use std::collections::BTreeMap;

use cedar_policy::{EntityTypeName, Schema};
use serde::Deserialize;

/// The file's name, at the top of the policy directory.
pub const FILE: &str = "authzen.toml";

/// AuthZEN names ⇄ Cedar types.
#[derive(Debug)]
pub struct AuthzenNames {
    to_cedar: BTreeMap<String, String>,
    to_authzen: BTreeMap<String, String>,
    action_type: String,
}

impl Default for AuthzenNames {
    fn default() -> Self {
        AuthzenNames { to_cedar: BTreeMap::new(), to_authzen: BTreeMap::new(), action_type: "Action".into() }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamesFile {
    action_namespace: Option<String>,
    #[serde(default)]
    types: BTreeMap<String, String>,
}

impl AuthzenNames {
    pub fn parse(text: &str, schema: Option<&Schema>) -> Result<Self, String> {
        let file: NamesFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let declared = |ty: &EntityTypeName| schema.is_none_or(|s| s.entity_types().any(|t| t == ty));
        let mut names = AuthzenNames::default();
        for (name, cedar) in file.types {
            let ty: EntityTypeName =
                cedar.parse().map_err(|e| format!("`types.{name}`: `{cedar}` is not a Cedar entity type: {e}"))?;
            if name.is_empty() || !declared(&ty) {
                return Err(format!("`types.{name}`: the schema declares no entity type `{cedar}`"));
            }
            if let Some(other) = names.to_authzen.insert(ty.to_string(), name.clone()) {
                return Err(format!("`types`: `{other}` and `{name}` both name `{cedar}`"));
            }
            names.to_cedar.insert(name, ty.to_string());
        }
        if let Some(namespace) = file.action_namespace {
            let ty: EntityTypeName = format!("{namespace}::Action")
                .parse()
                .map_err(|e| format!("`action_namespace`: `{namespace}` is not a Cedar namespace: {e}"))?;
            if let Some(schema) = schema
                && !schema.actions().any(|a| a.type_name() == &ty)
            {
                return Err(format!("`action_namespace`: the schema declares no action in `{namespace}`"));
            }
            names.action_type = ty.to_string();
        }
        Ok(names)
    }

    /// The Cedar type an AuthZEN type name stands for.
    pub fn cedar_type<'a>(&'a self, name: &'a str) -> &'a str {
        self.to_cedar.get(name).map_or(name, String::as_str)
    }

    /// The AuthZEN name of a Cedar type.
    pub fn authzen_type<'a>(&'a self, cedar: &'a str) -> &'a str {
        self.to_authzen.get(cedar).map_or(cedar, String::as_str)
    }

    /// The Cedar type of actions: `Action`, or `<namespace>::Action`.
    pub fn action_type(&self) -> &str {
        &self.action_type
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways_and_bad_files_are_refused() {
        let names = AuthzenNames::parse("action_namespace = \"App\"\n[types]\nuser = \"App::User\"\n", None).unwrap();
        assert_eq!(names.cedar_type("user"), "App::User");
        assert_eq!(names.authzen_type("App::User"), "user");
        assert_eq!(names.cedar_type("other"), "other");
        assert_eq!(names.action_type(), "App::Action");
        for (bad, says) in [
            ("[types]\nuser = \"not a type\"", "types.user"),
            ("[types]\nuser = \"App::User\"\nperson = \"App::User\"", "both name"),
            ("action_namespace = \"1x\"", "action_namespace"),
            ("colour = 1", "colour"),
        ] {
            let err = AuthzenNames::parse(bad, None).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let (schema, _) = Schema::from_cedarschema_str(
            "namespace App { entity User; action view appliesTo { principal: User, resource: User }; }",
        )
        .unwrap();
        assert!(
            AuthzenNames::parse("[types]\nuser = \"App::Person\"", Some(&schema)).unwrap_err().contains("declares no")
        );
        assert!(
            AuthzenNames::parse("action_namespace = \"Other\"", Some(&schema)).unwrap_err().contains("declares no")
        );
        assert!(
            AuthzenNames::parse("action_namespace = \"App\"\n[types]\nuser = \"App::User\"", Some(&schema)).is_ok()
        );
    }
}
