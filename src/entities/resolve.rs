//! Decisions on provisioned entities: load what the decision can reach, level by level, then decide.
//!
//! What is loaded: the principal, action and resource, the entities the context, the request's own
//! entities and the policies' condition literals name; all of their ancestors; and, by attribute and
//! tag references, entities up to the policies' access depth (`EntityIndex::deref_depth`), with their
//! ancestors. No policy can read beyond that depth, and every `in` sees complete ancestors, so the
//! decision equals Cedar's on the whole entity set. Each level is one store round trip (MGET), after
//! the local cache.
//!
//! Fail closed: an entity that could not be read is an error, never an absent entity.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cedar_policy::{Entities, Entity, EntityUid};

use super::{EntityStore, Record};
use crate::authz::{self, CheckInput, Limits, Outcome};
use crate::error::{DecideError, RequestError, StoreError};
use crate::policy::Snapshot;

/// Decides one check on the files' entities merged with the provisioned ones (files win).
pub async fn decide(
    store: &EntityStore,
    snapshot: &Snapshot,
    input: &CheckInput<'_>,
    limits: &Limits,
    min_revision: u64,
) -> Result<Outcome, DecideError> {
    let asked = min_revision;
    let min_revision = floor(store, min_revision).await?;
    if store.known_empty() {
        return Ok(authz::decide(snapshot, input, limits)?);
    }
    let prepared = authz::prepare(snapshot, input, limits)?;
    // Request-scoped entities make every slice different: only plain requests are cached.
    let key = (prepared.own.is_empty() && store.has_seen(min_revision)).then(|| store.epoch()).flatten().map(|epoch| {
        let context = prepared.context_uids.clone();
        SliceKey { generation: snapshot.generation, epoch, uids: prepared.uids.clone(), context }
    });
    if let Some(entities) = key.as_ref().and_then(|k| store.slices.get(k)) {
        return Ok(authz::decide_on(snapshot, prepared, &entities));
    }
    let entities =
        Arc::new(consistent_slice(store, snapshot, &prepared, min_revision).await.map_err(went_back(asked))?);
    // Kept only if no invalidation arrived while it was built: it may hold what that replaced.
    if let Some(key) = key.filter(|k| store.epoch() == Some(k.epoch)) {
        store.slices.insert(key, entities.clone());
    }
    Ok(authz::decide_on(snapshot, prepared, &entities))
}

/// The entities a prepared check reads, as `decide` would read them: for questions about its
/// principal and action that come before any decision (a listing's pruning).
pub(crate) async fn slice_for(
    store: &EntityStore,
    snapshot: &Snapshot,
    prepared: &authz::Prepared,
    min_revision: u64,
) -> Result<Entities, DecideError> {
    let asked = min_revision;
    let min_revision = floor(store, min_revision).await?;
    consistent_slice(store, snapshot, prepared, min_revision).await.map_err(went_back(asked))
}

/// A store found behind a revision this decision read from it itself (not one the caller asked
/// for): writes no replica had were lost in a failover between the two reads. The caller may retry
/// (UNAVAILABLE), which a precondition it never set would tell it not to.
fn went_back(asked: u64) -> impl Fn(DecideError) -> DecideError {
    move |e| match e {
        DecideError::Store(StoreError::AheadOfStore { requested, current }) if requested > asked => {
            DecideError::Store(StoreError::Unavailable(format!(
                "the entity store went back from revision {requested} to {current} during this decision \
                 (a failover lost writes no replica had); retry"
            )))
        }
        other => other,
    }
}

/// The revision a read must see at least: `min_revision`, once the store has it (see
/// `EntityStore::decision_floor`).
async fn floor(store: &EntityStore, min_revision: u64) -> Result<u64, DecideError> {
    store.ensure_revision(min_revision).await?;
    Ok(store.decision_floor(min_revision).await?)
}

/// What a built slice depends on besides the request: the snapshot and the store's epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SliceKey {
    generation: u64,
    epoch: u64,
    uids: [EntityUid; 3],
    context: Vec<EntityUid>,
}

/// How many times a slice is read again when entities changed while it was being read.
const ATTEMPTS: usize = 3;

/// The slice a prepared check needs, read as of one store revision. A slice is read level by level;
/// were a write to land between two levels, one decision could combine a user's old parents with a
/// group's new ones and allow what neither state allows. So every read notes the revision it saw: if
/// they differ, or this replica's view moved meanwhile, the slice is read again, from the store itself
/// at the newest revision seen. Entities that keep changing make the decision fail closed.
async fn consistent_slice(
    store: &EntityStore,
    snapshot: &Snapshot,
    prepared: &authz::Prepared,
    min_revision: u64,
) -> Result<Entities, DecideError> {
    let mut at = min_revision;
    for _ in 0..ATTEMPTS {
        let seen = store.seen_revision();
        let epoch = store.raw_epoch();
        // Reading above `seen` bypasses the cache: every level then comes from the store.
        let from_store = at > seen;
        let (slice, revisions) = gather(store, snapshot, prepared, at, from_store).await?;
        let newest = revisions.iter().copied().max();
        let one_revision = revisions.windows(2).all(|w| w[0] == w[1]);
        let consistent = if from_store {
            one_revision
        } else {
            // Cached levels are current as of `seen`, provided no invalidation ran in between (an
            // entry read before it and one cached after it would mix two states); store reads must
            // be at that same revision.
            one_revision
                && newest.is_none_or(|r| r == seen)
                && store.seen_revision() == seen
                && store.raw_epoch() == epoch
        };
        if consistent {
            return Ok(slice);
        }
        metrics::counter!("cedar_pdp_entity_slice_retries_total").increment(1);
        at = at.max(newest.unwrap_or(0)).max(store.seen_revision());
    }
    Err(StoreError::Unavailable("entities kept changing while this decision read them".into()).into())
}

