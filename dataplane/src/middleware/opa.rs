//! `middleware.http.opa`: each request is checked by a Rego policy
//! (`package http`, the rule `allow`), evaluated by `regorus`, Microsoft's
//! Rego interpreter: no policy language of our own.
//!
//! Metadata (Dapr's): `rego` (the policy, in Rego v0 syntax as daprd's
//! OPA reads it), `defaultStatus` (403), `includedHeaders` (comma
//! separated names handed to the policy) and `readBody` (hand the body
//! too, read within `--max-body-size`).
//!
//! The policy sees `input.request`: `method`, `path`, `path_parts`,
//! `raw_query`, `query` (each key to its list of values), `headers` (the
//! included ones, Go's canonical names, values joined by ", "), `scheme`
//! (empty on the HTTP API, the app's towards the app) and `body`. `allow`
//! may be a boolean, or an object `{allow, status_code,
//! additional_headers}`: denied, the status and the headers go on the
//! answer; allowed, the headers are set on the request. A policy that
//! fails, gives no result or another type answers `defaultStatus` with
//! `X-Dapr-Opa-Error: true`. An evaluation is cut off after
//! [`EVAL_LIMIT`], so a runaway policy cannot hold a runtime thread.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Request, StatusCode};
use percent_encoding::percent_decode_str;
use regorus::{Engine, Value};
use serde::Deserialize;
use serde_json::json;
use skiff_components::{BoxFuture, Properties};

use super::{Cx, Handler, Outcome, read_body, refuse, with_body};
use crate::skiff_body::SkiffBody;

/// Dapr's `defaultStatus`.
pub const DEFAULT_STATUS: u16 = 403;
/// The longest one evaluation may run.
pub const EVAL_LIMIT: Duration = Duration::from_secs(1);
/// The rule daprd queries.
const RULE: &str = "data.http.allow";

pub struct Opa {
    /// Compiled once; cloned per request (the modules are shared).
    engine: Engine,
    default_status: StatusCode,
    included: Vec<HeaderName>,
    read_body: bool,
}

/// The object form of a result.
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    allow: bool,
    #[serde(default)]
    status_code: Option<u16>,
    #[serde(default)]
    additional_headers: BTreeMap<String, String>,
}

