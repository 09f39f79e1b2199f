//! Measures how fast the local API takes writes as its store grows.
//!
//! Starts one in-process cluster (on an ephemeral loopback port, optionally persisting into a
//! fresh temp directory, as `meridian up` does), installs the HTTPRoute CRD, then K writers POST
//! N objects over keep-alive HTTP/1.1 connections: a third each of Services, EndpointSlices and
//! HTTPRoutes (the mix of the controller's scale benchmark). It prints the write rate of every
//! window of `--window` writes as it goes (so a run cut short by `--timeout-secs` still shows
//! how far it got), the cumulative time at each `--mark`, then how long the shutdown flush took.
//! Every answer must be 201; anything else stops the run with an error.
//!
//! With `--cold-start`, the creates are followed by what a controller's cold start asks of the
//! local API (issue #20): a watch of HTTPRoutes from the current resourceVersion, `--lists` full
//! lists of them, then one status PUT per HTTPRoute (the same writers), until the watch has seen
//! every MODIFIED event. Each phase prints its wall time and the CPU time the process used (the
//! client's share is small: its bodies are encoded before the clock starts), and the end prints
//! the resident memory.
//!
//! How to run (release build; it is a measurement):
//!   cargo run --release -p meridian-sandbox --example write_rate -- --objects 30000 --writers 8
//!   cargo run --release -p meridian-sandbox --example write_rate -- --objects 30000 --persist
//!   cargo run --release -p meridian-sandbox --example write_rate -- --objects 30000 --persist --cold-start
//!
//! Figures are only comparable on the same machine under the same load.

use clap::Parser;
use meridian_sandbox::{Sandbox, SandboxConfig};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

#[derive(Parser)]
struct Cli {
    /// Objects to create.
    #[arg(long, default_value_t = 30_000)]
    objects: usize,
    /// Concurrent writers, each on its own keep-alive connection.
    #[arg(long, default_value_t = 8)]
    writers: usize,
    /// Persist into a fresh temp directory (the `meridian up` setting).
    #[arg(long)]
    persist: bool,
    /// Writes per reported window.
    #[arg(long, default_value_t = 2_000)]
    window: usize,
    /// Object counts at which to print the cumulative time.
    #[arg(long, value_delimiter = ',', default_value = "6000,30000")]
    marks: Vec<usize>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// After the creates: a watch, `--lists` lists and a status PUT per HTTPRoute.
    #[arg(long)]
    cold_start: bool,
    /// Full lists of the HTTPRoutes in the cold-start phase.
    #[arg(long, default_value_t = 3)]
    lists: usize,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// One keep-alive HTTP/1.1 connection that sends JSON POSTs and reads `Content-Length` answers.
struct Conn {
    io: BufReader<TcpStream>,
    line: String,
    body: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn, Error> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Conn {
            io: BufReader::new(s),
            line: String::new(),
            body: Vec::new(),
        })
    }

    /// Sends one POST and returns the status code (the answer body is read and dropped).
    async fn post(&mut self, path: &str, content_type: &str, body: &[u8]) -> Result<u16, Error> {
        self.send("POST", path, content_type, body).await
    }

    /// Sends one request and returns the status code (the answer body is in `self.body`).
    async fn send(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<u16, Error> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nAccept: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let s = self.io.get_mut();
        s.write_all(head.as_bytes()).await?;
        s.write_all(body).await?;
        self.line.clear();
        self.io.read_line(&mut self.line).await?;
        let status: u16 = self
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("bad status line {:?}", self.line))?;
        let mut length = 0usize;
        // Headers end with an empty line; a sane answer has far fewer than 100.
        for _ in 0..100 {
            self.line.clear();
            if self.io.read_line(&mut self.line).await? == 0 {
                return Err("connection closed in the headers".into());
            }
            let l = self.line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse()?;
            }
        }
        self.body.resize(length, 0);
        self.io.read_exact(&mut self.body).await?;
        if status >= 300 {
            return Err(format!(
                "{method} {path}: {status} {}",
                String::from_utf8_lossy(&self.body)
            )
            .into());
        }
        Ok(status)
    }
}

