//! The HTTP/1.1 request that upgrades a connection to h2c (RFC 7540 section 3.2; RFC 9113
//! deprecates it, but `curl --http2` on an `http://` URL still sends it): `Upgrade: h2c` and
//! one `HTTP2-Settings`. Once v1 switched, that request is stream 1 of the HTTP/2 connection,
//! so it is turned into the fields an HTTP/2 client would have sent for it (RFC 9113 section
//! 8.3.1: pseudo-header fields from the request line and Host, connection-specific fields
//! removed, names lowercased).
//!
//! `HTTP2-Settings` carries the client's initial SETTINGS. They bound what v1 sends to the
//! client (its frame size, its HPACK table for v1's responses), never the client's own
//! frames or header blocks, so only their well-formedness matters here: a server refuses an
//! upgrade without them (section 3.2.1), and a client that was refused goes on in HTTP/1.1.

use bytes::Bytes;

use super::Field;
use crate::http::limits::MAX_HEADERS;

/// An upgrading request's head, as stream 1's fields, and the body that follows it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct UpgradeRequest {
    /// Bytes of the head, blank line included.
    pub len: usize,
    pub fields: Vec<Field>,
    /// Content-Length (0 without one).
    pub body: u64,
}

/// Why a head is not an h2c upgrade that can be followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NotUpgrade {
    /// Not a request head, or not one asking for (only) h2c with valid settings.
    NotH2c,
    /// An upgrade whose body is chunked, or whose target is not origin-form: allowed, but
    /// not followed (counted as a protocol stop).
    Unsupported,
}

/// Fields an HTTP/1.1 request carries for its connection only (RFC 9113 section 8.2.2).
const CONNECTION_SPECIFIC: [&[u8]; 7] = [
    b"connection",
    b"upgrade",
    b"http2-settings",
    b"keep-alive",
    b"proxy-connection",
    b"transfer-encoding",
    b"host",
];

/// Whether an `Upgrade` value asks for h2c and nothing else (another protocol beside it may
/// be the one v1 picks, and its bytes are not HTTP/2).
pub(crate) fn asks_only_h2c(value: &[u8]) -> bool {
    let mut tokens = value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|t| !t.is_empty());
    tokens
        .next()
        .is_some_and(|t| t.eq_ignore_ascii_case(b"h2c"))
        && tokens.all(|t| t.eq_ignore_ascii_case(b"h2c"))
}

/// Whether an `HTTP2-Settings` value is a SETTINGS payload in base64url (a whole number of
/// 6-byte settings), as a server that switches requires.
pub(crate) fn settings_well_formed(value: &[u8]) -> bool {
    let value = trim(value);
    let digits = value.iter().take_while(|&&b| b != b'=').count();
    let padding_ok = value[digits..].iter().all(|&b| b == b'=') && value.len() - digits <= 2;
    let alphabet = value[..digits]
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    alphabet && padding_ok && digits % 4 != 1 && (digits * 3 / 4) % 6 == 0
}

/// Parses the upgrading request at the start of `head` (a complete head, blank line
/// included).
pub(super) fn parse(head: &[u8]) -> Result<UpgradeRequest, NotUpgrade> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(len)) = req.parse(head) else {
        return Err(NotUpgrade::NotH2c);
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Err(NotUpgrade::NotH2c);
    };
    let mut upgrades = 0;
    let mut settings = 0;
    let mut hosts = Vec::new();
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut connection_named: Vec<&[u8]> = Vec::new();
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"upgrade") {
            upgrades += 1;
            if !asks_only_h2c(h.value) {
                return Err(NotUpgrade::NotH2c);
            }
        } else if name.eq_ignore_ascii_case(b"http2-settings") {
            settings += 1;
            if !settings_well_formed(h.value) {
                return Err(NotUpgrade::NotH2c);
            }
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts.push(trim(h.value));
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let n = crate::http::parse_length(trim(h.value)).ok_or(NotUpgrade::NotH2c)?;
            if length.is_some_and(|seen| seen != n) {
                return Err(NotUpgrade::NotH2c);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection_named.extend(h.value.split(|&b| b == b',').map(trim));
        }
    }
    if upgrades != 1 || settings != 1 || hosts.len() > 1 {
        return Err(NotUpgrade::NotH2c);
    }
    if chunked || !(target.starts_with('/') || (target == "*" && method == "OPTIONS")) {
        return Err(NotUpgrade::Unsupported);
    }
    let mut fields = vec![
        field(b":method", method.as_bytes()),
        field(b":scheme", b"http"),
    ];
    if let Some(host) = hosts.first().filter(|h| !h.is_empty()) {
        fields.push(field(b":authority", host));
    }
    fields.push(field(b":path", target.as_bytes()));
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        let name = name.as_bytes();
        let specific = CONNECTION_SPECIFIC.contains(&name)
            || connection_named
                .iter()
                .any(|c| c.eq_ignore_ascii_case(name))
            || (name == b"te" && !trim(h.value).eq_ignore_ascii_case(b"trailers"));
        if !specific {
            fields.push(field(name, trim(h.value)));
        }
    }
    Ok(UpgradeRequest {
        len,
        fields,
        body: length.unwrap_or(0),
    })
}

