//! Bootstrap credentials checked with the TokenReview API of the cluster a proxy claims to run
//! in.
//!
//! ```text
//! claim {cluster, zone, proxy id, credential}
//!   member cluster `cluster`? ── no ─► refused: unknown-cluster
//!   │ (not attached yet: unavailable, transient — the controller is starting)
//!   POST authentication.k8s.io/v1 TokenReview {token, audiences: [meridian]} in that cluster
//!   │ API error or timeout ─► unavailable, transient (the server answers 503, the proxy retries)
//!   decide(status):
//!     authenticated?                              no ─► invalid-credential (the review's error)
//!     "meridian" among status.audiences?          no ─► invalid-credential
//!     username = system:serviceaccount:NS:NAME
//!       of one --proxy-service-account?           no ─► wrong-account
//!     grant {region, zones: the member's; proxy id: extra authentication.kubernetes.io/pod-name}
//! ```
//!
//! A token is only good in the cluster that minted it: another cluster's API server does not
//! authenticate it, so a proxy of one cluster cannot claim another. A projected token is bound
//! to its Pod, so the proxy id is the Pod's name and a second proxy cannot take that id; an
//! unbound token (a TokenRequest without a Pod) grants any id of that cluster.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::Api;
use kube::api::PostParams;
use meridian_distribution::server::{
    BootstrapClaim, BootstrapGrant, BootstrapRefusal, BootstrapVerifier, BoxFuture,
};

use super::{MeshMembers, POD_NAME_EXTRA, PROXY_TOKEN_AUDIENCE, ServiceAccountRef};

/// How long one TokenReview may take.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

fn refusal(reason: &'static str, message: String, transient: bool) -> BootstrapRefusal {
    BootstrapRefusal {
        reason,
        message,
        transient,
    }
}

/// What a TokenReview's `status` grants a proxy of a cluster in `region` with `zones` whose
/// tokens must belong to one of `accounts` (pure).
pub fn decide(
    status: Option<&TokenReviewStatus>,
    accounts: &[ServiceAccountRef],
    region: &str,
    zones: &[String],
) -> Result<BootstrapGrant, BootstrapRefusal> {
    let invalid = |message: String| refusal("invalid-credential", message, false);
    let Some(status) = status else {
        return Err(invalid("the TokenReview came back without a status".into()));
    };
    if status.authenticated != Some(true) {
        let why = status
            .error
            .as_deref()
            .filter(|e| !e.is_empty())
            .unwrap_or("no reason given");
        return Err(invalid(format!(
            "the cluster's API server did not accept the token: {why}"
        )));
    }
    let audiences = status.audiences.as_deref().unwrap_or_default();
    if !audiences.iter().any(|a| a == PROXY_TOKEN_AUDIENCE) {
        return Err(invalid(format!(
            "the token is not for audience {PROXY_TOKEN_AUDIENCE:?} (it is for {audiences:?}): \
             mount a projected ServiceAccount token with audience {PROXY_TOKEN_AUDIENCE}"
        )));
    }
    let user = status.user.as_ref();
    let username = user.and_then(|u| u.username.as_deref()).unwrap_or("");
    if !accounts.iter().any(|a| a.username() == username) {
        let allowed: Vec<String> = accounts.iter().map(ToString::to_string).collect();
        return Err(refusal(
            "wrong-account",
            format!(
                "the token belongs to {username:?}, not to a proxy ServiceAccount ({})",
                allowed.join(", ")
            ),
            false,
        ));
    }
    let proxy_id = user
        .and_then(|u| u.extra.as_ref())
        .and_then(|e| e.get(POD_NAME_EXTRA))
        .and_then(|v| v.first())
        .filter(|p| !p.is_empty())
        .cloned();
    Ok(BootstrapGrant {
        region: region.to_string(),
        zones: zones.to_vec(),
        proxy_id,
    })
}

/// [`BootstrapVerifier`] with TokenReviews in the member clusters.
#[derive(Clone, Debug)]
pub struct TokenReviewVerifier {
    members: MeshMembers,
    accounts: Vec<ServiceAccountRef>,
    timeout: Duration,
}

impl TokenReviewVerifier {
    /// Accepts tokens of `accounts` (audience [`PROXY_TOKEN_AUDIENCE`]) for the clusters of
    /// `members`.
    pub fn new(members: MeshMembers, accounts: Vec<ServiceAccountRef>) -> Self {
        Self {
            members,
            accounts,
            timeout: REVIEW_TIMEOUT,
        }
    }

    /// The same with another deadline per TokenReview.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn review(&self, claim: &BootstrapClaim) -> Result<BootstrapGrant, BootstrapRefusal> {
        if !self.members.is_attached() {
            return Err(refusal(
                "unavailable",
                "the controller is starting; try again".into(),
                true,
            ));
        }
        let Some(member) = self.members.get(&claim.cluster) else {
            return Err(refusal(
                "unknown-cluster",
                format!("{:?} is not a member cluster", claim.cluster),
                false,
            ));
        };
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: claim.credential.clone(),
                audiences: Some(vec![PROXY_TOKEN_AUDIENCE.to_string()]),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(member.cluster.client.clone());
        let unavailable = |why: String| {
            refusal(
                "unavailable",
                format!(
                    "cannot check the token with cluster {}'s API server: {why}",
                    claim.cluster
                ),
                true,
            )
        };
        let answer =
            match tokio::time::timeout(self.timeout, api.create(&PostParams::default(), &review))
                .await
            {
                Err(_) => return Err(unavailable(format!("no answer within {:?}", self.timeout))),
                Ok(Err(e)) => {
                    tracing::warn!(cluster = %claim.cluster, error = %e, "TokenReview failed");
                    return Err(unavailable(e.to_string()));
                }
                Ok(Ok(r)) => r,
            };
        decide(
            answer.status.as_ref(),
            &self.accounts,
            &member.cluster.region,
            &member.cluster.zones,
        )
    }
}

