//! `scale`: the controller at scale — bulk-apply rate, convergence, CPU per change by kind,
//! apply → served latency, RSS per route and translation times, at 1k / 10k (/ 50k) routes.
//!
//! ```text
//! per size N, per binary (--meridian, then --compare):
//!   meridian echo ─────────────────────────────────────────────┐ every EndpointSlice points here
//!   meridian sandbox --clusters c0[,c1,c2] (own process)       │
//!     └─ CRDs (`meridian crds`), namespaces, the proxies' ServiceAccount, GatewayClass
//!   meridian controller --distribution-bind … --metrics …     (own process: its CPU and RSS)
//!   meridian proxy per cluster, bootstrapped like a real one (TokenRequest token, the trust
//!     bundle the controller publishes in ConfigMap meridian-system/meridian-ca)
//!   1. bulk apply: per cluster one Gateway + N × (Service, EndpointSlice, HTTPRoute), created by
//!      --writers threads over keep-alive connections, into the running system → writes/s; a
//!      sampler (every 100 ms: writes answered, CPU of the local API and of the controller) →
//!      rate and CPU per write in the first, middle and last tenth (cost vs store size).
//!      --cold-start: the world goes in before the controller starts, and 2. is timed from
//!      the controller's start (its initial convergence), with the CPU the controller and the
//!      local API used until then
//!   2. convergence: until every Gateway is Programmed with attachedRoutes == N and every route
//!      Accepted by us (status read from the API) → time from the first and from the last write
//!   3. RSS after convergence, minus RSS before the apply, per route
//!   4. per change kind, --changes changes --spacing-ms apart in cluster c0 (the same pace for
//!      every kind); controller utime+stime from /proc before and after (after its CPU is quiet
//!      again) / changes; route create / update: time until c0's proxy answers 200 for the new
//!      host (polled on a thread per change, while the next changes stream in)
//!   5. --changes route creates again, while a thread streams route, Service and EndpointSlice
//!      updates over every cluster at --stream-rate per second: apply → served with other
//!      changes streaming in, and controller CPU per change of the mix
//!   6. translate-seconds histograms from the controller's /metrics
//! ```
//!
//! Real processes of the meridian binary, so `--compare OLD` measures an older build the same
//! way (an older binary lacking a flag fails at start with its log quoted). Every wait is bounded
//! (`--timeout` for the apply and the convergence, fixed bounds for start-ups, served polls and
//! quiet-CPU waits); every loop is bounded in count. Nothing here reads another process's
//! memory: figures come from the API, the processes' /proc entries and the controller's
//! /metrics.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::kapi::Conn;
use crate::sys::{self, Guard};

/// Options of `scale`.
#[derive(clap::Args, Debug, Clone)]
pub struct ScaleOpts {
    /// Route counts (each with one Service and one EndpointSlice), one run each.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1_000usize, 10_000])]
    pub routes: Vec<usize>,
    /// Member clusters (each gets the whole world, and its own proxy).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
    pub clusters: u8,
    /// The meridian binary (default: target/release/meridian under CARGO_TARGET_DIR or ./target).
    #[arg(long, env = "MERIDIAN_BIN")]
    pub meridian: Option<PathBuf>,
    /// A second meridian binary measured the same way, as a second column.
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// Concurrent writers of the bulk apply (one keep-alive connection per cluster each).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub writers: u16,
    /// Changes per kind for the CPU-per-change and apply → served figures.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub changes: u16,
    /// Milliseconds between two changes of one kind (at least; a route change also waits
    /// until it is served).
    #[arg(long, default_value_t = 100)]
    pub spacing_ms: u64,
    /// Seconds allowed for the bulk apply, and again for the convergence.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Run the local API without persistence (`meridian sandbox --no-persist`); by default it
    /// persists like `meridian up`.
    #[arg(long)]
    pub no_persist: bool,
    /// Cold start instead: the whole world is applied into the local API before the controller
    /// starts (the apply rate is then the local API's alone), and convergence is timed from the
    /// controller's start — its initial convergence, status writes included.
    #[arg(long)]
    pub cold_start: bool,
    /// Changes per second streamed in (route updates, Service updates and EndpointSlice
    /// updates in turn, over every cluster) while `--changes` route creates are measured once
    /// more after step 4: apply → served with other changes streaming in (0: skip that step).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(0..=1000))]
    pub stream_rate: u16,
}

/// Namespace of the generated world.
const NS: &str = "scale";
/// Our controller's name (`--controller-name` default).
const CONTROLLER_NAME: &str = "meridian.dev/gateway-controller";
/// Bound of every start-up wait.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of the wait for one change to be served.
const SERVED_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound of the streamed changes of step 5 (they stop earlier, once the creates are served).
const STREAM_MAX: usize = 20_000;
/// Names of step 5's objects start here (`new-{j}` routes of step 4 are below).
const STREAM_OFFSET: usize = 1_000_000;
/// Clock ticks per second of /proc/PID/stat's utime and stime.
const TICKS_PER_S: f64 = 100.0;

/// Runs every size with every binary and prints one table per size.
pub fn run(opts: &ScaleOpts, meridian: PathBuf, dir: &Path) -> anyhow::Result<()> {
    let mut bins = vec![("meridian".to_string(), meridian.clone())];
    if let Some(c) = &opts.compare {
        bins.push(("meridian-b".to_string(), c.clone()));
    }
    println!(
        "## Controller at scale\n\n{}{} cluster(s); {} writers; {} changes per kind {} ms apart; \
         local API persistence {}.\n",
        if opts.cold_start {
            "Cold start (world applied before the controller starts); "
        } else {
            ""
        },
        opts.clusters,
        opts.writers,
        opts.changes,
        opts.spacing_ms,
        if opts.no_persist { "off" } else { "on" }
    );
    for &n in &opts.routes {
        let mut columns = Vec::new();
        for (name, bin) in &bins {
            crate::section(&format!("scale {n} routes: {name}"));
            let run_dir = dir.join(format!("scale-{name}-{n}"));
            std::fs::create_dir_all(&run_dir)?;
            let figures = Run::start(opts, bin, &meridian, &run_dir, n)
                .and_then(|mut r| r.measure())
                .with_context(|| format!("{name} at {n} routes"))?;
            columns.push((name.clone(), figures));
        }
        print_table(n, opts, &columns);
    }
    Ok(())
}

