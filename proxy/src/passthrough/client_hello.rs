//! The server name of a TLS ClientHello, read from the first bytes of a connection without
//! terminating TLS (RFC 8446 §4.1.2 and RFC 6066 §3 for the layout; TLS 1.0–1.3 share it).
//!
//! ```text
//! bytes ─► records: type 22 (handshake), version 3.x, length 1..=16384 — a ClientHello may span
//!          several records: their payloads are joined until the handshake message is whole
//!       ─► handshake header: type 1 (ClientHello), 24-bit length (at most MAX_HELLO)
//!       ─► version, random, session id (≤ 32), cipher suites (even, ≥ 2), compression (≥ 1),
//!          extensions (optional; each type + length, inside the message)
//!       ─► extension 0 (server_name): list of (type, name); the first host_name (type 0) wins
//! ```
//!
//! [`parse`] never panics and never reads past what it was given: it answers
//! [`Hello::Incomplete`] while more bytes may complete the message, and [`Hello::Invalid`] as
//! soon as they cannot (the caller closes the connection). Every length is checked before use,
//! so hostile input costs at most one pass over [`MAX_HELLO`] bytes.

/// The largest ClientHello accepted (handshake message, header included). Real ones are a few
/// hundred bytes; post-quantum key shares bring them near 2 KiB. The bytes buffered to find
/// the name never exceed this plus one record header per record.
pub const MAX_HELLO: usize = 16 * 1024;

/// Largest TLS record payload (RFC 8446 §5.1: 2^14).
const MAX_RECORD: usize = 16 * 1024;

/// What the bytes read so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// More bytes are needed.
    Incomplete,
    /// A whole ClientHello; its first host_name, if it has one (bytes as sent, not checked as
    /// a DNS name: that is `meridian_model::sni::normalize_sni`'s job).
    Complete {
        /// The server name, `None` without a server_name extension.
        server_name: Option<String>,
    },
    /// Not a TLS ClientHello (or one this parser refuses); why.
    Invalid(&'static str),
}

/// Reads the ClientHello at the start of `buf` (module docs).
pub fn parse(buf: &[u8]) -> Hello {
    let mut message = Vec::new();
    let mut rest = buf;
    // The handshake message length, once its 4-byte header has arrived.
    let mut wanted: Option<usize> = None;
    let mut partial = false;
    // Each record carries at least one byte and `wanted` is at most MAX_HELLO, so this ends
    // within MAX_HELLO + 1 rounds.
    loop {
        if let Some(invalid) = header_check(&message, wanted) {
            return invalid;
        }
        if wanted.is_none() && message.len() >= 4 {
            wanted = Some(4 + u24(&message[1..4]));
        }
        if let Some(w) = wanted
            && message.len() >= w
        {
            return client_hello(&message[..w]);
        }
        if partial {
            return Hello::Incomplete;
        }
        let Some(header) = rest.get(..5) else {
            return Hello::Incomplete;
        };
        if header[0] != 22 {
            return Hello::Invalid("not a TLS handshake record");
        }
        if header[1] != 3 {
            return Hello::Invalid("not a TLS record version");
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > MAX_RECORD {
            return Hello::Invalid("TLS record length out of range");
        }
        match rest.get(5..5 + len) {
            Some(payload) => {
                message.extend_from_slice(payload);
                rest = &rest[5 + len..];
            }
            None => {
                // What has arrived of the record counts: it may settle the header.
                message.extend_from_slice(&rest[5..]);
                partial = true;
            }
        }
    }
}

/// The handshake header, once its four bytes are in: a ClientHello of an acceptable length.
fn header_check(message: &[u8], wanted: Option<usize>) -> Option<Hello> {
    if wanted.is_some() {
        return None;
    }
    if message.first().is_some_and(|t| *t != 1) {
        return Some(Hello::Invalid(
            "first handshake message is not a ClientHello",
        ));
    }
    let header = message.get(..4)?;
    let len = u24(&header[1..4]);
    if len < 38 {
        return Some(Hello::Invalid("ClientHello too short"));
    }
    if 4 + len > MAX_HELLO {
        return Some(Hello::Invalid("ClientHello larger than 16 KiB"));
    }
    None
}

fn u24(b: &[u8]) -> usize {
    (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
}

/// A cursor over a byte slice whose reads fail instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    /// A block whose length is the next `u8` (`wide`: `u16`).
    fn block(&mut self, wide: bool) -> Option<&'a [u8]> {
        let n = if wide {
            self.u16()?
        } else {
            usize::from(self.u8()?)
        };
        self.take(n)
    }
}

/// One whole handshake message (header included).
fn client_hello(message: &[u8]) -> Hello {
    match server_name(message) {
        Ok(server_name) => Hello::Complete { server_name },
        Err(why) => Hello::Invalid(why),
    }
}

fn server_name(message: &[u8]) -> Result<Option<String>, &'static str> {
    let mut r = Reader(message.get(4..).ok_or("truncated")?);
    let version = r.take(2).ok_or("truncated version")?;
    if version[0] != 3 {
        return Err("unknown ClientHello version");
    }
    r.take(32).ok_or("truncated random")?;
    let session = r.block(false).ok_or("truncated session id")?;
    if session.len() > 32 {
        return Err("session id longer than 32 bytes");
    }
    let suites = r.block(true).ok_or("truncated cipher suites")?;
    if suites.len() < 2 || suites.len() % 2 != 0 {
        return Err("malformed cipher suites");
    }
    let compression = r.block(false).ok_or("truncated compression methods")?;
    if compression.is_empty() {
        return Err("no compression method");
    }
    if r.0.is_empty() {
        // An SSL 3.0-era hello without extensions: no name.
        return Ok(None);
    }
    let extensions = r.block(true).ok_or("truncated extensions")?;
    if !r.0.is_empty() {
        return Err("bytes after the extensions");
    }
    let mut ext = Reader(extensions);
    let mut name = None;
    let mut seen_sni = false;
    while !ext.0.is_empty() {
        let kind = ext.u16().ok_or("truncated extension")?;
        let body = ext.block(true).ok_or("truncated extension")?;
        if kind != 0 {
            continue;
        }
        if seen_sni {
            return Err("two server_name extensions");
        }
        seen_sni = true;
        name = sni_extension(body)?;
    }
    Ok(name)
}

