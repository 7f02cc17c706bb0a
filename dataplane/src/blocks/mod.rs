//! The building blocks: state, pub/sub, secrets, bindings, configuration,
//! lock and actors, each Dapr's semantics over a component (see
//! `../shared/architecture.md`: `blocks/<block>/` holds a block's rules and
//! its thin HTTP and gRPC adapters; the drivers live in the components
//! crate).
//!
//! State, secrets, pub/sub, bindings, lock and configuration are served ([`Blocks`], loaded by
//! [`components`]).
//! Until the other blocks arrive, their APIs answer exactly what daprd
//! answers when none is configured ([`Block::not_configured`]), on both
//! front doors, and every other RPC of Dapr's runtime service that Skiff
//! does not serve says so by name ([`rpc`]).

pub mod actors;
pub mod adapter;
pub mod bindings;
pub mod call;
pub mod components;
pub mod configuration;
pub mod gojson;
pub mod lock;
pub mod metrics;
pub mod pubsub;
pub mod secrets;
pub mod state;

/// The blocks that have components, as the front doors reach them.
#[derive(Default)]
pub struct Blocks {
    pub state: state::StateBlock,
    pub secrets: secrets::SecretsBlock,
    pub pubsub: pubsub::PubSubBlock,
    pub lock: lock::LockBlock,
    pub configuration: configuration::ConfigurationBlock,
    pub bindings: Arc<bindings::BindingsBlock>,
}

use std::sync::Arc;

use http::{HeaderMap, StatusCode};
use tonic::Code;

use crate::telemetry::trace::{self, Tracer};

use crate::errors::ApiError;

/// Runs one building-block call in a span of its own (a child of the
/// caller's trace, from `headers`), named `name` (`SaveState`, ...),
/// `db.system` the block's,
/// the component as `db.name`, as daprd's API spans are. `failed` says
/// why the answer is an error. Nothing is done when no exporter is set.
pub async fn traced<O>(
    tracer: &Tracer,
    headers: Option<&HeaderMap>,
    block: Block,
    name: &'static str,
    component: &str,
    call: impl Future<Output = O>,
    failed: impl FnOnce(&O) -> Option<String>,
) -> O {
    let Some(h) = headers.filter(|_| tracer.exporting()) else {
        return call.await;
    };
    let span = tracer.start(h, trace::Kind::Server);
    let out = call.await;
    if span.is_recorded() {
        let error = failed(&out);
        tracer.finish(&span, || trace::Described {
            name: name.to_owned(),
            attributes: vec![
                ("db.system", trace::Value::Str(block.system().into())),
                ("db.name", trace::Value::Str(component.to_owned())),
                ("db.operation", trace::Value::Str(name.to_owned())),
            ],
            error,
        });
    }
    out
}

/// A building block, as the API routes name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    State,
    PubSub,
    Secrets,
    Bindings,
    Configuration,
    Lock,
    Actors,
}

impl Block {
    /// daprd's `db.system` for the block's spans.
    pub fn system(self) -> &'static str {
        match self {
            Self::State => "state",
            Self::Secrets => "secrets",
            Self::Lock => "lock",
            Self::PubSub => "pubsub",
            Self::Bindings => "bindings",
            Self::Configuration => "configuration",
            Self::Actors => "actors",
        }
    }

    /// What daprd answers for this block when no component for it is
    /// configured (`name`: the component the call named, when it did).
    pub fn not_configured(self, name: &str, app_id: &str) -> ApiError {
        let e = |code, http, grpc, msg: &str| ApiError::new(code, http, grpc, msg.to_owned());
        match self {
            Self::State => state::not_configured(name, app_id),
            Self::PubSub => e(
                "ERR_PUBSUB_NOT_CONFIGURED",
                StatusCode::BAD_REQUEST,
                Code::FailedPrecondition,
                "no pubsub is configured",
            )
            .with_info("DAPR_PUBSUB_NOT_CONFIGURED", app_meta(app_id)),
            Self::Secrets => secrets::errors::not_configured(),
            Self::Bindings => bindings::errors::not_found(name),
            Self::Configuration => configuration::errors::not_configured(),
            Self::Lock => lock::errors::not_configured(),
            Self::Actors => actors::errors::runtime_not_found(),
        }
    }
}

/// `ErrorInfo` metadata naming the app, as daprd adds it.
pub(crate) fn app_meta(app_id: &str) -> Vec<(&'static str, String)> {
    if app_id.is_empty() {
        Vec::new()
    } else {
        vec![("appID", app_id.to_owned())]
    }
}

/// The unary RPCs the gRPC door reads and answers itself: the hot ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unary {
    GetState,
    SaveState,
    DeleteState,
    PublishEvent,
    InvokeService,
}

