//! Optional persistence: per cluster, a JSON snapshot (`<state_dir>/<cluster>.json`) plus an
//! append-only log of the writes since (`<state_dir>/<cluster>.log`).
//!
//! Why a log: the earlier design rewrote the whole snapshot after every burst of writes
//! (debounced), so under a steady stream of writes each rewrite serialised the whole store
//! again: at 30k objects that is whole-store work again and again, competing with the writes for
//! the two cores (issue #20 measured the local API slowing from 2,900 writes/s at 6k objects to
//! 365/s at 30k). With the log, a write costs one record the size of its object, whatever the
//! store holds; the whole store is written only by compaction, once the log has grown as large
//! as the last snapshot, so its cost per write stays constant (amortised). Batched
//! write-behind of whole snapshots would still serialise everything per batch; the log does
//! not. `docs/benchmarks.md` ("Local API write rate") has the figures.
//!
//! Flow (one [`Persister`] per cluster):
//! 1. a committed write puts its event (shared with the watch history, nothing is copied) into
//!    the state's journal ([`State::take_journal`]) and signals the cluster's `dirty` notify;
//!    the journal is bounded: while it holds [`crate::server::ClusterOptions::journal_limit`]
//!    events (the log writer is stuck, say in a compaction on a slow disk), new writes wait for
//!    it to be taken ([`Cluster::room_to_write`]; 429 after [`crate::server::JOURNAL_WAIT`]),
//!    so a writer faster than the disk cannot grow the sandbox's memory without bound;
//! 2. the background task ([`run`]) wakes, waits [`BATCH_DELAY`] for more, takes the journal
//!    (a pointer swap under the cluster lock) and appends one record per event to the log in one
//!    `write`, off the lock: `put` with the stored object, `delete` with its last state;
//! 3. compaction, in the same task: when the log has grown past [`COMPACT_RATIO`] times the last
//!    snapshot (and at least [`COMPACT_MIN_BYTES`]), or when the cluster has been quiet for
//!    [`IDLE_COMPACT`] (at most a few percent of the time: the pause after a compaction is
//!    [`IDLE_DUTY`] times its duration) so a quiet cluster's snapshot is the whole truth. It
//!    takes the journal and the objects (pointers, under the lock), encodes the snapshot off the
//!    lock, writes it atomically (temp file, fsync, rename, fsync of the directory), then deletes
//!    the log. Stopping a cluster and shutting down compact too, so a clean stop leaves only the
//!    snapshot.
//!
//! Load = snapshot + replay of the log ([`State::replay`]): records at or below the snapshot's
//! resourceVersion are skipped (a crash between the snapshot's rename and the log's removal),
//! the resourceVersion counter continues from the last record, and the watch history starts
//! empty (resumes from before the restart get 410 and re-list).
//!
//! Log format: the 8-byte magic [`LOG_MAGIC`], then records of `length: u32 LE`,
//! `crc32(payload): u32 LE`, `payload` (JSON `{"rv":N,"op":"put"|"delete","object":{..}}`). A
//! record that is cut short, fails its checksum or does not decode ends the log: it is what a
//! crash mid-append leaves (a torn tail). Loading keeps the records before it, moves the bytes
//! from it on into `<cluster>.log.torn-<unix seconds>` (0600, nothing is thrown away), truncates
//! the log there and warns. A log that does not start with the magic is refused with
//! [`SandboxError::StateLog`] (it is not ours; nothing is changed).
//!
//! Durability (fsync policy): records reach the OS within [`BATCH_DELAY`] of their commit,
//! after the client got its answer (write-behind): a killed sandbox process loses at most the
//! writes of that last moment; the log is fdatasync'ed at most every [`SYNC_INTERVAL`] while it
//! has new records, so a machine crash loses at most about that long; snapshots are fsync'ed
//! before they replace the old one. This is a local development API, not etcd.
//!
//! Snapshots and logs hold every object (Secrets included) and the kubeconfig may hold admin
//! tokens, so all are private to the user: [`write_private`] creates each temp file with mode
//! 0600 before anything is written into it and renames it over the old file, so every rewrite
//! is 0600 too, whatever the old file's mode was; the log is created 0600; [`create_private_dir`]
//! creates the state directory 0700. Each write has its own temp file name, so two writers of
//! one file never share one.

