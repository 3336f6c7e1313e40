//! The TC classifier that copies TCP packets bound for a target into the ring buffer, and the
//! headers of the target's answers (v1's side of the connection).
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

/// On the forward hook, emits the packet if it is TCP to a target and carries something a
/// stream rebuilder needs: payload, SYN, FIN or RST. On the reverse hook (when enabled), emits
/// the headers of every TCP packet from a target. Every outcome other than "not ours" is
/// counted. The node's other traffic leaves at the port pre-filter, before the trie.
#[inline(always)]
fn capture(ctx: &TcContext, hook: u32) {
    count(Counter::Seen);
    let forward = hook == maps::forward_direction();
    if !forward && !maps::reverse_enabled() {
        return;
    }
    let segment = match parse::ipv4_in_place(ctx, forward, maps::is_target_port) {
        Some(parse::InPlace::Unwanted) => return,
        Some(parse::InPlace::Segment(segment)) => segment,
        None => {
            let Some(segment) = parse::tcp_segment(ctx) else {
                return;
            };
            if !maps::is_target_port(segment.target_port(forward)) {
                return;
            }
            segment
        }
    };
    if !maps::is_target(&segment.target_key(forward)) {
        return;
    }
    let config = maps::config();
    if maps::is_own_traffic(ctx, &config) {
        count(Counter::OwnTraffic);
        return;
    }
    if forward {
        count(Counter::Matched);
        if !segment.carries_stream_data() {
            count(Counter::PureAck);
            return;
        }
        emit::packet(ctx, &config, hook);
    } else {
        count(Counter::ReverseMatched);
        emit::headers(ctx, &config, hook, segment.headers_len());
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this, so it is never run.
    loop {}
}
