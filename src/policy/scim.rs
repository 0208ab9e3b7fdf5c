//! `scim.toml`: how SCIM users and groups become Cedar entities. Optional; without it a user is
//! `User::"<userName>"` with `userName`, `active`, and when present `displayName` and `email`, and a
//! group is `Group::"<displayName>"` with no attributes.
//!
//! ```toml
//! [user]
//! type = "User"                     # the Cedar entity type
//! id = "userName"                   # userName | externalId | id: which SCIM value is the Cedar id
//! [user.attributes]                 # Cedar attribute = SCIM source
//! name = ["displayName", "userName"]  # the first one present
//! suspended = "!active"             # a boolean, negated
//! department = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department"
//! email = "email"                   # the primary email, else the work one, else the first
//! manager = "&urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager"  # an entity reference
//! [group]
//! type = "Group"
//! id = "displayName"                # displayName | externalId | id
//! [group.attributes]
//! name = "displayName"
//! ```
//!
//! Validated with the directory (types parse and, with a schema, are declared; sources are
//! attribute paths of the SCIM schemas) and reloaded with it.

use std::collections::BTreeMap;

use cedar_policy::{EntityTypeName, Schema};
use serde::Deserialize;

/// The file's name, at the top of the policy directory.
pub const FILE: &str = "scim.toml";

/// Where a Cedar attribute's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A SCIM attribute path (`displayName`, `name.givenName`, `<extension URN>:department`).
    Path(String),
    /// A boolean SCIM attribute, negated (`!active`).
    Not(String),
    /// The primary email, else the work email, else the first.
    Email,
    /// A user's SCIM id at this path (`&…:manager`), as a reference to that user's Cedar entity.
    Ref(String),
}

/// One resource type's mapping.
#[derive(Debug, Clone)]
pub struct ResourceMapping {
    /// The Cedar entity type.
    pub cedar_type: String,
    /// Which SCIM value is the Cedar entity id.
    pub id: String,
    /// Cedar attribute → the sources tried in order.
    pub attributes: BTreeMap<String, Vec<Source>>,
}

/// The mapping of users and groups.
#[derive(Debug, Clone)]
pub struct ScimMapping {
    pub user: ResourceMapping,
    pub group: ResourceMapping,
}

impl Default for ScimMapping {
    fn default() -> Self {
        let path = |p: &str| vec![Source::Path(p.into())];
        ScimMapping {
            user: ResourceMapping {
                cedar_type: "User".into(),
                id: "userName".into(),
                attributes: BTreeMap::from([
                    ("userName".into(), path("userName")),
                    ("active".into(), path("active")),
                    ("displayName".into(), path("displayName")),
                    ("email".into(), vec![Source::Email]),
                ]),
            },
            group: ResourceMapping {
                cedar_type: "Group".into(),
                id: "displayName".into(),
                attributes: BTreeMap::new(),
            },
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    user: Option<SectionFile>,
    group: Option<SectionFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SectionFile {
    #[serde(rename = "type")]
    cedar_type: Option<String>,
    id: Option<String>,
    attributes: Option<BTreeMap<String, OneOrMany>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl ScimMapping {
    /// Parses `scim.toml`.
    pub fn parse(text: &str, schema: Option<&Schema>) -> Result<Self, String> {
        let file: MappingFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut mapping = ScimMapping::default();
        let sections = [
            ("user", file.user, &mut mapping.user, ["userName", "externalId", "id"]),
            ("group", file.group, &mut mapping.group, ["displayName", "externalId", "id"]),
        ];
        for (name, section, target, ids) in sections {
            let Some(section) = section else { continue };
            if let Some(ty) = section.cedar_type {
                let parsed: EntityTypeName =
                    ty.parse().map_err(|e| format!("`{name}.type`: `{ty}` is not a Cedar entity type: {e}"))?;
                if schema.is_some_and(|s| !s.entity_types().any(|t| t == &parsed)) {
                    return Err(format!("`{name}.type`: the schema declares no entity type `{ty}`"));
                }
                if parsed.to_string().starts_with(super::RESERVED_NAMESPACE) {
                    return Err(format!("`{name}.type`: `{ty}` is in the reserved namespace"));
                }
                target.cedar_type = parsed.to_string();
            }
            if let Some(id) = section.id {
                if !ids.contains(&id.as_str()) {
                    return Err(format!("`{name}.id`: `{id}`, expected one of {}", ids.join(", ")));
                }
                target.id = id;
            }
            if let Some(attributes) = section.attributes {
                target.attributes = attributes
                    .into_iter()
                    .map(|(attr, sources)| {
                        let texts = match sources {
                            OneOrMany::One(s) => vec![s],
                            OneOrMany::Many(v) => v,
                        };
                        let sources = texts
                            .iter()
                            .map(|t| source(t, |p| resolve(if name == "user" { USER } else { GROUP }, p).is_some()))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|e| format!("`{name}.attributes.{attr}`: {e}"))?;
                        if sources.is_empty() {
                            return Err(format!("`{name}.attributes.{attr}`: no source"));
                        }
                        Ok((attr, sources))
                    })
                    .collect::<Result<_, String>>()?;
            }
        }
        if mapping.user.cedar_type == mapping.group.cedar_type {
            return Err(format!("users and groups are both `{}`", mapping.user.cedar_type));
        }
        Ok(mapping)
    }
}

/// A SCIM attribute's type (RFC 7643 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    String,
    Boolean,
    DateTime,
    Reference,
    Complex,
    Binary,
}

/// Who may change an attribute (RFC 7643 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutability {
    ReadOnly,
    ReadWrite,
    WriteOnly,
}

/// One attribute of a SCIM schema, as `/Schemas` describes it and the server treats it.
#[derive(Debug)]
pub struct Attr {
    pub name: &'static str,
    pub kind: Kind,
    pub multi: bool,
    pub required: bool,
    pub case_exact: bool,
    pub mutability: Mutability,
    /// `default`, `always` or `never` (RFC 7643 §7).
    pub returned: &'static str,
    /// `none` or `server`.
    pub uniqueness: &'static str,
    pub sub: &'static [Attr],
    pub reference_types: &'static [&'static str],
}