use crate::SandboxError;
use crate::server::Cluster;
use crate::store::{Event, EventType, ReplayOp, State, Stored};
use serde::Deserialize;
#[cfg(test)]
use serde::Serialize;
use serde_json::Value;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Mode of every file the sandbox writes: read and write for the owner only.
pub const FILE_MODE: u32 = 0o600;
/// Mode of the directories the sandbox creates.
pub const DIR_MODE: u32 = 0o700;

/// First bytes of every log file (format version 1).
pub const LOG_MAGIC: &[u8; 8] = b"mrdnlog1";
/// How long the log writer waits after a wake-up for more writes to share its `write` call.
pub const BATCH_DELAY: Duration = Duration::from_millis(2);
/// The log is compacted once it is this many times the size of the last snapshot...
pub const COMPACT_RATIO: f64 = 1.0;
/// ...and at least this large.
pub const COMPACT_MIN_BYTES: u64 = 1 << 20;
/// A log with records is compacted once no write came for this long.
pub const IDLE_COMPACT: Duration = Duration::from_millis(500);
/// After a compaction that took `d`, the next idle compaction waits at least `IDLE_DUTY * d`
/// (so idle compactions of a large store under a trickle of writes use a few percent of a core).
pub const IDLE_DUTY: u32 = 20;
/// The log is fdatasync'ed at most this often while it has unsynced records.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Records longer than this are not believed (a damaged length field).
const MAX_RECORD: u32 = 256 << 20;

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
    write_private_with(path, bytes, false)
}

/// [`write_private`], with `sync`: the temp file is fsync'ed before the rename and the
/// directory after it, so a machine crash leaves the old file or the new one, whole.
fn write_private_with(path: &Path, bytes: &[u8], sync: bool) -> Result<(), SandboxError> {
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
        .and_then(|mut f| {
            f.write_all(bytes)?;
            if sync { f.sync_all() } else { Ok(()) }
        })
        .map_err(SandboxError::io("writing", &tmp))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(SandboxError::io("renaming to", path)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    } else if sync && let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    result
}

/// Makes a rename or removal in `dir` durable (best effort: some filesystems refuse it).
fn sync_dir(dir: &Path) {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!(dir = %dir.display(), error = %e, "syncing the state directory");
    }
}

pub fn state_file(dir: &Path, cluster: &str) -> PathBuf {
    dir.join(format!("{cluster}.json"))
}

pub fn log_file(dir: &Path, cluster: &str) -> PathBuf {
    dir.join(format!("{cluster}.log"))
}

/// One log record as it is written, for the tests' reference encoding ([`encode_record`]
/// writes the same bytes around the object's stored encoding).
#[cfg(test)]
#[derive(Serialize)]
struct RecordOut<'a> {
    rv: u64,
    op: &'a str,
    object: &'a Value,
}

/// One log record as read.
#[derive(Deserialize)]
struct RecordIn {
    rv: u64,
    op: String,
    object: Value,
}

