//! The resource types a cluster serves: built-in kinds plus kinds registered by CRDs.
//!
//! A [`ResourceType`] is keyed by `(group, plural)`; objects are stored once per type (in the
//! storage version's `apiVersion`) and rewritten to the requested version on read, so all served
//! versions of a CRD are assumed to share one schema. CRD registration ([`crd_to_type`]) reads
//! scope, names, served versions, the status subresource, printer columns and the
//! `x-kubernetes-list-type`/`x-kubernetes-list-map-keys` markers used by server-side apply.

use crate::error::ApiError;
use serde_json::Value;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Where a table cell comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum CellSource {
    /// A JSONPath expression (the CRD `additionalPrinterColumns` subset).
    Path(String),
    /// Number of entries of an object or array at a dotted path (ConfigMap/Secret DATA).
    Count(&'static [&'static str]),
    ServicePorts,
    ServiceExternalIp,
    /// `k=v,...` from a string map (Service selector).
    Selector(&'static str),
    EndpointSlicePorts,
    EndpointSliceEndpoints,
    EventObject,
    NodeStatus,
    NodeRoles,
    PodReady,
    PodRestarts,
    /// `ready/desired` replicas of a Deployment.
    DeploymentReady,
    /// An integer at a path, 0 when absent (replica counts the controller has not written).
    IntOrZero(&'static [&'static str]),
    /// Container names (`false`) or images (`true`) of a pod template.
    TemplateContainers(bool),
    /// `k=v,...` of `spec.selector.matchLabels`.
    MatchLabels,
    /// The value at a path rendered as text, or the fallback when absent (`N/A`).
    TextOr(&'static [&'static str], &'static str),
    /// `Kind/name` of a binding's `roleRef`.
    RoleRef,
    /// A binding's subjects of one kind (`User`, `Group`, `ServiceAccount` as `ns:name`).
    Subjects(&'static str),
}

/// One printer column.
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    pub name: String,
    /// `string`, `integer`, `number`, `boolean` or `date` (rendered as an age).
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub source: CellSource,
}

impl PrinterColumn {
    fn builtin(name: &str, type_: &str, priority: i64, source: CellSource) -> Self {
        PrinterColumn {
            name: name.into(),
            type_: type_.into(),
            format: String::new(),
            description: String::new(),
            priority,
            source,
        }
    }

    fn path(name: &str, path: &str) -> Self {
        Self::builtin(name, "string", 0, CellSource::Path(path.into()))
    }

    fn age() -> Self {
        Self::builtin(
            "Age",
            "date",
            0,
            CellSource::Path(".metadata.creationTimestamp".into()),
        )
    }
}

/// A served version and its printer columns (empty = just Name and Age).
#[derive(Debug, Clone, PartialEq)]
pub struct VersionInfo {
    pub name: String,
    pub columns: Vec<PrinterColumn>,
}

