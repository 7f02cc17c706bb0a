//! Header names the sidecar reads, writes or strips, and the in-place
//! rewrites applied to a call as it crosses the sidecars.

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

/// Dapr's metadata, visible to apps.
pub const DAPR_APP_ID: HeaderName = HeaderName::from_static("dapr-app-id");
pub const DAPR_API_TOKEN: HeaderName = HeaderName::from_static("dapr-api-token");
pub const DAPR_CALLER_APP_ID: HeaderName = HeaderName::from_static("dapr-caller-app-id");
pub const DAPR_CALLER_NAMESPACE: HeaderName = HeaderName::from_static("dapr-caller-namespace");
pub const DAPR_CALLEE_APP_ID: HeaderName = HeaderName::from_static("dapr-callee-app-id");
pub const DAPR_HTTP_STATUS: HeaderName = HeaderName::from_static("dapr-http-status");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Skiff's sidecar-to-sidecar metadata. Every `skiff-` header is internal:
/// stripped from what apps send and never delivered to apps.
pub const SKIFF_PREFIX: &str = "skiff-";
/// `grpc-proxy` for frame-for-frame gRPC proxying; absent for HTTP-style
/// invocations (HTTP front door and `InvokeService`).
pub const SKIFF_MODE: HeaderName = HeaderName::from_static("skiff-mode");
pub const MODE_GRPC_PROXY: &str = "grpc-proxy";
/// Set by `InvokeService` when the request had no HTTP verb; an HTTP app
/// cannot be called that way (InvalidArgument, as in Dapr).
pub const SKIFF_VERB_NONE: HeaderName = HeaderName::from_static("skiff-verb-none");
/// The `type_url` of an `InvokeRequest`/`InvokeResponse` `Any`, carried so a
/// gRPC app sees the caller's type.
pub const SKIFF_TYPE_URL: HeaderName = HeaderName::from_static("skiff-type-url");
/// A gRPC app's error status, carried back to a gRPC caller unchanged.
pub const SKIFF_GRPC_STATUS: HeaderName = HeaderName::from_static("skiff-grpc-status");
pub const SKIFF_GRPC_MESSAGE: HeaderName = HeaderName::from_static("skiff-grpc-message");

pub const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
];

/// Removes connection-specific headers, including any named in `Connection`.
/// `te: trailers` survives because gRPC requires it.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Names listed in Connection are hop-by-hop too; collect them first.
    if let Some(conn) = h.get(header::CONNECTION).and_then(|v| v.to_str().ok()) {
        let named: Vec<HeaderName> = conn
            .split(',')
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    if h.get(header::TE).is_some_and(|v| v != "trailers") {
        h.remove(header::TE);
    }
}

/// Removes every internal `skiff-` header. Cheap when there are none: one
/// pass over the names, no allocation.
pub fn strip_internal(h: &mut HeaderMap) {
    if !h.keys().any(|k| k.as_str().starts_with(SKIFF_PREFIX)) {
        return;
    }
    let names: Vec<HeaderName> = h
        .keys()
        .filter(|k| k.as_str().starts_with(SKIFF_PREFIX))
        .cloned()
        .collect();
    for n in names {
        h.remove(n);
    }
}

/// Headers an app sends that must not travel: connection headers, the API
/// token, the routing header, internal headers. One pass over the names
/// finds which are there (usually only `host`), so the common case costs
/// no lookups for absent names.
pub fn prepare_outbound(h: &mut HeaderMap) {
    let mut hop = false;
    let mut drop_ours = false;
    let mut host = false;
    for name in h.keys() {
        if *name == header::HOST {
            host = true;
        } else if HOP_BY_HOP.contains(name) || *name == header::TE {
            hop = true;
        } else if *name == DAPR_API_TOKEN
            || *name == DAPR_APP_ID
            || name.as_str().starts_with(SKIFF_PREFIX)
        {
            drop_ours = true;
        }
    }
    if hop {
        strip_hop_by_hop(h);
    }
    if drop_ours {
        strip_internal(h);
        h.remove(&DAPR_API_TOKEN);
        h.remove(&DAPR_APP_ID);
    }
    if host
        && let Some(host) = h.remove(header::HOST)
        && !h.contains_key(&X_FORWARDED_HOST)
    {
        h.insert(X_FORWARDED_HOST, host);
    }
}

/// A gRPC status code in a header value: the one place one is parsed.
pub fn grpc_code(v: Option<&HeaderValue>) -> Option<u16> {
    v?.to_str().ok()?.parse().ok()
}

/// The `grpc-status` of a head or of trailers.
pub fn grpc_status(h: &HeaderMap) -> Option<u16> {
    grpc_code(h.get(GRPC_STATUS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_listed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));

        let mut g = HeaderMap::new();
        g.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut g);
        assert!(g.contains_key(header::TE));
    }

    #[test]
    fn outbound_drops_token_and_internal_and_moves_host() {
        let mut h = HeaderMap::new();
        h.insert(DAPR_API_TOKEN, HeaderValue::from_static("t"));
        h.insert(DAPR_APP_ID, HeaderValue::from_static("b"));
        h.insert("skiff-mode", HeaderValue::from_static("grpc-proxy"));
        h.insert(header::HOST, HeaderValue::from_static("localhost:3500"));
        prepare_outbound(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h[X_FORWARDED_HOST], "localhost:3500");
    }
}

/// Properties of the header rewriting, over arbitrary header sets.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("dapr-api-token".to_owned()),
            Just("dapr-app-id".to_owned()),
            Just("connection".to_owned()),
            Just("host".to_owned()),
            "skiff-[a-z-]{0,10}",
            "x-[a-z]{1,8}",
            "[a-z]{1,10}",
        ]
    }

    proptest! {
        #[test]
        fn no_internal_header_or_token_travels(names in prop::collection::vec(name(), 0..16)) {
            let mut h = HeaderMap::new();
            for n in &names {
                if let Ok(n) = HeaderName::from_bytes(n.as_bytes()) {
                    h.append(n, HeaderValue::from_static("v"));
                }
            }
            let mut out = h.clone();
            prepare_outbound(&mut out);
            for k in out.keys() {
                prop_assert!(!k.as_str().starts_with(SKIFF_PREFIX), "{k} left the app");
                prop_assert!(*k != DAPR_API_TOKEN && *k != DAPR_APP_ID, "{k} left the app");
                prop_assert!(*k != header::CONNECTION && *k != header::HOST, "{k} left the app");
            }
            strip_internal(&mut h);
            prop_assert!(h.keys().all(|k| !k.as_str().starts_with(SKIFF_PREFIX)));
        }
    }
}
