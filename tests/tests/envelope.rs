//! The component envelope on the bulk paths: a bulk publish runs under
//! the component's `targets.components.<name>.outbound` policy (retries,
//! breaker), a bulk delivery under its `inbound` policy (timeout, retries,
//! then the dead letter), as single publishes and deliveries always did.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use skiff_tests::servers::Redis;
use skiff_tests::subscriber::{HttpSubscriber, Reply, wait_subscribed};
use skiff_tests::*;

const WAIT: Duration = Duration::from_secs(20);

/// A component of type `ty` on `r`, with short timeouts so a Redis that
/// went away fails each attempt quickly.
fn on_redis(name: &str, ty: &str, r: &Redis) -> String {
    component_yaml(
        name,
        ty,
        &[
            ("redisHost", r.addr()),
            ("dialTimeout", "300ms".into()),
            ("readTimeout", "300ms".into()),
        ],
    )
}

/// A Resiliency document `doc` giving `component`'s `direction` two
/// retries 50 ms apart, and a 300 ms timeout and a breaker that trips
/// after three failures when asked.
fn policy_doc(doc: &str, component: &str, direction: &str, timeout: bool, breaker: bool) -> String {
    let mut y = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: {doc}\nspec:\n  policies:\n    retries:\n      twice:\n        policy: constant\n        duration: 50ms\n        maxRetries: 2\n"
    );
    if timeout {
        y.push_str("    timeouts:\n      quick: 300ms\n");
    }
    if breaker {
        y.push_str("    circuitBreakers:\n      cb:\n        maxRequests: 1\n        timeout: 60s\n        trip: consecutiveFailures >= 3\n");
    }
    y.push_str(&format!(
        "  targets:\n    components:\n      {component}:\n        {direction}:\n          retry: twice\n"
    ));
    if timeout {
        y.push_str("          timeout: quick\n");
    }
    if breaker {
        y.push_str("          circuitBreaker: cb\n");
    }
    y
}

async fn post(s: &Sidecar, path: &str, body: String) -> Resp {
    let mut req = request("POST", &format!("{}{path}", s.http()), body);
    req.headers_mut()
        .insert("content-type", "application/json".parse().expect("ct"));
    send(&http_client(), req).await
}

