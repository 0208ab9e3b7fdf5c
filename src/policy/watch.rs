//! Reload triggers: file events below the policy directory (debounced) and SIGHUP.
//!
//! Events only wake the reload loop; the loop always reloads the whole directory, so a burst of
//! writes, renames and deletes ends on whatever the directory holds once it goes quiet.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_mini::{DebounceEventResult, new_debouncer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::PolicyStore;

/// Starts the reload loop; it ends when `shutdown` is cancelled.
pub fn spawn(
    store: Arc<PolicyStore>,
    dir: &Path,
    watch_files: bool,
    debounce: Duration,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, notify::Error> {
    // Capacity one: while a reload is pending, further events add nothing.
    let (wake, mut woken) = mpsc::channel::<()>(1);
    let debouncer = if watch_files {
        let wake = wake.clone();
        let mut debouncer = new_debouncer(debounce, move |result: DebounceEventResult| match result {
            Ok(events) if !events.is_empty() => {
                let _ = wake.try_send(());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("policy directory watch error: {e}"),
        })?;
        debouncer.watcher().watch(dir, RecursiveMode::Recursive)?;
        Some(debouncer)
    } else {
        None
    };
    let mut hangup = hangup_signal();
    Ok(tokio::spawn(async move {
        // Owned by the task: dropping it stops the watcher thread when the loop ends.
        let _debouncer = debouncer;
        let _keep_channel_open = wake;
        loop {
            let trigger = tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(()) = woken.recv() => "file change",
                Some(()) = recv_hangup(&mut hangup) => "SIGHUP",
            };
            tracing::debug!(trigger, "reloading policies");
            // Success and failure are logged and counted by the store.
            let _ = store.reload().await;
        }
    }))
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
