//! skiff-sentry: the certificate authority sidecars get their workload
//! certificates from. Without a subcommand it serves; `token`, `root` and
//! `issuer` are operator tools.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use skiff_sentry::ca::{self, KeyAlg};
use skiff_sentry::jwt::{Jwks, SigningKey};
use skiff_sentry::kubernetes::{KubeValidator, SERVICE_ACCOUNT_DIR};
use skiff_sentry::server::{self, Config};
use skiff_sentry::validator::{Method, Validators};
use skiff_sentry::{DEFAULT_TRUST_DOMAIN, SpiffeId};

/// JWT signing key and JWK set file names in the credentials directory.
const JWT_KEY_FILE: &str = "jwt-signing.key";
const JWKS_FILE: &str = "jwks.json";

#[derive(Parser)]
#[command(
    name = "skiff-sentry",
    version,
    about = "Skiff's certificate authority (Dapr sentry compatible)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mint a bootstrap JWT for one app id (for the jwks validator).
    Token(TokenArgs),
    /// Make a root (ca.crt + ca.key) to keep offline and issue issuers from.
    Root {
        /// Directory to write ca.crt and ca.key into.
        #[arg(long)]
        out: PathBuf,
        /// The trust domain the root signs for.
        #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// The root's key type.
        #[arg(long, default_value = "ecdsa-p256")]
        key_algorithm: KeyAlg,
    },
    /// Issue a new issuer (issuer.crt + issuer.key, and ca.crt) from a root.
    /// Write it into a running sentry's credentials directory to rotate.
    Issuer {
        /// Directory holding ca.crt and ca.key.
        #[arg(long)]
        root: PathBuf,
        /// Directory to write issuer.crt, issuer.key and ca.crt into.
        #[arg(long)]
        out: PathBuf,
        /// The trust domain the issuer signs for.
        #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// The issuer's key type.
        #[arg(long, default_value = "ecdsa-p256")]
        key_algorithm: KeyAlg,
        /// How long the issuer certificate is valid.
        #[arg(long, default_value = "8760h", value_parser = parse_duration)]
        ttl: Duration,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Directory with ca.crt, issuer.crt and issuer.key (created on first start).
    #[arg(
        long,
        env = "SKIFF_SENTRY_CREDENTIALS",
        default_value = "./sentry-credentials"
    )]
    issuer_credentials: PathBuf,
    /// The port sidecars ask for certificates on.
    #[arg(long, default_value_t = 50001)]
    port: u16,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    listen_address: String,
    /// The trust domain of the certificates it signs.
    #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Sentry's own namespace, in its SPIFFE ID.
    #[arg(long, env = "NAMESPACE", default_value = "default")]
    namespace: String,
    /// How long the workload certificates it signs are valid.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    workload_cert_ttl: Duration,
    /// The key type of an issuer made on first start.
    #[arg(long, default_value = "ecdsa-p256")]
    key_algorithm: KeyAlg,
    /// Token validators to enable (comma-separated); the first is the
    /// default for requests that name none.
    #[arg(long, default_value = "insecure", value_delimiter = ',')]
    token_validator: Vec<Method>,
    /// JWK set for the jwks validator (default: <credentials>/jwks.json,
    /// created with a signing key beside it on first use).
    #[arg(long)]
    jwks_file: Option<PathBuf>,
    /// API server for the kubernetes validator (default: from
    /// KUBERNETES_SERVICE_HOST/PORT).
    #[arg(long)]
    kube_api_server: Option<String>,
    /// The API server's CA for the kubernetes validator.
    #[arg(long, default_value_t = format!("{SERVICE_ACCOUNT_DIR}/ca.crt"))]
    kube_ca_file: String,
    /// The token sentry presents to the API server (TokenReview).
    #[arg(long, default_value_t = format!("{SERVICE_ACCOUNT_DIR}/token"))]
    kube_token_file: String,
    /// Log verbosity.
    #[arg(long, default_value = "info", value_parser = ["trace", "debug", "info", "warn", "error", "fatal"])]
    log_level: String,
}

#[derive(Args)]
struct TokenArgs {
    /// The app id the token is for (its subject).
    #[arg(long)]
    app_id: String,
    /// The app's namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// The trust domain sentry signs for.
    #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// How long the token is valid.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    ttl: Duration,
    /// The operator's signing key (default: <credentials>/jwt-signing.key).
    #[arg(long)]
    signing_key: Option<PathBuf>,
    /// The credentials directory of the sentry that validates the token.
    #[arg(
        long,
        env = "SKIFF_SENTRY_CREDENTIALS",
        default_value = "./sentry-credentials"
    )]
    issuer_credentials: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Some(Cmd::Token(t)) => token(&t),
        Some(Cmd::Root {
            out,
            trust_domain,
            key_algorithm,
        }) => root(&out, &trust_domain, key_algorithm),
        Some(Cmd::Issuer {
            root,
            out,
            trust_domain,
            key_algorithm,
            ttl,
        }) => issuer(&root, &out, &trust_domain, key_algorithm, ttl),
        None => serve(cli.serve),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "skiff-sentry: {}",
                skiff_sentry::report::one_line(e.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    // Colour only on a terminal, as skiffd: a log file gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            a.log_level.replace("fatal", "error"),
        ))
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
    let validators = validators(&a)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let addr = format!("{}:{}", a.listen_address, a.port);
        let trust_domain = a.trust_domain.clone();
        // Credentials first, the port after: whoever waits for the port
        // finds ca.crt and the issuer written.
        let sentry = server::Sentry::start(Config {
            credentials: a.issuer_credentials,
            trust_domain: a.trust_domain,
            namespace: a.namespace,
            workload_ttl: a.workload_cert_ttl,
            key_alg: a.key_algorithm,
            validators,
        })?;
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| anyhow::anyhow!("listening on {addr}: {e}"))?;
        tracing::info!(%addr, %trust_domain, "sentry serving");
        sentry.serve(listener, shutdown_signal()).await?;
        Ok(())
    })
}

