//! The lock block through real sidecars: one conformance suite (the
//! components-contrib lock behaviours, over HTTP and gRPC, with Dapr's
//! error answers in daprd's order) run against `lock.in-memory` and
//! `lock.redis` on a real Redis; the key layout (`keyPrefix`) in Redis;
//! two sidecars contending for one lock; a Redis outage and recovery.

use std::time::Duration;

use serde_json::{Value, json};
use skiff_proto::runtime as pb;
use skiff_proto::runtime::dapr_client::DaprClient;
use skiff_tests::servers::Redis;
use skiff_tests::*;

enum Driver {
    Memory,
    Redis(Redis),
}

impl Driver {
    fn yaml(&self, name: &str, extra: &[(&str, String)]) -> String {
        let (ty, mut meta) = match self {
            Self::Memory => ("lock.in-memory", vec![]),
            Self::Redis(r) => ("lock.redis", vec![("redisHost", r.addr())]),
        };
        meta.extend_from_slice(extra);
        component_yaml(name, ty, &meta)
    }
}

async fn post(c: &HttpClient, s: &Sidecar, path: &str, body: Value) -> (u16, Value) {
    let r = send(
        c,
        request("POST", &format!("{}{path}", s.http()), body.to_string()),
    )
    .await;
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status.as_u16(), v)
}

