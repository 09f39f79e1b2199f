//! `meridian drill`: fail a region (or cluster, or zone) on purpose under load, watch traffic
//! move away and come back, and write down what happened.
//!
//! This crate owns the drill *client* — its flags ([`DrillArgs`]), the load, the figures and
//! the report — and the workspace's one open-loop load generator ([`openloop`]), which
//! `meridian-bench` uses too. It talks to the controller only through the Kubernetes API (the
//! FailoverDrill object and its status) and to the proxies only through the Gateway's HTTP
//! listener: the drill itself is run by the controller (`controller/src/drill/`), and
//! kill/blackhole are carried out by whoever owns the backends (`meridian up`'s actuator lives
//! in `local/`).
//!
//! ```text
//!  1. kubeconfig context ─► Gateway (status address, HTTP listener, route hostname) ─► URL
//!  2. preflight: one GET through the Gateway of every context ─► known regions; target checked
//!  3. open-loop load starts ──(warmup)──► FailoverDrill created ──► controller fails the target
//!       │  live line every second: req/s, share per serving region, errors, drill phase
//!       │  drill status polled: failTime, restoreTime, phase, abortReason
//!       └─ load stops `--after` past restoreTime (hard stop: warmup + duration + after + 30 s)
//!  4. figures (pure, figures.rs) ─► report.json, report.md, timeline.svg
//! ```
//!
//! [`run`] is those steps in order, one module each: `preflight` (1 `resolve`, 2 `preflight`),
//! `drive` (3: the load loop, with `Driver` creating the drill and following its status),
//! `finish` (4 `build_report`, 5 `verdict`: the exit status). Around them: `args` (the flags,
//! checked into a plan), [`cluster`] (the Kubernetes API), [`load`] (the drill's reading of the
//! shared open-loop generator, [`openloop`]), [`figures`], [`report`] and [`svg`] (pure: samples
//! in, files out).
//!
//! Exit status: 0 when the drill succeeded and every check passed, 2 when it succeeded but a
//! check failed (failed GETs, no 95 % shift, a guard), 3 when the drill was aborted, failed or
//! interrupted; 1 for errors before or outside the drill ([`DrillError`]).
//!
//! What it may depend on: the CRD types (`meridian-crds`), the shared header names
//! (`meridian-model`), kube, hyper, tokio and nix (the generator's timerfd). Not on the
//! controller, the proxy or the local demo; `meridian-bench` depends on it for [`openloop`].

mod args;
pub mod cluster;
mod drive;
pub mod figures;
mod finish;
pub mod load;
pub mod openloop;
mod preflight;
pub mod report;
pub mod svg;

use std::path::PathBuf;

use k8s_openapi::jiff::Timestamp;

use self::args::gw_duration;
pub use self::args::{ArgsError, DrillArgs};
pub use self::cluster::ClusterError;
pub use self::openloop::LoadError;
pub use self::preflight::PreflightError;
use self::preflight::Setup;
pub use self::report::ReportError;

/// Why a drill could not run (exit status 1); a drill that ran but failed is an exit status.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// A flag was refused.
    #[error(transparent)]
    Args(#[from] ArgsError),
    /// The Kubernetes API: kubeconfig, Gateway, FailoverDrill.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The Gateway did not answer or the target is unknown.
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    /// The load generator.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Writing the report.
    #[error(transparent)]
    Report(#[from] ReportError),
}

/// How the target is failed: the CRD's `spec.mode` enum, also the `--mode` value.
pub use meridian_crds::meridian::DrillMode as Mode;
pub(crate) use meridian_model::error_chain;

/// Runs the drill; returns the process exit status.
pub async fn run(args: DrillArgs) -> Result<i32, DrillError> {
    let s = preflight::resolve(&args).await?;
    preflight::preflight(&args, &s).await?;
    let (name, report_dir) = names(&args);
    announce(&args, &s, &name);
    let observed = drive::drive(&args, &s, &name).await?;
    let r = finish::build_report(&args, &s, &name, &observed);
    let files = report::write(&report_dir, &r)?;
    finish::print_summary(&r);
    println!(
        "report: {}",
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(finish::verdict(&r, &observed))
}

/// The drill's name and report directory (defaults stamped with the current UTC time).
fn names(args: &DrillArgs) -> (String, PathBuf) {
    let stamp = Timestamp::now().strftime("%Y%m%dt%H%M%Sz").to_string();
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("drill-{stamp}"));
    let report_dir = args
        .report
        .clone()
        .unwrap_or_else(|| PathBuf::from("drill-report").join(&stamp));
    (name, report_dir)
}

/// One line saying what is about to happen.
fn announce(args: &DrillArgs, s: &Setup, name: &str) {
    let (p, gw) = (&s.p, &s.gw);
    println!(
        "drill {}/{}: {} {} for {}, {} req/s through {} ({}{}), warmup {}, after {}",
        gw.namespace,
        name,
        args.mode.as_str(),
        p.target.describe(),
        gw_duration(p.duration),
        p.rate,
        gw.key(),
        s.url,
        s.host
            .as_ref()
            .map(|h| format!(", Host {h}"))
            .unwrap_or_default(),
        gw_duration(p.warmup),
        gw_duration(p.after),
    );
}
