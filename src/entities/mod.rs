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
mod topology;
mod validate;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cedar_policy::{Entities, Entity, EntityUid};

pub use audit::{AuditFilter, AuditRecord, parse_cursor};
pub use local::DB_FILE;
pub use resolve::decide;
pub(crate) use resolve::slice_for;
pub use topology::Topology;
pub use validate::{EntityInput, RequestKey, check_acyclic, validate_deletes, validate_upserts};

use crate::error::StoreError;
use crate::policy::collect_uids;

/// A provisioned entity as the caches hold it: the stored JSON as compact text, with what it points
/// to. Kept small (under 1 KB for a typical user; Cedar's own `Entity` of the same user takes 3.3 KB):
/// the Cedar entity is built from the text when a decision's slice is built (`entity`), and the
/// built slices are cached on their own.
#[derive(Debug)]
pub struct Record {
    /// The Cedar entity JSON, as stored. (No parsed uid: the caches key records by it already.)
    text: Box<str>,
    /// The revision of the write that last changed it.
    pub revision: u64,
    pub(crate) parents: Box<[EntityUid]>,
    /// Uids its attributes and tags mention.
    pub(crate) refs: Box<[EntityUid]>,
}

impl Record {
    /// A stored entity's record. Cedar reads the JSON when a slice is built (`entity`): stored JSON
    /// was produced by Cedar from a validated entity, with explicit `__entity` / `__extn` escapes, so
    /// it parses the same without the schema; one that does not fails that decision, never skipped.
    pub fn parse(json: serde_json::Value, revision: u64) -> Result<Self, String> {
        if !json.get("uid").is_some_and(serde_json::Value::is_object) {
            return Err("a stored entity without a uid".into());
        }
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
        Ok(Record { text, revision, parents: parents.into(), refs: refs.into() })
    }

    /// The Cedar entity, built from the stored text (it parsed when the record was made).
    pub fn entity(&self) -> Result<Entity, StoreError> {
        Entity::from_json_str(&self.text, None).map_err(|e| StoreError::Corrupt(format!("a stored entity: {e}")))
    }

    /// Its uid, read from the stored text (for paging and listings, not for decisions): only the
    /// `uid` member is parsed, not the whole entity.
    pub fn uid(&self) -> Result<EntityUid, StoreError> {
        #[derive(serde::Deserialize)]
        struct UidOnly {
            uid: serde_json::Value,
        }
        let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(format!("a stored entity's uid: {e}"));
        let only: UidOnly = serde_json::from_str(&self.text).map_err(|e| corrupt(&e))?;
        EntityUid::from_json(only.uid).map_err(|e| corrupt(&e))
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

/// A write's precondition: the entity at `uid` is at `revision` (0: absent) when the write applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub uid: EntityUid,
    pub revision: u64,
}

/// Where provisioned entities live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// A redb database in this directory: durable, this replica only.
    Embedded { data_dir: PathBuf },
    /// A redb database in memory: lost on restart.
    Memory,
    /// Redis, shared by every replica: one server, a Sentinel-watched primary, or a Cluster;
    /// writes wait for `min_replicas` replicas.
    Redis { url: String, prefix: String, tls: RedisTls, topology: Topology, min_replicas: u32 },
}

/// PEM files for a `rediss://` connection: a private CA, and a client certificate if Redis asks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
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
    /// Cedar entities of the most used records, by uid and revision: a new slice copies these
    /// (0.2 µs) instead of parsing the record's text (11 µs). A tenth of the entity cache, so that
    /// most cached entities cost their compact record only.
    parsed: moka::sync::Cache<(EntityUid, u64), Arc<Entity>>,
}

impl EntityStore {
    /// Opens the store. The embedded store opens (or creates) its database now: a locked or damaged
    /// one fails the start. Redis connects lazily, so the server starts while Redis is down
    /// (decisions that need it fail closed until it is back). Background tasks end with `stop`.
    pub fn open(config: &StoreConfig, stop: tokio_util::sync::CancellationToken) -> Result<Arc<Self>, StoreError> {
        let cache = Arc::new(cache::EntityCache::new(config.cache_capacity, config.cache_ttl, config.stale_for));
        let backend = match &config.kind {
            StoreKind::Redis { url, prefix, tls, topology, min_replicas } => {
                let options = redis::RedisOptions {
                    url,
                    prefix,
                    tls,
                    topology,
                    min_replicas: *min_replicas,
                    timeout: config.redis_timeout,
                };
                let store = redis::RedisStore::connect(&options)?;
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
            parsed: moka::sync::Cache::builder()
                .max_capacity((config.cache_capacity / 10).max(1))
                .time_to_live(config.cache_ttl)
                .build(),
        });
        if let Some(retention) = config.audit_retention {
            tokio::spawn(trim_audit_forever(Arc::downgrade(&store), retention, stop.clone()));
        }
        match &store.backend {
            Backend::Local { store: local, .. } => {
                tokio::spawn(forget_requests_forever(Arc::downgrade(local), stop));
            }
            Backend::Redis { .. } => {
                tokio::spawn(index_children_until_done(Arc::downgrade(&store), stop));
            }
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
        self.parsed.invalidate_all();
    }

    /// Drops the built slices only: the next decisions build theirs from cached entities.
    pub fn clear_slices(&self) {
        self.slices.invalidate_all();
    }

    /// The Cedar entity of the record stored at `uid`, for a slice being built.
    pub(crate) fn cedar_entity(&self, uid: &EntityUid, record: &Record) -> Result<Entity, StoreError> {
        let key = (uid.clone(), record.revision);
        if let Some(entity) = self.parsed.get(&key) {
            return Ok(Entity::clone(&entity));
        }
        let entity = record.entity()?;
        self.parsed.insert(key, Arc::new(entity.clone()));
        Ok(entity)
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
            (StoreKind::Redis { url, prefix, topology, .. }, _) => {
                let prefix = redis::effective_prefix(prefix, topology);
                match topology {
                    Topology::Single => format!("{} (prefix `{prefix}`)", redact_url(url)),
                    Topology::Sentinel { sentinels, master } => {
                        format!("Sentinel primary `{master}` via {} (prefix `{prefix}`)", sentinels.join(","))
                    }
                    Topology::Cluster { seeds } => format!("Cluster via {} (prefix `{prefix}`)", seeds.join(",")),
                }
            }
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
        self.apply_guarded(changes, Vec::new(), actor, request).await
    }

    /// `apply`, only if every guarded entity is still at the revision its writer read
    /// (`StoreError::Conflict` otherwise, nothing written): a read-modify-write that cannot lose
    /// another writer's update, on every backend and across replicas.
    pub async fn apply_guarded(
        &self,
        changes: Vec<Change>,
        guards: Vec<Guard>,
        actor: &str,
        request: Option<RequestKey>,
    ) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Local { store, cache } => store.apply(changes, guards, actor, request, cache).await,
            Backend::Redis { store, cache } => {
                let uids: Vec<EntityUid> = changes.iter().map(|c| c.uid().clone()).collect();
                let revision = store.apply(&changes, &guards, actor, cache.highest(), request.as_ref()).await?;
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
            Backend::Local { store, cache } => cache.fetch(store, uids, min_revision, fresh).await,
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
            Backend::Local { store, .. } => {
                let uid = uid.clone();
                store.blocking(move |store| store.fetch_now(std::slice::from_ref(&uid), 0)).await?
            }
            Backend::Redis { store, .. } => store.read(uids, 0).await?,
        };
        Ok(records.pop().flatten())
    }

