//! ListenerSets: listeners a Gateway takes from other objects, and their status.
//!
//! ```text
//! ListenerSets ──by_gateway──► per Gateway named by spec.parentRef, in precedence order
//!   (creation time, then namespace/name)
//! Gateway build (module `gateway`): own listeners, then add_listeners:
//!   allowedListeners.namespaces (None: the default, Same, All, Selector) admits the set? ──no──► NotAllowed
//!   yes ─► its listeners validated like the Gateway's (allowedRoutes Same = the set's namespace,
//!          certificateRefs from the set's namespace, ReferenceGrants `from: ListenerSet`),
//!          conflicts inside the set, then against every earlier listener (the Gateway's own,
//!          then earlier sets): the later listener loses (Conflicted, Accepted=False)
//! routes attach (module `route`): parentRef kind ListenerSet selects only that set's listeners;
//!   a Gateway parentRef selects only the Gateway's own
//! statuses: per set Accepted/Programmed + listeners; the Gateway counts attached sets
//! ```
//!
//! The set's listeners travel with the Gateway's in [`GatewayState::listeners`] (marked with
//! [`ListenerState::set`]), so everything that serves, counts or conflicts listeners sees them:
//! they are served in the Gateway's snapshot entry, on its address, named
//! `<namespace>/<set>/<listener>` there so they never meet the Gateway's own names.
//!
//! Reasons are the API's ListenerSet reasons: `Accepted`/`NotAllowed`/`ParentNotAccepted`/
//! `ListenersNotValid` for `Accepted`, and the same (or `Programmed`, `Pending`, `Invalid`) for
//! `Programmed`. A set that is not ours (its Gateway is of another class, or missing) gets no
//! status from us.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use gateway_api::gateways::{
    GatewayAllowedListeners, GatewayAllowedListenersNamespacesFrom, GatewayListeners,
    GatewayStatusListeners,
};
use gateway_api::listenersets::{ListenerSet, ListenerSetStatus, ListenerSetStatusListeners};

use super::gateway::{
    GatewayState, ListenerOwner, ListenerState, build_listener, conditions, detect_conflicts,
    listener_status, push_if_changed,
};
use super::selector::Selector;
use super::{Ctx, Problem, generation_of, recast, recast_all};
use crate::status::{
    Cond, GATEWAY_GROUP, StatusKind, StatusUpdate, is_stale, merge_conditions, stamp_all,
};
use crate::world::{ClusterState, ObjectKey};

/// One ListenerSet naming a Gateway of ours.
#[derive(Clone, Debug)]
pub(crate) struct SetState {
    pub key: ObjectKey,
    pub set: Arc<ListenerSet>,
    pub generation: i64,
    /// Why the set adds no listener to the Gateway (`NotAllowed`, or `Invalid` for a spec
    /// that does not read as listeners); `None` when its listeners are the Gateway's.
    pub problem: Option<Problem>,
}

impl SetState {
    fn created_at(&self) -> i64 {
        self.set
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second())
    }
}

/// The Gateway a ListenerSet's `parentRef` names (defaults: group `gateway.networking.k8s.io`,
/// kind `Gateway`, the set's namespace); `None` when it names another kind.
pub(crate) fn parent_gateway(key: &ObjectKey, set: &ListenerSet) -> Option<ObjectKey> {
    let p = &set.spec.parent_ref;
    let group = p.group.as_deref().unwrap_or(GATEWAY_GROUP);
    let kind = p.kind.as_deref().unwrap_or("Gateway");
    (group == GATEWAY_GROUP && kind == "Gateway").then(|| {
        ObjectKey::new(
            p.namespace.as_deref().unwrap_or(&key.namespace),
            p.name.as_str(),
        )
    })
}

/// Every ListenerSet of the cluster under the Gateway it names, each list in precedence order.
pub(crate) fn by_gateway(cluster: &ClusterState) -> BTreeMap<ObjectKey, Vec<SetState>> {
    let mut out: BTreeMap<ObjectKey, Vec<SetState>> = BTreeMap::new();
    for (key, set) in &cluster.listener_sets {
        let Some(gw) = parent_gateway(key, set) else {
            continue;
        };
        out.entry(gw).or_default().push(SetState {
            key: key.clone(),
            set: Arc::clone(set),
            generation: generation_of(&set.metadata),
            problem: None,
        });
    }
    for sets in out.values_mut() {
        sets.sort_by(|a, b| (a.created_at(), &a.key).cmp(&(b.created_at(), &b.key)));
    }
    out
}

