//! BackendTLSPolicy → how the proxy connects to a Service's endpoints, and the policy's status.
//!
//! ```text
//! backendRef ""/Service ns/name port P ─► Service port P (its name N)
//!   ─► policies in ns with a targetRef Service name [sectionName N | none]
//!   ─► the one that takes precedence (a sectionName match before a whole-Service one, then the
//!      oldest creationTimestamp, then namespace/name)
//!   ─► valid: Backend.tls {hostname (SNI and verified name), CA PEM, subject alt names}
//!      invalid (every CA ref unusable, a ref of another kind, no CA at all):
//!          the backend is Invalid (the proxy answers 500, never cleartext) and the route's
//!          ResolvedRefs is False with the policy's reason
//! ```
//!
//! CA references: only core ConfigMaps of the policy's namespace, read from key `ca.crt`, which
//! must hold at least one PEM `CERTIFICATE` block. A reference of another group or kind gives
//! `ResolvedRefs=False/InvalidKind`; a missing ConfigMap, one without `ca.crt` or one whose
//! `ca.crt` holds no certificate gives `ResolvedRefs=False/InvalidCACertificateRef`; when no
//! reference is usable `Accepted` is also False (`NoValidCACertificate`). Any unusable reference
//! makes the backend Invalid: the spec requires connections that depend on it to fail.
//! `wellKnownCACertificates: System` is the proxy's system trust store (`ca_pem` absent).
//!
//! Backends of kind ServiceImport are not targeted (the policy's target kinds are Services of
//! the policy's own cluster and namespace).
//!
//! Status ([`policy_status`], recomputed every pass like FailoverPolicy's): one ancestor entry
//! per Gateway of an owned class that some HTTPRoute attaches to while referring to a targeted
//! Service; conditions `Accepted` (Accepted | Conflicted | NoValidCACertificate | Invalid |
//! TargetNotFound) and `ResolvedRefs` (ResolvedRefs | InvalidKind | InvalidCACertificateRef),
//! each with `observedGeneration`. Entries of other controllers are kept as they are. A policy
//! no route uses has no ancestor, and gets no status from us.

use std::collections::{BTreeMap, BTreeSet};

use gateway_api::backendtlspolicies::{
    BackendTlsPolicy, BackendTlsPolicyStatus, BackendTlsPolicyStatusAncestors,
    BackendTlsPolicyStatusAncestorsAncestorRef, BackendTlsPolicyTargetRefs,
    BackendTlsPolicyValidation, BackendTlsPolicyValidationCaCertificateRefs,
    BackendTlsPolicyValidationSubjectAltNames, BackendTlsPolicyValidationSubjectAltNamesType,
};
use gateway_api::httproutes::{HttpRouteParentRefs, HttpRouteRules};
use meridian_model::snapshot::{BackendTls, SubjectAltName};

use super::{Ctx, Problem, generation_of};
use crate::status::{
    Cond, GATEWAY_GROUP, StatusKind, StatusUpdate, is_stale, merge_conditions, stamp_all,
};
use crate::world::{CA_CERT_KEY, ClusterState, ObjectKey};

/// Condition reasons of the policy (Gateway API names).
const ACCEPTED: &str = "Accepted";
const RESOLVED_REFS: &str = "ResolvedRefs";
const REASON_CONFLICTED: &str = "Conflicted";
const REASON_NO_VALID_CA: &str = "NoValidCACertificate";
const REASON_INVALID_CA_REF: &str = "InvalidCACertificateRef";
const REASON_INVALID_KIND: &str = "InvalidKind";
const REASON_INVALID: &str = "Invalid";
const REASON_TARGET_NOT_FOUND: &str = "TargetNotFound";

/// What the dependency index keeps of a policy: target Service names, CA ConfigMap names.
pub(crate) fn policy_refs(p: &BackendTlsPolicy) -> (Vec<String>, Vec<String>) {
    let services = p
        .spec
        .target_refs
        .iter()
        .filter(|t| is_service(t))
        .map(|t| t.name.clone())
        .collect();
    let config_maps = p
        .spec
        .validation
        .ca_certificate_refs
        .iter()
        .flatten()
        .map(|r| r.name.clone())
        .collect();
    (services, config_maps)
}

