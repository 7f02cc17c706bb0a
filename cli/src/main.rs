//! `skiff`: the Skiff command line. It keeps the Dapr CLI's commands,
//! flags and run-file format (`init`, `run`, `run -f`, `list`, `stop`,
//! `invoke`, `publish`, `uninstall`) and needs no container engine: `init`
//! sets up the embedded state store and broker and the local CA.
//!
//! Errors are one line with what to do about it, on stderr, exit code 1.

#![forbid(unsafe_code)]

mod client;
mod commands;
mod dashboard;
mod home;
mod init;
mod output;
mod ports;
mod records;
mod run;
mod runfile;
mod spec;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use commands::Format;
use home::Home;
use spec::{AppSpec, LogDest};

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "Skiff: run apps with a Dapr-compatible sidecar, no Docker needed"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Set up $SKIFF_HOME: the local CA, a Configuration, and the embedded
    /// state store and pub/sub as components.
    Init(InitArgs),
    /// Remove what `init` set up (--all: the CA and data too).
    Uninstall {
        #[arg(long)]
        all: bool,
    },
    /// Run an app with its sidecar (or several, with -f).
    Run(Box<RunArgs>),
    /// The apps running now.
    List {
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Format,
    },
    /// Stop an app (-a) or every app of a run file (-f).
    Stop {
        #[arg(short = 'a', long = "app-id", required_unless_present = "run_file")]
        app_id: Vec<String>,
        #[arg(short = 'f', long = "run-file")]
        run_file: Option<PathBuf>,
    },
    /// Call a method of a running app through its sidecar.
    Invoke {
        #[arg(short = 'a', long = "app-id")]
        app_id: String,
        #[arg(short = 'm', long = "method")]
        method: String,
        #[arg(short = 'v', long = "verb", default_value = "POST")]
        verb: String,
        #[arg(short = 'd', long = "data")]
        data: Option<String>,
        #[arg(short = 'f', long = "data-file")]
        data_file: Option<PathBuf>,
    },
    /// Publish an event through a running app's sidecar.
    Publish {
        #[arg(short = 'i', long = "publish-app-id")]
        app_id: String,
        #[arg(short = 'p', long = "pubsub")]
        pubsub: String,
        #[arg(short = 't', long = "topic")]
        topic: String,
        #[arg(short = 'd', long = "data")]
        data: Option<String>,
        #[arg(short = 'f', long = "data-file")]
        data_file: Option<PathBuf>,
        /// A JSON object of metadata, e.g. '{"ttlInSeconds":"10"}'.
        #[arg(short = 'm', long = "metadata")]
        metadata: Option<String>,
    },
    /// The last lines of a running app's log (--sidecar: its sidecar's).
    Logs {
        #[arg(short = 'a', long = "app-id")]
        app_id: String,
        #[arg(long)]
        sidecar: bool,
        #[arg(short = 'n', long = "lines", default_value_t = 100)]
        lines: usize,
    },
    /// Components a running app loaded (-a), else those in $SKIFF_HOME.
    Components {
        #[arg(short = 'a', long = "app-id")]
        app_id: Option<String>,
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Format,
    },
    /// A live page of the running apps, calls, pub/sub backlogs and errors.
    Dashboard {
        #[arg(short = 'p', long = "port", default_value_t = 8080)]
        port: u16,
    },
    /// This CLI's and the runtime's versions.
    Version,
}

#[derive(Args)]
struct InitArgs {
    /// Make a new local CA even if one exists.
    #[arg(long)]
    force: bool,
    /// Write Redis components (HOST:PORT) instead of the embedded ones.
    #[arg(long, value_name = "HOST:PORT")]
    redis: Option<String>,
    /// Accepted for the Dapr CLI's sake: init is always "slim" here.
    #[arg(long, hide = true)]
    slim: bool,
    #[arg(long, default_value = skiff_sentry::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
}

/// `dapr run`'s flags.
#[derive(Args)]
struct RunArgs {
    #[arg(short = 'a', long = "app-id", env = "APP_ID")]
    app_id: Option<String>,
    #[arg(short = 'p', long = "app-port")]
    app_port: Option<u16>,
    #[arg(short = 'P', long = "app-protocol", default_value = "http")]
    app_protocol: String,
    #[arg(long = "app-channel-address")]
    app_channel_address: Option<String>,
    #[arg(short = 'H', long = "dapr-http-port")]
    dapr_http_port: Option<u16>,
    #[arg(short = 'G', long = "dapr-grpc-port")]
    dapr_grpc_port: Option<u16>,
    #[arg(short = 'I', long = "dapr-internal-grpc-port")]
    dapr_internal_grpc_port: Option<u16>,
    #[arg(short = 'M', long = "metrics-port")]
    metrics_port: Option<u16>,
    #[arg(
        short = 'd',
        long = "resources-path",
        visible_alias = "components-path"
    )]
    resources_path: Vec<PathBuf>,
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
    #[arg(long = "app-max-concurrency", allow_negative_numbers = true)]
    app_max_concurrency: Option<i64>,
    #[arg(long = "log-level")]
    log_level: Option<String>,
    #[arg(long = "enable-api-logging")]
    enable_api_logging: bool,
    #[arg(long = "enable-app-health-check")]
    enable_app_health_check: bool,
    #[arg(long = "app-health-check-path")]
    app_health_check_path: Option<String>,
    #[arg(long = "app-health-probe-interval")]
    app_health_probe_interval: Option<u64>,
    #[arg(long = "app-health-probe-timeout")]
    app_health_probe_timeout: Option<u64>,
    #[arg(long = "app-health-threshold")]
    app_health_threshold: Option<u64>,
    #[arg(long = "max-body-size", visible_alias = "dapr-http-max-request-size")]
    max_body_size: Option<String>,
    #[arg(
        long = "read-buffer-size",
        visible_alias = "dapr-http-read-buffer-size"
    )]
    read_buffer_size: Option<String>,
    #[arg(long = "dapr-listen-addresses")]
    dapr_listen_addresses: Option<String>,
    /// Where skiffd is (a directory or the binary).
    #[arg(long = "runtime-path")]
    runtime_path: Option<PathBuf>,
    /// A multi-app run file (or a directory with dapr.yaml).
    #[arg(short = 'f', long = "run-file")]
    run_file: Option<PathBuf>,
    /// Accepted for the Dapr CLI's sake; Skiff has no placement or
    /// scheduler service to point at.
    #[arg(long = "placement-host-address", hide = true)]
    placement_host_address: Option<String>,
    #[arg(long = "scheduler-host-address", hide = true)]
    scheduler_host_address: Option<String>,
    /// The app's command (after `--`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

