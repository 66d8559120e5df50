#!/usr/bin/env bash
# Installs what `make vagrant-box` and `make vagrant-test` need on the host,
# from Debian's packages: Vagrant with the libvirt provider, libvirt's daemon,
# qemu, and debootstrap, qemu-img, sfdisk for the local box. Kept apart from
# deps.sh (plain `make test` needs none of it). Quick when everything is there.
set -euo pipefail

need=()
check() { command -v "$1" >/dev/null 2>&1 || [ -e "$1" ] || need+=("$2"); }
check vagrant vagrant
check /usr/share/vagrant-plugins/plugins.d/vagrant-libvirt.json vagrant-libvirt
check libvirtd libvirt-daemon-system
check virsh libvirt-clients
check qemu-system-x86_64 qemu-system-x86
check qemu-img qemu-utils
check dnsmasq dnsmasq-base
check iptables iptables
check debootstrap debootstrap
check sfdisk fdisk
check mkfs.ext4 e2fsprogs

if [ ${#need[@]} -gt 0 ]; then
  pkgs=$(printf '%s\n' "${need[@]}" | sort -u | tr '\n' ' ')
  echo "vagrant-deps: installing $pkgs" >&2
  export DEBIAN_FRONTEND=noninteractive
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  $SUDO apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
fi