fn is_service(t: &BackendTlsPolicyTargetRefs) -> bool {
    t.group.is_empty() && t.kind == "Service"
}

/// The policy's own verdict, independent of which backend uses it.
struct Verdict {
    /// The TLS settings, or why none can be used (the backend is then Invalid).
    tls: Result<BackendTls, Problem>,
    /// `Accepted` before conflicts and targets are considered.
    accepted: Cond,
    /// `ResolvedRefs`.
    resolved: Cond,
}

/// Judges one policy's validation block against the ConfigMaps of `cluster`.
fn judge(cluster: &ClusterState, key: &ObjectKey, p: &BackendTlsPolicy) -> Verdict {
    let BackendTlsPolicyValidation {
        ca_certificate_refs,
        hostname,
        subject_alt_names,
        well_known_ca_certificates,
    } = &p.spec.validation;
    let refs = ca_certificate_refs.as_deref().unwrap_or_default();
    let mut bad: Vec<Problem> = Vec::new();
    let mut bundle = String::new();
    for r in refs {
        match ca_of(cluster, &key.namespace, r) {
            Ok(pem) => {
                bundle.push_str(pem.trim_end());
                bundle.push('\n');
            }
            Err(p) => bad.push(p),
        }
    }
    let resolved = match bad.first() {
        None => Cond::new(
            RESOLVED_REFS,
            true,
            RESOLVED_REFS,
            "all references resolved",
        ),
        Some(first) => Cond::new(
            RESOLVED_REFS,
            false,
            first.reason,
            bad.iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    let invalid = |why: String| Problem::new(REASON_INVALID, why);
    let well_known = well_known_ca_certificates
        .as_deref()
        .filter(|w| !w.is_empty());
    let ca = match (refs.is_empty(), well_known) {
        (false, Some(_)) => Err(invalid(
            "caCertificateRefs and wellKnownCACertificates may not both be set".into(),
        )),
        (true, None) => Err(invalid(
            "one of caCertificateRefs or wellKnownCACertificates must be set".into(),
        )),
        (true, Some("System")) => Ok(None),
        (true, Some(other)) => Err(invalid(format!(
            "wellKnownCACertificates {other:?} is not supported (System)"
        ))),
        (false, None) if bad.len() == refs.len() => Err(Problem::new(
            REASON_NO_VALID_CA,
            "no caCertificateRef names a usable CA certificate",
        )),
        (false, None) => Ok(Some(bundle)),
    };
    let sans = subject_alt_names
        .iter()
        .flatten()
        .map(subject_alt_name)
        .collect::<Result<Vec<_>, _>>();
    let hostname_ok = !hostname.is_empty() && hostname.parse::<std::net::IpAddr>().is_err();
    let checked = match (ca, sans) {
        (Err(p), _) => Err(p),
        (_, Err(why)) => Err(invalid(why)),
        (Ok(_), Ok(_)) if !hostname_ok => {
            Err(invalid(format!("hostname {hostname:?} must be a DNS name")))
        }
        (Ok(ca_pem), Ok(subject_alt_names)) => Ok(BackendTls {
            hostname: hostname.clone(),
            ca_pem,
            subject_alt_names,
        }),
    };
    let accepted = match &checked {
        Ok(_) => Cond::new(ACCEPTED, true, ACCEPTED, "policy accepted"),
        Err(p) => Cond::new(ACCEPTED, false, p.reason, p.message.clone()),
    };
    // A reference that cannot be used fails the connections that depend on it, even when
    // other references are fine.
    let tls = match (checked, bad.first()) {
        (Ok(_), Some(first)) => Err(Problem::new(
            first.reason,
            format!("BackendTLSPolicy {key}: {}", first.message),
        )),
        (Ok(t), None) => Ok(t),
        (Err(p), _) => Err(Problem::new(
            p.reason,
            format!("BackendTLSPolicy {key}: {}", p.message),
        )),
    };
    Verdict {
        tls,
        accepted,
        resolved,
    }
}

/// The CA bundle a reference names, or why it cannot be used.
fn ca_of<'c>(
    cluster: &'c ClusterState,
    namespace: &str,
    r: &BackendTlsPolicyValidationCaCertificateRefs,
) -> Result<&'c str, Problem> {
    let BackendTlsPolicyValidationCaCertificateRefs { group, kind, name } = r;
    if !group.is_empty() || kind != "ConfigMap" {
        return Err(Problem::new(
            REASON_INVALID_KIND,
            format!(
                "caCertificateRef {name}: kind {kind:?} of group {group:?} is not supported (ConfigMap)"
            ),
        ));
    }
    let key = ObjectKey::new(namespace, name.as_str());
    match cluster.config_maps.get(&key) {
        None => Err(Problem::new(
            REASON_INVALID_CA_REF,
            format!("caCertificateRef {name}: ConfigMap {key} not found"),
        )),
        Some(None) => Err(Problem::new(
            REASON_INVALID_CA_REF,
            format!("caCertificateRef {name}: ConfigMap {key} has no key {CA_CERT_KEY}"),
        )),
        Some(Some(pem)) if !super::gateway::has_pem_block(pem, |l| l == "CERTIFICATE") => {
            Err(Problem::new(
                REASON_INVALID_CA_REF,
                format!(
                    "caCertificateRef {name}: {CA_CERT_KEY} of ConfigMap {key} holds no PEM certificate"
                ),
            ))
        }
        Some(Some(pem)) => Ok(pem),
    }
}

