//! The bindings' families in the one registry, Dapr's
//! `dapr_component_output_binding_*` (calls by operation and success) and
//! `dapr_component_input_binding_*` (events delivered to the app, by
//! success). A binding takes its series when it is loaded.

use std::sync::Arc;
use std::time::Duration;

use crate::blocks::call::Series;
use crate::telemetry::metrics::Section;
use crate::telemetry::registry::{Encoder, Family, Timed, labels};

/// One binding; index 1 is success.
pub struct BindingSeries {
    output: Family<String, Arc<[Timed; 2]>>,
    pub input: [Timed; 2],
}

impl Default for BindingSeries {
    fn default() -> Self {
        Self {
            output: Family::new("_other".to_owned()),
            input: Default::default(),
        }
    }
}

impl BindingSeries {
    pub fn output(&self, operation: &str, ok: bool, d: Duration) {
        self.output
            .with(operation, |t| t[usize::from(ok)].record(d));
    }
}

/// Output binding calls, by operation.
impl Series for BindingSeries {
    type Op<'a> = &'a str;
    fn record(&self, operation: &str, ok: bool, took: Duration) {
        self.output(operation, ok, took);
    }
}

/// Every binding's series: the block's [`Section`].
pub struct Families {
    bindings: Family<String, Arc<BindingSeries>>,
}

impl Default for Families {
    fn default() -> Self {
        Self {
            bindings: Family::new("_other".to_owned()),
        }
    }
}

impl Families {
    /// Binding `name`'s series.
    pub fn binding(&self, name: &str) -> Arc<BindingSeries> {
        self.bindings.with(name, Arc::clone)
    }
}

/// The labels of one series: `operation` only on output bindings.
struct Labels<'a> {
    app: &'a str,
    ns: &'a str,
    hist: bool,
}

impl Labels<'_> {
    /// One sample (or histogram) of a binding series, when it has any.
    fn emit(&self, e: &mut Encoder, name: &str, c: &str, op: Option<&str>, i: usize, t: &Timed) {
        if t.count.get() == 0 {
            return;
        }
        let ok = if i == 1 { "true" } else { "false" };
        let mut l = vec![
            ("app_id", self.app),
            ("component", c),
            ("namespace", self.ns),
        ];
        if let Some(op) = op {
            l.push(("operation", op));
        }
        l.push(("success", ok));
        let l = labels(&l);
        if self.hist {
            e.histogram(name, &l, &t.latency);
        } else {
            e.sample(name, &l, t.count.get());
        }
    }
}

impl Section for Families {
    fn render(&self, e: &mut Encoder, app: &str, ns: &str) {
        for (hist, kind) in [(false, "count"), (true, "latencies")] {
            let ty = if hist { "histogram" } else { "counter" };
            let l = Labels { app, ns, hist };
            let name = format!("dapr_component_output_binding_{kind}");
            e.header(&name, ty, "Output binding calls, by operation and success.");
            self.bindings.each(|c, b| {
                b.output.each(|op, t| {
                    for (i, timed) in t.iter().enumerate() {
                        l.emit(e, &name, c, Some(op), i, timed);
                    }
                });
            });
            let name = format!("dapr_component_input_binding_{kind}");
            e.header(
                &name,
                ty,
                "Input binding events delivered to the app, by success.",
            );
            self.bindings.each(|c, b| {
                for (i, timed) in b.input.iter().enumerate() {
                    l.emit(e, &name, c, None, i, timed);
                }
            });
        }
    }
}