const fn attr(name: &'static str, kind: Kind) -> Attr {
    Attr {
        name,
        kind,
        multi: false,
        required: false,
        case_exact: false,
        mutability: Mutability::ReadWrite,
        returned: "default",
        uniqueness: "none",
        sub: &[],
        reference_types: &[],
    }
}

const fn text(name: &'static str) -> Attr {
    attr(name, Kind::String)
}

const fn complex(name: &'static str, sub: &'static [Attr]) -> Attr {
    Attr { sub, ..attr(name, Kind::Complex) }
}

const fn many(name: &'static str, sub: &'static [Attr]) -> Attr {
    Attr { multi: true, ..complex(name, sub) }
}

const fn reference(name: &'static str, reference_types: &'static [&'static str]) -> Attr {
    Attr { reference_types, ..attr(name, Kind::Reference) }
}

const fn read_only(a: Attr) -> Attr {
    Attr { mutability: Mutability::ReadOnly, ..a }
}

/// value, display, type, primary: the sub-attributes of most multi-valued attributes.
const VALUED: &[Attr] = &[text("value"), text("display"), text("type"), attr("primary", Kind::Boolean)];

/// One SCIM schema: its URN and attributes.
#[derive(Debug)]
pub struct SchemaDef {
    pub id: &'static str,
    pub name: &'static str,
    pub attributes: &'static [Attr],
}

pub const USER_URN: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const ENTERPRISE_URN: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
pub const GROUP_URN: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";

/// The core User schema (RFC 7643 §4.1) and the enterprise extension (§4.3), first the core.
pub const USER: &[SchemaDef] = &[
    SchemaDef {
        id: USER_URN,
        name: "User",
        attributes: &[
            Attr { required: true, uniqueness: "server", ..text("userName") },
            complex(
                "name",
                &[
                    text("formatted"),
                    text("familyName"),
                    text("givenName"),
                    text("middleName"),
                    text("honorificPrefix"),
                    text("honorificSuffix"),
                ],
            ),
            text("displayName"),
            text("nickName"),
            reference("profileUrl", &["external"]),
            text("title"),
            text("userType"),
            text("preferredLanguage"),
            text("locale"),
            text("timezone"),
            attr("active", Kind::Boolean),
            Attr { mutability: Mutability::WriteOnly, returned: "never", ..text("password") },
            many("emails", VALUED),
            many("phoneNumbers", VALUED),
            many("ims", VALUED),
            many(
                "photos",
                &[reference("value", &["external"]), text("display"), text("type"), attr("primary", Kind::Boolean)],
            ),
            many(
                "addresses",
                &[
                    text("formatted"),
                    text("streetAddress"),
                    text("locality"),
                    text("region"),
                    text("postalCode"),
                    text("country"),
                    text("type"),
                    attr("primary", Kind::Boolean),
                ],
            ),
            read_only(many(
                "groups",
                &[
                    read_only(text("value")),
                    read_only(reference("$ref", &["User", "Group"])),
                    read_only(text("display")),
                    read_only(text("type")),
                ],
            )),
            many("entitlements", VALUED),
            many("roles", VALUED),
            many(
                "x509Certificates",
                &[attr("value", Kind::Binary), text("display"), text("type"), attr("primary", Kind::Boolean)],
            ),
        ],
    },
    SchemaDef {
        id: ENTERPRISE_URN,
        name: "EnterpriseUser",
        attributes: &[
            text("employeeNumber"),
            text("costCenter"),
            text("organization"),
            text("division"),
            text("department"),
            complex("manager", &[text("value"), reference("$ref", &["User"]), read_only(text("displayName"))]),
        ],
    },
];

/// The core Group schema (RFC 7643 §4.2).
pub const GROUP: &[SchemaDef] = &[SchemaDef {
    id: GROUP_URN,
    name: "Group",
    attributes: &[
        Attr { required: true, uniqueness: "server", ..text("displayName") },
        many(
            "members",
            &[
                Attr { mutability: Mutability::ReadWrite, ..text("value") },
                reference("$ref", &["User", "Group"]),
                text("display"),
                text("type"),
            ],
        ),
    ],
}];

/// Where an attribute path (`[URN:]name[.sub]`, names in any case) leads: its schema, attribute and
/// sub-attribute. None when a schema of `schemas` has no such attribute.
pub fn resolve<'a>(schemas: &'a [SchemaDef], path: &str) -> Option<(&'a SchemaDef, &'a Attr, Option<&'a Attr>)> {
    let (schema, rest) = schemas
        .iter()
        .find_map(|s| {
            let head = path.get(..s.id.len())?;
            (head.eq_ignore_ascii_case(s.id) && path[s.id.len()..].starts_with(':'))
                .then(|| (s, &path[s.id.len() + 1..]))
        })
        .unwrap_or((&schemas[0], path));
    let (name, sub) = match rest.split_once('.') {
        Some((name, sub)) => (name, Some(sub)),
        None => (rest, None),
    };
    let attr = schema.attributes.iter().find(|a| a.name.eq_ignore_ascii_case(name))?;
    match sub {
        None => Some((schema, attr, None)),
        Some(sub) => attr.sub.iter().find(|a| a.name.eq_ignore_ascii_case(sub)).map(|s| (schema, attr, Some(s))),
    }
}

