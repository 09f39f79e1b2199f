//! The admin listener with a token ([`AdminAuth::Token`]): kubelet's probe paths stay open,
//! everything else needs `Authorization: Bearer <token>`; refusals are `401` with
//! `WWW-Authenticate: Bearer` and counted; `/config_dump` shows no credential header value.
//!
//! The listener is on 127.0.0.2, a loopback address: whether a token is needed is the
//! `ProxyConfig` knob, which `meridian proxy` sets from its flags (tested in cli.rs), not the
//! address.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{TEST_TIMEOUT, client, free_port, http_snapshot, mesh, metric_sum};
use meridian_distribution::pki::CertStore;
use meridian_proxy::{AdminAuth, ProxyConfig, ProxyHandle};
use serde_json::{Value, json};

const TOKEN: &str = "admin-s3cret";

/// GET `path` on the admin listener at `admin` with an optional `Authorization` header: status,
/// `WWW-Authenticate`, body.
async fn fetch(
    c: &reqwest::Client,
    admin: std::net::SocketAddr,
    path: &str,
    authorization: Option<&str>,
) -> (u16, Option<String>, String) {
    let mut rb = c.get(format!("http://{admin}{path}"));
    if let Some(a) = authorization {
        rb = rb.header("authorization", a);
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    (status, challenge, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_admin_paths_need_the_bearer_token_and_probes_stay_open() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let proxy = ProxyHandle::start(ProxyConfig {
            admin: Some("127.0.0.2:0".parse().unwrap()),
            admin_auth: AdminAuth::Token(TOKEN.to_string()),
            ..Default::default()
        })
        .await
        .unwrap();
        let admin = proxy.admin_addr().unwrap();
        assert_eq!(admin.ip().to_string(), "127.0.0.2");
        let port = free_port();
        // A snapshot carrying a credential in a request header modifier.
        let rule = json!({
            "matches": [{"path": {"type": "pathPrefix", "value": "/"}}],
            "filters": [{"type": "requestHeaderModifier",
                "set": [{"name": "Authorization", "value": "Bearer upstream-s3cret"},
                        {"name": "x-tenant", "value": "blue"}]}],
            "backends": [],
        });
        proxy.apply(http_snapshot(1, port, vec![rule])).await.unwrap();
        let c = client();
        let good = format!("Bearer {TOKEN}");

        // Probes carry no credentials.
        let (s, challenge, body) = fetch(&c, admin, "/healthz", None).await;
        assert_eq!((s, challenge, body.as_str()), (200, None, "ok\n"));
        let (s, _, body) = fetch(&c, admin, "/ready", None).await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["generation"], 1);

        // No token, a wrong one, another scheme: 401 with a Bearer challenge, nothing leaked.
        let refused = [
            ("/config_dump", None),
            ("/config_dump", Some("Bearer admin-s3cre")),
            ("/config_dump", Some("Bearer admin-s3cret-and-more")),
            ("/metrics", Some("Basic YWRtaW46YWRtaW4=")),
            ("/metrics", Some(TOKEN)),
            ("/nope", None),
        ];
        for (path, authorization) in refused {
            let (s, challenge, body) = fetch(&c, admin, path, authorization).await;
            assert_eq!(s, 401, "{path} with {authorization:?}: {body}");
            assert_eq!(challenge.as_deref(), Some("Bearer"), "{path}");
            assert!(!body.contains("generation"), "{body}");
        }

        // The right token opens every path; unknown ones are then a plain 404.
        let (s, _, body) = fetch(&c, admin, "/config_dump", Some(&good)).await;
        assert_eq!(s, 200, "{body}");
        assert!(!body.contains("upstream-s3cret"), "{body}");
        let dump: Value = serde_json::from_str(&body).unwrap();
        let set = &dump["snapshot"]["gateways"][0]["listeners"][0]["routes"][0]["rules"][0]
            ["filters"][0]["set"];
        assert_eq!(
            set,
            &json!([{"name": "Authorization", "value": "<redacted>"},
                    {"name": "x-tenant", "value": "blue"}])
        );
        let (s, _, _) = fetch(&c, admin, "/nope", Some(&good)).await;
        assert_eq!(s, 404);

        let (s, _, metrics) = fetch(&c, admin, "/metrics", Some(&good)).await;
        assert_eq!(s, 200);
        let refused_on = |path: &str| {
            metric_sum(
                &metrics,
                &format!("meridian_proxy_admin_refused_total{{path=\"{path}\"}}"),
            )
        };
        assert_eq!(refused_on("/config_dump"), 3.0, "{metrics}");
        assert_eq!(refused_on("/metrics"), 2.0, "{metrics}");
        assert_eq!(refused_on("other"), 1.0, "{metrics}");
        assert_eq!(
            metric_sum(&metrics, "meridian_proxy_admin_refused_total"),
            6.0,
            "the probes were never refused"
        );
        proxy.shutdown().await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_every_admin_path_is_open() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let proxy = common::proxy().await;
        let admin = proxy.admin_addr().unwrap();
        let c = client();
        for path in ["/healthz", "/config_dump", "/metrics"] {
            let (s, challenge, body) = fetch(&c, admin, path, None).await;
            assert_eq!((s, challenge), (200, None), "{path}: {body}");
        }
        proxy.shutdown().await;
    })
    .await
    .unwrap();
}

