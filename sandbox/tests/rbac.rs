//! ServiceAccount tokens and RBAC, and the kinds a real install applies (Deployments,
//! PodDisruptionBudgets, ServiceAccounts, RBAC objects), driven by the real `kubectl` (the tests
//! that need it are skipped with a message when it is absent) and the kube-rs client.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Patch, PatchParams, WatchEvent, WatchParams};
use kube::{Api, Client};
use meridian_sandbox::rbac::RequestAttributes;
use meridian_sandbox::{Sandbox, SandboxConfig};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// `kubectl --kubeconfig <file>` with its own discovery cache, bounded in time.
async fn kubectl(kubeconfig: &Path, args: &[&str]) -> Out {
    let cache = kubeconfig.with_extension("cache");
    let mut c = Command::new("kubectl");
    c.arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(&cache)
        .arg("--request-timeout=15s")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), c.output())
        .await
        .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
        .unwrap();
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn kubectl_ok(kubeconfig: &Path, args: &[&str]) -> String {
    let o = kubectl(kubeconfig, args).await;
    assert!(
        o.ok,
        "kubectl {args:?} failed:\nstdout: {}\nstderr: {}",
        o.stdout, o.stderr
    );
    o.stdout
}

fn kubectl_present() -> bool {
    let found = std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("SKIPPED: `kubectl` is not on PATH; this test needs it");
    }
    found
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("meridian-rbac-{tag}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A kube-rs client from a kubeconfig document.
async fn client_from_kubeconfig(yaml: &str) -> Client {
    let kc = kube::config::Kubeconfig::from_yaml(yaml).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

/// The `Status` of a kube-rs API error.
fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Sends a request with a bearer token.
async fn with_token(base: &str, method: &str, path: &str, token: &str, body: Value) -> Raw {
    let auth = format!("Bearer {token}");
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    raw(
        base,
        method,
        path,
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
}

const SA: &str = "system:serviceaccount:team:bot";

/// What the admin applies: a namespace, the ServiceAccount `bot`, a Role and its binding, a
/// ClusterRole bound to the group of the namespace's service accounts, a binding to a role that
/// does not exist, and objects to read.
const GRANTS: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: team
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: bot
  namespace: team
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: deployer
  namespace: team
rules:
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["apps"]
  resources: ["deployments/status"]
  verbs: ["patch", "update"]
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: ["allowed"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: bot-deployer
  namespace: team
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: deployer
subjects:
- kind: ServiceAccount
  name: bot
  namespace: team
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: dangling
  namespace: team
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: not-there
subjects:
- kind: ServiceAccount
  name: bot
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: namespace-reader
rules:
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: team-accounts-read-namespaces
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: namespace-reader
subjects:
- kind: Group
  apiGroup: rbac.authorization.k8s.io
  name: system:serviceaccounts:team
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: team
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: example/web:1
---
apiVersion: v1
kind: Secret
metadata:
  name: allowed
  namespace: team
stringData:
  k: v
---
apiVersion: v1
kind: Secret
metadata:
  name: other
  namespace: team
stringData:
  k: v
"#;

/// The exact 403 a real server sends for `verb` on `resource` (`name` may be empty).
fn forbidden(
    group: &str,
    resource: &str,
    sub: &str,
    name: &str,
    verb: &str,
    reason: &str,
) -> Value {
    let qualified = if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    };
    let combined = if sub.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}/{sub}")
    };
    let prefix = if name.is_empty() {
        format!("{qualified} is forbidden")
    } else {
        format!("{qualified} \"{name}\" is forbidden")
    };
    let mut details = json!({"kind": resource});
    if !name.is_empty() {
        details["name"] = json!(name);
    }
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!(
            "{prefix}: User \"{SA}\" cannot {verb} resource \"{combined}\" in API group \"{group}\" in the namespace \"team\"{reason}"
        ),
        "reason": "Forbidden", "details": details, "code": 403,
    })
}

