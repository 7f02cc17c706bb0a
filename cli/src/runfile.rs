//! `skiff run -f FILE|DIR`: Dapr's multi-app run file (`version: 1`,
//! `common`, `apps[]`), read the way the Dapr CLI reads it — the same keys,
//! relative paths resolved against the file's directory (`common`) or the
//! app's `appDirPath` (each app), `appID` defaulting to the directory's
//! name, the app's settings over `common`'s, and the same precedence of
//! resource paths and config files (the app's own, then its
//! `.dapr/resources` or `.skiff/resources`, then `common`'s, then
//! `$SKIFF_HOME`'s). Unlike the Dapr CLI a key it does not know is an
//! error naming the key, not silently ignored. Keys for Kubernetes
//! (`containerImage`, `createService`, ...) and for daprd features Skiff has
//! no use for (`placementHostAddress`, `enableProfiling`, ...) are accepted
//! and have no effect.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::home::Home;
use crate::spec::{AppSpec, LogDest, absolute};

/// The file `-f DIR` looks for (Dapr's name first).
pub const FILE_NAMES: [&str; 2] = ["dapr.yaml", "skiff.yaml"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunFile {
    version: Option<u32>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    common: Shared,
    #[serde(default)]
    apps: Vec<App>,
}

/// A YAML scalar written where a string is meant (`DEBUG: true`).
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum Scalar {
    S(String),
    B(bool),
    I(i64),
    F(f64),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Self::S(s) => s.clone(),
            Self::B(b) => b.to_string(),
            Self::I(i) => i.to_string(),
            Self::F(f) => f.to_string(),
        }
    }
}

/// `resourcesPaths` as a list or a comma-separated string.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum Paths {
    List(Vec<String>),
    One(String),
}