/// Appends one framed record for `event` to `out`. The payload is
/// `{"rv":N,"op":"put"|"delete","object":` + the object's stored encoding + `}`: the bytes
/// serde writes for the record, without encoding the object again.
pub fn encode_record(out: &mut Vec<u8>, event: &Event) {
    let op = match event.etype {
        EventType::Added | EventType::Modified => "put",
        EventType::Deleted => "delete",
    };
    let object = event.obj.json();
    let start = out.len();
    out.reserve(8 + 48 + object.len());
    out.extend_from_slice(&[0; 8]);
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{{\"rv\":{},\"op\":\"{op}\",\"object\":", event.rv);
    out.extend_from_slice(&object);
    out.push(b'}');
    let payload = &out[start + 8..];
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A snapshot file's bytes: `{"resourceVersion":"N","objects":[...]}` with each object's
/// stored encoding (what [`State::snapshot`] holds, without encoding the objects again).
pub fn encode_snapshot(rv: u64, objects: &[Arc<Stored>]) -> Vec<u8> {
    let size: usize = objects.iter().map(|o| o.json().len() + 1).sum();
    let mut out = Vec::with_capacity(size + 48);
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{{\"resourceVersion\":\"{rv}\",\"objects\":[");
    for (i, o) in objects.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&o.json());
    }
    out.extend_from_slice(b"]}");
    out
}

/// What [`decode_log`] found.
#[derive(Debug, Default)]
pub struct DecodedLog {
    /// The records, in order: resourceVersion, operation, object.
    pub records: Vec<(u64, ReplayOp, Value)>,
    /// Bytes up to the end of the last good record (the magic included).
    pub valid_len: usize,
    /// Why the bytes after `valid_len` were not read, if there are any.
    pub torn: Option<String>,
}

/// Reads a log file's bytes. `Err` when they do not start with [`LOG_MAGIC`] (a file shorter
/// than the magic that matches it as far as it goes is an empty log whose header was torn).
pub fn decode_log(bytes: &[u8]) -> Result<DecodedLog, String> {
    let mut out = DecodedLog::default();
    if bytes.len() < LOG_MAGIC.len() {
        if LOG_MAGIC.starts_with(bytes) {
            out.torn = (!bytes.is_empty()).then(|| "the header is cut short".to_string());
            return Ok(out);
        }
        return Err("not a sandbox log (bad header)".into());
    }
    if &bytes[..LOG_MAGIC.len()] != LOG_MAGIC {
        return Err("not a sandbox log (bad header)".into());
    }
    let mut at = LOG_MAGIC.len();
    out.valid_len = at;
    // Each turn consumes at least the 8-byte frame: bounded by the file's length.
    while at < bytes.len() {
        let rest = &bytes[at..];
        let Some(frame) = rest.get(..8) else {
            out.torn = Some(format!("a record frame is cut short at byte {at}"));
            break;
        };
        let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        if len > MAX_RECORD {
            out.torn = Some(format!("a record at byte {at} claims {len} bytes"));
            break;
        }
        let Some(payload) = rest.get(8..8 + len as usize) else {
            out.torn = Some(format!("a record is cut short at byte {at}"));
            break;
        };
        if crc32fast::hash(payload) != crc {
            out.torn = Some(format!("a record fails its checksum at byte {at}"));
            break;
        }
        let record: RecordIn = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => {
                out.torn = Some(format!("a record at byte {at} does not decode: {e}"));
                break;
            }
        };
        let op = match record.op.as_str() {
            "put" => ReplayOp::Put,
            "delete" => ReplayOp::Delete,
            other => {
                out.torn = Some(format!("a record at byte {at} has unknown op {other:?}"));
                break;
            }
        };
        out.records.push((record.rv, op, record.object));
        at += 8 + len as usize;
        out.valid_len = at;
    }
    Ok(out)
}

/// Sizes found by [`load`], where the [`Persister`] starts from.
#[derive(Debug, Clone, Copy, Default)]
pub struct Loaded {
    /// Bytes of the snapshot file (0: none).
    pub snapshot_bytes: u64,
    /// Bytes of the log file after a torn tail was cut (0: none).
    pub log_bytes: u64,
}

