//! Regional failover when the local region's network is *blackholed*: packets to and from its
//! backends vanish (nothing is refused or reset), so the proxy only learns about it from timeouts.
//!
//! ```text
//! test process (root network namespace)            namespace mbh<pid>  (created by this test)
//!   clients ──► proxy (us-east/a) ──veth 10.77.x.1/30 ─────► 10.77.x.2  us-east/a, us-east/b
//!                     └──► 127.0.0.1: us-west/a+b, eu-west/a+b          (child process; nft
//!                                                                        drops every packet)
//! ```
//!
//! The us-east backends run in a child process started with `ip netns exec` inside a network
//! namespace this test creates: the child is this very test binary, re-executed to run the ignored
//! helper [`namespace_backend_child`]. That keeps the backends identical to the loopback ones
//! without a Python dependency and without `setns` (unsafe code is forbidden in the workspace).
//! The cut is an nftables table inside that namespace whose input and output chains drop every
//! packet; the restore deletes the table. Nothing outside the namespace is touched except the
//! root end of the veth pair (a private /30, chosen free at setup).
//!
//! Load is open-loop: a few clients each start a GET every few milliseconds whatever the previous
//! ones are doing, so a stuck request does not stop traffic (as real users would not). Measured:
//! failed GETs, the time until ≥ 95 % of the requests started in each 100 ms window are answered
//! by the next tier *promptly* (a request that first hangs on the dead region and is answered by
//! the next tier seconds later does not count as "on the next tier"), latency during the cut, and
//! failback after the restore.
//!
//! Since hedging (lean/hedge.rs) a GET whose first try has not answered after the hedge delay
//! also goes to the next region, so the cut costs a request the hedge delay, not the connect
//! timeout; the asserts hold issue 18's goals (p99 ≤ 500 ms, ≥ 95 % elsewhere within 1 s).
//!
//! The same namespace machinery shows *nearest region first*
//! ([`nearest_region_by_measured_round_trip_comes_first`]): a namespace whose uplink is shaped
//! (tbf) and kept busy by its child is tens of milliseconds away, and the proxy's health probes
//! measure it.
//!
//! Skips with a printed reason when not root or when `ip`/`nft` are missing. Every namespace,
//! veth and child process is removed by a drop guard, so a failing assertion cleans up too.
#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use meridian_model::locality::Locality;
use meridian_proxy::{AdminAuth, ProxyConfig, ProxyHandle};
use serde_json::json;
use tokio::task::JoinSet;

/// Environment variable that turns [`namespace_backend_child`] into a backend process:
/// `"<ip> <name> <name>…"`.
const CHILD_ENV: &str = "MERIDIAN_BLACKHOLE_CHILD";
/// A backend child exits after this long even if nobody stops it.
const CHILD_LIFETIME: Duration = Duration::from_secs(180);
/// Set (to the root end's address) to make the backend child flood the namespace's uplink.
const FLOOD_ENV: &str = "MERIDIAN_BLACKHOLE_FLOOD";
/// Rate and queue of the shaped uplink of a *far* namespace ([`Netns::slow_down`]).
const SHAPED_RATE: &str = "2mbit";
const SHAPED_LATENCY: &str = "40ms";
/// nftables table (inside the test's namespace only) that drops every packet.
const NFT_TABLE: &str = "meridian_blackhole";

/// Load: clients × one GET every `PERIOD` each.
const CLIENTS: usize = 4;
const PERIOD: Duration = Duration::from_millis(20);
/// Most requests of one client in flight; beyond it ticks are skipped (and counted).
const MAX_IN_FLIGHT: usize = 400;
/// A client gives up on a request after this long (counts as failed).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeline, from the start of the load. The cut comes once the proxy's retry budget window
/// (10 s) is full of steady traffic, as it would be in production, and lasts longer than the
/// client timeout, so a request stuck on the dead region cannot be rescued by the restore.
const CUT_AT: Duration = Duration::from_secs(10);
const RESTORE_AT: Duration = Duration::from_secs(21);
const LOAD_END: Duration = Duration::from_secs(25);
/// An answer slower than this went through a timeout on the dead region first.
const PROMPT: Duration = Duration::from_secs(1);
/// Goal of issue 18: ≥ 95 % of the traffic on the next tier within this after the cut. Issue 7
/// asked for 3 s; before hedging it took 1.8 s (a new connection into the dead region waited
/// out the 2 s connect timeout before moving on).
const SHIFT_GOAL: Duration = Duration::from_secs(1);
/// Goal of issue 18: no request pays more than this at p99 for the dead region, and 0 failed
/// GETs (asserted below). The lean path hedges a GET whose first try has not answered after
/// the hedge delay (the backend's p95, at least 25 ms; lean/hedge.rs) to the next region, so
/// neither a connect into the silent region nor a GET written into an idle pooled connection
/// to it waits for a timeout. Before hedging, p99 during the cut was 2.02 s (the connect
/// timeout).
const MAX_P99_DURING_CUT: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------------------------
// Environment checks and commands

