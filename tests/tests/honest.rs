//! A new user's first day: mistakes are named, not swallowed (log level
//! typos, unknown YAML fields and kinds, access control without mTLS, a
//! plain caller at an mTLS callee), every flag of every binary says what
//! it does, and what the sidecar reports is what it does (no gauges for
//! a topic it only publishes to, daprd's answer to a wrong method).

use std::process::Command;
use std::time::{Duration, Instant};

use skiff_tests::*;

/// Waits until the file holds `what` (log lines arrive a moment after
/// the fact they report); its text either way.
async fn log_with(path: &std::path::Path, what: &str) -> String {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(what) || Instant::now() > end {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn a_log_level_typo_is_refused_not_silence() {
    let o = Command::new(bin("skiffd"))
        .args(["--app-id", "a", "--log-level", "warning"])
        .output()
        .expect("skiffd");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("'warning'") && err.contains("trace, debug, info, warn, error, fatal"),
        "{err}"
    );
}

/// The option entries of a `--help` text and whether each has words
/// after its name (same line, or the next, indented further).
fn undescribed(help: &str) -> Vec<String> {
    let lines: Vec<&str> = help.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        if !(t.starts_with("--") || (t.starts_with('-') && t.chars().nth(1) != Some('-')))
            || l.len() - t.len() > 6
        {
            continue;
        }
        // Same line: two spaces or more after the flag and its value.
        let same = t
            .split_once("  ")
            .map(|(_, rest)| rest.trim())
            .filter(|r| !r.is_empty() && !r.starts_with('['));
        let next = lines
            .get(i + 1)
            .map(|n| n.trim())
            .filter(|n| !n.is_empty() && !n.starts_with('[') && !n.starts_with('-'));
        if same.is_none() && next.is_none() {
            out.push(t.to_owned());
        }
    }
    out
}

#[test]
fn every_flag_of_every_binary_is_described() {
    let mut runs: Vec<(&str, Vec<&str>)> = vec![
        ("skiffd", vec![]),
        ("skiff-sentry", vec![]),
        ("skiff-sentry", vec!["token"]),
        ("skiff-sentry", vec!["root"]),
        ("skiff-sentry", vec!["issuer"]),
    ];
    for c in [
        "init",
        "uninstall",
        "run",
        "list",
        "stop",
        "invoke",
        "publish",
        "logs",
        "components",
        "dashboard",
        "version",
    ] {
        runs.push(("skiff", vec![c]));
    }
    let mut missing = Vec::new();
    for (b, args) in &runs {
        let o = Command::new(bin(b))
            .args(args)
            .arg("--help")
            .output()
            .expect("help");
        assert!(o.status.success(), "{b} {args:?} --help");
        let help = String::from_utf8_lossy(&o.stdout);
        assert!(help.contains("--help"), "{help}");
        for f in undescribed(&help) {
            missing.push(format!("{b} {}: {f}", args.join(" ")));
        }
    }
    assert!(
        missing.is_empty(),
        "flags without a description:\n{missing:#?}"
    );
    // Offered values are ones that work: https and grpcs are refused.
    let o = Command::new(bin("skiffd"))
        .arg("--help")
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(
        help.contains("[possible values: http, grpc, h2c]"),
        "{help}"
    );
}

#[test]
fn undescribed_flags_are_found() {
    let help = "Options:\n      --app-id <APP_ID>\n          \n      --port <P>  [default: 1]\n      --ok <X>\n          Does things\n  -h, --help  Print help\n";
    assert_eq!(
        undescribed(help),
        ["--app-id <APP_ID>", "--port <P>  [default: 1]"]
    );
}

const CONFIG_HEAD: &str =
    "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: c\nspec:\n";

