//! The bounded in-process cache in front of a store: Redis, kept coherent by the invalidation
//! subscription, or the embedded database, kept coherent by its own writer (always "subscribed").
//!
//! Invariants:
//! - While subscribed, a cached entry is current: every write's invalidation is applied on arrival.
//! - While not subscribed, an entry is served only if it was confirmed (fetched, or kept current by
//!   the subscription) within `stale_for`; otherwise it is fetched again, and if Redis cannot answer
//!   the decision fails closed.
//! - On (re)subscribing the whole cache is dropped: messages may have been missed meanwhile.
//! - A fetch that overlapped an invalidation does not leave its possibly older result cached
//!   (the epoch check below, made atomic with the insert by `gate`), and a fetch ahead of the
//!   cache's revision is not cached at all.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cedar_policy::EntityUid;
use moka::sync::Cache;

use super::{Fetched, Record, uid_of_key};
use crate::error::StoreError;

/// Where cache misses are read: one round trip for many uids, with the store revision read at.
pub trait Source {
    fn fetch(&self, uids: &[EntityUid], min_revision: u64) -> impl Future<Output = Result<Fetched, StoreError>> + Send;
}

#[derive(Clone)]
struct Cached {
    /// None: known absent (policy literals and unknown resources are common and cheap to remember).
    record: Option<Arc<Record>>,
    fetched_at: Instant,
}

pub struct EntityCache {
    entries: Cache<EntityUid, Cached>,
    /// Bumped by every invalidation, before it is applied.
    epoch: AtomicU64,
    subscribed: AtomicBool,
    /// When the subscription was last lost (or the process started).
    lost_at: Mutex<Instant>,
    /// The highest revision whose invalidation this replica has applied.
    seen_revision: AtomicU64,
    stale_for: Duration,
    /// Mirrors `subscribed`, for whoever waits for it.
    subscription: tokio::sync::watch::Sender<bool>,
    /// Invalidations hold it exclusively; a fetch holds it shared from its epoch check to its insert.
    gate: std::sync::RwLock<()>,
    /// The highest store revision this replica has seen anywhere: a lower one later means the store
    /// lost acknowledged writes, and it is the floor of this replica's next write.
    highest: AtomicU64,
    /// What an operator must know about the store: lost writes, risky persistence settings.
    warnings: Mutex<Warnings>,
}

#[derive(Debug, Default, Clone)]
pub struct Warnings {
    pub regression: Option<String>,
    pub persistence: Option<String>,
}

impl EntityCache {
    pub fn new(capacity: u64, ttl: Duration, stale_for: Duration) -> Self {
        EntityCache {
            entries: Cache::builder().max_capacity(capacity).time_to_live(ttl).build(),
            epoch: AtomicU64::new(0),
            subscribed: AtomicBool::new(false),
            lost_at: Mutex::new(Instant::now()),
            seen_revision: AtomicU64::new(0),
            stale_for,
            subscription: tokio::sync::watch::Sender::new(false),
            gate: std::sync::RwLock::new(()),
            highest: AtomicU64::new(0),
            warnings: Mutex::new(Warnings::default()),
        }
    }