/// How server-side apply and strategic merge treat a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListType {
    Atomic,
    Set,
    Map(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResourceType {
    /// API group, "" for core.
    pub group: String,
    /// Served versions, highest priority first.
    pub versions: Vec<VersionInfo>,
    pub storage_version: String,
    pub kind: String,
    pub list_kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub status_subresource: bool,
    /// Defined by a CustomResourceDefinition (as opposed to built in).
    pub custom: bool,
    /// List semantics from the CRD schema, keyed by field path (`status.conditions`,
    /// `spec.listeners.[].hostnames`; `[]` stands for "an item of the list above").
    pub list_types: BTreeMap<String, ListType>,
    /// Compiled structural schemas by version (custom types only), see [`crate::schema`].
    pub schemas: crate::schema::Schemas,
    /// A review kind (TokenReview): `create` is its only verb, the HTTP layer answers it and
    /// nothing is stored, as on a real server.
    pub create_only: bool,
}

impl ResourceType {
    /// `plural` or `plural.group`; the store key and the name used in messages.
    pub fn key(&self) -> String {
        crate::error::group_resource(&self.group, &self.plural)
    }

    pub fn serves(&self, version: &str) -> bool {
        self.versions.iter().any(|v| v.name == version)
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    pub fn storage_api_version(&self) -> String {
        self.api_version(&self.storage_version)
    }

    pub fn preferred_version(&self) -> &str {
        self.versions
            .first()
            .map(|v| v.name.as_str())
            .unwrap_or(&self.storage_version)
    }

    /// Printer columns for a version, after `Name` (which is always first).
    pub fn columns(&self, version: &str) -> Vec<PrinterColumn> {
        let cols = self
            .versions
            .iter()
            .find(|v| v.name == version)
            .map(|v| v.columns.clone())
            .unwrap_or_default();
        if cols.is_empty() {
            vec![PrinterColumn::age()]
        } else {
            cols
        }
    }

    /// The list semantics for the list at `path` (field names, `[]` for list items).
    pub fn list_type(&self, path: &[String], items: &[&Value]) -> ListType {
        if let Some(t) = self.list_types.get(&path.join(".")) {
            return t.clone();
        }
        well_known_list_type(path.last().map(String::as_str).unwrap_or(""), items)
    }
}

/// Lists whose merge keys are well known across Kubernetes and Gateway API types.
/// Used when the schema does not say (built-ins, CRDs generated without list markers).
pub fn well_known_list_type(field: &str, items: &[&Value]) -> ListType {
    let all_have = |k: &str| items.iter().all(|i| i.get(k).is_some());
    match field {
        "conditions" => ListType::Map(vec!["type".into()]),
        "listeners" | "containers" | "initContainers" | "env" | "volumes" | "supportedKinds"
        | "attachedRoutes" => {
            if field == "supportedKinds" {
                ListType::Map(vec!["group".into(), "kind".into()])
            } else {
                ListType::Map(vec!["name".into()])
            }
        }
        "volumeMounts" => ListType::Map(vec!["mountPath".into()]),
        "ports" if all_have("containerPort") => ListType::Map(vec!["containerPort".into()]),
        "ports" if all_have("port") => ListType::Map(vec!["port".into()]),
        "finalizers" => ListType::Set,
        _ => ListType::Atomic,
    }
}

/// Orders versions the way Kubernetes does: GA > beta > alpha, then by number, others last.
pub fn version_priority(a: &str, b: &str) -> Ordering {
    fn parse(v: &str) -> Option<(u64, u8, u64)> {
        let rest = v.strip_prefix('v')?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let major: u64 = digits.parse().ok()?;
        let tail = &rest[digits.len()..];
        if tail.is_empty() {
            return Some((major, 2, 0));
        }
        let (stage, num) = if let Some(n) = tail.strip_prefix("beta") {
            (1, n)
        } else if let Some(n) = tail.strip_prefix("alpha") {
            (0, n)
        } else {
            return None;
        };
        Some((major, stage, num.parse().ok()?))
    }
    match (parse(a), parse(b)) {
        (Some((ma, sa, na)), Some((mb, sb, nb))) => {
            // Higher stage first, then higher major, then higher minor.
            sb.cmp(&sa).then(mb.cmp(&ma)).then(nb.cmp(&na))
        }
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// The built-in groups in discovery order.
pub const BUILTIN_GROUPS: &[&str] = &[
    "",
    "apiextensions.k8s.io",
    "apps",
    "authentication.k8s.io",
    "coordination.k8s.io",
    "discovery.k8s.io",
    "events.k8s.io",
    "policy",
    "rbac.authorization.k8s.io",
];

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
    short: &[&str],
    categories: &[&str],
    status: bool,
    columns: Vec<PrinterColumn>,
) -> ResourceType {
    ResourceType {
        group: group.into(),
        versions: vec![VersionInfo {
            name: "v1".into(),
            columns,
        }],
        storage_version: "v1".into(),
        kind: kind.into(),
        list_kind: format!("{kind}List"),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: categories.iter().map(|s| s.to_string()).collect(),
        status_subresource: status,
        custom: false,
        list_types: BTreeMap::new(),
        schemas: Default::default(),
        create_only: false,
    }
}

/// The built-in kinds every cluster serves, group by group in discovery order. Each group's
/// function is a declarative table: kind, plural, scope, short names, categories, whether it has
/// a status subresource, and the columns `kubectl get` prints for it.
pub fn builtin_types() -> Vec<ResourceType> {
    [
        core_types(),
        core_runtime_types(),
        events_types(),
        discovery_types(),
        coordination_types(),
        apiextensions_types(),
        apps_types(),
        policy_types(),
        rbac_types(),
        authentication_types(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// `authentication.k8s.io` kinds: TokenReview, created (never stored) to ask whether a bearer
/// token is valid and whose it is (see `crate::auth`). The group's other API, TokenRequest, is the
/// ServiceAccount `token` subresource.
fn authentication_types() -> Vec<ResourceType> {
    let mut review = builtin(
        "authentication.k8s.io",
        "TokenReview",
        "tokenreviews",
        false,
        &[],
        &[],
        false,
        Vec::new(),
    );
    review.create_only = true;
    vec![review]
}

/// `v1 (core)` kinds that configure: namespaces, services, secrets, config maps, service
/// accounts.
fn core_types() -> Vec<ResourceType> {
    use CellSource as C;
    use PrinterColumn as P;
    vec![
        builtin(
            "",
            "Namespace",
            "namespaces",
            false,
            &["ns"],
            &[],
            true,
            vec![P::path("Status", ".status.phase"), P::age()],
        ),
        builtin(
            "",
            "Service",
            "services",
            true,
            &["svc"],
            &["all"],
            true,
            vec![
                P::path("Type", ".spec.type"),
                P::path("Cluster-IP", ".spec.clusterIP"),
                P::builtin("External-IP", "string", 0, C::ServiceExternalIp),
                P::builtin("Port(s)", "string", 0, C::ServicePorts),
                P::age(),
                P::builtin("Selector", "string", 1, C::Selector("selector")),
            ],
        ),
        builtin(
            "",
            "Secret",
            "secrets",
            true,
            &[],
            &[],
            false,
            vec![
                P::path("Type", ".type"),
                P::builtin("Data", "integer", 0, C::Count(&["data", "stringData"])),
                P::age(),
            ],
        ),
        builtin(
            "",
            "ConfigMap",
            "configmaps",
            true,
            &["cm"],
            &[],
            false,
            vec![
                P::builtin("Data", "integer", 0, C::Count(&["data", "binaryData"])),
                P::age(),
            ],
        ),
        builtin(
            "",
            "ServiceAccount",
            "serviceaccounts",
            true,
            &["sa"],
            &[],
            false,
            vec![
                P::builtin("Secrets", "integer", 0, C::Count(&["secrets"])),
                P::age(),
            ],
        ),
    ]
}

/// `v1 (core)` kinds that report on what runs: events, nodes, pods.
fn core_runtime_types() -> Vec<ResourceType> {
    use CellSource as C;
    use PrinterColumn as P;
    let event_columns = || {
        vec![
            P::builtin("Last Seen", "string", 0, C::Path(".lastTimestamp".into())),
            P::path("Type", ".type"),
            P::path("Reason", ".reason"),
            P::builtin("Object", "string", 0, C::EventObject),
            P::path("Message", ".message"),
        ]
    };
    vec![
        builtin(
            "",
            "Event",
            "events",
            true,
            &["ev"],
            &[],
            false,
            event_columns(),
        ),
        builtin(
            "",
            "Node",
            "nodes",
            false,
            &["no"],
            &[],
            true,
            vec![
                P::builtin("Status", "string", 0, C::NodeStatus),
                P::builtin("Roles", "string", 0, C::NodeRoles),
                P::age(),
                P::path("Version", ".status.nodeInfo.kubeletVersion"),
            ],
        ),
        builtin(
            "",
            "Pod",
            "pods",
            true,
            &["po"],
            &["all"],
            true,
            vec![
                P::builtin("Ready", "string", 0, C::PodReady),
                P::path("Status", ".status.phase"),
                P::builtin("Restarts", "integer", 0, C::PodRestarts),
                P::age(),
                P::builtin("IP", "string", 1, C::Path(".status.podIP".into())),
                P::builtin("Node", "string", 1, C::Path(".spec.nodeName".into())),
            ],
        ),
    ]
}

/// `events.k8s.io` kinds.
fn events_types() -> Vec<ResourceType> {
    use PrinterColumn as P;
    vec![builtin(
        "events.k8s.io",
        "Event",
        "events",
        true,
        &["ev"],
        &[],
        false,
        vec![
            P::path("Type", ".type"),
            P::path("Reason", ".reason"),
            P::path("Note", ".note"),
            P::age(),
        ],
    )]
}

/// `discovery.k8s.io` kinds.
fn discovery_types() -> Vec<ResourceType> {
    use CellSource as C;
    use PrinterColumn as P;
    vec![builtin(
        "discovery.k8s.io",
        "EndpointSlice",
        "endpointslices",
        true,
        &[],
        &[],
        false,
        vec![
            P::path("AddressType", ".addressType"),
            P::builtin("Ports", "string", 0, C::EndpointSlicePorts),
            P::builtin("Endpoints", "string", 0, C::EndpointSliceEndpoints),
            P::age(),
        ],
    )]
}

/// `coordination.k8s.io` kinds.
fn coordination_types() -> Vec<ResourceType> {
    use PrinterColumn as P;
    vec![builtin(
        "coordination.k8s.io",
        "Lease",
        "leases",
        true,
        &[],
        &[],
        false,
        vec![P::path("Holder", ".spec.holderIdentity"), P::age()],
    )]
}

/// `apiextensions.k8s.io` kinds.
fn apiextensions_types() -> Vec<ResourceType> {
    use CellSource as C;
    use PrinterColumn as P;
    vec![builtin(
        "apiextensions.k8s.io",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
        &["crd", "crds"],
        &["api-extensions"],
        true,
        vec![P::builtin(
            "Created At",
            "string",
            0,
            C::Path(".metadata.creationTimestamp".into()),
        )],
    )]
}

/// `apps` kinds (stored only: no controller creates ReplicaSets or pods).
fn apps_types() -> Vec<ResourceType> {
    use CellSource as C;
    use PrinterColumn as P;
    vec![builtin(
        "apps",
        "Deployment",
        "deployments",
        true,
        &["deploy"],
        &["all"],
        true,
        vec![
            P::builtin("Ready", "string", 0, C::DeploymentReady),
            P::builtin(
                "Up-to-date",
                "integer",
                0,
                C::IntOrZero(&["status", "updatedReplicas"]),
            ),
            P::builtin(
                "Available",
                "integer",
                0,
                C::IntOrZero(&["status", "availableReplicas"]),
            ),
            P::age(),
            P::builtin("Containers", "string", 1, C::TemplateContainers(false)),
            P::builtin("Images", "string", 1, C::TemplateContainers(true)),
            P::builtin("Selector", "string", 1, C::MatchLabels),
        ],
    )]
}

/// `policy` kinds.
fn policy_types() -> Vec<ResourceType> {
    use CellSource as C;
    use PrinterColumn as P;
    vec![builtin(
        "policy",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        true,
        &["pdb"],
        &[],
        true,
        vec![
            P::builtin(
                "Min Available",
                "string",
                0,
                C::TextOr(&["spec", "minAvailable"], "N/A"),
            ),
            P::builtin(
                "Max Unavailable",
                "string",
                0,
                C::TextOr(&["spec", "maxUnavailable"], "N/A"),
            ),
            P::builtin(
                "Allowed Disruptions",
                "integer",
                0,
                C::IntOrZero(&["status", "disruptionsAllowed"]),
            ),
            P::age(),
        ],
    )]
}

/// `rbac.authorization.k8s.io` kinds; [`crate::rbac`] reads them to authorize service accounts.
fn rbac_types() -> Vec<ResourceType> {
    use CellSource as C;
    use PrinterColumn as P;
    let role = |kind: &str, plural: &str, namespaced: bool| {
        let created = P::builtin(
            "Created At",
            "string",
            0,
            C::Path(".metadata.creationTimestamp".into()),
        );
        builtin(
            "rbac.authorization.k8s.io",
            kind,
            plural,
            namespaced,
            &[],
            &[],
            false,
            vec![created],
        )
    };
    let binding = |kind: &str, plural: &str, namespaced: bool| {
        builtin(
            "rbac.authorization.k8s.io",
            kind,
            plural,
            namespaced,
            &[],
            &[],
            false,
            vec![
                P::builtin("Role", "string", 0, C::RoleRef),
                P::age(),
                P::builtin("Users", "string", 1, C::Subjects("User")),
                P::builtin("Groups", "string", 1, C::Subjects("Group")),
                P::builtin(
                    "ServiceAccounts",
                    "string",
                    1,
                    C::Subjects("ServiceAccount"),
                ),
            ],
        )
    };
    vec![
        role("ClusterRole", "clusterroles", false),
        binding("ClusterRoleBinding", "clusterrolebindings", false),
        role("Role", "roles", true),
        binding("RoleBinding", "rolebindings", true),
    ]
}

/// All types of one cluster.
#[derive(Debug, Clone)]
pub struct Registry {
    types: Vec<Arc<ResourceType>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            types: builtin_types().into_iter().map(Arc::new).collect(),
        }
    }
}

impl Registry {
    /// The type serving `plural` in `group` at `version`.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types
            .iter()
            .find(|t| t.group == group && t.plural == plural && t.serves(version))
            .cloned()
    }

    pub fn by_key(&self, key: &str) -> Option<Arc<ResourceType>> {
        self.types.iter().find(|t| t.key() == key).cloned()
    }

    /// The type of an object from its `apiVersion` and `kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceType>> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        self.types
            .iter()
            .find(|t| t.group == group && t.kind == kind && t.serves(version))
            .cloned()
    }

    pub fn all(&self) -> &[Arc<ResourceType>] {
        &self.types
    }

    /// Adds or replaces the type with the same group and plural.
    pub fn register(&mut self, t: ResourceType) {
        let t = Arc::new(t);
        if let Some(slot) = self
            .types
            .iter_mut()
            .find(|x| x.group == t.group && x.plural == t.plural)
        {
            *slot = t;
        } else {
            self.types.push(t);
        }
    }

    pub fn unregister(&mut self, group: &str, plural: &str) {
        self.types
            .retain(|t| !(t.custom && t.group == group && t.plural == plural));
    }

    /// Groups in discovery order with their versions (highest priority first).
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        let mut custom: BTreeSet<String> = BTreeSet::new();
        for g in BUILTIN_GROUPS {
            groups.push((g.to_string(), Vec::new()));
        }
        for t in &self.types {
            if !BUILTIN_GROUPS.contains(&t.group.as_str()) {
                custom.insert(t.group.clone());
            }
        }
        for g in custom {
            groups.push((g, Vec::new()));
        }
        for (g, versions) in groups.iter_mut() {
            for t in self.types.iter().filter(|t| &t.group == g) {
                for v in &t.versions {
                    if !versions.contains(&v.name) {
                        versions.push(v.name.clone());
                    }
                }
            }
            versions.sort_by(|a, b| version_priority(a, b));
        }
        groups.retain(|(_, v)| !v.is_empty());
        groups
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |c, k| c.get(*k))?.as_str()
}

fn string_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Builds the resource type a CRD defines, or a 422 naming the offending field.
///
/// Steps: the names (group, plural, kind and the object name that must join them), the scope,
/// then the versions (exactly one storage version, whose schema gives the status subresource and
/// list types; every served version with its printer columns).
pub fn crd_to_type(crd: &Value) -> Result<ResourceType, ApiError> {
    let check = CrdCheck {
        name: str_at(crd, &["metadata", "name"]).unwrap_or(""),
    };
    let (group, plural, kind) = check.names(crd)?;
    let namespaced = check.scope(crd)?;
    let versions = check.versions(crd)?;
    let names = crd.get("spec").and_then(|s| s.get("names"));
    Ok(ResourceType {
        group: group.into(),
        versions: versions.served,
        storage_version: versions.storage,
        kind: kind.into(),
        list_kind: str_at(crd, &["spec", "names", "listKind"])
            .map(str::to_string)
            .unwrap_or_else(|| format!("{kind}List")),
        plural: plural.into(),
        singular: str_at(crd, &["spec", "names", "singular"])
            .map(str::to_string)
            .unwrap_or_else(|| kind.to_lowercase()),
        namespaced,
        short_names: string_list(names.and_then(|n| n.get("shortNames"))),
        categories: string_list(names.and_then(|n| n.get("categories"))),
        status_subresource: versions.status_subresource,
        custom: true,
        list_types: versions.list_types,
        schemas: crate::schema::Schemas::from_crd(crd),
        create_only: false,
    })
}

/// What a CRD's `spec.versions` defines.
struct CrdVersions {
    /// Served versions, highest priority first.
    served: Vec<VersionInfo>,
    storage: String,
    status_subresource: bool,
    list_types: BTreeMap<String, ListType>,
}

const ONE_STORAGE_VERSION: &str = "must have exactly one version marked as storage version";

/// The checks of one CRD, worded as 422s against it.
struct CrdCheck<'a> {
    name: &'a str,
}

