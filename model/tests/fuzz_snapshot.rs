//! Fuzz target: the snapshot decoder and compiler, the proxy's first contact with a snapshot.
//!
//! Inputs are (1) the corpus in `tests/corpus/snapshot/` replayed as text through
//! [`meridian_model::load`], (2) arbitrary JSON documents built from the snapshot's own field
//! names, so the decoder gets past the first object, and (3) valid snapshots (the example and the
//! corpus) with one to four mutations each: a node replaced by a value of the wrong type, a huge or
//! negative number, an odd string or deep nesting, an array element duplicated (duplicate names),
//! a key dropped.
//!
//! Properties, whatever the input: nothing panics; a document that decodes is either refused by
//! validation or compiles, and `validate` alone refuses exactly what `Router::compile` refuses; a
//! snapshot that compiles survives a JSON round trip unchanged and its router answers `route()` for
//! requests aimed at its own sockets and hostnames as well as arbitrary ones. Corpus files named
//! `valid-*` must compile and `invalid-*` must be refused with an error.

#![allow(clippy::unwrap_used)]

mod fuzz_support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use meridian_model::router::Decision;
use meridian_model::snapshot::Snapshot;
use meridian_model::validate::validate;
use meridian_model::{Request, Router};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Map, Value, json};

const REGRESSIONS: &str = "tests/fuzz_snapshot.proptest-regressions";

/// Field names and enum tags of the snapshot format: generated objects use them as keys and
/// strings, so decoding goes deeper than the first `deny_unknown_fields`.
const WORDS: &[&str] = &[
    "schema",
    "generation",
    "gateways",
    "namespace",
    "name",
    "listeners",
    "address",
    "port",
    "protocol",
    "hostname",
    "tls",
    "routes",
    "rules",
    "matches",
    "path",
    "type",
    "value",
    "headers",
    "queryParams",
    "method",
    "filters",
    "backends",
    "weight",
    "target",
    "endpoints",
    "timeouts",
    "retry",
    "attempts",
    "codes",
    "requestMs",
    "hostnames",
    "createdAt",
    "drains",
    "drill",
    "cluster",
    "region",
    "zone",
    "eastWest",
    "east_west",
    "failover",
    "percent",
    "statusCode",
    "scheme",
    "set",
    "add",
    "remove",
    "certificates",
    "certPem",
    "keyPem",
    "HTTP",
    "HTTPS",
    "exact",
    "pathPrefix",
    "regularExpression",
    "endpoints",
    "invalid",
    "reason",
    "requestHeaderModifier",
    "requestRedirect",
    "urlRewrite",
    "requestMirror",
    "replaceFullPath",
    "replacePrefixMatch",
    "backend",
    "ready",
    "h2c",
    "http1",
    "meridian.dev/snapshot/v1",
    "servedByHeader",
    "regionOrder",
    "minHealthyPercent",
];

/// Strings that have broken parsers before, somewhere.
const ODD_STRINGS: &[&str] = &[
    "",
    " ",
    "*",
    "*.",
    "*.*",
    ".",
    "..",
    "/",
    "//",
    "/..",
    "/%2e%2e/",
    "%",
    "%zz",
    "%00",
    "(",
    ")",
    "[",
    "a{2,}",
    "\\",
    "\u{0}",
    "\r\n",
    "x\ry",
    "é",
    "ÅÅ.example.com",
    "::",
    "[::1]",
    "0.0.0.0",
    "255.255.255.255",
    "1.2.3.4:80",
    "-a.example.com",
    "a..b",
    "A.EXAMPLE.COM",
    "*.example.com",
    "example.com.",
    "GET",
    "get",
    "X-Header",
    "x header",
    "x:y",
];

const BIG_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "1e308",
    "-1e308",
    "0.5",
    "100.0",
    "100.000001",
    "-0.0",
    "1e-320",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(WORDS).prop_map(str::to_string),
        1 => proptest::sample::select(ODD_STRINGS).prop_map(str::to_string),
        1 => "\\PC{0,12}",
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        proptest::sample::select(BIG_NUMBERS)
            .prop_map(|n| serde_json::from_str(n).unwrap_or(Value::Null)),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u16..=u16::MAX).prop_map(Value::from),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        word().prop_map(Value::String),
    ]
}

