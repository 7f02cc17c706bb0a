//! A JSON value re-encoded the way daprd's HTTP save stores it: Go's
//! `encoding/json` decoding into `interface{}` (numbers become float64) and
//! marshalling back (object keys sorted, `<`, `>`, `&`, U+2028 and U+2029
//! escaped). Apps that read a value daprd stored get the same bytes from
//! Skiff.

use std::borrow::Cow;

use serde_json::Value;

/// JSON text (as sent; serde_json checked its syntax) re-encoded as
/// [`encode`] would re-encode its value, without building the value: the
/// text is walked once, scalars are written as they are read, and only an
/// object's members are held, to be put in key order. An HTTP save of a
/// large document no longer makes a tree of it. Errors where building a
/// `Value` would have: a lone surrogate escape, a number out of range.
pub fn reencode(raw: &str) -> Result<Vec<u8>, String> {
    let mut out = String::with_capacity(raw.len() + 8);
    let mut r = Reader {
        b: raw.as_bytes(),
        s: raw,
        i: 0,
    };
    r.value(&mut out)?;
    Ok(out.into_bytes())
}

/// A cursor over JSON text whose syntax is known to be valid.
struct Reader<'a> {
    b: &'a [u8],
    s: &'a str,
    i: usize,
}

impl<'a> Reader<'a> {
    fn ws(&mut self) {
        while self.b.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn value(&mut self, out: &mut String) -> Result<(), String> {
        self.ws();
        match self.b.get(self.i) {
            Some(b'{') => self.object(out),
            Some(b'[') => self.array(out),
            Some(b'"') => {
                let s = self.string()?;
                string(&s, out);
                Ok(())
            }
            Some(b't') => self.literal("true", out),
            Some(b'f') => self.literal("false", out),
            Some(b'n') => self.literal("null", out),
            Some(_) => self.number(out),
            None => Err("unexpected end of JSON".to_owned()),
        }
    }

    fn literal(&mut self, word: &str, out: &mut String) -> Result<(), String> {
        out.push_str(word);
        self.i += word.len();
        Ok(())
    }

    fn number(&mut self, out: &mut String) -> Result<(), String> {
        let start = self.i;
        while self
            .b
            .get(self.i)
            .is_some_and(|c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E'))
        {
            self.i += 1;
        }
        let text = &self.s[start..self.i];
        let f: f64 = text.parse().map_err(|_| format!("bad number {text}"))?;
        if !f.is_finite() {
            return Err(format!("number out of range: {text}"));
        }
        out.push_str(&go_float(f));
        Ok(())
    }

    fn array(&mut self, out: &mut String) -> Result<(), String> {
        self.i += 1;
        out.push('[');
        self.ws();
        if self.b.get(self.i) == Some(&b']') {
            self.i += 1;
            out.push(']');
            return Ok(());
        }
        loop {
            self.value(out)?;
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => {
                    self.i += 1;
                    out.push(',');
                }
                _ => {
                    self.i += 1;
                    out.push(']');
                    return Ok(());
                }
            }
        }
    }

    /// Members are encoded into `out` as they come, their places noted,
    /// then the object's span is rewritten in key order (the last of
    /// duplicate keys wins, as a Go map and serde_json's keep it).
    fn object(&mut self, out: &mut String) -> Result<(), String> {
        self.i += 1;
        let start = out.len();
        let mut members: Vec<(Cow<'a, str>, usize, usize)> = Vec::new();
        loop {
            self.ws();
            if self.b.get(self.i) != Some(&b'"') {
                self.i += 1; // '}' of an empty object
                break;
            }
            let key = self.string()?;
            self.ws();
            self.i += 1; // ':'
            let at = out.len();
            self.value(out)?;
            members.push((key, at, out.len()));
            self.ws();
            let sep = self.b.get(self.i).copied();
            self.i += 1;
            if sep != Some(b',') {
                break;
            }
        }
        let encoded = out.split_off(start);
        members.sort_by(|a, b| a.0.cmp(&b.0));
        out.push('{');
        let mut first = true;
        for (n, (k, from, to)) in members.iter().enumerate() {
            if members.get(n + 1).is_some_and(|next| next.0 == *k) {
                continue; // a later duplicate follows: it wins
            }
            if !first {
                out.push(',');
            }
            first = false;
            string(k, out);
            out.push(':');
            out.push_str(&encoded[from - start..to - start]);
        }
        out.push('}');
        Ok(())
    }

    /// A JSON string's text, borrowed when it has no escapes.
    fn string(&mut self) -> Result<Cow<'a, str>, String> {
        self.i += 1;
        let start = self.i;
        while let Some(&c) = self.b.get(self.i) {
            match c {
                b'"' => {
                    let s = &self.s[start..self.i];
                    self.i += 1;
                    return Ok(Cow::Borrowed(s));
                }
                b'\\' => return self.escaped(start).map(Cow::Owned),
                _ => self.i += 1,
            }
        }
        Err("unterminated string".to_owned())
    }

    fn escaped(&mut self, start: usize) -> Result<String, String> {
        let mut s = String::from(&self.s[start..self.i]);
        loop {
            let run = self.i;
            while self
                .b
                .get(self.i)
                .is_some_and(|c| *c != b'"' && *c != b'\\')
            {
                self.i += 1;
            }
            s.push_str(&self.s[run..self.i]);
            match self.b.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(s);
                }
                Some(_) => {
                    self.i += 1;
                    let c = self.b.get(self.i).copied();
                    self.i += 1;
                    match c {
                        Some(b'n') => s.push('\n'),
                        Some(b't') => s.push('\t'),
                        Some(b'r') => s.push('\r'),
                        Some(b'b') => s.push('\u{8}'),
                        Some(b'f') => s.push('\u{c}'),
                        Some(b'u') => s.push(self.unicode()?),
                        Some(c) => s.push(char::from(c)),
                        None => return Err("unterminated string".to_owned()),
                    }
                }
                None => return Err("unterminated string".to_owned()),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let h = self.s.get(self.i..self.i + 4).ok_or("short \\u escape")?;
        self.i += 4;
        u32::from_str_radix(h, 16).map_err(|_| format!("bad \\u escape {h}"))
    }

    fn unicode(&mut self) -> Result<char, String> {
        let hi = self.hex4()?;
        let code = if (0xD800..0xDC00).contains(&hi) {
            if self.b.get(self.i..self.i + 2) != Some(b"\\u") {
                return Err("lone leading surrogate in hex escape".to_owned());
            }
            self.i += 2;
            let lo = self.hex4()?;
            if !(0xDC00..0xE000).contains(&lo) {
                return Err("lone leading surrogate in hex escape".to_owned());
            }
            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
        } else if (0xDC00..0xE000).contains(&hi) {
            return Err("lone trailing surrogate in hex escape".to_owned());
        } else {
            hi
        };
        char::from_u32(code).ok_or_else(|| "invalid escape".to_owned())
    }
}

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