/// `/ready`'s status and JSON.
async fn ready(c: &reqwest::Client, admin: std::net::SocketAddr) -> (u16, Value) {
    let (s, _, body) = fetch(c, admin, "/ready", None).await;
    (s, serde_json::from_str(&body).unwrap())
}

/// The RFC 3339 text of `/ready`, as a time.
fn time(v: &Value) -> std::time::SystemTime {
    let ts: jiff::Timestamp = v.as_str().unwrap().parse().unwrap();
    ts.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_shows_the_mesh_identity_without_key_material_and_readiness_ignores_it() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let c = client();

        // No identity at all: null.
        let plain = common::proxy().await;
        let (s, v) = ready(&c, plain.admin_addr().unwrap()).await;
        assert_eq!(s, 503);
        assert!(v.get("identity").unwrap().is_null(), "{v}");
        plain.shutdown().await;

        // An identity whose first certificate has not arrived yet: still null.
        let store = Arc::new(CertStore::new(mesh::ca().bundle()));
        let proxy = ProxyHandle::start(ProxyConfig {
            admin: Some("127.0.0.1:0".parse().unwrap()),
            identity: Some(store.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
        let admin = proxy.admin_addr().unwrap();
        let (s, v) = ready(&c, admin).await;
        assert_eq!(s, 503);
        assert!(v["identity"].is_null(), "{v}");

        // The certificate arrives: shown at the next request; readiness still waits for a
        // snapshot.
        let creds = mesh::proxy_creds(mesh::ca(), "west", "z1", "west-1");
        let (not_after, renew_at) = (creds.not_after(), creds.renew_at());
        assert!(renew_at < not_after);
        store.set(creds);
        let (s, v) = ready(&c, admin).await;
        assert_eq!((s, &v["ready"]), (503, &json!(false)), "{v}");
        let identity = &v["identity"];
        assert_eq!(
            identity["uri"], "spiffe://meridian.mesh/cluster/west/region/r1/zone/z1/proxy/west-1",
            "{v}"
        );
        assert_eq!(time(&identity["notAfter"]), not_after, "{v}");
        assert_eq!(time(&identity["renewAt"]), renew_at, "{v}");
        assert_eq!(
            identity.as_object().unwrap().len(),
            3,
            "uri, notAfter and renewAt only: {v}"
        );
        let text = v.to_string();
        assert!(!text.contains("BEGIN"), "no PEM of any kind: {text}");

        proxy
            .apply(http_snapshot(1, free_port(), vec![]))
            .await
            .unwrap();
        let (s, v) = ready(&c, admin).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["identity"], *identity);
        proxy.shutdown().await;
    })
    .await
    .unwrap();
}

