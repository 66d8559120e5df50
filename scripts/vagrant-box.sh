#!/usr/bin/env bash
# Builds a Debian 12 (bookworm, kernel 6.1) box for vagrant-libvirt from
# Debian's packages and the npm registry alone, for machines that cannot
# download debian/bookworm64 from Vagrant Cloud: `make vagrant-box`, used by
# `make vagrant-test` with NEUV_BPF_VAGRANT_BOX=local (docs/vagrant.md).
#
#   build/vagrant/neuv-bpf-bookworm64.box    the box (tar: metadata.json, Vagrantfile, box.img)
#
# How, without loop devices or mounts of the image:
#   1. debootstrap bookworm into a directory, then apt-get install in a chroot:
#      linux-image-amd64, openssh-server, sudo, rsync, grub-pc-bin and every
#      Debian package scripts/deps.sh installs (clang, libbpf-dev, bpftool...),
#      so provisioning needs no network.
#   2. Node $NODE_VERSION and npm into /usr/local by scripts/vagrant-node.sh
#      (nodejs.org when reachable, else the npm registry).
#   3. the vagrant user (password vagrant, sudo without password, Vagrant's
#      well-known insecure public key, which vagrant replaces on first up),
#      DHCP on eth0 by systemd-networkd, ssh host keys made on first boot.
#   4. a raw disk: an MBR with one ext4 partition from 1 MiB, filled by
#      `mkfs.ext4 -d <rootfs>` at that offset; GRUB's boot.img in the MBR and a
#      core.img (grub-mkimage: biosdisk, part_msdos, ext2) in the gap after it,
#      as grub-install would put them; /boot/grub/grub.cfg boots /vmlinuz.
#   5. qemu-img convert to qcow2 (box.img), metadata.json (format qcow2,
#      virtual_size in GB), a Vagrantfile, tar.
#
# Environment (optional): NEUV_BPF_DEBIAN_MIRROR (default http://deb.debian.org/debian),
# NEUV_BPF_DEBIAN_SECURITY (default http://deb.debian.org/debian-security),
# NEUV_BPF_BOX_SIZE_GB (virtual disk size, default 16), NEUV_BPF_NODE_VERSION,
# NEUV_BPF_NODE_SOURCE (see scripts/vagrant-node.sh).
# Needs root (debootstrap, chroot). Time and size measured: docs/vagrant.md (Measured).
set -euo pipefail
{
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=$REPO/build/vagrant
BOX=$OUT/neuv-bpf-bookworm64.box
MIRROR=${NEUV_BPF_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${NEUV_BPF_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
SIZE_GB=${NEUV_BPF_BOX_SIZE_GB:-16}
NODE_VERSION=${NEUV_BPF_NODE_VERSION:-20.20.2}

say() { echo "vagrant-box: $*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap and chroot)"
[ "$(uname -m)" = x86_64 ] || die "only x86_64 hosts are supported"
for c in debootstrap chroot qemu-img mkfs.ext4 sfdisk tar; do
  command -v "$c" >/dev/null || die "$c missing (run scripts/vagrant-deps.sh)"
done
case $SIZE_GB in '' | *[!0-9]*) die "NEUV_BPF_BOX_SIZE_GB must be a whole number" ;; esac
[ "$SIZE_GB" -ge 4 ] || die "NEUV_BPF_BOX_SIZE_GB must be at least 4"

# The Debian packages scripts/deps.sh would install (the last word of its
# `check <command-or-file> <package>` lines, and its literal need+=(<package>)),
# plus what the box itself needs.
DEPS_PKGS=$({
  awk '$1 == "check" && NF >= 3 {print $NF}' "$REPO/scripts/deps.sh"
  grep -o 'need+=([a-z0-9][a-z0-9.+-]*)' "$REPO/scripts/deps.sh" | sed 's/need+=(\(.*\))/\1/'
} | sort -u | tr '\n' ' ')
[ -n "$DEPS_PKGS" ] || die "cannot read the package list of scripts/deps.sh"
BOX_PKGS="linux-image-amd64 initramfs-tools grub-pc-bin systemd-sysv udev dbus kmod openssh-server sudo rsync
  ca-certificates curl jq xz-utils make iproute2 netbase less procps python3"

mkdir -p "$OUT"
work=$(mktemp -d "$OUT/.box.XXXXXX")
# The root file system after debootstrap, apt-get and Node is cached in
# build/vagrant/rootfs, keyed by what went into it: a rebuild after a change to
# the configuration below takes a minute or two instead of ten.
root=$OUT/rootfs
key="bookworm $MIRROR $SECURITY node $NODE_VERSION $(sha256sum "$REPO/scripts/vagrant-node.sh" | cut -c1-16) packages $BOX_PKGS $DEPS_PKGS"
key=$(echo $key)
mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount "${mounted[$i]}" 2>/dev/null || umount -l "${mounted[$i]}" 2>/dev/null || true; done
  mounted=()
  # debootstrap may leave its own proc/sys mounts behind after a failure.
  for m in "$root/proc" "$root/sys"; do
    if mountpoint -q "$m" 2>/dev/null; then umount "$m" 2>/dev/null || umount -l "$m" || true; fi
  done
  rm -rf "$work"
  [ -f "$root.ok" ] || rm -rf "$root"
}
trap cleanup EXIT
trap 'say interrupted; exit 130' INT TERM HUP
start=$(date +%s)

mount_chroot() {
  local fs m
  for fs in proc sysfs devpts; do
    case $fs in proc) m=$root/proc ;; sysfs) m=$root/sys ;; devpts) m=$root/dev/pts ;; esac
    mkdir -p "$m"
    mount -t "$fs" "neuv-box-$fs" "$m"
    mounted+=("$m")
  done
}
umount_chroot() {
  local i m
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount "${mounted[$i]}"; done
  mounted=()
  for m in proc sys dev/pts; do mountpoint -q "$root/$m" && die "$root/$m is still mounted"; done
  return 0
}
in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"; }

