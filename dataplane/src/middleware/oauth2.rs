//! `middleware.http.oauth2clientcredentials`: fetches an access token from
//! `tokenURL` with the OAuth 2.0 client credentials grant, keeps it until
//! it expires, and adds `<type> <token>` (`Bearer ...`) to each request
//! under `headerName`.
//!
//! Metadata (Dapr's): `clientID`, `clientSecret`, `scopes` (comma
//! separated), `tokenURL`, `headerName` (all required),
//! `endpointParamsQuery` (extra form fields, as a query string),
//! `authStyle` (0: try HTTP Basic, then the form; 1: the form; 2: HTTP
//! Basic) and `pathFilter` (a regex; requests whose path it does not match
//! pass untouched).
//!
//! Where Skiff differs, on purpose: a token is fetched again
//! [`EARLY_REFRESH`] before it expires (so none leaves expired), one
//! without `expires_in` is kept for [`NO_EXPIRY_TTL`], and when no token
//! can be had the request is answered 500 and goes no further. daprd
//! answers 200 with an empty body there, which a pub/sub delivery takes
//! for success: the message would be lost.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, StatusCode, header};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use regex::Regex;
use serde::Deserialize;
use skiff_components::https::WebClient;
use skiff_components::{BoxFuture, Properties};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{Cx, Handler, Outcome, text};
use crate::skiff_body::SkiffBody;

/// A token is fetched again this long before it expires.
pub const EARLY_REFRESH: Duration = Duration::from_secs(10);
/// How long a token without `expires_in` is used.
pub const NO_EXPIRY_TTL: Duration = Duration::from_secs(3600);
/// One token request.
pub const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_TOKEN_ANSWER: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AuthStyle {
    Auto,
    Form,
    Basic,
}

pub struct ClientCredentials {
    client_id: String,
    client_secret: String,
    scopes: String,
    token_url: String,
    header: HeaderName,
    params: Vec<(String, String)>,
    style: AuthStyle,
    /// After an `Auto` success, the style that worked.
    learned: std::sync::Mutex<Option<AuthStyle>>,
    path_filter: Option<Regex>,
    client: WebClient,
    /// The header value and when it stops being used.
    current: ArcSwapOption<(HeaderValue, Instant)>,
    /// Held while a token is fetched, so concurrent requests share one.
    fetching: Mutex<()>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    token_type: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

impl ClientCredentials {
    pub fn open(m: &Properties) -> Result<Self, String> {
        let missing: Vec<&str> = [
            "clientID",
            "clientSecret",
            "scopes",
            "tokenURL",
            "headerName",
        ]
        .into_iter()
        .filter(|k| m.get(k).is_none())
        .collect();
        if !missing.is_empty() {
            return Err(format!("metadata {} must be set", missing.join(", ")));
        }
        let get = |k: &str| m.get(k).unwrap_or_default().to_owned();
        let header = HeaderName::try_from(get("headerName"))
            .map_err(|_| "metadata headerName: not a valid header name".to_owned())?;
        let style = match m.get("authStyle").map(str::trim) {
            None | Some("0") => AuthStyle::Auto,
            Some("1") => AuthStyle::Form,
            Some("2") => AuthStyle::Basic,
            Some(v) => return Err(format!("metadata authStyle: {v:?} is not 0, 1 or 2")),
        };
        let path_filter = m
            .get("pathFilter")
            .map(|r| Regex::new(r).map_err(|e| format!("metadata pathFilter: {e}")))
            .transpose()?;
        let token_url = get("tokenURL");
        if !(token_url.starts_with("https://") || token_url.starts_with("http://")) {
            return Err("metadata tokenURL: must be an http:// or https:// URL".into());
        }
        let tls = skiff_components::https::config(&Properties::new()).map_err(|e| e.to_string())?;
        Ok(Self {
            client_id: get("clientID"),
            client_secret: get("clientSecret"),
            scopes: get("scopes").split(',').collect::<Vec<_>>().join(" "),
            token_url,
            header,
            params: m
                .get("endpointParamsQuery")
                .map(super::router::parse_query)
                .unwrap_or_default(),
            style,
            learned: std::sync::Mutex::new(None),
            path_filter,
            client: WebClient::new(tls, TOKEN_TIMEOUT, MAX_TOKEN_ANSWER),
            current: ArcSwapOption::empty(),
            fetching: Mutex::new(()),
        })
    }

    fn fresh(&self) -> Option<HeaderValue> {
        let cur = self.current.load();
        cur.as_ref()
            .filter(|c| Instant::now() < c.1)
            .map(|c| c.0.clone())
    }

    /// The header value: the kept one, or a new token.
    async fn value(&self) -> Result<HeaderValue, String> {
        if let Some(v) = self.fresh() {
            return Ok(v);
        }
        let _one = self.fetching.lock().await;
        if let Some(v) = self.fresh() {
            return Ok(v);
        }
        let (v, ttl) = self.fetch().await?;
        self.current
            .store(Some(Arc::new((v.clone(), Instant::now() + ttl))));
        Ok(v)
    }

