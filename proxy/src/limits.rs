//! Downstream timeouts and connection limits: what keeps a hostile or broken client from holding
//! the proxy's sockets and file descriptors.
//!
//! pingora 0.9 has no total header-read timeout (its `keepalive_timeout` and `read_timeout` are
//! per read, in whole seconds, and a client's `Keep-Alive: timeout=N` or HTTP/1.1 default turns
//! the wait between requests into "forever"), and nothing caps connections on a listener. So the
//! accept path (listeners.rs) enforces them itself:
//!
//! ```text
//! accept ─ ConnGate::admit: over --max-connections on this socket? close at once, counted
//!          (meridian_proxy_connections_shed_total); else counted open until the connection ends
//!          (meridian_proxy_connections_open)
//!   ─ ConnClock (shared by the socket's read buffer, buffered.rs, and the request hooks):
//!
//!        accept ──► Header ── header read (on_connection_reuse hook) ──► Busy
//!                     ▲  deadline: start + header timeout                  │ no socket deadline
//!                     │                                                    │ (route/global
//!                first byte                                                │  request timeout)
//!                     │                                                    ▼
//!                   Idle ◄──────── response done, connection kept ─────────┘
//!                     deadline: start + keep-alive idle timeout
//!
//!        h2 (ALPN or the h2c preface) ──► Off: pingora's h2 idle timeout takes over
//! ```
//!
//! A read that would wait past the clock's deadline fails with `TimedOut` instead, so pingora
//! drops the connection: a silent client, a slowloris trickling its header and an idle keep-alive
//! connection are all closed on time whatever they send. [`raise_nofile_limit`] lifts the
//! process's soft file-descriptor limit to the hard one so the connection cap, not `EMFILE`, is
//! what bounds a flood.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio::time::Instant;

use crate::metrics::Metrics;

/// Downstream timeouts and limits of one proxy (`meridian proxy` flags, [`LimitArgs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time a client has to send a whole request header, counted from the accept (first request,
    /// TLS handshake included) or from its first byte (later requests). Slowloris protection.
    pub header_timeout: Duration,
    /// Time a kept-alive HTTP/1 connection may wait for the next request (and an HTTP/2
    /// connection with no stream open) before it is closed.
    pub idle_timeout: Duration,
    /// Deadline of a request (to its response head, retries included) when its route sets no
    /// `timeouts.request`; `None`: no deadline. A route's value, zero included, wins.
    pub request_timeout: Option<Duration>,
    /// Time to open a connection to a backend endpoint (capped by the try's own timeout).
    pub connect_timeout: Duration,
    /// Open connections per listener socket; those over it are closed at once and counted.
    pub max_connections: usize,
}

/// nginx waits 60 s (`client_header_timeout`) and Envoy has no header timeout by default
/// (`request_headers_timeout` 0) but closes idle connections after 1 h. A real client sends its
/// header in one or two packets, milliseconds after connecting, even over a slow mobile link; 10 s
/// leaves room for a TLS handshake over a bad link and still makes one slowloris socket cost 6×
/// less than with nginx's default.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// nginx's `keepalive_timeout` is 75 s; 60 s is pingora's own default and below the 350 s idle
/// timeout of common cloud load balancers in front.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// See `gateway/upstream.rs`: one lost SYN still connects, a blackholed endpoint costs 2 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Per listener socket. With the soft descriptor limit raised (typically 1 048 576 in a pod) a
/// flood hits this long before `EMFILE`, and the other listeners (and the admin one) keep theirs.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            request_timeout: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// The `meridian proxy` flags of [`Limits`] (flattened into `ProxyArgs`).
#[derive(clap::Args, Debug, Clone)]
pub struct LimitArgs {
    /// Time a client has to send a whole request header (from the accept, TLS handshake
    /// included, or from the first byte of a later request); then the connection is closed.
    /// E.g. `10s`, `500ms`.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Time a kept-alive connection may wait for its next request.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Deadline of a request up to its response head when its HTTPRoute rule sets no
    /// `timeouts.request` (the rule's value wins); `off` for none.
    #[arg(long, value_name = "DURATION", default_value = "off", value_parser = parse_optional_duration)]
    pub request_timeout: OptionalDuration,
    /// Time to open a connection to a backend endpoint.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub backend_connect_timeout: Duration,
    /// Open connections per listener socket; connections over it are closed at once.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = parse_max_connections)]
    pub max_connections: usize,
}

/// A duration flag that may be `off` (clap needs a type of its own for an optional value with
/// a default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalDuration(pub Option<Duration>);

