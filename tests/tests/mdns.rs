//! The mDNS resolver across two network namespaces joined by a veth pair
//! (two "hosts" on a private segment that exists only for this test; no
//! multicast leaves it). Needs root for `ip netns`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use skiff_tests::*;

/// Two namespaces and the link between them; removed on drop.
struct Segment {
    ns: [String; 2],
    ips: [String; 2],
}

impl Segment {
    fn new() -> Self {
        let id = std::process::id() % 100_000;
        let ns = [format!("skm{id}a"), format!("skm{id}b")];
        let net = 10 + (id % 200);
        let ips = [format!("10.211.{net}.1"), format!("10.211.{net}.2")];
        let (va, vb) = (format!("vm{id}a"), format!("vm{id}b"));
        let ip = |args: &[&str]| {
            let ok = Command::new("ip")
                .args(args)
                .status()
                .expect("ip")
                .success();
            assert!(ok, "ip {args:?}");
        };
        for n in &ns {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
            ip(&["netns", "add", n]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        for (i, v) in [&va, &vb].into_iter().enumerate() {
            ip(&["link", "set", v, "netns", &ns[i]]);
            ip(&[
                "-n",
                &ns[i],
                "addr",
                "add",
                &format!("{}/24", ips[i]),
                "dev",
                v,
            ]);
            ip(&["-n", &ns[i], "link", "set", v, "up", "multicast", "on"]);
        }
        Self { ns, ips }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        for n in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn in_ns(ns: &str, bin_name: &str, args: &[String], home: &std::path::Path) -> Proc {
    let child: Child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(bin(bin_name))
        .args(args)
        .env("SKIFF_HOME", home)
        .env_remove("NAMESPACE")
        .env_remove("DAPR_API_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("SKIFF_TEST_LOGS").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("spawn in netns");
    Proc {
        child,
        name: format!("{bin_name}@{ns}"),
    }
}

/// curl inside a namespace: (status, headers + body).
fn curl(ns: &str, args: &[&str]) -> (u16, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-s", "-i", "--max-time", "5"])
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

fn wait_ready(ns: &str, port: u16) {
    let end = Instant::now() + Duration::from_secs(15);
    while curl(ns, &[&format!("http://127.0.0.1:{port}/v1.0/healthz")]).0 != 204 {
        assert!(Instant::now() < end, "sidecar in {ns} not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Host {
    _echo: Proc,
    sidecars: Vec<(Proc, u16)>,
}

fn start(
    seg: &Segment,
    i: usize,
    apps: &[&str],
    cfg: &str,
    home: &std::path::Path,
    echo_name: &str,
) -> Host {
    let ns = &seg.ns[i];
    let echo_port = free_port();
    let echo = in_ns(
        ns,
        "skiff-echo",
        &[
            "--http-port".into(),
            echo_port.to_string(),
            "--name".into(),
            echo_name.into(),
        ],
        home,
    );
    let mut sidecars = Vec::new();
    for app in apps {
        let http = free_port();
        let mut args: Vec<String> = [
            "--app-id",
            app,
            "--dapr-http-port",
            &http.to_string(),
            "--dapr-grpc-port",
            &free_port().to_string(),
            "--dapr-internal-grpc-listen-address",
            &seg.ips[i],
            "--config",
            cfg,
        ]
        .map(String::from)
        .to_vec();
        if *app != "caller" {
            args.extend(["--app-port".into(), echo_port.to_string()]);
        }
        // Each namespace its own SKIFF_HOME: nothing shared but the link.
        let p = in_ns(ns, "skiffd", &args, &home.join(ns));
        wait_ready(ns, http);
        sidecars.push((p, http));
    }
    Host {
        _echo: echo,
        sidecars,
    }
}

#[test]
fn sidecars_find_each_other_over_mdns_across_hosts() {
    let w = World::new();
    let seg = Segment::new();
    let cfg = w.home.path().join("mdns.yaml");
    std::fs::write(
        &cfg,
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: mdns\nspec:\n  nameResolution:\n    component: mdns\n",
    )
    .expect("write");
    let cfg = cfg.display().to_string();
    let a = start(
        &seg,
        0,
        &["caller", "orders"],
        &cfg,
        w.home.path(),
        "host-a",
    );
    let mut b = start(&seg, 1, &["orders"], &cfg, w.home.path(), "host-b");
    let caller_port = a.sidecars[0].1;
    let url = format!("http://127.0.0.1:{caller_port}/v1.0/invoke/orders/method/echo");

    // Two instances, one per host: both get calls.
    let mut seen = std::collections::BTreeSet::new();
    let end = Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 {
        let (status, text) = curl(&seg.ns[0], &["-X", "POST", "-d", "hi", &url]);
        assert_eq!(status, 200, "{text}");
        if let Some(l) = text
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("x-echo-server:"))
        {
            seen.insert(l[14..].trim().to_owned());
        }
        assert!(Instant::now() < end, "only reached {seen:?}");
    }

    // Host b's sidecar shuts down cleanly: its goodbye takes it out of the
    // rotation, and calls keep succeeding on host a.
    b.sidecars[0].0.terminate();
    let _ = b.sidecars[0].0.wait_exit(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..20 {
        let (status, text) = curl(&seg.ns[0], &["-X", "POST", "-d", "hi", &url]);
        assert_eq!(status, 200, "{text}");
        assert!(
            text.to_ascii_lowercase().contains("x-echo-server: host-a"),
            "{text}"
        );
    }

    // An app nobody announces: a clear error after about a second.
    let start = Instant::now();
    let (status, text) = curl(
        &seg.ns[0],
        &[&format!(
            "http://127.0.0.1:{caller_port}/v1.0/invoke/nobody/method/x"
        )],
    );
    assert_eq!(status, 500, "{text}");
    assert!(text.contains("mdns resolver"), "{text}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}
