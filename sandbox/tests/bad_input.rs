//! Malformed and hostile requests get the status codes and `Status` reasons of a real API
//! server, and the server keeps serving afterwards.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CMS: &str = "/api/v1/namespaces/default/configmaps";

fn assert_status(r: &Raw, code: u16, reason: &str) -> Value {
    let s = r.json();
    assert_eq!(r.status, code, "{s}");
    assert_eq!(s["kind"], "Status", "{s}");
    assert_eq!(s["apiVersion"], "v1");
    assert_eq!(s["status"], "Failure");
    assert_eq!(s["code"], code);
    assert_eq!(s["reason"], reason, "{s}");
    assert!(r.content_type.starts_with("application/json"));
    s
}

fn cm(name: &str, ns: Option<&str>) -> Value {
    let mut v = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}});
    if let Some(ns) = ns {
        v["metadata"]["namespace"] = json!(ns);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_and_wrong_objects() {
    let sb = start(&["c1"]).await;
    let base = sb.clusters()[0].url.clone();
    let json_ct = [("content-type", "application/json")];

    let r = raw(
        &base,
        "POST",
        CMS,
        &json_ct,
        b"{\"apiVersion\": \"v1\", \"kind\": ".to_vec(),
    )
    .await;
    assert_status(&r, 400, "BadRequest");
    let r = raw(&base, "POST", CMS, &json_ct, vec![0xff, 0xfe, 0x00, 0x12]).await;
    assert_status(&r, 400, "BadRequest");
    let r = raw(&base, "POST", CMS, &json_ct, Vec::new()).await;
    assert_status(&r, 400, "BadRequest");
    let r = raw(&base, "POST", CMS, &json_ct, b"[1,2,3]".to_vec()).await;
    assert_status(&r, 400, "BadRequest");

    // YAML bodies are accepted, broken YAML is a 400.
    let yaml =
        b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  a: b\n".to_vec();
    let r = raw(
        &base,
        "POST",
        CMS,
        &[("content-type", "application/yaml")],
        yaml,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = raw(
        &base,
        "POST",
        CMS,
        &[("content-type", "application/yaml")],
        b"metadata: [unclosed\n".to_vec(),
    )
    .await;
    assert_status(&r, 400, "BadRequest");

    // Missing or wrong kind / apiVersion.
    let r = send_json(
        &base,
        "POST",
        CMS,
        "application/json",
        &json!({"metadata": {"name": "x"}}),
    )
    .await;
    let s = assert_status(&r, 400, "BadRequest");
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("Object 'Kind' is missing"),
        "{s}"
    );
    let mut wrong = cm("x", None);
    wrong["kind"] = json!("Secret");
    assert_status(
        &send_json(&base, "POST", CMS, "application/json", &wrong).await,
        400,
        "BadRequest",
    );
    let mut wrong = cm("x", None);
    wrong["apiVersion"] = json!("apps/v1");
    assert_status(
        &send_json(&base, "POST", CMS, "application/json", &wrong).await,
        400,
        "BadRequest",
    );
    let mut wrong = cm("x", None);
    wrong["metadata"]["labels"] = json!({"a": 1});
    assert_status(
        &send_json(&base, "POST", CMS, "application/json", &wrong).await,
        400,
        "BadRequest",
    );

    // Namespace in the body disagrees with the URL.
    let r = send_json(
        &base,
        "POST",
        CMS,
        "application/json",
        &cm("x", Some("kube-system")),
    )
    .await;
    let s = assert_status(&r, 400, "BadRequest");
    assert_eq!(
        s["message"],
        "the namespace of the provided object does not match the namespace sent on the request"
    );
    // Namespace that does not exist.
    let r = send_json(
        &base,
        "POST",
        "/api/v1/namespaces/ghost/configmaps",
        "application/json",
        &cm("x", None),
    )
    .await;
    let s = assert_status(&r, 404, "NotFound");
    assert_eq!(s["message"], "namespaces \"ghost\" not found");
    assert_eq!(s["details"]["kind"], "namespaces");

    // Invalid names and missing names are 422 Invalid.
    let r = send_json(
        &base,
        "POST",
        CMS,
        "application/json",
        &cm("Not_A_Name", None),
    )
    .await;
    assert_status(&r, 422, "Invalid");
    let r = send_json(
        &base,
        "POST",
        CMS,
        "application/json",
        &json!({"apiVersion": "v1", "kind": "ConfigMap"}),
    )
    .await;
    assert_status(&r, 422, "Invalid");
    // generateName works.
    let r = send_json(
        &base,
        "POST",
        CMS,
        "application/json",
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "gen-"}}),
    )
    .await;
    assert_eq!(r.status, 201);
    assert!(
        r.json()["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("gen-")
    );

    // Duplicate create, PUT with mismatching name, PUT of a missing object.
    assert_eq!(
        send_json(&base, "POST", CMS, "application/json", &cm("dup", None))
            .await
            .status,
        201
    );
    assert_status(
        &send_json(&base, "POST", CMS, "application/json", &cm("dup", None)).await,
        409,
        "AlreadyExists",
    );
    let r = send_json(
        &base,
        "PUT",
        &format!("{CMS}/other"),
        "application/json",
        &cm("dup", None),
    )
    .await;
    assert_status(&r, 400, "BadRequest");
    let r = send_json(
        &base,
        "PUT",
        &format!("{CMS}/missing"),
        "application/json",
        &cm("missing", None),
    )
    .await;
    let s = assert_status(&r, 404, "NotFound");
    assert_eq!(s["message"], "configmaps \"missing\" not found");

    // A protobuf body that is not a valid envelope is a 400 (see also
    // protobuf_bodies_are_decoded_or_refused_with_a_status).
    let r = raw(
        &base,
        "POST",
        CMS,
        &[("content-type", "application/vnd.kubernetes.protobuf")],
        b"k8s\0...".to_vec(),
    )
    .await;
    assert_status(&r, 400, "BadRequest");
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_resources_methods_and_parameters() {
    let sb = start(&["c1"]).await;
    let base = sb.clusters()[0].url.clone();
    for path in [
        "/apis/nope.example.com/v1/things",
        "/api/v1/deployments",
        // The sandbox serves apps/v1 Deployments, but no other kind of that group.
        "/apis/apps/v1/namespaces/default/statefulsets",
        "/api/v2/configmaps",
        "/api/v1/namespaces/default/configmaps/x/scale",
        "/api/v1/namespaces/default/namespaces",
        "/totally/unknown",
    ] {
        let s = assert_status(&get_json(&base, path).await, 404, "NotFound");
        assert_eq!(
            s["message"], "the server could not find the requested resource",
            "{path}"
        );
    }
    // Verbs a path does not support.
    assert_status(
        &send_json(&base, "PUT", CMS, "application/json", &cm("x", None)).await,
        405,
        "MethodNotAllowed",
    );
    assert_status(
        &send_json(
            &base,
            "POST",
            "/api/v1/configmaps",
            "application/json",
            &cm("x", None),
        )
        .await,
        405,
        "MethodNotAllowed",
    );
    assert_status(
        &raw(&base, "DELETE", "/apis", &[], Vec::new()).await,
        405,
        "MethodNotAllowed",
    );

    // Bad query parameters.
    assert_status(
        &get_json(&base, &format!("{CMS}?labelSelector=a%20in%20(b")).await,
        400,
        "BadRequest",
    );
    assert_status(
        &get_json(&base, &format!("{CMS}?fieldSelector=nonsense")).await,
        400,
        "BadRequest",
    );
    assert_status(
        &get_json(&base, &format!("{CMS}?limit=-3")).await,
        400,
        "BadRequest",
    );
    assert_status(
        &get_json(&base, &format!("{CMS}?limit=2&continue=zzzz")).await,
        400,
        "BadRequest",
    );
    assert_status(
        &get_json(&base, &format!("{CMS}?watch=true&resourceVersion=abc")).await,
        400,
        "BadRequest",
    );
    assert_status(
        &get_json(&base, &format!("{CMS}?watch=true&timeoutSeconds=soon")).await,
        400,
        "BadRequest",
    );

    // Patches.
    assert_eq!(
        send_json(&base, "POST", CMS, "application/json", &cm("p", None))
            .await
            .status,
        201
    );
    let p = format!("{CMS}/p");
    assert_status(
        &raw(
            &base,
            "PATCH",
            &p,
            &[("content-type", "text/plain")],
            b"{}".to_vec(),
        )
        .await,
        415,
        "UnsupportedMediaType",
    );
    assert_status(
        &raw(
            &base,
            "PATCH",
            &p,
            &[("content-type", "application/merge-patch+json")],
            b"{oops".to_vec(),
        )
        .await,
        400,
        "BadRequest",
    );
    let r = send_json(
        &base,
        "PATCH",
        &p,
        "application/json-patch+json",
        &json!([{"op": "test", "path": "/data/k", "value": "nope"}]),
    )
    .await;
    assert_status(&r, 422, "Invalid");
    let r = send_json(
        &base,
        "PATCH",
        &p,
        "application/json-patch+json",
        &json!({"op": "add"}),
    )
    .await;
    assert_status(&r, 400, "BadRequest");
    let r = send_json(
        &base,
        "PATCH",
        &p,
        "application/apply-patch+yaml",
        &cm("p", None),
    )
    .await;
    assert_status(&r, 400, "BadRequest"); // fieldManager is required
    let r = send_json(
        &base,
        "PATCH",
        &format!("{p}?fieldManager=m"),
        "application/apply-patch+yaml",
        &json!({"metadata": {"name": "p"}}),
    )
    .await;
    assert_status(&r, 400, "BadRequest"); // apiVersion and kind are required
    let r = send_json(
        &base,
        "PATCH",
        &format!("{CMS}/absent"),
        "application/merge-patch+json",
        &json!({"data": {"a": "b"}}),
    )
    .await;
    assert_status(&r, 404, "NotFound");
    // A merge patch that changes the kind is refused, one with a stale resourceVersion conflicts.
    let r = send_json(
        &base,
        "PATCH",
        &p,
        "application/merge-patch+json",
        &json!({"kind": "Secret"}),
    )
    .await;
    assert_status(&r, 400, "BadRequest");
    let r = send_json(
        &base,
        "PATCH",
        &p,
        "application/merge-patch+json",
        &json!({"metadata": {"resourceVersion": "1"}}),
    )
    .await;
    assert_status(&r, 409, "Conflict");
    // The status subresource only exists for kinds that have it.
    assert_status(
        &get_json(&base, &format!("{p}/status")).await,
        404,
        "NotFound",
    );
    // Delete preconditions.
    let r = send_json(
        &base,
        "DELETE",
        &p,
        "application/json",
        &json!({"preconditions": {"uid": "not-the-uid"}}),
    )
    .await;
    assert_status(&r, 409, "Conflict");
    let r = raw(
        &base,
        "DELETE",
        &p,
        &[("content-type", "application/json")],
        b"{garbage".to_vec(),
    )
    .await;
    assert_status(&r, 400, "BadRequest");

    // Still healthy after all of that.
    let r = get_json(&base, "/readyz").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413() {
    let sb = start(&["c1"]).await;
    let base = sb.clusters()[0].url.clone();
    let big = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"},
                     "data": {"blob": "x".repeat(4 * 1024 * 1024)}});
    let r = send_json(&base, "POST", CMS, "application/json", &big).await;
    let s = assert_status(&r, 413, "RequestEntityTooLarge");
    assert_eq!(s["message"], "Request entity too large: limit is 3145728");

    // Without a Content-Length (chunked), the limit is enforced while reading.
    let addr = sb.clusters()[0].addr;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {CMS} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..64 {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        if stream.write_all(&frame).await.is_err() {
            break; // the server may answer and close before we finish sending
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut resp)).await;
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("RequestEntityTooLarge"), "{text}");

    // A body just under the limit is fine.
    let ok = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fits"},
                    "data": {"blob": "x".repeat(3 * 1024 * 1024 - 200)}});
    assert_eq!(
        send_json(&base, "POST", CMS, "application/json", &ok)
            .await
            .status,
        201
    );
    sb.shutdown().await;
}

