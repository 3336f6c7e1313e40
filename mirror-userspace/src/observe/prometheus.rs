//! The registry in the Prometheus exposition formats, as `prometheus-client` encodes them:
//! the classic text format (0.0.4, what a scrape gets by default) and OpenMetrics text (when
//! the scraper's `Accept` asks for it). Metrics are `mirror_<stage>_<name>`, counters with
//! `_total`, the help from each sample.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};

use super::{
    registry::{HistogramSample, Labels, Unit},
    Kind, Registry, Sample,
};

/// Which text format to encode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when `accept` (an HTTP `Accept` header) names it, else the classic format.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Encodes every sample and histogram of `registry` as text in `format`.
pub fn encode(registry: &Registry, format: Format) -> Result<String, std::fmt::Error> {
    let mut exposition = prometheus_client::registry::Registry::default();
    exposition.register_collector(Box::new(RegistryCollector(registry.clone())));
    let mut out = String::new();
    match format {
        Format::Prometheus => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &exposition)?
        }
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &exposition)?,
    }
    Ok(out)
}

/// Reads the registry at every scrape.
#[derive(Debug)]
struct RegistryCollector(Registry);

impl Collector for RegistryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        // Samples of one metric come one after another: describe each metric once, then
        // encode each of its samples (one per label set).
        let mut families: Vec<(String, Vec<Sample>)> = Vec::new();
        self.0.visit(&mut |stage, sample| {
            add_to_family(
                &mut families,
                format!("mirror_{stage}_{}", sample.name),
                sample,
            )
        });
        for (name, samples) in families {
            let Some(first) = samples.first() else {
                continue;
            };
            let metric_type = match first.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut family =
                encoder.encode_descriptor(&name, first.help.trim(), None, metric_type)?;
            for sample in &samples {
                let labels = label_refs(&sample.labels);
                let metric = family.encode_family(&labels)?;
                match (sample.kind, sample.unit) {
                    (Kind::Counter, Unit::Plain) => {
                        ConstCounter::new(sample.value).encode(metric)?
                    }
                    (Kind::Counter, Unit::Nanoseconds) => {
                        ConstCounter::new(sample.exported_value()).encode(metric)?
                    }
                    (Kind::Gauge, Unit::Plain) => {
                        ConstGauge::new(i64::try_from(sample.value).unwrap_or(i64::MAX))
                            .encode(metric)?
                    }
                    (Kind::Gauge, Unit::Nanoseconds) => {
                        ConstGauge::new(sample.exported_value()).encode(metric)?
                    }
                }
            }
        }
        let mut histograms: Vec<(String, Vec<HistogramSample>)> = Vec::new();
        self.0.visit_histograms(&mut |stage, histogram| {
            let name = format!("mirror_{stage}_{}", histogram.name);
            add_to_family(&mut histograms, name, histogram)
        });
        for (name, members) in histograms {
            let Some(first) = members.first() else {
                continue;
            };
            let mut family =
                encoder.encode_descriptor(&name, first.help.trim(), None, MetricType::Histogram)?;
            for histogram in &members {
                let labels = label_refs(&histogram.labels);
                family
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(
                        histogram.sum,
                        histogram.count,
                        &histogram.buckets,
                        None,
                    )?;
            }
        }
        Ok(())
    }
}

/// Appends `member` to the last family if it has `name` (members of one name come one after
/// another), else starts a family.
fn add_to_family<T>(families: &mut Vec<(String, Vec<T>)>, name: String, member: T) {
    match families.last_mut() {
        Some((last, members)) if *last == name => members.push(member),
        _ => families.push((name, vec![member])),
    }
}

