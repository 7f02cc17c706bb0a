//! Families the registry renders but does not define: each building block
//! keeps its `dapr_component_*` families beside its code
//! (`blocks/<block>/metrics.rs`) as a [`Section`]. The registry makes one
//! of each the first time it is asked for ([`Metrics::section`]) and
//! renders them after the resiliency families, in the order they were
//! first asked for; the blocks ask in one fixed order at start
//! (`blocks::metrics::register`), so the exposition is the same in every
//! run.
//!
//! Also here: [`OpsFamily`], the shape four blocks share (state, secret,
//! lock and configuration stores: count and latency per component,
//! operation and outcome); each block names its kind and operations.

use std::any::{Any, TypeId};
use std::marker::PhantomData;
use std::sync::PoisonError;

use super::*;

/// A block's families, rendered on every scrape.
pub trait Section: Default + Send + Sync + 'static {
    /// Writes the families; `app` and `ns` are the sidecar's `app_id` and
    /// `namespace` labels.
    fn render(&self, e: &mut Encoder, app: &str, ns: &str);
}

/// One section as the registry holds it: the value, and how to render it
/// without knowing its type.
struct Slot {
    ty: TypeId,
    value: Arc<dyn Any + Send + Sync>,
    render: fn(&(dyn Any + Send + Sync), &mut Encoder, &str, &str),
}

/// The sections, in the order they were first asked for.
#[derive(Default)]
pub(super) struct Sections(Mutex<Vec<Slot>>);

fn render_as<T: Section>(v: &(dyn Any + Send + Sync), e: &mut Encoder, app: &str, ns: &str) {
    if let Some(t) = v.downcast_ref::<T>() {
        t.render(e, app, ns);
    }
}

impl Sections {
    fn get<T: Section>(&self) -> Arc<T> {
        let mut slots = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let ty = TypeId::of::<T>();
        if let Some(found) = slots
            .iter()
            .find(|s| s.ty == ty)
            .and_then(|s| Arc::clone(&s.value).downcast::<T>().ok())
        {
            return found;
        }
        let made = Arc::new(T::default());
        slots.push(Slot {
            ty,
            value: made.clone(),
            render: render_as::<T>,
        });
        made
    }

    pub(super) fn render(&self, e: &mut Encoder, app: &str, ns: &str) {
        let slots = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for s in slots.iter() {
            (s.render)(s.value.as_ref(), e, app, ns);
        }
    }
}

impl Metrics {
    /// The registry's one `T` (made, and placed in the rendering order,
    /// the first time it is asked for). Components take their series from
    /// it when they are loaded, so a call records without a lookup.
    pub fn section<T: Section>(&self) -> Arc<T> {
        self.sections.get::<T>()
    }
}

/// What names a store block's families: `dapr_component_<KIND>_count`
/// and `_latencies`, with `OPS` the `operation` label's values.
pub trait StoreKind: Send + Sync + 'static {
    const KIND: &'static str;
    const OPS: &'static [&'static str];
}

/// The most operations a store block has (state's seven).
const MAX_OPS: usize = 7;

/// One component's calls: count and latency per operation and outcome
/// (`success` true/false).
#[derive(Default)]
pub struct ComponentOps([[Timed; 2]; MAX_OPS]);

impl ComponentOps {
    /// `op` indexes the block's operation list ([`StoreKind::OPS`]).
    pub fn record(&self, op: usize, ok: bool, d: Duration) {
        if let Some(o) = self.0.get(op) {
            o[usize::from(ok)].record(d);
        }
    }
}

/// A store block's components.
pub struct OpsFamily<K: StoreKind> {
    components: Family<String, Arc<ComponentOps>>,
    kind: PhantomData<K>,
}

impl<K: StoreKind> Default for OpsFamily<K> {
    fn default() -> Self {
        Self {
            components: Family::new("_other".to_owned()),
            kind: PhantomData,
        }
    }
}

impl<K: StoreKind> OpsFamily<K> {
    /// Component `name`'s series.
    pub fn component(&self, name: &str) -> Arc<ComponentOps> {
        self.components.with(name, Arc::clone)
    }
}

impl<K: StoreKind> Section for OpsFamily<K> {
    fn render(&self, e: &mut Encoder, app: &str, ns: &str) {
        let (count, lat) = (
            format!("dapr_component_{}_count", K::KIND),
            format!("dapr_component_{}_latencies", K::KIND),
        );
        let l = |component: &str, op: usize, ok: usize| {
            labels(&[
                ("app_id", app),
                ("component", component),
                ("namespace", ns),
                ("operation", K::OPS[op]),
                ("success", if ok == 1 { "true" } else { "false" }),
            ])
        };
        let ops = K::OPS.len().min(MAX_OPS);
        e.header(
            &count,
            "counter",
            "Operations the sidecar performed on the component.",
        );
        self.components.each(|c, s| {
            for (op, o) in s.0.iter().enumerate().take(ops) {
                for (ok, t) in o.iter().enumerate() {
                    if t.count.get() > 0 {
                        e.sample(&count, &l(c, op, ok), t.count.get());
                    }
                }
            }
        });
        e.header(
            &lat,
            "histogram",
            "Latency of the component's answers, in milliseconds.",
        );
        self.components.each(|c, s| {
            for (op, o) in s.0.iter().enumerate().take(ops) {
                for (ok, t) in o.iter().enumerate() {
                    if t.count.get() > 0 {
                        e.histogram(&lat, &l(c, op, ok), &t.latency);
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Two;
    impl StoreKind for Two {
        const KIND: &'static str = "two";
        const OPS: &'static [&'static str] = &["a", "b"];
    }

    #[derive(Default)]
    struct Marker(Counter);
    impl Section for Marker {
        fn render(&self, e: &mut Encoder, app: &str, _: &str) {
            e.sample("marker", &labels(&[("app_id", app)]), self.0.get());
        }
    }

    #[test]
    fn one_section_per_type_rendered_in_first_asked_order() {
        let m = Metrics::new();
        m.section::<Marker>().0.inc();
        m.section::<OpsFamily<Two>>()
            .component("c")
            .record(1, true, Duration::from_millis(1));
        m.section::<Marker>().0.inc();
        // An operation past the kind's list is not recorded anywhere.
        m.section::<OpsFamily<Two>>().component("c").record(
            MAX_OPS,
            true,
            Duration::from_millis(1),
        );
        let mut e = Encoder::default();
        m.sections.render(&mut e, "app", "ns");
        let marker = e.out.find("marker{app_id=\"app\"} 2").expect("marker");
        let ops = e
            .out
            .find("dapr_component_two_count{app_id=\"app\",component=\"c\",namespace=\"ns\",operation=\"b\",success=\"true\"} 1")
            .expect("ops");
        assert!(marker < ops, "{}", e.out);
        assert_eq!(e.out.matches("dapr_component_two_count{").count(), 1);
    }
}
