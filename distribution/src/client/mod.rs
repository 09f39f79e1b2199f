//! The proxy side: [`Client`] follows a controller's stream and programs a [`Target`] with it.
//!
//! ```text
//! run ─► certificate ok? ─► POST /v1/stream (Hello, mTLS) ─► 200: NDJSON lines ─┬─ welcome: connected
//!  ▲                                                                 ├─ snapshot: apply ─► ack
//!  │                                                                 ├─ endpoints: target serves the
//!  │                                                                 │   base? apply_endpoints ─► ack
//!  │                                                                 │   (else / None: apply the
//!  │                                                                 │   patched snapshot ─► ack),
//!  │                                                                 │   then patch the held snapshot
//!  │                                                                 ├─ patch: on the held base?
//!  │                                                                 │   patch it ─► apply ─► ack
//!  │                                                                 │   (else NACK: the server
//!  │                                                                 │   sends the full snapshot)
//!  │                                                                 └─ ping: still alive
//!  └── jittered exponential backoff (100 ms … 5 s) ◄── 401 / 403 / error / silence for 3 pings / EOF
//!      (after a 503 from a follower controller replica: at most 1 s, the next connection
//!       through the Service may reach the leader)
//!
//! while the stream is open, every traffic_interval (1 s):
//!   Target::traffic() ─ non-empty and changed since the last accepted report? ─► POST /v1/traffic
//! while the stream is open, at the certificate's renew_at (2/3 of its life, jittered):
//!   new key + CSR ─► POST /v1/certificate over mTLS ─► CertStore::set (the stream is untouched)
//! ```
//!
//! # Identity
//!
//! The client speaks only HTTPS (TLS 1.3, module `tls`) and proves who it is with the
//! certificate in its [`CertStore`](crate::pki::CertStore), which names the hello's cluster,
//! region, zone and proxy id. Before every stream it makes sure the store holds such a
//! certificate valid for at least another minute; if not it gets one (module `identity`):
//! over mTLS while the current certificate is still valid (a renewal), else with the bootstrap
//! credential (a ServiceAccount token, re-read from its file each time). Each TLS connection
//! presents the store's certificate *of the moment it opens* and trusts the store's bundle of
//! that moment, so a renewal or a new CA bundle needs no new HTTP client and never touches a
//! connection already open.
//!
//! Traffic reports run beside the stream in the same task, so a slow or failing report never
//! delays a line or an acknowledgement; a failed one is logged at debug and the next tick sends
//! the then-current counters (they are cumulative, nothing is lost). Each new stream starts by
//! reporting again, since the server on the other end may be a restarted one that knows nothing.
//!
//! An endpoint delta reaches a target that serves its base as the delta itself
//! ([`Target::apply_endpoints`]): the proxy updates its router without copying or recompiling
//! the snapshot. The held snapshot is patched after the acknowledgement, so it stays what the
//! controller wants for the next delta, a resync or a retry. A target without a fast path (the
//! default) gets the patched snapshot through [`Target::apply`], as before.
//!
//! A route-level patch (announced with `capabilities: ["patch"]` in the hello unless
//! [`ClientConfig::patches`] is off) is applied to the held snapshot, all or nothing, and the
//! result goes through [`Target::apply`] like a full snapshot: same acknowledgement, same
//! refusals, same retries. A patch that does not fit the held snapshot (another base) is refused:
//! the held snapshot and what the target serves stay as they were, and the server answers the
//! refusal with the full snapshot.
//!
//! Lines that arrive while the target applies are handled together (module `stream`): the held
//! snapshot takes every change and the target is given the result once, through the same apply,
//! acknowledgement and persistence as a single line; a batch ends where applying its lines one
//! by one would have ended (a refused newest state falls back to the newest earlier one the
//! target takes).
//!
//! The client never stops its target: while the controller is gone the target keeps serving what
//! it last applied (static stability). Across reconnects it keeps the last snapshot it received, so
//! a resync that sends the same content is acknowledged without re-applying it.
//!
//! # Who owns what
//!
//! | module | owns |
//! |---|---|
//! | this one | [`ClientConfig`], [`ClientStatus`], [`ClientError`], the reconnect loop ([`Client::run`]) and its backoff, building requests |
//! | `target` | the [`Target`] trait and [`Refused`] |
//! | `stream` | one stream: opening it, splitting lines, decoding and acting on each message |
//! | `apply` | what survives reconnects (`Held`), applying (one path for a batch of any size), retrying transient refusals, acks |
//! | `traffic` | the traffic reports sent beside the stream |
//! | `identity` | the proxy's certificate: bootstrap, renewal, [`BootstrapCredential`] |
//! | `tls` | the HTTPS clients presenting the current certificate |