impl<'a> CrdCheck<'a> {
    fn invalid(&self, field: &str, msg: &str) -> ApiError {
        ApiError::invalid(
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            self.name,
            field,
            msg,
        )
    }

    /// `(group, plural, kind)`, with the object name `plural.group`.
    fn names(&self, crd: &'a Value) -> Result<(&'a str, &'a str, &'a str), ApiError> {
        let group = str_at(crd, &["spec", "group"]).unwrap_or("");
        if group.is_empty() || !group.contains('.') {
            return Err(self.invalid(
                "spec.group",
                "Invalid value: should be a domain with at least one dot",
            ));
        }
        if BUILTIN_GROUPS.contains(&group) {
            return Err(self.invalid("spec.group", "Invalid value: group is reserved"));
        }
        let plural = str_at(crd, &["spec", "names", "plural"]).unwrap_or("");
        let kind = str_at(crd, &["spec", "names", "kind"]).unwrap_or("");
        if plural.is_empty()
            || plural
                .chars()
                .any(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
        {
            return Err(self.invalid(
                "spec.names.plural",
                "Invalid value: must be a lowercase DNS label",
            ));
        }
        if kind.is_empty() {
            return Err(self.invalid("spec.names.kind", "Required value"));
        }
        if self.name != format!("{plural}.{group}") {
            return Err(self.invalid(
                "metadata.name",
                &format!(
                    "Invalid value: \"{}\": must be spec.names.plural+\".\"+spec.group",
                    self.name
                ),
            ));
        }
        Ok((group, plural, kind))
    }

    /// Whether the kind is namespaced.
    fn scope(&self, crd: &Value) -> Result<bool, ApiError> {
        match str_at(crd, &["spec", "scope"]).unwrap_or("") {
            "Namespaced" => Ok(true),
            "Cluster" => Ok(false),
            other => Err(self.invalid(
                "spec.scope",
                &format!(
                    "Unsupported value: \"{other}\": supported values: \"Cluster\", \"Namespaced\""
                ),
            )),
        }
    }

    fn versions(&self, crd: &Value) -> Result<CrdVersions, ApiError> {
        let versions = crd
            .get("spec")
            .and_then(|s| s.get("versions"))
            .and_then(Value::as_array)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                self.invalid(
                    "spec.versions",
                    &format!("Required value: {ONE_STORAGE_VERSION}"),
                )
            })?;
        let mut served = Vec::new();
        let mut storage = None;
        let mut status_subresource = false;
        let mut list_types = BTreeMap::new();
        for v in versions {
            let vname = v.get("name").and_then(Value::as_str).unwrap_or("");
            if vname.is_empty() {
                return Err(self.invalid("spec.versions[].name", "Required value"));
            }
            if v.get("storage").and_then(Value::as_bool) == Some(true) {
                if storage.is_some() {
                    return Err(self.invalid(
                        "spec.versions",
                        &format!("Invalid value: {ONE_STORAGE_VERSION}"),
                    ));
                }
                storage = Some(vname.to_string());
                status_subresource = v
                    .get("subresources")
                    .and_then(|s| s.get("status"))
                    .is_some();
                if let Some(schema) = v.get("schema").and_then(|s| s.get("openAPIV3Schema")) {
                    collect_list_types(schema, &mut Vec::new(), &mut list_types);
                }
            }
            if v.get("served").and_then(Value::as_bool) == Some(true) {
                served.push(VersionInfo {
                    name: vname.into(),
                    columns: self.printer_columns(v)?,
                });
            }
        }
        let storage = storage.ok_or_else(|| {
            self.invalid(
                "spec.versions",
                &format!("Invalid value: {ONE_STORAGE_VERSION}"),
            )
        })?;
        served.sort_by(|a, b| version_priority(&a.name, &b.name));
        Ok(CrdVersions {
            served,
            storage,
            status_subresource,
            list_types,
        })
    }

    /// A served version's `additionalPrinterColumns`.
    fn printer_columns(&self, version: &Value) -> Result<Vec<PrinterColumn>, ApiError> {
        let mut columns = Vec::new();
        for c in version
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let text = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("");
            let (cname, path) = (text("name"), text("jsonPath"));
            let ctype = c.get("type").and_then(Value::as_str).unwrap_or("string");
            if cname.is_empty() || path.is_empty() {
                return Err(self.invalid(
                    "spec.versions[].additionalPrinterColumns",
                    "Required value: name and jsonPath",
                ));
            }
            if !["string", "integer", "number", "boolean", "date"].contains(&ctype) {
                return Err(self.invalid(
                    "spec.versions[].additionalPrinterColumns[].type",
                    &format!("Unsupported value: \"{ctype}\""),
                ));
            }
            columns.push(PrinterColumn {
                name: cname.into(),
                type_: ctype.into(),
                format: text("format").into(),
                description: text("description").into(),
                priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                source: CellSource::Path(path.into()),
            });
        }
        Ok(columns)
    }
}