/// What the dangling binding adds to every denial in `team`.
const DANGLING: &str = ": RBAC: clusterrole.rbac.authorization.k8s.io \"not-there\" not found";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_token_is_held_to_the_rules_it_was_granted() {
    if !kubectl_present() {
        return;
    }
    let dir = temp_dir("grants");
    let admin = dir.join("admin.kubeconfig");
    let mut cfg = SandboxConfig::ephemeral(&["east", "west"]);
    cfg.kubeconfig_path = Some(admin.clone());
    let sb = Sandbox::start(cfg).await.unwrap();
    let east = sb.cluster("east").unwrap().url.clone();
    let west = sb.cluster("west").unwrap().url.clone();

    // The admin applies the grants; kubectl prints the bindings with their roles.
    write(&dir.join("grants.yaml"), GRANTS);
    let grants = dir.join("grants.yaml");
    kubectl_ok(&admin, &["apply", "-f", grants.to_str().unwrap()]).await;
    let bindings = kubectl_ok(&admin, &["get", "rolebindings", "-n", "team", "-o", "wide"]).await;
    let header: Vec<&str> = bindings
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"]
    );
    assert!(
        bindings.lines().any(|l| l.starts_with("bot-deployer")
            && l.contains("Role/deployer")
            && l.contains("team:bot")),
        "{bindings}"
    );

    // `kubectl create token` mints a token the cluster recognises as the ServiceAccount.
    let token = kubectl_ok(&admin, &["create", "token", "bot", "-n", "team"]).await;
    let token = token.trim().to_string();
    assert!(!token.is_empty());
    let review = with_token(
        &east,
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        &token,
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
               "spec": {"resourceAttributes": {"namespace": "team", "verb": "watch", "group": "apps", "resource": "deployments"}}}),
    )
    .await;
    assert_eq!(review.status, 201, "{}", review.text());
    assert_eq!(review.json()["status"]["allowed"], true);
    assert_eq!(
        review.json()["status"]["reason"],
        "RBAC: allowed by RoleBinding \"bot-deployer/team\" of Role \"deployer\" to ServiceAccount \"bot/team\""
    );

    // kube-rs with that token: what the rules allow works.
    let bot =
        client_from_kubeconfig(&sb.kubeconfig_for_token("east", &token, "team").unwrap()).await;
    let deployments: Api<Deployment> = Api::namespaced(bot.clone(), "team");
    let listed = deployments.list(&Default::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(
        deployments.get("web").await.unwrap().spec.unwrap().replicas,
        Some(2)
    );
    let status = json!({"status": {"observedGeneration": 1, "replicas": 2, "readyReplicas": 2}});
    deployments
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(bot.clone(), "team");
    secrets.get("allowed").await.unwrap();
    let namespaces: Api<Namespace> = Api::all(bot.clone());
    assert!(
        namespaces
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some("team"))
    );
    // A watch the rules allow streams events.
    let mut stream = deployments
        .watch(
            &WatchParams::default().timeout(10),
            &deployments
                .list(&Default::default())
                .await
                .unwrap()
                .metadata
                .resource_version
                .unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    use futures::StreamExt;
    kubectl_ok(
        &admin,
        &["label", "deployment", "web", "-n", "team", "tier=front"],
    )
    .await;
    let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(&event, WatchEvent::Modified(d) if d.metadata.labels.as_ref().unwrap()["tier"] == "front"),
        "{event:?}"
    );

    // ... and everything else is 403 with the real server's Status.
    let cases: Vec<(&str, String, Value, Value)> = vec![
        (
            "GET",
            "/api/v1/namespaces/team/secrets/other".into(),
            Value::Null,
            forbidden("", "secrets", "", "other", "get", DANGLING),
        ),
        (
            "GET",
            "/api/v1/namespaces/team/secrets".into(),
            Value::Null,
            forbidden("", "secrets", "", "", "list", DANGLING),
        ),
        (
            "DELETE",
            "/apis/apps/v1/namespaces/team/deployments/web".into(),
            Value::Null,
            forbidden("apps", "deployments", "", "web", "delete", DANGLING),
        ),
        (
            "PATCH",
            "/apis/apps/v1/namespaces/team/deployments/web".into(),
            json!({"spec": {"replicas": 3}}),
            forbidden("apps", "deployments", "", "web", "patch", DANGLING),
        ),
        (
            "PUT",
            "/api/v1/namespaces/team/serviceaccounts/bot/token".into(),
            json!({}),
            forbidden("", "serviceaccounts", "token", "bot", "update", DANGLING),
        ),
        (
            "POST",
            "/api/v1/namespaces/team/serviceaccounts/bot/token".into(),
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}),
            forbidden("", "serviceaccounts", "token", "bot", "create", DANGLING),
        ),
        (
            "GET",
            "/api/v1/namespaces/team/configmaps?watch=true".into(),
            Value::Null,
            forbidden("", "configmaps", "", "", "watch", DANGLING),
        ),
    ];
    for (method, path, body, want) in cases {
        let got = with_token(&east, method, &path, &token, body).await;
        assert_eq!(got.status, 403, "{method} {path}: {}", got.text());
        assert_eq!(got.json(), want, "{method} {path}");
    }
    // Outside `team` no binding applies (so no RBAC error either), at the cluster scope too.
    let got = with_token(
        &east,
        "GET",
        "/api/v1/namespaces/default/configmaps",
        &token,
        Value::Null,
    )
    .await;
    assert_eq!(
        got.json()["message"],
        format!(
            "configmaps is forbidden: User \"{SA}\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"default\""
        )
    );
    let got = with_token(
        &east,
        "GET",
        "/apis/apps/v1/deployments",
        &token,
        Value::Null,
    )
    .await;
    assert_eq!(
        got.json()["message"],
        format!(
            "deployments.apps is forbidden: User \"{SA}\" cannot list resource \"deployments\" in API group \"apps\" at the cluster scope"
        )
    );
    // kube-rs sees the same Status.
    let e = api_error(secrets.get("other").await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    assert!(
        e.message.starts_with("secrets \"other\" is forbidden"),
        "{}",
        e.message
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(bot.clone(), "team");
    // The 403 of a watch comes as the stream's first item (or at once).
    let e = match configmaps
        .watch(&WatchParams::default().timeout(1), "0")
        .await
    {
        Err(e) => e,
        Ok(s) => s.boxed().next().await.unwrap().unwrap_err(),
    };
    let e = api_error(e);
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));

    // kubectl sends no credentials over plain HTTP (client-go attaches them to TLS connections
    // only), so it acts as the ServiceAccount by impersonation: the admin may impersonate
    // anyone, and can-i and a denial answer from the same rules.
    let as_bot = |args: &[&'static str]| {
        let mut v = vec!["--as", SA, "-n", "team"];
        v.extend_from_slice(args);
        v
    };
    let yes = kubectl(
        &admin,
        &as_bot(&["auth", "can-i", "list", "deployments.apps"]),
    )
    .await;
    assert_eq!((yes.ok, yes.stdout.trim()), (true, "yes"), "{}", yes.stderr);
    let no = kubectl(
        &admin,
        &as_bot(&["auth", "can-i", "delete", "deployments.apps"]),
    )
    .await;
    // kubectl prints the review's reason: here the binding to the missing role.
    assert_eq!(
        (no.ok, no.stdout.trim()),
        (false, format!("no - {}", &DANGLING[2..]).as_str()),
        "{}",
        no.stderr
    );
    let denied = kubectl(&admin, &as_bot(&["get", "secrets"])).await;
    assert!(!denied.ok);
    assert!(
        denied.stderr.contains(&format!(
            "Error from server (Forbidden): secrets is forbidden: User \"{SA}\" cannot list resource \"secrets\" in API group \"\" in the namespace \"team\"{DANGLING}"
        )),
        "{}",
        denied.stderr
    );
    let listed = kubectl_ok(&admin, &as_bot(&["get", "deployments"])).await;
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("web ") && l.contains("2/2")),
        "{listed}"
    );
    // A ServiceAccount may not impersonate unless RBAC lets it.
    let got = raw(
        &east,
        "GET",
        "/api/v1/namespaces/team/secrets",
        &[
            ("authorization", format!("Bearer {token}").as_str()),
            (
                "impersonate-user",
                "system:serviceaccount:kube-system:admin",
            ),
        ],
        Vec::new(),
    )
    .await;
    assert_eq!(got.status, 403);
    assert_eq!(
        got.json()["message"],
        format!(
            "serviceaccounts \"admin\" is forbidden: User \"{SA}\" cannot impersonate resource \"serviceaccounts\" in API group \"\" in the namespace \"kube-system\""
        )
    );

    // Tokens belong to their cluster: west has never heard of it.
    let unauthorized = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                              "message": "Unauthorized", "reason": "Unauthorized", "code": 401});
    let got = with_token(&west, "GET", "/api/v1/namespaces", &token, Value::Null).await;
    assert_eq!((got.status, got.json()), (401, unauthorized.clone()));
    // Neither do made-up tokens, on any path.
    let got = with_token(&east, "GET", "/api", "not-a-token", Value::Null).await;
    assert_eq!((got.status, got.json()), (401, unauthorized.clone()));
    // Deleting the ServiceAccount ends its tokens.
    kubectl_ok(&admin, &["delete", "serviceaccount", "bot", "-n", "team"]).await;
    let got = with_token(
        &east,
        "GET",
        "/apis/apps/v1/namespaces/team/deployments",
        &token,
        Value::Null,
    )
    .await;
    assert_eq!((got.status, got.json()), (401, unauthorized));
    sb.shutdown().await;
}

