//! The lean path's pool of idle HTTP/1 upstream connections.
//!
//! pingora-core's pool (the framework path's, and `Connector::release_http_session`) spawns a
//! task per released connection that watches it while idle, wakes it through a channel when the
//! connection is taken again, and reads the socket once at release and once at reuse: a task, two
//! wake-ups and two system calls per request. This pool keeps idle connections in a list and
//! checks one only when it is taken:
//!
//! ```text
//! put  ─ the exchange ended cleanly and both sides said keep-alive ─ newest last; over the
//!        pool size the oldest connection of the pool is closed
//! take ─ newest first: idle past its peer's idle timeout? closed ─ a read that does not wait:
//!        nothing to read (alive) ─► reused; the end of stream, an error or bytes nobody asked
//!        for ─► closed, next
//! ```
//!
//! Same limits as the framework's pool: at most `upstream_keepalive_pool_size × threads`
//! connections (pingora's `ConnectorOptions::keepalive_pool_size`), each for at most its peer's
//! idle timeout (`UPSTREAM_IDLE`, gateway/upstream.rs). A connection the backend closed while idle
//! is found when it is next taken (or pushed out by newer ones), not at once: the socket waits in
//! the list until then.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::FutureExt;
use pingora_core::protocols::Stream;
use tokio::io::AsyncReadExt;

struct Idle {
    key: u64,
    stream: Stream,
    since: Instant,
    timeout: Option<Duration>,
}

impl Idle {
    fn expired(&self, now: Instant) -> bool {
        self.timeout
            .is_some_and(|t| now.saturating_duration_since(self.since) >= t)
    }
}

/// Idle upstream connections by peer (`Peer::reuse_hash`).
pub(super) struct Pool {
    idle: Mutex<Lists>,
    /// Most idle connections over all peers.
    max: usize,
}

#[derive(Default)]
struct Lists {
    /// Keyed by a hash already: foldhash mixes it cheaply (SipHash cost more per request).
    by_peer: HashMap<u64, Vec<Idle>, foldhash::fast::RandomState>,
    total: usize,
}

impl Pool {
    pub fn new(max: usize) -> Pool {
        Pool {
            idle: Mutex::default(),
            max,
        }
    }

    /// A live idle connection to the peer `key`, newest first.
    pub fn take(&self, key: u64) -> Option<Stream> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let Lists { by_peer, total } = &mut *idle;
        let list = by_peer.get_mut(&key)?;
        // Bounded by the list: every turn removes one connection.
        while let Some(mut c) = list.pop() {
            *total -= 1;
            if !c.expired(now) && still_open(&mut c.stream) {
                return Some(c.stream);
            }
        }
        None
    }

    /// Keeps `stream` (to the peer `key`, reusable) for at most `timeout`.
    pub fn put(&self, key: u64, stream: Stream, timeout: Option<Duration>) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let Lists { by_peer, total } = &mut *idle;
        let list = by_peer.entry(key).or_default();
        // Oldest first, and one peer's connections share its idle timeout: the expired ones
        // are a prefix. Only that prefix is looked at (a scan of the whole list cost every
        // request as many clock subtractions as the peer had idle connections); `take`
        // checks each connection's age again anyway.
        let expired = list.iter().take_while(|c| c.expired(now)).count();
        if expired > 0 {
            list.drain(..expired);
            *total -= expired;
        }
        list.push(Idle {
            key,
            stream,
            since: now,
            timeout,
        });
        *total += 1;
        if *total > self.max {
            // Over the pool size: the connection idle longest goes (a scan of the peers' oldest
            // connections, only when the pool is full).
            let oldest = by_peer
                .values()
                .filter_map(|l| l.first())
                .min_by_key(|c| c.since)
                .map(|c| c.key);
            if let Some(list) = oldest.and_then(|k| by_peer.get_mut(&k))
                && !list.is_empty()
            {
                list.remove(0);
                *total -= 1;
            }
            by_peer.retain(|_, l| !l.is_empty());
        }
    }
}

/// An idle connection is usable when a read finds nothing: the end of stream, an error or bytes
/// the backend sent unasked all mean it cannot carry a request.
fn still_open(stream: &mut Stream) -> bool {
    let mut probe = [0u8; 1];
    // `unconstrained`: the coop budget must not make a ready read look pending.
    tokio::task::unconstrained(stream.read(&mut probe))
        .now_or_never()
        .is_none()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    /// A loopback connection: our end as a pingora stream, and the peer's end.
    async fn connection() -> (Stream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (theirs, _) = l.accept().await.unwrap();
        let ours: Stream = Box::new(pingora_core::protocols::l4::stream::Stream::from(ours));
        (ours, theirs)
    }

    const MINUTE: Option<Duration> = Some(Duration::from_secs(60));

    #[tokio::test]
    async fn a_kept_connection_is_taken_once_by_its_peer_only() {
        let pool = Pool::new(8);
        let (c, _peer) = connection().await;
        pool.put(1, c, MINUTE);
        assert!(pool.take(2).is_none());
        assert!(pool.take(1).is_some());
        assert!(pool.take(1).is_none());
    }

    #[tokio::test]
    async fn expired_closed_and_chatty_connections_are_not_reused() {
        let pool = Pool::new(8);
        let (c, _peer) = connection().await;
        pool.put(1, c, Some(Duration::from_millis(1)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(pool.take(1).is_none(), "expired");

        let (c, peer) = connection().await;
        pool.put(2, c, MINUTE);
        drop(peer);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.take(2).is_none(), "closed by the backend");

        let (c, mut peer) = connection().await;
        pool.put(3, c, MINUTE);
        tokio::io::AsyncWriteExt::write_all(&mut peer, b"x")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.take(3).is_none(), "sent bytes nobody asked for");
    }

    /// Expired connections leave the pool when the next one of their peer is kept, so they
    /// do not count against its size.
    #[tokio::test]
    async fn keeping_a_connection_drops_the_expired_ones_of_its_peer() {
        let pool = Pool::new(8);
        let mut peers = Vec::new();
        for _ in 0..3 {
            let (c, peer) = connection().await;
            pool.put(1, c, Some(Duration::from_millis(1)));
            peers.push(peer);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (c, _peer) = connection().await;
        pool.put(1, c, MINUTE);
        assert_eq!(pool.idle.lock().unwrap().total, 1);
        assert!(pool.take(1).is_some());
        assert!(pool.take(1).is_none());
    }

    #[tokio::test]
    async fn a_full_pool_closes_its_oldest_connection() {
        let pool = Pool::new(2);
        let mut peers = Vec::new();
        for key in 1..=3 {
            let (c, peer) = connection().await;
            peers.push(peer);
            pool.put(key, c, MINUTE);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(pool.take(1).is_none(), "the oldest stayed");
        assert!(pool.take(2).is_some());
        assert!(pool.take(3).is_some());
    }
}
