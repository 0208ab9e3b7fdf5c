//! The policy store: the active [`Snapshot`] behind an atomic swap, and how it is replaced.
//!
//! Architecture invariant: a snapshot is stored only after it loaded and validated completely, so a
//! bad edit never replaces the last good set. A request loads the snapshot once and decides on it to
//! the end, whatever reloads happen meanwhile.

mod authzen;
mod context;
mod diag;
pub mod lint;
mod load;
pub mod scim;
mod scope;
mod snapshot;
pub mod watch;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;

pub use crate::error::Diagnostic;
pub use authzen::AuthzenNames;
pub use context::{ContextFields, Field};
pub use scim::ScimMapping;

/// Entity types under this namespace hold the SCIM endpoint's own state: no policy file, mapping or
/// EntityService write may use them.
pub const RESERVED_NAMESPACE: &str = "CedarPdp::Scim::";
pub use load::load_dir;
pub(crate) use scope::Condition;
pub use scope::Targets;
pub use snapshot::Snapshot;
pub(crate) use snapshot::collect_uids;

use crate::error::PolicyLoadError;

/// How strictly policies (and requests) are checked against the schema, when there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ValidationMode {
    /// Cedar's strict validation; requests are validated against the schema.
    Strict,
    /// Cedar's permissive validation; requests are validated against the schema.
    Permissive,
    /// No policy or request validation: a set that does not validate still loads (warnings logged).
    Off,
}

impl ValidationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ValidationMode::Strict => "strict",
            ValidationMode::Permissive => "permissive",
            ValidationMode::Off => "off",
        }
    }
}

/// Counters and the last failure, for the status API.
#[derive(Debug, Clone, Default)]
pub struct ReloadStats {
    pub succeeded: u64,
    pub failed: u64,
    /// The last failed reload, cleared by the next successful one.
    pub last_error: Option<(SystemTime, Vec<Diagnostic>)>,
}

/// What a `forbid` whose evaluation errors does (`--forbid-errors`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ForbidErrors {
    /// Cedar's semantics: the policy does not apply (its error is reported).
    #[default]
    Skip,
    /// The decision is a Deny, with that policy among the determining ones.
    Deny,
}

pub struct PolicyStore {
    dir: PathBuf,
    mode: ValidationMode,
    forbid_errors: ForbidErrors,
    /// `live`, or `shadow` for `--shadow-policies`: in reload logs and metrics.
    set: &'static str,
    current: ArcSwapOption<Snapshot>,
    stats: Mutex<ReloadStats>,
    /// Serialises reloads so that a slow one cannot overwrite the result of a newer one.
    reloading: tokio::sync::Mutex<()>,
}

/// What a reload did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// A new snapshot is active.
    Swapped { version: String },
    /// The files load to the version already active.
    Unchanged,
}

impl PolicyStore {
    pub fn new(dir: PathBuf, mode: ValidationMode) -> Self {
        PolicyStore {
            dir,
            mode,
            forbid_errors: ForbidErrors::Skip,
            set: "live",
            current: ArcSwapOption::empty(),
            stats: Mutex::new(ReloadStats::default()),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// Decides with `forbid_errors` from the next load on.
    pub fn with_forbid_errors(mut self, forbid_errors: ForbidErrors) -> Self {
        self.forbid_errors = forbid_errors;
        self
    }

    /// Names this set `shadow` in reload logs and metrics (`set` label), apart from the live one.
    pub fn as_shadow(mut self) -> Self {
        self.set = "shadow";
        self
    }

    /// The active snapshot, if one has loaded.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    pub fn stats(&self) -> ReloadStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Loads the directory off the async runtime and swaps the result in if it is valid: for an
    /// operator's reload (SIGHUP, `cedar-pdp reload`), which applies what it finds once it settled.
    pub async fn reload(&self) -> Result<ReloadOutcome, PolicyLoadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let loaded = self.load_settled().await;
        if let Ok(snapshot) = &loaded
            && let Some(why) = self.shrinks(snapshot)
        {
            tracing::warn!("applying a reload that {why}, as asked");
        }
        self.apply(loaded)
    }

    /// A reload the file watcher asked for. An edit that empties a policy file or removes a `forbid`
    /// from one is what a writer that truncates first and writes later (a shell redirect, many deploy
    /// tools) looks like halfway through: it waits `settle` for the rest of the write and loads again,
    /// and applies such an edit only once it held still for a whole wait.
    pub async fn reload_watched(&self, settle: std::time::Duration) -> Result<ReloadOutcome, PolicyLoadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let mut loaded = self.load_settled().await;
        const ROUNDS: usize = 3;
        for round in 0..=ROUNDS {
            let why = match &loaded {
                Ok(snapshot) => self.shrinks(snapshot),
                Err(_) => None,
            };
            let Some(why) = why else { break };
            if round == ROUNDS {
                // Still shrinking and still changing: never apply a state that did not hold still.
                let message = format!("an edit that {why} kept changing for {ROUNDS} × {settle:?}; not applied");
                return self.apply(Err(PolicyLoadError::single(&self.dir.display().to_string(), message)));
            }
            tracing::warn!(?settle, "a policy edit {why}: waiting for the write to finish before applying it");
            tokio::time::sleep(settle).await;
            let again = self.load_settled().await;
            let same = matches!((&loaded, &again), (Ok(a), Ok(b)) if a.version == b.version);
            loaded = again;
            if same {
                if let Ok(snapshot) = &loaded
                    && let Some(why) = self.shrinks(snapshot)
                {
                    tracing::warn!("applying a policy edit that {why}: it did not change for {settle:?}");
                }
                break;
            }
        }
        self.apply(loaded)
    }