/// Whether `allowedListeners` (absent: `None`, no set may attach) admits a set in `set_ns`.
fn admits(
    allowed: Option<&GatewayAllowedListeners>,
    set_ns: &str,
    gw_ns: &str,
    cluster: &ClusterState,
) -> bool {
    let namespaces = allowed.and_then(|a| a.namespaces.as_ref());
    match namespaces.and_then(|n| n.from.as_ref()) {
        None | Some(GatewayAllowedListenersNamespacesFrom::None) => false,
        Some(GatewayAllowedListenersNamespacesFrom::Same) => set_ns == gw_ns,
        Some(GatewayAllowedListenersNamespacesFrom::All) => true,
        Some(GatewayAllowedListenersNamespacesFrom::Selector) => {
            // `from: Selector` without a selector admits nobody (as for allowedRoutes).
            namespaces
                .and_then(|n| n.selector.as_ref())
                .is_some_and(|s| {
                    Selector::new(
                        s.match_labels.as_ref(),
                        s.match_expressions
                            .iter()
                            .flatten()
                            .map(|e| (e.key.as_str(), e.operator.as_str(), e.values.as_ref())),
                    )
                    .matches(&cluster.namespace_labels(set_ns))
                })
        }
    }
}

/// Adds the listeners of every admitted set to `states` (after the Gateway's own), marking the
/// others `NotAllowed`; see the module docs for the conflict order.
pub(crate) fn add_listeners(
    ctx: &Ctx<'_>,
    gw_ns: &str,
    allowed: Option<&GatewayAllowedListeners>,
    sets: &mut [SetState],
    states: &mut Vec<ListenerState>,
) {
    // Who declared each listener so far, for conflict messages.
    let mut owners: Vec<String> = vec!["the Gateway".to_string(); states.len()];
    for (i, s) in sets.iter_mut().enumerate() {
        if !admits(allowed, &s.key.namespace, gw_ns, ctx.cluster) {
            s.problem = Some(Problem::new(
                "NotAllowed",
                format!(
                    "the Gateway's allowedListeners does not admit ListenerSets from namespace {:?}",
                    s.key.namespace
                ),
            ));
            continue;
        }
        // The listener shapes of Gateway and ListenerSet are equal in JSON.
        let listeners: Vec<GatewayListeners> = match recast(&s.set.spec.listeners) {
            Ok(l) => l,
            Err(e) => {
                s.problem = Some(Problem::new(
                    "Invalid",
                    format!("spec.listeners cannot be read: {e}"),
                ));
                continue;
            }
        };
        let owner = ListenerOwner {
            kind: "ListenerSet",
            namespace: &s.key.namespace,
        };
        let first = states.len();
        let mut seen = BTreeSet::new();
        for l in &listeners {
            let mut st = build_listener(ctx, owner, l);
            st.set = Some(i);
            st.has_status = seen.insert(l.name.clone());
            states.push(st);
            owners.push(format!("ListenerSet {}", s.key));
        }
        detect_conflicts(&mut states[first..]);
        lose_to_earlier(states, &owners, first);
    }
}

/// A listener that takes part in conflicts: has a status entry, is accepted (an earlier loser
/// is not) and has a known protocol.
fn contends(l: &ListenerState) -> bool {
    l.has_status && l.accepted.is_none() && l.protocol.is_some()
}

/// Marks each listener from `first` on that cannot be told apart from an earlier one (same
/// port with another protocol, or same port, protocol and hostname): the earlier one keeps the
/// port, the later one is Conflicted and not Accepted.
fn lose_to_earlier(states: &mut [ListenerState], owners: &[String], first: usize) {
    let (earlier, later) = states.split_at_mut(first);
    for l in later.iter_mut().filter(|l| contends(l)) {
        let clash = earlier
            .iter()
            .enumerate()
            .filter(|(_, e)| contends(e) && e.port == l.port)
            .find_map(|(j, e)| {
                if e.protocol != l.protocol {
                    Some(("ProtocolConflict", j, e))
                } else if e.hostname == l.hostname {
                    Some(("HostnameConflict", j, e))
                } else {
                    None
                }
            });
        let Some((reason, j, e)) = clash else {
            continue;
        };
        let owner = owners.get(j).map_or("the Gateway", String::as_str);
        let what = if reason == "ProtocolConflict" {
            "with another protocol"
        } else {
            "with the same hostname"
        };
        let p = Problem::new(
            reason,
            format!(
                "port {} is already used {what} by listener {:?} of {owner}, which takes precedence",
                l.port, e.name
            ),
        );
        l.conflicted = Some(p.clone());
        l.accepted = Some(p);
    }
}

