//! HTTP/1.1 request framing (RFC 9112) over one reassembled client stream: finds each
//! request's head and body, rewrites Host, and hands the bytes on as they arrive.
//!
//! Shape (after mini-redis): a cheap check that a whole head is there, then a parse, then
//! advance. "Not enough bytes yet" is not an error, it is just a return; only input that can
//! never frame stops the connection.

use super::chunked::Chunked;
use super::head::{self, BodyKind, Head, HeadParse};
use super::limits::DEFAULT_MAX_HEAD_BYTES;
use super::method::{line_start, LineStart};
use crate::outcome::{AbortReason, Counters, StopReason};
use crate::rewrite::HostRewrite;
use crate::sampling::Sampler;
use bytes::{Buf, Bytes, BytesMut};

/// Input is taken in pieces of at most this size, so the buffer never holds more than one
/// piece beyond an incomplete head, however large a delivery is.
const FEED_PIECE: usize = 64 * 1024;

/// Smallest allocation made for incoming bytes: small segments share one block.
const MIN_RESERVE: usize = 16 * 1024;

/// Most body bytes an `Upgrade: h2c` request may carry to be held until the client's next
/// bytes tell whether v1 switched; a larger one stops the connection as `stopped_upgrade`.
/// (Clients upgrade with a GET, or a small body: curl sends its upgrade on the first request.)
pub const MAX_UPGRADE_BODY: u64 = 64 * 1024;

/// What the framer tells the relay, in stream order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameEvent {
    /// A complete request line and header section, Host rewritten, blank line included.
    Head(Bytes),
    /// The next body bytes, in wire form (chunk framing and trailers included).
    Body(Bytes),
    /// The request is complete.
    End,
    /// The request whose head was handed out will not be completed.
    Abort(AbortReason),
    /// Mirroring of this connection stopped; nothing more will come from this framer.
    Stopped(StopReason),
    /// The connection is HTTP/2 from here on: v1 switched to h2c after an `Upgrade: h2c`
    /// request (the client sent the connection preface after it). The first such event
    /// carries that request as the client sent it, then the preface and what follows; later
    /// ones, the next bytes. For the h2c core (`crate::http2`), which takes the request as
    /// stream 1.
    H2c(Bytes),
}

/// Framing settings shared by every flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FramerConfig {
    /// Largest request head (request line, fields and blank line) accepted; also bounds a
    /// chunked body's trailer section.
    pub max_header_bytes: usize,
    pub rewrite: HostRewrite,
}

impl Default for FramerConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: DEFAULT_MAX_HEAD_BYTES,
            rewrite: HostRewrite::default(),
        }
    }
}

/// The shared state a framer needs for each call: settings, the sampling coin, the counters.
pub struct Env<'a> {
    pub config: &'a FramerConfig,
    pub sampler: &'a mut Sampler,
    pub counters: &'a mut Counters,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Looking for a request line: after a gap, or on a flow joined mid-stream.
    /// `line_start`: whether `buf[0]` begins a line.
    Resync {
        line_start: bool,
    },
    /// Collecting a head. `candidate`: it was found by resync, so a head that does not parse
    /// means "not a request line after all" and scanning goes on, instead of stopping.
    Head {
        candidate: bool,
    },
    Body {
        body: Body,
        mirror: bool,
    },
    /// An `Upgrade: h2c` request ([`Framer::held`]) of `total` bytes (head and body) is at
    /// the front of the buffer: the bytes after it tell whether v1 switched.
    Upgrade {
        total: usize,
    },
    /// v1 switched to HTTP/2: every byte goes on as [`FrameEvent::H2c`] (`mirror`), or is
    /// dropped (the connection was sampled out).
    Upgraded {
        mirror: bool,
    },
    Stopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Body {
    Length(u64),
    Chunked(Chunked),
}

