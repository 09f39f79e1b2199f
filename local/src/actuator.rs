//! The drill actuator of `meridian up`: it can kill and blackhole the demo echo backends that
//! `up` runs, so kill and blackhole drills work on one machine.
//!
//! ```text
//!  controller drill runner ── fail(Kill) ──► stop the matching backends' runtimes
//!                                            (listener and every connection closed: refused)
//!                          ── restore ─────► start them again on the same addresses
//!                          ── fail(Blackhole) ► nft table `meridian-drill-<pid>` dropping every
//!                                               packet to the matching backends (timeouts)
//!                          ── restore ─────► delete the table
//! ```
//!
//! Each backend runs on its own single-threaded runtime in its own thread, like its own process:
//! stopping it drops the runtime, which closes the listener and every open connection at once,
//! as a crashed process would. The nft table is deleted by restore, by [`LocalBackends::shutdown`]
//! and, as a last resort, when the [`LocalBackends`] is dropped (any exit path of `up`).

use std::net::SocketAddr;
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use meridian_controller::{
    ActuatorError as DrillActuatorError, ActuatorFuture, DrillActuator, DrillMode, DrillTarget,
};
use tokio::sync::Mutex;

use crate::echo::{self, EchoArgs};
use crate::error_chain;

/// Why a drill action on `up`'s backends did not happen. The controller shows the message in the
/// drill's status, so each one says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ActuatorError {
    /// No backend matches the target.
    #[error("no backend of `meridian up` is in {target}; its backends: {inventory}")]
    NoBackend {
        /// The target, as the controller describes it.
        target: String,
        /// Every backend (`cluster/region/zone`), or why there is none.
        inventory: String,
    },
    /// Drains are not the actuator's job.
    #[error("drain drills are carried out by the proxies, not by `meridian up`")]
    Drain,
    /// Blackholes need root.
    #[error("not running as root: {NFT_FIX}")]
    NotRoot,
    /// Blackholes need nft.
    #[error("nft is not installed: {NFT_FIX}")]
    NoNft,
    /// nft could not be run or fed.
    #[error("{doing}: {error}")]
    NftIo {
        /// `running nft` or `writing nft rules`.
        doing: &'static str,
        /// Why.
        error: std::io::Error,
    },
    /// nft hung.
    #[error("nft did not finish within 10 s")]
    NftTimeout,
    /// nft refused.
    #[error("nft {args}: {stderr}")]
    Nft {
        /// The arguments given.
        args: String,
        /// What nft said.
        stderr: String,
    },
    /// The backend's thread could not be started.
    #[error("starting a thread for {name}: {error}")]
    Thread {
        /// The backend.
        name: String,
        /// Why.
        error: std::io::Error,
    },
    /// The backend stopped with an error while starting.
    #[error("{name} on {listen}: {reason}")]
    Backend {
        /// The backend.
        name: String,
        /// Its address.
        listen: SocketAddr,
        /// Why, with its causes.
        reason: String,
    },
    /// The backend did not start listening in time.
    #[error("{name} did not accept connections on {listen} within {within:?}")]
    NotAccepting {
        /// The backend.
        name: String,
        /// Its address.
        listen: SocketAddr,
        /// How long it had.
        within: Duration,
    },
}

fn matches(t: &DrillTarget, b: &EchoArgs) -> bool {
    (t.cluster.is_some() || t.region.is_some() || t.zone.is_some())
        && t.cluster.as_ref().is_none_or(|c| *c == b.cluster)
        && t.region.as_ref().is_none_or(|r| *r == b.region)
        && t.zone.as_ref().is_none_or(|z| *z == b.zone)
}

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

struct Backend {
    args: EchoArgs,
    running: Option<Running>,
}

/// The echo backends `up` runs, and the drill actions on them.
pub struct LocalBackends {
    backends: Mutex<Vec<Backend>>,
    /// Name of the nft table while a blackhole is installed.
    blackhole: StdMutex<Option<String>>,
    table: String,
}

impl Default for LocalBackends {
    fn default() -> Self {
        Self::new()
    }
}

