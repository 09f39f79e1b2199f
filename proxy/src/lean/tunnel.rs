//! The byte tunnel of an upgraded connection (WebSocket or any HTTP/1.1 upgrade the backend
//! accepted with `101 Switching Protocols`).
//!
//! ```text
//! 101 written ─ take what each session already buffered past its head (the client's first
//!   frames, the backend's first frames after its 101) ─ raw streams ─ loop:
//!     client bytes ─► backend      backend bytes ─► client
//!     a side's end of stream ─► shut the other side's write half (half-close), keep reading
//!     both ended, an error, or no byte either way for the idle timeout ─► both closed
//! ```
//!
//! pingora-proxy 0.9.1 relays upgraded bodies through its per-request channels and can lose the
//! bytes that follow a fast backend's 101 (cloudflare/pingora#946); here the leftovers are taken
//! from the sessions before their streams are, so nothing in a buffer is left behind.

use std::time::Duration;

use bytes::BytesMut;
use futures::FutureExt;
use pingora_core::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Connection;
use super::codec::OwnClient;
use crate::gateway::Downstream;

/// Copy buffer per direction.
const CHUNK: usize = 16 * 1024;
/// Most buffered pieces taken from a session before its stream (each is a buffer's worth).
const MAX_LEFTOVER_PIECES: usize = 64;

/// Relays bytes between the client of `session` and the backend of `up` until both are done.
pub(super) async fn run(session: impl Connection, up: OwnClient, idle: Duration) {
    let mut session = session;
    let (to_up, client_ended) = match client_leftovers(&mut session) {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(error = %e, "upgraded client connection failed");
            return;
        }
    };
    // The backend's bytes read past its 101 (its end of stream, if it came, the relay finds).
    let (backend, to_client) = up.into_parts();
    let backend_ended = false;
    let Some(client) = session.into_stream() else {
        return;
    };
    let tunnel = Tunnel {
        client,
        backend,
        idle,
    };
    if let Err(e) = tunnel
        .relay(&to_up, client_ended, &to_client, backend_ended)
        .await
    {
        tracing::debug!(error = %e, "upgraded connection ended");
    }
}

/// The client's bytes that arrived after its request head, without waiting for more.
fn client_leftovers(session: &mut impl Downstream) -> pingora_error::Result<(BytesMut, bool)> {
    let mut got = BytesMut::new();
    for _ in 0..MAX_LEFTOVER_PIECES {
        match session.read_request_body().now_or_never() {
            None => return Ok((got, false)),
            Some(Ok(Some(b))) => got.extend_from_slice(&b),
            Some(Ok(None)) => return Ok((got, true)),
            Some(Err(e)) => return Err(e),
        }
    }
    Ok((got, false))
}

struct Tunnel {
    client: Stream,
    backend: Stream,
    idle: Duration,
}

impl Tunnel {
    async fn relay(
        mut self,
        to_backend: &[u8],
        client_ended: bool,
        to_client: &[u8],
        backend_ended: bool,
    ) -> std::io::Result<()> {
        if !to_backend.is_empty() {
            self.backend.write_all(to_backend).await?;
            self.backend.flush().await?;
        }
        if !to_client.is_empty() {
            self.client.write_all(to_client).await?;
            self.client.flush().await?;
        }
        let mut client_open = !client_ended;
        let mut backend_open = !backend_ended;
        if client_ended {
            self.backend.shutdown().await?;
        }
        if backend_ended {
            self.client.shutdown().await?;
        }
        let mut from_client = vec![0u8; CHUNK];
        let mut from_backend = vec![0u8; CHUNK];
        let idle = tokio::time::sleep(self.idle);
        tokio::pin!(idle);
        // Ends when both sides have ended, on an error, or when the idle timer fires; every
        // turn moves bytes (and restarts the timer) or ends a side.
        while client_open || backend_open {
            tokio::select! {
                n = self.client.read(&mut from_client), if client_open => {
                    let n = n?;
                    if n == 0 {
                        client_open = false;
                        self.backend.shutdown().await?;
                    } else {
                        self.backend.write_all(&from_client[..n]).await?;
                        self.backend.flush().await?;
                        idle.as_mut().reset(tokio::time::Instant::now() + self.idle);
                    }
                }
                n = self.backend.read(&mut from_backend), if backend_open => {
                    let n = n?;
                    if n == 0 {
                        backend_open = false;
                        self.client.shutdown().await?;
                    } else {
                        self.client.write_all(&from_backend[..n]).await?;
                        self.client.flush().await?;
                        idle.as_mut().reset(tokio::time::Instant::now() + self.idle);
                    }
                }
                () = &mut idle => {
                    tracing::debug!(idle = ?self.idle, "upgraded connection idle: closed");
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}