/// Every figure of one run.
#[derive(Default)]
struct Figures {
    writes: usize,
    apply_s: f64,
    converge_from_start_s: Option<f64>,
    converge_from_last_write_s: Option<f64>,
    /// With `--cold-start`: CPU seconds the controller and the local API used from the
    /// controller's start until convergence (less sensitive to a loaded machine than the time).
    converge_cpu_s: Option<(f64, f64)>,
    /// (kind, ms of controller CPU per change, changes made).
    cpu_per_change: Vec<(&'static str, f64, usize)>,
    /// Apply → served of the route kinds.
    served: Vec<(&'static str, Served)>,
    /// Step 5, route creates while other changes stream in.
    streamed: Option<Streamed>,
    idle_cpu_ms_per_s: f64,
    /// `None` with `--cold-start` (the controller starts with the world in place).
    rss_before_kib: Option<u64>,
    rss_after_kib: u64,
    routes_total: usize,
    /// (mode, count, sum s, p99 bucket bound s).
    translations: Vec<(String, u64, f64, Option<f64>)>,
    status_writes_ok: u64,
    /// Publish → every proxy of cluster c0 acknowledged, over the whole run (the
    /// `meridian_distribution_propagation_seconds` histogram): (cluster, count, sum s, p99
    /// bucket bound s).
    propagation: Option<(String, u64, f64, Option<f64>)>,
    /// Stream messages sent to the proxies of every cluster, by kind (a full snapshot after
    /// the first one per stream means a proxy missed a patch's base).
    sent_messages: Vec<(&'static str, u64)>,
    /// The apply's first, middle and last tenth (see [`apply_windows`]).
    apply_windows: Vec<Window>,
    /// `/proc/loadavg` at the start and at the end of the run (the machine is shared).
    load_start: String,
    load_end: String,
}

/// Apply → served of one kind of change: p50 and p99 (ms), and how many were not served
/// within [`SERVED_TIMEOUT`].
#[derive(Debug, Clone, Copy)]
struct Served {
    p50: f64,
    p99: f64,
    missed: usize,
}

impl Served {
    /// `p50 / p99`, and the misses when there were any.
    fn cell(&self) -> String {
        let missed = if self.missed > 0 {
            format!(" ({} not served in {SERVED_TIMEOUT:?})", self.missed)
        } else {
            String::new()
        };
        format!("{} / {}{missed}", ms(self.p50), ms(self.p99))
    }
}

/// Route creates measured while other changes stream in (step 5).
#[derive(Debug, Clone)]
struct Streamed {
    /// Streamed changes per second, as made (the target is `--stream-rate`).
    rate: f64,
    /// Changes streamed meanwhile.
    streamed: usize,
    /// Apply → served of the creates.
    served: Served,
    /// Controller CPU per change, creates and streamed changes together (ms).
    cpu_ms: f64,
}

/// One stretch of the bulk apply: how fast it went and what each write cost while the store
/// held `stored_from..stored_to` objects per cluster.
#[derive(Debug, Clone, PartialEq)]
struct Window {
    stored_from: usize,
    stored_to: usize,
    writes_per_s: f64,
    /// CPU of the local API's process per write (µs).
    api_us_per_write: f64,
    /// CPU of the controller per write (µs; 0 while it does not run).
    controller_us_per_write: f64,
}

/// What the sampler saw at one moment of the bulk apply.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    /// Writes answered so far.
    done: usize,
    api_ticks: u64,
    controller_ticks: u64,
}

/// How often the sampler looks during the bulk apply.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The processes of one run, stopped on drop in field order: proxies and controller before the
/// API (the API going away first would only make them log).
struct Run {
    proxies: Vec<Guard>,
    /// Started by [`Run::start_controller`] (before the apply, or after it with `--cold-start`).
    controller: Option<Guard>,
    sandbox: Guard,
    _echo: crate::stack::Backend,
    /// The controller's pid (0 until it runs).
    controller_pid: u32,
    metrics_port: u16,
    distribution_port: u16,
    kubeconfig: PathBuf,
    bin: PathBuf,
    dir: PathBuf,
    /// Per cluster: name, API URL, Gateway listener port, extra listener port.
    clusters: Vec<ClusterRun>,
    echo_port: u16,
    n: usize,
    opts: ScaleOpts,
}

struct ClusterRun {
    name: String,
    url: String,
    port: u16,
    extra_port: u16,
}

impl Run {
    /// The echo backend and the local API with everything installed; no controller yet.
    fn start(
        opts: &ScaleOpts,
        bin: &Path,
        echo_bin: &Path,
        dir: &Path,
        n: usize,
    ) -> anyhow::Result<Run> {
        let echo = crate::stack::backend(echo_bin, dir)?;
        let names: Vec<String> = (0..opts.clusters).map(|i| format!("c{i}")).collect();
        let (sandbox, urls, kubeconfig) = start_sandbox(bin, dir, &names, opts.no_persist)?;
        let crds = crds(bin)?;
        let mut clusters = Vec::new();
        for (name, url) in names.iter().zip(urls) {
            install(&url, &crds).with_context(|| format!("preparing cluster {name}"))?;
            clusters.push(ClusterRun {
                name: name.clone(),
                url,
                port: sys::free_port()?,
                extra_port: sys::free_port()?,
            });
        }
        Ok(Run {
            proxies: Vec::new(),
            controller: None,
            sandbox,
            echo_port: echo.port,
            _echo: echo,
            controller_pid: 0,
            metrics_port: sys::free_port()?,
            distribution_port: sys::free_port()?,
            kubeconfig,
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            clusters,
            n,
            opts: opts.clone(),
        })
    }

    /// `meridian controller` (until its /readyz answers), then one proxy per cluster.
    fn start_controller(&mut self) -> anyhow::Result<()> {
        let log = self.dir.join("controller.log");
        let mut cmd = Command::new(&self.bin);
        cmd.arg("controller")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig);
        for c in &self.clusters {
            // Region named after the cluster: the proxies' certificates carry it.
            cmd.args(["--cluster", &format!("{0}@{0}", c.name)]);
        }
        cmd.args([
            "--distribution-bind",
            &format!("127.0.0.1:{}", self.distribution_port),
        ])
        .args(["--metrics", &format!("127.0.0.1:{}", self.metrics_port)])
        // Every EndpointSlice names the echo backend on loopback.
        .arg("--allow-loopback-endpoints")
        .env("MERIDIAN_LOG", "warn");
        let controller = spawn(cmd, &log, "the controller")?;
        self.controller_pid = controller.0.id();
        self.controller = Some(controller);
        let metrics_port = self.metrics_port;
        wait_for("the controller's /readyz", &log, || {
            Ok(Conn::local(metrics_port).get("/readyz")?.ok())
        })?;
        for c in &self.clusters {
            self.proxies.push(start_proxy(
                &self.bin,
                &self.dir,
                c,
                self.distribution_port,
            )?);
        }
        Ok(())
    }

    fn measure(&mut self) -> anyhow::Result<Figures> {
        let mut f = Figures {
            routes_total: self.n * self.clusters.len(),
            load_start: sys::load(),
            ..Figures::default()
        };
        let started;
        let last_write;
        let mut api_ticks_at_start = None;
        if self.opts.cold_start {
            // 1. The world first, into the local API alone; then the controller.
            eprintln!("bulk apply of {} writes (no controller)", self.writes());
            let apply_start = Instant::now();
            let (done, samples) = self.bulk_apply()?;
            f.writes = self.writes();
            f.apply_s = (done - apply_start).as_secs_f64();
            f.apply_windows = apply_windows(&samples, f.writes, self.clusters.len());
            // A cold start is the controller's start against a world stored earlier: the
            // local API's own work after the bulk apply (its idle log compaction starts
            // `IDLE_COMPACT` after the last write) is over first, not measured with it.
            settle_cpu_for(self.sandbox.0.id(), Duration::from_secs(1));
            eprintln!("starting the controller");
            started = Instant::now();
            last_write = started;
            api_ticks_at_start = sys::cpu_ticks_tree(self.sandbox.0.id());
            self.start_controller()?;
        } else {
            self.start_controller()?;
            settle_cpu(self.controller_pid);
            f.rss_before_kib = sys::rss_kib(self.controller_pid);
            // 1. Bulk apply into the running system.
            eprintln!("bulk apply of {} writes", self.writes());
            started = Instant::now();
            let (done, samples) = self.bulk_apply()?;
            last_write = done;
            f.writes = self.writes();
            f.apply_s = (last_write - started).as_secs_f64();
            f.apply_windows = apply_windows(&samples, f.writes, self.clusters.len());
        }

        // 2. Convergence.
        eprintln!("waiting for convergence");
        if let Some(done) = self.converge()? {
            if let (Some(api_before), Some(api), Some(controller)) = (
                api_ticks_at_start,
                sys::cpu_ticks_tree(self.sandbox.0.id()),
                sys::cpu_ticks_tree(self.controller_pid),
            ) {
                let s = |ticks: u64| ticks as f64 / TICKS_PER_S;
                f.converge_cpu_s = Some((s(controller), s(api.saturating_sub(api_before))));
            }
            f.converge_from_start_s = Some((done - started).as_secs_f64());
            f.converge_from_last_write_s =
                Some(done.saturating_duration_since(last_write).as_secs_f64());
        }
        for c in &self.clusters {
            let mut proxy = Conn::local(c.port);
            let last = format!("r-{}.scale", self.n - 1);
            if wait_served(&mut proxy, &last).is_none() {
                eprintln!("warning: {}: {last} not served after convergence", c.name);
            }
        }

        // 3. Memory once converged and quiet.
        settle_cpu(self.controller_pid);
        f.rss_after_kib = sys::rss_kib(self.controller_pid).unwrap_or(0);
        f.idle_cpu_ms_per_s = idle_cpu(self.controller_pid, Duration::from_secs(2));

        // 4. Changes by kind.
        for kind in Change::ALL {
            eprintln!("changes: {}", kind.label());
            let (cpu_ms, made, served) = self.changes(kind)?;
            f.cpu_per_change.push((kind.label(), cpu_ms, made));
            if let Some(served) = served {
                f.served.push((kind.label(), served));
            }
        }

        // 5. Route creates while other changes stream in.
        if self.opts.stream_rate > 0 {
            eprintln!(
                "changes: HTTPRoute create while {} changes/s stream in",
                self.opts.stream_rate
            );
            f.streamed = Some(self.streaming()?);
        }

        // 6. The controller's own figures.
        let metrics = Conn::local(self.metrics_port).get("/metrics")?;
        let text = String::from_utf8_lossy(&metrics.body);
        f.translations = translations(&text);
        f.propagation = histograms(
            &text,
            "meridian_distribution_propagation_seconds",
            "cluster",
        )
        .into_iter()
        .find(|h| h.0 == self.clusters[0].name);
        for kind in ["snapshot", "patch", "endpoints"] {
            let sent = sum_metric(&text, "meridian_distribution_sent_messages_total", |l| {
                l.get("kind").map(String::as_str) == Some(kind)
            });
            f.sent_messages.push((kind, sent as u64));
        }
        f.status_writes_ok = sum_metric(&text, "meridian_controller_status_writes_total", |l| {
            l.get("result").map(String::as_str) == Some("ok")
        }) as u64;
        f.load_end = sys::load();
        Ok(f)
    }

    fn writes(&self) -> usize {
        self.clusters.len() * (1 + 3 * self.n)
    }

    /// Creates the whole world with `--writers` threads; returns when the last write finished,
    /// and what a sampler thread saw every [`SAMPLE_EVERY`] meanwhile (writes answered, CPU of
    /// the local API and of the controller).
    fn bulk_apply(&self) -> anyhow::Result<(Instant, Vec<Sample>)> {
        let total = self.writes();
        let next = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new((0usize, String::new())));
        let deadline = Instant::now() + Duration::from_secs(self.opts.timeout);
        let urls: Vec<String> = self.clusters.iter().map(|c| c.url.clone()).collect();
        let ports: Vec<u16> = self.clusters.iter().map(|c| c.port).collect();
        let (echo, per_cluster) = (self.echo_port, 1 + 3 * self.n);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let (answered, stop) = (Arc::clone(&answered), Arc::clone(&stop));
            let (api, controller) = (self.sandbox.0.id(), self.controller_pid);
            std::thread::spawn(move || sample_apply(&answered, &stop, api, controller, deadline))
        };
        let threads: Vec<_> = (0..self.opts.writers)
            .map(|_| {
                let (next, answered, failures, urls, ports) = (
                    Arc::clone(&next),
                    Arc::clone(&answered),
                    Arc::clone(&failures),
                    urls.clone(),
                    ports.clone(),
                );
                std::thread::spawn(move || -> anyhow::Result<Instant> {
                    let mut conns = urls
                        .iter()
                        .map(|u| Conn::new(u))
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    let mut last = Instant::now();
                    // Bounded by `total`: every pass takes the next index.
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        if k >= total {
                            return Ok(last);
                        }
                        if Instant::now() > deadline {
                            bail!("the bulk apply ran past --timeout");
                        }
                        // Cluster-major per object, so every cluster fills at the same pace.
                        let (cluster, j) = (k % urls.len(), k / urls.len());
                        debug_assert!(j < per_cluster);
                        let (path, obj) = world_object(j, ports[cluster], echo);
                        let result = conns[cluster].create(&path, &obj);
                        last = Instant::now();
                        answered.fetch_add(1, Ordering::Relaxed);
                        let err = match result {
                            Ok(a) if a.ok() => continue,
                            Ok(a) => format!("POST {path}: {} {}", a.status, a.text()),
                            Err(e) => format!("POST {path}: {e:#}"),
                        };
                        let mut f = failures.lock().unwrap_or_else(|e| e.into_inner());
                        f.0 += 1;
                        if f.1.is_empty() {
                            f.1 = err;
                        }
                        if f.0 > 100 {
                            bail!("more than 100 failed writes; first: {}", f.1);
                        }
                    }
                })
            })
            .collect();
        let mut last = Instant::now();
        let mut first_error = None;
        for t in threads {
            match t.join() {
                Ok(Ok(at)) => last = last.max(at),
                Ok(Err(e)) => first_error = first_error.or(Some(e)),
                Err(_) => first_error = first_error.or(Some(anyhow::anyhow!("a writer panicked"))),
            }
        }
        stop.store(true, Ordering::Relaxed);
        let samples = sampler.join().unwrap_or_default();
        if let Some(e) = first_error {
            return Err(e);
        }
        let f = failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.0 > 0 {
            bail!("{} writes failed; first: {}", f.0, f.1);
        }
        Ok((last, samples))
    }

    /// Waits (at most `--timeout`) until every cluster's Gateway is Programmed with
    /// attachedRoutes == N and every route is Accepted by us; returns when the last of those
    /// conditions was first seen (the answer that showed it received), `None` if it did not
    /// happen.
    ///
    /// The runner's own polling must not add to the figure: the Gateways and the controller's
    /// pending-writes gauge are polled every 50 ms; the lists of every route (heavy for the API
    /// under test) are made only once a cluster's Gateway is done and the controller has no
    /// status write left, at most every 250 ms per cluster, and the clusters' lists in parallel.
    /// (Before session 14 the poll slept 500 ms once a Gateway was done and listed the clusters
    /// one after another, which added up to ~0.5 s to every cold-start convergence.)
    fn converge(&self) -> anyhow::Result<Option<Instant>> {
        const POLL: Duration = Duration::from_millis(50);
        const LIST_EVERY: Duration = Duration::from_millis(250);
        let deadline = Instant::now() + Duration::from_secs(self.opts.timeout);
        let mut conns = self
            .clusters
            .iter()
            .map(|c| Conn::new(&c.url))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut gateway_at: Vec<Option<Instant>> = vec![None; conns.len()];
        let mut routes_at: Vec<Option<Instant>> = vec![None; conns.len()];
        let mut listed_at: Vec<Option<Instant>> = vec![None; conns.len()];
        let mut accepted_counts = vec![0; conns.len()];
        let mut last_report = Instant::now();
        let gw_path = format!("/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/gateways/gw");
        let routes_path = format!("/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/httproutes");
        // Bounded by the deadline.
        while Instant::now() < deadline {
            let writes_pending = self.status_writes_pending();
            for (i, conn) in conns.iter_mut().enumerate() {
                if gateway_at[i].is_none() {
                    let answer = conn.get(&gw_path)?;
                    let seen = Instant::now();
                    if gateway_converged(&answer.json()?, self.n) {
                        gateway_at[i] = Some(seen);
                    }
                }
            }
            let list_now = |i: usize| {
                gateway_at[i].is_some()
                    && routes_at[i].is_none()
                    && !writes_pending
                    && listed_at[i].is_none_or(|at: Instant| at.elapsed() >= LIST_EVERY)
            };
            let listed: Vec<(usize, anyhow::Result<(Instant, usize)>)> =
                std::thread::scope(|scope| {
                    let handles: Vec<_> = conns
                        .iter_mut()
                        .enumerate()
                        .filter(|(i, _)| list_now(*i))
                        .map(|(i, conn)| {
                            let path = &routes_path;
                            (
                                i,
                                scope.spawn(move || {
                                    let answer = conn.get(path)?;
                                    let seen = Instant::now();
                                    Ok((seen, accepted_routes(&answer.json()?)))
                                }),
                            )
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|(i, h)| {
                            let result = h
                                .join()
                                .unwrap_or_else(|_| Err(anyhow::anyhow!("route list panicked")));
                            (i, result)
                        })
                        .collect()
                });
            for (i, result) in listed {
                let (seen, accepted) = result?;
                listed_at[i] = Some(seen);
                accepted_counts[i] = accepted;
                if accepted >= self.n {
                    routes_at[i] = Some(seen);
                }
            }
            let all: Option<Vec<Instant>> = gateway_at.iter().chain(&routes_at).copied().collect();
            if let Some(all) = all {
                return Ok(all.into_iter().max());
            }
            if last_report.elapsed() > Duration::from_secs(10) {
                eprintln!(
                    "  gateways converged {:?}, routes accepted {:?}",
                    gateway_at.iter().map(Option::is_some).collect::<Vec<_>>(),
                    accepted_counts
                );
                last_report = Instant::now();
            }
            std::thread::sleep(POLL);
        }
        eprintln!("warning: not converged within --timeout");
        Ok(None)
    }

    /// Whether the controller's /metrics shows status writes still queued
    /// (`meridian_controller_status_pending`; `false` for a binary without that gauge).
    fn status_writes_pending(&self) -> bool {
        const NAME: &str = "meridian_controller_status_pending";
        match Conn::local(self.metrics_port).get("/metrics") {
            Ok(a) if a.ok() => {
                let text = String::from_utf8_lossy(&a.body);
                text.contains(NAME) && sum_metric(&text, NAME, |_| true) > 0.0
            }
            _ => false,
        }
    }

    /// `--changes` changes of `kind` in cluster c0, one every `--spacing-ms` whatever kind (a
    /// route change's apply → served time is polled on a thread of its own, so the next change
    /// does not wait for it): controller CPU per change (ms), changes made, and for route
    /// changes apply → served.
    fn changes(&self, kind: Change) -> anyhow::Result<(f64, usize, Option<Served>)> {
        let k = usize::from(self.opts.changes);
        settle_cpu(self.controller_pid);
        let before = sys::cpu_ticks_tree(self.controller_pid).context("controller gone")?;
        let pollers = self.make_changes(kind, 0)?;
        let served = served_of(pollers);
        settle_cpu(self.controller_pid);
        let after = sys::cpu_ticks_tree(self.controller_pid).context("controller gone")?;
        let cpu_ms = (after - before) as f64 * 1000.0 / TICKS_PER_S / k as f64;
        Ok((cpu_ms, k, kind.served().then_some(served)))
    }

    /// Makes `--changes` changes of `kind` in cluster c0 (numbered from `offset`), one every
    /// `--spacing-ms`; for a change that makes a host servable, a thread polling c0's proxy
    /// until it is served (bounded by [`SERVED_TIMEOUT`]) answers apply → served in ms.
    fn make_changes(
        &self,
        kind: Change,
        offset: usize,
    ) -> anyhow::Result<Vec<std::thread::JoinHandle<Option<f64>>>> {
        let c = &self.clusters[0];
        let mut api = Conn::new(&c.url)?;
        let spacing = Duration::from_millis(self.opts.spacing_ms);
        let mut pollers = Vec::new();
        for j in 0..usize::from(self.opts.changes) {
            let t0 = Instant::now();
            let (path, verb, obj, host) = kind.write(offset + j, self.n, c, self.echo_port);
            let a = match verb {
                Verb::Create => api.create(&path, &obj)?,
                Verb::Patch => api.merge_patch(&path, &obj)?,
            };
            if !a.ok() {
                bail!("{} {path}: {} {}", kind.label(), a.status, a.text());
            }
            if let Some(host) = host {
                let port = c.port;
                pollers.push(std::thread::spawn(move || {
                    let mut proxy = Conn::local(port);
                    wait_served(&mut proxy, &host).map(|at| (at - t0).as_secs_f64() * 1000.0)
                }));
            }
            if let Some(rest) = spacing.checked_sub(t0.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        Ok(pollers)
    }

    /// Step 5: `--changes` route creates in c0, measured as in step 4, while a thread streams
    /// route, Service and EndpointSlice updates over every cluster at `--stream-rate` per
    /// second until the last create is served (bounded by [`STREAM_MAX`] changes).
    fn streaming(&self) -> anyhow::Result<Streamed> {
        const KINDS: [Change; 3] = [
            Change::RouteUpdate,
            Change::ServiceUpdate,
            Change::SliceUpdate,
        ];
        let stop = std::sync::atomic::AtomicBool::new(false);
        let every = Duration::from_secs_f64(1.0 / f64::from(self.opts.stream_rate.max(1)));
        settle_cpu(self.controller_pid);
        let before = sys::cpu_ticks_tree(self.controller_pid).context("controller gone")?;
        let start = Instant::now();
        let (served, streamed) = std::thread::scope(|scope| -> anyhow::Result<_> {
            let streamer = scope.spawn(|| -> anyhow::Result<usize> {
                let mut conns = self
                    .clusters
                    .iter()
                    .map(|c| Conn::new(&c.url))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let mut made = 0;
                while made < STREAM_MAX && !stop.load(Ordering::Relaxed) {
                    let kind = KINDS[made % KINDS.len()];
                    let ci = (made / KINDS.len()) % conns.len();
                    let (path, verb, obj, _) = kind.write(
                        STREAM_OFFSET + made,
                        self.n,
                        &self.clusters[ci],
                        self.echo_port,
                    );
                    let a = match verb {
                        Verb::Create => conns[ci].create(&path, &obj)?,
                        Verb::Patch => conns[ci].merge_patch(&path, &obj)?,
                    };
                    if !a.ok() {
                        bail!(
                            "streamed {} {path}: {} {}",
                            kind.label(),
                            a.status,
                            a.text()
                        );
                    }
                    made += 1;
                    let due = start + every.mul_f64(made as f64);
                    if let Some(rest) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(rest);
                    }
                }
                Ok(made)
            });
            let pollers = self.make_changes(Change::RouteCreate, STREAM_OFFSET);
            let served = pollers.map(served_of);
            stop.store(true, Ordering::Relaxed);
            let streamed = streamer
                .join()
                .map_err(|_| anyhow::anyhow!("the streaming thread panicked"))??;
            Ok((served?, streamed))
        })?;
        let secs = start.elapsed().as_secs_f64();
        settle_cpu(self.controller_pid);
        let after = sys::cpu_ticks_tree(self.controller_pid).context("controller gone")?;
        let creates = usize::from(self.opts.changes);
        Ok(Streamed {
            rate: streamed as f64 / secs,
            streamed,
            served,
            cpu_ms: (after - before) as f64 * 1000.0 / TICKS_PER_S / (creates + streamed) as f64,
        })
    }
}

/// Apply → served from the pollers' answers (ms; `None`: not served in time).
fn served_of(pollers: Vec<std::thread::JoinHandle<Option<f64>>>) -> Served {
    let mut samples = Vec::new();
    let mut missed = 0;
    for p in pollers {
        match p.join() {
            Ok(Some(ms)) => samples.push(ms),
            _ => missed += 1,
        }
    }
    samples.sort_by(f64::total_cmp);
    Served {
        p50: quantile(&samples, 0.5),
        p99: quantile(&samples, 0.99),
        missed,
    }
}

/// The kinds of change measured one after the other.
#[derive(Clone, Copy, Debug)]
enum Change {
    RouteCreate,
    RouteUpdate,
    ServiceUpdate,
    SliceUpdate,
    GatewayUpdate,
    ReferenceGrant,
}

enum Verb {
    Create,
    Patch,
}

impl Change {
    const ALL: [Change; 6] = [
        Change::RouteCreate,
        Change::RouteUpdate,
        Change::ServiceUpdate,
        Change::SliceUpdate,
        Change::GatewayUpdate,
        Change::ReferenceGrant,
    ];

    fn label(self) -> &'static str {
        match self {
            Change::RouteCreate => "HTTPRoute create",
            Change::RouteUpdate => "HTTPRoute update",
            Change::ServiceUpdate => "Service update",
            Change::SliceUpdate => "EndpointSlice update",
            Change::GatewayUpdate => "Gateway update",
            Change::ReferenceGrant => "ReferenceGrant create",
        }
    }

    /// Whether the change makes a new host servable (its apply → served time is measured).
    fn served(self) -> bool {
        matches!(self, Change::RouteCreate | Change::RouteUpdate)
    }

    /// The `j`-th change: path, verb, body, and the host that becomes servable.
    fn write(
        self,
        j: usize,
        n: usize,
        c: &ClusterRun,
        echo: u16,
    ) -> (String, Verb, Value, Option<String>) {
        let gw_api = format!("/apis/gateway.networking.k8s.io/v1/namespaces/{NS}");
        // Objects of the world, spread over it (never the same twice in a row).
        let i = (j * 7_919) % n.max(1);
        match self {
            Change::RouteCreate => {
                let host = format!("new-{j}.scale");
                let mut r = route(i);
                r["metadata"]["name"] = json!(format!("new-{j}"));
                r["spec"]["hostnames"] = json!([host]);
                (format!("{gw_api}/httproutes"), Verb::Create, r, Some(host))
            }
            Change::RouteUpdate => {
                let host = format!("upd-{j}.scale");
                let patch = json!({"spec": {"hostnames": [format!("r-{i}.scale"), host]}});
                (
                    format!("{gw_api}/httproutes/r-{i}"),
                    Verb::Patch,
                    patch,
                    Some(host),
                )
            }
            Change::ServiceUpdate => {
                // A second port: a spec change, the routes' port 80 untouched.
                let patch = json!({"spec": {"ports": [
                    {"name": "http", "port": 80, "targetPort": echo},
                    {"name": "extra", "port": 1_000 + j}]}});
                (
                    format!("/api/v1/namespaces/{NS}/services/svc-{i}"),
                    Verb::Patch,
                    patch,
                    None,
                )
            }
            Change::SliceUpdate => {
                // The endpoint moves zone: a real endpoint change, still serving.
                let patch = json!({"endpoints": [{"addresses": ["127.0.0.1"],
                    "conditions": {"ready": true}, "zone": format!("zone-{j}")}]});
                (
                    format!("/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices/svc-{i}-1"),
                    Verb::Patch,
                    patch,
                    None,
                )
            }
            Change::GatewayUpdate => {
                // A second listener whose hostname changes each time (no route attaches to it).
                let patch = json!({"spec": {"listeners": [
                    {"name": "http", "port": c.port, "protocol": "HTTP"},
                    {"name": "extra", "port": c.extra_port, "protocol": "HTTP",
                     "hostname": format!("extra-{j}.scale")}]}});
                (format!("{gw_api}/gateways/gw"), Verb::Patch, patch, None)
            }
            Change::ReferenceGrant => {
                let grant = json!({"apiVersion": "gateway.networking.k8s.io/v1",
                    "kind": "ReferenceGrant",
                    "metadata": {"name": format!("grant-{j}"), "namespace": NS},
                    "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                                       "namespace": format!("other-{j}")}],
                             "to": [{"group": "", "kind": "Service"}]}});
                (
                    format!("{gw_api}/referencegrants"),
                    Verb::Create,
                    grant,
                    None,
                )
            }
        }
    }
}

