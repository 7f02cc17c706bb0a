//! The Prometheus exporter: `GET /` and `GET /metrics` on `--metrics-port`
//! answer the text exposition of the registry.
//!
//! A separate listener, so a scrape never queues behind API traffic and the
//! port can be exposed to a scraper without exposing the API.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::metrics;

/// Prometheus' text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves scrapes until the process ends.
pub async fn serve(listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let conn = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
            if let Err(e) = conn {
                tracing::debug!(%peer, error = %e, "metrics connection ended");
            }
        });
    }
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(respond(req.method(), req.uri().path()))
}

fn respond(method: &Method, path: &str) -> Response<Full<Bytes>> {
    let mut r = match (method, path) {
        (&Method::GET | &Method::HEAD, "/" | "/metrics") => {
            let mut r = Response::new(Full::new(Bytes::from(metrics::registry().render())));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            r
        }
        _ => {
            let mut r = Response::new(Full::new(Bytes::from_static(
                b"metrics are at GET /metrics\n",
            )));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    };
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(respond(&Method::GET, "/metrics").status(), StatusCode::OK);
        assert_eq!(respond(&Method::GET, "/").status(), StatusCode::OK);
        assert_eq!(respond(&Method::GET, "/x").status(), StatusCode::NOT_FOUND);
        assert_eq!(
            respond(&Method::POST, "/metrics").status(),
            StatusCode::NOT_FOUND
        );
    }
}
