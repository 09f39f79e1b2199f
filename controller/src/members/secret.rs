//! A member-cluster Secret to and from its parts: [`parse_member_secret`] checks everything a
//! Secret says before anything connects, [`member_config`] turns it into a client config, and
//! [`member_secret`] writes one (`meridian cluster add`).
//!
//! The kubeconfig of a Secret must be self-contained and inert: the controller runs with the
//! permissions of its pod, so a Secret may not make it run a command (`exec`, `auth-provider`)
//! or read a file of its file system (`tokenFile`, `client-certificate`, `certificate-authority`
//! paths). Credentials and CAs are given inline (`token`, `*-data`).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt as _;
use kube::api::ObjectMeta;
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::{
    ADDRESSES_ANNOTATION, CLUSTER_ANNOTATION, KUBECONFIG_KEY, MEMBER_LABEL, MEMBER_LABEL_VALUE,
    MemberSpec, NETWORK_ANNOTATION, REGION_ANNOTATION, ZONES_ANNOTATION,
};

/// What is wrong with a member-cluster Secret. Each message names the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberSecretError {
    /// A required annotation is absent or empty.
    #[error(
        "annotation {key} is missing: set it to the cluster's {what} \
         (kubectl annotate secret {secret} {key}=…)"
    )]
    MissingAnnotation {
        /// The Secret's name.
        secret: String,
        /// The annotation.
        key: &'static str,
        /// What it holds.
        what: &'static str,
    },
    /// An annotation does not hold what it should.
    #[error("annotation {key}={value:?} is invalid: {reason}")]
    InvalidAnnotation {
        /// The annotation.
        key: &'static str,
        /// Its value.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// No `kubeconfig` data key.
    #[error(
        "data key \"kubeconfig\" is missing: it holds the kubeconfig the controller reaches the \
         cluster with (`meridian cluster add` writes it)"
    )]
    MissingKubeconfig,
    /// The kubeconfig is not a kubeconfig.
    #[error("data key \"kubeconfig\" is not a valid kubeconfig: {0}")]
    KubeconfigSyntax(String),
    /// The kubeconfig does not say which context to use.
    #[error(
        "the kubeconfig has {count} contexts and no current-context: set current-context, or \
         keep only the member cluster's context"
    )]
    NoContext {
        /// How many contexts it has.
        count: usize,
    },
    /// A context, cluster or user named in the kubeconfig is not defined in it.
    #[error("the kubeconfig names {what} {name:?} but does not define it")]
    Undefined {
        /// `context`, `cluster` or `user`.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A kubeconfig feature a Secret may not use.
    #[error(
        "the kubeconfig's {what} uses {field}, which a Secret may not (the controller runs no \
         commands and reads no local files for it): give the credentials inline, e.g. a \
         service-account token as `meridian cluster add` writes it"
    )]
    Unsupported {
        /// `user` or `cluster`.
        what: &'static str,
        /// The refused field.
        field: &'static str,
    },
    /// The cluster entry has no server URL.
    #[error("the kubeconfig's cluster {0:?} has no server URL")]
    NoServer(String),
    /// Another member already has this cluster name.
    #[error(
        "cluster {cluster:?} is already a member (defined by {by}): give this Secret another \
         meridian.dev/cluster, or delete one of the two"
    )]
    ClusterTaken {
        /// The cluster name.
        cluster: String,
        /// Who defines it.
        by: String,
    },
    /// kube-rs refused the kubeconfig.
    #[error("the kubeconfig cannot be used: {0}")]
    Config(String),
}

/// A Secret that parsed: the member and the kubeconfig to reach it.
#[derive(Clone, Debug)]
pub struct ParsedMember {
    /// The Secret's name.
    pub secret: String,
    /// The member cluster.
    pub spec: MemberSpec,
    /// The kubeconfig of the Secret.
    pub kubeconfig: Kubeconfig,
    /// The context to use.
    pub context: String,
    /// The kubeconfig as stored (tells an edit from a resync).
    pub kubeconfig_text: String,
    /// The server URL of that context (for listings and logs).
    pub server: String,
}

impl ParsedMember {
    /// Whether `other` describes the same member the same way (an unchanged Secret).
    pub fn same_as(&self, other: &ParsedMember) -> bool {
        self.spec == other.spec
            && self.kubeconfig_text == other.kubeconfig_text
            && self.context == other.context
    }
}

