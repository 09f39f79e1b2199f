//! The request head a try sends upstream, built from the client's head the way the framework path
//! (pingora-proxy 0.9) builds it, so a backend cannot tell the two paths apart:
//!
//! ```text
//! client head ─ HTTP/1 origin-form target: an Overlay (edits beside the client's head, which
//!   is not copied) │ otherwise: a clone ─ HTTP/1.1 ─ hop-by-hop headers out (RFC 9110 §7.6.1:
//!   Connection, the headers it nominates, Keep-Alive, TE, Trailer, Transfer-Encoding, Upgrade,
//!   Proxy-*, HTTP2-Settings); a WebSocket upgrade gets `Connection: Upgrade` + `Upgrade:
//!   websocket` back ─ Forwarder::upstream_request_filter (Via, trace context,
//!   x-meridian-backend; through `headers::UpstreamFields`, which both implement)
//!   ─ authority: a target with one (absolute form) follows a Host a filter set, and Host follows
//!     the target; an origin-form one needs at most one Host without userinfo ─ a body without
//!     framing headers goes chunked
//! HTTP/1 upstream: encoded by codec/wire.rs    h2c upstream: :authority from Host, Host removed
//! ```
//!
//! Only WebSocket upgrades are forwarded, as on the framework path (pingora's default
//! `H1UpgradePolicy::WebSocketOnly`): another `Upgrade` token reaches the backend as a plain
//! request, which answers it without switching.

use bytes::BytesMut;
use http::header::{self, HeaderName};
use http::{HeaderValue, Version};
use pingora_core::protocols::http::authority::{
    RawTargetAuthority, raw_target_authority, validate_request_authority,
};
use pingora_error::{Error, ErrorType, OrErr, Result};
use pingora_http::RequestHeader;
use smallvec::SmallVec;

use super::codec::wire::{self, HeadFacts, WireHead, titled};
use crate::gateway::{Ctx, Downstream, Forwarder};
use crate::headers::UpstreamFields;

/// Hop-by-hop headers no upstream request carries.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

fn invalid(why: &'static str) -> Box<Error> {
    Error::explain(ErrorType::InvalidHTTPHeader, why)
}

/// The head of a try at an HTTP/1 upstream. Errors are classified as the framework path
/// classifies them: a client head that cannot be forwarded is the client's (downstream), one a
/// filter broke is ours (internal).
///
/// An origin-form target (the usual case) goes up as edits over the client's head
/// ([`Overlay`]): the fields a copy edited in place would give, without the copy. Any other
/// target (absolute form, `*`) goes the long way, on a copy.
pub(super) fn for_h1<'a>(
    fwd: &Forwarder,
    session: &'a mut impl Downstream,
    ctx: &Ctx,
) -> Result<Upward<'a>> {
    if session.req_header().uri.authority().is_some()
        || session.req_header().raw_path().first() != Some(&b'/')
    {
        return for_h1_copied(fwd, session, ctx).map(|h| Upward::Copied(Box::new(h)));
    }
    let body = !session.is_body_empty();
    let base = session.req_header();
    let mut up = Overlay::new(base);
    let http11 = base.version == Version::HTTP_11;
    let strip = hop_by_hop(base, http11).map_err(|e| e.into_down())?;
    strip.apply(&mut up).map_err(|e| e.into_down())?;
    fwd.upstream_request_filter(&mut up, ctx)?;
    // What follow_host, host_from_target and validate_request_authority check of an
    // origin-form head (nothing in it to rewrite): one Host at most, without userinfo.
    {
        let mut hosts = up.values(&header::HOST);
        if hosts.next().is_some_and(|h| h.as_bytes().contains(&b'@')) {
            return Err(invalid("userinfo in Host").into_in());
        }
        if hosts.next().is_some() {
            return Err(invalid("multiple Host header fields").into_in());
        }
    }
    if body
        && up.values(&header::CONTENT_LENGTH).next().is_none()
        && up.values(&header::TRANSFER_ENCODING).next().is_none()
    {
        up.set(
            &header::TRANSFER_ENCODING,
            None,
            HeaderValue::from_static("chunked"),
        )?;
    }
    Ok(Upward::Over(up))
}

