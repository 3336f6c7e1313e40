//! The TC classifier that copies TCP packets bound for a target into the ring buffer.
//!
//! It never changes or drops a packet: every path returns `TC_ACT_UNSPEC`, which is `TCX_NEXT`
//! under TCX and "continue with the next filter" for a direct-action cls_bpf filter, so the
//! programs attached after ours (Cilium, Calico) still run.
#![no_std]
#![no_main]

mod emit;
mod maps;
mod parse;

use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};
use mirror_common::{Counter, DIRECTION_EGRESS, DIRECTION_INGRESS};

use crate::maps::count;

#[classifier]
pub fn mirror_ingress(ctx: TcContext) -> i32 {
    capture(&ctx, DIRECTION_INGRESS);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn mirror_egress(ctx: TcContext) -> i32 {
    capture(&ctx, DIRECTION_EGRESS);
    TC_ACT_UNSPEC
}

/// Emits the packet if it is TCP to a target and carries something a stream rebuilder needs:
/// payload, SYN, FIN or RST. Every outcome other than "not ours" is counted.
#[inline(always)]
fn capture(ctx: &TcContext, direction: u32) {
    count(Counter::Seen);
    let Some(segment) = parse::tcp_segment(ctx) else {
        return;
    };
    if !maps::is_target(&segment.target) {
        return;
    }
    if maps::is_own_traffic(ctx) {
        count(Counter::OwnTraffic);
        return;
    }
    count(Counter::Matched);
    if !segment.carries_stream_data() {
        count(Counter::PureAck);
        return;
    }
    emit::packet(ctx, direction);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this, so it is never run.
    loop {}
}
