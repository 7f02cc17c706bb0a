//! `middleware.http.uppercase`, Dapr's test middleware: bodies upper-cased
//! (Unicode, as Go's `strings.ToUpper`; bytes that are not UTF-8 become
//! U+FFFD, as there). Metadata `direction`: `request` (the default),
//! `response` or `both`. A body is read whole, within `--max-body-size`.

use http::{HeaderValue, Request, Response, StatusCode, header};
use skiff_components::{BoxFuture, Properties};

use super::{Cx, Handler, Outcome, read_body, with_body};
use crate::skiff_body::SkiffBody;

pub struct Uppercase {
    request: bool,
    response: bool,
}

impl Uppercase {
    pub fn open(m: &Properties) -> Result<Self, String> {
        let (request, response) = match m.get("direction").map(str::trim) {
            None | Some("request") => (true, false),
            Some("response") => (false, true),
            Some("both") => (true, true),
            Some(other) => {
                return Err(format!(
                    "metadata direction: {other:?} is not request, response or both"
                ));
            }
        };
        Ok(Self { request, response })
    }
}

fn upper(b: &[u8]) -> bytes::Bytes {
    String::from_utf8_lossy(b).to_uppercase().into()
}

impl Handler for Uppercase {
    fn handle<'a>(&'a self, req: Request<SkiffBody>, cx: &'a Cx) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            if !self.request || matches!(req.body(), SkiffBody::Empty) {
                return Ok(req);
            }
            let (parts, body) = read_body(req, cx.max_body_size).await?;
            Ok(with_body(parts, upper(&body)))
        })
    }

    fn changes_answers(&self) -> bool {
        self.response
    }

    fn respond<'a>(
        &'a self,
        resp: Response<SkiffBody>,
        cx: &'a Cx,
    ) -> BoxFuture<'a, Response<SkiffBody>> {
        Box::pin(async move {
            let (mut parts, body) = resp.into_parts();
            match crate::body::collect_limited(body, cx.max_body_size).await {
                Ok(b) => {
                    let b = upper(&b);
                    parts.headers.remove(header::TRANSFER_ENCODING);
                    parts
                        .headers
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(b.len()));
                    Response::from_parts(parts, SkiffBody::full(b))
                }
                Err(e) => super::text(StatusCode::BAD_GATEWAY, &format!("uppercase: {e}")),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::tests::cx;

    fn open(direction: &str) -> Uppercase {
        let mut m = Properties::new();
        m.insert("direction", direction);
        Uppercase::open(&m).expect("valid")
    }

    #[tokio::test]
    async fn the_body_is_upper_cased_and_its_length_stated_anew() {
        let u = Uppercase::open(&Properties::new()).expect("default");
        let req = Request::new(SkiffBody::full("straße, hello"));
        let out = u.handle(req, &cx()).await.expect("passed");
        assert_eq!(out.headers()["content-length"], "14");
        let b = crate::body::collect_limited(out.into_body(), 100)
            .await
            .expect("body");
        assert_eq!(&b[..], "STRASSE, HELLO".as_bytes());
        assert!(!u.changes_answers());
    }

    #[tokio::test]
    async fn answers_too_when_asked() {
        let u = open("response");
        let req = Request::new(SkiffBody::full("keep"));
        let out = u.handle(req, &cx()).await.expect("passed");
        let b = crate::body::collect_limited(out.into_body(), 100)
            .await
            .expect("body");
        assert_eq!(&b[..], b"keep");
        assert!(u.changes_answers());
        let resp = u.respond(Response::new(SkiffBody::full("ok")), &cx()).await;
        let b = crate::body::collect_limited(resp.into_body(), 100)
            .await
            .expect("body");
        assert_eq!(&b[..], b"OK");
        assert!(
            Uppercase::open(&{
                let mut m = Properties::new();
                m.insert("direction", "sideways");
                m
            })
            .is_err()
        );
    }
}
