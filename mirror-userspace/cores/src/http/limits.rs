//! Limits shared by the request and the response framer, so both sides of a mirrored
//! connection refuse the same things.

/// Most header fields in one head (request or response); more stops the connection.
/// `httparse` needs a fixed table: 128 is twice what browsers send and costs 4 KiB of stack.
pub const MAX_HEADERS: usize = 128;

/// Default cap on one head (start line, fields, blank line); it also bounds a chunked body's
/// trailer section.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 64 * 1024;

/// Longest chunk-size line (size plus extensions) accepted. Extensions are rare and short;
/// a cap keeps a peer from making us scan forever for a line end.
pub const MAX_CHUNK_LINE: usize = 4096;
