//! What a proxy's certificate lets it say. Pure: the rules, no I/O.
//!
//! ```text
//! verified client certificate ─► Peer::Proxy(identity)?  no ─► 401 (a proxy certificate is needed)
//! hello ─► cluster, region, zone, proxyId = the certificate's?            no ─► 403 reason
//!       ─► address: a concrete IP (not unspecified, multicast, broadcast) or a host name,
//!          and AddressPolicy::allows(cluster, address)?                     no ─► 403 address
//!       ─► eastWest on the proxy's own host?                                no ─► 403 east-west
//! ack, traffic ─► proxyId = the certificate's?                              no ─► 403 proxy-id
//! ```
//!
//! # The east-west rule
//!
//! Other proxies send user traffic to the `eastWest` address a hello names, so a proxy may only
//! name a listener on its own host. The server accepts it when its IP
//!
//! - equals the IP the proxy's connection comes from (the proxy reaches the controller directly),
//! - or both are loopback (everything on one machine, `meridian up`),
//! - or the cluster's address policy allows it (a LoadBalancer address in front of the
//!   cluster's proxies: the connection then comes from another IP, e.g. through NAT).
//!
//! Behind NAT without a pool entry, the listener must be published through the pool.

use std::net::IpAddr;

use super::admission::AddressPolicy;
use crate::pki::{Peer, ProxyIdentity};
use crate::protocol::Hello;

/// Why a request is refused: the status's reason, a fixed metric label and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Forbidden {
    /// Metric label.
    pub(super) reason: &'static str,
    /// What to tell the proxy.
    pub(super) message: String,
}

fn forbidden(reason: &'static str, message: String) -> Forbidden {
    Forbidden { reason, message }
}

/// The proxy a verified certificate names; `Err` is the `401` message.
pub(super) fn proxy_of(peer: Option<&Peer>) -> Result<&ProxyIdentity, &'static str> {
    match peer {
        Some(Peer::Proxy(p)) => Ok(p),
        Some(Peer::Controller) => Err(
            "the controller's certificate is not a proxy's: /v1/stream, /v1/ack and /v1/traffic \
             need the client certificate of a Meridian proxy\n",
        ),
        None => Err(
            "a client certificate is needed: /v1/stream, /v1/ack and /v1/traffic need the \
             client certificate of a Meridian proxy (get one with POST /v1/certificate)\n",
        ),
    }
}

/// Whether proxy `who`, connected from `from`, may say `hello` (already checked for syntax).
pub(super) fn authorize_hello(
    who: &ProxyIdentity,
    hello: &Hello,
    from: IpAddr,
    policy: &dyn AddressPolicy,
) -> Result<(), Forbidden> {
    let fields = [
        ("cluster", &hello.cluster, &who.cluster),
        ("region", &hello.region, &who.region),
        ("zone", &hello.zone, &who.zone),
        ("proxy-id", &hello.proxy_id, &who.proxy_id),
    ];
    for (reason, said, cert) in fields {
        if said != cert {
            return Err(forbidden(
                reason,
                format!("hello names {reason} {said:?} but the client certificate {cert:?}"),
            ));
        }
    }
    if let Some(a) = &hello.address {
        check_address(a)?;
        if !policy.allows(&who.cluster, a) {
            return Err(forbidden(
                "address",
                format!(
                    "address {a:?} is not in the address pool of cluster {:?}",
                    who.cluster
                ),
            ));
        }
    }
    if let Some(ew) = &hello.east_west {
        // check_hello made sure it parses.
        let ip = ew
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip())
            .map_err(|_| forbidden("east-west", format!("eastWest {ew:?} is not IP:PORT")))?;
        let own = ip == from
            || (ip.is_loopback() && from.is_loopback())
            || policy.allows(&who.cluster, &ip.to_string());
        if !own {
            return Err(forbidden(
                "east-west",
                format!(
                    "eastWest {ew:?} is not on this proxy's host (its connection comes from \
                     {from}) nor in the address pool of cluster {:?}",
                    who.cluster
                ),
            ));
        }
    }
    Ok(())
}

/// A Gateway address: a concrete IP or a host name.
fn check_address(a: &str) -> Result<(), Forbidden> {
    let bad = |why: &str| forbidden("address", format!("address {a:?}: {why}"));
    match a.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() => Err(bad("an unspecified IP is no address")),
        Ok(ip) if ip.is_multicast() => Err(bad("a multicast IP is no Gateway address")),
        Ok(IpAddr::V4(v4)) if v4.is_broadcast() => Err(bad("a broadcast IP is no Gateway address")),
        Ok(_) => Ok(()),
        Err(_) => {
            let host_ok = !a.is_empty()
                && a.len() <= 253
                && a.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                });
            if host_ok {
                Ok(())
            } else {
                Err(bad("expected an IP address or a DNS host name"))
            }
        }
    }
}

