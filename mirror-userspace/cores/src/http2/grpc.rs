//! What the relay reads of a gRPC call on an HTTP/2 stream (gRPC over HTTP/2, "PROTOCOL-HTTP2"
//! in grpc/grpc's doc): whether the stream is one (`content-type: application/grpc...`), the
//! method it calls (`:path` = `/package.Service/Method`), for counting per method, and the
//! deadline its client set (`grpc-timeout`), which bounds how long v2's answer is waited for.

use std::time::Duration;

use super::Field;

/// Longest method name counted under its own label; a longer one is counted as `other`.
pub const MAX_METHOD_LEN: usize = 128;

/// Whether the stream's request is a gRPC call: its content type is `application/grpc`,
/// alone or with a `+format` or parameters.
pub fn is_grpc(fields: &[Field]) -> bool {
    fields
        .iter()
        .find(|f| &f.name[..] == b"content-type")
        .and_then(|f| f.value.strip_prefix(b"application/grpc"))
        .is_some_and(|rest| matches!(rest.first(), None | Some(b'+' | b';')))
}

/// The method a gRPC call names, if its `:path` is `/Service/Method` made of letters, digits,
/// `.`, `_` and `-` (what a label may hold without escaping), both parts non-empty, within
/// [`MAX_METHOD_LEN`] bytes.
pub fn grpc_method(fields: &[Field]) -> Option<&str> {
    let path = &fields.iter().find(|f| &f.name[..] == b":path")?.value;
    if path.len() > MAX_METHOD_LEN {
        return None;
    }
    let rest = path.strip_prefix(b"/")?;
    let slash = rest.iter().position(|&b| b == b'/')?;
    let (service, method) = (&rest[..slash], &rest[slash + 1..]);
    let part = |p: &[u8]| {
        !p.is_empty()
            && p.iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    if !(part(service) && part(method)) {
        return None;
    }
    std::str::from_utf8(path).ok()
}

/// A `grpc-timeout` value that is not one: ignored (the response timeout alone applies),
/// and counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadTimeout;

/// The deadline the call's `grpc-timeout` field sets, if it has one.
pub fn grpc_timeout(fields: &[Field]) -> Result<Option<Duration>, BadTimeout> {
    match fields.iter().find(|f| &f.name[..] == b"grpc-timeout") {
        None => Ok(None),
        Some(f) => parse_timeout(&f.value).map(Some),
    }
}

/// `TimeoutValue TimeoutUnit`: a positive integer of at most 8 ASCII digits, then one of
/// `H` (hours), `M` (minutes), `S` (seconds), `m` (milliseconds), `u` (microseconds) or `n`
/// (nanoseconds).
pub fn parse_timeout(value: &[u8]) -> Result<Duration, BadTimeout> {
    let (&unit, digits) = value.split_last().ok_or(BadTimeout)?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(BadTimeout);
    }
    // At most 8 digits: no overflow, even in hours.
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    if n == 0 {
        return Err(BadTimeout);
    }
    Ok(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return Err(BadTimeout),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::http2::fields_of as fields;

    #[test]
    fn every_unit_parses_and_bad_values_are_refused() {
        for (value, want) in [
            ("1H", Duration::from_secs(3600)),
            ("2M", Duration::from_secs(120)),
            ("3S", Duration::from_secs(3)),
            ("250m", Duration::from_millis(250)),
            ("7u", Duration::from_micros(7)),
            ("99999999n", Duration::from_nanos(99_999_999)),
            ("99999999H", Duration::from_secs(99_999_999 * 3600)),
            ("00000010S", Duration::from_secs(10)),
        ] {
            assert_eq!(parse_timeout(value.as_bytes()), Ok(want), "{value}");
        }
        for bad in [
            "",
            "S",
            "10",
            "10s",
            "10 S",
            "-1S",
            "+1S",
            "1.5S",
            "123456789S",
            "0m",
            "1SS",
            "1h",
            "１S",
        ] {
            assert_eq!(parse_timeout(bad.as_bytes()), Err(BadTimeout), "{bad:?}");
        }
        assert_eq!(grpc_timeout(&fields(&[(":path", "/a/b")])), Ok(None));
        assert_eq!(
            grpc_timeout(&fields(&[("grpc-timeout", "5S")])),
            Ok(Some(Duration::from_secs(5)))
        );
        assert_eq!(
            grpc_timeout(&fields(&[("grpc-timeout", "soon")])),
            Err(BadTimeout)
        );
    }

    #[test]
    fn calls_and_methods_are_recognised() {
        let call = |ct: &str, path: &str| fields(&[(":path", path), ("content-type", ct)]);
        assert!(is_grpc(&call("application/grpc", "/a/b")));
        assert!(is_grpc(&call("application/grpc+proto", "/a/b")));
        assert!(is_grpc(&call("application/grpc;charset=utf-8", "/a/b")));
        assert!(!is_grpc(&call("application/grpcx", "/a/b")));
        assert!(!is_grpc(&call("application/json", "/a/b")));
        assert!(!is_grpc(&fields(&[(":path", "/a/b")])));
        let method = |path: &str| grpc_method(&call("application/grpc", path)).map(str::to_owned);
        assert_eq!(
            method("/helloworld.Greeter/SayHello").as_deref(),
            Some("/helloworld.Greeter/SayHello")
        );
        let long = format!("/{}/M", "s".repeat(MAX_METHOD_LEN));
        for bad in [
            "/",
            "//M",
            "/S/",
            "S/M",
            "/S/M/x",
            "/S/M?x=1",
            "/S\"/M",
            "/S/M}",
            &long[..],
        ] {
            assert_eq!(method(bad), None, "{bad:?}");
        }
    }
}
