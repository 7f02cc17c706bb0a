//! The app-facing front doors: Dapr's HTTP API (`/v1.0/...`, port 3500,
//! HTTP/1.1 and h2c) and gRPC API (`dapr.proto.runtime.v1.Dapr` plus proxy
//! mode, port 50001).

pub mod grpc;
pub mod http;

use ::http::HeaderMap;

use crate::headers::DAPR_API_TOKEN;
use crate::telemetry::trace::{Described, Value};

/// The caller's span of one invocation: Dapr's `CallLocal/<app>/<method>`
/// name and attributes. `status` is HTTP's, or the gRPC code for gRPC.
pub fn describe_call(
    app: &str,
    method: &str,
    protocol: &str,
    verb: &str,
    status: u16,
) -> Described {
    let grpc = protocol == "grpc";
    let failed = if grpc { status != 0 } else { status >= 500 };
    Described {
        name: format!("CallLocal/{app}/{method}"),
        attributes: vec![
            ("dapr.protocol", Value::Str(protocol.to_owned())),
            ("rpc.service", Value::Str("ServiceInvocation".to_owned())),
            ("net.peer.name", Value::Str(app.to_owned())),
            (
                "dapr.api",
                Value::Str(format!("{verb} /v1.0/invoke/{app}/method/{method}")),
            ),
            (
                if grpc {
                    "rpc.grpc.status_code"
                } else {
                    "http.status_code"
                },
                Value::Int(i64::from(status)),
            ),
        ],
        error: failed.then(|| {
            if grpc {
                format!("gRPC status {status}")
            } else {
                format!("HTTP {status}")
            }
        }),
    }
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