/// Loads a cluster's state: snapshot, then the log replayed on top (see the module docs), then
/// the journal is switched on so the writes from now on reach the log. A fresh state (default
/// namespaces only) when there is neither.
pub fn load(
    dir: &Path,
    cluster: &str,
    history_window: usize,
) -> Result<(State, Loaded), SandboxError> {
    let path = state_file(dir, cluster);
    let mut loaded = Loaded::default();
    let mut state = match std::fs::read(&path) {
        Ok(bytes) => {
            loaded.snapshot_bytes = bytes.len() as u64;
            let snap: Value =
                serde_json::from_slice(&bytes).map_err(|source| SandboxError::StateParse {
                    path: path.clone(),
                    source,
                })?;
            State::load_snapshot(history_window, snap)
                .map_err(|source| SandboxError::StateRestore { path, source })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::blank(history_window),
        Err(e) => return Err(SandboxError::io("reading", &path)(e)),
    };
    let log_path = log_file(dir, cluster);
    match std::fs::read(&log_path) {
        Ok(bytes) => {
            let log = decode_log(&bytes).map_err(|reason| SandboxError::StateLog {
                path: log_path.clone(),
                reason,
            })?;
            if let Some(why) = &log.torn {
                keep_torn_tail(&log_path, &bytes, log.valid_len, why)?;
            }
            loaded.log_bytes = log.valid_len as u64;
            for (rv, op, obj) in log.records {
                state.replay(rv, op, obj);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(SandboxError::io("reading", &log_path)(e)),
    }
    state.enable_journal();
    state.finish_load();
    Ok((state, loaded))
}

/// Moves the unreadable end of a log (from `valid_len` on) into a side file and cuts the log
/// there, so new records follow good ones.
fn keep_torn_tail(
    log_path: &Path,
    bytes: &[u8],
    valid_len: usize,
    why: &str,
) -> Result<(), SandboxError> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let side = log_path.with_file_name(format!(
        "{}.torn-{secs}",
        log_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let tail = bytes.get(valid_len..).unwrap_or_default();
    write_private(&side, tail)?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(log_path)
        .map_err(SandboxError::io("opening", log_path))?;
    f.set_len(valid_len as u64)
        .map_err(SandboxError::io("truncating", log_path))?;
    tracing::warn!(log = %log_path.display(), kept_in = %side.display(), bytes = tail.len(),
        reason = why, "ignored the torn end of the sandbox log (a crash mid-write?)");
    Ok(())
}

/// When the log is compacted (the defaults are the module's constants; tests shrink them).
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub compact_ratio: f64,
    pub compact_min_bytes: u64,
    pub idle_compact: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            compact_ratio: COMPACT_RATIO,
            compact_min_bytes: COMPACT_MIN_BYTES,
            idle_compact: IDLE_COMPACT,
        }
    }
}

/// One cluster's snapshot and log files, and what is known about them. Blocking I/O: used from
/// `spawn_blocking` (or tests).
pub struct Log {
    dir: PathBuf,
    cluster: String,
    policy: Policy,
    /// The open log, once a record was appended since the last compaction.
    file: Option<std::fs::File>,
    log_bytes: u64,
    snapshot_bytes: u64,
    unsynced: bool,
    last_sync: Instant,
    last_append: Instant,
    /// End and duration of the last compaction.
    last_compaction: Option<(Instant, Duration)>,
    /// An append failed: the log may end in half a record, so the next step must compact.
    broken: bool,
}

impl Log {
    pub fn new(dir: &Path, cluster: &str, loaded: Loaded, policy: Policy) -> Log {
        let now = Instant::now();
        Log {
            dir: dir.to_path_buf(),
            cluster: cluster.to_string(),
            policy,
            file: None,
            log_bytes: loaded.log_bytes,
            snapshot_bytes: loaded.snapshot_bytes,
            unsynced: false,
            last_sync: now,
            last_append: now,
            last_compaction: None,
            broken: false,
        }
    }

    /// Bytes in the log (0 right after a compaction).
    pub fn log_bytes(&self) -> u64 {
        self.log_bytes
    }

    /// Appends one record per event, in one `write`.
    pub fn append(&mut self, events: &[Arc<Event>]) -> Result<(), SandboxError> {
        if events.is_empty() {
            return Ok(());
        }
        let path = log_file(&self.dir, &self.cluster);
        let mut buf = Vec::new();
        if self.file.is_none() && self.log_bytes == 0 {
            buf.extend_from_slice(LOG_MAGIC);
        }
        for e in events {
            encode_record(&mut buf, e);
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(
                std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(FILE_MODE)
                    .open(&path)
                    .map_err(SandboxError::io("opening", &path))?,
            ),
        };
        if let Err(e) = file.write_all(&buf) {
            self.broken = true;
            self.file = None;
            return Err(SandboxError::io("appending to", &path)(e));
        }
        self.log_bytes += buf.len() as u64;
        self.unsynced = true;
        self.last_append = Instant::now();
        Ok(())
    }

    /// fdatasyncs the log if it has records not yet synced and the last sync is
    /// [`SYNC_INTERVAL`] old (or `force`).
    pub fn sync(&mut self, force: bool) {
        if !self.unsynced || (!force && self.last_sync.elapsed() < SYNC_INTERVAL) {
            return;
        }
        if let Some(f) = &self.file
            && let Err(e) = f.sync_data()
        {
            tracing::warn!(cluster = %self.cluster, error = %e, "syncing the sandbox log");
        }
        self.unsynced = false;
        self.last_sync = Instant::now();
    }

    /// Whether the log should be compacted now, and if not, when to look again.
    pub fn compaction_due(&self, now: Instant) -> (bool, Option<Instant>) {
        if self.broken {
            return (true, None);
        }
        let threshold = (self.snapshot_bytes as f64 * self.policy.compact_ratio) as u64;
        if self.log_bytes >= threshold.max(self.policy.compact_min_bytes) {
            return (true, None);
        }
        if self.log_bytes == 0 {
            return (false, None);
        }
        let mut at = self.last_append + self.policy.idle_compact;
        if let Some((end, took)) = self.last_compaction {
            at = at.max(end + took * IDLE_DUTY);
        }
        (now >= at, Some(at))
    }

    /// Writes `objects` (current at `rv`) as the new snapshot and removes the log. On failure
    /// `pending` (the events not yet in the log) are appended instead, so nothing is lost.
    pub fn compact(
        &mut self,
        rv: u64,
        objects: &[Arc<Stored>],
        pending: &[Arc<Event>],
    ) -> Result<(), SandboxError> {
        let started = Instant::now();
        let bytes = encode_snapshot(rv, objects);
        let written = write_private_with(&state_file(&self.dir, &self.cluster), &bytes, true)
            .map(|()| bytes.len() as u64);
        let bytes = match written {
            Ok(b) => b,
            Err(e) => {
                // The old snapshot and log stand; the new events go to the log (unless it is
                // the log that broke: then they wait in memory for the next compaction).
                if !self.broken {
                    let _ = self.append(pending);
                }
                return Err(e);
            }
        };
        // Everything up to `rv` is in the snapshot: the log's records are no longer needed.
        self.file = None;
        let path = log_file(&self.dir, &self.cluster);
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Harmless: its records are at or below the snapshot's resourceVersion and are
            // skipped when loading. New records go after them.
            Err(e) => {
                tracing::warn!(log = %path.display(), error = %e, "removing the compacted log")
            }
        }
        self.log_bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
        self.snapshot_bytes = bytes;
        self.unsynced = false;
        self.broken = false;
        self.last_compaction = Some((Instant::now(), started.elapsed()));
        Ok(())
    }
}

