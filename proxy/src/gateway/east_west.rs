//! Both ends of an east-west hop (multi-network clusters).
//!
//! ```text
//! sender proxy (cluster A)                           receiver proxy (cluster B)
//! try at endpoint {east_west, cluster B} ──TLS 1.3──► east-west listener (listeners.rs)
//!   client certificate: A's current one (CertStore)     requires a client certificate of the
//!   trusts: the mesh bundle only                         mesh CA naming a proxy of a cluster
//!   SNI + host name: B.proxy.<trust domain>              other than B (else the handshake fails,
//!   handshake failed ─► failed try, next endpoint        counted by reason)
//!   x-meridian-backend: <backend> ─────────────────────► EastWestProxy::request_filter
//!                                                        unknown backend: 404 "not found"
//! ```
//!
//! Who may talk is settled by the TLS handshake (mesh.rs) before any request is read: the
//! listener admits only proxies of other clusters of the same mesh, and the sender knows it
//! reached a proxy of the cluster its snapshot says the endpoint is in. Certificates are read
//! from the proxy's `CertStore` per connection, so a renewal takes effect on the next handshake.
//!
//! Receiver: [`EastWestProxy`] serves the east-west listener, where proxies of other networks
//! name a backend of this proxy's snapshot (`Snapshot.east_west`) in `x-meridian-backend`. Each
//! such backend is a one-backend rule ([`east_west_rules`]), so after `request_filter` the
//! request takes the [`Forwarder`]'s path like a routed one; its Gateway entry (the listener's
//! own traffic counters) always adds `x-meridian-served-by`. A name it does not serve gets a
//! plain 404 whose body names nothing (neither the name asked for nor any that exists).
//!
//! Sender: a try at an endpoint marked `east_west` (a remote proxy's east-west listener) from
//! either proxy, over mutual TLS (`Forwarder::upstream_peer`, upstream.rs). The [`Forwarder`]
//! names the backend on the hop (`upstream_request_filter`), takes the remote proxy's served-by
//! as the real endpoint ([`take_remote_served_by`]) and treats a response the remote proxy made
//! itself as a failed try ([`Forwarder::east_west_refusal`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use meridian_model::router::CompiledRule;
use meridian_model::snapshot::{Backend, BackendTarget, EastWestBackend, Endpoint, Rule};
use meridian_model::traffic::FailureKind;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};

use super::ctx::{Ctx, Outcome, Target, Upstream};
use super::{
    BACKEND_HEADER, Downstream, EAST_WEST, Forwarder, Role, SERVED_BY_HEADER, refuse_loop,
    refuse_malformed, respond, respond_text,
};
use crate::drain::BackendDrain;
use crate::endpoints;
use crate::state::Shared;

/// The proxy of the east-west listener: serves the backend a request names.
pub struct EastWestProxy {
    fwd: Forwarder,
}

impl EastWestProxy {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        EastWestProxy {
            fwd: Forwarder { shared },
        }
    }

    /// The served snapshot's east-west backend `name` (as a rule) and its drain view.
    fn lookup(&self, name: &str) -> Option<(Arc<CompiledRule>, Option<Arc<BackendDrain>>)> {
        let served = self.fwd.shared.served.load();
        let served = served.as_ref()?;
        let rule = served.east_west.get(name)?.clone();
        Some((rule, served.gateways.east_west_drain(name)))
    }

    /// The backend the request names (400 without, a 404 naming nothing when the served
    /// snapshot has no such east-west backend), its drain view (503 when every ready endpoint is drained), then the
    /// [`Forwarder`]'s path.
    async fn serve_named(&self, session: &mut impl Downstream, ctx: &mut Ctx) -> Result<bool> {
        let name = match named_backend(session.req_header()) {
            Ok(name) => name.to_string(),
            Err(why) => return respond_text(session, 400, why.to_string()).await,
        };
        let found = self
            .lookup(&name)
            .filter(|_| ctx.routing.listener.is_some());
        let Some((rule, drain)) = found else {
            // Names nothing: the body must not tell a prober which names exist or echo its own.
            tracing::debug!(backend = %name, "east-west request for a backend not served here");
            return respond_text(session, 404, "not found\n".to_string()).await;
        };
        session.req_header_mut().remove_header(BACKEND_HEADER);
        ctx.routing.rule = Some(rule.clone());
        let Some(BackendTarget::Endpoints {
            endpoints,
            failover,
            ..
        }) = rule.rule.backends.first().map(|b| &b.target)
        else {
            ctx.fail(FailureKind::Other);
            return respond(session, 500).await;
        };
        if let Err((code, why)) = servable(endpoints, drain.as_deref()) {
            ctx.fail(FailureKind::NoEndpoint);
            return match why {
                Some(why) => respond_text(session, code, why.to_string()).await,
                None => respond(session, code).await,
            };
        }
        let target = Target {
            rule: rule.clone(),
            index: 0,
            drain,
        };
        ctx.upstream = Some(self.fwd.start(target, endpoints, failover.as_ref()));
        Ok(false)
    }
}

