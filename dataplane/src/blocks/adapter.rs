//! What every block's HTTP adapter shares: the query string's
//! `metadata.*` and options, a request body read within `--max-body-size`,
//! and the two plain answers (204, JSON).

use std::collections::BTreeMap;

use ::http::{HeaderValue, Request, Response, StatusCode, header};
use bytes::Bytes;
use serde::Serialize;

use crate::errors::ApiError;
use crate::skiff_body::SkiffBody;

const MALFORMED: &str = "ERR_MALFORMED_REQUEST";

/// The query string: `metadata.K=V` (first value wins) and the options.
#[derive(Default)]
pub struct QueryArgs {
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) consistency: String,
    pub(crate) concurrency: String,
}

pub fn query_args(q: Option<&str>) -> QueryArgs {
    let mut out = QueryArgs::default();
    for pair in q.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let dec = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        let (k, v) = (dec(k), dec(v));
        if let Some(m) = k.strip_prefix("metadata.") {
            out.metadata.entry(m.to_owned()).or_insert(v);
        } else if k == "consistency" && out.consistency.is_empty() {
            out.consistency = v;
        } else if k == "concurrency" && out.concurrency.is_empty() {
            out.concurrency = v;
        }
    }
    out
}

pub(crate) async fn body(req: Request<SkiffBody>, max: usize) -> Result<Bytes, ApiError> {
    crate::body::collect_limited(req.into_body(), max)
        .await
        .map_err(|e| {
            ApiError::new(
                MALFORMED,
                StatusCode::PAYLOAD_TOO_LARGE,
                tonic::Code::ResourceExhausted,
                format!("request body: {e}"),
            )
        })
}

pub(crate) fn no_content() -> Response<SkiffBody> {
    let mut r = Response::new(SkiffBody::Empty);
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

pub(crate) fn json(v: &impl Serialize) -> Response<SkiffBody> {
    let mut r = Response::new(SkiffBody::full(serde_json::to_vec(v).unwrap_or_default()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings() {
        let a = query_args(Some(
            "metadata.ttlInSeconds=5&metadata.ttlInSeconds=9&consistency=strong&metadata.a%20b=c+d",
        ));
        assert_eq!(a.metadata["ttlInSeconds"], "5", "the first value wins");
        assert_eq!(a.metadata["a b"], "c d");
        assert_eq!(a.consistency, "strong");
    }
}
