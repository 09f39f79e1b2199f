//! Steps 1 and 2 of a drill, before any load is sent: the flags checked, the kubeconfig
//! context, the Gateway to load and its URL ([`resolve`]), then one GET through it and the
//! target checked against the localities that answer ([`preflight`]).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::DrillError;
use crate::args::{DrillArgs, Plan, plan};
use crate::cluster::{self, Cluster, GatewayTarget, Known};
use crate::figures::{FailKind, Outcome, ServedBy, Target};
use crate::load::{Probe, ServedBySource};
use crate::openloop::LoadError;

/// Why the drill will not start although its flags are fine.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// `--url` does not parse.
    #[error("--url {text:?}: {error}")]
    Url {
        /// The URL as given (or built from the Gateway's status).
        text: String,
        /// Why it does not parse.
        error: hyper::http::uri::InvalidUri,
    },
    /// `--url` is not a plain http URL.
    #[error("--url {0:?}: only http://HOST[:PORT]/PATH URLs (the load does not speak TLS)")]
    NotHttp(String),
    /// The URL or Host cannot be sent to.
    #[error(transparent)]
    Endpoint(#[from] LoadError),
    /// The Gateway did not answer the first GET.
    #[error(
        "the Gateway {gateway} at {url} did not answer a GET ({failure}): is `meridian up` \
         running and the Gateway Programmed? (`kubectl --kubeconfig {} --context {context} get \
         gateways -A`)",
        kubeconfig.display()
    )]
    NoAnswer {
        /// `namespace/name`.
        gateway: String,
        /// Where the GET went.
        url: String,
        /// What happened instead ([`FailKind::label`]).
        failure: &'static str,
        /// The kubeconfig used.
        kubeconfig: PathBuf,
        /// Its context.
        context: String,
    },
    /// `--target` names a region nobody answers from.
    #[error(
        "unknown region {region:?}: regions answering through the Gateway in this kubeconfig's \
         contexts are {}",
        list(known)
    )]
    UnknownRegion {
        /// The region asked for.
        region: String,
        /// Regions seen answering.
        known: BTreeSet<String>,
    },
    /// `--target-cluster` names a cluster nobody answers from.
    #[error(
        "unknown cluster {cluster:?}: clusters answering through the Gateway in this \
         kubeconfig's contexts are {}",
        list(known)
    )]
    UnknownCluster {
        /// The cluster asked for.
        cluster: String,
        /// Clusters seen answering.
        known: BTreeSet<String>,
    },
}

fn list(s: &BTreeSet<String>) -> String {
    s.iter().cloned().collect::<Vec<_>>().join(", ")
}

/// The URL to load: `--url`, else the Gateway's status address and HTTP listener port.
pub(crate) fn gateway_url(
    gw: &GatewayTarget,
    url: Option<&str>,
) -> Result<hyper::Uri, PreflightError> {
    let text = match url {
        Some(u) => u.to_string(),
        None => {
            let host = if gw.address.contains(':') {
                format!("[{}]", gw.address)
            } else {
                gw.address.clone()
            };
            format!("http://{host}:{}/", gw.port)
        }
    };
    let uri: hyper::Uri = match text.parse() {
        Ok(uri) => uri,
        Err(error) => return Err(PreflightError::Url { text, error }),
    };
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(PreflightError::NotHttp(text));
    }
    Ok(uri)
}

/// One GET through the Gateway of every kubeconfig context (same Gateway namespace/name):
/// localities seen answering, so an unknown target can be refused with the known ones listed.
async fn known_localities(
    kc: &kube::config::Kubeconfig,
    home: &Cluster,
    gw: &GatewayTarget,
    home_answer: &ServedBy,
) -> Known {
    let mut known = Known::default();
    let mut add = |by: &ServedBy| {
        if !by.region.is_empty() {
            known.clusters.insert(by.cluster.clone());
            known.regions.insert(by.region.clone());
            known.zones.insert(by.zone.clone());
        }
    };
    add(home_answer);
    let sources = ServedBySource::default();
    for ctx in cluster::contexts(kc).into_iter().take(32) {
        if ctx == home.context {
            continue;
        }
        let found = tokio::time::timeout(Duration::from_secs(3), async {
            let c = cluster::connect(kc, Some(&ctx)).await.ok()?;
            let want = (gw.namespace.clone(), gw.name.clone());
            let other = cluster::find_gateway(&c, Some(&want)).await.ok()?;
            let url = gateway_url(&other, None).ok()?;
            let probe = Probe::new(&url, gw.hostname.as_deref(), Duration::from_secs(1)).ok()?;
            match probe.get(&sources).await {
                Outcome::Answered(by) => Some(by),
                Outcome::Failed(_) => None,
            }
        })
        .await;
        if let Ok(Some(by)) = found {
            add(&by);
        }
    }
    known
}

