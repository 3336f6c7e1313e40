//! Parsing one complete request head (request line and fields) with `httparse`, and deciding
//! from it how the message is framed (RFC 9112 section 6) and where its Host value lies.

use super::limits::MAX_HEADERS;
use crate::outcome::StopReason;
use std::ops::Range;

/// How the body of a request is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// No body: neither Content-Length nor Transfer-Encoding (requests are never
    /// delimited by closing the connection), or `Content-Length: 0`.
    None,
    Length(u64),
    Chunked,
}

/// A head that can be mirrored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// Bytes of the head, blank line included.
    pub len: usize,
    pub body: BodyKind,
    /// The Host value without surrounding whitespace, as a range of the head's bytes;
    /// `None` if absent or empty.
    pub host: Option<Range<usize>>,
    /// It asks to upgrade the connection to h2c (`Upgrade: h2c` and one well-formed
    /// `HTTP2-Settings`): whether v1 switched shows in what the client sends next.
    pub upgrade_h2c: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeadParse {
    /// The head is not complete yet.
    Partial,
    Complete(Head),
    /// The connection must not be mirrored further.
    Reject(StopReason),
}

/// Bytes of the HTTP/2 preface's request line, `PRI * HTTP/2.0\r\n`.
const H2C_LINE: usize = 16;

/// Parses the head at the start of `buf`.
pub fn parse(buf: &[u8]) -> HeadParse {
    // The HTTP/2 connection preface's first line, as far as it has come.
    let preface = &crate::http2::frame::PREFACE[..H2C_LINE];
    if buf.len() >= 5 && preface.starts_with(&buf[..buf.len().min(H2C_LINE)]) {
        return if buf.len() >= H2C_LINE {
            HeadParse::Reject(StopReason::H2c)
        } else {
            HeadParse::Partial
        };
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return HeadParse::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return HeadParse::Reject(StopReason::TooManyHeaders)
        }
        Err(_) => return HeadParse::Reject(StopReason::InvalidHead),
    };
    if req.method == Some("CONNECT") {
        return HeadParse::Reject(StopReason::Connect);
    }
    match frame(buf, req.version, req.headers) {
        Ok((body, host, upgrade_h2c)) => HeadParse::Complete(Head {
            len,
            body,
            host,
            upgrade_h2c,
        }),
        Err(reason) => HeadParse::Reject(reason),
    }
}

/// What the fields say about framing and Host.
#[derive(Default)]
struct Fields {
    hosts: usize,
    host: Option<Range<usize>>,
    length: Option<u64>,
    /// Transfer codings seen, and whether the last one is `chunked`.
    codings: usize,
    chunked_last: bool,
    chunked_before_last: bool,
    /// `Upgrade` fields, and whether each asked for h2c alone.
    upgrades: usize,
    upgrades_h2c: usize,
    /// `HTTP2-Settings` fields, and whether each was well-formed.
    settings: usize,
    settings_well_formed: usize,
}