/// [`for_h1`] on a copy of the client's head, edited in place.
fn for_h1_copied(
    fwd: &Forwarder,
    session: &mut impl Downstream,
    ctx: &Ctx,
) -> Result<RequestHeader> {
    let mut req = session.req_header().clone();
    let had_host = req.headers.contains_key(header::HOST);
    let http11 = req.version == Version::HTTP_11;
    req.set_version(Version::HTTP_11);
    let strip = hop_by_hop(&req, http11).map_err(|e| e.into_down())?;
    strip.apply(&mut req).map_err(|e| e.into_down())?;
    fwd.upstream_request_filter(&mut req, ctx)?;
    follow_host(&mut req).map_err(|e| e.into_in())?;
    // A Host-less HTTP/1.0 request in origin form stays without one.
    let target_authority = raw_target_authority(req.raw_path()).authority().is_some();
    if had_host || req.uri.authority().is_some() || target_authority {
        host_from_target(&mut req).map_err(|e| e.into_in())?;
    }
    validate_request_authority(&req).map_err(|e| e.into_in())?;
    if !session.is_body_empty()
        && !req.headers.contains_key(header::CONTENT_LENGTH)
        && !req.headers.contains_key(header::TRANSFER_ENCODING)
    {
        req.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(req)
}

/// The head of a try at an HTTP/1 upstream, ready to be encoded.
// The overlay is the usual variant and lives for one try: boxing it would cost the allocation
// it saves.
#[allow(clippy::large_enum_variant)]
pub(super) enum Upward<'a> {
    /// Edits over the client's head.
    Over(Overlay<'a>),
    /// A copy of it, edited.
    Copied(Box<RequestHeader>),
}

impl WireHead for Upward<'_> {
    fn encode(&self, out: &mut BytesMut) -> Result<HeadFacts> {
        match self {
            Upward::Over(o) => o.encode(out),
            Upward::Copied(h) => h.encode(out),
        }
    }

    fn size_hint(&self) -> usize {
        match self {
            Upward::Over(o) => o.size_hint(),
            Upward::Copied(h) => h.size_hint(),
        }
    }
}

/// A field an [`Overlay`] sends that the client's head does not have as it is.
struct SetField {
    name: HeaderName,
    spelled: Option<&'static str>,
    value: HeaderValue,
    /// Sent where the client's first field of this name was (it replaced those fields).
    in_place: bool,
}

/// The upstream head as edits over the client's: its fields minus `dropped`, with `set` in
/// place of the first dropped field of their name or after the client's fields. Edits follow
/// `http::HeaderMap`'s rules (see [`UpstreamFields`]), so the fields, and each name's values in
/// their order, are those of a copy edited in place; across names the client's order is kept
/// (a copy's map moves its last field into a removed one's place). The request line is the
/// client's method and target with HTTP/1.1.
pub(super) struct Overlay<'a> {
    base: &'a RequestHeader,
    /// Names of the client's fields that are not sent as they are.
    dropped: SmallVec<[HeaderName; 4]>,
    set: SmallVec<[SetField; 4]>,
}

impl<'a> Overlay<'a> {
    fn new(base: &'a RequestHeader) -> Self {
        Overlay {
            base,
            dropped: SmallVec::new(),
            set: SmallVec::new(),
        }
    }

    fn is_dropped(&self, name: &HeaderName) -> bool {
        self.dropped.iter().any(|d| d == name)
    }

    /// Writes `f` as a head without the names' spelling writes it, or with (`preserve`).
    fn put(f: &SetField, preserve: bool, out: &mut BytesMut, facts: &mut HeadFacts) {
        let name = match f.spelled {
            Some(s) if preserve => s,
            _ => titled(&f.name),
        };
        wire::field(name.as_bytes(), f.value.as_bytes(), out);
        facts.field(&f.name, f.value.as_bytes());
    }
}

impl UpstreamFields for Overlay<'_> {
    fn values<'b>(&'b self, name: &'b HeaderName) -> impl Iterator<Item = &'b HeaderValue> + 'b {
        let base = (!self.is_dropped(name)).then(|| self.base.headers.get_all(name).iter());
        base.into_iter().flatten().chain(
            self.set
                .iter()
                .filter(move |f| f.name == *name)
                .map(|f| &f.value),
        )
    }

    fn set(
        &mut self,
        name: &HeaderName,
        spelled: Option<&'static str>,
        value: HeaderValue,
    ) -> Result<()> {
        // `set` holds at most one field per name (this replaces it, `remove` drops it).
        if let Some(f) = self.set.iter_mut().find(|f| f.name == *name) {
            // Set before: it keeps its place with the new value.
            f.value = value;
            f.spelled = spelled;
            return Ok(());
        }
        let in_place = !self.is_dropped(name) && self.base.headers.contains_key(name);
        if in_place {
            self.dropped.push(name.clone());
        }
        self.set.push(SetField {
            name: name.clone(),
            spelled,
            value,
            in_place,
        });
        Ok(())
    }

    fn remove(&mut self, name: &HeaderName) {
        self.set.retain(|f| f.name != *name);
        if !self.is_dropped(name) {
            self.dropped.push(name.clone());
        }
    }
}

