//! The Kubernetes resolver against a real DNS server (dnsmasq) serving a
//! `cluster.local` zone on loopback. Sidecars stand in for pods on
//! 127.0.0.2, 127.0.0.3, ... sharing one internal port, as in a cluster.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_tests::*;

const ORDERS: &str = "orders-dapr.default.svc.cluster.local";

fn dnsmasq(port: u16, hosts: &Path) -> Proc {
    let child = Command::new("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--local=/cluster.local/",
            "--local-ttl=1",
            "--user=root",
            "--pid-file",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--addn-hosts={}", hosts.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq (apt-get install dnsmasq-base)");
    std::thread::sleep(Duration::from_millis(300));
    Proc {
        child,
        name: "dnsmasq".into(),
    }
}

fn config(dir: &Path, dns_port: u16) -> String {
    let p = dir.join("dns.yaml");
    std::fs::write(
        &p,
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: dns\nspec:\n  nameResolution:\n    component: kubernetes\n    configuration:\n      clusterDomain: cluster.local\n      nameserver: 127.0.0.1:{dns_port}\n"
        ),
    )
    .expect("write");
    p.display().to_string()
}

fn pod(w: &World, app: &str, ip: &str, port: u16, cfg: &str, app_port: Option<u16>) -> Sidecar {
    let mut o = match app_port {
        Some(p) => SidecarOpts::app(p),
        None => SidecarOpts::default(),
    };
    o.args.extend(
        [
            "--dapr-internal-grpc-listen-address",
            ip,
            "--dapr-internal-grpc-port",
            &port.to_string(),
            "--config",
            cfg,
        ]
        .map(String::from),
    );
    w.sidecar(app, o)
}

#[tokio::test]
async fn headless_records_nxdomain_and_changes_follow_dns() {
    let w = World::new();
    let hosts = w.home.path().join("hosts");
    std::fs::write(&hosts, format!("127.0.0.2 {ORDERS}\n127.0.0.3 {ORDERS}\n")).expect("hosts");
    let dns_port = free_port();
    let dns = dnsmasq(dns_port, &hosts);
    let cfg = config(w.home.path(), dns_port);
    let port = free_port();
    let (e2, e3) = (w.echo("pod-2"), w.echo("pod-3"));
    let _o2 = pod(&w, "orders", "127.0.0.2", port, &cfg, Some(e2.http_port));
    let _o3 = pod(&w, "orders", "127.0.0.3", port, &cfg, Some(e3.http_port));
    let caller = pod(&w, "caller", "127.0.0.1", port, &cfg, None);
    let c = http_client();
    let url = format!("{}/v1.0/invoke/orders/method/echo", caller.http());

    // A headless service: both pods get calls.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let r = send(&c, request("POST", &url, "x")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        seen.insert(r.header("x-echo-server").to_owned());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // A name that does not exist.
    let r = send(
        &c,
        request(
            "GET",
            &format!("{}/v1.0/invoke/ghost/method/x", caller.http()),
            "",
        ),
    )
    .await;
    assert_eq!(r.status, 500);
    assert!(
        r.text().contains("ERR_DIRECT_INVOKE") && r.text().contains("kubernetes resolver"),
        "{}",
        r.text()
    );

    // The record changes: traffic follows once the 1 s TTL is over.
    std::fs::write(&hosts, format!("127.0.0.3 {ORDERS}\n")).expect("hosts");
    let _ = Command::new("kill")
        .args(["-HUP", &dns.pid().to_string()])
        .status();
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let mut all_3 = true;
        for _ in 0..10 {
            let r = send(&c, request("POST", &url, "x")).await;
            assert_eq!(r.status, 200, "{}", r.text());
            all_3 &= r.header("x-echo-server") == "pod-3";
        }
        if all_3 {
            break;
        }
        assert!(
            Instant::now() < end,
            "traffic did not follow the DNS change"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
