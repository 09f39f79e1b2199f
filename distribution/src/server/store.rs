//! Generations and snapshots: what each cluster's proxies should serve.
//!
//! ```text
//! publish ─► equal to the latest? ─yes─► Published{latest, Unchanged}
//!              │ no             (with the publisher's Since: only what it touched is compared)
//!              ▼
//!            endpoints only? ─yes─► endpoint delta
//!              │ no
//!              ▼
//!            patch::diff_since(latest, new) ─► keeps nothing, or no smaller than the latest's
//!              │                                full line? ─yes─► full snapshot
//!              ▼ patch
//! publish_endpoints ─► endpoint delta
//!
//!          number (caller's if it moves forward, else previous + 1)
//!          encode the delta or patch line now (or the full line, when there is neither)
//!          pending[generation] = now ─► watch<Version> of the cluster ─► feed tasks
//! ```
//!
//! One [`Version`] per cluster is current; it is encoded once and shared by every stream. A
//! version published as a delta or a patch encodes its full line only when a stream that does
//! not hold the base (or, for a patch, did not announce `patch` in its hello) first needs it. A
//! stream serving only some Gateways gets the patch of its own view, encoded for it. The
//! pending map remembers publish times until `programmed` settles each generation (propagation
//! histogram); it is bounded by [`MAX_PENDING`].
//!
//! Cost of a publish: snapshots share their unchanged routes ([`meridian_model::snapshot`]), so
//! the comparisons with the latest version skip every route both hold by pointer. A publisher
//! that says what it touched since its previous snapshot ([`DistributionServer::publish_since`],
//! the controller's incremental translation) has the comparisons look at those Gateways only,
//! as long as the latest version is exactly that previous snapshot (pointer-equal; else
//! everything is compared). The publisher's `Arc` is stored as is when it carries the generation
//! the server gives it, so the next publish can refer to it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use meridian_model::Snapshot;
use meridian_model::patch::{self, Since, SnapshotPatch};
use tokio::sync::watch;

use super::{DistributionServer, Inner, lock};
use crate::protocol::{
    EndpointChange, EndpointsUpdate, GatewayRef, Outgoing, endpoint_delta_since, patch_endpoints,
};

/// At most this many generations per cluster are tracked as pending.
const MAX_PENDING: usize = 256;

/// Why an endpoint update was not published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Deltas patch the latest full snapshot; there is none.
    #[error("cluster {0:?} has no snapshot yet: publish a full snapshot first")]
    NoSnapshot(String),
    /// The snapshot does not serialize (cannot happen with the model's types, kept explicit).
    #[error("snapshot of cluster {cluster:?} does not serialize: {reason}")]
    Encode {
        /// Cluster.
        cluster: String,
        /// serde_json's message.
        reason: String,
    },
}

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The generation the proxies will acknowledge (the previous one when unchanged).
    pub generation: u64,
    /// How it travels.
    pub kind: PublishKind,
}

/// How a published generation travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishKind {
    /// Same content as the latest: nothing was sent, the generation is the latest one.
    Unchanged,
    /// A full snapshot.
    Full,
    /// An endpoint-only delta (proxies holding an older base get the full snapshot instead).
    Endpoints,
    /// A route-level patch (proxies holding an older base, or that do not apply patches, get
    /// the full snapshot instead).
    Patch,
}

impl PublishKind {
    /// Label of the `published` metric (an unchanged publish is not counted).
    fn label(self) -> &'static str {
        match self {
            PublishKind::Unchanged => "unchanged",
            PublishKind::Full => "full",
            PublishKind::Endpoints => "endpoints",
            PublishKind::Patch => "patch",
        }
    }
}

/// One published generation of a cluster, serialized once for every stream.
pub(super) struct Version {
    pub(super) generation: u64,
    snapshot: Arc<Snapshot>,
    /// The full snapshot message, newline included; encoded when a stream first needs it
    /// (streams holding the base of a delta or patch never do).
    full_line: OnceLock<Bytes>,
    /// How this version travels to a stream holding the previous one.
    change: Option<Change>,
}

/// A version's cheap form, for streams holding its base.
enum Change {
    /// Endpoint lists only: the delta message from `base`, newline included.
    Endpoints { base: u64, line: Bytes },
    /// A route-level patch from `base`.
    Patch {
        base: u64,
        patch: SnapshotPatch,
        /// The base's Gateways in order (to renumber the patch for a filtered stream).
        base_gateways: Vec<GatewayRef>,
        /// The patch message, newline included (for streams serving every Gateway).
        line: Bytes,
    },
}

/// Which kind of message a stream got (label of the sent-bytes metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LineKind {
    Snapshot,
    Endpoints,
    Patch,
}

