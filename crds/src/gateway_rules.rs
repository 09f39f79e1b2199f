//! The Gateway API's standard-channel validation and defaults, added to the derived schemas.
//!
//! The `gateway-api` crate's types are generated with `kopium --schema=derived`, which keeps the
//! field set but drops upstream's kubebuilder markers: lengths, patterns, list bounds, numeric
//! ranges, `default`s and the CEL rules (`x-kubernetes-validations`). Without them an API server
//! with our CRDs accepts objects an upstream install refuses, and fills in none of the defaults
//! controllers rely on. The facts below are restated from the Gateway API v1 specification (API
//! reference and the field documentation the crate carries); the expressions and messages are
//! written here.
//!
//! Flow: [`apply`] runs one function per kind; each names fields by path (see
//! [`crate::schema::parse_path`]) and attaches [`Check`]s. Shared shapes (object references,
//! filters, header matches) are functions that take the path prefix they live under, because
//! the derived schema inlines every use instead of sharing a definition. Paths that do not exist
//! are collected (see [`crate::schema_edit_misses`]) so a `gateway-api` upgrade that renames a
//! field fails the tests instead of dropping validation.
//!
//! Deliberately left out: rules that only the experimental channel has (except for the two
//! experimental HTTPRoute rule fields we implement, whose schema and validation
//! `crate::rule_extras` writes), and the rule that an
//! HTTPS listener must carry `tls` (it was proposed for v1.6 and reverted before release; the
//! released CRDs only require a mode on TLS listeners and mode `Terminate` on HTTPS ones; a
//! controller reports an HTTPS listener without certificates in its status instead).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::json;

use crate::schema::{Check, Check::*, SchemaEditor, rule};

/// DNS subdomain (RFC 1123), also what an empty string may be for `group`.
const GROUP: &str = r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A kind name: a letter, then letters, digits and dashes, not ending in a dash.
const KIND: &str = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$";
/// DNS label (RFC 1123).
const NAMESPACE: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// DNS subdomain: listener names, section names, rule names.
const SECTION_NAME: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A DNS name, optionally with a leading `*.` wildcard label.
const HOSTNAME: &str = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A DNS name without wildcard.
const PRECISE_HOSTNAME: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// `domain/path`, as in `example.net/gateway-controller`.
const CONTROLLER_NAME: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9\/\-._~%!$&'()*+,;=:]+$";
/// A bare protocol name (`HTTP`, `HTTPS`, ...) or a domain-prefixed one.
const PROTOCOL: &str = r"^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9]+$";
/// An HTTP header name: RFC 7230 token characters.
const HEADER_NAME: &str = r"^[A-Za-z0-9!#$%&'*+\-.^_\x60|~]+$";
/// Gateway API duration: up to four `<number><unit>` parts, units h, m, s, ms.
const DURATION: &str = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$";
/// Address types: the three core ones or a domain-prefixed custom type.
const ADDRESS_TYPE: &str = r"^Hostname|IPAddress|NamedAddress|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9\/\-._~%!$&'()*+,;=:]+$";
/// metav1.Condition `type`: an optional DNS prefix and a qualified name.
const CONDITION_TYPE: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$";
/// metav1.Condition `reason`: CamelCase-ish, starting with a letter.
const CONDITION_REASON: &str = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$";

/// A fully qualified gRPC service name (`pkg.Service`, optionally with a leading dot), letters
/// compared without regard to case.
const GRPC_SERVICE: &str = r"^(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$";
/// A gRPC method name: an identifier.
const GRPC_METHOD: &str = r"^[A-Za-z_][A-Za-z_0-9]*$";

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
const HTTP_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];
/// CORS `allowMethods` also takes `*`.
const CORS_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "*",
];

fn name() -> [Check; 2] {
    [MinLength(1), MaxLength(253)]
}
fn group() -> [Check; 2] {
    [MaxLength(253), Pattern(GROUP)]
}
fn kind() -> [Check; 3] {
    [MinLength(1), MaxLength(63), Pattern(KIND)]
}
fn namespace() -> [Check; 3] {
    [MinLength(1), MaxLength(63), Pattern(NAMESPACE)]
}
fn section_name() -> [Check; 3] {
    [MinLength(1), MaxLength(253), Pattern(SECTION_NAME)]
}
fn hostname() -> [Check; 3] {
    [MinLength(1), MaxLength(253), Pattern(HOSTNAME)]
}
fn precise_hostname() -> [Check; 3] {
    [MinLength(1), MaxLength(253), Pattern(PRECISE_HOSTNAME)]
}
fn port() -> [Check; 2] {
    [Minimum(1), Maximum(65535)]
}
fn header_name() -> [Check; 3] {
    [MinLength(1), MaxLength(256), Pattern(HEADER_NAME)]
}
fn with(mut a: Vec<Check>, b: impl IntoIterator<Item = Check>) -> Vec<Check> {
    a.extend(b);
    a
}

/// Adds the validation of every Gateway API kind; returns the paths that did not resolve.
pub fn apply(crd: &mut CustomResourceDefinition) -> Vec<String> {
    let kind = crd.spec.names.kind.clone();
    let mut e = SchemaEditor::new(crd);
    match kind.as_str() {
        "GatewayClass" => gateway_class(&mut e),
        "Gateway" => gateway(&mut e),
        "HTTPRoute" => http_route(&mut e),
        "GRPCRoute" => grpc_route(&mut e),
        "ReferenceGrant" => reference_grant(&mut e),
        "BackendTLSPolicy" => backend_tls_policy(&mut e),
        "TLSRoute" => tls_route(&mut e),
        "ListenerSet" => listener_set(&mut e),
        _ => {}
    }
    e.into_misses()
}

