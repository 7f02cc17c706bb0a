//! `skiff-echo`: the echo backend (HTTP and/or gRPC) for demos, tests and
//! benchmarks. See `skiff_perf::echo` for what it answers.

use std::sync::Arc;

use clap::Parser;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(name = "skiff-echo", about = "Echo backend: HTTP/1.1 + h2c and gRPC")]
struct Args {
    /// Port for HTTP/1.1 and h2c.
    #[arg(long)]
    http_port: Option<u16>,
    /// Port for gRPC (AppCallback and skiff.echo.v1.Echo).
    #[arg(long)]
    grpc_port: Option<u16>,
    /// Name reported in x-echo-server.
    #[arg(long, default_value = "echo")]
    name: String,
    #[arg(long, default_value = "127.0.0.1")]
    address: std::net::IpAddr,
    /// Subscribe to PUBSUB/TOPIC (repeatable): listed at /dapr/subscribe,
    /// events kept at GET /events.
    #[arg(long, value_name = "PUBSUB/TOPIC")]
    subscribe: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.http_port.is_none() && args.grpc_port.is_none() {
        anyhow::bail!("give --http-port, --grpc-port or both");
    }
    let subs = args
        .subscribe
        .iter()
        .map(|s| match s.split_once('/') {
            Some((p, t)) if !p.is_empty() && !t.is_empty() => Ok((p.to_owned(), t.to_owned())),
            _ => Err(anyhow::anyhow!("--subscribe {s:?}: expected PUBSUB/TOPIC")),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    skiff_perf::echo::set_subscriptions(subs);
    let name: Arc<str> = args.name.into();
    let mut tasks = Vec::new();
    if let Some(p) = args.http_port {
        let l = TcpListener::bind((args.address, p))
            .await
            .map_err(|e| anyhow::anyhow!("binding HTTP port {p}: {e}"))?;
        tasks.push(tokio::spawn(skiff_perf::echo::serve_http(l, name.clone())));
    }
    if let Some(p) = args.grpc_port {
        let l = TcpListener::bind((args.address, p))
            .await
            .map_err(|e| anyhow::anyhow!("binding gRPC port {p}: {e}"))?;
        let name = name.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = skiff_perf::echo::serve_grpc(l, name).await {
                eprintln!("skiff-echo: gRPC server: {e}");
            }
        }));
    }
    eprintln!("skiff-echo ready");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
