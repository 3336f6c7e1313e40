//! Following the chunked transfer coding (RFC 9112 section 7.1) byte by byte, only to know
//! where the body ends: the bytes themselves are forwarded unchanged.

use thiserror::Error;

use super::limits::MAX_CHUNK_LINE;

#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("chunk size is not hexadecimal or exceeds 64 bits")]
    Size,
    #[error("chunk size line longer than {MAX_CHUNK_LINE} bytes or with control characters")]
    Extension,
    #[error("line not ended by CRLF")]
    LineEnd,
    #[error("trailer section malformed or larger than the header cap")]
    Trailer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading hex digits of the chunk size.
    Size {
        size: u64,
        digits: u8,
    },
    /// After the size: extensions or whitespace until CR.
    Extension {
        size: u64,
        len: usize,
    },
    /// CR of the size line seen; LF must follow.
    SizeLf {
        size: u64,
    },
    /// Inside chunk data.
    Data {
        left: u64,
    },
    /// Chunk data done; CR must follow.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final CRLF).
    TrailerStart,
    /// Inside a trailer field line.
    TrailerLine,
    TrailerLf,
    /// CR of the final empty line seen; LF ends the body.
    FinalLf,
    Done,
}

/// Progress through one chunked body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunked {
    state: State,
    /// Trailer bytes seen so far, against `max_trailer`.
    trailer: usize,
    max_trailer: usize,
}

impl Chunked {
    /// `max_trailer` bounds the trailer section, like the header cap bounds the head.
    pub fn new(max_trailer: usize) -> Self {
        Self {
            state: State::Size { size: 0, digits: 0 },
            trailer: 0,
            max_trailer,
        }
    }

    /// Consumes body bytes from the start of `input`; returns how many belong to this body.
    /// Fewer than `input.len()` only when the body ended ([`Chunked::is_done`]).
    pub fn advance(&mut self, input: &[u8]) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            if let State::Data { left } = self.state {
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(input.len() - i);
                i += take;
                let left = left - take as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data { left }
                };
                continue;
            }
            if self.state == State::Done {
                break;
            }
            self.state = self.step(input[i])?;
            i += 1;
        }
        Ok(i)
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    fn step(&mut self, b: u8) -> Result<State, ChunkError> {
        Ok(match self.state {
            State::Size { size, digits } => match (b, hex(b)) {
                (_, Some(d)) if digits < 16 => State::Size {
                    size: size << 4 | u64::from(d),
                    digits: digits + 1,
                },
                (_, Some(_)) => return Err(ChunkError::Size),
                _ if digits == 0 => return Err(ChunkError::Size),
                (b'\r', _) => State::SizeLf { size },
                (b'\n', _) => return Err(ChunkError::LineEnd),
                (b';' | b' ' | b'\t', _) => State::Extension { size, len: 1 },
                _ => return Err(ChunkError::Size),
            },
            State::Extension { size, len } => match b {
                b'\r' => State::SizeLf { size },
                _ if len >= MAX_CHUNK_LINE || is_ctl(b) => return Err(ChunkError::Extension),
                _ => State::Extension { size, len: len + 1 },
            },
            State::SizeLf { size } => match b {
                b'\n' if size == 0 => State::TrailerStart,
                b'\n' => State::Data { left: size },
                _ => return Err(ChunkError::LineEnd),
            },
            State::DataCr => expect(b, b'\r', State::DataLf)?,
            State::DataLf => expect(b, b'\n', State::Size { size: 0, digits: 0 })?,
            State::TrailerStart => {
                self.count_trailer()?;
                match b {
                    b'\r' => State::FinalLf,
                    _ if is_ctl(b) || b == b':' => return Err(ChunkError::Trailer),
                    _ => State::TrailerLine,
                }
            }
            State::TrailerLine => {
                self.count_trailer()?;
                match b {
                    b'\r' => State::TrailerLf,
                    _ if is_ctl(b) => return Err(ChunkError::Trailer),
                    _ => State::TrailerLine,
                }
            }
            State::TrailerLf => expect(b, b'\n', State::TrailerStart)?,
            State::FinalLf => expect(b, b'\n', State::Done)?,
            // `advance` handles both before stepping.
            State::Data { .. } | State::Done => self.state,
        })
    }

    fn count_trailer(&mut self) -> Result<(), ChunkError> {
        self.trailer += 1;
        if self.trailer > self.max_trailer {
            Err(ChunkError::Trailer)
        } else {
            Ok(())
        }
    }
}

fn expect(b: u8, want: u8, next: State) -> Result<State, ChunkError> {
    if b == want {
        Ok(next)
    } else {
        Err(ChunkError::LineEnd)
    }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Controls other than HTAB, which field values allow.
fn is_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns the body length if it completed.
    fn body_len(input: &[u8], step: usize) -> Result<Option<usize>, ChunkError> {
        let mut c = Chunked::new(64);
        let mut used = 0;
        for piece in input.chunks(step) {
            used += c.advance(piece)?;
            if c.is_done() {
                return Ok(Some(used));
            }
        }
        Ok(None)
    }

    #[test]
    fn valid_bodies_end_where_they_should_in_any_split() {
        for body in [
            &b"0\r\n\r\n"[..],
            b"5\r\nhello\r\n0\r\n\r\n",
            b"5;name=v\r\nhello\r\nA\r\n0123456789\r\n0\r\n\r\n",
            b"5 ; x\r\nhello\r\n000\r\n\r\n",
            b"1\r\nx\r\n0\r\nExpires: never\r\nX-Sum: 1\r\n\r\n",
            b"0000000000000001\r\nx\r\n0\r\n\r\n",
        ] {
            let mut wire = body.to_vec();
            wire.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            for step in [1, 2, 3, 7, wire.len()] {
                assert_eq!(
                    body_len(&wire, step),
                    Ok(Some(body.len())),
                    "{body:?} by {step}"
                );
            }
        }
    }

    #[test]
    fn incomplete_bodies_wait() {
        for body in [
            &b"5\r\nhel"[..],
            b"5\r\nhello\r\n",
            b"0\r\n",
            b"0\r\nX: y\r\n",
            b"0\r\n\r",
        ] {
            assert_eq!(body_len(body, 1), Ok(None), "{body:?}");
        }
    }

    #[test]
    fn malformed_bodies_are_errors() {
        for (body, want) in [
            (&b"\r\n"[..], ChunkError::Size),
            (b"g\r\n", ChunkError::Size),
            (b"-1\r\n", ChunkError::Size),
            (b"00000000000000001\r\n", ChunkError::Size),
            (b"5\nhello", ChunkError::LineEnd),
            (b"5\r\nhelloX\r\n", ChunkError::LineEnd),
            (b"5\r\nhello\r\r", ChunkError::LineEnd),
            (b"5;a\0\r\n", ChunkError::Extension),
            (b"0\r\nX: y\n", ChunkError::Trailer),
            (b"0\r\n: y\r\n", ChunkError::Trailer),
        ] {
            assert_eq!(body_len(body, 1), Err(want), "{body:?}");
        }
        let long = format!("1;{}\r\n", "e".repeat(MAX_CHUNK_LINE));
        assert_eq!(body_len(long.as_bytes(), 100), Err(ChunkError::Extension));
        let trailer = format!("0\r\nX: {}\r\n\r\n", "v".repeat(64));
        assert_eq!(body_len(trailer.as_bytes(), 5), Err(ChunkError::Trailer));
    }
}
