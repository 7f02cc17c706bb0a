//! The state API's conformance suite, written once and run against every
//! driver through a real skiffd: in-memory, SQLite (the embedded default),
//! Redis and Redis Cluster, each against its real server on loopback. Then
//! what only some drivers can show: two apps sharing a store by
//! `keyPrefix`, SQLite data surviving a restart, Dapr's Redis layout, and
//! a Redis outage with recovery.

use std::time::{Duration, Instant};

use skiff_proto::common::{Etag, StateItem, StateOptions};
use skiff_proto::runtime::dapr_client::DaprClient;
use skiff_proto::runtime::{
    DeleteBulkStateRequest, ExecuteStateTransactionRequest, GetBulkStateRequest, GetStateRequest,
    SaveStateRequest, TransactionalStateOperation,
};
use skiff_tests::servers::{Postgres, Redis, RedisCluster, make_certs};
use skiff_tests::*;

/// What a driver can do, where drivers legitimately differ.
#[derive(Clone, Copy)]
struct Traits {
    /// Redis versions are integers; SQLite and in-memory ETags are UUIDs.
    numeric_etags: bool,
    /// A first-write conflict without an ETag: 409 (SQLite, in-memory) or
    /// a plain 500 (Redis, as daprd answers).
    first_write_conflict: u16,
    query: bool,
}

const UUID_STORE: Traits = Traits {
    numeric_etags: false,
    first_write_conflict: 409,
    query: true,
};
const REDIS: Traits = Traits {
    numeric_etags: true,
    first_write_conflict: 500,
    query: false,
};

/// PostgreSQL v2: UUID ETags; a first-write conflict is the plain error
/// daprd's v2 driver gives; the query API is Skiff's addition.
const POSTGRES: Traits = Traits {
    numeric_etags: false,
    first_write_conflict: 500,
    query: true,
};

/// A `state.postgresql` v2 component on `pg`.
fn postgres_component(name: &str, pg: &Postgres, extra: &[(&str, String)]) -> String {
    let mut meta = vec![("connectionString", pg.url())];
    meta.extend_from_slice(extra);
    component(name, "state.postgresql", &meta).replace("version: v1", "version: v2")
}

fn component(name: &str, ty: &str, meta: &[(&str, String)]) -> String {
    component_yaml(name, ty, meta)
}

async fn call(c: &HttpClient, verb: &str, url: &str, body: impl Into<bytes::Bytes>) -> Resp {
    send(c, request(verb, url, body)).await
}

fn json(r: &Resp) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|_| panic!("JSON: {} {}", r.status, r.text()))
}

fn code(r: &Resp) -> String {
    json(r)["errorCode"].as_str().unwrap_or_default().to_owned()
}

/// The whole suite against store `store` of sidecar `s`.
async fn conformance(s: &Sidecar, store: &str, t: Traits) {
    http_crud(s, store).await;
    http_etags(s, store, t).await;
    http_transactions(s, store, t).await;
    http_ttl(s, store).await;
    http_query(s, store, t).await;
    http_bad_input(s, store).await;
    grpc_suite(s, store, t).await;
}

