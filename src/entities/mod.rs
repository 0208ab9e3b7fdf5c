//! Provisioned entities: the store that the EntityService writes and decisions read — an embedded
//! database on disk (the default), in memory, or Redis — with the in-process cache, invalidation and
//! the audit trail.
//!
//! Architecture invariants:
//! - A write is validated whole before anything is written, is applied all or nothing, and is applied
//!   only together with its audit records (one Lua script in Redis; one synced redb transaction
//!   embedded).
//! - Entities defined in the policy directory's files win: a write to such a uid is refused, and if a
//!   reload later defines a provisioned uid, decisions use the file's entity.
//! - A decision never treats an entity it could not read as absent: a store error is an error
//!   (`UNAVAILABLE`), never a decision (see `resolve.rs`).

mod audit;
mod cache;
mod legacy;
mod local;
mod redis;
mod resolve;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cedar_policy::{Entities, Entity, EntityUid};

pub use audit::{AuditFilter, AuditRecord, parse_cursor};
pub use local::DB_FILE;
pub use resolve::decide;

use crate::authz::{UidRef, parse_uid};
use crate::error::{RequestError, StoreError};
use crate::policy::{Snapshot, collect_uids};

/// A provisioned entity as decisions use it: parsed once, with what it points to. What the caches
/// hold, so kept small: the stored JSON as compact text, not a JSON value (2.6 KB for a typical user).
#[derive(Debug)]
pub struct Record {
    pub entity: Entity,
    /// The Cedar entity JSON, as stored.
    text: Box<str>,
    /// The revision of the write that last changed it.
    pub revision: u64,
    pub(crate) parents: Box<[EntityUid]>,
    /// Uids its attributes and tags mention.
    pub(crate) refs: Box<[EntityUid]>,
}

impl Record {
    /// Parses a stored entity. Stored JSON was produced by Cedar from a validated entity, with
    /// explicit `__entity` / `__extn` escapes, so it parses the same without the schema.
    pub fn parse(json: serde_json::Value, revision: u64) -> Result<Self, String> {
        let text = json.to_string().into_boxed_str();
        let mut parents = Vec::new();
        if let Some(p) = json.get("parents") {
            collect_uids(p, &mut parents);
        }
        let mut refs = Vec::new();
        for key in ["attrs", "tags"] {
            if let Some(value) = json.get(key) {
                collect_uids(value, &mut refs);
            }
        }
        let entity = Entity::from_json_value(json, None).map_err(|e| e.to_string())?;
        Ok(Record { entity, text, revision, parents: parents.into(), refs: refs.into() })
    }

    /// The Cedar entity JSON, as stored (parsed again: for the API's reads, not for decisions).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text).unwrap_or_default()
    }
}

/// One validated change of a write batch.
#[derive(Debug, Clone)]
pub enum Change {
    Upsert { uid: EntityUid, json: serde_json::Value },
    Delete { uid: EntityUid },
}

impl Change {
    pub fn uid(&self) -> &EntityUid {
        match self {
            Change::Upsert { uid, .. } | Change::Delete { uid } => uid,
        }
    }

    fn operation(&self) -> &'static str {
        match self {
            Change::Upsert { .. } => "upsert",
            Change::Delete { .. } => "delete",
        }
    }
}

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

/// Where provisioned entities live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// A redb database in this directory: durable, this replica only.
    Embedded { data_dir: PathBuf },
    /// A redb database in memory: lost on restart.
    Memory,
    /// Redis, shared by every replica.
    Redis { url: String, prefix: String },
}

/// Store settings from the configuration.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub kind: StoreKind,
    pub redis_timeout: Duration,
    pub cache_capacity: u64,
    pub cache_ttl: Duration,
    pub stale_for: Duration,
    /// The former in-process store's JSON-lines audit trail, replayed into a new data directory.
    pub legacy_audit_file: PathBuf,
    /// Audit records older than this are removed in the background; None keeps everything.
    pub audit_retention: Option<Duration>,
    pub max_decision_entities: usize,
    pub slice_cache_size: u64,
}

/// Records (None where absent) and the store revision they were read at.
pub(crate) type Fetched = (Vec<Option<Arc<Record>>>, u64);

/// One chunk of an export, with the revision it was read at.
pub struct ExportChunk {
    pub records: Vec<Arc<Record>>,
    pub revision: u64,
}

