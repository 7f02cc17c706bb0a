//! Real component servers the tests start on loopback and stop by PID
//! (kill on drop): Redis standalone and a three-master Redis Cluster.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Proc, free_port};

/// A `redis-server` on 127.0.0.1.
pub struct Redis {
    pub proc: Proc,
    pub port: u16,
}

fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn spawn_redis(dir: &Path, port: u16, extra: &[&str]) -> Proc {
    std::fs::create_dir_all(dir).expect("redis dir");
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-server (tests/system-packages --install installs it)");
    let proc = Proc {
        child,
        name: format!("redis:{port}"),
    };
    let end = Instant::now() + Duration::from_secs(10);
    while redis_cli(port, &["ping"]).as_deref() != Some("PONG") {
        assert!(Instant::now() < end, "redis on {port} did not answer PING");
        std::thread::sleep(Duration::from_millis(10));
    }
    proc
}

impl Redis {
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, free_port(), &[])
    }

    /// On a given port (a restart keeps the address), with extra flags.
    pub fn start_with(dir: &Path, port: u16, extra: &[&str]) -> Self {
        Self {
            proc: spawn_redis(dir, port, extra),
            port,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs a redis-cli command; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args).unwrap_or_default()
    }
}

/// Three masters, no replicas, slots assigned, `cluster_state:ok`.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub fn start(dir: &Path) -> Self {
        let mut nodes = Vec::new();
        for i in 0..3 {
            let d = dir.join(format!("node{i}"));
            let conf = d.join("nodes.conf");
            std::fs::create_dir_all(&d).expect("node dir");
            let conf = conf.display().to_string();
            let port = free_port();
            nodes.push(Redis::start_with(
                &d,
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf,
                    "--cluster-node-timeout",
                    "2000",
                ],
            ));
        }
        let addrs: Vec<String> = nodes.iter().map(Redis::addr).collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let ok = Command::new("redis-cli")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli --cluster create");
        assert!(ok.success(), "redis-cli --cluster create failed");
        let end = Instant::now() + Duration::from_secs(20);
        for n in &nodes {
            while !n.cli(&["cluster", "info"]).contains("cluster_state:ok") {
                assert!(Instant::now() < end, "cluster not ok within 20s");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Self { nodes }
    }

    /// The seed list a component's `redisHost` takes.
    pub fn hosts(&self) -> String {
        self.nodes
            .iter()
            .map(Redis::addr)
            .collect::<Vec<_>>()
            .join(",")
    }
}
