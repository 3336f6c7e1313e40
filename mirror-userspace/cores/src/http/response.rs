//! Frames v2's responses so a shadow connection stays usable and each status is counted.
//! Sans-IO: bytes in, completed responses out (status, and whether v2 closes after it); the
//! bodies are skipped, never stored.

use std::collections::VecDeque;

use super::chunked::Chunked;
use super::limits::{DEFAULT_MAX_HEAD_BYTES, MAX_HEADERS};

/// Response heads larger than this end the shadow connection; it also bounds trailers.
const MAX_HEAD: usize = DEFAULT_MAX_HEAD_BYTES;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResponseError {
    #[error("malformed response head")]
    Malformed,
    #[error("response head over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("malformed chunked body")]
    BadChunk,
    #[error("a response arrived for no outstanding request")]
    Unsolicited,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Waiting for (more of) a response head.
    Head,
    Remaining(u64),
    /// A chunked body, followed by the same rules as a request's.
    Chunked(Chunked),
    /// Delimited by the connection closing: everything else is body.
    UntilClose,
}

/// A complete final response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// v2 closes the connection after this response (`Connection: close`, HTTP/1.0 without
    /// keep-alive, a body delimited by the close, or a protocol switch): by RFC 9112 section
    /// 9.6 it processes no request sent after the one this answers.
    pub close: bool,
}

/// Tracks responses on one shadow connection.
#[derive(Debug)]
pub struct ResponseFramer {
    /// For each request sent and not yet answered: was it a HEAD (whose response has no body)?
    outstanding: VecDeque<bool>,
    head: Vec<u8>,
    body: Body,
    /// The response whose body is being skipped.
    answer: Answer,
}

impl Default for ResponseFramer {
    fn default() -> Self {
        ResponseFramer {
            outstanding: VecDeque::new(),
            head: Vec::new(),
            body: Body::Head,
            answer: Answer {
                status: 0,
                close: false,
            },
        }
    }
}

impl ResponseFramer {
    /// Records that a request was sent; responses are matched to requests in order.
    pub fn request_sent(&mut self, is_head: bool) {
        self.outstanding.push_back(is_head);
    }

    /// Requests sent and not yet answered.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Whether bytes have arrived that do not make a whole response yet.
    pub fn mid_response(&self) -> bool {
        self.body != Body::Head || !self.head.is_empty()
    }