/// metav1.Condition lists in status: at most 8, each field bounded.
fn conditions(e: &mut SchemaEditor<'_>, path: &str, min_items: Option<i64>) {
    let mut list = vec![MaxItems(8)];
    list.extend(min_items.map(MinItems));
    e.at(path, &list)
        .at(
            &format!("{path}[].type"),
            &[MinLength(1), MaxLength(316), Pattern(CONDITION_TYPE)],
        )
        .at(
            &format!("{path}[].status"),
            &[Enum(&["True", "False", "Unknown"])],
        )
        .at(
            &format!("{path}[].reason"),
            &[MinLength(1), MaxLength(1024), Pattern(CONDITION_REASON)],
        )
        .at(&format!("{path}[].message"), &[MaxLength(32768)])
        .at(&format!("{path}[].observedGeneration"), &[Minimum(0)]);
}

/// A reference to a namespaced object with an explicit group and kind (parametersRef).
fn local_or_namespaced_ref(e: &mut SchemaEditor<'_>, path: &str, has_namespace: bool) {
    e.at(&format!("{path}.group"), &group())
        .at(&format!("{path}.kind"), &kind())
        .at(&format!("{path}.name"), &name());
    if has_namespace {
        e.at(&format!("{path}.namespace"), &namespace());
    }
}

fn gateway_class(e: &mut SchemaEditor<'_>) {
    e.at(
        "spec.controllerName",
        &[
            MinLength(1),
            MaxLength(253),
            Pattern(CONTROLLER_NAME),
            rule("self == oldSelf", "controllerName is immutable"),
        ],
    )
    .at("spec.description", &[MaxLength(64)])
    .at("status.supportedFeatures", &[MaxItems(64)]);
    local_or_namespaced_ref(e, "spec.parametersRef", true);
    conditions(e, "status.conditions", None);
}

/// Secret-like references (certificateRefs): group defaults to core, kind to Secret.
fn secret_ref(e: &mut SchemaEditor<'_>, path: &str) {
    e.at(
        &format!("{path}.group"),
        &with(vec![Default(json!(""))], group()),
    )
    .at(
        &format!("{path}.kind"),
        &with(vec![Default(json!("Secret"))], kind()),
    )
    .at(&format!("{path}.name"), &name())
    .at(&format!("{path}.namespace"), &namespace());
}

/// Gateway: class name, listeners, ListenerSets, addresses, infrastructure and status.
fn gateway(e: &mut SchemaEditor<'_>) {
    e.at("spec.gatewayClassName", &name());
    gateway_listener_list(e, "listener names must be unique within a Gateway");
    gateway_listener("spec.listeners[]", e);

    // Which ListenerSets may attach: none unless the Gateway says so.
    e.at(
        "spec.allowedListeners.namespaces",
        &[Default(json!({"from": "None"}))],
    )
    .at(
        "spec.allowedListeners.namespaces.from",
        &[Default(json!("None"))],
    );

    gateway_addresses(e);
    e.at("spec.infrastructure.labels", &[MaxProperties(8)])
        .at("spec.infrastructure.annotations", &[MaxProperties(8)]);
    local_or_namespaced_ref(e, "spec.infrastructure.parametersRef", false);

    e.at("status.addresses", &[MaxItems(16)])
        .at("status.listeners", &[MaxItems(64)])
        .at("status.listeners[].name", &section_name())
        .at("status.listeners[].attachedRoutes", &[Minimum(0)])
        .at("status.listeners[].supportedKinds", &[MaxItems(8)])
        .at("status.listeners[].supportedKinds[].group", &group())
        .at("status.listeners[].supportedKinds[].kind", &kind());
    conditions(e, "status.conditions", None);
    conditions(e, "status.listeners[].conditions", None);
}

/// Listeners, as a list (a Gateway's or a ListenerSet's): bounds and the cross-listener rules.
fn gateway_listener_list(e: &mut SchemaEditor<'_>, unique_names: &'static str) {
    e.at(
        "spec.listeners",
        &[
            MinItems(1),
            MaxItems(64),
            rule(
                "self.all(l, l.protocol in ['HTTP', 'TCP', 'UDP'] ? !has(l.tls) : true)",
                "tls may not be set on HTTP, TCP or UDP listeners",
            ),
            rule(
                "self.all(l, l.protocol == 'HTTPS' && has(l.tls) && has(l.tls.mode) ? l.tls.mode == 'Terminate' : true)",
                "tls.mode of an HTTPS listener must be Terminate",
            ),
            rule(
                "self.all(l, l.protocol == 'TLS' ? has(l.tls) && has(l.tls.mode) : true)",
                "a TLS listener needs tls with a mode",
            ),
            rule(
                "self.all(l, l.protocol in ['TCP', 'UDP'] ? !has(l.hostname) || l.hostname == '' : true)",
                "hostname may not be set on TCP or UDP listeners",
            ),
            rule(
                "self.all(a, self.exists_one(b, a.name == b.name))",
                unique_names,
            ),
            rule(
                "self.all(a, self.exists_one(b, a.port == b.port && a.protocol == b.protocol && (has(a.hostname) ? has(b.hostname) && a.hostname == b.hostname : !has(b.hostname))))",
                "each listener needs a distinct combination of port, protocol and hostname",
            ),
        ],
    );
}

