//! `mirror capture`: the tcpdump of this tool. Prints every captured segment per flow and can
//! write a pcap file; the end-to-end tests use it to check what the kernel program emits.

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    path::PathBuf,
};

use mirror_common::{DIRECTION_INGRESS, MAX_CAPTURE_BYTES};

use crate::{
    capture::{
        clock::WallClock,
        packet, pcap,
        record::{self, Record},
        session::{CaptureOptions, OwnMark, Session, SessionError},
    },
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
    records: u64,
    malformed: u64,
    undecodable: u64,
    truncated: u64,
    reverse: u64,
    write_errors: u64,
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
    let mut tally = Tally::default();
    let mut stdout = BufWriter::new(io::stdout().lock());
    eprintln!("capturing; Ctrl-C to stop");
    session
        .reader()
        .run(
            |item| {
                tally.records += 1;
                let record = match record::decode(item) {
                    Ok(record) => record,
                    Err(error) => {
                        tally.malformed += 1;
                        tracing::debug!(%error, "malformed record");
                        return;
                    }
                };
                if record.truncated() {
                    tally.truncated += 1;
                }
                if record.reverse() {
                    tally.reverse += 1;
                }
                let unix_ns = clock.unix_ns(record.header.timestamp_ns);
                if let Some(pcap) = &mut pcap {
                    if pcap
                        .write(unix_ns, record.packet, record.header.orig_len)
                        .is_err()
                    {
                        tally.write_errors += 1;
                    }
                }
                if !args.quiet && print_segment(&mut stdout, unix_ns, &record).is_err() {
                    tally.write_errors += 1;
                }
                if !args.quiet {
                    let _ = stdout.flush();
                }
                if record.packet.is_empty() {
                    tally.undecodable += 1;
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
    let mut summary = String::from("kernel:");
    for (name, value) in session.kernel_counters() {
        summary.push_str(&format!(" {name}={value}"));
    }
    eprintln!("{summary}");
    if args.capture.bpf_stats {
        for stats in session.run_stats().iter().filter(|stats| stats.runs > 0) {
            eprintln!(
                "bpf: {} runs={} run_time_ns={} ns_per_run={}",
                stats.program,
                stats.runs,
                stats.run_time_ns,
                stats.ns_per_run().unwrap_or(0)
            );
        }
    }
    eprintln!(
        "userspace: records={} reverse_records={} malformed_records={} undecodable_packets={} truncated_records={} write_errors={}",
        tally.records,
        tally.reverse,
        tally.malformed,
        tally.undecodable,
        tally.truncated,
        tally.write_errors
    );
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
