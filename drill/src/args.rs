//! `meridian drill`'s flags: [`DrillArgs`] as clap parses them, and [`plan`], which checks them
//! into the settings the run uses. Every refusal names the flag and says what would be accepted.

use std::path::PathBuf;
use std::time::Duration;

use meridian_crds::meridian::DurationError;

use crate::Mode;
use crate::figures::Target;

/// Arguments of `meridian drill`.
#[derive(clap::Args, Debug, Clone)]
pub struct DrillArgs {
    /// Kubeconfig of the cluster to create the drill in.
    #[arg(long, default_value = ".meridian/kubeconfig")]
    pub kubeconfig: PathBuf,
    /// Kubeconfig context (default: the first context in the file).
    #[arg(long)]
    pub context: Option<String>,
    /// Region to fail.
    #[arg(long, value_name = "REGION")]
    pub target: Option<String>,
    /// Member cluster to fail.
    #[arg(long, value_name = "CLUSTER")]
    pub target_cluster: Option<String>,
    /// Zone to fail.
    #[arg(long, value_name = "ZONE")]
    pub target_zone: Option<String>,
    /// How to fail the target.
    #[arg(long, value_enum, default_value_t = Mode::Drain)]
    pub mode: Mode,
    /// How long the target stays failed (Gateway API duration: 30s, 2m, 1m30s; at most 1h, and
    /// at most the controller's --drill-max-duration, 15m unless set).
    #[arg(long, default_value = "30s")]
    pub duration: String,
    /// Requests per second sent through the Gateway (`200` or `200/s`).
    #[arg(long, default_value = "200", value_name = "RATE")]
    pub load: String,
    /// Gateway to load and scope the drill to, NAMESPACE/NAME (default: the only Gateway, or the
    /// first in namespace demo). The drill is created in the Gateway's namespace, so it needs no
    /// ReferenceGrant.
    #[arg(long)]
    pub gateway: Option<String>,
    /// URL to load (default: the Gateway's status address and first HTTP listener port).
    #[arg(long)]
    pub url: Option<String>,
    /// Host header (default: the first hostname of an HTTPRoute attached to the Gateway).
    #[arg(long)]
    pub host: Option<String>,
    /// Load before the drill starts.
    #[arg(long, default_value = "5s")]
    pub warmup: String,
    /// Load after the target is restored.
    #[arg(long, default_value = "10s")]
    pub after: String,
    /// Abort guard: abort when failed requests exceed this percent over the guard window.
    #[arg(long, value_name = "PERCENT")]
    pub guard_error_percent: Option<f64>,
    /// Abort guard: abort when p99 latency exceeds this (e.g. 500ms).
    #[arg(long, value_name = "DURATION")]
    pub guard_p99: Option<String>,
    /// Sliding window of the guards; also how long the controller measures before failing the
    /// target and after restoring it (controller default 5s).
    #[arg(long, value_name = "DURATION")]
    pub guard_window: Option<String>,
    /// Report directory (default: drill-report/<UTC timestamp>).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Per-request timeout, from the request's intended send time. Like a patient client: a
    /// request the proxy holds while it fails over (a blackholed endpoint costs up to its 2 s
    /// connect timeout) shows as latency, not as a failure.
    #[arg(long, default_value = "10s")]
    pub request_timeout: String,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: usize,
    /// Name of the FailoverDrill (default: drill-<UTC timestamp>).
    #[arg(long)]
    pub name: Option<String>,
}

/// A flag the drill refuses; the message is what the user reads, so it names the flag and a fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ArgsError {
    /// Nothing to fail.
    #[error(
        "name what to fail: --target REGION, --target-cluster CLUSTER or --target-zone ZONE \
         (e.g. `meridian drill --target us-east`)"
    )]
    NoTarget,
    /// A duration flag that is not a Gateway API duration.
    #[error("--{flag}: {error}")]
    Duration {
        /// The flag, without dashes.
        flag: &'static str,
        /// Why it does not parse.
        error: DurationError,
    },
    /// A duration outside the range the flag allows.
    #[error("--{flag} {value}: {allowed}")]
    OutOfRange {
        /// The flag, without dashes.
        flag: &'static str,
        /// The value as given.
        value: String,
        /// What is allowed.
        allowed: &'static str,
    },
    /// `--load` is not a number of requests per second.
    #[error("--load {0:?}: expected requests per second, e.g. 200")]
    Rate(String),
    /// `--load` outside 1..=20000.
    #[error("--load {0}: between 1 and 20000 requests per second")]
    RateRange(u32),
    /// Too much load in total.
    #[error("--warmup + --duration + --after: at most 2h of load")]
    TooLong,
    /// `--guard-error-percent` is not a percent.
    #[error("--guard-error-percent {0}: a percent between 0 and 100")]
    Percent(f64),
    /// `--max-in-flight` outside 1..=10000.
    #[error("--max-in-flight {0}: between 1 and 10000")]
    MaxInFlight(usize),
    /// `--gateway` is not NAMESPACE/NAME.
    #[error("--gateway {0:?}: expected NAMESPACE/NAME, e.g. demo/web")]
    GatewayRef(String),
}

/// Checked settings.
pub(crate) struct Plan {
    pub(crate) target: Target,
    pub(crate) duration: Duration,
    pub(crate) warmup: Duration,
    pub(crate) after: Duration,
    pub(crate) rate: u32,
    pub(crate) timeout: Duration,
    pub(crate) guard_p99: Option<Duration>,
    pub(crate) guard_window: Option<Duration>,
    pub(crate) gateway: Option<(String, String)>,
}