async fn http_crud(s: &Sidecar, store: &str) {
    let c = http_client();
    let url = |p: &str| format!("{}/v1.0/state/{store}{p}", s.http());
    let r = call(&c, "POST", &url(""), r#"[{"key":"s","value":"text"},{"key":"j","value":{"b":[1,2.5],"a":"<&>"}},{"key":"n","value":12345678901234567890},{"key":"e","value":""}]"#).await;
    assert_eq!(r.status, 204, "{}", r.text());
    for (k, want) in [
        ("s", r#""text""#),
        // Re-encoded as daprd stores an HTTP save: keys sorted, HTML
        // characters escaped, numbers through float64.
        ("j", r#"{"a":"\u003c\u0026\u003e","b":[1,2.5]}"#),
        ("n", "12345678901234567000"),
        ("e", r#""""#),
    ] {
        let r = call(&c, "GET", &url(&format!("/{k}")), "").await;
        assert_eq!(
            (r.status.as_u16(), r.text().as_str()),
            (200, want),
            "key {k}"
        );
        assert_eq!(r.header("content-type"), "application/json");
        assert!(!r.header("etag").is_empty(), "key {k} has an ETag");
    }
    let r = call(&c, "GET", &url("/missing"), "").await;
    assert_eq!(
        (r.status.as_u16(), r.body.len()),
        (204, 0),
        "a missing key is 204"
    );
    let r = call(&c, "POST", &url(""), "[]").await;
    assert_eq!(r.status, 204, "[] is a no-op");

    let r = call(&c, "POST", &url("/bulk"), r#"{"keys":["s","missing","j"]}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = json(&r);
    assert_eq!(v[0]["key"], "s");
    assert_eq!(v[0]["data"], "text");
    assert!(v[0]["etag"].is_string());
    assert_eq!(v[1], serde_json::json!({"key": "missing"}));
    assert_eq!(v[2]["data"]["a"], "<&>");
    let r = call(&c, "POST", &url("/bulk"), r#"{"keys":[]}"#).await;
    assert_eq!(r.text(), "[]");

    let r = call(&c, "DELETE", &url("/e"), "").await;
    assert_eq!(r.status, 204);
    assert_eq!(call(&c, "GET", &url("/e"), "").await.status, 204, "deleted");
    assert_eq!(
        call(&c, "DELETE", &url("/never"), "").await.status,
        204,
        "deleting a missing key is fine"
    );
}

async fn http_etags(s: &Sidecar, store: &str, t: Traits) {
    let c = http_client();
    let url = |p: &str| format!("{}/v1.0/state/{store}{p}", s.http());
    let bad = if t.numeric_etags {
        "999999"
    } else {
        "00000000-0000-4000-8000-000000000000"
    };
    call(&c, "POST", &url(""), r#"[{"key":"et","value":"v1"}]"#).await;
    let etag = call(&c, "GET", &url("/et"), "")
        .await
        .header("etag")
        .to_owned();

    let r = call(
        &c,
        "POST",
        &url(""),
        format!(r#"[{{"key":"et","value":"v2","etag":"{bad}"}}]"#),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), code(&r).as_str()),
        (409, "ERR_STATE_SAVE"),
        "{}",
        r.text()
    );
    assert_eq!(
        call(&c, "GET", &url("/et"), "").await.text(),
        r#""v1""#,
        "a wrong ETag changes nothing"
    );
    let r = call(
        &c,
        "POST",
        &url(""),
        format!(r#"[{{"key":"et","value":"v2","etag":"{etag}"}}]"#),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let after = call(&c, "GET", &url("/et"), "").await;
    assert_eq!(after.text(), r#""v2""#);
    let etag2 = after.header("etag").to_owned();
    assert_ne!(etag2, etag, "a write changes the ETag");
    if t.numeric_etags {
        let r = call(
            &c,
            "POST",
            &url(""),
            r#"[{"key":"et","value":"v3","etag":"not-a-number"}]"#,
        )
        .await;
        assert_eq!(
            (r.status.as_u16(), code(&r).as_str()),
            (400, "ERR_STATE_SAVE"),
            "{}",
            r.text()
        );
    }

    // Delete: If-Match, wrong then right.
    let mut req = request("DELETE", &url("/et"), "");
    req.headers_mut()
        .insert("if-match", bad.parse().expect("header"));
    let r = send(&c, req).await;
    assert_eq!(
        (r.status.as_u16(), code(&r).as_str()),
        (409, "ERR_STATE_DELETE"),
        "{}",
        r.text()
    );
    let mut req = request("DELETE", &url("/et"), "");
    req.headers_mut()
        .insert("if-match", etag2.parse().expect("header"));
    assert_eq!(send(&c, req).await.status, 204);
    assert_eq!(call(&c, "GET", &url("/et"), "").await.status, 204);

    // First-write: the second write without an ETag fails; with the
    // current ETag it passes, with a stale one it fails.
    let fw = r#"[{"key":"fw","value":1,"options":{"concurrency":"first-write"}}]"#;
    assert_eq!(call(&c, "POST", &url(""), fw).await.status, 204);
    let r = call(&c, "POST", &url(""), fw).await;
    assert_eq!(r.status.as_u16(), t.first_write_conflict, "{}", r.text());
    let cur = call(&c, "GET", &url("/fw"), "")
        .await
        .header("etag")
        .to_owned();
    let with = |e: &str| {
        format!(
            r#"[{{"key":"fw","value":2,"etag":"{e}","options":{{"concurrency":"first-write"}}}}]"#
        )
    };
    assert_eq!(call(&c, "POST", &url(""), with(&cur)).await.status, 204);
    assert_eq!(
        call(&c, "POST", &url(""), with(&cur)).await.status,
        409,
        "stale ETag"
    );

    // A bulk save with one bad ETag: that one fails, the other is saved.
    call(&c, "POST", &url(""), r#"[{"key":"b2","value":2}]"#).await;
    let r = call(
        &c,
        "POST",
        &url(""),
        format!(r#"[{{"key":"b1","value":1}},{{"key":"b2","value":3,"etag":"{bad}"}}]"#),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(call(&c, "GET", &url("/b1"), "").await.text(), "1");
    assert_eq!(call(&c, "GET", &url("/b2"), "").await.text(), "2");
}

async fn http_transactions(s: &Sidecar, store: &str, t: Traits) {
    let c = http_client();
    let url = |p: &str| format!("{}/v1.0/state/{store}{p}", s.http());
    call(&c, "POST", &url(""), r#"[{"key":"t1","value":"value1"}]"#).await;
    let ops = r#"{"operations":[
        {"operation":"delete","request":{"key":"t1"}},
        {"operation":"upsert","request":{"key":"t2","value":"value2"}},
        {"operation":"delete","request":{"key":"t2"}},
        {"operation":"upsert","request":{"key":"t3","value":"value3"}},
        {"operation":"delete","request":{"key":"never-there"}}]}"#;
    let r = call(&c, "POST", &url("/transaction"), ops).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(call(&c, "GET", &url("/t1"), "").await.status, 204);
    assert_eq!(call(&c, "GET", &url("/t2"), "").await.status, 204);
    assert_eq!(call(&c, "GET", &url("/t3"), "").await.text(), r#""value3""#);
    let r = call(&c, "POST", &url("/transaction"), r#"{"operations":[]}"#).await;
    assert_eq!(r.status, 204);
    // Go decodes null as empty: the JS SDK sends `"metadata": null`.
    let r = call(
        &c,
        "POST",
        &url("/transaction"),
        r#"{"operations":[{"operation":"upsert","request":{"key":"tnull","value":4,"metadata":null,"options":{"concurrency":null}}}],"metadata":null}"#,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());

    // An ETag mismatch inside a transaction is 500 ERR_STATE_TRANSACTION.
    let bad = if t.numeric_etags {
        "999999"
    } else {
        "00000000-0000-4000-8000-000000000000"
    };
    let r = call(&c, "POST", &url("/transaction"), format!(r#"{{"operations":[{{"operation":"upsert","request":{{"key":"t3","value":"x","etag":"{bad}"}}}}]}}"#)).await;
    assert_eq!(
        (r.status.as_u16(), code(&r).as_str()),
        (500, "ERR_STATE_TRANSACTION"),
        "{}",
        r.text()
    );
    assert_eq!(call(&c, "GET", &url("/t3"), "").await.text(), r#""value3""#);

    // An unknown operation: 400, and the operation before it did not run.
    let r = call(&c, "POST", &url("/transaction"), r#"{"operations":[{"operation":"upsert","request":{"key":"t4","value":1}},{"operation":"merge","request":{"key":"t4"}}]}"#).await;
    assert_eq!(
        (r.status.as_u16(), code(&r).as_str()),
        (400, "ERR_NOT_SUPPORTED_STATE_OPERATION")
    );
    assert_eq!(
        call(&c, "GET", &url("/t4"), "").await.status,
        204,
        "nothing changed"
    );
}

async fn http_ttl(s: &Sidecar, store: &str) {
    let c = http_client();
    let url = |p: &str| format!("{}/v1.0/state/{store}{p}", s.http());
    let r = call(
        &c,
        "POST",
        &url(""),
        r#"[{"key":"ttl","value":1,"metadata":{"ttlInSeconds":"1"}}]"#,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = call(&c, "GET", &url("/ttl"), "").await;
    let exp = r.header("metadata.ttlexpiretime").to_owned();
    assert!(
        exp.ends_with('Z') && exp.len() == 20,
        "ttlExpireTime is RFC 3339 UTC: {exp:?}"
    );
    let bulk = json(&call(&c, "POST", &url("/bulk"), r#"{"keys":["ttl"]}"#).await);
    assert_eq!(bulk[0]["metadata"]["ttlExpireTime"], exp.as_str());
    let end = Instant::now() + Duration::from_secs(6);
    loop {
        if call(&c, "GET", &url("/ttl"), "").await.status == 204 {
            break;
        }
        assert!(Instant::now() < end, "a 1 s TTL did not expire within 6 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // No TTL: no ttlExpireTime. -1 clears one; a new save without one too.
    call(&c, "POST", &url(""), r#"[{"key":"nt","value":1}]"#).await;
    assert_eq!(
        call(&c, "GET", &url("/nt"), "")
            .await
            .header("metadata.ttlexpiretime"),
        ""
    );
    call(
        &c,
        "POST",
        &url(""),
        r#"[{"key":"nt","value":1,"metadata":{"ttlInSeconds":"100"}}]"#,
    )
    .await;
    assert_ne!(
        call(&c, "GET", &url("/nt"), "")
            .await
            .header("metadata.ttlexpiretime"),
        ""
    );
    call(
        &c,
        "POST",
        &url("?metadata.ttlInSeconds=-1"),
        r#"[{"key":"nt","value":1}]"#,
    )
    .await;
    assert_eq!(
        call(&c, "GET", &url("/nt"), "")
            .await
            .header("metadata.ttlexpiretime"),
        "",
        "-1 clears the TTL"
    );
    for bad in ["-2", "soon"] {
        let r = call(
            &c,
            "POST",
            &url(""),
            format!(r#"[{{"key":"nt","value":2,"metadata":{{"ttlInSeconds":"{bad}"}}}}]"#),
        )
        .await;
        assert_eq!(
            code(&r),
            "ERR_STATE_SAVE",
            "ttlInSeconds {bad}: {}",
            r.text()
        );
    }
    assert_eq!(
        call(&c, "GET", &url("/nt"), "").await.text(),
        "1",
        "a refused save changes nothing"
    );
}

async fn http_query(s: &Sidecar, store: &str, t: Traits) {
    let c = http_client();
    let q = format!("{}/v1.0-alpha1/state/{store}/query", s.http());
    let save = format!("{}/v1.0/state/{store}", s.http());
    call(&c, "POST", &save, r#"[{"key":"p1","value":{"name":"ann","state":"CA","id":3}},{"key":"p2","value":{"name":"bob","state":"WA","id":1}},{"key":"p3","value":{"name":"cyd","state":"CA","id":2}}]"#).await;
    let body = r#"{"filter":{"EQ":{"state":"CA"}},"sort":[{"key":"id","order":"ASC"}]}"#;
    let r = call(&c, "POST", &q, body).await;
    if !t.query {
        assert_eq!(
            (r.status.as_u16(), code(&r).as_str()),
            (500, "ERR_STATE_STORE_NOT_SUPPORTED"),
            "{}",
            r.text()
        );
        return;
    }
    assert_eq!(r.status, 200, "{}", r.text());
    let v = json(&r);
    let keys: Vec<&str> = v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|x| x["key"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(keys, ["p3", "p1"], "filtered, sorted, prefix stripped");
    assert_eq!(v["results"][0]["data"]["name"], "cyd");
    let r = call(
        &c,
        "POST",
        &q,
        r#"{"filter":{"OR":[{"EQ":{"state":"WA"}},{"GTE":{"id":3}}]},"page":{"limit":1}}"#,
    )
    .await;
    let v = json(&r);
    assert_eq!(v["results"].as_array().map(Vec::len), Some(1));
    let token = v["token"]
        .as_str()
        .expect("a token for the next page")
        .to_owned();
    let r = call(&c, "POST", &q, format!(r#"{{"filter":{{"OR":[{{"EQ":{{"state":"WA"}}}},{{"GTE":{{"id":3}}}}]}},"page":{{"limit":1,"token":"{token}"}}}}"#)).await;
    assert_eq!(json(&r)["results"].as_array().map(Vec::len), Some(1));
    let r = call(&c, "POST", &q, r#"{"filter":{"EQ":{"state":"NV"}}}"#).await;
    assert_eq!(r.status, 204, "no results");
    let r = call(&c, "POST", &q, r#"{"filter":{"LIKE":{"state":"C%"}}}"#).await;
    assert_eq!(
        (r.status.as_u16(), code(&r).as_str()),
        (400, "ERR_MALFORMED_REQUEST")
    );
    assert_eq!(
        call(
            &c,
            "POST",
            &format!("{}/v1.0/state/{store}/query", s.http()),
            body
        )
        .await
        .status,
        404,
        "query is alpha only"
    );
}

async fn http_bad_input(s: &Sidecar, store: &str) {
    let c = http_client();
    let url = |p: &str| format!("{}/v1.0/state/{store}{p}", s.http());
    for (body, why) in [
        ("not json", "malformed JSON"),
        (r#"[{"value":1}]"#, "no key"),
        (r#"{"key":"x"}"#, "not a list"),
    ] {
        let r = call(&c, "POST", &url(""), body).await;
        assert_eq!(
            (r.status.as_u16(), code(&r).as_str()),
            (400, "ERR_MALFORMED_REQUEST"),
            "{why}: {}",
            r.text()
        );
    }
    let r = call(&c, "GET", &url("/a%7C%7Cb"), "").await;
    assert_eq!(
        (r.status.as_u16(), code(&r).as_str()),
        (400, "ERR_MALFORMED_REQUEST"),
        "|| in a key"
    );
    let r = call(&c, "POST", &url(""), r#"[{"key":"a||b","value":1}]"#).await;
    assert_eq!(r.status, 400, "|| in a saved key");
    let r = call(&c, "GET", &format!("{}/v1.0/state/nope/k", s.http()), "").await;
    assert_eq!(
        (r.status.as_u16(), code(&r).as_str()),
        (400, "ERR_STATE_STORE_NOT_FOUND")
    );
    let big = format!(r#"[{{"key":"big","value":"{}"}}]"#, "x".repeat(5 << 20));
    // Refused with 413, or the connection closed before the body was sent.
    // On a client of its own: the server closes that connection after
    // refusing the unread body, and a pooled reuse would race the close.
    if let Ok(r) = http_client().request(request("POST", &url(""), big)).await {
        assert_eq!(r.status(), 413, "a body over --max-body-size");
    }
    assert_eq!(call(&c, "GET", &url("/big"), "").await.status, 204);
    let r = call(&c, "GET", &url("/k?consistency=sometimes"), "").await;
    assert_eq!(r.status, 500, "an unknown consistency is refused");
    let r = call(
        &c,
        "POST",
        &url(""),
        r#"[{"key":"k","value":1,"options":{"concurrency":"whenever"}}]"#,
    )
    .await;
    assert_eq!(code(&r), "ERR_STATE_SAVE");
}

async fn grpc_suite(s: &Sidecar, store: &str, t: Traits) {
    let mut d = DaprClient::new(s.grpc_channel().await);
    let item = |key: &str, value: &[u8]| StateItem {
        key: key.into(),
        value: bytes::Bytes::copy_from_slice(value),
        ..Default::default()
    };
    let bin: &[u8] = &[0, 0x9f, 0x92, 0x96, 0xff, b'\n'];
    d.save_state(SaveStateRequest {
        store_name: store.into(),
        states: vec![item("gb", bin), item("ge", b"")],
    })
    .await
    .expect("SaveState");
    let got = d
        .get_state(GetStateRequest {
            store_name: store.into(),
            key: "gb".into(),
            ..Default::default()
        })
        .await
        .expect("GetState")
        .into_inner();
    assert_eq!(
        got.data.as_ref(),
        bin,
        "bytes round-trip byte-exact over gRPC"
    );
    assert!(!got.etag.is_empty());
    let http = call(
        &http_client(),
        "GET",
        &format!("{}/v1.0/state/{store}/gb", s.http()),
        "",
    )
    .await;
    assert_eq!(http.body.as_ref(), bin, "and read back over HTTP unchanged");
    let empty = d
        .get_state(GetStateRequest {
            store_name: store.into(),
            key: "ge".into(),
            ..Default::default()
        })
        .await
        .expect("GetState")
        .into_inner();
    assert!(empty.data.is_empty());
    let missing = d
        .get_state(GetStateRequest {
            store_name: store.into(),
            key: "gnone".into(),
            ..Default::default()
        })
        .await
        .expect("a missing key is not an error")
        .into_inner();
    assert!(missing.data.is_empty() && missing.etag.is_empty());

    // JSON content type: decoded and re-encoded like an HTTP save.
    let mut js = item("gj", br#"{"z":1, "a":2}"#);
    js.metadata
        .insert("contentType".into(), "application/json".into());
    d.save_state(SaveStateRequest {
        store_name: store.into(),
        states: vec![js],
    })
    .await
    .expect("SaveState json");
    let g = d
        .get_state(GetStateRequest {
            store_name: store.into(),
            key: "gj".into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(g.data.as_ref(), br#"{"a":2,"z":1}"#);

    let bad = if t.numeric_etags {
        "999999"
    } else {
        "00000000-0000-4000-8000-000000000000"
    };
    let mut wrong = item("gb", b"x");
    wrong.etag = Some(Etag { value: bad.into() });
    let e = d
        .save_state(SaveStateRequest {
            store_name: store.into(),
            states: vec![wrong],
        })
        .await
        .expect_err("wrong etag");
    assert_eq!(e.code(), tonic::Code::Aborted, "{e:?}");
    let e = d
        .save_state(SaveStateRequest {
            store_name: store.into(),
            states: vec![item("", b"x")],
        })
        .await
        .expect_err("empty key");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = d
        .get_state(GetStateRequest {
            store_name: "nope".into(),
            key: "k".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown store");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    let mut fw = item("gfw", b"1");
    fw.options = Some(StateOptions {
        concurrency: 1,
        consistency: 2,
    });
    d.save_state(SaveStateRequest {
        store_name: store.into(),
        states: vec![fw.clone()],
    })
    .await
    .expect("first write");
    assert!(
        d.save_state(SaveStateRequest {
            store_name: store.into(),
            states: vec![fw]
        })
        .await
        .is_err(),
        "second first-write"
    );

    // Transactions store upserts raw (no JSON decoding), in order.
    let op = |t: &str, it: StateItem| TransactionalStateOperation {
        operation_type: t.into(),
        request: Some(it),
    };
    let mut raw = item("gt1", br#"{"z":1, "a":2}"#);
    raw.metadata
        .insert("contentType".into(), "application/json".into());
    d.execute_state_transaction(ExecuteStateTransactionRequest {
        store_name: store.into(),
        operations: vec![
            op("upsert", raw),
            op("upsert", item("gt2", b"2")),
            op("delete", item("gt2", b"")),
        ],
        metadata: Default::default(),
    })
    .await
    .expect("transaction");
    let bulk = d
        .get_bulk_state(GetBulkStateRequest {
            store_name: store.into(),
            keys: vec!["gt1".into(), "gt2".into()],
            ..Default::default()
        })
        .await
        .expect("bulk")
        .into_inner();
    assert_eq!(
        bulk.items[0].data.as_ref(),
        br#"{"z":1, "a":2}"#,
        "upserts in a transaction are raw"
    );
    assert!(
        bulk.items[1].data.is_empty() && bulk.items[1].error.is_empty(),
        "gt2 deleted"
    );
    let e = d
        .execute_state_transaction(ExecuteStateTransactionRequest {
            store_name: store.into(),
            operations: vec![op("merge", item("gt1", b""))],
            metadata: Default::default(),
        })
        .await
        .expect_err("unknown op");
    assert_eq!(e.code(), tonic::Code::Unimplemented);
    d.delete_bulk_state(DeleteBulkStateRequest {
        store_name: store.into(),
        states: vec![item("gt1", b""), item("gb", b"")],
    })
    .await
    .expect("bulk delete");
    let g = d
        .get_state(GetStateRequest {
            store_name: store.into(),
            key: "gt1".into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner();
    assert!(g.data.is_empty());
}

fn sidecar_with(w: &World, app: &str, yaml: &str) -> Sidecar {
    w.component(&format!("{app}.yaml"), yaml);
    w.sidecar(app, SidecarOpts::default())
}

#[tokio::test]
async fn conformance_in_memory() {
    let w = World::new();
    let s = sidecar_with(&w, "app", &component("mem", "state.in-memory", &[]));
    conformance(&s, "mem", UUID_STORE).await;
}

#[tokio::test]
async fn conformance_sqlite() {
    let w = World::new();
    let db = w.home.path().join("state.db").display().to_string();
    let s = sidecar_with(
        &w,
        "app",
        &component("lite", "state.sqlite", &[("connectionString", db)]),
    );
    conformance(&s, "lite", UUID_STORE).await;
}

#[tokio::test]
async fn conformance_redis() {
    let w = World::new();
    let r = Redis::start(&w.home.path().join("redis"));
    let s = sidecar_with(
        &w,
        "app",
        &component("red", "state.redis", &[("redisHost", r.addr())]),
    );
    conformance(&s, "red", REDIS).await;
}

#[tokio::test]
async fn conformance_postgres() {
    let w = World::new();
    let pg = Postgres::start();
    let s = sidecar_with(&w, "app", &postgres_component("pg", &pg, &[]));
    conformance(&s, "pg", POSTGRES).await;
    // Dapr's v2 layout: daprd reads these rows.
    assert_eq!(
        pg.psql("SELECT convert_from(value, 'UTF8') FROM state WHERE key = 'app||layout-probe'"),
        ""
    );
    let c = http_client();
    call(
        &c,
        "POST",
        &format!("{}/v1.0/state/pg", s.http()),
        r#"[{"key":"layout-probe","value":{"a":1}}]"#,
    )
    .await;
    assert_eq!(
        pg.psql("SELECT convert_from(value, 'UTF8') FROM state WHERE key = 'app||layout-probe'"),
        r#"{"a":1}"#
    );
    assert_eq!(
        pg.psql("SELECT value FROM dapr_metadata WHERE key = 'migrations-state-v2-'"),
        "2"
    );
}

/// TLS to PostgreSQL: verify-full against the CA works, `require`
/// encrypts without verifying (libpq's meaning), a wrong CA is refused at
/// start with one line naming the component.
#[tokio::test]
async fn postgres_over_tls() {
    let pg = Postgres::start_tls();
    let ca = pg.ca.clone().expect("ca").display().to_string();
    for tls in [
        format!("sslmode=verify-full sslrootcert={ca}"),
        "sslmode=require".to_owned(),
    ] {
        let w = World::new();
        let url = pg.url_with(&tls);
        let y = component("pg", "state.postgresql", &[("connectionString", url)])
            .replace("version: v1", "version: v2");
        let s = sidecar_with(&w, "app", &y);
        let c = http_client();
        let u = format!("{}/v1.0/state/pg", s.http());
        let r = call(&c, "POST", &u, r#"[{"key":"k","value":"tls"}]"#).await;
        assert_eq!(r.status, 204, "{tls}: {}", r.text());
        assert_eq!(
            call(&c, "GET", &format!("{u}/k"), "").await.text(),
            r#""tls""#
        );
        let encrypted = pg.psql(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE s.ssl AND a.application_name <> 'psql'",
        );
        assert_ne!(encrypted, "0", "{tls}: the sidecar's connections are TLS");
    }
    let w = World::new();
    let bad = pg.url_with(&format!(
        "sslmode=verify-full sslrootcert={}",
        w.home.path().join("missing.pem").display()
    ));
    w.component(
        "pg.yaml",
        &component("pg", "state.postgresql", &[("connectionString", bad)])
            .replace("version: v1", "version: v2"),
    );
    let err = w.skiffd_fails("app", &[]);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("pg.yaml") && last.contains("sslrootcert"),
        "{last}"
    );
}

/// `enableTLS` to a Redis that only speaks TLS (with
/// `insecureSkipTLSVerify`, as Dapr's metadata has no CA option: verified
/// connections use the system's roots); without TLS the start is refused.
#[tokio::test]
async fn redis_over_tls() {
    let w = World::new();
    let dir = w.home.path().join("redis-tls");
    std::fs::create_dir_all(&dir).expect("dir");
    make_certs(&dir);
    let port = free_port();
    let f = |n: &str| dir.join(n).display().to_string();
    let (cert, key, ca) = (f("server.crt"), f("server.key"), f("ca.pem"));
    let _r = Redis::start_tls(&dir, port, &cert, &key, &ca);
    let tls = component(
        "red",
        "state.redis",
        &[
            ("redisHost", format!("127.0.0.1:{port}")),
            ("enableTLS", "true".into()),
            ("insecureSkipTLSVerify", "true".into()),
        ],
    );
    let s = sidecar_with(&w, "app", &tls);
    let c = http_client();
    let u = format!("{}/v1.0/state/red", s.http());
    let r = call(&c, "POST", &u, r#"[{"key":"k","value":"over tls"}]"#).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        call(&c, "GET", &format!("{u}/k"), "").await.text(),
        r#""over tls""#
    );
    drop(s);
    let w2 = World::new();
    w2.component(
        "red.yaml",
        &component(
            "red",
            "state.redis",
            &[
                ("redisHost", format!("127.0.0.1:{port}")),
                ("dialTimeout", "500ms".into()),
                ("readTimeout", "500ms".into()),
            ],
        )
        .replace("  metadata:\n", "  initTimeout: 3s\n  metadata:\n"),
    );
    let err = w2.skiffd_fails("app", &[]);
    assert!(
        err.lines().last().unwrap_or_default().contains("red.yaml"),
        "{err}"
    );
}

#[tokio::test]
async fn postgres_restart_gives_errors_then_recovers() {
    let w = World::new();
    let mut pg = Postgres::start();
    let s = sidecar_with(
        &w,
        "app",
        &postgres_component("pg", &pg, &[("timeout", "2s".into())]),
    );
    let c = http_client();
    let url = format!("{}/v1.0/state/pg", s.http());
    assert_eq!(
        call(&c, "POST", &url, r#"[{"key":"k","value":1}]"#)
            .await
            .status,
        204
    );
    pg.stop();
    let r = tokio::time::timeout(
        Duration::from_secs(15),
        call(&c, "POST", &url, r#"[{"key":"k","value":2}]"#),
    )
    .await
    .expect("an answer while PostgreSQL is down");
    assert_eq!(
        (r.status.as_u16(), code(&r).as_str()),
        (500, "ERR_STATE_SAVE"),
        "{}",
        r.text()
    );
    pg.restart();
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = call(&c, "POST", &url, r#"[{"key":"k","value":"back"}]"#).await;
        if resp.status == 204 {
            break;
        }
        assert!(Instant::now() < end, "no recovery: {}", resp.text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        call(&c, "GET", &format!("{url}/k"), "").await.text(),
        r#""back""#
    );
}

#[tokio::test]
async fn conformance_redis_cluster() {
    let w = World::new();
    let cl = RedisCluster::start(&w.home.path().join("cluster"));
    let s = sidecar_with(
        &w,
        "app",
        &component(
            "red",
            "state.redis",
            &[("redisHost", cl.hosts()), ("redisType", "cluster".into())],
        ),
    );
    conformance(&s, "red", REDIS).await;
    // The keys really are spread over the masters.
    let per_node: Vec<usize> = cl
        .nodes
        .iter()
        .map(|n| n.cli(&["dbsize"]).parse().unwrap_or(0))
        .collect();
    assert!(
        per_node.iter().filter(|n| **n > 0).count() >= 2,
        "keys on one node only: {per_node:?}"
    );
}

/// Two apps on one store: `keyPrefix: name` shares keys, the default
/// (`appid`) keeps them apart. Run on SQLite (one file) and Redis.
async fn shared_store(w: &World, ty: &str, meta: Vec<(&str, String)>) {
    let mut shared = meta.clone();
    shared.push(("keyPrefix", "name".into()));
    w.component("a-shared.yaml", &component("shared", ty, &shared));
    w.component("b-own.yaml", &component("own", ty, &meta));
    let a = w.sidecar("appa", SidecarOpts::default());
    let b = w.sidecar("appb", SidecarOpts::default());
    let c = http_client();
    for store in ["shared", "own"] {
        let r = call(
            &c,
            "POST",
            &format!("{}/v1.0/state/{store}", a.http()),
            r#"[{"key":"k","value":"from-a"}]"#,
        )
        .await;
        assert_eq!(r.status, 204, "{}", r.text());
    }
    let r = call(&c, "GET", &format!("{}/v1.0/state/shared/k", b.http()), "").await;
    assert_eq!(r.text(), r#""from-a""#, "keyPrefix name: b reads a's key");
    let r = call(&c, "GET", &format!("{}/v1.0/state/own/k", b.http()), "").await;
    assert_eq!(r.status, 204, "keyPrefix appid: b does not see a's key");
}

#[tokio::test]
async fn key_prefix_name_shares_a_sqlite_store() {
    let w = World::new();
    let db = w.home.path().join("shared.db").display().to_string();
    shared_store(&w, "state.sqlite", vec![("connectionString", db)]).await;
}

#[tokio::test]
async fn key_prefix_name_shares_a_redis_store() {
    let w = World::new();
    let r = Redis::start(&w.home.path().join("redis"));
    shared_store(&w, "state.redis", vec![("redisHost", r.addr())]).await;
    assert_eq!(r.cli(&["hget", "shared||k", "data"]), r#""from-a""#);
    assert_eq!(r.cli(&["hget", "appa||k", "data"]), r#""from-a""#);
}

#[tokio::test]
async fn sqlite_data_survives_a_restart() {
    let w = World::new();
    let db = w.home.path().join("durable.db").display().to_string();
    w.component(
        "s.yaml",
        &component("lite", "state.sqlite", &[("connectionString", db)]),
    );
    let c = http_client();
    let s = w.sidecar("app", SidecarOpts::default());
    let body: String = (0..200)
        .map(|i| format!(r#"{{"key":"k{i}","value":{i}}}"#))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        call(
            &c,
            "POST",
            &format!("{}/v1.0/state/lite", s.http()),
            format!("[{body}]")
        )
        .await
        .status,
        204
    );
    s.proc.terminate();
    let mut s = s;
    s.proc
        .wait_exit(Duration::from_secs(10))
        .expect("skiffd stops on SIGTERM");
    let s2 = w.sidecar("app", SidecarOpts::default());
    let r = call(
        &c,
        "POST",
        &format!("{}/v1.0/state/lite/bulk", s2.http()),
        r#"{"keys":["k0","k199"]}"#,
    )
    .await;
    let v = json(&r);
    assert_eq!(
        (v[0]["data"].clone(), v[1]["data"].clone()),
        (serde_json::json!(0), serde_json::json!(199))
    );
}

#[tokio::test]
async fn redis_layout_is_daprs() {
    let w = World::new();
    let r = Redis::start(&w.home.path().join("redis"));
    let s = sidecar_with(
        &w,
        "app",
        &component("red", "state.redis", &[("redisHost", r.addr())]),
    );
    let c = http_client();
    call(
        &c,
        "POST",
        &format!("{}/v1.0/state/red", s.http()),
        r#"[{"key":"k","value":{"a":1}}]"#,
    )
    .await;
    assert_eq!(r.cli(&["hget", "app||k", "data"]), r#"{"a":1}"#);
    assert_eq!(r.cli(&["hget", "app||k", "version"]), "1");
    // Written as daprd writes it: read here, with its version as the ETag.
    r.cli(&["hset", "app||d", "data", "\"by daprd\"", "version", "7"]);
    let g = call(&c, "GET", &format!("{}/v1.0/state/red/d", s.http()), "").await;
    assert_eq!(
        (g.text().as_str(), g.header("etag")),
        (r#""by daprd""#, "7")
    );
}

#[tokio::test]
async fn redis_outage_gives_errors_then_recovers() {
    let w = World::new();
    let dir = w.home.path().join("redis");
    let mut r = Redis::start(&dir);
    let port = r.port;
    let s = sidecar_with(
        &w,
        "app",
        &component(
            "red",
            "state.redis",
            &[
                ("redisHost", r.addr()),
                ("readTimeout", "1s".into()),
                ("dialTimeout", "1s".into()),
            ],
        ),
    );
    let c = http_client();
    let url = format!("{}/v1.0/state/red", s.http());
    assert_eq!(
        call(&c, "POST", &url, r#"[{"key":"k","value":1}]"#)
            .await
            .status,
        204
    );
    r.proc.kill();
    // Errors, each within the timeouts, and no hang.
    for i in 0..5 {
        let t0 = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            call(&c, "POST", &url, format!(r#"[{{"key":"k","value":{i}}}]"#)),
        )
        .await
        .expect("an answer while Redis is down");
        assert_eq!(
            (r.status.as_u16(), code(&r).as_str()),
            (500, "ERR_STATE_SAVE"),
            "{}",
            r.text()
        );
        assert!(!r.text().contains("password"), "{}", r.text());
        assert!(t0.elapsed() < Duration::from_secs(10));
    }
    let _r2 = Redis::start_with(&dir, port, &[]);
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = call(&c, "POST", &url, r#"[{"key":"k","value":"back"}]"#).await;
        if resp.status == 204 {
            break;
        }
        assert!(
            Instant::now() < end,
            "no recovery within 20 s: {}",
            resp.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        call(&c, "GET", &format!("{url}/k"), "").await.text(),
        r#""back""#
    );
}

/// `targets.components.<store>.outbound`: a store that went away is
/// retried, then its breaker opens and calls fail at once; Dapr's
/// component and resiliency metrics count it all.
#[tokio::test]
async fn redis_outbound_policy_retries_then_breaks_and_metrics_count() {
    let w = World::new();
    let mut r = Redis::start(&w.home.path().join("redis"));
    w.component(
        "resiliency.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: store-policy\nspec:\n  policies:\n    timeouts:\n      quick: 1s\n    retries:\n      twice:\n        policy: constant\n        duration: 50ms\n        maxRetries: 2\n    circuitBreakers:\n      cb:\n        maxRequests: 1\n        timeout: 60s\n        trip: consecutiveFailures >= 3\n  targets:\n    components:\n      red:\n        outbound:\n          timeout: quick\n          retry: twice\n          circuitBreaker: cb\n",
    );
    let s = sidecar_with(
        &w,
        "app",
        &component(
            "red",
            "state.redis",
            &[
                ("redisHost", r.addr()),
                ("dialTimeout", "300ms".into()),
                ("readTimeout", "300ms".into()),
            ],
        ),
    );
    let c = http_client();
    let url = format!("{}/v1.0/state/red", s.http());
    assert_eq!(
        call(&c, "POST", &url, r#"[{"key":"k","value":1}]"#)
            .await
            .status,
        204
    );
    assert_eq!(call(&c, "GET", &format!("{url}/k"), "").await.text(), "1");
    // A wrong ETag is the caller's mistake: not retried, not a breaker failure.
    let wrong = call(&c, "POST", &url, r#"[{"key":"k","value":2,"etag":"999"}]"#).await;
    assert_eq!(wrong.status, 409, "{}", wrong.text());
    let m = s.scrape().await;
    let series = |op: &str, ok: &str| {
        format!(
            "dapr_component_state_count{{app_id=\"app\",component=\"red\",namespace=\"default\",operation=\"{op}\",success=\"{ok}\"}}"
        )
    };
    assert_eq!(sample(&m, &series("set", "true")), 1.0, "{m}");
    assert_eq!(sample(&m, &series("set", "false")), 1.0, "{m}");
    assert_eq!(sample(&m, &series("get", "true")), 1.0, "{m}");
    assert!(
        m.contains("dapr_component_state_latencies_bucket{app_id=\"app\",component=\"red\""),
        "{m}"
    );

    r.proc.kill();
    // Three attempts (one call and its two retries) trip the breaker.
    let first = call(&c, "GET", &format!("{url}/k"), "").await;
    assert_eq!(first.status, 500, "{}", first.text());
    let t0 = Instant::now();
    let open = call(&c, "GET", &format!("{url}/k"), "").await;
    assert_eq!(open.status, 500);
    assert!(
        open.text().contains("circuit breaker cb is open"),
        "{}",
        open.text()
    );
    assert!(
        t0.elapsed() < Duration::from_millis(250),
        "an open breaker answers at once"
    );
    let m = s.scrape().await;
    let res = |policy: &str| {
        format!(
            "dapr_resiliency_count{{app_id=\"app\",name=\"store-policy\",policy=\"{policy}\",namespace=\"default\",flow_direction=\"outbound\",target=\"Statestore_red\",status=\"\"}}"
        )
    };
    assert!(sample(&m, &res("retry")) >= 2.0, "{m}");
    assert!(sample(&m, &res("circuitbreaker")) >= 2.0, "{m}");
    assert!(
        m.contains("dapr_resiliency_activations_total{app_id=\"app\",name=\"store-policy\",policy=\"retry\""),
        "{m}"
    );
    assert_eq!(sample(&m, &series("get", "false")), 2.0, "{m}");
}
