//! Telemetry settings from the Configuration document: `spec.metrics`
//! (Dapr also reads the older `spec.metric`) and `spec.tracing`.

use serde::Deserialize;

use super::otlp::Protocol;
use crate::config::Documents;

#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {why}")]
pub struct TelemetryError {
    pub file: String,
    pub field: &'static str,
    pub why: String,
}

/// Without `spec.tracing`, daprd still traces: parent-based, sampling this
/// share of the traces it starts, exporting nothing. So a caller's sampled
/// `traceparent` reaches the app re-parented by the sidecars, and an
/// unsampled one keeps its flag.
pub const DEFAULT_SAMPLING_RATE: f64 = 0.0001;

/// What the Configuration asks of metrics and tracing.
#[derive(Debug, Default)]
pub struct Telemetry {
    /// `spec.metrics.enabled` (default true; `--enable-metrics=false` wins).
    pub metrics_enabled: bool,
    pub path_matching: Vec<String>,
    /// None: no `spec.tracing` (then [`DEFAULT_SAMPLING_RATE`], no export).
    pub tracing: Option<Tracing>,
}

#[derive(Debug)]
pub struct Tracing {
    pub sampling_rate: f64,
    pub otel: Option<Otel>,
}

#[derive(Debug)]
pub struct Otel {
    pub endpoint: String,
    pub protocol: Protocol,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct MetricSpec {
    enabled: Option<bool>,
    #[serde(default)]
    http: HttpMetricSpec,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct HttpMetricSpec {
    #[serde(default)]
    path_matching: Vec<String>,
    /// Accepted for compatibility; paths reach labels only through
    /// `pathMatching`, whatever this says.
    #[allow(dead_code)]
    increased_cardinality: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TracingSpec {
    #[serde(default)]
    sampling_rate: String,
    otel: Option<OtelSpec>,
    zipkin: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OtelSpec {
    endpoint_address: String,
    #[serde(default)]
    is_secure: bool,
    #[serde(default)]
    protocol: String,
}

impl Telemetry {
    pub fn from_documents(docs: &Documents) -> Result<Self, TelemetryError> {
        let Some(c) = &docs.configuration else {
            return Ok(Self {
                metrics_enabled: true,
                ..Self::default()
            });
        };
        let file = c.source.display().to_string();
        let err = |field: &'static str, why: String| TelemetryError {
            file: file.clone(),
            field,
            why,
        };
        let metric_value = c.spec.get("metrics").or_else(|| c.spec.get("metric"));
        let m: MetricSpec = match metric_value {
            Some(v) => {
                serde_json::from_value(v.clone()).map_err(|e| err("spec.metrics", e.to_string()))?
            }
            None => MetricSpec::default(),
        };
        let tracing = match c.spec.get("tracing") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                let t: TracingSpec = serde_json::from_value(v.clone())
                    .map_err(|e| err("spec.tracing", e.to_string()))?;
                Some(tracing_from(t, &err)?)
            }
        };
        Ok(Self {
            metrics_enabled: m.enabled.unwrap_or(true),
            path_matching: m.http.path_matching,
            tracing,
        })
    }
}

fn tracing_from(
    t: TracingSpec,
    err: &dyn Fn(&'static str, String) -> TelemetryError,
) -> Result<Tracing, TelemetryError> {
    let rate = match t.sampling_rate.trim() {
        "" => 0.0,
        s => s
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| {
                err(
                    "spec.tracing.samplingRate",
                    format!("{s:?} is not a number from 0 to 1"),
                )
            })?,
    };
    if t.zipkin.is_some() && t.otel.is_none() {
        tracing::warn!(
            "spec.tracing.zipkin is not supported by Skiff: spans are propagated but not exported; use spec.tracing.otel (an OpenTelemetry collector can forward to Zipkin)"
        );
    }
    let otel = match t.otel {
        None => None,
        Some(o) => {
            if o.is_secure {
                return Err(err(
                    "spec.tracing.otel.isSecure",
                    "TLS to the collector is not supported yet; run the collector's OTLP receiver on a local plaintext port".into(),
                ));
            }
            if o.endpoint_address.trim().is_empty() {
                return Err(err("spec.tracing.otel.endpointAddress", "is empty".into()));
            }
            let protocol = match o.protocol.to_ascii_lowercase().as_str() {
                "" | "grpc" => Protocol::Grpc,
                "http" | "http/protobuf" => Protocol::Http,
                other => {
                    return Err(err(
                        "spec.tracing.otel.protocol",
                        format!("{other:?}: expected grpc or http"),
                    ));
                }
            };
            Some(Otel {
                endpoint: o.endpoint_address,
                protocol,
            })
        }
    };
    Ok(Tracing {
        sampling_rate: rate,
        otel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Document;

    fn docs(spec: &str) -> Documents {
        let spec: serde_json::Value = yaml_serde::from_str(spec).expect("yaml");
        Documents {
            configuration: Some(Document {
                api_version: "dapr.io/v1alpha1".into(),
                kind: "Configuration".into(),
                metadata: Default::default(),
                spec,
                scopes: vec![],
                auth: Default::default(),
                source: "c.yaml".into(),
            }),
            resources: vec![],
        }
    }

    #[test]
    fn reads_metrics_and_tracing() {
        let t = Telemetry::from_documents(&docs(
            "metric:\n  enabled: false\n  http:\n    pathMatching: [\"/a/{id}\"]\ntracing:\n  samplingRate: \"0.1\"\n  otel:\n    endpointAddress: 127.0.0.1:4318\n    protocol: http\n",
        ))
        .expect("valid");
        assert!(!t.metrics_enabled);
        assert_eq!(t.path_matching, vec!["/a/{id}".to_owned()]);
        let tr = t.tracing.expect("tracing");
        assert!((tr.sampling_rate - 0.1).abs() < 1e-9);
        let o = tr.otel.expect("otel");
        assert_eq!(o.protocol, Protocol::Http);
        assert!(
            Telemetry::from_documents(&Documents::default())
                .expect("ok")
                .metrics_enabled
        );
    }

    #[test]
    fn errors_name_file_and_field() {
        let e =
            Telemetry::from_documents(&docs("tracing:\n  samplingRate: lots\n")).expect_err("bad");
        assert_eq!(
            e.to_string(),
            "c.yaml: spec.tracing.samplingRate: \"lots\" is not a number from 0 to 1"
        );
        let e = Telemetry::from_documents(&docs(
            "tracing:\n  otel:\n    endpointAddress: x:1\n    protocol: thrift\n",
        ))
        .expect_err("bad");
        assert!(e.to_string().contains("spec.tracing.otel.protocol"), "{e}");
    }
}