fn duration(flag: &'static str, s: &str) -> Result<Duration, ArgsError> {
    meridian_crds::meridian::parse_duration(s).map_err(|error| ArgsError::Duration { flag, error })
}

/// `duration` of `flag`, refused unless `ok` holds.
fn duration_within(
    flag: &'static str,
    s: &str,
    ok: impl Fn(Duration) -> bool,
    allowed: &'static str,
) -> Result<Duration, ArgsError> {
    let d = duration(flag, s)?;
    if ok(d) {
        Ok(d)
    } else {
        Err(ArgsError::OutOfRange {
            flag,
            value: s.to_string(),
            allowed,
        })
    }
}

/// A Gateway API duration string for the drill spec.
pub(crate) fn gw_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

pub(crate) fn parse_rate(s: &str) -> Result<u32, ArgsError> {
    let n = s
        .trim()
        .trim_end_matches("req/s")
        .trim_end_matches("/s")
        .trim();
    let rate: u32 = n.parse().map_err(|_| ArgsError::Rate(s.to_string()))?;
    if !(1..=20_000).contains(&rate) {
        return Err(ArgsError::RateRange(rate));
    }
    Ok(rate)
}

/// Parses `--gateway ns/name` (a bare name means namespace `default`).
pub fn parse_gateway_ref(s: &str) -> Result<(String, String), ArgsError> {
    let (ns, name) = s.split_once('/').unwrap_or(("default", s));
    if ns.is_empty() || name.is_empty() || name.contains('/') {
        return Err(ArgsError::GatewayRef(s.to_string()));
    }
    Ok((ns.to_string(), name.to_string()))
}

/// Which endpoints to fail: at least one of the three target flags.
fn target(args: &DrillArgs) -> Result<Target, ArgsError> {
    let target = Target {
        cluster: args.target_cluster.clone(),
        region: args.target.clone(),
        zone: args.target_zone.clone(),
    };
    if target.cluster.is_none() && target.region.is_none() && target.zone.is_none() {
        return Err(ArgsError::NoTarget);
    }
    Ok(target)
}

/// Checks every flag; the first refusal is returned.
pub(crate) fn plan(args: &DrillArgs) -> Result<Plan, ArgsError> {
    let target = target(args)?;
    let d = duration_within(
        "duration",
        &args.duration,
        |d| !d.is_zero() && d <= Duration::from_secs(3600),
        "between 1ms and 1h",
    )?;
    let warmup = duration_within(
        "warmup",
        &args.warmup,
        |d| d >= Duration::from_secs(1),
        "at least 1s, so the report knows where traffic went before the drill",
    )?;
    let after = duration("after", &args.after)?;
    let timeout = duration_within(
        "request-timeout",
        &args.request_timeout,
        |d| !d.is_zero() && d <= Duration::from_secs(60),
        "between 1ms and 60s",
    )?;
    if warmup + d + after > Duration::from_secs(2 * 3600) {
        return Err(ArgsError::TooLong);
    }
    if let Some(p) = args.guard_error_percent
        && !(0.0..=100.0).contains(&p)
    {
        return Err(ArgsError::Percent(p));
    }
    if args.max_in_flight == 0 || args.max_in_flight > 10_000 {
        return Err(ArgsError::MaxInFlight(args.max_in_flight));
    }
    let optional = |flag, v: &Option<String>| v.as_deref().map(|s| duration(flag, s)).transpose();
    Ok(Plan {
        target,
        duration: d,
        warmup,
        after,
        rate: parse_rate(&args.load)?,
        timeout,
        guard_p99: optional("guard-p99", &args.guard_p99)?,
        guard_window: optional("guard-window", &args.guard_window)?,
        gateway: args.gateway.as_deref().map(parse_gateway_ref).transpose()?,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: DrillArgs,
    }

    pub(crate) fn args(extra: &[&str]) -> DrillArgs {
        Cli::try_parse_from(std::iter::once("drill").chain(extra.iter().copied()))
            .unwrap()
            .args
    }

    fn err(extra: &[&str]) -> String {
        format!("{:#}", plan(&args(extra)).err().unwrap())
    }

    #[test]
    fn flags_are_checked_with_a_fix_in_the_message() {
        assert!(err(&[]).contains("--target REGION"));
        assert!(err(&["--target", "a", "--duration", "soon"]).contains("Gateway API duration"));
        assert!(err(&["--target", "a", "--duration", "2h"]).contains("1h"));
        assert!(err(&["--target", "a", "--load", "lots"]).contains("e.g. 200"));
        assert!(err(&["--target", "a", "--load", "0"]).contains("between 1"));
        assert!(err(&["--target", "a", "--warmup", "500ms"]).contains("at least 1s"));
        assert!(err(&["--target", "a", "--guard-error-percent", "120"]).contains("percent"));
        assert!(err(&["--target", "a", "--gateway", "x/"]).contains("NAMESPACE/NAME"));
        let p = plan(&args(&[
            "--target",
            "us-east",
            "--load",
            "150/s",
            "--guard-p99",
            "250ms",
        ]))
        .unwrap();
        assert_eq!(p.rate, 150);
        assert_eq!(p.duration, Duration::from_secs(30));
        assert_eq!(p.guard_p99, Some(Duration::from_millis(250)));
        assert_eq!(parse_rate("75 req/s").unwrap(), 75);
    }
}
