//! Which requests a policy mirrors: Gateway API `HTTPRouteMatch` semantics over a head's
//! bytes (path Exact | PathPrefix | RegularExpression, method, headers).

use regex::bytes::{Regex, RegexBuilder};
use thiserror::Error;

use super::{
    fields::{Http1Head, RequestFields},
    view::HeadView,
};

/// Compiled-program budget of one regular expression: patterns come from a config file, yet
/// one huge pattern must not take the agent's memory (the `regex` crate's matching time is
/// linear in the input whatever the pattern).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

#[derive(Debug, Error)]
pub enum MatchError {
    #[error("invalid regular expression {pattern:?}: {source}")]
    Regex {
        pattern: String,
        #[source]
        source: regex::Error,
    },
    #[error("path {0:?} must start with /")]
    RelativePath(String),
    #[error("header name {0:?} is not a valid field name")]
    HeaderName(String),
}

/// How the path (query excluded) is compared.
#[derive(Clone, Debug)]
pub enum PathMatch {
    Exact(String),
    /// Element-wise: `/api` matches `/api` and `/api/x`, not `/apix`; a trailing `/` in the
    /// prefix is ignored.
    Prefix(String),
    /// The whole path must match (the pattern is anchored at both ends, as Envoy's
    /// `safe_regex` is).
    Regex(Regex),
}

/// How a header value is compared.
#[derive(Clone, Debug)]
pub enum ValueMatch {
    Exact(String),
    Regex(Regex),
}

#[derive(Clone, Debug)]
pub struct HeaderMatch {
    /// Compared ASCII case-insensitively.
    pub name: String,
    pub value: ValueMatch,
}

/// One `matches` entry: every condition given must hold.
#[derive(Clone, Debug, Default)]
pub struct RequestMatch {
    pub path: Option<PathMatch>,
    /// Compared case-sensitively (methods are case-sensitive tokens).
    pub method: Option<String>,
    pub headers: Vec<HeaderMatch>,
}

// === impl PathMatch ===

impl PathMatch {
    pub fn exact(path: &str) -> Result<Self, MatchError> {
        absolute(path)?;
        Ok(Self::Exact(path.to_owned()))
    }

    pub fn prefix(path: &str) -> Result<Self, MatchError> {
        absolute(path)?;
        Ok(Self::Prefix(path.trim_end_matches('/').to_owned()))
    }

    pub fn regex(pattern: &str) -> Result<Self, MatchError> {
        Ok(Self::Regex(anchored(pattern)?))
    }

    pub fn matches(&self, path: &[u8]) -> bool {
        match self {
            Self::Exact(want) => path == want.as_bytes(),
            Self::Prefix(prefix) => path
                .strip_prefix(prefix.as_bytes())
                .is_some_and(|rest| rest.is_empty() || rest[0] == b'/' || prefix.is_empty()),
            Self::Regex(re) => re.is_match(path),
        }
    }
}

fn absolute(path: &str) -> Result<(), MatchError> {
    if path.starts_with('/') {
        Ok(())
    } else {
        Err(MatchError::RelativePath(path.to_owned()))
    }
}

/// Compiles `pattern` to match whole inputs only, within the size limit.
pub fn anchored(pattern: &str) -> Result<Regex, MatchError> {
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|source| MatchError::Regex {
            pattern: pattern.to_owned(),
            source,
        })
}

// === impl HeaderMatch ===

impl HeaderMatch {
    pub fn new(name: &str, value: ValueMatch) -> Result<Self, MatchError> {
        if !is_token(name) {
            return Err(MatchError::HeaderName(name.to_owned()));
        }
        Ok(Self {
            name: name.to_owned(),
            value,
        })
    }

    /// True if any field of that name has a matching value.
    fn matches<R: RequestFields + ?Sized>(&self, request: &R) -> bool {
        let mut takes = |v: &[u8]| match &self.value {
            ValueMatch::Exact(want) => v == want.as_bytes(),
            ValueMatch::Regex(re) => re.is_match(v),
        };
        request.find_value(&self.name, &mut takes).is_some()
    }
}

/// RFC 9110 `token`: what a field name may be.
pub fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

// === impl RequestMatch ===

impl RequestMatch {
    pub fn matches(&self, view: &HeadView, head: &[u8]) -> bool {
        self.matches_request(&Http1Head { view, head })
    }

