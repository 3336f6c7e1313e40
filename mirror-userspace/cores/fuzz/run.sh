#!/usr/bin/env bash
# Brief fuzz run for CI: builds the target with the pinned nightly and runs it from the
# committed seeds for SECONDS (default 30). Needs cargo-fuzz (`cargo install cargo-fuzz --locked`).
# A crash leaves its input in fuzz/artifacts/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-30}"
# The nightly pinned for the eBPF crate (its one pin) also has libFuzzer's sanitizer support.
toolchain="$(sed -n 's/^channel *= *"\(.*\)"/\1/p' ../../../mirror-ebpf/rust-toolchain.toml)"
mkdir -p corpus/reassembly_framing
cargo "+$toolchain" fuzz run reassembly_framing \
    corpus/reassembly_framing seeds/reassembly_framing \
    -- -max_total_time="$seconds" -rss_limit_mb=2048
