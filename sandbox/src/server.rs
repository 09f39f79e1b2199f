//! One HTTP/1.1 listener per cluster and the shared per-cluster handle.
//!
//! ```text
//! Sandbox ──┬─ Cluster "east"  ── TcpListener ── accept loop ── connection tasks ── http::handle
//!           │     ├─ Mutex<State>, a watch::Sender<rv> per kind (wakes that kind's watches),
//!           │     │  Notify (wakes persistence)
//!           │     └─ Mutex<Tokens> (admin token, issued ServiceAccount tokens; see `auth`)
//!           └─ Cluster "west"  ── ...
//! ```
//! Shutdown flips a `watch` flag: accept loops stop, watch streams end, connection tasks are
//! aborted, then persistence is flushed by the caller.
//!
//! Every request first passes [`crate::guard`] (`Host` and `Origin`, 403 otherwise), then goes
//! to [`crate::http::handle`].
//!
//! Fault injection (for tests and drills; see `Sandbox::stop_cluster`, `Sandbox::restart_cluster`
//! and `Sandbox::set_starting`):
//! - each accept loop also has its own stop flag: the listener closes and every open connection
//!   (watch streams included) is cut at once, as when an API server process dies; the cluster's
//!   state stays, so a new accept loop on the same address serves it again;
//! - a cluster that is "starting" answers every request with a plain-text
//!   `404 page not found` (no `Status` body), as a real kube-apiserver does before its routes are
//!   installed. Clients must not mistake that for "object deleted".

use crate::auth::{Identity, IssuedToken, Reviewed, TokenTerms, Tokens};
use crate::error::ApiError;
use crate::store::State;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

/// Response body type of every handler (full JSON bodies and watch streams).
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Tunables shared by all clusters of a sandbox.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Events kept for watch resumption; a kind's resumes from before its oldest kept event get
    /// 410 Expired.
    pub history_window: usize,
    /// How often watches that allow bookmarks get one; `None` disables periodic bookmarks.
    pub bookmark_interval: Option<Duration>,
    /// Which `Host` and `Origin` values are answered (see [`crate::guard`]).
    pub hosts: crate::guard::HostPolicy,
    /// Committed events that may wait for the log writer before writes wait for it
    /// ([`Cluster::room_to_write`]; [`JOURNAL_LIMIT`] by default).
    pub journal_limit: usize,
}

/// Default of [`ClusterOptions::journal_limit`]: far more than the log writer lets pile up
/// while it keeps up (it takes the journal every few milliseconds), reached only while it is
/// stuck (a compaction on a slow disk); about 100 bytes each, the objects are shared.
pub const JOURNAL_LIMIT: usize = 50_000;

/// Longest wait of a write for room in the journal before it is refused with 429.
pub const JOURNAL_WAIT: Duration = Duration::from_secs(10);

pub struct Cluster {
    pub name: String,
    pub addr: SocketAddr,
    pub opts: ClusterOptions,
    state: Mutex<State>,
    /// The last resourceVersion committed to each kind (type key), for that kind's watches: a
    /// write wakes only the watches of the kinds it touched.
    kind_rv: Mutex<std::collections::HashMap<String, watch::Sender<u64>>>,
    /// Signalled after every committed change (persistence debounces on it).
    pub dirty: Notify,
    /// Signalled when the log writer took the journal: writes waiting for room go on.
    journal_taken: Notify,
    pub shutdown: watch::Receiver<bool>,
    /// While set and in the future, every request gets the plain-text "starting" 404.
    starting_until: Mutex<Option<Instant>>,
    /// The cluster's own credentials (admin token, issued ServiceAccount tokens).
    tokens: Mutex<Tokens>,
    /// The last requests RBAC refused, oldest first (an audit trail for tests and operators).
    denials: Mutex<std::collections::VecDeque<crate::rbac::Denial>>,
    /// Status writes to answer with 409 Conflict, by (group, plural): how many are left.
    status_conflicts: Mutex<std::collections::HashMap<(String, String), u32>>,
}

