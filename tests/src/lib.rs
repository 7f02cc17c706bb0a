//! Harness for Skiff's end-to-end tests: starts the real `skiffd` and
//! `skiff-echo` binaries on loopback, each test with its own registry
//! (`SKIFF_HOME`), and kills them by PID when dropped.

pub mod netns;
pub mod servers;
pub mod subscriber;
pub mod web;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Where cargo put the workspace binaries (next to this test's `deps/`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built; run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// A free loopback port for a server a test starts.
///
/// Ports come from below the kernel's ephemeral range (32768 and up by
/// default): a port handed out by `bind(0)` there can be taken by some
/// outgoing connection's local end before the server binds it. Each test
/// process walks its own stretch of 20000..32000 and skips ports in use.
/// A refusing skiffd's stderr says why exactly once: one `skiffd: ...`
/// line, not repeated as a log line (nor the other way round).
pub fn assert_said_once(stderr: &str) {
    let fatal: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("skiffd: "))
        .collect();
    assert_eq!(fatal.len(), 1, "not one fatal line:\n{stderr}");
    let why = fatal[0].trim_start_matches("skiffd: ");
    let repeats = stderr.lines().filter(|l| l.contains(why)).count();
    assert_eq!(
        repeats, 1,
        "the fatal error is printed more than once:\n{stderr}"
    );
}

pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(2_654_435_761)) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN);
}

/// Where started processes log: the test's stderr with `SKIFF_TEST_LOGS`
/// set, else nowhere.
pub fn log_sink() -> Stdio {
    if std::env::var_os("SKIFF_TEST_LOGS").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    }
}

