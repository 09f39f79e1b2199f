//! Snapshot patches: the difference between two snapshots, route by route, so a change to one
//! route of a 10k-route snapshot travels (and is applied) as that route, not as the whole
//! snapshot.
//!
//! ```text
//! diff(prev, next) ─► SnapshotPatch { base, generation, gateways: [piece…], drains?, eastWest? }
//! patch.apply(&mut snapshot of generation base) ─► check every piece against the snapshot
//!                                                 ─► rebuild the touched lists ─► == next
//! ```
//!
//! # Shape
//!
//! Each list the patch touches (the Gateways of the snapshot, the listeners of a Gateway, the
//! routes of a listener) is rebuilt from *pieces*, in order:
//!
//! - `{"keep":[from,len]}`: the base's items `from .. from+len`, unchanged;
//! - `{"edit":{"at":i,…}}`: the base's item `i` with a nested patch (a Gateway: its
//!   `servedByHeader` when it changed and its listeners as pieces; a listener whose settings did
//!   not change: its routes as pieces);
//! - `{"put":{…}}`: a whole new item (a new or changed route; a listener whose address, port,
//!   protocol, hostname or TLS changed; a new Gateway).
//!
//! An item of the base no piece names is removed. Pieces are positional, so any order, and
//! duplicate names, are reproduced exactly: `apply(prev, diff(prev, next)) == next`, field for
//! field and therefore byte for byte once serialized. Drains and east-west backends are
//! replaced whole when they changed (`None`: unchanged), as is the schema.
//!
//! # Cost
//!
//! [`diff`] walks both snapshots once. Items are matched by position first (the common prefix and
//! suffix of a list, where a changed route costs one comparison) and by name in the middle (a
//! hash map over the middle only), and compared with `==`, which stops at the first difference
//! and is a plain memory walk for the equal ones. No hashing of whole routes, no serialization.
//! Routes are shared between snapshots ([`Arc`], see [`crate::snapshot`]): a route both sides
//! hold is equal by pointer, so the walk over a listener whose routes the producer did not
//! touch compares pointers only, and only changed routes are compared and copied.
//!
//! A producer that made `next` from `prev` in place knows which Gateways it touched
//! ([`Touched`]); [`diff_since`] and [`unchanged`] then look only at those (and at the Gateway
//! names, to line the lists up), so their cost follows the change, not the snapshot. The
//! incremental translation of the controller is such a producer.
//! [`SnapshotPatch::apply`] checks the pieces against the snapshot (bounds, every base item used
//! at most once) before it changes anything, so a patch that does not fit leaves the snapshot as
//! it was; it then rebuilds only the lists the patch touches, moving the kept items (no clones).
//!
//! A proxy serving only some Gateways gets the patch of its own view:
//! [`SnapshotPatch::for_gateways`] renumbers the Gateway-level pieces for the filtered base.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::gateway::GatewayRef;
use crate::snapshot::{Drain, EastWestBackend, Gateway, Listener, Route, Snapshot, same_route};

/// Which Gateways of a snapshot may differ from an earlier one it was made from: what a
/// producer that patches its snapshots in place knows about its change. A Gateway that is
/// neither in the set nor [`Touched::everything`] must be equal (and at the same place among
/// the untouched ones) in both; added and removed Gateways are touched. Drains, east-west
/// backends and the schema are always compared (they are small).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    everything: bool,
    gateways: BTreeSet<GatewayRef>,
}

impl Touched {
    /// Nothing touched.
    pub fn nothing() -> Self {
        Self::default()
    }

    /// Anything may differ (no knowledge: a whole new snapshot).
    pub fn everything() -> Self {
        Self {
            everything: true,
            gateways: BTreeSet::new(),
        }
    }

    /// Notes that Gateway `namespace/name` may differ (its entry changed, came or went).
    pub fn gateway(&mut self, namespace: &str, name: &str) {
        if !self.everything && !self.may_differ(namespace, name) {
            self.gateways.insert(GatewayRef::new(namespace, name));
        }
    }

    /// Notes that anything may differ.
    pub fn set_everything(&mut self) {
        self.everything = true;
        self.gateways.clear();
    }

