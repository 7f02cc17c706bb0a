//! The commands that talk to running apps: `list`, `stop`, `invoke`,
//! `publish`, `logs`, `components`, `version`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::client::{CALL_TIMEOUT, Http};
use crate::home::Home;
use crate::init::now_secs;
use crate::records::{self, Record, age_text, date_text};
use crate::run::stop_file;

/// How long `skiff stop` waits for an app to stop before SIGKILL.
pub const STOP_WAIT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// One row of `skiff list`: the record plus what the sidecar reports.
pub async fn rows(home: &Home) -> Vec<Value> {
    let http = Http::new();
    let mut out = Vec::new();
    for r in records::live(home) {
        let meta = http.metadata(r.http_port).await;
        let expiry = meta
            .as_ref()
            .and_then(|m| m["skiff"]["mtls"]["certificateExpiry"].as_u64());
        let now = now_secs();
        out.push(json!({
            "appId": r.app_id,
            "httpPort": r.http_port,
            "grpcPort": r.grpc_port,
            "appPort": r.app_port,
            "metricsEnabled": true,
            "metricsPort": r.metrics_port,
            "command": r.command,
            "age": age_text(now.saturating_sub(r.created)),
            "created": date_text(r.created),
            "daprdPid": r.daprd_pid,
            "cliPid": r.cli_pid,
            "appPid": r.app_pid,
            "runTemplatePath": r.run_template_path,
            "appLogPath": r.app_log_path,
            "daprdLogPath": r.daprd_log_path,
            "certExpiry": expiry.map(date_text),
            "ready": meta.is_some(),
        }));
    }
    out
}

pub async fn list(home: &Home, format: Format) -> Result<()> {
    let rows = rows(home).await;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Yaml => print!("{}", yaml_serde::to_string(&rows)?),
        Format::Table => {
            if rows.is_empty() {
                println!("No apps are running. Start one with `skiff run`.");
                return Ok(());
            }
            let head = [
                "APP ID",
                "HTTP PORT",
                "GRPC PORT",
                "APP PORT",
                "COMMAND",
                "AGE",
                "CREATED",
                "SIDECAR PID",
                "APP PID",
                "CERT EXPIRY",
            ];
            let keys = [
                "appId",
                "httpPort",
                "grpcPort",
                "appPort",
                "command",
                "age",
                "created",
                "daprdPid",
                "appPid",
                "certExpiry",
            ];
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    keys.iter()
                        .map(|k| match &r[*k] {
                            Value::String(s) => s.clone(),
                            Value::Null => "-".to_owned(),
                            v => v.to_string(),
                        })
                        .collect()
                })
                .collect();
            print_table(&head, &cells);
        }
    }
    Ok(())
}