/// One listener `l`: its fields, TLS, allowed routes and certificate references.
fn gateway_listener(l: &str, e: &mut SchemaEditor<'_>) {
    e.at(&format!("{l}.name"), &section_name())
        .at(&format!("{l}.hostname"), &hostname())
        .at(&format!("{l}.port"), &port())
        .at(
            &format!("{l}.protocol"),
            &[MinLength(1), MaxLength(255), Pattern(PROTOCOL)],
        )
        .at(&format!("{l}.tls.mode"), &[Default(json!("Terminate"))])
        .at(&format!("{l}.tls.certificateRefs"), &[MaxItems(64)])
        .at(&format!("{l}.tls.options"), &[MaxProperties(16)])
        .at(
            &format!("{l}.allowedRoutes"),
            &[Default(json!({"namespaces": {"from": "Same"}}))],
        )
        .at(
            &format!("{l}.allowedRoutes.namespaces"),
            &[Default(json!({"from": "Same"}))],
        )
        .at(
            &format!("{l}.allowedRoutes.namespaces.from"),
            &[Default(json!("Same"))],
        )
        .at(&format!("{l}.allowedRoutes.kinds"), &[MaxItems(8)])
        .at(
            &format!("{l}.allowedRoutes.kinds[].group"),
            &with(vec![Default(json!(GATEWAY_GROUP))], group()),
        )
        .at(&format!("{l}.allowedRoutes.kinds[].kind"), &kind());
    secret_ref(e, &format!("{l}.tls.certificateRefs[]"));
}

/// ListenerSet (v1): a parentRef to one Gateway (group and kind default to the Gateway's, a
/// namespace may be given) and 1 to 64 listeners under the same rules as a Gateway's; status
/// as a Gateway's (conditions, listeners).
fn listener_set(e: &mut SchemaEditor<'_>) {
    e.at(
        "spec.parentRef.group",
        &with(vec![Default(json!(GATEWAY_GROUP))], group()),
    )
    .at(
        "spec.parentRef.kind",
        &with(vec![Default(json!("Gateway"))], kind()),
    )
    .at("spec.parentRef.name", &name())
    .at("spec.parentRef.namespace", &namespace());
    gateway_listener_list(e, "listener names must be unique within a ListenerSet");
    gateway_listener("spec.listeners[]", e);

    e.at("status.listeners", &[MaxItems(64)])
        .at("status.listeners[].name", &section_name())
        .at("status.listeners[].attachedRoutes", &[Minimum(0)])
        .at("status.listeners[].supportedKinds", &[MaxItems(8)])
        .at("status.listeners[].supportedKinds[].group", &group())
        .at("status.listeners[].supportedKinds[].kind", &kind());
    conditions(e, "status.conditions", None);
    conditions(e, "status.listeners[].conditions", None);
}

/// `spec.addresses`: unique values, IP addresses or DNS names by type.
fn gateway_addresses(e: &mut SchemaEditor<'_>) {
    e.at(
        "spec.addresses",
        &[
            MaxItems(16),
            rule(
                "self.all(a, a.type == 'IPAddress' && has(a.value) ? self.exists_one(b, b.type == a.type && has(b.value) && b.value == a.value) : true)",
                "IPAddress values must be unique",
            ),
            rule(
                "self.all(a, a.type == 'Hostname' && has(a.value) ? self.exists_one(b, b.type == a.type && has(b.value) && b.value == a.value) : true)",
                "Hostname values must be unique",
            ),
        ],
    )
    .at(
        "spec.addresses[]",
        &[
            rule(
                "self.type == 'IPAddress' && has(self.value) ? isIP(self.value) : true",
                "an IPAddress value must be an IP address",
            ),
            rule(
                format!(
                    "self.type == 'Hostname' && has(self.value) ? self.value.matches(\"{}\") : true",
                    HOSTNAME.replace('\\', "\\\\")
                ),
                "a Hostname value must be a DNS name",
            ),
        ],
    )
    .at(
        "spec.addresses[].type",
        &[
            Default(json!("IPAddress")),
            MinLength(1),
            MaxLength(253),
            Pattern(ADDRESS_TYPE),
        ],
    )
    .at("spec.addresses[].value", &[MaxLength(253)]);
}

/// ParentReference (route -> Gateway): group and kind default to the Gateway.
fn parent_ref(e: &mut SchemaEditor<'_>, path: &str) {
    e.at(
        &format!("{path}.group"),
        &with(vec![Default(json!(GATEWAY_GROUP))], group()),
    )
    .at(
        &format!("{path}.kind"),
        &with(vec![Default(json!("Gateway"))], kind()),
    )
    .at(&format!("{path}.name"), &name())
    .at(&format!("{path}.namespace"), &namespace())
    .at(&format!("{path}.sectionName"), &section_name())
    .at(&format!("{path}.port"), &port());
}

/// BackendObjectReference: group defaults to core, kind to Service, and a Service needs a port.
fn backend_object_ref(e: &mut SchemaEditor<'_>, path: &str) {
    e.at(
        path,
        &[rule(
            "size(self.group) == 0 && self.kind == 'Service' ? has(self.port) : true",
            "port is required when referring to a Service",
        )],
    )
    .at(
        &format!("{path}.group"),
        &with(vec![Default(json!(""))], group()),
    )
    .at(
        &format!("{path}.kind"),
        &with(vec![Default(json!("Service"))], kind()),
    )
    .at(&format!("{path}.name"), &name())
    .at(&format!("{path}.namespace"), &namespace())
    .at(&format!("{path}.port"), &port());
}