/// A cluster's [`Log`] and the cluster it persists. Every step takes the log's lock first and
/// the cluster's state lock inside it (briefly), so records reach the log in commit order.
pub struct Persister {
    cluster: Arc<Cluster>,
    log: Mutex<Log>,
}

impl Persister {
    pub fn new(dir: &Path, cluster: Arc<Cluster>, loaded: Loaded, policy: Policy) -> Persister {
        let log = Log::new(dir, &cluster.name, loaded, policy);
        Persister {
            cluster,
            log: Mutex::new(log),
        }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends what was committed since the last step, then compacts if due (or `force`).
    /// Returns when to look again for an idle compaction or a sync, if ever.
    fn step(&self, force: bool) -> Result<Option<Instant>, SandboxError> {
        let mut log = self.log();
        if !force && !log.broken {
            let events = self.cluster.take_journal();
            log.append(&events)?;
        }
        let (due, idle_at) = log.compaction_due(Instant::now());
        if force || due {
            let (events, rv, objects) = {
                let mut state = self.cluster.lock();
                let events = state.take_journal();
                let (rv, objects) = state.snapshot_objects();
                (events, rv, objects)
            };
            self.cluster.journal_taken();
            log.compact(rv, &objects, &events)?;
            return Ok(None);
        }
        log.sync(false);
        let sync_at = log.unsynced.then(|| log.last_sync + SYNC_INTERVAL);
        Ok([idle_at, sync_at].into_iter().flatten().min())
    }

    /// Writes the snapshot now and removes the log (stopping a cluster, shutting down).
    pub async fn save(self: &Arc<Self>) -> Result<(), SandboxError> {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || me.step(true).map(|_| ()))
            .await
            .map_err(|e| SandboxError::io("writing", &self.log().dir)(std::io::Error::other(e)))?
    }
}