fn print_table(head: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = width[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(head.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// `skiff stop -a ID`: asks the `skiff run` that runs it to stop it (in
/// order, sidecar then app); if that process is gone or does not manage
/// within [`STOP_WAIT`], the app's processes are killed.
pub async fn stop_app(home: &Home, app_id: &str) -> Result<()> {
    let Some(r) = records::find(home, app_id) else {
        bail!("no app {app_id} is running (`skiff list` shows what runs)");
    };
    std::fs::write(stop_file(home, app_id), b"").context("writing the stop request")?;
    if let Ok(p) = i32::try_from(r.cli_pid) {
        let _ = kill(Pid::from_raw(p), Signal::SIGUSR1);
    }
    wait_gone(&r).await;
    println!("✅ app {app_id} stopped");
    Ok(())
}

/// `skiff stop -f FILE`: stops every app of that run.
pub async fn stop_run_file(home: &Home, file: &Path) -> Result<()> {
    let want = crate::runfile::locate(file)?;
    let apps: Vec<Record> = records::live(home)
        .into_iter()
        .filter(|r| Path::new(&r.run_template_path) == want)
        .collect();
    if apps.is_empty() {
        bail!("no app of {} is running", want.display());
    }
    let mut cli: Vec<u32> = apps.iter().map(|r| r.cli_pid).collect();
    cli.dedup();
    for p in cli {
        if let Ok(p) = i32::try_from(p) {
            let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
        }
    }
    for r in &apps {
        wait_gone(r).await;
        println!("✅ app {} stopped", r.app_id);
    }
    Ok(())
}

/// Waits until the record's processes are gone; kills them after
/// [`STOP_WAIT`].
async fn wait_gone(r: &Record) {
    let end = Instant::now() + STOP_WAIT;
    let pids = [r.daprd_pid, r.app_pid];
    while Instant::now() < end {
        if pids.iter().all(|p| !records::alive(*p)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for p in pids {
        if let Ok(p) = i32::try_from(p)
            && p > 0
        {
            let _ = killpg(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
}

fn sidecar_of(home: &Home, app_id: &str) -> Result<Record> {
    records::find(home, app_id).with_context(|| {
        format!("no app {app_id} is running (`skiff list` shows what runs; `skiff run -a {app_id} ...` starts it)")
    })
}

fn data_of(data: Option<String>, file: Option<&Path>) -> Result<Bytes> {
    Ok(match (data, file) {
        (Some(_), Some(_)) => bail!("give --data or --data-file, not both"),
        (Some(d), None) => Bytes::from(d),
        (None, Some(f)) => {
            Bytes::from(std::fs::read(f).with_context(|| format!("reading {}", f.display()))?)
        }
        (None, None) => Bytes::new(),
    })
}

/// `skiff invoke`: through the target app's own sidecar, as `dapr invoke`.
pub async fn invoke(
    home: &Home,
    app_id: &str,
    method: &str,
    verb: &str,
    data: Option<String>,
    file: Option<&Path>,
) -> Result<()> {
    let r = sidecar_of(home, app_id)?;
    let body = data_of(data, file)?;
    let ct = if serde_json::from_slice::<Value>(&body).is_ok() {
        "application/json"
    } else {
        "text/plain"
    };
    let url = format!(
        "http://127.0.0.1:{}/v1.0/invoke/{app_id}/method/{}",
        r.http_port,
        method.trim_start_matches('/')
    );
    let a = Http::new()
        .call(
            &verb.to_uppercase(),
            &url,
            &[("content-type", ct)],
            body,
            CALL_TIMEOUT,
        )
        .await?;
    if !a.status.is_success() {
        bail!(
            "invoking {app_id}/{method} failed with {}: {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        );
    }
    println!("{}", String::from_utf8_lossy(&a.body));
    println!("✅ App invoked successfully");
    Ok(())
}

/// `skiff publish`: through the publishing app's sidecar.
pub async fn publish(
    home: &Home,
    app_id: &str,
    pubsub: &str,
    topic: &str,
    data: Option<String>,
    file: Option<&Path>,
    metadata: Option<&str>,
) -> Result<()> {
    let r = sidecar_of(home, app_id)?;
    let body = data_of(data, file)?;
    let ct = if serde_json::from_slice::<Value>(&body).is_ok() {
        "application/json"
    } else {
        "text/plain"
    };
    let mut query = String::new();
    if let Some(m) = metadata {
        let m: serde_json::Map<String, Value> =
            serde_json::from_str(m).context("--metadata takes a JSON object")?;
        for (k, v) in m {
            let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            query.push(if query.is_empty() { '?' } else { '&' });
            query.push_str(&format!("metadata.{}={}", encode(&k), encode(&v)));
        }
    }
    let url = format!(
        "http://127.0.0.1:{}/v1.0/publish/{pubsub}/{topic}{query}",
        r.http_port
    );
    let a = Http::new()
        .call("POST", &url, &[("content-type", ct)], body, CALL_TIMEOUT)
        .await?;
    if !a.status.is_success() {
        bail!(
            "publishing to {pubsub}/{topic} failed with {}: {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        );
    }
    println!("✅ Event published successfully");
    Ok(())
}

/// Percent-encodes a query component.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `skiff logs -a ID`: the last lines of the app's (or the sidecar's) log.
pub fn logs(home: &Home, app_id: &str, sidecar: bool, lines: usize) -> Result<()> {
    let r = sidecar_of(home, app_id)?;
    let path = if sidecar {
        &r.daprd_log_path
    } else {
        &r.app_log_path
    };
    if path.is_empty() {
        bail!(
            "app {app_id} logs its {} to the console only (its run file's {}: console)",
            if sidecar { "sidecar" } else { "output" },
            if sidecar {
                "daprdLogDestination"
            } else {
                "appLogDestination"
            }
        );
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let all: Vec<&str> = text.lines().collect();
    for l in &all[all.len().saturating_sub(lines)..] {
        println!("{l}");
    }
    Ok(())
}

/// `skiff components`: what a running app's sidecar loaded, or (without
/// `-a`) the component files in `$SKIFF_HOME/components`.
pub async fn components(home: &Home, app_id: Option<&str>, format: Format) -> Result<()> {
    let rows: Vec<Value> = match app_id {
        Some(id) => {
            let r = sidecar_of(home, id)?;
            let m = Http::new()
                .get_json(
                    &format!("http://127.0.0.1:{}/v1.0/metadata", r.http_port),
                    Duration::from_secs(5),
                )
                .await?;
            m["components"].as_array().cloned().unwrap_or_default()
        }
        None => component_files(&home.components())?,
    };
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Yaml => print!("{}", yaml_serde::to_string(&rows)?),
        Format::Table => {
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|c| {
                    ["name", "type", "version"]
                        .iter()
                        .map(|k| c[*k].as_str().unwrap_or("-").to_owned())
                        .collect()
                })
                .collect();
            print_table(&["NAME", "TYPE", "VERSION"], &cells);
        }
    }
    Ok(())
}

fn component_files(dir: &Path) -> Result<Vec<Value>> {
    let rd = std::fs::read_dir(dir)
        .with_context(|| format!("reading {} (has `skiff init` run?)", dir.display()))?;
    let mut files: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        if f.extension().is_none_or(|x| x != "yaml" && x != "yml") {
            continue;
        }
        let text = std::fs::read_to_string(&f)?;
        for doc in yaml_serde::Deserializer::from_str(&text) {
            let v: Value = match serde::Deserialize::deserialize(doc) {
                Ok(v) => v,
                Err(e) => bail!("{}: {e}", f.display()),
            };
            if v["kind"] == "Component" {
                out.push(json!({
                    "name": v["metadata"]["name"],
                    "type": v["spec"]["type"],
                    "version": v["spec"]["version"],
                    "file": f.display().to_string(),
                }));
            }
        }
    }
    Ok(out)
}

/// `skiff version`: this CLI's and skiffd's.
pub fn version(skiffd: Option<&Path>) {
    println!("CLI version: {}", env!("CARGO_PKG_VERSION"));
    let rt = skiffd
        .and_then(|p| std::process::Command::new(p).arg("--version").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "n/a (skiffd not found)".to_owned());
    println!(
        "Runtime version: {}",
        rt.trim_start_matches("skiffd ").trim()
    );
}
