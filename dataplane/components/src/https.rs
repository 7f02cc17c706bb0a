//! An HTTP(S) client for the parts that call web servers (`bindings.http`,
//! the sidecar's middleware fetching key sets and tokens): a hyper-util
//! connector that dials TCP and runs a rustls handshake, trusting
//! `MTLSRootCA` (else the system's roots) and presenting `MTLSClientCert` /
//! `MTLSClientKey` when given — each a PEM text or the path of a PEM file,
//! as Dapr takes them — and [`WebClient`], one request with a deadline
//! and a bounded answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::{MetadataError, Properties};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// PEM text, or the file that holds it.
fn pem(meta: &Properties, field: &str) -> Result<Option<Vec<u8>>, MetadataError> {
    let Some(v) = meta.get(field).map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if v.starts_with("-----BEGIN") {
        return Ok(Some(v.as_bytes().to_vec()));
    }
    std::fs::read(v).map(Some).map_err(|e| MetadataError {
        field: field.into(),
        why: format!("is neither PEM nor a readable file: {e}"),
    })
}

/// The client's TLS settings from the component's metadata.
pub fn config(meta: &Properties) -> Result<Arc<rustls::ClientConfig>, MetadataError> {
    let bad = |field: &str, why: String| MetadataError {
        field: field.into(),
        why,
    };
    let mut roots = rustls::RootCertStore::empty();
    match pem(meta, "MTLSRootCA")? {
        Some(p) => {
            for c in CertificateDer::pem_slice_iter(&p) {
                let c = c.map_err(|e| bad("MTLSRootCA", e.to_string()))?;
                roots.add(c).map_err(|e| bad("MTLSRootCA", e.to_string()))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("url", e.to_string()))?
        .with_root_certificates(roots);
    let cfg = match (pem(meta, "MTLSClientCert")?, pem(meta, "MTLSClientKey")?) {
        (Some(c), Some(k)) => {
            let certs = CertificateDer::pem_slice_iter(&c)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("MTLSClientCert", e.to_string()))?;
            let key = PrivateKeyDer::from_pem_slice(&k)
                .map_err(|e| bad("MTLSClientKey", e.to_string()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| bad("MTLSClientCert", e.to_string()))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(bad(
                "MTLSClientCert",
                "and MTLSClientKey come together".into(),
            ));
        }
    };
    Ok(Arc::new(cfg))
}

/// Dials `host:port` of the URI, then TLS.
#[derive(Clone)]
pub struct Https {
    pub tls: Arc<rustls::ClientConfig>,
}

pub struct Stream(TokioIo<tokio_rustls::client::TlsStream<TcpStream>>);

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tower_service::Service<http::Uri> for Https {
    type Response = Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or("the URL has no host")?
                .trim_matches(['[', ']'])
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host)?;
            let s = TlsConnector::from(tls).connect(name, tcp).await?;
            Ok(Stream(TokioIo::new(s)))
        })
    }
}

/// Why a [`WebClient`] request failed. Messages name the URL without its
/// query (which may carry credentials).
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("{url}: only http:// and https:// URLs are supported")]
    Scheme { url: String },
    #[error("{url}: {source}")]
    Send {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("{url}: no answer within {after:?}")]
    Timeout {
        url: String,
        after: std::time::Duration,
    },
    #[error("{url}: reading the answer: {why}")]
    Body { url: String, why: String },
}

/// One answer, read whole.
#[derive(Debug)]
pub struct WebAnswer {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

type Full = http_body_util::Full<bytes::Bytes>;

/// Plain and TLS clients with pooled connections; every request has a
/// deadline and its answer a size limit.
pub struct WebClient {
    plain: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full,
    >,
    tls: hyper_util::client::legacy::Client<Https, Full>,
    timeout: std::time::Duration,
    max_body: usize,
}

impl WebClient {
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        timeout: std::time::Duration,
        max_body: usize,
    ) -> Self {
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;
        Self {
            plain: Client::builder(TokioExecutor::new())
                .build(hyper_util::client::legacy::connect::HttpConnector::new()),
            tls: Client::builder(TokioExecutor::new()).build(Https { tls }),
            timeout,
            max_body,
        }
    }

    /// Sends `req` (an absolute URI) and reads the answer whole.
    pub async fn send(&self, req: http::Request<Full>) -> Result<WebAnswer, WebError> {
        use http_body_util::BodyExt;
        let uri = req.uri();
        let url = format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or(""),
            uri.authority().map_or("", |a| a.as_str()),
            uri.path()
        );
        let sent = match uri.scheme_str() {
            Some("https") => self.tls.request(req),
            Some("http") => self.plain.request(req),
            _ => return Err(WebError::Scheme { url }),
        };
        let work = async {
            let resp = sent.await.map_err(|source| WebError::Send {
                url: url.clone(),
                source,
            })?;
            let (parts, body) = resp.into_parts();
            let body = http_body_util::Limited::new(body, self.max_body)
                .collect()
                .await
                .map_err(|e| WebError::Body {
                    url: url.clone(),
                    why: e.to_string(),
                })?
                .to_bytes();
            Ok(WebAnswer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(WebError::Timeout {
                url,
                after: self.timeout,
            }),
        }
    }
}
