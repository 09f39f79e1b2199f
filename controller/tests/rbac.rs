//! The shipped RBAC, proven sufficient and minimal: the controller runs under the deploy
//! ServiceAccount's token against an RBAC-enforcing sandbox cluster.
//!
//! ```text
//!  admin  ─► CRDs, namespaces, and the RBAC objects parsed from the files in deploy/
//!            (deploy/base/rbac.yaml, the Lease Role and RoleBinding of deploy/controller/
//!            controller.yaml), namespaced as deploy/base/kustomization.yaml says
//!  token  ─► minted for <ns>/meridian-controller ─► kube clients (kubeconfig_for_token)
//!            ─► a controller (member cluster and status writes) + a leader elector (the Lease)
//!
//!  1. full roles: the demo (GatewayClass, Gateway with HTTP and HTTPS listeners whose Secret is
//!     in another namespace behind a ReferenceGrant, HTTPRoute to a Service with an
//!     EndpointSlice, a GRPCRoute to the same Service, a TLSRoute (refused by the Gateway's
//!     listeners, but its status is written all the same), a ListenerSet (the Gateway does not
//!     admit it: NotAllowed, written all the same), ServiceExport, ServiceImport,
//!     FailoverPolicy, a BackendTLSPolicy with its CA ConfigMap, a FailoverDrill run to the end)
//!     reaches its status, a route write that has to re-read the route works, and the
//!     sandbox's audit of refused requests (`Sandbox::denials`) has nothing for the controller.
//!  2. minimality: for every rule of both roles, every resource of a rule and every verb of a
//!     rule with several verbs, the role without that part, a fresh controller and elector, and
//!     a bounded wait until the audit shows a 403 on exactly that part. Nothing else may be
//!     refused meanwhile: the part is needed, and it is the only thing missing.
//! ```
//!
//! A second test does the same for the mesh identity roles (deploy/base/mesh.yaml,
//! deploy/controller/mesh.yaml): the CA Secret read and created, the bundle ConfigMap applied and
//! a proxy's token reviewed, under the controller's and `meridian-remote`'s tokens; each rule
//! removed gets exactly its 403; a proxy's own token is refused all of it.
//!
//! Before each case every status the controller writes is wiped, the Lease deleted and a fresh
//! drill created, so that every path (watchers, status writes, drill status and Events, Lease
//! create, get and update) runs in every case. The one rare path, `get` on `httproutes/status`,
//! `grpcroutes/status` and `tlsroutes/status` (a route status write re-reads the route only when its first attempt
//! failed), is forced: the API is set to answer the next status write of each route kind with
//! 409 Conflict and the routes' specs change, so each route's next status write conflicts and
//! is re-read at once (the writer's answer to a 409), whatever the timing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use gateway_api::backendtlspolicies::BackendTlsPolicy;
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::httproutes::HttpRoute;
use gateway_api::listenersets::ListenerSet;
use gateway_api::referencegrants::ReferenceGrant;
use gateway_api::tlsroutes::TlsRoute;
use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource};
use meridian_controller::leader::{ElectionConfig, Elector, LEASE_NAME};
use meridian_controller::{
    Controller, ControllerHandle, MemberCluster, StaticDataPlane, for_status_writes,
};
use meridian_crds::mcs::{ServiceExport, ServiceImport};
use meridian_crds::meridian::{DrillPhase, FailoverDrill, FailoverPolicy, drill as d};
use meridian_sandbox::rbac::{Denial, RequestAttributes};
use meridian_sandbox::{Sandbox, SandboxConfig};
use serde::Deserialize as _;
use serde_json::{Value, json};

const CLUSTER: &str = "east";
const REGION: &str = "us-east";
const SA: &str = "meridian-controller";
const CLASS: &str = "meridian";
/// How long one case may take to show its denial.
const CASE_WAIT: Duration = Duration::from_secs(15);
/// How long a case's controller keeps running after its denial, with nothing else refused.
const SETTLE: Duration = Duration::from_millis(500);

// --- the manifests in deploy/ -------------------------------------------------------------------

