//! `middleware.http.bearer`: OpenID Connect bearer tokens. A request
//! passes only with `Authorization: Bearer <JWT>` whose signature verifies
//! against the issuer's key set and whose `iss`, `aud`, `exp`, `nbf` and
//! `iat` hold, with [`CLOCK_SKEW`] of leeway; anything else is answered
//! 401 before the request goes further (with `WWW-Authenticate: Bearer`,
//! RFC 6750's hint, which daprd leaves out).
//!
//! Metadata: `issuer` and `audience` (required; `issuerURL` and `clientID`
//! are their older names), `jwksURL` (else the `jwks_uri` of the issuer's
//! `/.well-known/openid-configuration`). The key set is fetched at start
//! (the sidecar does not start without it), fetched again in the
//! background every [`REFRESH`], and at once, at most every
//! [`KID_MISS_BACKOFF`], when a token names a `kid` the set lacks (keys
//! rotate). A failed refresh keeps the keys it had.
//!
//! Stricter than Dapr where tokens are odd: a token without `exp` is
//! refused (every OIDC provider sets it; one without never expires).
//!
//! A client sends the same token for minutes, and checking an RSA
//! signature costs tens of microseconds, so tokens that verified are kept
//! by their text with their validity window (at most [`MAX_VERIFIED`]):
//! the next request with one checks only the clock. The kept tokens go
//! whenever the key set changes, so a key taken out of the set takes its
//! tokens with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use dashmap::DashMap;
use http::{HeaderValue, Request, StatusCode, header};
use serde_json::{Map, Value};
use skiff_components::https::{WebClient, WebError};
use skiff_components::{BoxFuture, MetadataError, Properties};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::jose::{self, KeySet};
use super::{Cx, Handler, Outcome};
use crate::skiff_body::SkiffBody;

/// Leeway on `exp`, `nbf` and `iat` for clocks that disagree.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// The key set is fetched again this often (Dapr's minimum interval).
pub const REFRESH: Duration = Duration::from_secs(10 * 60);
/// An unknown `kid` fetches the set again at most this often, so tokens
/// with made-up `kid`s cannot make the sidecar hammer the issuer.
pub const KID_MISS_BACKOFF: Duration = Duration::from_secs(10);
/// One fetch of a key set or a discovery document (daprd's).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Verified tokens kept at most; past it the store starts afresh.
pub const MAX_VERIFIED: usize = 4096;
/// The largest key set or discovery document read.
const MAX_DOCUMENT: usize = 1 << 20;

pub struct Bearer {
    issuer: String,
    audience: String,
    keys: Arc<Keys>,
}

/// The key set and how to fetch it again.
struct Keys {
    url: String,
    client: WebClient,
    set: ArcSwap<KeySet>,
    /// When the set was last fetched (or tried).
    fetched: Mutex<Instant>,
    refreshing: AtomicBool,
    /// Tokens that verified against this set: their `nbf` and `exp`.
    verified: DashMap<Box<str>, Window>,
}

/// When a verified token holds (Unix seconds, skew not yet applied).
#[derive(Clone, Copy, Debug)]
struct Window {
    nbf: u64,
    exp: u64,
}

impl Window {
    fn holds(self, now: u64) -> Result<(), String> {
        let skew = CLOCK_SKEW.as_secs();
        if now >= self.exp.saturating_add(skew) {
            return Err("the token expired".into());
        }
        if self.nbf > now.saturating_add(skew) {
            return Err("the token is not valid yet (nbf)".into());
        }
        Ok(())
    }
}

impl Bearer {
    pub async fn open(m: &Properties) -> Result<Self, String> {
        let required = |names: &[&str]| {
            m.get_any(names).map(str::to_owned).ok_or_else(|| {
                MetadataError {
                    field: names[0].into(),
                    why: "is required".into(),
                }
                .to_string()
            })
        };
        let issuer = required(&["issuer", "issuerURL"])?;
        let audience = required(&["audience", "clientID"])?;
        let tls = skiff_components::https::config(&Properties::new()).map_err(|e| e.to_string())?;
        let client = WebClient::new(tls, FETCH_TIMEOUT, MAX_DOCUMENT);
        let url = match m.get("jwksURL") {
            Some(u) => u.to_owned(),
            None => discover(&client, &issuer).await?,
        };
        let set = fetch(&client, &url)
            .await
            .map_err(|e| format!("jwksURL: {e}"))?;
        tracing::info!(%issuer, jwks = %url, keys = set.len(), "bearer: key set fetched");
        Ok(Self {
            issuer,
            audience,
            keys: Arc::new(Keys {
                url,
                client,
                set: ArcSwap::from_pointee(set),
                fetched: Mutex::new(Instant::now()),
                refreshing: AtomicBool::new(false),
                verified: DashMap::new(),
            }),
        })
    }

