//! Dapr's state query language: a JSON document with `filter` (EQ, NEQ,
//! GT, GTE, LT, LTE, IN, AND, OR over dot paths into the stored JSON
//! value), `sort` and `page` (`limit`, `token`). Parsed strictly once into
//! a [`Query`]; [`evaluate`] runs it over values the store has scanned,
//! for the stores that search in process (in-memory, SQLite).

use std::cmp::Ordering;

use serde_json::Value;

use super::Item;

#[derive(Clone, Debug, PartialEq)]
pub enum Cmp {
    Eq,
    Neq,
    Gt,
    Gte,
    Lt,
    Lte,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    Cmp(Cmp, String, Value),
    In(String, Vec<Value>),
    And(Vec<Filter>),
    Or(Vec<Filter>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sort {
    pub key: String,
    pub descending: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Query {
    pub filter: Option<Filter>,
    pub sort: Vec<Sort>,
    /// 0: no limit.
    pub limit: usize,
    /// Where the previous page ended.
    pub token: Option<String>,
}

/// A page of results, keys as stored (prefixed).
#[derive(Clone, Debug, Default)]
pub struct Answer {
    pub results: Vec<(String, Item)>,
    /// Set when there may be more: pass it back as `page.token`.
    pub token: Option<String>,
}

impl Query {
    /// Parses the JSON query; the error says what is wrong with it.
    pub fn parse(text: &[u8]) -> Result<Self, String> {
        let v: Value =
            serde_json::from_slice(text).map_err(|e| format!("query is not JSON: {e}"))?;
        let obj = v.as_object().ok_or("query must be a JSON object")?;
        let mut q = Query::default();
        for (k, v) in obj {
            match k.as_str() {
                "filter" => {
                    if v.as_object().is_some_and(|o| !o.is_empty()) {
                        q.filter = Some(parse_filter(v)?);
                    }
                }
                "sort" => {
                    for s in v.as_array().ok_or("sort must be an array")? {
                        let key = s
                            .get("key")
                            .and_then(Value::as_str)
                            .ok_or("sort entries need a key")?;
                        let descending = match s.get("order").and_then(Value::as_str) {
                            None | Some("ASC") => false,
                            Some("DESC") => true,
                            Some(o) => return Err(format!("sort order {o:?} is not ASC or DESC")),
                        };
                        q.sort.push(Sort {
                            key: key.to_owned(),
                            descending,
                        });
                    }
                }
                "page" => {
                    if let Some(l) = v.get("limit") {
                        q.limit = l
                            .as_u64()
                            .ok_or("page.limit must be a non-negative integer")?
                            as usize;
                    }
                    if let Some(t) = v.get("token").and_then(Value::as_str)
                        && !t.is_empty()
                    {
                        q.token = Some(t.to_owned());
                    }
                }
                other => return Err(format!("query has an unknown field {other:?}")),
            }
        }
        Ok(q)
    }

    /// Where the page starts (the token is an offset).
    fn offset(&self) -> Result<usize, String> {
        match &self.token {
            None => Ok(0),
            Some(t) => t
                .parse()
                .map_err(|_| format!("page.token {t:?} is not a token this store gave")),
        }
    }
}

fn parse_filter(v: &Value) -> Result<Filter, String> {
    let obj = v.as_object().ok_or("a filter must be an object")?;
    if obj.len() != 1 {
        return Err("a filter has exactly one operator".to_owned());
    }
    let Some((op, arg)) = obj.iter().next() else {
        return Err("empty filter".to_owned());
    };
    let list = |arg: &Value| -> Result<Vec<Filter>, String> {
        let a = arg
            .as_array()
            .ok_or(format!("{op} takes an array of filters"))?;
        if a.len() < 2 {
            return Err(format!("{op} needs at least two filters"));
        }
        a.iter().map(parse_filter).collect()
    };
    let field = |arg: &Value| -> Result<(String, Value), String> {
        let o = arg
            .as_object()
            .filter(|o| o.len() == 1)
            .ok_or(format!("{op} takes one {{\"field\": value}}"))?;
        let (k, v) = o.iter().next().ok_or("empty comparison")?;
        Ok((k.clone(), v.clone()))
    };
    let cmp = |c| field(arg).map(|(k, v)| Filter::Cmp(c, k, v));
    match op.as_str() {
        "AND" => Ok(Filter::And(list(arg)?)),
        "OR" => Ok(Filter::Or(list(arg)?)),
        "EQ" => cmp(Cmp::Eq),
        "NEQ" => cmp(Cmp::Neq),
        "GT" => cmp(Cmp::Gt),
        "GTE" => cmp(Cmp::Gte),
        "LT" => cmp(Cmp::Lt),
        "LTE" => cmp(Cmp::Lte),
        "IN" => {
            let (k, v) = field(arg)?;
            match v {
                Value::Array(a) if !a.is_empty() => Ok(Filter::In(k, a)),
                _ => Err("IN takes a non-empty array of values".to_owned()),
            }
        }
        other => Err(format!("unknown filter operator {other:?}")),
    }
}

/// The value at a dot path (`person.org`); a leading `value.` is accepted,
/// as some of Dapr's stores document paths that way.
fn at<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    let mut cur = v;
    for part in path.split('.') {
        cur = cur.get(part)?;
    }
    Some(cur)
}

fn lookup<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    at(v, path).or_else(|| path.strip_prefix("value.").and_then(|p| at(v, p)))
}

fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    order(a, b).map_or(a == b, Ordering::is_eq)
}

