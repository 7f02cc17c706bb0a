//! Dapr-compatible protobuf messages and gRPC stubs, generated at build time.
//!
//! The packages, message names and field numbers follow Dapr's public wire
//! contract; the `.proto` sources live in `proto/`. Payload fields are
//! `bytes::Bytes` so bodies move through the sidecar without copies. This crate
//! holds no logic.

// Module nesting mirrors the proto packages so generated cross-package
// references (`super::super::...`) resolve.
pub mod dapr {
    pub mod proto {
        pub mod common {
            pub mod v1 {
                tonic::include_proto!("dapr.proto.common.v1");
            }
        }
        pub mod runtime {
            // Generated oneofs (SubscribeTopicEventsResponseAlpha1) hold a
            // large message beside an empty one, as Dapr's proto has them.
            #[allow(clippy::large_enum_variant)]
            pub mod v1 {
                tonic::include_proto!("dapr.proto.runtime.v1");
            }
        }
        pub mod sentry {
            pub mod v1 {
                tonic::include_proto!("dapr.proto.sentry.v1");
            }
        }
        pub mod placement {
            pub mod v1 {
                tonic::include_proto!("dapr.proto.placement.v1");
            }
        }
    }
}

/// Well-known types, generated with `Bytes` payloads.
pub mod google {
    pub mod protobuf {
        tonic::include_proto!("google.protobuf");
    }
}

/// Skiff's echo service, used by the demo, the tests and the benchmarks.
pub mod skiff {
    pub mod echo {
        pub mod v1 {
            tonic::include_proto!("skiff.echo.v1");
        }
    }
}

pub use dapr::proto::common::v1 as common;
pub use dapr::proto::placement::v1 as placement;
pub use dapr::proto::runtime::v1 as runtime;
pub use dapr::proto::sentry::v1 as sentry;
pub use skiff::echo::v1 as echo;

/// Full gRPC method paths the sidecar routes on without decoding.
pub mod paths {
    pub const INVOKE_SERVICE: &str = "/dapr.proto.runtime.v1.Dapr/InvokeService";
    pub const DAPR_SERVICE_PREFIX: &str = "/dapr.proto.runtime.v1.Dapr/";
    pub const ON_INVOKE: &str = "/dapr.proto.runtime.v1.AppCallback/OnInvoke";
    pub const LIST_TOPIC_SUBSCRIPTIONS: &str =
        "/dapr.proto.runtime.v1.AppCallback/ListTopicSubscriptions";
    pub const ON_TOPIC_EVENT: &str = "/dapr.proto.runtime.v1.AppCallback/OnTopicEvent";
    pub const LIST_INPUT_BINDINGS: &str = "/dapr.proto.runtime.v1.AppCallback/ListInputBindings";
    pub const ON_BINDING_EVENT: &str = "/dapr.proto.runtime.v1.AppCallback/OnBindingEvent";
    pub const ON_BULK_TOPIC_EVENT: &str = "/dapr.proto.runtime.v1.AppCallback/OnBulkTopicEvent";
    pub const ON_BULK_TOPIC_EVENT_ALPHA1: &str =
        "/dapr.proto.runtime.v1.AppCallbackAlpha/OnBulkTopicEventAlpha1";
    pub const SIGN_CERTIFICATE: &str = "/dapr.proto.sentry.v1.CA/SignCertificate";
    pub const APP_HEALTH_CHECK: &str = "/dapr.proto.runtime.v1.AppCallbackHealthCheck/HealthCheck";
}
