//! The discovery documents (RFC 7644 §4): what the server supports, truthfully.

use serde_json::{Value, json};

use super::MAX_RESULTS;
use super::state::ResourceType;
use crate::policy::scim::{Attr, Kind, Mutability, SchemaDef};

/// `/ServiceProviderConfig`: patch, filter and ETags yes; bulk, sort and password change no.
pub fn service_provider_config(base: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
        "patch": {"supported": true},
        "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": true, "maxResults": MAX_RESULTS},
        "changePassword": {"supported": false},
        "sort": {"supported": false},
        "etag": {"supported": true},
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "Bearer token",
            "description": "Authorization: Bearer <token>, or the token alone; tokens come from --scim-token",
            "primary": true
        }],
        "meta": {"resourceType": "ServiceProviderConfig", "location": format!("{base}/ServiceProviderConfig")}
    })
}

/// `/ResourceTypes`: User (with the enterprise extension) and Group.
pub fn resource_types(base: &str) -> Vec<Value> {
    [ResourceType::User, ResourceType::Group]
        .into_iter()
        .map(|ty| {
            let schemas = ty.schemas();
            let extensions: Vec<Value> =
                schemas[1..].iter().map(|s| json!({"schema": s.id, "required": false})).collect();
            json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
                "id": ty.name(),
                "name": ty.name(),
                "endpoint": format!("/{}", ty.endpoint()),
                "schema": schemas[0].id,
                "schemaExtensions": extensions,
                "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/{}", ty.name())}
            })
        })
        .collect()
}

/// `/Schemas`: every schema with its attributes.
pub fn schema_documents(base: &str) -> Vec<Value> {
    [ResourceType::User, ResourceType::Group]
        .into_iter()
        .flat_map(|ty| ty.schemas().iter())
        .map(|schema| schema_document(schema, base))
        .collect()
}

fn schema_document(schema: &SchemaDef, base: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": schema.id,
        "name": schema.name,
        "description": format!("{} as cedar-pdp keeps it", schema.name),
        "attributes": schema.attributes.iter().map(attribute).collect::<Vec<_>>(),
        "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{}", schema.id)}
    })
}

fn attribute(attr: &Attr) -> Value {
    let kind = match attr.kind {
        Kind::String => "string",
        Kind::Boolean => "boolean",
        Kind::DateTime => "dateTime",
        Kind::Reference => "reference",
        Kind::Complex => "complex",
        Kind::Binary => "binary",
    };
    let mutability = match attr.mutability {
        Mutability::ReadOnly => "readOnly",
        Mutability::ReadWrite => "readWrite",
        Mutability::WriteOnly => "writeOnly",
    };
    let mut out = json!({
        "name": attr.name,
        "type": kind,
        "multiValued": attr.multi,
        "description": attr.name,
        "required": attr.required,
        "caseExact": attr.case_exact,
        "mutability": mutability,
        "returned": attr.returned,
        "uniqueness": attr.uniqueness,
    });
    if !attr.sub.is_empty() {
        out["subAttributes"] = attr.sub.iter().map(attribute).collect();
    }
    if attr.kind == Kind::Reference {
        out["referenceTypes"] = json!(attr.reference_types);
    }
    out
}