/// Object `j` of one cluster's world: 0 is the Gateway, then per route index Service,
/// EndpointSlice, HTTPRoute.
fn world_object(j: usize, gateway_port: u16, echo: u16) -> (String, Value) {
    if j == 0 {
        return (
            format!("/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/gateways"),
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": "gw", "namespace": NS},
                "spec": {"gatewayClassName": "meridian",
                         "listeners": [{"name": "http", "port": gateway_port, "protocol": "HTTP"}]}}),
        );
    }
    let i = (j - 1) / 3;
    match (j - 1) % 3 {
        0 => (
            format!("/api/v1/namespaces/{NS}/services"),
            json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("svc-{i}"), "namespace": NS},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": echo}]}}),
        ),
        1 => (
            format!("/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"),
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("svc-{i}-1"), "namespace": NS,
                             "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
                "ports": [{"name": "http", "port": echo, "protocol": "TCP"}]}),
        ),
        _ => (
            format!("/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/httproutes"),
            route(i),
        ),
    }
}

/// HTTPRoute `r-i` for host `r-i.scale` to Service `svc-i`.
fn route(i: usize) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": format!("r-{i}"), "namespace": NS},
        "spec": {"parentRefs": [{"name": "gw"}],
                 "hostnames": [format!("r-{i}.scale")],
                 "rules": [{"backendRefs": [{"name": format!("svc-{i}"), "port": 80}]}]}})
}

