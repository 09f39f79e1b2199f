//! Authentication: who sent a request, from its `Authorization: Bearer` header, and the
//! TokenReview API, which asks the same question about any token.
//!
//! ```text
//!   no credentials ──▶ Admin            (or Anonymous on a cluster that enforces RBAC for everyone)
//!   admin token    ──▶ Admin            (all-powerful, never checked by RBAC)
//!   issued token   ──▶ ServiceAccount   (if for the API server's audience, unexpired, its
//!                                        ServiceAccount still exists with the same uid, and the
//!                                        object it is bound to, if any, too)
//!   anything else  ──▶ 401 Unauthorized (`Status` reason Unauthorized, as a real server answers)
//! ```
//!
//! Tokens are minted per cluster by the TokenRequest subresource
//! (`POST /api/v1/namespaces/NS/serviceaccounts/NAME/token`, what `kubectl create token` sends)
//! or by [`crate::Sandbox::mint_token`]. A token is an opaque random string (not a JWT) kept in
//! its cluster's [`Tokens`] with what a real token's claims say: the ServiceAccount and its uid,
//! the expiry (wall-clock time, as in `status.expirationTimestamp`), the audiences
//! (`spec.audiences`, default [`DEFAULT_AUDIENCE`]), an id (reported as the credential id) and
//! the Pod, Secret or Node of `spec.boundObjectRef`. It means nothing to another cluster, and it
//! dies with its ServiceAccount or bound object. Tokens live in memory only: a sandbox process
//! that restarts from its state dir has forgotten them (the admin token is new as well).
//!
//! [`Tokens::review`] is the one check: a request's bearer token is reviewed for the API
//! server's own audience (so a token minted for another audience, such as a Meridian proxy's
//! bootstrap credential for `meridian`, is no API credential), a TokenReview for the audiences it
//! names. Its failures are the reasons a real server gives in `status.error`
//! (`invalid bearer token`, `token audiences ["a"] is invalid for the target audiences ["b"]`,
//! `service account token has expired`, `serviceaccounts "NAME" not found`, ...).

use crate::error::ApiError;
use crate::store::State;
use crate::util::meta_str;
use jiff::Timestamp;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
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

/// What a token is minted for: its expiry, the audiences that may accept it and the object it
/// is bound to (TokenRequest `spec.expirationSeconds`, `spec.audiences`, `spec.boundObjectRef`).
#[derive(Debug, Clone)]
pub struct TokenTerms {
    pub expires: Timestamp,
    /// Never empty: a request naming none gets [`DEFAULT_AUDIENCE`].
    pub audiences: Vec<String>,
    /// `spec.boundObjectRef` as sent (`kind`, `apiVersion`, `name`, optional `uid`), resolved
    /// when the token is minted; `None` for an unbound token.
    pub bound_ref: Option<Value>,
}

impl TokenTerms {
    /// An unbound token for the API server's own audience, as `kubectl create token` gets.
    pub fn api_token(expires: Timestamp) -> TokenTerms {
        TokenTerms {
            expires,
            audiences: vec![DEFAULT_AUDIENCE.to_string()],
            bound_ref: None,
        }
    }
}

/// The kinds a token can be bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundKind {
    Pod,
    Secret,
    Node,
}

impl BoundKind {
    fn plural(self) -> &'static str {
        match self {
            BoundKind::Pod => "pods",
            BoundKind::Secret => "secrets",
            BoundKind::Node => "nodes",
        }
    }

    /// The word the real server's messages use (`pod UID (...) does not match ...`).
    fn word(self) -> &'static str {
        match self {
            BoundKind::Pod => "pod",
            BoundKind::Secret => "secret",
            BoundKind::Node => "node",
        }
    }
}

/// The object a token is bound to, as it was when the token was minted: the token is valid only
/// while an object of that kind and name exists with that uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundObject {
    pub kind: BoundKind,
    pub name: String,
    pub uid: String,
    /// The Node (name, uid) a bound Pod was scheduled to at minting, reported as user extras.
    pub pod_node: Option<(String, String)>,
}

