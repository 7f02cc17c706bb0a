//! The configuration block through a real sidecar on a real Redis
//! (`configuration.redis`, keyspace notifications on): the
//! components-contrib behaviours — get with keys, with none (all), with
//! unknown keys; three gRPC subscribers (two key lists, one for all) see
//! updates, adds and deletes, and nothing after unsubscribing — then an
//! HTTP app's subscription (a POST per changed key), Dapr's errors, and
//! the unmodified Python SDK.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use skiff_proto::runtime as pb;
use skiff_proto::runtime::dapr_client::DaprClient;
use skiff_tests::servers::Redis;
use skiff_tests::subscriber::{HttpSubscriber, succeed};
use skiff_tests::*;
use tokio_stream::StreamExt;

const WAIT: Duration = Duration::from_secs(20);

fn redis(w: &World) -> Redis {
    Redis::start_with(
        &w.home.path().join("redis"),
        free_port(),
        &["--notify-keyspace-events", "KA"],
    )
}

fn store_yaml(r: &Redis) -> String {
    component_yaml("cfg", "configuration.redis", &[("redisHost", r.addr())])
}

async fn get(c: &HttpClient, s: &Sidecar, q: &str) -> (u16, Value) {
    let r = send(
        c,
        request(
            "GET",
            &format!("{}/v1.0/configuration/cfg{q}", s.http()),
            "",
        ),
    )
    .await;
    (
        r.status.as_u16(),
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

/// Reads the next change of a subscription stream, within [`WAIT`].
async fn next(
    s: &mut tonic::Streaming<pb::SubscribeConfigurationResponse>,
) -> pb::SubscribeConfigurationResponse {
    tokio::time::timeout(WAIT, s.next())
        .await
        .expect("a change within the wait")
        .expect("the stream is open")
        .expect("a message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_grpc_subscriptions_follow_the_conformance_suite() {
    let w = World::new();
    let r = redis(&w);
    r.cli(&["SET", "k1", "v1||1"]);
    r.cli(&["SET", "k2", "v2"]);
    r.cli(&["LPUSH", "alist", "x"]);
    w.component("cfg.yaml", &store_yaml(&r));
    let s = w.sidecar("cfgapp", SidecarOpts::default());
    let c = http_client();

    // HTTP: a bare map; no keys = all keys; unknown keys = nothing (204).
    let (status, v) = get(&c, &s, "?key=k1&key=k2").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v,
        json!({"k1": {"value": "v1", "version": "1", "metadata": {}}, "k2": {"value": "v2", "version": "", "metadata": {}}})
    );
    let (status, v) = get(&c, &s, "").await;
    assert_eq!(status, 200);
    assert_eq!(
        v.as_object().map(|m| m.len()),
        Some(2),
        "{v} (the list is not an item)"
    );
    let (status, _) = get(&c, &s, "?key=nope").await;
    assert_eq!(status, 204);
    let alpha = send(
        &c,
        request(
            "GET",
            &format!("{}/v1.0-alpha1/configuration/cfg?key=k1", s.http()),
            "",
        ),
    )
    .await;
    assert_eq!(alpha.status.as_u16(), 200);

    // gRPC Get.
    let mut g = DaprClient::new(s.grpc_channel().await);
    let got = g
        .get_configuration(pb::GetConfigurationRequest {
            store_name: "cfg".into(),
            keys: vec!["k1".into(), "nope".into()],
            metadata: Default::default(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.items.len(), 1);
    assert_eq!(
        (
            got.items["k1"].value.as_str(),
            got.items["k1"].version.as_str()
        ),
        ("v1", "1")
    );

    // Three subscribers: k1, k1+k3, everything.
    let sub = |keys: &[&str]| pb::SubscribeConfigurationRequest {
        store_name: "cfg".into(),
        keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        metadata: Default::default(),
    };
    let mut a = g
        .subscribe_configuration(sub(&["k1"]))
        .await
        .expect("sub")
        .into_inner();
    let mut b = g
        .subscribe_configuration_alpha1(sub(&["k1", "k3"]))
        .await
        .expect("sub")
        .into_inner();
    let mut all = g
        .subscribe_configuration(sub(&[]))
        .await
        .expect("sub")
        .into_inner();
    let (ida, idb, idall) = (next(&mut a).await, next(&mut b).await, next(&mut all).await);
    assert!(
        ida.items.is_empty() && !ida.id.is_empty(),
        "the first message is the id alone"
    );
    assert!(ida.id != idb.id && idb.id != idall.id);

    r.cli(&["SET", "k1", "v1b||2"]); // update
    for st in [&mut a, &mut b, &mut all] {
        let m = next(st).await;
        assert_eq!(
            (m.items["k1"].value.as_str(), m.items["k1"].version.as_str()),
            ("v1b", "2")
        );
    }
    r.cli(&["SET", "k3", "new||1"]); // add
    assert_eq!(next(&mut b).await.items["k3"].value, "new");
    assert_eq!(next(&mut all).await.items["k3"].value, "new");
    r.cli(&["DEL", "k1"]); // delete: an empty item
    for st in [&mut a, &mut b, &mut all] {
        let m = next(st).await;
        assert_eq!(m.items["k1"].value, "", "{m:?}");
    }
    // After unsubscribing, nothing more; an unknown id is ok=false.
    let un = g
        .unsubscribe_configuration(pb::UnsubscribeConfigurationRequest {
            store_name: "cfg".into(),
            id: ida.id.clone(),
        })
        .await
        .expect("unsubscribe")
        .into_inner();
    assert!(un.ok, "{un:?}");
    let un = g
        .unsubscribe_configuration_alpha1(pb::UnsubscribeConfigurationRequest {
            store_name: "cfg".into(),
            id: "nope".into(),
        })
        .await
        .expect("unsubscribe")
        .into_inner();
    assert!(!un.ok && !un.message.is_empty());
    r.cli(&["SET", "k1", "again"]);
    assert_eq!(next(&mut b).await.items["k1"].value, "again");
    let ended = tokio::time::timeout(WAIT, a.next())
        .await
        .expect("the stream ends");
    assert!(
        !matches!(ended, Some(Ok(ref m)) if !m.items.is_empty()),
        "a change after unsubscribing: {ended:?}"
    );

    // Errors: unknown store (400 / InvalidArgument).
    let r2 = send(
        &c,
        request(
            "GET",
            &format!("{}/v1.0/configuration/nope?key=a", s.http()),
            "",
        ),
    )
    .await;
    assert_eq!(r2.status.as_u16(), 400);
    assert_eq!(
        json_of(&r2)["errorCode"],
        "ERR_CONFIGURATION_STORE_NOT_FOUND"
    );
    let e = g
        .get_configuration(pb::GetConfigurationRequest {
            store_name: "nope".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    // No app: an HTTP subscription has nowhere to go.
    let r3 = send(
        &c,
        request(
            "GET",
            &format!("{}/v1.0/configuration/cfg/subscribe?key=k1", s.http()),
            "",
        ),
    )
    .await;
    assert_eq!(
        (r3.status.as_u16(), json_of(&r3)["errorCode"].as_str()),
        (500, Some("ERR_APP_CHANNEL_NIL"))
    );
}

fn json_of(r: &Resp) -> Value {
    serde_json::from_slice(&r.body).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_app_gets_a_post_per_changed_key_until_it_unsubscribes() {
    let w = World::new();
    let r = redis(&w);
    w.component("cfg.yaml", &store_yaml(&r));
    let app = HttpSubscriber::start(None, succeed()).await;
    let s = w.sidecar("cfgweb", SidecarOpts::app(app.port));
    let c = http_client();
    let resp = send(
        &c,
        request(
            "GET",
            &format!(
                "{}/v1.0/configuration/cfg/subscribe?key=color&key=size",
                s.http()
            ),
            "",
        ),
    )
    .await;
    assert_eq!(resp.status.as_u16(), 200);
    let id = json_of(&resp)["id"].as_str().expect("id").to_owned();
    r.cli(&["SET", "color", "blue||7"]);
    let got = app.rec.wait_for(1, "/configuration/cfg/color", WAIT).await;
    let ev = &got[0].event;
    assert_eq!(ev["id"], id.as_str());
    assert_eq!(
        ev["items"]["color"],
        json!({"value": "blue", "version": "7", "metadata": {}})
    );
    r.cli(&["SET", "other", "x"]);
    r.cli(&["SET", "size", "xl"]);
    app.rec.wait_for(1, "/configuration/cfg/size", WAIT).await;
    assert!(
        app.rec
            .got()
            .iter()
            .all(|d| d.path != "/configuration/cfg/other"),
        "a key it did not ask for"
    );
    // Unsubscribe: ok, then no more posts.
    let resp = send(
        &c,
        request(
            "GET",
            &format!("{}/v1.0/configuration/cfg/{id}/unsubscribe", s.http()),
            "",
        ),
    )
    .await;
    assert_eq!(
        (resp.status.as_u16(), json_of(&resp)),
        (200, json!({"ok": true}))
    );
    let before = app.rec.got().len();
    r.cli(&["SET", "color", "red"]);
    let end = Instant::now() + Duration::from_secs(1);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.rec.got().len(), before, "posted after unsubscribing");
    let resp = send(
        &c,
        request(
            "GET",
            &format!("{}/v1.0/configuration/cfg/{id}/unsubscribe", s.http()),
            "",
        ),
    )
    .await;
    assert_eq!(resp.status.as_u16(), 500);
    assert_eq!(json_of(&resp)["ok"], false);
}

/// `configuration.postgresql`: rows of a table, and changes notified by a
/// trigger written as Dapr's docs write it, on the channel the
/// subscription names (`pgNotifyChannel`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_reads_rows_and_streams_notified_changes() {
    let pg = skiff_tests::servers::Postgres::start();
    let setup = r#"
CREATE TABLE IF NOT EXISTS configtable (KEY VARCHAR NOT NULL, VALUE VARCHAR NOT NULL, VERSION VARCHAR NOT NULL, METADATA JSON);
CREATE OR REPLACE FUNCTION notify_event() RETURNS TRIGGER AS $$
    DECLARE data json; notification json;
    BEGIN
        IF (TG_OP = 'DELETE') THEN data = row_to_json(OLD); ELSE data = row_to_json(NEW); END IF;
        notification = json_build_object('table', TG_TABLE_NAME, 'action', TG_OP, 'data', data);
        PERFORM pg_notify('config', notification::text);
        RETURN NULL;
    END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER config AFTER INSERT OR UPDATE OR DELETE ON configtable FOR EACH ROW EXECUTE PROCEDURE notify_event();
INSERT INTO configtable VALUES ('size', 'xl', '1', '{"unit":"eu"}');
"#;
    pg.psql(setup);
    assert_eq!(pg.psql("SELECT count(*) FROM configtable"), "1", "setup");
    let w = World::new();
    w.component(
        "cfg.yaml",
        &component_yaml(
            "cfg",
            "configuration.postgresql",
            &[
                ("connectionString", pg.url()),
                ("table", "configtable".into()),
            ],
        ),
    );
    let s = w.sidecar("pgcfg", SidecarOpts::default());
    let c = http_client();
    let (status, v) = get(&c, &s, "?key=size").await;
    assert_eq!(
        (status, v),
        (
            200,
            json!({"size": {"value": "xl", "version": "1", "metadata": {"unit": "eu"}}})
        )
    );
    let mut g = DaprClient::new(s.grpc_channel().await);
    // Without the channel the subscription cannot start.
    let e = g
        .subscribe_configuration(pb::SubscribeConfigurationRequest {
            store_name: "cfg".into(),
            keys: vec!["size".into()],
            metadata: Default::default(),
        })
        .await
        .expect_err("no channel");
    assert!(e.message().contains("pgNotifyChannel"), "{e:?}");
    let mut st = g
        .subscribe_configuration(pb::SubscribeConfigurationRequest {
            store_name: "cfg".into(),
            keys: vec!["size".into()],
            metadata: [("pgNotifyChannel".to_owned(), "config".to_owned())].into(),
        })
        .await
        .expect("subscribe")
        .into_inner();
    assert!(next(&mut st).await.items.is_empty(), "the id first");
    pg.psql("INSERT INTO configtable VALUES ('color', 'red', '1', NULL)");
    pg.psql("UPDATE configtable SET VALUE = 'xxl', VERSION = '2' WHERE KEY = 'size'");
    let m = next(&mut st).await;
    assert_eq!(
        m.items.keys().collect::<Vec<_>>(),
        ["size"],
        "a key it did not ask for"
    );
    assert_eq!(
        (
            m.items["size"].value.as_str(),
            m.items["size"].version.as_str()
        ),
        ("xxl", "2")
    );
}

/// Redis restarts under a subscription: the stream stays open, the
/// sidecar reconnects, and the next change arrives — no restart, no
/// resubscribe by the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_survives_a_redis_restart() {
    let w = World::new();
    let port = free_port();
    let dir = w.home.path().join("redis");
    let mut r = Redis::start_with(&dir, port, &["--notify-keyspace-events", "KA"]);
    w.component("cfg.yaml", &store_yaml(&r));
    let s = w.sidecar("cfgrestart", SidecarOpts::default());
    let mut g = DaprClient::new(s.grpc_channel().await);
    let mut st = g
        .subscribe_configuration(pb::SubscribeConfigurationRequest {
            store_name: "cfg".into(),
            keys: vec!["mode".into()],
            metadata: Default::default(),
        })
        .await
        .expect("subscribe")
        .into_inner();
    assert!(next(&mut st).await.items.is_empty(), "the id first");
    r.cli(&["SET", "mode", "a||1"]);
    assert_eq!(next(&mut st).await.items["mode"].value, "a");
    r.proc.kill();
    let r2 = Redis::start_with(&dir, port, &["--notify-keyspace-events", "KA"]);
    // Changes until one arrives: the reconnect takes a moment.
    let end = Instant::now() + WAIT;
    let mut n = 0;
    loop {
        n += 1;
        r2.cli(&["SET", "mode", &format!("b{n}||2")]);
        match tokio::time::timeout(Duration::from_millis(500), st.next()).await {
            Ok(Some(Ok(m)))
                if m.items
                    .get("mode")
                    .is_some_and(|i| i.value.starts_with('b')) =>
            {
                break;
            }
            Ok(Some(Ok(_))) | Err(_) => {}
            Ok(other) => panic!("the stream ended: {other:?}"),
        }
        assert!(Instant::now() < end, "no change after the restart");
    }
}
