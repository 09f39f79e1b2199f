//! `meridian drill`: fail a region (or cluster, or zone) on purpose under load, watch traffic
//! move away and come back, and write down what happened.
//!
//! This crate owns the drill *client*: its flags ([`DrillArgs`]), the load generator, the
//! figures and the report. It may depend on the CRD types (`meridian-crds`), the shared header
//! names (`meridian-model`) and on kube, hyper and tokio, and talks to the controller only
//! through the Kubernetes API (the FailoverDrill object and its status) and to the proxies only
//! through the Gateway's HTTP listener. It does
//! not depend on the controller, the proxy or the local demo: the drill itself is run by the
//! controller (`controller/src/drill/`), and kill/blackhole are carried out by whoever owns the
//! backends (`meridian up`'s actuator lives in `local/`).
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
//! [`run`] is those steps in order: `resolve` (1), `preflight` (2), `drive` (3: the load loop,
//! with `Driver` creating the drill and following its status), `build_report` (4) and
//! `verdict` (the exit status).
//!
//! Exit status: 0 when the drill succeeded and every check passed, 2 when it succeeded but a
//! check failed (failed GETs, no 95 % shift, a guard), 3 when the drill was aborted, failed or
//! interrupted; 1 for errors before or outside the drill.

pub mod cluster;
pub mod figures;
pub mod load;
pub mod report;
pub mod svg;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::bail;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use meridian_crds::meridian::{
    DrillGuards, DrillObjectRef, DrillScope, DrillTargetSpec, FailoverDrill, FailoverDrillSpec,
};
use tokio::time::Instant;

use self::cluster::{Cluster, DrillView, GatewayTarget, Known};
use self::figures::{FailKind, Moments, Outcome, Sample, ServedBy, Target};
use self::load::{LoadConfig, Probe, ServedBySource};

/// How the target is failed: the CRD's `spec.mode` enum, also the `--mode` value.
pub use meridian_crds::meridian::DrillMode as Mode;

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
    /// How long the target stays failed (Gateway API duration: 30s, 2m, 1m30s; at most 1h).
    #[arg(long, default_value = "30s")]
    pub duration: String,
    /// Requests per second sent through the Gateway (`200` or `200/s`).
    #[arg(long, default_value = "200", value_name = "RATE")]
    pub load: String,
    /// Gateway to load and scope the drill to, NAMESPACE/NAME (default: the only Gateway, or the
    /// first in namespace demo).
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

fn duration(flag: &str, s: &str) -> anyhow::Result<Duration> {
    meridian_crds::meridian::parse_duration(s).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
}

/// A Gateway API duration string for the drill spec.
fn gw_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn parse_rate(s: &str) -> anyhow::Result<u32> {
    let n = s
        .trim()
        .trim_end_matches("req/s")
        .trim_end_matches("/s")
        .trim();
    let rate: u32 = n
        .parse()
        .map_err(|_| anyhow::anyhow!("--load {s:?}: expected requests per second, e.g. 200"))?;
    if !(1..=20_000).contains(&rate) {
        bail!("--load {rate}: between 1 and 20000 requests per second");
    }
    Ok(rate)
}

/// Checked settings.
struct Plan {
    target: Target,
    duration: Duration,
    warmup: Duration,
    after: Duration,
    rate: u32,
    timeout: Duration,
    guard_p99: Option<Duration>,
    guard_window: Option<Duration>,
    gateway: Option<(String, String)>,
}