mod apply;
mod identity;
mod stream;
mod target;
mod tls;
mod traffic;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::Full;
use rand::Rng;
use tokio::sync::watch;

pub use self::identity::BootstrapCredential;
pub use self::target::{Refused, Target};

use self::apply::Held;
use self::tls::Https;
use crate::pki::{CertStore, ProxyIdentity};
use crate::protocol::Hello;
use meridian_model::error_chain;

/// Longest pause before reconnecting after a `503` (a follower controller replica).
const NOT_LEADER_RETRY_MAX: Duration = Duration::from_secs(1);

/// Settings of a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Base URL of the controller's distribution server, `https://host:port` (a path prefix is
    /// allowed). The controller's certificate must name `host` and the controller's identity.
    pub url: String,
    /// Who this proxy is. Its cluster, region, zone and proxy id are the identity of its
    /// certificate.
    pub hello: Hello,
    /// The proxy's certificate and the CAs it trusts (the controller's); renewals are stored
    /// here, so other links of the proxy (east-west) present the same current certificate.
    pub identity: Arc<CertStore>,
    /// Credential for a first certificate when the store has none valid; `None`: the store
    /// must be given one ([`CertStore::issued`], a mounted certificate).
    pub bootstrap: Option<BootstrapCredential>,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// TCP connect bound.
    pub connect_timeout: Duration,
    /// How often [`Target::traffic`] is read and, when it changed, reported (`POST
    /// /v1/traffic`) while a stream is open. Zero disables traffic reports.
    pub traffic_interval: Duration,
    /// Announce (and apply) route-level snapshot patches; off: full snapshots and endpoint
    /// deltas only, as a client from before patches (default on).
    pub patches: bool,
}

impl ClientConfig {
    /// Defaults: backoff 100 ms doubling up to 5 s, connect timeout 2 s, traffic reports every
    /// second.
    pub fn new(
        url: impl Into<String>,
        hello: Hello,
        identity: Arc<CertStore>,
        bootstrap: Option<BootstrapCredential>,
    ) -> Self {
        Self {
            url: url.into(),
            hello,
            identity,
            bootstrap,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            traffic_interval: Duration::from_secs(1),
            patches: true,
        }
    }
}

/// The connection as the proxy sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientStatus {
    /// A stream is open and welcomed.
    pub connected: bool,
    /// Why the last stream ended or could not open; cleared by the next welcome.
    pub last_error: Option<String>,
    /// The last generation acknowledged as applied.
    pub generation: Option<u64>,
    /// Streams opened so far.
    pub connects: u64,
    /// When the proxy's current certificate expires.
    pub certificate_expiry: Option<SystemTime>,
}

/// Why a stream ended or did not open.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `https://host[:port][/prefix]`.
    #[error("invalid controller URL {url:?}: {reason}")]
    InvalidUrl {
        /// URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The controller refused our certificate or bootstrap credential (401, or 403 for a
    /// certificate request).
    #[error(
        "the controller refused our client certificate or bootstrap credential: {0} (check that \
         the proxy trusts the controller's CA (--ca-file) and that its bootstrap token \
         (--bootstrap-token-file) is for this cluster)"
    )]
    Unauthorized(String),
    /// No valid certificate and no bootstrap credential to get one.
    #[error(
        "no valid client certificate for {0} and no bootstrap credential to get one: give the \
         proxy a bootstrap token (--bootstrap-token-file) or a certificate"
    )]
    NoCredential(String),
    /// The hello cannot be a certificate's identity.
    #[error("the hello cannot name a certificate: {0}")]
    InvalidIdentity(String),
    /// Making a key or CSR, or reading the certificate the controller sent, failed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// Any other non-200 answer.
    #[error("the controller answered {status}: {body}")]
    Status {
        /// Status code.
        status: StatusCode,
        /// Body (trimmed).
        body: String,
    },
    /// Connecting or reading failed.
    #[error("controller connection failed: {0}")]
    Connection(String),
    /// Nothing arrived for too long.
    #[error("no message from the controller for {0:?}")]
    Silent(Duration),
    /// A request (a traffic report) got no answer in time.
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
    /// The server closed the stream.
    #[error("the controller closed the stream")]
    Closed,
    /// A message we cannot follow.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Follows one controller. Cheap to create; [`Client::run`] does the work.
