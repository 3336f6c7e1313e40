//! `mirror-load --rate R --connections C --seconds S --host HOST [--close] URL`: the bench's
//! open-loop, fixed-rate load generator (HTTP/1.1 GET over C keep-alive connections, or with
//! `--close` a new connection per request, `Connection: close`, C at a time). It builds with
//! the workspace in seconds, where `cargo install oha` took about 12 minutes.
//!
//! Request `i` is due at `start + i / R`. Each connection (a task on two tokio worker threads,
//! like wrk's two threads) takes the next due request, waits for its time, sends it and reads
//! the answer. A request whose connection was still busy when it fell due has its latency
//! measured from the due time, not from the send, so a server that stalls shows in the
//! percentiles instead of quietly slowing the offered load (coordinated omission). Requests
//! still due when the time is up are not sent. tokio's timer fires on millisecond ticks, so
//! requests leave in batches of a millisecond's worth (as they did from oha, also on tokio).
//! A thread per connection with fine-grained sleeps was tried: it costs four times the system
//! CPU, and two of them could not offer 2 × 25k req/s on this machine where two of these can.
//!
//! Prints one line, `BENCH requests=N duration_us=N errors=N p50_us=N p99_us=N p999_us=N
//! late=N`, the fields of the bench's wrk script and the count of requests never sent.

mod connection;
mod schedule;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use schedule::{Schedule, Tally};

#[derive(clap::Parser)]
#[command(name = "mirror-load", about = "open-loop fixed-rate HTTP/1.1 load")]
struct Args {
    /// Requests per second offered, whatever the server does.
    #[arg(long)]
    rate: u64,
    /// Keep-alive connections the requests are spread over.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Seconds of load.
    #[arg(long)]
    seconds: u64,
    /// Host header of every request.
    #[arg(long)]
    host: String,
    /// Seconds a request may take before it counts as an error and its connection is
    /// replaced.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
    /// A new connection per request, asking the server to close it (`Connection: close`):
    /// `--connections` then bounds the connections open at once.
    #[arg(long)]
    close: bool,
    /// `http://ADDR:PORT/PATH` (an IP address: the bench has no DNS).
    url: String,
}

fn main() -> ExitCode {
    match run() {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("mirror-load: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<String> {
    let args = <Args as clap::Parser>::parse();
    if args.rate == 0 || args.connections == 0 || args.seconds == 0 {
        bail!("--rate, --connections and --seconds must be positive");
    }
    let (addr, path) = parse_url(&args.url)?;
    let connection = if args.close {
        "Connection: close\r\n"
    } else {
        ""
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\n{connection}\r\n",
        args.host
    )
    .into_bytes();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the runtime")?;
    let schedule = Arc::new(Schedule::new(args.rate, Duration::from_secs(args.seconds)));
    let request: Arc<[u8]> = request.into();
    let timeout = Duration::from_secs(args.timeout);
    let mut tally = runtime.block_on(async {
        let workers: Vec<_> = (0..args.connections)
            .map(|_| {
                tokio::spawn(connection::drive(
                    addr,
                    Arc::clone(&request),
                    Arc::clone(&schedule),
                    timeout,
                    args.close,
                ))
            })
            .collect();
        let mut tally = Tally::default();
        for worker in workers {
            tally.merge(worker.await.context("a connection task panicked")?);
        }
        anyhow::Ok(tally)
    })?;
    tally.late = schedule.unsent();
    if tally.latencies_us.is_empty() {
        bail!("no request was answered ({} errors)", tally.errors);
    }
    Ok(tally.report(schedule.start()))
}

/// Splits `http://ADDR:PORT/PATH` into the socket address and the path.
fn parse_url(url: &str) -> Result<(SocketAddr, &str)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: only http:// URLs"))?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
    let addr = authority
        .parse()
        .with_context(|| format!("{url}: the authority must be IP:PORT"))?;
    Ok((addr, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_address_and_path() {
        let (addr, path) = parse_url("http://198.19.0.10:8000/headers").unwrap();
        assert_eq!(addr, "198.19.0.10:8000".parse().unwrap());
        assert_eq!(path, "/headers");
        assert_eq!(parse_url("http://[::1]:80").unwrap().1, "/");
        assert!(parse_url("https://127.0.0.1:1/").is_err());
        assert!(parse_url("http://httpbin:8000/").is_err());
    }
}
