//! Reload: on SIGHUP, or when the config file changes (polled, debounced), validate the whole
//! file again and hand the new snapshot over to be swapped in one step. An invalid file
//! changes nothing: the old snapshot stays, and every problem is logged with FILE:LINE:COL.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use super::{load, ConfigErrors, Loaded};

/// How often the file is looked at.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// A change must hold still this long before it is read (editors write in several steps).
const SETTLE: Duration = Duration::from_millis(300);

/// What identifies one version of the file without reading it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

/// The file's stamp now. Take it before the first load, so an edit between that load and
/// the watcher's start is still seen.
pub fn stamp(path: &PathBuf) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

/// Why a reload was attempted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP.
    Signal,
    /// The file changed.
    FileChange,
}

/// Watches `path` until `stop` turns true. Each valid new version goes to `apply`; each
/// invalid one to `rejected`.
pub async fn watch_config(
    path: PathBuf,
    loaded_at: Option<Stamp>,
    mut stop: watch::Receiver<bool>,
    apply: impl Fn(Loaded, Trigger),
    rejected: impl Fn(&ConfigErrors, Trigger),
) {
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading on file change only");
            None
        }
    };
    let mut seen = loaded_at;
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let trigger = tokio::select! {
            _ = stop.changed() => return,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => Trigger::Signal,
            _ = tick.tick() => {
                let now = stamp(&path);
                if now == seen || now.is_none() {
                    continue;
                }
                tokio::time::sleep(SETTLE).await;
                if stamp(&path) != now {
                    continue; // still being written: look again next tick
                }
                Trigger::FileChange
            }
        };
        seen = stamp(&path);
        match load(&path) {
            Ok(loaded) => apply(loaded, trigger),
            Err(errors) => rejected(&errors, trigger),
        }
    }
}
