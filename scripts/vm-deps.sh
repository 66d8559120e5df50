#!/usr/bin/env bash
# Installs what `make vm-test` needs on top of scripts/deps.sh, from Debian's
# packages: qemu (system emulator for x86_64), a static busybox for the guest's
# initramfs, kmod (depmod for the extracted kernel's modules) and cpio. Kept
# apart from deps.sh so that plain `make test` never installs qemu. Quick when
# everything is already there.
set -euo pipefail

need=()
check() { command -v "$1" >/dev/null 2>&1 || [ -e "$1" ] || need+=("$2"); }
check qemu-system-x86_64 qemu-system-x86
check /bin/busybox busybox-static
check depmod kmod
check cpio cpio
check dpkg-deb dpkg
check apt-get apt
# busybox (dynamic) would not run in the initramfs: it must be the static one.
if [ -e /bin/busybox ] && ldd /bin/busybox >/dev/null 2>&1; then need+=(busybox-static); fi

if [ ${#need[@]} -gt 0 ]; then
  pkgs=$(printf '%s\n' "${need[@]}" | sort -u | tr '\n' ' ')
  echo "vm-deps: installing $pkgs" >&2
  export DEBIAN_FRONTEND=noninteractive
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  $SUDO apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
fi
