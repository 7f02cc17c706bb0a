//! `skiff init` and `skiff uninstall`: the local set-up, with no container
//! engine. Init makes the local CA (root + issuer) the sidecars sign their
//! SPIFFE certificates with, a default Configuration, and `components/`
//! with the embedded state store and durable broker under the names Dapr's
//! quickstarts use (`statestore`, `pubsub`), or Redis ones with `--redis`,
//! plus a lock store (`lockstore`: in memory, or Redis) and a local secret
//! store (`localsecretstore`, reading `$SKIFF_HOME/secrets.json`).
//! It is idempotent: what exists is kept (the CA too, unless `--force`).

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use skiff_sentry::ca::{self, KeyAlg};

use crate::home::Home;
use crate::records;

/// What init writes as the default Configuration (Dapr's `config.yaml`).
const DEFAULT_CONFIG: &str = "\
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: skiffConfig
spec:
  metric:
    enabled: true
  # Traces: set a sampling rate and an OTLP collector, e.g.
  # tracing:
  #   samplingRate: \"1\"
  #   otel:
  #     endpointAddress: 127.0.0.1:4317
  #     protocol: grpc
  #     isSecure: false
";

pub struct InitOptions {
    pub force: bool,
    pub redis: Option<String>,
    pub trust_domain: String,
}

pub fn init(home: &Home, o: &InitOptions) -> Result<()> {
    let root = home.path();
    step(&format!("Skiff home: {}", root.display()));
    for dir in [home.components(), home.runs(), home.logs()] {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    local_ca(home, o)?;
    if write_new(&home.config(), DEFAULT_CONFIG, false)? {
        done(&format!(
            "wrote the default Configuration {}",
            home.config().display()
        ));
    } else {
        done(&format!("kept {}", home.config().display()));
    }
    let (state, pubsub, lock) = match &o.redis {
        Some(addr) => (
            component("statestore", "state.redis", &[("redisHost", addr.clone())]),
            component("pubsub", "pubsub.redis", &[("redisHost", addr.clone())]),
            component("lockstore", "lock.redis", &[("redisHost", addr.clone())]),
        ),
        None => (
            sqlite_state(root),
            sqlite_pubsub(root),
            component("lockstore", "lock.in-memory", &[]),
        ),
    };
    let secrets_file = root.join("secrets.json");
    if !secrets_file.exists() {
        ca::write_file(&secrets_file, "{}\n", 0o600).context("writing secrets.json")?;
    }
    let secrets = component(
        "localsecretstore",
        "secretstores.local.file",
        &[
            ("secretsFile", secrets_file.display().to_string()),
            ("nestedSeparator", ":".to_owned()),
        ],
    );
    // --redis replaces the embedded defaults: that is what it asks for.
    let replace = o.redis.is_some();
    for (file, yaml, what, replace) in [
        (
            "statestore.yaml",
            state,
            "state store `statestore`",
            replace,
        ),
        ("pubsub.yaml", pubsub, "pub/sub `pubsub`", replace),
        ("lockstore.yaml", lock, "lock store `lockstore`", replace),
        (
            "secretstore.yaml",
            secrets,
            "secret store `localsecretstore`",
            false,
        ),
    ] {
        let path = home.components().join(file);
        if write_new(&path, &yaml, replace)? {
            done(&format!("wrote the {what}: {}", path.display()));
        } else {
            done(&format!("kept the {what}: {}", path.display()));
        }
    }
    println!(
        "\nSkiff is ready. Run an app with its sidecar:\n  skiff run --app-id myapp --app-port 8080 -- <your app command>"
    );
    Ok(())
}

/// Creates the CA unless one exists; `--force` makes a new one beside the
/// old and swaps them, so a failure leaves the old one in place.
fn local_ca(home: &Home, o: &InitOptions) -> Result<()> {
    let dir = home.sentry();
    let exists = dir.join(ca::CA_CERT_FILE).is_file();
    if exists && !o.force {
        ca::Authority::load(&dir).context(
            "the local CA exists but does not load; `skiff init --force` makes a new one",
        )?;
        done(&format!(
            "kept the local CA in {} (issuer valid until {})",
            dir.display(),
            expiry_text(&dir)
        ));
        return Ok(());
    }
    step("creating the local CA (root + issuer)");
    let fresh = home.path().join("sentry.new");
    let _ = fs::remove_dir_all(&fresh);
    ca::create(&fresh, &o.trust_domain, KeyAlg::EcdsaP256).context("creating the local CA")?;
    if exists {
        let old = home.path().join("sentry.old");
        let _ = fs::remove_dir_all(&old);
        fs::rename(&dir, &old).context("moving the old CA aside")?;
        fs::rename(&fresh, &dir).context("installing the new CA")?;
        let _ = fs::remove_dir_all(&old);
        done(&format!(
            "rotated the local CA in {}: running sidecars keep their certificates until they restart",
            dir.display()
        ));
    } else {
        fs::rename(&fresh, &dir).context("installing the local CA")?;
        done(&format!(
            "created the local CA in {} (trust domain {}, issuer valid until {})",
            dir.display(),
            o.trust_domain,
            expiry_text(&dir)
        ));
    }
    Ok(())
}

/// The issuer certificate's expiry, as seconds since the epoch.
pub fn issuer_expiry(sentry_dir: &Path) -> Option<u64> {
    let pem = fs::read(sentry_dir.join(ca::ISSUER_CERT_FILE)).ok()?;
    let der = skiff_sentry::pem::certs(&pem, "issuer.crt")
        .ok()?
        .into_iter()
        .next()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    u64::try_from(cert.validity().not_after.timestamp()).ok()
}

fn expiry_text(dir: &Path) -> String {
    issuer_expiry(dir).map_or_else(|| "?".to_owned(), records::date_text)
}

/// Writes `path` unless it exists (or `replace`); whether it wrote.
fn write_new(path: &Path, contents: &str, replace: bool) -> Result<bool> {
    if path.exists() && !replace {
        return Ok(false);
    }
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(true)
}

fn component(name: &str, ty: &str, meta: &[(&str, String)]) -> String {
    let mut y = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: {ty}\n  version: v1\n  metadata:\n"
    );
    for (k, v) in meta {
        y.push_str(&format!("  - name: {k}\n    value: \"{v}\"\n"));
    }
    if meta.is_empty() {
        y = y.replace("  metadata:\n", "  metadata: []\n");
    }
    y
}

