//! `GetConfiguration`, `SubscribeConfiguration` (a server stream: `{id}`
//! first, then `{id, items}` per change) and `UnsubscribeConfiguration`,
//! and their `Alpha1` names.

use std::pin::Pin;

use futures_util::Stream;
use skiff_components::configuration::Items;
use skiff_proto::common as cpb;
use skiff_proto::runtime as pb;
use tokio::sync::mpsc;
use tonic::Status;

use super::ConfigurationBlock;

pub type ConfigStream =
    Pin<Box<dyn Stream<Item = Result<pb::SubscribeConfigurationResponse, Status>> + Send>>;

fn items_pb(items: Items) -> std::collections::HashMap<String, cpb::ConfigurationItem> {
    items
        .into_iter()
        .map(|(k, i)| {
            (
                k,
                cpb::ConfigurationItem {
                    value: i.value,
                    version: i.version,
                    metadata: i.metadata.into_iter().collect(),
                },
            )
        })
        .collect()
}

pub async fn get(
    block: &ConfigurationBlock,
    r: pb::GetConfigurationRequest,
) -> Result<pb::GetConfigurationResponse, Status> {
    let items = block
        .get(&r.store_name, &r.keys, &r.metadata.into_iter().collect())
        .await
        .map_err(|e| e.to_status())?;
    Ok(pb::GetConfigurationResponse {
        items: items_pb(items),
    })
}

pub async fn subscribe(
    block: &ConfigurationBlock,
    r: pb::SubscribeConfigurationRequest,
) -> Result<ConfigStream, Status> {
    let (id, mut changes) = block
        .watch(
            &r.store_name,
            &r.keys,
            &r.metadata.clone().into_iter().collect(),
        )
        .await
        .map_err(|e| e.to_status())?;
    let (tx, rx) = mpsc::channel::<Result<pb::SubscribeConfigurationResponse, Status>>(16);
    let sid = id.clone();
    let task = tokio::spawn(async move {
        if tx
            .send(Ok(pb::SubscribeConfigurationResponse {
                id: sid.clone(),
                items: Default::default(),
            }))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let items = tokio::select! {
                i = changes.recv() => match i { Some(i) => i, None => return },
                // The client went away: the driver's watch ends with us.
                () = tx.closed() => return,
            };
            let msg = pb::SubscribeConfigurationResponse {
                id: sid.clone(),
                items: items_pb(items),
            };
            if tx.send(Ok(msg)).await.is_err() {
                return;
            }
        }
    });
    block.track(&id, &r.store_name, task);
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// An unknown store is an error; an unknown id is `ok: false`.
pub fn unsubscribe(
    block: &ConfigurationBlock,
    r: pb::UnsubscribeConfigurationRequest,
) -> Result<pb::UnsubscribeConfigurationResponse, Status> {
    block.check(&r.store_name).map_err(|e| e.to_status())?;
    Ok(match block.unsubscribe(&r.store_name, &r.id) {
        Ok(()) => pb::UnsubscribeConfigurationResponse {
            ok: true,
            message: String::new(),
        },
        Err(message) => pb::UnsubscribeConfigurationResponse { ok: false, message },
    })
}
