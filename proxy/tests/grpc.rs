//! GRPCRoute end to end: a real gRPC client (tonic, h2c with prior knowledge) through the proxy
//! to real gRPC servers (tonic's server machinery on hyper's HTTP/2) in two regions, with the
//! snapshot a GRPCRoute translates to (method conditions as `POST` + path, `Match::grpc` set).
//!
//! * unary and server-streaming calls are served by the proxy's own region (us-east);
//! * the backend is declared HTTP/1 in the snapshot (a Service without `appProtocol`): the
//!   gRPC rule still reaches it over h2c;
//! * a call no rule matches ends `UNIMPLEMENTED` (HTTP 404 from the proxy);
//! * us-east dies: a server-streaming call in flight there ends with an error the client sees
//!   (bounded wait, no hang), new calls fail over to us-west (how many failed on the way is
//!   printed and bounded);
//! * both regions dead: calls end `UNAVAILABLE` with the proxy's message (a trailers-only
//!   response, not an HTTP 503).
//!
//! Messages are raw bytes (a codec of our own): no protoc, no generated code.
#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use futures::{Stream, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meridian_model::locality::Locality;
use meridian_proxy::{AdminAuth, ProxyConfig, ProxyHandle};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Code, Request, Response, Status};

use common::{TEST_TIMEOUT, WAIT};

/// Messages are their bytes.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

// --- the server ---------------------------------------------------------------------------------

/// `demo.Echo/Say` answers `<region>:<request>`; `demo.Echo/Count` streams `<region>:<i>` for
/// i in 0..n (n = the request's first byte), 20 ms apart.
#[derive(Clone)]
struct Echo {
    region: Arc<str>,
}

struct Say(Arc<str>);

impl tonic::server::UnaryService<Vec<u8>> for Say {
    type Response = Vec<u8>;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Vec<u8>>, Status>> + Send>>;
    fn call(&mut self, request: Request<Vec<u8>>) -> Self::Future {
        let mut out = format!("{}:", self.0).into_bytes();
        out.extend_from_slice(request.get_ref());
        Box::pin(async move { Ok(Response::new(out)) })
    }
}

struct Count(Arc<str>);

type Messages = Pin<Box<dyn Stream<Item = Result<Vec<u8>, Status>> + Send>>;

impl tonic::server::ServerStreamingService<Vec<u8>> for Count {
    type Response = Vec<u8>;
    type ResponseStream = Messages;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Messages>, Status>> + Send>>;
    fn call(&mut self, request: Request<Vec<u8>>) -> Self::Future {
        let n = request.get_ref().first().copied().unwrap_or(0);
        let region = self.0.clone();
        let stream = futures::stream::iter(0..n).then(move |i| {
            let region = region.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(format!("{region}:{i}").into_bytes())
            }
        });
        Box::pin(async move { Ok(Response::new(Box::pin(stream) as Messages)) })
    }
}

impl Echo {
    async fn call(
        self,
        req: tonic::codegen::http::Request<tonic::body::Body>,
    ) -> Result<tonic::codegen::http::Response<tonic::body::Body>, Infallible> {
        let mut grpc = tonic::server::Grpc::new(Raw);
        Ok(match req.uri().path() {
            "/demo.Echo/Say" => grpc.unary(Say(self.region.clone()), req).await,
            "/demo.Echo/Count" => grpc.server_streaming(Count(self.region.clone()), req).await,
            _ => Status::unimplemented("no such method").into_http(),
        })
    }
}

/// A gRPC server in one region that can be killed hard (listener and every connection gone).
struct Server {
    region: &'static str,
    addr: SocketAddr,
    /// Tells the server task to stop, and its handle (it ends once every connection is closed).
    tasks: Mutex<Option<Running>>,
}

/// A running server's stop signal and task.
type Running = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
);

impl Server {
    async fn start(region: &'static str) -> Arc<Server> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = Echo {
            region: region.into(),
        };
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = &mut stopped => break,
                };
                let Ok((stream, _)) = accepted else {
                    break;
                };
                let echo = echo.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            echo.clone().call(req.map(tonic::body::Body::new))
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            // Killed: the listener goes, and every connection is aborted and gone before the
            // task ends (so a call after `kill` returns cannot reach this server).
            drop(listener);
            conns.shutdown().await;
        });
        Arc::new(Server {
            region,
            addr,
            tasks: Mutex::new(Some((stop, task))),
        })
    }

    async fn kill(&self) {
        let taken = self.tasks.lock().unwrap().take();
        if let Some((stop, task)) = taken {
            let _ = stop.send(());
            task.await.unwrap();
        }
    }

    fn endpoint(&self) -> Value {
        json!({"address": "127.0.0.1", "port": self.addr.port(),
               "cluster": self.region, "region": self.region, "zone": format!("{}-a", self.region)})
    }
}

// --- the proxy and the client -------------------------------------------------------------------

/// A GRPCRoute match as the controller writes it: exact service and method.
fn grpc_match(service: &str, method: &str) -> Value {
    json!({"path": {"type": "exact", "value": format!("/{service}/{method}")},
           "method": "POST",
           "grpc": {"type": "exact", "service": service, "method": method}})
}