/// The name `meridian cluster add` gives the Secret of cluster `name`.
pub fn secret_name_for(cluster: &str) -> String {
    format!("meridian-cluster-{cluster}")
}

fn annotation<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    secret
        .metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
}

fn required<'a>(
    secret: &'a Secret,
    key: &'static str,
    what: &'static str,
) -> Result<&'a str, MemberSecretError> {
    annotation(secret, key).ok_or_else(|| MemberSecretError::MissingAnnotation {
        secret: secret.name_any(),
        key,
        what,
    })
}

fn invalid(key: &'static str, value: &str, reason: impl ToString) -> MemberSecretError {
    MemberSecretError::InvalidAnnotation {
        key,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// The member a Secret describes; every annotation and the kubeconfig are checked.
pub fn parse_member_secret(secret: &Secret) -> Result<ParsedMember, MemberSecretError> {
    let spec = parse_spec(secret)?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(KUBECONFIG_KEY))
        .map(|b| b.0.clone())
        .or_else(|| {
            // `stringData` is write-only on a real server, but a Secret read from a file or
            // built by hand may carry it.
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(KUBECONFIG_KEY))
                .map(|s| s.clone().into_bytes())
        })
        .filter(|b| !b.is_empty())
        .ok_or(MemberSecretError::MissingKubeconfig)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| MemberSecretError::KubeconfigSyntax("not UTF-8 text".into()))?;
    let kubeconfig = Kubeconfig::from_yaml(&text)
        .map_err(|e| MemberSecretError::KubeconfigSyntax(e.to_string()))?;
    let (context, server) = check_kubeconfig(&kubeconfig)?;
    Ok(ParsedMember {
        secret: secret.name_any(),
        spec,
        kubeconfig,
        context,
        kubeconfig_text: text,
        server,
    })
}

fn parse_spec(secret: &Secret) -> Result<MemberSpec, MemberSecretError> {
    let name = required(secret, CLUSTER_ANNOTATION, "name (a DNS label, e.g. east)")?;
    crate::args::check_name(name).map_err(|e| invalid(CLUSTER_ANNOTATION, name, e))?;
    let region = required(secret, REGION_ANNOTATION, "region (e.g. us-east)")?;
    if region.chars().any(|c| c.is_whitespace() || c == ',') {
        return Err(invalid(
            REGION_ANNOTATION,
            region,
            "a region is one word without spaces or commas",
        ));
    }
    let zones = match annotation(secret, ZONES_ANNOTATION) {
        None => Vec::new(),
        Some(z) => {
            let zones: Vec<String> = z.split(',').map(|s| s.trim().to_string()).collect();
            if zones.iter().any(|s| s.is_empty() || s.contains(' ')) {
                return Err(invalid(
                    ZONES_ANNOTATION,
                    z,
                    "expected a comma-separated list of zone names, e.g. a,b",
                ));
            }
            zones
        }
    };
    let network = match annotation(secret, NETWORK_ANNOTATION) {
        None => String::new(),
        Some(n) => {
            crate::args::check_network(n).map_err(|e| invalid(NETWORK_ANNOTATION, n, e))?;
            n.to_string()
        }
    };
    let gateway_addresses = annotation(secret, ADDRESSES_ANNOTATION)
        .map(|r| r.parse().map_err(|e| invalid(ADDRESSES_ANNOTATION, r, e)))
        .transpose()?;
    Ok(MemberSpec {
        name: name.to_string(),
        region: region.to_string(),
        zones,
        network,
        gateway_addresses,
    })
}

