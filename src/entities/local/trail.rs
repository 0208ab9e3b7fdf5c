//! The embedded store's audit trail: reading it by uid or time, a page at a time; trimming it to
//! the retention; replaying the former in-process store's trail into a new database.

use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::{AUDIT, AUDIT_BY_UID, AUDIT_TIME, ENTITIES, LocalStore, META, millis, read_error, write_error};
use crate::entities::{AuditFilter, AuditRecord};
use crate::error::StoreError;

impl LocalStore {
    /// Audit records matching `filter`, oldest first.
    pub fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(read_error)?;
        let audit = txn.open_table(AUDIT).map_err(read_error)?;
        let mut out = Vec::new();
        let mut take = |(revision, i): (u64, u32), value: &[u8]| -> Result<bool, StoreError> {
            let mut record: AuditRecord =
                serde_json::from_slice(value).map_err(|e| StoreError::Corrupt(format!("audit record: {e}")))?;
            record.cursor = format!("{revision}-{i}");
            if filter.matches(&record) {
                out.push(record);
            }
            Ok(out.len() < filter.limit)
        };
        match &filter.uid {
            Some(uid) => {
                let index = txn.open_table(AUDIT_BY_UID).map_err(read_error)?;
                let start = match filter.after {
                    Some((revision, i)) => Bound::Excluded((uid.as_str(), revision, cursor_index(i))),
                    None => Bound::Included((uid.as_str(), 0, 0)),
                };
                let end = Bound::Included((uid.as_str(), u64::MAX, u32::MAX));
                for entry in index.range::<(&str, u64, u32)>((start, end)).map_err(read_error)? {
                    let (key, _) = entry.map_err(read_error)?;
                    let (_, revision, i) = key.value();
                    let Some(value) = audit.get((revision, i)).map_err(read_error)? else { continue };
                    if !take((revision, i), value.value())? {
                        break;
                    }
                }
            }
            None => {
                let start = match (filter.after, filter.since) {
                    (Some((revision, i)), _) => Bound::Excluded((revision, cursor_index(i))),
                    (None, Some(since)) => Bound::Included((first_revision_at(&txn, millis(since))?, 0)),
                    (None, None) => Bound::Unbounded,
                };
                for entry in audit.range::<(u64, u32)>((start, Bound::Unbounded)).map_err(read_error)? {
                    let (key, value) = entry.map_err(read_error)?;
                    if !take(key.value(), value.value())? {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Removes audit records older than `before`, a bounded number per transaction so that writes
    /// are not held up; returns how many were removed.
    pub fn trim_audit(&self, before: SystemTime) -> Result<u64, StoreError> {
        const REVISIONS_PER_TXN: usize = 1000;
        let cutoff = millis(before);
        let mut removed = 0;
        loop {
            let txn = self.db.begin_write().map_err(write_error)?;
            let mut done = true;
            {
                let mut times = txn.open_table(AUDIT_TIME).map_err(write_error)?;
                let mut audit = txn.open_table(AUDIT).map_err(write_error)?;
                let mut by_uid = txn.open_table(AUDIT_BY_UID).map_err(write_error)?;
                let old: Vec<u64> = times
                    .range(0..)
                    .map_err(write_error)?
                    .map_while(|e| e.ok().filter(|(_, at)| at.value() < cutoff).map(|(rev, _)| rev.value()))
                    .take(REVISIONS_PER_TXN + 1)
                    .collect();
                done = done && old.len() <= REVISIONS_PER_TXN;
                for &revision in old.iter().take(REVISIONS_PER_TXN) {
                    let records: Vec<(u32, Vec<u8>)> = audit
                        .range((revision, 0)..=(revision, u32::MAX))
                        .map_err(write_error)?
                        .filter_map(Result::ok)
                        .map(|(k, v)| (k.value().1, v.value().to_vec()))
                        .collect();
                    for (i, value) in records {
                        if let Ok(record) = serde_json::from_slice::<AuditRecord>(&value) {
                            by_uid.remove((record.uid.as_str(), revision, i)).map_err(write_error)?;
                        }
                        audit.remove((revision, i)).map_err(write_error)?;
                        removed += 1;
                    }
                    times.remove(revision).map_err(write_error)?;
                }
            }
            txn.commit().map_err(write_error)?;
            if done {
                return Ok(removed);
            }
        }
    }

    /// Replays the JSON-lines audit trail of the former in-process store into this (new, empty)
    /// store: the entities as its last records left them, the records themselves, the revision.
    pub fn import_legacy_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(write_error)?;
        txn.set_two_phase_commit(true);
        let (last, count);
        {
            let mut entities = txn.open_table(ENTITIES).map_err(write_error)?;
            let mut audit = txn.open_table(AUDIT).map_err(write_error)?;
            let mut by_uid = txn.open_table(AUDIT_BY_UID).map_err(write_error)?;
            let mut times = txn.open_table(AUDIT_TIME).map_err(write_error)?;
            let (mut newest, mut index) = (0, 0u32);
            for record in records {
                index = if record.revision == newest { index.saturating_add(1) } else { 0 };
                newest = record.revision;
                match &record.after {
                    Some(after) => {
                        let stored = serde_json::json!({"rev": record.revision, "entity": after}).to_string();
                        entities.insert(record.uid.as_str(), stored.as_bytes()).map_err(write_error)?;
                    }
                    None => {
                        entities.remove(record.uid.as_str()).map_err(write_error)?;
                    }
                }
                let line = serde_json::to_vec(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                audit.insert((record.revision, index), line.as_slice()).map_err(write_error)?;
                by_uid.insert((record.uid.as_str(), record.revision, index), ()).map_err(write_error)?;
                let at = humantime::parse_rfc3339_weak(&record.at).map_or(0, millis);
                times.insert(record.revision, at).map_err(write_error)?;
            }
            last = newest;
            count = entities.len().map_err(write_error)?;
            let mut meta = txn.open_table(META).map_err(write_error)?;
            meta.insert("revision", last).map_err(write_error)?;
            meta.insert("entities", count).map_err(write_error)?;
            // The trail's revisions are this store's history from its start.
            meta.insert("origin", 0).map_err(write_error)?;
        }
        txn.commit().map_err(write_error)?;
        self.count.store(count, Ordering::SeqCst);
        self.revision.store(last, Ordering::SeqCst);
        self.origin.store(0, Ordering::SeqCst);
        Ok(())
    }
}

/// The first revision recorded at or after `at_ms` (0 when none is older).
fn first_revision_at(txn: &redb::ReadTransaction, at_ms: u64) -> Result<u64, StoreError> {
    let times = txn.open_table(AUDIT_TIME).map_err(read_error)?;
    for entry in times.range(0..).map_err(read_error)? {
        let (revision, at) = entry.map_err(read_error)?;
        if at.value() >= at_ms {
            return Ok(revision.value());
        }
    }
    Ok(u64::MAX)
}

fn cursor_index(i: u64) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}
