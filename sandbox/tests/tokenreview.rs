//! The TokenReview API, as Meridian's controller will use it to check a proxy's bootstrap
//! credential: a ServiceAccount token minted by TokenRequest for the audience `meridian`,
//! reviewed with kube-rs `Api::<TokenReview>::all(client).create(..)` in the cluster that minted
//! it, and with the real `kubectl create -f` (skipped with a message when kubectl is absent).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use k8s_openapi::api::authentication::v1::{
    BoundObjectReference, TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec,
    TokenReviewStatus,
};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

const AUDIENCE: &str = "meridian";
const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// A token of `default/NAME` from the TokenRequest API, for `audiences`, optionally bound.
async fn token_request(
    client: &Client,
    name: &str,
    audiences: &[&str],
    bound: Option<BoundObjectReference>,
) -> Result<String, kube::Error> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            bound_object_ref: bound,
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let answer = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await?;
    Ok(answer.status.unwrap().token.unwrap())
}

/// Reviews `token` for `audiences` (none: the API server's own), exactly as the controller will.
async fn review(
    client: &Client,
    token: &str,
    audiences: &[&str],
) -> Result<TokenReviewStatus, kube::Error> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_string(),
            audiences: (!audiences.is_empty())
                .then(|| audiences.iter().map(|a| a.to_string()).collect()),
        },
        ..TokenReview::default()
    };
    let created = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    Ok(created.status.unwrap())
}

/// A review that did not authenticate: its error, with no user and no audiences.
fn refused(status: TokenReviewStatus) -> String {
    assert_ne!(status.authenticated, Some(true), "{status:?}");
    assert_eq!(status.user.unwrap_or_default().username, None);
    assert_eq!(status.audiences, None);
    status.error.unwrap()
}

/// The `Status` of a kube-rs API error.
fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn sa_uid(client: &Client, name: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    accounts.get(name).await.unwrap().metadata.uid.unwrap()
}