    /// Checks one token; `Err` says why it is refused (for the log).
    async fn check(&self, token: &str, now: u64) -> Result<(), String> {
        if let Some(w) = self.keys.verified.get(token) {
            return w.holds(now);
        }
        let parsed = jose::parse(token).map_err(|e| e.to_string())?;
        if !parsed.key_known(&self.keys.set.load()) {
            self.keys.refresh_now().await;
        }
        let set = self.keys.set.load_full();
        parsed.verify(&set).map_err(|e| e.to_string())?;
        let window = claims_hold(&parsed.claims, &self.issuer, &self.audience, now)?;
        self.keys.keep(token, window, &set);
        Ok(())
    }
}

/// `iss`, `aud`, `exp`, `nbf` and `iat` against `now` (Unix seconds);
/// the window in which the token holds.
fn claims_hold(
    c: &Map<String, Value>,
    issuer: &str,
    audience: &str,
    now: u64,
) -> Result<Window, String> {
    if c.get("iss").and_then(Value::as_str) != Some(issuer) {
        return Err("the token's issuer (iss) is not the configured issuer".into());
    }
    let aud_ok = match c.get("aud") {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    };
    if !aud_ok {
        return Err("the token's audience (aud) does not include the configured audience".into());
    }
    let skew = CLOCK_SKEW.as_secs();
    let time = |k: &str| c.get(k).and_then(Value::as_f64).map(|v| v as u64);
    let Some(exp) = time("exp") else {
        return Err("the token has no expiry (exp)".into());
    };
    if time("iat").is_some_and(|iat| iat > now.saturating_add(skew)) {
        return Err("the token was issued in the future (iat)".into());
    }
    let window = Window {
        nbf: time("nbf").unwrap_or(0),
        exp,
    };
    window.holds(now)?;
    Ok(window)
}

impl Keys {
    /// Fetches the set again now, unless that was tried within
    /// [`KID_MISS_BACKOFF`]; callers waiting meanwhile share the fetch.
    async fn refresh_now(&self) {
        let mut last = self.fetched.lock().await;
        if last.elapsed() < KID_MISS_BACKOFF {
            return;
        }
        *last = Instant::now();
        self.replace(fetch(&self.client, &self.url).await);
    }

    /// Starts a background fetch when the set is older than [`REFRESH`].
    fn refresh_if_stale(self: &Arc<Self>) {
        let stale = self
            .fetched
            .try_lock()
            .is_ok_and(|last| last.elapsed() >= REFRESH);
        if !stale || self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let keys = self.clone();
        tokio::spawn(async move {
            *keys.fetched.lock().await = Instant::now();
            keys.replace(fetch(&keys.client, &keys.url).await);
            keys.refreshing.store(false, Ordering::Release);
        });
    }

    /// Keeps a token that verified against `set`, unless the set changed
    /// meanwhile (it may have lost the key).
    fn keep(&self, token: &str, w: Window, set: &Arc<KeySet>) {
        if self.verified.len() >= MAX_VERIFIED {
            self.verified.clear();
        }
        self.verified.insert(token.into(), w);
        if !Arc::ptr_eq(set, &self.set.load()) {
            self.verified.clear();
        }
    }

    fn replace(&self, got: Result<KeySet, String>) {
        match got {
            Ok(set) => {
                self.set.store(Arc::new(set));
                self.verified.clear();
            }
            Err(e) => {
                tracing::warn!(jwks = %self.url, error = %e, "bearer: refreshing the key set failed; keeping the keys it had")
            }
        }
    }
}