    /// Consumes response bytes, calling `on_answer` for each complete final response.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        mut on_answer: impl FnMut(Answer),
    ) -> Result<(), ResponseError> {
        while !input.is_empty() {
            input = match &mut self.body {
                Body::Head => self.feed_head(input, &mut on_answer)?,
                Body::Remaining(left) => {
                    let take = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(input.len());
                    *left -= take as u64;
                    if *left == 0 {
                        self.finish(&mut on_answer);
                    }
                    &input[take..]
                }
                Body::Chunked(chunked) => {
                    let used = chunked
                        .advance(input)
                        .map_err(|_| ResponseError::BadChunk)?;
                    if chunked.is_done() {
                        self.finish(&mut on_answer);
                    }
                    &input[used..]
                }
                Body::UntilClose => return Ok(()),
            };
        }
        Ok(())
    }

    /// The connection closed: a close-delimited body is complete.
    pub fn closed(&mut self, mut on_answer: impl FnMut(Answer)) {
        if self.body == Body::UntilClose {
            self.finish(&mut on_answer);
        }
    }

    fn feed_head<'a>(
        &mut self,
        input: &'a [u8],
        on_answer: &mut impl FnMut(Answer),
    ) -> Result<&'a [u8], ResponseError> {
        let already = self.head.len();
        let take = input.len().min(MAX_HEAD + 1 - already.min(MAX_HEAD));
        self.head.extend_from_slice(&input[..take]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let head_len = match response.parse(&self.head) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if self.head.len() > MAX_HEAD => {
                return Err(ResponseError::HeadTooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(&input[take..]),
            Err(_) => return Err(ResponseError::Malformed),
        };
        let status = response.code.ok_or(ResponseError::Malformed)?;
        let mut chunked = false;
        let mut length = None;
        let (mut says_close, mut says_keep_alive) = (false, false);
        for header in response.headers.iter() {
            if header.name.eq_ignore_ascii_case("connection") {
                for option in header.value.split(|&byte| byte == b',') {
                    let option = option.trim_ascii();
                    says_close |= option.eq_ignore_ascii_case(b"close");
                    says_keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
                }
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = header.value.to_ascii_lowercase().ends_with(b"chunked");
            } else if header.name.eq_ignore_ascii_case("content-length") {
                let value =
                    std::str::from_utf8(header.value).map_err(|_| ResponseError::Malformed)?;
                length = Some(
                    value
                        .trim()
                        .parse::<u64>()
                        .map_err(|_| ResponseError::Malformed)?,
                );
            }
        }
        // HTTP/1.1 keeps the connection unless it says close; HTTP/1.0 closes unless it says
        // keep-alive.
        let close = says_close || (response.version == Some(0) && !says_keep_alive);
        // Bytes of `input` past the head belong to the body or the next response.
        let rest = &input[head_len - already..];
        self.head.clear();
        if (100..200).contains(&status) && status != 101 {
            // Interim (100 Continue): the final response follows.
            return Ok(rest);
        }
        let is_head = *self.outstanding.front().ok_or(ResponseError::Unsolicited)?;
        self.body = if is_head || status == 204 || status == 304 || status == 101 {
            Body::Remaining(0)
        } else if chunked {
            Body::Chunked(Chunked::new(MAX_HEAD))
        } else if let Some(length) = length {
            Body::Remaining(length)
        } else {
            Body::UntilClose
        };
        self.answer = Answer {
            status,
            close: close || status == 101 || self.body == Body::UntilClose,
        };
        if self.body == Body::Remaining(0) {
            self.finish(on_answer);
        }
        Ok(rest)
    }

    fn finish(&mut self, on_answer: &mut impl FnMut(Answer)) {
        self.outstanding.pop_front();
        on_answer(self.answer);
        self.body = Body::Head;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statuses(framer: &mut ResponseFramer, input: &[u8], split: usize) -> Vec<u16> {
        let mut seen = Vec::new();
        let (a, b) = input.split_at(split.min(input.len()));
        framer.feed(a, |answer| seen.push(answer.status)).unwrap();
        framer.feed(b, |answer| seen.push(answer.status)).unwrap();
        seen
    }

    const STREAM: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n\
        HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello\
        HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n\
        HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n\
        HTTP/1.1 204 No Content\r\n\r\n";

    #[test]
    fn frames_every_split_of_a_pipelined_stream() {
        for split in 0..=STREAM.len() {
            let mut framer = ResponseFramer::default();
            for is_head in [false, false, true, false] {
                framer.request_sent(is_head);
            }
            assert_eq!(
                statuses(&mut framer, STREAM, split),
                vec![200, 404, 200, 204],
                "split {split}"
            );
            assert_eq!(framer.outstanding(), 0);
        }
    }

    #[test]
    fn mid_response_until_the_response_is_whole() {
        let mut framer = ResponseFramer::default();
        framer.request_sent(false);
        framer.request_sent(false);
        assert!(!framer.mid_response());
        let mut seen = Vec::new();
        framer
            .feed(b"HTTP/1.1 200 OK\r\nContent-", |answer| {
                seen.push(answer.status)
            })
            .unwrap();
        assert!(framer.mid_response());
        framer
            .feed(b"Length: 2\r\n\r\nok", |answer| seen.push(answer.status))
            .unwrap();
        assert!(!framer.mid_response());
        framer
            .feed(b"HTTP/1.1 204 No", |answer| seen.push(answer.status))
            .unwrap();
        assert!(framer.mid_response());
        assert_eq!(seen, [200]);
    }

    /// Whether v2 closes after each of the responses to `requests` GETs.
    fn closes(stream: &[u8], requests: usize) -> Vec<bool> {
        let mut framer = ResponseFramer::default();
        for _ in 0..requests {
            framer.request_sent(false);
        }
        let mut seen = Vec::new();
        framer
            .feed(stream, |answer| seen.push(answer.close))
            .unwrap();
        framer.closed(|answer| seen.push(answer.close));
        seen
    }

    #[test]
    fn says_which_response_v2_closes_after() {
        let stream = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n\
            HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n\
            HTTP/1.1 200 OK\r\nconnection: Upgrade, CLOSE\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(closes(stream, 3), [false, false, true]);
        // HTTP/1.0 closes unless it says keep-alive.
        let stream = b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n\
            HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(closes(stream, 2), [false, true]);
        // A close-delimited body, and a protocol switch.
        assert_eq!(closes(b"HTTP/1.1 200 OK\r\n\r\nuntil close", 1), [true]);
        assert_eq!(
            closes(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
                1
            ),
            [true]
        );
        // An interim response's headers say nothing about the connection.
        let stream = b"HTTP/1.1 100 Continue\r\nConnection: close\r\n\r\n\
            HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(closes(stream, 1), [false]);
    }

    #[test]
    fn close_delimited_body_ends_at_close() {
        let mut framer = ResponseFramer::default();
        framer.request_sent(false);
        let mut seen = Vec::new();
        framer
            .feed(b"HTTP/1.0 200 OK\r\n\r\nbody until close", |answer| {
                seen.push(answer.status)
            })
            .unwrap();
        assert!(seen.is_empty());
        framer.closed(|answer| seen.push(answer.status));
        assert_eq!(seen, vec![200]);
    }

    #[test]
    fn rejects_garbage_and_unsolicited_responses() {
        let mut framer = ResponseFramer::default();
        framer.request_sent(false);
        assert_eq!(
            framer.feed(b"SSH-2.0-x\r\n\r\n", |_| {}),
            Err(ResponseError::Malformed)
        );
        let mut framer = ResponseFramer::default();
        assert_eq!(
            framer.feed(b"HTTP/1.1 200 OK\r\n\r\n", |_| {}),
            Err(ResponseError::Unsolicited)
        );
        let mut framer = ResponseFramer::default();
        framer.request_sent(false);
        let mut huge = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
        huge.resize(MAX_HEAD + 10, b'a');
        assert_eq!(framer.feed(&huge, |_| {}), Err(ResponseError::HeadTooLarge));
    }
}