async fn lock(c: &HttpClient, s: &Sidecar, store: &str, id: &str, owner: &str, secs: i64) -> Value {
    let (status, v) = post(
        c,
        s,
        &format!("/v1.0-alpha1/lock/{store}"),
        json!({"resourceId": id, "lockOwner": owner, "expiryInSeconds": secs}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v
}

async fn unlock(c: &HttpClient, s: &Sidecar, store: &str, id: &str, owner: &str) -> Value {
    let (status, v) = post(
        c,
        s,
        &format!("/v1.0-alpha1/unlock/{store}"),
        json!({"resourceId": id, "lockOwner": owner}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v
}

async fn conformance(d: Driver) {
    let w = World::new();
    w.component("lock.yaml", &d.yaml("ls", &[]));
    let s = w.sidecar("locker", SidecarOpts::default());
    let c = http_client();

    // HTTP: components-contrib's lock conformance.
    assert_eq!(
        lock(&c, &s, "ls", "lock1", "owner1", 15).await,
        json!({"success": true})
    );
    assert_eq!(
        lock(&c, &s, "ls", "lock2", "owner1", 1).await,
        json!({"success": true})
    );
    // Held: success false, not an error.
    assert_eq!(
        lock(&c, &s, "ls", "lock1", "owner2", 15).await,
        json!({"success": false})
    );
    assert_eq!(
        unlock(&c, &s, "ls", "nosuch", "owner1").await,
        json!({"status": 1})
    );
    assert_eq!(
        unlock(&c, &s, "ls", "lock1", "owner2").await,
        json!({"status": 2})
    );
    assert_eq!(
        unlock(&c, &s, "ls", "lock1", "owner1").await,
        json!({"status": 0})
    );
    assert_eq!(
        lock(&c, &s, "ls", "lock1", "owner2", 15).await,
        json!({"success": true})
    );
    // A lock never outlives its expiry.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(
        lock(&c, &s, "ls", "lock2", "owner2", 5).await,
        json!({"success": true})
    );
    // protojson: snake_case and numbers as strings are read too.
    let (status, v) = post(
        &c,
        &s,
        "/v1.0-alpha1/lock/ls",
        json!({"resource_id": "snake", "lock_owner": "o", "expiry_in_seconds": "30"}),
    )
    .await;
    assert_eq!((status, v), (200, json!({"success": true})));

    // Dapr's errors, in daprd's order of checks.
    for (path, body, want_status, want_code) in [
        (
            "/v1.0-alpha1/lock/ls",
            json!({"resourceId": "r", "lockOwner": "o", "expiryInSeconds": 0}),
            400,
            "ERR_MALFORMED_REQUEST",
        ),
        (
            "/v1.0-alpha1/lock/nope",
            json!({"resourceId": "r", "lockOwner": "o", "expiryInSeconds": -1}),
            400,
            "ERR_MALFORMED_REQUEST",
        ),
        (
            "/v1.0-alpha1/lock/ls",
            json!({"resourceId": "", "lockOwner": "o", "expiryInSeconds": 5}),
            400,
            "ERR_MALFORMED_REQUEST",
        ),
        (
            "/v1.0-alpha1/lock/ls",
            json!({"resourceId": "r", "expiryInSeconds": 5}),
            400,
            "ERR_MALFORMED_REQUEST",
        ),
        (
            "/v1.0-alpha1/lock/nope",
            json!({"resourceId": "r", "lockOwner": "o", "expiryInSeconds": 5}),
            400,
            "ERR_LOCK_STORE_NOT_FOUND",
        ),
        (
            "/v1.0-alpha1/unlock/nope",
            json!({"resourceId": "r", "lockOwner": "o"}),
            400,
            "ERR_LOCK_STORE_NOT_FOUND",
        ),
        (
            "/v1.0-alpha1/lock/ls",
            json!({"resourceId": "a||b", "lockOwner": "o", "expiryInSeconds": 5}),
            500,
            "ERR_TRY_LOCK",
        ),
        (
            "/v1.0-alpha1/unlock/ls",
            json!({"resourceId": "a||b", "lockOwner": "o"}),
            500,
            "ERR_UNLOCK",
        ),
    ] {
        let (status, v) = post(&c, &s, path, body.clone()).await;
        assert_eq!(
            (status, v["errorCode"].as_str()),
            (want_status, Some(want_code)),
            "{path} {body}: {v}"
        );
    }
    let r = send(
        &c,
        request(
            "POST",
            &format!("{}/v1.0-alpha1/lock/ls", s.http()),
            "not json",
        ),
    )
    .await;
    assert_eq!(r.status.as_u16(), 400);

    // gRPC: the same, as the SDKs call it.
    let mut g = DaprClient::new(s.grpc_channel().await);
    let try_lock = |id: &str, owner: &str, secs: i32| pb::TryLockRequest {
        store_name: "ls".into(),
        resource_id: id.into(),
        lock_owner: owner.into(),
        expiry_in_seconds: secs,
    };
    let un = |id: &str, owner: &str| pb::UnlockRequest {
        store_name: "ls".into(),
        resource_id: id.into(),
        lock_owner: owner.into(),
    };
    assert!(
        g.try_lock_alpha1(try_lock("g1", "a", 30))
            .await
            .expect("lock")
            .into_inner()
            .success
    );
    assert!(
        !g.try_lock_alpha1(try_lock("g1", "b", 30))
            .await
            .expect("lock")
            .into_inner()
            .success
    );
    assert_eq!(
        g.unlock_alpha1(un("g1", "b"))
            .await
            .expect("unlock")
            .into_inner()
            .status,
        2
    );
    assert_eq!(
        g.unlock_alpha1(un("g1", "a"))
            .await
            .expect("unlock")
            .into_inner()
            .status,
        0
    );
    assert_eq!(
        g.unlock_alpha1(un("g1", "a"))
            .await
            .expect("unlock")
            .into_inner()
            .status,
        1
    );
    let e = g
        .try_lock_alpha1(try_lock("g1", "a", 0))
        .await
        .expect_err("expiry");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let mut bad = try_lock("g1", "a", 5);
    bad.store_name = "nope".into();
    let e = g.try_lock_alpha1(bad).await.expect_err("store");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("lock store nope not found"), "{e:?}");

    // Metadata and Dapr-style component metrics.
    let m = get_json(&format!("{}/v1.0/metadata", s.http())).await;
    let comps = m["components"].as_array().expect("components");
    assert!(
        comps.iter().any(
            |c| c["name"] == "ls" && c["type"].as_str().is_some_and(|t| t.starts_with("lock."))
        ),
        "{m}"
    );
    let scrape = s.scrape().await;
    assert!(
        sample(
            &scrape,
            r#"dapr_component_lock_count{app_id="locker",component="ls",namespace="default",operation="try_lock",success="true"}"#
        ) >= 5.0,
        "{scrape}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_conformance_in_memory() {
    conformance(Driver::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_conformance_redis() {
    let w = World::new();
    conformance(Driver::Redis(Redis::start(&w.home.path().join("redis")))).await;
}

/// The key layout in Redis follows Dapr (`lock||<app>||<id>` by default),
/// and with `keyPrefix: name` two apps contend for one lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keys_follow_key_prefix_and_two_sidecars_contend() {
    let w = World::new();
    let redis = Redis::start(&w.home.path().join("redis"));
    let d = Driver::Redis(redis);
    w.component("a.yaml", &d.yaml("per-app", &[]));
    w.component("b.yaml", &d.yaml("shared", &[("keyPrefix", "name".into())]));
    let one = w.sidecar("one", SidecarOpts::default());
    let two = w.sidecar("two", SidecarOpts::default());
    let c = http_client();
    let Driver::Redis(redis) = &d else {
        unreachable!()
    };
    assert_eq!(
        lock(&c, &one, "per-app", "job", "one", 30).await["success"],
        true
    );
    assert_eq!(redis.cli(&["GET", "lock||one||job"]).trim(), "one");
    let ttl: i64 = redis
        .cli(&["TTL", "lock||one||job"])
        .trim()
        .parse()
        .expect("ttl");
    assert!((1..=30).contains(&ttl), "ttl {ttl}");
    // Per app: the other app's lock on "job" is its own.
    assert_eq!(
        lock(&c, &two, "per-app", "job", "two", 30).await["success"],
        true
    );
    // Shared by store name: one wins, the other is refused until it unlocks.
    assert_eq!(
        lock(&c, &one, "shared", "job", "one", 30).await["success"],
        true
    );
    assert_eq!(redis.cli(&["GET", "lock||shared||job"]).trim(), "one");
    assert_eq!(
        lock(&c, &two, "shared", "job", "two", 30).await["success"],
        false
    );
    assert_eq!(unlock(&c, &two, "shared", "job", "two").await["status"], 2);
    assert_eq!(unlock(&c, &one, "shared", "job", "one").await["status"], 0);
    assert_eq!(
        lock(&c, &two, "shared", "job", "two", 30).await["success"],
        true
    );
}

/// Redis goes away: lock calls get ERR_TRY_LOCK, then work again when it
/// is back, without a restart of the sidecar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_gives_errors_then_recovers() {
    let w = World::new();
    let dir = w.home.path().join("redis");
    let port = free_port();
    let mut redis = Redis::start_with(&dir, port, &[]);
    w.component(
        "lock.yaml",
        &component_yaml("ls", "lock.redis", &[("redisHost", redis.addr())]),
    );
    let s = w.sidecar("locker", SidecarOpts::default());
    let c = http_client();
    assert_eq!(lock(&c, &s, "ls", "r", "o", 30).await["success"], true);
    redis.proc.kill();
    let (status, v) = post(
        &c,
        &s,
        "/v1.0-alpha1/lock/ls",
        json!({"resourceId": "r2", "lockOwner": "o", "expiryInSeconds": 5}),
    )
    .await;
    assert_eq!(
        (status, v["errorCode"].as_str()),
        (500, Some("ERR_TRY_LOCK")),
        "{v}"
    );
    let _back = Redis::start_with(&dir, port, &[]);
    let end = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, v) = post(
            &c,
            &s,
            "/v1.0-alpha1/lock/ls",
            json!({"resourceId": "r3", "lockOwner": "o", "expiryInSeconds": 5}),
        )
        .await;
        if status == 200 {
            assert_eq!(v["success"], true);
            break;
        }
        assert!(std::time::Instant::now() < end, "no recovery: {status} {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