/// Whether a request body naming `proxy_id` comes from that proxy.
pub(super) fn same_proxy(who: &ProxyIdentity, proxy_id: &str) -> Result<(), Forbidden> {
    if who.proxy_id == proxy_id {
        Ok(())
    } else {
        Err(forbidden(
            "proxy-id",
            format!(
                "proxyId {proxy_id:?} is not this proxy: the client certificate names {:?}",
                who.proxy_id
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::server::admission::AnyAddress;

    struct Pool;
    impl AddressPolicy for Pool {
        fn allows(&self, cluster: &str, address: &str) -> bool {
            cluster == "east" && (address.starts_with("10.0.10.") || address == "lb.example")
        }
    }

    fn who() -> ProxyIdentity {
        ProxyIdentity::new("east", "us-east-1", "a", "p1").unwrap()
    }

    fn hello() -> Hello {
        Hello {
            proxy_id: "p1".into(),
            cluster: "east".into(),
            region: "us-east-1".into(),
            zone: "a".into(),
            gateways: None,
            address: None,
            east_west: None,
        }
    }

    fn reason(h: &Hello, from: &str, policy: &dyn AddressPolicy) -> Option<&'static str> {
        authorize_hello(&who(), h, from.parse().unwrap(), policy)
            .err()
            .map(|f| f.reason)
    }

    #[test]
    fn a_hello_must_name_the_certificate() {
        assert_eq!(reason(&hello(), "10.1.1.1", &AnyAddress), None);
        for (field, want) in [
            ("cluster", "cluster"),
            ("region", "region"),
            ("zone", "zone"),
            ("id", "proxy-id"),
        ] {
            let mut h = hello();
            match field {
                "cluster" => h.cluster = "west".into(),
                "region" => h.region = "eu".into(),
                "zone" => h.zone = "b".into(),
                _ => h.proxy_id = "p2".into(),
            }
            assert_eq!(reason(&h, "10.1.1.1", &AnyAddress), Some(want), "{field}");
        }
    }

    #[test]
    fn addresses_are_concrete_and_in_the_pool() {
        let with = |a: &str| Hello {
            address: Some(a.into()),
            ..hello()
        };
        for bad in [
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "255.255.255.255",
            "a b",
            "-x.example",
            "",
        ] {
            assert_eq!(
                reason(&with(bad), "10.1.1.1", &AnyAddress),
                Some("address"),
                "{bad}"
            );
        }
        assert_eq!(
            reason(&with("gw.example.com"), "10.1.1.1", &AnyAddress),
            None
        );
        assert_eq!(reason(&with("10.0.10.7"), "10.1.1.1", &Pool), None);
        assert_eq!(reason(&with("lb.example"), "10.1.1.1", &Pool), None);
        assert_eq!(
            reason(&with("10.0.11.7"), "10.1.1.1", &Pool),
            Some("address")
        );
    }

    #[test]
    fn east_west_is_on_the_proxys_own_host() {
        let with = |a: &str| Hello {
            east_west: Some(a.into()),
            ..hello()
        };
        assert_eq!(reason(&with("10.1.1.1:15443"), "10.1.1.1", &Pool), None);
        assert_eq!(reason(&with("127.0.0.1:15443"), "127.0.0.1", &Pool), None);
        assert_eq!(
            reason(&with("[::1]:15443"), "127.0.0.1", &Pool),
            None,
            "both loopback"
        );
        assert_eq!(
            reason(&with("10.0.10.9:15443"), "192.168.1.1", &Pool),
            None,
            "pool"
        );
        assert_eq!(
            reason(&with("10.9.9.9:15443"), "10.1.1.1", &Pool),
            Some("east-west")
        );
        assert_eq!(
            reason(&with("127.0.0.1:15443"), "10.1.1.1", &Pool),
            Some("east-west"),
            "loopback of another host"
        );
    }

    #[test]
    fn only_proxy_certificates_and_own_ids() {
        assert!(
            proxy_of(None)
                .unwrap_err()
                .contains("client certificate is needed")
        );
        assert!(
            proxy_of(Some(&Peer::Controller))
                .unwrap_err()
                .contains("controller")
        );
        let p = Peer::Proxy(who());
        assert_eq!(proxy_of(Some(&p)).unwrap(), &who());
        assert!(same_proxy(&who(), "p1").is_ok());
        assert_eq!(same_proxy(&who(), "p2").unwrap_err().reason, "proxy-id");
    }
}
