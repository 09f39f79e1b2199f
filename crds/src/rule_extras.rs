//! The two experimental-channel fields of an HTTPRoute rule Meridian implements: `retry`
//! (GEP-1731) and `sessionPersistence`.
//!
//! Our HTTPRoute CRD is the standard channel's (the `gateway-api` crate's standard types,
//! `gateway.networking.k8s.io/channel: standard`) plus these two optional rule fields. A
//! standard-only manifest stays valid unchanged; a manifest written for the experimental
//! channel that uses them is accepted and validated the way the experimental schema validates
//! them (types, enums, ranges, duration patterns and the CEL rules below). Without the fields in
//! the schema an API server would prune them on write and the controller would never see them.
//!
//! ```text
//! HttpRoute::crd() ─► add_rule_fields (this module: schema of retry, sessionPersistence)
//!                 ─► gateway_rules (standard validation; the paths below are checked too)
//! controller watch ─► RuleExtras::of_route (the same fields, read from the object's JSON)
//! ```
//!
//! The schema is written here from the field documentation; the Rust types read the same
//! fields back (the controller's standard `HttpRoute` type has no place for them).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::schema::lookup_mut;

/// `rules[].retry`: when and how often the Gateway repeats a request to the backend.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleRetry {
    /// Retries after the first try (unset: implementation-specific; Meridian uses 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i64>,
    /// Minimum pause before each retry (Gateway API duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
    /// Response codes that are retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codes: Option<Vec<i64>>,
}

/// `rules[].sessionPersistence`: requests of one session keep going to one endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleSessionPersistence {
    /// Name of the cookie or header carrying the session token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_name: Option<String>,
    /// `Cookie` (default) or `Header`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The session ends this long after it began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absolute_timeout: Option<String>,
    /// The session ends after this long without a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// Cookie settings (type `Cookie` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_config: Option<CookieConfig>,
}

/// `sessionPersistence.cookieConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CookieConfig {
    /// `Session` (default: the browser drops the cookie when it closes) or `Permanent`
    /// (expires after `absoluteTimeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_type: Option<String>,
}

/// The experimental fields of one rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleExtras {
    /// `rules[i].retry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RuleRetry>,
    /// `rules[i].sessionPersistence`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_persistence: Option<RuleSessionPersistence>,
}

impl RuleExtras {
    /// Whether the rule uses none of the fields.
    pub fn is_empty(&self) -> bool {
        self.retry.is_none() && self.session_persistence.is_none()
    }

    /// The fields of every rule of an HTTPRoute given as JSON (the whole object), in rule
    /// order; empty when no rule uses them. A rule whose fields do not have the expected shape
    /// (possible only without our CRD's validation) reads as `Err` with the reason, so the
    /// controller can refuse that rule instead of ignoring the field.
    pub fn of_route(route: &Value) -> Vec<Result<RuleExtras, String>> {
        let Some(rules) = route.pointer("/spec/rules").and_then(Value::as_array) else {
            return Vec::new();
        };
        let out: Vec<Result<RuleExtras, String>> = rules
            .iter()
            .map(|r| {
                let pick = json!({
                    "retry": r.get("retry"),
                    "sessionPersistence": r.get("sessionPersistence"),
                });
                serde_json::from_value::<RuleExtras>(strip_null(pick))
                    .map_err(|e| format!("unreadable retry or sessionPersistence: {e}"))
            })
            .collect();
        if out.iter().all(|e| matches!(e, Ok(x) if x.is_empty())) {
            return Vec::new();
        }
        out
    }
}

/// Removes `null` members of an object (absent fields read as `null` through `get`).
fn strip_null(mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.retain(|_, x| !x.is_null());
    }
    v
}

/// Gateway API duration: up to four `<number><unit>` parts, units h, m, s, ms.
pub const DURATION: &str = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$";

/// The schema of `rules[].retry`.
fn retry_schema() -> Value {
    json!({
        "type": "object",
        "description": "When and how often the Gateway retries a request to the backend (experimental channel).",
        "properties": {
            "attempts": {
                "type": "integer",
                "description": "How many times a request is retried after the first try.",
                "minimum": 0
            },
            "backoff": {
                "type": "string",
                "description": "Minimum pause before each retry (duration, e.g. 100ms).",
                "pattern": DURATION
            },
            "codes": {
                "type": "array",
                "description": "Response status codes that are retried (400-599).",
                "items": {"type": "integer", "minimum": 400, "maximum": 599},
                "x-kubernetes-list-type": "set"
            }
        }
    })
}

