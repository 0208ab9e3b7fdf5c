//! The embedded store: one redb database, in the data directory (`--store embedded`, the default) or
//! in memory (`--store memory`, lost on restart). Tables:
//! - `entities`: uid key text (`User::"alice"`) → `{"rev": N, "entity": <Cedar entity JSON>}`; key
//!   order keeps one type's entities together, so listing a type is a range;
//! - `audit`: (revision, index in the batch) → an [`AuditRecord`] as JSON;
//! - `audit_by_uid`: (uid key, revision, index) → (), for reading one entity's history;
//! - `audit_time`: revision → its time in ms since the epoch, for time ranges and retention;
//! - `children`: (parent uid key, child uid key) → (), the parent edges reversed, for listings that
//!   only need what is under an entity;
//! - `meta`: `revision`, `entities` (count), `origin` (see [`LocalStore::origin`]), `children` (1 once
//!   the `children` table was built) and `children_rev` (the revision of the last write that kept
//!   it): unless `children_rev` is `revision`, a writer without the index (an earlier version) wrote,
//!   and the table is built again at open;
//! - `requests`: idempotency key → `{"rev", "digest", "at"}` of its first outcome, kept a day.
//!
//! A write batch is one redb transaction: the entities, the revision and the audit records commit
//! together, and the commit is synced to disk before the write is acknowledged.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cedar_policy::EntityUid;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::cache::{EntityCache, Source};
use super::{
    AuditRecord, Change, Fetched, Guard, Record, RequestKey, key_of, parent_keys, parse_stored, rfc3339, stored_entity,
};
use crate::error::StoreError;

mod trail;

const ENTITIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entities");
const AUDIT: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("audit");
const AUDIT_BY_UID: TableDefinition<(&str, u64, u32), ()> = TableDefinition::new("audit_by_uid");
const AUDIT_TIME: TableDefinition<u64, u64> = TableDefinition::new("audit_time");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const CHILDREN: TableDefinition<(&str, &str), ()> = TableDefinition::new("children");
const REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("requests");

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "entities.redb";

/// The most stored JSON one export chunk carries.
const EXPORT_CHUNK_BYTES: usize = 1 << 20;

/// redb's page cache; the entity cache in front of it holds what decisions use.
const DB_CACHE_BYTES: usize = 64 << 20;

/// What a write transaction did.
enum Committed {
    New {
        revision: u64,
        count: u64,
    },
    /// The request key was used before, on the same batch: its first outcome, nothing written.
    Replayed {
        revision: u64,
    },
}

/// Refuses the write unless every guarded entity is at its expected revision (0: absent).
fn check_guards(txn: &redb::WriteTransaction, guards: &[Guard]) -> Result<(), StoreError> {
    if guards.is_empty() {
        return Ok(());
    }
    let entities = txn.open_table(ENTITIES).map_err(write_error)?;
    for guard in guards {
        let key = key_of(&guard.uid);
        let current = match entities.get(key.as_str()).map_err(write_error)? {
            Some(value) => parse_stored(value.value())?.revision,
            None => 0,
        };
        if current != guard.revision {
            return Err(StoreError::Conflict(key));
        }
    }
    Ok(())
}

/// The first outcome of `key`, if it was used before; a different batch under it is refused.
fn replayed(txn: &redb::WriteTransaction, key: &RequestKey) -> Result<Option<u64>, StoreError> {
    let requests = txn.open_table(REQUESTS).map_err(write_error)?;
    let Some(value) = requests.get(key.id.as_str()).map_err(write_error)? else { return Ok(None) };
    let seen: serde_json::Value =
        serde_json::from_slice(value.value()).map_err(|e| StoreError::Corrupt(format!("request key: {e}")))?;
    if seen.get("digest").and_then(serde_json::Value::as_str) != Some(key.digest.as_str()) {
        return Err(StoreError::RequestReused(key.id.clone()));
    }
    Ok(seen.get("rev").and_then(serde_json::Value::as_u64))
}

pub struct LocalStore {
    db: Database,
    /// The database file; None in memory.
    path: Option<PathBuf>,
    /// The revision the store was created at: the time in microseconds then, so that revisions never
    /// repeat across a lost or recreated store, and anything below it was issued by another store
    /// (an earlier life in memory, a data directory that was wiped). 0 for a replayed legacy trail.
    origin: AtomicU64,
    /// The committed revision and entity count, published after each commit: decisions read them
    /// without a transaction.
    revision: AtomicU64,
    count: AtomicU64,
    /// Held from the commit until the cache has dropped what it changed: a later write must not
    /// publish its revision while an earlier one's entries are still cached.
    writer: Mutex<()>,
}