# --- 1. root file system (cached) ---------------------------------------------------
if [ -f "$root.ok" ] && [ "$(cat "$root.ok")" = "$key" ]; then
  say "root file system from the cache ($root)"
else
rm -rf "$root" "$root.ok"
say "debootstrap bookworm from $MIRROR"
debootstrap --variant=minbase --arch=amd64 --components=main bookworm "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
  { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }

cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY bookworm-security main
EOF
# No service starts inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
mount_chroot
cp /etc/resolv.conf "$root/etc/resolv.conf"

say "apt-get install (kernel, ssh, sudo, rsync, grub, and $DEPS_PKGS)"
{
  in_root apt-get update -q &&
    in_root apt-get -y -q dist-upgrade &&
    # shellcheck disable=SC2086
    in_root apt-get install -y -q --no-install-recommends $BOX_PKGS $DEPS_PKGS
} >"$work/apt.log" 2>&1 || { tail -30 "$work/apt.log" >&2; die "apt-get in the chroot failed (log above)"; }
# --- 2. Node ----------------------------------------------------------------------
PREFIX=$root/usr/local NODE_VERSION=$NODE_VERSION "$REPO/scripts/vagrant-node.sh"
in_root apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log
umount_chroot
echo "$key" >"$root.ok"
fi

kver=$(ls "$root/lib/modules" | sort -V | tail -1)
[ -n "$kver" ] && [ -f "$root/boot/vmlinuz-$kver" ] && [ -f "$root/boot/initrd.img-$kver" ] ||
  die "no kernel or initramfs in the root file system"
say "kernel $kver"

# --- 3. configuration ---------------------------------------------------------------
mount_chroot
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
uuid=$(cat /proc/sys/kernel/random/uuid)
echo neuv-bpf >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tneuv-bpf\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
printf 'UUID=%s\t/\text4\terrors=remount-ro\t0\t1\n' "$uuid" >"$root/etc/fstab"
mkdir -p "$root/etc/systemd/network"
printf '[Match]\nName=eth* en*\n\n[Network]\nDHCP=yes\n' >"$root/etc/systemd/network/50-dhcp.network"
in_root systemctl enable systemd-networkd.service >/dev/null 2>&1 || die "cannot enable systemd-networkd"
# Every VM gets its own ssh host keys, made on first boot.
rm -f "$root"/etc/ssh/ssh_host_*
# (ssh.service's own ExecStartPre, sshd -t, fails without keys: replaced.)
mkdir -p "$root/etc/systemd/system/ssh.service.d"
printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' \
  >"$root/etc/systemd/system/ssh.service.d/host-keys.conf"
