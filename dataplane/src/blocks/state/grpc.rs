//! The state API over gRPC (`GetState`, `GetBulkState`, `SaveState`,
//! `DeleteState`, `DeleteBulkState`, `ExecuteStateTransaction`,
//! `QueryStateAlpha1`): protobuf in, the block's calls, protobuf out. Where
//! gRPC differs from HTTP it is here: values are raw bytes unless an item
//! says `contentType: application/json`, a missing key is an empty
//! response, unknown transaction operations are `Unimplemented`.

use std::collections::HashMap;

use bytes::Bytes;
use skiff_components::state::{Concurrency, Consistency, StateError};
use skiff_proto::common::{StateItem, StateOptions, state_options};
use skiff_proto::runtime as pb;
use tonic::{Code, Status};

use super::{
    Action, DeleteItem, SaveItem, StateBlock, TxOp, gojson, parse_ttl, read_metadata, store_error,
};
use crate::errors::ApiError;

fn concurrency(o: Option<&StateOptions>) -> Concurrency {
    match o.map(StateOptions::concurrency) {
        Some(state_options::StateConcurrency::ConcurrencyFirstWrite) => Concurrency::FirstWrite,
        _ => Concurrency::LastWrite,
    }
}

fn consistency(o: Option<&StateOptions>) -> Consistency {
    o.map_or(Consistency::Eventual, |o| consistency_of(o.consistency()))
}

fn consistency_of(v: state_options::StateConsistency) -> Consistency {
    match v {
        state_options::StateConsistency::ConsistencyStrong => Consistency::Strong,
        _ => Consistency::Eventual,
    }
}

fn status(e: ApiError) -> Status {
    e.to_status()
}

/// A `StateItem` to save. `raw`: transaction upserts store bytes as given
/// whatever the content type (daprd's behaviour).
fn save_item(store: &str, it: StateItem, raw: bool) -> Result<SaveItem, ApiError> {
    if it.key.is_empty() {
        return Err(ApiError::new(
            "ERR_STATE_SAVE",
            ::http::StatusCode::BAD_REQUEST,
            Code::InvalidArgument,
            "key is empty".into(),
        ));
    }
    let json = !raw
        && it
            .metadata
            .get("contentType")
            .is_some_and(|c| c.starts_with("application/json"));
    let (value, is_json) = if json {
        let invalid = |e: &dyn std::fmt::Display| {
            store_error(
                Action::Save,
                store,
                &it.key,
                &StateError::Invalid(format!("value is not JSON: {e}")),
            )
        };
        // Checked, then re-encoded from its text (no tree of it built).
        let raw: &serde_json::value::RawValue =
            serde_json::from_slice(&it.value).map_err(|e| invalid(&e))?;
        let v = gojson::reencode(raw.get()).map_err(|e| invalid(&e))?;
        (Bytes::from(v), true)
    } else {
        (it.value, false)
    };
    let ttl = parse_ttl(it.metadata.get("ttlInSeconds").map(String::as_str))
        .map_err(|e| store_error(Action::Save, store, &it.key, &StateError::Invalid(e)))?;
    Ok(SaveItem {
        concurrency: concurrency(it.options.as_ref()),
        consistency: consistency(it.options.as_ref()),
        key: it.key,
        value,
        is_json,
        etag: it.etag.map(|e| e.value),
        ttl,
    })
}

fn delete_item(it: StateItem) -> DeleteItem {
    DeleteItem {
        concurrency: concurrency(it.options.as_ref()),
        consistency: consistency(it.options.as_ref()),
        key: it.key,
        etag: it.etag.map(|e| e.value),
    }
}

pub async fn get_state(
    block: &StateBlock,
    r: pb::GetStateRequest,
) -> Result<pb::GetStateResponse, Status> {
    let c = consistency_of(r.consistency());
    match block.get(&r.store_name, &r.key, c).await.map_err(status)? {
        None => Ok(pb::GetStateResponse::default()),
        Some(item) => Ok(pb::GetStateResponse {
            metadata: read_metadata(&item)
                .map(|(k, v)| HashMap::from([(k.to_owned(), v)]))
                .unwrap_or_default(),
            etag: item.etag.unwrap_or_default(),
            data: item.data,
        }),
    }
}

