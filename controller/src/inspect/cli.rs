//! `meridian status` and `meridian explain` (also `kubectl meridian …`): fetch the controller's
//! `/v1/` JSON and render it.
//!
//! ```text
//! where is the controller?  --controller URL [--token-file F]    (or MERIDIAN_CONTROLLER /
//!                           │                                      MERIDIAN_TOKEN_FILE)
//!                           └ else DIR/admin.json ({url, token}) that `meridian up` writes,
//!                             DIR = --state-dir, default .meridian (as `meridian up`'s)
//! GET URL/v1/status | /v1/explain?gateway=…  (Authorization: Bearer <token>, 10 s deadline)
//!   ─► -o json: the controller's JSON as it is (stable field names, docs/operations.md)
//!   ─► table:   one section per part (clusters, proxies, Gateways, backends) / per cluster
//! --watch: again every --interval (1 s … 60 s) until Ctrl-C (or --count refreshes)
//! ```

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use meridian_model::GatewayRef;
use meridian_model::explain::{EndpointState, Explanation, LocalityView, OrderSource};
use serde::{Deserialize, Serialize};

use super::{ExplainView, StatusView};

/// The file in `meridian up`'s state directory that says where its controller's admin listener
/// is and which token it wants.
pub const ADMIN_FILE: &str = "admin.json";
/// Deadline of one request to the controller.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read.
pub const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// Where a controller's admin listener is (the content of [`ADMIN_FILE`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminEndpoint {
    /// `http://IP:PORT`.
    pub url: String,
    /// Bearer token of `/v1/`, if the listener wants one.
    #[serde(default)]
    pub token: Option<String>,
}

impl AdminEndpoint {
    /// Writes `dir/admin.json`, readable by its owner only (it holds the token).
    pub fn write(&self, dir: &Path) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = dir.join(ADMIN_FILE);
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        // Replace rather than truncate: the mode applies to a new file only.
        let _ = std::fs::remove_file(&path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(text.as_bytes())?;
        Ok(path)
    }
}

/// How to reach the controller.
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerConn {
    /// The controller's admin listener, e.g. http://127.0.0.1:9090 (`meridian controller
    /// --metrics`). Default: what `meridian up` wrote to STATE_DIR/admin.json.
    #[arg(long, value_name = "URL", env = "MERIDIAN_CONTROLLER")]
    pub controller: Option<String>,
    /// File holding the admin token (`meridian controller --admin-token-file`).
    #[arg(long, value_name = "FILE", env = "MERIDIAN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// `meridian up`'s state directory, read when --controller is not given.
    #[arg(
        long,
        value_name = "DIR",
        default_value = ".meridian",
        env = "MERIDIAN_STATE_DIR"
    )]
    pub state_dir: PathBuf,
}

/// Output format.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    /// Tables for people.
    #[default]
    Table,
    /// The controller's JSON (stable field names; one document per refresh with --watch).
    Json,
}

/// `meridian status`.
#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// Where the controller is.
    #[command(flatten)]
    pub conn: ControllerConn,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Refresh every --interval until Ctrl-C.
    #[arg(short, long)]
    pub watch: bool,
    /// Time between refreshes with --watch (1s to 60s).
    #[arg(long, default_value = "2s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Stop after this many refreshes with --watch.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

/// `meridian explain`.
#[derive(clap::Args, Debug, Clone)]
pub struct ExplainArgs {
    /// Where the controller is.
    #[command(flatten)]
    pub conn: ControllerConn,
    /// The Gateway, as NAMESPACE/NAME.
    #[arg(long, value_name = "NS/NAME")]
    pub gateway: GatewayRef,
    /// The member cluster (its kubeconfig context name) whose Gateway to explain; default:
    /// every cluster serving it.
    #[arg(long, value_name = "CLUSTER")]
    pub context: Option<String>,
    /// Host header.
    #[arg(long, default_value = "")]
    pub host: String,
    /// Path, optionally with ?query.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Method.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// A request header as NAME=VALUE; repeatable.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// The Gateway's listener port (default: its only port, or 80).
    #[arg(long)]
    pub port: Option<u16>,
    /// What if this cluster, region or zone fails?
    #[arg(long, value_name = "REGION|ZONE|CLUSTER")]
    pub fail: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = crate::args::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(60) {
        return Err(format!("{s}: between 1s and 60s"));
    }
    Ok(d)
}