fn frame(
    buf: &[u8],
    version: Option<u8>,
    headers: &[httparse::Header<'_>],
) -> Result<(BodyKind, Option<Range<usize>>, bool), StopReason> {
    let mut f = Fields::default();
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            f.hosts += 1;
            f.host = span(buf, h.value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            for n in h.value.split(|&b| b == b',') {
                let n = parse_length(trim(n)).ok_or(StopReason::BadContentLength)?;
                if f.length.is_some_and(|seen| seen != n) {
                    return Err(StopReason::BadContentLength);
                }
                f.length = Some(n);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            for coding in h.value.split(|&b| b == b',').map(trim) {
                if coding.is_empty() {
                    continue;
                }
                f.chunked_before_last |= f.chunked_last;
                f.chunked_last = coding.eq_ignore_ascii_case(b"chunked");
                f.codings += 1;
            }
            if f.codings == 0 {
                return Err(StopReason::BadTransferEncoding);
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            f.upgrades += 1;
            f.upgrades_h2c += usize::from(crate::http2::asks_only_h2c(h.value));
        } else if name.eq_ignore_ascii_case(b"http2-settings") {
            f.settings += 1;
            f.settings_well_formed += usize::from(crate::http2::settings_well_formed(h.value));
        }
    }
    if f.hosts > 1 {
        return Err(StopReason::MultipleHost);
    }
    let body = if f.codings > 0 {
        if f.length.is_some() {
            // RFC 9112 6.3: a request smuggling vector; we refuse rather than guess.
            return Err(StopReason::LengthAndEncoding);
        }
        // RFC 9112 6.1: HTTP/1.0 with Transfer-Encoding has faulty framing; chunked must be
        // the final coding and applied only once.
        if version != Some(1) || !f.chunked_last || f.chunked_before_last {
            return Err(StopReason::BadTransferEncoding);
        }
        BodyKind::Chunked
    } else {
        match f.length {
            None | Some(0) => BodyKind::None,
            Some(n) => BodyKind::Length(n),
        }
    };
    let upgrade_h2c = f.upgrades == 1
        && f.upgrades_h2c == 1
        && f.settings == 1
        && f.settings_well_formed == 1
        && version == Some(1)
        && body != BodyKind::Chunked;
    if f.upgrades > 0 && !upgrade_h2c {
        return Err(StopReason::Upgrade);
    }
    Ok((body, f.host, upgrade_h2c))
}

/// `1*DIGIT` as a `u64`; `None` if empty, not digits, or too large.
pub(crate) fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn trim(s: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = s.iter().position(|b| !is_ows(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !is_ows(b)).map_or(start, |e| e + 1);
    &s[start..end]
}

/// Where `value` (a slice `httparse` took from `buf`) sits in `buf`, trimmed; `None` if empty.
fn span(buf: &[u8], value: &[u8]) -> Option<Range<usize>> {
    let value = trim(value);
    if value.is_empty() {
        return None;
    }
    let start = (value.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)?;
    let end = start.checked_add(value.len())?;
    (end <= buf.len()).then_some(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(head: &str) -> Head {
        match parse(head.as_bytes()) {
            HeadParse::Complete(h) => h,
            other => panic!("{head:?}: {other:?}"),
        }
    }

    fn rejected(head: &str) -> StopReason {
        match parse(head.as_bytes()) {
            HeadParse::Reject(r) => r,
            other => panic!("{head:?}: {other:?}"),
        }
    }

    #[test]
    fn framing_table() {
        for (head, want) in [
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", BodyKind::None),
            ("GET / HTTP/1.0\r\n\r\n", BodyKind::None),
            (
                "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                BodyKind::None,
            ),
            (
                "POST / HTTP/1.1\r\ncontent-length: 12\r\n\r\n",
                BodyKind::Length(12),
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
                BodyKind::Length(5),
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                BodyKind::Length(5),
            ),
            (
                "POST / HTTP/1.0\r\nContent-Length: 3\r\n\r\n",
                BodyKind::Length(3),
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                BodyKind::Chunked,
            ),
            (
                "POST / HTTP/1.1\r\nTRANSFER-ENCODING: gzip, Chunked\r\n\r\n",
                BodyKind::Chunked,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
                BodyKind::Chunked,
            ),
            (
                "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
                BodyKind::Length(4),
            ),
            ("GET / HTTP/1.1\nHost: a\n\n", BodyKind::None),
        ] {
            assert_eq!(complete(head).body, want, "{head:?}");
            assert_eq!(complete(head).len, head.len(), "{head:?}");
        }
    }

    #[test]
    fn rejection_table() {
        for (head, want) in [
            (
                "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
                StopReason::Connect,
            ),
            (
                "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                StopReason::Upgrade,
            ),
            // h2c only with its settings, once, and a body it can be held with.
            (
                "GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
                StopReason::Upgrade,
            ),
            (
                "GET / HTTP/1.1\r\nUpgrade: h2c, websocket\r\nHTTP2-Settings: AAMAAABk\r\n\r\n",
                StopReason::Upgrade,
            ),
            (
                "GET / HTTP/1.1\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMA\r\n\r\n",
                StopReason::Upgrade,
            ),
            (
                "POST / HTTP/1.1\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\nTransfer-Encoding: chunked\r\n\r\n",
                StopReason::Upgrade,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                StopReason::MultipleHost,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                StopReason::LengthAndEncoding,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
                StopReason::BadContentLength,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                StopReason::BadContentLength,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                StopReason::BadContentLength,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n",
                StopReason::BadContentLength,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length:\r\n\r\n",
                StopReason::BadContentLength,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
                StopReason::BadContentLength,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                StopReason::BadTransferEncoding,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                StopReason::BadTransferEncoding,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                StopReason::BadTransferEncoding,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: \r\n\r\n",
                StopReason::BadTransferEncoding,
            ),
            (
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                StopReason::BadTransferEncoding,
            ),
            ("GET  / HTTP/1.1\r\n\r\n", StopReason::InvalidHead),
            ("GET / HTTP/2.0\r\n\r\n", StopReason::InvalidHead),
            ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", StopReason::H2c),
            ("PRI * HTTP/2.0\r\n", StopReason::H2c),
            (
                "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
                StopReason::InvalidHead,
            ),
            (
                "GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
                StopReason::InvalidHead,
            ),
        ] {
            assert_eq!(rejected(head), want, "{head:?}");
        }
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(rejected(&many), StopReason::TooManyHeaders);
    }

    #[test]
    fn an_h2c_upgrade_is_a_head_that_says_so() {
        let up = "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n\
            Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n";
        assert!(complete(up).upgrade_h2c);
        let post =
            "POST / HTTP/1.1\r\nUpgrade: H2C\r\nHTTP2-Settings: \r\nContent-Length: 3\r\n\r\n";
        assert_eq!(complete(post).body, BodyKind::Length(3));
        assert!(complete(post).upgrade_h2c);
        assert!(!complete("GET / HTTP/1.1\r\nHost: a\r\n\r\n").upgrade_h2c);
    }

    #[test]
    fn partial_heads_wait() {
        for head in [
            "",
            "GET",
            "GET / HTTP/1.1\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n",
        ] {
            assert_eq!(parse(head.as_bytes()), HeadParse::Partial, "{head:?}");
        }
    }

    #[test]
    fn host_span_is_the_trimmed_value() {
        for (head, want) in [
            ("GET / HTTP/1.1\r\nHost: api:80\r\n\r\n", Some("api:80")),
            ("GET / HTTP/1.1\r\nHOST:  api:80 \r\n\r\n", Some("api:80")),
            ("GET / HTTP/1.1\r\nhost:\t[::1]\t\r\n\r\n", Some("[::1]")),
            ("GET / HTTP/1.1\r\nHost:\r\n\r\n", None),
            ("GET / HTTP/1.1\r\nHost:   \r\n\r\n", None),
            ("GET / HTTP/1.0\r\n\r\n", None),
            ("GET / HTTP/1.1\r\nX-Host: no\r\n\r\n", None),
        ] {
            let h = complete(head);
            let got = h.host.map(|r| &head[r]);
            assert_eq!(got, want, "{head:?}");
        }
    }
}