    /// Adds what `other` touched.
    pub fn extend(&mut self, other: &Touched) {
        if other.everything {
            self.set_everything();
        } else if !self.everything {
            self.gateways.extend(other.gateways.iter().cloned());
        }
    }

    /// Whether nothing was touched.
    pub fn is_nothing(&self) -> bool {
        !self.everything && self.gateways.is_empty()
    }

    /// Whether anything may differ.
    pub fn is_everything(&self) -> bool {
        self.everything
    }

    /// The Gateways touched (`None`: everything).
    pub fn gateways(&self) -> Option<&BTreeSet<GatewayRef>> {
        (!self.everything).then_some(&self.gateways)
    }

    /// Whether Gateway `namespace/name` may differ.
    pub fn may_differ(&self, namespace: &str, name: &str) -> bool {
        if self.everything {
            return true;
        }
        // Usually one or two: a scan is cheaper than building a key.
        if self.gateways.len() <= 8 {
            return self
                .gateways
                .iter()
                .any(|g| g.namespace == namespace && g.name == name);
        }
        self.gateways.contains(&GatewayRef::new(namespace, name))
    }
}

/// What a publisher knows about a snapshot it publishes: the snapshot it published before
/// (as it handed it over) and what it touched since. A receiver holding exactly `base`
/// ([`Arc::ptr_eq`]) may look only at `touched`; any other receiver compares everything.
#[derive(Clone, Copy, Debug)]
pub struct Since<'a> {
    /// The snapshot published before.
    pub base: &'a Arc<Snapshot>,
    /// What may differ from it.
    pub touched: &'a Touched,
}

impl<'a> Since<'a> {
    /// What may differ from `held`: [`Since::touched`] when `held` is the base, else
    /// everything.
    pub fn touched_from(since: Option<Since<'a>>, held: &Arc<Snapshot>) -> &'a Touched {
        static EVERYTHING: std::sync::OnceLock<Touched> = std::sync::OnceLock::new();
        match since {
            Some(s) if Arc::ptr_eq(s.base, held) => s.touched,
            _ => EVERYTHING.get_or_init(Touched::everything),
        }
    }
}

/// The change from one snapshot to the next, by Gateway, listener and route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SnapshotPatch {
    /// The generation the patch applies to.
    pub base: u64,
    /// The generation the patched snapshot gets.
    pub generation: u64,
    /// The new schema, when it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// The new Gateway list, as pieces of the base's.
    #[serde(default)]
    pub gateways: Vec<Piece<Gateway, GatewayEdit>>,
    /// The new drains, when they changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drains: Option<Vec<Drain>>,
    /// The new east-west backends, when they changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub east_west: Option<Vec<EastWestBackend>>,
}

/// One piece of a rebuilt list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Piece<T, E> {
    /// The base's items `from .. from + len`, unchanged.
    Keep(usize, usize),
    /// One item of the base, changed in part.
    Edit(E),
    /// A whole item.
    Put(T),
}

/// A Gateway of the base with changed listeners or `servedByHeader`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayEdit {
    /// Its position in the base's Gateway list.
    pub at: usize,
    /// The new `servedByHeader`, when it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by_header: Option<bool>,
    /// The new listener list, as pieces of the base Gateway's.
    #[serde(default)]
    pub listeners: Vec<Piece<Listener, ListenerEdit>>,
}

/// A listener of the base whose settings are unchanged and whose routes changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerEdit {
    /// Its position in the base Gateway's listener list.
    pub at: usize,
    /// The new route list, as pieces of the base listener's.
    #[serde(default)]
    pub routes: Vec<Piece<Route, NoEdit>>,
}

/// Routes are replaced whole: there is no route edit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoEdit {}

/// Why a patch does not apply to a snapshot (the snapshot is left as it was).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The snapshot is not the patch's base.
    #[error("the patch applies to generation {base}, the snapshot is generation {held}")]
    Base {
        /// The patch's base.
        base: u64,
        /// The snapshot's generation.
        held: u64,
    },
    /// A piece names items the base does not have, or one item twice.
    #[error("{what}: {why}")]
    Piece {
        /// Which list (`gateways`, `gateway 2 listeners`, …).
        what: String,
        /// What is wrong.
        why: String,
    },
}