impl Opa {
    pub fn open(m: &Properties) -> Result<Self, String> {
        let rego = m.get("rego").ok_or("metadata rego: is required")?;
        let mut engine = compile(rego)?;
        engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
            limit: EVAL_LIMIT,
            check_interval: NonZeroU32::MIN.saturating_add(999),
        });
        let default_status = match m.get("defaultStatus") {
            None => StatusCode::from_u16(DEFAULT_STATUS).unwrap_or(StatusCode::FORBIDDEN),
            Some(v) => v
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| {
                    format!("metadata defaultStatus: {v:?} is not an HTTP status (100-599)")
                })?,
        };
        let included = m
            .get("includedHeaders")
            .unwrap_or("")
            .split(',')
            .map(|h| h.replace(' ', ""))
            .filter(|h| !h.is_empty())
            .map(|h| {
                HeaderName::try_from(h.as_str())
                    .map_err(|_| format!("metadata includedHeaders: {h:?} is not a header name"))
            })
            .collect::<Result<_, _>>()?;
        let read_body = m.bool_or("readBody", false).map_err(|e| e.to_string())?;
        let opa = Self {
            engine,
            default_status,
            included,
            read_body,
        };
        Ok(opa)
    }

    /// `data.http.allow` for `input`.
    fn evaluate(&self, input: serde_json::Value) -> Result<Value, String> {
        let mut e = self.engine.clone();
        e.set_input(Value::from(input));
        let v = e.eval_rule(RULE.into()).map_err(|e| e.to_string())?;
        if v == Value::Undefined {
            return Err(format!("{RULE} is undefined"));
        }
        Ok(v)
    }

    /// The input document for a request (the body, when read, apart).
    fn input(&self, req: &Request<SkiffBody>, body: &str, cx: &Cx) -> serde_json::Value {
        let uri = req.uri();
        let path = percent_decode_str(uri.path())
            .decode_utf8_lossy()
            .into_owned();
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let raw_query = uri.query().unwrap_or("");
        let mut query: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in super::router::parse_query(raw_query) {
            query.entry(k).or_default().push(v);
        }
        let mut headers = serde_json::Map::new();
        for name in &self.included {
            let values: Vec<&str> = req
                .headers()
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if !values.is_empty() {
                headers.insert(canonical(name.as_str()), json!(values.join(", ")));
            }
        }
        json!({"request": {
            "method": req.method().as_str(),
            "path": path,
            "path_parts": parts,
            "raw_query": raw_query,
            "query": query,
            "headers": headers,
            "scheme": cx.scheme,
            "body": body,
        }})
    }

    /// The policy's verdict on `req`. (Its error is the pipeline's
    /// answer type, moved once per refusal: no box is worth it.)
    #[allow(clippy::result_large_err)]
    fn decide(&self, mut req: Request<SkiffBody>, body: &str, cx: &Cx) -> Outcome {
        let input = self.input(&req, body, cx);
        let verdict = match self.evaluate(input) {
            Ok(v) => v,
            Err(why) => return Err(self.failed(&why)),
        };
        if let Ok(allowed) = verdict.as_bool() {
            return if *allowed {
                Ok(req)
            } else {
                Err(refuse(self.default_status))
            };
        }
        let answer: Answer = match serde_json::to_value(&verdict)
            .ok()
            .and_then(|j| serde_json::from_value(j).ok())
        {
            Some(a) if verdict.as_object().is_ok() => a,
            _ => return Err(self.failed("the result is neither a boolean nor an object")),
        };
        let headers = answer.additional_headers.iter().filter_map(|(k, v)| {
            Some((
                HeaderName::try_from(k.as_str()).ok()?,
                HeaderValue::try_from(v.as_str()).ok()?,
            ))
        });
        if answer.allow {
            for (k, v) in headers {
                req.headers_mut().insert(k, v);
            }
            return Ok(req);
        }
        let status = answer
            .status_code
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(self.default_status);
        let mut resp = refuse(status);
        for (k, v) in headers {
            resp.headers_mut().insert(k, v);
        }
        Err(resp)
    }

    fn failed(&self, why: &str) -> http::Response<SkiffBody> {
        tracing::warn!(error = %why, "opa: the policy could not decide; refused");
        let mut resp = refuse(self.default_status);
        resp.headers_mut()
            .insert("x-dapr-opa-error", HeaderValue::from_static("true"));
        resp
    }
}

/// The policy in Rego v0 syntax, as daprd's OPA reads it, or else in v1
/// (what OPA 1.x users write), evaluated once so that a missing
/// `data.http.allow` rule or an unknown builtin stops the start rather
/// than refusing every request. The evaluation also prepares the engine,
/// which its clones then share.
fn compile(rego: &str) -> Result<Engine, String> {
    let load = |v0: bool| {
        let mut e = Engine::new();
        e.set_rego_v0(v0);
        e.add_policy("policy.rego".into(), rego.to_owned())
            .map(|_| e)
    };
    let mut engine = match load(true) {
        Ok(e) => e,
        Err(v0) => load(false).map_err(|v1| {
            format!("metadata rego: not a policy in Rego v0 ({v0}) nor v1 ({v1}) syntax")
        })?,
    };
    engine.set_input(Value::from(json!({"request": {}})));
    engine
        .eval_rule(RULE.into())
        .map_err(|e| format!("metadata rego: {RULE}: {e}"))?;
    Ok(engine)
}

/// Go's canonical header name: `content-type` → `Content-Type`.
fn canonical(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        });
        upper = c == '-';
    }
    out
}