/// Frames the requests of one client stream.
#[derive(Debug)]
pub struct Framer {
    state: State,
    /// Bytes received and not yet handed on or dropped.
    buf: BytesMut,
    /// Where the search for the end of the head resumes.
    scanned: usize,
    /// Bytes of the current request handed on (or, sampled out, skipped) so far.
    msg_bytes: u64,
    /// Where rewritten heads are assembled.
    scratch: BytesMut,
    /// The head of the `Upgrade: h2c` request being held.
    held: Option<Head>,
}

impl Framer {
    /// A framer for a stream that begins at a request (its SYN was seen).
    pub fn new() -> Self {
        Self::with_state(State::Head { candidate: false })
    }

    /// A framer for a stream joined mid-stream: it starts by looking for a request line.
    pub fn resyncing() -> Self {
        Self::with_state(State::Resync { line_start: true })
    }

    fn with_state(state: State) -> Self {
        Self {
            state,
            buf: BytesMut::new(),
            scanned: 0,
            msg_bytes: 0,
            scratch: BytesMut::new(),
            held: None,
        }
    }

    /// Whether mirroring of this connection stopped.
    pub fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// Heap bytes this framer pins, for the global memory cap.
    pub fn memory(&self) -> usize {
        self.buf.capacity() + self.scratch.capacity()
    }

    /// Takes the next bytes of the stream.
    pub fn data(&mut self, data: &[u8], env: &mut Env<'_>, out: &mut impl FnMut(FrameEvent)) {
        for piece in data.chunks(FEED_PIECE) {
            if self.is_stopped() {
                return;
            }
            if let State::Upgraded { mirror } = self.state {
                if mirror {
                    env.counters.stream_bytes =
                        env.counters.stream_bytes.wrapping_add(piece.len() as u64);
                    out(FrameEvent::H2c(Bytes::copy_from_slice(piece)));
                }
                continue;
            }
            if self.buf.capacity() - self.buf.len() < piece.len() {
                self.buf.reserve(piece.len().max(MIN_RESERVE));
            }
            self.buf.extend_from_slice(piece);
            self.process(env, out);
        }
    }

    /// The stream lost `lost` bytes here: abandon the request in progress and look for the
    /// next request line.
    pub fn gap(&mut self, lost: u32, env: &mut Env<'_>, out: &mut impl FnMut(FrameEvent)) {
        env.counters.gaps += 1;
        env.counters.gap_bytes += u64::from(lost);
        if self.is_stopped() {
            return;
        }
        if let State::Upgraded { .. } = self.state {
            // HTTP/2 cannot be resynchronised: its header compression state is lost.
            self.stop(StopReason::StreamGap, env, out);
            return;
        }
        self.drop_current(AbortReason::Gap, env, out);
        self.state = State::Resync { line_start: true };
    }

    /// The flow ended (or was removed) for `reason`: abort a request in progress, drop the rest.
    pub fn close(
        &mut self,
        reason: AbortReason,
        env: &mut Env<'_>,
        out: &mut impl FnMut(FrameEvent),
    ) {
        if let State::Upgrade { total } = self.state {
            if self.buf.len() >= total {
                // The request is whole and the client never sent the preface: v1 answered
                // it in HTTP/1.1.
                self.buf.truncate(total);
                self.not_switched(env, out);
                self.process(env, out);
            }
        }
        if !self.is_stopped() {
            self.drop_current(reason, env, out);
        }
        self.state = State::Stopped;
        self.release();
    }

    /// Aborts what is in progress (a mirrored body, or a partial head) and empties the buffer.
    fn drop_current(
        &mut self,
        reason: AbortReason,
        env: &mut Env<'_>,
        out: &mut impl FnMut(FrameEvent),
    ) {
        match self.state {
            State::Body { mirror: true, .. } => {
                out(FrameEvent::Abort(reason));
                reason.count(env.counters, self.msg_bytes);
            }
            State::Body { mirror: false, .. } => {
                env.counters.bytes_sampled_out += self.msg_bytes;
            }
            State::Head { candidate: false } if !self.buf.is_empty() => {
                env.counters.heads_discarded += 1;
            }
            State::Upgrade { .. } => {
                self.held = None;
                env.counters.heads_discarded += 1;
            }
            State::Upgraded { .. } => {}
            State::Head { .. } | State::Resync { .. } => {
                env.counters.resync_skipped_bytes += self.buf.len() as u64;
            }
            State::Stopped => {}
        }
        self.buf.clear();
        self.scanned = 0;
        self.msg_bytes = 0;
    }