/// Samples the bulk apply every [`SAMPLE_EVERY`] until `stop` (or `deadline`): writes answered,
/// CPU ticks of the local API and of the controller (pid 0: not running). The first sample is
/// taken at once, the last after `stop`.
fn sample_apply(
    answered: &AtomicUsize,
    stop: &std::sync::atomic::AtomicBool,
    api: u32,
    controller: u32,
    deadline: Instant,
) -> Vec<Sample> {
    let ticks = |pid: u32| {
        if pid == 0 {
            0
        } else {
            sys::cpu_ticks_tree(pid).unwrap_or(0)
        }
    };
    let take = || Sample {
        at: Instant::now(),
        done: answered.load(Ordering::Relaxed),
        api_ticks: ticks(api),
        controller_ticks: ticks(controller),
    };
    let mut samples = vec![take()];
    // Bounded by the deadline (the apply's own).
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        std::thread::sleep(SAMPLE_EVERY);
        samples.push(take());
    }
    samples.push(take());
    samples
}

/// The first, middle and last tenth of an apply of `total` writes into `clusters` clusters,
/// from the sampler's samples: rate and CPU per write while the store grew through that tenth.
/// Each window spans from the first sample at or past its start to the first at or past its end
/// (so it is at least a tenth, give or take a sample period of writes).
fn apply_windows(samples: &[Sample], total: usize, clusters: usize) -> Vec<Window> {
    let at_least = |n: usize| samples.iter().find(|s| s.done >= n);
    let per_cluster = total / clusters.max(1);
    [0usize, 4, 9]
        .iter()
        .filter_map(|&tenth| {
            let (from, to) = (total * tenth / 10, total * (tenth + 1) / 10);
            let (a, b) = (at_least(from)?, at_least(to)?);
            let writes = b.done.checked_sub(a.done).filter(|w| *w > 0)? as f64;
            let secs = (b.at - a.at).as_secs_f64().max(1e-9);
            let us = |ticks: u64| ticks as f64 * 1e6 / TICKS_PER_S / writes;
            Some(Window {
                stored_from: per_cluster * tenth / 10,
                stored_to: per_cluster * (tenth + 1) / 10,
                writes_per_s: writes / secs,
                api_us_per_write: us(b.api_ticks.saturating_sub(a.api_ticks)),
                controller_us_per_write: us(b.controller_ticks.saturating_sub(a.controller_ticks)),
            })
        })
        .collect()
}

