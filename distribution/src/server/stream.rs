//! One proxy's stream: the response body of `POST /v1/stream` and the feed task writing it.
//!
//! ```text
//! open: registry connect (session, kicked) ─► subscribe to the cluster's watch<Version>
//!       ─► spawn feed ─► 200 application/x-ndjson, body = lines from the feed's channel
//! feed: welcome ─► loop { new version ─► delta or full line  |  idle ping_interval ─► ping }
//!       ends on: replaced by a newer stream (kicked), server stop, this replica no longer
//!       leading (ServerConfig::serving), proxy gone, a line not taken within WRITE_TIMEOUT, an
//!       encoding error ─► registry disconnect(session)
//! ```
//!
//! The channel between the feed and the body holds a few lines: a proxy that does not read
//! blocks the feed, which then skips to the newest version instead of queueing every one.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, header};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use tokio::sync::{mpsc, oneshot, watch};

use super::Inner;
use super::http::ResBody;
use super::store::{Version, line};
use crate::protocol::{Hello, Outgoing, STREAM_CONTENT_TYPE, Welcome};

/// A stream whose proxy does not take a line for this long is closed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Registers the proxy and answers with its stream.
pub(super) fn open(
    inner: Arc<Inner>,
    hello: Hello,
    stop: watch::Receiver<bool>,
) -> Response<ResBody> {
    let (session, kicked) = inner.connect(&hello);
    let mut versions = lock_latest(&inner, &hello.cluster);
    // Deliver the current version right away.
    versions.mark_changed();
    let (tx, rx) = mpsc::channel(8);
    let feed = Feed {
        inner,
        hello,
        session,
        tx,
    };
    tokio::spawn(feed.run(versions, kicked, stop));
    let mut resp = Response::new(ChannelBody(rx).boxed_unsync());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(STREAM_CONTENT_TYPE),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

/// A subscription to the versions of `cluster`.
fn lock_latest(inner: &Inner, cluster: &str) -> watch::Receiver<Option<Arc<Version>>> {
    super::lock(&inner.cluster(cluster)).latest.subscribe()
}

/// The stream body: lines from the feed task.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// Writes one stream.
struct Feed {
    inner: Arc<Inner>,
    hello: Hello,
    session: u64,
    tx: mpsc::Sender<Bytes>,
}

/// What became of a new version.
enum Sent {
    /// Written (or not, `false`: the proxy did not take it in time).
    Line(bool),
    /// Nothing to send: no version yet, or the stream holds it already.
    Nothing,
    /// It does not encode: the stream closes.
    Failed,
}

impl Feed {
    /// Welcome, then every new version of the cluster, pings while idle; unregisters the
    /// session when the stream ends.
    async fn run(
        self,
        mut versions: watch::Receiver<Option<Arc<Version>>>,
        mut kicked: oneshot::Receiver<()>,
        mut stop: watch::Receiver<bool>,
    ) {
        let ping_line = line(&Outgoing::Ping).unwrap_or_else(|_| Bytes::from_static(b"\"ping\"\n"));
        let mut ok = self.welcome().await;
        let mut sent: Option<u64> = None;
        let mut ping = tokio::time::interval(self.inner.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.reset();
        // A replica that stops leading closes its streams: the proxies reconnect to the leader.
        let mut serving = self.inner.serving.clone();
        let lost_leadership = async {
            match serving.as_mut() {
                Some(s) => {
                    let _ = s.wait_for(|leads| !*leads).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(lost_leadership);
        while ok {
            tokio::select! {
                _ = &mut kicked => break,
                _ = stop.changed() => break,
                () = &mut lost_leadership => {
                    tracing::info!(proxy = %self.hello.proxy_id, "no longer the leader: closing the proxy's stream");
                    break;
                }
                () = self.tx.closed() => break,
                changed = versions.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let version = versions.borrow_and_update().clone();
                    match self.version(version.as_deref(), &mut sent).await {
                        Sent::Line(taken) => {
                            ok = taken;
                            ping.reset();
                        }
                        Sent::Nothing => {}
                        Sent::Failed => break,
                    }
                }
                _ = ping.tick() => ok = self.send(ping_line.clone()).await,
            }
        }
        self.inner.disconnect(&self.hello.proxy_id, self.session);
    }

    /// Sends one line; `false` when the proxy did not take it within [`WRITE_TIMEOUT`] or is
    /// gone.
    async fn send(&self, line: Bytes) -> bool {
        matches!(
            tokio::time::timeout(WRITE_TIMEOUT, self.tx.send(line)).await,
            Ok(Ok(()))
        )
    }

    /// The first line: the ping interval the proxy can expect.
    async fn welcome(&self) -> bool {
        let welcome = Welcome {
            ping_interval_ms: u64::try_from(self.inner.ping_interval.as_millis())
                .unwrap_or(u64::MAX),
        };
        match line(&Outgoing::Welcome(&welcome)) {
            Ok(l) => self.send(l).await,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the welcome line");
                false
            }
        }
    }

    /// Sends `version` unless the stream already holds it; `sent` is the last generation sent.
    async fn version(&self, version: Option<&Version>, sent: &mut Option<u64>) -> Sent {
        let Some(v) = version else {
            return Sent::Nothing;
        };
        if *sent == Some(v.generation) {
            return Sent::Nothing;
        }
        match v.line_for(*sent, self.hello.gateways.as_deref()) {
            Ok(l) => {
                let taken = self.send(l).await;
                *sent = Some(v.generation);
                Sent::Line(taken)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a snapshot; closing the stream");
                Sent::Failed
            }
        }
    }
}
