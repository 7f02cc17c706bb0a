//! mTLS between sidecars: the embedded CA, sentry, rotation, and everything
//! the internal port must refuse.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use skiff_sentry::SpiffeId;
use skiff_sentry::ca::{self, Authority, KeyAlg};
use skiff_sentry::tls::{self, Anchors, Workload};
use skiff_tests::*;

struct Mesh {
    _echo: Echo,
    callee: Sidecar,
    caller: Sidecar,
    w: World,
}

fn embedded_mesh() -> Mesh {
    let w = World::new();
    let echo = w.echo("e");
    let callee = w.sidecar("callee", SidecarOpts::app(echo.http_port).mtls());
    let caller = w.sidecar("caller", SidecarOpts::default().mtls());
    Mesh {
        _echo: echo,
        callee,
        caller,
        w,
    }
}

async fn invoke(c: &HttpClient, caller: &Sidecar, app: &str) -> Resp {
    send(
        c,
        request(
            "POST",
            &format!("{}/v1.0/invoke/{app}/method/echo", caller.http()),
            "ping",
        ),
    )
    .await
}

#[tokio::test]
async fn embedded_ca_carries_calls_and_names_the_verified_caller() {
    let m = embedded_mesh();
    let c = http_client();
    let mut req = request(
        "POST",
        &format!("{}/v1.0/invoke/callee/method/echo", m.caller.http()),
        "ping",
    );
    // An app cannot claim to be someone else.
    req.headers_mut()
        .insert("dapr-caller-app-id", "admin".parse().expect("hv"));
    let r = send(&c, req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "ping");
    assert_eq!(r.echoed_headers()["dapr-caller-app-id"], "caller");
    let md = get_json(&format!("{}/v1.0/metadata", m.callee.http())).await;
    assert_eq!(
        md["skiff"]["mtls"]["spiffeId"],
        "spiffe://public/ns/default/callee"
    );
    assert!(
        md["skiff"]["mtls"]["certificateExpiry"].as_u64().is_some(),
        "{md}"
    );
    assert!(m.w.home.path().join("sentry/ca.crt").exists());
}

/// The callee's internal listener address, from its metadata.
async fn internal_addr(s: &Sidecar) -> SocketAddr {
    let md = get_json(&format!("{}/v1.0/metadata", s.http())).await;
    md["skiff"]["internalAddress"]
        .as_str()
        .expect("internal address")
        .parse()
        .expect("addr")
}

/// One HTTP/2 call to the callee's internal port over `io`.
async fn call_internal<I>(io: I) -> Result<u16, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(conn);
    // The callee is named by the authority: `{app}.{namespace}`.
    let req = http::Request::post("http://callee.default/echo")
        .body(Full::new(Bytes::from_static(b"x")))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(5), tx.send_request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| format!("request: {e}"))?;
    Ok(resp.status().as_u16())
}

async fn call_with_tls(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Result<u16, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls_pki_types::ServerName::IpAddress(addr.ip().into()),
            tcp,
        )
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    call_internal(tls).await
}

fn workload(ca: &Authority, id: &SpiffeId, ttl: Duration) -> Workload {
    let (key, req) = skiff_sentry::csr::generate(id, KeyAlg::EcdsaP256).expect("csr");
    let checked = skiff_sentry::csr::check(req.as_bytes(), id).expect("check");
    Workload::new(ca.sign(&checked, id, ttl).expect("sign").chain, key).expect("workload")
}

