//! What the HTTP codecs and the pool ask of a body, and nothing more.
//!
//! `http1`, `http2` and `pool` are generic over the body they send
//! ([`OutBody`]) and hand back bodies of their own types; the sidecar's one
//! body type, [`crate::skiff_body::SkiffBody`], sits above them and wraps
//! those. So a new kind of body (a building block's answer, say) touches
//! `skiff_body` alone, never the layers that move bytes.

use bytes::Bytes;
use http_body::Body;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body a codec can send: its frames as they come, and, when it is one
/// message already in memory, all of its bytes at once, so they leave in
/// the same write as the head (and can be written again when a request
/// must be resent on a fresh connection).
pub trait OutBody: Body<Data = Bytes, Error = BoxError> + Send + Unpin + 'static {
    /// The whole body if it is in memory now (`Some(empty)` for no body at
    /// all), leaving `self` ended; `None` for a body that streams.
    fn take_in_memory(&mut self) -> Option<Bytes>;
}

/// Reads a whole body, failing once it exceeds `limit` bytes. Used only where
/// a protocol conversion needs the complete message.
pub async fn collect_limited<B>(body: B, limit: usize) -> Result<Bytes, CollectError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    use http_body_util::BodyExt;
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(CollectError::TooLarge(limit)),
        Err(e) => Err(CollectError::Body(e)),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("body exceeds the limit of {0} bytes (--max-body-size)")]
    TooLarge(usize),
    #[error("reading body: {0}")]
    Body(BoxError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn collect_respects_limit() {
        let full = |s: &'static str| http_body_util::Full::new(Bytes::from_static(s.as_bytes()));
        let ok = collect_limited(full("hello"), 5).await.expect("fits");
        assert_eq!(&ok[..], b"hello");
        let err = collect_limited(full("hello!"), 5).await;
        assert!(matches!(err, Err(CollectError::TooLarge(5))));
    }
}
