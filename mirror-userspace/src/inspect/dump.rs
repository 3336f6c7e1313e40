//! `mirror capture`: the tcpdump of this tool. Prints every captured segment per flow and can
//! write a pcap file; the end-to-end tests use it to check what the kernel program emits.

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
};

use mirror_common::{DIRECTION_INGRESS, MAX_CAPTURE_BYTES};

use crate::{
    capture::{
        clock::WallClock,
        packet, pcap,
        record::{self, Record},
        session::{CaptureOptions, OwnMark, Session, SessionError},
    },
    observe::{status::status_line, Registry, Sample, Source},
    shutdown::shutdown_signal,
};

#[derive(Clone, Debug, clap::Args)]
pub struct CaptureArgs {
    #[command(flatten)]
    pub capture: CaptureOptions,
    /// Also write every record to this pcap file (nanosecond timestamps).
    #[arg(long, value_name = "PATH")]
    pub pcap: Option<PathBuf>,
    /// Print no line per segment (counters are still printed at exit).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("writing {what} failed")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

/// What userspace saw, beside the kernel's counters.
#[derive(Debug, Default)]
struct Tally {
    records: AtomicU64,
    malformed: AtomicU64,
    undecodable: AtomicU64,
    truncated: AtomicU64,
    reverse: AtomicU64,
    write_errors: AtomicU64,
}

impl Source for Tally {
    fn visit(&self, out: &mut dyn FnMut(Sample)) {
        for (name, help, counter) in [
            ("records", "Ring buffer records read.", &self.records),
            (
                "malformed_records",
                "Records shorter than their header.",
                &self.malformed,
            ),
            (
                "undecodable_packets",
                "Records with no packet.",
                &self.undecodable,
            ),
            (
                "truncated_records",
                "Records the kernel had to cut.",
                &self.truncated,
            ),
            (
                "reverse_records",
                "Header-only records of v1's side.",
                &self.reverse,
            ),
            (
                "write_errors",
                "Lines or pcap records that failed to write.",
                &self.write_errors,
            ),
        ] {
            out(Sample::counter(name, help, counter.load(Relaxed)));
        }
    }
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

/// Captures until SIGINT/SIGTERM; prints the counters to stderr at the end.
pub async fn run(args: CaptureArgs) -> Result<(), CaptureError> {
    let mut session = Session::start(&args.capture, OwnMark::NONE, 0)?;
    let io_error = |what: String| move |source| CaptureError::Io { what, source };
    let mut pcap = match &args.pcap {
        Some(path) => Some(
            File::create(path)
                .map(BufWriter::new)
                .and_then(|file| pcap::Writer::new(file, MAX_CAPTURE_BYTES))
                .map_err(io_error(path.display().to_string()))?,
        ),
        None => None,
    };
    let clock = WallClock::new();
    let tally = Arc::new(Tally::default());
    let registry = Registry::default();
    let (kernel, bpf) = session.kernel_sources();
    registry.register("kernel", Arc::new(kernel));
    registry.register("bpf", Arc::new(bpf));
    registry.register("ring", session.ring_fill());
    registry.register("userspace", tally.clone());
    let mut stdout = BufWriter::new(io::stdout().lock());
    eprintln!("capturing; Ctrl-C to stop");
    session
        .reader()
        .run(
            |item| {
                count(&tally.records);
                let record = match record::decode(item) {
                    Ok(record) => record,
                    Err(error) => {
                        count(&tally.malformed);
                        tracing::debug!(%error, "malformed record");
                        return;
                    }
                };
                if record.truncated() {
                    count(&tally.truncated);
                }
                if record.reverse() {
                    count(&tally.reverse);
                }
                let unix_ns = clock.unix_ns(record.header.timestamp_ns);
                if let Some(pcap) = &mut pcap {
                    if pcap
                        .write(unix_ns, record.packet, record.header.orig_len)
                        .is_err()
                    {
                        count(&tally.write_errors);
                    }
                }
                if !args.quiet && print_segment(&mut stdout, unix_ns, &record).is_err() {
                    count(&tally.write_errors);
                }
                if !args.quiet {
                    let _ = stdout.flush();
                }
                if record.packet.is_empty() {
                    count(&tally.undecodable);
                }
            },
            shutdown_signal(),
        )
        .await
        .map_err(io_error("the ring buffer".to_owned()))?;
    stdout.flush().map_err(io_error("stdout".to_owned()))?;
    if let Some(pcap) = &mut pcap {
        pcap.flush().map_err(io_error("the pcap file".to_owned()))?;
    }
    eprintln!("{}", status_line(&registry));
    Ok(())
}

/// One line per segment: time, interface, direction, flow, flags, seq and payload length; a
/// header-only segment of v1's side says `reverse` and adds its acknowledgement, window and
/// (on a SYN) window scale.
fn print_segment(out: &mut impl Write, unix_ns: u64, record: &Record<'_>) -> io::Result<()> {
    let secs = unix_ns / 1_000_000_000;
    let micros = (unix_ns % 1_000_000_000) / 1_000;
    let direction = if record.header.direction == DIRECTION_INGRESS {
        "in"
    } else {
        "out"
    };
    match packet::parse_record(record) {
        Ok(segment) if record.reverse() => writeln!(
            out,
            "{secs}.{micros:06} if{} {direction} reverse {} [{}] seq {} ack {} win {}{} header-only of {}{}",
            record.header.ifindex,
            segment.flow,
            segment.flags,
            segment.seq,
            segment.ack,
            segment.window,
            segment
                .window_scale
                .map(|scale| format!(" wscale {scale}"))
                .unwrap_or_default(),
            record.header.orig_len,
            if record.truncated() { " truncated" } else { "" },
        ),
        Ok(segment) => writeln!(
            out,
            "{secs}.{micros:06} if{} {direction} {} [{}] seq {} len {}{}",
            record.header.ifindex,
            segment.flow,
            segment.flags,
            segment.seq,
            segment.payload.len(),
            if record.truncated() { " truncated" } else { "" },
        ),
        Err(error) => writeln!(
            out,
            "{secs}.{micros:06} if{} {direction} undecodable {} byte packet: {error}",
            record.header.ifindex,
            record.packet.len(),
        ),
    }
}
