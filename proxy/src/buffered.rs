//! Read and write buffering for accepted connections.
//!
//! pingora's own listeners give every accepted stream an L4 read buffer and a small write buffer,
//! but the call that does it is private to pingora, and a stream built from a `TcpStream` has
//! neither. Unbuffered, every response goes out as one `send` for the header and one for the
//! body, and TLS reads each record in two `recv`s. [`Buffered`] puts the buffers back:
//!
//! ```text
//! TcpStream ─► pingora L4 Stream (socket digest) ─► Buffered ─► [TLS] ─► pingora HTTP session
//! ```
//!
//! Writes collect in a buffer of [`WRITE_CAPACITY`] bytes (about one segment, as pingora does);
//! pingora flushes at the end of every response, after every chunk of a chunked or close-delimited
//! body and after informational headers, so nothing waits for the buffer to fill. A write that
//! does not fit goes out together with what is buffered in one vectored write, so a header and a
//! large body still cost one system call. Two safety nets keep bytes from getting stuck anyway: a
//! read that would block first sends what is buffered (the peer may be waiting for it before it
//! says anything more), and dropping the stream sends what it can without waiting.
//!
//! Our own HTTP/1 codec buffers by itself, so on plain connections it takes over
//! ([`NextBytes::take_buffering`]): it gets the bytes read during the keep-alive wait in the
//! buffer they arrived in (parsed there, not copied), and writes go straight to the socket while
//! nothing is buffered (the codec already puts a response head and its first body bytes in one
//! write). pingora's sessions and TLS keep both buffers.
//!
//! Reads fill a buffer of [`READ_CAPACITY`] bytes; reads at least that large bypass it. `Peek` (the
//! h2c preface check) looks into the read buffer without consuming it; [`Buffered::sniff_h2c`]
//! decides h2c or HTTP/1 as soon as the bytes received so far stop matching the HTTP/2 preface,
//! so a request shorter than the preface (`OPTIONS / HTTP/1.0\r\n\r\n`, 22 bytes) is not held.
//!
//! A connection waiting for its client holds no buffer: both are allocated when first used and
//! [`NextBytes::poll_next_bytes`] (the wait between requests, listeners.rs) releases them while
//! nothing is pending. A read with no buffer allocated goes into an uninitialised buffer on the
//! stack; only bytes that arrive get a heap buffer (filled without zeroing it first), so an idle
//! keep-alive connection costs its socket, not 17 KiB of buffer (docs/benchmarks.md, "Memory per
//! idle connection").
//!
//! With a connection clock ([`Buffered::with_clock`], limits.rs), every read that would wait
//! first checks the clock's deadline (header or keep-alive idle timeout) and fails with
//! `TimedOut` once it has passed; bytes arriving tell the clock that a request has begun.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, SslStream, TlsRef};
use pingora_core::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::limits::ConnClock;

/// The client preface of HTTP/2 with prior knowledge (RFC 9113 §3.4).
pub(crate) const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Read buffer size: a whole TLS record (16 KiB plus its framing) or a large request header in one
/// `recv`.
pub(crate) const READ_CAPACITY: usize = 17 * 1024;
/// Write buffer size: about one TCP segment, pingora's choice; larger writes go straight out.
pub(crate) const WRITE_CAPACITY: usize = 1460;

