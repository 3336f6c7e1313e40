//! Policies on HTTP/2 streams, as on HTTP/1 requests: the matches and the sampling read a
//! stream's decoded header list (`:method`, `:path`, the regular fields), and a mirror's
//! `requestHeaderModifier` and `hostRewrite` change that list before the stream is replayed.
//! Pseudo-headers are never touched by a modifier (its names are tokens, which cannot start
//! with `:`); only `hostRewrite` changes `:authority`.

use bytes::{Bytes, BytesMut};

use super::{rewrite_authority, Field};
use crate::policy::{path_of, HeaderModifier, MirrorRewrite, RequestFields};

impl RequestFields for [Field] {
    fn method(&self) -> &[u8] {
        pseudo(self, b":method")
    }

    fn path(&self) -> &[u8] {
        path_of(pseudo(self, b":path"))
    }

    fn find_value(&self, name: &str, pred: &mut dyn FnMut(&[u8]) -> bool) -> Option<&[u8]> {
        self.iter()
            .filter(|f| !is_pseudo(f) && f.name.eq_ignore_ascii_case(name.as_bytes()))
            .map(|f| &f.value[..])
            .find(|v| pred(v))
    }
}

fn is_pseudo(field: &Field) -> bool {
    field.name.first() == Some(&b':')
}

/// The value of the first pseudo-header `name`, or nothing.
fn pseudo<'f>(fields: &'f [Field], name: &[u8]) -> &'f [u8] {
    fields
        .iter()
        .find(|f| f.name[..] == *name)
        .map_or(&[], |f| &f.value[..])
}

/// Connection-specific fields, which an HTTP/2 request must not carry (RFC 9113 section
/// 8.2.2); `te` is allowed with the value `trailers` only.
const CONNECTION_SPECIFIC: [&str; 4] = ["connection", "proxy-connection", "keep-alive", "upgrade"];

/// The first field a modifier would set or add that HTTP/2 forbids: v2's HTTP/2 stack would
/// refuse every stream carrying it, so a config naming one is refused instead.
pub fn forbidden_field(mods: &HeaderModifier) -> Option<&str> {
    mods.set()
        .iter()
        .chain(mods.add())
        .find(|(name, value)| {
            CONNECTION_SPECIFIC
                .iter()
                .any(|c| c.eq_ignore_ascii_case(name))
                || (name.eq_ignore_ascii_case("te") && value != "trailers")
        })
        .map(|(name, _)| name.as_str())
}

/// Everything one mirror changes in a stream's head: `:authority` (and `host`) by its host
/// rule, then its header modifier.
pub fn rewrite_stream(fields: &mut Vec<Field>, rewrite: &MirrorRewrite, scratch: &mut BytesMut) {
    rewrite_authority(fields, &rewrite.host, scratch);
    modify(fields, &rewrite.headers);
}