/// Why this test cannot run here, if it cannot.
fn skip_reason() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // "Uid: real effective saved fs"
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string));
    if euid.as_deref() != Some("0") {
        return Some(format!(
            "needs root for network namespaces (effective uid {euid:?})"
        ));
    }
    for (tool, arg) in [("ip", "-V"), ("nft", "--version")] {
        match Command::new(tool).arg(arg).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => return Some(format!("`{tool} {arg}` failed: {}", o.status)),
            Err(e) => return Some(format!("`{tool}` is not available: {e}")),
        }
    }
    None
}

/// Runs a command; Err carries its stderr.
fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    run_with_input(cmd, args, None)
}

fn run_with_input(cmd: &str, args: &[&str], input: Option<&str>) -> Result<(), String> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("{cmd}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{cmd} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// The namespace guard

/// A network namespace with a veth pair to the root namespace, the backend processes inside it,
/// and the blackhole switch. Dropping it kills the processes and deletes namespace and veth.
struct Netns {
    name: String,
    host_if: String,
    ns_if: String,
    /// Root-namespace end and namespace end of the /30.
    host_ip: Ipv4Addr,
    ns_ip: Ipv4Addr,
    children: Vec<Child>,
}

impl Netns {
    /// Creates namespace, veth pair and addresses. Names carry the pid (and `tag`) so concurrent
    /// test runs do not collide; the /30 is the first free one from a pid-derived start.
    fn create(tag: u8) -> Result<Netns, String> {
        reap_stale();
        let pid = std::process::id();
        let name = format!("mbh{pid}{tag}");
        // Interface names are limited to 15 bytes: "mbh" + ≤ 7-digit pid + tag + side.
        let host_if = format!("mbh{pid}{tag}h");
        let ns_if = format!("mbh{pid}{tag}n");
        let (host_ip, ns_ip) = free_slash30(pid.wrapping_mul(7).wrapping_add(u32::from(tag)))?;
        // The guard exists before the first command so a half-done setup is cleaned up too.
        let ns = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
            ns_if: ns_if.clone(),
            host_ip,
            ns_ip,
            children: Vec::new(),
        };
        run("ip", &["netns", "add", &name])?;
        run(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &name,
            ],
        )?;
        run(
            "ip",
            &["addr", "add", &format!("{host_ip}/30"), "dev", &host_if],
        )?;
        run("ip", &["link", "set", &host_if, "up"])?;
        run(
            "ip",
            &[
                "-n",
                &name,
                "addr",
                "add",
                &format!("{ns_ip}/30"),
                "dev",
                &ns_if,
            ],
        )?;
        run("ip", &["-n", &name, "link", "set", &ns_if, "up"])?;
        run("ip", &["-n", &name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Starts one child process inside the namespace serving one backend per name on the
    /// namespace's address; returns (name, address) per backend.
    fn spawn_backends(&mut self, names: &[&str]) -> Vec<(String, SocketAddr)> {
        self.spawn_child(names, false)
    }

    /// [`Netns::spawn_backends`]; with `flood` the child also keeps the namespace's uplink busy
    /// (see [`Netns::slow_down`]).
    fn spawn_child(&mut self, names: &[&str], flood: bool) -> Vec<(String, SocketAddr)> {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(exe)
            .args([
                "namespace_backend_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{} {}", self.ns_ip, names.join(" ")))
            .env(
                FLOOD_ENV,
                if flood {
                    self.host_ip.to_string()
                } else {
                    String::new()
                },
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        self.children.push(child);
        // Read the "LISTEN name addr" lines on a thread so the wait is bounded; the thread then
        // keeps draining the child's output until it exits.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The harness's "test … " prefix may share the line.
                if let Some(at) = line.find("LISTEN ") {
                    let _ = tx.send(line[at + "LISTEN ".len()..].to_string());
                }
            }
        });
        let mut out = Vec::new();
        for _ in names {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("backend child did not report its listeners in time");
            let (name, addr) = line.split_once(' ').unwrap();
            out.push((name.to_string(), addr.parse().unwrap()));
        }
        out
    }

    /// Every packet into or out of the namespace is dropped from now on.
    fn blackhole(&self) -> Result<(), String> {
        let rules = format!(
            "table inet {NFT_TABLE} {{\n\
             \tchain input {{ type filter hook input priority 0; policy drop; }}\n\
             \tchain output {{ type filter hook output priority 0; policy drop; }}\n\
             }}\n"
        );
        run_with_input(
            "ip",
            &["netns", "exec", &self.name, "nft", "-f", "-"],
            Some(&rules),
        )
    }

    /// Makes the namespace *far*: its uplink (the namespace end of the veth) is shaped to
    /// [`SHAPED_RATE`] with up to [`SHAPED_LATENCY`] of queue, and a child started with
    /// `flood` keeps that queue full, so every packet out of the namespace (a SYN-ACK too)
    /// waits about that long. `tc netem` would say it directly, but kernels without the netem
    /// module have tbf.
    fn slow_down(&self) -> Result<(), String> {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.name,
                "tc",
                "qdisc",
                "add",
                "dev",
                &self.ns_if,
                "root",
                "tbf",
                "rate",
                SHAPED_RATE,
                "burst",
                "4kb",
                "latency",
                SHAPED_LATENCY,
            ],
        )
    }

    fn restore(&self) -> Result<(), String> {
        run(
            "ip",
            &[
                "netns", "exec", &self.name, "nft", "delete", "table", "inet", NFT_TABLE,
            ],
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            // Closing stdin alone would stop the child too; kill makes it immediate.
            drop(c.stdin.take());
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deleting the namespace destroys its veth end (and so the pair) asynchronously; delete
        // the root end explicitly so the address is free at once.
        let _ = run("ip", &["link", "del", &self.host_if]);
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// Removes namespaces (and their root-side veth ends) left by runs of this test whose process
/// is gone (killed before its drop guard ran). Live runs, ours included, are left alone.
fn reap_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        // "mbh" + pid + one tag digit.
        let Some(digits) = name.strip_prefix("mbh") else {
            continue;
        };
        if digits.len() < 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let pid = &digits[..digits.len() - 1];
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = run("ip", &["link", "del", &format!("{name}h")]);
        let _ = run("ip", &["netns", "del", name]);
    }
}