impl SnapshotPatch {
    /// Whether the patch changes nothing but the generation.
    pub fn is_empty(&self, base_gateways: usize) -> bool {
        self.schema.is_none()
            && self.drains.is_none()
            && self.east_west.is_none()
            && identity(&self.gateways, base_gateways)
    }

    /// Whether the patch keeps nothing of the base's Gateways (it is then no smaller than the
    /// snapshot it makes).
    pub fn keeps_nothing(&self) -> bool {
        !self.gateways.is_empty() && self.gateways.iter().all(|p| matches!(p, Piece::Put(_)))
    }

    /// Applies the patch to `snapshot`, which must be of generation [`SnapshotPatch::base`].
    /// All or nothing: on error `snapshot` is unchanged.
    pub fn apply(self, snapshot: &mut Snapshot) -> Result<(), PatchError> {
        if snapshot.generation != self.base {
            return Err(PatchError::Base {
                base: self.base,
                held: snapshot.generation,
            });
        }
        check_gateways(&self.gateways, &snapshot.gateways)?;
        let old = std::mem::take(&mut snapshot.gateways);
        snapshot.gateways = rebuild(old, self.gateways, edit_gateway, |g| g);
        if let Some(schema) = self.schema {
            snapshot.schema = schema;
        }
        if let Some(drains) = self.drains {
            snapshot.drains = drains;
        }
        if let Some(east_west) = self.east_west {
            snapshot.east_west = east_west;
        }
        snapshot.generation = self.generation;
        Ok(())
    }

    /// The patch as a proxy serving only the Gateways `serves` accepts sees it: its base is the
    /// filtered `base` (the Gateway list of the full base, in order), and applying the result to
    /// it gives the filtered next snapshot. Pieces of other Gateways are dropped and positions
    /// renumbered.
    pub fn for_gateways(
        &self,
        base: &[GatewayRef],
        serves: impl Fn(&str, &str) -> bool,
    ) -> SnapshotPatch {
        // Position of each served base Gateway in the filtered base.
        let mut next = 0;
        let remap: Vec<Option<usize>> = base
            .iter()
            .map(|g| {
                serves(&g.namespace, &g.name).then(|| {
                    next += 1;
                    next - 1
                })
            })
            .collect();
        let mut gateways = Vec::new();
        for piece in &self.gateways {
            match piece {
                Piece::Keep(from, len) => {
                    for i in *from..from.saturating_add(*len) {
                        if let Some(Some(j)) = remap.get(i) {
                            push_keep(&mut gateways, *j, 1);
                        }
                    }
                }
                Piece::Edit(e) => {
                    if let Some(Some(j)) = remap.get(e.at) {
                        gateways.push(Piece::Edit(GatewayEdit {
                            at: *j,
                            ..e.clone()
                        }));
                    }
                }
                Piece::Put(g) => {
                    if serves(&g.namespace, &g.name) {
                        gateways.push(Piece::Put(g.clone()));
                    }
                }
            }
        }
        SnapshotPatch {
            base: self.base,
            generation: self.generation,
            schema: self.schema.clone(),
            gateways,
            drains: self.drains.clone(),
            east_west: self.east_west.clone(),
        }
    }
}

/// The patch that turns `prev` into `next` (see the module docs).
pub fn diff(prev: &Snapshot, next: &Snapshot) -> SnapshotPatch {
    diff_since(prev, next, &Touched::everything())
}

/// [`diff`] for a `next` made from `prev` by a producer that touched only `touched`: Gateways
/// outside it are kept without being compared. Equal to [`diff`] whenever `touched` keeps its
/// contract (property-tested).
pub fn diff_since(prev: &Snapshot, next: &Snapshot, touched: &Touched) -> SnapshotPatch {
    SnapshotPatch {
        base: prev.generation,
        generation: next.generation,
        schema: (prev.schema != next.schema).then(|| next.schema.clone()),
        gateways: diff_list(
            &prev.gateways,
            &next.gateways,
            |g| (g.namespace.as_str(), g.name.as_str()),
            |a, b| a.namespace == b.namespace && a.name == b.name,
            |a, b| !touched.may_differ(&b.namespace, &b.name) || a == b,
            diff_gateway,
            |g| Piece::Put(g.clone()),
        ),
        drains: (prev.drains != next.drains).then(|| next.drains.clone()),
        east_west: (prev.east_west != next.east_west).then(|| next.east_west.clone()),
    }
}

