//! `bindings.http` (Dapr's type, output): a request to `url` (plus
//! `metadata.path`). Operations `create` (POST), `get`, `head`, `post`,
//! `put`, `patch`, `delete`, `options`, `trace`. Request metadata whose
//! key starts with an uppercase letter becomes a request header (Dapr's
//! rule); `Content-Type` and `Accept` default to JSON. The response
//! metadata holds `statusCode`, `status` and every response header; a
//! non-2xx answer is an error unless `errorIfNot2XX` is false. `https://`
//! URLs verify the server against `MTLSRootCA` (else the system's roots)
//! and present `MTLSClientCert` / `MTLSClientKey` when given.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::{BindingError, Metadata, OutputBinding, Request, Response};
use crate::{BoxFuture, MetadataError, Properties};

pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_RESPONSE_BODY: usize = 100 << 20;
const JSON: &str = "application/json; charset=utf-8";

/// The client for the URL's scheme.
enum Clients {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<crate::https::Https, Full<Bytes>>),
}

impl Clients {
    async fn request(
        &self,
        r: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        match self {
            Self::Plain(c) => c.request(r).await,
            Self::Tls(c) => c.request(r).await,
        }
    }
}

pub struct HttpBinding {
    url: String,
    client: Clients,
    timeout: Duration,
    max_body: usize,
    error_if_not_2xx: bool,
    token: Option<(String, String)>,
}

impl HttpBinding {
    pub fn open(meta: &Properties) -> Result<Arc<Self>, MetadataError> {
        let url = meta.required("url")?.trim_end_matches('/').to_owned();
        let client = if url.starts_with("https://") {
            let tls = crate::https::config(meta)?;
            Clients::Tls(Client::builder(TokioExecutor::new()).build(crate::https::Https { tls }))
        } else if url.starts_with("http://") {
            Clients::Plain(Client::builder(TokioExecutor::new()).build(HttpConnector::new()))
        } else {
            return Err(MetadataError {
                field: "url".into(),
                why: "must be an http:// or https:// URL".into(),
            });
        };
        let token = match (meta.get("securityToken"), meta.get("securityTokenHeader")) {
            (Some(t), Some(h)) => Some((h.to_owned(), t.to_owned())),
            (None, None) => None,
            _ => {
                return Err(MetadataError {
                    field: "securityToken".into(),
                    why: "needs securityTokenHeader too (and the other way round)".into(),
                });
            }
        };
        Ok(Arc::new(Self {
            url,
            client,
            timeout: meta.duration_or("responseTimeout", DEFAULT_RESPONSE_TIMEOUT)?,
            max_body: meta.int_or("maxResponseBodySize", DEFAULT_MAX_RESPONSE_BODY)?,
            error_if_not_2xx: meta.bool_or("errorIfNot2XX", true)?,
            token,
        }))
    }

    async fn run(&self, req: Request) -> Result<Response, BindingError> {
        let method = match req.operation.as_str() {
            "create" | "post" => http::Method::POST,
            "get" => http::Method::GET,
            "head" => http::Method::HEAD,
            "put" => http::Method::PUT,
            "patch" => http::Method::PATCH,
            "delete" => http::Method::DELETE,
            "options" => http::Method::OPTIONS,
            "trace" => http::Method::TRACE,
            op => {
                return Err(BindingError::Invalid(format!(
                    "operation {op:?} is not supported (create, get, head, post, put, patch, delete, options, trace)"
                )));
            }
        };
        let mut url = self.url.clone();
        if let Some(p) = req.metadata.get("path") {
            if !p.starts_with('/') {
                url.push('/');
            }
            url.push_str(p);
        }
        let mut b = http::Request::builder().method(method).uri(&url);
        let mut has_ct = false;
        let mut has_accept = false;
        for (k, v) in &req.metadata {
            if k.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
                has_ct |= k.eq_ignore_ascii_case("content-type");
                has_accept |= k.eq_ignore_ascii_case("accept");
                b = b.header(k.as_str(), v.as_str());
            }
        }
        if !has_ct {
            b = b.header(http::header::CONTENT_TYPE, JSON);
        }
        if !has_accept {
            b = b.header(http::header::ACCEPT, JSON);
        }
        if let Some((h, t)) = &self.token {
            b = b.header(h.as_str(), t.as_str());
        }
        let r = b
            .body(Full::new(req.data))
            .map_err(|e| BindingError::Invalid(format!("bad request to {url}: {e}")))?;
        let resp = tokio::time::timeout(self.timeout, self.client.request(r))
            .await
            .map_err(|_| {
                BindingError::Backend(format!("{url}: no answer within {:?}", self.timeout))
            })?
            .map_err(|e| BindingError::Backend(format!("{url}: {e}")))?;
        let status = resp.status();
        let mut md = Metadata::new();
        md.insert("statusCode".into(), status.as_u16().to_string());
        md.insert("status".into(), status.to_string());
        for (k, v) in resp.headers() {
            md.insert(
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            );
        }
        let body = Limited::new(resp.into_body(), self.max_body)
            .collect()
            .await
            .map_err(|e| BindingError::Backend(format!("{url}: reading the answer: {e}")))?
            .to_bytes();
        if self.error_if_not_2xx && !status.is_success() {
            return Err(BindingError::Backend(format!(
                "received status code {}: {}",
                status.as_u16(),
                String::from_utf8_lossy(&body[..body.len().min(512)])
            )));
        }
        Ok(Response {
            data: Some(body),
            metadata: md,
        })
    }
}

impl OutputBinding for HttpBinding {
    fn operations(&self) -> &'static [&'static str] {
        &[
            "create", "get", "head", "post", "put", "patch", "delete", "options", "trace",
        ]
    }

    fn invoke(&self, req: Request) -> BoxFuture<'_, Result<Response, BindingError>> {
        Box::pin(self.run(req))
    }
}