fn entries(n: usize) -> String {
    let e: Vec<Value> = (0..n)
        .map(|i| json!({"entryId": i.to_string(), "event": {"n": i}, "contentType": "application/json"}))
        .collect();
    Value::Array(e).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_publish_runs_under_the_outbound_policy() {
    let w = World::new();
    let mut r = Redis::start(&w.home.path().join("redis"));
    w.component("ps.yaml", &on_redis("ps", "pubsub.redis", &r));
    w.component(
        "resiliency.yaml",
        &policy_doc("bus-policy", "ps", "outbound", false, true),
    );
    let s = w.sidecar("app", SidecarOpts::default());
    let ok = post(&s, "/v1.0-alpha1/publish/bulk/ps/t", entries(3)).await;
    assert_eq!(ok.status, 204, "{}", ok.text());

    r.proc.kill();
    let failed = post(&s, "/v1.0-alpha1/publish/bulk/ps/t", entries(3)).await;
    assert_eq!(failed.status, 500, "{}", failed.text());
    let m = s.scrape().await;
    let res = |policy: &str| {
        format!(
            "dapr_resiliency_activations_total{{app_id=\"app\",name=\"bus-policy\",policy=\"{policy}\",namespace=\"default\",flow_direction=\"outbound\",target=\"Pubsub_ps\",status=\"\"}}"
        )
    };
    assert_eq!(
        sample(&m, &res("retry")),
        2.0,
        "two retries of the batch:\n{m}"
    );
    // Three failed attempts tripped the breaker: the next batch is not sent.
    let open = post(&s, "/v1.0-alpha1/publish/bulk/ps/t", entries(2)).await;
    assert_eq!(open.status, 500);
    let body: Value = serde_json::from_slice(&open.body).expect("json");
    let errors: Vec<&str> = body["failedEntries"]
        .as_array()
        .expect("failedEntries")
        .iter()
        .map(|e| e["error"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(errors.len(), 2, "{body}");
    assert!(
        errors
            .iter()
            .all(|e| e.contains("circuit breaker cb is open")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_delivery_runs_under_the_inbound_policy() {
    let w = World::new();
    w.component(
        "ps.yaml",
        &component_yaml(
            "ps",
            "pubsub.skiff.sqlite",
            &[(
                "connectionString",
                w.home.path().join("ps.db").display().to_string(),
            )],
        ),
    );
    w.component(
        "resiliency.yaml",
        &policy_doc("inbound", "ps", "inbound", true, false),
    );
    let subs = json!([
        {"pubsubname": "ps", "topic": "bad", "route": "/bad", "deadLetterTopic": "bad-dead",
         "bulkSubscribe": {"enabled": true, "maxMessagesCount": 10, "maxAwaitDurationMs": 200}},
        {"pubsubname": "ps", "topic": "hang", "route": "/hang", "deadLetterTopic": "bad-dead",
         "bulkSubscribe": {"enabled": true, "maxMessagesCount": 10, "maxAwaitDurationMs": 200}},
        {"pubsubname": "ps", "topic": "bad-dead", "route": "/dead"},
    ]);
    let app = HttpSubscriber::start(
        Some(subs),
        Arc::new(|path, _| match path {
            "/bad" => Reply::http(503),
            "/hang" => Reply::ok().after(Duration::from_secs(3)),
            _ => Reply::ok(),
        }),
    )
    .await;
    let s = w.sidecar("sub", SidecarOpts::app(app.port));
    wait_subscribed(&s, 3).await;
    for topic in ["bad", "hang"] {
        let r = post(
            &s,
            &format!("/v1.0-alpha1/publish/bulk/ps/{topic}"),
            entries(2),
        )
        .await;
        assert_eq!(r.status, 204, "{}", r.text());
    }
    let got = app
        .rec
        .wait_until(WAIT, "all four dead-lettered", |g| {
            g.iter().filter(|d| d.path == "/dead").count() >= 4
        })
        .await;
    // One call and two retries per batch (a batch that was split by the
    // gathering window counts per part), then the dead letter.
    let calls = |p: &str| got.iter().filter(|d| d.path == p).count();
    let entries_in = |p: &str| {
        got.iter()
            .filter(|d| d.path == p)
            .map(|d| d.event["entries"].as_array().map_or(0, Vec::len))
            .sum::<usize>()
    };
    assert_eq!(entries_in("/bad"), 6, "{} calls", calls("/bad"));
    // The hanging app would have answered SUCCESS after 3 s: its two
    // entries are among the four dead letters only because the timeout
    // cut each of its calls (the app never finished one to record it).
    let dead: Vec<u64> = got
        .iter()
        .filter(|d| d.path == "/dead")
        .filter_map(|d| d.event["data"]["n"].as_u64())
        .collect();
    assert_eq!(dead.len(), 4, "{dead:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = app.rec.got();
    assert_eq!(
        again.iter().filter(|d| d.path == "/bad").count(),
        calls("/bad"),
        "nothing after the retries ran out"
    );
}

/// `targets.components.<lock>.outbound`: a lock store that went away is
/// retried, then its breaker opens; the `dapr_component_lock_*` series and
/// the resiliency series carry the component's labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_calls_run_under_the_outbound_policy() {
    let w = World::new();
    let mut r = Redis::start(&w.home.path().join("redis"));
    w.component("locks.yaml", &on_redis("locks", "lock.redis", &r));
    w.component(
        "resiliency.yaml",
        &policy_doc("lock-policy", "locks", "outbound", false, true),
    );
    let s = w.sidecar("app", SidecarOpts::default());
    let lock = |owner: &str| {
        json!({"resourceId": "r1", "lockOwner": owner, "expiryInSeconds": 30}).to_string()
    };
    let ok = post(&s, "/v1.0-alpha1/lock/locks", lock("a")).await;
    assert_eq!(
        (ok.status.as_u16(), ok.text()),
        (200, r#"{"success":true}"#.into())
    );

    r.proc.kill();
    let down = post(&s, "/v1.0-alpha1/lock/locks", lock("b")).await;
    assert_eq!(down.status, 500, "{}", down.text());
    assert!(down.text().contains("ERR_TRY_LOCK"), "{}", down.text());
    let open = post(&s, "/v1.0-alpha1/lock/locks", lock("b")).await;
    assert!(
        open.text().contains("circuit breaker cb is open"),
        "{}",
        open.text()
    );
    let m = s.scrape().await;
    let res = |policy: &str| {
        format!(
            "dapr_resiliency_activations_total{{app_id=\"app\",name=\"lock-policy\",policy=\"{policy}\",namespace=\"default\",flow_direction=\"outbound\",target=\"Lock_locks\",status=\"\"}}"
        )
    };
    assert_eq!(sample(&m, &res("retry")), 2.0, "{m}");
    let ops = |ok: &str| {
        format!(
            "dapr_component_lock_count{{app_id=\"app\",component=\"locks\",namespace=\"default\",operation=\"try_lock\",success=\"{ok}\"}}"
        )
    };
    assert_eq!(sample(&m, &ops("true")), 1.0, "{m}");
    assert_eq!(sample(&m, &ops("false")), 2.0, "{m}");
}

/// Component policies reload with the policy files, as app policies
/// always did: a retry policy written while the sidecar runs applies to
/// the next lock call, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_policies_reload_with_the_files() {
    let w = World::new();
    let mut r = Redis::start(&w.home.path().join("redis"));
    w.component("locks.yaml", &on_redis("locks", "lock.redis", &r));
    let s = w.sidecar("app", SidecarOpts::default());
    r.proc.kill();
    let body = json!({"resourceId": "r", "lockOwner": "o", "expiryInSeconds": 5}).to_string();
    let retries = |m: &str| {
        sample(
            m,
            "dapr_resiliency_activations_total{app_id=\"app\",name=\"late-policy\",policy=\"retry\",namespace=\"default\",flow_direction=\"outbound\",target=\"Lock_locks\",status=\"\"}",
        )
    };
    let down = post(&s, "/v1.0-alpha1/lock/locks", body.clone()).await;
    assert_eq!(down.status, 500);
    assert_eq!(retries(&s.scrape().await), 0.0);

    w.component(
        "resiliency.yaml",
        &policy_doc("late-policy", "locks", "outbound", false, false),
    );
    let end = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = post(&s, "/v1.0-alpha1/lock/locks", body.clone()).await;
        assert_eq!(r.status, 500);
        let m = s.scrape().await;
        if retries(&m) >= 2.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "the new policy never applied:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `targets.components.<store>.outbound` on configuration reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_reads_run_under_the_outbound_policy() {
    let w = World::new();
    let mut r = Redis::start(&w.home.path().join("redis"));
    w.component("conf.yaml", &on_redis("conf", "configuration.redis", &r));
    w.component(
        "resiliency.yaml",
        &policy_doc("conf-policy", "conf", "outbound", false, false),
    );
    r.cli(&["set", "greeting", "hello||1"]);
    let s = w.sidecar("app", SidecarOpts::default());
    let get = || async {
        send(
            &http_client(),
            request(
                "GET",
                &format!("{}/v1.0/configuration/conf?key=greeting", s.http()),
                "",
            ),
        )
        .await
    };
    let ok = get().await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert!(ok.text().contains("hello"), "{}", ok.text());
    r.proc.kill();
    let down = get().await;
    assert_eq!(down.status, 500, "{}", down.text());
    let m = s.scrape().await;
    assert_eq!(
        sample(
            &m,
            "dapr_resiliency_activations_total{app_id=\"app\",name=\"conf-policy\",policy=\"retry\",namespace=\"default\",flow_direction=\"outbound\",target=\"Configuration_conf\",status=\"\"}"
        ),
        2.0,
        "{m}"
    );
}

/// `targets.components.<store>.inbound` on configuration updates to an
/// HTTP app, through the same inbound runner as input bindings: an update
/// the app fails is sent again while the policy allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_updates_run_under_the_inbound_policy() {
    let w = World::new();
    let r = Redis::start_with(
        &w.home.path().join("redis"),
        free_port(),
        &["--notify-keyspace-events", "KA"],
    );
    w.component("conf.yaml", &on_redis("conf", "configuration.redis", &r));
    w.component(
        "resiliency.yaml",
        &policy_doc("conf-in", "conf", "inbound", false, false),
    );
    // The app fails the first update it sees, then takes them.
    let seen = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let n = seen.clone();
    let app = HttpSubscriber::start(
        None,
        Arc::new(move |_: &str, _: &Value| {
            if n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                Reply::http(500)
            } else {
                Reply::ok()
            }
        }),
    )
    .await;
    let s = w.sidecar("cfgapp", SidecarOpts::app(app.port));
    let sub = send(
        &http_client(),
        request(
            "GET",
            &format!("{}/v1.0/configuration/conf/subscribe?key=color", s.http()),
            "",
        ),
    )
    .await;
    assert_eq!(sub.status, 200, "{}", sub.text());
    r.cli(&["SET", "color", "blue||7"]);
    let got = app.rec.wait_for(2, "/configuration/conf/color", WAIT).await;
    assert_eq!(got[1].event["items"]["color"]["value"], "blue");
    let m = s.scrape().await;

    assert_eq!(
        sample(
            &m,
            "dapr_resiliency_activations_total{app_id=\"cfgapp\",name=\"conf-in\",policy=\"retry\",namespace=\"default\",flow_direction=\"inbound\",target=\"Configuration_conf\",status=\"\"}"
        ),
        1.0,
        "{m}"
    );
}
