//! What Meridian's tests share, so each crate's tests stop carrying their own copy.
//!
//! ```text
//! wait     ─ eventually / eventually_async: poll a check until it holds, bounded; holds_for:
//!            a check that must keep holding for a while; settles: a counter that stopped moving
//! net      ─ free_port: a loopback port for configs that cannot say "port 0"
//! echo     ─ Echo: an in-process HTTP backend that answers with what it saw and records it
//! process  ─ Stop (a child stopped on drop), lines (a child's stdout on a channel), tool
//!            checks (`kubectl` present?), ScratchDir (a unique directory for kubeconfigs and
//!            manifests, removed on drop)
//! ```
//!
//! Every wait here is bounded and every listener binds loopback. The waits run on tokio time, so
//! a test on the paused clock (`#[tokio::test(start_paused = true)]`) waits no wall-clock time.
//!
//! This crate is a dev-dependency only and depends on no Meridian crate.

pub mod echo;
pub mod net;
pub mod process;
pub mod wait;

pub use echo::{Echo, Seen};
pub use net::free_port;
pub use process::{ScratchDir, Stop, lines, rest, tool_present, wait_or_kill};
pub use wait::{
    Outcome, eventually, eventually_async, eventually_blocking, holds_for, holds_for_async, settles,
};
