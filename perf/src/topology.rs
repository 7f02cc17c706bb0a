//! What a benchmark measures and the processes behind it: the paths
//! (`direct`, `skiff`, the peer proxies), protocols and scenarios, where a
//! path is entered, the child processes killed on drop, the echo app, and
//! the rows a run reports. The runner (`bench`), the peer proxies
//! (`peers`) and the plots (`plot`) all name these; none imports another
//! for them.

use std::path::{Path as FsPath, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use http::{HeaderMap, Uri};
use serde::{Deserialize, Serialize};

use crate::hist::Percentiles;

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    Direct,
    /// Two skiffd with mTLS between them (embedded CA).
    Skiff,
    /// The same without mTLS, to show what mTLS costs.
    #[serde(rename = "skiff-plain")]
    #[value(name = "skiff-plain")]
    SkiffPlain,
    Envoy,
    Haproxy,
    Nginx,
}

impl PathKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Skiff => "skiff",
            Self::SkiffPlain => "skiff-plain",
            Self::Envoy => "envoy",
            Self::Haproxy => "haproxy",
            Self::Nginx => "nginx",
        }
    }
}

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum BenchProto {
    Http,
    Grpc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// One call in flight.
    Serial,
    /// 1000 req/s open loop, 1 KiB.
    #[serde(rename = "rate_1000")]
    Rate1000,
    /// 40 calls in flight, closed loop.
    #[serde(rename = "max_40")]
    Max40,
}

impl Scenario {
    pub const ALL: [Scenario; 3] = [Scenario::Serial, Scenario::Rate1000, Scenario::Max40];

    pub fn name(self) -> &'static str {
        match self {
            Self::Serial => "serial",
            Self::Rate1000 => "rate_1000",
            Self::Max40 => "max_40",
        }
    }
}

/// Where a path is entered, and which processes are its proxies.
pub struct Entry {
    pub http_url: Uri,
    pub grpc_url: Uri,
    pub grpc_headers: HeaderMap,
    pub http_pids: Vec<u32>,
    pub grpc_pids: Vec<u32>,
    /// Shown with the results, e.g. "plaintext between sidecars".
    pub note: String,
}

/// A started path: its entry and the processes to kill.
pub struct Running {
    pub entry: Entry,
    pub procs: Procs,
}

/// Child processes killed on drop, with where each logs.
#[derive(Default)]
pub struct Procs(Vec<Child>, Vec<Option<PathBuf>>);

/// How long a process has to stop after SIGTERM before it and what it
/// started are killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

impl Procs {
    /// Like [`Procs::spawn`], with stderr kept in `log` for error messages.
    pub fn spawn_logged(&mut self, cmd: &mut Command, log: &FsPath) -> anyhow::Result<u32> {
        let f =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let pid = self.spawn(cmd.stderr(f))?;
        if let Some(l) = self.1.last_mut() {
            *l = Some(log.to_path_buf());
        }
        Ok(pid)
    }

