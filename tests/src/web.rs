//! A small web server the tests run on loopback in their own process, for
//! what a sidecar fetches from the web: an OpenID provider's discovery
//! document and key set, an OAuth 2.0 token endpoint. It answers by a
//! function of the request and counts the requests per path. Also ES256
//! keys and tokens for the bearer tests, made with `ring`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// An answer: status, content type, body.
pub type Answer = (u16, &'static str, String);
pub type Route = Arc<dyn Fn(&Seen) -> Answer + Send + Sync>;

/// A started server; stopped when dropped.
pub struct WebServer {
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    route: Arc<Mutex<Route>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WebServer {
    pub async fn start(route: Route) -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let route = Arc::new(Mutex::new(route));
        let (s, r) = (seen.clone(), route.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = l.accept().await else {
                    return;
                };
                let (s, r) = (s.clone(), r.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let (s, r) = (s.clone(), r.clone());
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body.collect().await?.to_bytes();
                                let seen = Seen {
                                    method: parts.method.to_string(),
                                    path: parts.uri.path().to_owned(),
                                    headers: parts.headers,
                                    body,
                                };
                                let route = r.lock().expect("lock").clone();
                                let (status, ct, text) = route(&seen);
                                s.lock().expect("lock").push(seen);
                                let mut resp = http::Response::new(Full::new(Bytes::from(text)));
                                *resp.status_mut() =
                                    http::StatusCode::from_u16(status).expect("status");
                                resp.headers_mut().insert(
                                    http::header::CONTENT_TYPE,
                                    http::HeaderValue::from_static(ct),
                                );
                                Ok::<_, hyper::Error>(resp)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(conn), svc)
                        .await;
                });
            }
        });
        Self {
            port,
            seen,
            route,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Answers by `route` from now on.
    pub fn set_route(&self, route: Route) {
        *self.route.lock().expect("lock") = route;
    }

    /// Requests so far, per path.
    pub fn hits(&self) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for s in self.seen.lock().expect("lock").iter() {
            *out.entry(s.path.clone()).or_default() += 1;
        }
        out
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

/// An ES256 signing key with a `kid`.
pub struct SigningKey {
    pair: EcdsaKeyPair,
    pub kid: String,
}

impl SigningKey {
    pub fn new(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("keygen");
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("key");
        Self {
            pair,
            kid: kid.into(),
        }
    }

    /// The public half as a JWK.
    pub fn jwk(&self) -> Value {
        let p = self.pair.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])})
    }

    /// A token over `claims` with `header` as given.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let signed = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self
            .pair
            .sign(&SystemRandom::new(), signed.as_bytes())
            .expect("sign");
        format!("{signed}.{}", B64.encode(sig.as_ref()))
    }

    /// An ES256 token over `claims`, naming this key.
    pub fn token(&self, claims: &Value) -> String {
        self.sign_with_header(
            &json!({"alg": "ES256", "typ": "JWT", "kid": self.kid}),
            claims,
        )
    }
}

/// An unsigned token (`alg: none`).
pub fn unsigned_token(claims: &Value) -> String {
    format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(claims.to_string())
    )
}

/// A token "signed" with HMAC-SHA256 keyed by `secret` (the classic
/// confusion attack keys it with the public key's text).
pub fn hs256_token(secret: &[u8], kid: &str, claims: &Value) -> String {
    let signed = format!(
        "{}.{}",
        B64.encode(json!({"alg": "HS256", "typ": "JWT", "kid": kid}).to_string()),
        B64.encode(claims.to_string())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    format!(
        "{signed}.{}",
        B64.encode(ring::hmac::sign(&key, signed.as_bytes()).as_ref())
    )
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
