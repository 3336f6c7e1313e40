//! Where the parts of one complete request head lie (method, path, each field line), as byte
//! ranges, so that matching reads them and rewriting copies everything else unchanged.

use std::ops::Range;

use crate::http::limits::MAX_HEADERS;
use thiserror::Error;

/// One field line of the head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// The whole line, its terminator (CRLF or LF) included.
    pub line: Range<usize>,
    pub name: Range<usize>,
    /// The value without surrounding whitespace (possibly empty).
    pub value: Range<usize>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ViewError {
    /// The pipeline only hands on heads `httparse` accepted, so this means a caller bug or
    /// a head from elsewhere; the dispatcher counts it and does not mirror the request.
    #[error("not a complete HTTP/1.x request head")]
    NotAHead,
}

/// The parsed layout of a request head. Reused from request to request: [`HeadView::parse`]
/// overwrites it without allocating once its field table has grown.
#[derive(Clone, Debug, Default)]
pub struct HeadView {
    method: Range<usize>,
    /// The request target as sent, query included.
    target: Range<usize>,
    fields: Vec<Field>,
    /// Where the blank line that ends the head starts.
    blank: usize,
}

impl HeadView {
    /// Lays out `head` (request line, fields, blank line, nothing after).
    pub fn parse(&mut self, head: &[u8]) -> Result<(), ViewError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let len = match req.parse(head) {
            Ok(httparse::Status::Complete(len)) => len,
            _ => return Err(ViewError::NotAHead),
        };
        let (Some(method), Some(path)) = (req.method, req.path) else {
            return Err(ViewError::NotAHead);
        };
        if len != head.len() {
            return Err(ViewError::NotAHead);
        }
        self.method = offset(head, method.as_bytes()).ok_or(ViewError::NotAHead)?;
        self.target = offset(head, path.as_bytes()).ok_or(ViewError::NotAHead)?;
        self.fields.clear();
        for h in req.headers.iter() {
            let name = offset(head, h.name.as_bytes()).ok_or(ViewError::NotAHead)?;
            let value = offset(head, trim(h.value)).unwrap_or(name.end..name.end);
            // httparse hands out empty values as a slice that may not point into the head.
            let value = if value.start < name.end {
                name.end..name.end
            } else {
                value
            };
            let end = line_end(head, value.end.max(name.end)).ok_or(ViewError::NotAHead)?;
            self.fields.push(Field {
                line: name.start..end,
                name,
                value,
            });
        }
        self.blank = match self.fields.last() {
            Some(last) => last.line.end,
            None => line_end(head, self.target.end).ok_or(ViewError::NotAHead)?,
        };
        Ok(())
    }

    pub fn method<'h>(&self, head: &'h [u8]) -> &'h [u8] {
        &head[self.method.clone()]
    }

    /// The path of the request target: up to `?` or `#`, query left out.
    pub fn path<'h>(&self, head: &'h [u8]) -> &'h [u8] {
        super::fields::path_of(&head[self.target.clone()])
    }

    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// Where the request line ends and the first field (or the blank line) starts.
    pub fn fields_start(&self) -> usize {
        self.fields.first().map_or(self.blank, |f| f.line.start)
    }

    /// Where the blank line ending the head starts.
    pub fn blank(&self) -> usize {
        self.blank
    }

    /// Values of the fields named `name` (ASCII case-insensitive), in order.
    pub fn values<'a, 'h: 'a>(
        &'a self,
        head: &'h [u8],
        name: &'a str,
    ) -> impl Iterator<Item = &'h [u8]> + 'a {
        self.fields
            .iter()
            .filter(move |f| head[f.name.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(move |f| &head[f.value.clone()])
    }
}

/// Where `part` (a slice `httparse` took from `buf`) sits in `buf`.
fn offset(buf: &[u8], part: &[u8]) -> Option<Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= buf.len()).then_some(start..end)
}

/// The index just past the LF that ends the line containing `from`.
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    let lf = buf.get(from..)?.iter().position(|&b| b == b'\n')?;
    Some(from + lf + 1)
}

fn trim(s: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = s.iter().position(|b| !is_ows(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !is_ows(b)).map_or(start, |e| e + 1);
    &s[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(head: &[u8]) -> HeadView {
        let mut v = HeadView::default();
        v.parse(head).unwrap();
        v
    }

    #[test]
    fn lays_out_lines_and_values() {
        let head = b"POST /api/x?q=1 HTTP/1.1\r\nHost: a:80\r\nX-Empty:\r\nAccept:  */* \r\n\r\n";
        let v = view(head);
        assert_eq!(v.method(head), b"POST");
        assert_eq!(v.path(head), b"/api/x");
        let lines: Vec<&[u8]> = v.fields().iter().map(|f| &head[f.line.clone()]).collect();
        assert_eq!(
            lines,
            [
                &b"Host: a:80\r\n"[..],
                b"X-Empty:\r\n",
                b"Accept:  */* \r\n"
            ]
        );
        let values: Vec<&[u8]> = v.fields().iter().map(|f| &head[f.value.clone()]).collect();
        assert_eq!(values, [&b"a:80"[..], b"", b"*/*"]);
        assert_eq!(&head[v.blank()..], b"\r\n");
        assert_eq!(&head[..v.fields_start()], b"POST /api/x?q=1 HTTP/1.1\r\n");
        assert_eq!(v.values(head, "HOST").collect::<Vec<_>>(), [b"a:80"]);
    }

    #[test]
    fn bare_lf_and_no_fields() {
        let head = b"GET / HTTP/1.0\n\n";
        let v = view(head);
        assert!(v.fields().is_empty());
        assert_eq!(v.blank(), 15);
        assert_eq!(v.fields_start(), 15);
    }

    #[test]
    fn refuses_partial_or_trailing_bytes() {
        let mut v = HeadView::default();
        assert_eq!(v.parse(b"GET / HTTP/1.1\r\n"), Err(ViewError::NotAHead));
        assert_eq!(
            v.parse(b"GET / HTTP/1.1\r\n\r\nbody"),
            Err(ViewError::NotAHead)
        );
    }
}