/// One issued token.
#[derive(Debug, Clone)]
struct Grant {
    namespace: String,
    name: String,
    /// The ServiceAccount's uid when the token was minted.
    uid: String,
    expires: Timestamp,
    audiences: Vec<String>,
    bound: Option<BoundObject>,
    /// The token's id (a JWT's `jti`), reported as `authentication.kubernetes.io/credential-id`.
    id: String,
}

/// A token just minted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub token: String,
    /// RFC 3339, as in `status.expirationTimestamp`.
    pub expiration_timestamp: String,
}

/// `user.extra` key: the credential's id (`JTI=<id>`).
pub const EXTRA_CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";
/// `user.extra` keys of a token bound to a Pod, or to a Node (or a Pod scheduled to one).
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
pub const EXTRA_NODE_UID: &str = "authentication.kubernetes.io/node-uid";

/// A token found valid (by a TokenReview, or as a request's bearer token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewed {
    pub identity: Identity,
    /// `user.uid`: the ServiceAccount's uid ("" for the admin).
    pub uid: String,
    /// `user.extra`.
    pub extra: BTreeMap<String, Vec<String>>,
    /// The requested audiences the token is valid for, in the token's order.
    pub audiences: Vec<String>,
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

/// A list of strings as Go's `%q` prints it (`["a" "b"]`), for messages worded like the real
/// server's.
fn go_quoted(list: &[String]) -> String {
    let items: Vec<String> = list
        .iter()
        .map(|s| serde_json::Value::from(s.as_str()).to_string())
        .collect();
    format!("[{}]", items.join(" "))
}

impl Tokens {
    /// The bearer token that always means the admin.
    pub fn admin_token(&self) -> &str {
        &self.admin
    }