    /// Re-encoding the text gives what re-encoding its value gives.
    fn same(s: &str) {
        let want = enc(s);
        let got = String::from_utf8(reencode(s).expect("reencode")).expect("utf8");
        assert_eq!(got, want, "{s}");
    }

    #[test]
    fn reencoding_text_matches_reencoding_its_value() {
        for s in [
            r#""abc""#,
            r#" { "b" : 1 , "a" : [ 1.50 , true , null , { } , [ ] ] } "#,
            "12345678901234567890",
            "-0.0",
            "1e21",
            "0.0000001",
            r#""<a&b>""#,
            r#""é\u2028x\u2029\u0001\"q\\ \n\t✓ \ud83d\ude00 \/""#,
            r#"{"k":1,"k":2,"a\u0062":3,"ab":4}"#,
            r#"{"z":{"y":[{"b":"\u00e9","a":-1.25e-8}]},"a":"x"}"#,
        ] {
            same(s);
        }
        assert!(reencode(r#""\ud800""#).is_err());
        assert!(reencode("1e400").is_err());
    }

    proptest::proptest! {
        #[test]
        fn reencoding_any_json_matches(v in json_value()) {
            let text = serde_json::to_string_pretty(&v).expect("json");
            let want = String::from_utf8(encode(&v)).expect("utf8");
            let got = String::from_utf8(reencode(&text).expect("reencode")).expect("utf8");
            proptest::prop_assert_eq!(got, want);
        }
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e30f64..1e30).prop_map(Value::from),
            "\\PC{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-c<&]{0,3}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
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