/// Every YAML document of a file under the workspace root, as JSON (comment-only documents
/// skipped).
fn yaml_docs(rel: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let v = serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            serde_json::to_value(v).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// The RBAC objects the controller runs under, as kustomize would render them.
struct Manifests {
    /// The namespace kustomize sets (deploy/base/kustomization.yaml).
    namespace: String,
    /// ServiceAccounts, ClusterRole, ClusterRoleBinding, Role, RoleBinding.
    objects: Vec<Value>,
    cluster_role: Value,
    lease_role: Value,
}

fn manifests() -> Manifests {
    let kustomization = &yaml_docs("deploy/base/kustomization.yaml")[0];
    let namespace = kustomization["namespace"]
        .as_str()
        .expect("deploy/base/kustomization.yaml sets a namespace")
        .to_string();
    let mut objects = Vec::new();
    let rbac = yaml_docs("deploy/base/rbac.yaml").into_iter().filter(|o| {
        matches!(
            o["kind"].as_str(),
            Some("ServiceAccount" | "ClusterRole" | "ClusterRoleBinding")
        )
    });
    let lease = yaml_docs("deploy/controller/controller.yaml")
        .into_iter()
        .filter(|o| matches!(o["kind"].as_str(), Some("Role" | "RoleBinding")));
    for mut o in rbac.chain(lease) {
        if !o["kind"].as_str().unwrap().starts_with("Cluster") {
            o["metadata"]["namespace"] = json!(namespace);
        }
        objects.push(o);
    }
    let one = |kind: &str| {
        let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
        assert_eq!(found.len(), 1, "exactly one {kind} in deploy/");
        found[0].clone()
    };
    let cluster_role = one("ClusterRole");
    let lease_role = one("Role");
    Manifests {
        namespace,
        objects,
        cluster_role,
        lease_role,
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Which role a case edits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    ClusterRole,
    LeaseRole,
}

/// What a case removes from one rule.
#[derive(Clone, Debug)]
enum Cut {
    /// One resource (the whole rule when it is the only one).
    Resource(String),
    /// One verb, for every resource of the rule.
    Verb(String),
}

/// One case: a role with one part of one rule removed.
#[derive(Clone, Debug)]
struct Part {
    which: Which,
    rule: usize,
    cut: Cut,
    /// The rule's API groups, resources and verbs.
    groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
}

impl Part {
    /// Every case of one role: each resource, and each verb of a rule with several verbs.
    fn all_of(which: Which, role: &Value) -> Vec<Part> {
        let mut out = Vec::new();
        for (i, rule) in role["rules"].as_array().unwrap().iter().enumerate() {
            let (groups, resources, verbs) = (
                strings(&rule["apiGroups"]),
                strings(&rule["resources"]),
                strings(&rule["verbs"]),
            );
            let part = |cut| Part {
                which,
                rule: i,
                cut,
                groups: groups.clone(),
                resources: resources.clone(),
                verbs: verbs.clone(),
            };
            out.extend(resources.iter().cloned().map(Cut::Resource).map(part));
            if verbs.len() > 1 {
                out.extend(verbs.iter().cloned().map(Cut::Verb).map(part));
            }
        }
        out
    }

    /// The role's rules without this part.
    fn cut_rules(&self, role: &Value) -> Value {
        let mut rules = role["rules"].as_array().unwrap().clone();
        let rule = &mut rules[self.rule];
        let (field, gone) = match &self.cut {
            Cut::Resource(r) => ("resources", r),
            Cut::Verb(v) => ("verbs", v),
        };
        let kept: Vec<String> = strings(&rule[field])
            .into_iter()
            .filter(|x| x != gone)
            .collect();
        if kept.is_empty() {
            rules.remove(self.rule);
        } else {
            rule[field] = json!(kept);
        }
        Value::Array(rules)
    }

    /// Resources and verbs whose requests may now be refused.
    fn removed(&self) -> (Vec<String>, Vec<String>) {
        match &self.cut {
            Cut::Resource(r) => (vec![r.clone()], self.verbs.clone()),
            Cut::Verb(v) => (self.resources.clone(), vec![v.clone()]),
        }
    }

    /// Whether a refused request lies inside the removed part.
    fn covers(&self, d: &Refused) -> bool {
        let (resources, verbs) = self.removed();
        self.groups.contains(&d.group) && resources.contains(&d.resource) && verbs.contains(&d.verb)
    }

    /// Whether this part is only used after a failed route status write (see the module doc).
    fn rare(&self) -> bool {
        // The rule covers GRPCRoute status too: both routes are forced to re-read.
        matches!(&self.cut, Cut::Verb(v) if v == "get")
            && self.resources.iter().any(|r| r == "httproutes/status")
    }

    fn describe(&self) -> String {
        let role = match self.which {
            Which::ClusterRole => "ClusterRole",
            Which::LeaseRole => "Role (Lease)",
        };
        let cut = match &self.cut {
            Cut::Resource(r) if self.resources.len() == 1 => format!("whole rule ({r})"),
            Cut::Resource(r) => format!("resource {r}"),
            Cut::Verb(v) => format!("verb {v}"),
        };
        format!(
            "{role} rule {} [{}] {} {}: - {cut}",
            self.rule,
            self.groups.join(","),
            self.resources.join(","),
            self.verbs.join(",")
        )
    }
}

// --- the audit ----------------------------------------------------------------------------------

/// A resource request the sandbox refused the controller.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Refused {
    verb: String,
    group: String,
    /// `resource` or `resource/subresource`.
    resource: String,
    namespace: String,
    name: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "403 {} {group}/{}", self.verb, self.resource)?;
        match (self.namespace.as_str(), self.name.as_str()) {
            ("", "") => Ok(()),
            (ns, "") => write!(f, " in {ns}"),
            (ns, name) => write!(f, " {ns}/{name}"),
        }
    }
}

fn controller_user(namespace: &str) -> String {
    format!("system:serviceaccount:{namespace}:{SA}")
}

/// The controller's refused requests among `denials[from..]`.
fn refused(denials: &[Denial], from: usize, user: &str) -> Vec<Refused> {
    denials
        .iter()
        .skip(from)
        .filter(|d| d.user == user)
        .map(|d| match &d.request {
            RequestAttributes::Resource(a) => Refused {
                verb: a.verb.clone(),
                group: a.group.clone(),
                resource: a.combined_resource(),
                namespace: a.namespace.clone(),
                name: a.name.clone(),
            },
            RequestAttributes::NonResource { verb, path } => Refused {
                verb: verb.clone(),
                group: String::new(),
                resource: format!("path {path}"),
                namespace: String::new(),
                name: String::new(),
            },
        })
        .collect()
}

// --- the environment ----------------------------------------------------------------------------

struct World {
    sb: Sandbox,
    admin: Client,
    /// The controller's clients: everything, and status writes.
    token: Client,
    token_writes: Client,
    m: Manifests,
    user: String,
}

async fn admin_apply(c: &Client, obj: Value) {
    match obj["kind"].as_str().unwrap() {
        "ServiceAccount" => drop(apply::<ServiceAccount>(c, obj).await),
        "ClusterRole" => drop(apply::<ClusterRole>(c, obj).await),
        "ClusterRoleBinding" => drop(apply::<ClusterRoleBinding>(c, obj).await),
        "Role" => drop(apply::<Role>(c, obj).await),
        "RoleBinding" => drop(apply::<RoleBinding>(c, obj).await),
        other => panic!("no RBAC object of kind {other} expected"),
    }
}