    fn stop(&mut self, reason: StopReason, env: &mut Env<'_>, out: &mut impl FnMut(FrameEvent)) {
        if let State::Body { mirror: true, .. } = self.state {
            out(FrameEvent::Abort(AbortReason::Invalid));
            AbortReason::Invalid.count(env.counters, self.msg_bytes);
        }
        reason.count(env.counters);
        out(FrameEvent::Stopped(reason));
        self.state = State::Stopped;
        self.release();
    }

    fn release(&mut self) {
        self.buf = BytesMut::new();
        self.scratch = BytesMut::new();
        self.held = None;
    }

    /// Runs the state machine over the buffer until it needs more bytes.
    fn process(&mut self, env: &mut Env<'_>, out: &mut impl FnMut(FrameEvent)) {
        loop {
            let more = match self.state {
                State::Resync { line_start } => self.resync(line_start, env),
                State::Head { candidate } => self.head(candidate, env, out),
                State::Body { body, mirror } => self.body(body, mirror, env, out),
                State::Upgrade { total } => self.await_switch(total, env, out),
                State::Upgraded { .. } | State::Stopped => false,
            };
            if !more {
                return;
            }
        }
    }

    /// Drops bytes up to the next plausible request line. Returns whether one was found.
    fn resync(&mut self, line_start: bool, env: &mut Env<'_>) -> bool {
        match find_line_start(&self.buf, line_start) {
            Some((p, LineStart::Yes)) => {
                self.skip(p, env);
                self.state = State::Head { candidate: true };
                true
            }
            Some((p, _)) => {
                // A possible method cut short: keep it, it begins a line.
                self.skip(p, env);
                self.state = State::Resync { line_start: true };
                false
            }
            None => {
                let line_start = self.buf.last().map_or(line_start, |&b| b == b'\n');
                self.skip(self.buf.len(), env);
                self.state = State::Resync { line_start };
                false
            }
        }
    }

    /// Drops `n` bytes from the front. The head-end search position moves with them: a
    /// blank line not found after the old start is not found after a later start either, so
    /// the next candidate resumes the search instead of rescanning (resync stays linear).
    fn skip(&mut self, n: usize, env: &mut Env<'_>) {
        env.counters.resync_skipped_bytes += n as u64;
        self.buf.advance(n);
        self.scanned = self.scanned.saturating_sub(n);
    }

    /// Tries to take a whole head off the buffer. Returns whether the state moved on.
    fn head(
        &mut self,
        candidate: bool,
        env: &mut Env<'_>,
        out: &mut impl FnMut(FrameEvent),
    ) -> bool {
        // RFC 9112 2.2: empty lines before a request line are ignored, not forwarded.
        let blank = self
            .buf
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        if blank > 0 {
            self.buf.advance(blank);
            self.scanned = self.scanned.saturating_sub(blank);
        }
        let max = env.config.max_header_bytes;
        let Some(end) = self.find_head_end() else {
            if self.buf.len() > max {
                return self.reject(StopReason::HeaderTooLarge, candidate, env, out);
            }
            return false;
        };
        if end > max {
            return self.reject(StopReason::HeaderTooLarge, candidate, env, out);
        }
        match head::parse(&self.buf[..end]) {
            HeadParse::Complete(h) if h.upgrade_h2c => self.hold(h, env, out),
            HeadParse::Complete(h) => {
                self.start_request(h, env, out);
                true
            }
            HeadParse::Reject(reason) => self.reject(reason, candidate, env, out),
            // A blank line was found but not where the head ends (cannot happen with a head
            // httparse accepts); wait for more and let the size cap decide.
            HeadParse::Partial => false,
        }
    }

