//! The policy store: the active [`Snapshot`] behind an atomic swap, and how it is replaced.
//!
//! Architecture invariant: a snapshot is stored only after it loaded and validated completely, so a
//! bad edit never replaces the last good set. A request loads the snapshot once and decides on it to
//! the end, whatever reloads happen meanwhile.

mod diag;
mod load;
mod scope;
mod snapshot;
pub mod watch;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;

pub use diag::Diagnostic;
pub use load::load_dir;
pub(crate) use scope::Selected;
pub use snapshot::Snapshot;
pub(crate) use snapshot::collect_uids;

use crate::config::{PolicyConfig, ValidationMode};
use crate::error::PolicyLoadError;

/// Counters and the last failure, for the status API.
#[derive(Debug, Clone, Default)]
pub struct ReloadStats {
    pub succeeded: u64,
    pub failed: u64,
    /// The last failed reload, cleared by the next successful one.
    pub last_error: Option<(SystemTime, Vec<Diagnostic>)>,
}

pub struct PolicyStore {
    dir: PathBuf,
    mode: ValidationMode,
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
    pub fn new(config: &PolicyConfig) -> Self {
        PolicyStore {
            dir: config.policies.clone(),
            mode: config.validation,
            current: ArcSwapOption::empty(),
            stats: Mutex::new(ReloadStats::default()),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// The active snapshot, if one has loaded.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    pub fn stats(&self) -> ReloadStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Loads the directory off the async runtime and swaps the result in if it is valid.
    pub async fn reload(&self) -> Result<ReloadOutcome, PolicyLoadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let (dir, mode) = (self.dir.clone(), self.mode);
        let loaded = tokio::task::spawn_blocking(move || load_dir(&dir, mode))
            .await
            .unwrap_or_else(|e| Err(PolicyLoadError::single("reload", format!("loader task failed: {e}"))));
        let mut stats = match self.stats.lock() {
            Ok(stats) => stats,
            Err(poisoned) => poisoned.into_inner(),
        };
        match loaded {
            Ok(snapshot) => {
                stats.succeeded += 1;
                stats.last_error = None;
                metrics::counter!("cedar_pdp_policy_reloads_total", "result" => "success").increment(1);
                let unchanged = self.current().is_some_and(|s| s.version == snapshot.version);
                if unchanged {
                    return Ok(ReloadOutcome::Unchanged);
                }
                let version = snapshot.version.clone();
                tracing::info!(
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
                metrics::counter!("cedar_pdp_policy_reloads_total", "result" => "failure").increment(1);
                for d in &err.diagnostics {
                    tracing::error!(file = %d.file, "policy reload rejected, keeping the last good set: {}", d.one_line());
                }
                Err(err)
            }
        }
    }
}
