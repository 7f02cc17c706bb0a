//! One app to run with its sidecar, from `skiff run`'s flags or one entry
//! of a run file: what `skiffd` is started with (daprd's flags) and what
//! the app finds in its environment (`dapr run`'s variables).

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::home::Home;
use crate::ports;

/// Where a process's output goes (the run file's `appLogDestination` /
/// `daprdLogDestination`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogDest {
    Console,
    File,
    FileAndConsole,
}

impl LogDest {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "console" => Self::Console,
            "file" => Self::File,
            "fileAndConsole" => Self::FileAndConsole,
            other => {
                bail!("invalid log destination {other:?}: use console, file or fileAndConsole")
            }
        })
    }

    pub fn console(self) -> bool {
        self != Self::File
    }
}

#[derive(Clone, Debug)]
pub struct AppSpec {
    pub app_id: String,
    /// Where the command runs (the run file's `appDirPath`).
    pub dir: Option<PathBuf>,
    pub app_port: Option<u16>,
    pub app_protocol: String,
    pub app_channel_address: Option<String>,
    pub http_port: Option<u16>,
    pub grpc_port: Option<u16>,
    pub internal_grpc_port: Option<u16>,
    pub metrics_port: Option<u16>,
    pub resources_paths: Vec<PathBuf>,
    pub config: Option<PathBuf>,
    pub app_max_concurrency: Option<i64>,
    pub log_level: Option<String>,
    pub enable_api_logging: bool,
    pub enable_app_health_check: bool,
    pub app_health_check_path: Option<String>,
    pub app_health_probe_interval: Option<u64>,
    pub app_health_probe_timeout: Option<u64>,
    pub app_health_threshold: Option<u64>,
    pub max_body_size: Option<String>,
    pub read_buffer_size: Option<String>,
    pub listen_addresses: Option<String>,
    pub env: Vec<(String, String)>,
    pub command: Vec<String>,
    pub app_log: LogDest,
    pub sidecar_log: LogDest,
    /// Where log files go.
    pub logs_dir: PathBuf,
    /// The run file it came from.
    pub run_file: Option<PathBuf>,
}

impl AppSpec {
    pub fn new(app_id: String, logs_dir: PathBuf) -> Self {
        Self {
            app_id,
            dir: None,
            app_port: None,
            app_protocol: "http".into(),
            app_channel_address: None,
            http_port: None,
            grpc_port: None,
            internal_grpc_port: None,
            metrics_port: None,
            resources_paths: Vec::new(),
            config: None,
            app_max_concurrency: None,
            log_level: None,
            enable_api_logging: false,
            enable_app_health_check: false,
            app_health_check_path: None,
            app_health_probe_interval: None,
            app_health_probe_timeout: None,
            app_health_threshold: None,
            max_body_size: None,
            read_buffer_size: None,
            listen_addresses: None,
            env: Vec::new(),
            command: Vec::new(),
            app_log: LogDest::Console,
            sidecar_log: LogDest::Console,
            logs_dir,
            run_file: None,
        }
    }

    /// Fills in what `skiff init` provides when nothing was given: its
    /// components and Configuration.
    pub fn with_home_defaults(&mut self, home: &Home) -> Result<()> {
        if self.resources_paths.is_empty() {
            if !home.components().is_dir() {
                bail!(
                    "`skiff init` has not been run for {}: run `skiff init` first (it needs no Docker), or pass --resources-path DIR",
                    home.path().display()
                );
            }
            self.resources_paths.push(home.components());
        }
        if self.config.is_none() && home.config().is_file() {
            self.config = Some(home.config());
        }
        Ok(())
    }

    /// Checks the given paths and ports, and picks free ports for the rest.
    pub fn resolve(&self, taken: &mut Vec<u16>) -> Result<Ports> {
        validate_id(&self.app_id)?;
        for p in &self.resources_paths {
            if !p.is_dir() {
                bail!(
                    "resources path {} does not exist or is not a directory",
                    p.display()
                );
            }
        }
        if let Some(c) = &self.config
            && !c.is_file()
        {
            bail!("config file {} does not exist", c.display());
        }
        if let Some(d) = &self.dir
            && !d.is_dir()
        {
            bail!("app directory {} does not exist", d.display());
        }
        let mut pick = |given: Option<u16>, what: &str| -> Result<u16> {
            let port = match given {
                Some(p) => {
                    if taken.contains(&p) || ports::in_use(p) {
                        bail!("{}", ports::taken(p, what));
                    }
                    p
                }
                None => loop {
                    let p = ports::free()?;
                    if !taken.contains(&p) {
                        break p;
                    }
                },
            };
            taken.push(port);
            Ok(port)
        };
        let http = pick(self.http_port, "--dapr-http-port")?;
        let grpc = pick(self.grpc_port, "--dapr-grpc-port")?;
        let metrics = pick(self.metrics_port, "--metrics-port")?;
        let internal = pick(self.internal_grpc_port, "--dapr-internal-grpc-port")?;
        // An app we start must be able to listen on its port.
        if let Some(p) = self.app_port
            && !self.command.is_empty()
            && ports::in_use(p)
        {
            bail!(
                "{} before the app started: another process already listens there",
                ports::taken(p, "--app-port")
            );
        }
        Ok(Ports {
            http,
            grpc,
            metrics,
            internal,
        })
    }

