//! The in-process store, the embedded default: entities live in this process and are lost on restart;
//! the audit trail is an append-only JSON-lines file that survives it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use cedar_policy::EntityUid;

use super::{AuditFilter, AuditRecord, Change, Record, key_of, rfc3339};
use crate::error::StoreError;

pub struct MemoryStore {
    state: RwLock<State>,
    /// Held for the whole of a write: writes are serialized, and their audit lines stay in order.
    /// Opened at the first write, so a server that provisions nothing writes no file.
    audit: Mutex<Option<File>>,
    audit_path: PathBuf,
    /// `state.revision` and whether `state.entities` is empty, mirrored under the write lock: every
    /// decision reads them, and needs no lock for that.
    published: AtomicU64,
    empty: AtomicBool,
}

#[derive(Default)]
struct State {
    /// By key text, so that one type's entities are a contiguous range (`User::"…`).
    entities: BTreeMap<String, Arc<Record>>,
    revision: u64,
}

impl MemoryStore {
    pub fn open(audit_path: &Path) -> Result<Self, StoreError> {
        // Revisions continue from the trail, so they stay monotonic across restarts.
        let revision = if audit_path.exists() { read_records(audit_path)?.last().map_or(0, |r| r.revision) } else { 0 };
        Ok(MemoryStore {
            state: RwLock::new(State { revision, ..State::default() }),
            published: AtomicU64::new(revision),
            empty: AtomicBool::new(true),
            audit: Mutex::new(None),
            audit_path: audit_path.to_path_buf(),
        })
    }

    pub fn revision(&self) -> u64 {
        self.published.load(Ordering::SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.empty.load(Ordering::SeqCst)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub async fn apply(self: &Arc<Self>, changes: Vec<Change>, actor: &str) -> Result<u64, StoreError> {
        // The file write and its sync block: keep them off the runtime's workers.
        let (store, actor) = (self.clone(), actor.to_string());
        tokio::task::spawn_blocking(move || store.apply_blocking(changes, &actor))
            .await
            .map_err(|e| StoreError::Audit(e.to_string()))?
    }

    fn apply_blocking(&self, changes: Vec<Change>, actor: &str) -> Result<u64, StoreError> {
        let mut audit = self.audit.lock().unwrap_or_else(PoisonError::into_inner);
        let revision = self.read().revision + 1;
        let at = rfc3339(SystemTime::now());
        let mut records = Vec::with_capacity(changes.len());
        let mut lines = Vec::new();
        for change in &changes {
            let key = key_of(change.uid());
            let before = self.read().entities.get(&key).map(|r| r.json.clone());
            let (after, record) = match change {
                Change::Upsert { json, .. } => {
                    let record = Record::parse(json.clone(), revision).map_err(StoreError::Corrupt)?;
                    (Some(json.clone()), Some(Arc::new(record)))
                }
                Change::Delete { .. } => (None, None),
            };
            let audit = AuditRecord {
                revision,
                at: at.clone(),
                actor: actor.to_string(),
                operation: change.operation().to_string(),
                uid: key.clone(),
                before,
                after,
            };
            serde_json::to_writer(&mut lines, &audit).map_err(|e| StoreError::Audit(e.to_string()))?;
            lines.push(b'\n');
            records.push((key, record));
        }
        // The trail first: a change whose record cannot be written is not applied.
        let file = match &mut *audit {
            Some(file) => file,
            None => audit.insert(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.audit_path)
                    .map_err(|e| StoreError::Audit(format!("cannot open {}: {e}", self.audit_path.display())))?,
            ),
        };
        let length = file.metadata().map(|m| m.len());
        if let Err(e) = file.write_all(&lines).and_then(|()| file.sync_data()) {
            // Leave the trail as it was: no half line that would break every later read, and no
            // record of a change that is not applied. Reopen at the next write.
            if let Ok(length) = length {
                let _ = file.set_len(length);
            }
            *audit = None;
            return Err(StoreError::Audit(format!("cannot append to {}: {e}", self.audit_path.display())));
        }
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        for (key, record) in records {
            match record {
                Some(record) => state.entities.insert(key, record),
                None => state.entities.remove(&key),
            };
        }
        state.revision = revision;
        self.published.store(revision, Ordering::SeqCst);
        self.empty.store(state.entities.is_empty(), Ordering::SeqCst);
        Ok(revision)
    }

    /// The records and the revision they were read at.
    #[allow(clippy::type_complexity)]
    pub fn fetch(&self, uids: &[EntityUid], min_revision: u64) -> Result<(Vec<Option<Arc<Record>>>, u64), StoreError> {
        let state = self.read();
        if min_revision > state.revision {
            return Err(StoreError::AheadOfStore { requested: min_revision, current: state.revision });
        }
        Ok((uids.iter().map(|uid| state.entities.get(&key_of(uid)).cloned()).collect(), state.revision))
    }

    pub fn list(&self, ty: &str, after: &str, limit: usize) -> Vec<Arc<Record>> {
        let prefix = format!("{ty}::\"");
        let state = self.read();
        let start = if after.is_empty() { prefix.clone() } else { after.to_string() };
        state
            .entities
            .range(start..)
            .filter(|(k, _)| k.as_str() != after)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .take(limit)
            .map(|(_, r)| r.clone())
            .collect()
    }

    pub async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let path = self.audit_path.clone();
        let filter = filter.clone();
        tokio::task::spawn_blocking(move || {
            if !path.exists() {
                return Ok(Vec::new());
            }
            let mut out: Vec<AuditRecord> = read_records(&path)?.into_iter().filter(|r| filter.matches(r)).collect();
            out.truncate(filter.limit);
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Audit(e.to_string()))?
    }
}

fn read_records(path: &Path) -> Result<Vec<AuditRecord>, StoreError> {
    let file = File::open(path).map_err(|e| StoreError::Audit(format!("cannot read {}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| StoreError::Audit(format!("{}: {e}", path.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line)
            .map_err(|e| StoreError::Audit(format!("{}:{}: not an audit record: {e}", path.display(), n + 1)))?;
        out.push(record);
    }
    Ok(out)
}
