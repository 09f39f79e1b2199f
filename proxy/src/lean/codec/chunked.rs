//! Chunked request bodies (RFC 9112 section 7.1), decoded: chunk sizes, extensions, the CRLF
//! after each chunk and the trailer section are taken off; only the data goes on. Input may be
//! split anywhere; the decoder keeps its place between calls.

use bytes::BytesMut;

use super::CodecError;

/// Longest chunk-size line or trailer line accepted.
const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a chunk-size line.
    Size,
    /// This many data bytes of the current chunk are still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines, up to the empty one.
    Trailer,
    Done,
}

/// Decodes one chunked body.
#[derive(Debug)]
pub(crate) struct ChunkedDecoder {
    state: State,
}

impl ChunkedDecoder {
    pub(crate) fn new() -> Self {
        ChunkedDecoder { state: State::Size }
    }

    /// The last chunk and the trailer have been read.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input`, appending data to `out`; returns how many bytes of `input` were
    /// consumed. Bytes after the body's end are left (a pipelined request's); an incomplete
    /// line is left for the next call with more bytes behind it.
    pub(crate) fn decode(&mut self, input: &[u8], out: &mut BytesMut) -> Result<usize, CodecError> {
        let mut at = 0;
        // Every turn consumes bytes, changes state towards Done, or returns.
        loop {
            let rest = &input[at..];
            match self.state {
                State::Done => return Ok(at),
                State::Data(left) => {
                    let n = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    out.extend_from_slice(&rest[..n]);
                    at += n;
                    let left = left - n as u64;
                    if left > 0 {
                        self.state = State::Data(left);
                        return Ok(at);
                    }
                    self.state = State::DataEnd;
                }
                State::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(at);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(CodecError::BadChunk("chunk data not followed by CRLF"));
                    }
                    at += 2;
                    self.state = State::Size;
                }
                State::Size | State::Trailer => {
                    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                        if rest.len() > MAX_LINE {
                            return Err(CodecError::BadChunk("chunk line too long"));
                        }
                        return Ok(at);
                    };
                    if nl > MAX_LINE {
                        return Err(CodecError::BadChunk("chunk line too long"));
                    }
                    let line = &rest[..=nl];
                    at += nl + 1;
                    if self.state == State::Trailer {
                        // Trailer fields are dropped (as pingora's session drops them).
                        if line == b"\r\n" {
                            self.state = State::Done;
                        }
                        continue;
                    }
                    self.state = match httparse::parse_chunk_size(line) {
                        Ok(httparse::Status::Complete((_, 0))) => State::Trailer,
                        Ok(httparse::Status::Complete((_, size))) => State::Data(size),
                        _ => return Err(CodecError::BadChunk("invalid chunk size line")),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const BODY: &[u8] = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET /next";

    #[test]
    fn a_whole_body_is_decoded_and_the_next_request_left() {
        let mut d = ChunkedDecoder::new();
        let mut out = BytesMut::new();
        let used = d.decode(BODY, &mut out).unwrap();
        assert_eq!(&out[..], b"hello world");
        assert!(d.is_done());
        assert_eq!(&BODY[used..], b"GET /next");
    }

    #[test]
    fn any_split_of_the_input_decodes_the_same() {
        for cut in 0..BODY.len() {
            let mut d = ChunkedDecoder::new();
            let mut out = BytesMut::new();
            // What a session does: keep unconsumed bytes and append the next read.
            let mut pending = BODY[..cut].to_vec();
            let used = d.decode(&pending, &mut out).unwrap();
            pending.drain(..used);
            pending.extend_from_slice(&BODY[cut..]);
            let used = d.decode(&pending, &mut out).unwrap();
            assert_eq!(&out[..], b"hello world", "cut at {cut}");
            assert!(d.is_done(), "cut at {cut}");
            assert_eq!(&pending[used..], b"GET /next", "cut at {cut}");
        }
    }

    #[test]
    fn broken_framing_is_refused() {
        for bad in [&b"zz\r\nhello\r\n"[..], b"5\r\nhelloXX0\r\n\r\n", b"-1\r\n"] {
            let mut d = ChunkedDecoder::new();
            let e = d.decode(bad, &mut BytesMut::new()).unwrap_err();
            assert!(matches!(e, CodecError::BadChunk(_)), "{bad:?}: {e:?}");
        }
        let long = vec![b'1'; MAX_LINE + 1];
        let e = ChunkedDecoder::new().decode(&long, &mut BytesMut::new());
        assert!(e.is_err());
    }
}
