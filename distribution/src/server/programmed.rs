//! Programmed evaluation: whether a generation of a cluster is served, from the acks the
//! registry holds, and settling the pending generations once it is.
//!
//! ```text
//! connected proxies of the cluster (serving the Gateway) ─► evaluate(generation)
//!    none ─► NoProxy
//!    one refused it (and applied nothing newer) ─► Refused (smallest proxy id)
//!    every one acked it or newer ─► Applied(generation)
//!    else ─► Pending { waiting: ids, sorted }
//!
//! connect / disconnect / ack ─► settle(cluster): every pending generation now Applied
//!    (propagation histogram) or Refused leaves the pending map
//! ```
//!
//! Acks are per stream: a proxy that reconnects is `Pending` until it acknowledges again.

use std::collections::HashMap;
use std::time::Instant;

use meridian_model::gateway::{ProgrammedState, ProxyRefusal};

use super::registry::ProxyEntry;
use super::{DistributionServer, Inner, lock};
use crate::protocol::GatewayRef;

impl DistributionServer {
    /// Whether `generation` of `cluster` is served by every connected proxy of that cluster.
    pub fn programmed(&self, cluster: &str, generation: u64) -> ProgrammedState {
        let proxies = lock(&self.inner.proxies);
        evaluate(
            proxies.values().filter(|p| p.connected_in(cluster)),
            generation,
        )
    }

    /// Like [`DistributionServer::programmed`], counting only the proxies that serve Gateway
    /// `gateway`.
    pub fn programmed_gateway(
        &self,
        cluster: &str,
        gateway: &GatewayRef,
        generation: u64,
    ) -> ProgrammedState {
        let proxies = lock(&self.inner.proxies);
        evaluate(
            proxies
                .values()
                .filter(|p| p.connected_in(cluster) && p.hello.serves(gateway)),
            generation,
        )
    }
}

/// The state of `generation` on `proxies` (see the module docs).
pub(super) fn evaluate<'a>(
    proxies: impl Iterator<Item = &'a ProxyEntry>,
    generation: u64,
) -> ProgrammedState {
    let mut any = false;
    let mut waiting = Vec::new();
    let mut refused: Option<ProxyRefusal> = None;
    for p in proxies {
        any = true;
        if p.acked.is_some_and(|a| a >= generation) {
            continue;
        }
        match &p.refusal {
            Some(r) if r.generation >= generation => {
                // Deterministic choice when several refuse: the smallest id.
                if refused
                    .as_ref()
                    .is_none_or(|first| p.hello.proxy_id < first.proxy_id)
                {
                    refused = Some(ProxyRefusal::new(&p.hello.proxy_id, &r.reason));
                }
            }
            _ => waiting.push(p.hello.proxy_id.clone()),
        }
    }
    if let Some(refusal) = refused {
        return ProgrammedState::Refused(refusal);
    }
    if !any {
        return ProgrammedState::NoProxy;
    }
    if waiting.is_empty() {
        ProgrammedState::Applied(generation)
    } else {
        waiting.sort();
        ProgrammedState::Pending { waiting }
    }
}

impl Inner {
    /// Settles the pending generations of `cluster` that every connected proxy has now applied
    /// (observing their propagation time) or that one refused.
    pub(super) fn settle(&self, proxies: &HashMap<String, ProxyEntry>, cluster: &str) {
        let Some(entry) = lock(&self.clusters).get(cluster).cloned() else {
            return;
        };
        let mut entry = lock(&entry);
        let now = Instant::now();
        let mut settled = Vec::new();
        for (&generation, &at) in &entry.pending {
            let state = evaluate(
                proxies.values().filter(|p| p.connected_in(cluster)),
                generation,
            );
            match state {
                ProgrammedState::Applied(_) => {
                    self.metrics
                        .propagation
                        .with_label_values(&[cluster])
                        .observe(now.duration_since(at).as_secs_f64());
                    settled.push(generation);
                }
                ProgrammedState::Refused(_) => settled.push(generation),
                ProgrammedState::Pending { .. }
                | ProgrammedState::NoProxy
                | ProgrammedState::Unknown => {}
            }
        }
        for g in settled {
            entry.pending.remove(&g);
        }
        self.count_pending(cluster, &entry);
    }
}

#[cfg(test)]
mod tests {
    use super::super::registry::test_entry as entry;
    use super::*;

    #[test]
    fn programmed_needs_every_proxy_and_reports_refusals() {
        assert_eq!(evaluate([].iter(), 5), ProgrammedState::NoProxy);
        let a = entry("a", Some(5), None);
        let b = entry("b", Some(4), None);
        assert_eq!(evaluate([&a].into_iter(), 5), ProgrammedState::Applied(5));
        // A newer generation applied counts for older ones.
        assert_eq!(evaluate([&a].into_iter(), 3), ProgrammedState::Applied(3));
        assert_eq!(
            evaluate([&a, &b].into_iter(), 5),
            ProgrammedState::Pending {
                waiting: vec!["b".into()]
            }
        );
        let c = entry("c", Some(4), Some((5, "bind failed")));
        assert_eq!(
            evaluate([&a, &b, &c].into_iter(), 5),
            ProgrammedState::Refused(ProxyRefusal::new("c", "bind failed"))
        );
        // The refusal is about 5, not about 4, which c serves.
        assert_eq!(evaluate([&c].into_iter(), 4), ProgrammedState::Applied(4));
        // 6 is newer than the refusal: c has simply not answered it yet.
        assert_eq!(
            evaluate([&c].into_iter(), 6),
            ProgrammedState::Pending {
                waiting: vec!["c".into()]
            }
        );
    }

    #[test]
    fn several_refusals_name_the_smallest_proxy_id() {
        let b = entry("b", None, Some((5, "port taken")));
        let a = entry("a", None, Some((5, "bad cert")));
        assert_eq!(
            evaluate([&b, &a].into_iter(), 5),
            ProgrammedState::Refused(ProxyRefusal::new("a", "bad cert"))
        );
    }
}
