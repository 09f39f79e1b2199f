//! Meridian's pure routing model, shared by the controller and the proxy.
//!
//! No Kubernetes, pingora or tokio types live here, so everything is tested with plain tables.
//!
//! 1. [`snapshot`] — the typed contract the controller sends and the proxy serves.
//! 2. [`validate`] — why a snapshot is refused (the proxy keeps its last good one).
//! 3. [`router`] — compiles a snapshot into an index and decides the rule for a request
//!    (listener isolation, hostname buckets, Gateway API match precedence).
//! 4. [`filters`] — header edits, redirects and rewrites as pure functions.
//! 5. [`hostname`] — wildcard matching and listener/route hostname intersection.
//! 6. [`locality`] — endpoint preference tiers (zone, region, failover order).
//! 7. [`traffic`] — per-Gateway request counters proxies report (drill guards and timelines).
//! 8. [`gateway`] — naming a Gateway ([`GatewayRef`]) and whether the proxies serve it
//!    ([`ProgrammedState`]), the vocabulary the controller, the distribution layer and the proxy
//!    share.
//! 9. [`patch`] — the route-level difference between two snapshots ([`patch::diff`]) and
//!    applying it, so a change travels as what it touches, not as the whole snapshot.
//! 10. [`path`] — request path normalisation (dot segments, escapes, slashes) done before
//!     routing, so rules and backends see the same path.
//! 11. [`explain`] — what the proxies would do with one request (`meridian explain`): the
//!     router's decision with the rules it beat, and the order a proxy at each locality tries
//!     endpoints in ([`locality::plan`]/[`locality::select`], with `--fail` what-ifs); and the
//!     per-backend view of `meridian status`.
//! 12. [`sni`] — TLS passthrough: the TLSRoute rule for a ClientHello's server name (the
//!     router's host ranking, exact before the longest wildcard suffix).
//!
//! Besides the table tests, `tests/fuzz_*.rs` are property-based fuzz targets of the snapshot
//! decoder, the router and the edge helpers (paths, hosts, query, header filters), with a corpus
//! in `tests/corpus/` (docs/fuzzing.md).

pub mod cors;
pub mod error_chain;
pub mod explain;
pub mod filters;
pub mod gateway;
pub mod headers;
pub mod hostname;
pub mod locality;
pub mod patch;
pub mod path;
pub mod router;
pub mod snapshot;
pub mod sni;
pub mod traffic;
pub mod validate;

pub use error_chain::error_chain;
pub use gateway::{GatewayRef, ParseGatewayRefError, ProgrammedState, ProxyRefusal};
pub use router::{Decision, Request, RouteMatch, Router};
pub use snapshot::Snapshot;
pub use validate::SnapshotError;

/// Decodes a snapshot from JSON or YAML text and compiles it.
pub fn load(text: &str) -> Result<Router, SnapshotError> {
    let snapshot: Snapshot = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| SnapshotError::Decode(e.to_string()))?
    } else {
        return Err(SnapshotError::Decode(
            "expected a JSON object (YAML snapshots are not supported)".to_string(),
        ));
    };
    Router::compile(snapshot)
}