/// Every backend comes with this replica's cache in front of it.
enum Backend {
    Local { store: Arc<local::LocalStore>, cache: Arc<cache::EntityCache> },
    Redis { store: Box<redis::RedisStore>, cache: Arc<cache::EntityCache> },
}

/// The provisioned-entity store of one replica.
pub struct EntityStore {
    backend: Backend,
    kind: StoreKind,
    pub(crate) max_decision_entities: usize,
    /// Built entity slices by request, valid for one snapshot and one store epoch: a warm decision
    /// costs a lookup, not a rebuild of Cedar's entity set.
    pub(crate) slices: moka::sync::Cache<resolve::SliceKey, Arc<Entities>>,
}

impl EntityStore {
    /// Opens the store. The embedded store opens (or creates) its database now: a locked or damaged
    /// one fails the start. Redis connects lazily, so the server starts while Redis is down
    /// (decisions that need it fail closed until it is back). Background tasks end with `stop`.
    pub fn open(config: &StoreConfig, stop: tokio_util::sync::CancellationToken) -> Result<Arc<Self>, StoreError> {
        let cache = Arc::new(cache::EntityCache::new(config.cache_capacity, config.cache_ttl, config.stale_for));
        let backend = match &config.kind {
            StoreKind::Redis { url, prefix } => {
                let store = redis::RedisStore::connect(url, prefix, config.redis_timeout)?;
                store.spawn_subscriber(cache.clone(), stop.clone())?;
                Backend::Redis { store: Box::new(store), cache }
            }
            StoreKind::Embedded { data_dir } => {
                let store = local::LocalStore::open_dir(data_dir)?;
                // Only into a store nothing was ever written to: a crash between creating the
                // database and replaying the file replays it at the next start.
                if store.revision() == store.origin() {
                    legacy::migrate(&store, &config.legacy_audit_file)?;
                }
                cache.subscribed(0, store.revision());
                Backend::Local { store: Arc::new(store), cache }
            }
            StoreKind::Memory => {
                let store = local::LocalStore::in_memory()?;
                cache.subscribed(0, store.revision());
                Backend::Local { store: Arc::new(store), cache }
            }
        };
        let store = Arc::new(EntityStore {
            backend,
            kind: config.kind.clone(),
            max_decision_entities: config.max_decision_entities,
            // Weighed by entities, not slices: one slice may hold thousands.
            slices: moka::sync::Cache::builder()
                .max_capacity(config.slice_cache_size)
                .weigher(|_, slice: &Arc<Entities>| u32::try_from(slice.len()).unwrap_or(u32::MAX).max(1))
                .time_to_live(config.cache_ttl)
                .build(),
        });
        if let Some(retention) = config.audit_retention {
            tokio::spawn(trim_audit_forever(Arc::downgrade(&store), retention, stop.clone()));
        }
        if let Backend::Local { store: local, .. } = &store.backend {
            tokio::spawn(forget_requests_forever(Arc::downgrade(local), stop));
        }
        Ok(store)
    }

    /// With Redis: waits (at most `within`) for the invalidation subscription, so that a replica
    /// starts serving with a coherent cache. A Redis that is down does not hold up the start.
    pub async fn wait_ready(&self, within: Duration) -> bool {
        match &self.backend {
            Backend::Redis { cache, .. } => cache.wait_subscribed(within).await,
            Backend::Local { .. } => true,
        }
    }

    fn cache(&self) -> &cache::EntityCache {
        match &self.backend {
            Backend::Local { cache, .. } | Backend::Redis { cache, .. } => cache,
        }
    }

    /// Whether invalidations are flowing (always true embedded), and the last revision applied.
    pub fn coherence(&self) -> (bool, u64) {
        (self.cache().is_subscribed(), self.cache().seen_revision())
    }

    /// Moves with every invalidation, subscribed or not (see `EntityCache::raw_epoch`).
    pub(crate) fn raw_epoch(&self) -> u64 {
        self.cache().raw_epoch()
    }

    /// Changes whenever any provisioned entity may have changed; None when slices must not be cached.
    pub(crate) fn epoch(&self) -> Option<u64> {
        self.cache().epoch()
    }

    /// Whether a decision at `min_revision` can use what this replica already has.
    pub(crate) fn has_seen(&self, min_revision: u64) -> bool {
        min_revision == 0 || self.seen_revision() >= min_revision
    }