impl LineKind {
    pub(super) fn label(self) -> &'static str {
        match self {
            LineKind::Snapshot => "snapshot",
            LineKind::Endpoints => "endpoints",
            LineKind::Patch => "patch",
        }
    }
}

impl Version {
    /// The line to send to a stream whose last version was `sent` (its generation and snapshot),
    /// that serves `gateways` (`None`: all) and applies patches or not: the delta or patch when
    /// it holds the base; for a stream that applies patches and holds an older version (it
    /// missed versions while its proxy was busy), the patch from that version; else the
    /// (filtered) snapshot.
    pub(super) fn line_for(
        &self,
        sent: Option<(u64, &Snapshot)>,
        gateways: Option<&[GatewayRef]>,
        patches: bool,
    ) -> Result<(Bytes, LineKind), serde_json::Error> {
        let held = sent;
        let sent = sent.map(|(g, _)| g);
        match &self.change {
            Some(Change::Endpoints { base, line }) if sent == Some(*base) => {
                return Ok((line.clone(), LineKind::Endpoints));
            }
            Some(Change::Patch {
                base,
                patch,
                base_gateways,
                line: l,
            }) if patches && sent == Some(*base) => {
                let l = match gateways {
                    None => l.clone(),
                    Some(only) => {
                        let mine = patch.for_gateways(base_gateways, |ns, name| {
                            only.iter().any(|r| r.namespace == ns && r.name == name)
                        });
                        line(&Outgoing::Patch(&mine))?
                    }
                };
                return Ok((l, LineKind::Patch));
            }
            _ => {}
        }
        if patches
            && let Some((_, held)) = held
            && let Some(l) = self.patch_from(held, gateways)?
        {
            return Ok((l, LineKind::Patch));
        }
        let Some(only) = gateways else {
            if let Some(l) = self.full_line.get() {
                return Ok((l.clone(), LineKind::Snapshot));
            }
            // Two streams may encode it at once; both results are equal.
            let l = line(&Outgoing::Snapshot(&self.snapshot))?;
            return Ok((self.full_line.get_or_init(|| l).clone(), LineKind::Snapshot));
        };
        let filtered = Snapshot {
            schema: self.snapshot.schema.clone(),
            generation: self.generation,
            gateways: self
                .snapshot
                .gateways
                .iter()
                .filter(|g| {
                    only.iter()
                        .any(|r| r.namespace == g.namespace && r.name == g.name)
                })
                .cloned()
                .collect(),
            drains: self.snapshot.drains.clone(),
            east_west: self.snapshot.east_west.clone(),
        };
        Ok((line(&Outgoing::Snapshot(&filtered))?, LineKind::Snapshot))
    }
}

impl Version {
    /// The patch line from `held` (an older version a stream holds) to this one, for a stream
    /// serving `gateways`; `None` when the patch keeps nothing of `held` or is no smaller than
    /// the full line already encoded. Routes are shared between versions, so the diff compares
    /// pointers for every route no version in between changed.
    fn patch_from(
        &self,
        held: &Snapshot,
        gateways: Option<&[GatewayRef]>,
    ) -> Result<Option<Bytes>, serde_json::Error> {
        let patch = patch::diff(held, &self.snapshot);
        if patch.keeps_nothing() {
            return Ok(None);
        }
        let l = match gateways {
            None => line(&Outgoing::Patch(&patch))?,
            Some(only) => {
                let base_gateways: Vec<GatewayRef> = held
                    .gateways
                    .iter()
                    .map(|g| GatewayRef::new(&g.namespace, &g.name))
                    .collect();
                let mine = patch.for_gateways(&base_gateways, |ns, name| {
                    only.iter().any(|r| r.namespace == ns && r.name == name)
                });
                line(&Outgoing::Patch(&mine))?
            }
        };
        let smaller = self.full_line.get().is_none_or(|f| l.len() < f.len());
        Ok(smaller.then_some(l))
    }

    /// The snapshot of this version.
    pub(super) fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }
}

/// One stream message, newline included.
pub(super) fn line(m: &Outgoing<'_>) -> Result<Bytes, serde_json::Error> {
    let mut v = serde_json::to_vec(m)?;
    v.push(b'\n');
    Ok(Bytes::from(v))
}

/// Everything the server keeps about one cluster's generations.
pub(super) struct ClusterEntry {
    /// The current version; feed tasks subscribe to it.
    pub(super) latest: watch::Sender<Option<Arc<Version>>>,
    last_generation: Option<u64>,
    /// Published generations not yet settled, with their publish time.
    pub(super) pending: BTreeMap<u64, Instant>,
}

