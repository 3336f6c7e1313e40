//! What one mirror changes in the copy it sends: Host (`hostRewrite`) and other fields
//! (`requestHeaderModifier`, Gateway API's set/add/remove). Every byte not named by a rule
//! is copied unchanged, untouched fields keep their order, and bodies are never seen here.

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use super::{matching::is_token, view::HeadView};
use crate::rewrite::{HostRewrite, RewriteError};

/// Fields a modifier may not touch: Host has its own rule, and the framing fields must stay
/// as v1 got them or the body that follows would be framed differently at v2.
const RESERVED: [&str; 3] = ["host", "content-length", "transfer-encoding"];

/// Most `set` entries of one modifier: which of them were applied is one `u64` bitmask, so
/// rewriting a head allocates nothing beyond the head itself.
pub const MAX_SET: usize = 64;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ModifyError {
    #[error("header name {0:?} is not a valid field name")]
    Name(String),
    #[error("value {value:?} of header {name:?} holds CR, LF, NUL or other control bytes")]
    Value { name: String, value: String },
    #[error(
        "header {0:?} cannot be modified (use hostRewrite for Host; framing fields stay as sent)"
    )]
    Reserved(String),
    #[error("header {0:?} is named twice in the same list, or in both set and remove")]
    Duplicate(String),
    #[error("more than {MAX_SET} headers to set")]
    TooMany,
    #[error(transparent)]
    Host(#[from] RewriteError),
}

/// Gateway API `HTTPHeaderFilter`. `set` replaces the value of the first field of that name
/// (keeping its position and its name's spelling) and drops later ones, or appends the field
/// if absent; `add` appends a field line even if the name exists (a list value, which HTTP
/// treats as equal to appending to the value); `remove` drops every field of that name.
/// Names compare ASCII case-insensitively.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderModifier {
    set: Vec<(String, String)>,
    add: Vec<(String, String)>,
    remove: Vec<String>,
}

/// Everything one mirror changes in a head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorRewrite {
    pub host: HostRewrite,
    pub headers: HeaderModifier,
}

// === impl HeaderModifier ===

impl HeaderModifier {
    pub fn new(
        set: Vec<(String, String)>,
        add: Vec<(String, String)>,
        remove: Vec<String>,
    ) -> Result<Self, ModifyError> {
        if set.len() > MAX_SET {
            return Err(ModifyError::TooMany);
        }
        for (name, value) in set.iter().chain(&add) {
            check_name(name)?;
            if !value
                .bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
            {
                return Err(ModifyError::Value {
                    name: name.clone(),
                    value: value.clone(),
                });
            }
        }
        for name in &remove {
            check_name(name)?;
        }
        let set_and_remove: Vec<&str> = set
            .iter()
            .map(|(n, _)| n.as_str())
            .chain(remove.iter().map(String::as_str))
            .collect();
        for (i, name) in set_and_remove.iter().enumerate() {
            if set_and_remove[..i]
                .iter()
                .any(|seen| seen.eq_ignore_ascii_case(name))
            {
                return Err(ModifyError::Duplicate((*name).to_owned()));
            }
        }
        Ok(Self { set, add, remove })
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    pub fn set(&self) -> &[(String, String)] {
        &self.set
    }

    pub fn add(&self) -> &[(String, String)] {
        &self.add
    }

    pub fn remove(&self) -> &[String] {
        &self.remove
    }
}

fn check_name(name: &str) -> Result<(), ModifyError> {
    if !is_token(name) {
        return Err(ModifyError::Name(name.to_owned()));
    }
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name)) {
        return Err(ModifyError::Reserved(name.to_owned()));
    }
    Ok(())
}

// === impl MirrorRewrite ===

impl MirrorRewrite {
    /// Forwards the head exactly as v1 got it.
    pub const KEEP: MirrorRewrite = MirrorRewrite {
        host: HostRewrite::Keep,
        headers: HeaderModifier {
            set: Vec::new(),
            add: Vec::new(),
            remove: Vec::new(),
        },
    };

    pub fn validate(&self) -> Result<(), ModifyError> {
        Ok(self.host.validate()?)
    }

    /// The head this mirror sends. `view` must be `head`'s layout. An unchanged head is
    /// shared, not copied; a changed one is assembled in `scratch`.
    pub fn apply(&self, view: &HeadView, head: &Bytes, scratch: &mut BytesMut) -> Bytes {
        if !self.host.rewrites() && self.headers.is_empty() {
            return head.clone();
        }
        let h = &head[..];
        let mods = &self.headers;
        scratch.reserve(h.len() + 256);
        scratch.extend_from_slice(&h[..view.fields_start()]);
        let mut set_done: u64 = 0;
        for field in view.fields() {
            let name = &h[field.name.clone()];
            if mods
                .remove
                .iter()
                .any(|r| name.eq_ignore_ascii_case(r.as_bytes()))
            {
                continue;
            }
            if let Some(i) = mods
                .set
                .iter()
                .position(|(n, _)| name.eq_ignore_ascii_case(n.as_bytes()))
            {
                if set_done & (1 << i) == 0 {
                    set_done |= 1 << i;
                    scratch.extend_from_slice(&h[field.line.start..field.value.start]);
                    scratch.extend_from_slice(mods.set[i].1.as_bytes());
                    scratch.extend_from_slice(&h[field.value.end..field.line.end]);
                }
                continue;
            }
            let is_host = name.eq_ignore_ascii_case(b"host");
            if is_host && self.host.rewrites() && !field.value.is_empty() {
                scratch.extend_from_slice(&h[field.line.start..field.value.start]);
                self.host.apply(&h[field.value.clone()], scratch);
                scratch.extend_from_slice(&h[field.value.end..field.line.end]);
            } else {
                scratch.extend_from_slice(&h[field.line.clone()]);
            }
        }
        // New lines end as the head's own blank line does (CRLF, or a bare LF).
        let eol = &h[view.blank()..];
        for (i, (name, value)) in mods.set.iter().enumerate() {
            if set_done & (1 << i) == 0 {
                append_field(scratch, name, value, eol);
            }
        }
        for (name, value) in &mods.add {
            append_field(scratch, name, value, eol);
        }
        scratch.extend_from_slice(eol);
        scratch.split().freeze()
    }
}

