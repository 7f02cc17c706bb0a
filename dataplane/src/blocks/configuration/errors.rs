//! Dapr's configuration errors, in one place, and how a configuration
//! store's failures count against its resiliency policy.

use http::StatusCode;
use skiff_components::configuration::ConfigError;
use tonic::Code;

use crate::blocks::call::outbound_error;
use crate::errors::ApiError;

outbound_error!(ConfigError, Backend);

/// 500 `ERR_CONFIGURATION_STORE_NOT_CONFIGURED`.
pub fn not_configured() -> ApiError {
    ApiError::new(
        "ERR_CONFIGURATION_STORE_NOT_CONFIGURED",
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::FailedPrecondition,
        "configuration stores not configured".into(),
    )
}

/// 400 `ERR_CONFIGURATION_STORE_NOT_FOUND`.
pub fn store_not_found(store: &str) -> ApiError {
    ApiError::new(
        "ERR_CONFIGURATION_STORE_NOT_FOUND",
        StatusCode::BAD_REQUEST,
        Code::InvalidArgument,
        format!("configuration store {store} not found"),
    )
}

/// 500 `ERR_CONFIGURATION_GET`: the store failed.
pub fn get_failed(store: &str, keys: &[String], e: &ConfigError) -> ApiError {
    ApiError::new(
        "ERR_CONFIGURATION_GET",
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::Internal,
        format!("failed to get {keys:?} from Configuration store {store}: {e}"),
    )
}

/// 500 `ERR_CONFIGURATION_SUBSCRIBE`.
pub fn subscribe_failed(store: &str, keys: &[String], why: &str) -> ApiError {
    ApiError::new(
        "ERR_CONFIGURATION_SUBSCRIBE",
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::Internal,
        format!("failed to subscribe {keys:?} from Configuration store {store}: {why}"),
    )
}

/// 500 `ERR_APP_CHANNEL_NIL`: an HTTP subscription before the app
/// channel exists.
pub fn no_app_channel() -> ApiError {
    ApiError::new(
        "ERR_APP_CHANNEL_NIL",
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::Internal,
        "app channel is not initialized".into(),
    )
}
