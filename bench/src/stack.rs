//! Starting the systems under test with equivalent configurations.
//!
//! One echo backend (`meridian echo`) serves every target. Each proxy gets one worker (nginx
//! `worker_processes 1`, haproxy `nbthread 1`, the backend with one tokio worker via
//! `TOKIO_WORKER_THREADS=1`, Meridian with `proxy --workers 1`: one current-thread worker
//! runtime, or for a binary without that flag, e.g. an older `--compare` one, its multi-thread
//! runtime with `TOKIO_WORKER_THREADS=1`) and keeps connections to the backend alive. Two
//! route shapes:
//! - [`Routes::CatchAll`]: one route for every request (throughput, latency, TLS);
//! - [`Routes::Hosts`]: `n` routes, route `i` for `Host: svc-i.bench`, each with its own backend
//!   (upstream / backend section) pointing at the echo server (memory at scale).
//!
//! Configurations are written into a per-run temporary directory; every process logs there, and
//! a start-up failure quotes the end of its log.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::sys::{self, Guard};

/// Which routes a proxy serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routes {
    /// One route matching everything.
    CatchAll,
    /// `n` host routes, `svc-0.bench` … `svc-{n-1}.bench`, one backend each.
    Hosts(usize),
}

/// The Host header that reaches route `i` of [`Routes::Hosts`].
pub fn host(i: usize) -> String {
    format!("svc-{i}.bench")
}

/// Kind of proxy, for configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Meridian,
    Nginx,
    Haproxy,
}

/// A self-signed certificate for TLS termination, generated with the openssl CLI.
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificate and key in one file (haproxy's `crt`).
    pub combined: PathBuf,
}