/// Whether `next`, made from `prev` by a producer that touched only `touched`, has the same
/// content (generation aside): what [`diff_since`] would find nothing in, without building a
/// patch.
pub fn unchanged(prev: &Snapshot, next: &Snapshot, touched: &Touched) -> bool {
    prev.schema == next.schema
        && prev.drains == next.drains
        && prev.east_west == next.east_west
        && prev.gateways.len() == next.gateways.len()
        && prev.gateways.iter().zip(&next.gateways).all(|(a, b)| {
            // Untouched Gateways are equal; their names line the two lists up (a touched one
            // that came or went shows as a name or content difference at the first place the
            // lists differ).
            if touched.may_differ(&a.namespace, &a.name)
                || touched.may_differ(&b.namespace, &b.name)
            {
                a == b
            } else {
                a.namespace == b.namespace && a.name == b.name
            }
        })
}

/// Makes `next` share with `base` every route of the `touched` Gateways that is equal in both
/// (same Gateway, listener and route name and content), and returns the Gateways that really
/// differ: as precise as a whole comparison, for the price of comparing the touched Gateways
/// (routes already shared by pointer). After a full translation (everything touched, every
/// route a new allocation) this turns the new snapshot into one that shares what did not
/// change with the published one, so publishing and the memory see only the change; after an
/// incremental pass it drops Gateways whose routes were translated again to the same result.
/// Content and order of `next` are unchanged.
pub fn share_unchanged(base: &Snapshot, next: &mut Snapshot, touched: &Touched) -> Touched {
    if touched.is_nothing() {
        return Touched::nothing();
    }
    type Name<'s> = (&'s str, &'s str);
    // Base Gateways by name; `None` for a repeated name (never matched: it differs).
    let mut in_base: HashMap<Name<'_>, Option<usize>> = HashMap::new();
    for (i, g) in base.gateways.iter().enumerate() {
        if touched.may_differ(&g.namespace, &g.name) {
            in_base
                .entry((g.namespace.as_str(), g.name.as_str()))
                .and_modify(|e| *e = None)
                .or_insert(Some(i));
        }
    }
    let mut repeated_in_next = vec![false; next.gateways.len()];
    {
        let mut first: HashMap<Name<'_>, usize> = HashMap::new();
        for (j, g) in next.gateways.iter().enumerate() {
            if let Some(&k) = first.get(&(g.namespace.as_str(), g.name.as_str())) {
                repeated_in_next[k] = true;
                repeated_in_next[j] = true;
            } else {
                first.insert((g.namespace.as_str(), g.name.as_str()), j);
            }
        }
    }
    let mut differ = Touched::nothing();
    let mut matched = vec![false; base.gateways.len()];
    for (j, g) in next.gateways.iter_mut().enumerate() {
        if !touched.may_differ(&g.namespace, &g.name) {
            continue;
        }
        let i = in_base
            .get(&(g.namespace.as_str(), g.name.as_str()))
            .copied()
            .flatten()
            .filter(|_| !repeated_in_next[j]);
        let Some(i) = i else {
            differ.gateway(&g.namespace, &g.name);
            continue;
        };
        matched[i] = true;
        if !share_gateway(&base.gateways[i], g) {
            differ.gateway(&g.namespace, &g.name);
        }
    }
    for (i, g) in base.gateways.iter().enumerate() {
        if !matched[i] && touched.may_differ(&g.namespace, &g.name) {
            differ.gateway(&g.namespace, &g.name);
        }
    }
    // The Gateways found equal must also be in the same order among the others (a reordered
    // list is not described by names): otherwise say everything.
    fn kept<'s>(s: &'s Snapshot, differ: &Touched) -> Vec<(&'s str, &'s str)> {
        s.gateways
            .iter()
            .filter(|g| !differ.may_differ(&g.namespace, &g.name))
            .map(|g| (g.namespace.as_str(), g.name.as_str()))
            .collect()
    }
    if kept(base, &differ) != kept(next, &differ) {
        return Touched::everything();
    }
    differ
}