/// A child process that is killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, for graceful-shutdown tests.
    pub fn terminate(&self) {
        signal(self.pid(), "TERM");
    }

    /// SIGKILL: dies without deregistering.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(self.pid())
    }

    /// Waits for exit up to `d`; returns the exit status if it exited.
    pub fn wait_exit(&mut self, d: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// Resident memory of `pid` in KiB, from /proc (0 once it is gone).
pub fn rss_kib_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Sends `sig` (a name: TERM, INT, KILL) to `pid`.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One test's world: a private registry and the processes in it.
pub struct World {
    pub home: tempfile::TempDir,
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

/// A started echo backend.
pub struct Echo {
    pub proc: Proc,
    pub http_port: u16,
    pub grpc_port: u16,
}

/// A started sidecar.
pub struct Sidecar {
    pub proc: Proc,
    pub app_id: String,
    pub http_port: u16,
    pub grpc_port: u16,
    pub metrics_port: u16,
}

impl Sidecar {
    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn grpc_addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// A connected gRPC channel to the sidecar's gRPC API.
    pub async fn grpc_channel(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(self.grpc_addr())
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    /// The Prometheus exposition, scraped once.
    pub async fn scrape(&self) -> String {
        let c = http_client();
        let r = send(
            &c,
            request(
                "GET",
                &format!("http://127.0.0.1:{}/metrics", self.metrics_port),
                "",
            ),
        )
        .await;
        assert_eq!(r.status, 200, "scrape {}: {}", self.app_id, r.text());
        r.text()
    }
}

/// The value of the sample `name{labels}` in a scrape (labels exactly as
/// rendered, in order), 0 when absent.
pub fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// Options for [`World::sidecar`].
#[derive(Clone, Default)]
pub struct SidecarOpts {
    pub app_port: Option<u16>,
    pub protocol: Option<&'static str>,
    pub namespace: Option<&'static str>,
    pub env: Vec<(&'static str, String)>,
    pub args: Vec<String>,
    /// Where the sidecar's stderr goes (for tests that read its logs).
    pub log_file: Option<PathBuf>,
}

impl SidecarOpts {
    /// A sidecar in front of an HTTP app on `port`.
    pub fn app(port: u16) -> Self {
        Self {
            app_port: Some(port),
            ..Self::default()
        }
    }

    /// Also `--config file` (a Configuration document).
    pub fn config(mut self, file: &Path) -> Self {
        self.args
            .extend(["--config".into(), file.display().to_string()]);
        self
    }

    /// A sidecar in front of a gRPC app on `port`.
    pub fn grpc_app(port: u16) -> Self {
        Self {
            app_port: Some(port),
            protocol: Some("grpc"),
            ..Self::default()
        }
    }
}

impl World {
    pub fn new() -> Self {
        Self {
            home: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Writes a components file into `$SKIFF_HOME/components`, which every
    /// sidecar of this world loads when it is given no resources path.
    pub fn component(&self, file: &str, yaml: &str) -> PathBuf {
        let dir = self.home.path().join("components");
        std::fs::create_dir_all(&dir).expect("components dir");
        let p = dir.join(file);
        std::fs::write(&p, yaml).expect("write component");
        p
    }

    /// Starts `skiff-echo` with both HTTP and gRPC listeners.
    pub fn echo(&self, name: &str) -> Echo {
        let (http_port, grpc_port) = (free_port(), free_port());
        let child = Command::new(bin("skiff-echo"))
            .args([
                "--http-port",
                &http_port.to_string(),
                "--grpc-port",
                &grpc_port.to_string(),
                "--name",
                name,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn skiff-echo");
        let proc = Proc {
            child,
            name: name.to_owned(),
        };
        wait_port(http_port);
        wait_port(grpc_port);
        Echo {
            proc,
            http_port,
            grpc_port,
        }
    }

    /// Starts `skiffd` and waits until `/v1.0/healthz` answers 204.
    pub fn sidecar(&self, app_id: &str, o: SidecarOpts) -> Sidecar {
        let mut s = self.sidecar_started(app_id, o);
        wait_healthy(&mut s.proc, s.http_port);
        s
    }

    /// Runs `skiffd` expecting it to refuse to start; its stderr.
    /// A skiffd that does not refuse is killed after 30 s and the test
    /// fails then, rather than waiting on a sidecar that serves.
    pub fn skiffd_fails(&self, app_id: &str, args: &[&str]) -> String {
        let log = tempfile::NamedTempFile::new_in(self.home.path()).expect("stderr file");
        let child = Command::new(bin("skiffd"))
            .args(["--app-id", app_id])
            .args(["--dapr-http-port", &free_port().to_string()])
            .args(["--dapr-grpc-port", &free_port().to_string()])
            .args(["--metrics-port", "0"])
            .args(args)
            .env("SKIFF_HOME", self.home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log.reopen().expect("stderr file")))
            .spawn()
            .expect("run skiffd");
        let mut proc = Proc {
            child,
            name: app_id.to_owned(),
        };
        let status = proc.wait_exit(Duration::from_secs(30));
        let err = std::fs::read_to_string(log.path()).unwrap_or_default();
        match status {
            Some(s) => assert!(!s.success(), "skiffd exited 0:\n{err}"),
            None => panic!("skiffd started instead of refusing:\n{err}"),
        }
        assert_said_once(&err);
        err
    }

    /// Starts `skiffd` and waits only for its HTTP port (it may not be
    /// ready, e.g. while it waits for a certificate).
    pub fn sidecar_started(&self, app_id: &str, o: SidecarOpts) -> Sidecar {
        let (http_port, grpc_port, metrics_port) = (free_port(), free_port(), free_port());
        let mut cmd = Command::new(bin("skiffd"));
        cmd.args(["--app-id", app_id])
            .args(["--dapr-http-port", &http_port.to_string()])
            .args(["--dapr-grpc-port", &grpc_port.to_string()])
            .args(["--metrics-port", &metrics_port.to_string()])
            .env("SKIFF_HOME", self.home.path())
            .env_remove("DAPR_API_TOKEN")
            .env_remove("APP_API_TOKEN")
            .env_remove("NAMESPACE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(match &o.log_file {
                Some(f) => Stdio::from(std::fs::File::create(f).expect("sidecar log file")),
                None => log_sink(),
            });
        if let Some(p) = o.app_port {
            cmd.args(["--app-port", &p.to_string()]);
        }
        if let Some(p) = o.protocol {
            cmd.args(["--app-protocol", p]);
        }
        if let Some(ns) = o.namespace {
            cmd.env("NAMESPACE", ns);
        }
        for (k, v) in &o.env {
            cmd.env(k, v);
        }
        cmd.args(&o.args);
        let child = cmd.spawn().expect("spawn skiffd");
        let mut proc = Proc {
            child,
            name: app_id.to_owned(),
        };
        wait_port_of(&mut proc, http_port);
        Sidecar {
            proc,
            app_id: app_id.to_owned(),
            http_port,
            grpc_port,
            metrics_port,
        }
    }
}

/// Waits until `port` takes connections, failing at once with the exit
/// status if `proc` dies.
pub fn wait_port_of(proc: &mut Proc, port: u16) {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!("{} exited before opening port {port}: {status}", proc.name);
        }
        if std::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} did not open port {port} within 10s", proc.name);
}

fn wait_port(port: u16) {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if std::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("port {port} did not open within 10s");
}

fn wait_healthy(proc: &mut Proc, port: u16) {
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!("skiffd {} exited early: {status}", proc.name);
        }
        if let Ok(mut s) = std::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))) {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let _ =
                s.write_all(b"GET /v1.0/healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            let mut buf = [0u8; 32];
            if let Ok(n) = s.read(&mut buf)
                && buf[..n].starts_with(b"HTTP/1.1 204")
            {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("skiffd {} not healthy within 15s", proc.name);
}

/// The Python with the unmodified Dapr SDK (`tests/python/requirements.txt`):
/// `$SKIFF_PYTHON`, else the venv `tests/run` makes at `target/py-venv`.
/// Without it a test fails with that instruction: it never passes silently.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SKIFF_PYTHON") {
        return p.into();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let p = root.join("target/py-venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run tests/run (it creates the venv) or set SKIFF_PYTHON to a python with tests/python/requirements.txt",
        p.display()
    );
    p
}

/// The `node_modules` holding the unmodified Dapr JS SDK (`tests/js/
/// package.json`): `$SKIFF_JS_MODULES`, else `target/js-sdk/node_modules`,
/// which tests/run fills with npm.
pub fn js_modules() -> PathBuf {
    if let Some(p) = std::env::var_os("SKIFF_JS_MODULES") {
        return p.into();
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/js-sdk/node_modules");
    assert!(
        p.join("@dapr/dapr").exists(),
        "{} has no @dapr/dapr: run tests/run (it installs it with npm) or set SKIFF_JS_MODULES",
        p.display()
    );
    p
}

/// A script in tests/js.
pub fn js_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("js")
        .join(name)
}

/// A script in tests/python.
pub fn python_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

/// A Consul agent: `$CONSUL_BIN` (tests/run sets it to one on PATH), else
/// the Debian package in ../shared/vendor, unpacked once into target/.
pub fn consul_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CONSUL_BIN") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("target/consul");
    let bin = dir.join("usr/bin/consul");
    if !bin.exists() {
        let deb = std::fs::read_dir(root.join("../shared/vendor"))
            .expect("no Consul: set CONSUL_BIN, or keep ../shared/vendor beside the checkout")
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

/// A running `skiff-sentry`.
pub struct Sentry {
    pub proc: Proc,
    pub port: u16,
    /// Its credentials directory (ca.crt, issuer.crt, issuer.key).
    pub creds: PathBuf,
}

impl Sentry {
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The trust anchors sidecars need (ca.crt).
    pub fn anchors(&self) -> String {
        std::fs::read_to_string(self.creds.join("ca.crt")).expect("ca.crt")
    }
}

impl World {
    /// Starts `skiff-sentry` on a free port with credentials in `creds`
    /// (created on first start when absent), plus `args`.
    pub fn sentry_at(&self, port: u16, creds: &Path, args: &[&str]) -> Sentry {
        self.sentry_logging_to(port, creds, args, log_sink())
    }

    /// [`World::sentry`] with its stderr in `log` (for tests that read it).
    pub fn sentry_logged(&self, log: &Path, args: &[&str]) -> Sentry {
        let f = std::fs::File::create(log).expect("sentry log file");
        let creds = self.home.path().join("sentry-creds");
        self.sentry_logging_to(free_port(), &creds, args, Stdio::from(f))
    }

    fn sentry_logging_to(&self, port: u16, creds: &Path, args: &[&str], stderr: Stdio) -> Sentry {
        let child = Command::new(bin("skiff-sentry"))
            .args(["--port", &port.to_string()])
            .arg("--issuer-credentials")
            .arg(creds)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn skiff-sentry");
        let mut proc = Proc {
            child,
            name: "sentry".into(),
        };
        wait_port_of(&mut proc, port);
        Sentry {
            proc,
            port,
            creds: creds.to_owned(),
        }
    }

    pub fn sentry(&self, args: &[&str]) -> Sentry {
        self.sentry_at(free_port(), &self.home.path().join("sentry-creds"), args)
    }
}

impl SidecarOpts {
    /// mTLS with the embedded CA under SKIFF_HOME.
    pub fn mtls(mut self) -> Self {
        self.args.push("--enable-mtls".into());
        self
    }

    /// mTLS with certificates from `sentry`.
    pub fn sentry(mut self, sentry: &Sentry) -> Self {
        self.args.extend([
            "--enable-mtls".into(),
            "--sentry-address".into(),
            sentry.address(),
        ]);
        self.env.push(("DAPR_TRUST_ANCHORS", sentry.anchors()));
        self
    }
}

/// GETs a sidecar URL and parses JSON.
pub async fn get_json(url: &str) -> serde_json::Value {
    let r = send(&http_client(), request("GET", url, "")).await;
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{url}: {e}: {}", r.text()))
}

/// Waits until `skiffd`'s `/v1.0/healthz/outbound` answers 204, or panics
/// with its last answer.
pub async fn wait_outbound_ready(s: &Sidecar, within: Duration) {
    let end = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < end {
        let r = send(
            &http_client(),
            request("GET", &format!("{}/v1.0/healthz/outbound", s.http()), ""),
        )
        .await;
        if r.status == http::StatusCode::NO_CONTENT {
            return;
        }
        last = r.text();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} not ready within {within:?}: {last}", s.app_id);
}

/// An HTTP/1.1 client (keep-alive) for the tests.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An h2c (prior knowledge) client.
pub fn h2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A response read whole.
pub struct Resp {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The echo app's view of the request headers.
    pub fn echoed_headers(&self) -> serde_json::Value {
        serde_json::from_str(self.header("x-echo-headers")).unwrap_or_default()
    }
}

/// Sends a request and reads the whole response.
pub async fn send(client: &HttpClient, req: http::Request<Full<Bytes>>) -> Resp {
    let resp = client.request(req).await.expect("request");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Builds a request.
pub fn request(method: &str, url: &str, body: impl Into<Bytes>) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(body.into()))
        .expect("request")
}

/// A `kind: Component` document of type `ty` with plain metadata.
pub fn component_yaml(name: &str, ty: &str, meta: &[(&str, String)]) -> String {
    let mut y = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: {ty}\n  version: v1\n  metadata:\n"
    );
    for (k, v) in meta {
        y.push_str(&format!("  - name: {k}\n    value: \"{v}\"\n"));
    }
    if meta.is_empty() {
        y = y.replace("  metadata:\n", "  metadata: []\n");
    }
    y
}
