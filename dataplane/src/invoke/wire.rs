//! The header rules of the sidecar-to-sidecar hop, in one place.
//!
//! A call crosses three heads: the request as it leaves the caller's
//! sidecar ([`from_app`], then [`outbound_head`]), the same request as the
//! callee's sidecar takes it in and hands it to its app ([`Callee`]), and
//! the answer on its way back to the calling app ([`answer_to_app`]).
//! What travels between the two: the callee in the `:authority`
//! (`app.namespace`), the caller in `dapr-caller-*` only on a plaintext hop
//! (with mTLS the callee reads it from the certificate), and Skiff's
//! `skiff-` headers, which never reach an app.

use bytes::{BufMut, Bytes, BytesMut};
use http::uri::Authority;
use http::{HeaderMap, HeaderValue, Request, Uri, Version};
use skiff_resolvers::AppRef;

use crate::headers::{
    self, DAPR_CALLEE_APP_ID, DAPR_CALLER_APP_ID, DAPR_CALLER_NAMESPACE, FORWARDED,
    MODE_GRPC_PROXY, SKIFF_MODE, SKIFF_VERB_NONE, X_FORWARDED_FOR, X_FORWARDED_HOST,
};
use crate::transport::PeerInfo;

/// This sidecar's app id and namespace, pre-encoded as header values.
#[derive(Clone, Debug)]
pub struct Identity {
    pub app_id: HeaderValue,
    pub namespace: HeaderValue,
}

/// What an app sends that must not travel: connection headers, the API
/// token, the routing header, internal headers; `host` becomes
/// `x-forwarded-host`.
pub fn from_app(h: &mut HeaderMap) {
    headers::prepare_outbound(h);
}

/// The request head as it leaves for `app`'s sidecar: the callee in the
/// authority, HTTP/2, and on a plaintext hop the caller (`caller`),
/// overwriting anything the app sent so no app can claim to be another.
pub fn outbound_head<B>(req: &mut Request<B>, app: &AppRef, caller: Option<&Identity>) {
    if let Some(me) = caller {
        let h = req.headers_mut();
        h.insert(DAPR_CALLER_APP_ID, me.app_id.clone());
        h.insert(DAPR_CALLER_NAMESPACE, me.namespace.clone());
    }
    crate::pool::set_authority(req, &callee_authority(app));
    *req.version_mut() = Version::HTTP_2;
}

/// `{app}.{namespace}`, the authority a call to `app` carries (app ids and
/// namespaces are validated to `[A-Za-z0-9_-]` before they get here).
fn callee_authority(app: &AppRef) -> Authority {
    let mut s = String::with_capacity(app.app_id.len() + 1 + app.namespace.len());
    s.push_str(&app.app_id);
    s.push('.');
    s.push_str(&app.namespace);
    Authority::from_maybe_shared(Bytes::from(s))
        .unwrap_or_else(|_| Authority::from_static("invalid"))
}

/// Whether a call between sidecars is a gRPC call proxied frame for frame
/// (else an HTTP-style invocation).
pub fn is_grpc_proxy(h: &HeaderMap) -> bool {
    h.get(&SKIFF_MODE).is_some_and(|v| v == MODE_GRPC_PROXY)
}

/// Marks a request as a proxied gRPC call.
pub fn mark_grpc_proxy(h: &mut HeaderMap) {
    h.insert(SKIFF_MODE, HeaderValue::from_static(MODE_GRPC_PROXY));
}

/// The callee's side of the hop, built once at start.
#[derive(Debug)]
pub struct Callee {
    /// `{app}.{namespace}`: the authority a call for this sidecar carries.
    authority: String,
    /// This app's id, delivered to it as `dapr-callee-app-id`.
    app_id: HeaderValue,
    /// `;by=<our address>` of the `Forwarded` header.
    forwarded_by: Bytes,
}

/// What the caller's sidecar said about a call, read from its head.
#[derive(Clone, Copy, Debug)]
pub struct Hop {
    /// `InvokeService` without an HTTP verb: a gRPC app's method only.
    pub verb_none: bool,
}

impl Callee {
    pub fn new(app_id: &str, namespace: &str, advertise: std::net::IpAddr) -> Self {
        Self {
            authority: format!("{app_id}.{namespace}"),
            app_id: HeaderValue::from_str(app_id).unwrap_or_else(|_| HeaderValue::from_static("")),
            forwarded_by: Bytes::from(format!(";by={advertise}")),
        }
    }

    /// A stale endpoint (another app now on a reused port) must not
    /// receive calls meant for someone else.
    pub fn check_addressed_to_us(&self, uri: &Uri) -> Result<(), String> {
        let to = uri.authority().map_or("", |a| a.as_str());
        if to != self.authority {
            return Err(format!("this sidecar serves {}, not {to}", self.authority));
        }
        Ok(())
    }