impl Cluster {
    pub fn new(
        name: String,
        addr: SocketAddr,
        opts: ClusterOptions,
        state: State,
        shutdown: watch::Receiver<bool>,
    ) -> Cluster {
        Cluster {
            name,
            addr,
            opts,
            state: Mutex::new(state),
            kind_rv: Mutex::new(std::collections::HashMap::new()),
            dirty: Notify::new(),
            journal_taken: Notify::new(),
            shutdown,
            starting_until: Mutex::new(None),
            tokens: Mutex::new(Tokens::default()),
            denials: Mutex::new(std::collections::VecDeque::new()),
            status_conflicts: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Makes the next `count` writes (PUT or PATCH) of the `status` of objects of
    /// `group`/`plural` answer 409 Conflict, after authentication and authorization, as a real
    /// API server answers a write whose resourceVersion is no longer the stored one; nothing
    /// is stored. `count` replaces what was left (0 ends it).
    pub fn conflict_status_writes(&self, group: &str, plural: &str, count: u32) {
        let mut left = self
            .status_conflicts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let key = (group.to_string(), plural.to_string());
        if count == 0 {
            left.remove(&key);
        } else {
            left.insert(key, count);
        }
    }

    /// The 409 for this request if it is a status write [`Cluster::conflict_status_writes`]
    /// still has a conflict for (counting it off); `segs` is the decoded path.
    pub fn take_status_conflict(
        &self,
        method: &hyper::Method,
        segs: &[&str],
    ) -> Option<crate::error::ApiError> {
        if !matches!(*method, hyper::Method::PUT | hyper::Method::PATCH) {
            return None;
        }
        let group = match segs {
            ["api", ..] => "",
            ["apis", g, ..] => g,
            _ => return None,
        };
        let [.., plural, name, "status"] = segs else {
            return None;
        };
        let mut left = self
            .status_conflicts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Every status write passes here: nothing armed (always, outside tests) costs no key.
        if left.is_empty() {
            return None;
        }
        let key = (group.to_string(), plural.to_string());
        let n = left.get_mut(&key)?;
        *n -= 1;
        if *n == 0 {
            left.remove(&key);
        }
        Some(crate::error::ApiError::conflict(group, plural, name))
    }

    /// Remembers a refused request; only the last [`crate::rbac::DENIALS_KEPT`] are kept.
    pub fn record_denial(&self, denial: crate::rbac::Denial) {
        let mut log = self.denials.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() == crate::rbac::DENIALS_KEPT {
            log.pop_front();
        }
        log.push_back(denial);
    }

    /// The requests RBAC refused, oldest first (at most [`crate::rbac::DENIALS_KEPT`]).
    pub fn denials(&self) -> Vec<crate::rbac::Denial> {
        let log = self.denials.lock().unwrap_or_else(|p| p.into_inner());
        log.iter().cloned().collect()
    }

    /// Makes the cluster answer every request with a plain-text `404 page not found` for `d`
    /// (`None`: until called again with `Some(Duration::ZERO)`), like an API server that is
    /// still starting. `Some(Duration::ZERO)` ends it at once.
    pub fn set_starting(&self, d: Option<Duration>) {
        // No deadline that far ahead fits an Instant: treat it as "until further notice".
        let until = match d {
            Some(d) => Instant::now().checked_add(d),
            None => None,
        };
        let on = d.is_none_or(|d| !d.is_zero());
        *self
            .starting_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = on.then(|| until.unwrap_or_else(far_future));
    }

    /// Whether the cluster currently answers as a starting API server.
    pub fn starting(&self) -> bool {
        self.starting_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| Instant::now() < t)
    }

    /// Locks the state. A poisoned lock (a panic mid-request) still yields the data: every
    /// write finishes its checks before mutating, so the state is consistent between steps.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a write and, if it committed anything, wakes the watches of the kinds it touched
    /// and persistence.
    pub fn write<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let (r, before, after, touched) = {
            let mut g = self.lock();
            let before = g.rv;
            let r = f(&mut g);
            let touched = g.take_touched();
            (r, before, g.rv, touched)
        };
        if after != before {
            let senders = self.kind_rv.lock().unwrap_or_else(|p| p.into_inner());
            for kind in &touched {
                if let Some(tx) = senders.get(kind) {
                    tx.send_replace(after);
                }
            }
            drop(senders);
            self.dirty.notify_one();
        }
        r
    }

