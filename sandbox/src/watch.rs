//! Watch streams: newline-delimited `{"type":..,"object":..}` events over a chunked response.
//!
//! A watch is a cursor into the cluster's event history (see `store`):
//! 1. start: with no resourceVersion (or "0") the current matching objects are sent as ADDED;
//!    with `sendInitialEvents=true` they are followed by a BOOKMARK annotated
//!    `k8s.io/initial-events-end`; with a resourceVersion inside the history window the stream
//!    resumes after it; an older one gets HTTP 200 plus one ERROR event carrying a 410 `Expired`
//!    Status (the only signal that makes kube-runtime's watcher re-list);
//! 2. loop: wake on every commit to the watched kind (a `tokio::sync::watch` per kind of the
//!    latest resourceVersion; writes to other kinds do not wake it), send the matching events of
//!    the kind after the cursor (read from the kind's own history, not the whole cluster's),
//!    translating MODIFIED into ADDED/DELETED when an object enters/leaves the selector; send
//!    BOOKMARKs every `bookmark_interval` when asked to; a cursor whose kind's events fell out
//!    of the window (a slow reader during a burst) also ends with 410;
//! 3. end after `timeoutSeconds`, on sandbox shutdown, or when the client goes away (the body is
//!    dropped, which drops this stream).

use crate::registry::ResourceType;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::server::{Body, Cluster};
use crate::store::{EventType, Stored, in_version, to_version};
use crate::table::{self, Format};
use crate::util::namespace_of;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchStart {
    /// No resourceVersion or "0": synthetic ADDED events for the current state.
    Current,
    /// `sendInitialEvents=true`: current state, then the initial-events-end bookmark.
    InitialEvents,
    /// Resume after this resourceVersion.
    From(u64),
}

pub struct WatchRequest {
    pub rt: Arc<ResourceType>,
    pub version: String,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub start: WatchStart,
    pub bookmarks: bool,
    pub timeout: Duration,
    /// Objects, Tables (`kubectl get -w`) or PartialObjectMetadata (metadata watchers).
    pub format: Format,
}

struct Watcher {
    cluster: Arc<Cluster>,
    req: WatchRequest,
    key: String,
    cursor: u64,
    started: bool,
    done: bool,
    pending: VecDeque<Bytes>,
    rv_rx: tokio::sync::watch::Receiver<u64>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    deadline: Instant,
    next_bookmark: Option<Instant>,
}

enum Wake {
    Changed,
    Timeout,
    Bookmark,
    Stop,
}

/// Builds the streaming response body for a watch.
pub fn watch_body(cluster: Arc<Cluster>, req: WatchRequest) -> Body {
    let now = Instant::now();
    let interval = cluster.opts.bookmark_interval;
    let w = Watcher {
        rv_rx: cluster.subscribe_kind(&req.rt.key()),
        shutdown: cluster.shutdown.clone(),
        key: req.rt.key(),
        deadline: now + req.timeout,
        next_bookmark: if req.bookmarks {
            interval.map(|i| now + i)
        } else {
            None
        },
        cluster,
        req,
        cursor: 0,
        started: false,
        done: false,
        pending: VecDeque::new(),
    };
    let stream = futures::stream::unfold(w, next_frame);
    StreamBody::new(stream).boxed_unsync()
}

async fn next_frame(mut w: Watcher) -> Option<(Result<Frame<Bytes>, Infallible>, Watcher)> {
    loop {
        if let Some(b) = w.pending.pop_front() {
            return Some((Ok(Frame::data(b)), w));
        }
        if w.done {
            return None;
        }
        if *w.shutdown.borrow() {
            return None;
        }
        w.rv_rx.borrow_and_update();
        if !w.started {
            w.started = true;
            w.start();
        }
        // Also right after start: changes committed between the client's list and this watch
        // are already in the history and would otherwise wait for the next commit.
        if !w.done {
            w.collect();
        }
        if !w.pending.is_empty() || w.done {
            continue;
        }
        let bookmark_at = w.next_bookmark;
        let wake = tokio::select! {
            r = w.rv_rx.changed() => if r.is_ok() { Wake::Changed } else { Wake::Stop },
            _ = tokio::time::sleep_until(w.deadline) => Wake::Timeout,
            _ = async {
                match bookmark_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending::<()>().await,
                }
            } => Wake::Bookmark,
            _ = w.shutdown.changed() => Wake::Stop,
        };
        match wake {
            Wake::Changed => {}
            Wake::Timeout | Wake::Stop => w.done = true,
            Wake::Bookmark => {
                // Catch up first so the bookmark's resourceVersion covers everything sent.
                w.collect();
                if !w.done {
                    w.push_bookmark(false);
                }
                w.next_bookmark = w.cluster.opts.bookmark_interval.map(|i| Instant::now() + i);
            }
        }
    }
}

