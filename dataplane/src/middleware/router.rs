//! `middleware.http.routerchecker` and `middleware.http.routeralias`.
//!
//! The checker answers 400 `invalid router` to any request whose path
//! and query (`/path?query`, as sent) its `rule` (a regular expression,
//! unanchored; empty matches all) does not match. The alias rewrites the
//! path of requests whose decoded path matches one of its `routes` (a
//! JSON or YAML map from a path template, `{name}` matching one segment
//! and `{name:regex}` a pattern, to the new path); the captured names join
//! the query, which is then re-encoded with its keys sorted. It never
//! refuses. As in daprd, metadata given as several plain properties
//! instead of one `routes` map is read as routes, with a warning.

use std::collections::BTreeMap;

use http::{Request, StatusCode, Uri};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use regex::Regex;
use skiff_components::{BoxFuture, Properties};

use super::{Cx, Handler, Outcome, text};
use crate::skiff_body::SkiffBody;

pub struct Checker {
    rule: Regex,
}

impl Checker {
    pub fn open(m: &Properties) -> Result<Self, String> {
        let rule = m.get("rule").unwrap_or("");
        let rule =
            Regex::new(rule).map_err(|e| format!("metadata rule: failed to compile: {e}"))?;
        Ok(Self { rule })
    }
}

impl Handler for Checker {
    fn handle<'a>(&'a self, req: Request<SkiffBody>, _: &'a Cx) -> BoxFuture<'a, Outcome> {
        let seen = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let out = if self.rule.is_match(seen) {
            Ok(req)
        } else {
            Err(text(StatusCode::BAD_REQUEST, "invalid router"))
        };
        Box::pin(std::future::ready(out))
    }
}

/// One route: the template compiled, and where it leads.
struct Route {
    pattern: Regex,
    names: Vec<String>,
    to: String,
}

pub struct Alias {
    routes: Vec<Route>,
}

impl Alias {
    pub fn open(m: &Properties) -> Result<Self, String> {
        let pairs: Vec<(&str, &str)> = m.iter().collect();
        let map: BTreeMap<String, String> = match m.get("routes") {
            Some(text) if pairs.len() == 1 => yaml_serde::from_str(text)
                .map_err(|e| format!("metadata routes: not a map of path to path: {e}"))?,
            _ => {
                if !pairs.is_empty() {
                    tracing::warn!(
                        "routeralias: routes given as plain properties; give one `routes` map instead"
                    );
                }
                pairs
                    .iter()
                    .filter(|(k, _)| !k.eq_ignore_ascii_case("routes"))
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            }
        };
        let routes = map
            .into_iter()
            .map(|(from, to)| compile(&from).map(|(pattern, names)| Route { pattern, names, to }))
            .collect::<Result<_, _>>()?;
        Ok(Self { routes })
    }

    /// The new path and query for `uri`, when a route matches.
    fn rewrite(&self, uri: &Uri) -> Option<String> {
        let decoded = percent_decode_str(uri.path()).decode_utf8_lossy();
        let (route, caps) = self
            .routes
            .iter()
            .find_map(|r| r.pattern.captures(&decoded).map(|c| (r, c)))?;
        if route.names.is_empty() {
            return Some(match uri.query() {
                Some(q) => format!("{}?{q}", route.to),
                None => route.to.clone(),
            });
        }
        let mut query = parse_query(uri.query().unwrap_or(""));
        for n in &route.names {
            if let Some(v) = caps.name(n) {
                query.push((n.clone(), v.as_str().to_owned()));
            }
        }
        // Go's url.Values.Encode: keys sorted, values in their order.
        query.sort_by(|a, b| a.0.cmp(&b.0));
        let encoded: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{}={}", form(k), form(v)))
            .collect();
        Some(format!("{}?{}", route.to, encoded.join("&")))
    }
}

/// A gorilla/mux path template as an anchored regex, and its names.
fn compile(template: &str) -> Result<(Regex, Vec<String>), String> {
    let bad = |why: &str| format!("metadata routes: {template:?}: {why}");
    let mut re = String::from("^");
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        re.push_str(&regex::escape(&rest[..open]));
        let close = rest[open..].find('}').ok_or_else(|| bad("unclosed {"))? + open;
        let inner = &rest[open + 1..close];
        let (name, pattern) = inner.split_once(':').unwrap_or((inner, "[^/]+"));
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(bad("a variable needs a name of letters, digits and _"));
        }
        re.push_str(&format!("(?P<{name}>{pattern})"));
        names.push(name.to_owned());
        rest = &rest[close + 1..];
    }
    re.push_str(&regex::escape(rest));
    re.push('$');
    let re = Regex::new(&re).map_err(|e| bad(&e.to_string()))?;
    Ok((re, names))
}

