//! "Which resources may this principal act on", "who may act on this resource": every candidate
//! entity of a type — from the files and from the entity store, merged in uid order — decided as a
//! check on one policy snapshot. Exact by construction: a candidate is listed iff its check allows.
//!
//! Bounded: a call stops at a page of results, at `Limits::max_list_candidates` candidates examined,
//! or at its deadline. The first two end with a cursor to go on from; a deadline is an error, never a
//! short list presented as complete. Pruned: when every permit that can apply names its resources
//! (`resource == X`, `resource in X`), a candidate that is not X or under X is skipped without a
//! decision (`Targets`), since no policy could allow it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Instant;

use cedar_policy::{EntityTypeName, EntityUid};

use crate::authz::{self, CheckInput, UidRef};
use crate::entities::{self, EntityStore, key_of};
use crate::error::{DecideError, RequestError, StoreError};
use crate::policy::{Snapshot, Targets};

/// Store entities read per round trip while scanning.
const CHUNK: usize = 256;

/// The part of a check a listing varies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Varying {
    Principal,
    Resource,
}

impl Varying {
    pub fn field(self) -> &'static str {
        match self {
            Varying::Principal => "principal_type",
            Varying::Resource => "resource_type",
        }
    }
}

/// A listing: `input` with the varying part left out, filled with each candidate of `entity_type`.
pub struct ListQuery<'a> {
    pub input: CheckInput<'a>,
    pub varying: Varying,
    pub entity_type: &'a str,
    /// The candidate key a previous page ended at; "" from the start.
    pub after: &'a str,
    pub page_size: usize,
    pub min_revision: u64,
    /// Past this instant the listing fails with `DeadlineExceeded`.
    pub deadline: Option<Instant>,
}

/// One page of a listing.
pub struct Listed {
    /// In uid order.
    pub uids: Vec<EntityUid>,
    /// The key to go on after; `None` once every candidate was examined.
    pub next: Option<String>,
    /// Candidates examined (decided or pruned).
    pub scanned: usize,
    pub decision_id: String,
}

/// Candidates of one type in key order: the files' entities merged with the store's, files winning.
/// Built either as a scan of the type (`stored` read from the store's type index a chunk at a time),
/// or, when the permits name their resources, as what is under those (`under`), already complete.
struct Candidates<'a> {
    store: &'a EntityStore,
    ty: String,
    files: VecDeque<(String, EntityUid)>,
    stored: VecDeque<(String, EntityUid, Vec<EntityUid>)>,
    store_after: String,
    store_done: bool,
    /// The candidates are only the targets and what is under them: none needs `could_allow`.
    pruned: bool,
}

/// A candidate and, when it comes from the store, its direct parents (for pruning).
struct Candidate {
    key: String,
    uid: EntityUid,
    parents: Option<Vec<EntityUid>>,
}

impl<'a> Candidates<'a> {
    fn new(store: &'a EntityStore, snapshot: &Snapshot, ty: &EntityTypeName, after: &str) -> Self {
        let mut files: Vec<(String, EntityUid)> = snapshot
            .entities
            .iter()
            .map(|e| e.uid())
            .filter(|uid| uid.type_name() == ty)
            .map(|uid| (key_of(&uid), uid))
            .filter(|(key, _)| key.as_str() > after)
            .collect();
        files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let store_after = after.to_string();
        let (stored, store_done, pruned) = (VecDeque::new(), false, false);
        Candidates { store, ty: ty.to_string(), files: files.into(), stored, store_after, store_done, pruned }
    }