impl WireHead for Overlay<'_> {
    fn encode(&self, out: &mut BytesMut) -> Result<HeadFacts> {
        let base = self.base;
        wire::request_line(&base.method, base.raw_path(), Version::HTTP_11, out)?;
        let mut facts = HeadFacts::new(&base.method);
        let preserve = base.has_case();
        let mut spelled = base.case_header_iter();
        // A name's fields come one after another (HeaderMap keeps a name's values together).
        let mut previous: Option<&HeaderName> = None;
        for (name, value) in &base.headers {
            let case = spelled.next().map(|(c, _)| c.as_slice());
            let first_of_name = previous != Some(name);
            previous = Some(name);
            if self.is_dropped(name) {
                if first_of_name
                    && let Some(f) = self.set.iter().find(|f| f.in_place && f.name == *name)
                {
                    Self::put(f, preserve, out, &mut facts);
                }
                continue;
            }
            let written = case.unwrap_or_else(|| titled(name).as_bytes());
            wire::field(written, value.as_bytes(), out);
            facts.field(name, value.as_bytes());
        }
        for f in self.set.iter().filter(|f| !f.in_place) {
            Self::put(f, preserve, out, &mut facts);
        }
        out.extend_from_slice(b"\r\n");
        Ok(facts)
    }

    fn size_hint(&self) -> usize {
        256 + 48 * (self.base.headers.len() + self.set.len())
    }
}

/// The head of a try at an h2c upstream: the HTTP/1 head's fields without the hop-by-hop ones,
/// `:scheme http`, `:authority` from Host (which HTTP/2 does not carry).
pub(super) fn for_h2(
    fwd: &Forwarder,
    session: &impl Downstream,
    ctx: &Ctx,
) -> Result<Box<RequestHeader>> {
    let mut req = Box::new(session.req_header().clone());
    if !req.raw_path_is_utf8() {
        return Err(invalid("a non-UTF-8 target cannot be forwarded over HTTP/2").into_down());
    }
    let strip = hop_by_hop(&req, false).map_err(|e| e.into_down())?;
    strip.apply(&mut *req).map_err(|e| e.into_down())?;
    req.set_version(Version::HTTP_2);
    fwd.upstream_request_filter(&mut *req, ctx)?;
    follow_host(&mut req).map_err(|e| e.into_in())?;
    validate_request_authority(&req).map_err(|e| e.into_in())?;
    let target_authority = raw_target_authority(req.raw_path())
        .authority()
        .map(<[u8]>::to_vec);
    let path_and_query = h2_path(&req).map_err(|e| e.into_in())?;
    let host = req.remove_header(&header::HOST);
    let authority = host
        .as_ref()
        .map(HeaderValue::as_bytes)
        .or(target_authority.as_deref())
        .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()))
        .ok_or_else(|| invalid("no authority for an HTTP/2 upstream request").into_in())?;
    let authority = http::uri::Authority::try_from(authority)
        .or_err(ErrorType::InvalidHTTPHeader, "Host is not an authority")
        .map_err(|e| e.into_in())?;
    if authority.as_str().contains('@') {
        return Err(invalid("userinfo in Host").into_in());
    }
    let uri = http::Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
        .or_err(ErrorType::InvalidHTTPHeader, "no HTTP/2 target from Host")
        .map_err(|e| e.into_in())?;
    req.set_uri(uri);
    Ok(req)
}

/// What [`hop_by_hop`] takes off a head going upstream.
struct Strip {
    /// The client's fields that go: those `Connection` nominates and the standard hop-by-hop
    /// ones it has.
    names: SmallVec<[HeaderName; 4]>,
    /// A WebSocket upgrade from an HTTP/1.1 client: `Connection: Upgrade` and `Upgrade:
    /// websocket` go up again.
    websocket: bool,
}