/// The generation a publish gets: the caller's number when it moves forward, else the next one.
fn next_generation(last: Option<u64>, asked: u64) -> u64 {
    match last {
        Some(last) if asked <= last => last.saturating_add(1),
        None if asked == 0 => 1,
        _ => asked,
    }
}

/// How a new version relates to the latest one, before it is numbered.
enum Base {
    /// No usable base: a full snapshot.
    None,
    /// Endpoint lists changed only.
    Endpoints(u64, Vec<EndpointChange>),
    /// A route-level patch, with the base's Gateways; `full_len`: the base's full line length,
    /// when it was encoded (a patch at least that long is sent as a full snapshot).
    Patch {
        base: u64,
        patch: SnapshotPatch,
        base_gateways: Vec<GatewayRef>,
        full_len: Option<usize>,
    },
}

/// A version's encoded lines, before it is stored.
struct Encoded {
    kind: PublishKind,
    full_line: OnceLock<Bytes>,
    change: Option<Change>,
}

impl Encoded {
    /// Encodes the delta or patch when there is one, else the full snapshot (every stream
    /// needs it, and an encoding error belongs to the publish).
    fn new(snapshot: &Snapshot, base: Base) -> Result<Self, serde_json::Error> {
        let full_line = OnceLock::new();
        match base {
            Base::Endpoints(base, changes) => {
                let update = EndpointsUpdate {
                    generation: snapshot.generation,
                    base,
                    changes,
                };
                let l = line(&Outgoing::Endpoints(&update))?;
                return Ok(Encoded {
                    kind: PublishKind::Endpoints,
                    full_line,
                    change: Some(Change::Endpoints { base, line: l }),
                });
            }
            Base::Patch {
                base,
                mut patch,
                base_gateways,
                full_len,
            } => {
                patch.base = base;
                patch.generation = snapshot.generation;
                let l = line(&Outgoing::Patch(&patch))?;
                if full_len.is_none_or(|n| l.len() < n) {
                    return Ok(Encoded {
                        kind: PublishKind::Patch,
                        full_line,
                        change: Some(Change::Patch {
                            base,
                            patch,
                            base_gateways,
                            line: l,
                        }),
                    });
                }
            }
            Base::None => {}
        }
        let _ = full_line.set(line(&Outgoing::Snapshot(snapshot))?);
        Ok(Encoded {
            kind: PublishKind::Full,
            full_line,
            change: None,
        })
    }
}

impl DistributionServer {
    /// Publishes `snapshot` as the newest version for every proxy of `cluster`. Its generation
    /// is kept when it is larger than the cluster's previous one, otherwise (0, or a restarted
    /// caller counting again) the server assigns previous + 1; the result says which. Content
    /// equal to the latest is not sent again; content differing only in endpoint lists travels as
    /// an endpoint delta, any other change as a route-level patch to the streams that apply
    /// patches (unless the patch keeps nothing of the latest snapshot, or is no smaller than its
    /// already encoded full line: then as a full snapshot).
    pub fn publish(&self, cluster: &str, snapshot: Snapshot) -> Result<Published, PublishError> {
        self.publish_since(cluster, Arc::new(snapshot), None)
    }

    /// [`DistributionServer::publish`] of a shared snapshot, with what the publisher knows about
    /// its change (`since`: the snapshot it published before and what it touched since; see the
    /// module docs). The result is the same as without `since`; only the cost differs.
    pub fn publish_since(
        &self,
        cluster: &str,
        snapshot: Arc<Snapshot>,
        since: Option<Since<'_>>,
    ) -> Result<Published, PublishError> {
        let entry = self.inner.cluster(cluster);
        let mut entry = lock(&entry);
        let prev = entry.latest.borrow().clone();
        let base = match &prev {
            None => Base::None,
            Some(p) => match endpoint_delta_since(
                &p.snapshot,
                &snapshot,
                Since::touched_from(since, &p.snapshot),
            ) {
                Some(changes) if changes.is_empty() => {
                    return Ok(Published {
                        generation: p.generation,
                        kind: PublishKind::Unchanged,
                    });
                }
                Some(changes) => Base::Endpoints(p.generation, changes),
                None => {
                    let touched = Since::touched_from(since, &p.snapshot);
                    let patch = patch::diff_since(&p.snapshot, &snapshot, touched);
                    if patch.keeps_nothing() {
                        Base::None
                    } else {
                        Base::Patch {
                            base: p.generation,
                            patch,
                            base_gateways: p
                                .snapshot
                                .gateways
                                .iter()
                                .map(|g| GatewayRef::new(&g.namespace, &g.name))
                                .collect(),
                            full_len: p.full_line.get().map(Bytes::len),
                        }
                    }
                }
            },
        };
        self.inner.store(cluster, &mut entry, snapshot, base)
    }