impl Watcher {
    fn matches(&self, obj: &Value) -> bool {
        self.req
            .namespace
            .as_deref()
            .is_none_or(|ns| namespace_of(obj) == ns)
            && self.req.labels.matches(obj)
            && self.req.fields.matches(obj)
    }

    /// An event of a stored object version.
    fn push_event(&mut self, etype: &str, obj: &Stored) {
        if self.req.format == Format::Object && in_version(obj, &self.req.rt, &self.req.version) {
            // The stored object is what the watcher asked for: its stored encoding framed as
            // an event, without encoding it again or the copy converting it would take. `etype`
            // is one of the event type names, which need no escaping.
            let json = obj.json();
            let mut line = Vec::with_capacity(json.len() + 32);
            line.extend_from_slice(b"{\"type\":\"");
            line.extend_from_slice(etype.as_bytes());
            line.extend_from_slice(b"\",\"object\":");
            line.extend_from_slice(&json);
            line.extend_from_slice(b"}\n");
            self.pending.push_back(Bytes::from(line));
            return;
        }
        self.push_value_event(etype, obj);
    }

    /// An event of an object that is not a stored version (or must be converted or wrapped).
    fn push_value_event(&mut self, etype: &str, obj: &Value) {
        let obj = to_version(obj.clone(), &self.req.rt, &self.req.version);
        let object = match self.req.format {
            Format::Metadata => table::partial_metadata(&obj),
            Format::Table(include) => {
                let rv = obj["metadata"]["resourceVersion"].clone();
                table::table(
                    &self.req.rt,
                    &self.req.version,
                    std::slice::from_ref(&obj),
                    json!({"resourceVersion": rv}),
                    include,
                )
            }
            Format::Object => obj,
        };
        self.push_line(&json!({"type": etype, "object": object}));
    }

    fn push_line(&mut self, v: &Value) {
        let mut line = v.to_string().into_bytes();
        line.push(b'\n');
        self.pending.push_back(Bytes::from(line));
    }

    fn push_bookmark(&mut self, initial_end: bool) {
        let mut meta = json!({"resourceVersion": self.cursor.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({
            "kind": self.req.rt.kind,
            "apiVersion": self.req.rt.api_version(&self.req.version),
            "metadata": meta,
        });
        self.push_line(&json!({"type": "BOOKMARK", "object": object}));
    }

    fn push_expired(&mut self, requested: u64, oldest: u64) {
        let status = crate::error::ApiError::expired(format!(
            "too old resource version: {requested} ({oldest})"
        ))
        .to_status();
        self.push_line(&json!({"type": "ERROR", "object": status}));
        self.done = true;
    }

    fn start(&mut self) {
        let cluster = Arc::clone(&self.cluster);
        let state = cluster.lock();
        match self.req.start {
            WatchStart::Current | WatchStart::InitialEvents => {
                // Pointers only under the lock: the events are encoded after it.
                let objs: Vec<Arc<Stored>> = state
                    .list_shared(&self.req.rt, self.req.namespace.as_deref(), None)
                    .map(|(_, o)| o)
                    .filter(|o| self.matches(o))
                    .cloned()
                    .collect();
                self.cursor = state.rv;
                drop(state);
                for o in &objs {
                    self.push_event("ADDED", o);
                }
                if self.req.start == WatchStart::InitialEvents {
                    self.push_bookmark(true);
                }
            }
            WatchStart::From(rv) => {
                let compacted = state.expired_through(&self.key);
                drop(state);
                if rv < compacted {
                    self.push_expired(rv, compacted);
                } else {
                    self.cursor = rv;
                }
            }
        }
    }

    fn collect(&mut self) {
        let cluster = Arc::clone(&self.cluster);
        let state = cluster.lock();
        let events = match state.kind_events_after(&self.key, self.cursor) {
            Ok(e) => e,
            Err(oldest) => {
                drop(state);
                let cursor = self.cursor;
                self.push_expired(cursor, oldest);
                return;
            }
        };
        self.cursor = self.cursor.max(state.rv);
        drop(state);
        for e in events {
            let now = self.matches(&e.obj);
            match e.etype {
                EventType::Added if now => self.push_event("ADDED", &e.obj),
                EventType::Deleted if now => self.push_event("DELETED", &e.obj),
                EventType::Modified => {
                    let before = e.prev.as_ref().is_some_and(|p| self.matches(p));
                    match (before, now) {
                        (true, true) => self.push_event("MODIFIED", &e.obj),
                        (false, true) => self.push_event("ADDED", &e.obj),
                        (true, false) => {
                            // Leaving the selector: the old object, stamped with this event's RV.
                            let mut old =
                                e.prev.as_deref().map_or(Value::Null, |p| p.value().clone());
                            if let Some(m) = old.get_mut("metadata").and_then(Value::as_object_mut)
                            {
                                m.insert("resourceVersion".into(), json!(e.rv.to_string()));
                            }
                            self.push_value_event("DELETED", &old);
                        }
                        (false, false) => {}
                    }
                }
                _ => {}
            }
        }
    }
}
