//! Write validation: an EntityService batch checked whole against the snapshot (schema, file
//! entities, actions, cycles through the batch, the files and the store) into [`Change`]s, and the
//! idempotency key of a write.

use std::time::Duration;

use cedar_policy::{Entities, Entity, EntityUid};

use super::{Change, EntityStore, key_of};
use crate::authz::{UidRef, parse_uid};
use crate::error::{RequestError, StoreError};
use crate::policy::{Snapshot, collect_uids};

/// A write's idempotency key and a digest of what it writes: a retry with the same key returns the
/// first outcome, and the same key on a different batch is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    pub id: String,
    pub digest: String,
}

impl RequestKey {
    /// How long a key is remembered, at least.
    pub const KEPT: Duration = Duration::from_secs(24 * 3600);

    /// None for an empty id; an id that is too long or not visible ASCII is refused.
    pub fn new(id: &str, changes: &[Change]) -> Result<Option<Self>, RequestError> {
        if id.is_empty() {
            return Ok(None);
        }
        if id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(RequestError::invalid("request_id", "at most 128 visible ASCII characters"));
        }
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        for change in changes {
            hash.update(change.operation());
            hash.update([0]);
            hash.update(key_of(change.uid()));
            hash.update([0]);
            if let Change::Upsert { json, .. } = change {
                hash.update(canonical(json));
            }
            hash.update([0]);
        }
        let digest = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok(Some(RequestKey { id: id.to_string(), digest }))
    }
}

/// A JSON text that is the same for the same entity however Cedar ordered it: object keys sorted,
/// and the parents (a set, in hash order) sorted too.
fn canonical(value: &serde_json::Value) -> String {
    fn write(value: &serde_json::Value, sort_array: bool, out: &mut String) {
        match value {
            serde_json::Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, key) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::String(key.clone()).to_string());
                    out.push(':');
                    write(&map[key], key == "parents", out);
                }
                out.push('}');
            }
            serde_json::Value::Array(items) => {
                let mut parts: Vec<String> = items
                    .iter()
                    .map(|item| {
                        let mut text = String::new();
                        write(item, false, &mut text);
                        text
                    })
                    .collect();
                if sort_array {
                    parts.sort();
                }
                out.push('[');
                out.push_str(&parts.join(","));
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(value, false, &mut out);
    out
}

/// An entity as a client sent it to the EntityService.
#[derive(Debug, Clone)]
pub struct EntityInput<'a> {
    pub uid: Option<UidRef<'a>>,
    pub attrs_json: &'a str,
    pub parents: Vec<UidRef<'a>>,
    pub tags_json: &'a str,
}

/// Validates an upsert batch against the snapshot (schema, file entities) into changes; the first
/// invalid entity rejects the batch, named by its index.
pub fn validate_upserts(snapshot: &Snapshot, inputs: &[EntityInput<'_>]) -> Result<Vec<Change>, RequestError> {
    let mut seen = std::collections::HashSet::new();
    let mut changes = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        let field = format!("entities[{i}]");
        let uid = writable_uid(snapshot, input.uid, &format!("{field}.uid"))?;
        if !seen.insert(uid.clone()) {
            return Err(RequestError::invalid(&format!("{field}.uid"), format!("`{uid}` appears twice in the batch")));
        }
        let attrs = json_record(input.attrs_json, &format!("{field}.attrs_json"))?;
        let parents = input
            .parents
            .iter()
            .enumerate()
            .map(|(j, p)| {
                let parent = parse_uid(snapshot, Some(*p), &format!("{field}.parents[{j}]"))?;
                Ok(serde_json::json!({"type": parent.type_name().to_string(), "id": parent.id().unescaped()}))
            })
            .collect::<Result<Vec<_>, RequestError>>()?;
        let mut json = serde_json::json!({
            "uid": {"type": uid.type_name().to_string(), "id": uid.id().unescaped()},
            "attrs": attrs,
            "parents": parents,
        });
        if !input.tags_json.trim().is_empty() {
            json["tags"] = json_record(input.tags_json, &format!("{field}.tags_json"))?;
        }
        let entity = Entity::from_json_value(json, snapshot.schema.as_ref())
            .map_err(|e| RequestError::schema(&field, format!("`{uid}`: {}", explain(&e))))?;
        // Canonical form: explicit escapes, so it parses the same later without the schema.
        let json = entity.to_json_value().map_err(|e| RequestError::invalid(&field, e))?;
        changes.push((field, entity, Change::Upsert { uid, json }));
    }
    if let Some(schema) = &snapshot.schema {
        // Whole-batch conformance (parent types, required attributes), as Cedar checks an entity file.
        let entities: Vec<Entity> = changes.iter().map(|(_, e, _)| e.clone()).collect();
        if let Err(e) = Entities::from_entities(entities, Some(schema)) {
            let text = explain(&e);
            let field = changes
                .iter()
                .find(|(_, _, c)| text.contains(&c.uid().to_string()))
                .map_or("entities", |(f, _, _)| f.as_str());
            return Err(RequestError::schema(field, text));
        }
    }
    Ok(changes.into_iter().map(|(_, _, change)| change).collect())
}

