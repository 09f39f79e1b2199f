//! `meridian proxy`: the command line ([`ProxyArgs`]) and [`run`], which checks the flags,
//! starts a [`ProxyHandle`] in its own tokio runtime and feeds it from the snapshot source until
//! SIGTERM or Ctrl-C, then drains ([`ProxyHandle::shutdown`]: listeners close first, requests in
//! flight finish, bounded) and exits.
//!
//! ```text
//! run ─ admin_auth (--admin, --admin-token-file read, --admin-insecure)
//!     ─ source (flags checked, --state-dir created; nothing started yet)
//!     ─ soft RLIMIT_NOFILE raised to the hard limit (logged)
//!     ─ runtimes (--workers): N > 0 worker threads serve connections, one current-thread
//!       runtime each (workers.rs), and a current-thread runtime on this thread runs the rest;
//!       0: one multi-thread runtime for everything
//!     ─ ProxyHandle::start (identity: the CertStore below, for --east-west mTLS and the
//!       meridian_proxy_certificate_expiry_seconds metric)
//!     ─ --snapshot FILE: watch_file                       ─┐
//!     ─ --controller URL: Client (Hello with the bound      ├─ until a signal ─ shutdown
//!       east-west address)                                 ─┘
//!       identity: one Arc<CertStore> trusting --ca-file; the client fills it with a first
//!       certificate (POST /v1/certificate, Bearer <--bootstrap-token-file>, re-read at each
//!       use) and renews it there
//!       ─ follow_controller, or with --state-dir DIR follow_controller_with_state (serves
//!         the kept snapshot at once, keeps every applied one)
//! SIGHUP ─ the access log file is reopened (after logrotate moved it)
//! SIGTERM / Ctrl-C ─ shutdown: stop accepting (sockets closed) ─ in-flight requests finish
//!                    (at most DRAIN_TIMEOUT) ─ exit 0
//! ```
//!
//! The admin listener's credentials ([`admin_auth`]): on a loopback `--admin` none are needed;
//! on any other address (`0.0.0.0` included) `--admin-token-file` is required, or
//! `--admin-insecure` to serve it open anyway (logged as a warning). A token given is always
//! required, on loopback too.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use meridian_distribution::client::BootstrapCredential;
use meridian_distribution::pki::{CertStore, TrustBundle, TrustDomain};
use meridian_distribution::{Client, ClientConfig, ClientError, GatewayRef, Hello};
use meridian_model::locality::Locality;
use meridian_model::path::{EscapedSlashes, PathNormalization};

use crate::admin::AdminAuth;
use crate::controller::{follow_controller, follow_controller_with_state};
use crate::handle::{ProxyConfig, ProxyHandle, StartError};
use crate::limits::{LimitArgs, raise_nofile_limit};
use crate::state_dir::{StateDir, StateDirError};
use crate::watch::watch_file;

