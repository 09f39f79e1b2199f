//! Authorization: RBAC for every identity but the admin, from the cluster's own
//! `rbac.authorization.k8s.io/v1` objects.
//!
//! 1. [`RequestAttributes::from_request`] reads what a request does from its method, path and
//!    query alone, as the real server's request-info step does before any routing: verb (`get`,
//!    `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`), API group,
//!    resource and subresource, namespace and name. A list or watch with a
//!    `metadata.name=<name>` field selector carries that name (so `resourceNames` rules can
//!    allow `kubectl wait` and single-object informers); `GET /api/v1/namespaces/ns` is the
//!    namespace `ns` in the namespace `ns`.
//! 2. [`authorize`] finds the rules that apply: ClusterRoleBindings anywhere, RoleBindings of the
//!    request's namespace (their `roleRef` may be a Role of that namespace or a ClusterRole),
//!    each binding with a subject naming the identity (`ServiceAccount` by namespace and name,
//!    `User` by user name, `Group` by group). A rule allows when its verbs, apiGroups, resources
//!    (`*`, `resource`, `resource/subresource`, `*/subresource`) and resourceNames (none = all)
//!    all match.
//! 3. Denial is the real server's 403 `Status`: `<resource> "<name>" is forbidden: User "<user>"
//!    cannot <verb> resource "<resource[/sub]>" in API group "<group>" in the namespace "<ns>"`
//!    (or `at the cluster scope`), followed by `: RBAC: <errors>` when a binding names a role
//!    that does not exist.
//!
//! Besides bindings, every authenticated identity may use the non-resource paths (discovery,
//! OpenAPI, `/version`, health: the real default roles `system:discovery` and
//! `system:public-info-viewer`) and create SelfSubjectAccessReviews (`system:basic-user`); the
//! anonymous identity only reaches health and `/version`.
//!
//! Impersonation (`Impersonate-User`, `Impersonate-Group`, what `kubectl --as` sends) is decided
//! in the HTTP layer with the same rules: the admin may impersonate anyone; others need the
//! `impersonate` verb on `serviceaccounts` (in the account's namespace), `users` or `groups`.
//!
//! Not implemented: ClusterRole `aggregationRule`, `nonResourceURLs` rules (non-resource paths
//! follow the fixed policy above), the default roles and bindings a real cluster bootstraps
//! (`cluster-admin`, `view`, `system:basic-user` ... as objects), the escalation and bind checks
//! on writing roles and bindings, validation of RBAC objects (an unknown `roleRef.kind` simply
//! grants nothing), `Impersonate-Uid`/`Impersonate-Extra-*`, and `userextras`.

use crate::auth::Identity;
use crate::error::ApiError;
use crate::store::State;
use crate::util::{meta_str, name_of};
use http::Method;
use serde_json::Value;
use std::collections::HashMap;

/// The RBAC API group.
pub const GROUP: &str = "rbac.authorization.k8s.io";

/// What a resource request does, in RBAC's terms.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourceAttributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    /// "" for cluster-scoped requests.
    pub namespace: String,
    /// "" for collections (and creates).
    pub name: String,
}

impl ResourceAttributes {
    /// `resource` or `resource/subresource`, as rules name it.
    pub fn combined_resource(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }
}

/// What a request does: a resource request, or a plain path (discovery, OpenAPI, health).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestAttributes {
    Resource(ResourceAttributes),
    NonResource { verb: String, path: String },
}

/// The lower-case verb of an HTTP method on a single object.
fn method_verb(method: &Method) -> &'static str {
    match *method {
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "",
    }
}

/// The name a `metadata.name=<name>` (or `==`) term of a field selector requires.
fn name_from_field_selector(selector: &str) -> Option<&str> {
    selector.split(',').find_map(|term| {
        let (field, value) = term
            .split_once("==")
            .or_else(|| term.split_once('='))
            .filter(|(f, _)| !f.ends_with('!'))?;
        (field.trim() == "metadata.name" && !value.trim().is_empty()).then(|| value.trim())
    })
}

