//! Message bodies as their framing delimits them, for both sides of the codec: the request
//! bodies the session reads from clients and the response bodies the client reads from
//! backends. One rule set, so both directions end a body, leave pipelined bytes and report
//! broken framing alike.
//!
//! ```text
//! read buffer ──take──► Piece(bytes split off the buffer, no copy for Length / UntilClose)
//!                   ├─► End (the framing says the body is over; bytes behind it stay)
//!                   └─► More (read more into the buffer, then take again)
//! end of stream ──at_close──► the end for UntilClose, a truncated body otherwise
//! ```

use bytes::{Buf, Bytes, BytesMut};

use super::CodecError;
use super::chunked::ChunkedDecoder;

/// Where a body stands: how it is delimited and how much of it is still to come.
#[derive(Debug)]
pub(crate) enum BodyState {
    /// This many bytes are still to come.
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Until the peer closes (no framing on a response, an unknown coding, or after a 101).
    UntilClose,
    Done,
}

/// What [`BodyState::take`] found in the buffer.
#[derive(Debug)]
pub(crate) enum Take {
    /// The next piece of the body.
    Piece(Bytes),
    /// The body is over; bytes left in the buffer are not the body's.
    End,
    /// The buffer holds no further body bytes yet: read more, then take again.
    More,
}

impl BodyState {
    pub(crate) fn is_done(&self) -> bool {
        matches!(self, BodyState::Done)
    }

    /// Takes the next piece of the body off the front of `buf`.
    pub(crate) fn take(&mut self, buf: &mut BytesMut) -> Result<Take, CodecError> {
        // Bounded: every turn removes chunk framing from the buffer or returns.
        loop {
            match self {
                BodyState::Done | BodyState::Length(0) => {
                    *self = BodyState::Done;
                    return Ok(Take::End);
                }
                _ if buf.is_empty() => return Ok(Take::More),
                BodyState::Length(left) => {
                    let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= n as u64;
                    if *left == 0 {
                        *self = BodyState::Done;
                    }
                    return Ok(Take::Piece(buf.split_to(n).freeze()));
                }
                BodyState::UntilClose => return Ok(Take::Piece(buf.split().freeze())),
                BodyState::Chunked(decoder) => {
                    let mut data = BytesMut::with_capacity(buf.len());
                    let used = decoder.decode(buf, &mut data)?;
                    buf.advance(used);
                    if decoder.is_done() {
                        *self = BodyState::Done;
                    }
                    if !data.is_empty() {
                        return Ok(Take::Piece(data.freeze()));
                    }
                    if used == 0 && !self.is_done() {
                        // An incomplete chunk line: it needs more bytes behind it.
                        return Ok(Take::More);
                    }
                    // Framing taken off: what is left may decode further (or the body ended).
                }
            }
        }
    }

    /// The peer closed its side: `true` when that ends the body (a close-delimited one, or one
    /// already over), `false` when the body was cut short.
    pub(crate) fn at_close(&mut self) -> bool {
        match self {
            BodyState::UntilClose | BodyState::Done => {
                *self = BodyState::Done;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Feeds `wire` in pieces of `step` bytes and collects the body, the bytes behind it (read
    /// or not yet) and whether it ended.
    fn run(mut state: BodyState, wire: &[u8], step: usize) -> (Vec<u8>, Vec<u8>, bool) {
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        // Bounded: each turn takes a piece, ends, or feeds at least one byte.
        loop {
            match state.take(&mut buf).unwrap() {
                Take::Piece(p) => body.extend_from_slice(&p),
                Take::End => {
                    let mut rest = buf.to_vec();
                    rest.extend_from_slice(&wire[fed..]);
                    return (body, rest, true);
                }
                Take::More => {
                    if fed == wire.len() {
                        let ended = state.at_close();
                        return (body, buf.to_vec(), ended);
                    }
                    let n = step.min(wire.len() - fed);
                    buf.extend_from_slice(&wire[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn every_framing_ends_where_it_says_at_any_split() {
        let chunked = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nNEXT";
        for step in 1..chunked.len() {
            let (body, rest, ended) = run(BodyState::Chunked(ChunkedDecoder::new()), chunked, step);
            assert_eq!(
                (&body[..], ended),
                (&b"hello world"[..], true),
                "step {step}"
            );
            assert_eq!(rest, b"NEXT", "step {step}");
            let (body, rest, ended) = run(BodyState::Length(11), b"hello worldNEXT", step);
            assert_eq!(
                (&body[..], &rest[..], ended),
                (&b"hello world"[..], &b"NEXT"[..], true)
            );
            let (body, rest, ended) = run(BodyState::UntilClose, b"hello world", step);
            assert_eq!(
                (&body[..], &rest[..], ended),
                (&b"hello world"[..], &b""[..], true)
            );
        }
    }

    #[test]
    fn a_body_cut_short_is_not_ended_by_the_close() {
        let (body, _, ended) = run(BodyState::Length(20), b"hello", 3);
        assert_eq!((&body[..], ended), (&b"hello"[..], false));
        let (_, _, ended) = run(BodyState::Chunked(ChunkedDecoder::new()), b"5\r\nhel", 2);
        assert!(!ended);
    }

    #[test]
    fn an_empty_length_ends_without_reading() {
        let mut buf = BytesMut::from(&b"NEXT"[..]);
        let mut state = BodyState::Length(0);
        assert!(matches!(state.take(&mut buf).unwrap(), Take::End));
        assert!(state.is_done());
        assert_eq!(&buf[..], b"NEXT");
    }

    #[test]
    fn broken_chunk_framing_is_an_error() {
        let mut buf = BytesMut::from(&b"zz\r\n"[..]);
        let mut state = BodyState::Chunked(ChunkedDecoder::new());
        assert!(matches!(state.take(&mut buf), Err(CodecError::BadChunk(_))));
    }
}