/// The first /30 in 10.77.0.0/16 (from a start derived from `seed`) whose addresses the root
/// namespace does not already use.
fn free_slash30(seed: u32) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .map_err(|e| format!("ip addr show: {e}"))?;
    let used = String::from_utf8_lossy(&out.stdout).to_string();
    for i in 0..64u32 {
        let block = (seed.wrapping_add(i) % 16_384) * 4;
        let [c, d] = [(block >> 8) as u8, (block & 0xff) as u8];
        let host = Ipv4Addr::new(10, 77, c, d + 1);
        let ns = Ipv4Addr::new(10, 77, c, d + 2);
        if !used.contains(&format!(" 10.77.{c}.{}/", d + 1)) {
            return Ok((host, ns));
        }
    }
    Err("no free /30 in 10.77.0.0/16".into())
}

// ---------------------------------------------------------------------------------------------
// Backends

/// Serves HTTP/1.1 keep-alive on `listener`, answering every request with `name`.
async fn serve(listener: tokio::net::TcpListener, name: String) {
    let mut conns = JoinSet::new();
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                // e.g. out of file descriptors: do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let name = name.clone();
        conns.spawn(async move {
            let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
                let body = Bytes::from(name.clone());
                async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
        while conns.try_join_next().is_some() {}
    }
}

/// A loopback backend in this process.
async fn loopback_backend(name: &str) -> (String, SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(serve(listener, name.to_string()));
    (name.to_string(), addr, task)
}

/// Not a test: the backend process the blackhole test starts inside its network namespace
/// (`ip netns exec NS <this binary> namespace_backend_child --exact --ignored`). Without the
/// environment variable the test sets it has nothing to do. Binds one listener per name on the
/// given address, prints `LISTEN <name> <addr>` per listener, serves until its stdin closes (the
/// parent is gone or stopped it) or [`CHILD_LIFETIME`] passes.
#[test]
#[ignore = "helper process of the blackhole test, started by it inside a network namespace"]
fn namespace_backend_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        println!("{CHILD_ENV} is not set: this helper only runs inside the blackhole test");
        return;
    };
    let mut words = spec.split_whitespace();
    let ip: Ipv4Addr = words.next().unwrap().parse().unwrap();
    let names: Vec<String> = words.map(str::to_string).collect();
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if let Ok(host) = std::env::var(FLOOD_ENV)
            && let Ok(host) = host.parse::<Ipv4Addr>()
        {
            tokio::spawn(flood(host));
        }
        for name in names {
            let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
            println!("LISTEN {name} {}", listener.local_addr().unwrap());
            tokio::spawn(serve(listener, name));
        }
        // Kept: the child's own upper bound on its life (the parent normally ends it sooner).
        tokio::time::sleep(CHILD_LIFETIME).await;
    });
    std::process::exit(0);
}

