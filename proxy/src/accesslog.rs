//! Access logs: one JSON line per request, written off the request path.
//!
//! ```text
//! Forwarder::logging (gateway/response.rs, once per request, both request paths)
//!   ─ sampled? (--access-log-sample RATE) ─ the line: serde_json of borrowed fields (every
//!     string escaped; non-UTF-8 bytes of the path or host replaced by U+FFFD)
//!   ─ try_send on a bounded channel (LINE_QUEUE lines): full → the line is dropped and counted
//!     (meridian_proxy_access_log_dropped_total{reason="queue_full"}), the request never waits
//! writer thread ─ idle: blocks for a line; busy: takes every queued line, writes them through
//!   a buffer with one flush, pauses BATCH_PAUSE (lines queue without waking it), goes again
//!   ─ SIGHUP (reopen()) → the file is opened again (after logrotate moved it) before the next
//!   line, or within IDLE_CHECK when idle ─ a failed write is counted (reason="write_error")
//!   and logged once per burst
//!   ─ ends when the proxy is gone (every sender dropped), after writing what is queued
//! ```
//!
//! Only the Host header is logged of all request headers, and the path without its query string
//! (`--access-log-query` adds it): paths and queries may carry tokens. Fields are described in
//! docs/operations.md, "Access logs".

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{
    Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel,
};
use std::time::Duration;

use prometheus::IntCounterVec;
use serde::Serialize;

/// Lines waiting for the writer; beyond, lines are dropped (and counted).
const LINE_QUEUE: usize = 16 * 1024;
/// How often an idle writer looks for a reopen request.
const IDLE_CHECK: Duration = Duration::from_millis(250);
/// The busy writer's pause between two batches: a line waits at most this long (plus the write)
/// before it is written; at this proxy's rates a batch stays far below [`LINE_QUEUE`].
const BATCH_PAUSE: Duration = Duration::from_millis(5);

/// Where access log lines go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// No access log.
    #[default]
    Off,
    /// The proxy's standard output.
    Stdout,
    /// A file, appended to (created if missing).
    File(PathBuf),
}

impl std::str::FromStr for AccessLogTarget {
    type Err = String;

    /// `off`, `stdout` or a file path.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" => Err("--access-log needs `off`, `stdout` or a file path".to_string()),
            "off" => Ok(AccessLogTarget::Off),
            "stdout" | "-" => Ok(AccessLogTarget::Stdout),
            path => Ok(AccessLogTarget::File(PathBuf::from(path))),
        }
    }
}

/// Access log settings of a proxy ([`crate::ProxyConfig::access_log`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogConfig {
    /// Where the lines go (default: off).
    pub target: AccessLogTarget,
    /// Share of requests logged, 0 to 1 (default 1: every request).
    pub sample: f64,
    /// Log the query string with the path (default: no; queries may carry tokens).
    pub query: bool,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            target: AccessLogTarget::Off,
            sample: 1.0,
            query: false,
        }
    }
}

impl AccessLogConfig {
    pub fn enabled(&self) -> bool {
        self.target != AccessLogTarget::Off && self.sample > 0.0
    }
}

/// Parses `--access-log-sample`: a number from 0 to 1.
pub fn parse_sample(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "`{s}` is not a sampling rate: give a number from 0 (no line) to 1 (every request)"
        )),
    }
}

/// Why the access log cannot start.
#[derive(Debug, thiserror::Error)]
#[error("access log {}: {error}", .path.display())]
pub struct AccessLogError {
    /// The file.
    pub path: PathBuf,
    /// The OS error.
    pub error: io::Error,
}

/// The running access log: the sending end of the writer's channel.
pub(crate) struct AccessLog {
    lines: SyncSender<Vec<u8>>,
    sample: f64,
    pub query: bool,
    reopen: Arc<AtomicBool>,
    dropped: IntCounterVec,
}

