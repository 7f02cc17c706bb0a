//! `skiffd`: parses daprd's flags, sets up logging and runs the sidecar.
//! Errors are reported as one line with their causes.

use std::process::ExitCode;

use clap::Parser;
use skiff_dataplane::config::Flags;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let flags = Flags::parse();
    init_logging(
        flags.log_level.filter(),
        flags.log_as_json,
        flags.enable_api_logging,
    );
    let json = flags.log_as_json;
    let settings = match flags.settings() {
        Ok(s) => s,
        Err(e) => return fail(&anyhow::Error::new(e), json),
    };
    raise_open_files(settings.limits.max_connections);
    let rt = match runtime(flags.worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            return fail(
                &anyhow::Error::new(e).context("starting the tokio runtime"),
                json,
            );
        }
    };
    match rt.block_on(skiff_dataplane::runtime::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e, json),
    }
}

/// Raises the soft open-file limit to the hard one, as Go programs (daprd
/// among them) do at start: the default soft limit (often 1024) is far
/// below what `--max-connections` lets clients open. Says so when even the
/// hard limit is short of it.
fn raise_open_files(max_connections: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err() {
        tracing::warn!(soft, hard, "could not raise the open-file limit");
        return;
    }
    // Three front doors, app and peer connections, files: a margin.
    let want = (max_connections as u64).saturating_add(256);
    if hard < want {
        tracing::info!(
            limit = hard,
            max_connections,
            "the open-file limit is below --max-connections: past it, accepts fail (ulimit -n)"
        );
    }
}

/// One worker: a current-thread runtime, whose tasks wake each other
/// without crossing threads. More: a work-stealing runtime (0 = per core).
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if workers == 1 {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if workers > 1 {
        b.worker_threads(workers);
    }
    b.enable_all().build()
}

/// Reports the error that stops the sidecar, once: a JSON log line under
/// `--log-as-json` (what a log collector reads), else one plain line.
fn fail(e: &anyhow::Error, json: bool) -> ExitCode {
    let line = skiff_sentry::report::one_line(e.as_ref());
    if json {
        tracing::error!("{line}");
    } else {
        eprintln!("skiffd: {line}");
    }
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
    // Colour only on a terminal: piped into a file or a supervisor
    // (`skiff run`), escape codes are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[cfg(test)]
mod tests {
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn one_worker_is_a_current_thread_runtime() {
        let flavor = |n| super::runtime(n).map(|rt| rt.handle().runtime_flavor());
        assert_eq!(flavor(1).ok(), Some(RuntimeFlavor::CurrentThread));
        assert_eq!(flavor(2).ok(), Some(RuntimeFlavor::MultiThread));
        assert_eq!(flavor(0).ok(), Some(RuntimeFlavor::MultiThread));
    }
}