    /// The revision up to which this replica's cached view is current (in process: the store's).
    pub(crate) fn seen_revision(&self) -> u64 {
        self.coherence().1
    }

    /// Drops every cached entity (the next decisions read the store); for benchmarks and operators.
    pub fn clear_cache(&self) {
        self.cache().clear();
        self.slices.invalidate_all();
    }

    pub fn kind(&self) -> &'static str {
        match self.kind {
            StoreKind::Embedded { .. } => "embedded",
            StoreKind::Memory => "memory",
            StoreKind::Redis { .. } => "redis",
        }
    }

    /// What an operator must know about the store: lost writes, risky persistence (one line each).
    pub fn warnings(&self) -> Vec<String> {
        let w = self.cache().warnings();
        w.regression.into_iter().chain(w.persistence).collect()
    }

    /// Where the entities are: the database file, `memory`, or the Redis address without credentials.
    pub fn location(&self) -> String {
        match (&self.kind, &self.backend) {
            (_, Backend::Local { store, .. }) => store.path().map_or("memory".into(), |p| p.display().to_string()),
            (StoreKind::Redis { url, prefix }, _) => format!("{} (prefix `{prefix}`)", redact_url(url)),
            _ => String::new(),
        }
    }

    /// True when nothing is provisioned locally, so decisions can use the files' entities alone.
    pub(crate) fn known_empty(&self) -> bool {
        match &self.backend {
            Backend::Local { store, .. } => store.is_empty(),
            Backend::Redis { .. } => false,
        }
    }

    /// Applies a validated batch with its audit records, all or nothing; returns the new revision
    /// (or, for a request key already used, the revision of its first outcome).
    pub async fn apply(
        &self,
        changes: Vec<Change>,
        actor: &str,
        request: Option<RequestKey>,
    ) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Local { store, cache } => store.apply(changes, actor, request, cache).await,
            Backend::Redis { store, cache } => {
                let uids: Vec<EntityUid> = changes.iter().map(|c| c.uid().clone()).collect();
                let revision = store.apply(&changes, actor, cache.highest(), request.as_ref()).await?;
                cache.note(revision);
                // This replica reads its own write at once; the others hear of it through the subscription.
                cache.invalidate(&uids);
                Ok(revision)
            }
        }
    }

    /// The records of `uids` (None where absent), never older than `min_revision`, and the store
    /// revision they were read at when the store was read (None when all came from the cache).
    /// `fresh` reads the store itself, past the cache.
    #[allow(clippy::type_complexity)]
    pub(crate) async fn fetch(
        &self,
        uids: &[EntityUid],
        min_revision: u64,
        fresh: bool,
    ) -> Result<(Vec<Option<Arc<Record>>>, Option<u64>), StoreError> {
        match &self.backend {
            Backend::Local { store, cache } => cache.fetch(&**store, uids, min_revision, fresh).await,
            Backend::Redis { store, cache } => cache.fetch(&**store, uids, min_revision, fresh).await,
        }
    }

    /// The revision a decision must read at least: `min_revision`, or with `--entity-stale-for 0s` on
    /// Redis the store's current revision (one round trip: a write acknowledged before it is never
    /// missed, however late its invalidation message, and a store that does not answer fails closed).
    pub(crate) async fn decision_floor(&self, min_revision: u64) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Redis { store, cache } if cache.confirms_every_decision() => {
                let floor = cache.highest();
                let (_, current) = store.read(&[], min_revision).await?;
                cache.observe(floor, current);
                Ok(min_revision.max(current))
            }
            _ => Ok(min_revision),
        }
    }

    /// Refuses a `min_revision` the store cannot honour: ahead of it, or (in memory) lost at a
    /// restart. Asks the store only when this replica has not seen that revision itself.
    pub(crate) async fn ensure_revision(&self, min_revision: u64) -> Result<(), StoreError> {
        if min_revision == 0 {
            return Ok(());
        }
        match &self.backend {
            Backend::Local { store, .. } => store.check_min_revision(min_revision, store.revision()),
            Backend::Redis { .. } if self.has_seen(min_revision) => Ok(()),
            Backend::Redis { store, .. } => store.read(&[], min_revision).await.map(|_| ()),
        }
    }

    pub async fn get(&self, uid: &EntityUid) -> Result<Option<Arc<Record>>, StoreError> {
        let uids = std::slice::from_ref(uid);
        let (mut records, _) = match &self.backend {
            Backend::Local { store, .. } => store.fetch_now(uids, 0)?,
            Backend::Redis { store, .. } => store.read(uids, 0).await?,
        };
        Ok(records.pop().flatten())
    }

    /// Up to `limit` entities of type `ty` whose uid sorts after `after`, in uid order.
    pub async fn list(&self, ty: &str, after: &str, limit: usize) -> Result<Vec<Arc<Record>>, StoreError> {
        match &self.backend {
            Backend::Local { store, .. } => store.list(ty, after, limit),
            Backend::Redis { store, .. } => store.list(ty, after, limit).await,
        }
    }

    /// Streams every entity (of `ty`, if given) into `out`, `chunk` at a time, all read at one
    /// revision; a store that cannot promise that ends the stream with an error instead.
    pub async fn export(
        &self,
        ty: Option<String>,
        chunk: usize,
        out: tokio::sync::mpsc::Sender<Result<ExportChunk, StoreError>>,
    ) {
        let result = match &self.backend {
            Backend::Local { store, .. } => {
                let (store, sender) = (store.clone(), out.clone());
                tokio::task::spawn_blocking(move || {
                    store.export(ty.as_deref(), chunk, |records, revision| {
                        sender.blocking_send(Ok(ExportChunk { records, revision })).is_ok()
                    })
                })
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))
                .and_then(|r| r.map(|_| ()))
            }
            Backend::Redis { store, .. } => store.export(ty.as_deref(), chunk, &out).await,
        };
        if let Err(e) = result {
            let _ = out.send(Err(e)).await;
        }
    }

    pub async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        match &self.backend {
            Backend::Local { store, .. } => {
                let (store, filter) = (store.clone(), filter.clone());
                tokio::task::spawn_blocking(move || store.audit(&filter))
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?
            }
            Backend::Redis { store, .. } => store.audit(filter).await,
        }
    }

    async fn trim_audit(&self, before: SystemTime) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Local { store, .. } => {
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.trim_audit(before))
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?
            }
            Backend::Redis { store, .. } => store.trim_audit(before).await,
        }
    }
}

