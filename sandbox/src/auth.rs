//! Authentication: who sent a request, from its `Authorization: Bearer` header.
//!
//! ```text
//!   no credentials ──▶ Admin            (or Anonymous on a cluster that enforces RBAC for everyone)
//!   admin token    ──▶ Admin            (all-powerful, never checked by RBAC)
//!   issued token   ──▶ ServiceAccount   (if unexpired and the ServiceAccount still exists, same uid)
//!   anything else  ──▶ 401 Unauthorized (`Status` reason Unauthorized, as a real server answers)
//! ```
//!
//! Tokens are minted per cluster by the TokenRequest subresource
//! (`POST /api/v1/namespaces/NS/serviceaccounts/NAME/token`, what `kubectl create token` sends)
//! or by [`crate::Sandbox::mint_token`]. A token is an opaque random string (not a JWT) kept in
//! its cluster's [`Tokens`]: it means nothing to another cluster, and it dies with its
//! ServiceAccount (a token names the account's uid, as a bound token does). Expiry is wall-clock
//! time, as in `status.expirationTimestamp`. Tokens live in memory only: a sandbox process that
//! restarts from its state dir has forgotten them (the admin token is new as well).

use crate::error::ApiError;
use crate::store::State;
use crate::util::meta_str;
use jiff::Timestamp;
use std::collections::HashMap;
use std::time::Duration;

/// User name of the sandbox administrator (a member of `system:masters`).
pub const ADMIN_USER: &str = "kubernetes-admin";

/// What the real server uses when a TokenRequest asks for no particular lifetime.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// The shortest lifetime the TokenRequest API accepts.
pub const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(600);

/// The audience tokens are issued for when a request names none.
pub const DEFAULT_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// Why the sandbox could not hand out a credential.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("no cluster {0:?} in this sandbox")]
    UnknownCluster(String),
    /// The cluster refused (no such ServiceAccount, an invalid name, ...).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The expiry is not a time a token can carry.
    #[error("token expiry out of range: {0}")]
    Expiry(#[from] jiff::Error),
}

/// Who a request is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The sandbox's administrator.
    Admin,
    /// `system:serviceaccount:<namespace>:<name>`.
    ServiceAccount { namespace: String, name: String },
    /// No credentials, on a cluster where that does not mean the admin.
    Anonymous,
    /// A user the admin (or an identity RBAC lets `impersonate`) acts as with
    /// `Impersonate-User` / `Impersonate-Group`; `groups` excludes `system:authenticated`.
    User { name: String, groups: Vec<String> },
}

impl Identity {
    /// The user name RBAC and messages use.
    pub fn user(&self) -> String {
        match self {
            Identity::Admin => ADMIN_USER.to_string(),
            Identity::ServiceAccount { namespace, name } => {
                format!("system:serviceaccount:{namespace}:{name}")
            }
            Identity::Anonymous => "system:anonymous".to_string(),
            Identity::User { name, .. } => name.clone(),
        }
    }

    /// The groups the identity is in.
    pub fn groups(&self) -> Vec<String> {
        match self {
            Identity::Admin => vec!["system:masters".into(), "system:authenticated".into()],
            Identity::ServiceAccount { namespace, .. } => vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
            Identity::Anonymous => vec!["system:unauthenticated".into()],
            Identity::User { groups, .. } => {
                let mut g = groups.clone();
                g.push("system:authenticated".into());
                g
            }
        }
    }

    /// The identity an impersonated user name stands for: a ServiceAccount for
    /// `system:serviceaccount:<ns>:<name>` (with the account's groups, as the real server
    /// gives them), any other user with the groups asked for.
    pub fn impersonated(user: &str, groups: Vec<String>) -> Identity {
        if let Some((namespace, name)) = user
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
            .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains(':'))
        {
            return Identity::ServiceAccount {
                namespace: namespace.to_string(),
                name: name.to_string(),
            };
        }
        Identity::User {
            name: user.to_string(),
            groups,
        }
    }
}

