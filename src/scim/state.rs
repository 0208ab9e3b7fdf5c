//! SCIM state in the entity store, and the write transaction that keeps it and the Cedar entities
//! together (see `mod.rs` for the layout).

use std::collections::BTreeMap;
use std::sync::Arc;

use cedar_policy::EntityUid;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::filter::{Filter, Op};
use super::{Failure, cedar};
use crate::authz::UidRef;
use crate::entities::{self, Change, EntityInput, EntityStore, Guard, Record, key_of, uid_of_key};
use crate::error::{ScimError, StoreError};
use crate::policy::Snapshot;
use crate::policy::scim::{GROUP, SchemaDef, USER};

const STATE_NS: &str = "CedarPdp::Scim";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceType {
    User,
    Group,
}

impl ResourceType {
    pub fn name(self) -> &'static str {
        match self {
            ResourceType::User => "User",
            ResourceType::Group => "Group",
        }
    }

    pub fn endpoint(self) -> &'static str {
        match self {
            ResourceType::User => "Users",
            ResourceType::Group => "Groups",
        }
    }

    pub fn schemas(self) -> &'static [SchemaDef] {
        match self {
            ResourceType::User => USER,
            ResourceType::Group => GROUP,
        }
    }

    /// The attribute that must be unique (case-insensitively).
    fn unique(self) -> &'static str {
        match self {
            ResourceType::User => "userName",
            ResourceType::Group => "displayName",
        }
    }

    fn state_uid(self, id: &str) -> Result<EntityUid, ScimError> {
        uid(self.name(), id)
    }

    fn name_uid(self, name: &str) -> Result<EntityUid, ScimError> {
        uid("Name", &format!("{}:{}", self.name().to_lowercase(), name.to_lowercase()))
    }
}

fn uid(kind: &str, id: &str) -> Result<EntityUid, ScimError> {
    let ty = format!("{STATE_NS}::{kind}").parse().map_err(|e| ScimError::new(500, None, format!("{e}")))?;
    Ok(EntityUid::from_type_name_and_id(ty, cedar_policy::EntityId::new(id)))
}

fn owner_uid(cedar: &str) -> Result<EntityUid, ScimError> {
    uid("Owner", cedar)
}

/// A group a resource is a direct member of.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Membership {
    pub value: String,
    pub display: String,
    /// The group's Cedar uid key.
    pub cedar: String,
}

/// A SCIM resource as stored, with its store revision (its ETag).
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: String,
    /// The stored form (no `groups`: see `memberships`), with `id` and `meta` (created, lastModified).
    pub resource: Value,
    pub revision: u64,
    pub memberships: Vec<Membership>,
    /// The key of the Cedar uid it maps to.
    pub cedar: String,
    /// Whether a user counts as active in Cedar: its `active`, or while that is unassigned the last
    /// value it had (new users: active). Removing `active` in SCIM never reactivates in Cedar.
    pub active: bool,
}

impl Stored {
    fn from_record(id: &str, record: &Record) -> Result<Self, StoreError> {
        let json = record.json();
        let text = |name: &str| json["attrs"][name].as_str().map(str::to_string);
        let corrupt = |what: &str| StoreError::Corrupt(format!("SCIM state of `{id}`: {what}"));
        let resource = serde_json::from_str(&text("resource").ok_or_else(|| corrupt("no resource"))?)
            .map_err(|e| corrupt(&e.to_string()))?;
        let memberships = serde_json::from_str(&text("groups").unwrap_or_else(|| "[]".into()))
            .map_err(|e| corrupt(&e.to_string()))?;
        let active = json["attrs"]["active"].as_bool().unwrap_or_else(|| cedar::active(&resource));
        Ok(Stored {
            id: id.to_string(),
            resource,
            revision: record.revision,
            memberships,
            cedar: text("cedar").unwrap_or_default(),
            active,
        })
    }

    /// The ETag: a weak validator of the store revision that last wrote the resource.
    pub fn etag(&self) -> String {
        format!("W/\"{}\"", self.revision)
    }