    /// Up to `limit` entities of type `ty` whose uid sorts after `after`, in uid order, and the key
    /// to go on after: `None` only when the type has no more.
    pub async fn list(
        &self,
        ty: &str,
        after: &str,
        limit: usize,
    ) -> Result<(Vec<Arc<Record>>, Option<String>), StoreError> {
        match &self.backend {
            Backend::Local { store, .. } => {
                let (ty, after) = (ty.to_string(), after.to_string());
                store.blocking(move |store| store.list(&ty, &after, limit)).await
            }
            Backend::Redis { store, .. } => store.list(ty, after, limit).await,
        }
    }

    /// Whether the children index holds every edge now: always for the embedded store (checked at
    /// open, and its one writer keeps it); on Redis, while no writer of an earlier version wrote
    /// since it was built (see `redis.rs`).
    pub async fn children_complete(&self) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Local { .. } => Ok(true),
            Backend::Redis { store, .. } => store.children_complete().await,
        }
    }

    /// The uids of the entities whose parents include one of `parents`, or `None` when there are
    /// more than `limit`. Trust them only while `children_complete`.
    pub async fn children(&self, parents: Vec<EntityUid>, limit: usize) -> Result<Option<Vec<EntityUid>>, StoreError> {
        let keys: Vec<String> = parents.iter().map(key_of).collect();
        let children = match &self.backend {
            Backend::Local { store, .. } => store.blocking(move |store| store.children(&keys, limit)).await?,
            Backend::Redis { store, .. } => store.children(&keys, limit).await?,
        };
        Ok(children.map(|keys| keys.iter().filter_map(|k| uid_of_key(k)).collect()))
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
                let filter = filter.clone();
                store.blocking(move |store| store.audit(&filter)).await
            }
            Backend::Redis { store, .. } => store.audit(filter).await,
        }
    }

    async fn trim_audit(&self, before: SystemTime) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Local { store, .. } => store.blocking(move |store| store.trim_audit(before)).await,
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

/// Keeps Redis's children index complete: builds it for a store from before it, and again after a
/// writer of an earlier version wrote (listings scan by type until it is done).
async fn index_children_until_done(store: std::sync::Weak<EntityStore>, stop: tokio_util::sync::CancellationToken) {
    loop {
        let Some(strong) = store.upgrade() else { return };
        let Backend::Redis { store: redis, .. } = &strong.backend else { return };
        if let Err(e) = redis.index_children().await {
            tracing::warn!("the children index of the Redis store (listings scan by type meanwhile): {e}");
        }
        drop(strong);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
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
        if let Err(e) = store.blocking(move |store| store.forget_requests(before)).await {
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

/// The entity JSON inside a stored value `{"rev": N, "entity": …}`, for the audit trail; None where
/// there was none.
pub(crate) fn stored_entity(bytes: &[u8]) -> Option<serde_json::Value> {
    let mut value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    value.get_mut("entity").map(serde_json::Value::take)
}

/// Parses a stored value `{"rev": N, "entity": …}`, as both stores keep it.
pub(crate) fn parse_stored(bytes: &[u8]) -> Result<Record, StoreError> {
    let mut value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("stored entity: {e}")))?;
    let revision = value.get("rev").and_then(serde_json::Value::as_u64).unwrap_or(0);
    let entity = value.get_mut("entity").map(serde_json::Value::take).unwrap_or_default();
    Record::parse(entity, revision).map_err(StoreError::Corrupt)
}

/// The uid keys of an entity JSON's parents (for the children index).
pub(crate) fn parent_keys(entity: &serde_json::Value) -> Vec<String> {
    let mut parents = Vec::new();
    if let Some(p) = entity.get("parents") {
        crate::policy::collect_uids(p, &mut parents);
    }
    parents.iter().map(key_of).collect()
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