pub struct Client {
    cfg: ClientConfig,
    base: String,
    /// The identity of the hello (and of the certificate).
    who: ProxyIdentity,
    /// Presents the store's current certificate.
    http: Https,
    /// Presents none (bootstrap).
    anon: Https,
    status: watch::Sender<ClientStatus>,
}

impl Client {
    /// Validates the URL and the identity and builds the HTTPS clients.
    pub fn new(cfg: ClientConfig) -> Result<Client, ClientError> {
        let bad = |reason: &str| ClientError::InvalidUrl {
            url: cfg.url.clone(),
            reason: reason.to_string(),
        };
        let uri: Uri = cfg
            .url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") => {
                return Err(bad(
                    "the controller speaks only TLS (mutual TLS 1.3): use https://",
                ));
            }
            _ => return Err(bad("expected https://host:port")),
        }
        let Some(authority) = uri.authority() else {
            return Err(bad("missing host"));
        };
        if uri.query().is_some() {
            return Err(bad("no query string allowed"));
        }
        let h = &cfg.hello;
        let who = ProxyIdentity::new(&h.cluster, &h.region, &h.zone, &h.proxy_id)
            .map_err(|e| ClientError::InvalidIdentity(e.to_string()))?;
        let base = format!("https://{authority}{}", uri.path().trim_end_matches('/'));
        let http = tls::https(&cfg, true)?;
        let anon = tls::https(&cfg, false)?;
        let status = ClientStatus {
            certificate_expiry: cfg.identity.credentials().map(|c| c.not_after()),
            ..ClientStatus::default()
        };
        Ok(Client {
            cfg,
            base,
            who,
            http,
            anon,
            status: watch::channel(status).0,
        })
    }

    /// The controller's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The connection status, updated as it changes.
    pub fn status(&self) -> watch::Receiver<ClientStatus> {
        self.status.subscribe()
    }

    /// Follows the controller forever: connects, applies, acknowledges, reconnects with backoff.
    pub async fn run<T: Target>(&self, target: &T) -> Infallible {
        let mut held = Held::default();
        let mut attempt: u32 = 0;
        loop {
            let err = match self.session(target, &mut held, &mut attempt).await {
                Ok(()) => ClientError::Closed,
                Err(e) => e,
            };
            match &err {
                ClientError::Unauthorized(_)
                | ClientError::NoCredential(_)
                | ClientError::Certificate(_) => {
                    tracing::error!(error = %err, "controller stream refused")
                }
                _ => {
                    tracing::warn!(error = %err, "controller stream down; serving the last good snapshot")
                }
            }
            self.set_status(target, |s| {
                s.connected = false;
                s.last_error = Some(err.to_string());
            });
            let mut delay = self.backoff(attempt);
            if matches!(&err, ClientError::Status { status, .. } if *status == StatusCode::SERVICE_UNAVAILABLE)
            {
                // A follower replica (or one starting): through a Service the next connection may
                // reach the leader, so try again soon instead of backing off to the maximum.
                delay = delay.min(NOT_LEADER_RETRY_MAX);
            }
            attempt = attempt.saturating_add(1);
            tokio::time::sleep(delay).await;
        }
    }

    /// Equal jitter: a random delay in [d/2, d] with d = initial · 2^attempt, capped.
    fn backoff(&self, attempt: u32) -> Duration {
        let d = self
            .cfg
            .backoff_initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.cfg.backoff_max);
        let half = d / 2;
        let extra = rand::rng().random_range(0..=half.as_micros().min(u128::from(u64::MAX)) as u64);
        half + Duration::from_micros(extra)
    }

    fn set_status<T: Target>(&self, target: &T, f: impl FnOnce(&mut ClientStatus)) {
        let mut next = self.status.borrow().clone();
        f(&mut next);
        // The target first: whoever watches `status()` then finds the target up to date.
        target.status(&next);
        self.status.send_if_modified(|s| {
            let changed = *s != next;
            *s = next;
            changed
        });
    }

    fn request(&self, path: &str, body: Vec<u8>) -> Result<Request<Full<Bytes>>, ClientError> {
        Request::post(format!("{}{path}", self.base))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Protocol(format!("cannot build the request: {e}")))
    }
}