    /// The targets of type `ty` and every entity of type `ty` under a target that admits what is
    /// under it, from the store's children index and the files; `None` when the store keeps no
    /// such index or the walk passes `limit` entities (the caller then scans the type).
    async fn under(
        store: &'a EntityStore,
        snapshot: &Snapshot,
        ty: &EntityTypeName,
        targets: &[(EntityUid, bool)],
        after: &str,
        limit: usize,
    ) -> Result<Option<Candidates<'a>>, DecideError> {
        if !store.children_complete().await? {
            return Ok(None);
        }
        // The files' entities under each entity: their ancestors are closed over the files.
        let mut file_children: HashMap<EntityUid, Vec<EntityUid>> = HashMap::new();
        for entity in snapshot.entities.iter() {
            let uid = entity.uid();
            for ancestor in snapshot.entities.ancestors(&uid).into_iter().flatten() {
                file_children.entry(ancestor.clone()).or_default().push(uid.clone());
            }
        }
        let mut found: BTreeMap<String, EntityUid> = BTreeMap::new();
        for (target, _) in targets.iter().filter(|(t, _)| t.type_name() == ty) {
            if snapshot.entities.get(target).is_some() || store.get(target).await?.is_some() {
                found.insert(key_of(target), target.clone());
            }
        }
        let mut seen: HashSet<EntityUid> = HashSet::new();
        let mut frontier: Vec<EntityUid> = targets.iter().filter(|(_, under)| *under).map(|(t, _)| t.clone()).collect();
        while !frontier.is_empty() {
            let Some(mut children) = store.children(frontier.clone(), limit).await? else { return Ok(None) };
            children.extend(frontier.iter().filter_map(|n| file_children.get(n)).flatten().cloned());
            frontier = children.into_iter().filter(|c| seen.insert(c.clone())).collect();
            if seen.len() > limit {
                return Ok(None);
            }
            for child in frontier.iter().filter(|c| c.type_name() == ty) {
                found.insert(key_of(child), child.clone());
            }
        }
        let files: VecDeque<(String, EntityUid)> = found.into_iter().filter(|(key, _)| key.as_str() > after).collect();
        let (stored, store_after) = (VecDeque::new(), String::new());
        Ok(Some(Candidates { store, ty: ty.to_string(), files, stored, store_after, store_done: true, pruned: true }))
    }

    async fn next(&mut self) -> Result<Option<Candidate>, DecideError> {
        while self.stored.is_empty() && !self.store_done {
            // Ends only when the type index has no more: a chunk thinned by concurrent deletes (or
            // emptied) goes on from the index's last key.
            let (records, next) = self.store.list(&self.ty, &self.store_after, CHUNK).await?;
            match next {
                Some(next) => self.store_after = next,
                None => self.store_done = true,
            }
            for record in records {
                let uid = record.uid()?;
                self.stored.push_back((key_of(&uid), uid, record.parents.to_vec()));
            }
        }
        let take_file = match (self.files.front(), self.stored.front()) {
            (None, None) => return Ok(None),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(f), Some(s)) => f.0 <= s.0,
        };
        if take_file {
            let Some((key, uid)) = self.files.pop_front() else { return Ok(None) };
            // The files' entity wins over a stored one with the same uid.
            if self.stored.front().is_some_and(|s| s.0 == key) {
                self.stored.pop_front();
            }
            return Ok(Some(Candidate { key, uid, parents: None }));
        }
        let Some((key, uid, parents)) = self.stored.pop_front() else { return Ok(None) };
        Ok(Some(Candidate { key, uid, parents: Some(parents) }))
    }
}

/// Whether some permit's resource scope can admit `uid`: it is a target, or an ancestor of it is a
/// target that admits what is under it. Ancestors are read as a decision reads them: the files'
/// entity wins, the store (through its cache) for the rest.
async fn could_allow(
    targets: &Targets,
    store: &EntityStore,
    snapshot: &Snapshot,
    candidate: &Candidate,
    min_revision: u64,
) -> Result<bool, DecideError> {
    let Targets::Only(targets) = targets else { return Ok(true) };
    if targets.iter().any(|(t, _)| *t == candidate.uid) {
        return Ok(true);
    }
    let above: Vec<&EntityUid> = targets.iter().filter(|(_, under)| *under).map(|(t, _)| t).collect();
    if above.is_empty() {
        return Ok(false);
    }
    let mut seen: HashSet<EntityUid> = HashSet::new();
    let mut frontier: Vec<EntityUid> = match &candidate.parents {
        Some(parents) => parents.clone(),
        None => vec![candidate.uid.clone()],
    };
    while !frontier.is_empty() {
        let mut wanted = Vec::new();
        let mut next = Vec::new();
        for uid in frontier.drain(..) {
            if above.contains(&&uid) {
                return Ok(true);
            }
            if !seen.insert(uid.clone()) {
                continue;
            }
            match snapshot.entities.ancestors(&uid) {
                Some(ancestors) => next.extend(ancestors.cloned()),
                _ => wanted.push(uid),
            }
        }
        if seen.len() > store.max_decision_entities {
            return Err(StoreError::TooManyEntities(store.max_decision_entities).into());
        }
        if !wanted.is_empty() {
            let (records, _) = store.fetch(&wanted, min_revision, false).await?;
            next.extend(records.into_iter().flatten().flat_map(|r| r.parents.clone()));
        }
        frontier = next;
    }
    Ok(false)
}

/// A page token: the policy version and the candidate key to go on after, so that the pages of one
/// listing are all of one policy snapshot.
pub fn page_token(version: &str, after: &str) -> String {
    let hex: String = after.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{version}.{hex}")
}