fn field(name: &[u8], value: &[u8]) -> Field {
    Field {
        name: Bytes::copy_from_slice(name),
        value: Bytes::copy_from_slice(value),
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = s.iter().position(|b| !is_ows(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !is_ows(b)).map_or(start, |e| e + 1);
    &s[start..end]
}

/// The end of the head at the start of `buf` (after its blank line), searching from
/// `*scanned` on and remembering how far it looked, so a head arriving byte by byte is
/// scanned once.
pub(super) fn head_end(buf: &[u8], scanned: &mut usize) -> Option<usize> {
    let from = scanned.saturating_sub(3);
    let found = buf[from..]
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|p| from + p + 2);
    let crlf = buf[from..]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| from + p + 4);
    *scanned = buf.len();
    match (found, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CURL: &str = "GET /a?b=1 HTTP/1.1\r\nHost: api:8080\r\nUser-Agent: curl/7.88.1\r\n\
        Accept: */*\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
        HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n";

    fn names_values(r: &UpgradeRequest) -> Vec<(String, String)> {
        r.fields
            .iter()
            .map(|f| {
                (
                    String::from_utf8_lossy(&f.name).into_owned(),
                    String::from_utf8_lossy(&f.value).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn curls_upgrade_becomes_pseudo_headers_without_connection_fields() {
        let r = parse(CURL.as_bytes()).unwrap();
        assert_eq!(r.len, CURL.len());
        assert_eq!(r.body, 0);
        let want: Vec<(String, String)> = [
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "api:8080"),
            (":path", "/a?b=1"),
            ("user-agent", "curl/7.88.1"),
            ("accept", "*/*"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        assert_eq!(names_values(&r), want);
    }

    #[test]
    fn a_body_length_and_fields_named_by_connection_and_te() {
        let head = "POST /p HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings, X-Hop\r\n\
            Upgrade: H2C\r\nHTTP2-Settings: \r\nX-Hop: 1\r\nTE: gzip\r\nContent-Length: 5\r\n\r\n";
        let r = parse(head.as_bytes()).unwrap();
        assert_eq!(r.body, 5);
        let names: Vec<String> = names_values(&r).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                ":method",
                ":scheme",
                ":authority",
                ":path",
                "content-length"
            ]
        );
        let te =
            "GET / HTTP/1.1\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\nTE: trailers\r\n\r\n";
        let r = parse(te.as_bytes()).unwrap();
        assert_eq!(
            names_values(&r).last().unwrap(),
            &("te".into(), "trailers".into())
        );
        assert!(!names_values(&r).iter().any(|(n, _)| n == ":authority"));
    }

    #[test]
    fn what_is_not_an_h2c_upgrade() {
        let refused = |head: &str| parse(head.as_bytes()).unwrap_err();
        for head in [
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\nHTTP2-Settings: AAMAAABk\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: h2c, websocket\r\nHTTP2-Settings: AAMAAABk\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\nHTTP2-Settings: AAMAAABk\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAA\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMA+ABk\r\n\r\n",
            "GET / HTTP/1.0\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\nContent-Length: x\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert_eq!(refused(head), NotUpgrade::NotH2c, "{head:?}");
        }
        for head in [
            "POST / HTTP/1.1\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n\r\n",
        ] {
            assert_eq!(refused(head), NotUpgrade::Unsupported, "{head:?}");
        }
    }

    #[test]
    fn the_head_end_is_found_once_whatever_the_pieces() {
        let bytes = CURL.as_bytes();
        for piece in [1, 2, 3, 7, 100] {
            let mut scanned = 0;
            let mut found = None;
            for end in (piece..bytes.len() + piece).step_by(piece) {
                let end = end.min(bytes.len());
                if let Some(at) = head_end(&bytes[..end], &mut scanned) {
                    found = Some(at);
                    break;
                }
            }
            assert_eq!(found, Some(bytes.len()), "piece {piece}");
        }
        assert_eq!(
            head_end(b"GET / HTTP/1.1\nHost: a\n\nrest", &mut 0),
            Some(24)
        );
    }
}
