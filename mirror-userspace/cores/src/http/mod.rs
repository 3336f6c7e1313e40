//! HTTP/1.1 framing (RFC 9112), both ways: requests on a reassembled client stream
//! ([`Framer`]), and v2's responses on a shadow connection ([`ResponseFramer`]). Both follow
//! the same limits and the same chunked rules ([`limits`], [`Chunked`]).

mod chunked;
mod head;
pub mod limits;
mod method;
mod request;
mod response;

pub use chunked::{ChunkError, Chunked};
pub(crate) use head::parse_length;
pub use head::{BodyKind, Head, HeadParse};
pub use method::{line_start, LineStart};
pub use request::{Env, FrameEvent, Framer, FramerConfig};
pub use response::{Answer, ResponseError, ResponseFramer};