/// Header modifiers (request and response): set/add keyed by name, remove a set of names.
fn header_modifier(e: &mut SchemaEditor<'_>, path: &str) {
    for list in ["set", "add"] {
        e.at(
            &format!("{path}.{list}"),
            &[MaxItems(16), ListMap(&["name"])],
        )
        .at(&format!("{path}.{list}[].name"), &header_name())
        .at(
            &format!("{path}.{list}[].value"),
            &[MinLength(1), MaxLength(4096)],
        );
    }
    e.at(&format!("{path}.remove"), &[MaxItems(16), ListSet])
        .at(&format!("{path}.remove[]"), &header_name());
}

/// The `path` of RequestRedirect and URLRewrite: the replacement field must match the type.
fn path_modifier(e: &mut SchemaEditor<'_>, path: &str) {
    e.at(
        path,
        &[
            rule(
                "self.type == 'ReplaceFullPath' ? has(self.replaceFullPath) : !has(self.replaceFullPath)",
                "replaceFullPath must be set exactly when type is ReplaceFullPath",
            ),
            rule(
                "self.type == 'ReplacePrefixMatch' ? has(self.replacePrefixMatch) : !has(self.replacePrefixMatch)",
                "replacePrefixMatch must be set exactly when type is ReplacePrefixMatch",
            ),
        ],
    )
    .at(&format!("{path}.replaceFullPath"), &[MaxLength(1024)])
    .at(&format!("{path}.replacePrefixMatch"), &[MaxLength(1024)]);
}

/// Filter type -> the field that carries its configuration.
const FILTER_FIELDS: &[(&str, &str, &str)] = &[
    (
        "RequestHeaderModifier",
        "requestHeaderModifier",
        "requestHeaderModifier must be set exactly when type is RequestHeaderModifier",
    ),
    (
        "ResponseHeaderModifier",
        "responseHeaderModifier",
        "responseHeaderModifier must be set exactly when type is ResponseHeaderModifier",
    ),
    (
        "RequestMirror",
        "requestMirror",
        "requestMirror must be set exactly when type is RequestMirror",
    ),
    (
        "RequestRedirect",
        "requestRedirect",
        "requestRedirect must be set exactly when type is RequestRedirect",
    ),
    (
        "URLRewrite",
        "urlRewrite",
        "urlRewrite must be set exactly when type is URLRewrite",
    ),
    (
        "ExtensionRef",
        "extensionRef",
        "extensionRef must be set exactly when type is ExtensionRef",
    ),
    ("CORS", "cors", "cors must be set exactly when type is CORS"),
];

/// Filter types that may appear at most once in one list, with the message when repeated.
const SINGLE_FILTERS: &[(&str, &str)] = &[
    (
        "RequestHeaderModifier",
        "a RequestHeaderModifier filter may appear only once",
    ),
    (
        "ResponseHeaderModifier",
        "a ResponseHeaderModifier filter may appear only once",
    ),
    (
        "RequestRedirect",
        "a RequestRedirect filter may appear only once",
    ),
    ("URLRewrite", "a URLRewrite filter may appear only once"),
    ("CORS", "a CORS filter may appear only once"),
];

/// An HTTPRoute filter list (rule-level, or `backend` = per backendRef).
fn filters(e: &mut SchemaEditor<'_>, path: &str, backend: bool) {
    let mut list = vec![
        MaxItems(16),
        rule(
            "!(self.exists(f, f.type == 'RequestRedirect') && self.exists(f, f.type == 'URLRewrite'))",
            "RequestRedirect and URLRewrite filters cannot be combined",
        ),
    ];
    for (ty, message) in SINGLE_FILTERS {
        // Per backend the spec limits only the header modifiers.
        if backend && !ty.ends_with("HeaderModifier") {
            continue;
        }
        list.push(rule(
            format!("self.filter(f, f.type == '{ty}').size() <= 1"),
            message,
        ));
    }
    e.at(path, &list);
    let item = format!("{path}[]");
    let item_rules: Vec<Check> = FILTER_FIELDS
        .iter()
        .map(|(ty, field, message)| {
            rule(
                format!("self.type == '{ty}' ? has(self.{field}) : !has(self.{field})"),
                message,
            )
        })
        .collect();
    e.at(&item, &item_rules);
    header_modifier(e, &format!("{item}.requestHeaderModifier"));
    header_modifier(e, &format!("{item}.responseHeaderModifier"));
    request_mirror(e, &format!("{item}.requestMirror"));

    let redirect = format!("{item}.requestRedirect");
    e.at(&format!("{redirect}.hostname"), &precise_hostname())
        .at(&format!("{redirect}.port"), &port())
        .at(
            &format!("{redirect}.statusCode"),
            &[Default(json!(302)), IntEnum(&[301, 302, 303, 307, 308])],
        );
    path_modifier(e, &format!("{redirect}.path"));

    let rewrite = format!("{item}.urlRewrite");
    e.at(&format!("{rewrite}.hostname"), &precise_hostname());
    path_modifier(e, &format!("{rewrite}.path"));

    let ext = format!("{item}.extensionRef");
    e.at(&format!("{ext}.group"), &group())
        .at(&format!("{ext}.kind"), &kind())
        .at(&format!("{ext}.name"), &name());

    cors(e, &format!("{item}.cors"));
}