/// Why `meridian proxy` could not run (nothing is served when it returns one of these).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Both snapshot sources were given.
    #[error(
        "`--snapshot FILE` and `--controller URL` exclude each other: pick one snapshot source"
    )]
    BothSources,
    /// No snapshot source was given.
    #[error("a snapshot source is required: `--snapshot FILE` (static) or `--controller URL`")]
    NoSource,
    /// `--snapshot` names no file.
    #[error("snapshot file {} does not exist or is not a file", .0.display())]
    NoSnapshotFile(PathBuf),
    /// `--controller` without `--cluster`.
    #[error("`--cluster NAME` is required with `--controller`")]
    NoCluster,
    /// `--state-dir` without `--controller`.
    #[error(
        "`--state-dir DIR` keeps the controller's last snapshot: it needs `--controller URL` \
         (a `--snapshot FILE` is its own state)"
    )]
    StateDirWithoutController,
    /// The state directory cannot be created or read.
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    /// `--controller` without `--ca-file`.
    #[error(
        "`--controller` needs `--ca-file PATH`: the mesh CA bundle (PEM) the controller's \
         certificate is checked against"
    )]
    NoCaFile,
    /// `--controller` without `--bootstrap-token-file`.
    #[error(
        "`--controller` needs `--bootstrap-token-file PATH`: the token (e.g. a projected \
         ServiceAccount token) the proxy gets its certificate with"
    )]
    NoBootstrapToken,
    /// The CA bundle cannot be read.
    #[error("--ca-file {}: {reason}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The east-west address to report cannot be worked out.
    #[error(transparent)]
    Advertise(#[from] AdvertiseError),
    /// The admin listener is asked to serve a non-loopback address with no token.
    #[error(
        "`--admin {addr}` is not a loopback address: give `--admin-token-file PATH` (a file \
         holding the token callers send as `Authorization: Bearer <token>`, e.g. a mounted \
         Secret) or bind `--admin 127.0.0.1:{port}`; `--admin-insecure` serves it without \
         credentials",
        port = .addr.port()
    )]
    AdminWithoutToken {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// The admin token file cannot be read.
    #[error("`--admin-token-file {}` cannot be read: {error}", .path.display())]
    AdminTokenUnreadable {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The admin token file holds nothing but whitespace.
    #[error(
        "`--admin-token-file {}` is empty: it must hold the admin token",
        .0.display()
    )]
    AdminTokenEmpty(PathBuf),
    /// The controller client refuses its settings (e.g. the URL).
    #[error(transparent)]
    Controller(#[from] ClientError),
    /// The tokio runtime cannot be built.
    #[error(transparent)]
    Runtime(#[from] std::io::Error),
    /// The proxy cannot start.
    #[error(transparent)]
    Start(#[from] StartError),
}

/// Why the east-west address to report cannot be worked out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdvertiseError {
    /// The listener is on an unspecified address and no `--advertise-address` says which.
    #[error(
        "`--east-west {bound}` listens on every address: `--advertise-address IP` is needed \
         to tell proxies of other networks where to reach it"
    )]
    Missing {
        /// The listener's address.
        bound: SocketAddr,
    },
    /// `--advertise-address` is not an IP address.
    #[error(
        "`--advertise-address {advertise}` is not an IP address: with `--east-west` on an \
         unspecified address it must be one (other proxies connect to ip:port)"
    )]
    NotAnIp {
        /// What was given.
        advertise: String,
    },
}