/// Whether the backend's endpoints can serve here: a 503 (and the reason to tell the sender,
/// if any) when none is ready or a drill drains every ready one.
fn servable(
    endpoints: &[Endpoint],
    drain: Option<&BackendDrain>,
) -> std::result::Result<(), (u16, Option<&'static str>)> {
    if endpoints::ready_count(endpoints) == 0 {
        return Err((503, None));
    }
    // A drill's drain in this proxy's snapshot holds here too: the sender only drained this
    // proxy's own east-west endpoint, by this proxy's locality (see drain.rs for the scope).
    if let Some(d) = drain
        && endpoints
            .iter()
            .filter(|e| e.ready)
            .all(|e| d.is_drained(&SocketAddr::new(e.address, e.port)))
    {
        // No x-meridian-served-by: the sender ejects this proxy for the backend and a safe
        // request fails over elsewhere.
        return Err((
            503,
            Some("every ready endpoint of this backend here is drained by a failover drill\n"),
        ));
    }
    Ok(())
}

/// The backend a request on the east-west listener names, or why it names none (400).
fn named_backend(req: &RequestHeader) -> std::result::Result<&str, &'static str> {
    let mut values = req.headers.get_all(BACKEND_HEADER).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return Err(if req.headers.contains_key(BACKEND_HEADER) {
            "more than one x-meridian-backend header\n"
        } else {
            "x-meridian-backend is required: this is a Meridian east-west listener, which serves \
             proxies of other networks the backend they name\n"
        });
    };
    match v.to_str() {
        Ok(name) if !name.trim().is_empty() => Ok(name.trim()),
        Ok(_) => Err("x-meridian-backend is empty\n"),
        Err(_) => Err("x-meridian-backend is not visible ASCII text\n"),
    }
}

/// The snapshot's east-west backends as one-backend rules, so a request on the east-west listener
/// runs the same upstream path (choice, retries, ejection, counters) as a routed one. No
/// timeouts and no retry policy of their own: the sending proxy's rule bounds the request, and
/// connect failover comes from the backend's failover policy as for any backend.
pub(crate) fn east_west_rules(backends: &[EastWestBackend]) -> HashMap<String, Arc<CompiledRule>> {
    backends
        .iter()
        .map(|b| {
            let rule = CompiledRule {
                route_namespace: EAST_WEST.to_string(),
                route_name: b.name.clone(),
                route_label: format!("{EAST_WEST}/{}", b.name),
                index: 0,
                rule: Rule {
                    backends: vec![Backend {
                        name: b.name.clone(),
                        weight: 1,
                        filters: Vec::new(),
                        target: BackendTarget::Endpoints {
                            protocol: b.protocol,
                            endpoints: b.endpoints.clone(),
                            failover: b.failover.as_deref().cloned(),
                        },
                        tls: None,
                    }],
                    ..Rule::default()
                },
                cumulative_weights: vec![1],
            };
            (b.name.clone(), Arc::new(rule))
        })
        .collect()
}

