//! One cluster's object store: typed objects, the resourceVersion counter and the event history.
//!
//! Flow of a write (all under the cluster's mutex, no awaits):
//! 1. the HTTP layer decodes the body (and applies patches) into a candidate object;
//! 2. [`State::create`] / [`State::update`] / [`State::delete`] validate it, fill server-owned
//!    metadata (uid, creationTimestamp, generation, deletionTimestamp), enforce resourceVersion
//!    preconditions and the status-subresource split, and skip no-op writes;
//! 3. a real change takes the next resourceVersion of the cluster-wide counter and is appended
//!    to the bounded event history that watches read from (see `watch`), and, when the cluster
//!    persists, to the journal the log writer drains (see `persist`).
//!
//! Cost per write does not grow with the store (issue #20): objects are kept per kind, each
//! kind in a `BTreeMap` by `(namespace, name)`, as `Arc<Stored>` shared with the history events
//! (a write clones its object once, a snapshot for persistence clones pointers, not objects);
//! a list or watch of one kind reads only that kind's map, and of one namespace only that
//! namespace's key range; each stored object version is encoded to JSON at most once
//! ([`Stored::json`]), and lists, responses, watch events and log records copy those bytes
//! instead of serialising the object again; the history is indexed by kind, so a watch collects only its kind's
//! events, and the kinds a write touched are reported ([`State::take_touched`]) so only their
//! watches wake; Service cluster IPs come from an index of the allocated ones, not a scan of
//! every Service.
//!
//! The history window is shared by the cluster (`history_window` events in all, and beyond that
//! count every event younger than the retention age, up to a cap: [`State::set_retention`]), but how far
//! back a watch may resume is tracked per kind, as a real API server's watch cache does per
//! resource: trimming the window expires a kind's resumes only once one of *its* events falls
//! out, so a quiet kind's watch is not sent 410 because other kinds were busy.
//!
//! Kind-specific hooks: Namespaces get `status.phase` and the `kubernetes.io/metadata.name`
//! label, and deleting one marks it Terminating, deletes its contents and removes it once empty;
//! Services get a cluster IP; CRDs register their type (and get Established/NamesAccepted status),
//! and deleting a CRD removes its type and all its objects.

use crate::error::ApiError;
use crate::registry::{Registry, ResourceType, crd_to_type};
use crate::util::{meta_mut, meta_str, name_of, namespace_of, now_rfc3339, random_suffix};
use bytes::Bytes;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// `(namespace, name)`; the namespace is "" for cluster-scoped objects.
pub type ObjKey = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One stored object version: the object, and its JSON encoding once something needed it.
///
/// Why: the same version is sent many times (every list, the write's response, one watch event
/// per watcher, the persistence log, snapshots), and serialising a `Value` was a fifth of the
/// local API's CPU in a cold start (issue #20). The encoding is made on first use, off the
/// cluster lock (whoever reads the version first pays, once), and shared: every later reader
/// copies bytes. It is exactly what `serde_json` writes for the `Value`, so any output built
/// from it is byte-for-byte what encoding the `Value` in place gave.
///
/// A version is immutable once shared; the only way to change the object ([`Stored::value_mut`])
/// needs it exclusively and drops the encoding. A version that stops being the live one drops
/// its encoding too ([`Stored::forget_json`]): the watch history keeps it (as the object of its
/// own event and as the `prev` of the next) for watchers that fall behind, which seldom need its
/// bytes again, so a write burst does not hold two copies (object and bytes) of every version
/// it replaced.
#[derive(Debug)]
pub struct Stored {
    value: Value,
    /// Made on first use, under this lock so that concurrent readers encode once.
    json: Mutex<Option<Bytes>>,
}

impl Clone for Stored {
    fn clone(&self) -> Stored {
        Stored {
            value: self.value.clone(),
            json: Mutex::new(self.cached()),
        }
    }
}

impl Stored {
    pub fn new(value: Value) -> Stored {
        Stored {
            value,
            json: Mutex::new(None),
        }
    }

    pub fn value(&self) -> &Value {
        &self.value
    }

    fn slot(&self) -> MutexGuard<'_, Option<Bytes>> {
        self.json.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cached(&self) -> Option<Bytes> {
        self.slot().clone()
    }

    /// The object encoded as compact JSON (shared bytes), made on the first call.
    pub fn json(&self) -> Bytes {
        // serde_json's compact encoder into bytes (it cannot fail: map keys are strings; the
        // Display fallback, the same encoder through `fmt`, is slower: it goes through a
        // formatter per piece written).
        self.slot()
            .get_or_insert_with(|| {
                Bytes::from(
                    serde_json::to_vec(&self.value)
                        .unwrap_or_else(|_| self.value.to_string().into_bytes()),
                )
            })
            .clone()
    }

    /// Drops the encoding (made again if asked for): the version was replaced.
    pub fn forget_json(&self) {
        self.slot().take();
    }

    /// Whether the encoding is held now.
    pub fn has_json(&self) -> bool {
        self.slot().is_some()
    }

    /// The object to change; the encoding (now stale) is dropped.
    pub fn value_mut(&mut self) -> &mut Value {
        *self.json.get_mut().unwrap_or_else(|p| p.into_inner()) = None;
        &mut self.value
    }

    pub fn into_value(self) -> Value {
        self.value
    }

    /// The object of a shared version: moved out if this was the last pointer, else copied.
    pub fn unshare(this: Arc<Stored>) -> Value {
        Arc::unwrap_or_clone(this).value
    }
}

impl std::ops::Deref for Stored {
    type Target = Value;

    fn deref(&self) -> &Value {
        &self.value
    }
}

impl PartialEq for Stored {
    fn eq(&self, other: &Stored) -> bool {
        self.value == other.value
    }
}

/// One change, as kept in the history window (and handed to the log writer).
#[derive(Debug, PartialEq)]
pub struct Event {
    pub rv: u64,
    /// The resource type key (`plural.group`).
    pub res: String,
    pub etype: EventType,
    /// The object after the change (for DELETED: the last state, with the deletion's RV).
    pub obj: Arc<Stored>,
    /// The object before a MODIFIED change, so selector watches can turn it into ADDED/DELETED.
    pub prev: Option<Arc<Stored>>,
    /// When it was committed: the window keeps young events beyond its count (see
    /// [`State::set_retention`]).
    pub at: Instant,
}

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// The main resource: for kinds with a status subresource, `status` is kept from the live object.
    Main,
    /// The `status` subresource: only `status` (and SSA bookkeeping in managedFields) changes.
    Status,
}

/// Why a persisted snapshot cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot has no objects array")]
    NoObjects,
}

/// Result of a DELETE.
#[derive(Debug, Clone, PartialEq)]
pub enum DeleteOutcome {
    /// Gone now; the last state of the object.
    Deleted(Value),
    /// Finalizers hold it; it now carries a deletionTimestamp.
    Pending(Value),
}

const DEFAULT_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];
const NS_NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub struct State {
    /// The last resourceVersion handed out.
    pub rv: u64,
    pub registry: Registry,
    /// Per kind (type key), per `(namespace, name)`.
    objects: BTreeMap<String, BTreeMap<ObjKey, Arc<Stored>>>,
    /// The window, all kinds in resourceVersion order (it decides what falls out).
    history: VecDeque<Arc<Event>>,
    /// The same events by kind, so a watch reads only its own.
    kind_history: HashMap<String, KindHistory>,
    /// Every kind's resumes expire at or below this: the history was dropped as a whole
    /// ([`State::compact`]) or started empty (a restored state).
    pub compacted_through: u64,
    /// The resourceVersion of the last event (of any kind) that fell out of the window.
    trimmed_through: u64,
    history_window: usize,
    /// Events younger than this stay in the window past `history_window`, up to
    /// `history_cap` events (see [`State::set_retention`]).
    history_min_age: Duration,
    history_cap: usize,
    /// Kinds written since the last [`State::take_touched`] (a handful per write).
    touched: Vec<String>,
    /// Committed events the log writer has not taken yet; `None` when not persisting.
    journal: Option<Vec<Arc<Event>>>,
    /// Cluster IPs held by Services, so allocating one does not scan every Service.
    cluster_ips: BTreeSet<String>,
    /// Where the next cluster IP search starts (see [`State::free_cluster_ip`]).
    next_cluster_ip: u32,
    /// `fieldValidation` of the request being served (see [`State::with_field_validation`]).
    pub field_validation: crate::schema::FieldValidation,
}