impl Paths {
    fn items(&self) -> Vec<String> {
        match self {
            Self::List(v) => v.clone(),
            Self::One(s) => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }
}

/// What `common` and each app may set (Dapr's `SharedRunConfig`).
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Shared {
    config_file_path: Option<String>,
    app_protocol: Option<String>,
    api_listen_addresses: Option<String>,
    enable_profiling: Option<bool>,
    log_level: Option<String>,
    app_max_concurrency: Option<i64>,
    placement_host_address: Option<String>,
    scheduler_host_address: Option<String>,
    resources_path: Option<String>,
    resources_paths: Option<Paths>,
    #[serde(rename = "appSSL")]
    app_ssl: Option<bool>,
    max_body_size: Option<String>,
    read_buffer_size: Option<String>,
    enable_app_health_check: Option<bool>,
    app_health_check_path: Option<String>,
    app_health_probe_interval: Option<u64>,
    app_health_probe_timeout: Option<u64>,
    app_health_threshold: Option<u64>,
    enable_api_logging: Option<bool>,
    runtime_path: Option<String>,
    env: Option<BTreeMap<String, Scalar>>,
    daprd_log_destination: Option<String>,
    app_log_destination: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct App {
    #[serde(rename = "appID")]
    app_id: Option<String>,
    app_dir_path: Option<String>,
    app_channel_address: Option<String>,
    app_port: Option<i64>,
    #[serde(rename = "daprHTTPPort")]
    dapr_http_port: Option<i64>,
    #[serde(rename = "daprGRPCPort")]
    dapr_grpc_port: Option<i64>,
    #[serde(rename = "daprInternalGRPCPort")]
    dapr_internal_grpc_port: Option<i64>,
    metrics_port: Option<i64>,
    profile_port: Option<i64>,
    unix_domain_socket: Option<String>,
    #[serde(default)]
    command: Vec<String>,
    container_image: Option<String>,
    container_image_pull_policy: Option<String>,
    create_service: Option<bool>,
    // The shared settings, as in [`Shared`].
    config_file_path: Option<String>,
    app_protocol: Option<String>,
    api_listen_addresses: Option<String>,
    enable_profiling: Option<bool>,
    log_level: Option<String>,
    app_max_concurrency: Option<i64>,
    placement_host_address: Option<String>,
    scheduler_host_address: Option<String>,
    resources_path: Option<String>,
    resources_paths: Option<Paths>,
    #[serde(rename = "appSSL")]
    app_ssl: Option<bool>,
    max_body_size: Option<String>,
    read_buffer_size: Option<String>,
    enable_app_health_check: Option<bool>,
    app_health_check_path: Option<String>,
    app_health_probe_interval: Option<u64>,
    app_health_probe_timeout: Option<u64>,
    app_health_threshold: Option<u64>,
    enable_api_logging: Option<bool>,
    runtime_path: Option<String>,
    env: Option<BTreeMap<String, Scalar>>,
    daprd_log_destination: Option<String>,
    app_log_destination: Option<String>,
}

impl App {
    /// Its shared settings (serde cannot deny unknown keys through
    /// `flatten`, so [`App`] lists them itself).
    fn shared(&mut self) -> Shared {
        Shared {
            config_file_path: self.config_file_path.take(),
            app_protocol: self.app_protocol.take(),
            api_listen_addresses: self.api_listen_addresses.take(),
            enable_profiling: self.enable_profiling.take(),
            log_level: self.log_level.take(),
            app_max_concurrency: self.app_max_concurrency.take(),
            placement_host_address: self.placement_host_address.take(),
            scheduler_host_address: self.scheduler_host_address.take(),
            resources_path: self.resources_path.take(),
            resources_paths: self.resources_paths.take(),
            app_ssl: self.app_ssl.take(),
            max_body_size: self.max_body_size.take(),
            read_buffer_size: self.read_buffer_size.take(),
            enable_app_health_check: self.enable_app_health_check.take(),
            app_health_check_path: self.app_health_check_path.take(),
            app_health_probe_interval: self.app_health_probe_interval.take(),
            app_health_probe_timeout: self.app_health_probe_timeout.take(),
            app_health_threshold: self.app_health_threshold.take(),
            enable_api_logging: self.enable_api_logging.take(),
            runtime_path: self.runtime_path.take(),
            env: self.env.take(),
            daprd_log_destination: self.daprd_log_destination.take(),
            app_log_destination: self.app_log_destination.take(),
        }
    }
}

/// The run file `-f` names: the file, or `dapr.yaml` / `skiff.yaml` in the
/// directory.
pub fn locate(path: &Path) -> Result<PathBuf> {
    let p = if path.is_dir() {
        FILE_NAMES
            .iter()
            .map(|n| path.join(n))
            .find(|p| p.is_file())
            .with_context(|| {
                format!(
                    "no run file in {}: expected {}",
                    path.display(),
                    FILE_NAMES.join(" or ")
                )
            })?
    } else if path.is_file() {
        path.to_owned()
    } else {
        bail!("run file {} does not exist", path.display());
    };
    std::fs::canonicalize(&p).with_context(|| format!("reading {}", p.display()))
}

/// The apps of run file `path` (already located), ready to run.
pub fn load(path: &Path, home: &Home) -> Result<Vec<AppSpec>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text, path, home).with_context(|| format!("run file {}", path.display()))
}