fn plan(args: &DrillArgs) -> anyhow::Result<Plan> {
    let target = Target {
        cluster: args.target_cluster.clone(),
        region: args.target.clone(),
        zone: args.target_zone.clone(),
    };
    if target.cluster.is_none() && target.region.is_none() && target.zone.is_none() {
        bail!(
            "name what to fail: --target REGION, --target-cluster CLUSTER or --target-zone ZONE \
             (e.g. `meridian drill --target us-east`)"
        );
    }
    let d = duration("duration", &args.duration)?;
    if d.is_zero() || d > Duration::from_secs(3600) {
        bail!("--duration {}: between 1ms and 1h", args.duration);
    }
    let warmup = duration("warmup", &args.warmup)?;
    if warmup < Duration::from_secs(1) {
        bail!(
            "--warmup {}: at least 1s, so the report knows where traffic went before the drill",
            args.warmup
        );
    }
    let after = duration("after", &args.after)?;
    let timeout = duration("request-timeout", &args.request_timeout)?;
    if timeout.is_zero() || timeout > Duration::from_secs(60) {
        bail!(
            "--request-timeout {}: between 1ms and 60s",
            args.request_timeout
        );
    }
    if warmup + d + after > Duration::from_secs(2 * 3600) {
        bail!("--warmup + --duration + --after: at most 2h of load");
    }
    if let Some(p) = args.guard_error_percent
        && !(0.0..=100.0).contains(&p)
    {
        bail!("--guard-error-percent {p}: a percent between 0 and 100");
    }
    if args.max_in_flight == 0 || args.max_in_flight > 10_000 {
        bail!(
            "--max-in-flight {}: between 1 and 10000",
            args.max_in_flight
        );
    }
    Ok(Plan {
        target,
        duration: d,
        warmup,
        after,
        rate: parse_rate(&args.load)?,
        timeout,
        guard_p99: args
            .guard_p99
            .as_deref()
            .map(|s| duration("guard-p99", s))
            .transpose()?,
        guard_window: args
            .guard_window
            .as_deref()
            .map(|s| duration("guard-window", s))
            .transpose()?,
        gateway: args
            .gateway
            .as_deref()
            .map(cluster::parse_gateway_ref)
            .transpose()?,
    })
}

