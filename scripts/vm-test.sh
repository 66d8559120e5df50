#!/usr/bin/env bash
# Runs the project's mocha suites (unit + kernel) inside a qemu VM booted on a
# Debian kernel package, e.g. linux-image-6.1.0-*-amd64-unsigned for
# KERNEL=6.1. Used by `make vm-test KERNEL=6.1` (after `make build`).
#
# How: the package is `apt-get download`ed and `dpkg -x`ed under build/vm/
# (cached; a second run downloads nothing), a tiny initramfs (static busybox +
# the virtio/9p/overlay modules of that kernel) mounts the host's / read-only
# over 9p under a tmpfs overlay and switches root to it, so the guest runs the
# host's own node, iproute2, bpftool and this checkout at the same path, with
# the package's modules bind-mounted on /usr/lib/modules. Nothing the guest
# writes reaches the host, except the exit code on a third, writable 9p share.
# See scripts/vm-init.sh for the guest side.
#
# Environment (all optional):
#   KERNEL=6.1           kernel series; the newest linux-image-$KERNEL*-amd64-unsigned apt knows
#   KERNEL_PKG=NAME      an exact package instead (e.g. linux-image-6.1.0-56-amd64-unsigned)
#   VM_TESTS='...'       mocha files/globs, relative to the repo; default: every kernel suite the
#                        guest can run (dist/test/*.test.js calling requireKernel, but not those
#                        running containers, see below); all: dist/test/**/*.test.js
#   VM_MOCHA_TIMEOUT=ms  per-test mocha timeout before scaling (default 120000, as make test)
#   VM_TIME_SCALE=N      multiplies every mocha timeout in the guest (default 4 with tcg, 1 with kvm)
#   VM_GREP=PATTERN      passed to mocha --grep
#   VM_ENV='NEUV_X=v ...' test settings for the guest's mocha (NEUV_* names only; values
#                        without spaces or quotes), e.g. VM_ENV=NEUV_DIFF_FRAMES=20000
#   VM_ACCEL=kvm|tcg     default: kvm when /dev/kvm is usable, else tcg (emulation)
#   VM_QEMU_CPU=MODEL    qemu -cpu (default: host with kvm, qemu64 with tcg)
#   VM_MEM=3G VM_CPUS=2  guest size
#   VM_TIMEOUT=1200      seconds for the whole VM run (boot + tests); exit 124 past it
# Exit code: mocha's (0 when all passed), 124 on timeout, 1 on a VM failure.
set -euo pipefail
# The whole script is one block, read before it runs: editing this file while
# a run is under way cannot change what that run executes.
{
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"

KERNEL=${KERNEL:-${1:-6.1}}
VM_TESTS=${VM_TESTS:-}
VM_MOCHA_TIMEOUT=${VM_MOCHA_TIMEOUT:-120000}
VM_GREP=${VM_GREP:-}
VM_ENV=${VM_ENV:-}
VM_MEM=${VM_MEM:-3G}
VM_CPUS=${VM_CPUS:-2}
VM_TIMEOUT=${VM_TIMEOUT:-1200}
CACHE=$REPO/build/vm

say() { echo "vm-test: $*" >&2; }
die() { say "$*"; exit 1; }

[ "$(uname -m)" = x86_64 ] || die "only x86_64 hosts are supported"
for c in qemu-system-x86_64 busybox depmod cpio dpkg-deb apt-get apt-cache gzip timeout; do
  command -v "$c" >/dev/null || die "$c missing (run scripts/vm-deps.sh)"
done
BUSYBOX=$(command -v busybox)
if ldd "$BUSYBOX" >/dev/null 2>&1; then die "$BUSYBOX is not static (install busybox-static)"; fi
[ -f build/neuv.bpf.o ] && [ -d dist/test ] || die "run 'make build' first"
for kv in $VM_ENV; do
  [[ $kv =~ ^NEUV_[A-Z0-9_]+=[A-Za-z0-9_.,:/+-]*$ ]] || die "VM_ENV: '$kv' is not NEUV_NAME=value"
done

# Default: every kernel suite (a compiled suite that calls requireKernel) but
# those running containers under podman (each imports test/podman.ts), which
# the guest is not set up for; they test the runtimes' hooks, not the kernel,
# and run on the host. The unit suites do not depend on the kernel and run on the host.
# VM_TESTS names any file, those too; VM_TESTS=all: everything `make test` runs.
case $VM_TESTS in
  all) VM_TESTS='dist/test/**/*.test.js' ;;
  '')
    kernel_suites=$(grep -l -w requireKernel dist/test/*.test.js 2>/dev/null || true)
    podman_suites=$(grep -l -F 'require("./podman")' $kernel_suites /dev/null 2>/dev/null || true)
    VM_TESTS=$(printf '%s\n' $kernel_suites | grep -v -x -F "${podman_suites:-/dev/null}" | tr '\n' ' ' || true)
    VM_TESTS=${VM_TESTS% }
    [ -z "$podman_suites" ] || say "left out, as they run podman: $(printf '%s ' $podman_suites)"
    [ -n "$VM_TESTS" ] || VM_TESTS='dist/test/**/*.test.js'
    ;;
esac

# --- 1. the kernel package, cached under build/vm/<package>_<version>/ -------
# Which package: the newest candidate among linux-image-$KERNEL[.-]*-amd64-unsigned
# (not the cloud/rt flavours), from apt's local lists.
pick_package() {
  local re pkgs p v best="" bestv=""
  re="^linux-image-${KERNEL//./\\.}[.-][0-9a-z.+-]*-amd64-unsigned\$"
  pkgs=$(apt-cache pkgnames linux-image- 2>/dev/null | grep -E "$re" | grep -Ev -- '-(cloud|rt)-amd64-unsigned$' || true)
  for p in $pkgs; do
    v=$(apt-cache policy "$p" | awk '/Candidate:/ {print $2}')
    [ -n "$v" ] && [ "$v" != "(none)" ] || continue
    if [ -z "$bestv" ] || dpkg --compare-versions "$v" gt "$bestv"; then best=$p; bestv=$v; fi
  done
  [ -n "$best" ] && echo "$best $bestv"
}

if [ -n "${KERNEL_PKG:-}" ]; then
  pkg=$KERNEL_PKG
  pkgver=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
  [ -n "$pkgver" ] && [ "$pkgver" != "(none)" ] || pkgver=
else
  read -r pkg pkgver <<<"$(pick_package || true)" || true
fi
kdir=
if [ -n "${pkg:-}" ] && [ -n "${pkgver:-}" ]; then
  kdir=$CACHE/${pkg}_${pkgver}
elif [ -n "${pkg:-}" ]; then
  # apt does not know it (any more): a cached copy of that package will do.
  kdir=$(ls -d "$CACHE/${pkg}_"* 2>/dev/null | sort -V | tail -1 || true)
else
  # apt knows no such kernel (lists not updated?): the newest cached one.
  kdir=$(ls -d "$CACHE"/linux-image-"$KERNEL"[.-]*-amd64-unsigned_* 2>/dev/null | sort -V | tail -1 || true)
fi
if [ -z "$kdir" ] || { [ ! -f "$kdir/.ok" ] && [ -z "${pkgver:-}" ]; }; then
  die "no Debian package linux-image-$KERNEL*-amd64-unsigned known to apt (try apt-get update) and none cached under $CACHE"
fi

if [ ! -f "$kdir/.ok" ]; then
  say "downloading $pkg $pkgver"
  mkdir -p "$CACHE"
  stage=$(mktemp -d "$CACHE/.fetch.XXXXXX")
  trap 'rm -rf "$stage"' EXIT
  # apt drops privileges to _apt for the download; let it write there.
  chmod 755 "$stage"
  (cd "$stage" && apt-get download -q "$pkg=$pkgver" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2) || true
  deb=$(ls "$stage"/*.deb 2>/dev/null | head -1 || true)
  [ -n "$deb" ] || die "apt-get download $pkg=$pkgver failed"
  dpkg-deb -x "$deb" "$stage/root"
  rm -f "$deb"
  kver=$(ls "$stage/root/lib/modules" 2>/dev/null | head -1)
  [ -n "$kver" ] && [ -f "$stage/root/boot/vmlinuz-$kver" ] || die "$pkg has no kernel image or modules"
  depmod -b "$stage/root" "$kver"
  echo "$kver" >"$stage/.ok"
  rm -rf "$kdir"
  mv "$stage" "$kdir"
  trap - EXIT
  # A newer package of the series replaces the cached one.
  if [ -z "${KERNEL_PKG:-}" ]; then
    for old in "$CACHE"/linux-image-"$KERNEL"[.-]*-amd64-unsigned_*; do
      case $old in "$kdir" | *-cloud-amd64-* | *-rt-amd64-*) continue ;; esac
      [ -d "$old" ] && say "removing the older ${old##*/}" && rm -rf "$old"
    done
  fi
fi
kver=$(cat "$kdir/.ok")
kroot=$kdir/root
moddir=$kroot/lib/modules/$kver
vmlinuz=$kroot/boot/vmlinuz-$kver
say "kernel $kver from ${kdir##*/}"

# --- 2. a per-run initramfs and the writable result share ---------------------
tmp=$(mktemp -d /tmp/neuv-vm.XXXXXX)
tpid=
cleanup() {
  if [ -n "$tpid" ] && kill -0 "$tpid" 2>/dev/null; then
    kill -TERM "$tpid" 2>/dev/null || true
    wait "$tpid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'say "interrupted, stopping the VM"; exit 130' INT TERM HUP

mkdir -p "$tmp/initrd/bin" "$tmp/initrd/modules" "$tmp/out"
for d in dev proc sys lower ovl newroot; do mkdir -p "$tmp/initrd/$d"; done
cp "$BUSYBOX" "$tmp/initrd/bin/busybox"
for a in sh mount umount insmod mkdir switch_root cat echo sleep ls mknod; do
  ln -s busybox "$tmp/initrd/bin/$a"
done
cp "$REPO/scripts/vm-init.sh" "$tmp/initrd/init"
chmod 755 "$tmp/initrd/init"

# Modules for the 9p root, dependencies first (from modules.dep), decompressed
# (busybox insmod may not read .ko.xz/.ko.zst). A module built in is skipped.
declare -A seen=()
order=()
add_module() {
  local name=$1 line path dep
  line=$(grep -E "/${name//_/[_-]}\.ko(\.(xz|zst|gz))?:" "$moddir/modules.dep" | head -1 || true)
  if [ -z "$line" ]; then
    grep -Eq "/${name//_/[_-]}\.ko\$" "$moddir/modules.builtin" 2>/dev/null && return 0
    die "module $name is neither in modules.dep nor built in ($kver)"
  fi
  path=${line%%:*}
  [ -z "${seen[$path]:-}" ] || return 0
  seen[$path]=1
  # modules.dep lists a module's full closure; the last entries are loaded first.
  local deps=(${line#*:})
  local i
  for ((i = ${#deps[@]} - 1; i >= 0; i--)); do
    dep=${deps[$i]}
    dep=${dep##*/}
    add_module "${dep%%.ko*}"
  done
  order+=("$path")
}
for m in virtio_pci 9pnet_virtio 9p overlay; do add_module "$m"; done
for path in "${order[@]}"; do
  base=${path##*/}
  name=${base%%.ko*}
  case $path in
    *.ko.xz) xz -dc "$moddir/$path" >"$tmp/initrd/modules/$name.ko" ;;
    *.ko.zst) zstd -qdc "$moddir/$path" >"$tmp/initrd/modules/$name.ko" ;;
    *.ko.gz) gzip -dc "$moddir/$path" >"$tmp/initrd/modules/$name.ko" ;;
    *) cp "$moddir/$path" "$tmp/initrd/modules/$name.ko" ;;
  esac
  echo "$name" >>"$tmp/initrd/modules.order"
done

accel=${VM_ACCEL:-}
if [ -z "$accel" ]; then
  # KVM needs /dev/kvm and a hardware-virtualisation backend (kvm_intel or
  # kvm_amd). A PVM backend (kvm_pvm, nested clouds) only runs PVM-built guest
  # kernels: a Debian kernel hangs in early boot there, so emulate instead.
  if [ -r /dev/kvm ] && [ -w /dev/kvm ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }; then
    accel=kvm
  else
    accel=tcg
    [ -d /sys/module/kvm_pvm ] && say "/dev/kvm is PVM (kvm_pvm), which cannot boot a stock kernel: using TCG emulation"
  fi
fi
case $accel in
  kvm) accel_args=(-accel kvm -cpu "${VM_QEMU_CPU:-host}") ;;
  # qemu64 (SSE only): node starts 1.5-2x faster than with -cpu max, whose
  # AVX code paths are slower to emulate.
  tcg) accel_args=(-accel tcg,thread=multi -cpu "${VM_QEMU_CPU:-qemu64}") ;;
  *) die "VM_ACCEL must be kvm or tcg" ;;
esac
# Emulation is several times slower than the host: every mocha timeout is
# multiplied by this in the guest (scripts/vm-mocha-scale.js), and tests can
# scale their own deadlines by NEUV_BPF_TEST_TIME_SCALE.
if [ -z "${VM_TIME_SCALE:-}" ]; then
  if [ "$accel" = tcg ]; then VM_TIME_SCALE=4; else VM_TIME_SCALE=1; fi
fi
case $VM_TIME_SCALE in '' | *[!0-9]*) die "VM_TIME_SCALE must be a whole number" ;; esac

# What the guest runs, as single-quoted shell assignments (busybox sh reads them).
q() { printf "'%s'" "$(printf %s "$1" | sed "s/'/'\\\\''/g")"; }
color=0
[ -t 1 ] && color=1
{
  echo "NEUV_VM_REPO=$(q "$REPO")"
  echo "NEUV_VM_MODDIR=$(q "$moddir")"
  echo "NEUV_VM_TESTS=$(q "$VM_TESTS")"
  echo "NEUV_VM_MOCHA_TIMEOUT=$(q "$VM_MOCHA_TIMEOUT")"
  echo "NEUV_VM_TIME_SCALE=$(q "$VM_TIME_SCALE")"
  echo "NEUV_VM_GREP=$(q "$VM_GREP")"
  echo "NEUV_VM_ENV=$(q "$VM_ENV")"
  echo "NEUV_VM_COLOR=$color"
  echo "NEUV_VM_LOG_LEVEL=$(q "${NEUV_BPF_LOG_LEVEL:-}")"
} >"$tmp/initrd/neuv-vm.conf"
(cd "$tmp/initrd" && find . | cpio -o -H newc --quiet | gzip -1) >"$tmp/initrd.img"

# --- 3. boot -------------------------------------------------------------------
say "booting $kver ($accel, $VM_CPUS vCPUs, $VM_MEM, timeouts x$VM_TIME_SCALE), tests: $VM_TESTS${VM_GREP:+ --grep $VM_GREP}${VM_ENV:+ with $VM_ENV}, timeout ${VM_TIMEOUT}s"

start=$(date +%s)
# stdin from /dev/null: the console is output only, so Ctrl-C reaches this
# script (whose trap stops the VM) rather than the guest.
timeout -k 10 "$VM_TIMEOUT" qemu-system-x86_64 \
  -nodefaults -no-user-config -display none -no-reboot \
  "${accel_args[@]}" -smp "$VM_CPUS" -m "$VM_MEM" \
  -kernel "$vmlinuz" -initrd "$tmp/initrd.img" \
  -append "console=ttyS0 quiet loglevel=4 panic=-1 rdinit=/init" \
  -serial stdio -monitor none -nic none \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs local,path="$tmp/out",mount_tag=vmout,security_model=none \
  </dev/null &
tpid=$!
set +e
wait "$tpid"
qrc=$?
set -e
tpid=
elapsed=$(( $(date +%s) - start ))

if [ "$qrc" -eq 124 ]; then
  say "timeout: the VM ran past ${VM_TIMEOUT}s and was stopped"
  exit 124
fi
guest_kver=$(cat "$tmp/out/kernel" 2>/dev/null || true)
if [ ! -s "$tmp/out/exit-code" ]; then
  say "the guest reported no exit code (qemu exit $qrc, ${elapsed}s): boot failure or kernel panic, see the console above"
  exit 1
fi
rc=$(cat "$tmp/out/exit-code")
say "guest kernel ${guest_kver:-?}: tests exited $rc after ${elapsed}s (boot $(cat "$tmp/out/boot-seconds" 2>/dev/null || echo ?)s)"
exit "$rc"
}
