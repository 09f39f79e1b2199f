//! meridian-sandbox: a local multi-cluster Kubernetes API server.
//!
//! One process serves N independent clusters, each on its own loopback HTTP/1.1 listener, with
//! enough of the Kubernetes REST API that real `kubectl` (1.32) and the kube-rs client and
//! watcher work unchanged: discovery, CRUD with resourceVersion conflicts, finalizers, namespaces,
//! label/field selectors, paging, watches with bookmarks and 410 Expired, merge/JSON/strategic
//! patches, server-side apply, the status subresource, CRD registration, Table output for
//! `kubectl get`, OpenAPI v2/v3 documents for `kubectl apply` and `kubectl explain`, the
//! Kubernetes-protobuf request bodies of kubectl's `create secret|configmap|namespace|service|
//! serviceaccount|role|clusterrole|rolebinding|clusterrolebinding|deployment|poddisruptionbudget`,
//! and what an install on a real cluster needs: Deployments, PodDisruptionBudgets,
//! ServiceAccounts and the RBAC kinds, ServiceAccount tokens (TokenRequest, TokenReview) and
//! RBAC.
//!
//! ```text
//!   kubectl / kube-rs ──HTTP──▶ server (accept loop, hyper http1) ─▶ guard (Host, Origin)
//!                                 └─▶ http: auth (who) ─▶ rbac (may they) ─▶ routing, verbs
//!                                                             ├─▶ discovery / table / patch / apply
//!                                                             └─▶ store (State: objects, RV, history)
//!                                                                   ├─▶ watch (streams from history)
//!                                                                   └─▶ persist (append-only log,
//!                                                                        compacted into snapshots)
//! ```
//!
//! Modules: [`store`] (objects and write semantics), [`watch`], [`http`] (routing), [`discovery`],
//! [`table`], [`patch`] and [`apply`] (PATCH flavours), [`selectors`], [`registry`] (built-in and
//! CRD-defined types), [`schema`] (custom objects pruned, defaulted and validated against their
//! CRD's structural schema and CEL rules, 422 `Invalid` as the real server words it;
//! `fieldValidation=Strict` refuses unknown fields), [`kubeconfig`], [`persist`], [`error`]
//! (`Status` bodies), [`protobuf`] (protobuf request bodies into JSON), [`openapi`] (OpenAPI
//! documents with CRD schemas), [`auth`] (bearer tokens, the TokenRequest and TokenReview APIs,
//! impersonation),
//! [`rbac`] (Role/ClusterRole rules through RoleBindings and ClusterRoleBindings, 403 `Status`),
//! [`guard`] (`Host` and `Origin` checks that keep web pages out: DNS rebinding, cross-site
//! requests; [`SandboxConfig::allowed_hosts`]).
//!
//! Local safety: bodies in media types a real API server does not read get 415 ([`http`]),
//! foreign `Host`/`Origin` values 403 ([`guard`]), and state files and the kubeconfig are
//! written 0600 in directories created 0700 ([`persist`]). See `docs/sandbox.md`.
//!
//! Identities: a request without credentials is the all-powerful admin (what `meridian up` and
//! most tests use), unless the cluster enforces RBAC for everyone ([`SandboxConfig::enforce_rbac`],
//! [`Sandbox::enforce_rbac`]); ServiceAccount tokens, minted per cluster by `kubectl create
//! token` or [`Sandbox::mint_token`], are always held to RBAC. [`Sandbox::kubeconfig_for_token`]
//! writes a kubeconfig for such a token (kube-rs sends it over plain HTTP; kubectl does not, and
//! acts as a ServiceAccount with `--as`, which the admin may always do). See `docs/sandbox.md`.
//! Refused requests are kept per cluster ([`Sandbox::denials`]), like an audit log.
//!
//! Errors: [`SandboxError`] for starting, stopping and restarting clusters and for their state
//! files; [`CredentialError`] for tokens; what a client gets is a `Status` ([`error::ApiError`]).
//!
//! Fault injection for tests (and drills): [`Sandbox::stop_cluster`] closes one cluster's
//! listener and cuts its connections like a killed API server, [`Sandbox::restart_cluster`]
//! serves it again on the same address with the objects it had, and [`Sandbox::set_starting`]
//! makes it answer every request with a plain-text `404 page not found` for a while, as a real
//! API server does while it starts.
//!
//! Known simplifications (documented where they live): objects are stored once, in the storage
//! version (no conversion; each write is checked against the schema of the version it was sent
//! in); schema validation skips `format`, `allOf`/`anyOf`/`oneOf`/`not` and `metadata`, CEL rules
//! run only once the schema checks pass and transition rules only where the old value is found
//! by path, and rules or patterns the `cel`/`regex` crates cannot compile are skipped with a log
//! line; `fieldValidation=Warn` prunes without `Warning` headers; defaults are filled into stored
//! objects when they are loaded or their CRD changes, without a new resourceVersion; built-in
//! kinds are not schema-validated; strategic merge is merge patch plus keyed list merging for well-known lists;
//! server-side apply tracks apply managers only; lists are served from the latest state (the
//! `resourceVersion` of a list request is not honoured as a snapshot); tokens are opaque strings
//! kept in memory (not JWTs; forgotten when the process restarts); RBAC has no aggregation rules,
//! no `nonResourceURLs` rules, no default roles and no escalation checks ([`rbac`]); no
//! controllers run (a Deployment is stored, no pods appear; no default ServiceAccount per
//! namespace).
//!
//! Wire formats: protobuf request bodies are decoded only for Namespace, Secret, ConfigMap,
//! Service, ServiceAccount, the four RBAC kinds, Deployment (not every Pod-template field),
//! PodDisruptionBudget, TokenRequest and SelfSubjectAccessReview (anything else gets a 415 saying
//! JSON works) and answers are always JSON; built-in kinds
//! publish a minimal OpenAPI schema (apiVersion, kind, metadata), CRD kinds their full schema;
//! discovery is the legacy (non-aggregated) format only;
//! `/openapi/v2` asked for as protobuf is an empty document (no Rust crate provides its message
//! type), so kubectl leaves the items of a `kind: List` file to the server, which validates custom
//! objects (with `fieldValidation=Strict`, as kubectl sends it, unknown fields are refused).