/// The headers `Connection` nominates and the standard hop-by-hop ones; a WebSocket upgrade
/// from an HTTP/1.1 client keeps exactly `Connection: Upgrade` and `Upgrade: websocket`. The
/// nominations were checked by the role already (framing.rs: tokens, at most nine, no
/// protected names); checked again here so this cannot forward a forbidden one.
fn hop_by_hop(req: &RequestHeader, http11: bool) -> Result<Strip> {
    let websocket = http11
        && req
            .headers
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let mut names: SmallVec<[HeaderName; 4]> = SmallVec::new();
    for token in req
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
    {
        if names.len() >= crate::gateway::MAX_NOMINATIONS {
            return Err(invalid("too many Connection options"));
        }
        let name = HeaderName::from_bytes(token).or_err(
            ErrorType::InvalidHTTPHeader,
            "Connection option is not a token",
        )?;
        if matches!(
            name.as_str(),
            "host" | "x-forwarded-for" | "x-forwarded-host" | "x-forwarded-proto"
        ) {
            return Err(invalid("Connection nominates a protected header"));
        }
        names.push(name);
    }
    // One pass over the few names present instead of a lookup per hop-by-hop name.
    for name in req.headers.keys() {
        if HOP_BY_HOP.contains(&name.as_str()) && !names.contains(name) {
            names.push(name.clone());
        }
    }
    Ok(Strip { names, websocket })
}

impl Strip {
    fn apply(self, req: &mut impl UpstreamFields) -> Result<()> {
        for name in &self.names {
            req.remove(name);
        }
        if self.websocket {
            req.set(
                &header::CONNECTION,
                None,
                HeaderValue::from_static("Upgrade"),
            )?;
            req.set(
                &header::UPGRADE,
                None,
                HeaderValue::from_static("websocket"),
            )?;
        }
        Ok(())
    }
}

/// A target with an authority (absolute form) takes the Host a filter may have set, so target and
/// Host never disagree upstream. Origin-form targets (the usual case) are left alone.
fn follow_host(req: &mut RequestHeader) -> Result<()> {
    let Some(host) = req.headers.get(header::HOST).cloned() else {
        return Ok(());
    };
    if host.as_bytes().contains(&b'@') {
        return Err(invalid("userinfo in Host"));
    }
    if let Some(current) = req.uri.authority() {
        if current.as_str().as_bytes() == host.as_bytes() {
            return Ok(());
        }
        if !req.raw_path_is_utf8() {
            return Err(invalid(
                "a non-UTF-8 target cannot take the Host's authority",
            ));
        }
        let authority = http::uri::Authority::try_from(host.as_bytes())
            .or_err(ErrorType::InvalidHTTPHeader, "Host is not an authority")?;
        let mut parts = http::uri::Parts::default();
        parts.scheme = req.uri.scheme().cloned();
        parts.authority = Some(authority);
        parts.path_and_query = req.uri.path_and_query().cloned();
        let uri = http::Uri::from_parts(parts).or_err(
            ErrorType::InvalidHTTPHeader,
            "target with the Host's authority",
        )?;
        req.set_uri(uri);
        return Ok(());
    }
    if let RawTargetAuthority::Absolute {
        scheme,
        authority,
        path_and_query,
    } = raw_target_authority(req.raw_path())
    {
        if authority == host.as_bytes() {
            return Ok(());
        }
        http::uri::Authority::try_from(host.as_bytes())
            .or_err(ErrorType::InvalidHTTPHeader, "Host is not an authority")?;
        let target = [scheme, b"://", host.as_bytes(), path_and_query].concat();
        req.set_raw_path(&target)?;
    }
    Ok(())
}

/// Host follows the target's authority when it has one; an HTTP/1.1 head always has a Host.
fn host_from_target(req: &mut RequestHeader) -> Result<()> {
    let authority = req
        .uri
        .authority()
        .map(|a| a.as_str().as_bytes().to_vec())
        .or_else(|| {
            raw_target_authority(req.raw_path())
                .authority()
                .map(<[u8]>::to_vec)
        });
    let Some(authority) = authority else {
        if !req.headers.contains_key(header::HOST) {
            req.insert_header(header::HOST, "")?;
        }
        return Ok(());
    };
    if authority.contains(&b'@') {
        return Err(invalid("userinfo in the request target"));
    }
    let mut hosts = req.headers.get_all(header::HOST).iter();
    if hosts.next().is_some_and(|h| h.as_bytes() == authority) && hosts.next().is_none() {
        return Ok(());
    }
    let host = HeaderValue::from_bytes(&authority).or_err(
        ErrorType::InvalidHTTPHeader,
        "target authority is not a Host value",
    )?;
    req.insert_header(header::HOST, host)
}