/// The flags' defaults, i.e. [`Limits::default`].
impl Default for LimitArgs {
    fn default() -> Self {
        let l = Limits::default();
        LimitArgs {
            header_timeout: l.header_timeout,
            idle_timeout: l.idle_timeout,
            request_timeout: OptionalDuration(l.request_timeout),
            backend_connect_timeout: l.connect_timeout,
            max_connections: l.max_connections,
        }
    }
}

impl LimitArgs {
    /// The limits the flags ask for.
    pub fn limits(&self) -> Limits {
        Limits {
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            request_timeout: self.request_timeout.0,
            connect_timeout: self.backend_connect_timeout,
            max_connections: self.max_connections,
        }
    }
}

/// Parses `500ms`, `10s`, `2m` or `1h` (a positive whole number and a unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| {
        format!("`{s}` is not a duration: a whole number and a unit (ms, s, m, h), e.g. `10s`")
    })?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "`{s}` has no known unit: use ms, s, m or h, e.g. `10s`"
            ));
        }
    };
    if d.is_zero() {
        return Err(format!("`{s}`: the duration must be more than zero"));
    }
    Ok(d)
}

fn parse_optional_duration(s: &str) -> Result<OptionalDuration, String> {
    if s.trim() == "off" {
        return Ok(OptionalDuration(None));
    }
    parse_duration(s).map(|d| OptionalDuration(Some(d)))
}

fn parse_max_connections(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "`{s}`: a number of connections above zero, e.g. 10000"
        )),
    }
}

/// Where a connection is in its life (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    Header = 0,
    Busy = 1,
    Idle = 2,
    Off = 3,
}

/// The deadline of one downstream connection, moved along by the accept path and the request
/// hooks, read by its read buffer each time a read would wait.
pub(crate) struct ConnClock {
    header: Duration,
    idle: Duration,
    origin: Instant,
    phase: AtomicU8,
    /// When the phase started, in nanoseconds after `origin`.
    since: AtomicU64,
}

impl ConnClock {
    /// A clock for a connection accepted now: its header deadline runs.
    pub fn new(limits: &Limits) -> Arc<ConnClock> {
        Arc::new(ConnClock {
            header: limits.header_timeout,
            idle: limits.idle_timeout,
            origin: Instant::now(),
            phase: AtomicU8::new(Phase::Header as u8),
            since: AtomicU64::new(0),
        })
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Header,
            1 => Phase::Busy,
            2 => Phase::Idle,
            _ => Phase::Off,
        }
    }

    fn enter(&self, phase: Phase) {
        let since = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.since.store(since, Ordering::Release);
        self.phase.store(phase as u8, Ordering::Release);
    }

    /// The request header has been read: the request's own timeouts apply from here.
    pub fn busy(&self) {
        self.enter(Phase::Busy);
    }

    /// The response is done and the connection kept: the idle deadline runs.
    pub fn idle(&self) {
        self.enter(Phase::Idle);
    }

    /// HTTP/2: pingora's HTTP/2 idle timeout governs the connection.
    pub fn off(&self) {
        self.enter(Phase::Off);
    }

    /// Bytes arrived from the client: an idle connection starts its next request header.
    pub fn data_arrived(&self) {
        if self.phase() == Phase::Idle {
            self.enter(Phase::Header);
        }
    }

    /// When a read waiting now must give up (`None`: no deadline).
    pub fn deadline(&self) -> Option<Instant> {
        let limit = match self.phase() {
            Phase::Header => self.header,
            Phase::Idle => self.idle,
            Phase::Busy | Phase::Off => return None,
        };
        let since = Duration::from_nanos(self.since.load(Ordering::Acquire));
        Some(self.origin + since + limit)
    }

    /// What a read that hit the deadline reports (for the debug log).
    pub fn expired_what(&self) -> &'static str {
        match self.phase() {
            Phase::Idle => "keep-alive idle timeout",
            _ => "request header timeout",
        }
    }
}

/// The request hooks' handle on a connection's clock: pingora carries it from our HTTP/1
/// loop (listeners.rs) to `ProxyHttp::on_connection_reuse` as the connection's user context,
/// which pingora calls right after reading each request header.
pub(crate) struct ClockHandle(pub Arc<ConnClock>);

/// Marks the request header of the connection carrying `context` as read.
pub(crate) fn header_read(context: &(dyn std::any::Any + Send + Sync)) {
    if let Some(ClockHandle(clock)) = context.downcast_ref::<ClockHandle>() {
        clock.busy();
    }
}