pub mod apply;
pub mod auth;
pub mod discovery;
pub mod error;
pub mod guard;
pub mod http;
pub mod kubeconfig;
pub mod openapi;
pub mod patch;
pub mod persist;
pub mod protobuf;
pub mod rbac;
pub mod registry;
pub mod schema;
pub mod selectors;
pub mod server;
pub mod store;
pub mod table;
pub mod util;
pub mod watch;

pub use auth::CredentialError;
use error::ApiError;
use server::{Cluster, ClusterOptions};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// CLI args for `meridian sandbox`.
#[derive(clap::Args, Debug, Clone)]
pub struct SandboxArgs {
    /// Comma-separated cluster names, e.g. east,west,central
    #[arg(long, value_delimiter = ',', default_value = "east,west,central")]
    pub clusters: Vec<String>,
    /// Directory for the kubeconfig and (unless --no-persist) the cluster snapshots.
    #[arg(long, default_value = ".meridian/sandbox")]
    pub state_dir: PathBuf,
    /// Address to bind the API servers to.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// First port; cluster i listens on base_port + i. 0 = ephemeral ports.
    #[arg(long, default_value_t = 6550)]
    pub base_port: u16,
    /// Keep objects across restarts in state_dir; `--no-persist` keeps everything in memory.
    #[arg(long = "no-persist", action = clap::ArgAction::SetFalse)]
    pub persist: bool,
    /// Extra host names (or IP addresses) the API answers to besides localhost and loopback
    /// IPs, when bound to loopback (repeatable or comma-separated). Requests for any other
    /// `Host`, and from web pages of other origins, get 403.
    #[arg(long = "allowed-host", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
}