    /// The SCIM representation: schemas, the attributes, `groups` for a user, and `meta`.
    pub fn render(&self, ty: ResourceType, base: &str) -> Value {
        let mut out = self.resource.clone();
        let schemas: Vec<&str> = ty
            .schemas()
            .iter()
            .enumerate()
            .filter(|(i, s)| *i == 0 || out.get(s.id).is_some())
            .map(|(_, s)| s.id)
            .collect();
        out["schemas"] = json!(schemas);
        out["id"] = json!(self.id);
        if ty == ResourceType::User && !self.memberships.is_empty() {
            let groups: Vec<Value> = self
                .memberships
                .iter()
                .map(|m| {
                    json!({"value": m.value, "display": m.display, "type": "direct",
                    "$ref": format!("{base}/Groups/{}", m.value)})
                })
                .collect();
            out["groups"] = json!(groups);
        }
        out["meta"]["resourceType"] = json!(ty.name());
        out["meta"]["location"] = json!(format!("{base}/{}/{}", ty.endpoint(), self.id));
        out["meta"]["version"] = json!(self.etag());
        out
    }

    fn state_json(&self, ty: ResourceType) -> Result<Value, ScimError> {
        let memberships =
            serde_json::to_string(&self.memberships).map_err(|e| ScimError::new(500, None, e.to_string()))?;
        Ok(json!({
            "uid": {"type": format!("{STATE_NS}::{}", ty.name()), "id": self.id},
            "attrs": {"resource": self.resource.to_string(), "cedar": self.cedar, "groups": memberships,
                      "active": self.active},
            "parents": []
        }))
    }
}

/// A resource by id.
pub async fn read(store: &EntityStore, ty: ResourceType, id: &str) -> Result<Option<Stored>, ScimError> {
    let uid = ty.state_uid(id)?;
    match store.get(&uid).await? {
        Some(record) => Ok(Some(Stored::from_record(id, &record)?)),
        None => Ok(None),
    }
}

/// The value of a top-level `<unique attribute> eq "…"` filter: answered from the name index.
pub fn name_lookup(ty: ResourceType, filter: &Filter) -> Option<String> {
    match filter {
        Filter::Compare(t, Op::Eq, Value::String(name)) if t.sub.is_none() && t.attr.name == ty.unique() => {
            Some(name.clone())
        }
        _ => None,
    }
}

/// The resource holding a unique name.
pub async fn by_name(store: &EntityStore, ty: ResourceType, name: &str) -> Result<Option<Stored>, ScimError> {
    let Some(record) = store.get(&ty.name_uid(name)?).await? else { return Ok(None) };
    let Some(id) = record.json()["attrs"]["id"].as_str().map(str::to_string) else { return Ok(None) };
    // The name entity and the state are written together; still, trust the state's own name.
    let found = read(store, ty, &id).await?;
    // Compared as the index keys it: Unicode lowercase, as a full-scan filter compares too.
    let wanted = name.to_lowercase();
    Ok(found
        .filter(|s| s.resource.get(ty.unique()).and_then(Value::as_str).is_some_and(|n| n.to_lowercase() == wanted)))
}

/// Every resource of `ty` that `keep` accepts, in id order.
pub async fn scan(
    store: &EntityStore,
    ty: ResourceType,
    keep: impl Fn(&Value) -> bool,
) -> Result<Vec<Stored>, ScimError> {
    let state_type = format!("{STATE_NS}::{}", ty.name());
    let (mut out, mut after) = (Vec::new(), String::new());
    loop {
        let (records, next) = store.list(&state_type, &after, 1000).await?;
        for record in &records {
            let uid = record.uid()?;
            let stored = Stored::from_record(uid.id().unescaped(), record)?;
            if keep(&stored.render_for_filter(ty)) {
                out.push(stored);
            }
        }
        match next {
            Some(next) => after = next,
            None => return Ok(out),
        }
    }
}

