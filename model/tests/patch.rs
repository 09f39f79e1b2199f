//! Property tests of snapshot patches: for random previous and next snapshots,
//! `apply(prev, diff(prev, next)) == next` (byte-equal once serialized, order and duplicates
//! included), an equal pair gives an empty patch, a patch survives its JSON round trip, a proxy's
//! Gateway-filtered view of the patch rebuilds the filtered next snapshot, and a patch that does
//! not fit leaves the snapshot untouched.
//!
//! Snapshots come from a small vocabulary (few names, so lists share, repeat and reorder items)
//! and, as seeds, from the fuzz corpus's valid snapshots. `next` is either an independent
//! snapshot or `prev` with a few edits (route put/changed/removed/moved, listener settings,
//! Gateways added/removed/reordered, drains, east-west), the case the controller publishes. An
//! edited `next` shares its untouched routes with `prev` (copy on write, as in the controller)
//! and comes with the Gateways the edits touched: the patch from that hint
//! ([`diff_since`]) must equal the full diff, which must equal the diff of unshared deep copies,
//! and [`unchanged`] must agree with the full comparison.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

mod common;
mod fuzz_support;

use meridian_model::GatewayRef;
use meridian_model::patch::{
    PatchError, Piece, SnapshotPatch, Touched, diff, diff_since, share_unchanged, unchanged,
};
use meridian_model::snapshot::*;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const REGRESSIONS: &str = "tests/patch.proptest-regressions";

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(String::from)
}

fn route() -> impl Strategy<Value = Route> {
    (
        name(),
        name(),
        0i64..3,
        prop::collection::vec(
            prop::sample::select(vec!["a.example.com", "*.example.com"]),
            0..2,
        ),
        prop::collection::vec((0u32..3, name(), 0u16..3), 0..3),
    )
        .prop_map(|(ns, n, created_at, hosts, rules)| Route {
            namespace: ns,
            name: n,
            kind: Default::default(),
            created_at,
            hostnames: hosts.into_iter().map(String::from).collect(),
            rules: rules
                .into_iter()
                .map(|(weight, backend, port)| {
                    let mut b = common::backend(&format!("ns/{backend}:80"), weight);
                    if let BackendTarget::Endpoints { endpoints, .. } = &mut b.target {
                        endpoints[0].port = 8080 + port;
                    }
                    Rule {
                        backends: vec![b],
                        ..Rule::default()
                    }
                })
                .collect(),
        })
}

fn listener() -> impl Strategy<Value = Listener> {
    (
        name(),
        80u16..83,
        prop::option::of(Just("a.example.com".to_string())),
        prop::collection::vec(route(), 0..6),
    )
        .prop_map(|(n, port, hostname, routes)| {
            let mut l = common::listener(&n, port);
            l.hostname = hostname;
            l.routes = routes.into_iter().map(Arc::new).collect();
            l
        })
}

fn gateway() -> impl Strategy<Value = Gateway> {
    (
        name(),
        name(),
        any::<bool>(),
        prop::collection::vec(listener(), 0..3),
    )
        .prop_map(|(ns, n, served_by_header, listeners)| Gateway {
            namespace: ns,
            name: n,
            listeners,
            served_by_header,
        })
}

fn drain() -> impl Strategy<Value = Drain> {
    name().prop_map(|c| Drain {
        drill: "ns/d".into(),
        cluster: Some(c),
        ..Drain::default()
    })
}

fn east_west() -> impl Strategy<Value = EastWestBackend> {
    name().prop_map(|n| EastWestBackend {
        name: n,
        protocol: BackendProtocol::Http1,
        endpoints: Vec::new(),
        failover: None,
    })
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    (
        0u64..100,
        prop::collection::vec(gateway(), 0..4),
        prop::collection::vec(drain(), 0..2),
        prop::collection::vec(east_west(), 0..2),
    )
        .prop_map(|(generation, gateways, drains, east_west)| Snapshot {
            schema: SNAPSHOT_SCHEMA.to_string(),
            generation,
            gateways,
            drains,
            east_west,
        })
}

/// One edit of a snapshot; indices are taken modulo the list they address.
#[derive(Clone, Debug)]
enum Edit {
    PutRoute(usize, usize, usize, Route),
    ChangeRoute(usize, usize, usize, u16),
    RemoveRoute(usize, usize, usize),
    MoveRoute(usize, usize, usize, usize),
    ListenerPort(usize, usize, u16),
    PutListener(usize, usize, Listener),
    RemoveListener(usize, usize),
    PutGateway(usize, Gateway),
    RemoveGateway(usize),
    SwapGateways(usize, usize),
    ServedBy(usize),
    Drains(Vec<Drain>),
    EastWest(Vec<EastWestBackend>),
    Schema,
}