/// `meridian proxy` arguments: a snapshot source (`--snapshot FILE` or `--controller URL`) and
/// where the proxy runs.
#[derive(clap::Args, Debug, Clone)]
pub struct ProxyArgs {
    /// Snapshot file (JSON) to serve; watched and hot-reloaded.
    #[arg(long, conflicts_with = "controller")]
    pub snapshot: Option<PathBuf>,
    /// Controller distribution URL (`https://host:port`, mutual TLS 1.3): follow it,
    /// acknowledging every generation; the last good snapshot keeps serving while it is
    /// unreachable.
    #[arg(long, value_name = "URL")]
    pub controller: Option<String>,
    /// The mesh CA bundle (PEM) the controller's certificate must chain to.
    #[arg(long, value_name = "PATH", env = "MERIDIAN_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// File holding the bootstrap token the proxy gets its certificate with (a projected
    /// ServiceAccount token; re-read at each use, the kubelet rotates it).
    #[arg(long, value_name = "PATH", env = "MERIDIAN_BOOTSTRAP_TOKEN_FILE")]
    pub bootstrap_token_file: Option<PathBuf>,
    /// Identity reported to the controller (default: $HOSTNAME, else `proxy-<pid>`).
    #[arg(long)]
    pub proxy_id: Option<String>,
    /// Serve only this Gateway, `NAMESPACE/NAME` (repeatable); default: all of the cluster's.
    #[arg(long = "gateway", value_name = "NAMESPACE/NAME")]
    pub gateways: Vec<GatewayRef>,
    /// Address reported to the controller for Gateway `status.addresses`.
    #[arg(long)]
    pub advertise_address: Option<String>,
    /// Admin listener (healthz, ready, config_dump, metrics). Any address but a loopback one
    /// needs `--admin-token-file` (or `--admin-insecure`).
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// File holding the admin token (surrounding whitespace trimmed; e.g. a mounted Secret):
    /// every admin path but /healthz and /ready then needs `Authorization: Bearer <token>`.
    #[arg(long, value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
    /// Serve the admin listener on a non-loopback `--admin` without a token (anyone who reaches
    /// it reads the configuration and metrics).
    #[arg(long, conflicts_with = "admin_token_file")]
    pub admin_insecure: bool,
    /// Member cluster this proxy runs in.
    #[arg(long, default_value = "")]
    pub cluster: String,
    /// Region this proxy runs in (endpoint preference).
    #[arg(long, default_value = "")]
    pub region: String,
    /// Zone this proxy runs in (endpoint preference).
    #[arg(long, default_value = "")]
    pub zone: String,
    /// Directory where the last snapshot applied from the controller is kept (written
    /// atomically after each one, at most once a second): a proxy restarting while the
    /// controller is unreachable serves it at once (`/ready` says `"source": "disk"`). Refused
    /// on start when corrupt, of another format version or of another `--cluster`. Default:
    /// none (nothing kept). In a pod: an `emptyDir`, e.g. `/var/lib/meridian`.
    #[arg(long, value_name = "DIR", requires = "controller")]
    pub state_dir: Option<PathBuf>,
    /// East-west listener (`ip:port`, mutual TLS with the proxy's mesh identity) where proxies
    /// of other networks reach this network's backends (multi-network clusters); reported to the
    /// controller. Needs `--controller`: the certificate it presents is the one the controller
    /// link bootstraps and renews (handshakes fail until the first one arrives). On an unspecified
    /// address (`0.0.0.0:PORT`) the reported address is `--advertise-address` (an IP) with PORT.
    #[arg(long = "east-west", value_name = "ADDR")]
    pub east_west: Option<SocketAddr>,
    /// Worker threads serving connections: each runs its own single-threaded runtime with its
    /// own `SO_REUSEPORT` socket on every listener and its own upstream connection pool, so a
    /// connection stays on one core. 0: one multi-thread runtime serves everything
    /// (`TOKIO_WORKER_THREADS` threads, default one per core). Default: one per available core.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub workers: Option<u16>,
    /// Merge runs of `/` in request paths (`//admin` is `/admin`) before routing and forwarding.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub merge_slashes: bool,
    /// What `%2F`/`%5C` (and a raw `\`) in a request path mean: `keep` (stay encoded, not a
    /// separator), `reject` (400) or `decode` (a `/` separator).
    #[arg(long, value_name = "keep|reject|decode", default_value_t = EscapedSlashes::Keep)]
    pub escaped_slashes: EscapedSlashes,

    // ── Downstream timeouts and limits (limits.rs; docs/proxy.md "Limits and timeouts") ──
    /// Header, keep-alive idle, request and backend connect timeouts; connection cap.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Forwarding headers (edge.rs).
    #[command(flatten)]
    pub edge: crate::edge::EdgeArgs,
    /// What serves HTTP/1 requests: `own` (one task per connection, our own HTTP/1 codec for the
    /// client side, pingora-core's connector upstream), `lean` (the same driver on pingora-core's
    /// server session) or `framework` (pingora-proxy's per-request machinery, the reference both
    /// are compared with).
    #[arg(long, value_name = "own|lean|framework", value_enum, default_value_t = crate::Http1Path::Own)]
    pub http1_path: crate::Http1Path,

    /// Access log and traces (accesslog.rs, trace.rs).
    #[command(flatten)]
    pub observe: ObserveArgs,
}