fn api_version<K: Resource<DynamicType = ()>>() -> String {
    K::api_version(&()).into_owned()
}

/// A PEM block of the right shape (translation checks the shape; the proxy parses it).
fn pem(label: &str) -> String {
    format!("-----BEGIN {label}-----\nTUVSSURJQU4gUkJBQyBURVNU\n-----END {label}-----\n")
}

fn drill(name: &str) -> Value {
    json!({"apiVersion": api_version::<FailoverDrill>(), "kind": "FailoverDrill",
        "metadata": {"name": name, "namespace": "app"},
        "spec": {"target": {"region": REGION},
                 "scope": {"gateways": [{"namespace": "infra", "name": "gw"}]},
                 "mode": "drain", "duration": "1s",
                 "guards": {"window": "1s", "minRequests": 5, "maxErrorPercent": 5}}})
}

/// The demo, as admin.
async fn demo(c: &Client) {
    for ns in ["infra", "app", "certs"] {
        apply::<Namespace>(
            c,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .await;
    }
    apply::<GatewayClass>(c, gateway_class(CLASS, ME)).await;
    let mut gw = gateway_obj("infra", "gw", CLASS);
    gw["spec"]["listeners"].as_array_mut().unwrap().push(json!({
        "name": "https", "port": 443, "protocol": "HTTPS", "hostname": "*.example.com",
        "tls": {"mode": "Terminate", "certificateRefs": [
            {"group": "", "kind": "Secret", "name": "gw-cert", "namespace": "certs"}]},
        "allowedRoutes": {"namespaces": {"from": "All"}}}));
    apply::<Gateway>(c, gw).await;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("gw-cert".into()),
            namespace: Some("certs".into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                ("tls.crt", pem("CERTIFICATE")),
                ("tls.key", pem("PRIVATE KEY")),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
            .collect(),
        ),
        ..Default::default()
    };
    let mut secret = serde_json::to_value(secret).unwrap();
    secret["apiVersion"] = json!("v1");
    secret["kind"] = json!("Secret");
    apply::<Secret>(c, secret).await;
    apply::<ReferenceGrant>(
        c,
        json!({"apiVersion": api_version::<ReferenceGrant>(), "kind": "ReferenceGrant",
            "metadata": {"name": "gateways-in-infra", "namespace": "certs"},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                               "namespace": "infra"}],
                     "to": [{"group": "", "kind": "Secret", "name": "gw-cert"}]}}),
    )
    .await;
    // The drill of `app` names infra/gw: drills stay in their namespace unless granted.
    apply::<ReferenceGrant>(
        c,
        json!({"apiVersion": api_version::<ReferenceGrant>(), "kind": "ReferenceGrant",
            "metadata": {"name": "drills-from-app", "namespace": "infra"},
            "spec": {"from": [{"group": "meridian.dev", "kind": "FailoverDrill",
                               "namespace": "app"}],
                     "to": [{"group": "gateway.networking.k8s.io", "kind": "Gateway"}]}}),
    )
    .await;
    apply::<Service>(c, service("app", "echo")).await;
    apply::<EndpointSlice>(
        c,
        slice("app", "echo-a", "echo", &["10.9.0.1"], "us-east-a"),
    )
    .await;
    apply::<ServiceExport>(c, service_export("app", "echo")).await;
    apply::<ServiceImport>(
        c,
        json!({"apiVersion": api_version::<ServiceImport>(), "kind": "ServiceImport",
            "metadata": {"name": "echo", "namespace": "app"},
            "spec": {"type": "ClusterSetIP", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
    )
    .await;
    apply::<HttpRoute>(
        c,
        route_obj("app", "web", ("infra", "gw"), service_ref("echo", 80)),
    )
    .await;
    apply::<GrpcRoute>(
        c,
        json!({"apiVersion": api_version::<GrpcRoute>(), "kind": "GRPCRoute",
            "metadata": {"name": "grpc", "namespace": "app"},
            "spec": {"parentRefs": [{"name": "gw", "namespace": "infra"}],
                     "hostnames": ["grpc.example.org"],
                     "rules": [{"backendRefs": [{"name": "echo", "port": 80}]}]}}),
    )
    .await;
    apply::<ListenerSet>(
        c,
        json!({"apiVersion": api_version::<ListenerSet>(), "kind": "ListenerSet",
            "metadata": {"name": "team", "namespace": "infra"},
            "spec": {"parentRef": {"name": "gw"},
                     "listeners": [{"name": "extra", "port": 8080, "protocol": "HTTP"}]}}),
    )
    .await;
    apply::<TlsRoute>(
        c,
        json!({"apiVersion": api_version::<TlsRoute>(), "kind": "TLSRoute",
            "metadata": {"name": "tls", "namespace": "app"},
            "spec": {"parentRefs": [{"name": "gw", "namespace": "infra"}],
                     "hostnames": ["tls.example.org"],
                     "rules": [{"backendRefs": [{"name": "echo", "port": 80}]}]}}),
    )
    .await;
    apply::<FailoverPolicy>(
        c,
        json!({"apiVersion": api_version::<FailoverPolicy>(), "kind": "FailoverPolicy",
            "metadata": {"name": "echo", "namespace": "app"},
            "spec": {"targetRefs": [{"group": "multicluster.x-k8s.io", "kind": "ServiceImport",
                                     "name": "echo"}]}}),
    )
    .await;
    apply::<ConfigMap>(
        c,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "echo-ca", "namespace": "app"},
            "data": {"ca.crt": pem("CERTIFICATE")}}),
    )
    .await;
    apply::<BackendTlsPolicy>(
        c,
        json!({"apiVersion": api_version::<BackendTlsPolicy>(), "kind": "BackendTLSPolicy",
            "metadata": {"name": "echo-tls", "namespace": "app"},
            "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "echo"}],
                     "validation": {"hostname": "echo.app.example.com",
                                    "caCertificateRefs": [{"group": "", "kind": "ConfigMap",
                                                           "name": "echo-ca"}]}}}),
    )
    .await;
}