impl Filter {
    pub fn matches(&self, v: &Value) -> bool {
        match self {
            Self::And(fs) => fs.iter().all(|f| f.matches(v)),
            Self::Or(fs) => fs.iter().any(|f| f.matches(v)),
            Self::In(path, vals) => {
                lookup(v, path).is_some_and(|x| vals.iter().any(|y| equal(x, y)))
            }
            Self::Cmp(c, path, want) => {
                let Some(got) = lookup(v, path) else {
                    return *c == Cmp::Neq;
                };
                match c {
                    Cmp::Eq => equal(got, want),
                    Cmp::Neq => !equal(got, want),
                    Cmp::Gt => order(got, want) == Some(Ordering::Greater),
                    Cmp::Gte => {
                        matches!(order(got, want), Some(Ordering::Greater | Ordering::Equal))
                    }
                    Cmp::Lt => order(got, want) == Some(Ordering::Less),
                    Cmp::Lte => matches!(order(got, want), Some(Ordering::Less | Ordering::Equal)),
                }
            }
        }
    }
}

/// Runs `q` over scanned items: values that are not JSON never match a
/// filter. Without a sort, results come in key order so pages are stable.
pub fn evaluate(items: Vec<(String, Item)>, q: &Query) -> Result<Answer, String> {
    let offset = q.offset()?;
    let mut rows: Vec<(String, Item, Value)> = items
        .into_iter()
        .filter_map(|(k, it)| {
            let v: Value = serde_json::from_slice(&it.data).ok()?;
            Some((k, it, v))
        })
        .filter(|(_, _, v)| q.filter.as_ref().is_none_or(|f| f.matches(v)))
        .collect();
    rows.sort_by(|a, b| {
        for s in &q.sort {
            let o = match (lookup(&a.2, &s.key), lookup(&b.2, &s.key)) {
                (Some(x), Some(y)) => order(x, y).unwrap_or(Ordering::Equal),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            };
            let o = if s.descending { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        a.0.cmp(&b.0)
    });
    let total = rows.len();
    let take = if q.limit == 0 { usize::MAX } else { q.limit };
    let results: Vec<(String, Item)> = rows
        .into_iter()
        .skip(offset)
        .take(take)
        .map(|(k, it, _)| (k, it))
        .collect();
    let end = offset.saturating_add(results.len());
    let token = (q.limit > 0 && end < total).then(|| end.to_string());
    Ok(Answer { results, token })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(v: &str) -> Item {
        Item {
            data: bytes::Bytes::from(v.to_owned()),
            etag: None,
            expires: None,
        }
    }

    fn people() -> Vec<(String, Item)> {
        [
            ("a", r#"{"name":"ann","org":{"id":1},"state":"CA"}"#),
            ("b", r#"{"name":"bob","org":{"id":2},"state":"WA"}"#),
            ("c", r#"{"name":"cyd","org":{"id":3},"state":"CA"}"#),
            ("d", "not json"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), item(v)))
        .collect()
    }

    fn keys(a: &Answer) -> Vec<&str> {
        a.results.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn filters_sort_and_pages() {
        let q = Query::parse(
            br#"{"filter":{"EQ":{"state":"CA"}},"sort":[{"key":"org.id","order":"DESC"}]}"#,
        )
        .expect("valid");
        assert_eq!(keys(&evaluate(people(), &q).expect("runs")), ["c", "a"]);
        let q =
            Query::parse(br#"{"filter":{"OR":[{"GTE":{"org.id":3}},{"IN":{"name":["bob"]}}]}}"#)
                .expect("valid");
        assert_eq!(keys(&evaluate(people(), &q).expect("runs")), ["b", "c"]);
        let q = Query::parse(
            br#"{"filter":{"AND":[{"NEQ":{"state":"WA"}},{"LT":{"value.org.id":3}}]}}"#,
        )
        .expect("valid");
        assert_eq!(keys(&evaluate(people(), &q).expect("runs")), ["a"]);
        let q = Query::parse(br#"{"page":{"limit":2}}"#).expect("valid");
        let first = evaluate(people(), &q).expect("runs");
        assert_eq!(
            (keys(&first), first.token.as_deref()),
            (vec!["a", "b"], Some("2"))
        );
        let q = Query::parse(br#"{"page":{"limit":2,"token":"2"}}"#).expect("valid");
        let second = evaluate(people(), &q).expect("runs");
        assert_eq!((keys(&second), second.token.as_deref()), (vec!["c"], None));
    }

    #[test]
    fn bad_queries_say_why() {
        for (q, why) in [
            (
                &br#"{"filter":{"LIKE":{"a":1}}}"#[..],
                "unknown filter operator",
            ),
            (br#"{"filter":{"AND":[{"EQ":{"a":1}}]}}"#, "at least two"),
            (br#"{"sort":[{"key":"a","order":"UP"}]}"#, "ASC or DESC"),
            (br#"{"fliter":{}}"#, "unknown field"),
            (b"nope", "not JSON"),
        ] {
            let e = Query::parse(q).expect_err("invalid");
            assert!(e.contains(why), "{e}");
        }
    }
}