async fn get(client: &WebClient, url: &str) -> Result<Bytes, String> {
    let req = http::Request::get(url)
        .header(header::ACCEPT, "application/json")
        .body(http_body_util::Full::new(Bytes::new()))
        .map_err(|e| format!("{url}: {e}"))?;
    let a = client
        .send(req)
        .await
        .map_err(|e: WebError| e.to_string())?;
    if !a.status.is_success() {
        return Err(format!("{url}: answered {}", a.status));
    }
    Ok(a.body)
}

async fn fetch(client: &WebClient, url: &str) -> Result<KeySet, String> {
    let body = get(client, url).await?;
    let set = KeySet::from_json(&body).map_err(|e| format!("{url}: {e}"))?;
    if set.is_empty() {
        return Err(format!(
            "{url}: the key set has no signature key this sidecar can use"
        ));
    }
    Ok(set)
}

/// The `jwks_uri` of the issuer's OpenID configuration.
async fn discover(client: &WebClient, issuer: &str) -> Result<String, String> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let body = get(client, &url)
        .await
        .map_err(|e| format!("OpenID discovery (set jwksURL to skip it): {e}"))?;
    let doc: Value = serde_json::from_slice(&body)
        .map_err(|e| format!("OpenID discovery {url}: not JSON: {e}"))?;
    // The document must be the issuer's own (OpenID Connect Discovery
    // 1.0, section 4.3): byte for byte, as daprd compares it.
    let named = doc
        .get("issuer")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if named != issuer {
        return Err(format!(
            "OpenID discovery {url}: the document names issuer {named:?}, not the configured {issuer:?}"
        ));
    }
    doc.get("jwks_uri")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("OpenID discovery {url}: no jwks_uri"))
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in
/// any case).
fn bearer_token(h: &http::HeaderMap) -> Option<&str> {
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn refuse() -> http::Response<SkiffBody> {
    let mut r = super::refuse(StatusCode::UNAUTHORIZED);
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

impl Handler for Bearer {
    fn handle<'a>(&'a self, req: Request<SkiffBody>, _: &'a Cx) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            self.keys.refresh_if_stale();
            let Some(token) = bearer_token(req.headers()) else {
                tracing::debug!(path = %req.uri().path(), "bearer: no bearer token; refused");
                return Err(refuse());
            };
            match self.check(token, unix_now()).await {
                Ok(()) => Ok(req),
                Err(why) => {
                    // The reason, never the token.
                    tracing::debug!(path = %req.uri().path(), %why, "bearer: token refused");
                    Err(refuse())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().expect("object").clone()
    }

    #[test]
    fn claims_are_checked_with_the_skew() {
        let now = 1_000_000;
        let ok = json!({"iss": "https://idp", "aud": "app", "exp": now + 60, "iat": now});
        let w = claims_hold(&claims(ok.clone()), "https://idp", "app", now).expect("valid");
        assert!(w.holds(now + 60 + CLOCK_SKEW.as_secs() - 1).is_ok());
        assert!(
            w.holds(now + 60 + CLOCK_SKEW.as_secs()).is_err(),
            "a kept token expires too"
        );
        let mut list = ok.clone();
        list["aud"] = json!(["other", "app"]);
        claims_hold(&claims(list), "https://idp", "app", now).expect("audience in a list");
        let cases = [
            ("iss", json!("https://evil")),
            ("aud", json!("other")),
            ("aud", json!(["other"])),
            ("exp", json!(now - CLOCK_SKEW.as_secs())),
            ("nbf", json!(now + CLOCK_SKEW.as_secs() + 1)),
            ("iat", json!(now + CLOCK_SKEW.as_secs() + 1)),
        ];
        for (k, v) in cases {
            let mut c = ok.clone();
            c[k] = v.clone();
            assert!(
                claims_hold(&claims(c), "https://idp", "app", now).is_err(),
                "{k}={v}"
            );
        }
        let mut skewed = ok.clone();
        skewed["exp"] = json!(now - 60);
        claims_hold(&claims(skewed), "https://idp", "app", now).expect("within the skew");
        let mut no_exp = ok;
        no_exp.as_object_mut().expect("object").remove("exp");
        assert!(claims_hold(&claims(no_exp), "https://idp", "app", now).is_err());
    }

    #[test]
    fn the_scheme_is_read_in_any_case() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bEaReR abc.def.ghi"),
        );
        assert_eq!(bearer_token(&h), Some("abc.def.ghi"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcg=="),
        );
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&h), None);
    }
}