/// Removes audit records older than `retention`, now and then, until the store is dropped or the
/// server stops.
async fn trim_audit_forever(
    store: std::sync::Weak<EntityStore>,
    retention: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut every = tokio::time::interval(local::trim_interval(retention));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let Some(store) = store.upgrade() else { return };
        let Some(before) = SystemTime::now().checked_sub(retention) else { continue };
        match store.trim_audit(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, ?retention, "audit records past their retention removed"),
            Err(e) => tracing::warn!("audit retention: {e}"),
        }
    }
}

/// Forgets request keys older than [`RequestKey::KEPT`] now and then (Redis expires its own).
async fn forget_requests_forever(store: std::sync::Weak<local::LocalStore>, stop: tokio_util::sync::CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(600));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let Some(store) = store.upgrade() else { return };
        let Some(before) = SystemTime::now().checked_sub(RequestKey::KEPT) else { continue };
        let done = tokio::task::spawn_blocking(move || store.forget_requests(before)).await;
        if let Ok(Err(e)) = done {
            tracing::warn!("forgetting old request keys: {e}");
        }
    }
}

/// A Redis URL without its password, for logs and status.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://…@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// Parses a stored value `{"rev": N, "entity": …}`, as both stores keep it.
pub(crate) fn parse_stored(bytes: &[u8]) -> Result<Record, StoreError> {
    let mut value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("stored entity: {e}")))?;
    let revision = value.get("rev").and_then(serde_json::Value::as_u64).unwrap_or(0);
    let entity = value.get_mut("entity").map(serde_json::Value::take).unwrap_or_default();
    Record::parse(entity, revision).map_err(StoreError::Corrupt)
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

/// The key text of a uid, as stored and published: Cedar's own escaped form, `User::"alice"`.
pub fn key_of(uid: &EntityUid) -> String {
    uid.to_string()
}

pub fn uid_of_key(key: &str) -> Option<EntityUid> {
    EntityUid::from_str(key).ok()
}

/// RFC 3339 with milliseconds, as every timestamp in the API.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
