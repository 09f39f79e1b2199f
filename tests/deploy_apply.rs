//! `kubectl apply -k deploy/overlays/<region>` against the local API (which stores Deployments,
//! RBAC, PodDisruptionBudgets and ServiceAccounts as a real server does): every object the
//! overlay renders is accepted, stored, and a second apply changes nothing.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use meridian_sandbox::{Sandbox, SandboxConfig};

const MEMBERS: [(&str, &str); 3] = [
    ("east", "us-east"),
    ("west", "us-west"),
    ("central", "eu-central"),
];

fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl is needed");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `kind/name` of every object an overlay renders, as `kubectl get -o name` spells them.
fn rendered(overlay: &str) -> BTreeSet<String> {
    let out = Command::new("kubectl")
        .args(["kustomize", &format!("deploy/overlays/{overlay}")])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut objects = BTreeSet::new();
    for doc in text.split("\n---\n") {
        let v: serde_json::Value = serde_yaml::from_str(doc).unwrap();
        let kind = v["kind"].as_str().unwrap().to_lowercase();
        let group = v["apiVersion"]
            .as_str()
            .unwrap()
            .rsplit_once('/')
            .map(|(g, _)| g.to_string());
        let name = v["metadata"]["name"].as_str().unwrap();
        objects.insert(match group {
            Some(g) => format!("{kind}.{g}/{name}"),
            None => format!("{kind}/{name}"),
        });
    }
    objects
}

/// `name=resourceVersion` of the namespaced objects the overlays install.
fn versions(kubeconfig: &Path, context: &str) -> String {
    kubectl(
        kubeconfig,
        &[
            "--context",
            context,
            "get",
            "deployments,services,serviceaccounts,roles,rolebindings,configmaps,poddisruptionbudgets",
            "-n",
            "meridian-system",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.metadata.resourceVersion} {end}",
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_overlay_applies_to_its_cluster_and_a_second_apply_changes_nothing() {
    let sandbox = Sandbox::start(SandboxConfig::ephemeral(&["east", "west", "central"]))
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("meridian-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, sandbox.kubeconfig_yaml()).unwrap();

    for (context, overlay) in MEMBERS {
        let expected = rendered(overlay);
        let path = format!("deploy/overlays/{overlay}");
        let first = tokio::task::spawn_blocking({
            let k = kubeconfig.clone();
            let p = path.clone();
            move || kubectl(&k, &["--context", context, "apply", "-k", &p])
        })
        .await
        .unwrap();
        let created: BTreeSet<String> = first
            .lines()
            .filter_map(|l| l.strip_suffix(" created"))
            .map(str::to_string)
            .collect();
        assert_eq!(created, expected, "{overlay}: first apply\n{first}");

        // What kubectl reads back is what it applied.
        let mut stored = BTreeSet::new();
        for kinds in [
            "namespaces,customresourcedefinitions,clusterroles,clusterrolebindings",
            "serviceaccounts,configmaps,services,deployments,poddisruptionbudgets,roles,rolebindings",
        ] {
            let out = kubectl(
                &kubeconfig,
                &[
                    "--context",
                    context,
                    "get",
                    kinds,
                    "-n",
                    "meridian-system",
                    "-o",
                    "name",
                ],
            );
            stored.extend(out.lines().map(str::to_string));
        }
        for object in &expected {
            // `kubectl get -o name` omits the core group's empty suffix the same way.
            assert!(
                stored.contains(object),
                "{overlay}: {object} is not stored: {stored:?}"
            );
        }

        // A second apply: nothing is created, and no object changes its resourceVersion.
        let before = versions(&kubeconfig, context);
        let second = kubectl(&kubeconfig, &["--context", context, "apply", "-k", &path]);
        assert!(
            !second.lines().any(|l| l.ends_with(" created")),
            "{overlay}: second apply created objects\n{second}"
        );
        let after = versions(&kubeconfig, context);
        assert_eq!(
            before, after,
            "{overlay}: a second apply changed objects\n{second}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
    sandbox.shutdown().await;
}
