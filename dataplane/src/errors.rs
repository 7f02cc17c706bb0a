//! Errors the sidecar answers with, in Dapr's shapes: a JSON body
//! `{"errorCode": ..., "message": ...}` over HTTP, a `Status` over gRPC, and
//! the status-code tables between the two protocols.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use tonic::Code;

use crate::body::SkiffBody;
use crate::headers::{GRPC_MESSAGE, GRPC_STATUS};

/// Dapr's error codes that the invocation path uses.
pub mod code {
    pub const DIRECT_INVOKE: &str = "ERR_DIRECT_INVOKE";
    pub const MALFORMED_REQUEST: &str = "ERR_MALFORMED_REQUEST";
    pub const API_TOKEN: &str = "ERR_API_UNAUTHORIZED";
    pub const HEALTH_NOT_READY: &str = "ERR_HEALTH_NOT_READY";
    pub const HEALTH_APPID_NOT_MATCH: &str = "ERR_HEALTH_APPID_NOT_MATCH";
    pub const NOT_FOUND: &str = "ERR_NOT_FOUND";
    pub const PERMISSION_DENIED: &str = "ERR_PERMISSION_DENIED";
}

/// An HTTP error answer with Dapr's JSON body.
pub fn http_error(status: StatusCode, error_code: &str, message: &str) -> Response<SkiffBody> {
    let body = serde_json::json!({ "errorCode": error_code, "message": message });
    let mut resp = Response::new(SkiffBody::full(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A trailers-only gRPC error response, for paths that answer gRPC without a
/// tonic service (proxy mode).
pub fn grpc_error(code: Code, message: &str) -> Response<SkiffBody> {
    let mut resp = Response::new(SkiffBody::Empty);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(GRPC_STATUS, HeaderValue::from(code as i32));
    if let Ok(v) = HeaderValue::from_str(&percent_encode_grpc_message(message)) {
        h.insert(GRPC_MESSAGE, v);
    }
    resp
}

/// grpc-message is percent-encoded (gRPC over HTTP/2 spec).
pub fn percent_encode_grpc_message(m: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');
    percent_encoding::utf8_percent_encode(m, SET).to_string()
}

/// gRPC code → HTTP status (grpc-gateway's table, which Dapr uses).
pub fn http_status_from_grpc(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// HTTP status → gRPC code, for an HTTP app answering an `InvokeService` call.
pub fn grpc_code_from_http(status: StatusCode) -> Code {
    match status.as_u16() {
        200..=299 => Code::Ok,
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        408 | 499 => Code::Cancelled,
        409 => Code::Aborted,
        412 => Code::FailedPrecondition,
        416 => Code::OutOfRange,
        429 => Code::ResourceExhausted,
        501 => Code::Unimplemented,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        _ => Code::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_round_trip_common_codes() {
        for c in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::ResourceExhausted,
            Code::Unimplemented,
            Code::Unavailable,
            Code::DeadlineExceeded,
        ] {
            assert_eq!(grpc_code_from_http(http_status_from_grpc(c)), c, "{c:?}");
        }
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode_grpc_message("a%b\n"), "a%25b%0A");
    }
}