/// One kind's events in the window and how far its resumes have expired.
#[derive(Debug, Default)]
struct KindHistory {
    events: VecDeque<Arc<Event>>,
    /// The resourceVersion of this kind's last event that fell out of the window.
    expired_through: u64,
}

/// One record of the persistence log, replayed by [`State::replay`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayOp {
    /// The object as stored (created or updated).
    Put,
    /// The object is gone (the record carries enough of it to find it: apiVersion, kind,
    /// namespace, name).
    Delete,
}

/// The first IPv4 address handed out to Services (10.96.0.1) and how many there are.
const CLUSTER_IP_FIRST: u32 = 10;
const CLUSTER_IP_END: u32 = 65_000;

fn cluster_ip(n: u32) -> String {
    format!("10.96.{}.{}", n / 250, n % 250 + 1)
}

fn cluster_ip_of(obj: &Value) -> Option<&str> {
    obj.get("spec")?
        .get("clusterIP")?
        .as_str()
        .filter(|ip| !ip.is_empty() && *ip != "None")
}

fn is_service(rt: &ResourceType) -> bool {
    rt.group.is_empty() && rt.plural == "services"
}

fn is_namespace(rt: &ResourceType) -> bool {
    rt.group.is_empty() && rt.plural == "namespaces"
}

fn is_crd(rt: &ResourceType) -> bool {
    rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions"
}

/// The version part of an object's `apiVersion`.
fn version_of(obj: &Value) -> &str {
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    api_version.rsplit('/').next().unwrap_or(api_version)
}

fn rv_of(obj: &Value) -> &str {
    meta_str(obj, "resourceVersion")
}

/// Sets `apiVersion` to `version` of the type (objects are stored in the storage version).
pub fn to_version(mut obj: Value, rt: &ResourceType, version: &str) -> Value {
    if let Value::Object(m) = &mut obj {
        m.insert("apiVersion".into(), json!(rt.api_version(version)));
        m.insert("kind".into(), json!(rt.kind));
    }
    obj
}

/// Whether `obj` already says what [`to_version`] would set: `apiVersion` of `version` of the
/// type and its `kind` (then its stored encoding can be sent as it is).
pub fn in_version(obj: &Value, rt: &ResourceType, version: &str) -> bool {
    obj.get("kind").and_then(Value::as_str) == Some(rt.kind.as_str())
        && obj.get("apiVersion").and_then(Value::as_str) == Some(rt.api_version(version).as_str())
}

/// Whether two objects are equal in every top-level member but `spec`.
fn same_but_spec(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let rest = |(k, _): &(&String, &Value)| *k != "spec";
            a.iter().filter(rest).eq(b.iter().filter(rest))
        }
        _ => a == b,
    }
}

/// Whether the change from `old` to `new` bumps `metadata.generation`: a `spec` change, or for
/// kinds without spec any change outside metadata and status.
fn generation_changed(old: &Value, new: &Value) -> bool {
    if old.get("spec").is_some() || new.get("spec").is_some() {
        return old.get("spec") != new.get("spec");
    }
    let strip = |v: &Value| -> Value {
        let mut v = v.clone();
        if let Value::Object(m) = &mut v {
            for k in ["metadata", "status", "apiVersion", "kind"] {
                m.remove(k);
            }
        }
        v
    };
    strip(old) != strip(new)
}

fn valid_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Why a name is not a path segment (the rule for RBAC objects, whose names such as
/// `system:auth-delegator` are not DNS subdomains), worded as the real validation words it.
fn path_segment_error(s: &str) -> Option<String> {
    match s {
        "." | ".." => Some(format!("may not be '{s}'")),
        _ => ['/', '%']
            .into_iter()
            .find(|c| s.contains(*c))
            .map(|c| format!("may not contain '{c}'")),
    }
}

/// Why `name` cannot name an object of `rt`: RBAC objects need a path segment, namespaces a DNS
/// label, everything else a DNS subdomain.
fn name_error(rt: &ResourceType, name: &str) -> Option<String> {
    if rt.group == crate::rbac::GROUP {
        return path_segment_error(name);
    }
    let ok = if rt.namespaced || !is_namespace(rt) {
        valid_dns_subdomain(name)
    } else {
        valid_dns_label(name)
    };
    (!ok).then(|| "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".to_string())
}

fn valid_dns_label(s: &str) -> bool {
    s.len() <= 63 && !s.contains('.') && valid_dns_subdomain(s)
}

/// Checks `apiVersion`/`kind` of a written object against the type addressed by the URL.
pub fn check_type(rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    let Value::Object(m) = obj else {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    };
    let kind = m.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind.is_empty() {
        return Err(ApiError::bad_request(format!(
            "Object 'Kind' is missing in '{}'",
            truncate(&obj.to_string(), 200)
        )));
    }
    if kind != rt.kind {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            rt.kind
        )));
    }
    let api_version = m.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    if group != rt.group || !rt.serves(version) {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            rt.api_version(rt.preferred_version())
        )));
    }
    Ok(())
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Validates the shape of `metadata` fields clients may set.
fn check_metadata(obj: &Value) -> Result<(), ApiError> {
    let Some(meta) = obj.get("metadata") else {
        return Ok(());
    };
    let Value::Object(meta) = meta else {
        return Err(ApiError::bad_request("metadata must be an object"));
    };
    for field in ["labels", "annotations"] {
        match meta.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) if m.values().all(Value::is_string) => {}
            Some(_) => {
                return Err(ApiError::bad_request(format!(
                    "metadata.{field} must be a map of string keys to string values"
                )));
            }
        }
    }
    match meta.get("finalizers") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "metadata.finalizers must be a list of strings",
            ));
        }
    }
    for field in [
        "name",
        "namespace",
        "generateName",
        "resourceVersion",
        "uid",
    ] {
        match meta.get(field) {
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(_) => {
                return Err(ApiError::bad_request(format!(
                    "metadata.{field} must be a string"
                )));
            }
        }
    }
    Ok(())
}

/// A PUT body names its object as the URL does (or not at all: the URL's name is filled in).
fn name_from_url(new: &mut Value, name: &str) -> Result<(), ApiError> {
    let body_name = name_of(new).to_string();
    if body_name.is_empty() {
        meta_mut(new).insert("name".into(), json!(name));
    } else if body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    Ok(())
}

/// The object an update would store, before server-owned metadata: a status write changes only
/// `status` (and the SSA bookkeeping in managedFields) of the live object; a main-resource write
/// of a kind with a status subresource keeps the live `status`.
fn update_candidate(rt: &ResourceType, old: &Value, mut new: Value, mode: WriteMode) -> Value {
    let mut cand = match mode {
        WriteMode::Status => {
            // The live object without its status (not copied only to be replaced), then the
            // body's status and managedFields, moved out of the body.
            let mut c = match old {
                Value::Object(m) => Value::Object(
                    m.iter()
                        .filter(|(k, _)| *k != "status")
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                ),
                other => other.clone(),
            };
            let (status, mf) = match &mut new {
                Value::Object(m) => (
                    m.remove("status"),
                    m.get_mut("metadata")
                        .and_then(Value::as_object_mut)
                        .and_then(|meta| meta.remove("managedFields")),
                ),
                _ => (None, None),
            };
            if let (Value::Object(m), Some(s)) = (&mut c, status) {
                m.insert("status".into(), s);
            }
            if let Some(mf) = mf {
                meta_mut(&mut c).insert("managedFields".into(), mf);
            }
            c
        }
        WriteMode::Main => {
            if rt.status_subresource
                && let Value::Object(m) = &mut new
            {
                match old.get("status") {
                    Some(s) => m.insert("status".into(), s.clone()),
                    None => m.remove("status"),
                };
            }
            new
        }
    };
    if let Value::Object(m) = &mut cand {
        m.insert("apiVersion".into(), json!(rt.storage_api_version()));
    }
    cand
}

/// Metadata clients cannot change on update comes from the live object (managedFields too, when
/// the write sent none).
fn keep_server_metadata(old: &Value, cand: &mut Value) {
    let none = serde_json::Map::new();
    let old_meta = old
        .get("metadata")
        .and_then(Value::as_object)
        .unwrap_or(&none);
    let meta = meta_mut(cand);
    for k in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "resourceVersion",
    ] {
        match old_meta.get(k) {
            // A status write's metadata is the live one already: nothing to copy.
            Some(v) if meta.get(k) == Some(v) => None,
            Some(v) => meta.insert(k.into(), v.clone()),
            None => meta.remove(k),
        };
    }
    if !meta.contains_key("managedFields")
        && let Some(mf) = old_meta.get("managedFields")
    {
        meta.insert("managedFields".into(), mf.clone());
    }
    meta.remove("selfLink");
}

