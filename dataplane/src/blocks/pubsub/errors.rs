//! Dapr's pub/sub errors, in one place: each with daprd's code, HTTP
//! status and gRPC code.

use http::StatusCode;
use tonic::Code;

use crate::errors::ApiError;
use skiff_components::pubsub::PubSubError;

fn e(
    code: &'static str,
    http: StatusCode,
    grpc: Code,
    reason: &'static str,
    msg: String,
) -> ApiError {
    ApiError::new(code, http, grpc, msg).with_info(reason, Vec::new())
}

pub fn name_empty() -> ApiError {
    e(
        "ERR_PUBSUB_EMPTY",
        StatusCode::NOT_FOUND,
        Code::InvalidArgument,
        "DAPR_PUBSUB_NAME_EMPTY",
        "pubsub name is empty".into(),
    )
}

pub fn not_found(name: &str) -> ApiError {
    e(
        "ERR_PUBSUB_NOT_FOUND",
        StatusCode::NOT_FOUND,
        Code::InvalidArgument,
        "DAPR_PUBSUB_NOT_FOUND",
        format!("pubsub {name} is not found"),
    )
}

pub fn topic_empty(name: &str) -> ApiError {
    e(
        "ERR_TOPIC_NAME_EMPTY",
        StatusCode::NOT_FOUND,
        Code::InvalidArgument,
        "DAPR_PUBSUB_TOPIC_NAME_EMPTY",
        format!("topic is empty in pubsub {name}"),
    )
}

pub fn forbidden(_name: &str, topic: &str, app_id: &str) -> ApiError {
    e(
        "ERR_PUBSUB_FORBIDDEN",
        StatusCode::FORBIDDEN,
        Code::PermissionDenied,
        "DAPR_PUBSUB_FORBIDDEN",
        format!("topic {topic} is not allowed for app id {app_id}"),
    )
}

pub fn publish_failed(name: &str, topic: &str, err: &PubSubError) -> ApiError {
    e(
        "ERR_PUBSUB_PUBLISH_MESSAGE",
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::Internal,
        "DAPR_PUBSUB_PUBLISH_MESSAGE",
        format!("error when publishing to topic {topic} in pubsub {name}: {err}"),
    )
}

pub fn bad_metadata(_name: &str, why: &str) -> ApiError {
    e(
        "ERR_PUBSUB_REQUEST_METADATA",
        StatusCode::BAD_REQUEST,
        Code::InvalidArgument,
        "DAPR_PUBSUB_METADATA_DESERIALIZATION",
        format!("failed deserializing metadata. Error: {why}"),
    )
}

pub fn cloud_event(_name: &str) -> ApiError {
    e(
        "ERR_PUBSUB_CLOUD_EVENTS_SER",
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument,
        "DAPR_PUBSUB_CLOUD_EVENT_CREATION",
        "cannot create cloudevent".into(),
    )
}

pub fn bulk_entry_ids(name: &str, topic: &str) -> ApiError {
    e(
        "ERR_PUBSUB_EVENTS_SER",
        StatusCode::BAD_REQUEST,
        Code::InvalidArgument,
        "DAPR_PUBSUB_MARSHAL_EVENTS",
        format!(
            "error marshaling events to bytes for topic {topic} pubsub {name}. error: entryId is duplicated or empty"
        ),
    )
}

pub fn bad_events(name: &str, topic: &str, why: &str) -> ApiError {
    e(
        "ERR_PUBSUB_EVENTS_SER",
        StatusCode::BAD_REQUEST,
        Code::InvalidArgument,
        "DAPR_PUBSUB_UNMARSHAL_EVENTS",
        format!("error when unmarshaling the request for topic {topic} pubsub {name}: {why}"),
    )
}
