//! `--state-dir DIR`: the last snapshot the proxy acknowledged to the controller, kept on local
//! disk so that a proxy restarting while the controller is unreachable serves at once instead of
//! nothing (static stability across restarts).
//!
//! ```text
//! controller snapshot ─ apply ok ─ ack ─► writer (at most one write per WRITE_SPACING, always
//!                                          ends with the latest served state)
//!   ─ .snapshot.json.tmp-<pid>: header line + snapshot JSON ─ fsync ─ rename ─► snapshot.json
//!   ─ fsync DIR (the rename itself survives a power loss)
//!
//! start ─ StateDir::open: create DIR, delete unfinished temp files
//!       ─ StateDir::load: header ─ format version ─ SHA-256 ─ cluster ─ decode
//!           ok: apply it, /ready says source "disk"
//!           refused: logged, counted, the file renamed snapshot.json.rejected (nothing served
//!                    until the controller answers)
//! ```
//!
//! # File format (version 1)
//!
//! One JSON header line, then exactly `bodyLength` bytes of snapshot JSON (what the controller
//! streams):
//!
//! ```text
//! {"format":"meridian-proxy-snapshot","version":1,"cluster":"east","generation":12,
//!  "writtenAt":"2025-05-01T10:00:00.123Z","bodyLength":48213,"sha256":"<64 hex>"}
//! {"schema":"meridian.snapshot/v1","generation":12,"gateways":[…]}
//! ```
//!
//! `sha256` covers the cluster, the generation, the write time and the body (see [`digest`]), so
//! a flipped byte anywhere but in the header's JSON punctuation makes a checksum mismatch, and a
//! broken header does not parse: either way the file is refused as `corrupt`. A file of another
//! cluster is refused as `wrong_cluster` even when intact: its routes and endpoints belong to
//! other Gateways. Unknown format versions are refused, never guessed at.
//!
//! The write is atomic: the new file is complete and on disk before `rename` replaces the old
//! one, so a crash at any point leaves either the old file or the new one, plus at worst a temp
//! file that the next start deletes. The file holds the snapshot as received, TLS private keys
//! included: it is created `0600`, a directory created by the proxy `0700`, and a given
//! directory should be private to the proxy (an `emptyDir` in a pod).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use meridian_model::Snapshot;
use pingora_core::tls::hash::{Hasher, MessageDigest};
use serde::{Deserialize, Serialize};

/// Name of the state file in the state directory.
pub const STATE_FILE: &str = "snapshot.json";
/// Suffix of a state file refused on load (kept for inspection; the last one refused wins).
pub const REJECTED_SUFFIX: &str = ".rejected";
/// Prefix of the temp files a write goes through (`.snapshot.json.tmp-<pid>`).
const TEMP_PREFIX: &str = ".snapshot.json.tmp-";
/// `format` of the header.
const FORMAT: &str = "meridian-proxy-snapshot";
/// The format version written, and the only one read.
pub const FORMAT_VERSION: u32 = 1;
/// Least time between two writes: an endpoint churn of many updates per second costs one write
/// per spacing (each a full snapshot), and the last acknowledged state is on disk at most this
/// long (plus the write itself) after its acknowledgement.
pub const WRITE_SPACING: Duration = Duration::from_secs(1);
/// Longest header line read.
const MAX_HEADER: usize = 64 * 1024;

/// The header line of a state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    /// Always `meridian-proxy-snapshot`.
    pub format: String,
    /// [`FORMAT_VERSION`] when written by this proxy.
    pub version: u32,
    /// The `--cluster` of the proxy that wrote it.
    pub cluster: String,
    /// The snapshot's generation (as the controller numbered it).
    pub generation: u64,
    /// When it was written (RFC 3339, UTC).
    pub written_at: String,
    /// Length of the snapshot JSON after the header line.
    pub body_length: u64,
    /// Hex SHA-256 of cluster, generation, write time and body ([`digest`]).
    pub sha256: String,
}

/// A snapshot loaded from the state file, checked.
#[derive(Debug)]
pub struct Restored {
    /// Its header.
    pub header: Header,
    /// The snapshot.
    pub snapshot: Snapshot,
}

/// Why the state file was refused. Every variant but [`RestoreError::Unreadable`] moves the file
/// aside to `snapshot.json.rejected`.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The file exists but cannot be read.
    #[error("cannot read {}: {error}", .path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The header or the checksum is wrong, or the body does not decode.
    #[error("{} is corrupt: {reason}", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another format version (a newer or older proxy wrote it).
    #[error(
        "{} has format version {found}; this proxy reads only version {FORMAT_VERSION}",
        .path.display()
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
    },
    /// Written by a proxy of another cluster.
    #[error(
        "{} holds a snapshot of cluster {found:?}, but this proxy runs in cluster {expected:?}",
        .path.display()
    )]
    WrongCluster {
        /// The file.
        path: PathBuf,
        /// The cluster in the file.
        found: String,
        /// This proxy's cluster.
        expected: String,
    },
}