/// `NAME=VALUE`, with a valid header name and value.
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=VALUE, e.g. --header x-canary=yes"))?;
    if name.is_empty() || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!("{name:?} is not a valid HTTP header name"));
    }
    if http::HeaderValue::from_str(value).is_err() {
        return Err(format!(
            "the value of {name} is not a valid HTTP header value"
        ));
    }
    Ok((name.to_string(), value.to_string()))
}

/// Why `meridian status` / `explain` failed.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// No `--controller` and no admin file.
    #[error(
        "cannot find the controller: no --controller URL and no {} (written by `meridian up`). \
         Start `meridian up` (and run this where it runs, or pass --state-dir), or give \
         --controller http://HOST:PORT (`meridian controller --metrics`) and --token-file",
        .0.display()
    )]
    NoController(PathBuf),
    /// The admin file cannot be read or parsed.
    #[error("reading {}: {reason}", path.display())]
    AdminFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The token file cannot be read or is empty.
    #[error("--token-file {}: {reason}", path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The URL is not `http://HOST:PORT`.
    #[error("--controller {url:?}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The controller did not answer.
    #[error(
        "cannot reach the controller at {url}: {reason}. Is it running? (`meridian up` \
         rewrites {ADMIN_FILE} each time it starts; for `meridian controller`, --controller is \
         its --metrics address)"
    )]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The controller refused the request.
    #[error("the controller answered {status}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// The answer is not what this version of `meridian` understands.
    #[error("the controller's answer cannot be read ({0}); is it the same Meridian version?")]
    Decode(String),
    /// Ctrl-C could not be waited for.
    #[error("waiting for Ctrl-C: {0}")]
    Signal(#[source] std::io::Error),
    /// Writing to stdout failed.
    #[error("writing the output: {0}")]
    Output(#[source] std::io::Error),
}

/// A resolved controller address and token.
#[derive(Debug, Clone)]
struct Target {
    url: String,
    authority: String,
    token: Option<String>,
}

impl ControllerConn {
    fn resolve(&self) -> Result<Target, InspectError> {
        let (url, mut token) = match &self.controller {
            Some(url) => (url.clone(), None),
            None => {
                let path = self.state_dir.join(ADMIN_FILE);
                let text = match std::fs::read_to_string(&path) {
                    Ok(t) => t,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(InspectError::NoController(path));
                    }
                    Err(e) => {
                        return Err(InspectError::AdminFile {
                            path,
                            reason: e.to_string(),
                        });
                    }
                };
                let ep: AdminEndpoint =
                    serde_json::from_str(&text).map_err(|e| InspectError::AdminFile {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                (ep.url, ep.token)
            }
        };
        if let Some(path) = &self.token_file {
            let bad = |reason: String| InspectError::TokenFile {
                path: path.clone(),
                reason,
            };
            let t = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
            let t = t.trim();
            if t.is_empty() {
                return Err(bad("empty; it must hold the admin token".into()));
            }
            token = Some(t.to_string());
        }
        let authority = authority(&url)?;
        Ok(Target {
            url: url.trim_end_matches('/').to_string(),
            authority,
            token,
        })
    }
}

/// `HOST:PORT` of an `http://HOST:PORT[/]` URL.
fn authority(url: &str) -> Result<String, InspectError> {
    let bad = |reason: &str| InspectError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    if url.starts_with("https://") {
        return Err(bad(
            "the admin listener serves plain HTTP (keep it on loopback or a private network): use http://",
        ));
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("expected http://HOST:PORT"))?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') || authority.contains('@') {
        return Err(bad("expected http://HOST:PORT, without a path"));
    }
    let (_, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| bad("expected http://HOST:PORT (the port is required)"))?;
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad("the port must be 1 to 65535"));
    }
    Ok(authority.to_string())
}