#[tokio::test]
async fn unknown_fields_and_kinds_are_named_and_guarded_typos_refuse() {
    let w = World::new();
    let res = w.home.path().join("res");
    std::fs::create_dir_all(&res).expect("mkdir");
    std::fs::write(
        res.join("resiliency.yaml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: r\nspec:\n  targts:\n    apps: {}\n",
    )
    .expect("w");
    std::fs::write(
        res.join("store.yaml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Componnt\nmetadata:\n  name: s\nspec:\n  type: state.in-memory\n",
    )
    .expect("w");
    let conf = w.home.path().join("config.yaml");
    std::fs::write(
        &conf,
        format!("{CONFIG_HEAD}  tracing:\n    samplingRat: \"1\"\n"),
    )
    .expect("w");
    let log = w.home.path().join("s.log");
    let mut o = SidecarOpts::default().config(&conf);
    o.args
        .extend(["--resources-path".into(), res.display().to_string()]);
    o.log_file = Some(log.clone());
    let _s = w.sidecar("typos", o);
    let text = log_with(&log, "samplingRat").await;
    for want in [
        "resiliency.yaml: Resiliency r: unknown field spec.targts (did you mean spec.targets?); it is ignored",
        "store.yaml: kind \"Componnt\" is not a kind Skiff knows (did you mean Component?)",
        "config.yaml: Configuration c: unknown field spec.tracing.samplingRat (did you mean spec.tracing.samplingRate?)",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // Ignoring this one would leave every caller allowed: refused.
    std::fs::write(
        &conf,
        format!("{CONFIG_HEAD}  accesControl:\n    defaultAction: deny\n"),
    )
    .expect("w");
    let err = w.skiffd_fails("guarded", &["--config", &conf.display().to_string()]);
    assert!(
        err.contains("unknown field spec.accesControl (did you mean spec.accessControl?)")
            && err.contains("weaken security"),
        "{err}"
    );
}

#[tokio::test]
async fn access_control_without_mtls_is_said_at_start() {
    let w = World::new();
    let conf = w.home.path().join("acl.yaml");
    std::fs::write(
        &conf,
        format!("{CONFIG_HEAD}  accessControl:\n    defaultAction: deny\n    policies:\n    - appId: caller\n      namespace: default\n      defaultAction: allow\n"),
    )
    .expect("w");
    let log = w.home.path().join("acl.log");
    let mut o = SidecarOpts::default().config(&conf);
    o.log_file = Some(log.clone());
    let _s = w.sidecar("guarded", o);
    let text = log_with(&log, "accessControl needs mTLS").await;
    assert!(
        text.contains("accessControl needs mTLS (--enable-mtls)"),
        "{text}"
    );
}

#[tokio::test]
async fn a_plain_caller_hears_that_the_callee_requires_mtls() {
    let w = World::new();
    let echo = w.echo("callee");
    let callee = w.sidecar("callee", SidecarOpts::app(echo.http_port).mtls());
    let caller = w.sidecar("caller", SidecarOpts::default());
    let r = send(
        &http_client(),
        request(
            "POST",
            &format!("{}/v1.0/invoke/callee/method/echo", caller.http()),
            "x",
        ),
    )
    .await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(
        r.text().contains("requires mTLS") && r.text().contains("ERR_DIRECT_INVOKE"),
        "{}",
        r.text()
    );
    drop(callee);
}

#[tokio::test]
async fn a_publisher_reports_no_subscription_gauges_and_a_wrong_method_is_daprs_404() {
    let w = World::new();
    w.component("bus.yaml", &component_yaml("bus", "pubsub.in-memory", &[]));
    let s = w.sidecar("publisher", SidecarOpts::default());
    let c = http_client();
    let url = format!("{}/v1.0/publish/bus/audit", s.http());
    let r = send(&c, request("POST", &url, "{\"a\":1}")).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let scrape = s.scrape().await;
    assert!(
        scrape
            .contains("dapr_component_pubsub_egress_count{app_id=\"publisher\",component=\"bus\""),
        "{scrape}"
    );
    assert!(
        !scrape.contains("skiff_pubsub_in_flight{")
            && !scrape.contains("skiff_pubsub_retry_waiting{"),
        "{scrape}"
    );
    // GET on a publish route: as any route called with a method it does
    // not take (daprd answers 404 for both).
    let r = send(&c, request("GET", &url, "")).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("ERR_NOT_FOUND"), "{}", r.text());
}

#[test]
fn minting_a_token_without_the_signing_key_says_how_to_get_one() {
    let w = World::new();
    let creds = w.home.path().join("creds");
    let o = Command::new(bin("skiff-sentry"))
        .args(["token", "--app-id", "orders", "--issuer-credentials"])
        .arg(&creds)
        .output()
        .expect("skiff-sentry");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no JWT signing key at") && err.contains("--token-validator jwks"),
        "{err}"
    );
    assert!(o.stdout.is_empty(), "a token was printed");
}
