#!/usr/bin/env bash
# Proves the sans-IO cores build and test with nothing but the stable toolchain: PATH holds
# only stable's cargo, rustc and rustdoc (no rustup, so no nightly can be selected, and no
# bpf-linker), and a target directory of its own, so nothing built with the eBPF toolchain is
# reused. Any dependency on the eBPF build would fail here.
set -euo pipefail
cd "$(dirname "$0")/.."
stable="$(rustc --print sysroot)"
case "$stable" in
*nightly*) echo "expected the stable toolchain, got $stable" >&2; exit 1 ;;
esac
bin="$(mktemp -d)"
trap 'rm -rf "$bin"' EXIT
for tool in cargo rustc rustdoc; do
    ln -s "$stable/bin/$tool" "$bin/$tool"
done
env -i HOME="$HOME" PATH="$bin:/usr/bin:/bin" CARGO_TARGET_DIR="$PWD/target/cores-only" \
    RUSTC="$bin/rustc" RUSTDOC="$bin/rustdoc" \
    cargo test --package mirror-cores --quiet
if env -i PATH="$bin:/usr/bin:/bin" sh -c 'command -v bpf-linker || command -v rustup' >/dev/null; then
    echo "bpf-linker or rustup was reachable: the check proves nothing" >&2
    exit 1
fi
echo "mirror-cores: built and tested with stable only (no rustup, nightly or bpf-linker)"
