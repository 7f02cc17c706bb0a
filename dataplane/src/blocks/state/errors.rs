//! Dapr's state errors, in one place: daprd's codes, HTTP statuses, gRPC
//! codes and `ErrorInfo` reasons, and how a store's failures count
//! against its resiliency policy (an ETag conflict is the caller's
//! answer, never retried nor held against the breaker).

use http::StatusCode;
use skiff_components::state::StateError;
use tonic::Code;

use super::{Action, MAX_TRANSACTION_OPS};
use crate::blocks::app_meta;
use crate::blocks::call::outbound_error;
use crate::errors::ApiError;

outbound_error!(
    StateError,
    Backend,
    Self::EtagMismatch(_) | Self::EtagInvalid(_) | Self::Invalid(_)
);

/// No state store is configured (checked before the store's name):
/// 500 `ERR_STATE_STORE_NOT_CONFIGURED` / `FailedPrecondition`, with
/// daprd's `ErrorInfo` (`DAPR_STATE_NOT_CONFIGURED`).
pub fn not_configured(store: &str, app_id: &str) -> ApiError {
    let message = if store.is_empty() {
        "state store is not configured".to_owned()
    } else {
        format!("state store {store} is not configured")
    };
    ApiError::new(
        "ERR_STATE_STORE_NOT_CONFIGURED",
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::FailedPrecondition,
        message,
    )
    .with_info("DAPR_STATE_NOT_CONFIGURED", app_meta(app_id))
}

/// 400 `ERR_STATE_STORE_NOT_FOUND`.
pub fn store_not_found(store: &str, app_id: &str) -> ApiError {
    ApiError::new(
        "ERR_STATE_STORE_NOT_FOUND",
        StatusCode::BAD_REQUEST,
        Code::InvalidArgument,
        format!("state store {store} is not found"),
    )
    .with_info("DAPR_STATE_NOT_FOUND", app_meta(app_id))
}

/// 400 `ERR_MALFORMED_REQUEST`: a key with Dapr's separator in it.
pub fn illegal_key(key: &str) -> ApiError {
    ApiError::new(
        "ERR_MALFORMED_REQUEST",
        StatusCode::BAD_REQUEST,
        Code::InvalidArgument,
        format!("input key/keyPrefix '{key}' can't contain '||'"),
    )
    .with_info("DAPR_STATE_ILLEGAL_KEY", Vec::new())
}

/// A store's failure as daprd answers it for `action`.
pub fn store_error(action: Action, store: &str, key: &str, e: &StateError) -> ApiError {
    let (http, grpc) = match e {
        StateError::EtagMismatch(_) => (StatusCode::CONFLICT, Code::Aborted),
        StateError::EtagInvalid(_) => (StatusCode::BAD_REQUEST, Code::InvalidArgument),
        StateError::Invalid(_) | StateError::Backend(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, Code::Internal)
        }
    };
    let message = match action {
        Action::Save => format!("failed saving state in state store {store}: {e}"),
        Action::Get => format!("fail to get {key} from state store {store}: {e}"),
        Action::Delete => format!("failed deleting state with key {key}: {e}"),
        Action::BulkGet => format!("failed getting bulk state from state store {store}: {e}"),
        Action::BulkDelete => format!("failed deleting state in state store {store}: {e}"),
        Action::Transaction => format!("error while executing state transaction: {e}"),
        Action::Query => format!("failed query in state store {store}: {e}"),
    };
    ApiError::new(action.code(), http, grpc, message)
}

/// A request that is not valid: 400 / `InvalidArgument` with `code`.
pub fn bad_request(code: &'static str, message: String) -> ApiError {
    ApiError::new(
        code,
        StatusCode::BAD_REQUEST,
        Code::InvalidArgument,
        message,
    )
}

/// 500 `ERR_STATE_STORE_NOT_SUPPORTED` / `Unimplemented`: a store without
/// transactions.
pub fn no_transactions(store: &str, app_id: &str) -> ApiError {
    ApiError::new(
        "ERR_STATE_STORE_NOT_SUPPORTED",
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::Unimplemented,
        format!("state store {store} doesn't support transactions"),
    )
    .with_info("DAPR_STATE_TRANSACTIONS_NOT_SUPPORTED", app_meta(app_id))
}

/// 400 `ERR_STATE_STORE_TOO_MANY_TRANSACTIONS`.
pub fn too_many_operations(n: usize) -> ApiError {
    bad_request(
        "ERR_STATE_STORE_TOO_MANY_TRANSACTIONS",
        format!(
            "the transaction contains {n} operations, which is more than what the state store supports: {MAX_TRANSACTION_OPS}"
        ),
    )
}

/// 500 `ERR_STATE_TRANSACTION`: every store failure inside a transaction
/// (an ETag mismatch too), as daprd answers.
pub fn transaction_failed(e: &StateError) -> ApiError {
    ApiError::new(
        Action::Transaction.code(),
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::Internal,
        format!("error while executing state transaction: {e}"),
    )
}

/// 500 `ERR_STATE_STORE_NOT_SUPPORTED` / `Internal`: a store without the
/// query API.
pub fn no_query(store: &str) -> ApiError {
    ApiError::new(
        "ERR_STATE_STORE_NOT_SUPPORTED",
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::Internal,
        format!("state store {store} doesn't support query"),
    )
}

/// 400 `ERR_MALFORMED_REQUEST`: a query that does not parse.
pub fn bad_query(why: &str) -> ApiError {
    bad_request(
        "ERR_MALFORMED_REQUEST",
        format!("failed to parse JSON query body: {why}"),
    )
}
