//! Request path normalisation: one canonical spelling of a path, computed before routing, so
//! that the path a rule matches is the path the backend receives.
//!
//! Without it `/public/../admin`, `/public/%2e%2e/admin` or `//admin` match a rule on `/public`
//! while a backend that resolves them itself serves `/admin`. The steps follow what Envoy does
//! with `normalize_path`, `merge_slashes` and `path_with_escaped_slashes_action`:
//!
//! ```text
//! "/public/%2e%2E/a%7e%2fb"
//!   1. escapes      %XY must be two hex digits (else InvalidEscape); unreserved characters
//!                   (A-Z a-z 0-9 - . _ ~) are decoded, every other escape is kept with
//!                   upper-case hex; characters not allowed in a path are escaped;
//!                   %2F / %5C and a raw `\` per EscapedSlashes (Keep: stay "%2F"/"%5C",
//!                   not separators; Reject: error; Decode: become "/")
//!                   → "/public/../a~%2Fb"
//!   2. slashes      with merge_slashes, runs of "/" become one          → unchanged here
//!   3. dot segments RFC 3986 §5.2.4 on the "/"-separated segments      → "/a~%2Fb"
//! ```
//!
//! Decoding (step 1) comes before dot-segment removal, so an encoded dot is a dot; merging
//! (step 2) comes before it too, so `/a//../b` is `/a/../b` = `/b`, the reading of a backend
//! that treats `//` as one separator. The result is a fixed point: normalising it again changes
//! nothing (the property tests check it), it starts with `/`, holds no `.` or `..` segment and,
//! when merging, no `//`.
//!
//! The query is not part of the path: [`normalize_target`] leaves everything from the first `?`
//! as it is. The asterisk-form target `*` (`OPTIONS *`) is returned unchanged; whether the
//! method allows it is the caller's check. Anything else not starting with `/` is refused
//! ([`PathError::NotAbsolute`]); an absolute-form target (`http://host/p`) is the caller's to
//! split, passing only its path.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// What `%2F` (`/`) and `%5C` (`\`) in a path mean, and a raw `\` with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// Kept encoded (upper-case `%2F`/`%5C`; a raw `\` becomes `%5C`): part of a segment, never a
    /// separator. The default, as in Envoy (its default action leaves them unchanged): APIs
    /// that carry identifiers with slashes in one segment (object stores, registries, `a%2Fb`
    /// package names) keep working, and no separator is invented that rules did not see.
    #[default]
    Keep,
    /// Refused: the proxy answers 400. The strictest choice, but it breaks the APIs above.
    Reject,
    /// Decoded into `/` and treated as a separator, before dot segments are removed (so
    /// `/a%2F..%2Fadmin` is `/admin`).
    Decode,
}

impl EscapedSlashes {
    /// The spelling used by the command line and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            EscapedSlashes::Keep => "keep",
            EscapedSlashes::Reject => "reject",
            EscapedSlashes::Decode => "decode",
        }
    }
}

impl fmt::Display for EscapedSlashes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An [`EscapedSlashes`] spelling that is none of `keep`, `reject`, `decode`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an escaped-slashes action: use keep, reject or decode")]
pub struct ParseEscapedSlashesError(pub String);

impl FromStr for EscapedSlashes {
    type Err = ParseEscapedSlashesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "keep" => Ok(EscapedSlashes::Keep),
            "reject" => Ok(EscapedSlashes::Reject),
            "decode" => Ok(EscapedSlashes::Decode),
            _ => Err(ParseEscapedSlashesError(s.to_string())),
        }
    }
}

/// How paths are normalised (proxy-wide).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathNormalization {
    /// Runs of `/` become one (`//admin` → `/admin`). Default on.
    pub merge_slashes: bool,
    /// What `%2F`/`%5C` and a raw `\` mean. Default [`EscapedSlashes::Keep`].
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathNormalization {
    fn default() -> Self {
        PathNormalization {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Keep,
        }
    }
}

/// Why a path cannot be normalised (the proxy answers 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/` (and is not `*`).
    #[error("the path must start with \"/\"")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("invalid percent-escape at byte {at}: \"%\" must be followed by two hex digits")]
    InvalidEscape {
        /// Byte offset of the `%`.
        at: usize,
    },
    /// `%2F` or `%5C` with [`EscapedSlashes::Reject`].
    #[error("encoded slash or backslash at byte {at} is refused")]
    EscapedSlash {
        /// Byte offset of the `%`.
        at: usize,
    },
    /// A raw `\` with [`EscapedSlashes::Reject`].
    #[error("backslash at byte {at} is refused")]
    Backslash {
        /// Byte offset of the `\`.
        at: usize,
    },
}