    pub fn spawn(&mut self, cmd: &mut Command) -> anyhow::Result<u32> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        // A group of its own: nginx's and HAProxy's workers stay in their
        // master's group, so the group is what is stopped (killing the
        // master alone left nginx workers listening after the run).
        std::os::unix::process::CommandExt::process_group(cmd, 0);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        let pid = child.id();
        self.0.push(child);
        self.1.push(None);
        Ok(pid)
    }

    /// Fails if any process has exited (a proxy that rejected its config).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for (c, log) in self.0.iter_mut().zip(&self.1) {
            if let Ok(Some(status)) = c.try_wait() {
                let last = log
                    .as_ref()
                    .and_then(|l| std::fs::read_to_string(l).ok())
                    .and_then(|t| {
                        t.lines()
                            .rev()
                            .find(|l| !l.trim().is_empty())
                            .map(str::to_owned)
                    })
                    .unwrap_or_default();
                bail!("process {} exited early ({status}): {last}", c.id());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod procs_tests {
    use super::*;

    /// A master that starts a worker and exits on SIGTERM without
    /// stopping it, as a peer's master may: the worker must not outlive
    /// the bench.
    #[test]
    fn no_process_outlives_procs() {
        let dir = tempfile::tempdir().expect("dir");
        let pidfile = dir.path().join("worker.pid");
        let mut p = Procs(Vec::new(), Vec::new());
        p.spawn(Command::new("sh").arg("-c").arg(format!(
            "sleep 300 & echo $! > {}; trap 'exit 0' TERM; while :; do sleep 0.05; done",
            pidfile.display()
        )))
        .expect("spawn");
        let end = std::time::Instant::now() + Duration::from_secs(5);
        let worker = loop {
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok())
            {
                break pid;
            }
            assert!(std::time::Instant::now() < end, "no worker");
            std::thread::sleep(Duration::from_millis(20));
        };
        drop(p);
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while crate::procfs::alive(worker) && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !crate::procfs::alive(worker),
            "worker {worker} outlived the run"
        );
    }
}

impl Drop for Procs {
    /// Stops every process the way it expects: SIGTERM to its group (the
    /// peers shut their workers down), a wait, then SIGKILL to whatever is
    /// left of the group after [`STOP_GRACE`].
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, killpg};
        use nix::unistd::Pid;
        let group = |c: &Child| Pid::from_raw(i32::try_from(c.id()).unwrap_or(0));
        for c in &self.0 {
            let _ = killpg(group(c), Signal::SIGTERM);
        }
        let end = std::time::Instant::now() + STOP_GRACE;
        for c in &mut self.0 {
            while std::time::Instant::now() < end && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            // The leader may be gone with workers still in its group.
            let _ = killpg(group(c), Signal::SIGKILL);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The echo app every path ends at.
pub struct Echo {
    pub http_port: u16,
    pub grpc_port: u16,
    /// A second echo process that takes the sidecars' OTLP/HTTP spans (it
    /// answers any POST with 200), so tracing exports for real.
    pub trace_sink_port: u16,
}

/// The HTTP path every path calls: the app returns the request's body and
/// nothing else (the echo app's `/echo` also reflects every request header,
/// which would charge each hop for the headers the one before it added).
pub const APP_PATH: &str = "/mirror";

/// Dapr's published test samples one trace in ten (`--sampling-rate`).
pub const SAMPLING_RATE: &str = "0.1";

/// The figures for one path, protocol and scenario (medians over rounds).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub path: PathKind,
    pub proto: BenchProto,
    pub scenario: Scenario,
    pub note: String,
    pub rounds: usize,
    pub latency: Percentiles,
    /// Latency added over `direct` in the same run (median p50/p90/p99 minus direct's).
    pub added_p50_us: i64,
    pub added_p90_us: i64,
    pub added_p99_us: i64,
    pub throughput_rps: f64,
    /// The rounds' lowest and highest p50 (µs) and throughput: one figure
    /// swings by 2x between runs on a shared machine, so the spread is
    /// reported beside the median.
    #[serde(default)]
    pub p50_range_us: (u64, u64),
    #[serde(default)]
    pub throughput_range_rps: (f64, f64),
    pub throughput_vs_direct: f64,
    /// CPU seconds the proxy processes spent per 1000 requests.
    pub proxy_cpu_s_per_1000: f64,
    /// The part of it spent in the kernel (system time).
    #[serde(default)]
    pub proxy_sys_s_per_1000: f64,
    /// Highest RSS of any proxy process during the runs.
    pub proxy_peak_rss_kib: u64,
    pub errors: u64,
    pub generator_cpu_cores: f64,
    /// (quantile, µs) of the median round, for plots.
    pub curve: Vec<(f64, u64)>,
}

/// A free loopback port (bound, then released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until something accepts on `port`.
pub async fn wait_port(port: u16) -> anyhow::Result<()> {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("nothing listened on 127.0.0.1:{port} within 6s")
}
