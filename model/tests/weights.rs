//! Weighted backend choice (catalogue HTTPRouteWeight, spec §2.5): `pick_backend` maps every roll
//! of `0..total` to a backend, so exact shares are checked by enumerating all rolls instead of
//! sampling.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use meridian_model::router::CompiledRule;
use meridian_model::snapshot::{BackendTarget, Rule};
use std::sync::Arc;

fn compiled(r: Rule) -> Arc<CompiledRule> {
    let router =
        compile(vec![gateway("infra", "same-namespace").listener(
            listener("http", 80).route(route("infra", "weighted").rule(r)),
        )]);
    matched(&router, &req("w.example", "/")).rule
}

/// How often each backend index is chosen over all rolls `0..total`.
fn shares(rule: &CompiledRule) -> Vec<u64> {
    let mut counts = vec![0u64; rule.rule.backends.len()];
    for roll in 0..rule.total_weight() {
        let (idx, b) = rule.pick_backend(roll).unwrap();
        assert!(b.weight > 0, "roll {roll} chose {} of weight 0", b.name);
        counts[idx] += 1;
    }
    counts
}

#[test]
fn weights_70_30_0_give_exact_shares_and_never_choose_weight_zero() {
    let rule = compiled(
        rule()
            .weighted("v1", 70)
            .weighted("v2", 30)
            .weighted("v3", 0),
    );
    assert_eq!(rule.total_weight(), 100);
    assert_eq!(shares(&rule), vec![70, 30, 0]);
}

#[test]
fn weight_zero_anywhere_in_the_list_is_skipped() {
    let cases: &[(&[u32], &[u64])] = &[
        (&[0, 5], &[0, 5]),
        (&[0, 0, 3, 0, 1], &[0, 0, 3, 0, 1]),
        (&[1], &[1]),
        (&[2, 0, 0], &[2, 0, 0]),
        (&[1_000_000, 1], &[1_000_000, 1]),
    ];
    for (weights, want) in cases {
        let mut r = rule();
        for (i, w) in weights.iter().enumerate() {
            r = r.weighted(&format!("b{i}"), *w);
        }
        assert_eq!(shares(&compiled(r)), *want, "{weights:?}");
    }
}

#[test]
fn rolls_beyond_the_total_wrap_around_evenly() {
    let rule = compiled(rule().weighted("v1", 70).weighted("v2", 30));
    for roll in [100u64, 169, 170, 199, u64::MAX - 1, u64::MAX] {
        let (idx, _) = rule.pick_backend(roll).unwrap();
        let want = if roll % 100 < 70 { 0 } else { 1 };
        assert_eq!(idx, want, "roll {roll}");
    }
}

#[test]
fn all_zero_weights_or_no_backends_choose_nothing() {
    let zero = compiled(rule().weighted("v1", 0).weighted("v2", 0));
    assert_eq!(zero.total_weight(), 0);
    for roll in [0, 1, 99, u64::MAX] {
        assert!(zero.pick_backend(roll).is_none());
    }
    let empty = compiled(rule());
    assert_eq!(empty.total_weight(), 0);
    assert!(empty.pick_backend(7).is_none());
}

#[test]
fn invalid_backend_keeps_its_weight_share_so_the_proxy_answers_500_for_it() {
    let mut invalid = backend("missing", 1);
    invalid.target = BackendTarget::Invalid {
        reason: "BackendNotFound".to_string(),
    };
    let rule = compiled(rule().weighted("v1", 1).backend(invalid));
    assert_eq!(shares(&rule), vec![1, 1]);
    let (_, b) = rule.pick_backend(1).unwrap();
    assert!(matches!(b.target, BackendTarget::Invalid { .. }));
}