/// Refuses a batch whose parents would make an entity its own ancestor, through the batch, the files
/// and the store: Cedar refuses a cyclic entity graph, so every decision reading it would fail.
/// (Two concurrent batches could still close a cycle between them; decisions on it then fail closed.)
pub async fn check_acyclic(
    store: &EntityStore,
    snapshot: &Snapshot,
    changes: &[Change],
) -> Result<(), crate::error::DecideError> {
    let mut parents_in_batch: std::collections::HashMap<&EntityUid, Vec<EntityUid>> = Default::default();
    for change in changes {
        if let Change::Upsert { uid, json } = change {
            let mut parents = Vec::new();
            if let Some(p) = json.get("parents") {
                collect_uids(p, &mut parents);
            }
            parents_in_batch.insert(uid, parents);
        }
    }
    // Breadth first over every upserted entity's ancestors at once, one store read per level.
    let mut frontier: Vec<(EntityUid, usize)> = Vec::new();
    for (i, change) in changes.iter().enumerate() {
        if let Some(parents) = parents_in_batch.get(change.uid()) {
            frontier.extend(parents.iter().map(|p| (p.clone(), i)));
        }
    }
    let mut visited: std::collections::HashSet<(EntityUid, usize)> = Default::default();
    let mut stored_parents: std::collections::HashMap<EntityUid, Vec<EntityUid>> = Default::default();
    while !frontier.is_empty() {
        let mut next = Vec::new();
        let mut pending: Vec<(EntityUid, usize)> = Vec::new();
        for (uid, i) in frontier.drain(..) {
            if changes[i].uid() == &uid {
                return Err(RequestError::invalid(
                    &format!("entities[{i}].parents"),
                    format!("`{uid}` would become its own ancestor"),
                )
                .into());
            }
            if !visited.insert((uid.clone(), i)) {
                continue;
            }
            if let Some(parents) = parents_in_batch.get(&uid).or_else(|| stored_parents.get(&uid)) {
                next.extend(parents.iter().map(|p| (p.clone(), i)));
            } else if let Some(ancestors) = snapshot.entities.ancestors(&uid) {
                next.extend(ancestors.map(|a| (a.clone(), i)));
            } else {
                pending.push((uid, i));
            }
        }
        if !pending.is_empty() {
            let unique: std::collections::HashSet<&EntityUid> = pending.iter().map(|(u, _)| u).collect();
            let uids: Vec<EntityUid> = unique.into_iter().cloned().collect();
            let (records, _) = store.fetch(&uids, 0, true).await?;
            for (uid, record) in uids.into_iter().zip(records) {
                stored_parents.insert(uid, record.map(|r| r.parents.to_vec()).unwrap_or_default());
            }
            if stored_parents.len() > store.max_decision_entities {
                return Err(StoreError::TooManyEntities(store.max_decision_entities).into());
            }
            for (uid, i) in pending {
                next.extend(stored_parents.get(&uid).into_iter().flatten().map(|p| (p.clone(), i)));
            }
        }
        frontier = next;
    }
    Ok(())
}

/// A Cedar error with its causes and help: the top line alone ("entity does not conform to the
/// schema") does not say which attribute.
fn explain(err: &dyn miette::Diagnostic) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    if let Some(help) = err.help() {
        text.push_str(&format!(" (help: {help})"));
    }
    text
}

/// Validates a delete batch into changes.
pub fn validate_deletes(snapshot: &Snapshot, uids: &[Option<UidRef<'_>>]) -> Result<Vec<Change>, RequestError> {
    let mut seen = std::collections::HashSet::new();
    let mut changes = Vec::with_capacity(uids.len());
    for (i, uid) in uids.iter().enumerate() {
        let field = format!("uids[{i}]");
        let uid = writable_uid(snapshot, *uid, &field)?;
        if seen.insert(uid.clone()) {
            changes.push(Change::Delete { uid });
        }
    }
    Ok(changes)
}

/// A uid the EntityService may write: not an action, not an entity the policy files define.
fn writable_uid(snapshot: &Snapshot, uid: Option<UidRef<'_>>, field: &str) -> Result<EntityUid, RequestError> {
    let uid = parse_uid(snapshot, uid, field)?;
    if uid.type_name().basename() == "Action" {
        return Err(RequestError::invalid(field, format!("`{uid}` is an action; actions come from the schema")));
    }
    if snapshot.entities.get(&uid).is_some() {
        return Err(RequestError::invalid(
            field,
            format!("`{uid}` is defined in the policy directory's entity files; change it there"),
        ));
    }
    Ok(uid)
}

fn json_record(text: &str, field: &str) -> Result<serde_json::Value, RequestError> {
    if text.trim().is_empty() {
        return Ok(serde_json::json!({}));
    }
    crate::json::refuse_duplicate_keys(text).map_err(|e| RequestError::invalid(field, e))?;
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| RequestError::invalid(field, e))?;
    if !value.is_object() {
        return Err(RequestError::invalid(field, "expected a JSON object"));
    }
    Ok(value)
}