/// A bounded stream of junk requests across endpoints: every answer is a Status (or a normal
/// response), never a dropped connection, and the server still serves afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_requests_never_break_the_server() {
    let sb = start(&["c1"]).await;
    let base = sb.clusters()[0].url.clone();
    let client = kube_client(&base);
    install_gateway_crd(&client).await;
    let paths = [
        CMS,
        "/api/v1/namespaces",
        "/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways",
        "/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways/g/status",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        "/api/v1/namespaces/default/configmaps/x",
    ];
    let bodies: Vec<Vec<u8>> = vec![
        b"null".to_vec(),
        b"{}".to_vec(),
        b"{\"metadata\": 5}".to_vec(),
        b"{\"apiVersion\": 1, \"kind\": []}".to_vec(),
        b"{\"apiVersion\":\"apiextensions.k8s.io/v1\",\"kind\":\"CustomResourceDefinition\",\"metadata\":{\"name\":\"x.y.z\"},\"spec\":{}}".to_vec(),
        b"\"string\"".to_vec(),
        b"{\"kind\":\"Gateway\",\"apiVersion\":\"gateway.networking.k8s.io/v1\",\"metadata\":{\"name\":\"g\",\"finalizers\":[1]}}".to_vec(),
        b"[{\"op\":\"remove\",\"path\":\"/nope\"}]".to_vec(),
        vec![b'{'; 5000],
        b"--- !!binary\n".to_vec(),
    ];
    let types = [
        "application/json",
        "application/yaml",
        "application/merge-patch+json",
        "application/json-patch+json",
        "application/strategic-merge-patch+json",
        "application/apply-patch+yaml",
    ];
    let mut count = 0;
    for (i, path) in paths.iter().enumerate() {
        for (j, body) in bodies.iter().enumerate() {
            for method in ["POST", "PUT", "PATCH"] {
                let ct = types[(i + j) % types.len()];
                let r = raw(
                    &base,
                    method,
                    &format!("{path}?fieldManager=fuzz"),
                    &[("content-type", ct)],
                    body.clone(),
                )
                .await;
                count += 1;
                if r.status >= 400 {
                    let s = r.json();
                    assert_eq!(s["kind"], "Status", "{method} {path} {ct}: {s}");
                    assert!(r.status < 500, "{method} {path} {ct}: server error {s}");
                }
            }
        }
    }
    assert_eq!(count, 180);
    assert_eq!(get_json(&base, "/readyz").await.status, 200);
    assert_eq!(get_json(&base, CMS).await.status, 200);
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_openapi_and_tables_over_http() {
    let sb = start(&["c1"]).await;
    let base = sb.clusters()[0].url.clone();
    let client = kube_client(&base);
    install_gateway_crd(&client).await;

    for path in ["/api", "/apis"] {
        let r = get_json(&base, path).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.content_type, "application/json",
            "client-go picks the discovery format from this"
        );
    }
    let apis = get_json(&base, "/apis").await.json();
    let gw = apis["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "gateway.networking.k8s.io")
        .unwrap();
    assert_eq!(gw["preferredVersion"]["version"], "v1");
    assert_eq!(gw["versions"].as_array().unwrap().len(), 2);
    let rl = get_json(&base, "/apis/gateway.networking.k8s.io/v1")
        .await
        .json();
    let res = rl["resources"].as_array().unwrap();
    let gws = res.iter().find(|r| r["name"] == "gateways").unwrap();
    assert_eq!(gws["shortNames"], json!(["gtw"]));
    assert_eq!(gws["categories"], json!(["gateway-api"]));
    assert_eq!(gws["singularName"], "gateway");
    assert!(res.iter().any(|r| r["name"] == "gateways/status"));
    assert_eq!(get_json(&base, "/version").await.json()["minor"], "32");

    let root = get_json(&base, "/openapi/v3").await.json();
    let url = root["paths"]["apis/gateway.networking.k8s.io/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_string();
    let doc = get_json(&base, &url).await.json();
    let op = &doc["paths"]["/apis/gateway.networking.k8s.io/v1/namespaces/{namespace}/gateways/{name}"]
        ["patch"];
    assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], "Gateway");
    assert!(
        op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation")
    );

    // Table output for list, single GET and watch.
    let g = gateways(&client, "default");
    g.create(&Default::default(), &gateway("t1", "meridian"))
        .await
        .unwrap();
    let accept = [(
        "accept",
        "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json",
    )];
    let list = raw(
        &base,
        "GET",
        "/apis/gateway.networking.k8s.io/v1/gateways?limit=500",
        &accept,
        Vec::new(),
    )
    .await
    .json();
    assert_eq!(list["kind"], "Table");
    let cols: Vec<&str> = list["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, vec!["Name", "Class", "Address", "Programmed", "Age"]);
    assert_eq!(list["rows"][0]["cells"][1], "meridian");
    assert_eq!(list["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(
        list["rows"][0]["object"]["metadata"]["namespace"],
        "default"
    );
    let one = raw(
        &base,
        "GET",
        "/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways/t1",
        &accept,
        Vec::new(),
    )
    .await
    .json();
    assert_eq!(one["rows"].as_array().unwrap().len(), 1);
    let v1beta1 = raw(
        &base,
        "GET",
        "/apis/gateway.networking.k8s.io/v1beta1/gateways",
        &accept,
        Vec::new(),
    )
    .await
    .json();
    let cols: Vec<&str> = v1beta1["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, vec!["Name", "Class"], "columns are per version");
    let watched = raw(
        &base,
        "GET",
        "/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways?watch=true&timeoutSeconds=1",
        &accept,
        Vec::new(),
    )
    .await;
    assert_eq!(watched.status, 200);
    let lines: Vec<Value> = watched
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["type"], "ADDED");
    assert_eq!(lines[0]["object"]["kind"], "Table");
    assert_eq!(lines[0]["object"]["rows"][0]["cells"][0], "t1");
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_accepts_yaml_bodies_and_dry_run_changes_nothing() {
    let sb = start(&["c1"]).await;
    let base = sb.clusters()[0].url.clone();
    let yaml = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\n  labels:\n    app: web\ndata:\n  a: \"1\"\n".to_vec();
    let path = format!("{CMS}/applied?fieldManager=yaml-user");
    let r = raw(
        &base,
        "PATCH",
        &path,
        &[("content-type", "application/apply-patch+yaml")],
        yaml,
    )
    .await;
    assert_eq!(r.status, 201, "apply creates: {}", r.text());
    let obj = r.json();
    assert_eq!(obj["data"]["a"], "1");
    assert_eq!(obj["metadata"]["managedFields"][0]["manager"], "yaml-user");
    // Dropping a field from the applied config removes it.
    let yaml = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\ndata:\n  a: \"1\"\n"
        .to_vec();
    let r = raw(
        &base,
        "PATCH",
        &path,
        &[("content-type", "application/apply-patch+yaml")],
        yaml,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json()["metadata"]
            .get("labels")
            .and_then(|l| l.get("app"))
            .is_none(),
        "{}",
        r.text()
    );

    // dryRun=All answers as if written but stores nothing.
    let r = send_json(
        &base,
        "POST",
        &format!("{CMS}?dryRun=All"),
        "application/json",
        &cm("dry", None),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(get_json(&base, &format!("{CMS}/dry")).await.status, 404);
    let r = send_json(
        &base,
        "DELETE",
        &format!("{CMS}/applied?dryRun=All"),
        "application/json",
        &json!({}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(get_json(&base, &format!("{CMS}/applied")).await.status, 200);

    // deletecollection with a label selector.
    for (n, team) in [("d1", "a"), ("d2", "a"), ("d3", "b")] {
        let mut o = cm(n, None);
        o["metadata"]["labels"] = json!({"team": team});
        assert_eq!(
            send_json(&base, "POST", CMS, "application/json", &o)
                .await
                .status,
            201
        );
    }
    let r = raw(
        &base,
        "DELETE",
        &format!("{CMS}?labelSelector=team%3Da"),
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["items"].as_array().unwrap().len(), 2);
    let left = get_json(&base, &format!("{CMS}?labelSelector=team"))
        .await
        .json();
    assert_eq!(left["items"].as_array().unwrap().len(), 1);
    sb.shutdown().await;
}

/// Kubernetes protobuf bodies over HTTP: a ConfigMap as client-go encodes it is created and
/// answered in JSON; a truncated body is a 400 Status; a kind the sandbox does not decode from
/// protobuf (or a Pod-template part it has no table for) is a 415 Status naming it and saying
/// JSON works, storing nothing; the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_bodies_are_decoded_or_refused_with_a_status() {
    use k8s_pb::api::core::v1::ConfigMap;
    use k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
    use prost::Message;
    let envelope = |api_version: &str, kind: &str, raw: Vec<u8>| {
        let u = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: None,
            content_type: None,
        };
        let mut b = b"k8s\0".to_vec();
        b.extend(u.encode_to_vec());
        b
    };
    let proto = [("content-type", "application/vnd.kubernetes.protobuf")];
    let sb = start(&["c1"]).await;
    let base = sb.clusters()[0].url.clone();

    let cm = ConfigMap {
        metadata: Some(ObjectMeta {
            name: Some("pb".into()),
            ..Default::default()
        }),
        data: [("k".to_string(), "v".to_string())].into(),
        ..Default::default()
    };
    let body = envelope("v1", "ConfigMap", cm.encode_to_vec());
    let r = raw(&base, "POST", CMS, &proto, body.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(r.content_type.starts_with("application/json"));
    assert_eq!(r.json()["data"], json!({"k": "v"}));
    let stored = get_json(&base, &format!("{CMS}/pb")).await.json();
    assert_eq!(stored["metadata"]["namespace"], "default");

    let cut = body[..body.len() - 3].to_vec();
    let s = assert_status(
        &raw(&base, "POST", CMS, &proto, cut).await,
        400,
        "BadRequest",
    );
    assert!(s["message"].as_str().unwrap().contains("protobuf"), "{s}");

    let lease = envelope("coordination.k8s.io/v1", "Lease", vec![0x0a, 0x00]);
    let leases = "/apis/coordination.k8s.io/v1/namespaces/default/leases";
    let s = assert_status(
        &raw(&base, "POST", leases, &proto, lease).await,
        415,
        "UnsupportedMediaType",
    );
    let msg = s["message"].as_str().unwrap();
    assert!(
        msg.contains("Lease (coordination.k8s.io/v1)") && msg.contains("JSON"),
        "{msg}"
    );

    // A Deployment is decoded, but a Pod-template part without a conversion table (here a
    // volume) is refused as a whole: 415, nothing stored, nothing silently dropped.
    let deployment = k8s_pb::api::apps::v1::Deployment {
        metadata: Some(ObjectMeta {
            name: Some("with-volume".into()),
            ..Default::default()
        }),
        spec: Some(k8s_pb::api::apps::v1::DeploymentSpec {
            template: Some(k8s_pb::api::core::v1::PodTemplateSpec {
                metadata: None,
                spec: Some(k8s_pb::api::core::v1::PodSpec {
                    volumes: vec![k8s_pb::api::core::v1::Volume {
                        name: Some("config".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        status: None,
    };
    let deployments = "/apis/apps/v1/namespaces/default/deployments";
    let body = envelope("apps/v1", "Deployment", deployment.encode_to_vec());
    let s = assert_status(
        &raw(&base, "POST", deployments, &proto, body).await,
        415,
        "UnsupportedMediaType",
    );
    let msg = s["message"].as_str().unwrap();
    assert!(msg.contains("Volume") && msg.contains("JSON"), "{msg}");
    let left = get_json(&base, &format!("{deployments}/with-volume")).await;
    assert_eq!(left.status, 404, "{}", left.text());

    assert_eq!(get_json(&base, &format!("{CMS}/pb")).await.status, 200);
    sb.shutdown().await;
}
