//! HTTPRoutes as the watcher reads them: the standard-channel type translation works with, plus
//! the experimental rule fields Meridian implements (`retry`, `sessionPersistence`; see
//! [`meridian_crds::rule_extras`]), which the standard type has no place for.
//!
//! ```text
//! watch event JSON ─┬─ HttpRoute (standard fields) ───► ClusterState::http_routes
//!                   └─ RuleExtras per rule (if any) ──► ClusterState::http_route_extras
//! ```
//!
//! Both halves are indexed under one key and replaced together, so translation never sees a
//! route with another version's extras. A change of only these fields still bumps the route's
//! `metadata.generation`, which [`Revision`](super::Revision) compares.

use std::sync::Arc;

use gateway_api::httproutes::HttpRoute;
use kube::Resource;
use meridian_crds::rule_extras::RuleExtras;
use serde::{Deserialize, Deserializer};

use super::{ClusterState, Indexed, Kind, ObjectKey, Revision};

/// Per rule, the experimental fields, or why they could not be read.
pub type RouteExtras = Arc<[Result<RuleExtras, String>]>;

/// An HTTPRoute with its experimental rule fields (the watcher's object type for HTTPRoutes).
#[derive(Clone, Debug)]
pub struct HttpRouteWithExtras {
    /// The standard-channel object.
    pub route: HttpRoute,
    /// Per rule, in rule order; empty when no rule uses the fields.
    pub extras: Vec<Result<RuleExtras, String>>,
}

impl HttpRouteWithExtras {
    /// Reads an HTTPRoute from its JSON form.
    pub fn from_json(value: serde_json::Value) -> Result<Self, serde_json::Error> {
        let extras = RuleExtras::of_route(&value);
        let route = serde_json::from_value(value)?;
        Ok(Self { route, extras })
    }
}

impl<'de> Deserialize<'de> for HttpRouteWithExtras {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        Self::from_json(value).map_err(serde::de::Error::custom)
    }
}

impl Resource for HttpRouteWithExtras {
    type DynamicType = ();
    type Scope = <HttpRoute as Resource>::Scope;

    fn kind(dt: &()) -> std::borrow::Cow<'_, str> {
        HttpRoute::kind(dt)
    }
    fn group(dt: &()) -> std::borrow::Cow<'_, str> {
        HttpRoute::group(dt)
    }
    fn version(dt: &()) -> std::borrow::Cow<'_, str> {
        HttpRoute::version(dt)
    }
    fn plural(dt: &()) -> std::borrow::Cow<'_, str> {
        HttpRoute::plural(dt)
    }
    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &self.route.metadata
    }
    fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &mut self.route.metadata
    }
}

impl Indexed for HttpRouteWithExtras {
    const KIND: Kind = Kind::HttpRoute;
    fn key(&self) -> Option<ObjectKey> {
        self.route.key()
    }
    fn insert(state: &mut ClusterState, key: ObjectKey, obj: Self) {
        if obj.extras.is_empty() {
            state.http_route_extras.remove(&key);
        } else {
            state
                .http_route_extras
                .insert(key.clone(), obj.extras.into());
        }
        HttpRoute::insert(state, key, obj.route);
    }
    fn remove(state: &mut ClusterState, key: &ObjectKey) {
        state.http_route_extras.remove(key);
        HttpRoute::remove(state, key);
    }
    fn clear(state: &mut ClusterState) {
        state.http_route_extras.clear();
        HttpRoute::clear(state);
    }
    fn revision(state: &ClusterState, key: &ObjectKey, new: &Self) -> Revision {
        let old = state
            .http_route_extras
            .get(key)
            .map(|e| &e[..])
            .unwrap_or_default();
        if old != new.extras.as_slice() {
            return Revision::Changed;
        }
        HttpRoute::revision(state, key, &new.route)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn extras_are_indexed_with_the_route_and_replaced_with_it() {
        let with = |retry: serde_json::Value| {
            HttpRouteWithExtras::from_json(json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"namespace": "ns", "name": "r", "generation": 1},
                "spec": {"rules": [{"retry": retry}]},
            }))
            .unwrap()
        };
        let key = ObjectKey::new("ns", "r");
        let mut state = ClusterState::default();
        let first = with(json!({"attempts": 2}));
        assert_eq!(
            HttpRouteWithExtras::revision(&state, &key, &first),
            Revision::Changed
        );
        assert!(state.apply(first.clone()));
        assert!(state.http_routes.contains_key(&key));
        assert_eq!(state.http_route_extras[&key].len(), 1);
        assert_eq!(
            HttpRouteWithExtras::revision(&state, &key, &first),
            Revision::Version
        );
        // Only the experimental field differs: still a change translation must see.
        let second = with(json!({"attempts": 3}));
        assert_eq!(
            HttpRouteWithExtras::revision(&state, &key, &second),
            Revision::Changed
        );
        // A version without the fields drops the old extras.
        let plain = HttpRouteWithExtras::from_json(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"namespace": "ns", "name": "r"}, "spec": {"rules": [{}]},
        }))
        .unwrap();
        state.apply(plain);
        assert!(!state.http_route_extras.contains_key(&key));
        state.apply(second);
        state.delete::<HttpRouteWithExtras>(&key);
        assert!(state.http_route_extras.is_empty() && state.http_routes.is_empty());
    }

    /// The watcher decodes objects through `Deserialize`: both halves come from one document.
    #[test]
    fn deserialize_reads_both_halves() {
        let text = r#"{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"namespace": "ns", "name": "r"},
            "spec": {"hostnames": ["a.example"], "rules": [
                {"backendRefs": [{"name": "s", "port": 80}],
                 "sessionPersistence": {"sessionName": "s", "type": "Header"}}]}}"#;
        let r: HttpRouteWithExtras = serde_json::from_str(text).unwrap();
        assert_eq!(
            r.route.spec.hostnames.as_deref(),
            Some(&["a.example".to_string()][..])
        );
        let sp = r.extras[0]
            .as_ref()
            .unwrap()
            .session_persistence
            .as_ref()
            .unwrap();
        assert_eq!(sp.kind.as_deref(), Some("Header"));
        // A broken standard field still fails the whole object, as before.
        assert!(serde_json::from_str::<HttpRouteWithExtras>(r#"{"spec": 1}"#).is_err());
    }
}