/// How long a (re)started backend may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts one backend on its own runtime and waits until its socket is bound (by this backend:
/// a connect probe could reach another process that took the port first).
async fn start_backend(args: &EchoArgs) -> Result<Running, ActuatorError> {
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let a = args.clone();
    let thread = std::thread::Builder::new()
        .name(format!("echo-{}", a.zone))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = bound_tx.send(Err(format!("starting a runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match echo::bind(a.listen).await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = bound_tx.send(Err(error_chain(&e)));
                        return;
                    }
                };
                let _ = bound_tx.send(Ok(()));
                tokio::select! {
                    r = echo::serve(listener, a) => {
                        if let Err(e) = r {
                            tracing::warn!(error = %error_chain(&e), "echo backend stopped");
                        }
                    }
                    _ = stop_rx => {}
                }
            });
            // Dropping the runtime drops every connection task: their sockets close now.
            drop(rt);
        })
        .map_err(|error| ActuatorError::Thread {
            name: args.name.clone(),
            error,
        })?;
    match tokio::time::timeout(START_TIMEOUT, bound_rx).await {
        Ok(Ok(Ok(()))) => Ok(Running { stop, thread }),
        Ok(Ok(Err(reason))) => Err(ActuatorError::Backend {
            name: args.name.clone(),
            listen: args.listen,
            reason,
        }),
        // The thread ended without a word (it panicked) or took too long.
        Ok(Err(_)) | Err(_) => {
            let _ = stop.send(());
            Err(ActuatorError::NotAccepting {
                name: args.name.clone(),
                listen: args.listen,
                within: START_TIMEOUT,
            })
        }
    }
}

async fn stop_backend(r: Running) {
    let _ = r.stop.send(());
    let _ = tokio::task::spawn_blocking(move || r.thread.join()).await;
}

/// Whether this process runs as root (effective uid 0), from /proc.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

const NFT_FIX: &str = "blackhole drills need nft and root: `apt-get install -y nftables`, then run \
                       `meridian up` as root";