fn validators(a: &ServeArgs) -> anyhow::Result<Validators> {
    let Some(&default) = a.token_validator.first() else {
        anyhow::bail!("--token-validator: name at least one");
    };
    let mut v = Validators::new(default, &a.trust_domain);
    for m in &a.token_validator {
        v = match m {
            Method::Insecure => v.insecure(),
            Method::Jwks => {
                let path = a
                    .jwks_file
                    .clone()
                    .unwrap_or_else(|| a.issuer_credentials.join(JWKS_FILE));
                if a.jwks_file.is_none() && !path.exists() {
                    init_jwt_key(&a.issuer_credentials, a.key_algorithm)?;
                }
                let json =
                    std::fs::read(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                v.with_jwks(
                    Jwks::from_json(&json)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
                )
            }
            Method::Kubernetes => {
                let api = match &a.kube_api_server {
                    Some(s) => s.clone(),
                    None => match (
                        std::env::var("KUBERNETES_SERVICE_HOST"),
                        std::env::var("KUBERNETES_SERVICE_PORT"),
                    ) {
                        (Ok(h), Ok(p)) => format!("https://{h}:{p}"),
                        _ => anyhow::bail!(
                            "the kubernetes validator needs --kube-api-server or KUBERNETES_SERVICE_HOST/PORT"
                        ),
                    },
                };
                v.with_kubernetes(KubeValidator::new(
                    &api,
                    Path::new(&a.kube_ca_file),
                    Path::new(&a.kube_token_file),
                )?)
            }
        };
    }
    Ok(v)
}

/// Creates the operator's JWT signing key and its JWK set in `dir`.
fn init_jwt_key(dir: &Path, alg: KeyAlg) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let (key, pem) = SigningKey::generate(alg)?;
    ca::write_file(&dir.join(JWT_KEY_FILE), &pem, 0o600)?;
    ca::write_file(&dir.join(JWKS_FILE), &key.jwks_json(), 0o644)?;
    eprintln!(
        "skiff-sentry: created a JWT signing key in {}; mint tokens with `skiff-sentry token`",
        dir.join(JWT_KEY_FILE).display()
    );
    Ok(())
}

fn token(t: &TokenArgs) -> anyhow::Result<()> {
    let path = t
        .signing_key
        .clone()
        .unwrap_or_else(|| t.issuer_credentials.join(JWT_KEY_FILE));
    let pem = std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound if t.signing_key.is_none() => anyhow::anyhow!(
            "no JWT signing key at {}: start skiff-sentry once with --token-validator jwks and \
             the same --issuer-credentials (it creates the key), or pass --signing-key",
            path.display()
        ),
        _ => anyhow::anyhow!("signing key {}: {e}", path.display()),
    })?;
    let key = SigningKey::from_pem(&pem).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let id = SpiffeId::new(&t.trust_domain, &t.namespace, &t.app_id)?;
    println!("{}", key.mint(&id, &t.trust_domain, t.ttl)?);
    Ok(())
}

fn root(out: &Path, td: &str, alg: KeyAlg) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    let (cert, key) = ca::create_root(td, alg)?;
    ca::write_file(&out.join("ca.key"), &key, 0o600)?;
    ca::write_file(&out.join(ca::CA_CERT_FILE), &cert, 0o644)?;
    Ok(())
}

fn issuer(root_dir: &Path, out: &Path, td: &str, alg: KeyAlg, ttl: Duration) -> anyhow::Result<()> {
    let read = |f: &str| {
        let p = root_dir.join(f);
        std::fs::read_to_string(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
    };
    let (ca_pem, key_pem) = (read(ca::CA_CERT_FILE)?, read("ca.key")?);
    let root = ca::root_issuer(&ca_pem, &key_pem)?;
    let (cert, key) = ca::new_issuer(&root, td, alg, ttl)?;
    std::fs::create_dir_all(out).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    // Key first: a watcher that sees the new certificate finds its key.
    ca::write_file(&out.join(ca::ISSUER_KEY_FILE), &key, 0o600)?;
    ca::write_file(&out.join(ca::ISSUER_CERT_FILE), &cert, 0o644)?;
    ca::write_file(&out.join(ca::CA_CERT_FILE), &ca_pem, 0o644)?;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// `24h`, `15m`, `30s`, `500ms`, or combinations like `1h30m`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_end = rest[n_end..]
            .find(|c: char| c.is_ascii_digit())
            .map_or(rest.len(), |i| n_end + i);
        let n: u64 = rest[..n_end]
            .parse()
            .map_err(|_| format!("{s:?} is not a duration such as 24h or 30s"))?;
        let unit = match &rest[n_end..unit_end] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            u => return Err(format!("{s:?}: unknown unit {u:?} (ms, s, m, h)")),
        };
        total += unit * u32::try_from(n).map_err(|_| format!("{s:?} is too long"))?;
        rest = &rest[unit_end..];
    }
    Ok(total)
}
