//! `skiff-perf placement`: how long a placement round takes to reach
//! every sidecar, the figure issue 30 sets a target for (a round with 50
//! hosts done in ≤ 50 ms).
//!
//! One placement service (`skiff_placement::server`, in this process, on
//! loopback) and `--hosts` sidecar views following it
//! (`skiff_dataplane::blocks::actors::placement`, each its own gRPC
//! stream, acking every stage as a sidecar does). Each measured round is a
//! host leaving (its stream closed) or joining again; the time runs from
//! that event until every connected view has finished the round it
//! started. Views are polled every millisecond, so figures are rounded up
//! to it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use skiff_dataplane::blocks::actors::placement::{Addresses, View, connect_and_follow};
use skiff_placement::server::{PlacementService, Settings};
use skiff_proto::placement::Host;
use tokio::task::JoinHandle;

#[derive(Args)]
pub struct PlacementArgs {
    /// Sidecars hosting the one actor type.
    #[arg(long, default_value_t = 50)]
    pub hosts: usize,
    /// Measured rounds (half leaves, half joins).
    #[arg(long, default_value_t = 40)]
    pub rounds: usize,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Serialize)]
struct Figures {
    hosts: usize,
    leave_ms: Vec<f64>,
    join_ms: Vec<f64>,
}

/// How long one round may take before the run gives up.
const ROUND_LIMIT: Duration = Duration::from_secs(30);

struct Follower {
    view: Arc<View>,
    task: JoinHandle<()>,
}

fn follow(addr: &str, i: usize) -> Follower {
    let view = Arc::new(View::default());
    let me = Host {
        name: format!("10.1.{}.{}:50002", i / 250, i % 250),
        id: format!("app-{i}"),
        entities: vec!["Cart".into()],
        namespace: "default".into(),
        ..Default::default()
    };
    let task = tokio::spawn(connect_and_follow(
        Addresses::Listed(vec![addr.to_owned()]),
        me,
        view.clone(),
    ));
    Follower { view, task }
}

/// Waits until every follower finished a round after `before`.
async fn round_done(fs: &[Follower], before: &[u64]) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    loop {
        let done = fs
            .iter()
            .zip(before)
            .all(|(f, b)| f.view.ready() && f.view.rounds() > *b);
        if done {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > ROUND_LIMIT {
            bail!("a round did not reach every sidecar within {ROUND_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

pub async fn run(a: PlacementArgs) -> anyhow::Result<()> {
    if a.hosts < 2 {
        bail!("--hosts must be at least 2");
    }
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?.to_string();
    let svc = PlacementService::new(Settings::default());
    tokio::spawn(skiff_placement::server::serve(
        l,
        svc,
        std::future::pending(),
    ));
    let mut fs: Vec<Follower> = (0..a.hosts).map(|i| follow(&addr, i)).collect();
    round_done(&fs, &vec![0; fs.len()])
        .await
        .context("the hosts never settled")?;
    let mut fig = Figures {
        hosts: a.hosts,
        leave_ms: Vec::new(),
        join_ms: Vec::new(),
    };
    for r in 0..a.rounds {
        let k = r % a.hosts;
        if r % 2 == 0 {
            // Host k leaves: the others finish the round without it.
            let gone = fs.remove(k);
            let before: Vec<u64> = fs.iter().map(|f| f.view.rounds()).collect();
            gone.task.abort();
            let took = round_done(&fs, &before).await?;
            fig.leave_ms.push(took.as_secs_f64() * 1e3);
            fs.insert(k, gone);
        } else {
            // The host that left joins again.
            let k = (r - 1) % a.hosts;
            let before: Vec<u64> = fs
                .iter()
                .enumerate()
                .map(|(i, f)| if i == k { 0 } else { f.view.rounds() })
                .collect();
            let t0 = Instant::now();
            fs[k] = follow(&addr, k);
            round_done(&fs, &before).await?;
            fig.join_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    for f in &fs {
        f.task.abort();
    }
    print(&fig);
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_vec_pretty(&fig)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn print(f: &Figures) {
    let stats = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
        (at(0.5), at(0.9), s[s.len() - 1])
    };
    println!(
        "placement rounds with {} hosts (ms, until every sidecar finished the round)",
        f.hosts
    );
    println!("| event | rounds | p50 | p90 | max |");
    println!("|---|---|---|---|---|");
    for (name, v) in [("a host leaves", &f.leave_ms), ("a host joins", &f.join_ms)] {
        if v.is_empty() {
            continue;
        }
        let (p50, p90, max) = stats(v);
        println!("| {name} | {} | {p50:.1} | {p90:.1} | {max:.1} |", v.len());
    }
}
