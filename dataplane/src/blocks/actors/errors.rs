//! Dapr's actor errors, in one place: daprd's codes, HTTP statuses, gRPC
//! codes and words (`pkg/messages/predefined.go`), and the answers for
//! what placement and the turns refuse.

use http::StatusCode;
use tonic::Code;

use super::placement::LookupError;
use super::turns::TurnError;
use crate::errors::ApiError;

fn e(code: &'static str, http: StatusCode, grpc: Code, message: String) -> ApiError {
    ApiError::new(code, http, grpc, message)
}

/// 500 `ERR_ACTOR_RUNTIME_NOT_FOUND`: no state store is the actor store.
pub fn runtime_not_found() -> ApiError {
    e(
        "ERR_ACTOR_RUNTIME_NOT_FOUND",
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::Internal,
        "the state store is not configured to use the actor runtime. Have you set the - name: actorStateStore value: \"true\" in your state store component file?".into(),
    )
}

/// 400 `ERR_ACTOR_NO_APP_CHANNEL`.
pub fn no_app_channel() -> ApiError {
    e(
        "ERR_ACTOR_NO_APP_CHANNEL",
        StatusCode::BAD_REQUEST,
        Code::Unavailable,
        "app channel is not initialized".into(),
    )
}

/// 400 `ERR_ACTOR_INSTANCE_MISSING`: state of an actor not active here.
pub fn instance_missing() -> ApiError {
    e(
        "ERR_ACTOR_INSTANCE_MISSING",
        StatusCode::BAD_REQUEST,
        Code::Internal,
        "actor instance is missing".into(),
    )
}

/// 500 `ERR_ACTOR_INVOKE_METHOD`.
pub fn invoke(why: &str) -> ApiError {
    e(
        "ERR_ACTOR_INVOKE_METHOD",
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::Internal,
        format!("error invoke actor method: {why}"),
    )
}

/// 500 `ERR_ACTOR_STATE_GET`.
pub fn state_get(why: &str) -> ApiError {
    e(
        "ERR_ACTOR_STATE_GET",
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::Internal,
        format!("error getting actor state: {why}"),
    )
}

/// 500 `ERR_ACTOR_STATE_TRANSACTION_SAVE`.
pub fn state_transaction(why: &str) -> ApiError {
    e(
        "ERR_ACTOR_STATE_TRANSACTION_SAVE",
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::Internal,
        format!("error saving actor transaction state: {why}"),
    )
}

/// 403 `ERR_ACTOR_REMINDER_NON_HOSTED`.
pub fn reminder_not_hosted() -> ApiError {
    e(
        "ERR_ACTOR_REMINDER_NON_HOSTED",
        StatusCode::FORBIDDEN,
        Code::PermissionDenied,
        "operations on actor reminders are only possible on hosted actor types".into(),
    )
}

/// 403 `ERR_ACTOR_TYPE_RESERVED`: `dapr.internal.*` types.
pub fn type_reserved(actor_type: &str) -> ApiError {
    e(
        "ERR_ACTOR_TYPE_RESERVED",
        StatusCode::FORBIDDEN,
        Code::PermissionDenied,
        format!(
            "actor type {actor_type:?} is reserved for the Dapr workflow runtime; direct actor API access is not permitted"
        ),
    )
}

/// 500 `ERR_ACTOR_TIMER_CREATE`.
pub fn timer_create(why: &str) -> ApiError {
    e(
        "ERR_ACTOR_TIMER_CREATE",
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::Internal,
        format!("error creating actor timer: {why}"),
    )
}

/// 500 `ERR_ACTOR_REMINDER_CREATE`.
pub fn reminder_create(why: &str) -> ApiError {
    e(
        "ERR_ACTOR_REMINDER_CREATE",
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::Internal,
        format!("error creating actor reminder: {why}"),
    )
}

/// 503 `ERR_ACTOR_RUNTIME_CLOSED`.
pub fn runtime_closed() -> ApiError {
    e(
        "ERR_ACTOR_RUNTIME_CLOSED",
        StatusCode::SERVICE_UNAVAILABLE,
        Code::Unavailable,
        "actor runtime is closed".into(),
    )
}

impl From<LookupError> for ApiError {
    fn from(l: LookupError) -> Self {
        match l {
            LookupError::NoPlacement => e(
                "ERR_ACTOR_NO_PLACEMENT",
                StatusCode::BAD_REQUEST,
                Code::Unavailable,
                "placement service is not configured".into(),
            ),
            LookupError::NoAddress(actor) => e(
                "ERR_ACTOR_NO_ADDRESS",
                StatusCode::NOT_FOUND,
                Code::FailedPrecondition,
                format!("did not find address for actor '{actor}'"),
            ),
        }
    }
}

impl From<TurnError> for ApiError {
    fn from(t: TurnError) -> Self {
        match t {
            TurnError::StackDepth => e(
                "ERR_ACTOR_STACK_DEPTH",
                StatusCode::INTERNAL_SERVER_ERROR,
                Code::ResourceExhausted,
                "maximum stack depth exceeded".into(),
            ),
            TurnError::Closed => runtime_closed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusals_answer_as_daprd() {
        let a: ApiError = LookupError::NoAddress("Cart/1".into()).into();
        assert_eq!(
            (a.code, a.http, a.grpc),
            (
                "ERR_ACTOR_NO_ADDRESS",
                StatusCode::NOT_FOUND,
                Code::FailedPrecondition
            )
        );
        assert_eq!(a.message, "did not find address for actor 'Cart/1'");
        let a: ApiError = LookupError::NoPlacement.into();
        assert_eq!(
            (a.code, a.grpc),
            ("ERR_ACTOR_NO_PLACEMENT", Code::Unavailable)
        );
        let a: ApiError = TurnError::StackDepth.into();
        assert_eq!(
            (a.code, a.http, a.grpc),
            (
                "ERR_ACTOR_STACK_DEPTH",
                StatusCode::INTERNAL_SERVER_ERROR,
                Code::ResourceExhausted
            )
        );
        let a: ApiError = TurnError::Closed.into();
        assert_eq!(a.http, StatusCode::SERVICE_UNAVAILABLE);
        let a = type_reserved("dapr.internal.default.app.workflow");
        assert_eq!(a.http, StatusCode::FORBIDDEN);
        assert!(
            a.message.starts_with("actor type \"dapr.internal."),
            "{}",
            a.message
        );
    }
}
