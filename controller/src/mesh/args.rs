//! The mesh identity flags of `meridian controller`, flattened into
//! [`ControllerArgs`](crate::ControllerArgs) as its `mesh` field.
//!
//! ```text
//! --ca-secret NS/NAME              (default: <controller namespace>/meridian-ca)
//! --trust-domain DOMAIN            (default: meridian.mesh)               ─► resolve() ─► MeshConfig
//! --proxy-service-account NS/NAME  (repeat; default meridian-system/meridian-proxy)
//! ```

use std::fmt;
use std::str::FromStr;

use meridian_distribution::pki::{DEFAULT_TRUST_DOMAIN, TrustDomain};

use super::{DEFAULT_CA_SECRET, DEFAULT_PROXY_SERVICE_ACCOUNT};

/// A mesh flag that cannot be used. Each message names the flag and the form it wants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshArgsError {
    /// Not `NAMESPACE/NAME`.
    #[error("{flag} {value:?}: expected NAMESPACE/NAME, e.g. {example}")]
    Form {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
        /// A value of the right form.
        example: &'static str,
    },
    /// A namespace that is no DNS label.
    #[error(
        "{flag} {value:?}: namespace {namespace:?} is invalid: use 1-63 lowercase letters, \
         digits and '-', starting and ending with a letter or digit"
    )]
    Namespace {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
        /// The namespace part.
        namespace: String,
    },
    /// A name that is no DNS subdomain.
    #[error(
        "{flag} {value:?}: name {name:?} is invalid: use at most 253 lowercase letters, digits, \
         '-' and '.', starting and ending with a letter or digit"
    )]
    Name {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
        /// The name part.
        name: String,
    },
    /// `--proxy-service-account` names one account twice.
    #[error("--proxy-service-account {0} is given twice")]
    AccountTwice(String),
}

/// `NAMESPACE/NAME` of a namespaced object (the CA Secret, a proxy ServiceAccount).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceAccountRef {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ServiceAccountRef {
    /// Parses `NAMESPACE/NAME` for `flag` (which names it in errors).
    pub fn parse_for(
        flag: &'static str,
        example: &'static str,
        value: &str,
    ) -> Result<Self, MeshArgsError> {
        let form = || MeshArgsError::Form {
            flag,
            value: value.to_string(),
            example,
        };
        let (namespace, name) = value.split_once('/').ok_or_else(form)?;
        if name.contains('/') {
            return Err(form());
        }
        if !is_dns_label(namespace) {
            return Err(MeshArgsError::Namespace {
                flag,
                value: value.to_string(),
                namespace: namespace.to_string(),
            });
        }
        if !is_dns_subdomain(name) {
            return Err(MeshArgsError::Name {
                flag,
                value: value.to_string(),
                name: name.to_string(),
            });
        }
        Ok(Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }

    /// The user name a token of this ServiceAccount authenticates as.
    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

impl fmt::Display for ServiceAccountRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl FromStr for ServiceAccountRef {
    type Err = MeshArgsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_for("--proxy-service-account", DEFAULT_PROXY_SERVICE_ACCOUNT, s)
    }
}

/// A DNS-1123 label: what a namespace must be.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: what Secret and ServiceAccount names must be.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn parse_ca_secret(s: &str) -> Result<ServiceAccountRef, MeshArgsError> {
    ServiceAccountRef::parse_for("--ca-secret", "meridian-system/meridian-ca", s)
}

fn parse_trust_domain(s: &str) -> Result<TrustDomain, String> {
    TrustDomain::new(s).map_err(|e| format!("--trust-domain: {e}"))
}

/// Mesh identity flags of `meridian controller`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct MeshArgs {
    /// The `kubernetes.io/tls` Secret holding the mesh CA (`tls.crt`, `tls.key`; a cert-manager
    /// Certificate with isCA: true fits), in the controller's own cluster. Created with a new
    /// CA when absent; never overwritten. Default: meridian-ca in the controller's namespace.
    #[arg(long, value_name = "NAMESPACE/NAME", value_parser = parse_ca_secret)]
    pub ca_secret: Option<ServiceAccountRef>,
    /// Trust domain of a CA the controller creates (the `spiffe://` prefix of every identity);
    /// a CA that names its own trust domain keeps it.
    #[arg(long, value_name = "DOMAIN", default_value = DEFAULT_TRUST_DOMAIN, value_parser = parse_trust_domain)]
    pub trust_domain: TrustDomain,
    /// A ServiceAccount whose tokens (audience "meridian") get a proxy its first certificate,
    /// checked with a TokenReview in the proxy's member cluster. Repeat for several. Default:
    /// meridian-system/meridian-proxy.
    #[arg(long = "proxy-service-account", value_name = "NAMESPACE/NAME")]
    pub proxy_service_accounts: Vec<ServiceAccountRef>,
}

