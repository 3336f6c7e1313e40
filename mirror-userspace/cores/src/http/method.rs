//! Recognising where a request line begins, without parsing it: used to join a flow
//! mid-stream and to find the next request after a gap.

/// The methods of RFC 9110 plus PATCH (RFC 5789). A request line is only looked for where one
/// of these is followed by a space; other tokens are valid methods, but too easily confused
/// with body bytes to resynchronise on.
const METHODS: [&[u8]; 9] = [
    b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"PATCH", b"OPTIONS", b"CONNECT", b"TRACE",
];

/// Whether bytes begin a request line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineStart {
    /// They begin with a known method and a space.
    Yes,
    /// They cannot.
    No,
    /// Too short to tell: they are a proper prefix of `METHOD SP`.
    NeedMore,
}

/// Cheap check: does `bytes` start with `METHOD SP` for a known method?
pub fn line_start(bytes: &[u8]) -> LineStart {
    let mut need_more = false;
    for m in METHODS {
        match bytes.get(m.len()) {
            Some(&b' ') if bytes.starts_with(m) => return LineStart::Yes,
            Some(_) => {}
            None => need_more |= m.starts_with(bytes),
        }
    }
    if need_more {
        LineStart::NeedMore
    } else {
        LineStart::No
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        for (input, want) in [
            (&b"GET / HTTP/1.1\r\n"[..], LineStart::Yes),
            (b"OPTIONS * HTTP/1.1", LineStart::Yes),
            (b"PATCH ", LineStart::Yes),
            (b"GET", LineStart::NeedMore),
            (b"DEL", LineStart::NeedMore),
            (b"", LineStart::NeedMore),
            (b"get / HTTP/1.1", LineStart::No),
            (b"GETS / HTTP/1.1", LineStart::No),
            (b"GET\t/", LineStart::No),
            (b"Host: a", LineStart::No),
            (b"\r\nGET ", LineStart::No),
            (b"BREW / HTCPCP/1.0", LineStart::No),
        ] {
            assert_eq!(
                line_start(input),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