fn edit() -> impl Strategy<Value = Edit> {
    let i = || 0usize..16;
    prop_oneof![
        4 => (i(), i(), i(), route()).prop_map(|(g, l, r, x)| Edit::PutRoute(g, l, r, x)),
        4 => (i(), i(), i(), 0u16..100).prop_map(|(g, l, r, p)| Edit::ChangeRoute(g, l, r, p)),
        3 => (i(), i(), i()).prop_map(|(g, l, r)| Edit::RemoveRoute(g, l, r)),
        2 => (i(), i(), i(), i()).prop_map(|(g, l, r, to)| Edit::MoveRoute(g, l, r, to)),
        1 => (i(), i(), 80u16..90).prop_map(|(g, l, p)| Edit::ListenerPort(g, l, p)),
        1 => (i(), i(), listener()).prop_map(|(g, l, x)| Edit::PutListener(g, l, x)),
        1 => (i(), i()).prop_map(|(g, l)| Edit::RemoveListener(g, l)),
        1 => (i(), gateway()).prop_map(|(g, x)| Edit::PutGateway(g, x)),
        1 => i().prop_map(Edit::RemoveGateway),
        1 => (i(), i()).prop_map(|(a, b)| Edit::SwapGateways(a, b)),
        1 => i().prop_map(Edit::ServedBy),
        1 => prop::collection::vec(drain(), 0..2).prop_map(Edit::Drains),
        1 => prop::collection::vec(east_west(), 0..2).prop_map(Edit::EastWest),
        1 => Just(Edit::Schema),
    ]
}

fn pick<T>(items: &mut [T], i: usize) -> Option<&mut T> {
    let n = items.len();
    (n > 0).then(|| &mut items[i % n])
}

/// The routes of listener `l` of Gateway `g`, noting the Gateway as touched.
fn routes_of<'s>(
    s: &'s mut Snapshot,
    g: usize,
    l: usize,
    touched: &mut Touched,
) -> Option<&'s mut Vec<Arc<Route>>> {
    let gw = pick(&mut s.gateways, g)?;
    touched.gateway(&gw.namespace, &gw.name);
    Some(&mut pick(&mut gw.listeners, l)?.routes)
}

/// Gateway `g`, noted as touched.
fn gateway_at<'s>(s: &'s mut Snapshot, g: usize, touched: &mut Touched) -> Option<&'s mut Gateway> {
    let gw = pick(&mut s.gateways, g)?;
    touched.gateway(&gw.namespace, &gw.name);
    Some(gw)
}

/// Applies one edit, noting the Gateways it touches (a producer's hint).
fn apply_edit(s: &mut Snapshot, e: Edit, touched: &mut Touched) {
    match e {
        Edit::PutRoute(g, l, r, x) => {
            if let Some(routes) = routes_of(s, g, l, touched) {
                let at = r % (routes.len() + 1);
                routes.insert(at, Arc::new(x));
            }
        }
        Edit::ChangeRoute(g, l, r, port) => {
            if let Some(route) = routes_of(s, g, l, touched).and_then(|rs| pick(rs, r)) {
                // Copy on write: the other snapshot keeps its route.
                Arc::make_mut(route).created_at += i64::from(port) + 1;
            }
        }
        Edit::RemoveRoute(g, l, r) => {
            if let Some(routes) = routes_of(s, g, l, touched)
                && !routes.is_empty()
            {
                let at = r % routes.len();
                routes.remove(at);
            }
        }
        Edit::MoveRoute(g, l, r, to) => {
            if let Some(routes) = routes_of(s, g, l, touched)
                && !routes.is_empty()
            {
                let x = routes.remove(r % routes.len());
                let at = to % (routes.len() + 1);
                routes.insert(at, x);
            }
        }
        Edit::ListenerPort(g, l, port) => {
            if let Some(gw) = gateway_at(s, g, touched)
                && let Some(li) = pick(&mut gw.listeners, l)
            {
                li.port = port;
            }
        }
        Edit::PutListener(g, l, x) => {
            if let Some(gw) = gateway_at(s, g, touched) {
                let at = l % (gw.listeners.len() + 1);
                gw.listeners.insert(at, x);
            }
        }
        Edit::RemoveListener(g, l) => {
            if let Some(gw) = gateway_at(s, g, touched)
                && !gw.listeners.is_empty()
            {
                let at = l % gw.listeners.len();
                gw.listeners.remove(at);
            }
        }
        Edit::PutGateway(g, x) => {
            let at = g % (s.gateways.len() + 1);
            touched.gateway(&x.namespace, &x.name);
            s.gateways.insert(at, x);
        }
        Edit::RemoveGateway(g) => {
            if !s.gateways.is_empty() {
                let at = g % s.gateways.len();
                let gone = s.gateways.remove(at);
                touched.gateway(&gone.namespace, &gone.name);
            }
        }
        Edit::SwapGateways(a, b) => {
            let n = s.gateways.len();
            if n > 0 {
                gateway_at(s, a, touched);
                gateway_at(s, b, touched);
                s.gateways.swap(a % n, b % n);
            }
        }
        Edit::ServedBy(g) => {
            if let Some(gw) = gateway_at(s, g, touched) {
                gw.served_by_header = !gw.served_by_header;
            }
        }
        Edit::Drains(d) => s.drains = d,
        Edit::EastWest(e) => s.east_west = e,
        Edit::Schema => s.schema.push_str("+x"),
    }
}

