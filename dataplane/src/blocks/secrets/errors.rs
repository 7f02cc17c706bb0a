//! Dapr's secrets errors, in one place: daprd's codes, HTTP statuses and
//! gRPC codes, and how a secret store's failures count against its
//! resiliency policy. No message here carries a secret's value.

use http::StatusCode;
use skiff_components::secrets::SecretError;
use tonic::Code;

use crate::blocks::call::outbound_error;
use crate::errors::ApiError;

// A secret that is not there is the caller's answer, not a failure.
outbound_error!(SecretError, Backend, Self::NotFound(_));

/// 500 `ERR_SECRET_STORES_NOT_CONFIGURED`.
pub fn not_configured() -> ApiError {
    ApiError::new(
        "ERR_SECRET_STORES_NOT_CONFIGURED",
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::FailedPrecondition,
        "secret store is not configured".into(),
    )
}

/// `ERR_SECRET_STORE_NOT_FOUND`: daprd answers 401 here (its docs say
/// 400).
pub fn store_not_found(store: &str) -> ApiError {
    ApiError::new(
        "ERR_SECRET_STORE_NOT_FOUND",
        StatusCode::UNAUTHORIZED,
        Code::InvalidArgument,
        format!("failed finding secret store with key {store}"),
    )
}

/// 403 `ERR_PERMISSION_DENIED`: the Configuration's secret scopes deny
/// `name`.
pub fn denied(store: &str, name: &str) -> ApiError {
    ApiError::new(
        "ERR_PERMISSION_DENIED",
        StatusCode::FORBIDDEN,
        Code::PermissionDenied,
        format!("access denied by policy to get \"{name}\" from \"{store}\""),
    )
}

/// 500 `ERR_SECRET_GET`: the store failed (`name` empty for a bulk get).
pub fn get_failed(store: &str, name: &str, e: &SecretError) -> ApiError {
    let message = if name.is_empty() {
        format!("failed getting secrets from secret store {store}: {e}")
    } else {
        format!("failed getting secret with key {name} from secret store {store}: {e}")
    };
    ApiError::new(
        "ERR_SECRET_GET",
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::Internal,
        message,
    )
}
