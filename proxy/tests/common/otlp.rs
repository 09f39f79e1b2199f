//! An OTLP/HTTP trace receiver on loopback for the proxy's trace tests (observe.rs, hedge.rs).
#![allow(clippy::unwrap_used, dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

pub type Received = Arc<Mutex<Vec<Span>>>;

/// An OTLP/HTTP receiver on loopback: every `POST /v1/traces` body is decoded as an
/// `ExportTraceServiceRequest` and its spans kept.
pub async fn otlp_receiver() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spans: Received = Default::default();
    let kept = spans.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let kept = kept.clone();
                    async move {
                        let path_ok = req.uri().path() == "/v1/traces";
                        let content_type = req
                            .headers()
                            .get("content-type")
                            .map(|v| v.as_bytes().to_vec());
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let decoded = ExportTraceServiceRequest::decode(body);
                        let status = match (path_ok, content_type.as_deref(), decoded) {
                            (true, Some(b"application/x-protobuf"), Ok(export)) => {
                                let mut k = kept.lock().unwrap();
                                for rs in export.resource_spans {
                                    for ss in rs.scope_spans {
                                        k.extend(ss.spans);
                                    }
                                }
                                200
                            }
                            _ => 400,
                        };
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, spans)
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn attribute<'a>(
    span: &'a Span,
    key: &str,
) -> Option<&'a opentelemetry_proto::tonic::common::v1::any_value::Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}