/// A previous snapshot and a next one: edited from it (mostly; with the Gateways the edits
/// touched) or independent (anything may differ).
fn hinted_pair() -> impl Strategy<Value = (Snapshot, Snapshot, Touched)> {
    prop_oneof![
        4 => (snapshot(), prop::collection::vec(edit(), 0..6), 0u64..3).prop_map(
            |(prev, edits, step)| {
                let mut next = prev.clone();
                let mut touched = Touched::nothing();
                next.generation += step;
                for e in edits {
                    apply_edit(&mut next, e, &mut touched);
                }
                (prev, next, touched)
            }
        ),
        1 => (snapshot(), snapshot()).prop_map(|(a, b)| (a, b, Touched::everything())),
    ]
}

fn pair() -> impl Strategy<Value = (Snapshot, Snapshot)> {
    hinted_pair().prop_map(|(a, b, _)| (a, b))
}

/// The same snapshot with no route shared with any other (every route a fresh allocation).
fn deep_copy(s: &Snapshot) -> Snapshot {
    let mut c = s.clone();
    for l in c.gateways.iter_mut().flat_map(|g| &mut g.listeners) {
        for r in &mut l.routes {
            *r = Arc::new(Route::clone(r));
        }
    }
    c
}

fn bytes(s: &Snapshot) -> String {
    serde_json::to_string(s).unwrap()
}

/// The properties every pair must have.
fn check_pair(prev: &Snapshot, next: &Snapshot) -> Result<(), TestCaseError> {
    let patch = diff(prev, next);
    prop_assert_eq!(
        patch.is_empty(prev.gateways.len()),
        {
            let mut p = prev.clone();
            p.generation = next.generation;
            p == *next
        },
        "empty exactly when only the generation differs"
    );
    // Through the wire: the decoded patch rebuilds next exactly.
    let text = serde_json::to_string(&patch).unwrap();
    let decoded: SnapshotPatch = serde_json::from_str(&text).unwrap();
    prop_assert_eq!(&decoded, &patch);
    let mut got = prev.clone();
    decoded.apply(&mut got).unwrap();
    prop_assert_eq!(bytes(&got), bytes(next));

    // A proxy serving only some Gateways: the filtered patch on the filtered base gives the
    // filtered next snapshot.
    for only in ["a", "b"] {
        let serves = |_: &str, name: &str| name == only;
        let filter = |s: &Snapshot| {
            let mut f = s.clone();
            f.gateways.retain(|g| serves(&g.namespace, &g.name));
            f
        };
        let keys: Vec<GatewayRef> = prev
            .gateways
            .iter()
            .map(|g| GatewayRef::new(&g.namespace, &g.name))
            .collect();
        let mut got = filter(prev);
        patch.for_gateways(&keys, serves).apply(&mut got).unwrap();
        prop_assert_eq!(bytes(&got), bytes(&filter(next)));
    }

    // The wrong base is refused and changes nothing.
    let mut other = prev.clone();
    other.generation = prev.generation.wrapping_add(1);
    let before = other.clone();
    let refused = matches!(
        patch.clone().apply(&mut other),
        Err(PatchError::Base { .. })
    );
    prop_assert!(refused, "a patch on the wrong base must be refused");
    prop_assert_eq!(&other, &before);
    Ok(())
}