    async fn fetch(&self) -> Result<(HeaderValue, Duration), String> {
        let learned = self.learned.lock().map(|l| *l).unwrap_or(None);
        let styles: &[AuthStyle] = match learned.unwrap_or(self.style) {
            AuthStyle::Auto => &[AuthStyle::Basic, AuthStyle::Form],
            AuthStyle::Basic => &[AuthStyle::Basic],
            AuthStyle::Form => &[AuthStyle::Form],
        };
        let mut last = String::new();
        for &style in styles {
            match self.request(style).await {
                Ok(t) => {
                    if self.style == AuthStyle::Auto
                        && let Ok(mut l) = self.learned.lock()
                    {
                        *l = Some(style);
                    }
                    return Ok(t);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn request(&self, style: AuthStyle) -> Result<(HeaderValue, Duration), String> {
        let mut form = vec![("grant_type", "client_credentials")];
        if !self.scopes.is_empty() {
            form.push(("scope", self.scopes.as_str()));
        }
        if style == AuthStyle::Form {
            form.push(("client_id", self.client_id.as_str()));
            form.push(("client_secret", self.client_secret.as_str()));
        }
        for (k, v) in &self.params {
            form.push((k.as_str(), v.as_str()));
        }
        let body: Vec<String> = form
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect();
        let mut b = http::Request::post(&self.token_url)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json");
        if style == AuthStyle::Basic {
            // RFC 6749 2.3.1: both parts form-encoded first.
            let pair = format!("{}:{}", enc(&self.client_id), enc(&self.client_secret));
            let basic = base64::engine::general_purpose::STANDARD.encode(pair);
            b = b.header(header::AUTHORIZATION, format!("Basic {basic}"));
        }
        let req = b
            .body(http_body_util::Full::new(Bytes::from(body.join("&"))))
            .map_err(|e| e.to_string())?;
        let a = self.client.send(req).await.map_err(|e| e.to_string())?;
        if !a.status.is_success() {
            // The answer's body may echo credentials: the status alone.
            return Err(format!("the token endpoint answered {}", a.status));
        }
        let t: TokenAnswer = serde_json::from_slice(&a.body)
            .map_err(|_| "the token endpoint's answer is not a token (JSON with access_token)")?;
        let kind = match t.token_type.to_ascii_lowercase().as_str() {
            "" | "bearer" => "Bearer".to_owned(),
            "mac" => "MAC".to_owned(),
            "basic" => "Basic".to_owned(),
            _ => t.token_type.clone(),
        };
        let mut value = HeaderValue::try_from(format!("{kind} {}", t.access_token))
            .map_err(|_| "the access token is not valid header text")?;
        value.set_sensitive(true);
        let ttl = match t.expires_in.as_ref().and_then(seconds) {
            Some(s) => Duration::from_secs(s).saturating_sub(EARLY_REFRESH),
            None => NO_EXPIRY_TTL,
        };
        Ok((value, ttl))
    }
}

/// `expires_in` as a number or a numeric string (some servers send one).
fn seconds(v: &serde_json::Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        .filter(|s| *s > 0)
}

const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn enc(s: &str) -> String {
    utf8_percent_encode(s, FORM).to_string()
}

impl Handler for ClientCredentials {
    fn handle<'a>(&'a self, mut req: Request<SkiffBody>, _: &'a Cx) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            if let Some(f) = &self.path_filter
                && !f.is_match(req.uri().path())
            {
                return Ok(req);
            }
            match self.value().await {
                Ok(v) => {
                    req.headers_mut().append(self.header.clone(), v);
                    Ok(req)
                }
                Err(why) => {
                    tracing::warn!(token_url = %self.token_url, %why, "oauth2clientcredentials: no token; request refused");
                    Err(text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "oauth2clientcredentials: no access token could be had from the token endpoint",
                    ))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_checked_at_start() {
        let err = ClientCredentials::open(&Properties::new())
            .err()
            .expect("refused");
        assert!(
            err.contains("clientID, clientSecret, scopes, tokenURL, headerName"),
            "{err}"
        );
        let mut m = Properties::new();
        for (k, v) in [
            ("clientId", "id"),
            ("clientSecret", "s"),
            ("scopes", "a,b"),
            ("tokenURL", "http://127.0.0.1:1/token"),
            ("headerName", "authorization"),
        ] {
            m.insert(k, v);
        }
        let c = ClientCredentials::open(&m).expect("valid (keys in any case)");
        assert_eq!(c.scopes, "a b");
        m.insert("authStyle", "3");
        assert!(ClientCredentials::open(&m).is_err());
    }

    #[test]
    fn expiry_reads_numbers_and_strings() {
        assert_eq!(seconds(&serde_json::json!(3600)), Some(3600));
        assert_eq!(seconds(&serde_json::json!("60")), Some(60));
        assert_eq!(seconds(&serde_json::json!(0)), None);
    }
}