/// Programmed=True and the `http` listener's attachedRoutes == n.
fn gateway_converged(gw: &Value, n: usize) -> bool {
    let status = &gw["status"];
    let programmed = status["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Programmed" && c["status"] == "True")
    });
    let attached = status["listeners"].as_array().and_then(|ls| {
        ls.iter()
            .find(|l| l["name"] == "http")
            .and_then(|l| l["attachedRoutes"].as_u64())
    });
    programmed && attached == Some(n as u64)
}

/// Routes of a list with a parent status of ours saying Accepted=True.
fn accepted_routes(list: &Value) -> usize {
    let Some(items) = list["items"].as_array() else {
        return 0;
    };
    items
        .iter()
        .filter(|r| {
            r["status"]["parents"].as_array().is_some_and(|ps| {
                ps.iter().any(|p| {
                    p["controllerName"] == CONTROLLER_NAME
                        && p["conditions"].as_array().is_some_and(|cs| {
                            cs.iter()
                                .any(|c| c["type"] == "Accepted" && c["status"] == "True")
                        })
                })
            })
        })
        .count()
}

/// Polls the proxy (a request every 5 ms: several pollers may run at once, and they share the
/// machine with what they measure) until `host` answers 200; when it did, or `None` after
/// [`SERVED_TIMEOUT`].
fn wait_served(proxy: &mut Conn, host: &str) -> Option<Instant> {
    let deadline = Instant::now() + SERVED_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(a) = proxy.get_with_host("/", host)
            && a.status == 200
        {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// Waits until the controller's CPU time stops growing (no change over 300 ms; at most 30 s):
/// the work of the last change is done.
fn settle_cpu(pid: u32) {
    settle_cpu_for(pid, Duration::from_millis(300));
}

/// Waits (at most 30 s) until `pid` has used no CPU for `quiet`.
fn settle_cpu_for(pid: u32, quiet: Duration) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = sys::cpu_ticks_tree(pid);
    let mut since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100).min(quiet));
        let now = sys::cpu_ticks_tree(pid);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return;
        }
    }
}