/// Gateway API's set/add/remove over a header list, as `MirrorRewrite::apply` does over an
/// HTTP/1 head: `remove` drops every field of a name; `set` replaces the value of the first
/// field of its name and drops the later ones, or appends the field if there is none; `add`
/// appends. Untouched fields keep their order; added names are lowercased, as HTTP/2
/// requires (RFC 9113 section 8.2.1).
pub fn modify(fields: &mut Vec<Field>, mods: &HeaderModifier) {
    if mods.is_empty() {
        return;
    }
    let named = |field: &Field, name: &str| {
        !is_pseudo(field) && field.name.eq_ignore_ascii_case(name.as_bytes())
    };
    // Which `set` entries found their field already (at most `MAX_SET` of them).
    let mut set_done: u64 = 0;
    fields.retain_mut(|field| {
        if mods.remove().iter().any(|r| named(field, r)) {
            return false;
        }
        let Some(i) = mods.set().iter().position(|(n, _)| named(field, n)) else {
            return true;
        };
        if set_done & (1 << i) != 0 {
            return false;
        }
        set_done |= 1 << i;
        field.value = Bytes::copy_from_slice(mods.set()[i].1.as_bytes());
        true
    });
    let appended = mods
        .set()
        .iter()
        .enumerate()
        .filter(|(i, _)| set_done & (1 << i) == 0)
        .map(|(_, pair)| pair)
        .chain(mods.add());
    for (name, value) in appended {
        fields.push(Field {
            name: Bytes::from(name.to_ascii_lowercase()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{
        Coin, HeaderMatch, PathMatch, Policy, RequestMatch, Sampling, Share, ValueMatch, Verdict,
    };
    use crate::{policy::MirrorRule, rewrite::HostRewrite};

    use crate::http2::fields_of as fields;

    fn text(fields: &[Field]) -> Vec<String> {
        fields
            .iter()
            .map(|f| {
                format!(
                    "{}: {}",
                    String::from_utf8_lossy(&f.name),
                    String::from_utf8_lossy(&f.value)
                )
            })
            .collect()
    }

    fn head(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<Field> {
        let mut list = vec![
            (":method", method),
            (":scheme", "http"),
            (":authority", "api:8080"),
            (":path", path),
        ];
        list.extend_from_slice(extra);
        fields(&list)
    }

    #[test]
    fn matches_read_method_path_and_fields_of_the_header_list() {
        let m = RequestMatch {
            path: Some(PathMatch::prefix("/pkg.Service").unwrap()),
            method: Some("POST".into()),
            headers: vec![HeaderMatch::new("X-Canary", ValueMatch::Exact("1".into())).unwrap()],
        };
        let canary = [("x-canary", "0"), ("x-canary", "1")];
        assert!(m.matches_request(&head("POST", "/pkg.Service/Get?a=b", &canary)[..]));
        assert!(!m.matches_request(&head("GET", "/pkg.Service/Get", &canary)[..]));
        assert!(!m.matches_request(&head("POST", "/pkg.Other/Get", &canary)[..]));
        assert!(!m.matches_request(&head("POST", "/pkg.Service/Get", &[])[..]));
        // A header match never reads a pseudo-header, whatever it is named.
        let authority = RequestMatch {
            headers: vec![
                HeaderMatch::new("authority", ValueMatch::Exact("api:8080".into())).unwrap(),
            ],
            ..RequestMatch::default()
        };
        assert!(!authority.matches_request(&head("GET", "/", &[])[..]));
        // No `:path` at all: the path is empty, which no exact path matches.
        let rooted = RequestMatch {
            path: Some(PathMatch::exact("/").unwrap()),
            ..RequestMatch::default()
        };
        assert!(!rooted.matches_request(&fields(&[(":method", "GET")])[..]));
    }

    #[test]
    fn a_policy_decides_per_stream_with_the_http1_sampling() {
        let only = |path: &str| RequestMatch {
            path: Some(PathMatch::exact(path).unwrap()),
            ..RequestMatch::default()
        };
        let policy = Policy {
            matches: vec![only("/kept"), only("/other")],
            sampling: Sampling::ConsistentBy {
                header: "x-request-id".into(),
            },
            mirrors: [Share::ALL, Share::percent(0.0).unwrap()]
                .into_iter()
                .map(|share| MirrorRule {
                    share,
                    rewrite: MirrorRewrite::KEEP,
                })
                .collect(),
        };
        let mut coin = Coin::new(3);
        let decide = |fields: &[Field], coin: &mut Coin| {
            let mut verdicts = Vec::new();
            policy.decide_request(fields, coin, |i, v| verdicts.push((i, v)));
            verdicts
        };
        let kept = head("GET", "/kept", &[("x-request-id", "r1")]);
        assert_eq!(
            decide(&kept, &mut coin),
            [(0, Verdict::Take), (1, Verdict::SampledOut)]
        );
        let unmatched = head("GET", "/elsewhere", &[]);
        assert_eq!(
            decide(&unmatched, &mut coin),
            [(0, Verdict::NotMatched), (1, Verdict::NotMatched)]
        );
        // The consistent draw is the hash of the field's value, as for an HTTP/1 head.
        let h1 = b"GET /kept HTTP/1.1\r\nX-Request-Id: r1\r\n\r\n";
        let mut view = crate::policy::HeadView::default();
        view.parse(h1).unwrap();
        let mut c1 = Coin::new(1);
        let mut c2 = Coin::new(2);
        assert_eq!(
            policy.sampling.draws(&view, h1, &mut c1).draw(),
            policy.sampling.draws_for(&kept[..], &mut c2).draw()
        );
    }

    #[test]
    fn set_add_remove_change_only_regular_fields() {
        let mods = HeaderModifier::new(
            vec![
                ("X-Mirrored".into(), "true".into()),
                ("x-new".into(), "1".into()),
            ],
            vec![("Accept".into(), "text/plain".into())],
            vec!["authorization".into()],
        )
        .unwrap();
        let mut list = head(
            "POST",
            "/a",
            &[
                ("authorization", "Bearer x"),
                ("x-mirrored", "old"),
                ("accept", "*/*"),
                ("x-mirrored", "again"),
                ("authorization", "again"),
            ],
        );
        let rewrite = MirrorRewrite {
            host: HostRewrite::Suffix("-shadow".into()),
            headers: mods,
        };
        rewrite_stream(&mut list, &rewrite, &mut BytesMut::new());
        assert_eq!(
            text(&list),
            [
                ":method: POST",
                ":scheme: http",
                ":authority: api-shadow:8080",
                ":path: /a",
                "x-mirrored: true",
                "accept: */*",
                "x-new: 1",
                "accept: text/plain",
            ]
        );
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect()
        };
        for (set, forbidden) in [
            (&[("Connection", "close")][..], Some("Connection")),
            (&[("te", "gzip")], Some("te")),
            (&[("te", "trailers")], None),
            (&[("x-a", "1"), ("Upgrade", "h2c")], Some("Upgrade")),
        ] {
            let mods = HeaderModifier::new(pairs(set), vec![], vec![]).unwrap();
            assert_eq!(forbidden_field(&mods), forbidden, "{set:?}");
        }
        let untouched = head("GET", "/", &[("a", "1")]);
        let mut same = untouched.clone();
        modify(&mut same, &HeaderModifier::default());
        assert_eq!(same, untouched);
    }
}
