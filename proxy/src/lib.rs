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
//! 4. `watch_file` polls a snapshot file and applies each new version (`meridian proxy`).
//!
//! Limits today: mirror copies carry no body; retries (on a listed status or an upstream error)
//! need the request body to fit pingora's retry buffer; health checking beyond passive
//! connect-failure ejection comes with the failover feature; WebSocket upgrades pass through, but
//! pingora 0.9.1 can tear an upgraded tunnel down right after the `101` when the backend answers
//! very fast (cloudflare/pingora#946).

mod admin;
pub mod endpoints;
mod gateway;
mod handle;
mod headers;
mod listeners;
mod metrics;
mod mirror;
mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use meridian_model::locality::Locality;
use meridian_model::{Snapshot, SnapshotError};

pub use handle::{ApplyError, ProxyConfig, ProxyHandle};

/// `meridian proxy` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct ProxyArgs {
    /// Snapshot file (JSON) to serve; watched and hot-reloaded.
    #[arg(long)]
    pub snapshot: Option<PathBuf>,
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
}

/// Runs `meridian proxy` until Ctrl-C: builds its own tokio runtime, serves the snapshot file and
/// reloads it when it changes.
pub fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let Some(path) = args.snapshot.clone() else {
        anyhow::bail!(
            "`--snapshot FILE` is required: the proxy needs a snapshot to serve \
             (a `--controller` source comes with a later release)"
        );
    };
    if !path.is_file() {
        anyhow::bail!(
            "snapshot file {} does not exist or is not a file",
            path.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("meridian-proxy")
        .build()?;
    runtime.block_on(async move {
        let handle = ProxyHandle::start(ProxyConfig {
            admin: Some(args.admin),
            locality: Locality {
                cluster: args.cluster,
                region: args.region,
                zone: args.zone,
            },
        })
        .await?;
        tokio::select! {
            () = watch_file(&handle, path) => {}
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
