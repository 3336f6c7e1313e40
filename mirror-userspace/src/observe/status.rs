//! The status lines, rendered from the registry (so they can never disagree with the metrics
//! endpoint): a short periodic one with the totals and the conservation sum, and the full one
//! (every sample, `stage: name=value ...`, stages joined by ` | `) printed at exit.

use std::{collections::HashMap, fmt::Write as _};

use super::{Registry, Sample};

/// Labels whose value completes the sample's name in the status line
/// (`dropped{reason="queue_full"}` reads `dropped_queue_full=`); any other label (the program of
/// a kernel counter) heads a group of samples instead.
const NAME_LABELS: [&str; 3] = ["reason", "class", "kind"];

/// Renders `relay: requests=3 ... | pipeline: ... | kernel: ...`. A grouping label's value
/// precedes the samples it labels whenever it changes (`bpf: mirror_ingress runs=.. ns_per_run=..`);
/// a family with naming labels is preceded by its total, unless the stage reports that total
/// itself (`dropped=2 dropped_queue_full=2 dropped_shadow_down=0`); a stage without samples is
/// left out.
pub fn status_line(registry: &Registry) -> String {
    let mut samples = Vec::new();
    registry.visit(&mut |stage, sample| samples.push((stage, sample)));
    // Per stage, name and group: the family's total, and whether a plain sample exists.
    let mut totals: HashMap<(&'static str, &'static str, Option<String>), (u64, bool)> =
        HashMap::new();
    for (stage, sample) in &samples {
        let named = sample
            .labels
            .iter()
            .any(|(key, _)| NAME_LABELS.contains(key));
        let slot = totals
            .entry((*stage, sample.name, group_of(sample)))
            .or_default();
        if named {
            slot.0 = slot.0.wrapping_add(sample.value);
        } else {
            slot.1 = true;
        }
    }
    let mut line = String::new();
    let mut stage_now: Option<&'static str> = None;
    let mut group_now: Option<String> = None;
    for (stage, sample) in samples {
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
            group_now = None;
        }
        let group = group_of(&sample);
        if group.is_some() && group_now != group {
            line.push(' ');
            line.push_str(group.as_deref().unwrap_or_default());
            group_now = group.clone();
        }
        if let Some((total, false)) = totals.remove(&(stage, sample.name, group)) {
            // Writing to a String cannot fail.
            let _ = write!(line, " {}={total}", sample.name);
        }
        let _ = write!(line, " {}={}", token(&sample), sample.value);
    }
    line
}

/// The short periodic line: where mirrored requests went and whether every one is accounted
/// for, then what the capture lost. `mirrored` counts every request handed to the relay
/// (completed or later aborted); `in_flight` is mirrored minus settled (answered, unanswered,
/// dropped): requests still queued or awaiting v2's answer.
pub fn short_line(registry: &Registry) -> String {
    let total = |stage: &str, names: &[&str]| -> u64 {
        names
            .iter()
            .filter_map(|name| registry.total(stage, name))
            .sum()
    };
    let handed = total("pipeline", &["requests_mirrored", "requests_aborted"]);
    // The relay's outcome families, each summed once over its labels.
    let answered = total("relay", &["answered"]);
    let unanswered = total("relay", &["unanswered"]);
    let dropped = total("relay", &["dropped"]);
    let settled = answered + unanswered + dropped;
    let in_flight = i128::from(handed) - i128::from(settled);
    let mut line =
        format!("mirrored={handed} answered={answered} unanswered={unanswered} dropped={dropped}");
    let mut reasons = Vec::new();
    registry.visit(&mut |stage, sample| {
        if stage == "relay" && sample.name == "dropped" && sample.value > 0 {
            reasons.push(format!("{}={}", label_values(&sample), sample.value));
        }
    });
    if !reasons.is_empty() {
        let _ = write!(line, " ({})", reasons.join(" "));
    }
    let _ = write!(
        line,
        " in_flight={in_flight} | capture: packets_matched={} ringbuf_full_drops={} gaps={} flows={}",
        total("kernel", &["packets_matched"]),
        total("kernel", &["ringbuf_full_drops"]),
        total("pipeline", &["gaps"]),
        total("pipeline", &["flows"]),
    );
    line
}

fn group_of(sample: &Sample) -> Option<String> {
    let values: Vec<&str> = sample
        .labels
        .iter()
        .filter(|(key, _)| !NAME_LABELS.contains(key))
        .map(|(_, value)| value.as_str())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// `name`, then `_value` for each naming label.
fn token(sample: &Sample) -> String {
    let mut token = sample.name.to_owned();
    for (key, value) in &sample.labels {
        if NAME_LABELS.contains(key) {
            token.push('_');
            token.push_str(value);
        }
    }
    token
}

fn label_values(sample: &Sample) -> String {
    let values: Vec<&str> = sample.labels.iter().map(|(_, v)| v.as_str()).collect();
    values.join(",")
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

    struct Relay;

    impl Source for Relay {
        fn visit(&self, out: &mut dyn FnMut(Sample)) {
            out(Sample::counter("requests", "Requests.", 9));
            out(Sample::counter("answered", "Answered.", 6).with_label("class", "2xx"));
            out(Sample::counter("unanswered", "Unanswered.", 1).with_label("reason", "timeout"));
            for (reason, n) in [("queue_full", 2), ("shadow_down", 0)] {
                out(Sample::counter("dropped", "Dropped.", n).with_label("reason", reason));
            }
        }
    }

    struct Pipeline;

    impl Source for Pipeline {
        fn visit(&self, out: &mut dyn FnMut(Sample)) {
            out(Sample::counter("requests_mirrored", "Mirrored.", 10));
            out(Sample::counter("requests_aborted", "Aborted.", 1).with_label("reason", "gap"));
            out(Sample::counter("gaps", "Gaps.", 1));
        }
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

    #[test]
    fn reason_and_class_labels_complete_the_name() {
        let registry = Registry::default();
        registry.register("relay", Arc::new(Relay));
        assert_eq!(
            status_line(&registry),
            "relay: requests=9 answered=6 answered_2xx=6 unanswered=1 unanswered_timeout=1 \
             dropped=2 dropped_queue_full=2 dropped_shadow_down=0"
        );
    }

    #[test]
    fn short_line_sums_outcomes_against_what_was_mirrored() {
        let registry = Registry::default();
        registry.register("relay", Arc::new(Relay));
        registry.register("pipeline", Arc::new(Pipeline));
        assert_eq!(
            short_line(&registry),
            "mirrored=11 answered=6 unanswered=1 dropped=2 (queue_full=2) in_flight=2 \
             | capture: packets_matched=0 ringbuf_full_drops=0 gaps=1 flows=0"
        );
    }
}
