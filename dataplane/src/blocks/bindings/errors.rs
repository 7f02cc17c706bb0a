//! Dapr's bindings errors, in one place, and how a binding's failures
//! count against its resiliency policy.

use http::StatusCode;
use skiff_components::bindings::BindingError;
use tonic::Code;

use crate::blocks::call::outbound_error;
use crate::errors::ApiError;

outbound_error!(BindingError, Backend, Self::Invalid(_));

/// 500 `ERR_INVOKE_OUTPUT_BINDING`, daprd's one answer for every output
/// binding failure (an unknown binding too: daprd has no "not
/// configured" for bindings).
pub fn output_failed(name: &str, why: &str) -> ApiError {
    ApiError::new(
        "ERR_INVOKE_OUTPUT_BINDING",
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::Internal,
        format!("error invoking output binding {name}: {why}"),
    )
}

/// An output binding that is not loaded.
pub fn not_found(name: &str) -> ApiError {
    output_failed(name, &format!("couldn't find output binding {name}"))
}
