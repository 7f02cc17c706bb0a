//! The `inventory` sample app, gRPC (Dapr's `AppCallback`). It answers
//! `reserve` (called by `checkout` through the sidecars) after asking
//! `checkout` for the price — a gRPC app calling an HTTP app with
//! `InvokeService` — and subscribes to `pubsub/orders`: for each order it
//! saves a shipment in `statestore` and publishes it to
//! `pubsub/shipments`, all through its sidecar's gRPC API.
//!
//! Environment (set by `skiff run`): `APP_PORT`, `DAPR_GRPC_PORT`.

use anyhow::{Context, Result};
use bytes::Bytes;
use serde_json::{Value, json};
use skiff_proto::common::{
    HttpExtension, InvokeRequest, InvokeResponse, StateItem, http_extension::Verb,
};
use skiff_proto::google::protobuf::{Any, Empty};
use skiff_proto::runtime::app_callback_server::{AppCallback, AppCallbackServer};
use skiff_proto::runtime::dapr_client::DaprClient;
use skiff_proto::runtime::topic_event_response::TopicEventResponseStatus;
use skiff_proto::runtime::{
    InvokeServiceRequest, ListTopicSubscriptionsResponse, PublishEventRequest, SaveStateRequest,
    TopicEventBulkRequest, TopicEventBulkResponse, TopicEventRequest, TopicEventResponse,
    TopicSubscription,
};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

struct Inventory {
    dapr: DaprClient<Channel>,
}

fn env_port(name: &str) -> Result<u16> {
    std::env::var(name)
        .with_context(|| format!("{name} is not set (start me with `skiff run`)"))?
        .parse()
        .with_context(|| format!("{name} is not a port"))
}

#[tonic::async_trait]
impl AppCallback for Inventory {
    async fn on_invoke(
        &self,
        req: Request<InvokeRequest>,
    ) -> Result<Response<InvokeResponse>, Status> {
        let r = req.into_inner();
        if r.method != "reserve" {
            return Err(Status::not_found(format!("no method {}", r.method)));
        }
        let order: Value = r
            .data
            .as_ref()
            .and_then(|d| serde_json::from_slice(&d.value).ok())
            .unwrap_or(Value::Null);
        // gRPC app → HTTP app: checkout's `price`.
        let price = self
            .dapr
            .clone()
            .invoke_service(InvokeServiceRequest {
                id: "checkout".into(),
                message: Some(InvokeRequest {
                    method: "price".into(),
                    data: Some(Any {
                        type_url: String::new(),
                        value: Bytes::from(order["item"].to_string()),
                    }),
                    content_type: "application/json".into(),
                    http_extension: Some(HttpExtension {
                        verb: Verb::Post as i32,
                        querystring: String::new(),
                    }),
                }),
            })
            .await?
            .into_inner();
        let price: Value = price
            .data
            .and_then(|d| serde_json::from_slice(&d.value).ok())
            .unwrap_or(Value::Null);
        let answer = json!({"order": order["order"], "reserved": true, "price": price["price"]});
        Ok(Response::new(InvokeResponse {
            data: Some(Any {
                type_url: String::new(),
                value: Bytes::from(answer.to_string()),
            }),
            content_type: "application/json".into(),
        }))
    }

    async fn list_topic_subscriptions(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<ListTopicSubscriptionsResponse>, Status> {
        Ok(Response::new(ListTopicSubscriptionsResponse {
            subscriptions: vec![TopicSubscription {
                pubsub_name: "pubsub".into(),
                topic: "orders".into(),
                ..Default::default()
            }],
        }))
    }

    async fn on_topic_event(
        &self,
        req: Request<TopicEventRequest>,
    ) -> Result<Response<TopicEventResponse>, Status> {
        let ev = req.into_inner();
        let order: Value = serde_json::from_slice(&ev.data).unwrap_or(Value::Null);
        let n = order["order"].as_i64().unwrap_or(-1);
        let shipment = json!({"order": n, "status": "shipped"});
        let mut dapr = self.dapr.clone();
        // A failure is a RETRY: the broker redelivers.
        let saved = dapr
            .save_state(SaveStateRequest {
                store_name: "statestore".into(),
                states: vec![StateItem {
                    key: format!("shipment-{n}"),
                    value: Bytes::from(shipment.to_string()),
                    ..Default::default()
                }],
            })
            .await;
        let published = match saved {
            Ok(_) => {
                dapr.publish_event(PublishEventRequest {
                    pubsub_name: "pubsub".into(),
                    topic: "shipments".into(),
                    data: Bytes::from(shipment.to_string()),
                    data_content_type: "application/json".into(),
                    metadata: Default::default(),
                })
                .await
            }
            Err(e) => Err(e),
        };
        let status = match published {
            Ok(_) => {
                println!("inventory: order {n} shipped");
                TopicEventResponseStatus::Success
            }
            Err(e) => {
                eprintln!("inventory: order {n}: {}; retrying", e.message());
                TopicEventResponseStatus::Retry
            }
        };
        Ok(Response::new(TopicEventResponse {
            status: status as i32,
        }))
    }

    async fn on_bulk_topic_event(
        &self,
        _: Request<TopicEventBulkRequest>,
    ) -> Result<Response<TopicEventBulkResponse>, Status> {
        Err(Status::unimplemented("no bulk subscriptions"))
    }

    async fn list_input_bindings(
        &self,
        _: tonic::Request<skiff_proto::google::protobuf::Empty>,
    ) -> Result<tonic::Response<skiff_proto::runtime::ListInputBindingsResponse>, tonic::Status>
    {
        Err(tonic::Status::unimplemented("no input bindings"))
    }

    async fn on_binding_event(
        &self,
        _: tonic::Request<skiff_proto::runtime::BindingEventRequest>,
    ) -> Result<tonic::Response<skiff_proto::runtime::BindingEventResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("no input bindings"))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let port = env_port("APP_PORT")?;
    let dapr_port = env_port("DAPR_GRPC_PORT")?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{dapr_port}"))?
        .connect_lazy();
    let svc = AppCallbackServer::new(Inventory {
        dapr: DaprClient::new(channel),
    });
    println!("inventory: serving gRPC on 127.0.0.1:{port}");
    tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_shutdown(([127, 0, 0, 1], port).into(), shutdown())
        .await?;
    println!("inventory: stopped");
    Ok(())
}

/// SIGTERM (what `skiff run` sends) or Ctrl-C.
async fn shutdown() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
