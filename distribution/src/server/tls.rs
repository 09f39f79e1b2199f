//! The server's TLS: its own certificate, the handshake of every connection, and why
//! handshakes fail.
//!
//! ```text
//! start ─► Ca::issue_server(Peer::Controller, names, ttl) ─► SslAcceptor ─► Inner::tls
//!   renew_server_certificate: every 2/3 ttl ─► a new certificate ─► Inner::tls swapped
//!   (new connections get it; open ones keep theirs: TLS never looks at a certificate again)
//! accept ─► handshake (≤ 10 s, TLS 1.3 only, client certificate optional) ─► verified Peer?
//!            └─ fails ─► meridian_distribution_tls_handshake_failures_total{reason}
//! ```
//!
//! Client certificates are optional at the TLS level: a proxy without one yet must reach
//! `POST /v1/certificate` to bootstrap. Every other `/v1/*` endpoint refuses a connection
//! without a verified proxy certificate (module `http`). A certificate that *is* presented must
//! verify against the mesh CA, or the handshake fails (a certificate of another mesh).
//!
//! A connection is authenticated once, at its handshake: it keeps the identity of the
//! certificate it was opened with until it closes, even past that certificate's expiry (a
//! stream outlives renewals by design; idle pooled connections of the client close after 90 s).
//!
//! The server issues no session tickets: a resumed session would carry the identity of the
//! connection it came from, and a proxy's first connection (bootstrap) has none.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use openssl::ssl::{Ssl, SslAcceptor};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_openssl::SslStream;

use super::{Inner, ServerNames};
use crate::metrics::Metrics;
use crate::pki::{Ca, ClientCerts, Peer, PkiError, server_builder};

/// Longest a client may take to finish the TLS handshake.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The names of the server's certificate: the configured ones, the bound IP (unless it is
/// unspecified), `localhost` and `127.0.0.1`; deduplicated.
pub(super) fn server_names(names: &ServerNames, bound: SocketAddr) -> ServerNames {
    let mut dns = names.dns.clone();
    dns.push("localhost".into());
    let mut ips = names.ips.clone();
    ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    if !bound.ip().is_unspecified() {
        ips.push(bound.ip());
    }
    dns.sort();
    dns.dedup();
    ips.sort();
    ips.dedup();
    ServerNames { dns, ips }
}

/// A new server certificate for `names` valid for `ttl`, as the TLS settings of new
/// connections; records its expiry in the metrics.
pub(super) fn acceptor(
    ca: &Ca,
    names: &ServerNames,
    ttl: Duration,
    metrics: &Metrics,
) -> Result<SslAcceptor, PkiError> {
    let creds = ca.issue_server(&Peer::Controller, &names.dns, &names.ips, ttl)?;
    let mut b = server_builder(&creds, &ca.bundle(), ClientCerts::Optional)?;
    // No resumption: see the module docs.
    b.set_num_tickets(0).map_err(|source| PkiError::OpenSsl {
        what: "TLS session tickets".into(),
        source,
    })?;
    let expiry = creds
        .not_after()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    metrics.server_cert_expiry.set(expiry);
    Ok(b.build())
}

/// Renews the server's certificate two thirds into each lifetime until `stop` fires. A failed
/// renewal (it should not fail: the CA is in memory) is retried every tenth of the lifetime,
/// while the current certificate still serves.
pub(super) async fn renew_server_certificate(
    inner: Arc<Inner>,
    names: ServerNames,
    ttl: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut wait = ttl.mul_f64(2.0 / 3.0);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(wait) => {}
        }
        match acceptor(&inner.ca, &names, ttl, &inner.metrics) {
            Ok(a) => {
                inner.tls.store(Arc::new(a));
                inner.metrics.server_cert_renewals.inc();
                tracing::info!(valid_for = ?ttl, "distribution server certificate renewed");
                wait = ttl.mul_f64(2.0 / 3.0);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot renew the distribution server certificate; retrying");
                wait = ttl / 10;
            }
        }
    }
}