impl Stored {
    /// What a filter sees: the stored form with `groups` (users) and `meta.resourceType`.
    fn render_for_filter(&self, ty: ResourceType) -> Value {
        self.render(ty, "")
    }
}

/// The guards that keep EntityService writes off SCIM's entities (see `mod.rs`): each uid's owner
/// mark must be absent when the write applies. No read first: the store checks them in the write.
pub fn ownership_guards(uids: &[EntityUid]) -> Result<Vec<Guard>, ScimError> {
    uids.iter()
        .map(|uid| {
            if uid.type_name().to_string().starts_with(crate::policy::RESERVED_NAMESPACE) {
                return Err(ScimError::invalid_value(format!("`{uid}` is SCIM's own state")));
            }
            Ok(Guard { uid: owner_uid(&key_of(uid))?, revision: 0 })
        })
        .collect()
}

/// A guarded EntityService write that failed on an owner mark: the uid it names is SCIM's.
pub fn owned_by_scim(err: &StoreError) -> Option<ScimError> {
    let StoreError::Conflict(key) = err else { return None };
    let mark: EntityUid = key.parse().ok()?;
    if mark.type_name().to_string() != format!("{STATE_NS}::Owner") {
        return None;
    }
    let cedar = mark.id().unescaped().to_string();
    Some(ScimError::new(409, Some("uniqueness"), format!("`{cedar}` is provisioned through SCIM; change it there")))
}

/// A Cedar entity to write: its uid, attributes and parents.
struct CedarEntity {
    uid: (String, String),
    attrs: serde_json::Map<String, Value>,
    parents: Vec<(String, String)>,
}

/// One SCIM write: what it read (each read becomes a guard), and what it writes.
pub struct Txn<'a> {
    store: &'a EntityStore,
    snapshot: Arc<Snapshot>,
    read: BTreeMap<String, (EntityUid, Option<Arc<Record>>)>,
    state: BTreeMap<String, Change>,
    cedar_upserts: BTreeMap<String, CedarEntity>,
    cedar_deletes: BTreeMap<String, EntityUid>,
    /// The resource the caller asked about, after the write (revision set at commit).
    result: Option<Stored>,
    /// The Cedar uids of users that mapped attributes reference, by SCIM id.
    refs: cedar::Refs,
    now: String,
}

impl<'a> Txn<'a> {
    pub fn new(store: &'a EntityStore, snapshot: Arc<Snapshot>) -> Self {
        Txn {
            store,
            snapshot,
            read: BTreeMap::new(),
            state: BTreeMap::new(),
            cedar_upserts: BTreeMap::new(),
            cedar_deletes: BTreeMap::new(),
            result: None,
            refs: cedar::Refs::new(),
            now: crate::entities::rfc3339(std::time::SystemTime::now()),
        }
    }

    /// Reads `uids` from the store (past the cache), each read guarding the write.
    async fn fetch(&mut self, uids: &[EntityUid]) -> Result<Vec<Option<Arc<Record>>>, Failure> {
        let missing: Vec<EntityUid> = uids.iter().filter(|u| !self.read.contains_key(&key_of(u))).cloned().collect();
        if !missing.is_empty() {
            let (records, _) = self.store.fetch(&missing, 0, true).await?;
            for (uid, record) in missing.into_iter().zip(records) {
                self.read.insert(key_of(&uid), (uid, record));
            }
        }
        Ok(uids.iter().map(|u| self.read.get(&key_of(u)).and_then(|(_, r)| r.clone())).collect())
    }

    async fn fetch_one(&mut self, uid: EntityUid) -> Result<Option<Arc<Record>>, Failure> {
        Ok(self.fetch(std::slice::from_ref(&uid)).await?.pop().flatten())
    }

    async fn stored(&mut self, ty: ResourceType, id: &str) -> Result<Option<Stored>, Failure> {
        let record = self.fetch_one(ty.state_uid(id)?).await?;
        Ok(record.map(|r| Stored::from_record(id, &r)).transpose()?)
    }