#[tokio::test]
async fn expired_tokens_get_401_and_token_requests_are_checked() {
    let sb = start(&["east"]).await;
    let east = sb.cluster("east").unwrap().url.clone();
    sb.ensure_service_account("east", "default", "ci").unwrap();
    // A token whose time is up is refused like an unknown one.
    let past = std::time::SystemTime::now() - Duration::from_secs(1);
    let expired = sb.mint_token_until("east", "default", "ci", past).unwrap();
    let got = with_token(
        &east,
        "GET",
        "/api/v1/namespaces/default/configmaps",
        &expired,
        Value::Null,
    )
    .await;
    assert_eq!(
        (got.status, got.json()["reason"].clone()),
        (401, json!("Unauthorized"))
    );
    // A live one authenticates (and, with no grants, is forbidden rather than unauthorized).
    let live = sb.mint_token("east", "default", "ci").unwrap();
    let got = with_token(
        &east,
        "GET",
        "/api/v1/namespaces/default/configmaps",
        &live,
        Value::Null,
    )
    .await;
    assert_eq!(got.status, 403, "{}", got.text());

    // The TokenRequest API: lifetime and account checks, and the answer's shape.
    let path = "/api/v1/namespaces/default/serviceaccounts/ci/token";
    let short = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 60}});
    let got = send_json(&east, "POST", path, "application/json", &short).await;
    assert_eq!(got.status, 422, "{}", got.text());
    assert_eq!(
        got.json()["message"],
        "TokenRequest.authentication.k8s.io \"ci\" is invalid: spec.expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes"
    );
    let missing = send_json(
        &east,
        "POST",
        "/api/v1/namespaces/default/serviceaccounts/nobody/token",
        "application/json",
        &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}),
    )
    .await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.json()["message"],
        "serviceaccounts \"nobody\" not found"
    );
    let ok = send_json(
        &east,
        "POST",
        path,
        "application/json",
        &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 900}}),
    )
    .await;
    assert_eq!(ok.status, 201, "{}", ok.text());
    let tr = ok.json();
    assert_eq!(tr["kind"], "TokenRequest");
    assert_eq!(tr["spec"]["expirationSeconds"], 900);
    let expires: jiff::Timestamp = tr["status"]["expirationTimestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let left = expires.as_second() - jiff::Timestamp::now().as_second();
    assert!((890..=900).contains(&left), "{left}");
    let minted = tr["status"]["token"].as_str().unwrap();
    let got = with_token(&east, "GET", "/version", minted, Value::Null).await;
    assert_eq!(got.status, 200);
    // Only POST mints.
    let got = raw(&east, "GET", path, &[], Vec::new()).await;
    assert_eq!(got.status, 405);
    sb.shutdown().await;
}

