//! Who a certificate names: the mesh's trust domain, the controller, or one proxy (cluster,
//! region, zone, proxy id). Pure: no TLS library here.
//!
//! Names follow the SPIFFE convention, a URI SAN of the form
//!
//! ```text
//! spiffe://<trust domain>                                                   the mesh CA
//! spiffe://<trust domain>/controller                                        the controller
//! spiffe://<trust domain>/cluster/<c>/region/<r>/zone/<z>/proxy/<id>        one proxy
//! ```
//!
//! A proxy's certificate also carries the DNS name `<cluster>.proxy.<trust domain>`: a proxy
//! sending east-west traffic to another network asks for that name (SNI) and verifies it like
//! any host name, so it knows it reached a proxy of the cluster it meant.

use std::fmt;
use std::time::{Duration, SystemTime};

/// The trust domain when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "meridian.mesh";

/// Why a name cannot be part of an identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The trust domain is not a lowercase DNS name.
    #[error(
        "invalid trust domain {0:?}: use a lowercase DNS name (letters, digits, '-' and '.'), \
         at most 255 characters"
    )]
    TrustDomain(String),
    /// A cluster name that is no DNS label.
    #[error(
        "invalid cluster name {0:?} in an identity: use 1-63 lowercase letters, digits and '-'"
    )]
    Cluster(String),
    /// A region, zone or proxy id with characters a URI path segment cannot carry.
    #[error(
        "invalid {what} {value:?} in an identity: use 1-253 letters, digits, '.', '_', '~' and '-'"
    )]
    Segment {
        /// Which field.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// A URI that is not one of the identity forms.
    #[error("{0:?} is not a Meridian identity of this mesh")]
    Uri(String),
}

/// The mesh's trust domain: every identity URI starts with `spiffe://<it>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Validates `name` (a lowercase DNS name).
    pub fn new(name: &str) -> Result<Self, IdentityError> {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if name.is_empty() || name.len() > 255 || !name.split('.').all(label_ok) {
            return Err(IdentityError::TrustDomain(name.to_string()));
        }
        Ok(TrustDomain(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `spiffe://<trust domain>`: the CA's URI SAN.
    pub fn uri(&self) -> String {
        format!("spiffe://{}", self.0)
    }

    /// The controller's URI SAN.
    pub fn controller_uri(&self) -> String {
        format!("spiffe://{}/controller", self.0)
    }

    /// The DNS name every proxy of `cluster` carries (east-west SNI).
    pub fn cluster_dns_name(&self, cluster: &str) -> String {
        format!("{cluster}.proxy.{}", self.0)
    }

    /// The trust domain a CA names in its URI SAN `spiffe://<td>` (no path).
    pub fn from_ca_uri(uri: &str) -> Option<TrustDomain> {
        let rest = uri.strip_prefix("spiffe://")?;
        TrustDomain::new(rest).ok()
    }
}

impl Default for TrustDomain {
    fn default() -> Self {
        TrustDomain(DEFAULT_TRUST_DOMAIN.to_string())
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One proxy, as its certificate names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProxyIdentity {
    /// Member cluster (a DNS label).
    pub cluster: String,
    /// Region of that cluster.
    pub region: String,
    /// Zone the proxy runs in.
    pub zone: String,
    /// The proxy's id (its pod name in Kubernetes).
    pub proxy_id: String,
}

impl ProxyIdentity {
    /// Validates every name.
    pub fn new(
        cluster: &str,
        region: &str,
        zone: &str,
        proxy_id: &str,
    ) -> Result<Self, IdentityError> {
        if !is_dns_label(cluster) {
            return Err(IdentityError::Cluster(cluster.to_string()));
        }
        check_segment("region", region)?;
        check_segment("zone", zone)?;
        check_segment("proxy id", proxy_id)?;
        Ok(ProxyIdentity {
            cluster: cluster.to_string(),
            region: region.to_string(),
            zone: zone.to_string(),
            proxy_id: proxy_id.to_string(),
        })
    }

    /// The URI SAN naming this proxy in `td`.
    pub fn uri(&self, td: &TrustDomain) -> String {
        format!(
            "spiffe://{}/cluster/{}/region/{}/zone/{}/proxy/{}",
            td.0, self.cluster, self.region, self.zone, self.proxy_id
        )
    }
}

impl fmt::Display for ProxyIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "proxy {} of cluster {} ({}, zone {})",
            self.proxy_id, self.cluster, self.region, self.zone
        )
    }
}

/// Who is on the other end of a verified TLS link.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// The controller.
    Controller,
    /// One proxy.
    Proxy(ProxyIdentity),
}

