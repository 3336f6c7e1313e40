#!/usr/bin/env bash
# Brief fuzz run for CI: builds the target with the pinned nightly and runs it from the
# committed seeds for SECONDS (default 30). Needs cargo-fuzz (`cargo install cargo-fuzz --locked`).
# A crash leaves its input in fuzz/artifacts/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-30}"
mkdir -p corpus/reassembly_framing
cargo +nightly-2026-05-20 fuzz run reassembly_framing \
    corpus/reassembly_framing seeds/reassembly_framing \
    -- -max_total_time="$seconds" -rss_limit_mb=2048
