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
            "--metrics-port",
            "0",
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

/// avahi in host `i`: a private D-Bus system bus (socket under `dir`) and
/// avahi-daemon in its own mount namespace (a tmpfs on /run for its pid
/// file), on the LAN interface only.
fn avahi(lan: &Lan, i: usize, dir: &std::path::Path) -> (Proc, Proc, String) {
    let bus = dir.join("bus");
    let conf = dir.join("bus.conf");
    std::fs::write(
        &conf,
        format!(
            "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\" \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n<busconfig><type>system</type><listen>unix:path={}</listen><auth>EXTERNAL</auth><policy context=\"default\"><allow user=\"*\"/><allow own=\"*\"/><allow send_destination=\"*\"/><allow receive_sender=\"*\"/></policy></busconfig>\n",
            bus.display()
        ),
    )
    .expect("bus.conf");
    let avahi_conf = dir.join("avahi.conf");
    std::fs::write(
        &avahi_conf,
        format!(
            "[server]\nuse-ipv4=yes\nuse-ipv6=no\nallow-interfaces={}\nenable-dbus=yes\n[publish]\npublish-workstation=no\npublish-hinfo=no\n",
            lan.ifaces[i]
        ),
    )
    .expect("avahi.conf");
    let dbus = lan.spawn(
        i,
        "/usr/bin/dbus-daemon",
        &[
            "--nofork".into(),
            format!("--config-file={}", conf.display()),
        ],
        dir,
    );
    let end = Instant::now() + Duration::from_secs(5);
    while !bus.exists() {
        assert!(
            Instant::now() < end,
            "dbus-daemon did not start (apt-get install dbus)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let addr = format!("unix:path={}", bus.display());
    let script = format!(
        "mount -t tmpfs tmpfs /run && mkdir -p /run/avahi-daemon && DBUS_SYSTEM_BUS_ADDRESS={addr} exec avahi-daemon -f {} --no-drop-root --no-chroot --no-rlimits",
        avahi_conf.display()
    );
    let daemon = lan.spawn(
        i,
        "/usr/bin/unshare",
        &["-m".into(), "sh".into(), "-c".into(), script],
        dir,
    );
    std::thread::sleep(Duration::from_millis(1500));
    (dbus, daemon, addr)
}

fn avahi_tool(lan: &Lan, i: usize, bus: &str, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new("ip");
    c.args(["netns", "exec", &lan.hosts[i]])
        .args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus);
    c
}

#[test]
fn skiff_and_avahi_understand_each_other() {
    let w = World::new();
    let lan = Lan::new("a", 1);
    let (_dbus, _avahi, bus) = avahi(&lan, 0, w.home.path());
    let home = w.home.path();
    let ip = &lan.ips[0];

    // "orders" itself uses the local registry, so the only mDNS record for
    // it is the one avahi publishes.
    let echo_port = free_port();
    let _echo = lan.spawn(
        0,
        "skiff-echo",
        &[
            "--http-port".into(),
            echo_port.to_string(),
            "--name".into(),
            "orders-app".into(),
        ],
        home,
    );
    let (orders_http, internal) = (free_port(), free_port());
    let _orders = lan.spawn(
        0,
        "skiffd",
        &[
            "--app-id",
            "orders",
            "--app-port",
            &echo_port.to_string(),
            "--dapr-http-port",
            &orders_http.to_string(),
            "--dapr-grpc-port",
            &free_port().to_string(),
            "--metrics-port",
            "0",
            "--dapr-internal-grpc-listen-address",
            ip,
            "--dapr-internal-grpc-port",
            &internal.to_string(),
        ]
        .map(String::from),
        &home.join("orders-home"),
    );
    lan.wait_status(
        0,
        &format!("http://127.0.0.1:{orders_http}/v1.0/healthz"),
        204,
        Duration::from_secs(15),
    );
    let mut publish = avahi_tool(
        &lan,
        0,
        &bus,
        &[
            "avahi-publish",
            "-s",
            "orders-by-avahi",
            "_orders._tcp",
            &internal.to_string(),
            "appid=orders",
            "namespace=default",
        ],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .expect("avahi-publish (apt-get install avahi-utils)");

    let cfg = home.join("mdns.yaml");
    std::fs::write(&cfg, "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: mdns\nspec:\n  nameResolution:\n    component: mdns\n").expect("write");
    let caller_http = free_port();
    let _caller = lan.spawn(
        0,
        "skiffd",
        &[
            "--app-id",
            "caller",
            "--dapr-http-port",
            &caller_http.to_string(),
            "--dapr-grpc-port",
            &free_port().to_string(),
            "--metrics-port",
            "0",
            "--dapr-internal-grpc-listen-address",
            ip,
            "--config",
            &cfg.display().to_string(),
        ]
        .map(String::from),
        &home.join("caller-home"),
    );
    lan.wait_status(
        0,
        &format!("http://127.0.0.1:{caller_http}/v1.0/healthz"),
        204,
        Duration::from_secs(15),
    );

    // Skiff resolves avahi's record and the call reaches the app.
    let url = format!("http://127.0.0.1:{caller_http}/v1.0/invoke/orders/method/echo");
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, text) = lan.curl(0, &["-X", "POST", "-d", "via avahi", &url]);
        if s == 200 {
            assert_eq!(echo_server(&text).as_deref(), Some("orders-app"));
            break;
        }
        assert!(
            Instant::now() < end,
            "never resolved avahi's record: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // avahi sees what Skiff announces.
    let out = avahi_tool(
        &lan,
        0,
        &bus,
        &["timeout", "5", "avahi-browse", "-rtp", "_caller._tcp"],
    )
    .output()
    .expect("avahi-browse");
    let text = String::from_utf8_lossy(&out.stdout);
    let resolved = text
        .lines()
        .find(|l| l.starts_with('='))
        .unwrap_or_default();
    assert!(
        resolved.contains(ip.as_str()) && resolved.contains("\"appid=caller\""),
        "{text}"
    );
    let _ = publish.kill();
    let _ = publish.wait();
}
