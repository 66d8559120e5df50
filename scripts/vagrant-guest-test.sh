#!/usr/bin/env bash
# The guest side of `make vagrant-test`: builds the checkout in /neuv-bpf and
# runs the tests as root with the kernel suites required
# (NEUV_BPF_REQUIRE_KERNEL=1, as CI and make vm-test do). Run as
# `sudo scripts/vagrant-guest-test.sh` in the VM; exit code: mocha's.
#
# NEUV_BPF_VAGRANT_TESTS picks the tests:
#   all        `make test`: every suite, unit and kernel
#   kernel     every kernel suite (each dist/test/*.test.js calling requireKernel)
#   FILES      mocha files or globs, relative to the repository
#   (unset)    all with hardware virtualisation; under software emulation
#              (systemd-detect-virt says qemu) the subset in DEFAULT_EMULATED
# Under emulation every mocha timeout is multiplied by 4
# (scripts/vm-mocha-scale.js) and the tests scale their own deadlines by
# NEUV_BPF_TEST_TIME_SCALE, as in make vm-test; NEUV_BPF_VAGRANT_TIME_SCALE
# sets another factor.
set -euo pipefail
cd "$(dirname "$0")/.."

DEFAULT_EMULATED='dist/test/features.test.js dist/test/loader.test.js dist/test/datapath.test.js dist/test/pairs.test.js dist/test/pairs-api.test.js dist/test/pairs-traffic.test.js dist/test/pairs-scale.test.js dist/test/e2e.test.js dist/test/intercept.test.js'

[ "$(id -u)" -eq 0 ] || { echo "vagrant-guest-test: run as root (sudo)" >&2; exit 1; }
virt=$(systemd-detect-virt 2>/dev/null || true)
emulated=0
[ "$virt" = qemu ] && emulated=1
scale=${NEUV_BPF_VAGRANT_TIME_SCALE:-}
if [ -z "$scale" ]; then
  if [ "$emulated" = 1 ]; then scale=4; else scale=1; fi
fi
case $scale in '' | *[!0-9]*) echo "vagrant-guest-test: NEUV_BPF_VAGRANT_TIME_SCALE must be a whole number" >&2; exit 1 ;; esac

tests=${NEUV_BPF_VAGRANT_TESTS:-}
if [ -z "$tests" ]; then
  if [ "$emulated" = 1 ]; then tests=$DEFAULT_EMULATED; else tests=all; fi
fi

echo "vagrant-guest-test: kernel $(uname -r), $(nproc) CPUs, virtualisation ${virt:-none}, timeouts x$scale, node $(node --version)"
start=$(date +%s)
make build
echo "vagrant-guest-test: make build took $(( $(date +%s) - start ))s"

export NEUV_BPF_REQUIRE_KERNEL=1 NEUV_BPF_TEST_TIME_SCALE=$scale NEUV_VM_TIME_SCALE=$scale
mocha=(node_modules/.bin/mocha --require scripts/vm-mocha-scale.js --timeout 120000 --reporter dist/test/timing-reporter.js)
start=$(date +%s)
set +e
case $tests in
  all)
    echo "vagrant-guest-test: make test"
    make test MOCHA_ARGS="${mocha[*]:1}"
    ;;
  kernel)
    files=$(grep -l -w requireKernel dist/test/*.test.js | tr '\n' ' ')
    echo "vagrant-guest-test: every kernel suite: $files"
    # shellcheck disable=SC2086 # a list of files
    "${mocha[@]}" $files
    ;;
  *)
    echo "vagrant-guest-test: $tests"
    set -f # mocha expands globs itself
    # shellcheck disable=SC2086
    "${mocha[@]}" $tests
    ;;
esac
rc=$?
set -e
echo "vagrant-guest-test: tests exited $rc after $(( $(date +%s) - start ))s"
exit "$rc"
