//! Attribute paths resolved against the schemas, and reading their values from a stored resource.
//! Stored resources use each attribute's canonical name, so a resolved path reads them directly;
//! extension attributes sit under their schema's URN.

use serde_json::Value;

use crate::policy::scim::{Attr, Kind, Mutability, SchemaDef, resolve};

/// The attributes every resource has (RFC 7643 §3.1).
pub const COMMON: &[Attr] = &[
    Attr {
        name: "id",
        kind: Kind::String,
        multi: false,
        required: false,
        case_exact: true,
        mutability: Mutability::ReadOnly,
        returned: "always",
        uniqueness: "server",
        sub: &[],
        reference_types: &[],
    },
    Attr {
        name: "externalId",
        kind: Kind::String,
        multi: false,
        required: false,
        case_exact: true,
        mutability: Mutability::ReadWrite,
        returned: "default",
        uniqueness: "none",
        sub: &[],
        reference_types: &[],
    },
    Attr {
        name: "meta",
        kind: Kind::Complex,
        multi: false,
        required: false,
        case_exact: false,
        mutability: Mutability::ReadOnly,
        returned: "default",
        uniqueness: "none",
        sub: &[
            meta_attr("resourceType", Kind::String),
            meta_attr("created", Kind::DateTime),
            meta_attr("lastModified", Kind::DateTime),
            meta_attr("location", Kind::Reference),
            meta_attr("version", Kind::String),
        ],
        reference_types: &[],
    },
];

const fn meta_attr(name: &'static str, kind: Kind) -> Attr {
    Attr {
        name,
        kind,
        multi: false,
        required: false,
        case_exact: true,
        mutability: Mutability::ReadOnly,
        returned: "default",
        uniqueness: "none",
        sub: &[],
        reference_types: &[],
    }
}

/// A resolved attribute path: an attribute (of the core schema, an extension or the common ones),
/// or one of its sub-attributes; or, inside a value filter, a sub-attribute of the element.
#[derive(Debug, Clone)]
pub struct Target {
    /// The extension's URN, for an extension attribute.
    pub extension: Option<&'static str>,
    pub attr: &'static Attr,
    pub sub: Option<&'static Attr>,
}

/// Resolves `path` for a resource type described by `schemas` (the core schema first).
pub fn target(schemas: &'static [SchemaDef], path: &str) -> Option<Target> {
    let (name, sub) = match path.split_once('.') {
        Some((name, sub)) if !name.contains(':') => (name, Some(sub)),
        _ => (path, None),
    };
    if let Some(attr) = COMMON.iter().find(|a| a.name.eq_ignore_ascii_case(name)) {
        let sub = match sub {
            Some(s) => Some(attr.sub.iter().find(|a| a.name.eq_ignore_ascii_case(s))?),
            None => None,
        };
        return Some(Target { extension: None, attr, sub });
    }
    let (schema, attr, sub) = resolve(schemas, path)?;
    let extension = (schema.id != schemas[0].id).then_some(schema.id);
    Some(Target { extension, attr, sub })
}

impl Target {
    pub fn name(&self) -> &'static str {
        self.sub.unwrap_or(self.attr).name
    }

    /// The attribute (or sub-attribute) the path ends at.
    pub fn leaf(&self) -> &'static Attr {
        self.sub.unwrap_or(self.attr)
    }

    pub fn is_multi_complex(&self) -> bool {
        self.sub.is_none() && self.attr.multi && self.attr.kind == Kind::Complex
    }

    pub fn case_exact(&self) -> bool {
        match (self.sub, self.attr.kind) {
            (Some(sub), _) => sub.case_exact,
            (None, Kind::Complex) => self.attr.sub.iter().find(|a| a.name == "value").is_some_and(|a| a.case_exact),
            (None, _) => self.attr.case_exact,
        }
    }

    /// The type a comparison on this path compares: a complex attribute compares its `value`.
    pub fn compared_kind(&self) -> Option<Kind> {
        match (self.sub, self.attr.kind) {
            (Some(sub), _) => Some(sub.kind),
            (None, Kind::Complex) => self.attr.sub.iter().find(|a| a.name == "value").map(|a| a.kind),
            (None, kind) => Some(kind),
        }
    }

    /// A sub-attribute of this (complex) attribute, as a path relative to one of its elements.
    pub fn sub(&self, name: &str) -> Option<Target> {
        if self.sub.is_some() {
            return None;
        }
        let attr = self.attr.sub.iter().find(|a| a.name.eq_ignore_ascii_case(name))?;
        Some(Target { extension: None, attr, sub: None })
    }

    /// The attribute's container in `resource`: the resource, or its extension object.
    pub fn container<'a>(&self, resource: &'a Value) -> Option<&'a Value> {
        match self.extension {
            Some(urn) => resource.get(urn),
            None => Some(resource),
        }
    }

    /// The attribute's elements: each value of a multi-valued attribute, or the one value.
    pub fn elements<'a>(&self, resource: &'a Value) -> Vec<&'a Value> {
        match self.container(resource).and_then(|c| c.get(self.attr.name)) {
            Some(Value::Array(items)) => items.iter().collect(),
            Some(Value::Null) | None => Vec::new(),
            Some(one) => vec![one],
        }
    }

    /// Every value the path reaches (a complex attribute without a sub-attribute: its `value`s).
    pub fn values<'a>(&self, resource: &'a Value) -> Vec<&'a Value> {
        let elements = self.elements(resource);
        let sub = match (self.sub, self.attr.kind) {
            (Some(sub), _) => sub.name,
            (None, Kind::Complex) => "value",
            (None, _) => return elements,
        };
        elements.into_iter().filter_map(|e| e.get(sub)).collect()
    }
}