#[test]
fn applying_the_diff_gives_the_next_snapshot() {
    fuzz_support::run(
        "patch",
        512,
        REGRESSIONS,
        hinted_pair(),
        |(prev, next, touched)| {
            check_pair(&prev, &next)?;
            // The producer's hint changes nothing but the cost, and sharing nothing but the cost.
            let full = diff(&prev, &next);
            prop_assert_eq!(&diff_since(&prev, &next, &touched), &full);
            prop_assert_eq!(&diff(&deep_copy(&prev), &deep_copy(&next)), &full);
            let mut renumbered = prev.clone();
            renumbered.generation = next.generation;
            prop_assert_eq!(unchanged(&prev, &next, &touched), renumbered == next);
            prop_assert_eq!(
                unchanged(&prev, &next, &touched),
                full.is_empty(prev.gateways.len())
            );
            // Sharing the equal routes back (as after a full translation: nothing shared,
            // anything may differ) gives a precise hint, the same content and the same patch.
            for (mut shared, hint) in [
                (next.clone(), touched.clone()),
                (deep_copy(&next), Touched::everything()),
            ] {
                let precise = share_unchanged(&prev, &mut shared, &hint);
                prop_assert_eq!(bytes(&shared), bytes(&next));
                prop_assert_eq!(&diff_since(&prev, &shared, &precise), &full);
                // Nothing only when nothing differs; and when nothing differs, nothing (as long
                // as the names say which Gateway is which: repeated names always differ).
                let unique = |s: &Snapshot| {
                    let names: std::collections::BTreeSet<_> =
                        s.gateways.iter().map(|g| (&g.namespace, &g.name)).collect();
                    names.len() == s.gateways.len()
                };
                if precise.is_nothing() {
                    prop_assert!(prev.gateways == next.gateways);
                } else if unique(&prev) && unique(&next) {
                    prop_assert!(prev.gateways != next.gateways, "{:?}", precise);
                }
                if !precise.is_everything() {
                    // What it does not name is shared: those Gateways' routes are the base's.
                    // (Gateways with a repeated name cannot be paired by name: left out.)
                    let named = |s: &'_ Snapshot, b: &Gateway| -> Vec<usize> {
                        (0..s.gateways.len())
                            .filter(|&i| {
                                s.gateways[i].namespace == b.namespace
                                    && s.gateways[i].name == b.name
                            })
                            .collect()
                    };
                    for b in &shared.gateways {
                        let (at, here) = (named(&prev, b), named(&shared, b));
                        if !precise.may_differ(&b.namespace, &b.name)
                            && at.len() == 1
                            && here.len() == 1
                        {
                            let a = &prev.gateways[at[0]];
                            for (x, y) in a.listeners.iter().zip(&b.listeners) {
                                prop_assert!(
                                    x.routes
                                        .iter()
                                        .zip(&y.routes)
                                        .all(|(p, q)| Arc::ptr_eq(p, q))
                                );
                            }
                        }
                    }
                }
            }
            // Equal contents: an empty patch, which leaves the snapshot as it was.
            let patch = diff(&prev, &prev);
            prop_assert!(patch.is_empty(prev.gateways.len()));
            let mut same = prev.clone();
            patch.apply(&mut same).unwrap();
            prop_assert_eq!(&same, &prev);
            Ok(())
        },
    );
}

/// Corrupting one piece of a valid patch: either it still applies (then the result is what the
/// pieces say, checked by the same rebuild) or it is refused and the snapshot is untouched.
#[test]
fn a_patch_that_does_not_fit_changes_nothing() {
    let strategy = (pair(), 0usize..64, 0usize..8);
    fuzz_support::run(
        "patch-misfit",
        256,
        REGRESSIONS,
        strategy,
        |((prev, next), at, by)| {
            let mut patch = diff(&prev, &next);
            let n = patch.gateways.len();
            let piece = if n == 0 {
                patch.gateways.push(Piece::Keep(at, by));
                0
            } else {
                at % n
            };
            // Point the piece past the end of the base, or at an item used twice.
            match &mut patch.gateways[piece] {
                Piece::Keep(from, _) => *from += prev.gateways.len() + 1 + by,
                Piece::Edit(e) => e.at += prev.gateways.len(),
                Piece::Put(_) => patch.gateways.push(Piece::Keep(0, prev.gateways.len() + 1)),
            }
            let mut got = prev.clone();
            let result = patch.apply(&mut got);
            prop_assert!(result.is_err(), "{result:?}");
            prop_assert_eq!(&got, &prev);
            Ok(())
        },
    );
}