impl RequestAttributes {
    /// Reads the attributes of a request from its method, decoded path segments and query.
    pub fn from_request(
        method: &Method,
        segs: &[&str],
        query: &HashMap<String, String>,
        path: &str,
    ) -> RequestAttributes {
        let verb = method_verb(method);
        let (group, rest) = match segs {
            ["api", _version, rest @ ..] => ("", rest),
            ["apis", group, _version, rest @ ..] => (*group, rest),
            _ => {
                return RequestAttributes::NonResource {
                    verb: verb.to_string(),
                    path: path.to_string(),
                };
            }
        };
        if rest.is_empty() {
            return RequestAttributes::NonResource {
                verb: verb.to_string(),
                path: path.to_string(),
            };
        }
        let mut a = ResourceAttributes {
            verb: verb.to_string(),
            group: group.to_string(),
            ..ResourceAttributes::default()
        };
        let mut parts = rest;
        if let ["watch", tail @ ..] = parts {
            a.verb = "watch".into();
            parts = tail;
        }
        if let ["namespaces", ns, tail @ ..] = parts {
            a.namespace = ns.to_string();
            // `namespaces/ns/status` and `/finalize` are the namespace's own subresources.
            if !tail.is_empty() && !matches!(tail[0], "status" | "finalize") {
                parts = tail;
            }
        }
        let at = |i: usize| parts.get(i).map(|s| s.to_string()).unwrap_or_default();
        (a.resource, a.name, a.subresource) = (at(0), at(1), at(2));
        if a.name.is_empty() {
            let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
            match a.verb.as_str() {
                "get" if watch => a.verb = "watch".into(),
                "get" => a.verb = "list".into(),
                "delete" => a.verb = "deletecollection".into(),
                _ => {}
            }
            if matches!(a.verb.as_str(), "list" | "watch")
                && let Some(name) = query
                    .get("fieldSelector")
                    .and_then(|s| name_from_field_selector(s))
            {
                a.name = name.to_string();
            }
        }
        RequestAttributes::Resource(a)
    }
}

/// Paths the anonymous identity may read (the real `system:public-info-viewer` role).
fn public_path(path: &str) -> bool {
    let p = path.trim_end_matches('/');
    ["/healthz", "/livez", "/readyz", "/version"]
        .iter()
        .any(|base| p == *base || p.starts_with(&format!("{base}/")))
}

/// Why a request was allowed (SelfSubjectAccessReview's `status.reason`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed(pub String);

/// Why a request was refused: the binding errors met on the way (`RBAC: ...`), if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied(pub String);

/// Decides a request of `id`. The admin may do anything.
pub fn decide(state: &State, id: &Identity, req: &RequestAttributes) -> Result<Allowed, Denied> {
    if *id == Identity::Admin {
        return Ok(Allowed(String::new()));
    }
    let authenticated = *id != Identity::Anonymous;
    match req {
        RequestAttributes::NonResource { path, .. } => {
            if authenticated || public_path(path) {
                Ok(Allowed(String::new()))
            } else {
                Err(Denied(String::new()))
            }
        }
        RequestAttributes::Resource(a) => {
            let self_review = a.group == "authorization.k8s.io"
                && a.resource == "selfsubjectaccessreviews"
                && a.verb == "create";
            if authenticated && self_review {
                return Ok(Allowed(String::new()));
            }
            Bindings::new(state, id).allows(a)
        }
    }
}

/// How many refused requests a cluster remembers ([`crate::server::Cluster::denials`]).
pub const DENIALS_KEPT: usize = 1024;

/// A request RBAC refused: who asked for what (the fields of an audit event that matter here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// `system:serviceaccount:NS:NAME`, `system:anonymous`, ...
    pub user: String,
    /// The request: a resource request's attributes, or a plain path's verb and path.
    pub request: RequestAttributes,
}

