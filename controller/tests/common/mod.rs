//! Shared harness of the controller's end-to-end tests: sandboxes, CRDs, a running controller
//! with a [`StaticDataPlane`], object builders and bounded waits.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use meridian_controller::{
    Controller, ControllerConfig, ControllerHandle, MemberCluster, StaticDataPlane,
};
use meridian_crds::CustomResourceDefinition;
use meridian_model::snapshot::{BackendTarget, Endpoint, Snapshot};
use meridian_sandbox::{Sandbox, SandboxConfig};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

// Bounded waits (`eventually_async(what, WAIT, check)` and friends), shared by every test crate.
#[allow(unused_imports)]
pub use meridian_test_support::{
    eventually, eventually_async, holds_for, holds_for_async, settles,
};

pub const ME: &str = "meridian.dev/gateway-controller";
/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn region_of(cluster: &str) -> String {
    match cluster {
        "east" => "us-east".into(),
        "west" => "us-west".into(),
        "central" => "eu-central".into(),
        other => format!("region-{other}"),
    }
}

pub fn client_for(url: &str) -> Client {
    Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap()
}

pub async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in meridian_crds::all_crds() {
        api.create(&PostParams::default(), &crd).await.unwrap();
    }
}

pub struct Env {
    pub sandboxes: Vec<Option<Sandbox>>,
    pub clients: BTreeMap<String, Client>,
    pub dp: Arc<StaticDataPlane>,
    pub ctl: ControllerHandle,
}

pub fn fast_config(clusters: Vec<MemberCluster>, dp: Arc<StaticDataPlane>) -> ControllerConfig {
    let mut cfg = ControllerConfig::new(clusters, dp);
    cfg.debounce = Duration::from_millis(20);
    cfg.probe_interval = Duration::from_millis(300);
    cfg.probe_timeout = Duration::from_secs(2);
    cfg.startup_grace = Duration::from_secs(3);
    cfg.write_timeout = Duration::from_secs(3);
    cfg.write_backoff_max = Duration::from_secs(1);
    cfg.status_recheck = Duration::from_millis(200);
    // The tests' backends listen on loopback.
    cfg.allow_loopback_endpoints = true;
    cfg
}

/// Starts one sandbox per group of cluster names (so one group can be stopped alone), installs
/// the CRDs where `crds(cluster)` says so, and starts a controller over all clusters.
pub async fn start_env(
    groups: &[&[&str]],
    crds: impl Fn(&str) -> bool,
    tweak: impl FnOnce(&mut ControllerConfig),
) -> Env {
    // Logs on demand: MERIDIAN_LOG=meridian_controller=debug cargo test …
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("MERIDIAN_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
    let mut sandboxes = Vec::new();
    let mut clients = BTreeMap::new();
    for group in groups {
        let sb = Sandbox::start(SandboxConfig::ephemeral(group))
            .await
            .unwrap();
        for ep in sb.clusters() {
            let c = client_for(&ep.url);
            if crds(&ep.name) {
                install_crds(&c).await;
            }
            for ns in ["infra", "app", "other"] {
                apply::<k8s_openapi::api::core::v1::Namespace>(
                    &c,
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                )
                .await;
            }
            clients.insert(ep.name.clone(), c);
        }
        sandboxes.push(Some(sb));
    }
    let members = clients
        .iter()
        .map(|(name, c)| MemberCluster {
            name: name.clone(),
            region: region_of(name),
            zones: vec![],
            client: c.clone(),
            network: String::new(),
        })
        .collect();
    let dp = StaticDataPlane::new(vec!["127.0.0.1".parse().unwrap()]);
    let mut cfg = fast_config(members, dp.clone());
    tweak(&mut cfg);
    let ctl = Controller::start(cfg).await.unwrap();
    Env {
        sandboxes,
        clients,
        dp,
        ctl,
    }
}

impl Env {
    pub fn c(&self, cluster: &str) -> &Client {
        &self.clients[cluster]
    }

    pub async fn shutdown(self) {
        self.ctl.shutdown().await;
        for sb in self.sandboxes.into_iter().flatten() {
            sb.shutdown().await;
        }
    }
}

/// Server-side applies `obj` (create or update) and returns the stored object.
pub async fn apply<K>(client: &Client, obj: Value) -> K
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    let name = obj["metadata"]["name"].as_str().unwrap().to_string();
    let api = dyn_api::<K>(client, obj["metadata"]["namespace"].as_str());
    let stored = api
        .patch(
            &name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {name}: {e}"));
    serde_json::from_value(serde_json::to_value(stored).unwrap()).unwrap()
}

/// A dynamic API for kind `K` (works for namespaced and cluster-scoped kinds alike).
pub fn dyn_api<K: Resource<DynamicType = ()>>(
    client: &Client,
    ns: Option<&str>,
) -> Api<DynamicObject> {
    let ar = ApiResource::erase::<K>(&());
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

/// Deletes an object of kind `K`.
pub async fn delete<K: Resource<DynamicType = ()>>(client: &Client, ns: Option<&str>, name: &str) {
    dyn_api::<K>(client, ns)
        .delete(name, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("deleting {name}: {e}"));
}

pub fn cond<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

/// `(status, reason, observedGeneration)` of a condition, for compact assertions.
pub fn csr(conds: &[Condition], type_: &str) -> Option<(String, String, Option<i64>)> {
    cond(conds, type_).map(|c| (c.status.clone(), c.reason.clone(), c.observed_generation))
}

pub async fn gateway(client: &Client, ns: &str, name: &str) -> Gateway {
    Api::<Gateway>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap()
}

pub async fn route(client: &Client, ns: &str, name: &str) -> HttpRoute {
    Api::<HttpRoute>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap()
}

/// Our parent entry of a route, as `(Accepted, ResolvedRefs)` triples.
pub async fn our_parent(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<((String, String, Option<i64>), (String, String, Option<i64>)), String> {
    let r = route(client, ns, name).await;
    let parents = r.status.map(|s| s.parents).unwrap_or_default();
    let p = parents
        .iter()
        .find(|p| p.controller_name == ME)
        .ok_or_else(|| format!("no parent entry of ours: {parents:?}"))?;
    Ok((
        csr(&p.conditions, "Accepted").ok_or("no Accepted")?,
        csr(&p.conditions, "ResolvedRefs").ok_or("no ResolvedRefs")?,
    ))
}

/// Every endpoint of every backend in a snapshot.
pub fn endpoints(s: &Snapshot) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for g in &s.gateways {
        for l in &g.listeners {
            for r in &l.routes {
                for rule in &r.rules {
                    for b in &rule.backends {
                        if let BackendTarget::Endpoints { endpoints, .. } = &b.target {
                            out.extend(endpoints.iter().cloned());
                        }
                    }
                }
            }
        }
    }
    out
}

// --- manifests ---------------------------------------------------------------------------------

pub fn gateway_class(name: &str, controller: &str) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": name}, "spec": {"controllerName": controller}})
}

pub fn gateway_obj(ns: &str, name: &str, class: &str) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"gatewayClassName": class, "listeners": [
            {"name": "http", "port": 80, "protocol": "HTTP",
             "allowedRoutes": {"namespaces": {"from": "All"}}}]}})
}

