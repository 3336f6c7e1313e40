//! Test helpers shared by the framer and pipeline tests: request generators that know what
//! the shadow should receive, and event collectors that rebuild requests from events.

use crate::http::FrameEvent;
use proptest::prelude::*;

/// One request: its bytes on the wire, and the bytes the shadow must get (Host rewritten).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Req {
    pub wire: Vec<u8>,
    pub mirrored: Vec<u8>,
}

fn letters(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[a-z]{{0,{max}}}")).expect("valid regex")
}

#[derive(Clone, Debug)]
enum BodyGen {
    None,
    Length(String),
    Chunked(Vec<String>, bool),
}

prop_compose! {
    pub fn request()(
        method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "OPTIONS"]),
        path in letters(12),
        host in prop::option::weighted(0.9, (
            prop::sample::select(vec!["Host", "host", "HOST"]),
            prop_oneof![letters(8).prop_map(|h| format!("{h}x")), Just("[::1]".to_owned())],
            prop::option::of(1u16..),
            prop::sample::select(vec!["", " ", "  ", "\t"]),
        )),
        extra in prop::collection::vec((letters(6), letters(10)), 0..3),
        body in prop_oneof![
            Just(BodyGen::None),
            letters(300).prop_map(BodyGen::Length),
            (prop::collection::vec(letters(40).prop_map(|s| format!("{s}z")), 0..4), any::<bool>())
                .prop_map(|(c, t)| BodyGen::Chunked(c, t)),
        ],
        http10 in any::<bool>(),
    ) -> Req {
        let version = if http10 && !matches!(body, BodyGen::Chunked(..)) { "1.0" } else { "1.1" };
        let mut wire = format!("{method} /{path} HTTP/{version}\r\n");
        let mut mirrored = wire.clone();
        if let Some((name, h, port, ows)) = &host {
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            wire.push_str(&format!("{name}:{ows}{h}{port}{ows}\r\n"));
            mirrored.push_str(&format!("{name}:{ows}{h}-shadow{port}{ows}\r\n"));
        }
        let mut fields = String::new();
        for (k, v) in &extra {
            fields.push_str(&format!("X-{k}: {v}\r\n"));
        }
        let body = match &body {
            BodyGen::None => String::new(),
            BodyGen::Length(b) => {
                fields.push_str(&format!("Content-Length: {}\r\n", b.len()));
                b.clone()
            }
            BodyGen::Chunked(chunks, trailer) => {
                fields.push_str("Transfer-Encoding: chunked\r\n");
                let mut b: String = chunks.iter().map(|c| format!("{:x}\r\n{c}\r\n", c.len())).collect();
                b.push_str("0\r\n");
                if *trailer {
                    b.push_str("X-Trailer: t\r\n");
                }
                b.push_str("\r\n");
                b
            }
        };
        for s in [&mut wire, &mut mirrored] {
            s.push_str(&fields);
            s.push_str("\r\n");
            s.push_str(&body);
        }
        Req { wire: wire.into_bytes(), mirrored: mirrored.into_bytes() }
    }
}

/// Rebuilds requests from framer events: `complete` holds each request ended by `End`,
/// `aborted` counts those ended by `Abort`, `stopped` records a stop.
#[derive(Debug, Default)]
pub struct Rebuilt {
    pub complete: Vec<Vec<u8>>,
    pub aborted: usize,
    pub stopped: Option<crate::outcome::StopReason>,
    /// Bytes handed on as HTTP/2 after an upgrade to h2c.
    pub h2c: Vec<u8>,
    current: Option<Vec<u8>>,
}

impl Rebuilt {
    pub fn take(&mut self, e: FrameEvent) {
        match e {
            FrameEvent::Head(h) => {
                assert!(self.current.is_none(), "head inside a request");
                self.current = Some(h.to_vec());
            }
            FrameEvent::Body(b) => {
                assert!(!b.is_empty(), "empty body event");
                self.current
                    .as_mut()
                    .expect("body outside a request")
                    .extend_from_slice(&b);
            }
            FrameEvent::End => self
                .complete
                .push(self.current.take().expect("end outside a request")),
            FrameEvent::Abort(_) => {
                self.current.take().expect("abort outside a request");
                self.aborted += 1;
            }
            FrameEvent::Stopped(r) => {
                assert!(self.current.is_none(), "stop inside a request");
                self.stopped = Some(r);
            }
            FrameEvent::H2c(b) => {
                assert!(self.current.is_none(), "h2c inside a request");
                assert!(!b.is_empty(), "empty h2c event");
                self.h2c.extend_from_slice(&b);
            }
        }
    }

    pub fn in_request(&self) -> bool {
        self.current.is_some()
    }
}
