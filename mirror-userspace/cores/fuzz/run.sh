#!/usr/bin/env bash
# Brief fuzz run for CI: builds each target with the pinned nightly and runs it from the
# committed seeds for SECONDS (default 30). Needs cargo-fuzz (`cargo install cargo-fuzz --locked`).
# Every input has a time limit (TIMEOUT seconds, default 5; a typical input takes about a millisecond): an input that makes the cores
# slower than linear fails the run like a crash. Inputs up to 128 KiB, so 64 KiB heads and
# megabyte windows are reached. A crash or timeout leaves its input in fuzz/artifacts/ and
# fails the script.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-30}"
timeout="${TIMEOUT:-5}"
# The nightly pinned for the eBPF crate (its one pin) also has libFuzzer's sanitizer support.
toolchain="$(sed -n 's/^channel *= *"\(.*\)"/\1/p' ../../../mirror-ebpf/rust-toolchain.toml)"
# Each target gets SECONDS.
for target in reassembly_framing h2_client; do
    mkdir -p "corpus/$target"
    cargo "+$toolchain" fuzz run "$target" \
        "corpus/$target" "seeds/$target" \
        -- -max_total_time="$seconds" -timeout="$timeout" -max_len=131072 -rss_limit_mb=2048
done
