//! Meridian's multi-cluster Gateway API controller: the pure core.
//!
//! ```text
//!  member cluster A ─┐  watch events            ┌──────────────┐  Snapshot per cluster ─► distribution ─► proxies
//!  member cluster B ─┼──────────────► World ───►│  translate   │
//!  member cluster C ─┘  (apply/delete/reset)    └──────────────┘  StatusUpdate ─► status writer (per cluster)
//!                                                   ▲
//!                              TranslateConfig ─────┘  (controller name, addresses, proxy acks, clock)
//! ```
//!
//! 1. [`world`] — the in-memory index of every member cluster's objects, fed by watchers; never
//!    awaits.
//! 2. [`translate`](mod@translate) — a pure function from the world to one snapshot per cluster and the status
//!    every owned object should have. All Gateway API defaults are applied there.
//! 3. [`refgrant`] — the single ReferenceGrant check every cross-namespace reference goes through.
//! 4. [`status`] — status as data and the merge rules that keep writes idempotent.
//!
//! The I/O shell (watchers, the status writer, snapshot distribution) drives these; nothing in
//! this crate's core talks to an API server.

pub mod refgrant;
pub mod status;
pub mod translate;
pub mod world;

pub use status::{StatusKind, StatusUpdate};
pub use translate::{
    CONTROLLER_NAME, GatewayRef, Output, ProgrammedState, SUPPORTED_FEATURES, TranslateConfig,
    refresh_endpoints, translate,
};
pub use world::{ClusterName, ClusterState, Indexed, Kind, ObjectKey, World};
