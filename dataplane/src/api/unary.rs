//! How the gRPC door serves a unary call without tonic (the hot RPCs the
//! route table marks `Rpc::Unary`: `GetState`, `SaveState`, `DeleteState`,
//! `PublishEvent`, `InvokeService`). The request's one message is read from
//! the stream's frames (one DATA frame for a small message, kept as it
//! came) and handed to the block's own reader (`grpc.rs` dispatches; the
//! readers decode in place with [`crate::protowire`]); the answer, written
//! by hand into one buffer with its gRPC frame header, goes out followed by
//! `grpc-status: 0` as trailers. Everything runs in the stream's own future
//! on the connection's task: no task, channel or box per call.
//!
//! The door's answers stay those of a gRPC server: `grpc-timeout` bounds
//! the call (`DeadlineExceeded`), a compressed message is refused as daprd
//! refuses it (`Unimplemented`), a message over `--max-body-size` is
//! `ResourceExhausted`, and a frame that is not one whole protobuf message
//! is `Internal`, each with grpc-go's words.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body::Body;
use tonic::Code;

use crate::errors::{ApiError, code};
use crate::headers::GRPC_TIMEOUT;
pub use crate::protowire::{Answer, FRAME_HEADER};
use crate::skiff_body::{Gathered, SkiffBody};

/// Why a call ended without an answer: an error of Dapr's API, or an error
/// answer already made (`InvokeService` relays the app's status).
pub enum Failed {
    Api(ApiError),
    /// Boxed: an error path, and it keeps every call's `Result` small.
    Ready(Box<Response<SkiffBody>>),
}

impl From<ApiError> for Failed {
    fn from(e: ApiError) -> Self {
        Failed::Api(e)
    }
}

/// Serves one unary call: its one message is read (within `limit`) and
/// handed to `handler` with the call's metadata; the handler's answer goes
/// out with `grpc-status: 0`, its error as a gRPC status. `grpc-timeout`
/// bounds all of it.
pub async fn serve<F, Fut>(req: Request<SkiffBody>, limit: usize, handler: F) -> Response<SkiffBody>
where
    F: FnOnce(HeaderMap, Bytes) -> Fut,
    Fut: Future<Output = Result<Answer, Failed>>,
{
    let deadline = deadline_of(req.headers());
    let call = async move {
        let (parts, body) = req.into_parts();
        let msg = read_message(&parts.headers, body, limit).await?;
        handler(parts.headers, msg).await
    };
    // Pinned here and lent to `within`: moved into it, the call's state
    // would be held twice in the stream's future (one allocation per call).
    let mut call = std::pin::pin!(call);
    let out = within(
        deadline,
        call.as_mut(),
        |d| Err(deadline_exceeded(d).into()),
    )
    .await;
    match out {
        Ok(a) => respond(a),
        Err(Failed::Api(e)) => e.to_grpc(),
        Err(Failed::Ready(r)) => *r,
    }
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(v: &HeaderValue) -> Option<Duration> {
    let s = v.to_str().ok()?;
    if s.len() < 2 || s.len() > 9 {
        return None;
    }
    let (n, unit) = s.split_at(s.len() - 1);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The call's `grpc-timeout`, if it has one.
pub fn deadline_of(h: &HeaderMap) -> Option<Duration> {
    h.get(&GRPC_TIMEOUT).and_then(parse_grpc_timeout)
}

/// An answer past the deadline (for a call the door does not read itself).
pub fn past_deadline(d: Duration) -> Response<SkiffBody> {
    deadline_exceeded(d).to_grpc()
}

/// `call`, or `late(deadline)` once the deadline passes.
pub async fn within<F: Future>(
    deadline: Option<Duration>,
    call: F,
    late: impl FnOnce(Duration) -> F::Output,
) -> F::Output {
    let mut call = std::pin::pin!(call);
    let mut timer = std::pin::pin!(deadline.map(tokio::time::sleep));
    let mut late = Some(late);
    std::future::poll_fn(|c| {
        if let std::task::Poll::Ready(out) = call.as_mut().poll(c) {
            return std::task::Poll::Ready(out);
        }
        if let (Some(t), Some(d)) = (timer.as_mut().as_pin_mut(), deadline)
            && t.poll(c).is_ready()
            && let Some(late) = late.take()
        {
            return std::task::Poll::Ready(late(d));
        }
        std::task::Poll::Pending
    })
    .await
}

/// The head, the message, then `grpc-status: 0`.
fn respond(a: Answer) -> Response<SkiffBody> {
    let mut resp = Response::new(SkiffBody::Unary(Some(a.message.0), a.message.1, false));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    *h = a.headers;
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    resp
}

fn internal(message: String) -> ApiError {
    ApiError::new(
        code::MALFORMED_REQUEST,
        StatusCode::BAD_REQUEST,
        Code::Internal,
        message,
    )
}

fn deadline_exceeded(d: Duration) -> ApiError {
    ApiError::new(
        code::DIRECT_INVOKE,
        StatusCode::GATEWAY_TIMEOUT,
        Code::DeadlineExceeded,
        format!(
            "context deadline exceeded (grpc-timeout {} ms)",
            d.as_millis()
        ),
    )
}

/// The one message of a unary call, without its frame header, as a slice
/// of what was received.
pub async fn read_message(
    headers: &HeaderMap,
    body: SkiffBody,
    limit: usize,
) -> Result<Bytes, ApiError> {
    Ok(read_frame(headers, body, limit)
        .await?
        .slice(FRAME_HEADER..))
}

/// The one gRPC frame of a unary call, whole, once it is known to be one
/// uncompressed message within `limit`.
pub async fn read_frame(
    headers: &HeaderMap,
    mut body: SkiffBody,
    limit: usize,
) -> Result<Bytes, ApiError> {
    if let Some(enc) = headers.get("grpc-encoding").filter(|e| *e != "identity") {
        return Err(ApiError::new(
            code::MALFORMED_REQUEST,
            StatusCode::NOT_IMPLEMENTED,
            Code::Unimplemented,
            format!(
                "grpc: Decompressor is not installed for grpc-encoding \"{}\"",
                String::from_utf8_lossy(enc.as_bytes())
            ),
        ));
    }
    let most = limit.saturating_add(FRAME_HEADER);
    let mut got = Gathered::default();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| internal(format!("grpc: reading the request: {e}")))?;
        if let Ok(d) = frame.into_data() {
            got.push(d);
            if got.len() > most {
                return Err(too_large(&got.into_bytes(), limit));
            }
        }
    }
    let frame = got.into_bytes();
    check_frame(&frame, limit)?;
    Ok(frame)
}