/// The `:path` of an HTTP/2 request: origin form as is, an absolute-form target's path and query
/// (`/` when empty).
fn h2_path(req: &RequestHeader) -> Result<http::uri::PathAndQuery> {
    let target = req.raw_path();
    let parsed = req
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    if target.starts_with(b"/") || target == b"*" {
        return Ok(parsed);
    }
    match raw_target_authority(target) {
        RawTargetAuthority::None => Ok(parsed),
        RawTargetAuthority::AmbiguousAuthority => Err(invalid("ambiguous absolute-form target")),
        RawTargetAuthority::Absolute { path_and_query, .. } => {
            if path_and_query.is_empty() {
                return Ok(http::uri::PathAndQuery::from_static("/"));
            }
            let mut origin = Vec::with_capacity(path_and_query.len() + 1);
            if path_and_query.first() == Some(&b'?') {
                origin.push(b'/');
            }
            origin.extend_from_slice(path_and_query);
            http::uri::PathAndQuery::try_from(origin)
                .or_err(ErrorType::InvalidHTTPHeader, "absolute-form target path")
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn strip_hop_by_hop(req: &mut RequestHeader, http11: bool) -> Result<()> {
        hop_by_hop(req, http11)?.apply(req)
    }

    fn req(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn hop_by_hop_headers_go_and_a_websocket_upgrade_stays() {
        let mut r = req(
            "/",
            &[
                ("connection", "keep-alive, x-gw"),
                ("x-gw", "1"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("x-kept", "1"),
            ],
        );
        strip_hop_by_hop(&mut r, true).unwrap();
        for gone in ["connection", "x-gw", "keep-alive", "te"] {
            assert!(r.headers.get(gone).is_none(), "{gone}");
        }
        assert_eq!(r.headers.get("x-kept").unwrap(), "1");

        let mut r = req(
            "/",
            &[
                ("connection", "keep-alive, Upgrade"),
                ("upgrade", "WebSocket"),
            ],
        );
        strip_hop_by_hop(&mut r, true).unwrap();
        assert_eq!(r.headers.get("connection").unwrap(), "Upgrade");
        assert_eq!(r.headers.get("upgrade").unwrap(), "websocket");

        // Another protocol, or HTTP/1.0: a plain request upstream.
        for (upgrade, http11) in [("h2c", true), ("websocket", false)] {
            let mut r = req("/", &[("connection", "Upgrade"), ("upgrade", upgrade)]);
            strip_hop_by_hop(&mut r, http11).unwrap();
            assert!(r.headers.get("upgrade").is_none(), "{upgrade}");
            assert!(r.headers.get("connection").is_none(), "{upgrade}");
        }

        let mut r = req("/", &[("connection", "host")]);
        assert!(strip_hop_by_hop(&mut r, true).is_err());
    }

    #[test]
    fn an_absolute_target_and_host_agree_upstream() {
        // A filter changed Host: the absolute-form target follows it.
        let mut r = req("http://a.example/p?q", &[("host", "b.example")]);
        follow_host(&mut r).unwrap();
        host_from_target(&mut r).unwrap();
        assert_eq!(r.raw_path(), b"http://b.example/p?q");
        assert_eq!(r.headers.get("host").unwrap(), "b.example");

        // Origin form: Host is what it is, and an HTTP/1.1 head gets one.
        let mut r = req("/p", &[]);
        follow_host(&mut r).unwrap();
        host_from_target(&mut r).unwrap();
        assert_eq!(r.raw_path(), b"/p");
        assert_eq!(r.headers.get("host").unwrap(), "");

        let mut r = req("/p", &[("host", "u@b")]);
        assert!(follow_host(&mut r).is_err());
    }

    #[test]
    fn an_h2_path_comes_from_the_target() {
        assert_eq!(h2_path(&req("/a?b", &[])).unwrap().as_str(), "/a?b");
        assert_eq!(h2_path(&req("http://h", &[])).unwrap().as_str(), "/");
        assert_eq!(
            h2_path(&req("http://h?x=1", &[])).unwrap().as_str(),
            "/?x=1"
        );
        assert_eq!(h2_path(&req("http://h/p", &[])).unwrap().as_str(), "/p");
    }

    /// One edit of an upstream head, applied alike to a copy and to an overlay.
    #[derive(Clone, Copy)]
    enum Edit {
        Set(&'static str, Option<&'static str>, &'static str),
        Remove(&'static str),
        Strip(bool),
    }

    fn apply(edits: &[Edit], head: &mut impl UpstreamFields, base: &RequestHeader) {
        for e in edits {
            match *e {
                Edit::Set(n, spelled, v) => head
                    .set(
                        &HeaderName::from_static(n),
                        spelled,
                        HeaderValue::from_static(v),
                    )
                    .unwrap(),
                Edit::Remove(n) => head.remove(&HeaderName::from_static(n)),
                Edit::Strip(http11) => hop_by_hop(base, http11).unwrap().apply(head).unwrap(),
            }
        }
    }

    /// The head's lines, the request line first, then the fields stably sorted by name.
    fn by_name(head: &str) -> Vec<String> {
        let mut lines: Vec<String> = head.split("\r\n").map(str::to_string).collect();
        lines[1..].sort_by_key(|l| l.split(':').next().unwrap_or("").to_ascii_lowercase());
        lines
    }

    /// The overlay sends what a copy of the client's head, edited in place, sends: the same
    /// bytes (fields, order, spelling) and the same facts, with and without the names'
    /// spelling kept.
    #[test]
    fn an_overlay_encodes_as_an_edited_copy() {
        let heads: &[&[(&str, &str)]] = &[
            &[("Host", "a"), ("User-Agent", "t"), ("Accept", "*/*")],
            &[
                ("host", "a"),
                ("Connection", "keep-alive, X-Gw"),
                ("x-gw", "1"),
                ("Via", "1.1 other"),
                ("X-Multi", "1"),
                ("x-multi", "2"),
                ("Content-Length", "3"),
                ("TE", "trailers"),
            ],
            &[
                ("Host", "a"),
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("X-Meridian-Backend", "spoofed"),
                ("tracestate", "k=v"),
            ],
            &[],
        ];
        let edits: &[&[Edit]] = &[
            &[],
            &[
                Edit::Strip(true),
                Edit::Set("via", Some("Via"), "1.1 meridian"),
                Edit::Set("traceparent", None, "00-1-2-01"),
                Edit::Remove("tracestate"),
                Edit::Remove("x-meridian-backend"),
            ],
            &[
                Edit::Strip(false),
                Edit::Set("x-meridian-backend", None, "ns/svc:80"),
                Edit::Set("transfer-encoding", None, "chunked"),
            ],
            &[
                Edit::Set("x-multi", Some("X-MULTI"), "3"),
                Edit::Set("x-new", None, "1"),
                Edit::Set("x-new", Some("X-New"), "2"),
                Edit::Remove("host"),
                Edit::Set("host", None, "b"),
                Edit::Set("via", None, "x"),
                Edit::Remove("via"),
            ],
        ];
        for preserve in [false, true] {
            for fields in heads {
                let mut base = if preserve {
                    RequestHeader::build("GET", b"/p?q", None).unwrap()
                } else {
                    RequestHeader::build_no_case("GET", b"/p?q", None).unwrap()
                };
                base.set_version(Version::HTTP_10);
                for (n, v) in *fields {
                    base.append_header(n.to_string(), *v).unwrap();
                }
                for edit in edits {
                    let mut copy = base.clone();
                    copy.set_version(Version::HTTP_11);
                    apply(edit, &mut copy, &base);
                    let mut over = Overlay::new(&base);
                    apply(edit, &mut over, &base);
                    for name in ["host", "via", "x-multi", "connection", "x-new"] {
                        let name = HeaderName::from_static(name);
                        assert!(
                            copy.values(&name).eq(over.values(&name)),
                            "{name} of {fields:?} after {} edits",
                            edit.len()
                        );
                    }
                    let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
                    let fa = copy.encode(&mut a).unwrap();
                    let fb = over.encode(&mut b).unwrap();
                    let (a, b) = (String::from_utf8_lossy(&a), String::from_utf8_lossy(&b));
                    // Same request line and fields, each name's values in the same order.
                    // Across names the copy's order is HeaderMap's (a removal moves its last
                    // field into the gap); the overlay keeps the client's.
                    assert_eq!(by_name(&a), by_name(&b), "preserve {preserve}, {fields:?}");
                    assert_eq!(format!("{fa:?}"), format!("{fb:?}"));
                    let mut at = 0;
                    for (n, v) in *fields {
                        if let Some(pos) = b.find(&format!("\r\n{n}: {v}\r\n")) {
                            assert!(pos >= at, "{n} out of the client's order in {b:?}");
                            at = pos;
                        }
                    }
                }
            }
        }
    }
}