/// `application/x-www-form-urlencoded` pairs, decoded.
pub(super) fn parse_query(q: &str) -> Vec<(String, String)> {
    let dec = |s: &str| {
        percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (dec(k), dec(v))
        })
        .collect()
}

/// What Go's `url.QueryEscape` leaves as it is.
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b' ');

fn form(s: &str) -> String {
    utf8_percent_encode(s, FORM).to_string().replace(' ', "+")
}

impl Handler for Alias {
    fn handle<'a>(&'a self, mut req: Request<SkiffBody>, _: &'a Cx) -> BoxFuture<'a, Outcome> {
        if let Some(to) = self.rewrite(req.uri()) {
            match Uri::try_from(to) {
                Ok(uri) => *req.uri_mut() = uri,
                Err(e) => {
                    tracing::warn!(error = %e, "routeralias: the rewritten path is not a valid URI; left as it was")
                }
            }
        }
        Box::pin(std::future::ready(Ok(req)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::tests::cx;

    fn props(pairs: &[(&str, &str)]) -> Properties {
        let mut m = Properties::new();
        for (k, v) in pairs {
            m.insert(*k, *v);
        }
        m
    }

    async fn path_after(h: &dyn Handler, uri: &'static str) -> Result<String, u16> {
        let mut req = Request::new(SkiffBody::Empty);
        *req.uri_mut() = Uri::from_static(uri);
        match h.handle(req, &cx()).await {
            Ok(r) => Ok(r.uri().to_string()),
            Err(resp) => Err(resp.status().as_u16()),
        }
    }

    #[tokio::test]
    async fn the_checker_matches_path_and_query_unanchored() {
        let c = Checker::open(&props(&[("rule", "^[A-Za-z0-9/._-]+$")])).expect("rule");
        assert_eq!(
            path_after(&c, "/v1.0/invoke/a/method/ok").await,
            Ok("/v1.0/invoke/a/method/ok".into())
        );
        assert_eq!(
            path_after(&c, "/v1.0/invoke/a/method/x%20y").await,
            Err(400)
        );
        assert_eq!(
            path_after(&c, "/a?b=c").await,
            Err(400),
            "the query is part of what is checked"
        );
        let any = Checker::open(&Properties::new()).expect("empty rule");
        assert!(path_after(&any, "/whatever?x").await.is_ok());
        assert!(Checker::open(&props(&[("rule", "(")])).is_err());
    }

    #[tokio::test]
    async fn the_alias_rewrites_matching_paths_and_keeps_the_rest() {
        let routes = r#"{"/mall/activity/info": "/v1.0/invoke/srv.default/method/query",
            "/hello/{name}": "/v1.0/invoke/greeter/method/hi"}"#;
        let a = Alias::open(&props(&[("routes", routes)])).expect("routes");
        assert_eq!(
            path_after(&a, "/mall/activity/info?id=123").await,
            Ok("/v1.0/invoke/srv.default/method/query?id=123".into())
        );
        assert_eq!(
            path_after(&a, "/hello/J%C3%BCrgen?z=1&a=2").await,
            Ok("/v1.0/invoke/greeter/method/hi?a=2&name=J%C3%BCrgen&z=1".into())
        );
        assert_eq!(
            path_after(&a, "/hello/a/b").await,
            Ok("/hello/a/b".into()),
            "one segment only"
        );
        assert_eq!(
            path_after(&a, "/mall/activity/info/").await,
            Ok("/mall/activity/info/".into())
        );
        let yaml = "/a: /b\n/c/{id:[0-9]+}: /d\n";
        let a = Alias::open(&props(&[("routes", yaml)])).expect("yaml routes");
        assert_eq!(path_after(&a, "/c/42").await, Ok("/d?id=42".into()));
        assert_eq!(path_after(&a, "/c/x").await, Ok("/c/x".into()));
        let legacy = Alias::open(&props(&[("/x", "/y"), ("/p", "/q")])).expect("legacy");
        assert_eq!(path_after(&legacy, "/p").await, Ok("/q".into()));
        assert!(Alias::open(&props(&[("routes", "/a/{: /b")])).is_err());
    }
}