/// Finalizers may only be removed once deletion started; new ones are ignored.
fn keep_only_old_finalizers(old: &Value, cand: &mut Value) {
    let old_f: Vec<Value> = old["metadata"]["finalizers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if let Some(Value::Array(f)) = meta_mut(cand).get_mut("finalizers") {
        f.retain(|x| old_f.contains(x));
    }
}

/// DeleteOptions `preconditions` (uid, resourceVersion) must match the live object: 409 if not.
fn check_preconditions(
    rt: &ResourceType,
    name: &str,
    old: &Value,
    opts: &Value,
) -> Result<(), ApiError> {
    let Some(pre) = opts.get("preconditions") else {
        return Ok(());
    };
    for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
        if let Some(want) = pre.get(field).and_then(Value::as_str) {
            let have = meta_str(old, field);
            if want != have {
                return Err(ApiError::conflict_msg(
                    &rt.group,
                    &rt.plural,
                    name,
                    format!(
                        "Precondition failed: {label} in precondition: {want}, {label} in object meta: {have}"
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn finalizers_empty(obj: &Value) -> bool {
    obj.get("metadata")
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
}

impl State {
    /// A fresh cluster: built-in types and the default namespaces.
    pub fn new(history_window: usize) -> State {
        let mut s = State::empty(history_window);
        s.ensure_default_namespaces();
        s
    }

    fn empty(history_window: usize) -> State {
        State {
            rv: 0,
            registry: Registry::default(),
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            kind_history: HashMap::new(),
            compacted_through: 0,
            trimmed_through: 0,
            history_window: history_window.max(1),
            history_min_age: Duration::ZERO,
            history_cap: history_window.max(1),
            touched: Vec::new(),
            journal: None,
            cluster_ips: BTreeSet::new(),
            next_cluster_ip: CLUSTER_IP_FIRST,
            field_validation: Default::default(),
        }
    }

    fn ensure_default_namespaces(&mut self) {
        let Some(ns_type) = self.registry.by_key("namespaces") else {
            return;
        };
        for ns in DEFAULT_NAMESPACES {
            if self.get(&ns_type, "", ns).is_none() {
                let obj =
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
                if let Err(e) = self.create(&ns_type, None, obj, false) {
                    tracing::warn!(error = %e, "could not create default namespace");
                }
            }
        }
    }

    /// Runs `f` with `fieldValidation` set for its writes, then restores the default.
    pub fn with_field_validation<R>(
        &mut self,
        fv: crate::schema::FieldValidation,
        f: impl FnOnce(&mut State) -> R,
    ) -> R {
        self.field_validation = fv;
        let out = f(self);
        self.field_validation = Default::default();
        out
    }

    /// Fills schema defaults into the stored objects of a custom type, as a real server does
    /// when it reads objects written before a default existed (no new resourceVersion).
    fn default_stored(&mut self, rt: &ResourceType) {
        let Some(schema) = rt.schemas.get(&rt.storage_version).cloned() else {
            return;
        };
        if let Some(objs) = self.objects.get_mut(&rt.key()) {
            for obj in objs.values_mut() {
                // Copies an object only while a history event still shares it.
                crate::schema::apply_defaults(&schema, Arc::make_mut(obj).value_mut());
            }
        }
    }

    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&rt.key())?
            .get(&(ns.to_string(), name.to_string()))
            .map(|o| o.value())
    }

    /// The stored object itself (shared, not copied).
    pub fn get_shared(&self, rt: &ResourceType, ns: &str, name: &str) -> Option<Arc<Stored>> {
        self.objects
            .get(&rt.key())?
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    /// Objects of a type in key order, optionally in one namespace, strictly after `after`.
    /// Reads only that type's objects, and of one namespace only its key range.
    pub fn list<'a>(
        &'a self,
        rt: &ResourceType,
        ns: Option<&'a str>,
        after: Option<&'a ObjKey>,
    ) -> impl Iterator<Item = (&'a ObjKey, &'a Value)> + 'a {
        self.list_shared(rt, ns, after).map(|(k, o)| (k, o.value()))
    }

    /// [`State::list`] with the objects as shared pointers: a lister copies pointers under the
    /// lock and encodes after it.
    pub fn list_shared<'a>(
        &'a self,
        rt: &ResourceType,
        ns: Option<&'a str>,
        after: Option<&'a ObjKey>,
    ) -> impl Iterator<Item = (&'a ObjKey, &'a Arc<Stored>)> + 'a {
        use std::ops::Bound;
        // Keys sort by namespace first: one namespace is the range from ("ns", "") on.
        let lower = match (after, ns) {
            (Some(k), Some(n)) if k.0.as_str() < n => {
                Bound::Included((n.to_string(), String::new()))
            }
            (Some(k), _) => Bound::Excluded(k.clone()),
            (None, Some(n)) => Bound::Included((n.to_string(), String::new())),
            (None, None) => Bound::Unbounded,
        };
        self.objects
            .get(&rt.key())
            .into_iter()
            .flat_map(move |m| m.range((lower.clone(), Bound::Unbounded)))
            .take_while(move |((ons, _), _)| ns.is_none_or(|n| n == ons))
    }

    /// Every stored object with the resourceVersion it is current at, CRDs first (what a
    /// snapshot holds). Clones pointers only, so the lock is held briefly; the caller encodes.
    pub fn snapshot_objects(&self) -> (u64, Vec<Arc<Stored>>) {
        const CRD_KEY: &str = "customresourcedefinitions.apiextensions.k8s.io";
        let crds = self
            .objects
            .get(CRD_KEY)
            .into_iter()
            .flat_map(|m| m.values());
        let rest = self
            .objects
            .iter()
            .filter(|(k, _)| *k != CRD_KEY)
            .flat_map(|(_, m)| m.values());
        (self.rv, crds.chain(rest).cloned().collect())
    }

    /// How many objects are stored.
    pub fn object_count(&self) -> usize {
        self.objects.values().map(BTreeMap::len).sum()
    }

    /// History events of every kind after `cursor`, or `Err(through)` when some of them fell out
    /// of the window or were compacted away. (Watches read their kind's: [`State::kind_events_after`].)
    pub fn events_after(&self, cursor: u64) -> Result<Vec<Arc<Event>>, u64> {
        let through = self.compacted_through.max(self.trimmed_through);
        if cursor < through {
            return Err(through);
        }
        let start = self.history.partition_point(|e| e.rv <= cursor);
        Ok(self.history.range(start..).cloned().collect())
    }

    /// The resourceVersion at or below which resumes of the kind `key` have expired.
    pub fn expired_through(&self, key: &str) -> u64 {
        self.kind_history
            .get(key)
            .map_or(0, |h| h.expired_through)
            .max(self.compacted_through)
    }

    /// The kind's history events after `cursor`, or `Err(expired_through)` when some of its
    /// events after `cursor` fell out of the window. Reads no other kind's events.
    pub fn kind_events_after(&self, key: &str, cursor: u64) -> Result<Vec<Arc<Event>>, u64> {
        let expired = self.expired_through(key);
        if cursor < expired {
            return Err(expired);
        }
        let Some(h) = self.kind_history.get(key) else {
            return Ok(Vec::new());
        };
        let start = h.events.partition_point(|e| e.rv <= cursor);
        Ok(h.events.range(start..).cloned().collect())
    }

    /// Keeps events younger than `min_age` in the window even past its count, up to `cap`
    /// events in all. A real API server sizes its watch cache this way (per resource: at least
    /// the last 75 s of events, at most 100 × 1024), so a watch that falls a few seconds behind
    /// during a write burst resumes instead of getting 410 and re-listing everything; a count
    /// alone expires such a watch as soon as the burst outgrows it.
    pub fn set_retention(&mut self, min_age: Duration, cap: usize) {
        self.history_min_age = min_age;
        self.history_cap = cap.max(self.history_window);
    }

    /// Drops all history up to the current resourceVersion (used by tests to force 410s).
    pub fn compact(&mut self) {
        self.history.clear();
        self.kind_history.clear();
        self.compacted_through = self.rv;
    }

    /// The kinds written since the last call (each once), so only their watches are woken.
    pub fn take_touched(&mut self) -> Vec<String> {
        std::mem::take(&mut self.touched)
    }

    /// From now on, every committed event is also kept for the log writer
    /// ([`State::take_journal`]).
    pub fn enable_journal(&mut self) {
        self.journal.get_or_insert_with(Vec::new);
    }

    /// How many committed events wait for the log writer (0 without a journal).
    pub fn journal_len(&self) -> usize {
        self.journal.as_ref().map_or(0, Vec::len)
    }

    /// The committed events the log writer has not taken yet, in resourceVersion order.
    pub fn take_journal(&mut self) -> Vec<Arc<Event>> {
        self.journal
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(
        &mut self,
        rt: &ResourceType,
        etype: EventType,
        obj: Arc<Stored>,
        prev: Option<Arc<Stored>>,
    ) {
        let res = rt.key();
        let event = Arc::new(Event {
            rv: self.rv,
            res: res.clone(),
            etype,
            obj,
            prev,
            at: Instant::now(),
        });
        if let Some(j) = &mut self.journal {
            j.push(Arc::clone(&event));
        }
        self.history.push_back(Arc::clone(&event));
        if !self.touched.contains(&res) {
            self.touched.push(res.clone());
        }
        self.kind_history
            .entry(res)
            .or_default()
            .events
            .push_back(event);
        while self.history.len() > self.history_window {
            let young = self
                .history
                .front()
                .is_some_and(|e| e.at.elapsed() < self.history_min_age);
            if young && self.history.len() <= self.history_cap {
                break;
            }
            let Some(old) = self.history.pop_front() else {
                break;
            };
            self.trimmed_through = old.rv;
            // Both are in resourceVersion order: the oldest of the window is its kind's oldest.
            if let Some(h) = self.kind_history.get_mut(&old.res) {
                h.events.pop_front();
                h.expired_through = old.rv;
            }
        }
    }

    /// Stores `obj` (replacing the object of the same name) and returns the shared copy.
    fn store(&mut self, rt: &ResourceType, obj: Value) -> Arc<Stored> {
        let key = (namespace_of(&obj).to_string(), name_of(&obj).to_string());
        let obj = Arc::new(Stored::new(obj));
        let old = self
            .objects
            .entry(rt.key())
            .or_default()
            .insert(key, Arc::clone(&obj));
        if is_service(rt) {
            self.index_cluster_ip(old.as_deref().map(Stored::value), Some(&obj));
        }
        if let Some(old) = old {
            old.forget_json();
        }
        obj
    }

    fn take(&mut self, rt: &ResourceType, ns: &str, name: &str) -> Option<Arc<Stored>> {
        let key = rt.key();
        let map = self.objects.get_mut(&key)?;
        let v = map.remove(&(ns.to_string(), name.to_string()));
        if map.is_empty() {
            self.objects.remove(&key);
        }
        if is_service(rt) {
            self.index_cluster_ip(v.as_deref().map(Stored::value), None);
        }
        if let Some(v) = &v {
            v.forget_json();
        }
        v
    }

    /// Keeps [`State::cluster_ips`] in step with a Service replaced by another (or removed).
    fn index_cluster_ip(&mut self, old: Option<&Value>, new: Option<&Value>) {
        let (old, new) = (old.and_then(cluster_ip_of), new.and_then(cluster_ip_of));
        if old != new {
            if let Some(ip) = old {
                self.cluster_ips.remove(ip);
            }
            if let Some(ip) = new {
                self.cluster_ips.insert(ip.to_string());
            }
        }
    }

    /// Namespace checks for a namespaced write: the body must agree with the URL, and the
    /// namespace must exist (and, for creates, not be terminating).
    fn place(
        &self,
        rt: &ResourceType,
        url_ns: Option<&str>,
        obj: &mut Value,
        creating: bool,
    ) -> Result<(), ApiError> {
        let body_ns = namespace_of(obj).to_string();
        if !rt.namespaced {
            meta_mut(obj).remove("namespace");
            return Ok(());
        }
        let ns = url_ns.ok_or_else(ApiError::method_not_allowed)?;
        if !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        meta_mut(obj).insert("namespace".into(), json!(ns));
        if creating {
            let ns_type = self
                .registry
                .by_key("namespaces")
                .ok_or_else(|| ApiError::internal("namespace type missing"))?;
            let Some(nsobj) = self.get(&ns_type, "", ns) else {
                return Err(ApiError::not_found("", "namespaces", ns));
            };
            if !meta_str(nsobj, "deletionTimestamp").is_empty() {
                return Err(ApiError::forbidden(format!(
                    "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    rt.plural,
                    name_of(obj)
                )));
            }
        }
        Ok(())
    }

    /// POST: creates an object. Returns the stored object (storage apiVersion).
    pub fn create(
        &mut self,
        rt: &ResourceType,
        url_ns: Option<&str>,
        obj: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        self.create_shared(rt, url_ns, obj, dry_run)
            .map(Stored::unshare)
    }

    /// [`State::create`] answering with the stored version itself (a dry run: a version of its
    /// own), so the response reuses its encoding.
    pub fn create_shared(
        &mut self,
        rt: &ResourceType,
        url_ns: Option<&str>,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<Arc<Stored>, ApiError> {
        check_type(rt, &obj)?;
        check_metadata(&obj)?;
        let version = version_of(&obj).to_string();
        if name_of(&obj).is_empty() {
            let prefix = meta_str(&obj, "generateName").to_string();
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    &rt.group,
                    &rt.kind,
                    "",
                    "metadata.name",
                    "Required value: name or generateName is required",
                ));
            }
            let name = format!("{prefix}{}", random_suffix());
            meta_mut(&mut obj).insert("name".into(), json!(name));
        }
        let name = name_of(&obj).to_string();
        if let Some(why) = name_error(rt, &name) {
            return Err(ApiError::invalid(
                &rt.group,
                &rt.kind,
                &name,
                "metadata.name",
                &format!("Invalid value: \"{name}\": {why}"),
            ));
        }
        self.place(rt, url_ns, &mut obj, true)?;
        let ns = namespace_of(&obj).to_string();
        if self.get(rt, &ns, &name).is_some() {
            return Err(ApiError::already_exists(&rt.group, &rt.plural, &name));
        }
        if let Value::Object(m) = &mut obj {
            m.insert("apiVersion".into(), json!(rt.storage_api_version()));
            // Custom resources with a status subresource drop status on create, like the real server.
            if rt.custom && rt.status_subresource {
                m.remove("status");
            }
        }
        {
            let meta = meta_mut(&mut obj);
            meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
            meta.insert("generation".into(), json!(1));
            meta.remove("deletionTimestamp");
            meta.remove("deletionGracePeriodSeconds");
            meta.remove("resourceVersion");
            meta.remove("selfLink");
        }
        let fv = self.field_validation;
        crate::schema::admit_object(rt, &version, WriteMode::Main, fv, None, &mut obj)?;
        self.defaults_on_write(rt, None, &mut obj)?;
        if dry_run {
            return Ok(Arc::new(Stored::new(obj)));
        }
        let rv = self.next_rv();
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rv.to_string()));
        let stored = self.store(rt, obj);
        self.record(rt, EventType::Added, Arc::clone(&stored), None);
        if is_crd(rt) {
            self.register_crd(&stored)?;
        }
        Ok(stored)
    }

    /// Server-owned defaults and kind hooks applied to every write of a kind.
    fn defaults_on_write(
        &mut self,
        rt: &ResourceType,
        old: Option<&Value>,
        obj: &mut Value,
    ) -> Result<(), ApiError> {
        if is_namespace(rt) {
            let name = name_of(obj).to_string();
            let meta = meta_mut(obj);
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            if let Value::Object(l) = labels {
                l.insert(NS_NAME_LABEL.into(), json!(name));
            }
            if let Value::Object(m) = obj {
                let status = m.entry("status").or_insert_with(|| json!({}));
                if let Value::Object(s) = status
                    && !s.contains_key("phase")
                {
                    s.insert("phase".into(), json!("Active"));
                }
            }
        } else if rt.group.is_empty() && rt.plural == "services" {
            self.service_defaults(obj);
        } else if is_crd(rt) {
            crd_to_type(obj)?;
            set_crd_status(old, obj);
        }
        Ok(())
    }

    fn service_defaults(&mut self, obj: &mut Value) {
        let Value::Object(m) = obj else { return };
        let spec = m.entry("spec").or_insert_with(|| json!({}));
        let Value::Object(spec) = spec else { return };
        let svc_type = spec
            .entry("type")
            .or_insert_with(|| json!("ClusterIP"))
            .as_str()
            .unwrap_or("ClusterIP")
            .to_string();
        if svc_type != "ExternalName"
            && spec
                .get("clusterIP")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
        {
            let ip = self.free_cluster_ip();
            if let Some(ip) = ip {
                spec.insert("clusterIP".into(), json!(ip));
                spec.insert("clusterIPs".into(), json!([ip]));
            }
        }
        spec.entry("sessionAffinity")
            .or_insert_with(|| json!("None"));
        if let Some(Value::Array(ports)) = spec.get_mut("ports") {
            for p in ports.iter_mut() {
                if let Value::Object(p) = p {
                    p.entry("protocol").or_insert_with(|| json!("TCP"));
                    if let Some(port) = p.get("port").cloned() {
                        p.entry("targetPort").or_insert(port);
                    }
                }
            }
        }
    }

    /// A free Service cluster IP: the first one not in use from where the last allocation
    /// stopped, wrapping around once. Each probe is an index lookup, and the cursor moves on,
    /// so allocating does not walk the Services already there (a fresh state walks the taken
    /// prefix once).
    fn free_cluster_ip(&mut self) -> Option<String> {
        let start = self
            .next_cluster_ip
            .clamp(CLUSTER_IP_FIRST, CLUSTER_IP_END - 1);
        let n = (start..CLUSTER_IP_END)
            .chain(CLUSTER_IP_FIRST..start)
            .find(|n| !self.cluster_ips.contains(&cluster_ip(*n)))?;
        self.next_cluster_ip = n + 1;
        Some(cluster_ip(n))
    }

    fn register_crd(&mut self, crd: &Value) -> Result<(), ApiError> {
        let t = crd_to_type(crd)?;
        self.default_stored(&t);
        self.registry.register(t);
        Ok(())
    }

    /// PUT (and the final step of PATCH): replaces an existing object.
    ///
    /// Steps: the body must name the URL's object and match its resourceVersion; the candidate
    /// takes the part `mode` writes from the body and the rest from the live object, keeps the
    /// server-owned metadata, is admitted against the schema and defaulted; generation moves on a
    /// spec change; a no-op write returns the live object; otherwise it commits.
    pub fn update(
        &mut self,
        rt: &ResourceType,
        url_ns: Option<&str>,
        name: &str,
        new: Value,
        mode: WriteMode,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        self.update_shared(rt, url_ns, name, new, mode, dry_run)
            .map(Stored::unshare)
    }

    /// [`State::update`] answering with the stored version itself (a no-op write: the live
    /// one; a dry run: a version of its own), so the response reuses its encoding.
    pub fn update_shared(
        &mut self,
        rt: &ResourceType,
        url_ns: Option<&str>,
        name: &str,
        mut new: Value,
        mode: WriteMode,
        dry_run: bool,
    ) -> Result<Arc<Stored>, ApiError> {
        check_type(rt, &new)?;
        check_metadata(&new)?;
        let version = version_of(&new).to_string();
        name_from_url(&mut new, name)?;
        self.place(rt, url_ns, &mut new, false)?;
        let ns = namespace_of(&new).to_string();
        let old = self
            .get_shared(rt, &ns, name)
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        let want_rv = rv_of(&new).to_string();
        if !want_rv.is_empty() && want_rv != rv_of(&old) {
            return Err(ApiError::conflict(&rt.group, &rt.plural, name));
        }
        let mut cand = update_candidate(rt, &old, new, mode);
        keep_server_metadata(&old, &mut cand);
        if !meta_str(&old, "deletionTimestamp").is_empty() {
            keep_only_old_finalizers(&old, &mut cand);
        }
        let fv = self.field_validation;
        crate::schema::admit_object(rt, &version, mode, fv, Some(&*old), &mut cand)?;
        self.defaults_on_write(rt, Some(&*old), &mut cand)?;
        // A custom resource's status write copies everything but `status` and `metadata` from
        // the stored object (`update_candidate`), and no hook of this store changes a custom
        // object: its spec cannot have changed, so it is not compared, neither for the
        // generation nor for the no-op check (two deep walks of the spec per status write).
        let only_status_new = matches!(mode, WriteMode::Status) && rt.custom;
        if !only_status_new && generation_changed(&old, &cand) {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            meta_mut(&mut cand).insert("generation".into(), json!(g));
        }
        let unchanged = if only_status_new {
            same_but_spec(old.value(), &cand)
        } else {
            cand == *old.value()
        };
        if unchanged {
            return Ok(old);
        }
        if dry_run {
            return Ok(Arc::new(Stored::new(cand)));
        }
        self.commit_update(rt, &ns, name, old, cand)
    }

    /// Stores an updated object under the next resourceVersion. An object whose deletion was
    /// waiting for finalizers goes away once the last one is removed; a namespace may finish
    /// terminating; a CRD re-registers its type.
    fn commit_update(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        old: Arc<Stored>,
        mut cand: Value,
    ) -> Result<Arc<Stored>, ApiError> {
        let rv = self.next_rv();
        meta_mut(&mut cand).insert("resourceVersion".into(), json!(rv.to_string()));
        let deleting = !meta_str(&cand, "deletionTimestamp").is_empty() && finalizers_empty(&cand);
        if deleting && !is_namespace(rt) {
            self.take(rt, ns, name);
            let gone = Arc::new(Stored::new(cand));
            self.record(rt, EventType::Deleted, Arc::clone(&gone), Some(old));
            self.after_remove(rt, &gone);
            return Ok(gone);
        }
        let stored = self.store(rt, cand);
        self.record(rt, EventType::Modified, Arc::clone(&stored), Some(old));
        if is_crd(rt) {
            self.register_crd(&stored)?;
        }
        if is_namespace(rt) {
            self.maybe_finalize_namespace(name);
            return Ok(self.get_shared(rt, "", name).unwrap_or(stored));
        }
        Ok(stored)
    }

    /// DELETE of one object. `opts` is the DeleteOptions body (may be `null`). A namespace starts
    /// terminating (see [`State::delete_namespace`]); an object with finalizers gets a
    /// deletionTimestamp and waits; anything else goes at once.
    pub fn delete(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        opts: &Value,
        dry_run: bool,
    ) -> Result<DeleteOutcome, ApiError> {
        let old = self
            .get(rt, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        check_preconditions(rt, name, &old, opts)?;
        if is_namespace(rt) {
            return Ok(self.delete_namespace(rt, name, old, dry_run));
        }
        if !finalizers_empty(&old) {
            return Ok(DeleteOutcome::Pending(self.mark_deleting(rt, old, dry_run)));
        }
        if dry_run {
            return Ok(DeleteOutcome::Deleted(old));
        }
        Ok(DeleteOutcome::Deleted(self.remove_now(rt, ns, name)))
    }

    /// Sets deletionTimestamp (and bumps generation) on an object its finalizers hold; an
    /// object already deleting is returned as it is.
    fn mark_deleting(&mut self, rt: &ResourceType, obj: Value, dry_run: bool) -> Value {
        if !meta_str(&obj, "deletionTimestamp").is_empty() {
            return obj;
        }
        let mut cand = obj.clone();
        let g = obj["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
        {
            let meta = meta_mut(&mut cand);
            meta.insert("deletionTimestamp".into(), json!(now_rfc3339()));
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            meta.insert("generation".into(), json!(g));
        }
        if dry_run {
            return cand;
        }
        let rv = self.next_rv();
        meta_mut(&mut cand).insert("resourceVersion".into(), json!(rv.to_string()));
        let stored = self.store(rt, cand.clone());
        self.record(
            rt,
            EventType::Modified,
            stored,
            Some(Arc::new(Stored::new(obj))),
        );
        cand
    }

    /// Deleting a namespace: it turns `Terminating`, its contents are deleted, and it goes once
    /// empty and without finalizers.
    fn delete_namespace(
        &mut self,
        rt: &ResourceType,
        name: &str,
        old: Value,
        dry_run: bool,
    ) -> DeleteOutcome {
        let mut cand = old.clone();
        if meta_str(&old, "deletionTimestamp").is_empty() {
            let meta = meta_mut(&mut cand);
            meta.insert("deletionTimestamp".into(), json!(now_rfc3339()));
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
        }
        if let Value::Object(m) = &mut cand {
            let st = m.entry("status").or_insert_with(|| json!({}));
            if let Value::Object(st) = st {
                st.insert("phase".into(), json!("Terminating"));
            }
        }
        if dry_run {
            return DeleteOutcome::Pending(cand);
        }
        if cand != old {
            let rv = self.next_rv();
            meta_mut(&mut cand).insert("resourceVersion".into(), json!(rv.to_string()));
            let stored = self.store(rt, cand.clone());
            self.record(
                rt,
                EventType::Modified,
                stored,
                Some(Arc::new(Stored::new(old))),
            );
        }
        self.delete_namespace_contents(name);
        self.maybe_finalize_namespace(name);
        match self.get(rt, "", name) {
            Some(o) => DeleteOutcome::Pending(o.clone()),
            None => DeleteOutcome::Deleted(cand),
        }
    }

    /// Removes an object immediately, recording DELETED. Returns its last state.
    fn remove_now(&mut self, rt: &ResourceType, ns: &str, name: &str) -> Value {
        let Some(prev) = self.take(rt, ns, name) else {
            return Value::Null;
        };
        let mut obj = prev.value().clone();
        let rv = self.next_rv();
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rv.to_string()));
        let obj = Arc::new(Stored::new(obj));
        self.record(rt, EventType::Deleted, Arc::clone(&obj), Some(prev));
        self.after_remove(rt, &obj);
        Stored::unshare(obj)
    }

    fn after_remove(&mut self, rt: &ResourceType, obj: &Value) {
        if is_crd(rt) {
            let group = obj["spec"]["group"].as_str().unwrap_or("").to_string();
            let plural = obj["spec"]["names"]["plural"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if let Some(t) = self
                .registry
                .by_key(&crate::error::group_resource(&group, &plural))
                && t.custom
            {
                let keys: Vec<ObjKey> = self.list(&t, None, None).map(|(k, _)| k.clone()).collect();
                for (ns, name) in keys {
                    self.remove_now(&t, &ns, &name);
                }
                self.registry.unregister(&group, &plural);
            }
        } else if rt.namespaced {
            let ns = namespace_of(obj).to_string();
            self.maybe_finalize_namespace(&ns);
        }
    }

    fn delete_namespace_contents(&mut self, ns: &str) {
        let types: Vec<Arc<ResourceType>> = self
            .registry
            .all()
            .iter()
            .filter(|t| t.namespaced)
            .cloned()
            .collect();
        for t in types {
            let names: Vec<String> = self
                .list(&t, Some(ns), None)
                .map(|((_, n), _)| n.clone())
                .collect();
            for n in names {
                if let Err(e) = self.delete(&t, ns, &n, &Value::Null, false) {
                    tracing::warn!(error = %e, "deleting namespace content");
                }
            }
        }
    }

    /// Removes a terminating namespace once it is empty and has no finalizers.
    fn maybe_finalize_namespace(&mut self, ns: &str) {
        let Some(ns_type) = self.registry.by_key("namespaces") else {
            return;
        };
        let Some(nsobj) = self.get(&ns_type, "", ns) else {
            return;
        };
        if meta_str(nsobj, "deletionTimestamp").is_empty() || !finalizers_empty(nsobj) {
            return;
        }
        let has_content = self
            .registry
            .all()
            .iter()
            .filter(|t| t.namespaced)
            .any(|t| self.list(t, Some(ns), None).next().is_some());
        if !has_content {
            self.remove_now(&ns_type, "", ns);
        }
    }

    /// Every stored object (CRDs first, so a restore can register their types before their objects).
    pub fn snapshot(&self) -> Value {
        let (rv, objs) = self.snapshot_objects();
        let objs: Vec<Value> = objs.iter().map(|o| o.value().clone()).collect();
        json!({"resourceVersion": rv.to_string(), "objects": objs})
    }

    /// Rebuilds a state from [`State::snapshot`] output. The history starts empty, so watches
    /// resuming from before the restart get 410 Expired and re-list.
    pub fn restore(history_window: usize, snap: &Value) -> Result<State, SnapshotError> {
        let mut s = State::load_snapshot(history_window, snap.clone())?;
        s.finish_load();
        Ok(s)
    }

    /// A state with nothing in it, not even the default namespaces: where a load without a
    /// snapshot starts (the log replays from the first write on). See [`State::finish_load`].
    pub fn blank(history_window: usize) -> State {
        State::empty(history_window)
    }

    /// The first step of a load: the objects and counter of a snapshot, as they were stored
    /// (objects of unknown kinds and invalid CRDs are skipped with a warning). Then
    /// [`State::replay`] the log, then [`State::finish_load`].
    pub fn load_snapshot(history_window: usize, snap: Value) -> Result<State, SnapshotError> {
        let mut s = State::empty(history_window);
        let Value::Object(mut snap) = snap else {
            return Err(SnapshotError::NoObjects);
        };
        let Some(Value::Array(objs)) = snap.remove("objects") else {
            return Err(SnapshotError::NoObjects);
        };
        let mut max_rv: u64 = snap
            .get("resourceVersion")
            .and_then(Value::as_str)
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        for o in objs {
            if let Ok(rv) = rv_of(&o).parse::<u64>() {
                max_rv = max_rv.max(rv);
            }
            s.load_object(o);
        }
        s.rv = max_rv;
        Ok(s)
    }

    /// Stores an object read from disk under its own kind (registering a CRD's type).
    fn load_object(&mut self, o: Value) {
        let api_version = o.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = o.get("kind").and_then(Value::as_str).unwrap_or("");
        let Some(rt) = self.registry.by_kind(api_version, kind) else {
            tracing::warn!(api_version, kind, "skipping stored object of unknown kind");
            return;
        };
        if is_crd(&rt)
            && let Err(e) = self.register_crd(&o)
        {
            tracing::warn!(error = %e, "skipping invalid stored CRD");
            return;
        }
        self.store(&rt, o);
    }

    /// Applies one record of the persistence log: the write that took resourceVersion `rv`.
    /// Records at or below the state's resourceVersion are already in it (a snapshot written
    /// just before the log was cleared) and are skipped. No events are recorded.
    pub fn replay(&mut self, rv: u64, op: ReplayOp, obj: Value) {
        if rv <= self.rv {
            return;
        }
        self.rv = rv;
        match op {
            ReplayOp::Put => self.load_object(obj),
            ReplayOp::Delete => {
                let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
                let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
                // A kind already gone: its CRD's deletion took its objects with it.
                let Some(rt) = self.registry.by_kind(api_version, kind) else {
                    return;
                };
                self.take(&rt, namespace_of(&obj), name_of(&obj));
                if is_crd(&rt) {
                    let group = obj["spec"]["group"].as_str().unwrap_or("");
                    let plural = obj["spec"]["names"]["plural"].as_str().unwrap_or("");
                    let key = crate::error::group_resource(group, plural);
                    if self.registry.by_key(&key).is_some_and(|t| t.custom) {
                        self.objects.remove(&key);
                        self.registry.unregister(group, plural);
                    }
                }
            }
        }
    }

    /// The last step of a load: stored custom objects get the defaults of their schema, the
    /// history starts empty at the loaded resourceVersion (older resumes get 410), and missing
    /// default namespaces are created.
    pub fn finish_load(&mut self) {
        self.compacted_through = self.rv;
        // Stored objects are not revalidated, but read with the defaults of their schema.
        let custom: Vec<Arc<ResourceType>> = self
            .registry
            .all()
            .iter()
            .filter(|t| t.custom)
            .cloned()
            .collect();
        for t in custom {
            self.default_stored(&t);
        }
        self.ensure_default_namespaces();
    }
}

