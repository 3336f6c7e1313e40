//! `mirror-sink --listen ADDR [--listen ADDR...] --log FILE`
//!
//! A stand-in shadow service: answers every HTTP/1.1 request with `200 ok` and appends one JSON
//! line per request to FILE (see `mirror_tests::SinkRecord`). One thread per connection keeps it
//! simple and lets a slow or vanished client stall nobody but itself. Bodies are hashed as they
//! stream through a fixed buffer, so size does not matter. Keep-alive and pipelining work because
//! requests on a connection are read and answered strictly in order.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read as _, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mirror_tests::{hex, SinkRecord};
use sha2::{Digest as _, Sha256};

/// Largest request line plus headers accepted: generous for any test, yet bounded.
const MAX_HEAD: u64 = 64 * 1024;

/// Read buffer per connection; also the most of a body held in memory at once.
const READ_BUF: usize = 64 * 1024;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mirror-sink: {err}");
            ExitCode::FAILURE
        }
    }
}

/// A stand-in shadow service that answers 200 and logs one JSON line per request.
#[derive(clap::Parser)]
#[command(name = "mirror-sink")]
struct Args {
    /// Address to listen on (repeatable).
    #[arg(long, required = true, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// File to append the request records to.
    #[arg(long, value_name = "FILE")]
    log: PathBuf,
    /// Bytes of each response body (`ok\n` when 3, else that many `x`s).
    #[arg(long, default_value_t = 3, value_name = "N")]
    response_bytes: usize,
}

fn run() -> Result<(), String> {
    let Args {
        listen,
        log,
        response_bytes,
    } = <Args as clap::Parser>::parse();
    let body: Arc<[u8]> = if response_bytes == 3 {
        Arc::from(&b"ok\n"[..])
    } else {
        vec![b'x'; response_bytes].into()
    };
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| format!("open {}: {e}", log.display()))?;
    let log = Arc::new(Mutex::new(log));
    let next_conn = Arc::new(AtomicU64::new(0));
    let mut acceptors = Vec::new();
    for addr in listen {
        let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
        let (log, next_conn, body) = (log.clone(), next_conn.clone(), body.clone());
        acceptors.push(std::thread::spawn(move || {
            accept_loop(listener, log, next_conn, body)
        }));
    }
    for acceptor in acceptors {
        let _ = acceptor.join();
    }
    Ok(())
}

fn accept_loop(
    listener: TcpListener,
    log: Arc<Mutex<File>>,
    next_conn: Arc<AtomicU64>,
    body: Arc<[u8]>,
) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let conn = next_conn.fetch_add(1, Ordering::Relaxed);
                let (log, body) = (log.clone(), body.clone());
                std::thread::spawn(move || {
                    if let Err(err) = serve(stream, conn, &log, &body) {
                        eprintln!("mirror-sink: connection {conn}: {err}");
                    }
                });
            }
            Err(err) => {
                // Out of descriptors or the like: wait for connections to close rather than spin.
                eprintln!("mirror-sink: accept: {err}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

/// What the request head says about the request.
struct Head {
    /// The head as received, request line through blank line.
    raw: String,
    method: String,
    path: String,
    host: Option<String>,
    body: Body,
    keep_alive: bool,
    expect_continue: bool,
}

enum Body {
    Length(u64),
    Chunked,
}

/// Answers requests on one connection until the client closes it or asks to.
fn serve(stream: TcpStream, conn: u64, log: &Mutex<File>, body: &[u8]) -> io::Result<()> {
    let peer = stream.peer_addr()?;
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port()).to_string();
    let mut reader = BufReader::with_capacity(READ_BUF, stream.try_clone()?);
    let mut writer = BufWriter::new(stream);
    for index in 0.. {
        let head = match read_head(&mut reader) {
            Ok(Some(head)) => head,
            Ok(None) => return writer.flush(),
            Err(err) if err.kind() == io::ErrorKind::InvalidData => {
                writer.write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )?;
                writer.flush()?;
                return Err(err);
            }
            Err(err) => return Err(err),
        };
        if head.expect_continue {
            writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            writer.flush()?;
        }
        let mut hasher = Sha256::new();
        let body_len = match head.body {
            Body::Length(len) => {
                hash_exact(&mut reader, len, &mut hasher)?;
                len
            }
            Body::Chunked => hash_chunked(&mut reader, &mut hasher)?,
        };
        let record = SinkRecord {
            conn,
            index,
            peer: peer.clone(),
            method: head.method.clone(),
            path: head.path,
            host: head.host,
            head: head.raw,
            body_len,
            sha256: hex(&hasher.finalize()),
        };
        // Logged before answering, so a client that got its reply finds the record.
        append_record(log, &record)?;
        write!(
            writer,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
            body.len()
        )?;
        writer.write_all(if head.keep_alive {
            b"Connection: keep-alive\r\n\r\n"
        } else {
            b"Connection: close\r\n\r\n"
        })?;
        if head.method != "HEAD" {
            writer.write_all(body)?;
        }
        // Pipelined requests already buffered are answered in one write.
        if !head.keep_alive || reader.buffer().is_empty() {
            writer.flush()?;
        }
        if !head.keep_alive {
            return Ok(());
        }
    }
    Ok(())
}