/// What Skiff does with one RPC of `dapr.proto.runtime.v1.Dapr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    /// Served by the door itself, decoded in place (see `api::unary`).
    Unary(Unary),
    /// Served by the tonic service, its one request message read and
    /// checked by the door first (limit, framing, compression), so every
    /// unary RPC refuses bad input alike.
    Served,
    /// Served by the tonic service, the request a stream it reads itself.
    ClientStream,
    /// A building block's RPC: its block answers.
    Block(Block),
    /// Dapr has it and Skiff does not serve it yet.
    NotYet,
    /// Not an RPC of Dapr's runtime service.
    Unknown,
}

/// The RPCs of Dapr's runtime service, as the Dapr 1.19 SDKs' protos list
/// them, by block.
const RPCS: &[(&str, Rpc)] = &[
    ("InvokeService", Rpc::Unary(Unary::InvokeService)),
    ("GetState", Rpc::Unary(Unary::GetState)),
    ("GetBulkState", Rpc::Served),
    ("SaveState", Rpc::Unary(Unary::SaveState)),
    ("QueryStateAlpha1", Rpc::Served),
    ("DeleteState", Rpc::Unary(Unary::DeleteState)),
    ("DeleteBulkState", Rpc::Served),
    ("ExecuteStateTransaction", Rpc::Served),
    ("PublishEvent", Rpc::Unary(Unary::PublishEvent)),
    ("BulkPublishEventAlpha1", Rpc::Served),
    ("BulkPublishEvent", Rpc::Served),
    ("SubscribeTopicEventsAlpha1", Rpc::ClientStream),
    ("InvokeBinding", Rpc::Served),
    ("GetSecret", Rpc::Served),
    ("GetBulkSecret", Rpc::Served),
    ("RegisterActorTimer", Rpc::Block(Block::Actors)),
    ("UnregisterActorTimer", Rpc::Block(Block::Actors)),
    ("RegisterActorReminder", Rpc::Block(Block::Actors)),
    ("UnregisterActorReminder", Rpc::Block(Block::Actors)),
    ("UnregisterActorRemindersByType", Rpc::Block(Block::Actors)),
    ("ListActorReminders", Rpc::Block(Block::Actors)),
    ("ListActorTimers", Rpc::Block(Block::Actors)),
    ("GetActorState", Rpc::Block(Block::Actors)),
    ("GetActorReminder", Rpc::Block(Block::Actors)),
    ("GetActorTimer", Rpc::Block(Block::Actors)),
    ("ExecuteActorStateTransaction", Rpc::Block(Block::Actors)),
    ("InvokeActor", Rpc::Block(Block::Actors)),
    ("SubscribeActorEventsAlpha1", Rpc::Block(Block::Actors)),
    ("GetConfigurationAlpha1", Rpc::Served),
    ("GetConfiguration", Rpc::Served),
    ("SubscribeConfigurationAlpha1", Rpc::Served),
    ("SubscribeConfiguration", Rpc::Served),
    ("UnsubscribeConfigurationAlpha1", Rpc::Served),
    ("UnsubscribeConfiguration", Rpc::Served),
    ("TryLockAlpha1", Rpc::Served),
    ("UnlockAlpha1", Rpc::Served),
    ("EncryptAlpha1", Rpc::NotYet),
    ("DecryptAlpha1", Rpc::NotYet),
    ("GetMetadata", Rpc::Served),
    ("SetMetadata", Rpc::Served),
    ("SubtleGetKeyAlpha1", Rpc::NotYet),
    ("SubtleEncryptAlpha1", Rpc::NotYet),
    ("SubtleDecryptAlpha1", Rpc::NotYet),
    ("SubtleWrapKeyAlpha1", Rpc::NotYet),
    ("SubtleUnwrapKeyAlpha1", Rpc::NotYet),
    ("SubtleSignAlpha1", Rpc::NotYet),
    ("SubtleVerifyAlpha1", Rpc::NotYet),
    ("StartWorkflowAlpha1", Rpc::NotYet),
    ("GetWorkflowAlpha1", Rpc::NotYet),
    ("PurgeWorkflowAlpha1", Rpc::NotYet),
    ("TerminateWorkflowAlpha1", Rpc::NotYet),
    ("PauseWorkflowAlpha1", Rpc::NotYet),
    ("ResumeWorkflowAlpha1", Rpc::NotYet),
    ("RaiseEventWorkflowAlpha1", Rpc::NotYet),
    ("StartWorkflowBeta1", Rpc::NotYet),
    ("GetWorkflowBeta1", Rpc::NotYet),
    ("PurgeWorkflowBeta1", Rpc::NotYet),
    ("TerminateWorkflowBeta1", Rpc::NotYet),
    ("PauseWorkflowBeta1", Rpc::NotYet),
    ("ResumeWorkflowBeta1", Rpc::NotYet),
    ("RaiseEventWorkflowBeta1", Rpc::NotYet),
    ("Shutdown", Rpc::NotYet),
    ("ScheduleJobAlpha1", Rpc::NotYet),
    ("ScheduleJob", Rpc::NotYet),
    ("GetJobAlpha1", Rpc::NotYet),
    ("GetJob", Rpc::NotYet),
    ("DeleteJobAlpha1", Rpc::NotYet),
    ("DeleteJob", Rpc::NotYet),
    ("DeleteJobsByPrefixAlpha1", Rpc::NotYet),
    ("DeleteJobsByPrefix", Rpc::NotYet),
    ("ListJobsAlpha1", Rpc::NotYet),
    ("ListJobs", Rpc::NotYet),
    ("ConverseAlpha1", Rpc::NotYet),
    ("ConverseAlpha2", Rpc::NotYet),
    ("CreateIndexAlpha1", Rpc::NotYet),
    ("GetIndexAlpha1", Rpc::NotYet),
    ("ListIndexesAlpha1", Rpc::NotYet),
    ("DeleteIndexAlpha1", Rpc::NotYet),
    ("IndexDocumentsAlpha1", Rpc::NotYet),
    ("GetDocumentsAlpha1", Rpc::NotYet),
    ("DeleteDocumentsAlpha1", Rpc::NotYet),
    ("SearchAlpha1", Rpc::NotYet),
    ("CreateCollectionAlpha1", Rpc::NotYet),
    ("GetCollectionAlpha1", Rpc::NotYet),
    ("ListCollectionsAlpha1", Rpc::NotYet),
    ("DeleteCollectionAlpha1", Rpc::NotYet),
    ("UpsertVectorsAlpha1", Rpc::NotYet),
    ("DeleteVectorsAlpha1", Rpc::NotYet),
    ("GetVectorsAlpha1", Rpc::NotYet),
    ("QueryVectorsAlpha1", Rpc::NotYet),
    ("BatchQueryVectorsAlpha1", Rpc::NotYet),
    ("SetBinaryFileAlpha1", Rpc::NotYet),
    ("GetBinaryFileAlpha1", Rpc::NotYet),
    ("DeleteBinaryFileAlpha1", Rpc::NotYet),
];

