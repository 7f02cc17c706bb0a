//! The Consul resolver against the real agent (vendored Consul 1.8.7, dev
//! mode, loopback): self-registration with a health check, lookups of
//! healthy instances kept fresh by blocking queries, a dead instance leaving
//! the rotation, the cache serving while Consul is down, deregistration.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_tests::*;

/// The vendored agent, unpacked once into target/.
fn consul_bin() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("target/consul");
    let bin = dir.join("usr/bin/consul");
    if !bin.exists() {
        let deb = std::fs::read_dir(root.join("../shared/vendor"))
            .expect("../shared/vendor")
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("consul_"))
            })
            .expect("vendored consul .deb");
        let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
        let ok = Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&tmp)
            .status()
            .expect("dpkg-deb");
        assert!(ok.success());
        let _ = std::fs::rename(&tmp, &dir);
        let _ = std::fs::remove_dir_all(&tmp);
    }
    bin
}

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
    let o3 = w.sidecar("orders", with_config(SidecarOpts::app(e3.http_port), &cfg));
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

    // Consul goes away: the cached endpoints keep serving.
    agent.kill();
    for _ in 0..20 {
        let r = send(&c, request("POST", &url, "x")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-echo-server"), "host-1");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(o1);
}