/// `meridian proxy`'s access log and trace flags (docs/operations.md).
#[derive(clap::Args, Debug, Clone)]
pub struct ObserveArgs {
    /// Access log: one JSON line per request to `stdout`, to a file (appended, created if
    /// missing, reopened on SIGHUP for log rotation), or `off`. Written off the request path:
    /// when the writer falls behind, lines are dropped and counted
    /// (`meridian_proxy_access_log_dropped_total`), requests never wait.
    #[arg(long, value_name = "PATH|stdout|off", default_value = "off")]
    pub access_log: crate::AccessLogTarget,
    /// Share of requests that get an access log line, from 0 (none) to 1 (all).
    #[arg(long, value_name = "RATE", default_value_t = 1.0, value_parser = crate::accesslog::parse_sample)]
    pub access_log_sample: f64,
    /// Log the query string with the path (off by default: queries often carry tokens).
    #[arg(long)]
    pub access_log_query: bool,
    /// Export a span per request and per upstream try with OpenTelemetry OTLP over
    /// HTTP/protobuf to this collector (`http://host:4318`; `/v1/traces` is added to a URL
    /// without a path). Batched on a thread of its own with a bounded queue: a slow or absent
    /// collector costs spans, never request time. Off by default. With it or the access log
    /// on, W3C `traceparent`/`tracestate` are propagated upstream.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

impl Default for ObserveArgs {
    /// Everything off, as without the flags.
    fn default() -> Self {
        ObserveArgs {
            access_log: crate::AccessLogTarget::Off,
            access_log_sample: 1.0,
            access_log_query: false,
            otlp_endpoint: None,
        }
    }
}

impl ObserveArgs {
    /// The access log settings of these flags.
    pub fn access_log(&self) -> crate::AccessLogConfig {
        crate::AccessLogConfig {
            target: self.access_log.clone(),
            sample: self.access_log_sample,
            query: self.access_log_query,
        }
    }

    /// The trace settings of these flags.
    pub fn tracing(&self) -> crate::TraceConfig {
        crate::TraceConfig {
            otlp_endpoint: self.otlp_endpoint.clone(),
        }
    }
}

/// Runs `meridian proxy` until SIGTERM or Ctrl-C: builds its own tokio runtime, then serves the snapshot
/// file (reloading it when it changes) or follows the controller.
pub fn run(args: ProxyArgs) -> Result<(), RunError> {
    let admin_auth = admin_auth(&args)?;
    let source = source(&args)?;
    // Every connection costs a descriptor: the connection cap, not EMFILE, should bound a flood.
    raise_nofile_limit();
    let workers = workers(args.workers);
    // With workers, this runtime only runs control work (applies, the controller link, health
    // checks, the admin listener): one thread is plenty, and it stays off the workers' cores
    // as much as the scheduler allows.
    let runtime = match workers {
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("meridian-proxy")
            .build()?,
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("meridian-proxy")
            .build()?,
    };
    tracing::info!(workers, "starting");
    runtime.block_on(async move {
        let handle = ProxyHandle::start(ProxyConfig {
            admin: Some(args.admin),
            admin_auth,
            locality: Locality {
                cluster: args.cluster.clone(),
                region: args.region.clone(),
                zone: args.zone.clone(),
            },
            east_west: args.east_west,
            // One identity for both links: the controller client bootstraps and renews the
            // certificate in this store, and the east-west hop presents whatever it holds now.
            // A `--snapshot` proxy has none, so `--east-west` refuses to start there
            // (StartError::NoIdentity).
            identity: match &source {
                Source::Controller { identity, .. } => Some(identity.clone()),
                Source::File(_) => None,
            },
            east_west_plaintext: false,
            paths: PathNormalization {
                merge_slashes: args.merge_slashes,
                escaped_slashes: args.escaped_slashes,
            },
            limits: args.limits.limits(),
            edge: args.edge.config(),
            http1_path: args.http1_path,
            workers,
            access_log: args.observe.access_log(),
            tracing: args.observe.tracing(),
        })
        .await?;
        let client = match &source {
            Source::File(_) => None,
            Source::Controller {
                url,
                identity,
                bootstrap,
                hello,
                ..
            } => Some(controller_client(
                &handle,
                url,
                identity,
                bootstrap,
                hello,
                args.advertise_address.as_deref(),
            )?),
        };
        let serve = async {
            match (source, client) {
                (Source::Controller { state: None, .. }, Some(client)) => {
                    let _ = follow_controller(&handle, &client).await;
                }
                (
                    Source::Controller {
                        state: Some(state), ..
                    },
                    Some(client),
                ) => {
                    let _ = follow_controller_with_state(&handle, &client, &state).await;
                }
                (Source::File(path), _) => watch_file(&handle, path).await,
                (Source::Controller { .. }, None) => {}
            }
        };
        let reopen = async {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                tracing::warn!("cannot wait for SIGHUP: the access log file is never reopened");
                return std::future::pending::<()>().await;
            };
            while hup.recv().await.is_some() {
                handle.reopen_access_log();
            }
        };
        tokio::select! {
            () = serve => {}
            () = reopen => {}
            signal = stop_signal() => {
                tracing::info!(signal, "shutting down: listeners close, requests in flight finish");
            }
        }
        handle.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    })
}

