//! `skiff-grpc-call`: makes gRPC calls through a sidecar, for the demo and for
//! trying Skiff by hand.
//!
//! - `invoke`: Dapr's `InvokeService` (an SDK's gRPC `invoke_method`).
//! - `proxy`: a plain gRPC client calling `skiff.echo.v1.Echo/Unary` and
//!   `Bidi` on the app named by `dapr-app-id` (proxy mode).

use bytes::Bytes;
use clap::{Parser, Subcommand};
use skiff_proto::common::{HttpExtension, InvokeRequest, http_extension::Verb};
use skiff_proto::echo::EchoMessage;
use skiff_proto::echo::echo_client::EchoClient;
use skiff_proto::google::protobuf::Any;
use skiff_proto::runtime::InvokeServiceRequest;
use skiff_proto::runtime::dapr_client::DaprClient;
use tokio_stream::StreamExt;

#[derive(Parser)]
#[command(
    name = "skiff-grpc-call",
    about = "gRPC calls through a Skiff (or Dapr) sidecar"
)]
struct Args {
    /// The sidecar's gRPC API.
    #[arg(long, default_value = "http://127.0.0.1:50001")]
    sidecar: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// InvokeService: call METHOD on APP_ID with DATA.
    Invoke {
        app_id: String,
        method: String,
        data: String,
        /// HTTP verb for HTTP apps (GET, POST, ...); none for gRPC apps.
        #[arg(long)]
        verb: Option<String>,
    },
    /// Proxy mode: skiff.echo.v1.Echo Unary and Bidi on APP_ID.
    Proxy { app_id: String, message: String },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let channel = tonic::transport::Channel::from_shared(args.sidecar.clone())?
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("connecting to the sidecar at {}: {e}", args.sidecar))?;
    match args.cmd {
        Cmd::Invoke {
            app_id,
            method,
            data,
            verb,
        } => {
            let verb = match verb.as_deref().map(str::to_ascii_uppercase).as_deref() {
                None => None,
                Some(v) => Some(
                    Verb::from_str_name(v).ok_or_else(|| anyhow::anyhow!("unknown verb {v}"))?,
                ),
            };
            let req = InvokeServiceRequest {
                id: app_id,
                message: Some(InvokeRequest {
                    method,
                    data: Some(Any {
                        type_url: String::new(),
                        value: Bytes::from(data),
                    }),
                    content_type: "text/plain".into(),
                    http_extension: verb.map(|v| HttpExtension {
                        verb: v as i32,
                        querystring: String::new(),
                    }),
                }),
            };
            let resp = DaprClient::new(channel)
                .invoke_service(req)
                .await?
                .into_inner();
            let data = resp.data.map(|a| a.value).unwrap_or_default();
            println!("{}", String::from_utf8_lossy(&data));
        }
        Cmd::Proxy { app_id, message } => {
            let mut c = EchoClient::new(channel);
            let with_id = |m: EchoMessage| {
                let mut r = tonic::Request::new(m);
                if let Ok(v) = app_id.parse() {
                    r.metadata_mut().insert("dapr-app-id", v);
                }
                r
            };
            let msg = |s: String| EchoMessage {
                payload: Bytes::from(s),
                ..Default::default()
            };
            let r = c.unary(with_id(msg(message.clone()))).await?.into_inner();
            println!(
                "unary: {} (the app saw {})",
                String::from_utf8_lossy(&r.payload),
                caller_of(&r)
            );
            let outgoing = tokio_stream::iter((1..=3).map(move |i| msg(format!("{message} #{i}"))));
            let mut down = c
                .bidi(with_id_stream(outgoing, &app_id))
                .await?
                .into_inner();
            while let Some(m) = down.next().await {
                println!("bidi:  {}", String::from_utf8_lossy(&m?.payload));
            }
        }
    }
    Ok(())
}

fn with_id_stream<S>(s: S, app_id: &str) -> tonic::Request<S> {
    let mut r = tonic::Request::new(s);
    if let Ok(v) = app_id.parse() {
        r.metadata_mut().insert("dapr-app-id", v);
    }
    r
}

fn caller_of(m: &EchoMessage) -> String {
    m.seen_metadata
        .iter()
        .find_map(|kv| kv.strip_prefix("dapr-caller-app-id="))
        .map_or_else(|| "no caller".into(), |c| format!("dapr-caller-app-id={c}"))
}
