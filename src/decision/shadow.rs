//! Shadow policies (`--shadow-policies DIR`): every live decision is decided again on a second
//! policy set, off the request's path, and the differences logged (target `cedar_pdp::shadow`) and
//! counted (`cedar_pdp_shadow_decisions_total{result}`).
//!
//! Architecture invariant: the live answer never waits for, or depends on, the shadow set. A live
//! decision only offers a copy of its question to a bounded queue; when the queue is full the shadow
//! evaluation is dropped and counted. The worker that takes jobs off the queue is a thread at the
//! lowest CPU priority: under saturation it is rarely scheduled, so few shadow decisions start and
//! the rest are dropped. The decisions it starts (a batch at a time) run on the server's runtime,
//! like any decision, so that the entity store's connections and locks are only used from there.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::authz::{CheckInput, ContextIn, Limits, Outcome, UidRef};
use crate::entities::{self, EntityStore};
use crate::policy::PolicyStore;

/// What the shadow set did, since start.
#[derive(Debug, Default)]
pub struct ShadowCounts {
    pub same: AtomicU64,
    pub allow_gain: AtomicU64,
    pub allow_loss: AtomicU64,
    /// Decided differently only in the determining policies.
    pub reasons_differ: AtomicU64,
    /// The shadow set could not decide (a request its schema refuses, a store error).
    pub errors: AtomicU64,
    /// Dropped because the queue was full.
    pub dropped: AtomicU64,
}

/// A live question, owned, for the shadow worker.
struct Job {
    decision_id: String,
    uids: [(String, String); 3],
    context_json: String,
    entities_json: String,
    min_revision: u64,
    allow: bool,
    determining: Vec<String>,
}

/// The most bytes of context and request entities waiting in the queue: a slow shadow set with
/// large requests must not hold gigabytes.
const MAX_QUEUED_BYTES: usize = 64 << 20;

/// The live side's handle: offers questions to the worker.
pub struct Shadow {
    pub policies: Arc<PolicyStore>,
    pub counts: Arc<ShadowCounts>,
    queue: mpsc::Sender<Job>,
    queued_bytes: Arc<AtomicUsize>,
}

impl Shadow {
    /// Starts the worker, with at most `capacity` evaluations waiting; it ends with `stop`.
    pub fn start(
        policies: Arc<PolicyStore>,
        store: Arc<EntityStore>,
        limits: Limits,
        capacity: usize,
        stop: CancellationToken,
    ) -> Self {
        let (queue, jobs) = mpsc::channel(capacity.max(1));
        let counts = Arc::new(ShadowCounts::default());
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let shared = Worker {
            policies: policies.clone(),
            store,
            limits,
            counts: counts.clone(),
            queued_bytes: queued_bytes.clone(),
            runtime: tokio::runtime::Handle::current(),
        };
        let worker = work(shared, jobs, stop);
        let spawned = std::thread::Builder::new().name("shadow".into()).spawn(move || {
            if let Err(e) = thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min) {
                tracing::warn!("shadow evaluations run at normal priority: {e:?}");
            }
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime.block_on(worker),
                Err(e) => tracing::error!("shadow evaluations are off: no runtime for them: {e}"),
            }
        });
        if let Err(e) = spawned {
            tracing::error!("shadow evaluations are off: cannot start their thread: {e}");
        }
        Shadow { policies, counts, queue, queued_bytes }
    }

    fn drop_one(&self) {
        self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("cedar_pdp_shadow_decisions_total", "result" => "dropped").increment(1);
    }

    /// Offers a live decision for shadow evaluation; never waits.
    pub fn offer(&self, decision_id: &str, input: &CheckInput<'_>, min_revision: u64, live: &Outcome) {
        // A full queue drops before anything is copied on the live path; a context handed over as a
        // value (ext_authz, AuthZEN) is written out first, since the byte budget counts its text.
        if self.queue.capacity() == 0 {
            return self.drop_one();
        }
        let context = input.context.text();
        let bytes = context.len() + input.entities_json.len();
        if self.queued_bytes.load(Ordering::Relaxed) + bytes > MAX_QUEUED_BYTES {
            return self.drop_one();
        }
        let owned = |u: Option<UidRef<'_>>| u.map(|u| (u.ty.to_string(), u.id.to_string())).unwrap_or_default();
        let job = Job {
            decision_id: decision_id.to_string(),
            uids: [owned(input.principal), owned(input.action), owned(input.resource)],
            context_json: context.into_owned(),
            entities_json: input.entities_json.to_string(),
            min_revision,
            allow: live.allow,
            determining: live.determining.clone(),
        };
        match self.queue.try_send(job) {
            Ok(()) => {
                self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(_)) => self.drop_one(),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.counts.errors.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("cedar_pdp_shadow_decisions_total", "result" => "error").increment(1);
            }
        }
    }
}