fn subject_alt_name(
    s: &BackendTlsPolicyValidationSubjectAltNames,
) -> Result<SubjectAltName, String> {
    let BackendTlsPolicyValidationSubjectAltNames {
        hostname,
        r#type,
        uri,
    } = s;
    let value = |v: &Option<String>, field: &str| {
        v.clone().filter(|v| !v.is_empty()).ok_or_else(
            || format!("a subjectAltName of type {type:?} needs {field}", type = r#type),
        )
    };
    match r#type {
        BackendTlsPolicyValidationSubjectAltNamesType::Hostname => {
            value(hostname, "hostname").map(SubjectAltName::Hostname)
        }
        BackendTlsPolicyValidationSubjectAltNamesType::Uri => {
            value(uri, "uri").map(SubjectAltName::Uri)
        }
    }
}

/// Sort key of the precedence rule: older first, then namespace/name.
fn age_key<'k>(key: &'k ObjectKey, p: &BackendTlsPolicy) -> (i64, i32, &'k ObjectKey) {
    let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    (
        created.map_or(i64::MAX, |t| t.as_second()),
        created.map_or(0, |t| t.subsec_nanosecond()),
        key,
    )
}

/// The port name of Service `namespace/service` port `port` (`None`: no such Service or port).
fn port_name(cluster: &ClusterState, namespace: &str, service: &str, port: i32) -> Option<String> {
    let svc = cluster.service(&ObjectKey::new(namespace, service))?;
    let ports = svc.spec.as_ref()?.ports.as_ref()?;
    let p = ports.iter().find(|p| p.port == port)?;
    Some(p.name.clone().unwrap_or_default())
}

/// The policies that name Service `namespace/service` port `port_name`, highest precedence
/// first: a sectionName match before a whole-Service target, then the oldest.
fn candidates<'c>(
    cluster: &'c ClusterState,
    namespace: &str,
    service: &str,
    port_name: &str,
) -> Vec<(&'c ObjectKey, &'c BackendTlsPolicy)> {
    let mut found: Vec<(bool, (i64, i32, &ObjectKey), &BackendTlsPolicy)> = Vec::new();
    for (k, p) in &cluster.backend_tls_policies {
        if k.namespace != namespace {
            continue;
        }
        let mut best: Option<bool> = None;
        for t in p.spec.target_refs.iter().filter(|t| is_service(t)) {
            if t.name != service {
                continue;
            }
            match t.section_name.as_deref().filter(|s| !s.is_empty()) {
                None => best = Some(best.unwrap_or(false)),
                Some(s) if s == port_name => best = Some(true),
                Some(_) => {}
            }
        }
        if let Some(specific) = best {
            found.push((!specific, age_key(k, p), p.as_ref()));
        }
    }
    found.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    found.into_iter().map(|(_, (_, _, k), p)| (k, p)).collect()
}

