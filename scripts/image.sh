#!/usr/bin/env bash
# The service's OCI image (make image, docs/deploy.md): the root filesystem
# tarball scripts/container-rootfs.sh wrote, imported with `podman import`
# (no base image: nothing is pulled) and saved as an OCI archive, which
# `podman load -i` (or skopeo, or a registry push) takes. podman works in a
# private storage under a temporary directory: the machine's own podman
# storage is not touched.
# Usage: image.sh ROOTFS.tar OUT.oci.tar NAME:TAG
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: image.sh ROOTFS.tar OUT.oci.tar NAME:TAG" >&2; exit 2; }
rootfs=$1
out=$2
name=$3
command -v podman >/dev/null || { echo "image: podman is not installed (Debian package podman: make deps)" >&2; exit 1; }
# The root filesystem is reproducible (container-rootfs.sh): when it, this
# script and the name are those of the archive there, the archive is kept.
key="$(sha256sum <"$rootfs" | cut -d' ' -f1) $(sha256sum <"$0" | cut -d' ' -f1) $name"
if [ -f "$out" ] && [ "$(cat "$out.key" 2>/dev/null)" = "$key" ]; then
  touch "$out"
  echo "image: $out is up to date (the same root filesystem)" >&2
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
p=(podman --root "$tmp/root" --runroot "$tmp/run" --storage-driver vfs --network-backend netavark --events-backend file --cgroup-manager cgroupfs)
# The image's configuration: the service, on the default pin root unless
# NEUV_BPF_PIN_ROOT or --bpffs says otherwise; arguments after the image
# name are serve's (--metrics, --dp, --offload...).
"${p[@]}" import -q \
  --change 'ENTRYPOINT ["/usr/bin/node", "/opt/neuv-bpf/bin/neuv-bpf", "serve"]' \
  --change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV NEUV_BPF_LOG_LEVEL=info' \
  --change 'WORKDIR /' \
  --change 'STOPSIGNAL SIGTERM' \
  --change "LABEL org.opencontainers.image.title=neuv-bpf org.opencontainers.image.version=${name##*:} org.opencontainers.image.description=neuv-bpf\\ serve:\\ the\\ datapath\\ service\\ (docs/deploy.md)" \
  "$rootfs" "$name" >/dev/null
rm -f "$out.tmp"
"${p[@]}" save -q --format oci-archive -o "$out.tmp" "$name"
mv "$out.tmp" "$out"
echo "$key" >"$out.key"
