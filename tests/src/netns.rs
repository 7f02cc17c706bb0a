//! Hosts for tests: network namespaces on a private LAN (a bridge inside a
//! "switch" namespace), so multi-host layouts run on one machine and no
//! packet reaches a real network. Needs root (`ip netns`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Proc, bin, log_sink};

/// `n` hosts on one segment; everything is removed on drop.
pub struct Lan {
    pub hosts: Vec<String>,
    pub ips: Vec<String>,
    /// Each host's interface on the LAN.
    pub ifaces: Vec<String>,
    switch: String,
}

fn ip(args: &[&str]) {
    let ok = Command::new("ip")
        .args(args)
        .status()
        .expect("ip")
        .success();
    assert!(ok, "ip {args:?}");
}

impl Lan {
    pub fn new(tag: &str, n: usize) -> Self {
        let id = std::process::id() % 100_000;
        let net = 10 + (id % 200);
        let switch = format!("sk{tag}{id}s");
        let hosts: Vec<String> = (1..=n).map(|i| format!("sk{tag}{id}h{i}")).collect();
        let ips: Vec<String> = (1..=n)
            .map(|i| format!("10.{}.{net}.{i}", 200 + tag.len() % 50))
            .collect();
        for ns in hosts.iter().chain(std::iter::once(&switch)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        let mut ifaces = Vec::new();
        for (i, h) in hosts.iter().enumerate() {
            let (inner, outer) = (format!("v{tag}{id}{i}i"), format!("v{tag}{id}{i}o"));
            ifaces.push(inner.clone());
            ip(&[
                "link", "add", &inner, "type", "veth", "peer", "name", &outer,
            ]);
            ip(&["link", "set", &inner, "netns", h]);
            ip(&["link", "set", &outer, "netns", &switch]);
            ip(&["-n", &switch, "link", "set", &outer, "master", "br0", "up"]);
            ip(&[
                "-n",
                h,
                "addr",
                "add",
                &format!("{}/24", ips[i]),
                "dev",
                &inner,
            ]);
            ip(&["-n", h, "link", "set", &inner, "up", "multicast", "on"]);
        }
        Self {
            hosts,
            ips,
            ifaces,
            switch,
        }
    }

    /// Starts `program` (a workspace binary name, or a path) inside host `i`.
    pub fn spawn(&self, i: usize, program: &str, args: &[String], home: &Path) -> Proc {
        let path = if program.contains('/') {
            program.into()
        } else {
            bin(program)
        };
        let child = Command::new("ip")
            .args(["netns", "exec", &self.hosts[i]])
            .arg(path)
            .args(args)
            .env("SKIFF_HOME", home)
            .env_remove("NAMESPACE")
            .env_remove("DAPR_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_sink())
            .spawn()
            .expect("spawn in netns");
        Proc {
            child,
            name: format!("{program}@{}", self.hosts[i]),
        }
    }

    /// curl inside host `i`: the status and the raw response (head + body).
    pub fn curl(&self, i: usize, args: &[&str]) -> (u16, String) {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.hosts[i],
                "curl",
                "-s",
                "-i",
                "--max-time",
                "5",
            ])
            .args(args)
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, text)
    }

    /// Waits until `url` (inside host `i`) answers `status`.
    pub fn wait_status(&self, i: usize, url: &str, status: u16, within: Duration) {
        let end = Instant::now() + within;
        loop {
            let (s, text) = self.curl(i, &[url]);
            if s == status {
                return;
            }
            assert!(
                Instant::now() < end,
                "{url} in {}: {s} {text}",
                self.hosts[i]
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The `x-echo-server` header of a raw response.
pub fn echo_server(raw: &str) -> Option<String> {
    raw.lines()
        .find(|l| l.to_ascii_lowercase().starts_with("x-echo-server:"))
        .map(|l| l[14..].trim().to_owned())
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain(std::iter::once(&self.switch)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
