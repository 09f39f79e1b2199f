//! Mesh identity against the sandbox: the CA Secret (created once however many replicas race,
//! a malformed one refused and left alone), the trust bundle ConfigMap in every member cluster
//! (one that joins at run time included, one whose namespace appears late retried, one that is
//! down holding up nobody), and
//! bootstrap tokens checked with TokenReviews in the cluster the proxy claims.
//!
//! ```text
//! sandbox east (+ west, north) ─► prepare(args, east client) ─► Ca, TokenReviewVerifier, PoolPolicy
//!   Controller(east, west) ─► member_directory ─► Mesh::attach ─► ConfigMap meridian-ca everywhere
//!   TokenRequest (audience meridian, bound to a Pod) ─► verifier.verify(claim) ─► grant / refusal
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use common::*;
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount};
use kube::api::PostParams;
use kube::{Api, Client};
use meridian_controller::mesh::{self, CaError, Mesh, load_or_create_ca};
use meridian_controller::{
    Controller, ControllerArgs, ControllerHandle, MemberCluster, StaticDataPlane,
};
use meridian_distribution::pki::TrustDomain;
use meridian_distribution::server::BootstrapClaim;
use meridian_sandbox::{Sandbox, SandboxConfig};
use serde_json::json;
use tokio::sync::watch;

const NS: &str = "meridian-system";

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: ControllerArgs,
}

fn args(extra: &[&str]) -> ControllerArgs {
    Cli::try_parse_from(["x", "--cluster", "east"].iter().chain(extra))
        .unwrap()
        .args
}