/// How to start a [`Sandbox`].
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub clusters: Vec<String>,
    pub bind: IpAddr,
    /// First port; cluster i listens on `base_port + i`; 0 = ephemeral ports.
    pub base_port: u16,
    /// Snapshot directory; `None` = no persistence, no files.
    pub state_dir: Option<PathBuf>,
    /// Where to write the kubeconfig, if anywhere.
    pub kubeconfig_path: Option<PathBuf>,
    /// Events kept per cluster for watch resumption. A watch of a kind resuming from before
    /// that kind's oldest kept event gets 410 Expired (writes to other kinds do not expire it).
    pub history_window: usize,
    /// Events younger than this are kept past `history_window` (up to [`HISTORY_CAP`] per
    /// cluster), as a real API server keeps at least 75 s in its watch cache: a watch that falls
    /// behind during a write burst resumes instead of re-listing. `Duration::ZERO`: the count
    /// alone decides.
    pub history_min_age: Duration,
    /// Interval of BOOKMARK events on watches that allow them; `None` disables them.
    pub bookmark_interval: Option<Duration>,
    /// RBAC for every request, not only for ServiceAccount tokens: requests without credentials
    /// are `system:anonymous`, and the kubeconfig carries each cluster's admin token. See
    /// [`Sandbox::enforce_rbac`].
    pub enforce_rbac: bool,
    /// Host names or IP addresses answered besides `localhost` and loopback IPs, in `Host`
    /// (checked when `bind` is a loopback address) and `Origin` (always checked). Anything else
    /// gets 403: see [`guard`].
    pub allowed_hosts: Vec<String>,
}

/// The most events a cluster keeps for watch resumption however young they are (a real API
/// server's watch cache holds at most 100 × 1024 events per resource).
pub const HISTORY_CAP: usize = 100 * 1024;

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            clusters: vec!["east".into(), "west".into(), "central".into()],
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            base_port: 6550,
            state_dir: None,
            kubeconfig_path: None,
            history_window: 10_000,
            history_min_age: Duration::from_secs(75),
            bookmark_interval: Some(Duration::from_secs(30)),
            enforce_rbac: false,
            allowed_hosts: Vec::new(),
        }
    }
}

impl SandboxConfig {
    /// In-memory clusters on ephemeral loopback ports: what tests want.
    pub fn ephemeral<S: AsRef<str>>(clusters: &[S]) -> SandboxConfig {
        SandboxConfig {
            clusters: clusters.iter().map(|c| c.as_ref().to_string()).collect(),
            base_port: 0,
            ..SandboxConfig::default()
        }
    }
}

/// Where one cluster is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterEndpoint {
    pub name: String,
    /// `http://127.0.0.1:port`
    pub url: String,
    pub addr: SocketAddr,
}

/// One cluster's accept loop and the flag that stops it alone.
struct Listener {
    stop: tokio::sync::watch::Sender<bool>,
    /// `None` while the cluster is stopped.
    task: Option<JoinHandle<()>>,
}

/// A running set of clusters.
pub struct Sandbox {
    endpoints: Vec<ClusterEndpoint>,
    clusters: Vec<Arc<Cluster>>,
    /// Per cluster (same order as `clusters`).
    listeners: Vec<std::sync::Mutex<Listener>>,
    tasks: Vec<JoinHandle<()>>,
    /// Per cluster (same order as `clusters`) when persisting.
    persisters: Vec<Arc<persist::Persister>>,
    shutdown_tx: tokio::sync::watch::Sender<bool>,
}

fn valid_cluster_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !n.starts_with('-')
        && !n.ends_with('-')
}