/// The schema of `rules[].sessionPersistence`.
fn session_persistence_schema() -> Value {
    json!({
        "type": "object",
        "description": "Keeps the requests of one session on one endpoint (experimental channel).",
        "properties": {
            "sessionName": {
                "type": "string",
                "description": "Name of the cookie or header that carries the session.",
                "maxLength": 128
            },
            "type": {
                "type": "string",
                "description": "Cookie (default) or Header.",
                "enum": ["Cookie", "Header"],
                "default": "Cookie"
            },
            "absoluteTimeout": {
                "type": "string",
                "description": "The session ends this long after it began.",
                "pattern": DURATION
            },
            "idleTimeout": {
                "type": "string",
                "description": "The session ends after this long without a request.",
                "pattern": DURATION
            },
            "cookieConfig": {
                "type": "object",
                "description": "Cookie settings.",
                "properties": {
                    "lifetimeType": {
                        "type": "string",
                        "description": "Session (default) or Permanent (expires after absoluteTimeout).",
                        "enum": ["Permanent", "Session"],
                        "default": "Session"
                    }
                }
            }
        },
        "x-kubernetes-validations": [
            {
                "rule": "!has(self.cookieConfig) || !has(self.cookieConfig.lifetimeType) || self.cookieConfig.lifetimeType != 'Permanent' || has(self.absoluteTimeout)",
                "message": "absoluteTimeout must be set when cookieConfig.lifetimeType is Permanent"
            },
            {
                "rule": "!has(self.cookieConfig) || !has(self.type) || self.type == 'Cookie'",
                "message": "cookieConfig may only be set when type is Cookie"
            }
        ]
    })
}

/// Adds `retry` and `sessionPersistence` to `spec.rules[]` of every version of the HTTPRoute
/// CRD. Returns the versions where `spec.rules[]` was not found (a `gateway-api` upgrade moved
/// it), so the tests fail instead of the fields going missing.
pub(crate) fn add_rule_fields(crd: &mut CustomResourceDefinition) -> Vec<String> {
    let mut misses = Vec::new();
    let fields = [
        ("retry", retry_schema()),
        ("sessionPersistence", session_persistence_schema()),
    ];
    for version in &mut crd.spec.versions {
        let rule = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|root| lookup_mut(root, "spec.rules[]"));
        let Some(props) = rule.and_then(|r| r.properties.as_mut()) else {
            misses.push(format!("HTTPRoute {}: no field spec.rules[]", version.name));
            continue;
        };
        for (name, schema) in &fields {
            match serde_json::from_value::<JSONSchemaProps>(schema.clone()) {
                Ok(s) => {
                    props.insert((*name).to_string(), s);
                }
                Err(e) => misses.push(format!("HTTPRoute {}: {name}: {e}", version.name)),
            }
        }
    }
    misses
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn extras_are_read_per_rule_and_empty_when_unused() {
        let plain = json!({"spec": {"rules": [{"backendRefs": []}]}});
        assert!(RuleExtras::of_route(&plain).is_empty());
        let route = json!({"spec": {"rules": [
            {"backendRefs": []},
            {"retry": {"attempts": 3, "codes": [500, 502], "backoff": "10ms"}},
            {"sessionPersistence": {"sessionName": "s", "type": "Header",
                                    "cookieConfig": {"lifetimeType": "Permanent"}}},
            {"retry": {"attempts": "many"}},
        ]}});
        let got = RuleExtras::of_route(&route);
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], Ok(RuleExtras::default()));
        assert_eq!(
            got[1].as_ref().unwrap().retry,
            Some(RuleRetry {
                attempts: Some(3),
                backoff: Some("10ms".into()),
                codes: Some(vec![500, 502]),
            })
        );
        let sp = got[2]
            .as_ref()
            .unwrap()
            .session_persistence
            .clone()
            .unwrap();
        assert_eq!(sp.kind.as_deref(), Some("Header"));
        assert_eq!(
            sp.cookie_config.unwrap().lifetime_type.as_deref(),
            Some("Permanent")
        );
        assert!(got[3].is_err(), "{:?}", got[3]);
    }
}
