#!/bin/sh
# Stages the runtime image's files: BINARY at /usr/local/bin/mirror and every shared library
# `ldd` says it loads (the dynamic loader included), each at the path the binary looks for it.
# Usage: deploy/image/rootfs.sh BINARY DIR   (DIR is emptied first)
set -eu

if [ "$#" -ne 2 ]; then
    echo "usage: $0 BINARY DIR" >&2
    exit 2
fi
binary=$1
dir=$2
[ -x "$binary" ] || { echo "$0: $binary is not an executable file" >&2; exit 1; }

rm -rf "$dir"
mkdir -p "$dir/usr/local/bin"
cp "$binary" "$dir/usr/local/bin/mirror"

# ldd prints `name => /path (addr)` for libraries and `/path (addr)` for the loader; the vDSO
# has no file. A statically linked binary makes ldd fail with "not a dynamic executable".
libs=$(ldd "$binary" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }') || true
for lib in $libs; do
    mkdir -p "$dir$(dirname "$lib")"
    # -L: the image holds the library itself, not a symlink into a file it lacks.
    cp -L "$lib" "$dir$lib"
done
# The agent writes nothing to disk, but a writable /tmp is what libraries expect to find.
mkdir -p "$dir/tmp"
chmod 1777 "$dir/tmp"
echo "staged $(find "$dir" -type f | wc -l) files in $dir"