/// Refuses a region or cluster that is not among those seen answering (when any were seen).
fn check_target(t: &Target, known: &Known) -> Result<(), PreflightError> {
    if known.regions.is_empty() {
        // Nothing named who answered (no served-by header, not the echo backend): the controller
        // is the judge.
        return Ok(());
    }
    if let Some(r) = &t.region
        && !known.regions.contains(r)
    {
        return Err(PreflightError::UnknownRegion {
            region: r.clone(),
            known: known.regions.clone(),
        });
    }
    if let Some(c) = &t.cluster
        && !known.clusters.contains(c)
    {
        return Err(PreflightError::UnknownCluster {
            cluster: c.clone(),
            known: known.clusters.clone(),
        });
    }
    Ok(())
}

/// The drill's settings, home cluster and Gateway, resolved before any load is sent.
pub(crate) struct Setup {
    pub(crate) p: Plan,
    pub(crate) kc: kube::config::Kubeconfig,
    pub(crate) home: Cluster,
    pub(crate) gw: GatewayTarget,
    pub(crate) url: hyper::Uri,
    pub(crate) host: Option<String>,
}

/// Step 1: checked flags, the kubeconfig context and the Gateway to load.
pub(crate) async fn resolve(args: &DrillArgs) -> Result<Setup, DrillError> {
    let p = plan(args)?;
    let kc = cluster::read_kubeconfig(&args.kubeconfig)?;
    let home = cluster::connect(&kc, args.context.as_deref()).await?;
    let gw = cluster::find_gateway(&home, p.gateway.as_ref()).await?;
    let url = gateway_url(&gw, args.url.as_deref())?;
    let host = args.host.clone().or_else(|| gw.hostname.clone());
    if !gw.served_by_header {
        println!(
            "note: Gateway {} has no annotation {}: \"true\"; who served each request is read \
             from the echo backend's answer instead of the x-meridian-served-by header",
            gw.key(),
            cluster::SERVED_BY_ANNOTATION
        );
    }
    Ok(Setup {
        p,
        kc,
        home,
        gw,
        url,
        host,
    })
}

/// Step 2, preflight: the Gateway answers, and the target exists.
pub(crate) async fn preflight(args: &DrillArgs, s: &Setup) -> Result<(), PreflightError> {
    let Setup {
        p,
        kc,
        home,
        gw,
        url,
        host,
    } = s;
    let sources = ServedBySource::default();
    let probe = Probe::new(url, host.as_deref(), Duration::from_secs(2))?;
    let first = tokio::time::timeout(Duration::from_secs(3), probe.get(&sources))
        .await
        .unwrap_or(Outcome::Failed(FailKind::Timeout));
    let home_answer = match first {
        Outcome::Answered(by) => by,
        Outcome::Failed(kind) => {
            return Err(PreflightError::NoAnswer {
                gateway: gw.key(),
                url: url.to_string(),
                failure: kind.label(),
                kubeconfig: args.kubeconfig.clone(),
                context: home.context.clone(),
            });
        }
    };
    let known = known_localities(kc, home, gw, &home_answer).await;
    check_target(&p.target, &known)?;
    if !home_answer.region.is_empty() && !p.target.matches(&home_answer) {
        println!(
            "note: {} answers from {}/{}/{}, outside the target ({}): the drill will not move \
             this Gateway's traffic",
            gw.key(),
            home_answer.cluster,
            home_answer.region,
            home_answer.zone,
            p.target.describe()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    use crate::cluster::tests::demo_gateway as gw;

    #[test]
    fn url_comes_from_the_gateway_unless_given() {
        assert_eq!(
            gateway_url(&gw(), None).unwrap().to_string(),
            "http://127.0.10.1:80/"
        );
        assert_eq!(
            gateway_url(&gw(), Some("http://127.0.0.1:8080/x"))
                .unwrap()
                .to_string(),
            "http://127.0.0.1:8080/x"
        );
        let e = gateway_url(&gw(), Some("https://a/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("TLS"), "{e}");
    }

    #[test]
    fn unknown_targets_list_the_known_ones() {
        let known = Known {
            clusters: ["east".to_string(), "west".to_string()].into(),
            regions: ["us-east".to_string(), "us-west".to_string()].into(),
            zones: Default::default(),
        };
        let t = |r: &str| Target {
            region: Some(r.into()),
            ..Target::default()
        };
        let e = check_target(&t("mars"), &known).unwrap_err().to_string();
        assert!(
            e.contains("\"mars\"") && e.contains("us-east, us-west"),
            "{e}"
        );
        assert!(check_target(&t("us-west"), &known).is_ok());
        assert!(
            check_target(&t("mars"), &Known::default()).is_ok(),
            "nothing known: no judgement"
        );
    }
}