    /// Back-pressure between writes and the log writer: waits while the journal holds
    /// [`ClusterOptions::journal_limit`] events or more (the log writer fell behind), so the
    /// queue between the store and the log stays bounded; after [`JOURNAL_WAIT`] the write is
    /// refused with 429 `TooManyRequests` (clients retry those). Without persistence there is
    /// no journal and no wait.
    pub async fn room_to_write(&self) -> Result<(), ApiError> {
        let deadline = tokio::time::Instant::now() + JOURNAL_WAIT;
        // Bounded by the deadline: every pass waits for the log writer or gives up.
        loop {
            let taken = self.journal_taken.notified();
            tokio::pin!(taken);
            // Registered before looking, so a take between the look and the wait is not missed.
            taken.as_mut().enable();
            let queued = self.lock().journal_len();
            if queued < self.opts.journal_limit {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, taken).await.is_err() {
                return Err(ApiError::too_many_requests(format!(
                    "the local API's log writer is behind ({queued} writes not yet on disk); \
                     try again later"
                )));
            }
        }
    }

    /// The committed events the log writer has not taken yet (see [`State::take_journal`]);
    /// writes waiting for room go on.
    pub fn take_journal(&self) -> Vec<Arc<crate::store::Event>> {
        let events = self.lock().take_journal();
        self.journal_taken();
        events
    }

    /// Wakes the writes waiting for room: the journal was taken (also by a compaction, which
    /// takes it under the same lock as the objects).
    pub fn journal_taken(&self) {
        self.journal_taken.notify_waiters();
    }

    /// Locks the cluster's credentials. Lock order: tokens before state.
    pub fn tokens(&self) -> MutexGuard<'_, Tokens> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Who sent a request with this `Authorization` header (`None`: no credentials); 401 for
    /// credentials the cluster does not accept.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Identity, ApiError> {
        let tokens = self.tokens();
        match authorization {
            None => Ok(tokens.without_credentials()),
            Some(value) => tokens.authenticate(&self.lock(), value),
        }
    }

    /// Issues a token for the ServiceAccount `namespace/name` (404 if there is none).
    pub fn mint_token(
        &self,
        namespace: &str,
        name: &str,
        terms: &TokenTerms,
    ) -> Result<IssuedToken, ApiError> {
        let mut tokens = self.tokens();
        tokens.mint(&self.lock(), namespace, name, terms)
    }

    /// Whose `token` is, if it is valid for one of `audiences` (see [`Tokens::review`]).
    pub fn review_token(&self, token: &str, audiences: &[String]) -> Result<Reviewed, String> {
        let tokens = self.tokens();
        tokens.review(&self.lock(), token, audiences)
    }

    /// Changes whenever a write touches the kind `key` (a type key, `plural.group`).
    pub fn subscribe_kind(&self, key: &str) -> watch::Receiver<u64> {
        let rv = self.lock().rv;
        let mut senders = self.kind_rv.lock().unwrap_or_else(|p| p.into_inner());
        senders
            .entry(key.to_string())
            .or_insert_with(|| watch::channel(rv).0)
            .subscribe()
    }
}

/// An instant no test outlives (about 30 years ahead; `Instant` has no maximum).
fn far_future() -> Instant {
    let now = Instant::now();
    now.checked_add(Duration::from_secs(30 * 365 * 24 * 3600))
        .unwrap_or(now)
}

/// What a kube-apiserver answers before its handlers are installed: 404 with a plain-text body,
/// not a `Status` object.
fn starting_response() -> hyper::Response<Body> {
    use http_body_util::BodyExt as _;
    let mut r = hyper::Response::new(
        http_body_util::Full::new(Bytes::from_static(b"404 page not found\n")).boxed_unsync(),
    );
    *r.status_mut() = hyper::StatusCode::NOT_FOUND;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut().insert(
        "x-content-type-options",
        hyper::header::HeaderValue::from_static("nosniff"),
    );
    r
}

