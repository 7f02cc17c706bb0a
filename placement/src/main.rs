//! skiff-placement: Dapr's placement service for sidecars on several
//! machines (`dapr.proto.placement.v1`, daprd's flags). On one machine
//! nothing needs to run: sidecars elect a leader among themselves through
//! `$SKIFF_HOME`.
//!
//! This build serves as a single replica. Replicas with a leader elected
//! through an etcd lease are the rest of issue 30.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use skiff_placement::server::{PlacementService, Settings};

#[derive(Parser)]
#[command(
    name = "skiff-placement",
    version,
    about = "Skiff's actor placement service (Dapr placement compatible)"
)]
struct Cli {
    /// The gRPC port sidecars connect to (daprd's --placement-host-address).
    #[arg(long, default_value_t = 50005)]
    port: u16,
    /// The address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    listen_address: String,
    /// Points per host on each actor type's ring.
    #[arg(long = "replicationFactor", default_value_t = 100)]
    replication_factor: i64,
    /// How long a stage of a round waits for every sidecar's ack; the
    /// silent ones are dropped and the round goes on without them.
    #[arg(long, default_value = "8s", value_parser = go_duration)]
    disseminate_timeout: Duration,
    /// Log verbosity.
    #[arg(long, default_value = "info", value_parser = ["trace", "debug", "info", "warn", "error", "fatal"])]
    log_level: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match serve(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff-placement: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            cli.log_level.replace("fatal", "error"),
        ))
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
    if cli.replication_factor < 1 {
        return Err("--replicationFactor must be at least 1".into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let addr = format!("{}:{}", cli.listen_address, cli.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} (--port): {e}"))?;
        let service = PlacementService::new(Settings {
            disseminate_timeout: cli.disseminate_timeout,
            replication_factor: cli.replication_factor,
        });
        tracing::info!(%addr, "skiff-placement ready");
        skiff_placement::server::serve(listener, service, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
        Ok(())
    })
}

/// A Go duration as daprd's flags take them: `8s`, `500ms`, `1m30s`.
fn go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration such as 8s or 500ms");
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        let tail = &rest[digits..];
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let one = match &tail[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        total += one * u32::try_from(n).map_err(|_| bad())?;
        rest = &tail[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_daprd_flags_take_them() {
        assert_eq!(go_duration("8s"), Ok(Duration::from_secs(8)));
        assert_eq!(go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(go_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "8", "s", "8d", "-1s"] {
            assert!(go_duration(bad).is_err(), "{bad:?}");
        }
    }
}