async fn namespace(c: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(c.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

async fn sandbox(clusters: &[&str]) -> (Sandbox, Vec<Client>) {
    let sb = Sandbox::start(SandboxConfig::ephemeral(clusters))
        .await
        .unwrap();
    let clients = clusters
        .iter()
        .map(|c| client_for(&sb.cluster(c).unwrap().url))
        .collect();
    (sb, clients)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_secret_is_created_once_and_every_replica_gets_the_same_ca() {
    let (sb, clients) = sandbox(&["east"]).await;
    let c = &clients[0];
    namespace(c, NS).await;
    let td = TrustDomain::default();

    // Two replicas starting at once: one creates the Secret, the other gets a 409 and reads it.
    let (a, b) = tokio::join!(
        load_or_create_ca(c.clone(), NS, "meridian-ca", &td),
        load_or_create_ca(c.clone(), NS, "meridian-ca", &td),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.cert_pem().unwrap(), b.cert_pem().unwrap());

    let secret = Api::<Secret>::namespaced(c.clone(), NS)
        .get("meridian-ca")
        .await
        .unwrap();
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(
        secret.metadata.labels.unwrap()["app.kubernetes.io/managed-by"],
        "meridian"
    );
    let data = secret.data.unwrap();
    assert_eq!(data["tls.crt"].0, a.cert_pem().unwrap().into_bytes());
    assert_eq!(data["tls.key"].0, a.key_pem().unwrap().into_bytes());

    // A restart reads the same CA; a later one created elsewhere is another CA.
    let again = load_or_create_ca(c.clone(), NS, "meridian-ca", &td)
        .await
        .unwrap();
    assert_eq!(again.cert_pem().unwrap(), a.cert_pem().unwrap());
    let other = load_or_create_ca(c.clone(), NS, "other-ca", &td)
        .await
        .unwrap();
    assert_ne!(other.cert_pem().unwrap(), a.cert_pem().unwrap());

    // Many at once, still one CA.
    let many =
        futures::future::join_all((0..6).map(|_| load_or_create_ca(c.clone(), NS, "race-ca", &td)))
            .await;
    let pems: std::collections::BTreeSet<String> = many
        .into_iter()
        .map(|r| r.unwrap().cert_pem().unwrap())
        .collect();
    assert_eq!(pems.len(), 1, "replicas ended up with different CAs");
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_ca_secret_is_refused_by_name_and_left_alone() {
    let (sb, clients) = sandbox(&["east"]).await;
    let c = &clients[0];
    namespace(c, NS).await;
    let secrets = Api::<Secret>::namespaced(c.clone(), NS);
    let put = |name: &str, type_: &str, data: &[(&str, &str)]| Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        type_: Some(type_.into()),
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    };
    let cases = [
        (
            put("opaque", "Opaque", &[("ca", "x")]),
            "CA Secret meridian-system/opaque cannot be used: its type is \"Opaque\"",
        ),
        (
            put(
                "no-key",
                "kubernetes.io/tls",
                &[("tls.crt", "x"), ("tls.key", "")],
            ),
            "CA Secret meridian-system/no-key cannot be used: data key tls.key is empty",
        ),
        (
            put(
                "garbage",
                "kubernetes.io/tls",
                &[("tls.crt", "not pem"), ("tls.key", "not pem")],
            ),
            "CA Secret meridian-system/garbage cannot be used: tls.crt/tls.key: reading the CA certificate",
        ),
    ];
    for (secret, want) in cases {
        let name = secret.metadata.name.clone().unwrap();
        let created = secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        let err = load_or_create_ca(c.clone(), NS, &name, &TrustDomain::default())
            .await
            .unwrap_err();
        assert!(matches!(err, CaError::Malformed { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.starts_with(want), "{msg}");
        assert!(msg.contains("fix or delete it"), "{msg}");
        let after = secrets.get(&name).await.unwrap();
        assert_eq!(
            after.metadata.resource_version, created.metadata.resource_version,
            "{name} was written to"
        );
    }
    sb.shutdown().await;
}

fn member(name: &str, zones: &[&str], client: &Client) -> MemberCluster {
    MemberCluster::new(
        name,
        region_of(name),
        zones.iter().map(|z| z.to_string()).collect(),
        client.clone(),
    )
}

async fn controller(members: Vec<MemberCluster>) -> ControllerHandle {
    let dp = StaticDataPlane::new(vec!["127.0.0.1".parse().unwrap()]);
    Controller::start(fast_config(members, dp as Arc<_>))
        .await
        .unwrap()
}

async fn bundle_of(c: &Client) -> Result<String, String> {
    match Api::<ConfigMap>::namespaced(c.clone(), NS)
        .get_opt("meridian-ca")
        .await
    {
        Ok(Some(cm)) => {
            let labelled = cm.metadata.labels.unwrap_or_default()["app.kubernetes.io/managed-by"]
                == "meridian";
            let pem = cm.data.unwrap_or_default().remove("ca.crt");
            match (labelled, pem) {
                (true, Some(pem)) => Ok(pem),
                other => Err(format!("ConfigMap without label or ca.crt: {other:?}")),
            }
        }
        Ok(None) => Err("no ConfigMap yet".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trust_bundle_reaches_every_member_including_one_that_joins_later() {
    let (sb, clients) = sandbox(&["east", "west", "north"]).await;
    let (east, west, north) = (&clients[0], &clients[1], &clients[2]);
    namespace(east, NS).await;
    namespace(west, NS).await;
    let mesh: Mesh = mesh::prepare(&args(&[]), east.clone(), None).await.unwrap();
    let pem = mesh.ca.cert_pem().unwrap();
    // The CA Secret went to the controller's own cluster only.
    assert!(
        Api::<Secret>::namespaced(east.clone(), NS)
            .get_opt("meridian-ca")
            .await
            .unwrap()
            .is_some()
    );
    // South's API server is not there at all: its apply keeps failing, the others do not wait.
    let south = client_for("http://127.0.0.1:9");
    let ctl = controller(vec![
        member("east", &[], east),
        member("south", &[], &south),
        member("west", &[], west),
    ])
    .await;
    let (stop, stop_rx) = watch::channel(false);
    let publisher = mesh.attach(ctl.member_directory(), stop_rx).unwrap();
    for (name, c) in [("east", east), ("west", west)] {
        let got = eventually_async(&format!("bundle in {name}"), WAIT, || bundle_of(c)).await;
        assert_eq!(got, pem, "{name}");
    }

    // North joins before its namespace exists: its apply fails and is retried, the others are
    // untouched; once the namespace is there the bundle lands.
    ctl.add_cluster(member("north", &[], north), north.clone(), None)
        .await
        .unwrap();
    let before = Api::<ConfigMap>::namespaced(east.clone(), NS)
        .get("meridian-ca")
        .await
        .unwrap()
        .metadata
        .resource_version;
    holds_for_async(
        "north has no bundle without its namespace",
        Duration::from_millis(600),
        || async {
            match bundle_of(north).await {
                Ok(_) => Err("a bundle without a namespace?".to_string()),
                Err(_) => Ok(()),
            }
        },
    )
    .await;
    namespace(north, NS).await;
    let got = eventually_async("bundle in north", WAIT, || bundle_of(north)).await;
    assert_eq!(got, pem);
    // Applying the same bundle again changed nothing in the others.
    let after = Api::<ConfigMap>::namespaced(east.clone(), NS)
        .get("meridian-ca")
        .await
        .unwrap()
        .metadata
        .resource_version;
    assert_eq!(before, after, "re-applying the same bundle wrote to east");

    let _ = stop.send(true);
    tokio::time::timeout(WAIT, publisher)
        .await
        .unwrap()
        .unwrap();
    ctl.shutdown().await;
    sb.shutdown().await;
}

/// A token of `NS/account` from the TokenRequest API for `audience`, bound to `pod` if given.
async fn token(c: &Client, account: &str, audience: &str, pod: Option<&str>) -> String {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![audience.to_string()]),
            bound_object_ref: pod.map(|p| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(p.into()),
                uid: None,
            }),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    Api::<ServiceAccount>::namespaced(c.clone(), NS)
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .unwrap()
}

fn claim(cluster: &str, credential: &str) -> BootstrapClaim {
    BootstrapClaim {
        cluster: cluster.into(),
        zone: "a".into(),
        proxy_id: "proxy-0".into(),
        credential: credential.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_tokens_are_checked_with_a_token_review_in_the_claimed_cluster() {
    let (sb, clients) = sandbox(&["east", "west"]).await;
    let (east, west) = (&clients[0], &clients[1]);
    for (name, c) in [("east", east), ("west", west)] {
        namespace(c, NS).await;
        for account in ["meridian-proxy", "intruder"] {
            sb.ensure_service_account(name, NS, account).unwrap();
        }
    }
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "proxy-0"},
        "spec": {"serviceAccountName": "meridian-proxy",
                 "containers": [{"name": "proxy", "image": "meridian"}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(east.clone(), NS)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();

    let mesh = mesh::prepare(
        &args(&["--gateway-addresses", "east=10.0.10.0/24"]),
        east.clone(),
        None,
    )
    .await
    .unwrap();
    let v = Arc::clone(&mesh.verifier);
    // Before the controller runs: "try again", not a refusal.
    let good = token(east, "meridian-proxy", "meridian", Some("proxy-0")).await;
    let r = v.verify(&claim("east", &good)).await.unwrap_err();
    assert_eq!((r.reason, r.transient), ("unavailable", true));

    let ctl = controller(vec![
        member("east", &["a", "b"], east),
        member("west", &["c"], west),
    ])
    .await;
    let (stop, stop_rx) = watch::channel(false);
    let publisher = mesh.attach(ctl.member_directory(), stop_rx).unwrap();

    // The proxy's own token in its own cluster: its region, zones and pod name.
    let g = v.verify(&claim("east", &good)).await.unwrap();
    // What a bootstrap check costs (one TokenReview against the local API), for the notes.
    let mut took: Vec<Duration> = Vec::new();
    for _ in 0..20 {
        let t = std::time::Instant::now();
        v.verify(&claim("east", &good)).await.unwrap();
        took.push(t.elapsed());
    }
    took.sort();
    println!(
        "bootstrap check (TokenReview, local API): p50 {:?}, max {:?} of {}",
        took[took.len() / 2],
        took[took.len() - 1],
        took.len()
    );
    assert_eq!(g.region, "us-east");
    assert_eq!(g.zones, ["a", "b"]);
    assert_eq!(g.proxy_id.as_deref(), Some("proxy-0"));

    let refused = |c: &str, t: &str| {
        let (v, c, t) = (Arc::clone(&v), c.to_string(), t.to_string());
        async move { v.verify(&claim(&c, &t)).await.unwrap_err() }
    };
    // The same token claiming another cluster: that cluster's API server does not know it.
    let r = refused("west", &good).await;
    assert_eq!((r.reason, r.transient), ("invalid-credential", false));
    // A token for the Kubernetes API (or any other audience) is no bootstrap credential.
    let api_token = token(
        east,
        "meridian-proxy",
        "https://kubernetes.default.svc",
        None,
    )
    .await;
    let r = refused("east", &api_token).await;
    assert_eq!(r.reason, "invalid-credential");
    assert!(
        r.message.contains("did not accept the token"),
        "{}",
        r.message
    );
    // Another account of the same cluster.
    let intruder = token(east, "intruder", "meridian", None).await;
    let r = refused("east", &intruder).await;
    assert_eq!(r.reason, "wrong-account");
    assert!(
        r.message
            .contains("system:serviceaccount:meridian-system:intruder")
    );
    // Garbage, and a cluster that is no member.
    assert_eq!(
        refused("east", "garbage").await.reason,
        "invalid-credential"
    );
    assert_eq!(refused("south", &good).await.reason, "unknown-cluster");
    // An unbound token of the proxy account binds no id.
    let west_token = token(west, "meridian-proxy", "meridian", None).await;
    let g = v.verify(&claim("west", &west_token)).await.unwrap();
    assert_eq!((g.region.as_str(), g.proxy_id), ("us-west", None));

    // Address policy: east has a pool, west has none.
    assert!(mesh.addresses.allows("east", "10.0.10.7"));
    assert!(!mesh.addresses.allows("east", "10.0.99.7"));
    assert!(!mesh.addresses.allows("east", "gw.example.com"));
    assert!(mesh.addresses.allows("west", "gw.example.com"));

    // West's API server gone: transient, the proxy retries.
    sb.stop_cluster("west").await.unwrap();
    let r = refused("west", &west_token).await;
    assert_eq!((r.reason, r.transient), ("unavailable", true));
    // West leaves: unknown from now on.
    ctl.remove_cluster("west").await.unwrap();
    assert_eq!(refused("west", &west_token).await.reason, "unknown-cluster");

    let _ = stop.send(true);
    tokio::time::timeout(WAIT, publisher)
        .await
        .unwrap()
        .unwrap();
    ctl.shutdown().await;
    sb.shutdown().await;
}