fn collect_list_types(
    schema: &Value,
    path: &mut Vec<String>,
    out: &mut BTreeMap<String, ListType>,
) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, sub) in props {
            path.push(k.clone());
            collect_list_types(sub, path, out);
            path.pop();
        }
    }
    if schema.get("type").and_then(Value::as_str) == Some("array") {
        match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("map") => {
                let keys = string_list(schema.get("x-kubernetes-list-map-keys"));
                if !keys.is_empty() {
                    out.insert(path.join("."), ListType::Map(keys));
                }
            }
            Some("set") => {
                out.insert(path.join("."), ListType::Set);
            }
            Some("atomic") => {
                out.insert(path.join("."), ListType::Atomic);
            }
            _ => {}
        }
        if let Some(items) = schema.get("items") {
            path.push("[]".into());
            collect_list_types(items, path, out);
            path.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    pub fn sample_crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"], "categories": ["all"]},
                "versions": [
                    {"name": "v1beta1", "served": true, "storage": false},
                    {"name": "v1", "served": true, "storage": true,
                     "subresources": {"status": {}},
                     "additionalPrinterColumns": [{"name": "Class", "type": "string", "jsonPath": ".spec.className"}],
                     "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "spec": {"type": "object", "properties": {"items": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["id"], "items": {"type": "object"}}}}
                     }}}}
                ]
            }
        })
    }

    #[test]
    fn crd_registration_reads_names_versions_and_columns() {
        let t = crd_to_type(&sample_crd()).unwrap();
        assert_eq!(t.key(), "widgets.example.com");
        assert_eq!(t.versions[0].name, "v1");
        assert_eq!(t.versions[1].name, "v1beta1");
        assert_eq!(t.storage_version, "v1");
        assert!(t.status_subresource && t.namespaced && t.custom);
        assert_eq!(t.short_names, vec!["wd"]);
        assert_eq!(t.singular, "widget");
        assert_eq!(t.list_kind, "WidgetList");
        assert_eq!(t.columns("v1")[0].name, "Class");
        assert_eq!(t.columns("v1beta1")[0].name, "Age");
        assert_eq!(
            t.list_types.get("spec.items"),
            Some(&ListType::Map(vec!["id".into()]))
        );
    }

    #[test]
    fn crd_validation_errors() {
        let mut bad = sample_crd();
        bad["metadata"]["name"] = json!("wrong");
        assert_eq!(crd_to_type(&bad).unwrap_err().code, 422);
        let mut bad = sample_crd();
        bad["spec"]["scope"] = json!("Galaxy");
        assert_eq!(crd_to_type(&bad).unwrap_err().code, 422);
        let mut bad = sample_crd();
        bad["spec"]["versions"][0]["storage"] = json!(true);
        assert_eq!(crd_to_type(&bad).unwrap_err().code, 422);
    }

    #[test]
    fn version_ordering() {
        let mut v = vec!["v1alpha1", "v1beta1", "v2", "v1", "v1beta2", "foo"];
        v.sort_by(|a, b| version_priority(a, b));
        assert_eq!(v, vec!["v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "foo"]);
    }
}