/// Accepts connections until sandbox shutdown (in-flight requests get a moment to finish) or
/// until `stop` turns true (every connection is cut at once, like a killed server), then closes
/// the listener.
pub async fn accept_loop(
    listener: TcpListener,
    cluster: Arc<Cluster>,
    mut stop: watch::Receiver<bool>,
) {
    let mut shutdown = cluster.shutdown.clone();
    let mut conns = JoinSet::new();
    loop {
        if *stop.borrow() {
            drop(listener);
            conns.abort_all();
            while conns.join_next().await.is_some() {}
            return;
        }
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(cluster = %cluster.name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let c = Arc::clone(&cluster);
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let c = Arc::clone(&c);
                        async move {
                            // Before anything else, even the "starting" answer: a web page
                            // gets nothing from this server (see `guard`).
                            if let Err(e) = c.opts.hosts.check(req.headers(), req.uri()) {
                                tracing::warn!(cluster = %c.name, error = %e.message, "request refused");
                                return Ok(crate::http::error_response(&e));
                            }
                            if c.starting() {
                                return Ok::<_, Infallible>(starting_response());
                            }
                            crate::http::handle(c, req).await
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc);
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            r = shutdown.changed() => if r.is_err() { break },
            // A dropped sender is not a stop; the flag is checked at the top of the loop.
            r = stop.changed() => if r.is_err() { break },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    // Let in-flight requests finish briefly (watch streams end on the same flag), then abort.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.abort_all();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;
    use std::net::{IpAddr, Ipv4Addr};

    /// A cluster whose journal nobody drains (no log writer runs) and takes `limit` events.
    fn cluster(limit: usize) -> (Arc<Cluster>, watch::Sender<bool>) {
        let mut state = State::new(100);
        state.enable_journal();
        let (tx, rx) = watch::channel(false);
        let opts = ClusterOptions {
            history_window: 100,
            bookmark_interval: None,
            hosts: crate::guard::HostPolicy::new(IpAddr::V4(Ipv4Addr::LOCALHOST), &[]).unwrap(),
            journal_limit: limit,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        (
            Arc::new(Cluster::new("c".into(), addr, opts, state, rx)),
            tx,
        )
    }

    fn create(c: &Cluster, name: &str) {
        c.write(|s| {
            let rt = s.registry.by_key("configmaps").unwrap();
            let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "default"}});
            s.create(&rt, Some("default"), cm, false).unwrap();
        });
    }

    #[tokio::test(start_paused = true)]
    async fn writes_wait_while_the_journal_is_full_and_go_on_when_it_is_taken() {
        let (c, _shutdown) = cluster(2);
        create(&c, "a");
        c.room_to_write().await.unwrap();
        create(&c, "b");
        let waiting = tokio::spawn({
            let c = Arc::clone(&c);
            async move { c.room_to_write().await }
        });
        // Far less than JOURNAL_WAIT: still waiting for the log writer.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !waiting.is_finished(),
            "two events queued: the write must wait"
        );
        let taken = c.take_journal();
        assert_eq!(taken.len(), 2, "the journal holds every committed event");
        waiting.await.unwrap().unwrap();
        c.room_to_write().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_waiting_too_long_gets_429_with_a_retry_hint() {
        let (c, _shutdown) = cluster(1);
        create(&c, "a");
        let started = tokio::time::Instant::now();
        let e = c.room_to_write().await.unwrap_err();
        assert_eq!((e.code, e.reason), (429, "TooManyRequests"));
        assert!(started.elapsed() >= JOURNAL_WAIT);
        assert_eq!(e.to_status()["details"]["retryAfterSeconds"], 1);
        let r = crate::http::error_response(&e);
        assert_eq!(r.headers()[hyper::header::RETRY_AFTER], "1");
        // Nothing was lost: the event is still there for the log writer.
        assert_eq!(c.take_journal().len(), 1);
    }
}