async fn proxy_for(servers: &[&Arc<Server>]) -> (ProxyHandle, u16) {
    let proxy = ProxyHandle::start(ProxyConfig {
        admin: Some("127.0.0.1:0".parse().unwrap()),
        admin_auth: AdminAuth::None,
        workers: common::workers(),
        locality: Locality {
            cluster: "us-east".into(),
            region: "us-east".into(),
            zone: "us-east-a".into(),
        },
        east_west: None,
        ..Default::default()
    })
    .await
    .unwrap();
    let port = common::free_port();
    // Declared HTTP/1 (no appProtocol): the gRPC rule speaks h2c to it anyway.
    let backend = json!({"name": "demo/echo:9000 (ServiceImport)", "weight": 1,
        "target": {"type": "endpoints", "protocol": "http1",
                   "endpoints": servers.iter().map(|s| s.endpoint()).collect::<Vec<_>>()}});
    let listener = json!({
        "name": "http", "address": "127.0.0.1", "port": port, "protocol": "HTTP",
        "routes": [{"namespace": "demo", "name": "echo", "kind": "GRPCRoute", "rules": [{
            "matches": [grpc_match("demo.Echo", "Say"), grpc_match("demo.Echo", "Count")],
            "backends": [backend],
        }]}],
    });
    proxy
        .apply(common::snapshot(1, vec![listener]))
        .await
        .unwrap();
    (proxy, port)
}

async fn client(port: u16) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(WAIT)
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

async fn say(
    c: &mut tonic::client::Grpc<tonic::transport::Channel>,
    msg: &str,
) -> Result<String, Status> {
    c.ready()
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    let r = c
        .unary(
            Request::new(msg.as_bytes().to_vec()),
            PathAndQuery::from_static("/demo.Echo/Say"),
            Raw,
        )
        .await?;
    Ok(String::from_utf8_lossy(r.get_ref()).into_owned())
}

async fn count(
    c: &mut tonic::client::Grpc<tonic::transport::Channel>,
    n: u8,
) -> Result<tonic::codec::Streaming<Vec<u8>>, Status> {
    c.ready()
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    let r = c
        .server_streaming(
            Request::new(vec![n]),
            PathAndQuery::from_static("/demo.Echo/Count"),
            Raw,
        )
        .await?;
    Ok(r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_streaming_calls_fail_over_between_regions() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let east = Server::start("us-east").await;
        let west = Server::start("us-west").await;
        let (_proxy, port) = proxy_for(&[&east, &west]).await;
        let mut c = client(port).await;

        // Unary and server-streaming, served by the proxy's own region.
        assert_eq!(say(&mut c, "hello").await.unwrap(), "us-east:hello");
        let got: Vec<String> = count(&mut c, 5)
            .await
            .unwrap()
            .map(|m| String::from_utf8(m.unwrap()).unwrap())
            .collect()
            .await;
        assert_eq!(
            got,
            (0..5).map(|i| format!("us-east:{i}")).collect::<Vec<_>>()
        );

        // A method no rule matches: the proxy's 404, which gRPC clients read as UNIMPLEMENTED.
        c.ready().await.unwrap();
        let err = c
            .unary(
                Request::new(b"x".to_vec()),
                PathAndQuery::from_static("/demo.Echo/Nope"),
                Raw,
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented, "{err:?}");

        // A long stream in us-east, then us-east dies under it.
        let mut stream = count(&mut c, 200).await.unwrap();
        let first = stream.message().await.unwrap().unwrap();
        assert_eq!(String::from_utf8(first).unwrap(), "us-east:0");
        east.kill().await;
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            let mut after = 0;
            loop {
                match stream.message().await {
                    Ok(Some(_)) => after += 1,
                    Ok(None) => return Ok(after),
                    Err(status) => return Err((after, status)),
                }
            }
        })
        .await
        .expect("the stream on the dead region must end, not hang");
        let (after, status) = ended.expect_err("the stream must end in an error, not cleanly");
        assert!(after < 199, "the stream went on after the kill: {after}");
        println!("stream on the dead region: {after} messages after the kill, then {status:?}");

        // New calls go to us-west; a few may fail while the proxy learns us-east is gone.
        let started = Instant::now();
        let mut failed = 0;
        let mut west_in_a_row = 0;
        for _ in 0..200 {
            match say(&mut c, "again").await {
                Ok(body) if body == "us-west:again" => west_in_a_row += 1,
                Ok(body) => panic!("answered by {body} after us-east died"),
                Err(status) => {
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    failed += 1;
                    west_in_a_row = 0;
                }
            }
            if west_in_a_row == 20 {
                break;
            }
        }
        assert_eq!(west_in_a_row, 20, "calls did not settle on us-west");
        assert!(failed <= 3, "{failed} calls failed while failing over");
        println!(
            "failover to us-west: {failed} failed calls, settled in {} ms",
            started.elapsed().as_millis()
        );
        let got: Vec<String> = count(&mut c, 3)
            .await
            .unwrap()
            .map(|m| String::from_utf8(m.unwrap()).unwrap())
            .collect()
            .await;
        assert_eq!(got, ["us-west:0", "us-west:1", "us-west:2"]);

        // Nowhere left: UNAVAILABLE with the proxy's reason, in a trailers-only response.
        west.kill().await;
        let status = {
            let mut last = None;
            for _ in 0..20 {
                match say(&mut c, "none").await {
                    Err(s) if s.message() == "no backend endpoint is available" => {
                        last = Some(s);
                        break;
                    }
                    Err(s) => last = Some(s),
                    Ok(body) => panic!("answered by {body} with every region dead"),
                }
            }
            last.unwrap()
        };
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(status.message(), "no backend endpoint is available");
    })
    .await
    .expect("test timed out");
}