    /// Issues a token for the ServiceAccount `namespace/name` of `state` on `terms`, in the real
    /// TokenRequest's order of checks: the account must exist (404), then the bound object
    /// (see [`bound_object`]).
    pub fn mint(
        &mut self,
        state: &State,
        namespace: &str,
        name: &str,
        terms: &TokenTerms,
    ) -> Result<IssuedToken, ApiError> {
        let uid = service_account(state, namespace, name)
            .map(|sa| meta_str(sa, "uid").to_string())
            .ok_or_else(|| ApiError::not_found("", "serviceaccounts", name))?;
        let bound = match &terms.bound_ref {
            Some(r) => Some(bound_object(state, namespace, name, r)?),
            None => None,
        };
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
                expires: terms.expires,
                audiences: terms.audiences.clone(),
                bound,
                id: uuid::Uuid::new_v4().to_string(),
            },
        );
        Ok(IssuedToken {
            token,
            expiration_timestamp: terms.expires.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
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

    /// The identity of a request from its `Authorization` header value: a token valid for the
    /// API server's own audience. Unknown, expired, orphaned or other audiences' tokens and other
    /// schemes are 401.
    pub fn authenticate(&self, state: &State, authorization: &str) -> Result<Identity, ApiError> {
        let token = bearer_token(authorization).ok_or_else(ApiError::unauthorized)?;
        self.review(state, token, &[])
            .map(|r| r.identity)
            .map_err(|_| ApiError::unauthorized())
    }

    /// Whose `token` is, if it is valid for one of `audiences` (none: the API server's own,
    /// [`DEFAULT_AUDIENCE`]), checked in the real server's order: audience, expiry, the
    /// ServiceAccount (same uid, not being deleted), the bound object. `Err` is the real server's
    /// reason (TokenReview `status.error`).
    pub fn review(
        &self,
        state: &State,
        token: &str,
        audiences: &[String],
    ) -> Result<Reviewed, String> {
        let requested = if audiences.is_empty() {
            vec![DEFAULT_AUDIENCE.to_string()]
        } else {
            audiences.to_vec()
        };
        if token == self.admin {
            // A credential that names no audience is good for whatever audience is asked for.
            return Ok(Reviewed {
                identity: Identity::Admin,
                uid: String::new(),
                extra: BTreeMap::new(),
                audiences: requested,
            });
        }
        let grant = self
            .issued
            .get(token)
            .ok_or_else(|| "invalid bearer token".to_string())?;
        let matching: Vec<String> = grant
            .audiences
            .iter()
            .filter(|a| requested.contains(a))
            .cloned()
            .collect();
        if matching.is_empty() {
            return Err(format!(
                "token audiences {} is invalid for the target audiences {}",
                go_quoted(&grant.audiences),
                go_quoted(&requested)
            ));
        }
        if grant.expires <= Timestamp::now() {
            return Err("service account token has expired".into());
        }
        // A token outlives neither its ServiceAccount nor a new account of the same name.
        let (ns, name) = (&grant.namespace, &grant.name);
        let sa = service_account(state, ns, name)
            .ok_or_else(|| format!("serviceaccounts \"{name}\" not found"))?;
        if !meta_str(sa, "deletionTimestamp").is_empty() {
            return Err(format!("service account {ns}/{name} has been deleted"));
        }
        let sa_uid = meta_str(sa, "uid");
        if sa_uid != grant.uid {
            return Err(format!(
                "service account UID ({sa_uid}) does not match claim ({})",
                grant.uid
            ));
        }
        let mut extra = BTreeMap::new();
        extra.insert(
            EXTRA_CREDENTIAL_ID.to_string(),
            vec![format!("JTI={}", grant.id)],
        );
        if let Some(b) = &grant.bound {
            check_bound(state, ns, b)?;
            let node = match b.kind {
                BoundKind::Pod => {
                    extra.insert(EXTRA_POD_NAME.into(), vec![b.name.clone()]);
                    extra.insert(EXTRA_POD_UID.into(), vec![b.uid.clone()]);
                    b.pod_node.clone()
                }
                BoundKind::Node => Some((b.name.clone(), b.uid.clone())),
                BoundKind::Secret => None,
            };
            if let Some((node_name, node_uid)) = node {
                extra.insert(EXTRA_NODE_NAME.into(), vec![node_name]);
                extra.insert(EXTRA_NODE_UID.into(), vec![node_uid]);
            }
        }
        Ok(Reviewed {
            identity: Identity::ServiceAccount {
                namespace: ns.clone(),
                name: name.clone(),
            },
            uid: grant.uid.clone(),
            extra,
            audiences: matching,
        })
    }
}

/// Whether the object a token is bound to is still there, the same one and not being deleted.
fn check_bound(state: &State, namespace: &str, b: &BoundObject) -> Result<(), String> {
    let ns = if b.kind == BoundKind::Node {
        ""
    } else {
        namespace
    };
    let live = stored(state, b.kind.plural(), ns, &b.name)
        .filter(|o| meta_str(o, "deletionTimestamp").is_empty())
        .ok_or_else(|| "service account token has been invalidated".to_string())?;
    let uid = meta_str(live, "uid");
    if uid != b.uid {
        let word = b.kind.word();
        return Err(format!(
            "{word} UID ({uid}) does not match service account {word} ref claim ({})",
            b.uid
        ));
    }
    Ok(())
}

/// Resolves a TokenRequest's `spec.boundObjectRef` for the ServiceAccount `namespace/sa_name`,
/// as the real server does: a Pod (which must run as that ServiceAccount), a Secret of the
/// namespace, or a Node, that exists (404 otherwise) and, if the reference gives a uid, has it
/// (409 otherwise); any other kind is a 400.
pub fn bound_object(
    state: &State,
    namespace: &str,
    sa_name: &str,
    reference: &Value,
) -> Result<BoundObject, ApiError> {
    let text = |k: &str| reference.get(k).and_then(Value::as_str).unwrap_or("");
    let (kind, api_version, name) = (text("kind"), text("apiVersion"), text("name"));
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let bound_kind = match (group, kind) {
        ("", "Pod") => BoundKind::Pod,
        ("", "Secret") => BoundKind::Secret,
        ("", "Node") => BoundKind::Node,
        _ => {
            return Err(ApiError::bad_request(format!(
                "cannot bind token to object of type {group}/{version}, Kind={kind}"
            )));
        }
    };
    if name.is_empty() {
        return Err(ApiError::bad_request(
            "spec.boundObjectRef.name: Required value",
        ));
    }
    let ns = if bound_kind == BoundKind::Node {
        ""
    } else {
        namespace
    };
    let obj = stored(state, bound_kind.plural(), ns, name)
        .ok_or_else(|| ApiError::not_found("", bound_kind.plural(), name))?;
    let mut pod_node = None;
    if bound_kind == BoundKind::Pod {
        // A Pod stored without one runs as `default`: the ServiceAccount admission step of a
        // real server writes that name into every Pod.
        let runs_as = obj
            .pointer("/spec/serviceAccountName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .unwrap_or("default");
        if runs_as != sa_name {
            return Err(ApiError::bad_request(format!(
                "cannot bind token for serviceaccount \"{sa_name}\" to pod running with different serviceaccount name."
            )));
        }
        let node_name = obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("");
        pod_node = stored(state, "nodes", "", node_name)
            .filter(|_| !node_name.is_empty())
            .map(|n| (node_name.to_string(), meta_str(n, "uid").to_string()));
    }
    let uid = meta_str(obj, "uid").to_string();
    let asked_uid = text("uid");
    if !asked_uid.is_empty() && asked_uid != uid {
        return Err(ApiError::conflict_msg(
            "",
            kind,
            name,
            format!(
                "Operation cannot be fulfilled on {kind} \"{name}\": the UID in the bound object reference ({asked_uid}) does not match the UID in record. The object might have been deleted and then recreated"
            ),
        ));
    }
    Ok(BoundObject {
        kind: bound_kind,
        name: name.to_string(),
        uid,
        pod_node,
    })
}

/// The token of `Bearer <token>` (the scheme is case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A stored object of a built-in kind (`plural`) by namespace ("" for cluster-scoped) and name.
fn stored<'a>(state: &'a State, plural: &str, namespace: &str, name: &str) -> Option<&'a Value> {
    let rt = state.registry.by_key(plural)?;
    state.get(&rt, namespace, name)
}