impl Handler for Opa {
    fn handle<'a>(&'a self, req: Request<SkiffBody>, cx: &'a Cx) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            if !self.read_body {
                return self.decide(req, "", cx);
            }
            let (parts, body) = read_body(req, cx.max_body_size).await?;
            // Borrowed from a handle on the same bytes: no copy of a UTF-8
            // body before the policy's input takes its own.
            let kept = body.clone();
            let text = String::from_utf8_lossy(&kept);
            self.decide(with_body(parts, body), &text, cx)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::tests::cx;

    fn opa(pairs: &[(&str, &str)]) -> Result<Opa, String> {
        let mut m = Properties::new();
        for (k, v) in pairs {
            m.insert(*k, *v);
        }
        Opa::open(&m)
    }

    fn request(method: &str, uri: &'static str) -> Request<SkiffBody> {
        let mut r = Request::new(SkiffBody::full("{\"amount\": 5}"));
        *r.method_mut() = method.parse().expect("method");
        *r.uri_mut() = http::Uri::from_static(uri);
        r.headers_mut()
            .insert("x-api-key", HeaderValue::from_static("k1"));
        r
    }

    const BOOL: &str = "package http\ndefault allow = false\nallow {\n  input.request.method == \"GET\"\n  input.request.path_parts[0] == \"v1.0\"\n  input.request.query.x[0] == \"1\"\n  input.request.headers[\"X-Api-Key\"] == \"k1\"\n}\n";

    #[tokio::test]
    async fn a_boolean_policy_in_v0_syntax_decides() {
        let o = opa(&[("rego", BOOL), ("includedHeaders", "x-api-key, accept")]).expect("policy");
        assert!(
            o.handle(request("GET", "/v1.0/state/s?x=1"), &cx())
                .await
                .is_ok()
        );
        let denied = o
            .handle(request("POST", "/v1.0/state/s?x=1"), &cx())
            .await
            .expect_err("denied");
        assert_eq!(denied.status(), 403);
        let no_header = opa(&[("rego", BOOL)]).expect("policy");
        assert!(
            no_header
                .handle(request("GET", "/v1.0/state/s?x=1"), &cx())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn an_object_result_sets_status_and_headers() {
        let rego = "package http\nallow = {\"allow\": false, \"status_code\": 401, \"additional_headers\": {\"x-why\": \"nope\"}} {\n  input.request.method == \"DELETE\"\n}\nallow = {\"allow\": true, \"additional_headers\": {\"x-checked\": \"yes\"}} {\n  input.request.method != \"DELETE\"\n}\n";
        let o = opa(&[("rego", rego)]).expect("policy");
        let r = o
            .handle(request("DELETE", "/a"), &cx())
            .await
            .expect_err("denied");
        assert_eq!(
            (r.status().as_u16(), &r.headers()["x-why"]),
            (401, &HeaderValue::from_static("nope"))
        );
        let passed = o
            .handle(request("GET", "/a"), &cx())
            .await
            .expect("allowed");
        assert_eq!(passed.headers()["x-checked"], "yes");
    }

    #[tokio::test]
    async fn the_body_is_handed_over_only_when_asked_and_kept() {
        let rego = "package http\ndefault allow = false\nallow {\n  json.unmarshal(input.request.body).amount < 10\n}\n";
        let o = opa(&[("rego", rego), ("readBody", "true")]).expect("policy");
        let passed = o
            .handle(request("POST", "/pay"), &cx())
            .await
            .expect("allowed");
        let b = crate::body::collect_limited(passed.into_body(), 100)
            .await
            .expect("body");
        assert_eq!(&b[..], b"{\"amount\": 5}");
        let blind = opa(&[("rego", rego), ("defaultStatus", "418")]).expect("policy");
        let r = blind
            .handle(request("POST", "/pay"), &cx())
            .await
            .expect_err("no body seen");
        assert_eq!(r.status(), 418);
    }

    #[tokio::test]
    async fn errors_are_refusals_marked_as_such_and_bad_policies_stop_the_start() {
        let rego = "package http\nallow = \"maybe\"\n";
        let o = opa(&[("rego", rego)]).expect("compiles");
        let r = o
            .handle(request("GET", "/"), &cx())
            .await
            .expect_err("refused");
        assert_eq!(
            (r.status().as_u16(), &r.headers()["x-dapr-opa-error"]),
            (403, &HeaderValue::from_static("true"))
        );
        assert!(opa(&[("rego", "package http\nallow {")]).is_err());
        assert!(
            opa(&[("rego", "package other\nallow = true\n")]).is_err(),
            "no data.http.allow"
        );
        let v1 = "package http\nallow if input.request.method == \"GET\"\n";
        assert!(opa(&[("rego", v1)]).is_ok(), "v1 syntax is taken too");
        assert!(opa(&[]).is_err());
        assert!(opa(&[("rego", BOOL), ("defaultStatus", "42")]).is_err());
    }

    #[test]
    fn header_names_are_canonical_as_go_writes_them() {
        assert_eq!(canonical("x-api-key"), "X-Api-Key");
        assert_eq!(canonical("CONTENT-TYPE"), "Content-Type");
    }
}