pub fn route_obj(ns: &str, name: &str, gw: (&str, &str), backend: Value) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"parentRefs": [{"name": gw.1, "namespace": gw.0}],
                 "hostnames": ["echo.example.com"],
                 "rules": [{"backendRefs": [backend]}]}})
}

pub fn service_ref(name: &str, port: i32) -> Value {
    json!({"name": name, "port": port})
}

pub fn import_ref(name: &str, port: i32) -> Value {
    json!({"group": "multicluster.x-k8s.io", "kind": "ServiceImport", "name": name, "port": port})
}

pub fn service(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
}

pub fn slice(ns: &str, name: &str, service: &str, ips: &[&str], zone: &str) -> Value {
    let eps: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}, "zone": zone}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "endpoints": eps,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
}

pub fn service_export(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
        "metadata": {"name": name, "namespace": ns}})
}

/// Sandbox config of a `central` cluster whose objects persist in `dir`, on `port` (0 = any), so
/// a test can stop its API and start it again on the same port with the same objects.
pub fn persisted_central(dir: &std::path::Path, port: u16) -> meridian_sandbox::SandboxConfig {
    meridian_sandbox::SandboxConfig {
        base_port: port,
        state_dir: Some(dir.to_path_buf()),
        ..meridian_sandbox::SandboxConfig::ephemeral(&["central"])
    }
}

/// An ephemeral `east` sandbox and a persisted `central` one ([`persisted_central`]).
pub async fn east_and_persisted_central(
    dir: &std::path::Path,
) -> (meridian_sandbox::Sandbox, meridian_sandbox::Sandbox) {
    let east =
        meridian_sandbox::Sandbox::start(meridian_sandbox::SandboxConfig::ephemeral(&["east"]))
            .await
            .unwrap();
    let central = meridian_sandbox::Sandbox::start(persisted_central(dir, 0))
        .await
        .unwrap();
    (east, central)
}

/// The mesh CA of this test process: every distribution server a test starts issues from it,
/// and every proxy a test runs holds a certificate of it.
pub fn test_ca() -> Arc<meridian_distribution::pki::Ca> {
    static CA: std::sync::OnceLock<Arc<meridian_distribution::pki::Ca>> =
        std::sync::OnceLock::new();
    CA.get_or_init(|| {
        Arc::new(
            meridian_distribution::pki::Ca::generate(
                &meridian_distribution::pki::TrustDomain::default(),
                Duration::from_secs(24 * 3600),
            )
            .unwrap(),
        )
    })
    .clone()
}

/// A certificate store for the proxy saying `hello`, issued by [`test_ca`].
pub fn proxy_identity(
    hello: &meridian_distribution::Hello,
) -> Arc<meridian_distribution::pki::CertStore> {
    let who = meridian_distribution::pki::ProxyIdentity::new(
        &hello.cluster,
        &hello.region,
        &hello.zone,
        &hello.proxy_id,
    )
    .unwrap();
    Arc::new(
        meridian_distribution::pki::CertStore::issued(&test_ca(), &who, Duration::from_secs(3600))
            .unwrap(),
    )
}