/// The entity slice a prepared check needs, and the store revision of each store read it made.
pub(crate) async fn gather(
    store: &EntityStore,
    snapshot: &Snapshot,
    prepared: &authz::Prepared,
    min_revision: u64,
    fresh: bool,
) -> Result<(Entities, Vec<u64>), DecideError> {
    let depth_limit = snapshot.index.deref_depth;
    let own: HashMap<EntityUid, usize> = prepared.own.iter().map(|(i, e)| (e.uid(), *i)).collect();
    let mut roots: Vec<EntityUid> = prepared.uids.to_vec();
    roots.extend(snapshot.index.policy_literals.iter().cloned());
    roots.extend(prepared.context_uids.iter().cloned());
    roots.extend(prepared.own_mentions.iter().cloned());
    // A request may not redefine a provisioned entity: look its own uids up too.
    roots.extend(own.keys().cloned());
    let mut frontier: Vec<(EntityUid, usize)> = roots.into_iter().map(|u| (u, 0)).collect();

    // Smallest depth each uid was reached at; an entity reached again nearer is expanded again.
    let mut depth_of: HashMap<EntityUid, usize> = HashMap::new();
    let mut fetched: HashMap<EntityUid, Option<Arc<Record>>> = HashMap::new();
    let mut slice: Vec<Entity> = prepared.own.iter().map(|(_, e)| e.clone()).collect();
    let mut included: HashSet<EntityUid> = own.keys().cloned().collect();
    let mut revisions = Vec::new();
    while !frontier.is_empty() {
        let mut next: Vec<(EntityUid, usize)> = Vec::new();
        let mut expand: Vec<(EntityUid, usize)> = Vec::new();
        for (uid, depth) in frontier.drain(..) {
            if depth_of.get(&uid).is_some_and(|&seen| seen <= depth) {
                continue;
            }
            depth_of.insert(uid.clone(), depth);
            if let Some(entity) = snapshot.entities.get(&uid) {
                // The files' entity wins; its ancestors are already closed over the files.
                if let Some(ancestors) = snapshot.entities.ancestors(&uid) {
                    next.extend(ancestors.map(|a| (a.clone(), depth)));
                }
                if depth < depth_limit
                    && let Some(refs) = snapshot.index.refs.get(&uid)
                {
                    next.extend(refs.iter().map(|r| (r.clone(), depth + 1)));
                }
                if included.insert(uid) {
                    slice.push(entity.clone());
                }
            } else {
                expand.push((uid, depth));
            }
        }
        let wanted: Vec<EntityUid> =
            expand.iter().filter(|(u, _)| !fetched.contains_key(u)).map(|(u, _)| u.clone()).collect();
        // Found or not, every uid looked up counts: absent ones cost a lookup and a cache entry too.
        if depth_of.len() > store.max_decision_entities {
            return Err(StoreError::TooManyEntities(store.max_decision_entities).into());
        }
        if !wanted.is_empty() {
            let (records, revision) = store.fetch(&wanted, min_revision, fresh).await?;
            revisions.extend(revision);
            fetched.extend(wanted.into_iter().zip(records));
        }
        for (uid, depth) in expand {
            let Some(Some(record)) = fetched.get(&uid) else { continue };
            if let Some(&i) = own.get(&uid) {
                return Err(RequestError::invalid(
                    &format!("entities_json[{i}]"),
                    format!("`{uid}` is a provisioned entity; a request cannot redefine it"),
                )
                .into());
            }
            next.extend(record.parents.iter().map(|p| (p.clone(), depth)));
            if depth < depth_limit {
                next.extend(record.refs.iter().map(|r| (r.clone(), depth + 1)));
            }
            if included.insert(uid.clone()) {
                slice.push(store.cedar_entity(&uid, record)?);
            }
        }
        frontier = next;
    }
    // A request entity must not be something a provisioned entity points to: it would give a stored
    // user new ancestors or define the owner a stored document names.
    for (stored, record) in fetched.iter().filter_map(|(uid, r)| Some((uid, r.as_ref()?))) {
        for uid in record.parents.iter().chain(&record.refs) {
            if let Some(&i) = own.get(uid) {
                return Err(RequestError::invalid(
                    &format!("entities_json[{i}]"),
                    format!("`{uid}` is referred to by provisioned entity `{}`; a request cannot define it", stored),
                )
                .into());
            }
        }
    }
    let entities = Entities::from_entities(slice, None).map_err(|e| {
        // The request's own entities were checked already; what is left is the stored graph (a
        // parent cycle built across writes).
        DecideError::from(StoreError::Corrupt(format!("the entity graph this decision reads: {e}")))
    })?;
    Ok((entities, revisions))
}
