//! `:authority` (and `host`, which a client may send instead) rewritten with the policy's
//! rule, as Host is for HTTP/1.1.

use bytes::BytesMut;

use super::Field;
use crate::rewrite::HostRewrite;

/// Rewrites every non-empty `:authority` and `host` field of `fields` with `rule`. HTTP/2
/// field names are lowercase on the wire (RFC 9113 section 8.2.1), so they are compared as
/// they are.
pub fn rewrite_authority(fields: &mut [Field], rule: &HostRewrite, scratch: &mut BytesMut) {
    if !rule.rewrites() {
        return;
    }
    for field in fields.iter_mut() {
        let named = &field.name[..] == b":authority" || &field.name[..] == b"host";
        if !named || field.value.is_empty() {
            continue;
        }
        scratch.clear();
        rule.apply(&field.value, scratch);
        field.value = scratch.split().freeze();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn field(name: &'static str, value: &'static str) -> Field {
        Field {
            name: Bytes::from_static(name.as_bytes()),
            value: Bytes::from_static(value.as_bytes()),
        }
    }

    #[test]
    fn authority_and_host_take_the_suffix_and_nothing_else_changes() {
        let mut fields = vec![
            field(":method", "POST"),
            field(":authority", "api.default.svc:8080"),
            field("host", "api"),
            field("x-authority", "api"),
            field(":authority", ""),
        ];
        let rule = HostRewrite::Suffix("-shadow".into());
        rewrite_authority(&mut fields, &rule, &mut BytesMut::new());
        let values: Vec<&[u8]> = fields.iter().map(|f| &f.value[..]).collect();
        assert_eq!(
            values,
            [
                &b"POST"[..],
                b"api.default.svc-shadow:8080",
                b"api-shadow",
                b"api",
                b""
            ]
        );
    }
}
