//! `skiff-perf` end to end: a short bench of direct versus skiffd whose JSON
//! must hold every figure with sane values, and one-line errors on bad input.

use std::process::Command;

use skiff_tests::*;

#[test]
fn a_short_bench_reports_every_figure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (json, svg) = (dir.path().join("bench.json"), dir.path().join("bench.svg"));
    let out = Command::new(bin("skiff-perf"))
        .args([
            "bench",
            "--paths",
            "direct,skiff",
            "--rounds",
            "3",
            "--seconds",
            "0.3",
            "--json",
        ])
        .arg(&json)
        .arg("--plot")
        .arg(&svg)
        .output()
        .expect("run skiff-perf bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("| skiff |") && stdout.contains("### grpc rate_1000"),
        "{stdout}"
    );

    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("valid JSON");
    // 2 paths × 2 protocols × 3 scenarios.
    assert_eq!(rows.len(), 12, "{rows:#?}");
    for r in &rows {
        let path = r["path"].as_str().expect("path");
        let num = |k: &str| {
            r[k].as_f64()
                .unwrap_or_else(|| panic!("{path}: {k} missing in {r}"))
        };
        let lat = |k: &str| {
            r["latency"][k]
                .as_u64()
                .unwrap_or_else(|| panic!("{path}: latency.{k} missing in {r}"))
        };
        assert!(["direct", "skiff"].contains(&path));
        assert!(["http", "grpc"].contains(&r["proto"].as_str().expect("proto")));
        assert!(
            ["serial", "rate_1000", "max_40"].contains(&r["scenario"].as_str().expect("scenario"))
        );
        assert_eq!(num("rounds"), 3.0);
        assert_eq!(num("errors"), 0.0, "{r}");
        assert!(lat("count") > 0, "{r}");
        let (p50, p90, p99, p999, max) = (
            lat("p50_us"),
            lat("p90_us"),
            lat("p99_us"),
            lat("p999_us"),
            lat("max_us"),
        );
        assert!(
            0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max,
            "{r}"
        );
        assert!(num("throughput_rps") > 0.0, "{r}");
        assert!(num("generator_cpu_cores") > 0.0, "{r}");
        for k in [
            "added_p50_us",
            "added_p90_us",
            "added_p99_us",
            "throughput_vs_direct",
            "proxy_cpu_s_per_1000",
            "proxy_peak_rss_kib",
        ] {
            num(k);
        }
        assert!(!r["curve"].as_array().expect("curve").is_empty(), "{r}");
        if path == "direct" {
            assert_eq!(num("added_p50_us"), 0.0);
            assert_eq!(num("throughput_vs_direct"), 1.0);
            assert_eq!(num("proxy_peak_rss_kib"), 0.0);
        } else {
            assert!(
                num("proxy_cpu_s_per_1000") > 0.0,
                "skiffd CPU was measured: {r}"
            );
            assert!(
                num("proxy_peak_rss_kib") > 0.0,
                "skiffd RSS was measured: {r}"
            );
            let note = r["note"].as_str().unwrap_or_default();
            assert!(note.contains("skiffd") && note.contains("mTLS"), "{r}");
        }
        if r["scenario"] == "rate_1000" {
            // The open loop holds its rate (these runs are short, so loosely).
            assert!(num("throughput_rps") > 800.0, "{r}");
        }
    }
    let svg = std::fs::read_to_string(&svg).expect("svg written");
    assert!(
        svg.starts_with("<svg") && svg.contains("polyline") && svg.trim_end().ends_with("</svg>")
    );
}

#[test]
fn bad_input_is_one_line_and_a_failure() {
    let port = free_port();
    for args in [
        vec![
            "load".to_string(),
            format!("http://127.0.0.1:{port}/x"),
            "--duration".into(),
            "1s".into(),
        ],
        vec!["load".into(), "not a url".into()],
        vec!["load".into(), "ftp://127.0.0.1/x".into()],
        vec![
            "load".into(),
            "http://127.0.0.1:1/x".into(),
            "--rate=-5".into(),
        ],
        vec!["bench".into(), "--rounds".into(), "1".into()],
    ] {
        let out = Command::new(bin("skiff-perf"))
            .args(&args)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: one line, got {err:?}"
        );
        assert!(
            err.starts_with("skiff-perf: ") || err.starts_with("error: "),
            "{args:?}: {err}"
        );
    }
}