fn sqlite_state(root: &Path) -> String {
    component(
        "statestore",
        "state.sqlite",
        &[(
            "connectionString",
            root.join("state.db").display().to_string(),
        )],
    )
}

fn sqlite_pubsub(root: &Path) -> String {
    component(
        "pubsub",
        "pubsub.skiff.sqlite",
        &[(
            "connectionString",
            root.join("pubsub.db").display().to_string(),
        )],
    )
}

pub struct UninstallOptions {
    pub all: bool,
}

/// Removes what init wrote; `--all` removes the whole home (the CA and
/// the embedded stores' data too). Refuses while apps run from it.
pub fn uninstall(home: &Home, o: &UninstallOptions) -> Result<()> {
    let running = records::live(home);
    if !running.is_empty() {
        let ids: Vec<&str> = running.iter().map(|r| r.app_id.as_str()).collect();
        bail!(
            "apps are running from {}: {}; stop them first with `skiff stop -a <id>`",
            home.path().display(),
            ids.join(", ")
        );
    }
    if !home.path().exists() {
        done(&format!(
            "nothing to remove: {} does not exist",
            home.path().display()
        ));
        return Ok(());
    }
    if o.all {
        fs::remove_dir_all(home.path())
            .with_context(|| format!("removing {}", home.path().display()))?;
        done(&format!("removed {}", home.path().display()));
        return Ok(());
    }
    for p in [
        home.components(),
        home.runs(),
        home.logs(),
        home.root.join("registry"),
    ] {
        if p.exists() {
            fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
            done(&format!("removed {}", p.display()));
        }
    }
    if home.config().exists() {
        fs::remove_file(home.config())
            .with_context(|| format!("removing {}", home.config().display()))?;
        done(&format!("removed {}", home.config().display()));
    }
    println!(
        "kept the local CA and the embedded stores' data in {}; `skiff uninstall --all` removes them too",
        home.path().display()
    );
    Ok(())
}

fn step(s: &str) {
    println!("⌛ {s}");
}

fn done(s: &str) {
    println!("✅ {s}");
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}
