//! One HTTP/1.1 listener per cluster and the shared per-cluster handle.
//!
//! ```text
//! Sandbox ──┬─ Cluster "east"  ── TcpListener ── accept loop ── connection tasks ── http::handle
//!           │     └─ Mutex<State>, watch::Sender<rv> (wakes watches), Notify (wakes persistence)
//!           └─ Cluster "west"  ── ...
//! ```
//! Shutdown flips a `watch` flag: accept loops stop, watch streams end, connection tasks are
//! aborted, then persistence is flushed by the caller.

use crate::store::State;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

/// Response body type of every handler (full JSON bodies and watch streams).
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Tunables shared by all clusters of a sandbox.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Events kept for watch resumption; older resourceVersions get 410 Expired.
    pub history_window: usize,
    /// How often watches that allow bookmarks get one; `None` disables periodic bookmarks.
    pub bookmark_interval: Option<Duration>,
}

pub struct Cluster {
    pub name: String,
    pub addr: SocketAddr,
    pub opts: ClusterOptions,
    state: Mutex<State>,
    rv_tx: watch::Sender<u64>,
    /// Signalled after every committed change (persistence debounces on it).
    pub dirty: Notify,
    pub shutdown: watch::Receiver<bool>,
}

impl Cluster {
    pub fn new(
        name: String,
        addr: SocketAddr,
        opts: ClusterOptions,
        state: State,
        shutdown: watch::Receiver<bool>,
    ) -> Cluster {
        let (rv_tx, _) = watch::channel(state.rv);
        Cluster {
            name,
            addr,
            opts,
            state: Mutex::new(state),
            rv_tx,
            dirty: Notify::new(),
            shutdown,
        }
    }

    /// Locks the state. A poisoned lock (a panic mid-request) still yields the data: every
    /// write finishes its checks before mutating, so the state is consistent between steps.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a write and wakes watches and persistence if it committed anything.
    pub fn write<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let (r, before, after) = {
            let mut g = self.lock();
            let before = g.rv;
            let r = f(&mut g);
            (r, before, g.rv)
        };
        if after != before {
            self.rv_tx.send_replace(after);
            self.dirty.notify_one();
        }
        r
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.rv_tx.subscribe()
    }
}

/// Accepts connections until shutdown, then aborts the remaining connections.
pub async fn accept_loop(listener: TcpListener, cluster: Arc<Cluster>) {
    let mut shutdown = cluster.shutdown.clone();
    let mut conns = JoinSet::new();
    loop {
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
                        crate::http::handle(Arc::clone(&c), req)
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