impl AccessLog {
    /// Opens the target and starts the writer thread; `None` when the log is off.
    pub fn start(
        cfg: &AccessLogConfig,
        dropped: IntCounterVec,
    ) -> Result<Option<AccessLog>, AccessLogError> {
        if !cfg.enabled() {
            return Ok(None);
        }
        let sink = Sink::open(&cfg.target)?;
        let (lines, rx) = sync_channel(LINE_QUEUE);
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            sink,
            target: cfg.target.clone(),
            reopen: reopen.clone(),
            dropped: dropped.clone(),
            failing: false,
        };
        std::thread::Builder::new()
            .name("meridian-access-log".to_string())
            .spawn(move || writer.run(rx))
            .map_err(|error| AccessLogError {
                path: PathBuf::from("<writer thread>"),
                error,
            })?;
        Ok(Some(AccessLog {
            lines,
            sample: cfg.sample,
            query: cfg.query,
            reopen,
            dropped,
        }))
    }

    /// Whether this request gets a line.
    pub fn sampled(&self) -> bool {
        self.sample >= 1.0 || rand::random::<f64>() < self.sample
    }

    /// Hands a line to the writer, or drops it (counted) when the writer is behind.
    pub fn write(&self, line: &Line<'_>) {
        let mut buf = Vec::with_capacity(512);
        if let Err(e) = serde_json::to_writer(&mut buf, line) {
            tracing::debug!(error = %e, "access log line not encoded");
            return;
        }
        buf.push(b'\n');
        match self.lines.try_send(buf) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.with_label_values(&["queue_full"]).inc();
            }
            Err(TrySendError::Disconnected(_)) => {
                self.dropped.with_label_values(&["write_error"]).inc();
            }
        }
    }

    /// Asks the writer to open the file again (SIGHUP, after a rotation moved it).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }
}

/// Where the writer writes.
enum Sink {
    Stdout(BufWriter<io::Stdout>),
    File(BufWriter<File>),
}

impl Sink {
    fn open(target: &AccessLogTarget) -> Result<Sink, AccessLogError> {
        match target {
            AccessLogTarget::File(path) => OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(|f| Sink::File(BufWriter::with_capacity(64 * 1024, f)))
                .map_err(|error| AccessLogError {
                    path: path.clone(),
                    error,
                }),
            AccessLogTarget::Stdout | AccessLogTarget::Off => Ok(Sink::Stdout(
                BufWriter::with_capacity(64 * 1024, io::stdout()),
            )),
        }
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::Stdout(w) => w,
            Sink::File(w) => w,
        }
    }
}

/// The writer thread's state.
struct Writer {
    sink: Sink,
    target: AccessLogTarget,
    reopen: Arc<AtomicBool>,
    dropped: IntCounterVec,
    /// The last write failed (logged once until a write succeeds again).
    failing: bool,
}

impl Writer {
    /// Writes lines until every sender is gone. Idle, it blocks until a line comes; busy, it
    /// takes what is queued, writes it with one flush, and pauses [`BATCH_PAUSE`]: the lines of
    /// the pause queue up without waking this thread (a sender only wakes a blocked receiver),
    /// so under load the proxy pays one write per pause, not a write and a wake-up per request.
    fn run(mut self, rx: Receiver<Vec<u8>>) {
        loop {
            let first = match rx.recv_timeout(IDLE_CHECK) {
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout) => {
                    self.reopen_if_asked();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush();
                    return;
                }
            };
            // A reopen asked before a line was queued applies to that line.
            self.reopen_if_asked();
            self.write(&first);
            loop {
                let mut taken = 0usize;
                loop {
                    match rx.try_recv() {
                        Ok(line) => {
                            self.reopen_if_asked();
                            self.write(&line);
                            taken += 1;
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            self.flush();
                            return;
                        }
                    }
                }
                self.flush();
                if taken == 0 {
                    break;
                }
                std::thread::sleep(BATCH_PAUSE);
            }
        }
    }

    fn write(&mut self, line: &[u8]) {
        let result = self.sink.writer().write_all(line);
        self.outcome(result);
    }

    fn flush(&mut self) {
        let result = self.sink.writer().flush();
        self.outcome(result);
    }

    fn outcome(&mut self, result: io::Result<()>) {
        match result {
            Ok(()) => self.failing = false,
            Err(e) => {
                self.dropped.with_label_values(&["write_error"]).inc();
                if !self.failing {
                    tracing::warn!(error = %e, "access log write failed; lines are dropped");
                }
                self.failing = true;
            }
        }
    }

    fn reopen_if_asked(&mut self) {
        if !self.reopen.swap(false, Ordering::AcqRel) {
            return;
        }
        if !matches!(self.target, AccessLogTarget::File(_)) {
            return;
        }
        self.flush();
        match Sink::open(&self.target) {
            Ok(sink) => {
                self.sink = sink;
                tracing::info!("access log reopened");
            }
            Err(e) => {
                tracing::warn!(error = %e, "access log not reopened; writing on to the old file")
            }
        }
    }
}

