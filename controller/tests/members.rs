//! Member clusters from Secrets against the sandbox: the watcher on the controller's cluster
//! turns Secrets into membership events, refuses bad ones without crashing or dropping a good
//! member, and the `meridian cluster` command writes, lists and removes such Secrets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use meridian_controller::members::cli::{
    self, AddArgs, ClusterCmdError, ControllerTarget, MemberEndpoint, RemoveArgs,
};
use meridian_controller::members::{
    KUBECONFIG_KEY, MemberMetrics, MemberSecretError, MemberSpec, MembershipEvent,
    spawn_member_watcher,
};
use meridian_sandbox::{Sandbox, SandboxConfig};
use serde_json::json;
use tokio::sync::{mpsc, watch};

const NS: &str = "meridian-system";
const WAIT: Duration = Duration::from_secs(15);

fn client_for(url: &str) -> Client {
    Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap()
}

async fn create_namespace(c: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(c.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

fn spec(name: &str, region: &str) -> MemberSpec {
    MemberSpec {
        name: name.into(),
        region: region.into(),
        zones: vec!["a".into()],
        network: String::new(),
        gateway_addresses: None,
    }
}

/// A member Secret for `spec` reaching `url` with `token`.
fn secret_with(spec: &MemberSpec, url: &str, token: &str) -> Secret {
    let ep = MemberEndpoint {
        context: "x".into(),
        server: url.into(),
        ca_data: None,
        insecure_skip_tls_verify: false,
        tls_server_name: None,
    };
    meridian_controller::members::member_secret(
        NS,
        spec,
        &cli::remote_kubeconfig(&spec.name, &ep, token),
    )
}

/// A member Secret for `spec` reaching `url` (a token the sandbox does not know: fine where
/// nothing connects).
fn secret_for(spec: &MemberSpec, url: &str) -> Secret {
    secret_with(spec, url, "token")
}

async fn next(rx: &mut mpsc::Receiver<MembershipEvent>) -> MembershipEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a membership event in time")
        .expect("the watcher runs")
}

async fn apply(api: &Api<Secret>, s: &Secret) {
    let mut body = serde_json::to_value(s).unwrap();
    body["apiVersion"] = json!("v1");
    body["kind"] = json!("Secret");
    let name = s.metadata.name.clone().unwrap();
    api.patch(
        &name,
        &PatchParams::apply("test").force(),
        &Patch::Apply(&body),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_come_and_go_as_membership_events_and_bad_ones_hurt_no_member() {
    let sb = Sandbox::start(SandboxConfig::ephemeral(&["hub", "east", "west"]))
        .await
        .unwrap();
    let url = |n: &str| sb.cluster(n).unwrap().url.clone();
    let hub = client_for(&url("hub"));
    create_namespace(&hub, NS).await;
    create_namespace(&hub, "elsewhere").await;
    let registry = prometheus::Registry::new();
    let metrics = MemberMetrics::register(&registry).unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = spawn_member_watcher(
        hub.clone(),
        NS.into(),
        BTreeSet::from(["hub".to_string()]),
        metrics.clone(),
        tx,
        stop_rx,
    );
    let secrets: Api<Secret> = Api::namespaced(hub.clone(), NS);

    // Added: the config reaches the member cluster (with the token in the Secret).
    let east = secret_with(
        &spec("east", "us-east"),
        &url("east"),
        &sb.admin_token("east").unwrap(),
    );
    apply(&secrets, &east).await;
    let MembershipEvent::Added(m) = next(&mut rx).await else {
        panic!("expected Added")
    };
    assert_eq!(
        (m.spec.name.as_str(), m.spec.region.as_str()),
        ("east", "us-east")
    );
    assert_eq!(m.server, url("east"));
    let member = Client::try_from(m.config).unwrap();
    Api::<Namespace>::all(member).get("default").await.unwrap();

    // Ignored: without the label, or in another namespace.
    let mut unlabelled = secret_for(&spec("north", "r"), &url("west"));
    unlabelled.metadata.name = Some("unlabelled".into());
    unlabelled.metadata.labels = None;
    apply(&secrets, &unlabelled).await;
    let mut elsewhere = secret_for(&spec("south", "r"), &url("west"));
    elsewhere.metadata.namespace = Some("elsewhere".into());
    apply(&Api::namespaced(hub.clone(), "elsewhere"), &elsewhere).await;

    // Changed: an edit that matters.
    apply(
        &secrets,
        &secret_for(&spec("east", "us-east-2"), &url("east")),
    )
    .await;
    let MembershipEvent::Changed(m) = next(&mut rx).await else {
        panic!("expected Changed (and nothing for the ignored Secrets)")
    };
    assert_eq!(m.spec.region, "us-east-2");

    // Invalid: the kubeconfig is dropped. An event and a metric; east is not removed.
    let mut broken = secret_for(&spec("east", "us-east-2"), &url("east"));
    broken.data = Some(
        [(
            KUBECONFIG_KEY.to_string(),
            ByteString(b"clusters: 1".to_vec()),
        )]
        .into(),
    );
    apply(&secrets, &broken).await;
    let MembershipEvent::Invalid { secret, error } = next(&mut rx).await else {
        panic!("expected Invalid")
    };
    assert_eq!(secret, "meridian-cluster-east");
    assert!(
        matches!(error, MemberSecretError::KubeconfigSyntax(_)),
        "{error}"
    );
    let errors = || {
        metrics
            .secret_errors
            .with_label_values(&["meridian-cluster-east"])
            .get()
    };
    assert_eq!(errors(), 1);
    assert_eq!(
        metrics.clusters.get(),
        1,
        "east keeps running on its last good Secret"
    );
    assert_eq!(metrics.invalid.get(), 1);

    // A second Secret taking east's name, or the flag's cluster: refused the same way.
    let mut twin = secret_for(&spec("east", "eu"), &url("west"));
    twin.metadata.name = Some("twin".into());
    apply(&secrets, &twin).await;
    let MembershipEvent::Invalid { secret, error } = next(&mut rx).await else {
        panic!("expected Invalid for the twin")
    };
    assert_eq!(secret, "twin");
    assert!(
        error
            .to_string()
            .contains("defined by Secret meridian-cluster-east"),
        "{error}"
    );
    let mut hub_again = secret_for(&spec("hub", "eu"), &url("west"));
    hub_again.metadata.name = Some("hub-again".into());
    apply(&secrets, &hub_again).await;
    let MembershipEvent::Invalid { error, .. } = next(&mut rx).await else {
        panic!("expected Invalid for the flag's cluster")
    };
    assert!(error.to_string().contains("--cluster flag"), "{error}");

    // Fixed, now pointing at west's API: Changed.
    apply(
        &secrets,
        &secret_for(&spec("east", "us-east-2"), &url("west")),
    )
    .await;
    let MembershipEvent::Changed(m) = next(&mut rx).await else {
        panic!("expected Changed after the fix")
    };
    assert_eq!(m.server, url("west"));
    assert_eq!(metrics.invalid.get(), 2, "twin and hub-again");

    // Removed.
    secrets
        .delete("meridian-cluster-east", &DeleteParams::default())
        .await
        .unwrap();
    let MembershipEvent::Removed { secret, cluster } = next(&mut rx).await else {
        panic!("expected Removed")
    };
    assert_eq!(
        (secret.as_str(), cluster.as_str()),
        ("meridian-cluster-east", "east")
    );
    // The twin's name is free now; its Secret is seen again only when it changes.
    assert_eq!(metrics.clusters.get(), 0);

    stop_tx.send(true).unwrap();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    sb.shutdown().await;
}

fn target(kubeconfig: &std::path::Path, context: &str) -> ControllerTarget {
    ControllerTarget {
        controller_kubeconfig: Some(kubeconfig.to_path_buf()),
        controller_context: Some(context.into()),
        namespace: NS.into(),
    }
}

/// `meridian cluster list|remove` against the sandbox, and `add` refusing a member cluster
/// without deploy/'s ClusterRole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_command_writes_lists_and_removes_secrets() {
    let dir = std::env::temp_dir().join(format!("meridian-members-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    let mut cfg = SandboxConfig::ephemeral(&["hub", "east"]);
    cfg.kubeconfig_path = Some(kubeconfig.clone());
    let sb = Sandbox::start(cfg).await.unwrap();
    let hub = client_for(&sb.cluster("hub").unwrap().url);
    create_namespace(&hub, NS).await;

    let east_url = sb.cluster("east").unwrap().url.clone();
    let secret = secret_for(&spec("east", "us-east"), &east_url);
    cli::write_member_secret(&hub, "hub", &secret)
        .await
        .unwrap();
    // Written twice (an update): still one Secret.
    cli::write_member_secret(&hub, "hub", &secret)
        .await
        .unwrap();
    let mut bad = secret_for(&spec("west", "us-west"), &east_url);
    bad.metadata
        .annotations
        .as_mut()
        .unwrap()
        .remove("meridian.dev/region");
    cli::write_member_secret(&hub, "hub", &bad).await.unwrap();

    let mut out = Vec::new();
    cli::list(&target(&kubeconfig, "hub"), &mut out)
        .await
        .unwrap();
    let table = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("SERVER"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("east") && lines[1].contains(&east_url),
        "{table}"
    );
    assert!(
        lines[2].starts_with("west") && lines[2].contains("INVALID"),
        "{table}"
    );

    let remove = |name: &str| RemoveArgs {
        name: name.into(),
        controller: target(&kubeconfig, "hub"),
    };
    let mut out = Vec::new();
    cli::remove(&remove("east"), &mut out).await.unwrap();
    assert!(
        String::from_utf8(out)
            .unwrap()
            .contains("Secret meridian-system/meridian-cluster-east deleted")
    );
    let err = cli::remove(&remove("east"), &mut Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterCmdError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("meridian cluster list"), "{err}");
    let left = Api::<Secret>::namespaced(hub.clone(), NS)
        .list(&Default::default())
        .await
        .unwrap();
    assert_eq!(left.items.len(), 1, "only west's Secret is left");

    // `add` against a member without deploy/ applied: a clear error, nothing written.
    let add = AddArgs {
        name: "east".into(),
        kubeconfig: Some(kubeconfig.clone()),
        context: Some("east".into()),
        region: "us-east".into(),
        zones: vec![],
        network: None,
        gateway_addresses: None,
        token_ttl: Duration::from_secs(3600),
        controller: target(&kubeconfig, "hub"),
    };
    let err = cli::add(&add, &mut Vec::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ClusterRole meridian-controller is not in the member cluster (context east)")
            && err.contains("apply deploy/"),
        "{err}"
    );
    let short = AddArgs {
        token_ttl: Duration::from_secs(60),
        ..add.clone()
    };
    let err = cli::add(&short, &mut Vec::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least 10m"), "{err}");
    let left = Api::<Secret>::namespaced(hub.clone(), NS)
        .list(&Default::default())
        .await
        .unwrap();
    assert_eq!(left.items.len(), 1, "add wrote nothing");

    sb.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The whole `meridian cluster add` path: ServiceAccount, binding, TokenRequest, and a Secret
/// whose token the member cluster accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_add_mints_a_dedicated_token_the_member_accepts() {
    let dir = std::env::temp_dir().join(format!("meridian-members-add-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    let mut cfg = SandboxConfig::ephemeral(&["hub", "east"]);
    cfg.kubeconfig_path = Some(kubeconfig.clone());
    let sb = Sandbox::start(cfg).await.unwrap();
    let hub = client_for(&sb.cluster("hub").unwrap().url);
    let east = client_for(&sb.cluster("east").unwrap().url);
    create_namespace(&hub, NS).await;
    create_namespace(&east, NS).await;
    let role: k8s_openapi::api::rbac::v1::ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": "meridian-controller"},
        "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}],
    }))
    .unwrap();
    Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(east.clone())
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let add = AddArgs {
        name: "east".into(),
        kubeconfig: Some(kubeconfig.clone()),
        context: Some("east".into()),
        region: "us-east".into(),
        zones: vec!["a".into(), "b".into()],
        network: Some("net-a".into()),
        gateway_addresses: Some("10.0.10.0/24".parse().unwrap()),
        token_ttl: Duration::from_secs(3600),
        controller: target(&kubeconfig, "hub"),
    };
    let mut out = Vec::new();
    cli::add(&add, &mut out).await.unwrap();
    // Again (a new token, the same Secret): idempotent.
    cli::add(&add, &mut out).await.unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("cluster east: Secret meridian-system/meridian-cluster-east written"),
        "{out}"
    );
    let all = Api::<Secret>::namespaced(hub.clone(), NS)
        .list(&Default::default())
        .await
        .unwrap();
    assert_eq!(all.items.len(), 1);
    let secret = Api::<Secret>::namespaced(hub.clone(), NS)
        .get("meridian-cluster-east")
        .await
        .unwrap();
    let parsed = meridian_controller::members::parse_member_secret(&secret).unwrap();
    assert_eq!(parsed.spec.network, "net-a");
    let member = Client::try_from(
        meridian_controller::members::member_config(&parsed)
            .await
            .unwrap(),
    )
    .unwrap();
    // Allowed by the role, as meridian-remote.
    Api::<Namespace>::all(member.clone())
        .list(&Default::default())
        .await
        .unwrap();
    // Not allowed: the token is not the admin's.
    let err = Api::<Secret>::namespaced(member, NS)
        .list(&Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err}"
    );
    sb.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