impl RestoreError {
    /// The `result` label of `meridian_proxy_snapshot_restore_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            RestoreError::Unreadable { .. } => "unreadable",
            RestoreError::Corrupt { .. } => "corrupt",
            RestoreError::Version { .. } => "unsupported_version",
            RestoreError::WrongCluster { .. } => "wrong_cluster",
        }
    }
}

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("state directory {}: {error}", .path.display())]
pub struct StateDirError {
    /// The directory.
    pub path: PathBuf,
    /// The OS error.
    pub error: std::io::Error,
}

/// What one successful write put on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The generation written.
    pub generation: u64,
    /// When (RFC 3339).
    pub written_at: String,
}

/// The state directory of one proxy (`--state-dir`), for one cluster. Cheap to clone.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
    cluster: String,
}

impl StateDir {
    /// Creates `dir` if needed (mode `0700`) and deletes the temp files of writes that never finished (a crash
    /// between write and rename). `cluster` is this proxy's `--cluster`: files of another one
    /// are refused.
    pub fn open(dir: impl Into<PathBuf>, cluster: &str) -> Result<StateDir, StateDirError> {
        let dir = dir.into();
        let err = |error| StateDirError {
            path: dir.clone(),
            error,
        };
        // Private when we create it: the file holds TLS private keys.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(err)?;
        for entry in fs::read_dir(&dir).map_err(err)? {
            let entry = entry.map_err(err)?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let path = entry.path();
                match fs::remove_file(&path) {
                    Ok(()) => tracing::info!(
                        path = %path.display(),
                        "deleted the temp file of a state write that never finished"
                    ),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot delete a stale temp file")
                    }
                }
            }
        }
        Ok(StateDir {
            dir,
            cluster: cluster.to_string(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The state file (`DIR/snapshot.json`).
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Where a refused state file is moved (`DIR/snapshot.json.rejected`).
    pub fn rejected_path(&self) -> PathBuf {
        self.dir.join(format!("{STATE_FILE}{REJECTED_SUFFIX}"))
    }

    /// Reads and checks the state file: `Ok(None)` when there is none. Blocking (reads, hashes
    /// and decodes the whole file): call it off the runtime's workers.
    pub fn load(&self) -> Result<Option<Restored>, RestoreError> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(RestoreError::Unreadable { path, error }),
        };
        self.check(&path, &bytes).map(Some)
    }

    fn check(&self, path: &Path, bytes: &[u8]) -> Result<Restored, RestoreError> {
        let corrupt = |reason: String| RestoreError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let newline = bytes
            .iter()
            .take(MAX_HEADER)
            .position(|b| *b == b'\n')
            .ok_or_else(|| corrupt("no header line".to_string()))?;
        let (head, body) = (&bytes[..newline], &bytes[newline + 1..]);
        let header: Header = serde_json::from_slice(head)
            .map_err(|e| corrupt(format!("the header does not parse: {e}")))?;
        if header.format != FORMAT {
            return Err(corrupt(format!(
                "the header's format is {:?}, not {FORMAT:?}",
                header.format
            )));
        }
        if header.version != FORMAT_VERSION {
            return Err(RestoreError::Version {
                path: path.to_path_buf(),
                found: header.version,
            });
        }
        if u64::try_from(body.len()).ok() != Some(header.body_length) {
            return Err(corrupt(format!(
                "the header announces {} body bytes, the file has {} (truncated?)",
                header.body_length,
                body.len()
            )));
        }
        let sum = digest(&header.cluster, header.generation, &header.written_at, body)
            .map_err(|e| corrupt(format!("cannot compute the checksum: {e}")))?;
        if sum != header.sha256 {
            return Err(corrupt(format!(
                "checksum mismatch (header {}, content {sum})",
                header.sha256
            )));
        }
        if header.cluster != self.cluster {
            return Err(RestoreError::WrongCluster {
                path: path.to_path_buf(),
                found: header.cluster,
                expected: self.cluster.clone(),
            });
        }
        let snapshot: Snapshot = serde_json::from_slice(body)
            .map_err(|e| corrupt(format!("the snapshot does not decode: {e}")))?;
        if snapshot.generation != header.generation {
            return Err(corrupt(format!(
                "the header says generation {}, the snapshot is generation {}",
                header.generation, snapshot.generation
            )));
        }
        Ok(Restored { header, snapshot })
    }

    /// Moves a refused state file aside (replacing an older refused one), so that the next
    /// start does not trip on it again and its content stays for inspection.
    pub fn reject(&self) -> std::io::Result<PathBuf> {
        let to = self.rejected_path();
        fs::rename(self.path(), &to)?;
        Ok(to)
    }

    /// Writes `snapshot` atomically: temp file in the same directory, fsync, rename over the
    /// state file, fsync of the directory. Blocking (encodes the whole snapshot): call it off
    /// the runtime's workers. On error the previous state file is untouched.
    pub fn write(&self, snapshot: &Snapshot) -> std::io::Result<Written> {
        let body = serde_json::to_vec(snapshot).map_err(std::io::Error::other)?;
        let written_at = jiff::Timestamp::now()
            .round(jiff::Unit::Millisecond)
            .map_err(std::io::Error::other)?
            .to_string();
        let header = Header {
            format: FORMAT.to_string(),
            version: FORMAT_VERSION,
            cluster: self.cluster.clone(),
            generation: snapshot.generation,
            body_length: u64::try_from(body.len()).map_err(std::io::Error::other)?,
            sha256: digest(&self.cluster, snapshot.generation, &written_at, &body)
                .map_err(std::io::Error::other)?,
            written_at: written_at.clone(),
        };
        let mut head = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
        head.push(b'\n');
        let tmp = self
            .dir
            .join(format!("{TEMP_PREFIX}{}", std::process::id()));
        let result = write_synced(&tmp, &head, &body).and_then(|()| {
            fs::rename(&tmp, self.path())?;
            // The rename is a change of the directory: without this a power loss may forget it.
            File::open(&self.dir)?.sync_all()
        });
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| Written {
            generation: snapshot.generation,
            written_at,
        })
    }
}