/// Object `i` of the mix and the path it is POSTed to.
fn object(i: usize) -> (&'static str, Value) {
    let n = i / 3;
    match i % 3 {
        0 => (
            "/api/v1/namespaces/default/services",
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": format!("svc-{n}"), "labels": {"app": format!("a{n}")}},
                   "spec": {"selector": {"app": format!("a{n}")},
                            "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        ),
        1 => (
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": format!("svc-{n}-abcde"),
                                "labels": {"kubernetes.io/service-name": format!("svc-{n}")}},
                   "addressType": "IPv4",
                   "endpoints": [{"addresses": [format!("10.1.{}.{}", n / 250 % 250, n % 250 + 1)],
                                  "conditions": {"ready": true}}],
                   "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
        ),
        _ => (
            "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes",
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                   "metadata": {"name": format!("route-{n}")},
                   "spec": {"parentRefs": [{"name": "gw"}],
                            "hostnames": [format!("r{n}.example.com")],
                            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                                       "backendRefs": [{"name": format!("svc-{n}"), "port": 80}]}]}}),
        ),
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let cli = Cli::parse();
    let state_dir = cli
        .persist
        .then(|| std::env::temp_dir().join(format!("meridian-write-rate-{}", std::process::id())));
    let sb = Sandbox::start(SandboxConfig {
        state_dir: state_dir.clone(),
        ..SandboxConfig::ephemeral(&["east"])
    })
    .await?;
    let addr = sb.clusters()[0].addr;

    let crd: Value = serde_yaml::from_str(include_str!(
        "../../crds/httproutes.gateway.networking.k8s.io.yaml"
    ))?;
    Conn::open(addr)
        .await?
        .post(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            "application/json",
            &serde_json::to_vec(&crd)?,
        )
        .await?;

    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let stamps = Arc::new(std::sync::Mutex::new(Vec::<(usize, Instant)>::new()));
    let start = Instant::now();
    eprintln!(
        "write_rate: {} objects, {} writers, persistence {}",
        cli.objects,
        cli.writers,
        if cli.persist { "on" } else { "off" }
    );
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..cli.writers.max(1) {
        let (next, done, stamps) = (next.clone(), done.clone(), stamps.clone());
        let (total, window, marks) = (cli.objects, cli.window.max(1), cli.marks.clone());
        writers.spawn(async move {
            let mut conn = Conn::open(addr).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<(), Error>(());
                }
                let (path, obj) = object(i);
                conn.post(path, "application/json", &serde_json::to_vec(&obj)?)
                    .await?;
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                if d % window == 0 || marks.contains(&d) || d == total {
                    let now = Instant::now();
                    let mut s = stamps.lock().unwrap_or_else(|p| p.into_inner());
                    if d % window == 0 {
                        // Windows complete in order: `d - window` was stamped before `d`.
                        let from = s
                            .iter()
                            .rev()
                            .find(|(n, _)| *n == d - window)
                            .map_or(start, |(_, t)| *t);
                        let rate = window as f64 / now.duration_since(from).as_secs_f64();
                        eprintln!(
                            "  [{:>7.1} s] stored {:>6} {:>8.0} writes/s",
                            now.duration_since(start).as_secs_f64(),
                            d,
                            rate
                        );
                    }
                    s.push((d, now));
                }
            }
        });
    }
    let run = async {
        while let Some(r) = writers.join_next().await {
            r??;
        }
        Ok::<(), Error>(())
    };
    tokio::time::timeout(Duration::from_secs(cli.timeout_secs), run)
        .await
        .map_err(|_| "timed out")??;
    let elapsed = start.elapsed();

    let mut stamps = stamps.lock().unwrap_or_else(|p| p.into_inner()).clone();
    stamps.sort_by_key(|(d, _)| *d);
    println!(
        "write_rate: {} objects, {} writers, persistence {}",
        cli.objects,
        cli.writers,
        if cli.persist { "on" } else { "off" }
    );
    let mut prev = (0usize, start);
    for &(d, t) in &stamps {
        if d % cli.window.max(1) == 0 || d == cli.objects {
            let rate = (d - prev.0) as f64 / t.duration_since(prev.1).as_secs_f64();
            println!("  stored {:>6}..{:<6} {:>8.0} writes/s", prev.0, d, rate);
            prev = (d, t);
        }
    }
    for m in &cli.marks {
        if let Some((_, t)) = stamps.iter().find(|(d, _)| d == m) {
            let secs = t.duration_since(start).as_secs_f64();
            println!(
                "  first {m:>6} writes: {secs:.2} s ({:.0} writes/s)",
                *m as f64 / secs
            );
        }
    }
    println!(
        "  all {} writes: {:.2} s ({:.0} writes/s)",
        cli.objects,
        elapsed.as_secs_f64(),
        cli.objects as f64 / elapsed.as_secs_f64()
    );
    if cli.cold_start {
        cold_start(addr, &cli).await?;
    }
    let flush = Instant::now();
    sb.shutdown().await;
    println!(
        "  shutdown (final flush): {:.2} s",
        flush.elapsed().as_secs_f64()
    );
    if let Some(dir) = state_dir {
        let size: u64 = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum();
        println!("  state dir: {} bytes", size);
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

const ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes";

/// CPU seconds (user + system) this process has used, from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    // Clock ticks are 100 per second on Linux.
    f.iter().sum::<u64>() as f64 / 100.0
}