/// Labels as the encoder takes them.
fn label_refs(labels: &Labels) -> Vec<(&str, &str)> {
    labels
        .iter()
        .map(|(key, value)| (*key, value.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::{atomic::Ordering::Relaxed, Arc};

    use super::*;
    use crate::observe::registry::tests::TwoCounters;

    #[test]
    fn counters_get_total_and_gauges_do_not() {
        let registry = Registry::default();
        let relay = Arc::new(TwoCounters::default());
        relay.sent.store(5, Relaxed);
        relay.open.store(1, Relaxed);
        registry.register("relay", relay);
        let text = encode(&registry, Format::OpenMetrics).unwrap();
        assert!(
            text.contains("# HELP mirror_relay_sent Requests sent.\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE mirror_relay_sent counter\n"),
            "{text}"
        );
        assert!(text.contains("\nmirror_relay_sent_total 5\n"), "{text}");
        assert!(text.contains("# TYPE mirror_relay_open gauge\n"), "{text}");
        assert!(text.contains("\nmirror_relay_open 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}

#[cfg(test)]
mod format_tests {
    use std::{sync::Arc, time::Duration};

    use super::*;
    use crate::observe::{histogram::LatencyHistogram, registry::HistogramSample, Source};

    struct Relay(LatencyHistogram);

    impl Source for Relay {
        fn visit(&self, out: &mut dyn FnMut(Sample)) {
            for (reason, n) in [("queue_full", 2), ("shadow_down", 0)] {
                out(Sample::counter("dropped", "Requests dropped.", n).with_label("reason", reason));
            }
            out(Sample::gauge_nanos("loop_lag_seconds", "Lag.", 1_500_000));
        }

        fn histograms(&self, out: &mut dyn FnMut(HistogramSample)) {
            out(self.0.sample());
        }
    }

    fn registry() -> Registry {
        let registry = Registry::default();
        let histogram = LatencyHistogram::new("response_latency_seconds", "Latency.");
        histogram.observe(Duration::from_millis(2));
        registry.register("relay", Arc::new(Relay(histogram)));
        registry
    }

    #[test]
    fn classic_format_has_labelled_families_seconds_and_histograms() {
        let text = encode(&registry(), Format::Prometheus).unwrap();
        for line in [
            "# TYPE mirror_relay_dropped_total counter\n",
            "mirror_relay_dropped_total{reason=\"queue_full\"} 2\n",
            "mirror_relay_dropped_total{reason=\"shadow_down\"} 0\n",
            "mirror_relay_loop_lag_seconds 0.0015\n",
            "# TYPE mirror_relay_response_latency_seconds histogram\n",
            "mirror_relay_response_latency_seconds_bucket{le=\"0.001\"} 0\n",
            "mirror_relay_response_latency_seconds_bucket{le=\"0.0025\"} 1\n",
            "mirror_relay_response_latency_seconds_bucket{le=\"+Inf\"} 1\n",
            "mirror_relay_response_latency_seconds_count 1\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn negotiates_openmetrics_only_when_asked() {
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Prometheus);
        let accept = "application/openmetrics-text;version=1.0.0,text/plain;q=0.5";
        assert_eq!(Format::negotiate(Some(accept)), Format::OpenMetrics);
        let text = encode(&registry(), Format::OpenMetrics).unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    /// Two mirrors' histograms, as `RelaySource` reports them under `--config`.
    struct TwoMirrors(LatencyHistogram, LatencyHistogram);

    impl Source for TwoMirrors {
        fn visit(&self, _out: &mut dyn FnMut(Sample)) {}

        fn histograms(&self, out: &mut dyn FnMut(HistogramSample)) {
            out(self.0.sample().with_label("mirror", "p/a:80"));
            out(self.1.sample().with_label("mirror", "p/b:80"));
        }
    }

    #[test]
    fn labelled_histograms_share_one_family() {
        let a = LatencyHistogram::new("response_latency_seconds", "Latency.");
        let b = LatencyHistogram::new("response_latency_seconds", "Latency.");
        a.observe(Duration::from_millis(2));
        b.observe(Duration::from_millis(2));
        b.observe(Duration::from_millis(2));
        let registry = Registry::default();
        registry.register("relay", Arc::new(TwoMirrors(a, b)));
        let text = encode(&registry, Format::Prometheus).unwrap();
        assert_eq!(
            text.matches("# TYPE mirror_relay_response_latency_seconds histogram\n")
                .count(),
            1,
            "{text}"
        );
        for line in [
            "mirror_relay_response_latency_seconds_count{mirror=\"p/a:80\"} 1\n",
            "mirror_relay_response_latency_seconds_count{mirror=\"p/b:80\"} 2\n",
            "mirror_relay_response_latency_seconds_bucket{mirror=\"p/b:80\",le=\"+Inf\"} 2\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
    }
}
