//! One proxy's stream: the response body of `POST /v1/stream` and the feed task writing it.
//!
//! ```text
//! open: registry connect (session, kicked) ─► subscribe to the cluster's watch<Version>
//!       ─► spawn feed ─► 200 application/x-ndjson, body = lines from the feed's channel
//! feed: welcome ─► loop { new version ─► delta, patch or full line
//!                        | the proxy asks for a resync after a patch ─► the current version, full
//!                        | idle ping_interval ─► ping }
//!       ends on: replaced by a newer stream (kicked), server stop, this replica no longer
//!       leading (ServerConfig::serving), proxy gone, a line not taken within WRITE_TIMEOUT, an
//!       encoding error ─► registry disconnect(session)
//! ```
//!
//! The channel between the feed and the body holds a few lines: a proxy that does not read
//! blocks the feed, which then skips to the newest version instead of queueing every one.
//!
//! Patches go only to a stream whose hello announced `patch`: the version's own patch when the
//! last version sent on it is the patch's base, else (the feed skipped versions while the proxy
//! was slow to read, or the version is an endpoint delta from a version the stream never got)
//! a patch from the snapshot the stream was last sent, computed for it. A proxy refusing a patch that does not fit what it holds
//! (`resync` in its ack) gets the current version as a full snapshot right away, and patches
//! again from there. A patch whose *content* the proxy refuses (a port it cannot bind) needs no
//! resync: the proxy holds the patched snapshot, keeps serving its last good one and retries
//! like after a refused full snapshot.

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
use super::store::{LineKind, Version, line};
use crate::protocol::{Hello, Outgoing, STREAM_CONTENT_TYPE, Welcome};
use meridian_model::Snapshot;

/// A stream whose proxy does not take a line for this long is closed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Registers the proxy and answers with its stream.
pub(super) fn open(
    inner: Arc<Inner>,
    hello: Hello,
    patches: bool,
    stop: watch::Receiver<bool>,
) -> Response<ResBody> {
    let (session, kicked, resync) = inner.connect(&hello);
    let mut versions = lock_latest(&inner, &hello.cluster);
    // Deliver the current version right away.
    versions.mark_changed();
    let (tx, rx) = mpsc::channel(8);
    let feed = Feed {
        inner,
        hello,
        patches,
        session,
        tx,
    };
    tokio::spawn(feed.run(versions, kicked, resync, stop));
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
    /// The client applies patches (it announced `patch`).
    patches: bool,
    session: u64,
    tx: mpsc::Sender<Bytes>,
}

/// What a stream was sent.
#[derive(Default)]
struct Sent {
    /// The generation of the last version sent.
    generation: Option<u64>,
    /// Whether a patch was sent since the last full snapshot.
    patched: bool,
    /// The snapshot of the last version sent: a stream that missed versions gets the patch
    /// from it (shares its routes with the current version; held only while the stream lives).
    snapshot: Option<Arc<Snapshot>>,
}

/// What became of a new version.
enum Outcome {
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
        mut resync: watch::Receiver<u64>,
        mut stop: watch::Receiver<bool>,
    ) {
        let ping_line = line(&Outgoing::Ping).unwrap_or_else(|_| Bytes::from_static(b"\"ping\"\n"));
        let mut ok = self.welcome().await;
        let mut sent = Sent::default();
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
                        Outcome::Line(taken) => {
                            ok = taken;
                            ping.reset();
                        }
                        Outcome::Nothing => {}
                        Outcome::Failed => break,
                    }
                }
                changed = resync.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    if !sent.patched {
                        continue;
                    }
                    // The proxy does not hold what we sent: start again from a full snapshot.
                    tracing::info!(proxy = %self.hello.proxy_id, "patch did not fit: sending the full snapshot");
                    self.inner
                        .metrics
                        .patch_fallbacks
                        .with_label_values(&[&self.hello.cluster])
                        .inc();
                    sent = Sent::default();
                    let version = versions.borrow().clone();
                    match self.version(version.as_deref(), &mut sent).await {
                        Outcome::Line(taken) => {
                            ok = taken;
                            ping.reset();
                        }
                        Outcome::Nothing => {}
                        Outcome::Failed => break,
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

    /// Sends `version` unless the stream already holds it; `sent` is what it was sent.
    async fn version(&self, version: Option<&Version>, sent: &mut Sent) -> Outcome {
        let Some(v) = version else {
            return Outcome::Nothing;
        };
        if sent.generation == Some(v.generation) {
            return Outcome::Nothing;
        }
        let held = sent.generation.zip(sent.snapshot.as_deref());
        match v.line_for(held, self.hello.gateways.as_deref(), self.patches) {
            Ok((l, kind)) => {
                let labels = [self.hello.cluster.as_str(), kind.label()];
                self.inner
                    .metrics
                    .sent_bytes
                    .with_label_values(&labels)
                    .inc_by(l.len() as u64);
                self.inner
                    .metrics
                    .sent_messages
                    .with_label_values(&labels)
                    .inc();
                let taken = self.send(l).await;
                sent.generation = Some(v.generation);
                let old = sent.snapshot.replace(v.snapshot().clone());
                // The last holder of an old snapshot frees it off the runtime's workers (tens of
                // ms for a big one that shares nothing with the new version).
                if let Some(old) = old
                    && Arc::strong_count(&old) == 1
                {
                    tokio::task::spawn_blocking(move || drop(old));
                }
                match kind {
                    LineKind::Patch => sent.patched = true,
                    LineKind::Snapshot => sent.patched = false,
                    LineKind::Endpoints => {}
                }
                Outcome::Line(taken)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a snapshot; closing the stream");
                Outcome::Failed
            }
        }
    }
}
