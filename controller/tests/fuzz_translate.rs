//! Fuzz target: translation of arbitrary Gateway API objects into snapshots and status.
//!
//! Objects are generated as JSON (the form the API server hands the controller; the generators
//! live in `translate_worlds`, shared with `incremental_translate`) from vocabularies of the fields the translator reads: Gateways (listeners with ports, protocols,
//! hostnames, TLS references and allowedRoutes), HTTPRoutes (parentRefs, hostnames, matches,
//! every filter type, backendRefs with kinds, ports and weights, timeouts), ReferenceGrants,
//! Services (ports, appProtocol, ExternalName) and EndpointSlices (address types, odd addresses
//! and ports), plus TLS Secrets. Values mix valid ones with what the CRDs' CEL rules or the API
//! server would refuse, since the controller must cope with both (an older CRD, another
//! writer). Documents the typed objects cannot hold are dropped, as the watch would drop them.
//!
//! Properties: translation never panics; every snapshot it emits compiles with the proxy's
//! router (the controller never sends a snapshot the proxy refuses); translating the same world
//! twice gives the same output; every HTTPRoute naming one of our Gateways gets a status entry of
//! ours for that parent with `Accepted` and `ResolvedRefs` conditions stamped with the route's
//! generation. `tests/corpus/translate/*.json` (worlds that once broke one of these) replays
//! first. The seed is fixed and `PROPTEST_CASES` lengthens the run (docs/fuzzing.md).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod translate_worlds;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use meridian_controller::{CONTROLLER_NAME, StatusKind, World, translate};
use meridian_model::Router;
use proptest::prelude::*;
use proptest::test_runner::{
    Config, FileFailurePersistence, RngSeed, TestCaseError, TestError, TestRunner,
};
use serde_json::Value;

use translate_worlds::*;

const REGRESSIONS: &str = "tests/fuzz_translate.proptest-regressions";

/// What the fuzz runs add up to.
#[derive(Default)]
struct Reached {
    routes: AtomicU64,
    parents: AtomicU64,
    rules_served: AtomicU64,
}

fn check(objects: &Objects, reached: &Reached) -> Result<(), TestCaseError> {
    let w = world_of(objects);
    let cfg = config_of(&w);
    let out = translate(&w, &cfg);
    for (cluster, snapshot) in &out.snapshots {
        if let Err(e) = Router::compile(snapshot.clone()) {
            return Err(TestCaseError::fail(format!(
                "the snapshot of {cluster} is refused by the proxy: {e}"
            )));
        }
        let rules: usize = snapshot
            .gateways
            .iter()
            .flat_map(|g| &g.listeners)
            .flat_map(|l| &l.routes)
            .map(|r| r.rules.len())
            .sum();
        reached
            .rules_served
            .fetch_add(rules as u64, Ordering::Relaxed);
    }
    prop_assert_eq!(
        &translate(&w, &cfg),
        &out,
        "translation is not deterministic"
    );

    let state = &w.clusters[CLUSTER];
    let ours: BTreeSet<(String, String)> = state
        .gateways()
        .filter(|(_, g)| g.spec.gateway_class_name == CLASS)
        .map(|(k, _)| (k.namespace.clone(), k.name.clone()))
        .collect();
    for (key, route) in state.http_routes() {
        reached.routes.fetch_add(1, Ordering::Relaxed);
        let generation = route.metadata.generation.unwrap_or(0);
        let wanted: BTreeSet<(String, String)> = route
            .spec
            .parent_refs
            .iter()
            .flatten()
            .filter(|p| p.kind.as_deref().unwrap_or("Gateway") == "Gateway")
            .map(|p| {
                (
                    p.namespace.clone().unwrap_or_else(|| key.namespace.clone()),
                    p.name.clone(),
                )
            })
            .filter(|gw| ours.contains(gw))
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let update = out.status.iter().find(|u| {
            u.kind == StatusKind::HttpRoute
                && u.namespace.as_deref() == Some(&key.namespace)
                && u.name == key.name
        });
        let Some(update) = update else {
            return Err(TestCaseError::fail(format!(
                "route {}/{} names our Gateways {wanted:?} but got no status",
                key.namespace, key.name
            )));
        };
        let parents = update.route_parents_of(CONTROLLER_NAME);
        for (ns, name) in &wanted {
            let entry = parents.iter().find(|p| {
                p.parent_ref.name == *name
                    && p.parent_ref
                        .namespace
                        .clone()
                        .unwrap_or_else(|| key.namespace.clone())
                        == *ns
            });
            let Some(entry) = entry else {
                return Err(TestCaseError::fail(format!(
                    "route {}/{}: no status entry of ours for parent {ns}/{name}",
                    key.namespace, key.name
                )));
            };
            reached.parents.fetch_add(1, Ordering::Relaxed);
            for wanted_type in ["Accepted", "ResolvedRefs"] {
                let c = entry.conditions.iter().find(|c| c.type_ == wanted_type);
                let Some(c) = c else {
                    return Err(TestCaseError::fail(format!(
                        "route {}/{} parent {ns}/{name}: no {wanted_type} condition",
                        key.namespace, key.name
                    )));
                };
                prop_assert_eq!(c.observed_generation, Some(generation));
                prop_assert!(!c.reason.is_empty());
                prop_assert!(c.status == "True" || c.status == "False", "{:?}", c.status);
            }
        }
    }
    Ok(())
}

/// Fixed seed and case count unless `PROPTEST_CASES` / `PROPTEST_RNG_SEED` are set; the same
/// harness as the model's fuzz targets (model/tests/fuzz_support).
fn runner(cases: u32) -> TestRunner {
    let defaults = Config::default();
    TestRunner::new(Config {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            defaults.cases
        } else {
            cases
        },
        rng_seed: if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
            defaults.rng_seed
        } else {
            RngSeed::Fixed(0x6d65_7269_6469_616e)
        },
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        ..defaults
    })
}

#[test]
fn corpus_replays() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/translate");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    let mut bytes = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        bytes += text.len();
        let objects: Vec<Value> = serde_json::from_str(&text).unwrap();
        // A corpus object the types cannot hold would silently test nothing.
        let mut scratch = World::new();
        let c = scratch.add_cluster(CLUSTER, "us-east", Vec::new());
        for v in &objects {
            assert!(apply(c, v), "{}: does not decode: {v}", f.display());
        }
        check(&Objects(objects), &Reached::default())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
    println!(
        "fuzz translate: corpus replayed, {} files, {bytes} bytes",
        files.len()
    );
}

#[test]
fn arbitrary_objects_translate() {
    let reached = Reached::default();
    let executions = AtomicU64::new(0);
    let started = Instant::now();
    let mut runner = runner(1_000);
    let (cases, seed) = (runner.config().cases, runner.config().rng_seed);
    let result = runner.run(&objects(), |objects| {
        executions.fetch_add(1, Ordering::Relaxed);
        check(&objects, &reached)
    });
    println!(
        "fuzz translate: {} executions ({cases} cases, seed {seed}) in {} ms; {} routes, {} parents of ours checked, {} rules served",
        executions.load(Ordering::Relaxed),
        started.elapsed().as_millis(),
        reached.routes.load(Ordering::Relaxed),
        reached.parents.load(Ordering::Relaxed),
        reached.rules_served.load(Ordering::Relaxed),
    );
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, value)) => panic!(
            "fuzz translate failed: {why}\nminimal input (a corpus file holds this array):\n{}",
            serde_json::to_string_pretty(&value.0).unwrap()
        ),
        Err(TestError::Abort(why)) => panic!("fuzz translate aborted: {why}"),
    }
}