printf 'UseDNS no\n' >"$root/etc/ssh/sshd_config.d/vagrant.conf"
# The vagrant user, as Vagrant's base box conventions ask.
in_root id vagrant >/dev/null 2>&1 || in_root useradd -m -s /bin/bash -U vagrant
echo 'vagrant:vagrant' | in_root chpasswd
printf 'vagrant ALL=(ALL) NOPASSWD: ALL\nDefaults:vagrant !requiretty\n' >"$root/etc/sudoers.d/vagrant"
chmod 440 "$root/etc/sudoers.d/vagrant"
install -d -m 700 "$root/home/vagrant/.ssh"
# Vagrant's well-known insecure public key (keys/vagrant.pub in Vagrant's sources).
echo 'ssh-rsa AAAAB3NzaC1yc2EAAAABIwAAAQEA6NF8iallvQVp22WDkTkyrtvp9eWW6A8YVr+kz4TjGYe7gHzIw+niNltGEFHzD8+v1I2YJ6oXevct1YeS0o9HZyN1Q9qgCgzUFtdOKLv6IedplqoPkcmF0aYet2PkEDo3MlTBckFXPITAMzF8dJSIFo9D8HfdOV0IAdx4O7PtixWKn5y2hMNG0zQPyUecp4pzC6kivAIhyfHilFR61RGL+GPXQ2MWZWFYbAGjyiYJnAmCP3NOTd0jMZEnDkbUvxhMmBYSdETk1rRgm+R4LOzFUGaHqHDLKLX+FIPKcF96hrucXzcWyLbIbEgE98OHlnVYCzRdK8jlqm8tehUc9c9WhQ== vagrant insecure public key' \
  >"$root/home/vagrant/.ssh/authorized_keys"
chmod 600 "$root/home/vagrant/.ssh/authorized_keys"
in_root chown -R vagrant:vagrant /home/vagrant/.ssh
# A fresh machine id on first boot; no host resolver config baked in.
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
: >"$root/etc/resolv.conf"

# GRUB: modules under /boot/grub (normal.mod loads the rest on demand), a fixed
# grub.cfg booting the kernel symlinks Debian keeps up to date, and a core.img.
mkdir -p "$root/boot/grub"
cp -r "$root/usr/lib/grub/i386-pc" "$root/boot/grub/"
if [ -L "$root/vmlinuz" ] && [ -L "$root/initrd.img" ]; then kernel=/vmlinuz initrd=/initrd.img
else kernel=/boot/vmlinuz-$kver initrd=/boot/initrd.img-$kver; fi
cat >"$root/boot/grub/grub.cfg" <<EOF
set timeout=0
set default=0
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
menuentry "Debian 12 (neuv-bpf box)" {
  search --no-floppy --fs-uuid --set=root $uuid
  linux $kernel root=UUID=$uuid ro console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0
  initrd $initrd
}
EOF
in_root grub-mkimage -O i386-pc -o /tmp/core.img -p '(hd0,msdos1)/boot/grub' \
  biosdisk part_msdos ext2 normal linux search search_fs_uuid serial terminal configfile echo
mv "$root/tmp/core.img" "$work/core.img"
cp "$root/usr/lib/grub/i386-pc/boot.img" "$work/boot.img"

rm -rf "$root"/tmp/*
rm -f "$root/usr/sbin/policy-rc.d"
umount_chroot

# --- 4. the disk ------------------------------------------------------------------------
say "disk image (${SIZE_GB} GB, ext4 from $(du -sh "$root" | cut -f1) of files)"
raw=$work/disk.raw
truncate -s "${SIZE_GB}G" "$raw"
echo 'start=2048, type=83, bootable' | sfdisk -q "$raw"
part_sectors=$(( SIZE_GB * 1024 * 1024 * 2 - 2048 ))
mkfs.ext4 -q -F -L root -U "$uuid" -E offset=$((2048 * 512)) -d "$root" "$raw" "$(( part_sectors / 2 ))k" ||
  die "mkfs.ext4 -d failed"
core_size=$(stat -c %s "$work/core.img")
[ "$core_size" -le $((2047 * 512)) ] || die "core.img ($core_size bytes) does not fit before the partition"
dd if="$work/boot.img" of="$raw" bs=440 count=1 conv=notrunc status=none
dd if="$work/core.img" of="$raw" bs=512 seek=1 conv=notrunc status=none

# --- 5. the box ----------------------------------------------------------------------------
mkdir -p "$work/box"
qemu-img convert -f raw -O qcow2 "$raw" "$work/box/box.img"
rm -f "$raw"
printf '{\n  "provider": "libvirt",\n  "format": "qcow2",\n  "virtual_size": %s\n}\n' "$SIZE_GB" >"$work/box/metadata.json"
cat >"$work/box/Vagrantfile" <<'EOF'
# neuv-bpf's local Debian 12 box (scripts/vagrant-box.sh): GRUB on a virtio disk.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.disk_bus = "virtio"
  end
end
EOF
printf '{\n  "author": "neuv-bpf scripts/vagrant-box.sh",\n  "kernel": "%s",\n  "node": "%s",\n  "built": "%s"\n}\n' \
  "$kver" "$NODE_VERSION" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$work/box/info.json"
tar -cf "$work/box.tar" -C "$work/box" metadata.json Vagrantfile info.json box.img
mv -f "$work/box.tar" "$BOX"
say "$BOX: $(du -h "$BOX" | cut -f1), kernel $kver, node $NODE_VERSION, $(( $(date +%s) - start ))s"
exit 0
}
