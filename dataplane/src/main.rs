//! `skiffd`: parses daprd's flags, sets up logging and runs the sidecar.
//! Errors are reported as one line with their causes.

use std::process::ExitCode;

use clap::Parser;
use skiff_dataplane::config::Flags;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let flags = Flags::parse();
    init_logging(
        &flags.log_level,
        flags.log_as_json,
        flags.enable_api_logging,
    );
    let settings = match flags.settings() {
        Ok(s) => s,
        Err(e) => return fail(&anyhow::Error::new(e)),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::Error::new(e).context("starting the tokio runtime")),
    };
    match rt.block_on(skiff_dataplane::runtime::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &anyhow::Error) -> ExitCode {
    let line = skiff_sentry::report::one_line(e.as_ref());
    tracing::error!("{line}");
    eprintln!("skiffd: {line}");
    ExitCode::FAILURE
}

fn init_logging(level: &str, json: bool, api_logging: bool) {
    let mut filter = EnvFilter::try_from_env("SKIFF_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    if api_logging {
        // API call lines are info whatever the level, like daprd's.
        if let Ok(d) = format!("{}=info", skiff_dataplane::api::http::API_LOG_TARGET).parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