/// The TLS handshake of one accepted connection with the current certificate; the error is
/// the failure's metric label.
pub(super) async fn handshake(
    inner: &Inner,
    tcp: TcpStream,
) -> Result<SslStream<TcpStream>, &'static str> {
    let acceptor = inner.tls.load_full();
    let ssl = Ssl::new(acceptor.context()).map_err(|_| "other")?;
    let mut stream = SslStream::new(ssl, tcp).map_err(|_| "other")?;
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, Pin::new(&mut stream).accept()).await {
        Err(_) => Err("timeout"),
        Ok(Err(e)) => Err(failure_reason(&e)),
        Ok(Ok(())) => Ok(stream),
    }
}

/// The metric label of a failed handshake, from OpenSSL's error. A small fixed set:
/// `no-tls` (plain HTTP or garbage), `protocol` (TLS below 1.3, no common cipher),
/// `bad-certificate` (a client certificate that does not verify, or the client refusing ours),
/// `closed` (the client went away), `other`.
pub(super) fn failure_reason(e: &openssl::ssl::Error) -> &'static str {
    let reasons: Vec<String> = e
        .ssl_error()
        .map(|stack| {
            stack
                .errors()
                .iter()
                .filter_map(|x| x.reason().map(str::to_ascii_lowercase))
                .collect()
        })
        .unwrap_or_default();
    reason_label(&reasons, e.io_error().is_some())
}

/// [`failure_reason`] on OpenSSL's reason strings (pure, for tests).
fn reason_label(reasons: &[String], io: bool) -> &'static str {
    let any = |needles: &[&str]| {
        reasons
            .iter()
            .any(|r| needles.iter().any(|n| r.contains(n)))
    };
    if any(&[
        "http request",
        "wrong version number",
        "packet length too long",
        "https proxy request",
    ]) {
        "no-tls"
    } else if any(&[
        "unsupported protocol",
        "no protocols available",
        "version too low",
        "protocol version",
        "no shared cipher",
    ]) {
        "protocol"
    } else if any(&["certificate", "unknown ca", "bad certificate"]) {
        "bad-certificate"
    } else if io || any(&["unexpected eof"]) || reasons.is_empty() {
        "closed"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_names_the_bound_ip_and_localhost() {
        let names = ServerNames {
            dns: vec!["ctl.example".into(), "localhost".into()],
            ips: vec![],
        };
        let n = server_names(
            &names,
            "10.1.2.3:7000".parse().unwrap_or_else(|_| unreachable!()),
        );
        assert_eq!(n.dns, ["ctl.example", "localhost"]);
        assert_eq!(
            n.ips,
            [IpAddr::from([10, 1, 2, 3]), IpAddr::from([127, 0, 0, 1])]
        );
        let n = server_names(
            &ServerNames::default(),
            "0.0.0.0:7000".parse().unwrap_or_else(|_| unreachable!()),
        );
        assert_eq!(n.ips, [IpAddr::from([127, 0, 0, 1])]);
    }

    #[test]
    fn failures_get_a_label_of_a_fixed_set() {
        let r = |s: &str| vec![s.to_string()];
        assert_eq!(reason_label(&r("http request"), false), "no-tls");
        assert_eq!(reason_label(&r("wrong version number"), false), "no-tls");
        assert_eq!(reason_label(&r("unsupported protocol"), false), "protocol");
        assert_eq!(
            reason_label(&r("certificate verify failed"), false),
            "bad-certificate"
        );
        assert_eq!(
            reason_label(&r("tlsv1 alert unknown ca"), false),
            "bad-certificate"
        );
        assert_eq!(
            reason_label(&r("unexpected eof while reading"), false),
            "closed"
        );
        assert_eq!(reason_label(&[], true), "closed");
        assert_eq!(reason_label(&r("something new"), false), "other");
    }
}
