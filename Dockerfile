# The mirror node agent's runtime image: the `mirror` binary and the shared libraries it links,
# nothing else (no shell, no package manager). It builds offline: stage the files first, then
# build with the staged directory as the context.
#
#   cargo build --release -p mirror-userspace
#   deploy/image/rootfs.sh target/release/mirror target/image-rootfs
#   podman build -t mirror:dev -f Dockerfile target/image-rootfs
#
# BASE defaults to an empty image; a locally made base (for example a debootstrap tree
# imported with `podman import`) can be given with `--build-arg BASE=<image>`.
ARG BASE=scratch
FROM ${BASE}
COPY . /
# The agent loads BPF programs and attaches them to the node's interfaces: it runs as root,
# with the capabilities the DaemonSet grants (deploy/base/daemonset.yaml says which and why).
USER 0:0
ENTRYPOINT ["/usr/local/bin/mirror"]
