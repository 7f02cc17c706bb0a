//! The Kubernetes token validator: a sidecar proves its identity with its
//! pod's service account token.
//!
//! Sentry asks the API server to review the token (TokenReview), which says
//! whose it is (`system:serviceaccount:<ns>:<sa>`) and from which pod. The
//! request is granted when the namespace is the one asked for, and the pod
//! runs as that service account with the `dapr.io/app-id` annotation equal
//! to the app id asked for: a token from another app's pod cannot get this
//! app's certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::SpiffeId;

/// Where a pod finds its service account credentials.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The annotation naming a pod's app id.
pub const APP_ID_ANNOTATION: &str = "dapr.io/app-id";
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const API_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("the API server did not authenticate the token: {0}")]
    NotAuthenticated(String),
    #[error("the token belongs to {0}, not a service account")]
    NotServiceAccount(String),
    #[error("the token is from namespace {found}, the request is for {requested}")]
    Namespace { requested: String, found: String },
    #[error("the token is not bound to a pod (no {POD_NAME_EXTRA})")]
    NoPod,
    #[error("pod {pod} has {APP_ID_ANNOTATION}={found:?}, the request is for {requested:?}")]
    AppId {
        pod: String,
        requested: String,
        found: String,
    },
    #[error("pod {pod} runs as service account {found:?}, the token is {token_sa:?}'s")]
    ServiceAccount {
        pod: String,
        found: String,
        token_sa: String,
    },
    #[error("API server {url}: {why}")]
    Api { url: String, why: String },
    #[error("{path}: {why}")]
    Config { path: PathBuf, why: String },
}

/// Talks to one API server.
pub struct KubeValidator {
    base: Uri,
    tls: Arc<rustls::ClientConfig>,
    /// Sentry's own credential for the API server.
    bearer: String,
}