/// Normalises a request target's path and leaves its query (from the first `?`) as it is.
pub fn normalize_target<'a>(
    target: &'a str,
    cfg: &PathNormalization,
) -> Result<Cow<'a, str>, PathError> {
    let (path, query) = match target.find('?') {
        Some(i) => target.split_at(i),
        None => (target, ""),
    };
    Ok(match normalize_path(path, cfg)? {
        Cow::Borrowed(_) => Cow::Borrowed(target),
        Cow::Owned(mut p) => {
            p.push_str(query);
            Cow::Owned(p)
        }
    })
}

/// Normalises a path (no query): borrowed when it already is in normal form.
///
/// ```
/// use meridian_model::path::{normalize_path, PathNormalization};
/// let cfg = PathNormalization::default();
/// assert_eq!(normalize_path("/public/%2e%2e/admin", &cfg).unwrap(), "/admin");
/// assert_eq!(normalize_path("//admin", &cfg).unwrap(), "/admin");
/// assert_eq!(normalize_path("/a%2fb", &cfg).unwrap(), "/a%2Fb");
/// assert!(normalize_path("/%zz", &cfg).is_err());
/// ```
pub fn normalize_path<'a>(
    path: &'a str,
    cfg: &PathNormalization,
) -> Result<Cow<'a, str>, PathError> {
    if path == "*" {
        return Ok(Cow::Borrowed(path));
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(path, cfg.merge_slashes) {
        return Ok(Cow::Borrowed(path));
    }
    let escaped = canonical_escapes(path, cfg.escaped_slashes)?;
    Ok(Cow::Owned(remove_dot_segments(&escaped, cfg.merge_slashes)))
}

/// Characters that stand for themselves in a path segment (RFC 3986 `pchar` without `%`):
/// unreserved, sub-delims, `:` and `@`.
fn is_pchar(b: u8) -> bool {
    is_unreserved(b) || b"!$&'()*+,;=:@".contains(&b)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

/// The fast path: only plain path characters, no dot segment and, when merging, no empty
/// segment but a trailing one.
fn is_normal(path: &str, merge_slashes: bool) -> bool {
    if !path.bytes().all(|b| b == b'/' || is_pchar(b)) {
        return false;
    }
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if seg == "." || seg == ".." || (merge_slashes && seg.is_empty() && !last) {
            return false;
        }
    }
    true
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_escaped(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0x0f)]));
}

