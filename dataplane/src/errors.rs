//! Errors the sidecar answers with, in Dapr's shapes: a JSON body
//! `{"errorCode": ..., "message": ...}` over HTTP, a `Status` over gRPC, and
//! the status-code tables between the two protocols. [`ApiError`] is one
//! error of Dapr's API with both of its answers: a front door maps every
//! failure through it, so HTTP and gRPC say the same thing.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use tonic::Code;

use crate::headers::{GRPC_MESSAGE, GRPC_STATUS};
use crate::skiff_body::SkiffBody;

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

/// The `domain` of Dapr's rich errors (`google.rpc.ErrorInfo`).
pub const ERROR_DOMAIN: &str = "dapr.io";

/// One error of Dapr's API, as daprd builds it: its `errorCode` and
/// message, the HTTP status and the gRPC code it answers with, and, for
/// the errors daprd enriches, the `ErrorInfo` reason and metadata.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub code: &'static str,
    pub message: String,
    pub http: StatusCode,
    pub grpc: Code,
    /// `ErrorInfo.reason`, e.g. `DAPR_STATE_NOT_CONFIGURED`.
    pub reason: Option<&'static str>,
    /// `ErrorInfo.metadata`.
    pub metadata: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(code: &'static str, http: StatusCode, grpc: Code, message: String) -> Self {
        Self {
            code,
            message,
            http,
            grpc,
            reason: None,
            metadata: Vec::new(),
        }
    }

    /// Adds daprd's `ErrorInfo` detail.
    pub fn with_info(
        mut self,
        reason: &'static str,
        metadata: Vec<(&'static str, String)>,
    ) -> Self {
        self.reason = Some(reason);
        self.metadata = metadata;
        self
    }

    /// The HTTP answer: `{"errorCode","message"}`, with `details` when
    /// the error carries an `ErrorInfo`.
    pub fn to_http(&self) -> Response<SkiffBody> {
        let mut body = serde_json::json!({ "errorCode": self.code, "message": self.message });
        if let Some(reason) = self.reason {
            let metadata: serde_json::Map<String, serde_json::Value> = self
                .metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(v.as_str())))
                .collect();
            body["details"] = serde_json::json!([{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": ERROR_DOMAIN,
                "metadata": metadata,
            }]);
        }
        json_error(self.http, body)
    }

    /// The gRPC answer (trailers-only), with the `ErrorInfo` in
    /// `grpc-status-details-bin` as grpc-go sends it.
    pub fn to_grpc(&self) -> Response<SkiffBody> {
        let mut resp = grpc_error(self.grpc, &self.message);
        if let Some(reason) = self.reason
            && let Ok(v) = HeaderValue::from_str(&self.status_details(reason))
        {
            resp.headers_mut().insert(GRPC_STATUS_DETAILS, v);
        }
        resp
    }

    /// The same answer as a `tonic::Status`, for handlers of the tonic
    /// service; the `ErrorInfo` travels in the status details.
    pub fn to_status(&self) -> tonic::Status {
        match self.reason {
            Some(reason) => tonic::Status::with_details(
                self.grpc,
                self.message.clone(),
                self.status_details_bytes(reason).into(),
            ),
            None => tonic::Status::new(self.grpc, self.message.clone()),
        }
    }

    fn status_details_bytes(&self, reason: &str) -> Vec<u8> {
        use prost::Message;
        let info = rich::ErrorInfo {
            reason: reason.to_owned(),
            domain: ERROR_DOMAIN.to_owned(),
            metadata: self
                .metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        };
        let status = rich::Status {
            code: self.grpc as i32,
            message: self.message.clone(),
            details: vec![skiff_proto::google::protobuf::Any {
                type_url: "type.googleapis.com/google.rpc.ErrorInfo".to_owned(),
                value: info.encode_to_vec().into(),
            }],
        };
        status.encode_to_vec()
    }

    /// `grpc-status-details-bin`: base64 without padding (a `-bin` header).
    fn status_details(&self, reason: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.status_details_bytes(reason))
    }
}

pub const GRPC_STATUS_DETAILS: http::HeaderName =
    http::HeaderName::from_static("grpc-status-details-bin");

/// `google.rpc.Status` and `google.rpc.ErrorInfo`, the two messages of
/// gRPC's rich error model that Dapr sends.
mod rich {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(int32, tag = "1")]
        pub code: i32,
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(message, repeated, tag = "3")]
        pub details: Vec<skiff_proto::google::protobuf::Any>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ErrorInfo {
        #[prost(string, tag = "1")]
        pub reason: String,
        #[prost(string, tag = "2")]
        pub domain: String,
        #[prost(map = "string, string", tag = "3")]
        pub metadata: std::collections::HashMap<String, String>,
    }
}

/// A method and path the HTTP API does not serve: 404, as daprd answers
/// both an unknown path and a known one called with the wrong method.
pub fn no_route(method: &http::Method, path: &str) -> Response<SkiffBody> {
    http_error(
        StatusCode::NOT_FOUND,
        code::NOT_FOUND,
        &format!("{method} {path} is not a route this sidecar serves"),
    )
}

/// An HTTP error answer with Dapr's JSON body.
pub fn http_error(status: StatusCode, error_code: &str, message: &str) -> Response<SkiffBody> {
    json_error(
        status,
        serde_json::json!({ "errorCode": error_code, "message": message }),
    )
}

fn json_error(status: StatusCode, body: serde_json::Value) -> Response<SkiffBody> {
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
    fn rich_errors_carry_their_error_info_both_ways() {
        use prost::Message;
        let e = ApiError::new(
            "ERR_STATE_STORE_NOT_CONFIGURED",
            StatusCode::INTERNAL_SERVER_ERROR,
            Code::FailedPrecondition,
            "state store s is not configured".into(),
        )
        .with_info("DAPR_STATE_NOT_CONFIGURED", vec![("appID", "a".into())]);
        let http = e.to_http();
        assert_eq!(http.status(), 500);
        let SkiffBody::Full(Some(b)) = http.into_body() else {
            panic!("a JSON body")
        };
        let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(v["errorCode"], "ERR_STATE_STORE_NOT_CONFIGURED");
        assert_eq!(v["details"][0]["reason"], "DAPR_STATE_NOT_CONFIGURED");
        assert_eq!(v["details"][0]["metadata"]["appID"], "a");
        let grpc = e.to_grpc();
        assert_eq!(grpc.headers()[GRPC_STATUS], "9");
        let details = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(grpc.headers()[GRPC_STATUS_DETAILS].as_bytes())
                .expect("base64")
        };
        let decoded = rich::Status::decode(&details[..]).expect("google.rpc.Status");
        assert_eq!(decoded.code, Code::FailedPrecondition as i32);
        let info = rich::ErrorInfo::decode(&decoded.details[0].value[..]).expect("ErrorInfo");
        assert_eq!(info.reason, "DAPR_STATE_NOT_CONFIGURED");
        assert_eq!(info.domain, "dapr.io");
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode_grpc_message("a%b\n"), "a%25b%0A");
    }
}