/// The corpus's valid snapshots against each other and against edited copies of themselves.
#[test]
fn corpus_snapshots_diff_and_apply() {
    let mut seeds: Vec<Snapshot> =
        vec![serde_json::from_str(include_str!("../../examples/snapshot/basic.json")).unwrap()];
    for (name, text) in fuzz_support::corpus("snapshot") {
        if name.starts_with("valid-") {
            seeds.push(serde_json::from_str(&text).unwrap());
        }
    }
    assert!(seeds.len() > 2);
    for a in &seeds {
        for b in &seeds {
            check_pair(a, b).unwrap();
        }
        let mut edited = a.clone();
        for g in &mut edited.gateways {
            for l in &mut g.listeners {
                l.routes.reverse();
                if let Some(r) = l.routes.first_mut() {
                    Arc::make_mut(r).created_at += 1;
                }
            }
        }
        check_pair(a, &edited).unwrap();
        check_pair(&edited, a).unwrap();
    }
}

#[test]
fn one_changed_route_travels_alone() {
    let mut prev = common::snapshot(vec![common::gateway("ns", "gw")]);
    let mut l = common::listener("http", 80);
    for i in 0..100 {
        l.routes
            .push(common::route("ns", &format!("r{i:03}")).into());
    }
    prev.gateways[0].listeners.push(l);
    let mut next = prev.clone();
    next.generation = 2;
    Arc::make_mut(&mut next.gateways[0].listeners[0].routes[50]).created_at = 7;
    next.gateways[0].listeners[0]
        .routes
        .insert(10, common::route("ns", "new").into());
    // Old r089 (at 90 after the insertion).
    next.gateways[0].listeners[0].routes.remove(90);
    let patch = diff(&prev, &next);
    let text = serde_json::to_string(&patch).unwrap();
    assert_eq!(
        text.matches("\"put\"").count(),
        2,
        "the new and the changed route only: {text}"
    );
    for kept in [[0, 10], [10, 40], [51, 38], [90, 10]] {
        assert!(
            text.contains(&format!(r#"{{"keep":{kept:?}}}"#).replace(' ', "")),
            "{kept:?}: {text}"
        );
    }
    let mut got = prev.clone();
    patch.apply(&mut got).unwrap();
    assert_eq!(got, next);
}

#[test]
fn sharing_back_after_an_insertion_shares_every_other_route() {
    // A translation that copies every route (no pointer shared) and puts a new route in the
    // middle: every other route is pointed back at the base's allocation, and only the new one
    // is named as a difference.
    let mut prev = common::snapshot(vec![common::gateway("ns", "gw")]);
    let mut l = common::listener("http", 80);
    for i in 0..100 {
        l.routes
            .push(common::route("ns", &format!("r{i:03}")).into());
    }
    prev.gateways[0].listeners.push(l);
    let mut next = deep_copy(&prev);
    let routes = &mut next.gateways[0].listeners[0].routes;
    routes.insert(40, common::route("ns", "r039a").into());
    // And one changed far from it, and one removed: the middle between them is matched by name.
    Arc::make_mut(&mut routes[70]).created_at = 7;
    routes.remove(20);
    let expected = bytes(&next);
    let differ = share_unchanged(&prev, &mut next, &Touched::everything());
    assert_eq!(bytes(&next), expected, "content unchanged");
    assert!(differ.may_differ("ns", "gw"));
    let old = &prev.gateways[0].listeners[0].routes;
    let shared = next.gateways[0].listeners[0]
        .routes
        .iter()
        .filter(|r| old.iter().any(|o| Arc::ptr_eq(o, r)))
        .count();
    // 100 routes, one removed, one changed; the new one has no counterpart.
    assert_eq!(shared, 98);
    // Equal lists: nothing differs, and everything is shared.
    let mut again = deep_copy(&prev);
    assert!(share_unchanged(&prev, &mut again, &Touched::everything()).is_nothing());
    for (o, r) in old.iter().zip(&again.gateways[0].listeners[0].routes) {
        assert!(Arc::ptr_eq(o, r));
    }
}
