#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]
//! Real proxies following a controller, a raw HTTP/1.1 client and a bounded load loop: shared by
//! tests/members_live.rs and tests/leader_failover.rs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use meridian_distribution::{Client as DistClient, ClientConfig, Hello};
use meridian_model::locality::Locality;
use meridian_proxy::{AdminAuth, ProxyConfig, ProxyHandle};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// A running proxy of `cluster` following the controller at `url`, advertising 127.0.0.1.
pub struct LiveProxy {
    pub handle: Arc<ProxyHandle>,
    pub task: tokio::task::JoinHandle<()>,
}

impl LiveProxy {
    pub async fn start(cluster: &str, region: &str, url: &str) -> LiveProxy {
        let handle = Arc::new(
            ProxyHandle::start(ProxyConfig {
                admin: None,
                admin_auth: AdminAuth::None,
                locality: Locality {
                    cluster: cluster.into(),
                    region: region.into(),
                    zone: format!("{cluster}-a"),
                },
                east_west: None,
            })
            .await
            .unwrap(),
        );
        let mut cfg = ClientConfig::new(
            url,
            None,
            Hello {
                proxy_id: format!("{cluster}-proxy"),
                cluster: cluster.into(),
                region: region.into(),
                zone: format!("{cluster}-a"),
                gateways: None,
                address: Some("127.0.0.1".into()),
                east_west: None,
            },
        );
        cfg.backoff_max = Duration::from_secs(1);
        let client = DistClient::new(cfg).unwrap();
        let h = handle.clone();
        let task = tokio::spawn(async move {
            meridian_proxy::follow_controller(&h, &client).await;
        });
        LiveProxy { handle, task }
    }
}

impl Drop for LiveProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Gateway of class `class` with one HTTP listener on `port`.
pub fn gateway_on(ns: &str, name: &str, class: &str, port: u16) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"gatewayClassName": class, "listeners": [
            {"name": "http", "port": port, "protocol": "HTTP",
             "allowedRoutes": {"namespaces": {"from": "All"}}}]}})
}

/// An EndpointSlice of `service` with one ready endpoint `addr`.
pub fn slice_to(ns: &str, name: &str, service: &str, addr: SocketAddr, zone: &str) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [addr.ip().to_string()], "conditions": {"ready": true},
                       "zone": zone}],
        "ports": [{"name": "http", "port": addr.port(), "protocol": "TCP"}]})
}

/// One `GET /` with `Host: echo.example.com` to `127.0.0.1:port`: the answering echo's name on
/// a 200, else what went wrong.
pub async fn get(port: u16) -> Result<String, String> {
    let io = async {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: echo.example.com\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok::<_, String>(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| "timed out".to_string())??;
    let status = text.split(' ').nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!(
            "status {status}: {}",
            text.lines().next().unwrap_or("")
        ));
    }
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: Value = serde_json::from_str(body).map_err(|e| format!("body {body:?}: {e}"))?;
    Ok(v["name"].as_str().unwrap_or("").to_string())
}

/// Requests sent to each port in turn every `pause` until stopped (at most `max` rounds), with
/// the failures recorded.
pub struct Load {
    pub ok: Arc<AtomicU64>,
    pub failures: Arc<std::sync::Mutex<Vec<(u16, String)>>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    pub fn start(ports: Vec<u16>, pause: Duration, max: u64) -> Load {
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop, mut stop_rx) = watch::channel(false);
        let (ok2, failures2) = (ok.clone(), failures.clone());
        let task = tokio::spawn(async move {
            for _ in 0..max {
                for port in &ports {
                    match get(*port).await {
                        Ok(_) => {
                            ok2.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures2.lock().unwrap().push((*port, e)),
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop_rx.wait_for(|s| *s) => return,
                }
            }
        });
        Load {
            ok,
            failures,
            stop,
            task,
        }
    }

    /// Stops the loop; returns (successful requests, failures).
    pub async fn finish(self) -> (u64, Vec<(u16, String)>) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        let f = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), f)
    }
}