async fn setup() -> World {
    let sb = Sandbox::start(SandboxConfig::ephemeral(&[CLUSTER]))
        .await
        .unwrap();
    sb.enforce_rbac(CLUSTER, true).unwrap();
    let admin_token = sb.admin_token(CLUSTER).unwrap();
    let admin = token_client(&sb, &admin_token, "default").await;
    install_crds(&admin).await;
    let m = manifests();
    apply::<Namespace>(
        &admin,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": m.namespace}}),
    )
    .await;
    for o in &m.objects {
        admin_apply(&admin, o.clone()).await;
    }
    demo(&admin).await;
    let token = sb.mint_token(CLUSTER, &m.namespace, SA).unwrap();
    let config = token_config(&sb, &token, &m.namespace).await;
    let user = controller_user(&m.namespace);
    World {
        token: Client::try_from(config.clone()).unwrap(),
        token_writes: Client::try_from(for_status_writes(config)).unwrap(),
        sb,
        admin,
        m,
        user,
    }
}

async fn token_config(sb: &Sandbox, token: &str, ns: &str) -> kube::Config {
    let yaml = sb.kubeconfig_for_token(CLUSTER, token, ns).unwrap();
    let kc = kube::config::Kubeconfig::from_yaml(&yaml).unwrap();
    kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap()
}

async fn token_client(sb: &Sandbox, token: &str, ns: &str) -> Client {
    Client::try_from(token_config(sb, token, ns).await).unwrap()
}

/// A controller and its elector, both under the ServiceAccount's token.
struct Running {
    ctl: ControllerHandle,
    elector: Elector,
}

impl World {
    async fn start_controller(&self, identity: &str) -> Running {
        let mut election = ElectionConfig::new(self.m.namespace.clone(), identity);
        election.lease_duration = Duration::from_secs(3);
        election.renew_deadline = Duration::from_secs(2);
        election.retry_period = Duration::from_millis(200);
        let elector = Elector::start(self.token.clone(), election).unwrap();
        let dp = StaticDataPlane::new(vec!["127.0.0.1".parse().unwrap()]);
        let member = MemberCluster::new(CLUSTER, REGION, vec![], self.token.clone());
        let mut cfg = fast_config(vec![member], dp as Arc<_>);
        cfg.startup_grace = Duration::from_millis(200);
        cfg.write_clients
            .insert(CLUSTER.to_string(), self.token_writes.clone());
        cfg.write_gate = Some(elector.write_gate());
        let ctl = Controller::start(cfg).await.unwrap();
        Running { ctl, elector }
    }

    fn denial_count(&self) -> usize {
        self.sb.denials(CLUSTER).unwrap().len()
    }

    fn refused_since(&self, from: usize) -> Vec<Refused> {
        let all = self.sb.denials(CLUSTER).unwrap();
        assert!(
            all.len() < meridian_sandbox::rbac::DENIALS_KEPT,
            "the audit is full: older entries were dropped and indices moved"
        );
        refused(&all, from, &self.user)
    }

