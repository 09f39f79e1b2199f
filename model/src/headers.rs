//! HTTP header names that Meridian's own components agree on: the proxy sets them, the drill
//! client and tests read them. Defined once here because the model is the crate every side already
//! shares.

/// Response header naming the endpoint that answered, `<cluster>/<region>/<zone>` (set when the
/// Gateway asks for it with the `meridian.dev/served-by-header` annotation; always on east-west
/// responses).
pub const SERVED_BY: &str = "x-meridian-served-by";

/// Request header naming the backend (`Backend::name`) on a hop to a remote proxy's east-west
/// listener. Only proxies set it: a client's is dropped.
pub const BACKEND: &str = "x-meridian-backend";