impl RunArgs {
    fn spec(self, home: &Home) -> Result<AppSpec> {
        let id = match self.app_id {
            Some(id) => id,
            None => default_id(&self.command),
        };
        let mut s = AppSpec::new(id, home.logs());
        s.app_port = self.app_port;
        s.app_protocol = self.app_protocol;
        s.app_channel_address = self.app_channel_address;
        s.http_port = self.dapr_http_port;
        s.grpc_port = self.dapr_grpc_port;
        s.internal_grpc_port = self.dapr_internal_grpc_port;
        s.metrics_port = self.metrics_port;
        s.resources_paths = self.resources_path;
        s.config = self.config;
        s.app_max_concurrency = self.app_max_concurrency.filter(|c| *c > 0);
        s.log_level = self.log_level;
        s.enable_api_logging = self.enable_api_logging;
        s.enable_app_health_check = self.enable_app_health_check;
        s.app_health_check_path = self.app_health_check_path;
        s.app_health_probe_interval = self.app_health_probe_interval;
        s.app_health_probe_timeout = self.app_health_probe_timeout;
        s.app_health_threshold = self.app_health_threshold;
        s.max_body_size = self.max_body_size;
        s.read_buffer_size = self.read_buffer_size;
        s.listen_addresses = self.dapr_listen_addresses;
        s.command = self.command;
        s.app_log = LogDest::FileAndConsole;
        s.sidecar_log = LogDest::FileAndConsole;
        s.with_home_defaults(home)?;
        Ok(s)
    }
}

/// Without `--app-id`: the command's name, as a recognisable id.
fn default_id(command: &[String]) -> String {
    let base = command
        .first()
        .and_then(|c| std::path::Path::new(c).file_stem())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "skiff-app".to_owned());
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("{}-{}", clean.trim_matches('-'), std::process::id())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skiff: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.cmd)) {
        Ok(code) => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1)),
        Err(e) => {
            eprintln!("skiff: {}", skiff_sentry::report::one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: Cmd) -> Result<i32> {
    let home = Home::from_env();
    match cmd {
        Cmd::Init(a) => {
            let _ = a.slim;
            init::init(
                &home,
                &init::InitOptions {
                    force: a.force,
                    redis: a.redis,
                    trust_domain: a.trust_domain,
                },
            )?;
        }
        Cmd::Uninstall { all } => init::uninstall(&home, &init::UninstallOptions { all })?,
        Cmd::Run(a) => return run_cmd(&home, *a).await,
        Cmd::List { output } => commands::list(&home, output).await?,
        Cmd::Stop { app_id, run_file } => {
            if let Some(f) = run_file {
                commands::stop_run_file(&home, &f).await?;
            }
            for id in app_id {
                commands::stop_app(&home, &id).await?;
            }
        }
        Cmd::Invoke {
            app_id,
            method,
            verb,
            data,
            data_file,
        } => commands::invoke(&home, &app_id, &method, &verb, data, data_file.as_deref()).await?,
        Cmd::Publish {
            app_id,
            pubsub,
            topic,
            data,
            data_file,
            metadata,
        } => {
            commands::publish(
                &home,
                &app_id,
                &pubsub,
                &topic,
                data,
                data_file.as_deref(),
                metadata.as_deref(),
            )
            .await?;
        }
        Cmd::Logs {
            app_id,
            sidecar,
            lines,
        } => commands::logs(&home, &app_id, sidecar, lines)?,
        Cmd::Components { app_id, output } => {
            commands::components(&home, app_id.as_deref(), output).await?;
        }
        Cmd::Dashboard { port } => dashboard::serve(&home, port).await?,
        Cmd::Version => commands::version(run::find_skiffd(None).ok().as_deref()),
    }
    Ok(0)
}

async fn run_cmd(home: &Home, a: RunArgs) -> Result<i32> {
    if a.placement_host_address.is_some() || a.scheduler_host_address.is_some() {
        eprintln!(
            "skiff: note: --placement-host-address / --scheduler-host-address have no effect (Skiff needs no placement or scheduler service)"
        );
    }
    let skiffd = run::find_skiffd(a.runtime_path.as_deref())?;
    let specs = match &a.run_file {
        Some(f) => {
            if !a.command.is_empty() {
                anyhow::bail!("give a run file (-f) or a command, not both");
            }
            let path = runfile::locate(f)?;
            runfile::load(&path, home)?
        }
        None => vec![a.spec(home)?],
    };
    run::run(home, specs, &skiffd).await
}
