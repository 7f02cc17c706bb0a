//! `bindings.postgresql` (Dapr's type, output): `exec` runs
//! `metadata.sql` and answers nothing, with `rows-affected` (and the
//! timings) in the response metadata; `query` answers the rows as a JSON
//! array of arrays; `close` drops the connection (the next call makes a
//! new one). `metadata.params` is a JSON array bound to `$1`, `$2`, ...
//! as the statement's parameter types ask (integers, floats, booleans,
//! text; `null` as NULL). Result columns of integer, float, boolean and
//! text types come back as JSON numbers, booleans and strings; JSON
//! columns as JSON; columns of other types (timestamps, numerics, ...)
//! as null — cast them to text in the SQL (`created::text`).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::Mutex;
use tokio_postgres::types::{ToSql, Type};

use super::{BindingError, Metadata, OutputBinding, Request, Response};
use crate::pgconn::PgTarget;
use crate::{BoxFuture, MetadataError, Properties};

pub struct PostgresBinding {
    target: PgTarget,
    client: Mutex<Option<tokio_postgres::Client>>,
}

fn backend(e: &tokio_postgres::Error) -> BindingError {
    // The server's message (`relation "x" does not exist`), not Debug.
    let msg = e
        .as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_owned());
    BindingError::Backend(format!("postgresql: {msg}"))
}

impl PostgresBinding {
    pub fn open(meta: &Properties) -> Result<Arc<Self>, MetadataError> {
        let conn = meta
            .get_any(&["connectionString", "url"])
            .ok_or_else(|| MetadataError {
                field: "connectionString".into(),
                why: "is required".into(),
            })?;
        Ok(Arc::new(Self {
            target: PgTarget::parse(conn)?,
            client: Mutex::new(None),
        }))
    }

    async fn run(&self, req: Request) -> Result<Response, BindingError> {
        if req.operation == "close" {
            *self.client.lock().await = None;
            return Ok(Response::default());
        }
        let sql = req
            .metadata
            .get("sql")
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| BindingError::Invalid("metadata.sql is required".into()))?
            .clone();
        let params: Vec<Value> = match req.metadata.get("params") {
            None => Vec::new(),
            Some(p) => match serde_json::from_str(p) {
                Ok(Value::Array(v)) => v,
                _ => {
                    return Err(BindingError::Invalid(
                        "metadata.params must be a JSON array".into(),
                    ));
                }
            },
        };
        let mut g = self.client.lock().await;
        if g.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            *g = Some(self.target.connect(None).await.map_err(|e| backend(&e))?);
        }
        let Some(c) = g.as_ref() else {
            return Err(BindingError::Backend("postgresql: not connected".into()));
        };
        let started = Instant::now();
        let stmt = c.prepare(&sql).await.map_err(|e| backend(&e))?;
        if stmt.params().len() != params.len() {
            return Err(BindingError::Invalid(format!(
                "the statement takes {} parameters, metadata.params has {}",
                stmt.params().len(),
                params.len()
            )));
        }
        let bound: Vec<Box<dyn ToSql + Sync + Send>> = params
            .iter()
            .zip(stmt.params())
            .map(|(v, t)| bind(v, t))
            .collect::<Result<_, _>>()?;
        let refs: Vec<&(dyn ToSql + Sync)> =
            bound.iter().map(|b| &**b as &(dyn ToSql + Sync)).collect();
        let mut md = Metadata::new();
        md.insert("operation".into(), req.operation.clone());
        md.insert("sql".into(), sql.clone());
        let data = match req.operation.as_str() {
            "exec" => {
                let n = c.execute(&stmt, &refs).await.map_err(|e| backend(&e))?;
                md.insert("rows-affected".into(), n.to_string());
                None
            }
            "query" => {
                let rows = c.query(&stmt, &refs).await.map_err(|e| backend(&e))?;
                let out: Vec<Value> = rows.iter().map(row_json).collect();
                Some(Bytes::from(serde_json::to_vec(&out).unwrap_or_default()))
            }
            op => {
                return Err(BindingError::Invalid(format!(
                    "operation {op:?} is not supported (exec, query, close)"
                )));
            }
        };
        md.insert("duration".into(), format!("{:?}", started.elapsed()));
        Ok(Response { data, metadata: md })
    }
}