impl Peer {
    /// Reads an identity URI of trust domain `td`.
    pub fn from_uri(uri: &str, td: &TrustDomain) -> Result<Peer, IdentityError> {
        let bad = || IdentityError::Uri(uri.to_string());
        let rest = uri
            .strip_prefix("spiffe://")
            .and_then(|r| r.strip_prefix(td.as_str()))
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(bad)?;
        if rest == "controller" {
            return Ok(Peer::Controller);
        }
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["cluster", c, "region", r, "zone", z, "proxy", id] => {
                ProxyIdentity::new(c, r, z, id).map(Peer::Proxy)
            }
            _ => Err(bad()),
        }
    }

    /// The URI SAN naming this peer in `td`.
    pub fn uri(&self, td: &TrustDomain) -> String {
        match self {
            Peer::Controller => td.controller_uri(),
            Peer::Proxy(p) => p.uri(td),
        }
    }

    /// The proxy, if this is one.
    pub fn proxy(&self) -> Option<&ProxyIdentity> {
        match self {
            Peer::Proxy(p) => Some(p),
            Peer::Controller => None,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Controller => f.write_str("the controller"),
            Peer::Proxy(p) => p.fmt(f),
        }
    }
}

/// When to renew a certificate valid from `not_before` to `not_after`: at two thirds of its
/// lifetime, so a renewal that fails has a third of the lifetime left to be retried.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    not_before + life.mul_f64(2.0 / 3.0)
}

/// A DNS-1123 label.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn check_segment(what: &'static str, value: &str) -> Result<(), IdentityError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::Segment {
            what,
            value: value.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn proxy_uris_round_trip() {
        let td = TrustDomain::new("prod.example").unwrap();
        let p = ProxyIdentity::new("us-east", "us-east-1", "us-east-1a", "gw-7f9c").unwrap();
        let uri = p.uri(&td);
        assert_eq!(
            uri,
            "spiffe://prod.example/cluster/us-east/region/us-east-1/zone/us-east-1a/proxy/gw-7f9c"
        );
        assert_eq!(Peer::from_uri(&uri, &td).unwrap(), Peer::Proxy(p));
        assert_eq!(
            Peer::from_uri(&td.controller_uri(), &td).unwrap(),
            Peer::Controller
        );
    }

    #[test]
    fn other_meshes_and_odd_uris_are_not_identities() {
        let td = TrustDomain::new("prod.example").unwrap();
        let other = TrustDomain::new("prod.example.evil").unwrap();
        assert!(Peer::from_uri(&other.controller_uri(), &td).is_err());
        for uri in [
            "spiffe://prod.example",
            "spiffe://prod.example/",
            "spiffe://prod.example/controller/x",
            "spiffe://prod.example/cluster/a/region/r/zone/z/proxy/../x",
            "spiffe://prod.example/cluster/A/region/r/zone/z/proxy/p",
            "spiffe://prod.example/cluster/a/region/r/zone/z/proxy/p/extra",
            "https://prod.example/controller",
        ] {
            assert!(Peer::from_uri(uri, &td).is_err(), "{uri}");
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(TrustDomain::new("Meridian.mesh").is_err());
        assert!(TrustDomain::new("").is_err());
        assert!(TrustDomain::new("a..b").is_err());
        assert!(ProxyIdentity::new("us_east", "r", "z", "p").is_err());
        assert!(ProxyIdentity::new("us-east", "r", "z", "p/q").is_err());
        assert!(ProxyIdentity::new("us-east", "r", "", "p").is_err());
        assert_eq!(
            TrustDomain::from_ca_uri("spiffe://meridian.mesh"),
            Some(TrustDomain::default())
        );
        assert_eq!(TrustDomain::from_ca_uri("spiffe://meridian.mesh/x"), None);
    }

    #[test]
    fn renewal_is_due_at_two_thirds() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let at = renew_at(t0, t0 + Duration::from_secs(3000));
        assert_eq!(at, t0 + Duration::from_secs(2000));
        assert_eq!(renew_at(t0, t0 - Duration::from_secs(1)), t0);
    }
}
