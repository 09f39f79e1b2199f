//! The words the controller and the data plane share about one Gateway: which Gateway
//! ([`GatewayRef`]) and whether the proxies serve what the controller published for it
//! ([`ProgrammedState`]).
//!
//! ```text
//!  proxy --gateway ns/name ─► GatewayRef ─► Hello.gateways (wire: {"namespace","name"})
//!  distribution server: acks of the proxies serving a GatewayRef ─► ProgrammedState
//!  controller: (cluster, GatewayRef) ─► ProgrammedState ─► Gateway `Programmed` condition
//! ```
//!
//! Both types are defined once, here, because the controller, the distribution layer and the
//! proxy all speak them; none of those crates needs another's types to name a Gateway.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A Gateway within one member cluster: its namespace and name. On the wire (a proxy's hello) it
/// is `{"namespace": …, "name": …}`; on a command line and in logs, `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRef {
    /// Namespace of the Gateway.
    pub namespace: String,
    /// Name of the Gateway.
    pub name: String,
}

impl GatewayRef {
    /// A reference to Gateway `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// Why a `namespace/name` text is not a [`GatewayRef`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("expected NAMESPACE/NAME, got {0:?}")]
pub struct ParseGatewayRefError(
    /// The text given.
    pub String,
);

impl FromStr for GatewayRef {
    type Err = ParseGatewayRefError;

    /// Parses `namespace/name`: both parts non-empty, exactly one `/`.
    fn from_str(s: &str) -> Result<Self, ParseGatewayRefError> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(GatewayRef::new(ns, name))
            }
            _ => Err(ParseGatewayRefError(s.to_string())),
        }
    }
}

impl fmt::Display for GatewayRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Whether the data plane serves a generation of a cluster's snapshot (for all of the cluster,
/// or for the proxies serving one Gateway). The distribution server answers with every variant
/// but [`ProgrammedState::Unknown`], which only the controller's data-plane adapter says (see
/// there); the controller turns each into the Gateway's `Programmed` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProgrammedState {
    /// No connected proxy serves it: `Programmed=False/NoResources`.
    NoProxy,
    /// Sent, but some connected proxies have not acknowledged it yet:
    /// `Programmed=False/Pending`.
    Pending {
        /// Ids of the proxies still applying it, sorted (empty when the data plane does not
        /// say, e.g. before anything was published).
        waiting: Vec<String>,
    },
    /// Every connected proxy serving it acknowledged this generation (or a newer one):
    /// `Programmed=True/Programmed`. The generation is not written into the condition, so a new
    /// snapshot does not cause a status write for every Gateway.
    Applied(u64),
    /// A connected proxy refused it and has not applied a newer one since:
    /// `Programmed=False/Invalid` with the refusal as message.
    Refused(ProxyRefusal),
    /// The data plane cannot tell yet: the controller (re)started and the proxies have not
    /// reconnected within the data plane's reconnect grace. The Gateway keeps the `Programmed`
    /// condition and the addresses its status already has (and stays in the snapshot on those
    /// addresses); without them it is `Programmed=False/Pending`.
    Unknown,
}

impl ProgrammedState {
    /// [`ProgrammedState::Pending`] without naming the proxies.
    pub fn pending() -> Self {
        ProgrammedState::Pending {
            waiting: Vec::new(),
        }
    }
}

/// A Gateway nothing is known about yet is waiting for its proxies.
impl Default for ProgrammedState {
    fn default() -> Self {
        Self::pending()
    }
}

/// Which proxy refused a generation, and why. Displayed as `proxy ID: REASON`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyRefusal {
    /// The proxy (the id of its hello); the smallest id when several refused.
    pub proxy_id: String,
    /// The proxy's reason.
    pub reason: String,
}

impl ProxyRefusal {
    /// Proxy `proxy_id` refused for `reason`.
    pub fn new(proxy_id: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            proxy_id: proxy_id.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ProxyRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proxy {}: {}", self.proxy_id, self.reason)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn gateway_refs_parse() {
        let g: GatewayRef = "ns/gw".parse().unwrap();
        assert_eq!(g, GatewayRef::new("ns", "gw"));
        assert_eq!(g.to_string(), "ns/gw");
        assert!("gw".parse::<GatewayRef>().is_err());
        assert!("/gw".parse::<GatewayRef>().is_err());
        assert!("ns/".parse::<GatewayRef>().is_err());
        assert_eq!(
            "a/b/c".parse::<GatewayRef>().unwrap_err().to_string(),
            r#"expected NAMESPACE/NAME, got "a/b/c""#
        );
    }

    #[test]
    fn gateway_refs_travel_as_namespace_and_name() {
        let g = GatewayRef::new("ns", "gw");
        let text = serde_json::to_string(&g).unwrap();
        assert_eq!(text, r#"{"namespace":"ns","name":"gw"}"#);
        assert_eq!(serde_json::from_str::<GatewayRef>(&text).unwrap(), g);
    }

    #[test]
    fn refusals_name_the_proxy_and_nothing_known_is_pending() {
        assert_eq!(
            ProxyRefusal::new("p-1", "bind failed").to_string(),
            "proxy p-1: bind failed"
        );
        assert_eq!(
            ProgrammedState::default(),
            ProgrammedState::Pending { waiting: vec![] }
        );
    }
}
