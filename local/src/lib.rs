//! The local demo: the whole product on one machine, in one process (`meridian up`), and the
//! pieces only it needs.
//!
//! ```text
//!  up ── plan clusters ─► sandbox ─► controller + distribution server ─► proxies ─► demo ─► wait
//!   │                                 (meridian-controller's library      (echo backends, owned
//!   │                                  entry points, as `meridian          by the actuator so
//!   │                                  controller` uses them)              drills can kill them)
//!   └─ apply: server-side apply of the CRDs, the GatewayClass and examples/demo/
//! ```
//!
//! - [`up`] — `meridian up` ([`UpArgs`], [`run`]);
//! - [`echo`] — the demo backend, also `meridian echo`;
//! - [`actuator`] — the drill actuator that kills or blackholes `up`'s echo backends;
//! - [`apply`] — YAML manifests applied with server-side apply (only `up` applies manifests).
//!
//! What it may depend on: every library crate of the workspace (sandbox, controller,
//! distribution, proxy, CRDs, model) — it composes them, nothing composes it except the
//! `meridian` binary. No other crate may depend on this one: the demo is not part of the product.
//!
//! Errors are typed per concern ([`UpError`], [`EchoError`], [`ActuatorError`],
//! [`ApplyError`]); errors of the crates `up` composes are kept whole as their sources.

pub mod actuator;
pub mod apply;
pub mod echo;
pub mod up;

pub use actuator::ActuatorError;
pub use apply::ApplyError;
pub use echo::EchoError;
pub(crate) use meridian_model::error_chain;
pub use up::{UpArgs, UpError, run};
