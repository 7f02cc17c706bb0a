//! The README's snippets, run as a new user runs them, so the README
//! cannot drift from the product.
//!
//! Every ```sh block of `README.md` and `deploy/*/README.md` runs in
//! order, as written, in one network namespace of its own: the README's
//! ports (3500, 50001, 9090, ...) are free there whatever else runs on
//! this machine, so no port is rewritten. What the harness changes, and
//! only this: ports the system picks come from 60000-65000 (above the
//! README's fixed ones), `HOME` is a temporary directory (so `~/.skiff` is the
//! test's), `target/release/` reads `target/debug/` and `cargo build`
//! lines are left out (`tests/run` built the binaries already; a release
//! build would take most of CI's hour), the clone's `target/debug` is on
//! `PATH`, and `curl` fails on an HTTP error (a user reads the answer; a
//! test has to be told). Each block must exit 0; what it started is
//! stopped by its process group afterwards.
//!
//! A comment on the line before a block says what it needs:
//! `<!-- readme-test: skip: WHY -->` (a server the tests cannot start: the
//! reason is printed), `<!-- readme-test: scratch -->` (it writes files
//! into the current directory: run it in an empty one, not the clone),
//! `<!-- readme-test: app PORT -->` (an HTTP app on PORT, the echo app),
//! `<!-- readme-test: background until "TEXT" -->` (a command a user
//! leaves running in one terminal: started, awaited until its output
//! shows TEXT, and stopped after the file's last block).
//!
//! Every ```yaml block that is a whole Dapr document loads without an
//! unknown field.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use skiff_tests::bin;

/// What one block may take, start-up of its servers included.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a background block has to print what it is awaited for.
const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Block {
    file: PathBuf,
    line: usize,
    lang: String,
    text: String,
    marks: Vec<String>,
}

/// The fenced blocks of a Markdown file, with the `readme-test` marks of
/// the comment lines right above each.
fn blocks(file: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(file).expect("readme");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(lang) = lines[i].strip_prefix("```") else {
            i += 1;
            continue;
        };
        let mut marks = Vec::new();
        let mut j = i;
        while j > 0 {
            let prev = lines[j - 1].trim();
            match prev
                .strip_prefix("<!-- readme-test:")
                .and_then(|m| m.strip_suffix("-->"))
            {
                Some(m) => marks.push(m.trim().to_owned()),
                None => break,
            }
            j -= 1;
        }
        let end = (i + 1..lines.len())
            .find(|&k| lines[k].starts_with("```"))
            .expect("closed block");
        out.push(Block {
            file: file.to_owned(),
            line: i + 1,
            lang: lang.trim().to_owned(),
            text: lines[i + 1..end].join("\n"),
            marks,
        });
        i = end + 1;
    }
    out
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo")
        .to_owned()
}

fn readmes() -> Vec<PathBuf> {
    let root = repo();
    let mut files = vec![root.join("README.md")];
    let mut deploy: Vec<PathBuf> = std::fs::read_dir(root.join("deploy"))
        .expect("deploy")
        .flatten()
        .map(|e| e.path().join("README.md"))
        .filter(|p| p.is_file())
        .collect();
    deploy.sort();
    files.extend(deploy);
    files
}

/// The script a block runs: the harness's few changes (module doc).
fn script(b: &Block) -> String {
    let debug = bin("skiffd")
        .parent()
        .expect("target dir")
        .display()
        .to_string();
    let mut s = String::from("set -euo pipefail\n");
    for m in &b.marks {
        if let Some(port) = m.strip_prefix("app ") {
            let port: u16 = port.trim().parse().expect("app PORT");
            s += &format!(
                "{debug}/skiff-echo --http-port {port} >/dev/null 2>&1 &\n\
                 for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && break; sleep 0.1; done\n"
            );
        }
    }
    for line in b.text.lines() {
        if line.trim_start().starts_with("cargo build") {
            s += ": built by tests/run\n";
            continue;
        }
        s += &line.replace("target/release/", &format!("{debug}/"));
        s.push('\n');
    }
    s
}

/// One network namespace with its loopback up, removed on drop.
struct Netns(String);