/// Why the sandbox, or one of its clusters, cannot do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// No cluster names were given.
    #[error("at least one cluster name is required")]
    NoClusters,
    /// A cluster name is not a DNS label.
    #[error("invalid cluster name {0:?}: use lowercase letters, digits and '-'")]
    InvalidClusterName(String),
    /// A cluster name is given twice.
    #[error("cluster name {0:?} is given twice")]
    DuplicateClusterName(String),
    /// No cluster of that name.
    #[error("no cluster {0:?} in this sandbox")]
    UnknownCluster(String),
    /// `base_port` plus the cluster's index does not fit a port.
    #[error("port range overflows 65535 (base port {base_port}, {clusters} clusters)")]
    PortOverflow {
        /// The first port.
        base_port: u16,
        /// How many clusters.
        clusters: usize,
    },
    /// A cluster's address cannot be bound.
    #[error("binding cluster {cluster} to {addr}: {source}")]
    Bind {
        /// The cluster.
        cluster: String,
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A file or directory of the sandbox cannot be read or written.
    #[error("{doing} {}: {source}", .path.display())]
    Io {
        /// `creating`, `writing`, `reading`, `renaming to`.
        doing: &'static str,
        /// The path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A saved cluster state is not JSON.
    #[error("parsing {}: {source}", .path.display())]
    StateParse {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: serde_json::Error,
    },
    /// A cluster's persistence log is not one the sandbox wrote (see [`persist`]); nothing was
    /// changed. A torn end of a log (a crash mid-write) is not an error: it is set aside.
    #[error("reading {}: {reason}", .path.display())]
    StateLog {
        /// The log file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A saved cluster state is JSON but not a sandbox snapshot.
    #[error("restoring {}: {source}", .path.display())]
    StateRestore {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: store::SnapshotError,
    },
    /// A cluster's state cannot be encoded.
    #[error("encoding the state of cluster {cluster}: {source}")]
    StateEncode {
        /// The cluster.
        cluster: String,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// An allowed host is not a host name or IP address.
    #[error(transparent)]
    InvalidAllowedHost(#[from] guard::InvalidAllowedHost),
    /// Ctrl-C cannot be waited for (`meridian sandbox`).
    #[error("waiting for Ctrl-C: {0}")]
    Signal(#[source] std::io::Error),
}

impl SandboxError {
    /// An I/O error on `path` while `doing` something to it.
    pub(crate) fn io(doing: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| SandboxError::Io {
            doing,
            path,
            source,
        }
    }
}

/// At least one name, each a DNS label, none twice.
fn check_cluster_names(names: &[String]) -> Result<(), SandboxError> {
    if names.is_empty() {
        return Err(SandboxError::NoClusters);
    }
    for (i, n) in names.iter().enumerate() {
        if !valid_cluster_name(n) {
            return Err(SandboxError::InvalidClusterName(n.clone()));
        }
        if names[..i].contains(n) {
            return Err(SandboxError::DuplicateClusterName(n.clone()));
        }
    }
    Ok(())
}

impl Sandbox {
    /// Binds all listeners, loads snapshots and writes the kubeconfig if asked.
    pub async fn start(cfg: SandboxConfig) -> Result<Sandbox, SandboxError> {
        check_cluster_names(&cfg.clusters)?;
        let hosts = guard::HostPolicy::new(cfg.bind, &cfg.allowed_hosts)?;
        if let Some(dir) = &cfg.state_dir {
            persist::create_private_dir(dir)?;
        }
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let opts = ClusterOptions {
            history_window: cfg.history_window.max(1),
            bookmark_interval: cfg.bookmark_interval,
            hosts,
            journal_limit: server::JOURNAL_LIMIT,
        };
        let mut sandbox = Sandbox {
            endpoints: Vec::new(),
            clusters: Vec::new(),
            listeners: Vec::new(),
            tasks: Vec::new(),
            persisters: Vec::new(),
            shutdown_tx,
        };
        for (i, name) in cfg.clusters.iter().enumerate() {
            sandbox
                .serve_cluster(&cfg, i, name, &opts, &shutdown_rx)
                .await?;
        }
        if let Some(path) = &cfg.kubeconfig_path {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                persist::create_private_dir(parent)?;
            }
            // 0600: on a cluster that enforces RBAC it carries the admin token.
            persist::write_private(path, sandbox.kubeconfig_yaml().as_bytes())?;
        }
        Ok(sandbox)
    }

    /// Starts cluster `i` of the config: binds its port, loads its snapshot, spawns its accept
    /// loop (and persistence task) and records its endpoint.
    async fn serve_cluster(
        &mut self,
        cfg: &SandboxConfig,
        i: usize,
        name: &str,
        opts: &ClusterOptions,
        shutdown_rx: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), SandboxError> {
        let port = if cfg.base_port == 0 {
            0
        } else {
            u16::try_from(i)
                .ok()
                .and_then(|i| cfg.base_port.checked_add(i))
                .ok_or(SandboxError::PortOverflow {
                    base_port: cfg.base_port,
                    clusters: cfg.clusters.len(),
                })?
        };
        let bind_error = |source| SandboxError::Bind {
            cluster: name.to_string(),
            addr: SocketAddr::new(cfg.bind, port),
            source,
        };
        let listener = tokio::net::TcpListener::bind((cfg.bind, port))
            .await
            .map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let (mut state, loaded) = match &cfg.state_dir {
            Some(dir) => persist::load(dir, name, opts.history_window)?,
            None => (
                store::State::new(opts.history_window),
                persist::Loaded::default(),
            ),
        };
        state.set_retention(cfg.history_min_age, HISTORY_CAP);
        let cluster = Arc::new(Cluster::new(
            name.to_string(),
            addr,
            opts.clone(),
            state,
            shutdown_rx.clone(),
        ));
        cluster.tokens().anonymous_is_admin = !cfg.enforce_rbac;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        self.listeners.push(std::sync::Mutex::new(Listener {
            stop,
            task: Some(tokio::spawn(server::accept_loop(
                listener,
                Arc::clone(&cluster),
                stop_rx,
            ))),
        }));
        if let Some(dir) = &cfg.state_dir {
            let persister = Arc::new(persist::Persister::new(
                dir,
                Arc::clone(&cluster),
                loaded,
                persist::Policy::default(),
            ));
            self.tasks
                .push(tokio::spawn(persist::run(Arc::clone(&persister))));
            self.persisters.push(persister);
        }
        let host = match addr.ip() {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        };
        self.endpoints.push(ClusterEndpoint {
            name: name.to_string(),
            url: format!("http://{host}:{}", addr.port()),
            addr,
        });
        self.clusters.push(cluster);
        Ok(())
    }

    pub fn clusters(&self) -> &[ClusterEndpoint] {
        &self.endpoints
    }

    /// The endpoint of a cluster by name.
    pub fn cluster(&self, name: &str) -> Option<&ClusterEndpoint> {
        self.endpoints.iter().find(|e| e.name == name)
    }

    /// One context per cluster, context name = cluster name. The users carry no credentials
    /// (the admin), except on clusters that enforce RBAC for everyone, where they carry the
    /// cluster's admin token.
    pub fn kubeconfig_yaml(&self) -> String {
        let entries: Vec<kubeconfig::Entry> = self
            .endpoints
            .iter()
            .zip(&self.clusters)
            .map(|(e, c)| {
                let tokens = c.tokens();
                kubeconfig::Entry {
                    name: e.name.clone(),
                    url: e.url.clone(),
                    token: (!tokens.anonymous_is_admin).then(|| tokens.admin_token().to_string()),
                    namespace: "default".into(),
                }
            })
            .collect();
        kubeconfig::render_entries(&entries)
    }

    fn find(&self, cluster: &str) -> Result<(&ClusterEndpoint, &Arc<Cluster>), CredentialError> {
        self.endpoints
            .iter()
            .zip(&self.clusters)
            .find(|(e, _)| e.name == cluster)
            .ok_or_else(|| CredentialError::UnknownCluster(cluster.to_string()))
    }

    /// Turns RBAC on or off for requests without credentials on one cluster. Off (the default):
    /// they act as the all-powerful admin, as `meridian up` and most tests expect. On: they are
    /// `system:anonymous` and get 403 unless RBAC allows them; the admin then authenticates
    /// with [`Sandbox::admin_token`] (which [`Sandbox::kubeconfig_yaml`] includes). ServiceAccount
    /// tokens are subject to RBAC either way. kubectl sends no credentials over plain HTTP, so
    /// on an enforcing cluster it is anonymous; kube-rs clients send the token.
    pub fn enforce_rbac(&self, cluster: &str, on: bool) -> Result<(), CredentialError> {
        let (_, c) = self.find(cluster)?;
        c.tokens().anonymous_is_admin = !on;
        Ok(())
    }

    /// The requests RBAC refused on a cluster, oldest first (the last
    /// [`rbac::DENIALS_KEPT`]): which identity asked for which verb on which resource. What a
    /// real API server's audit log would show; tests use it to prove a permission is needed.
    pub fn denials(&self, cluster: &str) -> Result<Vec<rbac::Denial>, CredentialError> {
        let (_, c) = self.find(cluster)?;
        Ok(c.denials())
    }

    /// The bearer token that is always the admin of a cluster.
    pub fn admin_token(&self, cluster: &str) -> Result<String, CredentialError> {
        let (_, c) = self.find(cluster)?;
        Ok(c.tokens().admin_token().to_string())
    }

    /// Creates the ServiceAccount `namespace/name` on a cluster unless it exists (the namespace
    /// must exist).
    pub fn ensure_service_account(
        &self,
        cluster: &str,
        namespace: &str,
        name: &str,
    ) -> Result<(), CredentialError> {
        let (_, c) = self.find(cluster)?;
        c.write(|s| {
            let rt = s
                .registry
                .by_key("serviceaccounts")
                .ok_or_else(|| ApiError::internal("serviceaccount type missing"))?;
            if s.get(&rt, namespace, name).is_some() {
                return Ok(());
            }
            let sa = serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount",
                                        "metadata": {"name": name, "namespace": namespace}});
            s.create(&rt, Some(namespace), sa, false).map(|_| ())
        })?;
        Ok(())
    }

    /// Mints a token for the ServiceAccount `namespace/name` of a cluster, valid for an hour, as
    /// `kubectl create token` would get it. The account must exist
    /// ([`Sandbox::ensure_service_account`]); the token is valid on this cluster only.
    pub fn mint_token(
        &self,
        cluster: &str,
        namespace: &str,
        name: &str,
    ) -> Result<String, CredentialError> {
        let until = std::time::SystemTime::now() + auth::DEFAULT_TOKEN_LIFETIME;
        self.mint_token_until(cluster, namespace, name, until)
    }

    /// [`Sandbox::mint_token`] with any expiry, past ones included (for tests of expiry; the
    /// TokenRequest API itself refuses lifetimes under ten minutes).
    pub fn mint_token_until(
        &self,
        cluster: &str,
        namespace: &str,
        name: &str,
        until: std::time::SystemTime,
    ) -> Result<String, CredentialError> {
        let (_, c) = self.find(cluster)?;
        let expires = jiff::Timestamp::try_from(until)?;
        Ok(
            c.mint_token(namespace, name, &auth::TokenTerms::api_token(expires))?
                .token,
        )
    }

    /// A kubeconfig with one context (named after the cluster, default namespace `namespace`)
    /// whose user authenticates with `token`, e.g. from [`Sandbox::mint_token`].
    pub fn kubeconfig_for_token(
        &self,
        cluster: &str,
        token: &str,
        namespace: &str,
    ) -> Result<String, CredentialError> {
        let (e, _) = self.find(cluster)?;
        Ok(kubeconfig::render_entries(&[kubeconfig::Entry {
            name: e.name.clone(),
            url: e.url.clone(),
            token: Some(token.to_string()),
            namespace: namespace.to_string(),
        }]))
    }

    /// Drops a cluster's whole watch history, so every resume from an earlier resourceVersion
    /// gets 410 Expired (for tests of re-list behaviour). Returns false for an unknown cluster.
    pub fn compact_history(&self, cluster: &str) -> bool {
        match self.clusters.iter().find(|c| c.name == cluster) {
            Some(c) => {
                c.lock().compact();
                true
            }
            None => false,
        }
    }

    fn index(&self, cluster: &str) -> Result<usize, SandboxError> {
        self.clusters
            .iter()
            .position(|c| c.name == cluster)
            .ok_or_else(|| SandboxError::UnknownCluster(cluster.to_string()))
    }

    fn listener(&self, i: usize) -> std::sync::MutexGuard<'_, Listener> {
        self.listeners[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops one cluster's API like a killed server: the listener closes (connections are
    /// refused) and every open connection, watch streams included, is cut. The objects stay (and
    /// are flushed to the state dir when persisting); [`Sandbox::restart_cluster`] serves them
    /// again. Stopping a stopped cluster does nothing.
    pub async fn stop_cluster(&self, cluster: &str) -> Result<(), SandboxError> {
        let i = self.index(cluster)?;
        let task = {
            let mut l = self.listener(i);
            l.stop.send_replace(true);
            l.task.take()
        };
        if let Some(task) = task {
            // The loop only aborts its connections and returns: no wait beyond that.
            let _ = task.await;
        }
        if let Some(p) = self.persisters.get(i) {
            p.save().await?;
        }
        Ok(())
    }

    /// Serves a stopped cluster again on the same address with the objects (and watch history)
    /// it had, so clients resume where they were. With `starting` it first answers like a
    /// starting API server for that long ([`Sandbox::set_starting`]). Restarting a running
    /// cluster only applies `starting`.
    pub async fn restart_cluster(
        &self,
        cluster: &str,
        starting: Option<Duration>,
    ) -> Result<(), SandboxError> {
        let i = self.index(cluster)?;
        let c = Arc::clone(&self.clusters[i]);
        if let Some(d) = starting {
            c.set_starting(Some(d));
        }
        if self.listener(i).task.is_some() {
            return Ok(());
        }
        // The old socket is closed; SO_REUSEADDR (set by tokio on Unix) lets the port be bound
        // again despite connections in TIME_WAIT.
        let listener = tokio::net::TcpListener::bind(c.addr)
            .await
            .map_err(|source| SandboxError::Bind {
                cluster: cluster.to_string(),
                addr: c.addr,
                source,
            })?;
        let mut l = self.listener(i);
        l.stop.send_replace(false);
        let stop_rx = l.stop.subscribe();
        l.task = Some(tokio::spawn(server::accept_loop(listener, c, stop_rx)));
        Ok(())
    }

    /// Makes a running cluster answer every request with a plain-text `404 page not found`
    /// (not a `Status` object) for `duration`, as a real API server does while it starts;
    /// `None` keeps it up until called again, `Some(Duration::ZERO)` ends it.
    pub fn set_starting(
        &self,
        cluster: &str,
        duration: Option<Duration>,
    ) -> Result<(), SandboxError> {
        let i = self.index(cluster)?;
        self.clusters[i].set_starting(duration);
        Ok(())
    }

    /// Makes the next `count` writes of the `status` of `group`/`plural` objects in `cluster`
    /// answer 409 Conflict (after authorization; nothing is stored), as a real API server
    /// answers a write that lost a race with another; `count` replaces what was left, 0 ends it.
    pub fn conflict_status_writes(
        &self,
        cluster: &str,
        group: &str,
        plural: &str,
        count: u32,
    ) -> Result<(), SandboxError> {
        let i = self.index(cluster)?;
        self.clusters[i].conflict_status_writes(group, plural, count);
        Ok(())
    }

    /// Stops listeners and watches, then flushes persistence.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        let listeners = self
            .listeners
            .into_iter()
            .filter_map(|l| l.into_inner().unwrap_or_else(|p| p.into_inner()).task);
        for t in listeners.chain(self.tasks) {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        for (p, c) in self.persisters.iter().zip(&self.clusters) {
            if let Err(e) = p.save().await {
                tracing::warn!(cluster = %c.name, error = %e, "final snapshot failed");
            }
        }
    }
}

/// `meridian sandbox`: start, print the cluster URLs and kubeconfig path, wait for Ctrl-C, stop.
pub async fn run(args: SandboxArgs) -> Result<(), SandboxError> {
    let kubeconfig = args.state_dir.join("kubeconfig");
    let cfg = SandboxConfig {
        clusters: args.clusters,
        bind: args.bind,
        base_port: args.base_port,
        state_dir: args.persist.then(|| args.state_dir.clone()),
        kubeconfig_path: Some(kubeconfig.clone()),
        allowed_hosts: args.allowed_hosts,
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::start(cfg).await?;
    for c in sandbox.clusters() {
        println!("cluster {:<12} {}", c.name, c.url);
    }
    println!("kubeconfig: {}", kubeconfig.display());
    println!(
        "try: KUBECONFIG={} kubectl --context {} get namespaces",
        kubeconfig.display(),
        sandbox
            .clusters()
            .first()
            .map(|c| c.name.as_str())
            .unwrap_or("")
    );
    tokio::signal::ctrl_c()
        .await
        .map_err(SandboxError::Signal)?;
    println!("shutting down");
    sandbox.shutdown().await;
    Ok(())
}
