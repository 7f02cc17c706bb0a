//! `skiff run`: starts each app's sidecar (all of them at once), waits
//! until every sidecar serves its API — which never waits for the app, so
//! an app that calls its sidecar while starting cannot deadlock it (daprd's
//! start-up deadlock, dapr#2007) — then starts the apps with `dapr run`'s
//! environment, and supervises them.
//!
//! Every child runs in a process group of its own, so a terminal's Ctrl-C
//! reaches only this process, which then stops each app in order: the
//! sidecar first (it stops taking calls and lets running pub/sub
//! deliveries finish, which need the app), then the app; each gets a
//! bounded time, then SIGKILL, and whatever is left in its group is
//! killed too, so nothing outlives the run. An app that exits stops its
//! sidecar; a sidecar that dies stops its app. `skiff stop -a ID` asks
//! this process (a stop file and SIGUSR1) to stop one app the same way.
//! The exit code is the app's (the first failing one's with several).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::client::Http;
use crate::home::Home;
use crate::init::now_secs;
use crate::output::{Console, Sink, Tail, Who, pump};
use crate::records::{self, Record};
use crate::spec::{AppSpec, LogDest, Ports};

/// How long a sidecar may take to serve its API.
pub const SIDECAR_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a sidecar may take to stop (its graceful shutdown is 5 s).
pub const SIDECAR_STOP_WAIT: Duration = Duration::from_secs(10);
/// How long an app may take to stop after SIGTERM.
pub const APP_STOP_WAIT: Duration = Duration::from_secs(5);

/// The stop request `skiff stop -a ID` leaves for the running CLI.
pub fn stop_file(home: &Home, app_id: &str) -> PathBuf {
    home.runs().join(format!("{app_id}.stop"))
}