/// A RequestMirror filter: percent or fraction, and its backend.
fn request_mirror(e: &mut SchemaEditor<'_>, mirror: &str) {
    e.at(
        mirror,
        &[rule(
            "!(has(self.percent) && has(self.fraction))",
            "only one of percent and fraction may be set",
        )],
    )
    .at(&format!("{mirror}.percent"), &[Minimum(0), Maximum(100)])
    .at(
        &format!("{mirror}.fraction"),
        &[rule(
            "self.numerator <= self.denominator",
            "numerator may not be larger than denominator",
        )],
    )
    .at(&format!("{mirror}.fraction.numerator"), &[Minimum(0)])
    .at(
        &format!("{mirror}.fraction.denominator"),
        &[Default(json!(100)), Minimum(1)],
    );
    backend_object_ref(e, &format!("{mirror}.backendRef"));
}

/// A CORS filter: list bounds, set semantics, methods and header names.
fn cors(e: &mut SchemaEditor<'_>, cors: &str) {
    e.at(&format!("{cors}.allowOrigins"), &[MaxItems(64), ListSet])
        .at(
            &format!("{cors}.allowOrigins[]"),
            &[MinLength(1), MaxLength(253)],
        )
        .at(&format!("{cors}.allowMethods"), &[MaxItems(9), ListSet])
        .at(&format!("{cors}.allowMethods[]"), &[Enum(CORS_METHODS)])
        .at(&format!("{cors}.allowHeaders"), &[MaxItems(64), ListSet])
        .at(&format!("{cors}.allowHeaders[]"), &header_name())
        .at(&format!("{cors}.exposeHeaders"), &[MaxItems(64), ListSet])
        .at(&format!("{cors}.exposeHeaders[]"), &header_name())
        .at(&format!("{cors}.maxAge"), &[Default(json!(5)), Minimum(1)]);
}

/// The CEL condition "some filter in `list` (a CEL expression) rewrites by prefix".
fn replaces_prefix(list: &str) -> String {
    format!(
        "{list}.exists(f, (f.type == 'RequestRedirect' && has(f.requestRedirect) && has(f.requestRedirect.path) && f.requestRedirect.path.type == 'ReplacePrefixMatch') || (f.type == 'URLRewrite' && has(f.urlRewrite) && has(f.urlRewrite.path) && f.urlRewrite.path.type == 'ReplacePrefixMatch'))"
    )
}

/// HTTPRoute: parents, hostnames, rules (matches, filters, backends, timeouts) and status.
fn http_route(e: &mut SchemaEditor<'_>) {
    http_route_parents(e);
    e.at("spec.hostnames", &[MaxItems(16)])
        .at("spec.hostnames[]", &hostname());
    http_route_rule_list(e);
    let r = "spec.rules[]";
    http_route_rule(e, r);
    http_route_match(e, &format!("{r}.matches[]"));
    filters(e, &format!("{r}.filters"), false);
    e.at(&format!("{r}.backendRefs"), &[MaxItems(16)]).at(
        &format!("{r}.backendRefs[].weight"),
        &[Default(json!(1)), Minimum(0), Maximum(1_000_000)],
    );
    backend_object_ref(e, &format!("{r}.backendRefs[]"));
    filters(e, &format!("{r}.backendRefs[].filters"), true);

    e.at(
        &format!("{r}.timeouts"),
        &[rule(
            "!(has(self.request) && has(self.backendRequest) && duration(self.request) != duration('0s') && duration(self.backendRequest) > duration(self.request))",
            "the backendRequest timeout may not be longer than the request timeout",
        )],
    )
    .at(&format!("{r}.timeouts.request"), &[Pattern(DURATION)])
    .at(&format!("{r}.timeouts.backendRequest"), &[Pattern(DURATION)]);

    e.at("status.parents", &[MaxItems(32)]).at(
        "status.parents[].controllerName",
        &[MinLength(1), MaxLength(253), Pattern(CONTROLLER_NAME)],
    );
    parent_ref(e, "status.parents[].parentRef");
    conditions(e, "status.parents[].conditions", Some(1));
}

/// `spec.parentRefs`: bounds, sections when several name one parent, and each ref.
fn http_route_parents(e: &mut SchemaEditor<'_>) {
    let same_parent = "a.group == b.group && a.kind == b.kind && a.name == b.name && (has(a.__namespace__) ? a.__namespace__ : '') == (has(b.__namespace__) ? b.__namespace__ : '')";
    e.at(
        "spec.parentRefs",
        &[
            MaxItems(32),
            rule(
                format!(
                    "self.all(a, self.all(b, {same_parent} ? (has(a.sectionName) && a.sectionName != '') == (has(b.sectionName) && b.sectionName != '') : true))"
                ),
                "sectionName must be set on every parentRef when several refer to the same parent",
            ),
            rule(
                format!(
                    "self.all(a, self.exists_one(b, {same_parent} && (has(a.sectionName) ? a.sectionName : '') == (has(b.sectionName) ? b.sectionName : '')))"
                ),
                "parentRefs to the same parent must name distinct sections",
            ),
        ],
    );
    parent_ref(e, "spec.parentRefs[]");
}