impl KubeValidator {
    /// `api` is `https://host:port`; `ca_file` the API server's CA;
    /// `token_file` sentry's service account token.
    pub fn new(api: &str, ca_file: &Path, token_file: &Path) -> Result<Self, KubeError> {
        let base: Uri = api.parse().map_err(|e| KubeError::Api {
            url: api.to_owned(),
            why: format!("not a URL: {e}"),
        })?;
        if base.scheme_str() != Some("https") || base.host().is_none() {
            return Err(KubeError::Api {
                url: api.to_owned(),
                why: "must be https://host[:port]".into(),
            });
        }
        let config_err = |path: &Path, why: String| KubeError::Config {
            path: path.to_owned(),
            why,
        };
        let ca = std::fs::read(ca_file).map_err(|e| config_err(ca_file, e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in crate::pem::certs(&ca, &ca_file.display().to_string())
            .map_err(|e| config_err(ca_file, e.to_string()))?
        {
            roots
                .add(c)
                .map_err(|e| config_err(ca_file, e.to_string()))?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| config_err(ca_file, e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let bearer = std::fs::read_to_string(token_file)
            .map_err(|e| config_err(token_file, e.to_string()))?
            .trim()
            .to_owned();
        Ok(Self {
            base,
            tls: Arc::new(tls),
            bearer,
        })
    }

    /// Whether `token` proves `id`.
    pub async fn validate(&self, id: &SpiffeId, token: &str) -> Result<(), KubeError> {
        let review = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": { "token": token },
        });
        let r = self
            .call(
                Method::POST,
                "/apis/authentication.k8s.io/v1/tokenreviews",
                Some(review),
            )
            .await?;
        let status = &r["status"];
        if status["authenticated"].as_bool() != Some(true) {
            let why = status["error"].as_str().unwrap_or("not authenticated");
            return Err(KubeError::NotAuthenticated(why.to_owned()));
        }
        let user = status["user"]["username"].as_str().unwrap_or_default();
        let mut parts = user.splitn(4, ':');
        let (Some("system"), Some("serviceaccount"), Some(ns), Some(sa)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(KubeError::NotServiceAccount(user.to_owned()));
        };
        if ns != id.namespace() {
            return Err(KubeError::Namespace {
                requested: id.namespace().to_owned(),
                found: ns.to_owned(),
            });
        }
        let pod = status["user"]["extra"][POD_NAME_EXTRA][0]
            .as_str()
            .ok_or(KubeError::NoPod)?;
        let p = self
            .call(
                Method::GET,
                &format!("/api/v1/namespaces/{ns}/pods/{pod}"),
                None,
            )
            .await?;
        let app = p["metadata"]["annotations"][APP_ID_ANNOTATION]
            .as_str()
            .unwrap_or_default();
        if app != id.app_id() {
            return Err(KubeError::AppId {
                pod: pod.to_owned(),
                requested: id.app_id().to_owned(),
                found: app.to_owned(),
            });
        }
        let pod_sa = p["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default");
        if pod_sa != sa {
            return Err(KubeError::ServiceAccount {
                pod: pod.to_owned(),
                found: pod_sa.to_owned(),
                token_sa: sa.to_owned(),
            });
        }
        Ok(())
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, KubeError> {
        let url = format!("{}{path}", self.base.to_string().trim_end_matches('/'));
        let err = |why: String| KubeError::Api {
            url: url.clone(),
            why,
        };
        tokio::time::timeout(API_TIMEOUT, self.call_inner(method, path, body))
            .await
            .map_err(|_| err(format!("no answer within {API_TIMEOUT:?}")))?
            .map_err(err)
    }

    async fn call_inner(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let host = self.base.host().unwrap_or_default();
        let port = self.base.port_u16().unwrap_or(443);
        let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
            .map_err(|e| format!("server name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        tokio::spawn(conn);
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, host)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.bearer),
            )
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| e.to_string())?;
        let resp = tx
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("HTTP body: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "HTTP {}: {}",
                status.as_u16(),
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("not JSON: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Response;
    use hyper::body::Incoming;

    /// Recorded API server answers: TokenReview by token, pods by path.
    fn answer(path: &str, body: &[u8]) -> (u16, Value) {
        if path == "/apis/authentication.k8s.io/v1/tokenreviews" {
            let req: Value = serde_json::from_slice(body).unwrap_or_default();
            let user = |sa: &str, ns: &str, pod: &str| {
                serde_json::json!({"kind": "TokenReview", "status": {"authenticated": true, "user": {
                    "username": format!("system:serviceaccount:{ns}:{sa}"),
                    "extra": {"authentication.kubernetes.io/pod-name": [pod]}}}})
            };
            return match req["spec"]["token"].as_str() {
                Some("orders-token") => (201, user("orders-sa", "shop", "orders-7d9")),
                Some("impostor-token") => (201, user("orders-sa", "shop", "payments-5c1")),
                Some("other-ns-token") => (201, user("orders-sa", "lab", "orders-7d9")),
                Some("user-token") => (
                    201,
                    serde_json::json!({"status": {"authenticated": true,
                    "user": {"username": "alice"}}}),
                ),
                _ => (
                    201,
                    serde_json::json!({"status": {"authenticated": false, "error": "invalid bearer token"}}),
                ),
            };
        }
        let pod = |app: &str, sa: &str| {
            serde_json::json!({"metadata": {"annotations": {"dapr.io/app-id": app}},
                "spec": {"serviceAccountName": sa}})
        };
        match path {
            "/api/v1/namespaces/shop/pods/orders-7d9" => (200, pod("orders", "orders-sa")),
            "/api/v1/namespaces/shop/pods/payments-5c1" => (200, pod("payments", "payments-sa")),
            _ => (404, serde_json::json!({"kind": "Status", "code": 404})),
        }
    }

    async fn api_server(dir: &Path) -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.subject_alt_names = vec![rcgen::SanType::IpAddress([127, 0, 0, 1].into())];
        let cert = p.self_signed(&key).expect("cert");
        std::fs::write(dir.join("ca.crt"), cert.pem()).expect("write");
        std::fs::write(dir.join("token"), "sentry-sa-token\n").expect("write");
        let config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let authorized = req
                            .headers()
                            .get(http::header::AUTHORIZATION)
                            .is_some_and(|v| v == "Bearer sentry-sa-token");
                        let path = req.uri().path().to_owned();
                        let body = req.into_body().collect().await?.to_bytes();
                        let (status, json) = if authorized {
                            answer(&path, &body)
                        } else {
                            (401, serde_json::json!({"code": 401}))
                        };
                        Ok::<_, hyper::Error>(
                            Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from(json.to_string())))
                                .expect("response"),
                        )
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        format!("https://127.0.0.1:{}", addr.port())
    }

    #[tokio::test]
    async fn token_review_and_pod_annotation_decide() {
        let dir = std::env::temp_dir().join(format!("skiff-kube-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let api = api_server(&dir).await;
        let v =
            KubeValidator::new(&api, &dir.join("ca.crt"), &dir.join("token")).expect("validator");
        let id = |ns: &str, app: &str| SpiffeId::new("public", ns, app).expect("id");

        v.validate(&id("shop", "orders"), "orders-token")
            .await
            .expect("the pod's own identity");
        let e = v
            .validate(&id("shop", "payments"), "orders-token")
            .await
            .expect_err("another app id");
        assert!(matches!(e, KubeError::AppId { .. }), "{e}");
        let e = v
            .validate(&id("shop", "payments"), "impostor-token")
            .await
            .expect_err("wrong service account");
        assert!(matches!(e, KubeError::ServiceAccount { .. }), "{e}");
        let e = v
            .validate(&id("shop", "orders"), "other-ns-token")
            .await
            .expect_err("another namespace");
        assert!(matches!(e, KubeError::Namespace { .. }), "{e}");
        let e = v
            .validate(&id("shop", "orders"), "user-token")
            .await
            .expect_err("not a service account");
        assert!(matches!(e, KubeError::NotServiceAccount(_)), "{e}");
        let e = v
            .validate(&id("shop", "orders"), "garbage")
            .await
            .expect_err("unauthenticated");
        assert!(e.to_string().contains("invalid bearer token"), "{e}");

        // Sentry's own credential is wrong: a clear API error, not a grant.
        std::fs::write(dir.join("token"), "wrong").expect("write");
        let bad =
            KubeValidator::new(&api, &dir.join("ca.crt"), &dir.join("token")).expect("validator");
        let e = bad
            .validate(&id("shop", "orders"), "orders-token")
            .await
            .expect_err("401");
        assert!(e.to_string().contains("HTTP 401"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
