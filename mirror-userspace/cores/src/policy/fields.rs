//! What matches and sampling read of a request, whichever protocol carried it: an HTTP/1
//! head through its layout, or an HTTP/2 stream's decoded header list (`http2::policy`).

use super::view::HeadView;

/// The parts of a request a policy decides on.
pub trait RequestFields {
    /// The method, as sent (empty if there is none).
    fn method(&self) -> &[u8];
    /// The path of the request target, query and fragment left out.
    fn path(&self) -> &[u8];
    /// The first value of a field named `name` (ASCII case-insensitive) that `pred` takes.
    fn find_value(&self, name: &str, pred: &mut dyn FnMut(&[u8]) -> bool) -> Option<&[u8]>;
}

/// An HTTP/1 request head: its bytes and their layout.
#[derive(Clone, Copy, Debug)]
pub struct Http1Head<'a> {
    pub view: &'a HeadView,
    pub head: &'a [u8],
}

impl RequestFields for Http1Head<'_> {
    fn method(&self) -> &[u8] {
        self.view.method(self.head)
    }

    fn path(&self) -> &[u8] {
        self.view.path(self.head)
    }

    fn find_value(&self, name: &str, pred: &mut dyn FnMut(&[u8]) -> bool) -> Option<&[u8]> {
        self.view.values(self.head, name).find(|v| pred(v))
    }
}

/// A request target's path: up to `?` or `#`.
pub fn path_of(target: &[u8]) -> &[u8] {
    let end = target
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(target.len());
    &target[..end]
}