/// Appends committed writes to the log and compacts it (see the module docs) until shutdown.
pub async fn run(persister: Arc<Persister>) {
    let cluster = Arc::clone(&persister.cluster);
    let mut shutdown = cluster.shutdown.clone();
    let mut wake_at: Option<Instant> = None;
    loop {
        let timer = async {
            match wake_at {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = cluster.dirty.notified() => tokio::time::sleep(BATCH_DELAY).await,
            _ = timer => {}
            r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { return },
        }
        let p = Arc::clone(&persister);
        wake_at = match tokio::task::spawn_blocking(move || p.step(false)).await {
            Ok(Ok(next)) => next,
            Ok(Err(e)) => {
                tracing::warn!(cluster = %cluster.name, error = %e, "persisting sandbox state failed");
                // Try again a little later (a full disk may clear).
                Some(Instant::now() + SYNC_INTERVAL)
            }
            Err(e) => {
                tracing::warn!(cluster = %cluster.name, error = %e, "the sandbox log writer failed");
                Some(Instant::now() + SYNC_INTERVAL)
            }
        };
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::WriteMode;
    use meridian_test_support::process::ScratchDir;
    use serde_json::json;

    fn cm(name: &str, v: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": "default"}, "data": {"v": v}})
    }

    fn widget_crd() -> Value {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {
                        "type": "object", "properties": {"size": {"type": "integer"}}}}}}}]}})
    }

    /// Creates, updates and deletes a few objects of built-in and custom kinds.
    fn some_writes(s: &mut State, tag: &str) {
        let cms = s.registry.by_key("configmaps").unwrap();
        for i in 0..5 {
            s.create(&cms, Some("default"), cm(&format!("{tag}-{i}"), "1"), false)
                .unwrap();
        }
        let mut changed = s.get(&cms, "default", &format!("{tag}-1")).unwrap().clone();
        changed["data"]["v"] = json!("2");
        s.update(
            &cms,
            Some("default"),
            &format!("{tag}-1"),
            changed,
            WriteMode::Main,
            false,
        )
        .unwrap();
        s.delete(&cms, "default", &format!("{tag}-2"), &Value::Null, false)
            .unwrap();
        let crds = s
            .registry
            .by_key("customresourcedefinitions.apiextensions.k8s.io")
            .unwrap();
        if s.get(&crds, "", "widgets.example.com").is_none() {
            s.create(&crds, None, widget_crd(), false).unwrap();
        }
        let widgets = s.registry.by_key("widgets.example.com").unwrap();
        let w = json!({"apiVersion": "example.com/v1", "kind": "Widget",
                       "metadata": {"name": format!("{tag}-w")}, "spec": {"size": 3}});
        s.create(&widgets, Some("default"), w, false).unwrap();
    }

    #[test]
    fn records_and_snapshots_are_the_bytes_serde_writes_for_them() {
        let mut s = State::new(100);
        s.enable_journal();
        some_writes(&mut s, "x");
        let events = s.take_journal();
        assert!(events.iter().any(|e| e.etype == EventType::Deleted));
        for e in &events {
            let mut framed = Vec::new();
            encode_record(&mut framed, e);
            let op = if e.etype == EventType::Deleted {
                "delete"
            } else {
                "put"
            };
            let want = serde_json::to_vec(&RecordOut {
                rv: e.rv,
                op,
                object: e.obj.value(),
            })
            .unwrap();
            assert!(
                framed[8..] == want[..],
                "{}",
                String::from_utf8_lossy(&framed)
            );
            assert_eq!(framed[..4], (want.len() as u32).to_le_bytes());
            assert_eq!(framed[4..8], crc32fast::hash(&want).to_le_bytes());
        }
        // The snapshot as the struct the log writer serialised before (field order included).
        #[derive(Serialize)]
        struct SnapshotOut<'a> {
            #[serde(rename = "resourceVersion")]
            resource_version: String,
            objects: Vec<&'a Value>,
        }
        let (rv, objects) = s.snapshot_objects();
        let want = serde_json::to_string(&SnapshotOut {
            resource_version: rv.to_string(),
            objects: objects.iter().map(|o| o.value()).collect(),
        })
        .unwrap();
        let got = String::from_utf8(encode_snapshot(rv, &objects)).unwrap();
        assert!(got == want, "{got}\n!=\n{want}");
        assert_eq!(
            String::from_utf8(encode_snapshot(7, &[])).unwrap(),
            r#"{"resourceVersion":"7","objects":[]}"#
        );
    }

    /// Writes through a [`Log`] as the background task does: the journal after every write.
    fn persisted(dir: &Path, policy: Policy, f: impl FnOnce(&mut State, &mut Log)) -> State {
        let (mut s, loaded) = load(dir, "c", 100).unwrap();
        let mut log = Log::new(dir, "c", loaded, policy);
        log.append(&s.take_journal()).unwrap();
        f(&mut s, &mut log);
        log.append(&s.take_journal()).unwrap();
        s
    }

    fn never_compact() -> Policy {
        Policy {
            compact_min_bytes: u64::MAX,
            ..Policy::default()
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_log_replays_after_a_restart_and_the_counter_continues() {
        let dir = ScratchDir::new("persist-replay");
        let before = persisted(dir.path(), never_compact(), |s, log| {
            some_writes(s, "a");
            log.append(&s.take_journal()).unwrap();
            some_writes(s, "b");
        });
        assert_eq!(
            files(dir.path()),
            ["c.log"],
            "no snapshot yet: all in the log"
        );
        assert_eq!(mode(&log_file(dir.path(), "c")), 0o600);

        let (mut after, loaded) = load(dir.path(), "c", 100).unwrap();
        assert_eq!(after.snapshot(), before.snapshot());
        assert_eq!(after.rv, before.rv);
        assert!(loaded.log_bytes > 0);
        let widgets = after.registry.by_key("widgets.example.com").unwrap();
        assert_eq!(
            after.get(&widgets, "default", "b-w").unwrap()["spec"]["size"],
            3
        );
        let cms = after.registry.by_key("configmaps").unwrap();
        assert!(
            after.get(&cms, "default", "a-2").is_none(),
            "deleted stays deleted"
        );
        assert_eq!(after.get(&cms, "default", "a-1").unwrap()["data"]["v"], "2");
        // Nothing from before the restart can be resumed; new writes continue the counter.
        assert!(after.events_after(before.rv - 1).is_err());
        let o = after
            .create(&cms, Some("default"), cm("new", "1"), false)
            .unwrap();
        assert_eq!(
            o["metadata"]["resourceVersion"],
            (before.rv + 1).to_string()
        );
    }

    #[test]
    fn a_torn_tail_is_set_aside_and_new_records_follow_the_good_ones() {
        let dir = ScratchDir::new("persist-torn");
        let before = persisted(dir.path(), never_compact(), |s, _| some_writes(s, "a"));
        let path = log_file(dir.path(), "c");
        let good = std::fs::read(&path).unwrap();

        // A crash mid-append: half of the next record reached the file.
        let mut extra = State::new(100);
        let cms = extra.registry.by_key("configmaps").unwrap();
        extra.enable_journal();
        extra
            .create(&cms, Some("default"), cm("torn", "1"), false)
            .unwrap();
        let mut record = Vec::new();
        for e in extra.take_journal() {
            encode_record(&mut record, &e);
        }
        let torn = &record[..record.len() / 2];
        std::fs::write(&path, [good.as_slice(), torn].concat()).unwrap();

        let (after, loaded) = load(dir.path(), "c", 100).unwrap();
        assert_eq!(
            after.snapshot(),
            before.snapshot(),
            "the good records, all of them"
        );
        assert!(after.get(&cms, "default", "torn").is_none());
        assert_eq!(loaded.log_bytes, good.len() as u64);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            good,
            "cut back to the good records"
        );
        let side: Vec<String> = files(dir.path())
            .into_iter()
            .filter(|n| n.starts_with("c.log.torn-"))
            .collect();
        assert_eq!(side.len(), 1, "{side:?}");
        let side = dir.path().join(&side[0]);
        assert_eq!(
            std::fs::read(&side).unwrap(),
            torn,
            "the torn bytes are kept"
        );
        assert_eq!(mode(&side), 0o600);
        std::fs::remove_file(&side).unwrap();

        // Records appended after the cut are read on the next load.
        let again = persisted(dir.path(), never_compact(), |s, _| some_writes(s, "b"));
        let (last, _) = load(dir.path(), "c", 100).unwrap();
        assert_eq!(last.snapshot(), again.snapshot());
        assert!(last.get(&cms, "default", "b-4").is_some());
        assert!(last.get(&cms, "default", "a-4").is_some());
    }

    #[test]
    fn a_damaged_record_ends_the_log() {
        let dir = ScratchDir::new("persist-crc");
        persisted(dir.path(), never_compact(), |s, log| {
            some_writes(s, "a");
            log.append(&s.take_journal()).unwrap();
            some_writes(s, "b");
        });
        let path = log_file(dir.path(), "c");
        let mut bytes = std::fs::read(&path).unwrap();
        let whole = decode_log(&bytes).unwrap();
        assert!(whole.torn.is_none());
        // Flip one byte inside the payload of the last record.
        let last = bytes.len() - 3;
        bytes[last] ^= 0x20;
        let damaged = decode_log(&bytes).unwrap();
        assert_eq!(damaged.records.len(), whole.records.len() - 1);
        assert!(
            damaged.torn.as_deref().unwrap().contains("checksum"),
            "{:?}",
            damaged.torn
        );
    }

    #[test]
    fn a_file_that_is_not_our_log_is_refused_and_left_alone() {
        let dir = ScratchDir::new("persist-foreign");
        let path = dir.write("c.log", "{\"hello\": 1}\n");
        let Err(e) = load(dir.path(), "c", 100) else {
            panic!("a foreign log must not load");
        };
        assert!(matches!(e, SandboxError::StateLog { .. }), "{e}");
        assert!(e.to_string().contains("c.log"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"hello\": 1}\n");
        // A header cut short by a crash right after the file was created is an empty log.
        std::fs::write(&path, &LOG_MAGIC[..3]).unwrap();
        let (s, _) = load(dir.path(), "c", 100).unwrap();
        assert!(
            s.get(&s.registry.by_key("namespaces").unwrap(), "", "default")
                .is_some()
        );
    }

    #[test]
    fn compaction_keeps_everything_and_restarts_from_snapshot_plus_log() {
        let dir = ScratchDir::new("persist-compact");
        let policy = Policy {
            compact_min_bytes: 1,
            ..Policy::default()
        };
        let mut compactions = 0;
        let before = persisted(dir.path(), policy, |s, log| {
            some_writes(s, "a");
            log.append(&s.take_journal()).unwrap();
            assert!(log.compaction_due(Instant::now()).0, "past the threshold");
            let old_log = std::fs::read(log_file(dir.path(), "c")).unwrap();
            // A write committed while the compaction runs is in the snapshot as well.
            some_writes(s, "b");
            let (rv, objects) = s.snapshot_objects();
            log.compact(rv, &objects, &s.take_journal()).unwrap();
            compactions += 1;
            assert_eq!(log.log_bytes(), 0);
            assert_eq!(files(dir.path()), ["c.json"], "the log is gone");
            assert_eq!(mode(&state_file(dir.path(), "c")), 0o600);
            let (loaded, _) = load(dir.path(), "c", 100).unwrap();
            assert_eq!(
                loaded.snapshot(),
                s.snapshot(),
                "the snapshot alone is everything"
            );

            // A crash between the snapshot's rename and the log's removal leaves the old log:
            // its records are at or below the snapshot's resourceVersion and change nothing.
            std::fs::write(log_file(dir.path(), "c"), &old_log).unwrap();
            let (loaded, _) = load(dir.path(), "c", 100).unwrap();
            assert_eq!(loaded.snapshot(), s.snapshot());
            std::fs::remove_file(log_file(dir.path(), "c")).unwrap();

            // Writes after the compaction go to a new log.
            some_writes(s, "c");
        });
        assert_eq!(compactions, 1);
        assert_eq!(files(dir.path()), ["c.json", "c.log"]);
        let (after, _) = load(dir.path(), "c", 100).unwrap();
        assert_eq!(after.snapshot(), before.snapshot());
        assert_eq!(after.rv, before.rv);
        let cms = after.registry.by_key("configmaps").unwrap();
        for tag in ["a", "b", "c"] {
            assert!(
                after.get(&cms, "default", &format!("{tag}-4")).is_some(),
                "{tag}"
            );
        }
    }

    #[test]
    fn compaction_is_due_by_size_or_after_a_quiet_spell() {
        let dir = ScratchDir::new("persist-due");
        let policy = Policy {
            compact_ratio: 1.0,
            compact_min_bytes: 100,
            idle_compact: Duration::from_secs(3600),
        };
        let mut log = Log::new(
            dir.path(),
            "c",
            Loaded {
                snapshot_bytes: 1000,
                log_bytes: 0,
            },
            policy,
        );
        let now = Instant::now();
        assert_eq!(log.compaction_due(now), (false, None), "nothing to compact");
        log.log_bytes = 999;
        let (due, at) = log.compaction_due(now);
        assert!(!due, "smaller than the snapshot");
        assert!(at.unwrap() >= now + Duration::from_secs(3599), "{at:?}");
        assert!(log.compaction_due(at.unwrap()).0, "idle long enough");
        log.log_bytes = 1000;
        assert!(log.compaction_due(now).0, "as large as the snapshot");
        log.snapshot_bytes = 10;
        log.log_bytes = 99;
        assert!(!log.compaction_due(now).0, "below the minimum");
    }
}
