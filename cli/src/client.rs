//! A small HTTP/1.1 client for talking to local sidecars: health checks,
//! `/v1.0/metadata`, invoke, publish and metrics scrapes. Loopback only;
//! every call has a deadline.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long one call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Answer {
    pub status: http::StatusCode,
    pub body: Bytes,
}

#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    pub fn new() -> Self {
        let mut c = HttpConnector::new();
        c.set_nodelay(true);
        c.set_connect_timeout(Some(Duration::from_secs(2)));
        Self {
            client: Client::builder(TokioExecutor::new()).build(c),
        }
    }

    pub async fn call(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<Answer> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(url)
            .body(Full::new(body))
            .with_context(|| format!("building the request to {url}"))?;
        for (k, v) in headers {
            req.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes())?,
                http::HeaderValue::from_str(v)?,
            );
        }
        let fut = async {
            let resp = self.client.request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>(Answer { status, body })
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| anyhow!("{url}: no answer within {timeout:?}"))?
            .with_context(|| format!("calling {url}"))
    }

    pub async fn get(&self, url: &str, timeout: Duration) -> Result<Answer> {
        self.call("GET", url, &[], Bytes::new(), timeout).await
    }

    /// `GET` and parse JSON.
    pub async fn get_json(&self, url: &str, timeout: Duration) -> Result<serde_json::Value> {
        let a = self.get(url, timeout).await?;
        if !a.status.is_success() {
            return Err(anyhow!("{url}: {}", a.status));
        }
        serde_json::from_slice(&a.body).with_context(|| format!("{url}: not JSON"))
    }

    /// A local sidecar's `/v1.0/metadata`, if it answers within a second.
    pub async fn metadata(&self, http_port: u16) -> Option<serde_json::Value> {
        self.get_json(
            &format!("http://127.0.0.1:{http_port}/v1.0/metadata"),
            Duration::from_secs(1),
        )
        .await
        .ok()
    }
}
