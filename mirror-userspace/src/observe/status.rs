//! The status line: every stage's samples as `stage: name=value ...`, stages joined by ` | `,
//! rendered from the registry (so it can never disagree with the metrics endpoint).

use std::fmt::Write as _;

use super::Registry;

/// Renders `relay: sent=3 ... | pipeline: ... | kernel: ...`. A labelled sample is preceded
/// by its label's value whenever that changes (`bpf: mirror_ingress runs=.. ns_per_run=..`);
/// a stage without samples is left out.
pub fn status_line(registry: &Registry) -> String {
    let mut line = String::new();
    let mut stage_now: Option<&'static str> = None;
    let mut label_now: Option<String> = None;
    registry.visit(&mut |stage, sample| {
        if stage_now != Some(stage) {
            if stage_now.is_some() {
                line.push_str(" |");
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(stage);
            line.push(':');
            stage_now = Some(stage);
            label_now = None;
        }
        if let Some((_, value)) = &sample.label {
            if label_now.as_ref() != Some(value) {
                line.push(' ');
                line.push_str(value);
                label_now = Some(value.clone());
            }
        }
        // Writing to a String cannot fail.
        let _ = write!(line, " {}={}", sample.name, sample.value);
    });
    line
}

#[cfg(test)]
mod tests {
    use std::sync::{atomic::Ordering::Relaxed, Arc};

    use super::*;
    use crate::observe::{registry::tests::TwoCounters, Sample, Source};

    struct Programs;

    impl Source for Programs {
        fn visit(&self, out: &mut dyn FnMut(Sample)) {
            for (program, runs) in [("mirror_ingress", 4), ("mirror_egress", 2)] {
                out(Sample::counter("runs", "Runs.", runs).with_label("program", program));
                out(Sample::gauge("ns_per_run", "Cost.", 50).with_label("program", program));
            }
        }
    }

    struct Nothing;

    impl Source for Nothing {
        fn visit(&self, _: &mut dyn FnMut(Sample)) {}
    }

    #[test]
    fn renders_stages_in_order_with_labels_once_per_group() {
        let registry = Registry::default();
        let relay = Arc::new(TwoCounters::default());
        relay.sent.store(7, Relaxed);
        registry.register("relay", relay);
        registry.register("idle", Arc::new(Nothing));
        registry.register("bpf", Arc::new(Programs));
        assert_eq!(
            status_line(&registry),
            "relay: sent=7 open=0 | bpf: mirror_ingress runs=4 ns_per_run=50 \
             mirror_egress runs=2 ns_per_run=50"
        );
    }
}