impl Tls {
    /// Generates an ECDSA P-256 certificate for `bench.local` valid for two days.
    pub fn generate(openssl: &Path, dir: &Path) -> anyhow::Result<Tls> {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let out = Command::new(openssl)
            .args(["req", "-x509", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .args(["-days", "2", "-subj", "/CN=bench.local"])
            .args(["-addext", "subjectAltName=DNS:bench.local,IP:127.0.0.1"])
            .output()
            .context("running openssl")?;
        if !out.status.success() {
            bail!(
                "openssl could not generate a certificate: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let combined = dir.join("combined.pem");
        let text = format!(
            "{}{}",
            std::fs::read_to_string(&cert)?,
            std::fs::read_to_string(&key)?
        );
        sys::write(&combined, &text)?;
        Ok(Tls {
            cert,
            key,
            combined,
        })
    }
}

/// A running echo backend.
pub struct Backend {
    pub port: u16,
    _guard: Guard,
}

/// Starts `meridian echo` with one tokio worker.
pub fn backend(meridian: &Path, dir: &Path) -> anyhow::Result<Backend> {
    let port = sys::free_port()?;
    let log = dir.join("echo.log");
    let guard = Guard(
        Command::new(meridian)
            .args(["echo", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--name", "bench"])
            .env("TOKIO_WORKER_THREADS", "1")
            .env("MERIDIAN_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log_file(&log)?)
            .spawn()
            .context("starting the echo backend")?,
    );
    sys::wait_http(port, "bench", "echo backend", &log)?;
    Ok(Backend {
        port,
        _guard: guard,
    })
}

/// A running proxy.
pub struct Proxy {
    pub name: String,
    pub kind: Kind,
    pub port: u16,
    /// The process we started (nginx: the master).
    pub pid: u32,
    pub tls: bool,
    _guard: Guard,
}

impl Proxy {
    /// The process that serves requests: nginx's (only) worker, else the process itself.
    pub fn serving_pid(&self) -> u32 {
        match self.kind {
            Kind::Nginx => sys::children(self.pid)
                .into_iter()
                .next()
                .unwrap_or(self.pid),
            _ => self.pid,
        }
    }
}

/// Whether the meridian binary `bin` knows `proxy --workers` (binaries built before it do not,
/// and would refuse to start with it).
fn has_workers_flag(bin: &Path) -> bool {
    Command::new(bin)
        .args(["proxy", "--help"])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--workers"))
}

fn log_file(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))
}

/// Starts a proxy of `kind` named `name` (its own subdirectory of `dir`) in front of the backend.
/// `bin` is the executable (a meridian binary for [`Kind::Meridian`]).
pub fn start(
    kind: Kind,
    name: &str,
    bin: &Path,
    dir: &Path,
    backend_port: u16,
    routes: Routes,
    tls: Option<&Tls>,
) -> anyhow::Result<Proxy> {
    let d = dir.join(name);
    std::fs::create_dir_all(&d)?;
    let port = sys::free_port()?;
    let log = d.join("stderr.log");
    let mut cmd = Command::new(bin);
    match kind {
        Kind::Meridian => {
            let snap = d.join("snapshot.json");
            sys::write(
                &snap,
                &meridian_snapshot(port, backend_port, routes, tls)?.to_string(),
            )?;
            let admin = sys::free_port()?;
            cmd.arg("proxy")
                .arg("--snapshot")
                .arg(&snap)
                .args(["--admin", &format!("127.0.0.1:{admin}")])
                .env("TOKIO_WORKER_THREADS", "1")
                .env("MERIDIAN_LOG", "warn");
            // One worker either way: `--workers 1` measured cheaper per request than the
            // multi-thread runtime with one thread (docs/benchmarks.md, "Worker model").
            if has_workers_flag(bin) {
                cmd.args(["--workers", "1"]);
            }
        }
        Kind::Nginx => {
            let conf = d.join("nginx.conf");
            sys::write(&conf, &nginx_conf(&d, port, backend_port, routes, tls))?;
            cmd.arg("-c").arg(&conf).arg("-p").arg(&d);
        }
        Kind::Haproxy => {
            let conf = d.join("haproxy.cfg");
            sys::write(&conf, &haproxy_conf(&d, port, backend_port, routes, tls)?)?;
            cmd.arg("-f").arg(&conf).arg("-db");
        }
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(log_file(&log)?)
        .spawn()
        .with_context(|| format!("starting {name} ({})", bin.display()))?;
    let proxy = Proxy {
        name: name.to_string(),
        kind,
        port,
        pid: child.id(),
        tls: tls.is_some(),
        _guard: Guard(child),
    };
    match (tls, routes) {
        (Some(_), _) => sys::wait_tcp(port, name, &log)?,
        (None, Routes::CatchAll) => sys::wait_http(port, "bench", name, &log)?,
        (None, Routes::Hosts(_)) => sys::wait_http(port, &host(0), name, &log)?,
    }
    Ok(proxy)
}

fn meridian_snapshot(
    port: u16,
    backend_port: u16,
    routes: Routes,
    tls: Option<&Tls>,
) -> anyhow::Result<serde_json::Value> {
    let rule = |i: usize| {
        serde_json::json!({"backends": [{"name": format!("bench/svc-{i}:80"),
            "target": {"type": "endpoints",
                "endpoints": [{"address": "127.0.0.1", "port": backend_port}]}}]})
    };
    let routes: Vec<serde_json::Value> = match routes {
        Routes::CatchAll => vec![serde_json::json!({
            "namespace": "bench", "name": "r", "rules": [rule(0)]})],
        Routes::Hosts(n) => (0..n)
            .map(|i| {
                serde_json::json!({"namespace": "bench", "name": format!("r{i}"),
                    "hostnames": [host(i)], "rules": [rule(i)]})
            })
            .collect(),
    };
    let mut listener = serde_json::json!({
        "name": "l", "address": "127.0.0.1", "port": port,
        "protocol": if tls.is_some() { "HTTPS" } else { "HTTP" },
        "routes": routes});
    if let Some(t) = tls {
        listener["tls"] = serde_json::json!({"certificates": [{
            "certPem": std::fs::read_to_string(&t.cert)?,
            "keyPem": std::fs::read_to_string(&t.key)?}]});
    }
    Ok(serde_json::json!({
        "schema": meridian_model::snapshot::SNAPSHOT_SCHEMA,
        "generation": 1,
        "gateways": [{"namespace": "bench", "name": "gw", "listeners": [listener]}]
    }))
}

fn nginx_conf(d: &Path, port: u16, backend_port: u16, routes: Routes, tls: Option<&Tls>) -> String {
    let d = d.display();
    let listen = match tls {
        Some(t) => format!(
            "listen 127.0.0.1:{port} ssl; ssl_protocols TLSv1.2 TLSv1.3; \
             ssl_certificate {}; ssl_certificate_key {};",
            t.cert.display(),
            t.key.display()
        ),
        None => format!("listen 127.0.0.1:{port};"),
    };
    let location = |up: &str| {
        format!(
            "location / {{ proxy_pass http://{up}; proxy_http_version 1.1; \
             proxy_set_header Connection \"\"; }}"
        )
    };
    let mut servers = String::new();
    match routes {
        Routes::CatchAll => {
            servers.push_str(&format!(
                " upstream b {{ server 127.0.0.1:{backend_port}; keepalive 64; }}\n \
                 server {{ {listen} {} }}\n",
                location("b")
            ));
        }
        Routes::Hosts(n) => {
            servers.push_str(
                " server_names_hash_max_size 65536;\n server_names_hash_bucket_size 128;\n",
            );
            for i in 0..n {
                servers.push_str(&format!(
                    " upstream u{i} {{ server 127.0.0.1:{backend_port}; keepalive 8; }}\n \
                     server {{ {listen} server_name {}; {} }}\n",
                    host(i),
                    location(&format!("u{i}"))
                ));
            }
        }
    }
    format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d};\n proxy_temp_path {d};\n{servers}}}\n"
    )
}

fn haproxy_conf(
    d: &Path,
    port: u16,
    backend_port: u16,
    routes: Routes,
    tls: Option<&Tls>,
) -> anyhow::Result<String> {
    let bind = match tls {
        Some(t) => format!("bind 127.0.0.1:{port} ssl crt {}", t.combined.display()),
        None => format!("bind 127.0.0.1:{port}"),
    };
    let backend = |name: &str| {
        format!("backend {name}\n http-reuse always\n server s1 127.0.0.1:{backend_port}\n\n")
    };
    let mut text = format!(
        "global\n nbthread 1\n maxconn 4000\n\ndefaults\n mode http\n timeout connect 5s\n\
         timeout client 30s\n timeout server 30s\n option http-keep-alive\n\n\
         frontend f\n {bind}\n"
    );
    match routes {
        Routes::CatchAll => {
            text.push_str(" default_backend b\n\n");
            text.push_str(&backend("b"));
        }
        Routes::Hosts(n) => {
            // A map from Host to backend name: haproxy's usual shape for many virtual hosts.
            let map = d.join("hosts.map");
            let lines: String = (0..n).map(|i| format!("{} u{i}\n", host(i))).collect();
            sys::write(&map, &lines)?;
            text.push_str(&format!(
                " use_backend %[req.hdr(host),lower,map({})]\n\n",
                map.display()
            ));
            for i in 0..n {
                text.push_str(&backend(&format!("u{i}")));
            }
        }
    }
    Ok(text)
}
