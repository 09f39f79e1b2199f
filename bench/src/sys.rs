//! Process plumbing shared by the benchmarks: finding tools (never installing them), free ports,
//! readiness checks, and what `/proc` says about a process tree (CPU ticks, RSS, PSS).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Stops its child on drop so an early error never leaks a server. SIGTERM first: nginx's master
/// only takes its workers down on a catchable signal; SIGKILL after 3 s.
pub struct Guard(pub Child);

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

/// The path of `tool`, or an error naming the Debian package that provides it.
pub fn need(tool: &str, package: &str) -> anyhow::Result<PathBuf> {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("`{tool}` is not installed: install it with `apt-get install -y {package}`")
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Sends `GET /` with `Host: host` on an open keep-alive connection and reads the whole answer.
/// Returns the status code.
pub fn http_get(stream: &mut TcpStream, host: &str) -> anyhow::Result<u16> {
    stream.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())?;
    read_response(stream)
}

/// Reads one HTTP/1.1 response (Content-Length or chunked framing) and returns its status.
fn read_response(stream: &mut TcpStream) -> anyhow::Result<u16> {
    let mut r = BufReader::new(&*stream);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP status line: {line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            bail!("connection closed inside the response headers");
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            if k == "content-length" {
                length = Some(v.trim().parse::<usize>().context("bad Content-Length")?);
            } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            }
        }
    }
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .context("bad chunk size")?;
            let mut skip = vec![0u8; size + 2];
            r.read_exact(&mut skip)?;
            if size == 0 {
                break;
            }
        }
    } else if let Some(n) = length {
        let mut body = vec![0u8; n];
        r.read_exact(&mut body)?;
    } else {
        bail!("response without Content-Length or chunked framing");
    }
    // BufReader may only over-read if the peer pipelined, which HTTP/1.1 servers do not do
    // unprompted; a leftover would corrupt the next response, so refuse it.
    if !r.buffer().is_empty() {
        bail!("bytes after the response");
    }
    Ok(status)
}

/// Waits until `GET /` with `Host: host` answers 200 on the port (plain HTTP).
pub fn wait_http(port: u16, host: &str, what: &str, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        match TcpStream::connect(loopback(port)) {
            Ok(mut s) => {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                match http_get(&mut s, host) {
                    Ok(200) => return Ok(()),
                    Ok(code) => last = format!("answered {code}"),
                    Err(e) => last = e.to_string(),
                }
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "{what} on port {port} did not answer 200 within 30 s (last: {last}); its log:\n{}",
        tail(log)
    )
}

/// Waits until the port accepts TCP connections (for TLS listeners).
pub fn wait_tcp(port: u16, what: &str, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(loopback(port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "{what} on port {port} did not listen within 30 s; its log:\n{}",
        tail(log)
    )
}

/// The last lines of a log file, for error messages.
pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Direct children of `pid` (nginx's workers under its master).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| stat_fields(p).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(pid))
        .collect()
}

/// The fields of `/proc/PID/stat` after `(comm)`: index 0 is the state, 1 the parent pid.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// User + system CPU clock ticks (1/100 s) of one process, all its threads.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let f = stat_fields(pid)?;
    // utime and stime are fields 14 and 15 of the whole line.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU ticks of a process and its direct children: nginx does its work in worker processes,
/// so sampling only the master would miss it.
pub fn cpu_ticks_tree(pid: u32) -> Option<u64> {
    let own = cpu_ticks(pid)?;
    Some(own + children(pid).into_iter().filter_map(cpu_ticks).sum::<u64>())
}

fn status_kib(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Resident set size of one process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// Proportional set size in KiB: pages shared with other processes (nginx's master and
/// worker share their configuration copy-on-write) are split between them, so the sum over
/// a process tree counts every page once.
pub fn pss_kib(pid: u32) -> Option<u64> {
    status_kib(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

/// PSS summed over a process and its direct children.
pub fn pss_tree_kib(pid: u32) -> Option<u64> {
    let own = pss_kib(pid)?;
    Some(own + children(pid).into_iter().filter_map(pss_kib).sum::<u64>())
}

/// `/proc/loadavg`'s first three fields, for the report.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

pub fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