/// The context to use and its server; refuses what a Secret's kubeconfig may not do.
fn check_kubeconfig(k: &Kubeconfig) -> Result<(String, String), MemberSecretError> {
    let context = match (&k.current_context, k.contexts.as_slice()) {
        (Some(c), _) if !c.is_empty() => c.clone(),
        (_, [only]) => only.name.clone(),
        (_, all) => return Err(MemberSecretError::NoContext { count: all.len() }),
    };
    let undefined = |what, name: &str| MemberSecretError::Undefined {
        what,
        name: name.to_string(),
    };
    let ctx = k
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref())
        .ok_or_else(|| undefined("context", &context))?;
    let cluster = k
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| undefined("cluster", &ctx.cluster))?;
    let unsupported = |what, field| Err(MemberSecretError::Unsupported { what, field });
    if cluster.certificate_authority.is_some() {
        return unsupported("cluster", "certificate-authority (a file path)");
    }
    let server = cluster
        .server
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| MemberSecretError::NoServer(ctx.cluster.clone()))?;
    if let Some(user) = &ctx.user {
        let auth = k
            .auth_infos
            .iter()
            .find(|a| &a.name == user)
            .and_then(|a| a.auth_info.as_ref())
            .ok_or_else(|| undefined("user", user))?;
        if auth.exec.is_some() {
            return unsupported("user", "exec (a credential plugin command)");
        }
        if auth.auth_provider.is_some() {
            return unsupported("user", "auth-provider");
        }
        if auth.token_file.is_some() {
            return unsupported("user", "tokenFile (a file path)");
        }
        if auth.client_certificate.is_some() || auth.client_key.is_some() {
            return unsupported("user", "client-certificate/client-key (file paths)");
        }
    }
    Ok((context, server))
}

/// The client config of a parsed member.
pub async fn member_config(member: &ParsedMember) -> Result<kube::Config, MemberSecretError> {
    let options = KubeConfigOptions {
        context: Some(member.context.clone()),
        ..KubeConfigOptions::default()
    };
    kube::Config::from_custom_kubeconfig(member.kubeconfig.clone(), &options)
        .await
        .map_err(|e| MemberSecretError::Config(e.to_string()))
}