#[tokio::test]
async fn load_drives_skiffd_in_both_loops() {
    let w = World::new();
    let echo = w.echo("e");
    let _callee = w.sidecar("web", SidecarOpts::app(echo.http_port));
    let caller = w.sidecar("caller", SidecarOpts::default());
    let url = format!("{}/v1.0/invoke/web/method/echo", caller.http());
    for mode in [["--rate", "500"], ["--concurrency", "8"]] {
        let out = Command::new(bin("skiff-perf"))
            .args([
                "load",
                &url,
                "--duration",
                "0.5s",
                "--warmup",
                "0.1s",
                "--connections",
                "8",
                "--payload-size",
                "1024",
                "--json",
            ])
            .args(mode)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert!(r["ok"].as_u64().unwrap_or(0) > 50, "{r}");
        assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    }
}

/// A server that accepts and never answers: the open loop must count every
/// request as a timeout and still finish, for HTTP/1.1 and h2 alike.
#[tokio::test]
async fn open_loop_times_out_a_silent_server_and_finishes() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s); // keep it open, read nothing, say nothing
        }
    });
    for proto in ["http1", "h2c"] {
        let out = Command::new(bin("skiff-perf"))
            .args([
                "load",
                &format!("http://127.0.0.1:{port}/x"),
                "--proto",
                proto,
                "--rate",
                "100",
                "--duration",
                "0.5s",
                "--warmup",
                "0s",
                "--timeout",
                "200ms",
                "--connections",
                "64",
                "--json",
            ])
            .output()
            .expect("run");
        // Nothing succeeded, so the run fails, naming the errors by kind.
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{proto}: {err}");
        let kinds: serde_json::Value = err
            .find('{')
            .and_then(|i| serde_json::from_str(err[i..].trim()).ok())
            .unwrap_or_else(|| panic!("{proto}: no error kinds in {err:?}"));
        let timeouts = kinds["timeout"].as_u64().unwrap_or(0);
        assert!(timeouts >= 40, "{proto}: {err}");
        assert_eq!(
            kinds.as_object().map(|o| o.len()),
            Some(1),
            "{proto}: {err}"
        );
    }
}

/// The hot RPCs stay within their allocation budget: `skiff-allocs
/// --check` counts exactly (not a timing), so a change that adds an
/// allocation per call to a hot path fails here until its budget and its
/// reason are written down in `skiff-allocs`.
#[test]
fn the_hot_rpcs_stay_within_their_allocation_budget() {
    let out = Command::new(bin("skiff-allocs"))
        .args(["--calls", "300", "--check"])
        .output()
        .expect("run skiff-allocs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "over budget: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    for rpc in ["GetState", "SaveState", "PublishEvent", "InvokeService"] {
        assert!(stdout.contains(&format!("| grpc | {rpc} |")), "{stdout}");
        assert!(stdout.contains(&format!("| http | {rpc} |")), "{stdout}");
    }
}

/// `skiff-perf placement` runs rounds to their end and reports both
/// kinds; a run it cannot make is one line and a failure.
#[test]
fn placement_rounds_are_measured() {
    let out = Command::new(bin("skiff-perf"))
        .args(["placement", "--hosts", "3", "--rounds", "4"])
        .output()
        .expect("run skiff-perf placement");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("| a host leaves | 2 |"), "{stdout}");
    assert!(stdout.contains("| a host joins | 2 |"), "{stdout}");
    let bad = Command::new(bin("skiff-perf"))
        .args(["placement", "--hosts", "1"])
        .output()
        .expect("run skiff-perf placement");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