/// The server_name extension body: the first host_name entry.
fn sni_extension(body: &[u8]) -> Result<Option<String>, &'static str> {
    let mut r = Reader(body);
    let list = r.block(true).ok_or("truncated server_name list")?;
    if !r.0.is_empty() {
        return Err("bytes after the server_name list");
    }
    let mut entries = Reader(list);
    while !entries.0.is_empty() {
        let kind = entries.u8().ok_or("truncated server_name entry")?;
        let value = entries.block(true).ok_or("truncated server_name entry")?;
        if kind == 0 {
            let name = std::str::from_utf8(value).map_err(|_| "server name is not text")?;
            if name.is_empty() || !name.is_ascii() {
                return Err("server name is empty or not ASCII");
            }
            return Ok(Some(name.to_string()));
        }
    }
    Ok(None)
}

/// Test support: a well-formed ClientHello naming `server_name` (no name: no extension), split
/// into records of at most `record` payload bytes.
#[cfg(test)]
pub(crate) fn build(server_name: Option<&str>, record: usize) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]); // two suites
    body.extend_from_slice(&[1, 0]); // null compression
    let mut exts = Vec::new();
    // An unrelated extension first (supported_versions).
    exts.extend_from_slice(&[0, 43, 0, 3, 2, 3, 4]);
    if let Some(n) = server_name {
        let n = n.as_bytes();
        let entry_len = 3 + n.len();
        exts.extend_from_slice(&[0, 0]);
        exts.extend_from_slice(&u16_be(2 + entry_len));
        exts.extend_from_slice(&u16_be(entry_len));
        exts.push(0);
        exts.extend_from_slice(&u16_be(n.len()));
        exts.extend_from_slice(n);
    }
    body.extend_from_slice(&u16_be(exts.len()));
    body.extend_from_slice(&exts);
    let mut message = vec![1];
    message.extend_from_slice(&[
        (body.len() >> 16) as u8,
        (body.len() >> 8) as u8,
        body.len() as u8,
    ]);
    message.extend_from_slice(&body);
    let mut out = Vec::new();
    for chunk in message.chunks(record.max(1)) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&u16_be(chunk.len()));
        out.extend_from_slice(chunk);
    }
    out
}

#[cfg(test)]
fn u16_be(n: usize) -> [u8; 2] {
    u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    fn named(n: &str) -> Hello {
        Hello::Complete {
            server_name: Some(n.into()),
        }
    }

    #[test]
    fn reads_the_name_from_one_or_many_records() {
        for record in [1, 7, 100, 16_384] {
            assert_eq!(
                parse(&build(Some("a.example.com"), record)),
                named("a.example.com")
            );
        }
        assert_eq!(
            parse(&build(None, 16_384)),
            Hello::Complete { server_name: None }
        );
        // Bytes after the ClientHello (a client that sends early data) do not matter.
        let mut more = build(Some("b.example.com"), 50);
        more.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
        assert_eq!(parse(&more), named("b.example.com"));
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let hello = build(Some("a.example.com"), 40);
        for cut in 0..hello.len() {
            assert_eq!(parse(&hello[..cut]), Hello::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_client_hello() {
        let http = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(matches!(parse(http), Hello::Invalid(_)));
        // A handshake record with a ServerHello.
        assert!(matches!(
            parse(&[22, 3, 1, 0, 4, 2, 0, 0, 40]),
            Hello::Invalid(_)
        ));
        // A record longer than TLS allows.
        assert!(matches!(parse(&[22, 3, 1, 0x40, 0x01]), Hello::Invalid(_)));
        // A ClientHello announcing more than 16 KiB: refused before it is read.
        assert!(matches!(
            parse(&[22, 3, 1, 0, 4, 1, 0, 0x40, 0]),
            Hello::Invalid(_)
        ));
        // A name that is not text.
        let mut bad = build(Some("a.example.com"), 16_384);
        let at = bad.len() - 3;
        bad[at] = 0xff;
        assert!(matches!(parse(&bad), Hello::Invalid(_)));
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn hello_shaped_bytes_never_panic(
            mut bytes in prop::collection::vec(any::<u8>(), 0..600),
            len in 0usize..600,
        ) {
            // A valid record and handshake header over random contents reaches the body parser.
            let hl = len.min(bytes.len());
            let mut framed = vec![22, 3, 1];
            framed.extend_from_slice(&u16_be(hl + 4));
            framed.extend_from_slice(&[1, 0, (hl >> 8) as u8, hl as u8]);
            bytes.truncate(hl);
            framed.extend_from_slice(&bytes);
            let _ = parse(&framed);
        }

        #[test]
        fn names_round_trip_across_record_splits(
            name in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z0-9]{1,10}){0,4}",
            record in 1usize..300,
        ) {
            prop_assert_eq!(parse(&build(Some(&name), record)), named(&name));
        }

        #[test]
        fn a_flipped_byte_is_an_answer_not_a_panic(
            at in any::<prop::sample::Index>(),
            value in any::<u8>(),
            record in 1usize..64,
        ) {
            let mut hello = build(Some("a.example.com"), record);
            let i = at.index(hello.len());
            hello[i] = value;
            let _ = parse(&hello);
        }
    }
}