    /// Puts both roles back as shipped, then replaces `part`'s role with that part removed.
    async fn set_roles(&self, part: Option<&Part>) {
        for (which, role) in [
            (Which::ClusterRole, &self.m.cluster_role),
            (Which::LeaseRole, &self.m.lease_role),
        ] {
            let rules = match part {
                Some(p) if p.which == which => p.cut_rules(role),
                _ => role["rules"].clone(),
            };
            let name = role["metadata"]["name"].as_str().unwrap();
            let body = json!({"rules": rules});
            match which {
                Which::ClusterRole => dyn_api::<ClusterRole>(&self.admin, None),
                Which::LeaseRole => dyn_api::<Role>(&self.admin, Some(&self.m.namespace)),
            }
            .patch(name, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .unwrap();
        }
    }

    /// Clears every status the controller writes, deletes the Lease and creates a fresh drill,
    /// so that a new controller does all of its writes.
    async fn fresh_work(&self, drill_name: &str) {
        let wipe = |conds: Value| json!({"status": conds});
        let pp = PatchParams::default();
        let conditions = wipe(json!({"conditions": []}));
        dyn_api::<GatewayClass>(&self.admin, None)
            .patch_status(CLASS, &pp, &Patch::Merge(&conditions))
            .await
            .unwrap();
        dyn_api::<Gateway>(&self.admin, Some("infra"))
            .patch_status("gw", &pp, &Patch::Merge(&conditions))
            .await
            .unwrap();
        dyn_api::<FailoverPolicy>(&self.admin, Some("app"))
            .patch_status("echo", &pp, &Patch::Merge(&conditions))
            .await
            .unwrap();
        dyn_api::<ListenerSet>(&self.admin, Some("infra"))
            .patch_status("team", &pp, &Patch::Merge(&conditions))
            .await
            .unwrap();
        dyn_api::<HttpRoute>(&self.admin, Some("app"))
            .patch_status("web", &pp, &Patch::Merge(&wipe(json!({"parents": []}))))
            .await
            .unwrap();
        dyn_api::<GrpcRoute>(&self.admin, Some("app"))
            .patch_status("grpc", &pp, &Patch::Merge(&wipe(json!({"parents": []}))))
            .await
            .unwrap();
        dyn_api::<TlsRoute>(&self.admin, Some("app"))
            .patch_status("tls", &pp, &Patch::Merge(&wipe(json!({"parents": []}))))
            .await
            .unwrap();
        dyn_api::<BackendTlsPolicy>(&self.admin, Some("app"))
            .patch_status(
                "echo-tls",
                &pp,
                &Patch::Merge(&wipe(json!({"ancestors": []}))),
            )
            .await
            .unwrap();
        let leases = Api::<Lease>::namespaced(self.admin.clone(), &self.m.namespace);
        if leases.get_opt(LEASE_NAME).await.unwrap().is_some() {
            leases
                .delete(LEASE_NAME, &Default::default())
                .await
                .unwrap();
        }
        apply::<FailoverDrill>(&self.admin, drill(drill_name)).await;
    }

    /// Arms one 409 Conflict for the next status write of each route kind, then changes the
    /// routes' specs (a new status is due): each route's status write conflicts and the writer
    /// re-reads the route (`get` on its status) before it writes again.
    async fn force_route_reread(&self, round: usize) {
        // Armed before the patches, so no route's new status can be written before its conflict.
        for plural in ["httproutes", "grpcroutes", "tlsroutes"] {
            self.sb
                .conflict_status_writes(CLUSTER, "gateway.networking.k8s.io", plural, 1)
                .unwrap();
        }
        for k in 1..=3 {
            // Each patch adds a host naming the round, so the spec (and generation) changes.
            // The GRPCRoute and TLSRoute too: their statuses are written once at the start and,
            // their echoes translating nothing, never again unless their specs change.
            let (name, hosts, api) = match k % 3 {
                0 => (
                    "web",
                    [
                        "echo.example.com".to_string(),
                        format!("r{round}.example.com"),
                    ],
                    dyn_api::<HttpRoute>(&self.admin, Some("app")),
                ),
                1 => (
                    "grpc",
                    [
                        "grpc.example.org".to_string(),
                        format!("g{round}.example.org"),
                    ],
                    dyn_api::<GrpcRoute>(&self.admin, Some("app")),
                ),
                _ => (
                    "tls",
                    [
                        "tls.example.org".to_string(),
                        format!("t{round}.example.org"),
                    ],
                    dyn_api::<TlsRoute>(&self.admin, Some("app")),
                ),
            };
            let body = json!({"spec": {"hostnames": hosts}});
            api.patch(name, &PatchParams::default(), &Patch::Merge(&body))
                .await
                .unwrap();
        }
    }
}

async fn drill_events(c: &Client, name: &str) -> Vec<String> {
    Api::<K8sEvent>::namespaced(c.clone(), "app")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| e.reason)
        .collect()
}

fn condition_of(conds: Option<Vec<Condition>>, t: &str) -> Result<(String, String), String> {
    let conds = conds.unwrap_or_default();
    cond(&conds, t)
        .map(|c| (c.status.clone(), c.reason.clone()))
        .ok_or_else(|| format!("no {t} in {conds:?}"))
}

