//! The Consul resolver against the real agent (vendored Consul 1.8.7, dev
//! mode, loopback): self-registration with a health check, lookups of
//! healthy instances kept fresh by blocking queries, a dead instance leaving
//! the rotation, the cache serving while Consul is down, deregistration.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_tests::*;

fn consul(dir: &Path, http: u16) -> Proc {
    let hcl = dir.join("dev.hcl");
    std::fs::write(
        &hcl,
        format!(
            "disable_update_check = true\ndisable_anonymous_signature = true\nbind_addr = \"127.0.0.1\"\nclient_addr = \"127.0.0.1\"\nports {{\n  http = {http}\n  dns = -1\n  grpc = -1\n  serf_lan = {}\n  serf_wan = {}\n  server = {}\n}}\n",
            free_port(),
            free_port(),
            free_port()
        ),
    )
    .expect("hcl");
    let child = Command::new(consul_bin())
        .args(["agent", "-dev", "-node", "skiff-test", "-log-level", "warn"])
        .arg(format!("-config-file={}", hcl.display()))
        .arg(format!("-data-dir={}", dir.join("data").display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("consul agent");
    Proc {
        child,
        name: "consul".into(),
    }
}

async fn consul_get(http: u16, path: &str) -> Option<serde_json::Value> {
    let c = http_client();
    let req = request("GET", &format!("http://127.0.0.1:{http}{path}"), "");
    match tokio::time::timeout(Duration::from_secs(2), c.request(req)).await {
        Ok(Ok(r)) if r.status().is_success() => {
            use http_body_util::BodyExt;
            let b = r.into_body().collect().await.ok()?.to_bytes();
            serde_json::from_slice(&b).ok()
        }
        _ => None,
    }
}

fn config(dir: &Path, http: u16) -> String {
    let p = dir.join("consul.yaml");
    std::fs::write(
        &p,
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: consul\nspec:\n  nameResolution:\n    component: consul\n    configuration:\n      client:\n        address: \"127.0.0.1:{http}\"\n      selfRegister: true\n      selfDeregister: true\n      checkInterval: 1s\n      tags: [skiff]\n"
        ),
    )
    .expect("write");
    p.display().to_string()
}

fn with_config(o: SidecarOpts, cfg: &str) -> SidecarOpts {
    let mut o = o;
    o.args.extend(["--config".into(), cfg.into()]);
    o
}

async fn passing(http: u16, app: &str) -> usize {
    consul_get(http, &format!("/v1/health/service/{app}?passing=1"))
        .await
        .and_then(|v| v.as_array().map(Vec::len))
        .unwrap_or(0)
}

#[tokio::test]
async fn consul_registers_resolves_follows_health_and_survives_its_outage() {
    let w = World::new();
    let http = free_port();
    let mut agent = consul(w.home.path(), http);
    let end = Instant::now() + Duration::from_secs(20);
    while consul_get(http, "/v1/status/leader")
        .await
        .is_none_or(|v| v.as_str().unwrap_or_default().is_empty())
    {
        assert!(Instant::now() < end, "consul did not elect itself");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cfg = config(w.home.path(), http);
    let (e1, e2) = (w.echo("host-1"), w.echo("host-2"));
    let o1 = w.sidecar("orders", with_config(SidecarOpts::app(e1.http_port), &cfg));
    let mut o2 = w.sidecar("orders", with_config(SidecarOpts::app(e2.http_port), &cfg));
    let caller = w.sidecar("caller", with_config(SidecarOpts::default(), &cfg));
    // Both pass their health checks.
    let end = Instant::now() + Duration::from_secs(10);
    while passing(http, "orders").await < 2 {
        assert!(
            Instant::now() < end,
            "the instances never passed their checks"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let services = consul_get(http, "/v1/agent/services")
        .await
        .expect("services");
    let reg = services
        .as_object()
        .and_then(|m| m.values().find(|s| s["Service"] == "orders"))
        .expect("registered")
        .clone();
    assert!(
        reg["Meta"]["DAPR_PORT"]
            .as_str()
            .is_some_and(|p| p.parse::<u16>().is_ok()),
        "{reg}"
    );
    assert_eq!(reg["Tags"][0], "skiff");

    let c = http_client();
    let url = format!("{}/v1.0/invoke/orders/method/echo", caller.http());
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let r = send(&c, request("POST", &url, "x")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        seen.insert(r.header("x-echo-server").to_owned());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // Host 2's sidecar dies without deregistering: its check fails, the
    // watch drops it, and no call fails on the way.
    o2.proc.kill();
    let end = Instant::now() + Duration::from_secs(15);
    while passing(http, "orders").await != 1 {
        let r = send(&c, request("POST", &url, "x")).await;
        assert_eq!(
            r.status,
            200,
            "a call failed while host 2 went away: {}",
            r.text()
        );
        assert!(Instant::now() < end, "the dead instance kept passing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..10 {
        let r = send(&c, request("POST", &url, "x")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-echo-server"), "host-1");
    }

    // A clean shutdown deregisters (gone from the catalog, not just critical).
    let e3 = w.echo("host-3");
    let mut o3 = w.sidecar("orders", with_config(SidecarOpts::app(e3.http_port), &cfg));
    let end = Instant::now() + Duration::from_secs(10);
    while passing(http, "orders").await != 2 {
        assert!(Instant::now() < end, "the third instance did not register");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let count = |v: &serde_json::Value| {
        v.as_object().map_or(0, |m| {
            m.values().filter(|s| s["Service"] == "orders").count()
        })
    };
    let before = count(
        &consul_get(http, "/v1/agent/services")
            .await
            .unwrap_or_default(),
    );
    o3.proc.terminate();
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let services = consul_get(http, "/v1/agent/services")
            .await
            .unwrap_or_default();
        if count(&services) == before - 1 {
            break;
        }
        assert!(
            Instant::now() < end,
            "a clean shutdown did not deregister: {services}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Consul goes away: the cached endpoints keep serving. Host 3 has
    // finished its drain first: this part is about the cache outliving
    // Consul, not about a call that races a callee's shutdown (the caller
    // may still hold host 3 if Consul went before its watch saw the
    // deregistration; a host that is gone refuses the connection and the
    // call moves on, as host 2 showed).
    assert!(
        o3.proc.wait_exit(Duration::from_secs(20)).is_some(),
        "host 3's sidecar did not stop after its drain"
    );
    agent.kill();
    for _ in 0..20 {
        let r = send(&c, request("POST", &url, "x")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-echo-server"), "host-1");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(o1);
}

/// The VM layout: three hosts (network namespaces on a private LAN), each
/// with a Consul agent (a server on host 0, clients on 1 and 2 joined to
/// it), a sidecar and an app.
#[test]
fn three_hosts_with_consul_agents() {
    use skiff_tests::netns::{Lan, echo_server};
    let w = World::new();
    let lan = Lan::new("c", 3);
    let consul = consul_bin().display().to_string();
    let home = w.home.path();
    let mut agents = Vec::new();
    for i in 0..3 {
        let data = home.join(format!("consul-{i}"));
        let mut args: Vec<String> = [
            "agent",
            "-node",
            &format!("host{i}"),
            "-bind",
            &lan.ips[i],
            "-client",
            "127.0.0.1",
            "-data-dir",
            &data.display().to_string(),
            "-log-level",
            "warn",
            "-disable-host-node-id",
            "-hcl",
            "disable_update_check = true",
        ]
        .map(String::from)
        .to_vec();
        if i == 0 {
            args.extend(["-server".into(), "-bootstrap-expect=1".into()]);
        } else {
            args.extend([
                "-retry-join".into(),
                lan.ips[0].clone(),
                "-retry-interval".into(),
                "1s".into(),
            ]);
        }
        agents.push(lan.spawn(i, &consul, &args, home));
    }
    // Every agent sees a leader.
    for i in 0..3 {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let (s, text) = lan.curl(i, &["http://127.0.0.1:8500/v1/status/leader"]);
            if s == 200 && text.contains(':') && !text.trim_end().ends_with("\"\"") {
                break;
            }
            assert!(Instant::now() < end, "host {i}: no consul leader: {text}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let cfg = home.join("consul.yaml");
    std::fs::write(
        &cfg,
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: consul\nspec:\n  nameResolution:\n    component: consul\n    configuration:\n      selfRegister: true\n      selfDeregister: true\n      checkInterval: 1s\n",
    )
    .expect("write");
    let cfg = cfg.display().to_string();
    // The caller retries: a call that lands on host 2 between its app
    // dying and Consul noticing is retried on another instance.
    let res = home.join("resources");
    std::fs::create_dir_all(&res).expect("mkdir");
    std::fs::write(
        res.join("retry.yaml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: retry\nspec:\n  policies:\n    retries:\n      failover: {policy: constant, duration: 20ms, maxRetries: 3}\n  targets:\n    apps:\n      orders: {retry: failover}\n",
    )
    .expect("write");
    let res = res.display().to_string();
    let mut sidecars = Vec::new();
    let mut apps = Vec::new();
    let http = 3500;
    for i in 0..3 {
        let echo_port = 8080;
        apps.push(lan.spawn(
            i,
            "skiff-echo",
            &[
                "--http-port".into(),
                echo_port.to_string(),
                "--name".into(),
                format!("host-{i}"),
            ],
            home,
        ));
        let mut args: Vec<String> = [
            "--app-id",
            if i == 0 { "caller" } else { "orders" },
            "--config",
            &cfg,
            "--dapr-internal-grpc-listen-address",
            &lan.ips[i],
            "--dapr-internal-grpc-port",
            "50002",
        ]
        .map(String::from)
        .to_vec();
        if i == 0 {
            args.extend(["--resources-path".into(), res.clone()]);
        }
        if i > 0 {
            args.extend(
                [
                    "--app-port",
                    "8080",
                    "--enable-app-health-check",
                    "--app-health-check-path",
                    "/healthz",
                    "--app-health-probe-interval",
                    "1",
                    "--app-health-threshold",
                    "1",
                ]
                .map(String::from),
            );
        }
        sidecars.push(lan.spawn(i, "skiffd", &args, &home.join(&lan.hosts[i])));
        lan.wait_status(
            i,
            &format!("http://127.0.0.1:{http}/v1.0/healthz"),
            204,
            Duration::from_secs(15),
        );
    }
    // Generous: on a loaded machine an agent's first sync can fail and
    // Consul retries it after 15 s and more, and serf may flag a slow host
    // failed for a while. A failure shows what every agent saw.
    let passing = |n: usize| {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, text) = lan.curl(
                0,
                &["http://127.0.0.1:8500/v1/health/service/orders?passing=1"],
            );
            if text.matches("\"Service\":{").count() == n {
                return;
            }
            if Instant::now() >= end {
                let (_, all) = lan.curl(0, &["http://127.0.0.1:8500/v1/health/service/orders"]);
                let (_, members) = lan.curl(0, &["http://127.0.0.1:8500/v1/agent/members"]);
                let local: Vec<String> = (1..3)
                    .map(|i| lan.curl(i, &["http://127.0.0.1:8500/v1/agent/checks"]).1)
                    .collect();
                panic!(
                    "expected {n} passing orders: {text}\nall instances: {all}\nmembers: {members}\nagent checks on hosts 1, 2: {local:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    passing(2);
    let url = format!("http://127.0.0.1:{http}/v1.0/invoke/orders/method/echo");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let (s, text) = lan.curl(0, &["-X", "POST", "-d", "x", &url]);
        assert_eq!(s, 200, "{text}");
        seen.extend(echo_server(&text));
    }
    assert_eq!(seen.len(), 2, "calls reached {seen:?}");

    // The app on host 2 stops: its sidecar's health check fails, Consul
    // drops it, and traffic moves to host 1 without a failed call.
    apps[2].kill();
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, text) = lan.curl(0, &["-X", "POST", "-d", "x", &url]);
        let (_, health) = lan.curl(
            0,
            &["http://127.0.0.1:8500/v1/health/service/orders?passing=1"],
        );
        if health.matches("\"Service\":{").count() == 1 {
            break;
        }
        // Until Consul notices, calls that land on host 2 fail there and
        // the retry policy takes them to host 1.
        assert_eq!(s, 200, "a call failed while host 2's app went away: {text}");
        assert!(Instant::now() < end, "host 2 stayed passing: {health}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..20 {
        let (s, text) = lan.curl(0, &["-X", "POST", "-d", "x", &url]);
        assert_eq!(s, 200, "{text}");
        assert_eq!(echo_server(&text).as_deref(), Some("host-1"));
    }

    // Host 0's agent stops: calls keep working from the cache.
    agents[0].kill();
    for _ in 0..20 {
        let (s, text) = lan.curl(0, &["-X", "POST", "-d", "x", &url]);
        assert_eq!(s, 200, "{text}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Host 1's sidecar stops cleanly: it deregisters from its agent.
    sidecars[1].terminate();
    let _ = sidecars[1].wait_exit(Duration::from_secs(10));
    let (_, services) = lan.curl(1, &["http://127.0.0.1:8500/v1/agent/services"]);
    assert!(!services.contains("\"Service\":\"orders\""), "{services}");
}
