//! Optional persistence: one JSON snapshot per cluster (`<state_dir>/<cluster>.json`).
//!
//! A background task per cluster waits for the cluster's change signal, debounces for
//! [`DEBOUNCE`], then writes the snapshot atomically (temp file + rename). Shutdown writes a
//! final snapshot. On start the snapshot is loaded, the resourceVersion counter continues from
//! it, and the watch history starts empty (resumes from before the restart get 410 and re-list).

use crate::SandboxError;
use crate::server::Cluster;
use crate::store::State;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const DEBOUNCE: Duration = Duration::from_millis(200);

pub fn state_file(dir: &Path, cluster: &str) -> PathBuf {
    dir.join(format!("{cluster}.json"))
}

/// Loads a cluster's state, or a fresh one when there is no snapshot yet.
pub fn load(dir: &Path, cluster: &str, history_window: usize) -> Result<State, SandboxError> {
    let path = state_file(dir, cluster);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let snap: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|source| SandboxError::StateParse {
                    path: path.clone(),
                    source,
                })?;
            State::restore(history_window, &snap)
                .map_err(|source| SandboxError::StateRestore { path, source })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::new(history_window)),
        Err(e) => Err(SandboxError::io("reading", &path)(e)),
    }
}

/// Writes a cluster's snapshot now.
pub async fn save(dir: &Path, cluster: &Cluster) -> Result<(), SandboxError> {
    let bytes = serde_json::to_vec(&cluster.lock().snapshot()).map_err(|source| {
        SandboxError::StateEncode {
            cluster: cluster.name.clone(),
            source,
        }
    })?;
    let path = state_file(dir, &cluster.name);
    let tmp = path.with_extension("json.tmp");
    tokio::fs::write(&tmp, &bytes)
        .await
        .map_err(SandboxError::io("writing", &tmp))?;
    tokio::fs::rename(&tmp, &path)
        .await
        .map_err(SandboxError::io("renaming to", &path))?;
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