/// Phase 1: with the roles as shipped, everything reaches its status and nothing is refused.
async fn full_roles_suffice(w: &World) {
    w.set_roles(None).await;
    let run = w.start_controller("replica-full").await;
    run.ctl.wait_ready(WAIT).await.unwrap();
    let c = &w.admin;
    eventually_async("GatewayClass Accepted", WAIT, || async {
        let gc = Api::<GatewayClass>::all(c.clone())
            .get(CLASS)
            .await
            .unwrap();
        let got = condition_of(gc.status.and_then(|s| s.conditions), "Accepted")?;
        (got.0 == "True").then_some(()).ok_or(format!("{got:?}"))
    })
    .await;
    eventually_async(
        "Gateway Programmed, both listeners resolved",
        WAIT,
        || async {
            let g = gateway(c, "infra", "gw").await;
            let status = g.status.unwrap_or_default();
            let programmed = condition_of(status.conditions.clone(), "Programmed")?;
            let listeners: Vec<(String, (String, String))> = status
                .listeners
                .unwrap_or_default()
                .into_iter()
                .map(|l| {
                    let c = cond(&l.conditions, "ResolvedRefs")
                        .map(|c| (c.status.clone(), c.reason.clone()))
                        .unwrap_or_default();
                    (l.name, c)
                })
                .collect();
            let resolved = listeners.len() == 2 && listeners.iter().all(|(_, c)| c.0 == "True");
            if programmed.0 == "True" && resolved {
                Ok(())
            } else {
                Err(format!(
                    "Programmed {programmed:?}, listeners {listeners:?}"
                ))
            }
        },
    )
    .await;
    eventually_async("route Accepted and ResolvedRefs", WAIT, || async {
        let (a, r) = our_parent(c, "app", "web").await?;
        (a.0 == "True" && r.0 == "True")
            .then_some(())
            .ok_or(format!("{a:?} {r:?}"))
    })
    .await;
    eventually_async("GRPCRoute Accepted", WAIT, || async {
        let r = Api::<GrpcRoute>::namespaced(c.clone(), "app")
            .get("grpc")
            .await
            .unwrap();
        let ours: Vec<Option<(String, String)>> = r
            .status
            .map(|s| s.parents)
            .unwrap_or_default()
            .iter()
            .filter(|p| p.controller_name == ME)
            .map(|p| cond(&p.conditions, "Accepted").map(|c| (c.status.clone(), c.reason.clone())))
            .collect();
        (ours == [Some(("True".to_string(), "Accepted".to_string()))])
            .then_some(())
            .ok_or(format!("{ours:?}"))
    })
    .await;
    eventually_async("TLSRoute status written", WAIT, || async {
        let r = Api::<TlsRoute>::namespaced(c.clone(), "app")
            .get("tls")
            .await
            .unwrap();
        let ours: Vec<Option<(String, String)>> = r
            .status
            .map(|s| s.parents)
            .unwrap_or_default()
            .iter()
            .filter(|p| p.controller_name == ME)
            .map(|p| cond(&p.conditions, "Accepted").map(|c| (c.status.clone(), c.reason.clone())))
            .collect();
        // The Gateway has no passthrough listener: refused, and said so.
        (ours
            == [Some((
                "False".to_string(),
                "NotAllowedByListeners".to_string(),
            ))])
        .then_some(())
        .ok_or(format!("{ours:?}"))
    })
    .await;
    eventually_async("ListenerSet status written", WAIT, || async {
        let s = Api::<ListenerSet>::namespaced(c.clone(), "infra")
            .get("team")
            .await
            .unwrap();
        // The Gateway has no allowedListeners: refused, and said so.
        let got = condition_of(s.status.and_then(|s| s.conditions), "Accepted")?;
        (got == ("False".to_string(), "NotAllowed".to_string()))
            .then_some(())
            .ok_or(format!("{got:?}"))
    })
    .await;
    eventually_async("FailoverPolicy Accepted", WAIT, || async {
        let p = Api::<FailoverPolicy>::namespaced(c.clone(), "app")
            .get("echo")
            .await
            .unwrap();
        let got = condition_of(p.status.map(|s| s.conditions), "Accepted")?;
        (got.0 == "True").then_some(()).ok_or(format!("{got:?}"))
    })
    .await;
    eventually_async("BackendTLSPolicy Accepted for gw", WAIT, || async {
        let p = Api::<BackendTlsPolicy>::namespaced(c.clone(), "app")
            .get("echo-tls")
            .await
            .unwrap();
        let ancestors = p.status.map(|s| s.ancestors).unwrap_or_default();
        let got = ancestors
            .iter()
            .find(|a| a.ancestor_ref.name == "gw")
            .map(|a| condition_of(Some(a.conditions.clone()), "Accepted"))
            .ok_or(format!("ancestors {ancestors:?}"))??;
        (got.0 == "True").then_some(()).ok_or(format!("{got:?}"))
    })
    .await;
    apply::<FailoverDrill>(c, drill("full")).await;
    eventually_async("drill Succeeded", WAIT, || async {
        let d = Api::<FailoverDrill>::namespaced(c.clone(), "app")
            .get("full")
            .await
            .unwrap();
        let s = d.status.unwrap_or_default();
        (s.phase == Some(DrillPhase::Succeeded))
            .then_some(())
            .ok_or(format!("{:?}: {:?}", s.phase, s.message))
    })
    .await;
    let events = eventually_async("drill Events", WAIT, || async {
        let got = drill_events(c, "full").await;
        let want = [d::STARTED, d::TARGET_FAILED, d::RESTORED, d::COMPLETED];
        if want.iter().all(|r| got.iter().any(|g| g == r)) {
            Ok(got)
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    // The route write that has to re-read the route (the rare path) works under the role too.
    let before = route(c, "app", "web").await.metadata.generation;
    w.force_route_reread(0).await;
    eventually_async("route status of the new generation", WAIT, || async {
        // The API answers like a starting server for a moment: a failed read is "not yet".
        let r = Api::<HttpRoute>::namespaced(c.clone(), "app")
            .get("web")
            .await
            .map_err(|e| e.to_string())?;
        let ours: Vec<Option<i64>> = r
            .status
            .map(|s| s.parents)
            .unwrap_or_default()
            .iter()
            .filter(|p| p.controller_name == ME)
            .map(|p| cond(&p.conditions, "Accepted").and_then(|c| c.observed_generation))
            .collect();
        (r.metadata.generation > before && ours == [r.metadata.generation])
            .then_some(())
            .ok_or(format!(
                "generation {:?}, ours {ours:?}",
                r.metadata.generation
            ))
    })
    .await;
    let lease = Api::<Lease>::namespaced(c.clone(), &w.m.namespace)
        .get(LEASE_NAME)
        .await
        .unwrap();
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("replica-full")
    );
    run.elector.shutdown().await;
    run.ctl.shutdown().await;
    assert_eq!(
        w.refused_since(0),
        vec![],
        "the shipped roles refused the controller something"
    );
    println!("full roles: no denials; drill Events {events:?}");
}

/// Phase 2, one case: the role without `part`; waits until the controller is refused exactly
/// that part. Returns what was refused.
async fn case(w: &World, n: usize, part: &Part) -> Vec<Refused> {
    w.set_roles(Some(part)).await;
    let drill_name = format!("case-{n}");
    w.fresh_work(&drill_name).await;
    let from = w.denial_count();
    let run = w.start_controller(&format!("replica-{n}")).await;
    let (resources, verbs) = part.removed();
    // Each removed resource is refused (a removed verb: for every resource of the rule).
    let must: Vec<&String> = match &part.cut {
        Cut::Resource(r) => vec![r],
        Cut::Verb(_) => resources.iter().collect(),
    };
    let (must, verbs) = (&must, &verbs);
    let mut round = 0;
    // For a failure message that tells a controller that never led (no writes at all) from
    // forced re-reads that never reached a status GET.
    let gate = run.elector.write_gate();
    let forced = std::sync::atomic::AtomicUsize::new(0);
    let (gate, forced) = (&gate, &forced);
    eventually_async(&part.describe(), CASE_WAIT, || {
        round += 1;
        let rare = part.rare() && round % 10 == 1;
        async move {
            if rare {
                w.force_route_reread(round).await;
                forced.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let got = w.refused_since(from);
            let missing: Vec<&&String> = must
                .iter()
                .filter(|r| !got.iter().any(|d| &&d.resource == *r && part.covers(d)))
                .collect();
            if missing.is_empty() {
                Ok(got)
            } else {
                Err(format!(
                    "no 403 yet on {missing:?} {verbs:?}; refused so far: {got:?}; leading: \
                     {}; forced re-reads: {}",
                    *gate.borrow(),
                    forced.load(std::sync::atomic::Ordering::Relaxed)
                ))
            }
        }
    })
    .await;
    // Whatever else the controller does meanwhile (watchers, status writes, Lease renewals every
    // 200 ms, the drill's first writes) is not refused: the removed part is all that is missing.
    holds_for_async(
        &format!("{}: nothing else refused", part.describe()),
        SETTLE,
        || async {
            let outside: Vec<Refused> = w
                .refused_since(from)
                .into_iter()
                .filter(|d| !part.covers(d))
                .collect();
            if outside.is_empty() {
                Ok(())
            } else {
                Err(format!("refused outside the removed part: {outside:?}"))
            }
        },
    )
    .await;
    Api::<FailoverDrill>::namespaced(w.admin.clone(), "app")
        .delete(&drill_name, &Default::default())
        .await
        .unwrap();
    run.elector.shutdown().await;
    run.ctl.shutdown().await;
    // A conflict armed for a route kind whose write never came must not reach the next case.
    for plural in ["httproutes", "grpcroutes", "tlsroutes"] {
        w.sb.conflict_status_writes(CLUSTER, "gateway.networking.k8s.io", plural, 0)
            .unwrap();
    }
    let mut got = w.refused_since(from);
    let outside: Vec<&Refused> = got.iter().filter(|d| !part.covers(d)).collect();
    assert!(
        outside.is_empty(),
        "{}: refused outside the removed part: {outside:?}",
        part.describe()
    );
    got.sort();
    got.dedup();
    got
}

/// The shipped ClusterRole and Lease Role are sufficient (phase 1) and every part of them is
/// needed (phase 2); prints a table of each removed part and the 403s it caused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_roles_are_sufficient_and_every_rule_is_needed() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("MERIDIAN_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
    let started = std::time::Instant::now();
    let w = setup().await;
    full_roles_suffice(&w).await;
    let full = started.elapsed();
    let parts: Vec<Part> = Part::all_of(Which::ClusterRole, &w.m.cluster_role)
        .into_iter()
        .chain(Part::all_of(Which::LeaseRole, &w.m.lease_role))
        .collect();
    let mut table = Vec::new();
    for (n, part) in parts.iter().enumerate() {
        let t = std::time::Instant::now();
        let refused = case(&w, n, part).await;
        table.push((part.describe(), refused, t.elapsed()));
    }
    w.set_roles(None).await;
    println!("\nremoved part -> 403s the controller got (full roles: none; took {full:.1?})");
    for (what, refused, took) in &table {
        let seen: Vec<String> = refused.iter().map(ToString::to_string).collect();
        println!("{what}\n    -> {} ({took:.1?})", seen.join("; "));
    }
    println!(
        "{} cases, {:.1?} in all, {} refusals in the audit",
        table.len(),
        started.elapsed(),
        w.denial_count()
    );
    w.sb.shutdown().await;
}

// --- mesh identity -------------------------------------------------------------------------------

/// The mesh identity roles and bindings (deploy/base/mesh.yaml in every member,
/// deploy/controller/mesh.yaml where the controller runs), namespaced as kustomize would.
fn mesh_manifests(namespace: &str) -> Vec<Value> {
    let mut objects = yaml_docs("deploy/base/mesh.yaml");
    objects.extend(yaml_docs("deploy/controller/mesh.yaml"));
    for o in &mut objects {
        if !o["kind"].as_str().unwrap().starts_with("Cluster") {
            o["metadata"]["namespace"] = json!(namespace);
        }
    }
    objects
}

/// What the controller does for mesh identity, under `controller` (its own cluster's identity)
/// and `remote` (the identity of a member Secret): read or create the CA Secret, apply the
/// bundle, review a proxy's token. Returns what failed.
async fn mesh_work(
    w: &World,
    ns: &str,
    controller: &Client,
    remote: &Client,
    token: &str,
) -> Vec<String> {
    use meridian_controller::mesh::{self, MeshMembers, TokenReviewVerifier, load_or_create_ca};
    use meridian_controller::{MemberDirectory, MemberEntry};
    use meridian_distribution::pki::TrustDomain;
    use meridian_distribution::server::{BootstrapClaim, BootstrapVerifier as _};

    let mut failed = Vec::new();
    // Absent first, so that the create runs; then present, so that the read does.
    let secrets = Api::<Secret>::namespaced(w.admin.clone(), ns);
    if secrets.get_opt("meridian-ca").await.unwrap().is_some() {
        secrets
            .delete("meridian-ca", &Default::default())
            .await
            .unwrap();
    }
    let td = TrustDomain::default();
    for round in ["create", "read"] {
        if let Err(e) = load_or_create_ca(controller.clone(), ns, "meridian-ca", &td).await {
            failed.push(format!("CA ({round}): {e}"));
        }
    }
    let pem = "-----BEGIN CERTIFICATE-----\nTUVSSURJQU4=\n-----END CERTIFICATE-----\n";
    for (who, c) in [("controller", controller), ("remote", remote)] {
        if let Err(e) = mesh::apply_bundle(c.clone(), ns, pem).await {
            failed.push(format!("bundle ({who}): {e}"));
        }
        let member = MemberCluster::new(CLUSTER, REGION, vec!["a".into()], c.clone());
        let directory = MemberDirectory::from([(
            CLUSTER.to_string(),
            MemberEntry {
                cluster: member,
                pool: None,
            },
        )]);
        let (_tx, rx) = tokio::sync::watch::channel(directory);
        let accounts = vec![format!("{ns}/meridian-proxy").parse().unwrap()];
        let verifier = TokenReviewVerifier::new(MeshMembers::new(rx), accounts);
        let claim = BootstrapClaim {
            cluster: CLUSTER.into(),
            zone: "a".into(),
            proxy_id: "p".into(),
            credential: token.to_string(),
        };
        match verifier.verify(&claim).await {
            Ok(g) => assert_eq!(g.region, REGION),
            Err(r) => failed.push(format!("review ({who}): {} {}", r.reason, r.message)),
        }
    }
    failed
}

/// Replaces the rules of `role` (a ClusterRole or a Role).
async fn set_rules(admin: &Client, role: &Value, rules: Value) {
    let name = role["metadata"]["name"].as_str().unwrap();
    let api = match role["kind"].as_str().unwrap() {
        "ClusterRole" => dyn_api::<ClusterRole>(admin, None),
        _ => dyn_api::<Role>(admin, role["metadata"]["namespace"].as_str()),
    };
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({ "rules": rules })),
    )
    .await
    .unwrap();
}