fn parse(text: &str, path: &Path, home: &Home) -> Result<Vec<AppSpec>> {
    let file: RunFile = yaml_serde::from_str(text)?;
    let _ = &file.name;
    match file.version {
        None => bail!("the required key `version` is missing (write `version: 1`)"),
        Some(1) => {}
        Some(v) => bail!("version {v} is not known; this CLI reads `version: 1`"),
    }
    if file.apps.is_empty() {
        bail!("no apps: `apps:` lists the apps to run");
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let common = file.common;
    let common_resources: Vec<PathBuf> = resource_list(&common)
        .iter()
        .map(|p| absolute(base, p))
        .collect();
    let common_config = common
        .config_file_path
        .as_deref()
        .map(|c| absolute(base, c));
    let mut out = Vec::new();
    for (i, mut app) in file.apps.into_iter().enumerate() {
        let Some(dir) = app.app_dir_path.as_deref() else {
            bail!(
                "apps[{i}]{} has no `appDirPath`: every app needs the directory its command runs in",
                app.app_id
                    .as_deref()
                    .map(|id| format!(" ({id})"))
                    .unwrap_or_default()
            );
        };
        let dir = absolute(base, dir);
        if !dir.is_dir() {
            bail!("apps[{i}]: appDirPath {} does not exist", dir.display());
        }
        let id = match app.app_id.clone() {
            Some(id) => id,
            None => dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .context("appDirPath has no name to take the app id from")?,
        };
        let _ = (
            &app.profile_port,
            &app.unix_domain_socket,
            &app.container_image,
            &app.container_image_pull_policy,
            &app.create_service,
        );
        let own = app.shared();
        let mut s = AppSpec::new(id, dir.join(".skiff").join("logs"));
        s.dir = Some(dir.clone());
        s.run_file = Some(path.to_owned());
        s.command = app.command;
        s.app_port = port(app.app_port);
        s.http_port = port(app.dapr_http_port);
        s.grpc_port = port(app.dapr_grpc_port);
        s.internal_grpc_port = port(app.dapr_internal_grpc_port);
        s.metrics_port = port(app.metrics_port);
        s.app_channel_address = app.app_channel_address;
        // Resources: the app's own, its local folder, common's, the home's.
        let own_resources: Vec<PathBuf> = resource_list(&own)
            .iter()
            .map(|p| absolute(&dir, p))
            .collect();
        s.resources_paths = if !own_resources.is_empty() {
            own_resources
        } else if let Some(local) = local_dir(&dir, "resources") {
            vec![local]
        } else if !common_resources.is_empty() {
            common_resources.clone()
        } else {
            Vec::new()
        };
        s.config = own
            .config_file_path
            .as_deref()
            .map(|c| absolute(&dir, c))
            .or_else(|| local_file(&dir, "config.yaml"))
            .or_else(|| common_config.clone());
        let m = merged(&own, &common);
        if let Some(p) = m.app_protocol {
            s.app_protocol = p;
        }
        s.listen_addresses = m.api_listen_addresses;
        s.log_level = m.log_level;
        s.app_max_concurrency = m.app_max_concurrency.filter(|c| *c > 0);
        s.max_body_size = m.max_body_size;
        s.read_buffer_size = m.read_buffer_size;
        s.enable_app_health_check = m.enable_app_health_check.unwrap_or(false);
        s.app_health_check_path = m.app_health_check_path;
        s.app_health_probe_interval = m.app_health_probe_interval.filter(|v| *v > 0);
        s.app_health_probe_timeout = m.app_health_probe_timeout.filter(|v| *v > 0);
        s.app_health_threshold = m.app_health_threshold.filter(|v| *v > 0);
        s.enable_api_logging = m.enable_api_logging.unwrap_or(false);
        s.app_log = LogDest::parse(m.app_log_destination.as_deref().unwrap_or("fileAndConsole"))
            .with_context(|| format!("apps[{i}] appLogDestination"))?;
        s.sidecar_log = LogDest::parse(m.daprd_log_destination.as_deref().unwrap_or("file"))
            .with_context(|| format!("apps[{i}] daprdLogDestination"))?;
        // Env: the app's over common's.
        let mut env: BTreeMap<String, String> = common
            .env
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.text()))
            .collect();
        for (k, v) in own.env.iter().flatten() {
            env.insert(k.clone(), v.text());
        }
        s.env = env.into_iter().collect();
        s.with_home_defaults(home)?;
        out.push(s);
    }
    Ok(out)
}

fn port(p: Option<i64>) -> Option<u16> {
    p.and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0)
}

fn resource_list(s: &Shared) -> Vec<String> {
    let mut v = s
        .resources_paths
        .as_ref()
        .map(Paths::items)
        .unwrap_or_default();
    if let Some(one) = s
        .resources_path
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        v.push(one.to_owned());
    }
    v
}

/// `<dir>/.skiff/<name>`, else `<dir>/.dapr/<name>`, when it exists.
fn local_dir(dir: &Path, name: &str) -> Option<PathBuf> {
    [".skiff", ".dapr"]
        .iter()
        .map(|d| dir.join(d).join(name))
        .find(|p| p.is_dir())
}

fn local_file(dir: &Path, name: &str) -> Option<PathBuf> {
    [".skiff", ".dapr"]
        .iter()
        .map(|d| dir.join(d).join(name))
        .find(|p| p.is_file())
}

