//! Proxied HTTP throughput and latency: direct vs Meridian vs nginx vs haproxy, in one run.
//!
//! Fairness rules: one backend process serves all targets; each proxy gets one worker (nginx
//! `worker_processes 1`, haproxy `nbthread 1`, Meridian and the backend with one tokio worker via
//! `TOKIO_WORKER_THREADS=1`); upstream keep-alive everywhere; the same `wrk` command for every
//! target; targets interleaved within each round so drift on a shared machine hits all of them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Options of the HTTP benchmark.
#[derive(clap::Args, Debug, Clone)]
pub struct HttpArgs {
    /// Rounds (each round runs every target once).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 5)]
    pub duration: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// The meridian binary (default: target/release/meridian).
    #[arg(long, env = "MERIDIAN_BIN")]
    pub meridian: Option<PathBuf>,
}

struct Target {
    name: &'static str,
    port: u16,
    pid: Option<u32>,
}

#[derive(Default, Clone)]
struct Sample {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us_per_req: Option<f64>,
    errors: u64,
}

/// Stops its child on drop so an early error never leaks a server. SIGTERM first: nginx's master
/// only takes its workers down on a catchable signal; SIGKILL after 3 s.
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn need(tool: &str, package: &str) -> anyhow::Result<PathBuf> {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("`{tool}` is not installed: install it with `apt-get install -y {package}`")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `GET /` on the port answers with any HTTP status line.
fn wait_http(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
            let mut buf = [0u8; 12];
            if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200") {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what} on port {port} did not answer 200 within 20 s")
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`; utime and stime are fields 14 and 15 of the whole line.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn parse_latency_us(v: &str) -> Option<f64> {
    let v = v.trim();
    let (num, mul) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1_000.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1_000_000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|x| x * mul)
}

fn run_wrk(wrk: &Path, port: u16, args: &HttpArgs, pid: Option<u32>) -> anyhow::Result<Sample> {
    let before = pid.and_then(cpu_ticks);
    let out = Command::new(wrk)
        .args([
            "-t1",
            &format!("-c{}", args.connections),
            &format!("-d{}s", args.duration),
            "--latency",
            "--timeout",
            "5s",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .context("running wrk")?;
    let after = pid.and_then(cpu_ticks);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut s = Sample::default();
    let mut requests = 0u64;
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            s.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("50%") {
            s.p50_us = parse_latency_us(v).unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("99%") {
            s.p99_us = parse_latency_us(v).unwrap_or(0.0);
        } else if t.contains("requests in") {
            requests = t
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            s.errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            s.errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    if s.rps == 0.0 {
        bail!("wrk printed no throughput for port {port}:\n{text}");
    }
    if let (Some(b), Some(a)) = (before, after)
        && requests > 0
    {
        // Clock ticks are 1/100 s on Linux.
        s.cpu_us_per_req = Some((a.saturating_sub(b)) as f64 * 10_000.0 / requests as f64);
    }
    Ok(s)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Runs the benchmark and prints the tables.
pub fn run(args: &HttpArgs) -> anyhow::Result<()> {
    let wrk = need("wrk", "wrk")?;
    let nginx = need("nginx", "nginx-light");
    let haproxy = need("haproxy", "haproxy");
    let meridian = args
        .meridian
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/release/meridian"));
    if !meridian.exists() {
        bail!(
            "{} not found: build it first with `cargo build --release` (or pass --meridian PATH)",
            meridian.display()
        );
    }
    let dir = std::env::temp_dir().join(format!("meridian-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("logs"))?;

    let backend_port = free_port()?;
    let _backend = Guard(
        Command::new(&meridian)
            .args([
                "echo",
                "--listen",
                &format!("127.0.0.1:{backend_port}"),
                "--name",
                "bench",
            ])
            .env("TOKIO_WORKER_THREADS", "1")
            .env("MERIDIAN_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("starting the echo backend")?,
    );
    wait_http(backend_port, "echo backend")?;
    let mut targets = vec![Target {
        name: "direct",
        port: backend_port,
        pid: None,
    }];
    let mut guards = Vec::new();

    // Meridian.
    let mport = free_port()?;
    let admin = free_port()?;
    let snapshot = serde_json::json!({
        "schema": meridian_model::snapshot::SNAPSHOT_SCHEMA,
        "generation": 1,
        "gateways": [{"namespace": "bench", "name": "gw", "listeners": [{
            "name": "http", "address": "127.0.0.1", "port": mport, "protocol": "HTTP",
            "routes": [{"namespace": "bench", "name": "r", "rules": [{
                "backends": [{"name": "bench/echo:80", "target": {"type": "endpoints",
                    "endpoints": [{"address": "127.0.0.1", "port": backend_port}]}}]}]}]}]}]
    });
    let snap_path = dir.join("snapshot.json");
    write(&snap_path, &snapshot.to_string())?;
    let child = Command::new(&meridian)
        .arg("proxy")
        .arg("--snapshot")
        .arg(&snap_path)
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .env("TOKIO_WORKER_THREADS", "1")
        .env("MERIDIAN_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("starting meridian proxy")?;
    targets.push(Target {
        name: "meridian",
        port: mport,
        pid: Some(child.id()),
    });
    guards.push(Guard(child));
    wait_http(mport, "meridian proxy")?;

    // nginx.
    match &nginx {
        Ok(nginx) => {
            let port = free_port()?;
            let conf = format!(
                "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/logs/nginx.err warn;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{\n access_log off;\n client_body_temp_path {d};\n proxy_temp_path {d};\n\
                 upstream b {{ server 127.0.0.1:{backend_port}; keepalive 64; }}\n\
                 server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://b; \
                 proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n}}\n",
                d = dir.display()
            );
            let conf_path = dir.join("nginx.conf");
            write(&conf_path, &conf)?;
            let child = Command::new(nginx)
                .arg("-c")
                .arg(&conf_path)
                .arg("-p")
                .arg(&dir)
                .stderr(Stdio::null())
                .spawn()
                .context("starting nginx")?;
            targets.push(Target {
                name: "nginx",
                port,
                pid: Some(child.id()),
            });
            guards.push(Guard(child));
            wait_http(port, "nginx")?;
        }
        Err(e) => println!("skipping nginx: {e}"),
    }

    // haproxy.
    match &haproxy {
        Ok(haproxy) => {
            let port = free_port()?;
            let conf = format!(
                "global\n nbthread 1\n maxconn 4000\n\ndefaults\n mode http\n timeout connect 5s\n\
                 timeout client 30s\n timeout server 30s\n option http-keep-alive\n\n\
                 frontend f\n bind 127.0.0.1:{port}\n default_backend b\n\n\
                 backend b\n http-reuse always\n server s1 127.0.0.1:{backend_port}\n"
            );
            let conf_path = dir.join("haproxy.cfg");
            write(&conf_path, &conf)?;
            let child = Command::new(haproxy)
                .arg("-f")
                .arg(&conf_path)
                .arg("-db")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting haproxy")?;
            targets.push(Target {
                name: "haproxy",
                port,
                pid: Some(child.id()),
            });
            guards.push(Guard(child));
            wait_http(port, "haproxy")?;
        }
        Err(e) => println!("skipping haproxy: {e}"),
    }

    // Warm-up, then interleaved rounds.
    let warm = HttpArgs {
        duration: 1,
        ..args.clone()
    };
    for t in &targets {
        run_wrk(&wrk, t.port, &warm, None)?;
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); targets.len()];
    for round in 0..args.rounds {
        for (i, t) in targets.iter().enumerate() {
            let s = run_wrk(&wrk, t.port, args, t.pid)?;
            eprintln!(
                "round {}: {:<8} {:>9.0} req/s p50 {:>6.0} µs p99 {:>6.0} µs",
                round + 1,
                t.name,
                s.rps,
                s.p50_us,
                s.p99_us
            );
            samples[i].push(s);
        }
    }

    let med = |i: usize, f: fn(&Sample) -> f64| median(samples[i].iter().map(f).collect());
    let rps: Vec<f64> = (0..targets.len()).map(|i| med(i, |s| s.rps)).collect();
    let find = |n: &str| targets.iter().position(|t| t.name == n).map(|i| rps[i]);
    let direct = find("direct");
    let nginx_rps = find("nginx");
    println!(
        "## Proxied HTTP/1.1 keep-alive, {} connections, wrk -t1, {} s × {} rounds (medians)",
        args.connections, args.duration, args.rounds
    );
    println!();
    println!("| target | req/s | p50 µs | p99 µs | CPU µs/req | vs direct | vs nginx | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (i, t) in targets.iter().enumerate() {
        let cpu: Vec<f64> = samples[i].iter().filter_map(|s| s.cpu_us_per_req).collect();
        let errors: u64 = samples[i].iter().map(|s| s.errors).sum();
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} |",
            t.name,
            rps[i],
            med(i, |s| s.p50_us),
            med(i, |s| s.p99_us),
            if cpu.is_empty() {
                "–".to_string()
            } else {
                format!("{:.1}", median(cpu))
            },
            direct.map_or("–".into(), |d| format!("{:.2}", rps[i] / d)),
            nginx_rps.map_or("–".into(), |n| format!("{:.2}", rps[i] / n)),
            errors
        );
    }
    drop(guards);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