pub async fn get_bulk_state(
    block: &StateBlock,
    r: pb::GetBulkStateRequest,
) -> Result<pb::GetBulkStateResponse, Status> {
    let got = block
        .bulk_get(&r.store_name, &r.keys)
        .await
        .map_err(status)?;
    let items = r
        .keys
        .into_iter()
        .zip(got)
        .map(|(key, res)| match res {
            Ok(Some(item)) => pb::BulkStateItem {
                key,
                metadata: read_metadata(&item)
                    .map(|(k, v)| HashMap::from([(k.to_owned(), v)]))
                    .unwrap_or_default(),
                etag: item.etag.unwrap_or_default(),
                data: item.data,
                error: String::new(),
            },
            Ok(None) => pb::BulkStateItem {
                key,
                ..Default::default()
            },
            Err(e) => pb::BulkStateItem {
                key,
                error: e,
                ..Default::default()
            },
        })
        .collect();
    Ok(pb::GetBulkStateResponse { items })
}

pub async fn save_state(block: &StateBlock, r: pb::SaveStateRequest) -> Result<(), Status> {
    block.store(&r.store_name).map_err(status)?;
    let items = r
        .states
        .into_iter()
        .map(|it| save_item(&r.store_name, it, false))
        .collect::<Result<Vec<_>, _>>()
        .map_err(status)?;
    if items.is_empty() {
        return Ok(());
    }
    block.save(&r.store_name, items).await.map_err(status)
}

pub async fn delete_state(block: &StateBlock, r: pb::DeleteStateRequest) -> Result<(), Status> {
    let item = DeleteItem {
        concurrency: concurrency(r.options.as_ref()),
        consistency: consistency(r.options.as_ref()),
        key: r.key,
        etag: r.etag.map(|e| e.value),
    };
    block
        .delete(&r.store_name, item, Action::Delete)
        .await
        .map_err(status)
}

pub async fn delete_bulk_state(
    block: &StateBlock,
    r: pb::DeleteBulkStateRequest,
) -> Result<(), Status> {
    block.store(&r.store_name).map_err(status)?;
    let mut first = None;
    for it in r.states {
        if let Err(e) = block
            .delete(&r.store_name, delete_item(it), Action::BulkDelete)
            .await
            && first.is_none()
        {
            first = Some(e);
        }
    }
    first.map_or(Ok(()), |e| Err(status(e)))
}

pub async fn execute_state_transaction(
    block: &StateBlock,
    r: pb::ExecuteStateTransactionRequest,
) -> Result<(), Status> {
    block.store(&r.store_name).map_err(status)?;
    let mut ops = Vec::with_capacity(r.operations.len());
    for op in r.operations {
        let item = op.request.unwrap_or_default();
        ops.push(match op.operation_type.as_str() {
            "upsert" => TxOp::Upsert(save_item(&r.store_name, item, true).map_err(status)?),
            "delete" => TxOp::Delete(delete_item(item)),
            other => {
                return Err(Status::unimplemented(format!(
                    "operation type {other} not supported"
                )));
            }
        });
    }
    block.transaction(&r.store_name, ops).await.map_err(status)
}

pub async fn query_state(
    block: &StateBlock,
    r: pb::QueryStateRequest,
) -> Result<pb::QueryStateResponse, Status> {
    let a = block
        .query(&r.store_name, r.query.as_bytes())
        .await
        .map_err(status)?;
    Ok(pb::QueryStateResponse {
        results: a
            .results
            .into_iter()
            .map(|(key, item)| pb::QueryStateItem {
                key,
                data: item.data,
                etag: item.etag.unwrap_or_default(),
                error: String::new(),
            })
            .collect(),
        token: a.token.unwrap_or_default(),
        metadata: HashMap::new(),
    })
}
