//! The state machine of one client connection: the preface, then frames buffered whole (up
//! to the frame bound), header blocks gathered across CONTINUATION frames and decoded with
//! the connection's one HPACK decoder, and the streams that are open.

use std::collections::HashMap;

use bytes::Bytes;
use loona_hpack::Decoder;

use super::frame::{self, FrameHeader, HEADER_LEN, PREFACE};
use super::upgrade::{self, NotUpgrade};
use super::{Field, H2Config, H2Counters, H2Event, H2Stop, StreamAbort};
use crate::http::{line_start, LineStart};

/// Bytes per field on top of its name and value in a header list's size (RFC 9113 6.5.2).
const FIELD_OVERHEAD: usize = 32;

#[derive(Debug)]
enum State {
    /// This many bytes of the preface matched so far. `upgraded`: an HTTP/1.1 request asked
    /// for h2c before it, so bytes that are not the preface mean v1 did not switch; without
    /// one, they may be that request (held in `buf`).
    Preface {
        matched: usize,
        upgraded: bool,
    },
    /// An HTTP/1.1 head that may ask for `Upgrade: h2c`, gathered in `buf`; `scanned` bytes
    /// of it were searched for its end.
    UpgradeHead {
        scanned: usize,
    },
    /// The body of the upgrading request (stream 1): this many bytes still to come.
    UpgradeBody {
        left: u64,
    },
    Frames,
    Stopped,
}

/// A header block being gathered (HEADERS, then CONTINUATION until END_HEADERS).
#[derive(Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    bytes: Vec<u8>,
}

/// A stream whose head was handed out and which is not complete yet.
#[derive(Debug)]
struct Open {
    body: u64,
}

/// The client's direction of one HTTP/2 connection.
pub struct ClientStream {
    config: H2Config,
    state: State,
    decoder: Decoder<'static>,
    /// Bytes of the frame in progress (and, briefly, of the frames after it).
    buf: Vec<u8>,
    block: Option<Block>,
    open: HashMap<u32, Open>,
    /// Highest stream id the client opened.
    last_stream: u32,
    counters: H2Counters,
}

impl std::fmt::Debug for ClientStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientStream")
            .field("state", &self.state)
            .field("buffered", &self.buf.len())
            .field("open", &self.open.len())
            .field("counters", &self.counters)
            .finish()
    }
}

impl ClientStream {
    pub fn new(config: H2Config) -> ClientStream {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(config.max_table_bytes);
        ClientStream {
            config,
            state: State::Preface {
                matched: 0,
                upgraded: false,
            },
            decoder,
            buf: Vec::new(),
            block: None,
            open: HashMap::new(),
            last_stream: 0,
            counters: H2Counters::default(),
        }
    }

    pub fn counters(&self) -> &H2Counters {
        &self.counters
    }

    /// Whether the connection is no longer followed.
    pub fn is_stopped(&self) -> bool {
        matches!(self.state, State::Stopped)
    }

    /// Bytes held: the frame in progress and the header block being gathered.
    pub fn memory(&self) -> usize {
        self.buf.capacity() + self.block.as_ref().map_or(0, |b| b.bytes.capacity())
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.open.len()
    }