    /// Publishes an endpoint-only change for `cluster`: patches its latest snapshot (every
    /// resolved backend with a listed name, mirror backends included) into `generation` (same
    /// numbering rule as [`DistributionServer::publish`]; 0 lets the server choose) and sends the
    /// delta.
    pub fn publish_endpoints(
        &self,
        cluster: &str,
        generation: u64,
        changes: Vec<EndpointChange>,
    ) -> Result<Published, PublishError> {
        let entry = self.inner.cluster(cluster);
        let mut entry = lock(&entry);
        let prev = entry
            .latest
            .borrow()
            .clone()
            .ok_or_else(|| PublishError::NoSnapshot(cluster.to_string()))?;
        let mut snapshot = Snapshot::clone(&prev.snapshot);
        snapshot.generation = generation;
        if !patch_endpoints(&mut snapshot, &changes) {
            return Ok(Published {
                generation: prev.generation,
                kind: PublishKind::Unchanged,
            });
        }
        self.inner.store(
            cluster,
            &mut entry,
            Arc::new(snapshot),
            Base::Endpoints(prev.generation, changes),
        )
    }

    /// The generation of the latest snapshot published for `cluster`.
    pub fn latest_generation(&self, cluster: &str) -> Option<u64> {
        let entry = lock(&self.inner.clusters).get(cluster).cloned()?;
        let e = lock(&entry);
        e.last_generation
    }

    /// The latest snapshot published for `cluster`.
    pub fn latest(&self, cluster: &str) -> Option<Arc<Snapshot>> {
        let entry = lock(&self.inner.clusters).get(cluster).cloned()?;
        let e = lock(&entry);
        e.latest.borrow().as_ref().map(|v| v.snapshot.clone())
    }
}

impl Inner {
    /// The entry of `cluster`, created empty on first use.
    pub(super) fn cluster(&self, cluster: &str) -> Arc<Mutex<ClusterEntry>> {
        lock(&self.clusters)
            .entry(cluster.to_string())
            .or_insert_with(|| {
                Arc::new(Mutex::new(ClusterEntry {
                    latest: watch::channel(None).0,
                    last_generation: None,
                    pending: BTreeMap::new(),
                }))
            })
            .clone()
    }

    /// Numbers, serializes and stores a new version; called with the cluster entry locked.
    fn store(
        &self,
        cluster: &str,
        entry: &mut ClusterEntry,
        mut snapshot: Arc<Snapshot>,
        base: Base,
    ) -> Result<Published, PublishError> {
        let generation = next_generation(entry.last_generation, snapshot.generation);
        if snapshot.generation != generation {
            // Renumbered: a copy (routes stay shared), so the publisher's own is left as it was.
            Arc::make_mut(&mut snapshot).generation = generation;
        }
        let Encoded {
            kind,
            full_line,
            change,
        } = Encoded::new(&snapshot, base).map_err(|e| PublishError::Encode {
            cluster: cluster.to_string(),
            reason: e.to_string(),
        })?;
        entry.last_generation = Some(generation);
        entry.pending.insert(generation, Instant::now());
        while entry.pending.len() > MAX_PENDING {
            entry.pending.pop_first();
        }
        self.count_pending(cluster, entry);
        self.metrics
            .published
            .with_label_values(&[cluster, kind.label()])
            .inc();
        let old = entry.latest.send_replace(Some(Arc::new(Version {
            generation,
            snapshot,
            full_line,
            change,
        })));
        // Freeing a big snapshot takes tens of ms; keep it out of the caller's path.
        if let (Some(old), Ok(rt)) = (old, tokio::runtime::Handle::try_current()) {
            rt.spawn_blocking(move || drop(old));
        }
        tracing::debug!(cluster, generation, ?kind, "published");
        Ok(Published { generation, kind })
    }

    /// Sets the pending-generations gauge of `cluster`.
    pub(super) fn count_pending(&self, cluster: &str, entry: &ClusterEntry) {
        self.metrics
            .pending
            .with_label_values(&[cluster])
            .set(i64::try_from(entry.pending.len()).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::next_generation;

    #[test]
    fn generations_move_forward_whatever_the_caller_says() {
        assert_eq!(next_generation(None, 0), 1);
        assert_eq!(next_generation(None, 7), 7);
        assert_eq!(next_generation(Some(7), 9), 9);
        assert_eq!(next_generation(Some(7), 7), 8);
        assert_eq!(next_generation(Some(7), 0), 8);
        assert_eq!(next_generation(Some(u64::MAX), 3), u64::MAX);
    }
}
