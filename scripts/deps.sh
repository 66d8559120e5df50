#!/usr/bin/env bash
# Installs what neuv-bpf needs to build, test and demo, from Debian's packages
# and npm. Quick when everything is already there. Used by `make deps` and by
# the Vagrant provisioner.
set -euo pipefail
cd "$(dirname "$0")/.."

# command-or-file -> Debian package
need=()
check() { command -v "$1" >/dev/null 2>&1 || [ -e "$1" ] || need+=("$2"); }
check clang clang
check llc llvm
check /usr/include/bpf/libbpf.h libbpf-dev
check /usr/lib/x86_64-linux-gnu/libbpf.so.1 libbpf1
check bpftool bpftool
check ip iproute2
check tc iproute2
check ethtool ethtool
check tcpdump tcpdump
check jq jq
check iperf3 iperf3
check trafgen netsniff-ng
check setpriv util-linux
check gcc gcc
check ping iputils-ping
check python3 python3
# The service's metrics (test/service.test.ts): promtool check metrics, and a
# real Prometheus scraping it.
check promtool prometheus
# The Go client of the service (examples/go/neuvbpf), built and run against a
# live service by test/service-clients.test.ts: Debian's Go, no module download.
check go golang-go
check sysctl procps
# deploy/neuv-bpf-daemonset.yaml read by the tests (test/manifests.ts).
check /usr/lib/python3/dist-packages/yaml/__init__.py python3-yaml
# The container suite (test/containers.test.ts, docs/containers.md): rootful
# podman with netavark, runc (crun refuses hybrid cgroup hierarchies), the
# iptables netavark drives, and a static busybox for the offline test image.
check podman podman
check /usr/lib/podman/netavark netavark
check runc runc
check /usr/sbin/iptables iptables
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || need+=(busybox-static)
# NeuVector's enforcer DP, built from its source tarball by the suites that
# run it (harness/nvdp.ts): its build packages (the -dev packages pull in the
# libraries it links).
check make make
check /usr/include/pcap/pcap.h libpcap-dev
check /usr/include/pcre2.h libpcre2-dev
check /usr/include/jansson.h libjansson-dev
check /usr/include/jemalloc/jemalloc.h libjemalloc-dev
check "/usr/include/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)/urcu/urcu.h" liburcu-dev
check /usr/include/libnetfilter_queue/libnetfilter_queue.h libnetfilter-queue-dev
check /usr/include/libnfnetlink/libnfnetlink.h libnfnetlink-dev
check /usr/include/hs/hs.h libhyperscan-dev
if [ "$(uname -m)" != x86_64 ]; then
  echo "deps: only x86_64 is tested; continuing" >&2
fi
if [ ${#need[@]} -gt 0 ]; then
  pkgs=$(printf '%s\n' "${need[@]}" | sort -u | tr '\n' ' ')
  echo "deps: installing $pkgs" >&2
  export DEBIAN_FRONTEND=noninteractive
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  $SUDO apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
fi

# npm: the lockfile is the truth; reinstall only when it changed. Never omit
# optional dependencies: koffi's native binary is one.
stamp=node_modules/.neuv-deps-stamp
if [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ] || [ ! -d node_modules/koffi ]; then
  npm ci --include=optional --no-audit --no-fund --loglevel=error
  touch "$stamp"
fi
node -e "require('koffi')" || { echo "deps: koffi did not load (its optional native package is missing?)" >&2; exit 1; }
