//! A minimal Kubernetes API client for the scale runner: JSON over plain HTTP/1.1 keep-alive
//! connections to the local API (`meridian sandbox` serves `http://127.0.0.1:PORT` without
//! credentials), one connection per writer thread.
//!
//! Raw HTTP rather than kube-rs: the runner drives processes of any meridian binary (`--compare`)
//! and needs nothing but create, merge-patch, get and list, from plain threads.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

/// Longest wait for one answer: a write is answered in milliseconds, a list of 50k objects in
/// seconds.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Header lines read at most per answer.
const MAX_HEADERS: usize = 100;

/// Largest answer body read (a list of 50k routes in three clusters is far below).
const MAX_BODY: usize = 1 << 30;

/// One keep-alive connection to an API server (or any plain HTTP/1.1 server on loopback),
/// reopened when the server closed it.
pub struct Conn {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
}

/// An answer: status code and body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    /// 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "answer {} is not JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body[..self.body.len().min(200)])
            )
        })
    }

    /// The body for an error message (its start).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body[..self.body.len().min(300)]).into_owned()
    }
}

impl Conn {
    /// A connection to `url` (`http://127.0.0.1:PORT`; opened on first use).
    pub fn new(url: &str) -> anyhow::Result<Conn> {
        let hostport = url
            .strip_prefix("http://")
            .with_context(|| format!("{url}: only plain http:// URLs are supported"))?
            .trim_end_matches('/');
        let addr: SocketAddr = hostport
            .parse()
            .with_context(|| format!("{url}: expected http://IP:PORT"))?;
        Ok(Conn { addr, stream: None })
    }

    /// A connection to `127.0.0.1:port`.
    pub fn local(port: u16) -> Conn {
        Conn {
            addr: crate::sys::loopback(port),
            stream: None,
        }
    }

    /// Sends one request and reads its answer. A request on a reused connection that the
    /// server had closed is sent once more on a new one.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> anyhow::Result<Answer> {
        self.request_to(None, method, path, content_type, body)
    }

    /// [`Conn::request`] with a `Host` header of our choice (`None`: the address).
    fn request_to(
        &mut self,
        host: Option<&str>,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> anyhow::Result<Answer> {
        let reused = self.stream.is_some();
        match self.try_request(host, method, path, content_type, body) {
            Ok(a) => Ok(a),
            Err(_) if reused => {
                self.stream = None;
                self.try_request(host, method, path, content_type, body)
            }
            Err(e) => Err(e),
        }
    }

    fn try_request(
        &mut self,
        host: Option<&str>,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> anyhow::Result<Answer> {
        let host = host.map_or_else(|| self.addr.to_string(), str::to_string);
        let stream = match &mut self.stream {
            Some(s) => s,
            None => {
                let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
                    .with_context(|| format!("connecting to {}", self.addr))?;
                s.set_read_timeout(Some(READ_TIMEOUT))?;
                s.set_nodelay(true)?;
                self.stream.insert(BufReader::new(s))
            }
        };
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n");
        if !body.is_empty() {
            head.push_str(&format!(
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let mut out = Vec::with_capacity(head.len() + body.len());
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(body);
        let result = stream
            .get_mut()
            .write_all(&out)
            .context("sending")
            .and_then(|()| read_answer(stream));
        match result {
            Ok((answer, keep)) => {
                if !keep {
                    self.stream = None;
                }
                Ok(answer)
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }

    /// `GET path`.
    pub fn get(&mut self, path: &str) -> anyhow::Result<Answer> {
        self.request("GET", path, "", &[])
    }

    /// `GET path` with `Host: host` (a request to a proxy for one route).
    pub fn get_with_host(&mut self, path: &str, host: &str) -> anyhow::Result<Answer> {
        self.request_to(Some(host), "GET", path, "", &[])
    }

    /// `POST` of a JSON object.
    pub fn create(&mut self, path: &str, obj: &Value) -> anyhow::Result<Answer> {
        self.request("POST", path, "application/json", obj.to_string().as_bytes())
    }

    /// `PATCH` with a JSON merge patch.
    pub fn merge_patch(&mut self, path: &str, patch: &Value) -> anyhow::Result<Answer> {
        self.request(
            "PATCH",
            path,
            "application/merge-patch+json",
            patch.to_string().as_bytes(),
        )
    }

    /// `POST` of a JSON object; an existing object (409 AlreadyExists) is fine, anything else
    /// but 2xx is an error.
    pub fn ensure(&mut self, path: &str, obj: &Value) -> anyhow::Result<()> {
        let a = self.create(path, obj)?;
        if a.ok() || a.status == 409 {
            return Ok(());
        }
        bail!("POST {path}: {} {}", a.status, a.text())
    }
}

/// Reads one answer (Content-Length or chunked framing); also whether the connection stays open.
fn read_answer(r: &mut BufReader<TcpStream>) -> anyhow::Result<(Answer, bool)> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        bail!("connection closed before the answer");
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP status line: {line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    let mut keep = true;
    for _ in 0..MAX_HEADERS {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            bail!("connection closed inside the answer's headers");
        }
        let l = line.trim_end();
        if l.is_empty() {
            let body = if chunked {
                read_chunked(r)?
            } else if let Some(n) = length {
                if n > MAX_BODY {
                    bail!("answer body of {n} bytes");
                }
                let mut body = vec![0u8; n];
                r.read_exact(&mut body)?;
                body
            } else {
                // Neither framing: the body runs until the server closes.
                let mut body = Vec::new();
                r.take(MAX_BODY as u64).read_to_end(&mut body)?;
                keep = false;
                body
            };
            return Ok((Answer { status, body }, keep));
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            match k.as_str() {
                "content-length" => length = Some(v.parse::<usize>().context("Content-Length")?),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "connection" => keep = v != "close",
                _ => {}
            }
        }
    }
    bail!("more than {MAX_HEADERS} header lines")
}

fn read_chunked(r: &mut BufReader<TcpStream>) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    // Bounded by MAX_BODY: every pass consumes one chunk, the last one is empty.
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .with_context(|| format!("bad chunk size {line:?}"))?;
        if size == 0 {
            // Trailers (none expected) end with an empty line.
            for _ in 0..MAX_HEADERS {
                line.clear();
                if r.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                    return Ok(body);
                }
            }
            bail!("too many trailer lines");
        }
        let start = body.len();
        if start + size > MAX_BODY {
            bail!("answer body larger than {MAX_BODY} bytes");
        }
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)?;
    }
}
