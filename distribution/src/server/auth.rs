//! The bearer token: which one the server requires (or none, `insecure`) and whether a request
//! presents it.
//!
//! Every `POST /v1/*` carries `Authorization: Bearer <token>`; the module `http` answers `401`
//! to a request without the right one. The comparison takes the same time wherever the tokens
//! differ.

use http::{Request, header};

use super::ServerError;

/// The token to require: `None` only when the server runs `insecure` without one.
pub(super) fn required_token(
    token: Option<String>,
    insecure: bool,
) -> Result<Option<String>, ServerError> {
    match (token, insecure) {
        (Some(t), _) if t.is_empty() => Err(ServerError::EmptyToken),
        (Some(t), _) => Ok(Some(t)),
        (None, true) => Ok(None),
        (None, false) => Err(ServerError::NoToken),
    }
}

/// Whether `req` presents `expected` (always true without a token).
pub(super) fn authorized<B>(expected: Option<&str>, req: &Request<B>) -> bool {
    let Some(expected) = expected else {
        return true;
    };
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|got| token_matches(expected, got.trim()))
}

/// Constant-time comparison so the token cannot be guessed byte by byte from timings.
fn token_matches(expected: &str, got: &str) -> bool {
    let (a, b) = (expected.as_bytes(), got.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(token_matches("secret", "secret"));
        assert!(!token_matches("secret", "secreT"));
        assert!(!token_matches("secret", "secret2"));
        assert!(!token_matches("secret", ""));
    }

    #[test]
    fn requests_present_the_token_as_a_bearer() {
        let req = |auth: &str| {
            Request::post("/v1/ack")
                .header(header::AUTHORIZATION, auth)
                .body(())
                .unwrap()
        };
        assert!(authorized(Some("s"), &req("Bearer s")));
        assert!(!authorized(Some("s"), &req("Basic s")));
        assert!(!authorized(Some("s"), &Request::new(())));
        assert!(authorized(None, &Request::new(())));
    }

    #[test]
    fn a_token_is_required_unless_insecure() {
        assert!(matches!(
            required_token(None, false),
            Err(ServerError::NoToken)
        ));
        assert!(matches!(
            required_token(Some(String::new()), true),
            Err(ServerError::EmptyToken)
        ));
        assert_eq!(required_token(None, true).unwrap(), None);
        assert_eq!(
            required_token(Some("t".into()), false).unwrap().as_deref(),
            Some("t")
        );
    }
}
