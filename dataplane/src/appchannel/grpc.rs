//! HTTP-style invocations delivered to a gRPC app as
//! `AppCallback/OnInvoke(InvokeRequest) → InvokeResponse`, and the
//! unary gRPC framing they need.
//!
//! The request body is read whole (bounded by `--max-body-size`) because a
//! protobuf message needs its length up front; the app's answer likewise.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, request};
use http_body_util::BodyExt;
use prost::Message;
use skiff_proto::common::{HttpExtension, InvokeRequest, InvokeResponse, http_extension::Verb};
use skiff_proto::google::protobuf::Any;
use tonic::Code;

use super::{AppChannel, AppError};
use crate::body::BoxError;
use crate::errors::{self, http_status_from_grpc};
use crate::headers::{
    GRPC_MESSAGE, SKIFF_GRPC_MESSAGE, SKIFF_GRPC_STATUS, SKIFF_TYPE_URL, SKIFF_VERB_NONE,
};
use crate::skiff_body::SkiffBody;

/// A unary gRPC call's outcome.
pub enum UnaryError {
    /// The app answered with a non-OK status.
    Status(Code, String),
    /// Transport or protocol failure.
    App(AppError),
    Protocol(String),
}

/// Delivers one HTTP-style call to the gRPC app's OnInvoke as `method`
/// and turns its answer back into an HTTP response for the caller's sidecar.
pub async fn on_invoke(
    app: &AppChannel,
    method: String,
    parts: request::Parts,
    body: SkiffBody,
) -> Response<SkiffBody> {
    let data = match crate::body::collect_limited(body, app.max_body_size).await {
        Ok(d) => d,
        Err(e) => return status_response(Code::ResourceExhausted, &e.to_string()),
    };
    let verb = if parts.headers.contains_key(&SKIFF_VERB_NONE) {
        Verb::None
    } else {
        verb_of(&parts.method)
    };
    let content_type = header_str(&parts.headers, CONTENT_TYPE.as_str()).to_owned();
    let msg = InvokeRequest {
        method,
        data: Some(Any {
            type_url: header_str(&parts.headers, SKIFF_TYPE_URL.as_str()).to_owned(),
            value: data,
        }),
        content_type,
        http_extension: Some(HttpExtension {
            verb: verb as i32,
            querystring: parts.uri.query().unwrap_or_default().to_owned(),
        }),
    };
    let start = std::time::Instant::now();
    let answer = unary(
        app,
        skiff_proto::paths::ON_INVOKE,
        &msg,
        grpc_metadata(&parts.headers),
    )
    .await;
    if let Some(m) = crate::telemetry::metrics::get() {
        let code = match &answer {
            Ok(_) => 0,
            Err(UnaryError::Status(c, _)) => *c as u16,
            Err(UnaryError::App(_)) => 14,
            Err(UnaryError::Protocol(_)) => 13,
        };
        m.app_grpc_series(skiff_proto::paths::ON_INVOKE)
            .record(code, start.elapsed());
    }
    match answer {
        Ok(resp) => {
            let r: InvokeResponse = resp;
            let (type_url, value) = r.data.map(|a| (a.type_url, a.value)).unwrap_or_default();
            let mut out = Response::new(SkiffBody::full(value));
            if let Ok(ct) = HeaderValue::from_str(&r.content_type)
                && !r.content_type.is_empty()
            {
                out.headers_mut().insert(CONTENT_TYPE, ct);
            }
            if let Ok(t) = HeaderValue::from_str(&type_url)
                && !type_url.is_empty()
            {
                out.headers_mut().insert(SKIFF_TYPE_URL, t);
            }
            out
        }
        Err(UnaryError::Status(code, msg)) => status_response(code, &msg),
        Err(UnaryError::App(e)) => status_response(Code::Unavailable, &e.to_string()),
        Err(UnaryError::Protocol(m)) => status_response(Code::Internal, &m),
    }
}

/// A gRPC app's failure as an HTTP answer: the status from the grpc-gateway
/// table, Dapr's error body, and the exact gRPC status for a gRPC caller.
pub fn status_response(code: Code, message: &str) -> Response<SkiffBody> {
    let mut resp = errors::http_error(
        http_status_from_grpc(code),
        errors::code::DIRECT_INVOKE,
        message,
    );
    let h = resp.headers_mut();
    h.insert(SKIFF_GRPC_STATUS, HeaderValue::from(code as i32));
    if let Ok(v) = HeaderValue::from_str(&errors::percent_encode_grpc_message(message)) {
        h.insert(SKIFF_GRPC_MESSAGE, v);
    }
    resp
}

