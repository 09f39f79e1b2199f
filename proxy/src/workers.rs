//! The worker model ([`ProxyConfig::workers`](crate::ProxyConfig::workers), `meridian proxy
//! --workers N`): N threads, each running its own current-thread tokio runtime, each with its
//! own `SO_REUSEPORT` socket on every listener address (listeners.rs `bind_group`) and its own
//! pingora app, so its own upstream connection pool.
//!
//! ```text
//! main runtime (caller's): apply, controller stream / file watcher, health checker, admin
//!   │  spawns one accept loop per (socket, worker) on the worker's runtime handle
//!   ▼
//! worker i (thread meridian-worker-i, current-thread runtime)
//!   accept loop on its own SO_REUSEPORT socket (the kernel spreads new connections over the
//!   group by a hash of the 4-tuple) ─ tokio::spawn(serve_connection): the request, the
//!   upstream connection (from worker i's pool) and the response never leave this thread
//! ```
//!
//! Why: on a multi-thread runtime work stealing moves a connection's tasks between threads, and
//! every hop is a cross-thread wake-up; one runtime per thread keeps a connection on one core
//! (what nginx does with worker processes). Shared state (the router's `ArcSwap`, health,
//! ejections, metrics, the connection gates) is behind `Arc`s and atomics as before.
//!
//! With `workers: 0` there are no worker threads: connections are served on the runtime that
//! started the proxy (a multi-thread one under `meridian proxy --workers 0`), as before.
//!
//! Stopping: [`Workers::stop`] (after the drain in `ProxyHandle::shutdown`) or dropping
//! [`Workers`] ends every worker's runtime; tasks still running there are cancelled.

use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::{Builder, Handle};
use tokio::sync::watch;

/// How long a stopping worker waits for its blocking tasks before its thread ends anyway.
const STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// The running worker threads and their runtimes' handles.
pub(crate) struct Workers {
    handles: Vec<Handle>,
    /// `true` (or dropped) stops every worker.
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `n` worker threads, each running a current-thread runtime until stopped.
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let (stop, _) = watch::channel(false);
        let mut workers = Workers {
            handles: Vec::with_capacity(n),
            stop,
            threads: Vec::with_capacity(n),
        };
        for i in 0..n {
            let runtime = Builder::new_current_thread()
                .enable_all()
                .thread_name(format!("meridian-worker-{i}"))
                .build()?;
            workers.handles.push(runtime.handle().clone());
            let mut stop = workers.stop.subscribe();
            // On an error, the workers started so far stop when `workers` drops.
            let thread = std::thread::Builder::new()
                .name(format!("meridian-worker-{i}"))
                .spawn(move || {
                    // Drives every task spawned on this runtime's handle until told to stop
                    // (or the `Workers` is dropped: the channel closes).
                    runtime.block_on(async {
                        let _ = stop.wait_for(|s| *s).await;
                    });
                    runtime.shutdown_timeout(STOP_TIMEOUT);
                })?;
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// The workers' runtime handles, one per worker, in order.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// Stops every worker (tasks still running on them are cancelled) and waits until their
    /// threads have ended, at most a little over [`STOP_TIMEOUT`].
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let threads = std::mem::take(&mut self.threads);
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        if tokio::time::timeout(STOP_TIMEOUT * 2, joined)
            .await
            .is_err()
        {
            tracing::warn!("worker threads did not stop in time; left to end on their own");
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn each_worker_runs_its_tasks_on_its_own_thread_and_stops() {
        let workers = Workers::start(3).unwrap();
        let mut names = Vec::new();
        for h in workers.handles() {
            // Two tasks on one worker run on the same thread, the worker's own.
            let a = h
                .spawn(async { std::thread::current().id() })
                .await
                .unwrap();
            let b = h
                .spawn(async { std::thread::current().name().map(str::to_string) })
                .await
                .unwrap();
            let c = h
                .spawn(async { std::thread::current().id() })
                .await
                .unwrap();
            assert_eq!(a, c);
            assert_ne!(a, std::thread::current().id());
            names.push(b.unwrap());
        }
        assert_eq!(
            names,
            [
                "meridian-worker-0",
                "meridian-worker-1",
                "meridian-worker-2"
            ]
        );
        let handles = workers.handles().to_vec();
        // A task still pending when the workers stop is cancelled, not left running.
        let pending = handles[0].spawn(std::future::pending::<()>());
        workers.stop().await;
        assert!(pending.await.unwrap_err().is_cancelled());
        assert!(handles[1].spawn(async {}).await.is_err());
    }
}