/// The Secret describing `spec`, reached with `kubeconfig` (YAML text), in `namespace`.
pub fn member_secret(namespace: &str, spec: &MemberSpec, kubeconfig: &str) -> Secret {
    let mut annotations = BTreeMap::from([
        (CLUSTER_ANNOTATION.to_string(), spec.name.clone()),
        (REGION_ANNOTATION.to_string(), spec.region.clone()),
    ]);
    if !spec.zones.is_empty() {
        annotations.insert(ZONES_ANNOTATION.to_string(), spec.zones.join(","));
    }
    if !spec.network.is_empty() {
        annotations.insert(NETWORK_ANNOTATION.to_string(), spec.network.clone());
    }
    if let Some(range) = &spec.gateway_addresses {
        annotations.insert(ADDRESSES_ANNOTATION.to_string(), range.to_string());
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name_for(&spec.name)),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                MEMBER_LABEL.to_string(),
                MEMBER_LABEL_VALUE.to_string(),
            )])),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([(
            KUBECONFIG_KEY.to_string(),
            ByteString(kubeconfig.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const KUBECONFIG: &str = "\
apiVersion: v1
kind: Config
clusters:
- name: east
  cluster: {server: 'https://east.example:6443', certificate-authority-data: Zm9v}
users:
- name: remote
  user: {token: abc}
contexts:
- name: east
  context: {cluster: east, user: remote}
";

    fn spec() -> MemberSpec {
        MemberSpec {
            name: "east".into(),
            region: "us-east".into(),
            zones: vec!["a".into(), "b".into()],
            network: "net-a".into(),
            gateway_addresses: Some("10.0.10.0/24".parse().unwrap()),
        }
    }

    fn with_annotation(mut s: Secret, key: &str, value: Option<&str>) -> Secret {
        let a = s.metadata.annotations.get_or_insert_with(BTreeMap::new);
        match value {
            Some(v) => a.insert(key.to_string(), v.to_string()),
            None => a.remove(key),
        };
        s
    }

    fn with_kubeconfig(mut s: Secret, text: &str) -> Secret {
        s.data
            .get_or_insert_with(BTreeMap::new)
            .insert(KUBECONFIG_KEY.into(), ByteString(text.as_bytes().to_vec()));
        s
    }

    #[tokio::test]
    async fn a_written_secret_parses_back_to_its_spec_and_config() {
        let secret = member_secret("meridian-system", &spec(), KUBECONFIG);
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some("meridian-cluster-east")
        );
        assert_eq!(
            secret.metadata.labels.as_ref().unwrap()[MEMBER_LABEL],
            MEMBER_LABEL_VALUE
        );
        let parsed = parse_member_secret(&secret).unwrap();
        assert_eq!(parsed.spec, spec());
        assert_eq!(parsed.context, "east");
        assert_eq!(parsed.server, "https://east.example:6443");
        let config = member_config(&parsed).await.unwrap();
        assert_eq!(config.cluster_url.to_string(), "https://east.example:6443/");
        // Optional annotations absent: defaults.
        let mut bare = spec();
        bare.zones.clear();
        bare.network.clear();
        bare.gateway_addresses = None;
        let parsed = parse_member_secret(&member_secret("ns", &bare, KUBECONFIG)).unwrap();
        assert_eq!(parsed.spec, bare);
    }

    #[test]
    fn annotation_errors_name_the_annotation_and_the_fix() {
        let good = member_secret("ns", &spec(), KUBECONFIG);
        let err = |s: Secret| parse_member_secret(&s).unwrap_err().to_string();

        let e = err(with_annotation(good.clone(), CLUSTER_ANNOTATION, None));
        assert!(
            e.contains("annotation meridian.dev/cluster is missing")
                && e.contains(
                    "kubectl annotate secret meridian-cluster-east meridian.dev/cluster="
                ),
            "{e}"
        );
        let e = err(with_annotation(good.clone(), REGION_ANNOTATION, Some(" ")));
        assert!(e.contains("meridian.dev/region is missing"), "{e}");
        let e = err(with_annotation(
            good.clone(),
            CLUSTER_ANNOTATION,
            Some("East"),
        ));
        assert!(
            e.contains("meridian.dev/cluster=\"East\" is invalid") && e.contains("lowercase"),
            "{e}"
        );
        let e = err(with_annotation(
            good.clone(),
            ZONES_ANNOTATION,
            Some("a,,b"),
        ));
        assert!(e.contains("comma-separated"), "{e}");
        let e = err(with_annotation(
            good.clone(),
            NETWORK_ANNOTATION,
            Some("a b"),
        ));
        assert!(e.contains("invalid network name"), "{e}");
        let e = err(with_annotation(
            good.clone(),
            ADDRESSES_ANNOTATION,
            Some("10.0.0.9-10.0.0.1"),
        ));
        assert!(
            e.contains("gateway-addresses") && e.contains("empty"),
            "{e}"
        );
    }

    #[test]
    fn kubeconfig_errors_are_precise() {
        let good = member_secret("ns", &spec(), KUBECONFIG);
        let err = |text: &str| {
            parse_member_secret(&with_kubeconfig(good.clone(), text))
                .unwrap_err()
                .to_string()
        };
        let mut none = good.clone();
        none.data = None;
        assert_eq!(
            parse_member_secret(&none).unwrap_err(),
            MemberSecretError::MissingKubeconfig
        );
        assert!(err("clusters: 3").contains("not a valid kubeconfig"));

        let two =
            format!("{KUBECONFIG}- name: other\n  context: {{cluster: east, user: remote}}\n");
        assert!(err(&two).contains("2 contexts and no current-context"));
        // With current-context the second context is fine.
        let chosen = format!("{two}current-context: other\n");
        assert_eq!(
            parse_member_secret(&with_kubeconfig(good.clone(), &chosen))
                .unwrap()
                .context,
            "other"
        );
        let missing = format!("{KUBECONFIG}current-context: nowhere\n");
        assert!(err(&missing).contains("context \"nowhere\" but does not define it"));

        for (user, field) in [
            (
                "{exec: {command: sh, apiVersion: client.authentication.k8s.io/v1}}",
                "exec",
            ),
            ("{tokenFile: /etc/passwd}", "tokenFile"),
            (
                "{client-certificate: /c, client-key: /k}",
                "client-certificate",
            ),
        ] {
            let text = KUBECONFIG.replace("{token: abc}", user);
            let e = err(&text);
            assert!(
                e.contains(&format!("user uses {field}")) && e.contains("inline"),
                "{user}: {e}"
            );
        }
        let ca_file = KUBECONFIG.replace(
            "certificate-authority-data: Zm9v",
            "certificate-authority: /ca",
        );
        assert!(err(&ca_file).contains("cluster uses certificate-authority"));
        let no_server = KUBECONFIG.replace("server: 'https://east.example:6443', ", "");
        assert!(err(&no_server).contains("has no server URL"));
    }
}
