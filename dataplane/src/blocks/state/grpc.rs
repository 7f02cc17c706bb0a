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

/// A `StateItem` as either reader decoded it.
#[derive(Debug)]
pub struct ItemRef<'a> {
    pub key: &'a str,
    pub value: Bytes,
    pub etag: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub ttl: Option<&'a str>,
    pub concurrency: Concurrency,
    pub consistency: Consistency,
}

impl<'a> ItemRef<'a> {
    fn of(it: &'a StateItem) -> Self {
        Self {
            key: &it.key,
            value: it.value.clone(),
            etag: it.etag.as_ref().map(|e| e.value.as_str()),
            content_type: it.metadata.get("contentType").map(String::as_str),
            ttl: it.metadata.get("ttlInSeconds").map(String::as_str),
            concurrency: concurrency(it.options.as_ref()),
            consistency: consistency(it.options.as_ref()),
        }
    }
}

/// A `StateItem` to save. `raw`: transaction upserts store bytes as given
/// whatever the content type (daprd's behaviour).
fn save_item(store: &str, it: &StateItem, raw: bool) -> Result<SaveItem, ApiError> {
    save_item_ref(store, ItemRef::of(it), raw)
}

fn save_item_ref(store: &str, it: ItemRef<'_>, raw: bool) -> Result<SaveItem, ApiError> {
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
            .content_type
            .is_some_and(|c| c.starts_with("application/json"));
    let (value, is_json) = if json {
        let invalid = |e: &dyn std::fmt::Display| {
            store_error(
                Action::Save,
                store,
                it.key,
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
    let ttl = parse_ttl(it.ttl)
        .map_err(|e| store_error(Action::Save, store, it.key, &StateError::Invalid(e)))?;
    Ok(SaveItem {
        concurrency: it.concurrency,
        consistency: it.consistency,
        // Owned: the drivers' requests outlive this call's frame.
        key: it.key.to_owned(),
        value,
        is_json,
        etag: it.etag.map(str::to_owned),
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
        .iter()
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
            "upsert" => TxOp::Upsert(save_item(&r.store_name, &item, true).map_err(status)?),
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

/// The store calls of the door's own readers ([`crate::api::unary`]):
/// requests decoded in place, answers written by hand.
mod wire {
    use bytes::Bytes;
    use http::HeaderMap;
    use skiff_proto::common::state_options::{StateConcurrency, StateConsistency};

    use super::*;
    use crate::blocks::{Block, traced};
    use crate::protowire::{Answer, Message, malformed};
    use crate::protowire::{
        Reader, WireError, int, len, len_field_size, map_entry_size, put_len_field, put_map_entry,
    };
    use crate::telemetry::trace::Tracer;

    fn failed<T>(o: &Result<T, ApiError>) -> Option<String> {
        o.as_ref().err().map(|e| e.message.clone())
    }

    /// `StateOptions { concurrency = 1, consistency = 2 }`, over what an
    /// earlier occurrence of the field said (protobuf merges repeated
    /// embedded messages).
    fn options(
        r: &Reader<'_>,
        at: std::ops::Range<usize>,
        (mut conc, mut cons): (Concurrency, Consistency),
    ) -> Result<(Concurrency, Consistency), WireError> {
        let mut o = r.nested(at);
        while let Some((f, v)) = o.next_field()? {
            match f {
                1 => {
                    conc = if int(&v) == StateConcurrency::ConcurrencyFirstWrite as i32 {
                        Concurrency::FirstWrite
                    } else {
                        Concurrency::LastWrite
                    };
                }
                2 => cons = consistency_of(StateConsistency::try_from(int(&v)).unwrap_or_default()),
                _ => {}
            }
        }
        Ok((conc, cons))
    }

    /// `Etag { value = 1 }`, over an earlier occurrence (merged).
    fn etag<'a>(
        r: &Reader<'a>,
        at: std::ops::Range<usize>,
        before: Option<&'a str>,
    ) -> Result<&'a str, WireError> {
        let mut e = r.nested(at);
        let mut value = before.unwrap_or_default();
        while let Some((f, v)) = e.next_field()? {
            if f == 1 {
                value = e.string(v, "etag")?;
            }
        }
        Ok(value)
    }

    /// `StateItem { key = 1, value = 2, etag = 3, metadata = 4, options = 5 }`.
    fn item<'a>(r: &Reader<'a>, at: std::ops::Range<usize>) -> Result<ItemRef<'a>, WireError> {
        let mut i = r.nested(at);
        let mut it = ItemRef {
            key: "",
            value: Bytes::new(),
            etag: None,
            content_type: None,
            ttl: None,
            concurrency: Concurrency::LastWrite,
            consistency: Consistency::Eventual,
        };
        while let Some((f, v)) = i.next_field()? {
            match f {
                1 => it.key = i.string(v, "key")?,
                2 => it.value = i.bytes(len(v, "value")?),
                3 => it.etag = Some(etag(&i, len(v, "etag")?, it.etag)?),
                4 => match i.map_entry(len(v, "metadata")?)? {
                    ("contentType", c) => it.content_type = Some(c),
                    ("ttlInSeconds", t) => it.ttl = Some(t),
                    _ => {}
                },
                5 => {
                    (it.concurrency, it.consistency) =
                        options(&i, len(v, "options")?, (it.concurrency, it.consistency))?;
                }
                _ => {}
            }
        }
        Ok(it)
    }

    /// `GetStateRequest { store_name = 1, key = 2, consistency = 3 }`
    /// (its `metadata` is not read, as by the tonic path).
    pub fn decode_get(msg: &Bytes) -> Result<(&str, &str, Consistency), WireError> {
        let mut r = Reader::new(msg);
        let (mut store, mut key, mut cons) = ("", "", Consistency::Eventual);
        while let Some((f, v)) = r.next_field()? {
            match f {
                1 => store = r.string(v, "store_name")?,
                2 => key = r.string(v, "key")?,
                3 => cons = consistency_of(StateConsistency::try_from(int(&v)).unwrap_or_default()),
                _ => {}
            }
        }
        Ok((store, key, cons))
    }

    /// `GetState`:
    /// `GetStateResponse { data = 1, etag = 2, metadata = 3 }`, written with
    /// `data` last.
    pub async fn get_state_wire(
        block: &StateBlock,
        tracer: &Tracer,
        headers: &HeaderMap,
        msg: &Bytes,
    ) -> Result<Answer, ApiError> {
        let (store, key, cons) = decode_get(msg).map_err(malformed)?;
        let got = traced(
            tracer,
            Some(headers),
            Block::State,
            "GetState",
            store,
            block.get(store, key, cons),
            failed,
        )
        .await?;
        let Some(item) = got else {
            return Ok(Answer::empty());
        };
        let etag = item.etag.as_deref().unwrap_or_default();
        let meta = read_metadata(&item);
        let size = len_field_size(etag.len())
            + meta.as_ref().map_or(0, |(k, v)| map_entry_size(k, v))
            + Message::bytes_field_last_size(item.data.len());
        let mut m = Message::with_capacity(size);
        let b = m.buf();
        put_len_field(b, 2, etag.as_bytes());
        if let Some((k, v)) = &meta {
            put_map_entry(b, 3, k, v);
        }
        let tail = m.bytes_field_last(1, item.data);
        Ok(Answer {
            message: m.finish(tail),
            headers: HeaderMap::new(),
        })
    }

    /// `SaveStateRequest { store_name = 1, states = 2 }`.
    pub fn decode_save(msg: &Bytes) -> Result<(&str, Vec<ItemRef<'_>>), WireError> {
        let mut r = Reader::new(msg);
        let mut store = "";
        let mut items = Vec::new();
        while let Some((f, v)) = r.next_field()? {
            match f {
                1 => store = r.string(v, "store_name")?,
                2 => items.push(item(&r, len(v, "states")?)?),
                _ => {}
            }
        }
        Ok((store, items))
    }

    /// `SaveState`.
    pub async fn save_state_wire(
        block: &StateBlock,
        tracer: &Tracer,
        headers: &HeaderMap,
        msg: &Bytes,
    ) -> Result<Answer, ApiError> {
        let (store, decoded) = decode_save(msg).map_err(malformed)?;
        block.store(store)?;
        let items = decoded
            .into_iter()
            .map(|it| save_item_ref(store, it, false))
            .collect::<Result<Vec<_>, _>>()?;
        if !items.is_empty() {
            traced(
                tracer,
                Some(headers),
                Block::State,
                "SaveState",
                store,
                block.save(store, items),
                failed,
            )
            .await?;
        }
        Ok(Answer::empty())
    }

    /// `DeleteStateRequest { store_name = 1, key = 2, etag = 3, options = 4 }`.
    pub fn decode_delete(msg: &Bytes) -> Result<(&str, DeleteItem), WireError> {
        let mut r = Reader::new(msg);
        let mut store = "";
        let mut it = DeleteItem {
            concurrency: Concurrency::LastWrite,
            consistency: Consistency::Eventual,
            key: String::new(),
            etag: None,
        };
        let mut tag = None;
        while let Some((f, v)) = r.next_field()? {
            match f {
                1 => store = r.string(v, "store_name")?,
                2 => {
                    it.key = r.string(v, "key")?.to_owned();
                }
                3 => tag = Some(etag(&r, len(v, "etag")?, tag)?),
                4 => {
                    (it.concurrency, it.consistency) =
                        options(&r, len(v, "options")?, (it.concurrency, it.consistency))?;
                }
                _ => {}
            }
        }
        it.etag = tag.map(str::to_owned);
        Ok((store, it))
    }

    /// `DeleteState`.
    pub async fn delete_state_wire(
        block: &StateBlock,
        tracer: &Tracer,
        headers: &HeaderMap,
        msg: &Bytes,
    ) -> Result<Answer, ApiError> {
        let (store, it) = decode_delete(msg).map_err(malformed)?;
        traced(
            tracer,
            Some(headers),
            Block::State,
            "DeleteState",
            store,
            block.delete(store, it, Action::Delete),
            failed,
        )
        .await?;
        Ok(Answer::empty())
    }
}

pub use wire::{
    decode_delete, decode_get, decode_save, delete_state_wire, get_state_wire, save_state_wire,
};
