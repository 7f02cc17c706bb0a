//! The app-facing front doors: Dapr's HTTP API (`/v1.0/...`, port 3500,
//! HTTP/1.1 and h2c) and gRPC API (`dapr.proto.runtime.v1.Dapr` plus proxy
//! mode, port 50001). Each is a context of its own, built by `runtime`;
//! they share the invocation envelope (`invoke::envelope`) and the error
//! shapes (`errors`), and route the building blocks to `blocks`.

pub mod grpc;
pub mod health;
pub mod http;
pub mod metadata;
pub mod unary;

use ::http::HeaderMap;

use crate::headers::DAPR_API_TOKEN;

/// What both front doors are set to.
#[derive(Clone, Debug)]
pub struct Door {
    /// `DAPR_API_TOKEN`, required on every call but health.
    pub token: Option<String>,
    /// `--enable-api-logging`.
    pub api_logging: bool,
    pub app_id: String,
    /// Targets without a namespace are in this one.
    pub namespace: String,
    /// Largest message buffered (a request read whole, `InvokeService`).
    pub max_body_size: usize,
}

/// `DAPR_API_TOKEN` check; constant time in the token's length so a timing
/// probe cannot find it byte by byte.
pub fn token_ok(expected: Option<&str>, h: &HeaderMap) -> bool {
    let Some(expected) = expected else {
        return true;
    };
    let Some(got) = h.get(&DAPR_API_TOKEN) else {
        return false;
    };
    let (a, b) = (expected.as_bytes(), got.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::http::HeaderValue;

    #[test]
    fn token_check() {
        let mut h = HeaderMap::new();
        assert!(token_ok(None, &h));
        assert!(!token_ok(Some("s3cret"), &h));
        h.insert(DAPR_API_TOKEN, HeaderValue::from_static("s3cre7"));
        assert!(!token_ok(Some("s3cret"), &h));
        h.insert(DAPR_API_TOKEN, HeaderValue::from_static("s3cret"));
        assert!(token_ok(Some("s3cret"), &h));
    }
}