/// The TLS settings for a Service backend (`Ok(None)`: no policy applies, cleartext), or why
/// the policy that applies cannot be met.
pub(crate) fn for_service(
    ctx: &Ctx<'_>,
    namespace: &str,
    service: &str,
    port: Option<i32>,
) -> Result<Option<BackendTls>, Problem> {
    let cluster = ctx.cluster;
    if cluster.backend_tls_policies.is_empty() {
        return Ok(None);
    }
    let Some(port_name) = port.and_then(|p| port_name(cluster, namespace, service, p)) else {
        return Ok(None);
    };
    match candidates(cluster, namespace, service, &port_name).first() {
        None => Ok(None),
        Some((key, p)) => judge(cluster, key, p).tls.map(Some),
    }
}

/// The status of every BackendTLSPolicy of the cluster that some route of ours uses, where it
/// differs from the indexed copy.
pub(crate) fn policy_status(ctx: &Ctx<'_>, out: &mut Vec<StatusUpdate>) {
    let cluster = ctx.cluster;
    if cluster.backend_tls_policies.is_empty() {
        return;
    }
    let ancestors = ancestors_by_service(ctx);
    for (key, policy) in &cluster.backend_tls_policies {
        let mut gateways: BTreeSet<&ObjectKey> = BTreeSet::new();
        for t in policy.spec.target_refs.iter().filter(|t| is_service(t)) {
            let svc = ObjectKey::new(key.namespace.as_str(), t.name.as_str());
            gateways.extend(ancestors.get(&svc).into_iter().flatten());
        }
        let generation = generation_of(&policy.metadata);
        let old = policy.status.as_ref();
        let old_ancestors = old.map(|s| s.ancestors.as_slice()).unwrap_or_default();
        if is_stale(old_ancestors.iter().flat_map(|a| &a.conditions), generation) {
            continue;
        }
        let ours =
            |a: &&BackendTlsPolicyStatusAncestors| a.controller_name == ctx.cfg.controller_name;
        if gateways.is_empty() && !old_ancestors.iter().any(|a| ours(&a)) {
            continue;
        }
        let verdict = judge(cluster, key, policy);
        let accepted = match (verdict.accepted.status, conflict(cluster, key, policy)) {
            (true, Some(winner)) => Cond::new(
                ACCEPTED,
                false,
                REASON_CONFLICTED,
                format!("BackendTLSPolicy {winner} takes precedence for the same target"),
            ),
            (true, None) => match missing_target(cluster, key, policy) {
                Some(why) => Cond::new(ACCEPTED, false, REASON_TARGET_NOT_FOUND, why),
                None => verdict.accepted,
            },
            (false, _) => verdict.accepted,
        };
        let conds = vec![accepted, verdict.resolved];
        let mut list: Vec<BackendTlsPolicyStatusAncestors> =
            old_ancestors.iter().filter(|a| !ours(a)).cloned().collect();
        for gw in gateways {
            let previous = old_ancestors
                .iter()
                .find(|a| {
                    ours(a)
                        && a.ancestor_ref.name == gw.name
                        && a.ancestor_ref.namespace.as_deref() == Some(gw.namespace.as_str())
                })
                .map(|a| a.conditions.as_slice())
                .unwrap_or_default();
            list.push(BackendTlsPolicyStatusAncestors {
                ancestor_ref: BackendTlsPolicyStatusAncestorsAncestorRef {
                    group: Some(GATEWAY_GROUP.to_string()),
                    kind: Some("Gateway".to_string()),
                    name: gw.name.clone(),
                    namespace: Some(gw.namespace.clone()),
                    port: None,
                    section_name: None,
                },
                conditions: merge_conditions(
                    previous,
                    stamp_all(conds.clone(), generation, ctx.cfg.now),
                    ctx.cfg.now,
                ),
                controller_name: ctx.cfg.controller_name.clone(),
            });
        }
        // The CRD allows 16 ancestors.
        list.truncate(16);
        let new = BackendTlsPolicyStatus { ancestors: list };
        super::gateway::push_if_changed(
            ctx,
            out,
            StatusKind::BackendTlsPolicy,
            Some(&key.namespace),
            &key.name,
            generation,
            old,
            &new,
        );
    }
}