/// What the worker needs, shared with each decision it starts.
#[derive(Clone)]
struct Worker {
    policies: Arc<PolicyStore>,
    store: Arc<EntityStore>,
    limits: Limits,
    counts: Arc<ShadowCounts>,
    queued_bytes: Arc<AtomicUsize>,
    /// The server's runtime: shadow decisions run there, one at a time.
    runtime: tokio::runtime::Handle,
}

/// Jobs the dispatcher hands to the server's runtime at once: one hand-off per batch, not per job.
const BATCH: usize = 32;

async fn work(worker: Worker, mut jobs: mpsc::Receiver<Job>, stop: CancellationToken) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let taken = tokio::select! {
            () = stop.cancelled() => return,
            taken = jobs.recv_many(&mut batch, BATCH) => taken,
        };
        if taken == 0 {
            return;
        }
        let bytes: usize = batch.iter().map(|j| j.context_json.len() + j.entities_json.len()).sum();
        worker.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        let decided = worker.runtime.spawn(decide_all(worker.clone(), std::mem::take(&mut batch)));
        tokio::select! {
            () = stop.cancelled() => return,
            _ = decided => {}
        }
    }
}

async fn decide_all(worker: Worker, jobs: Vec<Job>) {
    for job in jobs {
        decide(&worker, job).await;
    }
}

/// One shadow decision, on the server's runtime.
async fn decide(worker: &Worker, job: Job) {
    let Some(snapshot) = worker.policies.current() else { return };
    let [p, a, r] = &job.uids;
    let input = CheckInput {
        principal: Some(UidRef { ty: &p.0, id: &p.1 }),
        action: Some(UidRef { ty: &a.0, id: &a.1 }),
        resource: Some(UidRef { ty: &r.0, id: &r.1 }),
        context: ContextIn::Json(&job.context_json),
        entities_json: &job.entities_json,
    };
    let result = match entities::decide(&worker.store, &snapshot, &input, &worker.limits, job.min_revision).await {
        Ok(shadow) => compare(&job, &shadow, &snapshot.version, &worker.counts),
        Err(e) => {
            worker.counts.errors.fetch_add(1, Ordering::Relaxed);
            tracing::info!(target: "cedar_pdp::shadow", decision_id = %job.decision_id, error = %e, "the shadow set could not decide");
            "error"
        }
    };
    metrics::counter!("cedar_pdp_shadow_decisions_total", "result" => result).increment(1);
}

fn compare(job: &Job, shadow: &Outcome, version: &str, counts: &ShadowCounts) -> &'static str {
    let (result, counter) = match (job.allow, shadow.allow) {
        (false, true) => ("allow_gain", &counts.allow_gain),
        (true, false) => ("allow_loss", &counts.allow_loss),
        _ if job.determining != shadow.determining => ("reasons_differ", &counts.reasons_differ),
        _ => ("same", &counts.same),
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if result != "same" {
        let show = |allow: bool| if allow { "allow" } else { "deny" };
        tracing::info!(
            target: "cedar_pdp::shadow",
            decision_id = %job.decision_id,
            result,
            principal = %shadow.principal,
            action = %shadow.action,
            resource = %shadow.resource,
            live = show(job.allow),
            live_determining = ?job.determining,
            shadow = show(shadow.allow),
            shadow_determining = ?shadow.determining,
            shadow_version = version,
            "the shadow policies decide differently"
        );
    }
    result
}
