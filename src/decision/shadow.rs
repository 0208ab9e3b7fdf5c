//! Shadow policies (`--shadow-policies DIR`): every live decision is decided again on a second
//! policy set, off the request's path, and the differences logged (target `cedar_pdp::shadow`) and
//! counted (`cedar_pdp_shadow_decisions_total{result}`).
//!
//! Architecture invariant: the live answer never waits for, or depends on, the shadow set. A live
//! decision only offers a copy of its question to a bounded queue; when the queue is full the shadow
//! evaluation is dropped and counted. The worker runs on its own thread at the lowest CPU priority,
//! so that under saturation the cores go to live decisions and the shadow side drops instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::authz::{CheckInput, Limits, Outcome, UidRef};
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

/// The live side's handle: offers questions to the worker.
pub struct Shadow {
    pub policies: Arc<PolicyStore>,
    pub counts: Arc<ShadowCounts>,
    queue: mpsc::Sender<Job>,
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
        let worker = work(policies.clone(), store, limits, jobs, counts.clone(), stop);
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
        Shadow { policies, counts, queue }
    }

    /// Offers a live decision for shadow evaluation; never waits.
    pub fn offer(&self, decision_id: &str, input: &CheckInput<'_>, min_revision: u64, live: &Outcome) {
        let owned = |u: Option<UidRef<'_>>| u.map(|u| (u.ty.to_string(), u.id.to_string())).unwrap_or_default();
        let job = Job {
            decision_id: decision_id.to_string(),
            uids: [owned(input.principal), owned(input.action), owned(input.resource)],
            context_json: input.context_json.to_string(),
            entities_json: input.entities_json.to_string(),
            min_revision,
            allow: live.allow,
            determining: live.determining.clone(),
        };
        if self.queue.try_send(job).is_err() {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("cedar_pdp_shadow_decisions_total", "result" => "dropped").increment(1);
        }
    }
}

async fn work(
    policies: Arc<PolicyStore>,
    store: Arc<EntityStore>,
    limits: Limits,
    mut jobs: mpsc::Receiver<Job>,
    counts: Arc<ShadowCounts>,
    stop: CancellationToken,
) {
    loop {
        let job = tokio::select! {
            () = stop.cancelled() => return,
            job = jobs.recv() => match job { Some(job) => job, None => return },
        };
        let Some(snapshot) = policies.current() else { continue };
        let [p, a, r] = &job.uids;
        let input = CheckInput {
            principal: Some(UidRef { ty: &p.0, id: &p.1 }),
            action: Some(UidRef { ty: &a.0, id: &a.1 }),
            resource: Some(UidRef { ty: &r.0, id: &r.1 }),
            context_json: &job.context_json,
            entities_json: &job.entities_json,
        };
        let result = match entities::decide(&store, &snapshot, &input, &limits, job.min_revision).await {
            Ok(shadow) => compare(&job, &shadow, &snapshot.version, &counts),
            Err(e) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                tracing::info!(target: "cedar_pdp::shadow", decision_id = %job.decision_id, error = %e, "the shadow set could not decide");
                "error"
            }
        };
        metrics::counter!("cedar_pdp_shadow_decisions_total", "result" => result).increment(1);
    }
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