fn append_record(log: &Mutex<File>, record: &SinkRecord) -> io::Result<()> {
    let mut line = serde_json::to_string(record).map_err(io::Error::other)?;
    line.push('\n');
    // One write of a whole line, under the lock: readers never see interleaved records.
    let mut file = log.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    file.write_all(line.as_bytes())
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads one CRLF- (or LF-) terminated line of the head, without the terminator; appends
/// it, terminator included, to `raw`.
fn read_line(
    reader: &mut BufReader<TcpStream>,
    budget: &mut u64,
    raw: &mut Vec<u8>,
) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let read = reader.by_ref().take(*budget).read_until(b'\n', &mut line)?;
    raw.extend_from_slice(&line);
    if read == 0 {
        return Ok(None);
    }
    *budget -= read as u64;
    if line.last() != Some(&b'\n') {
        return Err(if *budget == 0 {
            invalid("request head too large")
        } else {
            io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-head")
        });
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| invalid("non-UTF-8 request head"))
}

/// Reads a request head; `None` when the client closed the connection between requests.
fn read_head(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Head>> {
    let mut budget = MAX_HEAD;
    let mut raw = Vec::new();
    // Empty lines before a request are allowed (RFC 9112, section 2.2).
    let request_line = loop {
        match read_line(reader, &mut budget, &mut raw)? {
            None => return Ok(None),
            Some(line) if line.is_empty() => {
                raw.clear();
                continue;
            }
            Some(line) => break line,
        }
    };
    let mut parts = request_line.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid(format!("bad request line {request_line:?}")));
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(invalid(format!("unsupported version {version:?}"))),
    };
    let mut head = Head {
        raw: String::new(),
        method: method.to_owned(),
        path: path.to_owned(),
        host: None,
        body: Body::Length(0),
        keep_alive: !http10,
        expect_continue: false,
    };
    let mut chunked = false;
    loop {
        let line = read_line(reader, &mut budget, &mut raw)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed mid-head"))?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "host" => head.host = Some(value.to_owned()),
            "content-length" => {
                let len = value
                    .parse()
                    .map_err(|_| invalid(format!("bad Content-Length {value:?}")))?;
                head.body = Body::Length(len);
            }
            "transfer-encoding" => {
                // Only a final "chunked" frames a request body (RFC 9112, section 6.3).
                let last = value.rsplit(',').next().unwrap_or("").trim();
                if !last.eq_ignore_ascii_case("chunked") {
                    return Err(invalid(format!("unsupported Transfer-Encoding {value:?}")));
                }
                chunked = true;
            }
            "connection" => {
                for option in value.split(',').map(str::trim) {
                    if option.eq_ignore_ascii_case("close") {
                        head.keep_alive = false;
                    } else if option.eq_ignore_ascii_case("keep-alive") {
                        head.keep_alive = true;
                    }
                }
            }
            "expect" => head.expect_continue = value.eq_ignore_ascii_case("100-continue"),
            _ => {}
        }
    }
    // Transfer-Encoding overrides Content-Length.
    if chunked {
        head.body = Body::Chunked;
    }
    // Every line was valid UTF-8, so the whole is.
    head.raw = String::from_utf8(raw).map_err(|_| invalid("non-UTF-8 request head"))?;
    Ok(Some(head))
}

/// Feeds exactly `len` body bytes to `hasher` straight from the read buffer.
fn hash_exact(
    reader: &mut BufReader<TcpStream>,
    mut len: u64,
    hasher: &mut Sha256,
) -> io::Result<()> {
    while len > 0 {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed mid-body",
            ));
        }
        let take = buf.len().min(usize::try_from(len).unwrap_or(usize::MAX));
        hasher.update(&buf[..take]);
        reader.consume(take);
        len -= take as u64;
    }
    Ok(())
}

/// Feeds a chunked body's data to `hasher`, skipping extensions and trailers; returns its length.
fn hash_chunked(reader: &mut BufReader<TcpStream>, hasher: &mut Sha256) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let mut budget = MAX_HEAD;
        // Chunk lines are not recorded; this only satisfies `read_line` (bounded by budget).
        let mut raw = Vec::new();
        let line = read_line(reader, &mut budget, &mut raw)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed mid-body"))?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size, 16)
            .map_err(|_| invalid(format!("bad chunk size line {line:?}")))?;
        if size == 0 {
            // Trailer fields, then the empty line that ends the message.
            loop {
                let trailer = read_line(reader, &mut budget, &mut raw)?.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "closed in trailers")
                })?;
                if trailer.is_empty() {
                    return Ok(total);
                }
            }
        }
        hash_exact(reader, size, hasher)?;
        total += size;
        let end = read_line(reader, &mut budget, &mut raw)?;
        if end.as_deref() != Some("") {
            return Err(invalid("chunk data not followed by CRLF"));
        }
    }
}