/// One access log line (docs/operations.md, "Access logs"). Every string is escaped by
/// serde_json; nothing here holds a header value but the Host.
#[derive(Debug, Serialize)]
pub(crate) struct Line<'a> {
    /// When the request head was read (RFC 3339, UTC).
    pub time: String,
    /// The cluster of the proxy that served the request (several proxies may share a file).
    pub cluster: &'a str,
    /// `namespace/name` of the Gateway (`east-west` on the east-west listener).
    pub gateway: &'a str,
    pub listener: &'a str,
    /// `namespace/name` of the matched HTTPRoute (empty without a match).
    pub route: &'a str,
    /// Index of the matched rule in its route.
    pub rule: Option<usize>,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub bytes_in: usize,
    pub bytes_out: usize,
    /// Head read to the end of the response, milliseconds.
    pub duration_ms: f64,
    /// First upstream try to the response head from an endpoint, milliseconds.
    pub upstream_head_ms: Option<f64>,
    pub upstream: Option<UpstreamField<'a>>,
    /// Locality tier of the endpoint, 0 = the most preferred.
    pub tier: Option<usize>,
    pub attempts: usize,
    pub failure: Option<&'static str>,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub client: Option<std::net::IpAddr>,
}

/// The endpoint of the last try.
#[derive(Debug, Serialize)]
pub(crate) struct UpstreamField<'a> {
    pub address: String,
    pub cluster: &'a str,
    pub region: &'a str,
    pub zone: &'a str,
}

/// An RFC 3339 UTC timestamp with milliseconds.
pub(crate) fn timestamp(t: std::time::SystemTime) -> String {
    match jiff::Timestamp::try_from(t) {
        Ok(ts) => format!("{ts:.3}"),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn targets_and_rates_parse() {
        assert_eq!("off".parse(), Ok(AccessLogTarget::Off));
        assert_eq!("stdout".parse(), Ok(AccessLogTarget::Stdout));
        assert_eq!(
            "/var/log/a.log".parse(),
            Ok(AccessLogTarget::File("/var/log/a.log".into()))
        );
        assert!("".parse::<AccessLogTarget>().is_err());
        assert_eq!(parse_sample("0.25"), Ok(0.25));
        assert!(parse_sample("1.5").is_err());
        assert!(parse_sample("-0.1").is_err());
        assert!(parse_sample("NaN").is_err());
        assert!(!AccessLogConfig::default().enabled());
    }

    fn line(path: &str) -> Line<'_> {
        Line {
            time: String::new(),
            cluster: "",
            gateway: "",
            listener: "",
            route: "",
            rule: None,
            method: "GET",
            host: "",
            path,
            status: 200,
            bytes_in: 0,
            bytes_out: 0,
            duration_ms: 0.0,
            upstream_head_ms: None,
            upstream: None,
            tier: None,
            attempts: 0,
            failure: None,
            trace_id: None,
            span_id: None,
            client: None,
        }
    }

    /// Waits (bounded) until `path` holds `n` lines; returns them.
    fn lines_of(path: &std::path::Path, n: usize) -> Vec<String> {
        for _ in 0..500 {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.lines().count() >= n {
                return text.lines().map(str::to_string).collect();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{} never held {n} lines", path.display());
    }

    /// After a rotation moved the file, `reopen` (SIGHUP) makes the writer create it anew.
    #[test]
    fn reopen_writes_to_a_new_file_after_a_rotation() {
        let dir = std::env::temp_dir().join(format!("meridian-accesslog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let rotated = dir.join("access.log.1");
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&rotated);
        let dropped = IntCounterVec::new(prometheus::Opts::new("d", "d"), &["reason"]).unwrap();
        let cfg = AccessLogConfig {
            target: AccessLogTarget::File(path.clone()),
            ..Default::default()
        };
        let log = AccessLog::start(&cfg, dropped.clone()).unwrap().unwrap();
        log.write(&line("/before"));
        assert!(lines_of(&path, 1)[0].contains("/before"));
        std::fs::rename(&path, &rotated).unwrap();
        // The writer reopens before the next line it takes.
        log.reopen();
        log.write(&line("/after"));
        let fresh = lines_of(&path, 1);
        assert_eq!(fresh.len(), 1);
        assert!(fresh[0].contains("/after"), "{fresh:?}");
        assert_eq!(lines_of(&rotated, 1).len(), 1);
        assert_eq!(dropped.with_label_values(&["queue_full"]).get(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn timestamps_are_rfc3339_with_milliseconds() {
        let t = std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(timestamp(t), "2023-11-14T22:13:20.123Z");
    }
}
