//! Fuzz target: the request edge helpers the proxy runs before and around routing, on arbitrary
//! bytes.
//!
//! - Path normalisation ([`normalize_path`], [`normalize_target`]) with every setting: never
//!   panics; a path it accepts comes out absolute, ASCII, free of dot segments, stable under a
//!   second pass, and the query is carried over untouched.
//! - Host normalisation ([`normalize_host`]): never panics, result lower case, letter case and a
//!   port of the input do not matter.
//! - Query decoding ([`percent_decode`]): never panics, and decoding an escaped string gives the
//!   string back.
//! - Header filters: a `RequestHeaderModifier` that snapshot validation accepts only holds names
//!   and values the proxy's header types (the `http` crate) accept, so the proxy never has to
//!   drop an edit the controller promised; applying it gives `set` values back.
//! - Header reads ([`HeaderSource`] over a slice): case-insensitive, repeated headers joined
//!   with `,`.

#![allow(clippy::unwrap_used)]

mod fuzz_support;

use std::collections::BTreeMap;

use meridian_model::filters::{HeaderEdit, apply_header_modifier};
use meridian_model::hostname::normalize_host;
use meridian_model::path::{EscapedSlashes, PathNormalization, normalize_path, normalize_target};
use meridian_model::router::{HeaderSource, percent_decode};
use meridian_model::snapshot::*;
use meridian_model::validate::validate;
use proptest::prelude::*;
use proptest::sample::select;

const REGRESSIONS: &str = "tests/fuzz_edge.proptest-regressions";

/// Bytes as a proxy may see them after lossy UTF-8 decoding, biased towards the characters
/// path and header code treats specially.
fn edgy_text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(
            prop_oneof![
                select(&[
                    "/", ".", "..", "%", "%2e", "%2E", "%2f", "%5C", "\\", "?", "#", "%00", "%zz",
                    "%4", "a", "Z", "~", " ", "\t", "\r", "\n", "\u{0}", "\u{7f}", "é", ":", ";",
                    "=", ",", "\"",
                ][..])
                .prop_map(str::to_string),
                "[a-z]{1,3}",
            ],
            0..max,
        )
        .prop_map(|parts| parts.concat()),
        1 => prop::collection::vec(any::<u8>(), 0..max)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

fn settings() -> impl Strategy<Value = PathNormalization> {
    (
        any::<bool>(),
        select(
            &[
                EscapedSlashes::Keep,
                EscapedSlashes::Reject,
                EscapedSlashes::Decode,
            ][..],
        ),
    )
        .prop_map(|(merge_slashes, escaped_slashes)| PathNormalization {
            merge_slashes,
            escaped_slashes,
        })
}

#[test]
fn path_normalisation() {
    fuzz_support::run(
        "edge/path",
        3_000,
        REGRESSIONS,
        (
            prop_oneof![edgy_text(24), edgy_text(24).prop_map(|t| format!("/{t}"))],
            settings(),
        ),
        |(target, cfg)| {
            let (path, query) = target.split_at(target.find('?').unwrap_or(target.len()));
            match normalize_target(&target, &cfg) {
                Err(e) => {
                    prop_assert!(!e.to_string().is_empty());
                    prop_assert!(normalize_path(path, &cfg).is_err());
                }
                Ok(normal) => {
                    prop_assert!(normal.ends_with(query), "query changed: {normal:?}");
                    let p = &normal[..normal.len() - query.len()];
                    let direct = normalize_path(path, &cfg);
                    prop_assert_eq!(direct.as_deref().ok(), Some(p));
                    if p != "*" {
                        prop_assert!(p.starts_with('/'), "not absolute: {p:?}");
                        prop_assert!(p.is_ascii(), "not ASCII: {p:?}");
                        prop_assert!(
                            !p.split('/').any(|s| s == "." || s == ".."),
                            "dot segment left in {p:?}"
                        );
                        prop_assert!(!p.contains(['\\', ' ', '\r', '\n', '\0']), "{p:?}");
                        if cfg.merge_slashes {
                            prop_assert!(!p.contains("//"), "{p:?}");
                        }
                    }
                    let twice = normalize_path(p, &cfg);
                    prop_assert_eq!(twice.as_deref().ok(), Some(p), "not stable: {:?}", p);
                }
            }
            Ok(())
        },
    );
}

#[test]
fn host_normalisation() {
    fuzz_support::run(
        "edge/host",
        3_000,
        REGRESSIONS,
        (edgy_text(16), proptest::option::of(any::<u16>())),
        |(host, port)| {
            let normal = normalize_host(&host);
            prop_assert_eq!(&normal, &normal.to_ascii_lowercase());
            let upper = host.to_ascii_uppercase();
            prop_assert_eq!(&normal, &normalize_host(&upper));
            // A port only comes off a name that does not already end in `:<digits>` or `]`.
            if let Some(port) = port
                && !host.contains([':', '[', ']'])
                && !host.trim().is_empty()
                && host.trim() == host
            {
                let with_port = format!("{host}:{port}");
                prop_assert_eq!(&normal, &normalize_host(&with_port));
            }
            Ok(())
        },
    );
}

