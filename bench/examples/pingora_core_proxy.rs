//! The framework floor of the lean request path (docs/benchmarks.md, "Lean path: per-request cost
//! cuts (session 7)"): a bare fixed-peer HTTP/1 proxy built the way proxy/src/lean/ is built, with
//! none of Meridian's own per-request work, for CPU-per-request comparisons only.
//!
//! ```text
//! one current-thread runtime ─ accept ─ task per connection:
//!   loop: pingora-core ServerSession::new_http1 ─ read_request ─ clone the head
//!     ─ upstream (keep-alive): pingora's Connector pool (`pingora`, the lean path on main)
//!                              or TransportConnector + a plain list (`own`, like lean/pool.rs)
//!     ─ write head ─ request body up ─ response tasks down (head + first chunk in one send)
//!     ─ upstream back to the pool ─ session.finish() ─ the stream for the next request
//! ```
//!
//! No routing, no filters, no forwarding headers, no counters, no timeouts.
//!
//! `cargo build --release -p meridian-bench --example pingora_core_proxy`, then
//! `pingora_core_proxy LISTEN BACKEND [pingora|own]` (e.g. `127.0.0.1:18081 127.0.0.1:18080`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use futures::FutureExt;
use pingora_core::connectors::TransportConnector;
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::Stream;
use pingora_core::protocols::http::HttpTask;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::http::client::HttpSession as ClientSession;
use pingora_core::protocols::http::v1::client::HttpSession as ClientV1;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};

/// Which upstream pool the proxy keeps its backend connections in.
// One value per process: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Upstream {
    /// pingora-core's `Connector` (an idle-watch task per pooled connection).
    Pingora(Connector),
    /// A transport connector and a list of idle streams, checked only when taken.
    Own {
        transport: TransportConnector,
        idle: Mutex<Vec<Stream>>,
    },
}

struct Proxy {
    peer: HttpPeer,
    upstream: Upstream,
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: pingora_core_proxy LISTEN BACKEND [pingora|own]";
    let listen: SocketAddr = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let backend: SocketAddr = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let upstream = match args.next().as_deref() {
        None | Some("pingora") => Upstream::Pingora(Connector::new(None)),
        Some("own") => Upstream::Own {
            transport: TransportConnector::new(None),
            idle: Mutex::default(),
        },
        Some(_) => anyhow::bail!(usage),
    };
    let proxy = Arc::new(Proxy {
        peer: HttpPeer::new(backend, false, String::new()),
        upstream,
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(listen, proxy))
}

async fn serve(listen: SocketAddr, proxy: Arc<Proxy>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    // Runs until the process is stopped (a benchmark target).
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of descriptors or the like: the next accept may succeed.
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        // A client that reset its connection before this point is no reason to stop.
        if let Err(e) = tcp.set_nodelay(true) {
            eprintln!("client: {e}");
            continue;
        }
        let stream: Stream = Box::new(pingora_core::protocols::l4::stream::Stream::from(tcp));
        tokio::spawn(connection(stream, proxy.clone()));
    }
}

/// Serves the requests of one kept-alive client connection until it closes or fails.
async fn connection(mut stream: Stream, proxy: Arc<Proxy>) {
    // Bounded by the client: every turn serves one request of its connection.
    loop {
        let mut session = ServerSession::new_http1(stream);
        match session.read_request().await {
            Ok(true) => {}
            _ => return,
        }
        if let Err(e) = proxy.forward(&mut session).await {
            let _ = session.respond_error(502).await;
            eprintln!("proxy: {e}");
            return;
        }
        match session.finish().await {
            Ok(Some(reusable)) => stream = reusable.into_parts().0,
            _ => return,
        }
    }
}

impl Proxy {
    async fn forward(&self, session: &mut ServerSession) -> Result<()> {
        let head = Box::new(session.req_header().clone());
        let mut up = self.session().await?;
        up.write_request_header(head).await?;
        // Request body up (none for wrk's GETs).
        while let Some(chunk) = session.read_request_body().await? {
            up.write_body(&chunk).await?;
        }
        up.finish_body().await?;
        // Response down: the head with the first body chunk when it is already here.
        let mut done = false;
        while !done {
            let mut tasks = vec![up.read_response_task().await?];
            if matches!(tasks[0], HttpTask::Header(_, false))
                && let Some(next) = up.read_response_task().now_or_never()
            {
                tasks.push(next?);
            }
            done = session.response_duplex_vec(tasks).await?;
        }
        self.release(up).await;
        Ok(())
    }

    async fn session(&self) -> Result<ClientV1> {
        match &self.upstream {
            Upstream::Pingora(connector) => match connector.get_http_session(&self.peer).await? {
                (ClientSession::H1(up), _) => Ok(up),
                _ => Err(Error::explain(ErrorType::InternalError, "not HTTP/1")),
            },
            Upstream::Own { transport, idle } => {
                let pooled = idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
                let stream = match pooled {
                    Some(s) => s,
                    None => transport.new_stream(&self.peer).await?,
                };
                Ok(ClientV1::new_with_options(stream, &self.peer))
            }
        }
    }

    async fn release(&self, mut up: ClientV1) {
        match &self.upstream {
            Upstream::Pingora(connector) => {
                connector
                    .release_http_session(ClientSession::H1(up), &self.peer, None)
                    .await
            }
            Upstream::Own { idle, .. } => {
                up.respect_keepalive();
                if let Some(stream) = up.reuse().await {
                    idle.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(stream);
                }
            }
        }
    }
}