/// `spec.rules`: bounds, the default catch-all rule, the total of matches and unique names.
fn http_route_rule_list(e: &mut SchemaEditor<'_>) {
    // At most 128 matches over all rules: written out per index, CEL has no sum.
    let total = (0..16)
        .map(|i| {
            format!("(size(self) > {i} && has(self[{i}].matches) ? size(self[{i}].matches) : 0)")
        })
        .collect::<Vec<_>>()
        .join(" + ");
    e.at(
        "spec.rules",
        &[
            MaxItems(16),
            Default(json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}])),
            rule(
                format!("{total} <= 128"),
                "a route may have at most 128 matches over all its rules",
            ),
            rule(
                "self.all(a, !has(a.name) || self.exists_one(b, has(b.name) && a.name == b.name))",
                "rule names must be unique within a route",
            ),
        ],
    );
}

/// One rule `r`: redirects without backends, prefix rewrites with one PathPrefix match, its
/// name and its matches (default `PathPrefix /`).
fn http_route_rule(e: &mut SchemaEditor<'_>, r: &str) {
    e.at(
        r,
        &[
            rule(
                "has(self.backendRefs) && size(self.backendRefs) > 0 && has(self.filters) ? !self.filters.exists(f, f.type == 'RequestRedirect') : true",
                "a RequestRedirect filter cannot be combined with backendRefs",
            ),
            rule(
                format!(
                    "(has(self.filters) && {}) || (has(self.backendRefs) && self.backendRefs.exists(b, has(b.filters) && {})) ? has(self.matches) && size(self.matches) == 1 && has(self.matches[0].path) && self.matches[0].path.type == 'PathPrefix' : true",
                    replaces_prefix("self.filters"),
                    replaces_prefix("b.filters")
                ),
                "path.replacePrefixMatch needs exactly one match, of type PathPrefix",
            ),
        ],
    )
    .at(&format!("{r}.name"), &section_name())
    .at(
        &format!("{r}.matches"),
        &[
            MaxItems(64),
            Default(json!([{"path": {"type": "PathPrefix", "value": "/"}}])),
        ],
    );
}

/// One match `m`: path (default `PathPrefix /`, URL path rules), headers, query parameters,
/// method.
fn http_route_match(e: &mut SchemaEditor<'_>, m: &str) {
    let exact_or_prefix = "self.type in ['Exact', 'PathPrefix']";
    e.at(
        &format!("{m}.path"),
        &[
            Default(json!({"type": "PathPrefix", "value": "/"})),
            rule(
                format!("{exact_or_prefix} ? self.value.startsWith('/') : true"),
                "an Exact or PathPrefix path must start with '/'",
            ),
            rule(
                format!(
                    "{exact_or_prefix} ? !(self.value.contains('//') || self.value.contains('/./') || self.value.contains('/../') || self.value.contains('%2f') || self.value.contains('%2F') || self.value.contains('#')) : true"
                ),
                "an Exact or PathPrefix path may not contain '//', '/./', '/../', '%2f', '%2F' or '#'",
            ),
            rule(
                format!(
                    "{exact_or_prefix} ? !(self.value.endsWith('/..') || self.value.endsWith('/.')) : true"
                ),
                "an Exact or PathPrefix path may not end with '/.' or '/..'",
            ),
            rule(
                format!(
                    "{exact_or_prefix} ? self.value.matches(\"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{{2}})+$\") : true"
                ),
                "an Exact or PathPrefix path may only contain URL path characters and %-escapes",
            ),
        ],
    )
    .at(&format!("{m}.path.type"), &[Default(json!("PathPrefix"))])
    .at(
        &format!("{m}.path.value"),
        &[Default(json!("/")), MaxLength(1024)],
    )
    .at(
        &format!("{m}.headers"),
        &[MaxItems(16), ListMap(&["name"])],
    )
    .at(&format!("{m}.headers[].name"), &header_name())
    .at(&format!("{m}.headers[].type"), &[Default(json!("Exact"))])
    .at(
        &format!("{m}.headers[].value"),
        &[MinLength(1), MaxLength(4096)],
    )
    .at(
        &format!("{m}.queryParams"),
        &[MaxItems(16), ListMap(&["name"])],
    )
    .at(&format!("{m}.queryParams[].name"), &header_name())
    .at(&format!("{m}.queryParams[].type"), &[Default(json!("Exact"))])
    .at(
        &format!("{m}.queryParams[].value"),
        &[MinLength(1), MaxLength(1024)],
    )
    .at(&format!("{m}.method"), &[Enum(HTTP_METHODS)]);
}