    /// skiffd's command line (daprd's flags).
    pub fn sidecar_args(&self, p: &Ports) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--app-id".into(),
            self.app_id.clone(),
            "--app-protocol".into(),
            self.app_protocol.clone(),
            "--dapr-http-port".into(),
            p.http.to_string(),
            "--dapr-grpc-port".into(),
            p.grpc.to_string(),
            "--metrics-port".into(),
            p.metrics.to_string(),
            "--dapr-internal-grpc-port".into(),
            p.internal.to_string(),
            "--enable-mtls".into(),
        ];
        let mut opt = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                a.push(k.into());
                a.push(v);
            }
        };
        opt("--app-port", self.app_port.map(|v| v.to_string()));
        opt("--app-channel-address", self.app_channel_address.clone());
        opt(
            "--config",
            self.config.as_ref().map(|c| c.display().to_string()),
        );
        opt(
            "--app-max-concurrency",
            self.app_max_concurrency.map(|v| v.to_string()),
        );
        opt("--log-level", self.log_level.clone());
        opt(
            "--app-health-check-path",
            self.app_health_check_path.clone(),
        );
        opt(
            "--app-health-probe-interval",
            self.app_health_probe_interval.map(|v| v.to_string()),
        );
        opt(
            "--app-health-probe-timeout",
            self.app_health_probe_timeout.map(|v| v.to_string()),
        );
        opt(
            "--app-health-threshold",
            self.app_health_threshold.map(|v| v.to_string()),
        );
        opt("--max-body-size", self.max_body_size.clone());
        opt("--read-buffer-size", self.read_buffer_size.clone());
        opt("--dapr-listen-addresses", self.listen_addresses.clone());
        for r in &self.resources_paths {
            a.push("--resources-path".into());
            a.push(r.display().to_string());
        }
        if self.enable_api_logging {
            a.push("--enable-api-logging".into());
        }
        if self.enable_app_health_check {
            a.push("--enable-app-health-check".into());
        }
        a
    }

    /// What the app finds in its environment, after the run file's `env`
    /// (ours win, as in `dapr run`).
    pub fn app_env(&self, p: &Ports) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        env.push(("APP_ID".into(), self.app_id.clone()));
        if let Some(port) = self.app_port {
            env.push(("APP_PORT".into(), port.to_string()));
        }
        env.push(("APP_PROTOCOL".into(), self.app_protocol.clone()));
        if let Some(a) = &self.app_channel_address {
            env.push(("APP_CHANNEL_ADDRESS".into(), a.clone()));
        }
        env.push(("DAPR_HTTP_PORT".into(), p.http.to_string()));
        env.push(("DAPR_GRPC_PORT".into(), p.grpc.to_string()));
        env.push(("DAPR_METRICS_PORT".into(), p.metrics.to_string()));
        env
    }

    pub fn command_text(&self) -> String {
        self.command.join(" ")
    }

    pub fn log_file(&self, what: &str) -> PathBuf {
        self.logs_dir.join(format!("{}_{what}.log", self.app_id))
    }
}

/// The ports one sidecar listens on.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub http: u16,
    pub grpc: u16,
    pub metrics: u16,
    pub internal: u16,
}

/// App ids are path segments and DNS labels (as skiffd checks them).
fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !id.starts_with('-');
    if !ok {
        bail!(
            "app id {id:?} is not valid: use letters, digits, '-' and '_' (no dots), at most 63 characters"
        );
    }
    Ok(())
}

/// `path`, made absolute against `base` (and `~/` against `$HOME`).
pub fn absolute(base: &Path, path: &str) -> PathBuf {
    if let Some(rest) = path.strip_prefix("~/")
        && let Some(h) = std::env::var_os("HOME")
    {
        return PathBuf::from(h).join(rest);
    }
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_flags_and_app_env_follow_dapr_run() {
        let mut s = AppSpec::new("web".into(), PathBuf::from("/tmp"));
        s.app_port = Some(8080);
        s.resources_paths = vec![PathBuf::from("/a"), PathBuf::from("/b")];
        s.env = vec![("DEBUG".into(), "1".into())];
        let p = Ports {
            http: 3500,
            grpc: 50001,
            metrics: 9090,
            internal: 40000,
        };
        let a = s.sidecar_args(&p).join(" ");
        assert!(a.contains("--app-id web"), "{a}");
        assert!(a.contains("--app-port 8080"), "{a}");
        assert!(a.contains("--resources-path /a --resources-path /b"), "{a}");
        assert!(a.contains("--enable-mtls"), "{a}");
        let env = s.app_env(&p);
        for (k, v) in [
            ("APP_ID", "web"),
            ("APP_PORT", "8080"),
            ("DAPR_HTTP_PORT", "3500"),
            ("DAPR_GRPC_PORT", "50001"),
            ("DAPR_METRICS_PORT", "9090"),
            ("APP_PROTOCOL", "http"),
            ("DEBUG", "1"),
        ] {
            assert!(env.iter().any(|(a, b)| a == k && b == v), "{k}: {env:?}");
        }
    }

    #[test]
    fn bad_ids_are_refused() {
        assert!(validate_id("a.b").is_err());
        assert!(validate_id("").is_err());
        assert!(validate_id("order-processor").is_ok());
    }
}
