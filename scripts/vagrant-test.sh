#!/usr/bin/env bash
# `make vagrant-test`: boots vagrant/Vagrantfile's VM, provisions it, runs
# scripts/vagrant-guest-test.sh in it as root (make build, then the tests with
# the kernel suites required), destroys it and exits with the tests' code.
#
# Environment (all optional):
#   NEUV_BPF_VAGRANT_BOX=local       the box `make vagrant-box` built (libvirt only;
#                                    the Makefile builds it first); unset: debian/bookworm64
#   NEUV_BPF_VAGRANT_PROVIDER=NAME   default libvirt (or VAGRANT_DEFAULT_PROVIDER)
#   NEUV_BPF_VAGRANT_TESTS=...       all | kernel | files (scripts/vagrant-guest-test.sh)
#   NEUV_BPF_VAGRANT_KEEP=1          leave the VM running (vagrant ssh, vagrant destroy -f later)
#   NEUV_BPF_VAGRANT_LIBVIRT_DRIVER, NEUV_BPF_VAGRANT_CPUS, NEUV_BPF_VAGRANT_MEMORY (Vagrantfile)
#
# libvirt: when qemu:///system does not answer (no systemd here), libvirtd and
# virtlogd are started for the run and stopped after it. After the destroy,
# whatever is left of this VM in libvirt (its domain, its management network,
# its disk, the local box's image volume, a storage pool the run created) is
# removed, and what libvirt still holds is listed.
# Exit code: the tests' (mocha's), or 1 when the VM could not be brought up.
set -euo pipefail
{
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
OUT=$REPO/build/vagrant
BOX=${NEUV_BPF_VAGRANT_BOX:-}
PROVIDER=${NEUV_BPF_VAGRANT_PROVIDER:-${VAGRANT_DEFAULT_PROVIDER:-libvirt}}
LOCAL_BOX_FILE=$OUT/neuv-bpf-bookworm64.box
LOCAL_BOX_NAME=neuv-bpf/bookworm64-local
# Names the Vagrantfile gives the libvirt objects (default_prefix, management network).
DOMAIN=neuv-bpf-default
NETWORK=neuv-bpf-vagrant
POOL=default
URI=qemu:///system

say() { echo "vagrant-test: $*" >&2; }
die() { say "$*"; exit 1; }
t0=$(date +%s)
elapsed() { echo "$(( $(date +%s) - t0 ))s"; }

command -v vagrant >/dev/null || die "vagrant missing (run scripts/vagrant-deps.sh)"
[ -d node_modules ] || die "no node_modules: run 'make deps' first"
case ${NEUV_BPF_VAGRANT_TESTS:-} in *[!A-Za-z0-9_./*{},\ -]*) die "NEUV_BPF_VAGRANT_TESTS: only file names, globs and spaces" ;; esac
case ${NEUV_BPF_VAGRANT_TIME_SCALE:-} in *[!0-9]*) die "NEUV_BPF_VAGRANT_TIME_SCALE must be a whole number" ;; esac
mkdir -p "$OUT"
export NEUV_BPF_VAGRANT_BOX=$BOX VAGRANT_CWD=$REPO/vagrant

libvirt=0
[ "$PROVIDER" = libvirt ] && libvirt=1
if [ "$BOX" = local ]; then
  [ "$libvirt" = 1 ] || die "the local box is for the libvirt provider only"
  [ -f "$LOCAL_BOX_FILE" ] || die "$LOCAL_BOX_FILE missing: run 'make vagrant-box'"
fi

lv_state=$OUT/libvirtd.state
pool_created=0
up=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if [ "$up" = 1 ] && [ "${NEUV_BPF_VAGRANT_KEEP:-0}" = 1 ]; then
    say "NEUV_BPF_VAGRANT_KEEP=1: the VM keeps running (cd vagrant && vagrant ssh; vagrant destroy -f)"
    exit "$rc"
  fi
  local d0
  d0=$(date +%s)
  vagrant destroy -f >&2 || say "vagrant destroy failed"
  if [ "$libvirt" = 1 ]; then
    virsh -c "$URI" domstate "$DOMAIN" >/dev/null 2>&1 && {
      say "removing the leftover domain $DOMAIN"
      virsh -c "$URI" destroy "$DOMAIN" >/dev/null 2>&1 || true
      virsh -c "$URI" undefine "$DOMAIN" --remove-all-storage >/dev/null 2>&1 || true
    }
    virsh -c "$URI" net-info "$NETWORK" >/dev/null 2>&1 && {
      say "removing the leftover network $NETWORK"
      virsh -c "$URI" net-destroy "$NETWORK" >/dev/null 2>&1 || true
      virsh -c "$URI" net-undefine "$NETWORK" >/dev/null 2>&1 || true
    }
    local vol
    for vol in $(virsh -c "$URI" vol-list "$POOL" 2>/dev/null | awk 'NR > 2 && $1 != "" {print $1}'); do
      case $vol in
        "$DOMAIN".img | "$DOMAIN"-*.img | neuv-bpf-VAGRANTSLASH-*_vagrant_box_image_*)
          # vagrant-libvirt keeps the box's image as a volume to clone later VMs
          # from; the local box's goes (it is rebuilt from build/ anyway).
          say "removing volume $vol"
          virsh -c "$URI" vol-delete "$vol" --pool "$POOL" >/dev/null || true
          ;;
      esac
    done
    if [ "$pool_created" = 1 ] && [ -z "$(virsh -c "$URI" vol-list "$POOL" 2>/dev/null | awk 'NR > 2 && $1 != ""')" ]; then
      virsh -c "$URI" pool-destroy "$POOL" >/dev/null 2>&1 || true
      virsh -c "$URI" pool-undefine "$POOL" >/dev/null 2>&1 || true
    fi
    {
      echo "vagrant-test: libvirt after the run:"
      virsh -c "$URI" list --all --name | sed '/^$/d;s/^/  domain: /'
      virsh -c "$URI" net-list --all --name | sed '/^$/d;s/^/  network: /'
      virsh -c "$URI" pool-list --all --name | sed '/^$/d;s/^/  pool: /'
      virsh -c "$URI" vol-list "$POOL" 2>/dev/null | awk 'NR > 2 && $1 != "" {print "  volume: " $1}'
    } >&2 || true
    "$REPO/scripts/vagrant-libvirtd.sh" stop "$lv_state" || true
  fi
  say "destroy and clean-up took $(( $(date +%s) - d0 ))s"
  say "exit $rc after $(elapsed) in all"
  exit "$rc"
}
trap cleanup EXIT
trap 'say interrupted; exit 130' INT TERM HUP

if [ "$libvirt" = 1 ]; then
  "$REPO/scripts/vagrant-libvirtd.sh" start "$lv_state"
  virsh -c "$URI" pool-info "$POOL" >/dev/null 2>&1 || pool_created=1
fi

if [ "$BOX" = local ]; then
  # (Re)add the box when the file is newer than what vagrant holds.
  stamp=$OUT/box-added.stamp
  if [ ! -f "$stamp" ] || [ "$LOCAL_BOX_FILE" -nt "$stamp" ] ||
    ! vagrant box list --machine-readable | grep -q ",box-name,$LOCAL_BOX_NAME\$"; then
    say "vagrant box add $LOCAL_BOX_NAME ($LOCAL_BOX_FILE)"
    # --no-tty: no progress meter (700 KB of carriage returns in a log otherwise).
    vagrant box add --no-tty --force --name "$LOCAL_BOX_NAME" --provider libvirt "$LOCAL_BOX_FILE" >&2
    # A stale image volume of an older build of the box must not be reused.
    virsh -c "$URI" vol-delete "${LOCAL_BOX_NAME//\//-VAGRANTSLASH-}_vagrant_box_image_0_box.img" --pool "$POOL" >/dev/null 2>&1 || true
    touch "$stamp"
  fi
fi

say "vagrant up --provider=$PROVIDER (box ${BOX:-debian/bookworm64})"
up=1
t1=$(date +%s)
vagrant up --no-tty --provider="$PROVIDER" --provision || die "vagrant up failed after $(( $(date +%s) - t1 ))s"
say "up and provisioned in $(( $(date +%s) - t1 ))s"

t1=$(date +%s)
set +e
# (sudo -E would pass the whole environment; only the test settings go.)
vagrant ssh -c "sudo NEUV_BPF_VAGRANT_TESTS='${NEUV_BPF_VAGRANT_TESTS:-}' NEUV_BPF_VAGRANT_TIME_SCALE='${NEUV_BPF_VAGRANT_TIME_SCALE:-}' /neuv-bpf/scripts/vagrant-guest-test.sh"
rc=$?
set -e
say "tests exited $rc after $(( $(date +%s) - t1 ))s"
exit "$rc"
}