/// GRPCRoute: parents and hostnames as for HTTPRoute; rules with gRPC method and header
/// matches, the four filters GRPCRoute has, backends and status.
fn grpc_route(e: &mut SchemaEditor<'_>) {
    http_route_parents(e);
    e.at("spec.hostnames", &[MaxItems(16)])
        .at("spec.hostnames[]", &hostname());
    // Same bounds as HTTPRoute; unlike HTTPRoute there is no default rule (an omitted list
    // matches every call, which the controller implements).
    let total = (0..16)
        .map(|i| {
            format!("(size(self) > {i} && has(self[{i}].matches) ? size(self[{i}].matches) : 0)")
        })
        .collect::<Vec<_>>()
        .join(" + ");
    e.at(
        "spec.rules",
        &[
            MaxItems(16),
            rule(
                format!("{total} <= 128"),
                "a route may have at most 128 matches over all its rules",
            ),
            rule(
                "self.all(a, !has(a.name) || self.exists_one(b, has(b.name) && a.name == b.name))",
                "rule names must be unique within a route",
            ),
        ],
    );
    let r = "spec.rules[]";
    e.at(&format!("{r}.name"), &section_name())
        .at(&format!("{r}.matches"), &[MaxItems(64)]);
    grpc_route_match(e, &format!("{r}.matches[]"));
    grpc_filters(e, &format!("{r}.filters"));
    e.at(&format!("{r}.backendRefs"), &[MaxItems(16)]).at(
        &format!("{r}.backendRefs[].weight"),
        &[Default(json!(1)), Minimum(0), Maximum(1_000_000)],
    );
    backend_object_ref(e, &format!("{r}.backendRefs[]"));
    grpc_filters(e, &format!("{r}.backendRefs[].filters"));

    e.at("status.parents", &[MaxItems(32)]).at(
        "status.parents[].controllerName",
        &[MinLength(1), MaxLength(253), Pattern(CONTROLLER_NAME)],
    );
    parent_ref(e, "status.parents[].parentRef");
    conditions(e, "status.parents[].conditions", Some(1));
}

/// One GRPCRoute match `m`: the method matcher (type `Exact` by default; service and method
/// names checked only for `Exact`, a `RegularExpression` is the implementation's to judge) and
/// header matchers.
fn grpc_route_match(e: &mut SchemaEditor<'_>, m: &str) {
    let exact = "(!has(self.type) || self.type == 'Exact')";
    e.at(
        &format!("{m}.method"),
        &[
            rule(
                "has(self.service) || has(self.method)",
                "a method match needs service, method or both",
            ),
            rule(
                format!(
                    "{exact} && has(self.service) ? self.service.matches('{}') : true",
                    cel_string(GRPC_SERVICE)
                ),
                "an Exact service must be a gRPC service name (dot-separated identifiers)",
            ),
            rule(
                format!(
                    "{exact} && has(self.method) ? self.method.matches('{}') : true",
                    cel_string(GRPC_METHOD)
                ),
                "an Exact method must be a gRPC method name (an identifier)",
            ),
        ],
    )
    .at(&format!("{m}.method.type"), &[Default(json!("Exact"))])
    .at(&format!("{m}.method.service"), &[MaxLength(1024)])
    .at(&format!("{m}.method.method"), &[MaxLength(1024)])
    .at(&format!("{m}.headers"), &[MaxItems(16), ListMap(&["name"])])
    .at(&format!("{m}.headers[].name"), &header_name())
    .at(&format!("{m}.headers[].type"), &[Default(json!("Exact"))])
    .at(
        &format!("{m}.headers[].value"),
        &[MinLength(1), MaxLength(4096)],
    );
}

/// `s` as the body of a single-quoted CEL string literal (backslashes escaped).
fn cel_string(s: &str) -> String {
    s.replace('\\', "\\\\")
}

/// A GRPCRoute filter list (rule-level or per backendRef): the header modifiers once each,
/// RequestMirror and ExtensionRef; GRPCRoute has no redirect, rewrite or CORS filter.
fn grpc_filters(e: &mut SchemaEditor<'_>, path: &str) {
    const GRPC_FILTERS: &[&str] = &[
        "RequestHeaderModifier",
        "ResponseHeaderModifier",
        "RequestMirror",
        "ExtensionRef",
    ];
    let mut list = vec![MaxItems(16)];
    for (ty, message) in SINGLE_FILTERS {
        if ty.ends_with("HeaderModifier") {
            list.push(rule(
                format!("self.filter(f, f.type == '{ty}').size() <= 1"),
                message,
            ));
        }
    }
    e.at(path, &list);
    let item = format!("{path}[]");
    let item_rules: Vec<Check> = FILTER_FIELDS
        .iter()
        .filter(|(ty, _, _)| GRPC_FILTERS.contains(ty))
        .map(|(ty, field, message)| {
            rule(
                format!("self.type == '{ty}' ? has(self.{field}) : !has(self.{field})"),
                message,
            )
        })
        .collect();
    e.at(&item, &item_rules);
    header_modifier(e, &format!("{item}.requestHeaderModifier"));
    header_modifier(e, &format!("{item}.responseHeaderModifier"));
    request_mirror(e, &format!("{item}.requestMirror"));
    let ext = format!("{item}.extensionRef");
    e.at(&format!("{ext}.group"), &group())
        .at(&format!("{ext}.kind"), &kind())
        .at(&format!("{ext}.name"), &name());
}

/// TLSRoute (v1): parents as for HTTPRoute; 1 to 16 SNI hostnames (a leading `*.` label at
/// most, never an IP address: SNI carries no IPs); exactly one rule (v1 has no matches, so a
/// second rule could never be chosen) with 1 to 16 backends, each a Service with a port unless
/// another kind is named; status as for the other routes.
fn tls_route(e: &mut SchemaEditor<'_>) {
    http_route_parents(e);
    e.at("spec.hostnames", &[MinItems(1), MaxItems(16)]).at(
        "spec.hostnames[]",
        &with(
            vec![rule(
                "!isIP(self)",
                "a TLSRoute hostname must be a DNS name, not an IP address",
            )],
            hostname(),
        ),
    );
    e.at(
        "spec.rules",
        &[
            MinItems(1),
            MaxItems(1),
            rule(
                "self.all(a, !has(a.name) || self.exists_one(b, has(b.name) && a.name == b.name))",
                "rule names must be unique within a route",
            ),
        ],
    );
    let r = "spec.rules[]";
    e.at(&format!("{r}.name"), &section_name())
        .at(&format!("{r}.backendRefs"), &[MinItems(1), MaxItems(16)])
        .at(
            &format!("{r}.backendRefs[].weight"),
            &[Default(json!(1)), Minimum(0), Maximum(1_000_000)],
        );
    backend_object_ref(e, &format!("{r}.backendRefs[]"));

    e.at("status.parents", &[MaxItems(32)]).at(
        "status.parents[].controllerName",
        &[MinLength(1), MaxLength(253), Pattern(CONTROLLER_NAME)],
    );
    parent_ref(e, "status.parents[].parentRef");
    conditions(e, "status.parents[].conditions", Some(1));
}

