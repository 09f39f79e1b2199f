//! What the distribution tests share about identity: one mesh CA per test process, certificate
//! stores for proxies, and a small HTTPS client that presents a chosen certificate (or none) to
//! the server, for tests that speak the protocol by hand.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_openssl::client::legacy::HttpsConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use meridian_distribution::pki::{
    Ca, CertStore, Credentials, Peer, ProxyIdentity, TrustBundle, TrustDomain, client_connector,
};
use meridian_distribution::{Hello, ServerConfig};

/// The mesh CA of this test process.
pub fn ca() -> Arc<Ca> {
    static CA: OnceLock<Arc<Ca>> = OnceLock::new();
    CA.get_or_init(|| {
        Arc::new(Ca::generate(&TrustDomain::default(), Duration::from_secs(24 * 3600)).unwrap())
    })
    .clone()
}

/// Another mesh (same trust domain name, another key).
pub fn other_ca() -> Arc<Ca> {
    Arc::new(Ca::generate(&TrustDomain::default(), Duration::from_secs(3600)).unwrap())
}

/// A server config on `addr` with this process's CA.
pub fn server_config(addr: SocketAddr) -> ServerConfig {
    ServerConfig::new(addr, ca())
}

/// The identity a hello names.
pub fn identity_of(h: &Hello) -> ProxyIdentity {
    ProxyIdentity::new(&h.cluster, &h.region, &h.zone, &h.proxy_id).unwrap()
}

/// A certificate store for the proxy saying `h`, issued by this process's CA.
pub fn store_for(h: &Hello) -> Arc<CertStore> {
    Arc::new(CertStore::issued(&ca(), &identity_of(h), Duration::from_secs(3600)).unwrap())
}

/// An HTTPS client to the distribution server.
pub struct Https {
    client: HttpClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Https {
    /// Trusting `bundle`, presenting `creds` when given.
    pub fn new(bundle: &TrustBundle, creds: Option<&Credentials>) -> Https {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let tls = client_connector(creds, bundle, Peer::Controller).unwrap();
        let connector = HttpsConnector::with_connector(http, tls).unwrap();
        Https {
            client: HttpClient::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// As the proxy saying `h` (a certificate of this process's CA for it).
    pub fn proxy(h: &Hello) -> Https {
        let store = store_for(h);
        Https::new(&store.bundle(), store.credentials().as_deref())
    }

    /// Without a client certificate.
    pub fn anonymous() -> Https {
        Https::new(&ca().bundle(), None)
    }

    /// `POST url` with `body`.
    pub async fn post(&self, url: impl AsRef<str>, body: impl Into<Bytes>) -> Resp {
        self.post_with(url, body, &[]).await
    }

    /// `POST url` with `body` and extra headers.
    pub async fn post_with(
        &self,
        url: impl AsRef<str>,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut b = Request::post(url.as_ref()).header("content-type", "application/json");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b.body(Full::new(body.into())).unwrap()).await
    }

    /// `GET url`.
    pub async fn get(&self, url: impl AsRef<str>) -> Resp {
        self.send(
            Request::get(url.as_ref())
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
    }

    /// Any request; panics when it cannot be sent (use `try_send` to see why).
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Resp {
        self.try_send(req).await.unwrap()
    }

    /// Any request.
    pub async fn try_send(&self, req: Request<Full<Bytes>>) -> Result<Resp, String> {
        tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .map_err(|_| "no answer within 10 s".to_string())?
            .map(|inner| Resp { inner })
            .map_err(|e| meridian_model::error_chain(&e))
    }
}

/// An answer, with the parts of reqwest's API the tests use.
pub struct Resp {
    inner: Response<Incoming>,
}

impl Resp {
    /// Status code.
    pub fn status(&self) -> StatusCode {
        self.inner.status()
    }

    /// Headers.
    pub fn headers(&self) -> &HeaderMap {
        self.inner.headers()
    }

    /// The next data chunk of the body (`None` at its end).
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, String> {
        loop {
            match self.inner.body_mut().frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// The whole body as text.
    pub async fn text(self) -> String {
        let b = tokio::time::timeout(Duration::from_secs(10), self.inner.into_body().collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        String::from_utf8_lossy(&b).to_string()
    }
}

/// The value of one sample in Prometheus text, e.g. `name{label="x"}`.
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

/// One TLS connection accepted by a fake controller.
pub type Tls = tokio_openssl::SslStream<tokio::net::TcpStream>;

/// A listener for a scripted fake controller speaking TLS with a controller certificate of this
/// process's CA: the listener, its `https://` URL, and the acceptor for [`accept_tls`].
pub async fn fake_controller_listener() -> (
    tokio::net::TcpListener,
    String,
    Arc<openssl::ssl::SslAcceptor>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let ca = ca();
    let creds = ca
        .issue_server(
            &Peer::Controller,
            &["localhost".into()],
            &["127.0.0.1".parse().unwrap()],
            Duration::from_secs(3600),
        )
        .unwrap();
    let acceptor = meridian_distribution::pki::server_acceptor(
        &creds,
        &ca.bundle(),
        meridian_distribution::pki::ClientCerts::Optional,
    )
    .unwrap();
    (listener, url, Arc::new(acceptor))
}

/// The TLS handshake of a fake controller's connection.
pub async fn accept_tls(acceptor: &openssl::ssl::SslAcceptor, tcp: tokio::net::TcpStream) -> Tls {
    let ssl = openssl::ssl::Ssl::new(acceptor.context()).unwrap();
    let mut s = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
    std::pin::Pin::new(&mut s).accept().await.unwrap();
    s
}

/// A raw TLS connection to the server at `addr` as the proxy saying `h` (for tests that write
/// HTTP by hand).
pub async fn connect_as(addr: SocketAddr, h: &Hello) -> Tls {
    let store = store_for(h);
    let creds = store.credentials();
    let connector = client_connector(creds.as_deref(), &store.bundle(), Peer::Controller)
        .unwrap()
        .build();
    let ssl = connector
        .configure()
        .unwrap()
        .into_ssl(&addr.ip().to_string())
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut s = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
    std::pin::Pin::new(&mut s).connect().await.unwrap();
    s
}
