//! Bearer-token authentication for the `/v1` routes.
//!
//! Keys are compared as SHA-256 digests with a constant-time equality, against every configured
//! key without stopping at a match: the time taken says nothing about how much of a key was
//! right, nor about how long the configured keys are.

use axum::body::HttpBody as _;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONNECTION};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::errors::ApiError;
use crate::state::AppState;

/// The configured API keys, stored as digests.
#[derive(Clone)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} configured)", self.digests.len())
    }
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

impl ApiKeys {
    pub fn new(keys: &[String]) -> Self {
        Self {
            digests: keys.iter().map(|k| digest(k.as_bytes())).collect(),
        }
    }

    /// Whether authentication is on.
    pub fn enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Whether `presented` is one of the keys.
    pub fn verify(&self, presented: &[u8]) -> bool {
        let candidate = digest(presented);
        self.digests
            .iter()
            .fold(subtle::Choice::from(0), |found, d| {
                found | d.ct_eq(&candidate)
            })
            .into()
    }

    /// Checks an `Authorization` header value (`Bearer <key>`, scheme case-insensitive).
    pub fn check_header(&self, value: Option<&[u8]>) -> Result<(), ApiError> {
        if !self.enabled() {
            return Ok(());
        }
        let Some(value) = value else {
            return Err(ApiError::Unauthorized { missing: true });
        };
        let token = value
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .and_then(|_| value.get(7..))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty());
        match token {
            Some(token) if self.verify(token) => Ok(()),
            Some(_) => Err(ApiError::Unauthorized { missing: false }),
            None => Err(ApiError::Unauthorized { missing: true }),
        }
    }
}

/// Middleware refusing requests without a valid key (when keys are configured).
pub async fn require_api_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let header = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    match state.api_keys().check_header(header) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            state.metrics().record_failure(e.describe().metric);
            let unread_body = !req.body().is_end_stream();
            let mut response = e.into_response();
            if unread_body {
                // The body is never read, so hyper will not take another request on this
                // connection: say so, or a keep-alive client sends its next request into a
                // closing socket and gets a connection error instead of this 401.
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_only_configured_keys() {
        let keys = ApiKeys::new(&["sk-one".into(), "sk-two".into()]);
        assert!(keys.verify(b"sk-one"));
        assert!(keys.verify(b"sk-two"));
        assert!(!keys.verify(b"sk-on"));
        assert!(!keys.verify(b"sk-one "));
        assert!(!keys.verify(b""));
    }

    #[test]
    fn parses_bearer_headers() {
        let keys = ApiKeys::new(&["secret".into()]);
        assert!(keys.check_header(Some(b"Bearer secret")).is_ok());
        assert!(keys.check_header(Some(b"bearer secret")).is_ok());
        assert!(matches!(
            keys.check_header(Some(b"Bearer wrong")),
            Err(ApiError::Unauthorized { missing: false })
        ));
        assert!(matches!(
            keys.check_header(Some(b"Basic c2VjcmV0")),
            Err(ApiError::Unauthorized { missing: true })
        ));
        assert!(matches!(
            keys.check_header(None),
            Err(ApiError::Unauthorized { missing: true })
        ));
        // No keys configured: everything passes.
        assert!(ApiKeys::new(&[]).check_header(None).is_ok());
    }
}
