//! Reload triggers: changes below the policy directory (debounced) and SIGHUP.
//!
//! Events only wake the reload loop; the loop waits until the directory has been quiet for the
//! debounce period and then reloads all of it, so a burst of writes, renames and deletes ends on
//! whatever the directory holds once it goes quiet.
//!
//! Only events that change something count. inotify also reports files being opened and read — by
//! the reload itself, among others — and counting those would make every reload trigger the next.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::PolicyStore;

/// Starts the reload loop; it ends when `shutdown` is cancelled.
pub fn spawn(
    store: Arc<PolicyStore>,
    dir: &Path,
    watch_files: bool,
    debounce: Duration,
    settle: Duration,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, notify::Error> {
    // Capacity one: while a wake-up is pending, further events add nothing.
    let (wake, mut woken) = mpsc::channel::<()>(1);
    let watcher = if watch_files { Some(watch(dir, wake.clone())?) } else { None };
    let mut hangup = hangup_signal();
    Ok(tokio::spawn(async move {
        // Owned by the task: dropping it stops watching when the loop ends.
        let _watcher = watcher;
        let _keep_channel_open = wake;
        loop {
            let trigger = tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(()) = woken.recv() => {
                    // Let a burst finish: every further event restarts the quiet period, but a file
                    // that is written without pause cannot postpone the reload past ten periods.
                    let latest = tokio::time::Instant::now() + debounce * 10;
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            Some(()) = woken.recv() => continue,
                            () = tokio::time::sleep(debounce) => break,
                            () = tokio::time::sleep_until(latest) => break,
                        }
                    }
                    "file change"
                }
                Some(()) = recv_hangup(&mut hangup) => "SIGHUP",
            };
            tracing::debug!(trigger, "reloading policies");
            // Success and failure are logged and counted by the store. A file event may be a
            // write half done; SIGHUP is an operator saying the directory is ready.
            let _ = if trigger == "SIGHUP" { store.reload().await } else { store.reload_watched(settle).await };
        }
    }))
}

fn watch(dir: &Path, wake: mpsc::Sender<()>) -> Result<RecommendedWatcher, notify::Error> {
    let mut watcher = notify::recommended_watcher(move |result: notify::Result<Event>| match result {
        // A queue overflow asks for a rescan: something changed, what is unknown.
        Ok(event) if changes_something(&event.kind) || event.need_rescan() => {
            let _ = wake.try_send(());
        }
        Ok(_) => {}
        Err(e) => {
            // Reload anyway; a folder whose watch failed needs SIGHUP from now on.
            tracing::warn!("policy directory watch error (changes there may need a SIGHUP): {e}");
            let _ = wake.try_send(());
        }
    })?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    Ok(watcher)
}

fn changes_something(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Create(_)
            | EventKind::Modify(_)
            | EventKind::Remove(_)
            | EventKind::Any
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    )
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup()).map_err(|e| tracing::warn!("SIGHUP reload unavailable: {e}")).ok()
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {
    None
}

async fn recv_hangup(hangup: &mut Hangup) -> Option<()> {
    #[cfg(unix)]
    if let Some(signal) = hangup {
        return signal.recv().await;
    }
    let _ = hangup;
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, ModifyKind, RemoveKind};

    use super::*;

    #[test]
    fn reads_do_not_count_as_changes() {
        assert!(!changes_something(&EventKind::Access(AccessKind::Any)));
        assert!(!changes_something(&EventKind::Access(AccessKind::Open(AccessMode::Any))));
        assert!(changes_something(&EventKind::Access(AccessKind::Close(AccessMode::Write))));
        assert!(!changes_something(&EventKind::Other));
        assert!(changes_something(&EventKind::Create(CreateKind::File)));
        assert!(changes_something(&EventKind::Modify(ModifyKind::Any)));
        assert!(changes_something(&EventKind::Remove(RemoveKind::File)));
    }
}