/// `status.attachedListenerSets`: sets admitted by the Gateway with at least one valid
/// listener, while the Gateway is accepted (the sets that are `Accepted=True`).
pub(crate) fn attached_count(gw: &GatewayState, gateway_accepted: bool) -> i32 {
    if !gateway_accepted {
        return 0;
    }
    let n = (0..gw.sets.len())
        .filter(|&i| gw.sets[i].problem.is_none() && valid_listeners(gw, i).0 > 0)
        .count();
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// `(valid, all)` listeners of set `i` (those with a status entry).
fn valid_listeners(gw: &GatewayState, i: usize) -> (usize, usize) {
    let mine = gw
        .listeners
        .iter()
        .filter(|l| l.set == Some(i) && l.has_status);
    (mine.clone().filter(|l| l.valid()).count(), mine.count())
}

/// The status updates of the Gateway's ListenerSets (those whose indexed copy differs).
pub(crate) fn statuses(ctx: &Ctx<'_>, gw: &GatewayState) -> Vec<StatusUpdate> {
    let mut out = Vec::new();
    if gw.sets.is_empty() {
        return out;
    }
    let (gw_accepted, gw_programmed) = conditions(ctx, gw);
    for (i, s) in gw.sets.iter().enumerate() {
        let old = s.set.status.as_ref();
        let old_conditions = old
            .and_then(|o| o.conditions.as_deref())
            .unwrap_or_default();
        let old_listeners: Vec<GatewayStatusListeners> =
            recast_all(old.and_then(|o| o.listeners.as_deref()).unwrap_or_default());
        if is_stale(old_conditions, s.generation)
            || is_stale(
                old_listeners.iter().flat_map(|l| &l.conditions),
                s.generation,
            )
        {
            continue;
        }
        let (accepted, programmed) = set_conditions(gw, i, &gw_accepted, &gw_programmed);
        let listeners: Vec<ListenerSetStatusListeners> = if s.problem.is_some() {
            Vec::new()
        } else {
            let entries: Vec<GatewayStatusListeners> = gw
                .listeners
                .iter()
                .filter(|l| l.set == Some(i) && l.has_status)
                .map(|l| {
                    listener_status(
                        l,
                        &old_listeners,
                        gw_accepted.status,
                        &gw_programmed,
                        s.generation,
                        ctx.cfg.now,
                    )
                })
                .collect();
            recast_all(&entries)
        };
        let new = ListenerSetStatus {
            conditions: Some(merge_conditions(
                old_conditions,
                stamp_all(vec![accepted, programmed], s.generation, ctx.cfg.now),
                ctx.cfg.now,
            )),
            listeners: Some(listeners),
        };
        push_if_changed(
            ctx,
            &mut out,
            StatusKind::ListenerSet,
            Some(&s.key.namespace),
            &s.key.name,
            s.generation,
            old,
            &new,
        );
    }
    out
}

/// Set `i`'s `Accepted` and `Programmed`: its own problem, then its Gateway's acceptance, then
/// how many of its listeners are valid, then what the Gateway's `Programmed` says.
fn set_conditions(
    gw: &GatewayState,
    i: usize,
    gw_accepted: &Cond,
    gw_programmed: &Cond,
) -> (Cond, Cond) {
    let both = |reason: &'static str, message: String| {
        (
            Cond::new("Accepted", false, reason, message.clone()),
            Cond::new("Programmed", false, reason, message),
        )
    };
    if let Some(p) = gw.sets.get(i).and_then(|s| s.problem.as_ref()) {
        return both(p.reason, p.message.clone());
    }
    if !gw_accepted.status {
        return both(
            "ParentNotAccepted",
            format!(
                "Gateway {} is not accepted: {}",
                gw.key, gw_accepted.message
            ),
        );
    }
    let (valid, all) = valid_listeners(gw, i);
    let accepted = if valid == 0 {
        return both(
            "ListenersNotValid",
            if all == 0 {
                "the ListenerSet has no listener".to_string()
            } else {
                "no listener is valid".to_string()
            },
        );
    } else if valid < all {
        Cond::new(
            "Accepted",
            true,
            "ListenersNotValid",
            format!("{} of {all} listeners are not valid", all - valid),
        )
    } else {
        Cond::new(
            "Accepted",
            true,
            "Accepted",
            format!("listeners attached to Gateway {}", gw.key),
        )
    };
    let any_served = gw.listeners.iter().any(|l| l.set == Some(i) && l.served());
    let programmed = if !any_served {
        Cond::new("Programmed", false, "Invalid", "no listener can be served")
    } else if gw_programmed.status {
        Cond::new("Programmed", true, "Programmed", "served by the proxies")
    } else {
        Cond::new(
            "Programmed",
            false,
            "Pending",
            gw_programmed.message.clone(),
        )
    };
    (accepted, programmed)
}

/// The index of the set `key` among the Gateway's sets.
pub(crate) fn index_of(gw: &GatewayState, key: &ObjectKey) -> Option<usize> {
    gw.sets.iter().position(|s| s.key == *key)
}