/// The connection cap of one listener address and its two metrics, shared by the accept loops
/// of every lane (worker) serving that address.
pub(crate) struct ConnGate {
    max: usize,
    open: IntGauge,
    shed: IntCounter,
    /// Makes check-and-count one step when several lanes admit at once (uncontended with one
    /// lane; held for two atomic operations).
    admitting: std::sync::Mutex<()>,
}

/// One admitted connection; dropping it gives its place back.
pub(crate) struct Admitted {
    open: IntGauge,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl ConnGate {
    /// The gate of the socket labelled `listener` (`ip:port`, or `east-west`).
    pub fn new(metrics: &Metrics, listener: &str, max: usize) -> ConnGate {
        ConnGate {
            max,
            open: metrics.connections_open.with_label_values(&[listener]),
            shed: metrics.connections_shed.with_label_values(&[listener]),
            admitting: std::sync::Mutex::new(()),
        }
    }

    /// A place for a connection just accepted, or `None` (counted as shed) when the address
    /// already has its maximum. Admissions are serialised, so lanes admitting at once cannot
    /// both take the last place; a place given back meanwhile only makes room.
    pub fn admit(&self) -> Option<Admitted> {
        let _one_at_a_time = self.admitting.lock().unwrap_or_else(|p| p.into_inner());
        if usize::try_from(self.open.get()).unwrap_or(0) >= self.max {
            self.shed.inc();
            return None;
        }
        self.open.inc();
        Some(Admitted {
            open: self.open.clone(),
        })
    }
}

/// Raises the process's soft `RLIMIT_NOFILE` to its hard limit (every connection costs one
/// descriptor, a proxied one two) and logs the value in force. Returns it (`None` when it cannot
/// be read).
pub fn raise_nofile_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};

    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the file descriptor limit");
            return None;
        }
    };
    if soft >= hard {
        tracing::info!(nofile = soft, "file descriptor limit");
        return Some(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            tracing::info!(
                nofile = hard,
                was = soft,
                "file descriptor limit raised to the hard limit"
            );
            Some(hard)
        }
        Err(e) => {
            tracing::warn!(nofile = soft, hard, error = %e, "cannot raise the file descriptor limit");
            Some(soft)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn durations_parse_with_a_unit_and_refuse_zero_or_garbage() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "10", "s", "0s", "1.5s", "-1s", "10 parsecs"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_optional_duration("off"), Ok(OptionalDuration(None)));
        assert_eq!(
            parse_optional_duration("30s"),
            Ok(OptionalDuration(Some(Duration::from_secs(30))))
        );
        assert!(parse_max_connections("0").is_err());
        assert_eq!(parse_max_connections("200"), Ok(200));
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_runs_the_header_and_idle_deadlines_only() {
        let limits = Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..Limits::default()
        };
        let start = Instant::now();
        let clock = ConnClock::new(&limits);
        assert_eq!(clock.deadline(), Some(start + Duration::from_secs(10)));
        // Bytes of the first header do not extend it: the deadline is for the whole header.
        tokio::time::advance(Duration::from_secs(4)).await;
        clock.data_arrived();
        assert_eq!(clock.deadline(), Some(start + Duration::from_secs(10)));
        clock.busy();
        assert_eq!(clock.deadline(), None);
        tokio::time::advance(Duration::from_secs(100)).await;
        clock.idle();
        let idle_at = Instant::now();
        assert_eq!(clock.deadline(), Some(idle_at + Duration::from_secs(60)));
        tokio::time::advance(Duration::from_secs(30)).await;
        clock.data_arrived();
        assert_eq!(
            clock.deadline(),
            Some(Instant::now() + Duration::from_secs(10)),
            "the next request's header gets its own header timeout from its first byte"
        );
        header_read(&ClockHandle(clock.clone()));
        assert_eq!(clock.deadline(), None);
        clock.off();
        assert_eq!(clock.deadline(), None);
    }

    #[test]
    fn the_gate_sheds_over_the_cap_and_gives_places_back() {
        let metrics = Metrics::new().unwrap();
        let gate = ConnGate::new(&metrics, "127.0.0.1:1", 2);
        let a = gate.admit().unwrap();
        let _b = gate.admit().unwrap();
        assert!(gate.admit().is_none());
        drop(a);
        assert!(gate.admit().is_some());
        let text = metrics.render().unwrap();
        assert!(
            text.contains("meridian_proxy_connections_shed_total{listener=\"127.0.0.1:1\"} 1"),
            "{text}"
        );
    }
}