/// The number of worker threads for `--workers`: as given, else one per available core.
fn workers(flag: Option<u16>) -> usize {
    match flag {
        Some(n) => usize::from(n),
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM (what Kubernetes and systemd send to stop a process) and
/// names it. Both mean the same graceful stop: without a SIGTERM handler the process would die at
/// once and cut every request in flight. A handler that cannot be installed is logged and leaves
/// the other signal in charge.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot wait for SIGTERM; Ctrl-C still stops");
                std::future::pending::<()>().await;
            }
        }
    };
    let int = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot wait for Ctrl-C; SIGTERM still stops");
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = term => "SIGTERM",
        () = int => "SIGINT",
    }
}

/// The controller client of a started proxy: its Hello reports the east-west address actually
/// bound (`--east-west` may ask for port 0).
fn controller_client(
    handle: &ProxyHandle,
    url: &str,
    identity: &Arc<CertStore>,
    bootstrap: &BootstrapCredential,
    hello: &Hello,
    advertise: Option<&str>,
) -> Result<Client, RunError> {
    let mut hello = hello.clone();
    hello.east_west = handle
        .east_west_addr()
        .map(|a| east_west_advertised(a, advertise))
        .transpose()?;
    Ok(Client::new(ClientConfig::new(
        url.to_string(),
        hello,
        identity.clone(),
        Some(bootstrap.clone()),
    ))?)
}

enum Source {
    File(PathBuf),
    /// The client is built once the proxy runs (the Hello reports its east-west address).
    Controller {
        url: String,
        /// The proxy's certificate (none until the client bootstraps) and trusted CAs.
        identity: Arc<CertStore>,
        bootstrap: BootstrapCredential,
        hello: Box<Hello>,
        /// `--state-dir`, opened.
        state: Option<StateDir>,
    },
}

/// The east-west address to report to the controller for a listener bound to `bound`: `bound`
/// itself, or on an unspecified IP (`0.0.0.0`, `::`) the advertised IP with `bound`'s port.
pub fn east_west_advertised(
    bound: SocketAddr,
    advertise: Option<&str>,
) -> Result<String, AdvertiseError> {
    if !bound.ip().is_unspecified() {
        return Ok(bound.to_string());
    }
    let Some(a) = advertise.filter(|a| !a.is_empty()) else {
        return Err(AdvertiseError::Missing { bound });
    };
    let ip: IpAddr = a.parse().map_err(|_| AdvertiseError::NotAnIp {
        advertise: a.to_string(),
    })?;
    Ok(SocketAddr::new(ip, bound.port()).to_string())
}

/// The admin listener's credentials, from `--admin`, `--admin-token-file` and
/// `--admin-insecure`: a token when a file is given (wherever the listener is), none on a
/// loopback address, and an error for a non-loopback one without either flag.
pub(crate) fn admin_auth(args: &ProxyArgs) -> Result<AdminAuth, RunError> {
    if let Some(path) = &args.admin_token_file {
        let text =
            std::fs::read_to_string(path).map_err(|error| RunError::AdminTokenUnreadable {
                path: path.clone(),
                error,
            })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(RunError::AdminTokenEmpty(path.clone()));
        }
        return Ok(AdminAuth::Token(token.to_string()));
    }
    if args.admin.ip().is_loopback() {
        return Ok(AdminAuth::None);
    }
    if !args.admin_insecure {
        return Err(RunError::AdminWithoutToken { addr: args.admin });
    }
    tracing::warn!(
        admin = %args.admin,
        "--admin-insecure: the admin listener serves /config_dump and /metrics WITHOUT \
         credentials on a non-loopback address; anyone who reaches it reads this proxy's \
         configuration. Give --admin-token-file instead outside local experiments"
    );
    Ok(AdminAuth::None)
}