    /// The same conditions over any protocol's request.
    pub fn matches_request<R: RequestFields + ?Sized>(&self, request: &R) -> bool {
        self.path.as_ref().is_none_or(|p| p.matches(request.path()))
            && self
                .method
                .as_ref()
                .is_none_or(|m| request.method() == m.as_bytes())
            && self.headers.iter().all(|h| h.matches(request))
    }
}

/// Gateway API's rule: no entries match everything; otherwise any one entry must match.
pub fn any_matches(matches: &[RequestMatch], view: &HeadView, head: &[u8]) -> bool {
    any_matches_request(matches, &Http1Head { view, head })
}

/// [`any_matches`] over any protocol's request.
pub fn any_matches_request<R: RequestFields + ?Sized>(
    matches: &[RequestMatch],
    request: &R,
) -> bool {
    matches.is_empty() || matches.iter().any(|m| m.matches_request(request))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(m: &RequestMatch, head: &str) -> bool {
        let mut v = HeadView::default();
        v.parse(head.as_bytes()).unwrap();
        m.matches(&v, head.as_bytes())
    }

    #[test]
    fn path_table() {
        let exact = PathMatch::exact("/api").unwrap();
        let prefix = PathMatch::prefix("/api/").unwrap();
        let root = PathMatch::prefix("/").unwrap();
        let regex = PathMatch::regex("/v[0-9]+/.*").unwrap();
        for (path, e, p, r, re) in [
            ("/api", true, true, true, false),
            ("/api/x", false, true, true, false),
            ("/apix", false, false, true, false),
            ("/ap", false, false, true, false),
            ("/v2/users", false, false, true, true),
            ("/x/v2/users", false, false, true, false),
        ] {
            assert_eq!(exact.matches(path.as_bytes()), e, "exact {path}");
            assert_eq!(prefix.matches(path.as_bytes()), p, "prefix {path}");
            assert_eq!(root.matches(path.as_bytes()), r, "root {path}");
            assert_eq!(regex.matches(path.as_bytes()), re, "regex {path}");
        }
    }

    #[test]
    fn all_conditions_of_an_entry_hold() {
        let m = RequestMatch {
            path: Some(PathMatch::prefix("/api").unwrap()),
            method: Some("POST".into()),
            headers: vec![HeaderMatch::new("x-canary", ValueMatch::Exact("1".into())).unwrap()],
        };
        assert!(check(
            &m,
            "POST /api/a?x=1 HTTP/1.1\r\nX-Canary: 1\r\nHost: h\r\n\r\n"
        ));
        assert!(!check(&m, "GET /api/a HTTP/1.1\r\nX-Canary: 1\r\n\r\n"));
        assert!(!check(&m, "POST /api/a HTTP/1.1\r\nX-Canary: 2\r\n\r\n"));
        assert!(!check(&m, "POST /api/a HTTP/1.1\r\n\r\n"));
        assert!(!check(&m, "post /api/a HTTP/1.1\r\nx-canary: 1\r\n\r\n"));
        assert!(check(
            &m,
            "POST /api HTTP/1.1\r\nx-canary: 0\r\nx-canary: 1\r\n\r\n"
        ));
    }

    #[test]
    fn no_entries_match_everything_else_any() {
        let mut v = HeadView::default();
        let head = b"GET /b HTTP/1.1\r\n\r\n";
        v.parse(head).unwrap();
        assert!(any_matches(&[], &v, head));
        let a = RequestMatch {
            path: Some(PathMatch::exact("/a").unwrap()),
            ..RequestMatch::default()
        };
        let b = RequestMatch {
            path: Some(PathMatch::exact("/b").unwrap()),
            ..RequestMatch::default()
        };
        assert!(!any_matches(std::slice::from_ref(&a), &v, head));
        assert!(any_matches(&[a, b], &v, head));
    }

    #[test]
    fn bad_patterns_and_names_are_refused() {
        assert!(PathMatch::regex("(").is_err());
        assert!(PathMatch::regex("a{1000}{1000}").is_err(), "size limit");
        assert!(PathMatch::exact("api").is_err());
        assert!(HeaderMatch::new("bad name", ValueMatch::Exact("x".into())).is_err());
    }
}