/// Sender side: keeps the `x-meridian-served-by` of a response from an east-west hop as where
/// the request was really served; `false` when it has none (the remote proxy answered itself).
pub(super) fn take_remote_served_by(up: &mut Upstream, resp: &ResponseHeader) -> bool {
    let Some(t) = up.current.as_mut() else {
        return false;
    };
    t.remote_served_by = resp
        .headers
        .get(SERVED_BY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    t.remote_served_by.is_some()
}

impl Forwarder {
    /// Sender side: a response from an east-west hop without `x-meridian-served-by`, the remote
    /// proxy answered itself. A 404 (it does not serve the backend, e.g. its snapshot is older)
    /// or a 5xx (no endpoint of the backend there, or none that answered) means this endpoint
    /// cannot serve this backend now: it is ejected for this backend only, and a safe request
    /// moves on to another endpoint as after a connect failure (same allowance and retry
    /// budget). A response that cannot move on goes to the client, counted as not served by an
    /// endpoint; a 404 becomes a 503, as the client's route does exist.
    pub(super) fn east_west_refusal(
        &self,
        session: &impl Downstream,
        resp: &mut ResponseHeader,
        up: &mut Upstream,
        outcome: &mut Outcome,
        code: u16,
    ) -> Result<()> {
        if code != 404 && code < 500 {
            return Ok(());
        }
        if let Some(t) = &up.current
            && self.shared.ejections.eject(t.key)
        {
            self.shared.metrics.ejections.inc();
            tracing::info!(
                endpoint = %t.key,
                status = code,
                "east-west endpoint ejected: the remote proxy cannot serve the backend"
            );
        }
        if session.req_header().method.is_idempotent() && self.failover(up) {
            // Our own retry marker, as for a listed status.
            up.status_retry = true;
            let mut e = Error::explain(
                ErrorType::HTTPStatus(code),
                "the remote proxy cannot serve the backend",
            );
            e.set_retry(true);
            return Err(e);
        }
        outcome.failure = Some(match code {
            504 => FailureKind::Timeout,
            404 | 503 => FailureKind::NoEndpoint,
            _ => FailureKind::Other,
        });
        if code == 404 {
            resp.set_status(503)?;
        }
        Ok(())
    }
}

impl Role for EastWestProxy {
    fn forwarder(&self) -> &Forwarder {
        &self.fwd
    }

    async fn request_filter(&self, session: &mut impl Downstream, ctx: &mut Ctx) -> Result<bool> {
        self.fwd.begin(session, ctx);
        if let Some(side) = &self.fwd.shared.east_west {
            ctx.routing.listener = Some(side.listener.clone());
            ctx.routing.gateway = Some(side.gateway.clone());
        }
        if let Some(answered) = refuse_malformed(session, "east-west request refused").await? {
            return Ok(answered);
        }
        if let Some(answered) = refuse_loop(session, &self.fwd.shared.edge).await? {
            return Ok(answered);
        }
        self.serve_named(session, ctx).await
    }

    fn listener_label<'c>(&self, _ctx: &'c Ctx) -> &'c str {
        EAST_WEST
    }
}

forwarding_proxy!(EastWestProxy);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use meridian_model::snapshot::BackendProtocol;

    use super::*;

    fn req(values: &[&str]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for v in values {
            r.append_header(BACKEND_HEADER, *v).unwrap();
        }
        r
    }

    #[test]
    fn an_east_west_request_names_exactly_one_backend() {
        assert_eq!(named_backend(&req(&["ns/a:80"])), Ok("ns/a:80"));
        assert_eq!(named_backend(&req(&[" ns/a:80 "])), Ok("ns/a:80"));
        assert!(named_backend(&req(&[])).unwrap_err().contains("required"));
        assert!(
            named_backend(&req(&["a", "b"]))
                .unwrap_err()
                .contains("more than one")
        );
        assert!(named_backend(&req(&[" "])).unwrap_err().contains("empty"));
    }

    #[test]
    fn east_west_backends_become_one_backend_rules() {
        let backends: Vec<EastWestBackend> = serde_json::from_value(serde_json::json!([
            {"name": "ns/a:80", "protocol": "h2c",
             "endpoints": [{"address": "10.0.0.1", "port": 8080}],
             "failover": {"regionOrder": ["eu"]}},
        ]))
        .unwrap();
        let rules = east_west_rules(&backends);
        let rule = &rules["ns/a:80"];
        assert_eq!(rule.route_name, "ns/a:80");
        let (idx, b) = rule.pick_backend(12345).unwrap();
        assert_eq!((idx, b.name.as_str()), (0, "ns/a:80"));
        match &b.target {
            BackendTarget::Endpoints {
                protocol,
                endpoints,
                failover,
            } => {
                assert_eq!(*protocol, BackendProtocol::H2c);
                assert_eq!(endpoints.len(), 1);
                assert_eq!(failover.as_ref().unwrap().region_order, ["eu"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(rule.rule.retry.is_none() && rule.rule.timeouts.request_ms.is_none());
    }
}