#[tokio::test]
async fn enforcing_rbac_for_everyone_leaves_the_admin_token_all_powerful() {
    let sb = start(&["east", "west"]).await;
    let east = sb.cluster("east").unwrap().url.clone();
    sb.enforce_rbac("east", true).unwrap();
    // Without credentials a request is anonymous: health and version only.
    assert_eq!(
        raw(&east, "GET", "/version", &[], Vec::new()).await.status,
        200
    );
    let got = raw(&east, "GET", "/api/v1/namespaces", &[], Vec::new()).await;
    assert_eq!(got.status, 403);
    assert_eq!(
        got.json()["message"],
        "namespaces is forbidden: User \"system:anonymous\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope"
    );
    let got = raw(&east, "GET", "/apis", &[], Vec::new()).await;
    assert_eq!(
        got.json()["message"],
        "forbidden: User \"system:anonymous\" cannot get path \"/apis\""
    );
    // The admin token may do anything, and the kubeconfig carries it for east only.
    let admin = sb.admin_token("east").unwrap();
    let got = with_token(
        &east,
        "DELETE",
        "/api/v1/namespaces/kube-public",
        &admin,
        Value::Null,
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let kubeconfig: Value = serde_yaml::from_str(&sb.kubeconfig_yaml()).unwrap();
    assert_eq!(kubeconfig["users"][0]["user"]["token"], json!(admin));
    assert!(kubeconfig["users"][1]["user"].get("token").is_none());
    let client = client_from_kubeconfig(&sb.kubeconfig_yaml()).await;
    let namespaces: Api<Namespace> = Api::all(client);
    namespaces.get("default").await.unwrap();
    // West still treats requests without credentials as the admin; east's token means nothing there.
    let west = sb.cluster("west").unwrap().url.clone();
    assert_eq!(
        raw(&west, "GET", "/api/v1/namespaces", &[], Vec::new())
            .await
            .status,
        200
    );
    let got = with_token(&west, "GET", "/api/v1/namespaces", &admin, Value::Null).await;
    assert_eq!(got.status, 401);
    // Switching back restores the default.
    sb.enforce_rbac("east", false).unwrap();
    assert_eq!(
        raw(&east, "GET", "/api/v1/namespaces", &[], Vec::new())
            .await
            .status,
        200
    );
    assert!(matches!(
        sb.mint_token("nowhere", "default", "x"),
        Err(meridian_sandbox::CredentialError::UnknownCluster(_))
    ));
    sb.shutdown().await;
}

/// What an install applies with `kubectl apply -k`: every kind stored, printed with the columns a
/// real server gives it, and a second apply changes nothing.
const INSTALL: &[(&str, &str)] = &[
    (
        "kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: meridian-system\nresources:\n- namespace.yaml\n- rbac.yaml\n- controller.yaml\n",
    ),
    (
        "namespace.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: meridian-system\n",
    ),
    (
        "rbac.yaml",
        r#"apiVersion: v1
kind: ServiceAccount
metadata:
  name: controller
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: meridian-controller
rules:
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["gateways", "httproutes"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["gateways/status", "httproutes/status"]
  verbs: ["patch", "update"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: meridian-controller
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: meridian-controller
subjects:
- kind: ServiceAccount
  name: controller
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: leader-election
rules:
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: leader-election
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: leader-election
subjects:
- kind: ServiceAccount
  name: controller
"#,
    ),
    (
        "controller.yaml",
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: controller
spec:
  replicas: 2
  selector:
    matchLabels:
      app: meridian-controller
  template:
    metadata:
      labels:
        app: meridian-controller
    spec:
      serviceAccountName: controller
      securityContext:
        runAsNonRoot: true
      containers:
      - name: controller
        image: meridian:dev
        args: ["controller", "--leader-elect"]
        ports:
        - containerPort: 9090
          name: metrics
        resources:
          requests:
            cpu: 50m
            memory: 64Mi
        securityContext:
          readOnlyRootFilesystem: true
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: controller
spec:
  minAvailable: 1
  selector:
    matchLabels:
      app: meridian-controller
"#,
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_k_stores_install_kinds_and_prints_their_columns() {
    if !kubectl_present() {
        return;
    }
    let dir = temp_dir("install");
    let admin = dir.join("admin.kubeconfig");
    let mut cfg = SandboxConfig::ephemeral(&["east"]);
    cfg.kubeconfig_path = Some(admin.clone());
    let sb = Sandbox::start(cfg).await.unwrap();
    let deploy = dir.join("deploy");
    for (file, text) in INSTALL {
        write(&deploy.join(file), text);
    }
    let applied = kubectl_ok(&admin, &["apply", "-k", deploy.to_str().unwrap()]).await;
    for object in [
        "namespace/meridian-system created",
        "serviceaccount/controller created",
        "role.rbac.authorization.k8s.io/leader-election created",
        "clusterrole.rbac.authorization.k8s.io/meridian-controller created",
        "rolebinding.rbac.authorization.k8s.io/leader-election created",
        "clusterrolebinding.rbac.authorization.k8s.io/meridian-controller created",
        "deployment.apps/controller created",
        "poddisruptionbudget.policy/controller created",
    ] {
        assert!(
            applied.contains(object),
            "{object} missing from:\n{applied}"
        );
    }
    // A second apply changes nothing. kubectl still says `configured` for the
    // PodDisruptionBudget, as against a real server: its selector's patch strategy is `replace`,
    // so kubectl's computed patch is never empty; the server finds nothing to change.
    let pdb_rv = || {
        let admin = admin.clone();
        async move {
            let path = "jsonpath={.metadata.resourceVersion}";
            kubectl_ok(
                &admin,
                &[
                    "get",
                    "pdb",
                    "controller",
                    "-n",
                    "meridian-system",
                    "-o",
                    path,
                ],
            )
            .await
        }
    };
    let before = pdb_rv().await;
    let again = kubectl_ok(&admin, &["apply", "-k", deploy.to_str().unwrap()]).await;
    assert_eq!(
        again.lines().filter(|l| l.ends_with(" unchanged")).count(),
        7,
        "{again}"
    );
    assert!(
        again.contains("poddisruptionbudget.policy/controller configured"),
        "{again}"
    );
    assert_eq!(pdb_rv().await, before);

    let headers = |out: &str| -> Vec<String> {
        out.lines()
            .next()
            .unwrap()
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()
    };
    let get = |kind: &'static str, wide: bool| {
        let admin = admin.clone();
        async move {
            let mut args = vec!["get", kind, "-n", "meridian-system"];
            if wide {
                args.extend(["-o", "wide"]);
            }
            kubectl_ok(&admin, &args).await
        }
    };
    let d = get("deployments", true).await;
    assert_eq!(
        headers(&d),
        [
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ]
    );
    let row: Vec<&str> = d.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        (row[0], row[1], row[2], row[3], row[5], row[6], row[7]),
        (
            "controller",
            "0/2",
            "0",
            "0",
            "controller",
            "meridian:dev",
            "app=meridian-controller"
        )
    );
    let pdb = get("pdb", false).await;
    assert_eq!(
        headers(&pdb),
        [
            "NAME",
            "MIN AVAILABLE",
            "MAX UNAVAILABLE",
            "ALLOWED DISRUPTIONS",
            "AGE"
        ]
    );
    let row: Vec<&str> = pdb.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..4], ["controller", "1", "N/A", "0"]);
    assert_eq!(headers(&get("sa", false).await), ["NAME", "SECRETS", "AGE"]);
    assert_eq!(headers(&get("roles", false).await), ["NAME", "CREATED AT"]);
    let crb = kubectl_ok(
        &admin,
        &[
            "get",
            "clusterrolebinding",
            "meridian-controller",
            "-o",
            "wide",
        ],
    )
    .await;
    assert_eq!(
        headers(&crb),
        ["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"]
    );
    assert!(crb.contains("ClusterRole/meridian-controller"), "{crb}");
    // kustomize set the namespace of the ServiceAccount subject.
    assert!(crb.contains("meridian-system:controller"), "{crb}");
    // Discovery lists the new groups and the token subresource.
    let resources = kubectl_ok(&admin, &["api-resources", "-o", "name"]).await;
    for r in [
        "deployments.apps",
        "poddisruptionbudgets.policy",
        "serviceaccounts",
        "roles.rbac.authorization.k8s.io",
        "clusterrolebindings.rbac.authorization.k8s.io",
    ] {
        assert!(
            resources.lines().any(|l| l == r),
            "{r} missing:\n{resources}"
        );
    }
    sb.shutdown().await;
}

#[tokio::test]
async fn refused_requests_are_remembered_with_who_and_what() {
    let sandbox = Sandbox::start(SandboxConfig::ephemeral(&["east"]))
        .await
        .unwrap();
    let url = sandbox.cluster("east").unwrap().url.clone();
    sandbox
        .ensure_service_account("east", "default", "nosy")
        .unwrap();
    let token = sandbox.mint_token("east", "default", "nosy").unwrap();
    assert!(sandbox.denials("east").unwrap().is_empty());

    let resp = raw(
        &url,
        "GET",
        "/api/v1/namespaces/kube-system/secrets/signing-key",
        &[("authorization", &format!("Bearer {token}"))],
        Vec::new(),
    )
    .await;
    assert_eq!(resp.status, 403);

    let denials = sandbox.denials("east").unwrap();
    assert_eq!(denials.len(), 1, "{denials:?}");
    assert_eq!(denials[0].user, "system:serviceaccount:default:nosy");
    let RequestAttributes::Resource(a) = &denials[0].request else {
        panic!("{denials:?}");
    };
    assert_eq!(
        (a.verb.as_str(), a.group.as_str(), a.resource.as_str()),
        ("get", "", "secrets")
    );
    assert_eq!(
        (a.namespace.as_str(), a.name.as_str()),
        ("kube-system", "signing-key")
    );
    assert!(sandbox.denials("nowhere").is_err());
}