/// Checks the flags and builds the snapshot source.
fn source(args: &ProxyArgs) -> Result<Source, RunError> {
    match (&args.snapshot, &args.controller) {
        (Some(_), Some(_)) => Err(RunError::BothSources),
        (None, None) => Err(RunError::NoSource),
        (Some(path), None) => {
            if args.state_dir.is_some() {
                return Err(RunError::StateDirWithoutController);
            }
            if !path.is_file() {
                return Err(RunError::NoSnapshotFile(path.clone()));
            }
            Ok(Source::File(path.clone()))
        }
        (None, Some(url)) => controller_source(args, url),
    }
}

/// Checks the `--controller` flags (cluster, token, east-west address, URL) before anything
/// starts.
fn controller_source(args: &ProxyArgs, url: &str) -> Result<Source, RunError> {
    if args.cluster.is_empty() {
        return Err(RunError::NoCluster);
    }
    let Some(ca_file) = &args.ca_file else {
        return Err(RunError::NoCaFile);
    };
    let Some(token_file) = &args.bootstrap_token_file else {
        return Err(RunError::NoBootstrapToken);
    };
    let ca_error = |reason: String| RunError::CaFile {
        path: ca_file.clone(),
        reason,
    };
    let pem = std::fs::read(ca_file).map_err(|e| ca_error(e.to_string()))?;
    let bundle = TrustBundle::from_pem(&pem, &TrustDomain::default())
        .map_err(|e| ca_error(e.to_string()))?;
    let identity = Arc::new(CertStore::new(bundle));
    let bootstrap = BootstrapCredential::File(token_file.clone());
    if let Some(ew) = args.east_west {
        // Fails now rather than after the proxy started.
        east_west_advertised(ew, args.advertise_address.as_deref())?;
    }
    let hello = Hello {
        proxy_id: args.proxy_id.clone().unwrap_or_else(default_proxy_id),
        cluster: args.cluster.clone(),
        region: args.region.clone(),
        zone: args.zone.clone(),
        gateways: (!args.gateways.is_empty()).then(|| args.gateways.clone()),
        address: args.advertise_address.clone(),
        east_west: None,
    };
    // Checks the URL before anything starts; the client used is built with the bound
    // east-west address.
    Client::new(ClientConfig::new(
        url.to_string(),
        hello.clone(),
        identity.clone(),
        Some(bootstrap.clone()),
    ))?;
    // Last: creating the directory is the only check with a side effect.
    let state = args
        .state_dir
        .as_ref()
        .map(|dir| StateDir::open(dir, &args.cluster))
        .transpose()?;
    Ok(Source::Controller {
        url: url.to_string(),
        identity,
        bootstrap,
        hello: Box::new(hello),
        state,
    })
}