    /// Waits until the invalidation subscription is up, at most `within`; whether it is.
    pub async fn wait_subscribed(&self, within: Duration) -> bool {
        let mut rx = self.subscription.subscribe();
        tokio::time::timeout(within, rx.wait_for(|up| *up)).await.is_ok_and(|r| r.is_ok())
    }

    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::SeqCst)
    }

    /// Changes with every invalidation; None while unsubscribed, when nothing derived from cached
    /// entities may be kept (each entry's staleness must be checked on its own).
    pub fn epoch(&self) -> Option<u64> {
        self.is_subscribed().then(|| self.epoch.load(Ordering::SeqCst))
    }

    /// `--entity-stale-for 0s`: nothing unconfirmed is ever served, so every decision confirms the
    /// store's revision itself.
    pub fn confirms_every_decision(&self) -> bool {
        self.stale_for.is_zero()
    }

    pub fn seen_revision(&self) -> u64 {
        self.seen_revision.load(Ordering::SeqCst)
    }

    pub async fn fetch(
        &self,
        store: &impl Source,
        uids: &[EntityUid],
        min_revision: u64,
        fresh: bool,
    ) -> Result<(Vec<Option<Arc<Record>>>, Option<u64>), StoreError> {
        let mut out: Vec<Option<Arc<Record>>> = vec![None; uids.len()];
        let mut missing = Vec::new();
        for (i, uid) in uids.iter().enumerate() {
            match self.entries.get(uid).filter(|c| !fresh && self.usable(c)) {
                Some(cached) => out[i] = cached.record,
                None => missing.push(i),
            }
        }
        metrics::counter!("cedar_pdp_entity_cache_hits_total").increment((uids.len() - missing.len()) as u64);
        if missing.is_empty() {
            return Ok((out, None));
        }
        metrics::counter!("cedar_pdp_entity_cache_misses_total").increment(missing.len() as u64);
        metrics::counter!("cedar_pdp_entity_fetches_total").increment(1);
        let epoch = self.epoch.load(Ordering::SeqCst);
        let wanted: Vec<EntityUid> = missing.iter().map(|&i| uids[i].clone()).collect();
        let floor = self.highest();
        let (fetched, revision) = store.fetch(&wanted, min_revision).await?;
        self.observe(floor, revision);
        let now = Instant::now();
        // Cached only if no invalidation ran since the read began (it may be about what was read),
        // and only what is not newer than the revision the cache is current at (a read ahead of it,
        // for a min_revision, must not sit beside entries its invalidation has not reached yet).
        // Checked and inserted under the gate that invalidations take exclusively, so an
        // invalidation cannot land between the check and the insert.
        let gate = self.gate.read().unwrap_or_else(PoisonError::into_inner);
        let keep = self.epoch.load(Ordering::SeqCst) == epoch && revision <= self.seen_revision();
        for ((&i, uid), record) in missing.iter().zip(&wanted).zip(fetched) {
            if keep {
                self.entries.insert(uid.clone(), Cached { record: record.clone(), fetched_at: now });
            }
            out[i] = record;
        }
        drop(gate);
        Ok((out, Some(revision)))
    }

    fn usable(&self, cached: &Cached) -> bool {
        if self.subscribed.load(Ordering::SeqCst) {
            return true;
        }
        let lost_at = *self.lost_at.lock().unwrap_or_else(PoisonError::into_inner);
        cached.fetched_at.max(lost_at).elapsed() <= self.stale_for
    }

    /// Bumps the epoch before (so that a fetch in flight does not keep what it read) and after (so
    /// that a slice built from an entry read before its removal is not kept either).
    pub fn invalidate(&self, uids: &[EntityUid]) {
        let _gate = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        uids.iter().for_each(|uid| self.entries.invalidate(uid));
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// The invalidation counter, subscribed or not: a decision that read the cache compares it
    /// before and after, so that it never combines entries from both sides of an invalidation.
    pub fn raw_epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    pub fn clear(&self) {
        let _gate = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate_all();
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// The writer of the embedded store has applied `revision` (after invalidating what it changed).
    pub fn advance(&self, revision: u64) {
        self.note(revision);
        self.seen_revision.fetch_max(revision, Ordering::SeqCst);
    }

    /// Notes a revision this replica learnt (its own write's, a message's): the floor of its next write.
    pub fn note(&self, revision: u64) {
        self.highest.fetch_max(revision, Ordering::SeqCst);
    }

    /// Notes the revision a read returned, given `floor`, the highest this replica had seen before the
    /// read began. The store never goes below what it already showed, so a lower answer means
    /// acknowledged writes were lost (a Redis restart from an old snapshot, a failover to a replica
    /// that lagged): raised as an alarm, and everything cached is dropped, since it may hold what the
    /// store no longer has. (Comparing with `floor`, not with the highest now, keeps a read that merely
    /// crossed a newer write from looking like a loss.)
    pub fn observe(&self, floor: u64, revision: u64) {
        self.note(revision);
        if revision >= floor {
            return;
        }
        let alarm = format!("acknowledged writes were lost: revision {floor} → {revision}");
        tracing::error!(floor, revision, "entity store went back in time: {alarm}; local caches dropped");
        metrics::counter!("cedar_pdp_entity_revision_regressions_total").increment(1);
        self.warnings.lock().unwrap_or_else(PoisonError::into_inner).regression = Some(alarm);
        self.clear();
    }

    /// The floor of this replica's next write: revisions never repeat, even after a store lost some.
    pub fn highest(&self) -> u64 {
        self.highest.load(Ordering::SeqCst)
    }

    pub fn set_persistence_warning(&self, warning: Option<String>) {
        self.warnings.lock().unwrap_or_else(PoisonError::into_inner).persistence = warning;
    }

    pub fn warnings(&self) -> Warnings {
        self.warnings.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Applies one message `<rev>\n<uid>\n…` from the invalidation channel.
    pub fn apply_invalidation(&self, payload: &str) {
        let mut lines = payload.split('\n');
        let revision = lines.next().and_then(|r| r.parse::<u64>().ok());
        let uids: Option<Vec<EntityUid>> = lines.map(uid_of_key).collect();
        match (revision, uids) {
            (Some(revision), Some(uids)) => {
                self.note(revision);
                self.invalidate(&uids);
                self.seen_revision.fetch_max(revision, Ordering::SeqCst);
            }
            _ => {
                tracing::warn!(payload, "entity invalidations: malformed message; local cache cleared");
                self.clear();
            }
        }
    }

    /// Subscribed (again) at store revision `revision`.
    /// `floor` is the highest revision seen before the revision was read.
    pub fn subscribed(&self, floor: u64, revision: u64) {
        self.observe(floor, revision);
        self.clear();
        self.seen_revision.store(revision, Ordering::SeqCst);
        self.subscribed.store(true, Ordering::SeqCst);
        self.subscription.send_replace(true);
    }

    /// The subscription is lost; `confirmed` is the last moment it was known to work (the last message
    /// or ping answer), from which the staleness bound counts: anything missed came after it.
    pub fn lost(&self, confirmed: Instant) {
        *self.lost_at.lock().unwrap_or_else(PoisonError::into_inner) = confirmed;
        self.subscribed.store(false, Ordering::SeqCst);
        self.subscription.send_replace(false);
    }
}
