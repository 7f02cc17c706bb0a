//! A JSON value re-encoded the way daprd's HTTP save stores it: Go's
//! `encoding/json` decoding into `interface{}` (numbers become float64) and
//! marshalling back (object keys sorted, `<`, `>`, `&`, U+2028 and U+2029
//! escaped). Apps that read a value daprd stored get the same bytes from
//! Skiff.

use serde_json::Value;

/// `v` as the bytes daprd would store.
pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = String::with_capacity(64);
    write(v, &mut out);
    out.into_bytes()
}

fn write(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&go_float(n.as_f64().unwrap_or_default())),
        Value::String(s) => string(s, out),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(x, out);
            }
            out.push(']');
        }
        // serde_json's map is ordered by key, as Go marshals maps.
        Value::Object(m) => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                string(k, out);
                out.push(':');
                write(x, out);
            }
            out.push('}');
        }
    }
}

/// A JSON string as Go's encoder writes it. Runs of characters that need
/// no escape are copied whole (the common case: a value is one copy).
pub fn string(s: &str, out: &mut String) {
    out.reserve(s.len() + 2);
    out.push('"');
    let b = s.as_bytes();
    let mut run = 0;
    let mut i = 0;
    while i < b.len() {
        let esc: Option<&str> = match b[i] {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            b'<' => Some("\\u003c"),
            b'>' => Some("\\u003e"),
            b'&' => Some("\\u0026"),
            // U+2028 / U+2029 (E2 80 A8 / A9): Go escapes them for JavaScript.
            0xE2 if b.get(i + 1) == Some(&0x80) && matches!(b.get(i + 2), Some(0xA8 | 0xA9)) => {
                Some(if b[i + 2] == 0xA8 {
                    "\\u2028"
                } else {
                    "\\u2029"
                })
            }
            c if c < 0x20 => None,
            _ => {
                i += 1;
                continue;
            }
        };
        // Every break is at an ASCII byte or the start of U+2028/9: a
        // char boundary.
        out.push_str(&s[run..i]);
        match esc {
            Some(e) => out.push_str(e),
            None => {
                use std::fmt::Write;
                let _ = write!(out, "\\u{:04x}", b[i]);
            }
        }
        i += if b[i] == 0xE2 { 3 } else { 1 };
        run = i;
    }
    out.push_str(&s[run..]);
    out.push('"');
}

/// Go's float64 formatting in JSON: shortest digits, plain notation
/// between 1e-6 and 1e21, else exponent form like `1e+21`.
fn go_float(f: f64) -> String {
    let a = f.abs();
    if a != 0.0 && !(1e-6..1e21).contains(&a) {
        let s = format!("{f:e}");
        // Rust: 1e21, 1.5e-7; Go: 1e+21, 1.5e-07.
        let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        let digits = if digits.len() < 2 {
            format!("0{digits}")
        } else {
            digits.to_owned()
        };
        return format!("{mant}e{sign}{digits}");
    }
    format!("{f}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(s: &str) -> String {
        let v: Value = serde_json::from_str(s).expect("json");
        String::from_utf8(encode(&v)).expect("utf8")
    }

    #[test]
    fn matches_go() {
        assert_eq!(enc(r#""abc""#), r#""abc""#);
        assert_eq!(
            enc(r#"{"b":1,"a":[1.50,true,null]}"#),
            r#"{"a":[1.5,true,null],"b":1}"#
        );
        assert_eq!(enc("12345678901234567890"), "12345678901234567000");
        assert_eq!(enc("1e21"), "1e+21");
        assert_eq!(enc("0.0000001"), "1e-07");
        assert_eq!(enc(r#""<a&b>""#), r#""\u003ca\u0026b\u003e""#);
        assert_eq!(
            enc(r#""é\u2028x\u2029\u0001\"q\\ \n\t✓""#),
            r#""é\u2028x\u2029\u0001\"q\\ \n\t✓""#
        );
        assert_eq!(enc(r#""""#), r#""""#);
        assert_eq!(enc("-0.5"), "-0.5");
        assert_eq!(enc("100"), "100");
    }
}