impl Denial {
    /// The denial of `request` for `id`.
    pub fn of(id: &Identity, request: &RequestAttributes) -> Denial {
        Denial {
            user: id.user(),
            request: request.clone(),
        }
    }
}

/// Checks a request of `id`, as the HTTP layer does before serving it: the real server's 403
/// `Status` when RBAC does not allow it.
pub fn authorize(state: &State, id: &Identity, req: &RequestAttributes) -> Result<(), ApiError> {
    let Err(Denied(reason)) = decide(state, id, req) else {
        return Ok(());
    };
    let user = id.user();
    let mut why = match req {
        RequestAttributes::NonResource { verb, path } => {
            format!("User \"{user}\" cannot {verb} path \"{path}\"")
        }
        RequestAttributes::Resource(a) => {
            let scope = if a.namespace.is_empty() {
                "at the cluster scope".to_string()
            } else {
                format!("in the namespace \"{}\"", a.namespace)
            };
            format!(
                "User \"{user}\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
                a.verb,
                a.combined_resource(),
                a.group
            )
        }
    };
    if !reason.is_empty() {
        why = format!("{why}: {reason}");
    }
    Err(match req {
        RequestAttributes::NonResource { .. } => ApiError::forbidden_request("", "", "", &why),
        RequestAttributes::Resource(a) => {
            ApiError::forbidden_request(&a.group, &a.resource, &a.name, &why)
        }
    })
}

/// The RBAC objects of one cluster, as they apply to one identity.
struct Bindings<'a> {
    state: &'a State,
    id: &'a Identity,
    user: String,
    groups: Vec<String>,
}

impl<'a> Bindings<'a> {
    fn new(state: &'a State, id: &'a Identity) -> Self {
        Bindings {
            state,
            id,
            user: id.user(),
            groups: id.groups(),
        }
    }

    /// Stored objects of an RBAC kind (`plural`), in one namespace or all.
    fn objects(&self, plural: &str, ns: Option<&'a str>) -> Vec<&'a Value> {
        let Some(rt) = self.state.registry.by_key(&format!("{plural}.{GROUP}")) else {
            return Vec::new();
        };
        self.state.list(&rt, ns, None).map(|(_, o)| o).collect()
    }

    fn object(&self, plural: &str, ns: &str, name: &str) -> Option<&'a Value> {
        let rt = self.state.registry.by_key(&format!("{plural}.{GROUP}"))?;
        self.state.get(&rt, ns, name)
    }

    /// Whether a subject of a binding in `binding_ns` ("" for a ClusterRoleBinding) names the
    /// identity.
    fn names_me(&self, subject: &Value, binding_ns: &str) -> bool {
        let name = subject["name"].as_str().unwrap_or("");
        match subject["kind"].as_str().unwrap_or("") {
            "User" => name == self.user,
            "Group" => self.groups.iter().any(|g| g == name),
            "ServiceAccount" => {
                let ns = subject["namespace"]
                    .as_str()
                    .filter(|n| !n.is_empty())
                    .unwrap_or(binding_ns);
                matches!(self.id, Identity::ServiceAccount { namespace, name: n }
                    if !ns.is_empty() && namespace == ns && n == name)
            }
            _ => false,
        }
    }

