//! The state block: Dapr's state API over a state store component (key
//! prefixes, ETags, consistency, TTLs, transactions, query). Its HTTP and
//! gRPC adapters arrive with the components; until a store is configured,
//! every state call gets daprd's answer for none.

use http::StatusCode;
use tonic::Code;

use crate::errors::ApiError;

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
    .with_info("DAPR_STATE_NOT_CONFIGURED", super::app_meta(app_id))
}
