//! Dapr's lock errors, in one place: daprd's codes, HTTP statuses and
//! gRPC codes, checked in its order by the block (not configured, an
//! empty resource or owner, an unknown store, a store failure), and how a
//! lock store's failures count against its resiliency policy.

use http::StatusCode;
use skiff_components::lock::LockError;
use tonic::Code;

use crate::blocks::call::outbound_error;
use crate::errors::ApiError;

outbound_error!(LockError, Backend);

/// 500 `ERR_LOCK_STORE_NOT_CONFIGURED`.
pub fn not_configured() -> ApiError {
    ApiError::new(
        "ERR_LOCK_STORE_NOT_CONFIGURED",
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::FailedPrecondition,
        "lock store is not configured".into(),
    )
}

/// 400 `ERR_MALFORMED_REQUEST`: an empty resource or owner, a
/// non-positive expiry.
pub fn malformed(msg: String) -> ApiError {
    ApiError::new(
        "ERR_MALFORMED_REQUEST",
        StatusCode::BAD_REQUEST,
        Code::InvalidArgument,
        msg,
    )
}

/// 400 `ERR_LOCK_STORE_NOT_FOUND`.
pub fn store_not_found(store: &str) -> ApiError {
    ApiError::new(
        "ERR_LOCK_STORE_NOT_FOUND",
        StatusCode::BAD_REQUEST,
        Code::InvalidArgument,
        format!("lock store {store} not found"),
    )
}

/// 500 `ERR_TRY_LOCK`: the store failed.
pub fn try_lock_failed(why: String) -> ApiError {
    ApiError::new(
        "ERR_TRY_LOCK",
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::Internal,
        format!("failed to try acquiring lock: {why}"),
    )
}

/// 500 `ERR_UNLOCK`: the store failed.
pub fn unlock_failed(why: String) -> ApiError {
    ApiError::new(
        "ERR_UNLOCK",
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::Internal,
        format!("failed to release lock: {why}"),
    )
}