/// The message inside one gRPC frame that must be all of `b`.
pub fn unframe(b: Bytes, limit: usize) -> Result<Bytes, ApiError> {
    check_frame(&b, limit)?;
    Ok(b.slice(FRAME_HEADER..))
}

/// Whether `b` is one whole uncompressed gRPC frame within `limit`.
fn check_frame(b: &Bytes, limit: usize) -> Result<(), ApiError> {
    if b.len() < FRAME_HEADER {
        return Err(internal(if b.is_empty() {
            "grpc: the request has no message".to_owned()
        } else {
            "grpc: the request ended inside a frame header".to_owned()
        }));
    }
    let declared = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
    if b[0] == 1 {
        return Err(internal(
            "grpc: compressed flag set with identity or empty encoding".into(),
        ));
    }
    if b[0] != 0 {
        return Err(internal(format!("grpc: invalid compressed flag {}", b[0])));
    }
    if declared > limit {
        return Err(too_large(b, limit));
    }
    let have = b.len() - FRAME_HEADER;
    if have < declared {
        return Err(internal(format!(
            "grpc: the request ended inside its message ({have} of {declared} bytes)"
        )));
    }
    if have > declared {
        return Err(internal(
            "grpc: more than one message in a unary request".into(),
        ));
    }
    Ok(())
}

fn too_large(b: &Bytes, limit: usize) -> ApiError {
    let declared = b.get(1..FRAME_HEADER).map_or(b.len(), |l| {
        u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize
    });
    ApiError::new(
        code::MALFORMED_REQUEST,
        StatusCode::PAYLOAD_TOO_LARGE,
        Code::ResourceExhausted,
        format!(
            "grpc: received message larger than max ({declared} vs. {limit}): message too large (--max-body-size)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(flag: u8, declared: u32, body: &[u8]) -> Bytes {
        let mut b = vec![flag];
        b.extend_from_slice(&declared.to_be_bytes());
        b.extend_from_slice(body);
        Bytes::from(b)
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_ends_a_slow_call_and_spares_a_quick_one() {
        let slow = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "answered"
        };
        let started = tokio::time::Instant::now();
        let got = within(Some(Duration::from_millis(300)), slow, |_| "late").await;
        assert_eq!(got, "late");
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        let quick = async { "answered" };
        assert_eq!(
            within(Some(Duration::from_millis(300)), quick, |_| "late").await,
            "answered"
        );
        let unbounded = async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            "answered"
        };
        assert_eq!(within(None, unbounded, |_| "late").await, "answered");
        let r = past_deadline(Duration::from_millis(300));
        assert_eq!(crate::headers::grpc_status(r.headers()), Some(4));
    }

    #[test]
    fn frames_are_taken_whole_or_refused_with_grpc_codes() {
        let ok = unframe(framed(0, 3, b"abc"), 10).expect("one message");
        assert_eq!(&ok[..], b"abc");
        let empty = unframe(framed(0, 0, b""), 10).expect("an empty message");
        assert!(empty.is_empty());
        let code = |b: Bytes| unframe(b, 10).err().map(|e| e.grpc);
        assert_eq!(code(Bytes::new()), Some(Code::Internal));
        assert_eq!(code(Bytes::from_static(&[0, 0])), Some(Code::Internal));
        assert_eq!(code(framed(0, 100, b"abc")), Some(Code::ResourceExhausted));
        assert_eq!(code(framed(0, 5, b"abc")), Some(Code::Internal));
        assert_eq!(code(framed(0, 2, b"abc")), Some(Code::Internal));
        assert_eq!(code(framed(1, 0, b"")), Some(Code::Internal));
        assert_eq!(code(framed(7, 0, b"")), Some(Code::Internal));
        let big = unframe(framed(0, 11, &[0; 11]), 10).expect_err("too big");
        assert!(
            big.message.contains("larger than max (11 vs. 10)"),
            "{}",
            big.message
        );
    }
}