fn reference_grant(e: &mut SchemaEditor<'_>) {
    e.at("spec.from", &[MinItems(1), MaxItems(16)])
        .at("spec.from[].group", &group())
        .at("spec.from[].kind", &kind())
        .at("spec.from[].namespace", &namespace())
        .at("spec.to", &[MinItems(1), MaxItems(16)])
        .at("spec.to[].group", &group())
        .at("spec.to[].kind", &kind())
        .at("spec.to[].name", &name());
}

/// `subjectAltNames[].uri`: an absolute URI (scheme, then anything but whitespace).
const SAN_URI: &str = r"^[a-zA-Z][a-zA-Z0-9+.-]*:[^\s]+$";

/// BackendTLSPolicy: up to 16 Service targets (unique per section), a precise hostname, a CA
/// from ConfigMaps or the system trust store (exactly one of the two), typed subject alt names.
fn backend_tls_policy(e: &mut SchemaEditor<'_>) {
    let same_target = "a.group == b.group && a.kind == b.kind && a.name == b.name";
    e.at(
        "spec.targetRefs",
        &[
            MinItems(1),
            MaxItems(16),
            rule(
                format!(
                    "self.all(a, self.all(b, {same_target} ? (has(a.sectionName) && a.sectionName != '') == (has(b.sectionName) && b.sectionName != '') : true))"
                ),
                "sectionName must be set on every targetRef when several refer to the same target",
            ),
            rule(
                format!(
                    "self.all(a, self.exists_one(b, {same_target} && (has(a.sectionName) ? a.sectionName : '') == (has(b.sectionName) ? b.sectionName : '')))"
                ),
                "targetRefs to the same target must name distinct sections",
            ),
        ],
    )
    .at(
        "spec.targetRefs[]",
        &[rule(
            "self.group == '' && self.kind == 'Service'",
            "a targetRef must refer to a core Service (group \"\", kind Service)",
        )],
    )
    .at("spec.targetRefs[].group", &group())
    .at("spec.targetRefs[].kind", &kind())
    .at("spec.targetRefs[].name", &name())
    .at("spec.targetRefs[].sectionName", &section_name())
    .at("spec.options", &[MaxProperties(16)]);

    let v = "spec.validation";
    e.at(
        v,
        &[
            rule(
                "!(has(self.caCertificateRefs) && size(self.caCertificateRefs) > 0 && has(self.wellKnownCACertificates) && self.wellKnownCACertificates != '')",
                "caCertificateRefs and wellKnownCACertificates may not both be set",
            ),
            rule(
                "(has(self.caCertificateRefs) && size(self.caCertificateRefs) > 0) || (has(self.wellKnownCACertificates) && self.wellKnownCACertificates != '')",
                "one of caCertificateRefs or wellKnownCACertificates must be set",
            ),
        ],
    )
    .at(
        &format!("{v}.hostname"),
        &with(
            vec![rule("!isIP(self)", "hostname must be a DNS name, not an IP address")],
            precise_hostname(),
        ),
    )
    .at(&format!("{v}.caCertificateRefs"), &[MaxItems(8)])
    .at(&format!("{v}.caCertificateRefs[].group"), &group())
    .at(&format!("{v}.caCertificateRefs[].kind"), &kind())
    .at(&format!("{v}.caCertificateRefs[].name"), &name())
    .at(&format!("{v}.wellKnownCACertificates"), &[Enum(&["System"])])
    .at(&format!("{v}.subjectAltNames"), &[MaxItems(5)])
    .at(
        &format!("{v}.subjectAltNames[]"),
        &[
            rule(
                "self.type == 'Hostname' ? has(self.hostname) && self.hostname != '' : !has(self.hostname) || self.hostname == ''",
                "hostname must be set exactly when type is Hostname",
            ),
            rule(
                "self.type == 'URI' ? has(self.uri) && self.uri != '' : !has(self.uri) || self.uri == ''",
                "uri must be set exactly when type is URI",
            ),
        ],
    )
    .at(&format!("{v}.subjectAltNames[].type"), &[Enum(&["Hostname", "URI"])])
    .at(&format!("{v}.subjectAltNames[].hostname"), &hostname())
    .at(
        &format!("{v}.subjectAltNames[].uri"),
        &[MaxLength(253), Pattern(SAN_URI)],
    );

    e.at("status.ancestors", &[MaxItems(16)]).at(
        "status.ancestors[].controllerName",
        &[MinLength(1), MaxLength(253), Pattern(CONTROLLER_NAME)],
    );
    parent_ref(e, "status.ancestors[].ancestorRef");
    conditions(e, "status.ancestors[].conditions", Some(1));
}