fn write_synced(path: &Path, head: &[u8], body: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(head)?;
    f.write_all(body)?;
    f.sync_all()
}

/// Hex SHA-256 over the header fields that matter and the body, each field followed by a NUL so
/// that no two field lists hash the same bytes.
pub fn digest(
    cluster: &str,
    generation: u64,
    written_at: &str,
    body: &[u8],
) -> Result<String, pingora_core::tls::error::ErrorStack> {
    let mut h = Hasher::new(MessageDigest::sha256())?;
    for field in [
        cluster.as_bytes(),
        generation.to_string().as_bytes(),
        written_at.as_bytes(),
    ] {
        h.update(field)?;
        h.update(&[0])?;
    }
    h.update(body)?;
    let sum = h.finish()?;
    Ok(sum.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "meridian-state-{name}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn snap(generation: u64) -> Snapshot {
        Snapshot::empty(generation)
    }

    #[test]
    fn a_written_file_loads_back_with_its_header() {
        let d = tmpdir("roundtrip");
        let s = StateDir::open(&d, "east").unwrap();
        assert!(s.load().unwrap().is_none(), "no file yet");
        let w = s.write(&snap(7)).unwrap();
        let r = s.load().unwrap().unwrap();
        assert_eq!(r.snapshot, snap(7));
        assert_eq!(r.header.generation, 7);
        assert_eq!(r.header.cluster, "east");
        assert_eq!(r.header.written_at, w.written_at);
        assert!(
            w.written_at.parse::<jiff::Timestamp>().is_ok(),
            "{}",
            w.written_at
        );
        // Nothing but the state file is left behind.
        let names: Vec<String> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![STATE_FILE.to_string()]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn any_flipped_header_field_is_caught() {
        let d = tmpdir("header");
        let s = StateDir::open(&d, "east").unwrap();
        s.write(&snap(7)).unwrap();
        let text = fs::read_to_string(s.path()).unwrap();
        // The write time is not used for anything, yet it is covered too.
        let (head, body) = text.split_once('\n').unwrap();
        let mut h: Header = serde_json::from_str(head).unwrap();
        h.written_at = "2000-01-01T00:00:00Z".to_string();
        fs::write(
            s.path(),
            format!("{}\n{body}", serde_json::to_string(&h).unwrap()),
        )
        .unwrap();
        let e = s.load().unwrap_err();
        assert_eq!(e.metric_label(), "corrupt", "{e}");
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn truncation_and_unknown_versions_are_refused_with_their_reason() {
        let d = tmpdir("trunc");
        let s = StateDir::open(&d, "east").unwrap();
        s.write(&snap(3)).unwrap();
        let full = fs::read(s.path()).unwrap();
        fs::write(s.path(), &full[..full.len() - 5]).unwrap();
        let e = s.load().unwrap_err();
        assert_eq!(e.metric_label(), "corrupt");
        assert!(e.to_string().contains("truncated"), "{e}");

        let text = String::from_utf8(full).unwrap();
        fs::write(
            s.path(),
            text.replacen("\"version\":1,", "\"version\":2,", 1),
        )
        .unwrap();
        let e = s.load().unwrap_err();
        assert_eq!(e.metric_label(), "unsupported_version");
        assert!(e.to_string().contains("format version 2"), "{e}");

        fs::write(s.path(), b"no header at all").unwrap();
        assert_eq!(s.load().unwrap_err().metric_label(), "corrupt");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn open_deletes_unfinished_temp_files_only() {
        let d = tmpdir("temps");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!("{TEMP_PREFIX}1234")), b"half a wri").unwrap();
        fs::write(d.join("unrelated"), b"keep me").unwrap();
        let _s = StateDir::open(&d, "east").unwrap();
        assert!(!d.join(format!("{TEMP_PREFIX}1234")).exists());
        assert!(d.join("unrelated").exists());
        fs::remove_dir_all(&d).unwrap();
    }
}