    /// The calling app: its certificate's app id with mTLS, else what the
    /// calling sidecar said (empty when it said nothing).
    pub fn caller(peer: &PeerInfo, h: &HeaderMap) -> HeaderValue {
        match &peer.id {
            Some(p) => p.app_id.clone(),
            None => h
                .get(DAPR_CALLER_APP_ID)
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("")),
        }
    }

    /// The request head as this sidecar's app receives it: addressed to
    /// the app (path and query only), `dapr-callee-app-id`, the verified
    /// caller with mTLS (whatever the headers claim), and the forwarding
    /// headers. The internal headers stay for [`Self::to_app`] (or for
    /// `OnInvoke`, which reads them).
    pub fn take_in(&self, parts: &mut http::request::Parts, peer: &PeerInfo) -> Hop {
        if let Some(pq) = parts.uri.path_and_query().cloned() {
            parts.uri = Uri::from(pq);
        }
        let h = &mut parts.headers;
        h.insert(DAPR_CALLEE_APP_ID, self.app_id.clone());
        if let Some(p) = &peer.id {
            h.insert(DAPR_CALLER_APP_ID, p.app_id.clone());
            h.insert(DAPR_CALLER_NAMESPACE, p.namespace.clone());
        }
        add_forwarded(h, &peer.ip, &self.forwarded_by);
        Hop {
            verb_none: h.contains_key(&SKIFF_VERB_NONE),
        }
    }

    /// The last step before the app: no internal header reaches it.
    pub fn to_app(h: &mut HeaderMap) {
        headers::strip_internal(h);
    }
}

/// X-Forwarded-For and Forwarded name the calling sidecar's host. Built
/// from bytes prepared per connection and at start, without formatting.
fn add_forwarded(h: &mut HeaderMap, from: &HeaderValue, by: &Bytes) {
    h.append(X_FORWARDED_FOR, from.clone());
    let host = h.get(X_FORWARDED_HOST).map(HeaderValue::as_bytes);
    let mut v =
        BytesMut::with_capacity(4 + from.len() + by.len() + host.map_or(0, |h| 6 + h.len()));
    v.put_slice(b"for=");
    v.put_slice(from.as_bytes());
    v.put_slice(by);
    if let Some(host) = host {
        v.put_slice(b";host=");
        v.put_slice(host);
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(v.freeze()) {
        h.append(FORWARDED, v);
    }
}

/// The answer on its way back to the calling app: what the other sidecar
/// said to this one stays here.
pub fn answer_to_app(h: &mut HeaderMap) {
    headers::strip_internal(h);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_overwrites_spoofed_values() {
        let mut req = Request::new(());
        req.headers_mut()
            .insert(DAPR_CALLER_APP_ID, HeaderValue::from_static("admin"));
        let me = Identity {
            app_id: HeaderValue::from_static("a"),
            namespace: HeaderValue::from_static("default"),
        };
        let app = AppRef::new("b".to_owned(), "ns".to_owned());
        outbound_head(&mut req, &app, Some(&me));
        assert_eq!(req.headers().get_all(DAPR_CALLER_APP_ID).iter().count(), 1);
        assert_eq!(req.headers()[DAPR_CALLER_APP_ID], "a");
        assert_eq!(req.uri().authority().map(|a| a.as_str()), Some("b.ns"));
        // With mTLS nothing is said: the certificate says it.
        let mut plain = Request::new(());
        outbound_head(&mut plain, &app, None);
        assert!(!plain.headers().contains_key(DAPR_CALLER_APP_ID));
    }

    #[test]
    fn callee_takes_the_caller_from_the_certificate_and_checks_the_authority() {
        let c = Callee::new("b", "ns", "10.0.0.2".parse().expect("ip"));
        assert!(
            c.check_addressed_to_us(&Uri::from_static("http://b.ns/x"))
                .is_ok()
        );
        assert!(
            c.check_addressed_to_us(&Uri::from_static("http://c.ns/x"))
                .is_err()
        );
        let (mut parts, ()) = Request::builder()
            .uri("http://b.ns/m?q=1")
            .header(SKIFF_VERB_NONE, "1")
            .body(())
            .expect("request")
            .into_parts();
        let peer = PeerInfo::new("10.0.0.1:5000".parse().expect("addr"), None);
        let hop = c.take_in(&mut parts, &peer);
        assert!(hop.verb_none);
        assert_eq!(parts.uri, "/m?q=1");
        assert_eq!(parts.headers[DAPR_CALLEE_APP_ID], "b");
        assert_eq!(parts.headers[FORWARDED], "for=10.0.0.1;by=10.0.0.2");
        Callee::to_app(&mut parts.headers);
        assert!(!parts.headers.contains_key(SKIFF_VERB_NONE));
    }
}