fn source(text: &str, is_path: impl Fn(&str) -> bool) -> Result<Source, String> {
    if text == "email" {
        return Ok(Source::Email);
    }
    let (prefix, path) = match text.strip_prefix(['!', '&']) {
        Some(path) => (text.chars().next(), path),
        None => (None, text),
    };
    if !is_path(path) {
        return Err(format!("`{path}` is not an attribute of the SCIM schema"));
    }
    Ok(match prefix {
        Some('!') => Source::Not(path.into()),
        Some(_) => Source::Ref(path.into()),
        None => Source::Path(path.into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_parse_and_bad_ones_are_refused() {
        let m = ScimMapping::parse(
            "[user]\ntype = \"App::Person\"\nid = \"externalId\"\n[user.attributes]\nname = [\"displayName\", \"userName\"]\nsuspended = \"!active\"\n",
            None,
        )
        .unwrap();
        assert_eq!(m.user.cedar_type, "App::Person");
        assert_eq!(m.user.id, "externalId");
        assert_eq!(m.user.attributes["suspended"], vec![Source::Not("active".into())]);
        assert_eq!(m.user.attributes["name"].len(), 2);
        assert_eq!(m.group.cedar_type, "Group");
        let m = ScimMapping::parse(
            &format!("[user.attributes]\nd = \"{ENTERPRISE_URN}:department\"\ng = \"NAME.givenname\""),
            None,
        )
        .unwrap();
        assert_eq!(m.user.attributes.len(), 2);
        for (bad, says) in [
            ("[user]\nid = \"email\"", "user.id"),
            ("[user]\ntype = \"no type\"", "user.type"),
            ("[user.attributes]\nx = \"colour\"", "user.attributes.x"),
            ("[group]\ntype = \"User\"", "both"),
            ("[user]\ntype = \"CedarPdp::Scim::User\"", "reserved"),
            ("[user.attributes]\nx = \"name.nothing\"", "user.attributes.x"),
            ("colour = 1", "colour"),
        ] {
            let err = ScimMapping::parse(bad, None).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let (schema, _) = Schema::from_cedarschema_str("entity User; entity Group;").unwrap();
        assert!(ScimMapping::parse("[user]\ntype = \"Person\"", Some(&schema)).unwrap_err().contains("declares"));
    }
}