impl Netns {
    fn new() -> Option<Self> {
        let name = format!("skreadme{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("ip")
                .args(["-n", &name, "link", "set", "lo", "up"])
                .status()
                .is_ok_and(|s| s.success())
            // Ports the system picks (free ports, clients' source ports)
            // above every port the README names: Dapr's 50001-50003 sit in
            // Linux's default range, and a sidecar's free internal port
            // once took the 50002 the next command asked for.
            && Command::new("ip")
                .args(["netns", "exec", &name, "sh", "-c"])
                .arg("echo 60000 65000 > /proc/sys/net/ipv4/ip_local_port_range")
                .status()
                .is_ok_and(|s| s.success());
        ok.then_some(Self(name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// What every block shares: the namespace, HOME, a `curl` that fails on
/// HTTP errors.
struct Session {
    ns: Netns,
    home: tempfile::TempDir,
    shims: PathBuf,
}

impl Session {
    fn new(ns: Netns) -> Self {
        let home = tempfile::tempdir().expect("home");
        let shims = home.path().join(".shims");
        std::fs::create_dir_all(&shims).expect("shims");
        let curl = shims.join("curl");
        std::fs::write(
            &curl,
            "#!/bin/sh\nexec /usr/bin/curl -sS --fail-with-body \"$@\"\n",
        )
        .expect("curl shim");
        std::process::Command::new("chmod")
            .args(["+x", &curl.display().to_string()])
            .status()
            .expect("chmod");
        Self { ns, home, shims }
    }

    /// `bash` for block `b` in the namespace, in its own process group.
    fn command(&self, b: &Block, cwd: &Path) -> Command {
        let debug = bin("skiffd").parent().expect("target dir").to_owned();
        let path = format!(
            "{}:{}:{}",
            self.shims.display(),
            debug.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        // cargo and rustup keep their homes under the real HOME.
        let real_home = std::env::var("HOME").unwrap_or_default();
        let cargo_home =
            std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{real_home}/.cargo"));
        let rustup_home =
            std::env::var("RUSTUP_HOME").unwrap_or_else(|_| format!("{real_home}/.rustup"));
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns.0, "bash", "-c", &script(b)])
            .current_dir(cwd)
            .env("HOME", self.home.path())
            .env("PATH", path)
            .env("CARGO_HOME", cargo_home)
            .env("RUSTUP_HOME", rustup_home)
            .env("NO_COLOR", "1")
            .env_remove("SKIFF_HOME")
            .env_remove("DAPR_TRUST_ANCHORS")
            .env_remove("DAPR_API_TOKEN")
            .stdin(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        c
    }
}

/// Stops a process group: TERM, then KILL what is left.
fn stop_group(child: &mut Child) {
    let pgid = child.id().to_string();
    let _ = Command::new("kill")
        .args(["-TERM", "--", &format!("-{pgid}")])
        .status();
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status();
    let _ = child.wait();
}

fn mark<'a>(b: &'a Block, key: &str) -> Option<&'a str> {
    b.marks.iter().find_map(|m| {
        m.strip_prefix(key)
            .filter(|rest| rest.is_empty() || rest.starts_with([' ', ':']))
            .map(|rest| rest.trim_start_matches(':').trim())
    })
}

fn place(b: &Block) -> String {
    format!("{}:{}", b.file.display(), b.line)
}

/// Starts block `b`, its output (both streams) in a log file of its own.
fn spawn_logged(s: &Session, b: &Block, cwd: &Path) -> (Child, PathBuf) {
    let log = s.home.path().join(format!(".block-{}.log", b.line));
    let out = std::fs::File::create(&log).expect("log");
    let child = s
        .command(b, cwd)
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("bash");
    (child, log)
}

/// Runs a foreground block to its end; its output when it failed.
fn run_block(s: &Session, b: &Block, cwd: &Path) -> Result<(), String> {
    let (mut child, log) = spawn_logged(s, b, cwd);
    let end = Instant::now() + BLOCK_TIMEOUT;
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if Instant::now() > end {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    stop_group(&mut child);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    match status {
        Some(st) if st.success() => Ok(()),
        Some(st) => Err(format!("{} exited with {st}:\n{text}", place(b))),
        None => Err(format!("{} ran past {BLOCK_TIMEOUT:?}:\n{text}", place(b))),
    }
}

/// Starts a block a user leaves running; returns once its output shows
/// `until`.
fn start_block(s: &Session, b: &Block, cwd: &Path, until: &str) -> Result<Child, String> {
    let (mut child, log) = spawn_logged(s, b, cwd);
    let end = Instant::now() + BACKGROUND_TIMEOUT;
    loop {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&log) {
            let _ = f.read_to_string(&mut text);
        }
        if text.contains(until) {
            return Ok(child);
        }
        let done = matches!(child.try_wait(), Ok(Some(_)));
        if done || Instant::now() > end {
            stop_group(&mut child);
            return Err(format!("{}: {until:?} never showed:\n{text}", place(b)));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_readme_shell_block_runs_as_written() {
    let Some(ns) = Netns::new() else {
        println!(
            "SKIPPED: the README blocks run in a network namespace of their own (needs root and ip)"
        );
        return;
    };
    let session = Session::new(ns);
    let (mut ran, mut skipped) = (0, Vec::new());
    for file in readmes() {
        let mut background = Vec::new();
        let scratch = tempfile::tempdir().expect("scratch");
        let mut failure = None;
        for b in blocks(&file)
            .into_iter()
            .filter(|b| b.lang == "sh" || b.lang == "bash")
        {
            if let Some(why) = mark(&b, "skip") {
                assert!(!why.is_empty(), "{}: a skip says why", place(&b));
                skipped.push(format!("{}: {why}", place(&b)));
                continue;
            }
            let cwd = if mark(&b, "scratch").is_some() {
                scratch.path().to_owned()
            } else {
                repo()
            };
            let r = match mark(&b, "background until") {
                Some(until) => start_block(&session, &b, &cwd, until.trim_matches('"'))
                    .map(|c| background.push(c)),
                None => run_block(&session, &b, &cwd),
            };
            if let Err(e) = r {
                failure = Some(e);
                break;
            }
            ran += 1;
        }
        for c in &mut background {
            stop_group(c);
        }
        if let Some(e) = failure {
            panic!("{e}");
        }
    }
    println!("{ran} README blocks ran; skipped, with their reasons:");
    for s in &skipped {
        println!("  {s}");
    }
    assert!(ran >= 5, "only {ran} README blocks ran");
}

#[test]
fn every_readme_yaml_document_loads_without_an_unknown_field() {
    let mut checked = 0;
    for file in readmes() {
        for b in blocks(&file).into_iter().filter(|b| b.lang == "yaml") {
            if !b.text.contains("apiVersion:") {
                continue; // a fragment (`spec:` ...) or a run file
            }
            let warnings = skiff_dataplane::config::lint_documents(&b.text, &b.file)
                .unwrap_or_else(|e| panic!("{}: {e}", place(&b)));
            assert!(warnings.is_empty(), "{}: {warnings:?}", place(&b));
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} YAML blocks checked");
}