/// The mesh flags with their defaults filled in, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshConfig {
    /// Namespace and name of the CA Secret.
    pub ca_secret: (String, String),
    /// The trust domain of a CA the controller creates.
    pub trust_domain: TrustDomain,
    /// Accounts whose tokens are bootstrap credentials (at least one, no duplicates).
    pub proxy_service_accounts: Vec<ServiceAccountRef>,
}

impl MeshArgs {
    /// Fills in the defaults (`namespace`: the controller's own) and checks the account list.
    pub fn resolve(&self, namespace: &str) -> Result<MeshConfig, MeshArgsError> {
        let ca_secret = match &self.ca_secret {
            Some(r) => (r.namespace.clone(), r.name.clone()),
            None => (namespace.to_string(), DEFAULT_CA_SECRET.to_string()),
        };
        let mut accounts = self.proxy_service_accounts.clone();
        if accounts.is_empty() {
            accounts.push(DEFAULT_PROXY_SERVICE_ACCOUNT.parse()?);
        }
        for (i, a) in accounts.iter().enumerate() {
            if accounts[..i].contains(a) {
                return Err(MeshArgsError::AccountTwice(a.to_string()));
            }
        }
        Ok(MeshConfig {
            ca_secret,
            trust_domain: self.trust_domain.clone(),
            proxy_service_accounts: accounts,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        mesh: MeshArgs,
    }

    fn parse(args: &[&str]) -> Result<MeshArgs, String> {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .map(|c| c.mesh)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_follow_the_controller_namespace() {
        let cfg = parse(&[]).unwrap().resolve("ops").unwrap();
        assert_eq!(
            cfg.ca_secret,
            ("ops".to_string(), "meridian-ca".to_string())
        );
        assert_eq!(cfg.trust_domain.as_str(), DEFAULT_TRUST_DOMAIN);
        assert_eq!(
            cfg.proxy_service_accounts,
            vec![ServiceAccountRef {
                namespace: "meridian-system".into(),
                name: "meridian-proxy".into()
            }]
        );
        assert_eq!(
            cfg.proxy_service_accounts[0].username(),
            "system:serviceaccount:meridian-system:meridian-proxy"
        );
    }

    #[test]
    fn flags_override_the_defaults() {
        let cfg = parse(&[
            "--ca-secret",
            "pki/mesh-ca.v2",
            "--trust-domain",
            "prod.example.com",
            "--proxy-service-account",
            "edge/proxy",
            "--proxy-service-account",
            "meridian-system/meridian-proxy",
        ])
        .unwrap()
        .resolve("ops")
        .unwrap();
        assert_eq!(cfg.ca_secret, ("pki".to_string(), "mesh-ca.v2".to_string()));
        assert_eq!(cfg.trust_domain.as_str(), "prod.example.com");
        let names: Vec<String> = cfg
            .proxy_service_accounts
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names, ["edge/proxy", "meridian-system/meridian-proxy"]);
    }

    #[test]
    fn bad_values_get_messages_that_name_the_flag_and_the_fix() {
        let err = parse(&["--ca-secret", "meridian-ca"]).unwrap_err();
        assert!(
            err.contains("--ca-secret \"meridian-ca\": expected NAMESPACE/NAME"),
            "{err}"
        );
        let err = parse(&["--ca-secret", "a/b/c"]).unwrap_err();
        assert!(err.contains("expected NAMESPACE/NAME"), "{err}");
        let err = parse(&["--proxy-service-account", "Edge/proxy"]).unwrap_err();
        assert!(
            err.contains("--proxy-service-account \"Edge/proxy\": namespace \"Edge\" is invalid"),
            "{err}"
        );
        let err = parse(&["--proxy-service-account", "edge/"]).unwrap_err();
        assert!(err.contains("name \"\" is invalid"), "{err}");
        let err = parse(&["--proxy-service-account", "edge/pro_xy"]).unwrap_err();
        assert!(err.contains("name \"pro_xy\" is invalid"), "{err}");
        let err = parse(&["--trust-domain", "Mesh_1"]).unwrap_err();
        assert!(
            err.contains("--trust-domain") && err.contains("invalid trust domain \"Mesh_1\""),
            "{err}"
        );
        let twice = parse(&[
            "--proxy-service-account",
            "edge/proxy",
            "--proxy-service-account",
            "edge/proxy",
        ])
        .unwrap();
        assert_eq!(
            twice.resolve("ops").unwrap_err().to_string(),
            "--proxy-service-account edge/proxy is given twice"
        );
    }

    #[test]
    fn names_are_dns_names() {
        assert!(is_dns_label("meridian-system"));
        assert!(!is_dns_label("-a") && !is_dns_label("a-") && !is_dns_label(""));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_subdomain("a.b-c.d"));
        assert!(!is_dns_subdomain("a..b") && !is_dns_subdomain(".a"));
        assert!(!is_dns_subdomain(&format!("{}.b", "a".repeat(253))));
    }
}
