//! Optional persistence: one JSON snapshot per cluster (`<state_dir>/<cluster>.json`).
//!
//! A background task per cluster waits for the cluster's change signal, debounces for
//! [`DEBOUNCE`], then writes the snapshot atomically (temp file + rename). Shutdown writes a
//! final snapshot. On start the snapshot is loaded, the resourceVersion counter continues from
//! it, and the watch history starts empty (resumes from before the restart get 410 and re-list).

use crate::server::Cluster;
use crate::store::State;
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const DEBOUNCE: Duration = Duration::from_millis(200);

pub fn state_file(dir: &Path, cluster: &str) -> PathBuf {
    dir.join(format!("{cluster}.json"))
}

/// Loads a cluster's state, or a fresh one when there is no snapshot yet.
pub fn load(dir: &Path, cluster: &str, history_window: usize) -> anyhow::Result<State> {
    let path = state_file(dir, cluster);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let snap: serde_json::Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", path.display()))?;
            State::restore(history_window, &snap)
                .with_context(|| format!("restoring {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::new(history_window)),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes a cluster's snapshot now.
pub async fn save(dir: &Path, cluster: &Cluster) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec(&cluster.lock().snapshot())?;
    let path = state_file(dir, &cluster.name);
    let tmp = path.with_extension("json.tmp");
    tokio::fs::write(&tmp, &bytes)
        .await
        .with_context(|| format!("writing {}", tmp.display()))?;
    tokio::fs::rename(&tmp, &path)
        .await
        .with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Saves after changes (debounced) until shutdown.
pub async fn run(dir: PathBuf, cluster: Arc<Cluster>) {
    let mut shutdown = cluster.shutdown.clone();
    loop {
        tokio::select! {
            _ = cluster.dirty.notified() => {}
            r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { return },
        }
        tokio::time::sleep(DEBOUNCE).await;
        if let Err(e) = save(&dir, &cluster).await {
            tracing::warn!(cluster = %cluster.name, error = %e, "persisting sandbox state failed");
        }
    }
}
