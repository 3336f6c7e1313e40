//! The criterion micro-benchmarks of the sans-IO cores (reassembly, framing), run through
//! cargo and read back from criterion's console report.

use std::process::Command;

use anyhow::{bail, Context as _, Result};

/// One benchmark's estimate as criterion printed it (`[low mid high]` with units).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Micro {
    pub name: String,
    pub time: String,
    pub throughput: Option<String>,
}

/// Runs the benches with a short measurement window (the defaults take minutes on two cores).
pub fn run(workspace: &std::path::Path, measurement_secs: u32) -> Result<Vec<Micro>> {
    let out = Command::new(env!("CARGO"))
        .current_dir(workspace)
        .args([
            "bench",
            "--package",
            "mirror-cores",
            "--bench",
            "reassembly",
            "--bench",
            "framing",
            "--",
        ])
        .args([
            "--measurement-time",
            &measurement_secs.to_string(),
            "--warm-up-time",
            "1",
        ])
        .output()
        .context("cargo bench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "cargo bench failed ({}):\n{}\n{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(parse(&stdout))
}

/// Criterion prints `name  time: [a b c]`, or the name alone on a line when it is long, then
/// an optional `thrpt: [...]` line.
fn parse(text: &str) -> Vec<Micro> {
    let mut results: Vec<Micro> = Vec::new();
    let mut pending_name: Option<String> = None;
    // Criterion follows each result with a `change:` block (against the last run) holding
    // its own `time:` and `thrpt:` lines, in percent: not results.
    let mut in_change = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed == "change:" {
            in_change = true;
        } else if in_change && line.contains("time:") {
            continue;
        } else if let Some((before, rest)) = line.split_once("time:") {
            let name = match before.trim() {
                "" => pending_name.take(),
                name => Some(name.to_owned()),
            };
            if let (Some(name), Some(value)) = (name, bracketed(rest)) {
                in_change = false;
                results.push(Micro {
                    name,
                    time: value,
                    throughput: None,
                });
            }
        } else if let Some(rest) = trimmed.strip_prefix("thrpt:") {
            if let Some(last) = results.last_mut().filter(|_| !in_change) {
                last.throughput = bracketed(rest);
            }
        } else if !line.starts_with(' ') && !trimmed.is_empty() && !trimmed.contains(':') {
            in_change = false;
            pending_name = Some(trimmed.to_owned());
        }
    }
    results
}

/// The middle estimate of `[low mid high]`, with its unit.
fn bracketed(text: &str) -> Option<String> {
    let inner = text.split_once('[')?.1.split_once(']')?.0;
    let parts: Vec<&str> = inner.split_whitespace().collect();
    (parts.len() == 6).then(|| format!("{} {}", parts[2], parts[3]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_inline_and_wrapped_names() {
        let text = "Benchmarking x\nreassembly/in_order    time:   [1.0 µs 1.5 µs 2.0 µs]\n\
                    \x20                      thrpt:  [1.0 GiB/s 1.1 GiB/s 1.2 GiB/s]\n\
                    framing/chunked_body_with_a_long_name\n\
                    \x20                      time:   [10 ns 12 ns 14 ns]\n";
        let got = parse(text);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].name, "reassembly/in_order");
        assert_eq!(got[0].time, "1.5 µs");
        assert_eq!(got[0].throughput.as_deref(), Some("1.1 GiB/s"));
        assert_eq!(got[1].name, "framing/chunked_body_with_a_long_name");
        assert_eq!(got[1].time, "12 ns");
    }

    #[test]
    fn ignores_the_change_block() {
        let text = "framing/large_body      time:   [135 µs 136 µs 137 µs]\n\
                    \x20                       thrpt:  [28.3 GiB/s 28.6 GiB/s 28.9 GiB/s]\n\
                    \x20                change:\n\
                    \x20                       time:   [+0.32% +1.09% +2.03%] (p = 0.01 < 0.05)\n\
                    \x20                       thrpt:  [-1.99% -1.08% -0.31%]\n\
                    Found 1 outliers among 100 measurements (1.00%)\n";
        let got = parse(text);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].time, "136 µs");
        assert_eq!(got[0].throughput.as_deref(), Some("28.6 GiB/s"));
    }
}