    /// The next bytes of the client's stream, in order.
    pub fn data(&mut self, mut bytes: &[u8], out: &mut impl FnMut(H2Event)) {
        loop {
            match self.state {
                State::Preface { matched, upgraded } => {
                    let take = bytes.len().min(PREFACE.len() - matched);
                    if bytes[..take] != PREFACE[matched..matched + take] {
                        if upgraded {
                            // The client went on in HTTP/1.1: v1 did not switch.
                            self.stop(H2Stop::NotSwitched, out);
                            return;
                        }
                        // Perhaps an HTTP/1.1 request asking to upgrade: what matched of
                        // the preface is its first bytes.
                        self.buf.extend_from_slice(&PREFACE[..matched]);
                        self.state = State::UpgradeHead { scanned: 0 };
                        continue;
                    }
                    bytes = &bytes[take..];
                    self.state = if matched + take == PREFACE.len() {
                        State::Frames
                    } else {
                        State::Preface {
                            matched: matched + take,
                            upgraded,
                        }
                    };
                    if matches!(self.state, State::Preface { .. }) {
                        return;
                    }
                }
                State::UpgradeHead { scanned } => {
                    self.buf.extend_from_slice(bytes);
                    if !self.upgrade_head(scanned, out) {
                        return;
                    }
                    // What followed the head is in `buf`: go on with it.
                    let rest = std::mem::take(&mut self.buf);
                    self.data(&rest, out);
                    return;
                }
                State::UpgradeBody { left } => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                    let left = left - take as u64;
                    self.upgrade_body(&bytes[..take], left == 0, out);
                    bytes = &bytes[take..];
                    if left > 0 {
                        self.state = State::UpgradeBody { left };
                        return;
                    }
                    self.state = State::Preface {
                        matched: 0,
                        upgraded: true,
                    };
                }
                State::Frames => break,
                State::Stopped => return,
            }
            if bytes.is_empty() {
                return;
            }
        }
        if bytes.is_empty() {
            return;
        }
        self.buf.extend_from_slice(bytes);
        let mut at = 0;
        while let Some(header) = self.buf.get(at..at + HEADER_LEN) {
            let mut raw = [0u8; HEADER_LEN];
            raw.copy_from_slice(header);
            let header = FrameHeader::parse(&raw);
            if header.len as usize > self.config.max_frame_bytes {
                self.stop(H2Stop::FrameTooLarge, out);
                return;
            }
            let end = at + HEADER_LEN + header.len as usize;
            if self.buf.len() < end {
                break;
            }
            let payload = std::mem::take(&mut self.buf);
            let stopped = self.frame(header, &payload[at + HEADER_LEN..end], out);
            self.buf = payload;
            if let Err(reason) = stopped {
                self.stop(reason, out);
                return;
            }
            at = end;
        }
        self.buf.drain(..at);
        if self.buf.is_empty() {
            // A large frame's buffer is not kept for the small ones after it.
            self.buf = Vec::new();
        } else if self.buf.capacity() > 2 * (HEADER_LEN + self.config.max_frame_bytes) {
            // What is left is less than a frame: a large delivery's room is given back.
            self.buf.shrink_to_fit();
        }
    }

    /// Gathers a head that may ask for h2c. Returns whether it was one: it is then stream 1,
    /// handed out, and `buf` holds what followed it.
    fn upgrade_head(&mut self, scanned: usize, out: &mut impl FnMut(H2Event)) -> bool {
        if line_start(&self.buf) == LineStart::No {
            // Not a request line: joined mid-stream, or not HTTP at all.
            self.stop(H2Stop::NotPreface, out);
            return false;
        }
        let mut scanned = scanned;
        let Some(end) = upgrade::head_end(&self.buf, &mut scanned) else {
            if self.buf.len() > self.config.max_header_block {
                self.stop(H2Stop::NotPreface, out);
            } else {
                self.state = State::UpgradeHead { scanned };
            }
            return false;
        };
        if end > self.config.max_header_block {
            self.stop(H2Stop::NotPreface, out);
            return false;
        }
        let request = match upgrade::parse(&self.buf[..end]) {
            Ok(request) => request,
            Err(NotUpgrade::NotH2c) => {
                self.stop(H2Stop::NotPreface, out);
                return false;
            }
            Err(NotUpgrade::Unsupported) => {
                self.stop(H2Stop::Protocol, out);
                return false;
            }
        };
        self.buf.drain(..request.len);
        self.counters.upgrades += 1;
        let size: usize = request
            .fields
            .iter()
            .map(|f| f.name.len() + f.value.len() + FIELD_OVERHEAD)
            .sum();
        // Stream 1 is the upgrading request (RFC 7540 section 3.2): ids after it go on from 3.
        self.last_stream = 1;
        let end_stream = request.body == 0;
        self.state = if end_stream {
            State::Preface {
                matched: 0,
                upgraded: true,
            }
        } else {
            State::UpgradeBody { left: request.body }
        };
        if size > self.config.max_header_list {
            self.counters.streams_over_headers += 1;
            return true;
        }
        self.counters.streams += 1;
        if end_stream {
            self.counters.streams_complete += 1;
        } else {
            self.open.insert(1, Open { body: 0 });
        }
        out(H2Event::Head {
            stream: 1,
            fields: request.fields,
            end_stream,
        });
        true
    }

    /// Body bytes of the upgrading request, as stream 1's DATA would have carried them.
    fn upgrade_body(&mut self, data: &[u8], end_stream: bool, out: &mut impl FnMut(H2Event)) {
        let header = FrameHeader {
            len: data.len() as u32,
            kind: frame::DATA,
            flags: if end_stream { frame::END_STREAM } else { 0 },
            stream: 1,
        };
        self.stream_data(header, data, out);
    }

    /// The capture lost `_lost` bytes: nothing after them can be decoded.
    pub fn gap(&mut self, _lost: u32, out: &mut impl FnMut(H2Event)) {
        if !self.is_stopped() {
            self.stop(H2Stop::Gap, out);
        }
    }

    fn stop(&mut self, reason: H2Stop, out: &mut impl FnMut(H2Event)) {
        self.state = State::Stopped;
        self.buf = Vec::new();
        self.block = None;
        self.open.clear();
        out(H2Event::Stopped(reason));
    }

    fn frame(
        &mut self,
        header: FrameHeader,
        payload: &[u8],
        out: &mut impl FnMut(H2Event),
    ) -> Result<(), H2Stop> {
        if let Some(block) = &mut self.block {
            if header.kind != frame::CONTINUATION || header.stream != block.stream {
                return Err(H2Stop::Protocol);
            }
            self.gather(payload)?;
            return self.end_of_block(header, out);
        }
        match header.kind {
            frame::HEADERS => {
                let content = frame::content(&header, payload).ok_or(H2Stop::Protocol)?;
                if header.stream == 0 {
                    return Err(H2Stop::Protocol);
                }
                self.block = Some(Block {
                    stream: header.stream,
                    end_stream: header.has(frame::END_STREAM),
                    bytes: Vec::new(),
                });
                self.gather(&payload[content])?;
                self.end_of_block(header, out)
            }
            frame::DATA => {
                let content = frame::content(&header, payload).ok_or(H2Stop::Protocol)?;
                self.stream_data(header, &payload[content], out);
                Ok(())
            }
            frame::RST_STREAM => {
                if self.open.remove(&header.stream).is_some() {
                    self.counters.streams_reset += 1;
                    out(H2Event::Abort {
                        stream: header.stream,
                        reason: StreamAbort::Reset,
                    });
                }
                Ok(())
            }
            frame::GOAWAY => {
                self.counters.goaways += 1;
                Ok(())
            }
            frame::CONTINUATION | frame::PUSH_PROMISE => Err(H2Stop::Protocol),
            // SETTINGS, PING, WINDOW_UPDATE, PRIORITY and unknown types change no request.
            _ => Ok(()),
        }
    }

    fn gather(&mut self, fragment: &[u8]) -> Result<(), H2Stop> {
        let Some(block) = &mut self.block else {
            return Ok(());
        };
        if block.bytes.len() + fragment.len() > self.config.max_header_block {
            return Err(H2Stop::HeaderBlockTooLarge);
        }
        block.bytes.extend_from_slice(fragment);
        Ok(())
    }

    /// At END_HEADERS, decodes the block (always: the dynamic table must follow v1's) and
    /// hands out the head or trailers it is.
    fn end_of_block(
        &mut self,
        header: FrameHeader,
        out: &mut impl FnMut(H2Event),
    ) -> Result<(), H2Stop> {
        if !header.has(frame::END_HEADERS) {
            return Ok(());
        }
        let Some(block) = self.block.take() else {
            return Ok(());
        };
        let mut fields = Vec::new();
        let mut size = 0usize;
        let cap = self.config.max_header_list;
        self.decoder
            .decode_with_cb(&block.bytes, |name, value| {
                size = size.saturating_add(name.len() + value.len() + FIELD_OVERHEAD);
                if size <= cap {
                    fields.push(Field {
                        name: Bytes::copy_from_slice(&name),
                        value: Bytes::copy_from_slice(&value),
                    });
                }
            })
            .map_err(|_| H2Stop::Hpack)?;
        let stream = block.stream;
        let over = size > cap;
        if self.open.contains_key(&stream) {
            self.open.remove(&stream);
            let reason = if !block.end_stream {
                Some(StreamAbort::Malformed)
            } else if over {
                Some(StreamAbort::TrailersTooLarge)
            } else {
                None
            };
            match reason {
                Some(reason) => {
                    self.counters.streams_cut += 1;
                    out(H2Event::Abort { stream, reason });
                }
                None => {
                    self.counters.streams_complete += 1;
                    out(H2Event::Trailers { stream, fields });
                }
            }
            return Ok(());
        }
        // A new stream: client ids are odd and only go up (RFC 9113 section 5.1.1).
        if stream % 2 == 0 || stream <= self.last_stream {
            return Err(H2Stop::Protocol);
        }
        self.last_stream = stream;
        if over {
            self.counters.streams_over_headers += 1;
            return Ok(());
        }
        if self.open.len() >= self.config.max_streams {
            self.counters.streams_over_limit += 1;
            return Ok(());
        }
        self.counters.streams += 1;
        if block.end_stream {
            self.counters.streams_complete += 1;
        } else {
            self.open.insert(stream, Open { body: 0 });
        }
        out(H2Event::Head {
            stream,
            fields,
            end_stream: block.end_stream,
        });
        Ok(())
    }

    fn stream_data(&mut self, header: FrameHeader, data: &[u8], out: &mut impl FnMut(H2Event)) {
        let stream = header.stream;
        let end_stream = header.has(frame::END_STREAM);
        let Some(open) = self.open.get_mut(&stream) else {
            self.counters.data_bytes_ignored += data.len() as u64;
            return;
        };
        open.body += data.len() as u64;
        if open.body > self.config.max_body_bytes {
            self.open.remove(&stream);
            self.counters.streams_cut += 1;
            self.counters.data_bytes_ignored += data.len() as u64;
            out(H2Event::Abort {
                stream,
                reason: StreamAbort::BodyTooLarge,
            });
            return;
        }
        if end_stream {
            self.open.remove(&stream);
            self.counters.streams_complete += 1;
        }
        if data.is_empty() && !end_stream {
            return;
        }
        out(H2Event::Data {
            stream,
            data: Bytes::copy_from_slice(data),
            end_stream,
        });
    }
}