/// Sets the status a real apiextensions server gives an accepted CRD.
fn set_crd_status(old: Option<&Value>, crd: &mut Value) {
    let now = now_rfc3339();
    let old_cond_time = |t: &str| -> String {
        old.and_then(|o| o["status"]["conditions"].as_array())
            .and_then(|cs| cs.iter().find(|c| c["type"] == t))
            .and_then(|c| c["lastTransitionTime"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| now.clone())
    };
    let mut names = crd["spec"]["names"].clone();
    if let Value::Object(n) = &mut names {
        let kind = n
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        n.entry("singular")
            .or_insert_with(|| json!(kind.to_lowercase()));
        n.entry("listKind")
            .or_insert_with(|| json!(format!("{kind}List")));
    }
    let storage: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .map(|vs| {
            vs.iter()
                .filter(|v| v["storage"] == true)
                .map(|v| v["name"].clone())
                .collect()
        })
        .unwrap_or_default();
    let mut stored: Vec<Value> = old
        .and_then(|o| o["status"]["storedVersions"].as_array().cloned())
        .unwrap_or_default();
    for s in storage {
        if !stored.contains(&s) {
            stored.push(s);
        }
    }
    let status = json!({
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": old_cond_time("NamesAccepted")},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": old_cond_time("Established")},
        ],
        "acceptedNames": names,
        "storedVersions": stored,
    });
    if let Value::Object(m) = crd {
        m.insert("status".into(), status);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cm(name: &str, ns: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": {"a": "1"}})
    }

    fn types(s: &State) -> (Arc<ResourceType>, Arc<ResourceType>) {
        (
            s.registry.by_key("configmaps").unwrap(),
            s.registry.by_key("namespaces").unwrap(),
        )
    }

    #[test]
    fn a_version_is_encoded_once_and_a_replaced_one_drops_its_bytes() {
        let mut s = State::new(100);
        let (cmt, _) = types(&s);
        let live = s
            .create_shared(&cmt, Some("default"), cm("a", ""), false)
            .unwrap();
        assert!(!live.has_json());
        let bytes = live.json();
        // What serde_json writes for the object, and the same shared bytes every time.
        assert_eq!(bytes, serde_json::to_vec(live.value()).unwrap());
        assert_eq!(live.json().as_ptr(), bytes.as_ptr());
        let mut changed = live.value().clone();
        changed["data"]["a"] = json!("2");
        let new = s
            .update_shared(&cmt, Some("default"), "a", changed, WriteMode::Main, false)
            .unwrap();
        // The replaced version keeps its object (for the history) but not its bytes; asked
        // again, it encodes the same bytes.
        assert!(!live.has_json());
        assert_eq!(live.json(), bytes);
        let v: Value = serde_json::from_slice(&new.json()).unwrap();
        assert_eq!(&v, new.value());
        assert_eq!(v["data"]["a"], "2");
        // A no-op write answers with the live version itself.
        let same = s
            .update_shared(
                &cmt,
                Some("default"),
                "a",
                new.value().clone(),
                WriteMode::Main,
                false,
            )
            .unwrap();
        assert!(Arc::ptr_eq(&same, &new));
        // Changing an object drops its (stale) encoding.
        let mut copy = (*new).clone();
        copy.value_mut()["data"]["a"] = json!("3");
        let v: Value = serde_json::from_slice(&copy.json()).unwrap();
        assert_eq!(v["data"]["a"], "3");
    }

    #[test]
    fn a_status_write_keeps_everything_else_of_the_live_object() {
        let mut s = State::new(100);
        let nst = s.registry.by_key("namespaces").unwrap();
        let live = s.get(&nst, "", "default").unwrap().clone();
        let body = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "default", "labels": {"ignored": "yes"}, "managedFields": [{"manager": "m"}]},
            "spec": {"finalizers": ["ignored"]},
            "status": {"phase": "Active", "extra": "x"}});
        let out = s
            .update(&nst, None, "default", body, WriteMode::Status, false)
            .unwrap();
        assert_eq!(out["status"], json!({"phase": "Active", "extra": "x"}));
        assert_eq!(out["metadata"]["labels"], live["metadata"]["labels"]);
        assert_eq!(out["metadata"]["uid"], live["metadata"]["uid"]);
        assert_eq!(out["metadata"]["managedFields"], json!([{"manager": "m"}]));
        assert_eq!(out.get("spec"), live.get("spec"));
        assert_ne!(rv_of(&out), rv_of(&live));
        // A status write without status removes it.
        let body =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}});
        let out = s
            .update(&nst, None, "default", body, WriteMode::Status, false)
            .unwrap();
        assert!(out.get("status").is_none_or(|st| st.get("extra").is_none()));
    }

    #[test]
    fn create_sets_server_fields_and_rejects_duplicates() {
        let mut s = State::new(100);
        let (cmt, _) = types(&s);
        let o = s.create(&cmt, Some("default"), cm("a", ""), false).unwrap();
        assert_eq!(o["metadata"]["namespace"], "default");
        assert_eq!(o["metadata"]["generation"], 1);
        assert!(!meta_str(&o, "uid").is_empty());
        assert_eq!(rv_of(&o), s.rv.to_string());
        let e = s
            .create(&cmt, Some("default"), cm("a", ""), false)
            .unwrap_err();
        assert_eq!((e.code, e.reason), (409, "AlreadyExists"));
        let e = s
            .create(&cmt, Some("nope"), cm("b", ""), false)
            .unwrap_err();
        assert_eq!(e.code, 404);
        assert_eq!(e.message, "namespaces \"nope\" not found");
        let e = s
            .create(&cmt, Some("default"), cm("c", "other"), false)
            .unwrap_err();
        assert_eq!(e.code, 400);
    }

    #[test]
    fn rbac_names_are_path_segments_other_names_dns_subdomains() {
        let mut s = State::new(100);
        let roles = s
            .registry
            .by_key("clusterroles.rbac.authorization.k8s.io")
            .unwrap();
        let role = |n: &str| {
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                   "metadata": {"name": n}})
        };
        s.create(&roles, None, role("system:auth-delegator"), false)
            .unwrap();
        let e = s.create(&roles, None, role("a/b"), false).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                422,
                "ClusterRole \"a/b\" is invalid: metadata.name: Invalid value: \"a/b\": may not contain '/'"
            )
        );
        let (cmt, _) = types(&s);
        let e = s
            .create(&cmt, Some("default"), cm("system:x", ""), false)
            .unwrap_err();
        assert_eq!(e.code, 422);
    }

    #[test]
    fn update_conflicts_generation_and_noops() {
        let mut s = State::new(100);
        let (cmt, _) = types(&s);
        let o = s.create(&cmt, Some("default"), cm("a", ""), false).unwrap();
        let rv1 = rv_of(&o).to_string();
        let mut changed = o.clone();
        changed["data"]["a"] = json!("2");
        let o2 = s
            .update(
                &cmt,
                Some("default"),
                "a",
                changed.clone(),
                WriteMode::Main,
                false,
            )
            .unwrap();
        assert_eq!(
            o2["metadata"]["generation"], 2,
            "data is the spec of a ConfigMap"
        );
        assert_ne!(rv_of(&o2), rv1);
        // Stale resourceVersion.
        let e = s
            .update(&cmt, Some("default"), "a", changed, WriteMode::Main, false)
            .unwrap_err();
        assert_eq!((e.code, e.reason), (409, "Conflict"));
        // Same content: no new resourceVersion.
        let before = s.rv;
        let same = s
            .update(
                &cmt,
                Some("default"),
                "a",
                o2.clone(),
                WriteMode::Main,
                false,
            )
            .unwrap();
        assert_eq!(s.rv, before);
        assert_eq!(same, o2);
        // Label change does not bump generation.
        let mut lab = o2.clone();
        lab["metadata"]["labels"] = json!({"x": "y"});
        let o3 = s
            .update(&cmt, Some("default"), "a", lab, WriteMode::Main, false)
            .unwrap();
        assert_eq!(o3["metadata"]["generation"], 2);
    }

    #[test]
    fn finalizers_hold_deletion() {
        let mut s = State::new(100);
        let (cmt, _) = types(&s);
        let mut c = cm("f", "");
        c["metadata"]["finalizers"] = json!(["x/y"]);
        s.create(&cmt, Some("default"), c, false).unwrap();
        let out = s.delete(&cmt, "default", "f", &Value::Null, false).unwrap();
        let DeleteOutcome::Pending(o) = out else {
            panic!("expected pending")
        };
        assert!(!meta_str(&o, "deletionTimestamp").is_empty());
        let mut cleared = o.clone();
        cleared["metadata"]["finalizers"] = json!([]);
        s.update(&cmt, Some("default"), "f", cleared, WriteMode::Main, false)
            .unwrap();
        assert!(s.get(&cmt, "default", "f").is_none());
    }

    #[test]
    fn namespace_deletion_cascades() {
        let mut s = State::new(100);
        let (cmt, nst) = types(&s);
        s.create(
            &nst,
            None,
            json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":"team"}}),
            false,
        )
        .unwrap();
        s.create(&cmt, Some("team"), cm("a", ""), false).unwrap();
        let out = s.delete(&nst, "", "team", &Value::Null, false).unwrap();
        assert!(matches!(out, DeleteOutcome::Deleted(_)));
        assert!(s.get(&cmt, "team", "a").is_none());
        assert!(s.get(&nst, "", "team").is_none());
    }

    #[test]
    fn history_window_compacts() {
        let mut s = State::new(3);
        let (cmt, _) = types(&s);
        for i in 0..5 {
            s.create(&cmt, Some("default"), cm(&format!("c{i}"), ""), false)
                .unwrap();
        }
        assert!(s.events_after(1).is_err());
        assert_eq!(s.events_after(s.rv - 2).unwrap().len(), 2);
    }

    #[test]
    fn young_events_outlast_the_count_up_to_the_cap() {
        let mut s = State::new(3);
        s.set_retention(Duration::from_secs(75), 6);
        let (cmt, _) = types(&s);
        let start = s.rv;
        for i in 0..6 {
            s.create(&cmt, Some("default"), cm(&format!("c{i}"), ""), false)
                .unwrap();
        }
        // Past the count of 3 but all young: a watch from before the burst misses nothing.
        assert_eq!(s.events_after(start).map(|e| e.len()), Ok(6));
        assert_eq!(s.kind_events_after("configmaps", start).unwrap().len(), 6);
        // The cap bounds the window however young its events are.
        s.create(&cmt, Some("default"), cm("c6", ""), false)
            .unwrap();
        assert!(s.kind_events_after("configmaps", start).is_err());
        assert_eq!(
            s.kind_events_after("configmaps", start + 1).unwrap().len(),
            6
        );
        // Without an age floor the count alone decides, as before.
        s.set_retention(Duration::ZERO, 6);
        s.create(&cmt, Some("default"), cm("c7", ""), false)
            .unwrap();
        assert_eq!(s.events_after(s.rv - 3).unwrap().len(), 3);
        assert!(s.events_after(s.rv - 4).is_err());
    }

    #[test]
    fn restored_custom_objects_are_defaulted_not_validated() {
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {
                        "type": "object", "properties": {
                            "size": {"type": "integer", "maximum": 10},
                            "color": {"type": "string", "default": "red"}}}}}}}]}});
        let mut s = State::new(100);
        let crd_type = s
            .registry
            .by_key("customresourcedefinitions.apiextensions.k8s.io")
            .unwrap();
        s.create(&crd_type, None, crd, false).unwrap();
        let wt = s.registry.by_key("widgets.example.com").unwrap();
        // Written through the API: validated and defaulted.
        let w = |name: &str, size: i64| {
            json!({"apiVersion": "example.com/v1", "kind": "Widget",
            "metadata": {"name": name}, "spec": {"size": size}})
        };
        assert_eq!(
            s.create(&wt, Some("default"), w("big", 11), false)
                .unwrap_err()
                .code,
            422
        );
        let ok = s.create(&wt, Some("default"), w("ok", 1), false).unwrap();
        assert_eq!(ok["spec"]["color"], "red");
        // Stored by an older sandbox: out of range and without the default.
        let mut snap = s.snapshot();
        let mut old = w("old", 99);
        old["metadata"]["namespace"] = json!("default");
        snap["objects"].as_array_mut().unwrap().push(old);
        let r = State::restore(100, &snap).unwrap();
        let got = r.get(&wt, "default", "old").unwrap();
        assert_eq!(got["spec"], json!({"size": 99, "color": "red"}));
    }

    #[test]
    fn a_quiet_kind_keeps_its_resumes_while_other_kinds_fill_the_window() {
        let mut s = State::new(3);
        let (cmt, _) = types(&s);
        let secrets = s.registry.by_key("secrets").unwrap();
        assert_eq!(s.take_touched(), ["namespaces"], "the default namespaces");
        s.create(&cmt, Some("default"), cm("a", ""), false).unwrap();
        let after_cm = s.rv;
        let secret =
            |n: &str| json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": n}});
        s.create(&secrets, Some("default"), secret("s0"), false)
            .unwrap();
        let first_secret = s.rv;
        assert_eq!(s.take_touched(), ["configmaps", "secrets"]);
        for i in 1..5 {
            s.create(&secrets, Some("default"), secret(&format!("s{i}")), false)
                .unwrap();
        }
        assert_eq!(s.take_touched(), ["secrets"], "each kind once");
        // The whole window is Secrets now: the cluster-wide view has expired...
        assert!(s.events_after(after_cm).is_err());
        // ...but a ConfigMap watch at the ConfigMap's RV missed nothing of its kind.
        assert_eq!(
            s.kind_events_after("configmaps", after_cm).unwrap().len(),
            0
        );
        assert_eq!(s.expired_through("configmaps"), after_cm);
        assert_eq!(
            s.kind_events_after("configmaps", after_cm - 1),
            Err(after_cm)
        );
        // Secrets read only Secrets, and expire as their own events fall out.
        let recent = s.kind_events_after("secrets", s.rv - 2).unwrap();
        assert_eq!(recent.len(), 2);
        assert!(recent.iter().all(|e| e.res == "secrets"));
        assert!(s.kind_events_after("secrets", first_secret).is_err());
        // Compacting the history expires every kind.
        s.compact();
        assert_eq!(s.kind_events_after("configmaps", after_cm), Err(s.rv));
    }

    #[test]
    fn lists_of_one_namespace_read_its_range_and_continue_across() {
        let mut s = State::new(100);
        let (cmt, nst) = types(&s);
        for ns in ["a", "b", "c"] {
            s.create(
                &nst,
                None,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                false,
            )
            .unwrap();
            for n in ["x", "y"] {
                s.create(&cmt, Some(ns), cm(n, ""), false).unwrap();
            }
        }
        let names = |ns: Option<&str>, after: Option<&ObjKey>| -> Vec<String> {
            s.list(&cmt, ns, after)
                .map(|((ns, n), _)| format!("{ns}/{n}"))
                .collect()
        };
        assert_eq!(names(Some("b"), None), ["b/x", "b/y"]);
        assert_eq!(names(Some("b"), Some(&("b".into(), "x".into()))), ["b/y"]);
        assert_eq!(
            names(Some("b"), Some(&("a".into(), "y".into()))),
            ["b/x", "b/y"]
        );
        assert!(names(Some("b"), Some(&("c".into(), "x".into()))).is_empty());
        assert!(names(Some("zz"), None).is_empty());
        assert_eq!(names(None, Some(&("b".into(), "y".into()))), ["c/x", "c/y"]);
        assert_eq!(names(None, None).len(), 6);
    }

    #[test]
    fn cluster_ips_stay_unique_through_deletes_and_restores() {
        let mut s = State::new(100);
        let svc = s.registry.by_key("services").unwrap();
        let service = |n: &str, ip: Option<&str>| {
            let mut o = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": n},
                               "spec": {"ports": [{"port": 80}]}});
            if let Some(ip) = ip {
                o["spec"]["clusterIP"] = json!(ip);
            }
            o
        };
        let ip = |o: &Value| o["spec"]["clusterIP"].as_str().unwrap().to_string();
        // One set by hand where the allocator would go next.
        let fixed = s
            .create(
                &svc,
                Some("default"),
                service("fixed", Some("10.96.0.12")),
                false,
            )
            .unwrap();
        assert_eq!(ip(&fixed), "10.96.0.12");
        let mut ips: Vec<String> = (0..4)
            .map(|i| {
                ip(&s
                    .create(
                        &svc,
                        Some("default"),
                        service(&format!("s{i}"), None),
                        false,
                    )
                    .unwrap())
            })
            .collect();
        ips.push(ip(&fixed));
        let distinct: BTreeSet<&String> = ips.iter().collect();
        assert_eq!(distinct.len(), ips.len(), "{ips:?}");
        // A freed address may be handed out again, a held one never.
        s.delete(&svc, "default", "s1", &Value::Null, false)
            .unwrap();
        let mut restored = State::restore(100, &s.snapshot()).unwrap();
        let mut held: BTreeSet<String> = restored
            .list(&svc, None, None)
            .map(|(_, o)| ip(o))
            .collect();
        for i in 0..300 {
            let o = restored
                .create(
                    &svc,
                    Some("default"),
                    service(&format!("n{i}"), None),
                    false,
                )
                .unwrap();
            assert!(held.insert(ip(&o)), "{} handed out twice", ip(&o));
        }
        let headless = restored
            .create(
                &svc,
                Some("default"),
                service("headless", Some("None")),
                false,
            )
            .unwrap();
        assert_eq!(ip(&headless), "None");
    }

    #[test]
    fn snapshot_roundtrip_keeps_objects_and_counter() {
        let mut s = State::new(100);
        let (cmt, _) = types(&s);
        s.create(&cmt, Some("default"), cm("a", ""), false).unwrap();
        let r = State::restore(100, &s.snapshot()).unwrap();
        assert_eq!(r.rv, s.rv);
        assert!(r.get(&cmt, "default", "a").is_some());
        assert!(r.events_after(1).is_err());
    }
}