fn verb_of(m: &Method) -> Verb {
    match *m {
        Method::GET => Verb::Get,
        Method::HEAD => Verb::Head,
        Method::POST => Verb::Post,
        Method::PUT => Verb::Put,
        Method::DELETE => Verb::Delete,
        Method::CONNECT => Verb::Connect,
        Method::OPTIONS => Verb::Options,
        Method::TRACE => Verb::Trace,
        Method::PATCH => Verb::Patch,
        _ => Verb::None,
    }
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// The caller's headers become gRPC metadata, minus those gRPC reserves.
fn grpc_metadata(h: &HeaderMap) -> HeaderMap {
    h.iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            !(k.starts_with("grpc-")
                || k.starts_with(crate::headers::SKIFF_PREFIX)
                || matches!(
                    k,
                    "content-type" | "content-length" | "te" | "host" | "user-agent"
                ))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Frames a message for gRPC: flag 0 (uncompressed), big-endian length.
pub fn frame<M: Message>(msg: &M) -> Bytes {
    let len = msg.encoded_len();
    let mut b = BytesMut::with_capacity(5 + len);
    b.put_u8(0);
    b.put_u32(len as u32);
    // Capacity was reserved above, so encoding cannot run out of space.
    let _ = msg.encode(&mut b);
    b.freeze()
}

/// Reads the single message of a unary response body.
pub fn unframe<M: Message + Default>(b: &[u8]) -> Result<M, String> {
    if b.len() < 5 {
        return Err("gRPC response has no message".into());
    }
    if b[0] != 0 {
        return Err("gRPC response is compressed; the sidecar does not ask for compression".into());
    }
    let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
    let msg = b
        .get(5..5 + len)
        .ok_or("gRPC response message is truncated")?;
    M::decode(msg).map_err(|e| format!("decoding gRPC response: {e}"))
}

/// One unary call to the gRPC app on the shared HTTP/2 connection.
pub async fn unary<Req: Message, Resp: Message + Default>(
    app: &AppChannel,
    path: &'static str,
    msg: &Req,
    metadata: HeaderMap,
) -> Result<Resp, UnaryError> {
    let mut req = Request::new(SkiffBody::full(frame(msg)));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = http::Uri::from_static(path);
    *req.headers_mut() = metadata;
    let h = req.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(http::header::TE, HeaderValue::from_static("trailers"));
    let resp = app.send_h2(req).await.map_err(UnaryError::App)?;
    if resp.status() != StatusCode::OK {
        return Err(UnaryError::Protocol(format!(
            "gRPC app answered HTTP {}",
            resp.status()
        )));
    }
    // Trailers-only response: the status is in the headers.
    if let Some(code) = grpc_status(resp.headers())
        && code != Code::Ok
    {
        return Err(UnaryError::Status(code, grpc_message(resp.headers())));
    }
    let limit = app.max_body_size.saturating_add(5);
    let collected = http_body_util::Limited::new(resp.into_body(), limit)
        .collect()
        .await
        .map_err(|e: BoxError| UnaryError::Protocol(format!("reading gRPC response: {e}")))?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    match grpc_status(&trailers) {
        Some(Code::Ok) => {}
        Some(code) => return Err(UnaryError::Status(code, grpc_message(&trailers))),
        None => {
            return Err(UnaryError::Protocol(
                "gRPC response ended without grpc-status".into(),
            ));
        }
    }
    unframe(&collected.to_bytes()).map_err(UnaryError::Protocol)
}

fn grpc_status(h: &HeaderMap) -> Option<Code> {
    crate::headers::grpc_status(h).map(|c| Code::from_i32(i32::from(c)))
}

fn grpc_message(h: &HeaderMap) -> String {
    let raw = header_str(h, GRPC_MESSAGE.as_str());
    percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let m = InvokeResponse {
            data: None,
            content_type: "text/plain".into(),
        };
        let f = frame(&m);
        assert_eq!(f[0], 0);
        let back: InvokeResponse = unframe(&f).expect("decodes");
        assert_eq!(back, m);
        assert!(unframe::<InvokeResponse>(&f[..3]).is_err());
        let mut truncated = f.to_vec();
        truncated[4] += 5;
        assert!(unframe::<InvokeResponse>(&truncated).is_err());
    }
}