/// GETs `path_and_query` from the controller; the body of a `200`, or the controller's message.
async fn get(t: &Target, path_and_query: &str) -> Result<Bytes, InspectError> {
    let unreachable = |reason: String| InspectError::Unreachable {
        url: t.url.clone(),
        reason,
    };
    let fetch = async {
        let stream = tokio::net::TcpStream::connect(&t.authority)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let mut req = http::Request::get(path_and_query).header(http::header::HOST, &t.authority);
        if let Some(token) = &t.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| InspectError::Decode(e.to_string()))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| unreachable(format!("reading the answer: {e}")))?
            .to_bytes();
        conn.abort();
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
            return Err(InspectError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        Ok(body)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fetch)
        .await
        .map_err(|_| unreachable(format!("no answer within {REQUEST_TIMEOUT:?}")))?
}

/// Fetches the status once.
pub async fn fetch_status(conn: &ControllerConn) -> Result<StatusView, InspectError> {
    let t = conn.resolve()?;
    let body = get(&t, "/v1/status").await?;
    serde_json::from_slice(&body).map_err(|e| InspectError::Decode(e.to_string()))
}

/// Fetches an explanation.
pub async fn fetch_explain(args: &ExplainArgs) -> Result<ExplainView, InspectError> {
    let t = args.conn.resolve()?;
    let body = get(&t, &explain_path(args)).await?;
    serde_json::from_slice(&body).map_err(|e| InspectError::Decode(e.to_string()))
}

fn explain_path(args: &ExplainArgs) -> String {
    let mut q = vec![
        format!("gateway={}", encode(&args.gateway.to_string())),
        format!("host={}", encode(&args.host)),
        format!("path={}", encode(&args.path)),
        format!("method={}", encode(&args.method)),
    ];
    if let Some(c) = &args.context {
        q.push(format!("cluster={}", encode(c)));
    }
    if let Some(p) = args.port {
        q.push(format!("port={p}"));
    }
    if let Some(f) = &args.fail {
        q.push(format!("fail={}", encode(f)));
    }
    for (n, v) in &args.headers {
        q.push(format!("header={}", encode(&format!("{n}:{v}"))));
    }
    format!("/v1/explain?{}", q.join("&"))
}