/// Arbitrary JSON, at most 6 levels and a few hundred nodes.
fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(6, 256, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((word(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

/// An arbitrary document that at least looks like a snapshot at the top.
fn snapshot_like() -> impl Strategy<Value = Value> {
    (
        prop_oneof![Just(json!("meridian.dev/snapshot/v1")), leaf()],
        prop_oneof![number(), leaf()],
        prop::collection::vec(json_value(), 0..3),
        json_value(),
    )
        .prop_map(|(schema, generation, gateways, extra)| {
            let mut doc = json!({"schema": schema, "generation": generation, "gateways": gateways});
            if let (Value::Object(extra), Some(doc)) = (extra, doc.as_object_mut()) {
                for (k, v) in extra.into_iter().take(2) {
                    doc.insert(k, v);
                }
            }
            doc
        })
}

/// One change to a document; `at` picks the node (modulo the node count).
#[derive(Clone, Debug)]
enum Mutation {
    Replace {
        at: usize,
        with: Value,
    },
    /// Replace a string by an odd string or a number by an extreme one (the type stays, so the
    /// document still decodes more often than not and the change reaches validation).
    SameType {
        at: usize,
        text: String,
        number: Value,
    },
    /// Nest the node in `depth` arrays.
    Nest {
        at: usize,
        depth: usize,
    },
    /// Duplicate an element of the array at or above the node.
    Duplicate {
        at: usize,
    },
    /// Drop a key of the object at or above the node.
    DropKey {
        at: usize,
        key: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => (any::<usize>(), word(), number())
            .prop_map(|(at, text, number)| Mutation::SameType { at, text, number }),
        2 => (any::<usize>(), leaf()).prop_map(|(at, with)| Mutation::Replace { at, with }),
        1 => (any::<usize>(), json_value()).prop_map(|(at, with)| Mutation::Replace { at, with }),
        1 => (any::<usize>(), 1usize..64).prop_map(|(at, depth)| Mutation::Nest { at, depth }),
        2 => any::<usize>().prop_map(|at| Mutation::Duplicate { at }),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(at, key)| Mutation::DropKey { at, key }),
    ]
}

/// Every node of `doc`, depth first, as JSON pointers.
fn pointers(doc: &Value) -> Vec<String> {
    fn walk(v: &Value, at: String, out: &mut Vec<String>) {
        out.push(at.clone());
        match v {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, format!("{at}/{i}"), out);
                }
            }
            Value::Object(map) => {
                for (k, item) in map {
                    let k = k.replace('~', "~0").replace('/', "~1");
                    walk(item, format!("{at}/{k}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(doc, String::new(), &mut out);
    out
}

fn apply(doc: &mut Value, m: &Mutation) {
    let ptrs = pointers(doc);
    let pick = |at: usize| ptrs[at % ptrs.len()].clone();
    match m {
        Mutation::Replace { at, with } => {
            if let Some(node) = doc.pointer_mut(&pick(*at)) {
                *node = with.clone();
            }
        }
        Mutation::SameType { at, text, number } => match doc.pointer_mut(&pick(*at)) {
            Some(node @ Value::String(_)) => *node = Value::String(text.clone()),
            Some(node @ Value::Number(_)) => *node = number.clone(),
            _ => {}
        },
        Mutation::Nest { at, depth } => {
            if let Some(node) = doc.pointer_mut(&pick(*at)) {
                let mut v = node.take();
                for _ in 0..*depth {
                    v = Value::Array(vec![v]);
                }
                *node = v;
            }
        }
        Mutation::Duplicate { at } => {
            let mut p = pick(*at);
            loop {
                if let Some(Value::Array(items)) = doc.pointer_mut(&p)
                    && let Some(first) = items.first().cloned()
                {
                    items.push(first);
                    return;
                }
                match p.rfind('/') {
                    Some(i) => p.truncate(i),
                    None => return,
                }
            }
        }
        Mutation::DropKey { at, key } => {
            let mut p = pick(*at);
            loop {
                if let Some(Value::Object(map)) = doc.pointer_mut(&p)
                    && !map.is_empty()
                {
                    let k = map.keys().nth(key % map.len()).cloned().unwrap_or_default();
                    map.remove(&k);
                    return;
                }
                match p.rfind('/') {
                    Some(i) => p.truncate(i),
                    None => return,
                }
            }
        }
    }
}

/// Valid snapshots to mutate: the example and the corpus's `valid-*` files.
fn seeds() -> Vec<Value> {
    let mut seeds = vec![
        serde_json::from_str::<Value>(include_str!("../../examples/snapshot/basic.json")).unwrap(),
    ];
    for (name, text) in fuzz_support::corpus("snapshot") {
        if name.starts_with("valid-") {
            seeds.push(serde_json::from_str(&text).unwrap());
        }
    }
    seeds
}

/// What a compiled router must survive: requests to each of its sockets with each hostname it
/// knows (in odd spellings) and a few paths, plus arbitrary ones.
fn route_everything(router: &Router, extra: &[ArbitraryRequest]) {
    let snapshot = router.snapshot().clone();
    let mut sockets: Vec<SocketAddr> = router.sockets().map(|(a, _)| a).collect();
    sockets.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 80));
    let mut hosts: Vec<String> = vec![String::new(), "x.example.com".to_string()];
    for gw in &snapshot.gateways {
        for l in &gw.listeners {
            hosts.extend(l.hostname.clone());
            for r in &l.routes {
                hosts.extend(r.hostnames.iter().cloned());
            }
        }
    }
    let spelled: Vec<String> = hosts
        .iter()
        .flat_map(|h| {
            let concrete = h.replace('*', "any");
            [
                concrete.clone(),
                concrete.to_ascii_uppercase(),
                format!("{concrete}:8080"),
                format!("{concrete}."),
            ]
        })
        .collect();
    let headers: [(&str, &str); 2] = [("x-canary", "true"), ("X-Canary", "false")];
    for local in &sockets {
        for host in &spelled {
            for path in ["/", "/api", "/api/v1/", "/old-shop", "*", ""] {
                for sni in [None, Some(host.as_str())] {
                    let req = Request {
                        local: *local,
                        sni,
                        host: Some(host),
                        method: "GET",
                        path,
                        query: Some("a=1&b"),
                        headers: &&headers[..],
                    };
                    check_decision(router, &router.route(&req));
                }
            }
        }
        for r in extra {
            let headers: Vec<(&str, &str)> = r
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let req = Request {
                local: *local,
                sni: r.sni.as_deref(),
                host: r.host.as_deref(),
                method: &r.method,
                path: &r.path,
                query: r.query.as_deref(),
                headers: &&headers[..],
            };
            check_decision(router, &router.route(&req));
        }
    }
}

/// A matched rule must be one of the router's own, with a backend choice that does not panic.
fn check_decision(router: &Router, d: &Decision) {
    if let Decision::Matched(m) = d {
        let _ = m.rule.pick_backend(u64::MAX);
        let _ = m.rule.redirect();
        assert!(
            router
                .snapshot()
                .gateways
                .iter()
                .any(|g| g.namespace == m.listener.gateway_namespace
                    && g.name == m.listener.gateway_name),
            "matched listener of an unknown Gateway"
        );
    }
}

#[derive(Clone, Debug)]
struct ArbitraryRequest {
    sni: Option<String>,
    host: Option<String>,
    method: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
}

fn arbitrary_request() -> impl Strategy<Value = ArbitraryRequest> {
    (
        proptest::option::of(word()),
        proptest::option::of(word()),
        word(),
        prop_oneof![word(), "/[a-z/%.]{0,16}"],
        proptest::option::of("[a-z=&%0-9]{0,12}"),
        prop::collection::vec((word(), word()), 0..4),
    )
        .prop_map(
            |(sni, host, method, path, query, headers)| ArbitraryRequest {
                sni,
                host,
                method,
                path,
                query,
                headers,
            },
        )
}

/// How far a document got: counted per target so the summary shows the inputs reached the
/// compiler and the router, not only the decoder.
#[derive(Default)]
struct Reached {
    decoded: AtomicU64,
    compiled: AtomicU64,
}

impl Reached {
    fn print(&self, target: &str) {
        println!(
            "fuzz {target}: {} decoded, {} compiled and routed",
            self.decoded.load(Ordering::Relaxed),
            self.compiled.load(Ordering::Relaxed)
        );
    }
}

/// The checks every decoded document goes through.
fn check_document(
    doc: &Value,
    requests: &[ArbitraryRequest],
    reached: &Reached,
) -> Result<(), TestCaseError> {
    let text = doc.to_string();
    let loaded = meridian_model::load(&text);
    let Ok(snapshot) = serde_json::from_value::<Snapshot>(doc.clone()) else {
        prop_assert!(loaded.is_err(), "text decoded where the value did not");
        return Ok(());
    };
    reached.decoded.fetch_add(1, Ordering::Relaxed);
    let validated = validate(&snapshot);
    match Router::compile(snapshot.clone()) {
        Err(e) => {
            prop_assert!(loaded.is_err());
            prop_assert!(
                validated.is_err(),
                "validate accepted what compile refused: {e}"
            );
            prop_assert!(!e.to_string().is_empty());
        }
        Ok(router) => {
            prop_assert!(validated.is_ok());
            prop_assert!(loaded.is_ok());
            let again: Snapshot = serde_json::from_str(&serde_json::to_string(&snapshot).unwrap())
                .map_err(|e| TestCaseError::fail(format!("round trip does not decode: {e}")))?;
            prop_assert_eq!(&again, &snapshot, "JSON round trip changed the snapshot");
            route_everything(&router, requests);
            reached.compiled.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

#[test]
fn corpus_replays() {
    let files = fuzz_support::corpus("snapshot");
    let mut bytes = 0;
    for (name, text) in &files {
        bytes += text.len();
        let loaded = meridian_model::load(text);
        if name.starts_with("valid-") {
            let router = loaded.unwrap_or_else(|e| panic!("{name} is refused: {e}"));
            route_everything(&router, &[]);
        } else if name.starts_with("invalid-") {
            let e = loaded.err().unwrap_or_else(|| panic!("{name} is accepted"));
            assert!(!e.to_string().is_empty(), "{name}: empty error");
        }
        if let Ok(doc) = serde_json::from_str::<Value>(text) {
            check_document(&doc, &[], &Reached::default())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
    fuzz_support::corpus_summary("snapshot", files.len(), bytes);
}

#[test]
fn arbitrary_documents_never_panic() {
    let reached = Reached::default();
    fuzz_support::run(
        "snapshot/arbitrary",
        2_000,
        REGRESSIONS,
        (
            snapshot_like(),
            prop::collection::vec(arbitrary_request(), 0..3),
        ),
        |(doc, requests)| check_document(&doc, &requests, &reached),
    );
    reached.print("snapshot/arbitrary");
}

#[test]
fn mutated_snapshots_never_panic() {
    let seeds = seeds();
    let n = seeds.len();
    let reached = Reached::default();
    fuzz_support::run(
        "snapshot/mutated",
        2_000,
        REGRESSIONS,
        (
            0..n,
            prop::collection::vec(mutation(), 1..5),
            prop::collection::vec(arbitrary_request(), 0..3),
        ),
        |(seed, mutations, requests)| {
            let mut doc = seeds[seed].clone();
            for m in &mutations {
                apply(&mut doc, m);
            }
            check_document(&doc, &requests, &reached)
        },
    );
    reached.print("snapshot/mutated");
}

/// Raw text, not only JSON values: truncations and byte flips of a valid document.
#[test]
fn mangled_text_never_panics() {
    let text = include_str!("../../examples/snapshot/basic.json");
    fuzz_support::run(
        "snapshot/text",
        2_000,
        REGRESSIONS,
        (0..text.len(), any::<u8>(), 0..text.len()),
        |(cut, byte, at)| {
            let mut bytes = text.as_bytes()[..cut.max(1)].to_vec();
            if at < bytes.len() {
                bytes[at] = byte;
            }
            let mangled = String::from_utf8_lossy(&bytes);
            if let Ok(router) = meridian_model::load(&mangled) {
                route_everything(&router, &[]);
            }
            Ok(())
        },
    );
}
