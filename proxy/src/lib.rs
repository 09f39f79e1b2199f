//! Meridian's data plane: a pingora proxy serving HTTPRoute semantics from a snapshot.
//!
//! ```text
//!                     ┌──────────────── ProxyHandle ────────────────┐
//! snapshot ─ apply ──►│ Router::compile ─ parse certs ─ bind sockets │── ArcSwap<Served>
//! (file watcher,      │   (all or nothing; refusal keeps the old one)│        │
//!  controller later)  └──────────────────────────────────────────────┘        │ load() per
//!                                                                             │ request/handshake
//! client ─► accept loop per socket (listeners.rs) ─ TLS by SNI ─► pingora HttpProxy<Gateway>
//!             gateway.rs: route ─ filters ─ weighted backend ─ endpoint (endpoints.rs)
//!                        ─ upstream (pooled, h1 or h2c) ─ response filters ─ metrics
//! admin.rs: /healthz /ready /config_dump /metrics
//! ```
//!
//! Flows:
//! 1. `ProxyHandle::start` builds one `HttpProxy<Gateway>` and the admin listener.
//! 2. `ProxyHandle::apply(snapshot)` compiles it, binds the sockets it adds, swaps the router,
//!    closes the sockets it drops (connections in flight finish).
//! 3. Each request takes the router once, clones its matched rule into its context and never
//!    looks at the router again, so swaps are invisible to requests in flight.
//! 4. `watch_file` polls a snapshot file and applies each new version (`meridian proxy
//!    --snapshot FILE`), or `follow_controller` (controller.rs) applies what the controller streams
//!    and acknowledges each generation (`meridian proxy --controller URL`, protocol in
//!    `meridian-distribution`). In both modes the last good snapshot keeps serving whatever
//!    happens to its source.
//!
//! Endpoint health: connect failures eject at once (endpoints.rs) and an active health checker
//! (health.rs, TCP by default) probes every endpoint, re-admitting ejected ones.
//!
//! Failover drills: the snapshot's `drains` (drain.rs) make the endpoints they match look failed
//! to the Gateways and backends they scope, without touching health state; lifting them brings
//! the endpoints back through the failback hysteresis and slow start. Every finished request is
//! counted per Gateway (traffic.rs: region that answered, failure kind, latency), reported to the
//! controller ([`ProxyHandle::traffic`]) and exported on `/metrics`. Gateways with
//! `served_by_header` get `x-meridian-served-by: <cluster>/<region>/<zone>` on endpoint responses.
//!
//! Multi-network clusters: a backend endpoint marked `east_west` is a remote proxy's east-west
//! listener; requests to it carry `x-meridian-backend: <backend>` and the remote proxy serves them
//! from its own endpoints (`Snapshot.east_west`) on its east-west listener
//! ([`ProxyConfig::east_west`], `--east-west ADDR`), adding `x-meridian-served-by`. Both ends live
//! in gateway.rs; health is kept per (remote proxy, backend) (endpoints.rs). Plain HTTP between
//! proxies: there is no mTLS on the east-west hop yet.
//!
//! Limits today: mirror copies carry no body; retries (on a listed status or an upstream error)
//! need the request body to fit pingora's retry buffer; WebSocket upgrades pass through, but
//! pingora 0.9.1 can tear an upgraded tunnel down right after the `101` when the backend answers
//! very fast (cloudflare/pingora#946).

mod admin;
pub mod budget;
mod buffered;
mod controller;
pub mod drain;
pub mod endpoints;
mod gateway;
mod handle;
mod headers;
mod health;
mod listeners;
mod metrics;
mod mirror;
mod state;
mod traffic;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use meridian_model::locality::Locality;
use meridian_model::{Snapshot, SnapshotError};

pub use controller::follow_controller;
pub use gateway::{BACKEND_HEADER, SERVED_BY_HEADER};
pub use handle::{ApplyError, ProxyConfig, ProxyHandle};
use meridian_distribution::{Client, ClientConfig, GatewayRef, Hello};

/// `meridian proxy` arguments: a snapshot source (`--snapshot FILE` or `--controller URL`) and
/// where the proxy runs.
#[derive(clap::Args, Debug, Clone)]
pub struct ProxyArgs {
    /// Snapshot file (JSON) to serve; watched and hot-reloaded.
    #[arg(long, conflicts_with = "controller")]
    pub snapshot: Option<PathBuf>,
    /// Controller distribution URL (`http://host:port`): follow it, acknowledging every
    /// generation; the last good snapshot keeps serving while it is unreachable.
    #[arg(long, value_name = "URL")]
    pub controller: Option<String>,
    /// Bearer token for the controller.
    #[arg(long, env = "MERIDIAN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Talk to the controller without a token (local runs; the controller must allow it too).
    #[arg(long)]
    pub insecure: bool,
    /// Identity reported to the controller (default: $HOSTNAME, else `proxy-<pid>`).
    #[arg(long)]
    pub proxy_id: Option<String>,
    /// Serve only this Gateway, `NAMESPACE/NAME` (repeatable); default: all of the cluster's.
    #[arg(long = "gateway", value_name = "NAMESPACE/NAME")]
    pub gateways: Vec<GatewayRef>,
    /// Address reported to the controller for Gateway `status.addresses`.
    #[arg(long)]
    pub advertise_address: Option<String>,
    /// Admin listener (healthz, ready, config_dump, metrics).
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// Member cluster this proxy runs in.
    #[arg(long, default_value = "")]
    pub cluster: String,
    /// Region this proxy runs in (endpoint preference).
    #[arg(long, default_value = "")]
    pub region: String,
    /// Zone this proxy runs in (endpoint preference).
    #[arg(long, default_value = "")]
    pub zone: String,
    /// East-west listener (`ip:port`, plain HTTP) where proxies of other networks reach this
    /// network's backends (multi-network clusters); reported to the controller. On an unspecified
    /// address (`0.0.0.0:PORT`) the reported address is `--advertise-address` (an IP) with PORT.
    #[arg(long = "east-west", value_name = "ADDR")]
    pub east_west: Option<SocketAddr>,
}