/// Percent-encodes everything but unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `meridian status`.
pub async fn status(args: StatusArgs) -> Result<(), InspectError> {
    let mut refreshes = 0u64;
    loop {
        let view = fetch_status(&args.conn).await?;
        let mut out = String::new();
        match args.output {
            Output::Json if args.watch => {
                out = serde_json::to_string(&view)
                    .map_err(|e| InspectError::Decode(e.to_string()))?;
                out.push('\n');
            }
            Output::Json => {
                out = serde_json::to_string_pretty(&view)
                    .map_err(|e| InspectError::Decode(e.to_string()))?;
                out.push('\n');
            }
            Output::Table => {
                if args.watch && std::io::stdout().is_terminal() {
                    // Clear the screen: each refresh replaces the last.
                    out.push_str("\x1b[2J\x1b[H");
                }
                out.push_str(&render_status(&view));
            }
        }
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(out.as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(InspectError::Output)?;
        drop(stdout);
        refreshes += 1;
        if !args.watch || args.count.is_some_and(|n| refreshes >= n) {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            stopped = tokio::signal::ctrl_c() => {
                return stopped.map_err(InspectError::Signal);
            }
        }
    }
}

/// `meridian explain`.
pub async fn explain(args: ExplainArgs) -> Result<(), InspectError> {
    let view = fetch_explain(&args).await?;
    let out = match args.output {
        Output::Json => {
            let mut s = serde_json::to_string_pretty(&view)
                .map_err(|e| InspectError::Decode(e.to_string()))?;
            s.push('\n');
            s
        }
        Output::Table => render_explain(&view),
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(InspectError::Output)
}

/// Left-aligned columns.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn yes(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The status as tables.
pub fn render_status(v: &StatusView) -> String {
    let mut out = String::new();
    out.push_str("CLUSTERS\n");
    let rows: Vec<Vec<String>> = v
        .clusters
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.region.clone(),
                yes(c.reachable),
                c.seconds_since_contact
                    .map_or("-".into(), |s| format!("{s:.1}s ago")),
                c.api_latency_ms
                    .map_or("-".into(), |ms| format!("{ms:.1}ms")),
                yes(c.synced),
                c.unreachable_since.clone().unwrap_or_default(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "NAME",
            "REGION",
            "REACHABLE",
            "LAST CONTACT",
            "API LATENCY",
            "SYNCED",
            "UNREACHABLE SINCE",
        ],
        &rows,
    ));
    out.push_str("\nPROXIES\n");
    let rows: Vec<Vec<String>> = v
        .proxies
        .iter()
        .map(|p| {
            vec![
                p.id.clone(),
                p.cluster.clone(),
                p.region.clone(),
                p.zone.clone(),
                opt(p.address.clone()),
                format!(
                    "{}/{}{}",
                    opt(p.acked_generation),
                    opt(p.current_generation),
                    if p.up_to_date() { "" } else { " (behind)" }
                ),
                if p.connected {
                    p.connected_since.clone()
                } else {
                    format!("disconnected (last seen {})", p.last_seen)
                },
                nearest(&p.nearest_regions, p.health_reported),
                match p.ejected_endpoints {
                    None => "-".into(),
                    Some(n) if p.ejected_truncated => format!("{n}+"),
                    Some(n) => n.to_string(),
                },
                p.refused
                    .as_ref()
                    .map(|r| format!("refused {}: {}", r.generation, r.reason))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "ID",
            "CLUSTER",
            "REGION",
            "ZONE",
            "ADDRESS",
            "ACKED/CURRENT",
            "CONNECTED SINCE",
            "NEAREST REGIONS (RTT)",
            "EJECTED",
            "",
        ],
        &rows,
    ));
    out.push_str("\nGATEWAYS\n");
    let rows: Vec<Vec<String>> = v
        .gateways
        .iter()
        .map(|g| {
            vec![
                g.cluster.clone(),
                format!("{}/{}", g.namespace, g.name),
                g.programmed.as_ref().map_or("-".into(), |c| {
                    if c.status == "True" {
                        c.status.clone()
                    } else {
                        format!("{} ({})", c.status, c.reason)
                    }
                }),
                if g.addresses.is_empty() {
                    "-".into()
                } else {
                    g.addresses.join(",")
                },
                g.listeners
                    .iter()
                    .map(|l| {
                        format!(
                            "{}:{}/{}{} routes={}",
                            l.name,
                            l.port,
                            l.protocol,
                            l.hostname
                                .as_deref()
                                .map(|h| format!(" {h}"))
                                .unwrap_or_default(),
                            opt(l.attached_routes)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
                opt(g.snapshot_generation),
                g.requests_by_region
                    .iter()
                    .map(|(r, n)| format!("{r}={n}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "CLUSTER",
            "GATEWAY",
            "PROGRAMMED",
            "ADDRESS",
            "LISTENERS",
            "SNAPSHOT",
            "REQUESTS BY SERVING REGION",
        ],
        &rows,
    ));
    out.push_str("\nBACKENDS\n");
    let mut rows = Vec::new();
    for cb in &v.backends {
        for b in &cb.backends {
            let healthy = match &b.invalid {
                Some(reason) => format!("invalid: {reason}"),
                None => b
                    .zones
                    .iter()
                    .map(|z| {
                        format!(
                            "{} {}/{}{}",
                            // Zone names usually carry their region; without a zone, the region.
                            if z.zone.is_empty() {
                                &z.region
                            } else {
                                &z.zone
                            },
                            z.healthy,
                            z.endpoints,
                            match (z.drained, z.ejected) {
                                (0, 0) => String::new(),
                                (d, 0) => format!(" ({d} drained)"),
                                (0, e) => format!(" ({e} ejected by proxies)"),
                                (d, e) => format!(" ({d} drained, {e} ejected by proxies)"),
                            }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            let tiers = b
                .tiers
                .iter()
                .map(|t| {
                    let from = if t.zone.is_empty() {
                        t.region.clone()
                    } else {
                        t.zone.clone()
                    };
                    match (t.tier, t.kind, &t.serving_region) {
                        (Some(n), Some(k), Some(r)) => {
                            format!("{from} → tier {n} {} ({r})", kind_name(k))
                        }
                        _ => format!("{from} → none (503)"),
                    }
                })
                .collect::<Vec<_>>()
                .join(", ");
            rows.push(vec![cb.cluster.clone(), b.name.clone(), healthy, tiers]);
        }
    }
    out.push_str(&table(
        &[
            "CLUSTER",
            "BACKEND",
            "HEALTHY/ENDPOINTS PER ZONE",
            "TIER IN USE (PROXY → TIER)",
        ],
        &rows,
    ));
    let mut rows = Vec::new();
    for cb in &v.backends {
        for b in &cb.backends {
            for x in &b.ejected {
                rows.push(vec![
                    cb.cluster.clone(),
                    b.name.clone(),
                    x.region.clone(),
                    format!("{} ({})", x.address, x.zone),
                    x.by.iter().map(ejected_by).collect::<Vec<_>>().join("; "),
                ]);
            }
        }
    }
    if !rows.is_empty() {
        out.push_str(
            "
EJECTED BY PROXIES
",
        );
        out.push_str(&table(
            &["CLUSTER", "BACKEND", "REGION", "ENDPOINT", "BY"],
            &rows,
        ));
    }
    out
}

/// A proxy's measured order: `us-west 31.5ms, eu-central 92ms`; `-` when it reported none.
fn nearest(regions: &[meridian_model::explain::RegionRttView], reported: bool) -> String {
    if regions.is_empty() {
        return if reported {
            "not measured".into()
        } else {
            "-".into()
        };
    }
    regions
        .iter()
        .map(|r| match r.rtt_ms {
            Some(ms) => format!("{} {ms}ms", r.region),
            None => r.region.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `east-1 (probe since 2026-12-06T12:01:00Z, 5 failures)`.
fn ejected_by(b: &meridian_model::explain::EjectedBy) -> String {
    format!(
        "{} ({} since {}, {} failure{})",
        b.proxy,
        b.reason,
        b.since,
        b.failures,
        if b.failures == 1 { "" } else { "s" }
    )
}

fn kind_name(k: meridian_model::explain::TierKind) -> &'static str {
    match k {
        meridian_model::explain::TierKind::Zone => "zone",
        meridian_model::explain::TierKind::Region => "region",
        meridian_model::explain::TierKind::Failover => "failover",
    }
}

fn state_name(s: EndpointState) -> &'static str {
    match s {
        EndpointState::Healthy => "healthy",
        EndpointState::Drained => "drained",
        EndpointState::Failed => "failed",
        EndpointState::Ejected => "ejected",
        EndpointState::NotReady => "not ready",
        EndpointState::OutsideGeoFence => "outside geo-fence",
    }
}

/// The explanation as text.
pub fn render_explain(v: &ExplainView) -> String {
    let mut out = String::new();
    if let Some(f) = &v.failed {
        out.push_str(&format!(
            "what if {} ({}) fails: its endpoints count as failed (ejected), its proxies as down\n\n",
            f.name,
            f.kinds.join(", ")
        ));
    }
    for c in &v.clusters {
        out.push_str(&format!(
            "cluster {} ({}), Gateway {}, snapshot generation {}\n",
            c.cluster, c.region, c.explanation.gateway, c.explanation.generation
        ));
        render_one(&mut out, &c.explanation);
        out.push('\n');
    }
    out
}

fn render_one(out: &mut String, e: &Explanation) {
    let r = &e.request;
    out.push_str(&format!(
        "  request   {} {}{}{} on port {}{}\n",
        r.method,
        if r.host.is_empty() {
            "(no host)"
        } else {
            &r.host
        },
        r.path,
        r.query
            .as_deref()
            .map(|q| format!("?{q}"))
            .unwrap_or_default(),
        r.port,
        if r.other_ports.is_empty() {
            String::new()
        } else {
            format!(" (other ports: {:?}, pick with --port)", r.other_ports)
        }
    ));
    if let (Some(l), Some(why)) = (&e.listener, &e.listener_why) {
        out.push_str(&format!("  listener  {l}: {why}\n"));
    }
    match &e.rule {
        Some(rule) => {
            out.push_str(&format!(
                "  rule      {} rule {}{}: {}\n",
                rule.route,
                rule.rule,
                rule.name
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default(),
                rule.why
            ));
            for m in &rule.matches {
                out.push_str(&format!("            match {}\n", compact(m)));
            }
            for f in &rule.filters {
                out.push_str(&format!("  filter    {}\n", compact(f)));
            }
            for (i, other) in e.also_matching.iter().enumerate() {
                out.push_str(&format!(
                    "  beaten    {}. {} rule {}: {}\n",
                    i + 1,
                    other.route,
                    other.rule,
                    other.why
                ));
            }
        }
        None => out.push_str(&format!("  rule      none ({})\n", e.decision)),
    }
    if let Some(s) = e.status {
        out.push_str(&format!("  answer    the proxy answers {s} itself\n"));
    }
    for b in &e.backends {
        out.push_str(&format!(
            "  backend   {} (weight {}, {}% of requests)\n",
            b.name, b.weight, b.share_percent
        ));
        for f in &b.filters {
            out.push_str(&format!("            filter {}\n", compact(f)));
        }
        if let Some(reason) = &b.invalid {
            out.push_str(&format!(
                "            invalid ({reason}): the proxy answers 500\n"
            ));
        }
        for from in &b.from {
            render_locality(out, from);
        }
    }
}

fn render_locality(out: &mut String, l: &LocalityView) {
    let zone = if l.zone.is_empty() {
        "zone unknown: no proxy connected".to_string()
    } else {
        l.zone.clone()
    };
    out.push_str(&format!(
        "    from proxy in {} ({}, {zone}){}\n",
        l.cluster,
        l.region,
        if l.proxy_failed {
            " — this proxy is in the failed locality: its clients must reach another region's address"
        } else {
            ""
        }
    ));
    let o = &l.region_order;
    let measured_by = o.measured_by.as_deref().unwrap_or("?");
    let from = match o.source {
        OrderSource::Policy => "the FailoverPolicy's order".to_string(),
        OrderSource::PolicyThenMeasured => format!(
            "the FailoverPolicy's order, then as proxy {measured_by} measured ({})",
            nearest(&o.nearest_regions, true)
        ),
        OrderSource::Measured => format!(
            "nearest first as proxy {measured_by} measured ({})",
            nearest(&o.nearest_regions, true)
        ),
        OrderSource::Alphabetical => {
            "alphabetical (no policy order, no measured order reported)".to_string()
        }
    };
    out.push_str(&format!("      other regions: {from}\n"));
    for w in &l.weighted {
        out.push_str(&format!(
            "      {}% of requests go to {} while it is eligible (policy weight)\n",
            w.percent, w.region
        ));
    }
    for t in &l.tiers {
        out.push_str(&format!(
            "      tier {} {} {}: {}\n",
            t.tier,
            kind_name(t.kind),
            t.region,
            t.why
        ));
    }
    for (i, s) in l.order.iter().enumerate() {
        out.push_str(&format!(
            "      {:>2}. {} ({}, {}, {}) {}: {}\n",
            i + 1,
            s.endpoint.address,
            s.endpoint.cluster,
            s.endpoint.zone,
            s.endpoint.region,
            state_name(s.endpoint.state),
            s.why
        ));
        for b in &s.endpoint.ejected_by {
            out.push_str(&format!("          ejected on {}\n", ejected_by(b)));
        }
    }
    if l.order_truncated {
        out.push_str("      … (order cut)\n");
    }
    for x in &l.excluded {
        out.push_str(&format!(
            "      never: {} ({}, {}): {}\n",
            x.address,
            x.cluster,
            x.zone,
            state_name(x.state)
        ));
    }
    if let Some(s) = l.status {
        out.push_str(&format!("      no endpoint: the proxy answers {s}\n"));
    }
}

fn compact<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_and_headers_are_checked_with_clear_errors() {
        assert_eq!(
            authority("http://127.0.0.1:9090/").unwrap(),
            "127.0.0.1:9090"
        );
        assert_eq!(authority("http://[::1]:9090").unwrap(), "[::1]:9090");
        for (bad, why) in [
            ("https://a:1", "plain HTTP"),
            ("127.0.0.1:9090", "http://HOST:PORT"),
            ("http://a", "port is required"),
            ("http://a:0", "1 to 65535"),
            ("http://a:1/v1", "without a path"),
        ] {
            let e = authority(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(
            parse_header("x-canary=a=b").unwrap(),
            ("x-canary".to_string(), "a=b".to_string())
        );
        assert!(parse_header("x-canary").unwrap_err().contains("NAME=VALUE"));
        assert!(
            parse_header("bad name=1")
                .unwrap_err()
                .contains("header name")
        );
        assert!(parse_interval("500ms").is_err());
        assert!(parse_interval("2m").is_err());
        assert_eq!(parse_interval("5s").unwrap(), Duration::from_secs(5));
    }

    #[test]
    fn explain_query_round_trips_through_the_admin_parser() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: ExplainArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "x",
            "--gateway",
            "demo/web",
            "--host",
            "a b&c",
            "--path",
            "/p?q=1&r=2",
            "--header",
            "x-a=1:2",
            "--fail",
            "us-east",
            "--context",
            "east",
        ])
        .unwrap();
        let path = explain_path(&cli.args);
        let query = path.strip_prefix("/v1/explain?").unwrap();
        let q = super::super::admin::ExplainQuery::parse(query).unwrap();
        assert_eq!(q.gateway, GatewayRef::new("demo", "web"));
        assert_eq!(q.request.host, "a b&c");
        assert_eq!(q.request.path, "/p?q=1&r=2");
        assert_eq!(q.request.headers, [("x-a".to_string(), "1:2".to_string())]);
        assert_eq!(q.fail.as_deref(), Some("us-east"));
        assert_eq!(q.cluster.as_deref(), Some("east"));
    }

    #[test]
    fn a_missing_admin_file_says_how_to_find_the_controller() {
        let conn = ControllerConn {
            controller: None,
            token_file: None,
            state_dir: PathBuf::from("/nonexistent/meridian-state"),
        };
        let e = conn.resolve().unwrap_err().to_string();
        assert!(e.contains("meridian up"), "{e}");
        assert!(e.contains("--controller"), "{e}");
    }

    #[tokio::test]
    async fn an_unreachable_controller_is_named_with_what_to_do() {
        // A port nothing listens on: bind one, then drop it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conn = ControllerConn {
            controller: Some(format!("http://127.0.0.1:{port}")),
            token_file: None,
            state_dir: PathBuf::from("."),
        };
        let e = fetch_status(&conn).await.unwrap_err();
        assert!(matches!(e, InspectError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains("Is it running?"), "{e}");
    }

    #[test]
    fn the_admin_file_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("meridian-admin-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ep = AdminEndpoint {
            url: "http://127.0.0.1:1".into(),
            token: Some("t".into()),
        };
        let path = ep.write(&dir).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let back: AdminEndpoint =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back, ep);
        // Written again (a new `meridian up`): replaced.
        ep.write(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
