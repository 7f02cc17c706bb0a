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
        /// Also remove the local CA and the embedded stores' data.
        #[arg(long)]
        all: bool,
    },
    /// Run an app with its sidecar (or several, with -f).
    Run(Box<RunArgs>),
    /// The apps running now.
    List {
        /// The output format.
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Format,
    },
    /// Stop an app (-a) or every app of a run file (-f).
    Stop {
        /// The app to stop; repeatable.
        #[arg(short = 'a', long = "app-id", required_unless_present = "run_file")]
        app_id: Vec<String>,
        /// Stop every app this run file started.
        #[arg(short = 'f', long = "run-file")]
        run_file: Option<PathBuf>,
    },
    /// Call a method of a running app through its sidecar.
    Invoke {
        /// The app to call.
        #[arg(short = 'a', long = "app-id")]
        app_id: String,
        /// The method (path) of the app to call.
        #[arg(short = 'm', long = "method")]
        method: String,
        /// The HTTP verb to use.
        #[arg(short = 'v', long = "verb", default_value = "POST")]
        verb: String,
        /// The request body (JSON or text).
        #[arg(short = 'd', long = "data")]
        data: Option<String>,
        /// A file whose contents are the request body.
        #[arg(short = 'f', long = "data-file")]
        data_file: Option<PathBuf>,
    },
    /// Publish an event through a running app's sidecar.
    Publish {
        /// The running app whose sidecar publishes the event.
        #[arg(short = 'i', long = "publish-app-id")]
        app_id: String,
        /// The pub/sub component to publish to.
        #[arg(short = 'p', long = "pubsub")]
        pubsub: String,
        /// The topic to publish to.
        #[arg(short = 't', long = "topic")]
        topic: String,
        /// The event (JSON or text).
        #[arg(short = 'd', long = "data")]
        data: Option<String>,
        /// A file whose contents are the event.
        #[arg(short = 'f', long = "data-file")]
        data_file: Option<PathBuf>,
        /// A JSON object of metadata, e.g. '{"ttlInSeconds":"10"}'.
        #[arg(short = 'm', long = "metadata")]
        metadata: Option<String>,
    },
    /// The last lines of a running app's log (--sidecar: its sidecar's).
    Logs {
        /// The running app whose log to show.
        #[arg(short = 'a', long = "app-id")]
        app_id: String,
        /// Show its sidecar's log instead.
        #[arg(long)]
        sidecar: bool,
        /// How many of the last lines to show.
        #[arg(short = 'n', long = "lines", default_value_t = 100)]
        lines: usize,
    },
    /// Components a running app loaded (-a), else those in $SKIFF_HOME.
    Components {
        /// The running app whose loaded components to list.
        #[arg(short = 'a', long = "app-id")]
        app_id: Option<String>,
        /// The output format.
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Format,
    },
    /// A live page of the running apps, calls, pub/sub backlogs and errors.
    Dashboard {
        /// The local port to serve the page on.
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
    /// The trust domain of the local CA's certificates.
    #[arg(long, default_value = skiff_sentry::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
}

/// `dapr run`'s flags.
#[derive(Args)]
struct RunArgs {
    /// The id of your app, used for service discovery and state (default:
    /// the command's name).
    #[arg(short = 'a', long = "app-id", env = "APP_ID")]
    app_id: Option<String>,
    /// The port your app listens on; omit for an app that only calls.
    #[arg(short = 'p', long = "app-port")]
    app_port: Option<u16>,
    /// The protocol the sidecar uses to talk to the app: http, grpc or h2c.
    #[arg(short = 'P', long = "app-protocol", default_value = "http")]
    app_protocol: String,
    /// The network address the app listens on (default 127.0.0.1).
    #[arg(long = "app-channel-address")]
    app_channel_address: Option<String>,
    /// The HTTP port for the sidecar to listen on (default: a free one).
    #[arg(short = 'H', long = "dapr-http-port")]
    dapr_http_port: Option<u16>,
    /// The gRPC port for the sidecar to listen on (default: a free one).
    #[arg(short = 'G', long = "dapr-grpc-port")]
    dapr_grpc_port: Option<u16>,
    /// The port for calls from other sidecars (default: a free one).
    #[arg(short = 'I', long = "dapr-internal-grpc-port")]
    dapr_internal_grpc_port: Option<u16>,
    /// The port of the sidecar's Prometheus metrics (default: a free one).
    #[arg(short = 'M', long = "metrics-port")]
    metrics_port: Option<u16>,
    /// A directory of component, resiliency and subscription YAML;
    /// repeatable (default: $SKIFF_HOME/components).
    #[arg(
        short = 'd',
        long = "resources-path",
        visible_alias = "components-path"
    )]
    resources_path: Vec<PathBuf>,
    /// A Configuration YAML file (default: $SKIFF_HOME/config.yaml).
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
    /// Concurrent calls the sidecar delivers to the app; -1 = unlimited.
    #[arg(long = "app-max-concurrency", allow_negative_numbers = true)]
    app_max_concurrency: Option<i64>,
    /// The sidecar's log verbosity: debug, info, warn, error or fatal.
    #[arg(long = "log-level")]
    log_level: Option<String>,
    /// Logs every API call the app makes at info level.
    #[arg(long = "enable-api-logging")]
    enable_api_logging: bool,
    /// Probes the app's health and stops deliveries to it while it fails.
    #[arg(long = "enable-app-health-check")]
    enable_app_health_check: bool,
    /// Path used for health checks; HTTP apps only (default /healthz).
    #[arg(long = "app-health-check-path")]
    app_health_check_path: Option<String>,
    /// Interval to probe for the health of the app, in seconds.
    #[arg(long = "app-health-probe-interval")]
    app_health_probe_interval: Option<u64>,
    /// Timeout for app health probes, in milliseconds.
    #[arg(long = "app-health-probe-timeout")]
    app_health_probe_timeout: Option<u64>,
    /// Consecutive failed probes after which the app is unhealthy.
    #[arg(long = "app-health-threshold")]
    app_health_threshold: Option<u64>,
    /// Largest message the sidecar buffers, e.g. 4Mi.
    #[arg(long = "max-body-size", visible_alias = "dapr-http-max-request-size")]
    max_body_size: Option<String>,
    /// Largest request head (headers) the sidecar accepts, e.g. 16Ki.
    #[arg(
        long = "read-buffer-size",
        visible_alias = "dapr-http-read-buffer-size"
    )]
    read_buffer_size: Option<String>,
    /// Comma-separated IP addresses the sidecar's APIs listen on.
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