    /// Loads the directory once nothing in it changes during the load (the content read before and
    /// after is the same), trying again a few times while a writer is busy.
    async fn load_settled(&self) -> Result<Snapshot, PolicyLoadError> {
        const ATTEMPTS: usize = 20;
        for _ in 0..ATTEMPTS {
            let (dir, mode) = (self.dir.clone(), self.mode);
            let attempt = tokio::task::spawn_blocking(move || {
                let before = load::tree_digest(&dir, mode);
                let loaded = load_dir(&dir, mode);
                (loaded, before == load::tree_digest(&dir, mode))
            })
            .await;
            match attempt {
                Ok((loaded, true)) => return loaded,
                Ok((_, false)) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                Err(e) => return Err(PolicyLoadError::single("reload", format!("loader task failed: {e}"))),
            }
        }
        Err(PolicyLoadError::single(
            &self.dir.display().to_string(),
            "the directory kept changing while it was read; the last good set keeps serving",
        ))
    }

    /// Why `next` looks like a half-written edit of the active set, if it does.
    fn shrinks(&self, next: &Snapshot) -> Option<String> {
        let current = self.current()?;
        for (file, before) in &current.files {
            let after = next.files.get(file).copied().unwrap_or_default();
            if before.policies > 0 && after.policies == 0 {
                return Some(format!("empties `{file}` ({} policies before)", before.policies));
            }
            if after.forbids < before.forbids {
                return Some(format!(
                    "removes forbids from `{file}` ({} before, {} after)",
                    before.forbids, after.forbids
                ));
            }
        }
        None
    }

    /// Swaps a loaded snapshot in, or records why the load failed.
    /// The live set's series stay as they were; the shadow set's carry `set="shadow"`.
    fn count_reload(&self, result: &'static str) {
        if self.set == "live" {
            metrics::counter!("cedar_pdp_policy_reloads_total", "result" => result).increment(1);
        } else {
            metrics::counter!("cedar_pdp_policy_reloads_total", "result" => result, "set" => self.set).increment(1);
        }
    }

    fn apply(&self, loaded: Result<Snapshot, PolicyLoadError>) -> Result<ReloadOutcome, PolicyLoadError> {
        let mut stats = match self.stats.lock() {
            Ok(stats) => stats,
            Err(poisoned) => poisoned.into_inner(),
        };
        match loaded {
            Ok(mut snapshot) => {
                snapshot.forbid_errors = self.forbid_errors;
                stats.succeeded += 1;
                stats.last_error = None;
                self.count_reload("success");
                let unchanged = self.current().is_some_and(|s| s.version == snapshot.version);
                if unchanged {
                    return Ok(ReloadOutcome::Unchanged);
                }
                let version = snapshot.version.clone();
                tracing::info!(
                    set = self.set,
                    policy_version = %version,
                    policies = snapshot.policy_count,
                    templates = snapshot.template_count,
                    entities = snapshot.entities.len(),
                    schema = snapshot.schema.is_some(),
                    "policy set loaded"
                );
                if snapshot.policy_count == 0 {
                    tracing::warn!(dir = %self.dir.display(), "the policy set has no policies: every request will be denied");
                }
                self.current.store(Some(Arc::new(snapshot)));
                Ok(ReloadOutcome::Swapped { version })
            }
            Err(err) => {
                stats.failed += 1;
                stats.last_error = Some((SystemTime::now(), err.diagnostics.clone()));
                self.count_reload("failure");
                for d in &err.diagnostics {
                    tracing::error!(set = self.set, file = %d.file, "policy reload rejected, keeping the last good set: {}", d.one_line());
                }
                Err(err)
            }
        }
    }
}