/// The per-Gateway health endpoint for global load balancers answers without the token (their
/// health checks cannot send one) and shows only names, counts and booleans: 200 when this
/// region serves every backend from its own endpoints, 503 naming the backends it cannot, 404
/// for a Gateway it does not serve, 400 for what it cannot read. Flipping on ejection and back
/// is in failover.rs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_health_endpoint_is_open_and_says_only_what_a_gslb_needs() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let proxy = ProxyHandle::start(ProxyConfig {
            admin: Some("127.0.0.2:0".parse().unwrap()),
            admin_auth: AdminAuth::Token(TOKEN.to_string()),
            locality: meridian_model::locality::Locality {
                cluster: "east".into(),
                region: "us-east".into(),
                zone: "a".into(),
            },
            ..Default::default()
        })
        .await
        .unwrap();
        let admin = proxy.admin_addr().unwrap();
        let c = client();
        let path = "/healthz/gateway/default/gw";
        // Nothing served yet: not this proxy's Gateway.
        let (status, _, body) = fetch(&c, admin, path, None).await;
        assert_eq!(status, 404, "{body}");
        let ep = |region: &str, port: u16| {
            json!({"address": "127.0.0.1", "port": port, "cluster": region,
                   "region": region, "zone": "a"})
        };
        // The local endpoint takes connections (the health probes must not eject it); the eu
        // ones need not.
        let listening = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local_port = listening.local_addr().unwrap().port();
        let local = common::backend(
            "default/local:80",
            1,
            vec![ep("us-east", local_port), ep("eu", 10)],
        );
        let remote = common::backend("default/remote:80", 1, vec![ep("eu", 11)]);
        let port = free_port();
        proxy
            .apply(http_snapshot(
                1,
                port,
                vec![
                    common::prefix_rule("/a", vec![local.clone()]),
                    common::prefix_rule("/b", vec![remote]),
                ],
            ))
            .await
            .unwrap();
        let (status, _, body) = fetch(&c, admin, path, None).await;
        assert_eq!(status, 503, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["healthy"], false);
        assert_eq!(v["region"], "us-east");
        assert_eq!(v["backends"], 2);
        assert_eq!(v["servableLocally"], 1);
        assert_eq!(v["withoutLocalEndpoints"], json!(["default/remote:80"]));
        assert!(!body.contains("127.0.0.1"), "no addresses: {body}");
        // A share: half the backends is enough with ?minPercent=50.
        let (status, _, body) = fetch(&c, admin, &format!("{path}?minPercent=50"), None).await;
        assert_eq!(status, 200, "{body}");
        // Only local backends: 200 with the default (all of them).
        proxy
            .apply(http_snapshot(
                2,
                port,
                vec![common::prefix_rule("/", vec![local])],
            ))
            .await
            .unwrap();
        let (status, _, body) = fetch(&c, admin, path, None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["healthy"],
            true
        );
        // Unknown Gateway, malformed path and query, too long a path.
        let (status, _, _) = fetch(&c, admin, "/healthz/gateway/default/other", None).await;
        assert_eq!(status, 404);
        for bad in [
            "/healthz/gateway/default".to_string(),
            "/healthz/gateway/default/gw/extra".to_string(),
            format!("{path}?minPercent=101"),
            format!("{path}?other=1"),
            format!("/healthz/gateway/default/{}", "g".repeat(400)),
        ] {
            let (status, _, body) = fetch(&c, admin, &bad, None).await;
            assert_eq!(status, 400, "{bad}: {body}");
        }
        // The other protected paths still want the token.
        let (status, _, _) = fetch(&c, admin, "/metrics", None).await;
        assert_eq!(status, 401);
        proxy.shutdown().await;
        drop(listening);
    })
    .await
    .unwrap();
}