/// Sends UDP datagrams to `host` (the discard port; nothing listens) at about twice
/// [`SHAPED_RATE`], paced, until the child exits: the shaped uplink's queue stays full.
async fn flood(host: Ipv4Addr) {
    let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
    let datagram = [0u8; 1200];
    // 4 Mbit/s: 1200 bytes every 2.4 ms; in bursts of 4 every ~10 ms.
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let end = CHILD_LIFETIME.as_millis() / 10;
    for _ in 0..end {
        tick.tick().await;
        for _ in 0..4 {
            // A full queue refuses some: that is the point.
            let _ = socket.send_to(&datagram, (host, 9)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Load and figures

/// One request: start since the load began, latency, status (0 = transport error or client
/// timeout), region that answered.
#[derive(Debug, Clone)]
struct Sample {
    start: Duration,
    latency: Duration,
    status: u16,
    region: String,
}

/// Open-loop load: every client starts a GET each `PERIOD` until `LOAD_END`, with at most
/// `MAX_IN_FLIGHT` of its own requests outstanding. Returns the samples and the skipped ticks.
async fn load(port: u16, start: Instant) -> (Vec<Sample>, usize) {
    let samples: Arc<Mutex<Vec<Sample>>> = Default::default();
    let skipped = Arc::new(AtomicUsize::new(0));
    let mut clients = JoinSet::new();
    for _ in 0..CLIENTS {
        let (samples, skipped) = (samples.clone(), skipped.clone());
        clients.spawn(async move {
            let c = reqwest::Client::builder()
                .no_proxy()
                .timeout(CLIENT_TIMEOUT)
                .build()
                .unwrap();
            let url = format!("http://127.0.0.1:{port}/");
            let mut tick = tokio::time::interval(PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut requests = JoinSet::new();
            let max_ticks = LOAD_END.as_millis() / PERIOD.as_millis() + 1;
            for _ in 0..max_ticks {
                tick.tick().await;
                let t = start.elapsed();
                if t >= LOAD_END {
                    break;
                }
                while requests.try_join_next().is_some() {}
                if requests.len() >= MAX_IN_FLIGHT {
                    skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let (c, url, samples) = (c.clone(), url.clone(), samples.clone());
                requests.spawn(async move {
                    let sent = Instant::now();
                    let (status, body) = match c.get(&url).send().await {
                        Ok(r) => {
                            let s = r.status().as_u16();
                            (s, r.text().await.unwrap_or_default())
                        }
                        Err(_) => (0, String::new()),
                    };
                    let region = body.split('/').next().unwrap_or("").to_string();
                    samples.lock().unwrap().push(Sample {
                        start: t,
                        latency: sent.elapsed(),
                        status,
                        region,
                    });
                });
            }
            // Every request is bounded by the client timeout.
            while requests.join_next().await.is_some() {}
        });
    }
    while clients.join_next().await.is_some() {}
    let mut s = samples.lock().unwrap().clone();
    s.sort_by_key(|s| s.start);
    (s, skipped.load(Ordering::Relaxed))
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

fn in_range(samples: &[Sample], from: Duration, to: Duration) -> impl Iterator<Item = &Sample> {
    samples
        .iter()
        .filter(move |s| s.start >= from && s.start < to)
}

/// Requests started in [from, to) answered promptly by `region`, and all requests started then.
fn prompt_share(samples: &[Sample], from: Duration, to: Duration, region: &str) -> (usize, usize) {
    let mut hit = 0;
    let mut n = 0;
    for s in in_range(samples, from, to) {
        n += 1;
        if s.status == 200 && s.region == region && s.latency <= PROMPT {
            hit += 1;
        }
    }
    (hit, n)
}

/// Start of the first window from which every window up to `to` has ≥ 95 % of its requests
/// answered promptly by `region` (an empty window is not "on" any region); relative to `from`.
fn time_to_shift(
    samples: &[Sample],
    from: Duration,
    to: Duration,
    step: Duration,
    region: &str,
) -> Option<Duration> {
    let mut windows = Vec::new();
    let mut t = from;
    while t + step <= to {
        let (hit, n) = prompt_share(samples, t, t + step, region);
        windows.push((t, n > 0 && hit * 100 >= n * 95));
        t += step;
    }
    match windows.iter().rposition(|(_, ok)| !ok) {
        None => Some(Duration::ZERO),
        Some(i) => windows.get(i + 1).map(|w| w.0 - from),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_region_fails_over_and_back() {
    if let Some(why) = skip_reason() {
        println!("skipping blackhole failover test: {why}");
        return;
    }
    let run = async {
        let mut ns = match Netns::create(0) {
            Ok(ns) => ns,
            Err(e) => panic!("network namespace setup failed: {e}"),
        };
        let mut backends: Vec<(String, SocketAddr)> =
            ns.spawn_backends(&["us-east/a", "us-east/b"]);
        let mut tasks = Vec::new();
        for name in ["us-west/a", "us-west/b", "eu-west/a", "eu-west/b"] {
            let (n, a, t) = loopback_backend(name).await;
            backends.push((n, a));
            tasks.push(t);
        }
        println!(
            "blackhole: us-east behind veth {} → {} ({}), backends {backends:?}",
            ns.host_if, ns.ns_ip, ns.host_ip
        );

        let proxy = ProxyHandle::start(ProxyConfig {
            admin: None,
            admin_auth: AdminAuth::None,
            locality: Locality {
                cluster: "east".into(),
                region: "us-east".into(),
                zone: "a".into(),
            },
            east_west: None,
            ..Default::default()
        })
        .await
        .unwrap();
        let port = common::free_port();
        let endpoints: Vec<_> = backends
            .iter()
            .map(|(name, addr)| {
                let (region, zone) = name.split_once('/').unwrap();
                json!({"address": addr.ip().to_string(), "port": addr.port(),
                       "cluster": region, "region": region, "zone": zone})
            })
            .collect();
        let backend = json!({
            "name": "default/echo:80 (ServiceImport)",
            "weight": 1,
            "target": {"type": "endpoints", "endpoints": endpoints},
        });
        proxy
            .apply(common::http_snapshot(
                1,
                port,
                vec![common::prefix_rule("/", vec![backend])],
            ))
            .await
            .unwrap();
        // The namespace path works before the load starts (a setup fault is not a failover).
        let r = common::client()
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert!(r.text().await.unwrap().starts_with("us-east/"));

        let start = Instant::now();
        let load = tokio::spawn(load(port, start));
        // Kept: the schedule is part of what is measured. The load is open-loop (a GET every
        // PERIOD whatever happens), the cut must come once the proxy's 10 s retry-budget window
        // is full, and it must outlast the client timeout (see the constants); failover.rs
        // shows the same failover driven by events instead.
        tokio::time::sleep(CUT_AT.saturating_sub(start.elapsed())).await;
        let cut = start.elapsed();
        ns.blackhole().unwrap();
        tokio::time::sleep(RESTORE_AT.saturating_sub(start.elapsed())).await;
        let restored = start.elapsed();
        ns.restore().unwrap();
        let (samples, skipped) = load.await.unwrap();

        // Figures.
        let total = samples.len();
        let failed: Vec<&Sample> = samples.iter().filter(|s| s.status != 200).collect();
        let (before_hit, before_n) = {
            let w: Vec<&Sample> = in_range(&samples, Duration::ZERO, cut).collect();
            (w.iter().filter(|s| s.region == "us-east").count(), w.len())
        };
        let step = Duration::from_millis(100);
        let shift = time_to_shift(&samples, cut, restored, step, "eu-west");
        let lat = |from, to| -> Vec<Duration> {
            in_range(&samples, from, to).map(|s| s.latency).collect()
        };
        let p99_before = percentile(lat(Duration::ZERO, cut), 0.99);
        let during = lat(cut, restored);
        let (p50_cut, p99_cut, max_cut) = (
            percentile(during.clone(), 0.5),
            percentile(during.clone(), 0.99),
            percentile(during.clone(), 1.0),
        );
        let slow_cut = during.iter().filter(|l| **l > PROMPT).count();
        let settled = shift.map(|s| cut + s);
        let (settled_hit, settled_n) = match settled {
            Some(from) => prompt_share(&samples, from, restored, "eu-west"),
            None => (0, 0),
        };
        // Failback: the first 200 ms window after the restore with ≥ 95 % promptly on us-east;
        // then how much of the rest stays there (flapping would lower it).
        let fb_step = Duration::from_millis(200);
        let mut failback = None;
        let mut t = restored;
        while t + fb_step <= LOAD_END {
            let (hit, n) = prompt_share(&samples, t, t + fb_step, "us-east");
            if n > 0 && hit * 100 >= n * 95 {
                failback = Some(t + fb_step - restored);
                break;
            }
            t += Duration::from_millis(50);
        }
        let first_back = samples
            .iter()
            .filter(|s| s.start >= restored && s.region == "us-east")
            .map(|s| s.start - restored)
            .min();
        let (after_fb_hit, after_fb_n) = match failback {
            Some(fb) => {
                let w: Vec<&Sample> = in_range(&samples, restored + fb, LOAD_END).collect();
                (w.iter().filter(|s| s.region == "us-east").count(), w.len())
            }
            None => (0, 0),
        };
        let metrics = proxy.metrics_text();
        let counters: Vec<&str> = metrics
            .lines()
            .filter(|l| {
                !l.starts_with('#')
                    && (l.contains("retries") || l.contains("ejections") || l.contains("hedges"))
            })
            .collect();
        let failed_desc: Vec<String> = failed
            .iter()
            .take(8)
            .map(|s| {
                format!(
                    "start {:?} status {} after {:?}",
                    s.start, s.status, s.latency
                )
            })
            .collect();
        println!(
            "blackhole: {total} requests ({skipped} ticks skipped), {} failed {failed_desc:?}; \
             before cut {before_hit}/{before_n} on us-east, p99 {p99_before:?}; cut at {cut:?}, \
             restored at {restored:?}; time to ≥95 % promptly on eu-west: {shift:?}; from then to \
             restore {settled_hit}/{settled_n}; latency of requests started during the cut: p50 \
             {p50_cut:?} p99 {p99_cut:?} max {max_cut:?}, {slow_cut}/{} slower than {PROMPT:?}; \
             failback: first us-east answer {first_back:?} after restore, ≥95 % back after \
             {failback:?}, then {after_fb_hit}/{after_fb_n} on us-east; {counters:?}",
            failed.len(),
            during.len()
        );

        assert!(before_n > 100 && settled_n > 50, "too little load to judge");
        assert!(before_hit * 100 >= before_n * 99, "local region first");
        let shift = shift.expect("traffic never settled on the next tier");
        assert!(shift <= SHIFT_GOAL, "time to shift {shift:?}");
        assert!(
            settled_hit * 100 >= settled_n * 95,
            "next tier keeps the traffic"
        );
        assert!(
            failed.is_empty(),
            "failed requests: {failed_desc:?} ({} in all)",
            failed.len()
        );
        assert!(
            p99_cut <= MAX_P99_DURING_CUT,
            "p99 during the cut {p99_cut:?}"
        );
        // The requests of the cut went through hedges, not timeouts.
        let hedges_sent = metrics
            .lines()
            .find(|l| l.starts_with("meridian_proxy_hedges_total{event=\"sent\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(hedges_sent > 0, "no hedge was sent: {counters:?}");
        let failback = failback.expect("traffic never came back to us-east");
        assert!(failback <= Duration::from_secs(3), "failback {failback:?}");
        assert!(
            after_fb_hit * 100 >= after_fb_n * 95,
            "traffic flaps after failback"
        );

        proxy.shutdown().await;
        for t in tasks {
            t.abort();
        }
        drop(ns);
    };
    tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("blackhole test timed out");
}

/// Nearest region first: a proxy in eu-central without local endpoints, with ap-south behind a
/// shaped, busy uplink (tens of ms of round trip) and us-west on loopback. Alphabetically
/// ap-south would come first; the health probes' connect round trips put us-west first, the
/// admin `/config_dump` shows the measured order, and the traffic goes there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nearest_region_by_measured_round_trip_comes_first() {
    if let Some(why) = skip_reason() {
        println!("skipping nearest-region test: {why}");
        return;
    }
    let run = async {
        let mut ns = match Netns::create(1) {
            Ok(ns) => ns,
            Err(e) => panic!("network namespace setup failed: {e}"),
        };
        if let Err(e) = ns.slow_down() {
            println!("skipping nearest-region test: no tbf qdisc ({e})");
            return;
        }
        let mut backends = ns.spawn_child(&["ap-south/a"], true);
        let (name, addr, task) = loopback_backend("us-west/a").await;
        backends.push((name, addr));
        let proxy = ProxyHandle::start(ProxyConfig {
            admin: Some("127.0.0.1:0".parse().unwrap()),
            admin_auth: AdminAuth::None,
            locality: Locality {
                cluster: "central".into(),
                region: "eu-central".into(),
                zone: "a".into(),
            },
            ..Default::default()
        })
        .await
        .unwrap();
        let admin = proxy.admin_addr().unwrap();
        let port = common::free_port();
        let endpoints: Vec<_> = backends
            .iter()
            .map(|(name, addr)| {
                let (region, zone) = name.split_once('/').unwrap();
                json!({"address": addr.ip().to_string(), "port": addr.port(),
                       "cluster": region, "region": region, "zone": zone})
            })
            .collect();
        let backend = json!({
            "name": "default/echo:80 (ServiceImport)",
            "weight": 1,
            "target": {"type": "endpoints", "endpoints": endpoints},
        });
        proxy
            .apply(common::http_snapshot(
                1,
                port,
                vec![common::prefix_rule("/", vec![backend])],
            ))
            .await
            .unwrap();
        let c = common::client();
        let order = meridian_test_support::eventually_async(
            "us-west measured nearer than ap-south",
            Duration::from_secs(20),
            || async {
                let v: serde_json::Value = serde_json::from_str(
                    &c.get(format!("http://{admin}/config_dump"))
                        .send()
                        .await
                        .ok()?
                        .text()
                        .await
                        .ok()?,
                )
                .ok()?;
                let order = v["nearestRegions"].clone();
                let first = order.get(0)?["region"].as_str()?.to_string();
                (first == "us-west" && order.as_array()?.len() == 2).then_some(order)
            },
        )
        .await;
        println!("nearest regions measured from eu-central: {order}");
        let rtt = |i: usize| order[i]["rttMs"].as_f64().unwrap();
        assert_eq!(order[1]["region"], "ap-south");
        assert!(rtt(1) > rtt(0) * 1.2 && rtt(1) - rtt(0) > 2.0, "{order}");
        for _ in 0..20 {
            let r = c
                .get(format!("http://127.0.0.1:{port}/"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
            assert_eq!(r.text().await.unwrap(), "us-west/a", "nearest region first");
        }
        proxy.shutdown().await;
        task.abort();
        drop(ns);
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("nearest-region test timed out");
}