/// A stream with a read buffer and a write buffer in front of it.
pub(crate) struct Buffered<S: AsyncWrite + Unpin> {
    inner: S,
    /// Unread bytes are `read[read_pos..]`. No capacity until bytes arrive (and again after
    /// [`NextBytes::poll_next_bytes`] released it), then [`READ_CAPACITY`]; never zeroed, reads
    /// go into its spare capacity.
    read: BytesMut,
    read_pos: usize,
    /// Unsent bytes are `write[write_pos..]`. No capacity until something is written (and again
    /// after a release).
    write: Vec<u8>,
    write_pos: usize,
    /// Writes go straight to the stream while nothing is buffered: the reader above coalesces
    /// its own writes (our HTTP/1 codec), so a copy into the write buffer would only cost.
    write_through: bool,
    /// The connection's deadlines (none without a clock).
    clock: Option<Arc<ConnClock>>,
    /// Armed at the clock's deadline while a read waits.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<S: AsyncWrite + Unpin> Buffered<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            read: BytesMut::new(),
            read_pos: 0,
            write: Vec::new(),
            write_pos: 0,
            write_through: false,
            clock: None,
            timer: None,
        }
    }

    /// Reads give up when `clock`'s deadline passes.
    pub(crate) fn with_clock(mut self, clock: Arc<ConnClock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// A read is about to wait: `Err(TimedOut)` when the clock's deadline has passed, else the
    /// timer is armed to wake the task at the deadline.
    fn check_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(deadline) = self.clock.as_ref().and_then(|c| c.deadline()) else {
            return Ok(());
        };
        let timer = match &mut self.timer {
            Some(t) => {
                if t.deadline() != deadline {
                    t.as_mut().reset(deadline);
                }
                t
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        if timer.as_mut().poll(cx).is_ready() {
            let what = self.clock.as_ref().map_or("timeout", |c| c.expired_what());
            tracing::debug!("closing a downstream connection: {what}");
            return Err(io::Error::new(io::ErrorKind::TimedOut, what));
        }
        Ok(())
    }

    fn data_arrived(&self) {
        if let Some(c) = &self.clock {
            c.data_arrived();
        }
    }

    fn buffered_write(&self) -> &[u8] {
        &self.write[self.write_pos..]
    }

    fn consumed_write(&mut self, n: usize) {
        self.write_pos += n;
        if self.write_pos >= self.write.len() {
            self.write.clear();
            self.write_pos = 0;
        }
    }

    /// The bytes read but not consumed yet.
    fn unread(&self) -> &[u8] {
        &self.read[self.read_pos..]
    }

    /// Gives both buffers back to the allocator if they hold nothing: the connection is about
    /// to wait for its client, maybe for a long time.
    fn release_buffers(&mut self) {
        if self.unread().is_empty() {
            self.read = BytesMut::new();
            self.read_pos = 0;
        }
        if self.buffered_write().is_empty() {
            self.write = Vec::new();
            self.write_pos = 0;
        }
    }

    /// Whether both buffers are released (for tests).
    #[cfg(test)]
    fn holds_no_buffer(&self) -> bool {
        self.read.capacity() == 0 && self.write.capacity() == 0
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Buffered<S> {
    /// Sends everything buffered (without flushing the inner stream).
    fn poll_send_buffered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.buffered_write().is_empty() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.write[self.write_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.consumed_write(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Reads more into the read buffer (after what is there). `Ok(0)` is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.unread().is_empty() {
            self.read.clear();
            self.read_pos = 0;
        } else if self.read.len() == self.read.capacity() {
            // Drops the consumed front and asks for that much room again: the reserve moves the
            // rest back to the start of the buffer (no allocation while the consumed part is at
            // least as long as the rest; otherwise the buffer grows, as a Vec's drain did not).
            let consumed = self.read_pos;
            self.read.advance(consumed);
            self.read_pos = 0;
            self.read.reserve(consumed);
        }
        let polled = if self.read.capacity() == 0 {
            self.poll_first_read(cx)
        } else {
            // Into the spare capacity; the callers never ask for more than READ_CAPACITY
            // buffered bytes (`try_peek`, `sniff_h2c`), so there always is some.
            tokio_util::io::poll_read_buf(Pin::new(&mut self.inner), cx, &mut self.read)
        };
        match polled {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.data_arrived();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                self.send_before_waiting(cx)?;
                self.check_deadline(cx)?;
                Poll::Pending
            }
        }
    }

    /// A read while no read buffer is allocated (a new connection, or one that waited for its
    /// next request): into an uninitialised buffer on the stack, as large as the heap one, so it
    /// still takes a whole TLS record or request header in one `recv`; only bytes that arrive
    /// get a heap buffer, which they are copied into.
    fn poll_first_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut first = [MaybeUninit::<u8>::uninit(); READ_CAPACITY];
        let mut rb = ReadBuf::uninit(&mut first);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
        let got = rb.filled();
        if !got.is_empty() {
            self.read.reserve(READ_CAPACITY);
            self.read.extend_from_slice(got);
        }
        Poll::Ready(Ok(got.len()))
    }

    /// The read side is about to wait for the peer: make sure it has everything we wrote.
    fn send_before_waiting(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.buffered_write().is_empty() {
            return Ok(());
        }
        match self.poll_send_buffered(cx) {
            Poll::Ready(Ok(())) => match Pin::new(&mut self.inner).poll_flush(cx) {
                Poll::Ready(r) => r,
                Poll::Pending => Ok(()),
            },
            Poll::Ready(Err(e)) => Err(e),
            // Registered for writability: the task wakes up and the next poll goes on sending.
            Poll::Pending => Ok(()),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Buffered<S> {
    /// Whether the client opens with the HTTP/2 preface (h2c with prior knowledge), decided as
    /// soon as the bytes received so far differ from it: an HTTP/1 request of any length is
    /// answered without waiting for 24 bytes. Consumes nothing. `Err` when the client closes
    /// first (or the clock's deadline passes).
    pub(crate) async fn sniff_h2c(&mut self) -> io::Result<bool> {
        std::future::poll_fn(|cx| {
            loop {
                let seen = self.unread();
                let n = seen.len().min(H2_PREFACE.len());
                if seen[..n] != H2_PREFACE[..n] {
                    return Poll::Ready(Ok(false));
                }
                if n == H2_PREFACE.len() {
                    return Poll::Ready(Ok(true));
                }
                // At most 24 more bytes are needed; the loop ends within as many reads.
                if ready!(self.poll_fill(cx))? == 0 {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::UnexpectedEof)));
                }
            }
        })
        .await
    }
}

/// A downstream stream that can wait for its client's next bytes without holding buffers: what
/// the HTTP/1 loop (listeners.rs) waits on between requests, before pingora allocates anything
/// for the next one.
pub(crate) trait NextBytes {
    /// Ready with `Ok` once at least one byte (of plaintext, under TLS) is ready to be read;
    /// buffers that hold nothing are released first. `Err` when the client closed the connection
    /// or the connection clock's deadline passed (header or keep-alive idle timeout).
    fn poll_next_bytes(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// For a reader that buffers by itself (our own HTTP/1 codec), which takes over: hands it the
    /// bytes read ahead (the next request's first bytes) in the buffer they were read into, so
    /// they are not copied again, and from now on writes go straight out while nothing is
    /// buffered. Nothing to take under TLS (the bytes below it are records still to decrypt),
    /// where writes stay buffered (OpenSSL writes a record in pieces).
    fn take_buffering(&mut self) -> BytesMut {
        BytesMut::new()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> NextBytes for Buffered<S> {
    fn take_buffering(&mut self) -> BytesMut {
        self.write_through = true;
        let mut ahead = std::mem::take(&mut self.read);
        ahead.advance(self.read_pos);
        self.read_pos = 0;
        ahead
    }

    fn poll_next_bytes(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.unread().is_empty() {
            return Poll::Ready(Ok(()));
        }
        self.release_buffers();
        // Waits without a buffer (`poll_first_read`); bytes that arrive are kept for pingora.
        match ready!(self.poll_fill(cx))? {
            0 => Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// Under TLS: plaintext OpenSSL already decrypted is ready at once; otherwise the next record
/// is waited for on the buffered socket below. OpenSSL reads no further than the record it
/// needs (no read-ahead), so nothing else can be pending above the socket's buffer.
impl<S: AsyncRead + AsyncWrite + Unpin> NextBytes for SslStream<Buffered<S>> {
    fn poll_next_bytes(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.ssl().pending() > 0 {
            return Poll::Ready(Ok(()));
        }
        self.get_mut().poll_next_bytes(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Buffered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.unread().is_empty() && buf.remaining() >= READ_CAPACITY {
            let before = buf.filled().len();
            let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
            match &polled {
                Poll::Pending => {
                    this.send_before_waiting(cx)?;
                    this.check_deadline(cx)?;
                }
                Poll::Ready(Ok(())) if buf.filled().len() > before => this.data_arrived(),
                Poll::Ready(_) => {}
            }
            return polled;
        }
        if this.unread().is_empty() {
            ready!(this.poll_fill(cx))?;
        }
        let available = this.unread();
        let n = available.len().min(buf.remaining());
        buf.put_slice(&available[..n]);
        this.read_pos += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Buffered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_through && this.buffered_write().is_empty() {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if this.buffered_write().len() + total <= WRITE_CAPACITY {
            if this.write.capacity() == 0 {
                this.write.reserve_exact(WRITE_CAPACITY);
            }
            for b in bufs {
                this.write.extend_from_slice(b);
            }
            return Poll::Ready(Ok(total));
        }
        if this.buffered_write().is_empty() {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        // What is buffered and the new data in one system call.
        loop {
            let buffered = &this.write[this.write_pos..];
            let pending = buffered.len();
            let inner = Pin::new(&mut this.inner);
            let n = match bufs {
                _ if !inner.is_write_vectored() => ready!(inner.poll_write(cx, buffered))?,
                [one] => {
                    let slices = [IoSlice::new(buffered), IoSlice::new(one)];
                    ready!(inner.poll_write_vectored(cx, &slices))?
                }
                _ => {
                    let mut slices = Vec::with_capacity(bufs.len() + 1);
                    slices.push(IoSlice::new(buffered));
                    slices.extend(bufs.iter().map(|b| IoSlice::new(b)));
                    ready!(inner.poll_write_vectored(cx, &slices))?
                }
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n >= pending {
                this.consumed_write(pending);
                return Poll::Ready(Ok(n - pending));
            }
            this.consumed_write(n);
            // Room for the new data now? Then buffer it rather than writing it partially.
            if this.buffered_write().len() + total <= WRITE_CAPACITY {
                this.write.drain(..this.write_pos);
                this.write_pos = 0;
                for b in bufs {
                    this.write.extend_from_slice(b);
                }
                return Poll::Ready(Ok(total));
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_buffered(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_buffered(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncWrite + Unpin> Drop for Buffered<S> {
    fn drop(&mut self) {
        // Last resort: send what the socket takes right now, without waiting. pingora flushes
        // every response, so this is normally empty.
        let mut cx = Context::from_waker(Waker::noop());
        while self.write_pos < self.write.len() {
            match Pin::new(&mut self.inner).poll_write(&mut cx, &self.write[self.write_pos..]) {
                Poll::Ready(Ok(n)) if n > 0 => self.write_pos += n,
                _ => break,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin + fmt::Debug> fmt::Debug for Buffered<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buffered")
            .field("inner", &self.inner)
            .field("read_buffered", &self.unread().len())
            .field("write_buffered", &(self.write.len() - self.write_pos))
            .finish()
    }
}

#[async_trait]
impl<S: AsyncRead + AsyncWrite + Unpin + Send + Sync> Peek for Buffered<S> {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if buf.len() > READ_CAPACITY {
            return Ok(false);
        }
        std::future::poll_fn(|cx| {
            while self.unread().len() < buf.len() {
                if ready!(self.poll_fill(cx))? == 0 {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::UnexpectedEof)));
                }
            }
            Poll::Ready(Ok(()))
        })
        .await?;
        buf.copy_from_slice(&self.read[self.read_pos..self.read_pos + buf.len()]);
        Ok(true)
    }
}

#[async_trait]
impl<S: Shutdown + AsyncRead + AsyncWrite + Unpin + Send + Sync> Shutdown for Buffered<S> {
    async fn shutdown(&mut self) {
        if let Err(e) = std::future::poll_fn(|cx| self.poll_send_buffered(cx)).await {
            tracing::debug!(error = %e, "sending buffered bytes before shutdown failed");
        }
        Shutdown::shutdown(&mut self.inner).await;
    }
}

impl<S: UniqueID + AsyncWrite + Unpin> UniqueID for Buffered<S> {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl<S: Ssl + AsyncWrite + Unpin> Ssl for Buffered<S> {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl<S: GetTimingDigest + AsyncWrite + Unpin> GetTimingDigest for Buffered<S> {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl<S: GetProxyDigest + AsyncWrite + Unpin> GetProxyDigest for Buffered<S> {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl<S: GetSocketDigest + AsyncWrite + Unpin> GetSocketDigest for Buffered<S> {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    use super::*;
    use crate::limits::Limits;

    /// Polls `stream`'s wait for its next bytes once.
    fn poll_once<S: NextBytes>(stream: &mut S) -> Poll<io::Result<()>> {
        let mut cx = Context::from_waker(Waker::noop());
        stream.poll_next_bytes(&mut cx)
    }

    /// A buffered server end whose client has sent `bytes` (none read yet).
    async fn client_sent(bytes: &[u8]) -> (Buffered<DuplexStream>, DuplexStream) {
        let (server, mut client) = duplex(1024);
        client.write_all(bytes).await.unwrap();
        (Buffered::new(server), client)
    }

    /// Waits (at most 5 s) until `stream`'s next bytes are there.
    async fn next_bytes<S: NextBytes>(stream: &mut S) {
        let waited = std::future::poll_fn(|cx| stream.poll_next_bytes(cx));
        tokio::time::timeout(Duration::from_secs(5), waited)
            .await
            .unwrap()
            .unwrap();
    }

    /// A buffered server end whose client sent `request`, read whole, and got `response`.
    async fn after_one_exchange(
        request: &[u8],
        response: &[u8],
    ) -> (Buffered<DuplexStream>, DuplexStream) {
        let (server, mut client) = duplex(64 * 1024);
        let mut server = Buffered::new(server);
        client.write_all(request).await.unwrap();
        let mut got = vec![0; request.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, request);
        server.write_all(response).await.unwrap();
        server.flush().await.unwrap();
        let mut answer = vec![0; response.len()];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, response);
        (server, client)
    }

    #[tokio::test]
    async fn a_connection_waiting_for_its_next_request_holds_no_buffer() {
        let (mut server, mut client) =
            after_one_exchange(b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n").await;
        assert!(!server.holds_no_buffer(), "the exchange used both buffers");
        assert!(poll_once(&mut server).is_pending(), "nothing sent yet");
        assert!(server.holds_no_buffer(), "waiting releases both buffers");

        client
            .write_all(b"GET /next HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        next_bytes(&mut server).await;
        assert!(!server.holds_no_buffer(), "arrived bytes are kept");
        // The bytes that ended the wait are all still there for the request's reader.
        let mut got = vec![0; b"GET /next HTTP/1.1\r\n\r\n".len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"GET /next HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn bytes_already_buffered_end_the_wait_at_once_and_stay_buffered() {
        let (mut server, _client) = client_sent(b"GET /a HTTP/1.1\r\n\r\nGET /b").await;
        let mut first = vec![0; b"GET /a HTTP/1.1\r\n\r\n".len()];
        server.read_exact(&mut first).await.unwrap();
        // `/b` was read along with `/a` into the buffer.
        assert!(matches!(poll_once(&mut server), Poll::Ready(Ok(()))));
        assert!(!server.holds_no_buffer());
        let mut rest = [0u8; 6];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"GET /b");
    }

    #[tokio::test]
    async fn a_reader_that_buffers_itself_takes_the_read_ahead_and_writes_go_straight_out() {
        let (mut server, mut client) = client_sent(b"GET /a HTTP/1.1\r\n\r\nGET /b").await;
        next_bytes(&mut server).await;
        let ahead = server.take_buffering();
        assert_eq!(&ahead[..], b"GET /a HTTP/1.1\r\n\r\nGET /b");
        assert!(server.holds_no_buffer(), "the bytes left with the buffer");
        // Not kept for a flush: the client has it at once.
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        assert!(server.holds_no_buffer(), "nothing was buffered");
        let mut got = [0u8; 19];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"HTTP/1.1 200 OK\r\n\r\n");
    }

    #[tokio::test]
    async fn a_client_closing_between_requests_ends_the_wait_with_an_error() {
        let (mut server, client) = after_one_exchange(
            b"GET / HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        )
        .await;
        drop(client);
        let waited = std::future::poll_fn(|cx| server.poll_next_bytes(cx));
        let err = tokio::time::timeout(Duration::from_secs(5), waited)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_ends_at_the_keep_alive_idle_deadline() {
        let limits = Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..Limits::default()
        };
        let clock = ConnClock::new(&limits);
        let (server, _client) = duplex(1024);
        let mut server = Buffered::new(server).with_clock(clock.clone());
        clock.busy();
        clock.idle();
        let idle_at = tokio::time::Instant::now();
        let err = std::future::poll_fn(|cx| server.poll_next_bytes(cx))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(idle_at.elapsed(), Duration::from_secs(60));
        assert!(server.holds_no_buffer());
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_byte_of_the_next_request_starts_its_header_deadline() {
        let limits = Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..Limits::default()
        };
        let clock = ConnClock::new(&limits);
        let (server, mut client) = duplex(1024);
        let mut server = Buffered::new(server).with_clock(clock.clone());
        clock.busy();
        clock.idle();
        tokio::time::advance(Duration::from_secs(30)).await;
        client.write_all(b"G").await.unwrap();
        std::future::poll_fn(|cx| server.poll_next_bytes(cx))
            .await
            .unwrap();
        assert_eq!(
            clock.deadline(),
            Some(tokio::time::Instant::now() + Duration::from_secs(10))
        );
    }
}