/// One issued token.
#[derive(Debug, Clone)]
struct Grant {
    namespace: String,
    name: String,
    /// The ServiceAccount's uid when the token was minted.
    uid: String,
    expires: Timestamp,
}

/// A token just minted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub token: String,
    /// RFC 3339, as in `status.expirationTimestamp`.
    pub expiration_timestamp: String,
}

/// One cluster's credentials: its admin token, the tokens it issued, and whether a request
/// without credentials is the admin.
#[derive(Debug)]
pub struct Tokens {
    admin: String,
    issued: HashMap<String, Grant>,
    /// Requests without credentials act as the admin (the default, as `meridian up` expects);
    /// when false they are `system:anonymous` and RBAC decides.
    pub anonymous_is_admin: bool,
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens {
            admin: format!("sandbox-admin.{}", random_hex()),
            issued: HashMap::new(),
            anonymous_is_admin: true,
        }
    }
}

/// 256 random bits as hex.
fn random_hex() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("{a}{b}")
}

impl Tokens {
    /// The bearer token that always means the admin.
    pub fn admin_token(&self) -> &str {
        &self.admin
    }

    /// Issues a token for the ServiceAccount `namespace/name` of `state`, valid until `expires`.
    /// 404 when the account does not exist.
    pub fn mint(
        &mut self,
        state: &State,
        namespace: &str,
        name: &str,
        expires: Timestamp,
    ) -> Result<IssuedToken, ApiError> {
        let uid = service_account_uid(state, namespace, name)
            .ok_or_else(|| ApiError::not_found("", "serviceaccounts", name))?;
        // Expired grants are dropped here, so the table stays as small as the live tokens.
        let now = Timestamp::now();
        self.issued.retain(|_, g| g.expires > now);
        let token = format!("sandbox-sa.{}", random_hex());
        self.issued.insert(
            token.clone(),
            Grant {
                namespace: namespace.to_string(),
                name: name.to_string(),
                uid,
                expires,
            },
        );
        Ok(IssuedToken {
            token,
            expiration_timestamp: expires.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        })
    }

    /// The identity of a request without credentials.
    pub fn without_credentials(&self) -> Identity {
        if self.anonymous_is_admin {
            Identity::Admin
        } else {
            Identity::Anonymous
        }
    }

    /// The identity of a request from its `Authorization` header value. Unknown, expired or
    /// orphaned tokens and other schemes are 401.
    pub fn authenticate(&self, state: &State, authorization: &str) -> Result<Identity, ApiError> {
        let token = bearer_token(authorization).ok_or_else(ApiError::unauthorized)?;
        if token == self.admin {
            return Ok(Identity::Admin);
        }
        let grant = self.issued.get(token).ok_or_else(ApiError::unauthorized)?;
        if grant.expires <= Timestamp::now() {
            return Err(ApiError::unauthorized());
        }
        // A token outlives neither its ServiceAccount nor a new account of the same name.
        if service_account_uid(state, &grant.namespace, &grant.name).as_deref()
            != Some(grant.uid.as_str())
        {
            return Err(ApiError::unauthorized());
        }
        Ok(Identity::ServiceAccount {
            namespace: grant.namespace.clone(),
            name: grant.name.clone(),
        })
    }
}

/// The token of `Bearer <token>` (the scheme is case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The uid of a stored ServiceAccount.
fn service_account_uid(state: &State, namespace: &str, name: &str) -> Option<String> {
    let rt = state.registry.by_key("serviceaccounts")?;
    state
        .get(&rt, namespace, name)
        .map(|sa| meta_str(sa, "uid").to_string())
}