/// Controller CPU ms per second while nothing changes.
fn idle_cpu(pid: u32, over: Duration) -> f64 {
    let before = sys::cpu_ticks_tree(pid).unwrap_or(0);
    std::thread::sleep(over);
    let after = sys::cpu_ticks_tree(pid).unwrap_or(before);
    (after.saturating_sub(before)) as f64 * 1000.0 / TICKS_PER_S / over.as_secs_f64()
}

/// `v` sorted; the nearest-rank quantile.
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// One Prometheus sample line: name, labels, value.
fn sample(line: &str) -> Option<(&str, BTreeMap<String, String>, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match head.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (head, ""),
    };
    let labels = labels
        .split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.trim_matches('"').to_string()))
        })
        .collect();
    Some((name, labels, value))
}

/// The sum of a metric's samples whose labels pass `keep`.
fn sum_metric(text: &str, name: &str, keep: impl Fn(&BTreeMap<String, String>) -> bool) -> f64 {
    text.lines()
        .filter_map(sample)
        .filter(|(n, l, _)| *n == name && keep(l))
        .map(|(_, _, v)| v)
        .sum()
}

/// Per translation mode: count, total seconds, and the bucket bound holding the 99th percentile.
fn translations(text: &str) -> Vec<(String, u64, f64, Option<f64>)> {
    histograms(text, "meridian_controller_translate_seconds", "mode")
}

/// Per value of `label` of histogram `metric`: count, total seconds, and the bucket bound
/// holding the 99th percentile (values with no observation left out).
fn histograms(text: &str, metric: &str, label: &str) -> Vec<(String, u64, f64, Option<f64>)> {
    /// Count, sum, and (bound, cumulative count) per bucket.
    type Histogram = (u64, f64, Vec<(f64, f64)>);
    let mut modes: BTreeMap<String, Histogram> = BTreeMap::new();
    for (name, labels, value) in text.lines().filter_map(sample) {
        let Some(rest) = name.strip_prefix(metric) else {
            continue;
        };
        let Some(mode) = labels.get(label) else {
            continue;
        };
        let e = modes.entry(mode.clone()).or_default();
        match rest {
            "_count" => e.0 = value as u64,
            "_sum" => e.1 = value,
            "_bucket" => {
                let le = match labels.get("le").map(String::as_str) {
                    Some("+Inf") => f64::INFINITY,
                    Some(le) => le.parse().unwrap_or(f64::INFINITY),
                    None => continue,
                };
                e.2.push((le, value));
            }
            _ => {}
        }
    }
    modes
        .into_iter()
        .filter(|(_, (count, _, _))| *count > 0)
        .map(|(mode, (count, sum, mut buckets))| {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let p99 = buckets
                .iter()
                .find(|(_, cum)| *cum >= 0.99 * count as f64)
                .map(|(le, _)| *le);
            (mode, count, sum, p99)
        })
        .collect()
}

fn spawn(mut cmd: Command, log: &Path, what: &str) -> anyhow::Result<Guard> {
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let child = cmd
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    Ok(Guard(child))
}