fn append_field(out: &mut BytesMut, name: &str, value: &str, eol: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(eol);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn rewrite(
        host: HostRewrite,
        set: &[(&str, &str)],
        add: &[(&str, &str)],
        remove: &[&str],
    ) -> MirrorRewrite {
        MirrorRewrite {
            host,
            headers: HeaderModifier::new(
                pairs(set),
                pairs(add),
                remove.iter().map(|s| (*s).to_owned()).collect(),
            )
            .unwrap(),
        }
    }

    fn run(r: &MirrorRewrite, head: &str) -> String {
        let head = Bytes::copy_from_slice(head.as_bytes());
        let mut view = HeadView::default();
        view.parse(&head).unwrap();
        let out = r.apply(&view, &head, &mut BytesMut::new());
        String::from_utf8(out.to_vec()).unwrap()
    }

    const HEAD: &str = "POST /a HTTP/1.1\r\nHost: api:80\r\nAuthorization: Bearer x\r\n\
                        X-Mirrored:  old \r\nAccept: */*\r\nauthorization: again\r\n\
                        Content-Length: 3\r\n\r\n";

    #[test]
    fn keep_shares_the_head_unchanged() {
        let head = Bytes::from_static(HEAD.as_bytes());
        let mut view = HeadView::default();
        view.parse(&head).unwrap();
        let out = MirrorRewrite::KEEP.apply(&view, &head, &mut BytesMut::new());
        assert_eq!(out, head);
        assert_eq!(out.as_ptr(), head.as_ptr(), "not copied");
    }

    #[test]
    fn set_add_remove_and_host_table() {
        let r = rewrite(
            HostRewrite::default(),
            &[("x-mirrored", "true"), ("x-new", "1")],
            &[("accept", "text/plain")],
            &["AUTHORIZATION"],
        );
        assert_eq!(
            run(&r, HEAD),
            "POST /a HTTP/1.1\r\nHost: api-shadow:80\r\nX-Mirrored:  true \r\n\
             Accept: */*\r\nContent-Length: 3\r\nx-new: 1\r\naccept: text/plain\r\n\r\n"
        );
        let fixed = rewrite(HostRewrite::Fixed("v2".into()), &[], &[], &[]);
        assert_eq!(
            run(&fixed, "GET / HTTP/1.1\nhost: a\n\n"),
            "GET / HTTP/1.1\nhost: v2\n\n"
        );
        let set_twice = rewrite(HostRewrite::Keep, &[("a", "z")], &[], &[]);
        assert_eq!(
            run(&set_twice, "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\na: 3\r\n\r\n"),
            "GET / HTTP/1.1\r\nA: z\r\nB: 2\r\n\r\n"
        );
        let empty_host = rewrite(HostRewrite::default(), &[], &[], &[]);
        assert_eq!(
            run(&empty_host, "GET / HTTP/1.1\r\nHost:\r\n\r\n"),
            "GET / HTTP/1.1\r\nHost:\r\n\r\n"
        );
    }

    #[test]
    fn bad_rules_are_refused() {
        let s = |n: &str, v: &str| vec![(n.to_owned(), v.to_owned())];
        let cases = [
            HeaderModifier::new(s("bad name", "x"), vec![], vec![]),
            HeaderModifier::new(s("x", "a\r\nInjected: 1"), vec![], vec![]),
            HeaderModifier::new(vec![], s("Host", "x"), vec![]),
            HeaderModifier::new(vec![], vec![], vec!["content-length".into()]),
            HeaderModifier::new(s("x", "1"), vec![], vec!["X".into()]),
            HeaderModifier::new(vec![], vec![], vec!["a".into(), "A".into()]),
            HeaderModifier::new(
                (0..=MAX_SET)
                    .map(|i| (format!("x-{i}"), "v".into()))
                    .collect(),
                vec![],
                vec![],
            ),
        ];
        for case in cases {
            assert!(case.is_err(), "{case:?}");
        }
    }

    fn field_name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("Authorization".to_owned()),
            Just("x-a".to_owned()),
            Just("X-B".to_owned()),
            "[a-z]{1,6}",
        ]
    }

    proptest! {
        /// Removing a name drops exactly its lines; every other byte, the order of the other
        /// lines included, is unchanged.
        #[test]
        fn remove_drops_only_its_lines(
            fields in proptest::collection::vec((field_name(), "[ -~]{0,12}"), 0..12),
            crlf in any::<bool>(),
        ) {
            let eol = if crlf { "\r\n" } else { "\n" };
            let line = |(n, v): &(String, String)| format!("{n}: {}{eol}", v.trim());
            let head = format!("GET /p HTTP/1.1{eol}{}{eol}",
                fields.iter().map(line).collect::<String>());
            let kept: String = fields.iter()
                .filter(|(n, _)| !n.eq_ignore_ascii_case("authorization"))
                .map(line).collect();
            let r = rewrite(HostRewrite::Keep, &[], &[], &["authorization"]);
            prop_assert_eq!(run(&r, &head), format!("GET /p HTTP/1.1{eol}{kept}{eol}"));
        }
    }
}