async fn nft(args: &[&str], stdin: Option<String>) -> Result<(), ActuatorError> {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new("nft");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => ActuatorError::NoNft,
        _ => ActuatorError::NftIo {
            doing: "running nft",
            error,
        },
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .await
            .map_err(|error| ActuatorError::NftIo {
                doing: "writing nft rules",
                error,
            })?;
    }
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .map_err(|_| ActuatorError::NftTimeout)?
        .map_err(|error| ActuatorError::NftIo {
            doing: "running nft",
            error,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ActuatorError::Nft {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

impl LocalBackends {
    /// No backends yet; the nft table is named after this process.
    pub fn new() -> Self {
        Self {
            backends: Mutex::new(Vec::new()),
            blackhole: StdMutex::new(None),
            table: format!("meridian-drill-{}", std::process::id()),
        }
    }

    /// The nft table a blackhole installs.
    #[cfg(test)]
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Starts a backend and keeps it for drills; returns once it accepts connections.
    pub async fn start(&self, args: EchoArgs) -> Result<(), ActuatorError> {
        let running = start_backend(&args).await?;
        self.backends.lock().await.push(Backend {
            args,
            running: Some(running),
        });
        Ok(())
    }

    fn inventory(backends: &[Backend]) -> String {
        if backends.is_empty() {
            return "none (was `meridian up` started with --no-demo?)".into();
        }
        backends
            .iter()
            .map(|b| format!("{}/{}/{}", b.args.cluster, b.args.region, b.args.zone))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Takes the target's backends down (`Kill`) or drops their packets (`Blackhole`).
    pub async fn fail_target(
        &self,
        mode: DrillMode,
        target: &DrillTarget,
    ) -> Result<String, ActuatorError> {
        let mut backends = self.backends.lock().await;
        let idx: Vec<usize> = (0..backends.len())
            .filter(|&i| matches(target, &backends[i].args))
            .collect();
        if idx.is_empty() {
            return Err(ActuatorError::NoBackend {
                target: target.to_string(),
                inventory: Self::inventory(&backends),
            });
        }
        match mode {
            DrillMode::Drain => Err(ActuatorError::Drain),
            DrillMode::Kill => {
                let mut done = Vec::new();
                for i in idx {
                    if let Some(r) = backends[i].running.take() {
                        stop_backend(r).await;
                        done.push(format!(
                            "{} ({})",
                            backends[i].args.name, backends[i].args.listen
                        ));
                    }
                }
                Ok(format!("stopped {}", done.join(", ")))
            }
            DrillMode::Blackhole => {
                let addrs: Vec<SocketAddr> = idx.iter().map(|&i| backends[i].args.listen).collect();
                drop(backends);
                self.install_blackhole(&addrs).await
            }
        }
    }

    /// Installs the nft table that drops every packet to `addrs` (replacing an earlier one).
    async fn install_blackhole(&self, addrs: &[SocketAddr]) -> Result<String, ActuatorError> {
        if !is_root() {
            return Err(ActuatorError::NotRoot);
        }
        // A second fail replaces the first table instead of failing on "exists".
        self.remove_table().await?;
        let mut rules = format!(
            "table inet {} {{\n  chain output {{\n    type filter hook output priority 0; policy accept;\n",
            self.table
        );
        for a in addrs {
            let family = if a.is_ipv4() { "ip" } else { "ip6" };
            rules.push_str(&format!(
                "    {family} daddr {} tcp dport {} drop\n",
                a.ip(),
                a.port()
            ));
        }
        rules.push_str("  }\n}\n");
        nft(&["-f", "-"], Some(rules)).await?;
        *self
            .blackhole
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(self.table.clone());
        Ok(format!(
            "nft table inet {} drops packets to {}",
            self.table,
            addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    async fn remove_table(&self) -> Result<bool, ActuatorError> {
        let installed = self
            .blackhole
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let Some(table) = installed else {
            return Ok(false);
        };
        nft(&["delete", "table", "inet", &table], None).await?;
        *self
            .blackhole
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        Ok(true)
    }

    /// Undoes [`fail_target`](Self::fail_target); doing it twice is fine.
    pub async fn restore_target(
        &self,
        mode: DrillMode,
        target: &DrillTarget,
    ) -> Result<String, ActuatorError> {
        match mode {
            DrillMode::Drain => Ok("nothing to undo for a drain".into()),
            DrillMode::Kill => {
                let mut backends = self.backends.lock().await;
                let mut done = Vec::new();
                for b in backends.iter_mut() {
                    if b.running.is_none() && matches(target, &b.args) {
                        b.running = Some(start_backend(&b.args).await?);
                        done.push(format!("{} ({})", b.args.name, b.args.listen));
                    }
                }
                Ok(if done.is_empty() {
                    "nothing to restart".into()
                } else {
                    format!("restarted {}", done.join(", "))
                })
            }
            DrillMode::Blackhole => Ok(if self.remove_table().await? {
                format!("nft table inet {} deleted", self.table)
            } else {
                "no blackhole installed".into()
            }),
        }
    }

    /// Stops every backend and deletes the blackhole table, if any.
    pub async fn shutdown(&self) {
        if let Err(e) = self.remove_table().await {
            eprintln!("drill: {e}");
        }
        let mut backends = self.backends.lock().await;
        for b in backends.iter_mut() {
            if let Some(r) = b.running.take() {
                stop_backend(r).await;
            }
        }
    }
}

impl DrillActuator for LocalBackends {
    fn fail(&self, mode: DrillMode, target: &DrillTarget) -> ActuatorFuture<'_> {
        let target = target.clone();
        Box::pin(async move {
            self.fail_target(mode, &target)
                .await
                .map_err(|e| DrillActuatorError::from(e.to_string()))
        })
    }

    fn restore(&self, mode: DrillMode, target: &DrillTarget) -> ActuatorFuture<'_> {
        let target = target.clone();
        Box::pin(async move {
            self.restore_target(mode, &target)
                .await
                .map_err(|e| DrillActuatorError::from(e.to_string()))
        })
    }
}

impl Drop for LocalBackends {
    fn drop(&mut self) {
        // An exit path that skipped shutdown must not leave packets dropped on the machine.
        let table = self
            .blackhole
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(table) = table {
            let _ = std::process::Command::new("nft")
                .args(["delete", "table", "inet", &table])
                .stderr(std::process::Stdio::null())
                .status();
        }
        for b in self.backends.get_mut().iter_mut() {
            if let Some(r) = b.running.take() {
                let _ = r.stop.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use meridian_test_support::free_port;

    use super::*;

    fn echo(zone: &str, port: u16) -> EchoArgs {
        EchoArgs {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            name: format!("echo-{zone}"),
            cluster: "east".into(),
            region: "us-east".into(),
            zone: zone.into(),
        }
    }

    /// Starts `zone`'s echo backend on a port that was free a moment ago. Tests run in
    /// parallel, so another may take the port in between: then another port, a few times.
    async fn start_free(lb: &LocalBackends, zone: &str) -> u16 {
        let mut last = None;
        for _ in 0..10 {
            let port = free_port();
            match lb.start(echo(zone, port)).await {
                Ok(()) => return port,
                Err(e) => last = Some(e),
            }
        }
        panic!("no port for {zone}: {last:?}");
    }

    fn get(addr: SocketAddr) -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    fn region(r: &str) -> DrillTarget {
        DrillTarget {
            region: Some(r.into()),
            ..DrillTarget::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kill_closes_listener_and_connections_and_restore_reopens() {
        let lb = LocalBackends::new();
        let pa = start_free(&lb, "us-east-a").await;
        let pb = start_free(&lb, "us-east-b").await;
        let a = SocketAddr::from(([127, 0, 0, 1], pa));
        let b = SocketAddr::from(([127, 0, 0, 1], pb));
        assert!(get(a).unwrap().contains(r#""zone":"us-east-a""#));
        // A keep-alive connection open before the kill.
        let mut idle = TcpStream::connect(a).unwrap();
        idle.set_read_timeout(Some(Duration::from_secs(2))).unwrap();

        let zone_a = DrillTarget {
            zone: Some("us-east-a".into()),
            ..DrillTarget::default()
        };
        let msg = lb.fail_target(DrillMode::Kill, &zone_a).await.unwrap();
        assert!(msg.contains("echo-us-east-a"), "{msg}");
        let err = TcpStream::connect_timeout(&a, Duration::from_millis(500)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        // The open connection was closed too (EOF or reset), not left hanging.
        let mut buf = [0u8; 16];
        assert!(matches!(idle.read(&mut buf), Ok(0) | Err(_)));
        assert!(get(b).unwrap().contains("200 OK"), "zone b untouched");

        assert!(
            lb.restore_target(DrillMode::Kill, &zone_a)
                .await
                .unwrap()
                .contains("restarted")
        );
        assert!(get(a).unwrap().contains(r#""zone":"us-east-a""#));
        assert_eq!(
            lb.restore_target(DrillMode::Kill, &zone_a).await.unwrap(),
            "nothing to restart"
        );
        lb.shutdown().await;
        assert!(TcpStream::connect_timeout(&b, Duration::from_millis(500)).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_target_lists_the_backends() {
        let lb = LocalBackends::new();
        let err = lb
            .fail_target(DrillMode::Kill, &region("mars"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("--no-demo"), "{err}");
        start_free(&lb, "us-east-a").await;
        let err = lb
            .fail_target(DrillMode::Kill, &region("mars"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("region=mars") && err.contains("east/us-east/us-east-a"),
            "{err}"
        );
        // An empty target matches nothing rather than everything.
        assert!(
            lb.fail_target(DrillMode::Kill, &DrillTarget::default())
                .await
                .is_err()
        );
        lb.shutdown().await;
    }

    /// Needs nft and root; skipped (with a note) elsewhere.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blackhole_drops_packets_until_restored() {
        if !is_root()
            || std::process::Command::new("nft")
                .arg("--version")
                .output()
                .is_err()
        {
            eprintln!("SKIP: blackhole needs root and nft");
            return;
        }
        let lb = LocalBackends::new();
        let port = start_free(&lb, "us-east-a").await;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let msg = lb
            .fail_target(DrillMode::Blackhole, &region("us-east"))
            .await
            .unwrap();
        assert!(msg.contains(lb.table()), "{msg}");
        let err = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).unwrap_err();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::TimedOut,
            "dropped, not refused"
        );
        lb.restore_target(DrillMode::Blackhole, &region("us-east"))
            .await
            .unwrap();
        assert!(get(addr).unwrap().contains("200 OK"));
        assert_eq!(
            lb.restore_target(DrillMode::Blackhole, &region("us-east"))
                .await
                .unwrap(),
            "no blackhole installed"
        );
        // Dropping with a table installed removes it.
        lb.fail_target(DrillMode::Blackhole, &region("us-east"))
            .await
            .unwrap();
        let table = lb.table().to_string();
        drop(lb);
        let listed = std::process::Command::new("nft")
            .args(["list", "table", "inet", &table])
            .output()
            .unwrap();
        assert!(!listed.status.success(), "table {table} must be gone");
    }
}
