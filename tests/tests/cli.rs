//! The `skiff` CLI end to end, each test with its own `HOME` and
//! `SKIFF_HOME`: `init` (idempotent, `--force`, `--redis`, `uninstall`),
//! `skiff run` of one app (its environment, the sidecar serving before the
//! app starts, the exit code, prefixed output under a pseudo-terminal,
//! Ctrl-C), run files (the sample apps — an HTTP one and a gRPC one that
//! call each other and use state and pub/sub — plus a third app; a file
//! written as Dapr's docs show), `list` with the right PIDs, `stop` leaving
//! no process behind, `invoke` / `publish` / `logs` / `components`, and
//! every newcomer error with its message.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_tests::{World, bin, free_port, signal};

const WAIT: Duration = Duration::from_secs(60);

/// `HOME` and `SKIFF_HOME` of one test, and `PATH` with the workspace's
/// binaries first (the run files name `skiff-sample-*` and `skiff-echo`).
struct Env {
    w: World,
}

impl Env {
    fn new() -> Self {
        Self { w: World::new() }
    }

    fn root(&self) -> &Path {
        self.w.home.path()
    }

    fn skiff_home(&self) -> PathBuf {
        self.root().join("skiff-home")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("skiff"));
        let dir = bin("skiff").parent().expect("dir").to_owned();
        let path = std::env::var("PATH").unwrap_or_default();
        c.args(args)
            .env("HOME", self.root())
            .env("SKIFF_HOME", self.skiff_home())
            .env("PATH", format!("{}:{path}", dir.display()))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("skiff")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "skiff {args:?}: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Fails with exit code 1 and one line naming the problem.
    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "skiff {args:?}: {err}");
        assert!(err.starts_with("skiff: "), "{err}");
        err
    }

    fn init(&self) {
        self.ok(&["init"]);
    }

    /// Starts a long `skiff run`, its output going to a file.
    fn start(&self, args: &[&str]) -> Running {
        let log = self.root().join(format!("run-{}.log", free_port()));
        let f = std::fs::File::create(&log).expect("log");
        let child = self
            .cmd(args)
            .stdout(f.try_clone().expect("clone"))
            .stderr(f)
            .spawn()
            .expect("skiff run");
        Running { child, log }
    }

    fn list(&self) -> Vec<Value> {
        serde_json::from_str(&self.ok(&["list", "-o", "json"])).expect("list json")
    }

    /// Waits until `list` shows exactly `ids`.
    fn wait_listed(&self, ids: &[&str]) -> Vec<Value> {
        let end = Instant::now() + WAIT;
        loop {
            let l = self.list();
            let mut got: Vec<&str> = l.iter().filter_map(|r| r["appId"].as_str()).collect();
            got.sort_unstable();
            let mut want = ids.to_vec();
            want.sort_unstable();
            if got == want && l.iter().all(|r| r["ready"] == true) {
                return l;
            }
            assert!(Instant::now() < end, "listed {got:?}, wanted {want:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A `skiff run` in the background; stopped with SIGTERM (then SIGKILL)
/// when dropped.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_output(&self, want: &str) -> String {
        let end = Instant::now() + WAIT;
        loop {
            let o = self.output();
            if o.contains(want) {
                return o;
            }
            assert!(Instant::now() < end, "no {want:?} in:\n{o}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for it to exit; its exit code.
    fn wait_exit(&mut self) -> i32 {
        let end = Instant::now() + WAIT;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < end,
                "skiff run did not exit:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            signal(self.child.id(), "TERM");
            let end = Instant::now() + Duration::from_secs(20);
            while Instant::now() < end && self.child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with(['Z', 'X']))
        })
        == Some(false)
}

fn comm(pid: u64) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn wait_dead(pids: &[u64]) {
    let end = Instant::now() + WAIT;
    while pids.iter().any(|p| alive(*p)) {
        assert!(Instant::now() < end, "still running: {pids:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pids(row: &Value) -> [u64; 3] {
    ["cliPid", "daprdPid", "appPid"].map(|k| row[k].as_u64().unwrap_or(0))
}

#[test]
fn init_is_idempotent_force_rotates_the_ca_and_uninstall_cleans_up() {
    let e = Env::new();
    let first = e.ok(&["init"]);
    assert!(first.contains("created the local CA"), "{first}");
    let h = e.skiff_home();
    for f in [
        "sentry/ca.crt",
        "sentry/issuer.key",
        "config.yaml",
        "components/statestore.yaml",
        "components/pubsub.yaml",
    ] {
        assert!(h.join(f).is_file(), "{f} missing");
    }
    let ca = std::fs::read(h.join("sentry/ca.crt")).expect("ca");
    let state = std::fs::read_to_string(h.join("components/statestore.yaml")).expect("yaml");
    assert!(
        state.contains("state.sqlite") && state.contains("name: statestore"),
        "{state}"
    );
    let pubsub = std::fs::read_to_string(h.join("components/pubsub.yaml")).expect("yaml");
    assert!(pubsub.contains("pubsub.skiff.sqlite") && pubsub.contains("name: pubsub"));
    let lock = std::fs::read_to_string(h.join("components/lockstore.yaml")).expect("yaml");
    assert!(
        lock.contains("lock.in-memory") && lock.contains("name: lockstore"),
        "{lock}"
    );
    let sec = std::fs::read_to_string(h.join("components/secretstore.yaml")).expect("yaml");
    assert!(
        sec.contains("secretstores.local.file") && sec.contains("secrets.json"),
        "{sec}"
    );
    assert_eq!(
        std::fs::read_to_string(h.join("secrets.json"))
            .expect("secrets")
            .trim(),
        "{}"
    );

    let second = e.ok(&["init"]);
    assert!(second.contains("kept the local CA"), "{second}");
    assert_eq!(
        std::fs::read(h.join("sentry/ca.crt")).expect("ca"),
        ca,
        "init changed the CA"
    );

    let forced = e.ok(&["init", "--force"]);
    assert!(forced.contains("rotated the local CA"), "{forced}");
    assert_ne!(
        std::fs::read(h.join("sentry/ca.crt")).expect("ca"),
        ca,
        "--force kept the CA"
    );

    e.ok(&["init", "--redis", "127.0.0.1:6390"]);
    let state = std::fs::read_to_string(h.join("components/statestore.yaml")).expect("yaml");
    assert!(
        state.contains("state.redis") && state.contains("127.0.0.1:6390"),
        "{state}"
    );

    let comps = e.ok(&["components", "-o", "json"]);
    let comps: Vec<Value> = serde_json::from_str(&comps).expect("json");
    assert_eq!(comps.len(), 4, "{comps:?}");
    let lock = std::fs::read_to_string(h.join("components/lockstore.yaml")).expect("yaml");
    assert!(lock.contains("lock.redis"), "{lock}");

    let v = e.ok(&["version"]);
    assert!(
        v.contains(&format!("CLI version: {}", env!("CARGO_PKG_VERSION")))
            && v.contains(&format!("Runtime version: {}", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );

    e.ok(&["uninstall"]);
    assert!(!h.join("components").exists() && !h.join("config.yaml").exists());
    assert!(
        h.join("sentry/ca.crt").is_file(),
        "uninstall without --all keeps the CA"
    );
    e.ok(&["uninstall", "--all"]);
    assert!(!h.exists());
}

#[test]
fn run_gives_the_app_its_environment_and_a_ready_sidecar_and_returns_its_exit_code() {
    let e = Env::new();
    e.init();
    // The app asks its sidecar for health before anything else: it must
    // already answer, though the app has no port open.
    let script = r#"echo "id=$APP_ID port=$APP_PORT proto=$APP_PROTOCOL grpc=${DAPR_GRPC_PORT:+set} metrics=${DAPR_METRICS_PORT:+set}"
exec 3<>/dev/tcp/127.0.0.1/$DAPR_HTTP_PORT
printf 'GET /v1.0/healthz HTTP/1.0\r\n\r\n' >&3
head -1 <&3
exit 3"#;
    let app_port = free_port().to_string();
    let o = e.run(&[
        "run", "-a", "envapp", "-p", &app_port, "--", "bash", "-c", script,
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains(&format!(
            "== APP == id=envapp port={app_port} proto=http grpc=set metrics=set"
        )),
        "{out}"
    );
    assert!(out.contains("== APP == HTTP/1.1 204"), "{out}");
    assert!(out.contains("== SKIFF == "), "{out}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("app envapp exited with status 3"), "{err}");
    // The run left nothing behind.
    assert!(e.list().is_empty());
    let logs = e.skiff_home().join("logs/envapp_app.log");
    assert!(
        std::fs::read_to_string(logs)
            .expect("app log")
            .contains("id=envapp")
    );
}

/// Writes a run file with the two sample apps (and, with `echo`, a third
/// one) in app directories under `dir`.
fn sample_run_file(dir: &Path, echo: Option<u16>) -> PathBuf {
    for d in ["checkout", "inventory", "echo"] {
        std::fs::create_dir_all(dir.join(d)).expect("mkdir");
    }
    let (c, i) = (free_port(), free_port());
    let mut y = format!(
        "version: 1
common:
  env:
    ORDERS: \"4\"
    STAY: \"1\"
  appLogDestination: fileAndConsole
  daprdLogDestination: file
apps:
  - appID: checkout
    appDirPath: ./checkout/
    appPort: {c}
    command: [\"skiff-sample-checkout\"]
  - appID: inventory
    appDirPath: ./inventory/
    appProtocol: grpc
    appPort: {i}
    command: [\"skiff-sample-inventory\"]
"
    );
    if let Some(p) = echo {
        y.push_str(&format!(
            "  - appID: echo
    appDirPath: ./echo/
    appPort: {p}
    command: [\"skiff-echo\", \"--http-port\", \"{p}\"]
"
        ));
    }
    let f = dir.join("dapr.yaml");
    std::fs::write(&f, y).expect("write");
    f
}

#[test]
fn a_run_file_of_three_apps_lists_stops_and_ctrl_c_leaves_nothing_behind() {
    let e = Env::new();
    e.init();
    let dir = e.root().join("proj");
    let echo_port = free_port();
    let file = sample_run_file(&dir, Some(echo_port));
    let mut run = e.start(&["run", "-f", dir.to_str().expect("utf8")]);
    // The HTTP app calls the gRPC one, which calls back; state and pub/sub
    // both ways, through the embedded defaults.
    let out = run.wait_output("orders placed, reserved, stored and shipped");
    assert!(
        out.contains("== APP - checkout == checkout: order 4"),
        "{out}"
    );
    assert!(
        out.contains("== APP - inventory == inventory: order 4 shipped"),
        "{out}"
    );
    let rows = e.wait_listed(&["checkout", "echo", "inventory"]);
    let mut all = Vec::new();
    for r in &rows {
        let [cli, sidecar, app] = pids(r);
        assert_eq!(cli, u64::from(run.child.id()), "{r}");
        assert_eq!(comm(sidecar), "skiffd", "{r}");
        let want = match r["appId"].as_str() {
            Some("checkout") => "skiff-sample-ch",
            Some("inventory") => "skiff-sample-in",
            _ => "skiff-echo",
        };
        assert_eq!(comm(app), want, "{r}");
        assert_eq!(
            r["runTemplatePath"],
            file.canonicalize().expect("canon").display().to_string()
        );
        assert!(r["certExpiry"].is_string(), "{r}");
        all.extend([sidecar, app]);
    }
    // invoke / publish / logs / components against the running apps.
    let reply = e.ok(&["invoke", "-a", "echo", "-m", "hello", "-v", "GET"]);
    assert!(reply.contains("App invoked successfully"), "{reply}");
    e.ok(&[
        "publish",
        "-i",
        "checkout",
        "-p",
        "pubsub",
        "-t",
        "shipments",
        "-d",
        r#"{"order":99,"status":"by hand"}"#,
    ]);
    run.wait_output("checkout: order 99 came back \"by hand\"");
    let logs = e.ok(&["logs", "-a", "inventory"]);
    assert!(logs.contains("inventory: order 1 shipped"), "{logs}");
    let side = e.ok(&["logs", "-a", "inventory", "--sidecar"]);
    assert!(side.contains("skiffd ready"), "{side}");
    let comps = e.ok(&["components", "-a", "checkout"]);
    assert!(
        comps.contains("statestore") && comps.contains("pubsub.skiff.sqlite"),
        "{comps}"
    );

    // stop -a ends one app and its sidecar, by PID, and nothing else.
    let echo = rows.iter().find(|r| r["appId"] == "echo").expect("echo");
    let [_, es, ea] = pids(echo);
    e.ok(&["stop", "-a", "echo"]);
    wait_dead(&[es, ea]);
    e.wait_listed(&["checkout", "inventory"]);

    // Ctrl-C on `skiff run` stops the rest; no process outlives it.
    signal(run.child.id(), "INT");
    let code = run.wait_exit();
    wait_dead(&all);
    assert!(e.list().is_empty());
    let out = run.output();
    assert!(
        out.contains("app checkout and its sidecar stopped"),
        "{out}"
    );
    assert!(
        out.contains("app inventory and its sidecar stopped"),
        "{out}"
    );
    // The exit code is the first app's to end: echo's, stopped by
    // SIGTERM (0 if it handles it, else 128 + 15).
    assert!(code == 0 || code == 143, "{code}: {out}");
    assert!(
        dir.join("checkout/.skiff/logs/checkout_skiffd.log")
            .is_file()
    );
}

#[test]
fn the_samples_run_file_as_dapr_docs_write_it_runs_unchanged() {
    let e = Env::new();
    e.init();
    // The repo's own run file, copied as it is next to its app folders.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cli/samples");
    let dir = e.root().join("samples");
    for d in ["checkout", "inventory"] {
        std::fs::create_dir_all(dir.join(d)).expect("mkdir");
    }
    let yaml = std::fs::read_to_string(repo.join("dapr.yaml")).expect("samples/dapr.yaml");
    std::fs::write(dir.join("dapr.yaml"), &yaml).expect("write");
    let mut run = e.start(&["run", "-f", dir.join("dapr.yaml").to_str().expect("utf8")]);
    let out = run.wait_output("app checkout exited");
    assert!(
        out.contains("5 orders placed, reserved, stored and shipped"),
        "{out}"
    );
    e.ok(&["stop", "-f", dir.to_str().expect("utf8")]);
    assert_eq!(run.wait_exit(), 0, "{}", run.output());
}

#[test]
fn stop_ends_a_single_run_and_its_processes() {
    let e = Env::new();
    e.init();
    let mut run = e.start(&["run", "-a", "sleeper", "--", "sleep", "300"]);
    let rows = e.wait_listed(&["sleeper"]);
    let [cli, sidecar, app] = pids(&rows[0]);
    assert_eq!(comm(app), "sleep");
    let err = e.fails(&["run", "-a", "sleeper", "--", "true"]);
    assert!(
        err.contains("app id sleeper is already running") && err.contains("skiff stop -a sleeper"),
        "{err}"
    );
    e.ok(&["stop", "-a", "sleeper"]);
    run.wait_exit();
    wait_dead(&[cli, sidecar, app]);
    let err = e.fails(&["stop", "-a", "sleeper"]);
    assert!(err.contains("no app sleeper is running"), "{err}");
}

#[test]
fn newcomer_errors_say_what_to_do() {
    let e = Env::new();
    // Not initialised.
    let err = e.fails(&["run", "-a", "x", "--", "true"]);
    assert!(err.contains("`skiff init` has not been run"), "{err}");
    e.init();
    // A port in use, named with its holder.
    let l = std::net::TcpListener::bind(("0.0.0.0", 0)).expect("bind");
    let port = l.local_addr().expect("addr").port().to_string();
    let err = e.fails(&["run", "-a", "x", "-H", &port, "--", "true"]);
    assert!(
        err.contains(&format!(
            "port {port} (--dapr-http-port) is in use by pid {}",
            std::process::id()
        )),
        "{err}"
    );
    // An app that exits at start: its exit code and its last lines.
    let o = e.run(&[
        "run",
        "-a",
        "crash",
        "--",
        "sh",
        "-c",
        "echo it-broke-here >&2; exit 7",
    ]);
    assert_eq!(o.status.code(), Some(7));
    let err = String::from_utf8_lossy(&o.stderr);
    let out = format!("{}{err}", String::from_utf8_lossy(&o.stdout));
    // Its last line is shown once, as it printed it (it was repeated in
    // the failure message), and it was never up and running.
    assert!(err.contains("app crash exited with status 7"), "{out}");
    assert_eq!(out.matches("== it-broke-here").count(), 1, "{out}");
    assert!(!out.contains("up and running"), "{out}");
    // A command that does not exist.
    let err = e.fails(&["run", "-a", "nocmd", "--", "no-such-command-here"]);
    assert!(
        err.contains("cannot start app nocmd: `no-such-command-here`"),
        "{err}"
    );
    // Run files: an unknown key, a missing appDirPath, no version.
    let dir = e.root().join("bad");
    std::fs::create_dir_all(dir.join("a")).expect("mkdir");
    let f = dir.join("dapr.yaml");
    std::fs::write(
        &f,
        "version: 1\napps:\n  - appID: a\n    appDirPath: ./a\n    appPrt: 3000\n",
    )
    .expect("w");
    let err = e.fails(&["run", "-f", f.to_str().expect("utf8")]);
    assert!(err.contains("unknown field `appPrt`"), "{err}");
    std::fs::write(
        &f,
        "version: 1\napps:\n  - appID: a\n    command: [\"true\"]\n",
    )
    .expect("w");
    let err = e.fails(&["run", "-f", f.to_str().expect("utf8")]);
    assert!(err.contains("apps[0] (a) has no `appDirPath`"), "{err}");
    std::fs::write(&f, "apps:\n  - appDirPath: ./a\n").expect("w");
    let err = e.fails(&["run", "-f", f.to_str().expect("utf8")]);
    assert!(err.contains("`version` is missing"), "{err}");
    // A sidecar that cannot start (a broken component): its last lines.
    let comps = e.root().join("broken");
    std::fs::create_dir_all(&comps).expect("mkdir");
    std::fs::write(comps.join("x.yaml"), "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: x\nspec:\n  type: state.nosuch\n  version: v1\n").expect("w");
    let o = e.run(&[
        "run",
        "-a",
        "y",
        "-d",
        comps.to_str().expect("utf8"),
        "--",
        "true",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        err.contains("the sidecar of app y did not start") && err.contains("state.nosuch"),
        "{err}"
    );
    // The sidecar's one fatal line, shown once (it was four times).
    assert_eq!(err.matches("unknown component type").count(), 1, "{err}");
    drop(l);
}

/// `script` and what runs in its terminal: killing `script` closes the
/// terminal, and `skiff run` stops its apps on the hang-up.
struct Pty(Child);

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_interactive_run_shows_prefixed_output_and_stops_on_ctrl_c() {
    let e = Env::new();
    e.init();
    // `script` gives skiff a pseudo-terminal: coloured prefixes, and a
    // Ctrl-C typed there reaches skiff as the terminal's SIGINT.
    let skiff = bin("skiff");
    let line = format!(
        "{} run -a tty -- sh -c 'echo hello-$((6*7)); sleep 300'",
        skiff.display()
    );
    let mut c = Command::new("script");
    c.args(["-qfec", &line, "/dev/null"])
        .env("HOME", e.root())
        .env("SKIFF_HOME", e.skiff_home())
        .env_remove("NO_COLOR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = Pty(c.spawn().expect("script"));
    let mut stdin = child.0.stdin.take().expect("stdin");
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut r = stdout;
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                return;
            }
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    });
    let mut seen = String::new();
    let end = Instant::now() + WAIT;
    while !seen.contains("hello-42") {
        assert!(Instant::now() < end, "no app output under the pty:\n{seen}");
        if let Ok(s) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push_str(&s);
        }
    }
    assert!(
        seen.contains("\x1b[32m== APP ==\x1b[0m hello-42"),
        "{seen:?}"
    );
    let rows = e.wait_listed(&["tty"]);
    let [_, sidecar, app] = pids(&rows[0]);
    stdin.write_all(b"\x03").expect("ctrl-c");
    stdin.flush().expect("flush");
    let end = Instant::now() + WAIT;
    while child.0.try_wait().expect("wait").is_none() {
        assert!(
            Instant::now() < end,
            "skiff did not stop on Ctrl-C:\n{seen}"
        );
        if let Ok(s) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.push_str(&s);
        }
    }
    while let Ok(s) = rx.recv_timeout(Duration::from_millis(200)) {
        seen.push_str(&s);
    }
    assert!(seen.contains("stopping (Ctrl-C)"), "{seen}");
    wait_dead(&[sidecar, app]);
}

/// A blocking `GET` of a loopback URL path; the body.
fn get(port: u16, path: &str) -> String {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// The page as headless Chromium renders it (scripts run, fetches done).
fn chromium(args: &[&str], url: &str) -> String {
    let o = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=3000",
        ])
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("chromium (apt-get install -y chromium)");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn dashboard_in_chromium_lists_apps_calls_backlogs_and_updates_when_one_stops() {
    let e = Env::new();
    e.init();
    let dir = e.root().join("proj");
    sample_run_file(&dir, Some(free_port()));
    let run = e.start(&["run", "-f", dir.to_str().expect("utf8")]);
    run.wait_output("orders placed, reserved, stored and shipped");
    e.wait_listed(&["checkout", "echo", "inventory"]);
    let port = free_port();
    let _dash = e.start(&["dashboard", "-p", &port.to_string()]);
    let url = format!("http://127.0.0.1:{port}/");
    // The sampler has read every sidecar once it lists three apps.
    let end = Instant::now() + WAIT;
    loop {
        let v: Value = serde_json::from_str(&get(port, "/api/overview")).unwrap_or(Value::Null);
        if v["apps"].as_array().is_some_and(|a| a.len() == 3)
            && !v["calls"].as_array().is_none_or(Vec::is_empty)
        {
            break;
        }
        assert!(Instant::now() < end, "dashboard never saw the apps: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let dom = chromium(&["--dump-dom"], &url);
    for want in [
        r#"data-app="checkout""#,
        r#"data-app="inventory""#,
        r#"data-app="echo""#,
        r#"data-pair="checkout:inventory""#,
        r#"data-pair="inventory:checkout""#,
        r#"data-topic="pubsub/orders""#,
        r#"data-topic="pubsub/shipments""#,
        "pubsub.skiff.sqlite",
    ] {
        assert!(dom.contains(want), "no {want} in the page:\n{dom}");
    }
    // A screenshot for the test artefacts.
    let shots = bin("skiff").parent().expect("dir").join("test-artifacts");
    std::fs::create_dir_all(&shots).expect("mkdir");
    let png = shots.join("dashboard.png");
    chromium(
        &[
            "--window-size=1280,900",
            &format!("--screenshot={}", png.display()),
        ],
        &url,
    );
    assert!(
        std::fs::metadata(&png).is_ok_and(|m| m.len() > 10_000),
        "no screenshot at {}",
        png.display()
    );

    e.ok(&["stop", "-a", "echo"]);
    let end = Instant::now() + WAIT;
    loop {
        let dom = chromium(&["--dump-dom"], &url);
        if !dom.contains(r#"data-app="echo""#) && dom.contains(r#"data-app="checkout""#) {
            assert!(dom.contains(r#"id="app-count">2<"#), "{dom}");
            break;
        }
        assert!(
            Instant::now() < end,
            "echo still shown after it stopped:\n{dom}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn closing_the_terminal_stops_the_app_and_its_sidecar() {
    let e = Env::new();
    e.init();
    let line = format!("{} run -a hup -- sleep 300", bin("skiff").display());
    let mut c = Command::new("script");
    c.args(["-qfec", &line, "/dev/null"])
        .env("HOME", e.root())
        .env("SKIFF_HOME", e.skiff_home())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let pty = Pty(c.spawn().expect("script"));
    let rows = e.wait_listed(&["hup"]);
    let [cli, sidecar, app] = pids(&rows[0]);
    // The terminal's side goes away: skiff gets SIGHUP.
    drop(pty);
    wait_dead(&[cli, sidecar, app]);
}