    /// The first rule of the bindings that apply which allows `a`, or the binding errors seen.
    fn allows(&self, a: &ResourceAttributes) -> Result<Allowed, Denied> {
        let mut errors = Vec::new();
        let cluster_bindings = self
            .objects("clusterrolebindings", None)
            .into_iter()
            .map(|b| (b, ""));
        let namespaced = if a.namespace.is_empty() {
            Vec::new()
        } else {
            self.objects("rolebindings", Some(a.namespace.as_str()))
        };
        let bindings =
            cluster_bindings.chain(namespaced.into_iter().map(|b| (b, a.namespace.as_str())));
        for (binding, ns) in bindings {
            let subjects = binding["subjects"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            let Some(subject) = subjects.iter().find(|s| self.names_me(s, ns)) else {
                continue;
            };
            let role_ref = &binding["roleRef"];
            let role_kind = role_ref["kind"].as_str().unwrap_or("");
            let role_name = role_ref["name"].as_str().unwrap_or("");
            let role = match role_kind {
                "ClusterRole" => self.object("clusterroles", "", role_name),
                // A ClusterRoleBinding cannot grant a Role.
                "Role" if !ns.is_empty() => self.object("roles", ns, role_name),
                _ => None,
            };
            let Some(role) = role else {
                errors.push(format!(
                    "{}.{GROUP} \"{role_name}\" not found",
                    role_kind.to_lowercase()
                ));
                continue;
            };
            let rules = role["rules"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            if rules.iter().any(|r| rule_allows(r, a)) {
                return Ok(Allowed(describe_grant(
                    binding, ns, role_kind, role_name, subject,
                )));
            }
        }
        Err(Denied(match errors.len() {
            0 => String::new(),
            1 => format!("RBAC: {}", errors[0]),
            _ => format!("RBAC: [{}]", errors.join(", ")),
        }))
    }
}

/// `RBAC: allowed by RoleBinding "b/ns" of Role "r" to ServiceAccount "sa/ns"`.
fn describe_grant(
    binding: &Value,
    ns: &str,
    role_kind: &str,
    role: &str,
    subject: &Value,
) -> String {
    let (binding_kind, binding_name) = if ns.is_empty() {
        ("ClusterRoleBinding", name_of(binding).to_string())
    } else {
        (
            "RoleBinding",
            format!("{}/{}", name_of(binding), meta_str(binding, "namespace")),
        )
    };
    let kind = subject["kind"].as_str().unwrap_or("");
    let name = subject["name"].as_str().unwrap_or("");
    let subject = match subject["namespace"].as_str().filter(|n| !n.is_empty()) {
        Some(sns) if kind == "ServiceAccount" => format!("{name}/{sns}"),
        None if kind == "ServiceAccount" => format!("{name}/{ns}"),
        _ => name.to_string(),
    };
    format!(
        "RBAC: allowed by {binding_kind} \"{binding_name}\" of {role_kind} \"{role}\" to {kind} \"{subject}\""
    )
}

/// The strings of a rule's list field.
fn strings<'a>(rule: &'a Value, field: &str) -> Vec<&'a str> {
    rule[field]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Whether one PolicyRule allows the request.
pub fn rule_allows(rule: &Value, a: &ResourceAttributes) -> bool {
    let verbs = strings(rule, "verbs");
    let groups = strings(rule, "apiGroups");
    let resources = strings(rule, "resources");
    let names = strings(rule, "resourceNames");
    let combined = a.combined_resource();
    let resource_ok = resources.iter().any(|r| {
        *r == "*"
            || *r == combined
            || (!a.subresource.is_empty() && r.strip_prefix("*/") == Some(a.subresource.as_str()))
    });
    (verbs.contains(&"*") || verbs.contains(&a.verb.as_str()))
        && (groups.contains(&"*") || groups.contains(&a.group.as_str()))
        && resource_ok
        && (names.is_empty() || (!a.name.is_empty() && names.contains(&a.name.as_str())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn attrs(method: Method, path: &str, query: &[(&str, &str)]) -> RequestAttributes {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let q = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        RequestAttributes::from_request(&method, &segs, &q, path)
    }

    fn res(
        verb: &str,
        group: &str,
        resource: &str,
        sub: &str,
        ns: &str,
        name: &str,
    ) -> RequestAttributes {
        RequestAttributes::Resource(ResourceAttributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            name: name.into(),
        })
    }

    #[test]
    fn request_attributes_like_the_real_request_info() {
        assert_eq!(
            attrs(Method::GET, "/api/v1/namespaces/a/pods", &[]),
            res("list", "", "pods", "", "a", "")
        );
        assert_eq!(
            attrs(
                Method::GET,
                "/api/v1/namespaces/a/pods",
                &[("watch", "true")]
            ),
            res("watch", "", "pods", "", "a", "")
        );
        assert_eq!(
            attrs(
                Method::GET,
                "/apis/apps/v1/namespaces/a/deployments",
                &[("fieldSelector", "metadata.name=web")]
            ),
            res("list", "apps", "deployments", "", "a", "web")
        );
        assert_eq!(
            attrs(
                Method::GET,
                "/apis/g.io/v1/watch/namespaces/a/things/x",
                &[]
            ),
            res("watch", "g.io", "things", "", "a", "x")
        );
        assert_eq!(
            attrs(
                Method::POST,
                "/api/v1/namespaces/a/serviceaccounts/bot/token",
                &[]
            ),
            res("create", "", "serviceaccounts", "token", "a", "bot")
        );
        assert_eq!(
            attrs(Method::GET, "/api/v1/namespaces/a", &[]),
            res("get", "", "namespaces", "", "a", "a")
        );
        assert_eq!(
            attrs(Method::PUT, "/api/v1/namespaces/a/status", &[]),
            res("update", "", "namespaces", "status", "a", "a")
        );
        assert_eq!(
            attrs(Method::DELETE, "/api/v1/namespaces/a/secrets", &[]),
            res("deletecollection", "", "secrets", "", "a", "")
        );
        assert_eq!(
            attrs(Method::GET, "/apis/apps/v1", &[]),
            RequestAttributes::NonResource {
                verb: "get".into(),
                path: "/apis/apps/v1".into()
            }
        );
    }

    #[test]
    fn rules_match_verbs_groups_resources_and_names() {
        let rule = json!({"apiGroups": [""], "resources": ["pods", "pods/status", "*/scale"],
                          "verbs": ["get", "list"], "resourceNames": []});
        let a = |verb: &str, resource: &str, sub: &str, name: &str| ResourceAttributes {
            verb: verb.into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: name.into(),
            ..Default::default()
        };
        assert!(rule_allows(&rule, &a("get", "pods", "", "p")));
        assert!(rule_allows(&rule, &a("get", "pods", "status", "p")));
        assert!(rule_allows(&rule, &a("get", "deployments", "scale", "d")));
        assert!(!rule_allows(&rule, &a("watch", "pods", "", "")));
        assert!(!rule_allows(&rule, &a("get", "pods", "log", "p")));
        let named = json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"], "resourceNames": ["only"]});
        assert!(rule_allows(&named, &a("delete", "pods", "", "only")));
        assert!(!rule_allows(&named, &a("delete", "pods", "", "other")));
        assert!(!rule_allows(&named, &a("list", "pods", "", "")));
    }

    #[test]
    fn denial_is_worded_like_the_real_server() {
        let state = State::new(10);
        let sa = Identity::ServiceAccount {
            namespace: "ns".into(),
            name: "sa".into(),
        };
        let e = authorize(&state, &sa, &res("get", "", "pods", "", "ns", "p")).unwrap_err();
        assert_eq!((e.code, e.reason), (403, "Forbidden"));
        assert_eq!(
            e.message,
            "pods \"p\" is forbidden: User \"system:serviceaccount:ns:sa\" cannot get resource \"pods\" in API group \"\" in the namespace \"ns\""
        );
        let e =
            authorize(&state, &sa, &res("list", "apps", "deployments", "", "", "")).unwrap_err();
        assert_eq!(
            e.message,
            "deployments.apps is forbidden: User \"system:serviceaccount:ns:sa\" cannot list resource \"deployments\" in API group \"apps\" at the cluster scope"
        );
        let e = authorize(
            &state,
            &Identity::Anonymous,
            &RequestAttributes::NonResource {
                verb: "get".into(),
                path: "/apis".into(),
            },
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "forbidden: User \"system:anonymous\" cannot get path \"/apis\""
        );
        assert!(
            authorize(
                &state,
                &Identity::Admin,
                &res("get", "", "pods", "", "ns", "p")
            )
            .is_ok()
        );
    }
}