fn gateway_url(gw: &GatewayTarget, url: Option<&str>) -> anyhow::Result<hyper::Uri> {
    let text = match url {
        Some(u) => u.to_string(),
        None => {
            let host = if gw.address.contains(':') {
                format!("[{}]", gw.address)
            } else {
                gw.address.clone()
            };
            format!("http://{host}:{}/", gw.port)
        }
    };
    let uri: hyper::Uri = text
        .parse()
        .map_err(|e| anyhow::anyhow!("--url {text:?}: {e}"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        bail!("--url {text:?}: only http://HOST[:PORT]/PATH URLs (the load does not speak TLS)");
    }
    Ok(uri)
}

/// The FailoverDrill object.
fn drill_object(name: &str, gw: &GatewayTarget, p: &Plan, args: &DrillArgs) -> FailoverDrill {
    let guards = DrillGuards {
        // Whole percents as integers, anything else as the decimal string the CRD accepts.
        max_error_percent: args.guard_error_percent.map(|pct| {
            if pct.fract() == 0.0 {
                IntOrString::Int(pct as i32)
            } else {
                IntOrString::String(pct.to_string())
            }
        }),
        max_p99_latency: p.guard_p99.map(gw_duration),
        window: p.guard_window.map(gw_duration),
        min_requests: None,
    };
    let spec = FailoverDrillSpec {
        target: DrillTargetSpec {
            cluster: p.target.cluster.clone(),
            region: p.target.region.clone(),
            zone: p.target.zone.clone(),
        },
        scope: Some(DrillScope {
            gateways: vec![DrillObjectRef {
                namespace: Some(gw.namespace.clone()),
                name: gw.name.clone(),
            }],
            service_imports: Vec::new(),
        }),
        mode: Some(args.mode),
        duration: Some(gw_duration(p.duration)),
        guards: (guards != DrillGuards::default()).then_some(guards),
    };
    let mut d = FailoverDrill::new(name, spec);
    d.metadata.namespace = Some(gw.namespace.clone());
    d.metadata.labels = Some(
        [(
            "app.kubernetes.io/created-by".to_string(),
            "meridian-drill".to_string(),
        )]
        .into(),
    );
    d
}

/// One GET through the Gateway of every kubeconfig context (same Gateway namespace/name):
/// localities seen answering, so an unknown target can be refused with the known ones listed.
async fn known_localities(
    kc: &kube::config::Kubeconfig,
    home: &Cluster,
    gw: &GatewayTarget,
    home_answer: &ServedBy,
) -> Known {
    let mut known = Known::default();
    let mut add = |by: &ServedBy| {
        if !by.region.is_empty() {
            known.clusters.insert(by.cluster.clone());
            known.regions.insert(by.region.clone());
            known.zones.insert(by.zone.clone());
        }
    };
    add(home_answer);
    let sources = ServedBySource::default();
    for ctx in cluster::contexts(kc).into_iter().take(32) {
        if ctx == home.context {
            continue;
        }
        let found = tokio::time::timeout(Duration::from_secs(3), async {
            let c = cluster::connect(kc, Some(&ctx)).await.ok()?;
            let want = (gw.namespace.clone(), gw.name.clone());
            let other = cluster::find_gateway(&c, Some(&want)).await.ok()?;
            let url = gateway_url(&other, None).ok()?;
            let probe = Probe::new(url, gw.hostname.clone(), Duration::from_secs(1));
            match probe.get(&sources).await {
                Ok(Outcome::Answered(by)) => Some(by),
                _ => None,
            }
        })
        .await;
        if let Ok(Some(by)) = found {
            add(&by);
        }
    }
    known
}

fn check_target(t: &Target, known: &Known) -> anyhow::Result<()> {
    let list =
        |s: &std::collections::BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(", ");
    if known.regions.is_empty() {
        // Nothing named who answered (no served-by header, not the echo backend): the controller
        // is the judge.
        return Ok(());
    }
    if let Some(r) = &t.region
        && !known.regions.contains(r)
    {
        bail!(
            "unknown region {r:?}: regions answering through the Gateway in this kubeconfig's \
             contexts are {}",
            list(&known.regions)
        );
    }
    if let Some(c) = &t.cluster
        && !known.clusters.contains(c)
    {
        bail!(
            "unknown cluster {c:?}: clusters answering through the Gateway in this kubeconfig's \
             contexts are {}",
            list(&known.clusters)
        );
    }
    Ok(())
}

fn wall_offset_ms(t0_wall: Timestamp, at: Option<&str>) -> Option<f64> {
    let ts = Timestamp::from_str(at?).ok()?;
    let d = ts.duration_since(t0_wall);
    Some(d.as_secs_f64() * 1000.0)
}

fn live_line(elapsed: Duration, window: &[Sample], phase: &str) -> String {
    let mut regions: BTreeMap<&str, u64> = BTreeMap::new();
    let mut answered = 0u64;
    let mut failed: BTreeMap<FailKind, u64> = BTreeMap::new();
    for s in window {
        match &s.outcome {
            Outcome::Answered(by) => {
                answered += 1;
                *regions.entry(by.region_label()).or_default() += 1;
            }
            Outcome::Failed(k) => *failed.entry(*k).or_default() += 1,
        }
    }
    let share = regions
        .iter()
        .map(|(r, n)| format!("{r} {:.0}%", *n as f64 * 100.0 / answered.max(1) as f64))
        .collect::<Vec<_>>()
        .join(" · ");
    let errors: u64 = failed.values().sum();
    let detail = failed
        .iter()
        .map(|(k, n)| format!("{n} {}", k.label()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{:>5.1}s  {:>5} req/s  {}  errors {errors}{}  drill {}",
        elapsed.as_secs_f64(),
        window.len(),
        if share.is_empty() { "-".into() } else { share },
        if detail.is_empty() {
            String::new()
        } else {
            format!(" ({detail})")
        },
        if phase.is_empty() { "-" } else { phase }
    )
}

/// Runs the drill; returns the process exit status.
pub async fn run(args: DrillArgs) -> anyhow::Result<i32> {
    let s = resolve(&args).await?;
    preflight(&args, &s).await?;
    let (name, report_dir) = names(&args);
    announce(&args, &s, &name);
    let observed = drive(&args, &s, &name).await?;
    let r = build_report(&args, &s, &name, &observed);
    let files = report::write(&report_dir, &r)?;
    print_summary(&r);
    println!(
        "report: {}",
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(verdict(&r, &observed))
}

/// The drill's settings, home cluster and Gateway, resolved before any load is sent.
struct Setup {
    p: Plan,
    kc: kube::config::Kubeconfig,
    home: Cluster,
    gw: GatewayTarget,
    url: hyper::Uri,
    host: Option<String>,
}

/// Step 1: checked flags, the kubeconfig context and the Gateway to load.
async fn resolve(args: &DrillArgs) -> anyhow::Result<Setup> {
    let p = plan(args)?;
    let kc = cluster::read_kubeconfig(&args.kubeconfig)?;
    let home = cluster::connect(&kc, args.context.as_deref()).await?;
    let gw = cluster::find_gateway(&home, p.gateway.as_ref()).await?;
    let url = gateway_url(&gw, args.url.as_deref())?;
    let host = args.host.clone().or_else(|| gw.hostname.clone());
    if !gw.served_by_header {
        println!(
            "note: Gateway {} has no annotation {}: \"true\"; who served each request is read \
             from the echo backend's answer instead of the x-meridian-served-by header",
            gw.key(),
            cluster::SERVED_BY_ANNOTATION
        );
    }
    Ok(Setup {
        p,
        kc,
        home,
        gw,
        url,
        host,
    })
}

/// Step 2, preflight: the Gateway answers, and the target exists.
async fn preflight(args: &DrillArgs, s: &Setup) -> anyhow::Result<()> {
    let Setup {
        p,
        kc,
        home,
        gw,
        url,
        host,
    } = s;
    let sources = ServedBySource::default();
    let probe = Probe::new(url.clone(), host.clone(), Duration::from_secs(2));
    let first = tokio::time::timeout(Duration::from_secs(3), probe.get(&sources))
        .await
        .unwrap_or(Ok(Outcome::Failed(FailKind::Timeout)))
        .map_err(anyhow::Error::msg)?;
    let home_answer = match first {
        Outcome::Answered(by) => by,
        Outcome::Failed(kind) => bail!(
            "the Gateway {} at {url} did not answer a GET ({}): is `meridian up` running and the \
             Gateway Programmed? (`kubectl --kubeconfig {} --context {} get gateways -A`)",
            gw.key(),
            kind.label(),
            args.kubeconfig.display(),
            home.context
        ),
    };
    let known = known_localities(kc, home, gw, &home_answer).await;
    check_target(&p.target, &known)?;
    if !home_answer.region.is_empty() && !p.target.matches(&home_answer) {
        println!(
            "note: {} answers from {}/{}/{}, outside the target ({}): the drill will not move \
             this Gateway's traffic",
            gw.key(),
            home_answer.cluster,
            home_answer.region,
            home_answer.zone,
            p.target.describe()
        );
    }
    Ok(())
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

/// What the load saw and the drill as last read.
struct Observed {
    samples: Vec<Sample>,
    /// When the FailoverDrill was created, ms since the load started.
    created_ms: Option<f64>,
    view: DrillView,
    interrupted: bool,
    /// Wall-clock time of the load's time 0 (status times are mapped onto the load clock).
    t0_wall: Timestamp,
    sources: std::sync::Arc<ServedBySource>,
}

/// The drill's side of the load loop: creating the FailoverDrill, following its status and moving
/// the load's stop time.
struct Driver<'a> {
    s: &'a Setup,
    name: &'a str,
    t0: Instant,
    t0_wall: Timestamp,
    stop: tokio::sync::watch::Sender<Instant>,
    /// Whether the stop time was moved off the hard stop (it is moved once).
    stop_set: bool,
    created_ms: Option<f64>,
    view: DrillView,
    last_phase: String,
    interrupted: bool,
    load_error: Option<anyhow::Error>,
}

impl Driver<'_> {
    fn stop_now(&mut self) {
        let _ = self.stop.send(Instant::now());
        self.stop_set = true;
    }

    /// After the warmup: create the drill (a refusal stops the load and ends the run).
    async fn create(&mut self, obj: &FailoverDrill) {
        self.created_ms = Some(self.t0.elapsed().as_secs_f64() * 1000.0);
        if let Err(e) = cluster::create_drill(&self.s.home, obj).await {
            self.stop_now();
            self.load_error = Some(e);
        } else {
            println!("drill {}/{} created", self.s.gw.namespace, self.name);
        }
    }

    /// Whether the drill's status is worth reading now.
    fn polling(&self) -> bool {
        self.created_ms.is_some() && self.load_error.is_none() && !self.interrupted
    }

    /// Reads the drill's status, prints phase changes, and once the restore moment is known stops
    /// the load `--after` past it.
    async fn poll_status(&mut self) {
        let gw = &self.s.gw;
        match cluster::get_drill(&self.s.home, &gw.namespace, self.name).await {
            Ok(v) => self.view = v,
            Err(e) => println!("drill status not read: {e:#}"),
        }
        let view = &self.view;
        if view.phase != self.last_phase {
            println!(
                "drill phase {}{}",
                view.phase,
                view.abort_reason
                    .as_ref()
                    .or(view.message.as_ref())
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            );
            self.last_phase = view.phase.clone();
        }
        if !self.stop_set {
            if let Some(ms) = wall_offset_ms(self.t0_wall, self.view.restore_time.as_deref()) {
                let restore = self.t0 + Duration::from_secs_f64(ms.max(0.0) / 1000.0);
                let _ = self.stop.send(restore + self.s.p.after);
                self.stop_set = true;
            } else if self.view.finished() {
                // Over without a restore: nothing was failed, nothing to watch.
                self.stop_now();
            }
        }
    }

    /// Ctrl-C: delete the drill (the controller restores the target) and stop the load.
    async fn interrupt(&mut self) {
        self.interrupted = true;
        println!("interrupted: deleting the drill (the controller restores the target)");
        if self.created_ms.is_some()
            && let Err(e) =
                cluster::delete_drill(&self.s.home, &self.s.gw.namespace, self.name).await
        {
            println!("{e:#}");
        }
        self.stop_now();
    }

    /// The load stops `after` past the restore; the drill completes right after that.
    async fn await_completion(&mut self) {
        if self.created_ms.is_none() || self.interrupted {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.view.finished() && Instant::now() < deadline {
            if let Ok(v) = cluster::get_drill(&self.s.home, &self.s.gw.namespace, self.name).await {
                self.view = v;
            }
            if !self.view.finished() {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Step 3: the load runs; after the warmup the drill is created, its status is followed, and
/// the load stops `--after` past the restore (or at the hard stop).
async fn drive(args: &DrillArgs, s: &Setup, name: &str) -> anyhow::Result<Observed> {
    let p = &s.p;
    let slack = Duration::from_secs(30);
    let t0 = Instant::now() + Duration::from_millis(100);
    let t0_wall = Timestamp::now() + Duration::from_millis(100);
    let hard_stop = t0 + p.warmup + p.duration + p.after + slack;
    let cfg = LoadConfig {
        url: s.url.clone(),
        host: s.host.clone(),
        rate: p.rate,
        timeout: p.timeout,
        max_in_flight: args.max_in_flight,
    };
    let load::Load {
        samples: mut samples_rx,
        stop,
        sources,
        mut done,
    } = load::start(cfg, t0, hard_stop, hard_stop);
    let mut d = Driver {
        s,
        name,
        t0,
        t0_wall,
        stop,
        stop_set: false,
        created_ms: None,
        view: DrillView::default(),
        last_phase: String::new(),
        interrupted: false,
        load_error: None,
    };
    let mut samples: Vec<Sample> = Vec::new();
    let mut window: Vec<Sample> = Vec::new();
    let create_at = t0 + p.warmup;
    let mut tick = tokio::time::interval_at(t0 + Duration::from_secs(1), Duration::from_secs(1));
    let mut poll = tokio::time::interval(Duration::from_millis(250));
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let drill_obj = drill_object(name, &s.gw, p, args);
    loop {
        tokio::select! {
            _ = &mut done => break,
            s = samples_rx.recv() => {
                if let Some(s) = s {
                    window.push(s.clone());
                    samples.push(s);
                }
            }
            _ = tick.tick() => {
                println!("{}", live_line(t0.elapsed(), &window, &d.view.phase));
                window.clear();
            }
            _ = tokio::time::sleep_until(create_at), if d.created_ms.is_none() => {
                d.create(&drill_obj).await;
            }
            _ = poll.tick(), if d.polling() => d.poll_status().await,
            _ = &mut ctrl_c, if !d.interrupted => d.interrupt().await,
        }
    }
    while let Ok(s) = samples_rx.try_recv() {
        samples.push(s);
    }
    if let Some(e) = d.load_error.take() {
        return Err(e);
    }
    d.await_completion().await;
    Ok(Observed {
        samples,
        created_ms: d.created_ms,
        view: d.view,
        interrupted: d.interrupted,
        t0_wall,
        sources,
    })
}

/// Step 4: figures and checks from what the load saw, with everything the report records.
fn build_report(args: &DrillArgs, s: &Setup, name: &str, o: &Observed) -> report::Report {
    let (p, gw, samples, view) = (&s.p, &s.gw, &o.samples, &o.view);
    let end_us = samples.iter().map(|s| s.at_us).max().map_or(0, |m| m + 1);
    let fail_ms = wall_offset_ms(o.t0_wall, view.fail_time.as_deref());
    let restore_ms = wall_offset_ms(o.t0_wall, view.restore_time.as_deref());
    let to_us = |ms: Option<f64>| ms.map(|v| (v.max(0.0) * 1000.0) as u64);
    let figures = figures::figures(
        samples,
        &p.target,
        Moments {
            fail_us: to_us(fail_ms),
            restore_us: to_us(restore_ms),
            end_us,
        },
    );
    let checks = figures::checks(
        &figures,
        args.guard_error_percent,
        p.guard_p99.map(|d| d.as_secs_f64() * 1000.0),
    );
    let all_pass = checks.iter().all(|c| c.pass);
    report::Report {
        drill: report::DrillInfo {
            context: s.home.context.clone(),
            namespace: gw.namespace.clone(),
            name: name.to_string(),
            gateway: gw.key(),
            mode: args.mode.as_str().into(),
            target: p.target.clone(),
            duration_ms: p.duration.as_millis() as u64,
            guard_error_percent: args.guard_error_percent,
            guard_p99_ms: p.guard_p99.map(|d| d.as_secs_f64() * 1000.0),
            status: view.clone(),
        },
        load: report::LoadInfo {
            url: s.url.to_string(),
            host: s.host.clone(),
            rate: p.rate,
            warmup_ms: p.warmup.as_millis() as u64,
            after_ms: p.after.as_millis() as u64,
            request_timeout_ms: p.timeout.as_millis() as u64,
            max_in_flight: args.max_in_flight,
            started_at: o.t0_wall.to_string(),
            end_ms: end_us as f64 / 1000.0,
            served_by_header: o.sources.header.load(Ordering::Relaxed),
            served_by_body: o.sources.body.load(Ordering::Relaxed),
            served_by_unknown: o.sources.unknown.load(Ordering::Relaxed),
        },
        moments: report::MomentsMs {
            created_ms: o.created_ms,
            fail_ms,
            restore_ms,
        },
        // Answers are binned by arrival: the picture runs until the last one.
        bins: figures::bins(
            samples,
            samples
                .iter()
                .map(Sample::done_us)
                .max()
                .map_or(0, |m| m + 1),
        ),
        figures,
        checks,
        pass: succeeded(o) && all_pass,
    }
}

fn succeeded(o: &Observed) -> bool {
    o.view.phase == "Succeeded" && !o.interrupted
}

/// Step 5: the exit status (module docs), with the line that explains it.
fn verdict(r: &report::Report, o: &Observed) -> i32 {
    let view = &o.view;
    if o.interrupted {
        println!("drill interrupted");
        3
    } else if !succeeded(o) {
        println!(
            "drill {}: {}",
            if view.phase.is_empty() {
                "did not run"
            } else {
                &view.phase
            },
            view.abort_reason
                .as_deref()
                .or(view.message.as_deref())
                .unwrap_or("no reason given by the controller")
        );
        3
    } else if !r.checks.iter().all(|c| c.pass) {
        println!("drill succeeded, but checks failed (see above)");
        2
    } else {
        0
    }
}

fn print_summary(r: &report::Report) {
    let f = &r.figures;
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.0} ms"));
    println!(
        "figures: detect {}, shift ≥95% {}, failback {}, requests {} failed {} ({})",
        ms(f.time_to_detect_ms),
        ms(f.time_to_shift_95_ms),
        ms(f.failback_ms),
        f.requests,
        f.failed_total,
        FailKind::ALL
            .iter()
            .map(|k| format!("{} {}", f.failed.get(k).copied().unwrap_or(0), k.label()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (name, ph) in [
        ("before", &f.before),
        ("during", &f.during),
        ("after", &f.after),
    ] {
        println!(
            "  {name:<6} {:>6} requests, p50 {}, p99 {}, {}",
            ph.requests,
            ph.latency
                .p50_ms
                .map_or("-".into(), |v| format!("{v:.1} ms")),
            ph.latency
                .p99_ms
                .map_or("-".into(), |v| format!("{v:.1} ms")),
            ph.share_by_region
                .iter()
                .map(|(r, s)| format!("{r} {s:.1}%"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for c in &r.checks {
        println!(
            "  {} {}: {} (limit {})",
            if c.pass { "pass" } else { "FAIL" },
            c.name,
            c.measured,
            c.limit
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: DrillArgs,
    }

    fn args(extra: &[&str]) -> DrillArgs {
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

    fn gw() -> GatewayTarget {
        GatewayTarget {
            namespace: "demo".into(),
            name: "web".into(),
            address: "127.0.10.1".into(),
            port: 80,
            hostname: None,
            served_by_header: true,
        }
    }

    #[test]
    fn url_comes_from_the_gateway_unless_given() {
        assert_eq!(
            gateway_url(&gw(), None).unwrap().to_string(),
            "http://127.0.10.1:80/"
        );
        assert_eq!(
            gateway_url(&gw(), Some("http://127.0.0.1:8080/x"))
                .unwrap()
                .to_string(),
            "http://127.0.0.1:8080/x"
        );
        let e = gateway_url(&gw(), Some("https://a/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("TLS"), "{e}");
    }

    #[test]
    fn drill_object_carries_target_scope_mode_and_guards() {
        let a = args(&[
            "--target",
            "us-east",
            "--target-zone",
            "us-east-a",
            "--mode",
            "kill",
            "--duration",
            "1500ms",
            "--guard-error-percent",
            "5",
            "--guard-p99",
            "1s",
            "--guard-window",
            "2s",
        ]);
        let p = plan(&a).unwrap();
        // What goes on the wire.
        let o = serde_json::to_value(drill_object("d1", &gw(), &p, &a)).unwrap();
        assert_eq!(o["kind"], "FailoverDrill");
        assert_eq!(o["metadata"]["namespace"], "demo");
        assert_eq!(
            o["spec"]["target"],
            serde_json::json!({"region": "us-east", "zone": "us-east-a"})
        );
        assert_eq!(o["spec"]["scope"]["gateways"][0]["name"], "web");
        assert_eq!(o["spec"]["mode"], "kill");
        assert_eq!(o["spec"]["duration"], "1500ms");
        assert_eq!(o["spec"]["guards"]["maxErrorPercent"], 5);
        assert_eq!(o["spec"]["guards"]["maxP99Latency"], "1s");
        assert_eq!(o["spec"]["guards"]["window"], "2s");
        let a = args(&["--target", "x", "--guard-error-percent", "0.5"]);
        let o = serde_json::to_value(drill_object("d2", &gw(), &plan(&a).unwrap(), &a)).unwrap();
        assert_eq!(o["spec"]["guards"]["maxErrorPercent"], "0.5");
        assert!(o["spec"]["guards"].get("maxP99Latency").is_none());
        let a = args(&["--target", "x"]);
        let o = serde_json::to_value(drill_object("d3", &gw(), &plan(&a).unwrap(), &a)).unwrap();
        assert!(
            o["spec"].get("guards").is_none(),
            "no guards asked, none sent"
        );
    }

    #[test]
    fn unknown_targets_list_the_known_ones() {
        let known = Known {
            clusters: ["east".to_string(), "west".to_string()].into(),
            regions: ["us-east".to_string(), "us-west".to_string()].into(),
            zones: Default::default(),
        };
        let t = |r: &str| Target {
            region: Some(r.into()),
            ..Target::default()
        };
        let e = check_target(&t("mars"), &known).unwrap_err().to_string();
        assert!(
            e.contains("\"mars\"") && e.contains("us-east, us-west"),
            "{e}"
        );
        assert!(check_target(&t("us-west"), &known).is_ok());
        assert!(
            check_target(&t("mars"), &Known::default()).is_ok(),
            "nothing known: no judgement"
        );
    }

    #[test]
    fn status_times_map_onto_the_load_clock() {
        let t0 = Timestamp::from_str("2025-01-01T00:00:00Z").unwrap();
        assert_eq!(
            wall_offset_ms(t0, Some("2025-01-01T00:00:02.500Z")),
            Some(2500.0)
        );
        assert_eq!(wall_offset_ms(t0, Some("garbage")), None);
        assert_eq!(wall_offset_ms(t0, None), None);
    }

    #[test]
    fn live_line_shows_rate_shares_errors_and_phase() {
        let by = |r: &str| ServedBy {
            region: r.into(),
            ..ServedBy::default()
        };
        let w = vec![
            Sample {
                at_us: 0,
                latency_us: 1,
                outcome: Outcome::Answered(by("us-west")),
            },
            Sample {
                at_us: 1,
                latency_us: 1,
                outcome: Outcome::Answered(by("us-west")),
            },
            Sample {
                at_us: 2,
                latency_us: 1,
                outcome: Outcome::Answered(by("us-east")),
            },
            Sample {
                at_us: 3,
                latency_us: 1,
                outcome: Outcome::Failed(FailKind::Connect),
            },
        ];
        let line = live_line(Duration::from_secs(3), &w, "Running");
        assert!(line.contains("4 req/s"), "{line}");
        assert!(line.contains("us-east 33% · us-west 67%"), "{line}");
        assert!(line.contains("errors 1 (1 connect error)"), "{line}");
        assert!(line.ends_with("drill Running"), "{line}");
    }
}
