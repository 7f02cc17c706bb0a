//! Parsing what a call names: the target app (`app` or `app.namespace`) and
//! the method, normalised once into the path the callee app will see.

use http::uri::PathAndQuery;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use skiff_resolvers::AppRef;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("invalid app id {0:?}: expected <app-id> or <app-id>.<namespace>")]
    AppId(String),
    #[error("invalid percent-encoding in method {0:?}")]
    Encoding(String),
    #[error("method is not valid UTF-8 once decoded")]
    Utf8,
    #[error("method contains a forbidden character (#, ?, NUL or a control character)")]
    Forbidden,
}

/// Characters escaped again when the cleaned method becomes a URI path.
const PATH_ESCAPE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Parses `app` or `app.namespace`; no namespace means the caller's.
pub fn parse_app_id(raw: &str, own_namespace: &str) -> Result<AppRef, TargetError> {
    let bad = || TargetError::AppId(raw.to_owned());
    let (app, ns) = match raw.split_once('.') {
        None => (raw, own_namespace),
        Some((a, n)) if !n.contains('.') => (a, n),
        Some(_) => return Err(bad()),
    };
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !valid(app) || !valid(ns) {
        return Err(bad());
    }
    Ok(AppRef::new(app, ns))
}

/// Turns a raw (still percent-encoded) method and query into the path the
/// app receives: decoded, checked, cleaned like a path (`..` cannot climb
/// above the root, `//` and `.` collapse), and re-encoded.
pub fn app_path(raw_method: &str, query: Option<&str>) -> Result<PathAndQuery, TargetError> {
    let method = decode(raw_method)?;
    let mut out = String::with_capacity(raw_method.len() + 1 + query.map_or(0, |q| q.len() + 1));
    let mut segments: Vec<&str> = Vec::new();
    for seg in method.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    for s in &segments {
        out.push('/');
        out.extend(utf8_percent_encode(s, PATH_ESCAPE));
    }
    if out.is_empty() {
        out.push('/');
    }
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        out.push('?');
        out.push_str(q);
    }
    PathAndQuery::try_from(out).map_err(|_| TargetError::Forbidden)
}

/// The method as the app's gRPC `InvokeRequest.method` names it: the cleaned
/// path without its leading slash, decoded.
pub fn method_from_path(path: &str) -> Result<String, TargetError> {
    Ok(decode(path.trim_start_matches('/'))?.into_owned())
}

/// Strict percent-decoding: `%` must be followed by two hex digits.
fn decode(raw: &str) -> Result<std::borrow::Cow<'_, str>, TargetError> {
    let forbidden = |c: char| c == '#' || c == '?' || c.is_control();
    if !raw.contains('%') {
        return if raw.chars().any(forbidden) {
            Err(TargetError::Forbidden)
        } else {
            Ok(raw.into())
        };
    }
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                b.get(i + 1).and_then(|&c| hex(c)),
                b.get(i + 2).and_then(|&c| hex(c)),
            ) {
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => return Err(TargetError::Encoding(raw.to_owned())),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).map_err(|_| TargetError::Utf8)?;
    if s.chars().any(forbidden) {
        return Err(TargetError::Forbidden);
    }
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids() {
        assert_eq!(
            parse_app_id("orders", "default"),
            Ok(AppRef::new("orders", "default"))
        );
        assert_eq!(
            parse_app_id("orders.prod", "default"),
            Ok(AppRef::new("orders", "prod"))
        );
        for bad in ["a.b.c", "", ".x", "x.", "a b", "a/b"] {
            assert!(parse_app_id(bad, "default").is_err(), "{bad}");
        }
    }

    #[test]
    fn methods_are_cleaned_and_reencoded() {
        let p = |m: &str, q: Option<&str>| app_path(m, q).map(|p| p.as_str().to_owned());
        assert_eq!(p("hello", None).as_deref(), Ok("/hello"));
        assert_eq!(p("a/b/../c", None).as_deref(), Ok("/a/c"));
        assert_eq!(p("../../etc/passwd", None).as_deref(), Ok("/etc/passwd"));
        assert_eq!(
            p("a//b/./c/", Some("x=1&y=%20")).as_deref(),
            Ok("/a/b/c?x=1&y=%20")
        );
        assert_eq!(p("sp%20ace", None).as_deref(), Ok("/sp%20ace"));
        assert_eq!(p("%2e%2e/x", None).as_deref(), Ok("/x"));
        assert_eq!(p("caf%C3%A9", None).as_deref(), Ok("/caf%C3%A9"));
        assert_eq!(p("", None).as_deref(), Ok("/"));
        assert_eq!(p("q", Some("")).as_deref(), Ok("/q"));
    }

    #[test]
    fn bad_methods_are_rejected() {
        assert!(matches!(
            app_path("a%zz", None),
            Err(TargetError::Encoding(_))
        ));
        assert!(matches!(
            app_path("a%2", None),
            Err(TargetError::Encoding(_))
        ));
        assert_eq!(app_path("a%00b", None), Err(TargetError::Forbidden));
        assert_eq!(app_path("a%0Ab", None), Err(TargetError::Forbidden));
        assert_eq!(app_path("a%23b", None), Err(TargetError::Forbidden));
        assert_eq!(app_path("a%3Fb", None), Err(TargetError::Forbidden));
        assert_eq!(app_path("%ff", None), Err(TargetError::Utf8));
    }

    #[test]
    fn method_round_trip() {
        let p = app_path("caf%C3%A9/x%20y", None).expect("valid");
        assert_eq!(method_from_path(p.path()).as_deref(), Ok("café/x y"));
    }
}

/// Properties of the method cleaning, over arbitrary methods.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    /// Segments a hostile caller would try: climbs (plain and encoded),
    /// dots, empties, encoded slashes and ordinary names.
    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("..".to_owned()),
            Just("%2e%2e".to_owned()),
            Just("%2E.".to_owned()),
            Just(".".to_owned()),
            Just(String::new()),
            Just("%2f".to_owned()),
            "[a-zA-Z0-9_~-]{1,8}",
        ]
    }

    proptest! {
        #[test]
        fn a_cleaned_method_never_climbs_above_the_root(segs in prop::collection::vec(segment(), 0..12)) {
            let raw = segs.join("/");
            if let Ok(p) = app_path(&raw, None) {
                let path = p.path();
                prop_assert!(path.starts_with('/'), "{path}");
                let decoded = method_from_path(path).expect("decodes");
                for s in decoded.split('/') {
                    prop_assert!(s != ".." && s != ".", "{raw} -> {path}");
                }
                prop_assert!(!path.contains("//"), "{raw} -> {path}");
            }
        }

        #[test]
        fn one_segment_round_trips_through_encoding(s in "[^/#?\\x00-\\x1f\\x7f]{1,24}") {
            // Control characters (C0 and C1) are refused by design.
            prop_assume!(s != "." && s != ".." && !s.chars().any(char::is_control));
            let encoded: String = percent_encoding::utf8_percent_encode(&s, percent_encoding::NON_ALPHANUMERIC).to_string();
            let p = app_path(&encoded, None).expect("a clean segment is allowed");
            prop_assert_eq!(method_from_path(p.path()).expect("decodes"), s);
        }
    }
}
