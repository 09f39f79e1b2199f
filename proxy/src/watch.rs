//! `--snapshot FILE` mode: [`watch_file`] polls a snapshot file and applies each new version.
//!
//! ```text
//! every WATCH_INTERVAL: metadata (mtime, length) changed, or a bind retry is due?
//!   ─ read ─ same text as applied? nothing ─ decode ─ ProxyHandle::apply
//!       refused for a socket that cannot be bound: retried after BIND_RETRY
//!       undecodable: ProxyHandle::refuse (kept on /ready like any refusal)
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use meridian_model::{Snapshot, SnapshotError};

use crate::handle::{ApplyError, ProxyHandle};
use crate::state::SnapshotSource;

/// How often [`watch_file`] looks at the file.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(300);
/// How often a snapshot refused because a socket could not be bound is tried again.
pub(crate) const BIND_RETRY: Duration = Duration::from_secs(5);

/// Polls `path` (modification time and length, then content) and applies every new version.
/// Refusals are logged and kept on the handle; the previous snapshot keeps serving. Never
/// returns; run it in a `select!` or a task.
pub async fn watch_file(handle: &ProxyHandle, path: PathBuf) {
    let mut seen: Option<(Option<std::time::SystemTime>, u64)> = None;
    let mut applied_text: Option<String> = None;
    let mut retry_at: Option<Instant> = None;
    let mut last_read_error: Option<String> = None;
    loop {
        let meta = tokio::fs::metadata(&path)
            .await
            .map(|m| (m.modified().ok(), m.len()));
        match meta {
            Err(e) => {
                let msg = e.to_string();
                if last_read_error.as_ref() != Some(&msg) {
                    tracing::error!(path = %path.display(), error = %msg, "cannot read snapshot file");
                    last_read_error = Some(msg);
                }
            }
            Ok(stamp) => {
                let due = retry_at.is_some_and(|t| Instant::now() >= t);
                if seen != Some(stamp) || due {
                    seen = Some(stamp);
                    retry_at = None;
                    match tokio::fs::read_to_string(&path).await {
                        Ok(text) if applied_text.as_ref() == Some(&text) && !due => {}
                        Ok(text) => {
                            last_read_error = None;
                            match decode(&text) {
                                Ok(snapshot) => match handle.apply(snapshot).await {
                                    Ok(_) => {
                                        handle.shared().set_source(SnapshotSource::File);
                                        applied_text = Some(text);
                                    }
                                    Err(ApplyError::Bind { .. }) => {
                                        retry_at = Some(Instant::now() + BIND_RETRY);
                                    }
                                    Err(_) => {}
                                },
                                Err(e) => handle.refuse(ApplyError::Invalid(e)),
                            }
                        }
                        Err(e) => {
                            tracing::error!(path = %path.display(), error = %e, "cannot read snapshot file");
                        }
                    }
                }
            }
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

/// Decodes a JSON snapshot.
pub fn decode(text: &str) -> Result<Snapshot, SnapshotError> {
    serde_json::from_str(text).map_err(|e| SnapshotError::Decode(e.to_string()))
}
