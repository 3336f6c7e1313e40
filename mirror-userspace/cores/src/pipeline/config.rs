//! Settings of the pipeline, with defaults sized for one agent on one node, and the checks
//! that refuse settings which would break its guarantees.

use crate::http::FramerConfig;
use crate::reassembly::MAX_WINDOW;
use crate::rewrite::{HostRewrite, RewriteError};
use crate::sampling::SamplingError;
use thiserror::Error;

const SECOND_NS: u64 = 1_000_000_000;

/// What lets client bytes through to the framer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// v1's side of each connection is captured too (header-only records, fed to
    /// [`Pipeline::on_server_segment`](super::Pipeline::on_server_segment)): a flow exists only
    /// once v1 answered its SYN (and the client completed the handshake) or, joined
    /// mid-stream, once v1 acknowledges its bytes; client bytes reach the framer only once v1
    /// acknowledged them; data beyond v1's advertised window is dropped. The default.
    AckedByV1,
    /// Only the client direction is seen (a dataplane that bypasses the hook for v1's
    /// packets): a client SYN or a request line starts a flow and bytes are framed as soon as
    /// they are contiguous. Forged client packets can then reach v2: use only where v1's
    /// direction cannot be captured, and say so.
    ClientOnly,
}

/// Everything the pipeline can be told. `Default` gives the documented values.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineConfig {
    /// Flows tracked at once (tombstones of ended flows included); beyond, the least recently
    /// active is evicted. Default 65 536.
    pub max_flows: usize,
    /// Bytes buffered by all flows together (out-of-order data and partial heads); beyond,
    /// least recently active flows are evicted. Default 256 MiB.
    pub max_buffered_bytes: usize,
    /// How far past the next expected byte one flow holds out-of-order data. Default 4 MiB.
    pub ooo_window: u32,
    /// A flow with no segment for this long is ended. Default 120 s.
    pub idle_timeout_ns: u64,
    /// A hole in front of held out-of-order data that stays unfilled this long is declared
    /// lost, so a quiet keep-alive connection resumes mirroring without waiting for a full
    /// window of later data. Default 1 s (a receiver that lacked the bytes would have had them
    /// retransmitted by then).
    pub hole_timeout_ns: u64,
    /// How long an ended flow is remembered, so late retransmissions are not mistaken for a
    /// new flow joined mid-stream. Default 5 s.
    pub closed_linger_ns: u64,
    /// Largest request head, and Host rewrite mode.
    pub framer: FramerConfig,
    /// Percentage of requests mirrored, `0.0..=100.0`. Default 100.
    pub sample_percent: f64,
    /// Seed of the sampling coin: the same seed and input give the same decisions.
    pub sample_seed: u64,
    /// What releases client bytes. Default [`Admission::AckedByV1`].
    pub admission: Admission,
    /// Flows one source address (a pod) may have tracked; beyond, its own least recently
    /// active flow is evicted. Default 16 384 (a quarter of `max_flows`).
    pub max_flows_per_source: usize,
    /// Bytes one source address's flows may buffer; beyond, its own least recently active
    /// flows are evicted. Default 64 MiB (a quarter of `max_buffered_bytes`).
    pub max_buffered_per_source: usize,
    /// Handshakes v1 answered and the client has not completed, tracked at once; beyond, the
    /// oldest is forgotten (its flow can still be joined mid-stream). Default 65 536.
    pub max_handshakes: usize,
    /// A handshake pending this long is forgotten. Default 10 s.
    pub handshake_timeout_ns: u64,
    /// Pending handshakes of one source address (a pod); beyond, its own oldest is forgotten,
    /// so one pod's SYN flood never pushes out another's. Default 16 384 (a quarter of
    /// `max_handshakes`).
    pub max_handshakes_per_source: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            max_flows: 65_536,
            max_buffered_bytes: 256 << 20,
            ooo_window: 4 << 20,
            idle_timeout_ns: 120 * SECOND_NS,
            hole_timeout_ns: SECOND_NS,
            closed_linger_ns: 5 * SECOND_NS,
            framer: FramerConfig::default(),
            sample_percent: 100.0,
            sample_seed: 0,
            admission: Admission::AckedByV1,
            max_flows_per_source: 16_384,
            max_buffered_per_source: 64 << 20,
            max_handshakes: 65_536,
            handshake_timeout_ns: 10 * SECOND_NS,
            max_handshakes_per_source: 16_384,
        }
    }
}

#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    #[error(
        "max_flows, max_flows_per_source, max_handshakes and max_handshakes_per_source must be \
         at least 1"
    )]
    NoFlows,
    #[error("ooo_window must be within 1..={MAX_WINDOW}, got {0}")]
    Window(u32),
    #[error("max_header_bytes must be at least 64, got {0}")]
    HeaderCap(usize),
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    #[error(transparent)]
    Rewrite(#[from] RewriteError),
}

impl PipelineConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_flows == 0
            || self.max_flows_per_source == 0
            || self.max_handshakes == 0
            || self.max_handshakes_per_source == 0
        {
            return Err(ConfigError::NoFlows);
        }
        if self.ooo_window == 0 || self.ooo_window > MAX_WINDOW {
            return Err(ConfigError::Window(self.ooo_window));
        }
        if self.framer.max_header_bytes < 64 {
            return Err(ConfigError::HeaderCap(self.framer.max_header_bytes));
        }
        self.framer.rewrite.validate()?;
        Ok(())
    }

    /// The settings with `admission` replaced.
    pub fn with_admission(mut self, admission: Admission) -> Self {
        self.admission = admission;
        self
    }

    /// The rewrite mode, for callers that only want to change it.
    pub fn with_rewrite(mut self, rewrite: HostRewrite) -> Self {
        self.framer.rewrite = rewrite;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_as_documented() {
        let c = PipelineConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(
            (c.max_flows, c.max_buffered_bytes, c.ooo_window),
            (65_536, 256 << 20, 4 << 20)
        );
        assert_eq!(c.framer.max_header_bytes, 64 * 1024);
        assert_eq!(c.framer.rewrite, HostRewrite::Suffix("-shadow".into()));
        assert_eq!(c.admission, Admission::AckedByV1);
        assert_eq!(
            (
                c.max_flows_per_source,
                c.max_buffered_per_source,
                c.max_handshakes,
                c.max_handshakes_per_source
            ),
            (16_384, 64 << 20, 65_536, 16_384)
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        let base = PipelineConfig::default;
        let cases = [
            (
                PipelineConfig {
                    max_flows: 0,
                    ..base()
                },
                ConfigError::NoFlows,
            ),
            (
                PipelineConfig {
                    max_flows_per_source: 0,
                    ..base()
                },
                ConfigError::NoFlows,
            ),
            (
                PipelineConfig {
                    max_handshakes_per_source: 0,
                    ..base()
                },
                ConfigError::NoFlows,
            ),
            (
                PipelineConfig {
                    ooo_window: 0,
                    ..base()
                },
                ConfigError::Window(0),
            ),
            (
                PipelineConfig {
                    ooo_window: MAX_WINDOW + 1,
                    ..base()
                },
                ConfigError::Window(MAX_WINDOW + 1),
            ),
            (
                PipelineConfig {
                    framer: FramerConfig {
                        max_header_bytes: 10,
                        ..FramerConfig::default()
                    },
                    ..base()
                },
                ConfigError::HeaderCap(10),
            ),
            (
                base().with_rewrite(HostRewrite::Fixed("a b".into())),
                RewriteError::InvalidText("a b".into()).into(),
            ),
        ];
        for (config, want) in cases {
            assert_eq!(config.validate(), Err(want));
        }
    }
}