/// `$HOSTNAME` (the pod name in Kubernetes), else `proxy-<pid>`.
fn default_proxy_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("proxy-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: super::ProxyArgs,
    }

    #[test]
    fn the_command_line_takes_one_snapshot_source_and_gateway_refs() {
        let err = Cli::try_parse_from(["p", "--snapshot", "s.json", "--controller", "http://c"])
            .err()
            .unwrap();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        let cli = Cli::try_parse_from([
            "p",
            "--controller",
            "http://c:1",
            "--cluster",
            "east",
            "--ca-file",
            "/etc/meridian/ca.crt",
            "--bootstrap-token-file",
            "/var/run/secrets/meridian/token",
            "--gateway",
            "ns/a",
            "--gateway",
            "ns/b",
            "--advertise-address",
            "203.0.113.7",
        ])
        .unwrap();
        let names: Vec<String> = cli.args.gateways.iter().map(|g| g.to_string()).collect();
        assert_eq!(names, vec!["ns/a", "ns/b"]);
        assert_eq!(
            cli.args.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/meridian/ca.crt"))
        );
        let err = Cli::try_parse_from(["p", "--gateway", "no-namespace"])
            .err()
            .unwrap();
        assert!(err.to_string().contains("NAMESPACE/NAME"), "{err}");
    }

    #[test]
    fn the_limit_flags_default_to_the_proxy_defaults_and_parse_durations() {
        use std::time::Duration;

        use crate::limits::Limits;

        let cli = Cli::try_parse_from(["p", "--snapshot", "s.json"]).unwrap();
        assert_eq!(cli.args.limits.limits(), Limits::default());
        assert_eq!(
            super::LimitArgs::default().limits(),
            Limits::default(),
            "Default for LimitArgs and the clap defaults agree"
        );
        let cli = Cli::try_parse_from([
            "p",
            "--header-timeout",
            "500ms",
            "--idle-timeout",
            "2m",
            "--request-timeout",
            "30s",
            "--backend-connect-timeout",
            "1s",
            "--max-connections",
            "200",
        ])
        .unwrap();
        assert_eq!(
            cli.args.limits.limits(),
            Limits {
                header_timeout: Duration::from_millis(500),
                idle_timeout: Duration::from_secs(120),
                request_timeout: Some(Duration::from_secs(30)),
                connect_timeout: Duration::from_secs(1),
                max_connections: 200,
            }
        );
        for bad in [
            ["--header-timeout", "10"],
            ["--idle-timeout", "0s"],
            ["--max-connections", "0"],
            ["--request-timeout", "soon"],
        ] {
            let err = Cli::try_parse_from(["p", bad[0], bad[1]]).err().unwrap();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn workers_default_to_one_per_core_and_zero_keeps_the_multi_thread_runtime() {
        let cli = Cli::try_parse_from(["p", "--snapshot", "s.json"]).unwrap();
        assert_eq!(cli.args.workers, None);
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(super::workers(cli.args.workers), cores);
        for (flag, n) in [("0", 0), ("1", 1), ("16", 16)] {
            let cli = Cli::try_parse_from(["p", "--workers", flag]).unwrap();
            assert_eq!(super::workers(cli.args.workers), n);
        }
        for bad in ["5000", "many"] {
            let err = Cli::try_parse_from(["p", "--workers", bad]).err().unwrap();
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
        }
    }

    #[test]
    fn the_state_dir_goes_with_the_controller_only() {
        let err = Cli::try_parse_from(["p", "--state-dir", "/tmp/x"])
            .err()
            .unwrap();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        // clap lets it pass next to `--snapshot` (which excludes `--controller`): `run` says no
        // before it looks at anything else.
        let cli =
            Cli::try_parse_from(["p", "--snapshot", "s.json", "--state-dir", "/tmp/x"]).unwrap();
        let err = super::source(&cli.args).err().unwrap();
        assert!(
            matches!(err, super::RunError::StateDirWithoutController),
            "{err}"
        );
        let cli = Cli::try_parse_from([
            "p",
            "--controller",
            "http://c:1",
            "--state-dir",
            "/var/lib/meridian",
        ])
        .unwrap();
        assert_eq!(
            cli.args.state_dir.as_deref(),
            Some(std::path::Path::new("/var/lib/meridian"))
        );
        let cli = Cli::try_parse_from(["p", "--controller", "http://c:1"]).unwrap();
        assert_eq!(cli.args.state_dir, None, "nothing is kept by default");
    }

    #[test]
    fn the_east_west_address_reported_is_reachable() {
        let cli =
            Cli::try_parse_from(["p", "--snapshot", "s.json", "--east-west", "0.0.0.0:15443"])
                .unwrap();
        let bound = cli.args.east_west.unwrap();
        assert_eq!(
            super::east_west_advertised(bound, Some("203.0.113.7")).unwrap(),
            "203.0.113.7:15443"
        );
        let err = super::east_west_advertised(bound, None).unwrap_err();
        assert!(err.to_string().contains("--advertise-address"), "{err}");
        let err = super::east_west_advertised(bound, Some("gw.example.com")).unwrap_err();
        assert!(err.to_string().contains("not an IP address"), "{err}");
        let specific = "10.1.2.3:15443".parse().unwrap();
        assert_eq!(
            super::east_west_advertised(specific, Some("203.0.113.7")).unwrap(),
            "10.1.2.3:15443"
        );
        assert!(Cli::try_parse_from(["p", "--east-west", "nope"]).is_err());
    }

    /// A file under the system temp dir holding `text`, removed on drop.
    struct TokenFile(std::path::PathBuf);

    impl TokenFile {
        fn new(text: &str) -> TokenFile {
            let path = std::env::temp_dir().join(format!(
                "meridian-admin-token-{}-{}",
                std::process::id(),
                rand::random::<u64>()
            ));
            std::fs::write(&path, text).unwrap();
            TokenFile(path)
        }
    }

    impl Drop for TokenFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn admin_auth(flags: &[&str]) -> Result<super::AdminAuth, super::RunError> {
        let mut argv = vec!["p", "--snapshot", "s.json"];
        argv.extend_from_slice(flags);
        super::admin_auth(&Cli::try_parse_from(argv).unwrap().args)
    }

    #[test]
    fn a_non_loopback_admin_listener_needs_a_token_or_an_explicit_insecure() {
        use super::{AdminAuth, RunError};

        // Loopback (all of 127.0.0.0/8 and ::1) needs nothing; the default is loopback.
        assert_eq!(admin_auth(&[]).unwrap(), AdminAuth::None);
        assert_eq!(
            admin_auth(&["--admin", "127.0.0.2:15000"]).unwrap(),
            AdminAuth::None
        );
        assert_eq!(
            admin_auth(&["--admin", "[::1]:15000"]).unwrap(),
            AdminAuth::None
        );

        for addr in ["0.0.0.0:15000", "10.1.2.3:15000", "[::]:15000"] {
            let err = admin_auth(&["--admin", addr]).unwrap_err();
            assert!(
                matches!(err, RunError::AdminWithoutToken { addr: a } if a.to_string() == addr),
                "{err}"
            );
            let text = err.to_string();
            assert!(text.contains("--admin-token-file"), "{text}");
            assert!(text.contains("--admin 127.0.0.1:15000"), "{text}");
            assert_eq!(
                admin_auth(&["--admin", addr, "--admin-insecure"]).unwrap(),
                AdminAuth::None
            );
        }

        // The file's token, trimmed (a Secret written with a trailing newline), is required
        // wherever the listener is.
        let file = TokenFile::new("  s3cret\n");
        let path = file.0.to_str().unwrap();
        for addr in ["0.0.0.0:15000", "127.0.0.1:15000"] {
            assert_eq!(
                admin_auth(&["--admin", addr, "--admin-token-file", path]).unwrap(),
                AdminAuth::Token("s3cret".to_string())
            );
        }
        let err = Cli::try_parse_from(["p", "--admin-token-file", path, "--admin-insecure"])
            .err()
            .unwrap();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn an_empty_or_missing_admin_token_file_is_refused() {
        use super::RunError;

        let blank = TokenFile::new(" \n\t\n");
        let path = blank.0.to_str().unwrap();
        let err =
            admin_auth(&["--admin", "0.0.0.0:15000", "--admin-token-file", path]).unwrap_err();
        assert!(
            matches!(&err, RunError::AdminTokenEmpty(p) if p == &blank.0),
            "{err}"
        );
        assert!(err.to_string().contains("is empty"), "{err}");

        let gone = blank.0.with_extension("missing");
        let err = admin_auth(&["--admin-token-file", gone.to_str().unwrap()]).unwrap_err();
        assert!(
            matches!(&err, RunError::AdminTokenUnreadable { path, .. } if path == &gone),
            "{err}"
        );
    }
}
