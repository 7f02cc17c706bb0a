//! The mDNS resolver across two "hosts": network namespaces on a private
//! LAN made for this test (no multicast leaves it). Needs root.

use std::time::{Duration, Instant};

use skiff_tests::netns::{Lan, echo_server};
use skiff_tests::*;

/// Starts an echo app and sidecars for `apps` on host `i`; returns the
/// sidecars with their HTTP ports.
fn host(
    lan: &Lan,
    i: usize,
    apps: &[&str],
    cfg: &str,
    home: &std::path::Path,
) -> (Proc, Vec<(Proc, u16)>) {
    let echo_port = free_port();
    let echo = lan.spawn(
        i,
        "skiff-echo",
        &[
            "--http-port".into(),
            echo_port.to_string(),
            "--name".into(),
            format!("host-{i}"),
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
            &lan.ips[i],
            "--config",
            cfg,
        ]
        .map(String::from)
        .to_vec();
        if *app != "caller" {
            args.extend(["--app-port".into(), echo_port.to_string()]);
        }
        // Each host its own SKIFF_HOME: nothing shared but the LAN.
        let p = lan.spawn(i, "skiffd", &args, &home.join(&lan.hosts[i]));
        lan.wait_status(
            i,
            &format!("http://127.0.0.1:{http}/v1.0/healthz"),
            204,
            Duration::from_secs(15),
        );
        sidecars.push((p, http));
    }
    (echo, sidecars)
}

#[test]
fn sidecars_find_each_other_over_mdns_across_hosts() {
    let w = World::new();
    let lan = Lan::new("m", 2);
    let cfg = w.home.path().join("mdns.yaml");
    std::fs::write(
        &cfg,
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: mdns\nspec:\n  nameResolution:\n    component: mdns\n",
    )
    .expect("write");
    let cfg = cfg.display().to_string();
    let (_ea, a) = host(&lan, 0, &["caller", "orders"], &cfg, w.home.path());
    let (_eb, mut b) = host(&lan, 1, &["orders"], &cfg, w.home.path());
    let caller_port = a[0].1;
    let url = format!("http://127.0.0.1:{caller_port}/v1.0/invoke/orders/method/echo");

    // Two instances, one per host: both get calls.
    let mut seen = std::collections::BTreeSet::new();
    let end = Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 {
        let (status, text) = lan.curl(0, &["-X", "POST", "-d", "hi", &url]);
        assert_eq!(status, 200, "{text}");
        seen.extend(echo_server(&text));
        assert!(Instant::now() < end, "only reached {seen:?}");
    }

    // Host 1's sidecar shuts down cleanly: its goodbye takes it out of the
    // rotation, and calls keep succeeding on host 0.
    b[0].0.terminate();
    let _ = b[0].0.wait_exit(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..20 {
        let (status, text) = lan.curl(0, &["-X", "POST", "-d", "hi", &url]);
        assert_eq!(status, 200, "{text}");
        assert_eq!(echo_server(&text).as_deref(), Some("host-0"), "{text}");
    }

    // An app nobody announces: a clear error after about a second.
    let start = Instant::now();
    let (status, text) = lan.curl(
        0,
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