/// A line of `/proc/self/status` (`VmRSS`, `VmHWM`), as printed there.
fn proc_status(key: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(str::trim))
        .unwrap_or("?")
        .to_string()
}

/// Prints a phase's wall and CPU time.
fn phase(name: &str, wall: Instant, cpu: f64) {
    println!(
        "  {name}: {:.2} s wall, {:.2} s CPU",
        wall.elapsed().as_secs_f64(),
        cpu_seconds() - cpu
    );
}

/// The status a controller writes for route `n`.
fn route_status(n: usize) -> Value {
    let cond = |t: &str| {
        json!({"type": t, "status": "True", "reason": t, "message": format!("route-{n} {t}"),
               "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z"})
    };
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": format!("route-{n}"), "namespace": "default"},
           "status": {"parents": [{"parentRef": {"group": "gateway.networking.k8s.io",
                                                  "kind": "Gateway", "name": "gw"},
                                   "controllerName": "example.com/meridian",
                                   "conditions": [cond("Accepted"), cond("ResolvedRefs")]}]}})
}

/// The cold-start phases (see the module docs): watch, lists, one status PUT per HTTPRoute.
async fn cold_start(addr: SocketAddr, cli: &Cli) -> Result<(), Error> {
    let routes = cli.objects / 3;
    let mut conn = Conn::open(addr).await?;
    conn.send("GET", &format!("{ROUTES}?limit=1"), "application/json", b"")
        .await?;
    let listed: Value = serde_json::from_slice(&conn.body)?;
    let rv = listed["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();

    // The watch: counts MODIFIED lines until every route's status arrived.
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!(
                "GET {ROUTES}?watch=1&resourceVersion={rv} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let watcher = tokio::spawn(async move {
        let mut r = BufReader::new(stream);
        let (mut line, mut seen, mut bytes) = (String::new(), 0usize, 0usize);
        while seen < routes {
            line.clear();
            if r.read_line(&mut line).await? == 0 {
                return Err::<(usize, usize), Error>("watch closed early".into());
            }
            bytes += line.len();
            if line.contains("\"type\":\"MODIFIED\"") {
                seen += 1;
            }
        }
        Ok((seen, bytes))
    });

    println!("cold start: {routes} HTTPRoutes");
    let (wall, cpu) = (Instant::now(), cpu_seconds());
    let mut list_bytes = 0;
    for _ in 0..cli.lists {
        conn.send("GET", ROUTES, "application/json", b"").await?;
        list_bytes = conn.body.len();
    }
    phase(
        &format!("{} lists of {routes} ({list_bytes} bytes each)", cli.lists),
        wall,
        cpu,
    );

    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..routes)
            .map(|n| serde_json::to_vec(&route_status(n)))
            .collect::<Result<_, _>>()?,
    );
    let next = Arc::new(AtomicUsize::new(0));
    let (wall, cpu) = (Instant::now(), cpu_seconds());
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..cli.writers.max(1) {
        let (next, bodies) = (next.clone(), bodies.clone());
        writers.spawn(async move {
            let mut conn = Conn::open(addr).await?;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(n) else {
                    return Ok::<(), Error>(());
                };
                let path = format!("{ROUTES}/route-{n}/status");
                conn.send("PUT", &path, "application/json", body).await?;
            }
        });
    }
    while let Some(r) = writers.join_next().await {
        r??;
    }
    phase(&format!("{routes} status PUTs"), wall, cpu);
    let (seen, bytes) = watcher.await??;
    phase(
        &format!("  ... and the watch saw all {seen} ({bytes} bytes)"),
        wall,
        cpu,
    );
    println!(
        "  memory: VmRSS {}, VmHWM {}",
        proc_status("VmRSS"),
        proc_status("VmHWM")
    );
    Ok(())
}
