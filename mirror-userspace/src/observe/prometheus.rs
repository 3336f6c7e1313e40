//! The registry in the Prometheus exposition format (OpenMetrics text, as `prometheus-client`
//! encodes it): `mirror_<stage>_<name>`, counters with `_total`, the help from each sample.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};

use super::{Kind, Registry, Sample};

/// Encodes every sample of `registry` as text.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut exposition = prometheus_client::registry::Registry::default();
    exposition.register_collector(Box::new(RegistryCollector(registry.clone())));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &exposition)?;
    Ok(out)
}

/// Reads the registry at every scrape.
#[derive(Debug)]
struct RegistryCollector(Registry);

impl Collector for RegistryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        // Samples of one metric come one after another: describe each metric once, then
        // encode each of its samples (one per label value).
        let mut families: Vec<(String, Vec<Sample>)> = Vec::new();
        self.0.visit(&mut |stage, sample| {
            let name = format!("mirror_{stage}_{}", sample.name);
            match families.last_mut() {
                Some((last, samples)) if *last == name => samples.push(sample),
                _ => families.push((name, vec![sample])),
            }
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
                let labels: Vec<(&str, &str)> = sample
                    .label
                    .as_ref()
                    .map(|(key, value)| (*key, value.as_str()))
                    .into_iter()
                    .collect();
                let metric = family.encode_family(&labels)?;
                match sample.kind {
                    Kind::Counter => ConstCounter::new(sample.value).encode(metric)?,
                    Kind::Gauge => ConstGauge::new(i64::try_from(sample.value).unwrap_or(i64::MAX))
                        .encode(metric)?,
                }
            }
        }
        Ok(())
    }
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
        let text = encode(&registry).unwrap();
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