/// Runs `meridian proxy` until Ctrl-C: builds its own tokio runtime, then serves the snapshot
/// file (reloading it when it changes) or follows the controller.
pub fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let source = source(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("meridian-proxy")
        .build()?;
    runtime.block_on(async move {
        let handle = ProxyHandle::start(ProxyConfig {
            admin: Some(args.admin),
            locality: Locality {
                cluster: args.cluster.clone(),
                region: args.region.clone(),
                zone: args.zone.clone(),
            },
            east_west: args.east_west,
        })
        .await?;
        let client = match &source {
            Source::File(_) => None,
            Source::Controller { url, token, hello } => {
                let mut hello = Hello::clone(hello);
                // The bound address: `--east-west` may ask for port 0.
                hello.east_west = handle
                    .east_west_addr()
                    .map(|a| east_west_advertised(a, args.advertise_address.as_deref()))
                    .transpose()?;
                Some(Client::new(ClientConfig::new(
                    url.clone(),
                    token.clone(),
                    hello,
                ))?)
            }
        };
        let serve = async {
            match (source, client) {
                (Source::Controller { .. }, Some(client)) => {
                    let _ = follow_controller(&handle, &client).await;
                }
                (Source::File(path), _) => watch_file(&handle, path).await,
                (Source::Controller { .. }, None) => {}
            }
        };
        tokio::select! {
            () = serve => {}
            signal = tokio::signal::ctrl_c() => {
                if let Err(e) = signal {
                    tracing::error!(error = %e, "cannot wait for Ctrl-C; shutting down");
                }
                tracing::info!("shutting down");
            }
        }
        handle.shutdown().await;
        anyhow::Ok(())
    })
}

enum Source {
    File(PathBuf),
    /// The client is built once the proxy runs (the Hello reports its east-west address).
    Controller {
        url: String,
        token: Option<String>,
        hello: Box<Hello>,
    },
}

/// The east-west address to report to the controller for a listener bound to `bound`: `bound`
/// itself, or on an unspecified IP (`0.0.0.0`, `::`) the advertised IP with `bound`'s port.
pub fn east_west_advertised(bound: SocketAddr, advertise: Option<&str>) -> anyhow::Result<String> {
    if !bound.ip().is_unspecified() {
        return Ok(bound.to_string());
    }
    let Some(a) = advertise.filter(|a| !a.is_empty()) else {
        anyhow::bail!(
            "`--east-west {bound}` listens on every address: `--advertise-address IP` is needed \
             to tell proxies of other networks where to reach it"
        );
    };
    let ip: IpAddr = a.parse().map_err(|_| {
        anyhow::anyhow!(
            "`--advertise-address {a}` is not an IP address: with `--east-west` on an \
             unspecified address it must be one (other proxies connect to ip:port)"
        )
    })?;
    Ok(SocketAddr::new(ip, bound.port()).to_string())
}

/// Checks the flags and builds the snapshot source.
fn source(args: &ProxyArgs) -> anyhow::Result<Source> {
    match (&args.snapshot, &args.controller) {
        (Some(_), Some(_)) => anyhow::bail!(
            "`--snapshot FILE` and `--controller URL` exclude each other: pick one snapshot source"
        ),
        (None, None) => anyhow::bail!(
            "a snapshot source is required: `--snapshot FILE` (static) or `--controller URL`"
        ),
        (Some(path), None) => {
            if !path.is_file() {
                anyhow::bail!(
                    "snapshot file {} does not exist or is not a file",
                    path.display()
                );
            }
            Ok(Source::File(path.clone()))
        }
        (None, Some(url)) => {
            if args.cluster.is_empty() {
                anyhow::bail!("`--cluster NAME` is required with `--controller`");
            }
            let token = args.token.clone().filter(|t| !t.is_empty());
            if token.is_none() && !args.insecure {
                anyhow::bail!(
                    "`--controller` needs a token (`--token` or MERIDIAN_TOKEN); \
                     `--insecure` connects without one (local runs only)"
                );
            }
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
            Client::new(ClientConfig::new(url.clone(), token.clone(), hello.clone()))?;
            Ok(Source::Controller {
                url: url.clone(),
                token,
                hello: Box::new(hello),
            })
        }
    }
}

/// `$HOSTNAME` (the pod name in Kubernetes), else `proxy-<pid>`.
fn default_proxy_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("proxy-{}", std::process::id()))
}

/// How often [`watch_file`] looks at the file.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(300);
/// How often a snapshot refused because a socket could not be bound is tried again.
const BIND_RETRY: Duration = Duration::from_secs(5);

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
                                    Ok(_) => applied_text = Some(text),
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
            "--token",
            "t",
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
        assert_eq!(cli.args.token.as_deref(), Some("t"));
        let err = Cli::try_parse_from(["p", "--gateway", "no-namespace"])
            .err()
            .unwrap();
        assert!(err.to_string().contains("NAMESPACE/NAME"), "{err}");
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
}
