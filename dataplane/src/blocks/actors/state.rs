//! Actor state as daprd keeps it: every key of actor `type/id` of app
//! `app` is `app||type||id||key` on the actor state store, with
//! `partitionKey: app||type||id` in the request metadata (Cosmos DB
//! partitions on it), and a state transaction is the JSON array of
//! `{"operation": "upsert"|"delete", "request": {...}}` that
//! `POST /v1.0/actors/{type}/{id}/state` takes (`pkg/actors/api/
//! transactional.go`). Values are kept as JSON, re-encoded the way Go
//! encodes them, as the state API stores a JSON save.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::blocks::gojson;

/// Between the parts of a key (daprd's `||`).
pub const SEPARATOR: &str = "||";
/// The metadata daprd sends the store with every actor state call.
pub const PARTITION_KEY: &str = "partitionKey";

/// `app||type||id`: the actor's partition key and the prefix of its keys.
pub fn actor_key(app: &str, actor_type: &str, id: &str) -> String {
    let mut k = String::with_capacity(app.len() + actor_type.len() + id.len() + 4);
    k.push_str(app);
    k.push_str(SEPARATOR);
    k.push_str(actor_type);
    k.push_str(SEPARATOR);
    k.push_str(id);
    k
}

/// `app||type||id||key`.
pub fn state_key(app: &str, actor_type: &str, id: &str, key: &str) -> String {
    let mut k = actor_key(app, actor_type, id);
    k.push_str(SEPARATOR);
    k.push_str(key);
    k
}

/// One operation of an actor's state transaction, keys already full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Upsert {
        key: String,
        /// JSON, Go's encoding.
        value: Bytes,
        etag: Option<String>,
        /// The caller's, with `partitionKey` set.
        metadata: Vec<(String, String)>,
    },
    Delete {
        key: String,
        etag: Option<String>,
    },
}

#[derive(Deserialize)]
struct RawOp<'a> {
    #[serde(default)]
    operation: String,
    #[serde(borrow, default)]
    request: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Request<'a> {
    #[serde(default)]
    key: String,
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
    #[serde(default)]
    etag: Option<String>,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
}

/// Reads a transaction for actor `type/id` of `app`. `ttl` says whether
/// `metadata.ttlInSeconds` may be used (daprd's `ActorStateTTL` feature).
/// The error is daprd's words for what is wrong.
pub fn parse_transaction(
    body: &[u8],
    app: &str,
    actor_type: &str,
    id: &str,
    ttl: bool,
) -> Result<Vec<Op>, String> {
    let ops: Vec<RawOp<'_>> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let partition = actor_key(app, actor_type, id);
    ops.into_iter()
        .map(|o| {
            let raw = o
                .request
                .filter(|r| r.get() != "null")
                .ok_or("request data is empty")?;
            if o.operation.is_empty() {
                return Err("operation is empty".to_owned());
            }
            let r: Request<'_> = serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
            if r.key.is_empty() {
                return Err("missing key".into());
            }
            let key = state_key(app, actor_type, id, &r.key);
            match o.operation.as_str() {
                "upsert" => {
                    if !ttl && r.metadata.contains_key("ttlInSeconds") {
                        return Err(
                            "ttlInSeconds is not supported without the \"ActorStateTTL\" feature enabled"
                                .into(),
                        );
                    }
                    let value = match r.value {
                        Some(v) => Bytes::from(gojson::reencode(v.get()).map_err(|e| e.to_string())?),
                        None => Bytes::from_static(b"null"),
                    };
                    let mut metadata: Vec<(String, String)> = r
                        .metadata
                        .into_iter()
                        .filter(|(k, _)| k != PARTITION_KEY)
                        .collect();
                    metadata.push((PARTITION_KEY.to_owned(), partition.clone()));
                    Ok(Op::Upsert {
                        key,
                        value,
                        etag: r.etag,
                        metadata,
                    })
                }
                "delete" => Ok(Op::Delete { key, etag: r.etag }),
                other => Err(format!("operation type {other} not supported")),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Vec<Op>, String> {
        parse_transaction(body.as_bytes(), "shop", "Cart", "c1", false)
    }

    #[test]
    fn keys_are_daprs() {
        assert_eq!(actor_key("shop", "Cart", "c1"), "shop||Cart||c1");
        assert_eq!(
            state_key("shop", "Cart", "c1", "items"),
            "shop||Cart||c1||items"
        );
    }

    #[test]
    fn a_transaction_reads_into_full_keys_with_the_partition() {
        let ops = parse(
            r#"[{"operation":"upsert","request":{"key":"items","value":{"b":1,"a":[2]},"etag":"7",
                 "metadata":{"contentType":"application/json","partitionKey":"mine"}}},
                {"operation":"delete","request":{"key":"old"}}]"#,
        )
        .expect("parses");
        assert_eq!(
            ops,
            [
                Op::Upsert {
                    key: "shop||Cart||c1||items".into(),
                    // Go sorts an object's members.
                    value: Bytes::from_static(br#"{"a":[2],"b":1}"#),
                    etag: Some("7".into()),
                    metadata: vec![
                        ("contentType".into(), "application/json".into()),
                        (PARTITION_KEY.into(), "shop||Cart||c1".into())
                    ],
                },
                Op::Delete {
                    key: "shop||Cart||c1||old".into(),
                    etag: None
                },
            ]
        );
    }

    #[test]
    fn what_daprd_refuses_is_refused_with_its_words() {
        for (body, why) in [
            (r#"[{"operation":"upsert"}]"#, "request data is empty"),
            (r#"[{"request":{"key":"k"}}]"#, "operation is empty"),
            (
                r#"[{"operation":"upsert","request":{"value":1}}]"#,
                "missing key",
            ),
            (
                r#"[{"operation":"merge","request":{"key":"k"}}]"#,
                "operation type merge not supported",
            ),
            (
                r#"[{"operation":"upsert","request":{"key":"k","value":1,"metadata":{"ttlInSeconds":"5"}}}]"#,
                "ttlInSeconds is not supported without the \"ActorStateTTL\" feature enabled",
            ),
        ] {
            assert_eq!(parse(body).err().as_deref(), Some(why), "{body}");
        }
        assert!(parse("{}").is_err());
        // With the feature, a TTL is metadata like any other.
        let ttl = parse_transaction(
            br#"[{"operation":"upsert","request":{"key":"k","value":1,"metadata":{"ttlInSeconds":"5"}}}]"#,
            "shop",
            "Cart",
            "c1",
            true,
        )
        .expect("ttl allowed");
        assert!(matches!(&ttl[0], Op::Upsert { metadata, .. } if metadata[0].0 == "ttlInSeconds"));
    }
}
