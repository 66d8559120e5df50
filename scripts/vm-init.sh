#!/bin/sh
# The guest side of scripts/vm-test.sh, in two stages (POSIX sh).
#
# Stage 1 runs as /init of the initramfs (busybox sh, PID 1): loads the virtio,
# 9p and overlay modules (listed dependencies first in /modules.order), mounts
# the host's / read-only over 9p (tag hostroot) under a tmpfs overlay and
# switches root to it, running this same file from the host's checkout as
# stage 2 (bash, PID 1) with the settings of /neuv-vm.conf in its environment.
#
# Stage 2 prepares what the kernel suites expect of a host (proc, sys, bpffs,
# tmpfs /run and /tmp, devtmpfs /dev, loopback, the package's modules on
# /usr/lib/modules, the tc/veth modules loaded), runs mocha in the repo with
# NEUV_BPF_REQUIRE_KERNEL=1, writes the kernel version and the exit code to the
# writable 9p share (tag vmout) and powers off through sysrq. It also prints
# NEUV_VM_KERNEL=... and NEUV_VM_EXIT=<code> marker lines on the console.
# Nothing here touches the host: every write lands in the overlay's tmpfs.

MSIZE=512000
NINEP="trans=virtio,version=9p2000.L,msize=$MSIZE"

poweroff_now() {
  echo o >/proc/sysrq-trigger
  # PID 1 must not exit (that is a panic); wait for the power-off.
  # (2>/dev/null: the host root may already be gone while powering off.)
  while :; do sleep 60 2>/dev/null; done
}

if [ "${1:-}" != stage2 ]; then
  # ---------------- stage 1: initramfs ----------------
  export PATH=/bin
  mount -t proc proc /proc
  mount -t sysfs sysfs /sys
  mount -t devtmpfs devtmpfs /dev
  fail() {
    echo "vm-init: $*"
    echo "NEUV_VM_EXIT=1"
    poweroff_now
  }
  set -a
  . /neuv-vm.conf
  set +a
  while read -r m; do
    insmod "/modules/$m.ko" || fail "insmod $m failed"
  done </modules.order
  mount -t 9p -o "$NINEP,ro,cache=loose" hostroot /lower || fail "cannot mount the host root (9p hostroot)"
  mount -t tmpfs -o mode=0755 tmpfs /ovl || fail "tmpfs"
  mkdir -p /ovl/upper /ovl/work
  mount -t overlay -o lowerdir=/lower,upperdir=/ovl/upper,workdir=/ovl/work overlay /newroot ||
    fail "cannot mount the overlay root"
  for d in dev proc sys; do mount --move "/$d" "/newroot/$d" || fail "move /$d"; done
  [ -x /newroot/bin/bash ] || fail "no /bin/bash on the host root"
  [ -f "/newroot$NEUV_VM_REPO/scripts/vm-init.sh" ] || fail "no $NEUV_VM_REPO/scripts/vm-init.sh on the host root"
  exec switch_root /newroot /bin/bash "$NEUV_VM_REPO/scripts/vm-init.sh" stage2
  fail "switch_root failed"
fi

# ---------------- stage 2: the host's root, as PID 1 ----------------
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8
if [ "${NEUV_VM_COLOR:-0}" = 1 ]; then export TERM=linux; else export TERM=dumb; fi
# The console is a serial line: plain \n, so the host's log has no \r.
stty -onlcr 2>/dev/null || true

out=/run/neuv-vm
finish() {
  echo "$1" >"$out/exit-code" 2>/dev/null || echo "vm-init: cannot write the exit code to the vmout share"
  echo "NEUV_VM_EXIT=$1"
  sync
  umount "$out" 2>/dev/null
  poweroff_now
}
must() { "$@" || { echo "vm-init: failed: $*"; finish 1; }; }

must mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mkdir -p /run/lock "$out"
must mount -t 9p -o "$NINEP" vmout "$out"
# No tmpfs on /tmp: a checkout (or the kernel cache) under the host's /tmp
# must stay visible; writes there land in the overlay's tmpfs anyway.
chmod 1777 /tmp 2>/dev/null || true
mkdir -p /dev/pts /dev/shm
mount -t devpts -o mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
must mount -t bpf -o mode=0700 bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
# /var/run is a symlink to /run on Debian; make sure netns and locks are writable.
[ -L /var/run ] || { mkdir -p /var/run && mount -t tmpfs tmpfs /var/run; }
# The package's modules (NEUV_VM_MODDIR is its lib/modules/<version>, depmod'ed).
mkdir -p "/usr/lib/modules/$(uname -r)"
must mount --bind "$NEUV_VM_MODDIR" "/usr/lib/modules/$(uname -r)"
hostname neuv-vm 2>/dev/null
ip link set lo up
ulimit -l unlimited 2>/dev/null
for m in veth sch_ingress cls_bpf act_mirred act_pedit; do
  modprobe -q "$m" || echo "vm-init: modprobe $m failed (continuing)"
done

kver=$(uname -r)
echo "$kver" >"$out/kernel"
read -r up _ </proc/uptime
echo "${up%.*}" >"$out/boot-seconds"
echo "NEUV_VM_KERNEL=$kver (up ${up}s; $(nproc) CPUs, $(awk '/MemTotal/ {print int($2/1024) " MiB"}' /proc/meminfo))"

must cd "$NEUV_VM_REPO"
set -f # mocha expands the globs itself
color=--no-color
[ "${NEUV_VM_COLOR:-0}" = 1 ] && color=--color
if [ -n "${NEUV_VM_GREP:-}" ]; then
  set -- --grep "$NEUV_VM_GREP"
else
  set --
fi
[ -n "${NEUV_VM_LOG_LEVEL:-}" ] && export NEUV_BPF_LOG_LEVEL="$NEUV_VM_LOG_LEVEL"
# VM_ENV's settings (checked by vm-test.sh: NEUV_NAME=value, no spaces).
for kv in ${NEUV_VM_ENV:-}; do export "$kv"; done
# Slower than the host (emulation): scale mocha's timeouts, and tell the tests.
export NEUV_BPF_TEST_TIME_SCALE="${NEUV_VM_TIME_SCALE:-1}"
if [ "${NEUV_VM_TIME_SCALE:-1}" -gt 1 ]; then
  set -- --require "$NEUV_VM_REPO/scripts/vm-mocha-scale.js" "$@"
fi
# shellcheck disable=SC2086 # NEUV_VM_TESTS is a list of files/globs
# (node_modules/.bin/mocha is what `npx --no-install mocha` runs, without
# npm's start-up, which takes seconds under emulation.)
NEUV_BPF_REQUIRE_KERNEL=1 node_modules/.bin/mocha --timeout "$NEUV_VM_MOCHA_TIMEOUT" --reporter dist/test/timing-reporter.js \
  "$color" "$@" $NEUV_VM_TESTS </dev/null
rc=$?
set +f
finish "$rc"