/// The app's settings, each falling back to `common`'s.
fn merged(own: &Shared, common: &Shared) -> Shared {
    let c = common.clone();
    let o = own.clone();
    Shared {
        config_file_path: o.config_file_path.or(c.config_file_path),
        app_protocol: o.app_protocol.or(c.app_protocol),
        api_listen_addresses: o.api_listen_addresses.or(c.api_listen_addresses),
        enable_profiling: o.enable_profiling.or(c.enable_profiling),
        log_level: o.log_level.or(c.log_level),
        app_max_concurrency: o.app_max_concurrency.or(c.app_max_concurrency),
        placement_host_address: o.placement_host_address.or(c.placement_host_address),
        scheduler_host_address: o.scheduler_host_address.or(c.scheduler_host_address),
        resources_path: o.resources_path.or(c.resources_path),
        resources_paths: o.resources_paths.or(c.resources_paths),
        app_ssl: o.app_ssl.or(c.app_ssl),
        max_body_size: o.max_body_size.or(c.max_body_size),
        read_buffer_size: o.read_buffer_size.or(c.read_buffer_size),
        enable_app_health_check: o.enable_app_health_check.or(c.enable_app_health_check),
        app_health_check_path: o.app_health_check_path.or(c.app_health_check_path),
        app_health_probe_interval: o.app_health_probe_interval.or(c.app_health_probe_interval),
        app_health_probe_timeout: o.app_health_probe_timeout.or(c.app_health_probe_timeout),
        app_health_threshold: o.app_health_threshold.or(c.app_health_threshold),
        enable_api_logging: o.enable_api_logging.or(c.enable_api_logging),
        runtime_path: o.runtime_path.or(c.runtime_path),
        env: None,
        daprd_log_destination: o.daprd_log_destination.or(c.daprd_log_destination),
        app_log_destination: o.app_log_destination.or(c.app_log_destination),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home() -> (tempdir::Dir, Home) {
        let d = tempdir::Dir::new();
        std::fs::create_dir_all(d.0.join("home/components")).expect("mkdir");
        let h = Home {
            root: d.0.join("home"),
        };
        (d, h)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let p = std::env::temp_dir().join(format!(
                    "skiff-runfile-{}-{}",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos())
                ));
                std::fs::create_dir_all(&p).expect("mkdir");
                Self(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn dapr_docs_example_with_precedence_and_env_merge() {
        let (d, h) = home();
        for p in [
            "apps/processor/.dapr/resources",
            "apps/emit-metrics",
            "shared",
        ] {
            std::fs::create_dir_all(d.0.join(p)).expect("mkdir");
        }
        let file = d.0.join("dapr.yaml");
        let yaml = "version: 1
common:
  resourcesPath: ./shared
  env:
    DEBUG: true
    LEVEL: common
apps:
  - appID: processor
    appDirPath: ./apps/processor/
    appPort: 9081
    daprHTTPPort: 3510
    command: [\"go\", \"run\", \"app.go\"]
  - appDirPath: ./apps/emit-metrics/
    env:
      LEVEL: app
    appLogDestination: console
    containerImage: ghcr.io/x/y:latest
    command: [\"go\", \"run\", \"app.go\"]
";
        let apps = parse(yaml, &file, &h).expect("parse");
        assert_eq!(apps.len(), 2);
        let (p, e) = (&apps[0], &apps[1]);
        assert_eq!(
            (p.app_id.as_str(), p.app_port, p.http_port),
            ("processor", Some(9081), Some(3510))
        );
        // The app's local .dapr/resources beats common's.
        assert_eq!(
            p.resources_paths,
            vec![d.0.join("apps/processor/.dapr/resources")]
        );
        assert_eq!(e.app_id, "emit-metrics");
        assert_eq!(e.resources_paths, vec![d.0.join("shared")]);
        assert!(e.env.contains(&("LEVEL".into(), "app".into())));
        assert!(e.env.contains(&("DEBUG".into(), "true".into())));
        assert_eq!(e.app_log, LogDest::Console);
        assert_eq!(p.sidecar_log, LogDest::File);
        assert_eq!(p.logs_dir, d.0.join("apps/processor/.skiff/logs"));
    }

    #[test]
    fn unknown_keys_and_missing_app_dir_are_errors() {
        let (d, h) = home();
        let file = d.0.join("dapr.yaml");
        let e = parse(
            "version: 1\napps:\n  - appID: a\n    appDirPath: .\n    appPrt: 1\n",
            &file,
            &h,
        )
        .expect_err("error");
        assert!(format!("{e:#}").contains("appPrt"), "{e:#}");
        let e = parse("version: 1\napps:\n  - appID: a\n", &file, &h).expect_err("error");
        assert!(format!("{e:#}").contains("appDirPath"), "{e:#}");
        let e = parse("apps:\n  - appDirPath: .\n", &file, &h).expect_err("error");
        assert!(format!("{e:#}").contains("version"), "{e:#}");
    }
}