/// Shares the equal routes of `a` with `b` (listeners paired by position and name); whether
/// the two Gateways are equal afterwards.
fn share_gateway(a: &Gateway, b: &mut Gateway) -> bool {
    let mut same =
        a.served_by_header == b.served_by_header && a.listeners.len() == b.listeners.len();
    for (x, y) in a.listeners.iter().zip(&mut b.listeners) {
        if x.name != y.name {
            same = false;
            continue;
        }
        same &= x.address == y.address
            && x.port == y.port
            && x.protocol == y.protocol
            && x.hostname == y.hostname
            && x.tls == y.tls;
        same &= share_routes(&x.routes, &mut y.routes);
    }
    same
}

/// Points every route of `new` equal to one of `old` at `old`'s allocation (by position over
/// the common prefix and suffix of names, by name in between); whether the lists are equal.
///
/// A route coming or going shifts every position after it: matching the prefix and the suffix
/// by position (as [`diff_list`] does) keeps that a walk over pointers, and a route already
/// shared ([`Arc::ptr_eq`]) is never compared by content. Only the middle (what lies between the
/// first and the last difference) is matched through a map of names.
fn share_routes(old: &[Arc<Route>], new: &mut [Arc<Route>]) -> bool {
    fn same_name(o: &Arc<Route>, r: &Arc<Route>) -> bool {
        Arc::ptr_eq(o, r) || (o.namespace == r.namespace && o.name == r.name)
    }
    // Points `r` at `o` when equal; whether they are.
    fn share(o: &Arc<Route>, r: &mut Arc<Route>) -> bool {
        if Arc::ptr_eq(o, r) {
            return true;
        }
        if **o == **r {
            *r = Arc::clone(o);
            return true;
        }
        false
    }
    let mut same = old.len() == new.len();
    let mut head = 0;
    while head < old.len() && head < new.len() && same_name(&old[head], &new[head]) {
        same &= share(&old[head], &mut new[head]);
        head += 1;
    }
    let mut tail = 0;
    while tail < old.len() - head
        && tail < new.len() - head
        && same_name(&old[old.len() - 1 - tail], &new[new.len() - 1 - tail])
    {
        let (i, j) = (old.len() - 1 - tail, new.len() - 1 - tail);
        same &= share(&old[i], &mut new[j]);
        tail += 1;
    }
    let old_mid = &old[head..old.len() - tail];
    let new_len = new.len();
    let new_mid = &mut new[head..new_len - tail];
    if old_mid.is_empty() && new_mid.is_empty() {
        return same;
    }
    // Names differ at the first and last position of the middle: not equal. Share the rest by
    // name.
    let by_name: HashMap<(&str, &str), &Arc<Route>> = old_mid
        .iter()
        .map(|o| ((o.namespace.as_str(), o.name.as_str()), o))
        .collect();
    for r in new_mid {
        if let Some(o) = by_name.get(&(r.namespace.as_str(), r.name.as_str())) {
            share(o, r);
        }
    }
    false
}

/// A Gateway with the same name: always an edit (its identity did not change).
fn diff_gateway(at: usize, a: &Gateway, b: &Gateway) -> Piece<Gateway, GatewayEdit> {
    Piece::Edit(GatewayEdit {
        at,
        served_by_header: (a.served_by_header != b.served_by_header).then_some(b.served_by_header),
        listeners: diff_list(
            &a.listeners,
            &b.listeners,
            |l| l.name.as_str(),
            |a, b| a.name == b.name,
            |a, b| a == b,
            diff_listener,
            |l| Piece::Put(l.clone()),
        ),
    })
}

