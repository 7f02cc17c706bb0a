//! The workload side of sentry: make a key and CSR, ask sentry to sign it,
//! and check what comes back before anyone uses it.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use rustls_pki_types::ServerName;
use skiff_proto::sentry::{
    SignCertificateRequest, SignCertificateResponse, sign_certificate_request::TokenValidator,
};
use tokio::net::TcpStream;

use crate::keyalg::KeyAlg;
use crate::server::SENTRY_APP_ID;
use crate::tls::{self, Anchors, Workload};
use crate::{SpiffeId, csr};

/// One attempt (connect, handshake, call) must finish within this.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("sentry at {addr} is unreachable: {why}")]
    Unreachable { addr: String, why: String },
    #[error("sentry at {addr} is not trusted: {why}")]
    Untrusted { addr: String, why: String },
    #[error("sentry refused the certificate request: {0}")]
    Refused(String),
    #[error("sentry's answer is unusable: {0}")]
    BadAnswer(String),
    #[error("making the CSR: {0}")]
    Csr(#[from] csr::CsrError),
}

impl ClientError {
    /// Refusals do not go away by asking again soon.
    pub fn is_refusal(&self) -> bool {
        matches!(self, ClientError::Refused(_))
    }
}

/// What to ask for.
pub struct Ask<'a> {
    pub id: &'a SpiffeId,
    pub token: &'a str,
    pub validator: TokenValidator,
    pub key_alg: KeyAlg,
}

/// Obtains a workload certificate for `ask.id` from sentry at `addr` and
/// verifies it against `anchors` before returning it.
pub async fn obtain(addr: &str, anchors: &Anchors, ask: &Ask<'_>) -> Result<Workload, ClientError> {
    let (key, csr_pem) = csr::generate(ask.id, ask.key_alg)?;
    let req = SignCertificateRequest {
        id: ask.id.app_id().to_owned(),
        token: ask.token.to_owned(),
        trust_domain: ask.id.trust_domain().to_owned(),
        namespace: ask.id.namespace().to_owned(),
        certificate_signing_request: csr_pem.into_bytes().into(),
        token_validator: ask.validator as i32,
        jwt_audiences: Vec::new(),
    };
    let resp = tokio::time::timeout(
        CALL_TIMEOUT,
        sign(addr, anchors, ask.id.trust_domain(), req),
    )
    .await
    .map_err(|_| ClientError::Unreachable {
        addr: addr.to_owned(),
        why: format!("no answer within {CALL_TIMEOUT:?}"),
    })??;
    let chain = crate::pem::certs(&resp.workload_certificate, "workload_certificate")
        .map_err(|e| ClientError::BadAnswer(e.to_string()))?;
    let w = Workload::new(chain, key).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
    w.verify(anchors, ask.id)
        .map_err(|e| ClientError::BadAnswer(e.to_string()))?;
    Ok(w)
}

/// One `SignCertificate` call over TLS, checking that the server is sentry.
pub async fn sign(
    addr: &str,
    anchors: &Anchors,
    trust_domain: &str,
    req: SignCertificateRequest,
) -> Result<SignCertificateResponse, ClientError> {
    let unreachable = |why: String| ClientError::Unreachable {
        addr: addr.to_owned(),
        why,
    };
    let untrusted = |why: String| ClientError::Untrusted {
        addr: addr.to_owned(),
        why,
    };
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let config = tls::anonymous_client_config(anchors, trust_domain)
        .map_err(|e| untrusted(e.to_string()))?;
    // Sentry's certificate has no DNS name we check; the SPIFFE ID is checked below.
    let name = ServerName::try_from("localhost").map_err(|e| untrusted(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(
            |e| match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                Some(r) => untrusted(r.to_string()),
                None => unreachable(format!("TLS: {e}")),
            },
        )?;
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| untrusted("no certificate".into()))
        .and_then(|c| tls::peer_id(c).map_err(|e| untrusted(e.to_string())))?;
    if peer.app_id() != SENTRY_APP_ID {
        return Err(untrusted(format!(
            "it presented {peer}, not a {SENTRY_APP_ID} identity"
        )));
    }
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(format!("HTTP/2: {e}")))?;
    tokio::spawn(conn);
    let mut body = BytesMut::with_capacity(5 + req.encoded_len());
    body.put_u8(0);
    body.put_u32(req.encoded_len() as u32);
    req.encode(&mut body)
        .map_err(|e| ClientError::BadAnswer(e.to_string()))?;
    let http_req = Request::post(format!(
        "http://{addr}{}",
        skiff_proto::paths::SIGN_CERTIFICATE
    ))
    .header(http::header::CONTENT_TYPE, "application/grpc")
    .header(http::header::TE, "trailers")
    .body(Full::new(body.freeze()))
    .map_err(|e| unreachable(e.to_string()))?;
    let resp = tx
        .send_request(http_req)
        .await
        .map_err(|e| unreachable(format!("HTTP/2: {e}")))?;
    if resp.status() != StatusCode::OK {
        return Err(ClientError::BadAnswer(format!("HTTP {}", resp.status())));
    }
    let head = resp.headers().clone();
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(format!("reading the answer: {e}")))?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let status = |h: &http::HeaderMap| {
        h.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let code = status(&trailers)
        .or_else(|| status(&head))
        .unwrap_or_default();
    if code != "0" {
        let msg = trailers
            .get("grpc-message")
            .or_else(|| head.get("grpc-message"))
            .and_then(|v| v.to_str().ok())
            .map(percent_decode)
            .unwrap_or_default();
        return Err(ClientError::Refused(format!(
            "{} (gRPC status {code})",
            msg
        )));
    }
    let mut data: Bytes = collected.to_bytes();
    if data.len() < 5 {
        return Err(ClientError::BadAnswer("empty gRPC message".into()));
    }
    data.advance(1);
    let len = data.get_u32() as usize;
    if data.len() < len {
        return Err(ClientError::BadAnswer("truncated gRPC message".into()));
    }
    SignCertificateResponse::decode(data.slice(..len))
        .map_err(|e| ClientError::BadAnswer(e.to_string()))
}

/// gRPC messages are percent-encoded on the wire.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
