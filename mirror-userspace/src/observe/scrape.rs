//! Reading a Prometheus text exposition back (what `mirror status` does with `/metrics`):
//! samples by name and labels, family sums, and quantiles of a histogram's buckets.

/// One sample line: `name{key="value",...} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct ScrapedSample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl ScrapedSample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed exposition.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape {
    pub samples: Vec<ScrapedSample>,
}

#[derive(Debug, thiserror::Error)]
#[error("line {line} of the exposition is not a sample: {text:?}")]
pub struct ScrapeError {
    line: usize,
    text: String,
}

impl Scrape {
    /// Parses the text format (0.0.4 or OpenMetrics): comments are skipped.
    pub fn parse(text: &str) -> Result<Scrape, ScrapeError> {
        let mut samples = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let error = || ScrapeError {
                line: index + 1,
                text: line.to_owned(),
            };
            samples.push(parse_sample(line).ok_or_else(error)?);
        }
        Ok(Scrape { samples })
    }

    /// The sum of every sample named `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// Samples named `name` whose labels include `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a ScrapedSample> + 'a {
        self.samples.iter().filter(move |sample| {
            sample.name == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.label(key) == Some(value))
        })
    }

    /// Whether any sample is named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|sample| sample.name == name)
    }

    /// The `q` quantile (0 to 1) of histogram `name` (its `_bucket` samples) over every
    /// member whose labels include `labels` (their buckets added up per bound, as
    /// `sum by (le)` does), interpolated linearly within the bucket as Prometheus'
    /// `histogram_quantile` does; `None` when it has no observations.
    pub fn quantile(&self, name: &str, labels: &[(&str, &str)], q: f64) -> Option<f64> {
        let bucket_name = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        for sample in self.matching(&bucket_name, labels) {
            let Some(bound) = sample.label("le").and_then(parse_float) else {
                continue;
            };
            match buckets.iter_mut().find(|(b, _)| *b == bound) {
                Some((_, count)) => *count += sample.value,
                None => buckets.push((bound, sample.value)),
            }
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        quantile(&buckets, q)
    }
}

/// `buckets`: (upper bound, cumulative count), sorted, the last bound infinite.
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                // Past the last finite bound: say the last finite bound, as Prometheus does.
                return Some(lower.0);
            }
            let in_bucket = count - lower.1;
            let fraction = if in_bucket > 0.0 {
                (rank - lower.1) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (bound - lower.0) * fraction);
        }
        lower = (bound, count);
    }
    Some(lower.0)
}

fn parse_sample(line: &str) -> Option<ScrapedSample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(at) => line.split_at(at),
        None => return None,
    };
    let (labels, rest) = if let Some(rest) = rest.strip_prefix('{') {
        parse_labels(rest)?
    } else {
        (Vec::new(), rest)
    };
    // A value, and perhaps a timestamp after it.
    let value = parse_float(rest.split_whitespace().next()?)?;
    Some(ScrapedSample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `key="value",...}` and returns the labels and what follows the `}`.
fn parse_labels(mut rest: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (at, '"') => break at,
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim().to_owned(), value));
        rest = &after[end + 1..];
    }
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP mirror_relay_dropped_total Dropped.\n\
        # TYPE mirror_relay_dropped_total counter\n\
        mirror_relay_dropped_total{reason=\"queue_full\"} 2\n\
        mirror_relay_dropped_total{reason=\"odd \\\"one\\\"\"} 1\n\
        mirror_agent_ready 1\n\
        lat_bucket{le=\"0.001\"} 50\n\
        lat_bucket{le=\"0.01\"} 90\n\
        lat_bucket{le=\"+Inf\"} 100\n\
        lat_count 100\n";

    #[test]
    fn reads_samples_labels_and_sums() {
        let scrape = Scrape::parse(TEXT).unwrap();
        assert_eq!(scrape.sum("mirror_relay_dropped_total", &[]), 3.0);
        assert_eq!(
            scrape.sum("mirror_relay_dropped_total", &[("reason", "queue_full")]),
            2.0
        );
        assert_eq!(scrape.sum("mirror_agent_ready", &[]), 1.0);
        let odd = scrape
            .matching("mirror_relay_dropped_total", &[])
            .nth(1)
            .unwrap();
        assert_eq!(odd.label("reason"), Some("odd \"one\""));
        assert!(Scrape::parse("garbage\n").is_err());
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let scrape = Scrape::parse(TEXT).unwrap();
        assert_eq!(scrape.quantile("lat", &[], 0.5), Some(0.001));
        let p70 = scrape.quantile("lat", &[], 0.7).unwrap();
        assert!((p70 - 0.0055).abs() < 1e-12, "{p70}");
        // Beyond the last finite bound: that bound.
        assert_eq!(scrape.quantile("lat", &[], 0.99), Some(0.01));
        assert_eq!(scrape.quantile("missing", &[], 0.5), None);
    }

    #[test]
    fn quantiles_add_up_members_or_pick_one() {
        let scrape = Scrape::parse(
            "lat_bucket{mirror=\"a\",le=\"0.001\"} 10\n\
             lat_bucket{mirror=\"a\",le=\"+Inf\"} 10\n\
             lat_bucket{mirror=\"b\",le=\"0.001\"} 0\n\
             lat_bucket{mirror=\"b\",le=\"+Inf\"} 10\n",
        )
        .unwrap();
        // Half of all answers took at most 1 ms: the median is that bound.
        assert_eq!(scrape.quantile("lat", &[], 0.5), Some(0.001));
        assert_eq!(
            scrape.quantile("lat", &[("mirror", "a")], 0.5),
            Some(0.0005)
        );
        // Every answer of b is past the last finite bound.
        assert_eq!(scrape.quantile("lat", &[("mirror", "b")], 0.5), Some(0.001));
    }
}
