//! HTTP/2 with prior knowledge (h2c), sans-IO: the client's direction of one connection,
//! from the connection preface on, turned into per-stream request events (head, body pieces,
//! trailers). HPACK is decoded exactly as v1 decodes it, dynamic table included, which is why
//! a connection can only be followed from its first byte: one lost header block and every
//! later one is undecodable, so a gap, a join after the preface or any protocol error stops
//! the whole connection (counted), while a stream over a bound is dropped alone (counted).
//!
//! ```
//! use mirror_cores::http2::{ClientStream, H2Config, H2Event};
//!
//! let mut conn = ClientStream::new(H2Config::default());
//! let mut events = Vec::new();
//! conn.data(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", &mut |e| events.push(e));
//! // SETTINGS (empty), then HEADERS on stream 1, END_STREAM | END_HEADERS: `:method GET`
//! // (static index 2) and `:path /` (index 4), HPACK-encoded as 0x82 0x84.
//! conn.data(&[0, 0, 0, 4, 0, 0, 0, 0, 0], &mut |e| events.push(e));
//! conn.data(&[0, 0, 2, 1, 5, 0, 0, 0, 1, 0x82, 0x84], &mut |e| events.push(e));
//! assert!(matches!(&events[..], [H2Event::Head { stream: 1, end_stream: true, .. }]));
//! ```

mod authority;
mod connection;
pub mod frame;
pub mod grpc;
mod policy;
mod upgrade;

pub use authority::rewrite_authority;
pub use connection::ClientStream;
pub use policy::{forbidden_field, modify, rewrite_stream};
pub(crate) use upgrade::{asks_only_h2c, settings_well_formed};

use bytes::Bytes;

/// One decoded header field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: Bytes,
    pub value: Bytes,
}

/// What one client connection yields. Per stream: `Head`, then `Data*` and at most one
/// `Trailers`; the stream is complete at the first event with `end_stream` (trailers always
/// end it), or is cut short by `Abort`. `Stopped` ends the connection: every stream not yet
/// complete is cut short with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum H2Event {
    Head {
        stream: u32,
        fields: Vec<Field>,
        end_stream: bool,
    },
    Data {
        stream: u32,
        data: Bytes,
        end_stream: bool,
    },
    Trailers {
        stream: u32,
        fields: Vec<Field>,
    },
    Abort {
        stream: u32,
        reason: StreamAbort,
    },
    Stopped(H2Stop),
}

/// Why a stream whose head was handed out will not be completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamAbort {
    /// The client reset it (RST_STREAM).
    Reset,
    /// Its body went over [`H2Config::max_body_bytes`].
    BodyTooLarge,
    /// Its trailers went over [`H2Config::max_header_list`].
    TrailersTooLarge,
    /// A second header block that does not end the stream.
    Malformed,
}

/// Why a connection is no longer followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum H2Stop {
    /// The first bytes are neither the connection preface nor an HTTP/1.1 request asking to
    /// upgrade to h2c: joined mid-stream, or not h2c.
    NotPreface,
    /// An HTTP/1.1 request asked to upgrade to h2c but the client went on in HTTP/1.1: v1 did
    /// not switch. The request itself was handed out as stream 1 (v1 answered it either way).
    NotSwitched,
    /// The capture lost bytes: the HPACK state cannot be known any more.
    Gap,
    /// A frame longer than [`H2Config::max_frame_bytes`].
    FrameTooLarge,
    /// A header block longer than [`H2Config::max_header_block`].
    HeaderBlockTooLarge,
    /// A header block HPACK could not decode.
    Hpack,
    /// Frames out of the protocol's order (a CONTINUATION out of place, a stream id going
    /// back, a PUSH_PROMISE from the client, padding longer than its frame).
    Protocol,
}

/// The bounds one connection is held to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct H2Config {
    /// Longest frame payload buffered. RFC 9113 allows up to 2^24 - 1 when v1 raised
    /// SETTINGS_MAX_FRAME_SIZE; most peers keep the default 16 KiB. Default 64 KiB: a
    /// connection holds at most one frame and one header block, outside the relay's
    /// in-flight budget.
    pub max_frame_bytes: usize,
    /// Longest header block (HEADERS plus its CONTINUATIONs, still encoded). Default 64 KiB.
    pub max_header_block: usize,
    /// Largest decoded header list of a stream, counted as RFC 9113 section 6.5.2 does (name,
    /// value and 32 bytes per field). Default 64 KiB.
    pub max_header_list: usize,
    /// Largest HPACK dynamic table a client may ask for. Default 64 KiB.
    pub max_table_bytes: usize,
    /// Streams open at once; a stream opened beyond is not mirrored. Default 256.
    pub max_streams: usize,
    /// Body bytes of one stream. Default 64 MiB.
    pub max_body_bytes: u64,
}

impl Default for H2Config {
    fn default() -> Self {
        H2Config {
            max_frame_bytes: 64 << 10,
            max_header_block: 64 << 10,
            max_header_list: 64 << 10,
            max_table_bytes: 64 << 10,
            max_streams: 256,
            max_body_bytes: 64 << 20,
        }
    }
}

/// Where one connection's streams and frames went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct H2Counters {
    /// Streams whose head was handed out.
    pub streams: u64,
    /// Of those, complete.
    pub streams_complete: u64,
    /// Streams the client reset after their head was handed out.
    pub streams_reset: u64,
    /// Streams not mirrored: their header list was over the bound.
    pub streams_over_headers: u64,
    /// Streams not mirrored: opened with `max_streams` already open.
    pub streams_over_limit: u64,
    /// Streams cut short: body or trailers over the bound, or malformed.
    pub streams_cut: u64,
    /// DATA payload bytes of streams that are not mirrored.
    pub data_bytes_ignored: u64,
    /// GOAWAY frames from the client.
    pub goaways: u64,
    /// HTTP/1.1 requests that asked to upgrade the connection to h2c (stream 1).
    pub upgrades: u64,
}

/// A header list from `(name, value)` pairs, as the tests write them.
#[cfg(test)]
pub(crate) fn fields_of(list: &[(&str, &str)]) -> Vec<Field> {
    list.iter()
        .map(|(n, v)| Field {
            name: Bytes::copy_from_slice(n.as_bytes()),
            value: Bytes::copy_from_slice(v.as_bytes()),
        })
        .collect()
}

#[cfg(test)]
mod tests;