/// The candidate key a page token goes on after ("" for none); `field` names it in errors.
pub fn parse_page_token(token: &str, version: &str, field: &str) -> Result<String, RequestError> {
    if token.is_empty() {
        return Ok(String::new());
    }
    let foreign = || RequestError::invalid(field, "not a page token this server gave");
    let (of, hex) = token.split_once('.').ok_or_else(foreign)?;
    if of != version {
        return Err(RequestError::invalid(
            field,
            "from another policy version (the policies were reloaded): start the listing again",
        ));
    }
    let bytes: Option<Vec<u8>> =
        (0..hex.len()).step_by(2).map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect();
    bytes.and_then(|b| String::from_utf8(b).ok()).ok_or_else(foreign)
}

/// One page of `query` on `snapshot`: every candidate examined is decided (or pruned, when no
/// policy could allow it), each by the same rules as Check. Past `query.deadline` — deciding, or
/// waiting on the store — the listing is `DeadlineExceeded`.
pub(super) async fn list(
    store: &EntityStore,
    snapshot: &Snapshot,
    query: &ListQuery<'_>,
    limits: &authz::Limits,
) -> Result<(Vec<EntityUid>, Option<String>, usize), DecideError> {
    let Some(deadline) = query.deadline else { return scan(store, snapshot, query, limits).await };
    match tokio::time::timeout_at(deadline.into(), scan(store, snapshot, query, limits)).await {
        Ok(page) => page,
        Err(_) => Err(DecideError::DeadlineExceeded(
            "the listing passed its deadline: ask again with a longer deadline or a smaller page".into(),
        )),
    }
}

/// Candidates decided between two yields: a long listing shares its worker thread.
const YIELD_EVERY: usize = 64;

async fn scan(
    store: &EntityStore,
    snapshot: &Snapshot,
    query: &ListQuery<'_>,
    limits: &authz::Limits,
) -> Result<(Vec<EntityUid>, Option<String>, usize), DecideError> {
    let field = query.varying.field();
    let ty = snapshot.index.type_name(query.entity_type).map_err(|e| {
        RequestError::invalid(field, format!("`{}` is not an entity type name: {e}", query.entity_type))
    })?;
    let targets = probe(store, snapshot, query, &ty, limits).await?;
    let ty_text = ty.to_string();
    let under = match &targets {
        Targets::Only(only) => {
            Candidates::under(store, snapshot, &ty, only, query.after, limits.max_list_candidates).await?
        }
        Targets::Any => None,
    };
    let mut candidates = match under {
        Some(under) => under,
        None => Candidates::new(store, snapshot, &ty, query.after),
    };
    let (mut uids, mut scanned) = (Vec::new(), 0);
    while let Some(candidate) = candidates.next().await? {
        scanned += 1;
        if scanned % YIELD_EVERY == 0 {
            tokio::task::yield_now().await;
        }
        if candidates.pruned || could_allow(&targets, store, snapshot, &candidate, query.min_revision).await? {
            let id = candidate.uid.id().unescaped().to_string();
            let one = UidRef { ty: &ty_text, id: &id };
            let input = match query.varying {
                Varying::Principal => CheckInput { principal: Some(one), ..query.input },
                Varying::Resource => CheckInput { resource: Some(one), ..query.input },
            };
            if entities::decide(store, snapshot, &input, limits, query.min_revision).await?.allow {
                uids.push(candidate.uid);
            }
        }
        if uids.len() == query.page_size || scanned == limits.max_list_candidates {
            return Ok((uids, Some(candidate.key), scanned));
        }
    }
    Ok((uids, None, scanned))
}

/// Validates the fixed parts of the query (a check on a candidate that does not exist), and finds
/// which entities the permits that can apply are limited to.
async fn probe(
    store: &EntityStore,
    snapshot: &Snapshot,
    query: &ListQuery<'_>,
    ty: &EntityTypeName,
    limits: &authz::Limits,
) -> Result<Targets, DecideError> {
    let ty_text = ty.to_string();
    let probe = UidRef { ty: &ty_text, id: "" };
    let input = match query.varying {
        Varying::Principal => CheckInput { principal: Some(probe), ..query.input },
        Varying::Resource => CheckInput { resource: Some(probe), ..query.input },
    };
    let renamed = |e: RequestError| {
        let side = match query.varying {
            Varying::Principal => "principal",
            Varying::Resource => "resource",
        };
        e.renamed(|f| {
            if f == side || f.starts_with(&format!("{side}.")) {
                query.varying.field().to_string()
            } else {
                f.to_string()
            }
        })
    };
    let prepared = authz::prepare(snapshot, &input, limits).map_err(renamed)?;
    match query.varying {
        Varying::Principal => Ok(Targets::Any),
        Varying::Resource => {
            let slice = entities::slice_for(store, snapshot, &prepared, query.min_revision).await?;
            Ok(snapshot.resource_targets(&prepared.uids[0], &prepared.uids[1], ty, &slice))
        }
    }
}