/// What `audit_time` and `meta` hold, read at open.
struct Meta {
    revision: u64,
    count: u64,
    origin: u64,
}

impl LocalStore {
    /// Opens (or creates) the database in `dir`. A file that exists is opened and checked, never
    /// replaced: a damaged one is an error naming it. A new one is built under a temporary name,
    /// renamed into place and the directory synced, so a file at the real name is always a whole,
    /// initialised database, and stays there after a power loss.
    pub fn open_dir(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Open(format!("cannot create the data directory {}: {e}", dir.display())))?;
        let path = dir.join(DB_FILE);
        if !path.exists() {
            create(dir, &path)?;
        }
        let db = open_checked(&path)?;
        index_children(&db).map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?;
        let meta = read_meta(&db).map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?;
        Ok(LocalStore::new(db, Some(path), meta))
    }

    /// A store in memory, lost on restart. Its revisions start at the time in microseconds (as a
    /// new database's do), so a revision from an earlier life is recognised (see `origin`).
    pub fn in_memory() -> Result<Self, StoreError> {
        let db = builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| StoreError::Open(format!("in-memory store: {e}")))?;
        init(&db, now_micros())?;
        let meta = read_meta(&db).map_err(|e| StoreError::Open(format!("in-memory store: {e}")))?;
        Ok(LocalStore::new(db, None, meta))
    }

    fn new(db: Database, path: Option<PathBuf>, meta: Meta) -> Self {
        LocalStore {
            db,
            path,
            origin: AtomicU64::new(meta.origin),
            revision: AtomicU64::new(meta.revision),
            count: AtomicU64::new(meta.count),
            writer: Mutex::new(()),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::SeqCst)
    }

    pub fn origin(&self) -> u64 {
        self.origin.load(Ordering::SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.count.load(Ordering::SeqCst) == 0
    }

    /// Applies a batch in one transaction, then drops what it changed from `cache` before the new
    /// revision is published.
    pub async fn apply(
        self: &Arc<Self>,
        changes: Vec<Change>,
        guards: Vec<Guard>,
        actor: &str,
        request: Option<RequestKey>,
        cache: &Arc<EntityCache>,
    ) -> Result<u64, StoreError> {
        let (store, actor, cache) = (self.clone(), actor.to_string(), cache.clone());
        // The commit syncs the file: off the runtime's workers.
        tokio::task::spawn_blocking(move || store.apply_blocking(&changes, &guards, &actor, request.as_ref(), &cache))
            .await
            .map_err(|e| StoreError::WriteUnknown(format!("the write task failed: {e}")))?
    }

    fn apply_blocking(
        &self,
        changes: &[Change],
        guards: &[Guard],
        actor: &str,
        request: Option<&RequestKey>,
        cache: &EntityCache,
    ) -> Result<u64, StoreError> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let now = SystemTime::now();
        let (revision, count) = match self.commit(changes, guards, actor, request, now)? {
            Committed::New { revision, count } => (revision, count),
            Committed::Replayed { revision } => return Ok(revision),
        };
        let uids: Vec<EntityUid> = changes.iter().map(|c| c.uid().clone()).collect();
        cache.invalidate(&uids);
        cache.advance(revision);
        self.count.store(count, Ordering::SeqCst);
        self.revision.store(revision, Ordering::SeqCst);
        Ok(revision)
    }

    /// One transaction: the batch, its audit records, the revision and the request key; or, for a
    /// key already used on the same batch, its first outcome.
    fn commit(
        &self,
        changes: &[Change],
        guards: &[Guard],
        actor: &str,
        request: Option<&RequestKey>,
        now: SystemTime,
    ) -> Result<Committed, StoreError> {
        let mut txn = self.db.begin_write().map_err(write_error)?;
        // Two-phase: damage to the newest commit is then an error at open, never a silent rollback
        // to the one before it (which would undo an acknowledged write).
        txn.set_two_phase_commit(true);
        if let Some(key) = request
            && let Some(revision) = replayed(&txn, key)?
        {
            return Ok(Committed::Replayed { revision });
        }
        check_guards(&txn, guards)?;
        let (revision, count) = self.write_batch(&txn, changes, actor, now).map_err(write_error)?;
        if let Some(key) = request {
            let value = serde_json::json!({"rev": revision, "digest": key.digest, "at": millis(now)}).to_string();
            let mut requests = txn.open_table(REQUESTS).map_err(write_error)?;
            requests.insert(key.id.as_str(), value.as_bytes()).map_err(write_error)?;
        }
        // A failed commit may or may not have reached the disk.
        txn.commit().map_err(|e| StoreError::WriteUnknown(e.to_string()))?;
        Ok(Committed::New { revision, count })
    }

    fn write_batch(
        &self,
        txn: &redb::WriteTransaction,
        changes: &[Change],
        actor: &str,
        now: SystemTime,
    ) -> Result<(u64, u64), redb::Error> {
        let revision;
        let count;
        {
            let mut meta = txn.open_table(META)?;
            let current = meta.get("revision")?.map_or(0, |v| v.value());
            revision = current.checked_add(1).ok_or_else(|| redb::Error::Corrupted("revision overflow".into()))?;
            let mut entities = txn.open_table(ENTITIES)?;
            let mut audit = txn.open_table(AUDIT)?;
            let mut by_uid = txn.open_table(AUDIT_BY_UID)?;
            let mut children = txn.open_table(CHILDREN)?;
            let at = rfc3339(now);
            for (i, change) in changes.iter().enumerate() {
                let key = key_of(change.uid());
                let before = match change {
                    Change::Upsert { json, .. } => {
                        let stored = serde_json::json!({"rev": revision, "entity": json}).to_string();
                        entities.insert(key.as_str(), stored.as_bytes())?.map(|old| old.value().to_vec())
                    }
                    Change::Delete { .. } => entities.remove(key.as_str())?.map(|old| old.value().to_vec()),
                };
                let old_parents =
                    before.as_deref().and_then(stored_entity).map(|e| parent_keys(&e)).unwrap_or_default();
                for parent in old_parents {
                    children.remove((parent.as_str(), key.as_str()))?;
                }
                if let Change::Upsert { json, .. } = change {
                    for parent in parent_keys(json) {
                        children.insert((parent.as_str(), key.as_str()), ())?;
                    }
                }
                let record = AuditRecord {
                    revision,
                    at: at.clone(),
                    actor: actor.to_string(),
                    operation: change.operation().to_string(),
                    uid: key.clone(),
                    before: before.and_then(|b| stored_entity(&b)),
                    after: match change {
                        Change::Upsert { json, .. } => Some(json.clone()),
                        Change::Delete { .. } => None,
                    },
                    cursor: String::new(),
                };
                let index = u32::try_from(i).unwrap_or(u32::MAX);
                let line = serde_json::to_vec(&record).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
                audit.insert((revision, index), line.as_slice())?;
                by_uid.insert((key.as_str(), revision, index), ())?;
            }
            txn.open_table(AUDIT_TIME)?.insert(revision, millis(now))?;
            count = entities.len()?;
            meta.insert("revision", revision)?;
            meta.insert("children_rev", revision)?;
            meta.insert("entities", count)?;
        }
        Ok((revision, count))
    }

    /// Forgets request keys older than `before`; returns how many.
    pub fn forget_requests(&self, before: SystemTime) -> Result<u64, StoreError> {
        let cutoff = millis(before);
        let txn = self.db.begin_write().map_err(write_error)?;
        let removed;
        {
            let mut requests = txn.open_table(REQUESTS).map_err(write_error)?;
            let old = |_: &str, value: &[u8]| {
                serde_json::from_slice::<serde_json::Value>(value)
                    .ok()
                    .and_then(|v| v.get("at").and_then(serde_json::Value::as_u64))
                    .is_some_and(|at| at < cutoff)
            };
            let before_len = requests.len().map_err(write_error)?;
            requests.retain(|k, v| !old(k, v)).map_err(write_error)?;
            removed = before_len - requests.len().map_err(write_error)?;
        }
        txn.commit().map_err(write_error)?;
        Ok(removed)
    }

    /// Refuses a `min_revision` this store cannot honour: ahead of it, or from an earlier life of
    /// an in-memory store, whose entities were lost at restart.
    pub fn check_min_revision(&self, min_revision: u64, current: u64) -> Result<(), StoreError> {
        if min_revision > current {
            return Err(StoreError::AheadOfStore { requested: min_revision, current });
        }
        let origin = self.origin();
        if min_revision > 0 && min_revision < origin {
            return Err(StoreError::LostRevision { requested: min_revision, origin });
        }
        Ok(())
    }

    /// The records of `uids` and the revision they were read at, from one read transaction.
    pub fn fetch_now(&self, uids: &[EntityUid], min_revision: u64) -> Result<Fetched, StoreError> {
        let txn = self.db.begin_read().map_err(read_error)?;
        let current =
            txn.open_table(META).map_err(read_error)?.get("revision").map_err(read_error)?.map_or(0, |v| v.value());
        self.check_min_revision(min_revision, current)?;
        let table = txn.open_table(ENTITIES).map_err(read_error)?;
        let mut out = Vec::with_capacity(uids.len());
        for uid in uids {
            let value = table.get(key_of(uid).as_str()).map_err(read_error)?;
            out.push(value.map(|v| parse_stored(v.value()).map(Arc::new)).transpose()?);
        }
        Ok((out, current))
    }

    /// Up to `limit` entities of type `ty` whose key sorts after `after`, in key order, and the key
    /// to go on after (`None`: no more).
    pub fn list(&self, ty: &str, after: &str, limit: usize) -> Result<(Vec<Arc<Record>>, Option<String>), StoreError> {
        let prefix = format!("{ty}::\"");
        let txn = self.db.begin_read().map_err(read_error)?;
        let table = txn.open_table(ENTITIES).map_err(read_error)?;
        let start = if after.is_empty() { Bound::Included(prefix.as_str()) } else { Bound::Excluded(after) };
        let (mut out, mut last) = (Vec::new(), None);
        for entry in table.range::<&str>((start, Bound::Unbounded)).map_err(read_error)? {
            let (key, value) = entry.map_err(read_error)?;
            if !key.value().starts_with(&prefix) || out.len() >= limit {
                break;
            }
            out.push(Arc::new(parse_stored(value.value())?));
            last = Some(key.value().to_string());
        }
        let next = if out.len() == limit { last } else { None };
        Ok((out, next))
    }

    /// The keys of the entities whose parents include one of `parents`, or `None` past `limit`.
    pub fn children(&self, parents: &[String], limit: usize) -> Result<Option<Vec<String>>, StoreError> {
        let txn = self.db.begin_read().map_err(read_error)?;
        let table = txn.open_table(CHILDREN).map_err(read_error)?;
        let mut out = Vec::new();
        for parent in parents {
            let range = table.range::<(&str, &str)>((parent.as_str(), "")..).map_err(read_error)?;
            for entry in range {
                let (key, _) = entry.map_err(read_error)?;
                let (of, child) = key.value();
                if of != parent {
                    break;
                }
                if out.len() == limit {
                    return Ok(None);
                }
                out.push(child.to_string());
            }
        }
        Ok(Some(out))
    }

    /// Every entity (of `ty`, if given) as stored, read in one snapshot, passed to `each` in chunks;
    /// returns the revision of that snapshot. `each` returning false stops the read.
    pub fn export(
        &self,
        ty: Option<&str>,
        chunk: usize,
        mut each: impl FnMut(Vec<Arc<Record>>, u64) -> bool,
    ) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(read_error)?;
        let revision =
            txn.open_table(META).map_err(read_error)?.get("revision").map_err(read_error)?.map_or(0, |v| v.value());
        let table = txn.open_table(ENTITIES).map_err(read_error)?;
        let prefix = ty.map(|t| format!("{t}::\"")).unwrap_or_default();
        let mut batch = Vec::with_capacity(chunk);
        let mut bytes = 0;
        for entry in table.range::<&str>(prefix.as_str()..).map_err(read_error)? {
            let (key, value) = entry.map_err(read_error)?;
            if !key.value().starts_with(&prefix) {
                break;
            }
            bytes += value.value().len();
            batch.push(Arc::new(parse_stored(value.value())?));
            // Chunks stay well under a client's default 4 MiB message limit, however large entities are.
            if (batch.len() == chunk || bytes > EXPORT_CHUNK_BYTES) && !each(std::mem::take(&mut batch), revision) {
                return Ok(revision);
            }
            if batch.is_empty() {
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            each(batch, revision);
        }
        Ok(revision)
    }
}