#[tokio::test]
async fn the_internal_port_refuses_everyone_without_a_good_certificate() {
    let m = embedded_mesh();
    let addr = internal_addr(&m.callee).await;
    let dir = m.w.home.path().join("sentry");
    let ca = Authority::load(&dir).expect("embedded CA");
    let anchors = Anchors::from_pem(ca.anchors_pem().as_bytes(), "ca.crt").expect("anchors");
    let id = |td: &str| SpiffeId::new(td, "default", "tester").expect("id");

    // Control: a certificate from the mesh's CA gets through.
    let good = workload(&ca, &id("public"), Duration::from_secs(600));
    let ok = call_with_tls(addr, tls::client_config(&good, &anchors).expect("config")).await;
    assert_eq!(ok, Ok(200), "a good certificate must work");

    // Plaintext HTTP/2.
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    assert!(
        call_internal(tcp).await.is_err(),
        "plaintext must be refused"
    );

    // TLS without a client certificate.
    let anon = tls::anonymous_client_config(&anchors, "public").expect("config");
    assert!(
        call_with_tls(addr, anon).await.is_err(),
        "no client certificate must be refused"
    );

    // A certificate from another CA.
    let other_dir = m.w.home.path().join("other-ca");
    let (other, _) =
        Authority::load_or_create(&other_dir, "public", KeyAlg::EcdsaP256).expect("ca");
    let foreign = workload(&other, &id("public"), Duration::from_secs(600));
    let r = call_with_tls(
        addr,
        tls::client_config(&foreign, &anchors).expect("config"),
    )
    .await;
    assert!(r.is_err(), "a foreign CA must be refused: {r:?}");

    // The right CA, the wrong trust domain.
    let evil = workload(&ca, &id("evil"), Duration::from_secs(600));
    let r = call_with_tls(
        addr,
        tls::client_config_trusting(&evil, &anchors, "public").expect("config"),
    )
    .await;
    assert!(r.is_err(), "another trust domain must be refused: {r:?}");

    // An expired certificate (NotBefore is back-dated, so one second of
    // validity is over a second later).
    let expired = workload(&ca, &id("public"), Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = call_with_tls(
        addr,
        tls::client_config(&expired, &anchors).expect("config"),
    )
    .await;
    assert!(r.is_err(), "an expired certificate must be refused: {r:?}");
}

#[tokio::test]
async fn a_resolver_pointing_at_the_wrong_sidecar_gets_an_identity_mismatch() {
    let m = embedded_mesh();
    let addr = internal_addr(&m.callee).await;
    // A registry entry claiming app "ghost" lives at the callee's address.
    let dir = m.w.home.path().join("registry/default/ghost");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let entry = serde_json::json!({
        "appId": "ghost", "namespace": "default", "address": addr.to_string(),
        "pid": std::process::id(), "httpPort": 1,
    });
    std::fs::write(
        dir.join(format!("{}-1.json", std::process::id())),
        entry.to_string(),
    )
    .expect("write");
    let c = http_client();
    let end = Instant::now() + Duration::from_secs(5);
    let r = loop {
        let r = invoke(&c, &m.caller, "ghost").await;
        if !r.text().contains("not found") || Instant::now() > end {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("identity mismatch"), "{}", r.text());
    assert!(
        r.text().contains("spiffe://public/ns/default/callee"),
        "{}",
        r.text()
    );
    // The real callee still works.
    assert_eq!(invoke(&c, &m.caller, "callee").await.status, 200);
}

/// Calls through `callers` in turn at about `rate` per second for `d`,
/// returning (ok, failures).
async fn steady_calls(callers: &[&Sidecar], rate: u32, d: Duration) -> (u32, Vec<String>) {
    let c = http_client();
    let mut ok = 0;
    let mut failed = Vec::new();
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut i = 0usize;
    while start.elapsed() < d {
        tick.tick().await;
        let s = callers[i % callers.len()];
        i += 1;
        let r = invoke(&c, s, "callee").await;
        if r.status == 200 {
            ok += 1;
        } else {
            failed.push(format!("{}: {} {}", s.app_id, r.status, r.text()));
        }
    }
    (ok, failed)
}

async fn expiry(s: &Sidecar) -> u64 {
    get_json(&format!("{}/v1.0/metadata", s.http())).await["skiff"]["mtls"]["certificateExpiry"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test]
async fn sentry_certificates_rotate_under_load_without_a_failed_call() {
    let w = World::new();
    let sentry = w.sentry(&["--workload-cert-ttl", "4s"]);
    let echo = w.echo("e");
    let callee = w.sidecar("callee", SidecarOpts::app(echo.http_port).sentry(&sentry));
    let caller = w.sidecar("caller", SidecarOpts::default().sentry(&sentry));
    // Watch the callee's certificate change while calls run.
    let watcher = {
        let callee_http = callee.http();
        tokio::spawn(async move {
            let mut seen = std::collections::BTreeSet::new();
            let end = Instant::now() + Duration::from_secs(30);
            while Instant::now() < end {
                let md = get_json(&format!("{callee_http}/v1.0/metadata")).await;
                if let Some(e) = md["skiff"]["mtls"]["certificateExpiry"].as_u64() {
                    seen.insert(e);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            seen.len()
        })
    };
    let (ok1, failed1) = steady_calls(&[&caller], 20, Duration::from_secs(15)).await;
    // A sidecar that starts now handshakes with the callee's rotated certificate.
    let late = w.sidecar("late", SidecarOpts::default().sentry(&sentry));
    let (ok2, failed2) = steady_calls(&[&caller, &late], 20, Duration::from_secs(15)).await;
    let certs = watcher.await.expect("watcher");
    assert!(
        failed1.is_empty() && failed2.is_empty(),
        "failed calls: {failed1:?} {failed2:?}"
    );
    assert!(ok1 + ok2 >= 400, "only {} calls", ok1 + ok2);
    assert!(
        certs >= 5,
        "the callee went through only {certs} certificates in 30 s"
    );
    assert!(expiry(&late).await > 0);
}

#[tokio::test]
async fn a_new_issuer_is_picked_up_without_a_restart() {
    let w = World::new();
    let root = w.home.path().join("root");
    let creds = w.home.path().join("creds");
    let tool = |args: &[&str]| {
        let out = std::process::Command::new(bin("skiff-sentry"))
            .args(args)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (root_s, creds_s) = (root.display().to_string(), creds.display().to_string());
    tool(&["root", "--out", &root_s]);
    tool(&["issuer", "--root", &root_s, "--out", &creds_s]);
    let sentry = w.sentry_at(free_port(), &creds, &["--workload-cert-ttl", "3s"]);
    let echo = w.echo("e");
    let callee = w.sidecar("callee", SidecarOpts::app(echo.http_port).sentry(&sentry));
    let caller = w.sidecar("caller", SidecarOpts::default().sentry(&sentry));
    let c = http_client();
    assert_eq!(invoke(&c, &caller, "callee").await.status, 200);

    let old_issuer = std::fs::read(creds.join("issuer.crt")).expect("issuer");
    tool(&["issuer", "--root", &root_s, "--out", &creds_s]);
    let new_issuer = std::fs::read(creds.join("issuer.crt")).expect("issuer");
    assert_ne!(old_issuer, new_issuer);
    let new_der = tls_der(&new_issuer);
    // Sentry signs with the new issuer within a few seconds.
    let anchors = Anchors::from_pem(sentry.anchors().as_bytes(), "ca.crt").expect("anchors");
    let id = SpiffeId::new("public", "default", "probe").expect("id");
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let ask = skiff_sentry::client::Ask {
            id: &id,
            token: "",
            validator: skiff_proto::sentry::sign_certificate_request::TokenValidator::Insecure,
            key_alg: KeyAlg::Ed25519,
        };
        let w = skiff_sentry::client::obtain(&sentry.address(), &anchors, &ask)
            .await
            .expect("obtain");
        if w.chain[1].as_ref() == new_der.as_slice() {
            break;
        }
        assert!(
            Instant::now() < end,
            "sentry still signs with the old issuer"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Old and new leaves interoperate: calls keep working while the
    // sidecars renew onto the new issuer, and a new sidecar can call in.
    let (_, failed) = steady_calls(&[&caller], 20, Duration::from_secs(5)).await;
    assert!(failed.is_empty(), "{failed:?}");
    let late = w.sidecar("late", SidecarOpts::default().sentry(&sentry));
    assert_eq!(invoke(&c, &late, "callee").await.status, 200);
    drop(callee);
}

fn tls_der(pem: &[u8]) -> Vec<u8> {
    skiff_sentry::pem::certs(pem, "issuer.crt").expect("pem")[0].to_vec()
}

#[tokio::test]
async fn a_sidecar_started_before_sentry_says_why_and_recovers() {
    let w = World::new();
    let creds = w.home.path().join("creds");
    ca::create(&creds, "public", KeyAlg::EcdsaP256).expect("credentials");
    let port = free_port();
    let anchors = std::fs::read_to_string(creds.join("ca.crt")).expect("ca.crt");
    let mut opts = SidecarOpts::default();
    opts.args.extend([
        "--enable-mtls".into(),
        "--sentry-address".into(),
        format!("127.0.0.1:{port}"),
    ]);
    opts.env.push(("DAPR_TRUST_ANCHORS", anchors));
    let log = w.home.path().join("early.log");
    opts.log_file = Some(log.clone());
    let s = w.sidecar_started("early", opts);
    let c = http_client();
    let url = format!("{}/v1.0/healthz/outbound", s.http());
    let end = Instant::now() + Duration::from_secs(5);
    let body = loop {
        let r = send(&c, request("GET", &url, "")).await;
        assert_eq!(r.status, 500, "ready without a certificate");
        if r.text().contains("unreachable") || Instant::now() > end {
            break r.text();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        body.contains(&format!("127.0.0.1:{port}")) && body.contains("unreachable"),
        "{body}"
    );
    // Not published while it cannot take calls.
    let registry = w.home.path().join("registry/default/early");
    let entries = |dir: &Path| std::fs::read_dir(dir).map_or(0, |d| d.count());
    assert_eq!(entries(&registry), 0, "registered without a certificate");
    // Nor said to be ready: the log says what it waits for.
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text().contains("not ready until it holds a workload certificate")
            && !text().contains("skiffd ready"),
        "{}",
        text()
    );
    let _sentry = w.sentry_at(port, &creds, &[]);
    wait_outbound_ready(&s, Duration::from_secs(20)).await;
    // Ready means published, and said.
    assert_eq!(entries(&registry), 1, "ready but not registered");
    let end = Instant::now() + Duration::from_secs(5);
    while !text().contains("skiffd ready") && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(text().contains("skiffd ready"), "{}", text());
    // Values as a user writes them, not Rust's debug forms.
    for debug in ["Some(", "None", "SystemTime", "tv_sec"] {
        assert!(!text().contains(debug), "{debug} in the log:\n{}", text());
    }
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, contents).expect("write");
    p.display().to_string()
}

#[tokio::test]
async fn the_jwt_validator_takes_a_fresh_token_and_refuses_a_foreign_one() {
    let w = World::new();
    let sentry = w.sentry(&["--token-validator", "jwks"]);
    let creds = sentry.creds.display().to_string();
    let mint = |app: &str| {
        let out = std::process::Command::new(bin("skiff-sentry"))
            .args([
                "token",
                "--app-id",
                app,
                "--ttl",
                "10m",
                "--issuer-credentials",
                &creds,
            ])
            .output()
            .expect("token");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    };
    let echo = w.echo("e");
    let callee_token = write(w.home.path(), "callee.jwt", &mint("callee"));
    let mut o = SidecarOpts::app(echo.http_port).sentry(&sentry);
    o.env.push(("DAPR_SENTRY_TOKEN_FILE", callee_token.clone()));
    let callee = w.sidecar("callee", o);
    wait_outbound_ready(&callee, Duration::from_secs(10)).await;

    // Another app presenting the callee's token.
    let mut o = SidecarOpts::default().sentry(&sentry);
    o.env.push(("DAPR_SENTRY_TOKEN_FILE", callee_token));
    let intruder = w.sidecar_started("intruder", o);
    // No token at all.
    let bare = w.sidecar_started("bare", SidecarOpts::default().sentry(&sentry));
    let c = http_client();
    for (s, want) in [
        (&intruder, "is for spiffe://public/ns/default/callee"),
        (&bare, "insecure is not enabled"),
    ] {
        let url = format!("{}/v1.0/healthz/outbound", s.http());
        let end = Instant::now() + Duration::from_secs(5);
        let text = loop {
            let r = send(&c, request("GET", &url, "")).await;
            assert_eq!(r.status, 500, "{} must not get a certificate", s.app_id);
            if r.text().contains("refused") || Instant::now() > end {
                break r.text();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            text.contains("refused") && text.contains(want),
            "{}: {text}",
            s.app_id
        );
    }
}

#[test]
fn unusable_anchors_and_credentials_stop_the_start_with_one_line() {
    let w = World::new();
    let run = |bin_name: &str, args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(bin(bin_name));
        cmd.args(args)
            .env("SKIFF_HOME", w.home.path())
            .env_remove("DAPR_TRUST_ANCHORS");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run");
        assert!(!out.status.success(), "{bin_name} {args:?} started");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        err.lines().last().unwrap_or_default().to_owned()
    };
    let skiffd = |extra: &[&str], env: &[(&str, &str)]| {
        let port = free_port().to_string();
        let grpc = free_port().to_string();
        let mut args = vec![
            "--app-id",
            "a",
            "--dapr-http-port",
            &port,
            "--dapr-grpc-port",
            &grpc,
            "--metrics-port",
            "0",
        ];
        args.extend_from_slice(extra);
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        a.push("--enable-mtls".into());
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        run("skiffd", &refs, env)
    };
    let line = skiffd(
        &["--sentry-address", "127.0.0.1:1"],
        &[("DAPR_TRUST_ANCHORS", "not a certificate")],
    );
    assert!(line.contains("DAPR_TRUST_ANCHORS"), "{line}");
    let line = skiffd(
        &[
            "--sentry-address",
            "127.0.0.1:1",
            "--trust-anchors-file",
            "/nonexistent/ca.crt",
        ],
        &[],
    );
    assert!(line.contains("/nonexistent/ca.crt"), "{line}");
    let line = skiffd(&["--sentry-address", "127.0.0.1:1"], &[]);
    assert!(
        line.contains("DAPR_TRUST_ANCHORS or --trust-anchors-file"),
        "{line}"
    );

    let creds = w.home.path().join("bad-creds");
    std::fs::create_dir_all(&creds).expect("mkdir");
    std::fs::write(creds.join("ca.crt"), "garbage").expect("write");
    let creds_s = creds.display().to_string();
    let port = free_port().to_string();
    let line = run(
        "skiff-sentry",
        &["--issuer-credentials", &creds_s, "--port", &port],
        &[],
    );
    assert!(
        line.starts_with("skiff-sentry: ") && line.contains("ca.crt"),
        "{line}"
    );
}

/// On its first start sentry writes its root and issuer before it opens its
/// port, so a script that waits for the port and then reads `ca.crt` (as
/// sidecars' operators do) never races it. Polled as tightly as a script
/// could, over several fresh starts.
#[test]
fn sentry_writes_its_credentials_before_it_opens_its_port() {
    let w = World::new();
    for round in 0..8 {
        let port = free_port();
        let creds = w.home.path().join(format!("creds-{round}"));
        let child = std::process::Command::new(bin("skiff-sentry"))
            .args(["--port", &port.to_string()])
            .arg("--issuer-credentials")
            .arg(&creds)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log_sink())
            .spawn()
            .expect("spawn skiff-sentry");
        let _sentry = Proc {
            child,
            name: "sentry".into(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sentry never opened its port");
            std::thread::sleep(Duration::from_micros(100));
        }
        for f in ["ca.crt", "issuer.crt", "issuer.key"] {
            let text = std::fs::read_to_string(creds.join(f)).unwrap_or_else(|e| {
                panic!("round {round}: {f} missing once the port is open: {e}")
            });
            assert!(
                text.contains("-----END"),
                "round {round}: {f} is incomplete"
            );
        }
    }
}