    /// The resource to change, checked against `If-Match`.
    pub async fn current(&mut self, ty: ResourceType, id: &str, if_match: Option<&str>) -> Result<Stored, Failure> {
        let current = self.stored(ty, id).await?.ok_or_else(|| super::not_found(ty, id))?;
        if let Some(wanted) = if_match
            && wanted.trim() != "*"
            && !wanted
                .split(',')
                .any(|tag| tag.trim().trim_start_matches("W/") == current.etag().trim_start_matches("W/"))
        {
            return Err(ScimError::new(
                412,
                None,
                format!("the {} changed: its version is {}", ty.name(), current.etag()),
            )
            .into());
        }
        Ok(current)
    }

    /// Writes `resource` (stored form, without server fields) as the resource `id`, replacing
    /// `current`, with everything that follows: the unique name, the Cedar entity and its owner
    /// mark, and for a group its members' memberships and Cedar parents.
    pub async fn put(
        &mut self,
        ty: ResourceType,
        id: &str,
        mut resource: Value,
        current: Option<Stored>,
    ) -> Result<(), Failure> {
        let unique = ty.unique();
        let name = resource
            .get(unique)
            .and_then(Value::as_str)
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| ScimError::invalid_value(format!("`{unique}` is required")))?
            .to_string();
        if let Some(holder) = self.fetch_one(ty.name_uid(&name)?).await?
            && holder.json()["attrs"]["id"].as_str() != Some(id)
        {
            return Err(ScimError::uniqueness(format!("`{unique}` `{name}` is taken")).into());
        }
        // Fail closed: a write that leaves `active` unassigned (a PUT without it, a PATCH removing it)
        // keeps the Cedar side's last value, so it cannot bring a deactivated user's groups back.
        let active = match resource.get("active").and_then(Value::as_bool) {
            Some(active) => active,
            None => current.as_ref().is_none_or(|c| c.active),
        };
        if ty == ResourceType::Group {
            dedupe_members(&mut resource);
        }
        let created = current.as_ref().and_then(|c| c.resource["meta"]["created"].as_str().map(str::to_string));
        resource["id"] = json!(id);
        resource["meta"] = json!({"created": created.unwrap_or_else(|| self.now.clone()), "lastModified": self.now});
        let mapping = self.snapshot.scim.clone();
        let cedar_uid = cedar::uid(cedar::mapping(&mapping, ty), &resource, id)?;
        let cedar_key = key_of(&parse_uid(&cedar_uid)?);
        self.claim(ty, id, &cedar_key).await?;
        if let Some(old) = &current {
            let old_name = old.resource.get(unique).and_then(Value::as_str).unwrap_or_default();
            if !old_name.eq_ignore_ascii_case(&name) {
                self.delete_state(ty.name_uid(old_name)?).await?;
            }
            if old.cedar != cedar_key {
                self.release(&old.cedar).await?;
            }
        }
        self.upsert_state(ty.name_uid(&name)?, json!({"id": id}))?;
        let memberships = current.as_ref().map(|c| c.memberships.clone()).unwrap_or_default();
        if ty == ResourceType::Group {
            self.members(id, &name, &cedar_key, &mut resource, current.as_ref()).await?;
        }
        let stored = Stored { id: id.to_string(), resource, revision: 0, memberships, cedar: cedar_key, active };
        self.write(ty, &stored).await?;
        self.result = Some(stored);
        Ok(())
    }

    /// Takes the Cedar uid for resource `id`: refused if another SCIM resource or the EntityService holds it.
    async fn claim(&mut self, ty: ResourceType, id: &str, cedar_key: &str) -> Result<(), Failure> {
        let owner_value = format!("{}/{id}", ty.name());
        match self.fetch_one(owner_uid(cedar_key)?).await? {
            Some(owner) if owner.json()["attrs"]["id"].as_str() == Some(owner_value.as_str()) => return Ok(()),
            Some(_) => {
                return Err(ScimError::uniqueness(format!("another SCIM resource maps to `{cedar_key}`")).into());
            }
            None => {}
        }
        let cedar = parse_key(cedar_key)?;
        if self.fetch_one(cedar).await?.is_some() {
            return Err(ScimError::uniqueness(format!(
                "`{cedar_key}` was provisioned through the EntityService; delete it there first"
            ))
            .into());
        }
        self.upsert_state(owner_uid(cedar_key)?, json!({"id": owner_value}))
    }

    /// Gives up a Cedar uid: the entity and its owner mark go.
    async fn release(&mut self, cedar_key: &str) -> Result<(), Failure> {
        self.delete_state(owner_uid(cedar_key)?).await?;
        let uid = parse_key(cedar_key)?;
        self.fetch_one(uid.clone()).await?;
        self.cedar_upserts.remove(cedar_key);
        self.cedar_deletes.insert(cedar_key.to_string(), uid);
        Ok(())
    }

    /// A group's members: each must exist; those whose membership changed (all of them when the
    /// group's name or Cedar uid changed) get their memberships and Cedar parents rewritten.
    async fn members(
        &mut self,
        id: &str,
        name: &str,
        cedar_key: &str,
        resource: &mut Value,
        current: Option<&Stored>,
    ) -> Result<(), Failure> {
        let ids = |r: &Value| -> Vec<String> {
            r.get("members")
                .and_then(Value::as_array)
                .map(|m| m.iter().filter_map(|m| m.get("value")?.as_str().map(str::to_string)).collect())
                .unwrap_or_default()
        };
        let (now, before) = (ids(resource), current.map(|c| ids(&c.resource)).unwrap_or_default());
        let renamed = current.is_some_and(|c| {
            c.cedar != cedar_key || c.resource.get("displayName").and_then(Value::as_str) != Some(name)
        });
        let mut seen = std::collections::BTreeSet::new();
        for member in now.iter().chain(&before) {
            if member == id {
                return Err(ScimError::invalid_value("a group cannot be a member of itself").into());
            }
            let (is, was) = (now.contains(member), before.contains(member));
            // Unchanged members keep their memberships and their stored `type`: a group of
            // thousands gains one member with one read.
            if !seen.insert(member.clone()) || !(renamed || is != was) {
                continue;
            }
            let Some((ty, mut stored)) = self.member(member).await? else {
                if is {
                    return Err(
                        ScimError::invalid_value(format!("`members`: no user or group has id `{member}`")).into()
                    );
                }
                continue;
            };
            if is && !was && ty == ResourceType::Group {
                self.refuse_cycle(id, member).await?;
            }
            stored.memberships.retain(|m| m.value != id);
            if is {
                stored.memberships.push(Membership { value: id.into(), display: name.into(), cedar: cedar_key.into() });
            }
            stored.resource["meta"]["lastModified"] = json!(self.now);
            self.write(ty, &stored).await?;
        }
        Ok(())
    }

    /// Adding group `member` to group `group`: refused if `member` is `group` or one of its
    /// ancestors. The ancestors are read through the transaction, so each is a guard: two writes on
    /// two replicas cannot close a cycle between them.
    async fn refuse_cycle(&mut self, group: &str, member: &str) -> Result<(), Failure> {
        let mut todo = vec![group.to_string()];
        let mut seen = std::collections::BTreeSet::new();
        while let Some(next) = todo.pop() {
            if next == member {
                return Err(
                    ScimError::invalid_value(format!("`members`: group `{member}` contains group `{group}`")).into()
                );
            }
            if !seen.insert(next.clone()) {
                continue;
            }
            if let Some(stored) = self.stored(ResourceType::Group, &next).await? {
                todo.extend(stored.memberships.into_iter().map(|m| m.value));
            }
        }
        Ok(())
    }

    async fn member(&mut self, id: &str) -> Result<Option<(ResourceType, Stored)>, Failure> {
        let uids = [ResourceType::User.state_uid(id)?, ResourceType::Group.state_uid(id)?];
        let records = self.fetch(&uids).await?;
        for (ty, record) in [ResourceType::User, ResourceType::Group].into_iter().zip(records) {
            if let Some(record) = record {
                // A member written earlier in this transaction is taken as written.
                let pending = self.pending(ty, id);
                return Ok(Some((ty, pending.unwrap_or(Stored::from_record(id, &record)?))));
            }
        }
        Ok(None)
    }

    fn pending(&self, ty: ResourceType, id: &str) -> Option<Stored> {
        let key = key_of(&ty.state_uid(id).ok()?);
        match self.state.get(&key)? {
            Change::Upsert { json, .. } => {
                let record = Record::parse(json.clone(), 0).ok()?;
                Stored::from_record(id, &record).ok()
            }
            Change::Delete { .. } => None,
        }
    }

    /// Removes a resource: its state, name, Cedar entity and owner mark, and it from every
    /// membership on either side.
    pub async fn remove(&mut self, ty: ResourceType, current: Stored) -> Result<(), Failure> {
        let id = current.id.clone();
        self.delete_state(ty.state_uid(&id)?).await?;
        let name = current.resource.get(ty.unique()).and_then(Value::as_str).unwrap_or_default();
        self.delete_state(ty.name_uid(name)?).await?;
        self.release(&current.cedar).await?;
        if ty == ResourceType::Group {
            // Members lose the membership (their Cedar parents follow).
            let mut emptied = current.resource.clone();
            emptied["members"] = json!([]);
            let (cedar, display) = (current.cedar.clone(), name.to_string());
            self.members(&id, &display, &cedar, &mut emptied, Some(&current)).await?;
            self.cedar_upserts.remove(&current.cedar);
        }
        for parent in &current.memberships {
            if let Some(mut group) = self.stored(ResourceType::Group, &parent.value).await? {
                if let Some(Value::Array(members)) = group.resource.get_mut("members") {
                    members.retain(|m| m.get("value").and_then(Value::as_str) != Some(id.as_str()));
                }
                if group.resource.get("members").and_then(Value::as_array).is_some_and(Vec::is_empty) {
                    group.resource.as_object_mut().map(|o| o.remove("members"));
                }
                self.write(ResourceType::Group, &group).await?;
            }
        }
        Ok(())
    }

    /// Reads (with guards) the users `stored`'s mapped references name, then queues its writes.
    async fn write(&mut self, ty: ResourceType, stored: &Stored) -> Result<(), Failure> {
        let mapping = self.snapshot.scim.clone();
        for id in cedar::references(cedar::mapping(&mapping, ty), ty, &stored.resource) {
            if self.refs.contains_key(&id) {
                continue;
            }
            let referenced = match self.pending(ResourceType::User, &id) {
                Some(pending) => Some(pending),
                None => self.stored(ResourceType::User, &id).await?,
            };
            if let Some(user) = referenced {
                self.refs.insert(id, parse_uid_pair(&user.cedar)?);
            }
        }
        self.queue(ty, stored)
    }

    /// Queues the state of `stored` and its Cedar entity.
    fn queue(&mut self, ty: ResourceType, stored: &Stored) -> Result<(), Failure> {
        self.upsert_state(ty.state_uid(&stored.id)?, stored.state_json(ty)?)?;
        let mapping = self.snapshot.scim.clone();
        let resource_mapping = cedar::mapping(&mapping, ty);
        let uid = parse_uid_pair(&stored.cedar)?;
        // The mapping sees the user's effective `active` (see `Stored::active`).
        let mut view = stored.resource.clone();
        if ty == ResourceType::User {
            view["active"] = json!(stored.active);
        }
        let attrs = cedar::attributes(resource_mapping, ty, &view, &self.refs);
        // Deprovisioning revokes: a deactivated user keeps its memberships in SCIM, not in Cedar.
        let parents = if ty == ResourceType::User && !stored.active {
            Vec::new()
        } else {
            stored.memberships.iter().map(|m| parse_uid_pair(&m.cedar)).collect::<Result<_, _>>()?
        };
        self.cedar_deletes.remove(&stored.cedar);
        self.cedar_upserts.insert(stored.cedar.clone(), CedarEntity { uid, attrs, parents });
        Ok(())
    }

    fn upsert_state(&mut self, uid: EntityUid, attrs_or_entity: Value) -> Result<(), Failure> {
        let json = if attrs_or_entity.get("uid").is_some() {
            attrs_or_entity
        } else {
            json!({"uid": {"type": uid.type_name().to_string(), "id": uid.id().unescaped()}, "attrs": attrs_or_entity, "parents": []})
        };
        self.state.insert(key_of(&uid), Change::Upsert { uid, json });
        Ok(())
    }

    async fn delete_state(&mut self, uid: EntityUid) -> Result<(), Failure> {
        self.fetch_one(uid.clone()).await?;
        self.state.insert(key_of(&uid), Change::Delete { uid });
        Ok(())
    }

    /// Validates the Cedar entities against the schema (and for cycles), then writes everything in
    /// one guarded store write; returns the resource the call was about.
    pub async fn commit(mut self, actor: &str) -> Result<Stored, Failure> {
        let cedar = std::mem::take(&mut self.cedar_upserts);
        let attrs: Vec<String> = cedar.values().map(|e| Value::Object(e.attrs.clone()).to_string()).collect();
        let inputs: Vec<EntityInput<'_>> = cedar
            .values()
            .zip(&attrs)
            .map(|(e, attrs)| EntityInput {
                uid: Some(UidRef { ty: &e.uid.0, id: &e.uid.1 }),
                attrs_json: attrs,
                parents: e.parents.iter().map(|(ty, id)| UidRef { ty, id }).collect(),
                tags_json: "",
            })
            .collect();
        let mut changes = entities::validate_upserts(&self.snapshot, &inputs)?;
        entities::check_acyclic(self.store, &self.snapshot, &changes).await?;
        changes.extend(self.cedar_deletes.values().map(|uid| Change::Delete { uid: uid.clone() }));
        changes.extend(std::mem::take(&mut self.state).into_values());
        let guards = self
            .read
            .values()
            .map(|(uid, record)| Guard { uid: uid.clone(), revision: record.as_ref().map_or(0, |r| r.revision) })
            .collect();
        let revision = self.store.apply_guarded(changes, guards, &format!("scim:{actor}"), None).await?;
        let mut result = self.result.take().unwrap_or_else(|| Stored {
            id: String::new(),
            resource: Value::Null,
            revision,
            memberships: Vec::new(),
            cedar: String::new(),
            active: true,
        });
        result.revision = revision;
        Ok(result)
    }
}

/// One entry per member id: the first one sent.
fn dedupe_members(resource: &mut Value) {
    if let Some(Value::Array(members)) = resource.get_mut("members") {
        let mut seen = std::collections::BTreeSet::new();
        members.retain(|m| seen.insert(m.get("value").map(Value::to_string).unwrap_or_default()));
    }
}

fn parse_key(key: &str) -> Result<EntityUid, ScimError> {
    uid_of_key(key).ok_or_else(|| ScimError::new(500, None, format!("a stored Cedar uid `{key}` does not parse")))
}

fn parse_uid_pair(key: &str) -> Result<(String, String), ScimError> {
    let uid = parse_key(key)?;
    Ok((uid.type_name().to_string(), uid.id().unescaped().to_string()))
}

fn parse_uid(pair: &(String, String)) -> Result<EntityUid, ScimError> {
    let ty = pair.0.parse().map_err(|e| ScimError::invalid_value(format!("`{}` is not a Cedar type: {e}", pair.0)))?;
    Ok(EntityUid::from_type_name_and_id(ty, cedar_policy::EntityId::new(&pair.1)))
}