/// A JSON parameter as the statement's type `t` wants it.
fn bind(v: &Value, t: &Type) -> Result<Box<dyn ToSql + Sync + Send>, BindingError> {
    let bad = || BindingError::Invalid(format!("parameter {v} does not fit a {t} column"));
    Ok(match (v, t) {
        (Value::Null, _) => Box::new(Option::<String>::None),
        (Value::Number(n), &Type::INT2) => {
            Box::new(i16::try_from(n.as_i64().ok_or_else(bad)?).map_err(|_| bad())?)
        }
        (Value::Number(n), &Type::INT4) => {
            Box::new(i32::try_from(n.as_i64().ok_or_else(bad)?).map_err(|_| bad())?)
        }
        (Value::Number(n), &Type::INT8) => Box::new(n.as_i64().ok_or_else(bad)?),
        (Value::Number(n), &Type::FLOAT4) => Box::new(n.as_f64().ok_or_else(bad)? as f32),
        (Value::Number(n), &Type::FLOAT8) => Box::new(n.as_f64().ok_or_else(bad)?),
        (Value::Bool(b), &Type::BOOL) => Box::new(*b),
        (Value::String(s), _) => Box::new(s.clone()),
        (other, _) => Box::new(other.to_string()),
    })
}

/// A column's bytes as the server sent them.
struct Raw(Vec<u8>);

impl<'a> tokio_postgres::types::FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Self(raw.to_vec()))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

fn row_json(r: &tokio_postgres::Row) -> Value {
    let cols = r.columns();
    Value::Array(
        (0..cols.len())
            .map(|i| {
                let t = cols[i].type_();
                let v: Option<Value> = match *t {
                    Type::INT2 => r
                        .try_get::<_, Option<i16>>(i)
                        .ok()
                        .flatten()
                        .map(Value::from),
                    Type::INT4 => r
                        .try_get::<_, Option<i32>>(i)
                        .ok()
                        .flatten()
                        .map(Value::from),
                    Type::INT8 => r
                        .try_get::<_, Option<i64>>(i)
                        .ok()
                        .flatten()
                        .map(Value::from),
                    Type::FLOAT4 => r
                        .try_get::<_, Option<f32>>(i)
                        .ok()
                        .flatten()
                        .map(|f| Value::from(f64::from(f))),
                    Type::FLOAT8 => r
                        .try_get::<_, Option<f64>>(i)
                        .ok()
                        .flatten()
                        .map(Value::from),
                    Type::BOOL => r
                        .try_get::<_, Option<bool>>(i)
                        .ok()
                        .flatten()
                        .map(Value::from),
                    Type::JSON | Type::JSONB => r
                        .try_get::<_, Option<Raw>>(i)
                        .ok()
                        .flatten()
                        .and_then(|Raw(b)| {
                            // JSONB's binary form is a version byte, then the text.
                            let text = if *t == Type::JSONB {
                                b.get(1..)?
                            } else {
                                &b[..]
                            };
                            serde_json::from_slice(text).ok()
                        }),
                    _ => r
                        .try_get::<_, Option<String>>(i)
                        .ok()
                        .flatten()
                        .map(Value::String),
                };
                v.unwrap_or(Value::Null)
            })
            .collect(),
    )
}

impl OutputBinding for PostgresBinding {
    fn operations(&self) -> &'static [&'static str] {
        &["exec", "query", "close"]
    }

    fn invoke(&self, req: Request) -> BoxFuture<'_, Result<Response, BindingError>> {
        Box::pin(self.run(req))
    }
}
