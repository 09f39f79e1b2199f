//! Optional persistence: one JSON snapshot per cluster (`<state_dir>/<cluster>.json`).
//!
//! A background task per cluster waits for the cluster's change signal, debounces for
//! [`DEBOUNCE`], then writes the snapshot atomically (temp file + rename). Shutdown writes a
//! final snapshot. On start the snapshot is loaded, the resourceVersion counter continues from
//! it, and the watch history starts empty (resumes from before the restart get 410 and re-list).
//!
//! Snapshots hold every object (Secrets included) and the kubeconfig may hold admin tokens, so
//! both are private to the user: [`write_private`] creates each temp file with mode 0600 before
//! anything is written into it and renames it over the old file, so every rewrite is 0600 too,
//! whatever the old file's mode was; [`create_private_dir`] creates the state directory 0700.
//! Each write has its own temp file name, so two writers of one file (a stop and the background
//! task) never share one.

use crate::SandboxError;
use crate::server::Cluster;
use crate::store::State;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Mode of every file the sandbox writes: read and write for the owner only.
pub const FILE_MODE: u32 = 0o600;
/// Mode of the directories the sandbox creates.
pub const DIR_MODE: u32 = 0o700;

/// Makes temp file names unique within the process (the pid makes them unique across).
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Creates `dir` and any missing parents with mode 0700. A directory that already exists is
/// left as it is (it may be one the user shares on purpose); a warning says so when others can
/// enter it. The files written into it are 0600 either way.
pub fn create_private_dir(dir: &Path) -> Result<(), SandboxError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(SandboxError::io("creating", dir))?;
    let mode = std::fs::metadata(dir)
        .map_err(SandboxError::io("reading", dir))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(dir = %dir.display(), mode = format!("{:o}", mode & 0o777),
            "the sandbox directory is open to other users; its files are written 0600");
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically with mode 0600: a new temp file next to it (created
/// 0600, so the content is never readable by others, not even briefly), then a rename over
/// `path`. The temp file is removed if anything fails.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SandboxError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(
        ".{file_name}.{}-{}.tmp",
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(SandboxError::io("writing", &tmp))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(SandboxError::io("renaming to", path)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

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
    tokio::task::spawn_blocking(move || write_private(&path, &bytes))
        .await
        .map_err(|e| SandboxError::io("writing", dir)(std::io::Error::other(e)))?
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