/// Runs `specs` until they end or are stopped; the exit code.
pub async fn run(home: &Home, specs: Vec<AppSpec>, skiffd: &Path) -> Result<i32> {
    let console = Console::new();
    let many = specs.len() > 1;
    check_ids(home, &specs)?;
    let mut taken = Vec::new();
    let mut planned = Vec::new();
    for s in specs {
        let ports = s
            .resolve(&mut taken)
            .with_context(|| format!("app {}", s.app_id))?;
        planned.push((s, ports));
    }
    // Signals are caught from here on: a Ctrl-C while sidecars start still
    // stops them.
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    // The terminal went away (its window closed): stop as for Ctrl-C
    // rather than die and leave the sidecars running.
    let mut hup = signal(SignalKind::hangup())?;

    let mut sidecars = Vec::new();
    for (s, p) in &planned {
        console.info(&format!(
            "starting the sidecar of app {} (HTTP {}, gRPC {}, metrics {})",
            s.app_id, p.http, p.grpc, p.metrics
        ));
        sidecars.push(start_sidecar(home, s, p, skiffd, &console, many)?);
    }
    let http = Http::new();
    let mut waits = JoinSet::new();
    for (i, sc) in sidecars.iter_mut().enumerate() {
        let port = planned[i].1.http;
        let http = http.clone();
        let pid = sc.child.id();
        waits.spawn(async move { (i, wait_ready(&http, port, pid).await) });
    }
    let mut failed = None;
    loop {
        tokio::select! {
            r = waits.join_next() => match r {
                None => break,
                Some(Ok((i, Err(e)))) => { failed = Some((i, e)); break; }
                Some(_) => {}
            },
            _ = int.recv() => { failed = Some((usize::MAX, anyhow::anyhow!("interrupted"))); break; }
            _ = term.recv() => { failed = Some((usize::MAX, anyhow::anyhow!("terminated"))); break; }
            _ = hup.recv() => { failed = Some((usize::MAX, anyhow::anyhow!("hung up"))); break; }
        }
    }
    if let Some((i, e)) = failed {
        waits.abort_all();
        for sc in &mut sidecars {
            stop_child(&mut sc.child, SIDECAR_STOP_WAIT).await;
        }
        if let Some((s, _)) = planned.get(i) {
            // Let the output pumps take the last lines.
            tokio::time::sleep(Duration::from_millis(100)).await;
            bail!(
                "the sidecar of app {} did not start: {e:#}{}",
                s.app_id,
                last_lines(s.sidecar_log, &sidecars[i].tail)
            );
        }
        return Ok(130);
    }
    if many {
        console.ok("all sidecars are up");
    } else {
        console.ok("the sidecar is up");
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut runs = JoinSet::new();
    let mut started = Vec::new();
    let mut stoppers = Vec::new();
    for ((spec, ports), sc) in planned.into_iter().zip(sidecars) {
        let app = if spec.command.is_empty() {
            None
        } else {
            match start_app(&spec, &ports, &console, many) {
                Ok(a) => Some(a),
                Err(e) => {
                    let mut sc = sc;
                    stop_child(&mut sc.child, SIDECAR_STOP_WAIT).await;
                    let _ = stop_tx.send(true);
                    while runs.join_next().await.is_some() {}
                    return Err(e);
                }
            }
        };
        let record = Record {
            app_id: spec.app_id.clone(),
            http_port: ports.http,
            grpc_port: ports.grpc,
            app_port: spec.app_port.unwrap_or(0),
            metrics_port: ports.metrics,
            command: spec.command_text(),
            created: now_secs(),
            cli_pid: std::process::id(),
            daprd_pid: sc.child.id().unwrap_or(0),
            app_pid: app.as_ref().and_then(|a| a.child.id()).unwrap_or(0),
            run_template_path: spec
                .run_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            app_log_path: log_path(&spec, Who::App),
            daprd_log_path: log_path(&spec, Who::Sidecar),
        };
        record.save(home).context("writing the run record")?;
        if app.is_some() {
            started.push(Started {
                app_id: record.app_id.clone(),
                pid: record.app_pid,
                port: spec.app_port,
                host: spec
                    .app_channel_address
                    .clone()
                    .unwrap_or_else(|| "127.0.0.1".to_owned()),
            });
        }
        let (one_tx, one_rx) = watch::channel(false);
        stoppers.push((spec.app_id.clone(), one_tx));
        let job = Job {
            home: home.clone(),
            spec,
            sidecar: sc,
            app,
            record,
            console: console.clone(),
        };
        let all = stop_rx.clone();
        runs.spawn(async move { job.supervise(all, one_rx).await });
    }
    // Said once the apps are up: an app that exits at once is reported
    // by its supervisor instead.
    match apps_up(&started).await {
        AppsUp::Yes if many => {
            console.ok("You're up and running! The apps' and sidecars' output follows.");
        }
        AppsUp::Yes => {
            console.ok("You're up and running! Both the sidecar's and the app's output follow.");
        }
        AppsUp::Exited => {}
        AppsUp::NoPort(id, port) => console.info(&format!(
            "app {id} has not opened port {port} after {}s; its sidecar delivers to it once it does",
            APP_UP_TIMEOUT.as_secs()
        )),
    }
    let mut code = 0;
    loop {
        tokio::select! {
            r = runs.join_next() => match r {
                None => break,
                Some(Ok(c)) => if code == 0 { code = c },
                Some(Err(_)) => if code == 0 { code = 1 },
            },
            _ = int.recv() => { console.info("stopping (Ctrl-C)"); let _ = stop_tx.send(true); }
            _ = term.recv() => { console.info("stopping (SIGTERM)"); let _ = stop_tx.send(true); }
            _ = hup.recv() => { console.info("stopping (the terminal hung up)"); let _ = stop_tx.send(true); }
            _ = usr1.recv() => {
                for (id, tx) in &stoppers {
                    let f = stop_file(home, id);
                    if f.exists() {
                        let _ = std::fs::remove_file(&f);
                        console.info(&format!("stopping app {id} (skiff stop)"));
                        let _ = tx.send(true);
                    }
                }
            }
        }
    }
    Ok(code)
}

/// An app id already running, or given twice, is an error.
fn check_ids(home: &Home, specs: &[AppSpec]) -> Result<()> {
    for (i, s) in specs.iter().enumerate() {
        if specs[..i].iter().any(|o| o.app_id == s.app_id) {
            bail!(
                "app id {} is given twice; each app needs its own id",
                s.app_id
            );
        }
        if let Some(r) = records::find(home, &s.app_id) {
            bail!(
                "app id {} is already running (skiff pid {}, since {}); stop it with `skiff stop -a {}` or pick another --app-id",
                s.app_id,
                r.cli_pid,
                records::date_text(r.created),
                s.app_id
            );
        }
    }
    Ok(())
}

struct Proc {
    child: Child,
    tail: Tail,
    started: Instant,
}

fn sinks(spec: &AppSpec, who: Who, console: &Console, many: bool) -> Result<(Sink, Sink)> {
    let (dest, name) = match who {
        Who::App => (spec.app_log, "app"),
        Who::Sidecar => (spec.sidecar_log, "skiffd"),
    };
    let prefix = dest
        .console()
        .then(|| console.prefix(who, many.then_some(spec.app_id.as_str())));
    let file = spec.log_file(name);
    let out = Sink::new(
        prefix,
        (dest != LogDest::Console).then_some(file.as_path()),
        Tail::default(),
    )
    .with_context(|| format!("opening the log file {}", file.display()))?;
    Ok((out.clone(), out))
}

/// The log file a record names ("" when the output goes only to the
/// console).
fn log_path(spec: &AppSpec, who: Who) -> String {
    let (dest, name) = match who {
        Who::App => (spec.app_log, "app"),
        Who::Sidecar => (spec.sidecar_log, "skiffd"),
    };
    if dest == LogDest::Console {
        String::new()
    } else {
        spec.log_file(name).display().to_string()
    }
}

fn start_sidecar(
    home: &Home,
    spec: &AppSpec,
    ports: &Ports,
    skiffd: &Path,
    console: &Console,
    many: bool,
) -> Result<Proc> {
    let (out, err) = sinks(spec, Who::Sidecar, console, many)?;
    let tail = out.tail.clone();
    let mut cmd = Command::new(skiffd);
    cmd.args(spec.sidecar_args(ports))
        .env("SKIFF_HOME", home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(d) = &spec.dir {
        cmd.current_dir(d);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting the sidecar {}", skiffd.display()))?;
    if let Some(o) = child.stdout.take() {
        pump(o, out);
    }
    if let Some(e) = child.stderr.take() {
        pump(e, err);
    }
    Ok(Proc {
        child,
        tail,
        started: Instant::now(),
    })
}

fn start_app(spec: &AppSpec, ports: &Ports, console: &Console, many: bool) -> Result<Proc> {
    let (out, err) = sinks(spec, Who::App, console, many)?;
    let tail = out.tail.clone();
    let mut cmd = Command::new(&spec.command[0]);
    cmd.args(&spec.command[1..])
        .envs(spec.app_env(ports))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(d) = &spec.dir {
        cmd.current_dir(d);
    }
    console.info(&format!(
        "starting app {}: {}",
        spec.app_id,
        spec.command_text()
    ));
    let mut child = cmd.spawn().with_context(|| {
        format!(
            "cannot start app {}: `{}`",
            spec.app_id,
            spec.command.first().map_or("", String::as_str)
        )
    })?;
    if let Some(o) = child.stdout.take() {
        pump(o, out);
    }
    if let Some(e) = child.stderr.take() {
        pump(e, err);
    }
    Ok(Proc {
        child,
        tail,
        started: Instant::now(),
    })
}

/// A process's last lines for a failure message, unless its output went
/// to the console, where they were just shown (repeating them printed
/// the sidecar's one fatal line twice more).
fn last_lines(dest: LogDest, tail: &Tail) -> String {
    if dest.console() {
        " (its output is above)".to_owned()
    } else {
        format!("; its last lines:\n{}", tail.text())
    }
}

/// An app `skiff run` started, to tell when it is up.
struct Started {
    app_id: String,
    pid: u32,
    port: Option<u16>,
    /// Where it listens (`--app-channel-address`).
    host: String,
}

enum AppsUp {
    Yes,
    /// One exited (its supervisor says how).
    Exited,
    /// Alive, but its port did not answer in time.
    NoPort(String, u16),
}

/// How long an app has to open its port before `skiff run` says it has
/// not (it keeps running either way).
const APP_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// An app without a port is up once it has stayed alive this long.
const APP_GRACE: Duration = Duration::from_millis(500);

/// Waits until every app listens on its port (or, without one, has not
/// exited within a moment).
async fn apps_up(apps: &[Started]) -> AppsUp {
    let end = Instant::now() + APP_UP_TIMEOUT;
    for a in apps {
        loop {
            if !records::alive(a.pid) {
                return AppsUp::Exited;
            }
            match a.port {
                Some(p) => {
                    if tokio::net::TcpStream::connect((a.host.as_str(), p))
                        .await
                        .is_ok()
                    {
                        break;
                    }
                    if Instant::now() > end {
                        return AppsUp::NoPort(a.app_id.clone(), p);
                    }
                }
                None => {
                    tokio::time::sleep(APP_GRACE).await;
                    if !records::alive(a.pid) {
                        return AppsUp::Exited;
                    }
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    AppsUp::Yes
}

/// Waits until the sidecar on `port` answers `/v1.0/healthz/outbound`
/// (which does not depend on the app).
async fn wait_ready(http: &Http, port: u16, pid: Option<u32>) -> Result<()> {
    let url = format!("http://127.0.0.1:{port}/v1.0/healthz/outbound");
    let end = Instant::now() + SIDECAR_START_TIMEOUT;
    loop {
        if let Ok(a) = http.get(&url, Duration::from_secs(1)).await
            && a.status.is_success()
        {
            return Ok(());
        }
        if pid.is_some_and(|p| !records::alive(p)) {
            bail!("it exited");
        }
        if Instant::now() > end {
            bail!("it did not answer within {SIDECAR_START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM to the child's group, SIGKILL after `wait`, then SIGKILL to
/// whatever is left in the group.
async fn stop_child(child: &mut Child, wait: Duration) -> Option<ExitStatus> {
    let pid = child.id();
    let group = pid.and_then(|p| i32::try_from(p).ok()).map(Pid::from_raw);
    let status = match child.try_wait() {
        Ok(Some(st)) => Some(st),
        _ => {
            if let Some(g) = group {
                let _ = killpg(g, Signal::SIGTERM);
            }
            match tokio::time::timeout(wait, child.wait()).await {
                Ok(Ok(st)) => Some(st),
                _ => {
                    if let Some(g) = group {
                        let _ = killpg(g, Signal::SIGKILL);
                    }
                    child.wait().await.ok()
                }
            }
        }
    };
    if let Some(g) = group {
        let _ = killpg(g, Signal::SIGKILL);
    }
    status
}

fn code_of(st: Option<ExitStatus>) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match st {
        Some(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
        None => 1,
    }
}

/// One app and its sidecar, supervised.
struct Job {
    home: Home,
    spec: AppSpec,
    sidecar: Proc,
    app: Option<Proc>,
    record: Record,
    console: Console,
}

impl Job {
    async fn supervise(
        mut self,
        mut all: watch::Receiver<bool>,
        mut one: watch::Receiver<bool>,
    ) -> i32 {
        let id = self.spec.app_id.clone();
        let code = match self.app.as_mut() {
            Some(app) => {
                tokio::select! {
                    st = app.child.wait() => {
                        let code = code_of(st.ok());
                        // Let the output pumps take the last lines.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if code == 0 {
                            self.console.info(&format!("app {id} exited"));
                        } else {
                            self.console.fail(&format!(
                                "app {id} exited with status {code} after {:.1}s{}",
                                app.started.elapsed().as_secs_f64(),
                                last_lines(self.spec.app_log, &app.tail)
                            ));
                        }
                        stop_child(&mut app.child, APP_STOP_WAIT).await;
                        stop_child(&mut self.sidecar.child, SIDECAR_STOP_WAIT).await;
                        code
                    }
                    st = self.sidecar.child.wait() => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        self.console.fail(&format!(
                            "the sidecar of app {id} exited (status {}) after {:.1}s; stopping the app{}",
                            code_of(st.ok()),
                            self.sidecar.started.elapsed().as_secs_f64(),
                            last_lines(self.spec.sidecar_log, &self.sidecar.tail)
                        ));
                        stop_child(&mut app.child, APP_STOP_WAIT).await;
                        1
                    }
                    _ = stopped(&mut all, &mut one) => {
                        stop_child(&mut self.sidecar.child, SIDECAR_STOP_WAIT).await;
                        let code = code_of(stop_child(&mut app.child, APP_STOP_WAIT).await);
                        self.console.info(&format!("app {id} and its sidecar stopped"));
                        code
                    }
                }
            }
            None => {
                tokio::select! {
                    st = self.sidecar.child.wait() => {
                        let code = code_of(st.ok());
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        self.console.fail(&format!(
                            "the sidecar of app {id} exited (status {code}){}",
                            last_lines(self.spec.sidecar_log, &self.sidecar.tail)
                        ));
                        code.max(1)
                    }
                    _ = stopped(&mut all, &mut one) => {
                        stop_child(&mut self.sidecar.child, SIDECAR_STOP_WAIT).await;
                        self.console.info(&format!("the sidecar of app {id} stopped"));
                        0
                    }
                }
            }
        };
        self.record.remove(&self.home);
        let _ = std::fs::remove_file(stop_file(&self.home, &id));
        code
    }
}

async fn stopped(all: &mut watch::Receiver<bool>, one: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = all.wait_for(|s| *s) => {}
        _ = one.wait_for(|s| *s) => {}
    }
}

/// Where `skiffd` is: `--runtime-path`, then next to this binary, then
/// `PATH`.
pub fn find_skiffd(runtime_path: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = runtime_path {
        let p = if dir.is_dir() {
            dir.join("skiffd")
        } else {
            dir.to_owned()
        };
        if p.is_file() {
            return Ok(p);
        }
        bail!("no skiffd at {}", p.display());
    }
    if let Ok(me) = std::env::current_exe()
        && let Some(dir) = me.parent()
    {
        let p = dir.join("skiffd");
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join("skiffd");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!(
        "skiffd not found next to skiff or on PATH: build it with `cargo build -p skiff-dataplane`, or pass --runtime-path DIR"
    )
}