    /// Cheap check for a complete head: the first empty line (`\n\n` or `\n\r\n`). Returns
    /// the head length; remembers how far it looked (up to the blank line's `\n` when found,
    /// so a later resync candidate before it finds the same end without a rescan).
    fn find_head_end(&mut self) -> Option<usize> {
        let buf = &self.buf[..];
        let mut i = self.scanned;
        while let Some(nl) = buf
            .get(i..)
            .and_then(|b| b.iter().position(|&c| c == b'\n'))
        {
            let at = i + nl;
            match (buf.get(at + 1), buf.get(at + 2)) {
                (Some(b'\n'), _) => {
                    self.scanned = at;
                    return Some(at + 2);
                }
                (Some(b'\r'), Some(b'\n')) => {
                    self.scanned = at;
                    return Some(at + 3);
                }
                (Some(b'\r'), None) | (None, _) => {
                    self.scanned = at;
                    return None;
                }
                _ => i = at + 1,
            }
        }
        self.scanned = buf.len();
        None
    }

    /// A head was refused: a resync candidate just was not a request line; anything else
    /// stops the connection.
    fn reject(
        &mut self,
        reason: StopReason,
        candidate: bool,
        env: &mut Env<'_>,
        out: &mut impl FnMut(FrameEvent),
    ) -> bool {
        if candidate {
            self.skip(1, env);
            self.state = State::Resync { line_start: false };
            true
        } else {
            self.stop(reason, env, out);
            false
        }
    }

    /// Holds an `Upgrade: h2c` request until the bytes after it tell whether v1 switched
    /// (v1's answer, `101 Switching Protocols` or not, is not captured: only its headers).
    fn hold(&mut self, h: Head, env: &mut Env<'_>, out: &mut impl FnMut(FrameEvent)) -> bool {
        self.scanned = 0;
        let body = match h.body {
            BodyKind::Length(n) if n <= MAX_UPGRADE_BODY => n,
            BodyKind::None => 0,
            BodyKind::Length(_) | BodyKind::Chunked => {
                self.stop(StopReason::Upgrade, env, out);
                return false;
            }
        };
        self.state = State::Upgrade {
            total: h.len + body as usize,
        };
        self.held = Some(h);
        true
    }

    /// With the held request whole, looks at what follows: the connection preface means v1
    /// switched; anything else, that the client goes on in HTTP/1.1 and the request is an
    /// ordinary one. Returns whether the state moved on.
    fn await_switch(
        &mut self,
        total: usize,
        env: &mut Env<'_>,
        out: &mut impl FnMut(FrameEvent),
    ) -> bool {
        let preface = crate::http2::frame::PREFACE;
        let Some(after) = self.buf.get(total..) else {
            return false;
        };
        let seen = after.len().min(preface.len());
        if after[..seen] != preface[..seen] {
            self.not_switched(env, out);
            return true;
        }
        if seen < preface.len() {
            return false;
        }
        self.held = None;
        env.counters.upgrades_h2c += 1;
        let mirror = env.sampler.sample();
        if mirror {
            let bytes = self.buf.split().freeze();
            env.counters.stream_bytes = env.counters.stream_bytes.wrapping_add(bytes.len() as u64);
            out(FrameEvent::H2c(bytes));
        } else {
            env.counters.requests_sampled_out += 1;
        }
        self.state = State::Upgraded { mirror };
        self.release();
        false
    }

    /// v1 did not switch: the held request is framed as any other.
    fn not_switched(&mut self, env: &mut Env<'_>, out: &mut impl FnMut(FrameEvent)) {
        env.counters.upgrades_h2c_refused += 1;
        match self.held.take() {
            Some(h) => self.start_request(h, env, out),
            None => self.state = State::Head { candidate: false },
        }
    }