#[test]
fn query_decoding() {
    fuzz_support::run("edge/query", 3_000, REGRESSIONS, edgy_text(24), |text| {
        let _ = percent_decode(&text);
        let escaped: String = text.bytes().map(|b| format!("%{b:02x}")).collect();
        let decoded = percent_decode(&escaped);
        prop_assert_eq!(decoded.as_ref(), text.as_str());
        if !text.contains('%') {
            let plain = percent_decode(&text);
            prop_assert_eq!(plain.as_ref(), text.as_str());
        }
        Ok(())
    });
}

/// Headers as a sorted multimap, the way the proxy's map behaves for filters.
#[derive(Default)]
struct Map(BTreeMap<String, String>);

impl HeaderEdit for Map {
    fn get(&self, name: &str) -> Option<String> {
        self.0.get(&name.to_ascii_lowercase()).cloned()
    }
    fn set(&mut self, name: &str, value: &str) {
        self.0.insert(name.to_ascii_lowercase(), value.to_string());
    }
    fn remove(&mut self, name: &str) {
        self.0.remove(&name.to_ascii_lowercase());
    }
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        select(
            &[
                "x-a",
                "X-A",
                "x-b",
                "content-type",
                "x_y",
                "a!#$%&'*+-.^_`|~z"
            ][..]
        )
        .prop_map(str::to_string),
        edgy_text(6),
    ]
}

fn modifier() -> impl Strategy<Value = HeaderModifier> {
    let pair =
        || (header_name(), edgy_text(8)).prop_map(|(name, value)| HeaderValue { name, value });
    (
        prop::collection::vec(pair(), 0..3),
        prop::collection::vec(pair(), 0..3),
        prop::collection::vec(header_name(), 0..2),
    )
        .prop_map(|(set, add, remove)| HeaderModifier { set, add, remove })
}

fn with_filter(f: Filter) -> Snapshot {
    let rule = Rule {
        filters: vec![f],
        ..Rule::default()
    };
    Snapshot {
        gateways: vec![Gateway {
            namespace: "ns".to_string(),
            name: "gw".to_string(),
            listeners: vec![Listener {
                name: "http".to_string(),
                address: "10.0.0.1".parse().unwrap(),
                port: 80,
                protocol: Protocol::Http,
                hostname: None,
                tls: None,
                routes: vec![
                    Route {
                        namespace: "ns".to_string(),
                        name: "r".to_string(),
                        kind: Default::default(),
                        created_at: 0,
                        hostnames: Vec::new(),
                        rules: vec![rule],
                    }
                    .into(),
                ],
            }],
            served_by_header: false,
        }],
        ..Snapshot::empty(1)
    }
}

#[test]
fn header_filters() {
    fuzz_support::run(
        "edge/header-filters",
        3_000,
        REGRESSIONS,
        (modifier(), any::<bool>()),
        |(m, response)| {
            let filter = if response {
                Filter::ResponseHeaderModifier(m.clone())
            } else {
                Filter::RequestHeaderModifier(m.clone())
            };
            if validate(&with_filter(filter)).is_err() {
                return Ok(());
            }
            for hv in m.set.iter().chain(&m.add) {
                prop_assert!(
                    http::HeaderName::from_bytes(hv.name.as_bytes()).is_ok(),
                    "validation accepted header name {:?} the proxy cannot use",
                    hv.name
                );
                prop_assert!(
                    http::HeaderValue::from_str(&hv.value).is_ok(),
                    "validation accepted header value {:?} the proxy cannot use",
                    hv.value
                );
            }
            for n in &m.remove {
                prop_assert!(http::HeaderName::from_bytes(n.as_bytes()).is_ok(), "{n:?}");
            }
            let mut headers = Map::default();
            apply_header_modifier(&m, &mut headers);
            let removed = |n: &str| m.remove.iter().any(|r| r.eq_ignore_ascii_case(n));
            if let Some(last) = m.set.last()
                && !removed(&last.name)
                && !m
                    .add
                    .iter()
                    .any(|a| a.name.eq_ignore_ascii_case(&last.name))
            {
                prop_assert_eq!(headers.get(&last.name), Some(last.value.clone()));
            }
            for r in &m.remove {
                prop_assert_eq!(headers.get(r), None);
            }
            Ok(())
        },
    );
}

#[test]
fn header_reads() {
    fuzz_support::run(
        "edge/header-reads",
        3_000,
        REGRESSIONS,
        (
            prop::collection::vec((header_name(), edgy_text(6)), 0..5),
            header_name(),
        ),
        |(pairs, name)| {
            let slice: Vec<(&str, &str)> = pairs
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let lower = name.to_ascii_lowercase();
            let expected: Vec<&str> = pairs
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(&lower))
                .map(|(_, v)| v.as_str())
                .collect();
            let got = slice[..].header(&lower).map(|c| c.into_owned());
            if expected.is_empty() {
                prop_assert_eq!(got, None);
            } else {
                prop_assert_eq!(got, Some(expected.join(",")));
            }
            Ok(())
        },
    );
}