impl BootstrapVerifier for TokenReviewVerifier {
    fn verify<'a>(
        &'a self,
        claim: &'a BootstrapClaim,
    ) -> BoxFuture<'a, Result<BootstrapGrant, BootstrapRefusal>> {
        Box::pin(async move {
            let result = self.review(claim).await;
            if let Err(r) = &result {
                tracing::info!(cluster = %claim.cluster, zone = %claim.zone, proxy_id = %claim.proxy_id, reason = r.reason, message = %r.message, "bootstrap refused");
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;
    use std::collections::BTreeMap;

    fn accounts() -> Vec<ServiceAccountRef> {
        vec![
            "meridian-system/meridian-proxy".parse().unwrap(),
            "edge/proxy".parse().unwrap(),
        ]
    }

    fn status(
        authenticated: bool,
        audiences: &[&str],
        username: &str,
        pod: Option<&str>,
    ) -> TokenReviewStatus {
        let extra =
            pod.map(|p| BTreeMap::from([(POD_NAME_EXTRA.to_string(), vec![p.to_string()])]));
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            user: Some(UserInfo {
                username: Some(username.to_string()),
                extra,
                ..UserInfo::default()
            }),
            error: None,
        }
    }

    const PROXY: &str = "system:serviceaccount:meridian-system:meridian-proxy";

    fn zones() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn a_pod_bound_proxy_token_grants_the_members_region_zones_and_the_pod_name() {
        let s = status(true, &["meridian"], PROXY, Some("meridian-proxy-7c9f-x2"));
        let g = decide(Some(&s), &accounts(), "us-east", &zones()).unwrap();
        assert_eq!(
            g,
            BootstrapGrant {
                region: "us-east".into(),
                zones: zones(),
                proxy_id: Some("meridian-proxy-7c9f-x2".into()),
            }
        );
        // Any of the configured accounts; an unbound token binds no id.
        let s = status(
            true,
            &["meridian", "other"],
            "system:serviceaccount:edge:proxy",
            None,
        );
        let g = decide(Some(&s), &accounts(), "us-east", &[]).unwrap();
        assert_eq!(g.proxy_id, None);
    }

    #[test]
    fn unauthenticated_tokens_are_invalid_with_the_reviews_error() {
        let mut s = status(false, &[], "", None);
        s.error = Some("token has expired".into());
        s.user = None;
        let r = decide(Some(&s), &accounts(), "us-east", &[]).unwrap_err();
        assert_eq!((r.reason, r.transient), ("invalid-credential", false));
        assert!(r.message.contains("token has expired"), "{}", r.message);
        s.error = None;
        let r = decide(Some(&s), &accounts(), "us-east", &[]).unwrap_err();
        assert!(r.message.contains("no reason given"), "{}", r.message);
        let r = decide(None, &accounts(), "us-east", &[]).unwrap_err();
        assert_eq!(r.reason, "invalid-credential");
    }

    #[test]
    fn a_token_for_another_audience_is_invalid() {
        for auds in [&["https://kubernetes.default.svc"][..], &[]] {
            let s = status(true, auds, PROXY, None);
            let r = decide(Some(&s), &accounts(), "us-east", &[]).unwrap_err();
            assert_eq!(r.reason, "invalid-credential");
            assert!(r.message.contains("audience \"meridian\""), "{}", r.message);
        }
        let mut s = status(true, &[], PROXY, None);
        s.audiences = None;
        assert!(decide(Some(&s), &accounts(), "us-east", &[]).is_err());
    }

    #[test]
    fn another_accounts_token_is_the_wrong_account() {
        for who in [
            "system:serviceaccount:meridian-system:meridian-controller",
            "system:serviceaccount:default:meridian-proxy",
            "alice",
            "",
        ] {
            let s = status(true, &["meridian"], who, Some("pod"));
            let r = decide(Some(&s), &accounts(), "us-east", &[]).unwrap_err();
            assert_eq!((r.reason, r.transient), ("wrong-account", false), "{who}");
            assert!(
                r.message
                    .contains("meridian-system/meridian-proxy, edge/proxy"),
                "{}",
                r.message
            );
        }
    }

    #[tokio::test]
    async fn unknown_clusters_and_a_controller_still_starting() {
        use crate::controller::MemberDirectory;
        use tokio::sync::watch;

        let claim = BootstrapClaim {
            cluster: "nowhere".into(),
            zone: "a".into(),
            proxy_id: "p".into(),
            credential: "t".into(),
        };
        let members = MeshMembers::default();
        let v = TokenReviewVerifier::new(members.clone(), accounts());
        let r = v.verify(&claim).await.unwrap_err();
        assert_eq!((r.reason, r.transient), ("unavailable", true));
        let (_tx, rx) = watch::channel(MemberDirectory::new());
        members.attach(rx);
        let r = v.verify(&claim).await.unwrap_err();
        assert_eq!((r.reason, r.transient), ("unknown-cluster", false));
        assert!(r.message.contains("\"nowhere\" is not a member cluster"));
    }
}
