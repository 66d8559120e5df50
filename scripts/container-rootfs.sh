#!/usr/bin/env bash
# Builds the root filesystem tarball of the container test image
# (test/containers.test.ts imports it with `podman import`): busybox from
# Debian's busybox-static and our static tools (tools/echo-server.c,
# tools/udp-burst.c), each as /bin/<its name>, nothing from the internet.
# Usage: container-rootfs.sh OUT.tar TOOL...
set -euo pipefail
out=$1
shift
busybox=/bin/busybox
if [ ! -x "$busybox" ] || ldd "$busybox" >/dev/null 2>&1; then
  echo "container-rootfs: $busybox is missing or not static: install busybox-static (make deps)" >&2
  exit 1
fi
dir=$(mktemp -d)
chmod 755 "$dir"
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/bin" "$dir/etc" "$dir/tmp" "$dir/proc" "$dir/sys" "$dir/dev"
cp "$busybox" "$dir/bin/busybox"
for a in sh sleep cat ip ping nc ls; do ln -s busybox "$dir/bin/$a"; done
for t in "$@"; do cp "$t" "$dir/bin/$(basename "$t")"; done
echo 'root:x:0:0:root:/:/bin/sh' > "$dir/etc/passwd"
echo 'root:x:0:' > "$dir/etc/group"
chmod 1777 "$dir/tmp"
# Reproducible: fixed owner, order and times.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$dir" -cf "$out.tmp" .
mv "$out.tmp" "$out"