#[tokio::test]
async fn a_meridian_token_is_reviewed_like_a_real_server_reviews_it() {
    let sb = start(&["east", "west"]).await;
    let east = sb.cluster("east").unwrap().url.clone();
    let admin = kube_client(&east);
    let west_admin = kube_client(&sb.cluster("west").unwrap().url);
    for cluster in ["east", "west"] {
        sb.ensure_service_account(cluster, "default", "proxy")
            .unwrap();
    }
    let token = token_request(&admin, "proxy", &[AUDIENCE], None)
        .await
        .unwrap();

    // Valid for `meridian`: the account, its groups, its uid, the audiences both sides share.
    let ok = review(&admin, &token, &["elsewhere", AUDIENCE])
        .await
        .unwrap();
    assert_eq!(ok.authenticated, Some(true));
    assert_eq!(ok.error, None);
    assert_eq!(ok.audiences, Some(vec![AUDIENCE.to_string()]));
    let user = ok.user.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:default:proxy")
    );
    assert_eq!(
        user.groups.unwrap(),
        [
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated"
        ]
    );
    assert_eq!(user.uid, Some(sa_uid(&admin, "proxy").await));
    let extra = user.extra.unwrap();
    let id = &extra["authentication.kubernetes.io/credential-id"];
    assert!(id.len() == 1 && id[0].starts_with("JTI="), "{extra:?}");
    assert!(!extra.contains_key("authentication.kubernetes.io/pod-name"));

    // Another audience, or none (the API server's own): refused, saying why.
    let wrong = refused(review(&admin, &token, &["other"]).await.unwrap());
    assert_eq!(
        wrong,
        "token audiences [\"meridian\"] is invalid for the target audiences [\"other\"]"
    );
    let api = refused(review(&admin, &token, &[]).await.unwrap());
    assert_eq!(
        api,
        format!(
            "token audiences [\"meridian\"] is invalid for the target audiences [\"{API_AUDIENCE}\"]"
        )
    );
    // ... so the proxy's credential is no API credential either.
    let config = sb.kubeconfig_for_token("east", &token, "default").unwrap();
    let as_proxy = Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::from_yaml(&config).unwrap(),
            &Default::default(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    let e = Api::<ServiceAccount>::namespaced(as_proxy, "default")
        .get("proxy")
        .await
        .unwrap_err();
    assert_eq!(api_error(e).code, 401);

    // A token of another cluster (same namespace and name) and garbage mean nothing here.
    let west_token = token_request(&west_admin, "proxy", &[AUDIENCE], None)
        .await
        .unwrap();
    assert_eq!(
        refused(review(&admin, &west_token, &[AUDIENCE]).await.unwrap()),
        "invalid bearer token"
    );
    assert_eq!(
        refused(review(&admin, "garbage", &[AUDIENCE]).await.unwrap()),
        "invalid bearer token"
    );
    // The west token is good in west.
    let in_west = review(&west_admin, &west_token, &[AUDIENCE]).await.unwrap();
    assert_eq!(in_west.authenticated, Some(true));

    // An expired token (the TokenRequest API mints none shorter than 10 minutes).
    sb.ensure_service_account("east", "default", "old").unwrap();
    let past = std::time::SystemTime::now() - Duration::from_secs(1);
    let expired = sb.mint_token_until("east", "default", "old", past).unwrap();
    assert_eq!(
        refused(review(&admin, &expired, &[]).await.unwrap()),
        "service account token has expired"
    );

    // The account goes: its tokens go with it, and a new account of that name does not revive
    // them.
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), "default");
    let old_uid = sa_uid(&admin, "proxy").await;
    accounts
        .delete("proxy", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        refused(review(&admin, &token, &[AUDIENCE]).await.unwrap()),
        "serviceaccounts \"proxy\" not found"
    );
    sb.ensure_service_account("east", "default", "proxy")
        .unwrap();
    let new_uid = sa_uid(&admin, "proxy").await;
    assert_eq!(
        refused(review(&admin, &token, &[AUDIENCE]).await.unwrap()),
        format!("service account UID ({new_uid}) does not match claim ({old_uid})")
    );

    // No token is a 400, as on a real server (the object is refused, not reviewed).
    let e = review(&admin, "", &[AUDIENCE]).await.unwrap_err();
    let status = api_error(e);
    assert_eq!((status.code, status.reason.as_str()), (400, "BadRequest"));
    assert_eq!(
        status.message,
        "token is required for TokenReview in authentication"
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn a_token_bound_to_a_pod_names_the_pod_and_dies_with_it() {
    let sb = start(&["east"]).await;
    let admin = kube_client(&sb.cluster("east").unwrap().url);
    sb.ensure_service_account("east", "default", "proxy")
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "proxy-0"},
        "spec": {"serviceAccountName": "proxy", "containers": [{"name": "proxy", "image": "meridian"}]}
    }))
    .unwrap();
    let pod_uid = pods
        .create(&PostParams::default(), &pod)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let bound = |name: &str| BoundObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name.into()),
        uid: None,
    };

    // The pod must exist, as on a real server.
    let e = token_request(&admin, "proxy", &[AUDIENCE], Some(bound("proxy-9")))
        .await
        .unwrap_err();
    let status = api_error(e);
    assert_eq!(
        (status.code, status.message.as_str()),
        (404, "pods \"proxy-9\" not found")
    );

    let token = token_request(&admin, "proxy", &[AUDIENCE], Some(bound("proxy-0")))
        .await
        .unwrap();
    let ok = review(&admin, &token, &[AUDIENCE]).await.unwrap();
    assert_eq!(ok.authenticated, Some(true));
    let extra = ok.user.unwrap().extra.unwrap();
    assert_eq!(
        extra["authentication.kubernetes.io/pod-name"],
        ["proxy-0".to_string()]
    );
    assert_eq!(extra["authentication.kubernetes.io/pod-uid"], [pod_uid]);

    pods.delete("proxy-0", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        refused(review(&admin, &token, &[AUDIENCE]).await.unwrap()),
        "service account token has been invalidated"
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn reviewing_tokens_needs_create_on_tokenreviews() {
    let sb = start(&["east"]).await;
    let east = sb.cluster("east").unwrap().url.clone();
    let admin = kube_client(&east);
    for account in ["proxy", "controller"] {
        sb.ensure_service_account("east", "default", account)
            .unwrap();
    }
    let proxy_token = token_request(&admin, "proxy", &[AUDIENCE], None)
        .await
        .unwrap();
    let controller_token = sb.mint_token("east", "default", "controller").unwrap();
    let kubeconfig = sb
        .kubeconfig_for_token("east", &controller_token, "default")
        .unwrap();
    let controller = Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::from_yaml(&kubeconfig).unwrap(),
            &Default::default(),
        )
        .await
        .unwrap(),
    )
    .unwrap();

    // Without a grant: the real server's 403.
    let e = review(&controller, &proxy_token, &[AUDIENCE])
        .await
        .unwrap_err();
    let status = api_error(e);
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        status.message,
        "tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:default:controller\" cannot create resource \"tokenreviews\" in API group \"authentication.k8s.io\" at the cluster scope"
    );

    // The rules of the real `system:auth-delegator` ClusterRole (the sandbox does not bootstrap
    // the default roles), bound to the controller's account.
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": "system:auth-delegator"},
        "rules": [
            {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
            {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]}
        ]
    }))
    .unwrap();
    Api::<ClusterRole>::all(admin.clone())
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "controller:auth-delegator"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
        "subjects": [{"kind": "ServiceAccount", "name": "controller", "namespace": "default"}]
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let ok = review(&controller, &proxy_token, &[AUDIENCE])
        .await
        .unwrap();
    assert_eq!(ok.authenticated, Some(true));
    assert_eq!(
        ok.user.unwrap().username.as_deref(),
        Some("system:serviceaccount:default:proxy")
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn token_reviews_are_created_only_and_listed_in_discovery() {
    let sb = start(&["east"]).await;
    let east = sb.cluster("east").unwrap().url.clone();
    let path = "/apis/authentication.k8s.io/v1/tokenreviews";
    // Nothing is stored: no get, list or watch on the collection, no objects below it.
    for (method, p, code, reason) in [
        ("GET", path.to_string(), 405, "MethodNotAllowed"),
        ("GET", format!("{path}?watch=true"), 405, "MethodNotAllowed"),
        ("DELETE", path.to_string(), 405, "MethodNotAllowed"),
        ("GET", format!("{path}/x"), 404, "NotFound"),
        (
            "POST",
            "/apis/authentication.k8s.io/v1/namespaces/default/tokenreviews".to_string(),
            404,
            "NotFound",
        ),
    ] {
        let got = raw(&east, method, &p, &[], Vec::new()).await;
        assert_eq!(got.status, code, "{method} {p}: {}", got.text());
        assert_eq!(got.json()["reason"], reason, "{method} {p}");
    }
    // A body of another kind is refused, not reviewed.
    let other = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                       "spec": {"token": "x"}});
    let got = send_json(&east, "POST", path, "application/json", &other).await;
    assert_eq!(got.status, 400, "{}", got.text());

    let list = get_json(&east, "/apis/authentication.k8s.io/v1")
        .await
        .json();
    assert_eq!(
        list["resources"],
        json!([{"name": "tokenreviews", "singularName": "tokenreview", "namespaced": false,
                "kind": "TokenReview", "verbs": ["create"]}])
    );
    let groups = get_json(&east, "/apis").await.json();
    let names: Vec<&str> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"authentication.k8s.io"), "{names:?}");
    sb.shutdown().await;
}