/// A listener with the same name: an edit of its routes when its settings are unchanged, else
/// the whole listener.
fn diff_listener(at: usize, a: &Listener, b: &Listener) -> Piece<Listener, ListenerEdit> {
    // Destructured, so a field added to the listener is a compile error here instead of a
    // setting silently dropped from the patch.
    let Listener {
        name,
        address,
        port,
        protocol,
        hostname,
        tls,
        routes,
    } = a;
    let same_settings = *name == b.name
        && *address == b.address
        && *port == b.port
        && *protocol == b.protocol
        && *hostname == b.hostname
        && *tls == b.tls;
    if !same_settings {
        return Piece::Put(b.clone());
    }
    Piece::Edit(ListenerEdit {
        at,
        routes: diff_list(
            routes,
            &b.routes,
            |r| (r.namespace.as_str(), r.name.as_str()),
            // A shared route is the same route: no need to look at its name.
            |a, b| Arc::ptr_eq(a, b) || (a.namespace == b.namespace && a.name == b.name),
            same_route,
            |_, _, b| Piece::Put(Route::clone(b)),
            |b| Piece::Put(Route::clone(b)),
        ),
    })
}

/// The pieces that rebuild `new` from `old`. Items are matched by position over the common
/// prefix and suffix of names (`same_key`: `key(a) == key(b)`, cheaper) and by name (first
/// unused occurrence) in between; a matched item that is `same` is kept, a different one goes
/// through `changed`, an unmatched one through `put`.
fn diff_list<'a, T, U, E, K: Hash + Eq + 'a>(
    old: &'a [T],
    new: &'a [T],
    key: impl Fn(&'a T) -> K,
    same_key: impl Fn(&T, &T) -> bool,
    same: impl Fn(&T, &T) -> bool,
    changed: impl Fn(usize, &'a T, &'a T) -> Piece<U, E>,
    put: impl Fn(&'a T) -> Piece<U, E>,
) -> Vec<Piece<U, E>> {
    let mut out = Vec::new();
    let same_at = |i: usize, j: usize| same_key(&old[i], &new[j]);
    let mut head = 0;
    while head < old.len() && head < new.len() && same_at(head, head) {
        head += 1;
    }
    let mut tail = 0;
    while tail < old.len() - head
        && tail < new.len() - head
        && same_at(old.len() - 1 - tail, new.len() - 1 - tail)
    {
        tail += 1;
    }
    let matched = |out: &mut Vec<Piece<U, E>>, i: usize, j: usize| {
        if same(&old[i], &new[j]) {
            push_keep(out, i, 1);
        } else {
            out.push(changed(i, &old[i], &new[j]));
        }
    };
    for i in 0..head {
        matched(&mut out, i, i);
    }
    // In between, items that still line up are matched by position too (two changed routes
    // far apart leave a long middle that needs no map); the map is built only for what is
    // left after the first item that does not. Positional matching there picks what the map
    // would (every earlier item of the middle is used), so the pieces are the same.
    let mut mid = head;
    while mid < old.len() - tail && mid < new.len() - tail && same_at(mid, mid) {
        matched(&mut out, mid, mid);
        mid += 1;
    }
    let (old_mid, new_mid) = (mid..old.len() - tail, mid..new.len() - tail);
    if !new_mid.is_empty() {
        let mut by_key: HashMap<K, VecDeque<usize>> = HashMap::new();
        for i in old_mid.clone() {
            by_key.entry(key(&old[i])).or_default().push_back(i);
        }
        for j in new_mid {
            match by_key.get_mut(&key(&new[j])).and_then(VecDeque::pop_front) {
                Some(i) => matched(&mut out, i, j),
                None => out.push(put(&new[j])),
            }
        }
    }
    for k in 0..tail {
        matched(&mut out, old.len() - tail + k, new.len() - tail + k);
    }
    out
}

/// Appends `Keep(from, len)`, merged into the previous piece when it continues it.
fn push_keep<T, E>(out: &mut Vec<Piece<T, E>>, from: usize, len: usize) {
    if let Some(Piece::Keep(f, l)) = out.last_mut()
        && *f + *l == from
    {
        *l += len;
        return;
    }
    out.push(Piece::Keep(from, len));
}

/// Whether `pieces` rebuild a list of `len` items unchanged.
fn identity<T, E>(pieces: &[Piece<T, E>], len: usize) -> bool {
    match pieces {
        [] => len == 0,
        [Piece::Keep(0, l)] => *l == len,
        _ => false,
    }
}

/// Checks that `pieces` fit a base list of `len` items: in bounds, no item used twice. Calls
/// `edit` on every edit with the base item it names.
fn check_list<T, E>(
    pieces: &[Piece<T, E>],
    len: usize,
    what: &dyn Fn() -> String,
    mut edit: impl FnMut(&E) -> Result<usize, PatchError>,
) -> Result<(), PatchError> {
    let mut used = vec![false; len];
    let mut take = |from: usize, n: usize| -> Result<(), PatchError> {
        let fail = |why: String| PatchError::Piece { what: what(), why };
        let end = from
            .checked_add(n)
            .filter(|end| *end <= len)
            .ok_or_else(|| fail(format!("items {from}+{n} of {len}")))?;
        for (i, u) in used[from..end].iter_mut().enumerate() {
            if std::mem::replace(u, true) {
                return Err(fail(format!("item {} used twice", from + i)));
            }
        }
        Ok(())
    };
    for piece in pieces {
        match piece {
            Piece::Keep(from, n) => take(*from, *n)?,
            Piece::Edit(e) => {
                let at = edit(e)?;
                take(at, 1)?;
            }
            Piece::Put(_) => {}
        }
    }
    Ok(())
}

fn check_gateways(
    pieces: &[Piece<Gateway, GatewayEdit>],
    base: &[Gateway],
) -> Result<(), PatchError> {
    check_list(pieces, base.len(), &|| "gateways".to_string(), |e| {
        let Some(g) = base.get(e.at) else {
            return Ok(e.at); // reported as out of bounds by the caller
        };
        check_list(
            &e.listeners,
            g.listeners.len(),
            &|| format!("gateway {} listeners", e.at),
            |le| {
                if let Some(l) = g.listeners.get(le.at) {
                    check_list(
                        &le.routes,
                        l.routes.len(),
                        &|| format!("gateway {} listener {} routes", e.at, le.at),
                        |never| match *never {},
                    )?;
                }
                Ok(le.at)
            },
        )?;
        Ok(e.at)
    })
}

/// Rebuilds a checked list: kept items are moved out of `old`, edits applied with `edit`, put
/// items turned into list items with `put`.
fn rebuild<T, U, E: At>(
    old: Vec<T>,
    pieces: Vec<Piece<U, E>>,
    edit: impl Fn(T, E) -> T,
    put: impl Fn(U) -> T,
) -> Vec<T> {
    let mut old: Vec<Option<T>> = old.into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(pieces.len().max(old.len()));
    for piece in pieces {
        match piece {
            Piece::Keep(from, n) => {
                out.extend(old[from..from + n].iter_mut().filter_map(Option::take));
            }
            Piece::Edit(e) => {
                if let Some(item) = old.get_mut(e.at()).and_then(Option::take) {
                    out.push(edit(item, e));
                }
            }
            Piece::Put(item) => out.push(put(item)),
        }
    }
    // Items no piece named (removed) are dropped with `old`.
    out
}

/// The base position an edit names.
trait At {
    fn at(&self) -> usize;
}

impl At for GatewayEdit {
    fn at(&self) -> usize {
        self.at
    }
}

impl At for ListenerEdit {
    fn at(&self) -> usize {
        self.at
    }
}

impl At for NoEdit {
    fn at(&self) -> usize {
        match *self {}
    }
}

fn edit_gateway(mut g: Gateway, e: GatewayEdit) -> Gateway {
    if let Some(s) = e.served_by_header {
        g.served_by_header = s;
    }
    let old = std::mem::take(&mut g.listeners);
    g.listeners = rebuild(old, e.listeners, edit_listener, |l| l);
    g
}

fn edit_listener(mut l: Listener, e: ListenerEdit) -> Listener {
    let old = std::mem::take(&mut l.routes);
    l.routes = rebuild(old, e.routes, |_, never: NoEdit| match never {}, Arc::new);
    l
}