/// Polls `ok` every 100 ms until it says yes; fails after [`START_TIMEOUT`] quoting `log`.
fn wait_for(
    what: &str,
    log: &Path,
    mut ok: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut last = String::new();
    while Instant::now() < deadline {
        match ok() {
            Ok(true) => return Ok(()),
            Ok(false) => last = "not yet".into(),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "{what}: not within {START_TIMEOUT:?} (last: {last}); log {}:\n{}",
        log.display(),
        sys::tail(log)
    )
}

/// `meridian sandbox` with the clusters on ephemeral ports: the guard, each cluster's URL,
/// and the kubeconfig it wrote.
fn start_sandbox(
    bin: &Path,
    dir: &Path,
    names: &[String],
    no_persist: bool,
) -> anyhow::Result<(Guard, Vec<String>, PathBuf)> {
    let log = dir.join("sandbox.log");
    let mut cmd = Command::new(bin);
    cmd.args([
        "sandbox",
        "--clusters",
        &names.join(","),
        "--base-port",
        "0",
    ])
    .arg("--state-dir")
    .arg(dir.join("sandbox"))
    .env("MERIDIAN_LOG", "warn")
    .stdout(Stdio::piped())
    .stderr(std::fs::File::create(&log)?);
    if no_persist {
        cmd.arg("--no-persist");
    }
    let mut child = cmd.spawn().context("starting the sandbox")?;
    let stdout = child.stdout.take().context("sandbox stdout")?;
    let guard = Guard(child);
    let (tx, rx) = mpsc::channel();
    // Reads until the sandbox exits (its stdout closes), so it never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                // Nobody listens any more: keep draining.
                continue;
            }
        }
    });
    let deadline = Instant::now() + START_TIMEOUT;
    let mut urls = BTreeMap::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        // `cluster NAME URL`, then `kubeconfig: PATH`.
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["cluster", name, url] = words[..] {
            urls.insert(name.to_string(), url.to_string());
        }
        if let Some(path) = line.strip_prefix("kubeconfig: ") {
            let urls = names
                .iter()
                .map(|n| {
                    urls.get(n)
                        .cloned()
                        .with_context(|| format!("no URL for {n}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            return Ok((guard, urls, PathBuf::from(path.trim())));
        }
    }
    bail!(
        "the sandbox did not print its kubeconfig within {START_TIMEOUT:?}; its log:\n{}",
        sys::tail(&log)
    )
}

/// The CRDs `bin crds` prints, as JSON objects.
fn crds(bin: &Path) -> anyhow::Result<Vec<Value>> {
    let out = Command::new(bin)
        .arg("crds")
        .output()
        .context("running `meridian crds`")?;
    if !out.status.success() {
        bail!(
            "`meridian crds` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout).context("`meridian crds` output")?;
    let mut crds = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).context("a CRD document")?;
        if !v.is_null() {
            crds.push(v);
        }
    }
    Ok(crds)
}

/// CRDs, namespaces, the proxies' ServiceAccount and the GatewayClass in one cluster.
fn install(url: &str, crds: &[Value]) -> anyhow::Result<()> {
    let mut api = Conn::new(url)?;
    for crd in crds {
        api.ensure(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            crd,
        )?;
    }
    for ns in [NS, "meridian-system"] {
        api.ensure(
            "/api/v1/namespaces",
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )?;
    }
    api.ensure(
        "/api/v1/namespaces/meridian-system/serviceaccounts",
        &json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "meridian-proxy", "namespace": "meridian-system"}}),
    )?;
    let class = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "meridian"}, "spec": {"controllerName": CONTROLLER_NAME}});
    // A CRD may take a moment to serve its kind.
    let log = Path::new("/dev/null");
    wait_for("the GatewayClass kind", log, || {
        let a = api.create("/apis/gateway.networking.k8s.io/v1/gatewayclasses", &class)?;
        Ok(a.ok() || a.status == 409)
    })
}