/// `kubectl --kubeconfig <file>` with its own discovery cache, bounded in time.
async fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let mut c = tokio::process::Command::new("kubectl");
    c.arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(kubeconfig.with_extension("cache"))
        .arg("--request-timeout=15s")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), c.output())
        .await
        .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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

#[tokio::test]
async fn kubectl_creates_a_token_review() {
    if !kubectl_present() {
        return;
    }
    let sb = start(&["east"]).await;
    sb.ensure_service_account("east", "default", "proxy")
        .unwrap();
    let token = sb.mint_token("east", "default", "proxy").unwrap();
    let dir = std::env::temp_dir().join(format!("meridian-tokenreview-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, sb.kubeconfig_yaml()).unwrap();
    let file = dir.join("tokenreview.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec:\n  token: {token}\n"
        ),
    )
    .unwrap();

    let (ok, out, err) = kubectl(
        &kubeconfig,
        &["create", "-f", file.to_str().unwrap(), "-o", "yaml"],
    )
    .await;
    assert!(ok, "kubectl create failed:\nstdout: {out}\nstderr: {err}");
    let printed: Value = serde_yaml::from_str(&out).unwrap();
    assert_eq!(printed["kind"], "TokenReview", "{out}");
    assert_eq!(printed["status"]["authenticated"], true, "{out}");
    assert!(out.contains("authenticated: true"), "{out}");
    assert_eq!(
        printed["status"]["user"]["username"],
        "system:serviceaccount:default:proxy"
    );
    assert_eq!(printed["status"]["audiences"], json!([API_AUDIENCE]));

    // Discovery tells kubectl what it may do with the kind, and the server refuses the rest.
    let (ok, out, err) = kubectl(
        &kubeconfig,
        &[
            "api-resources",
            "--api-group=authentication.k8s.io",
            "-o",
            "wide",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("tokenreviews"))
        .unwrap_or_else(|| panic!("no tokenreviews in:\n{out}"));
    let columns: Vec<&str> = row.split_whitespace().collect();
    // NAME, SHORTNAMES (none), APIVERSION, NAMESPACED, KIND, VERBS, CATEGORIES (none)
    assert_eq!(
        columns,
        [
            "tokenreviews",
            "authentication.k8s.io/v1",
            "false",
            "TokenReview",
            "create"
        ],
        "{row}"
    );
    let (ok, _, err) = kubectl(&kubeconfig, &["get", "tokenreviews"]).await;
    assert!(!ok);
    assert!(
        err.contains("the server does not allow this method on the requested resource"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    sb.shutdown().await;
}
