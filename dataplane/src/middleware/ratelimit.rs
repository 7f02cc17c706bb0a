//! `middleware.http.ratelimit`: at most `maxRequestsPerSecond` requests a
//! second from each client to each path (a token bucket per client and
//! path, its burst the same number and full at first, as the Go
//! `tollbooth` limiter Dapr uses), answering 429 past it. The client is,
//! as tollbooth reads it, the last `X-Forwarded-For` entry, else
//! `X-Real-IP`, else the connection's peer; an IPv6 client is its /64.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use dashmap::DashMap;
use http::{HeaderValue, Request, StatusCode};
use skiff_components::{BoxFuture, MetadataError, Properties};
use tokio::time::Instant;

use super::{Cx, Handler, Outcome, text};
use crate::skiff_body::SkiffBody;

/// Dapr's default `maxRequestsPerSecond`.
pub const DEFAULT_MAX_RPS: f64 = 100.0;
/// Buckets idle this long are dropped (a full bucket is the same as none).
const IDLE: Duration = Duration::from_secs(60);
/// Sweep idle buckets when the table grows past this.
const SWEEP_AT: usize = 4096;
/// tollbooth's answer.
const MESSAGE: &str = "You have reached maximum request limit.";

struct Bucket {
    tokens: f64,
    last: Instant,
}

pub struct RateLimit {
    rate: f64,
    burst: f64,
    limit_header: HeaderValue,
    buckets: DashMap<String, Bucket>,
}

impl RateLimit {
    pub fn open(m: &Properties) -> Result<Self, String> {
        let rate = match m.get("maxRequestsPerSecond") {
            None => DEFAULT_MAX_RPS,
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| r.is_finite() && *r > 0.0)
                .ok_or_else(|| {
                    MetadataError {
                        field: "maxRequestsPerSecond".into(),
                        why: format!("{v:?} is not a positive number"),
                    }
                    .to_string()
                })?,
        };
        Ok(Self {
            rate,
            burst: rate.max(1.0),
            limit_header: HeaderValue::from_str(&format!("{rate}"))
                .unwrap_or(HeaderValue::from_static("0")),
            buckets: DashMap::new(),
        })
    }

    /// Takes a token from `key`'s bucket; false when it has none.
    fn take(&self, key: &str, now: Instant) -> bool {
        if self.buckets.len() > SWEEP_AT {
            self.buckets
                .retain(|_, b| now.duration_since(b.last) < IDLE);
        }
        let mut b = self.buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The client and path a request is counted against.
fn key(req: &Request<SkiffBody>, cx: &Cx) -> String {
    let h = req.headers();
    let last = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let client = last("x-forwarded-for")
        .or_else(|| last("x-real-ip"))
        .and_then(|v| v.parse::<IpAddr>().ok())
        .or(cx.remote);
    let client = match client {
        Some(IpAddr::V6(v6)) => {
            let mut s = v6.segments();
            s[4..].fill(0);
            format!("{}/64", Ipv6Addr::from(s))
        }
        Some(v4) => v4.to_string(),
        None => String::new(),
    };
    format!("{client}|{}|", req.uri().path())
}

impl Handler for RateLimit {
    fn handle<'a>(&'a self, req: Request<SkiffBody>, cx: &'a Cx) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            if self.take(&key(&req, cx), Instant::now()) {
                return Ok(req);
            }
            let mut r = text(StatusCode::TOO_MANY_REQUESTS, MESSAGE);
            r.headers_mut()
                .insert("x-rate-limit-limit", self.limit_header.clone());
            r.headers_mut()
                .insert("x-rate-limit-duration", HeaderValue::from_static("1"));
            Err(r)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::tests::cx;

    fn limit(rps: &str) -> RateLimit {
        let mut m = Properties::new();
        m.insert("maxRequestsPerSecond", rps);
        RateLimit::open(&m).expect("valid")
    }

    async fn passes(l: &RateLimit, cx: &Cx) -> bool {
        l.handle(Request::new(SkiffBody::Empty), cx).await.is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn each_address_gets_its_rate_with_a_burst_of_the_same() {
        let l = limit("2");
        let a = cx();
        let b = Cx {
            remote: Some([127, 0, 0, 2].into()),
            ..cx()
        };
        assert!(passes(&l, &a).await && passes(&l, &a).await);
        let refused = l
            .handle(Request::new(SkiffBody::Empty), &a)
            .await
            .expect_err("over the limit");
        assert_eq!(refused.status(), 429);
        assert!(passes(&l, &b).await, "another client has its own bucket");
        let mut other_path = Request::new(SkiffBody::Empty);
        *other_path.uri_mut() = http::Uri::from_static("/other");
        assert!(
            l.handle(other_path, &a).await.is_ok(),
            "and so has another path"
        );
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(passes(&l, &a).await, "one token back after half a second");
        assert!(!passes(&l, &a).await);
    }

    #[test]
    fn bad_rates_are_refused_at_start() {
        for bad in ["0", "-1", "many"] {
            let mut m = Properties::new();
            m.insert("maxRequestsPerSecond", bad);
            assert!(RateLimit::open(&m).is_err(), "{bad}");
        }
        assert_eq!(
            RateLimit::open(&Properties::new()).expect("default").rate,
            100.0
        );
    }

    #[test]
    fn the_client_is_read_as_tollbooth_reads_it() {
        let mut req = Request::new(SkiffBody::Empty);
        *req.uri_mut() = http::Uri::from_static("/v1.0/invoke/a/method/m?x=1");
        assert_eq!(key(&req, &cx()), "127.0.0.1|/v1.0/invoke/a/method/m|");
        req.headers_mut().insert(
            "x-forwarded-for",
            HeaderValue::from_static("10.1.2.3, 10.9.9.9"),
        );
        let app = Cx {
            remote: None,
            ..cx()
        };
        assert_eq!(key(&req, &app), "10.9.9.9|/v1.0/invoke/a/method/m|");
        req.headers_mut().remove("x-forwarded-for");
        req.headers_mut().insert(
            "x-real-ip",
            HeaderValue::from_static("2001:db8:1:2:3:4:5:6"),
        );
        assert_eq!(
            key(&req, &app),
            "2001:db8:1:2::/64|/v1.0/invoke/a/method/m|"
        );
    }
}