/// The mesh roles as shipped let the controller (and `meridian-remote`) do their mesh work with
/// nothing refused; each of their rules, removed, gets exactly its 403; a proxy's own token can
/// neither read the CA Secret nor review tokens nor write the bundle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_roles_are_sufficient_every_rule_is_needed_and_proxies_get_nothing() {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec, TokenReview};
    use k8s_openapi::api::core::v1::ConfigMap;

    let w = setup().await;
    let ns = w.m.namespace.clone();
    for o in mesh_manifests(&ns) {
        admin_apply(&w.admin, o).await;
    }
    let remote_token = w.sb.mint_token(CLUSTER, &ns, "meridian-remote").unwrap();
    let remote = token_client(&w.sb, &remote_token, &ns).await;
    let remote_user = format!("system:serviceaccount:{ns}:meridian-remote");
    // The proxy's bootstrap token, as the kubelet projects it (audience meridian).
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec!["meridian".into()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let bootstrap = Api::<ServiceAccount>::namespaced(w.admin.clone(), &ns)
        .create_token_request("meridian-proxy", &Default::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .unwrap();
    let ours = |from: usize| {
        let mut got = refused(&w.sb.denials(CLUSTER).unwrap(), from, &w.user);
        got.extend(refused(&w.sb.denials(CLUSTER).unwrap(), from, &remote_user));
        got
    };

    // As shipped: everything works, nothing refused.
    let from = w.denial_count();
    let failed = mesh_work(&w, &ns, &w.token, &remote, &bootstrap).await;
    assert_eq!(failed, Vec::<String>::new());
    assert_eq!(ours(from), vec![]);

    // A proxy's API token (if it had one mounted) gets none of it.
    let proxy_token = w.sb.mint_token(CLUSTER, &ns, "meridian-proxy").unwrap();
    let proxy = token_client(&w.sb, &proxy_token, &ns).await;
    let forbidden = |r: Result<(), kube::Error>, what: &str| match r {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("proxy {what}: expected 403, got {other:?}"),
    };
    forbidden(
        Api::<Secret>::namespaced(proxy.clone(), &ns)
            .get("meridian-ca")
            .await
            .map(drop),
        "reads the CA Secret",
    );
    forbidden(
        Api::<Secret>::namespaced(proxy.clone(), &ns)
            .list(&Default::default())
            .await
            .map(drop),
        "lists Secrets",
    );
    forbidden(
        Api::<TokenReview>::all(proxy.clone())
            .create(&Default::default(), &TokenReview::default())
            .await
            .map(drop),
        "creates a TokenReview",
    );
    forbidden(
        meridian_controller::mesh::apply_bundle(proxy.clone(), &ns, "x").await,
        "writes the bundle",
    );
    forbidden(
        Api::<ConfigMap>::namespaced(proxy.clone(), &ns)
            .get("meridian-ca")
            .await
            .map(drop),
        "reads the bundle through the API",
    );

    // Every rule is needed: without it, a 403 on exactly that rule and nothing else.
    let roles: Vec<Value> = mesh_manifests(&ns)
        .into_iter()
        .filter(|o| matches!(o["kind"].as_str(), Some("ClusterRole" | "Role")))
        .collect();
    assert_eq!(roles.len(), 3, "token reviewer, bundle, CA Secret");
    let mut table = Vec::new();
    for role in &roles {
        let rules = role["rules"].as_array().unwrap();
        for (i, rule) in rules.iter().enumerate() {
            let mut cut = rules.clone();
            cut.remove(i);
            set_rules(&w.admin, role, Value::Array(cut)).await;
            let from = w.denial_count();
            let failed = mesh_work(&w, &ns, &w.token, &remote, &bootstrap).await;
            set_rules(&w.admin, role, role["rules"].clone()).await;
            let what = format!(
                "{} {} rule {i}",
                role["kind"].as_str().unwrap(),
                role["metadata"]["name"].as_str().unwrap()
            );
            let got = ours(from);
            assert!(
                !got.is_empty() && !failed.is_empty(),
                "{what}: nothing refused without it"
            );
            let (groups, resources, verbs) = (
                strings(&rule["apiGroups"]),
                strings(&rule["resources"]),
                strings(&rule["verbs"]),
            );
            for d in &got {
                assert!(
                    groups.contains(&d.group)
                        && resources.contains(&d.resource)
                        && verbs.contains(&d.verb),
                    "{what}: refused outside the rule: {d}"
                );
            }
            table.push((what, got));
        }
    }
    println!("\nmesh role without -> 403s");
    for (what, got) in &table {
        let seen: Vec<String> = got.iter().map(ToString::to_string).collect();
        println!("{what}\n    -> {}", seen.join("; "));
    }
    w.sb.shutdown().await;
}