/// A stored ServiceAccount.
fn service_account<'a>(state: &'a State, namespace: &str, name: &str) -> Option<&'a Value> {
    stored(state, "serviceaccounts", namespace, name)
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
        let ok = t
            .mint(
                &state,
                "default",
                "bot",
                &TokenTerms::api_token(in_an_hour()),
            )
            .unwrap();
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
        let old = t
            .mint(&state, "default", "bot", &TokenTerms::api_token(past))
            .unwrap();
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
            t.mint(
                &state,
                "default",
                "bot",
                &TokenTerms::api_token(in_an_hour())
            )
            .unwrap_err()
            .code,
            404
        );
    }

    fn create(state: &mut State, plural: &str, obj: Value) -> String {
        let rt = state.registry.by_key(plural).unwrap();
        let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
        let stored = state.create(&rt, ns.as_deref(), obj, false).unwrap();
        meta_str(&stored, "uid").to_string()
    }

    fn for_audiences(auds: &[&str]) -> TokenTerms {
        TokenTerms {
            audiences: auds.iter().map(|a| a.to_string()).collect(),
            ..TokenTerms::api_token(in_an_hour())
        }
    }

    #[test]
    fn a_review_checks_the_audience_and_reports_the_intersection() {
        let state = state_with_sa();
        let mut t = Tokens::default();
        let terms = for_audiences(&["meridian", "other"]);
        let tok = t.mint(&state, "default", "bot", &terms).unwrap().token;
        let asked = vec!["x".to_string(), "meridian".to_string()];
        let r = t.review(&state, &tok, &asked).unwrap();
        assert_eq!(r.audiences, vec!["meridian"]);
        assert_eq!(
            r.uid,
            meta_str(service_account(&state, "default", "bot").unwrap(), "uid")
        );
        assert!(r.extra[EXTRA_CREDENTIAL_ID][0].starts_with("JTI="));
        // Not for the API server: neither a review with no audiences nor a bearer header.
        assert_eq!(
            t.review(&state, &tok, &[]).unwrap_err(),
            format!(
                "token audiences [\"meridian\" \"other\"] is invalid for the target audiences [\"{DEFAULT_AUDIENCE}\"]"
            )
        );
        let e = t
            .authenticate(&state, &format!("Bearer {tok}"))
            .unwrap_err();
        assert_eq!(e.code, 401);
        assert_eq!(
            t.review(&state, "nope", &asked).unwrap_err(),
            "invalid bearer token"
        );
        // The admin token names no audience, so it is good for any.
        let admin = t.review(&state, t.admin_token(), &asked).unwrap();
        assert_eq!((admin.identity, admin.audiences), (Identity::Admin, asked));
    }

    #[test]
    fn a_token_bound_to_a_pod_names_it_and_dies_with_it() {
        let mut state = state_with_sa();
        let node_uid = create(
            &mut state,
            "nodes",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}),
        );
        let pod = |sa: &str| {
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": format!("p-{sa}"), "namespace": "default"},
                   "spec": {"serviceAccountName": sa, "nodeName": "n1"}})
        };
        let pod_uid = create(&mut state, "pods", pod("bot"));
        create(&mut state, "pods", pod("other"));
        let mut t = Tokens::default();
        let bound = |name: &str, uid: &str| TokenTerms {
            bound_ref: Some(json!({"kind": "Pod", "apiVersion": "v1", "name": name, "uid": uid})),
            ..TokenTerms::api_token(in_an_hour())
        };
        let tok = t
            .mint(&state, "default", "bot", &bound("p-bot", ""))
            .unwrap()
            .token;
        let r = t.review(&state, &tok, &[]).unwrap();
        assert_eq!(r.extra[EXTRA_POD_NAME], vec!["p-bot"]);
        assert_eq!(r.extra[EXTRA_POD_UID], vec![pod_uid.clone()]);
        assert_eq!(r.extra[EXTRA_NODE_NAME], vec!["n1"]);
        assert_eq!(r.extra[EXTRA_NODE_UID], vec![node_uid]);
        // Refused at minting: another account's pod, a missing pod, a stale uid, a Deployment.
        let e = t
            .mint(&state, "default", "bot", &bound("p-other", ""))
            .unwrap_err();
        assert_eq!((e.code, e.reason), (400, "BadRequest"));
        let e = t
            .mint(&state, "default", "bot", &bound("gone", ""))
            .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (404, "pods \"gone\" not found")
        );
        let e = t
            .mint(&state, "default", "bot", &bound("p-bot", "old"))
            .unwrap_err();
        assert_eq!(e.code, 409);
        let deploy = TokenTerms {
            bound_ref: Some(json!({"kind": "Deployment", "apiVersion": "apps/v1", "name": "d"})),
            ..TokenTerms::api_token(in_an_hour())
        };
        let e = t.mint(&state, "default", "bot", &deploy).unwrap_err();
        assert_eq!(
            e.message,
            "cannot bind token to object of type apps/v1, Kind=Deployment"
        );
        // Deleting the pod invalidates the token.
        let rt = state.registry.by_key("pods").unwrap();
        state
            .delete(&rt, "default", "p-bot", &Value::Null, false)
            .unwrap();
        assert_eq!(
            t.review(&state, &tok, &[]).unwrap_err(),
            "service account token has been invalidated"
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