/// Step 1: every escape valid and in one spelling, unreserved characters decoded, slashes and
/// backslashes per `slashes`.
fn canonical_escapes(path: &str, slashes: EscapedSlashes) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let value = match (bytes.get(i + 1), bytes.get(i + 2)) {
                    (Some(&h), Some(&l)) => hex_value(h).zip(hex_value(l)).map(|(h, l)| h << 4 | l),
                    _ => None,
                };
                let Some(v) = value else {
                    return Err(PathError::InvalidEscape { at: i });
                };
                match v {
                    b'/' | b'\\' => match slashes {
                        EscapedSlashes::Keep => push_escaped(&mut out, v),
                        EscapedSlashes::Reject => return Err(PathError::EscapedSlash { at: i }),
                        EscapedSlashes::Decode => out.push('/'),
                    },
                    v if is_unreserved(v) => out.push(char::from(v)),
                    v => push_escaped(&mut out, v),
                }
                i += 3;
            }
            b'\\' => {
                match slashes {
                    EscapedSlashes::Keep => push_escaped(&mut out, b),
                    EscapedSlashes::Reject => return Err(PathError::Backslash { at: i }),
                    EscapedSlashes::Decode => out.push('/'),
                }
                i += 1;
            }
            b'/' => {
                out.push('/');
                i += 1;
            }
            b if is_pchar(b) => {
                out.push(char::from(b));
                i += 1;
            }
            // Not allowed raw in a path (space, quotes, `{`, non-ASCII bytes, …): escaped, so
            // the result is plain ASCII in one spelling.
            b => {
                push_escaped(&mut out, b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Steps 2 and 3 on a path that starts with `/`: empty segments dropped when merging, then
/// RFC 3986 §5.2.4 on whole segments (`.` goes; `..` goes with the segment before it, never
/// above the root). A path ending in a dot segment keeps a trailing `/` (`/a/b/..` → `/a/`).
fn remove_dot_segments(path: &str, merge_slashes: bool) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match seg {
            "." | ".." => {
                if seg == ".." {
                    kept.pop();
                }
                if last {
                    // The trailing `/` the dot segment stood after.
                    kept.push("");
                }
            }
            // A trailing `/` is an empty last segment: kept even when merging (`/a/` ≠ `/a`).
            "" if merge_slashes && !last => {}
            seg => kept.push(seg),
        }
    }
    if kept.is_empty() {
        return "/".to_string();
    }
    let mut out = String::with_capacity(path.len());
    for seg in &kept {
        out.push('/');
        out.push_str(seg);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn cfg(merge_slashes: bool, escaped_slashes: EscapedSlashes) -> PathNormalization {
        PathNormalization {
            merge_slashes,
            escaped_slashes,
        }
    }

    #[test]
    fn default_settings_merge_and_keep() {
        assert_eq!(
            PathNormalization::default(),
            cfg(true, EscapedSlashes::Keep)
        );
    }

    #[test]
    fn table_with_defaults() {
        let c = PathNormalization::default();
        for (input, want) in [
            ("/", "/"),
            ("/admin", "/admin"),
            ("/admin/", "/admin/"),
            ("/public/../admin", "/admin"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2E%2E/admin", "/admin"),
            ("/public/.%2e/admin", "/admin"),
            ("/public/./../admin", "/admin"),
            ("//admin", "/admin"),
            ("///admin//x///", "/admin/x/"),
            ("/a//../b", "/b"),
            ("/..", "/"),
            ("/../..", "/"),
            ("/../admin", "/admin"),
            ("/.", "/"),
            ("/a/.", "/a/"),
            ("/a/b/..", "/a/"),
            ("/a/./b", "/a/b"),
            ("/a/..b/c", "/a/..b/c"),
            ("/a/b.../c", "/a/b.../c"),
            ("/.well-known/x", "/.well-known/x"),
            // Unreserved decoded, others kept with upper-case hex.
            ("/%41%62%7e%2D%5f", "/Ab~-_"),
            ("/a%20b", "/a%20b"),
            ("/a%2a%7c", "/a%2A%7C"),
            ("/a%3fb", "/a%3Fb"),
            ("/%c3%a9", "/%C3%A9"),
            // Encoded slash and backslash kept, never separators; a raw backslash encoded.
            ("/a%2Fb", "/a%2Fb"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%5cb", "/a%5Cb"),
            ("/a\\b", "/a%5Cb"),
            ("/public%2F..%2Fadmin", "/public%2F..%2Fadmin"),
            // Characters not allowed raw in a path are escaped.
            ("/a b", "/a%20b"),
            ("/a\"b{c}", "/a%22b%7Bc%7D"),
            ("/é", "/%C3%A9"),
            // Sub-delims, `:` and `@` stand for themselves.
            ("/a:b@c!$&'()*+,;=", "/a:b@c!$&'()*+,;="),
            ("*", "*"),
        ] {
            assert_eq!(normalize_path(input, &c).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn table_without_merging() {
        let c = cfg(false, EscapedSlashes::Keep);
        for (input, want) in [
            ("//admin", "//admin"),
            ("/a//b", "/a//b"),
            ("/a//..", "/a/"),
            ("/a//.", "/a//"),
            ("/a//../b", "/a/b"),
            ("/public/../admin", "/admin"),
        ] {
            assert_eq!(normalize_path(input, &c).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn table_decoding_slashes() {
        let c = cfg(true, EscapedSlashes::Decode);
        for (input, want) in [
            ("/a%2Fb", "/a/b"),
            ("/a%5cb", "/a/b"),
            ("/a\\b", "/a/b"),
            ("/public%2F..%2Fadmin", "/admin"),
            ("/public\\..\\admin", "/admin"),
            ("/%2F%2Fadmin", "/admin"),
        ] {
            assert_eq!(normalize_path(input, &c).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn rejecting_slashes() {
        let c = cfg(true, EscapedSlashes::Reject);
        assert_eq!(
            normalize_path("/a%2Fb", &c),
            Err(PathError::EscapedSlash { at: 2 })
        );
        assert_eq!(
            normalize_path("/a%5c", &c),
            Err(PathError::EscapedSlash { at: 2 })
        );
        assert_eq!(
            normalize_path("/ab\\", &c),
            Err(PathError::Backslash { at: 3 })
        );
        // Other escapes pass.
        assert_eq!(normalize_path("/a%2e%41", &c).as_deref(), Ok("/a.A"));
    }

    #[test]
    fn invalid_input_is_an_error() {
        let c = PathNormalization::default();
        for (input, want) in [
            ("/%zz", PathError::InvalidEscape { at: 1 }),
            ("/a%4", PathError::InvalidEscape { at: 2 }),
            ("/a%", PathError::InvalidEscape { at: 2 }),
            ("/a%g0", PathError::InvalidEscape { at: 2 }),
            ("/ok/%%41", PathError::InvalidEscape { at: 4 }),
            ("", PathError::NotAbsolute),
            ("admin", PathError::NotAbsolute),
            ("%2Fadmin", PathError::NotAbsolute),
            ("**", PathError::NotAbsolute),
            ("http://host/a", PathError::NotAbsolute),
        ] {
            assert_eq!(normalize_path(input, &c), Err(want), "{input}");
        }
    }

    #[test]
    fn normal_paths_are_borrowed() {
        let c = PathNormalization::default();
        for p in ["/", "/admin", "/a/b/", "/a:b@c", "/.well-known/x"] {
            assert!(matches!(normalize_path(p, &c), Ok(Cow::Borrowed(_))), "{p}");
        }
        for p in ["//a", "/a//b", "/./a", "/a/..", "/%41"] {
            assert!(matches!(normalize_path(p, &c), Ok(Cow::Owned(_))), "{p}");
        }
        let keep = cfg(false, EscapedSlashes::Keep);
        assert!(matches!(normalize_path("//a", &keep), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn query_is_left_alone() {
        let c = PathNormalization::default();
        assert_eq!(
            normalize_target("/public/%2e%2e/admin?x=%2e%2e&y=//", &c).as_deref(),
            Ok("/admin?x=%2e%2e&y=//")
        );
        assert_eq!(
            normalize_target("/admin?%zz", &c).as_deref(),
            Ok("/admin?%zz")
        );
        assert_eq!(normalize_target("//a?", &c).as_deref(), Ok("/a?"));
        assert_eq!(
            normalize_target("/%zz?q", &c),
            Err(PathError::InvalidEscape { at: 1 })
        );
    }

    #[test]
    fn escaped_slashes_parse() {
        assert_eq!("keep".parse(), Ok(EscapedSlashes::Keep));
        assert_eq!("Reject".parse(), Ok(EscapedSlashes::Reject));
        assert_eq!("decode".parse(), Ok(EscapedSlashes::Decode));
        let err = "drop".parse::<EscapedSlashes>().unwrap_err();
        assert!(err.to_string().contains("keep, reject or decode"), "{err}");
        for e in [
            EscapedSlashes::Keep,
            EscapedSlashes::Reject,
            EscapedSlashes::Decode,
        ] {
            assert_eq!(e.to_string().parse(), Ok(e));
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Paths built from the pieces that matter: separators, dots, escapes (valid, encoded
        /// dots and slashes), backslashes, letters and a few characters that need escaping.
        fn path() -> impl Strategy<Value = String> {
            let piece = prop::sample::select(vec![
                "/", "/", "//", ".", "..", "/.", "/..", "%2e", "%2E", "%2f", "%2F", "%5c", "\\",
                "%41", "%7e", "%20", "%c3%a9", "a", "b", "~", ":", "@", " ", "é", "?", "#", "%25",
            ]);
            prop::collection::vec(piece, 0..16).prop_map(|v| format!("/{}", v.concat()))
        }

        fn settings() -> impl Strategy<Value = PathNormalization> {
            (
                any::<bool>(),
                prop::sample::select(vec![
                    EscapedSlashes::Keep,
                    EscapedSlashes::Reject,
                    EscapedSlashes::Decode,
                ]),
            )
                .prop_map(|(m, e)| cfg(m, e))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn normal_form_holds(p in path(), c in settings()) {
                let Ok(once) = normalize_path(&p, &c) else {
                    // Only the reject setting refuses these well-formed inputs.
                    prop_assert_eq!(c.escaped_slashes, EscapedSlashes::Reject);
                    return Ok(());
                };
                let twice = normalize_path(&once, &c);
                prop_assert_eq!(twice.as_deref(), Ok(once.as_ref()), "not idempotent: {}", p);
                prop_assert!(once.starts_with('/'), "{} → {}", p, once);
                prop_assert!(
                    once.split('/').all(|s| s != "." && s != ".."),
                    "dot segment left: {} → {}", p, once
                );
                if c.merge_slashes {
                    prop_assert!(!once.contains("//"), "{} → {}", p, once);
                }
                prop_assert!(
                    once.bytes().all(|b| b == b'/' || b == b'%' || is_pchar(b)),
                    "{} → {}", p, once
                );
            }

            #[test]
            fn arbitrary_text_never_panics(s in "/?\\PC*", c in settings()) {
                if let Ok(once) = normalize_path(&s, &c) {
                    let twice = normalize_path(&once, &c);
                    prop_assert_eq!(twice.as_deref(), Ok(once.as_ref()));
                }
            }
        }
    }
}