/// What to do with `Dapr/<method>`.
pub fn rpc(method: &str) -> Rpc {
    RPCS.iter()
        .find(|(name, _)| *name == method)
        .map_or(Rpc::Unknown, |(_, r)| *r)
}

/// The answer to an RPC of Dapr's runtime service that Skiff does not
/// serve (yet), naming it.
pub fn not_served(method: &str, known: bool) -> ApiError {
    let message = if known {
        format!("dapr.proto.runtime.v1.Dapr/{method} is not implemented by Skiff yet")
    } else {
        format!("dapr.proto.runtime.v1.Dapr/{method} is not a method of Dapr's runtime API")
    };
    ApiError::new(
        "ERR_NOT_FOUND",
        StatusCode::NOT_IMPLEMENTED,
        Code::Unimplemented,
        message,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpcs_map_to_their_blocks() {
        assert_eq!(rpc("InvokeService"), Rpc::Unary(Unary::InvokeService));
        assert_eq!(rpc("GetState"), Rpc::Unary(Unary::GetState));
        assert_eq!(rpc("GetBulkState"), Rpc::Served);
        assert_eq!(rpc("TryLockAlpha1"), Rpc::Served);
        assert_eq!(rpc("GetConfiguration"), Rpc::Served);
        assert_eq!(rpc("InvokeBinding"), Rpc::Served);
        assert_eq!(rpc("InvokeActor"), Rpc::Block(Block::Actors));
        assert_eq!(rpc("GetMetadata"), Rpc::Served);
        assert_eq!(rpc("Shutdown"), Rpc::NotYet);
        assert_eq!(rpc("Nope"), Rpc::Unknown);
        let names: std::collections::HashSet<_> = RPCS.iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), RPCS.len(), "each RPC once");
    }

    #[test]
    fn not_configured_answers_follow_daprd() {
        let s = Block::State.not_configured("orders", "a");
        assert_eq!((s.http.as_u16(), s.grpc), (500, Code::FailedPrecondition));
        assert_eq!(s.message, "state store orders is not configured");
        let p = Block::PubSub.not_configured("", "a");
        assert_eq!(
            (p.code, p.http.as_u16()),
            ("ERR_PUBSUB_NOT_CONFIGURED", 400)
        );
        let b = Block::Bindings.not_configured("out", "a");
        assert_eq!(b.grpc, Code::Internal);
        assert!(
            not_served("ConverseAlpha1", true)
                .message
                .contains("ConverseAlpha1")
        );
    }
}
