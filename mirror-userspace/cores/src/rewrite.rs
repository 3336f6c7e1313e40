//! The Host rewrite that sends mirrored requests to the shadow: Envoy's rule, `-shadow`
//! inserted before the port, leaving every other byte of the request alone.

use bytes::BytesMut;
use thiserror::Error;

/// What happens to the `Host` header of a mirrored request.
///
/// A request without `Host` (or with an empty one) is forwarded unchanged in every mode and
/// counted (`requests_host_missing`): HTTP/1.0 allows it, the relay routes by flow rather than
/// by Host, and inventing a header would make v2 see a request v1 never got. A request with
/// more than one `Host` is not mirrored at all (see `mirror-userspace/docs/protocol-cores.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostRewrite {
    /// Insert this text after the host name, before any port: `api:80` → `api-shadow:80`.
    Suffix(String),
    /// Replace the whole value with this one.
    Fixed(String),
    /// Forward the Host header as it is.
    Keep,
}

impl Default for HostRewrite {
    fn default() -> Self {
        Self::Suffix("-shadow".to_owned())
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RewriteError {
    #[error("host rewrite text {0:?} is empty or holds characters not allowed in a Host value")]
    InvalidText(String),
}

impl HostRewrite {
    /// Rejects text that would break the header it is written into (CR, LF, controls,
    /// whitespace) so a rewritten head is always as well-formed as the original.
    pub fn validate(&self) -> Result<(), RewriteError> {
        let text = match self {
            Self::Suffix(t) | Self::Fixed(t) => t,
            Self::Keep => return Ok(()),
        };
        let ok = !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic());
        if ok {
            Ok(())
        } else {
            Err(RewriteError::InvalidText(text.clone()))
        }
    }

    /// Whether this mode changes Host values at all.
    pub fn rewrites(&self) -> bool {
        !matches!(self, Self::Keep)
    }

    /// Appends the rewritten form of a (non-empty, whitespace-trimmed) Host `value` to `out`.
    pub fn apply(&self, value: &[u8], out: &mut BytesMut) {
        match self {
            Self::Keep => out.extend_from_slice(value),
            Self::Fixed(fixed) => out.extend_from_slice(fixed.as_bytes()),
            Self::Suffix(suffix) => {
                let (host, port) = value.split_at(port_start(value).unwrap_or(value.len()));
                out.extend_from_slice(host);
                out.extend_from_slice(suffix.as_bytes());
                out.extend_from_slice(port);
            }
        }
    }
}

/// Where `:port` starts, as Envoy's `HeaderUtility::getPortStart` decides it: at the last
/// colon, unless a `]` follows it (the colons belong to a bracketed IPv6 literal).
fn port_start(value: &[u8]) -> Option<usize> {
    let colon = value.iter().rposition(|&b| b == b':')?;
    match value.iter().rposition(|&b| b == b']') {
        Some(bracket) if bracket > colon => None,
        _ => Some(colon),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(mode: &HostRewrite, value: &str) -> String {
        let mut out = BytesMut::new();
        mode.apply(value.as_bytes(), &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn suffix_goes_before_the_port_like_envoy() {
        let m = HostRewrite::default();
        for (input, want) in [
            ("httpbin:8000", "httpbin-shadow:8000"),
            ("api", "api-shadow"),
            ("api.example.com", "api.example.com-shadow"),
            ("10.0.0.1:80", "10.0.0.1-shadow:80"),
            ("[::1]:80", "[::1]-shadow:80"),
            ("[::1]", "[::1]-shadow"),
            ("[fe80::1:2]", "[fe80::1:2]-shadow"),
            ("[2001:db8::7]:8443", "[2001:db8::7]-shadow:8443"),
            // Envoy's rule, taken literally, for values that are not valid authorities.
            ("api:", "api-shadow:"),
            ("::1", ":-shadow:1"),
        ] {
            assert_eq!(apply(&m, input), want, "{input}");
        }
    }

    #[test]
    fn custom_suffix_fixed_and_keep() {
        let m = HostRewrite::Suffix(".mirror".into());
        assert_eq!(apply(&m, "api:9"), "api.mirror:9");
        let m = HostRewrite::Fixed("v2.internal:8080".into());
        assert_eq!(apply(&m, "[::1]:80"), "v2.internal:8080");
        assert_eq!(apply(&HostRewrite::Keep, "api:80"), "api:80");
        assert!(!HostRewrite::Keep.rewrites());
        assert!(HostRewrite::default().rewrites());
    }

    #[test]
    fn validate_rejects_text_that_would_break_the_header() {
        assert!(HostRewrite::default().validate().is_ok());
        assert!(HostRewrite::Keep.validate().is_ok());
        for bad in ["", "a\r\nX: y", "a b", "x\0"] {
            assert!(
                HostRewrite::Suffix(bad.into()).validate().is_err(),
                "{bad:?}"
            );
            assert!(
                HostRewrite::Fixed(bad.into()).validate().is_err(),
                "{bad:?}"
            );
        }
    }
}