/// The lifetime (seconds) and expiry of a token asked for with `expirationSeconds`; 422 for
/// lifetimes the TokenRequest API refuses (shorter than ten minutes, longer than 2^32 seconds).
pub fn expiry_from_request(
    sa_name: &str,
    expiration_seconds: Option<i64>,
) -> Result<(i64, Timestamp), ApiError> {
    let secs = expiration_seconds.unwrap_or(DEFAULT_TOKEN_LIFETIME.as_secs() as i64);
    let invalid = |why: &str| {
        let mut e = ApiError::invalid(
            "authentication.k8s.io",
            "TokenRequest.authentication.k8s.io",
            sa_name,
            "spec.expirationSeconds",
            &format!("Invalid value: {secs}: {why}"),
        );
        // The details name the kind without its group, as the real server's do.
        if let Some(serde_json::Value::Object(d)) = e.details.as_mut() {
            d.insert("kind".into(), serde_json::json!("TokenRequest"));
        }
        e
    };
    if secs < MIN_TOKEN_LIFETIME.as_secs() as i64 {
        return Err(invalid("may not specify a duration less than 10 minutes"));
    }
    if secs > 1_i64 << 32 {
        return Err(invalid(
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(secs))
        .map(|t| (secs, t))
        .map_err(|_| invalid("the expiry is out of range"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn state_with_sa() -> State {
        let mut s = State::new(100);
        let rt = s.registry.by_key("serviceaccounts").unwrap();
        s.create(
            &rt,
            Some("default"),
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "bot"}}),
            false,
        )
        .unwrap();
        s
    }

    fn in_an_hour() -> Timestamp {
        Timestamp::now()
            .checked_add(jiff::SignedDuration::from_secs(3600))
            .unwrap()
    }

    #[test]
    fn tokens_name_their_account_until_they_expire_or_it_goes() {
        let mut state = state_with_sa();
        let mut t = Tokens::default();
        let ok = t.mint(&state, "default", "bot", in_an_hour()).unwrap();
        let id = t
            .authenticate(&state, &format!("Bearer {}", ok.token))
            .unwrap();
        assert_eq!(id.user(), "system:serviceaccount:default:bot");
        assert!(
            id.groups()
                .contains(&"system:serviceaccounts:default".to_string())
        );
        let past = Timestamp::now()
            .checked_sub(jiff::SignedDuration::from_secs(1))
            .unwrap();
        let old = t.mint(&state, "default", "bot", past).unwrap();
        let e = t
            .authenticate(&state, &format!("Bearer {}", old.token))
            .unwrap_err();
        assert_eq!((e.code, e.reason), (401, "Unauthorized"));
        // Deleting the account kills its tokens.
        let rt = state.registry.by_key("serviceaccounts").unwrap();
        state
            .delete(&rt, "default", "bot", &serde_json::Value::Null, false)
            .unwrap();
        let e = t
            .authenticate(&state, &format!("Bearer {}", ok.token))
            .unwrap_err();
        assert_eq!(e.code, 401);
        assert_eq!(
            t.mint(&state, "default", "bot", in_an_hour())
                .unwrap_err()
                .code,
            404
        );
    }

    #[test]
    fn no_credentials_admin_token_and_garbage() {
        let state = state_with_sa();
        let mut t = Tokens::default();
        assert_eq!(t.without_credentials(), Identity::Admin);
        let admin = format!("bearer {}", t.admin_token());
        assert_eq!(t.authenticate(&state, &admin).unwrap(), Identity::Admin);
        t.anonymous_is_admin = false;
        assert_eq!(t.without_credentials(), Identity::Anonymous);
        for bad in ["Bearer nope", "Basic YTpi", "Bearer ", "garbage"] {
            assert_eq!(t.authenticate(&state, bad).unwrap_err().code, 401);
        }
    }

    #[test]
    fn token_lifetimes_the_api_refuses() {
        let e = expiry_from_request("bot", Some(10)).unwrap_err();
        assert_eq!(e.code, 422);
        assert_eq!(
            e.message,
            "TokenRequest.authentication.k8s.io \"bot\" is invalid: spec.expirationSeconds: Invalid value: 10: may not specify a duration less than 10 minutes"
        );
        assert!(expiry_from_request("bot", None).is_ok());
        assert_eq!(
            expiry_from_request("bot", Some(1 << 40)).unwrap_err().code,
            422
        );
    }
}