    fn start_request(&mut self, h: Head, env: &mut Env<'_>, out: &mut impl FnMut(FrameEvent)) {
        self.scanned = 0;
        let mirror = env.sampler.sample();
        self.msg_bytes = h.len as u64;
        if mirror {
            let head = self.take_head(&h, env);
            self.msg_bytes = head.len() as u64;
            out(FrameEvent::Head(head));
        } else {
            env.counters.requests_sampled_out += 1;
            self.buf.advance(h.len);
        }
        self.state = match h.body {
            BodyKind::None => {
                self.end_request(mirror, env, out);
                State::Head { candidate: false }
            }
            BodyKind::Length(n) => State::Body {
                body: Body::Length(n),
                mirror,
            },
            BodyKind::Chunked => State::Body {
                body: Body::Chunked(Chunked::new(env.config.max_header_bytes)),
                mirror,
            },
        };
    }

    /// Splits the head off the buffer, Host rewritten; untouched heads are not copied.
    fn take_head(&mut self, h: &Head, env: &mut Env<'_>) -> Bytes {
        let rewrite = &env.config.rewrite;
        match &h.host {
            Some(host) if rewrite.rewrites() => {
                let head = &self.buf[..h.len];
                self.scratch.reserve(h.len + 64);
                self.scratch.extend_from_slice(&head[..host.start]);
                rewrite.apply(&head[host.clone()], &mut self.scratch);
                self.scratch.extend_from_slice(&head[host.end..]);
                self.buf.advance(h.len);
                self.scratch.split().freeze()
            }
            Some(_) => self.buf.split_to(h.len).freeze(),
            None => {
                env.counters.requests_host_missing += 1;
                self.buf.split_to(h.len).freeze()
            }
        }
    }

    fn body(
        &mut self,
        body: Body,
        mirror: bool,
        env: &mut Env<'_>,
        out: &mut impl FnMut(FrameEvent),
    ) -> bool {
        let (take, body) = match body {
            Body::Length(left) => {
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(self.buf.len());
                let left = left - take as u64;
                (take, (left > 0).then_some(Body::Length(left)))
            }
            Body::Chunked(mut c) => match c.advance(&self.buf) {
                Ok(take) => (take, (!c.is_done()).then_some(Body::Chunked(c))),
                Err(_) => {
                    self.stop(StopReason::BadChunk, env, out);
                    return false;
                }
            },
        };
        if take > 0 {
            self.msg_bytes += take as u64;
            if mirror {
                out(FrameEvent::Body(self.buf.split_to(take).freeze()));
            } else {
                self.buf.advance(take);
            }
        }
        match body {
            Some(body) => {
                self.state = State::Body { body, mirror };
                false
            }
            None => {
                self.end_request(mirror, env, out);
                self.state = State::Head { candidate: false };
                true
            }
        }
    }

    fn end_request(&mut self, mirror: bool, env: &mut Env<'_>, out: &mut impl FnMut(FrameEvent)) {
        if mirror {
            out(FrameEvent::End);
            env.counters.requests_mirrored += 1;
            env.counters.bytes_mirrored += self.msg_bytes;
        } else {
            env.counters.bytes_sampled_out += self.msg_bytes;
        }
        self.msg_bytes = 0;
    }
}

impl Default for Framer {
    fn default() -> Self {
        Self::new()
    }
}

/// The first line start in `buf` (offset 0 counts if `first_is_line_start`) that begins, or
/// may begin once more bytes come, a request line.
fn find_line_start(buf: &[u8], first_is_line_start: bool) -> Option<(usize, LineStart)> {
    let after_newline = buf
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'\n')
        .map(|(i, _)| i + 1);
    let starts = first_is_line_start
        .then_some(0)
        .into_iter()
        .chain(after_newline);
    starts
        .map(|p| (p, line_start(&buf[p..])))
        .find(|&(_, s)| s != LineStart::No)
}

#[cfg(test)]
mod tests;