/// A proxy for cluster `c`, bootstrapped like a real one; returns once it is connected.
fn start_proxy(bin: &Path, dir: &Path, c: &ClusterRun, distribution: u16) -> anyhow::Result<Guard> {
    let mut api = Conn::new(&c.url)?;
    let request = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": ["meridian"]}});
    let a = api.create(
        "/api/v1/namespaces/meridian-system/serviceaccounts/meridian-proxy/token",
        &request,
    )?;
    let token = a.json()?["status"]["token"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("TokenRequest answered {} {}", a.status, a.text()))?;
    let token_file = dir.join(format!("{}.token", c.name));
    sys::write(&token_file, &token)?;
    let controller_log = dir.join("controller.log");
    let mut bundle = String::new();
    wait_for(
        &format!("{}: the meridian-ca ConfigMap", c.name),
        &controller_log,
        || {
            let a = api.get("/api/v1/namespaces/meridian-system/configmaps/meridian-ca")?;
            if !a.ok() {
                return Ok(false);
            }
            bundle = a.json()?["data"]["ca.crt"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            Ok(bundle.contains("BEGIN CERTIFICATE"))
        },
    )?;
    let ca_file = dir.join(format!("{}-ca.crt", c.name));
    sys::write(&ca_file, &bundle)?;
    let admin = sys::free_port()?;
    let log = dir.join(format!("proxy-{}.log", c.name));
    let mut cmd = Command::new(bin);
    cmd.args([
        "proxy",
        "--controller",
        &format!("https://127.0.0.1:{distribution}"),
    ])
    .args(["--cluster", &c.name, "--region", &c.name])
    .args(["--zone", &format!("{}-a", c.name)])
    .args(["--proxy-id", &format!("{}-proxy", c.name)])
    .args(["--admin", &format!("127.0.0.1:{admin}")])
    .args(["--advertise-address", "127.0.0.1"])
    .arg("--ca-file")
    .arg(&ca_file)
    .arg("--bootstrap-token-file")
    .arg(&token_file)
    .env("MERIDIAN_LOG", "warn");
    let guard = spawn(cmd, &log, &format!("the proxy of {}", c.name))?;
    wait_for(&format!("{}: the proxy connected", c.name), &log, || {
        let ready = Conn::local(admin).get("/ready")?.json()?;
        Ok(ready["controller"]["connected"] == true)
    })?;
    Ok(guard)
}

fn ms(s: f64) -> String {
    if s.is_nan() {
        "–".into()
    } else if s >= 100.0 {
        format!("{s:.0}")
    } else {
        format!("{s:.1}")
    }
}

fn print_table(n: usize, opts: &ScaleOpts, columns: &[(String, Figures)]) {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |label: String, f: &dyn Fn(&Figures) -> String| {
        rows.push((label, columns.iter().map(|(_, c)| f(c)).collect()));
    };
    row("bulk apply: writes / s (writes, seconds)".into(), &|f| {
        format!(
            "{:.0} ({}, {:.1} s)",
            f.writes as f64 / f.apply_s.max(1e-9),
            f.writes,
            f.apply_s
        )
    });
    for (i, which) in ["first", "middle", "last"].iter().enumerate() {
        row(
            format!(
                "bulk apply, {which} tenth: writes / s, local API CPU / write, controller CPU / \
                 write (µs) (objects stored per cluster)"
            ),
            &|f| {
                f.apply_windows.get(i).map_or("–".into(), |w| {
                    format!(
                        "{:.0}, {:.0}, {:.0} ({}–{})",
                        w.writes_per_s,
                        w.api_us_per_write,
                        w.controller_us_per_write,
                        w.stored_from,
                        w.stored_to
                    )
                })
            },
        );
    }
    let secs = |s: Option<f64>| s.map_or("not converged".to_string(), |s| format!("{s:.1} s"));
    let from = if opts.cold_start {
        "the controller's start"
    } else {
        "the first write"
    };
    row(
        format!("convergence from {from} (all Accepted, Programmed, attachedRoutes = N)"),
        &|f| secs(f.converge_from_start_s),
    );
    if !opts.cold_start {
        row("convergence after the last write".into(), &|f| {
            secs(f.converge_from_last_write_s)
        });
    } else {
        row(
            "CPU until convergence: controller, local API (s)".into(),
            &|f| {
                f.converge_cpu_s
                    .map_or("–".to_string(), |(c, a)| format!("{c:.1}, {a:.1}"))
            },
        );
    }
    for (i, kind) in Change::ALL.iter().enumerate() {
        row(
            format!("controller CPU per change: {} (ms)", kind.label()),
            &|f| {
                f.cpu_per_change
                    .get(i)
                    .map_or("–".into(), |(_, cpu, _)| ms(*cpu))
            },
        );
    }
    for kind in Change::ALL.iter().filter(|k| k.served()) {
        row(
            format!("apply → served: {} p50 / p99 (ms)", kind.label()),
            &|f| {
                f.served
                    .iter()
                    .find(|s| s.0 == kind.label())
                    .map_or("–".into(), |(_, served)| served.cell())
            },
        );
    }
    row(
        "apply → served: HTTPRoute create while other changes stream in, p50 / p99 (ms) \
         (changes streamed, at /s)"
            .into(),
        &|f| {
            f.streamed.as_ref().map_or("–".into(), |s| {
                format!("{} ({} at {:.0}/s)", s.served.cell(), s.streamed, s.rate)
            })
        },
    );
    row(
        "controller CPU per change while streaming, creates and streamed together (ms)".into(),
        &|f| f.streamed.as_ref().map_or("–".into(), |s| ms(s.cpu_ms)),
    );
    row("controller idle CPU (ms/s)".into(), &|f| {
        ms(f.idle_cpu_ms_per_s)
    });
    row(
        "controller RSS before → after the apply (MiB)".into(),
        &|f| {
            let before = f.rss_before_kib.map_or("– (cold start)".into(), |b| {
                format!("{:.0}", b as f64 / 1024.0)
            });
            format!("{before} → {:.0}", f.rss_after_kib as f64 / 1024.0)
        },
    );
    row(
        "controller RSS per route (KiB, growth / routes in all clusters)".into(),
        &|f| {
            f.rss_before_kib.map_or("–".into(), |before| {
                format!(
                    "{:.1}",
                    f.rss_after_kib.saturating_sub(before) as f64 / f.routes_total.max(1) as f64
                )
            })
        },
    );
    let modes: Vec<String> = {
        let mut m: Vec<String> = columns
            .iter()
            .flat_map(|(_, f)| f.translations.iter().map(|t| t.0.clone()))
            .collect();
        m.sort();
        m.dedup();
        m
    };
    for mode in &modes {
        row(
            format!("translations `{mode}`: count, mean, p99 ≤ (ms)"),
            &|f| {
                f.translations
                    .iter()
                    .find(|t| &t.0 == mode)
                    .map_or("–".into(), |(_, count, sum, p99)| {
                        count_mean_p99(*count, *sum, *p99)
                    })
            },
        );
    }
    row(
        "publish → c0's proxy acknowledged, whole run: count, mean, p99 ≤ (ms)".into(),
        &|f| {
            f.propagation
                .as_ref()
                .map_or("–".into(), |(_, count, sum, p99)| {
                    count_mean_p99(*count, *sum, *p99)
                })
        },
    );
    row(
        "stream messages sent, all proxies: snapshot / patch / endpoints".into(),
        &|f| {
            f.sent_messages
                .iter()
                .map(|(_, n)| n.to_string())
                .collect::<Vec<_>>()
                .join(" / ")
        },
    );
    row("status writes ok".into(), &|f| {
        f.status_writes_ok.to_string()
    });
    row("load average at start / end (1, 5, 15 min)".into(), &|f| {
        format!("{} / {}", f.load_start, f.load_end)
    });

    println!(
        "### {n} routes × {} cluster(s) (+ {n} Services, {n} EndpointSlices each)\n",
        opts.clusters
    );
    print!("| figure |");
    for (name, _) in columns {
        print!(" {name} |");
    }
    println!();
    print!("|---|");
    for _ in columns {
        print!("---:|");
    }
    println!();
    for (label, cells) in rows {
        println!("| {label} | {} |", cells.join(" | "));
    }
    println!();
}

/// A histogram's row cell: count, mean and the p99 bucket bound, in ms (seconds in).
fn count_mean_p99(count: u64, sum: f64, p99: Option<f64>) -> String {
    let p99 = p99.map_or("–".into(), |b| {
        if b.is_infinite() {
            "+Inf".into()
        } else {
            ms(b * 1000.0)
        }
    });
    format!("{count}, {}, {p99}", ms(sum * 1000.0 / count.max(1) as f64))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn translate_histograms_are_summarised_per_mode() {
        let text = "# HELP x\n\
            meridian_controller_translate_seconds_bucket{mode=\"full\",le=\"0.1\"} 1\n\
            meridian_controller_translate_seconds_bucket{mode=\"full\",le=\"0.25\"} 99\n\
            meridian_controller_translate_seconds_bucket{mode=\"full\",le=\"+Inf\"} 100\n\
            meridian_controller_translate_seconds_sum{mode=\"full\"} 14\n\
            meridian_controller_translate_seconds_count{mode=\"full\"} 100\n\
            meridian_controller_translate_seconds_count{mode=\"endpoints\"} 0\n";
        let t = translations(text);
        assert_eq!(t.len(), 1, "modes without translations are left out");
        assert_eq!(t[0].0, "full");
        assert_eq!(t[0].1, 100);
        assert!((t[0].2 - 14.0).abs() < 1e-9);
        assert_eq!(t[0].3, Some(0.25));
    }

    #[test]
    fn convergence_needs_programmed_attached_routes_and_our_acceptance() {
        let gw = json!({"status": {"conditions": [{"type": "Programmed", "status": "True"}],
            "listeners": [{"name": "http", "attachedRoutes": 3}]}});
        assert!(gateway_converged(&gw, 3));
        assert!(!gateway_converged(&gw, 4));
        let mut not_programmed = gw.clone();
        not_programmed["status"]["conditions"][0]["status"] = json!("False");
        assert!(!gateway_converged(&not_programmed, 3));
        let parent = |controller: &str, accepted: &str| {
            json!({"status": {"parents": [{"controllerName": controller,
                "conditions": [{"type": "Accepted", "status": accepted}]}]}})
        };
        let list = json!({"items": [parent(CONTROLLER_NAME, "True"),
            parent(CONTROLLER_NAME, "False"), parent("example.com/other", "True"), json!({})]});
        assert_eq!(accepted_routes(&list), 1);
    }

    #[test]
    fn apply_windows_measure_the_first_middle_and_last_tenth() {
        let t0 = Instant::now();
        // 1000 writes into 2 clusters at 100 writes per 0.1 s, the local API using 1 tick per
        // 10 writes at first and 2 per 10 writes from the middle on; the controller 1 per 100.
        let mut api = 0;
        let samples: Vec<Sample> = (0..=10)
            .map(|i| {
                if i > 0 {
                    api += if i <= 5 { 10 } else { 20 };
                }
                Sample {
                    at: t0 + Duration::from_millis(100 * i),
                    done: 100 * i as usize,
                    api_ticks: api,
                    controller_ticks: i,
                }
            })
            .collect();
        let w = apply_windows(&samples, 1000, 2);
        assert_eq!(w.len(), 3);
        assert_eq!((w[0].stored_from, w[0].stored_to), (0, 50));
        assert_eq!((w[1].stored_from, w[1].stored_to), (200, 250));
        assert_eq!((w[2].stored_from, w[2].stored_to), (450, 500));
        for x in &w {
            assert!((x.writes_per_s - 1000.0).abs() < 1.0, "{x:?}");
            // 1 tick (10 ms) per 100 writes.
            assert!((x.controller_us_per_write - 100.0).abs() < 1.0, "{x:?}");
        }
        // 10 ticks (0.1 s) per 100 writes: 1 ms each; 2 ms once the store is larger.
        assert!((w[0].api_us_per_write - 1000.0).abs() < 1.0, "{:?}", w[0]);
        assert!((w[1].api_us_per_write - 1000.0).abs() < 1.0, "{:?}", w[1]);
        assert!((w[2].api_us_per_write - 2000.0).abs() < 1.0, "{:?}", w[2]);
        // An apply cut short has no last tenth.
        assert_eq!(apply_windows(&samples[..6], 1000, 2).len(), 2);
    }

    #[test]
    fn the_world_is_one_gateway_then_service_slice_route_per_index() {
        let kinds: Vec<String> = (0..7)
            .map(|j| {
                world_object(j, 8080, 9090).1["kind"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "Gateway",
                "Service",
                "EndpointSlice",
                "HTTPRoute",
                "Service",
                "EndpointSlice",
                "HTTPRoute"
            ]
        );
        assert_eq!(world_object(6, 8080, 9090).1["metadata"]["name"], "r-1");
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.99), 4.0);
    }
}