impl Source for Arc<LocalStore> {
    async fn fetch(&self, uids: &[EntityUid], min_revision: u64) -> Result<Fetched, StoreError> {
        let uids = uids.to_vec();
        self.blocking(move |store| store.fetch_now(&uids, min_revision)).await
    }
}

impl LocalStore {
    /// Runs a read on the blocking pool: a page that is not cached is read from disk, and the
    /// runtime's workers must not wait for a disk.
    pub async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        read: impl FnOnce(&LocalStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || read(&store))
            .await
            .map_err(|e| StoreError::Unavailable(format!("read task failed: {e}")))?
    }
}

/// Builds a database under a temporary name, then renames it into place and syncs the directory.
/// A temporary file left by an interrupted creation is used if it opens whole (it may have been
/// renamed and served from before a power loss undid the rename), else built again.
fn create(dir: &Path, path: &Path) -> Result<(), StoreError> {
    let fresh = dir.join(format!("{DB_FILE}.new"));
    let usable = fresh.exists() && open_checked(&fresh).and_then(|db| read_meta(&db).map_err(read_error)).is_ok();
    if !usable {
        let _ = std::fs::remove_file(&fresh);
        let db = builder().create(&fresh).map_err(|e| open_error(&fresh, e))?;
        init(&db, now_micros())?;
    }
    let fail = |e: std::io::Error| StoreError::Open(format!("cannot create {}: {e}", path.display()));
    std::fs::rename(&fresh, path).map_err(fail)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(fail)
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn builder() -> redb::Builder {
    let mut builder = redb::Builder::new();
    builder.set_cache_size(DB_CACHE_BYTES);
    builder
}

/// Opens an existing database, verifying every page: a damaged file is an error, never trusted.
fn open_checked(path: &Path) -> Result<Database, StoreError> {
    // redb documents that some damage can make an unchecked open panic; never let a file crash us.
    let open = || {
        let mut builder = builder();
        builder.set_check_integrity_on_open(true);
        builder.open(path)
    };
    match std::panic::catch_unwind(open) {
        Ok(result) => result.map_err(|e| open_error(path, e)),
        Err(_) => Err(StoreError::Open(format!("{}: the database file is damaged", path.display()))),
    }
}

fn init(db: &Database, origin: u64) -> Result<(), StoreError> {
    let init = || -> Result<(), redb::Error> {
        let mut txn = db.begin_write()?;
        txn.set_two_phase_commit(true);
        {
            let mut meta = txn.open_table(META)?;
            meta.insert("revision", origin)?;
            meta.insert("origin", origin)?;
            meta.insert("entities", 0)?;
            meta.insert("children", 1)?;
            meta.insert("children_rev", origin)?;
            txn.open_table(CHILDREN)?;
            txn.open_table(ENTITIES)?;
            txn.open_table(AUDIT)?;
            txn.open_table(AUDIT_BY_UID)?;
            txn.open_table(AUDIT_TIME)?;
            txn.open_table(REQUESTS)?;
        }
        txn.commit()?;
        Ok(())
    };
    init().map_err(|e| StoreError::Open(format!("cannot initialise the entity database: {e}")))
}

/// Builds the `children` table again, in one transaction, unless the last write kept it (a database
/// from before it, or written since by an earlier version, gets it rebuilt from scratch).
fn index_children(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    let get = |key: &str| -> Result<Option<u64>, redb::Error> { Ok(meta.get(key)?.map(|v| v.value())) };
    let revision = get("revision")?;
    if get("children")? == Some(1) && get("children_rev")? == revision {
        return Ok(());
    }
    drop((meta, txn));
    let mut txn = db.begin_write()?;
    txn.set_two_phase_commit(true);
    {
        txn.delete_table(CHILDREN)?;
        let entities = txn.open_table(ENTITIES)?;
        let mut children = txn.open_table(CHILDREN)?;
        for entry in entities.iter()? {
            let (key, value) = entry?;
            for parent in stored_entity(value.value()).map(|e| parent_keys(&e)).unwrap_or_default() {
                children.insert((parent.as_str(), key.value()), ())?;
            }
        }
        let mut meta = txn.open_table(META)?;
        meta.insert("children", 1)?;
        meta.insert("children_rev", revision.unwrap_or(0))?;
    }
    txn.commit()?;
    Ok(())
}

fn read_meta(db: &Database) -> Result<Meta, redb::Error> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    let get = |key: &str| -> Result<u64, redb::Error> { Ok(meta.get(key)?.map_or(0, |v| v.value())) };
    Ok(Meta { revision: get("revision")?, count: get("entities")?, origin: get("origin")? })
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Open(format!(
            "{} is in use by another process (another cedar-pdp on the same --data-dir?)",
            path.display()
        )),
        e => StoreError::Open(format!("{}: cannot open the entity database: {e}", path.display())),
    }
}

/// A failed write transaction commits nothing.
fn write_error(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Unavailable(format!("the entity database refused the write, so nothing was changed: {}", e.into()))
}

fn read_error(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Unavailable(format!("the entity database cannot be read: {}", e.into()))
}

/// How long the trimming task waits between passes for a retention period.
pub fn trim_interval(retention: Duration) -> Duration {
    (retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
}