/// The policy that takes precedence over `key` for one of its targets, if any.
fn conflict(cluster: &ClusterState, key: &ObjectKey, p: &BackendTlsPolicy) -> Option<ObjectKey> {
    let mine = age_key(key, p);
    for t in p.spec.target_refs.iter().filter(|t| is_service(t)) {
        let section = t.section_name.as_deref().unwrap_or_default();
        for (k, other) in &cluster.backend_tls_policies {
            if k == key || k.namespace != key.namespace {
                continue;
            }
            let same = other.spec.target_refs.iter().any(|o| {
                is_service(o)
                    && o.name == t.name
                    && o.section_name.as_deref().unwrap_or_default() == section
            });
            if same && age_key(k, other) < mine {
                return Some(k.clone());
            }
        }
    }
    None
}

/// Why a target Service (or its named port) does not exist, if one does not.
fn missing_target(cluster: &ClusterState, key: &ObjectKey, p: &BackendTlsPolicy) -> Option<String> {
    for t in &p.spec.target_refs {
        if !is_service(t) {
            return Some(format!(
                "targetRef {}: kind {:?} of group {:?} is not supported (Service)",
                t.name, t.kind, t.group
            ));
        }
        let svc_key = ObjectKey::new(key.namespace.as_str(), t.name.as_str());
        let Some(svc) = cluster.service(&svc_key) else {
            return Some(format!("Service {svc_key} not found"));
        };
        if let Some(section) = t.section_name.as_deref().filter(|s| !s.is_empty()) {
            let has_port = svc
                .spec
                .as_ref()
                .and_then(|s| s.ports.as_ref())
                .is_some_and(|ps| ps.iter().any(|p| p.name.as_deref() == Some(section)));
            if !has_port {
                return Some(format!("Service {svc_key} has no port named {section:?}"));
            }
        }
    }
    None
}

/// Service → the Gateways (of owned classes) that routes (HTTPRoutes and GRPCRoutes) referring
/// to it attach to.
fn ancestors_by_service(ctx: &Ctx<'_>) -> BTreeMap<ObjectKey, BTreeSet<ObjectKey>> {
    let cluster = ctx.cluster;
    let mut out: BTreeMap<ObjectKey, BTreeSet<ObjectKey>> = BTreeMap::new();
    for (rkey, route) in &cluster.http_routes {
        note_ancestors(
            ctx,
            rkey,
            route.spec.parent_refs.iter().flatten(),
            route.spec.rules.iter().flatten(),
            &mut out,
        );
    }
    for (rkey, route) in &cluster.grpc_routes {
        // The HTTPRoute shapes of module `grpc` (same parentRef and backendRef fields).
        let converted = super::grpc::convert(route);
        note_ancestors(
            ctx,
            rkey,
            converted.parent_refs.iter(),
            converted.rules.iter(),
            &mut out,
        );
    }
    out
}

/// Adds the owned Gateways route `rkey` attaches to under every Service its rules refer to.
fn note_ancestors<'a>(
    ctx: &Ctx<'_>,
    rkey: &ObjectKey,
    parent_refs: impl Iterator<Item = &'a HttpRouteParentRefs>,
    rules: impl Iterator<Item = &'a HttpRouteRules>,
    out: &mut BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
) {
    let cluster = ctx.cluster;
    let owned = |gw: &ObjectKey| {
        cluster.gateways.get(gw).is_some_and(|g| {
            cluster
                .gateway_classes
                .get(&g.spec.gateway_class_name)
                .is_some_and(|c| c.spec.controller_name == ctx.cfg.controller_name)
        })
    };
    let parents: Vec<ObjectKey> = parent_refs
        .filter(|p| {
            p.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
                && p.kind.as_deref().unwrap_or("Gateway") == "Gateway"
        })
        .map(|p| {
            ObjectKey::new(
                p.namespace.as_deref().unwrap_or(&rkey.namespace),
                p.name.as_str(),
            )
        })
        .filter(|g| owned(g))
        .collect();
    if parents.is_empty() {
        return;
    }
    for rule in rules {
        for b in rule.backend_refs.iter().flatten() {
            if !b.group.as_deref().unwrap_or("").is_empty()
                || b.kind.as_deref().unwrap_or("Service") != "Service"
            {
                continue;
            }
            let svc = ObjectKey::new(
                b.namespace.as_deref().unwrap_or(&rkey.namespace),
                b.name.as_str(),
            );
            out.entry(svc).or_default().extend(parents.iter().cloned());
        }
    }
}
